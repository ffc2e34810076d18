//! A prefix cache, as SGLang's radix cache behaves for requests that share leading messages:
//! the tokens of a prefix seen recently need no prefill. The prefix of a chat request is every
//! message but the last (the system prompt and any shared turns), keyed by model and content;
//! entries are evicted least recently used once their tokens exceed the capacity.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct PrefixCache {
    capacity_tokens: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, (u64, u64)>, // key -> (tokens, last use)
    tokens: u64,
    clock: u64,
}

impl PrefixCache {
    pub fn new(capacity_tokens: u64) -> Self {
        Self {
            capacity_tokens,
            state: Mutex::new(State::default()),
        }
    }

    /// Looks the prefix up and remembers it; returns the tokens served from the cache.
    pub fn lookup(&self, key: u64, tokens: u64) -> u64 {
        if self.capacity_tokens == 0 || tokens == 0 || tokens > self.capacity_tokens {
            return 0;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.clock += 1;
        let now = s.clock;
        if let Some(entry) = s.entries.get_mut(&key) {
            entry.1 = now;
            return entry.0;
        }
        while s.tokens + tokens > self.capacity_tokens {
            let Some((&oldest, &(size, _))) = s.entries.iter().min_by_key(|(_, (_, used))| *used)
            else {
                break;
            };
            s.entries.remove(&oldest);
            s.tokens -= size;
        }
        s.entries.insert(key, (tokens, now));
        s.tokens += tokens;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_prefixes_hit_until_evicted() {
        let c = PrefixCache::new(100);
        assert_eq!(c.lookup(1, 60), 0);
        assert_eq!(c.lookup(1, 60), 60);
        assert_eq!(c.lookup(2, 30), 0);
        assert_eq!(c.lookup(1, 60), 60);
        // 3 does not fit with 1 and 2: the least recently used (2) goes.
        assert_eq!(c.lookup(3, 30), 0);
        assert_eq!(c.lookup(2, 30), 0);
        assert_eq!(PrefixCache::new(0).lookup(1, 5), 0);
    }
}

//! `--order-dispatch prefix`: within a window of lines, requests that share a prompt prefix are
//! sent one after another, so an engine's prefix (radix) cache still holds the prefix when the
//! next one arrives. Under load SGLang's scheduler mostly follows arrival order, so arrival
//! order is what decides cache reuse. The output order is not affected (results are placed by
//! line).
//!
//! The prefix of a chat request is its model and every message but the last (the system prompt
//! and shared turns); of a completion, its model and the first [`PROMPT_PREFIX_BYTES`] of its
//! prompt. Groups keep the order of their first line in the window, and lines within a group
//! keep input order.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::Deserialize;
use serde_json::value::RawValue;

/// Bytes of a completion prompt that make its prefix.
pub const PROMPT_PREFIX_BYTES: usize = 256;

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a str>,
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
}

/// The group key of a request body (0 when it has no recognisable prefix).
pub fn prefix_key(body: &[u8]) -> u64 {
    let Ok(probe) = serde_json::from_slice::<Probe>(body) else {
        return 0;
    };
    let mut h = DefaultHasher::new();
    probe.model.hash(&mut h);
    match (&probe.messages, probe.prompt) {
        (Some(messages), _) => {
            let Some((_, leading)) = messages.split_last() else {
                return 0;
            };
            for m in leading {
                m.get().hash(&mut h);
            }
        }
        (None, Some(prompt)) => {
            let text = prompt.get();
            text[..floor_char_boundary(text, PROMPT_PREFIX_BYTES)].hash(&mut h);
        }
        (None, None) => return 0,
    }
    h.finish()
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Reorders one window: groups (by `key`, see [`prefix_key`]) in order of first appearance,
/// input order within a group.
pub fn group<T>(window: Vec<T>, key: impl Fn(&T) -> u64) -> Vec<T> {
    let mut first_seen: HashMap<u64, usize> = HashMap::new();
    let mut keyed: Vec<(usize, T)> = window
        .into_iter()
        .enumerate()
        .map(|(i, item)| (*first_seen.entry(key(&item)).or_insert(i), item))
        .collect();
    keyed.sort_by_key(|(rank, _)| *rank);
    keyed.into_iter().map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(line: u64, system: &str, user: &str) -> (u64, String) {
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]});
        (line, body.to_string())
    }

    #[test]
    fn shared_prefixes_are_sent_together_in_input_order() {
        let window = vec![
            request(1, "A", "x"),
            request(2, "B", "x"),
            request(3, "A", "y"),
            request(4, "C", "x"),
            request(5, "B", "y"),
            request(6, "A", "z"),
        ];
        let grouped = group(window, |(_, body)| prefix_key(body.as_bytes()));
        let lines: Vec<u64> = grouped.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [1, 3, 6, 2, 5, 4]);
    }

    #[test]
    fn keys_depend_on_the_prefix_only() {
        let a = br#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"1"}]}"#;
        let b = br#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":"2"}]}"#;
        let c = br#"{"model":"n","messages":[{"role":"system","content":"S"},{"role":"user","content":"2"}]}"#;
        assert_eq!(prefix_key(a), prefix_key(b));
        assert_ne!(prefix_key(a), prefix_key(c));
        assert_eq!(prefix_key(b"not json"), 0);
        let long = format!(r#"{{"model":"m","prompt":"{}tail"}}"#, "é".repeat(200));
        assert_ne!(prefix_key(long.as_bytes()), 0);
    }
}

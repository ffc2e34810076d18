//! A growable set of line numbers, one bit per line: 125 KB for a million lines.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    pub fn insert(&mut self, n: u64) {
        let (word, bit) = Self::locate(n);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << bit;
    }

    pub fn contains(&self, n: u64) -> bool {
        let (word, bit) = Self::locate(n);
        self.words.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// How many line numbers are in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn locate(n: u64) -> (usize, u32) {
        ((n / 64) as usize, (n % 64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_and_queries() {
        let mut s = BitSet::default();
        assert_eq!(s.count(), 0);
        for n in [0, 63, 64, 1_000_003] {
            s.insert(n);
        }
        s.insert(64);
        assert!(s.contains(63) && s.contains(1_000_003) && !s.contains(65));
        assert_eq!(s.count(), 4);
    }
}

//! Which model each line asks for, when one file may hold several (`--mixed-models`).
//!
//! The validation pass numbers the models in the order they first appear
//! ([`batch_format::rules::Settled::models`]) and keeps one small index per line, so the dispatch
//! can route a line and every counter can attribute its result, from the line number alone:
//! resumed results included, whose spool records know their line but not their model. Two bytes
//! a line (20 MB for ten million lines), and only for jobs that mix models.

/// A line without a model: blank, invalid, or past the end.
const NONE: u16 = u16::MAX;

#[derive(Debug, Clone, Default)]
pub struct LineModels {
    /// Index `line - 1`: the line's model index, or [`NONE`].
    of_line: Vec<u16>,
}

impl LineModels {
    /// Records that `line` (1-based) asks for model `index`.
    pub fn set(&mut self, line: u64, index: u16) {
        let Some(at) = usize::try_from(line).ok().and_then(|l| l.checked_sub(1)) else {
            return;
        };
        if self.of_line.len() <= at {
            self.of_line.resize(at + 1, NONE);
        }
        self.of_line[at] = index;
    }

    /// Forgets the model of a line found invalid after all (a duplicate `custom_id`).
    pub fn clear(&mut self, line: u64) {
        if let Some(slot) = self.slot(line) {
            *slot = NONE;
        }
    }

    /// The model index of `line`, if it is a valid request.
    pub fn of(&self, line: u64) -> Option<u16> {
        let at = usize::try_from(line).ok()?.checked_sub(1)?;
        self.of_line.get(at).copied().filter(|&m| m != NONE)
    }

    /// How many lines ask for each of `models` models.
    pub fn counts(&self, models: usize) -> Vec<u64> {
        let mut counts = vec![0; models];
        for &m in &self.of_line {
            if let Some(c) = counts.get_mut(usize::from(m)) {
                *c += 1;
            }
        }
        counts
    }

    fn slot(&mut self, line: u64) -> Option<&mut u16> {
        let at = usize::try_from(line).ok()?.checked_sub(1)?;
        self.of_line.get_mut(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_model_until_cleared() {
        let mut models = LineModels::default();
        models.set(2, 0);
        models.set(5, 1);
        models.set(6, 1);
        assert_eq!(models.of(1), None);
        assert_eq!(models.of(2), Some(0));
        assert_eq!(models.of(6), Some(1));
        assert_eq!(models.of(0), None);
        assert_eq!(models.of(99), None);
        models.clear(6);
        assert_eq!(models.of(6), None);
        assert_eq!(models.counts(2), vec![1, 1]);
    }
}

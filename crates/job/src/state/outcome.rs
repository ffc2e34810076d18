//! How each line's request ended, and which final file its result goes to.

/// Stored as one byte per result in the spool index, so a resumed job knows its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LineOutcome {
    /// The engine answered 2xx.
    Succeeded = 0,
    /// The engine answered non-2xx (after retries, when retryable).
    EngineError = 1,
    /// No answer after all retries.
    EngineUnavailable = 2,
    /// The line was invalid and skipped into the error file.
    InvalidRequest = 3,
    /// The completion window ended before the request ran or finished.
    Expired = 4,
    /// The job was cancelled before the request ran or finished.
    Cancelled = 5,
}

impl LineOutcome {
    pub const ALL: [LineOutcome; 6] = [
        LineOutcome::Succeeded,
        LineOutcome::EngineError,
        LineOutcome::EngineUnavailable,
        LineOutcome::InvalidRequest,
        LineOutcome::Expired,
        LineOutcome::Cancelled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LineOutcome::Succeeded => "succeeded",
            LineOutcome::EngineError => "engine_error",
            LineOutcome::EngineUnavailable => "engine_unavailable",
            LineOutcome::InvalidRequest => "invalid_request",
            LineOutcome::Expired => "batch_expired",
            LineOutcome::Cancelled => "batch_cancelled",
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// Successes go to the output file, everything else to the error file.
    pub fn is_success(self) -> bool {
        self == LineOutcome::Succeeded
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for o in LineOutcome::ALL {
            assert_eq!(LineOutcome::from_code(o.code()), Some(o));
        }
        assert_eq!(LineOutcome::from_code(6), None);
    }
}

//! When each request was sent and how it went: attempts, start and latency, one fixed-size
//! record per result in `timings.bin` beside the spool.
//!
//! The file is advisory: it is flushed with the spool but not part of a checkpoint, so a crash
//! can leave records for results that resume then discards, or lose the last few. A line that
//! runs again appends a second record; readers take the last one for a line. The results API
//! shows these beside a request's input and result; nothing that decides a line's outcome reads
//! them.

use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::extsort::{Fixed, get_u32, get_u64, put_u64};

pub const TIMINGS: &str = "timings.bin";

/// How one line's request went. All zero for a line never sent (refused, expired before it ran).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timing {
    /// Unix milliseconds of the first send (first, so that a line's later run sorts later).
    pub started_ms: u64,
    /// Sends to an engine (1 + retries).
    pub attempts: u32,
    /// From the first send to the answer (retries and backoff included).
    pub latency_ms: u32,
}

/// A [`Timing`] with its line, as stored. Sorts by line, then by start, so the last of a line's
/// records (the run that counted) sorts last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineTiming {
    pub line: u64,
    pub timing: Timing,
}

impl Fixed for LineTiming {
    const BYTES: usize = 24;

    fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.line);
        b[8..12].copy_from_slice(&self.timing.attempts.to_le_bytes());
        put_u64(b, 12, self.timing.started_ms);
        b[20..24].copy_from_slice(&self.timing.latency_ms.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            line: get_u64(b, 0),
            timing: Timing {
                attempts: get_u32(b, 8),
                started_ms: get_u64(b, 12),
                latency_ms: get_u32(b, 20),
            },
        }
    }
}

/// Every whole record of a timings file, in the order written (a missing file has none).
pub fn read_timings(path: &Path, mut each: impl FnMut(LineTiming)) -> io::Result<()> {
    let Some(file) = crate::state::open_if_present(path)? else {
        return Ok(());
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut buf = [0; LineTiming::BYTES];
    loop {
        match reader.read_exact(&mut buf) {
            Ok(()) => each(LineTiming::decode(&buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The last record of `line` in a timings file.
pub fn timing_of(path: &Path, line: u64) -> io::Result<Option<Timing>> {
    let mut found = None;
    read_timings(path, |r| {
        if r.line == line {
            found = Some(r.timing);
        }
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_the_last_of_a_line_counts() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join(TIMINGS);
        let mut bytes = Vec::new();
        for (line, attempts, started_ms) in [(3, 3, 100), (4, 2, 150), (3, 1, 900)] {
            let mut b = [0; LineTiming::BYTES];
            let timing = Timing {
                attempts,
                started_ms,
                latency_ms: 7,
            };
            LineTiming { line, timing }.encode(&mut b);
            bytes.extend_from_slice(&b);
        }
        // A torn record at the end is not read.
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, bytes).expect("write");
        let t = timing_of(&path, 3).expect("read").expect("found");
        assert_eq!((t.attempts, t.started_ms, t.latency_ms), (1, 900, 7));
        assert_eq!(
            timing_of(&path, 4).expect("read").map(|t| t.attempts),
            Some(2)
        );
        assert_eq!(timing_of(&path, 5).expect("read"), None);
        assert_eq!(timing_of(&dir.path().join("none"), 5).expect("read"), None);
    }
}

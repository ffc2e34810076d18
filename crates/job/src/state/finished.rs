//! A job that has already finished must not run again by accident.
//!
//! Two ways to know it:
//! - a completion marker, written (durably) into the state directory once the final files are in
//!   place and before anything else there is removed, and removed last. A kill while the state is
//!   being removed leaves the marker, and the next run only finishes the removal;
//! - once the state is gone, the final files themselves: when OUTPUT and the error file hold
//!   exactly one result for each non-blank line of the input (compared as a multiset of
//!   `custom_id`s, see [`IdDigest`]), the job is done and a rerun says so instead of sending
//!   everything again and overwriting the results.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::input::reader::{Content, LineReader};

pub const MARKER: &str = "complete.json";

/// What the marker records: enough to tell the same input and to say what the job produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub input_fingerprint: String,
    pub succeeded: u64,
    pub failed: u64,
}

impl Completion {
    pub fn load(dir: &Path) -> Option<Completion> {
        let text = fs::read(dir.join(MARKER)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the marker durably (file and directory synced).
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(MARKER);
        fs::write(&path, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        File::open(&path)?.sync_all()?;
        File::open(dir)?.sync_all()
    }
}

/// Removes a finished job's state directory, the marker last, so that a kill at any point
/// leaves either the marker or nothing that looks like a job. `keep` (a file in it, such as the
/// copy of this run's input) stays, and with it the directory.
pub fn remove_state(dir: &Path, keep: Option<&Path>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == MARKER || keep == Some(entry.path().as_path()) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    batch_storage::absent_is_fine(fs::remove_file(dir.join(MARKER)))?;
    if keep.is_some_and(Path::exists) {
        return Ok(());
    }
    fs::remove_dir(dir)
}

/// An order-independent digest of a multiset of `custom_id`s (a line without one counts as
/// "none"): two sums of independent 64-bit hashes and the count. Equal digests of different
/// multisets need two simultaneous 64-bit collisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdDigest {
    pub count: u64,
    sum: u64,
    sum_seeded: u64,
}

impl IdDigest {
    pub fn add(&mut self, custom_id: Option<&str>) {
        // Only an id of exactly "\0none" reads the same as no id: harmless.
        let bytes = custom_id.map_or(&b"\0none"[..], str::as_bytes);
        self.count += 1;
        self.sum = self.sum.wrapping_add(xxh3_64(bytes));
        self.sum_seeded = self
            .sum_seeded
            .wrapping_add(xxh3_64_with_seed(bytes, 0x6261_7463_6872_756e));
    }

    /// Adds the results in a final file to this digest; returns how many there were (none
    /// when the file does not exist).
    pub fn add_results(&mut self, path: &Path) -> io::Result<u64> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        // Result lines can be far longer than request lines; only the id is read from each.
        let mut reader = LineReader::new(file, RESULT_LINE_BYTES);
        let before = self.count;
        while let Some(line) = reader.next_line()? {
            match line.content {
                _ if line.content.is_blank() => {}
                Content::Text(text) => {
                    self.add(batch_format::input::custom_id_of(text).as_deref());
                }
                Content::TooLong => self.add(None),
            }
        }
        Ok(self.count - before)
    }
}

/// The longest result line whose id is read; a longer one counts as having none, so the
/// digest differs and the job runs as before.
const RESULT_LINE_BYTES: usize = 256 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(ids: &[Option<&str>]) -> IdDigest {
        let mut d = IdDigest::default();
        for id in ids {
            d.add(*id);
        }
        d
    }

    #[test]
    fn the_digest_ignores_order_but_not_content() {
        let a = digest(&[Some("a"), Some("b"), None]);
        assert_eq!(a, digest(&[None, Some("b"), Some("a")]));
        assert_ne!(a, digest(&[Some("a"), Some("b"), Some("c")]));
        assert_ne!(a, digest(&[Some("a"), Some("b")]));
        assert_ne!(a, digest(&[Some("a"), Some("a"), None]));
    }

    #[test]
    fn removal_leaves_the_marker_to_the_end() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("s");
        fs::create_dir_all(state.join("final")).expect("mkdir");
        fs::write(state.join("spool.jsonl"), "x").expect("write");
        let done = Completion {
            input_fingerprint: "1-2".into(),
            succeeded: 1,
            failed: 0,
        };
        done.store(&state).expect("store");
        assert_eq!(Completion::load(&state), Some(done));
        let copy = state.join("input.jsonl");
        fs::write(&copy, "in").expect("write");
        remove_state(&state, Some(&copy)).expect("remove");
        assert!(copy.exists() && !state.join(MARKER).exists() && !state.join("final").exists());
        remove_state(&state, None).expect("remove");
        assert!(!state.exists());
    }
}

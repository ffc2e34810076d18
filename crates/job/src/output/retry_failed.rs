//! `--retry-failed`: rerun only the lines an earlier run did not get a success for, and merge.
//!
//! A fresh job's spool is seeded with the earlier run's successes, so those lines count as done
//! and the final files come out complete: OUTPUT holds the earlier successes plus the new ones,
//! the error file only the lines that failed again. A line is rerun when its `custom_id` is in the
//! earlier error file, or when the earlier output has no result for it.
//!
//! Matching `custom_id`s across three files is a join on 128-bit hashes of the ids: each side is
//! sorted with [`crate::extsort`] and the sorted streams are merged, so memory stays flat however
//! large the files are. (Two different ids sharing a 128-bit hash is not a practical concern.)

use std::cmp::Ordering;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bitset::BitSet;
use crate::extsort::{Fixed, Sorted, Sorter, get_u64, put_u64};
use crate::input::reader::{Content, LineReader};
use crate::state::outcome::LineOutcome;
use crate::state::spool::Spool;
use crate::state::timings::Timing;

const CHUNK: usize = 64 * 1024;

/// The earlier run's files.
#[derive(Debug, Clone)]
pub struct Previous {
    pub errors: PathBuf,
    pub output: PathBuf,
}

/// What seeding found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Earlier successes carried over.
    pub reused: u64,
    /// Lines listed in the earlier error file.
    pub listed_failed: u64,
    /// Earlier results whose custom_id is not in the input (ignored).
    pub unknown: u64,
    /// The token usage of the successes carried over.
    pub usage: batch_format::output::Usage,
}

fn hash128(custom_id: &str) -> u128 {
    let mut a = DefaultHasher::new();
    custom_id.hash(&mut a);
    let mut b = DefaultHasher::new();
    0x5bd1_e995_u32.hash(&mut b);
    custom_id.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

fn put_u128(out: &mut [u8], at: usize, v: u128) {
    out[at..at + 16].copy_from_slice(&v.to_le_bytes());
}

fn get_u128(b: &[u8], at: usize) -> u128 {
    let mut w = [0; 16];
    w.copy_from_slice(&b[at..at + 16]);
    u128::from_le_bytes(w)
}

/// An input line's id hash and line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct InputEntry {
    hash: u128,
    line: u64,
}

impl Fixed for InputEntry {
    const BYTES: usize = 24;
    fn encode(&self, out: &mut [u8]) {
        put_u128(out, 0, self.hash);
        put_u64(out, 16, self.line);
    }
    fn decode(b: &[u8]) -> Self {
        Self {
            hash: get_u128(b, 0),
            line: get_u64(b, 16),
        }
    }
}

/// A result line of an earlier file: id hash and where the line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ResultEntry {
    hash: u128,
    offset: u64,
    len: u64,
}

impl Fixed for ResultEntry {
    const BYTES: usize = 32;
    fn encode(&self, out: &mut [u8]) {
        put_u128(out, 0, self.hash);
        put_u64(out, 16, self.offset);
        put_u64(out, 24, self.len);
    }
    fn decode(b: &[u8]) -> Self {
        Self {
            hash: get_u128(b, 0),
            offset: get_u64(b, 16),
            len: get_u64(b, 24),
        }
    }
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    custom_id: Option<std::borrow::Cow<'a, str>>,
}

/// Every result line of a JSONL file with a string custom_id, sorted by its hash. Lines that
/// have none cannot be matched; they are counted and the user is told, so a wrong file does not
/// pass unnoticed.
fn sort_results(path: &Path, max_line_bytes: usize) -> io::Result<Sorted<ResultEntry>> {
    let file = File::open(path).map_err(|e| named(path, e))?;
    let mut reader = LineReader::new(file, max_line_bytes.saturating_mul(2));
    let mut sorter = Sorter::new(CHUNK);
    let (mut unmatched, mut first_unmatched) = (0u64, None);
    while let Some(line) = reader.next_line().map_err(|e| named(path, e))? {
        if line.content.is_blank() {
            continue;
        }
        let id = match line.content {
            Content::Text(text) => match serde_json::from_slice::<IdOnly<'_>>(text) {
                Ok(IdOnly {
                    custom_id: Some(id),
                }) => Some((id, text.len())),
                _ => None,
            },
            Content::TooLong => None,
        };
        let Some((id, len)) = id else {
            unmatched += 1;
            first_unmatched.get_or_insert(line.number);
            continue;
        };
        sorter.push(ResultEntry {
            hash: hash128(&id),
            offset: line.offset,
            len: len as u64,
        })?;
    }
    if let Some(first) = first_unmatched {
        tracing::warn!(
            "--retry-failed: {unmatched} lines of {} (the first is line {first}) are not result \
             lines with a custom_id, so they cannot be matched to the input; check that this is \
             the earlier run's file",
            path.display()
        );
    }
    sorter.finish()
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Seeds a fresh spool with the earlier successes and marks their lines done.
pub fn seed(
    previous: &Previous,
    input: &Path,
    max_line_bytes: usize,
    spool: &mut Spool,
    done: &mut BitSet,
    counts: &mut [u64],
) -> io::Result<Seeded> {
    let mut seeded = Seeded::default();
    let mut failed = sort_results(&previous.errors, max_line_bytes)?;
    let mut succeeded = sort_results(&previous.output, max_line_bytes).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{e} (the earlier run's output; name it with --previous-output)"),
        )
    })?;

    let mut inputs = Sorter::new(CHUNK);
    let mut reader = LineReader::new(File::open(input)?, max_line_bytes);
    while let Some(line) = reader.next_line()? {
        if let Content::Text(text) = line.content
            && let Some(id) = batch_format::input::custom_id_of(text)
        {
            inputs.push(InputEntry {
                hash: hash128(&id),
                line: line.number,
            })?;
        }
    }
    let mut inputs = inputs.finish()?;

    let mut earlier = BufReader::new(File::open(&previous.output)?);
    let mut record = Vec::new();
    let mut next_failed = failed.next_record()?;
    let mut next_ok = succeeded.next_record()?;
    while let Some(entry) = inputs.next_record()? {
        while next_failed.is_some_and(|f| f.hash < entry.hash) {
            next_failed = failed.next_record()?;
        }
        let is_failed = next_failed.is_some_and(|f| f.hash == entry.hash);
        if is_failed {
            seeded.listed_failed += 1;
        }
        loop {
            match next_ok.map(|o| o.hash.cmp(&entry.hash)) {
                Some(Ordering::Less) => {
                    seeded.unknown += 1;
                    next_ok = succeeded.next_record()?;
                }
                Some(Ordering::Equal) => {
                    let Some(ok) = next_ok else { break };
                    if !is_failed && !done.contains(entry.line) {
                        read_line_at(&mut earlier, ok.offset, ok.len, &mut record)?;
                        spool.append(
                            entry.line,
                            LineOutcome::Succeeded,
                            &record,
                            Timing::default(),
                        )?;
                        seeded.usage += batch_format::output::usage_of_result(&record);
                        done.insert(entry.line);
                        counts[LineOutcome::Succeeded.index()] += 1;
                        seeded.reused += 1;
                    }
                    next_ok = succeeded.next_record()?;
                }
                Some(Ordering::Greater) | None => break,
            }
        }
    }
    while next_ok.is_some() {
        seeded.unknown += 1;
        next_ok = succeeded.next_record()?;
    }
    Ok(seeded)
}

/// Reads `len` bytes at `offset` and ends them with a newline.
fn read_line_at(
    file: &mut BufReader<File>,
    offset: u64,
    len: u64,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    out.clear();
    file.by_ref().take(len).read_to_end(out)?;
    if out.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the earlier output changed while it was being read",
        ));
    }
    if out.last() == Some(&b'\r') {
        out.pop();
    }
    out.push(b'\n');
    // Keep the reader's buffer useful for the next nearby line.
    let _ = file.fill_buf();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::spool::{Positions, read_index};

    #[test]
    fn reuses_earlier_successes_and_leaves_failures_and_missing_lines_to_rerun() {
        let dir = tempfile::tempdir().expect("temp");
        let p = |n: &str| dir.path().join(n);
        let input: String = (1..=5)
            .map(|i| format!("{{\"custom_id\":\"c{i}\",\"method\":\"POST\"}}\n"))
            .collect();
        std::fs::write(p("in"), input).expect("write");
        // c1 and c3 succeeded, c2 failed, c4 expired, c5 has no result; x is not in the input.
        let c1 = r#"{"custom_id":"c1","response":{"body":{"usage":{"prompt_tokens":3,"completion_tokens":4}}}}"#;
        std::fs::write(
            p("out"),
            format!("{{\"custom_id\":\"c3\",\"r\":3}}\n{{\"custom_id\":\"x\"}}\n{c1}\n"),
        )
        .expect("write");
        std::fs::write(p("err"), "{\"custom_id\":\"c2\"}\n{\"custom_id\":\"c4\"}\n")
            .expect("write");
        let mut spool = Spool::open(&p("state"), Positions::default()).expect("spool");
        let mut done = BitSet::default();
        let mut counts = [0; LineOutcome::ALL.len()];
        let previous = Previous {
            errors: p("err"),
            output: p("out"),
        };
        let seeded = seed(
            &previous,
            &p("in"),
            1 << 20,
            &mut spool,
            &mut done,
            &mut counts,
        )
        .expect("seed");
        assert_eq!(
            seeded,
            Seeded {
                reused: 2,
                listed_failed: 2,
                unknown: 1,
                usage: batch_format::output::Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                    total_tokens: 7,
                    ..Default::default()
                }
            }
        );
        assert!(done.contains(1) && done.contains(3));
        assert!(!done.contains(2) && !done.contains(4) && !done.contains(5));
        let at = spool.flush().expect("flush");
        let mut lines = Vec::new();
        read_index(
            &p("state").join(crate::state::spool::INDEX),
            at.index,
            |r| lines.push(r.line),
        )
        .expect("index");
        lines.sort_unstable();
        assert_eq!(lines, vec![1, 3]);
        let text = std::fs::read_to_string(p("state").join(crate::state::spool::OUTPUT_SPOOL))
            .expect("spool");
        assert!(text.contains("\"completion_tokens\":4}}}}\n") && text.contains("\"r\":3}\n"));
    }
}

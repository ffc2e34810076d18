//! Finds duplicate `custom_id`s with memory that does not grow with the file.
//!
//! Each valid line contributes a 64-bit hash of its `custom_id`, its line number and its byte
//! offset. Entries are sorted in fixed-size chunks; full chunks are spilled to temporary files
//! and the sorted runs are merged at the end. Equal hashes are only candidates: their lines are
//! re-read from the input and their `custom_id`s compared exactly, so a hash collision can never
//! turn two different ids into a false duplicate.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use crate::extsort::{Fixed, Sorter, get_u64, put_u64};

/// Entries held in memory before a sorted run is spilled (24 bytes each: 1.5 MiB).
const CHUNK_ENTRIES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    hash: u64,
    line: u64,
    offset: u64,
}

impl Fixed for Entry {
    const BYTES: usize = 24;

    fn encode(&self, out: &mut [u8]) {
        put_u64(out, 0, self.hash);
        put_u64(out, 8, self.line);
        put_u64(out, 16, self.offset);
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            hash: get_u64(b, 0),
            line: get_u64(b, 8),
            offset: get_u64(b, 16),
        }
    }
}

/// A later line whose `custom_id` was already used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub line: u64,
    pub custom_id: String,
    pub first_line: u64,
}

pub fn hash_id(custom_id: &str) -> u64 {
    // SipHash with fixed keys: deterministic, and collisions are re-checked anyway.
    let mut h = DefaultHasher::new();
    custom_id.hash(&mut h);
    h.finish()
}

pub struct DuplicateFinder {
    entries: Sorter<Entry>,
}

impl Default for DuplicateFinder {
    fn default() -> Self {
        Self {
            entries: Sorter::new(CHUNK_ENTRIES),
        }
    }
}

impl DuplicateFinder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, custom_id: &str, line: u64, offset: u64) -> io::Result<()> {
        self.entries.push(Entry {
            hash: hash_id(custom_id),
            line,
            offset,
        })
    }

    /// Merges the runs and reports each duplicate, in order of hash then line, to `found`.
    /// `source` is the input file, re-read at the offsets of candidate lines.
    pub fn finish(
        self,
        source: File,
        max_line_bytes: usize,
        mut found: impl FnMut(Duplicate),
    ) -> io::Result<()> {
        let mut merged = self.entries.finish()?;
        let mut source = BufReader::new(source);
        let mut group: Vec<Entry> = Vec::new();
        while let Some(entry) = merged.next_record()? {
            if group.first().is_some_and(|g| g.hash != entry.hash) {
                check_group(&group, &mut source, max_line_bytes, &mut found)?;
                group.clear();
            }
            group.push(entry);
            // A group only grows past a handful of entries when the ids really are equal; check
            // it in slices so even a file of one repeated id needs little memory.
            if group.len() >= 4096 {
                let first = group[0];
                check_group(&group, &mut source, max_line_bytes, &mut found)?;
                group.clear();
                group.push(first);
            }
        }
        check_group(&group, &mut source, max_line_bytes, &mut found)
    }
}

/// Compares the exact ids of entries that share a hash (sorted by line).
fn check_group(
    group: &[Entry],
    source: &mut BufReader<File>,
    max_line_bytes: usize,
    found: &mut impl FnMut(Duplicate),
) -> io::Result<()> {
    if group.len() < 2 {
        return Ok(());
    }
    // Distinct ids in this group with the line that first used each; nearly always one.
    let mut seen: Vec<(String, u64)> = Vec::new();
    for entry in group {
        let id = read_custom_id(source, entry.offset, max_line_bytes)?;
        match seen.iter().find(|(s, _)| *s == id) {
            Some((_, first_line)) if *first_line != entry.line => found(Duplicate {
                line: entry.line,
                custom_id: id,
                first_line: *first_line,
            }),
            Some(_) => {}
            None => seen.push((id, entry.line)),
        }
    }
    Ok(())
}

fn read_custom_id(
    source: &mut BufReader<File>,
    offset: u64,
    max_line_bytes: usize,
) -> io::Result<String> {
    source.seek(SeekFrom::Start(offset))?;
    let mut line = Vec::new();
    source
        .by_ref()
        .take(max_line_bytes as u64 + 2)
        .read_until(b'\n', &mut line)?;
    batch_format::input::custom_id_of(&line).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the input changed while it was being validated (byte offset {offset})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(ids: &[&str]) -> Vec<Duplicate> {
        use std::io::Write;
        let mut file = tempfile::tempfile().expect("temp");
        let mut finder = DuplicateFinder::new();
        let mut offset = 0u64;
        for (i, id) in ids.iter().enumerate() {
            let line = format!("{{\"custom_id\":\"{id}\"}}\n");
            file.write_all(line.as_bytes()).expect("write");
            finder.push(id, i as u64 + 1, offset).expect("push");
            offset += line.len() as u64;
        }
        let mut out = Vec::new();
        finder
            .finish(file, 1 << 20, |d| out.push(d))
            .expect("finish");
        out.sort_by_key(|d| d.line);
        out
    }

    #[test]
    fn finds_later_occurrences_only() {
        let d = find(&["a", "b", "a", "c", "a", "b"]);
        let lines: Vec<_> = d.iter().map(|d| (d.line, d.first_line)).collect();
        assert_eq!(lines, vec![(3, 1), (5, 1), (6, 2)]);
        assert_eq!(d[0].custom_id, "a");
    }

    #[test]
    fn spills_and_merges_runs() {
        let ids: Vec<String> = (0..(CHUNK_ENTRIES * 2 + 10))
            .map(|i| format!("id-{}", i % (CHUNK_ENTRIES + 3)))
            .collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let d = find(&refs);
        assert_eq!(d.len(), ids.len() - (CHUNK_ENTRIES + 3));
        assert!(d.iter().all(|d| d.first_line <= (CHUNK_ENTRIES + 3) as u64));
    }

    #[test]
    fn one_id_repeated_many_times() {
        let ids = vec!["same"; 10_000];
        let d = find(&ids);
        assert_eq!(d.len(), 9_999);
        assert!(d.iter().all(|d| d.first_line == 1));
    }
}

//! Sorting more fixed-size records than should sit in memory.
//!
//! Records are sorted in chunks of a fixed count; full chunks are written to temporary files as
//! sorted runs, and [`Sorter::finish`] merges the runs (and the last chunk, kept in memory) into
//! one sorted stream. Memory is one chunk plus one read buffer per run, whatever the input size.
//! Used for duplicate `custom_id` detection and for the input-ordered finalize.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// A record with a fixed-size binary form.
pub trait Fixed: Copy + Ord {
    const BYTES: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
}

pub struct Sorter<R> {
    chunk: Vec<R>,
    chunk_len: usize,
    runs: Vec<File>,
}

impl<R: Fixed> Sorter<R> {
    /// A sorter that keeps at most `chunk_len` records in memory.
    pub fn new(chunk_len: usize) -> Self {
        Self {
            chunk: Vec::new(),
            chunk_len: chunk_len.max(1),
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, record: R) -> io::Result<()> {
        self.chunk.push(record);
        if self.chunk.len() >= self.chunk_len {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.chunk.sort_unstable();
        let mut w = BufWriter::new(tempfile::tempfile()?);
        let mut buf = vec![0; R::BYTES];
        for r in &self.chunk {
            r.encode(&mut buf);
            w.write_all(&buf)?;
        }
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        self.chunk.clear();
        Ok(())
    }

    /// All records pushed, in order.
    pub fn finish(mut self) -> io::Result<Sorted<R>> {
        self.chunk.sort_unstable();
        let mut sorted = Sorted {
            readers: self.runs.into_iter().map(BufReader::new).collect(),
            heap: BinaryHeap::new(),
            memory: std::mem::take(&mut self.chunk).into_iter(),
            memory_head: None,
            buf: vec![0; R::BYTES],
        };
        for i in 0..sorted.readers.len() {
            sorted.refill(i)?;
        }
        sorted.memory_head = sorted.memory.next();
        Ok(sorted)
    }
}

/// The merged, sorted stream.
pub struct Sorted<R> {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(R, usize)>>,
    memory: std::vec::IntoIter<R>,
    memory_head: Option<R>,
    buf: Vec<u8>,
}

impl<R: Fixed> Sorted<R> {
    fn refill(&mut self, i: usize) -> io::Result<()> {
        match self.readers[i].read_exact(&mut self.buf) {
            Ok(()) => {
                self.heap.push(Reverse((R::decode(&self.buf), i)));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn next_record(&mut self) -> io::Result<Option<R>> {
        let from_disk = self.heap.peek().map(|Reverse((r, _))| *r);
        match (from_disk, self.memory_head) {
            (Some(d), Some(m)) if m < d => Ok(self.take_memory()),
            (None, Some(_)) => Ok(self.take_memory()),
            (Some(_), _) => {
                let Some(Reverse((record, i))) = self.heap.pop() else {
                    return Ok(None);
                };
                self.refill(i)?;
                Ok(Some(record))
            }
            (None, None) => Ok(None),
        }
    }

    fn take_memory(&mut self) -> Option<R> {
        std::mem::replace(&mut self.memory_head, self.memory.next())
    }
}

/// Little-endian helpers for `Fixed` implementations.
pub fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct N(u64);

    impl Fixed for N {
        const BYTES: usize = 8;
        fn encode(&self, out: &mut [u8]) {
            put_u64(out, 0, self.0);
        }
        fn decode(b: &[u8]) -> Self {
            N(get_u64(b, 0))
        }
    }

    fn sort(values: &[u64], chunk: usize) -> Vec<u64> {
        let mut s = Sorter::new(chunk);
        for &v in values {
            s.push(N(v)).expect("push");
        }
        let mut sorted = s.finish().expect("finish");
        let mut out = Vec::new();
        while let Some(N(v)) = sorted.next_record().expect("next") {
            out.push(v);
        }
        out
    }

    #[test]
    fn sorts_across_spilled_runs_and_memory() {
        let values: Vec<u64> = (0..10_000u64).map(|i| (i * 7919) % 10_007).collect();
        let mut expected = values.clone();
        expected.sort_unstable();
        assert_eq!(sort(&values, 333), expected);
        assert_eq!(sort(&values, 1_000_000), expected);
        assert_eq!(sort(&[], 4), Vec::<u64>::new());
        assert_eq!(sort(&[3, 1, 2], 1), vec![1, 2, 3]);
    }
}

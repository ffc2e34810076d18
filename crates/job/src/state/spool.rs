//! The spool: where results land as they complete.
//!
//! A job's state directory holds two append-only JSONL files, one for successes and one for
//! errors, and a binary index with one fixed-size record per result:
//! `(line, outcome, offset, len)`. The spool files are readable as ordinary JSONL while the job
//! runs (up to the last flush). The index is what the input-ordered finalize sorts and what a
//! resumed job reads to learn which lines are done.
//!
//! Crash safety comes from the checkpoint (see `sink`): it flushes and syncs all three files and
//! then records their lengths in the manifest. A resumed job truncates each file back to those
//! lengths, which discards a torn last record together with anything after the checkpoint.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::extsort::{Fixed, get_u32, get_u64, put_u64};
use crate::state::outcome::LineOutcome;
use crate::state::timings::{LineTiming, TIMINGS, Timing};

pub const OUTPUT_SPOOL: &str = "output.spool.jsonl";
pub const ERRORS_SPOOL: &str = "errors.spool.jsonl";
pub const INDEX: &str = "index.bin";

/// One index record: where a line's result sits in the spool. Sorts by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexRecord {
    pub line: u64,
    pub outcome: LineOutcome,
    pub offset: u64,
    pub len: u32,
}

impl Fixed for IndexRecord {
    const BYTES: usize = 21;

    fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.line);
        b[8] = self.outcome.code();
        put_u64(b, 9, self.offset);
        b[17..21].copy_from_slice(&self.len.to_le_bytes());
    }

    /// Unknown outcome bytes cannot come from this program; they decode as engine errors so a
    /// damaged index still yields every line exactly once.
    fn decode(b: &[u8]) -> Self {
        Self {
            line: get_u64(b, 0),
            outcome: LineOutcome::from_code(b[8]).unwrap_or(LineOutcome::EngineError),
            offset: get_u64(b, 9),
            len: get_u32(b, 17),
        }
    }
}

/// Lengths of the three spool files: how much of each a checkpoint vouches for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub output: u64,
    pub errors: u64,
    pub index: u64,
}

struct SpoolFile {
    writer: BufWriter<File>,
    len: u64,
}

impl SpoolFile {
    fn open(path: &Path, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let actual = file.metadata()?.len();
        if actual < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {actual} bytes but the last checkpoint recorded {len}; the state \
                     directory is damaged (start over with --restart)",
                    path.display()
                ),
            ));
        }
        // Drop whatever came after the checkpoint, a torn last record included.
        file.set_len(len)?;
        let mut writer = BufWriter::with_capacity(256 * 1024, file);
        std::io::Seek::seek(&mut writer, io::SeekFrom::Start(len))?;
        Ok(Self { writer, len })
    }
}

pub struct Spool {
    dir: PathBuf,
    output: SpoolFile,
    errors: SpoolFile,
    index: SpoolFile,
    /// Advisory (see `timings`): cut back to whole records, never checked against a checkpoint.
    timings: SpoolFile,
}

/// Duplicated file handles, so the spool can be synced without holding the lock that appends.
pub struct SyncHandles([File; 3]);

impl SyncHandles {
    /// Data first, then the index that points into it.
    pub fn sync(&self) -> io::Result<()> {
        for f in &self.0 {
            f.sync_data()?;
        }
        Ok(())
    }
}

impl Spool {
    /// Opens the spool in `dir` (created if needed), cut back to `at`.
    pub fn open(dir: &Path, at: Positions) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            output: SpoolFile::open(&dir.join(OUTPUT_SPOOL), at.output)?,
            errors: SpoolFile::open(&dir.join(ERRORS_SPOOL), at.errors)?,
            index: SpoolFile::open(&dir.join(INDEX), at.index)?,
            timings: open_timings(&dir.join(TIMINGS))?,
        })
    }

    /// Appends one complete result line (newline included) for input line `line`, and how its
    /// request went.
    pub fn append(
        &mut self,
        line: u64,
        outcome: LineOutcome,
        record: &[u8],
        timing: Timing,
    ) -> io::Result<()> {
        let file = if outcome.is_success() {
            &mut self.output
        } else {
            &mut self.errors
        };
        let entry = IndexRecord {
            line,
            outcome,
            offset: file.len,
            len: u32::try_from(record.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "a result line over 4 GiB")
            })?,
        };
        file.writer.write_all(record)?;
        file.len += record.len() as u64;
        let mut encoded = [0; IndexRecord::BYTES];
        entry.encode(&mut encoded);
        self.index.writer.write_all(&encoded)?;
        self.index.len += IndexRecord::BYTES as u64;
        let mut encoded = [0; LineTiming::BYTES];
        LineTiming { line, timing }.encode(&mut encoded);
        self.timings.writer.write_all(&encoded)?;
        self.timings.len += LineTiming::BYTES as u64;
        Ok(())
    }

    /// Hands everything appended so far to the OS and returns the files' lengths.
    pub fn flush(&mut self) -> io::Result<Positions> {
        self.output.writer.flush()?;
        self.errors.writer.flush()?;
        self.index.writer.flush()?;
        self.timings.writer.flush()?;
        Ok(self.positions())
    }

    pub fn positions(&self) -> Positions {
        Positions {
            output: self.output.len,
            errors: self.errors.len,
            index: self.index.len,
        }
    }

    pub fn sync_handles(&self) -> io::Result<SyncHandles> {
        Ok(SyncHandles([
            self.output.writer.get_ref().try_clone()?,
            self.errors.writer.get_ref().try_clone()?,
            self.index.writer.get_ref().try_clone()?,
        ]))
    }

    pub fn files(&self) -> SpoolFiles {
        SpoolFiles::in_dir(&self.dir)
    }
}

/// The timings file, cut back to its whole records.
fn open_timings(path: &Path) -> io::Result<SpoolFile> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    SpoolFile::open(path, len - len % LineTiming::BYTES as u64)
}

/// Where a state directory's spool files are.
#[derive(Debug, Clone)]
pub struct SpoolFiles {
    pub output: PathBuf,
    pub errors: PathBuf,
    pub index: PathBuf,
    pub timings: PathBuf,
}

impl SpoolFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            output: dir.join(OUTPUT_SPOOL),
            errors: dir.join(ERRORS_SPOOL),
            index: dir.join(INDEX),
            timings: dir.join(TIMINGS),
        }
    }
}

/// Reads the first `len` bytes of an index file, record by record (a torn last record is not
/// read). Reads 12,288 records at a time: the results API scans a running job's index per page.
pub fn read_index(path: &Path, len: u64, mut each: impl FnMut(IndexRecord)) -> io::Result<()> {
    const CHUNK: usize = IndexRecord::BYTES * 12 * 1024;
    let mut file = File::open(path)?.take(len);
    let mut buf = vec![0; CHUNK];
    let mut filled = 0;
    loop {
        let n = match file.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        let whole = filled - filled % IndexRecord::BYTES;
        for record in buf[..whole].chunks_exact(IndexRecord::BYTES) {
            each(IndexRecord::decode(record));
        }
        buf.copy_within(whole..filled, 0);
        filled -= whole;
        if n == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(dir: &Path, len: u64) -> Vec<IndexRecord> {
        let mut out = Vec::new();
        read_index(&dir.join(INDEX), len, |r| out.push(r)).expect("index");
        out
    }

    #[test]
    fn appends_results_and_indexes_them() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("state");
        let mut spool = Spool::open(&state, Positions::default()).expect("open");
        spool
            .append(2, LineOutcome::Succeeded, b"{\"a\":1}\n", Timing::default())
            .expect("append");
        spool
            .append(1, LineOutcome::Expired, b"{\"e\":1}\n", Timing::default())
            .expect("append");
        spool
            .append(3, LineOutcome::Succeeded, b"{\"b\":2}\n", Timing::default())
            .expect("append");
        let at = spool.flush().expect("flush");
        assert_eq!(
            at,
            Positions {
                output: 16,
                errors: 8,
                index: 63
            }
        );
        let files = spool.files();
        assert_eq!(
            fs::read(&files.output).expect("read"),
            b"{\"a\":1}\n{\"b\":2}\n"
        );
        assert_eq!(fs::read(&files.errors).expect("read"), b"{\"e\":1}\n");
        let index = index_of(&state, at.index);
        assert_eq!(index.len(), 3);
        assert_eq!(
            index[2],
            IndexRecord {
                line: 3,
                outcome: LineOutcome::Succeeded,
                offset: 8,
                len: 8
            }
        );
        assert_eq!(index[1].outcome, LineOutcome::Expired);
    }

    #[test]
    fn reopening_cuts_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().expect("temp");
        let mut spool = Spool::open(dir.path(), Positions::default()).expect("open");
        spool
            .append(1, LineOutcome::Succeeded, b"one\n", Timing::default())
            .expect("append");
        let checkpoint = spool.flush().expect("flush");
        spool
            .append(2, LineOutcome::Succeeded, b"two\n", Timing::default())
            .expect("append");
        spool.flush().expect("flush");
        drop(spool);
        // A torn record after the checkpoint.
        let files = SpoolFiles::in_dir(dir.path());
        let mut f = OpenOptions::new()
            .append(true)
            .open(&files.output)
            .expect("open");
        f.write_all(b"{\"partial").expect("write");
        drop(f);

        let mut spool = Spool::open(dir.path(), checkpoint).expect("reopen");
        spool
            .append(3, LineOutcome::Succeeded, b"three\n", Timing::default())
            .expect("append");
        let at = spool.flush().expect("flush");
        assert_eq!(fs::read(&files.output).expect("read"), b"one\nthree\n");
        let lines: Vec<u64> = index_of(dir.path(), at.index)
            .iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, vec![1, 3]);
    }

    #[test]
    fn a_spool_shorter_than_its_checkpoint_is_refused() {
        let dir = tempfile::tempdir().expect("temp");
        let at = Positions {
            output: 10,
            errors: 0,
            index: 0,
        };
        let err = Spool::open(dir.path(), at).err().expect("refused");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}

//! The spool: where results land as they complete.
//!
//! A job's state directory holds two append-only JSONL files, one for successes and one for
//! errors, and a binary index with one fixed-size record per result: `(line, kind, offset, len)`.
//! The spool files are readable as ordinary JSONL while the job runs. Finalizing in completion
//! order is a rename of each spool file into place; the index is what an input-ordered finalize
//! and a resume after a crash read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const OUTPUT_SPOOL: &str = "output.spool.jsonl";
pub const ERRORS_SPOOL: &str = "errors.spool.jsonl";
pub const INDEX: &str = "index.bin";

/// Which final file a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Output = 0,
    Error = 1,
}

/// One index record: where a line's result sits in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRecord {
    pub line: u64,
    pub kind: Kind,
    pub offset: u64,
    pub len: u32,
}

impl IndexRecord {
    pub const BYTES: usize = 21;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0; Self::BYTES];
        b[..8].copy_from_slice(&self.line.to_le_bytes());
        b[8] = self.kind as u8;
        b[9..17].copy_from_slice(&self.offset.to_le_bytes());
        b[17..].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

struct SpoolFile {
    writer: BufWriter<File>,
    len: u64,
}

impl SpoolFile {
    fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            writer: BufWriter::with_capacity(256 * 1024, file),
            len: 0,
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }
}

pub struct Spool {
    dir: PathBuf,
    output: SpoolFile,
    errors: SpoolFile,
    index: SpoolFile,
}

impl Spool {
    /// Creates a fresh spool in `dir`, which must not hold one already.
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            output: SpoolFile::create(&dir.join(OUTPUT_SPOOL))?,
            errors: SpoolFile::create(&dir.join(ERRORS_SPOOL))?,
            index: SpoolFile::create(&dir.join(INDEX))?,
        })
    }

    /// Appends one complete result line (newline included) for input line `line`.
    pub fn append(&mut self, line: u64, kind: Kind, record: &[u8]) -> io::Result<()> {
        let file = match kind {
            Kind::Output => &mut self.output,
            Kind::Error => &mut self.errors,
        };
        let entry = IndexRecord {
            line,
            kind,
            offset: file.len,
            len: u32::try_from(record.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "a result line over 4 GiB")
            })?,
        };
        file.writer.write_all(record)?;
        file.len += record.len() as u64;
        self.index.writer.write_all(&entry.encode())?;
        self.index.len += IndexRecord::BYTES as u64;
        Ok(())
    }

    /// Makes everything appended so far durable: spool data first, then the index that points
    /// into it, so the index never refers to bytes a crash could lose.
    pub fn sync(&mut self) -> io::Result<()> {
        self.output.sync()?;
        self.errors.sync()?;
        self.index.sync()
    }

    /// Syncs and closes the spool, returning where its two result files are.
    pub fn close(mut self) -> io::Result<SpoolFiles> {
        self.sync()?;
        Ok(SpoolFiles {
            output: self.dir.join(OUTPUT_SPOOL),
            errors: self.dir.join(ERRORS_SPOOL),
            output_bytes: self.output.len,
            error_bytes: self.errors.len,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SpoolFiles {
    pub output: PathBuf,
    pub errors: PathBuf,
    pub output_bytes: u64,
    pub error_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_results_and_indexes_them() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("state");
        let mut spool = Spool::create(&state).expect("create");
        spool
            .append(2, Kind::Output, b"{\"a\":1}\n")
            .expect("append");
        spool
            .append(1, Kind::Error, b"{\"e\":1}\n")
            .expect("append");
        spool
            .append(3, Kind::Output, b"{\"b\":2}\n")
            .expect("append");
        let files = spool.close().expect("close");
        assert_eq!(
            fs::read(&files.output).expect("read"),
            b"{\"a\":1}\n{\"b\":2}\n"
        );
        assert_eq!(fs::read(&files.errors).expect("read"), b"{\"e\":1}\n");
        let index = fs::read(state.join(INDEX)).expect("index");
        assert_eq!(index.len(), 3 * IndexRecord::BYTES);
        let third = IndexRecord {
            line: 3,
            kind: Kind::Output,
            offset: 8,
            len: 8,
        };
        assert_eq!(&index[2 * IndexRecord::BYTES..], &third.encode());
        assert!(
            Spool::create(&state).is_err(),
            "a second spool must not clobber the first"
        );
    }
}

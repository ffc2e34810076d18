//! The input's bytes, as the two passes over them see them.
//!
//! A job reads its input twice: the validation pass, then the dispatch pass. Two things must
//! hold between them, or lines are lost or sent unchecked:
//! - the input can be read twice. Standard input (`-`), pipes, FIFOs and other streams cannot,
//!   so the validation pass copies what it reads of them ([`Recording`]) and the dispatch pass
//!   reads the copy;
//! - the dispatch pass reads the very bytes the validation pass checked. The validation pass
//!   hashes each block of [`BLOCK`] bytes; the dispatch pass ([`Verified`]) checks each block
//!   before it hands out any byte of it, and fails when a block differs or the file grew or
//!   shrank. A file edited, truncated or appended to during the run stops the job (its state
//!   kept) instead of losing lines or sending unvalidated ones.

pub mod dedupe;
pub mod line_models;
pub mod reader;
pub mod validate;

use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Bytes per hashed block: small enough that a check costs little memory, large enough that
/// the hashes of a huge input stay small (80 KiB for 10 GiB).
pub const BLOCK: usize = 1 << 20;

/// The name the command line gives standard input.
pub const STDIN: &str = "-";

/// The path to open for `path` (`-` is standard input).
pub fn resolve(path: &Path) -> &Path {
    if path == Path::new(STDIN) {
        Path::new("/dev/stdin")
    } else {
        path
    }
}

/// An opened input, and whether it can only be read once.
pub struct Opened {
    pub file: File,
    /// Not a regular file: a pipe, a FIFO, a terminal, a device.
    pub stream: bool,
}

pub fn open(path: &Path) -> io::Result<Opened> {
    let file = File::open(resolve(path))?;
    // A terminal would wait for someone to type the batch (say, a resume of `run -` without the
    // pipe): say what to do instead.
    if std::io::IsTerminal::is_terminal(&file) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a terminal: pipe the batch file into it (`cat batch.jsonl | batch-runner ... -`) \
             or give the file's path",
        ));
    }
    let stream = !file.metadata()?.is_file();
    Ok(Opened { file, stream })
}

/// What the validation pass read: its size and the hash of each block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocks {
    pub size: u64,
    hashes: Vec<u64>,
}

/// What identifies an input's bytes across runs: recorded in the state (and in the completion
/// marker) when the job starts, compared when it resumes.
///
/// `current` is `xxh3:SIZE-HASH`: xxh3 has a fixed specification, so a binary built with another
/// toolchain computes the same. Earlier versions recorded `SIZE-HASH` with std's
/// `DefaultHasher`, whose algorithm may change between Rust releases; `legacy` is that form, so
/// a state they left still resumes (with this toolchain), and the state moves to the current
/// form as it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFingerprint {
    pub current: String,
    pub legacy: String,
}

impl InputFingerprint {
    /// A fingerprint as a state recorded it, to open that state without its input.
    pub fn recorded(text: &str) -> Self {
        Self {
            current: text.to_owned(),
            legacy: text.to_owned(),
        }
    }

    /// Whether a recorded fingerprint (of either form) names these bytes.
    pub fn matches(&self, recorded: &str) -> bool {
        recorded == self.current || recorded == self.legacy
    }
}

/// The reader of the validation pass: hashes what passes through it (per block, and as a whole
/// for the state's fingerprint) and, for a stream, writes it to a copy.
pub struct Recording<R> {
    inner: R,
    whole: Xxh3,
    legacy: DefaultHasher,
    block: Xxh3,
    in_block: usize,
    blocks: Blocks,
    copy: Option<(BufWriter<File>, PathBuf)>,
}

impl<R: Read> Recording<R> {
    /// `copy`: the file a stream is copied to, and its path (for messages).
    pub fn new(inner: R, copy: Option<(File, PathBuf)>) -> Self {
        Self {
            inner,
            whole: Xxh3::new(),
            legacy: DefaultHasher::new(),
            block: Xxh3::new(),
            in_block: 0,
            blocks: Blocks::default(),
            copy: copy.map(|(f, p)| (BufWriter::with_capacity(BLOCK, f), p)),
        }
    }

    /// The block hashes and the fingerprint; makes the copy durable.
    pub fn finish(mut self) -> io::Result<(Blocks, InputFingerprint)> {
        if self.in_block > 0 {
            self.blocks.hashes.push(self.block.digest());
        }
        if let Some((writer, path)) = self.copy {
            let file = writer
                .into_inner()
                .map_err(|e| copy_error(&path)(e.into_error()))?;
            file.sync_all().map_err(copy_error(&path))?;
        }
        let size = self.blocks.size;
        let fingerprint = InputFingerprint {
            current: format!("xxh3:{size}-{:016x}", self.whole.digest()),
            legacy: format!("{size}-{:016x}", self.legacy.finish()),
        };
        Ok((self.blocks, fingerprint))
    }

    fn record(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.legacy.write(data);
        self.blocks.size += data.len() as u64;
        while !data.is_empty() {
            let take = (BLOCK - self.in_block).min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take;
            if self.in_block == BLOCK {
                self.blocks.hashes.push(self.block.digest());
                self.block.reset();
                self.in_block = 0;
            }
            data = &data[take..];
        }
    }
}

/// Writing the copy of a stream failed (the copy's fault, not the input's).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the copy of the input at {path}: {source}")]
pub struct CopyFailed {
    path: String,
    source: io::Error,
}

impl CopyFailed {
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<CopyFailed>())
    }
}

fn copy_error(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |source| {
        io::Error::new(
            source.kind(),
            CopyFailed {
                path: path.display().to_string(),
                source,
            },
        )
    }
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.record(&buf[..n]);
        if let Some((writer, path)) = &mut self.copy {
            writer.write_all(&buf[..n]).map_err(copy_error(path))?;
        }
        Ok(n)
    }
}

/// The input no longer holds the bytes that were validated.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Changed(String);

impl Changed {
    /// The description, when `e` says the input changed.
    pub fn in_error(e: &io::Error) -> Option<&str> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Changed>())
            .map(|c| c.0.as_str())
    }

    /// `e`, saying from which line on the input changed when it is a change.
    pub fn from_line(e: io::Error, line: u64) -> io::Error {
        match Changed::in_error(&e) {
            Some(what) => Changed::error(format!("{what}, from line {line} on")),
            None => e,
        }
    }

    fn error(what: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, Changed(what))
    }
}

/// The reader of the dispatch pass: hands out a block's bytes only once the whole block matched
/// its hash, and ends exactly at the validated size.
pub struct Verified<'a, R> {
    inner: R,
    blocks: &'a Blocks,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    next: usize,
}

impl<'a, R: Read> Verified<'a, R> {
    pub fn new(inner: R, blocks: &'a Blocks) -> Self {
        Self {
            inner,
            blocks,
            buf: Vec::new(),
            pos: 0,
            len: 0,
            next: 0,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let size = self.blocks.size;
        let start = self.next as u64 * BLOCK as u64;
        self.pos = 0;
        self.len = 0;
        if start >= size {
            let mut probe = [0u8; 1];
            if read_full(&mut self.inner, &mut probe)? > 0 {
                return Err(Changed::error(format!(
                    "it grew past the {size} bytes that were validated"
                )));
            }
            return Ok(());
        }
        let want = usize::try_from(size - start).map_or(BLOCK, |left| left.min(BLOCK));
        self.buf.resize(want, 0);
        let got = read_full(&mut self.inner, &mut self.buf)?;
        if got < want {
            return Err(Changed::error(format!(
                "it is now {} bytes long, not the {size} that were validated",
                start + got as u64
            )));
        }
        if self.blocks.hashes.get(self.next) != Some(&xxh3_64(&self.buf)) {
            return Err(Changed::error(format!(
                "bytes {start}..{} differ from those that were validated",
                start + want as u64
            )));
        }
        self.len = want;
        self.next += 1;
        Ok(())
    }
}

impl<R: Read> Read for Verified<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            self.fill()?;
        }
        let n = (self.len - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: &[u8]) -> Blocks {
        let mut r = Recording::new(data, None);
        io::copy(&mut r, &mut io::sink()).expect("read");
        r.finish().expect("finish").0
    }

    fn verify(recorded: &[u8], now: &[u8]) -> io::Result<Vec<u8>> {
        let blocks = record(recorded);
        let mut out = Vec::new();
        Verified::new(now, &blocks).read_to_end(&mut out)?;
        Ok(out)
    }

    fn input(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn the_fingerprint_has_a_fixed_specification() {
        let mut r = Recording::new(&b"{\"custom_id\": \"a\"}\n"[..], None);
        io::copy(&mut r, &mut io::sink()).expect("read");
        let (_, fingerprint) = r.finish().expect("finish");
        // xxh3 of these 19 bytes, as the reference implementation gives it (Python's xxhash
        // 3.x agrees): the same from any build and any toolchain.
        assert_eq!(fingerprint.current, "xxh3:19-da5dce9fe6aa9945");
        assert!(fingerprint.matches(&fingerprint.legacy));
        assert!(!fingerprint.matches("xxh3:19-0000000000000000"));
    }

    #[test]
    fn the_same_bytes_pass_through() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 17] {
            let data = input(len);
            assert_eq!(verify(&data, &data).expect("same"), data, "len {len}");
        }
    }

    #[test]
    fn changed_grown_and_shrunk_inputs_are_refused() {
        let data = input(2 * BLOCK + 17);
        let mut edited = data.clone();
        edited[BLOCK + 5] ^= 1;
        let mut grown = data.clone();
        grown.push(b'\n');
        for (now, says) in [
            (&edited[..], "bytes 1048576..2097152 differ"),
            (&grown[..], "grew past the 2097169 bytes"),
            (&data[..BLOCK + 3], "now 1048579 bytes long"),
            (&data[..2 * BLOCK], "now 2097152 bytes long"),
        ] {
            let e = verify(&data, now).expect_err("changed");
            let what = Changed::in_error(&e).expect("a Changed error");
            assert!(what.contains(says), "{what}");
        }
    }

    #[test]
    fn no_byte_of_a_changed_block_is_handed_out() {
        let data = input(BLOCK + 10);
        let mut edited = data.clone();
        edited[BLOCK + 9] ^= 1;
        let blocks = record(&data);
        let mut reader = Verified::new(&edited[..], &blocks);
        let mut first = vec![0; BLOCK];
        reader
            .read_exact(&mut first)
            .expect("first block is intact");
        assert!(reader.read(&mut [0; 4]).is_err());
    }
}

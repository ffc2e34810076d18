//! Turning the spool into the final output and error files.
//!
//! Final files appear atomically: each is complete under a temporary name in the destination's
//! directory, synced, and then renamed, so a reader never sees a half-written file. The spool is
//! left untouched until both files are in place, so a crash during finalize is repaired by
//! running the same command again (it finds every line done and finalizes again).
//!
//! - Input order (the default): the index is sorted by line with [`crate::extsort`] (memory stays
//!   flat), then each result's bytes are copied from the spool. The spool is nearly in input order
//!   already, so the copy mostly reads forward through a window buffer.
//! - Completion order: the spool files are the final files; they are hard-linked into place (no
//!   copy), or copied where links are not possible.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::extsort::Sorter;
use crate::state::spool::{IndexRecord, Positions, SpoolFiles, read_index};

/// Index records sorted in memory before spilling (24 bytes each in memory: 1.5 MiB), small
/// enough that memory does not grow with the result set (a million lines make 16 runs).
const SORT_CHUNK: usize = 64 * 1024;
const COPY_WINDOW: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Input,
    Completion,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}: {source}")]
pub struct FinalizeError {
    /// "write" (a final file) or "read" (the spool).
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn writing(path: &Path) -> impl Fn(io::Error) -> FinalizeError + '_ {
    move |source| FinalizeError {
        action: "write",
        path: path.to_owned(),
        source,
    }
}

fn reading(path: &Path) -> impl Fn(io::Error) -> FinalizeError + '_ {
    move |source| FinalizeError {
        action: "read",
        path: path.to_owned(),
        source,
    }
}

pub struct Destination<'a> {
    pub output: &'a Path,
    pub errors: &'a Path,
}

/// Writes the final files from the spool, which is valid up to `at`.
pub fn finalize(
    spool: &SpoolFiles,
    at: Positions,
    order: Order,
    to: &Destination<'_>,
) -> Result<(), FinalizeError> {
    let out_tmp = temporary_name(to.output);
    let err_tmp = temporary_name(to.errors);
    let written = match order {
        Order::Completion => link_or_copy(&spool.output, &out_tmp, at.output, to.output)
            .and_then(|()| link_or_copy(&spool.errors, &err_tmp, at.errors, to.errors)),
        Order::Input => sorted_copy(spool, at, to),
    };
    let placed = written
        .and_then(|()| place(&out_tmp, to.output))
        .and_then(|()| place(&err_tmp, to.errors));
    if placed.is_err() {
        // A full disk or a bad path must not leave half-written files behind.
        let _ = fs::remove_file(&out_tmp);
        let _ = fs::remove_file(&err_tmp);
    }
    placed
}

/// Renames a complete, synced temporary file into place and syncs the directory.
fn place(tmp: &Path, to: &Path) -> Result<(), FinalizeError> {
    fs::rename(tmp, to).map_err(writing(to))?;
    // Renaming a hard link over another link to the same file (a resumed finalize in completion
    // order) succeeds without removing the temporary name.
    let _ = fs::remove_file(tmp);
    sync_parent(to).map_err(writing(to))
}

fn link_or_copy(from: &Path, tmp: &Path, len: u64, to: &Path) -> Result<(), FinalizeError> {
    let fail = writing(to);
    let _ = fs::remove_file(tmp);
    // A link shares the spool's bytes, which the last checkpoint synced; only a spool longer
    // than its checkpoint (nothing appends after the final one) would need trimming.
    let linked =
        fs::metadata(from).is_ok_and(|m| m.len() == len) && fs::hard_link(from, tmp).is_ok();
    if !linked {
        let mut src = File::open(from).map_err(reading(from))?.take(len);
        let mut dst = File::create(tmp).map_err(&fail)?;
        io::copy(&mut src, &mut dst).map_err(&fail)?;
        dst.sync_all().map_err(fail)?;
    }
    Ok(())
}

/// Copies every result in line order into the two temporary files.
fn sorted_copy(
    spool: &SpoolFiles,
    at: Positions,
    to: &Destination<'_>,
) -> Result<(), FinalizeError> {
    let index = reading(&spool.index);
    let mut sorter = Sorter::<IndexRecord>::new(SORT_CHUNK);
    let mut pushed = Ok(());
    read_index(&spool.index, at.index, |r| {
        if pushed.is_ok() {
            pushed = sorter.push(r);
        }
    })
    .map_err(&index)?;
    pushed.map_err(&index)?;
    let mut sorted = sorter.finish().map_err(&index)?;
    let mut output = Target::create(to.output, &spool.output)?;
    let mut errors = Target::create(to.errors, &spool.errors)?;
    while let Some(r) = sorted.next_record().map_err(&index)? {
        let target = if r.outcome.is_success() {
            &mut output
        } else {
            &mut errors
        };
        target.copy(r.offset, r.len as usize)?;
    }
    output.finish()?;
    errors.finish()
}

/// One final file being written (as its temporary name) from one spool file, through a read
/// window over the spool.
struct Target<'a> {
    out: BufWriter<File>,
    /// The final file's name, for messages.
    path: &'a Path,
    source: File,
    source_path: &'a Path,
    window: Vec<u8>,
    /// Spool offset of `window[0]`.
    window_start: u64,
}

impl<'a> Target<'a> {
    fn create(path: &'a Path, source: &'a Path) -> Result<Self, FinalizeError> {
        let file = File::create(temporary_name(path)).map_err(writing(path))?;
        Ok(Self {
            out: BufWriter::with_capacity(COPY_WINDOW, file),
            path,
            source: File::open(source).map_err(reading(source))?,
            source_path: source,
            window: Vec::with_capacity(COPY_WINDOW),
            window_start: 0,
        })
    }

    fn copy(&mut self, offset: u64, len: usize) -> Result<(), FinalizeError> {
        let end = offset + len as u64;
        let window_end = self.window_start + self.window.len() as u64;
        if offset < self.window_start || end > window_end {
            self.fill(offset, len).map_err(reading(self.source_path))?;
        }
        let start = (offset - self.window_start) as usize;
        self.out
            .write_all(&self.window[start..start + len])
            .map_err(writing(self.path))
    }

    /// Reads the spool from `offset`: a full window, or the whole record if it is larger.
    fn fill(&mut self, offset: u64, len: usize) -> io::Result<()> {
        self.source.seek(SeekFrom::Start(offset))?;
        self.window.clear();
        let want = len.max(COPY_WINDOW) as u64;
        (&mut self.source)
            .take(want)
            .read_to_end(&mut self.window)?;
        self.window_start = offset;
        if self.window.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spool is shorter than its index says",
            ));
        }
        Ok(())
    }

    fn finish(self) -> Result<(), FinalizeError> {
        let fail = writing(self.path);
        let file = self.out.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)
    }
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a rename durable by syncing the directory that holds the new name.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::outcome::LineOutcome;
    use crate::state::spool::Spool;

    fn spool_with(dir: &Path, results: &[(u64, LineOutcome)]) -> (SpoolFiles, Positions) {
        let mut spool = Spool::open(dir, Positions::default()).expect("spool");
        for (line, outcome) in results {
            spool
                .append(
                    *line,
                    *outcome,
                    format!("r{line}\n").as_bytes(),
                    crate::state::timings::Timing::default(),
                )
                .expect("append");
        }
        let at = spool.flush().expect("flush");
        (spool.files(), at)
    }

    #[test]
    fn input_order_sorts_by_line_into_both_files() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("state");
        let results = [
            (3, LineOutcome::Succeeded),
            (1, LineOutcome::Expired),
            (4, LineOutcome::Succeeded),
            (2, LineOutcome::Succeeded),
            (5, LineOutcome::EngineError),
        ];
        let (files, at) = spool_with(&state, &results);
        let out = dir.path().join("out.jsonl");
        let err = dir.path().join("out.errors.jsonl");
        let to = Destination {
            output: &out,
            errors: &err,
        };
        finalize(&files, at, Order::Input, &to).expect("finalize");
        assert_eq!(fs::read_to_string(&out).expect("out"), "r2\nr3\nr4\n");
        assert_eq!(fs::read_to_string(&err).expect("err"), "r1\nr5\n");
        assert!(
            files.output.exists(),
            "the spool stays until the caller removes the state"
        );
        // Finalizing again (as after a crash) gives the same files.
        finalize(&files, at, Order::Input, &to).expect("again");
        assert_eq!(fs::read_to_string(&out).expect("out"), "r2\nr3\nr4\n");
    }

    #[test]
    fn completion_order_keeps_the_spool_order() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("state");
        let (files, at) = spool_with(
            &state,
            &[(3, LineOutcome::Succeeded), (1, LineOutcome::Succeeded)],
        );
        let out = dir.path().join("o.jsonl");
        let err = dir.path().join("e.jsonl");
        let to = Destination {
            output: &out,
            errors: &err,
        };
        finalize(&files, at, Order::Completion, &to).expect("finalize");
        assert_eq!(fs::read_to_string(&out).expect("out"), "r3\nr1\n");
        assert_eq!(fs::read_to_string(&err).expect("err"), "");
    }

    #[test]
    fn large_records_and_backward_jumps_are_copied_whole() {
        let dir = tempfile::tempdir().expect("temp");
        let mut spool = Spool::open(dir.path(), Positions::default()).expect("spool");
        let big = format!("{}\n", "x".repeat(COPY_WINDOW + 10));
        spool
            .append(
                2,
                LineOutcome::Succeeded,
                b"small\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        spool
            .append(
                1,
                LineOutcome::Succeeded,
                big.as_bytes(),
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        let at = spool.flush().expect("flush");
        let out = dir.path().join("o");
        let err = dir.path().join("e");
        let to = Destination {
            output: &out,
            errors: &err,
        };
        finalize(&spool.files(), at, Order::Input, &to).expect("finalize");
        assert_eq!(
            fs::read_to_string(&out).expect("out"),
            format!("{big}small\n")
        );
    }

    /// A final file that cannot be written fails finalize, names that file, and leaves no
    /// temporary file behind (as on a full disk).
    #[test]
    fn a_failure_names_the_file_and_leaves_no_temporary_file() {
        for order in [Order::Input, Order::Completion] {
            let dir = tempfile::tempdir().expect("temp");
            let results = [(1, LineOutcome::Succeeded), (2, LineOutcome::EngineError)];
            let (files, at) = spool_with(&dir.path().join("state"), &results);
            let out = dir.path().join("out.jsonl");
            let err = dir.path().join("gone/out.errors.jsonl");
            let to = Destination {
                output: &out,
                errors: &err,
            };
            let e = finalize(&files, at, order, &to).expect_err("no directory for --errors");
            assert_eq!(e.path, err, "{e}");
            assert!(!temporary_name(&out).exists(), "{order:?}");
            assert!(!out.exists(), "{order:?}: nothing placed");
        }
    }
}

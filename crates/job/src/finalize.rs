//! Turning the spool into the final output and error files.
//!
//! Final files appear atomically: each is complete under a temporary name in the destination's
//! directory, synced, and then renamed, so a reader never sees a half-written file. When the
//! state directory is on the same file system as the destination (the default: it sits next to
//! the output), the spool file itself is renamed and no byte is copied.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::spool::SpoolFiles;

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct FinalizeError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Moves the spool files to `output` and `errors`, in completion order, and removes the state
/// directory.
pub fn finalize(
    spool: &SpoolFiles,
    state_dir: &Path,
    output: &Path,
    errors: &Path,
) -> Result<(), FinalizeError> {
    place(&spool.output, output)?;
    place(&spool.errors, errors)?;
    fs::remove_dir_all(state_dir).map_err(|source| FinalizeError {
        path: state_dir.to_owned(),
        source,
    })
}

fn place(from: &Path, to: &Path) -> Result<(), FinalizeError> {
    let fail = |source| FinalizeError {
        path: to.to_owned(),
        source,
    };
    if fs::rename(from, to).is_err() {
        // Most likely another file system: copy under a temporary name beside the target, sync,
        // then rename into place.
        let tmp = temporary_name(to);
        fs::copy(from, &tmp).map_err(fail)?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(fail)?;
        fs::rename(&tmp, to).map_err(fail)?;
    }
    sync_parent(to).map_err(fail)
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
    use crate::spool::{Kind, Spool};

    #[test]
    fn renames_spool_files_into_place_and_removes_state() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("out.jsonl.state");
        let mut spool = Spool::create(&state).expect("spool");
        spool.append(1, Kind::Output, b"ok\n").expect("append");
        let files = spool.close().expect("close");
        let out = dir.path().join("out.jsonl");
        let err = dir.path().join("out.errors.jsonl");
        finalize(&files, &state, &out, &err).expect("finalize");
        assert_eq!(fs::read(&out).expect("out"), b"ok\n");
        assert_eq!(fs::read(&err).expect("err"), b"");
        assert!(!state.exists());
    }
}

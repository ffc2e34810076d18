//! A job's state directory: the spool plus a manifest, and resuming from them.
//!
//! The manifest is small JSON replaced atomically (write a temporary file, sync it, rename it over
//! the old one, sync the directory) at every checkpoint. It records which input the state belongs
//! to (a fingerprint of its bytes), when the job first started (the completion window counts from
//! there, across resumes), and how far each spool file is valid.

pub mod finished;
pub mod mirror;
pub mod outcome;
pub mod sink;
pub mod spool;
pub mod timings;

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use batch_format::output::Usage;
use serde::{Deserialize, Serialize};

use crate::bitset::BitSet;
use crate::input::InputFingerprint;
use crate::state::outcome::LineOutcome;
use crate::state::spool::{Positions, Spool, SpoolFiles, read_index};

pub const MANIFEST: &str = "manifest.json";

/// Opens `path` for reading; `None` when it does not exist (a spool file nothing was appended
/// to yet, a result file removed by retention).
pub(crate) fn open_if_present(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
const VERSION: u32 = 1;

/// Totals that must survive a resume, kept consistent with the spool positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub retries: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Added after the first manifests: absent in theirs (none counted then).
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Totals {
    /// The tokens of the results counted so far.
    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            total_tokens: self.total_tokens,
            cached_tokens: self.cached_tokens,
            reasoning_tokens: self.reasoning_tokens,
        }
    }

    pub fn add_usage(&mut self, usage: Usage) {
        self.input_tokens += usage.input_tokens;
        self.output_tokens += usage.output_tokens;
        self.total_tokens += usage.total_tokens;
        self.cached_tokens += usage.cached_tokens;
        self.reasoning_tokens += usage.reasoning_tokens;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The input as given on the command line (for messages only).
    pub input: String,
    /// Size and content hash of the input: a resume against other bytes is refused.
    pub input_fingerprint: String,
    /// Unix time of the job's first start, in milliseconds.
    pub started_at_ms: u64,
    /// Makes result ids unique to this job and stable across its resumes.
    pub run_tag: String,
    pub positions: Positions,
    pub totals: Totals,
    pub checkpoints: u64,
}

impl Manifest {
    pub fn load(dir: &Path) -> io::Result<Option<Self>> {
        let text = match fs::read(dir.join(MANIFEST)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(MANIFEST).display()),
            )
        })
    }

    /// Replaces the manifest atomically and durably.
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fs::write(&tmp, text)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dir.join(MANIFEST))?;
        File::open(dir)?.sync_all()
    }
}

/// Why a state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{dir} holds the state of a run of a different input ({input}: the file changed since \
         that run started). Either restore the original input and run the same command again to \
         resume, or add --restart to discard the earlier results and start over"
    )]
    InputChanged { dir: String, input: String },
    #[error(
        "{dir} exists but holds no readable manifest ({reason}); add --restart to discard it and \
         start over"
    )]
    Unreadable { dir: String, reason: String },
    #[error("state directory {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// An opened state directory: where to append, what is done already.
pub struct Opened {
    pub spool: Spool,
    pub manifest: Manifest,
    /// Lines that already have a result.
    pub done: BitSet,
    /// Results already in the spool, by outcome.
    pub counts: [u64; LineOutcome::ALL.len()],
    pub resumed: bool,
}

/// Which of a job's two result files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFile {
    Output,
    Errors,
}

/// The results a running job has made durable so far: the spool file and how many of its bytes
/// the last checkpoint covers (a reader must stop there: past it, a record may be torn). `None`
/// when the job has no state yet.
pub fn results_so_far(
    dir: &Path,
    which: ResultFile,
) -> io::Result<Option<(std::path::PathBuf, u64)>> {
    let Some(manifest) = Manifest::load(dir)? else {
        return Ok(None);
    };
    let spool = SpoolFiles::in_dir(dir);
    Ok(Some(match which {
        ResultFile::Output => (spool.output, manifest.positions.output),
        ResultFile::Errors => (spool.errors, manifest.positions.errors),
    }))
}

pub struct NewJob<'a> {
    pub input: &'a str,
    pub fingerprint: &'a InputFingerprint,
    pub run_tag: String,
}

/// Opens `dir` for the job: resumes what is there, or starts fresh. (`--restart` is the caller's:
/// it must empty the directory before a remote input is downloaded into it.)
pub fn open(dir: &Path, job: NewJob<'_>) -> Result<Opened, StateError> {
    let existing = match Manifest::load(dir) {
        Ok(m) => m,
        Err(e) => {
            return Err(StateError::Unreadable {
                dir: dir.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    match existing {
        Some(manifest) => resume(dir, manifest, &job),
        None if spool_is_empty(dir) => start(dir, job),
        None => Err(StateError::Unreadable {
            dir: dir.display().to_string(),
            reason: "results were written but no checkpoint was recorded".into(),
        }),
    }
}

fn spool_is_empty(dir: &Path) -> bool {
    let files = SpoolFiles::in_dir(dir);
    [files.output, files.errors, files.index]
        .iter()
        .all(|p| fs::metadata(p).map_or(true, |m| m.len() == 0))
}

fn start(dir: &Path, job: NewJob<'_>) -> Result<Opened, StateError> {
    let io_err = |source| StateError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let spool = Spool::open(dir, Positions::default()).map_err(io_err)?;
    let manifest = Manifest {
        version: VERSION,
        input: job.input.to_owned(),
        input_fingerprint: job.fingerprint.current.clone(),
        started_at_ms: unix_now_ms(),
        run_tag: job.run_tag,
        positions: Positions::default(),
        totals: Totals::default(),
        checkpoints: 0,
    };
    manifest.store(dir).map_err(io_err)?;
    Ok(Opened {
        spool,
        manifest,
        done: BitSet::default(),
        counts: [0; LineOutcome::ALL.len()],
        resumed: false,
    })
}

fn resume(dir: &Path, mut manifest: Manifest, job: &NewJob<'_>) -> Result<Opened, StateError> {
    if !job.fingerprint.matches(&manifest.input_fingerprint) {
        return Err(StateError::InputChanged {
            dir: dir.display().to_string(),
            input: job.input.to_owned(),
        });
    }
    // A state of an earlier version moves to the stable form (written at the next checkpoint).
    manifest
        .input_fingerprint
        .clone_from(&job.fingerprint.current);
    let io_err = |source| StateError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let spool = Spool::open(dir, manifest.positions).map_err(io_err)?;
    let mut done = BitSet::default();
    let mut counts = [0; LineOutcome::ALL.len()];
    read_index(&spool.files().index, manifest.positions.index, |r| {
        done.insert(r.line);
        counts[r.outcome.index()] += 1;
    })
    .map_err(io_err)?;
    Ok(Opened {
        spool,
        manifest,
        done,
        counts,
        resumed: true,
    })
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(fingerprint: &str) -> NewJob<'static> {
        NewJob {
            input: "in.jsonl",
            fingerprint: Box::leak(Box::new(InputFingerprint::recorded(fingerprint))),
            run_tag: "tag".into(),
        }
    }

    /// A state an earlier version left (its fingerprint in the old form) resumes, and is on the
    /// stable form from then on.
    #[test]
    fn a_state_with_the_earlier_fingerprint_resumes_and_moves_to_the_stable_one() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("s");
        drop(open(&state, job("12-00ab")).expect("start"));
        let now = InputFingerprint {
            current: "xxh3:12-ffee".into(),
            legacy: "12-00ab".into(),
        };
        let with = |fingerprint| NewJob {
            input: "in.jsonl",
            fingerprint,
            run_tag: "tag".into(),
        };
        let resumed = open(&state, with(&now)).expect("the legacy form is accepted");
        assert!(resumed.resumed);
        assert_eq!(resumed.manifest.input_fingerprint, "xxh3:12-ffee");
        resumed.manifest.store(&state).expect("store");
        drop(resumed);
        let other = InputFingerprint {
            current: "xxh3:12-0000".into(),
            legacy: "12-00ab".into(),
        };
        assert!(matches!(
            open(&state, with(&other)),
            Err(StateError::InputChanged { .. })
        ));
    }

    #[test]
    fn starts_then_resumes_from_the_last_checkpoint() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("s");
        let mut opened = open(&state, job("f1")).expect("start");
        assert!(!opened.resumed);
        opened
            .spool
            .append(
                4,
                LineOutcome::Succeeded,
                b"a\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        opened
            .spool
            .append(
                2,
                LineOutcome::Expired,
                b"b\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        let at = opened.spool.flush().expect("flush");
        opened.manifest.positions = at;
        opened.manifest.store(&state).expect("store");
        opened
            .spool
            .append(
                9,
                LineOutcome::Succeeded,
                b"lost\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        opened.spool.flush().expect("flush");
        drop(opened);

        let resumed = open(&state, job("f1")).expect("resume");
        assert!(resumed.resumed);
        assert!(resumed.done.contains(4) && resumed.done.contains(2) && !resumed.done.contains(9));
        assert_eq!(resumed.counts[LineOutcome::Succeeded.index()], 1);
        assert_eq!(resumed.counts[LineOutcome::Expired.index()], 1);
        assert_eq!(resumed.manifest.run_tag, "tag");
    }

    #[test]
    fn another_input_is_refused_unless_restarting() {
        let dir = tempfile::tempdir().expect("temp");
        let state = dir.path().join("s");
        drop(open(&state, job("f1")).expect("start"));
        let err = open(&state, job("f2")).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("restore the original input") && text.contains("--restart"),
            "{text}"
        );
        fs::remove_dir_all(&state).expect("what --restart does");
        let fresh = open(&state, job("f2")).expect("restart");
        assert!(!fresh.resumed);
    }

    #[test]
    fn results_without_a_manifest_are_not_silently_dropped() {
        let dir = tempfile::tempdir().expect("temp");
        let files = SpoolFiles::in_dir(dir.path());
        fs::write(&files.output, b"x\n").expect("write");
        let err = open(dir.path(), job("f")).err().expect("refused");
        assert!(err.to_string().contains("--restart"));
    }
}

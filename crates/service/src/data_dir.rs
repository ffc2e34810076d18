//! Every path under the data directory, in one place: the database, file contents, the worker
//! settings, and the work directory of each batch with the files its worker keeps there.

use std::path::{Path, PathBuf};

/// How long the log of an ended batch's workers is kept (as long as a batch's input file is by
/// default).
pub const KEEP_LOGS: std::time::Duration = std::time::Duration::from_secs(30 * 86400);

/// How long a cached copy of a result file is kept after it was last written.
pub const KEEP_CACHE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the files directly in `dir` not written to for `idle`; how many went. A missing
/// directory holds nothing to remove.
pub fn remove_idle_files(dir: &Path, idle: std::time::Duration) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let modified = entry.metadata()?.modified()?;
        if modified.elapsed().unwrap_or_default() >= idle {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Where everything of one service lives under `--data-dir`.
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    /// The work directories of running batches (one per batch, see [`BatchWork`]).
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The logs of ended batches' workers, one file per batch (`logs/BATCH.log`): a batch's
    /// story after its work directory is gone. The sweeper removes them after [`KEEP_LOGS`].
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where the log of `batch`'s workers is kept once the batch has ended.
    pub fn kept_log(logs: &Path, batch: &str) -> PathBuf {
        logs.join(format!("{batch}.log"))
    }

    /// Local copies of files kept in object storage, read by the results API; the sweeper
    /// removes those not read for [`KEEP_CACHE`].
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// File contents, when not in object storage.
    pub fn files(root: &Path) -> PathBuf {
        root.join("files")
    }

    /// The settings `serve` writes for its workers.
    pub fn worker_settings(root: &Path) -> PathBuf {
        root.join(crate::settings::SETTINGS_FILE)
    }

    /// The default SQLite database.
    pub fn default_database(root: &Path) -> String {
        format!("sqlite://{}", root.join("batch-runner.db").display())
    }
}

/// The work directory of one batch (`work/BATCH`): the job's state, the local copy of its
/// input, the final files before they are stored, the worker's outcome and its log.
#[derive(Debug, Clone)]
pub struct BatchWork {
    dir: PathBuf,
}

impl BatchWork {
    pub fn new(work_root: &Path, batch: &str) -> Self {
        Self {
            dir: work_root.join(batch),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The job's state directory (spool, checkpoints).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn input(&self) -> PathBuf {
        self.dir.join("input.jsonl")
    }

    pub fn output(&self) -> PathBuf {
        self.dir.join("output.jsonl")
    }

    pub fn errors(&self) -> PathBuf {
        self.dir.join("errors.jsonl")
    }

    /// The results index the job builds of its final files (see `batch_job::IndexSources`).
    pub fn results_index(&self) -> PathBuf {
        self.dir.join("results.idx")
    }

    /// How the worker ended the batch, kept until the store has recorded it.
    pub fn outcome(&self) -> PathBuf {
        self.dir.join("outcome.json")
    }

    /// The worker's output (its stderr), read when it crashes.
    pub fn log(&self) -> PathBuf {
        self.dir.join("worker.log")
    }
}

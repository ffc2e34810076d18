//! Every path under the data directory, in one place: the database, file contents, the worker
//! settings, and the work directory of each batch with the files its worker keeps there.

use std::path::{Path, PathBuf};

/// Where everything of one service lives under `--data-dir`.
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    /// The work directories of running batches (one per batch, see [`BatchWork`]).
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
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

    /// How the worker ended the batch, kept until the store has recorded it.
    pub fn outcome(&self) -> PathBuf {
        self.dir.join("outcome.json")
    }

    /// The worker's output (its stderr), read when it crashes.
    pub fn log(&self) -> PathBuf {
        self.dir.join("worker.log")
    }
}

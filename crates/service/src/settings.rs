//! What a worker needs to know besides its batch: the database, which engines serve which model,
//! and the client settings shared with `run`. `serve` writes them to
//! `DATA_DIR/worker-settings.json` at start, so a worker started by any spawn template (a
//! container, a Kubernetes Job) only needs the data directory. Secrets are not in the file: the
//! engines' API key reaches workers as `BATCH_RUNNER_ENGINE_API_KEY`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use batch_job::{CheckpointPolicy, EngineOptions};
use batch_storage::object::ObjectDir;
use batch_storage::{S3Options, StorageError};
use serde::{Deserialize, Serialize};

use crate::blobs::Blobs;

pub const SETTINGS_FILE: &str = "worker-settings.json";
pub const ENGINE_KEY_ENV: &str = "BATCH_RUNNER_ENGINE_API_KEY";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSettings {
    pub database: String,
    /// Engines for a model with no entry in `model_engines`.
    pub default_engines: Vec<String>,
    pub model_engines: BTreeMap<String, Vec<String>>,
    /// How requests are sent (the engines' URLs are filled in per batch; the API key comes
    /// from the environment).
    pub engine: EngineOptions,
    /// How long requests in flight may finish after a cancel or expiry.
    pub grace: Duration,
    /// A worker's lease; it renews it three times per period.
    pub lease: Duration,
    /// How often a worker writes its counters (and sees a cancel).
    pub report_every: Duration,
    pub checkpoint_every_results: u64,
    pub checkpoint_every: Duration,
    pub extra_endpoints: Vec<String>,
    /// Hosts a transcription line's `file_url` may be downloaded from (none: `data:` URLs only).
    #[serde(default)]
    pub file_url_hosts: Vec<String>,
    /// `s3://bucket/prefix` holding files (`files/`) and the job states of running batches
    /// (`work/`), shared by every replica and worker host; `None`: the local data directory.
    pub storage_url: Option<String>,
    pub s3: S3Options,
    /// An owner's batches past validation may hold at most this many prompt tokens (estimated
    /// from their files' sizes); a batch that would go over fails `token_limit_exceeded`.
    #[serde(default)]
    pub owner_max_enqueued_tokens: Option<u64>,
    /// An owner's running batches keep at most this many requests in flight together, in
    /// equal shares.
    #[serde(default)]
    pub owner_max_in_flight: Option<u64>,
}

/// A batch's share of its owner's in-flight cap when the owner runs `running` batches (this
/// one included): an equal part, at least 1.
pub fn in_flight_share(cap: u64, running: i64) -> usize {
    let share = cap / u64::try_from(running.max(1)).unwrap_or(1);
    usize::try_from(share.max(1)).unwrap_or(usize::MAX)
}

impl WorkerSettings {
    /// The engines for `model`, or `None` when no engine serves it.
    pub fn engines_for(&self, model: &str) -> Option<&[String]> {
        self.model_engines
            .get(model)
            .or_else(|| (!self.default_engines.is_empty()).then_some(&self.default_engines))
            .map(Vec::as_slice)
    }

    pub fn engine_options(&self, urls: &[String]) -> EngineOptions {
        EngineOptions {
            urls: urls.to_vec(),
            api_key: std::env::var(ENGINE_KEY_ENV).ok().filter(|k| !k.is_empty()),
            ..self.engine.clone()
        }
    }

    pub fn checkpoint(&self) -> CheckpointPolicy {
        CheckpointPolicy {
            every_results: self.checkpoint_every_results,
            every: self.checkpoint_every,
        }
    }

    /// `storage_url/REST` as an object storage URL.
    pub fn object_url(&self, rest: &str) -> Option<Result<reqwest::Url, StorageError>> {
        self.storage_url.as_ref().map(|root| {
            batch_storage::object::parse(&format!("{}/{rest}", root.trim_end_matches('/')))
        })
    }

    /// Where file contents live.
    pub fn blobs(&self, data_dir: &Path) -> Result<Blobs, String> {
        match self.object_url("files") {
            None => {
                let files = crate::DataDir::files(data_dir);
                Blobs::local(files.clone())
                    .map_err(|e| format!("cannot create {}: {e}", files.display()))
            }
            Some(url) => {
                let url = url.map_err(|e| e.to_string())?;
                ObjectDir::open(&url, &self.s3)
                    .map(Blobs::Object)
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        crate::DataDir::worker_settings(data_dir)
    }

    /// Writes the file whole or not at all (a worker starting meanwhile reads the old one).
    pub fn store(&self, data_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let temp = data_dir.join(format!("{SETTINGS_FILE}.{}", std::process::id()));
        std::fs::write(&temp, text)?;
        std::fs::rename(temp, Self::path(data_dir))
    }

    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let path = Self::path(data_dir);
        let text = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}); `batch-runner serve --data-dir {}` writes it at start",
                path.display(),
                data_dir.display()
            )
        })?;
        serde_json::from_slice(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_engines_with_a_default() {
        let (model, urls) = (
            "m1".to_owned(),
            vec!["http://a:1".into(), "http://b:2".into()],
        );
        let engine = EngineOptions {
            urls: Vec::new(),
            api_key: Some("secret".into()),
            headers: vec!["X-A: 1".into()],
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            retry: batch_job::RetryPolicy::default(),
            priority: Some(-10),
            concurrency: batch_job::Concurrency::Adaptive { min: 4, max: 64 },
            max_requests_per_second: None,
            max_tokens_per_minute: Some(1000),
        };
        let written = WorkerSettings {
            database: "sqlite://x".into(),
            default_engines: Vec::new(),
            model_engines: BTreeMap::new(),
            engine,
            grace: Duration::from_secs(1),
            lease: Duration::from_secs(1),
            report_every: Duration::from_secs(1),
            checkpoint_every_results: 10,
            checkpoint_every: Duration::from_secs(1),
            extra_endpoints: Vec::new(),
            file_url_hosts: Vec::new(),
            storage_url: None,
            s3: S3Options::default(),
            owner_max_enqueued_tokens: Some(5),
            owner_max_in_flight: Some(10),
        };
        // The file round-trips, without the engines' API key.
        let text = serde_json::to_string(&written).expect("serializable");
        assert!(!text.contains("secret"), "{text}");
        let mut s: WorkerSettings = serde_json::from_str(&text).expect("accepted");
        assert_eq!(s.engine.priority, Some(-10));
        // Ten in flight for the owner: 3 each of three batches, 1 each of twenty.
        let cap = s.owner_max_in_flight.expect("kept");
        assert_eq!(
            (
                in_flight_share(cap, 1),
                in_flight_share(cap, 3),
                in_flight_share(cap, 20)
            ),
            (10, 3, 1)
        );
        assert_eq!(
            s.engine.concurrency,
            batch_job::Concurrency::Adaptive { min: 4, max: 64 }
        );
        s.model_engines.insert(model, urls);
        assert_eq!(s.engines_for("m1").expect("accepted").len(), 2);
        assert!(s.engines_for("m2").is_none());
        s.default_engines = vec!["http://c:3".into()];
        assert_eq!(
            s.engines_for("m2").expect("accepted"),
            ["http://c:3".to_owned()]
        );
    }
}

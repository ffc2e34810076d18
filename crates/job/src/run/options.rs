//! What a job is asked to do: its files, engines and policies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dispatch::EngineOptions;
use crate::input::validate::ValidateOptions;
use crate::launch::LaunchSpec;
use crate::output::finalize::Order;
use crate::output::remote::Remote;
use crate::output::retry_failed::Previous;
use crate::report::progress::ProgressMode;
use crate::run::deadline::Deadline;
use crate::state::sink::CheckpointPolicy;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub errors: PathBuf,
    pub state_dir: PathBuf,
    pub engines: EngineOptions,
    pub skip_invalid: bool,
    pub validate: ValidateOptions,
    pub metrics_listen: Option<SocketAddr>,
    pub progress: ProgressMode,
    pub progress_interval: Duration,
    pub order: Order,
    pub checkpoint: CheckpointPolicy,
    /// Discard an existing state directory instead of resuming from it.
    pub restart: bool,
    /// Keep the state directory after the final files are written.
    pub keep_state: bool,
    pub deadline: Deadline,
    /// How long requests in flight may still finish once the job is stopping.
    pub grace: Duration,
    /// Rerun only what an earlier run did not get a success for, merging with its output.
    pub retry_failed: Option<Previous>,
    /// Start an engine for the job (it is used together with `engines.urls`).
    pub launch: Option<LaunchSpec>,
    /// URLs the input comes from and the results go to. When set, `input`, `output` and `errors`
    /// are the local copies inside the state directory.
    pub remote: Remote,
    /// The state's home in object storage (`s3://bucket/prefix`); `state_dir` is then its local
    /// cache.
    pub state_remote: Option<reqwest::Url>,
    /// Send lines sharing a prompt prefix together, within windows of this many lines
    /// (`--order-dispatch prefix`); `None`: input order.
    pub group_window: Option<usize>,
    /// Stop (resumable) when no engine has answered for this long; `None`: wait as long as the
    /// completion window allows.
    pub engine_down_timeout: Option<Duration>,
    /// Refuse to start when every engine lists its models and none is the batch's.
    pub model_check: bool,
    /// `--preflight`: count every line with the engine's tokenizer before sending any, and
    /// refuse those over the context length (see `preflight`).
    pub preflight: bool,
    /// A live cap on the requests in flight, below the engines' concurrency (the service's
    /// share of an owner's `--owner-max-in-flight`, which changes as the owner's batches
    /// start and end); `None`: no cap.
    pub in_flight_cap: Option<tokio::sync::watch::Receiver<usize>>,
    /// Where to build the finished job's results index (see `results::index`), from its final
    /// files in input order, before the state (and its request timings) is removed. A failed
    /// build is a warning: the index can be built from the files later, without the timings.
    pub results_index: Option<PathBuf>,
    /// Where image, audio and video payloads of the answers are stored (see `media`); a job
    /// of such an endpoint refuses to start without one.
    pub media: Option<std::sync::Arc<dyn crate::media::MediaStore>>,
    /// The hosts a transcription line's `file_url` may be downloaded from; `None`: any.
    pub file_url_hosts: Option<Vec<String>>,
}

impl RunOptions {
    /// Lets the file hold several models, each line sent to its model's engines: those of
    /// `by_model` (a LoRA adapter `base:adapter` takes its base's), else the default ones
    /// (`engines.urls`, and a launched engine). Call it once the engines are set.
    pub fn mix_models(&mut self, by_model: BTreeMap<String, Vec<String>>) {
        self.validate.rules.mixed_models = Some(batch_format::ModelRoutes {
            engines: by_model,
            default: !self.engines.urls.is_empty() || self.launch.is_some(),
        });
    }

    /// A job of `input` into `output` and `errors`, its state in `state_dir`, on `engines`
    /// (their concurrency included), with `grace` for the requests in flight when it stops;
    /// everything else off or at its default: no progress display, no metrics endpoint, no
    /// deadline, no engine launched, no remote input or results, input order, default
    /// checkpoints and validation, the model check on, no limit on how long engines may be down
    /// (a caller with a completion window sets the deadline instead).
    pub fn new(files: JobFiles, engines: EngineOptions, grace: Duration) -> Self {
        Self {
            input: files.input,
            output: files.output,
            errors: files.errors,
            state_dir: files.state_dir,
            engines,
            skip_invalid: false,
            validate: ValidateOptions::default(),
            metrics_listen: None,
            progress: ProgressMode::Off,
            // Unused while the progress display is off.
            progress_interval: Duration::from_secs(10),
            order: Order::Input,
            checkpoint: CheckpointPolicy::default(),
            restart: false,
            keep_state: false,
            deadline: Deadline::None,
            grace,
            retry_failed: None,
            launch: None,
            remote: Remote::default(),
            state_remote: None,
            group_window: None,
            engine_down_timeout: None,
            model_check: true,
            preflight: false,
            in_flight_cap: None,
            results_index: None,
            media: None,
            file_url_hosts: None,
        }
    }
}

/// The local files of a job.
pub struct JobFiles {
    pub input: PathBuf,
    pub output: PathBuf,
    pub errors: PathBuf,
    pub state_dir: PathBuf,
}

/// `OUTPUT.state`, next to the output so finalize can rename instead of copying.
pub fn default_state_dir(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".state");
    PathBuf::from(name)
}

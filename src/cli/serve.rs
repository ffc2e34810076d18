//! `serve`, its worker pools and its workers.

use super::*;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the API listens on. Without API keys only a loopback address is allowed.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        env = "BATCH_RUNNER_LISTEN"
    )]
    pub listen: SocketAddr,

    /// File of API keys, one 'KEY OWNER' per line; each owner sees only its own files and
    /// batches. More keys may come from BATCH_RUNNER_API_KEYS (same format, comma-separated).
    #[arg(help_heading = "Access", long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Serve without API keys on a non-loopback address (everyone shares one owner).
    #[arg(help_heading = "Access", long)]
    pub insecure_no_auth: bool,

    /// Largest upload accepted (413 beyond).
    #[arg(help_heading = "Limits", long, value_name = "BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_upload_bytes: u64,

    /// Shortest completion_window accepted besides '24h' (extension).
    #[arg(help_heading = "Limits", long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub min_completion_window: Duration,

    /// Longest completion_window accepted.
    #[arg(help_heading = "Limits", long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub max_completion_window: Duration,

    /// How long a purpose=batch upload without expires_after is kept (OpenAI: 30 days); 0
    /// keeps it until deleted.
    #[arg(help_heading = "Limits", long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub batch_file_retention: Duration,

    /// A batch that cannot finish inside its completion_window, on its model's measured
    /// throughput and the work queued ahead of it: warn (accept it, marked at_risk) or reject
    /// (429 window_infeasible, naming the earliest window that can be met). Until a model's
    /// throughput has been measured, every batch is accepted.
    #[arg(help_heading = "Limits", long, value_enum, default_value_t = AdmissionArg::Warn)]
    pub admission: AdmissionArg,

    /// The last part of each completion window that admission (and at_risk) keeps spare, in
    /// percent: a batch whose estimated end falls in it is refused or flagged. The estimate
    /// comes from measured rates, and small batches lose some of each to starting and ending.
    #[arg(help_heading = "Limits", long, value_name = "PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=90))]
    pub admission_margin: u8,

    /// Batches one owner may create per hour; past it, creates get 429 rate_limit_exceeded.
    #[arg(help_heading = "Limits", long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub owner_max_batches_per_hour: Option<u32>,

    /// How often expired files are deleted.
    #[arg(help_heading = "Limits", long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// Connections open at once; past it a connection is answered 503 and closed [default: the
    /// open-file limit (raised to its hard limit at start) less 256].
    #[arg(help_heading = "Limits", long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// How long a client may take to send a request's headers; also how long a kept-alive
    /// connection may sit idle before its next request.
    #[arg(help_heading = "Limits", long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A request body (an upload) that sends nothing for this long is cut off; a slow upload
    /// that keeps sending is not.
    #[arg(help_heading = "Limits", long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub body_stall_timeout: Duration,

    /// Webhook endpoints, one 'OWNER URL SECRET' per line (URL '-' for an owner who names URLs
    /// per batch; SECRET is whsec_<base64>): batch.completed, .failed, .expired and .cancelled
    /// events are sent there, signed as OpenAI signs them. Read again on SIGHUP.
    #[arg(
        help_heading = "Webhooks",
        long,
        value_name = "PATH",
        env = "BATCH_RUNNER_WEBHOOK_FILE"
    )]
    pub webhook_file: Option<PathBuf>,

    /// Send webhooks to loopback, private and link-local addresses too (refused by default, so
    /// a batch's webhook_url cannot reach the service's own network).
    #[arg(help_heading = "Webhooks", long)]
    pub webhook_allow_private: bool,

    /// The wait before a failed webhook delivery is tried again; each later wait is twice the
    /// one before (with jitter, at most an hour, longer when the receiver's Retry-After says
    /// so), for a day.
    #[arg(help_heading = "Webhooks", long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub webhook_first_retry: Duration,

    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Where a service keeps its state: shared by `serve`, `worker-pool` and `webhooks`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// Where the service keeps its database (SQLite), files and the state of running batches.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "batch-runner-data",
        env = "BATCH_RUNNER_DATA_DIR"
    )]
    pub data_dir: PathBuf,

    /// The metadata database [default: sqlite://DATA_DIR/batch-runner.db]; postgres://… for
    /// several replicas and worker hosts.
    #[arg(long, value_name = "URL", env = "BATCH_RUNNER_DATABASE")]
    pub database: Option<String>,
}

/// What `serve` and `worker-pool` share: where the state is, the engines, and how workers run.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub state: StateArgs,

    /// Prompt tokens (estimated from file sizes, 4 bytes each) one owner's batches past
    /// validation may hold; a batch that would go over fails validation with
    /// token_limit_exceeded, as OpenAI's enqueued-token limit does.
    #[arg(help_heading = "Workers", long, value_name = "TOKENS")]
    pub owner_max_enqueued_tokens: Option<u64>,

    /// Requests one owner's running batches may keep in flight at once, all together; each
    /// of its batches gets an equal share (at least 1), adjusted as its batches start and end.
    /// Without it each batch has --max-concurrency.
    #[arg(help_heading = "Workers", long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub owner_max_in_flight: Option<u64>,

    /// Keep files and the job states of running batches in object storage
    /// (s3://bucket/prefix) instead of DATA_DIR, so every replica and worker host sees them.
    /// Credentials and region come from the AWS_* environment variables.
    #[arg(long, value_name = "URL", env = "BATCH_RUNNER_STORAGE_URL")]
    pub storage_url: Option<String>,

    #[command(flatten)]
    pub s3: S3Args,

    /// Engine for batches whose model has no --model-engine entry (repeatable: several
    /// engines share the load).
    #[arg(
        help_heading = "Engines",
        long = "engine-url",
        value_name = "URL",
        env = "BATCH_RUNNER_ENGINE_URL",
        value_delimiter = ','
    )]
    pub engine_urls: Vec<String>,

    /// Engines for one model, as MODEL=URL[,URL…] (repeatable). A batch whose model has no
    /// engine fails validation with code model_not_found.
    #[arg(
        help_heading = "Engines",
        long = "model-engine",
        value_name = "MODEL=URLS"
    )]
    pub model_engines: Vec<String>,

    /// Sent to the engines as 'Authorization: Bearer KEY' (reaches workers through the
    /// environment, never their command line).
    #[arg(
        help_heading = "Engines",
        long,
        value_name = "KEY",
        env = "BATCH_RUNNER_ENGINE_API_KEY",
        hide_env_values = true
    )]
    pub engine_api_key: Option<String>,

    #[command(flatten, next_help_heading = "Engines")]
    pub client: EngineClientArgs,

    /// Batches run at once by this process, each in its own worker process (serve: 0 serves
    /// the API only and leaves the batches to worker pools).
    #[arg(
        help_heading = "Workers",
        long,
        value_name = "N",
        default_value_t = 4,
        env = "BATCH_RUNNER_MAX_CONCURRENT_BATCHES"
    )]
    pub max_concurrent_batches: usize,

    /// An owner's share of the worker slots, as OWNER=WEIGHT (default 1 each; repeatable):
    /// each free slot goes to the owner holding the fewest for its weight, and within an owner
    /// to the batch whose window ends first.
    #[arg(help_heading = "Workers", long, value_name = "OWNER=WEIGHT", value_parser = owner_weight)]
    pub owner_weight: Vec<(String, f64)>,

    /// Worker slots one owner may hold at once, across every replica and pool.
    #[arg(help_heading = "Workers", long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub owner_max_batches: Option<u32>,

    /// The command that starts a worker, run with 'sh -c' (start it with 'exec' so that the
    /// service holds the worker, not a shell). Placeholders: {exe} (this program), {data_dir},
    /// {batch}, {fence}. E.g. to run workers in containers: 'exec docker run -i --rm
    /// --network host -v {data_dir}:{data_dir} batch-runner worker --data-dir {data_dir}
    /// --batch {batch} --fence {fence} --lifeline-stdin'.
    #[arg(help_heading = "Workers", long, value_name = "TEMPLATE",
          default_value = batch_service::scheduler::DEFAULT_TEMPLATE)]
    pub worker_command: String,

    /// Times a batch's worker may die (it resumes from its checkpoint each time) before the
    /// batch fails.
    #[arg(help_heading = "Workers", long, value_name = "N", default_value_t = 3)]
    pub max_worker_restarts: u32,

    /// How long a worker's claim on a batch lasts without renewal (renewed three times per
    /// period); a worker silent this long loses its batch to another.
    #[arg(help_heading = "Workers", long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,

    /// How long requests in flight may finish after a cancel or when the window ends;
    /// unsent lines are written as batch_cancelled / batch_expired at once.
    #[arg(help_heading = "Workers", long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub grace: Duration,

    /// How often a worker writes its batch's request_counts (and notices a cancel).
    #[arg(help_heading = "Workers", long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub report_interval: Duration,

    /// How often a worker checkpoints its batch (a restarted worker re-sends at most what
    /// ran since the last checkpoint; results so far are readable up to it).
    #[arg(help_heading = "Workers", long, value_name = "DURATION", default_value = CheckpointPolicy::DEFAULT_EVERY_TEXT, value_parser = parse_duration)]
    pub checkpoint_interval: Duration,

    /// Endpoint path a batch may target besides the built-in ones (repeatable), e.g.
    /// /v1/classify.
    #[arg(help_heading = "Limits", long, value_name = "PATH", value_parser = batch_format::rules::endpoint_path)]
    pub allow_url: Vec<String>,

    /// Host a transcription line's body.file_url may download its audio from (repeatable,
    /// e.g. media.example.com). Without any, audio comes only inline as a data: URL: a worker
    /// fetching any URL a user names could reach the service's own network.
    #[arg(
        help_heading = "Limits",
        long = "allow-file-url-host",
        value_name = "HOST"
    )]
    pub file_url_hosts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WorkerPoolArgs {
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The service's data directory (holds worker-settings.json, files and work).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The batch to run.
    #[arg(long, value_name = "ID")]
    pub batch: String,
    /// The fencing counter of this worker's claim.
    #[arg(long, value_name = "N")]
    pub fence: i64,
    /// Stop (checkpoint, give the batch back) when stdin reaches its end: the service holds
    /// the other end of the pipe.
    #[arg(long)]
    pub lifeline_stdin: bool,
}

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub state: StateArgs,

    #[command(subcommand)]
    pub action: WebhooksAction,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksAction {
    /// Events, newest first, as JSON lines: id, batch, type, state, attempts, last status and
    /// error.
    List {
        /// Only events in this state: held, pending, delivered, failed, no_endpoint.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: i64,
    },
    /// Send again an event that was given up (or had nowhere to go), or every such event; each
    /// is retried for another day, under the same webhook-id.
    Resend {
        /// The event (evt_…).
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        event: Option<String>,
        /// Every event given up or without an endpoint.
        #[arg(long)]
        all_failed: bool,
    },
}

fn owner_weight(text: &str) -> Result<(String, f64), String> {
    let bad = || format!("{text:?}: write OWNER=WEIGHT with a weight above 0, e.g. team-a=2");
    let (owner, weight) = text.split_once('=').ok_or_else(bad)?;
    let weight: f64 = weight.trim().parse().map_err(|_| bad())?;
    if owner.trim().is_empty() || !weight.is_finite() || weight <= 0.0 {
        return Err(bad());
    }
    Ok((owner.trim().to_owned(), weight))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AdmissionArg {
    Warn,
    Reject,
}

impl From<AdmissionArg> for batch_service::planning::Admission {
    fn from(a: AdmissionArg) -> Self {
        match a {
            AdmissionArg::Warn => Self::Warn,
            AdmissionArg::Reject => Self::Reject,
        }
    }
}

//! The command line: every flag, its default and its environment variable, declared once.
//!
//! Precedence is flag > environment variable (`BATCH_RUNNER_…`) > default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use batch_job::{CheckpointPolicy, parse_duration};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "batch-runner",
    version,
    about = "Runs OpenAI-compatible batch jobs (.jsonl) against self-hosted inference engines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a batch file without sending anything; every problem is reported with its line.
    Validate(ValidateArgs),
    /// Run a whole batch file against one or more running engines.
    Run(Box<RunArgs>),
    /// Start a simulated OpenAI-compatible engine (for trials, tests and benchmarks).
    SimEngine(SimArgs),
    /// Show the progress of a running or interrupted job from its state directory.
    Status(StatusArgs),
    /// Deliver results whose upload failed (kept in the job's state directory).
    Upload(UploadArgs),
    /// Serve the OpenAI Files + Batches API; each batch runs in its own worker process.
    Serve(Box<ServeArgs>),
    /// Claim and run batches of a shared service database without serving the API (for hosts
    /// next to the engines); takes the engine and worker flags of `serve`.
    WorkerPool(Box<WorkerPoolArgs>),
    /// (internal) Runs one batch of the service; started by `serve`.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// (internal) Runs a launched engine so that it never outlives the runner.
    #[command(hide = true)]
    EngineGuard(GuardArgs),
}

#[derive(Debug, Args)]
pub struct GuardArgs {
    #[arg(long)]
    pub log: PathBuf,
    #[arg(long)]
    pub max_log_bytes: u64,
    #[arg(long)]
    pub stop_grace_ms: u64,
    #[arg(long)]
    pub mirror: bool,
    /// The engine command, run with `sh -c`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The real server `sim-engine --profile` imitates.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SimProfile {
    /// sim-engine's own behaviour (SGLang-like, every knob available).
    Generic,
    Sglang,
    Vllm,
    Transformers,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineArg {
    /// python -m sglang.launch_server --model-path PATH --host {host} --port {port} --enable-metrics
    Sglang,
    /// vllm serve PATH --host {host} --port {port}
    Vllm,
    /// transformers serve PATH --host {host} --port {port} --continuous-batching
    Transformers,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The job's state directory, as the failed run named it.
    pub state_dir: PathBuf,

    /// Keep the state directory after everything is delivered.
    #[arg(long)]
    pub keep_state: bool,

    #[command(flatten)]
    pub s3: S3Args,
}

/// Object storage settings beyond the standard AWS environment variables.
#[derive(Debug, Args)]
pub struct S3Args {
    /// Endpoint of an S3-compatible store (MinIO, Ceph, Garage, ...) [default: AWS_ENDPOINT_URL].
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// Region of the store [default: AWS_REGION].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Address buckets as https://BUCKET.host/ instead of https://host/BUCKET/.
    #[arg(long)]
    pub s3_virtual_hosted_style: bool,
}

impl From<&S3Args> for batch_storage::S3Options {
    fn from(a: &S3Args) -> Self {
        Self {
            endpoint: a.s3_endpoint.clone(),
            region: a.s3_region.clone(),
            virtual_hosted_style: a.s3_virtual_hosted_style,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job's state directory (OUTPUT.state by default).
    pub state_dir: PathBuf,

    /// Print as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConcurrencyArg {
    /// At most --max-concurrency requests in flight across all engines.
    Fixed,
    /// A limit per engine that starts at --max-concurrency and comes down (not below
    /// --min-concurrency) on 429/503, timeouts, rising latency or a growing queue in the
    /// engine's /metrics, growing back while the engine is healthy.
    Adaptive,
}

/// How many requests may be in flight, shared by `run` and the service.
#[derive(Debug, Args)]
pub struct ConcurrencyArgs {
    /// How the number of requests in flight is chosen.
    #[arg(long, value_enum, default_value_t = ConcurrencyArg::Fixed, env = "BATCH_RUNNER_CONCURRENCY")]
    pub concurrency: ConcurrencyArg,

    /// With --concurrency adaptive: the lowest the limit of each engine goes.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub min_concurrency: u32,

    /// Most requests in flight at once: across all engines (fixed), or per engine (adaptive).
    #[arg(long, value_name = "N", default_value_t = 64, env = "BATCH_RUNNER_MAX_CONCURRENCY",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrency: u32,

    /// Most requests started per second, per engine.
    #[arg(long, value_name = "R", value_parser = positive_rate)]
    pub max_requests_per_second: Option<f64>,

    /// Most tokens per minute, per engine: estimated from each request (a quarter of its
    /// bytes, plus its max_tokens) and corrected from the answer's usage.
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens_per_minute: Option<u64>,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{text:?} is not a positive number of requests per second"
        )),
    }
}

impl ConcurrencyArgs {
    /// An adaptive minimum above the maximum is refused rather than one of them ignored.
    pub fn concurrency(&self) -> Result<batch_job::Concurrency, String> {
        let max = self.max_concurrency as usize;
        Ok(match self.concurrency {
            ConcurrencyArg::Fixed => batch_job::Concurrency::Fixed(max),
            ConcurrencyArg::Adaptive if self.min_concurrency > self.max_concurrency => {
                return Err(format!(
                    "--min-concurrency {} is above --max-concurrency {}: with --concurrency \
                     adaptive each engine's limit stays between the two; lower \
                     --min-concurrency or raise --max-concurrency",
                    self.min_concurrency, self.max_concurrency
                ));
            }
            ConcurrencyArg::Adaptive => batch_job::Concurrency::Adaptive {
                min: self.min_concurrency as usize,
                max,
            },
        })
    }
}

/// How requests are sent to the engines, shared by `run` and the service (`serve`,
/// `worker-pool`); the engines themselves and their API key are given apart.
#[derive(Debug, Args)]
pub struct EngineClientArgs {
    /// Extra header for every engine request, as 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,

    /// Set the body field `priority` of every request to N, for engines that schedule by it
    /// (SGLang --enable-priority-scheduling: larger wins; vLLM --scheduling-policy priority:
    /// smaller wins). A line's own `priority` is kept.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        env = "BATCH_RUNNER_PRIORITY"
    )]
    pub priority: Option<i64>,

    #[command(flatten)]
    pub concurrency: ConcurrencyArgs,

    /// Longest time one attempt may take, answer included.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration,
          env = "BATCH_RUNNER_REQUEST_TIMEOUT")]
    pub request_timeout: Duration,

    /// Longest time to open a connection to an engine.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Retries after a connect error, reset, timeout, 408, 429 or 5xx (other 4xx are final).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        env = "BATCH_RUNNER_MAX_RETRIES"
    )]
    pub max_retries: u32,

    /// Wait before the first retry; doubles each retry, with jitter.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// Longest wait between retries (a longer Retry-After from the engine is honoured, up to 5m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub retry_max_backoff: Duration,
}

impl EngineClientArgs {
    /// The settings for these engines, with this API key; an error names contradicting flags.
    pub fn options(
        &self,
        urls: Vec<String>,
        api_key: Option<String>,
    ) -> Result<batch_job::EngineOptions, String> {
        let c = &self.concurrency;
        Ok(batch_job::EngineOptions {
            urls,
            api_key,
            headers: self.headers.clone(),
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            retry: batch_job::RetryPolicy {
                max_retries: self.max_retries,
                base_delay: self.retry_backoff,
                max_delay: self.retry_max_backoff,
            },
            priority: self.priority,
            concurrency: c.concurrency()?,
            max_requests_per_second: c.max_requests_per_second,
            max_tokens_per_minute: c.max_tokens_per_minute,
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DispatchOrderArg {
    /// Requests are sent in input order.
    Input,
    /// Within each window of lines, requests sharing a prompt prefix (model and every message
    /// but the last) are sent one after another, so the engine's prefix cache is reused.
    Prefix,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OrderArg {
    /// Results in input-line order (sorted at the end, with bounded memory).
    Input,
    /// Results in the order they completed (no sort).
    Completion,
}

/// Options shared by `validate` and `run`: what counts as a valid line.
#[derive(Debug, Args)]
pub struct RulesArgs {
    /// Accept this endpoint path too (repeatable), e.g. --allow-url /v1/classify: a path only
    /// (the engines come from --engine-url), absolute and normalised.
    #[arg(long = "allow-url", value_name = "PATH", value_parser = batch_format::rules::endpoint_path)]
    pub allow_url: Vec<String>,

    /// Longest line accepted, in bytes; a longer line is an error for that line.
    #[arg(long, value_name = "BYTES", default_value_t = batch_job::DEFAULT_MAX_LINE_BYTES,
          env = "BATCH_RUNNER_MAX_LINE_BYTES")]
    pub max_line_bytes: usize,

    /// How many line errors to list in full (all are counted).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_errors: usize,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The batch file (.jsonl); `-` reads standard input.
    pub input: PathBuf,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub rules: RulesArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    Off,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The batch file (.jsonl): a path, `-` for standard input (a pipe or FIFO is copied into
    /// the state directory while it is validated), an http(s) URL (a presigned URL works) or
    /// s3://bucket/key. It must not change while the job runs: a change stops the job (state
    /// kept).
    pub input: String,

    /// Where successful results go (one JSON line per request that got a 2xx answer): a path, an
    /// http(s) URL the file is PUT to (a presigned URL works) or s3://bucket/key.
    #[arg(
        help_heading = "Inputs and results",
        short,
        long,
        value_name = "PATH|URL"
    )]
    pub output: String,

    /// Where failed results go [default: OUTPUT with .errors.jsonl in place of .jsonl; required
    /// when OUTPUT is a URL with a query string].
    #[arg(help_heading = "Inputs and results", long, value_name = "PATH|URL")]
    pub errors: Option<String>,

    /// Extra header for downloading an input URL, as 'Name: value' (repeatable).
    #[arg(
        help_heading = "Inputs and results",
        long = "input-header",
        value_name = "HEADER"
    )]
    pub input_headers: Vec<String>,

    /// Extra header for uploading to output URLs, as 'Name: value' (repeatable).
    #[arg(
        help_heading = "Inputs and results",
        long = "output-header",
        value_name = "HEADER"
    )]
    pub output_headers: Vec<String>,

    /// Retries of a download or upload after a transport error, 408, 429 or 5xx (with backoff).
    #[arg(
        help_heading = "Inputs and results",
        long,
        value_name = "N",
        default_value_t = 4
    )]
    pub transfer_retries: u32,

    #[command(flatten, next_help_heading = "Inputs and results")]
    pub s3: S3Args,

    /// Base URL of an OpenAI-compatible engine (repeatable; requests go to the least busy).
    #[arg(help_heading = "Engines", long = "engine-url", value_name = "URL", required_unless_present_any = ["launch", "engine"],
          env = "BATCH_RUNNER_ENGINE_URL", value_delimiter = ',')]
    pub engine_urls: Vec<String>,

    /// Start this engine command for the job; {port} (a free port the runner chooses) and
    /// {host} are substituted, e.g. 'my-server --port {port}'. Can be combined with --engine-url.
    #[arg(
        help_heading = "Engines",
        long,
        value_name = "COMMAND",
        conflicts_with = "engine"
    )]
    pub launch: Option<String>,

    /// Start SGLang, vLLM or transformers' server for the job (needs --model-path; engine
    /// arguments go after `--`).
    #[arg(help_heading = "Engines", long, value_enum, requires = "model_path")]
    pub engine: Option<EngineArg>,

    /// The model for --engine.
    #[arg(help_heading = "Engines", long, value_name = "PATH", alias = "model")]
    pub model_path: Option<String>,

    /// Extra arguments for the --engine command.
    #[arg(help_heading = "Engines", last = true, value_name = "ENGINE_ARGS")]
    pub engine_args: Vec<String>,

    /// Print the command --launch or --engine would start, and exit.
    #[arg(help_heading = "Engines", long)]
    pub print_launch: bool,

    /// Host the launched engine listens on.
    #[arg(
        help_heading = "Engines",
        long,
        value_name = "HOST",
        default_value = "127.0.0.1"
    )]
    pub launch_host: String,

    /// Run even when every engine lists its models (GET /v1/models) and none is the batch's
    /// (for engines that accept other names for their model).
    #[arg(help_heading = "Engines", long)]
    pub no_model_check: bool,

    /// Stop (resumable, exit 75) when no engine has answered for this long, instead of
    /// probing dead engines for hours; 0 waits as long as the completion window allows.
    #[arg(help_heading = "Engines", long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub engine_down_timeout: Duration,

    /// How long the launched engine may take to become ready (model loading takes minutes).
    #[arg(help_heading = "Engines", long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub launch_timeout: Duration,

    /// Readiness path for --launch (the presets use /health).
    #[arg(
        help_heading = "Engines",
        long,
        value_name = "PATH",
        default_value = "/v1/models"
    )]
    pub launch_ready_path: String,

    /// Restarts of a launched engine that dies mid-run before the job stops (resumable).
    #[arg(help_heading = "Engines", long, value_name = "N", default_value_t = 3)]
    pub max_engine_restarts: u32,

    /// Time a launched engine gets to exit after SIGTERM before SIGKILL.
    #[arg(help_heading = "Engines", long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub engine_stop_grace: Duration,

    /// Show the launched engine's output (it always goes to STATE_DIR/engine.log).
    #[arg(help_heading = "Engines", long)]
    pub verbose: bool,

    /// Sent to the engines as `Authorization: Bearer KEY`.
    #[arg(
        help_heading = "Requests",
        long,
        value_name = "KEY",
        env = "BATCH_RUNNER_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    #[command(flatten, next_help_heading = "Requests")]
    pub client: EngineClientArgs,

    /// The order requests are sent in (the output order is --order's).
    #[arg(help_heading = "Requests", long, value_enum, default_value_t = DispatchOrderArg::Input)]
    pub order_dispatch: DispatchOrderArg,

    /// Lines grouped at a time by --order-dispatch prefix (they are held in memory).
    #[arg(help_heading = "Requests", long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub dispatch_window: u32,

    /// Run the valid lines and write each invalid one to the error file (code invalid_request)
    /// instead of refusing the whole file.
    #[arg(help_heading = "Job state and resume", long)]
    pub skip_invalid: bool,

    /// Where the job keeps its spool and checkpoints while it runs [default: OUTPUT.state].
    /// Running the same command again after an interruption resumes from it. With
    /// s3://bucket/prefix the state lives in object storage (checkpoints uploaded as segments),
    /// so the job can be resumed on another machine.
    #[arg(
        help_heading = "Job state and resume",
        long,
        value_name = "DIR|s3://BUCKET/PREFIX"
    )]
    pub state_dir: Option<String>,

    /// Local working copy of an s3:// state directory [default: a directory under the system's
    /// temporary directory, named after the state's URL].
    #[arg(help_heading = "Job state and resume", long, value_name = "DIR")]
    pub state_cache: Option<PathBuf>,

    /// Discard the state of an earlier, unfinished run of this job and start over; also runs a
    /// job again whose OUTPUT already holds a result for every line (without it, such a rerun
    /// sends nothing and exits 0).
    #[arg(help_heading = "Job state and resume", long)]
    pub restart: bool,

    /// Keep the state directory after the final files are written.
    #[arg(help_heading = "Job state and resume", long)]
    pub keep_state: bool,

    /// Order of the lines in OUTPUT and the error file.
    #[arg(help_heading = "Job state and resume", long, value_enum, default_value_t = OrderArg::Input)]
    pub order: OrderArg,

    /// Checkpoint after this many results (0: only on time).
    #[arg(
        help_heading = "Job state and resume",
        long,
        value_name = "N",
        default_value_t = CheckpointPolicy::DEFAULT_EVERY_RESULTS
    )]
    pub checkpoint_every: u64,

    /// Checkpoint at least this often (0: only by count).
    #[arg(help_heading = "Job state and resume", long, value_name = "DURATION", default_value = CheckpointPolicy::DEFAULT_EVERY_TEXT, value_parser = parse_duration)]
    pub checkpoint_interval: Duration,

    /// Finish within this long of the job's first start (e.g. 24h); what has not finished by
    /// then is written to the error file as batch_expired. Survives resume.
    #[arg(help_heading = "Deadlines and stopping", long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "deadline",
          env = "BATCH_RUNNER_COMPLETION_WINDOW")]
    pub completion_window: Option<Duration>,

    /// Finish by this time (RFC 3339, e.g. 2026-11-28T18:00:00Z), like --completion-window.
    #[arg(help_heading = "Deadlines and stopping", long, value_name = "TIME", value_parser = batch_job::parse_rfc3339)]
    pub deadline: Option<std::time::SystemTime>,

    /// How long requests in flight may still finish once the job stops (deadline or signal).
    #[arg(help_heading = "Deadlines and stopping", long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Rerun only the lines that failed, expired or were cancelled in an earlier run (this is
    /// its error file), and merge: OUTPUT gets the earlier successes plus the new ones, the error
    /// file only what fails again.
    #[arg(
        help_heading = "Job state and resume",
        long,
        value_name = "ERRORS_FILE"
    )]
    pub retry_failed: Option<PathBuf>,

    /// The earlier run's output, for --retry-failed [default: OUTPUT].
    #[arg(
        help_heading = "Job state and resume",
        long,
        value_name = "PATH",
        requires = "retry_failed"
    )]
    pub previous_output: Option<PathBuf>,

    /// On Ctrl-C or SIGTERM, finalize the job as cancelled (unsent lines become
    /// batch_cancelled) instead of stopping it resumable.
    #[arg(help_heading = "Deadlines and stopping", long)]
    pub cancel_on_signal: bool,

    /// Also write the final summary as JSON to this file ('-' for stdout).
    #[arg(help_heading = "Reporting", long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics while the job runs.
    #[arg(
        help_heading = "Reporting",
        long,
        value_name = "ADDR",
        env = "BATCH_RUNNER_METRICS_LISTEN"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// How to show progress.
    #[arg(help_heading = "Reporting", long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,

    /// How often to log a progress line when not showing a bar.
    #[arg(help_heading = "Reporting", long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,

    #[command(flatten, next_help_heading = "Validation")]
    pub rules: RulesArgs,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one; the first stdout line says which).
    #[arg(long, default_value_t = 30000)]
    pub port: u16,

    /// Model name listed by /v1/models.
    #[arg(long, default_value = "sim-model")]
    pub model: String,

    /// Requests served at once; the rest wait in the queue.
    #[arg(long, default_value_t = 64)]
    pub max_running: usize,

    /// Requests allowed to wait; beyond that the answer is 503 "The request queue is full.".
    #[arg(long, default_value_t = 4096)]
    pub max_queued: usize,

    /// Time to first token, in milliseconds (0 for an instant engine).
    #[arg(long, default_value_t = 20.0)]
    pub ttft_ms: f64,

    /// Time per further output token, in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    pub ms_per_token: f64,

    /// Extra time per output token for each request running at once, in milliseconds
    /// (continuous batching: decode steps slow down as the batch grows).
    #[arg(long, default_value_t = 0.0)]
    pub ms_per_token_per_running: f64,

    /// Prefill time per prompt token not served from the prefix cache, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub prefill_ms_per_token: f64,

    /// Prefix cache capacity in tokens (0: off). A chat request's prefix is every message but
    /// the last; cached tokens skip prefill and are reported as
    /// usage.prompt_tokens_details.cached_tokens.
    #[arg(long, default_value_t = 0)]
    pub prefix_cache_tokens: u64,

    /// Admit waiting requests by the body's `priority` (larger first; none is least), as SGLang
    /// with --enable-priority-scheduling.
    #[arg(long)]
    pub enable_priority_scheduling: bool,

    /// Priority of a request that sends none (otherwise it is the least important).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub default_priority_value: Option<i64>,

    /// Output tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: u64,

    /// Fraction of requests answered with --fail-status.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,

    /// Status for --fail-rate failures.
    #[arg(long, default_value_t = 503)]
    pub fail_status: u16,

    /// Fraction of requests whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,

    /// Fraction of requests that hang for --hang-ms, then are dropped.
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,

    /// How long a hanging request hangs, in milliseconds.
    #[arg(long, default_value_t = 3_600_000)]
    pub hang_ms: u64,

    /// Seed for the random faults.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Require this bearer token on /v1/* requests (401 otherwise).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Simulate a crash: exit (code 1) after answering this many requests.
    #[arg(long, value_name = "N")]
    pub exit_after: Option<u64>,

    /// Answer GET /v1/models with this status (and an error body) instead of the model list,
    /// as `transformers serve` does (500) when it cannot list its models.
    #[arg(long, value_name = "STATUS", default_value_t = 200)]
    pub models_status: u16,

    /// Serve no /metrics (404), as engines without Prometheus metrics do.
    #[arg(long)]
    pub no_metrics: bool,

    /// Behave as this real server does where a client can tell: readiness, /v1/models,
    /// /metrics, error shapes and statuses, model and field checks, response ids, usage,
    /// priority and overload (see sim_engine::Profile).
    #[arg(long, value_enum, default_value_t = SimProfile::Generic)]
    pub profile: SimProfile,

    /// The model's context length in tokens (the sglang and vllm profiles refuse longer
    /// requests with 400).
    #[arg(long, value_name = "TOKENS", default_value_t = 4096)]
    pub context_length: u64,

    /// Time to load the model, in milliseconds: until then /health and requests answer 503
    /// (generic, sglang) or the port is not open yet (vllm, transformers).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub startup_ms: u64,

    /// Require this header on /v1/* requests, as 'Name: value' (repeatable; 401 otherwise).
    #[arg(long = "require-header", value_name = "HEADER")]
    pub require_headers: Vec<String>,
}

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

    #[command(flatten)]
    pub exec: ExecArgs,
}

/// What `serve` and `worker-pool` share: where the state is, the engines, and how workers run.
#[derive(Debug, Args)]
pub struct ExecArgs {
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

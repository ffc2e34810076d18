//! `validate` and `run`: the input's rules, the job's files, engines, state and reporting.

use super::*;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineArg {
    /// python -m sglang.launch_server --model-path PATH --host {host} --port {port} --enable-metrics
    Sglang,
    /// vllm serve PATH --host {host} --port {port}
    Vllm,
    /// transformers serve PATH --host {host} --port {port} --continuous-batching
    Transformers,
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

    /// Let one file hold several models: each line goes to the engines of its own body.model
    /// (its --model-engine entry, else --engine-url), and the concurrency limits apply to each
    /// model apart. A model no engine is routed for is an error on each of its lines; the
    /// summary and metrics count results per model.
    #[arg(long)]
    pub mixed_models: bool,

    /// With --mixed-models: the engines of one model, as MODEL=URL[,URL…] (repeatable). A LoRA
    /// adapter written base:adapter goes to its base's engines. For `validate`, once any is
    /// given, a model without an entry is an error.
    #[arg(
        long = "model-engine",
        value_name = "MODEL=URLS",
        requires = "mixed_models"
    )]
    pub model_engines: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The batch file (.jsonl); `-` reads standard input.
    pub input: PathBuf,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Also count every valid line with this engine's tokenizer (as `run --preflight` does,
    /// nothing is generated): the report gains the input and worst-case output tokens, and the
    /// lines over the model's context length are errors (context_length_exceeded).
    #[arg(
        long = "engine-url",
        value_name = "URL",
        conflicts_with = "mixed_models"
    )]
    pub engine_url: Option<String>,

    /// API key for --engine-url.
    #[arg(
        long,
        value_name = "KEY",
        env = "BATCH_RUNNER_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

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

    /// Where the images, audio and video of the answers are stored (image, speech and video
    /// endpoints): a directory or s3://bucket/prefix, one file per payload named after the
    /// line's result id; the result line's `file.path` (relative to OUTPUT's directory when
    /// inside it) or `file.url` points at it [default: OUTPUT.media beside a local or s3://
    /// OUTPUT; required for such a batch when OUTPUT is an http(s) URL].
    #[arg(help_heading = "Inputs and results", long, value_name = "DIR|URL")]
    pub media_dir: Option<String>,

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
    #[arg(help_heading = "Engines", long = "engine-url", value_name = "URL", required_unless_present_any = ["launch", "engine", "model_engines"],
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

    /// Before sending anything, count every line's prompt with the engine's tokenizer
    /// (POST /tokenize or /v1/tokenize; estimated at 4 bytes per token where neither is
    /// served), report input and worst-case output tokens, and put lines over the model's
    /// context length (max_model_len) in the error file as context_length_exceeded instead of
    /// sending them. (One model's tokenizer: not with --mixed-models.)
    #[arg(help_heading = "Engines", long, conflicts_with = "mixed_models")]
    pub preflight: bool,

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

    /// POST an OpenAI-shaped webhook event here when the job ends (batch.completed, .expired,
    /// .cancelled or .failed, with the summary in data); repeatable. A notification that
    /// cannot be delivered (six attempts, about a minute) is logged and changes nothing else.
    #[arg(help_heading = "Reporting", long, value_name = "URL")]
    pub notify_url: Vec<String>,

    /// Sign notifications with this secret (whsec_<base64>), as OpenAI signs webhooks; the
    /// official SDK's client.webhooks.unwrap() verifies them.
    #[arg(help_heading = "Reporting", long, value_name = "SECRET", env = "BATCH_RUNNER_NOTIFY_SECRET",
        hide_env_values = true, value_parser = clap::value_parser!(batch_job::Secret))]
    pub notify_secret: Option<batch_job::Secret>,

    /// Serve Prometheus metrics at http://ADDR/metrics while the job runs.
    #[arg(
        help_heading = "Reporting",
        long,
        value_name = "ADDR",
        env = "BATCH_RUNNER_METRICS_LISTEN"
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve a live page of the job at http://ADDR/ui/ while it runs: progress, a throughput
    /// chart, errors by code and a browser of the results so far (read-only, no key). ADDR is a
    /// port (on 127.0.0.1) or HOST:PORT; another host than loopback shows the job's requests
    /// and results to whoever can reach it.
    #[arg(help_heading = "Reporting", long, value_name = "ADDR", value_parser = parse_ui_addr)]
    pub ui: Option<SocketAddr>,

    /// After the job ends, keep --ui's page up this long to look at the end (Ctrl-C leaves
    /// at once); the summary is printed first.
    #[arg(help_heading = "Reporting", long, value_name = "DURATION", default_value = "0s",
        value_parser = parse_duration, requires = "ui")]
    pub ui_keep: Duration,

    /// How to show progress.
    #[arg(help_heading = "Reporting", long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,

    /// How often to log a progress line when not showing a bar.
    #[arg(help_heading = "Reporting", long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,

    #[command(flatten, next_help_heading = "Validation")]
    pub rules: RulesArgs,
}

/// `--ui`: a port on loopback, or HOST:PORT.
fn parse_ui_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("'{text}' is not a port or HOST:PORT (e.g. 8089 or 127.0.0.1:8089)"))
}

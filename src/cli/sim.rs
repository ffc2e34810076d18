//! `sim-engine`: the simulated engine's behaviour and faults.

use super::*;

/// The real server `sim-engine --profile` imitates.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SimProfile {
    /// sim-engine's own behaviour (SGLang-like, every knob available).
    Generic,
    Sglang,
    Vllm,
    Transformers,
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

    /// Answer 500 to every tokenize request after the first N (a tokenizer that breaks).
    #[arg(long, value_name = "N")]
    pub tokenize_fail_after: Option<u64>,

    /// Time to load the model, in milliseconds: until then /health and requests answer 503
    /// (generic, sglang) or the port is not open yet (vllm, transformers).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub startup_ms: u64,

    /// How long a video job (POST /v1/videos) takes to complete, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub video_ms: u64,

    /// Require this header on /v1/* requests, as 'Name: value' (repeatable; 401 otherwise).
    #[arg(long = "require-header", value_name = "HEADER")]
    pub require_headers: Vec<String>,
}

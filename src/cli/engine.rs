//! How `run` and `serve` talk to engines: concurrency (fixed or adaptive), rate limits,
//! retries, timeouts and headers.

use super::*;

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

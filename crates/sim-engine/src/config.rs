//! The simulated engine's knobs.

use std::time::Duration;

use crate::profile::Profile;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The model name `/v1/models` lists (requests may name any model).
    pub model: String,
    /// Requests served at once; the rest queue.
    pub max_running: usize,
    /// Requests allowed to wait; beyond that the engine answers 503 like SGLang's full queue.
    pub max_queued: usize,
    /// Time to first token.
    pub ttft: Duration,
    /// Time per output token after the first.
    pub per_token: Duration,
    /// Extra time per output token for each request running at once: continuous batching makes
    /// every decode step slower as the batch grows.
    pub per_token_per_running: Duration,
    /// Time per prompt token not served from the prefix cache (prefill).
    pub prefill_per_token: Duration,
    /// Capacity of the prefix cache in tokens; 0 turns it off.
    pub prefix_cache_tokens: u64,
    /// Admit waiting requests by their body's `priority` (larger first), as SGLang with
    /// `--enable-priority-scheduling`; otherwise first come first served.
    pub priority_scheduling: bool,
    /// The priority of a request that sends none (SGLang `--default-priority-value`); without
    /// it such requests are the least important.
    pub default_priority: Option<i64>,
    /// Output length when a request sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// Fraction of requests answered with `fail_status`.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// Fraction of connections closed without an answer.
    pub drop_rate: f64,
    /// Fraction of requests that hang for `hang` and are then dropped.
    pub hang_rate: f64,
    pub hang: Duration,
    /// Seed for the random faults, so a run can be repeated.
    pub seed: u64,
    /// When set, `/v1/*` requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Headers (name, value) every `/v1/*` request must carry, as a gateway in front of an
    /// engine might require.
    pub required_headers: Vec<(String, String)>,
    /// Simulate a crash: stop serving (the process exits) after answering this many requests.
    pub exit_after: Option<u64>,
    /// The status of `GET /v1/models`: 200 lists the model; anything else is an error answer
    /// (a real `transformers serve` answers 500 there).
    pub models_status: u16,
    /// Serve `/metrics` (false: 404, as an engine without Prometheus metrics).
    pub metrics: bool,
    /// Which real server's observable behaviour to reproduce.
    pub profile: Profile,
    /// The model's context length in tokens (the SGLang and vLLM profiles refuse longer
    /// requests; `/v1/models` reports it as `max_model_len`).
    pub context_length: u64,
    /// The tokenize route answers 500 after this many requests (a tokenizer that breaks).
    pub tokenize_fail_after: Option<u64>,
    /// Model loading: how long after start the engine is ready. Until then it answers 503
    /// (`Generic`, SGLang); the vLLM and transformers profiles open their port only then.
    pub startup: Duration,
    /// How long a video job (`POST /v1/videos`) takes to complete.
    pub video: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: "sim-model".into(),
            max_running: 64,
            max_queued: 4096,
            ttft: Duration::from_millis(20),
            per_token: Duration::from_millis(5),
            per_token_per_running: Duration::ZERO,
            prefill_per_token: Duration::ZERO,
            prefix_cache_tokens: 0,
            priority_scheduling: false,
            default_priority: None,
            default_max_tokens: 16,
            fail_rate: 0.0,
            fail_status: 503,
            drop_rate: 0.0,
            hang_rate: 0.0,
            hang: Duration::from_secs(3600),
            seed: 0,
            api_key: None,
            required_headers: Vec::new(),
            exit_after: None,
            models_status: 200,
            metrics: true,
            profile: Profile::Generic,
            context_length: 4096,
            tokenize_fail_after: None,
            startup: Duration::ZERO,
            video: Duration::from_millis(300),
        }
    }
}

impl SimConfig {
    /// How long a request producing `output_tokens` tokens occupies its slot.
    pub fn service_time(&self, output_tokens: u64) -> Duration {
        if output_tokens == 0 {
            return self.ttft;
        }
        let rest = u32::try_from(output_tokens - 1).unwrap_or(u32::MAX);
        self.ttft + self.per_token.saturating_mul(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_is_ttft_plus_per_token() {
        let c = SimConfig {
            ttft: Duration::from_millis(100),
            per_token: Duration::from_millis(10),
            ..Default::default()
        };
        assert_eq!(c.service_time(1), Duration::from_millis(100));
        assert_eq!(c.service_time(11), Duration::from_millis(200));
        assert_eq!(c.service_time(0), Duration::from_millis(100));
    }
}

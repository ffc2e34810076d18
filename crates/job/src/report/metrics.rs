//! Live counters of a running job, shared by the progress display, the summary and the
//! Prometheus endpoint (`--metrics-listen`).
//!
//! Plain atomics rather than a metrics library: the set is small and fixed, every request
//! updates a few of them, and the text format is short to write.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use batch_format::output::Usage;
use tokio::net::TcpListener;

pub use crate::state::outcome::LineOutcome;

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Debug, Default)]
pub struct Stats {
    /// Lines this job produces a result for.
    pub planned: AtomicU64,
    /// Results that an earlier run of the job had already produced (a resume): excluded from
    /// rates, so they describe this run.
    pub carried_over: AtomicU64,
    /// Tokens of the carried-over results.
    pub carried_usage: Usage,
    /// Carried-over results that had been sent to an engine (not expired, cancelled or
    /// invalid lines).
    pub carried_sent: AtomicU64,
    outcomes: [AtomicU64; LineOutcome::ALL.len()],
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    /// The adaptive concurrency limit summed over the engines (0 with a fixed limit).
    pub concurrency_limit: AtomicU64,
    /// With adaptive limits: requests at the engines now (the rest of `in_flight` waits for
    /// room under the limits).
    pub at_engines: AtomicU64,
    /// Engines skipped now because they keep failing (their circuit breaker is open).
    pub engines_down: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    pub total_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub reasoning_tokens: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// This run's failures by error code, with a sample each.
    pub errors: super::errors::ErrorTally,
    /// With several models in one file: the results of each.
    pub models: Option<super::model_counts::ModelCounts>,
}

impl Stats {
    /// Counters for a job of `planned` results, starting from what a resumed job already has
    /// (`counts` by outcome, `totals` from its manifest).
    pub fn for_job(planned: u64, counts: &[u64], totals: crate::state::Totals) -> Self {
        let stats = Self {
            carried_usage: totals.usage(),
            ..Self::default()
        };
        stats.planned.store(planned, Ordering::Relaxed);
        for o in LineOutcome::ALL {
            stats.add(o, counts.get(o.index()).copied().unwrap_or(0));
        }
        stats.carried_over.store(stats.done(), Ordering::Relaxed);
        stats.carried_sent.store(stats.sent(), Ordering::Relaxed);
        stats.retries.store(totals.retries, Ordering::Relaxed);
        stats.add_usage(totals.usage());
        stats
    }

    pub fn record(&self, outcome: LineOutcome) {
        self.add(outcome, 1);
    }

    pub fn add(&self, outcome: LineOutcome, n: u64) {
        self.outcomes[outcome.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn count(&self, outcome: LineOutcome) -> u64 {
        self.outcomes[outcome.index()].load(Ordering::Relaxed)
    }

    /// Results produced so far, whatever their outcome.
    pub fn done(&self) -> u64 {
        LineOutcome::ALL.iter().map(|&o| self.count(o)).sum()
    }

    /// Output tokens generated for this run.
    pub fn output_tokens_now(&self) -> u64 {
        self.usage().since(self.carried_usage).output_tokens
    }

    /// Tokens of every result so far, carried-over ones included.
    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: Self::load(&self.input_tokens),
            output_tokens: Self::load(&self.output_tokens),
            total_tokens: Self::load(&self.total_tokens),
            cached_tokens: Self::load(&self.cached_tokens),
            reasoning_tokens: Self::load(&self.reasoning_tokens),
        }
    }

    /// Results produced by this run.
    pub fn done_now(&self) -> u64 {
        self.done().saturating_sub(Self::load(&self.carried_over))
    }

    /// Results of requests that reached (or were tried on) an engine.
    pub fn sent(&self) -> u64 {
        [
            LineOutcome::Succeeded,
            LineOutcome::EngineError,
            LineOutcome::EngineUnavailable,
        ]
        .iter()
        .map(|&o| self.count(o))
        .sum()
    }

    /// Requests this run sent and got a result for (the rate of a summary).
    pub fn sent_now(&self) -> u64 {
        self.sent().saturating_sub(Self::load(&self.carried_sent))
    }

    pub fn failed(&self) -> u64 {
        self.done() - self.count(LineOutcome::Succeeded)
    }

    pub fn add_usage(&self, usage: Usage) {
        let add = |counter: &AtomicU64, n| counter.fetch_add(n, Ordering::Relaxed);
        add(&self.input_tokens, usage.input_tokens);
        add(&self.output_tokens, usage.output_tokens);
        add(&self.total_tokens, usage.total_tokens);
        add(&self.cached_tokens, usage.cached_tokens);
        add(&self.reasoning_tokens, usage.reasoning_tokens);
    }

    pub fn observe_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Answered requests and the sum of their latencies.
    pub fn latency(&self) -> (u64, Duration) {
        (
            Self::load(&self.latency_count),
            Duration::from_micros(Self::load(&self.latency_sum_micros)),
        )
    }

    pub fn load(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every counter. (One block per metric family, in the
    /// order of the exposition; hence its length.)
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP batch_runner_requests_total Requests finished, by outcome.\n\
             # TYPE batch_runner_requests_total counter"
        );
        for o in LineOutcome::ALL {
            let _ = writeln!(
                out,
                "batch_runner_requests_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.count(o)
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "batch_runner_requests_planned",
            "Lines this run produces a result for.",
            "gauge",
            Self::load(&self.planned),
        );
        gauge(
            &mut out,
            "batch_runner_in_flight",
            "Requests sent and not yet answered.",
            "gauge",
            Self::load(&self.in_flight),
        );
        gauge(
            &mut out,
            "batch_runner_engines_down",
            "Engines skipped because they keep failing (circuit breaker open).",
            "gauge",
            Self::load(&self.engines_down),
        );
        gauge(
            &mut out,
            "batch_runner_concurrency_limit",
            "The adaptive concurrency limit, summed over the engines (0: a fixed limit).",
            "gauge",
            Self::load(&self.concurrency_limit),
        );
        gauge(
            &mut out,
            "batch_runner_retries_total",
            "Attempts repeated after a retryable failure.",
            "counter",
            Self::load(&self.retries),
        );
        let _ = writeln!(
            out,
            "# HELP batch_runner_tokens_total Tokens reported in the engines' usage.\n\
             # TYPE batch_runner_tokens_total counter\n\
             batch_runner_tokens_total{{kind=\"input\"}} {}\n\
             batch_runner_tokens_total{{kind=\"output\"}} {}\n\
             batch_runner_tokens_total{{kind=\"cached\"}} {}\n\
             batch_runner_tokens_total{{kind=\"reasoning\"}} {}",
            Self::load(&self.input_tokens),
            Self::load(&self.output_tokens),
            Self::load(&self.cached_tokens),
            Self::load(&self.reasoning_tokens)
        );
        let _ = writeln!(
            out,
            "# HELP batch_runner_request_duration_seconds Time from first send to final answer, \
             retries included.\n# TYPE batch_runner_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += Self::load(count);
            let _ = writeln!(
                out,
                "batch_runner_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = Self::load(&self.latency_count);
        let _ = writeln!(
            out,
            "batch_runner_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}\n\
             batch_runner_request_duration_seconds_sum {}\n\
             batch_runner_request_duration_seconds_count {total}",
            Self::load(&self.latency_sum_micros) as f64 / 1e6
        );
        if let Some(models) = &self.models {
            models.render_prometheus(&mut out);
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let stats = stats.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    stats.render_prometheus(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics address, with an error that names the flag.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on --metrics-listen {addr}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let s = Stats::default();
        s.record(LineOutcome::Succeeded);
        s.record(LineOutcome::EngineError);
        s.observe_latency(Duration::from_millis(3));
        s.observe_latency(Duration::from_millis(700));
        s.observe_latency(Duration::from_secs(5000));
        let text = s.render_prometheus();
        assert!(text.contains("batch_runner_requests_total{outcome=\"succeeded\"} 1"));
        assert!(text.contains("batch_runner_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("batch_runner_request_duration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("batch_runner_request_duration_seconds_bucket{le=\"600\"} 2\n"));
        assert!(text.contains("batch_runner_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert_eq!(s.failed(), 1);
    }
}

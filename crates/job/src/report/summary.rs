//! The end-of-run summary, printed for people and written as JSON with `--summary-json`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::report::metrics::{LineOutcome, Stats};
use crate::report::progress::format_duration;

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Every line has a result; the final files are written.
    Completed,
    /// The completion window ended; unfinished lines are `batch_expired` in the error file.
    Expired,
    /// Cancelled; unfinished lines are `batch_cancelled` in the error file.
    Cancelled,
    /// Stopped by a signal; the state directory is kept and the same command resumes.
    Interrupted,
    /// The final files already held a result for every line (an earlier run of the same
    /// command): nothing was sent and nothing rewritten.
    AlreadyComplete,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub status: JobStatus,
    pub input: String,
    pub output: String,
    pub errors: String,
    pub state_dir: String,
    /// Lines in the input, blank ones included.
    pub lines: u64,
    /// Results written: one per non-blank line.
    pub results: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed results by reason: `engine_error` (a non-2xx answer), `engine_unavailable`
    /// (no answer), `invalid_request` (skipped invalid line). Expired and cancelled lines are
    /// counted apart, as OpenAI does.
    pub failed_by_reason: BTreeMap<&'static str, u64>,
    pub expired: u64,
    pub cancelled: u64,
    pub retries: u64,
    /// Tokens of every result of the job, those of an earlier run (resumed, or carried over by
    /// --retry-failed) included.
    pub usage: UsageTotals,
    /// Tokens of the requests this run sent.
    pub usage_this_run: UsageTotals,
    pub wall_seconds: f64,
    /// Time spent writing the final files (part of the wall time).
    pub finalize_seconds: f64,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
    /// This run's failures by error code (expired and cancelled lines apart), the most
    /// frequent first, each with its first message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_errors: Vec<super::errors::ErrorCount>,
    /// The pre-flight count (`--preflight`), when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::run::preflight::PreflightReport>,
    /// With several models in one file (`--mixed-models`): the results of each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<super::model_counts::ModelTally>,
}

/// Error codes the summary lists.
const TOP_ERRORS: usize = 5;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageTotals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Of the input tokens, those the engines read from their prefix cache.
    pub cached_tokens: u64,
    /// Of the output tokens, those spent reasoning.
    pub reasoning_tokens: u64,
}

impl From<batch_format::output::Usage> for UsageTotals {
    fn from(u: batch_format::output::Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: u.total_tokens,
            cached_tokens: u.cached_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }
}

pub struct Paths<'a> {
    pub input: &'a str,
    pub output: &'a str,
    pub errors: &'a str,
    pub state_dir: &'a str,
}

impl RunSummary {
    pub fn new(
        paths: Paths<'_>,
        status: JobStatus,
        lines: u64,
        stats: &Stats,
        wall: Duration,
    ) -> Self {
        let secs = wall.as_secs_f64().max(1e-9);
        let failed_by_reason = [
            LineOutcome::EngineError,
            LineOutcome::EngineUnavailable,
            LineOutcome::InvalidRequest,
        ]
        .iter()
        .map(|&o| (o.label(), stats.count(o)))
        .collect();
        let expired = stats.count(LineOutcome::Expired);
        let cancelled = stats.count(LineOutcome::Cancelled);
        Self {
            status,
            input: paths.input.to_owned(),
            output: paths.output.to_owned(),
            errors: paths.errors.to_owned(),
            state_dir: paths.state_dir.to_owned(),
            lines,
            results: stats.done(),
            succeeded: stats.count(LineOutcome::Succeeded),
            failed: stats.failed() - expired - cancelled,
            failed_by_reason,
            expired,
            cancelled,
            retries: Stats::load(&stats.retries),
            usage: stats.usage().into(),
            usage_this_run: stats.usage().since(stats.carried_usage).into(),
            wall_seconds: wall.as_secs_f64(),
            finalize_seconds: 0.0,
            // Expired, cancelled and invalid lines were never sent: they are not throughput.
            requests_per_second: stats.sent_now() as f64 / secs,
            output_tokens_per_second: stats.output_tokens_now() as f64 / secs,
            preflight: None,
            top_errors: stats.errors.top(TOP_ERRORS),
            models: stats.models.as_ref().map_or_else(Vec::new, |m| m.tallies()),
        }
    }

    /// The summary of a job whose final files were already complete: their counts, nothing sent.
    pub fn already_complete(paths: Paths<'_>, lines: u64, succeeded: u64, failed: u64) -> Self {
        let mut summary = Self::new(
            paths,
            JobStatus::AlreadyComplete,
            lines,
            &Stats::default(),
            Duration::ZERO,
        );
        summary.results = succeeded + failed;
        summary.succeeded = succeeded;
        summary.failed = failed;
        summary
    }

    pub fn render(&self) -> String {
        let mut reasons: Vec<String> = self
            .failed_by_reason
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let reasons = if reasons.is_empty() {
            String::new()
        } else {
            reasons.sort();
            format!(" ({})", reasons.join(", "))
        };
        let mut stopped = String::new();
        if self.expired > 0 {
            stopped.push_str(&format!(", {} expired", self.expired));
        }
        if self.cancelled > 0 {
            stopped.push_str(&format!(", {} cancelled", self.cancelled));
        }
        let headline = match self.status {
            JobStatus::AlreadyComplete => "already complete, nothing sent",
            JobStatus::Completed => "finished",
            JobStatus::Expired => "EXPIRED (the completion window ended)",
            JobStatus::Cancelled => "CANCELLED",
            JobStatus::Interrupted => "INTERRUPTED",
        };
        let this_run = if self.usage_this_run.total_tokens == self.usage.total_tokens {
            String::new()
        } else {
            let u = &self.usage_this_run;
            format!(
                " (this run: {} input, {} output, {} total)",
                u.input_tokens, u.output_tokens, u.total_tokens
            )
        };
        let detail = |n: u64, what: &str| {
            if n > 0 {
                format!(" ({n} {what})")
            } else {
                String::new()
            }
        };
        let (cached, reasoning) = (
            detail(self.usage.cached_tokens, "cached"),
            detail(self.usage.reasoning_tokens, "reasoning"),
        );
        let mut text = format!(
            "{headline}: {} results in {}: {} succeeded, {} failed{reasons}{stopped}, {} retries\n\
             tokens: {} input{cached}, {} output{reasoning}, {} total{this_run} | {:.1} req/s, \
             {:.0} output tok/s\n",
            self.results,
            format_duration(Duration::from_secs_f64(self.wall_seconds)),
            self.succeeded,
            self.failed,
            self.retries,
            self.usage.input_tokens,
            self.usage.output_tokens,
            self.usage.total_tokens,
            self.requests_per_second,
            self.output_tokens_per_second,
        );
        for e in &self.top_errors {
            text.push_str(&format!("  {} x{}: {}\n", e.code, e.count, e.sample));
        }
        if !self.models.is_empty() {
            text.push_str("by model:\n");
        }
        for m in &self.models {
            text.push_str(&format!("  {}\n", m.describe()));
        }
        if let Some(preflight) = &self.preflight {
            text.push_str(&preflight.describe());
            text.push('\n');
        }
        if self.status == JobStatus::Interrupted {
            text.push_str(&format!(
                "results so far are kept in {}; run the same command again to resume\n",
                self.state_dir
            ));
        } else {
            text.push_str(&format!(
                "output: {}\nerrors: {}\n",
                self.output, self.errors
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates_come_from_the_stats() {
        let stats = Stats::default();
        stats.record(LineOutcome::Succeeded);
        stats.record(LineOutcome::Succeeded);
        stats.record(LineOutcome::EngineUnavailable);
        stats.add_usage(batch_format::output::Usage {
            input_tokens: 10,
            output_tokens: 20,
            total_tokens: 30,
            cached_tokens: 6,
            reasoning_tokens: 2,
        });
        stats.record(LineOutcome::Expired);
        let paths = Paths {
            input: "in",
            output: "out",
            errors: "err",
            state_dir: "st",
        };
        let s = RunSummary::new(paths, JobStatus::Expired, 4, &stats, Duration::from_secs(2));
        assert_eq!((s.results, s.succeeded, s.failed, s.expired), (4, 2, 1, 1));
        // The expired line was never sent: 3 requests in 2 s.
        assert!((s.requests_per_second - 1.5).abs() < 1e-9);
        assert_eq!(s.failed_by_reason["engine_unavailable"], 1);
        assert!((s.output_tokens_per_second - 10.0).abs() < 1e-9);
        let text = s.render();
        assert!(text.starts_with("EXPIRED"), "{text}");
        assert!(
            text.contains("2 succeeded, 1 failed (engine_unavailable 1), 1 expired"),
            "{text}"
        );
        assert!(
            text.contains("tokens: 10 input (6 cached), 20 output (2 reasoning), 30 total"),
            "{text}"
        );
    }
}

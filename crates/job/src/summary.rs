//! The end-of-run summary, printed for people and written as JSON with `--summary-json`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::{Outcome, Stats};
use crate::progress::format_duration;

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub input: String,
    pub output: String,
    pub errors: String,
    /// Lines in the input, blank ones included.
    pub lines: u64,
    /// Results written: one per non-blank line.
    pub results: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed results by reason: `engine_error` (a non-2xx answer), `engine_unavailable`
    /// (no answer), `invalid_request` (skipped invalid line).
    pub failed_by_reason: BTreeMap<&'static str, u64>,
    pub retries: u64,
    pub usage: UsageTotals,
    pub wall_seconds: f64,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageTotals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

pub struct Paths<'a> {
    pub input: &'a str,
    pub output: &'a str,
    pub errors: &'a str,
}

impl RunSummary {
    pub fn new(paths: Paths<'_>, lines: u64, stats: &Stats, wall: Duration) -> Self {
        let secs = wall.as_secs_f64().max(1e-9);
        let failed_by_reason = Outcome::ALL
            .iter()
            .filter(|&&o| o != Outcome::Succeeded)
            .map(|&o| (o.label(), stats.count(o)))
            .collect();
        let output_tokens = Stats::load(&stats.output_tokens);
        Self {
            input: paths.input.to_owned(),
            output: paths.output.to_owned(),
            errors: paths.errors.to_owned(),
            lines,
            results: stats.done(),
            succeeded: stats.count(Outcome::Succeeded),
            failed: stats.failed(),
            failed_by_reason,
            retries: Stats::load(&stats.retries),
            usage: UsageTotals {
                input_tokens: Stats::load(&stats.input_tokens),
                output_tokens,
                total_tokens: Stats::load(&stats.total_tokens),
            },
            wall_seconds: wall.as_secs_f64(),
            requests_per_second: stats.done() as f64 / secs,
            output_tokens_per_second: output_tokens as f64 / secs,
        }
    }

    pub fn render(&self) -> String {
        let reasons: Vec<String> = self
            .failed_by_reason
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let reasons = if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        };
        format!(
            "finished {} requests in {}: {} succeeded, {} failed{reasons}, {} retries\n\
             tokens: {} input, {} output, {} total | {:.1} req/s, {:.0} output tok/s\n\
             output: {}\nerrors: {}\n",
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
            self.output,
            self.errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates_come_from_the_stats() {
        let stats = Stats::default();
        stats.record(Outcome::Succeeded);
        stats.record(Outcome::Succeeded);
        stats.record(Outcome::EngineUnavailable);
        stats.add_usage(batch_format::output::Usage {
            input_tokens: 10,
            output_tokens: 20,
            total_tokens: 30,
        });
        let paths = Paths {
            input: "in",
            output: "out",
            errors: "err",
        };
        let s = RunSummary::new(paths, 4, &stats, Duration::from_secs(2));
        assert_eq!((s.results, s.succeeded, s.failed), (3, 2, 1));
        assert_eq!(s.failed_by_reason["engine_unavailable"], 1);
        assert!((s.output_tokens_per_second - 10.0).abs() < 1e-9);
        let text = s.render();
        assert!(
            text.contains("2 succeeded, 1 failed (engine_unavailable 1)"),
            "{text}"
        );
    }
}

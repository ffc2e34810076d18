//! Results counted per model, for a job whose file holds several (`--mixed-models`): the
//! summary, the Prometheus endpoint and the service's batch object show them.
//!
//! A result is attributed by its line ([`LineModels`]), so the results a resumed job carried
//! over count under their model too.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::input::line_models::LineModels;
use crate::state::outcome::LineOutcome;

#[derive(Debug)]
pub struct ModelCounts {
    names: Vec<String>,
    /// Requests of each model in the file.
    planned: Vec<u64>,
    outcomes: Vec<[AtomicU64; LineOutcome::ALL.len()]>,
    line_models: Arc<LineModels>,
}

/// One model's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelTally {
    pub model: String,
    /// Its requests in the file.
    pub total: u64,
    pub succeeded: u64,
    /// Failed results (an engine's error answer, or none), expired and cancelled apart.
    pub failed: u64,
    pub expired: u64,
    pub cancelled: u64,
}

impl ModelCounts {
    /// Counters for the file's `names` (in index order), each line's model in `line_models`.
    pub fn new(names: Vec<String>, line_models: Arc<LineModels>) -> Self {
        Self {
            planned: line_models.counts(names.len()),
            outcomes: names.iter().map(|_| Default::default()).collect(),
            names,
            line_models,
        }
    }

    /// Counts the result of `line` under its model (a line without one counts in the job's
    /// totals only).
    pub fn record(&self, line: u64, outcome: LineOutcome) {
        if let Some(counts) = self
            .line_models
            .of(line)
            .and_then(|m| self.outcomes.get(usize::from(m)))
        {
            counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn tallies(&self) -> Vec<ModelTally> {
        self.names
            .iter()
            .zip(&self.planned)
            .zip(&self.outcomes)
            .map(|((model, &total), counts)| {
                let n = |o: LineOutcome| counts[o.index()].load(Ordering::Relaxed);
                ModelTally {
                    model: model.clone(),
                    total,
                    succeeded: n(LineOutcome::Succeeded),
                    failed: n(LineOutcome::EngineError)
                        + n(LineOutcome::EngineUnavailable)
                        + n(LineOutcome::InvalidRequest),
                    expired: n(LineOutcome::Expired),
                    cancelled: n(LineOutcome::Cancelled),
                }
            })
            .collect()
    }

    /// The Prometheus families `batch_runner_model_requests_total{model, outcome}` and
    /// `batch_runner_model_requests_planned{model}`.
    pub fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP batch_runner_model_requests_total Requests finished, by model and outcome.\n\
             # TYPE batch_runner_model_requests_total counter"
        );
        for (model, counts) in self.names.iter().zip(&self.outcomes) {
            for o in LineOutcome::ALL {
                let _ = writeln!(
                    out,
                    "batch_runner_model_requests_total{{model=\"{}\",outcome=\"{}\"}} {}",
                    prometheus_label(model),
                    o.label(),
                    counts[o.index()].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP batch_runner_model_requests_planned Requests of each model in the input.\n\
             # TYPE batch_runner_model_requests_planned gauge"
        );
        for (model, planned) in self.names.iter().zip(&self.planned) {
            let _ = writeln!(
                out,
                "batch_runner_model_requests_planned{{model=\"{}\"}} {planned}",
                prometheus_label(model)
            );
        }
    }
}

impl ModelTally {
    /// `model: 8 succeeded, 1 failed of 10`, for the summary.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{}: {} succeeded, {} failed",
            self.model, self.succeeded, self.failed
        );
        if self.expired > 0 {
            let _ = write!(text, ", {} expired", self.expired);
        }
        if self.cancelled > 0 {
            let _ = write!(text, ", {} cancelled", self.cancelled);
        }
        let _ = write!(text, " of {}", self.total);
        text
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub fn prometheus_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_count_under_their_lines_model() {
        let mut lines = LineModels::default();
        lines.set(1, 0);
        lines.set(2, 1);
        lines.set(3, 1);
        let counts = ModelCounts::new(vec!["a".into(), "b\"x".into()], Arc::new(lines));
        counts.record(1, LineOutcome::Succeeded);
        counts.record(2, LineOutcome::EngineError);
        counts.record(3, LineOutcome::Expired);
        counts.record(9, LineOutcome::InvalidRequest);
        let t = counts.tallies();
        assert_eq!((t[0].total, t[0].succeeded, t[0].failed), (1, 1, 0));
        assert_eq!((t[1].total, t[1].failed, t[1].expired), (2, 1, 1));
        assert_eq!(
            t[1].describe(),
            "b\"x: 0 succeeded, 1 failed, 1 expired of 2"
        );
        let mut text = String::new();
        counts.render_prometheus(&mut text);
        assert!(text.contains(
            "batch_runner_model_requests_total{model=\"b\\\"x\",outcome=\"engine_error\"} 1"
        ));
        assert!(text.contains("batch_runner_model_requests_planned{model=\"a\"} 1"));
    }
}

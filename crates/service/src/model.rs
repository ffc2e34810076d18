//! The objects of the API as they go over the wire (OpenAI's File and Batch), built from store
//! rows. Every field of the spec is always present, `null` when it has no value, as OpenAI sends
//! them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::{BatchRow, BatchStatus, FileRow, StatusTimes};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub filename: String,
    pub purpose: String,
    /// Always `processed`: a file is stored whole before it is listed.
    pub status: String,
    pub status_details: Option<String>,
}

impl From<&FileRow> for FileObject {
    fn from(f: &FileRow) -> Self {
        Self {
            id: f.id.clone(),
            object: "file".into(),
            bytes: f.bytes,
            created_at: f.created_at,
            expires_at: f.expires_at,
            filename: f.filename.clone(),
            purpose: f.purpose.clone(),
            status: "processed".into(),
            status_details: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    pub object: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestCounts {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchUsage {
    pub input_tokens: i64,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: i64,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: i64,
}

/// A batch-level problem: a validation failure (with its input line) or why the batch failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchErrors {
    pub object: String,
    pub data: Vec<BatchError>,
}

/// Progress detail beyond OpenAI's fields, under one namespaced key the SDK keeps but ignores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchProgress {
    /// Requests sent to the engine and not answered yet.
    pub in_flight: u64,
    /// Retries so far (a request retried twice counts two).
    pub retried: u64,
    /// Expired or cancelled lines (not counted as failed, as OpenAI does).
    pub not_run: u64,
    /// Results per second over the worker's current run.
    pub requests_per_second: f64,
    /// Output tokens per second over the worker's current run.
    #[serde(default)]
    pub output_tokens_per_second: f64,
    /// Tokens (input and output) its requests left should take: from the tokens per request
    /// of its results so far, or estimated from its file (or counted by its pre-flight) before
    /// any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_tokens: Option<u64>,
    /// Seconds left at the current rate; null until there is a rate.
    pub eta_seconds: Option<u64>,
    /// Engine latency over every answered request: count and sum, for the service's metrics.
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
    /// How many times a worker of this batch died and was restarted.
    pub worker_restarts: u64,
    /// Where the results so far can be read while the batch runs.
    pub partial_results_path: Option<String>,
    /// The batch's own webhook URL, when its create request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Unix seconds at which the batch should end, on its model's measured throughput and
    /// the work queued ahead of it (set with `eta_seconds`, which it then replaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_finish_at: Option<i64>,
    /// Whether that is after the batch's window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_risk: Option<bool>,
    /// The pre-flight count (`x_batch_runner.preflight` at create), once validation made it:
    /// requests, input_tokens, worst_case_output_tokens, context_length, over_context, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub preflight: Option<serde_json::Value>,
    /// Results over time, `[unix_seconds, results]` pairs from the start of the batch (at most
    /// [`HISTORY_POINTS`]: when full, every other point is dropped, so the series always spans
    /// the whole run at a coarser step): the dashboard's throughput chart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Vec<u64>>)]
    pub history: Vec<[u64; 2]>,
    /// The delivery of the webhook event of a batch that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDelivery>,
    /// A batch of several models (`x_batch_runner.mixed_models` at create): each model's
    /// `{model, total, succeeded, failed, expired, cancelled}`, in the order the models first
    /// appear in its file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub models: Vec<batch_job::ModelTally>,
}

/// The most points [`BatchProgress::history`] keeps.
pub const HISTORY_POINTS: usize = 240;

/// Adds a point to a results-over-time series, halving its resolution when it is full.
pub fn add_history_point(history: &mut Vec<[u64; 2]>, unix_seconds: u64, results: u64) {
    if history.last().is_some_and(|p| p[0] == unix_seconds) {
        history.pop();
    }
    history.push([unix_seconds, results]);
    if history.len() > HISTORY_POINTS {
        let last = history.last().copied();
        let mut i = 0;
        history.retain(|_| {
            i += 1;
            i % 2 == 1
        });
        // The newest point stays: the series ends now.
        if history.last().copied() != last
            && let Some(last) = last
        {
            history.push(last);
        }
    }
}

/// Where the webhook event of an ended batch stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    /// The event's id (`evt_…`), also its `webhook-id` header.
    pub event_id: String,
    /// `held` (a batch the service failed: waiting, at most 15 minutes, for the results it had
    /// finished to be attached), `pending`, `delivered`, `failed` (given up after a day of
    /// retries, or a refused URL) or `no_endpoint` (nowhere to send it).
    pub state: String,
    pub attempts: i64,
    /// Unix seconds.
    pub last_attempt_at: Option<i64>,
    /// The receiver's last HTTP status.
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub next_attempt_at: Option<i64>,
}

impl From<&crate::store::WebhookEvent> for WebhookDelivery {
    fn from(e: &crate::store::WebhookEvent) -> Self {
        Self {
            event_id: e.id.clone(),
            state: e.state.clone(),
            attempts: e.attempts,
            last_attempt_at: e.last_attempt_at.map(|ms| ms / 1000),
            last_status: e.last_status,
            last_error: e.last_error.clone(),
            next_attempt_at: (e.state == "pending" && e.next_attempt_at > 0)
                .then_some(e.next_attempt_at / 1000),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Batch {
    pub id: String,
    /// Always `batch`.
    pub object: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    pub completion_window: String,
    /// `validating`, `failed`, `in_progress`, `finalizing`, `completed`, `expired`,
    /// `cancelling` or `cancelled`.
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    #[serde(flatten)]
    pub times: StatusTimes,
    pub request_counts: RequestCounts,
    pub usage: BatchUsage,
    pub metadata: Option<BTreeMap<String, String>>,
    /// batch-runner's extension: live progress detail.
    pub x_batch_runner: BatchProgress,
}

impl From<&BatchRow> for Batch {
    fn from(b: &BatchRow) -> Self {
        let errors = b.errors.as_deref().and_then(|text| {
            serde_json::from_str::<Vec<BatchError>>(text)
                .ok()
                .map(|data| BatchErrors {
                    object: "list".into(),
                    data,
                })
        });
        let mut progress: BatchProgress = b
            .progress
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        progress.worker_restarts = b.crashes.max(0) as u64;
        progress.webhook_url = b.webhook_url.clone();
        progress.preflight = b
            .preflight_report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        if matches!(
            b.status,
            BatchStatus::InProgress | BatchStatus::Finalizing | BatchStatus::Cancelling
        ) {
            progress.partial_results_path = Some(format!("/v1/batches/{}/partial_results", b.id));
        } else {
            progress.partial_results_path = None;
            progress.in_flight = 0;
            progress.eta_seconds = None;
        }
        Self {
            id: b.id.clone(),
            object: "batch".into(),
            endpoint: b.endpoint.clone(),
            model: b.model.clone(),
            errors,
            input_file_id: b.input_file_id.clone(),
            completion_window: b.completion_window.clone(),
            status: b.status.as_str().to_owned(),
            output_file_id: b.output_file_id.clone(),
            error_file_id: b.error_file_id.clone(),
            created_at: b.created_at,
            expires_at: Some(b.expires_at),
            times: b.times.clone(),
            request_counts: RequestCounts {
                total: b.total,
                completed: b.completed,
                failed: b.failed,
            },
            usage: BatchUsage {
                input_tokens: b.input_tokens,
                input_tokens_details: InputTokensDetails {
                    cached_tokens: b.cached_tokens,
                },
                output_tokens: b.output_tokens,
                output_tokens_details: OutputTokensDetails {
                    reasoning_tokens: b.reasoning_tokens,
                },
                total_tokens: b.input_tokens + b.output_tokens,
            },
            metadata: b
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            x_batch_runner: progress,
        }
    }
}

/// One page of a list: `after` is "strictly after this id in the list's order".
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub object: String,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> List<T> {
    /// A page from up to `limit + 1` rows fetched in order: the extra row only says there is more.
    pub fn page(mut rows: Vec<T>, limit: usize, id_of: impl Fn(&T) -> &str) -> Self {
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self {
            object: "list".into(),
            first_id: rows.first().map(|r| id_of(r).to_owned()),
            last_id: rows.last().map(|r| id_of(r).to_owned()),
            data: rows,
            has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_spans_the_whole_run_within_its_points() {
        let mut h = Vec::new();
        for t in 0..1000u64 {
            add_history_point(&mut h, 100 + t, t * 3);
        }
        assert!(
            h.len() <= HISTORY_POINTS && h.len() > HISTORY_POINTS / 2,
            "{}",
            h.len()
        );
        assert_eq!(h[0], [100, 0], "the start stays");
        assert_eq!(h.last(), Some(&[1099, 2997]), "the newest point stays");
        assert!(h.windows(2).all(|w| w[0][0] < w[1][0]));
        // A second point in the same second replaces the first.
        add_history_point(&mut h, 1099, 3000);
        assert_eq!(h.last(), Some(&[1099, 3000]));
    }
}

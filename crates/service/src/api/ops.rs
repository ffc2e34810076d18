//! `/health`, `/metrics` (Prometheus text) and `/openapi.json` (generated from the handlers).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use batch_job::prometheus_label;
use utoipa::OpenApi;

use super::AppState;
use crate::error::ApiError;
use crate::model::BatchProgress;
use crate::store::{BatchStatus, Throughput, now_ms};

#[derive(OpenApi)]
#[openapi(
    info(title = "batch-runner", description = "OpenAI-compatible Files and Batches API of batch-runner's service."),
    paths(
        super::files::create, super::files::list, super::files::retrieve, super::files::content,
        super::files::delete, super::batches::create, super::batch_list::list,
        super::batches::retrieve, super::batch_list::delete, super::batches::cancel,
        super::batches::partial_results, super::results::list, super::results::retrieve,
        super::results::errors,
        super::usage::usage, health, metrics, openapi,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "files"), (name = "batches"), (name = "operations"))
)]
pub struct ApiDoc;

/// Every `/v1` call needs `Authorization: Bearer KEY`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

#[utoipa::path(get, path = "/health", tag = "operations", operation_id = "health", security(()),
    responses((status = 200, description = "The service is up: `{\"status\": \"ok\"}`.", body = Object)))]
pub async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi", security(()),
    responses((status = 200, description = "This document.", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics", security(()),
    responses((status = 200, description = "Prometheus metrics of every batch.", content_type = "text/plain"),
        (status = 500, description = "The database cannot be read.", body = crate::error::ErrorBody)))]
pub async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP batch_runner_batches Batches by status.\n# TYPE batch_runner_batches gauge"
    );
    let counts = app.store.status_counts().await?;
    for status in BatchStatus::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "batch_runner_batches{{status=\"{status}\"}} {n}");
    }
    let queue = app.store.queue_depth(now_ms()).await?;
    let _ = writeln!(
        out,
        "# HELP batch_runner_queue_depth Unfinished batches waiting for a worker.\n\
         # TYPE batch_runner_queue_depth gauge\nbatch_runner_queue_depth {queue}"
    );
    let (completed, failed, progress) = app.store.request_totals().await?;
    let (mut count, mut sum, mut in_flight) = (0u64, 0f64, 0u64);
    for p in progress
        .iter()
        .filter_map(|p| serde_json::from_str::<BatchProgress>(p).ok())
    {
        count += p.latency_count;
        sum += p.latency_sum_seconds;
        in_flight += p.in_flight;
    }
    let _ = writeln!(
        out,
        "# HELP batch_runner_requests Requests of all batches by outcome (expired and cancelled \
         lines are neither).\n# TYPE batch_runner_requests gauge\n\
         batch_runner_requests{{outcome=\"completed\"}} {completed}\n\
         batch_runner_requests{{outcome=\"failed\"}} {failed}\n\
         # HELP batch_runner_requests_in_flight Requests sent to engines and not answered yet.\n\
         # TYPE batch_runner_requests_in_flight gauge\n\
         batch_runner_requests_in_flight {in_flight}\n\
         # HELP batch_runner_engine_latency_seconds Engine latency of answered requests.\n\
         # TYPE batch_runner_engine_latency_seconds summary\n\
         batch_runner_engine_latency_seconds_sum {sum}\n\
         batch_runner_engine_latency_seconds_count {count}"
    );
    let mut rates: Vec<_> = app.store.throughputs().await?.into_iter().collect();
    rates.sort_by(|a, b| a.0.cmp(&b.0));
    /// A gauge per model: its name, its help, and its value.
    type PerModel = (&'static str, &'static str, fn(&Throughput) -> f64);
    let per_model: [PerModel; 3] = [
        (
            "batch_runner_model_throughput_requests_per_second",
            "Measured results per second of each model's batches (a decaying average; what \
             ETAs and admission use).",
            |m| m.per_second,
        ),
        (
            "batch_runner_model_throughput_tokens_per_second",
            "Measured output tokens per second of each model's batches (a decaying average).",
            |m| m.tokens_per_second,
        ),
        (
            "batch_runner_model_batch_overhead_seconds",
            "A batch's own time besides its requests (worker start, validation, finalizing), \
             a decaying average per model.",
            |m| m.overhead_seconds,
        ),
    ];
    for (name, help, value) in per_model {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (model, measured) in &rates {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\"}} {}",
                prometheus_label(model),
                value(measured)
            );
        }
    }
    usage_metrics(&app, &mut out).await?;
    webhook_metrics(&app, &mut out).await?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// Requests and tokens per owner and model, over every batch.
async fn usage_metrics(app: &AppState, out: &mut String) -> Result<(), ApiError> {
    let _ = writeln!(
        out,
        "# HELP batch_runner_usage_requests Requests of all batches by owner, model and outcome.\n\
         # TYPE batch_runner_usage_requests gauge\n\
         # HELP batch_runner_usage_tokens Tokens of all batches by owner, model and kind.\n\
         # TYPE batch_runner_usage_tokens gauge"
    );
    for u in app.store.usage(None, None, None).await? {
        let (owner, model) = (
            prometheus_label(&u.owner),
            prometheus_label(u.model.as_deref().unwrap_or("")),
        );
        let at = format!("owner=\"{owner}\",model=\"{model}\"");
        let _ = writeln!(
            out,
            "batch_runner_usage_requests{{{at},outcome=\"completed\"}} {}\n\
             batch_runner_usage_requests{{{at},outcome=\"failed\"}} {}\n\
             batch_runner_usage_tokens{{{at},kind=\"input\"}} {}\n\
             batch_runner_usage_tokens{{{at},kind=\"output\"}} {}\n\
             batch_runner_usage_tokens{{{at},kind=\"cached\"}} {}\n\
             batch_runner_usage_tokens{{{at},kind=\"reasoning\"}} {}",
            u.completed,
            u.failed,
            u.input_tokens,
            u.output_tokens,
            u.cached_tokens,
            u.reasoning_tokens
        );
    }
    Ok(())
}

/// The outbox by state (every replica's events), and this process's deliveries.
async fn webhook_metrics(app: &AppState, out: &mut String) -> Result<(), ApiError> {
    let _ = writeln!(
        out,
        "# HELP batch_runner_webhook_events Webhook events by delivery state.\n\
         # TYPE batch_runner_webhook_events gauge"
    );
    let counts = app.store.event_counts().await?;
    for state in ["held", "pending", "delivered", "failed", "no_endpoint"] {
        let n = counts
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "batch_runner_webhook_events{{state=\"{state}\"}} {n}");
    }
    let c = &app.webhook_counters;
    let _ = writeln!(
        out,
        "# HELP batch_runner_webhook_deliveries_total Webhook delivery attempts of this process \
         by result.\n# TYPE batch_runner_webhook_deliveries_total counter\n\
         batch_runner_webhook_deliveries_total{{result=\"delivered\"}} {}\n\
         batch_runner_webhook_deliveries_total{{result=\"failed\"}} {}\n\
         batch_runner_webhook_deliveries_total{{result=\"given_up\"}} {}",
        c.delivered.load(Ordering::Relaxed),
        c.failed_attempts.load(Ordering::Relaxed),
        c.given_up.load(Ordering::Relaxed)
    );
    Ok(())
}

//! `/v1/batches`: create, list, retrieve, cancel, and the extension `partial_results`.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use batch_job::{ResultFile, results_so_far};
use serde::Deserialize;

use super::AppState;
use super::files::EXPIRY_SECONDS;
use super::inline;
use super::range::serve_prefix;
use crate::auth::Owner;
use crate::error::ApiError;
use crate::ids;
use crate::model::{Batch, WebhookDelivery};
use crate::planning::{self, Admission};
use crate::store::{BatchRow, BatchStatus, FileRow, Idempotent, now_secs};
use crate::webhooks::target;
use crate::window::parse_window;

/// OpenAI's metadata limits.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;
/// How much of the input is read at creation to find the batch's model.
const MODEL_PROBE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateBatch {
    /// The uploaded input (or give `requests`).
    #[serde(default)]
    input_file_id: Option<String>,
    /// Extension: the requests themselves, instead of an uploaded file: an array of
    /// `{"custom_id", "method", "url", "body"}` objects, stored as the batch's input file
    /// (purpose `batch`) as it is received. (Read from the body as it streams in: the
    /// field is here for the OpenAPI document.)
    #[serde(default, rename = "requests")]
    #[schema(value_type = Option<Vec<Object>>)]
    _requests: Option<serde_json::Value>,
    /// One of the supported endpoints, e.g. `/v1/chat/completions`.
    endpoint: String,
    /// `24h`, or (extension) a duration such as `2h` within the service's bounds.
    completion_window: String,
    /// Up to 16 string pairs; keys up to 64 characters, values up to 512.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    output_expires_after: Option<ExpiresAfter>,
    /// batch-runner's extension: `{"webhook_url": "https://…"}` sends this batch's event there
    /// (signed with its owner's secret) instead of to the owner's endpoint; `{"preflight":
    /// true}` counts every line with the engine's tokenizer during validation (lines over the
    /// model's context length fail as `context_length_exceeded` without being sent; the
    /// enqueued-token quota counts the exact tokens); `{"mixed_models": true}` lets the file
    /// hold several models, each line sent to its own model's engines (not with `preflight`;
    /// a model no engine serves fails the batch naming its lines; `x_batch_runner.models`
    /// counts each model's results).
    #[serde(default)]
    x_batch_runner: Option<CreateExtension>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CreateExtension {
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    preflight: Option<bool>,
    #[serde(default)]
    mixed_models: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ExpiresAfter {
    anchor: String,
    seconds: i64,
}

/// Reads a create request, checking its fields one by one so that an error names the field
/// (`param`) and says what is wrong in the client's terms rather than the server's types.
/// `inline`: the body had `requests` (then `input_file_id` must be absent).
fn parse_create(body: &[u8], inline: bool) -> Result<CreateBatch, ApiError> {
    use serde_json::Value;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("The body is not valid JSON ({e})")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid(
            "The body must be a JSON object with input_file_id, endpoint and completion_window",
        ));
    };
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    if inline && object.get("input_file_id").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            "Give either 'input_file_id' (an uploaded file) or 'requests', not both",
        )
        .param("input_file_id"));
    }
    let input = (!inline).then_some("input_file_id");
    for field in input.into_iter().chain(["endpoint", "completion_window"]) {
        match object.get(field) {
            None | Some(Value::Null) => {
                return Err(
                    ApiError::invalid(format!("Missing required parameter: '{field}'"))
                        .param(field),
                );
            }
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "'{field}' must be a string, not {}",
                    kind(other)
                ))
                .param(field));
            }
        }
    }
    if let Some(m) = object
        .get("metadata")
        .filter(|m| !m.is_null() && !m.is_object())
    {
        return Err(ApiError::invalid(format!(
            "'metadata' must be an object of string keys and values, not {}",
            kind(m)
        ))
        .param("metadata"));
    }
    if let Some(e) = object.get("output_expires_after").filter(|e| !e.is_null()) {
        let good = e["anchor"].is_string() && e["seconds"].is_i64();
        if !good {
            return Err(ApiError::invalid(
                "'output_expires_after' must be {\"anchor\": \"created_at\", \"seconds\": N}",
            )
            .param("output_expires_after"));
        }
    }
    if let Some(x) = object.get("x_batch_runner").filter(|x| !x.is_null()) {
        let flag = |name: &str| x.get(name).is_none_or(|p| p.is_boolean() || p.is_null());
        let good = x.is_object()
            && x.get("webhook_url")
                .is_none_or(|u| u.is_string() || u.is_null())
            && flag("preflight")
            && flag("mixed_models");
        if !good {
            return Err(ApiError::invalid(
                "'x_batch_runner' must be an object such as {\"webhook_url\": \"https://…\", \
                 \"preflight\": true, \"mixed_models\": false}",
            )
            .param("x_batch_runner"));
        }
        if x["preflight"] == true && x["mixed_models"] == true {
            return Err(ApiError::invalid(
                "'x_batch_runner.preflight' counts with one model's tokenizer: it cannot be \
                 combined with 'mixed_models'",
            )
            .param("x_batch_runner"));
        }
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("Invalid body: {e}")))
}

#[utoipa::path(post, path = "/v1/batches", tag = "batches", operation_id = "createBatch", request_body = CreateBatch,
    description = "An `Idempotency-Key` header (extension) makes a retried create return the \
                   batch the first one made (for a day); the same key with another body is a 400.",
    params(("Idempotency-Key" = Option<String>, Header, description = "Up to 255 printable characters.")),
    responses((status = 200, description = "The batch, `validating`.", body = Batch),
        (status = 400, description = "An invalid request; `param` names the field.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such input file.", body = crate::error::ErrorBody),
        (status = 413, description = "The body is over the upload limit, or its fields besides `requests` over 2 MB.", body = crate::error::ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Batch>, ApiError> {
    let key = inline::idempotency_key(&headers)?;
    let file_id = ids::file_id();
    let received = inline::receive(&app, body, &file_id, app.config.max_upload_bytes).await?;
    if let Some(key) = &key
        && let Some(earlier) = app.store.idempotent(&owner.0, key).await?
    {
        return replay(&app, &owner, &earlier, &received.digest).await;
    }
    let request = parse_create(&received.fields, received.requests.is_some())?;
    let keyed = key.map(|k| (k, received.digest));
    let Some((requests, _)) = received.requests else {
        return create_batch(&app, &owner, request, None, keyed).await;
    };
    let input = inline::store_requests(&app, &owner, requests, &file_id).await?;
    let created = create_batch(&app, &owner, request, Some(input), keyed).await;
    if created
        .as_ref()
        .map_or(true, |b| b.input_file_id != file_id)
    {
        // Refused, or an earlier create's batch: the file made for this one goes.
        let _ = app.store.delete_file(&owner.0, &file_id).await;
        app.collect_soon();
    }
    created
}

/// The answer to a create repeated under an idempotency key: the batch the first one made, or a
/// 400 when this one's body differs.
async fn replay(
    app: &AppState,
    owner: &Owner,
    earlier: &Idempotent,
    digest: &str,
) -> Result<Json<Batch>, ApiError> {
    if earlier.digest != digest {
        return Err(ApiError::invalid(
            "This Idempotency-Key was used in the last 24 hours for another request; use a new \
             key for a new batch",
        )
        .code("idempotency_key_reused"));
    }
    let row = owned(app, owner, &earlier.batch_id).await?;
    let rates = app.store.throughputs().await?;
    Ok(Json(with_plan(app, &rates, &row).await?))
}

/// Creates the batch of `request` over `input` (the file its `requests` became) or its
/// `input_file_id`.
async fn create_batch(
    app: &AppState,
    owner: &Owner,
    request: CreateBatch,
    input: Option<FileRow>,
    keyed: Option<(String, String)>,
) -> Result<Json<Batch>, ApiError> {
    let endpoint = request.endpoint.as_str();
    if !batch_format::SUPPORTED_URLS.contains(&endpoint)
        && !app.config.extra_endpoints.iter().any(|e| e == endpoint)
    {
        return Err(ApiError::invalid(format!(
            "Invalid endpoint {endpoint:?}: use one of {}",
            batch_format::SUPPORTED_URLS.join(", ")
        ))
        .param("endpoint"));
    }
    let window = parse_window(&request.completion_window, app.config.windows)
        .map_err(|m| ApiError::invalid(m).param("completion_window"))?;
    let metadata = match request.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(m) => Some(check_metadata(m)?),
    };
    let output_expires_seconds = match request.output_expires_after {
        None => None,
        Some(e) if e.anchor == "created_at" && EXPIRY_SECONDS.contains(&e.seconds) => {
            Some(e.seconds)
        }
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "output_expires_after needs anchor 'created_at' and seconds from {} to {}",
                EXPIRY_SECONDS.start(),
                EXPIRY_SECONDS.end()
            ))
            .param("output_expires_after"));
        }
    };
    let input = match input {
        Some(input) => input,
        None => {
            let id = request.input_file_id.as_deref().unwrap_or_default();
            app.store
                .file(&owner.0, id)
                .await?
                .ok_or_else(|| ApiError::not_found("File", id).param("input_file_id"))?
        }
    };
    if input.purpose != "batch" {
        return Err(ApiError::invalid(format!(
            "The file {} has purpose {:?}; a batch's input must be uploaded with purpose 'batch'",
            input.id, input.purpose
        ))
        .param("input_file_id"));
    }
    // The model is known before validation, so a worker pool serving only some models can
    // tell which batches are its own; validation confirms it.
    let (model, estimated_lines) = match app.blobs.head(&input.blob, MODEL_PROBE_BYTES).await {
        Ok(head) => (
            first_model(&head),
            planning::estimate_lines(&head, input.bytes.max(0) as u64),
        ),
        Err(e) => return Err(ApiError::internal("cannot read the input file", e)),
    };
    let extension = request.x_batch_runner.unwrap_or_default();
    let webhook_url = match extension.webhook_url {
        Some(url) => Some(check_webhook_url(app, owner, &url).await?),
        None => None,
    };
    let created_at = now_secs();
    if let Some(limit) = app.config.owner_max_batches_per_hour {
        let recent = app.store.created_since(&owner.0, created_at - 3600).await?;
        if recent >= i64::from(limit) {
            return Err(ApiError::rate_limited(format!(
                "This key's owner created {recent} batches in the last hour, the service's \
                 limit; retry later"
            ))
            .code("rate_limit_exceeded"));
        }
    }
    let id = ids::batch_id();
    let expires_at = created_at + window as i64;
    if let Some(model) = &model {
        admit(app, model, &id, expires_at, estimated_lines, window).await?;
    }
    let row = BatchRow {
        id,
        owner: owner.0.clone(),
        endpoint: request.endpoint,
        input_file_id: input.id,
        input_blob: input.blob,
        completion_window: request.completion_window,
        status: BatchStatus::Validating,
        created_at,
        expires_at,
        estimated_lines,
        // About four bytes of a JSON request line per prompt token.
        estimated_tokens: input.bytes.max(0) / 4,
        metadata: metadata.map(|m| serde_json::Value::from(m).to_string()),
        output_expires_seconds,
        model,
        webhook_url,
        preflight: i64::from(extension.preflight.unwrap_or(false)),
        mixed_models: i64::from(extension.mixed_models.unwrap_or(false)),
        ..BatchRow::default()
    };
    match keyed {
        None => app.store.insert_batch(&row).await?,
        Some((key, digest)) => {
            // Another create with this key won the race: its batch is the answer.
            if let Some(earlier) = app.store.insert_batch_keyed(&row, &key, &digest).await? {
                return replay(app, owner, &earlier, &digest).await;
            }
        }
    }
    app.wake.notify_one();
    Ok(Json(Batch::from(&row)))
}

/// Refuses (with `--admission reject`) a batch that cannot finish inside its window on its
/// model's measured throughput, given the work queued ahead of it; without a measured
/// throughput every batch is admitted.
async fn admit(
    app: &AppState,
    model: &str,
    id: &str,
    expires_at: i64,
    lines: i64,
    window: u64,
) -> Result<(), ApiError> {
    if app.config.admission != Admission::Reject {
        return Ok(());
    }
    let mine = planning::Mine {
        id,
        created_at: expires_at - window as i64,
        expires_at,
        unstored: lines,
    };
    let rates = app.store.throughputs().await?;
    let margin = app.config.admission_margin;
    let Some(planning::Queued { plan, ahead, rate }) =
        planning::queued(&app.store, &rates, model, mine, margin).await?
    else {
        return Ok(());
    };
    if !plan.at_risk {
        return Ok(());
    }
    let needed = batch_job::format_duration(Duration::from_secs(plan.eta_seconds.max(window)));
    Err(ApiError::rate_limited(format!(
        "This batch cannot finish within its completion_window: with {ahead} requests of \
         {model} queued ahead of its {lines}, at the {rate:.1} requests/s measured, it would \
         take about {needed}. The earliest window that can be met now is {}s; retry with a \
         longer completion_window or later.",
        plan.eta_seconds
    ))
    .code("window_infeasible")
    .param("completion_window"))
}

/// A batch's own webhook URL: one the service may send to, for an owner with a secret to sign
/// with.
async fn check_webhook_url(app: &AppState, owner: &Owner, url: &str) -> Result<String, ApiError> {
    const PARAM: &str = "x_batch_runner.webhook_url";
    if app.endpoints.of(&owner.0).is_none() {
        return Err(ApiError::invalid(
            "This key's owner has no webhook secret to sign events with; ask the operator to \
             add the owner to the service's --webhook-file",
        )
        .param(PARAM));
    }
    let parsed = target::parse(url).map_err(|m| ApiError::invalid(m).param(PARAM))?;
    target::resolve(&parsed, app.endpoints.allow_private())
        .await
        .map_err(|m| ApiError::invalid(m).param(PARAM))?;
    Ok(parsed.to_string())
}

/// The `body.model` of the first line that has one, within the bytes given.
fn first_model(head: &[u8]) -> Option<String> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let v: serde_json::Value = serde_json::from_slice(line.trim_ascii()).ok()?;
        v.get("body")?.get("model")?.as_str().map(str::to_owned)
    })
}

fn check_metadata(
    value: serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let bad = |m: String| ApiError::invalid(m).param("metadata");
    let serde_json::Value::Object(map) = value else {
        return Err(bad("metadata must be an object of string values".into()));
    };
    if map.len() > MAX_METADATA_PAIRS {
        return Err(bad(format!(
            "metadata has {} keys; at most {MAX_METADATA_PAIRS} are allowed",
            map.len()
        )));
    }
    for (k, v) in &map {
        if k.chars().count() > MAX_METADATA_KEY {
            return Err(bad(format!(
                "metadata key {:?}… is longer than {MAX_METADATA_KEY} characters",
                k.chars().take(20).collect::<String>()
            )));
        }
        match v {
            serde_json::Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE => {}
            serde_json::Value::String(_) => {
                return Err(bad(format!(
                    "metadata value of {k:?} is longer than {MAX_METADATA_VALUE} characters"
                )));
            }
            _ => return Err(bad(format!("metadata value of {k:?} must be a string"))),
        }
    }
    Ok(map)
}

/// The API object of `row`, with its ETA when its model's throughput is known.
pub(super) async fn with_plan(
    app: &AppState,
    rates: &planning::Rates,
    row: &BatchRow,
) -> Result<Batch, ApiError> {
    let mut batch = Batch::from(row);
    if !row.is_terminal() {
        batch.x_batch_runner.remaining_tokens = Some(planning::remaining_tokens(row));
    }
    if let Some(plan) = planning::plan(&app.store, rates, row, app.config.admission_margin).await? {
        let x = &mut batch.x_batch_runner;
        x.eta_seconds = Some(plan.eta_seconds);
        x.estimated_finish_at = Some(plan.estimated_finish_at);
        x.at_risk = Some(plan.at_risk);
    }
    Ok(batch)
}

pub(super) async fn owned(app: &AppState, owner: &Owner, id: &str) -> Result<BatchRow, ApiError> {
    app.store
        .batch(&owner.0, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Batch", id))
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", operation_id = "retrieveBatch", params(("id" = String, Path, description = "The batch's id (`batch_…`)")),
    responses((status = 200, description = "The batch.", body = Batch),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such batch of the caller's.", body = crate::error::ErrorBody)))]
pub async fn retrieve(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    let mut batch = with_plan(
        &app,
        &app.store.throughputs().await?,
        &owned(&app, &owner, &id).await?,
    )
    .await?;
    if let Some(event) = app.store.event_of(&id).await? {
        batch.x_batch_runner.webhook = Some(WebhookDelivery::from(&event));
    }
    Ok(Json(batch))
}

#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches", operation_id = "cancelBatch", params(("id" = String, Path, description = "The batch's id (`batch_…`)")),
    description = "No body is needed. Requests in flight finish within the cancel grace; unsent ones are written as `batch_cancelled`.",
    responses((status = 200, description = "The batch, `cancelling` (or already ended).", body = Batch),
        (status = 400, description = "The batch has ended and cannot be cancelled.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such batch of the caller's.", body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    let batch = owned(&app, &owner, &id).await?;
    match batch.status {
        status if status.can_become(BatchStatus::Cancelling) => {
            app.store.request_cancel(&owner.0, &id, now_secs()).await?;
            app.wake.notify_one();
            Ok(Json(Batch::from(&owned(&app, &owner, &id).await?)))
        }
        // Cancelling twice is harmless, as with OpenAI.
        BatchStatus::Cancelling | BatchStatus::Cancelled => Ok(Json(Batch::from(&batch))),
        status => Err(ApiError::invalid(format!(
            "Cannot cancel batch {id}: its status is \"{status}\"; only a validating or \
             in_progress batch can be cancelled"
        ))
        .param("id")),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartialQuery {
    /// `output` (default) or `errors`.
    file: Option<String>,
}

#[utoipa::path(get, path = "/v1/batches/{id}/partial_results", tag = "batches", operation_id = "batchPartialResults",
    params(("id" = String, Path, description = "The batch's id (`batch_…`)"), PartialQuery),
    description = "batch-runner extension: the results written so far (up to the last checkpoint) of a running batch, in completion order; after the batch ends, its final file.",
    responses((status = 200, description = "The results so far, as JSON lines.", content_type = "application/octet-stream"),
        (status = 400, description = "An invalid query parameter.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such batch of the caller's.", body = crate::error::ErrorBody)))]
pub async fn partial_results(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    query: Result<Query<PartialQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let which = match q.file.as_deref() {
        None | Some("output") => ResultFile::Output,
        Some("errors") => ResultFile::Errors,
        Some(_) => return Err(ApiError::invalid("file must be 'output' or 'errors'").param("file")),
    };
    let batch = owned(&app, &owner, &id).await?;
    let finished = match which {
        ResultFile::Output => &batch.output_file_id,
        ResultFile::Errors => &batch.error_file_id,
    };
    if let Some(file_id) = finished
        && let Some(file) = app.store.file(&owner.0, file_id).await?
    {
        return super::range::serve_blob(&app.blobs, &file.blob, &headers).await;
    }
    let state = crate::BatchWork::new(&app.work_dir, &id).state();
    let read = |e| ApiError::internal("cannot read the batch's results so far", e);
    let Some((path, len)) = results_so_far(&state, which).map_err(read)? else {
        return Ok(Bytes::new().into_response());
    };
    let file = tokio::fs::File::open(&path).await.map_err(read)?;
    serve_prefix(file, len, &headers).await.map_err(read)
}

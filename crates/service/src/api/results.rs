//! The results API (extensions): a batch's results a page at a time, one request by its
//! `custom_id`, and its failures by error code. A running batch is read from its worker's job
//! state (`WORK_DIR/BATCH/state`, shared with the workers); a finished one through the results
//! index its worker stored beside its output (`FILE.results`), built here from its files when
//! missing (a batch the service failed, or one finished before indexes existed). With object
//! storage the files are read from local copies under `DATA_DIR/cache/`.

use std::path::PathBuf;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use batch_job::{
    IndexSources, IndexedFiles, LiveResults, MAX_PAGE, PageQuery, ResultPage, ResultSource,
    ResultStatus,
};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::batches::owned;
use crate::auth::Owner;
use crate::blobs::Blobs;
use crate::error::ApiError;
use crate::store::BatchRow;

/// The results index of a batch's result files, stored beside the first of them.
pub fn index_blob(result_blob: &str) -> String {
    format!("{result_blob}.results")
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// `succeeded`, `failed`, `expired` or `cancelled`; every status when absent.
    status: Option<String>,
    /// Only the result of this request (at most one item).
    custom_id: Option<String>,
    /// Results after this input line: the previous page's `last_line`.
    after: Option<u64>,
    /// 1 to 1000 (default 100).
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ResultList {
    object: &'static str,
    data: Vec<batch_job::ResultItem>,
    first_line: Option<u64>,
    last_line: Option<u64>,
    has_more: bool,
}

#[utoipa::path(get, path = "/v1/batches/{id}/results", tag = "batches", operation_id = "listBatchResults",
    params(("id" = String, Path, description = "The batch's id (`batch_…`)"), ResultsQuery),
    description = "batch-runner extension: the batch's results so far (running) or all of them (ended), in input-line order, a page at a time: `{object: \"list\", data: [{line, custom_id, status, result}], first_line, last_line, has_more}`; pass `last_line` as `after` for the next page.",
    responses((status = 200, description = "A page of results.", body = Object),
        (status = 400, description = "An invalid query parameter.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such batch of the caller's.", body = crate::error::ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    query: Result<Query<ResultsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let ask = q.ask()?;
    let batch = owned(&app, &owner, &id).await?;
    let page = read(&app, &batch, move |source| ask.answer(source))
        .await?
        .unwrap_or_default();
    Ok(Json(list_body(page)))
}

/// What a results query asks for: a page, or one request (within a status, when given).
pub struct Ask {
    page: PageQuery,
    custom_id: Option<String>,
}

impl ResultsQuery {
    /// The query checked: an unknown status or a limit out of range is a 400 naming it.
    pub fn ask(self) -> Result<Ask, ApiError> {
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(ResultStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status must be one of succeeded, failed, expired, cancelled (got '{s}')"
                ))
                .param("status")
            })?),
        };
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")).param("limit"));
        }
        Ok(Ask {
            page: PageQuery {
                status,
                after: self.after.unwrap_or(0),
                limit,
            },
            custom_id: self.custom_id.filter(|c| !c.is_empty()),
        })
    }
}

impl Ask {
    pub fn answer(&self, source: &dyn ResultSource) -> std::io::Result<ResultPage> {
        let Some(custom_id) = &self.custom_id else {
            return source.page(&self.page);
        };
        let status = self.page.status;
        Ok(ResultPage {
            data: source
                .find(custom_id)?
                .map(|d| d.item)
                .filter(|i| status.is_none_or(|s| s == i.status))
                .into_iter()
                .collect(),
            has_more: false,
        })
    }
}

/// A page as the API lists it.
pub fn list_body(page: ResultPage) -> serde_json::Value {
    let list = ResultList {
        object: "list",
        first_line: page.data.first().map(|i| i.line),
        last_line: page.data.last().map(|i| i.line),
        has_more: page.has_more,
        data: page.data,
    };
    serde_json::to_value(list).unwrap_or_default()
}

#[utoipa::path(get, path = "/v1/batches/{id}/results/{custom_id}", tag = "batches", operation_id = "retrieveBatchResult",
    params(("id" = String, Path, description = "The batch's id (`batch_…`)"), ("custom_id" = String, Path, description = "The request's `custom_id`")),
    description = "batch-runner extension: one request of the batch: `{line, custom_id, status, result, input, timing: {attempts, retries, started_at_ms, latency_ms} | null}`.",
    responses((status = 200, description = "The request's input and result.", body = Object),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such batch of the caller's, or no result for that custom_id (yet).", body = crate::error::ErrorBody)))]
pub async fn retrieve(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path((id, custom_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let batch = owned(&app, &owner, &id).await?;
    let wanted = custom_id.clone();
    let found = read(&app, &batch, move |source| source.find(&wanted))
        .await?
        .flatten();
    detail_body(found, &custom_id)
}

/// One request as the API shows it; none is a 404 naming the `custom_id`.
pub fn detail_body(
    found: Option<batch_job::RequestDetail>,
    custom_id: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(detail) = found else {
        return Err(ApiError::not_found("Result", custom_id).param("custom_id"));
    };
    serde_json::to_value(detail)
        .map(Json)
        .map_err(|e| ApiError::internal("cannot write the result", e))
}

/// The failures by code as the API lists them.
pub fn errors_body(data: Vec<batch_job::ErrorCount>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"object": "list", "data": data}))
}

/// How many error codes `/errors` lists at most.
pub const TOP_CODES: usize = 50;

#[utoipa::path(get, path = "/v1/batches/{id}/errors", tag = "batches", operation_id = "listBatchErrors",
    params(("id" = String, Path, description = "The batch's id (`batch_…`)")),
    description = "batch-runner extension: the batch's failed requests by error code, most frequent first: `{object: \"list\", data: [{code, count, sample, sample_custom_id}]}` (expired and cancelled requests are not failures here).",
    responses((status = 200, description = "The failures by code.", body = Object),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such batch of the caller's.", body = crate::error::ErrorBody)))]
pub async fn errors(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let batch = owned(&app, &owner, &id).await?;
    let data = read(&app, &batch, |source| source.errors(TOP_CODES))
        .await?
        .unwrap_or_default();
    Ok(errors_body(data))
}

/// Answers `ask` from the batch's results on a blocking thread; `None` when it has none yet.
async fn read<T: Send + 'static>(
    app: &AppState,
    batch: &BatchRow,
    ask: impl FnOnce(&dyn ResultSource) -> std::io::Result<T> + Send + 'static,
) -> Result<Option<T>, ApiError> {
    let failed = |e: &dyn std::fmt::Display| ApiError::internal("cannot read the results", e);
    let source = match source(app, batch).await {
        Ok(source) => source,
        Err(e) => return Err(failed(&e)),
    };
    let Some(source) = source else {
        return Ok(None);
    };
    blocking(move || match source {
        Source::Live(live) => ask(&live).map(Some),
        Source::Indexed(files) => ask(&files.open()?).map(Some),
    })
    .await
}

/// Runs `read` (file reads) on a blocking thread; a failure is a 500 saying the results could
/// not be read.
pub async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let failed = |e: &dyn std::fmt::Display| ApiError::internal("cannot read the results", e);
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e| failed(&e))
}

enum Source {
    Live(LiveResults),
    Indexed(IndexedFiles),
}

/// Where the batch's results are: its result files with their index once it has them, else
/// its worker's job state (none before the batch has run).
async fn source(app: &AppState, batch: &BatchRow) -> Result<Option<Source>, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let result_files = [&batch.output_file_id, &batch.error_file_id];
    let mut blobs = Vec::new();
    for id in result_files {
        let row = match id {
            Some(id) => app
                .store
                .file(&batch.owner, id)
                .await
                .map_err(|e| text(&e))?,
            None => None,
        };
        blobs.push(row.map(|f| f.blob));
    }
    let input_blob = Some(batch.input_blob.clone());
    let cache = &app.cache_dir;
    let copy = |blob: Option<String>| async move {
        match blob {
            Some(b) => local_file(&app.blobs, &b, &cache.join(&b)).await,
            None => Ok(None),
        }
    };
    let Some(first) = blobs.iter().flatten().next().cloned() else {
        let work = crate::BatchWork::new(&app.work_dir, &batch.id);
        if !work.state().exists() {
            return Ok(None);
        }
        let input = match &app.blobs {
            Blobs::Local(dir) => dir.join(&batch.input_blob),
            Blobs::Object(_) => work.input(),
        };
        let max_line = batch_job::DEFAULT_MAX_LINE_BYTES;
        return Ok(Some(Source::Live(LiveResults::new(
            &work.state(),
            Some(input),
            max_line,
        ))));
    };
    std::fs::create_dir_all(cache).map_err(|e| text(&e))?;
    let files = IndexedFiles {
        index: PathBuf::new(),
        output: copy(blobs[0].clone()).await?,
        errors: copy(blobs[1].clone()).await?,
        input: copy(input_blob).await?,
    };
    let name = index_blob(&first);
    let index = match local_file(&app.blobs, &name, &cache.join(&name)).await? {
        Some(path) if path.exists() => path,
        _ => build_index(app, &files, &name).await?,
    };
    Ok(Some(Source::Indexed(IndexedFiles { index, ..files })))
}

/// A local path with the content of blob `name`, `None` when it is gone (a deleted file). In
/// object storage, a copy already in `cache` is used as it is (stored blobs never change, and a
/// copy is renamed into place only once whole), so a page costs no request to the store.
async fn local_file(
    blobs: &Blobs,
    name: &str,
    cache: &std::path::Path,
) -> Result<Option<PathBuf>, String> {
    match blobs {
        Blobs::Local(dir) => Ok(Some(dir.join(name))),
        Blobs::Object(_) if cache.exists() => Ok(Some(cache.to_owned())),
        Blobs::Object(dir) => match dir.size(name).await {
            Ok(None) => Ok(None),
            Ok(Some(_)) => blobs
                .local_copy(name, cache)
                .await
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// Builds a batch's results index from its files (no timings: its job state is gone), and
/// stores it for the next call.
async fn build_index(app: &AppState, files: &IndexedFiles, name: &str) -> Result<PathBuf, String> {
    let Some(input) = files.input.clone() else {
        return Err("the batch's input file is gone: its results cannot be indexed".into());
    };
    let to = app.cache_dir.join(format!("{name}.built"));
    let (output, errors, at) = (files.output.clone(), files.errors.clone(), to.clone());
    tokio::task::spawn_blocking(move || {
        let sources = IndexSources {
            input: &input,
            output: output.as_deref(),
            errors: errors.as_deref(),
            timings: None,
            max_line_bytes: batch_job::DEFAULT_MAX_LINE_BYTES,
        };
        batch_job::build_results_index(&sources, &at)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot index the batch's results: {e}"))?;
    if let Err(e) = app.blobs.store_file(&to, name).await {
        tracing::warn!("cannot store the results index {name}: {e}");
    }
    Ok(to)
}

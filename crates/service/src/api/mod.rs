//! The HTTP API: OpenAI's Files and Batches routes, plus `/health`, `/metrics` and
//! `/openapi.json`. Every error is an OpenAI error body (see [`crate::error`]).

mod batch_list;
mod batches;
mod files;
mod inline;
mod ops;
pub(crate) mod range;
pub(crate) mod results;
mod usage;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::auth::Keys;
use crate::blobs::Blobs;
use crate::error::ApiError;
use crate::store::Store;
use crate::window::WindowBounds;

pub use ops::ApiDoc;

/// Settings of the API itself.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest upload accepted; larger ones get 413.
    pub max_upload_bytes: u64,
    /// The `completion_window` values accepted besides `24h`.
    pub windows: WindowBounds,
    /// Endpoints a batch may target beyond the built-in ones.
    pub extra_endpoints: Vec<String>,
    /// How long a `purpose=batch` upload is kept when it names no `expires_after` (OpenAI: 30
    /// days); `None` keeps it until deleted.
    pub batch_file_ttl: Option<u64>,
    /// What a batch whose window cannot be met on the measured throughput gets at create.
    pub admission: crate::planning::Admission,
    /// The last part of a window kept spare by admission and `at_risk` (a fraction).
    pub admission_margin: f64,
    /// Batches one owner may create per hour (429 past it).
    pub owner_max_batches_per_hour: Option<u32>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 512 * 1024 * 1024,
            windows: WindowBounds::default(),
            extra_endpoints: Vec::new(),
            batch_file_ttl: Some(30 * 86400),
            admission: crate::planning::Admission::default(),
            admission_margin: 0.1,
            owner_max_batches_per_hour: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub blobs: Blobs,
    pub keys: Arc<Keys>,
    pub config: Arc<ApiConfig>,
    /// Wakes the scheduler when a batch is created or cancelled.
    pub wake: Arc<Notify>,
    /// Where workers keep each batch's job state (`WORK_DIR/BATCH_ID/state`).
    pub work_dir: PathBuf,
    /// Local copies of result files kept in object storage, for the results API.
    pub cache_dir: PathBuf,
    /// Each owner's webhook endpoint (a batch's own URL is signed with its owner's secret).
    pub endpoints: crate::webhooks::Endpoints,
    pub webhook_counters: Arc<crate::webhooks::deliver::Counters>,
}

impl AppState {
    /// Removes the content of deleted files in the background, now rather than at the
    /// sweeper's next round (a file a running batch still reads goes when the batch ends).
    fn collect_soon(&self) {
        let (store, blobs) = (self.store.clone(), self.blobs.clone());
        tokio::spawn(async move { crate::sweeper::collect(&store, &blobs).await });
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        // Uploads are streamed and limited by `max_upload_bytes` with a proper 413; JSON bodies
        // keep axum's 2 MB default.
        .route(
            "/files",
            post(files::create)
                .layer(DefaultBodyLimit::disable())
                .get(files::list),
        )
        .route("/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/files/{id}/content", get(files::content))
        .route("/batches", post(batches::create).get(batch_list::list))
        .route(
            "/batches/{id}",
            get(batches::retrieve).delete(batch_list::delete),
        )
        .route("/batches/{id}/cancel", post(batches::cancel))
        .route(
            "/batches/{id}/partial_results",
            get(batches::partial_results),
        )
        .route("/batches/{id}/results", get(results::list))
        .route("/batches/{id}/results/{custom_id}", get(results::retrieve))
        .route("/batches/{id}/errors", get(results::errors))
        .route("/x/usage", get(usage::usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn(remember_route));
    Router::new()
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .merge(crate::ui::router(crate::ui::UiMode::Service {
            keyless: state.keys.is_empty(),
        }))
        .route_layer(middleware::from_fn(remember_route))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(header_limit))
        .layer(middleware::from_fn(request_log))
        .with_state(state)
}

/// Request headers accepted in all (names and values); more is a 431 with an OpenAI error body.
/// (Headers past the HTTP server's own buffer, about 400 KB, get its bare 431.)
const MAX_HEADER_BYTES: usize = 32 * 1024;

async fn header_limit(request: Request, next: Next) -> Response {
    let bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return ApiError::headers_too_large(format!(
            "The request headers take {bytes} bytes; this service accepts up to \
             {MAX_HEADER_BYTES}"
        ))
        .into_response();
    }
    next.run(request).await
}

/// Gives every request an id, sent back as `x-request-id` (a client can quote it to the
/// operator) and attached to every log line written while the request is handled, and writes
/// one access-log line per request: method, route (the template, so ids do not scatter it),
/// status and latency. Probes of `/health` and `/metrics` log at debug, server errors at warn.
async fn request_log(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = crate::ids::request_id();
    let method = request.method().clone();
    let span = tracing::info_span!("request", id = %id);
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("(no route)", |p| p.as_str());
    let status = response.status().as_u16();
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(%method, route, status, latency_ms, "request failed");
        } else if matches!(route, "/health" | "/metrics") {
            tracing::debug!(%method, route, status, latency_ms, "request");
        } else {
            tracing::info!(%method, route, status, latency_ms, "request");
        }
    });
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Hands the matched route template to [`request_log`], which runs outside the router and so
/// sees only the raw path.
async fn remember_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

async fn authenticate(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match app.keys.identify(header) {
        Ok((owner, operator)) => {
            request.extensions_mut().insert(owner);
            request.extensions_mut().insert(operator);
            next.run(request).await
        }
        Err(message) => ApiError::unauthorized(message).into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::route_not_found(request.method().as_str(), request.uri().path())
}

/// A known route with another method: 405 (axum adds the `Allow` header).
async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::method_not_allowed(request.method().as_str(), request.uri().path())
}

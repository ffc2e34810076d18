//! `run --ui`: the dashboard's batch page for one `run` job, read-only and without keys (bound
//! to loopback unless the user names another address). The page reads the same routes as on
//! the service, for the one batch `job`: the batch object made from the job's live counters,
//! and the results API over its state directory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use batch_job::{LiveResults, ResultSource, Stats};
use tokio::net::TcpListener;

use super::{UiMode, router as assets};
use crate::api::results::{ResultsQuery, TOP_CODES, blocking, detail_body, errors_body, list_body};
use crate::error::ApiError;
use crate::worker::report::{LatencyBase, snapshot};

/// The id of the one batch the page shows.
pub const JOB_ID: &str = "job";
/// How often a point is added to the throughput chart.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// What the page shows of the job besides its counters.
pub struct RunView {
    /// Shown as the page's title (the job's output).
    pub title: String,
    pub state_dir: PathBuf,
    /// The job's input when it is a regular file (a stream cannot be read again).
    pub input: Option<PathBuf>,
    pub max_line_bytes: usize,
}

/// The job as it goes: set by the command as the job starts and ends.
#[derive(Default)]
pub struct JobState {
    stats: Option<(Arc<Stats>, SystemTime)>,
    ended: Option<(&'static str, i64)>,
    history: Vec<[u64; 2]>,
}

#[derive(Clone, Default)]
pub struct LiveJob(Arc<Mutex<JobState>>);

impl LiveJob {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job's counters exist: it runs.
    pub fn started(&self, stats: Arc<Stats>) {
        self.lock().stats = Some((stats, SystemTime::now()));
    }

    /// The job ended with `status` (a batch status: completed, expired, cancelled, failed; or
    /// interrupted: stopped to be resumed).
    pub fn ended(&self, status: &'static str) {
        let mut job = self.lock();
        job.ended = Some((status, crate::store::now_secs()));
        sample(&mut job);
    }
}

fn sample(job: &mut JobState) {
    if let Some((stats, _)) = &job.stats {
        let done = stats.done();
        crate::model::add_history_point(&mut job.history, crate::store::now_secs() as u64, done);
    }
}

#[derive(Clone)]
struct ViewState {
    view: Arc<RunView>,
    job: LiveJob,
    created_at: i64,
}

/// Serves the page on `listener` until the process ends.
pub async fn serve(listener: TcpListener, view: RunView, job: LiveJob) -> std::io::Result<()> {
    let sampler = job.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let mut job = sampler.lock();
            if job.ended.is_none() {
                sample(&mut job);
            }
        }
    });
    let state = ViewState {
        view: Arc::new(view),
        job,
        created_at: crate::store::now_secs(),
    };
    let title = state.view.title.clone();
    let app = Router::new()
        .route("/v1/batches/{id}", get(batch))
        .route("/v1/batches/{id}/results", get(results))
        .route("/v1/batches/{id}/results/{custom_id}", get(result))
        .route("/v1/batches/{id}/errors", get(errors))
        .with_state(state)
        .merge(assets(UiMode::Run {
            batch: JOB_ID.into(),
            title,
        }));
    axum::serve(listener, app).await
}

fn the_job(id: &str) -> Result<(), ApiError> {
    if id == JOB_ID {
        Ok(())
    } else {
        Err(ApiError::not_found("Batch", id))
    }
}

async fn batch(
    State(s): State<ViewState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    the_job(&id)?;
    let job = s.job.lock();
    let mut batch = serde_json::json!({
        "id": JOB_ID,
        "object": "batch",
        "status": "validating",
        "created_at": s.created_at,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": {"title": s.view.title},
    });
    if let Some((stats, started)) = &job.stats {
        let (counts, mut progress) = snapshot(stats, *started, LatencyBase::default());
        progress.history = job.history.clone();
        let started_at = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        batch["status"] = "in_progress".into();
        batch["in_progress_at"] = started_at.into();
        batch["request_counts"] = serde_json::json!({
            "total": Stats::load(&stats.planned),
            "completed": counts.completed,
            "failed": counts.failed,
        });
        batch["usage"] = serde_json::json!({
            "input_tokens": counts.input_tokens,
            "output_tokens": counts.output_tokens,
        });
        batch["x_batch_runner"] = serde_json::to_value(progress).unwrap_or_default();
    }
    if let Some((status, at)) = job.ended {
        batch["status"] = status.into();
        batch[format!("{status}_at")] = at.into();
    }
    Ok(Json(batch))
}

/// Answers `ask` from the job's spool on a blocking thread.
async fn read<T: Send + 'static>(
    view: &Arc<RunView>,
    ask: impl FnOnce(&dyn ResultSource) -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let view = view.clone();
    blocking(move || {
        let live = LiveResults::new(&view.state_dir, view.input.clone(), view.max_line_bytes);
        ask(&live)
    })
    .await
}

async fn results(
    State(s): State<ViewState>,
    Path(id): Path<String>,
    query: Result<Query<ResultsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    the_job(&id)?;
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let ask = q.ask()?;
    let page = read(&s.view, move |source| ask.answer(source)).await?;
    Ok(Json(list_body(page)))
}

async fn result(
    State(s): State<ViewState>,
    Path((id, custom_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    the_job(&id)?;
    let wanted = custom_id.clone();
    let found = read(&s.view, move |source| source.find(&wanted)).await?;
    detail_body(found, &custom_id)
}

async fn errors(
    State(s): State<ViewState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    the_job(&id)?;
    Ok(errors_body(
        read(&s.view, |source| source.errors(TOP_CODES)).await?,
    ))
}

//! The batch service: the OpenAI Files + Batches API (`api`), the metadata store (`store`),
//! file contents (`blobs`), the scheduler that runs one worker process per batch
//! (`scheduler`, `worker`), and retention (`sweeper`).

pub mod api;
pub mod auth;
pub mod blobs;
pub mod data_dir;
pub mod error;
pub mod fair_share;
pub mod http_server;
pub mod ids;
pub mod model;
pub mod planning;
pub mod scheduler;
pub mod settings;
pub mod status;
pub mod store;
pub mod sweeper;
pub mod ui;
pub mod webhooks;
pub mod window;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::api::{ApiConfig, AppState};
use crate::auth::Keys;
use crate::blobs::Blobs;
use crate::scheduler::SchedulerConfig;
use crate::settings::WorkerSettings;
use crate::store::Store;

pub use data_dir::{BatchWork, DataDir};

pub struct ServeConfig {
    pub exec: Execution,
    pub api: ApiConfig,
    pub keys: Keys,
    pub sweep_every: Duration,
    /// Connection cap and timeouts of the HTTP server.
    pub limits: http_server::Limits,
    /// Where batch events are sent (see [`webhooks`]), the file already read.
    pub webhooks: webhooks::Endpoints,
}

/// The database, storage, engines and workers of a `serve` or a `worker-pool`.
pub struct Execution {
    pub data_dir: PathBuf,
    pub worker: WorkerSettings,
    pub scheduler: SchedulerConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Storage(String),
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> ServeError {
    let context = context.to_owned();
    move |source| ServeError::Io { context, source }
}

/// What a process that runs batches sets up: its work directory, the store (migrated), the
/// blob store, and the settings file its workers read.
async fn prepare(exec: &Execution) -> Result<(Store, Blobs), ServeError> {
    let dirs = DataDir {
        root: exec.data_dir.clone(),
    };
    std::fs::create_dir_all(dirs.work()).map_err(io("cannot create the work directory"))?;
    let blobs = exec
        .worker
        .blobs(&exec.data_dir)
        .map_err(ServeError::Storage)?;
    let store = Store::open(&exec.worker.database, true).await?;
    exec.worker
        .store(&exec.data_dir)
        .map_err(io("cannot write the worker settings"))?;
    Ok((store, blobs))
}

/// Runs the scheduler (when it may run any batch) until `stop` turns true.
fn start_scheduler(
    store: &Store,
    blobs: &Blobs,
    config: SchedulerConfig,
    wake: Arc<Notify>,
) -> (watch::Sender<bool>, Option<tokio::task::JoinHandle<()>>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = (config.max_concurrent > 0).then(|| {
        let (store, blobs) = (store.clone(), blobs.clone());
        tokio::spawn(scheduler::run(store, blobs, config, wake, stop_rx))
    });
    (stop_tx, task)
}

/// Serves the API on `listener` and runs the scheduler and the sweeper until `shutdown`
/// resolves; then stops the workers (they checkpoint and give their batches back).
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (store, blobs) = prepare(&config.exec).await?;
    sweeper::remove_stale_uploads(&blobs, Duration::ZERO);
    let wake = Arc::new(Notify::new());
    let (stop, scheduler) = start_scheduler(&store, &blobs, config.exec.scheduler, wake.clone());
    let data_dir = DataDir {
        root: config.exec.data_dir.clone(),
    };
    let sweeper = tokio::spawn(sweeper::run(
        store.clone(),
        blobs.clone(),
        config.sweep_every,
        (data_dir.logs(), data_dir.cache()),
    ));
    let endpoints = config.webhooks;
    let webhook_counters = Arc::new(webhooks::deliver::Counters::default());
    let deliverer = tokio::spawn(webhooks::deliver::run(
        store.clone(),
        endpoints.clone(),
        webhook_counters.clone(),
        stop.subscribe(),
    ));
    let reloader = tokio::spawn(reload_on_sighup(endpoints.clone()));
    let state = AppState {
        store,
        blobs,
        keys: Arc::new(config.keys),
        config: Arc::new(config.api),
        wake,
        work_dir: data_dir.work(),
        cache_dir: data_dir.cache(),
        endpoints,
        webhook_counters,
    };
    let served = http_server::serve(listener, api::router(state), config.limits, shutdown)
        .await
        .map_err(io("the HTTP server failed"));
    sweeper.abort();
    reloader.abort();
    let _ = stop.send(true);
    let _ = deliverer.await;
    if let Some(task) = scheduler {
        let _ = task.await;
    }
    served
}

/// Claims and runs batches (no API) until `shutdown` resolves; then stops the workers.
pub async fn run_pool(
    exec: Execution,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (store, blobs) = prepare(&exec).await?;
    tracing::info!(
        "worker pool: up to {} batches at once{}",
        exec.scheduler.max_concurrent,
        match &exec.scheduler.only_models {
            Some(models) => format!(", models {}", models.join(", ")),
            None => String::new(),
        }
    );
    let (stop, scheduler) =
        start_scheduler(&store, &blobs, exec.scheduler, Arc::new(Notify::new()));
    shutdown.await;
    let _ = stop.send(true);
    if let Some(task) = scheduler {
        let _ = task.await;
    }
    Ok(())
}

/// Reads the webhook endpoints again on each SIGHUP.
async fn reload_on_sighup(endpoints: webhooks::Endpoints) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the webhook file is read only at start");
        return;
    };
    while hangups.recv().await.is_some() {
        endpoints.reload();
    }
}

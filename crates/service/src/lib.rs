//! The batch service: the OpenAI Files + Batches API (`api`), the metadata store (`store`),
//! file contents (`blobs`), the scheduler that runs one worker process per batch
//! (`scheduler`, `worker`), and retention (`sweeper`).

pub mod api;
pub mod auth;
pub mod blobs;
pub mod error;
pub mod ids;
pub mod model;
pub mod scheduler;
pub mod settings;
pub mod store;
pub mod sweeper;
pub mod window;
pub mod worker;

use std::path::{Path, PathBuf};
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

/// Where everything of one service lives under `--data-dir`.
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn files(&self) -> PathBuf {
        self.root.join("files")
    }

    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The default SQLite database.
    pub fn default_database(root: &Path) -> String {
        format!("sqlite://{}", root.join("batch-runner.db").display())
    }
}

pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub keys: Keys,
    pub worker: WorkerSettings,
    pub scheduler: SchedulerConfig,
    pub sweep_every: Duration,
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
}

/// Serves the API on `listener` and runs the scheduler and the sweeper until `shutdown`
/// resolves; then stops the workers (they checkpoint and give their batches back).
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let dirs = DataDir {
        root: config.data_dir.clone(),
    };
    let io = |context: &str| {
        let context = context.to_owned();
        move |source| ServeError::Io { context, source }
    };
    std::fs::create_dir_all(dirs.work()).map_err(io("cannot create the work directory"))?;
    let blobs = Blobs::open(dirs.files()).map_err(io("cannot create the files directory"))?;
    let store = Store::open(&config.worker.database, true).await?;
    config
        .worker
        .store(&config.data_dir)
        .map_err(io("cannot write the worker settings"))?;

    let wake = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = tokio::spawn(scheduler::run(
        store.clone(),
        config.scheduler,
        wake.clone(),
        stop_rx,
    ));
    let sweeper = tokio::spawn(sweeper::run(
        store.clone(),
        blobs.clone(),
        config.sweep_every,
    ));
    let state = AppState {
        store,
        blobs,
        keys: Arc::new(config.keys),
        config: Arc::new(config.api),
        wake,
        work_dir: dirs.work(),
    };
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(io("the HTTP server failed"));
    sweeper.abort();
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    served
}

//! `batch-runner worker`: runs one batch of the service (started by `serve`'s scheduler).
//! Exit codes: 0 the batch ended and is recorded; 75 the worker gave the batch back (stopped,
//! or another worker took it over); 3 it failed (the scheduler counts a crash and retries).

use std::io::Read;

use tracing::Instrument;

use batch_job::{StopReason, StopSignal};
use batch_service::DataDir;
use batch_service::settings::WorkerSettings;
use batch_service::store::Store;
use batch_service::worker::{Worker, WorkerEnd};

use super::{Exit, Signals, runtime};
use crate::cli::WorkerArgs;

pub fn run(args: WorkerArgs) -> Exit {
    let settings = match WorkerSettings::load(&args.data_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    };
    // Every line this worker logs, from its own tasks and the job's, names the batch.
    let span = tracing::info_span!("batch", id = %args.batch, fence = args.fence);
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(
            async {
                let dirs = DataDir {
                    root: args.data_dir.clone(),
                };
                let store = Store::open(&settings.database, false)
                    .await
                    .map_err(|e| e.to_string())?;
                let blobs = settings.blobs(&args.data_dir)?;
                let stop = StopSignal::new();
                let poke = std::sync::Arc::new(tokio::sync::Notify::new());
                watch_stops(&stop, args.lifeline_stdin, &poke);
                tracing::info!("worker starting");
                let worker = Worker {
                    store,
                    blobs,
                    work_root: dirs.work(),
                    log_root: dirs.logs(),
                    settings,
                    batch: args.batch.clone(),
                    fence: args.fence,
                    poke,
                };
                worker.run(stop).await.map_err(|e| e.to_string())
            }
            .instrument(span.clone()),
        )
    });
    match result {
        Ok(WorkerEnd::Done) => Exit::Success,
        Ok(WorkerEnd::GaveUp) => Exit::Interrupted,
        Err(e) => {
            span.in_scope(|| tracing::error!("{e}"));
            Exit::Runtime
        }
    }
}

/// A signal, or the end of stdin with `--lifeline-stdin`, stops the batch resumably; a byte on
/// that stdin is the service's poke (look at the batch's status now).
fn watch_stops(stop: &StopSignal, lifeline: bool, poke: &std::sync::Arc<tokio::sync::Notify>) {
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let mut signals = Signals::new();
        loop {
            signals.recv().await;
            on_signal.request(StopReason::Interrupted);
        }
    });
    if lifeline {
        let on_eof = stop.clone();
        let poke = poke.clone();
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let mut bytes = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n @ 1..) = stdin.read(&mut bytes) {
                if bytes[..n].contains(&batch_service::worker::POKE) {
                    poke.notify_one();
                }
            }
            handle.spawn(async move {
                tracing::warn!("the service went away: stopping, the batch resumes later");
                on_eof.request(StopReason::Interrupted);
            });
        });
    }
}

//! Keeping a launched engine alive while the job runs.
//!
//! When the engine exits, the dispatcher stops sending to it (requests that have no other engine
//! wait rather than burn their retries), and the engine is started again on the same port. When
//! `--max-engine-restarts` is used up, the job stops resumable, with the engine's last log lines
//! in the error.

use std::sync::Arc;
use tracing::Instrument;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::dispatcher::Shared;
use crate::launch::Launched;
use crate::run::stop::StopReason;

/// The launched engine is always the first engine of the routes it serves.
const ENGINE: usize = 0;

pub struct Supervisor {
    finish: oneshot::Sender<()>,
    task: JoinHandle<(Option<Launched>, Option<String>)>,
}

impl Supervisor {
    pub fn start(engine: Launched, shared: Arc<Shared>, max_restarts: u32) -> Self {
        let (finish, finished) = oneshot::channel();
        let task =
            tokio::spawn(supervise(engine, shared, max_restarts, finished).in_current_span());
        Self { finish, task }
    }

    /// Stops supervising and shuts the engine down. Returns why the job had to stop, if the
    /// engine could not be kept alive.
    pub async fn finish(self) -> Option<String> {
        let _ = self.finish.send(());
        let (engine, gave_up) = self
            .task
            .await
            .unwrap_or_else(|e| (None, Some(format!("the engine supervisor failed: {e}"))));
        if let Some(engine) = engine {
            engine.stop().await;
        }
        gave_up
    }
}

async fn supervise(
    mut engine: Launched,
    shared: Arc<Shared>,
    max_restarts: u32,
    mut finished: oneshot::Receiver<()>,
) -> (Option<Launched>, Option<String>) {
    let mut restarts = 0;
    loop {
        let how = tokio::select! {
            how = engine.exited() => how,
            _ = &mut finished => return (Some(engine), None),
        };
        shared.routes.suspend_launched(ENGINE);
        if restarts >= max_restarts {
            let message = format!(
                "the engine exited ({how}) and --max-engine-restarts ({max_restarts}) is used up; \
                 the job stopped and can be resumed. Last lines of the engine's log:\n{}",
                engine.log_tail()
            );
            shared.stop.abort(StopReason::Interrupted);
            return (Some(engine), Some(message));
        }
        restarts += 1;
        tracing::warn!("the engine exited ({how}); restarting it ({restarts} of {max_restarts})");
        let restarted = tokio::select! {
            r = engine.restart() => r,
            _ = &mut finished => return (Some(engine), None),
        };
        match restarted {
            Ok(()) => shared.routes.resume_launched(ENGINE),
            Err(e) => {
                shared.stop.abort(StopReason::Interrupted);
                return (None, Some(format!("restarting the engine failed: {e}")));
            }
        }
    }
}

//! Claims unfinished batches and runs one worker process for each, up to a limit.
//!
//! A claim is a compare-and-swap on the batch's fence and lease (see [`Store::claim`]); the
//! worker renews the lease while it runs. The worker is started from a command template
//! (default `{exe} worker …`, or `docker run …`, `kubectl …`) with `sh -c`; its stdin is a pipe
//! from this process, which the worker watches: when the service goes away, the pipe closes and
//! the worker checkpoints, gives the lease back and exits, so a restarted service resumes the
//! batch at once.
//!
//! A worker that exits with a code other than 0 (done) or 75 (gave the batch up) crashed: the
//! crash is counted, the lease released, and the batch claimed again (resuming from its
//! checkpoint) until `max_crashes`, when it fails with the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, watch};

use crate::BatchWork;
use crate::blobs::Blobs;
use crate::fair_share::{self, Shares, Turns};
use crate::store::{Store, now_ms};

/// The default worker command. `exec` makes the worker the process this one started (not a
/// child of a shell), so that stopping or killing it reaches the worker itself.
pub const DEFAULT_TEMPLATE: &str =
    "exec {exe} worker --data-dir {data_dir} --batch {batch} --fence {fence} --lifeline-stdin";
/// The exit code of a worker that gave its batch up without failing.
pub const GAVE_UP: i32 = batch_job::RESUMABLE_EXIT as i32;
/// Lines of a crashed worker's log quoted in the batch's error.
const LOG_TAIL_LINES: usize = 5;
/// How often to look for failed batches whose results were never published.
const REPUBLISH_EVERY: Duration = Duration::from_secs(60);
/// A failed batch without results whose job state is on another host is published from here
/// only after this long: the scheduler that failed it publishes its finished results within
/// seconds, and must not be beaten by one that has none of them.
const STRANDED_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub template: String,
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub work_root: PathBuf,
    pub max_concurrent: usize,
    pub max_crashes: i64,
    pub lease: Duration,
    /// How often to look for work when nothing wakes the scheduler.
    pub poll: Duration,
    /// Who claims (for the lease's record): host and process.
    pub holder: String,
    /// Given to workers as `BATCH_RUNNER_ENGINE_API_KEY`.
    pub engine_api_key: Option<String>,
    /// How long workers get to checkpoint and exit when the service stops.
    pub stop_grace: Duration,
    /// Claim only batches of these models (a pool without a default engine); `None`: any.
    pub only_models: Option<Vec<String>>,
    /// How owners share the worker slots.
    pub shares: Shares,
}

struct Running {
    child: Child,
    fence: i64,
    owner: String,
    started: tokio::time::Instant,
    /// Told to give its batch back so that a waiting owner gets the slot.
    yielded: bool,
    /// Held open while the worker should run; dropped, it tells the worker to stop.
    lifeline: Option<ChildStdin>,
    /// The worker was told its batch was cancelled.
    poked: bool,
}

/// Runs until `shutdown` turns true, then stops the workers and waits for them.
pub async fn run(
    store: Store,
    blobs: Blobs,
    config: SchedulerConfig,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut turns = Turns::default();
    let mut sampler = crate::planning::Sampler::default();
    let mut stranded_check = tokio::time::Instant::now();
    publish_stranded(&store, &blobs, &config).await;
    loop {
        if stranded_check.elapsed() >= REPUBLISH_EVERY {
            stranded_check = tokio::time::Instant::now();
            publish_stranded(&store, &blobs, &config).await;
        }
        reap(&store, &blobs, &config, &mut running).await;
        poke_cancelled(&store, &mut running).await;
        claim(&store, &config, &mut running, &mut turns).await;
        sampler.sample(&store).await;
        tokio::select! {
            () = wake.notified() => {}
            // A worker that exits frees its slot for the next batch at once, not at the next
            // poll (with batches ending together, the engine would wait for it).
            () = any_exit(&mut running) => {}
            () = tokio::time::sleep(config.poll) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    stop_all(&store, &config, running).await;
}

/// Returns once one of the workers has exited (never when none runs); `reap` then sees it.
async fn any_exit(running: &mut HashMap<String, Running>) {
    if running.is_empty() {
        return std::future::pending().await;
    }
    // `Child::wait` is cancel-safe: the other workers are waited for again next time.
    let waits = running.values_mut().map(|w| Box::pin(w.child.wait()));
    let _ = futures_util::future::select_all(waits).await;
}

/// Notices workers that exited.
async fn reap(
    store: &Store,
    blobs: &Blobs,
    config: &SchedulerConfig,
    running: &mut HashMap<String, Running>,
) {
    let mut exited = Vec::new();
    for (id, worker) in running.iter_mut() {
        match worker.child.try_wait() {
            Ok(Some(status)) => exited.push((id.clone(), worker.fence, status)),
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot check the worker of {id}: {e}"),
        }
    }
    for (id, fence, status) in exited {
        running.remove(&id);
        match status.code() {
            Some(0) => tracing::info!("batch {id}: worker finished"),
            Some(GAVE_UP) => {
                let _ = store.release(&id, fence).await;
            }
            _ => {
                let log = BatchWork::new(&config.work_root, &id).log();
                let cause = describe(status);
                let detail = format!("{cause}; {}", log_tail(&log));
                tracing::warn!("batch {id}: the worker died ({detail})");
                match store
                    .record_crash(&id, fence, config.max_crashes, &cause, &detail)
                    .await
                {
                    Ok(true) => {
                        tracing::error!(
                            "batch {id} failed: its worker died {} times",
                            config.max_crashes
                        );
                        // What it finished is the user's: publish it.
                        if let Err(e) =
                            crate::worker::publish_failed(store, blobs, &config.work_root, &id)
                                .await
                        {
                            tracing::error!("cannot publish the results of failed batch {id}: {e}");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot record the crash of {id}'s worker: {e}"),
                }
            }
        }
    }
}

/// Publishes what failed batches finished when that did not happen when they failed (the
/// service died in between): their results are the user's.
async fn publish_stranded(store: &Store, blobs: &Blobs, config: &SchedulerConfig) {
    let ids = match store.failed_without_results().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!("cannot look for failed batches without results: {e}");
            return;
        }
    };
    let now = crate::store::now_secs();
    for (id, failed_at) in ids {
        // The batch's work directory (its job state, what finished) is on the host whose
        // scheduler ran its worker last, until the results are published.
        let here = BatchWork::new(&config.work_root, &id).dir().exists();
        if !here && now - failed_at < STRANDED_AFTER.as_secs() as i64 {
            continue;
        }
        tracing::info!("batch {id} failed without its results published: publishing them now");
        if let Err(e) = crate::worker::publish_failed(store, blobs, &config.work_root, &id).await {
            tracing::error!("cannot publish the results of failed batch {id}: {e}");
        }
    }
}

/// Pokes the workers of batches cancelled since they started (a byte on their lifeline), so
/// they stop sending now instead of at their next report.
async fn poke_cancelled(store: &Store, running: &mut HashMap<String, Running>) {
    use tokio::io::AsyncWriteExt;
    let unpoked: Vec<&str> = running
        .iter()
        .filter(|(_, w)| !w.poked)
        .map(|(id, _)| id.as_str())
        .collect();
    let cancelled = match store.cancelling_among(&unpoked).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!("cannot look for cancelled batches: {e}");
            return;
        }
    };
    for id in cancelled {
        let Some(worker) = running.get_mut(&id) else {
            continue;
        };
        worker.poked = true;
        if let Some(lifeline) = &mut worker.lifeline {
            let _ = lifeline.write_all(&[crate::worker::POKE]).await;
            let _ = lifeline.flush().await;
        }
    }
}

/// Claims batches while there is room and starts their workers. A cancelled batch does not
/// wait for room: its worker only writes the cancellation and ends.
async fn claim(
    store: &Store,
    config: &SchedulerConfig,
    running: &mut HashMap<String, Running>,
    turns: &mut Turns,
) {
    claim_from(store, config, running, turns, true).await;
    claim_from(store, config, running, turns, false).await;
}

async fn claim_from(
    store: &Store,
    config: &SchedulerConfig,
    running: &mut HashMap<String, Running>,
    turns: &mut Turns,
    cancels_only: bool,
) {
    let room = if cancels_only {
        CANCELS_AT_ONCE
    } else {
        config.max_concurrent.saturating_sub(running.len())
    };
    if room == 0 {
        if !cancels_only {
            make_room(store, config, running).await;
        }
        return;
    }
    match candidates(store, config, turns, running.len() + room, cancels_only).await {
        Ok(candidates) => {
            for batch in candidates {
                if !cancels_only && running.len() >= config.max_concurrent {
                    break;
                }
                // A worker of ours that froze may have let its lease run out: skip batches we
                // still run.
                if running.contains_key(&batch.id) {
                    continue;
                }
                let started = start(store, config, running, &batch.id, batch.fence, &batch.owner);
                if started.await && !cancels_only {
                    turns.served(&batch.owner);
                }
            }
        }
        Err(e) => tracing::warn!("cannot look for batches to run: {e}"),
    }
}

/// The batches to try, in the order their claims should be tried: a cancel's worker is quick,
/// so cancels go by deadline alone; the rest as the owners' shares say ([`fair_share`]).
async fn candidates(
    store: &Store,
    config: &SchedulerConfig,
    turns: &Turns,
    per_owner: usize,
    cancels_only: bool,
) -> Result<Vec<crate::store::Claimable>, crate::store::StoreError> {
    let now = now_ms();
    let models = config.only_models.as_deref();
    let waiting = store
        .claimable(now, per_owner as i64, models, cancels_only)
        .await?;
    if cancels_only {
        return Ok(waiting);
    }
    let held = store.running_by_owner(now).await?;
    Ok(fair_share::order(waiting, &held, &config.shares, turns))
}

/// With every slot taken: when an owner with batches waiting holds no slot anywhere while an
/// owner of one of this scheduler's workers holds several, that worker gives its batch back
/// (it checkpoints and exits; the batch resumes later), so the waiting owner is not held up by
/// another's flood for longer than a batch's drain. One at a time.
async fn make_room(
    store: &Store,
    config: &SchedulerConfig,
    running: &mut HashMap<String, Running>,
) {
    if running.values().any(|w| w.yielded) {
        return;
    }
    let now = now_ms();
    let models = config.only_models.as_deref();
    let (waiting, held) = match tokio::try_join!(
        store.claimable(now, 1, models, false),
        store.running_by_owner(now)
    ) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("cannot look for batches to run: {e}");
            return;
        }
    };
    let holds = |owner: &str| held.get(owner).copied().unwrap_or(0);
    let Some(starved) = waiting.iter().find(|c| holds(&c.owner) == 0) else {
        return;
    };
    let victim = running
        .iter_mut()
        .filter(|(_, w)| !w.poked && holds(&w.owner) >= 2)
        .max_by_key(|(_, w)| (holds(&w.owner), w.started));
    if let Some((id, worker)) = victim {
        tracing::info!(
            "batch {id}: given back for now, so that owner {}'s waiting batch gets a slot \
             (owner {} holds {})",
            starved.owner,
            worker.owner,
            holds(&worker.owner)
        );
        worker.yielded = true;
        worker.lifeline = None;
    }
}

/// Cancelled batches taken at one pass beyond the running limit.
const CANCELS_AT_ONCE: usize = 16;

/// Claims one batch and starts its worker; whether it runs now.
async fn start(
    store: &Store,
    config: &SchedulerConfig,
    running: &mut HashMap<String, Running>,
    id: &str,
    fence: i64,
    owner: &str,
) -> bool {
    let fence = match store.claim(id, fence, &config.holder, config.lease).await {
        Ok(Some(f)) => f,
        Ok(None) => return false, // someone else was quicker
        Err(e) => {
            tracing::warn!("cannot claim {id}: {e}");
            return false;
        }
    };
    match spawn(config, id, fence, owner) {
        Ok(worker) => {
            tracing::info!("batch {id}: worker started (fence {fence})");
            running.insert(id.to_owned(), worker);
            true
        }
        Err(e) => {
            let message = format!("cannot start the worker command: {e}");
            tracing::error!("batch {id}: {message}");
            let cause = "the worker could not be started";
            let _ = store
                .record_crash(id, fence, config.max_crashes, cause, &message)
                .await;
            false
        }
    }
}

/// The worker command for one batch, each value quoted for `sh`.
pub fn command_line(config: &SchedulerConfig, batch: &str, fence: i64) -> String {
    config
        .template
        .replace("{exe}", &shell_quote(&config.exe.to_string_lossy()))
        .replace(
            "{data_dir}",
            &shell_quote(&config.data_dir.to_string_lossy()),
        )
        .replace("{batch}", &shell_quote(batch))
        .replace("{fence}", &fence.to_string())
}

fn spawn(
    config: &SchedulerConfig,
    batch: &str,
    fence: i64,
    owner: &str,
) -> std::io::Result<Running> {
    let work = BatchWork::new(&config.work_root, batch);
    std::fs::create_dir_all(work.dir())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.log())?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(command_line(config, batch, fence))
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    if let Some(key) = &config.engine_api_key {
        command.env(crate::settings::ENGINE_KEY_ENV, key);
    }
    let mut child = command.spawn()?;
    let lifeline = child.stdin.take();
    Ok(Running {
        child,
        fence,
        owner: owner.to_owned(),
        started: tokio::time::Instant::now(),
        yielded: false,
        lifeline,
        poked: false,
    })
}

/// Closes every lifeline, then waits for the workers to checkpoint and exit.
async fn stop_all(store: &Store, config: &SchedulerConfig, running: HashMap<String, Running>) {
    let mut workers: Vec<(String, Running)> = running.into_iter().collect();
    for (_, w) in &mut workers {
        w.lifeline = None;
    }
    // All at once: each worker gets the whole grace, and stopping takes one grace however many
    // run (one after another it took one grace per worker, past what an orchestrator allows).
    let stops = workers.into_iter().map(|(id, mut w)| async move {
        if tokio::time::timeout(config.stop_grace, w.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("batch {id}: the worker did not stop in time; killing it");
            let _ = w.child.kill().await;
        }
        let _ = store.release(&id, w.fence).await;
    });
    futures_util::future::join_all(stops).await;
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        "the worker wrote nothing to its log".into()
    } else {
        format!("last lines of {}: {}", path.display(), tail.join(" | "))
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_gets_quoted_values() {
        let config = SchedulerConfig {
            template: DEFAULT_TEMPLATE.into(),
            exe: "/opt/my tools/batch-runner".into(),
            data_dir: "/data/it's here".into(),
            work_root: "/data/work".into(),
            max_concurrent: 1,
            max_crashes: 1,
            lease: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            holder: "h".into(),
            engine_api_key: None,
            stop_grace: Duration::from_secs(1),
            only_models: None,
            shares: Shares::default(),
        };
        assert_eq!(
            command_line(&config, "batch_1", 7),
            "exec '/opt/my tools/batch-runner' worker --data-dir '/data/it'\\''s here' --batch \
             'batch_1' --fence 7 --lifeline-stdin"
        );
    }
}

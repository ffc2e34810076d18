//! The second stage of a job: the engines started (or launched), the checkpoints, metrics,
//! progress and stop timers running, the feed thread reading the input again while the
//! dispatcher sends, and everything stopped in order once the input ends or the job is stopped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

use batch_format::LineRules;
use batch_format::endpoints::Exchange;
use batch_format::rules::Settled;
use tokio::sync::{mpsc, oneshot};

use super::dispatcher::{Ended, Shared, dispatch};
use super::feed::{Feed, Item};
use super::handling::Handling;
use super::preflight::{self, Preflight, PreflightReport};
use super::prepare::{Names, Ready};
use super::request::Ids;
use super::routes::{self, Route, RoutePlan, Routes};
use super::supervise::Supervisor;
use super::{RunError, RunOptions};
use crate::bitset::BitSet;
use crate::dispatch::{Engines, ProbeResult};
use crate::input::line_models::LineModels;
use crate::input::validate::Validation;
use crate::input::{Blocks, Changed};
use crate::launch::Launched;
use crate::report::metrics::{self, Stats};
use crate::report::model_counts::ModelCounts;
use crate::report::progress::ProgressDisplay;
use crate::report::summary::JobStatus;
use crate::run::stop::{StopReason, StopSignal};
use crate::state::Manifest;
use crate::state::mirror::Mirror;
use crate::state::sink::Sink;
use crate::state::spool::{Positions, Spool, read_index};

/// What the execution stage hands to the delivery stage.
pub struct Executed {
    pub status: JobStatus,
    pub stats: Arc<Stats>,
    /// The spool's checkpointed lengths.
    pub positions: Positions,
    /// The input's fingerprint, recorded with the completion.
    pub fingerprint: String,
    pub mirror: Option<Arc<Mirror>>,
    pub names: Names,
    /// The input's line count.
    pub lines: u64,
    pub preflight: Option<PreflightReport>,
}

/// Runs the job's requests until the input ends or the job stops; the live counters go to
/// `observe` once they exist. (About 110 lines: it owns what it starts around the dispatch, the
/// feed thread, the supervisor, the watchers and [`Beside`], and stops them in this order; the
/// parts that need none of the others' handles are the functions below.)
pub async fn execute(
    options: &RunOptions,
    stop: &StopSignal,
    ready: Ready,
    observe: impl FnOnce(Arc<Stats>),
) -> Result<Executed, RunError> {
    // The two parts used most, by name; the rest are read as `ready.…`.
    let (mut validation, mut opened) = (ready.validation, ready.opened);
    let needed = opened.done.count() < ready.planned;
    let exchange = Exchange::of(validation.settled.as_ref().map_or("", |s| s.url.as_str()));
    if exchange.stores_media() && options.media.is_none() && needed {
        return Err(ready.fresh.abandon(RunError::NoMediaStore));
    }
    let line_models = validation.line_models.take().map(Arc::new);
    let starting = start_engines(options, needed, validation.settled.as_ref(), &line_models);
    let engines_started = tokio::select! {
        started = starting => started,
        // A model can take minutes to load: a stop meanwhile must not wait for it.
        () = stop.stopping() => Err(RunError::StoppedBeforeStart),
    };
    let (routes, launched) = engines_started.map_err(|e| match e {
        RunError::StoppedBeforeStart | RunError::Launch(_) => e,
        // Nothing was done: leave no state behind (but keep a failed engine's log, above).
        e => ready.fresh.abandon(e),
    })?;
    let preflight = match validation.preflight.take() {
        Some(made) => Some(made),
        None if options.preflight && needed => {
            let engines = &routes.all()[0].engines;
            Some(count_tokens(options, stop, engines, &validation, &opened.done).await?)
        }
        None => None,
    };
    let mut stats = Stats::for_job(ready.planned, &opened.counts, opened.manifest.totals);
    if let (Some(lines), Some(settled)) = (&line_models, &validation.settled) {
        let counts = ModelCounts::new(settled.models.clone(), lines.clone());
        count_carried(&mut opened.spool, &counts).map_err(RunError::io(format!(
            "cannot read the spool in {}",
            options.state_dir.display()
        )))?;
        stats.models = Some(counts);
    }
    let stats = Arc::new(stats);
    observe(stats.clone());
    let deadline = options.deadline.resolve(opened.manifest.started_at_ms);
    let ids = Ids::new(opened.manifest.run_tag.clone());
    let sink = open_sink(
        options,
        opened.spool,
        opened.manifest,
        ready.mirror.clone(),
        ready.seeded,
    )
    .await?;
    let beside = Beside::start(options, stop, &sink, &stats, deadline).await?;
    let max_in_flight = routes.dispatch_bound();
    let shared = Arc::new(Shared {
        routes,
        handling: Handling::new(
            exchange,
            options.media.clone(),
            options.file_url_hosts.clone(),
        ),
        stats: stats.clone(),
        sink: sink.clone(),
        stop: stop.clone(),
        ids,
    });
    let (batch_tx, batches) = mpsc::channel(8);
    let rules = LineRules::settled(options.validate.rules.clone(), validation.settled);
    let rejected = preflight.as_ref().map(|p| p.rejected.clone());
    let judged = (
        validation.invalid,
        validation.blocks,
        rejected.unwrap_or_default(),
    );
    let reader = spawn_feed(
        options,
        validation.source.clone(),
        rules,
        judged,
        opened.done,
        batch_tx,
    );
    let supervisor = launched.map(|engine| {
        let restarts = options.launch.as_ref().map_or(0, |l| l.max_restarts);
        Supervisor::start(engine, shared.clone(), restarts)
    });
    let load = tokio::spawn(watch_load(shared.clone()).in_current_span());
    let watch_down =
        tokio::spawn(watch_engines(shared.clone(), options.engine_down_timeout).in_current_span());
    let ended = dispatch(
        shared.clone(),
        batches,
        max_in_flight,
        options.in_flight_cap.clone(),
    )
    .await;
    load.abort();
    watch_down.abort();
    let engines_down = watch_down.await.ok().flatten();
    let media_failed = shared.handling.store_failed().map(str::to_owned);
    drop(shared);
    let engine_gave_up = match supervisor {
        Some(s) => s.finish().await,
        None => None,
    };
    let checkpoints_gave_up = beside.stop().await;
    let read = reader
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread panicked")));
    if let Some(reason) = checkpoints_gave_up {
        // One last try: space may have been freed meanwhile.
        let _ = sink.checkpoint_now().await;
        return Err(RunError::CheckpointsFailed(reason));
    }
    let positions = sink.checkpoint_now().await.map_err(RunError::io(format!(
        "cannot write the spool in {}",
        options.state_dir.display()
    )))?;
    read.map_err(|e| match Changed::in_error(&e) {
        Some(what) => RunError::InputChanged {
            input: ready.names.input.clone(),
            what: what.to_owned(),
            state_dir: options.state_dir.display().to_string(),
        },
        None => RunError::io(format!("cannot read {}", options.input.display()))(e),
    })?;
    if let Some(message) = engine_gave_up.or(engines_down) {
        return Err(RunError::EngineGaveUp(message));
    }
    if let Some(why) = media_failed {
        return Err(RunError::MediaNotStored(why));
    }
    Ok(Executed {
        status: status_of(ended, stats.done(), ready.planned, options)?,
        stats,
        positions,
        fingerprint: validation.fingerprint.current,
        mirror: ready.mirror,
        names: ready.names,
        lines: ready.report.lines,
        preflight: preflight.map(|p| p.report),
    })
}

/// The pre-flight pass over the lines still to run (see [`preflight`]), logged; a stop
/// meanwhile ends the job before anything is sent.
async fn count_tokens(
    options: &RunOptions,
    stop: &StopSignal,
    engines: &Engines,
    validation: &Validation,
    done: &BitSet,
) -> Result<Preflight, RunError> {
    let lines = preflight::Lines::of(validation, &options.validate, done.clone());
    let counted = tokio::select! {
        counted = preflight::preflight(engines, lines) => counted,
        () = stop.stopping() => return Err(RunError::StoppedBeforeStart),
    };
    let counted = counted.map_err(RunError::io(format!(
        "cannot read {} for the pre-flight count",
        options.input.display()
    )))?;
    tracing::info!("{}", counted.report.describe());
    Ok(counted)
}

/// The spool as the request tasks share it. The carried-over results (and, for a state in object
/// storage, the job itself) are made durable before anything else happens.
async fn open_sink(
    options: &RunOptions,
    spool: Spool,
    manifest: Manifest,
    mirror: Option<Arc<Mirror>>,
    seeded: bool,
) -> Result<Arc<Sink>, RunError> {
    let sink = Sink::new(
        spool,
        manifest,
        options.state_dir.clone(),
        options.checkpoint,
    )
    .map_err(RunError::io(format!(
        "state directory {}",
        options.state_dir.display()
    )))?;
    let durable_now = seeded || mirror.is_some();
    let sink = Arc::new(sink.with_mirror(mirror));
    if durable_now {
        sink.checkpoint_now()
            .await
            .map_err(RunError::io("checkpoint"))?;
    }
    Ok(sink)
}

/// What runs beside the dispatch: the checkpoints, the metrics endpoint, the progress display and
/// the stop timers (deadline, grace).
struct Beside {
    finish_checkpoints: oneshot::Sender<()>,
    checkpoints: tokio::task::JoinHandle<Option<String>>,
    stop_metrics: Option<oneshot::Sender<()>>,
    progress: ProgressDisplay,
    timers: tokio::task::JoinHandle<()>,
}

impl Beside {
    async fn start(
        options: &RunOptions,
        stop: &StopSignal,
        sink: &Arc<Sink>,
        stats: &Arc<Stats>,
        deadline: Option<SystemTime>,
    ) -> Result<Self, RunError> {
        let (finish_checkpoints, finish) = oneshot::channel();
        let checkpoints = tokio::spawn(
            sink.clone()
                .run_checkpoints(finish, stop.clone())
                .in_current_span(),
        );
        let stop_metrics = match options.metrics_listen {
            Some(addr) => Some(start_metrics(addr, stats.clone()).await?),
            None => None,
        };
        Ok(Self {
            finish_checkpoints,
            checkpoints,
            stop_metrics,
            progress: ProgressDisplay::start(
                stats.clone(),
                options.progress,
                options.progress_interval,
            ),
            timers: tokio::spawn(
                stop_timers(stop.clone(), deadline, options.grace).in_current_span(),
            ),
        })
    }

    /// Stops them all, the checkpoints after their last round; why the checkpoints gave up, if
    /// they did.
    async fn stop(self) -> Option<String> {
        self.timers.abort();
        let _ = self.finish_checkpoints.send(());
        let gave_up = self.checkpoints.await.ok().flatten();
        self.progress.finish();
        if let Some(stop) = self.stop_metrics {
            let _ = stop.send(());
        }
        gave_up
    }
}

/// The feed thread: reads the validated bytes again (`judged`: the lines the validation pass
/// rejected, and its block hashes) and hands the lines without a result to the dispatcher.
fn spawn_feed(
    options: &RunOptions,
    source: PathBuf,
    rules: LineRules,
    judged: (BitSet, Blocks, BTreeMap<u64, String>),
    done: BitSet,
    batches: mpsc::Sender<Vec<Item>>,
) -> JoinHandle<std::io::Result<()>> {
    let (max_line_bytes, group_window) = (options.validate.max_line_bytes, options.group_window);
    std::thread::spawn(move || {
        let (invalid, blocks, rejected) = judged;
        let feed = Feed {
            path: &source,
            blocks: &blocks,
            max_line_bytes,
            rules,
            invalid: &invalid,
            done: &done,
            rejected: &rejected,
            group_window,
        };
        feed.run(&batches)
    })
}

/// How the job ended, from how the dispatch ended: a complete input with lines still without a
/// result is an error (never finalized), as is a spool append that failed.
fn status_of(
    ended: Ended,
    done: u64,
    planned: u64,
    options: &RunOptions,
) -> Result<JobStatus, RunError> {
    let state_dir = || options.state_dir.display().to_string();
    Ok(match ended {
        Ended::Complete if done != planned => {
            return Err(RunError::Incomplete {
                results: done,
                planned,
                state_dir: state_dir(),
            });
        }
        Ended::Complete => JobStatus::Completed,
        Ended::Stopped(StopReason::Expired) => JobStatus::Expired,
        Ended::Stopped(StopReason::Cancelled) => JobStatus::Cancelled,
        Ended::Stopped(StopReason::Interrupted) => JobStatus::Interrupted,
        Ended::SpoolFailed => {
            return Err(RunError::io(format!(
                "cannot write the spool in {}",
                state_dir()
            ))(std::io::Error::other("an append failed")));
        }
    })
}

/// With adaptive limits: reads the engines' queues, and shows the current limit in the progress
/// output and metrics.
async fn watch_load(shared: Arc<Shared>) {
    if shared.routes.concurrency_limit().is_none() {
        return;
    }
    let show = async {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let limit = shared.routes.concurrency_limit().unwrap_or(0) as u64;
            let stats = &shared.stats;
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            stats.concurrency_limit.store(limit, relaxed);
            stats
                .at_engines
                .store(shared.routes.at_engines() as u64, relaxed);
        }
    };
    tokio::join!(shared.routes.watch_queues(shared.stop.clone()), show);
}

/// Shows how many engines are skipped (progress, metrics); when every engine has failed for
/// `timeout`, stops the job (resumable) and returns why, rather than crawling on at one probe
/// per cool-down for hours.
async fn watch_engines(shared: Arc<Shared>, timeout: Option<Duration>) -> Option<String> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let down = shared.routes.down() as u64;
        shared
            .stats
            .engines_down
            .store(down, std::sync::atomic::Ordering::Relaxed);
        let Some(limit) = timeout else { continue };
        if shared.routes.all_down_for().is_some_and(|d| d >= limit) {
            let reason = format!(
                "no engine has answered for {} (--engine-down-timeout): stopped. The results so \
                 far are kept; run the same command again to resume once an engine is up",
                crate::report::progress::format_duration(limit)
            );
            shared.stop.request(StopReason::Interrupted);
            shared.stop.abort(StopReason::Interrupted);
            return Some(reason);
        }
    }
}

/// Fires the deadline, and ends the grace once the job is stopping.
async fn stop_timers(stop: StopSignal, deadline: Option<SystemTime>, grace: Duration) {
    let expire = async {
        match deadline {
            Some(at) => {
                let left = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(left).await;
                if stop.phase() == crate::run::stop::Phase::Running {
                    tracing::warn!("the completion window has ended: stopping");
                }
                stop.request(StopReason::Expired);
            }
            None => std::future::pending().await,
        }
    };
    let end_grace = async {
        stop.stopping().await;
        tokio::time::sleep(grace).await;
        if let Some(reason) = stop.phase().reason() {
            stop.abort(reason);
        }
    };
    tokio::join!(expire, end_grace);
}

/// Launches the engine (when asked and there is work left) and sets up the engines of each
/// route (see [`routes`](super::routes)); probes them when there is work left.
async fn start_engines(
    options: &RunOptions,
    work_left: bool,
    settled: Option<&Settled>,
    line_models: &Option<Arc<LineModels>>,
) -> Result<(Routes, Option<Launched>), RunError> {
    let mut engine_options = options.engines.clone();
    let launched = match &options.launch {
        Some(spec) if work_left => {
            let engine = spec.start().await?;
            engine_options.urls.insert(0, engine.url.clone());
            Some(engine)
        }
        _ => None,
    };
    let path = settled.map_or("", |s| s.url.as_str());
    let mixed = options.validate.rules.mixed_models.as_ref();
    let (routes, models) = match (mixed, settled, line_models) {
        (Some(mixed), Some(settled), Some(lines)) => {
            let plans = routes::plans(&settled.models, mixed, &engine_options, launched.is_some());
            let routes = plans
                .iter()
                .map(|plan| Route::new(plan, path))
                .collect::<Result<_, _>>()?;
            let models = settled.models.iter().map(String::as_str).collect();
            (Routes::per_model(routes, lines.clone()), models)
        }
        _ => {
            let plan = RoutePlan {
                engines: engine_options,
                launched: launched.is_some(),
            };
            let model = settled.map(|s| s.model.as_str());
            (
                Routes::single(Route::new(&plan, path)?),
                Vec::from_iter(model),
            )
        }
    };
    if work_left {
        let mut logged = std::collections::HashSet::new();
        let mut unserved = Vec::new();
        for (index, (route, model)) in routes.all().iter().zip(&models).enumerate() {
            let probes = route.engines.probe().await?;
            log_probes(probes.iter().filter(|p| logged.insert(p.url.clone())));
            if options.model_check
                && let Some(served) = not_served(&probes, model)
            {
                unserved.push((index, served));
            }
        }
        match unserved.as_slice() {
            [] => {}
            [(index, served)] if mixed.is_none() => {
                return Err(RunError::ModelNotServed {
                    model: models[*index].to_owned(),
                    served: served.clone(),
                });
            }
            _ => {
                let lines = line_models
                    .as_ref()
                    .map_or_else(Vec::new, |lines| lines.counts(models.len()));
                let each: Vec<String> = unserved
                    .iter()
                    .map(|(index, served)| {
                        let n = lines.get(*index).copied().unwrap_or(0);
                        let model = models[*index];
                        format!("  {model:?} ({n} lines); its engines serve:\n{served}")
                    })
                    .collect();
                return Err(RunError::ModelsNotServed(each.join("\n")));
            }
        }
    }
    Ok((routes, launched))
}

/// Counts the results already in the spool (a resumed job, or --retry-failed's carried
/// successes) under their models.
fn count_carried(spool: &mut Spool, counts: &ModelCounts) -> std::io::Result<()> {
    let at = spool.flush()?;
    read_index(&spool.files().index, at.index, |r| {
        counts.record(r.line, r.outcome);
    })
}

/// The engines' model lists, when every engine listed its models and none serves `model`
/// (each line would only get a 400 or 404); `None` when one does. An engine that could not
/// list them may serve it under another name, so it counts as serving it. A LoRA adapter
/// written `base:adapter` is served by an engine that lists its base or the adapter.
fn not_served(probes: &[ProbeResult], model: &str) -> Option<String> {
    let lists: Vec<(&str, &[String])> = probes
        .iter()
        .map(|p| p.models.as_deref().map(|m| (p.url.as_str(), m)))
        .collect::<Option<_>>()?;
    let names = |m: &String| {
        m == model
            || model
                .rsplit_once(':')
                .is_some_and(|(base, adapter)| m == base || m == adapter)
    };
    if lists.iter().any(|(_, models)| models.iter().any(names)) {
        return None;
    }
    let served: Vec<String> = lists
        .iter()
        .map(|(url, models)| format!("  {url}: {}", models.join(", ")))
        .collect();
    Some(served.join("\n"))
}

fn log_probes<'a>(probes: impl Iterator<Item = &'a ProbeResult>) {
    for p in probes {
        match &p.outcome {
            Ok(401 | 403) => tracing::warn!(
                "{} refused GET /v1/models as unauthorised; check --api-key",
                p.url
            ),
            Ok(_) => tracing::debug!("{} is reachable", p.url),
            Err(e) => tracing::warn!("{} is not reachable ({e}); it will be retried later", p.url),
        }
    }
}

async fn start_metrics(
    addr: SocketAddr,
    stats: Arc<Stats>,
) -> Result<oneshot::Sender<()>, RunError> {
    let listener = metrics::bind(addr).await.map_err(RunError::io("metrics"))?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!("serving metrics on http://{local}/metrics");
    }
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = metrics::serve(listener, stats, shutdown).await {
            tracing::warn!("the metrics server stopped: {e}");
        }
    });
    Ok(stop)
}

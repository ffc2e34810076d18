//! One job from input file to final files: validate, dispatch, spool, finalize.
//!
//! Two stages run at once, connected by a bounded channel so memory stays flat however large the
//! input is:
//! - a reader thread streams the input a second time and turns each line into a request (or,
//!   with `--skip-invalid`, into an error record for a line the validation pass rejected), handing
//!   them over in batches so the threads rarely have to wake each other;
//! - the dispatcher keeps at most `max_concurrency` requests in flight, each a task that sends,
//!   retries, formats its result line and appends it to the spool.
//!
//! Appending is a short copy into the spool's buffer under a lock, cheaper than handing each
//! record to a writer thread (measured: the wake-ups cost more than the writes).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batch_format::LineRules;
use batch_format::input::custom_id_of;
use batch_format::output::{Outcome as LineOutcome, ResponseBody, write_line};
use batch_format::rules::Settled;
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::bitset::BitSet;
use crate::dispatch::{Delivery, EngineError, EngineOptions, Engines, ProbeResult, Target};
use crate::finalize::{FinalizeError, finalize};
use crate::metrics::{self, Outcome, Stats};
use crate::progress::{Progress, ProgressMode};
use crate::reader::{Content, LineReader};
use crate::spool::{Kind, Spool, SpoolFiles};
use crate::summary::{Paths, RunSummary};
use crate::validate::{Report, ValidateError, ValidateOptions, validate_file};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub errors: PathBuf,
    pub state_dir: PathBuf,
    pub engines: EngineOptions,
    pub max_concurrency: usize,
    pub skip_invalid: bool,
    pub validate: ValidateOptions,
    pub metrics_listen: Option<SocketAddr>,
    pub progress: ProgressMode,
    pub progress_interval: Duration,
}

/// `OUTPUT.errors.jsonl` for `OUTPUT.jsonl` (or `OUTPUT.errors.jsonl` for any other name).
pub fn default_errors_path(output: &Path) -> PathBuf {
    let name = output.to_string_lossy();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    PathBuf::from(format!("{stem}.errors.jsonl"))
}

/// `OUTPUT.state`, next to the output so finalize can rename instead of copying.
pub fn default_state_dir(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".state");
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}", .0.render(&.1))]
    Invalid(Box<Report>, String),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "the state directory {0} already exists (left by an interrupted run); remove it to start \
         over"
    )]
    StateExists(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Finalize(#[from] FinalizeError),
}

impl RunError {
    /// True when the input or the command line is at fault (rather than the environment).
    pub fn is_usage(&self) -> bool {
        match self {
            RunError::Invalid(..) | RunError::Validate(_) | RunError::StateExists(_) => true,
            RunError::Engine(e) => !matches!(e, EngineError::NoneReachable(_)),
            RunError::Io { .. } | RunError::Finalize(_) => false,
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
        let context = context.into();
        move |source| RunError::Io { context, source }
    }
}

/// What the reader thread hands the dispatcher.
enum Item {
    Request {
        line: u64,
        custom_id: String,
        body: Bytes,
    },
    Invalid {
        line: u64,
        custom_id: Option<String>,
        message: String,
    },
}

/// Lines the reader hands over at a time.
const READ_BATCH: usize = 256;

/// One formatted result line on its way to the spool.
struct Record {
    line: u64,
    kind: Kind,
    bytes: Vec<u8>,
}

pub async fn run(options: RunOptions) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let validation = {
        let (path, vopts) = (options.input.clone(), options.validate.clone());
        tokio::task::spawn_blocking(move || validate_file(&path, &vopts))
            .await
            .map_err(|e| RunError::io("validation")(std::io::Error::other(e)))??
    };
    let report = validation.report;
    let input_name = options.input.display().to_string();
    if report.requests == 0 && report.invalid_lines == 0 || !report.valid && !options.skip_invalid {
        return Err(RunError::Invalid(Box::new(report), input_name));
    }
    if !report.valid {
        tracing::warn!(
            "{} invalid lines go to the error file (--skip-invalid):\n{}",
            report.invalid_lines,
            report.render(&input_name)
        );
    }

    let engines = Arc::new(Engines::new(&options.engines)?);
    log_probes(&engines.probe().await?);

    if options.state_dir.exists() {
        return Err(RunError::StateExists(options.state_dir.clone()));
    }
    let spool = Spool::create(&options.state_dir).map_err(RunError::io(format!(
        "cannot create the state directory {}",
        options.state_dir.display()
    )))?;

    let stats = Arc::new(Stats::default());
    stats.planned.store(
        report.requests
            + if options.skip_invalid {
                report.invalid_lines
            } else {
                0
            },
        Ordering::Relaxed,
    );
    let stop_metrics = match options.metrics_listen {
        Some(addr) => Some(start_metrics(addr, stats.clone()).await?),
        None => None,
    };
    let progress = Progress::start(stats.clone(), options.progress, options.progress_interval);

    let outcome = dispatch_all(
        &options,
        validation.invalid,
        validation.settled,
        engines,
        stats.clone(),
        spool,
    )
    .await;
    progress.finish();
    if let Some(stop) = stop_metrics {
        let _ = stop.send(());
    }
    let spool_files = outcome?;
    finalize(
        &spool_files,
        &options.state_dir,
        &options.output,
        &options.errors,
    )?;

    let paths = Paths {
        input: &input_name,
        output: &options.output.display().to_string(),
        errors: &options.errors.display().to_string(),
    };
    Ok(RunSummary::new(
        paths,
        report.lines,
        &stats,
        started.elapsed(),
    ))
}

fn log_probes(probes: &[ProbeResult]) {
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

async fn dispatch_all(
    options: &RunOptions,
    invalid: BitSet,
    settled: Option<Settled>,
    engines: Arc<Engines>,
    stats: Arc<Stats>,
    spool: Spool,
) -> Result<SpoolFiles, RunError> {
    let (item_tx, mut batches) = mpsc::channel::<Vec<Item>>(8);
    let reader = {
        let path = options.input.clone();
        let rules = LineRules::settled(options.validate.rules.clone(), settled.clone());
        let max = options.validate.max_line_bytes;
        std::thread::spawn(move || read_items(&path, max, rules, &invalid, &item_tx))
    };
    let sink = Arc::new(Sink::new(spool));

    let target = Arc::new(engines.target(settled.as_ref().map_or("", |s| s.url.as_str()))?);
    let run_tag = run_tag();
    let limit = options.max_concurrency.max(1);
    let slots = Arc::new(Semaphore::new(limit));
    'dispatch: while let Some(batch) = batches.recv().await {
        for item in batch {
            if sink.failed() {
                break 'dispatch; // the spool cannot be written; the error is reported below
            }
            match item {
                Item::Invalid {
                    line,
                    custom_id,
                    message,
                } => {
                    let mut bytes = Vec::new();
                    let outcome = LineOutcome::Error {
                        code: "invalid_request",
                        message: &message,
                    };
                    let id = result_id(&run_tag, line);
                    write_line(&mut bytes, &id, custom_id.as_deref(), &outcome);
                    stats.record(Outcome::InvalidRequest);
                    sink.append(Record {
                        line,
                        kind: Kind::Error,
                        bytes,
                    });
                }
                Item::Request {
                    line,
                    custom_id,
                    body,
                } => {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break 'dispatch;
                    };
                    let (engines, stats, target, sink) =
                        (engines.clone(), stats.clone(), target.clone(), sink.clone());
                    let id = result_id(&run_tag, line);
                    tokio::spawn(async move {
                        let record =
                            execute(&engines, &stats, &target, line, &id, &custom_id, body).await;
                        sink.append(record);
                        drop(slot);
                    });
                }
            }
        }
    }
    // Every slot back means every request task has finished and appended its record.
    let _ = slots.acquire_many(limit as u32).await;
    drop(batches);
    let read = reader
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread panicked")));
    read.map_err(RunError::io(format!(
        "cannot read {}",
        options.input.display()
    )))?;
    sink.close().map_err(RunError::io(format!(
        "cannot write the spool in {}",
        options.state_dir.display()
    )))
}

/// Sends one request and turns whatever happened into its result line.
async fn execute(
    engines: &Engines,
    stats: &Stats,
    target: &Target,
    line: u64,
    id: &str,
    custom_id: &str,
    body: Bytes,
) -> Record {
    stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let sent = engines
        .send(target, body, || {
            stats.retries.fetch_add(1, Ordering::Relaxed);
        })
        .await;
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    stats.observe_latency(started.elapsed());

    let mut bytes = Vec::with_capacity(512);
    let (kind, outcome) = match sent.delivery {
        Delivery::Answered {
            status,
            request_id,
            body,
        } => {
            let success = (200..300).contains(&status);
            match ResponseBody::parse(&body) {
                Ok((parsed, info)) => {
                    if success {
                        stats.add_usage(info.usage);
                    }
                    let request_id = request_id.or(info.id);
                    let outcome = LineOutcome::Response {
                        status_code: status,
                        request_id: request_id.as_deref(),
                        body: &parsed,
                    };
                    write_line(&mut bytes, id, Some(custom_id), &outcome);
                    if success {
                        (Kind::Output, Outcome::Succeeded)
                    } else {
                        (Kind::Error, Outcome::EngineError)
                    }
                }
                Err(_) if success => {
                    let message = format!(
                        "the engine answered {status} with a body that is not JSON: {}",
                        preview(&body)
                    );
                    let outcome = LineOutcome::Error {
                        code: "invalid_engine_response",
                        message: &message,
                    };
                    write_line(&mut bytes, id, Some(custom_id), &outcome);
                    (Kind::Error, Outcome::EngineError)
                }
                Err(_) => {
                    let wrapped = ResponseBody::from_text(status, &body);
                    let outcome = LineOutcome::Response {
                        status_code: status,
                        request_id: request_id.as_deref(),
                        body: &wrapped,
                    };
                    write_line(&mut bytes, id, Some(custom_id), &outcome);
                    (Kind::Error, Outcome::EngineError)
                }
            }
        }
        Delivery::Unavailable { last_error } => {
            let message = format!(
                "no answer from the engine after {} attempts; last error: {last_error}",
                sent.attempts
            );
            let outcome = LineOutcome::Error {
                code: "engine_unavailable",
                message: &message,
            };
            write_line(&mut bytes, id, Some(custom_id), &outcome);
            (Kind::Error, Outcome::EngineUnavailable)
        }
    };
    stats.record(outcome);
    Record { line, kind, bytes }
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.into_owned()
}

/// Streams the input again, judging each line exactly as the validation pass did.
fn read_items(
    path: &Path,
    max_line_bytes: usize,
    mut rules: LineRules,
    invalid: &BitSet,
    batches: &mpsc::Sender<Vec<Item>>,
) -> std::io::Result<()> {
    let mut reader = LineReader::new(File::open(path)?, max_line_bytes);
    let mut batch = Vec::with_capacity(READ_BATCH);
    while let Some(line) = reader.next_line()? {
        if line.content.is_blank() {
            continue;
        }
        let item = match line.content {
            Content::TooLong => Item::Invalid {
                line: line.number,
                custom_id: None,
                message: batch_format::Problem::LineTooLong {
                    max_bytes: max_line_bytes,
                }
                .to_string(),
            },
            Content::Text(text) => {
                let checked = rules.check(line.number, text);
                match checked {
                    Ok(request) if !invalid.contains(line.number) => Item::Request {
                        line: line.number,
                        custom_id: request.custom_id.into_owned(),
                        body: Bytes::copy_from_slice(request.body.get().as_bytes()),
                    },
                    Ok(request) => Item::Invalid {
                        line: line.number,
                        message: format!(
                            "the custom_id {:?} is a duplicate of an earlier line; custom_id \
                             must be unique for each request in a batch",
                            request.custom_id
                        ),
                        custom_id: Some(request.custom_id.into_owned()),
                    },
                    Err(problems) => Item::Invalid {
                        line: line.number,
                        custom_id: custom_id_of(text),
                        message: problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    },
                }
            }
        };
        batch.push(item);
        if batch.len() == READ_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH));
            if batches.blocking_send(full).is_err() {
                return Ok(()); // the dispatcher stopped
            }
        }
    }
    if !batch.is_empty() {
        let _ = batches.blocking_send(batch);
    }
    Ok(())
}

/// The spool, shared by the request tasks. The first write error is kept and stops the job.
struct Sink {
    state: Mutex<SinkState>,
    failed: AtomicBool,
}

struct SinkState {
    spool: Option<Spool>,
    error: Option<std::io::Error>,
}

impl Sink {
    fn new(spool: Spool) -> Self {
        Self {
            state: Mutex::new(SinkState {
                spool: Some(spool),
                error: None,
            }),
            failed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // A panic while appending leaves at worst a partial line, which resume discards.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, r: Record) {
        let mut state = self.lock();
        let SinkState { spool, error } = &mut *state;
        if let (Some(spool), None) = (spool, &error)
            && let Err(e) = spool.append(r.line, r.kind, &r.bytes)
        {
            *error = Some(e);
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn close(&self) -> std::io::Result<SpoolFiles> {
        let mut state = self.lock();
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        match state.spool.take() {
            Some(spool) => spool.close(),
            None => Err(std::io::Error::other("the spool was already closed")),
        }
    }
}

/// A random tag that makes this run's result ids unique across runs.
fn run_tag() -> String {
    use std::hash::BuildHasher;
    let n = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

/// `batch_req_<run tag><line>`: unique within the run because line numbers are.
fn result_id(run_tag: &str, line: u64) -> String {
    format!("batch_req_{run_tag}{line:08}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_sit_next_to_the_output() {
        assert_eq!(
            default_errors_path(Path::new("out/results.jsonl")),
            PathBuf::from("out/results.errors.jsonl")
        );
        assert_eq!(
            default_errors_path(Path::new("results.txt")),
            PathBuf::from("results.txt.errors.jsonl")
        );
        assert_eq!(
            default_state_dir(Path::new("out/r.jsonl")),
            PathBuf::from("out/r.jsonl.state")
        );
    }

    #[test]
    fn result_ids_are_unique_per_line() {
        let tag = run_tag();
        assert_eq!(tag.len(), 12);
        assert_ne!(result_id(&tag, 1), result_id(&tag, 10));
        assert!(result_id(&tag, 1).starts_with("batch_req_"));
    }
}

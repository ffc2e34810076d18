//! The batch job pipeline, shared by `batch-runner run` and the service's workers.
//!
//! The folders follow the data, in order:
//! - [`input`]: the input's bytes (stdin and pipes copied, the second pass checked against the
//!   first), numbered lines with bounded memory (`reader`), and the validation pass over the
//!   whole input before any request is sent (`validate`, with `dedupe`);
//! - [`dispatch`]: engines, concurrency, retries, circuit breaking; each request body is sent
//!   unparsed;
//! - [`media`]: image, audio and video payloads stored as files, out of the result lines, and
//!   transcription lines sent as multipart forms;
//! - [`state`]: results appended to the spool as they complete (`spool`, `sink`, with
//!   checkpoints that make them durable), the manifest and resuming from it, the state mirrored
//!   to object storage (`mirror`), a finished job recognised (`finished`), how each line ended
//!   (`outcome`);
//! - [`output`]: the final output and error files (`finalize`), `--retry-failed`, the
//!   final files of a job that cannot run any more (`salvage`), remote inputs and results;
//! - [`report`]: metrics, progress, the summary, a job's status read from its state directory;
//! - [`results`]: the results read back a page or a request at a time, from a running job's
//!   spool (`live`) or a finished job's final files through their results index (`index`);
//! - [`run`]: wires the stages together, and ends a job early (`stop`, `deadline`);
//! - [`launch`]: starting, guarding and restarting an engine for the job;
//! - [`notify`]: webhooks, signed as OpenAI signs them (`run --notify-url`, the service's
//!   outbox).
//!
//! The modules are private: what the command line, the service and the fuzz targets use is
//! re-exported below, by stage.

mod bitset;
mod dispatch;
mod duration;
mod extsort;
mod input;
mod launch;
mod media;
mod notify;
mod output;
mod report;
mod results;
mod run;
mod state;

pub use dispatch::{Concurrency, EngineOptions, RetryPolicy, parse_header};
pub use duration::parse_duration;
pub use input::reader::{Content, LineReader};
pub use input::validate::{
    DEFAULT_MAX_LINE_BYTES, ValidateError, ValidateOptions, Validation, validate_file,
};
pub use input::{Recording, Verified};
pub use launch::LaunchSpec;
pub use launch::guard::{GuardOptions, run_guard};
pub use launch::preset::Preset;
pub use media::{LocalMedia, MediaStore, ObjectMedia, Place as MediaPlace};
pub use notify::{
    Attempt, Event, Secret, SecretError, backoff, client as send_event_client, new_event_id,
    notify, send as send_event, unix_now,
};
pub use output::finalize::{Destination, Order};
pub use output::remote::{FINAL_DIR, Remote, UPLOADS, has_pending, upload_pending};
pub use output::retry_failed::Previous;
pub use output::salvage::{Salvaged, salvage};
pub use report::metrics::Stats;
pub use report::model_counts::{ModelTally, prometheus_label};
pub use report::progress::{ProgressMode, StderrAboveBar, format_duration};
pub use report::status::{JobProgress, read_progress};
pub use report::summary::{JobStatus, RunSummary};
pub use results::index::{
    IndexedFiles, ResultIndex, Sources as IndexSources, build as build_results_index,
};
pub use results::live::LiveResults;
pub use results::{
    ErrorCount, MAX_PAGE, PageQuery, RequestDetail, ResultItem, ResultPage, ResultSource,
    ResultStatus,
};
pub use run::deadline::{Deadline, parse_rfc3339};
pub use run::preflight::{Preflight, PreflightReport, preflight_input};
pub use run::stop::{Phase, RESUMABLE_EXIT, StopReason, StopSignal};
pub use run::{
    CANCELLED_MESSAGE, JobFiles, RunError, RunOptions, default_state_dir, run, run_observed,
};
pub use state::mirror::Mirror;
pub use state::outcome::LineOutcome;
pub use state::sink::CheckpointPolicy;
pub use state::timings::TIMINGS;
pub use state::{MANIFEST, ResultFile, results_so_far};

/// Twelve hex digits that differ between processes and between calls: names that must never
/// collide with an earlier run's (result ids, object names of the mirrored state).
pub(crate) fn random_tag() -> String {
    format!("{:012x}", random_u64() & 0xffff_ffff_ffff)
}

/// 64 bits that differ between processes and calls (unique names, jitter; not secrets).
pub(crate) fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now())
}

/// An error with its causes, each once, e.g. "error sending request: connection refused"
/// (an HTTP client's own text often stops at the first).
pub(crate) fn error_with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

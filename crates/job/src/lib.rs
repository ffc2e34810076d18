//! The batch job pipeline, shared by `batch-runner run` and the service's workers.
//!
//! Layout, in data-flow order:
//! - [`input`]: stdin and pipes copied, and the second pass checked against the first;
//! - [`reader`]: numbered lines with bounded memory;
//! - [`validate`] (with [`dedupe`] and [`bitset`]): the pass over the whole input before any
//!   request is sent;
//! - [`dispatch`]: engines, retries, circuit breaking; sends each request body unparsed;
//! - [`spool`], [`sink`]: results appended as they complete, with an index; checkpoints that
//!   make them durable; [`state`]: the manifest, and resuming from it; [`mirror`]: the state
//!   copied to object storage, for resuming on another machine;
//! - [`stop`], [`deadline`]: ending early (completion window, signals, cancel);
//! - [`finalize`]: the spool becomes the final output and error files, atomically, in input order
//!   (with [`extsort`]) or completion order; [`retry_failed`] seeds a job with an earlier run's
//!   successes;
//! - [`finished`]: a finished job is recognised and not run again by accident;
//! - [`launch`]: starting, guarding and restarting an engine for the job;
//! - [`remote`]: inputs and results at http(s) URLs, and uploads that failed;
//! - [`progress`], [`metrics`], [`summary`], [`status`]: what the operator sees while and after
//!   it runs; [`outcome`]: how each line ended;
//! - [`run`]: wires the stages together; [`salvage`]: the final files of a job that cannot run
//!   any more (or was cancelled before it ran); [`duration`] parses the durations flags take.

pub mod bitset;
pub mod deadline;
pub mod dedupe;
pub mod dispatch;
pub mod duration;
pub mod extsort;
pub mod finalize;
pub mod finished;
pub mod input;
pub mod launch;
pub mod metrics;
pub mod mirror;
pub mod outcome;
pub mod progress;
pub mod reader;
pub mod remote;
pub mod retry_failed;
pub mod run;
pub mod salvage;
pub mod sink;
pub mod spool;
pub mod state;
pub mod status;
pub mod stop;
pub mod summary;
pub mod validate;

/// Twelve hex digits that differ between processes and between calls: names that must never
/// collide with an earlier run's (result ids, object names of the mirrored state).
pub(crate) fn random_tag() -> String {
    use std::hash::BuildHasher;
    let n = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    format!("{:012x}", n & 0xffff_ffff_ffff)
}

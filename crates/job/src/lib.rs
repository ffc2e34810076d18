//! The batch job pipeline, shared by `batch-runner run` and (later) the service's workers.
//!
//! Layout, in data-flow order:
//! - [`reader`]: numbered lines with bounded memory;
//! - [`validate`] (with [`dedupe`] and [`bitset`]): the pass over the whole input before any
//!   request is sent;
//! - [`dispatch`]: engines, retries, circuit breaking; sends each request body unparsed;
//! - [`spool`]: results appended as they complete, with an index for finalize;
//! - [`finalize`]: the spool becomes the final output and error files, atomically;
//! - [`progress`], [`metrics`], [`summary`]: what the operator sees while and after it runs;
//! - [`run`]: wires the stages together; [`duration`] parses the durations flags take.

pub mod bitset;
pub mod dedupe;
pub mod dispatch;
pub mod duration;
pub mod finalize;
pub mod metrics;
pub mod progress;
pub mod reader;
pub mod run;
pub mod spool;
pub mod summary;
pub mod validate;

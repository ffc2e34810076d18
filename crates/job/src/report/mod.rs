//! What the operator sees while a job runs and after it ends.
//!
//! - [`metrics`]: live counters, shared by the progress display, the summary and the
//!   Prometheus endpoint;
//! - [`progress`]: a progress bar on a terminal, periodic log lines elsewhere;
//! - [`summary`]: the end-of-run summary, for people and as JSON;
//! - [`status`]: a job's progress read back from its state directory, by another process.

pub mod errors;
pub mod metrics;
pub mod progress;
pub mod status;
pub mod summary;

//! What the operator sees while a job runs and after it ends.
//!
//! - [`metrics`]: live counters, shared by the progress display, the summary and the
//!   Prometheus endpoint; [`model_counts`]: the same per model, when a file holds several;
//! - [`progress`]: a progress bar on a terminal, periodic log lines elsewhere;
//! - [`summary`]: the end-of-run summary, for people and as JSON;
//! - [`status`]: a job's progress read back from its state directory, by another process.

pub mod errors;
pub mod metrics;
pub mod model_counts;
pub mod progress;
pub mod status;
pub mod summary;

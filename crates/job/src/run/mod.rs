//! One job from input file to final files: validate, open (or resume) the state, dispatch,
//! checkpoint, finalize.
//!
//! Two stages run at once, connected by a bounded channel so memory stays flat however large the
//! input is:
//! - a reader thread (`feed`) streams the input a second time and turns each line still
//!   without a result into a request (or, with `--skip-invalid`, into an error record for a line
//!   the validation pass rejected), handing them over in batches so the threads rarely have to
//!   wake each other;
//! - the `dispatcher` keeps at most `--max-concurrency` requests in flight, each a task that
//!   sends, retries, formats its result line (`execute`) and appends it to the spool.
//!
//! Appending is a short copy into the spool's buffer under a lock, cheaper than handing each
//! record to a writer thread (measured: the wake-ups cost more than the writes). Checkpoints run
//! beside it (see `sink`); the deadline and the stop grace are timers that move the
//! [`StopSignal`].

pub mod deadline;
mod deliver;
mod dispatcher;
mod error;
mod execute;
mod feed;
mod grouping;
mod handling;
mod in_flight_cap;
mod options;
pub mod preflight;
mod prepare;
pub(crate) mod request;
mod routes;
pub mod stop;
mod supervise;

use std::sync::Arc;
use std::time::Instant;

pub use error::RunError;
pub use options::{JobFiles, RunOptions, default_state_dir};
pub use request::CANCELLED_MESSAGE;
pub(crate) use request::Ids;

use crate::input::validate::Validation;
use crate::report::metrics::Stats;
use crate::report::summary::RunSummary;
use crate::run::stop::StopSignal;

/// Runs the job to its end: completed, expired, cancelled, or interrupted (resumable). `stop`
/// is how the caller (signal handlers, a service) stops it early.
pub async fn run(options: RunOptions, stop: StopSignal) -> Result<RunSummary, RunError> {
    run_observed(options, None, stop, |_| {}).await
}

/// [`run`] in its three stages, handing the job's live counters to `observe` once they exist
/// (the service's worker reports them to the store while the job runs). `validated`: the
/// validation pass of the input, when the caller already made it (see [`prepare::prepare`]).
pub async fn run_observed(
    options: RunOptions,
    validated: Option<Validation>,
    stop: StopSignal,
    observe: impl FnOnce(Arc<Stats>),
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let ready = match prepare::prepare(&options, validated, &stop).await? {
        prepare::Prepared::Finished(summary) => return Ok(*summary),
        prepare::Prepared::Ready(ready) => *ready,
    };
    let executed = execute::execute(&options, &stop, ready, observe).await?;
    deliver::deliver_job(&options, executed, started).await
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn the_default_state_dir_sits_next_to_the_output() {
        assert_eq!(
            default_state_dir(Path::new("out/r.jsonl")),
            PathBuf::from("out/r.jsonl.state")
        );
    }
}

//! The last stage of a job: the spool becomes the final files, they are uploaded where they
//! go, the completion is recorded and the state removed; then the summary.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batch_storage::Location;

use super::execute::Executed;
use super::{RunError, RunOptions};
use crate::output::finalize::{Destination, finalize};
use crate::output::remote::deliver;
use crate::report::summary::{JobStatus, RunSummary};
use crate::state::finished::{Completion, remove_state};
use crate::state::mirror::Mirror;
use crate::state::outcome::LineOutcome;

/// Delivers an ended job's results (none for an interrupted job, which keeps its state to
/// resume) and sums it up; `started` is when the run began.
pub async fn deliver_job(
    options: &RunOptions,
    executed: Executed,
    started: Instant,
) -> Result<RunSummary, RunError> {
    let Executed {
        status,
        stats,
        positions,
        fingerprint,
        mirror,
        names,
        lines,
        preflight,
    } = executed;
    let finalize_time = if status == JobStatus::Interrupted {
        Duration::ZERO
    } else {
        let done = Completion {
            input_fingerprint: fingerprint,
            succeeded: stats.count(LineOutcome::Succeeded),
            failed: stats.failed(),
        };
        deliver_results(options, positions, mirror.as_deref(), &done).await?
    };
    let mut summary = RunSummary::new(names.paths(), status, lines, &stats, started.elapsed());
    summary.finalize_seconds = finalize_time.as_secs_f64();
    summary.preflight = preflight;
    Ok(summary)
}

/// Builds the results index of the final files at `index` (only over files in input order and
/// a regular input file: a stream's bytes are gone).
fn index_results(options: &RunOptions, spool: &crate::state::spool::SpoolFiles, index: &Path) {
    let regular = std::fs::metadata(&options.input).is_ok_and(|m| m.is_file());
    if options.order != crate::output::finalize::Order::Input || !regular {
        return;
    }
    let sources = crate::results::index::Sources {
        input: &options.input,
        output: Some(&options.output),
        errors: Some(&options.errors),
        timings: Some(&spool.timings),
        max_line_bytes: options.validate.max_line_bytes,
    };
    if let Err(e) = crate::results::index::build(&sources, index) {
        tracing::warn!("cannot index the results ({}): {e}", index.display());
    }
}

/// Writes the final files, delivers remote ones, and removes the state (unless kept). Returns
/// the time the final files took to write.
async fn deliver_results(
    options: &RunOptions,
    positions: crate::state::spool::Positions,
    mirror: Option<&Mirror>,
    done: &Completion,
) -> Result<Duration, RunError> {
    let to = Destination {
        output: &options.output,
        errors: &options.errors,
    };
    let finalizing = Instant::now();
    let spool = crate::state::spool::SpoolFiles::in_dir(&options.state_dir);
    finalize(&spool, positions, options.order, &to)?;
    if let Some(index) = &options.results_index {
        index_results(options, &spool, index);
    }
    let finalize_time = finalizing.elapsed();
    let uploads: Vec<(PathBuf, Location)> = [
        (&options.output, &options.remote.output),
        (&options.errors, &options.remote.errors),
    ]
    .into_iter()
    .filter_map(|(local, remote)| remote.clone().map(|r| (local.clone(), r)))
    .collect();
    if !uploads.is_empty() {
        let remote = &options.remote;
        deliver(&options.state_dir, uploads, &remote.output_http, &remote.s3).await?;
    }
    // From here on a rerun knows the job is done, whatever happens to the state.
    done.store(&options.state_dir)
        .map_err(RunError::io(format!(
            "cannot record the completion in {}",
            options.state_dir.display()
        )))?;
    if !options.keep_state {
        remove_state(&options.state_dir, None).map_err(RunError::io(format!(
            "cannot remove the state directory {}",
            options.state_dir.display()
        )))?;
        // The results are delivered: a leftover remote state is only clutter.
        if let Some(mirror) = mirror
            && let Err(e) = mirror.remove().await
        {
            tracing::warn!("the job is done, but its state in object storage remains: {e}");
        }
    }
    Ok(finalize_time)
}

//! The first stage of a job: paths checked, the state directory restored (from object storage)
//! or started over, the input downloaded and validated, a job already finished recognised, the
//! state opened (resumed, or seeded by `--retry-failed`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use batch_storage::Location;
use batch_storage::object::ObjectDir;

use super::{RunError, RunOptions};
use crate::input::validate::{Report, Source, Validation, validate};
use crate::output::retry_failed::{Previous, seed};
use crate::report::summary::{Paths, RunSummary};
use crate::run::stop::StopSignal;
use crate::state::finished::{Completion, IdDigest, remove_state};
use crate::state::mirror::Mirror;
use crate::state::{self, NewJob, Opened};

/// The copy of an input that can be read only once (stdin, a pipe), in the state directory.
pub const STREAM_COPY: &str = "input.jsonl";

/// What preparing a job found.
pub enum Prepared {
    /// The final files already hold this input's results: nothing to run.
    Finished(Box<RunSummary>),
    Ready(Box<Ready>),
}

/// A job ready to run: what the execution stage needs from the preparation.
pub struct Ready {
    /// The validation pass (its report taken out, below).
    pub validation: Validation,
    pub report: Report,
    /// Lines that get a result: the requests, and the invalid lines with `--skip-invalid`.
    pub planned: u64,
    pub opened: Opened,
    pub mirror: Option<Arc<Mirror>>,
    /// Whether the spool was seeded with an earlier run's successes (`--retry-failed`).
    pub seeded: bool,
    pub names: Names,
    pub fresh: Fresh,
}

/// The job's files as the user named them (URLs for remote ones), for messages and the summary.
pub struct Names {
    pub input: String,
    pub output: String,
    pub errors: String,
    pub state_dir: String,
}

impl Names {
    pub fn paths(&self) -> Paths<'_> {
        Paths {
            input: &self.input,
            output: &self.output,
            errors: &self.errors,
            state_dir: &self.state_dir,
        }
    }
}

/// Whether this run created the state directory: until the state is opened (and until the
/// engines start), a failure leaves no directory this run created behind.
pub struct Fresh {
    dir: PathBuf,
    existed: bool,
}

impl Fresh {
    pub fn abandon(&self, e: RunError) -> RunError {
        if !self.existed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        e
    }
}

/// Prepares the job. `validated` is the validation pass of `options.input` with
/// `options.validate` when the caller already made it (the service's worker does, to report an
/// invalid file's problems), so the input is not read a third time for it.
pub async fn prepare(
    options: &RunOptions,
    validated: Option<Validation>,
    stop: &StopSignal,
) -> Result<Prepared, RunError> {
    check_paths(options)?;
    let mirror = restore_state(options).await?;
    let fresh = Fresh {
        dir: options.state_dir.clone(),
        existed: options.state_dir.exists(),
    };
    let abandon = |e: RunError| fresh.abandon(e);
    check_destinations(options).map_err(abandon)?;
    if let Some(from) = &options.remote.input {
        let remote = &options.remote;
        let size = from
            .fetch(&options.input, &remote.input_http, &remote.s3)
            .await
            .map_err(|e| abandon(e.into()))?;
        tracing::info!("downloaded {} ({size} bytes)", from.describe());
    }
    let mut validation = match validated {
        Some(validation) => validation,
        None => validate_input(options, stop).await.map_err(abandon)?,
    };
    let report = std::mem::take(&mut validation.report);
    let names = Names::of(options);
    let input_name = &names.input;
    if report.requests == 0 && report.invalid_lines == 0 || !report.valid && !options.skip_invalid {
        return Err(abandon(RunError::Invalid(
            Box::new(report),
            input_name.clone(),
        )));
    }
    if !report.valid {
        tracing::warn!(
            "{} invalid lines go to the error file (--skip-invalid):\n{}",
            report.invalid_lines,
            report.render(input_name)
        );
    }
    let planned = report.requests
        + if options.skip_invalid {
            report.invalid_lines
        } else {
            0
        };
    let (output_name, errors_name) = (&names.output, &names.errors);
    if let Some((succeeded, failed)) = already_finished(options, &validation).map_err(abandon)? {
        tracing::info!(
            "{output_name} and {errors_name} already hold a result for every line of \
             {input_name} ({succeeded} succeeded, {failed} failed): nothing to do. Add --restart \
             to run every line again (replacing them), or --retry-failed {output_name} to rerun \
             only the failures"
        );
        return Ok(Prepared::Finished(Box::new(RunSummary::already_complete(
            names.paths(),
            report.lines,
            succeeded,
            failed,
        ))));
    }
    let (opened, seeded) = open_state(options, &validation, planned, &names.input, &fresh).await?;
    let already = opened.done.count();
    if opened.resumed {
        tracing::info!(
            "resuming from {}: {already} of {planned} lines already have a result",
            options.state_dir.display()
        );
    }
    Ok(Prepared::Ready(Box::new(Ready {
        validation,
        report,
        planned,
        opened,
        mirror,
        seeded,
        names,
        fresh,
    })))
}

impl Names {
    fn of(options: &RunOptions) -> Self {
        let shown = |local: &PathBuf, remote: &Option<Location>| {
            remote
                .as_ref()
                .map_or_else(|| local.display().to_string(), Location::describe)
        };
        Self {
            input: shown(&options.input, &options.remote.input),
            output: shown(&options.output, &options.remote.output),
            errors: shown(&options.errors, &options.remote.errors),
            state_dir: options.state_dir.display().to_string(),
        }
    }
}

/// `--restart` (the state removed, here and in object storage), then the state restored from
/// object storage when it lives there.
async fn restore_state(options: &RunOptions) -> Result<Option<Arc<Mirror>>, RunError> {
    let remote_state = match &options.state_remote {
        Some(url) => Some(ObjectDir::open(url, &options.remote.s3)?),
        None => None,
    };
    if options.restart {
        if options.state_dir.exists() {
            std::fs::remove_dir_all(&options.state_dir).map_err(RunError::io(format!(
                "cannot remove the state directory {} (--restart)",
                options.state_dir.display()
            )))?;
        }
        if let Some(dir) = &remote_state {
            dir.remove_all().await?;
        }
    }
    Ok(match remote_state {
        Some(dir) => Some(Arc::new(Mirror::restore(dir, &options.state_dir).await?)),
        None => None,
    })
}

/// Opens (or resumes) the state; a fresh one is seeded with an earlier run's successes under
/// `--retry-failed`. Returns the state and whether it was seeded.
async fn open_state(
    options: &RunOptions,
    validation: &Validation,
    planned: u64,
    input_name: &str,
    fresh: &Fresh,
) -> Result<(Opened, bool), RunError> {
    let job = NewJob {
        input: input_name,
        fingerprint: &validation.fingerprint,
        run_tag: crate::random_tag(),
    };
    let opened = state::open(&options.state_dir, job)?;
    match &options.retry_failed {
        Some(previous) if !opened.resumed => {
            let (opened, result) = seed_from(
                previous,
                options,
                &validation.source,
                opened,
                planned,
                input_name,
            )
            .await
            .map_err(|e| fresh.abandon(e))?;
            // A failed seed must not leave a fresh state behind: the next run would resume it
            // and run every line instead of only the failed ones.
            result.map_err(|e| fresh.abandon(e))?;
            Ok((opened, true))
        }
        _ => Ok((opened, false)),
    }
}

/// The validation pass, on a blocking thread; a stream is copied into the state directory. A
/// stop ends it at once: the thread is told to stop, but may be blocked on a read that never
/// returns (a FIFO with no writer), so it is not waited for.
async fn validate_input(options: &RunOptions, stop: &StopSignal) -> Result<Validation, RunError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let copy_to = options.state_dir.join(STREAM_COPY);
    let (path, vopts, flag) = (
        options.input.clone(),
        options.validate.clone(),
        cancel.clone(),
    );
    let validating = tokio::task::spawn_blocking(move || {
        let source = Source {
            path: &path,
            copy_to: Some(&copy_to),
            cancel: Some(&flag),
        };
        validate(source, &vopts)
    });
    tokio::select! {
        done = validating => done
            .map_err(|e| RunError::io("validation")(std::io::Error::other(e)))
            .and_then(|v| v.map_err(RunError::from)),
        () = stop.stopping() => {
            cancel.store(true, Ordering::Relaxed);
            Err(RunError::StoppedBeforeStart)
        }
    }
}

/// A job this command already finished: `Some((succeeded, failed))` when there is nothing to
/// do. Either the state directory holds the completion marker for this input (a run killed while
/// removing its state), or there is no state and the final files already hold one result per
/// line of the input. A finished job of another input (or one to rerun with --retry-failed)
/// has its leftovers removed and runs as a new job.
fn already_finished(
    options: &RunOptions,
    validation: &Validation,
) -> Result<Option<(u64, u64)>, RunError> {
    let dir = &options.state_dir;
    let remove = |keep: Option<&Path>| {
        remove_state(dir, keep).map_err(RunError::io(format!(
            "cannot remove the finished job's state in {}",
            dir.display()
        )))
    };
    if let Some(done) = Completion::load(dir) {
        if validation.fingerprint.matches(&done.input_fingerprint) && options.retry_failed.is_none()
        {
            if !options.keep_state {
                remove(None)?;
            }
            return Ok(Some((done.succeeded, done.failed)));
        }
        // The copy of this run's input (a stream, a download) lives in the same directory.
        remove(
            Some(&validation.source)
                .filter(|s| s.starts_with(dir))
                .map(PathBuf::as_path),
        )?;
        return Ok(None);
    }
    let resumable = dir.join(state::MANIFEST).exists();
    if options.restart
        || resumable
        || options.retry_failed.is_some()
        || options.remote.output.is_some()
        || !options.output.exists()
    {
        return Ok(None);
    }
    let mut found = IdDigest::default();
    let mut count = |path: &Path| {
        found
            .add_results(path)
            .map_err(RunError::io(format!("cannot read {}", path.display())))
    };
    let succeeded = count(&options.output)?;
    let failed = count(&options.errors)?;
    if found != validation.ids {
        return Ok(None);
    }
    if dir.exists() {
        remove(None)?;
    }
    Ok(Some((succeeded, failed)))
}

/// Fails now, not after hours of work, when a result file or the state cannot be written:
/// a directory where a file goes, a directory that cannot be created or written to.
fn check_destinations(options: &RunOptions) -> Result<(), RunError> {
    let finals = [
        ("OUTPUT", &options.output),
        ("the error file (--errors)", &options.errors),
    ];
    // (Remote results are finalized inside the state directory, then uploaded.)
    for (what, path) in finals {
        if path.is_dir() {
            return Err(RunError::Paths(format!(
                "{what} {} is a directory; give a file path",
                path.display()
            )));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        writable_dir(dir).map_err(RunError::io(format!(
            "cannot write {what} {}: its directory {} is not writable",
            path.display(),
            dir.display()
        )))?;
    }
    if options.state_dir.exists() && !options.state_dir.is_dir() {
        return Err(RunError::Paths(format!(
            "the state directory {} is a file; remove it or give another --state-dir",
            options.state_dir.display()
        )));
    }
    writable_dir(&options.state_dir).map_err(RunError::io(format!(
        "cannot write the state directory {}",
        options.state_dir.display()
    )))
}

/// Creates `dir` if needed and proves a file can be created in it.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tempfile::Builder::new()
        .prefix(".batch-runner-check")
        .tempfile_in(dir)
        .map(drop)
}

/// Refuses outputs that would overwrite the input or each other.
fn check_paths(options: &RunOptions) -> Result<(), RunError> {
    let input = same_file_key(&options.input);
    let output = same_file_key(&options.output);
    let errors = same_file_key(&options.errors);
    if output == input || errors == input {
        return Err(RunError::Paths(format!(
            "the output would overwrite the input {}; choose another --output / --errors",
            options.input.display()
        )));
    }
    if output == errors {
        return Err(RunError::Paths(format!(
            "--output and --errors are the same file ({}); give them different paths",
            options.output.display()
        )));
    }
    Ok(())
}

/// A path made comparable: the canonical parent directory plus the file name (the file itself
/// need not exist yet).
fn same_file_key(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
    dir.join(path.file_name().unwrap_or_default())
}

/// Seeds a fresh job with an earlier run's successes (`--retry-failed`), on a blocking thread.
/// Hands `opened` back with the seeding's result (the outer error: the thread itself failed).
async fn seed_from(
    previous: &Previous,
    options: &RunOptions,
    input: &Path,
    mut opened: state::Opened,
    planned: u64,
    input_name: &str,
) -> Result<(state::Opened, Result<(), RunError>), RunError> {
    let (previous, input) = (previous.clone(), input.to_owned());
    let max_line_bytes = options.validate.max_line_bytes;
    let joined = tokio::task::spawn_blocking(move || {
        let o = &mut opened;
        let result = seed(
            &previous,
            &input,
            max_line_bytes,
            &mut o.spool,
            &mut o.done,
            &mut o.counts,
        );
        (opened, result)
    })
    .await;
    let (opened, result) =
        joined.map_err(|e| RunError::io("--retry-failed")(std::io::Error::other(e)))?;
    let mut opened = opened;
    let result = result
        .map_err(RunError::io("--retry-failed"))
        .map(|seeded| {
            // The merged job's totals include what the carried-over successes used.
            let totals = &mut opened.manifest.totals;
            totals.input_tokens += seeded.usage.input_tokens;
            totals.output_tokens += seeded.usage.output_tokens;
            totals.total_tokens += seeded.usage.total_tokens;
            tracing::info!(
                "--retry-failed: {} earlier successes kept; {} lines to run ({} listed as failed)",
                seeded.reused,
                planned.saturating_sub(seeded.reused),
                seeded.listed_failed
            );
            if seeded.unknown > 0 {
                tracing::warn!(
                    "--retry-failed: {} earlier results name a custom_id that is not in \
                 {input_name}; they are left out",
                    seeded.unknown
                );
            }
        });
    Ok((opened, result))
}

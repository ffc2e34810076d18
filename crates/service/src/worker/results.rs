//! The final files of a batch that cannot run on (cancelled before it ran, or failed), and
//! turning result files into File objects.

use super::report::earlier_progress;
use super::*;

/// How the lines of a batch that cannot run end: the code and message of their error lines.
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    pub code: &'static str,
    pub message: &'static str,
}

/// The message of the lines a failed batch never ran.
pub const FAILED_MESSAGE: &str =
    "This request was not executed because the batch failed (its worker kept failing).";

/// Writes a batch's final files into `work` from its job state there (none: nothing ran), every
/// line without a result ending as `ending` says.
pub async fn final_files(
    work: &BatchWork,
    input: &Path,
    max_line_bytes: usize,
    ending: Ending,
) -> Result<batch_job::Salvaged, WorkerError> {
    let (work, input) = (work.clone(), input.to_owned());
    tokio::task::spawn_blocking(move || {
        let (output, errors) = (work.output(), work.errors());
        let to = batch_job::Destination {
            output: &output,
            errors: &errors,
        };
        let state = work.state();
        batch_job::salvage(
            &state,
            &input,
            &to,
            max_line_bytes,
            ending.code,
            ending.message,
        )
    })
    .await
    .map_err(|e| io("writing the final files")(std::io::Error::other(e)))?
    .map_err(io("cannot write the batch's final files"))
}

/// Publishes what a batch that failed (its worker kept dying) had finished: the successes as its
/// output file, the failures and every unfinished line (`batch_failed`) as its error file; then
/// removes its work directory. The batch stays `failed`.
pub async fn publish_failed(
    store: &Store,
    blobs: &Blobs,
    work_root: &Path,
    id: &str,
) -> Result<(), WorkerError> {
    let Some(batch) = store.batch_by_id(id).await? else {
        return Ok(());
    };
    let work = BatchWork::new(work_root, id);
    std::fs::create_dir_all(work.dir())
        .map_err(io(format!("cannot create {}", work.dir().display())))?;
    let input = blobs.local_copy(&batch.input_blob, &work.input()).await?;
    let ending = Ending {
        code: "batch_failed",
        message: FAILED_MESSAGE,
    };
    let max_line_bytes = batch_job::DEFAULT_MAX_LINE_BYTES;
    let salvaged = final_files(&work, &input, max_line_bytes, ending).await?;
    let output = adopt(blobs, &batch, &work.output(), "output").await?;
    let errors = adopt(blobs, &batch, &work.errors(), "error").await?;
    let counts = Counts {
        completed: salvaged.succeeded as i64,
        failed: salvaged.failed as i64,
        input_tokens: batch.input_tokens,
        output_tokens: batch.output_tokens,
        cached_tokens: batch.cached_tokens,
        reasoning_tokens: batch.reasoning_tokens,
    };
    // Nothing is in flight any more; the latency seen so far stays in the metrics.
    let mut progress = earlier_progress(&batch);
    progress.in_flight = 0;
    progress.eta_seconds = None;
    progress.requests_per_second = 0.0;
    let progress = serde_json::to_string(&progress).unwrap_or_default();
    let blobs_made: Vec<String> = [&output, &errors]
        .into_iter()
        .flatten()
        .map(|f| f.blob.clone())
        .collect();
    if !store
        .attach_results(id, output, errors, &counts, &progress)
        .await?
    {
        for blob in blobs_made {
            let _ = blobs.remove(&blob).await;
        }
        return Ok(());
    }
    tracing::info!(
        "batch {id} failed; its results are published: {} succeeded, {} failed, {} not run",
        salvaged.succeeded,
        salvaged.failed,
        salvaged.unfinished
    );
    absent_is_fine(std::fs::remove_dir_all(work.dir()))
        .map_err(io(format!("cannot remove {}", work.dir().display())))
}

/// A result file as a new File object (`None` when it is empty or missing), linked into the
/// blob store: the work copy stays until the batch is recorded, so a crash in between loses
/// nothing.
pub(super) async fn adopt(
    blobs: &Blobs,
    batch: &BatchRow,
    path: &Path,
    kind: &str,
) -> Result<Option<FileRow>, WorkerError> {
    let bytes = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
    };
    if bytes == 0 {
        return Ok(None);
    }
    let id = ids::file_id();
    blobs.store_file(path, &id).await?;
    let filename = format!("{}_{kind}.jsonl", batch.id);
    Ok(Some(FileRow::batch_output(batch, id, filename, bytes)))
}

//! Inputs and results at http(s) URLs (presigned object-store URLs included) and in S3-compatible
//! object stores (`s3://bucket/key`).
//!
//! A remote input is downloaded into the state directory before the validation pass (the
//! pipeline reads the input twice). Remote results are finalized into `STATE_DIR/final/` and
//! then uploaded; the state directory is removed only once every upload succeeded. When an
//! upload fails, the finished files stay there, `STATE_DIR/uploads.json` records what is still to
//! be delivered (it holds the URLs and headers, secrets included, so it is readable by the owner
//! only), and `batch-runner upload STATE_DIR` (or running the same `run` command again) delivers
//! them later. A result is never lost because an upload failed.

use std::path::{Path, PathBuf};

use batch_storage::{HttpOptions, Location, S3Options, StorageError};
use serde::{Deserialize, Serialize};

pub const UPLOADS: &str = "uploads.json";
pub const FINAL_DIR: &str = "final";

/// Where a job's remote ends are.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    pub input: Option<Location>,
    pub output: Option<Location>,
    pub errors: Option<Location>,
    pub input_http: HttpOptions,
    pub output_http: HttpOptions,
    pub s3: S3Options,
}

/// One file still to be uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    /// Relative to the state directory.
    pub file: PathBuf,
    /// The destination, as given (URLs with their secrets).
    pub url: String,
    pub headers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(
        "the results are complete in {dir}, but delivering them failed: {reason}. Run \
         `batch-runner upload {dir}` (or the same run command) to try again"
    )]
    Failed { dir: String, reason: String },
    #[error("{0}: {1}")]
    State(String, std::io::Error),
}

/// Uploads `(local file, destination)` pairs; records what fails in `uploads.json` and
/// reports it.
pub async fn deliver(
    state_dir: &Path,
    files: Vec<(PathBuf, Location)>,
    http: &HttpOptions,
    s3: &S3Options,
) -> Result<(), UploadError> {
    let pending: Vec<PendingUpload> = files
        .into_iter()
        .map(|(file, to)| PendingUpload {
            file: file
                .strip_prefix(state_dir)
                .map_or(file.clone(), Path::to_owned),
            url: to.to_text(),
            headers: http.headers.clone(),
        })
        .collect();
    store_pending(state_dir, &pending)?;
    upload_pending(state_dir, http, s3).await
}

/// Uploads everything `uploads.json` lists, removing each entry once delivered.
pub async fn upload_pending(
    state_dir: &Path,
    base: &HttpOptions,
    s3: &S3Options,
) -> Result<(), UploadError> {
    let mut pending = load_pending(state_dir)?;
    let mut first_error: Option<StorageError> = None;
    let mut left = Vec::new();
    for item in pending.drain(..) {
        let result = match Location::parse(&item.url) {
            Ok(to) => {
                let options = HttpOptions {
                    headers: item.headers.clone(),
                    ..base.clone()
                };
                let r = to.store(&state_dir.join(&item.file), &options, s3).await;
                if r.is_ok() {
                    tracing::info!("uploaded {} to {}", item.file.display(), to.describe());
                }
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
            left.push(item);
        }
    }
    store_pending(state_dir, &left)?;
    match first_error {
        None => Ok(()),
        Some(e) => Err(UploadError::Failed {
            dir: state_dir.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

fn uploads_path(state_dir: &Path) -> PathBuf {
    state_dir.join(UPLOADS)
}

fn load_pending(state_dir: &Path) -> Result<Vec<PendingUpload>, UploadError> {
    let path = uploads_path(state_dir);
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text)
            .map_err(|e| UploadError::State(path.display().to_string(), std::io::Error::other(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(UploadError::State(path.display().to_string(), e)),
    }
}

/// Writes the list (or removes it when empty), readable by the owner only: it holds secrets.
fn store_pending(state_dir: &Path, pending: &[PendingUpload]) -> Result<(), UploadError> {
    let path = uploads_path(state_dir);
    let fail = |e| UploadError::State(path.display().to_string(), e);
    if pending.is_empty() {
        return batch_storage::absent_is_fine(std::fs::remove_file(&path)).map_err(fail);
    }
    let text = serde_json::to_vec_pretty(pending).map_err(|e| fail(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(&text).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, &path).map_err(fail)
}

/// Whether the state directory still has uploads to deliver.
pub fn has_pending(state_dir: &Path) -> bool {
    uploads_path(state_dir).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_list_is_private_and_disappears_when_empty() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp");
        let item = PendingUpload {
            file: "final/output.jsonl".into(),
            url: "https://h/o?sig=s".into(),
            headers: vec!["x-token: t".into()],
        };
        store_pending(dir.path(), std::slice::from_ref(&item)).expect("store");
        let mode = std::fs::metadata(uploads_path(dir.path()))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_pending(dir.path()).expect("load"), vec![item]);
        assert!(has_pending(dir.path()));
        store_pending(dir.path(), &[]).expect("clear");
        assert!(!has_pending(dir.path()));
        assert!(load_pending(dir.path()).expect("load").is_empty());
    }
}

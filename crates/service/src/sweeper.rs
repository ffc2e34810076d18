//! Retention: files past their `expires_at` (uploads with `expires_after`, batch inputs after
//! the default 30 days, outputs with `output_expires_after`) are deleted in the background, and
//! the content of deleted files goes once no unfinished batch reads it; worker logs of batches
//! that ended go after [`KEEP_LOGS`].

use std::path::PathBuf;
use std::time::Duration;

use crate::blobs::Blobs;
use crate::data_dir::{KEEP_CACHE, KEEP_LOGS, remove_idle_files};
use crate::store::{Store, now_secs};

/// An upload not written to for this long was abandoned (an upload that stalls is cut off by
/// the server's body timeout long before).
const STALE_UPLOAD: Duration = Duration::from_secs(3600);

/// Runs a sweep every `every`, forever; `logs` holds ended batches' worker logs, `cache` the
/// results API's copies of files in object storage.
pub async fn run(store: Store, blobs: Blobs, every: Duration, (logs, cache): (PathBuf, PathBuf)) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        remove_stale_uploads(&blobs, STALE_UPLOAD);
        match remove_idle_files(&logs, KEEP_LOGS) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} worker logs of batches that ended long ago"),
            Err(e) => tracing::warn!("cannot clean {}: {e}", logs.display()),
        }
        if let Err(e) = remove_idle_files(&cache, KEEP_CACHE) {
            tracing::warn!("cannot clean {}: {e}", cache.display());
        }
        match store.expire_files(now_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} files reached their expires_at and were deleted"),
            Err(e) => tracing::warn!("the retention sweep failed: {e}"),
        }
        collect(&store, &blobs).await;
    }
}

/// Removes uploads a crash left unfinished (at start, every one: none can be in progress).
pub fn remove_stale_uploads(blobs: &Blobs, idle: Duration) {
    match blobs.remove_stale_incoming(idle) {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} unfinished uploads left by an earlier crash"),
        Err(e) => tracing::warn!("cannot clean the unfinished uploads: {e}"),
    }
}

/// Removes the content of deleted files no unfinished batch needs.
pub async fn collect(store: &Store, blobs: &Blobs) {
    let garbage = match store.garbage().await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!("cannot list deleted files: {e}");
            return;
        }
    };
    for file in garbage {
        // A result file's results index (if any) goes with it.
        let index = crate::api::results::index_blob(&file.blob);
        if let Err(e) = blobs.remove(&index).await {
            tracing::warn!("cannot remove the results index of {}: {e}", file.id);
        }
        match blobs.remove(&file.blob).await {
            Ok(()) => {
                if let Err(e) = store.purge_file(&file.id).await {
                    tracing::warn!("cannot forget the deleted file {}: {e}", file.id);
                }
            }
            Err(e) => tracing::warn!("cannot remove the content of {}: {e}", file.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uploads_idle_for_long_enough_are_removed() {
        let dir = tempfile::tempdir().expect("temp");
        let blobs = Blobs::local(dir.path().to_owned()).expect("blobs");
        let incoming = dir.path().join(".incoming");
        let old = incoming.join("file-old");
        std::fs::write(&old, b"half").expect("write");
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(two_hours_ago))
            .expect("age it");
        std::fs::write(incoming.join("file-busy"), b"being written").expect("write");
        remove_stale_uploads(&blobs, STALE_UPLOAD);
        assert!(!old.exists());
        assert!(incoming.join("file-busy").exists());
    }
}

//! Retention: files past their `expires_at` (uploads with `expires_after`, batch inputs after
//! the default 30 days, outputs with `output_expires_after`) are deleted in the background, and
//! the content of deleted files goes once no unfinished batch reads it.

use std::time::Duration;

use crate::blobs::Blobs;
use crate::store::{Store, now_secs};

/// Runs a sweep every `every`, forever.
pub async fn run(store: Store, blobs: Blobs, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match store.expire_files(now_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} files reached their expires_at and were deleted"),
            Err(e) => tracing::warn!("the retention sweep failed: {e}"),
        }
        collect(&store, &blobs).await;
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

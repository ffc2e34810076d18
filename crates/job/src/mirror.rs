//! A job's state in object storage (`--state-dir s3://bucket/prefix`), so that a job started on
//! one machine can be resumed on another.
//!
//! The state is worked on in a local cache directory as usual. After each checkpoint, the spool
//! bytes added since the previous one are uploaded as a numbered segment (`segments/NNNNNNNN.output`,
//! `.errors`, `.index`), then the manifest (with the number of segments) replaces the remote one.
//! The remote manifest only ever names segments that are fully uploaded. A machine whose cache
//! is missing or older than the remote state rebuilds the spool by concatenating the segments,
//! then resumes like any other.

use std::path::Path;

use batch_storage::StorageError;
use batch_storage::object::ObjectDir;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::spool::{Positions, SpoolFiles};
use crate::state::Manifest;

const REMOTE_MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RemoteManifest {
    manifest: Manifest,
    segments: u64,
}

/// What has been uploaded so far.
#[derive(Debug, Clone, Copy, Default)]
struct Uploaded {
    positions: Positions,
    segments: u64,
}

pub struct Mirror {
    dir: ObjectDir,
    uploaded: Mutex<Uploaded>,
}

fn segment(n: u64, part: &str) -> String {
    format!("segments/{n:08}.{part}")
}

impl Mirror {
    /// Connects to the remote state and brings the local cache up to date with it.
    pub async fn restore(dir: ObjectDir, local: &Path) -> Result<Self, StorageError> {
        let remote: Option<RemoteManifest> = match dir.get(REMOTE_MANIFEST).await? {
            Some(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|e| StorageError::Object {
                        what: "cannot read the state manifest in",
                        url: REMOTE_MANIFEST.into(),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let io = |source| StorageError::Io {
            path: local.display().to_string(),
            source,
        };
        let cached = Manifest::load(local).map_err(io)?;
        let Some(remote) = remote else {
            return Ok(Self {
                dir,
                uploaded: Mutex::new(Uploaded::default()),
            });
        };
        let stale = cached
            .as_ref()
            .is_none_or(|c| c.checkpoints < remote.manifest.checkpoints);
        if stale {
            tracing::info!(
                "restoring the job's state from object storage ({} segments)",
                remote.segments
            );
            tokio::fs::create_dir_all(local).await.map_err(io)?;
            let files = SpoolFiles::in_dir(local);
            for path in [&files.output, &files.errors, &files.index] {
                match tokio::fs::remove_file(path).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                    _ => {}
                }
            }
            for n in 0..remote.segments {
                dir.append_to(&segment(n, "output"), &files.output).await?;
                dir.append_to(&segment(n, "errors"), &files.errors).await?;
                dir.append_to(&segment(n, "index"), &files.index).await?;
            }
            remote.manifest.store(local).map_err(io)?;
        }
        Ok(Self {
            dir,
            uploaded: Mutex::new(Uploaded {
                positions: remote.manifest.positions,
                segments: remote.segments,
            }),
        })
    }

    /// Uploads what the checkpoint described by `manifest` added, then the manifest.
    pub async fn push(&self, local: &Path, manifest: &Manifest) -> Result<(), StorageError> {
        let mut uploaded = self.uploaded.lock().await;
        let (from, to) = (uploaded.positions, manifest.positions);
        if from == to && uploaded.segments > 0 {
            return Ok(());
        }
        let files = SpoolFiles::in_dir(local);
        let n = uploaded.segments;
        let parts = [
            ("output", &files.output, from.output, to.output),
            ("errors", &files.errors, from.errors, to.errors),
            ("index", &files.index, from.index, to.index),
        ];
        for (part, file, start, end) in parts {
            self.dir
                .put_range(&segment(n, part), file, start, end.saturating_sub(start))
                .await?;
        }
        let remote = RemoteManifest {
            manifest: manifest.clone(),
            segments: n + 1,
        };
        let bytes = serde_json::to_vec_pretty(&remote).map_err(|e| StorageError::Object {
            what: "cannot encode the state manifest for",
            url: REMOTE_MANIFEST.into(),
            reason: e.to_string(),
        })?;
        self.dir.put(REMOTE_MANIFEST, bytes).await?;
        *uploaded = Uploaded {
            positions: to,
            segments: n + 1,
        };
        Ok(())
    }

    /// Removes the remote state (the job is done).
    pub async fn remove(&self) -> Result<(), StorageError> {
        self.dir.remove_all().await
    }
}

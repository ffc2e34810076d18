//! A job's state in object storage (`--state-dir s3://bucket/prefix`), so that a job started on
//! one machine can be resumed on another.
//!
//! The state is worked on in a local cache directory as usual. After each checkpoint, the spool
//! bytes added since the previous one are uploaded as a numbered segment (three objects: the
//! output, errors and index bytes), then the manifest (with the number of segments) replaces the
//! remote one. The remote manifest only ever names segments that are fully uploaded. A machine
//! whose cache is missing or older than the remote state rebuilds the spool by concatenating the
//! segments, checks that they add up to what the manifest records, then resumes like any other.
//!
//! No object name is ever written twice with different bytes. An upload that failed, or whose
//! future was dropped, may still land later: the store can finish a request its client gave up
//! on. Were the retry to reuse the name, that late write could replace the retry's longer segment
//! with a shorter one that the manifest does not describe. So segment names carry a tag
//! (`segments/NNNNNNNN-TAG.part`), and a writer takes a fresh tag when it starts and after any
//! upload that did not finish; the manifest records from which segment on each tag applies.

use std::path::Path;

use batch_storage::StorageError;
use batch_storage::object::ObjectDir;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::state::Manifest;
use crate::state::spool::{Positions, SpoolFiles};

const REMOTE_MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RemoteManifest {
    manifest: Manifest,
    segments: u64,
    /// The tags of the segment names, each from its `first` segment on. Segments before the first
    /// entry (states written before tags existed) have untagged names.
    #[serde(default)]
    tags: Vec<TagRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TagRun {
    first: u64,
    tag: String,
}

impl RemoteManifest {
    fn segment(&self, n: u64, part: &str) -> String {
        segment_name(&self.tags, n, part)
    }
}

fn segment_name(tags: &[TagRun], n: u64, part: &str) -> String {
    match tags.iter().rev().find(|t| t.first <= n) {
        Some(t) => format!("segments/{n:08}-{}.{part}", t.tag),
        None => format!("segments/{n:08}.{part}"),
    }
}

/// What has been uploaded so far.
#[derive(Debug, Clone, Default)]
struct Uploaded {
    positions: Positions,
    segments: u64,
    tags: Vec<TagRun>,
    /// The tag the next segment may use; `None` until this writer has finished an upload under a
    /// tag of its own (see the module's doc).
    tag: Option<String>,
}

pub struct Mirror {
    dir: ObjectDir,
    uploaded: Mutex<Uploaded>,
}

impl Mirror {
    /// Connects to the remote state and brings the local cache up to date with it.
    pub async fn restore(dir: ObjectDir, local: &Path) -> Result<Self, StorageError> {
        let remote: Option<RemoteManifest> = match dir.get(REMOTE_MANIFEST).await? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                damaged(&dir, format!("its {REMOTE_MANIFEST} cannot be read: {e}"))
            })?),
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
            rebuild(&dir, &remote, local).await?;
            remote.manifest.store(local).map_err(io)?;
        }
        Ok(Self {
            dir,
            uploaded: Mutex::new(Uploaded {
                positions: remote.manifest.positions,
                segments: remote.segments,
                tags: remote.tags,
                tag: None,
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
        let n = uploaded.segments;
        // Taken, not borrowed: should this upload fail or be dropped half-way, the next one
        // must not reuse its names.
        let tag = match uploaded.tag.take() {
            Some(tag) => tag,
            None => {
                let tag = crate::random_tag();
                uploaded.tags.retain(|t| t.first < n);
                uploaded.tags.push(TagRun {
                    first: n,
                    tag: tag.clone(),
                });
                tag
            }
        };
        let files = SpoolFiles::in_dir(local);
        for ((part, file, start), (_, _, end)) in
            parts(&files, from).into_iter().zip(parts(&files, to))
        {
            let name = segment_name(&uploaded.tags, n, part);
            self.dir
                .put_range(&name, file, start, end.saturating_sub(start))
                .await?;
        }
        let remote = RemoteManifest {
            manifest: manifest.clone(),
            segments: n + 1,
            tags: uploaded.tags.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&remote).map_err(|e| StorageError::Object {
            what: "cannot encode the state manifest for",
            url: self.dir.url().to_owned(),
            reason: e.to_string(),
        })?;
        self.dir.put(REMOTE_MANIFEST, bytes).await?;
        uploaded.positions = to;
        uploaded.segments = n + 1;
        uploaded.tag = Some(tag);
        Ok(())
    }

    /// Removes the remote state (the job is done).
    pub async fn remove(&self) -> Result<(), StorageError> {
        self.dir.remove_all().await
    }
}

/// Replaces the local spool files with the concatenated segments, and refuses a result that is
/// not exactly as long as the manifest records: resuming from it would lose or repeat results.
async fn rebuild(
    dir: &ObjectDir,
    remote: &RemoteManifest,
    local: &Path,
) -> Result<(), StorageError> {
    let files = SpoolFiles::in_dir(local);
    for (part, path, expected) in parts(&files, remote.manifest.positions) {
        batch_storage::absent_is_fine(tokio::fs::remove_file(path).await).map_err(|source| {
            StorageError::Io {
                path: path.display().to_string(),
                source,
            }
        })?;
        let mut total = 0;
        for n in 0..remote.segments {
            let name = remote.segment(n, part);
            total += match dir.append_to(&name, path).await {
                Ok(size) => size,
                // A segment that is not there will not appear by asking again.
                Err(e) => match dir.size(&name).await {
                    Ok(None) => return Err(damaged(dir, format!("its segment {name} is missing"))),
                    _ => return Err(e),
                },
            };
        }
        if total != expected {
            return Err(damaged(
                dir,
                format!(
                    "its {} {part} segments hold {total} bytes but its manifest records {expected}",
                    remote.segments
                ),
            ));
        }
    }
    Ok(())
}

/// Each spool file with its part's name in segment names and its length at `at`.
fn parts(files: &SpoolFiles, at: Positions) -> [(&'static str, &Path, u64); 3] {
    [
        ("output", &files.output, at.output),
        ("errors", &files.errors, at.errors),
        ("index", &files.index, at.index),
    ]
}

fn damaged(dir: &ObjectDir, what: String) -> StorageError {
    StorageError::Damaged {
        url: dir.url().to_owned(),
        reason: format!("{what}; the job cannot resume from it"),
    }
}

#[cfg(test)]
mod tests;

//! Where file contents live: a local directory (`DATA_DIR/files/`, the default) or a prefix in
//! S3-compatible object storage (`--storage-url s3://bucket/prefix`, for several replicas and
//! worker hosts). An object is named by its file id, never by anything a client sent.
//!
//! An upload is written whole before it gets its name: locally to `files/.incoming/` then
//! synced and renamed, in object storage as a multipart upload that only appears when complete.
//! Either way a crash never leaves a half file under a real name.

use std::io;
use std::path::{Path, PathBuf};

use batch_storage::object::{ObjectDir, ObjectWriter};
use batch_storage::{StorageError, absent_is_fine};
use tokio::io::{AsyncWriteExt, BufWriter};

const WRITE_BUFFER: usize = 1024 * 1024;

#[derive(Clone)]
pub enum Blobs {
    Local(PathBuf),
    Object(ObjectDir),
}

/// An upload in progress; dropped without [`Incoming::commit`], it leaves nothing behind.
pub struct Incoming {
    to: IncomingTo,
    pub bytes: u64,
}

enum IncomingTo {
    /// Buffered so a stream of small network chunks becomes few large writes (each write is a
    /// hop to a blocking thread).
    Local {
        file: Option<BufWriter<tokio::fs::File>>,
        temp: PathBuf,
    },
    Object(Option<ObjectWriter>),
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Blobs {
    pub fn local(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join(".incoming"))?;
        Ok(Self::Local(dir))
    }

    /// Removes local uploads left unfinished (a crash mid-upload) that have not been written
    /// to for `idle`; returns how many. Object storage drops unfinished multipart uploads by its
    /// own lifecycle rules.
    pub fn remove_stale_incoming(&self, idle: std::time::Duration) -> io::Result<usize> {
        let Blobs::Local(dir) = self else {
            return Ok(0);
        };
        crate::data_dir::remove_idle_files(&dir.join(".incoming"), idle)
    }

    pub async fn incoming(&self, name: &str) -> Result<Incoming, BlobError> {
        let to = match self {
            Blobs::Local(dir) => {
                let temp = dir.join(".incoming").join(name);
                let file = tokio::fs::File::create(&temp).await.map_err(io_at(&temp))?;
                IncomingTo::Local {
                    file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
                    temp,
                }
            }
            Blobs::Object(dir) => IncomingTo::Object(Some(dir.writer(name))),
        };
        Ok(Incoming { to, bytes: 0 })
    }

    /// Stores a finished local file (a worker's result) as `name`: a hard link when local (the
    /// original stays where it is), an upload to object storage otherwise.
    pub async fn store_file(&self, from: &Path, name: &str) -> Result<(), BlobError> {
        match self {
            Blobs::Local(dir) => {
                let to = dir.join(name);
                if std::fs::hard_link(from, &to).is_err() {
                    std::fs::copy(from, &to).map_err(io_at(from))?;
                }
                Ok(())
            }
            Blobs::Object(dir) => Ok(dir.put_file(name, from).await?),
        }
    }

    /// A local path with the content of `name`: the file itself when local, else a download
    /// to `cache` (kept: a worker that restarts does not download again).
    pub async fn local_copy(&self, name: &str, cache: &Path) -> Result<PathBuf, BlobError> {
        match self {
            Blobs::Local(dir) => Ok(dir.join(name)),
            Blobs::Object(dir) => {
                let want = dir.size(name).await?;
                let have = std::fs::metadata(cache).ok().map(|m| m.len());
                if have.is_none() || have != want {
                    let temp = cache.with_extension("part");
                    let _ = std::fs::remove_file(&temp);
                    dir.append_to(name, &temp).await?;
                    std::fs::rename(&temp, cache).map_err(io_at(cache))?;
                }
                Ok(cache.to_owned())
            }
        }
    }

    /// Up to the first `max` bytes of `name`.
    pub async fn head(&self, name: &str, max: u64) -> Result<Vec<u8>, BlobError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        match self {
            Blobs::Local(dir) => {
                let path = dir.join(name);
                let file = tokio::fs::File::open(&path).await.map_err(io_at(&path))?;
                file.take(max)
                    .read_to_end(&mut out)
                    .await
                    .map_err(io_at(&path))?;
            }
            Blobs::Object(dir) => {
                let len = dir.size(name).await?.unwrap_or(0).min(max);
                let mut stream = dir.read_range(name, 0..len).await?;
                while let Some(chunk) = stream.next().await {
                    out.extend_from_slice(&chunk.map_err(io_at(Path::new(name)))?);
                }
            }
        }
        Ok(out)
    }

    pub async fn remove(&self, name: &str) -> Result<(), BlobError> {
        match self {
            Blobs::Local(dir) => {
                absent_is_fine(std::fs::remove_file(dir.join(name))).map_err(io_at(&dir.join(name)))
            }
            Blobs::Object(dir) => Ok(dir.remove(name).await?),
        }
    }
}

impl Incoming {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        match &mut self.to {
            IncomingTo::Local {
                file: Some(f),
                temp,
            } => {
                f.write_all(chunk).await.map_err(io_at(temp))?;
            }
            IncomingTo::Object(Some(w)) => w.write(chunk).await?,
            _ => {}
        }
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Makes the content whole and gives it its name in `blobs`.
    pub async fn commit(mut self, blobs: &Blobs, name: &str) -> Result<(), BlobError> {
        match (&mut self.to, blobs) {
            (IncomingTo::Local { file, temp }, Blobs::Local(dir)) => {
                if let Some(mut f) = file.take() {
                    f.flush().await.map_err(io_at(temp))?;
                    f.get_mut().sync_all().await.map_err(io_at(temp))?;
                }
                tokio::fs::rename(&temp, dir.join(name))
                    .await
                    .map_err(io_at(temp))
            }
            (IncomingTo::Object(writer), _) => match writer.take() {
                Some(w) => Ok(w.finish().await?),
                None => Ok(()),
            },
            (IncomingTo::Local { temp, .. }, Blobs::Object(_)) => Err(io_at(temp)(
                io::Error::other("an upload started locally cannot end in object storage"),
            )),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        match &mut self.to {
            // After a commit the temporary name is gone and this does nothing.
            IncomingTo::Local { temp, .. } => {
                let _ = std::fs::remove_file(temp);
            }
            IncomingTo::Object(writer) => {
                if let Some(w) = writer.take()
                    && let Ok(handle) = tokio::runtime::Handle::try_current()
                {
                    handle.spawn(w.abort());
                }
            }
        }
    }
}

//! Where file contents live: one file per object under `DATA_DIR/files/`, named by the object's
//! id (never by anything a client sent). An upload is written to `files/.incoming/` and renamed
//! into place once whole and synced, so a crash never leaves a half file under a real name.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncWriteExt, BufWriter};

const WRITE_BUFFER: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

/// An upload in progress; dropped without [`Incoming::commit`], it leaves nothing behind.
pub struct Incoming {
    /// Buffered so a stream of small network chunks becomes few large writes (each write is a
    /// hop to a blocking thread).
    file: Option<BufWriter<tokio::fs::File>>,
    temp: PathBuf,
    pub bytes: u64,
}

impl Blobs {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join(".incoming"))?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub async fn incoming(&self, name: &str) -> io::Result<Incoming> {
        let temp = self.dir.join(".incoming").join(name);
        let file = tokio::fs::File::create(&temp).await?;
        Ok(Incoming {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp,
            bytes: 0,
        })
    }

    /// Gives a finished file on the same file system (a worker's result) a name in the store,
    /// as a hard link (a copy across file systems); the original stays where it is.
    pub fn link(&self, from: &Path, name: &str) -> io::Result<()> {
        let to = self.path(name);
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to)?;
        }
        Ok(())
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Incoming {
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if let Some(f) = &mut self.file {
            f.write_all(chunk).await?;
        }
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Syncs the content and gives it its name in `blobs`.
    pub async fn commit(mut self, blobs: &Blobs, name: &str) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
            f.get_mut().sync_all().await?;
        }
        tokio::fs::rename(&self.temp, blobs.path(name)).await
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // After a commit the temporary name is gone and this does nothing.
        let _ = std::fs::remove_file(&self.temp);
    }
}

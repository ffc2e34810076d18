//! `s3://bucket/key` locations, in AWS S3 or any S3-compatible store (MinIO, Ceph, Garage, …).
//!
//! Credentials, region and endpoint come from the standard AWS environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, …); [`S3Options`] overrides endpoint, region and addressing style. Uploads
//! are multipart and streamed from the local file through a fixed-size buffer, so memory stays
//! bounded whatever the file's size. The object store client retries failed requests itself.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::StorageError;

/// Size of one uploaded part, and of the upload buffer.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once: memory is about `PART_BYTES * (UPLOAD_CONCURRENCY + 1)`.
const UPLOAD_CONCURRENCY: usize = 2;

/// Settings beyond the environment.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct S3Options {
    /// The store's endpoint (for S3-compatible stores); `http://` endpoints are allowed.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `https://bucket.host/key` addressing instead of the default `https://host/bucket/key`.
    pub virtual_hosted_style: bool,
}

pub fn parse(text: &str) -> Result<reqwest::Url, StorageError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| StorageError::BadUrl(text.to_owned(), e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) || url.path().trim_start_matches('/').is_empty() {
        return Err(StorageError::BadUrl(
            text.to_owned(),
            "write it as s3://bucket/key".into(),
        ));
    }
    Ok(url)
}

impl S3Options {
    fn open(&self, url: &reqwest::Url) -> Result<(Arc<dyn ObjectStore>, ObjectPath), StorageError> {
        let fail = |reason: String| StorageError::Object {
            what: "cannot open",
            url: url.to_string(),
            reason,
        };
        let bucket = url.host_str().unwrap_or_default();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if self.virtual_hosted_style {
            builder = builder.with_virtual_hosted_style_request(true);
        }
        let store = builder.build().map_err(|e| fail(e.to_string()))?;
        let key = url.path().trim_start_matches('/');
        let path = ObjectPath::parse(key).map_err(|e| fail(e.to_string()))?;
        Ok((Arc::new(store), path))
    }
}

/// Streams the object into `dest` (through a temporary file beside it). Returns the size.
pub async fn download(
    url: &reqwest::Url,
    dest: &std::path::Path,
    options: &S3Options,
) -> Result<u64, StorageError> {
    let (store, path) = options.open(url)?;
    let fail = |reason: String| StorageError::Object {
        what: "cannot download",
        url: url.to_string(),
        reason,
    };
    let io = |source| StorageError::Io {
        path: dest.display().to_string(),
        source,
    };
    let tmp = crate::with_suffix(dest, ".part");
    let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
    let mut stream = store
        .get(&path)
        .await
        .map_err(|e| fail(e.to_string()))?
        .into_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        file.write_all(&chunk).await.map_err(io)?;
        size += chunk.len() as u64;
    }
    file.sync_all().await.map_err(io)?;
    tokio::fs::rename(&tmp, dest).await.map_err(io)?;
    Ok(size)
}

/// Uploads the file as a multipart upload with bounded memory.
pub async fn upload(
    src: &std::path::Path,
    url: &reqwest::Url,
    options: &S3Options,
) -> Result<(), StorageError> {
    let (store, path) = options.open(url)?;
    let fail = |reason: String| StorageError::Object {
        what: "cannot upload to",
        url: url.to_string(),
        reason,
    };
    let mut file = tokio::fs::File::open(src)
        .await
        .map_err(|source| StorageError::Io {
            path: src.display().to_string(),
            source,
        })?;
    let mut writer =
        BufWriter::with_capacity(store, path, PART_BYTES).with_max_concurrency(UPLOAD_CONCURRENCY);
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|source| StorageError::Io {
                path: src.display().to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        if let Err(e) = writer.write_all(&buf[..n]).await {
            let _ = writer.abort().await;
            return Err(fail(e.to_string()));
        }
    }
    writer.shutdown().await.map_err(|e| fail(e.to_string()))
}

/// A "directory" in an object store: every key under one prefix. Holds a job's state so that
/// another machine can pick the job up.
#[derive(Clone)]
pub struct ObjectDir {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl ObjectDir {
    pub fn open(url: &reqwest::Url, options: &S3Options) -> Result<Self, StorageError> {
        let (store, prefix) = options.open(url)?;
        Ok(Self {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    /// An object directory over any store (the tests use an in-memory one). `url` is what
    /// messages call it.
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Self {
        Self {
            store,
            prefix: ObjectPath::from(prefix),
            url: url.to_owned(),
        }
    }

    /// Where the directory is, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    fn fail(&self, what: &'static str, e: impl std::fmt::Display) -> StorageError {
        StorageError::Object {
            what,
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Stores a small object.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.store
            .put(&self.key(name), bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| self.fail("cannot write to", e))
    }

    /// A small object, or `None` when there is none by that name.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.store.get(&self.key(name)).await {
            Ok(got) => got
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| self.fail("cannot read", e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("cannot read", e)),
        }
    }

    /// Uploads `len` bytes of the local file from `offset` as one object, streaming.
    pub async fn put_range(
        &self,
        name: &str,
        file: &std::path::Path,
        offset: u64,
        len: u64,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncSeekExt;
        let io = |source| StorageError::Io {
            path: file.display().to_string(),
            source,
        };
        let mut src = tokio::fs::File::open(file).await.map_err(io)?;
        src.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(io)?;
        let mut src = src.take(len);
        let mut writer = BufWriter::with_capacity(self.store.clone(), self.key(name), PART_BYTES)
            .with_max_concurrency(UPLOAD_CONCURRENCY);
        let mut buf = vec![0u8; 1024 * 1024];
        let mut copied = 0u64;
        loop {
            let n = src.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if let Err(e) = writer.write_all(&buf[..n]).await {
                let _ = writer.abort().await;
                return Err(self.fail("cannot write to", e));
            }
        }
        // A file shorter than asked for must not become a shorter object under a name whose
        // reader expects `len` bytes.
        if copied != len {
            let _ = writer.abort().await;
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{copied} bytes from offset {offset} where {len} were to be uploaded"),
            )));
        }
        writer
            .shutdown()
            .await
            .map_err(|e| self.fail("cannot write to", e))
    }

    /// Appends the object `name` to the local file `to`, streaming.
    pub async fn append_to(&self, name: &str, to: &std::path::Path) -> Result<u64, StorageError> {
        let io = |source| StorageError::Io {
            path: to.display().to_string(),
            source,
        };
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(to)
            .await
            .map_err(io)?;
        let mut stream = self
            .store
            .get(&self.key(name))
            .await
            .map_err(|e| self.fail("cannot read", e))?
            .into_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.fail("cannot read", e))?;
            out.write_all(&chunk).await.map_err(io)?;
            size += chunk.len() as u64;
        }
        out.sync_all().await.map_err(io)?;
        Ok(size)
    }

    /// The "subdirectory" `name` of this one.
    pub fn child(&self, name: &str) -> ObjectDir {
        ObjectDir {
            store: self.store.clone(),
            prefix: self.key(name),
            url: format!("{}/{name}", self.url.trim_end_matches('/')),
        }
    }

    /// A streamed multipart upload to `name`; the object appears only when it is finished.
    pub fn writer(&self, name: &str) -> ObjectWriter {
        ObjectWriter {
            inner: BufWriter::with_capacity(self.store.clone(), self.key(name), PART_BYTES)
                .with_max_concurrency(UPLOAD_CONCURRENCY),
            dir: self.clone(),
        }
    }

    /// Uploads a whole local file as `name`.
    pub async fn put_file(&self, name: &str, file: &std::path::Path) -> Result<(), StorageError> {
        let len = tokio::fs::metadata(file)
            .await
            .map_err(|source| StorageError::Io {
                path: file.display().to_string(),
                source,
            })?
            .len();
        self.put_range(name, file, 0, len).await
    }

    /// The size of `name`, or `None` when there is no such object.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&self.key(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("cannot read", e)),
        }
    }

    /// Bytes `range` of `name`, as a stream.
    pub async fn read_range(
        &self,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> Result<BoxStream<'static, std::io::Result<bytes::Bytes>>, StorageError> {
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&self.key(name), options)
            .await
            .map_err(|e| self.fail("cannot read", e))?;
        Ok(got
            .into_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed())
    }

    /// Deletes one object (a missing one is not an error).
    pub async fn remove(&self, name: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.key(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("cannot delete", e)),
        }
    }

    /// Deletes every object under the prefix.
    pub async fn remove_all(&self) -> Result<(), StorageError> {
        let mut listing = self.store.list(Some(&self.prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            keys.push(meta.map_err(|e| self.fail("cannot list", e))?.location);
        }
        for key in keys {
            self.store
                .delete(&key)
                .await
                .map_err(|e| self.fail("cannot delete in", e))?;
        }
        Ok(())
    }
}

/// An upload in progress (see [`ObjectDir::writer`]).
pub struct ObjectWriter {
    inner: BufWriter,
    dir: ObjectDir,
}

impl ObjectWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.inner
            .write_all(chunk)
            .await
            .map_err(|e| self.dir.fail("cannot write to", e))
    }

    /// Completes the upload: the object exists from now on.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        self.inner
            .shutdown()
            .await
            .map_err(|e| self.dir.fail("cannot write to", e))
    }

    /// Gives the upload up; nothing appears.
    pub async fn abort(mut self) {
        let _ = self.inner.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn a_range_the_file_does_not_hold_is_refused_and_nothing_is_stored() {
        let dir = ObjectDir::with_store(Arc::new(InMemory::new()), "p", "memory://p");
        let file = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(file.path(), b"0123456789").expect("write");

        dir.put_range("whole", file.path(), 2, 8)
            .await
            .expect("put");
        assert_eq!(
            dir.get("whole").await.expect("get"),
            Some(b"23456789".to_vec())
        );

        let err = dir
            .put_range("short", file.path(), 2, 20)
            .await
            .expect_err("a short range was stored")
            .to_string();
        assert!(err.contains("8 bytes from offset 2 where 20"), "{err}");
        assert_eq!(dir.size("short").await.expect("size"), None);
    }
}

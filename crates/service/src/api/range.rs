//! Streaming a stored file, whole or one `Range: bytes=…` of it (so a large output can be
//! fetched in parts or resumed). Multi-range requests get the whole file, which RFC 9110 allows.

use std::io::SeekFrom;
use std::path::Path;

use axum::body::Body;
use axum::http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::blobs::Blobs;
use crate::error::ApiError;

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    All,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

pub fn wanted(header: Option<&str>, len: u64) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Wanted::All;
    };
    let (start, end) = (start.trim(), end.trim());
    let parsed = match (start.parse::<u64>(), end.parse::<u64>()) {
        (Ok(s), Ok(e)) if s <= e => Some((s, e.min(len.saturating_sub(1)))),
        (Ok(s), Err(_)) if end.is_empty() => Some((s, len.saturating_sub(1))),
        (Err(_), Ok(n)) if start.is_empty() && n > 0 => {
            Some((len.saturating_sub(n), len.saturating_sub(1)))
        }
        _ => return Wanted::All,
    };
    match parsed {
        Some((s, e)) if s < len && s <= e => Wanted::Part(s, e),
        _ => Wanted::Unsatisfiable,
    }
}

/// Answers a GET of a stored file's content (local or in object storage), whole or one `Range`
/// of it.
pub async fn serve_blob(
    blobs: &Blobs,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let read = |e: &dyn std::fmt::Display| ApiError::internal("cannot read the file's content", e);
    match blobs {
        Blobs::Local(dir) => serve_file(&dir.join(name), headers).await,
        Blobs::Object(dir) => {
            let len = dir
                .size(name)
                .await
                .map_err(|e| read(&e))?
                .ok_or_else(|| read(&format!("{name}: no such object")))?;
            let (dir, key) = (dir.clone(), name.to_owned());
            respond(len, headers, |start, count| async move {
                let stream = dir
                    .read_range(&key, start..start + count)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(Body::from_stream(stream))
            })
            .await
            .map_err(|e| read(&format!("{name}: {e}")))
        }
    }
}

async fn serve_file(path: &Path, headers: &HeaderMap) -> Result<Response, ApiError> {
    let read = |e| ApiError::internal("cannot read the file's content", e);
    let file = tokio::fs::File::open(path).await.map_err(read)?;
    let len = file.metadata().await.map_err(read)?.len();
    serve_prefix(file, len, headers).await.map_err(read)
}

/// Serves the first `len` bytes of `file` (a spool may be longer than its last checkpoint).
pub async fn serve_prefix(
    mut file: tokio::fs::File,
    len: u64,
    headers: &HeaderMap,
) -> std::io::Result<Response> {
    respond(len, headers, |start, count| async move {
        file.seek(SeekFrom::Start(start)).await?;
        Ok(Body::from_stream(ReaderStream::with_capacity(
            file.take(count),
            256 * 1024,
        )))
    })
    .await
}

/// The answer for content of `len` bytes: 200 with all of it, 206 with the asked range, or 416;
/// `body(start, count)` makes the bytes.
pub async fn respond<F, Fut>(len: u64, headers: &HeaderMap, body: F) -> std::io::Result<Response>
where
    F: FnOnce(u64, u64) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Body>>,
{
    let range = headers.get(RANGE).and_then(|h| h.to_str().ok());
    let builder = Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(ACCEPT_RANGES, "bytes");
    let (builder, start, count) = match wanted(range, len) {
        Wanted::All => (builder.status(StatusCode::OK), 0, len),
        Wanted::Part(s, e) => (
            builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_RANGE, format!("bytes {s}-{e}/{len}")),
            s,
            e - s + 1,
        ),
        Wanted::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .map_err(std::io::Error::other);
        }
    };
    let body = if count == 0 {
        Body::empty()
    } else {
        body(start, count).await?
    };
    builder
        .header(CONTENT_LENGTH, count)
        .body(body)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(wanted(None, 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Part(0, 9));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=50-1000"), 100), Wanted::Part(50, 99));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=9-2"), 100), Wanted::All);
    }
}

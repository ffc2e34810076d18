//! Where a job's input comes from and where its results go.
//!
//! A location is a local path, an `http(s)://` URL, or an `s3://bucket/key` object in any
//! S3-compatible store (see [`object`]). URLs are read with a streaming GET and
//! written with a PUT whose body streams from a local file with its `Content-Length` set: that is
//! the form presigned object-store URLs take, and S3 refuses a presigned PUT sent with chunked
//! transfer encoding. Transfers are retried with backoff on transport errors, 408, 429 and 5xx.
//!
//! URLs can carry secrets (a presigned URL's signature is in its query string; credentials can
//! sit in its user info), so every message names a URL through [`redact`].

pub mod object;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use object::S3Options;

use reqwest::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncWriteExt;

/// A place to read from or write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Http(reqwest::Url),
    /// `s3://bucket/key`.
    Object(reqwest::Url),
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid URL {0}: {1}")]
    BadUrl(String, String),
    #[error("invalid header {0:?}: write it as 'Name: value'")]
    BadHeader(String),
    #[error("{what} {url}: {reason}")]
    Transfer {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("{what} {url}: {reason}")]
    Object {
        what: &'static str,
        url: String,
        reason: String,
    },
    /// A job's state in object storage that cannot be resumed from as it is: asking again
    /// gives the same answer (unlike a failed transfer).
    #[error("the job's state in {url} is damaged: {reason}")]
    Damaged { url: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Location {
    /// `http(s)://…` and `s3://…` are remote; anything else is a local path. Other schemes are
    /// refused rather than taken for a relative path.
    pub fn parse(text: &str) -> Result<Self, StorageError> {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return reqwest::Url::parse(text)
                .map(Location::Http)
                .map_err(|e| StorageError::BadUrl(redact_text(text), e.to_string()));
        }
        if lower.starts_with("s3://") {
            return object::parse(text).map(Location::Object);
        }
        if lower.starts_with("file://") {
            return reqwest::Url::parse(text)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .map(Location::Local)
                .ok_or_else(|| {
                    StorageError::BadUrl(
                        text.to_owned(),
                        "write it as file:///absolute/path".into(),
                    )
                });
        }
        if let Some((scheme, _)) = text.split_once("://")
            && !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+')
        {
            return Err(StorageError::Unsupported(format!(
                "{scheme}:// locations are not supported; use a local path, an http(s) URL (a \
                 presigned URL works) or s3://bucket/key"
            )));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    /// The last path segment (for default names derived from a location).
    pub fn file_name(&self) -> Option<String> {
        match self {
            Location::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            Location::Http(u) | Location::Object(u) => u
                .path_segments()
                .and_then(|mut s| s.rfind(|p| !p.is_empty()))
                .map(str::to_owned),
        }
    }

    /// The same place with `.errors.jsonl` for `.jsonl` at the end of its path. `None` for URLs
    /// with a query string (a presigned URL is signed for one object only).
    pub fn errors_sibling(&self) -> Option<Location> {
        let sibling = |path: &str| {
            let stem = path.strip_suffix(".jsonl").unwrap_or(path);
            format!("{stem}.errors.jsonl")
        };
        match self {
            Location::Local(p) => Some(Location::Local(PathBuf::from(sibling(
                &p.to_string_lossy(),
            )))),
            Location::Http(u) | Location::Object(u) if u.query().is_some() => None,
            Location::Http(u) => {
                let mut e = u.clone();
                e.set_path(&sibling(u.path()));
                Some(Location::Http(e))
            }
            Location::Object(u) => {
                let mut e = u.clone();
                e.set_path(&sibling(u.path()));
                Some(Location::Object(e))
            }
        }
    }

    /// The text that parses back to this location (secrets included: for storage, not logs).
    pub fn to_text(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::Http(u) | Location::Object(u) => u.to_string(),
        }
    }

    /// How to name this location in messages and logs: URLs without their secrets.
    pub fn describe(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::Http(u) | Location::Object(u) => redact(u),
        }
    }

    /// Copies a remote location to the local file `dest`, streaming.
    pub async fn fetch(
        &self,
        dest: &Path,
        http: &HttpOptions,
        s3: &S3Options,
    ) -> Result<u64, StorageError> {
        match self {
            Location::Local(p) => {
                tokio::fs::copy(p, dest)
                    .await
                    .map_err(|source| StorageError::Io {
                        path: p.display().to_string(),
                        source,
                    })
            }
            Location::Http(u) => download(u, dest, http).await,
            Location::Object(u) => object::download(u, dest, s3).await,
        }
    }

    /// Delivers the local file `src` here, streaming.
    pub async fn store(
        &self,
        src: &Path,
        http: &HttpOptions,
        s3: &S3Options,
    ) -> Result<(), StorageError> {
        match self {
            Location::Local(p) => {
                tokio::fs::copy(src, p)
                    .await
                    .map(|_| ())
                    .map_err(|source| StorageError::Io {
                        path: p.display().to_string(),
                        source,
                    })
            }
            Location::Http(u) => upload(src, u, http).await,
            Location::Object(u) => object::upload(src, u, s3).await,
        }
    }
}

/// A URL without what can be secret: user info and the query string (a presigned URL's
/// signature) are replaced by `…`.
pub fn redact(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str("…@");
    }
    shown.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

fn redact_text(text: &str) -> String {
    reqwest::Url::parse(text).map_or_else(|_| "(unparseable URL)".to_owned(), |u| redact(&u))
}

/// How transfers talk to URLs.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Extra headers, as `Name: value`.
    pub headers: Vec<String>,
    /// Attempts in all (the first included).
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest time one attempt may take.
    pub timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(3600),
        }
    }
}

impl HttpOptions {
    fn client(&self) -> Result<reqwest::Client, StorageError> {
        let mut headers = HeaderMap::new();
        for h in &self.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| StorageError::BadHeader(h.clone()))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| StorageError::BadHeader(h.clone()))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|_| StorageError::BadHeader(h.clone()))?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .timeout(self.timeout)
            .build()
            .map_err(|e| StorageError::Transfer {
                what: "cannot set up HTTP for",
                url: "transfers".into(),
                reason: e.to_string(),
            })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
            .min(self.max_backoff)
    }
}

fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || status >= 500
}

/// What went wrong with one attempt, and whether another may help.
struct Failure {
    reason: String,
    retry: bool,
}

/// Runs `attempt` until it succeeds, fails for good, or the attempts are used up.
async fn with_retries<T, F: Future<Output = Result<T, Failure>>>(
    options: &HttpOptions,
    what: &'static str,
    url: &reqwest::Url,
    mut attempt: impl FnMut() -> F,
) -> Result<T, StorageError> {
    let mut n = 0;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(f) => {
                n += 1;
                if !f.retry || n >= options.attempts.max(1) {
                    return Err(StorageError::Transfer {
                        what,
                        url: redact(url),
                        reason: format!("{} (after {n} attempts)", f.reason),
                    });
                }
                tracing::warn!("{what} {}: {}; retrying", redact(url), f.reason);
                tokio::time::sleep(options.backoff(n - 1)).await;
            }
        }
    }
}

fn transport(e: &reqwest::Error) -> Failure {
    // reqwest's message names the URL; keep only the kind of failure.
    let reason = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the connection failed".to_owned()
    };
    Failure {
        reason,
        retry: true,
    }
}

fn status_failure(status: reqwest::StatusCode) -> Failure {
    Failure {
        reason: format!("the server answered {status}"),
        retry: retryable_status(status.as_u16()),
    }
}

/// `GET url`, its response when it is a success.
async fn get_ok(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> Result<reqwest::Response, Failure> {
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| transport(&e))?;
    if !response.status().is_success() {
        return Err(status_failure(response.status()));
    }
    Ok(response)
}

/// Downloads `url` to `dest` (through a temporary file beside it), streaming. Returns the size.
pub async fn download(
    url: &reqwest::Url,
    dest: &Path,
    options: &HttpOptions,
) -> Result<u64, StorageError> {
    let client = options.client()?;
    let tmp = with_suffix(dest, ".part");
    let io = |source| StorageError::Io {
        path: dest.display().to_string(),
        source,
    };
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let size = with_retries(options, "cannot download", url, || async {
        let mut response = get_ok(&client, url).await?;
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| Failure {
            reason: e.to_string(),
            retry: false,
        })?;
        let mut size = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
            file.write_all(&chunk).await.map_err(|e| Failure {
                reason: e.to_string(),
                retry: false,
            })?;
            size += chunk.len() as u64;
        }
        file.sync_all().await.map_err(|e| Failure {
            reason: e.to_string(),
            retry: false,
        })?;
        Ok(size)
    })
    .await?;
    tokio::fs::rename(&tmp, dest).await.map_err(io)?;
    Ok(size)
}

/// Many small downloads into memory with one client (making a client loads the system's
/// certificates: too slow to do per download), retried as its options say.
pub struct Fetcher {
    client: reqwest::Client,
    options: HttpOptions,
}

/// What a [`Fetcher`] got: the body, and the type the server gave it.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

impl Fetcher {
    pub fn new(options: HttpOptions) -> Result<Self, StorageError> {
        Ok(Self {
            client: options.client()?,
            options,
        })
    }

    /// GETs `url`, refusing (without retrying) a body over `max` bytes. Errors name the URL
    /// without its query (a presigned URL's signature stays out of messages).
    pub async fn get(&self, url: &reqwest::Url, max: usize) -> Result<Fetched, StorageError> {
        let too_large = |n: u64| Failure {
            reason: format!("the body is {n} bytes or more, over the {max} allowed"),
            retry: false,
        };
        with_retries(&self.options, "cannot download", url, || async {
            let mut response = get_ok(&self.client, url).await?;
            if let Some(n) = response.content_length().filter(|&n| n > max as u64) {
                return Err(too_large(n));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
                if bytes.len() + chunk.len() > max {
                    return Err(too_large((bytes.len() + chunk.len()) as u64));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(Fetched {
                bytes,
                content_type,
            })
        })
        .await
    }
}

/// Uploads the file at `src` to `url` with PUT, streaming it with its `Content-Length`.
pub async fn upload(
    src: &Path,
    url: &reqwest::Url,
    options: &HttpOptions,
) -> Result<(), StorageError> {
    let client = options.client()?;
    with_retries(options, "cannot upload to", url, || async {
        let file = tokio::fs::File::open(src).await.map_err(|e| Failure {
            reason: format!("{}: {e}", src.display()),
            retry: false,
        })?;
        let len = file
            .metadata()
            .await
            .map_err(|e| Failure {
                reason: e.to_string(),
                retry: false,
            })?
            .len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let response = client
            .put(url.clone())
            .header(CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(status_failure(response.status()))
        }
    })
    .await
}

/// A removal (of a file, a directory) that found nothing to remove succeeded.
pub fn absent_is_fine(removed: std::io::Result<()>) -> std::io::Result<()> {
    match removed {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn parses_locations_and_refuses_unknown_schemes() {
        assert_eq!(
            Location::parse("out/r.jsonl").expect("local"),
            Location::Local("out/r.jsonl".into())
        );
        assert!(matches!(
            Location::parse("HTTPS://h/x").expect("url"),
            Location::Http(_)
        ));
        assert!(matches!(
            Location::parse("s3://bucket/key").expect("s3"),
            Location::Object(_)
        ));
        assert_eq!(
            Location::parse("file:///tmp/in.jsonl").expect("file"),
            Location::Local("/tmp/in.jsonl".into())
        );
        let err = Location::parse("gs://bucket/key").expect_err("unsupported");
        assert!(err.to_string().contains("s3://bucket/key"), "{err}");
        let out = Location::parse("s3://b/jobs/r.jsonl").expect("s3");
        assert_eq!(
            out.errors_sibling().map(|l| l.to_text()).as_deref(),
            Some("s3://b/jobs/r.errors.jsonl")
        );
        assert_eq!(out.file_name().as_deref(), Some("r.jsonl"));
        let presigned = Location::parse("https://h/r.jsonl?sig=1").expect("url");
        assert!(presigned.errors_sibling().is_none());
        assert!(matches!(Location::parse("C:x"), Ok(Location::Local(_))));
    }

    #[test]
    fn redaction_hides_signatures_and_credentials() {
        let u = reqwest::Url::parse("https://user:pw@bucket.s3.example:9000/k/out.jsonl?X-Amz-Signature=abc&X-Amz-Credential=AKIA")
            .expect("url");
        let shown = redact(&u);
        assert_eq!(shown, "https://…@bucket.s3.example:9000/k/out.jsonl?…");
        assert!(!shown.contains("abc") && !shown.contains("pw") && !shown.contains("AKIA"));
    }

    /// One raw HTTP exchange: returns the request head and body the server saw.
    fn serve_once(
        listener: TcpListener,
        status: &'static str,
    ) -> std::thread::JoinHandle<(String, Vec<u8>)> {
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            let head_end = loop {
                let n = s.read(&mut chunk).expect("read");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = s.read(&mut chunk).expect("read");
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            (head, buf[head_end..].to_vec())
        })
    }

    #[tokio::test]
    async fn uploads_carry_content_length_and_never_chunked_encoding() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = reqwest::Url::parse(&format!(
            "http://{}/out.jsonl?sig=x",
            listener.local_addr().expect("addr")
        ))
        .expect("url");
        let server = serve_once(listener, "200 OK");
        let dir = tempfile::tempdir().expect("temp");
        let src = dir.path().join("f");
        let content = vec![b'x'; 300_000];
        std::fs::write(&src, &content).expect("write");
        let options = HttpOptions {
            headers: vec!["x-amz-meta-job: 7".into()],
            ..HttpOptions::default()
        };
        upload(&src, &url, &options).await.expect("upload");
        let (head, body) = server.join().expect("server");
        assert!(head.starts_with("put /out.jsonl?sig=x http/1.1"), "{head}");
        assert!(head.contains("content-length: 300000"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(head.contains("x-amz-meta-job: 7"), "{head}");
        assert_eq!(body, content);
    }

    #[tokio::test]
    async fn a_refused_upload_is_final_and_the_message_hides_the_signature() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = reqwest::Url::parse(&format!(
            "http://{}/o?X-Amz-Signature=secret",
            listener.local_addr().expect("addr")
        ))
        .expect("url");
        let server = serve_once(listener, "403 Forbidden");
        let dir = tempfile::tempdir().expect("temp");
        let src = dir.path().join("f");
        std::fs::write(&src, b"data").expect("write");
        let err = upload(&src, &url, &HttpOptions::default())
            .await
            .expect_err("403");
        server.join().expect("server");
        let text = err.to_string();
        assert!(
            text.contains("403") && text.contains("after 1 attempts"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }
}

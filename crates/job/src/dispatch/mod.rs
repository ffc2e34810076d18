//! Sending requests to the engines.
//!
//! One HTTP client (and so one keep-alive pool) per engine. Its idle timeout is kept below the
//! 5 s keep-alive of the uvicorn servers SGLang and vLLM run on, so the runner rarely reuses a
//! connection the server is about to close; when it does, the reset is retried like any other
//! transport failure. Bodies are sent exactly as they were read from the input.

pub mod pool;
pub mod retry;

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use pool::Pool;
pub use retry::RetryPolicy;
use retry::{retry_after, status_is_retryable};

/// Below uvicorn's default 5 s keep-alive.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub urls: Vec<String>,
    pub api_key: Option<String>,
    /// Extra headers sent with every request, as `Name: value`.
    pub headers: Vec<String>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "invalid --engine-url {url:?}: {reason}; give the server's base URL, e.g. http://127.0.0.1:30000"
    )]
    BadUrl { url: String, reason: String },
    #[error("invalid --header {header:?}: {reason}; write it as 'Name: value'")]
    BadHeader { header: String, reason: String },
    #[error("invalid --api-key: it must be printable ASCII")]
    BadApiKey,
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("no engine is reachable:\n{0}")]
    NoneReachable(String),
}

/// How a request ended, after any retries.
#[derive(Debug)]
pub enum Delivery {
    /// The engine answered (2xx or not).
    Answered {
        status: u16,
        request_id: Option<String>,
        body: Bytes,
    },
    /// No answer: every attempt failed in transport.
    Unavailable { last_error: String },
}

/// A delivery and what it took.
#[derive(Debug)]
pub struct Sent {
    pub delivery: Delivery,
    pub attempts: u32,
    pub engine: usize,
}

pub struct Engines {
    bases: Vec<String>,
    clients: Vec<reqwest::Client>,
    pool: Pool,
    request_timeout: Duration,
    retry: RetryPolicy,
}

/// What one engine said to the probe before the run.
#[derive(Debug)]
pub struct ProbeResult {
    pub url: String,
    pub outcome: Result<u16, String>,
}

impl Engines {
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        let headers = default_headers(options)?;
        let bases = options
            .urls
            .iter()
            .map(|u| normalise_base(u))
            .collect::<Result<Vec<_>, _>>()?;
        let clients = bases
            .iter()
            .map(|_| {
                reqwest::Client::builder()
                    .default_headers(headers.clone())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .connect_timeout(options.connect_timeout)
                    .tcp_nodelay(true)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            pool: Pool::new(bases.len()),
            bases,
            clients,
            request_timeout: options.request_timeout,
            retry: options.retry,
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.bases
    }

    pub fn in_flight(&self, engine: usize) -> usize {
        self.pool.in_flight(engine)
    }

    /// Asks every engine for `GET /v1/models` once. Engines that cannot be reached start with
    /// their breaker open; if none can be reached the run stops before sending anything.
    pub async fn probe(&self) -> Result<Vec<ProbeResult>, EngineError> {
        // Probe all engines at once so one slow engine does not delay the others.
        let handles: Vec<_> = self
            .bases
            .iter()
            .zip(&self.clients)
            .map(|(base, client)| {
                let request = client
                    .get(format!("{base}/v1/models"))
                    .timeout(PROBE_TIMEOUT);
                tokio::spawn(async move {
                    request
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .map_err(|e| error_chain(&e))
                })
            })
            .collect();
        let mut results = Vec::with_capacity(handles.len());
        for (handle, base) in handles.into_iter().zip(&self.bases) {
            let outcome = handle
                .await
                .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
            results.push(ProbeResult {
                url: base.clone(),
                outcome,
            });
        }
        for (i, r) in results.iter().enumerate() {
            if r.outcome.is_err() {
                self.pool.mark_down(i);
            }
        }
        if results.iter().all(|r| r.outcome.is_err()) {
            let lines: Vec<String> = results
                .iter()
                .map(|r| {
                    format!(
                        "  {}: {}",
                        r.url,
                        r.outcome.as_ref().err().map_or("", |e| e)
                    )
                })
                .collect();
            return Err(EngineError::NoneReachable(lines.join("\n")));
        }
        Ok(results)
    }

    /// Sends one request, retrying as the policy allows. `on_retry` is called before each retry.
    pub async fn send(&self, path: &str, body: Bytes, mut on_retry: impl FnMut()) -> Sent {
        let mut attempt = 0;
        loop {
            let lease = self.pool.lease().await;
            let engine = lease.engine;
            let result = self.clients[engine]
                .post(format!("{}{path}", self.bases[engine]))
                .header(CONTENT_TYPE, "application/json")
                .timeout(self.request_timeout)
                .body(body.clone())
                .send()
                .await;
            let (delivery, wait_hint) = match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let hint = retry_after(response.headers());
                    let request_id = response
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match response.bytes().await {
                        Ok(body) => (
                            Delivery::Answered {
                                status,
                                request_id,
                                body,
                            },
                            hint,
                        ),
                        Err(e) => (Delivery::unavailable(&e), None),
                    }
                }
                Err(e) => (Delivery::unavailable(&e), None),
            };
            drop(lease);
            let retryable = match &delivery {
                Delivery::Answered { status, .. } => {
                    if *status >= 500 {
                        self.pool.record_failure(engine);
                    } else {
                        self.pool.record_success(engine);
                    }
                    status_is_retryable(*status)
                }
                Delivery::Unavailable { .. } => {
                    self.pool.record_failure(engine);
                    true
                }
            };
            attempt += 1;
            if !retryable || attempt > self.retry.max_retries {
                return Sent {
                    delivery,
                    attempts: attempt,
                    engine,
                };
            }
            on_retry();
            tokio::time::sleep(self.retry.backoff(attempt - 1, wait_hint)).await;
        }
    }
}

impl Delivery {
    fn unavailable(e: &reqwest::Error) -> Self {
        Delivery::Unavailable {
            last_error: error_chain(e),
        }
    }
}

/// An error with its causes, e.g. "error sending request: connection refused".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Strips a trailing `/` and `/v1`, since every line's `url` already starts with `/v1/`.
fn normalise_base(url: &str) -> Result<String, EngineError> {
    let bad = |reason: String| EngineError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https".into()));
    }
    let mut base = url.trim_end_matches('/');
    if let Some(stripped) = base.strip_suffix("/v1") {
        base = stripped;
    }
    Ok(base.to_owned())
}

fn default_headers(options: &EngineOptions) -> Result<HeaderMap, EngineError> {
    let mut headers = HeaderMap::new();
    for h in &options.headers {
        let bad = |reason: &str| EngineError::BadHeader {
            header: h.clone(),
            reason: reason.to_owned(),
        };
        let (name, value) = h.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad("the name is not a valid header name"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| bad("the value has characters a header cannot carry"))?;
        headers.append(name, value);
    }
    if let Some(key) = &options.api_key {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| EngineError::BadApiKey)?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(normalise_base("http://h:1/").expect("ok"), "http://h:1");
        assert_eq!(normalise_base("http://h:1/v1/").expect("ok"), "http://h:1");
        assert_eq!(normalise_base("https://h/x/v1").expect("ok"), "https://h/x");
        assert!(normalise_base("h:1").is_err());
        assert!(normalise_base("ftp://h").is_err());
    }

    #[test]
    fn headers_are_parsed_and_checked() {
        let mut options = EngineOptions {
            urls: vec![],
            api_key: Some("k".into()),
            headers: vec!["X-A: 1".into(), "X-A:2".into()],
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
        };
        let h = default_headers(&options).expect("ok");
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(
            h.get(AUTHORIZATION).map(|v| v.as_bytes()),
            Some(&b"Bearer k"[..])
        );
        options.headers = vec!["nocolon".into()];
        assert!(matches!(
            default_headers(&options),
            Err(EngineError::BadHeader { .. })
        ));
    }
}

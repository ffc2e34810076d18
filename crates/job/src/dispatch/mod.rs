//! Sending requests to the engines.
//!
//! One keep-alive connection pool per engine ([`transport`]), a choice of engine per attempt
//! ([`pool`]) and the retry rules ([`retry`]). Bodies are sent exactly as they were read from the
//! input.

pub mod adaptive;
mod exchange;
mod http1;
mod load;
pub mod pool;
pub mod priority;
pub mod rate;
pub mod retry;
mod send;
pub mod tokenize;
pub mod transport;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

pub use exchange::Payload;
use exchange::TransportError;
use pool::Pool;
use rate::Bucket;
pub use retry::RetryPolicy;
use transport::{Transport, Url};

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serializable (the service hands them to its workers in a file) except the API key, which
/// travels in the environment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EngineOptions {
    pub urls: Vec<String>,
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Extra headers sent with every request, as `Name: value`.
    pub headers: Vec<String>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Set as the body field `priority` of every request (see [`priority`]).
    pub priority: Option<i64>,
    /// How many requests may be in flight.
    pub concurrency: Concurrency,
    /// Rate limits per engine (see [`rate`]).
    pub max_requests_per_second: Option<f64>,
    pub max_tokens_per_minute: Option<u64>,
}

/// How many requests may be in flight (`--concurrency`, `--max-concurrency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// At most this many across all engines.
    Fixed(usize),
    /// Per engine, a limit between `min` and `max` that follows the engine's signs of overload
    /// (see [`adaptive`]).
    Adaptive { min: usize, max: usize },
}

impl Concurrency {
    /// The most requests in flight across `engines` engines: the dispatcher's bound (adaptive
    /// limits are per engine, and the pool holds each engine to its own).
    pub fn total(self, engines: usize) -> usize {
        match self {
            Concurrency::Fixed(n) => n.max(1),
            Concurrency::Adaptive { max, .. } => max.max(1).saturating_mul(engines.max(1)),
        }
    }
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
    #[error("cannot set up the HTTP client for {url}: {reason}")]
    Client { url: String, reason: String },
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
    /// The job started stopping while this request waited to be retried.
    Stopped,
}

/// A delivery and what it took.
#[derive(Debug)]
pub struct Sent {
    pub delivery: Delivery,
    pub attempts: u32,
    /// The engine of the last attempt (a video job is then polled there).
    pub engine: usize,
}

pub struct Engines {
    bases: Vec<String>,
    transports: Vec<Transport>,
    pool: Pool,
    request_timeout: Duration,
    retry: RetryPolicy,
    priority: Option<i64>,
    /// Per engine: it refused the `priority` field (transformers serve has no such field; vLLM
    /// refuses it without priority scheduling), so its requests go without it.
    priority_refused: Vec<AtomicBool>,
    /// Per engine, when limited.
    request_rate: Vec<Bucket>,
    token_rate: Vec<Bucket>,
}

/// One endpoint's URL on each engine (see [`Engines::target`]).
#[derive(Debug, Clone)]
pub struct Target {
    urls: Vec<Url>,
}

/// What one engine said to the probe before the run.
#[derive(Debug)]
pub struct ProbeResult {
    pub url: String,
    pub outcome: Result<u16, String>,
    /// The model ids its `/v1/models` listed (`None`: no readable list).
    pub models: Option<Vec<String>>,
}

/// The ids of an OpenAI-style model list, `{"data": [{"id": ...}, ...]}`.
fn model_ids(body: &[u8]) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Model>,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        id: String,
    }
    let list: List = serde_json::from_slice(body).ok()?;
    Some(list.data.into_iter().map(|m| m.id).collect())
}

impl Engines {
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        let headers = default_headers(options)?;
        let bases = options
            .urls
            .iter()
            .map(|u| normalise_base(u))
            .collect::<Result<Vec<_>, _>>()?;
        let transports = bases
            .iter()
            .map(|base| {
                Transport::new(base, headers.clone(), options.connect_timeout).map_err(|reason| {
                    EngineError::Client {
                        url: base.clone(),
                        reason,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let engines = bases.len();
        Ok(Self {
            pool: match options.concurrency {
                Concurrency::Adaptive { min, max } => Pool::adaptive(bases.len(), min, max),
                Concurrency::Fixed(_) => Pool::new(bases.len()),
            },
            bases,
            transports,
            request_timeout: options.request_timeout,
            retry: options.retry,
            priority: options.priority,
            priority_refused: (0..engines).map(|_| AtomicBool::new(false)).collect(),
            request_rate: options
                .max_requests_per_second
                .map(|r| buckets(engines, r, Duration::from_secs(1)))
                .unwrap_or_default(),
            token_rate: options
                .max_tokens_per_minute
                .map(|t| buckets(engines, t as f64, Duration::from_secs(60)))
                .unwrap_or_default(),
        })
    }

    /// Stops sending to `engine` (it is restarting) until [`Engines::resume`].
    pub fn suspend(&self, engine: usize) {
        self.pool.suspend(engine);
    }

    pub fn resume(&self, engine: usize) {
        self.pool.resume(engine);
    }

    /// Asks every engine for `GET /v1/models` once. Engines that cannot be reached start with
    /// their breaker open; if none can be reached the run stops before sending anything.
    pub async fn probe(&self) -> Result<Vec<ProbeResult>, EngineError> {
        // Probe all engines at once so one slow engine does not delay the others.
        let models = self.target("/v1/models")?;
        let probes = self
            .transports
            .iter()
            .zip(&models.urls)
            .map(|(t, url)| async move {
                t.send(Method::GET, url, Bytes::new(), PROBE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            });
        let outcomes = futures_util::future::join_all(probes).await;
        let results: Vec<ProbeResult> = outcomes
            .into_iter()
            .zip(&self.bases)
            .map(|(outcome, url)| ProbeResult {
                url: url.clone(),
                models: outcome
                    .as_ref()
                    .ok()
                    .filter(|answer| answer.status == 200)
                    .and_then(|answer| model_ids(&answer.body)),
                outcome: outcome.map(|answer| answer.status),
            })
            .collect();
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

    /// The full URL of `path` on every engine, parsed once for the whole run.
    pub fn target(&self, path: &str) -> Result<Target, EngineError> {
        let urls = self
            .bases
            .iter()
            .map(|base| {
                let full = format!("{base}{path}");
                Url::parse(&full).map_err(|reason| EngineError::BadUrl { url: full, reason })
            })
            .collect::<Result<_, _>>()?;
        Ok(Target { urls })
    }

    /// Engines whose breaker is open now.
    pub fn down(&self) -> usize {
        self.pool.down()
    }

    /// How long every engine has been failing, when all are.
    pub fn all_down_for(&self) -> Option<Duration> {
        self.pool.all_down_for()
    }
}

fn buckets(engines: usize, rate: f64, period: Duration) -> Vec<Bucket> {
    (0..engines).map(|_| Bucket::new(rate, period)).collect()
}

impl Sent {
    fn stopped(attempts: u32) -> Self {
        Sent {
            delivery: Delivery::Stopped,
            attempts,
            engine: 0,
        }
    }
}

impl Delivery {
    fn unavailable(e: &TransportError) -> Self {
        Delivery::Unavailable {
            last_error: e.to_string(),
        }
    }

    /// One attempt's end, for the debug log.
    fn describe(&self) -> String {
        match self {
            Delivery::Answered { status, .. } => format!("answered {status}"),
            Delivery::Unavailable { last_error } => format!("no answer: {last_error}"),
            Delivery::Stopped => "stopped".into(),
        }
    }
}

/// Strips a trailing `/` and `/v1`, since every line's `url` already starts with `/v1/`.
fn normalise_base(url: &str) -> Result<String, EngineError> {
    let bad = |reason: String| EngineError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if parsed.host_str().is_none() {
        return Err(bad("it has no host".into()));
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https".into()));
    }
    let mut base = url.trim_end_matches('/');
    if let Some(stripped) = base.strip_suffix("/v1") {
        base = stripped;
    }
    Ok(base.to_owned())
}

/// Parses a `--header` as given: `Name: value`.
pub fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue), EngineError> {
    let bad = |reason: &str| EngineError::BadHeader {
        header: h.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, value) = h.split_once(':').ok_or_else(|| bad("no ':'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| bad("the name is not a valid header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| bad("the value has characters a header cannot carry"))?;
    Ok((name, value))
}

fn default_headers(options: &EngineOptions) -> Result<HeaderMap, EngineError> {
    let mut headers = HeaderMap::new();
    for h in &options.headers {
        let (name, value) = parse_header(h)?;
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
    fn model_lists_are_read() {
        let list = br#"{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}"#;
        assert_eq!(model_ids(list), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(model_ids(br#"{"detail":"oops"}"#), None);
    }

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
            priority: None,
            concurrency: Concurrency::Fixed(64),
            max_requests_per_second: None,
            max_tokens_per_minute: None,
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

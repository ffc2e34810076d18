//! A simulated OpenAI-compatible inference engine: the test double for SGLang and vLLM.
//!
//! It answers `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/responses`
//! with SGLang-shaped bodies whose content echoes the request, so a test can tell which input an
//! output belongs to. A capacity model (at most `max_running` served at once, a bounded queue,
//! time to first token plus time per output token) makes it useful for sizing settings, and
//! fault injection (error statuses, dropped connections, hangs) exercises a client's error paths.
//!
//! Faults come two ways: at random, by rate, and on request, through a `sim` object in the
//! request body (`{"sim": {"status": 503, "times": 2}}` fails the first two attempts of that
//! exact body with 503, then serves it). The second makes tests exact.
//!
//! Layout: [`config`] holds the knobs; [`respond`] builds the bodies; this module runs the server.

mod admission;
pub mod config;
mod faults;
pub mod media;
mod prefix_cache;
pub mod profile;
pub mod respond;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use admission::Admission;
use bytes::Bytes;
pub use config::SimConfig;
use faults::{Fault, Faults};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prefix_cache::PrefixCache;
pub use profile::Profile;
use tokio::net::TcpListener;

/// Shared state of one running engine.
struct Engine {
    config: SimConfig,
    admission: Admission,
    prefix_cache: PrefixCache,
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    /// Requests to the tokenize route.
    tokenize_requests: AtomicU64,
    faults: Faults,
    /// Video jobs (`/v1/videos`).
    videos: media::Videos,
    /// Signalled when `exit_after` requests have been answered.
    crash: tokio::sync::Notify,
    /// Until then the engine is loading its model and answers 503.
    ready_at: tokio::time::Instant,
}

/// The image, audio and video endpoints ([`media`]).
const MEDIA_PATHS: [&str; 6] = [
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
];

/// Decode steps between two looks at the batch size.
const DECODE_CHUNK: u64 = 4;

async fn sleep_for(d: std::time::Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    /// `exit_after` was reached: the caller should exit at once, as a crashing engine would.
    Crashed,
}

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

type Reply = Result<Response<Full<Bytes>>, DropConnection>;

/// Serves until `shutdown` completes. The listener is bound by the caller (port 0 in tests).
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Ended> {
    let config_startup = config.startup;
    let engine = Arc::new(Engine {
        admission: Admission::new(config.max_running, config.priority_scheduling),
        prefix_cache: PrefixCache::new(config.prefix_cache_tokens),
        faults: Faults::new(config.seed),
        config,
        requests: AtomicU64::new(0),
        prompt_tokens: AtomicU64::new(0),
        cached_tokens: AtomicU64::new(0),
        generation_tokens: AtomicU64::new(0),
        tokenize_requests: AtomicU64::new(0),
        crash: tokio::sync::Notify::new(),
        videos: media::Videos::default(),
        ready_at: tokio::time::Instant::now() + config_startup,
    });
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(Ended::Shutdown),
            () = engine.crash.notified() => return Ok(Ended::Crashed),
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let engine = engine.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let engine = engine.clone();
                async move { engine.handle(req).await }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Engine {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let profile = self.config.profile;
        if tokio::time::Instant::now() < self.ready_at {
            return Ok(profile.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading",
            ));
        }
        if path.starts_with("/v1/") && !self.authorised(&req) {
            return Ok(profile.error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key or required header",
            ));
        }
        let endpoint = respond::Endpoint::from_path(&path)
            .filter(|e| !(profile == Profile::Transformers && *e == respond::Endpoint::Embeddings));
        match (&method, path.as_str(), endpoint) {
            (&Method::GET, "/health" | "/health_generate" | "/ready", _) => Ok(profile.health()),
            (&Method::GET, "/v1/models", _) => Ok(profile.models(&self.config)),
            (&Method::GET, "/metrics", _) if self.config.metrics => match self.metrics() {
                Some(text) => Ok(respond::text(StatusCode::OK, &text)),
                None => Ok(profile.not_found(&method, &path)),
            },
            (&Method::POST, _, None)
                if profile.tokenize_route().is_some_and(|(p, _)| p == path) =>
            {
                let messages = profile.tokenize_route().is_some_and(|(_, m)| m);
                let n = self.tokenize_requests.fetch_add(1, Ordering::Relaxed) + 1;
                if self
                    .config
                    .tokenize_fail_after
                    .is_some_and(|after| n > after)
                {
                    return Ok(profile.error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the tokenizer failed (--tokenize-fail-after)",
                    ));
                }
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return Err(DropConnection),
                };
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(request) => Ok(profile.tokenize(&self.config, &request, messages)),
                    Err(e) => Ok(profile.bad_json(&e.to_string())),
                }
            }
            (&Method::GET, p, _) if p.starts_with("/v1/videos/") => {
                let rest = &p["/v1/videos/".len()..];
                Ok(self
                    .videos
                    .get(rest, self.config.video)
                    .unwrap_or_else(|| profile.error(StatusCode::NOT_FOUND, "no such video")))
            }
            (&Method::POST, p, None) if MEDIA_PATHS.contains(&p) => self.media(req, p).await,
            (&Method::POST, _, Some(endpoint)) => {
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return Err(DropConnection),
                };
                self.generate(endpoint, body, request_id.as_deref()).await
            }
            _ => Ok(profile.not_found(&method, &path)),
        }
    }

    /// An image, audio or video request (see [`media`]): counted as a request, no faults.
    async fn media(&self, req: Request<Incoming>, path: &str) -> Reply {
        let profile = self.config.profile;
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Err(DropConnection),
        };
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        sleep_for(self.config.ttft).await;
        if path.starts_with("/v1/audio/transcriptions")
            || path.starts_with("/v1/audio/translations")
        {
            return Ok(media::transcription(content_type.as_deref(), &body)
                .unwrap_or_else(|e| profile.error(StatusCode::BAD_REQUEST, &e)));
        }
        let request: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => return Ok(profile.bad_json("the request body must be a JSON object")),
            Err(e) => return Ok(profile.bad_json(&e.to_string())),
        };
        Ok(match path {
            "/v1/audio/speech" => media::speech(&request),
            "/v1/videos" => respond::json(StatusCode::OK, &self.videos.create(&request, n), None),
            _ => respond::json(StatusCode::OK, &media::images(&request), None),
        })
    }

    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let key_ok = self.config.api_key.as_ref().is_none_or(|key| {
            header("authorization").and_then(|s| s.strip_prefix("Bearer ")) == Some(key.as_str())
        });
        key_ok
            && self
                .config
                .required_headers
                .iter()
                .all(|(name, value)| header(name) == Some(value.as_str()))
    }

    /// A request's path through the simulated engine, in the order a real one takes it: parse,
    /// refuse (the profile's quirks), injected faults, the queue, admission, the time the work
    /// takes, the counters. (Kept as one function so that order reads top to bottom.)
    async fn generate(
        &self,
        endpoint: respond::Endpoint,
        body: Bytes,
        request_id: Option<&str>,
    ) -> Reply {
        let profile = self.config.profile;
        let request: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => return Ok(profile.bad_json("the request body must be a JSON object")),
            Err(e) => return Ok(profile.bad_json(&e.to_string())),
        };
        if let Some(refused) = profile.check(&self.config, endpoint, &request) {
            return Ok(refused);
        }
        match self.faults.pick(&self.config, &request, &body) {
            Some(Fault::Status(status, retry_after)) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut response = profile.error(status, "injected failure");
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert(hyper::header::RETRY_AFTER, secs.into());
                }
                return Ok(response);
            }
            Some(Fault::Drop) => return Err(DropConnection),
            Some(Fault::Hang) => {
                tokio::time::sleep(self.config.hang).await;
                return Err(DropConnection);
            }
            None => {}
        }

        let (running, waiting) = self.admission.counts();
        if profile.bounded_queue()
            && running >= self.config.max_running
            && waiting >= self.config.max_queued
        {
            return Ok(profile.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The request queue is full.",
            ));
        }
        let mut answer =
            respond::answer(endpoint, &request, &self.config, respond::digest(&body), 0);
        if let Some(refused) =
            profile.check_length(&self.config, answer.prompt_tokens, answer.output_tokens)
        {
            return Ok(refused);
        }
        let slot = self
            .admission
            .enter(profile.priority(&self.config, &request))
            .await;

        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if self.config.exit_after == Some(n + 1) {
            // notify_one keeps the permit if the accept loop is not waiting right now.
            self.crash.notify_one();
        }
        // Numbered by admission, as tests of priority scheduling read it.
        answer.number(n);
        let request_id_header = profile.shape(&mut answer, &self.config, request_id);
        let cached = self
            .prefix_cache
            .lookup(answer.prefix_key, answer.prefix_tokens);
        if self.config.prefix_cache_tokens > 0 {
            respond::set_cached_tokens(&mut answer.body, cached);
        }
        self.serve_time(
            answer.prompt_tokens.saturating_sub(cached),
            answer.output_tokens,
        )
        .await;
        drop(slot);
        self.prompt_tokens
            .fetch_add(answer.prompt_tokens, Ordering::Relaxed);
        self.cached_tokens.fetch_add(cached, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(answer.output_tokens, Ordering::Relaxed);
        Ok(respond::json(
            StatusCode::OK,
            &answer.body,
            request_id_header.as_deref(),
        ))
    }

    /// Holds the request's place for as long as the engine would take: time to first token,
    /// prefill of the uncached prompt, then one decode step per further token, each step slower
    /// the more requests run at once (re-read every few tokens, as the batch changes).
    async fn serve_time(&self, uncached_prompt: u64, output_tokens: u64) {
        let c = &self.config;
        let prefill = c
            .prefill_per_token
            .saturating_mul(u32::try_from(uncached_prompt).unwrap_or(u32::MAX));
        let first = c.service_time(output_tokens.min(1)) + prefill;
        if c.per_token_per_running.is_zero() {
            let rest = c.service_time(output_tokens) - c.service_time(output_tokens.min(1));
            sleep_for(first + rest).await;
            return;
        }
        sleep_for(first).await;
        let mut left = output_tokens.saturating_sub(1);
        while left > 0 {
            let chunk = left.min(DECODE_CHUNK);
            let running = self.admission.counts().0 as u32;
            let step = c.per_token + c.per_token_per_running.saturating_mul(running);
            sleep_for(step.saturating_mul(chunk as u32)).await;
            left -= chunk;
        }
    }

    /// Prometheus text with the gauges SGLang and vLLM export, under their names (the profile
    /// says whose); `None` for an engine without metrics.
    fn metrics(&self) -> Option<String> {
        let (sglang, vllm) = self.config.profile.metric_families();
        if !sglang && !vllm {
            return None;
        }
        let (running, queued) = self.admission.counts();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let families: [(bool, &str, &str, &str, u64); 8] = [
            (
                sglang,
                "sglang:num_running_reqs",
                "gauge",
                "The number of running requests.",
                running as u64,
            ),
            (
                sglang,
                "sglang:num_queue_reqs",
                "gauge",
                "The number of requests in the waiting queue.",
                queued as u64,
            ),
            (
                sglang,
                "sglang:num_requests_total",
                "counter",
                "The number of processed requests.",
                load(&self.requests),
            ),
            (
                sglang,
                "sglang:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                load(&self.prompt_tokens),
            ),
            (
                sglang,
                "sglang:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                load(&self.generation_tokens),
            ),
            (
                sglang,
                "sglang:cached_tokens_total",
                "counter",
                "Prompt tokens served from the prefix cache.",
                load(&self.cached_tokens),
            ),
            (
                vllm,
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                running as u64,
            ),
            (
                vllm,
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                queued as u64,
            ),
        ];
        let model = &self.config.model;
        let mut text = String::new();
        for (_, name, kind, help, value) in families.iter().filter(|f| f.0) {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {value}\n"
            ));
        }
        let tokenized = self.tokenize_requests.load(Ordering::Relaxed);
        text.push_str(&format!(
            "# HELP sim_tokenize_requests_total Requests to the tokenize route.\n\
             # TYPE sim_tokenize_requests_total counter\nsim_tokenize_requests_total {tokenized}\n"
        ));
        Some(text)
    }
}

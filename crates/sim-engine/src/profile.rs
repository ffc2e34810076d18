//! `--profile`: what a real server does that a client can observe, so the runner is tested
//! against each server's quirks without a GPU.
//!
//! The facts come from each server's source (SGLang `python/sglang/srt/entrypoints/http_server.py`
//! and its OpenAI protocol models; vLLM `vllm/entrypoints/openai/`; transformers
//! `cli/serving/`), and for transformers from a run of `transformers serve
//! --continuous-batching` 5.17 on a GPU (tests/real-engine/results/): its probes are what this
//! profile answers. `Generic` is sim-engine's own behaviour from before the profiles (an
//! SGLang-like engine with every knob of its own), which existing tests rely on.

use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::SimConfig;
use crate::respond::{self, Answer, Endpoint};

/// Which server's behaviour the engine reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// sim-engine's own: SGLang's error shape and metrics (plus vLLM's gauges), every model
    /// name accepted, `/v1/models` as `models_status` says, `x-request-id` = the body's id.
    #[default]
    Generic,
    /// SGLang (v0.5): flat `{"object": "error", ...}` errors; any model name accepted; the
    /// prompt checked against the context length; `priority` (larger first) with priority
    /// scheduling, ignored without; a full queue answers 503; `/health` is 503 while starting;
    /// `cached_tokens` in usage; no `x-request-id` header.
    Sglang,
    /// vLLM: nested `{"error": {...}}` errors; an unknown model is a 404; prompt plus
    /// `max_tokens` checked against the context length; `priority` (smaller first) only with
    /// priority scheduling, a 400 otherwise; unknown fields ignored; the queue never refuses;
    /// the port opens only once the model is loaded; `vllm:` metrics.
    Vllm,
    /// `transformers serve`: FastAPI `{"detail": ...}` errors; `/v1/models` is a 500 (it reads
    /// the hub cache) and `/metrics` and `/v1/embeddings` are 404; a model other than the
    /// pinned one is a 400; unknown body fields (`priority` too) are a 422; a bad JSON body is a
    /// 422 with a list of problems; `max_completion_tokens` is ignored; no context check; the
    /// response `id` is the `x-request-id` (the client's, or a fresh uuid) and `model` comes
    /// back as `MODEL@main`; the queue never refuses; the port opens once the model is loaded.
    Transformers,
}

/// Fields the OpenAI SDK's request types allow; transformers refuses any other (422).
const CHAT_FIELDS: &[&str] = &[
    "messages",
    "model",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
    "generation_config",
];
const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "suffix",
    "temperature",
    "top_p",
    "user",
    "generation_config",
];
/// The body field tests use to ask sim-engine for faults; every profile accepts it.
const SIM_FIELD: &str = "sim";

type Reply = Response<Full<Bytes>>;

impl Profile {
    /// An error answer in the server's own shape.
    pub fn error(self, status: StatusCode, message: &str) -> Reply {
        let code = status.as_u16();
        let kind = match code {
            404 => "NotFoundError",
            400..500 => "BadRequestError",
            _ => "ServiceUnavailableError",
        };
        let body = match self {
            Self::Generic | Self::Sglang => {
                json!({"object": "error", "message": message, "type": kind, "param": null, "code": code})
            }
            Self::Vllm => {
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            Self::Transformers => json!({"detail": message}),
        };
        respond::json(status, &body, None)
    }

    /// The answer to a path the server has no route for.
    pub fn not_found(self, method: &hyper::Method, path: &str) -> Reply {
        match self {
            Self::Generic => self.error(
                StatusCode::NOT_FOUND,
                &format!("no route for {method} {path}"),
            ),
            // All three are FastAPI apps: its default answer.
            _ => respond::json(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"}), None),
        }
    }

    /// `GET /health` once the engine is ready.
    pub fn health(self) -> Reply {
        match self {
            Self::Transformers => respond::json(StatusCode::OK, &json!({"status": "ok"}), None),
            _ => respond::text(StatusCode::OK, ""),
        }
    }

    /// Whether the server opens its port only once the model is loaded (otherwise it listens
    /// at once and answers 503 until ready, as SGLang does).
    pub fn listens_when_ready(self) -> bool {
        matches!(self, Self::Vllm | Self::Transformers)
    }

    /// `GET /v1/models`.
    pub fn models(self, config: &SimConfig) -> Reply {
        let owner = match self {
            Self::Generic => "sim-engine",
            Self::Sglang => "sglang",
            Self::Vllm => "vllm",
            Self::Transformers => {
                let mut r =
                    respond::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
                r.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                return r;
            }
        };
        if self == Self::Generic
            && let Ok(status) = StatusCode::from_u16(config.models_status)
            && status != StatusCode::OK
        {
            return self.error(status, "cannot list the models");
        }
        let mut card = json!({"id": config.model, "object": "model", "created": 0,
                              "owned_by": owner, "root": config.model});
        if self != Self::Generic {
            card["max_model_len"] = json!(config.context_length);
        }
        respond::json(
            StatusCode::OK,
            &json!({"object": "list", "data": [card]}),
            None,
        )
    }

    /// Where the server counts a prompt's tokens, and whether it takes chat messages there:
    /// vLLM's `/tokenize` takes a prompt or messages, SGLang's `/v1/tokenize` a prompt only;
    /// transformers serve has none.
    pub fn tokenize_route(self) -> Option<(&'static str, bool)> {
        match self {
            Self::Generic | Self::Vllm => Some(("/tokenize", true)),
            Self::Sglang => Some(("/v1/tokenize", false)),
            Self::Transformers => None,
        }
    }

    /// The answer of the tokenize route (see [`Profile::tokenize_route`]).
    pub fn tokenize(self, config: &SimConfig, request: &Value, messages: bool) -> Reply {
        match respond::tokenize(request, messages) {
            Some(count) => respond::json(
                StatusCode::OK,
                &json!({"count": count, "max_model_len": config.context_length,
                        "tokens": (0..count).collect::<Vec<u64>>()}),
                None,
            ),
            None => self.error(
                StatusCode::BAD_REQUEST,
                "the body must have a prompt (or, on this server, messages)",
            ),
        }
    }

    /// Which metric families `/metrics` serves: SGLang's, vLLM's, or none (404).
    pub fn metric_families(self) -> (bool, bool) {
        match self {
            Self::Generic => (true, true),
            Self::Sglang => (true, false),
            Self::Vllm => (false, true),
            Self::Transformers => (false, false),
        }
    }

    /// A body that is not a JSON object.
    pub fn bad_json(self, problem: &str) -> Reply {
        match self {
            Self::Transformers => {
                let detail = json!([{"type": "json_invalid", "loc": ["body", 1],
                                     "msg": "JSON decode error", "input": {},
                                     "ctx": {"error": problem}}]);
                respond::json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"detail": detail}),
                    None,
                )
            }
            _ => self.error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON body: {problem}"),
            ),
        }
    }

    /// The server's checks of a parsed request before it is queued: the error answer of the
    /// first that fails, if any.
    pub fn check(self, config: &SimConfig, endpoint: Endpoint, request: &Value) -> Option<Reply> {
        let model = request.get("model").and_then(Value::as_str);
        match self {
            Self::Generic | Self::Sglang => {}
            Self::Vllm => {
                if let Some(m) = model.filter(|m| *m != config.model) {
                    return Some(self.error(
                        StatusCode::NOT_FOUND,
                        &format!("The model `{m}` does not exist."),
                    ));
                }
                let priority = request.get("priority").and_then(Value::as_i64).unwrap_or(0);
                if priority != 0 && !config.priority_scheduling {
                    return Some(self.error(
                        StatusCode::BAD_REQUEST,
                        &format!("Got priority {priority} but Priority scheduling is not enabled."),
                    ));
                }
            }
            Self::Transformers => {
                let allowed = match endpoint {
                    Endpoint::Chat => CHAT_FIELDS,
                    Endpoint::Completions => COMPLETION_FIELDS,
                    Endpoint::Embeddings | Endpoint::Responses => return None,
                };
                let unexpected: Vec<String> = request
                    .as_object()
                    .into_iter()
                    .flat_map(Map::keys)
                    .filter(|k| *k != SIM_FIELD && !allowed.contains(&k.as_str()))
                    .map(|k| format!("'{k}'"))
                    .collect();
                if !unexpected.is_empty() {
                    return Some(self.error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &format!(
                            "Unexpected fields in the request: {{{}}}",
                            unexpected.join(", ")
                        ),
                    ));
                }
                if let Some(m) = model.filter(|m| *m != config.model) {
                    return Some(self.error(
                        StatusCode::BAD_REQUEST,
                        &format!("Server is pinned to '{}'; requested '{m}'.", config.model),
                    ));
                }
            }
        }
        None
    }

    /// The context-length check, once the prompt's tokens are known: the refusal, if any.
    pub fn check_length(
        self,
        config: &SimConfig,
        prompt_tokens: u64,
        output_tokens: u64,
    ) -> Option<Reply> {
        let limit = config.context_length;
        match self {
            Self::Sglang if prompt_tokens >= limit => Some(self.error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "The input ({prompt_tokens} tokens) is longer than the model's context length ({limit} tokens)."
                ),
            )),
            Self::Vllm if prompt_tokens + output_tokens > limit => Some(self.error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "This model's maximum context length is {limit} tokens. However, your request has \
                     {prompt_tokens} input tokens and asks for {output_tokens} output tokens. Please \
                     reduce the length of the input messages or of max_tokens."
                ),
            )),
            _ => None,
        }
    }

    /// The admission priority of a request (a larger number is admitted first).
    pub fn priority(self, config: &SimConfig, request: &Value) -> Option<i64> {
        let sent = request.get("priority").and_then(Value::as_i64);
        match self {
            // vLLM admits the smaller value first, and a request without one has 0.
            Self::Vllm => Some(-sent.unwrap_or(0)),
            _ => sent.or(config.default_priority),
        }
    }

    /// Whether a full queue refuses new requests with 503 (otherwise the queue has no bound).
    pub fn bounded_queue(self) -> bool {
        matches!(self, Self::Generic | Self::Sglang)
    }

    /// The output-token limit a request asks for (transformers ignores
    /// `max_completion_tokens`).
    pub fn max_tokens(self, request: &Value) -> Option<u64> {
        let keys: &[&str] = match self {
            Self::Transformers => &["max_tokens", "max_output_tokens"],
            _ => &["max_tokens", "max_completion_tokens", "max_output_tokens"],
        };
        keys.iter()
            .find_map(|k| request.get(*k).and_then(Value::as_u64))
    }

    /// Reshapes a generated answer as the server would send it; returns the `x-request-id`
    /// header to send, if the server sends one.
    pub fn shape(
        self,
        answer: &mut Answer,
        config: &SimConfig,
        client_request_id: Option<&str>,
    ) -> Option<String> {
        let body = &mut answer.body;
        match self {
            Self::Generic => Some(answer.id.clone()),
            Self::Sglang => None,
            Self::Vllm => {
                if let Some(o) = body.as_object_mut() {
                    for key in [
                        "system_fingerprint",
                        "service_tier",
                        "prompt_logprobs",
                        "kv_transfer_params",
                    ] {
                        o.insert(key.into(), Value::Null);
                    }
                }
                for choice in choices(body) {
                    choice.remove("matched_stop");
                    choice.insert("stop_reason".into(), Value::Null);
                    if let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut)
                    {
                        message.insert("tool_calls".into(), json!([]));
                    }
                }
                None
            }
            Self::Transformers => {
                let id =
                    client_request_id.map_or_else(|| uuid_from(answer.id.as_str()), str::to_owned);
                answer.id.clone_from(&id);
                body["id"] = json!(id);
                body["model"] = json!(format!("{}@main", config.model));
                for choice in choices(body) {
                    choice.remove("matched_stop");
                    choice.remove("logprobs");
                    if let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut)
                    {
                        message.remove("reasoning_content");
                        message.remove("tool_calls");
                    }
                }
                if let Some(usage) = body.get_mut("usage").and_then(Value::as_object_mut) {
                    usage.remove("prompt_tokens_details");
                }
                Some(id)
            }
        }
    }
}

fn choices(body: &mut Value) -> impl Iterator<Item = &mut Map<String, Value>> {
    body.get_mut("choices")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// A uuid-shaped id derived from `seed` (transformers names a request by a fresh uuid4).
fn uuid_from(seed: &str) -> String {
    let mut h = DefaultHasher::new();
    seed.hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    let b = h.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(reply: Reply) -> (u16, Value) {
        use http_body_util::BodyExt;
        let status = reply.status().as_u16();
        let bytes = match futures_lite_block(reply.into_body().collect()) {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The body of a `Full` is ready at once; no runtime needed.
    fn futures_lite_block<F: Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn config() -> SimConfig {
        SimConfig {
            model: "/tmp/model".into(),
            ..SimConfig::default()
        }
    }

    #[test]
    fn transformers_refuses_unknown_fields_and_other_models_in_fastapi_shape() {
        let c = config();
        let p = Profile::Transformers;
        let unknown = json!({"model": "/tmp/model", "messages": [], "priority": 3, "sim": {}});
        let (status, body) = body_of(p.check(&c, Endpoint::Chat, &unknown).expect("refused"));
        assert_eq!(
            (status, body),
            (
                422,
                json!({"detail": "Unexpected fields in the request: {'priority'}"})
            )
        );
        let other = json!({"model": "other", "messages": []});
        let (status, body) = body_of(p.check(&c, Endpoint::Chat, &other).expect("refused"));
        assert_eq!(status, 400);
        assert_eq!(
            body["detail"],
            "Server is pinned to '/tmp/model'; requested 'other'."
        );
        assert!(
            p.check(
                &c,
                Endpoint::Chat,
                &json!({"model": "/tmp/model", "messages": []})
            )
            .is_none()
        );
        assert_eq!(p.max_tokens(&json!({"max_completion_tokens": 4})), None);
    }

    #[test]
    fn vllm_checks_the_model_and_priority_and_nests_its_errors() {
        let c = config();
        let p = Profile::Vllm;
        let (status, body) = body_of(
            p.check(&c, Endpoint::Chat, &json!({"model": "x"}))
                .expect("refused"),
        );
        assert_eq!(status, 404);
        assert_eq!(body["error"]["message"], "The model `x` does not exist.");
        assert_eq!(body["error"]["code"], 404);
        let (status, _) = body_of(
            p.check(&c, Endpoint::Chat, &json!({"priority": 1}))
                .expect("refused"),
        );
        assert_eq!(status, 400);
        assert_eq!(p.priority(&c, &json!({"priority": -5})), Some(5));
        assert!(p.check_length(&c, c.context_length - 10, 11).is_some());
        assert!(p.check_length(&c, c.context_length - 10, 10).is_none());
    }

    #[test]
    fn sglang_keeps_its_flat_errors_and_refuses_a_prompt_past_the_context() {
        let c = config();
        let (status, body) = body_of(
            Profile::Sglang
                .check_length(&c, c.context_length, 1)
                .expect("refused"),
        );
        assert_eq!(status, 400);
        assert_eq!(body["object"], "error");
        assert!(
            Profile::Transformers
                .check_length(&c, c.context_length * 4, 1)
                .is_none()
        );
    }

    #[test]
    fn transformers_answers_carry_the_request_id_and_the_model_at_main() {
        let c = config();
        let request =
            json!({"model": "/tmp/model", "messages": [{"role": "user", "content": "hi"}]});
        let mut answer = respond::answer(Endpoint::Chat, &request, &c, 1, 2);
        let header = Profile::Transformers.shape(&mut answer, &c, Some("rid-7"));
        assert_eq!(header.as_deref(), Some("rid-7"));
        assert_eq!(answer.body["id"], "rid-7");
        assert_eq!(answer.body["model"], "/tmp/model@main");
        assert!(answer.body["usage"].get("prompt_tokens_details").is_none());
        let mut fresh = respond::answer(Endpoint::Chat, &request, &c, 1, 3);
        let id = Profile::Transformers
            .shape(&mut fresh, &c, None)
            .unwrap_or_default();
        assert_eq!(id.len(), 36);
        assert_eq!(fresh.body["id"], json!(id));
    }
}

//! Response bodies, shaped like SGLang's, whose content is derived from the request.
//!
//! Text endpoints answer `"echo: <the last prompt text>"`; embeddings are 8 numbers derived from a
//! hash of each input. Token counts are words in the prompt, and `max_tokens` (or the default)
//! output tokens, so usage totals are predictable in tests.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::SimConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::Chat),
            "/v1/completions" => Some(Self::Completions),
            "/v1/embeddings" => Some(Self::Embeddings),
            "/v1/responses" => Some(Self::Responses),
            _ => None,
        }
    }
}

/// A generated answer and what it cost.
pub struct Answer {
    pub id: String,
    pub body: Value,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// The shared prefix of a chat request (key and tokens; 0 and 0 without one).
    pub prefix_key: u64,
    pub prefix_tokens: u64,
}

impl Answer {
    /// Gives the answer the request number `n`: the last 8 hex digits of its ids (the answer is
    /// built before admission, to check its length, and numbered once admitted).
    pub fn number(&mut self, n: u64) {
        let tail = format!("{n:08x}");
        let renumber = |id: &str| format!("{}{tail}", &id[..id.len().saturating_sub(8)]);
        self.id = renumber(&self.id);
        self.body["id"] = Value::String(self.id.clone());
        if let Some(message) = self.body.pointer_mut("/output/0/id")
            && let Some(id) = message.as_str()
        {
            *message = Value::String(renumber(id));
        }
    }
}

/// A hash of the exact request bytes. It is part of every response id, so a test can prove the
/// engine received a body byte for byte as the client meant to send it.
pub fn digest(raw: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    raw.hash(&mut h);
    h.finish()
}

/// Builds the answer to request number `n`, whose raw bytes hash to `digest`. (One arm per
/// endpoint's answer shape, each a literal JSON document; hence its length.)
pub fn answer(
    endpoint: Endpoint,
    request: &Value,
    config: &SimConfig,
    digest: u64,
    n: u64,
) -> Answer {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&config.model)
        .to_owned();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let limit = config.profile.max_tokens(request);
    let output_tokens = limit.unwrap_or(config.default_max_tokens);
    let finish_reason = if limit.is_some() { "length" } else { "stop" };
    let id_suffix = format!("{digest:016x}{n:08x}");

    let mut prefix = (0, 0);
    let (id, body, prompt_tokens, output_tokens) = match endpoint {
        Endpoint::Chat => {
            let prompt = last_text(request.get("messages"));
            prefix = chat_prefix(&model, request.get("messages"));
            let prompt_tokens = words(&prompt) + prefix.1;
            let id = format!("chatcmpl-{id_suffix}");
            let body = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": format!("echo: {prompt}"),
                                "reasoning_content": null, "tool_calls": null},
                    "logprobs": null,
                    "finish_reason": finish_reason,
                    "matched_stop": null
                }],
                "usage": usage(prompt_tokens, output_tokens),
            });
            (id, body, prompt_tokens, output_tokens)
        }
        Endpoint::Completions => {
            let prompt = last_text(request.get("prompt"));
            let prompt_tokens = words(&prompt);
            let id = format!("cmpl-{id_suffix}");
            let body = json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": format!("echo: {prompt}"), "logprobs": null,
                             "finish_reason": finish_reason, "matched_stop": null}],
                "usage": usage(prompt_tokens, output_tokens),
            });
            (id, body, prompt_tokens, output_tokens)
        }
        Endpoint::Embeddings => {
            let inputs: Vec<Value> = match request.get("input") {
                Some(Value::Array(items)) if items.iter().all(|i| !i.is_number()) => items.clone(),
                Some(other) => vec![other.clone()],
                None => vec![],
            };
            let prompt_tokens: u64 = inputs.iter().map(|i| words(&text_of(i))).sum();
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(index, input)| {
                    json!({"object": "embedding", "index": index, "embedding": embedding(input)})
                })
                .collect();
            let id = format!("embd-{id_suffix}");
            let body = json!({
                "id": id,
                "object": "list",
                "model": model,
                "data": data,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
                          "completion_tokens": 0, "prompt_tokens_details": null},
            });
            (id, body, prompt_tokens, 0)
        }
        Endpoint::Responses => {
            let prompt = last_text(request.get("input"));
            let prompt_tokens = words(&prompt);
            let id = format!("resp_{id_suffix}");
            let body = json!({
                "id": id,
                "object": "response",
                "created_at": created,
                "status": "completed",
                "model": model,
                "output": [{
                    "type": "message",
                    "id": format!("msg_{id_suffix}"),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": format!("echo: {prompt}"),
                                 "annotations": []}]
                }],
                "usage": {"input_tokens": prompt_tokens, "output_tokens": output_tokens,
                          "total_tokens": prompt_tokens + output_tokens},
            });
            (id, body, prompt_tokens, output_tokens)
        }
    };
    Answer {
        id,
        body,
        prompt_tokens,
        output_tokens,
        prefix_key: prefix.0,
        prefix_tokens: prefix.1,
    }
}

/// The prompt's token count as `POST /tokenize` tells it: the count generation uses (a chat's
/// messages each counted, a prompt or input as text, token ids one each). `None`: the body has
/// nothing to count, or messages where `messages` is false (SGLang's tokenizer takes text only).
pub fn tokenize(request: &Value, messages: bool) -> Option<u64> {
    if let Some(Value::Array(items)) = request.get("messages") {
        return messages.then(|| items.iter().map(|m| words(&text_of(m))).sum());
    }
    match request.get("prompt")? {
        Value::Array(ids) if ids.iter().all(Value::is_number) => Some(ids.len() as u64),
        Value::Array(texts) => Some(texts.iter().map(|t| words(&text_of(t))).sum()),
        other => Some(words(&text_of(other))),
    }
}

/// The shared part of a chat request (every message but the last): its cache key and tokens.
fn chat_prefix(model: &str, messages: Option<&Value>) -> (u64, u64) {
    let Some(Value::Array(items)) = messages else {
        return (0, 0);
    };
    let Some((_, leading)) = items.split_last() else {
        return (0, 0);
    };
    if leading.is_empty() {
        return (0, 0);
    }
    let tokens = leading.iter().map(|m| words(&text_of(m))).sum();
    let key = hash_of(&format!("{model}\u{0}{}", Value::Array(leading.to_vec())));
    (key, tokens)
}

/// Sets `usage.prompt_tokens_details.cached_tokens` (chat and completions usage shapes).
pub fn set_cached_tokens(body: &mut Value, cached: u64) {
    if let Some(usage) = body.get_mut("usage").and_then(Value::as_object_mut)
        && usage.contains_key("prompt_tokens")
    {
        usage.insert(
            "prompt_tokens_details".into(),
            json!({"cached_tokens": cached}),
        );
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "total_tokens": prompt + completion,
           "completion_tokens": completion, "prompt_tokens_details": null})
}

/// The text of the last message (chat), the prompt (completions) or the last input item.
fn last_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::Array(items)) => items.last().map(text_of).unwrap_or_default(),
        Some(v) => text_of(v),
        None => String::new(),
    }
}

/// Text of a message or content value: a string, `{content: ...}`, or a list of text parts.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or(p.as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Object(map) => map.get("content").map(text_of).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn embedding(input: &Value) -> Vec<f64> {
    let seed = hash_of(&input.to_string());
    (0..8)
        .map(|i| {
            let bits = seed.rotate_left(i * 8) & 0xffff;
            bits as f64 / 65535.0 * 2.0 - 1.0
        })
        .collect()
}

pub fn json(status: StatusCode, body: &Value, request_id: Option<&str>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(id) = request_id {
        builder = builder.header("x-request-id", id);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

pub fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_echoes_the_last_message_and_counts_tokens() {
        let req = json!({"model": "m", "max_tokens": 7, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there"}]}]});
        let a = answer(Endpoint::Chat, &req, &SimConfig::default(), 0, 1);
        assert_eq!(
            a.body["choices"][0]["message"]["content"],
            "echo: hello there"
        );
        assert_eq!(a.body["choices"][0]["finish_reason"], "length");
        assert_eq!(a.body["usage"]["completion_tokens"], 7);
        // "be brief" (the shared prefix) and "hello there".
        assert_eq!(a.body["usage"]["prompt_tokens"], 4);
        assert_eq!(a.prefix_tokens, 2);
        let again = answer(Endpoint::Chat, &req, &SimConfig::default(), 1, 2);
        assert_eq!(again.prefix_key, a.prefix_key);
        assert_eq!(a.body["model"], "m");
    }

    #[test]
    fn numbering_an_answer_is_building_it_with_that_number() {
        let c = SimConfig::default();
        for (endpoint, req) in [
            (
                Endpoint::Chat,
                json!({"messages": [{"role": "user", "content": "hi"}]}),
            ),
            (Endpoint::Responses, json!({"input": "hi"})),
        ] {
            let mut a = answer(endpoint, &req, &c, 7, 0);
            a.number(0x2a);
            let b = answer(endpoint, &req, &c, 7, 0x2a);
            assert_eq!(a.id, b.id);
            let strip = |mut v: Value| {
                v["created"] = Value::Null;
                v["created_at"] = Value::Null;
                v
            };
            assert_eq!(strip(a.body), strip(b.body));
        }
    }

    #[test]
    fn embeddings_are_deterministic_per_input() {
        let req = json!({"input": ["a", "b", "a"]});
        let a = answer(Endpoint::Embeddings, &req, &SimConfig::default(), 0, 0);
        let data = a.body["data"].as_array().expect("data");
        assert_eq!(data.len(), 3);
        assert_eq!(data[0]["embedding"], data[2]["embedding"]);
        assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    }

    #[test]
    fn responses_and_completions_use_their_own_shapes() {
        let c = SimConfig::default();
        let r = answer(Endpoint::Responses, &json!({"input": "hi"}), &c, 0, 0);
        assert_eq!(r.body["output"][0]["content"][0]["text"], "echo: hi");
        assert_eq!(r.body["usage"]["output_tokens"], c.default_max_tokens);
        let p = answer(
            Endpoint::Completions,
            &json!({"prompt": ["x", "y z"]}),
            &c,
            0,
            0,
        );
        assert_eq!(p.body["choices"][0]["text"], "echo: y z");
    }
}

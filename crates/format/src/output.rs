//! Result lines, in the shape OpenAI's batch output and error files use:
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
//!   "error": {"code", "message"} | null}`.
//!
//! The engine's response body is copied into the line as bytes, after one parse that checks it
//! is JSON and reads its `usage`; it is never rebuilt as a DOM and re-encoded.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What a result line says about its request.
#[derive(Debug, Clone, Copy)]
pub enum LineResult<'a> {
    /// The engine answered. `body` must be one JSON value (see [`ResponseBody`]).
    Response {
        status_code: u16,
        request_id: Option<&'a str>,
        body: &'a ResponseBody<'a>,
    },
    /// The request never got an answer (or never ran).
    Error { code: &'a str, message: &'a str },
}

/// Appends one result line, newline included, to `buf`.
pub fn write_line(buf: &mut Vec<u8>, id: &str, custom_id: Option<&str>, outcome: &LineResult<'_>) {
    buf.extend_from_slice(b"{\"id\":");
    push_json_string(buf, id);
    buf.extend_from_slice(b",\"custom_id\":");
    match custom_id {
        Some(c) => push_json_string(buf, c),
        None => buf.extend_from_slice(b"null"),
    }
    match outcome {
        LineResult::Response {
            status_code,
            request_id,
            body,
        } => {
            buf.extend_from_slice(b",\"response\":{\"status_code\":");
            buf.extend_from_slice(status_code.to_string().as_bytes());
            buf.extend_from_slice(b",\"request_id\":");
            match request_id {
                Some(r) => push_json_string(buf, r),
                None => buf.extend_from_slice(b"null"),
            }
            buf.extend_from_slice(b",\"body\":");
            buf.extend_from_slice(body.as_bytes());
            buf.extend_from_slice(b"},\"error\":null}\n");
        }
        LineResult::Error { code, message } => {
            buf.extend_from_slice(b",\"response\":null,\"error\":{\"code\":");
            push_json_string(buf, code);
            buf.extend_from_slice(b",\"message\":");
            push_json_string(buf, message);
            buf.extend_from_slice(b"}}\n");
        }
    }
}

fn push_json_string(buf: &mut Vec<u8>, s: &str) {
    // Writing a str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// A response body that is safe to embed in a JSONL line: one JSON value with no raw line breaks.
/// Borrows the engine's bytes unless line breaks had to be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseBody<'a>(Cow<'a, [u8]>);

/// What the runner reads from a response body besides passing it on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    /// The body's own `id` (e.g. `chatcmpl-…`), used as `request_id` when the engine sends no
    /// `x-request-id` header.
    pub id: Option<String>,
    pub usage: Usage,
}

/// Token counts from a response's `usage`, under either the chat/completions names
/// (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`) or the Responses API names (`input_tokens`,
/// `output_tokens`, `input_tokens_details`, `output_tokens_details`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Of the input tokens, those read from the engine's prefix cache.
    pub cached_tokens: u64,
    /// Of the output tokens, those spent reasoning.
    pub reasoning_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Self) {
        self.input_tokens += rhs.input_tokens;
        self.output_tokens += rhs.output_tokens;
        self.total_tokens += rhs.total_tokens;
        self.cached_tokens += rhs.cached_tokens;
        self.reasoning_tokens += rhs.reasoning_tokens;
    }
}

impl Usage {
    /// `self` less `earlier`, field by field (never below zero): what was added since.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            total_tokens: self.total_tokens.saturating_sub(earlier.total_tokens),
            cached_tokens: self.cached_tokens.saturating_sub(earlier.cached_tokens),
            reasoning_tokens: self
                .reasoning_tokens
                .saturating_sub(earlier.reasoning_tokens),
        }
    }
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    usage: Option<RawUsage>,
}

#[derive(Deserialize, Default)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    // Engines send `null` for details they do not count: both shapes read as "none".
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> ResponseBody<'a> {
    /// Checks that `bytes` is one JSON value and reads its id and usage. A body that is not JSON
    /// is refused, so the caller can decide how to report it.
    pub fn parse(bytes: &'a [u8]) -> Result<(Self, ResponseInfo), serde_json::Error> {
        let info = match serde_json::from_slice::<Probe<'_>>(bytes) {
            Ok(probe) => ResponseInfo {
                id: probe
                    .id
                    .and_then(|raw| serde_json::from_str::<Str<'_>>(raw.get()).ok())
                    .map(|Str(s)| s.into_owned()),
                usage: probe.usage.map(Usage::from).unwrap_or_default(),
            },
            // Valid JSON that is not an object (or has a `usage` of another shape) is still a
            // body we can pass on; it just carries no information we use.
            Err(_) => {
                serde_json::from_slice::<serde::de::IgnoredAny>(bytes)?;
                ResponseInfo::default()
            }
        };
        Ok((Self(one_line(bytes)), info))
    }

    /// Wraps a body that is not JSON (an HTML error page from a proxy, say) in an OpenAI-style
    /// error object, so the line stays valid JSON and the text is not lost.
    pub fn from_text(status_code: u16, text: &[u8]) -> Self {
        let text = String::from_utf8_lossy(text);
        let value = serde_json::json!({
            "error": {
                "message": text,
                "type": "engine_error",
                "param": null,
                "code": status_code,
            }
        });
        Self(Cow::Owned(value.to_string().into_bytes()))
    }

    /// An error answer (a non-2xx status) in OpenAI's shape, `{"error": {"message", "type",
    /// "param", "code"}}`, so readers of the error file find the reason where OpenAI puts it
    /// whatever the engine. A body already in that shape is kept as it is; any other (FastAPI's
    /// `{"detail": ...}`, SGLang's flat `{"object": "error", "message", ...}`, ...) is wrapped,
    /// its message taken from it, and kept byte for byte under `engine_body`.
    pub fn as_openai_error(self, status_code: u16) -> Self {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&self.0) else {
            return self;
        };
        if value
            .get("error")
            .and_then(|e| e.get("message"))
            .is_some_and(serde_json::Value::is_string)
        {
            return self;
        }
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let message = value
            .get("message")
            .and_then(text)
            .or_else(|| value.get("error").and_then(text))
            .or_else(|| value.get("detail").map(detail_message))
            .unwrap_or_else(|| {
                let compact = value.to_string();
                compact.chars().take(500).collect()
            });
        let kind = value.get("type").and_then(text).unwrap_or_else(|| {
            if status_code >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            }
            .to_owned()
        });
        let error = serde_json::json!({
            "message": message, "type": kind, "param": null, "code": status_code,
        });
        let mut wrapped = Vec::with_capacity(self.0.len() + 160);
        wrapped.extend_from_slice(b"{\"error\":");
        wrapped.extend_from_slice(error.to_string().as_bytes());
        wrapped.extend_from_slice(b",\"engine_body\":");
        wrapped.extend_from_slice(&self.0);
        wrapped.push(b'}');
        Self(Cow::Owned(wrapped))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The text of FastAPI's `detail`: a string, or a list of validation problems
/// (`{"loc": [...], "msg": ...}`), each written `loc: msg`.
fn detail_message(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| {
                let msg = item.get("msg").and_then(serde_json::Value::as_str);
                let loc = item
                    .get("loc")
                    .and_then(serde_json::Value::as_array)
                    .map(|parts| {
                        parts
                            .iter()
                            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                            .collect::<Vec<_>>()
                            .join(".")
                    });
                match (loc, msg) {
                    (Some(loc), Some(msg)) => format!("{loc}: {msg}"),
                    (None, Some(msg)) => msg.to_owned(),
                    _ => item.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// The usage recorded in a result line of an output file (`response.body.usage`); none when
/// the line has no such field.
pub fn usage_of_result(line: &[u8]) -> Usage {
    #[derive(Deserialize)]
    struct ResultLine {
        response: Option<Response>,
    }
    #[derive(Deserialize)]
    struct Response {
        body: Option<Body>,
    }
    #[derive(Deserialize)]
    struct Body {
        usage: Option<RawUsage>,
    }
    serde_json::from_slice::<ResultLine>(line)
        .ok()
        .and_then(|l| l.response?.body?.usage)
        .map(Usage::from)
        .unwrap_or_default()
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Self {
        let input_tokens = u.prompt_tokens.or(u.input_tokens).unwrap_or(0);
        let output_tokens = u.completion_tokens.or(u.output_tokens).unwrap_or(0);
        let input_details = u.prompt_tokens_details.or(u.input_tokens_details);
        let output_details = u.completion_tokens_details.or(u.output_tokens_details);
        Self {
            input_tokens,
            output_tokens,
            total_tokens: u.total_tokens.unwrap_or(input_tokens + output_tokens),
            cached_tokens: input_details.and_then(|d| d.cached_tokens).unwrap_or(0),
            reasoning_tokens: output_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
        }
    }
}

/// Removes raw line breaks and surrounding white space from valid JSON. Inside JSON strings
/// line breaks must be escaped, so every raw CR or LF byte is insignificant white space.
fn one_line(bytes: &[u8]) -> Cow<'_, [u8]> {
    let trimmed = bytes.trim_ascii();
    if !trimmed.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(trimmed);
    }
    Cow::Owned(
        trimmed
            .iter()
            .copied()
            .filter(|&b| b != b'\n' && b != b'\r')
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_response_line_with_the_body_verbatim() {
        let (body, info) =
            ResponseBody::parse(b"{\n \"id\": \"c-1\",\n \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 4}\n}\n")
                .expect("json");
        assert_eq!(info.id.as_deref(), Some("c-1"));
        assert_eq!(
            info.usage,
            Usage {
                input_tokens: 3,
                output_tokens: 4,
                total_tokens: 7,
                ..Default::default()
            }
        );
        let mut buf = Vec::new();
        let outcome = LineResult::Response {
            status_code: 200,
            request_id: Some("r\"1"),
            body: &body,
        };
        write_line(&mut buf, "batch_req_1", Some("x"), &outcome);
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("line is JSON");
        assert_eq!(v["response"]["request_id"], "r\"1");
        assert_eq!(v["response"]["body"]["usage"]["completion_tokens"], 4);
        assert_eq!(v["error"], serde_json::Value::Null);
    }

    #[test]
    fn writes_an_error_line() {
        let mut buf = Vec::new();
        let outcome = LineResult::Error {
            code: "batch_expired",
            message: "late",
        };
        write_line(&mut buf, "i", None, &outcome);
        assert_eq!(
            buf,
            b"{\"id\":\"i\",\"custom_id\":null,\"response\":null,\"error\":{\"code\":\"batch_expired\",\"message\":\"late\"}}\n"
        );
    }

    #[test]
    fn non_json_bodies_are_refused_or_wrapped() {
        assert!(ResponseBody::parse(b"<html>bad gateway</html>").is_err());
        let body = ResponseBody::from_text(502, b"<html>\nbad gateway</html>");
        let v: serde_json::Value = serde_json::from_slice(body.as_bytes()).expect("json");
        assert_eq!(v["error"]["message"], "<html>\nbad gateway</html>");
        assert!(!body.as_bytes().contains(&b'\n'));
    }

    fn wrapped(status: u16, body: &[u8]) -> serde_json::Value {
        let (parsed, _) = ResponseBody::parse(body).expect("json");
        let out = parsed.as_openai_error(status);
        serde_json::from_slice(out.as_bytes()).expect("still json")
    }

    #[test]
    fn engine_errors_of_any_shape_read_as_openai_errors_with_the_original_kept() {
        let openai = br#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#;
        let (parsed, _) = ResponseBody::parse(openai).expect("json");
        assert_eq!(parsed.as_openai_error(400).as_bytes(), openai.as_slice());

        let fastapi = br#"{"detail":"Server is pinned to '/m'; requested 'x'."}"#;
        let v = wrapped(400, fastapi);
        assert_eq!(
            v["error"]["message"],
            "Server is pinned to '/m'; requested 'x'."
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(
            v["engine_body"],
            serde_json::from_slice::<serde_json::Value>(fastapi).expect("json")
        );
        let (parsed, _) = ResponseBody::parse(fastapi).expect("json");
        let raw = parsed.as_openai_error(400);
        assert!(
            raw.as_bytes()
                .ends_with(&[b",\"engine_body\":".as_slice(), fastapi.as_slice(), b"}"].concat())
        );

        let validation =
            br#"{"detail":[{"type":"json_invalid","loc":["body",1],"msg":"JSON decode error"}]}"#;
        assert_eq!(
            wrapped(422, validation)["error"]["message"],
            "body.1: JSON decode error"
        );

        let flat = br#"{"object":"error","message":"The request queue is full.","type":"ServiceUnavailableError","param":null,"code":503}"#;
        let v = wrapped(503, flat);
        assert_eq!(v["error"]["message"], "The request queue is full.");
        assert_eq!(v["error"]["type"], "ServiceUnavailableError");

        let v = wrapped(500, br#"[1,2]"#);
        assert_eq!(
            (v["error"]["message"].as_str(), v["error"]["type"].as_str()),
            (Some("[1,2]"), Some("server_error"))
        );
    }

    #[test]
    fn responses_api_usage_names_are_read() {
        let (_, info) = ResponseBody::parse(
            br#"{"usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}"#,
        )
        .expect("json");
        assert_eq!(info.usage.input_tokens, 5);
        assert_eq!(info.usage.output_tokens, 2);
        let (_, info) = ResponseBody::parse(b"[1,2]").expect("json array is still JSON");
        assert_eq!(info, ResponseInfo::default());
    }

    #[test]
    fn cached_and_reasoning_tokens_are_read_under_both_names_and_null_is_none() {
        let chat = br#"{"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,
            "prompt_tokens_details":{"cached_tokens":6},
            "completion_tokens_details":{"reasoning_tokens":3}}}"#;
        let (_, info) = ResponseBody::parse(chat).expect("json");
        assert_eq!(
            (info.usage.cached_tokens, info.usage.reasoning_tokens),
            (6, 3)
        );
        let responses = br#"{"usage":{"input_tokens":9,"output_tokens":4,
            "input_tokens_details":{"cached_tokens":2},
            "output_tokens_details":{"reasoning_tokens":1}}}"#;
        let (_, info) = ResponseBody::parse(responses).expect("json");
        assert_eq!(
            (info.usage.cached_tokens, info.usage.reasoning_tokens),
            (2, 1)
        );
        // SGLang and vLLM send null details when they do not count them.
        let nulls = br#"{"usage":{"prompt_tokens":9,"completion_tokens":4,
            "prompt_tokens_details":null,"completion_tokens_details":null}}"#;
        let (_, info) = ResponseBody::parse(nulls).expect("json");
        assert_eq!((info.usage.input_tokens, info.usage.cached_tokens), (9, 0));
        let line = br#"{"response":{"body":{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":1}}}}}"#;
        assert_eq!(usage_of_result(line).cached_tokens, 1);
    }
}

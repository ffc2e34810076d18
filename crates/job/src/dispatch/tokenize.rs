//! The engine's own token count of a prompt, for the pre-flight pass (`run --preflight`).
//!
//! vLLM serves `POST /tokenize` (a prompt, or chat messages rendered with the model's template);
//! SGLang serves `POST /v1/tokenize` (a prompt only, so a chat is counted as the text of its
//! messages, without the template's few tokens). Both answer `count` and `max_model_len`; both
//! list `max_model_len` in `/v1/models` too. An engine without either route (transformers
//! serve) is estimated at four bytes of text per token, and nothing is refused on an estimate.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};

use super::Engines;
use super::transport::{Transport, Url};

/// Routes tried, in order: vLLM's, then SGLang's.
const ROUTES: [&str; 2] = ["/tokenize", "/v1/tokenize"];
const TIMEOUT: Duration = Duration::from_secs(10);
/// Failures in a row after which the tokenizer is given up for the rest of the pass (an engine
/// that hangs would otherwise cost a timeout per line).
const MAX_FAILURES_IN_A_ROW: u32 = 8;

/// What a prompt is made of, as far as counting its tokens goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Chat messages (counted with the template where the engine can).
    Messages(Value),
    Text(String),
    /// Token ids given as such: their count is known.
    Tokens(u64),
}

/// A prompt's count, and whether the engine made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Engine(u64),
    Estimate(u64),
}

/// The tokenizer of one engine, found by [`Engines::tokenizer`].
pub struct Tokenizer<'a> {
    route: Option<(&'a Transport, Url)>,
    /// Whether the route takes chat messages (it refused them once: no).
    messages: AtomicBool,
    /// Counts that failed in a row (none answered since).
    failures: AtomicU32,
    model: String,
    /// The model's context length, from `/v1/models` or the tokenizer's answer.
    pub context_length: Option<u64>,
    /// Where the counts come from, for the report: the route's URL, or why they are estimated.
    pub source: String,
}

impl Engines {
    /// Finds a tokenizer for `model` on the first engine that has one, with the model's context
    /// length; an estimating one when none has.
    pub async fn tokenizer(&self, model: &str) -> Tokenizer<'_> {
        let mut context_length = None;
        // Why no engine's tokenizer is used, each engine in turn: the estimate says so.
        let mut why = Vec::new();
        for (transport, base) in self.transports.iter().zip(&self.bases) {
            if context_length.is_none() {
                context_length = listed_context(transport, base, model).await;
            }
            for route in ROUTES {
                let Ok(url) = Url::parse(&format!("{base}{route}")) else {
                    continue;
                };
                let probe = json!({"model": model, "prompt": "hello"});
                let Ok(answer) = post(transport, &url, &probe).await else {
                    why.push(format!("{base} cannot be reached"));
                    break; // try the next engine
                };
                if answer.0 != 200 {
                    why.push(format!("{base}{route} answered {}", answer.0));
                    continue; // 404: not this route
                }
                return Tokenizer {
                    context_length: context_length.or(answer.1.max_model_len),
                    source: format!("{base}{route}"),
                    route: Some((transport, url)),
                    messages: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    model: model.to_owned(),
                };
            }
        }
        Tokenizer {
            route: None,
            messages: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            model: model.to_owned(),
            context_length,
            source: format!("estimated at 4 bytes per token: {}", why.join("; ")),
        }
    }
}

impl Tokenizer<'_> {
    /// The prompt's token count: the engine's, or an estimate when the engine has no
    /// tokenizer or failed to answer for this prompt.
    pub async fn count(&self, prompt: &Prompt) -> Count {
        let Prompt::Tokens(n) = prompt else {
            if self.failures.load(Ordering::Relaxed) >= MAX_FAILURES_IN_A_ROW {
                return Count::Estimate(estimate(prompt));
            }
            return match self.ask(prompt).await {
                Some(n) => {
                    self.failures.store(0, Ordering::Relaxed);
                    Count::Engine(n)
                }
                None => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    Count::Estimate(estimate(prompt))
                }
            };
        };
        Count::Engine(*n)
    }

    async fn ask(&self, prompt: &Prompt) -> Option<u64> {
        let (transport, url) = self.route.as_ref()?;
        if let Prompt::Messages(messages) = prompt
            && self.messages.load(Ordering::Relaxed)
        {
            let body = json!({"model": self.model, "messages": messages,
                              "add_generation_prompt": true});
            match post(transport, url, &body).await {
                Ok((200, answer)) => return answer.count,
                // The route takes text only (SGLang): count the messages' text from now on.
                Ok((400 | 422, _)) => self.messages.store(false, Ordering::Relaxed),
                _ => return None,
            }
        }
        let body = json!({"model": self.model, "prompt": text_of(prompt)});
        match post(transport, url, &body).await {
            Ok((200, answer)) => answer.count,
            _ => None,
        }
    }
}

/// What a tokenize route answers (both servers' shapes).
#[derive(serde::Deserialize, Default)]
struct Counted {
    count: Option<u64>,
    max_model_len: Option<u64>,
}

async fn post(transport: &Transport, url: &Url, body: &Value) -> Result<(u16, Counted), ()> {
    let bytes = Bytes::from(serde_json::to_vec(body).map_err(|_| ())?);
    let answer = transport
        .send(Method::POST, url, bytes, TIMEOUT)
        .await
        .map_err(|_| ())?;
    let counted = serde_json::from_slice(&answer.body).unwrap_or_default();
    Ok((answer.status, counted))
}

/// The `max_model_len` that `/v1/models` lists for `model` (or for the only model listed).
async fn listed_context(transport: &Transport, base: &str, model: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Card>,
    }
    #[derive(serde::Deserialize)]
    struct Card {
        id: String,
        max_model_len: Option<u64>,
    }
    let url = Url::parse(&format!("{base}/v1/models")).ok()?;
    let answer = transport
        .send(Method::GET, &url, Bytes::new(), super::PROBE_TIMEOUT)
        .await
        .ok()?;
    let list: List = serde_json::from_slice(&answer.body).ok()?;
    let only = (list.data.len() == 1)
        .then(|| list.data[0].max_model_len)
        .flatten();
    list.data
        .iter()
        .find(|c| c.id == model)
        .and_then(|c| c.max_model_len)
        .or(only)
}

/// The text of a prompt (a chat's messages joined), for a text-only tokenizer or an estimate.
fn text_of(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Messages(messages) => {
            let mut text = String::new();
            collect_text(messages, &mut text);
            text
        }
        Prompt::Text(text) => text.clone(),
        Prompt::Tokens(_) => String::new(),
    }
}

/// Every string under `content` or `text` keys (and plain string items), space separated:
/// the words of messages, content parts and Responses input items.
fn collect_text(value: &Value, into: &mut String) {
    match value {
        Value::String(s) => {
            if !into.is_empty() {
                into.push(' ');
            }
            into.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|v| collect_text(v, into)),
        Value::Object(map) => ["content", "text"]
            .iter()
            .filter_map(|k| map.get(*k))
            .for_each(|v| collect_text(v, into)),
        _ => {}
    }
}

/// Four bytes of text per token, rounded up (at least one token).
fn estimate(prompt: &Prompt) -> u64 {
    match prompt {
        Prompt::Tokens(n) => *n,
        other => (text_of(other).len() as u64).div_ceil(4).max(1),
    }
}

/// What a request body asks the model to read, and the most it may write: the prompt under
/// the endpoint's key (`messages`, `prompt` or `input`), and `max_tokens`,
/// `max_completion_tokens` or `max_output_tokens` (`None`: no limit given).
pub fn prompt_of(body: &Value) -> (Prompt, Option<u64>) {
    let limit = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64));
    let prompt = if let Some(messages @ Value::Array(_)) = body.get("messages") {
        Prompt::Messages(messages.clone())
    } else {
        match body.get("prompt").or_else(|| body.get("input")) {
            Some(Value::Array(items))
                if !items.is_empty() && items.iter().all(Value::is_number) =>
            {
                Prompt::Tokens(items.len() as u64)
            }
            Some(Value::Array(items)) if items.iter().all(Value::is_array) => Prompt::Tokens(
                items
                    .iter()
                    .filter_map(Value::as_array)
                    .map(|a| a.len() as u64)
                    .sum(),
            ),
            Some(Value::String(text)) => Prompt::Text(text.clone()),
            Some(items @ Value::Array(_)) => Prompt::Messages(items.clone()),
            _ => Prompt::Text(String::new()),
        }
    };
    (prompt, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_read_from_each_endpoints_body() {
        let (p, limit) = prompt_of(&json!({"messages": [{"role": "user", "content": "a b"}],
                                           "max_completion_tokens": 7}));
        assert!(matches!(p, Prompt::Messages(_)));
        assert_eq!(limit, Some(7));
        assert_eq!(text_of(&p), "a b");
        assert_eq!(
            prompt_of(&json!({"prompt": "x y z"})),
            (Prompt::Text("x y z".into()), None)
        );
        assert_eq!(
            prompt_of(&json!({"prompt": [1, 2, 3]})).0,
            Prompt::Tokens(3)
        );
        assert_eq!(
            prompt_of(&json!({"input": [[1, 2], [3]]})).0,
            Prompt::Tokens(3)
        );
        let (items, _) = prompt_of(&json!({"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "hello there"}]}], "max_output_tokens": 3}));
        assert_eq!(text_of(&items), "hello there");
        assert_eq!(
            prompt_of(&json!({"input": ["a", "b c"]})).0,
            Prompt::Messages(json!(["a", "b c"]))
        );
    }

    #[test]
    fn an_estimate_is_four_bytes_per_token_rounded_up() {
        assert_eq!(estimate(&Prompt::Text("abcde".into())), 2);
        assert_eq!(estimate(&Prompt::Text(String::new())), 1);
        assert_eq!(estimate(&Prompt::Tokens(9)), 9);
    }
}

//! The failures of a run by error code, each with one sample message, for the summary: what a
//! user would otherwise have to dig out of the error file.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Messages longer than this are cut in the summary.
const SAMPLE_CHARS: usize = 200;

/// One error code's count and its first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub code: String,
    pub count: u64,
    pub sample: String,
    /// The `custom_id` of the line the sample comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_custom_id: Option<String>,
}

#[derive(Debug, Default)]
pub struct ErrorTally(Mutex<BTreeMap<String, Tallied>>);

/// One code's count, first message and the `custom_id` of its line.
type Tallied = (u64, String, Option<String>);

impl ErrorTally {
    /// Counts the failed result `line` (a line of the error file) under its code: the
    /// record's `error.code`, or for an engine's answer `http STATUS` and its error code.
    pub fn add(&self, line: &[u8]) {
        let (code, message, custom_id) = code_of(line);
        let mut codes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = codes.entry(code).or_insert_with(|| (0, message, custom_id));
        entry.0 += 1;
    }

    /// The `n` most frequent codes, most frequent first.
    pub fn top(&self, n: usize) -> Vec<ErrorCount> {
        let codes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<ErrorCount> = codes
            .iter()
            .map(|(code, (count, sample, custom_id))| ErrorCount {
                code: code.clone(),
                count: *count,
                sample: sample.clone(),
                sample_custom_id: custom_id.clone(),
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
        all.truncate(n);
        all
    }
}

/// A failed line's code, message and `custom_id`.
fn code_of(line: &[u8]) -> (String, String, Option<String>) {
    let value: Value = serde_json::from_slice(line).unwrap_or_default();
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let custom_id = text(&value["custom_id"]);
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        let code = text(&error["code"]).unwrap_or_else(|| "error".into());
        return (
            code,
            cut(text(&error["message"]).unwrap_or_default()),
            custom_id,
        );
    }
    let response = &value["response"];
    let status = response["status_code"].as_u64().unwrap_or(0);
    let error = &response["body"]["error"];
    let detail = text(&error["code"])
        .or_else(|| text(&error["type"]))
        .map_or_else(String::new, |c| format!(" {c}"));
    let message = text(&error["message"]).unwrap_or_else(|| response["body"].to_string());
    (format!("http {status}{detail}"), cut(message), custom_id)
}

fn cut(message: String) -> String {
    match message.char_indices().nth(SAMPLE_CHARS) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_code_with_their_first_message() {
        let tally = ErrorTally::default();
        let own = br#"{"custom_id":"a","response":null,"error":{"code":"batch_expired","message":"ran out of time"}}"#;
        let engine = br#"{"custom_id":"b","response":{"status_code":400,"body":{"error":{"message":"too long","type":"BadRequestError","code":400}}},"error":null}"#;
        tally.add(own);
        tally.add(engine);
        tally.add(engine);
        let top = tally.top(5);
        assert_eq!(top[0].code, "http 400 BadRequestError");
        assert_eq!((top[0].count, top[0].sample.as_str()), (2, "too long"));
        assert_eq!(top[0].sample_custom_id.as_deref(), Some("b"));
        assert_eq!((top[1].code.as_str(), top[1].count), ("batch_expired", 1));
        assert_eq!(tally.top(1).len(), 1);
        assert_eq!(cut("é".repeat(300)).chars().count(), SAMPLE_CHARS + 1);
    }
}

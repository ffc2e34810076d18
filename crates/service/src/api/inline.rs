//! Batches created without an upload (extension): `POST /v1/batches` with a `requests` array.
//!
//! The body is read as it arrives by [`Splitter`], a byte-level scanner of the top-level JSON
//! object: each element of `requests` is copied, as one line, to the batch's new input file
//! (never held whole), and every other field is kept (at most [`MAX_FIELDS_BYTES`]) to be read
//! as an ordinary create request. So a body of any size up to the upload limit takes memory
//! bounded by the chunk size and the other fields, and the file then goes through the same
//! validation as an uploaded one.

use axum::body::Body;
use futures_util::StreamExt;

use axum::http::HeaderMap;

use super::AppState;
use crate::auth::Owner;
use crate::blobs::Incoming;
use crate::error::ApiError;
use crate::store::{FileRow, now_secs};

/// A create request's body as received.
pub struct Received {
    /// The fields besides `requests`, as a JSON object.
    pub fields: Vec<u8>,
    /// The `requests` array's lines, stored under `file_id` (not yet committed), and how many.
    pub requests: Option<(Incoming, u64)>,
    /// A hash of the whole body, so a retried create with the same idempotency key can be told
    /// from another request under it.
    pub digest: String,
}

/// Reads a create request's body as it arrives: `requests` into a blob named `file_id`, the
/// other fields kept; at most `limit` bytes in all.
pub async fn receive(
    app: &AppState,
    body: Body,
    file_id: &str,
    limit: u64,
) -> Result<Received, ApiError> {
    let mut stream = body.into_data_stream();
    let mut splitter = Splitter::default();
    let (mut lines, mut incoming, mut total) = (Vec::new(), None::<Incoming>, 0u64);
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("Cannot read the request body: {e}")))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::too_large(format!(
                "The request body is larger than this service's limit of {limit} bytes \
                 (--max-upload-bytes)"
            )));
        }
        hash.update(&chunk);
        if let Err(e) = splitter.feed(&chunk, &mut lines) {
            return Err(match splitter.fields_full() {
                true => ApiError::too_large(e),
                false => ApiError::invalid(e),
            });
        }
        if lines.is_empty() {
            continue;
        }
        let to = match &mut incoming {
            Some(to) => to,
            None => incoming.insert(app.blobs.incoming(file_id).await.map_err(store_error)?),
        };
        to.write(&lines).await.map_err(store_error)?;
        lines.clear();
    }
    let count = splitter.requests();
    let fields = splitter.finish().map_err(ApiError::invalid)?;
    let requests = match (count, incoming) {
        (None, _) => None,
        (Some(n), Some(file)) if n > 0 => Some((file, n)),
        (Some(_), _) => {
            return Err(
                ApiError::invalid("'requests' is empty: give at least one request")
                    .param("requests"),
            );
        }
    };
    Ok(Received {
        fields,
        requests,
        digest: format!("{:032x}", hash.digest128()),
    })
}

/// The `Idempotency-Key` header, if any: up to 255 printable ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
        _ => Err(ApiError::invalid(
            "The Idempotency-Key header must be 1 to 255 printable ASCII characters",
        )),
    }
}

/// Stores the lines of a create's `requests` as the owner's new input file `file_id`.
pub async fn store_requests(
    app: &AppState,
    owner: &Owner,
    requests: Incoming,
    file_id: &str,
) -> Result<FileRow, ApiError> {
    let created_at = now_secs();
    let row = FileRow {
        id: file_id.to_owned(),
        owner: owner.0.clone(),
        filename: "requests.jsonl".into(),
        purpose: "batch".into(),
        bytes: requests.bytes as i64,
        created_at,
        expires_at: app.config.batch_file_ttl.map(|t| created_at + t as i64),
        blob: file_id.to_owned(),
    };
    requests
        .commit(&app.blobs, file_id)
        .await
        .map_err(store_error)?;
    if let Err(e) = app.store.insert_file(&row).await {
        let _ = app.blobs.remove(file_id).await;
        return Err(e.into());
    }
    Ok(row)
}

fn store_error(e: crate::blobs::BlobError) -> ApiError {
    ApiError::internal("cannot store the requests", e)
}

/// The most bytes the fields besides `requests` may take.
pub const MAX_FIELDS_BYTES: usize = 2 * 1024 * 1024;
/// The longest top-level key kept.
const MAX_KEY_BYTES: usize = 256;

/// Where the bytes of the current top-level value go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A field other than `requests`: kept.
    Field,
    /// The `requests` array: its elements go out as lines.
    Requests,
}

/// Splits a create request's body into its `requests` lines and its other fields.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Containers open: 1 inside the top-level object.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1: a key is expected (before its colon).
    expecting_key: bool,
    /// At depth 1 after a colon: the value has started.
    value_started: bool,
    target: Option<Target>,
    key: Vec<u8>,
    /// The other fields, as `"key":value` pairs separated by commas.
    fields: Vec<u8>,
    /// The top-level object has closed.
    closed: bool,
    saw_requests: bool,
    requests: u64,
}

impl Splitter {
    /// Reads `chunk`, appending the lines of `requests` elements it completes or continues to
    /// `lines`.
    pub fn feed(&mut self, chunk: &[u8], lines: &mut Vec<u8>) -> Result<(), String> {
        chunk.iter().try_for_each(|&b| self.byte(b, lines))
    }

    /// Whether the fields besides `requests` reached [`MAX_FIELDS_BYTES`].
    pub fn fields_full(&self) -> bool {
        self.fields.len() >= MAX_FIELDS_BYTES
    }

    /// Whether the body had a `requests` array, and how many requests it held.
    pub fn requests(&self) -> Option<u64> {
        self.saw_requests.then_some(self.requests)
    }

    /// The other fields as a JSON object, once the body has ended.
    pub fn finish(self) -> Result<Vec<u8>, String> {
        if !self.closed {
            return Err("The body ends before its JSON object closes".into());
        }
        let mut object = Vec::with_capacity(self.fields.len() + 2);
        object.push(b'{');
        object.extend_from_slice(&self.fields);
        object.push(b'}');
        Ok(object)
    }

    fn byte(&mut self, b: u8, lines: &mut Vec<u8>) -> Result<(), String> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return self.emit(b, lines);
        }
        if b.is_ascii_whitespace() {
            return Ok(()); // insignificant outside strings (and a line break would split a line)
        }
        if self.closed {
            return Err("Unexpected bytes after the body's JSON object".into());
        }
        if self.depth == 0 {
            if b != b'{' {
                return Err("The body must be a JSON object".into());
            }
            self.depth = 1;
            self.expecting_key = true;
            return Ok(());
        }
        if self.depth == 1 {
            return self.top_level(b, lines);
        }
        self.inside(b, lines)
    }

    /// A byte between the top-level object's members, or the first of a member's value.
    fn top_level(&mut self, b: u8, lines: &mut Vec<u8>) -> Result<(), String> {
        match b {
            b'}' if self.expecting_key || self.value_started => {
                self.end_member();
                self.depth = 0;
                self.closed = true;
                Ok(())
            }
            b',' if self.value_started => {
                self.end_member();
                self.expecting_key = true;
                Ok(())
            }
            b':' if self.expecting_key && !self.key.is_empty() => {
                self.expecting_key = false;
                Ok(())
            }
            b'"' if self.expecting_key => {
                self.in_string = true;
                self.emit(b, lines)
            }
            _ if !self.expecting_key && !self.value_started => self.start_value(b, lines),
            // The rest of a number, `true`, `false` or `null`.
            _ if self.value_started && self.target == Some(Target::Field) => self.emit(b, lines),
            _ => Err(format!(
                "The body is not a valid JSON object (unexpected {:?})",
                char::from(b)
            )),
        }
    }

    fn start_value(&mut self, b: u8, lines: &mut Vec<u8>) -> Result<(), String> {
        self.value_started = true;
        if names_requests(&self.key) {
            if self.saw_requests {
                return Err("'requests' is given twice: give one array of requests".into());
            }
            if b != b'[' {
                return Err("'requests' must be an array of request objects".into());
            }
            self.saw_requests = true;
            self.target = Some(Target::Requests);
            self.depth += 1;
            return Ok(());
        }
        if !self.fields.is_empty() {
            self.fields.push(b',');
        }
        let key = std::mem::take(&mut self.key);
        self.fields.extend_from_slice(&key);
        self.fields.push(b':');
        self.target = Some(Target::Field);
        self.key = key;
        match b {
            b'{' | b'[' => self.depth += 1,
            b'"' => self.in_string = true,
            _ => {}
        }
        self.emit(b, lines)
    }

    /// A byte inside a member's value (depth 2 or more).
    fn inside(&mut self, b: u8, lines: &mut Vec<u8>) -> Result<(), String> {
        let requests = self.target == Some(Target::Requests);
        match b {
            b'{' | b'[' => {
                if requests && self.depth == 2 && b != b'{' {
                    return Err(self.not_an_object());
                }
                self.depth += 1;
                self.emit(b, lines)
            }
            b'}' | b']' => {
                self.depth -= 1;
                if requests && self.depth == 1 {
                    return Ok(()); // the array's end
                }
                self.emit(b, lines)?;
                if requests && self.depth == 2 {
                    lines.push(b'\n');
                    self.requests += 1;
                }
                Ok(())
            }
            b',' if requests && self.depth == 2 => Ok(()),
            b'"' => {
                if requests && self.depth == 2 {
                    return Err(self.not_an_object());
                }
                self.in_string = true;
                self.emit(b, lines)
            }
            _ if requests && self.depth == 2 => Err(self.not_an_object()),
            _ => self.emit(b, lines),
        }
    }

    fn not_an_object(&self) -> String {
        format!(
            "requests[{}] must be an object with custom_id, method, url and body",
            self.requests
        )
    }

    fn end_member(&mut self) {
        self.key.clear();
        self.target = None;
        self.value_started = false;
    }

    /// Sends a byte where it belongs: the key being read, a request line, or the fields.
    fn emit(&mut self, b: u8, lines: &mut Vec<u8>) -> Result<(), String> {
        if self.depth == 1 && self.expecting_key {
            if self.key.len() >= MAX_KEY_BYTES {
                return Err("A key of the body is too long".into());
            }
            self.key.push(b);
            return Ok(());
        }
        match self.target {
            Some(Target::Requests) => lines.push(b),
            _ => {
                if self.fields.len() >= MAX_FIELDS_BYTES {
                    return Err(format!(
                        "The fields besides 'requests' are larger than {} MB",
                        MAX_FIELDS_BYTES >> 20
                    ));
                }
                self.fields.push(b);
            }
        }
        Ok(())
    }
}

/// Whether a key (as written, quotes included) is `requests`, escapes such as `\u0065` read as
/// the characters they stand for, as any JSON reader would.
fn names_requests(key: &[u8]) -> bool {
    if key == b"\"requests\"" {
        return true;
    }
    key.contains(&b'\\') && serde_json::from_slice::<String>(key).is_ok_and(|k| k == "requests")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `body` fed in chunks of `size` bytes.
    fn split(body: &str, size: usize) -> Result<(String, String, Option<u64>), String> {
        let mut s = Splitter::default();
        let mut lines = Vec::new();
        for chunk in body.as_bytes().chunks(size.max(1)) {
            s.feed(chunk, &mut lines)?;
        }
        let requests = s.requests();
        let fields = s.finish()?;
        Ok((
            String::from_utf8(lines).expect("utf-8"),
            String::from_utf8(fields).expect("utf-8"),
            requests,
        ))
    }

    #[test]
    fn requests_become_lines_and_the_other_fields_stay_an_object() {
        let body = r#"{ "endpoint": "/v1/chat/completions",
            "requests": [
              {"custom_id": "a", "body": {"messages": [{"role": "user", "content": "x, y ]}"}]}},
              {"custom_id": "b\"]", "body": {}}
            ],
            "metadata": {"k": "v"}, "completion_window": "24h", "n": 1.5, "t": true }"#;
        for size in [1, 3, 7, 4096] {
            let (lines, fields, n) = split(body, size).expect("split");
            assert_eq!(n, Some(2));
            let lines: Vec<serde_json::Value> = lines
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                .collect();
            assert_eq!(lines[0]["body"]["messages"][0]["content"], "x, y ]}");
            assert_eq!(lines[1]["custom_id"], "b\"]");
            let fields: serde_json::Value = serde_json::from_str(&fields).expect("fields");
            assert_eq!(
                fields,
                serde_json::json!({"endpoint": "/v1/chat/completions", "metadata": {"k": "v"},
                                   "completion_window": "24h", "n": 1.5, "t": true})
            );
        }
    }

    #[test]
    fn a_body_without_requests_is_its_fields() {
        let (lines, fields, n) =
            split(r#"{"input_file_id":"file-1","x":[1,{"a":[]}]}"#, 2).expect("split");
        assert_eq!((lines.as_str(), n), ("", None));
        assert_eq!(fields, r#"{"input_file_id":"file-1","x":[1,{"a":[]}]}"#);
        assert_eq!(split("{}", 1).expect("empty").1, "{}");
        assert_eq!(split(r#"{"requests": []}"#, 1).expect("none").2, Some(0));
        // An escaped key is the same key.
        let (lines, fields, n) = split(r#"{"requ\u0065sts": [{"a":1}]}"#, 3).expect("escaped");
        assert_eq!(
            (lines.as_str(), fields.as_str(), n),
            ("{\"a\":1}\n", "{}", Some(1))
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_reason() {
        let refused = |body: &str| split(body, 5).expect_err(body);
        assert!(refused("[1]").contains("JSON object"));
        assert!(refused(r#"{"requests": {"a": 1}}"#).contains("array"));
        assert!(refused(r#"{"requests": [{}], "requests": [{}]}"#).contains("twice"));
        assert!(refused(r#"{"requests": [{}], "requ\u0065sts": [{}]}"#).contains("twice"));
        assert!(refused(r#"{"requests": [1]}"#).contains("requests[0]"));
        assert!(refused(r#"{"requests": [{"a":1}, "x"]}"#).contains("requests[1]"));
        assert!(refused(r#"{"a": 1"#).contains("ends before"));
        assert!(refused(r#"{"a": 1} x"#).contains("after"));
        assert!(refused(r#"{"a" 1}"#).contains("unexpected"));
        assert!(refused(r#"{,}"#).contains("unexpected"));
    }
}

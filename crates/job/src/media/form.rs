//! A transcription or translation line as the multipart form the endpoint takes.
//!
//! OpenAI's `/v1/audio/transcriptions` and `/v1/audio/translations` take `multipart/form-data`
//! with the audio as a `file` part; a batch line is JSON, so it names the audio by
//! `body.file_url` (as vLLM's batch runner does): a `data:` URL, decoded here, or an http(s)
//! URL, downloaded here. Every other body field becomes a text part (an array one part per
//! item, named `field[]` as OpenAI's clients send them).

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use batch_format::endpoints::{AudioSource, audio_source};
use batch_storage::{Fetcher, HttpOptions};
use bytes::Bytes;
use hyper::header::HeaderValue;
use serde_json::Value;

use super::extension;
use crate::dispatch::Payload;

/// The largest audio file a line may name (OpenAI's own limit is 25 MB).
pub const MAX_AUDIO_BYTES: usize = 64 << 20;

/// Tries of a download that failed in transport or with a 5xx.
const DOWNLOAD_TRIES: u32 = 3;

/// The form for `body` (a transcription line's JSON body, checked by validation); an error says
/// why the audio could not be had.
pub async fn transcription(body: &[u8], sources: &AudioSources) -> Result<Payload, String> {
    let fields: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a JSON object: {e}"))?;
    let url = fields
        .get("file_url")
        .and_then(Value::as_str)
        .ok_or("body.file_url is missing")?;
    let (audio, mime, filename) = fetch(url, sources).await?;
    let text = |name: String, value: &Value| Part {
        name,
        file: None,
        data: Bytes::from(text_of(value)),
    };
    let mut parts = Vec::new();
    for (name, value) in &fields {
        match value {
            _ if name == "file_url" => {}
            Value::Null => {}
            Value::Array(items) => {
                parts.extend(items.iter().map(|item| text(format!("{name}[]"), item)));
            }
            other => parts.push(text(name.clone(), other)),
        }
    }
    parts.push(Part {
        name: "file".into(),
        file: Some((filename, mime)),
        data: audio,
    });
    let boundary = boundary_for(&parts);
    let size: usize = parts.iter().map(|p| p.data.len() + 200).sum();
    let mut out = Vec::with_capacity(size);
    for Part { name, file, data } in &parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let name = quoted(name);
        match file {
            Some((filename, mime)) => out.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{}\"\r\n\
                     Content-Type: {}\r\n\r\n",
                    quoted(filename),
                    quoted(mime)
                )
                .as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type = HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
        .map_err(|e| e.to_string())?;
    Ok(Payload {
        bytes: Bytes::from(out),
        content_type,
    })
}

/// One part of the form: a field, or the file with its name and media type.
struct Part {
    name: String,
    file: Option<(String, String)>,
    data: Bytes,
}

/// A name as a header's quoted string can hold it: a double quote, CR and LF percent-encoded,
/// as browsers send them (a body field's name or a URL's file name must not end the header).
fn quoted(name: &str) -> String {
    name.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A field's value as a form part: a string as it is, anything else as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A boundary that no part contains.
fn boundary_for(parts: &[Part]) -> String {
    let mut seed = 0u64;
    loop {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
        for part in parts {
            h.update(&part.data);
        }
        let boundary = format!("batch-runner-{:032x}", h.digest128());
        let inside = parts
            .iter()
            .any(|p| memchr::memmem::find(&p.data, boundary.as_bytes()).is_some());
        if !inside {
            return boundary;
        }
        seed += 1;
    }
}

/// Where the audio of a line's http(s) `file_url` may come from, and the client that downloads
/// it (made at the first such line: making one loads the system's certificates).
pub struct AudioSources {
    /// The hosts audio may be downloaded from; `None`: any.
    hosts: Option<Vec<String>>,
    fetcher: OnceLock<Result<Fetcher, String>>,
}

impl AudioSources {
    pub fn new(hosts: Option<Vec<String>>) -> Self {
        Self {
            hosts,
            fetcher: OnceLock::new(),
        }
    }

    fn fetcher(&self) -> Result<&Fetcher, String> {
        let options = HttpOptions {
            attempts: DOWNLOAD_TRIES,
            timeout: Duration::from_secs(300),
            ..HttpOptions::default()
        };
        self.fetcher
            .get_or_init(|| Fetcher::new(options).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| format!("cannot download body.file_url: {e}"))
    }
}

/// The audio a `file_url` names: its bytes, media type and a file name.
async fn fetch(url: &str, sources: &AudioSources) -> Result<(Bytes, String, String), String> {
    match audio_source(url)? {
        AudioSource::Data { mime, base64 } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(|e| format!("body.file_url's data is not base64: {e}"))?;
            if bytes.len() > MAX_AUDIO_BYTES {
                return Err(too_large(bytes.len()));
            }
            let name = format!("audio.{}", extension(mime));
            Ok((Bytes::from(bytes), mime.to_owned(), name))
        }
        AudioSource::Http(text) => {
            let url = reqwest::Url::parse(text)
                .map_err(|e| format!("body.file_url is not a URL ({e}); give an http(s) URL"))?;
            let host = url.host_str().unwrap_or_default();
            if let Some(hosts) = &sources.hosts
                && !hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
            {
                return Err(format!(
                    "body.file_url's host {host:?} is not one audio may be downloaded from \
                     here; give the audio inline as a data: URL (the service's operator allows \
                     hosts with --allow-file-url-host)"
                ));
            }
            let got = sources
                .fetcher()?
                .get(&url, MAX_AUDIO_BYTES)
                .await
                .map_err(|e| format!("body.file_url: {e}"))?;
            // A server that does not say what it sent: the bytes may.
            let mime = match got.content_type.as_deref() {
                None | Some("application/octet-stream" | "binary/octet-stream") => {
                    super::sniff(&got.bytes, "application/octet-stream").to_owned()
                }
                Some(given) => given.to_owned(),
            };
            let name = url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .filter(|n| !n.is_empty())
                .map_or_else(|| format!("audio.{}", extension(&mime)), str::to_owned);
            Ok((Bytes::from(got.bytes), mime, name))
        }
    }
}

fn too_large(bytes: usize) -> String {
    format!(
        "the audio of body.file_url is {bytes} bytes, over the {} MiB a line may send",
        MAX_AUDIO_BYTES >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_json_line_becomes_a_multipart_form() {
        let audio = base64::engine::general_purpose::STANDARD.encode(b"RIFFwav");
        let body = serde_json::json!({
            "model": "whisper",
            "file_url": format!("data:audio/wav;base64,{audio}"),
            "temperature": 0.2,
            "timestamp_granularities": ["word", "segment"],
            "prompt": null,
            "a\"b\r\nX-Evil: 1": "field names cannot end their header",
        });
        let anywhere = AudioSources::new(None);
        let payload = transcription(body.to_string().as_bytes(), &anywhere)
            .await
            .expect("form");
        let ct = payload.content_type.to_str().expect("ascii");
        let boundary = ct
            .strip_prefix("multipart/form-data; boundary=")
            .expect("multipart");
        let text = String::from_utf8_lossy(&payload.bytes);
        assert!(text.starts_with(&format!("--{boundary}\r\n")), "{text}");
        assert!(text.ends_with(&format!("--{boundary}--\r\n")), "{text}");
        assert!(text.contains("name=\"model\"\r\n\r\nwhisper\r\n"), "{text}");
        assert!(
            text.contains("name=\"temperature\"\r\n\r\n0.2\r\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("name=\"timestamp_granularities[]\"").count(),
            2
        );
        assert!(
            text.contains("name=\"file\"; filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFFwav\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("file_url") && !text.contains("\"prompt\""),
            "{text}"
        );
        assert!(
            text.contains("name=\"a%22b%0D%0AX-Evil: 1\"\r\n") && !text.contains("\r\nX-Evil"),
            "{text}"
        );
        let bad = serde_json::json!({"model": "w", "file_url": "data:audio/wav;base64,@@"});
        assert!(
            transcription(bad.to_string().as_bytes(), &anywhere)
                .await
                .is_err()
        );
        let elsewhere = serde_json::json!({"model": "w", "file_url": "http://169.254.169.254/a"});
        let nowhere = AudioSources::new(Some(Vec::new()));
        let err = transcription(elsewhere.to_string().as_bytes(), &nowhere)
            .await
            .expect_err("host not allowed");
        assert!(
            err.contains("169.254.169.254") && err.contains("data:"),
            "{err}"
        );
    }
}

//! A transcription or translation line as the multipart form the endpoint takes.
//!
//! OpenAI's `/v1/audio/transcriptions` and `/v1/audio/translations` take `multipart/form-data`
//! with the audio as a `file` part; a batch line is JSON, so it names the audio by
//! `body.file_url` (as vLLM's batch runner does): a `data:` URL, decoded here, or an http(s)
//! URL, downloaded here. Every other body field becomes a text part (an array one part per
//! item, named `field[]` as OpenAI's clients send them).

use std::time::Duration;

use base64::Engine as _;
use batch_format::endpoints::{AudioSource, audio_source};
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
/// why the audio could not be had. An http(s) `file_url` is downloaded only from `hosts`, when
/// given.
pub async fn transcription(
    body: &[u8],
    http: &reqwest::Client,
    hosts: Option<&[String]>,
) -> Result<Payload, String> {
    let fields: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not a JSON object: {e}"))?;
    let url = fields
        .get("file_url")
        .and_then(Value::as_str)
        .ok_or("body.file_url is missing")?;
    let (audio, mime, filename) = fetch(url, http, hosts).await?;
    let text = |name: String, value: &Value| Part {
        name,
        file: None,
        data: text_of(value).into_bytes(),
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
        data: audio.to_vec(),
    });
    let boundary = boundary_for(&parts);
    let mut out = Vec::with_capacity(audio.len() + 1024);
    for Part { name, file, data } in &parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some((filename, mime)) => out.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                     Content-Type: {mime}\r\n\r\n"
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
    data: Vec<u8>,
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

/// The audio a `file_url` names: its bytes, media type and a file name.
async fn fetch(
    url: &str,
    http: &reqwest::Client,
    hosts: Option<&[String]>,
) -> Result<(Bytes, String, String), String> {
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
        AudioSource::Http(url) => {
            let host = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            match hosts {
                Some(hosts) if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) => {
                    Err(format!(
                        "body.file_url's host {host:?} is not one audio may be downloaded from here; \
                     give the audio inline as a data: URL (the service's operator allows hosts \
                     with --allow-file-url-host)"
                    ))
                }
                _ => download(url, http).await,
            }
        }
    }
}

async fn download(url: &str, http: &reqwest::Client) -> Result<(Bytes, String, String), String> {
    let mut last = String::new();
    for attempt in 0..DOWNLOAD_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let response = match http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                last = crate::error_with_causes(&e);
                continue;
            }
        };
        let status = response.status();
        if status.is_server_error() {
            last = format!("HTTP {status}");
            continue;
        }
        if !status.is_success() {
            return Err(format!(
                "downloading body.file_url {url} answered HTTP {status}"
            ));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_AUDIO_BYTES as u64)
        {
            return Err(too_large(response.content_length().unwrap_or(0) as usize));
        }
        let mime = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("downloading body.file_url {url}: {e}"))?;
        if bytes.len() > MAX_AUDIO_BYTES {
            return Err(too_large(bytes.len()));
        }
        // A server that does not say what it sent: the bytes may.
        let mime = match mime.as_str() {
            "application/octet-stream" | "binary/octet-stream" => {
                super::sniff(&bytes, "application/octet-stream").to_owned()
            }
            _ => mime,
        };
        let name = url
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| !n.is_empty() && !n.contains('"'))
            .map_or_else(|| format!("audio.{}", extension(&mime)), str::to_owned);
        return Ok((bytes, mime, name));
    }
    Err(format!(
        "downloading body.file_url {url} failed {DOWNLOAD_TRIES} times; last: {last}"
    ))
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
        });
        let payload = transcription(body.to_string().as_bytes(), &reqwest::Client::new(), None)
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
        let bad = serde_json::json!({"model": "w", "file_url": "data:audio/wav;base64,@@"});
        let client = reqwest::Client::new();
        assert!(
            transcription(bad.to_string().as_bytes(), &client, None)
                .await
                .is_err()
        );
        let elsewhere = serde_json::json!({"model": "w", "file_url": "http://169.254.169.254/a"});
        let err = transcription(elsewhere.to_string().as_bytes(), &client, Some(&[]))
            .await
            .expect_err("host not allowed");
        assert!(
            err.contains("169.254.169.254") && err.contains("data:"),
            "{err}"
        );
    }
}

//! Image, audio and video endpoints, answered with small deterministic payloads derived from the
//! request, in the shapes OpenAI's API (and SGLang Diffusion, vLLM-Omni) use, so a client's
//! handling of them is tested end to end:
//! - `POST /v1/images/generations|edits` (JSON): `{"created", "data": [{"b64_json"}…], "usage"}`,
//!   `n` images (default 1), each the PNG signature then `sim image I of PROMPT`;
//! - `POST /v1/audio/speech` (JSON): audio bytes (an MP3 or WAV header, then `sim speech of
//!   INPUT`);
//! - `POST /v1/audio/transcriptions|translations` (multipart, as OpenAI takes them): a `file`
//!   part is required; `{"text": "sim transcript of N bytes (FILENAME, TYPE)"}`, or the text
//!   alone for `response_format` text, srt or vtt;
//! - `POST /v1/videos` (JSON) creates a job; `GET /v1/videos/{id}` reports it `queued`, then
//!   `in_progress`, then `completed` once `--video-ms` passed (`failed`, with an `error`, when
//!   the prompt contains `[fail]`); `GET /v1/videos/{id}/content` downloads it (an MP4 `ftyp`
//!   box then `sim video of PROMPT`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

type Reply = Response<Full<Bytes>>;

pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The video jobs made so far: prompt and creation time by id.
#[derive(Default)]
pub struct Videos {
    jobs: Mutex<HashMap<String, (String, tokio::time::Instant, u64)>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// `/v1/images/generations` and `/v1/images/edits`.
pub fn images(request: &Value) -> Value {
    let prompt = request["prompt"].as_str().unwrap_or_default();
    let n = request["n"].as_u64().unwrap_or(1).clamp(1, 10);
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let mut png = PNG_SIGNATURE.to_vec();
            png.extend_from_slice(format!("sim image {i} of {prompt}").as_bytes());
            json!({
                "b64_json": base64::engine::general_purpose::STANDARD.encode(png),
                "revised_prompt": prompt,
            })
        })
        .collect();
    json!({
        "created": now_secs(),
        "data": data,
        "usage": {"input_tokens": words(prompt), "output_tokens": 1024 * n,
                  "total_tokens": words(prompt) + 1024 * n},
    })
}

/// `/v1/audio/speech`: the audio and its content type.
pub fn speech(request: &Value) -> Reply {
    let input = request["input"].as_str().unwrap_or_default();
    let (mime, magic): (&str, &[u8]) = match request["response_format"].as_str() {
        Some("mp3") | None => ("audio/mpeg", b"ID3"),
        Some("wav") => ("audio/wav", b"RIFF\0\0\0\0WAVE"),
        Some(_) => ("application/octet-stream", b""),
    };
    let mut audio = magic.to_vec();
    audio.extend_from_slice(format!("sim speech of {input}").as_bytes());
    bytes(mime, audio)
}

/// `/v1/audio/transcriptions|translations`: a multipart form with a `file` part.
pub fn transcription(content_type: Option<&str>, body: &[u8]) -> Result<Reply, String> {
    let boundary = content_type
        .and_then(|c| {
            c.split(';')
                .find_map(|p| p.trim().strip_prefix("boundary="))
        })
        .map(|b| b.trim_matches('"'))
        .ok_or("the request must be multipart/form-data with a boundary")?;
    let parts = multipart_parts(body, boundary)?;
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
    };
    let file = parts
        .iter()
        .find(|p| p.name == "file" && p.filename.is_some())
        .ok_or("the form has no file part")?;
    if field("model").is_none() {
        return Err("the form has no model field".into());
    }
    let text = format!(
        "sim transcript of {} bytes ({}, {})",
        file.data.len(),
        file.filename.as_deref().unwrap_or_default(),
        file.content_type.as_deref().unwrap_or("no type")
    );
    Ok(match field("response_format").as_deref() {
        Some("text" | "srt" | "vtt") => bytes("text/plain; charset=utf-8", text.into_bytes()),
        _ => crate::respond::json(
            StatusCode::OK,
            &json!({"text": text, "usage": {"type": "duration", "seconds": 1}}),
            None,
        ),
    })
}

struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// The parts of a multipart body: enough of RFC 7578 for a test double.
fn multipart_parts(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    let start = find(rest, delimiter.as_bytes()).ok_or("the boundary never appears")?;
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a boundary without CRLF")?;
        let end = find(rest, format!("\r\n{delimiter}").as_bytes()).ok_or("a part never ends")?;
        let part = &rest[..end];
        rest = &rest[end + 2 + delimiter.len()..];
        let head_end = find(part, b"\r\n\r\n").ok_or("a part without headers")?;
        let head = String::from_utf8_lossy(&part[..head_end]);
        let mut p = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            data: part[head_end + 4..].to_vec(),
        };
        for line in head.lines() {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                p.name = param(line, "name").unwrap_or_default();
                p.filename = param(line, "filename");
            } else if lower.starts_with("content-type:") {
                p.content_type = line.split_once(':').map(|(_, v)| v.trim().to_owned());
            }
        }
        parts.push(p);
    }
}

fn param(line: &str, name: &str) -> Option<String> {
    line.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bytes(mime: &str, data: Vec<u8>) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", mime)
        .body(Full::new(Bytes::from(data)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

impl Videos {
    /// `POST /v1/videos`: a new job, `queued`.
    pub fn create(&self, request: &Value, number: u64) -> Value {
        let prompt = request["prompt"].as_str().unwrap_or_default().to_owned();
        let seconds = request["seconds"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| request["seconds"].as_u64())
            .unwrap_or(4);
        let id = format!("video_{number:08x}");
        let body = video_object(&id, request["model"].as_str(), "queued", 0, seconds);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id, (prompt, tokio::time::Instant::now(), seconds));
        }
        body
    }

    /// `GET /v1/videos/{id}` and `GET /v1/videos/{id}/content` (`rest` is the path after
    /// `/v1/videos/`); `None` for an unknown id.
    pub fn get(&self, rest: &str, takes: Duration) -> Option<Reply> {
        let (id, content) = match rest.strip_suffix("/content") {
            Some(id) => (id, true),
            None => (rest, false),
        };
        let (prompt, created, seconds) = self.jobs.lock().ok()?.get(id)?.clone();
        let elapsed = created.elapsed();
        let progress = if takes.is_zero() {
            100
        } else {
            (elapsed.as_millis() * 100 / takes.as_millis()).min(100) as u64
        };
        let fails = prompt.contains("[fail]");
        let status = match progress {
            100 if fails => "failed",
            100 => "completed",
            0 => "queued",
            _ => "in_progress",
        };
        if content {
            if status != "completed" {
                return Some(crate::respond::json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": {"message": "the video is not ready", "type": "invalid_request_error"}}),
                    None,
                ));
            }
            let mut mp4 = b"\x00\x00\x00\x18ftypmp42".to_vec();
            mp4.extend_from_slice(format!("sim video of {prompt}").as_bytes());
            return Some(bytes("video/mp4", mp4));
        }
        let mut body = video_object(id, None, status, progress, seconds);
        if status == "failed" {
            body["error"] = json!({"code": "generation_failed", "message": "sim video failed"});
        }
        Some(crate::respond::json(StatusCode::OK, &body, None))
    }
}

fn video_object(id: &str, model: Option<&str>, status: &str, progress: u64, seconds: u64) -> Value {
    json!({
        "id": id,
        "object": "video",
        "model": model.unwrap_or("sim-video"),
        "status": status,
        "progress": progress,
        "created_at": now_secs(),
        "seconds": seconds.to_string(),
        "size": "720x1280",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_form_is_read() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFFdata\r\n--XX--\r\n";
        let parts = multipart_parts(body, "XX").expect("parsed");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(parts[1].data, b"RIFFdata");
        assert!(multipart_parts(b"no boundary", "XX").is_err());
    }

    #[test]
    fn images_are_numbered_pngs() {
        let v = images(&json!({"prompt": "a cat", "n": 2}));
        let data = v["data"].as_array().expect("data");
        assert_eq!(data.len(), 2);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data[1]["b64_json"].as_str().expect("b64"))
            .expect("base64");
        assert!(png.starts_with(PNG_SIGNATURE));
        assert!(png.ends_with(b"sim image 1 of a cat"));
    }
}

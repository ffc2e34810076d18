//! The endpoints whose requests or answers are not plain JSON in, JSON out: images, video and
//! audio. Each has a shape the runner must know to send the request (a multipart form, a
//! job to poll) or to keep its answer small (images, audio and video are stored as files and
//! the result line points at them), and fields its lines must carry.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::input::Str;
use crate::{Problem, SUPPORTED_URLS};

/// How a line's request travels and how its answer is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// JSON in, JSON out, kept as it is.
    Json,
    /// JSON in; the answer's `data[].b64_json` images are stored as files.
    Images,
    /// JSON in; the answer is audio bytes, stored as a file.
    Speech,
    /// The JSON body becomes the multipart form the endpoint takes, its `file_url` (a `data:`
    /// URL or an http(s) URL) the `file` part; the answer is JSON, or text (`response_format`
    /// text, srt, vtt) kept as `{"text": …}`.
    Transcription,
    /// A video job: created with the JSON body, polled (`GET /v1/videos/{id}`) until it ends,
    /// its content (`GET /v1/videos/{id}/content`) stored as a file.
    Video,
}

/// The media endpoints, accepted by default beside the text ones: the last six of
/// [`SUPPORTED_URLS`].
pub const MEDIA_URLS: &[&str] = SUPPORTED_URLS.split_at(7).1;

impl Exchange {
    pub fn of(url: &str) -> Self {
        match url {
            "/v1/images/generations" | "/v1/images/edits" => Exchange::Images,
            "/v1/audio/speech" => Exchange::Speech,
            "/v1/audio/transcriptions" | "/v1/audio/translations" => Exchange::Transcription,
            "/v1/videos" => Exchange::Video,
            _ => Exchange::Json,
        }
    }

    /// Whether answers of this kind hold payloads stored as files.
    pub fn stores_media(self) -> bool {
        matches!(self, Exchange::Images | Exchange::Speech | Exchange::Video)
    }
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    images: Option<&'a RawValue>,
    #[serde(borrow)]
    image: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    voice: Option<&'a RawValue>,
    #[serde(borrow)]
    file: Option<&'a RawValue>,
    #[serde(borrow)]
    file_url: Option<&'a RawValue>,
}

/// The problems of a body sent to `url`'s endpoint: the fields it cannot do without.
pub fn check_body(url: &str, body: &RawValue) -> Vec<Problem> {
    if !MEDIA_URLS.contains(&url) {
        return Vec::new();
    }
    // The body is an object that parsed already; a failure here cannot happen, and would be
    // the engine's to report.
    let Ok(b) = serde_json::from_str::<MediaBody<'_>>(body.get()) else {
        return Vec::new();
    };
    let present = |v: Option<&RawValue>| v.is_some_and(|v| v.get() != "null");
    let is_string = |v: Option<&RawValue>| v.is_some_and(|v| v.get().starts_with('"'));
    let string = |v: Option<&RawValue>, field: &'static str| {
        if !present(v) {
            Some(Problem::MissingField { field })
        } else if !is_string(v) {
            Some(Problem::WrongType {
                field,
                expected: "a string",
            })
        } else {
            None
        }
    };
    let mut problems = Vec::new();
    match url {
        "/v1/images/generations" | "/v1/videos" => problems.extend(string(b.prompt, "body.prompt")),
        "/v1/images/edits" => {
            problems.extend(string(b.prompt, "body.prompt"));
            if !present(b.images) && !present(b.image) {
                problems.push(Problem::MissingField {
                    field: "body.images",
                });
            }
        }
        "/v1/audio/speech" => {
            problems.extend(string(b.input, "body.input"));
            if !present(b.voice) {
                problems.push(Problem::MissingField {
                    field: "body.voice",
                });
            }
        }
        _ => {
            if present(b.file) {
                problems.push(Problem::InvalidValue {
                    field: "body.file",
                    why: "a batch line cannot carry a multipart file; give the audio as \
                          body.file_url: a data: URL (data:audio/wav;base64,…) or an http(s) URL"
                        .into(),
                });
            }
            problems.extend(string(b.file_url, "body.file_url"));
            // Borrowed, not copied: a data: URL can be megabytes of base64.
            if let Some(Ok(Str(text))) = b
                .file_url
                .filter(|v| is_string(Some(v)))
                .map(|v| serde_json::from_str::<Str<'_>>(v.get()))
                && let Err(why) = audio_source(&text)
            {
                problems.push(Problem::InvalidValue {
                    field: "body.file_url",
                    why,
                });
            }
        }
    }
    problems
}

/// Where a transcription's audio comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource<'a> {
    /// A `data:` URL: its media type and base64 payload.
    Data { mime: &'a str, base64: &'a str },
    /// An http(s) URL the runner downloads.
    Http(&'a str),
}

/// Reads a `file_url`: `data:MIME;base64,PAYLOAD` or an http(s) URL.
pub fn audio_source(url: &str) -> Result<AudioSource<'_>, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, payload)) = rest.split_once(',') else {
            return Err("a data: URL needs a comma before its payload".into());
        };
        let Some(mime) = meta.strip_suffix(";base64") else {
            return Err("a data: URL must be base64 (data:audio/wav;base64,…)".into());
        };
        if payload.is_empty() {
            return Err("the data: URL has no payload".into());
        }
        return Ok(AudioSource::Data {
            mime,
            base64: payload,
        });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(AudioSource::Http(url));
    }
    Err("give a data: URL (data:audio/wav;base64,…) or an http(s) URL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(url: &str, body: &str) -> Vec<&'static str> {
        let raw: Box<RawValue> = serde_json::from_str(body).expect("json");
        check_body(url, &raw).iter().map(Problem::code).collect()
    }

    #[test]
    fn media_bodies_need_their_fields() {
        assert!(problems("/v1/chat/completions", "{}").is_empty());
        assert_eq!(
            problems("/v1/images/generations", "{}"),
            ["missing_required_field"]
        );
        assert!(problems("/v1/images/generations", r#"{"prompt":"a cat"}"#).is_empty());
        assert_eq!(
            problems("/v1/videos", r#"{"prompt":3}"#),
            ["invalid_field_type"]
        );
        assert_eq!(
            problems("/v1/images/edits", r#"{"prompt":"x"}"#),
            ["missing_required_field"]
        );
        assert!(
            problems(
                "/v1/images/edits",
                r#"{"prompt":"x","images":[{"image_url":"u"}]}"#
            )
            .is_empty()
        );
        assert_eq!(
            problems("/v1/audio/speech", r#"{"input":"hi"}"#),
            ["missing_required_field"]
        );
        assert!(problems("/v1/audio/speech", r#"{"input":"hi","voice":"alloy"}"#).is_empty());
        let t = "/v1/audio/transcriptions";
        assert_eq!(problems(t, "{}"), ["missing_required_field"]);
        assert_eq!(
            problems(t, r#"{"file":"x","file_url":"data:audio/wav;base64,AAAA"}"#),
            ["invalid_value"]
        );
        assert_eq!(problems(t, r#"{"file_url":"ftp://x"}"#), ["invalid_value"]);
        assert!(problems(t, r#"{"file_url":"https://h/a.wav"}"#).is_empty());
        assert!(problems(t, r#"{"file_url":"data:audio/wav;base64,AAAA"}"#).is_empty());
    }

    #[test]
    fn audio_sources_are_read() {
        assert_eq!(
            audio_source("data:audio/wav;base64,UklG"),
            Ok(AudioSource::Data {
                mime: "audio/wav",
                base64: "UklG"
            })
        );
        assert_eq!(
            audio_source("https://h/a.mp3"),
            Ok(AudioSource::Http("https://h/a.mp3"))
        );
        for bad in [
            "data:audio/wav,UklG",
            "data:audio/wav;base64,",
            "data:x",
            "/a.wav",
        ] {
            assert!(audio_source(bad).is_err(), "{bad}");
        }
        assert_eq!(Exchange::of("/v1/videos"), Exchange::Video);
        assert!(!Exchange::of("/v1/audio/translations").stores_media());
    }
}

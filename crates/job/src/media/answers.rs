//! Where the payloads are in each kind of answer, and what the result line keeps instead.
//!
//! - images: each `data[i].b64_json` is decoded and stored as `ID-I.EXT`; the item keeps its
//!   other fields and gains `file`;
//! - speech: the answer is the audio itself, stored as `ID.EXT`; the line keeps
//!   `{"object": "audio.speech", "model", "file"}`;
//! - a video: its content, downloaded once the job completed, stored as `ID.mp4`; the line
//!   keeps the final video object with `file`;
//! - a transcription answered in text (`response_format` text, srt, vtt) is kept as
//!   `{"text": …}`, so every result line holds JSON.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{MediaStore, extension, sniff, store as put};

/// Why an answer could not be kept.
#[derive(Debug)]
pub enum NotKept {
    /// The engine's answer is not what the endpoint answers: the line's error.
    Answer(String),
    /// The store failed (a full disk, object storage down): the job's problem; the line runs
    /// again when the job resumes.
    Store(String),
}

/// An images answer with each `b64_json` stored as a file.
pub async fn images(store: &dyn MediaStore, id: &str, body: &[u8]) -> Result<Vec<u8>, NotKept> {
    let mut answer: Value = serde_json::from_slice(body)
        .map_err(|e| NotKept::Answer(format!("the images answer is not JSON: {e}")))?;
    let Some(items) = answer.get_mut("data").and_then(Value::as_array_mut) else {
        return Err(NotKept::Answer(
            "the images answer has no data array".into(),
        ));
    };
    for (i, item) in items.iter_mut().enumerate() {
        let Some(encoded) = item.get("b64_json").and_then(Value::as_str) else {
            continue; // a URL answer (response_format url) is kept as it is
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| NotKept::Answer(format!("data[{i}].b64_json is not base64: {e}")))?;
        let mime = sniff(&bytes, "image/png");
        let name = format!("{id}-{i}.{}", extension(mime));
        let file = put(store, &name, mime, Bytes::from(bytes))
            .await
            .map_err(NotKept::Store)?;
        if let Some(object) = item.as_object_mut() {
            object.remove("b64_json");
            object.insert("file".into(), file);
        }
    }
    Ok(answer.to_string().into_bytes())
}

/// A speech answer (the audio bytes) stored as a file.
/// The request's `model` and `response_format` name the line's model and the audio's format.
pub async fn speech(
    store: &dyn MediaStore,
    id: &str,
    request: &[u8],
    audio: Bytes,
) -> Result<Vec<u8>, NotKept> {
    if audio.is_empty() {
        return Err(NotKept::Answer("the speech answer is empty".into()));
    }
    // An engine that answers 200 with a JSON document sent no audio (an error in a success).
    if serde_json::from_slice::<serde_json::Map<String, Value>>(&audio).is_ok() {
        return Err(NotKept::Answer(format!(
            "the speech answer is JSON, not audio: {}",
            String::from_utf8_lossy(&audio[..audio.len().min(200)])
        )));
    }
    let request: Value = serde_json::from_slice(request).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or_default();
    // OpenAI's formats; mp3 when none is asked for.
    let asked = match request["response_format"].as_str().unwrap_or("mp3") {
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "pcm" => "audio/pcm",
        _ => "application/octet-stream",
    };
    let mime = sniff(&audio, asked);
    let name = format!("{id}.{}", extension(mime));
    let file = put(store, &name, mime, audio)
        .await
        .map_err(NotKept::Store)?;
    Ok(
        json!({"object": "audio.speech", "model": model, "file": file})
            .to_string()
            .into_bytes(),
    )
}

/// A finished video job's object, with its downloaded content stored as a file.
pub async fn video(
    store: &dyn MediaStore,
    id: &str,
    mut object: Value,
    content: Bytes,
) -> Result<Vec<u8>, NotKept> {
    let mime = sniff(&content, "video/mp4");
    let name = format!("{id}.{}", extension(mime));
    let file = put(store, &name, mime, content)
        .await
        .map_err(NotKept::Store)?;
    if let Some(o) = object.as_object_mut() {
        o.insert("file".into(), file);
    }
    Ok(object.to_string().into_bytes())
}

/// A transcription's answer as JSON: kept when it is, `{"text": …}` when the engine answered
/// text.
pub fn transcription(body: &[u8]) -> Vec<u8> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return body.to_vec();
    }
    json!({"text": String::from_utf8_lossy(body)})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::LocalMedia;

    #[tokio::test]
    async fn payloads_leave_the_answer_and_files_take_their_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalMedia::new(dir.path().join("m"), dir.path());
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nimg");
        let body =
            json!({"created": 1, "data": [{"b64_json": png, "revised_prompt": "p"}, {"url": "u"}]});
        let kept = images(&store, "r1", body.to_string().as_bytes())
            .await
            .expect("kept");
        let kept: Value = serde_json::from_slice(&kept).expect("json");
        assert_eq!(kept["data"][0]["file"]["path"], "m/r1-0.png");
        assert_eq!(kept["data"][0]["revised_prompt"], "p");
        assert!(kept["data"][0].get("b64_json").is_none());
        assert_eq!(kept["data"][1], json!({"url": "u"}));
        let bad = json!({"data": [{"b64_json": "%%%"}]}).to_string();
        assert!(matches!(
            images(&store, "r2", bad.as_bytes()).await,
            Err(NotKept::Answer(_))
        ));

        let kept = speech(
            &store,
            "r3",
            br#"{"model":"tts"}"#,
            Bytes::from_static(b"ID3audio"),
        )
        .await
        .expect("kept");
        let kept: Value = serde_json::from_slice(&kept).expect("json");
        assert_eq!(kept["file"]["path"], "m/r3.mp3");
        assert_eq!(kept["file"]["mime_type"], "audio/mpeg");
        assert_eq!(kept["model"], "tts");
        let asked = br#"{"model":"tts","response_format":"aac"}"#;
        let kept = speech(&store, "r4", asked, Bytes::from_static(b"raw"))
            .await
            .expect("kept");
        let kept: Value = serde_json::from_slice(&kept).expect("json");
        assert_eq!(
            kept["file"]["path"], "m/r4.aac",
            "the format asked for names raw audio"
        );
        let json_body = Bytes::from_static(br#"{"error": "no voice"}"#);
        assert!(matches!(
            speech(&store, "r5", asked, json_body).await,
            Err(NotKept::Answer(m)) if m.contains("no voice")
        ));

        assert_eq!(transcription(br#"{"text":"hi"}"#), br#"{"text":"hi"}"#);
        assert_eq!(
            transcription(b"1\n00:00 --> 00:01\nhi"),
            br#"{"text":"1\n00:00 --> 00:01\nhi"}"#
        );
    }
}

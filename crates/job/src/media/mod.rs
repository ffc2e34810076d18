//! Image, audio and video answers, kept out of the result lines.
//!
//! An image comes back as base64 inside the JSON answer, speech and video as raw bytes: written
//! into a result line they would make the output file hundreds of times larger than the text it
//! usually holds. Each payload is stored instead ([`MediaStore`]: a directory for `run`, the
//! file store for the service) under a name made from the line's result id, so a resumed job
//! that repeats a request overwrites the same file, and the result line carries a `file`
//! object that points at it:
//! - [`answers`]: where the payloads are in each answer, and what the line keeps;
//! - [`form`]: a transcription line's JSON body as the multipart form the endpoint takes.

pub mod answers;
pub mod form;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// Where a job's media payloads go.
pub trait MediaStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` as `name`, replacing a payload of that name; where it went, as the
    /// result line names it.
    fn put<'a>(&'a self, name: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<Place, String>>;
}

/// Where a stored payload is: `path` (a file beside the output), `url` (object storage) or
/// `id` (a file of the service's Files API), and the value.
pub struct Place(pub &'static str, pub String);

/// Stores `bytes` (of media type `mime`) as `name` in `store`; the result line's `file`
/// object: where it is, its size and its type.
pub async fn store(
    store: &dyn MediaStore,
    name: &str,
    mime: &str,
    bytes: Bytes,
) -> Result<serde_json::Value, String> {
    let len = bytes.len();
    let Place(key, at) = store.put(name, bytes).await?;
    let mut file = serde_json::Map::new();
    file.insert(key.into(), at.into());
    file.insert("bytes".into(), len.into());
    file.insert("mime_type".into(), mime.into());
    Ok(file.into())
}

/// `run`'s media directory (`--media-dir`, by default `OUTPUT.media` beside the output). The
/// `file` object's `path` is relative to the output's directory when the media directory is
/// inside it, so the output and its media can be moved together.
#[derive(Debug)]
pub struct LocalMedia {
    dir: PathBuf,
    /// How `path` is written: the directory as the result line names it.
    shown: PathBuf,
}

impl LocalMedia {
    /// Media in `dir`, named in result lines relative to `output_dir` where possible.
    pub fn new(dir: PathBuf, output_dir: &Path) -> Self {
        let shown = dir
            .strip_prefix(output_dir)
            .map_or_else(|_| dir.clone(), Path::to_path_buf);
        Self { dir, shown }
    }
}

impl MediaStore for LocalMedia {
    fn put<'a>(&'a self, name: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<Place, String>> {
        Box::pin(async move {
            let path = self.dir.join(name);
            let (dir, at) = (self.dir.clone(), path.clone());
            // Written whole and synced under a temporary name, then renamed: a crash leaves no
            // torn file, and the result recorded next (made durable by a checkpoint) never
            // points at a payload a power loss could take back.
            let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::create_dir_all(&dir)?;
                let temp = at.with_extension("partial");
                let mut file = std::fs::File::create(&temp)?;
                std::io::Write::write_all(&mut file, &bytes)?;
                file.sync_all()?;
                std::fs::rename(&temp, &at)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("cannot write {}: {e}", path.display())));
            written?;
            Ok(Place("path", self.shown.join(name).display().to_string()))
        })
    }
}

/// `run`'s media in object storage (`--media-dir s3://bucket/prefix`, by default `KEY.media`
/// beside an `s3://` output); the `file` object's `url` is the payload's `s3://` URL.
#[derive(Clone)]
pub struct ObjectMedia {
    dir: batch_storage::object::ObjectDir,
}

impl std::fmt::Debug for ObjectMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "media in {}", self.dir.url())
    }
}

impl ObjectMedia {
    pub fn new(dir: batch_storage::object::ObjectDir) -> Self {
        Self { dir }
    }
}

impl MediaStore for ObjectMedia {
    fn put<'a>(&'a self, name: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<Place, String>> {
        Box::pin(async move {
            self.dir
                .put(name, bytes.to_vec())
                .await
                .map_err(|e| e.to_string())?;
            let url = format!("{}/{name}", self.dir.url().trim_end_matches('/'));
            Ok(Place("url", url))
        })
    }
}

/// The media type of a payload, from its first bytes (the engine's word for it can be missing
/// or generic); `fallback` when they say nothing.
pub fn sniff<'a>(bytes: &[u8], fallback: &'a str) -> &'a str {
    let at = |offset: usize, magic: &[u8]| bytes.get(offset..offset + magic.len()) == Some(magic);
    match () {
        () if at(0, b"\x89PNG\r\n\x1a\n") => "image/png",
        () if at(0, b"\xff\xd8\xff") => "image/jpeg",
        () if at(0, b"RIFF") && at(8, b"WEBP") => "image/webp",
        () if at(0, b"RIFF") && at(8, b"WAVE") => "audio/wav",
        () if at(0, b"GIF8") => "image/gif",
        () if at(0, b"ID3") || at(0, b"\xff\xfb") => "audio/mpeg",
        () if at(0, b"OggS") => "audio/ogg",
        () if at(0, b"fLaC") => "audio/flac",
        () if at(4, b"ftyp") => "video/mp4",
        () => fallback,
    }
}

/// The file name extension for a media type.
pub fn extension(mime: &str) -> &'static str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "audio/wav" => "wav",
        "audio/mpeg" => "mp3",
        "audio/ogg" | "audio/opus" => "opus",
        "audio/flac" => "flac",
        "audio/aac" => "aac",
        "video/mp4" => "mp4",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_recognised_by_their_first_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest", "x"), "image/png");
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt", "x"), "audio/wav");
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42", "x"), "video/mp4");
        assert_eq!(sniff(b"??", "audio/aac"), "audio/aac");
        assert_eq!(extension("image/png"), "png");
        assert_eq!(extension("application/x-unknown"), "bin");
    }

    #[tokio::test]
    async fn object_media_is_named_by_its_url() {
        let memory = std::sync::Arc::new(object_store::memory::InMemory::new());
        let dir = batch_storage::object::ObjectDir::with_store(
            memory,
            "out.jsonl.media",
            "s3://bucket/out.jsonl.media",
        );
        let media = ObjectMedia::new(dir.clone());
        let file = store(&media, "a.mp4", "video/mp4", Bytes::from_static(b"mp4"))
            .await
            .expect("stored");
        assert_eq!(file["url"], "s3://bucket/out.jsonl.media/a.mp4");
        assert_eq!(dir.get("a.mp4").await.expect("read"), Some(b"mp4".to_vec()));
    }

    #[tokio::test]
    async fn local_media_is_written_whole_and_named_beside_the_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = LocalMedia::new(dir.path().join("out.jsonl.media"), dir.path());
        let file = store(&local, "a-0.png", "image/png", Bytes::from_static(b"png"))
            .await
            .expect("stored");
        assert_eq!(file["path"], "out.jsonl.media/a-0.png");
        assert_eq!(file["bytes"], 3);
        let on_disk = std::fs::read(dir.path().join("out.jsonl.media/a-0.png")).expect("read");
        assert_eq!(on_disk, b"png");
        // Again (a resumed job): replaced, not duplicated.
        store(&local, "a-0.png", "image/png", Bytes::from_static(b"png2"))
            .await
            .expect("stored");
        let names = std::fs::read_dir(dir.path().join("out.jsonl.media"))
            .expect("dir")
            .count();
        assert_eq!(names, 1);
    }
}

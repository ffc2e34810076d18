//! `/v1/files`: upload (multipart, streamed to the blob store), list, retrieve, content, delete.

use axum::Extension;
use axum::Json;
use axum::extract::multipart::{Field, Multipart, MultipartRejection};
use axum::extract::{Path, Query, State, rejection::QueryRejection};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::AppState;
use crate::auth::Owner;
use crate::error::ApiError;
use crate::ids;
use crate::model::{FileDeleted, FileObject, List};
use crate::store::{FileRow, now_secs};

/// Purposes an upload may have (OpenAI's list).
const UPLOAD_PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];
/// Bytes of a batch upload kept in memory for the format check.
const HEAD_BYTES: usize = 64 * 1024;
/// The largest text field (purpose, expires_after[…]) read.
const MAX_TEXT_FIELD: usize = 1024;
/// OpenAI's bounds for `expires_after[seconds]`.
pub const EXPIRY_SECONDS: std::ops::RangeInclusive<i64> = 3600..=2_592_000;

#[utoipa::path(post, path = "/v1/files", tag = "files", operation_id = "createFile",
    request_body(content_type = "multipart/form-data", description = "Fields `file` and `purpose`; optional `expires_after[anchor]` (`created_at`) and `expires_after[seconds]`."),
    responses((status = 200, description = "The stored file.", body = FileObject),
        (status = 400, description = "An invalid upload; `param` names the field.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 413, description = "Over the service's upload limit.", body = crate::error::ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    refuse_announced_oversize(&headers, app.config.max_upload_bytes)?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::invalid(format!(
            "Expected a multipart/form-data body with the fields 'file' and 'purpose' ({e})"
        ))
    })?;
    let id = ids::file_id();
    let Form {
        purpose,
        anchor,
        seconds,
        upload,
    } = read_form(&app, &id, &mut multipart).await?;
    let purpose = purpose.ok_or_else(|| {
        ApiError::invalid("Missing required parameter: 'purpose'").param("purpose")
    })?;
    if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(format!(
            "Invalid purpose {purpose:?}: use one of {}",
            UPLOAD_PURPOSES.join(", ")
        ))
        .param("purpose"));
    }
    let ((incoming, head), filename) = upload
        .ok_or_else(|| ApiError::invalid("Missing required parameter: 'file'").param("file"))?;
    if purpose == "batch" {
        check_jsonl(&head).map_err(|m| ApiError::invalid(m).param("file"))?;
    }
    let created_at = now_secs();
    let expires_at = match (anchor, seconds) {
        (None, None) if purpose == "batch" => {
            app.config.batch_file_ttl.map(|t| created_at + t as i64)
        }
        (None, None) => None,
        (anchor, seconds) => {
            Some(created_at + expiry_seconds(anchor.as_deref(), seconds.as_deref())?)
        }
    };
    let row = FileRow {
        id: id.clone(),
        owner: owner.0,
        filename,
        purpose,
        bytes: incoming.bytes as i64,
        created_at,
        expires_at,
        blob: id.clone(),
    };
    incoming
        .commit(&app.blobs, &row.blob)
        .await
        .map_err(|e| ApiError::internal("cannot store the upload", e))?;
    if let Err(e) = app.store.insert_file(&row).await {
        let _ = app.blobs.remove(&row.blob).await;
        return Err(e.into());
    }
    Ok(Json(FileObject::from(&row)))
}

/// The fields of an upload's form, the file's content already received.
#[derive(Default)]
struct Form {
    purpose: Option<String>,
    anchor: Option<String>,
    seconds: Option<String>,
    upload: Option<((crate::blobs::Incoming, Vec<u8>), String)>,
}

/// Reads the upload's form, streaming the `file` part into the blob store as it comes.
async fn read_form(app: &AppState, id: &str, multipart: &mut Multipart) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(bad_multipart)? {
        match field.name().unwrap_or_default() {
            "file" => {
                if form.upload.is_some() {
                    return Err(ApiError::invalid("Only one 'file' part is allowed").param("file"));
                }
                let name = clean_filename(field.file_name().unwrap_or("upload"));
                form.upload = Some((receive(app, id, field).await?, name));
            }
            "purpose" => once(&mut form.purpose, "purpose", small_text(field).await?)?,
            "expires_after[anchor]" => {
                once(
                    &mut form.anchor,
                    "expires_after[anchor]",
                    small_text(field).await?,
                )?;
            }
            "expires_after[seconds]" => {
                once(
                    &mut form.seconds,
                    "expires_after[seconds]",
                    small_text(field).await?,
                )?;
            }
            // Fields the SDK's `extra_body` may add are ignored, as OpenAI does.
            _ => {}
        }
    }
    Ok(form)
}

/// Sets a form field that may appear only once: a second one is an error, not a silent
/// override of the first.
fn once(slot: &mut Option<String>, name: &'static str, value: String) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(ApiError::invalid(format!("Only one '{name}' field is allowed")).param(name));
    }
    Ok(())
}

/// Room for the multipart framing and the small fields around the file.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// A body whose `Content-Length` already says it is over the limit gets its 413 at once, before
/// a byte of it is read (the limit is still enforced while streaming, for bodies without one).
fn refuse_announced_oversize(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(length) if length > limit.saturating_add(MULTIPART_OVERHEAD) => Err(too_large(limit)),
        _ => Ok(()),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::too_large(format!(
        "The file is larger than this service's limit of {limit} bytes (--max-upload-bytes)"
    ))
    .param("file")
}

/// Streams the `file` part into the blob store, keeping its first bytes for the format check.
async fn receive(
    app: &AppState,
    id: &str,
    mut field: Field<'_>,
) -> Result<(crate::blobs::Incoming, Vec<u8>), ApiError> {
    let limit = app.config.max_upload_bytes;
    let mut incoming = app
        .blobs
        .incoming(id)
        .await
        .map_err(|e| ApiError::internal("cannot store the upload", e))?;
    let mut head = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
        if incoming.bytes + chunk.len() as u64 > limit {
            return Err(too_large(limit));
        }
        if head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        incoming
            .write(&chunk)
            .await
            .map_err(|e| ApiError::internal("cannot store the upload", e))?;
    }
    Ok((incoming, head))
}

async fn small_text(mut field: Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_TEXT_FIELD {
            return Err(ApiError::invalid(format!(
                "The field {name:?} is longer than {MAX_TEXT_FIELD} bytes"
            )));
        }
    }
    String::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| ApiError::invalid(format!("The field {name:?} is not UTF-8 text")))
}

fn bad_multipart(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::invalid(format!("Malformed multipart body: {}", e.body_text()))
}

fn expiry_seconds(anchor: Option<&str>, seconds: Option<&str>) -> Result<i64, ApiError> {
    if anchor != Some("created_at") {
        return Err(ApiError::invalid(
            "expires_after[anchor] must be 'created_at' (and expires_after[seconds] given)",
        )
        .param("expires_after"));
    }
    let seconds: i64 = seconds.and_then(|s| s.parse().ok()).ok_or_else(|| {
        ApiError::invalid("expires_after[seconds] must be a whole number of seconds")
            .param("expires_after")
    })?;
    if !EXPIRY_SECONDS.contains(&seconds) {
        return Err(ApiError::invalid(format!(
            "expires_after[seconds] must be from {} to {} (1 hour to 30 days)",
            EXPIRY_SECONDS.start(),
            EXPIRY_SECONDS.end()
        ))
        .param("expires_after"));
    }
    Ok(seconds)
}

/// The name a client gave, reduced to a plain name: no directories, no control characters.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    match clean.trim() {
        "" | "." | ".." => "upload".into(),
        t => t.to_owned(),
    }
}

/// The light check of a batch upload: its first line must be a JSON object. The full check
/// runs when a batch uses the file.
fn check_jsonl(head: &[u8]) -> Result<(), String> {
    const FIX: &str = "Invalid file format for Batch API. Must be .jsonl: one JSON object \
                       (custom_id, method, url, body) per line";
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    if head.is_empty() {
        return Err("The file is empty; a batch file needs at least one request line".into());
    }
    if head.contains(&0) {
        return Err(format!("{FIX} (this file looks binary)"));
    }
    let first = head
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .find(|l| !l.is_empty());
    let Some(first) = first else {
        return Err("The file holds only blank lines; a batch file needs request lines".into());
    };
    if !first.starts_with(b"{") {
        return Err(format!("{FIX} (line 1 does not start with '{{')"));
    }
    // A first line longer than the kept head is checked only for its start.
    let complete = head.len() < HEAD_BYTES || head.contains(&b'\n');
    if complete
        && !matches!(
            serde_json::from_slice::<serde_json::Value>(first),
            Ok(serde_json::Value::Object(_))
        )
    {
        return Err(format!("{FIX} (the first line is not a JSON object)"));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFiles {
    after: Option<String>,
    /// 1 to 10000; default 10000.
    limit: Option<i64>,
    /// `asc` or `desc` (default) by creation time.
    order: Option<String>,
    purpose: Option<String>,
}

#[utoipa::path(get, path = "/v1/files", tag = "files", operation_id = "listFiles", params(ListFiles),
    responses((status = 200, description = "A page of the caller's files.", body = List<FileObject>),
        (status = 400, description = "An invalid query parameter.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    query: Result<Query<ListFiles>, QueryRejection>,
) -> Result<Json<List<FileObject>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 10000").param("limit"));
    }
    let descending = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::invalid("order must be 'asc' or 'desc'").param("order")),
    };
    let rows = app
        .store
        .files(
            &owner.0,
            q.purpose.as_deref(),
            q.after.as_deref(),
            limit + 1,
            descending,
        )
        .await?;
    let objects = rows.iter().map(FileObject::from).collect();
    Ok(Json(List::page(
        objects,
        limit as usize,
        |f: &FileObject| &f.id,
    )))
}

async fn owned(app: &AppState, owner: &Owner, id: &str) -> Result<FileRow, ApiError> {
    app.store
        .file(&owner.0, id)
        .await?
        .ok_or_else(|| ApiError::not_found("File", id))
}

#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", operation_id = "retrieveFile", params(("id" = String, Path, description = "The file's id (`file-…`)")),
    responses((status = 200, description = "The file.", body = FileObject),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such file of the caller's.", body = crate::error::ErrorBody)))]
pub async fn retrieve(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(FileObject::from(&owned(&app, &owner, &id).await?)))
}

#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "files", operation_id = "downloadFile", params(("id" = String, Path, description = "The file's id (`file-…`)")),
    description = "The file's bytes, streamed; a single `Range: bytes=…` is honoured (206).",
    responses((status = 200, description = "The whole file.", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range.", content_type = "application/octet-stream"),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such file of the caller's.", body = crate::error::ErrorBody),
        (status = 416, description = "The range is outside the file.")))]
pub async fn content(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let file = owned(&app, &owner, &id).await?;
    super::range::serve_blob(&app.blobs, &file.blob, &headers).await
}

#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", operation_id = "deleteFile", params(("id" = String, Path, description = "The file's id (`file-…`)")),
    responses((status = 200, description = "The file is deleted.", body = FileDeleted),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such file of the caller's.", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    if !app.store.delete_file(&owner.0, &id).await? {
        return Err(ApiError::not_found("File", &id));
    }
    // The content goes now unless a running batch still reads it (then when it ends).
    app.collect_soon();
    Ok(Json(FileDeleted {
        id,
        object: "file".into(),
        deleted: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_their_directories() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\data\\in.jsonl"), "in.jsonl");
        assert_eq!(clean_filename(".."), "upload");
        assert_eq!(clean_filename("a\u{0}b\n.jsonl"), "ab.jsonl");
    }

    #[test]
    fn the_light_check_wants_a_json_object_first() {
        assert!(check_jsonl(b"{\"custom_id\":\"a\"}\n").is_ok());
        assert!(check_jsonl(b"\xEF\xBB\xBF\n\n{\"a\":1}").is_ok());
        assert!(check_jsonl(b"").expect_err("refused").contains("empty"));
        assert!(
            check_jsonl(b"a,b,c\n1,2,3\n")
                .expect_err("refused")
                .contains(".jsonl")
        );
        assert!(
            check_jsonl(b"{not json}\n")
                .expect_err("refused")
                .contains("not a JSON object")
        );
        assert!(
            check_jsonl(b"\x89PNG\0\0")
                .expect_err("refused")
                .contains("binary")
        );
    }
}

//! A batch's image, audio and video payloads as files of its owner (purpose `batch_output`,
//! kept as long as its output file), so the result line names a file id the Files API serves.
//!
//! A payload's file id is derived from the batch and the payload's name (which is made from the
//! line's result id), so a worker that resumes the batch and sends a line again replaces the
//! same file instead of adding one.

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::blobs::Blobs;
use crate::store::{BatchRow, FileRow, Store};

#[derive(Clone)]
pub struct BatchMedia {
    store: Store,
    blobs: Blobs,
    batch: BatchRow,
}

impl std::fmt::Debug for BatchMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the media files of {}", self.batch.id)
    }
}

impl BatchMedia {
    pub fn new(store: Store, blobs: Blobs, batch: &BatchRow) -> Self {
        Self {
            store,
            blobs,
            batch: batch.clone(),
        }
    }

    /// The file id of payload `name` of this batch.
    fn id_of(&self, name: &str) -> String {
        let key = format!("{}/{name}", self.batch.id);
        format!("file-{:032x}", xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
    }
}

impl batch_job::MediaStore for BatchMedia {
    fn put<'a>(
        &'a self,
        name: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<batch_job::MediaPlace, String>> {
        Box::pin(async move {
            let id = self.id_of(name);
            let len = bytes.len();
            let mut incoming = self.blobs.incoming(&id).await.map_err(|e| e.to_string())?;
            incoming.write(&bytes).await.map_err(|e| e.to_string())?;
            incoming
                .commit(&self.blobs, &id)
                .await
                .map_err(|e| e.to_string())?;
            let filename = format!("{}_{name}", self.batch.id);
            let row = FileRow::batch_output(&self.batch, id.clone(), filename, len as u64);
            self.store
                .insert_media_file(&row, &self.batch.id)
                .await
                .map_err(|e| e.to_string())?;
            Ok(batch_job::MediaPlace("id", id))
        })
    }
}

//! What the image, audio and video endpoints need besides sending a body and keeping the answer
//! (see `media`): a transcription line's form, a video job followed to its content, and the
//! payloads stored before the result is recorded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use batch_format::endpoints::Exchange;
use bytes::Bytes;
use serde_json::Value;

use crate::dispatch::{Delivery, Engines, Payload};
use crate::media::MediaStore;
use crate::media::answers::{self, NotKept};
use crate::media::form::{self, AudioSources};
use crate::run::stop::{StopReason, StopSignal};

/// The first wait between two looks at a video job; it grows to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(10);

/// How this job's requests travel and how their answers are kept.
pub struct Handling {
    exchange: Exchange,
    /// Where payloads go (`RunError::NoMediaStore` refuses a job that needs it and has none).
    media: Option<Arc<dyn MediaStore>>,
    /// Where a transcription line's audio may be downloaded from.
    audio: AudioSources,
    /// Why a payload could not be stored, when one could not: the job stopped (resumable).
    store_failed: OnceLock<String>,
}

/// Why an answer has no result line to keep.
pub enum Unkept {
    /// The line's own failure: its error record, with this code and message.
    Line(&'static str, String),
    /// The job stopped while following a video job.
    Stopped,
    /// A payload could not be stored: the job stops, the line runs again on resume.
    Store,
}

impl Handling {
    pub fn new(
        exchange: Exchange,
        media: Option<Arc<dyn MediaStore>>,
        hosts: Option<Vec<String>>,
    ) -> Self {
        Self {
            exchange,
            media,
            audio: AudioSources::new(hosts),
            store_failed: OnceLock::new(),
        }
    }

    /// Whether a success's answer is not kept as it came (see [`Handling::keep`]).
    pub fn reshapes(&self) -> bool {
        self.exchange != Exchange::Json
    }

    /// Why the job stopped storing payloads, if it did.
    pub fn store_failed(&self) -> Option<&str> {
        self.store_failed.get().map(String::as_str)
    }

    /// The request as the endpoint takes it: the line's JSON, or a transcription's form (an
    /// error: why its audio could not be had). The form's future (a download) is boxed, so
    /// every other request's task stays as small as before.
    pub async fn payload(&self, body: Bytes) -> Result<Payload, String> {
        match self.exchange {
            Exchange::Transcription => Box::pin(form::transcription(&body, &self.audio)).await,
            _ => Ok(Payload::json(body)),
        }
    }

    /// A successful answer (`answer`, from `engine`) as the result line keeps it: payloads
    /// stored, a video followed to its end.
    pub async fn keep(
        &self,
        request: &[u8],
        result_id: &str,
        answer: Bytes,
        (engines, engine): (&Engines, usize),
        stop: &StopSignal,
    ) -> Result<Vec<u8>, Unkept> {
        let kept = match (self.exchange, self.media.as_deref()) {
            (Exchange::Json, _) => return Ok(answer.to_vec()),
            (Exchange::Transcription, _) => return Ok(answers::transcription(&answer)),
            // The job refuses to start without a store (`RunError::NoMediaStore`).
            (_, None) => Err(NotKept::Store("no media store for this job".into())),
            (Exchange::Images, Some(store)) => answers::images(store, result_id, &answer).await,
            (Exchange::Speech, Some(store)) => {
                answers::speech(store, result_id, request, answer).await
            }
            (Exchange::Video, Some(store)) => {
                let (object, content) = follow_video(&answer, engines, engine, stop).await?;
                answers::video(store, result_id, object, content).await
            }
        };
        kept.map_err(|e| match e {
            NotKept::Answer(why) => Unkept::Line("invalid_engine_response", why),
            NotKept::Store(why) => {
                tracing::error!("cannot store a media answer: {why}; stopping (resumable)");
                let _ = self.store_failed.set(why);
                stop.request(StopReason::Interrupted);
                stop.abort(StopReason::Interrupted);
                Unkept::Store
            }
        })
    }
}

/// A video job, from the answer that created it, polled on the engine that made it until it
/// ends; its final object and content.
async fn follow_video(
    created: &[u8],
    engines: &Engines,
    engine: usize,
    stop: &StopSignal,
) -> Result<(Value, Bytes), Unkept> {
    let answer = |why: String| Unkept::Line("invalid_engine_response", why);
    let mut object: Value = serde_json::from_slice(created)
        .map_err(|e| answer(format!("the video answer is not JSON: {e}")))?;
    let id = object["id"]
        .as_str()
        .filter(|id| !id.is_empty() && !id.contains(['/', '?', '#']))
        .map(str::to_owned)
        .ok_or_else(|| answer("the video answer has no usable id".into()))?;
    let mut wait = FIRST_POLL;
    loop {
        match object["status"].as_str() {
            Some("completed") => break,
            Some("queued" | "in_progress") => {}
            // `failed`, or a status OpenAI's API does not have: the job will not complete.
            other => {
                let why = object["error"]["message"]
                    .as_str()
                    .unwrap_or("the engine gave no reason");
                let status = other.unwrap_or("none");
                return Err(Unkept::Line(
                    "video_failed",
                    format!("video job {id} ended {status}: {why}"),
                ));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.aborting() => return Err(Unkept::Stopped),
        }
        wait = (wait * 3 / 2).min(MAX_POLL);
        let body = fetched(
            engines
                .get_on(engine, &format!("/v1/videos/{id}"), stop)
                .await,
        )?;
        object = serde_json::from_slice(&body)
            .map_err(|e| answer(format!("video job {id}'s status is not JSON: {e}")))?;
    }
    let content = engines
        .get_on(engine, &format!("/v1/videos/{id}/content"), stop)
        .await;
    Ok((object, fetched(content)?))
}

/// A GET's body when it succeeded.
fn fetched(delivery: Delivery) -> Result<Bytes, Unkept> {
    match delivery {
        Delivery::Answered { status, body, .. } if (200..300).contains(&status) => Ok(body),
        Delivery::Answered { status, body, .. } => Err(Unkept::Line(
            "invalid_engine_response",
            format!(
                "following the video job, the engine answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        )),
        Delivery::Unavailable { last_error } => Err(Unkept::Line(
            "engine_unavailable",
            format!("following the video job: {last_error}"),
        )),
        Delivery::Stopped => Err(Unkept::Stopped),
    }
}

//! One line's result: sending its request, or recording why it did not run, as a result line.

use std::sync::atomic::Ordering;
use std::time::Instant;

use batch_format::output::{LineResult, ResponseBody, Usage, write_line};
use bytes::Bytes;
use tracing::Instrument;

use super::handling::{Handling, Unkept};
use crate::dispatch::{Delivery, Engines, Target};
use crate::report::metrics::Stats;
use crate::run::stop::{StopReason, StopSignal};
use crate::state::outcome::LineOutcome;
use crate::state::sink::Record;
use crate::state::timings::Timing;

/// OpenAI's message for a request the completion window left unrun.
pub const EXPIRED_MESSAGE: &str =
    "This request could not be executed before the completion window expired.";
pub const CANCELLED_MESSAGE: &str =
    "This request was not executed because the batch was cancelled.";

/// What every record of this job shares.
pub struct Ids {
    run_tag: String,
}

impl Ids {
    pub fn new(run_tag: String) -> Self {
        Self { run_tag }
    }

    /// `batch_req_<run tag><line>`: unique within the job because line numbers are, and the
    /// same across resumes because the tag is kept in the manifest.
    pub fn result_id(&self, line: u64) -> String {
        format!("batch_req_{}{line:08}", self.run_tag)
    }

    /// A record for a line that never got an answer.
    pub fn error(
        &self,
        line: u64,
        custom_id: Option<&str>,
        outcome: LineOutcome,
        code: &str,
        message: &str,
    ) -> Record {
        let mut bytes = Vec::with_capacity(160 + message.len());
        let body = LineResult::Error { code, message };
        write_line(&mut bytes, &self.result_id(line), custom_id, &body);
        Record {
            line,
            outcome,
            bytes,
            usage: Usage::default(),
            timing: Timing::default(),
        }
    }

    /// The record for a line a stop left without a result, or none when the job is only
    /// interrupted (the line runs when the job resumes).
    pub fn stopped(&self, line: u64, custom_id: &str, reason: StopReason) -> Option<Record> {
        let (outcome, code, message) = match reason {
            StopReason::Expired => (LineOutcome::Expired, "batch_expired", EXPIRED_MESSAGE),
            StopReason::Cancelled => (LineOutcome::Cancelled, "batch_cancelled", CANCELLED_MESSAGE),
            StopReason::Interrupted => return None,
        };
        Some(self.error(line, Some(custom_id), outcome, code, message))
    }
}

pub struct Request {
    pub line: u64,
    pub custom_id: String,
    pub body: Bytes,
}

/// Where a request goes and what it needs on the way (see [`Handling`]).
pub struct Route<'a> {
    pub engines: &'a Engines,
    pub target: &'a Target,
    pub handling: &'a Handling,
}

/// Sends one request and turns whatever happened into its record (none when an interrupt
/// abandoned it, or a media payload could not be stored). (About 90 lines: the request's way
/// from sending to its record, each ending in order.)
pub async fn execute(
    route: Route<'_>,
    stats: &Stats,
    stop: &StopSignal,
    ids: &Ids,
    request: Request,
) -> Option<Record> {
    let (line, custom_id) = (request.line, request.custom_id.as_str());
    let payload = match route.handling.payload(request.body.clone()).await {
        Ok(payload) => payload,
        Err(why) => {
            let message = format!("line {line}: {why}");
            let outcome = LineOutcome::InvalidRequest;
            return Some(ids.error(line, Some(custom_id), outcome, "invalid_file_url", &message));
        }
    };
    stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let started_ms = crate::state::unix_now_ms();
    // Debug level: a span per request costs nothing unless someone asks to follow requests.
    let span = tracing::debug_span!("request", line, custom_id = ?request.custom_id);
    let sending = route
        .engines
        .send(route.target, payload, stop, || {
            stats.retries.fetch_add(1, Ordering::Relaxed);
        })
        .instrument(span);
    let sent = tokio::select! {
        biased;
        sent = sending => Some(sent),
        () = stop.aborting() => None,
    };
    let id = ids.result_id(line);
    let stopped = || {
        let reason = stop.phase().reason().unwrap_or(StopReason::Interrupted);
        ids.stopped(line, custom_id, reason)
    };
    let sent = match sent {
        Some(sent) if !matches!(sent.delivery, Delivery::Stopped) => sent,
        _ => {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            return stopped();
        }
    };
    // A success's payloads are stored (and a video followed to its end) before it counts.
    let kept = match &sent.delivery {
        Delivery::Answered { status, body, .. }
            if (200..300).contains(status) && route.handling.reshapes() =>
        {
            let on = (route.engines, sent.engine);
            // Boxed: only media answers take this way, and its future (a video followed to its
            // end, payloads stored) would otherwise enlarge every request's task.
            let keeping = route
                .handling
                .keep(&request.body, &id, body.clone(), on, stop);
            Some(Box::pin(keeping).await)
        }
        _ => None,
    };
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    let latency = started.elapsed();
    stats.observe_latency(latency);
    let mut record = match (sent.delivery, kept) {
        (_, Some(Err(Unkept::Stopped))) => return stopped(),
        (_, Some(Err(Unkept::Store))) => return None,
        (_, Some(Err(Unkept::Line(code, why)))) => {
            let message = format!("line {line}: {why}");
            ids.error(
                line,
                Some(custom_id),
                LineOutcome::EngineError,
                code,
                &message,
            )
        }
        (
            Delivery::Answered {
                status, request_id, ..
            },
            Some(Ok(kept)),
        ) => answered(&id, line, custom_id, status, request_id, &kept),
        (
            Delivery::Answered {
                status,
                request_id,
                body,
            },
            None,
        ) => answered(&id, line, custom_id, status, request_id, &body),
        (Delivery::Unavailable { last_error }, _) => {
            let message = format!(
                "no answer from the engine after {} attempts; last error: {last_error}",
                sent.attempts
            );
            ids.error(
                line,
                Some(custom_id),
                LineOutcome::EngineUnavailable,
                "engine_unavailable",
                &message,
            )
        }
        (Delivery::Stopped, _) => return None,
    };
    record.timing = Timing {
        attempts: sent.attempts,
        started_ms,
        latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
    };
    Some(record)
}

/// The record for an engine's answer, whatever its status and body.
fn answered(
    id: &str,
    line: u64,
    custom_id: &str,
    status: u16,
    request_id: Option<String>,
    body: &[u8],
) -> Record {
    let success = (200..300).contains(&status);
    let mut bytes = Vec::with_capacity(body.len() + 160);
    let mut usage = Usage::default();
    let outcome = match ResponseBody::parse(body) {
        Ok((parsed, info)) => {
            usage = info.usage;
            let request_id = request_id.or(info.id);
            let parsed = if success {
                parsed
            } else {
                parsed.as_openai_error(status)
            };
            let line_outcome = LineResult::Response {
                status_code: status,
                request_id: request_id.as_deref(),
                body: &parsed,
            };
            write_line(&mut bytes, id, Some(custom_id), &line_outcome);
            if success {
                LineOutcome::Succeeded
            } else {
                LineOutcome::EngineError
            }
        }
        Err(_) if success => {
            let message = format!(
                "the engine answered {status} with a body that is not JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
            let line_outcome = LineResult::Error {
                code: "invalid_engine_response",
                message: &message,
            };
            write_line(&mut bytes, id, Some(custom_id), &line_outcome);
            LineOutcome::EngineError
        }
        Err(_) => {
            let wrapped = ResponseBody::from_text(status, body);
            let line_outcome = LineResult::Response {
                status_code: status,
                request_id: request_id.as_deref(),
                body: &wrapped,
            };
            write_line(&mut bytes, id, Some(custom_id), &line_outcome);
            LineOutcome::EngineError
        }
    };
    Record {
        line,
        outcome,
        bytes,
        usage,
        timing: Timing::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_ids_are_unique_per_line_and_stable_per_tag() {
        let ids = Ids::new("abc".into());
        assert_eq!(ids.result_id(1), "batch_req_abc00000001");
        assert_ne!(ids.result_id(1), ids.result_id(10));
    }

    #[test]
    fn stopped_lines_get_openai_shaped_records() {
        let ids = Ids::new("t".into());
        let r = ids.stopped(3, "c", StopReason::Expired).expect("record");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes).expect("json");
        assert_eq!(v["error"]["code"], "batch_expired");
        assert_eq!(v["error"]["message"], EXPIRED_MESSAGE);
        assert_eq!(v["response"], serde_json::Value::Null);
        assert_eq!(r.outcome, LineOutcome::Expired);
        let r = ids.stopped(3, "c", StopReason::Cancelled).expect("record");
        assert_eq!(r.outcome, LineOutcome::Cancelled);
        assert!(ids.stopped(3, "c", StopReason::Interrupted).is_none());
    }

    #[test]
    fn answers_are_sorted_by_status_and_body() {
        let ok = answered(
            "i",
            1,
            "c",
            200,
            None,
            br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        );
        assert_eq!(ok.outcome, LineOutcome::Succeeded);
        assert_eq!(ok.usage.output_tokens, 2);
        let v: serde_json::Value = serde_json::from_slice(&ok.bytes).expect("json");
        assert_eq!(v["response"]["request_id"], "x");
        let bad = answered("i", 1, "c", 200, None, b"<html>");
        assert_eq!(bad.outcome, LineOutcome::EngineError);
        let v: serde_json::Value = serde_json::from_slice(&bad.bytes).expect("json");
        assert_eq!(v["error"]["code"], "invalid_engine_response");
        let gateway = answered("i", 1, "c", 502, Some("r".into()), b"bad gateway");
        let v: serde_json::Value = serde_json::from_slice(&gateway.bytes).expect("json");
        assert_eq!(v["response"]["status_code"], 502);
        assert_eq!(v["response"]["body"]["error"]["message"], "bad gateway");
    }
}

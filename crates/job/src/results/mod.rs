//! Reading a job's results one page or one request at a time: the data of the service's
//! results API and of the dashboard (`run --ui` included).
//!
//! Two sources answer the same questions:
//! - [`live::LiveResults`]: a job still running, read from its state directory (the spool as
//!   flushed so far, its index and timings) and its input; a page scans the spool index
//!   (21 bytes per result), a request by `custom_id` scans the spool files.
//! - [`index::ResultIndex`]: a finished job, from a `results index` built once from its final
//!   files (input order) and input: the results of each status in line order, a table of
//!   `custom_id` hashes, and the failures by code. A page is a binary search and one read per
//!   result line, whatever the batch's size.
//!
//! Pages are in input-line order and the cursor is a line number (`after`), so a cursor stays
//! valid while results arrive and after the job has finished: a page lists the results present
//! when it is read.

pub mod index;
pub mod live;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::Serialize;
use serde_json::value::RawValue;

pub use crate::report::errors::ErrorCount;
use crate::state::outcome::LineOutcome;
use crate::state::timings::Timing;

/// The most results one page holds.
pub const MAX_PAGE: usize = 1000;

/// A result's status as the results API names it (OpenAI's request counts call the last three
/// `failed`, but a user filtering the results wants them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

impl ResultStatus {
    pub const ALL: [ResultStatus; 4] = [
        ResultStatus::Succeeded,
        ResultStatus::Failed,
        ResultStatus::Expired,
        ResultStatus::Cancelled,
    ];

    pub fn of(outcome: LineOutcome) -> Self {
        match outcome {
            LineOutcome::Succeeded => ResultStatus::Succeeded,
            LineOutcome::Expired => ResultStatus::Expired,
            LineOutcome::Cancelled => ResultStatus::Cancelled,
            LineOutcome::EngineError
            | LineOutcome::EngineUnavailable
            | LineOutcome::InvalidRequest => ResultStatus::Failed,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ResultStatus::Succeeded => "succeeded",
            ResultStatus::Failed => "failed",
            ResultStatus::Expired => "expired",
            ResultStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.label() == text)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which results a page holds.
#[derive(Debug, Clone, Copy)]
pub struct PageQuery {
    /// Every status when `None`.
    pub status: Option<ResultStatus>,
    /// Only lines after this one (the last line of the previous page).
    pub after: u64,
    pub limit: usize,
}

impl PageQuery {
    fn wants(&self, status: ResultStatus, line: u64) -> bool {
        line > self.after && self.status.is_none_or(|s| s == status)
    }
}

/// One result line with where it came from.
#[derive(Debug, Serialize)]
pub struct ResultItem {
    /// The input line (1-based).
    pub line: u64,
    pub custom_id: Option<String>,
    pub status: ResultStatus,
    /// The result line as written to the output or error file.
    pub result: Box<RawValue>,
}

#[derive(Debug, Default, Serialize)]
pub struct ResultPage {
    pub data: Vec<ResultItem>,
    pub has_more: bool,
}

/// One request: its input line beside its result, and how its request went.
#[derive(Debug, Serialize)]
pub struct RequestDetail {
    #[serde(flatten)]
    pub item: ResultItem,
    /// The input line (a JSON string when the line is not JSON); null when the input is gone.
    pub input: Option<Box<RawValue>>,
    /// Null when not known (a result from before timings were kept, or never sent).
    pub timing: Option<TimingView>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimingView {
    pub attempts: u32,
    pub retries: u32,
    /// Unix milliseconds of the first send.
    pub started_at_ms: u64,
    pub latency_ms: u32,
}

impl TimingView {
    fn of(t: Timing) -> Option<Self> {
        (t.attempts > 0).then(|| Self {
            attempts: t.attempts,
            retries: t.attempts - 1,
            started_at_ms: t.started_ms,
            latency_ms: t.latency_ms,
        })
    }
}

/// What both sources answer.
pub trait ResultSource: Send {
    fn page(&self, query: &PageQuery) -> io::Result<ResultPage>;
    /// The request whose `custom_id` is `custom_id`, when it has a result.
    fn find(&self, custom_id: &str) -> io::Result<Option<RequestDetail>>;
    /// The failures by error code, most frequent first, each with a sample.
    fn errors(&self, top: usize) -> io::Result<Vec<ErrorCount>>;
}

/// A result line as an item; `None` when the bytes are not (yet) a whole line: a record the
/// running job has indexed but not flushed.
fn item(line: u64, status: ResultStatus, bytes: &[u8]) -> Option<ResultItem> {
    let text = bytes.strip_suffix(b"\n")?;
    let text = std::str::from_utf8(text).ok()?;
    let result: Box<RawValue> = serde_json::from_str(text).ok()?;
    Some(ResultItem {
        line,
        custom_id: custom_id_of(result.get().as_bytes()),
        status,
        result,
    })
}

/// The `custom_id` of a JSON line (a result or an input line).
fn custom_id_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        custom_id: Option<String>,
    }
    serde_json::from_slice::<Named>(bytes).ok()?.custom_id
}

/// An input line as JSON (a string when it is not JSON itself).
fn input_value(text: &[u8]) -> Option<Box<RawValue>> {
    let text = String::from_utf8_lossy(text);
    let trimmed = text.trim_end_matches('\r');
    RawValue::from_string(trimmed.to_owned())
        .ok()
        .or_else(|| serde_json::value::to_raw_value(trimmed).ok())
}

/// `len` bytes at `offset` of `file`, fewer when the file is shorter.
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

#[cfg(test)]
mod tests;

//! The reader thread of the dispatch pass: streams the input again and turns each line that
//! still needs a result into an [`Item`], judging it exactly as the validation pass did.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use batch_format::input::custom_id_of;
use batch_format::{LineRules, Problem};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::bitset::BitSet;
use crate::input::reader::{Content, LineReader};
use crate::input::{Blocks, Changed, Verified};

/// Lines handed over at a time, so the reader and the dispatcher rarely wake each other.
pub const BATCH: usize = 256;

/// A line that needs a result.
pub enum Item {
    Request {
        line: u64,
        custom_id: String,
        body: Bytes,
    },
    Invalid {
        line: u64,
        custom_id: Option<String>,
        /// The error code of its record: `invalid_request`, or `context_length_exceeded` for a
        /// line the pre-flight pass refused.
        code: &'static str,
        message: String,
    },
}

impl Item {
    /// The `--order-dispatch prefix` group of a request; invalid lines share one.
    fn prefix_key(&self) -> u64 {
        match self {
            Item::Request { body, .. } => super::grouping::prefix_key(body),
            Item::Invalid { .. } => 0,
        }
    }
}

pub struct Feed<'a> {
    pub path: &'a Path,
    /// What the validation pass read: the feed refuses other bytes.
    pub blocks: &'a Blocks,
    pub max_line_bytes: usize,
    pub rules: LineRules,
    /// Lines the validation pass rejected.
    pub invalid: &'a BitSet,
    /// Lines that already have a result (a resumed job).
    pub done: &'a BitSet,
    /// Lines the pre-flight pass refused, with why.
    pub rejected: &'a BTreeMap<u64, String>,
    /// `--order-dispatch prefix`: lines grouped by prompt prefix within windows of this many.
    pub group_window: Option<usize>,
}

impl Feed<'_> {
    /// Sends every line that needs a result, in batches, until the input ends or the receiver
    /// goes away.
    pub fn run(mut self, batches: &mpsc::Sender<Vec<Item>>) -> std::io::Result<()> {
        let input = Verified::new(File::open(self.path)?, self.blocks);
        let mut reader = LineReader::new(input, self.max_line_bytes);
        let window = self.group_window.unwrap_or(BATCH).max(1);
        let mut pending = Vec::with_capacity(window.min(1 << 16));
        let mut last = 0;
        while let Some(line) = reader
            .next_line()
            .map_err(|e| Changed::from_line(e, last + 1))?
        {
            last = line.number;
            if line.content.is_blank() || self.done.contains(line.number) {
                continue;
            }
            pending.push(self.item(line.number, &line.content));
            if pending.len() == window {
                let full = std::mem::replace(&mut pending, Vec::with_capacity(window.min(1 << 16)));
                if !self.hand_over(full, batches) {
                    return Ok(()); // the dispatcher stopped
                }
            }
        }
        if !pending.is_empty() {
            self.hand_over(pending, batches);
        }
        Ok(())
    }

    /// Sends a window of items (grouped, with `--order-dispatch prefix`) in batches; false when
    /// the dispatcher has gone.
    fn hand_over(&self, items: Vec<Item>, batches: &mpsc::Sender<Vec<Item>>) -> bool {
        let items = match self.group_window {
            Some(_) => super::grouping::group(items, Item::prefix_key),
            None => items,
        };
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let batch: Vec<Item> = items.by_ref().take(BATCH).collect();
            if batches.blocking_send(batch).is_err() {
                return false;
            }
        }
        true
    }

    fn item(&mut self, line: u64, content: &Content<'_>) -> Item {
        let text = match content {
            Content::TooLong => {
                let too_long = Problem::LineTooLong {
                    max_bytes: self.max_line_bytes,
                };
                return Item::invalid(line, None, too_long);
            }
            Content::Text(text) => text,
        };
        match self.rules.check(line, text) {
            Ok(request) if self.rejected.contains_key(&line) => Item::Invalid {
                line,
                custom_id: Some(request.custom_id.into_owned()),
                code: "context_length_exceeded",
                message: format!("line {line}: {}", self.rejected[&line]),
            },
            Ok(request) if !self.invalid.contains(line) => Item::Request {
                line,
                custom_id: request.custom_id.into_owned(),
                body: Bytes::copy_from_slice(request.body.get().as_bytes()),
            },
            // Valid on its own but rejected by the validation pass: a duplicate custom_id.
            Ok(request) => Item::invalid(
                line,
                Some(request.custom_id.as_ref()),
                format_args!(
                    "the custom_id {:?} is a duplicate of an earlier line; custom_id must be \
                     unique for each request in a batch",
                    request.custom_id
                ),
            ),
            Err(problems) => {
                let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
                Item::invalid(line, custom_id_of(text).as_deref(), all.join("; "))
            }
        }
    }
}

impl Item {
    /// An invalid line's item; the message names the line, since the error file is read
    /// without the input beside it.
    fn invalid(line: u64, custom_id: Option<&str>, why: impl std::fmt::Display) -> Item {
        Item::Invalid {
            line,
            custom_id: custom_id.map(str::to_owned),
            code: "invalid_request",
            message: format!("line {line}: {why}"),
        }
    }
}

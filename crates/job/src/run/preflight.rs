//! The pre-flight pass (`run --preflight`, and a service batch's `preflight` extension): every
//! line still to run counted by the engine's own tokenizer before any is sent, so the job knows
//! its input tokens and its worst-case output tokens up front, and the lines the engine would
//! refuse for their length are refused here instead (`context_length_exceeded` in the error
//! file), without spending a slot of the engine on them.
//!
//! A line is refused when its prompt reaches the context length (vLLM hangs on a prompt of
//! exactly `max_model_len`: landscape row 13), or when the prompt plus its `max_tokens` is over
//! it. Only a count made by the engine refuses a line; an estimate never does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use batch_format::LineRules;
use batch_format::rules::Settled;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::bitset::BitSet;
use crate::dispatch::tokenize::{Count, Tokenizer, prompt_of};
use crate::dispatch::{EngineOptions, Engines};
use crate::input::Blocks;
use crate::input::validate::{ValidateOptions, Validation};
use crate::run::feed::{Feed, Item};

/// Lines counted at once: the tokenizer is cheap next to generation, but it runs in the
/// engine's front end, which online traffic shares.
pub const CONCURRENCY: usize = 16;

/// What the pass found, as the summary, the log and the service show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// Lines counted (the requests still without a result).
    pub requests: u64,
    /// Prompt tokens of the lines that will be sent.
    pub input_tokens: u64,
    /// The most those lines may generate: their `max_tokens`, or what the context leaves
    /// when they give none (nothing counted when the context length is unknown).
    pub worst_case_output_tokens: u64,
    /// Lines that give no output limit.
    pub without_max_tokens: u64,
    /// Lines the engine counted, and lines estimated (no tokenizer, or it failed on them).
    pub counted_by_engine: u64,
    pub estimated: u64,
    /// The model's context length, when the engine tells it.
    pub context_length: Option<u64>,
    /// Lines refused as too long for the context (`context_length_exceeded`).
    pub over_context: u64,
    /// Where the counts come from.
    pub source: String,
}

/// The pass's report, and the message of each line it refused.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    pub report: PreflightReport,
    pub rejected: BTreeMap<u64, String>,
}

/// The lines to count: the validated input, read as the dispatch pass reads it.
pub struct Lines {
    pub path: PathBuf,
    pub blocks: Blocks,
    pub max_line_bytes: usize,
    pub rules: batch_format::RulesConfig,
    pub settled: Option<Settled>,
    pub invalid: BitSet,
    pub done: BitSet,
}

impl Lines {
    /// The lines of a validated input that have no result in `done`.
    pub fn of(validation: &Validation, options: &ValidateOptions, done: BitSet) -> Self {
        Self {
            path: validation.source.clone(),
            blocks: validation.blocks.clone(),
            max_line_bytes: options.max_line_bytes,
            rules: options.rules.clone(),
            settled: validation.settled.clone(),
            invalid: validation.invalid.clone(),
            done,
        }
    }
}

/// The pre-flight count of a validated input, for a caller whose engines are not set up (the
/// service's worker, validating a batch before its job starts).
pub async fn preflight_input(
    engines: &EngineOptions,
    validation: &Validation,
    options: &ValidateOptions,
) -> Result<Preflight, String> {
    let engines = Engines::new(engines).map_err(|e| e.to_string())?;
    let lines = Lines::of(validation, options, BitSet::default());
    preflight(&engines, lines).await.map_err(|e| e.to_string())
}

/// Counts every line of `lines` that is valid and without a result, `CONCURRENCY` at a time,
/// with the tokenizer of the first engine that has one.
pub async fn preflight(engines: &Engines, lines: Lines) -> std::io::Result<Preflight> {
    let model = lines.settled.as_ref().map_or("", |s| s.model.as_str());
    let generates = lines
        .settled
        .as_ref()
        .is_none_or(|s| s.url != "/v1/embeddings");
    let tokenizer = engines.tokenizer(model).await;
    let mut tally = Tally {
        preflight: Preflight::default(),
        generates,
    };
    tally.preflight.report.context_length = tokenizer.context_length;
    tally.preflight.report.source = tokenizer.source.clone();
    let (tx, mut rx) = mpsc::channel::<Vec<Item>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let no_rejections = BTreeMap::new();
        Feed {
            path: &lines.path,
            blocks: &lines.blocks,
            max_line_bytes: lines.max_line_bytes,
            rules: LineRules::settled(lines.rules, lines.settled),
            invalid: &lines.invalid,
            done: &lines.done,
            rejected: &no_rejections,
            group_window: None,
        }
        .run(&tx)
    });
    while let Some(batch) = rx.recv().await {
        let counts: Vec<_> = futures_util::stream::iter(batch)
            .filter_map(|item| async move {
                match item {
                    Item::Request { line, body, .. } => Some((line, body)),
                    Item::Invalid { .. } => None,
                }
            })
            .map(|(line, body)| count_line(&tokenizer, line, body))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (line, count, max_tokens) in counts {
            tally.add(line, count, max_tokens, &tokenizer);
        }
    }
    reader.await.map_err(std::io::Error::other)??;
    Ok(tally.preflight)
}

async fn count_line(
    tokenizer: &Tokenizer<'_>,
    line: u64,
    body: bytes::Bytes,
) -> (u64, Count, Option<u64>) {
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (prompt, max_tokens) = prompt_of(&value);
    (line, tokenizer.count(&prompt).await, max_tokens)
}

struct Tally {
    preflight: Preflight,
    /// Whether the endpoint generates tokens (not embeddings).
    generates: bool,
}

impl Tally {
    fn add(&mut self, line: u64, count: Count, max_tokens: Option<u64>, tokenizer: &Tokenizer) {
        let report = &mut self.preflight.report;
        report.requests += 1;
        let prompt = match count {
            Count::Engine(n) => {
                report.counted_by_engine += 1;
                n
            }
            Count::Estimate(n) => {
                report.estimated += 1;
                n
            }
        };
        let asked = if self.generates { max_tokens } else { Some(0) };
        if let (Count::Engine(_), Some(limit)) = (count, tokenizer.context_length)
            && let Some(why) = too_long(prompt, asked, limit)
        {
            report.over_context += 1;
            self.preflight.rejected.insert(line, why);
            return;
        }
        report.input_tokens += prompt;
        report.without_max_tokens += u64::from(asked.is_none());
        let room = tokenizer.context_length.map(|l| l.saturating_sub(prompt));
        report.worst_case_output_tokens += asked.or(room).unwrap_or(0);
    }
}

/// Why a prompt of `prompt` tokens asking for `asked` more does not fit `limit`, if it does not.
fn too_long(prompt: u64, asked: Option<u64>, limit: u64) -> Option<String> {
    if prompt >= limit {
        return Some(format!(
            "the prompt is {prompt} tokens, which reaches the model's context length of {limit} \
             tokens; shorten it to fewer than {limit} tokens"
        ));
    }
    let asked = asked?;
    (prompt + asked > limit).then(|| {
        format!(
            "the prompt is {prompt} tokens and max_tokens asks for {asked} more, {} in all, \
             over the model's context length of {limit} tokens; lower max_tokens to at most {} \
             or shorten the prompt",
            prompt + asked,
            limit - prompt
        )
    })
}

impl PreflightReport {
    /// One line for the log: the totals, and the refused lines if any.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "pre-flight: {} requests, {} input tokens, at most {} output tokens ({})",
            self.requests, self.input_tokens, self.worst_case_output_tokens, self.source
        );
        if self.estimated > 0 && self.counted_by_engine > 0 {
            text.push_str(&format!("; {} lines estimated", self.estimated));
        }
        if self.over_context > 0 {
            let limit = self.context_length.unwrap_or(0);
            text.push_str(&format!(
                "; {} lines are over the context length of {limit} tokens \
                 (context_length_exceeded)",
                self.over_context
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_refused_at_the_context_length_or_over_it_with_its_max_tokens() {
        assert!(too_long(4095, None, 4096).is_none());
        assert!(
            too_long(4096, None, 4096)
                .expect("refused")
                .contains("reaches")
        );
        assert!(too_long(4000, Some(96), 4096).is_none());
        let why = too_long(4000, Some(97), 4096).expect("refused");
        assert!(why.contains("at most 96"), "{why}");
    }
}

//! The validation pass: one streaming read of the whole input before any request is sent.
//!
//! It applies the per-line and file-wide rules from `batch_format`, finds duplicate `custom_id`s
//! with [`crate::input::dedupe`], and produces a [`Report`] plus the set of invalid line
//! numbers. The run's dispatch pass uses that set to skip (or report) exactly the lines this
//! pass rejected.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use batch_format::input::custom_id_of;
use batch_format::problem::sniff_encoding;
use batch_format::rules::Settled;
use batch_format::{LineRules, Problem, RulesConfig};
use serde::Serialize;

use crate::bitset::BitSet;
use crate::input::dedupe::DuplicateFinder;
use crate::input::line_models::LineModels;
use crate::input::reader::{Content, Line, LineReader};
use crate::input::{self, Blocks, Recording};
use crate::state::finished::IdDigest;

/// Default for `--max-line-bytes`: room for requests with inline images.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub rules: RulesConfig,
    pub max_line_bytes: usize,
    /// How many line errors the report lists in full; all are counted.
    pub max_listed_errors: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            rules: RulesConfig::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_listed_errors: 100,
        }
    }
}

/// One error, in the shape of OpenAI's `errors.data[]` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub line: Option<u64>,
    pub code: &'static str,
    pub param: Option<&'static str>,
    pub message: String,
}

impl LineError {
    pub fn new(line: Option<u64>, problem: &Problem) -> Self {
        Self {
            line,
            code: problem.code(),
            param: problem.param(),
            message: problem.to_string(),
        }
    }
}

/// Something tolerated but worth knowing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Warnings {
    /// The file starts with a UTF-8 byte-order mark (skipped).
    pub byte_order_mark: bool,
    /// Lines ending in CR LF (the CR is ignored), and the first of them.
    pub crlf_lines: u64,
    pub first_crlf_line: Option<u64>,
    /// The first invalid line with a CR inside it: the file probably has CR-only line endings.
    pub cr_only_line: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub valid: bool,
    pub bytes: u64,
    pub lines: u64,
    pub blank_lines: u64,
    /// Lines that are valid requests (what a run sends).
    pub requests: u64,
    pub invalid_lines: u64,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    /// With several models in one file (`--mixed-models`): the requests for each model.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, u64>,
    /// Every error code seen, with its count.
    pub errors_by_code: BTreeMap<&'static str, u64>,
    /// The first errors by line number (up to the configured number).
    pub errors: Vec<LineError>,
    /// Errors found but not listed in `errors`.
    pub errors_not_listed: u64,
    pub warnings: Warnings,
    /// The pre-flight count (`validate --engine-url`), when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::run::preflight::PreflightReport>,
}

impl Report {
    /// Adds a pre-flight count: its totals, and each line it refused as an error (listed up
    /// to `max_listed`, by line, with the errors already there).
    pub fn add_preflight(&mut self, counted: crate::run::preflight::Preflight, max_listed: usize) {
        let refused = counted.rejected.len() as u64;
        *self
            .errors_by_code
            .entry("context_length_exceeded")
            .or_default() += refused;
        let listed = self.errors.len() as u64;
        self.errors.extend(
            counted
                .rejected
                .into_iter()
                .map(|(line, message)| LineError {
                    line: Some(line),
                    code: "context_length_exceeded",
                    param: Some("body"),
                    message,
                }),
        );
        self.errors.sort_by_key(|e| e.line);
        self.errors.truncate(max_listed);
        self.errors_not_listed += (listed + refused).saturating_sub(self.errors.len() as u64);
        self.requests -= refused;
        self.invalid_lines += refused;
        self.valid &= refused == 0;
        self.preflight = Some(counted.report);
    }
}

/// The outcome of the pass: the report, and what the dispatch pass needs to agree with it.
pub struct Validation {
    pub report: Report,
    pub invalid: BitSet,
    pub settled: Option<Settled>,
    /// With several models in one file: each valid line's model, by its index in
    /// `settled.models`.
    pub line_models: Option<LineModels>,
    /// Size and content hash of the bytes validated, so a resumed job can tell whether the
    /// input changed.
    pub fingerprint: crate::input::InputFingerprint,
    /// The hash of each block, so the dispatch pass can check it reads the same bytes.
    pub blocks: Blocks,
    /// The `custom_id`s of the non-blank lines (none for a line without one), to recognise
    /// final files that already hold this input's results.
    pub ids: IdDigest,
    /// Where the validated bytes can be read again: the input itself, or the copy of a stream.
    pub source: PathBuf,
    /// The pre-flight count of the lines, when one was made (see `run::preflight`).
    pub preflight: Option<crate::run::preflight::Preflight>,
    /// A copy of a stream in the temporary directory lives as long as the validation.
    _temporary: Option<tempfile::TempPath>,
}

/// Where the input is, and where a stream is copied while it is validated.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub path: &'a Path,
    /// The copy of a stream (standard input, a pipe, a FIFO); `None`: a temporary file.
    pub copy_to: Option<&'a Path>,
    /// Set to stop the validation early ([`ValidateError::Stopped`]).
    pub cancel: Option<&'a AtomicBool>,
}

impl<'a> Source<'a> {
    pub fn file(path: &'a Path) -> Self {
        Self {
            path,
            copy_to: None,
            cancel: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A spill or copy in the temporary directory failed (not the input's fault).
    #[error(
        "cannot write a temporary file in {dir} ({source}); set TMPDIR to a writable \
         directory with free space"
    )]
    Temporary {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Copy(std::io::Error),
    #[error("stopped while validating")]
    Stopped,
}

impl ValidateError {
    fn temporary(source: std::io::Error) -> Self {
        Self::Temporary {
            dir: std::env::temp_dir().display().to_string(),
            source,
        }
    }
}

/// Collects errors, keeping only the first `max_listed` by line number.
struct ErrorList {
    max_listed: usize,
    listed: Vec<LineError>,
    total: u64,
    by_code: BTreeMap<&'static str, u64>,
}

impl ErrorList {
    fn push(&mut self, error: LineError) {
        self.total += 1;
        *self.by_code.entry(error.code).or_default() += 1;
        self.listed.push(error);
        if self.listed.len() >= self.max_listed.saturating_mul(2).max(16) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.listed.sort_by_key(|e| e.line);
        self.listed.truncate(self.max_listed);
    }
}

pub fn validate_file(path: &Path, options: &ValidateOptions) -> Result<Validation, ValidateError> {
    validate(Source::file(path), options)
}

/// Validates the input at `source`; a stream is copied so the run can read it again.
pub fn validate(
    source: Source<'_>,
    options: &ValidateOptions,
) -> Result<Validation, ValidateError> {
    let path = source.path;
    let read_error = |e: std::io::Error| {
        if input::CopyFailed::is(&e) {
            ValidateError::Copy(e)
        } else {
            ValidateError::Read {
                path: path.display().to_string(),
                source: e,
            }
        }
    };
    let opened = input::open(path).map_err(read_error)?;
    let (copy, temporary) = if opened.stream {
        let (file, at, temporary) = copy_target(source.copy_to)?;
        (Some((file, at)), temporary)
    } else {
        (None, None)
    };
    let read_from = copy
        .as_ref()
        .map_or_else(|| input::resolve(path).to_owned(), |(_, p)| p.clone());
    let mut reader = LineReader::new(Recording::new(opened.file, copy), options.max_line_bytes);
    if opened.stream {
        reader = reader.refuse_endless_lines();
    }
    let mut tally = Tally::new(options);
    while let Some(line) = reader.next_line().map_err(read_error)? {
        if source.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(ValidateError::Stopped);
        }
        tally.line(line, options)?;
    }
    tally.report.bytes = reader.bytes_read();
    let (blocks, fingerprint) = reader.into_inner().finish().map_err(ValidateError::Copy)?;
    let again = File::open(&read_from).map_err(read_error)?;
    tally
        .duplicates(again, options.max_line_bytes)
        .map_err(read_error)?;
    let (report, invalid, settled, line_models, ids) = tally.finish();
    Ok(Validation {
        report,
        invalid,
        settled,
        line_models,
        fingerprint,
        blocks,
        ids,
        source: read_from,
        preflight: None,
        _temporary: temporary,
    })
}

/// Where a stream's copy goes: the caller's path, or a temporary file that lives as long as the
/// validation.
fn copy_target(
    to: Option<&Path>,
) -> Result<(File, PathBuf, Option<tempfile::TempPath>), ValidateError> {
    let Some(to) = to else {
        let (file, at) = tempfile::NamedTempFile::new()
            .map_err(ValidateError::temporary)?
            .into_parts();
        return Ok((file, at.to_path_buf(), Some(at)));
    };
    let created = match to.parent() {
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| File::create(to)),
        None => File::create(to),
    };
    let file = created.map_err(|e| {
        ValidateError::Copy(std::io::Error::new(
            e.kind(),
            format!(
                "cannot create the copy of the input at {}: {e}",
                to.display()
            ),
        ))
    })?;
    Ok((file, to.to_owned(), None))
}

/// What the pass has learnt so far, line by line.
struct Tally {
    rules: LineRules,
    dupes: DuplicateFinder,
    invalid: BitSet,
    errors: ErrorList,
    report: Report,
    ids: IdDigest,
    /// With several models allowed.
    line_models: Option<LineModels>,
}

impl Tally {
    fn new(options: &ValidateOptions) -> Self {
        Self {
            rules: LineRules::new(options.rules.clone()),
            dupes: DuplicateFinder::new(),
            invalid: BitSet::default(),
            errors: ErrorList {
                max_listed: options.max_listed_errors,
                listed: Vec::new(),
                total: 0,
                by_code: BTreeMap::new(),
            },
            report: Report::default(),
            ids: IdDigest::default(),
            line_models: options
                .rules
                .mixed_models
                .as_ref()
                .map(|_| LineModels::default()),
        }
    }

    fn line(&mut self, line: Line<'_>, options: &ValidateOptions) -> Result<(), ValidateError> {
        let report = &mut self.report;
        report.lines = line.number;
        report.warnings.byte_order_mark |= line.bom;
        if line.crlf {
            report.warnings.crlf_lines += 1;
            report.warnings.first_crlf_line.get_or_insert(line.number);
        }
        if line.content.is_blank() {
            report.blank_lines += 1;
            return Ok(());
        }
        let problems = match line.content {
            Content::TooLong => {
                self.ids.add(None);
                vec![Problem::LineTooLong {
                    max_bytes: options.max_line_bytes,
                }]
            }
            Content::Text(text) => match self.rules.check(line.number, text) {
                Ok(request) => {
                    if let Some(models) = &mut self.line_models
                        && let Some(index) = self.rules.model_index(&request.model)
                    {
                        models.set(line.number, index);
                    }
                    self.ids.add(Some(&request.custom_id));
                    self.dupes
                        .push(&request.custom_id, line.number, line.offset)
                        .map_err(ValidateError::temporary)?;
                    report.requests += 1;
                    return Ok(());
                }
                Err(mut problems) => {
                    self.ids.add(custom_id_of(text).as_deref());
                    if text.contains(&b'\r') {
                        report.warnings.cr_only_line.get_or_insert(line.number);
                    }
                    if line.number == 1
                        && let Some(hint) = sniff_encoding(text)
                    {
                        problems = vec![hint];
                    }
                    problems
                }
            },
        };
        self.invalid.insert(line.number);
        report.invalid_lines += 1;
        for p in &problems {
            self.errors.push(LineError::new(Some(line.number), p));
        }
        Ok(())
    }

    /// The second look, at the lines whose `custom_id` an earlier line already used.
    fn duplicates(&mut self, again: File, max_line_bytes: usize) -> std::io::Result<()> {
        let dupes = std::mem::take(&mut self.dupes);
        dupes.finish(again, max_line_bytes, |d| {
            self.invalid.insert(d.line);
            if let Some(models) = &mut self.line_models {
                models.clear(d.line);
            }
            self.report.requests -= 1;
            self.report.invalid_lines += 1;
            self.errors.push(LineError::new(
                Some(d.line),
                &Problem::DuplicateCustomId {
                    custom_id: d.custom_id,
                    first_line: d.first_line,
                },
            ));
        })
    }

    fn finish(
        mut self,
    ) -> (
        Report,
        BitSet,
        Option<Settled>,
        Option<LineModels>,
        IdDigest,
    ) {
        let mut errors = self.errors;
        let report = &mut self.report;
        if report.lines == report.blank_lines {
            errors.push(LineError::new(None, &Problem::EmptyFile));
        }
        errors.trim();
        let settled = self.rules.settled_on().cloned();
        report.endpoint = settled.as_ref().map(|s| s.url.clone());
        report.model = settled.as_ref().map(|s| s.model.clone());
        if let (Some(models), Some(settled)) = (&self.line_models, &settled) {
            let counts = models.counts(settled.models.len());
            report.models = settled.models.iter().cloned().zip(counts).collect();
        }
        report.valid = errors.total == 0;
        report.errors_not_listed = errors.total - errors.listed.len() as u64;
        report.errors = errors.listed;
        report.errors_by_code = errors.by_code;
        (
            self.report,
            self.invalid,
            settled,
            self.line_models,
            self.ids,
        )
    }
}

impl Report {
    /// The human-readable report: each listed error on its own line, then a summary.
    pub fn render(&self, path: &str) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for e in &self.errors {
            let _ = match e.line {
                Some(line) => writeln!(out, "{path}:{line}: {} [{}]", e.message, e.code),
                None => writeln!(out, "{path}: {} [{}]", e.message, e.code),
            };
        }
        if self.errors_not_listed > 0 {
            let _ = writeln!(
                out,
                "... and {} more errors (raise --max-errors to list them)",
                self.errors_not_listed
            );
        }
        if let Some(preflight) = &self.preflight {
            let _ = writeln!(out, "{path}: {}", preflight.describe());
        }
        if self.warnings.byte_order_mark {
            let _ = writeln!(
                out,
                "{path}: warning: the file starts with a UTF-8 byte-order mark (ignored)"
            );
        }
        if let Some(first) = self.warnings.first_crlf_line {
            let _ = writeln!(
                out,
                "{path}:{first}: warning: {} lines end in CR LF (the CR is ignored)",
                self.warnings.crlf_lines
            );
        }
        if let Some(line) = self.warnings.cr_only_line {
            let _ = writeln!(
                out,
                "{path}:{line}: warning: the line holds a CR that does not end it: the file \
                 seems to use CR-only (classic Mac) line endings; convert them to LF, e.g. \
                 tr '\\r' '\\n' < in > out"
            );
        }
        let verdict = if self.valid { "valid" } else { "INVALID" };
        let _ = writeln!(
            out,
            "{path}: {verdict}: {} lines, {} requests, {} invalid lines, {} blank lines, {} bytes",
            self.lines, self.requests, self.invalid_lines, self.blank_lines, self.bytes
        );
        if self.models.is_empty() {
            let _ = writeln!(
                out,
                "  endpoint: {}, model: {}",
                self.endpoint.as_deref().unwrap_or("-"),
                self.model.as_deref().unwrap_or("-")
            );
        } else {
            let models: Vec<String> = self
                .models
                .iter()
                .map(|(model, n)| format!("{model} ({n})"))
                .collect();
            let _ = writeln!(
                out,
                "  endpoint: {}, models: {}",
                self.endpoint.as_deref().unwrap_or("-"),
                models.join(", ")
            );
        }
        if !self.errors_by_code.is_empty() {
            let counts: Vec<String> = self
                .errors_by_code
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect();
            let _ = writeln!(out, "  errors by kind: {}", counts.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn validate(content: &[u8], options: &ValidateOptions) -> Validation {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        f.write_all(content).expect("write");
        validate_file(f.path(), options).expect("validate")
    }

    fn ok(id: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m","messages":[]}}}}"#
        )
    }

    #[test]
    fn a_good_file_is_valid() {
        let text = format!("{}\n\n{}\r\n", ok("a"), ok("b"));
        let v = validate(text.as_bytes(), &ValidateOptions::default());
        let again = validate(text.as_bytes(), &ValidateOptions::default());
        assert_eq!(v.fingerprint, again.fingerprint);
        let other = validate(
            text.replace('a', "c").as_bytes(),
            &ValidateOptions::default(),
        );
        assert_ne!(v.fingerprint, other.fingerprint);
        assert!(v.report.valid, "{:?}", v.report);
        assert_eq!(v.report.requests, 2);
        assert_eq!(v.report.blank_lines, 1);
        assert_eq!(v.report.warnings.first_crlf_line, Some(3));
        assert_eq!(v.report.model.as_deref(), Some("m"));
    }

    #[test]
    fn errors_are_listed_by_line_and_capped() {
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&ok(&format!("dup-{}", i % 5)));
            text.push('\n');
        }
        text.push_str("not json\n");
        let options = ValidateOptions {
            max_listed_errors: 3,
            ..Default::default()
        };
        let v = validate(text.as_bytes(), &options);
        assert!(!v.report.valid);
        assert_eq!(v.report.requests, 5);
        assert_eq!(v.report.invalid_lines, 46);
        let lines: Vec<_> = v.report.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(6), Some(7), Some(8)]);
        assert_eq!(v.report.errors_not_listed, 43);
        assert_eq!(v.report.errors_by_code["duplicate_custom_id"], 45);
        assert!(v.invalid.contains(51) && v.invalid.contains(6) && !v.invalid.contains(5));
    }

    #[test]
    fn an_empty_file_is_invalid() {
        let v = validate(b"\n  \n", &ValidateOptions::default());
        assert!(!v.report.valid);
        assert_eq!(v.report.errors[0].code, "empty_file");
    }
}

/// Random and mutated input: never a panic, and every non-blank line is either a request or
/// has an error naming it.
#[cfg(test)]
mod properties {
    use std::collections::BTreeSet;
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"{"custom_id":"id-0","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi \u00e9"}]}}"#;

    /// A valid line with random byte edits, or random bytes, or a valid line with a new id.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
        prop_oneof![
            (0..1000u32).prop_map(|n| VALID.replace("id-0", &format!("id-{n}")).into_bytes()),
            prop::collection::vec(edit, 1..6).prop_map(|edits| {
                let mut bytes = VALID.as_bytes().to_vec();
                for (at, byte, op) in edits {
                    let i = at.index(bytes.len().max(1));
                    match op {
                        0 if i < bytes.len() => bytes[i] = byte,
                        1 => bytes.insert(i.min(bytes.len()), byte),
                        _ if i < bytes.len() => {
                            bytes.remove(i);
                        }
                        _ => {}
                    }
                }
                bytes.retain(|&b| b != b'\n');
                bytes
            }),
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|mut b| {
                b.retain(|&c| c != b'\n');
                b
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn every_line_is_a_request_or_a_numbered_error(
            lines in prop::collection::vec(line(), 0..40),
            crlf in any::<bool>(),
            max_line_bytes in prop_oneof![Just(1usize << 20), 16usize..400],
        ) {
            let ending: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut f = tempfile::NamedTempFile::new().expect("temp");
            for l in &lines {
                f.write_all(l).expect("write");
                f.write_all(ending).expect("write");
            }
            let options = ValidateOptions {
                max_line_bytes,
                max_listed_errors: 10_000,
                ..Default::default()
            };
            let v = validate_file(f.path(), &options).expect("validate");
            let r = &v.report;
            prop_assert_eq!(r.lines, lines.len() as u64);
            prop_assert_eq!(r.requests + r.invalid_lines + r.blank_lines, r.lines);
            let error_lines: BTreeSet<u64> = r.errors.iter().filter_map(|e| e.line).collect();
            for n in 1..=r.lines {
                let errored = error_lines.contains(&n);
                prop_assert_eq!(errored, v.invalid.contains(n), "line {}", n);
            }
            prop_assert_eq!(error_lines.len() as u64, r.invalid_lines);
            prop_assert_eq!(r.valid, r.errors.is_empty());
            for e in &r.errors {
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}

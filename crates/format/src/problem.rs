//! What can be wrong with an input line, and how each problem is reported.
//!
//! Codes follow the ones OpenAI reports in a failed batch's `errors.data` where one exists
//! (`invalid_json_line`, `duplicate_custom_id`, `url_mismatch`, `model_mismatch`, `empty_file`);
//! the rest are named in the same style. Every message names the field and says what would fix it.

use std::fmt;

/// One problem found on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The line is not valid UTF-8.
    InvalidUtf8 { byte_offset: usize },
    /// The line is longer than the configured maximum; its content was not read.
    LineTooLong { max_bytes: usize },
    /// The line is not parseable JSON.
    InvalidJson { detail: String },
    /// The line is JSON but not an object.
    NotAnObject,
    /// A required field is absent (or `null`).
    MissingField { field: &'static str },
    /// A field has the wrong JSON type.
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// `custom_id` is the empty string.
    EmptyCustomId,
    /// `method` is not `POST`.
    InvalidMethod { found: String },
    /// `url` is not an endpoint the runner accepts.
    UnsupportedUrl { found: String },
    /// `url` differs from the one the file's first valid line set.
    UrlMismatch {
        found: String,
        expected: String,
        first_line: u64,
    },
    /// `body.model` differs from the one the file's first valid line set.
    ModelMismatch {
        found: String,
        expected: String,
        first_line: u64,
    },
    /// With several models in one file: no engine is routed for `body.model` (no
    /// `--model-engine` entry for it or its base model, and no default engine).
    ModelNotServed { found: String, routed: Vec<String> },
    /// With several models in one file: more distinct models than one job routes.
    TooManyModels { found: String, max: usize },
    /// A field holds a value its endpoint cannot take.
    InvalidValue { field: &'static str, why: String },
    /// `body.stream` is `true`; a batch cannot stream.
    StreamNotSupported,
    /// The same `custom_id` appeared on an earlier line.
    DuplicateCustomId { custom_id: String, first_line: u64 },
    /// The file has no request at all.
    EmptyFile,
    /// A string field holds an escape that is not Unicode (a lone surrogate such as `\ud800`).
    UndecodableString { field: &'static str, detail: String },
    /// The file is not UTF-8 JSONL at all: compressed, or in another encoding.
    NotJsonl {
        looks: &'static str,
        fix: &'static str,
    },
}

impl Problem {
    /// The machine-readable code, as in OpenAI's `errors.data[].code`.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::InvalidUtf8 { .. } => "invalid_utf8",
            Problem::LineTooLong { .. } => "line_too_long",
            Problem::InvalidJson { .. } => "invalid_json_line",
            Problem::NotAnObject => "not_an_object",
            Problem::MissingField { .. } => "missing_required_field",
            Problem::WrongType { .. } => "invalid_field_type",
            Problem::EmptyCustomId => "empty_custom_id",
            Problem::InvalidMethod { .. } => "invalid_method",
            Problem::UnsupportedUrl { .. } => "unsupported_url",
            Problem::UrlMismatch { .. } => "url_mismatch",
            Problem::ModelMismatch { .. } => "model_mismatch",
            Problem::ModelNotServed { .. } => "model_not_served",
            Problem::TooManyModels { .. } => "too_many_models",
            Problem::InvalidValue { .. } => "invalid_value",
            Problem::StreamNotSupported => "stream_not_supported",
            Problem::DuplicateCustomId { .. } => "duplicate_custom_id",
            Problem::EmptyFile => "empty_file",
            Problem::UndecodableString { .. } => "invalid_field_type",
            Problem::NotJsonl { .. } => "invalid_file_encoding",
        }
    }

    /// The field the problem is about, as OpenAI's `errors.data[].param`.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Problem::MissingField { field }
            | Problem::WrongType { field, .. }
            | Problem::InvalidValue { field, .. }
            | Problem::UndecodableString { field, .. } => Some(field),
            Problem::EmptyCustomId | Problem::DuplicateCustomId { .. } => Some("custom_id"),
            Problem::InvalidMethod { .. } => Some("method"),
            Problem::UnsupportedUrl { .. } | Problem::UrlMismatch { .. } => Some("url"),
            Problem::ModelMismatch { .. }
            | Problem::ModelNotServed { .. }
            | Problem::TooManyModels { .. } => Some("body.model"),
            Problem::StreamNotSupported => Some("body.stream"),
            Problem::InvalidUtf8 { .. }
            | Problem::LineTooLong { .. }
            | Problem::InvalidJson { .. }
            | Problem::NotAnObject
            | Problem::NotJsonl { .. }
            | Problem::EmptyFile => None,
        }
    }

    /// Every code, for summaries that list counts by kind in a stable order.
    pub const ALL_CODES: [&'static str; 18] = [
        "invalid_file_encoding",
        "invalid_utf8",
        "line_too_long",
        "invalid_json_line",
        "not_an_object",
        "missing_required_field",
        "invalid_field_type",
        "empty_custom_id",
        "invalid_method",
        "unsupported_url",
        "url_mismatch",
        "model_mismatch",
        "model_not_served",
        "too_many_models",
        "invalid_value",
        "stream_not_supported",
        "duplicate_custom_id",
        "empty_file",
    ];
}

/// Recognises a file's first bytes as something other than UTF-8 text: compressed, or UTF-16
/// / UTF-32 (with or without a byte-order mark), so the report can say what to do about it.
pub fn sniff_encoding(first: &[u8]) -> Option<Problem> {
    const DECOMPRESS: &str = "decompress it first";
    const RECODE: &str = "convert it to UTF-8 first (e.g. iconv -t UTF-8)";
    let (looks, fix) = match first {
        [0x1f, 0x8b, ..] => ("gzip-compressed", "decompress it first (gunzip)"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ("zstd-compressed", DECOMPRESS),
        [b'B', b'Z', b'h', ..] => ("bzip2-compressed", DECOMPRESS),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => ("xz-compressed", DECOMPRESS),
        [b'P', b'K', 3, 4, ..] => ("like a zip archive", "extract the .jsonl file first"),
        [0xff, 0xfe, 0, 0, ..] | [0, 0, 0xfe, 0xff, ..] => ("UTF-32 encoded", RECODE),
        [0, 0, 0, c, ..] | [c, 0, 0, 0, ..] if *c != 0 => ("UTF-32 encoded", RECODE),
        [0xff, 0xfe, ..] | [0xfe, 0xff, ..] => ("UTF-16 encoded", RECODE),
        [0, c, ..] | [c, 0, ..] if *c != 0 => ("UTF-16 encoded", RECODE),
        _ => return None,
    };
    Some(Problem::NotJsonl { looks, fix })
}

impl fmt::Display for Problem {
    /// A message that says what is wrong and what would fix it. (One arm per problem, so every
    /// message can be read and compared in one place; hence its length.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::InvalidUtf8 { byte_offset } => write!(
                f,
                "the line is not valid UTF-8 (bad byte at offset {byte_offset} in the line); \
                 re-encode the file as UTF-8"
            ),
            Problem::LineTooLong { max_bytes } => write!(
                f,
                "the line is longer than {max_bytes} bytes; shorten the request or raise \
                 --max-line-bytes"
            ),
            Problem::InvalidJson { detail } => write!(
                f,
                "this line is not parseable as valid JSON ({detail}); each line must be one \
                 complete JSON object"
            ),
            Problem::NotAnObject => write!(
                f,
                "the line is JSON but not an object; each line must be an object with \
                 custom_id, method, url and body"
            ),
            Problem::MissingField { field } => {
                write!(f, "required field `{field}` is missing; add it")?;
                match *field {
                    "custom_id" => write!(f, " with a unique string id for this request"),
                    "method" => write!(f, " as \"method\": \"POST\""),
                    "url" => write!(f, " as the endpoint path, e.g. \"/v1/chat/completions\""),
                    "body" => write!(f, " as the JSON object the endpoint takes"),
                    "body.model" => write!(f, " as the model name inside body"),
                    _ => Ok(()),
                }
            }
            Problem::WrongType { field, expected } => {
                write!(f, "field `{field}` must be {expected}")
            }
            Problem::InvalidValue { field, why } => write!(f, "field `{field}`: {why}"),
            Problem::EmptyCustomId => {
                write!(
                    f,
                    "`custom_id` is empty; give each request a non-empty unique id"
                )
            }
            Problem::InvalidMethod { found } => {
                write!(f, "`method` is {found:?}; only \"POST\" is supported")
            }
            Problem::UnsupportedUrl { found } => {
                let supported = crate::SUPPORTED_URLS.join(", ");
                match crate::rules::endpoint_path(found) {
                    _ if found.is_empty() => {
                        write!(f, "`url` is empty; use one of {supported}")
                    }
                    Ok(_) => write!(
                        f,
                        "`url` {found:?} is not a supported endpoint; use one of {supported} (or \
                         allow it with --allow-url {found})"
                    ),
                    Err(_) => write!(
                        f,
                        "`url` {found:?} is not an endpoint path; use one of {supported}"
                    ),
                }
            }
            Problem::UrlMismatch {
                found,
                expected,
                first_line,
            } => write!(
                f,
                "`url` is {found:?} but line {first_line} set {expected:?}; every line of a \
                 batch must use the same endpoint (split the file by endpoint)"
            ),
            Problem::ModelMismatch {
                found,
                expected,
                first_line,
            } => write!(
                f,
                "`body.model` is {found:?} but line {first_line} set {expected:?}; every line \
                 of a batch must use the same model (split the file by model, or run it with \
                 --mixed-models)"
            ),
            Problem::ModelNotServed { found, routed } if routed.is_empty() => write!(
                f,
                "no engine serves the model {found:?}: give one with --model-engine \
                 '{found}=URL', or a default --engine-url"
            ),
            Problem::ModelNotServed { found, routed } => write!(
                f,
                "no engine serves the model {found:?} (--model-engine routes {}): add \
                 --model-engine '{found}=URL', or a default --engine-url",
                routed.join(", ")
            ),
            Problem::TooManyModels { found, max } => write!(
                f,
                "the model {found:?} is past the {max} different models one batch may use; \
                 split the file"
            ),
            Problem::StreamNotSupported => write!(
                f,
                "`body.stream` is true; batch requests cannot stream, remove it or set it to \
                 false"
            ),
            Problem::DuplicateCustomId {
                custom_id,
                first_line,
            } => write!(
                f,
                "the custom_id {custom_id:?} is a duplicate of line {first_line}; custom_id must \
                 be unique for each request in a batch"
            ),
            Problem::EmptyFile => write!(
                f,
                "the file has no requests; a batch file needs at least one JSON line"
            ),
            Problem::UndecodableString { field, detail } => write!(
                f,
                "field `{field}` is a string that cannot be decoded ({detail}): an escape such \
                 as \\ud800 that is not a whole Unicode character; use valid UTF-8 or paired \
                 surrogate escapes"
            ),
            Problem::NotJsonl { looks, fix } => {
                write!(f, "the file looks {looks}, not UTF-8 JSON lines; {fix}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes_lists_each_code_once() {
        let mut codes = Problem::ALL_CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Problem::ALL_CODES.len());
        assert!(codes.contains(&Problem::StreamNotSupported.code()));
    }

    #[test]
    fn messages_name_the_field_and_the_fix() {
        let p = Problem::MissingField { field: "method" };
        assert_eq!(p.param(), Some("method"));
        assert!(p.to_string().contains("\"POST\""));
        let p = Problem::UnsupportedUrl {
            found: "/v1/foo".into(),
        };
        assert!(p.to_string().contains("--allow-url /v1/foo"));
        for found in ["", "http://x/v1/foo", "/v1/../x"] {
            let p = Problem::UnsupportedUrl {
                found: found.into(),
            };
            assert!(!p.to_string().contains("--allow-url"), "{p}");
        }
    }

    #[test]
    fn encodings_and_compression_are_recognised() {
        let looks = |bytes: &[u8]| sniff_encoding(bytes).map(|p| p.to_string());
        assert!(looks(b"\x1f\x8b\x08\x00").is_some_and(|m| m.contains("gzip")));
        assert!(looks(b"\xff\xfe{\x00").is_some_and(|m| m.contains("UTF-16")));
        assert!(looks(b"{\x00\"\x00").is_some_and(|m| m.contains("UTF-16")));
        assert!(looks(b"\xff\xfe\x00\x00").is_some_and(|m| m.contains("UTF-32")));
        assert!(looks(b"\x00\x00\x00{").is_some_and(|m| m.contains("UTF-32")));
        assert!(looks(b"{\"custom_id\"").is_none());
        assert!(looks(b"").is_none());
    }
}

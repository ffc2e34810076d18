//! The file-wide rules: a supported endpoint, and one endpoint and one model per file.
//!
//! The first valid line fixes the endpoint and the model; every later line must match them.
//! Uniqueness of `custom_id` is also file-wide but needs memory proportional to the file, so it
//! lives with the I/O in the job crate (which spills to disk), not here.

use crate::Problem;
use crate::input::{Request, parse_line};

/// The endpoints a batch line may target unless more are allowed.
pub const SUPPORTED_URLS: [&str; 7] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/rerank",
    "/v1/score",
];

/// Checks an endpoint path given to accept besides the built-in ones (`--allow-url`): a
/// normalised absolute path such as `/v1/classify`. A URL, an empty path, `.` or `..`
/// segments, empty segments, a query or a fragment are refused, since the path is appended to
/// each engine's base URL and must not reach anywhere else.
pub fn endpoint_path(text: &str) -> Result<String, String> {
    let fix = "give a path such as /v1/classify";
    if text.contains("://") {
        return Err(format!(
            "{text:?} is a URL; give only its path (e.g. /v1/classify): engines come from \
             --engine-url"
        ));
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("{text:?} does not start with /; {fix}"));
    };
    if rest.is_empty() {
        return Err(format!("{text:?} is the root; {fix}"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\' | '%'))
    {
        return Err(format!("{text:?} contains {c:?}; {fix}"));
    }
    if rest
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "{text:?} is not a normalised path (an empty, . or .. segment); {fix}"
        ));
    }
    Ok(text.to_owned())
}

/// What the rules accept beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct RulesConfig {
    /// Extra endpoint paths accepted besides [`SUPPORTED_URLS`].
    pub extra_urls: Vec<String>,
}

/// The endpoint and model the file has settled on, and the line that set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub url: String,
    pub model: String,
    pub line: u64,
}

/// Checks lines in file order.
#[derive(Debug, Default)]
pub struct LineRules {
    config: RulesConfig,
    settled: Option<Settled>,
}

impl LineRules {
    pub fn new(config: RulesConfig) -> Self {
        Self {
            config,
            settled: None,
        }
    }

    /// Rules that start already settled, so a second pass over a file judges every line the same
    /// way the first pass did.
    pub fn settled(config: RulesConfig, settled: Option<Settled>) -> Self {
        Self { config, settled }
    }

    /// The endpoint and model fixed by the first valid line, if any line was valid.
    pub fn settled_on(&self) -> Option<&Settled> {
        self.settled.as_ref()
    }

    /// Checks line number `line_no` (1-based) whose bytes are `line`.
    pub fn check<'a>(&mut self, line_no: u64, line: &'a [u8]) -> Result<Request<'a>, Vec<Problem>> {
        let request = parse_line(line)?;
        if !self.url_supported(&request.url) {
            return Err(vec![Problem::UnsupportedUrl {
                found: request.url.into_owned(),
            }]);
        }
        let Some(settled) = &self.settled else {
            self.settled = Some(Settled {
                url: request.url.to_string(),
                model: request.model.to_string(),
                line: line_no,
            });
            return Ok(request);
        };
        let mut problems = Vec::new();
        if request.url != settled.url {
            problems.push(Problem::UrlMismatch {
                found: request.url.to_string(),
                expected: settled.url.clone(),
                first_line: settled.line,
            });
        }
        if request.model != settled.model {
            problems.push(Problem::ModelMismatch {
                found: request.model.to_string(),
                expected: settled.model.clone(),
                first_line: settled.line,
            });
        }
        if problems.is_empty() {
            Ok(request)
        } else {
            Err(problems)
        }
    }

    fn url_supported(&self, url: &str) -> bool {
        SUPPORTED_URLS.contains(&url) || self.config.extra_urls.iter().any(|u| u == url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, url: &str, model: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"{model}"}}}}"#
        )
    }

    #[test]
    fn first_valid_line_settles_url_and_model() {
        let mut rules = LineRules::new(RulesConfig::default());
        assert!(rules.check(1, b"garbage").is_err());
        assert!(
            rules
                .check(2, line("a", "/v1/embeddings", "e").as_bytes())
                .is_ok()
        );
        let err = rules
            .check(3, line("b", "/v1/completions", "f").as_bytes())
            .expect_err("mismatch");
        let codes: Vec<_> = err.iter().map(Problem::code).collect();
        assert_eq!(codes, vec!["url_mismatch", "model_mismatch"]);
        assert!(err[0].to_string().contains("line 2"));
        assert_eq!(rules.settled_on().map(|s| s.line), Some(2));
    }

    #[test]
    fn unknown_urls_need_to_be_allowed() {
        let l = line("a", "/v1/classify", "m");
        let mut rules = LineRules::new(RulesConfig::default());
        let err = rules.check(1, l.as_bytes()).expect_err("unsupported");
        assert_eq!(err[0].code(), "unsupported_url");
        let mut rules = LineRules::new(RulesConfig {
            extra_urls: vec!["/v1/classify".into()],
        });
        assert!(rules.check(1, l.as_bytes()).is_ok());
    }

    #[test]
    fn only_normalised_absolute_paths_are_accepted_as_endpoints() {
        assert_eq!(endpoint_path("/v1/classify").as_deref(), Ok("/v1/classify"));
        // Found by fuzzing (the harness's own check was wrong): a segment that merely holds
        // dots is an ordinary name.
        assert!(endpoint_path("/v1/minV1/{../adminadmin").is_ok());
        for bad in [
            "",
            "/",
            "v1/classify",
            "http://127.0.0.1:8000/v1/x",
            "/v1/../admin",
            "/v1/./x",
            "//evil/x",
            "/v1//x",
            "/v1/x/",
            "/v1/x?y=1",
            "/v1/x#f",
            "/v1/a b",
            "/v1/%2e%2e",
        ] {
            assert!(endpoint_path(bad).is_err(), "{bad:?}");
        }
    }
}

//! The file-wide rules: a supported endpoint, and one endpoint and one model per file.
//!
//! The first valid line fixes the endpoint and the model; every later line must match them.
//! With several models allowed (`--mixed-models`), only the endpoint is fixed: each line's model
//! must be one an engine is routed for, and the models seen are numbered in the order they first
//! appear, so the job can route and count each line by a small index.
//! Uniqueness of `custom_id` is also file-wide but needs memory proportional to the file, so it
//! lives with the I/O in the job crate (which spills to disk), not here.

use std::collections::{BTreeMap, HashMap};

use crate::Problem;
use crate::input::{Request, parse_line};

/// The most different models one file may use with several models allowed: each gets its own
/// engines' connections and limits.
pub const MAX_MODELS: usize = 256;

/// The endpoints a batch line may target unless more are allowed: the text ones, and the
/// image, video and audio ones ([`crate::endpoints::MEDIA_URLS`]).
pub const SUPPORTED_URLS: [&str; 13] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/rerank",
    "/v1/score",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
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

/// Reads `--model-engine` entries, `MODEL=URL[,URL…]` each, into the engines of each model; a
/// model named twice is an error (its engines belong in one entry).
pub fn model_engines(entries: &[String]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut engines = BTreeMap::new();
    for text in entries {
        let (model, urls) = text
            .split_once('=')
            .filter(|(m, u)| !m.trim().is_empty() && !u.trim().is_empty())
            .ok_or_else(|| {
                format!(
                    "--model-engine {text:?}: write MODEL=URL[,URL…], e.g. \
                     llama-3-8b=http://10.0.0.5:30000"
                )
            })?;
        let model = model.trim().to_owned();
        let urls = urls.split(',').map(|u| u.trim().to_owned()).collect();
        if engines.insert(model.clone(), urls).is_some() {
            return Err(format!(
                "--model-engine names {model:?} twice; give all its engines in one entry: \
                 {model}=URL,URL"
            ));
        }
    }
    Ok(engines)
}

/// What the rules accept beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct RulesConfig {
    /// Extra endpoint paths accepted besides [`SUPPORTED_URLS`].
    pub extra_urls: Vec<String>,
    /// Several models in one file (`--mixed-models`), and which have engines; `None`: one
    /// model per file.
    pub mixed_models: Option<ModelRoutes>,
}

/// Which engines serve which model when one file holds several.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelRoutes {
    /// The models with engines of their own (`--model-engine MODEL=URL[,URL…]`), and those
    /// engines' base URLs.
    pub engines: BTreeMap<String, Vec<String>>,
    /// A default engine (`--engine-url`) serves every other model.
    pub default: bool,
}

impl ModelRoutes {
    /// The engines of `model`: its own entry, or for a LoRA adapter written `base:adapter` its
    /// base's; `None`: the default engines (if any).
    pub fn engines_of(&self, model: &str) -> Option<&[String]> {
        let named = |m: &str| self.engines.get(m).map(Vec::as_slice);
        named(model).or_else(|| model.rsplit_once(':').and_then(|(base, _)| named(base)))
    }

    /// Whether some engine serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.default || self.engines_of(model).is_some()
    }
}

/// The endpoint and model the file has settled on, and the line that set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub url: String,
    pub model: String,
    pub line: u64,
    /// Every model of a valid line, in the order they first appear (just `model` unless the
    /// file may hold several).
    pub models: Vec<String>,
}

/// Checks lines in file order.
#[derive(Debug, Default)]
pub struct LineRules {
    config: RulesConfig,
    settled: Option<Settled>,
    /// The index of each model in `settled.models`.
    model_index: HashMap<String, u16>,
}

impl LineRules {
    pub fn new(config: RulesConfig) -> Self {
        Self::settled(config, None)
    }

    /// Rules that start already settled, so a second pass over a file judges every line the same
    /// way the first pass did.
    pub fn settled(config: RulesConfig, settled: Option<Settled>) -> Self {
        let model_index = settled
            .iter()
            .flat_map(|s| s.models.iter())
            .zip(0..)
            .map(|(m, i)| (m.clone(), i))
            .collect();
        Self {
            config,
            settled,
            model_index,
        }
    }

    /// The index of `model` among the file's models ([`Settled::models`]).
    pub fn model_index(&self, model: &str) -> Option<u16> {
        self.model_index.get(model).copied()
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
        let mut problems = crate::endpoints::check_body(&request.url, request.body);
        if let Some(routes) = &self.config.mixed_models
            && !routes.serves(&request.model)
        {
            problems.push(Problem::ModelNotServed {
                found: request.model.to_string(),
                routed: routes.engines.keys().cloned().collect(),
            });
        }
        let Some(settled) = &self.settled else {
            if !problems.is_empty() {
                return Err(problems);
            }
            self.settled = Some(Settled {
                url: request.url.to_string(),
                model: request.model.to_string(),
                line: line_no,
                models: Vec::new(),
            });
            self.add_model(&request.model);
            return Ok(request);
        };
        if request.url != settled.url {
            problems.push(Problem::UrlMismatch {
                found: request.url.to_string(),
                expected: settled.url.clone(),
                first_line: settled.line,
            });
        }
        if self.config.mixed_models.is_none() && request.model != settled.model {
            problems.push(Problem::ModelMismatch {
                found: request.model.to_string(),
                expected: settled.model.clone(),
                first_line: settled.line,
            });
        }
        // One model per file: the first line's is the only one (and a mismatch is a problem).
        if problems.is_empty()
            && self.config.mixed_models.is_some()
            && self.model_index(&request.model).is_none()
            && !self.add_model(&request.model)
        {
            problems.push(Problem::TooManyModels {
                found: request.model.to_string(),
                max: MAX_MODELS,
            });
        }
        if problems.is_empty() {
            Ok(request)
        } else {
            Err(problems)
        }
    }

    /// Numbers a model not seen before; false when the file already has [`MAX_MODELS`].
    fn add_model(&mut self, model: &str) -> bool {
        let Some(settled) = &mut self.settled else {
            return false;
        };
        if settled.models.len() >= MAX_MODELS {
            return false;
        }
        // Below MAX_MODELS, so it fits.
        let index = settled.models.len() as u16;
        settled.models.push(model.to_owned());
        self.model_index.insert(model.to_owned(), index);
        true
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
            ..RulesConfig::default()
        });
        assert!(rules.check(1, l.as_bytes()).is_ok());
    }

    #[test]
    fn mixed_models_are_numbered_and_routed_per_line() {
        let routes = ModelRoutes {
            engines: [("llama", "http://a:1"), ("qwen", "http://b:2")]
                .into_iter()
                .map(|(m, u)| (m.to_owned(), vec![u.to_owned()]))
                .collect(),
            default: false,
        };
        let config = RulesConfig {
            mixed_models: Some(routes.clone()),
            ..RulesConfig::default()
        };
        let mut rules = LineRules::new(config.clone());
        // The first line's model has no engine: it settles nothing.
        let err = rules
            .check(1, line("a", "/v1/chat/completions", "gpt").as_bytes())
            .expect_err("not served");
        assert_eq!(err[0].code(), "model_not_served");
        assert!(
            err[0].to_string().contains("--model-engine 'gpt=URL'"),
            "{}",
            err[0]
        );
        for (n, model) in [(2, "qwen"), (3, "llama:sql-adapter"), (4, "qwen")] {
            let l = line(&n.to_string(), "/v1/chat/completions", model);
            assert!(rules.check(n, l.as_bytes()).is_ok(), "{model}");
        }
        let err = rules
            .check(5, line("e", "/v1/embeddings", "other:x").as_bytes())
            .expect_err("two problems");
        let codes: Vec<_> = err.iter().map(Problem::code).collect();
        assert_eq!(codes, vec!["model_not_served", "url_mismatch"]);
        let settled = rules.settled_on().cloned().expect("settled");
        assert_eq!(settled.models, vec!["qwen", "llama:sql-adapter"]);
        assert_eq!(rules.model_index("llama:sql-adapter"), Some(1));
        let llama = Some(&["http://a:1".to_owned()][..]);
        assert_eq!(routes.engines_of("llama:sql-adapter"), llama);
        assert_eq!(routes.engines_of("llama"), llama);
        assert_eq!(routes.engines_of("mistral"), None);
        // A second pass starts with the same numbering.
        let again = LineRules::settled(config, Some(settled));
        assert_eq!(again.model_index("qwen"), Some(0));
        assert_eq!(again.model_index("llama:sql-adapter"), Some(1));
    }

    #[test]
    fn a_default_engine_serves_any_model_up_to_the_limit() {
        let mut rules = LineRules::new(RulesConfig {
            mixed_models: Some(ModelRoutes {
                engines: BTreeMap::new(),
                default: true,
            }),
            ..RulesConfig::default()
        });
        for n in 0..MAX_MODELS as u64 {
            let l = line(&n.to_string(), "/v1/embeddings", &format!("m{n}"));
            assert!(rules.check(n + 1, l.as_bytes()).is_ok());
        }
        let l = line("x", "/v1/embeddings", "one-too-many");
        let err = rules.check(999, l.as_bytes()).expect_err("too many");
        assert_eq!(err[0].code(), "too_many_models");
        let l = line("y", "/v1/embeddings", "m7");
        assert!(
            rules.check(1000, l.as_bytes()).is_ok(),
            "a known model still passes"
        );
    }

    #[test]
    fn model_engine_entries_map_models_to_engines() {
        let entries = [
            "m1=http://a:1, http://b:2".to_owned(),
            "m2 = http://c:3".to_owned(),
        ];
        let engines = model_engines(&entries).expect("accepted");
        assert_eq!(engines["m1"], ["http://a:1", "http://b:2"]);
        assert_eq!(engines["m2"], ["http://c:3"]);
        for bad in ["=http://x", "m", "m="] {
            let err = model_engines(&[bad.to_owned()]).expect_err(bad);
            assert!(err.contains("MODEL=URL"), "{err}");
        }
        let twice = ["m=http://a".to_owned(), "m=http://b".to_owned()];
        assert!(model_engines(&twice).expect_err("twice").contains("twice"));
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

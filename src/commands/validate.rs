//! `batch-runner validate INPUT`

use std::time::Duration;

use batch_job::{
    Concurrency, EngineOptions, RetryPolicy, ValidateError, ValidateOptions, preflight_input,
    validate_file,
};

use super::Exit;
use crate::cli::ValidateArgs;

pub fn run(args: ValidateArgs) -> Exit {
    let mut options = ValidateOptions::from(&args.rules);
    match args.rules.model_engines() {
        // Without engines named, any model passes; with some, only theirs.
        Ok(Some(by_model)) => {
            options.rules.mixed_models = Some(batch_format::ModelRoutes {
                default: by_model.is_empty(),
                engines: by_model,
            });
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    }
    let mut validation = match validate_file(&args.input, &options) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("{e}");
            if args.json {
                // Scripts reading stdout get a report whatever happened.
                let report = serde_json::json!({ "valid": false, "error": e.to_string() });
                println!("{report:#}");
            }
            return match e {
                ValidateError::Read { .. } => Exit::Invalid,
                _ => Exit::Runtime,
            };
        }
    };
    let mut report = std::mem::take(&mut validation.report);
    if let Some(url) = args.engine_url {
        let engine = engine_options(url, args.api_key);
        let counted =
            super::with_runtime(|rt| rt.block_on(preflight_input(&engine, &validation, &options)));
        match counted {
            Ok(Ok(counted)) => report.add_preflight(counted, options.max_listed_errors),
            Ok(Err(e)) => {
                tracing::error!("cannot make the pre-flight count: {e}");
                return Exit::Runtime;
            }
            Err(exit) => return exit,
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                tracing::error!("cannot encode the report: {e}");
                return Exit::Runtime;
            }
        }
    } else {
        eprint!("{}", report.render(&args.input.display().to_string()));
    }
    if report.valid {
        Exit::Success
    } else {
        Exit::Invalid
    }
}

/// The engine of `validate --engine-url`: only its tokenizer and model list are asked.
fn engine_options(url: String, api_key: Option<String>) -> EngineOptions {
    EngineOptions {
        urls: vec![url],
        api_key,
        headers: Vec::new(),
        request_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(10),
        retry: RetryPolicy::default(),
        priority: None,
        concurrency: Concurrency::Fixed(16),
        max_requests_per_second: None,
        max_tokens_per_minute: None,
    }
}

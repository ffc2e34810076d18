//! `batch-runner validate INPUT`

use batch_job::{ValidateError, ValidateOptions, validate_file};

use super::Exit;
use crate::cli::ValidateArgs;

pub fn run(args: ValidateArgs) -> Exit {
    let options = ValidateOptions::from(&args.rules);
    let validation = match validate_file(&args.input, &options) {
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
    let report = &validation.report;
    if args.json {
        match serde_json::to_string_pretty(report) {
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

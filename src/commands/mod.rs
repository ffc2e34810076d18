//! One module per subcommand; each returns the process exit code.

pub mod run;
pub mod sim;
pub mod validate;

/// The documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded (for `validate`: the file is valid).
    Success = 0,
    /// The job finished but some requests failed.
    SomeFailed = 1,
    /// Invalid input or usage.
    Invalid = 2,
    /// Runtime failure: no engine reachable, a file that cannot be written, ...
    Runtime = 3,
}

impl From<&crate::cli::RulesArgs> for batch_job::validate::ValidateOptions {
    fn from(args: &crate::cli::RulesArgs) -> Self {
        Self {
            rules: batch_format::RulesConfig {
                extra_urls: args.allow_url.clone(),
            },
            max_line_bytes: args.max_line_bytes,
            max_listed_errors: args.max_errors,
        }
    }
}

/// A multi-threaded runtime for the async subcommands.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

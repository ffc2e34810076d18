//! One module per subcommand; each returns the process exit code.

pub mod guard;
pub mod run;
mod run_options;
pub mod serve;
pub mod sim;
pub mod status;
pub mod upload;
pub mod validate;
pub mod webhooks;
pub mod worker;

use std::collections::BTreeMap;

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
    /// The completion window ended before every line ran.
    Expired = 4,
    /// The job was cancelled.
    Cancelled = 5,
    /// Stopped by a signal; running the same command again resumes (EX_TEMPFAIL).
    Interrupted = batch_job::RESUMABLE_EXIT as isize,
}

impl Exit {
    pub const ALL: [Exit; 7] = [
        Exit::Success,
        Exit::SomeFailed,
        Exit::Invalid,
        Exit::Runtime,
        Exit::Expired,
        Exit::Cancelled,
        Exit::Interrupted,
    ];

    /// What the code tells a caller, in a few words (README's table says more).
    fn summary(self) -> &'static str {
        match self {
            Exit::Success => "all requests succeeded",
            Exit::SomeFailed => "finished, but some requests failed (see the error file)",
            Exit::Invalid => "invalid input or usage",
            Exit::Runtime => {
                "runtime failure (e.g. no engine reachable, a file could not be written)"
            }
            Exit::Expired => "the completion window ended (unfinished lines are batch_expired)",
            Exit::Cancelled => "cancelled",
            Exit::Interrupted => "interrupted, resumable (run the same command again)",
        }
    }

    /// The exit codes for `--help`, from this one definition.
    pub fn help_text() -> String {
        let codes: Vec<String> = Self::ALL
            .iter()
            .map(|e| format!("{} {}", *e as u8, e.summary()))
            .collect();
        format!("Exit codes: {}.", codes.join("; "))
    }
}

impl From<&crate::cli::RulesArgs> for batch_job::ValidateOptions {
    fn from(args: &crate::cli::RulesArgs) -> Self {
        Self {
            rules: batch_format::RulesConfig {
                extra_urls: args.allow_url.clone(),
                mixed_models: None,
            },
            max_line_bytes: args.max_line_bytes,
            max_listed_errors: args.max_errors,
        }
    }
}

impl crate::cli::RulesArgs {
    /// `--model-engine`'s engines by model, when the file may hold several models.
    pub fn model_engines(&self) -> Result<Option<BTreeMap<String, Vec<String>>>, String> {
        if !self.mixed_models {
            return Ok(None);
        }
        batch_format::rules::model_engines(&self.model_engines).map(Some)
    }
}

/// A multi-threaded runtime for the async subcommands.
/// Hands `f` a new runtime; one that cannot start is logged and ends the command.
pub fn with_runtime<T>(f: impl FnOnce(tokio::runtime::Runtime) -> T) -> Result<T, Exit> {
    match runtime() {
        Ok(rt) => Ok(f(rt)),
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            Err(Exit::Runtime)
        }
    }
}

pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Ctrl-C and SIGTERM, one after another.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Must be called inside the runtime.
    pub fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        let term = async {
            match &mut self.term {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = term => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    /// README's table of exit codes has a row for each code and no other.
    #[test]
    fn the_readme_lists_exactly_the_exit_codes() {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("## Exit codes")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has an exit code section");
        let listed: Vec<u8> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
            .collect();
        let defined: Vec<u8> = Exit::ALL.iter().map(|e| *e as u8).collect();
        assert_eq!(listed, defined);
        let help = Exit::help_text();
        assert!(help.contains("75 interrupted, resumable"), "{help}");
    }
}

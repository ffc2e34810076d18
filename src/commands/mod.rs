//! One module per subcommand; each returns the process exit code.

pub mod guard;
pub mod run;
mod run_options;
pub mod serve;
pub mod sim;
pub mod status;
pub mod upload;
pub mod validate;
pub mod worker;

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
    Interrupted = 75,
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

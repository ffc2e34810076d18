//! Webhooks for batch events (`batch.completed`, `batch.failed`, `batch.expired`,
//! `batch.cancelled`), signed as OpenAI signs them.
//!
//! - Where: each owner's endpoint and secret come from `--webhook-file` (lines `OWNER URL
//!   SECRET`; URL `-` for an owner who only names URLs per batch), re-read on SIGHUP. A batch
//!   may name its own URL in `x_batch_runner.webhook_url` of its create request; it is signed
//!   with its owner's secret.
//! - When: the event is written in the transaction that ends the batch (the outbox in the
//!   store), then delivered by [`deliver::run`] in any replica, retried with backoff for a day.
//! - Where not: hosts that resolve to loopback, private or link-local addresses are refused
//!   unless `--webhook-allow-private` ([`target`]); redirects are never followed.

pub mod deliver;
pub mod target;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use batch_job::Secret;

/// One owner's webhook destination.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// None: the owner receives events only for batches that name a URL.
    pub url: Option<String>,
    pub secret: Secret,
}

/// The webhook settings of a service.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub file: Option<PathBuf>,
    pub allow_private: bool,
    /// The wait before the first retry; each later one waits twice the one before (at most an
    /// hour), for a day.
    pub first_retry: std::time::Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            file: None,
            allow_private: false,
            first_retry: std::time::Duration::from_secs(5),
        }
    }
}

/// Every owner's endpoint, shared by the API (checking per-batch URLs) and the deliverer, and
/// replaced as a whole when the file is read again.
#[derive(Debug, Clone)]
pub struct Endpoints {
    config: WebhookConfig,
    by_owner: Arc<RwLock<HashMap<String, Endpoint>>>,
}

impl Endpoints {
    /// Reads `config.file` (none: no endpoints).
    pub fn load(config: WebhookConfig) -> Result<Self, String> {
        let by_owner = match &config.file {
            Some(path) => read_file(path)?,
            None => HashMap::new(),
        };
        Ok(Self {
            config,
            by_owner: Arc::new(RwLock::new(by_owner)),
        })
    }

    /// Reads the file again; a file that does not parse keeps the endpoints in force.
    pub fn reload(&self) {
        let Some(path) = &self.config.file else {
            return;
        };
        match read_file(path) {
            Ok(fresh) => {
                let n = fresh.len();
                *self.by_owner.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::info!(
                    "webhook endpoints read again from {}: {n} owners",
                    path.display()
                );
            }
            Err(e) => tracing::error!("{e}; the webhook endpoints in force are kept"),
        }
    }

    pub fn of(&self, owner: &str) -> Option<Endpoint> {
        let map = self.by_owner.read().unwrap_or_else(|e| e.into_inner());
        map.get(owner).cloned()
    }

    pub fn allow_private(&self) -> bool {
        self.config.allow_private
    }

    pub fn first_retry(&self) -> std::time::Duration {
        self.config.first_retry
    }
}

/// Parses a webhook file: `OWNER URL SECRET` per line, `#` comments, blank lines ignored.
fn read_file(path: &Path) -> Result<HashMap<String, Endpoint>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the webhook file {}: {e}", path.display()))?;
    let mut by_owner = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [owner, url, secret] = fields[..] else {
            return Err(format!(
                "{}: expected OWNER URL SECRET (URL - for none), found {} fields",
                at(),
                fields.len()
            ));
        };
        let secret = Secret::parse(secret).map_err(|e| format!("{}: {e}", at()))?;
        let url = match url {
            "-" => None,
            url => Some(
                target::parse(url)
                    .map_err(|e| format!("{}: {e}", at()))?
                    .to_string(),
            ),
        };
        if by_owner
            .insert(owner.to_owned(), Endpoint { url, secret })
            .is_some()
        {
            return Err(format!("{}: owner {owner} is listed twice", at()));
        }
    }
    Ok(by_owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_names_the_line_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hooks");
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        std::fs::write(
            &path,
            format!("# owner url secret\nalice https://hooks.example/a {secret}\nbob - {secret}\n"),
        )
        .expect("write");
        let config = WebhookConfig {
            file: Some(path.clone()),
            ..WebhookConfig::default()
        };
        let endpoints = Endpoints::load(config).expect("load");
        let alice = endpoints.of("alice").expect("alice");
        assert_eq!(alice.url.as_deref(), Some("https://hooks.example/a"));
        assert!(endpoints.of("bob").expect("bob").url.is_none());
        assert!(endpoints.of("carol").is_none());
        for (bad, says) in [
            (
                "alice https://x.example\n",
                "line 1: expected OWNER URL SECRET",
            ),
            (
                "alice https://x.example nope\n",
                "line 1: a webhook secret is written",
            ),
            ("alice ftp://x.example whsec_AAAA\n", "line 1: "),
            (
                &format!("a - {secret}\na - {secret}\n") as &str,
                "line 2: owner a is listed twice",
            ),
        ] {
            std::fs::write(&path, bad).expect("write");
            let e = read_file(&path).expect_err(bad);
            assert!(e.contains(says), "{e}");
            // A bad file read again keeps the endpoints in force.
            endpoints.reload();
            assert!(endpoints.of("alice").is_some());
        }
    }
}

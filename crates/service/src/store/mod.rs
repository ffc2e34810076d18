//! The metadata store: files, batches, and the leases that give one worker at a time a batch.
//!
//! One implementation over sqlx's `Any` driver: SQLite (a file under the data directory, WAL
//! mode, the zero-set-up default) or PostgreSQL, chosen by the URL. Timestamps are Unix seconds
//! (lease times milliseconds) in BIGINT columns, JSON is TEXT, so the SQL is the same for both.
//!
//! Every write a worker makes names the fence it was given when its batch was claimed; a worker
//! whose lease was taken over matches no row and learns it has lost the batch.

mod batches;
mod files;
mod leases;
mod planning;
mod schema;
mod webhooks;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

pub use crate::status::{BatchStatus, StatusTimes};
pub use batches::Idempotent;
pub use planning::{Throughput, UsageRow, WorkAhead};
pub use webhooks::{RETRY_FOR_MS, Recorded, WebhookEvent};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot open the database {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FileRow {
    pub id: String,
    pub owner: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// The name of the file's content in the blob store.
    pub blob: String,
}

#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct BatchRow {
    pub id: String,
    pub owner: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub input_blob: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub created_at: i64,
    pub expires_at: i64,
    #[sqlx(flatten)]
    pub times: StatusTimes,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub model: Option<String>,
    pub metadata: Option<String>,
    pub errors: Option<String>,
    pub output_expires_seconds: Option<i64>,
    pub progress: Option<String>,
    pub fence: i64,
    pub crashes: i64,
    pub last_error: Option<String>,
    /// The batch's own webhook URL (an extension of the create request).
    pub webhook_url: Option<String>,
    /// Its requests, estimated from its file at create (`total` is exact once validated).
    pub estimated_lines: i64,
    /// Its tokens: estimated from its file's size at create; with a pre-flight count, its
    /// prompt tokens plus the most its requests may generate.
    pub estimated_tokens: i64,
    /// 1 when the create request asked for a pre-flight count.
    pub preflight: i64,
    /// What the pre-flight count found (JSON), once validation made it.
    pub preflight_report: Option<String>,
    /// 1 when the create request let the file hold several models (`model` is then its first
    /// line's, for planning and pools).
    pub mixed_models: i64,
}

impl FileRow {
    /// A file a batch produced (purpose `batch_output`), made now, kept as long as the batch's
    /// `output_expires_after` says; its content is the blob named by its id.
    pub fn batch_output(batch: &BatchRow, id: String, filename: String, bytes: u64) -> Self {
        let created_at = now_secs();
        Self {
            blob: id.clone(),
            id,
            owner: batch.owner.clone(),
            filename,
            purpose: "batch_output".into(),
            bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            created_at,
            expires_at: batch.output_expires_seconds.map(|s| created_at + s),
        }
    }
}

impl BatchRow {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// Which of an owner's batches a list shows (every one by default).
#[derive(Debug, Clone, Default)]
pub struct BatchFilter<'a> {
    /// Only batches older than this id (the page before was up to it).
    pub after: Option<&'a str>,
    /// Only batches in one of these statuses; empty: any.
    pub statuses: Vec<BatchStatus>,
    /// Only batches created at or after / before these Unix seconds.
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
}

/// Counters a worker reports while it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub completed: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Of the input tokens, those read from the engine's prefix cache.
    pub cached_tokens: i64,
    /// Of the output tokens, those spent reasoning.
    pub reasoning_tokens: i64,
}

/// How a worker ends its batch: the terminal status and the result files it created.
#[derive(Debug, Clone)]
pub struct Finish {
    pub status: BatchStatus,
    /// The batch's request count, when the worker learned it only now (a batch cancelled
    /// before it ran); `None` keeps the one validation recorded.
    pub total: Option<i64>,
    pub counts: Counts,
    pub progress: String,
    pub output: Option<FileRow>,
    pub errors: Option<FileRow>,
}

/// A batch waiting for a worker, as the scheduler chooses among them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Claimable {
    pub id: String,
    pub fence: i64,
    pub owner: String,
    /// Unix seconds: the end of its completion window.
    pub expires_at: i64,
}

/// Why a claimed batch is no longer the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLost;

const FILE_COLUMNS: &str = "id, owner, filename, purpose, bytes, created_at, expires_at, blob";
const BATCH_COLUMNS: &str = "id, owner, endpoint, input_file_id, input_blob, completion_window, \
    status, created_at, expires_at, in_progress_at, finalizing_at, completed_at, failed_at, \
    expired_at, cancelling_at, cancelled_at, output_file_id, error_file_id, total, completed, \
    failed, input_tokens, cached_tokens, output_tokens, reasoning_tokens, model, metadata, errors, \
    output_expires_seconds, progress, fence, crashes, last_error, webhook_url, estimated_lines, \
    estimated_tokens, preflight, preflight_report, mixed_models";

/// Builds a statement from pieces known when the program is compiled (column lists, fixed
/// clauses); never from request data, which is always bound.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH`, `postgres://…`); with `migrate`, brings the schema up
    /// to date (the service does; workers only connect).
    pub async fn open(url: &str, migrate: bool) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url_text = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Readers never wait for the writer; writers from other processes (the
                        // workers) wait their turn instead of failing.
                        sqlx::raw_sql(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 30000; \
                                       PRAGMA synchronous = NORMAL;",
                        )
                        .execute(conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url_text)
            .await
            .map_err(|source| StoreError::Open {
                url: redact_url(url),
                source,
            })?;
        let store = Self {
            pool,
            postgres: !sqlite,
        };
        if migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Applies the migrations not applied yet, in one transaction. On PostgreSQL an advisory
    /// lock makes replicas starting together take turns; on SQLite the database's write lock
    /// does.
    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7254110362)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
             applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        for (version, statements) in schema::MIGRATIONS {
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            for statement in *statements {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_secs())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ----- files -----
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;

//! The metadata store: files, batches, and the leases that give one worker at a time a batch.
//!
//! One implementation over sqlx's `Any` driver: SQLite (a file under the data directory, WAL
//! mode, the zero-set-up default) or PostgreSQL, chosen by the URL. Timestamps are Unix seconds
//! (lease times milliseconds) in BIGINT columns, JSON is TEXT, so the SQL is the same for both.
//!
//! Every write a worker makes names the fence it was given when its batch was claimed; a worker
//! whose lease was taken over matches no row and learns it has lost the batch.

mod schema;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

pub use crate::status::BatchStatus;

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
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
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
}

impl BatchRow {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// Counters a worker reports while it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub completed: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
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

/// Why a claimed batch is no longer the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLost;

const FILE_COLUMNS: &str = "id, owner, filename, purpose, bytes, created_at, expires_at, blob";
const BATCH_COLUMNS: &str = "id, owner, endpoint, input_file_id, input_blob, completion_window, \
    status, created_at, expires_at, in_progress_at, finalizing_at, completed_at, failed_at, \
    expired_at, cancelling_at, cancelled_at, output_file_id, error_file_id, total, completed, \
    failed, input_tokens, cached_tokens, output_tokens, reasoning_tokens, model, metadata, errors, \
    output_expires_seconds, progress, fence, crashes, last_error";

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

    pub async fn insert_file(&self, f: &FileRow) -> Result<()> {
        insert_file(&self.pool, f).await
    }

    /// A file its owner can see.
    pub async fn file(&self, owner: &str, id: &str) -> Result<Option<FileRow>> {
        let row = sqlx::query_as::<_, FileRow>(sql(format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND owner = $2 AND deleted = 0"
        )))
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Up to `limit` files after the cursor, in id (creation) order.
    pub async fn files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
        descending: bool,
    ) -> Result<Vec<FileRow>> {
        let (cmp, dir) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let mut text = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE owner = $1 AND deleted = 0 \
             AND ($2 = '' OR purpose = $2)"
        );
        if after.is_some() {
            text.push_str(&format!(" AND id {cmp} $4"));
        }
        text.push_str(&format!(" ORDER BY id {dir} LIMIT $3"));
        let mut q = sqlx::query_as::<_, FileRow>(sql(text))
            .bind(owner)
            .bind(purpose.unwrap_or(""))
            .bind(limit);
        if let Some(after) = after {
            q = q.bind(after);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows)
    }

    /// Hides a file from its owner; its content goes with the next [`Store::garbage`] pass.
    pub async fn delete_file(&self, owner: &str, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE files SET deleted = 1 WHERE id = $1 AND owner = $2 AND deleted = 0",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Hides files whose `expires_at` has passed. Returns how many.
    pub async fn expire_files(&self, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE files SET deleted = 1 WHERE deleted = 0 AND expires_at IS NOT NULL \
             AND expires_at <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deleted files whose content no unfinished batch reads any more.
    pub async fn garbage(&self) -> Result<Vec<FileRow>> {
        let rows = sqlx::query_as::<_, FileRow>(sql(format!(
            "SELECT {FILE_COLUMNS} FROM files f WHERE deleted = 1 AND NOT EXISTS (\
             SELECT 1 FROM batches b WHERE b.input_blob = f.blob \
             AND b.status NOT IN {}) LIMIT 1000",
            BatchStatus::sql_list(&BatchStatus::TERMINAL)
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Forgets a deleted file once its content is gone.
    pub async fn purge_file(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM files WHERE id = $1 AND deleted = 1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ----- batches -----

    pub async fn insert_batch(&self, b: &BatchRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO batches (id, owner, endpoint, input_file_id, input_blob, \
             completion_window, status, created_at, expires_at, metadata, \
             output_expires_seconds, model) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&b.id)
        .bind(&b.owner)
        .bind(&b.endpoint)
        .bind(&b.input_file_id)
        .bind(&b.input_blob)
        .bind(&b.completion_window)
        .bind(b.status)
        .bind(b.created_at)
        .bind(b.expires_at)
        .bind(&b.metadata)
        .bind(b.output_expires_seconds)
        .bind(&b.model)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A batch its owner can see.
    pub async fn batch(&self, owner: &str, id: &str) -> Result<Option<BatchRow>> {
        let row = sqlx::query_as::<_, BatchRow>(sql(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND owner = $2"
        )))
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// A batch by id alone (for its worker).
    pub async fn batch_by_id(&self, id: &str) -> Result<Option<BatchRow>> {
        let row = sqlx::query_as::<_, BatchRow>(sql(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Up to `limit` batches after the cursor, newest first.
    pub async fn batches(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BatchRow>> {
        let text = match after {
            Some(_) => format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = $1 AND id < $3 \
                 ORDER BY id DESC LIMIT $2"
            ),
            None => format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = $1 ORDER BY id DESC LIMIT $2"
            ),
        };
        let mut q = sqlx::query_as::<_, BatchRow>(sql(text))
            .bind(owner)
            .bind(limit);
        if let Some(after) = after {
            q = q.bind(after);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows)
    }

    /// Moves a validating or running batch to `cancelling`; other statuses are left as they are.
    pub async fn request_cancel(&self, owner: &str, id: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE batches SET status = 'cancelling', cancelling_at = $3 WHERE id = $1 \
             AND owner = $2 AND status IN ('validating', 'in_progress')",
        )
        .bind(id)
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ----- leases -----

    /// Unfinished batches nobody holds a live lease on, oldest first: `(id, fence)`; with
    /// `models`, only batches of those models.
    pub async fn claimable(
        &self,
        now_ms: i64,
        limit: i64,
        models: Option<&[String]>,
        cancels_only: bool,
    ) -> Result<Vec<(String, i64)>> {
        let statuses = if cancels_only {
            BatchStatus::sql_list(&[BatchStatus::Cancelling])
        } else {
            BatchStatus::sql_list(&BatchStatus::UNFINISHED)
        };
        let filter = match models {
            None => String::new(),
            Some([]) => return Ok(Vec::new()),
            Some(models) => {
                let params: Vec<String> =
                    (0..models.len()).map(|i| format!("${}", i + 3)).collect();
                format!(" AND model IN ({})", params.join(", "))
            }
        };
        let mut query = sqlx::query(sql(format!(
            "SELECT id, fence FROM batches WHERE status IN {statuses} AND lease_until < $1\
             {filter} ORDER BY id LIMIT $2"
        )))
        .bind(now_ms)
        .bind(limit);
        for model in models.unwrap_or_default() {
            query = query.bind(model);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("fence")?)))
            .collect()
    }

    /// Takes the batch if it is still at `fence` and unleased; returns the new fence.
    pub async fn claim(
        &self,
        id: &str,
        fence: i64,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<i64>> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE batches SET fence = fence + 1, lease_owner = $1, lease_until = $2 \
             WHERE id = $3 AND fence = $4 AND lease_until < $5",
        )
        .bind(holder)
        .bind(now + lease.as_millis() as i64)
        .bind(id)
        .bind(fence)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then_some(fence + 1))
    }

    /// Extends the lease of the holder of `fence`.
    pub async fn renew(
        &self,
        id: &str,
        fence: i64,
        lease: Duration,
    ) -> Result<std::result::Result<(), LeaseLost>> {
        let done = sqlx::query("UPDATE batches SET lease_until = $1 WHERE id = $2 AND fence = $3")
            .bind(now_ms() + lease.as_millis() as i64)
            .bind(id)
            .bind(fence)
            .execute(&self.pool)
            .await?;
        Ok(fenced(done.rows_affected()))
    }

    /// Gives the batch up at once so the next claim needs no wait for the lease to run out.
    pub async fn release(&self, id: &str, fence: i64) -> Result<()> {
        sqlx::query("UPDATE batches SET lease_until = 0 WHERE id = $1 AND fence = $2")
            .bind(id)
            .bind(fence)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that the worker holding `fence` died (`cause`: how it ended, for the client;
    /// `detail`: the server-side details, kept as the batch's `last_error` for the operator);
    /// after `max_crashes` the batch fails. Returns true when it failed.
    pub async fn record_crash(
        &self,
        id: &str,
        fence: i64,
        max_crashes: i64,
        cause: &str,
        detail: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE batches SET crashes = crashes + 1, lease_until = 0, \
             last_error = $3 WHERE id = $1 AND fence = $2",
        )
        .bind(id)
        .bind(fence)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
        // No server paths or log lines here: those stay in the server's log and `last_error`.
        let errors = serde_json::json!([{
            "code": "worker_failed",
            "message": format!(
                "The worker running this batch failed {max_crashes} times (the last time: \
                 {cause}), so the batch was stopped. Give the operator the batch id {id}: the \
                 details are in the server's log."
            ),
            "param": null,
            "line": null,
        }])
        .to_string();
        let failed = sqlx::query(sql(format!(
            "UPDATE batches SET status = 'failed', failed_at = $4, errors = $5 \
             WHERE id = $1 AND fence = $2 AND crashes >= $3 AND status NOT IN {}",
            BatchStatus::sql_list(&BatchStatus::TERMINAL)
        )))
        .bind(id)
        .bind(fence)
        .bind(max_crashes)
        .bind(now_secs())
        .bind(errors)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(failed.rows_affected() == 1)
    }

    // ----- a worker's writes, all fenced -----

    /// `validating` → `in_progress` with the number of requests and the model.
    pub async fn start(
        &self,
        id: &str,
        fence: i64,
        total: i64,
        model: Option<&str>,
    ) -> Result<std::result::Result<(), LeaseLost>> {
        let done = sqlx::query(
            "UPDATE batches SET total = $3, model = $4, status = CASE WHEN status = 'validating' \
             THEN 'in_progress' ELSE status END, in_progress_at = $5 WHERE id = $1 AND fence = $2",
        )
        .bind(id)
        .bind(fence)
        .bind(total)
        .bind(model)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(fenced(done.rows_affected()))
    }

    /// The live counters; returns the batch's status (a cancel shows up here).
    pub async fn report(
        &self,
        id: &str,
        fence: i64,
        counts: &Counts,
        progress: &str,
    ) -> Result<std::result::Result<BatchStatus, LeaseLost>> {
        // A restarted worker counts again from its last checkpoint: the counts a client sees
        // never go back (the final ones, set by `finish`, are exact).
        let done = sqlx::query(
            "UPDATE batches SET \
             completed = CASE WHEN $3 > COALESCE(completed, 0) THEN $3 ELSE completed END, \
             failed = CASE WHEN $4 > COALESCE(failed, 0) THEN $4 ELSE failed END, \
             input_tokens = CASE WHEN $5 > COALESCE(input_tokens, 0) THEN $5 \
             ELSE input_tokens END, \
             output_tokens = CASE WHEN $6 > COALESCE(output_tokens, 0) THEN $6 \
             ELSE output_tokens END, \
             progress = $7 WHERE id = $1 AND fence = $2",
        )
        .bind(id)
        .bind(fence)
        .bind(counts.completed)
        .bind(counts.failed)
        .bind(counts.input_tokens)
        .bind(counts.output_tokens)
        .bind(progress)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Err(LeaseLost));
        }
        Ok(self.status(id).await?.ok_or(LeaseLost))
    }

    /// Which of `ids` are being cancelled (one query, however many).
    pub async fn cancelling_among(&self, ids: &[&str]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let params: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let text = format!(
            "SELECT id FROM batches WHERE status = 'cancelling' AND id IN ({})",
            params.join(", ")
        );
        let mut query = sqlx::query_scalar(sql(text));
        for id in ids {
            query = query.bind(*id);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// Batches failed by their workers' crashes whose results were never published (the
    /// service stopped between failing the batch and publishing), with when they failed.
    pub async fn failed_without_results(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, failed_at FROM batches WHERE status = 'failed' AND output_file_id IS NULL \
             AND error_file_id IS NULL AND errors LIKE '%\"worker_failed\"%'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let failed_at: Option<i64> = r.try_get("failed_at")?;
                Ok((r.try_get("id")?, failed_at.unwrap_or(0)))
            })
            .collect()
    }

    /// A batch's status alone (a worker's cheap look for a cancel).
    pub async fn status(&self, id: &str) -> Result<Option<BatchStatus>> {
        Ok(
            sqlx::query_scalar("SELECT status FROM batches WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Sets `finalizing` (from `in_progress` only).
    pub async fn finalizing(&self, id: &str, fence: i64) -> Result<()> {
        sqlx::query(
            "UPDATE batches SET status = 'finalizing', finalizing_at = $3 WHERE id = $1 \
             AND fence = $2 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(fence)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends the batch `failed` with `errors` (a JSON list of batch errors).
    pub async fn fail(
        &self,
        id: &str,
        fence: i64,
        errors: &str,
    ) -> Result<std::result::Result<(), LeaseLost>> {
        let done = sqlx::query(
            "UPDATE batches SET status = 'failed', failed_at = $3, errors = $4, lease_until = 0 \
             WHERE id = $1 AND fence = $2",
        )
        .bind(id)
        .bind(fence)
        .bind(now_secs())
        .bind(errors)
        .execute(&self.pool)
        .await?;
        Ok(fenced(done.rows_affected()))
    }

    /// Ends the batch: its result files and terminal status in one transaction, so a worker
    /// whose lease was lost creates neither.
    pub async fn finish(
        &self,
        id: &str,
        fence: i64,
        finish: &Finish,
    ) -> Result<std::result::Result<(), LeaseLost>> {
        let mut tx = self.pool.begin().await?;
        for file in [&finish.output, &finish.errors].into_iter().flatten() {
            insert_file(&mut *tx, file).await?;
        }
        let now = now_secs();
        let column = match finish.status {
            BatchStatus::Completed => "completed_at",
            BatchStatus::Expired => "expired_at",
            _ => "cancelled_at",
        };
        let done = sqlx::query(sql(format!(
            "UPDATE batches SET status = $3, {column} = $4, output_file_id = $5, \
             error_file_id = $6, completed = $7, failed = $8, input_tokens = $9, \
             output_tokens = $10, progress = $11, lease_until = 0, total = COALESCE($12, total), \
             finalizing_at = CASE WHEN $3 = 'completed' THEN COALESCE(finalizing_at, $4) \
             ELSE finalizing_at END WHERE id = $1 AND fence = $2"
        )))
        .bind(id)
        .bind(fence)
        .bind(finish.status)
        .bind(now)
        .bind(finish.output.as_ref().map(|f| f.id.clone()))
        .bind(finish.errors.as_ref().map(|f| f.id.clone()))
        .bind(finish.counts.completed)
        .bind(finish.counts.failed)
        .bind(finish.counts.input_tokens)
        .bind(finish.counts.output_tokens)
        .bind(&finish.progress)
        .bind(finish.total)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Err(LeaseLost));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Attaches the result files of a batch that failed (what it had finished) and their counts;
    /// only a `failed` batch without files yet is changed. False: it already had them.
    pub async fn attach_results(
        &self,
        id: &str,
        output: Option<FileRow>,
        errors: Option<FileRow>,
        counts: &Counts,
        progress: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        for file in [&output, &errors].into_iter().flatten() {
            insert_file(&mut *tx, file).await?;
        }
        let attached = sqlx::query(
            "UPDATE batches SET output_file_id = $2, error_file_id = $3, completed = $4, \
             failed = $5, progress = $6 WHERE id = $1 AND status = 'failed' \
             AND output_file_id IS NULL AND error_file_id IS NULL",
        )
        .bind(id)
        .bind(output.as_ref().map(|f| f.id.clone()))
        .bind(errors.as_ref().map(|f| f.id.clone()))
        .bind(counts.completed)
        .bind(counts.failed)
        .bind(progress)
        .execute(&mut *tx)
        .await?;
        if attached.rows_affected() == 1 {
            tx.commit().await?;
            Ok(true)
        } else {
            // Someone attached results first: the files made here are nobody's.
            tx.rollback().await?;
            Ok(false)
        }
    }

    // ----- metrics -----

    /// Batches by status.
    pub async fn status_counts(&self) -> Result<Vec<(BatchStatus, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM batches GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Unfinished batches no worker holds: the queue.
    pub async fn queue_depth(&self, now_ms: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(sql(format!(
            "SELECT COUNT(*) FROM batches WHERE status IN {} AND lease_until < $1",
            BatchStatus::sql_list(&BatchStatus::UNFINISHED)
        )))
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Requests by outcome over every batch, and every batch's progress detail.
    pub async fn request_totals(&self) -> Result<(i64, i64, Vec<String>)> {
        let rows = sqlx::query("SELECT completed, failed, progress FROM batches")
            .fetch_all(&self.pool)
            .await?;
        let (mut completed, mut failed, mut progress) = (0, 0, Vec::new());
        for r in &rows {
            completed += r.try_get::<i64, _>("completed")?;
            failed += r.try_get::<i64, _>("failed")?;
            if let Some(p) = r.try_get::<Option<String>, _>("progress")? {
                progress.push(p);
            }
        }
        Ok((completed, failed, progress))
    }
}

fn fenced(rows: u64) -> std::result::Result<(), LeaseLost> {
    if rows == 1 { Ok(()) } else { Err(LeaseLost) }
}

async fn insert_file<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    f: &FileRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO files (id, owner, filename, purpose, bytes, created_at, expires_at, blob) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&f.id)
    .bind(&f.owner)
    .bind(&f.filename)
    .bind(&f.purpose)
    .bind(f.bytes)
    .bind(f.created_at)
    .bind(f.expires_at)
    .bind(&f.blob)
    .execute(executor)
    .await?;
    Ok(())
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

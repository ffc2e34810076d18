//! Batches as the API and the scheduler see them: create, read, list, cancel, and the counts
//! behind the metrics.

use super::*;

/// How long an idempotency key holds (OpenAI's and Stripe's keys last a day).
pub const IDEMPOTENCY_SECONDS: i64 = 24 * 3600;

/// An earlier create under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Idempotent {
    /// The hash of that create's body.
    pub digest: String,
    pub batch_id: String,
}

impl Store {
    pub async fn insert_batch(&self, b: &BatchRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_batch(&mut tx, b).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The create made under `key` by `owner` in the last day, if any.
    pub async fn idempotent(&self, owner: &str, key: &str) -> Result<Option<Idempotent>> {
        Ok(sqlx::query_as::<_, Idempotent>(
            "SELECT digest, batch_id FROM idempotency_keys WHERE owner = $1 AND key = $2 \
             AND created_at >= $3",
        )
        .bind(owner)
        .bind(key)
        .bind(now_secs() - IDEMPOTENCY_SECONDS)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Inserts `b` under the idempotency `key` (with its body's `digest`), unless another
    /// create took the key first: then nothing is inserted and that create is returned.
    pub async fn insert_batch_keyed(
        &self,
        b: &BatchRow,
        key: &str,
        digest: &str,
    ) -> Result<Option<Idempotent>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND created_at < $3",
        )
        .bind(&b.owner)
        .bind(key)
        .bind(now_secs() - IDEMPOTENCY_SECONDS)
        .execute(&mut *tx)
        .await?;
        let taken = sqlx::query(
            "INSERT INTO idempotency_keys (owner, key, digest, batch_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, key) DO NOTHING",
        )
        .bind(&b.owner)
        .bind(key)
        .bind(digest)
        .bind(&b.id)
        .bind(b.created_at)
        .execute(&mut *tx)
        .await?;
        if taken.rows_affected() == 0 {
            tx.rollback().await?;
            return self.idempotent(&b.owner, key).await;
        }
        insert_batch(&mut tx, b).await?;
        tx.commit().await?;
        Ok(None)
    }
}

/// The row of a new batch, inside the caller's transaction.
async fn insert_batch(tx: &mut sqlx::Transaction<'_, sqlx::Any>, b: &BatchRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO batches (id, owner, endpoint, input_file_id, input_blob, \
         completion_window, status, created_at, expires_at, metadata, \
         output_expires_seconds, model, webhook_url, estimated_lines, estimated_tokens, \
         preflight, mixed_models) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
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
    .bind(&b.webhook_url)
    .bind(b.estimated_lines)
    .bind(b.estimated_tokens)
    .bind(b.preflight)
    .bind(b.mixed_models)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
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
    /// A page of an owner's batches, newest first, as `filter` narrows them.
    pub async fn batches(
        &self,
        owner: &str,
        filter: &BatchFilter<'_>,
        limit: i64,
    ) -> Result<Vec<BatchRow>> {
        // The status list is made of the enum's own names, never of request text.
        let statuses = match filter.statuses.is_empty() {
            true => String::new(),
            false => format!(" AND status IN {}", BatchStatus::sql_list(&filter.statuses)),
        };
        let rows = sqlx::query_as::<_, BatchRow>(sql(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = $1 AND ($3 = '' OR id < $3) \
             AND created_at >= $4 AND created_at < $5{statuses} ORDER BY id DESC LIMIT $2"
        )))
        .bind(owner)
        .bind(limit)
        .bind(filter.after.unwrap_or(""))
        .bind(filter.created_after.unwrap_or(i64::MIN))
        .bind(filter.created_before.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Deletes an owner's ended batch, its result files and media payloads (their content goes
    /// with the next collection) and its webhook event. `Ok(None)`: no such batch; `Ok(Some(false))`: it has
    /// not ended.
    pub async fn delete_batch(&self, owner: &str, id: &str) -> Result<Option<bool>> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query_as::<_, BatchRow>(sql(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND owner = $2"
        )))
        .bind(id)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        if !row.is_terminal() {
            return Ok(Some(false));
        }
        for file in [&row.output_file_id, &row.error_file_id]
            .into_iter()
            .flatten()
        {
            sqlx::query("UPDATE files SET deleted = 1 WHERE id = $1 AND owner = $2")
                .bind(file)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        }
        // Its image, audio and video payloads.
        sqlx::query("UPDATE files SET deleted = 1 WHERE batch_id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        // Its event, and a create key that would name it (a retried create makes a new batch).
        for table in ["webhook_events", "idempotency_keys"] {
            sqlx::query(sql(format!("DELETE FROM {table} WHERE batch_id = $1")))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM batches WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(true))
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

    /// Batches by status.
    pub async fn status_counts(&self) -> Result<Vec<(BatchStatus, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM batches GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Batches `owner` created at or after `since` (Unix seconds).
    pub async fn created_since(&self, owner: &str, since: i64) -> Result<i64> {
        Ok(
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM batches WHERE owner = $1 AND created_at >= $2",
            )
            .bind(owner)
            .bind(since)
            .fetch_one(&self.pool)
            .await?,
        )
    }

    /// The estimated prompt tokens of `owner`'s unfinished batches that have passed
    /// validation (those a worker runs or will run), other than `except`.
    pub async fn enqueued_tokens(&self, owner: &str, except: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(sql(format!(
            "SELECT CAST(COALESCE(SUM(estimated_tokens), 0) AS BIGINT) FROM batches \
             WHERE owner = $1 \
             AND id <> $2 AND status IN {}",
            BatchStatus::sql_list(&[
                BatchStatus::InProgress,
                BatchStatus::Finalizing,
                BatchStatus::Cancelling
            ])
        )))
        .bind(owner)
        .bind(except)
        .fetch_one(&self.pool)
        .await?)
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

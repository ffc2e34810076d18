//! What workers write under their lease: claims, renewals, crashes, progress and the end of a
//! batch. Every write names the claim's fence; a worker whose lease was taken over matches no
//! row and learns it has lost the batch.

use super::files::insert_file;
use super::webhooks::{Release, insert_event, release_event};
use std::collections::HashMap;

use super::*;

impl Store {
    /// Unfinished batches nobody holds a live lease on: each owner's `per_owner` with the
    /// earliest deadlines (ties by creation), all in deadline order; with `models`, only
    /// batches of those models.
    pub async fn claimable(
        &self,
        now_ms: i64,
        per_owner: i64,
        models: Option<&[String]>,
        cancels_only: bool,
    ) -> Result<Vec<Claimable>> {
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
        let mut query = sqlx::query_as::<_, Claimable>(sql(format!(
            "SELECT id, fence, owner, expires_at FROM (SELECT id, fence, owner, expires_at, \
             ROW_NUMBER() OVER (PARTITION BY owner ORDER BY expires_at, id) AS place \
             FROM batches WHERE status IN {statuses} AND lease_until < $1{filter}) ranked \
             WHERE place <= $2 ORDER BY expires_at, id"
        )))
        .bind(now_ms)
        .bind(per_owner);
        for model in models.unwrap_or_default() {
            query = query.bind(model);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// Unfinished batches under a live lease, per owner: the worker slots each owner holds
    /// across every replica and pool.
    pub async fn running_by_owner(&self, now_ms: i64) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query(sql(format!(
            "SELECT owner, COUNT(*) AS n FROM batches WHERE status IN {} AND lease_until >= $1 \
             GROUP BY owner",
            BatchStatus::sql_list(&BatchStatus::UNFINISHED)
        )))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("owner")?, r.try_get("n")?)))
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
        let failed = failed.rows_affected() == 1;
        if failed {
            // Its results come after (the scheduler publishes what it finished).
            insert_event(&mut *tx, id, BatchStatus::Failed, Release::WithResults).await?;
        }
        tx.commit().await?;
        Ok(failed)
    }

    // ----- a worker's writes, all fenced -----

    /// `validating` → `in_progress` with the number of requests and the model.
    pub async fn start(
        &self,
        id: &str,
        fence: i64,
        total: i64,
        model: Option<&str>,
        preflight: Option<(&str, i64)>,
    ) -> Result<std::result::Result<(), LeaseLost>> {
        let done = sqlx::query(
            "UPDATE batches SET total = $3, model = $4, status = CASE WHEN status = 'validating' \
             THEN 'in_progress' ELSE status END, in_progress_at = $5, \
             preflight_report = COALESCE($6, preflight_report), \
             estimated_tokens = COALESCE($7, estimated_tokens) WHERE id = $1 AND fence = $2",
        )
        .bind(id)
        .bind(fence)
        .bind(total)
        .bind(model)
        .bind(now_secs())
        .bind(preflight.map(|(report, _)| report))
        .bind(preflight.map(|(_, tokens)| tokens))
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
             cached_tokens = CASE WHEN $8 > cached_tokens THEN $8 ELSE cached_tokens END, \
             reasoning_tokens = CASE WHEN $9 > reasoning_tokens THEN $9 \
             ELSE reasoning_tokens END, \
             progress = $7 WHERE id = $1 AND fence = $2",
        )
        .bind(id)
        .bind(fence)
        .bind(counts.completed)
        .bind(counts.failed)
        .bind(counts.input_tokens)
        .bind(counts.output_tokens)
        .bind(progress)
        .bind(counts.cached_tokens)
        .bind(counts.reasoning_tokens)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Err(LeaseLost));
        }
        Ok(self.status(id).await?.ok_or(LeaseLost))
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(sql(format!(
            "UPDATE batches SET status = 'failed', failed_at = $3, errors = $4, lease_until = 0 \
             WHERE id = $1 AND fence = $2 AND status NOT IN {}",
            BatchStatus::sql_list(&BatchStatus::TERMINAL)
        )))
        .bind(id)
        .bind(fence)
        .bind(now_secs())
        .bind(errors)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Err(LeaseLost));
        }
        insert_event(&mut *tx, id, BatchStatus::Failed, Release::Now).await?;
        tx.commit().await?;
        Ok(Ok(()))
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
            insert_file(&mut *tx, file, None).await?;
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
             cached_tokens = $13, reasoning_tokens = $14, \
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
        .bind(finish.counts.cached_tokens)
        .bind(finish.counts.reasoning_tokens)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Err(LeaseLost));
        }
        insert_event(&mut *tx, id, finish.status, Release::Now).await?;
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
            insert_file(&mut *tx, file, None).await?;
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
            release_event(&mut *tx, id).await?;
            tx.commit().await?;
            Ok(true)
        } else {
            // Someone attached results first: the files made here are nobody's.
            tx.rollback().await?;
            Ok(false)
        }
    }

    // ----- metrics -----
}

fn fenced(rows: u64) -> std::result::Result<(), LeaseLost> {
    if rows == 1 { Ok(()) } else { Err(LeaseLost) }
}

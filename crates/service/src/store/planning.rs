//! What the planner reads and keeps: results done per model (to measure throughput), the
//! measured throughput itself, and the work queued ahead of a batch.

use std::collections::HashMap;

use super::*;

/// Requests a batch still has to run: its exact count less its results once validated, its
/// estimate before.
const REMAINING: &str =
    "CASE WHEN total > 0 THEN total - completed - failed ELSE estimated_lines END";

/// The work queued ahead of a batch ([`Store::work_ahead`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkAhead {
    pub requests: i64,
    pub unstarted: i64,
}

/// What the service measured of one model's batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    /// Results per second of its batches together (0: not measured yet).
    pub per_second: f64,
    /// Output tokens per second of its batches together.
    pub tokens_per_second: f64,
    /// A batch's own time besides its requests: its worker starting, validating, finalizing.
    pub overhead_seconds: f64,
}

/// What one owner's batches of one model used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UsageRow {
    pub owner: String,
    /// `null` for batches whose input named no model.
    pub model: Option<String>,
    pub batches: i64,
    /// Requests with a 2xx answer, and the others (errors, engine failures).
    pub completed: i64,
    pub failed: i64,
    pub input_tokens: i64,
    /// Of the input tokens, those read from the engines' prefix caches.
    pub cached_tokens: i64,
    pub output_tokens: i64,
    /// Of the output tokens, those spent reasoning.
    pub reasoning_tokens: i64,
}

impl Store {
    /// Usage per owner and model over the batches created in `[from, to)` (Unix seconds),
    /// of one owner when given. Each batch's counts are its results (final once it ends, never
    /// counted twice across worker restarts), so summing them counts each request once.
    pub async fn usage(
        &self,
        owner: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query_as::<_, UsageRow>(
            "SELECT owner, model, COUNT(*) AS batches, \
             CAST(COALESCE(SUM(completed), 0) AS BIGINT) AS completed, \
             CAST(COALESCE(SUM(failed), 0) AS BIGINT) AS failed, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached_tokens, \
             CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT) AS reasoning_tokens FROM batches \
             WHERE ($1 = '' OR owner = $1) AND created_at >= $2 AND created_at < $3 \
             GROUP BY owner, model ORDER BY owner, model",
        )
        .bind(owner.unwrap_or(""))
        .bind(from.unwrap_or(i64::MIN))
        .bind(to.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The unfinished batches with a model: id, model and results so far (read through the
    /// status index: the cost follows the work queued, not every batch ever run).
    pub async fn unfinished_results(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(sql(format!(
            "SELECT id, model, completed + failed AS done FROM batches \
             WHERE status IN {} AND model IS NOT NULL",
            BatchStatus::sql_list(&BatchStatus::UNFINISHED)
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("model")?, r.try_get("done")?)))
            .collect()
    }

    /// The results of the batches `ids` (those that ended since they were last seen); a
    /// deleted one is absent.
    pub async fn results_of(&self, ids: &[String]) -> Result<HashMap<String, i64>> {
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT completed + failed FROM batches WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(done) = done {
                found.insert(id.clone(), done);
            }
        }
        Ok(found)
    }

    /// The progress detail of every batch a worker runs now, with its model: what the
    /// workers measure of their own rates.
    pub async fn running_progress(&self, now_ms: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT model, progress FROM batches WHERE status = 'in_progress' \
             AND lease_until >= $1 AND model IS NOT NULL AND progress IS NOT NULL",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("model")?, r.try_get("progress")?)))
            .collect()
    }

    /// What was measured of each model.
    pub async fn throughputs(&self) -> Result<HashMap<String, Throughput>> {
        let rows = sqlx::query("SELECT model, milli_rps, milli_tps, overhead_ms FROM throughput")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let milli: i64 = r.try_get("milli_rps")?;
                let overhead: i64 = r.try_get("overhead_ms")?;
                let tokens: i64 = r.try_get("milli_tps")?;
                let measured = Throughput {
                    per_second: milli as f64 / 1000.0,
                    tokens_per_second: tokens as f64 / 1000.0,
                    overhead_seconds: overhead as f64 / 1000.0,
                };
                Ok((r.try_get("model")?, measured))
            })
            .collect()
    }

    /// Adds a completed batch's overhead (`seconds` of its own besides its requests) to its
    /// model's decaying average.
    pub async fn note_overhead(&self, model: &str, seconds: f64) -> Result<()> {
        let ms = (seconds * 1000.0).round() as i64;
        sqlx::query(
            "INSERT INTO throughput (model, milli_rps, updated_at, overhead_ms) \
             VALUES ($1, 0, $3, $2) ON CONFLICT (model) DO UPDATE SET overhead_ms = \
             CASE WHEN throughput.overhead_ms = 0 THEN $2 \
             ELSE (throughput.overhead_ms * 7 + $2 * 3) / 10 END",
        )
        .bind(model)
        .bind(ms)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps `measured`'s rates for `model` (its overhead is kept by [`Store::note_overhead`]).
    pub async fn set_throughput(&self, model: &str, measured: &Throughput) -> Result<()> {
        let milli = |rate: f64| (rate * 1000.0).round() as i64;
        sqlx::query(
            "INSERT INTO throughput (model, milli_rps, milli_tps, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model) DO UPDATE SET milli_rps = $2, milli_tps = $3, updated_at = $4",
        )
        .bind(model)
        .bind(milli(measured.per_second))
        .bind(milli(measured.tokens_per_second))
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The unfinished batches of `model` that go before a batch ending at `expires_at` (an
    /// earlier deadline; the same one and an id not after `id`): their requests still to run,
    /// and how many of them have not started (each has its overhead ahead).
    pub async fn work_ahead(&self, model: &str, expires_at: i64, id: &str) -> Result<WorkAhead> {
        Ok(sqlx::query_as::<_, WorkAhead>(sql(format!(
            "SELECT CAST(COALESCE(SUM({REMAINING}), 0) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(CASE WHEN status = 'validating' THEN 1 ELSE 0 END), 0) AS BIGINT) \
             AS unstarted FROM batches WHERE model = $1 \
             AND status IN {} AND (expires_at < $2 OR (expires_at = $2 AND id <= $3))",
            BatchStatus::sql_list(&BatchStatus::UNFINISHED)
        )))
        .bind(model)
        .bind(expires_at)
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }
}

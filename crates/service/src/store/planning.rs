//! What the planner reads and keeps: results done per model (to measure throughput), the
//! measured throughput itself, and the work queued ahead of a batch.

use std::collections::HashMap;

use super::*;

/// Requests a batch still has to run: its exact count less its results once validated, its
/// estimate before.
const REMAINING: &str =
    "CASE WHEN total > 0 THEN total - completed - failed ELSE estimated_lines END";

/// What the service measured of one model's batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    /// Results per second of its batches together (0: not measured yet).
    pub per_second: f64,
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
        let rows = sqlx::query("SELECT model, milli_rps, overhead_ms FROM throughput")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let milli: i64 = r.try_get("milli_rps")?;
                let overhead: i64 = r.try_get("overhead_ms")?;
                let measured = Throughput {
                    per_second: milli as f64 / 1000.0,
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

    pub async fn set_throughput(&self, model: &str, per_second: f64) -> Result<()> {
        sqlx::query(
            "INSERT INTO throughput (model, milli_rps, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (model) DO UPDATE SET milli_rps = $2, updated_at = $3",
        )
        .bind(model)
        .bind((per_second * 1000.0).round() as i64)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Requests still to run in the unfinished batches of `model` that go before a batch
    /// ending at `expires_at` (an earlier deadline; the same one and an id not after `id`).
    pub async fn work_ahead(&self, model: &str, expires_at: i64, id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(sql(format!(
            "SELECT CAST(COALESCE(SUM({REMAINING}), 0) AS BIGINT) FROM batches WHERE model = $1 \
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

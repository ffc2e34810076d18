//! `GET /v1/batches` with its filters (extensions: status, created_after, created_before) and
//! `DELETE /v1/batches/{id}` (extension) for a batch that has ended.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::batches::with_plan;
use crate::auth::Owner;
use crate::error::ApiError;
use crate::model::{Batch, List};
use crate::store::{BatchFilter, BatchStatus};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListBatches {
    after: Option<String>,
    /// 1 to 100; default 20.
    limit: Option<i64>,
    /// Extension: only batches in these statuses, comma-separated (e.g.
    /// `in_progress,finalizing`).
    status: Option<String>,
    /// Extension: only batches created at or after this Unix time (seconds).
    created_after: Option<i64>,
    /// Extension: only batches created before this Unix time (seconds).
    created_before: Option<i64>,
}

#[utoipa::path(get, path = "/v1/batches", tag = "batches", operation_id = "listBatches", params(ListBatches),
    description = "Newest first.",
    responses((status = 200, description = "A page of the caller's batches.", body = List<Batch>),
        (status = 400, description = "An invalid query parameter.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    query: Result<Query<ListBatches>, QueryRejection>,
) -> Result<Json<List<Batch>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 100").param("limit"));
    }
    let filter = BatchFilter {
        after: q.after.as_deref(),
        statuses: statuses(q.status.as_deref())?,
        created_after: q.created_after,
        created_before: q.created_before,
    };
    let rows = app.store.batches(&owner.0, &filter, limit + 1).await?;
    let rates = app.store.throughputs().await?;
    let mut batches = Vec::with_capacity(rows.len());
    for row in &rows {
        batches.push(with_plan(&app, &rates, row).await?);
    }
    Ok(Json(List::page(batches, limit as usize, |b: &Batch| &b.id)))
}

/// The statuses of a `status` filter; an unknown one is refused, naming the known ones.
fn statuses(text: Option<&str>) -> Result<Vec<BatchStatus>, ApiError> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|s| {
            s.trim().parse::<BatchStatus>().map_err(|_| {
                let known: Vec<&str> = BatchStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::invalid(format!(
                    "Unknown status {:?}; use one or more of {}, comma-separated",
                    s.trim(),
                    known.join(", ")
                ))
                .param("status")
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchDeleted {
    pub id: String,
    /// `batch.deleted`.
    pub object: String,
    pub deleted: bool,
}

#[utoipa::path(delete, path = "/v1/batches/{id}", tag = "batches", operation_id = "deleteBatch", params(("id" = String, Path, description = "The batch's id (`batch_…`)")),
    description = "Extension. Deletes a batch that has ended, with its output and error files \
                   and the files of its image, audio and video answers; its input file stays.",
    responses((status = 200, description = "The batch is deleted.", body = BatchDeleted),
        (status = 400, description = "The batch has not ended (cancel it first).", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 404, description = "No such batch of the caller's.", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(app): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<BatchDeleted>, ApiError> {
    match app.store.delete_batch(&owner.0, &id).await? {
        None => return Err(ApiError::not_found("Batch", &id)),
        Some(false) => {
            return Err(ApiError::invalid(format!(
                "Batch {id} has not ended; cancel it (POST /v1/batches/{id}/cancel) and delete \
                 it once it is cancelled"
            ))
            .code("batch_not_finished"));
        }
        Some(true) => {}
    }
    // The result files' content goes now, not at their expiry.
    app.collect_soon();
    Ok(Json(BatchDeleted {
        id,
        object: "batch.deleted".into(),
        deleted: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_are_read_and_unknown_ones_named() {
        assert!(statuses(None).expect("none").is_empty());
        assert_eq!(
            statuses(Some("in_progress, completed")).expect("two"),
            vec![BatchStatus::InProgress, BatchStatus::Completed]
        );
        assert!(statuses(Some("done")).is_err());
    }
}

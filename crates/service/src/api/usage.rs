//! `GET /v1/x/usage` (extension, operator keys only): requests and tokens per owner and model,
//! for accounting and chargeback.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::auth::Operator;
use crate::error::ApiError;
use crate::store::UsageRow;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Only this owner.
    owner: Option<String>,
    /// Batches created at or after this time (Unix seconds).
    from: Option<i64>,
    /// Batches created before this time (Unix seconds).
    to: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Always `list`.
    object: String,
    data: Vec<UsageRow>,
}

#[utoipa::path(get, path = "/v1/x/usage", tag = "operations", operation_id = "usage", params(UsageQuery),
    description = "Extension, for keys with the operator role: requests and tokens per owner and model over the batches created in the range.",
    responses((status = 200, description = "Usage per owner and model.", body = Usage),
        (status = 400, description = "An invalid query; `param` names the field.", body = crate::error::ErrorBody),
        (status = 401, description = "No or a wrong API key.", body = crate::error::ErrorBody),
        (status = 403, description = "The key is not an operator's.", body = crate::error::ErrorBody)))]
pub async fn usage(
    State(app): State<AppState>,
    Extension(operator): Extension<Operator>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Usage>, ApiError> {
    if operator != Operator(true) {
        return Err(ApiError::forbidden(
            "Usage across owners needs an operator key ('KEY OWNER operator' in the key file)",
        )
        .code("operator_only"));
    }
    let Query(q) = query.map_err(|e| {
        ApiError::invalid(format!(
            "Invalid query: {}; owner is text, from and to are Unix seconds",
            e.body_text()
        ))
    })?;
    let data = app.store.usage(q.owner.as_deref(), q.from, q.to).await?;
    Ok(Json(Usage {
        object: "list".into(),
        data,
    }))
}

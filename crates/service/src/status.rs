//! The batch lifecycle as a type: the statuses OpenAI's Batch object has, which of them end a
//! batch, which moves between them are allowed, and how a status is stored (its OpenAI name,
//! as text, in both SQLite and PostgreSQL).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;

/// When a batch entered each status after `validating` (Unix seconds; none while it has not),
/// named as OpenAI's Batch object names them: the store's columns and the API's fields.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema, sqlx::FromRow,
)]
pub struct StatusTimes {
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Created; its input is checked before anything is sent.
    #[default]
    Validating,
    /// Its input was invalid, or its worker kept dying.
    Failed,
    InProgress,
    /// Every line has a result; the result files are being written.
    Finalizing,
    Completed,
    /// The completion window ended first; what finished is published.
    Expired,
    /// Cancel was asked for; requests in flight may still finish.
    Cancelling,
    Cancelled,
}

use BatchStatus::*;

impl BatchStatus {
    pub const ALL: [BatchStatus; 8] = [
        Validating, InProgress, Finalizing, Completed, Failed, Expired, Cancelling, Cancelled,
    ];
    /// The statuses a batch ends in.
    pub const TERMINAL: [BatchStatus; 4] = [Completed, Failed, Expired, Cancelled];
    /// The statuses of a batch some worker still has to run or finish.
    pub const UNFINISHED: [BatchStatus; 4] = [Validating, InProgress, Finalizing, Cancelling];

    /// The name OpenAI's API (and the database) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Validating => "validating",
            Failed => "failed",
            InProgress => "in_progress",
            Finalizing => "finalizing",
            Completed => "completed",
            Expired => "expired",
            Cancelling => "cancelling",
            Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// Whether a batch in this status may move to `next`. Ended batches never move; cancel
    /// comes before the work ends; `finalizing` only follows `in_progress`.
    pub fn can_become(self, next: BatchStatus) -> bool {
        match (self, next) {
            (from, _) if from.is_terminal() => false,
            (Validating, InProgress | Failed | Cancelling | Cancelled | Expired) => true,
            (InProgress, Finalizing | Completed | Failed | Expired | Cancelling | Cancelled) => {
                true
            }
            (Finalizing, Completed | Failed | Expired) => true,
            (Cancelling, Cancelled | Failed | Completed | Expired) => true,
            _ => false,
        }
    }

    /// A quoted SQL list of `statuses`, for `status IN (...)` in a query's text.
    pub fn sql_list(statuses: &[BatchStatus]) -> String {
        let quoted: Vec<String> = statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!("({})", quoted.join(", "))
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of OpenAI's (a damaged or foreign database row).
#[derive(Debug, thiserror::Error)]
#[error("unknown batch status {0:?}")]
pub struct UnknownStatus(String);

impl FromStr for BatchStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl sqlx::Type<Any> for BatchStatus {
    fn type_info() -> AnyTypeInfo {
        <String as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        <String as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, Any> for BatchStatus {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as sqlx::Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <&str as sqlx::Encode<'q, Any>>::encode_by_ref(&self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, Any> for BatchStatus {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <String as sqlx::Decode<'r, Any>>::decode(value)?;
        Ok(text.parse()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for status in BatchStatus::ALL {
            assert_eq!(status.as_str().parse::<BatchStatus>().ok(), Some(status));
            let json = serde_json::to_string(&status).expect("json");
            assert_eq!(json, format!("\"{status}\""));
        }
        assert!("running".parse::<BatchStatus>().is_err());
        assert_eq!(
            BatchStatus::sql_list(&BatchStatus::TERMINAL),
            "('completed', 'failed', 'expired', 'cancelled')"
        );
    }

    #[test]
    fn ended_batches_never_move_and_finalizing_follows_the_work() {
        for end in BatchStatus::TERMINAL {
            assert!(BatchStatus::ALL.iter().all(|next| !end.can_become(*next)));
        }
        assert!(Validating.can_become(InProgress));
        assert!(InProgress.can_become(Finalizing));
        assert!(!Validating.can_become(Finalizing));
        assert!(!Finalizing.can_become(Cancelling));
        assert!(Cancelling.can_become(Cancelled));
        let unfinished: Vec<_> = BatchStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(unfinished, BatchStatus::UNFINISHED);
    }
}

//! `batch-runner webhooks list|resend`: the service's webhook outbox, read and re-sent from its
//! database (the running service delivers what is re-sent within a second).

use batch_service::DataDir;
use batch_service::store::Store;

use super::{Exit, with_runtime};
use crate::cli::{WebhooksAction, WebhooksArgs};

pub fn run(args: WebhooksArgs) -> Exit {
    let database = args
        .state
        .database
        .clone()
        .unwrap_or_else(|| DataDir::default_database(&args.state.data_dir));
    let done = with_runtime(|rt| {
        rt.block_on(async {
            let store = Store::open(&database, false)
                .await
                .map_err(|e| e.to_string())?;
            match args.action {
                WebhooksAction::List { state, limit } => {
                    for e in store
                        .events(state.as_deref(), limit)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        let line = serde_json::json!({
                            "id": e.id, "batch_id": e.batch_id, "owner": e.owner,
                            "type": e.kind, "created_at": e.created_at, "state": e.state,
                            "attempts": e.attempts, "last_status": e.last_status,
                            "last_error": e.last_error, "url": e.url,
                        });
                        println!("{line}");
                    }
                }
                WebhooksAction::Resend { event, .. } => {
                    let n = store
                        .resend_events(event.as_deref())
                        .await
                        .map_err(|e| e.to_string())?;
                    eprintln!("{n} events will be sent again");
                    if n == 0 && event.is_some() {
                        tracing::error!(
                            "no such event given up or without an endpoint (list them with \
                             `webhooks list --state failed`)"
                        );
                        return Ok(Exit::Invalid);
                    }
                }
            }
            Ok::<Exit, String>(Exit::Success)
        })
    });
    match done {
        Err(exit) => exit,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            Exit::Runtime
        }
        Ok(Ok(exit)) => exit,
    }
}

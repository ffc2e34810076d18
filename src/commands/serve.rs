//! `batch-runner serve` (the OpenAI Files + Batches API, with its own workers or none) and
//! `batch-runner worker-pool` (workers without the API, for hosts next to the engines).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use batch_service::api::ApiConfig;
use batch_service::auth::Keys;
use batch_service::fair_share::Shares;
use batch_service::http_server::Limits;
use batch_service::scheduler::SchedulerConfig;
use batch_service::settings::WorkerSettings;
use batch_service::window::WindowBounds;
use batch_service::{DataDir, Execution, ServeConfig};

use super::{Exit, Signals, runtime};
use crate::cli::{ExecArgs, ServeArgs, WorkerPoolArgs};

/// Polling for work when nothing wakes the scheduler (another process may have created it).
const SCHEDULER_POLL: Duration = Duration::from_millis(500);

pub fn run(args: ServeArgs) -> Exit {
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    };
    finish(runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            // The first stdout line is the contract scripts and tests wait for.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
            tracing::info!(
                "serving the Files and Batches API on http://{addr}/v1 (data in {})",
                config.exec.data_dir.display()
            );
            let mut signals = Signals::new();
            batch_service::serve(config, listener, async move { signals.recv().await })
                .await
                .map_err(|e| e.to_string())
        })
    }))
}

pub fn run_pool(args: WorkerPoolArgs) -> Exit {
    let exec = match execution(&args.exec) {
        // A pool with no default engine takes only batches of the models it has engines for
        // (`serve` takes every batch, and fails those no engine serves).
        Ok(mut e) => {
            if e.worker.default_engines.is_empty() {
                e.scheduler.only_models = Some(e.worker.model_engines.keys().cloned().collect());
            }
            e
        }
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    };
    finish(runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            // The first stdout line is the contract scripts and tests wait for.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "worker pool ready");
            let _ = out.flush();
            let mut signals = Signals::new();
            batch_service::run_pool(exec, async move { signals.recv().await })
                .await
                .map_err(|e| e.to_string())
        })
    }))
}

fn finish(result: Result<(), String>) -> Exit {
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            tracing::error!("{e}");
            Exit::Runtime
        }
    }
}

fn config(args: &ServeArgs) -> Result<ServeConfig, String> {
    let keys = keys(args)?;
    if keys.is_empty() && !args.listen.ip().is_loopback() && !args.insecure_no_auth {
        return Err(format!(
            "refusing to serve on {} without API keys: give --api-key-file (or \
             BATCH_RUNNER_API_KEYS), listen on 127.0.0.1, or pass --insecure-no-auth",
            args.listen
        ));
    }
    Ok(ServeConfig {
        api: ApiConfig {
            max_upload_bytes: args.max_upload_bytes,
            windows: WindowBounds {
                min: args.min_completion_window,
                max: args.max_completion_window,
            },
            extra_endpoints: args.exec.allow_url.clone(),
            batch_file_ttl: Some(args.batch_file_retention.as_secs()).filter(|&s| s > 0),
            admission: args.admission.into(),
            admission_margin: f64::from(args.admission_margin) / 100.0,
            owner_max_batches_per_hour: args.owner_max_batches_per_hour,
        },
        keys,
        sweep_every: args.sweep_interval,
        limits: Limits {
            max_connections: args
                .max_connections
                .map_or_else(Limits::default_max_connections, |n| n as usize),
            header_read_timeout: args.header_read_timeout,
            body_stall_timeout: args.body_stall_timeout,
        },
        // Read before the service announces itself: a bad file stops it at once.
        webhooks: batch_service::webhooks::Endpoints::load(
            batch_service::webhooks::WebhookConfig {
                file: args.webhook_file.clone(),
                allow_private: args.webhook_allow_private,
                first_retry: args.webhook_first_retry,
            },
        )?,
        exec: execution(&args.exec)?,
    })
}

/// The database, storage, engines and workers of a `serve` or a `worker-pool`.
fn execution(args: &ExecArgs) -> Result<Execution, String> {
    let model_engines = batch_format::rules::model_engines(&args.model_engines)?;
    let state = &args.state;
    std::fs::create_dir_all(&state.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", state.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&state.data_dir)
        .map_err(|e| format!("cannot resolve {}: {e}", state.data_dir.display()))?;
    if args.engine_urls.is_empty() && model_engines.is_empty() && args.max_concurrent_batches > 0 {
        tracing::warn!(
            "no --engine-url or --model-engine given: every batch this process runs will fail \
             validation with model_not_found"
        );
    }
    if let Some(url) = &args.storage_url {
        batch_storage::object::parse(url).map_err(|e| format!("--storage-url: {e}"))?;
    }
    let database = state
        .database
        .clone()
        .unwrap_or_else(|| DataDir::default_database(&data_dir));
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the batch-runner executable for workers: {e}"))?;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let work_root = DataDir {
        root: data_dir.clone(),
    }
    .work();
    Ok(Execution {
        worker: WorkerSettings {
            database,
            default_engines: args.engine_urls.clone(),
            model_engines,
            engine: args.client.options(Vec::new(), None)?,
            grace: args.grace,
            lease: args.lease,
            report_every: args.report_interval,
            checkpoint_every_results: batch_job::CheckpointPolicy::DEFAULT_EVERY_RESULTS,
            checkpoint_every: args.checkpoint_interval,
            extra_endpoints: args.allow_url.clone(),
            file_url_hosts: args.file_url_hosts.clone(),
            storage_url: args.storage_url.clone(),
            s3: batch_storage::S3Options::from(&args.s3),
            owner_max_enqueued_tokens: args.owner_max_enqueued_tokens,
            owner_max_in_flight: args.owner_max_in_flight,
        },
        scheduler: SchedulerConfig {
            template: args.worker_command.clone(),
            exe,
            data_dir: data_dir.clone(),
            work_root,
            max_concurrent: args.max_concurrent_batches,
            max_crashes: i64::from(args.max_worker_restarts) + 1,
            lease: args.lease,
            poll: SCHEDULER_POLL,
            holder: format!("{}:{}", host.trim(), std::process::id()),
            engine_api_key: args.engine_api_key.clone(),
            stop_grace: args.grace + Duration::from_secs(10),
            only_models: None,
            shares: Shares {
                weights: args.owner_weight.iter().cloned().collect(),
                max_batches: args.owner_max_batches.map(|n| n as usize),
            },
        },
        data_dir: PathBuf::from(&data_dir),
    })
}

fn keys(args: &ServeArgs) -> Result<Keys, String> {
    let mut keys = Keys::default();
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --api-key-file {}: {e}", path.display()))?;
        keys.add_entries(&text, &path.display().to_string(), false)?;
    }
    if let Ok(text) = std::env::var("BATCH_RUNNER_API_KEYS") {
        keys.add_entries(&text, "BATCH_RUNNER_API_KEYS", true)?;
    }
    Ok(keys)
}

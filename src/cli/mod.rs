//! The command line: every flag, its default and its environment variable, declared once.
//!
//! Precedence is flag > environment variable (`BATCH_RUNNER_…`) > default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use batch_job::{CheckpointPolicy, parse_duration};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod engine;
mod run;
mod serve;
mod sim;

pub use engine::*;
pub use run::*;
pub use serve::*;
pub use sim::*;

#[derive(Debug, Parser)]
#[command(
    name = "batch-runner",
    version,
    about = "Runs OpenAI-compatible batch jobs (.jsonl) against self-hosted inference engines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a batch file without sending anything; every problem is reported with its line.
    Validate(ValidateArgs),
    /// Run a whole batch file against one or more running engines.
    Run(Box<RunArgs>),
    /// Start a simulated OpenAI-compatible engine (for trials, tests and benchmarks).
    SimEngine(SimArgs),
    /// Show the progress of a running or interrupted job from its state directory.
    Status(StatusArgs),
    /// Deliver results whose upload failed (kept in the job's state directory).
    Upload(UploadArgs),
    /// Serve the OpenAI Files + Batches API; each batch runs in its own worker process.
    Serve(Box<ServeArgs>),
    /// Claim and run batches of a shared service database without serving the API (for hosts
    /// next to the engines); takes the engine and worker flags of `serve`.
    WorkerPool(Box<WorkerPoolArgs>),
    /// List the service's webhook events and send again those that were given up.
    Webhooks(WebhooksArgs),
    /// (internal) Runs one batch of the service; started by `serve`.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// (internal) Runs a launched engine so that it never outlives the runner.
    #[command(hide = true)]
    EngineGuard(GuardArgs),
}

#[derive(Debug, Args)]
pub struct GuardArgs {
    #[arg(long)]
    pub log: PathBuf,
    #[arg(long)]
    pub max_log_bytes: u64,
    #[arg(long)]
    pub stop_grace_ms: u64,
    #[arg(long)]
    pub mirror: bool,
    /// The engine command, run with `sh -c`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The job's state directory, as the failed run named it.
    pub state_dir: PathBuf,

    /// Keep the state directory after everything is delivered.
    #[arg(long)]
    pub keep_state: bool,

    #[command(flatten)]
    pub s3: S3Args,
}

/// Object storage settings beyond the standard AWS environment variables.
#[derive(Debug, Args)]
pub struct S3Args {
    /// Endpoint of an S3-compatible store (MinIO, Ceph, Garage, ...) [default: AWS_ENDPOINT_URL].
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// Region of the store [default: AWS_REGION].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Address buckets as https://BUCKET.host/ instead of https://host/BUCKET/.
    #[arg(long)]
    pub s3_virtual_hosted_style: bool,
}

impl From<&S3Args> for batch_storage::S3Options {
    fn from(a: &S3Args) -> Self {
        Self {
            endpoint: a.s3_endpoint.clone(),
            region: a.s3_region.clone(),
            virtual_hosted_style: a.s3_virtual_hosted_style,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job's state directory (OUTPUT.state by default).
    pub state_dir: PathBuf,

    /// Print as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

//! `batch-runner sim-engine`

use std::io::Write;
use std::time::Duration;

use sim_engine::{Profile, SimConfig};

use super::{Exit, Signals, runtime};
use crate::cli::{SimArgs, SimProfile};

pub fn run(args: SimArgs) -> Exit {
    let mut config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Invalid;
        }
    };
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            if config.profile.listens_when_ready() {
                // The model loads before the server opens its port.
                tokio::time::sleep(std::mem::take(&mut config.startup)).await;
            }
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
            let addr = listener.local_addr()?;
            // The first stdout line is the contract scripts and tests wait for.
            let mut out = std::io::stdout();
            writeln!(out, "listening on http://{addr}")?;
            out.flush()?;
            let mut signals = Signals::new();
            sim_engine::serve(listener, config, signals.recv()).await
        })
    });
    match result {
        Ok(sim_engine::Ended::Shutdown) => Exit::Success,
        Ok(sim_engine::Ended::Crashed) => {
            tracing::error!("simulated crash (--exit-after)");
            Exit::SomeFailed
        }
        Err(e) => {
            tracing::error!("sim-engine on {}:{}: {e}", args.host, args.port);
            Exit::Runtime
        }
    }
}

fn config(args: &SimArgs) -> Result<SimConfig, String> {
    for (name, rate) in [
        ("--fail-rate", args.fail_rate),
        ("--drop-rate", args.drop_rate),
        ("--hang-rate", args.hang_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{name} must be between 0 and 1, got {rate}"));
        }
    }
    let millis = |name: &str, ms: f64| {
        Duration::try_from_secs_f64(ms / 1000.0)
            .map_err(|_| format!("{name} must be a non-negative number of milliseconds"))
    };
    Ok(SimConfig {
        model: args.model.clone(),
        max_running: args.max_running.max(1),
        max_queued: args.max_queued,
        ttft: millis("--ttft-ms", args.ttft_ms)?,
        per_token: millis("--ms-per-token", args.ms_per_token)?,
        per_token_per_running: millis("--ms-per-token-per-running", args.ms_per_token_per_running)?,
        prefill_per_token: millis("--prefill-ms-per-token", args.prefill_ms_per_token)?,
        prefix_cache_tokens: args.prefix_cache_tokens,
        priority_scheduling: args.enable_priority_scheduling,
        default_priority: args.default_priority_value,
        default_max_tokens: args.default_max_tokens,
        fail_rate: args.fail_rate,
        fail_status: args.fail_status,
        drop_rate: args.drop_rate,
        hang_rate: args.hang_rate,
        hang: Duration::from_millis(args.hang_ms),
        seed: args.seed,
        api_key: args.api_key.clone(),
        exit_after: args.exit_after,
        models_status: args.models_status,
        metrics: !args.no_metrics,
        profile: match args.profile {
            SimProfile::Generic => Profile::Generic,
            SimProfile::Sglang => Profile::Sglang,
            SimProfile::Vllm => Profile::Vllm,
            SimProfile::Transformers => Profile::Transformers,
        },
        context_length: args.context_length,
        tokenize_fail_after: args.tokenize_fail_after,
        startup: Duration::from_millis(args.startup_ms),
        video: Duration::from_millis(args.video_ms),
        required_headers: args
            .require_headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .ok_or_else(|| format!("--require-header {h:?}: write it as 'Name: value'"))
            })
            .collect::<Result<_, _>>()?,
    })
}

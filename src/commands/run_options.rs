//! Turning `run`'s command line into [`RunOptions`]: where the input and results are (local
//! paths or URLs), the engine to launch, and every other setting.

use std::path::{Path, PathBuf};

use batch_job::{
    CheckpointPolicy, Deadline, FINAL_DIR, LaunchSpec, Order, Preset, Previous, ProgressMode,
    Remote, RunOptions, ValidateOptions, default_state_dir,
};
use batch_storage::{HttpOptions, Location, S3Options};

use crate::cli::{DispatchOrderArg, EngineArg, OrderArg, ProgressArg, RunArgs};

/// Size at which the engine's log is rotated.
const ENGINE_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Where the job reads and writes, locally, and which of those ends are URLs.
struct Places {
    input: PathBuf,
    output: PathBuf,
    errors: PathBuf,
    state_dir: PathBuf,
    state_remote: Option<reqwest::Url>,
    remote: Remote,
}

/// `$TMPDIR/batch-runner-state/BUCKET/PREFIX` for `s3://BUCKET/PREFIX`.
fn state_cache_for(url: &reqwest::Url) -> PathBuf {
    let key: String = format!("{}{}", url.host_str().unwrap_or_default(), url.path())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::env::temp_dir().join("batch-runner-state").join(key)
}

fn places(args: &RunArgs) -> Result<Places, String> {
    let parse = |text: &str| Location::parse(text).map_err(|e| e.to_string());
    let input = parse(&args.input)?;
    let output = parse(&args.output)?;
    let errors = match args.errors.as_deref().map(parse).transpose()? {
        Some(errors) => errors,
        None => output.errors_sibling().ok_or(
            "--errors is required when --output is a URL with a query string (a presigned URL \
             is signed for one object): give the error file its own URL",
        )?,
    };
    let state = args.state_dir.as_deref().map(parse).transpose()?;
    let (state_dir, state_remote) = match (state, &output) {
        (Some(Location::Local(dir)), _) => (dir, None),
        (Some(Location::Object(url)), _) => {
            let cache = args
                .state_cache
                .clone()
                .unwrap_or_else(|| state_cache_for(&url));
            (cache, Some(url))
        }
        (Some(Location::Http(_)), _) => {
            return Err("--state-dir must be a local directory or s3://bucket/prefix".into());
        }
        (None, Location::Local(path)) => (default_state_dir(path), None),
        (None, remote) => {
            let name = remote.file_name().unwrap_or_else(|| "output".into());
            (PathBuf::from(format!("{name}.state")), None)
        }
    };
    // A remote end has a local copy in the state directory.
    let local = |place: Location, staged: PathBuf| match place {
        Location::Local(path) => (path, None),
        remote => (staged, Some(remote)),
    };
    let (output_local, output_remote) =
        local(output, state_dir.join(FINAL_DIR).join("output.jsonl"));
    let (errors_local, errors_remote) =
        local(errors, state_dir.join(FINAL_DIR).join("errors.jsonl"));
    let (input_local, input_remote) = local(input, state_dir.join("input.jsonl"));
    if let Some(i) = &input_remote
        && (Some(i) == output_remote.as_ref() || Some(i) == errors_remote.as_ref())
    {
        return Err(
            "the input and an output are the same location; results must go elsewhere".into(),
        );
    }
    let http = |headers: &[String]| HttpOptions {
        headers: headers.to_vec(),
        attempts: args.transfer_retries.saturating_add(1),
        ..HttpOptions::default()
    };
    Ok(Places {
        input: input_local,
        output: output_local,
        errors: errors_local,
        state_dir,
        state_remote,
        remote: Remote {
            input: input_remote,
            output: output_remote,
            errors: errors_remote,
            input_http: http(&args.input_headers),
            output_http: http(&args.output_headers),
            s3: S3Options::from(&args.s3),
        },
    })
}

pub fn build(args: RunArgs) -> Result<RunOptions, String> {
    let places = places(&args)?;
    let launch = launch_spec(&args, &places.state_dir)?;
    let retry_failed = match (
        &args.retry_failed,
        &args.previous_output,
        &places.remote.output,
    ) {
        (None, _, _) => None,
        (Some(errors), Some(output), _) => Some(Previous {
            errors: errors.clone(),
            output: output.clone(),
        }),
        (Some(errors), None, None) => Some(Previous {
            errors: errors.clone(),
            output: places.output.clone(),
        }),
        (Some(_), None, Some(_)) => {
            return Err(
                "--retry-failed with an --output URL needs --previous-output PATH (a \
                        local copy of the earlier output)"
                    .into(),
            );
        }
    };
    let model_engines = args.rules.model_engines()?;
    let media = media_store(args.media_dir.as_deref(), &places)?;
    let mut options = RunOptions {
        validate: ValidateOptions::from(&args.rules),
        engines: args.client.options(args.engine_urls, args.api_key)?,
        input: places.input,
        output: places.output,
        errors: places.errors,
        state_dir: places.state_dir,
        state_remote: places.state_remote,
        model_check: !args.no_model_check,
        in_flight_cap: None,
        results_index: None,
        preflight: args.preflight,
        engine_down_timeout: (!args.engine_down_timeout.is_zero())
            .then_some(args.engine_down_timeout),
        group_window: match args.order_dispatch {
            DispatchOrderArg::Input => None,
            DispatchOrderArg::Prefix => Some(args.dispatch_window as usize),
        },
        remote: places.remote,
        skip_invalid: args.skip_invalid,
        metrics_listen: args.metrics_listen,
        progress: match args.progress {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Bar => ProgressMode::Bar,
            ProgressArg::Log => ProgressMode::Log,
            ProgressArg::Off => ProgressMode::Off,
        },
        progress_interval: args.progress_interval,
        order: match args.order {
            OrderArg::Input => Order::Input,
            OrderArg::Completion => Order::Completion,
        },
        checkpoint: CheckpointPolicy {
            every_results: args.checkpoint_every,
            every: args.checkpoint_interval,
        },
        restart: args.restart,
        keep_state: args.keep_state,
        deadline: match (args.completion_window, args.deadline) {
            (Some(window), _) => Deadline::Window(window),
            (None, Some(at)) => Deadline::At(at),
            (None, None) => Deadline::None,
        },
        grace: args.grace,
        retry_failed,
        launch,
        media,
        file_url_hosts: None,
    };
    if let Some(by_model) = model_engines {
        options.mix_models(by_model);
    }
    Ok(options)
}

/// Where the answers' media go: `--media-dir` (a directory or `s3://…`), or `OUTPUT.media`
/// beside a local or `s3://` output; none for an http(s) output without `--media-dir` (a batch
/// that needs one then refuses to start).
fn media_store(
    media_dir: Option<&str>,
    places: &Places,
) -> Result<Option<std::sync::Arc<dyn batch_job::MediaStore>>, String> {
    let beside = |output: &str| format!("{output}.media");
    let place = match (media_dir, &places.remote.output) {
        (Some(given), _) => Location::parse(given).map_err(|e| format!("--media-dir: {e}"))?,
        (None, None) => {
            Location::Local(PathBuf::from(beside(&places.output.display().to_string())))
        }
        (None, Some(Location::Object(url))) => Location::Object(
            batch_storage::object::parse(&beside(url.as_str())).map_err(|e| e.to_string())?,
        ),
        (None, Some(_)) => return Ok(None),
    };
    Ok(Some(match place {
        Location::Local(dir) => {
            let output_dir = match places.output.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            std::sync::Arc::new(batch_job::LocalMedia::new(dir, &output_dir))
        }
        Location::Object(url) => {
            let dir = batch_storage::object::ObjectDir::open(&url, &places.remote.s3)
                .map_err(|e| format!("--media-dir: {e}"))?;
            std::sync::Arc::new(batch_job::ObjectMedia::new(dir))
        }
        Location::Http(_) => {
            return Err(
                "--media-dir must be a directory or s3://bucket/prefix: payloads cannot be put \
                 at http(s) URLs one by one"
                    .into(),
            );
        }
    }))
}

/// What --launch or --engine asks for, if anything.
fn launch_spec(args: &RunArgs, state_dir: &Path) -> Result<Option<LaunchSpec>, String> {
    let (template, ready_path) = match (&args.launch, args.engine) {
        (Some(command), _) => (command.clone(), args.launch_ready_path.clone()),
        (None, Some(engine)) => {
            let preset = match engine {
                EngineArg::Sglang => Preset::Sglang,
                EngineArg::Vllm => Preset::Vllm,
                EngineArg::Transformers => Preset::Transformers,
            };
            let model = args
                .model_path
                .as_deref()
                .ok_or("--engine needs --model-path")?;
            (
                preset.template(model, &args.engine_args),
                preset.ready_path().to_owned(),
            )
        }
        (None, None) => return Ok(None),
    };
    let guard_program = std::env::current_exe().map_err(|e| {
        format!("cannot find the batch-runner executable for the engine guard: {e}")
    })?;
    Ok(Some(LaunchSpec {
        template,
        host: args.launch_host.clone(),
        ready_path,
        ready_timeout: args.launch_timeout,
        max_restarts: args.max_engine_restarts,
        guard_program,
        log: state_dir.join("engine.log"),
        max_log_bytes: ENGINE_LOG_MAX_BYTES,
        stop_grace: args.engine_stop_grace,
        verbose: args.verbose,
    }))
}

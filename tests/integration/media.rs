//! Image, audio and video lines: accepted by default, their payloads stored as files beside the
//! output, transcriptions sent as multipart forms, video jobs followed to their content.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::{Job, Sim, cmd, results_by_id, run_args, stderr};

fn line(custom_id: &str, url: &str, body: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
}

/// Runs `lines` against `sim` (any model), expecting exit `code`; the results by custom_id, and
/// the job.
fn run(sim: &Sim, lines: &[Value], code: i32) -> (Job, std::collections::HashMap<String, Value>) {
    let job = Job::new();
    let input = job.input(lines);
    let mut args = run_args(&job, input.to_str().expect("utf-8"), &[&sim.url], &[]);
    // Each endpoint's model has its own name here; the engine serves them all.
    args.push("--no-model-check".into());
    let out = cmd().args(args).output().expect("run");
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    let mut results = results_by_id(&job.path("out.jsonl"));
    if job.path("out.errors.jsonl").exists() {
        results.extend(results_by_id(&job.path("out.errors.jsonl")));
    }
    (job, results)
}

/// The file a result's `file` object points at, read from beside the output.
fn stored(job: &Job, file: &Value) -> Vec<u8> {
    let path = file["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no path in {file}"));
    assert!(
        !path.starts_with('/'),
        "relative to the output's directory: {path}"
    );
    std::fs::read(job.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn images_are_stored_as_files_and_the_result_lines_point_at_them() {
    let sim = Sim::instant(&["--model", "flux"]);
    let lines: Vec<Value> = (0..3)
        .map(|i| {
            line(
                &format!("img{i}"),
                "/v1/images/generations",
                json!({"model": "flux", "prompt": format!("a cat number {i}"), "n": 2}),
            )
        })
        .collect();
    let (job, results) = run(&sim, &lines, 0);
    for i in 0..3 {
        let r = &results[&format!("img{i}")];
        assert_eq!(r["response"]["status_code"], 200, "{r}");
        let data = r["response"]["body"]["data"].as_array().expect("data");
        assert_eq!(data.len(), 2);
        for (n, item) in data.iter().enumerate() {
            assert!(
                item.get("b64_json").is_none(),
                "the payload left the line: {item}"
            );
            assert_eq!(item["file"]["mime_type"], "image/png");
            let png = stored(&job, &item["file"]);
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
            assert!(png.ends_with(format!("sim image {n} of a cat number {i}").as_bytes()));
            assert_eq!(item["file"]["bytes"], png.len());
        }
    }
    // The output stays small: no base64 in it.
    let output = std::fs::read_to_string(job.path("out.jsonl")).expect("output");
    assert!(output.len() < 3 * 1024, "{} bytes", output.len());
}

#[test]
fn speech_transcriptions_and_videos_take_their_own_ways() {
    let sim = Sim::instant(&["--model", "any", "--video-ms", "700"]);
    let speech = [line(
        "say",
        "/v1/audio/speech",
        json!({"model": "tts", "input": "hello there", "voice": "alloy", "response_format": "wav"}),
    )];
    let (job, results) = run(&sim, &speech, 0);
    let body = &results["say"]["response"]["body"];
    assert_eq!(body["object"], "audio.speech", "{body}");
    assert_eq!(body["file"]["mime_type"], "audio/wav");
    assert!(stored(&job, &body["file"]).ends_with(b"sim speech of hello there"));

    let audio = base64::engine::general_purpose::STANDARD.encode(b"RIFF1234WAVEdata");
    let store = crate::common::store::Store::start();
    store.put_object("/audio/clip.flac", b"fLaC0123456789abcdefghij");
    let transcriptions = [
        line(
            "t-json",
            "/v1/audio/transcriptions",
            json!({"model": "whisper", "file_url": format!("data:audio/wav;base64,{audio}"),
                   "timestamp_granularities": ["word"]}),
        ),
        line(
            "t-text",
            "/v1/audio/transcriptions",
            json!({"model": "whisper", "file_url": format!("data:audio/wav;base64,{audio}"),
                   "response_format": "srt"}),
        ),
        // Audio at an http URL, downloaded by the runner.
        line(
            "t-url",
            "/v1/audio/transcriptions",
            json!({"model": "whisper", "file_url": format!("{}/audio/clip.flac?sig=1", store.url)}),
        ),
        // Audio that cannot be had: the line's own error, the others run.
        line(
            "t-gone",
            "/v1/audio/transcriptions",
            json!({"model": "whisper", "file_url": format!("{}/no/such.wav", sim.url)}),
        ),
    ];
    let (_, mut results) = run(&sim, &transcriptions, 1);
    let translation = [line(
        "t-fr",
        "/v1/audio/translations",
        json!({"model": "whisper", "file_url": format!("data:audio/mpeg;base64,{audio}")}),
    )];
    results.extend(run(&sim, &translation, 0).1);
    let text = |id: &str| {
        results[id]["response"]["body"]["text"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        text("t-json").as_deref(),
        Some("sim transcript of 16 bytes (audio.wav, audio/wav)")
    );
    assert_eq!(
        text("t-text").as_deref(),
        Some("sim transcript of 16 bytes (audio.wav, audio/wav)"),
        "a text answer is kept as {{\"text\"}}"
    );
    assert_eq!(
        text("t-url").as_deref(),
        Some("sim transcript of 24 bytes (clip.flac, audio/flac)")
    );
    assert_eq!(
        text("t-fr").as_deref(),
        Some("sim transcript of 16 bytes (audio.mp3, audio/mpeg)")
    );
    let gone = &results["t-gone"]["error"];
    assert_eq!(gone["code"], "invalid_file_url", "{gone}");
    assert!(
        gone["message"].as_str().is_some_and(|m| m.contains("404")),
        "{gone}"
    );

    let videos = [
        line(
            "film",
            "/v1/videos",
            json!({"model": "wan", "prompt": "waves at dusk", "seconds": "4"}),
        ),
        line(
            "flop",
            "/v1/videos",
            json!({"model": "wan", "prompt": "[fail]"}),
        ),
    ];
    let (job, results) = run(&sim, &videos, 1);
    let flop = &results["flop"]["error"];
    assert_eq!(flop["code"], "video_failed", "{flop}");
    assert!(
        flop["message"]
            .as_str()
            .is_some_and(|m| m.contains("sim video failed")),
        "{flop}"
    );
    let body = &results["film"]["response"]["body"];
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["progress"], 100);
    assert_eq!(body["file"]["mime_type"], "video/mp4");
    assert!(stored(&job, &body["file"]).ends_with(b"sim video of waves at dusk"));
}

/// Validation knows each endpoint's fields; an image batch whose output is a URL needs
/// --media-dir, and says so before sending anything.
#[test]
fn media_lines_are_validated_and_need_a_place_for_their_files() {
    let job = Job::new();
    let input = job.input(&[
        line("a", "/v1/images/generations", json!({"model": "m"})),
        line(
            "b",
            "/v1/audio/transcriptions",
            json!({"model": "w", "file": "x.wav"}),
        ),
    ]);
    let out = cmd()
        .args(["validate", input.to_str().expect("utf-8"), "--json"])
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let found: Vec<(Value, Value)> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| (e["line"].clone(), e["param"].clone()))
        .collect();
    assert_eq!(
        found,
        [
            (json!(1), json!("body.prompt")),
            (json!(2), json!("body.file")),
            (json!(2), json!("body.file_url")),
        ],
        "{report}"
    );

    let sim = Sim::instant(&[]);
    let input = job.input(&[line(
        "a",
        "/v1/images/generations",
        json!({"model": "sim-model", "prompt": "p"}),
    )]);
    let out = cmd()
        .args([
            "run",
            input.to_str().expect("utf-8"),
            "--output",
            &format!("{}/put/out.jsonl", sim.url),
            "--errors",
            &format!("{}/put/err.jsonl", sim.url),
            "--state-dir",
            job.path("state").to_str().expect("utf-8"),
            "--engine-url",
            &sim.url,
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--media-dir"), "{}", stderr(&out));
    assert_eq!(sim.served(), 0.0);
}

/// A media directory that cannot be written stops the job (resumable, its results so far kept)
/// instead of losing the answers; once it can be written, the same command finishes the job,
/// every image stored.
#[test]
fn a_media_store_failure_stops_the_job_and_a_rerun_finishes_it() {
    let sim = Sim::instant(&["--model", "flux"]);
    let job = Job::new();
    let lines: Vec<Value> = (0..20)
        .map(|i| {
            line(
                &format!("img{i}"),
                "/v1/images/generations",
                json!({"model": "flux", "prompt": format!("p{i}")}),
            )
        })
        .collect();
    let input = job.input(&lines);
    // A file where the media directory's parent should be: nothing can be created under it.
    let blocker = job.write("blocker", b"not a directory");
    let media = blocker.join("media");
    let args = run_args(
        &job,
        input.to_str().expect("utf-8"),
        &[&sim.url],
        &["--media-dir", media.to_str().expect("utf-8")],
    );
    let out = cmd().args(&args).output().expect("run");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot store"), "{}", stderr(&out));
    assert!(!job.path("out.jsonl").exists(), "not finalized");

    std::fs::remove_file(&blocker).expect("remove");
    std::fs::create_dir(&blocker).expect("mkdir");
    let out = cmd().args(&args).output().expect("rerun");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = results_by_id(&job.path("out.jsonl"));
    assert_eq!(results.len(), 20);
    for r in results.values() {
        let file = &r["response"]["body"]["data"][0]["file"];
        let path = file["path"].as_str().expect("path");
        let png = std::fs::read(job.path(path)).expect("stored");
        assert!(png.starts_with(b"\x89PNG"), "{path}");
    }
}

/// `serve`: a transcription batch's audio comes inline (a data: URL); a URL is downloaded only
/// from the hosts the operator allows, any other is that line's error (the worker must not
/// fetch whatever a user names); speech lands in the owner's files.
#[test]
fn a_service_worker_downloads_audio_only_from_allowed_hosts() {
    use crate::common::jsonl;
    use crate::common::service::Service;
    let sim = Sim::instant(&[]);
    let store = crate::common::store::Store::start();
    store.put_object("/a/clip.wav", b"RIFF0000WAVEfmt ");
    let allowed = store
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .expect("host")
        .to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(
        dir.path(),
        &["--engine-url", &sim.url, "--report-interval", "100ms"],
    );
    let audio = base64::engine::general_purpose::STANDARD.encode(b"RIFF0000WAVEdata");
    let lines = [
        line(
            "inline",
            "/v1/audio/transcriptions",
            json!({"model": "sim-model", "file_url": format!("data:audio/wav;base64,{audio}")}),
        ),
        line(
            "fetched",
            "/v1/audio/transcriptions",
            json!({"model": "sim-model", "file_url": format!("{}/a/clip.wav", store.url)}),
        ),
    ];
    let create = |service: &Service, lines: &[Value], endpoint: &str| {
        let file = service.upload("audio.jsonl", &jsonl(lines));
        let r = service.call(
            "POST",
            "/v1/batches",
            Some(&json!({"input_file_id": file, "endpoint": endpoint, "completion_window": "24h"})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.json()["id"].as_str().expect("id").to_owned();
        service.wait_status(
            &id,
            &["completed", "failed"],
            std::time::Duration::from_secs(60),
        )
    };
    let done = create(&service, &lines, "/v1/audio/transcriptions");
    assert_eq!(done["request_counts"]["completed"], 1, "{done}");
    let errors = service.content(done["error_file_id"].as_str().expect("error file"));
    let error: Value = serde_json::from_slice(&errors).expect("one error line");
    assert_eq!(error["custom_id"], "fetched");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--allow-file-url-host")),
        "{error}"
    );
    drop(service);

    let service = Service::start(
        dir.path(),
        &["--engine-url", &sim.url, "--allow-file-url-host", &allowed],
    );
    let done = create(&service, &lines, "/v1/audio/transcriptions");
    assert_eq!(done["request_counts"]["completed"], 2, "{done}");

    let speech = [line(
        "say",
        "/v1/audio/speech",
        json!({"model": "sim-model", "input": "hi", "voice": "alloy"}),
    )];
    let done = create(&service, &speech, "/v1/audio/speech");
    let output = service.content(done["output_file_id"].as_str().expect("output"));
    let result: Value = serde_json::from_slice(&output).expect("one line");
    let file = &result["response"]["body"]["file"];
    assert_eq!(file["mime_type"], "audio/mpeg", "{result}");
    let file_id = file["id"].as_str().expect("file id");
    let audio = service.content(file_id);
    assert!(audio.ends_with(b"sim speech of hi"));
    // Deleting the batch deletes its payloads too.
    let batch = done["id"].as_str().expect("id");
    let r = service.call("DELETE", &format!("/v1/batches/{batch}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = service.call("GET", &format!("/v1/files/{file_id}"), None);
    assert_eq!(r.status, 404, "{}", r.text());
}

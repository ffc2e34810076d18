//! Beyond one machine: `serve` replicas and `worker-pool`s sharing PostgreSQL (the machine's) and
//! object storage (moto), with pools killed and frozen mid-run, damaged checkpoints, and pools
//! that serve one model each.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::common::s3::Moto;
use crate::common::service::{PgSchema, Pool, Service, postgres_schema, unique_ids, worker_pids};
use crate::common::{Sim, chat_line, jsonl, numbered_lines, wait_for};

const LONG: Duration = Duration::from_secs(180);

/// What every process of a test deployment shares: the machine's PostgreSQL (a schema of its
/// own), an object store (moto), and a folder for the processes' data directories.
struct Cluster {
    moto: Moto,
    schema: PgSchema,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster {
            moto: Moto::start(),
            schema: postgres_schema(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The flags every process shares (one database, one object store, short leases), then
    /// `extra`.
    fn flags(&self, extra: &[&str]) -> Vec<String> {
        let shared = [
            "--database",
            &self.schema.url,
            "--storage-url",
            "s3://jobs/svc",
            "--lease",
            "3s",
            "--checkpoint-interval",
            "300ms",
            "--report-interval",
            "200ms",
            "--grace",
            "2s",
        ];
        shared
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    }

    fn data_dir(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A `serve` that answers the API and runs no batches itself.
    fn api(&self, name: &str) -> Service {
        let flags = self.flags(&["--max-concurrent-batches", "0"]);
        Service::start_with(&self.data_dir(name), &refs(&flags), &self.moto.env())
    }

    /// A `worker-pool` with `extra` flags, and `env` added to its environment.
    fn pool(&self, name: &str, extra: &[&str], env: &[(&str, String)]) -> Pool {
        let mut full = self.moto.env().to_vec();
        full.extend_from_slice(env);
        Pool::start(&self.data_dir(name), &refs(&self.flags(extra)), &full)
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Pool flags for one engine, two requests in flight per batch.
fn one_engine(sim: &Sim) -> [&str; 4] {
    ["--engine-url", &sim.url, "--max-concurrency", "2"]
}

/// A 300-line batch started on a pool named `frozen`, which is then frozen (SIGSTOP: a host
/// that stops answering) once `done` lines have results. Returns the pool and the batch.
fn frozen_mid_batch(cluster: &Cluster, service: &Service, sim: &Sim, done: i64) -> (Pool, String) {
    let frozen = cluster.pool("frozen", &one_engine(sim), &[]);
    let batch = service.submit("f", 300);
    service.wait_completed(&batch, done, LONG);
    frozen.signal_group("STOP");
    (frozen, batch)
}

fn completed_requests(service: &Service, ids: &[String]) -> i64 {
    ids.iter()
        .map(|id| {
            service.batch(id)["request_counts"]["completed"]
                .as_i64()
                .unwrap_or(0)
        })
        .sum()
}

/// Whether a worker under `work` resumed a batch another claim had started (its log says so).
fn took_over(work: &Path) -> bool {
    let Ok(dirs) = std::fs::read_dir(work) else {
        return false;
    };
    dirs.flatten().any(|d| {
        std::fs::read_to_string(d.path().join("worker.log"))
            .is_ok_and(|log| log.contains("resuming from the state of claim"))
    })
}

#[test]
fn replicas_and_pools_finish_every_batch_through_a_kill_and_a_freeze() {
    let cluster = Cluster::start();
    let sim = Sim::start(&[
        "--ttft-ms",
        "100",
        "--ms-per-token",
        "0",
        "--max-running",
        "1000",
    ]);
    let replicas = [cluster.api("r1"), cluster.api("r2")];
    let pool = [
        "--engine-url",
        &sim.url,
        "--max-concurrency",
        "4",
        "--max-concurrent-batches",
        "10",
    ];
    // The workers' info lines (in their worker.log): the test watches them for a take-over.
    let info = [(
        "BATCH_RUNNER_LOG",
        "warn,batch_service::worker=info".to_owned(),
    )];
    let mut a = cluster.pool("a", &pool, &info);
    let b = cluster.pool("b", &pool, &info);

    // 20 batches of 400 requests; each file uploaded through one replica and its batch created
    // through the other.
    let batches: Vec<String> = (0..20)
        .map(|i| {
            let file =
                replicas[i % 2].upload("in.jsonl", &jsonl(&numbered_lines(&format!("b{i}-"), 400)));
            replicas[(i + 1) % 2].create_batch(&file, "24h")
        })
        .collect();

    // Freeze pool B (the pool and its workers: a host that stops answering) past its lease,
    // until pool A, done with its own batches, has taken some of B's over from their
    // checkpoints in object storage; then let B's workers wake up to find their leases gone.
    wait_for(LONG, || {
        (completed_requests(&replicas[0], &batches) >= 1000).then_some(())
    });
    b.signal_group("STOP");
    let a_work = cluster.data_dir("a").join("work");
    wait_for(LONG, || took_over(&a_work).then_some(()));
    b.signal_group("CONT");
    // Then kill pool A outright (its workers see it gone, checkpoint and give the batches up),
    // while it runs what it took from B: B takes them back.
    wait_for(LONG, || {
        (completed_requests(&replicas[1], &batches) >= 6000).then_some(())
    });
    let _ = a.child.kill();
    let _ = a.child.wait();

    for (i, id) in batches.iter().enumerate() {
        let done = replicas[i % 2].wait_status(id, &["completed", "failed", "expired"], LONG);
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["request_counts"]["completed"], 400, "{done}");
        let output =
            replicas[(i + 1) % 2].content(done["output_file_id"].as_str().expect("output"));
        assert_eq!(unique_ids(&output).len(), 400, "batch {i}");
    }
    // The results API on both replicas (neither ran a batch): the result files and the index
    // the worker stored come from object storage, copied to each replica's cache once.
    for replica in &replicas {
        for _ in 0..2 {
            let r = replica.call(
                "GET",
                &format!("/v1/batches/{}/results?limit=1000", batches[0]),
                None,
            );
            assert_eq!(r.status, 200, "{}", r.text());
            let lines: Vec<u64> = r.json()["data"]
                .as_array()
                .expect("data")
                .iter()
                .filter_map(|i| i["line"].as_u64())
                .collect();
            assert_eq!(lines, (1..=400).collect::<Vec<u64>>());
        }
        let one = replica.call(
            "GET",
            &format!("/v1/batches/{}/results/b0-7", batches[0]),
            None,
        );
        assert_eq!(one.status, 200, "{}", one.text());
        let one = one.json();
        assert_eq!(
            (one["line"].as_u64(), one["input"]["custom_id"].as_str()),
            (Some(8), Some("b0-7"))
        );
    }
}

#[test]
fn a_frozen_worker_cannot_overwrite_the_new_owner() {
    let cluster = Cluster::start();
    let sim = Sim::start(&["--ttft-ms", "50", "--ms-per-token", "0"]);
    let service = cluster.api("api");
    let (frozen, batch) = frozen_mid_batch(&cluster, &service, &sim, 50);

    // Another pool takes the batch over once the lease runs out and finishes it.
    let _other = cluster.pool("other", &one_engine(&sim), &[]);
    let done = service.wait_status(&batch, &["completed", "failed"], LONG);
    assert_eq!(done["status"], "completed", "{done}");
    let output_id = done["output_file_id"].as_str().expect("output").to_owned();
    let output = service.content(&output_id);
    assert_eq!(unique_ids(&output).len(), 300);
    // Resumed from the frozen worker's last checkpoint in object storage: re-sent requests are
    // bounded by one checkpoint interval plus those in flight.
    let sent = sim.metric("sglang:num_requests_total");
    assert!(
        sent < 300.0 + 60.0,
        "the engine saw {sent} requests for 300 lines"
    );

    // The frozen worker wakes up, finds its lease gone, and changes nothing.
    frozen.signal_group("CONT");
    wait_for(LONG, || worker_pids(&batch).is_empty().then_some(()));
    let after = service.batch(&batch);
    for field in [
        "status",
        "output_file_id",
        "error_file_id",
        "completed_at",
        "request_counts",
    ] {
        assert_eq!(
            after[field], done[field],
            "{field} changed after the frozen worker woke"
        );
    }
    assert_eq!(service.content(&output_id), output);
    let log = std::fs::read_to_string(
        cluster
            .data_dir("frozen")
            .join("work")
            .join(&batch)
            .join("worker.log"),
    )
    .expect("the frozen worker's log");
    assert!(log.contains("lease was taken over"), "{log}");
}

#[test]
fn a_damaged_checkpoint_costs_re_sent_requests_not_the_batch() {
    let cluster = Cluster::start();
    let sim = Sim::start(&["--ttft-ms", "50", "--ms-per-token", "0"]);
    let service = cluster.api("api");
    let (_frozen, batch) = frozen_mid_batch(&cluster, &service, &sim, 100);

    // Cut every output segment of the frozen claim in half, as lost or truncated objects
    // would: its state no longer adds up. (Every one: the largest alone may be a segment the
    // worker uploaded but had not yet recorded in its manifest when it froze, which a restore
    // rightly ignores.)
    let segments: Vec<_> = cluster
        .moto
        .objects(&format!("svc/work/{batch}/fence-1"))
        .into_iter()
        .filter(|(path, size)| path.as_ref().ends_with(".output") && *size > 1)
        .collect();
    assert!(!segments.is_empty(), "no output segment");
    for (segment, size) in segments {
        let bytes = cluster.moto.get_at(&segment).expect("segment");
        cluster
            .moto
            .replace(&segment, bytes[..(size / 2) as usize].to_vec());
    }

    // The next claim finds the damage, starts the batch over instead of failing it, and
    // finishes it with one result per line.
    let _other = cluster.pool("other", &one_engine(&sim), &[]);
    let done = service.wait_status(&batch, &["completed", "failed"], LONG);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["x_batch_runner"]["worker_restarts"], 0, "{done}");
    let output = service.content(done["output_file_id"].as_str().expect("output"));
    assert_eq!(unique_ids(&output).len(), 300);
    let sent = sim.metric("sglang:num_requests_total");
    assert!(
        sent >= 300.0 + 100.0,
        "the engine saw {sent} requests: the damaged state was resumed from"
    );
}

#[test]
fn each_pool_runs_only_the_models_its_engines_serve() {
    let cluster = Cluster::start();
    let fast = ["--ttft-ms", "5", "--ms-per-token", "0"];
    let (alpha, beta) = (Sim::start(&fast), Sim::start(&fast));
    let service = cluster.api("api");
    // Two GPU hosts, one model each, and no default engine: each pool claims only its model.
    let pools: Vec<Pool> = [("alpha", &alpha), ("beta", &beta)]
        .iter()
        .map(|(model, sim)| {
            let engine = format!("{model}={}", sim.url);
            cluster.pool(model, &["--model-engine", &engine], &[])
        })
        .collect();

    let batch_of = |model: &str, i: usize, lines: usize| {
        let lines: Vec<_> = (0..lines)
            .map(|n| chat_line(&format!("{model}{i}-{n}"), json!({ "model": model })))
            .collect();
        let file = service.upload("in.jsonl", &jsonl(&lines));
        service.create_batch(&file, "24h")
    };
    let batches: Vec<String> = (0..3)
        .map(|i| batch_of("alpha", i, 40))
        .chain((0..2).map(|i| batch_of("beta", i, 25)))
        .collect();
    for id in &batches {
        let done = service.wait_status(id, &["completed", "failed", "expired"], LONG);
        assert_eq!(done["status"], "completed", "{done}");
    }
    // Every request went to its model's engine, and only there.
    assert_eq!(alpha.metric("sglang:num_requests_total"), 120.0);
    assert_eq!(beta.metric("sglang:num_requests_total"), 50.0);

    // An image batch: its payloads become files in object storage, rows in PostgreSQL, read
    // back through the API replica (which ran nothing).
    let lines: Vec<_> = (0..4)
        .map(|n| {
            json!({"custom_id": format!("img{n}"), "method": "POST",
                   "url": "/v1/images/generations",
                   "body": {"model": "beta", "prompt": format!("picture {n}")}})
        })
        .collect();
    let file = service.upload("images.jsonl", &jsonl(&lines));
    let r = service.call(
        "POST",
        "/v1/batches",
        Some(
            &json!({"input_file_id": file, "endpoint": "/v1/images/generations",
                     "completion_window": "24h"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let done = service.wait_status(&id, &["completed", "failed", "expired"], LONG);
    assert_eq!(done["request_counts"]["completed"], 4, "{done}");
    let output = service.content(done["output_file_id"].as_str().expect("output"));
    for line in crate::common::json_lines(&output) {
        let image = &line["response"]["body"]["data"][0]["file"];
        let content = service.content(image["id"].as_str().expect("file id"));
        assert!(content.starts_with(b"\x89PNG"), "{image}");
        assert_eq!(image["bytes"], content.len());
    }
    drop(pools);
}

/// Two replicas deliver webhooks from one PostgreSQL outbox: each event reaches the receiver
/// once, whichever replica claims it.
#[test]
fn two_replicas_deliver_each_webhook_event_once() {
    use crate::webhooks::{Receiver, SECRET};
    let cluster = Cluster::start();
    let receiver = Receiver::start(cluster.dir.path(), 0, 0);
    let hooks = cluster.dir.path().join("hooks");
    std::fs::write(&hooks, format!("a {} {SECRET}\n", receiver.url())).expect("write");
    let sim = Sim::start(&["--ttft-ms", "1", "--ms-per-token", "0"]);
    let hooks = hooks.to_str().expect("utf-8");
    let replica = |name: &str| {
        let mut extra = one_engine(&sim).to_vec();
        extra.extend_from_slice(&[
            "--webhook-file",
            hooks,
            "--webhook-allow-private",
            "--max-concurrent-batches",
            "4",
        ]);
        let flags = cluster.flags(&extra);
        Service::start_with(&cluster.data_dir(name), &refs(&flags), &cluster.moto.env())
    };
    let (a, b) = (replica("a"), replica("b"));
    let file = a.upload("in.jsonl", &jsonl(&numbered_lines("w-", 2)));
    let ids: Vec<String> = (0..30)
        .map(|i| [&a, &b][i % 2].create_batch(&file, "24h"))
        .collect();
    for id in &ids {
        a.wait_status(id, &["completed"], LONG);
    }
    let got = receiver.wait_verified(ids.len());
    // Time for a second delivery of any event to show up, had there been one.
    std::thread::sleep(Duration::from_secs(3));
    let got_after = receiver.wait_verified(got.len());
    let mut delivered: Vec<String> = got_after
        .iter()
        .map(|e| e["data"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    delivered.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(delivered, want, "each batch's event exactly once");
}

//! Which waiting batch runs next: owners share the worker slots, and within an owner the
//! batch whose window ends first goes first.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::service::{KEY_A, KEY_B, Service};
use crate::common::{Sim, jsonl, numbered_lines};

const LONG: Duration = Duration::from_secs(120);

/// One worker slot; owner A has a batch running and three waiting (the last one with a 1-hour
/// window), owner B then submits one: B's goes next, then A's urgent one, then A's others in
/// creation order.
#[test]
fn a_free_slot_goes_to_the_owner_waiting_longest_then_to_the_closest_deadline() {
    // Each batch takes about 1.2 s (3 requests of 400 ms, one at a time), so the times at which
    // they start (whole seconds) are in order.
    let sim = Sim::start(&["--ttft-ms", "400", "--ms-per-token", "0"]);
    let (_dir, service) = Service::with_engine(
        &sim,
        &[
            "--max-concurrent-batches",
            "1",
            "--max-concurrency",
            "1",
            "--min-completion-window",
            "1m",
        ],
    );
    let lines = jsonl(&numbered_lines("s-", 3));
    let create = |key: &str, window: &str| -> String {
        let file = service.upload_as(key, "in.jsonl", &lines);
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                          "completion_window": window});
        let r = service.call_as(key, "POST", "/v1/batches", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_str().expect("id").to_owned()
    };
    let first = create(KEY_A, "24h");
    service.wait_status(&first, &["in_progress"], LONG);
    let a_older = create(KEY_A, "24h");
    let a_newer = create(KEY_A, "24h");
    let a_urgent = create(KEY_A, "1h");
    let b_only = create(KEY_B, "24h");
    let started = |id: &str, key: &str| -> i64 {
        let done = crate::common::wait_for(LONG, || {
            let r = service.call_as(key, "GET", &format!("/v1/batches/{id}"), None);
            let b: Value = r.json();
            (b["status"] == "completed").then_some(b)
        });
        done["in_progress_at"].as_i64().expect("in_progress_at")
    };
    let order = [
        started(&b_only, KEY_B),
        started(&a_urgent, KEY_A),
        started(&a_older, KEY_A),
        started(&a_newer, KEY_A),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "start times (B's, A's urgent, A's older, A's newer): {order:?}"
    );
}

//! The simulated engine on its own: readiness line, capacity model and its queue limit.

use crate::common::service::post_chat;
use crate::common::{Sim, http_get, prometheus_value};

#[test]
fn serves_models_health_and_sglang_gauges() {
    let sim = Sim::instant(&["--model", "tiny"]);
    assert!(
        http_get(&format!("{}/v1/models", sim.url))
            .expect("models")
            .contains("\"id\":\"tiny\"")
    );
    assert_eq!(
        http_get(&format!("{}/health", sim.url)).expect("health"),
        ""
    );
    let metrics = http_get(&format!("{}/metrics", sim.url)).expect("metrics");
    assert_eq!(
        prometheus_value(&metrics, "sglang:num_running_reqs"),
        Some(0.0)
    );
    assert_eq!(
        prometheus_value(&metrics, "sglang:num_queue_reqs"),
        Some(0.0)
    );
}

#[test]
fn a_full_queue_answers_503() {
    // One slot, no queue, and a slow request holding the slot.
    let sim = Sim::start(&[
        "--max-running",
        "1",
        "--max-queued",
        "0",
        "--ttft-ms",
        "1500",
    ]);
    let url = sim.url.clone();
    let slow = std::thread::spawn(move || post_chat(&url, r#"{"model":"m","messages":[]}"#).status);
    crate::common::wait_for(std::time::Duration::from_secs(5), || {
        (sim.metric("sglang:num_running_reqs") == 1.0).then_some(())
    });
    assert_eq!(
        post_chat(&sim.url, r#"{"model":"m","messages":[]}"#).status,
        503
    );
    assert_eq!(slow.join().expect("join"), 200);
    assert_eq!(post_chat(&sim.url, "not json").status, 400);
}

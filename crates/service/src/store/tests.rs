//! The store's behaviour, as a suite any backend must pass (run here on SQLite; the same
//! functions take a PostgreSQL URL).

use std::time::Duration;

use super::*;

fn file(id: &str, owner: &str, expires_at: Option<i64>) -> FileRow {
    FileRow {
        id: id.into(),
        owner: owner.into(),
        filename: "in.jsonl".into(),
        purpose: "batch".into(),
        bytes: 10,
        created_at: 1,
        expires_at,
        blob: id.into(),
    }
}

fn batch(id: &str, input: &str) -> BatchRow {
    BatchRow {
        id: id.into(),
        owner: "a".into(),
        endpoint: "/v1/chat/completions".into(),
        input_file_id: input.into(),
        input_blob: input.into(),
        completion_window: "24h".into(),
        status: BatchStatus::Validating,
        created_at: 1,
        expires_at: 86401,
        ..BatchRow::default()
    }
}

async fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::open(&url, true).await.expect("open");
    // Migrations run twice are a no-op.
    Store::open(&url, true).await.expect("reopen");
    (dir, store)
}

pub async fn files_are_paged_scoped_and_expired(store: &Store) {
    for i in 0..5 {
        store
            .insert_file(&file(&format!("file-{i}"), "a", None))
            .await
            .expect("insert");
    }
    store
        .insert_file(&file("file-9", "b", Some(100)))
        .await
        .expect("insert");
    let ids = |rows: Vec<FileRow>| rows.into_iter().map(|f| f.id).collect::<Vec<_>>();
    let page = store.files("a", None, None, 2, true).await.expect("list");
    assert_eq!(ids(page), ["file-4", "file-3"]);
    let next = store
        .files("a", None, Some("file-3"), 10, true)
        .await
        .expect("list");
    assert_eq!(ids(next), ["file-2", "file-1", "file-0"]);
    let asc = store
        .files("a", Some("batch"), Some("file-1"), 10, false)
        .await
        .expect("list");
    assert_eq!(ids(asc), ["file-2", "file-3", "file-4"]);
    assert!(
        store
            .files("a", Some("vision"), None, 10, true)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store.file("a", "file-9").await.expect("get").is_none(),
        "another owner's file"
    );
    assert!(store.delete_file("b", "file-1").await.is_ok_and(|d| !d));

    // A deleted input stays while an unfinished batch reads it.
    store
        .insert_batch(&batch("batch_1", "file-1"))
        .await
        .expect("batch");
    assert!(store.delete_file("a", "file-1").await.expect("delete"));
    assert!(store.file("a", "file-1").await.expect("get").is_none());
    assert!(store.garbage().await.expect("garbage").is_empty());
    assert_eq!(store.expire_files(99).await.expect("expire"), 0);
    assert_eq!(store.expire_files(100).await.expect("expire"), 1);
    let garbage = ids(store.garbage().await.expect("garbage"));
    assert_eq!(garbage, ["file-9"]);
    store.purge_file("file-9").await.expect("purge");
    assert!(store.garbage().await.expect("garbage").is_empty());
}

/// A batch's media payload inserted twice (a resumed worker) is one row; deleting the ended
/// batch deletes it, and leaves other files alone.
pub async fn media_files_are_stored_once_and_go_with_their_batch(store: &Store) {
    let mut ended = batch("batch_m", "file-min");
    ended.status = BatchStatus::Completed;
    store.insert_batch(&ended).await.expect("batch");
    let payload = FileRow::batch_output(&ended, "file-m1".into(), "batch_m_r1.png".into(), 7);
    for _ in 0..2 {
        store
            .insert_media_file(&payload, "batch_m")
            .await
            .expect("stored (again)");
    }
    store
        .insert_file(&file("file-other", "a", None))
        .await
        .expect("insert");
    let found = store.file("a", "file-m1").await.expect("get").expect("row");
    assert_eq!((found.purpose.as_str(), found.bytes), ("batch_output", 7));
    assert_eq!(
        store.delete_batch("a", "batch_m").await.expect("delete"),
        Some(true)
    );
    assert!(store.file("a", "file-m1").await.expect("get").is_none());
    assert!(store.file("a", "file-other").await.expect("get").is_some());
}

pub async fn claims_are_exclusive_and_fenced(store: &Store) {
    store
        .insert_file(&file("file-in", "a", None))
        .await
        .expect("insert");
    store
        .insert_batch(&batch("batch_x", "file-in"))
        .await
        .expect("batch");
    let lease = Duration::from_secs(60);
    let claimable = || async {
        let found = store
            .claimable(now_ms(), 10, None, false)
            .await
            .expect("claimable");
        found
            .into_iter()
            .filter(|c| c.id == "batch_x")
            .map(|c| (c.id, c.fence))
            .collect::<Vec<_>>()
    };
    assert_eq!(claimable().await, [("batch_x".to_owned(), 0)]);
    let first = store.claim("batch_x", 0, "w1", lease).await.expect("claim");
    assert_eq!(first, Some(1));
    // The same stale view cannot claim twice, and a held lease is not claimable.
    assert_eq!(
        store.claim("batch_x", 0, "w2", lease).await.expect("claim"),
        None
    );
    assert!(claimable().await.is_empty());
    assert_eq!(
        store
            .start("batch_x", 1, 3, Some("m"), None)
            .await
            .expect("start"),
        Ok(())
    );

    // The lease runs out (released here): a second worker takes over with fence 2.
    store.release("batch_x", 1).await.expect("release");
    assert_eq!(
        store.claim("batch_x", 1, "w2", lease).await.expect("claim"),
        Some(2)
    );
    // The first worker, back from a pause, can write nothing.
    assert_eq!(
        store.renew("batch_x", 1, lease).await.expect("renew"),
        Err(LeaseLost)
    );
    let counts = Counts {
        completed: 3,
        ..Counts::default()
    };
    assert_eq!(
        store
            .report("batch_x", 1, &counts, "{}")
            .await
            .expect("report"),
        Err(LeaseLost)
    );
    let stale = Finish {
        total: None,
        status: BatchStatus::Completed,
        counts: counts.clone(),
        progress: "{}".into(),
        output: Some(file("file-stale", "a", None)),
        errors: None,
    };
    assert_eq!(
        store.finish("batch_x", 1, &stale).await.expect("finish"),
        Err(LeaseLost)
    );
    assert!(
        store.file("a", "file-stale").await.expect("get").is_none(),
        "no file from a stale worker"
    );
    assert_eq!(
        store.fail("batch_x", 1, "[]").await.expect("fail"),
        Err(LeaseLost)
    );
    // The current owner's writes land.
    let status = store
        .report("batch_x", 2, &counts, "{}")
        .await
        .expect("report");
    assert_eq!(status, Ok(BatchStatus::InProgress));
    // A restarted worker reports from its last checkpoint, behind what was shown: the counts a
    // client sees never go back.
    let behind = Counts {
        completed: 1,
        failed: 2,
        ..Counts::default()
    };
    store
        .report("batch_x", 2, &behind, "{}")
        .await
        .expect("report")
        .expect("owner");
    let b = store
        .batch("a", "batch_x")
        .await
        .expect("get")
        .expect("batch");
    assert_eq!((b.completed, b.failed), (3, 2));
    let done = Finish {
        total: None,
        output: Some(file("file-out", "a", None)),
        ..stale
    };
    assert_eq!(
        store.finish("batch_x", 2, &done).await.expect("finish"),
        Ok(())
    );
    let b = store
        .batch("a", "batch_x")
        .await
        .expect("get")
        .expect("batch");
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(b.output_file_id.as_deref(), Some("file-out"));
    assert!(b.times.completed_at.is_some() && b.times.finalizing_at.is_some());
    assert!(claimable().await.is_empty());
}

pub async fn pools_claim_only_their_models(store: &Store) {
    let mut b = batch("batch_m", "file-in");
    b.model = Some("llama".into());
    store.insert_batch(&b).await.expect("batch");
    let ids = |found: Vec<Claimable>| found.into_iter().map(|c| c.id).collect::<Vec<_>>();
    let llama = ["llama".to_owned(), "qwen".to_owned()];
    let found = store
        .claimable(now_ms(), 100, Some(&llama), false)
        .await
        .expect("claimable");
    assert_eq!(ids(found), ["batch_m"]);
    let other = ["mistral".to_owned()];
    assert!(
        store
            .claimable(now_ms(), 100, Some(&other), false)
            .await
            .expect("claimable")
            .is_empty()
    );
    assert!(
        store
            .claimable(now_ms(), 100, Some(&[]), false)
            .await
            .expect("claimable")
            .is_empty()
    );
    assert!(
        ids(store
            .claimable(now_ms(), 100, None, false)
            .await
            .expect("claimable"))
        .contains(&"batch_m".to_owned())
    );
}

pub async fn crashes_fail_a_batch_after_the_limit(store: &Store) {
    store
        .insert_batch(&batch("batch_c", "file-in"))
        .await
        .expect("batch");
    let lease = Duration::from_secs(60);
    let f1 = store
        .claim("batch_c", 0, "w", lease)
        .await
        .expect("claim")
        .expect("won");
    assert!(
        !store
            .record_crash(
                "batch_c",
                f1,
                2,
                "exit code 3",
                "exit code 3; log: /srv/w.log"
            )
            .await
            .expect("crash")
    );
    let f2 = store
        .claim("batch_c", f1, "w", lease)
        .await
        .expect("claim")
        .expect("won");
    assert!(
        store
            .record_crash(
                "batch_c",
                f2,
                2,
                "killed by signal 9",
                "signal 9; log: /srv/w.log"
            )
            .await
            .expect("crash")
    );
    let b = store
        .batch_by_id("batch_c")
        .await
        .expect("get")
        .expect("batch");
    assert_eq!(b.status, BatchStatus::Failed);
    let errors = b.errors.unwrap_or_default();
    assert!(
        errors.contains("killed by signal 9") && !errors.contains("/srv"),
        "{errors}"
    );
    assert_eq!(b.last_error.as_deref(), Some("signal 9; log: /srv/w.log"));
    // Its event waits for the results the scheduler attaches next.
    assert_eq!(
        event_state(store, "batch_c").await,
        ("held".to_owned(), false)
    );
    let nothing = Counts::default();
    assert!(
        store
            .attach_results("batch_c", None, None, &nothing, "{}")
            .await
            .expect("attach")
    );
    assert_eq!(
        event_state(store, "batch_c").await,
        ("pending".to_owned(), true)
    );
}

/// Two creates racing under one idempotency key: one batch is inserted, the other create is
/// told the winner's batch.
pub async fn two_creates_under_one_key_make_one_batch(store: &Store) {
    let (mut one, mut two) = (batch("batch_i1", "file-in"), batch("batch_i2", "file-in"));
    (one.created_at, two.created_at) = (now_secs(), now_secs());
    let (a, b) = tokio::join!(
        store.insert_batch_keyed(&one, "k", "d1"),
        store.insert_batch_keyed(&two, "k", "d1")
    );
    let (a, b) = (a.expect("insert one"), b.expect("insert two"));
    let winner = match (&a, &b) {
        (None, Some(earlier)) => (earlier.batch_id.as_str(), "batch_i1"),
        (Some(earlier), None) => (earlier.batch_id.as_str(), "batch_i2"),
        other => panic!("one insert only: {other:?}"),
    };
    assert_eq!(winner.0, winner.1, "the loser is told the winner's batch");
    let loser = if winner.1 == "batch_i1" {
        "batch_i2"
    } else {
        "batch_i1"
    };
    assert!(store.batch("a", loser).await.expect("read").is_none());
    let held = store
        .idempotent("a", "k")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        (held.digest.as_str(), held.batch_id.as_str()),
        ("d1", winner.1)
    );
}

/// The state of a batch's event, and whether a claim gets it now.
async fn event_state(store: &Store, batch: &str) -> (String, bool) {
    let event = store.event_of(batch).await.expect("event").expect("one");
    let claimed = store.claim_events(now_ms(), 1, 100).await.expect("claim");
    (event.state, claimed.iter().any(|e| e.batch_id == batch))
}

pub async fn cancel_moves_only_running_batches(store: &Store) {
    store
        .insert_batch(&batch("batch_k", "file-in"))
        .await
        .expect("batch");
    store
        .request_cancel("b", "batch_k", 5)
        .await
        .expect("cancel");
    assert_eq!(
        store
            .batch_by_id("batch_k")
            .await
            .expect("get")
            .expect("b")
            .status,
        BatchStatus::Validating
    );
    store
        .request_cancel("a", "batch_k", 5)
        .await
        .expect("cancel");
    let b = store.batch_by_id("batch_k").await.expect("get").expect("b");
    assert_eq!(
        (b.status.as_str(), b.times.cancelling_at),
        ("cancelling", Some(5))
    );
}

/// Ending a batch writes exactly one event in the same transaction; two replicas claiming at
/// once never both get an event; a result recorded under a stale fence is refused.
pub async fn events_are_written_with_the_end_and_claimed_once(store: &Store) {
    store
        .insert_batch(&batch("batch_ev", "file-in"))
        .await
        .expect("batch");
    let fence = store
        .claim("batch_ev", 0, "w1", Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("claimed");
    assert!(store.event_of("batch_ev").await.expect("event").is_none());
    let finish = Finish {
        total: Some(1),
        status: BatchStatus::Completed,
        counts: Counts::default(),
        progress: "{}".into(),
        output: None,
        errors: None,
    };
    assert_eq!(
        store
            .finish("batch_ev", fence, &finish)
            .await
            .expect("finish"),
        Ok(())
    );
    // A second finish (a stale worker) neither ends the batch again nor adds an event.
    assert_eq!(
        store
            .finish("batch_ev", fence - 1, &finish)
            .await
            .expect("finish"),
        Err(LeaseLost)
    );
    let event = store
        .event_of("batch_ev")
        .await
        .expect("event")
        .expect("one event");
    assert_eq!(
        (event.kind.as_str(), event.state.as_str()),
        ("batch.completed", "pending")
    );
    assert!(event.id.starts_with("evt_"));

    let now = now_ms();
    let (a, b) = tokio::join!(
        store.claim_events(now, 60_000, 100),
        store.claim_events(now, 60_000, 100)
    );
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    let mine = |v: &[WebhookEvent]| v.iter().filter(|e| e.batch_id == "batch_ev").count();
    assert_eq!(
        mine(&a) + mine(&b),
        1,
        "exactly one replica holds the event"
    );
    let held = a
        .iter()
        .chain(&b)
        .find(|e| e.batch_id == "batch_ev")
        .expect("held")
        .clone();
    // Held: nobody else gets it until the lease ends.
    assert_eq!(
        mine(&store.claim_events(now, 60_000, 100).await.expect("claim")),
        0
    );
    let retry = Recorded::Retry {
        status: Some(500),
        error: "answered 500".into(),
        next_attempt_at: now + 1,
    };
    assert!(
        !store
            .record_attempt(&held.id, held.fence - 1, &retry)
            .await
            .expect("stale")
    );
    assert!(
        store
            .record_attempt(&held.id, held.fence, &retry)
            .await
            .expect("record")
    );
    let again = store
        .claim_events(now + 2, 60_000, 100)
        .await
        .expect("claim");
    let again = again.iter().find(|e| e.id == held.id).expect("due again");
    assert_eq!((again.attempts, again.last_status), (1, Some(500)));
    let delivered = Recorded::Delivered { status: 204 };
    assert!(
        store
            .record_attempt(&again.id, again.fence, &delivered)
            .await
            .expect("record")
    );
    let done = store
        .event_of("batch_ev")
        .await
        .expect("event")
        .expect("event");
    assert_eq!((done.state.as_str(), done.attempts), ("delivered", 2));
    assert_eq!(
        store.resend_events(Some(&done.id)).await.expect("resend"),
        0
    );
}

/// Each owner's earliest deadlines come first, `per_owner` of each, all in deadline order;
/// the slots held are counted per owner.
pub async fn waiting_batches_go_by_deadline_per_owner(store: &Store) {
    for (id, owner, expires_at) in [
        ("batch_d1", "d", 5000),
        ("batch_d2", "d", 300),
        ("batch_d3", "d", 400),
        ("batch_e1", "e", 350),
    ] {
        let mut b = batch(id, "file-in");
        b.owner = owner.into();
        b.expires_at = expires_at;
        store.insert_batch(&b).await.expect("batch");
    }
    let mine = |found: Vec<Claimable>| {
        found
            .into_iter()
            .filter(|c| c.owner == "d" || c.owner == "e")
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    let now = now_ms();
    let all = store
        .claimable(now, 10, None, false)
        .await
        .expect("claimable");
    assert_eq!(mine(all), ["batch_d2", "batch_e1", "batch_d3", "batch_d1"]);
    let two = store
        .claimable(now, 2, None, false)
        .await
        .expect("claimable");
    assert_eq!(mine(two), ["batch_d2", "batch_e1", "batch_d3"]);
    let fence = store
        .claim("batch_d1", 0, "w", Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("claimed");
    let held = store.running_by_owner(now_ms()).await.expect("running");
    assert_eq!((held.get("d"), held.get("e")), (Some(&1), None));
    store.release("batch_d1", fence).await.expect("release");
}

/// The planner's and accounting's sums read alike on every backend (PostgreSQL's SUM of a
/// BIGINT is NUMERIC, which the `Any` driver cannot read unless cast back).
pub async fn planning_sums_read_alike(store: &Store) {
    let mut b = batch("batch_p1", "file-in");
    (b.owner, b.model, b.total, b.expires_at) = ("p".into(), Some("pm".into()), 10, 100);
    b.estimated_tokens = 40;
    store.insert_batch(&b).await.expect("batch");
    let mut b2 = batch("batch_p2", "file-in");
    (b2.owner, b2.model, b2.estimated_lines, b2.expires_at) =
        ("p".into(), Some("pm".into()), 7, 200);
    store.insert_batch(&b2).await.expect("batch");
    assert_eq!(
        store
            .work_ahead("pm", 200, "batch_p2")
            .await
            .expect("ahead"),
        WorkAhead {
            requests: 7,
            unstarted: 2
        }
    );
    let fence = store
        .claim("batch_p1", 0, "w", Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("claimed");
    store
        .start("batch_p1", fence, 10, Some("pm"), Some(("{}", 77)))
        .await
        .expect("start")
        .expect("fenced");
    // A pre-flight count replaces the estimate the quota reads.
    let started = store
        .batch("p", "batch_p1")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(started.preflight_report.as_deref(), Some("{}"));
    assert_eq!(started.estimated_tokens, 77);
    let counts = Counts {
        completed: 3,
        failed: 1,
        input_tokens: 30,
        output_tokens: 9,
        cached_tokens: 12,
        reasoning_tokens: 4,
    };
    store
        .report("batch_p1", fence, &counts, "{}")
        .await
        .expect("report")
        .expect("fenced");
    assert_eq!(
        store
            .work_ahead("pm", 200, "batch_p2")
            .await
            .expect("ahead"),
        WorkAhead {
            requests: 6 + 7,
            unstarted: 1
        }
    );
    assert_eq!(
        store
            .work_ahead("pm", 100, "batch_p1")
            .await
            .expect("ahead"),
        WorkAhead {
            requests: 6,
            unstarted: 0
        }
    );
    // What the throughput sampler reads: unfinished batches, and those that ended by id.
    let unfinished = store.unfinished_results().await.expect("unfinished");
    assert!(
        unfinished.contains(&("batch_p1".into(), "pm".into(), 4)),
        "{unfinished:?}"
    );
    let ended = store
        .results_of(&["batch_p1".into(), "batch_gone".into()])
        .await
        .expect("results");
    assert_eq!(
        ended,
        std::collections::HashMap::from([("batch_p1".to_owned(), 4)])
    );
    let running = store.running_progress(now_ms()).await.expect("progress");
    assert!(
        running.contains(&("pm".to_owned(), "{}".to_owned())),
        "{running:?}"
    );
    assert_eq!(
        store
            .enqueued_tokens("p", "batch_p2")
            .await
            .expect("tokens"),
        77
    );
    assert_eq!(
        store
            .enqueued_tokens("p", "batch_p1")
            .await
            .expect("tokens"),
        0
    );
    assert_eq!(store.created_since("p", 0).await.expect("count"), 2);
    let usage = store.usage(Some("p"), None, None).await.expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (
            usage[0].batches,
            usage[0].completed,
            usage[0].failed,
            usage[0].input_tokens,
            usage[0].cached_tokens,
            usage[0].reasoning_tokens
        ),
        (2, 3, 1, 30, 12, 4)
    );
    let rate = |per_second: f64| Throughput {
        per_second,
        tokens_per_second: per_second * 10.0,
        ..Throughput::default()
    };
    store.set_throughput("pm", &rate(12.5)).await.expect("set");
    store
        .set_throughput("pm", &rate(25.25))
        .await
        .expect("set again");
    assert_eq!(
        store.throughputs().await.expect("rates")["pm"].per_second,
        25.25
    );
    store.note_overhead("pm", 2.0).await.expect("overhead");
    store.note_overhead("pm", 1.0).await.expect("overhead");
    store
        .note_overhead("new", 0.5)
        .await
        .expect("a model not measured yet");
    let measured = store.throughputs().await.expect("rates");
    assert_eq!(measured["pm"].overhead_seconds, 1.7);
    assert_eq!(measured["pm"].per_second, 25.25);
    assert_eq!(measured["pm"].tokens_per_second, 252.5);
    assert_eq!(
        (measured["new"].per_second, measured["new"].overhead_seconds),
        (0.0, 0.5)
    );
    store.release("batch_p1", fence).await.expect("release");
}

#[tokio::test]
async fn sqlite_passes_the_store_suite() {
    let (_dir, store) = sqlite().await;
    files_are_paged_scoped_and_expired(&store).await;
    media_files_are_stored_once_and_go_with_their_batch(&store).await;
    claims_are_exclusive_and_fenced(&store).await;
    crashes_fail_a_batch_after_the_limit(&store).await;
    cancel_moves_only_running_batches(&store).await;
    pools_claim_only_their_models(&store).await;
    events_are_written_with_the_end_and_claimed_once(&store).await;
    waiting_batches_go_by_deadline_per_owner(&store).await;
    planning_sums_read_alike(&store).await;
    two_creates_under_one_key_make_one_batch(&store).await;
}

/// The PostgreSQL the machine runs (`BATCH_RUNNER_TEST_POSTGRES`, default the local `test`
/// database), in a schema of its own so tests never see each other's rows.
pub async fn postgres_schema() -> (String, String) {
    let base = std::env::var("BATCH_RUNNER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_{}", crate::ids::batch_id().to_ascii_lowercase());
    let admin = Store::open(&base, false)
        .await
        .expect("PostgreSQL is reachable");
    sqlx::query(sql(format!("CREATE SCHEMA {schema}")))
        .execute(&admin.pool)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    (url, schema)
}

#[tokio::test]
async fn postgres_passes_the_store_suite() {
    let (url, schema) = postgres_schema().await;
    // Replicas starting at once migrate one after the other.
    let (a, b) = tokio::join!(Store::open(&url, true), Store::open(&url, true));
    let store = a.expect("open");
    b.expect("open concurrently");
    assert!(store.postgres);
    files_are_paged_scoped_and_expired(&store).await;
    media_files_are_stored_once_and_go_with_their_batch(&store).await;
    claims_are_exclusive_and_fenced(&store).await;
    crashes_fail_a_batch_after_the_limit(&store).await;
    cancel_moves_only_running_batches(&store).await;
    pools_claim_only_their_models(&store).await;
    events_are_written_with_the_end_and_claimed_once(&store).await;
    waiting_batches_go_by_deadline_per_owner(&store).await;
    planning_sums_read_alike(&store).await;
    two_creates_under_one_key_make_one_batch(&store).await;
    sqlx::query(sql(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&store.pool)
        .await
        .expect("drop schema");
}

//! Both sources over one job: the running spool and the index of its final files answer the
//! same pages, lookups and failures.

use std::path::Path;

use super::index::{IndexedFiles, Sources, build};
use super::live::LiveResults;
use super::*;
use crate::output::finalize::{Destination, Order, finalize};
use crate::run::request::Ids;
use crate::state::spool::{Positions, Spool};

const LINES: u64 = 40;

/// A job of `LINES` lines (a blank line after line 10), its results appended in a scrambled
/// order: every 7th line failed, every 11th expired, line 13 cancelled, line 40 without a
/// result yet.
fn job(dir: &Path) -> (Spool, std::path::PathBuf) {
    let input = dir.join("input.jsonl");
    let mut text = String::new();
    for line in 1..=LINES {
        text.push_str(&format!(
            "{{\"custom_id\":\"req-{line}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{}}}}\n"
        ));
        if line == 10 {
            text.push('\n');
        }
    }
    std::fs::write(&input, text).expect("input");
    let mut spool = Spool::open(&dir.join("state"), Positions::default()).expect("spool");
    let ids = Ids::new("t".into());
    let mut order: Vec<u64> = (1..LINES).collect();
    order.sort_by_key(|l| (l * 17) % 23);
    for n in order {
        // Lines after the blank one are numbered one further in the file.
        let line = if n > 10 { n + 1 } else { n };
        let custom_id = format!("req-{n}");
        let record = if n == 13 {
            ids.error(
                line,
                Some(&custom_id),
                LineOutcome::Cancelled,
                "batch_cancelled",
                "c",
            )
        } else if n % 11 == 0 {
            ids.error(
                line,
                Some(&custom_id),
                LineOutcome::Expired,
                "batch_expired",
                "e",
            )
        } else if n % 7 == 0 {
            ids.error(
                line,
                Some(&custom_id),
                LineOutcome::EngineUnavailable,
                "engine_unavailable",
                &format!("down {n}"),
            )
        } else {
            let mut bytes = Vec::new();
            let body = batch_format::output::ResponseBody::parse(if n == 3 {
                // An answer holding another request's custom_id bytes.
                &b"{\"echo\":{\"custom_id\":\"req-5\",\"x\":1}}"[..]
            } else {
                &b"{\"ok\":true}"[..]
            })
            .expect("body")
            .0;
            let result = batch_format::output::LineResult::Response {
                status_code: 200,
                request_id: None,
                body: &body,
            };
            batch_format::output::write_line(
                &mut bytes,
                &ids.result_id(line),
                Some(&custom_id),
                &result,
            );
            crate::state::sink::Record {
                line,
                outcome: LineOutcome::Succeeded,
                bytes,
                usage: Default::default(),
                timing: Timing::default(),
            }
        };
        let timing = Timing {
            attempts: 1 + (n % 3) as u32,
            started_ms: 1000 + n,
            latency_ms: n as u32,
        };
        spool
            .append(record.line, record.outcome, &record.bytes, timing)
            .expect("append");
    }
    spool.flush().expect("flush");
    (spool, input)
}

fn lines_of(page: &ResultPage) -> Vec<u64> {
    page.data.iter().map(|i| i.line).collect()
}

fn all_pages(source: &dyn ResultSource, status: Option<ResultStatus>, limit: usize) -> Vec<u64> {
    let mut after = 0;
    let mut lines = Vec::new();
    loop {
        let page = source
            .page(&PageQuery {
                status,
                after,
                limit,
            })
            .expect("page");
        lines.extend(lines_of(&page));
        match page.data.last() {
            Some(last) if page.has_more => after = last.line,
            _ => return lines,
        }
    }
}

#[test]
fn a_running_job_and_its_index_answer_alike() {
    let dir = tempfile::tempdir().expect("temp");
    let (mut spool, input) = job(dir.path());
    let live = LiveResults::new(&dir.path().join("state"), Some(input.clone()), 1 << 20);

    let every = all_pages(&live, None, 6);
    assert_eq!(every.len(), 39, "{every:?}");
    assert!(
        every.windows(2).all(|w| w[0] < w[1]),
        "input order: {every:?}"
    );
    assert!(
        !every.contains(&41),
        "line 40 (file line 41) has no result yet"
    );
    let failed = all_pages(&live, Some(ResultStatus::Failed), 2);
    assert_eq!(
        failed,
        vec![7, 15, 22, 29, 36],
        "every 7th request (file lines)"
    );

    let detail = live.find("req-14").expect("find").expect("found");
    assert_eq!(detail.item.line, 15);
    assert_eq!(detail.item.status, ResultStatus::Failed);
    let input_line: serde_json::Value =
        serde_json::from_str(detail.input.as_ref().expect("input").get()).expect("json");
    assert_eq!(input_line["custom_id"], "req-14");
    let timing = detail.timing.expect("timing");
    assert_eq!(
        (timing.attempts, timing.retries, timing.latency_ms),
        (3, 2, 14)
    );
    assert!(live.find("req-40").expect("find").is_none());
    let echoed = live.find("req-5").expect("find").expect("found");
    assert_eq!(
        echoed.item.line, 5,
        "not line 3, whose answer holds its bytes"
    );
    assert!(
        live.find("req-1")
            .expect("find")
            .is_some_and(|d| d.item.custom_id.as_deref() == Some("req-1"))
    );
    let errors = live.errors(5).expect("errors");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].code.as_str(), errors[0].count),
        ("engine_unavailable", 5)
    );

    // The job finishes; its final files are indexed.
    let files = spool.files();
    let at = spool.flush().expect("flush");
    let (out, err) = (dir.path().join("out.jsonl"), dir.path().join("err.jsonl"));
    finalize(
        &files,
        at,
        Order::Input,
        &Destination {
            output: &out,
            errors: &err,
        },
    )
    .expect("finalize");
    let index = dir.path().join("results.idx");
    let sources = Sources {
        input: &input,
        output: Some(&out),
        errors: Some(&err),
        timings: Some(&files.timings),
        max_line_bytes: 1 << 20,
    };
    build(&sources, &index).expect("build");
    let indexed = IndexedFiles {
        index,
        output: Some(out),
        errors: Some(err),
        input: Some(input),
    }
    .open()
    .expect("open");
    assert_eq!(all_pages(&indexed, None, 6), every);
    for status in ResultStatus::ALL {
        assert_eq!(
            all_pages(&indexed, Some(status), 4),
            all_pages(&live, Some(status), 3),
            "{status:?}"
        );
    }
    assert_eq!(
        all_pages(&indexed, Some(ResultStatus::Cancelled), 4),
        vec![14]
    );
    let counts = indexed.counts();
    assert_eq!(counts.map(|(_, n)| n), [30, 5, 3, 1]);
    let found = indexed.find("req-14").expect("find").expect("found");
    assert_eq!(found.item.result.get(), detail.item.result.get());
    assert_eq!(
        found.input.map(|i| i.get().to_owned()),
        detail.input.map(|i| i.get().to_owned())
    );
    assert_eq!(found.timing.map(|t| t.attempts), Some(3));
    assert!(indexed.find("req-40").expect("find").is_none());
    assert!(indexed.find("req-400").expect("find").is_none());
    assert_eq!(indexed.errors(5).expect("errors"), errors);
    // A page past the end is empty.
    let past = indexed
        .page(&PageQuery {
            status: None,
            after: 1000,
            limit: 5,
        })
        .expect("page");
    assert!(past.data.is_empty() && !past.has_more);
}

#[test]
fn an_unflushed_result_ends_the_page_and_is_not_skipped() {
    let dir = tempfile::tempdir().expect("temp");
    let (_spool, input) = job(dir.path());
    let files = crate::state::spool::SpoolFiles::in_dir(&dir.path().join("state"));
    // The output spool loses its tail, as if the index had been flushed before it.
    let len = std::fs::metadata(&files.output).expect("meta").len();
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(&files.output)
        .expect("open");
    cut.set_len(len - 10).expect("cut");
    let live = LiveResults::new(&dir.path().join("state"), Some(input), 1 << 20);
    let every = all_pages(&live, None, 1000);
    let first = live
        .page(&PageQuery {
            status: None,
            after: 0,
            limit: 1000,
        })
        .expect("page");
    assert!(
        first.has_more,
        "a page cut at an unflushed result says there is more"
    );
    assert!(every.len() < 39);
    assert!(every.windows(2).all(|w| w[0] < w[1]));
}

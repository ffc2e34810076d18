//! Ending a job that cannot run any more (the service's worker for it kept dying): what it
//! finished is the user's. Its checkpointed results become the final files, as a normal finalize
//! makes them, and every line without a result is added to the error file with a code that says
//! why, as an expired or cancelled job's unfinished lines are.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use crate::input::InputFingerprint;
use crate::input::reader::{Content, LineReader};
use crate::output::finalize::{Destination, Order, finalize};
use crate::run::Ids;
use crate::state::outcome::LineOutcome;
use crate::state::spool::SpoolFiles;
use crate::state::{self, Manifest, NewJob};

/// What the final files hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Salvaged {
    pub succeeded: u64,
    /// Lines the engine failed (not the unfinished ones).
    pub failed: u64,
    /// Lines written with `code` because they never got a result.
    pub unfinished: u64,
}

/// Writes `to` from the job state in `state_dir` (none: nothing was finished) and adds a
/// `code` / `message` error line for every non-blank line of `input` without a result. Running
/// it again after a crash gives the same files. With no state, this is also how a job cancelled
/// before it sent anything ends (`batch_cancelled` for every line).
pub fn salvage(
    state_dir: &Path,
    input: &Path,
    to: &Destination<'_>,
    max_line_bytes: usize,
    code: &str,
    message: &str,
) -> io::Result<Salvaged> {
    let manifest = Manifest::load(state_dir)?;
    let (done, counts, run_tag) = match manifest {
        Some(m) => {
            let recorded = InputFingerprint::recorded(&m.input_fingerprint);
            let job = NewJob {
                input: &m.input,
                fingerprint: &recorded,
                run_tag: m.run_tag.clone(),
            };
            let opened = state::open(state_dir, job).map_err(io::Error::other)?;
            let at = opened.manifest.positions;
            drop(opened.spool);
            finalize(&SpoolFiles::in_dir(state_dir), at, Order::Input, to)
                .map_err(io::Error::other)?;
            (opened.done, opened.counts, m.run_tag)
        }
        None => {
            // Nothing was checkpointed (or nothing ran): every line is unfinished.
            for path in [to.output, to.errors] {
                std::fs::File::create(path)?.sync_all()?;
            }
            (
                crate::bitset::BitSet::default(),
                [0; LineOutcome::ALL.len()],
                crate::random_tag(),
            )
        }
    };
    let ids = Ids::new(run_tag);
    let mut errors = io::BufWriter::new(OpenOptions::new().append(true).open(to.errors)?);
    let mut reader = LineReader::new(std::fs::File::open(input)?, max_line_bytes);
    let mut unfinished = 0;
    while let Some(line) = reader.next_line()? {
        if line.content.is_blank() || done.contains(line.number) {
            continue;
        }
        let custom_id = match line.content {
            Content::Text(text) => batch_format::input::custom_id_of(text),
            Content::TooLong => None,
        };
        let record = ids.error(
            line.number,
            custom_id.as_deref(),
            LineOutcome::EngineUnavailable,
            code,
            message,
        );
        errors.write_all(&record.bytes)?;
        unfinished += 1;
    }
    errors
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    let succeeded = counts[LineOutcome::Succeeded.index()];
    let failed = [
        LineOutcome::EngineError,
        LineOutcome::EngineUnavailable,
        LineOutcome::InvalidRequest,
    ]
    .iter()
    .map(|o| counts[o.index()])
    .sum();
    Ok(Salvaged {
        succeeded,
        failed,
        unfinished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }

    #[test]
    fn without_a_state_every_line_gets_the_code() {
        let dir = tempfile::tempdir().expect("temp");
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"custom_id\":\"a\"}\n\nnot json\n").expect("write");
        let (output, errors) = (dir.path().join("o.jsonl"), dir.path().join("e.jsonl"));
        let to = Destination {
            output: &output,
            errors: &errors,
        };
        let s = salvage(
            &dir.path().join("no-state"),
            &input,
            &to,
            1 << 20,
            "batch_cancelled",
            "m",
        )
        .expect("salvage");
        assert_eq!(s.unfinished, 2);
        assert_eq!(std::fs::read(&output).expect("output").len(), 0);
        let e = lines(&errors);
        assert_eq!(e[0]["custom_id"], "a");
        assert!(e[1]["custom_id"].is_null());
        assert!(e.iter().all(|l| l["error"]["code"] == "batch_cancelled"));
    }

    #[test]
    fn checkpointed_results_are_kept_and_the_rest_is_unfinished() {
        let dir = tempfile::tempdir().expect("temp");
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"custom_id\":\"a\"}\n{\"custom_id\":\"b\"}\n").expect("write");
        let state = dir.path().join("state");
        let job = NewJob {
            input: "in.jsonl",
            fingerprint: &crate::input::InputFingerprint::recorded("f"),
            run_tag: "t".into(),
        };
        let mut opened = state::open(&state, job).expect("open");
        opened
            .spool
            .append(
                2,
                LineOutcome::Succeeded,
                b"{\"custom_id\":\"b\",\"ok\":1}\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        opened.manifest.positions = opened.spool.flush().expect("flush");
        opened.manifest.store(&state).expect("checkpoint");
        drop(opened);
        let (output, errors) = (dir.path().join("o.jsonl"), dir.path().join("e.jsonl"));
        let to = Destination {
            output: &output,
            errors: &errors,
        };
        for _ in 0..2 {
            let s = salvage(&state, &input, &to, 1 << 20, "batch_failed", "m").expect("salvage");
            assert_eq!((s.succeeded, s.failed, s.unfinished), (1, 0, 1));
            assert_eq!(lines(&output)[0]["custom_id"], "b");
            let e = lines(&errors);
            assert_eq!(e.len(), 1, "the same files when run again");
            assert_eq!(
                (e[0]["custom_id"].as_str(), e[0]["error"]["code"].as_str()),
                (Some("a"), Some("batch_failed"))
            );
        }
    }
}

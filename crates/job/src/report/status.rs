//! Reading a job's progress from its state directory, while it runs or after it stopped.
//!
//! The spool files are ordinary JSONL and can be read directly; this adds the counts. Results
//! past the last checkpoint are counted too (as "since the last checkpoint"): they are in the
//! files, but a crash now would discard them and re-run their lines.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::extsort::Fixed;
use crate::state::Manifest;
use crate::state::outcome::LineOutcome;
use crate::state::spool::{IndexRecord, SpoolFiles, read_index};

#[derive(Debug, Clone, Serialize)]
pub struct JobProgress {
    pub input: String,
    /// Unix time of the job's first start, in milliseconds.
    pub started_at_ms: u64,
    pub checkpoints: u64,
    /// Results covered by the last checkpoint, by outcome.
    pub checkpointed: BTreeMap<&'static str, u64>,
    /// Results written after the last checkpoint.
    pub since_checkpoint: u64,
    pub retries: u64,
    pub output_tokens: u64,
    /// Readable JSONL with the results so far.
    pub output_spool: String,
    pub errors_spool: String,
}

pub fn read_progress(dir: &Path) -> std::io::Result<Option<JobProgress>> {
    let Some(manifest) = Manifest::load(dir)? else {
        return Ok(None);
    };
    let files = SpoolFiles::in_dir(dir);
    let mut checkpointed: BTreeMap<&'static str, u64> =
        LineOutcome::ALL.iter().map(|o| (o.label(), 0)).collect();
    read_index(&files.index, manifest.positions.index, |r| {
        *checkpointed.entry(r.outcome.label()).or_default() += 1;
    })?;
    let written = fs::metadata(&files.index).map_or(0, |m| m.len());
    let since_checkpoint =
        written.saturating_sub(manifest.positions.index) / IndexRecord::BYTES as u64;
    Ok(Some(JobProgress {
        input: manifest.input,
        started_at_ms: manifest.started_at_ms,
        checkpoints: manifest.checkpoints,
        checkpointed,
        since_checkpoint,
        retries: manifest.totals.retries,
        output_tokens: manifest.totals.output_tokens,
        output_spool: files.output.display().to_string(),
        errors_spool: files.errors.display().to_string(),
    }))
}

impl JobProgress {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let total: u64 = self.checkpointed.values().sum();
        let _ = writeln!(out, "input: {}", self.input);
        let _ = writeln!(
            out,
            "results at the last checkpoint ({} checkpoints): {total}",
            self.checkpoints
        );
        for (outcome, n) in self.checkpointed.iter().filter(|(_, n)| **n > 0) {
            let _ = writeln!(out, "  {outcome}: {n}");
        }
        let _ = writeln!(
            out,
            "results written since: {} (re-run if the job crashed now)",
            self.since_checkpoint
        );
        let _ = writeln!(
            out,
            "retries: {}, output tokens: {}",
            self.retries, self.output_tokens
        );
        let _ = writeln!(
            out,
            "results so far: {} and {}",
            self.output_spool, self.errors_spool
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NewJob, open};

    #[test]
    fn counts_checkpointed_results_and_those_written_since() {
        let dir = tempfile::tempdir().expect("temp");
        let job = NewJob {
            input: "in.jsonl",
            fingerprint: &crate::input::InputFingerprint::recorded("f"),
            run_tag: "t".into(),
        };
        let mut opened = open(dir.path(), job).expect("open");
        opened
            .spool
            .append(
                1,
                LineOutcome::Succeeded,
                b"a\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        opened
            .spool
            .append(
                2,
                LineOutcome::Expired,
                b"b\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        opened.manifest.positions = opened.spool.flush().expect("flush");
        opened.manifest.checkpoints = 1;
        opened.manifest.store(dir.path()).expect("store");
        opened
            .spool
            .append(
                3,
                LineOutcome::Succeeded,
                b"c\n",
                crate::state::timings::Timing::default(),
            )
            .expect("append");
        opened.spool.flush().expect("flush");

        let p = read_progress(dir.path()).expect("read").expect("a job");
        assert_eq!(p.checkpointed["succeeded"], 1);
        assert_eq!(p.checkpointed["batch_expired"], 1);
        assert_eq!(p.since_checkpoint, 1);
        assert!(p.render().contains("results written since: 1"));
        assert!(
            read_progress(&dir.path().join("nope"))
                .expect("read")
                .is_none()
        );
    }
}

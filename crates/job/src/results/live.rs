//! The results of a job still running, read from its state directory while the job appends to
//! it. Only what the job has flushed is read: the index is cut to whole records, and a record
//! whose line is not yet fully in its spool file ends the page there (the next page starts
//! with it), so a page never skips a result.

use std::collections::BinaryHeap;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::*;
use crate::extsort::Fixed;
use crate::input::reader::{Content, LineReader};
use crate::report::errors::ErrorTally;
use crate::state::open_if_present;
use crate::state::spool::{IndexRecord, SpoolFiles, read_index};
use crate::state::timings::timing_of;

pub struct LiveResults {
    files: SpoolFiles,
    /// The job's input (the validated copy for a stream); none when not at hand.
    input: Option<PathBuf>,
    max_line_bytes: usize,
}

impl LiveResults {
    pub fn new(state_dir: &Path, input: Option<PathBuf>, max_line_bytes: usize) -> Self {
        Self {
            files: SpoolFiles::in_dir(state_dir),
            input,
            max_line_bytes,
        }
    }

    /// Every whole index record flushed so far, in completion order.
    fn each_record(&self, each: impl FnMut(IndexRecord)) -> io::Result<()> {
        let len = match std::fs::metadata(&self.files.index) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        read_index(
            &self.files.index,
            len - len % IndexRecord::BYTES as u64,
            each,
        )
    }

    fn spool_of(&self, record: &IndexRecord) -> &Path {
        if record.outcome.is_success() {
            &self.files.output
        } else {
            &self.files.errors
        }
    }
}

impl ResultSource for LiveResults {
    fn page(&self, query: &PageQuery) -> io::Result<ResultPage> {
        // The limit + 1 smallest lines wanted, in a max-heap: memory bounded by the page.
        let keep = query.limit + 1;
        let mut heap = BinaryHeap::with_capacity(keep + 1);
        self.each_record(|r| {
            // Once the heap is full, only a lower line than its highest can enter.
            let full = heap.len() == keep;
            if full
                && heap
                    .peek()
                    .is_some_and(|top: &IndexRecord| r.line >= top.line)
            {
                return;
            }
            if query.wants(ResultStatus::of(r.outcome), r.line) {
                heap.push(r);
                if heap.len() > keep {
                    heap.pop();
                }
            }
        })?;
        let mut picked = heap.into_sorted_vec();
        let mut has_more = picked.len() > query.limit;
        picked.truncate(query.limit);
        let (output, errors) = (
            open_if_present(&self.files.output)?,
            open_if_present(&self.files.errors)?,
        );
        let mut data = Vec::with_capacity(picked.len());
        for r in picked {
            let file = if r.outcome.is_success() {
                &output
            } else {
                &errors
            };
            let bytes = match file {
                Some(f) => read_at(f, r.offset, r.len as usize)?,
                None => Vec::new(),
            };
            match item(r.line, ResultStatus::of(r.outcome), &bytes) {
                Some(item) => data.push(item),
                None => {
                    has_more = true;
                    break;
                }
            }
        }
        Ok(ResultPage { data, has_more })
    }

    fn find(&self, custom_id: &str) -> io::Result<Option<RequestDetail>> {
        let mut needle = b"\"custom_id\":".to_vec();
        serde_json::to_writer(&mut needle, custom_id).map_err(io::Error::other)?;
        needle.push(b',');
        let finder = memchr::memmem::Finder::new(&needle);
        for success in [true, false] {
            let path = if success {
                &self.files.output
            } else {
                &self.files.errors
            };
            // An engine's answer could hold the same bytes: the line's own custom_id decides.
            let its_own = |line: &[u8]| custom_id_of(line).as_deref() == Some(custom_id);
            let Some(offset) = find_line(path, &finder, its_own)? else {
                continue;
            };
            let mut found = None;
            self.each_record(|r| {
                if r.outcome.is_success() == success && r.offset == offset {
                    found = Some(r);
                }
            })?;
            let Some(record) = found else { continue };
            let Some(file) = open_if_present(self.spool_of(&record))? else {
                continue;
            };
            let bytes = read_at(&file, record.offset, record.len as usize)?;
            let Some(item) = item(record.line, ResultStatus::of(record.outcome), &bytes) else {
                continue;
            };
            let input = match &self.input {
                Some(path) => input_line(path, record.line, self.max_line_bytes)?,
                None => None,
            };
            let timing = timing_of(&self.files.timings, record.line)?.and_then(TimingView::of);
            return Ok(Some(RequestDetail {
                item,
                input,
                timing,
            }));
        }
        Ok(None)
    }

    fn errors(&self, top: usize) -> io::Result<Vec<ErrorCount>> {
        // The error spool holds the error records in index order: walk both in step.
        let tally = ErrorTally::default();
        let Some(file) = open_if_present(&self.files.errors)? else {
            return Ok(Vec::new());
        };
        let mut lines = BufReader::with_capacity(256 * 1024, file);
        let mut line = Vec::new();
        let mut failure = Ok(());
        self.each_record(|r| {
            if r.outcome.is_success() || failure.is_err() {
                return;
            }
            line.clear();
            match lines.read_until(b'\n', &mut line) {
                Ok(_) if line.ends_with(b"\n") => {
                    if ResultStatus::of(r.outcome) == ResultStatus::Failed {
                        tally.add(&line);
                    }
                }
                Ok(_) => {}
                Err(e) => failure = Err(e),
            }
        })?;
        failure?;
        Ok(tally.top(top))
    }
}

/// The offset of the first whole line of `path` that contains `finder`'s needle and passes
/// `check`.
fn find_line(
    path: &Path,
    finder: &memchr::memmem::Finder<'_>,
    check: impl Fn(&[u8]) -> bool,
) -> io::Result<Option<u64>> {
    let Some(file) = open_if_present(path)? else {
        return Ok(None);
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let (mut line, mut offset) = (Vec::new(), 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            return Ok(None);
        }
        if finder.find(&line).is_some() && check(&line) {
            return Ok(Some(offset));
        }
        offset += n as u64;
    }
}

/// Input line `number` of `path` as JSON, numbered as the job numbers them.
pub(super) fn input_line(
    path: &Path,
    number: u64,
    max_line_bytes: usize,
) -> io::Result<Option<Box<RawValue>>> {
    let Some(file) = open_if_present(path)? else {
        return Ok(None);
    };
    let mut reader = LineReader::new(file, max_line_bytes);
    while let Some(line) = reader.next_line()? {
        if line.number == number {
            return Ok(match line.content {
                Content::Text(text) => input_value(text),
                Content::TooLong => None,
            });
        }
    }
    Ok(None)
}

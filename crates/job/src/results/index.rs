//! The results index of a finished job: built once from its final files (in input order) and
//! its input, then read a page or a request at a time with a few positioned reads.
//!
//! Layout (little-endian): a 64-byte header (`BRRESIX1`, the entry count of each status, the
//! hash count, the length of the failures-by-code JSON), then the entries of each status in
//! line order (succeeded, failed, expired, cancelled; [`Entry`], 49 bytes), then the
//! `custom_id` hashes in hash order ([`Hashed`], 17 bytes), then the failures by code as JSON.
//! Building reads each file once, in order; memory is one sort chunk of hashes and timings.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::*;
use crate::extsort::{Fixed, Sorter, get_u32, get_u64, put_u64};
use crate::input::reader::{Content, LineReader};
use crate::report::errors::ErrorTally;
use crate::state::open_if_present;
use crate::state::timings::{LineTiming, read_timings};

const MAGIC: &[u8; 8] = b"BRRESIX1";
const HEADER: u64 = 64;
/// Records sorted in memory at once while building (hashes, timings).
const SORT_CHUNK: usize = 1 << 16;

/// One result: where its line sits in its final file and in the input, and its timing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    line: u64,
    status: u8,
    offset: u64,
    len: u32,
    input_offset: u64,
    input_len: u32,
    timing: Timing,
}

impl Fixed for Entry {
    const BYTES: usize = 49;

    fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.line);
        b[8] = self.status;
        put_u64(b, 9, self.offset);
        b[17..21].copy_from_slice(&self.len.to_le_bytes());
        put_u64(b, 21, self.input_offset);
        b[29..33].copy_from_slice(&self.input_len.to_le_bytes());
        b[33..37].copy_from_slice(&self.timing.attempts.to_le_bytes());
        put_u64(b, 37, self.timing.started_ms);
        b[45..49].copy_from_slice(&self.timing.latency_ms.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            line: get_u64(b, 0),
            status: b[8],
            offset: get_u64(b, 9),
            len: get_u32(b, 17),
            input_offset: get_u64(b, 21),
            input_len: get_u32(b, 29),
            timing: Timing {
                attempts: get_u32(b, 33),
                started_ms: get_u64(b, 37),
                latency_ms: get_u32(b, 45),
            },
        }
    }
}

/// A `custom_id`'s hash and where its entry is: (status, position in that status's section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Hashed {
    hash: u64,
    status: u8,
    position: u64,
}

impl Fixed for Hashed {
    const BYTES: usize = 17;

    fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.hash);
        b[8] = self.status;
        put_u64(b, 9, self.position);
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            hash: get_u64(b, 0),
            status: b[8],
            position: get_u64(b, 9),
        }
    }
}

fn hash_of(custom_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(custom_id.as_bytes())
}

fn status_from(code: u8) -> ResultStatus {
    ResultStatus::ALL
        .get(usize::from(code))
        .copied()
        .unwrap_or(ResultStatus::Failed)
}

/// The files a finished job's index is built from.
pub struct Sources<'a> {
    pub input: &'a Path,
    /// The output file (successes, input order); none when there were none.
    pub output: Option<&'a Path>,
    /// The error file (input order); none when there were none.
    pub errors: Option<&'a Path>,
    /// The job's timings (its state directory's `timings.bin`), when kept.
    pub timings: Option<&'a Path>,
    pub max_line_bytes: usize,
}

/// The next line of a final file, with its `custom_id`.
struct Head {
    custom_id: Option<String>,
    offset: u64,
    bytes: Vec<u8>,
}

struct FinalFile {
    reader: Option<BufReader<File>>,
    offset: u64,
    head: Option<Head>,
}

impl FinalFile {
    fn open(path: Option<&Path>) -> io::Result<Self> {
        let reader = open_optional(path)?.map(|f| BufReader::with_capacity(256 * 1024, f));
        let mut file = Self {
            reader,
            offset: 0,
            head: None,
        };
        file.advance()?;
        Ok(file)
    }

    fn advance(&mut self) -> io::Result<()> {
        self.head = None;
        let Some(reader) = &mut self.reader else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        let n = reader.read_until(b'\n', &mut bytes)?;
        if n > 0 {
            self.head = Some(Head {
                custom_id: custom_id_of(&bytes),
                offset: self.offset,
                bytes,
            });
            self.offset += n as u64;
        }
        Ok(())
    }

    /// The head, taken, when it is `custom_id`'s result.
    fn take_if(&mut self, custom_id: Option<&str>) -> io::Result<Option<Head>> {
        if self
            .head
            .as_ref()
            .is_some_and(|h| h.custom_id.as_deref() == custom_id)
        {
            let head = self.head.take();
            self.advance()?;
            return Ok(head);
        }
        Ok(None)
    }
}

/// The status of an error file's line: its `error.code` tells expired and cancelled lines.
fn error_status(bytes: &[u8]) -> ResultStatus {
    #[derive(serde::Deserialize)]
    struct Code {
        code: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Line {
        error: Option<Code>,
    }
    let code = serde_json::from_slice::<Line>(bytes)
        .ok()
        .and_then(|l| l.error)
        .and_then(|e| e.code);
    match code.as_deref() {
        Some("batch_expired") => ResultStatus::Expired,
        Some("batch_cancelled") => ResultStatus::Cancelled,
        _ => ResultStatus::Failed,
    }
}

/// Builds the index of a finished job at `to` (written whole, then renamed into place).
pub fn build(sources: &Sources<'_>, to: &Path) -> io::Result<()> {
    let mut timings = Sorter::<LineTiming>::new(SORT_CHUNK);
    if let Some(path) = sources.timings {
        let mut failure = Ok(());
        read_timings(path, |t| {
            if failure.is_ok() {
                failure = timings.push(t);
            }
        })?;
        failure?;
    }
    let mut timings = timings.finish()?;
    let mut next_timing = timings.next_record()?;

    let mut sections: Vec<BufWriter<File>> = (0..ResultStatus::ALL.len())
        .map(|_| tempfile::tempfile().map(BufWriter::new))
        .collect::<io::Result<_>>()?;
    let mut counts = [0u64; 4];
    let mut hashes = Sorter::<Hashed>::new(SORT_CHUNK);
    let tally = ErrorTally::default();
    let mut output = FinalFile::open(sources.output)?;
    let mut errors = FinalFile::open(sources.errors)?;
    let mut input = LineReader::new(File::open(sources.input)?, sources.max_line_bytes);
    let mut buf = [0; Entry::BYTES];
    while let Some(line) = input.next_line()? {
        if line.content.is_blank() {
            continue;
        }
        let (input_len, custom_id) = match line.content {
            Content::Text(text) => (text.len(), custom_id_of(text)),
            Content::TooLong => (0, None),
        };
        let (status, head) = if let Some(h) = output.take_if(custom_id.as_deref())? {
            (ResultStatus::Succeeded, h)
        } else if let Some(h) = errors.take_if(custom_id.as_deref())? {
            (error_status(&h.bytes), h)
        } else {
            continue;
        };
        if status == ResultStatus::Failed {
            tally.add(&head.bytes);
        }
        let mut timing = Timing::default();
        while let Some(t) = next_timing.filter(|t| t.line <= line.number) {
            if t.line == line.number {
                timing = t.timing;
            }
            next_timing = timings.next_record()?;
        }
        let entry = Entry {
            line: line.number,
            status: status.index() as u8,
            offset: head.offset,
            len: u32::try_from(head.bytes.len()).unwrap_or(u32::MAX),
            input_offset: line.offset,
            input_len: u32::try_from(input_len).unwrap_or(0),
            timing,
        };
        entry.encode(&mut buf);
        sections[status.index()].write_all(&buf)?;
        if let Some(c) = &head.custom_id {
            hashes.push(Hashed {
                hash: hash_of(c),
                status: entry.status,
                position: counts[status.index()],
            })?;
        }
        counts[status.index()] += 1;
    }
    if output.head.is_some() || errors.head.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the result files hold results that match no input line in order (they must be \
             in input order); cannot index them",
        ));
    }
    write_index(to, counts, sections, hashes, &tally)
}

fn write_index(
    to: &Path,
    counts: [u64; 4],
    sections: Vec<BufWriter<File>>,
    hashes: Sorter<Hashed>,
    tally: &ErrorTally,
) -> io::Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let mut out = BufWriter::new(tempfile::NamedTempFile::new_in(dir)?);
    let tally = serde_json::to_vec(&tally.top(usize::MAX)).map_err(io::Error::other)?;
    let mut header = [0u8; HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    for (i, c) in counts.iter().enumerate() {
        put_u64(&mut header, 8 + 8 * i, *c);
    }
    // Lines without a custom_id have no hash: the count is what is written.
    let mut hashes = hashes.finish()?;
    let mut spill = BufWriter::new(tempfile::tempfile()?);
    let mut written = 0u64;
    let mut buf = [0; Hashed::BYTES];
    while let Some(h) = hashes.next_record()? {
        h.encode(&mut buf);
        spill.write_all(&buf)?;
        written += 1;
    }
    put_u64(&mut header, 40, written);
    put_u64(&mut header, 48, tally.len() as u64);
    out.write_all(&header)?;
    for section in sections {
        let mut file = section.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        io::copy(&mut file, &mut out)?;
    }
    let mut file = spill.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    io::copy(&mut file, &mut out)?;
    out.write_all(&tally)?;
    let temp = out.into_inner().map_err(|e| e.into_error())?;
    temp.as_file().sync_all()?;
    temp.persist(to).map_err(|e| e.error)?;
    Ok(())
}

/// A finished job's results, read through its index.
pub struct ResultIndex {
    index: File,
    counts: [u64; 4],
    hashes: u64,
    tally_len: u64,
    output: Option<File>,
    errors: Option<File>,
    input: Option<File>,
}

fn open_optional(path: Option<&Path>) -> io::Result<Option<File>> {
    path.map_or(Ok(None), open_if_present)
}

impl ResultIndex {
    /// Opens the index at `path` over the job's final files and input (any may be gone: its
    /// results then read as absent).
    pub fn open(
        path: &Path,
        output: Option<&Path>,
        errors: Option<&Path>,
        input: Option<&Path>,
    ) -> io::Result<Self> {
        let mut index = File::open(path)?;
        let mut header = [0u8; HEADER as usize];
        index.read_exact(&mut header)?;
        if &header[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a results index", path.display()),
            ));
        }
        let mut counts = [0; 4];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = get_u64(&header, 8 + 8 * i);
        }
        Ok(Self {
            index,
            counts,
            hashes: get_u64(&header, 40),
            tally_len: get_u64(&header, 48),
            output: open_optional(output)?,
            errors: open_optional(errors)?,
            input: open_optional(input)?,
        })
    }

    /// Results of each status.
    pub fn counts(&self) -> [(ResultStatus, u64); 4] {
        ResultStatus::ALL.map(|s| (s, self.counts[s.index()]))
    }

    fn section_start(&self, status: ResultStatus) -> u64 {
        HEADER + self.counts[..status.index()].iter().sum::<u64>() * Entry::BYTES as u64
    }

    fn hashes_start(&self) -> u64 {
        HEADER + self.counts.iter().sum::<u64>() * Entry::BYTES as u64
    }

    fn entry(&self, status: ResultStatus, position: u64) -> io::Result<Entry> {
        let at = self.section_start(status) + position * Entry::BYTES as u64;
        let bytes = read_at(&self.index, at, Entry::BYTES)?;
        if bytes.len() < Entry::BYTES {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated index",
            ));
        }
        Ok(Entry::decode(&bytes))
    }

    /// Up to `n` entries of `status` with lines after `after`.
    fn entries_after(&self, status: ResultStatus, after: u64, n: usize) -> io::Result<Vec<Entry>> {
        let count = self.counts[status.index()];
        let (mut lo, mut hi) = (0, count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(status, mid)?.line <= after {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let take = (count - lo).min(n as u64) as usize;
        let at = self.section_start(status) + lo * Entry::BYTES as u64;
        let bytes = read_at(&self.index, at, take * Entry::BYTES)?;
        Ok(bytes
            .chunks_exact(Entry::BYTES)
            .map(Entry::decode)
            .collect())
    }

    fn result_bytes(&self, entry: &Entry) -> io::Result<Vec<u8>> {
        let file = if status_from(entry.status) == ResultStatus::Succeeded {
            &self.output
        } else {
            &self.errors
        };
        match file {
            Some(f) => read_at(f, entry.offset, entry.len as usize),
            None => Ok(Vec::new()),
        }
    }

    fn item(&self, entry: &Entry) -> io::Result<Option<ResultItem>> {
        Ok(item(
            entry.line,
            status_from(entry.status),
            &self.result_bytes(entry)?,
        ))
    }
}

impl ResultSource for ResultIndex {
    fn page(&self, query: &PageQuery) -> io::Result<ResultPage> {
        let keep = query.limit + 1;
        let mut picked = Vec::new();
        for status in ResultStatus::ALL {
            if query.status.is_none_or(|s| s == status) {
                picked.extend(self.entries_after(status, query.after, keep)?);
            }
        }
        picked.sort_unstable_by_key(|e| e.line);
        let has_more = picked.len() > query.limit;
        picked.truncate(query.limit);
        let mut data = Vec::with_capacity(picked.len());
        for entry in &picked {
            // A result file removed (retention) leaves its results out.
            if let Some(item) = self.item(entry)? {
                data.push(item);
            }
        }
        Ok(ResultPage { data, has_more })
    }

    fn find(&self, custom_id: &str) -> io::Result<Option<RequestDetail>> {
        let hash = hash_of(custom_id);
        let start = self.hashes_start();
        let at = |i: u64| -> io::Result<Hashed> {
            let bytes = read_at(&self.index, start + i * Hashed::BYTES as u64, Hashed::BYTES)?;
            if bytes.len() < Hashed::BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated index",
                ));
            }
            Ok(Hashed::decode(&bytes))
        };
        let (mut lo, mut hi) = (0, self.hashes);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if at(mid)?.hash < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // Equal hashes (a 64-bit collision) are told apart by the line's own custom_id.
        while lo < self.hashes {
            let h = at(lo)?;
            if h.hash != hash {
                break;
            }
            lo += 1;
            let entry = self.entry(status_from(h.status), h.position)?;
            let Some(item) = self.item(&entry)? else {
                continue;
            };
            if item.custom_id.as_deref() != Some(custom_id) {
                continue;
            }
            let input = match &self.input {
                Some(f) if entry.input_len > 0 => {
                    input_value(&read_at(f, entry.input_offset, entry.input_len as usize)?)
                }
                _ => None,
            };
            return Ok(Some(RequestDetail {
                item,
                input,
                timing: TimingView::of(entry.timing),
            }));
        }
        Ok(None)
    }

    fn errors(&self, top: usize) -> io::Result<Vec<ErrorCount>> {
        let at = self.hashes_start() + self.hashes * Hashed::BYTES as u64;
        let bytes = read_at(&self.index, at, self.tally_len as usize)?;
        let mut all: Vec<ErrorCount> = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        all.truncate(top);
        Ok(all)
    }
}

/// Where a finished job's index and files are, for [`ResultIndex::open`].
#[derive(Debug, Clone)]
pub struct IndexedFiles {
    pub index: PathBuf,
    pub output: Option<PathBuf>,
    pub errors: Option<PathBuf>,
    pub input: Option<PathBuf>,
}

impl IndexedFiles {
    pub fn open(&self) -> io::Result<ResultIndex> {
        ResultIndex::open(
            &self.index,
            self.output.as_deref(),
            self.errors.as_deref(),
            self.input.as_deref(),
        )
    }
}

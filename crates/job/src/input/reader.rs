//! Streams a batch file as numbered lines with bounded memory.
//!
//! A line longer than the maximum is reported as [`Content::TooLong`] and skipped without ever
//! being held in memory, so a file with no line breaks cannot exhaust memory. Line endings may be
//! LF or CRLF; a UTF-8 byte-order mark before the first line is skipped. Both are noted on the
//! line so the validator can warn about them.

use std::io::{self, Read};

const INITIAL_BUFFER: usize = 256 * 1024;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One line of the input.
#[derive(Debug)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: u64,
    /// Byte offset of the line's first byte in the file (after a byte-order mark).
    pub offset: u64,
    pub content: Content<'a>,
    /// The line ended in CR LF (the CR is not part of the content).
    pub crlf: bool,
    /// A byte-order mark preceded this line (only ever the first line).
    pub bom: bool,
}

#[derive(Debug)]
pub enum Content<'a> {
    Text(&'a [u8]),
    TooLong,
}

impl Content<'_> {
    /// Blank lines are skipped by every consumer.
    pub fn is_blank(&self) -> bool {
        matches!(self, Content::Text(t) if t.iter().all(u8::is_ascii_whitespace))
    }
}

/// A lending line reader: each line borrows the reader's buffer until the next call.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start and end of the unread bytes in `buf`.
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    line_no: u64,
    max_line_bytes: usize,
    eof: bool,
    /// An over-long line is an error rather than skipped (see [`Self::refuse_endless_lines`]).
    refuse_long: bool,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        Self {
            inner,
            buf: vec![0; INITIAL_BUFFER.min(max_line_bytes.saturating_add(2)).max(64)],
            start: 0,
            end: 0,
            offset: 0,
            line_no: 0,
            max_line_bytes,
            eof: false,
            refuse_long: false,
        }
    }

    /// For a stream: an over-long line fails the read instead of being skipped, since a stream
    /// may never end (`/dev/zero`, a `yes` pipe) and skipping would read it forever.
    pub fn refuse_endless_lines(mut self) -> Self {
        self.refuse_long = true;
        self
    }

    /// The underlying reader (bytes still buffered here are lost).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Total bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        let mut bom = false;
        if self.line_no == 0 && self.offset == 0 {
            self.fill_at_least(UTF8_BOM.len())?;
            if self.buf[self.start..self.end].starts_with(UTF8_BOM) {
                self.start += UTF8_BOM.len();
                self.offset += UTF8_BOM.len() as u64;
                bom = true;
            }
        }
        let mut scanned = 0;
        loop {
            let pending = &self.buf[self.start + scanned..self.end];
            if let Some(i) = memchr::memchr(b'\n', pending) {
                let len = scanned + i;
                return Ok(Some(self.take_line(len, len + 1, bom)));
            }
            scanned = self.end - self.start;
            if self.eof {
                if scanned == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take_line(scanned, scanned, bom)));
            }
            // A CRLF line may carry one byte beyond the maximum before its LF.
            if scanned > self.max_line_bytes.saturating_add(1) {
                if self.refuse_long {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "line {} has more than {} bytes without a line break (the \
                             --max-line-bytes limit); a stream's over-long line cannot be \
                             skipped. Is this a JSONL file?",
                            self.line_no + 1,
                            self.max_line_bytes
                        ),
                    ));
                }
                return self.skip_long_line(bom).map(Some);
            }
            self.read_more()?;
        }
    }

    /// Hands out `len` bytes from `start` as a line, consuming `consumed` bytes.
    fn take_line(&mut self, len: usize, consumed: usize, bom: bool) -> Line<'_> {
        self.line_no += 1;
        let offset = self.offset;
        let start = self.start;
        self.start += consumed;
        self.offset += consumed as u64;
        let mut text = &self.buf[start..start + len];
        // Only a CR right before an LF ends a line; one at the end of the file is content.
        let crlf = consumed > len && text.last() == Some(&b'\r');
        if crlf {
            text = &text[..text.len() - 1];
        }
        let content = if text.len() > self.max_line_bytes {
            Content::TooLong
        } else {
            Content::Text(text)
        };
        Line {
            number: self.line_no,
            offset,
            content,
            crlf,
            bom,
        }
    }

    /// Discards the rest of an over-long line without storing it.
    fn skip_long_line(&mut self, bom: bool) -> io::Result<Line<'static>> {
        self.line_no += 1;
        let offset = self.offset;
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(i) = memchr::memchr(b'\n', pending) {
                self.start += i + 1;
                self.offset += (i + 1) as u64;
                break;
            }
            self.offset += pending.len() as u64;
            self.start = self.end;
            if self.eof {
                break;
            }
            self.read_more()?;
        }
        Ok(Line {
            number: self.line_no,
            offset,
            content: Content::TooLong,
            crlf: false,
            bom,
        })
    }

    fn fill_at_least(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.start < n && !self.eof {
            self.read_more()?;
        }
        Ok(())
    }

    /// Reads more bytes after the unread ones, compacting or growing the buffer first.
    fn read_more(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(self.max_line_bytes.saturating_add(2));
            self.buf.resize(grown.max(self.buf.len() + 1), 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (number, offset, text or None when too long, crlf, bom)
    type Seen = (u64, u64, Option<Vec<u8>>, bool, bool);

    fn collect<R: Read>(mut r: LineReader<R>) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Some(l) = r.next_line().expect("read") {
            let text = match l.content {
                Content::Text(t) => Some(t.to_vec()),
                Content::TooLong => None,
            };
            out.push((l.number, l.offset, text, l.crlf, l.bom));
        }
        out
    }

    fn lines(input: &[u8], max: usize) -> Vec<Seen> {
        collect(LineReader::new(input, max))
    }

    #[test]
    fn numbers_lines_and_tracks_offsets() {
        let got = lines(b"ab\n\ncd", 10);
        assert_eq!(
            got,
            vec![
                (1, 0, Some(b"ab".to_vec()), false, false),
                (2, 3, Some(vec![]), false, false),
                (3, 4, Some(b"cd".to_vec()), false, false),
            ]
        );
    }

    #[test]
    fn strips_bom_and_cr() {
        let got = lines(b"\xEF\xBB\xBFab\r\ncd\r\n", 10);
        assert_eq!(got[0], (1, 3, Some(b"ab".to_vec()), true, true));
        assert_eq!(got[1], (2, 7, Some(b"cd".to_vec()), true, false));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn over_long_lines_are_skipped_not_buffered() {
        let mut input = vec![b'x'; 1000];
        input.extend_from_slice(b"\nok\n");
        input.extend(std::iter::repeat_n(b'y', 500));
        let got = lines(&input, 100);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].2, None);
        assert_eq!(got[1], (2, 1001, Some(b"ok".to_vec()), false, false));
        assert_eq!(got[2].2, None);
        assert_eq!(got[2].1, 1004);
    }

    #[test]
    fn a_line_of_exactly_the_maximum_is_fine() {
        let got = lines(b"abcd\r\nabcde\n", 4);
        assert_eq!(got[0].2, Some(b"abcd".to_vec()));
        assert_eq!(got[1].2, None);
    }

    /// A reader that returns one byte at a time exercises every refill path.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((b, rest)), false) => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn byte_at_a_time_reads_give_the_same_lines() {
        let input = b"\xEF\xBB\xBFone\r\ntwo\n\nthree-is-long\nfour";
        let fast = lines(input, 8);
        let slow = collect(LineReader::new(Trickle(input), 8));
        assert_eq!(fast.len(), 5);
        assert_eq!(fast, slow);
    }
}

//! The engine's log: bounded in size, and its last lines for error messages.
//!
//! When the file reaches its limit it is renamed to `engine.log.1` (replacing an older one) and
//! a new file is started, so an engine that logs for days uses at most twice the limit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct RotatingLog {
    path: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            max_bytes: max_bytes.max(1024),
        })
    }

    /// Appends one line (a newline is added).
    pub fn line(&mut self, text: &[u8]) -> io::Result<()> {
        if self.len + text.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(text)?;
        self.file.write_all(b"\n")?;
        self.len += text.len() as u64 + 1;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(&self.path, rotated(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".1");
    PathBuf::from(name)
}

/// The last `n` lines of the log (looking into the rotated file when the current one is short).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let mut lines = last_lines(path, n);
    if lines.len() < n {
        let mut older = last_lines(&rotated(path), n - lines.len());
        older.append(&mut lines);
        lines = older;
    }
    lines
}

fn last_lines(path: &Path, n: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut lines: Vec<String> = BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // a partial first line
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_limit_and_tails_across_files() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("engine.log");
        let mut log = RotatingLog::open(&path, 1024).expect("open");
        for i in 0..100 {
            log.line(format!("line {i:03} {}", "x".repeat(20)).as_bytes())
                .expect("line");
        }
        let current = fs::metadata(&path).expect("meta").len();
        assert!(current <= 1024, "{current}");
        assert!(rotated(&path).exists());
        let t = tail(&path, 3);
        assert_eq!(t.len(), 3);
        assert!(t[2].starts_with("line 099"), "{t:?}");
        let long = tail(&path, 60);
        assert_eq!(long.len(), 60);
        assert!(
            long[59].starts_with("line 099") && long[0].starts_with("line 040"),
            "{:?}",
            &long[..2]
        );
        assert!(tail(&dir.path().join("none.log"), 5).is_empty());
    }
}

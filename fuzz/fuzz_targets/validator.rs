//! The whole validation pass on any file: never a panic, every non-blank line is either a
//! request or an invalid line, and the verdict agrees with the errors.
#![no_main]

use std::io::Write;

use batch_job::{ValidateOptions, validate_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, content)) = data.split_first() else {
        return;
    };
    // In memory (tmpfs) where there is one: the pass reads a file, twice for duplicates.
    let mut file = match tempfile::NamedTempFile::new_in("/dev/shm") {
        Ok(f) => f,
        Err(_) => tempfile::NamedTempFile::new().expect("a temporary file"),
    };
    file.write_all(content).expect("write");
    let options = ValidateOptions {
        max_line_bytes: usize::from(first) * 4 + 1,
        max_listed_errors: 5,
        ..ValidateOptions::default()
    };
    let v = validate_file(file.path(), &options).expect("a readable file validates");
    let r = &v.report;
    assert_eq!(r.requests + r.invalid_lines + r.blank_lines, r.lines);
    assert_eq!(r.bytes, content.len() as u64);
    assert_eq!(r.valid, r.errors.is_empty() && r.errors_not_listed == 0);
    assert!(r.errors.len() <= 5);
    assert_eq!(v.ids.count, r.requests + r.invalid_lines);
});

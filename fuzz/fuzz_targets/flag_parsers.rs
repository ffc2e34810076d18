//! The parsers of flag values (durations, times, headers, endpoint paths) on any text: never a
//! panic, and what they accept is usable.
#![no_main]

use batch_format::rules::endpoint_path;
use batch_job::{parse_rfc3339, parse_header, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        assert!(d.as_secs_f64().is_finite());
    }
    let _ = parse_rfc3339(text);
    let _ = parse_header(text);
    if let Ok(path) = endpoint_path(text) {
        assert!(path.starts_with('/'));
        assert!(path[1..].split('/').all(|s| !matches!(s, "" | "." | "..")));
    }
});

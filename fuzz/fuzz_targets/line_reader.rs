//! The line reader and the input's block check, on any bytes: lines are numbered in order,
//! never longer than the maximum, never hold a line break, and together account for every
//! byte; the check passes the validated bytes unchanged and refuses any other bytes.
#![no_main]

use batch_job::{Recording, Verified, Content, LineReader};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    // Small limits, so over-long lines are common.
    let max = usize::from(first >> 1) + 1;
    let stream = first & 1 == 1;
    let mut reader = LineReader::new(input, max);
    if stream {
        reader = reader.refuse_endless_lines();
    }
    let mut number = 0;
    let mut offset = 0;
    loop {
        let line = match reader.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(_) => {
                assert!(stream, "only a stream's over-long line is an error");
                return;
            }
        };
        number += 1;
        assert_eq!(line.number, number);
        assert!(line.offset >= offset);
        offset = line.offset;
        if let Content::Text(text) = line.content {
            assert!(text.len() <= max);
            assert!(!text.contains(&b'\n'));
        }
    }
    assert_eq!(reader.bytes_read(), input.len() as u64);

    let mut recording = Recording::new(input, None);
    std::io::copy(&mut recording, &mut std::io::sink()).expect("reading a slice");
    let (blocks, _) = recording.finish().expect("no copy to write");
    let mut same = Vec::new();
    Verified::new(input, &blocks)
        .read_to_end(&mut same)
        .expect("the same bytes pass");
    assert_eq!(same, input);
    if let Some((_, shorter)) = input.split_last() {
        let mut out = Vec::new();
        assert!(Verified::new(shorter, &blocks).read_to_end(&mut out).is_err());
    }
});

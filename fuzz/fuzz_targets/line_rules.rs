//! The per-line rules and the readers of single fields, on any bytes: never a panic, and a line
//! the rules accept has the custom_id that the lenient reader finds in it.
#![no_main]

use batch_format::input::custom_id_of;
use batch_format::output::usage_of_result;
use batch_format::problem::sniff_encoding;
use batch_format::rules::endpoint_path;
use batch_format::{LineRules, RulesConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rules = LineRules::new(RulesConfig {
        extra_urls: vec!["/v1/classify".into()],
        ..RulesConfig::default()
    });
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let id = custom_id_of(line);
        if let Ok(request) = rules.check(i as u64 + 1, line) {
            assert_eq!(id.as_deref(), Some(request.custom_id.as_ref()));
        }
        if let Some(problem) = sniff_encoding(line) {
            assert!(!problem.to_string().is_empty());
        }
        let _ = usage_of_result(line);
        if let Ok(text) = std::str::from_utf8(line) {
            let _ = endpoint_path(text);
        }
    }
});

//! Duration and flag parsing: component metadata durations (`5s`, `1m30s`, bare seconds), Resiliency's Go
//! durations (bare milliseconds), and Dapr's boolean spellings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::components::metadata::{parse_bool, parse_duration};
use tandem::resiliency::parse_go_duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_duration(text);
    let _ = parse_go_duration(text);
    let _ = parse_bool(text);
});

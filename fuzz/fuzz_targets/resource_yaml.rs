//! Resource YAML as `--resources-path` files and `--config` hold it: every Dapr kind tandem reads (Component,
//! Subscription v1alpha1/v2alpha1, HTTPEndpoint, Resiliency), the Configuration with its validation, and the
//! Resiliency policies built from what parsed (durations, retries, circuit-breaker CEL).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem::sidecar::resources::{Resources, parse, parse_configuration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.yaml");
    let mut out = Resources::default();
    if parse(&mut out, text, path).is_ok() {
        let _ = tandem::resiliency::Resiliency::new_lenient(&out.resiliencies);
    }
    let _ = parse_configuration(text, path);
});

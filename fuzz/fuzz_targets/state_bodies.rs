//! The bodies of the HTTP state API exactly as its handlers decode them (save, bulk get, transaction), and the
//! `ttlInSeconds` each saved item carries.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tandem::sidecar::http::{decode_bulk_get, decode_save, decode_transaction};
use tandem::sidecar::state::{TxOp, ttl};

fuzz_target!(|data: &[u8]| {
    let query = BTreeMap::new();
    if let Ok(items) = decode_save("statestore", data, &query) {
        for item in &items {
            let _ = ttl(&item.metadata);
        }
    }
    let _ = decode_bulk_get(data);
    if let Ok(ops) = decode_transaction("statestore", data, &query) {
        for op in &ops {
            if let TxOp::Upsert(item) = op {
                let _ = ttl(&item.metadata);
            }
        }
    }
    // The query string's `metadata.ttlInSeconds` takes any text.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ttl(&BTreeMap::from([("ttlInSeconds".to_owned(), text.to_owned())]));
    }
});

//! The state query language: parsing a query body, then running it (filter, sort, page) over rows whose values
//! come from the same input, as the in-memory and sqlite stores do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tandem::components::state::{Query, QueryItem};

fuzz_target!(|data: &[u8]| {
    // Either a query alone, or `[query, row, row, ...]` to run it over those rows too.
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let (query, rows) = match &value {
        Value::Array(items) if !items.is_empty() => (&items[0], &items[1..]),
        other => (other, &[][..]),
    };
    let Ok(query) = Query::parse(query) else { return };
    let rows = rows.iter().enumerate().map(|(i, row)| QueryItem {
        key: format!("k{i}"),
        data: serde_json::to_vec(row).unwrap_or_default().into(),
        etag: Some(i.to_string()),
    });
    let _ = query.run(rows);
});

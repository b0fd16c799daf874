//! Logging: tracing to stderr, filtered by `--log-level` (or RUST_LOG), as JSON with `--log-as-json`. Colours
//! only on a terminal (never in a container's log) and not with NO_COLOR set. Lines that cannot be written are
//! dropped.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, json: bool) {
    let level = match level {
        "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn,redis=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed write (stderr closed by whoever read it) must not be reported with eprintln!, which panics on
        // a broken pipe: the panicking task would be the one that handles SIGTERM, and the process would hang.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

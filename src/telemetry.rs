//! Logging: tracing to stderr, filtered by `--log-level` (or RUST_LOG), as JSON with `--log-as-json`.

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
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

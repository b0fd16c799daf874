//! The Dapr CLI's status lines (`ℹ️  `, `✅  `, `⚠  `, `❌  `), which scripts and READMEs match on.

use super::supervisor::Sink;

pub fn info(sink: &Sink, msg: &str) {
    sink.line(&format!("ℹ️  {msg}"));
}

pub fn success(sink: &Sink, msg: &str) {
    sink.line(&format!("✅  {msg}"));
}

pub fn warning(sink: &Sink, msg: &str) {
    sink.line(&format!("⚠  {msg}"));
}

/// A failure of the CLI itself, on standard error.
pub fn failure(msg: &str) {
    eprintln!("❌  {msg}");
}

/// A failure of an app or sidecar, where its other lines go.
pub fn failure_to(sink: &Sink, msg: &str) {
    sink.line(&format!("❌  {msg}"));
}

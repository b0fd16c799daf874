//! What the SQLite-backed components (the state store and name resolution) share: creating the file's folder
//! and opening a database that other sidecars may be creating at the same moment.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// Creates the folder of a plain file path (not `:memory:`, not a `file:` URI) when it is missing.
pub fn create_parent_dir(connection_string: &str) -> std::io::Result<()> {
    if connection_string.starts_with("file:") || connection_string == ":memory:" {
        return Ok(());
    }
    match Path::new(connection_string).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

/// Opens `connection_string` read-write (created when missing, URIs allowed) with `busy_timeout`, in WAL mode
/// unless `wal` is false or the database is in memory.
pub fn connect(connection_string: &str, busy_timeout: Duration, wal: bool) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(connection_string, flags)?;
    conn.busy_timeout(busy_timeout)?;
    if wal && !is_in_memory(connection_string) {
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    }
    Ok(conn)
}

/// `:memory:`, or a URI with `mode=memory`.
pub fn is_in_memory(connection_string: &str) -> bool {
    connection_string == ":memory:" || connection_string.contains("mode=memory")
}

/// Runs `open` (connect and create the schema) again while it fails with SQLITE_BUSY or SQLITE_LOCKED, for at
/// most `within`. Sidecars started together (`tandem run`) create one file together, and SQLite answers BUSY at
/// once, without waiting for the busy timeout, when waiting could deadlock (e.g. two connections switching a new
/// file to WAL).
pub fn open_with_busy_retry<T>(
    what: &str,
    within: Duration,
    mut open: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(5);
    loop {
        match open() {
            Err(e) if is_busy(&e) && Instant::now() + delay < deadline => {
                tracing::debug!("{what}: {e}; retrying in {delay:?}");
                std::thread::sleep(delay.mul_f64(rand::random_range(0.5..1.5)));
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_errors_are_retried_others_are_not() {
        let busy = || {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some("database is locked".into()),
            )
        };
        let mut calls = 0;
        let r = open_with_busy_retry("t", Duration::from_secs(5), || {
            calls += 1;
            if calls < 3 { Err(busy()) } else { Ok(calls) }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: rusqlite::Result<()> = open_with_busy_retry("t", Duration::from_secs(5), || {
            calls += 1;
            Err(rusqlite::Error::InvalidQuery)
        });
        assert!(r.is_err() && calls == 1);
    }

    #[test]
    fn creates_the_folder_of_a_path_but_not_of_uris() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a/b/state.db");
        create_parent_dir(db.to_str().unwrap()).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        create_parent_dir("file:/nonexistent-tandem/x.db?mode=ro").unwrap();
        assert!(!Path::new("/nonexistent-tandem").exists());
        let conn = connect(db.to_str().unwrap(), Duration::from_millis(100), true).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}

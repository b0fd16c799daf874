//! The apps `tandem run` is running on this machine: one small JSON file per app in `~/.tandem/run/`, written
//! by the process that started the app and removed when it ends. `tandem list`, `stop`, `invoke` and
//! `publish` read it (the Dapr CLI scans the process table for daprd instead). A file whose process is gone,
//! or whose pid now belongs to another process, is stale and removed on reading.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One running app and its sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub app_id: String,
    pub http_port: u16,
    pub grpc_port: u16,
    /// 0 when the app has no port.
    pub app_port: u16,
    pub metrics_enabled: bool,
    pub command: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub daprd_pid: u32,
    /// The `tandem run` process that started the app (and holds this entry).
    pub cli_pid: u32,
    /// 0 when no app command runs.
    pub app_pid: u32,
    pub max_request_body_size: u64,
    pub run_template_path: String,
    pub run_template_name: String,
    pub app_log_path: String,
    pub daprd_log_path: String,
    /// The start time of `cli_pid` (clock ticks since boot), telling a live entry from a reused pid.
    pub cli_start: u64,
}

/// `~/.tandem/run`.
pub fn dir() -> PathBuf {
    super::home_dir().join("run")
}

/// The entry of the app `index` of this process, removed when dropped.
pub struct Registration {
    path: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `entry` (atomically: readers never see half a file). Failing to register only costs `tandem list`
/// its view of the app, so callers log and go on.
pub fn register(dir: &Path, index: usize, entry: &Entry) -> std::io::Result<Registration> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let path = dir.join(format!("{}-{index}.json", entry.cli_pid));
    let tmp = dir.join(format!(".{}-{index}.tmp", entry.cli_pid));
    std::fs::write(&tmp, serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(Registration { path })
}

/// Every live entry, oldest first; stale ones are removed.
pub fn list(dir: &Path) -> Vec<Entry> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in read.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        // Entries are small; anything large is not ours.
        if e.metadata().is_ok_and(|m| m.len() > 64 * 1024) {
            continue;
        }
        let parsed = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Entry>(&b).ok());
        match parsed {
            Some(entry) if alive(entry.cli_pid, entry.cli_start) => out.push(entry),
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out.sort_by(|a, b| (a.started, a.cli_pid, &a.app_id).cmp(&(b.started, b.cli_pid, &b.app_id)));
    out
}

/// Whether `pid` runs and is the process that started at `start` ticks.
pub fn alive(pid: u32, start: u64) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !zombie(pid) && start_ticks(pid).is_none_or(|s| s == start)
}

/// An exited process its parent has not reaped yet (state `Z` in `/proc/<pid>/stat`) has ended.
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|i| stat[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after its last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `5s`, `3m`, `2h`, `4d`: how the Dapr CLI shows an app's age.
pub fn age(started: u64, now: u64) -> String {
    let s = now.saturating_sub(started);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `2026-12-05 12:10.19` (UTC), the Dapr CLI's CREATED column.
pub fn created(started: u64) -> String {
    let [y, mo, d, h, mi, s] = utc(started);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}.{s:02}")
}

/// `20261205121019` (UTC): the time in a log file's name, as the Dapr CLI names them.
pub fn file_stamp(secs: u64) -> String {
    let [y, mo, d, h, mi, s] = utc(secs);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
}

/// Year, month, day, hour, minute, second of `secs` since the epoch, in UTC.
fn utc(secs: u64) -> [i64; 6] {
    let t = time::OffsetDateTime::from_unix_timestamp(secs.min(i64::MAX as u64) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    [
        t.year().into(),
        u8::from(t.month()).into(),
        t.day().into(),
        t.hour().into(),
        t.minute().into(),
        t.second().into(),
    ]
}

/// Sends `signal` to `pid` (or, with `group`, to the process group it leads).
pub fn signal(pid: u32, signal: libc::c_int, group: bool) {
    if pid == 0 || pid > i32::MAX as u32 {
        return;
    }
    let target = if group {
        -(pid as libc::pid_t)
    } else {
        pid as libc::pid_t
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(target, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app: &str, cli_pid: u32) -> Entry {
        Entry {
            app_id: app.into(),
            http_port: 3500,
            grpc_port: 50001,
            app_port: 0,
            metrics_enabled: true,
            command: "python3 app.py".into(),
            started: now(),
            daprd_pid: cli_pid,
            cli_pid,
            app_pid: 0,
            max_request_body_size: 4 << 20,
            run_template_path: String::new(),
            run_template_name: String::new(),
            app_log_path: String::new(),
            daprd_log_path: String::new(),
            cli_start: start_ticks(cli_pid).unwrap_or(0),
        }
    }

    #[test]
    fn entries_live_while_registered_and_their_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let reg = register(dir.path(), 0, &entry("a", me)).unwrap();
        let listed = list(dir.path());
        assert_eq!(listed, [entry("a", me)]);
        drop(reg);
        assert!(list(dir.path()).is_empty(), "removed when its holder ends");
    }

    #[test]
    fn stale_and_foreign_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        // A process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(
            dir.path().join("x-0.json"),
            serde_json::to_vec(&entry("gone", dead)).unwrap(),
        )
        .unwrap();
        // Our pid, but a different start time: the pid was reused.
        let mut reused = entry("reused", me);
        reused.cli_start += 1;
        std::fs::write(dir.path().join("y-0.json"), serde_json::to_vec(&reused).unwrap()).unwrap();
        std::fs::write(dir.path().join("z-0.json"), b"not json").unwrap();
        let _live = register(dir.path(), 1, &entry("live", me)).unwrap();
        let ids: Vec<_> = list(dir.path()).into_iter().map(|e| e.app_id).collect();
        assert_eq!(ids, ["live"]);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "stale files are removed: {left:?}");
    }

    #[test]
    fn ages_and_creation_times_read_as_the_dapr_cli_prints_them() {
        assert_eq!(age(100, 159), "59s");
        assert_eq!(age(0, 120), "2m");
        assert_eq!(age(0, 7200), "2h");
        assert_eq!(age(0, 3 * 86400), "3d");
        assert_eq!(created(1_796_472_619), "2026-12-05 12:10.19");
        assert_eq!(file_stamp(1_796_472_619), "20261205121019");
    }
}

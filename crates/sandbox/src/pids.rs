//! Naming a host process for good: a pid with its start time (a pid alone
//! may be recycled), written to the pid files of workers and sandboxes and
//! read back from `/proc`; its resident memory; whether its process group
//! still runs.

use std::fs;
use std::path::Path;

/// The record that names process `pid` for good: `<pid> <start time>`
/// (pid files of workers and sandboxes).
pub fn pid_record(pid: u32) -> String {
    format!("{pid} {}\n", process_start_time(pid).unwrap_or(0))
}

/// Reads a [`pid_record`] back: `(pid, start time)`.
pub fn read_pid_record(path: &Path) -> Option<(u32, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let started = parts.next()?.parse().ok()?;
    Some((pid, started))
}

/// Resident memory of process `pid` in bytes (/proc/PID/statm).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Start time of a live process in clock ticks since boot (field 22 of
/// /proc/PID/stat); with the pid it names one process for good. `None` when
/// no such process runs (zombies count as gone: they run nothing).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether a process of process group `pgid` still runs (zombies, which
/// have exited and wait for their parent, do not count).
pub fn group_runs(pgid: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return false;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // After the command name (which may hold spaces): state, ppid, pgrp.
        let mut fields = stat[stat.rfind(')').map_or(0, |i| i + 1)..].split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable_and_absent_for_unused_pid() {
        let me = std::process::id();
        let a = process_start_time(me).expect("own start time");
        assert_eq!(process_start_time(me), Some(a));
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }

    #[test]
    fn a_group_runs_while_a_process_of_it_does() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pgid = child.id();
        assert!(group_runs(pgid));
        child.kill().expect("kill");
        // Killed and not yet waited for: a zombie, which does not run.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!group_runs(pgid));
        child.wait().expect("wait");
        assert!(!group_runs(pgid));
    }

    #[test]
    fn pid_record_round_trip_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pid");
        fs::write(&p, "123 456\n").expect("write");
        assert_eq!(read_pid_record(&p), Some((123, 456)));
        fs::write(&p, "nonsense").expect("write");
        assert_eq!(read_pid_record(&p), None);
        assert_eq!(read_pid_record(&dir.path().join("missing")), None);
    }
}

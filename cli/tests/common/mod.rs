//! Helpers the process tests share: finding the game-server processes a fleet started.
#![allow(dead_code)] // each test file uses its own share of them

use std::path::Path;

use nix::unistd::Pid;

/// `/proc/PID/stat`'s state (field 3) and parent pid (field 4). The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after its `)`.
pub fn stat(pid: i32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let parent = rest.next()?.parse().ok()?;
    Some((state, parent))
}

/// Child processes of this test process whose environment holds `KEY=value`. The
/// controller hands every game server its name and fleet in `GAIA_SERVER_NAME` and
/// `GAIA_FLEET`; `/proc/PID/environ` is the environment the process started with.
pub fn children_with_env(key: &str, value: &str) -> Vec<i32> {
    let me = std::process::id();
    let needle = format!("{key}={value}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if stat(pid).is_none_or(|(_, parent)| parent != me) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|&b| b == 0).any(|var| var == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

pub fn pid_of(server: &str) -> Pid {
    match children_with_env("GAIA_SERVER_NAME", server)[..] {
        [pid] => Pid::from_raw(pid),
        ref pids => panic!("expected one child process for {server}, found {pids:?}"),
    }
}

pub fn exists(pid: Pid) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

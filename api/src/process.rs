//! This process's CPU time and resident memory, for the game server's `/metrics` and
//! the load generator's report.

/// CPU seconds (user + system, all threads) and resident memory so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Current resident set size; `None` where `/proc` is not there.
    pub rss_bytes: Option<u64>,
}

pub fn usage() -> Usage {
    let cpu_seconds = match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            secs(usage.user_time()) + secs(usage.system_time())
        }
        Err(_) => 0.0,
    };
    Usage { cpu_seconds, rss_bytes: resident_bytes() }
}

/// `VmRSS` from `/proc/self/status`, which the kernel gives in kB.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_grows_with_work_and_memory() {
        let before = super::usage();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let after = super::usage();
        assert!(after.cpu_seconds > before.cpu_seconds, "{before:?} -> {after:?}");
        if cfg!(target_os = "linux") {
            assert!(after.rss_bytes.is_some_and(|b| b > 1024 * 1024), "{after:?}");
        }
    }
}

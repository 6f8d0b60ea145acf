//! What the run cost: CPU and memory of the load generator and of each game server
//! (and of the raw baseline's server, read off `/proc`, [`of_process`]).
//!
//! Game servers publish their CPU seconds, resident memory and connection count on
//! `/metrics` (`gaia_gameserver_process_cpu_seconds`, `..._process_resident_bytes`,
//! `..._connections`). The run samples every server before the bots start, when the
//! steady phase starts and when it ends. CPU is the steady phase's share of one core;
//! memory per connection is the growth since before the bots, over the connections;
//! the tick duration's p99 is read off the steady phase's share of the server's
//! `gaia_gameserver_tick_duration_seconds` histogram (so it is a bucket bound). Servers whose
//! worlds start operations (agents' model calls) also report how many finished in the
//! steady phase, per second, and their latency's p50 and p99, off `gaia_ops_*`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use gaia_api::gameserver::GameServer;
use gaia_api::process::Usage;

/// One scrape of a game server's `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub connections: u64,
    /// The tick-duration histogram: (upper bound in seconds, cumulative count).
    pub tick_buckets: Vec<(f64, u64)>,
    /// Operations finished, every kind and result.
    pub operations: u64,
    /// Their durations' histogram, every kind summed.
    pub op_buckets: Vec<(f64, u64)>,
}

const TICK_BUCKET: &str = "gaia_gameserver_tick_duration_seconds_bucket{le=\"";

/// Server name -> sample, for the servers that answered.
pub(crate) type Samples = BTreeMap<String, Sample>;

/// The numbers the report needs from a `/metrics` text; `None` if one is missing.
pub(crate) fn parse(text: &str) -> Option<Sample> {
    let value = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    let tick_buckets = text
        .lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(TICK_BUCKET)?.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    let operations = text
        .lines()
        .filter_map(|line| {
            line.strip_prefix("gaia_ops_operations_total{")?.split_once("} ")?.1.trim().parse::<f64>().ok()
        })
        .sum::<f64>() as u64;
    let mut op_buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("gaia_ops_duration_seconds_bucket{") else { continue };
        let Some((labels, count)) = rest.split_once("} ") else { continue };
        let Some(le) = labels.split("le=\"").nth(1).and_then(|l| l.split('"').next()) else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        let count = count.trim().parse::<f64>().ok()? as u64;
        match op_buckets.iter_mut().find(|b| b.0 == le) {
            Some(bucket) => bucket.1 += count,
            None => op_buckets.push((le, count)),
        }
    }
    op_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(Sample {
        cpu_seconds: value("gaia_gameserver_process_cpu_seconds")?,
        rss_bytes: value("gaia_gameserver_process_resident_bytes")? as u64,
        connections: value("gaia_gameserver_connections")? as u64,
        tick_buckets,
        operations,
        op_buckets,
    })
}

/// The bound of the bucket holding the 99th percentile of the ticks between two
/// scrapes of the same histogram; `None` without ticks.
fn tick_p99(start: &[(f64, u64)], end: &[(f64, u64)]) -> Option<Duration> {
    percentile(start, end, 0.99)
}

/// The bound of the bucket holding quantile `q` of what was observed between two scrapes
/// of the same histogram; `None` without observations.
fn percentile(start: &[(f64, u64)], end: &[(f64, u64)], q: f64) -> Option<Duration> {
    let counts: Vec<(f64, u64)> = end
        .iter()
        .map(|&(le, n)| (le, n.saturating_sub(start.iter().find(|b| b.0 == le).map_or(0, |b| b.1))))
        .collect();
    let total = counts.last()?.1;
    if total == 0 {
        return None;
    }
    let le = counts.iter().find(|&&(_, n)| n as f64 >= q * total as f64)?.0;
    le.is_finite().then(|| Duration::from_secs_f64(le))
}

/// `ws://host:port/ws` -> `http://host:port/metrics`.
fn metrics_url(address: &str) -> Option<String> {
    let host = address.strip_prefix("ws://")?.split('/').next()?;
    Some(format!("http://{host}/metrics"))
}

/// Scrapes every server with an address; those that do not answer are left out.
pub(crate) async fn sample(http: &reqwest::Client, servers: &[GameServer]) -> Samples {
    let mut samples = Samples::new();
    for server in servers {
        let Some(url) = server.address.as_deref().and_then(metrics_url) else { continue };
        let text = async { http.get(&url).timeout(Duration::from_secs(5)).send().await?.text().await };
        match text.await {
            Ok(text) => match parse(&text) {
                Some(sample) => {
                    samples.insert(server.name.clone(), sample);
                }
                None => tracing::warn!(%url, "metrics lack process figures"),
            },
            Err(e) => tracing::warn!(%url, error = %e, "cannot scrape game server"),
        }
    }
    samples
}

/// One process's share of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessUse {
    pub name: String,
    /// Steady phase, in percent of one core.
    pub cpu_percent: f64,
    /// CPU time over the steady phase, every thread, user and system.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Connections at the end of the steady phase (game servers).
    pub connections: Option<u64>,
    /// Resident memory growth since before the bots, per connection.
    pub bytes_per_connection: Option<f64>,
    /// 99% of the steady phase's ticks took at most this (game servers).
    pub tick_p99: Option<Duration>,
    /// Operations finished in the steady phase: per second, and the p50 and p99 of their
    /// latency (bucket bounds); `None` for a server that finished none.
    pub operations: Option<(f64, Option<Duration>, Option<Duration>)>,
}

/// Folds the samples into one line per process: the load generator first.
pub(crate) fn usage(
    loadgen: (Usage, Usage),
    before: &Samples,
    start: &Samples,
    end: &Samples,
    steady: Duration,
) -> Vec<ProcessUse> {
    let secs = steady.as_secs_f64().max(1e-3);
    let mut out = vec![process_use("loadgen", (loadgen.0, loadgen.0, loadgen.1), None, steady)];
    for (name, last) in end {
        let Some(first) = start.get(name) else { continue };
        let per_connection = before
            .get(name)
            .filter(|_| last.connections > 0)
            .map(|b| last.rss_bytes.saturating_sub(b.rss_bytes) as f64 / last.connections as f64);
        out.push(ProcessUse {
            name: name.clone(),
            cpu_percent: (last.cpu_seconds - first.cpu_seconds) / secs * 100.0,
            cpu_seconds: last.cpu_seconds - first.cpu_seconds,
            rss_bytes: last.rss_bytes,
            connections: Some(last.connections),
            bytes_per_connection: per_connection,
            tick_p99: tick_p99(&first.tick_buckets, &last.tick_buckets),
            operations: (last.operations > first.operations).then(|| {
                let rate = (last.operations - first.operations) as f64 / secs;
                let p50 = percentile(&first.op_buckets, &last.op_buckets, 0.5);
                (rate, p50, percentile(&first.op_buckets, &last.op_buckets, 0.99))
            }),
        });
    }
    out
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times: `USER_HZ`, which Linux
/// fixes at 100 for user space (what `sysconf(_SC_CLK_TCK)` answers).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, every thread) from the text of `/proc/<pid>/stat`.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); the state, field 3, is the first after the name.
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
}

/// `VmRSS` from the text of `/proc/<pid>/status`, which the kernel gives in kB.
fn status_rss_bytes(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
    Some(kb.parse::<u64>().ok()? * 1024)
}

/// Another process's CPU time and resident memory so far, as [`gaia_api::process::usage`]
/// gives this one's; `None` when `/proc` does not have it (it exited, or no Linux).
pub(crate) fn of_process(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage { cpu_seconds: stat_cpu_seconds(&stat)?, rss_bytes: status_rss_bytes(&status) })
}

/// A process sampled before its clients connected, when the steady phase started and
/// when it ended, as one line: CPU over the steady phase, memory growth per connection.
pub(crate) fn process_use(
    name: &str,
    (before, start, end): (Usage, Usage, Usage),
    connections: Option<u64>,
    steady: Duration,
) -> ProcessUse {
    let cpu_seconds = end.cpu_seconds - start.cpu_seconds;
    let rss_bytes = end.rss_bytes.unwrap_or(0);
    let bytes_per_connection = match (connections, before.rss_bytes) {
        (Some(n), Some(before)) if n > 0 => Some(rss_bytes.saturating_sub(before) as f64 / n as f64),
        _ => None,
    };
    ProcessUse {
        name: name.into(),
        cpu_percent: cpu_seconds / steady.as_secs_f64().max(1e-3) * 100.0,
        cpu_seconds,
        rss_bytes,
        connections,
        bytes_per_connection,
        tick_p99: None,
        operations: None,
    }
}

impl fmt::Display for ProcessUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.rss_bytes as f64 / (1024.0 * 1024.0);
        write!(f, "{} cpu {:.0}% rss {mib:.1} MiB", self.name, self.cpu_percent)?;
        if let Some(connections) = self.connections {
            write!(f, ", {connections} connections")?;
        }
        if let Some(bytes) = self.bytes_per_connection {
            write!(f, ", {:.1} KiB per connection", bytes / 1024.0)?;
        }
        if let Some(p99) = self.tick_p99 {
            write!(f, ", tick p99 <= {:.2} ms", p99.as_secs_f64() * 1e3)?;
        }
        if let Some((rate, p50, p99)) = self.operations {
            let ms = |d: Option<Duration>| d.map_or_else(|| "?".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3));
            write!(f, ", {rate:.1} operations/s, latency ms p50 <= {} p99 <= {}", ms(p50), ms(p99))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_gameserver_metrics() {
        let text = "# HELP gaia_gameserver_connections Open WebSocket connections\n\
                    gaia_gameserver_connections 3000\n\
                    gaia_gameserver_connections_other 1\n\
                    gaia_gameserver_process_cpu_seconds 12.5\n\
                    gaia_gameserver_process_resident_bytes 52428800\n";
        let sample = Sample {
            cpu_seconds: 12.5,
            rss_bytes: 52_428_800,
            connections: 3000,
            tick_buckets: vec![],
            operations: 0,
            op_buckets: vec![],
        };
        assert_eq!(parse(text), Some(sample));
        let text = format!(
            "{text}gaia_gameserver_tick_duration_seconds_bucket{{le=\"0.001\"}} 90\n\
             gaia_gameserver_tick_duration_seconds_bucket{{le=\"0.002\"}} 100\n\
             gaia_gameserver_tick_duration_seconds_bucket{{le=\"+Inf\"}} 100\n"
        );
        let buckets = parse(&text).unwrap().tick_buckets;
        assert_eq!(buckets, vec![(0.001, 90), (0.002, 100), (f64::INFINITY, 100)]);
        // Between the scrapes: 60 ticks, 59 under 1 ms: p99 is in the 2 ms bucket.
        let start = vec![(0.001, 31), (0.002, 40), (f64::INFINITY, 40)];
        assert_eq!(tick_p99(&start, &buckets), Some(Duration::from_millis(2)));
        let start = vec![(0.001, 31), (0.002, 31), (f64::INFINITY, 31)];
        assert_eq!(tick_p99(&start, &buckets), Some(Duration::from_millis(2)), "59 of 69 under 1 ms");
        assert_eq!(tick_p99(&buckets, &buckets), None, "no ticks in between");
        assert_eq!(parse("gaia_gameserver_connections 1\n"), None);
        assert_eq!(metrics_url("ws://127.0.0.1:4000/ws").as_deref(), Some("http://127.0.0.1:4000/metrics"));
        assert_eq!(metrics_url("http://x"), None);
    }

    #[test]
    fn operations_sum_every_kind_and_result() {
        let text = "gaia_gameserver_connections 1\n\
                    gaia_gameserver_process_cpu_seconds 1\n\
                    gaia_gameserver_process_resident_bytes 1\n\
                    gaia_ops_operations_total{kind=\"chat\",result=\"ok\"} 30\n\
                    gaia_ops_operations_total{kind=\"embed\",result=\"timed_out\"} 2\n\
                    gaia_ops_duration_seconds_bucket{kind=\"chat\",le=\"1.024\"} 10\n\
                    gaia_ops_duration_seconds_bucket{kind=\"chat\",le=\"2.048\"} 30\n\
                    gaia_ops_duration_seconds_bucket{kind=\"chat\",le=\"+Inf\"} 30\n\
                    gaia_ops_duration_seconds_bucket{kind=\"embed\",le=\"1.024\"} 2\n\
                    gaia_ops_duration_seconds_bucket{kind=\"embed\",le=\"2.048\"} 2\n\
                    gaia_ops_duration_seconds_bucket{kind=\"embed\",le=\"+Inf\"} 2\n";
        let end = parse(text).unwrap();
        assert_eq!(end.operations, 32);
        assert_eq!(end.op_buckets, vec![(1.024, 12), (2.048, 32), (f64::INFINITY, 32)]);
        let start = Sample { operations: 0, op_buckets: vec![], ..end.clone() };
        let got = usage(
            (Usage { cpu_seconds: 0.0, rss_bytes: None }, Usage { cpu_seconds: 0.0, rss_bytes: None }),
            &Samples::new(),
            &Samples::from([("gs".to_string(), start)]),
            &Samples::from([("gs".to_string(), end)]),
            Duration::from_secs(16),
        );
        assert_eq!(
            got[1].operations,
            Some((2.0, Some(Duration::from_millis(2048)), Some(Duration::from_millis(2048))))
        );
        assert!(got[1].to_string().ends_with("2.0 operations/s, latency ms p50 <= 2048 p99 <= 2048"), "{}", got[1]);
    }

    #[test]
    fn usage_is_per_steady_second_and_growth_per_connection() {
        let s = |cpu, mib: u64, connections| Sample {
            cpu_seconds: cpu,
            rss_bytes: mib << 20,
            connections,
            tick_buckets: vec![(0.001, 0), (f64::INFINITY, 0)],
            operations: 0,
            op_buckets: vec![],
        };
        let before = Samples::from([("gs".to_string(), s(1.0, 10, 0))]);
        let start = Samples::from([("gs".to_string(), s(5.0, 30, 1024))]);
        let end = Samples::from([("gs".to_string(), s(15.0, 30, 1024))]);
        let lg = |cpu| Usage { cpu_seconds: cpu, rss_bytes: Some(1 << 20) };
        let got = usage((lg(0.0), lg(5.0)), &before, &start, &end, Duration::from_secs(20));
        assert_eq!(got[0].cpu_percent, 25.0);
        assert_eq!(got[1].cpu_percent, 50.0);
        assert_eq!(got[1].bytes_per_connection, Some(20.0 * 1024.0));
        assert_eq!(got[1].to_string(), "gs cpu 50% rss 30.0 MiB, 1024 connections, 20.0 KiB per connection");
    }

    #[test]
    fn another_process_is_read_off_proc() {
        // A command name with a space and a parenthesis; utime 250 and stime 50 ticks.
        let stat = "4242 (gaia (raw) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 100 1 2";
        assert_eq!(stat_cpu_seconds(stat), Some(3.0));
        assert_eq!(stat_cpu_seconds("4242 (gaia) S 1"), None);
        assert_eq!(status_rss_bytes("Name:\tgaia\nVmRSS:\t  12345 kB\nThreads: 3\n"), Some(12_345 * 1024));
        assert_eq!(status_rss_bytes("Name:\tgaia\n"), None);
        if cfg!(target_os = "linux") {
            let me = of_process(std::process::id()).unwrap();
            assert!(me.cpu_seconds >= 0.0 && me.rss_bytes.is_some_and(|b| b > 0), "{me:?}");
        }
        assert_eq!(of_process(u32::MAX), None);
    }

    #[test]
    fn a_process_line_is_its_steady_cpu_and_its_growth_per_connection() {
        let at = |cpu, mib: u64| Usage { cpu_seconds: cpu, rss_bytes: Some(mib << 20) };
        let raw =
            process_use("raw-server", (at(0.5, 10), at(1.0, 50), at(4.0, 50)), Some(1024), Duration::from_secs(10));
        assert_eq!((raw.cpu_seconds, raw.cpu_percent), (3.0, 30.0));
        assert_eq!(raw.bytes_per_connection, Some(40.0 * 1024.0));
        assert_eq!(raw.to_string(), "raw-server cpu 30% rss 50.0 MiB, 1024 connections, 40.0 KiB per connection");
    }
}

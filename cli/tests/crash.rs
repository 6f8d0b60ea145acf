//! Game servers that die or hang, against an embedded fleet running the real `gaia
//! gameserver` binary as its child processes: the fleet notices, marks the server
//! Unhealthy, and starts a replacement. Each test runs its own fleet on its own port,
//! under its own fleet name, so they can run side by side in this one test process.
//!
//! These use real processes and real time (the controller, the sweeper and the servers'
//! health pings are all live), so the timing asserts carry margins; each says why.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Fleet, POLL, REGION, children_with_env, exists, fleet_config, pid_of, stat};
use gaia_api::gameserver::{GameServer, GameServerState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// Process start, registration and Ready, for a debug build on a busy machine.
const START: Duration = Duration::from_secs(20);

impl Fleet {
    /// Two replicas with room for 2 worlds each.
    async fn start(name: &str) -> Fleet {
        Fleet::launch(name, fleet_config(name, 2, 2)).await
    }

    /// Waits for `n` Ready servers in [`REGION`] and answers their names.
    async fn ready(&self, n: usize, within: Duration, what: &str) -> BTreeSet<String> {
        self.wait_for(within, what, |servers| {
            let ready = ready_names(servers);
            (ready.len() == n).then_some(ready)
        })
        .await
    }
}

fn ready_names(servers: &[GameServer]) -> BTreeSet<String> {
    servers.iter().filter(|s| s.state == GameServerState::Ready && s.region == REGION).map(|s| s.name.clone()).collect()
}

fn state_of(servers: &[GameServer], name: &str) -> Option<GameServerState> {
    servers.iter().find(|s| s.name == name).map(|s| s.state)
}

async fn wait_gone(pid: Pid, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    while exists(pid) {
        assert!(
            started.elapsed() < within,
            "{what}: pid {pid} still exists after {within:?}: {:?}",
            stat(pid.as_raw())
        );
        sleep(POLL).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_marked_unhealthy_and_replaced() {
    let fleet = Fleet::start("sigkill").await;
    let before = fleet.ready(2, START, "2 Ready servers").await;
    let victim = before.first().unwrap().clone();
    let pid = pid_of(&victim);

    kill(pid, Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    // The controller reaps the exit at its next reconcile (every 500 ms) and marks the
    // record Unhealthy; were it missed, the health sweep would within 3 s of the last
    // ping. 3.5 s is that threshold plus a reconcile period.
    let state = fleet
        .wait_for(Duration::from_millis(3500), "the killed server's record leaves Ready", |servers| {
            match state_of(servers, &victim) {
                Some(GameServerState::Ready) => None,
                other => Some(other),
            }
        })
        .await;
    let marked = killed.elapsed();
    // Tombstones last 60 s: a record already gone would be a bug, not a fast path.
    assert_eq!(state, Some(GameServerState::Unhealthy), "{victim} after SIGKILL");

    let after = fleet.ready(2, Duration::from_secs(15), "a replacement Ready beside the survivor").await;
    let replaced = killed.elapsed();
    let survivors: Vec<_> = before.intersection(&after).collect();
    assert_eq!(survivors.len(), 1, "one old server stays, one new one joins: before {before:?}, after {after:?}");
    assert!(!after.contains(&victim), "{after:?}");
    wait_gone(pid, Duration::from_secs(3), "the killed process is reaped").await;

    let stopped = fleet.stop().await;
    eprintln!("SIGKILL: Unhealthy after {marked:?}, replacement Ready after {replaced:?}, shutdown {stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_misses_its_pings_and_is_killed_and_replaced() {
    let fleet = Fleet::start("sigstop").await;
    let before = fleet.ready(2, START, "2 Ready servers").await;
    let victim = before.first().unwrap().clone();
    let pid = pid_of(&victim);

    kill(pid, Signal::SIGSTOP).unwrap();
    let hung = Instant::now();
    let started = Instant::now();
    while stat(pid.as_raw()).is_none_or(|(state, _)| state != 'T') {
        assert!(started.elapsed() < Duration::from_secs(1), "{victim} not stopped: {:?}", stat(pid.as_raw()));
        sleep(Duration::from_millis(10)).await;
    }

    // The process still exists, so only the health timeout can catch it: 3 s after its
    // last ping, at the next sweep (every 250 ms). The last ping came up to one period
    // (1 s) before the stop, so the mark lands 2 s to 3.25 s after it, plus polling.
    let state = fleet
        .wait_for(Duration::from_secs(5), "the hung server's record leaves Ready", |servers| {
            match state_of(servers, &victim) {
                Some(GameServerState::Ready) => None,
                other => Some(other),
            }
        })
        .await;
    let marked = hung.elapsed();
    assert_eq!(state, Some(GameServerState::Unhealthy), "{victim} after SIGSTOP");
    // Not earlier than the threshold allows (timeout minus one ping period, less
    // scheduling slack): this is the health timeout acting, not an exit being noticed.
    assert!(marked >= Duration::from_millis(1800), "{victim} marked Unhealthy after only {marked:?}");

    // Its record is terminal while its process runs: the controller SIGKILLs it at the
    // next reconcile and reaps it at the one after.
    let reaped = wait_gone(pid, Duration::from_secs(3), "the hung process is killed and reaped").await;

    let after = fleet.ready(2, Duration::from_secs(15), "a replacement Ready beside the survivor").await;
    let replaced = hung.elapsed();
    let survivors: Vec<_> = before.intersection(&after).collect();
    assert_eq!(survivors.len(), 1, "one old server stays, one new one joins: before {before:?}, after {after:?}");
    assert!(!after.contains(&victim), "{after:?}");

    let stopped = fleet.stop().await;
    eprintln!(
        "SIGSTOP: Unhealthy after {marked:?}, reaped {reaped:?} later, replacement Ready after {replaced:?}, \
         shutdown {stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_game_server() {
    let fleet = Fleet::start("shutdown").await;
    let names = fleet.ready(2, START, "2 Ready servers").await;
    let pids: Vec<Pid> = names.iter().map(|name| pid_of(name)).collect();
    let name = fleet.name.clone();

    let stopped = fleet.stop().await;
    for pid in &pids {
        assert!(!exists(*pid), "game server pid {pid} outlived the fleet: {:?}", stat(pid.as_raw()));
    }
    let left = children_with_env("GAIA_FLEET", &name);
    assert!(left.is_empty(), "game servers of fleet {name} left behind: {left:?}");
    eprintln!("shutdown: run returned after {stopped:?}");
}

//! The controller's shell with real child processes and the in-memory registry.
//!
//! The fake game server is `/bin/sh`: it writes its environment and its pid into a test
//! directory (named by the `GAIA_SERVER_NAME` the controller gave it), then `exec`s
//! `sleep`, so the pid is the process the controller signals. Real time, short
//! intervals, and every wait bounded.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gaia_api::allocation::AllocationRequest;
use gaia_api::fleet::{DesiredReplicas, FleetConfig, FleetSpec};
use gaia_api::gameserver::{GameServer, GameServerState, RegisterRequest};
use gaia_controller::{Config, ControllerError, ErrorLabels, Metrics, RegionLabels, run};
use gaia_registry::{MemoryRegistry, Registry, RegistryConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Writes env and pid (pid last, renamed into place, so a pid file means both are
/// complete), then becomes `sleep`.
const SERVER: &str = r#"d="$GAIA_TEST_DIR"; n="$GAIA_SERVER_NAME"; env > "$d/$n.env"; echo $$ > "$d/$n.tmp"; mv "$d/$n.tmp" "$d/$n.pid"; exec sleep 600"#;

/// The same, but deaf to SIGTERM and SIGINT (the ignore survives `exec`).
fn stubborn_server() -> String {
    format!("trap '' TERM INT; {SERVER}")
}

const WAIT: Duration = Duration::from_secs(5);
const SDK_SECRET: &str = "sdk-secret";

struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("gaia-controller-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fleet(script: &str, dir: &TestDir) -> FleetSpec {
    let yaml = "
fleets:
  - name: town
    worldCapacity: 4
    playerCapacity: 100
    labels: { game: test }
    health: { periodSeconds: 1, failureThreshold: 3 }
    template: { command: [/bin/sh] }
    regions: [{ name: eu }]
";
    let mut spec = FleetConfig::from_yaml(yaml).unwrap().fleets.remove(0);
    spec.template.command = vec!["/bin/sh".into(), "-c".into(), script.into()];
    spec.template.env = BTreeMap::from([("GAIA_TEST_DIR".to_string(), dir.0.display().to_string())]);
    spec
}

fn eu(n: u32) -> DesiredReplicas {
    BTreeMap::from([(("town".to_string(), "eu".to_string()), n)])
}

struct Fixture {
    registry: Arc<MemoryRegistry>,
    desired: watch::Sender<DesiredReplicas>,
    /// The fleet's spec as the controller knows it; send a new one to roll the fleet.
    fleets: watch::Sender<FleetConfig>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ControllerError>>,
    dir: TestDir,
}

impl Fixture {
    fn start(script: &str, replicas: u32, stop_grace: Duration) -> Self {
        let dir = TestDir::new();
        let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
        let metrics = Arc::new(Metrics::new(&mut prometheus_client::registry::Registry::default()));
        let (fleets, updates) =
            watch::channel(FleetConfig { fleets: vec![fleet(script, &dir)], autoscalers: Vec::new() });
        let config = Config {
            sdk_url: "http://127.0.0.1:9".into(),
            join_secret: "test-secret".into(),
            sdk_secret: Some(SDK_SECRET.into()),
            reconcile_every: Duration::from_millis(50),
            stop_grace,
            updates: Some(updates),
            metrics: Some(Arc::clone(&metrics)),
            ..Config::default()
        };
        let (desired, rx) = watch::channel(eu(replicas));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            config,
            vec![fleet(script, &dir)],
            Arc::clone(&registry) as Arc<dyn Registry>,
            rx,
            shutdown.clone(),
        ));
        Self { registry, desired, fleets, metrics, shutdown, task, dir }
    }

    /// What a game server's SDK would do: every Scheduled record registers and is Ready.
    async fn ready_all(&self) {
        for record in self.records().await.into_iter().filter(|s| s.state == GameServerState::Scheduled) {
            if self.registry.register(&record.name, register_request()).await.is_ok() {
                let _ = self.registry.transition(&record.name, GameServerState::Ready).await;
            }
        }
    }

    async fn records(&self) -> Vec<GameServer> {
        self.registry.list(Some("town")).await.unwrap()
    }

    async fn live(&self) -> Vec<GameServer> {
        self.records().await.into_iter().filter(|s| !s.state.is_terminal()).collect()
    }

    async fn state(&self, name: &str) -> GameServerState {
        self.registry.get(name).await.unwrap().state
    }

    /// The pid the fake server wrote, once it has.
    fn pid(&self, name: &str) -> Option<Pid> {
        let text = std::fs::read_to_string(self.dir.0.join(format!("{name}.pid"))).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }

    fn env(&self, name: &str) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.dir.0.join(format!("{name}.env"))).unwrap();
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Live servers whose processes have written their pid: (name, pid), by name.
    async fn live_with_pids(&self) -> Vec<(String, Pid)> {
        let mut out = Vec::new();
        for server in self.live().await {
            match self.pid(&server.name) {
                Some(pid) => out.push((server.name, pid)),
                None => return Vec::new(),
            }
        }
        out
    }

    async fn exactly_live(&self, n: usize) -> Vec<(String, Pid)> {
        eventually(&format!("{n} live servers with running processes"), async || {
            let live = self.live_with_pids().await;
            (live.len() == n && live.iter().all(|(_, pid)| alive(*pid))).then_some(live)
        })
        .await
    }

    fn counter(
        &self,
        family: &prometheus_client::metrics::family::Family<RegionLabels, prometheus_client::metrics::counter::Counter>,
    ) -> u64 {
        family.get_or_create(&RegionLabels::new("town", "eu")).get()
    }

    async fn stop(self) -> Duration {
        let start = Instant::now();
        self.shutdown.cancel();
        let result = tokio::time::timeout(WAIT, self.task).await.expect("run returns after shutdown").unwrap();
        assert!(result.is_ok(), "run failed: {result:?}");
        start.elapsed()
    }
}

/// Whether a process with this pid exists (a zombie counts: the controller has not
/// reaped it yet).
/// What a stub server's SDK would send to register.
fn register_request() -> RegisterRequest {
    RegisterRequest {
        fleet: "town".into(),
        region: "eu".into(),
        address: "ws://127.0.0.1:1/ws".into(),
        world_capacity: 4,
        player_capacity: 100,
        labels: BTreeMap::new(),
        health: Default::default(),
    }
}

fn alive(pid: Pid) -> bool {
    kill(pid, None).is_ok()
}

/// Polls `check` until it answers, or fails the test after [`WAIT`] naming `what`.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn starts_desired_servers_and_replaces_one_that_dies() {
    let fx = Fixture::start(SERVER, 2, Duration::from_secs(2));
    let servers = fx.exactly_live(2).await;

    let (name, victim) = servers[0].clone();
    let record = fx.registry.get(&name).await.unwrap();
    assert!(name.starts_with("town-eu-") && name.len() == "town-eu-".len() + 5, "{name}");
    assert_eq!(record.labels.get("game").map(String::as_str), Some("test"));
    assert_eq!(record.health.period_seconds, 1);
    assert_eq!((record.world_capacity, record.player_capacity), (4, 100));
    let env = fx.env(&name);
    let sdk_token = gaia_api::token::TokenKey::new(SDK_SECRET).sdk_token(&name);
    for (key, want) in [
        ("GAIA_SERVER_NAME", name.as_str()),
        ("GAIA_SDK_TOKEN", sdk_token.as_str()),
        ("GAIA_FLEET", "town"),
        ("GAIA_REGION", "eu"),
        ("GAIA_SDK_URL", "http://127.0.0.1:9"),
        ("GAIA_JOIN_SECRET", "test-secret"),
        ("GAIA_WORLD_CAPACITY", "4"),
        ("GAIA_PLAYER_CAPACITY", "100"),
        ("GAIA_WORLD_PLAYER_CAPACITY", "30"),
        ("GAIA_HEALTH_PERIOD_SECONDS", "1"),
        ("GAIA_LISTEN", "127.0.0.1:0"),
        ("GAIA_EXIT_WITH_PARENT", "1"),
    ] {
        assert_eq!(env.get(key).map(String::as_str), Some(want), "{key}");
    }
    assert!(!env.contains_key("GAIA_SDK_SECRET"), "the server gets its token, not the secret");

    kill(victim, Signal::SIGKILL).unwrap();
    let replaced = eventually("the dead server marked Unhealthy and replaced", async || {
        let live = fx.live_with_pids().await;
        let unhealthy = fx.state(&name).await == GameServerState::Unhealthy;
        (unhealthy && live.len() == 2 && live.iter().all(|(n, _)| *n != name)).then_some(live)
    })
    .await;
    assert_eq!(fx.counter(&fx.metrics.exited), 1);
    assert_eq!(fx.counter(&fx.metrics.started), 3);
    assert_eq!(fx.metrics.running.get_or_create(&RegionLabels::new("town", "eu")).get(), 2);

    fx.stop().await;
    for (name, pid) in replaced {
        assert!(!alive(pid), "{name} still runs after shutdown");
    }
}

#[tokio::test]
async fn scale_down_stops_idle_servers_and_drains_busy_ones() {
    let grace = Duration::from_secs(1);
    let fx = Fixture::start(SERVER, 3, grace);
    let servers = fx.exactly_live(3).await;

    // One server hosts a world; asking for zero stops the two idle ones and drains it.
    let (busy, busy_pid) = servers[2].clone();
    fx.registry.register(&busy, register_request()).await.unwrap();
    fx.registry.transition(&busy, GameServerState::Ready).await.unwrap();
    let placement =
        fx.registry.allocate(&AllocationRequest { fleet: "town".into(), ..Default::default() }).await.unwrap();
    assert_eq!(placement.server.name, busy);

    fx.desired.send_replace(eu(0));
    let stopped = &servers[..2];
    eventually("the idle servers retired and their processes gone", async || {
        let mut done = true;
        for (name, pid) in stopped {
            done &= fx.state(name).await == GameServerState::Shutdown && !alive(*pid);
        }
        done.then_some(())
    })
    .await;
    assert_eq!(fx.counter(&fx.metrics.stopped), 2);
    assert_eq!(fx.counter(&fx.metrics.exited), 0, "stopping is not an unexpected exit");

    // The busy one is drained, not stopped: a real game server moves its world away
    // and exits; this stub does not, so it is killed once its grace has run out.
    let drained = Instant::now();
    eventually("the busy server marked Draining", async || {
        (fx.state(&busy).await == GameServerState::Draining).then_some(())
    })
    .await;
    assert_eq!(fx.counter(&fx.metrics.drained), 1);
    eventually("the stub that never drains killed after its grace", async || (!alive(busy_pid)).then_some(())).await;
    assert!(drained.elapsed() >= grace - Duration::from_millis(200), "killed before its grace");
    assert_eq!(fx.counter(&fx.metrics.killed), 1);
    fx.stop().await;
}

#[tokio::test]
async fn kills_processes_the_registry_gave_up_on() {
    let fx = Fixture::start(SERVER, 2, Duration::from_secs(2));
    let servers = fx.exactly_live(2).await;
    let (swept, swept_pid) = servers[0].clone();
    let (removed, removed_pid) = servers[1].clone();
    // As the health sweep does, and as a tombstone removal does.
    fx.registry.transition(&swept, GameServerState::Unhealthy).await.unwrap();
    fx.registry.remove(&removed).await.unwrap();

    let replacements = eventually("both processes killed and replaced", async || {
        let live = fx.live_with_pids().await;
        let fresh = live.iter().all(|(n, _)| *n != swept && *n != removed);
        (!alive(swept_pid) && !alive(removed_pid) && live.len() == 2 && fresh).then_some(live)
    })
    .await;
    assert_eq!(fx.counter(&fx.metrics.killed), 2);
    assert_eq!(fx.counter(&fx.metrics.exited), 0);
    fx.stop().await;
    assert!(replacements.iter().all(|(_, pid)| !alive(*pid)));
}

#[tokio::test]
async fn a_server_deaf_to_sigterm_is_killed_after_the_grace() {
    let grace = Duration::from_millis(300);
    let fx = Fixture::start(&stubborn_server(), 2, grace);
    let servers = fx.exactly_live(2).await;

    // Scale-down: SIGTERM is ignored, SIGKILL follows the grace.
    fx.desired.send_replace(eu(1));
    let asked = Instant::now();
    let (gone, gone_pid) = eventually("one server retired", async || {
        for (name, pid) in &servers {
            if fx.state(name).await == GameServerState::Shutdown {
                return Some((name.clone(), *pid));
            }
        }
        None
    })
    .await;
    eventually("the retired server killed", async || (!alive(gone_pid)).then_some(())).await;
    assert!(asked.elapsed() >= grace, "killed before its grace ran out");
    assert_eq!(fx.counter(&fx.metrics.killed), 1);

    // Shutdown (SIGINT): the same for the last one.
    let (last, last_pid) = servers.iter().find(|(n, _)| *n != gone).cloned().unwrap();
    let registry = Arc::clone(&fx.registry);
    let elapsed = fx.stop().await;
    assert!(elapsed >= grace && elapsed < grace + Duration::from_secs(2), "shutdown took {elapsed:?}");
    assert!(!alive(last_pid), "still running after shutdown");
    assert_eq!(registry.get(&last).await.unwrap().state, GameServerState::Unhealthy, "it could not say goodbye");
}

#[tokio::test]
async fn a_failed_spawn_marks_the_record_error_and_retries_later() {
    let dir = TestDir::new();
    let mut spec = fleet(SERVER, &dir);
    spec.template.command = vec!["/nonexistent/gaia-no-such-server".into()];
    let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let metrics = Arc::new(Metrics::new(&mut prometheus_client::registry::Registry::default()));
    let config = Config {
        reconcile_every: Duration::from_millis(50),
        metrics: Some(Arc::clone(&metrics)),
        ..Default::default()
    };
    let (_desired, rx) = watch::channel(eu(2));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(config, vec![spec], Arc::clone(&registry) as Arc<dyn Registry>, rx, shutdown.clone()));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let records = registry.list(Some("town")).await.unwrap();
    assert!(!records.is_empty(), "nothing was tried");
    assert!(records.iter().all(|s| s.state == GameServerState::Error), "{records:?}");
    // About one attempt per reconcile (9 in 400 ms), not one per missing server or a hot loop.
    assert!(records.len() <= 12, "{} attempts in 400 ms", records.len());
    let spawn_errors = metrics.errors.get_or_create(&ErrorLabels { error: "spawn" }).get();
    assert_eq!(spawn_errors, records.len() as u64);
    assert!(!task.is_finished(), "a failed spawn must not end the controller");

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn an_invalid_fleet_is_refused_before_anything_starts() {
    let dir = TestDir::new();
    let mut spec = fleet(SERVER, &dir);
    spec.world_capacity = 0;
    let registry = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let (_desired, rx) = watch::channel(eu(1));
    let result = run(Config::default(), vec![spec], registry.clone(), rx, CancellationToken::new()).await;
    match result {
        Err(ControllerError::InvalidFleet(e)) => assert_eq!(e.field, "fleets[0].worldCapacity"),
        other => panic!("expected InvalidFleet, got {other:?}"),
    }
    assert!(registry.list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_changed_template_rolls_the_servers_one_at_a_time() {
    let fx = Fixture::start(SERVER, 2, Duration::from_secs(1));
    let old = fx.exactly_live(2).await;
    fx.ready_all().await;

    let mut spec = fx.fleets.borrow().fleets.first().cloned().unwrap();
    spec.template.env.insert("GAIA_TEST_VERSION".into(), "2".into());
    let version = spec.template_version();
    fx.fleets.send_replace(FleetConfig { fleets: vec![spec], autoscalers: Vec::new() });

    let mut most_live = 0;
    let new = eventually("every server replaced by one of the new template", async || {
        fx.ready_all().await;
        let live = fx.live().await;
        most_live = most_live.max(live.len());
        let current = |s: &GameServer| s.labels.get(gaia_api::fleet::TEMPLATE_LABEL) == Some(&version);
        let done = live.len() == 2 && live.iter().all(|s| current(s) && s.state == GameServerState::Ready);
        done.then(|| live.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
    })
    .await;
    assert!(most_live <= 3, "at most one server above desired during the roll, saw {most_live}");
    for (name, pid) in &old {
        assert_eq!(fx.state(name).await, GameServerState::Shutdown, "{name}");
        eventually("an old process gone", async || (!alive(*pid)).then_some(())).await;
    }
    for name in &new {
        assert_eq!(
            fx.env(name).get("GAIA_TEST_VERSION").map(String::as_str),
            Some("2"),
            "{name} runs the new template"
        );
    }
    fx.stop().await;
}

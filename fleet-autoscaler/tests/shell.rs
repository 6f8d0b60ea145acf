//! The autoscaler's shell against the in-memory registry, on tokio's paused clock:
//! allocations raise desired replicas at once, freed worlds lower them only after the
//! scale-down delay and then in bounded steps, unmet requests bring a region back from
//! zero, every decision is explained, lagged events and registry errors are survived.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gaia_api::allocation::AllocationRequest;
use gaia_api::fleet::{DesiredReplicas, FleetConfig};
use gaia_api::gameserver::{GameServer, GameServerState, RegisterRequest};
use gaia_fleet_autoscaler::{DecisionLabels, Metrics, RegionLabels, Settings, Statuses, initial_desired, run};
use gaia_registry::{MemoryRegistry, Placement, Registry, RegistryConfig, RegistryError, RegistryEvent, SweepReport};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// town: 4 worlds per server; eu keeps 4 slots free with 1 to 5 servers, us keeps none
/// (0 to 5 servers); 30 s scale-down delay, then 25% per 15 s (the defaults).
/// plain: no autoscaler.
fn config(eu_replicas: u32) -> FleetConfig {
    FleetConfig::from_yaml(&format!(
        "
fleets:
  - name: town
    worldCapacity: 4
    template: {{ command: [gaia-gameserver] }}
    regions: [{{ name: eu, replicas: {eu_replicas} }}, {{ name: us, replicas: 0 }}]
  - name: plain
    template: {{ command: [gaia-gameserver] }}
    regions: [{{ name: eu, replicas: 2 }}]
autoscalers:
  - fleet: town
    scaleDownDelay: 30s
    policy: {{ buffer: {{ freeWorldSlots: 4, minReplicas: 1, maxReplicas: 5 }} }}
    regions:
      us: {{ buffer: {{ bufferSize: 0, maxReplicas: 5 }} }}
"
    ))
    .unwrap()
}

fn key(fleet: &str, region: &str) -> (String, String) {
    (fleet.to_string(), region.to_string())
}

struct Fixture {
    registry: Arc<dyn Registry>,
    desired: watch::Receiver<DesiredReplicas>,
    status: watch::Receiver<Statuses>,
    updates: watch::Sender<FleetConfig>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Fixture {
    fn start(config: FleetConfig, registry: Arc<dyn Registry>, sync_every: Duration) -> Self {
        let (tx, desired) = watch::channel(initial_desired(&config, chrono::Utc::now()));
        let (status_tx, status) = watch::channel(Statuses::new());
        let (updates, updates_rx) = watch::channel(config.clone());
        let metrics = Arc::new(Metrics::new(&mut prometheus_registry()));
        let settings = Settings {
            sync_every,
            debounce: Duration::from_millis(100),
            metrics: Some(Arc::clone(&metrics)),
            status: Some(status_tx),
            updates: Some(updates_rx),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config, Arc::clone(&registry), tx, settings, shutdown.clone()));
        Self { registry, desired, status, updates, metrics, shutdown, task }
    }

    fn eu(&self) -> u32 {
        self.region("eu")
    }

    fn region(&self, region: &str) -> u32 {
        self.desired.borrow()[&key("town", region)]
    }

    /// Waits (on the paused clock) until town/eu changes; returns the new value.
    async fn next_eu_change(&mut self) -> u32 {
        self.next_change("eu").await
    }

    async fn next_change(&mut self, region: &str) -> u32 {
        let before = self.region(region);
        loop {
            self.desired.changed().await.unwrap();
            if self.region(region) != before {
                return self.region(region);
            }
        }
    }

    fn decisions(&self, direction: &'static str, reason: &'static str) -> u64 {
        let labels = DecisionLabels { fleet: "town".into(), region: "eu".into(), direction, reason };
        self.metrics.scale_decisions.get_or_create(&labels).get()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn prometheus_registry() -> prometheus_client::registry::Registry {
    prometheus_client::registry::Registry::default()
}

async fn ready_server(registry: &dyn Registry, name: &str, region: &str) {
    let server = GameServer::scheduled(name, "town", region, 4, 100);
    registry.schedule(server).await.unwrap();
    let req = RegisterRequest {
        fleet: "town".into(),
        region: region.into(),
        address: format!("ws://{name}/ws"),
        world_capacity: 4,
        player_capacity: 100,
        labels: Default::default(),
        health: Default::default(),
    };
    registry.register(name, req).await.unwrap();
    registry.transition(name, GameServerState::Ready).await.unwrap();
}

async fn allocate(registry: &dyn Registry, region: &str) -> Placement {
    let req = AllocationRequest { fleet: "town".into(), regions: vec![region.into()], ..Default::default() };
    registry.allocate(&req).await.unwrap()
}

async fn two_ready_servers_in_eu(registry: &dyn Registry) {
    ready_server(registry, "town-eu-a", "eu").await;
    ready_server(registry, "town-eu-b", "eu").await;
}

#[tokio::test(start_paused = true)]
async fn allocations_raise_desired_at_once() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    two_ready_servers_in_eu(registry.as_ref()).await;
    // No sync during the test: only events can move desired.
    let mut fx = Fixture::start(config(1), Arc::clone(&registry), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fx.eu(), 1, "an empty region needs one server for a buffer of 4");

    let start = Instant::now();
    for _ in 0..3 {
        allocate(registry.as_ref(), "eu").await;
    }
    assert_eq!(fx.next_eu_change().await, 2, "3 worlds + 4 free need 2 servers of 4");
    assert!(start.elapsed() <= Duration::from_millis(100), "debounced, not delayed: {:?}", start.elapsed());
    for _ in 0..5 {
        allocate(registry.as_ref(), "eu").await;
    }
    assert_eq!(fx.next_eu_change().await, 3);

    let desired = fx.desired.borrow().clone();
    assert_eq!(desired[&key("town", "us")], 0, "the other region is on its own");
    assert_eq!(desired[&key("plain", "eu")], 2, "a fleet without an autoscaler keeps its replicas");
    assert_eq!(fx.decisions("up", "buffer"), 2);
    assert_eq!(fx.decisions("down", "min_replicas"), 0);
    let labels = RegionLabels { fleet: "town".into(), region: "eu".into() };
    assert_eq!(fx.metrics.desired_replicas.get_or_create(&labels).get(), 3);
    fx.stop().await;
}

#[tokio::test(start_paused = true)]
async fn desired_falls_only_after_the_scale_down_delay() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    two_ready_servers_in_eu(registry.as_ref()).await;
    let mut fx = Fixture::start(config(1), Arc::clone(&registry), Duration::from_secs(1));
    let mut worlds = Vec::new();
    for _ in 0..3 {
        worlds.push(allocate(registry.as_ref(), "eu").await);
    }
    assert_eq!(fx.next_eu_change().await, 2);

    tokio::time::sleep(Duration::from_millis(5_500)).await;
    for world in &worlds {
        registry.world_ended(&world.server.name, &world.world_id).await.unwrap();
    }
    let ended = Instant::now();
    assert_eq!(fx.next_eu_change().await, 1);
    let waited = ended.elapsed();
    // The last sync that saw 3 worlds ran within a second before they ended.
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(30),
        "desired fell {waited:?} after the worlds ended"
    );
    assert_eq!(fx.decisions("down", "buffer"), 1);
    fx.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_fleet_started_larger_than_needed_shrinks_after_the_delay() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    // 9 replicas asked for, clamped to max 5; one server is enough. After the 30 s delay
    // it goes down by 25% (rounded up) every 15 s: 5 -> 3 -> 2 -> 1.
    let mut fx = Fixture::start(config(9), Arc::clone(&registry), Duration::from_secs(1));
    assert_eq!(fx.eu(), 5);
    let start = Instant::now();
    for (want, at) in [(3, 30), (2, 45), (1, 60)] {
        assert_eq!(fx.next_eu_change().await, want);
        assert_eq!(start.elapsed(), Duration::from_secs(at), "{want} at {at} s");
    }
    fx.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unmet_request_brings_a_region_back_from_zero_and_it_goes_back_to_zero() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let mut fx = Fixture::start(config(1), Arc::clone(&registry), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fx.region("us"), 0, "no buffer, nothing in use: zero servers");

    let start = Instant::now();
    registry.report_unmet("town", Some("us")).await.unwrap();
    assert_eq!(fx.next_change("us").await, 1);
    assert!(start.elapsed() <= Duration::from_millis(100), "at once: {:?}", start.elapsed());
    let status = fx.status.borrow()["town"].clone();
    let us = status.regions.iter().find(|r| r.region == "us").unwrap();
    assert_eq!(us.inputs.waiting_requests, 1);
    let last = us.decisions.last().unwrap();
    assert_eq!((last.from, last.to, last.reason.as_str()), (0, 1, "unmet_demand"));
    assert!(last.message.contains("0 world(s) in use + 1 waiting"), "{}", last.message);
    let labels = RegionLabels { fleet: "town".into(), region: "us".into() };
    let gauges = |m: &Metrics| {
        (
            m.desired_replicas.get_or_create(&labels).get(),
            m.current_replicas.get_or_create(&labels).get(),
            m.buffer.get_or_create(&labels).get(),
            m.free_world_slots.get_or_create(&labels).get(),
            m.waiting_requests.get_or_create(&labels).get(),
        )
    };
    assert_eq!(gauges(&fx.metrics), (1, 0, 0, 0, 1), "desired, current, buffer, free, waiting");
    let up = DecisionLabels { fleet: "town".into(), region: "us".into(), direction: "up", reason: "unmet_demand" };
    assert_eq!(fx.metrics.scale_decisions.get_or_create(&up).get(), 1);

    // The server comes, takes the request's world, the world ends: back to zero once the
    // scale-down delay has passed.
    ready_server(registry.as_ref(), "town-us-a", "us").await;
    let placed = allocate(registry.as_ref(), "us").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    registry.world_ended(&placed.server.name, &placed.world_id).await.unwrap();
    let ended = Instant::now();
    assert_eq!(fx.next_change("us").await, 0);
    assert!(ended.elapsed() <= Duration::from_secs(30), "{:?}", ended.elapsed());
    let status = fx.status.borrow()["town"].clone();
    let us = status.regions.iter().find(|r| r.region == "us").unwrap();
    assert_eq!((us.inputs.waiting_requests, us.desired_replicas), (0, 0));
    fx.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_policy_applies_at_once_and_keeps_what_was_measured() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    two_ready_servers_in_eu(registry.as_ref()).await;
    let mut fx = Fixture::start(config(1), Arc::clone(&registry), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..3 {
        allocate(registry.as_ref(), "eu").await;
    }
    assert_eq!(fx.next_eu_change().await, 2, "3 worlds + 4 free need 2 servers of 4");

    // The buffer goes from 4 to 12 free slots: (3 + 12) / 4 -> 4 servers, without waiting
    // for the next sync (an hour away) or an allocation.
    let mut bigger = config(1);
    bigger.autoscalers[0].policy = serde_norway::from_str("{ buffer: { bufferSize: 12, maxReplicas: 5 } }").unwrap();
    let start = Instant::now();
    fx.updates.send_replace(bigger);
    assert_eq!(fx.next_eu_change().await, 4);
    assert!(start.elapsed() <= Duration::from_millis(100), "{:?}", start.elapsed());
    let status = fx.status.borrow()["town"].clone();
    let eu = status.regions.iter().find(|r| r.region == "eu").unwrap();
    assert_eq!(eu.buffer.target, 12);
    assert!(eu.inputs.allocation_rate > 0.0, "the rate measured before the reload is kept");
    assert_eq!(eu.decisions.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(), [(1, 2), (2, 4)]);
    fx.stop().await;
}

#[tokio::test(start_paused = true)]
async fn lagged_events_still_recompute() {
    let registry: Arc<dyn Registry> =
        Arc::new(MemoryRegistry::new(RegistryConfig { event_capacity: 1, ..Default::default() }));
    two_ready_servers_in_eu(registry.as_ref()).await;
    let mut fx = Fixture::start(config(1), Arc::clone(&registry), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Five allocations before the autoscaler runs again: its receiver lags.
    for _ in 0..5 {
        allocate(registry.as_ref(), "eu").await;
    }
    let start = Instant::now();
    assert_eq!(fx.next_eu_change().await, 3);
    assert!(start.elapsed() <= Duration::from_millis(100));
    fx.stop().await;
}

/// The in-memory registry, with `list` failing while `fail` is set.
struct Flaky {
    inner: MemoryRegistry,
    fail: AtomicBool,
    lists: AtomicUsize,
}

#[async_trait]
impl Registry for Flaky {
    async fn schedule(&self, server: GameServer) -> gaia_registry::Result<GameServer> {
        self.inner.schedule(server).await
    }
    async fn declare_fleet(&self, fleet: &str, regions: &[String]) -> gaia_registry::Result<()> {
        self.inner.declare_fleet(fleet, regions).await
    }
    async fn register(&self, name: &str, req: RegisterRequest) -> gaia_registry::Result<GameServer> {
        self.inner.register(name, req).await
    }
    async fn transition(&self, name: &str, to: GameServerState) -> gaia_registry::Result<GameServer> {
        self.inner.transition(name, to).await
    }
    async fn retire(&self, name: &str) -> gaia_registry::Result<GameServer> {
        self.inner.retire(name).await
    }
    async fn health(&self, name: &str) -> gaia_registry::Result<()> {
        self.inner.health(name).await
    }
    async fn set_label(&self, name: &str, key: &str, value: &str) -> gaia_registry::Result<GameServer> {
        self.inner.set_label(name, key, value).await
    }
    async fn set_players(&self, name: &str, players: u32) -> gaia_registry::Result<()> {
        self.inner.set_players(name, players).await
    }
    async fn world_started(&self, name: &str, world_id: &str, epoch: u64) -> gaia_registry::Result<()> {
        self.inner.world_started(name, world_id, epoch).await
    }
    async fn move_world(&self, name: &str, world_id: &str) -> gaia_registry::Result<Placement> {
        self.inner.move_world(name, world_id).await
    }
    async fn world_ended(&self, name: &str, world_id: &str) -> gaia_registry::Result<()> {
        self.inner.world_ended(name, world_id).await
    }
    async fn allocate(&self, req: &AllocationRequest) -> gaia_registry::Result<Placement> {
        self.inner.allocate(req).await
    }
    async fn get(&self, name: &str) -> gaia_registry::Result<GameServer> {
        self.inner.get(name).await
    }
    async fn worlds(&self, fleet: Option<&str>) -> gaia_registry::Result<Vec<gaia_api::gameserver::HostedWorld>> {
        self.inner.worlds(fleet).await
    }
    async fn world(
        &self,
        fleet: &str,
        world_id: &str,
    ) -> gaia_registry::Result<Option<gaia_api::gameserver::HostedWorld>> {
        self.inner.world(fleet, world_id).await
    }
    async fn list(&self, fleet: Option<&str>) -> gaia_registry::Result<Vec<GameServer>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(RegistryError::Unavailable("test says no".into()));
        }
        self.inner.list(fleet).await
    }
    async fn remove(&self, name: &str) -> gaia_registry::Result<()> {
        self.inner.remove(name).await
    }
    async fn sweep(&self) -> gaia_registry::Result<SweepReport> {
        self.inner.sweep().await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RegistryEvent> {
        self.inner.subscribe()
    }
    async fn report_unmet(&self, fleet: &str, region: Option<&str>) -> gaia_registry::Result<()> {
        self.inner.report_unmet(fleet, region).await
    }
}

#[tokio::test(start_paused = true)]
async fn registry_errors_are_retried_at_the_next_sync() {
    let flaky = Arc::new(Flaky {
        inner: MemoryRegistry::new(RegistryConfig::default()),
        fail: AtomicBool::new(true),
        lists: AtomicUsize::new(0),
    });
    let registry: Arc<dyn Registry> = flaky.clone();
    two_ready_servers_in_eu(registry.as_ref()).await;
    let mut fx = Fixture::start(config(1), Arc::clone(&registry), Duration::from_secs(1));
    for _ in 0..3 {
        allocate(registry.as_ref(), "eu").await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(fx.eu(), 1, "nothing can be decided while the registry fails");
    let lists = flaky.lists.load(Ordering::SeqCst);
    assert!((3..=5).contains(&lists), "one read per sync and one per event burst, not a hot loop: {lists}");
    let labels = gaia_fleet_autoscaler::ErrorLabels { error: "registry_unavailable" };
    assert_eq!(fx.metrics.errors.get_or_create(&labels).get(), lists as u64);
    let town = gaia_fleet_autoscaler::FleetLabels { fleet: "town".into() };
    assert_eq!(fx.metrics.last_success.get_or_create(&town).get(), 0.0, "no good read yet");

    flaky.fail.store(false, Ordering::SeqCst);
    let start = Instant::now();
    assert_eq!(fx.next_eu_change().await, 2);
    assert!(start.elapsed() <= Duration::from_secs(1), "retried at the next sync");
    let now = chrono::Utc::now().timestamp() as f64;
    let last = fx.metrics.last_success.get_or_create(&town).get();
    assert!((now - 5.0..=now + 1.0).contains(&last), "last success {last}, now {now}");
    fx.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stops_on_shutdown() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
    let fx = Fixture::start(config(1), registry, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    fx.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), fx.task).await.unwrap().unwrap();
    drop(fx.registry);
}

//! `GET /v1/events`: the fleet as it changes, as Server-Sent Events, for the web console
//! (and any operator's tool).
//!
//! The first event is a `snapshot` of everything: servers, the worlds on them, the
//! autoscalers' explained statuses, allocation rates. After it come only changes, as they
//! happen: `server` (a record added or changed), `serverRemoved`, `worlds` (the whole
//! list of placed worlds, when it changed), `autoscaler` (one fleet's status, when it
//! changed), and a `stats` event a second. What wakes the feed is the registry's events
//! ([`Registry::subscribe`]) and the autoscaler's status channel; the feed then re-reads
//! the registry (at once, then at most every [`DEBOUNCE`]) and sends what differs from
//! what it sent before. A `stats` tick also re-reads, so changes without a registry event (player
//! counts) show within a second.
//!
//! Nothing is queued per client beyond what it was last sent: the stream is pulled as the
//! connection takes it, a client that reads slowly lags on the broadcast, and a lag only
//! means the next re-read sends the difference. At most [`MAX_STREAMS`] streams run at
//! once (503 beyond). Start with [`events`], then [`Feed::next_batch`].

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use gaia_api::allocation::ErrorBody;
use gaia_api::autoscaler::FleetAutoscalerStatus;
use gaia_api::gameserver::{GameServer, HostedWorld};
use gaia_api::token::unix_ms;
use gaia_registry::{Registry, RegistryEvent};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{AllocationLabels, Metrics};
use crate::{ApiError, AppState, AutoscalerStatuses};

/// Event streams served at once; one more is answered 503.
pub const MAX_STREAMS: usize = 64;
/// Registry events re-read the registry at most this often.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often `stats` is sent (and the registry re-read regardless of events).
pub const STATS_EVERY: Duration = Duration::from_secs(1);
/// The window allocation rates are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The first event: everything the console shows.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Every game server, sorted by name.
    pub servers: Vec<GameServer>,
    /// Every placed world and its server, sorted by world id.
    pub worlds: Vec<HostedWorld>,
    /// The explained status of each autoscaled fleet (none when no autoscaler runs in this
    /// process), sorted by fleet.
    pub autoscalers: Vec<FleetAutoscalerStatus>,
    pub stats: Stats,
}

/// `stats`, a second: allocations this allocator answered.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Unix ms.
    pub at_ms: u64,
    /// Successful allocations per second over the last 5 s, by the region they landed in
    /// (every region of a known server; 0 when none). Counted by this allocator process
    /// only (with several allocators, each counts its own).
    pub allocations_per_second: BTreeMap<String, f64>,
}

/// `serverRemoved`: a record the registry no longer has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServerRemoved {
    pub name: String,
}

/// `GET /v1/events`: the snapshot, then changes, as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    responses(
        (status = 200, description = "`text/event-stream`, endless. Each event's `data` is JSON: `snapshot` \
            (first, a `Snapshot`), `server` (a `GameServer` added or changed), `serverRemoved` \
            (`{\"name\"}`), `worlds` (every `HostedWorld`, when the list changed), `autoscaler` \
            (a `FleetAutoscalerStatus`, when it changed), `stats` (a `Stats`, every second)",
            content_type = "text/event-stream", body = Snapshot),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 503, description = "`unavailable`: the registry cannot be reached, or too many event streams are open", body = ErrorBody),
    ),
    security(("matchmaker" = [])),
)]
pub(crate) async fn events(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let permit = Arc::clone(&s.event_streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy(format!("{MAX_STREAMS} event streams are open already")))?;
    let mut feed = Feed::new(&s, permit);
    // Read before answering, so a registry that is down is a 503, not a stream that ends.
    let snapshot = feed.snapshot().await?;
    let first = event("snapshot", &snapshot);
    let stream = futures_util::stream::unfold((feed, Some(first)), |(mut feed, first)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, Infallible>(first), (feed, None)));
        }
        let next = feed.next_event().await?;
        Some((Ok(next), (feed, None)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn event<T: Serialize>(name: &'static str, data: &T) -> Event {
    Event::default().event(name).json_data(data).unwrap_or_else(|_| Event::default().event(name).data("null"))
}

/// One client's feed: what it was last sent, and where changes come from.
struct Feed {
    registry: Arc<dyn Registry>,
    metrics: Arc<Metrics>,
    changes: broadcast::Receiver<RegistryEvent>,
    autoscalers: Option<watch::Receiver<AutoscalerStatuses>>,
    shutdown: CancellationToken,
    ticker: tokio::time::Interval,
    /// No re-read for a registry event before this.
    next_read: Instant,
    /// As last sent.
    servers: BTreeMap<String, GameServer>,
    worlds: Vec<HostedWorld>,
    statuses: AutoscalerStatuses,
    /// (when, successful allocations so far by region), oldest first, over [`RATE_WINDOW`].
    samples: VecDeque<(Instant, BTreeMap<String, u64>)>,
    /// Events made by the last batch, not yet sent.
    pending: VecDeque<Event>,
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    fn new(s: &AppState, permit: OwnedSemaphorePermit) -> Self {
        let mut ticker = tokio::time::interval_at(Instant::now() + STATS_EVERY, STATS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            registry: Arc::clone(&s.registry),
            metrics: Arc::clone(&s.metrics),
            // Subscribe before the first read, so no change falls between the two.
            changes: s.registry.subscribe(),
            autoscalers: s.autoscalers.clone(),
            shutdown: s.shutdown.clone(),
            ticker,
            next_read: Instant::now(),
            servers: BTreeMap::new(),
            worlds: Vec::new(),
            statuses: AutoscalerStatuses::new(),
            samples: VecDeque::new(),
            pending: VecDeque::new(),
            _permit: permit,
        }
    }

    async fn snapshot(&mut self) -> Result<Snapshot, ApiError> {
        let servers = self.registry.list(None).await?;
        let worlds = self.registry.worlds(None).await?;
        let statuses = self.autoscalers.as_mut().map(|rx| rx.borrow_and_update().clone()).unwrap_or_default();
        self.servers = servers.iter().map(|s| (s.name.clone(), s.clone())).collect();
        self.worlds = worlds.clone();
        self.statuses = statuses.clone();
        let stats = self.stats();
        Ok(Snapshot { servers, worlds, autoscalers: statuses.into_values().collect(), stats })
    }

    async fn next_event(&mut self) -> Option<Event> {
        while self.pending.is_empty() {
            self.pending = self.next_batch().await?.into();
        }
        self.pending.pop_front()
    }

    /// Waits for something to change and says what did (possibly nothing, after a
    /// registry event whose effect was already sent). `None`: the stream ends (shutdown,
    /// or the registry's channel closed).
    async fn next_batch(&mut self) -> Option<Vec<Event>> {
        let mut autoscalers = self.autoscalers.clone();
        let autoscaler_changed = async {
            match autoscalers.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            change = self.changes.recv() => {
                if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                    return None;
                }
                // A lag lost events, which a re-read makes up for, like any other. The first
                // change is read at once (so a state as short as a drain's shows), then at
                // most one read per DEBOUNCE, however many events come.
                tokio::time::sleep_until(self.next_read).await;
                while !matches!(self.changes.try_recv(), Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)) {}
                let batch = self.reread().await;
                self.next_read = Instant::now() + DEBOUNCE;
                Some(batch)
            }
            ok = autoscaler_changed => {
                if !ok {
                    // The autoscaler stopped: nothing more from it.
                    self.autoscalers = None;
                    return Some(Vec::new());
                }
                Some(self.autoscaler_changes())
            }
            _ = self.ticker.tick() => {
                let mut batch = self.reread().await;
                batch.push(event("stats", &self.stats()));
                Some(batch)
            }
        }
    }

    /// Re-reads the registry; events for what differs from what was sent. A registry
    /// that cannot be read sends nothing this time (the next tick tries again).
    async fn reread(&mut self) -> Vec<Event> {
        let (servers, worlds) = match (self.registry.list(None).await, self.registry.worlds(None).await) {
            (Ok(servers), Ok(worlds)) => (servers, worlds),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "event stream: registry read failed");
                return Vec::new();
            }
        };
        let mut batch = Vec::new();
        let mut now: BTreeMap<String, GameServer> = BTreeMap::new();
        for server in servers {
            if self.servers.get(&server.name) != Some(&server) {
                batch.push(event("server", &server));
            }
            now.insert(server.name.clone(), server);
        }
        for name in self.servers.keys().filter(|name| !now.contains_key(*name)) {
            batch.push(event("serverRemoved", &ServerRemoved { name: name.clone() }));
        }
        self.servers = now;
        if worlds != self.worlds {
            batch.push(event("worlds", &worlds));
            self.worlds = worlds;
        }
        batch
    }

    fn autoscaler_changes(&mut self) -> Vec<Event> {
        let Some(rx) = self.autoscalers.as_mut() else { return Vec::new() };
        let statuses = rx.borrow_and_update().clone();
        let batch = statuses
            .iter()
            .filter(|(fleet, status)| self.statuses.get(*fleet) != Some(status))
            .map(|(_, status)| event("autoscaler", status))
            .collect();
        self.statuses = statuses;
        batch
    }

    /// Allocation rates by region, from this allocator's counters, over [`RATE_WINDOW`].
    fn stats(&mut self) -> Stats {
        let now = Instant::now();
        let mut regions: Vec<&str> = self.servers.values().map(|s| s.region.as_str()).collect();
        regions.sort_unstable();
        regions.dedup();
        let counts: BTreeMap<String, u64> = regions
            .into_iter()
            .map(|region| {
                let labels = AllocationLabels { result: "ok", region: region.to_string() };
                (region.to_string(), self.metrics.allocations.get(&labels).map_or(0, |c| c.get()))
            })
            .collect();
        while self.samples.len() > 1 && self.samples.front().is_some_and(|(at, _)| now - *at > RATE_WINDOW) {
            self.samples.pop_front();
        }
        let allocations_per_second = match self.samples.front() {
            Some((at, before)) if now > *at => {
                let seconds = (now - *at).as_secs_f64();
                counts
                    .iter()
                    .map(|(region, n)| {
                        let delta = n.saturating_sub(before.get(region).copied().unwrap_or(0));
                        (region.clone(), delta as f64 / seconds)
                    })
                    .collect()
            }
            _ => counts.keys().map(|region| (region.clone(), 0.0)).collect(),
        };
        self.samples.push_back((now, counts));
        Stats { at_ms: unix_ms(std::time::SystemTime::now()), allocations_per_second }
    }
}

//! The game server's side of the control plane, through the SDK: registering, world
//! starts and ends, player counts, moving worlds, and draining when told.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gaia_api::gameserver::RegisterRequest;
use gaia_sdk::{Sdk, SdkError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conn::Ctx;
use crate::room::{Destination, Mover, Rooms, WorldEvent};
use crate::world::World;
use crate::{Config, Error};

/// Registers with the control plane and marks the server Ready. Retries for a while:
/// the control plane may still be starting.
pub(crate) async fn connect(config: &Config, url: &str, address: &str) -> Result<Sdk, Error> {
    let mut sdk = Sdk::new(url, &config.name)?.with_token(config.sdk_token.clone())?;
    if let Some(path) = &config.sdk_ca_file {
        let pem =
            std::fs::read(path).map_err(|e| Error::Config(format!("GAIA_SDK_CA_FILE {}: {e}", path.display())))?;
        sdk = sdk.with_root_certificate(&pem)?;
    }
    let req = RegisterRequest {
        fleet: config.fleet.clone(),
        region: config.region.clone(),
        address: address.to_string(),
        world_capacity: config.world_capacity,
        player_capacity: config.player_capacity,
        labels: Default::default(),
        health: gaia_api::fleet::HealthSpec { period_seconds: config.health_period_seconds, ..Default::default() },
    };
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match sdk.register(&req).await {
            Ok(_) => break,
            Err(SdkError::Transport(e)) if attempt < 10 => {
                tracing::warn!(error = %e, "control plane not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    sdk.ready().await?;
    Ok(sdk)
}

/// Tells the control plane about world starts and ends, in order. A call that fails for
/// lack of a connection is retried a few times: a lost `ended` would hold a slot.
pub(crate) async fn report_worlds(sdk: Sdk, mut events: mpsc::UnboundedReceiver<WorldEvent>) {
    while let Some(event) = events.recv().await {
        for attempt in 1..=5u32 {
            let result = match &event {
                WorldEvent::Started { world_id, epoch } => sdk.world_started(world_id, *epoch).await,
                WorldEvent::Ended(id) => sdk.world_ended(id).await,
            };
            match result {
                Ok(()) => break,
                Err(SdkError::Transport(e)) if attempt < 5 => {
                    tracing::warn!(?event, error = %e, "world report failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                Err(e) => {
                    tracing::warn!(?event, error = %e, "world report refused");
                    break;
                }
            }
        }
    }
}

/// The control plane's side of a move, through the SDK.
pub(crate) struct SdkMover(pub(crate) Sdk);

#[async_trait::async_trait]
impl Mover for SdkMover {
    async fn move_world(&self, world_id: &str) -> Result<Destination, String> {
        let moved = self.0.move_world(world_id).await.map_err(|e| e.to_string())?;
        Ok(Destination { server: moved.server, address: moved.address, epoch: moved.epoch })
    }
}

/// Waits for a drain (`drain`, or the control plane marking this server Draining), moves
/// every world away, then stops the server through `shutdown`.
pub(crate) async fn drain_when_told<W: World>(
    drain: CancellationToken,
    record: Option<tokio::sync::watch::Receiver<Option<gaia_api::gameserver::GameServer>>>,
    sdk: Option<Sdk>,
    rooms: Arc<Rooms<W>>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let marked_draining = async {
        match record {
            Some(mut record) => {
                let draining = |r: &Option<gaia_api::gameserver::GameServer>| {
                    r.as_ref().is_some_and(|s| s.state == gaia_api::gameserver::GameServerState::Draining)
                };
                if record.wait_for(draining).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = marked_draining => tracing::info!("the control plane marked this server Draining"),
        _ = drain.cancelled() => {
            tracing::info!("asked to drain");
            // No new world may land here while the old ones move away.
            if let Some(sdk) = &sdk {
                match sdk.drain().await {
                    // Refused when retired already (Shutdown): nothing can land here anyway.
                    Ok(_) | Err(SdkError::Refused { status: 404 | 409, .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "could not mark this server Draining"),
                }
            }
        }
    }
    let started = tokio::time::Instant::now();
    let worlds = rooms.worlds();
    rooms.drain();
    // Each world gives up on its move at `timeout`; the margin covers its last writes.
    if tokio::time::timeout(timeout + Duration::from_secs(2), rooms.closed()).await.is_err() {
        tracing::warn!("worlds still running after the drain timeout; stopping anyway");
    }
    tracing::info!(worlds, took = ?started.elapsed(), "drained");
    shutdown.cancel();
}

/// Reports the player count every `period` when it changed.
pub(crate) async fn report_players<W: World>(sdk: Sdk, ctx: Arc<Ctx<W>>, period: Duration, stop: CancellationToken) {
    let mut last = 0;
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = ctx.players.load(Ordering::Relaxed);
        if now != last {
            match sdk.set_players(now).await {
                Ok(()) => last = now,
                Err(e) => tracing::debug!(error = %e, "player count report failed"),
            }
        }
    }
}

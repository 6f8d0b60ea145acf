//! The load generator's bots over both encodings against real `gaia gameserver` processes
//! of an embedded fleet: `--encoding json` (text frames) and the default bincode, each a
//! clean run, both at once on the same game server.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Fleet, REGION, fleet_config};
use gaia_api::gameserver::GameServerState;
use gaia_api::protocol::Encoding;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_bots_play_over_json_and_bincode_side_by_side() {
    let name = "encodings";
    let fleet = Fleet::launch(name, fleet_config(name, 4, 1)).await;
    fleet
        .wait_for(Duration::from_secs(20), "a Ready server", |servers| {
            servers.iter().any(|s| s.state == GameServerState::Ready).then_some(())
        })
        .await;
    let run = |encoding| {
        let config = gaia_loadgen::Config {
            allocator_url: fleet.url.clone(),
            fleet: name.into(),
            regions: vec![REGION.into()],
            bots: 6,
            world_size: 3,
            duration: Duration::from_secs(2),
            input_rate_hz: 2.0,
            encoding,
            ..Default::default()
        };
        async move { gaia_loadgen::run(config, CancellationToken::new()).await.unwrap() }
    };
    let (json, bincode) = tokio::join!(run(Encoding::Json), run(Encoding::Bincode));
    assert!(json.is_clean(), "json:\n{json}");
    assert!(bincode.is_clean(), "bincode:\n{bincode}");
    assert!(json.inputs_ok > 0 && bincode.inputs_ok > 0);
    fleet.stop().await;
}

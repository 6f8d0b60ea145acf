//! The autoscaler with real `gaia gameserver` processes (embedded mode): a burst that
//! empties a region's buffer is refilled by one more server, and a region at
//! zero servers comes back for a waiting allocation and goes back to zero.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use gaia_api::allocation::AllocationResponse;
use gaia_api::fleet::RegionSpec;
use gaia_api::gameserver::GameServerState;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::{Fleet, REGION};

/// A fleet `name` of servers with 4 world slots in [`REGION`] (1 to start) and `idle` (0),
/// scaled by `policy` with a short scale-down delay.
fn config(name: &str, policy: &str) -> gaia_embedded::Config {
    let mut config = common::fleet_config(name, 4, 1);
    config.fleets.fleets[0].regions.push(RegionSpec { name: "idle".into(), replicas: 0 });
    let scaler = format!("{{ fleet: {name}, scaleDownDelay: 2s, scaleDownPeriod: 1s, policy: {policy} }}");
    config.fleets.autoscalers.push(serde_norway::from_str(&scaler).unwrap());
    config.fleets.validate().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_empties_the_buffer_is_refilled_by_one_more_server() {
    let fleet =
        Fleet::launch("refill", config("refill", "{ buffer: { bufferSize: 4, minReplicas: 0, maxReplicas: 3 } }"))
            .await;
    let loadgen = gaia_loadgen::Config {
        allocator_url: fleet.url.clone(),
        fleet: "refill".into(),
        regions: vec![REGION.into()],
        ..Default::default()
    };
    // Timing is a benchmark's business (docs/benchmarks.md); here: each burst took every
    // free slot and exactly one more server brought the buffer back.
    let report = gaia_loadgen::refill::run(&loadgen, 2, CancellationToken::new()).await.unwrap();
    for (i, burst) in report.bursts.iter().enumerate() {
        assert_eq!((burst.taken, burst.buffer), (4, 4), "{report}");
        assert_eq!((burst.servers_before, burst.servers_after), (i as u32 + 1, i as u32 + 2), "{report}");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_at_zero_comes_back_for_a_waiting_allocation_and_goes_back_to_zero() {
    let fleet = Fleet::launch("zero", config("zero", "{ buffer: { bufferSize: 0, maxReplicas: 2 } }")).await;
    let idle = |servers: &[gaia_api::gameserver::GameServer]| {
        servers.iter().filter(|s| s.region == "idle" && !s.state.is_terminal()).count()
    };
    // The idle region starts at zero and stays there.
    fleet.wait_for(Duration::from_secs(10), "idle at zero", |s| (idle(s) == 0).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(idle(&fleet.servers().await), 0);

    // A request that waits brings a server up and is served by it.
    let url = format!("{}/v1/allocations", fleet.url);
    let body = json!({ "fleet": "zero", "regions": ["idle"], "deadlineMs": 20_000 });
    let response = fleet.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let placed: AllocationResponse = response.json().await.unwrap();
    assert_eq!(placed.region, "idle");

    // Once its world is gone (the lease is never confirmed: end it), the region goes back
    // to zero after the 2 s scale-down delay.
    let end = format!("{}/v1/gameservers/{}/worlds/{}/ended", fleet.url, placed.server, placed.world_id);
    let token = common::sdk_token(&placed.server);
    let ended = fleet.http.post(&end).bearer_auth(token).send().await.unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    fleet
        .wait_for(Duration::from_secs(15), "idle back to zero", |s| {
            s.iter()
                .all(|s| s.region != "idle" || s.state == GameServerState::Shutdown || s.state.is_terminal())
                .then_some(())
        })
        .await;

    let status: serde_json::Value =
        fleet.http.get(format!("{}/v1/fleets/zero/autoscaler", fleet.url)).send().await.unwrap().json().await.unwrap();
    let idle_status = status["regions"].as_array().unwrap().iter().find(|r| r["region"] == "idle").unwrap().clone();
    assert_eq!(idle_status["desiredReplicas"], 0, "{idle_status}");
    let reasons: Vec<&str> =
        idle_status["decisions"].as_array().unwrap().iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["unmet_demand", "buffer"], "{idle_status}");
    fleet.stop().await;
}

//! The embedded fleet with every lock on: matchmaker tokens, SDK tokens and HTTPS with a
//! self-signed certificate. Real `gaia gameserver` processes register over HTTPS with
//! the token the controller gave them; loadgen bots allocate with the matchmaker token.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Fleet, REGION, children_with_env, fleet_config, sdk_token};
use gaia_api::gameserver::GameServerState;
use tokio_util::sync::CancellationToken;

const MATCHMAKER: &str = "mm-token";

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files.
fn certificate(name: &str) -> (TempDir, gaia_embedded::TlsFiles) {
    let dir = std::env::temp_dir().join(format!("gaia-test-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let files = gaia_embedded::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&files.cert, certified.cert.pem()).unwrap();
    std::fs::write(&files.key, certified.signing_key.serialize_pem()).unwrap();
    (TempDir(dir), files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_down_fleet_serves_its_servers_and_its_matchmakers() {
    let name = "secure";
    let (_dir, tls) = certificate(name);
    let mut config = fleet_config(name, 4, 2);
    config.matchmaker_tokens = vec![MATCHMAKER.into(), "another".into()];
    config.tls = Some(tls.clone());
    let fleet = Fleet::launch(name, config).await;
    assert!(fleet.url.starts_with("https://"), "{}", fleet.url);

    // The servers reach Ready: their SDK calls went over HTTPS with their own tokens.
    let servers = fleet
        .wait_for(Duration::from_secs(20), "both servers Ready", |servers| {
            let ready: Vec<_> = servers.iter().filter(|s| s.state == GameServerState::Ready).cloned().collect();
            (ready.len() == 2).then_some(ready)
        })
        .await;
    for server in &servers {
        let pids = children_with_env("GAIA_SDK_TOKEN", &sdk_token(&server.name));
        assert_eq!(pids.len(), 1, "{} was started with its own SDK token", server.name);
    }

    // Without the matchmaker token, nothing; a server's token drives only that server.
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&tls.cert).unwrap()).unwrap())
        .build()
        .unwrap();
    let list = anonymous.get(format!("{}/v1/gameservers", fleet.url)).send().await.unwrap();
    assert_eq!(list.status(), reqwest::StatusCode::UNAUTHORIZED);
    let (a, b) = (&servers[0].name, &servers[1].name);
    let drain = anonymous.post(format!("{}/v1/gameservers/{a}/drain", fleet.url));
    let resp = drain.try_clone().unwrap().bearer_auth(sdk_token(b)).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::FORBIDDEN);
    let resp = drain.try_clone().unwrap().bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The loadgen's matchmaker sends its token, over HTTPS.
    let loadgen = gaia_loadgen::Config {
        allocator_url: fleet.url.clone(),
        allocator_token: Some(MATCHMAKER.into()),
        allocator_ca_file: Some(tls.cert.clone()),
        fleet: name.into(),
        regions: vec![REGION.into()],
        bots: 4,
        world_size: 2,
        duration: Duration::from_secs(1),
        input_rate_hz: 2.0,
        ..Default::default()
    };
    gaia_loadgen::wait_ready(&loadgen).await.unwrap();
    let report = gaia_loadgen::run(loadgen.clone(), CancellationToken::new()).await.unwrap();
    assert!(report.is_clean(), "{report}");
    let without_token =
        gaia_loadgen::Config { allocator_token: None, ready_timeout: Duration::from_millis(500), ..loadgen };
    let err = gaia_loadgen::wait_ready(&without_token).await.unwrap_err();
    assert!(format!("{err:#}").contains("401"), "{err:#}");

    // An operator (the web console) drains a server with the matchmaker token.
    let resp = drain.try_clone().unwrap().bearer_auth(MATCHMAKER).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["state"], "Draining");

    fleet.stop().await;
}

#[test]
fn sdk_token_prints_a_server_s_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gaia"))
        .args(["sdk-token", "--name", "town-local-abcde"])
        .env("GAIA_SDK_SECRET", common::SDK_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), sdk_token("town-local-abcde"));
}

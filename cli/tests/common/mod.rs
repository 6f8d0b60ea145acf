//! Helpers the process tests share: an embedded fleet of real `gaia gameserver`
//! processes, and finding those processes.
#![allow(dead_code)] // each test file uses its own share of them

use std::path::Path;
use std::time::Duration;

use gaia_api::fleet::FleetConfig;
use gaia_api::gameserver::GameServer;
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

pub const POLL: Duration = Duration::from_millis(100);
pub const REGION: &str = "local";
/// The fleets' SDK secret, so tests can act as a server (or an operator) does.
pub const SDK_SECRET: &str = "test-sdk-secret";

/// The SDK token of game server `name` under [`SDK_SECRET`].
pub fn sdk_token(name: &str) -> String {
    gaia_api::token::TokenKey::new(SDK_SECRET).sdk_token(name)
}

pub struct Fleet {
    pub name: String,
    pub url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), gaia_embedded::Error>>,
}

/// A fleet named `name` of `replicas` real game servers in [`REGION`], health period 1 s
/// and threshold 3 (3 s of silence); checkpoints to a SQLite file in a temp directory
/// unless the caller sets stores.
pub fn fleet_config(name: &str, world_capacity: u32, replicas: u32) -> gaia_embedded::Config {
    // A JSON string is a valid YAML scalar, whatever the path holds.
    let program = serde_json::to_string(env!("CARGO_BIN_EXE_gaia")).unwrap();
    let yaml = format!(
        "
fleets:
  - name: {name}
    worldCapacity: {world_capacity}
    playerCapacity: 1000
    template:
      command: [{program}, gameserver]
      env: {{ RUST_LOG: warn }}
    health: {{ periodSeconds: 1, failureThreshold: 3, initialDelaySeconds: 5 }}
    regions:
      - {{ name: {REGION}, replicas: {replicas} }}
"
    );
    let mut config = gaia_embedded::Config::new(FleetConfig::from_yaml(&yaml).unwrap());
    config.data_dir = std::env::temp_dir().join(format!("gaia-test-{}-{name}", std::process::id()));
    config.sdk_secret = Some(SDK_SECRET.into());
    config
}

impl Fleet {
    /// Runs the embedded fleet `config` (its first fleet named `name`) on an ephemeral port.
    /// `http` is a matchmaker's client: it sends the first matchmaker token, if any, and
    /// trusts the fleet's certificate, if it has one.
    pub async fn launch(name: &str, config: gaia_embedded::Config) -> Fleet {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let mut http = reqwest::Client::builder();
        if let Some(token) = config.matchmaker_tokens.first() {
            let auth = reqwest::header::HeaderValue::try_from(format!("Bearer {token}")).unwrap();
            http = http.default_headers([(reqwest::header::AUTHORIZATION, auth)].into_iter().collect());
        }
        if let Some(tls) = &config.tls {
            http =
                http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&tls.cert).unwrap()).unwrap());
        }
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(gaia_embedded::run(config, listener, shutdown.clone()));
        Fleet { name: name.into(), url, http: http.build().unwrap(), shutdown, run }
    }

    pub async fn servers(&self) -> Vec<GameServer> {
        let url = format!("{}/v1/gameservers?fleet={}", self.url, self.name);
        let resp = self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.json().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Polls the records every [`POLL`] until `check` answers; panics with the last
    /// records seen if it has not within `within`.
    pub async fn wait_for<T>(
        &self,
        within: Duration,
        what: &str,
        mut check: impl FnMut(&[GameServer]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let servers = self.servers().await;
            if let Some(found) = check(&servers) {
                return found;
            }
            if Instant::now() >= deadline {
                panic!("fleet {}: {what}: not within {within:?}; last seen: {}", self.name, show(&servers));
            }
            sleep(POLL).await;
        }
    }

    /// Cancels the fleet and checks that `run` returns Ok in time; answers how long it took.
    pub async fn stop(self) -> Duration {
        self.shutdown.cancel();
        let started = Instant::now();
        // The controller gives servers `stop_grace` (10 s) to exit, then kills them.
        let result = tokio::time::timeout(Duration::from_secs(12), self.run)
            .await
            .unwrap_or_else(|_| panic!("fleet {}: run did not return within 12 s of shutdown", self.name));
        let result = result.unwrap_or_else(|e| panic!("fleet {}: run panicked: {e}", self.name));
        assert!(result.is_ok(), "fleet {}: run failed: {result:?}", self.name);
        started.elapsed()
    }
}

pub fn show(servers: &[GameServer]) -> String {
    let all: Vec<String> =
        servers.iter().map(|s| format!("{} {} {} in {}", s.name, s.state, s.worlds, s.region)).collect();
    format!("[{}]", all.join(", "))
}

/// `/proc/PID/stat`'s state (field 3) and parent pid (field 4). The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after its `)`.
pub fn stat(pid: i32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let parent = rest.next()?.parse().ok()?;
    Some((state, parent))
}

/// Child processes of this test process whose environment holds `KEY=value`. The
/// controller hands every game server its name and fleet in `GAIA_SERVER_NAME` and
/// `GAIA_FLEET`; `/proc/PID/environ` is the environment the process started with.
pub fn children_with_env(key: &str, value: &str) -> Vec<i32> {
    let me = std::process::id();
    let needle = format!("{key}={value}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if stat(pid).is_none_or(|(_, parent)| parent != me) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|&b| b == 0).any(|var| var == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

pub fn pid_of(server: &str) -> Pid {
    match children_with_env("GAIA_SERVER_NAME", server)[..] {
        [pid] => Pid::from_raw(pid),
        ref pids => panic!("expected one child process for {server}, found {pids:?}"),
    }
}

pub fn exists(pid: Pid) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

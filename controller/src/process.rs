//! How one game-server process is started: its name, its program and its environment.
//!
//! The environment is the contract with the game server (see `gaia_gameserver::Config`,
//! which reads these `GAIA_*` variables). Everything here is plain data except
//! [`command`], which only builds (does not spawn) a `tokio::process::Command`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use gaia_api::fleet::FleetSpec;
use gaia_api::server_env::{self as var, ServerEnv};

/// A fresh server name: `{fleet}-{region}-{5 random lowercase hex digits}`.
pub fn server_name(fleet: &str, region: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{fleet}-{region}-{}", &random[..5])
}

/// The program for `command[0]`: a bare name (no '/') is looked for next to the running
/// binary first (so `gaia-gameserver` ships beside `gaia`), else left to `PATH`. A path is
/// used as it is.
pub fn resolve_program(program: &str, exe_dir: Option<&Path>) -> PathBuf {
    if !program.contains('/')
        && let Some(dir) = exe_dir
    {
        let beside = dir.join(program);
        if beside.is_file() {
            return beside;
        }
    }
    PathBuf::from(program)
}

/// What the controller tells one game server.
#[derive(Debug, Clone, Copy)]
pub struct ServerIdentity<'a> {
    pub name: &'a str,
    pub region: &'a str,
    pub sdk_url: &'a str,
    pub join_secret: &'a str,
    /// This server's SDK token (`GAIA_SDK_TOKEN`), when the control plane checks them.
    pub sdk_token: Option<&'a str>,
    /// The deployment's settings for every server (checkpoint stores); the template may
    /// override them.
    pub env: &'a BTreeMap<String, String>,
}

/// The environment of one game server. `GAIA_LISTEN` (bind a free port; the server
/// registers its address through the SDK) and the deployment's `id.env` are defaults the
/// template may override, for example to listen on every interface. The template cannot override the rest: they
/// must agree with the record the controller scheduled.
pub fn server_env(spec: &FleetSpec, id: ServerIdentity<'_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([(var::LISTEN.to_string(), "127.0.0.1:0".to_string())]);
    env.extend(id.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(spec.template.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let place = ServerEnv {
        fleet: spec.name.clone(),
        region: id.region.to_string(),
        sdk_url: id.sdk_url.to_string(),
        world_capacity: spec.world_capacity,
        player_capacity: spec.player_capacity,
        world_player_capacity: spec.world_player_capacity,
        health_period_seconds: spec.health.period_seconds,
    };
    let identity = [
        (var::SERVER_NAME, id.name.to_string()),
        (var::JOIN_SECRET, id.join_secret.to_string()),
        (var::EXIT_WITH_PARENT, "1".to_string()),
    ];
    env.extend(place.vars().into_iter().chain(identity).map(|(k, v)| (k.to_string(), v)));
    match id.sdk_token {
        Some(token) => env.insert(var::SDK_TOKEN.to_string(), token.to_string()),
        None => env.remove(var::SDK_TOKEN),
    };
    env
}

/// Variables of this process that a game server must not inherit: the secrets from
/// which every server's SDK token, or a matchmaker's access, follows. (A server gets its
/// own token, `GAIA_SDK_TOKEN`, from [`server_env`]; one inherited from this process would
/// be another's.)
pub const WITHHELD_ENV: [&str; 3] = ["GAIA_SDK_SECRET", "GAIA_ALLOCATOR_TOKENS", var::SDK_TOKEN];

/// The command that starts one game server: the template's program and arguments with
/// [`server_env`] added to this process's environment, stdin closed, stdout and stderr
/// shared with this process, killed if its handle is dropped. `None` when the template
/// names no program (spec validation rejects that).
pub fn command(spec: &FleetSpec, id: ServerIdentity<'_>) -> Option<(PathBuf, tokio::process::Command)> {
    let (program, args) = spec.template.command.split_first()?;
    let exe = std::env::current_exe().ok();
    let program = resolve_program(program, exe.as_deref().and_then(Path::parent));
    let mut command = tokio::process::Command::new(&program);
    for key in WITHHELD_ENV {
        command.env_remove(key);
    }
    command
        .args(args)
        .envs(server_env(spec, id))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    Some((program, command))
}

#[cfg(test)]
mod tests {
    use gaia_api::fleet::{FleetConfig, GameServerTemplate};

    use super::*;

    fn spec() -> FleetSpec {
        let yaml = "
fleets:
  - name: town
    worldCapacity: 20
    playerCapacity: 600
    template:
      command: [gaia-gameserver, --flag]
      env: { RUST_LOG: debug, GAIA_LISTEN: '0.0.0.0:0', GAIA_FLEET: spoofed }
    health: { periodSeconds: 1 }
    regions: [{ name: eu }]
";
        FleetConfig::from_yaml(yaml).expect("test spec parses").fleets.remove(0)
    }

    fn id() -> ServerIdentity<'static> {
        static ENV: std::sync::LazyLock<BTreeMap<String, String>> = std::sync::LazyLock::new(|| {
            BTreeMap::from([
                ("GAIA_DATABASE_URL".to_string(), "sqlite:/data/c.sqlite".to_string()),
                ("RUST_LOG".to_string(), "info".to_string()),
            ])
        });
        ServerIdentity {
            name: "town-eu-abcde",
            region: "eu",
            sdk_url: "http://127.0.0.1:7700",
            join_secret: "s3cret",
            sdk_token: Some("town-eu-abcde.c2lnbmF0dXJl"),
            env: &ENV,
        }
    }

    #[test]
    fn names_are_fleet_region_and_five_random_characters() {
        let a = server_name("town", "eu-west");
        let b = server_name("town", "eu-west");
        assert_ne!(a, b);
        let suffix = a.strip_prefix("town-eu-west-").expect("prefix");
        assert_eq!(suffix.len(), 5);
        assert!(suffix.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{a}");
    }

    #[test]
    fn environment_tells_the_server_who_it_is() {
        let env = server_env(&spec(), id());
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("GAIA_SERVER_NAME"), Some("town-eu-abcde"));
        assert_eq!(get("GAIA_FLEET"), Some("town"), "the template cannot spoof identity");
        assert_eq!(get("GAIA_REGION"), Some("eu"));
        assert_eq!(get("GAIA_SDK_URL"), Some("http://127.0.0.1:7700"));
        assert_eq!(get("GAIA_JOIN_SECRET"), Some("s3cret"));
        assert_eq!(get("GAIA_SDK_TOKEN"), Some("town-eu-abcde.c2lnbmF0dXJl"));
        assert_eq!(get("GAIA_WORLD_CAPACITY"), Some("20"));
        assert_eq!(get("GAIA_PLAYER_CAPACITY"), Some("600"));
        assert_eq!(get("GAIA_WORLD_PLAYER_CAPACITY"), Some("30"));
        assert_eq!(get("GAIA_HEALTH_PERIOD_SECONDS"), Some("1"));
        assert_eq!(get("GAIA_EXIT_WITH_PARENT"), Some("1"));
        assert_eq!(get("GAIA_LISTEN"), Some("0.0.0.0:0"), "the template may choose where to listen");
        assert_eq!(get("RUST_LOG"), Some("debug"), "the template overrides the deployment");
        assert_eq!(
            get("GAIA_DATABASE_URL"),
            Some("sqlite:/data/c.sqlite"),
            "the deployment's settings reach the server"
        );

        let mut plain = spec();
        plain.template.env.clear();
        assert_eq!(server_env(&plain, id()).get("GAIA_LISTEN").map(String::as_str), Some("127.0.0.1:0"));
    }

    #[test]
    fn the_sdk_token_is_the_controller_s_to_give() {
        let mut spoofing = spec();
        spoofing.template.env.insert("GAIA_SDK_TOKEN".into(), "someone-else.token".into());
        let env = server_env(&spoofing, id());
        assert_eq!(env.get("GAIA_SDK_TOKEN").map(String::as_str), Some("town-eu-abcde.c2lnbmF0dXJl"));
        let env = server_env(&spoofing, ServerIdentity { sdk_token: None, ..id() });
        assert_eq!(env.get("GAIA_SDK_TOKEN"), None, "no SDK auth: no token at all");

        // The secrets behind every token are not inherited from the controller's environment.
        let (_, command) = command(&spec(), id()).expect("a command");
        let envs: BTreeMap<_, _> = command.as_std().get_envs().collect();
        for key in WITHHELD_ENV {
            let key = std::ffi::OsStr::new(key);
            let expected = (key == "GAIA_SDK_TOKEN").then(|| std::ffi::OsStr::new("town-eu-abcde.c2lnbmF0dXJl"));
            assert_eq!(envs.get(key).copied(), Some(expected), "{key:?}");
        }
    }

    #[test]
    fn bare_programs_are_found_next_to_the_binary_first() {
        let dir = std::env::temp_dir().join(format!("gaia-resolve-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("gaia-gameserver"), b"").expect("temp file");

        assert_eq!(resolve_program("gaia-gameserver", Some(&dir)), dir.join("gaia-gameserver"));
        assert_eq!(resolve_program("sh", Some(&dir)), PathBuf::from("sh"), "not beside: left to PATH");
        assert_eq!(resolve_program("gaia-gameserver", None), PathBuf::from("gaia-gameserver"));
        assert_eq!(resolve_program("./gaia-gameserver", Some(&dir)), PathBuf::from("./gaia-gameserver"));
        assert_eq!(resolve_program("/bin/sh", Some(&dir)), PathBuf::from("/bin/sh"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn command_needs_a_program() {
        let mut empty = spec();
        empty.template = GameServerTemplate { command: vec![], env: BTreeMap::new() };
        assert!(command(&empty, id()).is_none());
        let (program, _) = command(&spec(), id()).expect("a command");
        assert!(program.ends_with("gaia-gameserver"));
    }
}

#![allow(clippy::unwrap_used)]
//! The monitoring bundle (manifests/monitoring) names only metrics the binaries export.
//!
//! Runs `gaia run --config examples/fleet.yaml` as a child process, allocates a world,
//! scrapes `/metrics` of the control plane and of every game server, and checks every
//! metric named in the rule files and in the Grafana dashboards against what it saw. A
//! name counts as exported when a scrape declares its family (`# TYPE`), even with no
//! sample yet (a labelled counter appears at its first event), expanded the way
//! Prometheus stores it: counters as `_total`, histograms as `_bucket`, `_sum` and
//! `_count`, info metrics as `_info`. Names the rules record count as known.
//!
//! promtool's own checks of the rules (syntax, unit tests) are in `.ci/run`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gaia_api::gameserver::{GameServer, GameServerState};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn monitoring() -> PathBuf {
    repo().join("manifests/monitoring")
}

/// The files of `dir` ending in `ext`, sorted.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(ext))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no *{ext} in {}", dir.display());
    found
}

// ---------------------------------------------------------------------------------------
// Metric names in PromQL.

/// Words that are PromQL, not metric names, where they stand alone.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "inf",
    "nan",
    "atan2",
];
/// Keywords followed by a list of label names, not of expressions.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names `expr` selects. Skips strings, label matchers (`{...}`), ranges and
/// subqueries (`[...]`), functions, keywords and the label lists of `by (...)` and the
/// like; Grafana's `$variables` are inside strings or ranges, so they are skipped too.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += if chars[i] == '\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' || c == '$' => {
                // A number, a duration (5m, 1e-3) or a variable: its letters are not a name.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '_' | '$')) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':')) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if called {
                        while next < chars.len() && chars[next] != ')' {
                            next += 1;
                        }
                        i = next + 1;
                    }
                } else if !called && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (fleet, le) (rate(gaia_a_bucket{x="y",z=~"$fleet"}[$__rate_interval])
        * on (job, instance) group_left (fleet) gaia_gameserver_info{fleet="a{b}"})) > 0.5
        unless on (fleet) gaia:rec:sum offset 5m or time() - max without (instance) (b_total) > 1e3"#;
    assert_eq!(metric_names(expr), ["gaia_a_bucket", "gaia_gameserver_info", "gaia:rec:sum", "b_total"]);
    assert_eq!(metric_names("sum(rate(x_total[5m:1m]))"), ["x_total"]);
}

// ---------------------------------------------------------------------------------------
// What the bundle uses.

/// One use of a metric: the name, and where (file and rule or panel).
struct Use {
    name: String,
    place: String,
}

/// The rules' uses, and the names they record.
fn rule_uses() -> (Vec<Use>, BTreeSet<String>) {
    let mut uses = Vec::new();
    let mut recorded = BTreeSet::new();
    for path in files(&monitoring().join("rules"), ".yaml") {
        let file = path.strip_prefix(repo()).unwrap().display().to_string();
        let doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let groups = doc["groups"].as_array().unwrap_or_else(|| panic!("{file}: no groups"));
        for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
            let what = rule["record"].as_str().or_else(|| rule["alert"].as_str()).unwrap().to_string();
            if let Some(record) = rule["record"].as_str() {
                recorded.insert(record.to_string());
            }
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{file}: {what} has no expr"));
            let place = format!("{file}, rule {what}");
            uses.extend(metric_names(expr).into_iter().map(|name| Use { name, place: place.clone() }));
        }
    }
    assert!(!recorded.is_empty() && !uses.is_empty(), "the rule files hold no rules");
    (uses, recorded)
}

/// Every PromQL string of a dashboard: panel targets' `expr` and template variables'
/// queries (of `label_values(selector, label)` only the selector is PromQL).
fn dashboard_queries(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                out.push((title.to_string(), expr.to_string()));
            }
            if map.get("type").and_then(Value::as_str) == Some("query") {
                let name = map.get("name").and_then(Value::as_str).unwrap_or("?");
                let query = map.get("query").map(|q| q.get("query").unwrap_or(q)).and_then(Value::as_str);
                if let Some(query) = query {
                    let promql = query
                        .strip_prefix("label_values(")
                        .and_then(|rest| rest.rsplit_once(','))
                        .map_or(query, |(selector, _)| selector);
                    out.push((format!("variable {name}"), promql.to_string()));
                }
            }
            for (key, child) in map {
                if key != "expr" {
                    dashboard_queries(child, title, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_queries(item, title, out)),
        _ => {}
    }
}

fn dashboard_uses() -> Vec<Use> {
    let mut uses = Vec::new();
    for path in files(&monitoring().join("grafana"), ".json") {
        let file = path.strip_prefix(repo()).unwrap().display().to_string();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut queries = Vec::new();
        dashboard_queries(&dashboard, "?", &mut queries);
        assert!(queries.len() > 10, "{file}: only {} queries", queries.len());
        for (title, expr) in queries {
            let place = format!("{file}, panel {title:?}");
            uses.extend(metric_names(&expr).into_iter().map(|name| Use { name, place: place.clone() }));
        }
    }
    uses
}

#[test]
fn the_dashboard_is_templated_on_a_datasource_and_a_fleet() {
    for path in files(&monitoring().join("grafana"), ".json") {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        let kind = |name: &str| variables.iter().find(|v| v["name"] == name).map(|v| v["type"].clone());
        assert_eq!(kind("datasource"), Some("datasource".into()), "{}", path.display());
        assert_eq!(kind("fleet"), Some("query".into()), "{}", path.display());
        assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36, "{}", path.display());
        let mut ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{}: panel id {} twice", path.display(), panel["id"]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the binaries export.

/// The names a Prometheus scrape of `text` stores: samples, and every declared family
/// expanded by its type.
fn exported(text: &str, into: &mut BTreeSet<String>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            into.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            into.insert(line[..end].to_string());
        }
    }
}

#[test]
fn scrapes_are_read_as_prometheus_stores_them() {
    let mut names = BTreeSet::new();
    exported(
        "# HELP a A.\n# TYPE a counter\na_total{x=\"1\"} 2\n# TYPE h histogram\n# TYPE g gauge\n\
         # TYPE i info\ni_info{v=\"1\"} 1\ng 3\n# EOF\n",
        &mut names,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["a_total", "g", "h_bucket", "h_count", "h_sum", "i_info"]);
}

/// Families a clean run never fills, so a scrape of one does not show them (an empty
/// family writes nothing, not even its `# TYPE`): their name must be registered in the
/// named metrics module instead, as (file, prefix, name as registered, suffix).
const EVENT_ONLY: &[(&str, &str, &str, &str)] = &[
    ("fleet-autoscaler/src/metrics.rs", "gaia_autoscaler", "errors", "_total"),
    ("fleet-autoscaler/src/metrics.rs", "gaia_autoscaler", "webhook_errors", "_total"),
    ("fleet-autoscaler/src/metrics.rs", "gaia_autoscaler", "scale_decisions", "_total"),
    ("controller/src/metrics.rs", "gaia_controller", "errors", "_total"),
    ("controller/src/metrics.rs", "gaia_controller", "processes_stopped", "_total"),
    ("controller/src/metrics.rs", "gaia_controller", "processes_exited", "_total"),
    ("controller/src/metrics.rs", "gaia_controller", "processes_killed", "_total"),
    ("controller/src/metrics.rs", "gaia_controller", "servers_drained", "_total"),
    ("gameserver/src/metrics.rs", "gaia_gameserver", "closes", "_total"),
    ("gameserver/src/metrics.rs", "gaia_gameserver", "migrations", "_total"),
    ("checkpoint/src/metrics.rs", "gaia_checkpoint", "corrupt", "_total"),
];

/// The [`EVENT_ONLY`] names, each checked to be registered where it says.
fn event_only() -> BTreeSet<String> {
    EVENT_ONLY
        .iter()
        .map(|(file, prefix, name, suffix)| {
            let source = std::fs::read_to_string(repo().join(file)).unwrap();
            let registered = source.contains(&format!("sub_registry_with_prefix(\"{prefix}\")"))
                && source.contains(&format!("\"{name}\","));
            assert!(registered, "EVENT_ONLY: {file} registers no {name:?} under {prefix:?}");
            format!("{prefix}_{name}{suffix}")
        })
        .collect()
}

/// A `gaia` child process; killed when dropped.
struct Child(tokio::process::Child);

fn gaia(args: &[&str]) -> Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gaia"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Child(child)
}

const TOKEN: &str = "monitoring-test-token";

/// `ws://host:port/ws` -> `http://host:port/metrics`.
fn metrics_url(address: &str) -> String {
    let host = address.trim_start_matches("ws://").trim_start_matches("wss://");
    format!("http://{}/metrics", host.split('/').next().unwrap())
}

async fn get(http: &reqwest::Client, url: &str) -> reqwest::Response {
    let resp = http.get(url).bearer_auth(TOKEN).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_bundle_names_is_exported() {
    let (rule_uses, recorded) = rule_uses();
    let uses: Vec<Use> = rule_uses.into_iter().chain(dashboard_uses()).collect();
    let event_only = event_only();

    // examples/fleet.yaml: fleet town, one server in each of two regions, autoscaled.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = std::env::temp_dir().join(format!("gaia-monitoring-{}", std::process::id()));
    let config = repo().join("examples/fleet.yaml");
    let _run = gaia(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--allocator-token",
        TOKEN,
    ]);
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let servers: Option<Vec<GameServer>> =
            match http.get(format!("{url}/v1/gameservers")).bearer_auth(TOKEN).send().await {
                Ok(resp) => resp.json().await.ok(),
                Err(_) => None,
            };
        if servers.is_some_and(|s| s.len() >= 2 && s.iter().all(|s| s.state == GameServerState::Ready)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the fleet's servers were not Ready within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic: bots allocate, join, send inputs and get deltas; their worlds checkpoint.
    let mut loadgen = gaia(&[
        "loadgen",
        "--allocator",
        &url,
        "--allocator-token",
        TOKEN,
        "--bots",
        "20",
        "--world-size",
        "10",
        "--duration",
        "2s",
    ]);
    let status = tokio::time::timeout(Duration::from_secs(60), loadgen.0.wait()).await;
    eprintln!("loadgen: {status:?}");
    // A refusal for a region the fleet lacks, and one for a missing token.
    let body = r#"{"fleet":"town","regions":["nowhere"]}"#;
    let resp = http
        .post(format!("{url}/v1/allocations"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{body}: {}", resp.status());
    let resp = http.post(format!("{url}/v1/allocations")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);

    let servers: Vec<GameServer> = get(&http, &format!("{url}/v1/gameservers")).await.json().await.unwrap();
    let mut scraped = vec![format!("{url}/metrics")];
    scraped.extend(servers.iter().filter_map(|s| s.address.as_deref()).map(metrics_url));
    let mut names = BTreeSet::new();
    for target in &scraped {
        exported(&get(&http, target).await.text().await.unwrap(), &mut names);
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    // What this bundle added to the binaries is in the scrape.
    for name in ["gaia_fleet_servers", "gaia_gameserver_info", "gaia_autoscaler_last_success_timestamp_seconds"] {
        assert!(names.contains(name), "{name} is not in the scrapes of {scraped:?}");
    }

    let unknown: BTreeSet<String> = uses
        .iter()
        .filter(|u| !names.contains(&u.name) && !recorded.contains(&u.name) && !event_only.contains(&u.name))
        .map(|u| format!("{} (in {})", u.name, u.place))
        .collect();
    assert!(
        unknown.is_empty(),
        "the monitoring bundle names metrics that the binaries do not export (scraped {scraped:?}), \
         no recording rule defines and EVENT_ONLY does not list:\n  {}",
        unknown.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#![allow(clippy::unwrap_used)]
//! The commands the project promises: the README's two commands are the ones `.ci/run`
//! runs (so neither can break unseen), `gaia crdgen` writes the committed CRDs, and
//! `gaia loadgen-curve` writes its table and plot.

use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The README's commands under "## The two commands", in order: the indented lines that
/// start with `cargo`.
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("The two commands"))
        .expect("the README has a section \"## The two commands\"");
    section.lines().filter_map(|l| l.strip_prefix("    ")).filter(|l| l.starts_with("cargo ")).map(words).collect()
}

/// The command on the one line of `.ci/run` that starts with `prefix`: its words up to
/// a redirection, a pipe or a list operator.
fn ci_command(script: &str, prefix: &str) -> Vec<String> {
    let lines: Vec<&str> = script.lines().map(str::trim).filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, ".ci/run should have exactly one line starting with {prefix:?}, has {lines:?}");
    let shell = |w: &String| ["<", ">", "2>", "|", "&", ";"].iter().any(|op| w.starts_with(op));
    words(lines[0]).into_iter().take_while(|w| !shell(w)).collect()
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// Cargo's own flags that CI may add or leave out: `--locked` (build what Cargo.lock
/// says) and `--release` (CI runs the main command on the debug build its tests made).
fn without_ci_flags(cargo: &[String]) -> Vec<String> {
    cargo.iter().filter(|w| *w != "--locked" && *w != "--release").cloned().collect()
}

/// The flags after `--` as (flag, value) pairs.
fn flags(args: &[String]) -> Vec<(String, String)> {
    assert!(args.len() % 2 == 1, "expected a subcommand then --flag value pairs: {args:?}");
    args[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()
}

/// Why CI's form of the main command is not the README's, if it is not: the same cargo
/// invocation (but `--locked` and `--release`), the same subcommand and flags in the same order and with
/// the same values, but for `--bots` and `--duration`, which may be smaller.
fn main_mismatch(readme: &[String], ci: &[String]) -> Option<String> {
    let split = |c: &[String]| {
        let at = c.iter().position(|w| w == "--")?;
        Some((c[..at].to_vec(), c[at + 1..].to_vec()))
    };
    let (Some((r_cargo, r_args)), Some((c_cargo, c_args))) = (split(readme), split(ci)) else {
        return Some("both must be `cargo run ... -- <subcommand> ...`".into());
    };
    if without_ci_flags(&r_cargo) != without_ci_flags(&c_cargo) {
        return Some(format!("cargo flags differ: README {r_cargo:?}, CI {c_cargo:?}"));
    }
    if r_args.first() != c_args.first() {
        return Some(format!("subcommands differ: README {:?}, CI {:?}", r_args.first(), c_args.first()));
    }
    let (r_flags, c_flags) = (flags(&r_args), flags(&c_args));
    let names = |f: &[(String, String)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(&r_flags) != names(&c_flags) {
        return Some(format!("flags differ: README {:?}, CI {:?}", names(&r_flags), names(&c_flags)));
    }
    for ((name, r), (_, c)) in r_flags.iter().zip(&c_flags) {
        let smaller = match name.as_str() {
            "--bots" => c.parse::<u64>().ok().zip(r.parse::<u64>().ok()).is_some_and(|(c, r)| c <= r),
            "--duration" => humantime::parse_duration(c)
                .ok()
                .zip(humantime::parse_duration(r).ok())
                .is_some_and(|(c, r): (Duration, Duration)| c <= r),
            _ => c == r,
        };
        if !smaller {
            return Some(format!("{name}: README {r}, CI {c}"));
        }
    }
    None
}

#[test]
fn ci_runs_the_readmes_two_commands() {
    let commands = readme_commands(&read("README.md"));
    assert_eq!(commands.len(), 2, "the README's \"The two commands\" should show two commands, shows {commands:?}");
    let (main, test) = (&commands[0], &commands[1]);
    let script = read(".ci/run");
    let ci_test = ci_command(&script, "cargo test");
    assert_eq!(&without_ci_flags(&ci_test), test, ".ci/run's test command is not the README's");
    let ci_main = ci_command(&script, "cargo run");
    if let Some(why) = main_mismatch(main, &ci_main) {
        panic!(".ci/run's main command {ci_main:?} is not the README's {main:?}: {why}");
    }
}

#[test]
fn the_comparison_catches_drift() {
    let readme = words("cargo run --release -- loadgen --bots 1000 --duration 20s");
    let ok = |ci: &str| main_mismatch(&readme, &words(ci));
    assert_eq!(ok("cargo run --release --locked -- loadgen --bots 200 --duration 5s"), None);
    assert_eq!(ok("cargo run --release -- loadgen --bots 1000 --duration 20s"), None);
    assert!(ok("cargo run --release -- loadgen --bots 2000 --duration 5s").is_some());
    assert!(ok("cargo run --release -- loadgen --bots 200 --duration 1m").is_some());
    assert!(ok("cargo run --release -- run --bots 200 --duration 5s").is_some());
    assert!(ok("cargo run --release -- loadgen --bots 200").is_some());
    assert_eq!(ok("cargo run --locked -- loadgen --bots 200 --duration 5s"), None);
    assert!(ok("cargo run -p gaia -- loadgen --bots 200 --duration 5s").is_some());
    assert!(ok("cargo run --release --bin gaia -- loadgen --bots 200 --duration 5s").is_some());
    assert!(ok("cargo run --release loadgen --bots 200 --duration 5s").is_some());
    let script = "cargo fmt\n  cargo run --locked -- a --b 1 >\"$out\" 2>&1 || s=$?\ncargo test | tee x\n";
    assert_eq!(ci_command(script, "cargo run"), words("cargo run --locked -- a --b 1"));
    assert_eq!(ci_command(script, "cargo test"), words("cargo test"));
    let readme =
        "x\n## The two commands\n\nMain:\n\n    cargo run -- a\n\nTests:\n\n    cargo test\n\n## Next\n\n    cargo b\n";
    assert_eq!(readme_commands(readme), [words("cargo run -- a"), words("cargo test")]);
}

#[test]
fn crdgen_writes_the_committed_crds() {
    let out = std::env::temp_dir().join(format!("gaia-crdgen-{}", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_gaia"))
        .args(["crdgen", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "gaia crdgen: {status}");
    let mut written: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    written.sort();
    assert_eq!(written, ["fleet.yaml", "fleetautoscaler.yaml", "gameserver.yaml", "kustomization.yaml"]);
    for file in &written {
        let got = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(
            got == read(&format!("manifests/crds/{file}")),
            "manifests/crds/{file} is not what `gaia crdgen` writes: run `cargo run -- crdgen`"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// Two tiny runs, each its own `gaia loadgen` process: the driver passes its flags on,
/// reads back each run's figures, and leaves no data dir behind.
#[test]
fn loadgen_curve_writes_a_table_and_a_plot() {
    let out = std::env::temp_dir().join(format!("gaia-curve-{}", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_gaia"))
        .args(["loadgen-curve", "--bots", "10,20", "--duration", "2s", "--config"])
        .arg(repo().join("examples/fleet.yaml"))
        .arg("--out")
        .arg(&out)
        .args(["--", "--world-size", "10"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let table = std::fs::read_to_string(out.join("curve.md")).unwrap_or_default();
    let svg = std::fs::read_to_string(out.join("curve.svg")).unwrap_or_default();
    let report = std::fs::read_to_string(out.join("bots-20.txt")).unwrap_or_default();
    let data_left = out.join("data-10").exists() || out.join("data-20").exists();
    std::fs::remove_dir_all(&out).unwrap();
    assert!(status.success(), "gaia loadgen-curve: {status}\n{table}\n{report}");
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].starts_with("| 10 | 1 |") && rows[1].starts_with("| 20 | 2 |"), "{table}");
    assert!(rows.iter().all(|r| r.ends_with("| PASS |")), "{table}");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(report.starts_with("gaia loadgen: 20 bots, 2 worlds"), "{report}");
    assert!(!data_left, "a run's data dir was left behind");
}

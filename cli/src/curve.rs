//! `gaia loadgen-curve`: the capacity curve (docs/benchmarks.md). Runs `gaia loadgen` once
//! per bot count, one after another, each as a child process of its own from a clean start
//! (a fresh data dir, its own embedded fleet and game servers), so no step inherits
//! another's sockets, memory or worlds, and each stays under the open-files limit on its
//! own. Each step writes its report (`bots-N.txt`) and its figures (`--report-json`,
//! `bots-N.json`); after every step the table and the plot of the steps so far are
//! rewritten (`curve.md`, `curve.svg`, made by `gaia_loadgen::curve`).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use gaia_loadgen::Summary;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub(crate) struct CurveArgs {
    /// Bot counts, one `gaia loadgen` run each, comma-separated.
    #[arg(long, env = "GAIA_CURVE_BOTS", value_delimiter = ',', default_value = "1000,2500,5000,10000,15000")]
    bots: Vec<usize>,
    /// Fleet YAML of every run's embedded fleet; the default has room for 15,000 bots.
    #[arg(long, env = "GAIA_CURVE_CONFIG", default_value = "examples/fleet-10k.yaml")]
    config: PathBuf,
    /// Steady phase of every run.
    #[arg(long, env = "GAIA_CURVE_DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where curve.md, curve.svg and each run's bots-N.txt and bots-N.json go.
    #[arg(long, env = "GAIA_CURVE_OUT", default_value = "curve")]
    out: PathBuf,
    /// More `gaia loadgen` flags for every run, after `--` (e.g. `-- --encoding json`).
    #[arg(last = true, value_name = "LOADGEN_ARGS")]
    loadgen_args: Vec<String>,
}

/// Runs the steps in order; fails at the first step that leaves no figures (the curve so
/// far is written). Exits non-zero unless every step passed.
pub(crate) async fn run(args: CurveArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.bots.is_empty() && !args.bots.contains(&0), "--bots needs counts above 0");
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut steps = Vec::new();
    for (i, &bots) in args.bots.iter().enumerate() {
        anyhow::ensure!(!shutdown.is_cancelled(), "interrupted before the run of {bots} bots");
        tracing::info!(step = i + 1, of = args.bots.len(), bots, "capacity curve: starting a run");
        let summary = step(&exe, &args, bots, &shutdown).await?;
        let result = if summary.passed() { "PASS".into() } else { format!("FAIL: {}", summary.problems.join("; ")) };
        tracing::info!(bots, %result, "capacity curve: run finished");
        steps.push(summary);
        write(&args.out, &steps)?;
    }
    print!("{}", gaia_loadgen::curve::table(&steps));
    println!("(written to {})", args.out.join("curve.md").display());
    Ok(if steps.iter().all(Summary::passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One `gaia loadgen` run of `bots` bots: its report to `bots-N.txt`, its progress to
/// our stderr; its figures, read back from `bots-N.json`.
async fn step(exe: &Path, args: &CurveArgs, bots: usize, shutdown: &CancellationToken) -> anyhow::Result<Summary> {
    let json = args.out.join(format!("bots-{bots}.json"));
    let text = args.out.join(format!("bots-{bots}.txt"));
    let data = args.out.join(format!("data-{bots}"));
    // A figure left by an earlier curve must not pass for this run's.
    remove(&json)?;
    remove(&data)?;
    let stdout = std::fs::File::create(&text).with_context(|| format!("creating {}", text.display()))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("loadgen")
        .arg("--config")
        .arg(&args.config)
        .args(["--bots", &bots.to_string()])
        .args(["--duration", &humantime::format_duration(args.duration).to_string()])
        .arg("--data-dir")
        .arg(&data)
        .arg("--report-json")
        .arg(&json)
        .args(&args.loadgen_args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} loadgen", exe.display()))?;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = shutdown.cancelled() => {
            // Ctrl-C in a terminal reaches the child too; a signal to this process alone
            // is passed on, so the run stops the way an interrupted loadgen does.
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
            }
            child.wait().await
        }
    }
    .context("waiting for loadgen")?;
    remove(&data)?;
    if !json.exists() {
        anyhow::bail!("the run of {bots} bots left no figures ({status}); its output is in {}", text.display());
    }
    Summary::read_json(&json)
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `curve.md` and `curve.svg` of the steps so far.
fn write(out: &Path, steps: &[Summary]) -> anyhow::Result<()> {
    let md = out.join("curve.md");
    std::fs::write(&md, gaia_loadgen::curve::table(steps)).with_context(|| format!("writing {}", md.display()))?;
    let svg = out.join("curve.svg");
    std::fs::write(&svg, gaia_loadgen::curve::svg(steps)?).with_context(|| format!("writing {}", svg.display()))
}

//! `gaia simulate`: runs simulator scenarios (gaia-sim) and prints their results tables;
//! with `--out`, also writes one SVG per scenario and `results.md`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use gaia_sim::{BUILT_IN, Scenario};

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// A built-in scenario (featured, seasonal, regions, short), a scenario YAML file, or
    /// `all` for every built-in one. Repeatable, or comma-separated.
    #[arg(long = "scenario", env = "GAIA_SIM_SCENARIO", value_delimiter = ',', default_value = "short")]
    scenarios: Vec<String>,
    /// Directory to write `{scenario}.svg` and `results.md` to (created if missing).
    #[arg(long, env = "GAIA_SIM_OUT")]
    out: Option<PathBuf>,
    /// Also find the smallest static buffer (0 to --sweep-max free world slots, by
    /// --sweep-step) with zero failed allocations, and compare the other policies with it.
    #[arg(long, env = "GAIA_SIM_SWEEP", value_parser = clap::builder::BoolishValueParser::new())]
    sweep: bool,
    #[arg(long, env = "GAIA_SIM_SWEEP_MAX", default_value_t = 300)]
    sweep_max: u32,
    #[arg(long, env = "GAIA_SIM_SWEEP_STEP", default_value_t = 10)]
    sweep_step: u32,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let mut names = Vec::new();
    for name in args.scenarios {
        if name == "all" {
            names.extend(BUILT_IN.iter().map(|n| n.to_string()));
        } else {
            names.push(name);
        }
    }
    let sizes: Option<Vec<u32>> =
        args.sweep.then(|| (0..=args.sweep_max).step_by(args.sweep_step.max(1) as usize).collect());
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut results = String::new();
    for name in names {
        let scenario = Scenario::load(&name)?;
        let started = Instant::now();
        let outcome = gaia_sim::simulate(&scenario, sizes.as_deref())?;
        eprintln!("gaia simulate: scenario {} took {:.1?}", scenario.name, started.elapsed());
        let section = outcome.markdown();
        println!("{section}");
        results.push_str(&section);
        results.push('\n');
        if let Some(dir) = &args.out {
            let path = dir.join(format!("{}.svg", scenario.name));
            std::fs::write(&path, gaia_sim::plot::svg(&outcome)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if let Some(dir) = &args.out {
        let path = dir.join("results.md");
        std::fs::write(&path, results).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

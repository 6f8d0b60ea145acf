//! The capacity curve's outputs: a markdown [`table`] and an SVG plot ([`svg`]) of the
//! [`Summary`] of each step (one `gaia loadgen` run per bot count; `gaia loadgen-curve`
//! runs them). Both are pure functions of the summaries.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::summary::{Percentiles, Summary};

const WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 380;

/// `15000` -> `15,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn p50_p99(p: Option<Percentiles>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{:.1} / {:.1}", p.p50, p.p99))
}

fn or_dash(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".into(), format)
}

/// One row per step, by bots: latencies, CPU of each process (percent of one core) and
/// memory per bot.
pub fn table(steps: &[Summary]) -> String {
    let mut steps: Vec<&Summary> = steps.iter().collect();
    steps.sort_by_key(|s| s.bots);
    let mut out = String::from(
        "| bots | worlds | tick->client ms p50 / p99 | input->result ms p50 / p99 | deltas per bot per s \
         | CPU loadgen | CPU game servers | CPU per 1,000 bots (loadgen + servers) \
         | KiB per bot (servers / loadgen) | result |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in steps {
        let servers: Vec<String> = s.servers().map(|p| format!("{:.0}%", p.cpu_percent)).collect();
        let (loadgen_kbot, servers_kbot) = s.cpu_per_kbot();
        let result = if s.passed() { "PASS".to_string() } else { format!("FAIL: {}", s.problems.join("; ")) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} + {} | {} / {} | {} |",
            thousands(s.bots),
            s.worlds,
            p50_p99(s.tick_ms),
            p50_p99(s.input_ms),
            s.deltas_per_bot_s,
            or_dash(s.loadgen().map(|p| p.cpu_percent), |c| format!("{c:.0}%")),
            if servers.is_empty() { "-".into() } else { servers.join(" / ") },
            or_dash(loadgen_kbot, |c| format!("{c:.1}%")),
            or_dash(servers_kbot, |c| format!("{c:.1}%")),
            or_dash(s.server_kib_per_bot, |k| format!("{k:.1}")),
            or_dash(s.loadgen_kib_per_bot(), |k| format!("{k:.1}")),
            result.replace('|', "\\|"),
        );
    }
    out
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting the curve: {e}")
}

/// A line of a panel: its legend, colour, whether dashed, and its points (bots, value).
struct Line {
    label: &'static str,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Two panels over bots: the p50 and p99 of both latencies (ms), then CPU per 1,000 bots
/// (percent of one core) of the load generator and of the game servers together.
pub fn svg(steps: &[Summary]) -> anyhow::Result<String> {
    anyhow::ensure!(!steps.is_empty(), "no steps to plot");
    let mut steps: Vec<&Summary> = steps.iter().collect();
    steps.sort_by_key(|s| s.bots);
    let points = |value: &dyn Fn(&Summary) -> Option<f64>| -> Vec<(f64, f64)> {
        steps.iter().filter_map(|s| Some((s.bots as f64, value(s)?))).collect()
    };
    let blue = RGBColor(30, 90, 200);
    let red = RGBColor(200, 40, 40);
    let latencies = [
        Line { label: "tick->client p99", color: blue, dashed: false, points: points(&|s| Some(s.tick_ms?.p99)) },
        Line { label: "tick->client p50", color: blue, dashed: true, points: points(&|s| Some(s.tick_ms?.p50)) },
        Line { label: "input->result p99", color: red, dashed: false, points: points(&|s| Some(s.input_ms?.p99)) },
        Line { label: "input->result p50", color: red, dashed: true, points: points(&|s| Some(s.input_ms?.p50)) },
    ];
    let cpu = [
        Line {
            label: "game servers (all)",
            color: RGBColor(30, 140, 60),
            dashed: false,
            points: points(&|s| s.cpu_per_kbot().1),
        },
        Line {
            label: "load generator (bots and control plane)",
            color: RGBColor(230, 140, 0),
            dashed: false,
            points: points(&|s| s.cpu_per_kbot().0),
        },
    ];
    let x_max = steps.last().map_or(1.0, |s| s.bots as f64) * 1.05;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, PANEL_HEIGHT * 2)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (top, bottom) = root.split_vertically(PANEL_HEIGHT);
        panel(&top, "Latency against bots", "ms", x_max, &latencies)?;
        panel(&bottom, "CPU per 1,000 bots", "% of one core per 1,000 bots", x_max, &cpu)?;
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    x_max: f64,
    lines: &[Line],
) -> anyhow::Result<()> {
    let y_top = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    // Head room for the legend.
    let y_max = if y_top > 0.0 { y_top * 1.35 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("bots")
        .y_desc(y_desc)
        .x_label_formatter(&|x| thousands(x.max(0.0).round() as usize))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    for line in lines {
        let (color, width) = (line.color, if line.dashed { 1 } else { 2 });
        let style = color.stroke_width(width);
        let series = if line.dashed {
            chart.draw_series(DashedLineSeries::new(line.points.iter().copied(), 6, 4, style))
        } else {
            chart.draw_series(LineSeries::new(line.points.iter().copied(), style).point_size(3))
        };
        series
            .map_err(plot_error)?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::ProcessSummary;

    fn step(bots: usize, tick_p99: f64, input_p99: f64, problems: Vec<String>) -> Summary {
        let server = |name: &str, cpu| ProcessSummary {
            name: name.into(),
            cpu_percent: cpu,
            rss_bytes: 100 << 20,
            connections: Some(bots as u64 / 2),
            kib_per_connection: Some(20.5),
            tick_p99_ms: Some(0.05),
        };
        Summary {
            bots,
            worlds: bots.div_ceil(30),
            joined: bots as u64,
            duration_s: 60.0,
            deltas_per_bot_s: 10.0,
            tick_ms: Some(Percentiles { p50: 2.5, p99: tick_p99, max: 200.0 }),
            input_ms: Some(Percentiles { p50: 29.6, p99: input_p99, max: 250.0 }),
            processes: vec![
                ProcessSummary {
                    name: "loadgen".into(),
                    cpu_percent: 61.0,
                    rss_bytes: 250 << 20,
                    connections: None,
                    kib_per_connection: None,
                    tick_p99_ms: None,
                },
                server("town-eu-west-1", 35.0),
                server("town-us-east-1", 34.0),
            ],
            server_kib_per_bot: Some(20.5),
            errors: 0,
            problems,
        }
    }

    #[test]
    fn thousands_are_separated() {
        let got: Vec<String> = [0, 999, 1000, 15_000, 1_234_567].into_iter().map(thousands).collect();
        assert_eq!(got, ["0", "999", "1,000", "15,000", "1,234,567"]);
    }

    #[test]
    fn the_table_has_a_row_per_step_by_bots() {
        let steps = [step(10_000, 16.2, 58.0, vec![]), step(1000, 4.0, 31.0, vec!["3 errors".into()])];
        let table = table(&steps);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("| bots | worlds | tick->client ms p50 / p99 |"), "{table}");
        assert_eq!(
            lines[2],
            "| 1,000 | 34 | 2.5 / 4.0 | 29.6 / 31.0 | 10.0 | 61% | 35% / 34% | 61.0% + 69.0% | 20.5 / 256.0 | FAIL: 3 errors |"
        );
        assert_eq!(
            lines[3],
            "| 10,000 | 334 | 2.5 / 16.2 | 29.6 / 58.0 | 10.0 | 61% | 35% / 34% | 6.1% + 6.9% | 20.5 / 25.6 | PASS |"
        );
        let columns = |line: &str| line.matches('|').count();
        assert!(lines.iter().all(|l| columns(l) == columns(lines[0])), "{table}");
    }

    #[test]
    fn a_step_without_samples_shows_dashes() {
        let mut empty = step(100, 1.0, 1.0, vec![]);
        empty.tick_ms = None;
        empty.input_ms = None;
        empty.processes.clear();
        empty.server_kib_per_bot = None;
        let table = table(&[empty]);
        assert!(table.ends_with("| 100 | 4 | - | - | 10.0 | - | - | - + - | - / - | PASS |\n"), "{table}");
    }

    #[test]
    fn the_plot_is_an_svg_with_every_line() {
        let steps = [step(1000, 4.0, 31.0, vec![]), step(5000, 9.0, 40.0, vec![]), step(15_000, 30.0, 90.0, vec![])];
        let path = std::env::temp_dir().join(format!("gaia-curve-{}.svg", std::process::id()));
        std::fs::write(&path, svg(&steps).unwrap()).unwrap();
        let written = std::fs::read_to_string(&path);
        std::fs::remove_file(&path).unwrap();
        let written = written.unwrap();
        assert!(written.starts_with("<svg") && written.trim_end().ends_with("</svg>"), "{written}");
        for label in ["Latency against bots", "CPU per 1,000 bots", "tick->client p99", "input->result p50", "10,000"] {
            let escaped = label.replace('>', "&gt;");
            assert!(written.contains(label) || written.contains(&escaped), "{label} missing");
        }
        assert!(svg(&[]).is_err());
    }
}

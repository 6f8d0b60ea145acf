//! One SVG per scenario: a panel per policy with demand (arrivals per minute, right
//! axis), worlds in use, capacity (world slots of live servers) and the buffer target
//! (left axis) over the trace, all regions added up.

use plotters::prelude::*;

use crate::error::SimError;
use crate::report::{Outcome, RegionSample};

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 320;

/// A line on the left axis: its legend, colour and value.
type Series = (&'static str, RGBColor, fn(&RegionSample) -> f64);

fn plot_error(e: impl std::fmt::Display) -> SimError {
    SimError::Plot(e.to_string())
}

/// The SVG of `outcome`: its reports, then the sweep's best static buffer.
pub fn svg(outcome: &Outcome) -> Result<String, SimError> {
    let reports = outcome.all_reports();
    // Minutes for short traces, hours otherwise.
    let (unit, per) =
        if outcome.scenario.duration.as_secs() <= 3 * 3600 { ("minutes", 60.0) } else { ("hours", 3600.0) };
    let length = outcome.scenario.duration.as_secs_f64() / per;
    let panels = u32::try_from(reports.len()).unwrap_or(1).max(1);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, PANEL_HEIGHT * panels)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let areas = root.split_evenly((reports.len().max(1), 1));
        for (area, report) in areas.iter().zip(&reports) {
            let totals: Vec<(f64, RegionSample)> =
                report.samples.iter().map(|s| (s.offset.as_secs_f64() / per, s.total())).collect();
            let slots = totals.iter().map(|(_, t)| t.capacity.max(t.used_worlds).max(t.buffer_target)).max();
            // Head room for the legend.
            let y_max = f64::from(slots.unwrap_or(1).max(1)) * 1.4;
            let per_minute = totals.iter().map(|(_, t)| t.demand * 60.0).fold(0.0, f64::max);
            let d_max = if per_minute > 0.0 { per_minute * 1.4 } else { 1.0 };
            let caption = format!(
                "{} / {}: {} of {} failed, p99 wait {} ms, {:.0} server-hours, peak {} servers",
                report.scenario,
                report.policy,
                report.failed,
                report.requests,
                report.wait_p99_ms,
                report.server_hours,
                report.peak_servers
            );
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .right_y_label_area_size(56)
                .build_cartesian_2d(0f64..length, 0f64..y_max)
                .map_err(plot_error)?
                .set_secondary_coord(0f64..length, 0f64..d_max);
            chart
                .configure_mesh()
                .x_desc(format!("{unit} since the trace started"))
                .y_desc("world slots")
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(plot_error)?;
            chart.configure_secondary_axes().y_desc("arrivals per minute").draw().map_err(plot_error)?;

            let series: [Series; 3] = [
                ("capacity (world slots of live servers)", BLUE, |t| f64::from(t.capacity)),
                ("worlds in use", GREEN, |t| f64::from(t.used_worlds)),
                ("buffer target (free slots)", RGBColor(230, 140, 0), |t| f64::from(t.buffer_target)),
            ];
            for (label, color, value) in series {
                chart
                    .draw_series(LineSeries::new(totals.iter().map(|(x, t)| (*x, value(t))), color.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            let red = RGBColor(200, 30, 30);
            chart
                .draw_secondary_series(LineSeries::new(totals.iter().map(|(x, t)| (*x, t.demand * 60.0)), red))
                .map_err(plot_error)?
                .label("demand (arrivals per minute, right axis)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

//! `amfp drift report --png`: each monitored machine's parts over time, one panel per machine:
//! every part's z (its distance against the machine's reference), the CUSUM statistic, the
//! threshold, and the alarm.
//!
//! Drawn with plotters like the envelope picture (crate::envelope_plot), with its bundled font.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::HistoryPoint;
use crate::envelope_plot::{PlotError, register_font, write_rgb_png};

/// One panel's size in pixels.
const PANEL: (u32, u32) = (560, 320);
/// The z axis shows this range; parts beyond it are drawn at its edge.
const Z_RANGE: (f64, f64) = (-4.0, 12.0);

/// Draws the history (oldest first) of each machine's current fingerprint into a PNG at `path`
/// with the decision threshold `threshold`. Machines are drawn in label order.
pub fn write_png(history: &[HistoryPoint], threshold: f64, path: &Path) -> Result<(), PlotError> {
    // The points of each machine's latest fingerprint only: a re-enrollment starts a new series.
    let mut series: BTreeMap<&str, Vec<&HistoryPoint>> = BTreeMap::new();
    for p in history {
        let s = series.entry(p.machine.as_str()).or_default();
        if s.last().is_some_and(|last| last.fingerprint != p.fingerprint) {
            s.clear();
        }
        s.push(p);
    }
    let panels = series.len().max(1);
    let cols = (panels as f64).sqrt().ceil() as u32;
    let rows = (panels as u32).div_ceil(cols);
    let size = (PANEL.0 * cols, PANEL.1 * rows);
    register_font();
    let mut rgb = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let areas = root.split_evenly((rows as usize, cols as usize));
        if series.is_empty() {
            areas[0].draw(&Text::new("no part followed yet", (20, 20), ("sans-serif", 20))).map_err(draw_err)?;
        }
        for ((label, points), area) in series.iter().zip(&areas) {
            draw_panel(area, label, points, threshold)?;
        }
        root.present().map_err(draw_err)?;
    }
    write_rgb_png(&rgb, size, path)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    label: &str,
    points: &[&HistoryPoint],
    threshold: f64,
) -> Result<(), PlotError> {
    let last = points.last().map_or(1, |p| p.part).max(2);
    let first = points.first().map_or(1, |p| p.part);
    let top = Z_RANGE.1.max(threshold * 1.2);
    let alarm = points.iter().find(|p| p.alarm);
    let caption = match alarm {
        Some(a) => format!("{label}: ALARM at part {}", a.part),
        None => format!("{label}: {} parts, no alarm", points.len()),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(42)
        .build_cartesian_2d(first as f64..last as f64, Z_RANGE.0..top)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("part since the reference")
        .y_desc("z, statistic")
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(draw_err)?;
    let grey = RGBColor(120, 120, 120);
    let red = RGBColor(200, 30, 30);
    let blue = RGBColor(30, 90, 200);
    chart
        .draw_series(points.iter().map(|p| Circle::new((p.part as f64, p.z.clamp(Z_RANGE.0, top)), 2, grey.filled())))
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.part as f64, p.statistic.min(top))),
            blue.stroke_width(2),
        ))
        .map_err(draw_err)?;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(first as f64, threshold), (last as f64, threshold)],
            6,
            4,
            red.stroke_width(1),
        ))
        .map_err(draw_err)?;
    if let Some(a) = alarm {
        chart
            .draw_series(LineSeries::new(vec![(a.part as f64, Z_RANGE.0), (a.part as f64, top)], red.stroke_width(2)))
            .map_err(draw_err)?;
    }
    Ok(())
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panel_per_machine_is_drawn() {
        let point = |machine: &str, part: u64, z: f64, alarm: bool| HistoryPoint {
            time: "2026-12-05T10:00:00Z".into(),
            id: format!("{machine}-{part}"),
            machine: machine.into(),
            fingerprint: "f".into(),
            part,
            distance: 1.0,
            z,
            statistic: (z - 0.5).max(0.0) * part as f64 / 10.0,
            alarm,
        };
        let history: Vec<_> = (1..=40)
            .map(|i| point("A-1", i, 0.1, false))
            .chain((1..=30).map(|i| point("B-2", i, if i > 20 { 4.0 } else { 0.0 }, i == 24)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drift.png");
        write_png(&history, 10.0, &path).unwrap();
        let img = image::open(&path).unwrap();
        // Two machines: two panels side by side.
        assert_eq!((img.width(), img.height()), (PANEL.0 * 2, PANEL.1));
    }
}

//! The envelope as a picture, like Figure 7 of Bimrose et al. (2025): pixel size against sample
//! size on log axes, the model's working region, each process's minimum sample, the camera's
//! line (zooming trades pixel size for view), and common devices for comparison.
//!
//! Drawn with plotters into an RGB buffer and written as PNG with the `png` crate. Text uses the
//! DejaVu Sans font bundled in the binary (`assets/fonts`), so the picture is the same on a
//! headless board without fontconfig or any installed font.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::envelope::{Status, Verdict};
use crate::optics::PROCESS_NEEDS;

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (1200, 800);
/// Axis ranges: sample size (mm) and pixel size (µm).
const SAMPLE_MM: std::ops::Range<f64> = 0.05..100.0;
const PIXEL_UM: std::ops::Range<f64> = 0.3..300.0;

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// A device drawn for comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Device {
    pub name: &'static str,
    /// Pixels across the shorter side of the sensor; `None`: a scanner (any sample at one pixel size).
    pub pixels_across: Option<f64>,
    /// Pixel sizes it reaches, µm (finest, coarsest).
    pub pixel_range_um: (f64, f64),
}

/// The devices of the paper's comparison: a flatbed scanner at 5.3 µm (4800 dpi), a 1280x960
/// USB microscope from about 1 to 20 µm per pixel, and a 12-megapixel phone camera (3000 pixels
/// across) from its closest macro focus (about 10 µm) outwards.
pub const DEVICES: &[Device] = &[
    Device { name: "flatbed scanner (5.3 µm)", pixels_across: None, pixel_range_um: (5.3, 5.3) },
    Device { name: "USB microscope (1280x960)", pixels_across: Some(960.0), pixel_range_um: (1.0, 20.0) },
    Device { name: "phone camera (4000x3000)", pixels_across: Some(3000.0), pixel_range_um: (10.0, 100.0) },
];

/// Why the picture could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot draw the picture: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Draws `verdict` for `model_name` into a PNG at `path`.
pub fn write_png(verdict: &Verdict, model_name: &str, path: &Path) -> Result<(), PlotError> {
    write_rgb_png(&render(verdict, model_name)?, SIZE, path)
}

/// Writes an RGB buffer of `size` as a PNG at `path` (this picture and the drift report's).
pub fn write_rgb_png(rgb: &[u8], size: (u32, u32), path: &Path) -> Result<(), PlotError> {
    let file =
        std::fs::File::create(path).map_err(|source| PlotError::Write { path: path.display().to_string(), source })?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let io =
        |e: png::EncodingError| PlotError::Write { path: path.display().to_string(), source: std::io::Error::other(e) };
    let mut writer = encoder.write_header().map_err(io)?;
    writer.write_image_data(rgb).map_err(io)?;
    writer.finish().map_err(io)
}

/// Makes the bundled font plotters' "sans-serif" (once per process).
pub fn register_font() {
    REGISTER.call_once(|| {
        // The bundled font is valid; a failure would show as missing text, not a crash.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws `verdict` into an RGB buffer of [`SIZE`].
pub fn render(verdict: &Verdict, model_name: &str) -> Result<Vec<u8>, PlotError> {
    register_font();
    let mut rgb = vec![255u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let p = verdict.model_pixel_um;
        let s = verdict.sample_mm;
        let title = format!(
            "{model_name}: {p:.1} µm pixels, {} px ROI = {s:.2} mm sample — camera {}",
            verdict.model_roi_px,
            verdict.status.word()
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(70)
            .build_cartesian_2d(SAMPLE_MM.log_scale(), PIXEL_UM.log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("sample size (ROI side on the part), mm")
            .y_desc("pixel size on the part, µm")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(draw_err)?;

        // The model's working region: samples of at least its ROI, pixels at most its own.
        let green = RGBColor(46, 160, 67);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(s, PIXEL_UM.start), (SAMPLE_MM.end, p)],
                green.mix(0.18).filled(),
            )))
            .map_err(draw_err)?
            .label(format!("the model works here (pixels <= {p:.1} µm, view >= {s:.2} mm)"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], green.mix(0.4).filled()));
        chart.draw_series(std::iter::once(Circle::new((s, p), 7, green.filled()))).map_err(draw_err)?;

        // Each process's minimum sample (and FDM's coarsest pixel).
        let grey = RGBColor(110, 110, 110);
        for needs in PROCESS_NEEDS {
            let x = needs.min_sample_mm;
            let top = needs.max_pixel_um.min(PIXEL_UM.end);
            chart
                .draw_series(DashedLineSeries::new(vec![(x, PIXEL_UM.start), (x, top)], 6, 4, grey.stroke_width(1)))
                .map_err(draw_err)?;
            if needs.max_pixel_um.is_finite() {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(x, top), (SAMPLE_MM.end, top)],
                        6,
                        4,
                        grey.stroke_width(1),
                    ))
                    .map_err(draw_err)?;
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} >= {} mm", needs.process, needs.min_sample_mm),
                    (x * 1.05, PIXEL_UM.start * 1.6 * if needs.process == "SLA" { 1.6 } else { 1.0 }),
                    ("sans-serif", 15).into_font().color(&grey),
                )))
                .map_err(draw_err)?;
        }

        // Devices for comparison.
        let colours = [RGBColor(120, 80, 160), RGBColor(200, 120, 20), RGBColor(30, 120, 180)];
        for (device, colour) in DEVICES.iter().zip(colours) {
            let points = device_line(device);
            let colour = colour.mix(0.8);
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(3)))
                .map_err(draw_err)?
                .label(device.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3)));
        }

        // This camera: its zoom line (pixel = view / pixels across) and where it is now.
        let red = RGBColor(210, 40, 40);
        let across = verdict.camera.pixels()[0].min(verdict.camera.pixels()[1]);
        let line: Vec<(f64, f64)> = log_points(SAMPLE_MM.start, SAMPLE_MM.end)
            .map(|x| (x, x * 1000.0 / across))
            .filter(|&(_, y)| PIXEL_UM.contains(&y))
            .collect();
        chart
            .draw_series(DashedLineSeries::new(line, 10, 6, red.stroke_width(2)))
            .map_err(draw_err)?
            .label(format!("this camera zoomed ({across:.0} px across)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red.stroke_width(2)));
        let here = (verdict.camera.fov_mm[0].min(verdict.camera.fov_mm[1]), verdict.camera.pixel_um);
        let marker = match verdict.status {
            Status::Inside => red.filled(),
            _ => red.stroke_width(3),
        };
        chart
            .draw_series(std::iter::once(Cross::new(here, 10, marker)))
            .map_err(draw_err)?
            .label(format!(
                "this camera: {:.2} µm, view {:.1} x {:.1} mm",
                verdict.camera.pixel_um, verdict.camera.fov_mm[0], verdict.camera.fov_mm[1]
            ))
            .legend(move |(x, y)| Cross::new((x + 9, y), 6, red.stroke_width(3)));

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(rgb)
}

/// A device's line: a scanner's pixel is the same for any sample; a lens camera's pixel grows
/// with the view it is zoomed to.
fn device_line(d: &Device) -> Vec<(f64, f64)> {
    match d.pixels_across {
        None => vec![(SAMPLE_MM.start, d.pixel_range_um.0), (SAMPLE_MM.end, d.pixel_range_um.0)],
        Some(n) => {
            let (lo, hi) = d.pixel_range_um;
            log_points(lo * n / 1000.0, (hi * n / 1000.0).min(SAMPLE_MM.end)).map(|x| (x, x * 1000.0 / n)).collect()
        }
    }
}

/// 50 points evenly spaced on a log axis.
fn log_points(from: f64, to: f64) -> impl Iterator<Item = f64> {
    let (a, b) = (from.ln(), to.ln());
    (0..50).map(move |i| (a + (b - a) * i as f64 / 49.0).exp())
}

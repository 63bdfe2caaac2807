//! Can this camera serve this model? The envelope verdict of `amfp envelope`, before any part
//! is imaged.
//!
//! A camera is described by its pixel size on the part and its field of view; a model by its
//! pixel size and ROI (`optics::ModelGeometry`) and the processes of its labels. The frame-level
//! rules are those of `optics::fit_to_model` and `roi::PartSurface` (pixels at most the model's,
//! a view of at least one ROI and enough ROI areas for the vote), plus each process's minimum
//! sample size (`optics::PROCESS_NEEDS`). Each finding says what to change, in words for the
//! person at the camera. See docs/envelope.md.

use serde::Serialize;

use crate::optics::{self, ModelGeometry, SAME_PIXEL_TOLERANCE};
use crate::reject::trained_at;

/// Within this fraction of a limit a camera is at the edge of the envelope: a small change of
/// focus, working distance or part placement takes it out.
pub const EDGE_MARGIN: f64 = 0.05;

/// What the camera sees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CameraView {
    /// µm per pixel on the part.
    pub pixel_um: f64,
    /// Field of view on the part, mm, `[width, height]`.
    pub fov_mm: [f64; 2],
}

impl CameraView {
    /// Pixels across the view, `[width, height]`.
    pub fn pixels(&self) -> [f64; 2] {
        self.fov_mm.map(|mm| (mm * 1000.0 / self.pixel_um).round())
    }
}

/// Where a camera stands, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every part in view can be judged.
    Inside,
    /// It works, but within [`EDGE_MARGIN`] of a limit (or with little room for the vote).
    Edge,
    /// Frames will be rejected.
    Outside,
}

impl Status {
    /// The word printed for people.
    pub fn word(self) -> &'static str {
        match self {
            Self::Inside => "INSIDE",
            Self::Edge => "AT THE EDGE",
            Self::Outside => "OUTSIDE",
        }
    }
}

/// One reason for a verdict and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable identifier (`pixel_too_coarse`, `pixel_at_limit`, `view_too_small`, ...).
    pub code: &'static str,
    pub status: Status,
    /// What is wrong and the fix.
    pub message: String,
}

/// The verdict on a camera for a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub status: Status,
    pub camera: CameraView,
    pub model_pixel_um: f64,
    pub model_roi_px: u32,
    /// Side of one ROI on the part, mm.
    pub sample_mm: f64,
    /// ROI areas the view holds.
    pub rois_in_view: f64,
    /// Least ROI areas of surface the vote needs (`identify.min_surface_rois`).
    pub min_surface_rois: f64,
    /// Pixel sizes (µm, `[finest, coarsest]`) at which this camera's sensor serves the model,
    /// zooming in or out; `None` when no zoom does.
    pub zoom_range_um: Option<[f64; 2]>,
    pub findings: Vec<Finding>,
}

/// Judges a camera for a model whose labels are of `processes`.
pub fn judge(camera: &CameraView, geom: &ModelGeometry, processes: &[String], min_surface_rois: f64) -> Verdict {
    let mut findings = Vec::new();
    let (x, p) = (camera.pixel_um, geom.pixel_um);
    let s = geom.sample_mm();
    let mut add = |code, status, message: String| findings.push(Finding { code, status, message });
    if x > p * (1.0 + SAME_PIXEL_TOLERANCE) {
        add(
            "pixel_too_coarse",
            Status::Outside,
            format!(
                "the camera's pixel of {x:.2} µm is coarser than the model's {p:.2} µm, so the texture is not resolved: move the camera closer or raise the magnification until a pixel is at most {p:.2} µm, or use a model trained at {} µm",
                trained_at(x)
            ),
        );
    } else if x > p * (1.0 - EDGE_MARGIN) {
        add(
            "pixel_at_limit",
            Status::Edge,
            format!(
                "the camera's pixel of {x:.2} µm is within {:.0} % of the model's {p:.2} µm: a small change of working distance takes it out; move the camera a little closer",
                EDGE_MARGIN * 100.0
            ),
        );
    }
    let [w, h] = camera.fov_mm;
    let rois_in_view = w * h / (s * s);
    if w.min(h) < s {
        add(
            "view_too_small",
            Status::Outside,
            format!(
                "the view of {w:.2} x {h:.2} mm is smaller than the model's sample of {s:.2} mm: zoom out or move the camera farther away"
            ),
        );
    } else if rois_in_view < min_surface_rois {
        add(
            "view_too_little_surface",
            Status::Outside,
            format!(
                "the view holds {rois_in_view:.1} ROI areas of {s:.2} mm, the vote needs at least {min_surface_rois:.1}: zoom out or move the camera farther away"
            ),
        );
    } else if w.min(h) < s * (1.0 + EDGE_MARGIN) || rois_in_view < 2.0 * min_surface_rois {
        add(
            "view_at_limit",
            Status::Edge,
            format!(
                "the view of {w:.2} x {h:.2} mm holds {rois_in_view:.1} ROI areas of {s:.2} mm: a part that does not fill it leaves too little surface for the vote; zoom out a little"
            ),
        );
    }
    // Zooming trades pixel size for view along the camera's line: pixel = view / pixels.
    let [nw, nh] = camera.pixels();
    let finest = (s * 1000.0 / nw.min(nh)).max((min_surface_rois * s * s / (nw * nh)).sqrt() * 1000.0);
    let zoom_range_um = (finest <= p).then_some([finest, p]);
    if zoom_range_um.is_none() {
        add(
            "too_few_pixels",
            Status::Outside,
            format!(
                "at no zoom does this camera's {nw:.0} x {nh:.0} pixels hold {min_surface_rois:.1} ROIs of {} px at {p:.2} µm: use a camera with more pixels or a model with smaller ROIs",
                geom.roi_px
            ),
        );
    }
    let mut seen = Vec::new();
    for process in processes {
        if seen.contains(process) {
            continue;
        }
        seen.push(process.clone());
        if let Err(rejection) = optics::check_process_sample(geom, process) {
            add("sample_too_small", Status::Outside, rejection.to_string());
        }
    }
    let status = findings.iter().map(|f| f.status).max().unwrap_or(Status::Inside);
    Verdict {
        status,
        camera: *camera,
        model_pixel_um: p,
        model_roi_px: geom.roi_px,
        sample_mm: s,
        rois_in_view,
        min_surface_rois,
        zoom_range_um,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: ModelGeometry = ModelGeometry { pixel_um: 10.6, roi_px: 224 };

    fn fdm() -> Vec<String> {
        vec!["FDM".into(), "DLS".into()]
    }

    #[test]
    fn a_microscope_inside_at_the_edge_and_outside() {
        let inside = judge(&CameraView { pixel_um: 3.0, fov_mm: [11.0, 8.0] }, &MODEL, &fdm(), 2.0);
        assert_eq!(inside.status, Status::Inside, "{inside:?}");
        let edge = judge(&CameraView { pixel_um: 10.4, fov_mm: [13.0, 10.0] }, &MODEL, &fdm(), 2.0);
        assert_eq!(edge.status, Status::Edge, "{edge:?}");
        assert_eq!(edge.findings[0].code, "pixel_at_limit");
        let coarse = judge(&CameraView { pixel_um: 20.0, fov_mm: [25.0, 20.0] }, &MODEL, &fdm(), 2.0);
        assert_eq!(coarse.status, Status::Outside);
        assert!(coarse.findings[0].message.contains("move the camera closer"), "{coarse:?}");
        assert!(coarse.findings[0].message.contains("a model trained at 20 µm"), "{coarse:?}");
        let small = judge(&CameraView { pixel_um: 3.0, fov_mm: [1.92, 1.44] }, &MODEL, &fdm(), 2.0);
        assert_eq!(small.findings[0].code, "view_too_small");
        assert!(small.findings[0].message.contains("zoom out"));
        assert!(small.zoom_range_um.is_some(), "a 640x480 sensor serves the model zoomed out");
    }

    #[test]
    fn too_few_pixels_at_any_zoom() {
        let v = judge(&CameraView { pixel_um: 10.0, fov_mm: [2.0, 2.0] }, &MODEL, &[], 2.0);
        assert!(v.findings.iter().any(|f| f.code == "too_few_pixels"), "{v:?}");
        assert_eq!(v.zoom_range_um, None);
    }

    #[test]
    fn process_minimum_sample() {
        let small_rois = ModelGeometry { pixel_um: 3.0, roi_px: 224 }; // 0.67 mm
        let v = judge(&CameraView { pixel_um: 2.0, fov_mm: [4.0, 3.0] }, &small_rois, &["DLS".into()], 2.0);
        assert_eq!(v.status, Status::Inside, "{v:?}");
        let v =
            judge(&CameraView { pixel_um: 2.0, fov_mm: [4.0, 3.0] }, &small_rois, &["DLS".into(), "FDM".into()], 2.0);
        assert_eq!(v.status, Status::Outside);
        assert!(v.findings.iter().any(|f| f.code == "sample_too_small" && f.message.contains("FDM")), "{v:?}");
    }
}

//! Evidence images: each judged frame saved as a JPEG with the ROIs that voted drawn on it, so
//! that an inspector or an auditor can see what the verdict rests on.
//!
//! Files are `<state_dir>/evidence/<attribution id>.jpg`; the Attribution's `evidence` field
//! holds the path relative to the state directory. The directory is capped in bytes: beyond the
//! cap the oldest images (ULIDs sort by time) are deleted.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use image::{GrayImage, Rgb, RgbImage};

use crate::capture::Frame;

/// Subdirectory of the state directory holding evidence.
pub const EVIDENCE_DIR: &str = "evidence";
/// Colour of the ROI outlines.
const ROI_COLOUR: Rgb<u8> = Rgb([40, 220, 60]);

/// An ROI as drawn: its top-left corner and side in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiBox {
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

/// The capped evidence directory.
#[derive(Debug)]
pub struct EvidenceStore {
    state_dir: PathBuf,
    max_bytes: u64,
    quality: u8,
    /// Files kept, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
    total: u64,
}

impl EvidenceStore {
    /// Opens (creating) `<state_dir>/evidence` and accounts for the images already there.
    pub fn open(state_dir: &Path, max_bytes: u64, quality: u8) -> std::io::Result<Self> {
        let dir = state_dir.join(EVIDENCE_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(&dir)?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "jpg"))
            .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
            .collect();
        files.sort();
        let total = files.iter().map(|(_, n)| n).sum();
        Ok(Self { state_dir: state_dir.to_path_buf(), max_bytes, quality, files: files.into(), total })
    }

    /// Saves `frame` with `rois` drawn as `evidence/<id>.jpg`, deletes the oldest images beyond
    /// the cap, and returns the path relative to the state directory.
    pub fn save(&mut self, id: &str, frame: &Frame, rois: &[RoiBox]) -> std::io::Result<String> {
        let jpeg = render(frame, rois, self.quality)?;
        let relative = format!("{EVIDENCE_DIR}/{id}.jpg");
        let path = self.state_dir.join(&relative);
        let partial = path.with_extension("jpg.partial");
        std::fs::write(&partial, &jpeg)?;
        std::fs::rename(&partial, &path)?;
        self.files.push_back((path, jpeg.len() as u64));
        self.total += jpeg.len() as u64;
        while self.total > self.max_bytes && self.files.len() > 1 {
            let (old, n) = self.files.pop_front().expect("more than one file");
            if let Err(e) = std::fs::remove_file(&old)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                log::warn!("evidence: cannot delete {}: {e}", old.display());
            }
            self.total -= n;
        }
        Ok(relative)
    }

    /// Bytes of evidence kept.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }
}

/// The frame as an 8-bit colour JPEG with the ROI outlines (2 px wide) drawn in.
pub fn render(frame: &Frame, rois: &[RoiBox], quality: u8) -> std::io::Result<Vec<u8>> {
    let gray: Vec<u8> = frame.pixels.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let gray = GrayImage::from_raw(frame.width, frame.height, gray)
        .ok_or_else(|| std::io::Error::other("frame size does not match its pixels"))?;
    let mut rgb: RgbImage = image::DynamicImage::ImageLuma8(gray).into_rgb8();
    for r in rois {
        for t in 0..2 {
            outline(&mut rgb, r.x + t, r.y + t, r.side.saturating_sub(2 * t));
        }
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&rgb)
        .map_err(std::io::Error::other)?;
    Ok(out)
}

/// One square outline, clipped to the image.
fn outline(img: &mut RgbImage, x: u32, y: u32, side: u32) {
    let (w, h) = img.dimensions();
    if side == 0 || x >= w || y >= h {
        return;
    }
    let (x1, y1) = ((x + side - 1).min(w - 1), (y + side - 1).min(h - 1));
    for i in x..=x1 {
        img.put_pixel(i, y, ROI_COLOUR);
        img.put_pixel(i, y1, ROI_COLOUR);
    }
    for j in y..=y1 {
        img.put_pixel(x, j, ROI_COLOUR);
        img.put_pixel(x1, j, ROI_COLOUR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame { width: 200, height: 100, pixels: vec![0.5; 200 * 100], pixel_um: None, bit_depth: 8 }
    }

    #[test]
    fn rois_are_drawn_where_they_voted() {
        let jpeg = render(&frame(), &[RoiBox { x: 10, y: 20, side: 50 }], 95).unwrap();
        let img = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        let green = |x, y| {
            let p = img.get_pixel(x, y).0;
            p[1] > 150 && p[0] < 120
        };
        assert!(green(10, 40) && green(59, 40) && green(30, 20) && green(30, 69));
        assert!(!green(35, 45), "inside the ROI the frame shows through");
        assert!(!green(150, 50), "outside every ROI");
    }

    #[test]
    fn the_oldest_images_go_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let one = render(&frame(), &[], 85).unwrap().len() as u64;
        let mut store = EvidenceStore::open(dir.path(), 3 * one, 85).unwrap();
        for id in ["01A", "01B", "01C", "01D", "01E"] {
            store.save(id, &frame(), &[]).unwrap();
        }
        let mut kept: Vec<String> = std::fs::read_dir(dir.path().join(EVIDENCE_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["01C.jpg", "01D.jpg", "01E.jpg"]);
        // A restart accounts for what is there.
        let store = EvidenceStore::open(dir.path(), 3 * one, 85).unwrap();
        assert_eq!(store.total_bytes(), 3 * one);
    }
}

//! `amfp calibrate`: simulated images of line gratings and grids of known pitch at several
//! periods, angles, line widths, blurs and noise levels (fixed seeds) give µm per pixel within
//! 1 %, with an uncertainty that covers the error; the CLI writes the result into a
//! configuration file and keeps what else is there; images without a grating are refused.

mod common;

use std::f64::consts::PI;

use amfp::calibrate::{Pattern, calibrate};
use amfp::capture::Frame;

/// A small seeded generator (xorshift64*) with Gaussian draws: the test's noise.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn gauss(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (2.0 * PI * self.uniform()).cos()
    }
}

/// A grating's simulated image.
struct Target {
    period_px: f64,
    angle_deg: f64,
    /// Fraction of a period that is dark line.
    duty: f64,
    grid: bool,
    blur_px: f64,
    noise: f64,
    seed: u64,
}

impl Target {
    fn render(&self, w: u32, h: u32) -> Frame {
        let (s, c) = self.angle_deg.to_radians().sin_cos();
        let line = |u: f64| -> f64 { if (u / self.period_px).rem_euclid(1.0) < self.duty { 1.0 } else { 0.0 } };
        // 4x4 supersampling: a camera pixel integrates the light on it.
        let mut img = vec![0.0f64; (w * h) as usize];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for sy in 0..4 {
                    for sx in 0..4 {
                        let (px, py) = (x as f64 + (sx as f64 + 0.5) / 4.0, y as f64 + (sy as f64 + 0.5) / 4.0);
                        let (u, v) = (px * c + py * s, -px * s + py * c);
                        let dark = if self.grid { line(u).max(line(v)) } else { line(u) };
                        acc += 0.85 - 0.6 * dark;
                    }
                }
                img[(y * w + x) as usize] = acc / 16.0;
            }
        }
        if self.blur_px > 0.0 {
            img = blur(&img, w as usize, h as usize, self.blur_px);
        }
        let mut rng = Rng(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let pixels = img
            .iter()
            .map(|&v| ((v + self.noise * rng.gauss()).clamp(0.0, 1.0) * 255.0).round() as f32 / 255.0)
            .collect();
        Frame { width: w, height: h, pixels, pixel_um: None, bit_depth: 8 }
    }
}

/// Separable Gaussian blur (the lens), edges clamped.
fn blur(img: &[f64], w: usize, h: usize, sigma: f64) -> Vec<f64> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f64> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f64 = k.iter().sum();
    let pass = |src: &[f64], horizontal: bool| -> Vec<f64> {
        let mut out = vec![0.0; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let d = j as isize - r;
                    let (xx, yy) = if horizontal {
                        ((x as isize + d).clamp(0, w as isize - 1) as usize, y)
                    } else {
                        (x, (y as isize + d).clamp(0, h as isize - 1) as usize)
                    };
                    acc += kv * src[yy * w + xx];
                }
                out[y * w + x] = acc / sum;
            }
        }
        out
    };
    pass(&pass(img, true), false)
}

#[test]
fn recovers_simulated_gratings_within_one_percent() {
    let periods = [4.7, 8.0, 13.7, 24.9, 41.3];
    let angles = [0.0, 7.0, 30.0, 45.0, 90.0, 133.0];
    let mut worst: f64 = 0.0;
    let mut case = 0u64;
    for (i, &period_px) in periods.iter().enumerate() {
        for (j, &angle_deg) in angles.iter().enumerate() {
            case += 1;
            // Line width, blur, noise and grid-or-lines vary across the cases.
            let t = Target {
                period_px,
                angle_deg,
                duty: [0.5, 0.2, 0.35][(i + j) % 3],
                grid: (i + j) % 4 == 1,
                blur_px: [0.0f64, 0.8, 1.5][(i * 2 + j) % 3].min(period_px / 5.0),
                noise: [0.01, 0.05, 0.12][(i + 2 * j) % 3],
                seed: 20261121 + case,
            };
            let pitch_um = 10.0;
            let truth = pitch_um / period_px;
            let c = calibrate(&t.render(480, 360), pitch_um)
                .unwrap_or_else(|e| panic!("period {period_px} px at {angle_deg}°: {e}"));
            let err = c.um_per_px / truth - 1.0;
            worst = worst.max(err.abs());
            assert!(
                err.abs() < 0.01,
                "period {period_px} px at {angle_deg}° (duty {}, grid {}, blur {}, noise {}): {:.4} µm/px vs {truth:.4} ({:+.2} %)",
                t.duty,
                t.grid,
                t.blur_px,
                t.noise,
                c.um_per_px,
                100.0 * err
            );
            assert_eq!(c.pattern == Pattern::Grid, t.grid, "period {period_px} at {angle_deg}°: {c:?}");
            // The uncertainty is honest: the error is within a few of it (or tiny anyway).
            assert!(err.abs() < 4.0 * c.relative_uncertainty() + 1e-3, "{err} vs u {}", c.relative_uncertainty());
            let a = c.axes[0].angle_deg;
            let d = (a - angle_deg).rem_euclid(90.0);
            assert!(d.min(90.0 - d) < 1.0, "direction {a}° for lines at {angle_deg}°");
        }
    }
    println!("30 gratings: worst error {:.3} %", 100.0 * worst);
}

#[test]
fn cli_writes_the_pixel_size_into_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("micrometer.png");
    let frame = Target { period_px: 12.34, angle_deg: 3.0, duty: 0.3, grid: false, blur_px: 1.0, noise: 0.03, seed: 7 }
        .render(640, 480);
    let bytes: Vec<u8> = frame.pixels.iter().map(|&v| (v * 255.0).round() as u8).collect();
    image::GrayImage::from_raw(640, 480, bytes).unwrap().save(&img).unwrap();
    let config = dir.path().join("amfp.toml");
    std::fs::write(&config, "# the dock's camera\n[identify]\nseed = 3\n\n[camera]\nmask = \"full\" # a microscope\n")
        .unwrap();

    let out = common::amfp()
        .args(["calibrate", "--pitch-um", "50", "--write-config"])
        .arg(&config)
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("lines of 50 µm pitch, period 12.3"), "{text}");

    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.starts_with("# the dock's camera\n[identify]\nseed = 3\n"), "{written}");
    assert!(written.contains("mask = \"full\" # a microscope"), "{written}");
    let settings: toml::Value = toml::from_str(&written).unwrap();
    let um = settings["camera"]["pixel_um"].as_float().unwrap();
    assert!((um / (50.0 / 12.34) - 1.0).abs() < 0.01, "{um}");
    common::amfp_clean_env().args(["config", "check", "--config"]).arg(&config).assert().success();

    // Written again: replaced, not duplicated; a new file is created.
    common::amfp()
        .args(["calibrate", "--pitch-um", "50", "--json", "--write-config"])
        .arg(&config)
        .arg(&img)
        .assert()
        .success();
    assert_eq!(std::fs::read_to_string(&config).unwrap().matches("pixel_um").count(), 1);
    let fresh = dir.path().join("new.toml");
    common::amfp().args(["calibrate", "--pitch-um", "50", "--write-config"]).arg(&fresh).arg(&img).assert().success();
    assert!(std::fs::read_to_string(&fresh).unwrap().contains("[camera]\npixel_um = 4.05"));
}

#[test]
fn cli_refuses_images_without_a_grating_and_bad_pitches() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("blank.png");
    let mut rng = Rng(99);
    let noise: Vec<u8> = (0..256 * 256).map(|_| (128.0 + 20.0 * rng.gauss()) as u8).collect();
    image::GrayImage::from_raw(256, 256, noise).unwrap().save(&img).unwrap();
    let out = common::amfp().args(["calibrate", "--pitch-um", "10"]).arg(&img).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no grating found") && err.contains("focus on the target"), "{err}");
    let out = common::amfp().args(["calibrate", "--pitch-um", "-3"]).arg(&img).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

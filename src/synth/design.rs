//! Part designs: the outline and holes of each part, as signed distance functions in mm.
//!
//! Like the paper's connector, plug and lattice, the designs give the foreground-finding and
//! ROI sampling realistic shapes: holes, thin struts, curved and straight edges.

use serde::{Deserialize, Serialize};

/// The designs a part can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Design {
    /// A rounded bar with two bolt holes and a slot.
    Connector,
    /// A D-shaped disc with a central bore.
    Plug,
    /// A square frame with a 3x3 grid of square windows.
    Lattice,
}

impl Design {
    /// All designs, in a fixed order.
    pub const ALL: [Design; 3] = [Design::Connector, Design::Plug, Design::Lattice];

    /// The name written in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Design::Connector => "connector",
            Design::Plug => "plug",
            Design::Lattice => "lattice",
        }
    }

    /// Half width and half height of the bounding box, mm.
    pub fn half_extent(self) -> (f64, f64) {
        match self {
            Design::Connector => (7.5, 4.5),
            Design::Plug => (6.0, 6.0),
            Design::Lattice => (6.0, 6.0),
        }
    }

    /// Signed distance (mm) from the point to the part's boundary: negative inside material.
    pub fn sdf(self, x: f64, y: f64) -> f64 {
        match self {
            Design::Connector => {
                let body = rounded_box(x, y, 7.5, 4.5, 1.5);
                let holes = circle(x - 4.6, y, 1.5).min(circle(x + 4.6, y, 1.5));
                let slot = rounded_box(x, y, 1.6, 0.6, 0.6);
                body.max(-holes).max(-slot)
            }
            Design::Plug => {
                let disc = circle(x, y, 6.0);
                let flat = y - 4.6;
                let bore = circle(x, y, 2.0);
                disc.max(flat).max(-bore)
            }
            Design::Lattice => {
                let frame = rounded_box(x, y, 6.0, 6.0, 0.8);
                let mut windows = f64::INFINITY;
                for i in -1..=1 {
                    for j in -1..=1 {
                        let (cx, cy) = (f64::from(i) * 3.7, f64::from(j) * 3.7);
                        windows = windows.min(rounded_box(x - cx, y - cy, 1.2, 1.2, 0.3));
                    }
                }
                frame.max(-windows)
            }
        }
    }
}

fn circle(x: f64, y: f64, r: f64) -> f64 {
    (x * x + y * y).sqrt() - r
}

/// Signed distance to a box of half-size (hx, hy) with corner radius r.
fn rounded_box(x: f64, y: f64, hx: f64, hy: f64, r: f64) -> f64 {
    let qx = x.abs() - hx + r;
    let qy = y.abs() - hy + r;
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0) - r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn designs_have_material_and_holes_inside_their_box() {
        for d in Design::ALL {
            let (hx, hy) = d.half_extent();
            let (mut inside, mut total) = (0, 0);
            for i in 0..200 {
                for j in 0..200 {
                    let x = (f64::from(i) / 199.0 - 0.5) * 2.0 * hx;
                    let y = (f64::from(j) / 199.0 - 0.5) * 2.0 * hy;
                    total += 1;
                    inside += usize::from(d.sdf(x, y) < 0.0);
                }
            }
            let fill = inside as f64 / total as f64;
            assert!((0.4..0.95).contains(&fill), "{d:?} fills {fill}");
            assert!(d.sdf(hx + 0.5, 0.0) > 0.0 && d.sdf(0.0, hy + 0.5) > 0.0, "{d:?} ends at its box");
        }
        assert!(Design::Plug.sdf(0.0, 0.0) > 0.0, "the plug has a bore");
        assert!(Design::Lattice.sdf(0.0, 0.0) > 0.0, "the lattice has windows");
        assert!(Design::Connector.sdf(4.6, 0.0) > 0.0, "the connector has bolt holes");
    }
}

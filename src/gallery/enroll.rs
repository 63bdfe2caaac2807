//! Enrollment: a new machine's fingerprint from embeddings of its parts, without retraining
//! (docs/gallery.md, "Enrollment").
//!
//! The fingerprint is the mean of the parts' embeddings under the gallery's existing whitening.
//! Before it is taken, each part is compared with the mean of the others (leave one out), under
//! the same two tests that name a part (relative and plain distance, with the small-N offset),
//! and parts that would not be named as this machine by the rest of its parts are refused with
//! the reason. The result also says how near the new machine sits to the gallery's others.

use super::{DriftReference, Gallery, mat_vec, sq_dist};

/// Fewest parts an enrollment takes: the leave-one-out test needs two others per part.
pub const MIN_PARTS: usize = 3;
/// Parts recommended (the pilot: ten parts from at least two builds looked like the floor).
pub const RECOMMENDED_PARTS: usize = 10;
/// Default largest estimated confusion with another machine that an enrollment accepts
/// (`amfp enroll --max-confusion`): beyond it the new machine would take the other's parts.
pub const MAX_CONFUSION: f64 = 0.01;
/// Largest share of the parts that may be refused before the whole enrollment is: beyond it the
/// parts do not agree with each other, so no fingerprint can be trusted.
pub const MAX_REFUSED_SHARE: f64 = 1.0 / 3.0;

/// One part to enroll: where it came from and its mean embedding.
#[derive(Debug, Clone)]
pub struct PartEmbedding {
    pub source: String,
    pub embedding: Vec<f32>,
}

/// A part left out of the fingerprint, and why (serialised as the `enrollment` events list it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Refused {
    pub source: String,
    pub reason: String,
}

/// The new fingerprint and what was found on the way.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The mean embedding of the parts taken.
    pub mean: Vec<f32>,
    /// Parts taken.
    pub parts: usize,
    pub refused: Vec<Refused>,
    /// The small-N offset `s² (1/n - 1/n_ref)`, at least 0.
    pub offset: f64,
    /// Drift monitoring's reference (docs/drift.md): the log distances the parts taken would
    /// have as fresh parts, from their leave-one-out distances; the spread of the gallery's
    /// fitted machines when they have one (a handful of parts measures it poorly).
    pub drift: Option<DriftReference>,
    /// `s²`: the parts' mean squared whitened distance from their own mean.
    pub spread: f64,
    /// `n_ref`: the parts behind the gallery's fitted fingerprints (median).
    pub reference_parts: usize,
    /// The other machine whose fingerprint is nearest to the new one, and the squared whitened
    /// distance between the two fingerprints.
    pub nearest: Option<(String, f64)>,
    /// Taken parts that the gallery, before this enrollment, would have named as another
    /// machine: `(their machine, count)`.
    pub named_before: Vec<(String, usize)>,
    /// Taken parts nearer to another machine than to the mean of the other taken parts.
    pub nearer_to_other: Vec<(String, usize)>,
    /// The other machine this one is most likely confused with, and the estimated share of
    /// either machine's parts named as the other (see [`confusion`]).
    pub confusion: Option<(String, f64)>,
    /// What a person should know (few parts, machines that cannot be told apart).
    pub warnings: Vec<String>,
}

/// Why no fingerprint could be made.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "{label}: {parts} usable part(s); enrollment needs at least {MIN_PARTS} ({RECOMMENDED_PARTS} or more from at least two builds recommended)"
    )]
    TooFewParts { label: String, parts: usize },
    #[error(
        "{label}: {refused} of {parts} parts are far from the rest, so the parts do not agree with each other; check \
         that they all come from {label} and were imaged as the station images parts:\n  - {}",
        .reasons.join("\n  - ")
    )]
    Inconsistent { label: String, parts: usize, refused: usize, reasons: Vec<String> },
    #[error(
        "{label} cannot be told apart from {other} by this model: their fingerprints are {distance:.1} apart, and \
         about {:.1} % of either machine's parts would be named as the other (limit {:.1} %); enrolling it would \
         cost {other} its parts. Check that the parts are {label}'s; a model trained with both machines can \
         separate them; --max-confusion 1 enrolls it anyway",
        100.0 * .confusion, 100.0 * .limit
    )]
    Indistinguishable { label: String, other: String, distance: f64, confusion: f64, limit: f64 },
    #[error("a part embedding has {got} values, but the gallery's embedding has {want}")]
    Dimension { got: usize, want: usize },
    /// The request does not fit the gallery (a label it has, a re-enrollment without a reason).
    #[error("{0}")]
    Request(String),
    /// The new version could not be checked or written.
    #[error(transparent)]
    Gallery(#[from] super::GalleryError),
}

impl Gallery {
    /// The fingerprint of machine `label` from `parts`. `replacing` is the index of the machine
    /// being re-enrolled (left out of the comparisons with other machines). Refuses a machine whose estimated confusion
    /// with another exceeds `max_confusion`.
    pub fn enroll(
        &self,
        label: &str,
        parts: &[PartEmbedding],
        replacing: Option<usize>,
        max_confusion: f64,
    ) -> Result<Enrollment, EnrollError> {
        let dim = self.dim;
        if let Some(p) = parts.iter().find(|p| p.embedding.len() != dim) {
            return Err(EnrollError::Dimension { got: p.embedding.len(), want: dim });
        }
        if parts.len() < MIN_PARTS {
            return Err(EnrollError::TooFewParts { label: label.into(), parts: parts.len() });
        }
        let raw: Vec<Vec<f64>> = parts.iter().map(|p| p.embedding.iter().map(|&v| v as f64).collect()).collect();
        let white: Vec<Vec<f64>> = raw.iter().map(|e| mat_vec(&self.whitening, e, dim)).collect();
        let d0: Vec<f64> =
            raw.iter().map(|e| sq_dist(&mat_vec(&self.global_whitening, e, dim), &self.whitened_global_mean)).collect();
        let reference_parts = self.reference_parts(replacing);
        let others: Vec<usize> = (0..self.machines.len()).filter(|&k| Some(k) != replacing).collect();

        // Leave one out: each part against the mean of the others, with the offset of n - 1 parts.
        let n = parts.len();
        let loo: Vec<f64> = (0..n).map(|i| sq_dist(&white[i], &mean_of(&white, Some(i)))).collect();
        // A squared distance to a mean of n - 1 others overshoots one to the true mean by 1/(n-1):
        // the median, so that one stray part does not widen the yardstick it is measured with.
        let spread_loo = median(&loo) * (n as f64 - 1.0) / n as f64;
        let offset_loo = small_n_offset(spread_loo, n - 1, reference_parts);
        let mut refused = Vec::new();
        let mut taken = Vec::new();
        for i in 0..n {
            let d = loo[i] - offset_loo;
            let r = d - d0[i];
            let reason = if d > self.outlier_threshold {
                Some(format!(
                    "far from the other parts (distance {d:.1} to their mean, beyond the outlier threshold {:.1}): \
                     another machine's part, a damaged surface or an image taken another way",
                    self.outlier_threshold
                ))
            } else if r > self.threshold {
                Some(format!(
                    "not near enough to the other parts (distance {r:.1} to their mean, beyond the threshold {:.1}): \
                     the rest of the parts would not name it as this machine",
                    self.threshold
                ))
            } else {
                None
            };
            match reason {
                Some(reason) => refused.push(Refused { source: parts[i].source.clone(), reason }),
                None => taken.push(i),
            }
        }
        if refused.len() as f64 > MAX_REFUSED_SHARE * n as f64 {
            return Err(EnrollError::Inconsistent {
                label: label.into(),
                parts: n,
                refused: refused.len(),
                reasons: refused.iter().map(|r| format!("{}: {}", r.source, r.reason)).collect(),
            });
        }
        if taken.len() < MIN_PARTS {
            return Err(EnrollError::TooFewParts { label: label.into(), parts: taken.len() });
        }

        let kept: Vec<Vec<f64>> = taken.iter().map(|&i| white[i].clone()).collect();
        let wmean = mean_of(&kept, None);
        let m = kept.len();
        let spread = kept.iter().map(|w| sq_dist(w, &wmean)).sum::<f64>() / (m as f64 - 1.0);
        let offset = small_n_offset(spread, m, reference_parts);
        let drift = self.drift_reference(&kept, spread, offset, replacing);
        let raw_mean = mean_of(&taken.iter().map(|&i| raw[i].clone()).collect::<Vec<_>>(), None);

        let nearest = others
            .iter()
            .map(|&k| (k, sq_dist(&wmean, &self.whitened_means[k])))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, d)| (self.machines[k].label.clone(), d));
        // What the gallery said of these parts before, and whether another machine beats the rest
        // of the parts.
        let mut named_before = Vec::new();
        let mut nearer_to_other = Vec::new();
        for &i in &taken {
            let Some((k, dk)) =
                others.iter().map(|&k| (k, self.distance_to(k, &white[i]))).min_by(|a, b| a.1.total_cmp(&b.1))
            else {
                continue;
            };
            if dk <= self.outlier_threshold && dk - d0[i] <= self.threshold {
                bump(&mut named_before, &self.machines[k].label);
            }
            if dk < loo[i] - offset_loo {
                bump(&mut nearer_to_other, &self.machines[k].label);
            }
        }
        let confusion = others
            .iter()
            .map(|&k| (k, confusion(&kept, &wmean, &self.whitened_means[k])))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, c)| (self.machines[k].label.clone(), c));
        if let Some((other, c)) = &confusion
            && *c > max_confusion
        {
            let k = self.machines.iter().position(|x| &x.label == other).expect("a machine of the gallery");
            return Err(EnrollError::Indistinguishable {
                label: label.into(),
                other: other.clone(),
                distance: sq_dist(&wmean, &self.whitened_means[k]),
                confusion: *c,
                limit: max_confusion,
            });
        }
        let mut warnings = Vec::new();
        if m < RECOMMENDED_PARTS {
            warnings.push(format!(
                "{label} is enrolled from {m} parts; {RECOMMENDED_PARTS} or more, from at least two builds, are \
                 recommended: until then its offset ({offset:.1}) widens its fingerprint"
            ));
        }
        let apart = |other: &str| {
            let k = self.machines.iter().position(|x| x.label == other).expect("a machine of the gallery");
            sq_dist(&wmean, &self.whitened_means[k])
        };
        for (other, count) in &named_before {
            warnings.push(format!(
                "{count} of {m} parts of {label} would have been named {other} before this enrollment: the two machines \
                 may not be told apart (fingerprints {:.1} apart); parts of either may be named as the other",
                apart(other)
            ));
        }
        for (other, count) in &nearer_to_other {
            warnings.push(format!(
                "{count} of {m} parts of {label} are nearer to {other} than to the rest of its parts: the two machines \
                 may not be told apart (fingerprints {:.1} apart)",
                apart(other)
            ));
        }
        Ok(Enrollment {
            mean: raw_mean.iter().map(|&v| v as f32).collect(),
            parts: m,
            refused,
            offset,
            drift,
            spread,
            reference_parts,
            nearest,
            named_before,
            nearer_to_other,
            confusion,
            warnings,
        })
    }

    /// The drift reference of a machine made from the whitened parts `kept` (see
    /// [`Enrollment::drift`]): a leave-one-out distance overshoots a fresh part's by
    /// `s²/(m-1) - s²/m + offset` (the mean of m - 1 parts instead of m, and amfp subtracts the
    /// offset from a fresh part's distance).
    fn drift_reference(
        &self,
        kept: &[Vec<f64>],
        spread: f64,
        offset: f64,
        replacing: Option<usize>,
    ) -> Option<DriftReference> {
        let m = kept.len() as f64;
        let excess = spread / (m - 1.0) - spread / m + offset;
        let logs: Vec<f64> = (0..kept.len())
            .map(|i| sq_dist(&kept[i], &mean_of(kept, Some(i))) - excess)
            .filter(|&d| d > 0.0)
            .map(f64::ln)
            .collect();
        if logs.len() < MIN_PARTS {
            return None;
        }
        let n = logs.len() as f64;
        let mean_log = logs.iter().sum::<f64>() / n;
        let own_sd = (logs.iter().map(|v| (v - mean_log).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let fitted: Vec<f64> = (0..self.machines.len())
            .filter(|&k| Some(k) != replacing && self.machines[k].offset == 0.0)
            .filter_map(|k| self.machines[k].drift.map(|r| r.sd_log))
            .collect();
        let sd_log = if fitted.is_empty() { own_sd } else { median(&fitted) };
        (sd_log.is_finite() && sd_log > 0.0).then_some(DriftReference { parts: logs.len() as u32, mean_log, sd_log })
    }

    /// The median number of parts behind the gallery's fitted fingerprints (offset 0), or all.
    fn reference_parts(&self, skip: Option<usize>) -> usize {
        let pick = |fitted: bool| -> Vec<f64> {
            (0..self.machines.len())
                .filter(|&k| Some(k) != skip && (!fitted || self.machines[k].offset == 0.0))
                .map(|k| self.machines[k].parts as f64)
                .collect()
        };
        let fitted = pick(true);
        let counts = if fitted.is_empty() { pick(false) } else { fitted };
        if counts.is_empty() { RECOMMENDED_PARTS } else { median(&counts).round() as usize }
    }
}

/// The estimated share of parts two machines would swap: the new machine's whitened parts
/// `rows` (mean `mean`) projected on the line to the other machine's whitened mean `other`, with
/// the spread `σ` along it estimated from those parts and taken as both machines' own, give
/// `Φ(-Δ / 2σ)` for the nearest-mean rule, `Δ` the distance between the two means.
pub fn confusion(rows: &[Vec<f64>], mean: &[f64], other: &[f64]) -> f64 {
    let u: Vec<f64> = mean.iter().zip(other).map(|(a, b)| a - b).collect();
    let delta = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    if delta == 0.0 {
        return 0.5;
    }
    let var = rows
        .iter()
        .map(|r| (r.iter().zip(mean).zip(&u).map(|((x, m), u)| (x - m) * u).sum::<f64>() / delta).powi(2))
        .sum::<f64>()
        / (rows.len() as f64 - 1.0).max(1.0);
    if var == 0.0 {
        return 0.0;
    }
    normal_cdf(-delta / (2.0 * var.sqrt()))
}

/// The standard normal distribution function (Abramowitz and Stegun 7.1.26, error < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-z * z).exp();
    if x >= 0.0 { 1.0 - 0.5 * erfc } else { 0.5 * erfc }
}

/// The small-N offset: how much farther, in squared whitened distance, a fresh part lies from a
/// mean of `n` parts than from one of `reference` parts, `s² (1/n - 1/reference)`; never below 0.
pub fn small_n_offset(spread: f64, n: usize, reference: usize) -> f64 {
    (spread * (1.0 / n as f64 - 1.0 / reference.max(1) as f64)).max(0.0)
}

fn bump(counts: &mut Vec<(String, usize)>, label: &str) {
    match counts.iter_mut().find(|(l, _)| l == label) {
        Some((_, c)) => *c += 1,
        None => counts.push((label.to_string(), 1)),
    }
}

fn mean_of(rows: &[Vec<f64>], skip: Option<usize>) -> Vec<f64> {
    let mut sum = vec![0.0; rows[0].len()];
    let mut n = 0.0;
    for (i, r) in rows.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        n += 1.0;
        sum.iter_mut().zip(r).for_each(|(s, v)| *s += v);
    }
    sum.iter().map(|s| s / n).collect()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{file, load};
    use super::*;

    fn part(i: usize, x: f32, y: f32) -> PartEmbedding {
        PartEmbedding { source: format!("p{i}.png"), embedding: vec![x, y] }
    }

    /// Ten parts around (0, 5) with unit spread: a machine of its own between A-1 (0, 0) and
    /// B-1 (10, 0); one stray part from near A-1 is refused, by name.
    #[test]
    fn a_new_machine_is_the_mean_of_its_consistent_parts_and_a_stray_part_is_refused() {
        let g = load(&file()).unwrap();
        let mut parts: Vec<PartEmbedding> =
            (0..10).map(|i| part(i, 0.3 * ((i % 3) as f32 - 1.0), 5.0 + 0.3 * ((i % 2) as f32 - 0.5))).collect();
        parts.push(part(99, 0.0, -6.0));
        let e = g.enroll("C-1", &parts, None, MAX_CONFUSION).unwrap();
        assert_eq!(e.parts, 10);
        assert_eq!(e.refused.len(), 1, "{:?}", e.refused);
        assert_eq!(e.refused[0].source, "p99.png");
        assert!(e.refused[0].reason.contains("far from the other parts"), "{}", e.refused[0].reason);
        assert!((e.mean[1] - 5.0).abs() < 0.1, "{:?}", e.mean);
        // With n = 10 < n_ref = 20 the offset is s² (1/10 - 1/20) > 0.
        assert_eq!(e.reference_parts, 20);
        assert!((e.offset - e.spread * 0.05).abs() < 1e-9 && e.offset > 0.0, "{e:?}");
        assert_eq!(e.nearest.as_ref().unwrap().0, "A-1");
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
        // The drift reference: the parts' own log distances, with their own spread (the test
        // gallery's machines have no reference to borrow one from).
        let r = e.drift.expect("a drift reference");
        assert_eq!(r.parts, 10);
        assert!(r.sd_log > 0.0 && r.mean_log.is_finite(), "{r:?}");
        // With a fitted machine's reference in the gallery, its spread is used.
        let mut with_ref = file();
        with_ref["machines"][0]["drift"] = serde_json::json!({"parts": 40, "mean_log": 0.5, "sd_log": 0.25});
        let e2 = load(&with_ref).unwrap().enroll("C-1", &parts, None, MAX_CONFUSION).unwrap();
        let r2 = e2.drift.unwrap();
        assert_eq!((r2.sd_log, r2.mean_log), (0.25, r.mean_log));
    }

    #[test]
    fn parts_that_disagree_or_are_too_few_refuse_the_enrollment() {
        let g = load(&file()).unwrap();
        let two = [part(0, 0.0, 5.0), part(1, 0.1, 5.0)];
        assert!(matches!(g.enroll("C-1", &two, None, MAX_CONFUSION), Err(EnrollError::TooFewParts { parts: 2, .. })));
        // Half the parts near (0, 5), half near (0, -5): no fingerprint fits both.
        let mixed: Vec<PartEmbedding> =
            (0..8).map(|i| part(i, 0.1 * (i % 2) as f32, if i < 4 { 5.0 } else { -5.0 })).collect();
        let e = g.enroll("C-1", &mixed, None, MAX_CONFUSION).unwrap_err();
        assert!(matches!(e, EnrollError::Inconsistent { .. }), "{e}");
        assert!(e.to_string().contains("do not agree"), "{e}");
        let e = g.enroll(
            "C-1",
            &[part(0, 1.0, 1.0), part(1, 1.0, 1.0), PartEmbedding { source: "x".into(), embedding: vec![1.0] }],
            None,
            MAX_CONFUSION,
        );
        assert!(matches!(e, Err(EnrollError::Dimension { got: 1, want: 2 })));
    }

    /// Parts that sit on an existing machine's fingerprint are enrolled, with the warning that
    /// the two cannot be told apart.
    #[test]
    fn a_machine_indistinguishable_from_a_known_one_is_enrolled_with_a_warning() {
        let g = load(&file()).unwrap();
        let parts: Vec<PartEmbedding> =
            (0..10).map(|i| part(i, 0.2 * ((i % 3) as f32 - 1.0), 0.1 * (i % 2) as f32)).collect();
        let e = g.enroll("A-2", &parts, None, MAX_CONFUSION).unwrap_err();
        assert!(matches!(&e, EnrollError::Indistinguishable { other, .. } if other == "A-1"), "{e}");
        assert!(e.to_string().contains("cannot be told apart from A-1"), "{e}");
        // Asked to enroll it anyway, it says so in its warnings.
        let e = g.enroll("A-2", &parts, None, 1.0).unwrap();
        assert!(e.confusion.as_ref().is_some_and(|(l, c)| l == "A-1" && *c > 0.3), "{:?}", e.confusion);
        assert_eq!(e.named_before, [("A-1".to_string(), 10)]);
        assert!(
            e.warnings.iter().any(|w| w.contains("A-1") && w.contains("may not be told apart")),
            "{:?}",
            e.warnings
        );
        // Re-enrolling A-1 itself leaves A-1 out of the comparison.
        let e = g.enroll("A-1", &parts, Some(0), MAX_CONFUSION).unwrap();
        assert!(e.named_before.is_empty() && e.nearest.unwrap().0 == "B-1");
    }

    #[test]
    fn confusion_falls_with_the_distance_between_machines_in_units_of_the_spread() {
        // Parts at x = ±1 around 0 (σ = 1.05 along x), the other machine at x = d.
        let rows: Vec<Vec<f64>> = (0..10).map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, 0.0]).collect();
        let mean = [0.0, 0.0];
        let c = |d: f64| confusion(&rows, &mean, &[d, 0.0]);
        let sigma = (10.0f64 / 9.0).sqrt();
        assert!((c(2.0 * sigma) - 0.158_655).abs() < 1e-5, "{}", c(2.0 * sigma));
        assert!(c(1.0) > c(3.0) && c(3.0) > c(6.0));
        assert_eq!(confusion(&rows, &mean, &mean), 0.5);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7 && (normal_cdf(1.96) - 0.975).abs() < 1e-4);
    }

    #[test]
    fn the_offset_shrinks_with_more_parts_and_is_never_negative() {
        assert!((small_n_offset(200.0, 10, 60) - 200.0 * (0.1 - 1.0 / 60.0)).abs() < 1e-12);
        assert!(small_n_offset(200.0, 20, 60) < small_n_offset(200.0, 10, 60));
        assert_eq!(small_n_offset(200.0, 100, 60), 0.0);
    }
}

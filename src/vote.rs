//! Turning per-ROI probabilities into one verdict for the part.
//!
//! The paper sums the SoftMax outputs of 16 ROIs and takes the largest. amfp does the same and
//! goes further in two ways:
//!
//! - **Open set.** The score of the vote is the leader's share of the summed SoftMax (in
//!   [0, 1]). Under the model's calibrated `amfp.unknown_threshold` the part is "unknown":
//!   no machine the model knows fits it well enough, and forcing it onto the nearest one would
//!   be a confident wrong answer.
//! - **Early stop.** ROIs are evaluated in small batches in a fixed, seeded order; after each
//!   batch the [`StopRule`] asks whether the rest could still change the verdict. Clear parts
//!   cost a few ROIs; hard ones get all of them. See docs/identify.md for the rules' derivation.

use serde::{Deserialize, Serialize};

/// When to stop drawing ROIs before the full vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopRule {
    /// Always vote with every ROI (the paper).
    Off,
    /// Stop only when the remaining ROIs cannot change the verdict whatever they say: the
    /// result is then exactly the full vote's (on the same ROIs).
    Exact,
    /// Stop when the remaining ROIs, drawn like the ones seen so far, would change the verdict
    /// only with negligible probability (a z-test on the per-ROI margins, see docs/identify.md).
    #[default]
    Sequential,
}

/// Settings of the vote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoteRule {
    /// ROIs in the full vote.
    pub max_rois: usize,
    /// Early stopping rule.
    pub stop: StopRule,
    /// Fewest ROIs before the sequential rule may stop.
    pub min_rois: usize,
    /// Confidence of the sequential rule, in standard deviations.
    pub z: f64,
    /// Open-set threshold on the leader's vote share.
    pub unknown_threshold: f64,
}

/// The floor on the per-ROI standard deviation used by the sequential rule: a handful of ROIs
/// that happen to agree perfectly must not look infinitely certain.
pub const SIGMA_FLOOR: f64 = 0.05;

/// The running sum of per-ROI probabilities for one part.
#[derive(Debug, Clone)]
pub struct Ballot {
    classes: usize,
    sum: Vec<f64>,
    rows: Vec<Vec<f32>>,
}

/// One class and its share of the vote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub label: String,
    pub score: f64,
}

/// The vote's outcome for one part.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    /// Index of the class with the largest summed probability.
    pub leader: usize,
    /// The leader's share of the vote, in [0, 1].
    pub score: f64,
    /// Leader's share minus the runner-up's.
    pub margin: f64,
    /// Whether the score reaches the open-set threshold.
    pub known: bool,
    /// ROIs voted.
    pub used: usize,
    /// Classes by share, largest first.
    pub ranking: Vec<(usize, f64)>,
}

impl Ballot {
    /// An empty ballot over `classes` classes.
    pub fn new(classes: usize) -> Self {
        assert!(classes >= 2, "a vote needs at least two classes");
        Self { classes, sum: vec![0.0; classes], rows: Vec::new() }
    }

    /// Adds one ROI's probabilities (a SoftMax row).
    pub fn add(&mut self, probs: &[f32]) {
        assert_eq!(probs.len(), self.classes);
        for (s, &p) in self.sum.iter_mut().zip(probs) {
            *s += p as f64;
        }
        self.rows.push(probs.to_vec());
    }

    /// ROIs voted so far.
    pub fn used(&self) -> usize {
        self.rows.len()
    }

    /// Shares of the vote per class (sum of probabilities / ROIs).
    pub fn shares(&self) -> Vec<f64> {
        let n = self.used().max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// The outcome so far.
    pub fn tally(&self, unknown_threshold: f64) -> Tally {
        let shares = self.shares();
        let mut ranking: Vec<(usize, f64)> = shares.iter().copied().enumerate().collect();
        // Largest first; ties keep the lower class index (argmax's convention).
        ranking.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let (leader, score) = ranking[0];
        let margin = score - ranking[1].1;
        Tally { leader, score, margin, known: score >= unknown_threshold, used: self.used(), ranking }
    }

    /// Whether the verdict is settled: the remaining ROIs of the full vote need not be drawn.
    pub fn settled(&self, rule: &VoteRule) -> bool {
        let n = self.used();
        if n == 0 {
            return false;
        }
        if n >= rule.max_rois {
            return true;
        }
        match rule.stop {
            StopRule::Off => false,
            StopRule::Exact => self.settled_exactly(rule),
            StopRule::Sequential => n >= rule.min_rois && self.settled_sequentially(rule),
        }
    }

    /// Exact: whatever the remaining `r` ROIs say (each adds at most 1 to one class's sum and
    /// at most 1 in total), the final leader and its known/unknown verdict stay the same.
    fn settled_exactly(&self, rule: &VoteRule) -> bool {
        let total = rule.max_rois as f64;
        let r = (rule.max_rois - self.used()) as f64;
        let t = rule.unknown_threshold;
        let tally = self.tally(t);
        let s1 = self.sum[tally.leader];
        let s2 = self.sum[tally.ranking[1].0];
        // Unknown whatever happens: even the leader given every remaining vote stays under the threshold.
        if (s1 + r) / total < t {
            return true;
        }
        let label_fixed = s1 - s2 > r;
        let known_fixed = s1 / total >= t;
        label_fixed && known_fixed
    }

    /// Sequential: treats the remaining ROIs as drawn like those seen. With n seen, r left and
    /// N = n + r, the final mean of a per-ROI quantity with sample mean m and deviation s has
    /// standard error s·sqrt(r / (N·n)) around m (the remaining draws' own noise plus the
    /// uncertainty of m). The verdict is settled when both the leader's lead over the runner-up
    /// and the leader's share's distance to the threshold exceed `z` such standard errors.
    fn settled_sequentially(&self, rule: &VoteRule) -> bool {
        let n = self.used();
        let r = rule.max_rois - n;
        let tally = self.tally(rule.unknown_threshold);
        let (l, u) = (tally.leader, tally.ranking[1].0);
        let se = ((r as f64) / (rule.max_rois as f64 * n as f64)).sqrt();
        let shares: Vec<f64> = self.rows.iter().map(|p| p[l] as f64).collect();
        let margins: Vec<f64> = self.rows.iter().map(|p| (p[l] - p[u]) as f64).collect();
        let (m_share, s_share) = mean_sd(&shares);
        let (m_margin, s_margin) = mean_sd(&margins);
        let lead_safe = m_margin > rule.z * s_margin.max(SIGMA_FLOOR) * se;
        let verdict_safe = (m_share - rule.unknown_threshold).abs() > rule.z * s_share.max(SIGMA_FLOOR) * se;
        // An unknown verdict does not depend on who leads.
        (lead_safe || m_share < rule.unknown_threshold) && verdict_safe
    }
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(stop: StopRule) -> VoteRule {
        VoteRule { max_rois: 16, stop, min_rois: 4, z: 3.0, unknown_threshold: 0.6 }
    }

    fn one_hot(k: usize, p: f32) -> Vec<f32> {
        let mut v = vec![(1.0 - p) / 2.0; 3];
        v[k] = p;
        v
    }

    #[test]
    fn the_vote_sums_softmax_and_ranks_by_share() {
        let mut b = Ballot::new(3);
        b.add(&[0.7, 0.2, 0.1]);
        b.add(&[0.1, 0.6, 0.3]);
        b.add(&[0.8, 0.1, 0.1]);
        let t = b.tally(0.5);
        assert_eq!(t.leader, 0);
        assert!((t.score - 1.6 / 3.0).abs() < 1e-6);
        assert!((t.margin - (1.6 - 0.9) / 3.0).abs() < 1e-6);
        assert!(t.known);
        assert_eq!(t.ranking.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(!b.tally(0.6).known, "a share under the threshold is unknown");
    }

    #[test]
    fn off_never_stops_before_the_full_vote() {
        let mut b = Ballot::new(3);
        for _ in 0..15 {
            b.add(&one_hot(0, 1.0));
            assert!(!b.settled(&rule(StopRule::Off)));
        }
        b.add(&one_hot(0, 1.0));
        assert!(b.settled(&rule(StopRule::Off)));
    }

    #[test]
    fn exact_stops_when_the_lead_exceeds_the_remaining_votes() {
        let mut b = Ballot::new(3);
        for i in 0..16 {
            b.add(&one_hot(0, 1.0));
            // After n unanimous ROIs the lead is n and r = 16 - n remain: the label is fixed once
            // n > 8, "identified" once n / 16 >= 0.6, i.e. n >= 10.
            assert_eq!(b.settled(&rule(StopRule::Exact)), i + 1 >= 10, "after {} ROIs", i + 1);
        }
    }

    #[test]
    fn exact_stops_early_on_a_hopelessly_unknown_part() {
        let mut b = Ballot::new(3);
        let flat = [1.0 / 3.0; 3];
        let mut stopped_at = None;
        for i in 0..16 {
            b.add(&flat);
            if b.settled(&rule(StopRule::Exact)) {
                stopped_at = Some(i + 1);
                break;
            }
        }
        // (n/3 + 16 - n) / 16 < 0.6  <=>  n > 9.6
        assert_eq!(stopped_at, Some(10));
        assert!(!b.tally(0.6).known);
    }

    #[test]
    fn sequential_stops_at_min_rois_on_a_clear_part_and_waits_on_a_split_one() {
        let mut clear = Ballot::new(3);
        for _ in 0..4 {
            clear.add(&one_hot(1, 0.98));
        }
        assert!(clear.settled(&rule(StopRule::Sequential)));
        assert_eq!(clear.tally(0.6).leader, 1);

        let mut split = Ballot::new(3);
        for i in 0..8 {
            split.add(&one_hot(i % 2, 0.9));
        }
        assert!(!split.settled(&rule(StopRule::Sequential)), "two classes trading places is not settled");
    }

    #[test]
    fn sequential_waits_when_the_share_sits_on_the_threshold() {
        let mut b = Ballot::new(3);
        for _ in 0..8 {
            b.add(&[0.62, 0.2, 0.18]);
        }
        assert!(!b.settled(&rule(StopRule::Sequential)));
    }

    #[test]
    fn sequential_needs_min_rois() {
        let mut b = Ballot::new(3);
        for _ in 0..3 {
            b.add(&one_hot(0, 1.0));
        }
        assert!(!b.settled(&rule(StopRule::Sequential)));
    }
}

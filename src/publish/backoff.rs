//! Reconnection delays: capped exponential backoff with jitter.
//!
//! After the n-th failed attempt in a row the wait is drawn uniformly from [d/2, d] with
//! d = min(cap, first · 2^n): a broker that restarts is not hit by its whole fleet at the same
//! instant, and a broker that stays away is tried about once per cap.

use std::time::Duration;

/// The delay schedule of one connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A schedule starting at `first` and never waiting longer than `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first: first.min(cap), cap, failures: 0 }
    }

    /// The wait before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(30));
        let ceiling = self.first.saturating_mul(factor).min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Starts over from the first delay, after a connection that lasted.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), ms(8000));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let d = b.next_delay();
            ceilings.push(d);
        }
        for (d, ceiling) in ceilings.iter().zip([500, 1000, 2000, 4000, 8000, 8000, 8000, 8000]) {
            assert!(*d >= ms(ceiling / 2) && *d <= ms(ceiling), "{d:?} vs {ceiling}");
        }
        b.reset();
        assert!(b.next_delay() <= ms(500));
        // Many failures never overflow.
        for _ in 0..100 {
            assert!(b.next_delay() <= ms(8000));
        }
    }
}

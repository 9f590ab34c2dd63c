//! Capped exponential backoff with jitter, so a fleet of agents (or a pool of
//! sessions) does not reconnect in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
            seed: seed | 1,
        }
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt: `initial * 2^failures`, capped at
    /// `max`, then scaled by a factor in [0.5, 1.0).
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        // xorshift64: cheap, good enough for jitter, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        base.mul_f64(fraction)
    }
}

/// A per-process, per-call seed for jitter.
pub fn jitter_seed(salt: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitters_within_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 42);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let bases = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(*d >= base / 2 && *d < base, "{d:?} vs {base:?}");
        }
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "jitter varies");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 7);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
    }

    #[test]
    fn different_seeds_spread() {
        let a = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 1).next_delay();
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 99).next_delay();
        assert_ne!(a, b);
    }
}

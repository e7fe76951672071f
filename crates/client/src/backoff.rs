//! Exponential backoff with full jitter.
//!
//! Attempt `n` (0-based) waits a uniformly random time in
//! `[0, min(max_delay, base_delay * 2^n)]`. Full jitter (rather than a fixed
//! delay plus a little noise) is what spreads a crowd: 5,000 clients that
//! lost their sockets together come back spread over the whole window instead
//! of in waves at the same instants.

use std::time::Duration;

use rand::{rngs::SmallRng, Rng};

use crate::config::ReconnectPolicy;

/// The ceiling of attempt `attempt`'s delay.
pub fn ceiling(policy: &ReconnectPolicy, attempt: u32) -> Duration {
    // 2^20 * base is already far past any sane cap; stop doubling there so
    // the multiplication cannot overflow.
    let factor = 1u32 << attempt.min(20);
    policy
        .base_delay
        .checked_mul(factor)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay)
}

/// The delay before attempt `attempt`.
pub fn delay(policy: &ReconnectPolicy, attempt: u32, rng: &mut SmallRng) -> Duration {
    if attempt == 0 && !policy.jitter_first {
        return Duration::ZERO;
    }
    let cap = ceiling(policy, attempt).as_micros() as u64;
    Duration::from_micros(rng.random_range(0..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter_first: true,
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(ceiling(&p, 0), Duration::from_millis(100));
        assert_eq!(ceiling(&p, 1), Duration::from_millis(200));
        assert_eq!(ceiling(&p, 4), Duration::from_millis(1600));
        assert_eq!(ceiling(&p, 5), Duration::from_secs(2));
        assert_eq!(ceiling(&p, u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn delays_are_spread_over_the_whole_window() {
        let p = policy();
        let mut rng = SmallRng::seed_from_u64(7);
        let delays: Vec<_> = (0..1000).map(|_| delay(&p, 3, &mut rng)).collect();
        let max = ceiling(&p, 3);
        assert!(delays.iter().all(|d| *d <= max));
        // Every tenth of the window is hit: no lockstep.
        for bucket in 0..10 {
            let lo = max * bucket / 10;
            let hi = max * (bucket + 1) / 10;
            assert!(
                delays.iter().any(|d| *d >= lo && *d < hi),
                "no delay in bucket {bucket}"
            );
        }
    }

    #[test]
    fn first_attempt_can_be_immediate() {
        let p = ReconnectPolicy {
            jitter_first: false,
            ..policy()
        };
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(delay(&p, 0, &mut rng), Duration::ZERO);
        assert!(delay(&p, 1, &mut rng) <= Duration::from_millis(200));
    }
}

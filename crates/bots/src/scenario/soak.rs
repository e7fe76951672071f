//! Scenario `soak` (docs/BENCHMARKS.md): standard players that churn.
//!
//! Every player plays for a while (uniformly 0.5x to 1.5x
//! `--soak-cycle-secs`), then, on its own seeded schedule, does one of:
//!
//! | action | share | what the server sees |
//! |---|---|---|
//! | keep playing | 30 % | nothing special |
//! | drop and resume | 30 % | EOF, a zombie, a `Resume` within ~`--reconnect-window-ms` |
//! | log out, come back later | 25 % | `Logout`; after 0.1x to 0.5x the cycle (at least 1 s) a fresh `Hello` |
//! | walk away, come back after expiry | 15 % | EOF, a zombie that expires after `Welcome.resume_grace_ms`; 1 to 3 s after that, a fresh `Hello` |
//!
//! Before it logs out or walks away, a player stops sending and waits (up
//! to `--drain`) for the acks of its inputs and the pongs of its pings, so
//! that whatever is still missing counts as lost. A login after either must
//! find no session (`Welcome.took_over` false); one that does is counted in
//! `stale_sessions` and as an error.
//!
//! Meanwhile the runner samples the server's RSS and open descriptors and
//! judges their growth after the warm-up ([`crate::growth`]). Give the
//! server a short `--zombie-grace-ms` for short runs, or the "walk away"
//! players are gone for two minutes each.

use std::time::Duration;

use rand::{rngs::SmallRng, Rng};

/// What a soak player does when its play time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep playing.
    Stay,
    /// Close the socket without logout; the client resumes.
    DropResume,
    /// Log out; log in again a little later.
    LogoutReturn,
    /// Close the socket and stay away until the zombie session has expired;
    /// then log in fresh.
    ExpireReturn,
}

/// The actions and their weights (out of 100).
pub const WEIGHTS: [(Action, u32); 4] = [
    (Action::Stay, 30),
    (Action::DropResume, 30),
    (Action::LogoutReturn, 25),
    (Action::ExpireReturn, 15),
];

/// Draws the next action.
pub fn pick(rng: &mut SmallRng) -> Action {
    let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (action, w) in WEIGHTS {
        if roll < w {
            return action;
        }
        roll -= w;
    }
    Action::Stay
}

/// How long to play before the next action.
pub fn play_time(cycle: Duration, rng: &mut SmallRng) -> Duration {
    cycle.mul_f64(rng.random_range(0.5..1.5))
}

/// How long a player that logged out stays away.
pub fn away_time(cycle: Duration, rng: &mut SmallRng) -> Duration {
    cycle
        .mul_f64(rng.random_range(0.1..0.5))
        .max(Duration::from_secs(1))
}

/// How long a player that walked away stays away: past the zombie grace
/// (timers run on the server's 100 ms tick), plus 1 to 3 s.
pub fn expiry_wait(grace: Duration, rng: &mut SmallRng) -> Duration {
    grace + Duration::from_millis(rng.random_range(1_000..3_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn actions_follow_their_weights() {
        let mut rng = SmallRng::seed_from_u64(5);
        let n = 100_000;
        let mut counts = [0u32; 4];
        for _ in 0..n {
            let action = pick(&mut rng);
            let i = WEIGHTS.iter().position(|(a, _)| *a == action).unwrap();
            counts[i] += 1;
        }
        for (i, (_, w)) in WEIGHTS.iter().enumerate() {
            let share = f64::from(counts[i]) / f64::from(n) * 100.0;
            assert!((share - f64::from(*w)).abs() < 1.0, "{i}: {share}");
        }
    }

    #[test]
    fn times_stay_in_their_ranges() {
        let mut rng = SmallRng::seed_from_u64(6);
        let cycle = Duration::from_secs(10);
        for _ in 0..1000 {
            let p = play_time(cycle, &mut rng);
            assert!(p >= Duration::from_secs(5) && p < Duration::from_secs(15));
            let a = away_time(cycle, &mut rng);
            assert!(a >= Duration::from_secs(1) && a < Duration::from_secs(5));
            let e = expiry_wait(Duration::from_secs(3), &mut rng);
            assert!(e >= Duration::from_secs(4) && e < Duration::from_secs(6));
        }
        // A short cycle still stays away a whole second.
        assert_eq!(
            away_time(Duration::from_secs(1), &mut rng),
            Duration::from_secs(1)
        );
    }
}

//! Turning `--attack-rate` into actions: a [`Pacer`] says, at each tick of
//! the attacker's loop, how many actions are due.

use std::time::Duration;

/// How far the pacer lets the attacker fall behind before it gives up on
/// the missed actions instead of firing them in one burst: a stalled loop
/// (a loaded machine) resumes at the requested rate, and the shortfall
/// shows in the achieved rate.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// Actions owed at a steady `rate` per second since the start.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    issued: u64,
    skipped: u64,
    max_burst: u64,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        Pacer {
            rate,
            issued: 0,
            skipped: 0,
            max_burst: (rate * MAX_LAG.as_secs_f64()).ceil() as u64 + 1,
        }
    }

    /// The actions due `elapsed` after the start that were not handed out
    /// yet, at most one [`MAX_LAG`]'s worth; anything beyond is skipped.
    pub fn due(&mut self, elapsed: Duration) -> u64 {
        let target = (elapsed.as_secs_f64() * self.rate).floor() as u64;
        let owed = target.saturating_sub(self.issued + self.skipped);
        let n = owed.min(self.max_burst);
        self.skipped += owed - n;
        self.issued += n;
        n
    }

    /// Actions handed out so far.
    #[cfg(test)]
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Actions given up because the loop fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steady_ticks_hand_out_the_rate() {
        let mut p = Pacer::new(1000.0);
        let total: u64 = (1..=1000).map(|t| p.due(ms(t))).sum();
        assert_eq!(total, 1000);
        assert_eq!(p.issued(), 1000);
        assert_eq!(p.skipped(), 0);
    }

    #[test]
    fn fractional_rates_accumulate() {
        let mut p = Pacer::new(2.5);
        assert_eq!(p.due(ms(300)), 0);
        assert_eq!(p.due(ms(400)), 1);
        assert_eq!(p.due(ms(800)), 1);
        assert_eq!(p.due(ms(1000)), 0);
        // Far behind: one burst of MAX_LAG (0.25, rounded up, +1), the
        // rest skipped.
        assert_eq!(p.due(ms(10_000)), 2);
        assert_eq!(p.issued(), 4);
        assert_eq!(p.skipped(), 25 - 4);
    }

    #[test]
    fn a_stall_is_skipped_not_replayed() {
        let mut p = Pacer::new(10_000.0);
        assert_eq!(p.due(ms(10)), 100);
        // Stalled 1 s: at most 100 ms worth (+1) come out, then the rate.
        let burst = p.due(ms(1010));
        assert_eq!(burst, 1001);
        assert_eq!(p.skipped(), 10_100 - 100 - 1001);
        // 1 ms more: 10 more (9 when the float product lands just below).
        assert!((9..=10).contains(&p.due(ms(1011))));
    }

    #[test]
    fn zero_and_nonsense_rates_do_nothing() {
        assert_eq!(Pacer::new(0.0).due(ms(5000)), 0);
        assert_eq!(Pacer::new(f64::NAN).due(ms(5000)), 0);
        assert_eq!(Pacer::new(-3.0).due(ms(5000)), 0);
    }
}

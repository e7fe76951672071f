//! The legit side of an attack run: how many legit sessions are live, from
//! the attack's start to the window's end, and the server's memory.
//!
//! [`Recovery`] is the pure bookkeeping (fed `(time, live)` samples); the
//! sampler that feeds it lives in [`super`].

/// After the attack ends, a legit session has this long to be playing
/// again before it counts as lost (docs/BENCHMARKS.md: "within 10 s after
/// the attack stops").
pub const LOST_AFTER_S: f64 = 10.0;

/// Live legit sessions over the attack and after it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recovery {
    /// Live when the attack started (the first sample).
    pub before: Option<i64>,
    /// The fewest live at once, from the start to the last sample.
    pub min_live: Option<i64>,
    /// The most live at once within [`LOST_AFTER_S`] after the end.
    pub after_max: Option<i64>,
    /// The last sample, and when it was taken (seconds after the end).
    pub last: Option<i64>,
    pub last_at: Option<f64>,
    /// Seconds after the end when every session of `before` was live again
    /// (0 when they all were at the end).
    pub recovered_at: Option<f64>,
    /// The latest sample's time after the end (how long "after" was
    /// watched).
    pub observed_after: f64,
}

impl Recovery {
    /// One sample: `live` sessions at `since_end` seconds after the
    /// attack's end (negative while it runs).
    pub fn observe(&mut self, since_end: f64, live: i64) {
        let before = *self.before.get_or_insert(live);
        self.min_live = Some(self.min_live.map_or(live, |m| m.min(live)));
        if since_end >= 0.0 {
            self.observed_after = self.observed_after.max(since_end);
            if since_end <= LOST_AFTER_S {
                self.after_max = Some(self.after_max.map_or(live, |m| m.max(live)));
            }
            if self.recovered_at.is_none() && live >= before {
                // Everyone was still there when the attack ended: nothing
                // to recover from.
                let all_at_end =
                    self.last_at.is_some_and(|t| t < 0.0) && self.last.is_some_and(|l| l >= before);
                self.recovered_at = Some(if all_at_end { 0.0 } else { since_end });
            }
        }
        self.last = Some(live);
        self.last_at = Some(since_end);
    }

    /// Legit sessions live at the start that were not all live again at
    /// any instant within [`LOST_AFTER_S`] after the end: the shortfall of
    /// the best moment (or of the last sample, if none came after the end).
    pub fn lost(&self) -> u64 {
        let Some(before) = self.before else {
            return 0;
        };
        let best = self.after_max.or(self.last).unwrap_or(before);
        (before - best).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_players_recover_at_once() {
        let mut r = Recovery::default();
        for t in -20..=15 {
            r.observe(t as f64 + 0.05, 100);
        }
        assert_eq!(r.before, Some(100));
        assert_eq!(r.min_live, Some(100));
        assert_eq!(r.recovered_at, Some(0.0));
        assert_eq!(r.lost(), 0);
        assert_eq!(r.observed_after, 15.05);
    }

    #[test]
    fn players_that_come_back_late_are_timed() {
        let mut r = Recovery::default();
        r.observe(-20.0, 100);
        r.observe(-5.0, 60);
        r.observe(0.0, 70);
        r.observe(2.5, 99);
        r.observe(3.0, 100);
        r.observe(4.0, 98); // a later dip does not undo the recovery
        assert_eq!(r.min_live, Some(60));
        assert_eq!(r.recovered_at, Some(3.0));
        assert_eq!(r.lost(), 0);
    }

    #[test]
    fn players_not_back_within_ten_seconds_are_lost() {
        let mut r = Recovery::default();
        r.observe(-1.0, 100);
        r.observe(1.0, 90);
        r.observe(9.9, 97);
        r.observe(12.0, 100); // too late to count for `lost`
        assert_eq!(r.lost(), 3);
        assert_eq!(r.recovered_at, Some(12.0));
        let mut never = Recovery::default();
        never.observe(-1.0, 10);
        never.observe(5.0, 8);
        assert_eq!(never.recovered_at, None);
        assert_eq!(never.lost(), 2);
    }

    #[test]
    fn without_samples_after_the_end_the_last_one_decides() {
        let mut r = Recovery::default();
        r.observe(-3.0, 50);
        r.observe(-1.0, 45);
        assert_eq!(r.lost(), 5);
        assert_eq!(Recovery::default().lost(), 0);
    }
}

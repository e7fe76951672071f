//! Counters and the round-trip histogram, shared by thousands of bots
//! without making them fight over cache lines.
//!
//! Each bot counts into its own plain [`Tally`] and adds it to the shared
//! [`Counters`] (atomics) about once a second, so the shared lines see
//! `clients` updates per second instead of one per frame. Round-trip samples
//! go the same way into one [`RttHistograms`] behind a mutex: one lock per
//! bot per second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One bot's counts since its last flush (or a snapshot of the
        /// shared totals).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Tally { $($(#[$doc])* pub $name: u64,)* }

        /// The shared totals.
        #[derive(Debug, Default)]
        pub struct Counters { $($name: AtomicU64,)* }

        impl Counters {
            /// Adds a bot's tally (the caller then resets it).
            pub fn add(&self, t: &Tally) {
                $(if t.$name != 0 { self.$name.fetch_add(t.$name, Relaxed); })*
            }

            pub fn snapshot(&self) -> Tally {
                Tally { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl Tally {
            /// What was counted between `earlier` and `self`.
            pub fn since(&self, earlier: &Tally) -> Tally {
                Tally { $($name: self.$name.saturating_sub(earlier.$name),)* }
            }
        }
    };
}

counters! {
    /// `Move` inputs sent.
    moves,
    /// `Attack` inputs sent.
    attacks,
    /// `Death` events whose killer was the bot's own character.
    kills,
    /// `Chat` inputs sent.
    chats,
    /// `Ping` inputs sent.
    pings,
    /// `Pong`s received.
    pongs,
    /// `Respawn` inputs sent.
    respawns,
    /// Frames the bots wrote (what the server decodes).
    frames_out,
    /// Frames the bots decoded (what the server delivered).
    frames_in,
    /// Successful logins.
    logins,
    /// Connection failures, decode errors, unexpected closes, silence
    /// timeouts, clients that gave up. Not `CommandError`s.
    errors,
    /// Connect or handshake attempts that failed (also in `errors`).
    connect_failures,
    /// Live connections lost (`Paused`).
    disconnects,
    /// Of those, closed by the server with a `Close` frame (slow consumer,
    /// heartbeat timeout, rate limit, shutdown...; also in `errors`).
    closed_by_server,
    /// Of those, given up by the client after the server went silent past
    /// its heartbeat timeout (also in `errors`).
    silences,
    /// Resumes, replay or snapshot.
    resumed,
    /// Resumes that fell back to a snapshot.
    snapshots,
    /// Inputs sent and never acknowledged as applied: counted per client
    /// at the end of the run, and before a soak player logs out or walks
    /// away, after waiting (`--drain`) for the acks.
    inputs_lost,
    /// Pings whose `Pong` never arrived (a stricter check than the acks:
    /// the effect of the input was seen). Pongs produced while a session
    /// was a zombie are legitimately gone after a snapshot resume.
    pongs_missing,
    /// Sockets closed by `--chaos`.
    chaos_kills,
    /// Sockets closed by the reconnect storm.
    storm_drops,
    /// Soak: sockets closed to drop and resume.
    soak_drops,
    /// Soak: log out, come back later.
    soak_logouts,
    /// Soak: walk away without logout, log in fresh after the zombie grace.
    soak_expiries,
    /// Soak: keep playing.
    soak_stays,
    /// Soak: a login after a logout, or after staying away past the zombie
    /// grace, found the old session still there (`Welcome.took_over`): it
    /// did not end (also an error).
    stale_sessions,
    /// `CommandError` frames (cooldown, out of range, ...): game rules, not
    /// failures.
    command_errors,
    /// `Correction` frames (a move refused).
    corrections,
    /// Arena: matches the bots played to the end (each counted once).
    matches_played,
    /// Arena: durable match results received (one per player per match).
    results_committed,
}

/// Round trips are recorded in microseconds, from 1 µs to 60 s, at 3
/// significant digits (the usual HDR precision: 0.1 % error, ~30 KiB).
pub const RTT_MAX_US: u64 = 60_000_000;

pub fn new_rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, RTT_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Round-trip samples: those taken inside the measured window, and the rest
/// (ramp), kept apart so the window's figures are not diluted. With
/// `--attack`, the samples taken while the attack runs also go to a third
/// histogram (they stay in the window's too).
pub struct RttHistograms {
    inner: Mutex<(Histogram<u64>, Histogram<u64>)>,
    attack: Mutex<Histogram<u64>>,
    /// An attack is running now: bots mark the pongs they receive.
    attack_on: AtomicBool,
}

impl Default for RttHistograms {
    fn default() -> Self {
        RttHistograms {
            inner: Mutex::new((new_rtt_histogram(), new_rtt_histogram())),
            attack: Mutex::new(new_rtt_histogram()),
            attack_on: AtomicBool::new(false),
        }
    }
}

/// One round-trip sample as a bot keeps it until its next flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttSample {
    pub us: u64,
    /// Taken inside the measured window.
    pub in_window: bool,
    /// Taken while an attack ran ([`RttHistograms::attack_on`]).
    pub during_attack: bool,
}

impl RttHistograms {
    pub fn record(&self, samples: &[RttSample]) {
        if samples.is_empty() {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in samples {
            let h = if s.in_window { &mut g.0 } else { &mut g.1 };
            h.saturating_record(s.us.max(1));
        }
        drop(g);
        if samples.iter().any(|s| s.during_attack) {
            let mut h = self.attack.lock().unwrap_or_else(|p| p.into_inner());
            for s in samples.iter().filter(|s| s.during_attack) {
                h.saturating_record(s.us.max(1));
            }
        }
    }

    /// Whether an attack runs now (what a bot writes in
    /// [`RttSample::during_attack`]).
    pub fn attack_on(&self) -> bool {
        self.attack_on.load(Relaxed)
    }

    /// The attack starts (`true`) or stops.
    pub fn set_attack_on(&self, on: bool) {
        self.attack_on.store(on, Relaxed);
    }

    /// The summary of the samples taken while the attack ran.
    pub fn attack_summary(&self) -> RttSummary {
        let h = self.attack.lock().unwrap_or_else(|p| p.into_inner());
        RttSummary::of(&h)
    }

    /// The window's summary (`window`), or the ramp's.
    pub fn summary(&self, window: bool) -> RttSummary {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        RttSummary::of(if window { &g.0 } else { &g.1 })
    }
}

/// Round-trip percentiles in milliseconds, as the summary prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RttSummary {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// Samples behind the figures.
    #[serde(skip)]
    pub samples: u64,
}

impl RttSummary {
    pub fn of(h: &Histogram<u64>) -> RttSummary {
        if h.is_empty() {
            return RttSummary::default();
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        RttSummary {
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// How long the sessions the bots cut themselves took to come back: from
/// closing the socket until the first counted frame after the resume, in
/// microseconds.
pub struct ResumeTimes {
    inner: Mutex<Histogram<u64>>,
}

impl Default for ResumeTimes {
    fn default() -> Self {
        ResumeTimes {
            inner: Mutex::new(new_rtt_histogram()),
        }
    }
}

impl ResumeTimes {
    pub fn record(&self, us: u64) {
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(us.max(1));
    }

    pub fn summary(&self) -> RttSummary {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        RttSummary::of(&h)
    }
}

/// Rounds to 3 decimals (µs resolution for milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Rounds to 1 decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_and_subtract() {
        let c = Counters::default();
        let t = Tally {
            moves: 3,
            frames_in: 10,
            ..Tally::default()
        };
        c.add(&t);
        let first = c.snapshot();
        c.add(&t);
        let d = c.snapshot().since(&first);
        assert_eq!(d.moves, 3);
        assert_eq!(d.frames_in, 10);
        assert_eq!(d.kills, 0);
    }

    #[test]
    fn hdr_summary_in_milliseconds() {
        let rtt = RttHistograms::default();
        // 1 ms .. 1000 ms, uniformly.
        let samples: Vec<_> = (1..=1000)
            .map(|i| RttSample {
                us: i * 1000,
                in_window: true,
                during_attack: i > 990,
            })
            .collect();
        rtt.record(&samples);
        rtt.record(&[RttSample {
            us: 5,
            in_window: false,
            during_attack: false,
        }]);
        let s = rtt.summary(true);
        assert_eq!(s.samples, 1000);
        // HDR at 3 significant digits: within 0.1 %.
        assert!((s.p50 - 500.0).abs() <= 0.5, "{s:?}");
        assert!((s.p99 - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.p999 - 999.0).abs() <= 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() <= 1.0, "{s:?}");
        assert_eq!(rtt.summary(false).samples, 1);
        assert_eq!(rtt.summary(false).max, 0.005);
        // The attack's histogram holds only the marked samples.
        let a = rtt.attack_summary();
        assert_eq!(a.samples, 10);
        assert!((a.p50 - 995.0).abs() <= 1.0, "{a:?}");
    }

    #[test]
    fn empty_histogram_reads_as_zeros() {
        assert_eq!(
            RttHistograms::default().summary(true),
            RttSummary::default()
        );
    }

    #[test]
    fn huge_samples_saturate_instead_of_failing() {
        let rtt = RttHistograms::default();
        rtt.record(&[RttSample {
            us: u64::MAX,
            in_window: true,
            during_attack: false,
        }]);
        let s = rtt.summary(true);
        assert!(s.max >= 59_000.0, "{s:?}");
    }
}

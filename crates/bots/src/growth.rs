//! The soak's verdict: does the server's memory or descriptor count keep
//! growing once warm?
//!
//! The runner samples `/metrics` every `--sample-secs` (a [`Sample`]: RSS,
//! open descriptors, sessions, connections). [`judge`] then compares every
//! sample taken after `--warmup-secs` with the level at the end of the
//! warm-up: the median of the last three samples taken at or before it (one
//! odd sample does not set the bar).
//!
//! - **RSS** must stay within `--growth-limit-pct` (10 %) above that level.
//!   Only growth fails: memory handed back is not a leak. A level counts
//!   once the server has held it for three samples in a row (the largest
//!   rolling minimum of three), so a sample caught in a burst does not
//!   decide; a leak holds every level it reaches.
//! - **Descriptors** are compared for the same population. The server holds
//!   one descriptor per open game connection, and churn makes that number
//!   swing by design (players away, logging in, resuming), so the figure
//!   judged is `fds - connections`: the descriptors not explained by a
//!   live connection (listener, epoll, admin, store files, ...). It must stay
//!   within the same limit, or [`FD_SLACK`] descriptors, whichever is larger,
//!   judged on levels held for three samples like RSS (a socket accepted or
//!   closed between the two readings of one scrape, or a file the store
//!   opens for a moment, must not read as growth). A socket kept after its connection ended
//!   shows up here; a connection object kept after its socket was closed
//!   by the client shows up in the drain check below.
//! - **After the drain** every bot has logged out or walked away, so the
//!   server must be back to zero connections (polled for a few seconds).
//!
//! A slope (least squares over the post-warm-up samples, per minute) is
//! reported beside the figures to show a trend in long runs; it does not
//! decide anything on its own.

use serde::Serialize;

use crate::stats::round1;

/// Descriptors of `fds - connections` growth always tolerated.
pub const FD_SLACK: f64 = 2.0;

/// How many samples at the end of the warm-up set the reference level.
const WARM_SAMPLES: usize = 3;

/// How many samples in a row a level must hold to count as growth.
const HELD_SAMPLES: usize = 3;

/// One reading of the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the bots started (the ramp included).
    pub t: f64,
    pub rss_mb: f64,
    /// `process_open_fds`.
    pub fds: f64,
    /// Sessions, live and zombie.
    pub sessions: f64,
    /// Open game connections (`tether_connections`).
    pub connections: f64,
    /// Sessions the bots had attached to a connection.
    pub players: i64,
}

/// The verdict's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    pub warmup_s: f64,
    pub limit_pct: f64,
    /// Samples judged (taken after the warm-up).
    pub samples_after: usize,
    pub rss_warm_mb: f64,
    pub rss_max_after_mb: f64,
    pub rss_growth_pct: f64,
    pub rss_slope_mb_per_min: f64,
    /// What the descriptor figures below measure.
    pub fd_basis: &'static str,
    pub fds_warm: f64,
    pub fds_max_after: f64,
    pub fds_growth_pct: f64,
    pub fds_slope_per_min: f64,
    /// Game connections still open a few seconds after every bot left;
    /// `null` when the server could not be read.
    pub connections_after_drain: Option<f64>,
    /// Sessions still there then (zombies of players that walked away
    /// expire later).
    pub sessions_after_drain: Option<f64>,
    /// Why the verdict is `false`; empty when it is `true`.
    pub failures: Vec<String>,
}

/// Judges the samples; `true` when nothing grew.
pub fn judge(
    samples: &[Sample],
    warmup_s: f64,
    limit_pct: f64,
    after_drain: Option<(f64, f64)>,
) -> (bool, Growth) {
    let excess = |s: &Sample| s.fds - s.connections;
    let warm_end = samples.iter().rposition(|s| s.t <= warmup_s).unwrap_or(0);
    let warm = &samples[..(warm_end + 1).min(samples.len())];
    let warm = &warm[warm.len().saturating_sub(WARM_SAMPLES)..];
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t > warmup_s).collect();

    let rss_warm = median(warm.iter().map(|s| s.rss_mb));
    let fds_warm = median(warm.iter().map(excess));
    let rss_max = held_max(&after.iter().map(|s| s.rss_mb).collect::<Vec<_>>());
    let fds_max = held_max(&after.iter().map(|s| excess(s)).collect::<Vec<_>>());
    let pct = |max: f64, base: f64| {
        if max.is_nan() || base <= 0.0 {
            0.0
        } else {
            round1((max / base - 1.0) * 100.0)
        }
    };
    let mut failures = Vec::new();
    if after.is_empty() {
        failures.push("no sample after the warm-up".to_string());
    }
    let rss_limit = rss_warm * (1.0 + limit_pct / 100.0);
    if rss_max > rss_limit {
        failures.push(format!(
            "RSS grew to {rss_max:.1} MB, over {rss_limit:.1} MB ({limit_pct} % above the {rss_warm:.1} MB at the end of the warm-up)"
        ));
    }
    let fd_limit = (fds_warm * (1.0 + limit_pct / 100.0)).max(fds_warm + FD_SLACK);
    if fds_max > fd_limit {
        failures.push(format!(
            "descriptors beyond the open connections grew to {fds_max}, over {fd_limit:.1} (warm-up level {fds_warm})"
        ));
    }
    if let Some((conns, _)) = after_drain {
        if conns > 0.0 {
            failures.push(format!(
                "{conns} game connections still open after every bot left"
            ));
        }
    }
    let growth = Growth {
        warmup_s,
        limit_pct,
        samples_after: after.len(),
        rss_warm_mb: round1(rss_warm),
        rss_max_after_mb: if rss_max.is_nan() { 0.0 } else { rss_max },
        rss_growth_pct: pct(rss_max, rss_warm),
        rss_slope_mb_per_min: round3(slope(after.iter().map(|s| (s.t, s.rss_mb))) * 60.0),
        fd_basis: "fds-connections",
        fds_warm,
        fds_max_after: if fds_max.is_nan() { 0.0 } else { fds_max },
        fds_growth_pct: pct(fds_max, fds_warm),
        fds_slope_per_min: round3(slope(after.iter().map(|s| (s.t, excess(s)))) * 60.0),
        connections_after_drain: after_drain.map(|(c, _)| c),
        sessions_after_drain: after_drain.map(|(_, s)| s),
        failures,
    };
    (growth.failures.is_empty(), growth)
}

/// The highest level held for [`HELD_SAMPLES`] samples in a row (the
/// largest rolling minimum): one sample caught in a transition does not
/// count, a level the server stays at does. With fewer samples, their
/// minimum. `NAN` for none.
fn held_max(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let w = HELD_SAMPLES.min(values.len());
    values
        .windows(w)
        .map(|win| win.iter().copied().fold(f64::INFINITY, f64::min))
        .fold(f64::NAN, f64::max)
}

fn round3(x: f64) -> f64 {
    crate::stats::round3(x)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Least-squares slope of y over x; 0 with fewer than two distinct x.
fn slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let pts: Vec<(f64, f64)> = points.collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return 0.0;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return 0.0;
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    sxy / sxx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, rss_mb: f64, fds: f64, connections: f64) -> Sample {
        Sample {
            t,
            rss_mb,
            fds,
            sessions: connections,
            connections,
            players: connections as i64,
        }
    }

    #[test]
    fn flat_curves_pass_even_when_the_population_swings() {
        let samples: Vec<Sample> = (0..30)
            .map(|i| {
                let t = i as f64 * 10.0;
                // 150-250 connections; the fixed part stays at 20 fds.
                let conns = 200.0 + 50.0 * ((i % 5) as f64 - 2.0) / 2.0;
                s(t, 40.0 + (i % 3) as f64 * 0.5, 20.0 + conns, conns)
            })
            .collect();
        let (ok, g) = judge(&samples, 100.0, 10.0, Some((0.0, 3.0)));
        assert!(ok, "{g:?}");
        assert_eq!(g.samples_after, 19);
        assert_eq!(g.fds_warm, 20.0);
        assert_eq!(g.fds_max_after, 20.0);
        assert!(g.rss_growth_pct <= 2.5, "{g:?}");
        assert!(g.failures.is_empty());
    }

    #[test]
    fn rss_growth_fails() {
        let samples: Vec<Sample> = (0..30)
            .map(|i| s(i as f64 * 10.0, 40.0 + i as f64, 220.0, 200.0))
            .collect();
        let (ok, g) = judge(&samples, 100.0, 10.0, None);
        assert!(!ok);
        assert_eq!(g.rss_warm_mb, 49.0);
        // The last three samples: 67, 68, 69 MB; 67 held.
        assert_eq!(g.rss_max_after_mb, 67.0);
        assert!(g.rss_growth_pct > 30.0);
        assert!((g.rss_slope_mb_per_min - 6.0).abs() < 1e-9, "{g:?}");
        assert_eq!(g.failures.len(), 1, "{g:?}");
    }

    #[test]
    fn leaked_descriptors_fail_but_a_few_in_flight_do_not() {
        // Two sockets caught between the readings: tolerated.
        let mut samples: Vec<Sample> = (0..20)
            .map(|i| s(i as f64 * 10.0, 40.0, 220.0, 200.0))
            .collect();
        samples[15].fds += 2.0;
        assert!(judge(&samples, 100.0, 10.0, None).0);
        // Five more for one or two samples (a burst of logins caught
        // mid-way): not a level the server held.
        samples[12].fds += 5.0;
        samples[17].fds += 5.0;
        samples[18].fds += 4.0;
        assert!(judge(&samples, 100.0, 10.0, None).0);
        // Held for three samples: growth.
        samples[16].fds += 5.0;
        let (ok, g) = judge(&samples, 100.0, 10.0, None);
        assert!(!ok, "{g:?}");
        assert_eq!(g.fds_max_after, 24.0);
        // A socket leaked per sample: fails.
        let samples: Vec<Sample> = (0..20)
            .map(|i| s(i as f64 * 10.0, 40.0, 220.0 + i as f64, 200.0))
            .collect();
        let (ok, g) = judge(&samples, 100.0, 10.0, None);
        assert!(!ok, "{g:?}");
        assert!(g.fds_slope_per_min > 5.0);
    }

    #[test]
    fn connections_left_after_the_drain_fail() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| s(i as f64 * 10.0, 40.0, 220.0, 200.0))
            .collect();
        let (ok, g) = judge(&samples, 100.0, 10.0, Some((3.0, 10.0)));
        assert!(!ok);
        assert_eq!(g.connections_after_drain, Some(3.0));
    }

    #[test]
    fn nothing_after_the_warm_up_is_no_verdict() {
        let samples = vec![s(0.0, 40.0, 20.0, 0.0), s(10.0, 40.0, 20.0, 0.0)];
        let (ok, g) = judge(&samples, 100.0, 10.0, None);
        assert!(!ok);
        assert_eq!(g.samples_after, 0);
        assert_eq!(g.rss_max_after_mb, 0.0);
    }

    #[test]
    fn one_low_sample_does_not_set_the_bar() {
        let mut samples: Vec<Sample> = (0..20)
            .map(|i| s(i as f64 * 10.0, 50.0, 220.0, 200.0))
            .collect();
        samples[10].rss_mb = 30.0; // t = 100, the last warm-up sample
        let (ok, g) = judge(&samples, 100.0, 10.0, None);
        assert!(ok, "{g:?}");
        assert_eq!(g.rss_warm_mb, 50.0);
    }

    #[test]
    fn medians_and_slopes() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
        assert_eq!(held_max(&[1.0, 5.0, 2.0, 3.0, 4.0]), 2.0);
        assert_eq!(held_max(&[1.0, 5.0]), 1.0);
        assert!(held_max(&[]).is_nan());
        assert_eq!(slope([(0.0, 1.0), (1.0, 3.0)].into_iter()), 2.0);
        assert_eq!(slope([(1.0, 1.0)].into_iter()), 0.0);
    }
}

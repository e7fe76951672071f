//! The one JSON object printed on stdout at the end of a run
//! (docs/BENCHMARKS.md, "The summary line").

use serde::Serialize;

use crate::admin::ServerSample;
use crate::bot::StormReport;
use crate::growth::{Growth, Sample};
use crate::procstat::cpu_pct;
use crate::stats::{round1, RttSummary, Tally};

/// Everything measured, as the runner collected it.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub scenario: &'static str,
    /// `tcp` or `websocket`.
    pub transport: &'static str,
    pub clients: usize,
    pub duration_s: u64,
    pub seed: u64,
    pub threads: usize,
    /// Actual length of the measured window.
    pub window_s: f64,
    /// Shared counters at the window's start and end, and after the drain.
    pub at_start: Tally,
    pub at_end: Tally,
    pub at_exit: Tally,
    /// Sessions attached at the window's end.
    pub connected: i64,
    pub rtt: RttSummary,
    /// Server samples at the window's start and end (with `--admin`).
    pub server: Option<(ServerSample, ServerSample)>,
    /// This process's CPU seconds at the window's start and end.
    pub bots_cpu: Option<(f64, f64)>,
    /// `--chaos`.
    pub chaos_rate: f64,
    /// Drop-to-first-frame times of the sockets the bots closed themselves.
    pub resumes: RttSummary,
    /// Drop-to-first-frame times of the connections the server or the
    /// network ended.
    pub outages: RttSummary,
    /// `reconnect-storm`: the storm's outcome.
    pub storm: Option<StormReport>,
    /// `soak`: the samples and the verdict.
    pub soak: Option<SoakOutcome>,
    /// `--attack`: the attack's report.
    pub attack: Option<crate::attack::AttackReport>,
}

/// What the soak's runner hands to the summary.
#[derive(Debug, Clone, Default)]
pub struct SoakOutcome {
    pub samples: Vec<Sample>,
    pub growth_ok: bool,
    pub growth: Option<Growth>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub clients: usize,
    pub connected: i64,
    pub duration_s: u64,
    /// Frames the server decoded per second (or the bots sent, without
    /// `--admin`: see `pps_source`).
    pub in_pps: f64,
    /// Frames the server delivered per second (or the bots received).
    pub out_pps: f64,
    pub total_pps: f64,
    pub rtt_ms: RttSummary,
    pub server_rss_mb: f64,
    pub server_cpu_pct: f64,
    pub bots_cpu_pct: f64,
    // Counted inside the window:
    pub moves: u64,
    pub attacks: u64,
    pub kills: u64,
    pub chats: u64,
    // Counted over the whole run (ramp, window and drain):
    pub resumed: u64,
    pub snapshots: u64,
    pub inputs_lost: u64,
    pub errors: u64,
    pub disconnects: u64,
    // Beyond docs/BENCHMARKS.md's minimum:
    /// Disconnects the server decided (a `Close` frame), and those where the
    /// client gave up on a silent server (both also in `errors`).
    pub closed_by_server: u64,
    pub silences: u64,
    /// `server` when the pps came from the admin counters, else `bots`.
    pub pps_source: &'static str,
    /// How the players connected: `tcp` or `websocket` (`--websocket`).
    pub transport: &'static str,
    /// The bots' own view of the same rates, for the cross-check.
    pub bots_in_pps: f64,
    pub bots_out_pps: f64,
    /// Frames the bots wrote and decoded inside the window.
    pub bots_frames_sent: u64,
    pub bots_frames_received: u64,
    pub window_s: f64,
    pub rtt_samples: u64,
    pub pings: u64,
    pub pongs: u64,
    pub command_errors: u64,
    pub corrections: u64,
    pub logins: u64,
    pub connect_failures: u64,
    pub server_open_fds: f64,
    pub seed: u64,
    pub threads: usize,
    // Faults (any scenario):
    /// `--chaos`: sockets closed per second.
    pub chaos_rate: f64,
    pub chaos_kills: u64,
    /// From a socket the bots closed themselves (chaos, storm, soak) until
    /// the first counted frame after the resume, ms.
    pub resume_ms: RttSummary,
    /// From a connection the server or the network ended (a restart, an
    /// upgrade, a crash, a fault) until the first counted frame after the
    /// resume, ms: the pause each player sees.
    pub outage_ms: RttSummary,
    /// Pauses behind `outage_ms`.
    pub outages: u64,
    pub pongs_missing: u64,
    /// Logins after a logout or an expiry that found the old session.
    pub stale_sessions: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub arena: Option<ArenaFields>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormFields>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakFields>,
    /// `--attack`: docs/BENCHMARKS.md's attack fields and `attack_detail`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub attack: Option<crate::attack::AttackFields>,
}

/// `arena`'s fields, counted over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ArenaFields {
    /// Matches the bots played to the end, each counted once.
    pub matches_played: u64,
    /// Durable match results the bots received (one per player per match),
    /// each sent by the server only once storage held it.
    pub results_committed: u64,
}

/// `reconnect-storm`'s fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StormFields {
    /// From the drop until 100 % of the sessions had resumed and received a
    /// counted frame; `null` when not every session came back.
    pub resume_all_ms: Option<f64>,
    /// Sessions whose socket was closed at the instant.
    pub storm_dropped: u64,
    /// Of those, back with a frame.
    pub storm_resumed: u64,
    /// Bots not connected at the instant.
    pub storm_missed: u64,
    /// Dropped sessions whose client ended without coming back.
    pub storm_failed: u64,
}

/// `soak`'s fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoakFields {
    /// No growth of RSS or descriptors after the warm-up (exit code 3 when
    /// `false`).
    pub growth_ok: bool,
    pub growth: Option<Growth>,
    pub soak_actions: SoakActions,
    pub server_rss_peak_mb: f64,
    /// The curve: one server reading every `--sample-secs`.
    pub samples: Vec<Sample>,
}

/// What the soak players did, over the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SoakActions {
    pub keep_playing: u64,
    pub drop_resume: u64,
    pub logout_return: u64,
    pub expire_return: u64,
}

impl Summary {
    pub fn build(m: &Measured) -> Summary {
        let w = m.at_end.since(&m.at_start);
        let all = &m.at_exit;
        let rate = |n: f64| {
            if m.window_s > 0.0 {
                round1(n / m.window_s)
            } else {
                0.0
            }
        };
        // Server in = what the bots sent; server out = what they received.
        let bots_in_pps = rate(w.frames_out as f64);
        let bots_out_pps = rate(w.frames_in as f64);
        let (in_pps, out_pps, pps_source, rss_mb, server_cpu, fds) = match &m.server {
            Some((a, b)) => (
                rate(b.frames_in - a.frames_in),
                rate(b.frames_out - a.frames_out),
                "server",
                round1(b.rss_bytes / (1024.0 * 1024.0)),
                round1(cpu_pct(a.cpu_seconds, b.cpu_seconds, m.window_s)),
                b.open_fds,
            ),
            None => (bots_in_pps, bots_out_pps, "bots", 0.0, 0.0, 0.0),
        };
        let bots_cpu = m
            .bots_cpu
            .map_or(0.0, |(a, b)| round1(cpu_pct(a, b, m.window_s)));
        Summary {
            scenario: m.scenario,
            clients: m.clients,
            connected: m.connected,
            duration_s: m.duration_s,
            in_pps,
            out_pps,
            total_pps: round1(in_pps + out_pps),
            rtt_ms: m.rtt,
            server_rss_mb: rss_mb,
            server_cpu_pct: server_cpu,
            bots_cpu_pct: bots_cpu,
            moves: w.moves,
            attacks: w.attacks,
            kills: w.kills,
            chats: w.chats,
            resumed: all.resumed,
            snapshots: all.snapshots,
            inputs_lost: all.inputs_lost,
            errors: all.errors,
            disconnects: all.disconnects,
            closed_by_server: all.closed_by_server,
            silences: all.silences,
            pps_source,
            transport: m.transport,
            bots_in_pps,
            bots_out_pps,
            bots_frames_sent: w.frames_out,
            bots_frames_received: w.frames_in,
            window_s: (m.window_s * 1000.0).round() / 1000.0,
            rtt_samples: m.rtt.samples,
            pings: w.pings,
            pongs: w.pongs,
            command_errors: all.command_errors,
            corrections: all.corrections,
            logins: all.logins,
            connect_failures: all.connect_failures,
            server_open_fds: fds,
            seed: m.seed,
            threads: m.threads,
            chaos_rate: m.chaos_rate,
            chaos_kills: all.chaos_kills,
            resume_ms: m.resumes,
            outage_ms: m.outages,
            outages: m.outages.samples,
            pongs_missing: all.pongs_missing,
            stale_sessions: all.stale_sessions,
            arena: (m.scenario == "arena").then_some(ArenaFields {
                matches_played: all.matches_played,
                results_committed: all.results_committed,
            }),
            storm: m.storm.map(|r| StormFields {
                resume_all_ms: r.all_back_ms(m.clients),
                storm_dropped: r.dropped,
                storm_resumed: r.completed,
                storm_missed: r.missed,
                storm_failed: r.failed,
            }),
            attack: m.attack.as_ref().map(|a| a.fields(m.soak.is_none())),
            soak: m.soak.as_ref().map(|o| SoakFields {
                growth_ok: o.growth_ok,
                growth: o.growth.clone(),
                soak_actions: SoakActions {
                    keep_playing: all.soak_stays,
                    drop_resume: all.soak_drops,
                    logout_return: all.soak_logouts,
                    expire_return: all.soak_expiries,
                },
                server_rss_peak_mb: o.samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
                samples: o.samples.clone(),
            }),
        }
    }

    /// The process exit code the summary calls for: 3 when the soak found
    /// growth, else 0.
    pub fn exit_code(&self) -> u8 {
        match &self.soak {
            Some(s) if !s.growth_ok => 3,
            _ => 0,
        }
    }

    /// The summary as one line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("the summary is plain data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/BENCHMARKS.md's minimum fields, in its order.
    const REQUIRED: &[&str] = &[
        "scenario",
        "clients",
        "connected",
        "duration_s",
        "in_pps",
        "out_pps",
        "total_pps",
        "rtt_ms",
        "server_rss_mb",
        "server_cpu_pct",
        "bots_cpu_pct",
        "moves",
        "attacks",
        "kills",
        "chats",
        "resumed",
        "snapshots",
        "inputs_lost",
        "errors",
        "disconnects",
    ];

    fn measured() -> Measured {
        Measured {
            scenario: "standard",
            transport: "tcp",
            clients: 100,
            duration_s: 10,
            seed: 42,
            threads: 2,
            window_s: 10.0,
            at_start: Tally {
                frames_out: 1_000,
                frames_in: 5_000,
                moves: 100,
                ..Tally::default()
            },
            at_end: Tally {
                frames_out: 11_000,
                frames_in: 45_000,
                moves: 5_100,
                errors: 1,
                ..Tally::default()
            },
            at_exit: Tally {
                errors: 2,
                inputs_lost: 3,
                ..Tally::default()
            },
            connected: 99,
            rtt: RttSummary {
                p50: 1.5,
                p99: 4.25,
                p999: 9.0,
                max: 12.0,
                samples: 1000,
            },
            server: None,
            bots_cpu: Some((1.0, 3.0)),
            ..Measured::default()
        }
    }

    #[test]
    fn json_has_the_bench_fields_in_order() {
        let line = Summary::build(&measured()).to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let obj = v.as_object().unwrap();
        for key in REQUIRED {
            assert!(obj.contains_key(*key), "missing {key} in {line}");
        }
        let rtt = obj["rtt_ms"].as_object().unwrap();
        for key in ["p50", "p99", "p999", "max"] {
            assert!(rtt[key].is_number(), "rtt_ms.{key}");
        }
        assert_eq!(rtt.len(), 4);
        // Fields come out in the spec's order.
        let positions: Vec<_> = REQUIRED
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert!(line.starts_with("{\"scenario\":\"standard\",\"clients\":100,"));
        assert!(line.contains("\"duration_s\":10,"));
    }

    #[test]
    fn rates_from_the_bots_without_admin() {
        let s = Summary::build(&measured());
        assert_eq!(s.pps_source, "bots");
        assert_eq!(s.in_pps, 1000.0);
        assert_eq!(s.out_pps, 4000.0);
        assert_eq!(s.total_pps, 5000.0);
        assert_eq!(s.moves, 5000);
        assert_eq!(
            (s.bots_frames_sent, s.bots_frames_received),
            (10_000, 40_000)
        );
        assert_eq!(s.errors, 2);
        assert_eq!(s.inputs_lost, 3);
        assert_eq!(s.bots_cpu_pct, 20.0);
        assert_eq!(s.server_cpu_pct, 0.0);
        assert_eq!(s.server_rss_mb, 0.0);
    }

    #[test]
    fn rates_from_the_server_with_admin() {
        let mut m = measured();
        let a = ServerSample {
            frames_in: 100.0,
            frames_out: 200.0,
            cpu_seconds: 5.0,
            rss_bytes: 10.0 * 1024.0 * 1024.0,
            ..ServerSample::default()
        };
        let b = ServerSample {
            frames_in: 10_100.0,
            frames_out: 40_200.0,
            cpu_seconds: 12.5,
            rss_bytes: 64.0 * 1024.0 * 1024.0,
            ..ServerSample::default()
        };
        m.server = Some((a, b));
        let s = Summary::build(&m);
        assert_eq!(s.pps_source, "server");
        assert_eq!(s.in_pps, 1000.0);
        assert_eq!(s.out_pps, 4000.0);
        assert_eq!(s.server_cpu_pct, 75.0);
        assert_eq!(s.server_rss_mb, 64.0);
        assert_eq!(s.bots_in_pps, 1000.0);
    }

    #[test]
    fn arena_fields_only_for_the_arena() {
        let line = Summary::build(&measured()).to_json_line();
        assert!(!line.contains("matches_played"), "{line}");
        let mut m = measured();
        m.scenario = "arena";
        m.at_exit.matches_played = 12;
        m.at_exit.results_committed = 24;
        let v: serde_json::Value =
            serde_json::from_str(&Summary::build(&m).to_json_line()).unwrap();
        assert_eq!(v["matches_played"], 12);
        assert_eq!(v["results_committed"], 24);
    }

    #[test]
    fn storm_fields_only_for_the_storm() {
        let line = Summary::build(&measured()).to_json_line();
        assert!(!line.contains("resume_all_ms"), "{line}");
        assert!(!line.contains("growth_ok"), "{line}");
        let mut m = measured();
        m.scenario = "reconnect-storm";
        m.storm = Some(StormReport {
            dropped: 100,
            completed: 100,
            last_us: 1_234_567,
            ..StormReport::default()
        });
        let line = Summary::build(&m).to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["resume_all_ms"], 1234.567);
        assert_eq!(v["storm_dropped"], 100);
        // Not everyone came back: present, and null.
        m.storm = Some(StormReport {
            dropped: 100,
            completed: 99,
            failed: 1,
            ..StormReport::default()
        });
        let v: serde_json::Value =
            serde_json::from_str(&Summary::build(&m).to_json_line()).unwrap();
        assert!(v["resume_all_ms"].is_null());
        assert_eq!(v["storm_failed"], 1);
        assert_eq!(Summary::build(&m).exit_code(), 0);
    }

    #[test]
    fn soak_fields_carry_the_curve_and_the_verdict() {
        let mut m = measured();
        m.scenario = "soak";
        let samples = vec![
            Sample {
                t: 0.0,
                rss_mb: 10.0,
                fds: 30.0,
                sessions: 9.0,
                connections: 9.0,
                players: 9,
            },
            Sample {
                t: 10.0,
                rss_mb: 12.5,
                fds: 31.0,
                sessions: 10.0,
                connections: 10.0,
                players: 10,
            },
        ];
        m.soak = Some(SoakOutcome {
            samples,
            growth_ok: false,
            growth: None,
        });
        let s = Summary::build(&m);
        assert_eq!(s.exit_code(), 3);
        let v: serde_json::Value = serde_json::from_str(&s.to_json_line()).unwrap();
        assert_eq!(v["growth_ok"], false);
        assert_eq!(v["server_rss_peak_mb"], 12.5);
        let first = &v["samples"][0];
        for key in ["t", "rss_mb", "fds", "sessions"] {
            assert!(first[key].is_number(), "samples[0].{key}");
        }
        assert_eq!(v["samples"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn attack_fields_only_with_an_attack() {
        let line = Summary::build(&measured()).to_json_line();
        for key in ["\"attack\"", "legit_lost", "recovery_s", "attack_detail"] {
            assert!(!line.contains(key), "{key} in {line}");
        }
        let mut m = measured();
        m.attack = Some(crate::attack::AttackReport::example());
        let line = Summary::build(&m).to_json_line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        // docs/BENCHMARKS.md's attack fields, at the top level.
        assert_eq!(v["attack"], "connflood");
        assert!(v["legit_rtt_p99_ms_during"].is_number());
        assert_eq!(v["legit_lost"], 0);
        assert!(v["recovery_s"].is_number());
        assert_eq!(v["server_rss_peak_mb"], 150.0);
        assert!(v["attack_detail"]["attackers"]["close_codes"].is_object());
        assert!(line.starts_with("{\"scenario\":\"standard\","));
        // With the soak's own server_rss_peak_mb: once at the top level,
        // once in attack_detail.
        m.soak = Some(SoakOutcome::default());
        let line = Summary::build(&m).to_json_line();
        assert_eq!(line.matches("\"server_rss_peak_mb\"").count(), 2, "{line}");
        let top: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line).unwrap();
        assert!(top.contains_key("attack_detail"));
    }

    #[test]
    fn an_empty_window_divides_by_nothing() {
        let mut m = measured();
        m.window_s = 0.0;
        let s = Summary::build(&m);
        assert_eq!(s.in_pps, 0.0);
        assert_eq!(s.bots_cpu_pct, 0.0);
    }
}

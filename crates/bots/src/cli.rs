//! Command-line flags.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// Drives thousands of scripted players against a Tether server and prints
/// one JSON summary line on stdout (progress goes to stderr once a second).
#[derive(Debug, Clone, Parser)]
#[command(name = "tether-bots", version, about)]
pub struct Args {
    /// The server's game address.
    #[arg(long, env = "TETHER_BOTS_ADDR", default_value = "127.0.0.1:7777")]
    pub addr: SocketAddr,

    /// Other servers of the same game (a cluster's), comma-separated:
    /// players start spread over `--addr` and these, and each tries the
    /// next one when its server cannot be reached (redirects between a
    /// cluster's servers are followed whatever this says).
    #[arg(long, value_delimiter = ',')]
    pub other_addrs: Vec<SocketAddr>,

    /// The server's admin address; when given, server frames in/out, CPU and
    /// RSS are scraped from its /metrics at the start and end of the
    /// measured window.
    #[arg(long, env = "TETHER_BOTS_ADMIN")]
    pub admin: Option<SocketAddr>,

    /// A viewer (or operator) token for the admin listener, when the server
    /// has admin tokens set.
    #[arg(long, env = "TETHER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Connect over WebSocket: `--addr` is then the server's `ws_listen`.
    #[arg(long)]
    pub websocket: bool,

    /// Players to log in.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Length of the measured window, in seconds (after the ramp).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,

    /// Seconds over which the logins are spread.
    #[arg(long, default_value_t = 10)]
    pub ramp: u64,

    #[arg(long, value_enum, default_value_t = Scenario::Standard)]
    pub scenario: Scenario,

    /// Seed of every random choice (phases, walks); random if not given.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Moves per second per player (arena: on its turn, a player moves
    /// after about 1 / this many seconds).
    #[arg(long, default_value_t = 5.0)]
    pub move_hz: f64,

    /// How long a bot lets received frames wait for an acknowledgement
    /// (standalone `Ack`, or carried by its next input), ms [default: the
    /// client library's, 1000].
    #[arg(long, value_name = "MS")]
    pub ack_delay_ms: Option<u64>,

    /// Character names are `{prefix}{index}` (1-24 chars of [A-Za-z0-9_]).
    #[arg(long, default_value = "bot")]
    pub name_prefix: String,

    /// Index of the first player, so several bot processes can share one
    /// server without sharing names.
    #[arg(long, default_value_t = 0)]
    pub first_index: usize,

    /// Secret for minting login tickets (`ticket` auth). Not supported yet:
    /// the bots log in with `dev` auth.
    #[arg(long, env = "TETHER_TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: Option<String>,

    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,

    /// At the end, how long to wait (seconds) for the server to acknowledge
    /// the inputs already sent before counting the rest as lost.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,

    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// Chaos: close random bots' sockets (without logout, as a network
    /// failure would) at this many per second across the run, while they
    /// play (the measured window). The clients resume by themselves; the
    /// resumes are counted in `resumed`, and a drop is not an error. Works
    /// with every scenario.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub chaos: f64,

    /// The first reconnect attempt after a lost connection waits a random
    /// time in [0, this] (ms; later attempts double it, up to 5 s). It
    /// spreads a mass reconnect without adding seconds to it.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub reconnect_window_ms: u64,

    /// `reconnect-storm`: seconds played after the ramp before every
    /// socket is closed at one instant.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub storm_after: f64,

    /// `soak`: server RSS and open file descriptors are sampled from
    /// `--admin` this often (seconds).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub sample_secs: f64,

    /// `soak`: seconds from the start of the run (the ramp included) after
    /// which RSS and descriptors must stop growing; the level at that point
    /// is the reference.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub warmup_secs: f64,

    /// `soak`: growth over the warm-up level, in %, above which the run
    /// fails (exit code 3).
    #[arg(long, default_value_t = 10.0, value_name = "PCT")]
    pub growth_limit_pct: f64,

    /// `soak`: a player plays this long on average (uniformly 0.5x to 1.5x)
    /// before its next action (drop and resume, log out and come back, stay
    /// away past the zombie grace and log in fresh, or keep playing).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub soak_cycle_secs: f64,

    /// Append every durable confirmation the bots receive (`LootGranted`:
    /// character, gold, items, tx id) to FILE, one JSON line each, written
    /// as it arrives so that it survives the server or the bots being
    /// killed mid-run.
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<std::path::PathBuf>,

    /// Instead of a run: log every character in FILE (a `--ledger`) in,
    /// check that its gold and items hold at least what the ledger
    /// confirmed, print one JSON line with `checked` and `missing`; exit
    /// code 4 when anything is missing.
    #[arg(long, value_name = "FILE", conflicts_with = "ledger")]
    pub verify_ledger: Option<std::path::PathBuf>,

    /// `--attack NAME` and its settings (docs/ATTACKS.md).
    #[command(flatten)]
    pub attack: crate::attack::AttackArgs,
}

/// What the players do. Each scenario is one module under `scenario/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Log in over the ramp, then move, attack, chat and ping (docs/BENCHMARKS.md).
    Standard,
    /// Standard players; `--storm-after` seconds after the ramp every
    /// socket is closed at one instant (no logout) and the time until every
    /// session has resumed and received a frame is measured.
    ReconnectStorm,
    /// Standard players that, each on its own irregular schedule, drop and
    /// resume, log out and come back, or stay away until their zombie
    /// session expires; the server's RSS and descriptors are sampled and
    /// must not grow after the warm-up (needs `--admin`).
    Soak,
    /// Players of the arena (a server started with `--game arena`): they
    /// queue, play four-in-a-row matches (a move about every
    /// `1 / --move-hz` s on their turn), wait for the durable result and
    /// queue again.
    Arena,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Standard => "standard",
            Scenario::ReconnectStorm => "reconnect-storm",
            Scenario::Soak => "soak",
            Scenario::Arena => "arena",
        }
    }
}

impl Args {
    /// How the players connect (`--websocket`).
    pub fn transport(&self) -> tether_client::Transport {
        if self.websocket {
            tether_client::Transport::WebSocket { path: "/".into() }
        } else {
            tether_client::Transport::Tcp
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.clients > 0, "--clients must be at least 1");
        anyhow::ensure!(self.threads > 0, "--threads must be at least 1");
        anyhow::ensure!(
            self.move_hz > 0.0 && self.move_hz <= 100.0,
            "--move-hz must be in (0, 100]"
        );
        anyhow::ensure!(
            self.drain >= 0.0 && self.drain <= 60.0,
            "--drain must be 0-60 s"
        );
        anyhow::ensure!(
            self.chaos.is_finite() && self.chaos >= 0.0,
            "--chaos must be a rate >= 0 (sockets closed per second)"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.reconnect_window_ms),
            "--reconnect-window-ms must be 1-10000"
        );
        match self.scenario {
            Scenario::Standard | Scenario::Arena => {}
            Scenario::ReconnectStorm => {
                anyhow::ensure!(
                    self.storm_after.is_finite() && self.storm_after >= 0.0,
                    "--storm-after must be >= 0"
                );
                anyhow::ensure!(
                    self.storm_after < self.duration as f64,
                    "--storm-after ({} s) must fall inside --duration ({} s)",
                    self.storm_after,
                    self.duration
                );
            }
            Scenario::Soak => {
                anyhow::ensure!(
                    self.admin.is_some(),
                    "--scenario soak samples the server's RSS and descriptors: give --admin"
                );
                anyhow::ensure!(
                    self.sample_secs >= 0.1 && self.sample_secs <= 3600.0,
                    "--sample-secs must be 0.1-3600"
                );
                anyhow::ensure!(
                    self.soak_cycle_secs >= 0.5 && self.soak_cycle_secs <= 86_400.0,
                    "--soak-cycle-secs must be 0.5-86400"
                );
                anyhow::ensure!(
                    self.growth_limit_pct > 0.0 && self.growth_limit_pct.is_finite(),
                    "--growth-limit-pct must be > 0"
                );
                let run_s = (self.ramp + self.duration) as f64;
                anyhow::ensure!(
                    self.warmup_secs >= 0.0 && self.warmup_secs + 2.0 * self.sample_secs <= run_s,
                    "--warmup-secs ({} s) must leave at least two samples (--sample-secs {}) before the run ends at {} s (ramp + duration)",
                    self.warmup_secs,
                    self.sample_secs,
                    run_s
                );
            }
        }
        self.attack.validate(self.duration)?;
        let last = self.first_index + self.clients - 1;
        for name in [self.name(self.first_index), self.name(last)] {
            anyhow::ensure!(
                tether_client::is_valid_name(&name),
                "character name {name:?} is not 1-24 chars of [A-Za-z0-9_]: shorten --name-prefix"
            );
        }
        Ok(())
    }

    /// The character name of player `index`.
    pub fn name(&self, index: usize) -> String {
        format!("{}{}", self.name_prefix, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_bench_spec() {
        let a = Args::parse_from(["tether-bots"]);
        assert_eq!(a.addr, "127.0.0.1:7777".parse().unwrap());
        assert_eq!(a.clients, 100);
        assert_eq!(a.duration, 30);
        assert_eq!(a.ramp, 10);
        assert_eq!(a.move_hz, 5.0);
        assert_eq!(a.threads, 2);
        assert_eq!(a.scenario, Scenario::Standard);
        assert!(a.admin.is_none());
        assert_eq!(a.chaos, 0.0);
        assert_eq!(a.sample_secs, 10.0);
        assert_eq!(a.warmup_secs, 300.0);
        assert_eq!(a.growth_limit_pct, 10.0);
        a.validate().unwrap();
    }

    #[test]
    fn scenario_flags_are_checked() {
        let a = Args::parse_from(["tether-bots", "--scenario", "reconnect-storm"]);
        assert_eq!(a.scenario.name(), "reconnect-storm");
        a.validate().unwrap();
        let a = Args::parse_from([
            "tether-bots",
            "--scenario",
            "reconnect-storm",
            "--duration",
            "2",
            "--storm-after",
            "3",
        ]);
        assert!(a.validate().is_err());
        // Soak needs the admin endpoint and room after the warm-up.
        let a = Args::parse_from(["tether-bots", "--scenario", "soak", "--duration", "60"]);
        assert!(a.validate().is_err());
        let soak = |warmup: &str| {
            Args::parse_from([
                "tether-bots",
                "--scenario",
                "soak",
                "--admin",
                "127.0.0.1:7780",
                "--duration",
                "60",
                "--ramp",
                "5",
                "--sample-secs",
                "2",
                "--warmup-secs",
                warmup,
            ])
        };
        soak("20").validate().unwrap();
        assert!(soak("300").validate().is_err());
        let a = Args::parse_from(["tether-bots", "--chaos=-1"]);
        assert!(a.validate().is_err());
        let a = Args::parse_from(["tether-bots", "--chaos", "20"]);
        a.validate().unwrap();
    }

    #[test]
    fn names_are_checked() {
        let a = Args::parse_from([
            "tether-bots",
            "--name-prefix",
            "a_very_long_prefix_name",
            "--clients",
            "100",
        ]);
        assert!(a.validate().is_err());
        let a = Args::parse_from(["tether-bots", "--name-prefix", "bad-name"]);
        assert!(a.validate().is_err());
        let a = Args::parse_from(["tether-bots", "--name-prefix", "b", "--clients", "10000"]);
        a.validate().unwrap();
        assert_eq!(a.name(42), "b42");
    }
}

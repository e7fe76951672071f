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

    /// The server's admin address; when given, server frames in/out, CPU and
    /// RSS are scraped from its /metrics at the start and end of the
    /// measured window.
    #[arg(long, env = "TETHER_BOTS_ADMIN")]
    pub admin: Option<SocketAddr>,

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

    /// Moves per second per player.
    #[arg(long, default_value_t = 5.0)]
    pub move_hz: f64,

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
}

/// What the players do. Each scenario is one module under `scenario/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Log in over the ramp, then move, attack, chat and ping (BENCH.md).
    Standard,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Standard => "standard",
        }
    }
}

impl Args {
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

//! Scenarios: what the players do. One module per scenario; each spawns its
//! players (a [`Brain`](crate::bot::Brain) per player, driven by
//! [`run_bot`](crate::bot::run_bot)) and may add scenario-specific steps to
//! the run (a mass disconnect, an attack beside the legit load).
//!
//! - [`standard`]: the headline load.
//! - `reconnect-storm`: standard players whose [`Script`] closes every
//!   socket at one instant, [`storm_instant`]; the runner waits until every
//!   session is back and reports `resume_all_ms`.
//! - [`soak`]: standard players that churn through drop / resume / logout /
//!   expiry; the runner samples the server and judges growth.
//! - [`arena`]: players of the arena (`tether --game arena`): queue, play
//!   four-in-a-row matches, wait for the durable result, queue again.
//! - `--chaos RATE` adds random socket kills to any of them (also through
//!   the [`Script`]).
//!
//! docs/BENCHMARKS.md's attack scenarios are not scenarios of their own: `--attack
//! NAME` runs beside any of these (`crate::attack`).

pub mod arena;
pub mod soak;
pub mod standard;

use std::sync::Arc;
use std::time::Duration;

use tether_client::{ClientConfig, Login, ReconnectPolicy};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bot::{Script, Shared};
use crate::cli::{Args, Scenario};

/// Spawns the scenario's players into `set`.
pub fn spawn(args: &Args, seed: u64, shared: &Arc<Shared>, t0: Instant, set: &mut JoinSet<()>) {
    let script = script(args, t0);
    if script.storm_at.is_some() {
        shared.storm.arm(args.clients);
    }
    if args.scenario == Scenario::Arena {
        arena::spawn(args, seed, shared, t0, set, &script);
    } else {
        standard::spawn(args, seed, shared, t0, set, &script);
    }
}

/// What every bot of the run inflicts on itself.
pub fn script(args: &Args, t0: Instant) -> Script {
    Script {
        storm_at: (args.scenario == Scenario::ReconnectStorm).then(|| storm_instant(args, t0)),
        chaos_rate: args.chaos / args.clients.max(1) as f64,
        soak_cycle: (args.scenario == Scenario::Soak)
            .then(|| Duration::from_secs_f64(args.soak_cycle_secs)),
    }
}

/// The reconnect storm's instant: `--storm-after` seconds into the measured
/// window (which starts when the ramp ends).
pub fn storm_instant(args: &Args, t0: Instant) -> Instant {
    t0 + Duration::from_secs(args.ramp) + Duration::from_secs_f64(args.storm_after)
}

/// Bytes per read for a bot's client: a bot sees a few hundred frames a
/// second, and 10,000 of them share the machine with the server.
const BOT_READ_CHUNK: usize = 4 * 1024;

/// A bot's write backlog cap: a healthy bot has a few frames queued.
const BOT_MAX_WRITE_BACKLOG: usize = 16 * 1024;

/// The client config of player `index`.
pub fn client_config(args: &Args, index: usize, seed: u64) -> ClientConfig {
    // Players start spread over the entry points, in turn.
    let entries: Vec<_> = std::iter::once(args.addr)
        .chain(args.other_addrs.iter().copied())
        .collect();
    let first = index % entries.len();
    let mut cfg = ClientConfig::new(entries[first], login(args, index));
    cfg.other_addrs = entries[first + 1..]
        .iter()
        .chain(&entries[..first])
        .copied()
        .collect();
    cfg.client_name = concat!("tether-bots/", env!("CARGO_PKG_VERSION")).to_string();
    cfg.read_chunk = BOT_READ_CHUNK;
    cfg.max_write_backlog = BOT_MAX_WRITE_BACKLOG;
    cfg.reconnect = ReconnectPolicy {
        // A loaded server answers logins late; give the ramp room.
        max_attempts: 10,
        // The first attempt after a loss waits a random time within the
        // window: thousands of bots that lost their sockets at one instant
        // (the storm) come back spread over it rather than in one burst,
        // and none of them waits more than the window. Later attempts
        // double it.
        base_delay: Duration::from_millis(args.reconnect_window_ms),
        max_delay: Duration::from_secs(5),
        jitter_first: true,
    };
    cfg.handshake_timeout = Duration::from_secs(15);
    if let Some(ms) = args.ack_delay_ms {
        cfg.session.ack_delay_ms = ms;
    }
    cfg.seed = Some(mix(seed, index as u64, 0));
    cfg.transport = args.transport();
    cfg
}

/// How player `index` logs in. The seam for `ticket` auth: with
/// `--ticket-secret` this would mint `NAME.EXPIRY.HMAC` here (refused for
/// now in [`crate::run::run`]).
pub fn login(args: &Args, index: usize) -> Login {
    Login::Dev(args.name(index))
}

/// When the `i`-th of `n` players logs in: evenly over the ramp.
pub fn start_time(t0: Instant, ramp_s: u64, i: usize, n: usize) -> Instant {
    if n == 0 {
        return t0;
    }
    t0 + Duration::from_secs(ramp_s).mul_f64(i as f64 / n as f64)
}

/// A per-player, per-purpose seed from the run's seed (splitmix64), so one
/// `--seed` reproduces every player's choices.
pub fn mix(seed: u64, index: u64, purpose: u64) -> u64 {
    let mut z = seed
        ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_spreads_logins_evenly() {
        let t0 = Instant::now();
        assert_eq!(start_time(t0, 10, 0, 100), t0);
        assert_eq!(start_time(t0, 10, 50, 100), t0 + Duration::from_secs(5));
        assert!(start_time(t0, 10, 99, 100) < t0 + Duration::from_secs(10));
        assert_eq!(start_time(t0, 0, 99, 100), t0);
    }

    #[test]
    fn seeds_differ_per_player_and_purpose() {
        assert_ne!(mix(1, 0, 0), mix(1, 1, 0));
        assert_ne!(mix(1, 0, 0), mix(1, 0, 1));
        assert_eq!(mix(1, 2, 3), mix(1, 2, 3));
    }
}

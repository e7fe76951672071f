//! One bot: a [`Client`] plus a scenario's [`Brain`], run as one tokio task.
//!
//! The task owns everything it touches, wakes on one timer (the client's,
//! fed the brain's next action time through `next_event_until`), counts into
//! a private [`Tally`] and hands it to the shared [`Counters`] about once a
//! second. What every scenario counts the same way (frames, pongs and their
//! round trip, kills, command errors, disconnects, resumes, inputs lost) is
//! counted here; the brain only decides what to send.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rand::{rngs::SmallRng, Rng};
use tether_client::{
    Client, ClientConfig, ClientError, ClientStats, Command, Event, GameEvent, PauseReason,
    SendError,
};
use tokio::time::{sleep_until, Instant};

use crate::stats::{Counters, RttHistograms, RttSample, Tally};

/// How often a bot adds its tally to the shared counters.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// While the connection is down the brain sleeps; the bot looks again this
/// often (the client wakes it earlier with `Resumed`).
const PAUSED_TICK: Duration = Duration::from_millis(250);

/// Where the run is. Bots read it on every timer wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Logging in; nothing counted towards the window yet.
    Ramp = 0,
    /// The measured window.
    Measure = 1,
    /// Stop sending, wait for acks, log out.
    Drain = 2,
}

/// What all bots of a run share.
pub struct Shared {
    /// Ping timestamps are microseconds since this instant.
    pub epoch: Instant,
    phase: AtomicU8,
    pub counters: Counters,
    pub rtt: RttHistograms,
    /// Sessions currently attached to a connection.
    pub connected: AtomicI64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Ramp as u8),
            counters: Counters::default(),
            rtt: RttHistograms::default(),
            connected: AtomicI64::new(0),
        }
    }
}

impl Shared {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Ramp,
            1 => Phase::Measure,
            _ => Phase::Drain,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Relaxed);
    }

    /// Microseconds since the run's epoch: a `Ping.client_time`.
    pub fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    pub fn connected(&self) -> i64 {
        self.connected.load(Relaxed)
    }
}

/// Where a brain's commands go: the client, or a recorder in tests.
pub trait Outbox {
    fn send(&mut self, cmd: Command) -> Result<u32, SendError>;
}

impl Outbox for Client {
    fn send(&mut self, cmd: Command) -> Result<u32, SendError> {
        Client::send(self, cmd)
    }
}

/// A scenario's player logic.
pub trait Brain: Send + 'static {
    /// The login completed. Returns when to call `on_tick` first.
    fn on_login(&mut self, client: &Client, now: Instant) -> Instant;
    /// A counted frame arrived (already counted by the bot).
    fn on_game(&mut self, ev: &GameEvent);
    /// A resume fell back to a snapshot: drop the view of the world.
    fn on_resynced(&mut self);
    /// Sends what is due at `now` (only called while the session is live
    /// and the run is not draining). Returns when to be called next.
    fn on_tick(
        &mut self,
        out: &mut dyn Outbox,
        tally: &mut Tally,
        shared: &Shared,
        now: Instant,
    ) -> Instant;
}

/// How one bot's run ended.
enum End {
    /// The run is over: drain and log out.
    Drain,
    /// The client ended on its own (error, or logged out by the server).
    Ended,
}

struct Bot<'a> {
    shared: &'a Shared,
    tally: Tally,
    /// Round-trip samples since the last flush (about one a second).
    rtt: Vec<RttSample>,
    me: u64,
    live: bool,
    /// Client counters at the last flush.
    seen: ClientStats,
}

/// Runs player `index` from `start_at` until the run drains.
pub async fn run_bot<B: Brain>(
    index: usize,
    start_at: Instant,
    cfg: ClientConfig,
    mut brain: B,
    shared: Arc<Shared>,
    drain: Duration,
    mut rng: SmallRng,
) {
    sleep_until(start_at).await;
    if shared.phase() >= Phase::Drain {
        return;
    }
    let mut bot = Bot {
        shared: &shared,
        tally: Tally::default(),
        rtt: Vec::with_capacity(4),
        me: 0,
        live: false,
        seen: ClientStats::default(),
    };
    let mut client = match Client::connect(cfg).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(index, error = %e, "login failed");
            bot.tally.errors += 1;
            bot.tally.connect_failures += match e {
                ClientError::GaveUp { attempts, .. } => u64::from(attempts),
                _ => 1,
            };
            shared.counters.add(&bot.tally);
            return;
        }
    };
    bot.me = client.entity_id();
    bot.set_live(true);
    bot.tally.logins += 1;
    let now = Instant::now();
    let mut wake = brain.on_login(&client, now);
    // Random phase, so the shared counters see a steady trickle.
    let mut next_flush = now + FLUSH_EVERY.mul_f64(rng.random::<f64>());

    let end = loop {
        match client.next_event_until(wake.min(next_flush)).await {
            Some(Ok(Event::Deadline)) => {
                let now = Instant::now();
                if now >= next_flush {
                    bot.flush(&client);
                    next_flush = now + FLUSH_EVERY;
                }
                if shared.phase() >= Phase::Drain {
                    break End::Drain;
                }
                if now >= wake {
                    wake = if client.is_live() {
                        brain.on_tick(&mut client, &mut bot.tally, &shared, now)
                    } else {
                        now + PAUSED_TICK
                    };
                }
            }
            Some(Ok(ev)) => {
                if bot.on_event(ev, &mut brain).is_some() {
                    break End::Ended;
                }
            }
            Some(Err(e)) => {
                tracing::debug!(index, error = %e, "client ended");
                bot.tally.errors += 1;
                break End::Ended;
            }
            None => break End::Ended,
        }
    };

    if let End::Drain = end {
        // Stop sending; give the server `drain` to acknowledge what it got.
        let deadline = Instant::now() + drain;
        let mut ended = false;
        while client.unacked_inputs() > 0 && !ended {
            match client.next_event_until(deadline).await {
                Some(Ok(Event::Deadline)) => break,
                Some(Ok(ev)) => ended = bot.on_event(ev, &mut brain).is_some(),
                Some(Err(_)) => {
                    bot.tally.errors += 1;
                    ended = true;
                }
                None => ended = true,
            }
        }
        bot.tally.inputs_lost += client.unacked_inputs() as u64;
        if !ended {
            client.logout();
            while let Some(ev) = client.next_event().await {
                match ev {
                    Ok(Event::LoggedOut) => break,
                    Ok(Event::Game(g)) => bot.count_game(&g, false),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(index, error = %e, "logout failed");
                        bot.tally.errors += 1;
                        break;
                    }
                }
            }
        }
    } else {
        bot.tally.inputs_lost += client.unacked_inputs() as u64;
    }
    bot.set_live(false);
    bot.flush(&client);
}

impl Bot<'_> {
    /// Counts a lifecycle or game event and passes it to the brain.
    /// `Some(())` when the client has ended.
    fn on_event<B: Brain>(&mut self, ev: Event, brain: &mut B) -> Option<()> {
        match ev {
            Event::Game(g) => {
                self.count_game(&g, true);
                brain.on_game(&g);
            }
            Event::Paused(reason) => {
                self.tally.disconnects += 1;
                // The server closing us (slow consumer, heartbeat, rate
                // limit...) or going silent is a failure; a plain EOF or
                // reset is counted as a disconnect only.
                if matches!(reason, PauseReason::Closed { .. } | PauseReason::Silent) {
                    self.tally.errors += 1;
                }
                tracing::debug!(me = self.me, ?reason, "connection lost");
                self.set_live(false);
            }
            Event::Resumed { .. } => {
                self.tally.resumed += 1;
                self.set_live(true);
            }
            Event::Resynced { .. } => {
                self.tally.resumed += 1;
                self.tally.snapshots += 1;
                brain.on_resynced();
                self.set_live(true);
            }
            Event::LoggedOut => {
                // Nobody asked: the server ended the session.
                self.tally.errors += 1;
                return Some(());
            }
            _ => {}
        }
        None
    }

    /// What every scenario counts from game frames.
    fn count_game(&mut self, g: &GameEvent, record_rtt: bool) {
        match g {
            GameEvent::Pong(p) => {
                self.tally.pongs += 1;
                let phase = self.shared.phase();
                if record_rtt && phase != Phase::Drain {
                    let now_us = self.shared.now_us(Instant::now());
                    self.rtt.push(RttSample {
                        us: now_us.saturating_sub(p.client_time),
                        in_window: phase == Phase::Measure,
                    });
                }
            }
            GameEvent::Death(d) if d.killer == self.me && d.id != self.me => {
                self.tally.kills += 1;
            }
            GameEvent::CommandError(_) => self.tally.command_errors += 1,
            GameEvent::Correction(_) => self.tally.corrections += 1,
            _ => {}
        }
    }

    fn set_live(&mut self, live: bool) {
        if live != self.live {
            self.live = live;
            self.shared
                .connected
                .fetch_add(if live { 1 } else { -1 }, Relaxed);
        }
    }

    /// Hands the tally, the client's frame counts and the round-trip
    /// samples to the shared totals.
    fn flush(&mut self, client: &Client) {
        let s = client.stats();
        self.tally.frames_in += s.frames_in - self.seen.frames_in;
        self.tally.frames_out += s.frames_out - self.seen.frames_out;
        let failures = s.connect_failures - self.seen.connect_failures;
        self.tally.connect_failures += failures;
        self.tally.errors += failures;
        self.seen = s;
        self.shared.counters.add(&self.tally);
        self.tally = Tally::default();
        self.shared.rtt.record(&self.rtt);
        self.rtt.clear();
    }
}

//! One bot: a [`Client`] plus a scenario's [`Brain`], run as one tokio task.
//!
//! The task owns everything it touches, wakes on one timer (the client's,
//! fed the brain's next action time through `next_event_until`), counts into
//! a private [`Tally`] and hands it to the shared [`Counters`] about once a
//! second. What every scenario counts the same way (frames, pongs and their
//! round trip, kills, command errors, disconnects, resumes, inputs lost) is
//! counted here; the brain only decides what to send.
//!
//! Besides playing, a bot follows its [`Script`]: the faults it inflicts on
//! itself, at instants known in advance so that no coordinator has to reach
//! into thousands of tasks:
//!
//! - the reconnect storm: close the socket at one instant shared by all bots;
//! - `--chaos`: close the socket at random (a Poisson process per bot; the
//!   bots together close `--chaos` sockets a second);
//! - soak churn: every so often drop and resume, log out and come back, walk
//!   away until the zombie session expires and log in fresh, or keep going.
//!
//! A socket the bot closes itself is not an error: the client resumes, the
//! resume is counted in `resumed`, and the time from the drop until the first
//! counted frame after the resume goes to [`Shared::resumes`]. A connection
//! the server or the network ends is timed the same way, into
//! [`Shared::outages`]: the pause the player sees.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rand::{rngs::SmallRng, Rng};
use tether_client::{
    Client, ClientConfig, ClientError, ClientStats, Command, Event, GameEvent, PauseReason,
    SendError,
};
use tokio::time::{sleep_until, Instant};

use crate::ledger::{self, Ledger};
use crate::scenario::soak::{self, Action};
use crate::stats::{Counters, ResumeTimes, RttHistograms, RttSample, Tally};

/// How often a bot adds its tally to the shared counters.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// While the connection is down the brain sleeps; the bot looks again this
/// often (the client wakes it earlier with `Resumed`).
const PAUSED_TICK: Duration = Duration::from_millis(250);

/// While a soak player is away, it looks at the run's phase this often.
const AWAY_TICK: Duration = Duration::from_millis(500);

/// How long a player leaving mid-run (soak) waits at least for the server to
/// acknowledge what it sent, before counting the rest as lost.
const LEAVE_SETTLE: Duration = Duration::from_secs(10);

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
    /// Drop-to-first-frame times of the sockets the bots closed themselves.
    pub resumes: ResumeTimes,
    /// Drop-to-first-frame times of the connections the server or the
    /// network ended (a restart, an upgrade, a crash): the pause a player
    /// sees.
    pub outages: ResumeTimes,
    pub storm: Storm,
    /// `--ledger`: where every `LootGranted` is written (set before the bots
    /// start).
    pub ledger: OnceLock<Ledger>,
    /// Close codes already reported in the log (bit per code).
    close_codes_logged: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Ramp as u8),
            counters: Counters::default(),
            rtt: RttHistograms::default(),
            connected: AtomicI64::new(0),
            resumes: ResumeTimes::default(),
            outages: ResumeTimes::default(),
            storm: Storm::default(),
            ledger: OnceLock::new(),
            close_codes_logged: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// Whether `code` is seen here for the first time (so it gets one log
    /// line).
    pub fn first_close_code(&self, code: tether_client::pb::CloseCode) -> bool {
        let bit = 1u64 << ((code as i32).clamp(0, 63) as u32);
        self.close_codes_logged.fetch_or(bit, Relaxed) & bit == 0
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

/// The reconnect storm's bookkeeping. Every armed bot settles its part
/// exactly once: it is `dropped` at the instant (then `completed` or
/// `failed`), or `missed` it (not connected then, or gone before it).
#[derive(Debug, Default)]
pub struct Storm {
    /// Armed bots that have not reached the instant yet.
    pending: AtomicI64,
    dropped: AtomicU64,
    missed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    /// The latest completion, µs after the storm instant.
    last_us: AtomicU64,
}

/// The storm's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StormReport {
    pub pending: i64,
    /// Sessions whose socket was closed at the instant.
    pub dropped: u64,
    /// Bots that were not connected at the instant (or never got there).
    pub missed: u64,
    /// Dropped sessions that resumed and received a counted frame.
    pub completed: u64,
    /// Dropped sessions whose client ended before that.
    pub failed: u64,
    /// When the last completion happened, µs after the instant.
    pub last_us: u64,
}

impl StormReport {
    /// Every bot has acted on the storm and every dropped session has an
    /// outcome.
    pub fn settled(&self) -> bool {
        self.pending <= 0 && self.completed + self.failed >= self.dropped
    }

    /// The time until 100 % of `clients` sessions had resumed and received a
    /// frame; `None` unless every one of them was dropped and came back.
    pub fn all_back_ms(&self, clients: usize) -> Option<f64> {
        (self.dropped == clients as u64 && self.completed == self.dropped)
            .then(|| crate::stats::round3(self.last_us as f64 / 1000.0))
    }
}

impl Storm {
    /// `n` bots will take part.
    pub fn arm(&self, n: usize) {
        self.pending.fetch_add(n as i64, Relaxed);
    }

    pub fn report(&self) -> StormReport {
        StormReport {
            pending: self.pending.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            missed: self.missed.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            last_us: self.last_us.load(Relaxed),
        }
    }

    fn reached(&self, dropped: bool) {
        if dropped {
            self.dropped.fetch_add(1, Relaxed);
        } else {
            self.missed.fetch_add(1, Relaxed);
        }
        self.pending.fetch_sub(1, Relaxed);
    }

    fn complete(&self, us: u64) {
        self.last_us.fetch_max(us, Relaxed);
        self.completed.fetch_add(1, Relaxed);
    }

    fn fail(&self) {
        self.failed.fetch_add(1, Relaxed);
    }
}

/// Where a brain's commands go: the client, or a recorder in tests.
pub trait Outbox {
    fn send(&mut self, cmd: Command) -> Result<u32, SendError>;

    /// A command of a game other than the MMO, already encoded
    /// ([`Client::send_raw`]); `ping` when it is a round-trip probe whose
    /// answer the bot checks off. Outboxes that only know the MMO refuse.
    fn send_raw(&mut self, _cmd: Bytes, _ping: bool) -> Result<u32, SendError> {
        Err(SendError::OtherGame)
    }
}

impl Outbox for Client {
    fn send(&mut self, cmd: Command) -> Result<u32, SendError> {
        Client::send(self, cmd)
    }

    fn send_raw(&mut self, cmd: Bytes, _ping: bool) -> Result<u32, SendError> {
        Client::send_raw(self, cmd)
    }
}

/// The client as the brain's outbox, counting the pings that go out so
/// their pongs can be checked off.
struct Counted<'a> {
    client: &'a mut Client,
    pings_out: &'a mut i64,
}

impl Outbox for Counted<'_> {
    fn send(&mut self, cmd: Command) -> Result<u32, SendError> {
        let ping = matches!(cmd, Command::Ping { .. });
        let r = self.client.send(cmd);
        if ping && r.is_ok() {
            *self.pings_out += 1;
        }
        r
    }

    fn send_raw(&mut self, cmd: Bytes, ping: bool) -> Result<u32, SendError> {
        let r = self.client.send_raw(cmd);
        if ping && r.is_ok() {
            *self.pings_out += 1;
        }
        r
    }
}

/// What a frame of another game's schema meant, for the counts every bot
/// keeps (the brain decodes it; the bot counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameNote {
    /// The answer to a ping: its `client_time`.
    pub pong: Option<u64>,
    /// An input was applied without effect.
    pub command_error: bool,
    /// A match this bot was in ended (counted once per match: by the
    /// player who moved first).
    pub match_played: bool,
    /// A durable result arrived.
    pub result_committed: bool,
}

/// A scenario's player logic.
pub trait Brain: Send + 'static {
    /// The login completed. Returns when to call `on_tick` first.
    fn on_login(&mut self, client: &Client, now: Instant) -> Instant;
    /// A counted frame arrived (already counted by the bot).
    fn on_game(&mut self, ev: &GameEvent);
    /// A counted frame of another game's schema arrived
    /// ([`Event::GameFrame`]): the payload of one of its server messages.
    fn on_frame(&mut self, _payload: &Bytes) -> FrameNote {
        FrameNote::default()
    }
    /// The ping sent right after a resume, when the game is not the MMO:
    /// its encoded command ([`Outbox::send_raw`]). `None`: the MMO's `Ping`.
    fn resume_probe(&self, _client_time: u64) -> Option<Bytes> {
        None
    }
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

/// The faults and churn one bot inflicts on itself (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Reconnect storm: close the socket at this instant.
    pub storm_at: Option<Instant>,
    /// Chaos: this bot's socket closes per second (its share of `--chaos`),
    /// while the run is in its measured window.
    pub chaos_rate: f64,
    /// Soak: average play time between two actions.
    pub soak_cycle: Option<Duration>,
}

/// How one client's life ended.
enum Life {
    /// The run is over: drain and log out.
    Drain,
    /// The client ended on its own (error, or logged out by the server).
    Ended,
    /// Soak: leave (with a logout, or by walking away) and log in again
    /// after `away`.
    Leave { logout: bool, away: Duration },
}

/// A socket the bot closed itself, until the first frame after the resume.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    since: Instant,
    /// When `Resumed` / `Resynced` arrived; the next counted frame
    /// completes it.
    resumed_at: Option<Instant>,
    /// This is the storm's drop.
    storm: bool,
    /// The bot closed the socket itself (a resume time); otherwise the
    /// server or the network did (an outage, as a player sees it).
    own: bool,
}

struct Bot<'a> {
    shared: &'a Shared,
    /// The character's name, for the ledger.
    character: String,
    script: Script,
    rng: SmallRng,
    tally: Tally,
    /// Round-trip samples since the last flush (about one a second).
    rtt: Vec<RttSample>,
    me: u64,
    live: bool,
    /// Client counters at the last flush.
    seen: ClientStats,
    /// Pings sent by the current client whose pong has not arrived.
    pings_out: i64,
    /// Still has to act on the storm.
    storm_armed: bool,
    awaiting: Option<Awaiting>,
    next_chaos: Option<Instant>,
}

/// Runs player `index` from `start_at` until the run drains.
#[allow(clippy::too_many_arguments)]
pub async fn run_bot<B: Brain>(
    index: usize,
    start_at: Instant,
    cfg: ClientConfig,
    mut brain: B,
    shared: Arc<Shared>,
    drain: Duration,
    rng: SmallRng,
    script: Script,
) {
    let mut bot = Bot {
        shared: &shared,
        character: ledger::character_of(&cfg.login),
        storm_armed: script.storm_at.is_some(),
        script,
        rng,
        tally: Tally::default(),
        rtt: Vec::with_capacity(4),
        me: 0,
        live: false,
        seen: ClientStats::default(),
        pings_out: 0,
        awaiting: None,
        next_chaos: None,
    };
    sleep_until(start_at).await;
    let mut lives = 0u64;
    // The previous life left without resuming (how, when, for how long):
    // the next login must find no session (it was logged out, or expired).
    let mut expect_fresh: Option<(&str, Instant, Duration)> = None;
    while shared.phase() < Phase::Drain {
        let mut cfg = cfg.clone();
        cfg.seed = cfg
            .seed
            .map(|s| s ^ lives.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        lives += 1;
        let mut client = match Client::connect(cfg).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(index, error = %e, "login failed");
                bot.tally.errors += 1;
                bot.tally.connect_failures += match e {
                    ClientError::GaveUp { attempts, .. } => u64::from(attempts),
                    _ => 1,
                };
                break;
            }
        };
        if let Some((after, left_at, away)) = expect_fresh.take() {
            if client.welcome().took_over {
                tracing::warn!(
                    index,
                    after,
                    away_ms = left_at.elapsed().as_millis() as u64,
                    planned_ms = away.as_millis() as u64,
                    grace_ms = client.welcome().resume_grace_ms,
                    "a login found the old session still there"
                );
                bot.tally.stale_sessions += 1;
                bot.tally.errors += 1;
            }
        }
        match bot.play(&mut client, &mut brain).await {
            Life::Drain => {
                bot.settle(&mut client, &mut brain, Instant::now() + drain, false)
                    .await;
                bot.logout(&mut client, &mut brain).await;
                bot.end_life(&client);
                break;
            }
            Life::Ended => {
                bot.end_life(&client);
                break;
            }
            Life::Leave { logout, away } => {
                // Wait for the acks (and pongs) of what was sent, so that
                // anything still missing afterwards is a real loss. A player
                // leaving mid-run can wait longer than the final drain: a
                // loaded server's round trips can pass a couple of seconds.
                let settle_for = drain.max(LEAVE_SETTLE);
                bot.settle(
                    &mut client,
                    &mut brain,
                    Instant::now() + settle_for,
                    !logout,
                )
                .await;
                let mut away = away;
                let mut left = if logout { "logout" } else { "expiry" };
                if logout && client.is_live() {
                    bot.logout(&mut client, &mut brain).await;
                } else if logout {
                    // Still reconnecting: a logout cannot reach the server,
                    // so the session stays behind as a zombie. Come back
                    // only once it has expired.
                    let grace = Duration::from_millis(u64::from(client.welcome().resume_grace_ms));
                    away = away.max(soak::expiry_wait(grace, &mut bot.rng));
                    left = "expiry (logout while reconnecting)";
                }
                bot.end_life(&client);
                // Without a logout, dropping the client closes the socket:
                // the session stays behind as a zombie until it expires.
                drop(client);
                expect_fresh = Some((left, Instant::now(), away));
                if !bot.away(away).await {
                    break;
                }
            }
        }
    }
    if bot.storm_armed {
        bot.storm_armed = false;
        shared.storm.reached(false);
    }
    bot.set_live(false);
    bot.flush(None);
}

impl Bot<'_> {
    /// Plays one client's life until the run drains, the client ends, or a
    /// soak action takes the player away.
    async fn play<B: Brain>(&mut self, client: &mut Client, brain: &mut B) -> Life {
        self.me = client.entity_id();
        self.seen = ClientStats::default();
        self.pings_out = 0;
        self.set_live(true);
        self.tally.logins += 1;
        let now = Instant::now();
        let mut wake = brain.on_login(client, now);
        if self.storm_armed && self.script.storm_at.is_some_and(|t| now >= t) {
            // Logged in after the instant: not part of the storm.
            self.storm_armed = false;
            self.shared.storm.reached(false);
        }
        if self.script.chaos_rate > 0.0 && self.next_chaos.is_none_or(|t| t < now) {
            // First life, or back from away: no burst of overdue kills.
            self.next_chaos = Some(now + self.chaos_gap());
        }
        let mut next_soak = self
            .script
            .soak_cycle
            .map(|c| now + soak::play_time(c, &mut self.rng));
        // Random phase, so the shared counters see a steady trickle.
        let mut next_flush = now + FLUSH_EVERY.mul_f64(self.rng.random::<f64>());

        loop {
            let mut until = wake.min(next_flush);
            for t in [self.storm_due(), self.next_chaos, next_soak]
                .into_iter()
                .flatten()
            {
                until = until.min(t);
            }
            match client.next_event_until(until).await {
                Some(Ok(Event::Deadline)) => {
                    let now = Instant::now();
                    if now >= next_flush {
                        self.flush(Some(client));
                        next_flush = now + FLUSH_EVERY;
                    }
                    if self.shared.phase() >= Phase::Drain {
                        return Life::Drain;
                    }
                    self.storm_tick(client, now);
                    self.chaos_tick(client, now);
                    if let (Some(due), Some(cycle)) = (next_soak, self.script.soak_cycle) {
                        if now >= due {
                            next_soak = Some(now + soak::play_time(cycle, &mut self.rng));
                            match soak::pick(&mut self.rng) {
                                Action::Stay => self.tally.soak_stays += 1,
                                Action::DropResume => {
                                    if self.awaiting.is_none() && self.cut(client, now, false) {
                                        self.tally.soak_drops += 1;
                                    }
                                }
                                Action::LogoutReturn => {
                                    self.tally.soak_logouts += 1;
                                    let away = soak::away_time(cycle, &mut self.rng);
                                    return Life::Leave { logout: true, away };
                                }
                                Action::ExpireReturn => {
                                    self.tally.soak_expiries += 1;
                                    let grace = Duration::from_millis(u64::from(
                                        client.welcome().resume_grace_ms,
                                    ));
                                    let away = soak::expiry_wait(grace, &mut self.rng);
                                    return Life::Leave {
                                        logout: false,
                                        away,
                                    };
                                }
                            }
                        }
                    }
                    if now >= wake {
                        wake = if client.is_live() {
                            let mut out = Counted {
                                client: &mut *client,
                                pings_out: &mut self.pings_out,
                            };
                            brain.on_tick(&mut out, &mut self.tally, self.shared, now)
                        } else {
                            now + PAUSED_TICK
                        };
                    }
                }
                Some(Ok(ev)) => {
                    if self.on_event(ev, brain, client).is_some() {
                        return Life::Ended;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(me = self.me, error = %e, "client ended");
                    self.tally.errors += 1;
                    return Life::Ended;
                }
                None => return Life::Ended,
            }
        }
    }

    /// Sends nothing more and waits, up to `deadline`, until the session is
    /// live and the server has acknowledged every input (and, with
    /// `pongs`, answered every ping).
    async fn settle<B: Brain>(
        &mut self,
        client: &mut Client,
        brain: &mut B,
        deadline: Instant,
        pongs: bool,
    ) {
        while !client.is_ended()
            && (client.unacked_inputs() > 0 || !client.is_live() || (pongs && self.pings_out > 0))
        {
            match client.next_event_until(deadline).await {
                Some(Ok(Event::Deadline)) => break,
                Some(Ok(ev)) => {
                    if self.on_event(ev, brain, client).is_some() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(me = self.me, error = %e, "client ended while settling");
                    self.tally.errors += 1;
                    break;
                }
                None => break,
            }
        }
    }

    /// Logs out and waits for the server's `Close` (frames queued before it
    /// still arrive and are counted).
    async fn logout<B: Brain>(&mut self, client: &mut Client, brain: &mut B) {
        if client.is_ended() {
            return;
        }
        client.logout();
        while let Some(ev) = client.next_event().await {
            match ev {
                Ok(Event::LoggedOut) => break,
                Ok(Event::Game(g)) => {
                    self.count_game(&g, false);
                    brain.on_game(&g);
                }
                Ok(Event::GameFrame(payload)) => {
                    let note = brain.on_frame(&payload);
                    self.count_note(&note, false);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(me = self.me, error = %e, "logout failed");
                    self.tally.errors += 1;
                    break;
                }
            }
        }
    }

    /// One client's life is over: count what it never got back.
    fn end_life(&mut self, client: &Client) {
        self.tally.inputs_lost += client.unacked_inputs() as u64;
        self.tally.pongs_missing += self.pings_out.max(0) as u64;
        self.pings_out = 0;
        if let Some(a) = self.awaiting.take() {
            if a.storm {
                self.shared.storm.fail();
            }
        }
        self.set_live(false);
        self.flush(Some(client));
        self.seen = ClientStats::default();
    }

    /// Soak: stays away for `away`. `false` when the run started draining
    /// meanwhile.
    async fn away(&mut self, away: Duration) -> bool {
        let back = Instant::now() + away;
        loop {
            if self.shared.phase() >= Phase::Drain {
                return false;
            }
            let now = Instant::now();
            if now >= back {
                return true;
            }
            sleep_until(back.min(now + AWAY_TICK)).await;
        }
    }

    fn storm_due(&self) -> Option<Instant> {
        if self.storm_armed {
            self.script.storm_at
        } else {
            None
        }
    }

    /// At the storm's instant: close the socket.
    fn storm_tick(&mut self, client: &mut Client, now: Instant) {
        if self.storm_due().is_none_or(|t| now < t) {
            return;
        }
        self.storm_armed = false;
        // A chaos drop still waiting for its first frame gives way: the
        // storm's measurement takes over.
        let dropped = client.is_live() && self.cut(client, now, true);
        if dropped {
            self.tally.storm_drops += 1;
            tracing::debug!(
                me = self.me,
                late_us = now
                    .saturating_duration_since(self.script.storm_at.unwrap_or(now))
                    .as_micros() as u64,
                "storm drop"
            );
        }
        self.shared.storm.reached(dropped);
    }

    /// Chaos: when this bot's next kill is due, close the socket (only in
    /// the measured window, and only a live one not already coming back).
    fn chaos_tick(&mut self, client: &mut Client, now: Instant) {
        let Some(due) = self.next_chaos else {
            return;
        };
        if now < due {
            return;
        }
        self.next_chaos = Some(due.max(now) + self.chaos_gap());
        if self.shared.phase() == Phase::Measure
            && client.is_live()
            && self.awaiting.is_none()
            && self.cut(client, now, false)
        {
            self.tally.chaos_kills += 1;
        }
    }

    /// The wait until this bot's next chaos kill: exponential, so the kills
    /// of all bots together form a Poisson process at `--chaos` a second.
    fn chaos_gap(&mut self) -> Duration {
        exp_gap(self.script.chaos_rate, &mut self.rng)
    }

    /// Closes the socket without logout; `true` if there was one to close.
    fn cut(&mut self, client: &mut Client, now: Instant, storm: bool) -> bool {
        let before = client.stats().disconnects;
        client.drop_connection();
        if client.stats().disconnects == before {
            return false;
        }
        self.awaiting = Some(Awaiting {
            since: if storm {
                self.script.storm_at.unwrap_or(now)
            } else {
                now
            },
            resumed_at: None,
            storm,
            own: true,
        });
        true
    }

    /// Counts a lifecycle or game event and passes it to the brain.
    /// `Some(())` when the client has ended.
    fn on_event<B: Brain>(&mut self, ev: Event, brain: &mut B, client: &mut Client) -> Option<()> {
        match ev {
            Event::Game(g) => {
                self.count_game(&g, true);
                brain.on_game(&g);
                self.frame_arrived();
            }
            Event::GameFrame(payload) => {
                let note = brain.on_frame(&payload);
                self.count_note(&note, true);
                self.frame_arrived();
            }
            Event::Paused(reason) => {
                self.tally.disconnects += 1;
                // The server closing us (slow consumer, heartbeat, rate
                // limit...) or going silent is a failure; a plain EOF or
                // reset, or a drop of our own, is counted as a disconnect
                // only.
                match &reason {
                    PauseReason::Closed { code, .. } => {
                        // A stop or restart of the server tells its players
                        // when to come back, and a move to another server
                        // of a cluster where to go: not failures of this run.
                        use tether_client::pb::CloseCode;
                        if !matches!(*code, CloseCode::ServerShutdown | CloseCode::Redirect) {
                            self.tally.errors += 1;
                        }
                        self.tally.closed_by_server += 1;
                        // One line per code and bot process is enough to
                        // say why; the count is in the summary.
                        if self.shared.first_close_code(*code) {
                            tracing::warn!(me = self.me, ?reason, "the server closed a connection");
                        }
                    }
                    PauseReason::Silent => {
                        self.tally.errors += 1;
                        self.tally.silences += 1;
                    }
                    _ => {}
                }
                tracing::debug!(me = self.me, ?reason, "connection lost");
                match &mut self.awaiting {
                    Some(a) => a.resumed_at = None,
                    // Not a drop of the bot's own: the pause this player
                    // sees is measured from here.
                    None => {
                        self.awaiting = Some(Awaiting {
                            since: Instant::now(),
                            resumed_at: None,
                            storm: false,
                            own: false,
                        })
                    }
                }
                self.set_live(false);
            }
            Event::Resumed { .. } | Event::Resynced { .. } => {
                self.tally.resumed += 1;
                if matches!(ev, Event::Resynced { .. }) {
                    self.tally.snapshots += 1;
                    brain.on_resynced();
                }
                self.set_live(true);
                if let Some(a) = &mut self.awaiting {
                    a.resumed_at = Some(Instant::now());
                    // A round trip right away: its pong is a post-resume
                    // frame even for a player nobody and nothing is near.
                    let client_time = self.shared.now_us(Instant::now());
                    let mut out = Counted {
                        client,
                        pings_out: &mut self.pings_out,
                    };
                    let sent = match brain.resume_probe(client_time) {
                        Some(probe) => out.send_raw(probe, true),
                        None => out.send(Command::Ping { client_time }),
                    };
                    if sent.is_ok() {
                        self.tally.pings += 1;
                    }
                }
            }
            Event::LoggedInAgain { inputs_dropped } => {
                // The session was gone (its resume refused): the client
                // logged in again. A lost session is a failure of the run,
                // and what it had not acknowledged is lost with it.
                self.tally.errors += 1;
                self.tally.logins += 1;
                self.tally.inputs_lost += inputs_dropped as u64;
                self.me = client.entity_id();
                self.pings_out = 0;
                brain.on_resynced();
                self.set_live(true);
                if let Some(a) = &mut self.awaiting {
                    a.resumed_at = Some(Instant::now());
                }
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

    /// A counted frame arrived: if it is the first after a drop of the
    /// bot's own, the resume is complete.
    fn frame_arrived(&mut self) {
        let Some(a) = self.awaiting else {
            return;
        };
        let Some(resumed_at) = a.resumed_at else {
            return;
        };
        self.awaiting = None;
        let us = |t: Instant| {
            u64::try_from(t.saturating_duration_since(a.since).as_micros()).unwrap_or(u64::MAX)
        };
        let back_us = us(Instant::now());
        if !a.own {
            self.shared.outages.record(back_us);
            return;
        }
        self.shared.resumes.record(back_us);
        if a.storm {
            tracing::debug!(
                me = self.me,
                resumed_us = us(resumed_at),
                back_us,
                "back from the storm"
            );
            self.shared.storm.complete(back_us);
        }
    }

    /// A pong arrived: one ping less outstanding, and a round trip.
    fn count_pong(&mut self, client_time: u64, record_rtt: bool) {
        self.tally.pongs += 1;
        self.pings_out -= 1;
        let phase = self.shared.phase();
        if record_rtt && phase != Phase::Drain {
            let now_us = self.shared.now_us(Instant::now());
            self.rtt.push(RttSample {
                us: now_us.saturating_sub(client_time),
                in_window: phase == Phase::Measure,
                during_attack: self.shared.rtt.attack_on(),
            });
        }
    }

    /// What every scenario counts from another game's frames.
    fn count_note(&mut self, note: &FrameNote, record_rtt: bool) {
        if let Some(t) = note.pong {
            self.count_pong(t, record_rtt);
        }
        self.tally.command_errors += u64::from(note.command_error);
        self.tally.matches_played += u64::from(note.match_played);
        self.tally.results_committed += u64::from(note.result_committed);
    }

    /// What every scenario counts from game frames.
    fn count_game(&mut self, g: &GameEvent, record_rtt: bool) {
        match g {
            GameEvent::Pong(p) => self.count_pong(p.client_time, record_rtt),
            GameEvent::Death(d) if d.killer == self.me && d.id != self.me => {
                self.tally.kills += 1;
            }
            GameEvent::CommandError(_) => self.tally.command_errors += 1,
            GameEvent::Loot(l) => {
                if let Some(ledger) = self.shared.ledger.get() {
                    if let Err(e) = ledger.record(&self.character, l) {
                        tracing::warn!(error = %e, path = %ledger.path().display(), "cannot write the ledger");
                        self.tally.errors += 1;
                    }
                }
            }
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
    fn flush(&mut self, client: Option<&Client>) {
        if let Some(client) = client {
            let s = client.stats();
            self.tally.frames_in += s.frames_in - self.seen.frames_in;
            self.tally.frames_out += s.frames_out - self.seen.frames_out;
            let failures = s.connect_failures - self.seen.connect_failures;
            self.tally.connect_failures += failures;
            self.tally.errors += failures;
            self.seen = s;
        }
        self.shared.counters.add(&self.tally);
        self.tally = Tally::default();
        self.shared.rtt.record(&self.rtt);
        self.rtt.clear();
    }
}

/// An exponentially distributed wait with `rate` events a second (the gap
/// of a Poisson process); effectively never for a rate of 0.
pub fn exp_gap(rate: f64, rng: &mut SmallRng) -> Duration {
    if rate <= 0.0 {
        return Duration::from_secs(365 * 24 * 3600);
    }
    // 1 - U is in (0, 1]: the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    Duration::from_secs_f64((-u.ln() / rate).min(365.0 * 24.0 * 3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn chaos_gaps_average_one_over_the_rate() {
        let mut rng = SmallRng::seed_from_u64(9);
        let n = 20_000;
        let total: f64 = (0..n).map(|_| exp_gap(0.02, &mut rng).as_secs_f64()).sum();
        let mean = total / n as f64;
        // 1 / 0.02 = 50 s, within 3 %.
        assert!((mean - 50.0).abs() < 1.5, "{mean}");
        assert!(exp_gap(0.0, &mut rng) > Duration::from_secs(3600));
    }

    #[test]
    fn storm_settles_and_times_the_last_session() {
        let s = Storm::default();
        s.arm(3);
        assert!(!s.report().settled());
        s.reached(true);
        s.reached(true);
        s.reached(true);
        assert!(!s.report().settled());
        s.complete(1_500);
        s.complete(900);
        assert!(!s.report().settled());
        assert_eq!(s.report().all_back_ms(3), None);
        s.complete(1_200);
        let r = s.report();
        assert!(r.settled());
        assert_eq!(r.all_back_ms(3), Some(1.5));
        // One bot that never took part: not 100 %.
        assert_eq!(r.all_back_ms(4), None);
    }

    #[test]
    fn a_failed_session_settles_but_is_not_back() {
        let s = Storm::default();
        s.arm(2);
        s.reached(true);
        s.reached(false);
        s.complete(10);
        let r = s.report();
        assert!(r.settled());
        assert_eq!((r.dropped, r.missed), (1, 1));
        assert_eq!(r.all_back_ms(2), None);
        let s = Storm::default();
        s.arm(1);
        s.reached(true);
        s.fail();
        assert!(s.report().settled());
        assert_eq!(s.report().all_back_ms(1), None);
    }
}

//! A shard thread: the driver around one [`Engine`] and its game.
//!
//! Everything a shard decides (logins, resumes, take-overs, acks,
//! exactly-once inputs, timers, what to save and commit) is the engine's,
//! sans IO. This thread only moves things: it pops the I/O threads' rings,
//! the cross-shard bus and storage's answers into the engine, pushes what
//! the engine wants written onto the rings, runs the tick when due, feeds
//! protect mode its measurements and copies the engine's counters into the
//! metrics.
//!
//! ```text
//!  ToShard rings (one per I/O thread) --+
//!  cross-shard bus ----------------------+--> Engine<G> --> ShardHost: ToIo rings (frames as
//!  storage events -----------------------+                  they are made), store writer,
//!  the clock (tick when due) ------------+                  directory, bus
//! ```
//!
//! The loop never waits on anything but an empty inbox: it drains the rings,
//! runs the tick when due, flushes what the engine produced, and parks until
//! the next tick or until an I/O thread wakes it.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_engine::{
    BusMsg, Engine, EngineConfig, EngineStats, Game, Host, LoadFailed, Record, RefusedResume,
    StorageBusy, Takeover, Transmit, Tx, Undeliverable,
};
use tether_proto::pb::CloseCode;
use tether_session::{ResumeToken, SessionConfig};
use tether_store::{Health, StoreError, StoreEvent, StoreEvents, StoreHandle, SubmitError};
use tracing::{info, warn};

use crate::cluster::ClusterLink;
use crate::config::{Config, TakeoverPolicy};
use crate::control;
use crate::directory::Directory;
use crate::guard::{Defences, ProtectConfig, ProtectMode, ProtectOverride};
use crate::link::{close_frame, ConnRef, IoLink, IoWaker, Outlet, ShardWaker, ToIo, ToShard};
use crate::metrics::{labels, Metrics};

/// Messages taken from one I/O ring before looking at the others, so one
/// busy I/O thread cannot starve the rest.
const INBOX_BATCH: usize = 4096;

/// Outbound messages a shard holds for one I/O thread whose ring is full.
/// Past this the shard stops sending to that thread's connections and cuts
/// them to zombie instead (their frames stay in the replay buffers).
const OUTBOUND_OVERFLOW_CAP: usize = 256 * 1024;

/// Outbound messages held for an I/O thread past which the shard stops
/// taking new inputs (backpressure): inputs are what make most frames, so
/// while the I/O thread catches up they wait in the inbound rings, then in
/// the clients' sockets (the I/O thread stops reading when the rings are
/// full). Far below the cap, so a machine that is merely saturated slows
/// its players down instead of cutting them.
const OUTBOUND_HIGH_WATER: usize = OUTBOUND_OVERFLOW_CAP / 8;

/// Cross-shard bus messages waiting per shard; beyond it, messages to that
/// shard are refused (a whisper's sender gets RATE_LIMITED; a broadcast's
/// copy for that shard is lost).
pub const BUS_CAPACITY: usize = 4096;

/// What a login refused for storage is told to wait before trying again.
const STORAGE_RETRY_AFTER_MS: u32 = 2_000;

/// How often resident memory is read for protect mode (when a memory
/// budget is set): one small /proc read a second.
const RSS_SAMPLE_MS: u64 = 1_000;

/// Idle pages kept by the replay page pool (~1 MiB of page vectors); more are
/// given back to the allocator.
const POOL_MAX_IDLE_PAGES: usize = 4096;

/// How long a stopping shard waits for its I/O threads to take its last
/// messages.
const STOP_FLUSH_BOUND: Duration = Duration::from_secs(2);

/// Senders to every shard's bus, with their wakers.
pub struct Bus<R> {
    pub senders: Vec<SyncSender<BusMsg<R>>>,
    pub wakers: Vec<Arc<ShardWaker>>,
}

impl<R> Clone for Bus<R> {
    fn clone(&self) -> Self {
        Bus {
            senders: self.senders.clone(),
            wakers: self.wakers.clone(),
        }
    }
}

/// Loads a shard keeps back at most: while storage is held for an upgrade
/// (the old process is still saving) or its queue is full. Past it, a
/// login or resume is closed with `STORAGE_UNAVAILABLE` (retry later).
pub const MAX_DEFERRED_LOADS: usize = 65_536;

/// A load kept back, in the order the engine asked for it.
#[derive(Debug)]
enum DeferredLoad {
    Account(String, u64),
    Session(u64, u64),
}

/// The engine's way out, in a server process: the rings to the I/O
/// threads, the store writer, the account directory, the other shards'
/// buses and the OS random source.
pub struct ShardHost<R> {
    index: u16,
    /// One per I/O thread, by its index.
    io: Vec<IoOut>,
    /// Connections whose I/O thread's spill is at [`OUTBOUND_OVERFLOW_CAP`]:
    /// the shard cuts them once the engine call that found them returns
    /// ([`Shard::cut_backlogged`]). At most one entry per connection.
    cut: HashSet<ConnRef>,
    store: StoreHandle,
    directory: Arc<Directory>,
    bus: Bus<R>,
    /// Set while the process this one replaces may still be writing
    /// (`tether --replace`): loads wait, since they could read an older copy.
    loads_held: Arc<AtomicBool>,
    /// Loads not yet handed to the store (held, or its queue was full),
    /// oldest first; bounded by [`MAX_DEFERRED_LOADS`].
    deferred: VecDeque<DeferredLoad>,
    /// The other servers (cluster mode).
    cluster: Option<ClusterLink>,
}

/// The way to one I/O thread.
struct IoOut {
    tx: Outlet<ToIo>,
    waker: Arc<IoWaker>,
}

impl<R> ShardHost<R> {
    /// Moves what the I/O rings have room for onto them, and wakes each I/O
    /// thread that was sent something.
    fn flush_io(&mut self) {
        for out in &mut self.io {
            out.tx.flush();
            if out.tx.take_touched() {
                out.waker.wake();
            }
        }
    }

    /// Messages held because an I/O ring was full, over all I/O threads.
    fn io_backlog(&self) -> usize {
        self.io.iter().map(|o| o.tx.spilled()).sum()
    }

    /// Queues a load the store cannot take now.
    fn defer(&mut self, load: DeferredLoad) -> Result<(), StorageBusy> {
        if self.deferred.len() >= MAX_DEFERRED_LOADS {
            return Err(StorageBusy);
        }
        self.deferred.push_back(load);
        Ok(())
    }

    /// Sends a load, or keeps it back: behind earlier ones (order is kept),
    /// while loads are held, or while the store's queue is full.
    fn submit(&mut self, load: DeferredLoad) -> Result<(), StorageBusy> {
        if !self.deferred.is_empty() || self.loads_held.load(Ordering::Acquire) {
            return self.defer(load);
        }
        match self.send(&load) {
            Ok(()) => Ok(()),
            Err(SubmitError::StoreFull(())) => self.defer(load),
            Err(SubmitError::Closed(())) => Err(StorageBusy),
        }
    }

    fn send(&self, load: &DeferredLoad) -> Result<(), SubmitError> {
        match load {
            DeferredLoad::Account(account, tag) => self.store.load(account, *tag),
            DeferredLoad::Session(id, tag) => self.store.load_session(*id, *tag),
        }
    }

    /// Hands the loads kept back to the store, as many as it takes. Called
    /// on every turn of the shard loop; costs one check when none wait.
    /// `true` when some were sent.
    pub(crate) fn pump_loads(&mut self) -> bool {
        if self.deferred.is_empty() || self.loads_held.load(Ordering::Acquire) {
            return false;
        }
        let mut sent = false;
        while let Some(load) = self.deferred.front() {
            match self.send(load) {
                Ok(()) => {
                    self.deferred.pop_front();
                    sent = true;
                }
                // Full: the rest wait for the next turn.
                Err(SubmitError::StoreFull(())) => break,
                // The writer is gone (shutting down): the engine's clients
                // are closed by the shutdown itself.
                Err(SubmitError::Closed(())) => {
                    self.deferred.clear();
                    break;
                }
            }
        }
        sent
    }

    /// Loads kept back now.
    pub(crate) fn deferred_loads(&self) -> usize {
        self.deferred.len()
    }
}

impl<R> Host<R> for ShardHost<R> {
    fn transmit(&mut self, t: Transmit) {
        match t {
            Transmit::Frame { conn, frame } => {
                let out = &mut self.io[conn.io as usize].tx;
                if out.spilled() >= OUTBOUND_OVERFLOW_CAP {
                    // The I/O thread is not keeping up at all. Dropping a
                    // frame from the middle of a stream would corrupt it, so
                    // the connection is cut instead; the frame stays in the
                    // session's replay buffer.
                    self.cut.insert(conn);
                } else {
                    out.push(ToIo::Frame { conn, frame });
                }
            }
            // A Close always goes, past the cap if need be: there is one
            // per connection, and the socket must not linger half-dead.
            Transmit::Close { conn, frame } => {
                self.io[conn.io as usize]
                    .tx
                    .push(ToIo::Close { conn, frame });
            }
        }
    }

    fn resume_token(&mut self) -> ResumeToken {
        let mut t = [0u8; 16];
        getrandom::fill(&mut t).expect("the OS random source is available");
        ResumeToken(t)
    }

    fn load(&mut self, account: &str, tag: u64) -> Result<(), StorageBusy> {
        self.submit(DeferredLoad::Account(account.to_string(), tag))
    }

    fn load_session(&mut self, session_id: u64, tag: u64) -> Result<(), StorageBusy> {
        self.submit(DeferredLoad::Session(session_id, tag))
    }

    fn save_dirty(&mut self, records: &mut Vec<Record>) {
        self.store.mark_dirty_all(records.drain(..));
    }

    fn save_now(&mut self, record: Record) {
        self.store.save_now(record);
    }

    fn commit(&mut self, tx: Tx) -> Result<(), Tx> {
        self.store.commit(tx).map_err(|e| e.into_inner())
    }

    fn accepts_logins(&self) -> bool {
        self.store.accepts_logins()
    }

    fn accepts_value(&self) -> bool {
        self.store.accepts_value()
    }

    fn claim(&mut self, account: &str) -> bool {
        self.directory.claim(account, self.index)
    }

    fn release(&mut self, account: &str) {
        self.directory.release(account, self.index);
        if self.cluster.is_some() {
            self.store.release(account);
        }
    }

    fn hand_over(&mut self, account: &str, node: &str, tag: u64) -> bool {
        self.directory.release(account, self.index);
        self.store.hand_over(account, node, tag);
        true
    }

    fn locate(&self, account: &str) -> Option<u16> {
        self.directory.locate(account)
    }

    fn population(&mut self, delta: isize) {
        self.directory.add_population(self.index, delta);
    }

    fn shard_count(&self) -> u16 {
        self.bus.senders.len() as u16
    }

    fn send_bus(&mut self, shard: u16, msg: BusMsg<R>) -> Result<(), BusMsg<R>> {
        let result = match self.bus.senders[shard as usize].try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) | Err(TrySendError::Disconnected(msg)) => Err(msg),
        };
        self.bus.wakers[shard as usize].wake();
        result
    }

    fn send_other_node(&mut self, account: &str, msg: Bytes) -> Result<(), Undeliverable> {
        match &self.cluster {
            Some(c) => c.to_account(account, self.index, msg),
            None => Err(Undeliverable::NoSuchAccount),
        }
    }

    fn broadcast_other_nodes(&mut self, frame: &Bytes) {
        // Sent once, by the shard the broadcast started on.
        if let Some(c) = &self.cluster {
            c.broadcast(frame);
        }
    }
}

/// A store's redirect as the wire's.
fn redirect(to: tether_store::Redirect) -> tether_proto::pb::Redirect {
    tether_proto::pb::Redirect {
        node: to.node,
        address: to.address,
        ws_url: to.ws_url,
    }
}

/// What a shard thread is started with.
pub struct ShardParts<G: Game> {
    pub index: u16,
    pub engine: EngineConfig,
    pub protect: ProtectConfig,
    pub game: G,
    pub io: Vec<IoLink<G::Input>>,
    pub waker: Arc<ShardWaker>,
    pub bus: Bus<G::Remote>,
    pub bus_rx: Receiver<BusMsg<G::Remote>>,
    pub directory: Arc<Directory>,
    pub store: StoreHandle,
    pub store_events: StoreEvents,
    pub metrics: Arc<Metrics>,
    pub defences: Arc<Defences>,
    pub shutdown: Arc<AtomicBool>,
    /// Loads wait while it is set (see [`ShardHost`]).
    pub loads_held: Arc<AtomicBool>,
    /// Operator requests (the admin API).
    pub control: Receiver<control::Request>,
    pub clock: Instant,
    /// The other servers (cluster mode).
    pub cluster: Option<ClusterLink>,
}

/// Protect mode's settings from the server's.
pub fn protect_config(cfg: &Config) -> ProtectConfig {
    ProtectConfig {
        tick_lag_ms: cfg.protect_tick_lag_ms,
        memory_budget_bytes: cfg.protect_memory_bytes,
        calm_ms: cfg.protect_calm_ms,
    }
}

/// The engine's settings from the server's.
pub fn engine_config(cfg: &Config, shard: u16) -> EngineConfig {
    EngineConfig {
        shard,
        session: SessionConfig {
            replay_cap_frames: cfg.replay_cap_frames,
            zombie_replay_cap_frames: cfg.zombie_replay_cap_frames,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            keepalive_interval_ms: cfg.heartbeat_interval_ms,
            zombie_grace_ms: cfg.zombie_grace_ms,
            input_ack_every: 32,
            input_ack_delay_ms: cfg.input_ack_delay_ms,
        },
        tick_ms: cfg.tick_ms,
        takeover: match cfg.takeover {
            TakeoverPolicy::TakeOver => Takeover::Allow,
            TakeoverPolicy::Refuse => Takeover::Refuse,
        },
        unplayed_grace_ms: cfg.unplayed_zombie_grace_ms,
        storage_retry_after_ms: STORAGE_RETRY_AFTER_MS,
        pool_max_idle_pages: POOL_MAX_IDLE_PAGES,
        restart_retry_ms: cfg.restart_retry_ms.min(u64::from(u32::MAX)) as u32,
    }
}

pub struct Shard<G: Game> {
    index: u16,
    engine: Engine<G, ShardHost<G::Remote>>,
    /// The rings from the I/O threads, by their index.
    inbox: Vec<rtrb::Consumer<ToShard<G::Input>>>,
    waker: Arc<ShardWaker>,
    bus_rx: Receiver<BusMsg<G::Remote>>,
    store_events: StoreEvents,
    metrics: Arc<Metrics>,
    /// The engine's counters as last copied into `metrics`.
    exported: EngineStats,
    /// Deferred loads as last added to `metrics`.
    deferred_exported: usize,
    defences: Arc<Defences>,
    protect_cfg: ProtectConfig,
    /// Protect mode as tick lag and memory say (before any override).
    protect_auto: ProtectMode,
    /// Protect mode in force: logins refused, zombie grace frozen.
    protecting: bool,
    next_rss_ms: u64,
    shutdown: Arc<AtomicBool>,
    control: Receiver<control::Request>,
    /// How late the last tick started (ms) and how long it took (µs).
    last_tick: (u64, u64),
    /// The durations of the latest ticks, for the status's p99.
    recent_ticks: control::RecentTicks,
    clock: Instant,
    now: u64,
}

impl<G: Game> Shard<G> {
    pub fn new(p: ShardParts<G>) -> Shard<G> {
        let protect_cfg = p.protect;
        let now = p.clock.elapsed().as_millis() as u64;
        let mut inbox = Vec::with_capacity(p.io.len());
        let mut io = Vec::with_capacity(p.io.len());
        for IoLink { rx, tx, waker } in p.io {
            inbox.push(rx);
            io.push(IoOut { tx, waker });
        }
        let host = ShardHost {
            index: p.index,
            io,
            cut: HashSet::new(),
            store: p.store,
            directory: p.directory,
            bus: p.bus,
            loads_held: p.loads_held,
            deferred: VecDeque::new(),
            cluster: p.cluster,
        };
        let engine = Engine::new(p.engine, p.game, host, now);
        Shard {
            index: p.index,
            engine,
            inbox,
            waker: p.waker,
            bus_rx: p.bus_rx,
            store_events: p.store_events,
            metrics: p.metrics,
            exported: EngineStats::default(),
            deferred_exported: 0,
            defences: p.defences,
            protect_cfg,
            protect_auto: ProtectMode::default(),
            protecting: false,
            next_rss_ms: 0,
            shutdown: p.shutdown,
            control: p.control,
            last_tick: (0, 0),
            recent_ticks: control::RecentTicks::default(),
            clock: p.clock,
            now,
        }
    }

    /// The salt of the session ids this shard hands out.
    pub fn session_salt(&self) -> u32 {
        self.engine.session_salt()
    }

    fn refresh_now(&mut self) -> u64 {
        self.now = self.clock.elapsed().as_millis() as u64;
        self.now
    }

    pub fn run(mut self) {
        loop {
            let mut worked = false;
            let backlogged = self.outbound_backlogged();
            for io in 0..self.inbox.len() {
                if backlogged {
                    break;
                }
                for _ in 0..INBOX_BATCH {
                    let Ok(msg) = self.inbox[io].pop() else {
                        break;
                    };
                    worked = true;
                    self.refresh_now();
                    self.on_message(msg);
                }
            }
            while let Ok(msg) = self.bus_rx.try_recv() {
                worked = true;
                self.engine.on_bus(self.now, msg);
            }
            while let Some(event) = self.store_events.try_recv() {
                worked = true;
                self.refresh_now();
                self.on_store_event(event);
            }
            if self.engine.host_mut().pump_loads() {
                worked = true;
            }
            while let Ok(request) = self.control.try_recv() {
                worked = true;
                self.refresh_now();
                self.on_control(request);
            }
            let deferred = self.engine.host().deferred_loads();
            if deferred != self.deferred_exported {
                self.metrics
                    .loads_deferred
                    .inc_by(deferred as i64 - self.deferred_exported as i64);
                self.deferred_exported = deferred;
            }
            if self.refresh_now() >= self.engine.next_tick() {
                self.tick();
                worked = true;
            }
            self.cut_backlogged();
            self.engine.host_mut().flush_io();
            if worked {
                self.export_stats();
            }

            if self.shutdown.load(Ordering::Relaxed) {
                self.stop();
                return;
            }
            if backlogged {
                // Give the I/O threads a moment to drain what is held; new
                // inputs must not wake this thread meanwhile.
                std::thread::sleep(Duration::from_millis(1));
            } else if !worked {
                self.waker.set_sleeping(true);
                if self.inbox_empty() {
                    let wait = self.engine.next_tick().saturating_sub(self.refresh_now());
                    std::thread::park_timeout(Duration::from_millis(wait.max(1)));
                }
                self.waker.set_sleeping(false);
            }
        }
    }

    /// Whether an I/O thread is so far behind that new inputs should wait.
    fn outbound_backlogged(&self) -> bool {
        self.engine
            .host()
            .io
            .iter()
            .any(|o| o.tx.spilled() >= OUTBOUND_HIGH_WATER)
    }

    fn inbox_empty(&self) -> bool {
        self.inbox.iter().all(|rx| rx.is_empty()) && !self.shutdown.load(Ordering::Relaxed)
    }

    fn on_message(&mut self, msg: ToShard<G::Input>) {
        let now = self.now;
        match msg {
            ToShard::Login { conn, account } => self.engine.login(now, conn, account),
            ToShard::Resume { conn, resume } => self.engine.resume(now, conn, resume),
            ToShard::Input {
                conn,
                seq,
                ack,
                cmd,
            } => self.engine.input(now, conn, seq, ack, cmd),
            ToShard::Ack {
                conn,
                frames_received,
            } => self.engine.ack(now, conn, frames_received),
            ToShard::Logout { conn } => self.engine.logout(now, conn),
            ToShard::Closed { conn, .. } => {
                self.engine.closed(now, conn);
            }
        }
    }

    fn on_store_event(&mut self, event: StoreEvent) {
        let now = self.now;
        match event {
            StoreEvent::Loaded {
                account,
                tag,
                result,
            } => {
                if let Some(result) = self.unless_cluster(tag, result) {
                    self.engine.loaded(now, account, tag, result);
                }
            }
            StoreEvent::SessionLoaded { tag, result, .. } => {
                if let Some(result) = self.unless_cluster(tag, result) {
                    self.engine.session_loaded(now, tag, result);
                }
            }
            StoreEvent::Committed(tx) => self.engine.committed(now, tx),
            StoreEvent::HandedOver { account, tag, ok } => {
                if !ok {
                    warn!(shard = self.index, %account, "a move to another server did not complete; the player stays here");
                }
                self.engine.handed_over(tag, ok);
            }
            StoreEvent::Rejected { tx, error } => {
                // Never confirmed to the player; the store logged and counted it.
                warn!(shard = self.index, tx = tx.tx_id, account = %tx.account(), %error, "transaction rejected by storage");
                self.engine.rejected(now, tx);
            }
            StoreEvent::Health(health) => {
                let degraded = health == Health::Degraded;
                if degraded {
                    warn!(
                        shard = self.index,
                        "storage degraded: holding writes and retrying"
                    );
                } else {
                    info!(shard = self.index, "storage healthy again");
                }
                self.metrics.storage_degraded.set(i64::from(degraded));
            }
        }
    }

    /// A load's answer, unless it is the cluster's (the account is served
    /// elsewhere, or nobody may hold it for a moment): then the engine is
    /// told so here and `None` comes back.
    fn unless_cluster(
        &mut self,
        tag: u64,
        result: Result<Option<Record>, StoreError>,
    ) -> Option<Result<Option<Record>, LoadFailed>> {
        match result {
            Err(StoreError::Elsewhere(to)) => {
                self.engine.redirected(self.now, tag, redirect(to));
                None
            }
            Err(StoreError::Wait {
                reason,
                retry_after_ms,
            }) => {
                self.engine
                    .try_later(self.now, tag, &reason, retry_after_ms);
                None
            }
            result => Some(result.map_err(|e| LoadFailed(e.to_string()))),
        }
    }

    fn tick(&mut self) {
        let started = Instant::now();
        let now = self.now;
        // How late this tick starts: the loop's backlog, the first sign of
        // overload. Protect mode is decided before any timer fires.
        let lag = now.saturating_sub(self.engine.next_tick());
        self.update_protect(now, lag);
        self.engine.tick(now);
        let took = started.elapsed();
        self.metrics.tick_seconds.observe(took.as_secs_f64());
        self.last_tick = (lag, took.as_micros() as u64);
        self.recent_ticks.push(self.last_tick.1);
    }

    /// An operator's request (the admin API), answered at once.
    fn on_control(&mut self, request: control::Request) {
        use control::{Answer, PlayerRow, Query};
        let shard = self.index;
        let answer = match request.query {
            Query::Status => Answer::Status(control::ShardStatus {
                shard,
                players: self.engine.stats().active,
                zombies: self.engine.stats().zombies,
                loading: self.engine.loading_count(),
                loads_deferred: self.engine.host().deferred_loads(),
                commit_backlog: self.engine.commit_backlog(),
                io_backlog: self.engine.host().io_backlog(),
                tick_lag_ms: self.last_tick.0,
                tick_us: self.last_tick.1,
                tick_p99_us: self.recent_ticks.p99(),
                protecting: self.protecting,
            }),
            Query::Find { prefix, limit } => {
                let mut rows: Vec<PlayerRow> = self
                    .engine
                    .sessions()
                    .filter(|v| v.account.starts_with(&prefix))
                    .map(|v| PlayerRow::of(shard, &v))
                    .collect();
                rows.sort_by(|a, b| a.account.cmp(&b.account));
                rows.truncate(limit);
                Answer::Players(rows)
            }
            Query::Inspect { account } => Answer::Player(
                self.engine
                    .session_of(&account)
                    .map(|v| PlayerRow::of(shard, &v)),
            ),
            Query::Kick { account, message } => {
                let kicked = self.engine.kick(self.now, &account, &message);
                if kicked {
                    info!(shard, account, "session ended by an operator");
                }
                Answer::Kicked(kicked)
            }
            Query::Notice { text } => Answer::Noticed(self.engine.notice(self.now, &text)),
            Query::Move { account, to } => {
                let node = to.node.clone();
                let moved = self.engine.transfer(self.now, &account, redirect(to));
                if moved {
                    info!(
                        shard,
                        account, node, "session moved to another server by an operator"
                    );
                }
                Answer::Moved(moved)
            }
        };
        // The asker may have given up (timeout): nothing to do then.
        let _ = request.reply.send(answer);
    }

    /// Feeds protect mode one tick's lag (and memory, once a second when a
    /// budget is set); applies an operator's override; on a change, freezes
    /// or thaws every zombie's grace timer.
    fn update_protect(&mut self, now: u64, lag: u64) {
        let rss = if self.protect_cfg.memory_budget_bytes > 0 && now >= self.next_rss_ms {
            self.next_rss_ms = now + RSS_SAMPLE_MS;
            Some(crate::metrics::rss_bytes())
        } else {
            None
        };
        self.protect_auto.observe(&self.protect_cfg, now, lag, rss);
        let want = match self.defences.protect_override() {
            ProtectOverride::Auto => self.protect_auto.is_on(),
            ProtectOverride::On => true,
            ProtectOverride::Off => false,
        };
        if want == self.protecting {
            return;
        }
        self.protecting = want;
        self.defences
            .set_shard_protecting(self.index as usize, want);
        let to = if want { "on" } else { "off" };
        self.metrics
            .protect_transitions
            .get_or_create(&labels(&[("to", to)]))
            .inc();
        self.metrics.protect_mode.inc_by(if want { 1 } else { -1 });
        if want {
            warn!(
                shard = self.index,
                tick_lag_ms = lag,
                "protect mode on: new logins refused, zombie timers frozen"
            );
        } else {
            info!(shard = self.index, "protect mode off");
        }
        self.engine.set_protect(now, want);
    }

    /// Copies what the engine counted since the last call into the metrics.
    fn export_stats(&mut self) {
        let s = self.engine.stats();
        if *s == self.exported {
            return;
        }
        let m = &self.metrics;
        let e = &self.exported;
        let delta = |new: u64, old: u64| new.saturating_sub(old);
        m.add_sessions("active", s.active as i64 - e.active as i64);
        m.add_sessions("zombie", s.zombies as i64 - e.zombies as i64);
        m.logins.inc_by(delta(s.logins, e.logins));
        m.logouts.inc_by(delta(s.logouts, e.logouts));
        m.takeovers.inc_by(delta(s.takeovers, e.takeovers));
        m.replayed_frames
            .inc_by(delta(s.replayed_frames, e.replayed_frames));
        m.duplicate_inputs
            .inc_by(delta(s.duplicate_inputs, e.duplicate_inputs));
        m.zombie_expiries
            .inc_by(delta(s.zombie_expiries, e.zombie_expiries));
        for (mode, new, old) in [
            ("replay", s.resumes_replay, e.resumes_replay),
            ("snapshot", s.resumes_snapshot, e.resumes_snapshot),
            ("restored", s.resumes_restored, e.resumes_restored),
        ] {
            if new > old {
                m.resumes
                    .get_or_create(&labels(&[("mode", mode)]))
                    .inc_by(new - old);
            }
        }
        for why in RefusedResume::ALL {
            let (new, old) = (s.refused(why), e.refused(why));
            if new > old {
                m.resumes_refused
                    .get_or_create(&labels(&[("reason", why.as_str())]))
                    .inc_by(new - old);
            }
        }
        for (code, (&new, &old)) in s.closed.iter().zip(e.closed.iter()).enumerate() {
            if new > old {
                let name = CloseCode::try_from(code as i32)
                    .map(|c| c.as_str_name())
                    .unwrap_or("CLOSE_CODE_UNSPECIFIED");
                m.closed_by_server
                    .get_or_create(&labels(&[("reason", name)]))
                    .inc_by(new - old);
            }
        }
        self.exported = s.clone();
    }

    // ----- outbound --------------------------------------------------------

    /// Cuts, to zombie, the connections whose I/O thread fell so far
    /// behind that their frames could not be queued (see
    /// [`ShardHost::transmit`]). Cutting one can write to others (a
    /// link-dead player shown), so this goes on until none is left.
    fn cut_backlogged(&mut self) {
        while !self.engine.host().cut.is_empty() {
            let cut: Vec<ConnRef> = self.engine.host_mut().cut.drain().collect();
            for conn in cut {
                if self.engine.closed(self.now, conn) {
                    warn!(
                        shard = self.index,
                        "outbound overflow; cutting connection to zombie"
                    );
                    let frame = close_frame(CloseCode::SlowConsumer, "server backlog", 0);
                    self.engine
                        .host_mut()
                        .transmit(Transmit::Close { conn, frame });
                }
            }
        }
    }

    /// Shutdown: save every player with its session, tell every client when
    /// to come back and resume it, and tell the I/O threads this shard is
    /// done.
    fn stop(&mut self) {
        let now = self.refresh_now();
        let n = self.engine.session_count();
        let retry = self.engine.config().restart_retry_ms;
        self.engine.shutdown(
            now,
            CloseCode::ServerShutdown,
            "server restarting; resume your session",
            retry,
        );
        self.cut_backlogged();
        self.export_stats();
        let host = self.engine.host_mut();
        for out in &mut host.io {
            out.tx.push(ToIo::ShardStopped);
        }
        let deadline = Instant::now() + STOP_FLUSH_BOUND;
        while host.io_backlog() > 0 && Instant::now() < deadline {
            host.flush_io();
            std::thread::sleep(Duration::from_millis(1));
        }
        host.flush_io();
        info!(
            shard = self.index,
            sessions = n,
            "shard stopped; every player saved"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_engine::Host;
    use tether_store::fake::{FakeBackend, FakeCall, FakeControl};
    use tether_store::writer::StoreWriter;
    use tether_store::WriterConfig;

    /// A host over a fake store whose queue holds 8 loads; the store stays
    /// up while the returned writer and events are kept.
    fn host(
        held: Arc<AtomicBool>,
        io: Vec<IoOut>,
    ) -> (ShardHost<()>, FakeControl, (StoreWriter, StoreEvents)) {
        let (backend, fake) = FakeBackend::new();
        let cfg = WriterConfig {
            max_pending_loads: 8,
            ..WriterConfig::default()
        };
        let writer = StoreWriter::start(backend, cfg).unwrap();
        let (store, events) = writer.client(None);
        let host = ShardHost {
            index: 0,
            io,
            cut: HashSet::new(),
            store,
            directory: Arc::new(Directory::new(1)),
            bus: Bus {
                senders: Vec::new(),
                wakers: Vec::new(),
            },
            loads_held: held,
            deferred: VecDeque::new(),
            cluster: None,
        };
        (host, fake, (writer, events))
    }

    #[test]
    fn a_stalled_io_thread_is_sent_up_to_the_cap_then_its_connections_are_cut() {
        let poll = mio::Poll::new().unwrap();
        let waker = IoWaker::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, mut rx) = rtrb::RingBuffer::new(1);
        let out = IoOut {
            tx: Outlet::new(tx),
            waker,
        };
        let (mut host, _fake, _store) = host(Arc::new(AtomicBool::new(false)), vec![out]);
        let conn = |slot| ConnRef {
            io: 0,
            slot,
            generation: 1,
        };
        let (a, b) = (conn(1), conn(2));
        let frame = |n: u32| Bytes::from(n.to_le_bytes().to_vec());

        // One on the ring, then the spill fills to its cap.
        let sent = OUTBOUND_OVERFLOW_CAP as u32 + 1;
        for n in 0..sent {
            host.transmit(Transmit::Frame {
                conn: a,
                frame: frame(n),
            });
        }
        assert_eq!(host.io_backlog(), OUTBOUND_OVERFLOW_CAP);
        assert!(host.cut.is_empty(), "at the cap, nothing is cut yet");

        // Past it, frames are not queued: their connections are marked
        // for cutting, each once.
        host.transmit(Transmit::Frame {
            conn: a,
            frame: frame(sent),
        });
        host.transmit(Transmit::Frame {
            conn: a,
            frame: frame(sent + 1),
        });
        host.transmit(Transmit::Frame {
            conn: b,
            frame: frame(0),
        });
        assert_eq!(host.io_backlog(), OUTBOUND_OVERFLOW_CAP);
        assert_eq!(host.cut, HashSet::from([a, b]));

        // A Close still goes, behind everything before it.
        let close = close_frame(CloseCode::SlowConsumer, "server backlog", 0);
        host.transmit(Transmit::Close {
            conn: b,
            frame: close.clone(),
        });
        assert_eq!(host.io_backlog(), OUTBOUND_OVERFLOW_CAP + 1);

        // The I/O thread catches up: every queued message, once, in order.
        let mut next = 0u32;
        let mut closed = false;
        loop {
            host.flush_io();
            let Ok(msg) = rx.pop() else {
                break;
            };
            match msg {
                ToIo::Frame { conn, frame: f } => {
                    assert!(!closed, "nothing after the Close");
                    assert_eq!((conn, f), (a, frame(next)));
                    next += 1;
                }
                ToIo::Close { conn, frame: f } => {
                    assert_eq!((conn, f), (b, close.clone()));
                    closed = true;
                }
                ToIo::ShardStopped => panic!("not sent"),
            }
        }
        assert_eq!((next, closed), (sent, true));
        assert_eq!(host.io_backlog(), 0);
    }

    #[test]
    fn loads_kept_back_are_bounded_and_go_in_order_once_released() {
        let held = Arc::new(AtomicBool::new(true));
        let (mut host, fake, _store) = host(held.clone(), Vec::new());

        // Held (an upgrade in place): every load waits, up to the bound.
        for id in 0..MAX_DEFERRED_LOADS as u64 {
            host.load_session(id, id).unwrap();
        }
        assert_eq!(host.deferred_loads(), MAX_DEFERRED_LOADS);
        assert!(
            host.load("one-too-many", 0).is_err(),
            "past the bound: StorageBusy"
        );
        assert!(!host.pump_loads(), "nothing goes while held");
        let loads = |fake: &tether_store::fake::FakeControl| {
            fake.calls()
                .into_iter()
                .filter_map(|c| match c {
                    FakeCall::LoadSession(id) => Some(id),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(loads(&fake).is_empty());

        // Released: they all go, oldest first, as fast as the store takes
        // them (its queue holds 8).
        held.store(false, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(60);
        while host.deferred_loads() > 0 {
            assert!(Instant::now() < deadline, "the loads did not drain");
            if !host.pump_loads() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        while loads(&fake).len() < MAX_DEFERRED_LOADS {
            assert!(Instant::now() < deadline, "the store did not get them all");
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = loads(&fake);
        assert!(
            got.iter().copied().eq(0..MAX_DEFERRED_LOADS as u64),
            "in order"
        );
        // A new load behind none goes straight through.
        host.load_session(1 << 40, 0).unwrap();
        assert_eq!(host.deferred_loads(), 0);
    }
}

//! A shard thread: one [`World`] and the sessions of the players in it.
//!
//! The shard is where a session lives. Connections come and go (I/O threads
//! tell the shard through its rings); the session, its character and its
//! replay buffer stay here until logout or the end of the zombie grace.
//!
//! ```text
//!  ToShard rings (one per I/O thread)
//!     -> sessions: exactly-once input gate, acks, resume / take-over
//!     -> World::apply / tick -> Outbox (frames encoded once)
//!     -> per-session replay buffer + ToIo ring of the session's connection
//!  cross-shard bus: world chat, whispers to players on other shards
//! ```
//!
//! The loop never waits on anything but an empty inbox: it drains the rings,
//! runs the world tick when due, routes what the world produced, and parks
//! until the next tick or until an I/O thread wakes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tether_proto::encode_frame;
use tether_proto::pb::{self, server_message::Msg, CloseCode};
use tether_session::{
    InputVerdict, PagePool, ResumePlan, ResumeRefused, ResumeToken, ServerSession, SessionConfig,
    SessionId, SessionState, TimerEvent,
};
use tether_store::{Health, StoreEvent, StoreEvents, StoreHandle};
use tether_world::{CharacterRecord, EntityId, LootTx, Outbox, World};
use tracing::{debug, info, warn};

use crate::config::{Config, TakeoverPolicy};
use crate::directory::Directory;
use crate::guard::{Defences, ProtectConfig, ProtectMode, ProtectOverride};
use crate::link::{close_frame, ConnRef, IoLink, ShardWaker, ToIo, ToShard};
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

/// Cross-shard bus messages waiting per shard; beyond it, chat to other
/// shards is dropped (a whisper's sender gets RATE_LIMITED; world chat to
/// that shard is lost).
pub const BUS_CAPACITY: usize = 4096;

/// What a login refused for storage is told to wait before trying again.
const STORAGE_RETRY_AFTER_MS: u32 = 2_000;

/// How often resident memory is read for protect mode (when a memory
/// budget is set): one small /proc read a second.
const RSS_SAMPLE_MS: u64 = 1_000;

/// Idle pages kept by the replay page pool (~1 MiB of page vectors); more are
/// given back to the allocator.
const POOL_MAX_IDLE_PAGES: usize = 4096;

/// Messages between shards.
#[derive(Debug)]
pub enum BusMsg {
    WorldChat(Bytes),
    Whisper {
        to_name: String,
        frame: Bytes,
        from_shard: u16,
        from: EntityId,
        from_seq: u32,
    },
    WhisperFailed {
        to: EntityId,
        seq: u32,
    },
}

/// Senders to every shard's bus, with their wakers.
#[derive(Clone)]
pub struct Bus {
    pub senders: Vec<SyncSender<BusMsg>>,
    pub wakers: Vec<Arc<ShardWaker>>,
}

impl Bus {
    fn send(&self, shard: u16, msg: BusMsg) -> bool {
        let ok = match self.senders[shard as usize].try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        };
        self.wakers[shard as usize].wake();
        ok
    }
}

struct SessionSlot {
    session: ServerSession,
    entity: EntityId,
    account: String,
    conn: Option<ConnRef>,
}

pub struct Shard {
    index: u16,
    cfg: Arc<Config>,
    world: World,
    outbox: Outbox,
    pool: PagePool,
    session_cfg: SessionConfig,
    sessions: Slab<SessionSlot>,
    by_entity: HashMap<EntityId, usize>,
    by_conn: HashMap<ConnRef, usize>,
    by_id: HashMap<SessionId, usize>,
    by_account: HashMap<String, usize>,
    next_session: u64,
    io: Vec<IoLink>,
    io_overflow: Vec<VecDeque<ToIo>>,
    io_touched: Vec<bool>,
    waker: Arc<ShardWaker>,
    bus: Bus,
    bus_rx: Receiver<BusMsg>,
    directory: Arc<Directory>,
    store: StoreHandle,
    store_events: StoreEvents,
    /// Logins waiting for their character from storage, by load tag.
    loading: HashMap<u64, (ConnRef, String)>,
    loading_by_conn: HashMap<ConnRef, u64>,
    next_load_tag: u64,
    /// Loot storage could not take yet (its queue was full), oldest first.
    /// While it is not empty, attacks are refused, so it stays small.
    loot_retry: VecDeque<LootTx>,
    /// Scratch for write-behind records.
    dirty: Vec<CharacterRecord>,
    metrics: Arc<Metrics>,
    defences: Arc<Defences>,
    protect_cfg: ProtectConfig,
    /// Protect mode as tick lag and memory say (before any override).
    protect_auto: ProtectMode,
    /// Protect mode in force: logins refused, zombie grace frozen.
    protecting: bool,
    next_rss_ms: u64,
    shutdown: Arc<AtomicBool>,
    clock: Instant,
    next_tick: u64,
    now: u64,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u16,
        cfg: Arc<Config>,
        world: World,
        io: Vec<IoLink>,
        waker: Arc<ShardWaker>,
        bus: Bus,
        bus_rx: Receiver<BusMsg>,
        directory: Arc<Directory>,
        store: StoreHandle,
        store_events: StoreEvents,
        metrics: Arc<Metrics>,
        defences: Arc<Defences>,
        shutdown: Arc<AtomicBool>,
        clock: Instant,
    ) -> Shard {
        let protect_cfg = ProtectConfig {
            tick_lag_ms: cfg.protect_tick_lag_ms,
            memory_budget_bytes: cfg.protect_memory_bytes,
            calm_ms: cfg.protect_calm_ms,
        };
        let session_cfg = SessionConfig {
            replay_cap_frames: cfg.replay_cap_frames,
            zombie_replay_cap_frames: cfg.zombie_replay_cap_frames,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
            keepalive_interval_ms: cfg.heartbeat_interval_ms,
            zombie_grace_ms: cfg.zombie_grace_ms,
            input_ack_every: 32,
            input_ack_delay_ms: cfg.input_ack_delay_ms,
        };
        let n_io = io.len();
        Shard {
            index,
            cfg,
            world,
            outbox: Outbox::default(),
            pool: PagePool::new(POOL_MAX_IDLE_PAGES),
            session_cfg,
            sessions: Slab::new(),
            by_entity: HashMap::new(),
            by_conn: HashMap::new(),
            by_id: HashMap::new(),
            by_account: HashMap::new(),
            next_session: 1,
            io,
            io_overflow: (0..n_io).map(|_| VecDeque::new()).collect(),
            io_touched: vec![false; n_io],
            waker,
            bus,
            bus_rx,
            directory,
            store,
            store_events,
            loading: HashMap::new(),
            loading_by_conn: HashMap::new(),
            next_load_tag: 1,
            loot_retry: VecDeque::new(),
            dirty: Vec::new(),
            metrics,
            defences,
            protect_cfg,
            protect_auto: ProtectMode::default(),
            protecting: false,
            next_rss_ms: 0,
            shutdown,
            clock,
            next_tick: 0,
            now: 0,
        }
    }

    fn refresh_now(&mut self) -> u64 {
        self.now = self.clock.elapsed().as_millis() as u64;
        self.now
    }

    pub fn run(mut self) {
        self.next_tick = self.refresh_now();
        loop {
            let mut worked = false;
            let backlogged = self.outbound_backlogged();
            for io in 0..self.io.len() {
                if backlogged {
                    break;
                }
                for _ in 0..INBOX_BATCH {
                    let Ok(msg) = self.io[io].rx.pop() else {
                        break;
                    };
                    worked = true;
                    self.refresh_now();
                    self.on_message(msg);
                }
            }
            while let Ok(msg) = self.bus_rx.try_recv() {
                worked = true;
                self.on_bus(msg);
            }
            while let Some(event) = self.store_events.try_recv() {
                worked = true;
                self.refresh_now();
                self.on_store_event(event);
            }
            if self.refresh_now() >= self.next_tick {
                self.tick();
                worked = true;
            }
            self.route_outbox();
            self.flush_io();

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
                    let wait = self.next_tick.saturating_sub(self.refresh_now());
                    std::thread::park_timeout(Duration::from_millis(wait.max(1)));
                }
                self.waker.set_sleeping(false);
            }
        }
    }

    /// Whether an I/O thread is so far behind that new inputs should wait.
    fn outbound_backlogged(&self) -> bool {
        self.io_overflow
            .iter()
            .any(|q| q.len() >= OUTBOUND_HIGH_WATER)
    }

    fn inbox_empty(&self) -> bool {
        self.io.iter().all(|l| l.rx.is_empty()) && !self.shutdown.load(Ordering::Relaxed)
    }

    // ----- inbound ---------------------------------------------------------

    fn on_message(&mut self, msg: ToShard) {
        match msg {
            ToShard::Login { conn, account } => self.login(conn, account),
            ToShard::Resume { conn, resume } => self.resume(conn, resume),
            ToShard::Input { conn, input } => self.input(conn, input),
            ToShard::Ack {
                conn,
                frames_received,
            } => {
                if let Some(&idx) = self.by_conn.get(&conn) {
                    self.ack(idx, conn, frames_received);
                }
            }
            ToShard::Logout { conn } => {
                if let Some(&idx) = self.by_conn.get(&conn) {
                    self.end_session(idx, Some(CloseCode::Logout));
                }
            }
            ToShard::Closed { conn, why } => {
                if let Some(tag) = self.loading_by_conn.remove(&conn) {
                    // Its Loaded event finds no login and releases the claim.
                    self.loading.remove(&tag);
                }
                if let Some(idx) = self.by_conn.remove(&conn) {
                    debug!(
                        shard = self.index,
                        ?why,
                        "connection lost; session is a zombie"
                    );
                    self.detach(idx);
                }
            }
        }
    }

    fn new_token() -> ResumeToken {
        let mut t = [0u8; 16];
        getrandom::fill(&mut t).expect("the OS random source is available");
        ResumeToken(t)
    }

    fn login(&mut self, conn: ConnRef, account: String) {
        // Frames produced so far belong before anything this login sends.
        self.route_outbox();
        let now = self.now;
        if let Some(&idx) = self.by_account.get(&account) {
            if self.cfg.takeover == TakeoverPolicy::Refuse {
                self.close(
                    conn,
                    CloseCode::AlreadyLoggedIn,
                    "this account is already in play",
                );
                return;
            }
            self.metrics.takeovers.inc();
            let token = Self::new_token();
            let slot = &mut self.sessions[idx];
            slot.session.take_over(token, &mut self.pool, now);
            let old = slot.conn.replace(conn);
            if let Some(old) = old {
                self.by_conn.remove(&old);
                self.close(
                    old,
                    CloseCode::SessionTakenOver,
                    "another login took this session",
                );
            } else {
                self.gauge_zombie_to_active();
            }
            self.by_conn.insert(conn, idx);
            self.welcome(idx, true);
            let entity = self.sessions[idx].entity;
            self.world.set_link_dead(entity, false, &mut self.outbox);
            self.world.snapshot(entity, &mut self.outbox);
            self.metrics.logins.inc();
            return;
        }
        if !self.directory.claim(&account, self.index) {
            self.close(
                conn,
                CloseCode::ServerBusy,
                "login in progress elsewhere; retry",
            );
            return;
        }
        if !self.store.accepts_logins() {
            self.refuse_for_storage(conn, &account);
            return;
        }
        // The character comes from storage asynchronously; the world loop
        // goes on meanwhile and the login finishes in `on_loaded`.
        let tag = self.next_load_tag;
        self.next_load_tag += 1;
        if self.store.load(&account, tag).is_err() {
            self.refuse_for_storage(conn, &account);
            return;
        }
        self.loading.insert(tag, (conn, account));
        self.loading_by_conn.insert(conn, tag);
    }

    fn refuse_for_storage(&mut self, conn: ConnRef, account: &str) {
        if !self.by_account.contains_key(account) {
            self.directory.release(account, self.index);
        }
        self.close_retry(
            conn,
            CloseCode::StorageUnavailable,
            "storage is unavailable; retry later",
            STORAGE_RETRY_AFTER_MS,
        );
    }

    fn on_loaded(
        &mut self,
        account: String,
        tag: u64,
        result: Result<Option<CharacterRecord>, tether_store::StoreError>,
    ) {
        let Some((conn, _)) = self.loading.remove(&tag) else {
            // The connection went away while loading.
            if !self.by_account.contains_key(&account) && !self.is_loading(&account) {
                self.directory.release(&account, self.index);
            }
            return;
        };
        self.loading_by_conn.remove(&conn);
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                warn!(shard = self.index, %account, error = %e, "character load failed");
                self.refuse_for_storage(conn, &account);
                return;
            }
        };
        if self.by_account.contains_key(&account) {
            // Another login of this account finished loading first: this
            // one takes that session over (or is refused), as usual.
            self.login(conn, account);
            return;
        }
        self.route_outbox();
        let now = self.now;
        let is_new = record.is_none();
        let record = record.unwrap_or_else(|| CharacterRecord {
            name: account.clone(),
            pos: None,
            hp: 0,
            level: 1,
            xp: 0,
            gold: 0,
            inventory: Vec::new(),
        });
        let id = ((self.index as u64) << 56) | self.next_session;
        self.next_session += 1;
        let mut session = ServerSession::new(id, Self::new_token(), now, self.session_cfg.clone());
        if self.protecting {
            session.set_grace_frozen(true, now);
        }
        let idx = self.sessions.insert(SessionSlot {
            session,
            entity: 0,
            account: account.clone(),
            conn: Some(conn),
        });
        self.by_conn.insert(conn, idx);
        self.by_id.insert(id, idx);
        self.by_account.insert(account, idx);
        self.directory.add_population(self.index, 1);
        self.metrics.add_sessions("active", 1);
        self.metrics.logins.inc();
        // Welcome goes out before the world's snapshot frames: the joiner's
        // frames are routed after this returns.
        let entity = self.world.join(now, record, &mut self.outbox);
        if is_new {
            if let Some(created) = self.world.character(entity) {
                // A new character exists from its first login on, so loot
                // committed during its first session has a record to land in.
                self.store.save_now(created);
            }
        }
        self.sessions[idx].entity = entity;
        self.by_entity.insert(entity, idx);
        self.welcome(idx, false);
    }

    fn is_loading(&self, account: &str) -> bool {
        self.loading.values().any(|(_, a)| a == account)
    }

    fn on_store_event(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Loaded {
                account,
                tag,
                result,
            } => self.on_loaded(account, tag, result),
            StoreEvent::LootCommitted(tx) => self.world.loot_committed(&tx, &mut self.outbox),
            StoreEvent::LootRejected { tx, error } => {
                // Never confirmed to the player; the store logged and counted it.
                warn!(shard = self.index, tx = tx.tx_id, character = %tx.character, %error, "loot rejected by storage");
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

    fn welcome(&mut self, idx: usize, took_over: bool) {
        let slot = &self.sessions[idx];
        let Some(conn) = slot.conn else { return };
        let frame = encode_frame(&pb::ServerMessage {
            msg: Some(Msg::Welcome(pb::Welcome {
                session_id: slot.session.id(),
                resume_token: slot.session.token().0.to_vec(),
                entity_id: slot.entity,
                world: Some(self.world.info()),
                heartbeat_interval_ms: self.cfg.heartbeat_interval_ms as u32,
                heartbeat_timeout_ms: self.cfg.heartbeat_timeout_ms as u32,
                resume_grace_ms: self.cfg.zombie_grace_ms as u32,
                took_over,
            })),
        });
        self.send_io(conn, ToIo::Frame { conn, frame });
    }

    fn resume(&mut self, conn: ConnRef, resume: pb::Resume) {
        self.route_outbox();
        let now = self.now;
        let refuse = |shard: &mut Shard, reason: &'static str| {
            shard
                .metrics
                .resumes_refused
                .get_or_create(&labels(&[("reason", reason)]))
                .inc();
            shard.close(conn, CloseCode::ResumeRefused, "resume refused");
        };
        let Some(&idx) = self.by_id.get(&resume.session_id) else {
            refuse(self, "unknown_session");
            return;
        };
        let token = Self::new_token();
        let slot = &mut self.sessions[idx];
        let plan = match slot.session.resume(
            &resume.token,
            resume.frames_received,
            token,
            &mut self.pool,
            now,
        ) {
            Ok(plan) => plan,
            Err(ResumeRefused::BadToken) => return refuse(self, "bad_token"),
            Err(ResumeRefused::FramesFromTheFuture) => return refuse(self, "bad_frame_count"),
        };
        let was_zombie = slot.conn.is_none();
        if let Some(old) = slot.conn.replace(conn) {
            // The new connection wins over a half-open old one.
            self.by_conn.remove(&old);
            self.close(
                old,
                CloseCode::SessionTakenOver,
                "resumed on another connection",
            );
        }
        self.by_conn.insert(conn, idx);
        if was_zombie {
            self.gauge_zombie_to_active();
        }
        let slot = &self.sessions[idx];
        let (mode, frames_base) = match &plan {
            ResumePlan::Replay(_) => (pb::ResumeMode::Replay, resume.frames_received),
            ResumePlan::Snapshot { frames_base } => (pb::ResumeMode::Snapshot, *frames_base),
        };
        let resumed = encode_frame(&pb::ServerMessage {
            msg: Some(Msg::Resumed(pb::Resumed {
                session_id: slot.session.id(),
                resume_token: slot.session.token().0.to_vec(),
                mode: mode as i32,
                frames_base,
                last_input_seq: slot.session.last_applied_input(),
            })),
        });
        let entity = slot.entity;
        self.send_io(
            conn,
            ToIo::Frame {
                conn,
                frame: resumed,
            },
        );
        match plan {
            ResumePlan::Replay(frames) => {
                self.metrics
                    .resumes
                    .get_or_create(&labels(&[("mode", "replay")]))
                    .inc();
                self.metrics.replayed_frames.inc_by(frames.len() as u64);
                for frame in frames {
                    self.send_io(conn, ToIo::Frame { conn, frame });
                }
            }
            ResumePlan::Snapshot { .. } => {
                self.metrics
                    .resumes
                    .get_or_create(&labels(&[("mode", "snapshot")]))
                    .inc();
                self.world.snapshot(entity, &mut self.outbox);
            }
        }
        if was_zombie {
            self.world.set_link_dead(entity, false, &mut self.outbox);
        }
    }

    fn ack(&mut self, idx: usize, conn: ConnRef, frames_received: u64) {
        let now = self.now;
        let slot = &mut self.sessions[idx];
        slot.session.heard_from(now);
        if let Err(e) = slot.session.on_ack(frames_received, &mut self.pool, now) {
            debug!(shard = self.index, error = ?e, "bad ack");
            self.protocol_close(
                idx,
                conn,
                CloseCode::ProtocolError,
                "ack beyond frames sent",
            );
        }
    }

    fn input(&mut self, conn: ConnRef, input: pb::Input) {
        let Some(&idx) = self.by_conn.get(&conn) else {
            return; // a connection the shard already let go of
        };
        if input.ack != 0 {
            self.ack(idx, conn, input.ack);
            if self.by_conn.get(&conn) != Some(&idx) {
                return;
            }
        }
        let now = self.now;
        let slot = &mut self.sessions[idx];
        slot.session.heard_from(now);
        match slot.session.check_input(input.seq, now) {
            Ok(InputVerdict::Apply) => {
                let entity = slot.entity;
                match input.cmd {
                    Some(pb::input::Cmd::Attack(_))
                        if !self.store.accepts_value() || !self.loot_retry.is_empty() =>
                    {
                        // A kill would create loot that cannot be made
                        // durable now; movement and chat still work.
                        self.command_error(
                            entity,
                            input.seq,
                            pb::CommandErrorCode::CommandErrorStorageUnavailable,
                        );
                    }
                    Some(cmd) => self
                        .world
                        .apply(now, entity, input.seq, cmd, &mut self.outbox),
                    None => {}
                }
            }
            Ok(InputVerdict::Duplicate) => {
                self.metrics.duplicate_inputs.inc();
            }
            Err(e) => {
                debug!(shard = self.index, error = ?e, "input sequence gap");
                self.protocol_close(idx, conn, CloseCode::InputSeqGap, "input seq skipped ahead");
            }
        }
    }

    /// The peer broke the session protocol: close its connection; the
    /// session itself stays (as a zombie) for a well-behaved resume.
    fn protocol_close(&mut self, idx: usize, conn: ConnRef, code: CloseCode, message: &str) {
        self.by_conn.remove(&conn);
        self.close(conn, code, message);
        self.detach(idx);
    }

    fn detach(&mut self, idx: usize) {
        let now = self.now;
        let slot = &mut self.sessions[idx];
        if let Some(conn) = slot.conn.take() {
            self.by_conn.remove(&conn);
        }
        if slot.session.state() == SessionState::Live {
            slot.session.detach(now);
            let entity = slot.entity;
            self.metrics.add_sessions("active", -1);
            self.metrics.add_sessions("zombie", 1);
            self.world.set_link_dead(entity, true, &mut self.outbox);
        }
    }

    fn gauge_zombie_to_active(&self) {
        self.metrics.add_sessions("zombie", -1);
        self.metrics.add_sessions("active", 1);
    }

    /// Logs the character out: saves it, frees the session, closes its
    /// connection with `code` if it has one.
    fn end_session(&mut self, idx: usize, code: Option<CloseCode>) {
        self.route_outbox();
        // A client logging out learns which of its inputs were applied
        // before it goes: the last InputAck would otherwise wait for its
        // delay and never be sent.
        if code == Some(CloseCode::Logout) {
            if let Some(slot) = self.sessions.get_mut(idx) {
                let seq = slot.session.last_applied_input();
                if seq > 0 && slot.conn.is_some() {
                    slot.session.input_ack_sent(self.now);
                    let frame = encode_frame(&pb::ServerMessage {
                        msg: Some(Msg::InputAck(pb::InputAck { seq })),
                    });
                    self.deliver(idx, frame);
                }
            }
        }
        let now = self.now;
        let mut slot = self.sessions.remove(idx);
        let state = if slot.conn.is_some() {
            "active"
        } else {
            "zombie"
        };
        self.metrics.add_sessions(state, -1);
        self.metrics.logouts.inc();
        if let Some(record) = self.world.leave(now, slot.entity, &mut self.outbox) {
            self.store.save_now(record);
        }
        slot.session.release(&mut self.pool);
        self.by_entity.remove(&slot.entity);
        self.by_id.remove(&slot.session.id());
        self.by_account.remove(&slot.account);
        self.directory.release(&slot.account, self.index);
        self.directory.add_population(self.index, -1);
        if let Some(conn) = slot.conn {
            self.by_conn.remove(&conn);
            if let Some(code) = code {
                self.close(conn, code, "session ended");
            }
        }
    }

    // ----- ticks and timers -----------------------------------------------

    fn tick(&mut self) {
        let started = Instant::now();
        let now = self.now;
        // How late this tick starts: the loop's backlog, the first sign of
        // overload. Protect mode is decided before any timer fires.
        let lag = now.saturating_sub(self.next_tick);
        self.update_protect(now, lag);
        self.world.tick(now, &mut self.outbox);
        // Write-behind: hand storage what changed; it coalesces per character
        // and writes every flush interval, off this thread.
        self.world.take_dirty(&mut self.dirty);
        if !self.dirty.is_empty() {
            self.store.mark_dirty_all(self.dirty.drain(..));
        }
        self.retry_loot();
        let mut expired = Vec::new();
        let mut cut = Vec::new();
        let mut acks = Vec::new();
        let unplayed_grace = self.cfg.unplayed_zombie_grace_ms;
        for (idx, slot) in self.sessions.iter_mut() {
            // A zombie that never applied an input (logged in and left, the
            // way a login flood does) has nothing to come back to: it gets
            // the short grace, frozen or not, so such sessions cannot pile up.
            if let SessionState::Zombie { since_ms } = slot.session.state() {
                if slot.session.last_applied_input() == 0
                    && now.saturating_sub(since_ms) >= unplayed_grace
                {
                    expired.push(idx);
                    continue;
                }
            }
            while let Some(event) = slot.session.handle_timeout(now) {
                match event {
                    TimerEvent::HeartbeatTimeout => cut.push(idx),
                    TimerEvent::ZombieExpired => expired.push(idx),
                    TimerEvent::KeepaliveDue => {
                        acks.push((idx, slot.session.last_applied_input()));
                        slot.session.input_ack_sent(now);
                    }
                }
            }
        }
        // An InputAck goes after the effects of the inputs it covers.
        self.route_outbox();
        for (idx, seq) in acks {
            let frame = encode_frame(&pb::ServerMessage {
                msg: Some(Msg::InputAck(pb::InputAck { seq })),
            });
            self.deliver(idx, frame);
        }
        for idx in cut {
            if let Some(conn) = self.sessions.get(idx).and_then(|s| s.conn) {
                self.by_conn.remove(&conn);
                self.close(conn, CloseCode::HeartbeatTimeout, "no heartbeat");
                self.detach(idx);
            }
        }
        for idx in expired {
            if self.sessions.contains(idx) {
                self.metrics.zombie_expiries.inc();
                self.end_session(idx, None);
            }
        }
        while self.next_tick <= now {
            self.next_tick += self.cfg.tick_ms;
        }
        self.metrics
            .tick_seconds
            .observe(started.elapsed().as_secs_f64());
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
        for (_, slot) in self.sessions.iter_mut() {
            slot.session.set_grace_frozen(want, now);
        }
    }

    // ----- outbound --------------------------------------------------------

    /// Appends a counted frame to the session's replay buffer and, when it is
    /// connected, to its connection's queue.
    fn deliver(&mut self, idx: usize, frame: Bytes) {
        let now = self.now;
        let Some(slot) = self.sessions.get_mut(idx) else {
            return;
        };
        slot.session.push_frame(frame.clone(), &mut self.pool, now);
        if let Some(conn) = slot.conn {
            self.send_io(conn, ToIo::Frame { conn, frame });
        }
    }

    fn route_outbox(&mut self) {
        loop {
            let mut frames = std::mem::take(&mut self.outbox.frames);
            for (entity, frame) in frames.drain(..) {
                if let Some(&idx) = self.by_entity.get(&entity) {
                    self.deliver(idx, frame);
                }
            }
            // Keep the allocation for the next round.
            if self.outbox.frames.is_empty() {
                self.outbox.frames = frames;
            }
            let chats = std::mem::take(&mut self.outbox.world_chat);
            for frame in chats {
                self.broadcast_local(&frame);
                for s in 0..self.bus.senders.len() as u16 {
                    if s != self.index {
                        self.bus.send(s, BusMsg::WorldChat(frame.clone()));
                    }
                }
            }
            let whispers = std::mem::take(&mut self.outbox.remote_whispers);
            for w in whispers {
                match self.directory.locate(&w.to_name) {
                    Some(s) if s != self.index => {
                        let sent = self.bus.send(
                            s,
                            BusMsg::Whisper {
                                to_name: w.to_name,
                                frame: w.frame,
                                from_shard: self.index,
                                from: w.from,
                                from_seq: w.from_seq,
                            },
                        );
                        if !sent {
                            self.command_error(
                                w.from,
                                w.from_seq,
                                pb::CommandErrorCode::CommandErrorRateLimited,
                            );
                        }
                    }
                    _ => self.command_error(
                        w.from,
                        w.from_seq,
                        pb::CommandErrorCode::CommandErrorNoSuchPlayer,
                    ),
                }
            }
            let loot = std::mem::take(&mut self.outbox.loot);
            for tx in loot {
                self.commit_loot(tx);
            }
            if self.outbox.frames.is_empty()
                && self.outbox.world_chat.is_empty()
                && self.outbox.remote_whispers.is_empty()
                && self.outbox.loot.is_empty()
            {
                return;
            }
        }
    }

    /// Hands a loot transaction to storage; the player hears of it once it
    /// is committed (StoreEvent::LootCommitted).
    fn commit_loot(&mut self, tx: LootTx) {
        if !self.loot_retry.is_empty() {
            self.loot_retry.push_back(tx);
            return;
        }
        if let Err(e) = self.store.commit_loot(tx) {
            self.loot_retry.push_back(e.into_inner());
        }
    }

    fn retry_loot(&mut self) {
        while let Some(tx) = self.loot_retry.pop_front() {
            if let Err(e) = self.store.commit_loot(tx) {
                self.loot_retry.push_front(e.into_inner());
                return;
            }
        }
    }

    fn command_error(&mut self, entity: EntityId, seq: u32, code: pb::CommandErrorCode) {
        if let Some(&idx) = self.by_entity.get(&entity) {
            let frame = encode_frame(&pb::ServerMessage {
                msg: Some(Msg::CommandError(pb::CommandError {
                    seq,
                    code: code as i32,
                })),
            });
            self.deliver(idx, frame);
        }
    }

    fn broadcast_local(&mut self, frame: &Bytes) {
        let all: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for idx in all {
            self.deliver(idx, frame.clone());
        }
    }

    fn on_bus(&mut self, msg: BusMsg) {
        match msg {
            BusMsg::WorldChat(frame) => self.broadcast_local(&frame),
            BusMsg::Whisper {
                to_name,
                frame,
                from_shard,
                from,
                from_seq,
            } => match self.world.find_player(&to_name) {
                Some(entity) => {
                    if let Some(&idx) = self.by_entity.get(&entity) {
                        self.deliver(idx, frame);
                    }
                }
                None => {
                    self.bus.send(
                        from_shard,
                        BusMsg::WhisperFailed {
                            to: from,
                            seq: from_seq,
                        },
                    );
                }
            },
            BusMsg::WhisperFailed { to, seq } => {
                self.command_error(to, seq, pb::CommandErrorCode::CommandErrorNoSuchPlayer)
            }
        }
    }

    fn close(&mut self, conn: ConnRef, code: CloseCode, message: &str) {
        self.close_retry(conn, code, message, 0);
    }

    fn close_retry(&mut self, conn: ConnRef, code: CloseCode, message: &str, retry_after_ms: u32) {
        self.metrics
            .closed_by_server
            .get_or_create(&labels(&[("reason", code.as_str_name())]))
            .inc();
        let frame = close_frame(code, message, retry_after_ms);
        self.send_io(conn, ToIo::Close { conn, frame });
    }

    fn send_io(&mut self, conn: ConnRef, msg: ToIo) {
        let io = conn.io as usize;
        self.io_touched[io] = true;
        if self.io_overflow[io].is_empty() {
            match self.io[io].tx.push(msg) {
                Ok(()) => {}
                Err(rtrb::PushError::Full(msg)) => self.io_overflow[io].push_back(msg),
            }
        } else if self.io_overflow[io].len() >= OUTBOUND_OVERFLOW_CAP {
            // The I/O thread is not keeping up at all. Dropping a frame from
            // the middle of a stream would corrupt it, so the connection is
            // cut instead; the session keeps the frame for its resume.
            if let Some(idx) = self.by_conn.remove(&conn) {
                warn!(
                    shard = self.index,
                    "outbound overflow; cutting connection to zombie"
                );
                self.detach(idx);
                // One Close per cut connection goes past the cap (the detached
                // session sends that connection nothing more), so the socket
                // does not linger half-dead.
                let frame = close_frame(CloseCode::SlowConsumer, "server backlog", 0);
                self.io_overflow[io].push_back(ToIo::Close { conn, frame });
            }
        } else {
            self.io_overflow[io].push_back(msg);
        }
    }

    fn flush_io(&mut self) {
        for io in 0..self.io.len() {
            while let Some(msg) = self.io_overflow[io].pop_front() {
                match self.io[io].tx.push(msg) {
                    Ok(()) => {}
                    Err(rtrb::PushError::Full(msg)) => {
                        self.io_overflow[io].push_front(msg);
                        break;
                    }
                }
            }
            if std::mem::take(&mut self.io_touched[io]) {
                self.io[io].waker.wake();
            }
        }
    }

    /// Shutdown: save every character, tell every client the server is
    /// restarting, and tell the I/O threads this shard is done.
    fn stop(&mut self) {
        let loading: Vec<ConnRef> = self.loading.drain().map(|(_, (conn, _))| conn).collect();
        for conn in loading {
            self.close(conn, CloseCode::ServerShutdown, "server shutting down");
        }
        let all: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        let n = all.len();
        for idx in all {
            self.end_session(idx, Some(CloseCode::ServerShutdown));
        }
        self.route_outbox();
        for io in 0..self.io.len() {
            self.io_touched[io] = true;
            self.io_overflow[io].push_back(ToIo::ShardStopped);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.io_overflow.iter().any(|q| !q.is_empty()) && Instant::now() < deadline {
            self.flush_io();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.flush_io();
        info!(
            shard = self.index,
            sessions = n,
            "shard stopped; characters saved"
        );
    }
}

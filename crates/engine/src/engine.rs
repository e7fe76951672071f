//! [`Engine`]: one shard's sessions around one [`Game`].

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use slab::Slab;
use tether_proto::pb::{self, CloseCode};
use tether_session::{
    InputVerdict, PagePool, ResumePlan, ResumeRefused, ResumeToken, ServerSession, SessionConfig,
    SessionId, SessionState, TimerEvent,
};
use tracing::{debug, warn};

use crate::game::{Ctx, Game, Outbox, PlayerId, Route, Undeliverable};
use crate::host::{BusMsg, Host};
use crate::record::{Record, SessionMark, Tx};
use crate::stats::{EngineStats, RefusedResume};
use crate::wire::{close_frame, input_ack_frame, redirect_frame, resumed_frame, welcome_frame};

/// Transactions held while storage's queue is full. The game is told it
/// cannot commit as soon as one is held (`Ctx::can_commit`), so a game that
/// listens holds a handful; past this a transaction is handed back to the
/// game as rejected (never durable, never to be told to the player) rather
/// than held without bound.
pub const MAX_COMMIT_BACKLOG: usize = 16_384;

/// Bits of a session id below the shard index: a resume finds its shard
/// from the id alone.
pub const SESSION_SHARD_SHIFT: u32 = 56;

/// A connection as the engine knows it: the I/O thread it lives on, its slot
/// there and the slot's generation, so a message about a connection that has
/// since closed (and whose slot was reused) is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub io: u16,
    pub slot: u32,
    pub generation: u32,
}

/// What the engine wants written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Queue this encoded frame on the connection.
    Frame { conn: ConnId, frame: Bytes },
    /// Write this Close frame if there is room, flush what is queued, close
    /// the connection. The engine has already let go of it.
    Close { conn: ConnId, frame: Bytes },
}

/// What happens to a login for an account that already has a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The new login takes the session over (the old connection, if any, is
    /// closed with SESSION_TAKEN_OVER).
    Allow,
    /// The new login is refused with ALREADY_LOGGED_IN.
    Refuse,
}

/// Settings of one engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This shard's index (the top bits of its session ids).
    pub shard: u16,
    pub session: SessionConfig,
    /// How often [`Game::tick`] runs.
    pub tick_ms: u64,
    pub takeover: Takeover,
    /// A zombie that never applied an input (logged in and left, the way a
    /// login flood does) lives this long, frozen or not.
    pub unplayed_grace_ms: u64,
    /// What a login refused for storage is told to wait.
    pub storage_retry_after_ms: u32,
    /// Idle replay pages the pool keeps for reuse.
    pub pool_max_idle_pages: usize,
    /// What clients are told to wait before resuming when the server stops
    /// (see [`Engine::shutdown`]).
    pub restart_retry_ms: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shard: 0,
            session: SessionConfig::default(),
            tick_ms: 50,
            takeover: Takeover::Allow,
            unplayed_grace_ms: 5_000,
            storage_retry_after_ms: 2_000,
            pool_max_idle_pages: 4096,
            restart_retry_ms: 1_000,
        }
    }
}

/// Why a load produced no answer (the database stayed away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailed(pub String);

struct SessionSlot {
    session: ServerSession,
    player: PlayerId,
    account: String,
    conn: Option<ConnId>,
    /// Sent in the Welcome, saved with every record: what lets a resume
    /// bring the session back from storage (see [`SessionMark`]).
    restart_token: [u8; 16],
}

impl SessionSlot {
    fn mark(&self) -> SessionMark {
        SessionMark {
            session_id: self.session.id(),
            restart_token: self.restart_token,
            last_input: self.session.last_applied_input(),
        }
    }
}

/// A read-only view of one session, for admin pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub id: SessionId,
    pub account: String,
    pub player: PlayerId,
    pub state: SessionState,
    pub conn: Option<ConnId>,
    pub last_applied_input: u32,
    pub frames_sent: u64,
    pub frames_acked: u64,
    pub replay_len: usize,
    /// Frames let go unacked because the replay buffer was over its cap; once
    /// one the client missed is gone, its next resume is a snapshot.
    pub replay_evicted: u64,
}

/// One shard's sessions around one game, sans IO.
///
/// Every entry point takes `now` (milliseconds on the shard's monotonic
/// clock) and leaves what is to be written in [`Engine::poll_transmit`];
/// storage, the account directory and other shards are reached through the
/// [`Host`]. The driver calls [`Engine::tick`] when [`Engine::next_tick`]
/// is due.
pub struct Engine<G: Game, H: Host<G::Remote>> {
    cfg: EngineConfig,
    game: G,
    host: H,
    out: Outbox<G::Remote>,
    pool: PagePool,
    sessions: Slab<SessionSlot>,
    by_player: HashMap<PlayerId, usize>,
    by_conn: HashMap<ConnId, usize>,
    by_id: HashMap<SessionId, usize>,
    by_account: HashMap<String, usize>,
    next_session: u64,
    /// Logins waiting for their record from storage, by load tag.
    loading: HashMap<u64, (ConnId, String)>,
    /// Resumes of sessions not in memory, waiting for storage, by load tag.
    restoring: HashMap<u64, (ConnId, pb::Resume)>,
    /// Connections of sessions moved to another server, waiting for the
    /// hand-over before they are redirected, by tag.
    moving: HashMap<u64, (ConnId, pb::Redirect)>,
    loading_by_conn: HashMap<ConnId, u64>,
    next_load_tag: u64,
    /// Transactions storage could not take yet (its queue was full), oldest
    /// first. While it is not empty the game is told it cannot commit, so it
    /// stays small.
    commit_retry: VecDeque<Tx>,
    /// Scratch for write-behind records.
    dirty: Vec<Record>,
    protecting: bool,
    /// Whether a transaction would be taken: read from storage at each
    /// tick and after every commit attempt or answer, not per input (it is
    /// a shared counter on another thread's cache line).
    can_commit: bool,
    next_tick: u64,
    stats: EngineStats,
    /// This run's 24-bit session id salt (bits 32..56 of its ids).
    salt: u32,
}

impl<G: Game, H: Host<G::Remote>> Engine<G, H> {
    /// An engine whose first tick is due at `now`.
    pub fn new(cfg: EngineConfig, game: G, mut host: H, now: u64) -> Self {
        let pool = PagePool::new(cfg.pool_max_idle_pages);
        // Session ids outlive the process (they are saved for resumes after
        // a restart): each run numbers from a random point of a 24-bit
        // space, so a new run's ids do not meet an earlier run's.
        let salt = host.resume_token().0;
        let salt = u64::from(u32::from_le_bytes([salt[0], salt[1], salt[2], 0]));
        let first_session = (salt << 32) | 1;
        Engine {
            cfg,
            game,
            host,
            out: Outbox::default(),
            pool,
            sessions: Slab::new(),
            by_player: HashMap::new(),
            by_conn: HashMap::new(),
            by_id: HashMap::new(),
            by_account: HashMap::new(),
            next_session: first_session,
            salt: salt as u32,
            loading: HashMap::new(),
            restoring: HashMap::new(),
            moving: HashMap::new(),
            loading_by_conn: HashMap::new(),
            next_load_tag: 1,
            commit_retry: VecDeque::new(),
            dirty: Vec::new(),
            protecting: false,
            can_commit: true,
            next_tick: now,
            stats: EngineStats::default(),
        }
    }

    // ----- accessors -------------------------------------------------------

    /// The 24-bit salt of the session ids this engine hands out (bits 32 to
    /// 55 of each id; the shard is bits 56 to 63): in a cluster, other
    /// servers learn from it which server a session id came from.
    pub fn session_salt(&self) -> u32 {
        self.salt
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn game(&self) -> &G {
        &self.game
    }

    pub fn game_mut(&mut self) -> &mut G {
        &mut self.game
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Sessions held (live and zombie).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Logins waiting for storage.
    pub fn loading_count(&self) -> usize {
        self.loading.len()
    }

    /// Transactions waiting for room in storage's queue.
    pub fn commit_backlog(&self) -> usize {
        self.commit_retry.len()
    }

    /// Replay pages held by sessions now (for leak checks: 0 once every
    /// session has ended).
    pub fn pool_pages_in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// The session of `account`, if any.
    pub fn session_of(&self, account: &str) -> Option<SessionView> {
        self.by_account.get(account).map(|&idx| self.view(idx))
    }

    /// Every session.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView> + '_ {
        self.sessions.iter().map(|(idx, _)| self.view(idx))
    }

    fn view(&self, idx: usize) -> SessionView {
        let s = &self.sessions[idx];
        SessionView {
            id: s.session.id(),
            account: s.account.clone(),
            player: s.player,
            state: s.session.state(),
            conn: s.conn,
            last_applied_input: s.session.last_applied_input(),
            frames_sent: s.session.frames_sent(),
            frames_acked: s.session.frames_acked(),
            replay_len: s.session.replay_len(),
            replay_evicted: s.session.replay_evicted(),
        }
    }

    /// When the next tick is due.
    pub fn next_tick(&self) -> u64 {
        self.next_tick
    }

    /// When a session timer next falls due (heartbeat, keep-alive or input
    /// acknowledgement, zombie expiry, the short grace of a zombie that never
    /// played); `None` while no session has one. [`Engine::tick`] handles
    /// them: a driver that sleeps between events (a test on a virtual clock)
    /// can tick at the later of this and [`Engine::next_tick`] instead of
    /// every `tick_ms`, with the same outcome.
    pub fn poll_timeout(&self) -> Option<u64> {
        let unplayed_grace = self.cfg.unplayed_grace_ms;
        self.sessions
            .iter()
            .filter_map(|(_, slot)| {
                let unplayed = match slot.session.state() {
                    SessionState::Zombie { since_ms } if slot.session.last_applied_input() == 0 => {
                        Some(since_ms.saturating_add(unplayed_grace))
                    }
                    _ => None,
                };
                [slot.session.poll_timeout(), unplayed]
                    .into_iter()
                    .flatten()
                    .min()
            })
            .min()
    }

    fn ctx(&self, now: u64) -> Ctx {
        Ctx {
            now_ms: now,
            shard: self.cfg.shard,
            can_commit: self.can_commit,
        }
    }

    fn refresh_can_commit(&mut self) {
        self.can_commit = self.commit_retry.is_empty() && self.host.accepts_value();
    }

    // ----- connections -----------------------------------------------------

    /// An authenticated `Hello` for `account` on `conn`.
    pub fn login(&mut self, now: u64, conn: ConnId, account: String) {
        // Frames produced so far belong before anything this login sends.
        self.route_outbox(now);
        if let Some(&idx) = self.by_account.get(&account) {
            self.take_over(now, idx, conn);
            return;
        }
        if !self.host.claim(&account) {
            self.close(
                conn,
                CloseCode::ServerBusy,
                "login in progress elsewhere; retry",
                0,
            );
            return;
        }
        if !self.host.accepts_logins() {
            self.refuse_for_storage(conn, &account);
            return;
        }
        // The record comes from storage asynchronously; the shard goes on
        // meanwhile and the login finishes in `loaded`.
        let tag = self.next_load_tag;
        self.next_load_tag += 1;
        if self.host.load(&account, tag).is_err() {
            self.refuse_for_storage(conn, &account);
            return;
        }
        self.loading.insert(tag, (conn, account));
        self.loading_by_conn.insert(conn, tag);
    }

    fn take_over(&mut self, now: u64, idx: usize, conn: ConnId) {
        if self.cfg.takeover == Takeover::Refuse {
            self.close(
                conn,
                CloseCode::AlreadyLoggedIn,
                "this account is already in play",
                0,
            );
            return;
        }
        self.stats.takeovers += 1;
        let token = self.host.resume_token();
        let restart_token = self.host.resume_token().0;
        let slot = &mut self.sessions[idx];
        slot.session.take_over(token, &mut self.pool, now);
        // A new numbering: a mark saved before it must not restore this
        // session for the old client.
        slot.restart_token = restart_token;
        let old = slot.conn.replace(conn);
        let player = slot.player;
        if let Some(old) = old {
            self.by_conn.remove(&old);
            self.close(
                old,
                CloseCode::SessionTakenOver,
                "another login took this session",
                0,
            );
        } else {
            self.zombie_to_active();
        }
        self.by_conn.insert(conn, idx);
        self.welcome(idx, true);
        let ctx = self.ctx(now);
        if old.is_none() {
            self.game.link_changed(&ctx, player, false, &mut self.out);
        }
        self.game.snapshot(&ctx, player, &mut self.out);
        self.stats.logins += 1;
        self.route_outbox(now);
    }

    fn refuse_for_storage(&mut self, conn: ConnId, account: &str) {
        if !self.by_account.contains_key(account) && !self.is_loading(account) {
            self.host.release(account);
        }
        self.close(
            conn,
            CloseCode::StorageUnavailable,
            "storage is unavailable; retry later",
            self.cfg.storage_retry_after_ms,
        );
    }

    fn is_loading(&self, account: &str) -> bool {
        self.loading.values().any(|(_, a)| a == account)
    }

    /// Storage answered the load `tag` of `account`.
    pub fn loaded(
        &mut self,
        now: u64,
        account: String,
        tag: u64,
        result: Result<Option<Record>, LoadFailed>,
    ) {
        let Some((conn, _)) = self.loading.remove(&tag) else {
            // The connection went away while loading.
            if !self.by_account.contains_key(&account) && !self.is_loading(&account) {
                self.host.release(&account);
            }
            return;
        };
        self.loading_by_conn.remove(&conn);
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                warn!(shard = self.cfg.shard, %account, error = %e.0, "record load failed");
                self.refuse_for_storage(conn, &account);
                return;
            }
        };
        if self.by_account.contains_key(&account) {
            // Another login of this account finished loading first: this
            // one takes that session over (or is refused), as usual.
            self.login(now, conn, account);
            return;
        }
        self.route_outbox(now);
        let ctx = self.ctx(now);
        // The game's snapshot frames wait in the outbox until the Welcome is
        // queued, so the Welcome goes first.
        let player = match self.game.join(&ctx, &account, record, &mut self.out) {
            Ok(player) => player,
            Err(e) => {
                warn!(shard = self.cfg.shard, %account, error = %e, "stored record unreadable; login refused");
                self.refuse_for_storage(conn, &account);
                return;
            }
        };
        let id = ((self.cfg.shard as u64) << SESSION_SHARD_SHIFT) | self.next_session;
        self.next_session += 1;
        let token = self.host.resume_token();
        let mut session = ServerSession::new(id, token, now, self.cfg.session.clone());
        if self.protecting {
            session.set_grace_frozen(true, now);
        }
        let restart_token = self.host.resume_token().0;
        let idx = self.sessions.insert(SessionSlot {
            session,
            player,
            account: account.clone(),
            conn: Some(conn),
            restart_token,
        });
        self.by_conn.insert(conn, idx);
        self.by_id.insert(id, idx);
        self.by_account.insert(account, idx);
        self.by_player.insert(player, idx);
        self.host.population(1);
        self.stats.active += 1;
        self.stats.logins += 1;
        self.welcome(idx, false);
        self.route_outbox(now);
    }

    fn welcome(&mut self, idx: usize, took_over: bool) {
        let slot = &self.sessions[idx];
        let Some(conn) = slot.conn else { return };
        let cfg = slot.session.config();
        let frame = welcome_frame(pb::Welcome {
            session_id: slot.session.id(),
            resume_token: slot.session.token().0.to_vec(),
            entity_id: slot.player,
            game: self.game.welcome_info().to_vec(),
            heartbeat_interval_ms: cfg.keepalive_interval_ms as u32,
            heartbeat_timeout_ms: cfg.heartbeat_timeout_ms as u32,
            resume_grace_ms: cfg.zombie_grace_ms as u32,
            took_over,
            restart_token: slot.restart_token.to_vec(),
        });
        self.host.transmit(Transmit::Frame { conn, frame });
    }

    /// A `Resume` on `conn`.
    pub fn resume(&mut self, now: u64, conn: ConnId, resume: pb::Resume) {
        self.route_outbox(now);
        let Some(&idx) = self.by_id.get(&resume.session_id) else {
            return self.restore(conn, resume);
        };
        let token = self.host.resume_token();
        let slot = &mut self.sessions[idx];
        let plan = match slot.session.resume(
            &resume.token,
            resume.frames_received,
            token,
            &mut self.pool,
            now,
        ) {
            Ok(plan) => plan,
            Err(ResumeRefused::BadToken) => {
                return self.refuse_resume(conn, RefusedResume::BadToken)
            }
            Err(ResumeRefused::FramesFromTheFuture) => {
                return self.refuse_resume(conn, RefusedResume::BadFrameCount)
            }
        };
        let was_zombie = slot.conn.is_none();
        let player = slot.player;
        if let Some(old) = slot.conn.replace(conn) {
            // The new connection wins over a half-open old one.
            self.by_conn.remove(&old);
            self.close(
                old,
                CloseCode::SessionTakenOver,
                "resumed on another connection",
                0,
            );
        }
        self.by_conn.insert(conn, idx);
        if was_zombie {
            self.zombie_to_active();
        }
        let slot = &self.sessions[idx];
        let (mode, frames_base) = match &plan {
            ResumePlan::Replay(_) => (pb::ResumeMode::Replay, resume.frames_received),
            ResumePlan::Snapshot { frames_base } => (pb::ResumeMode::Snapshot, *frames_base),
        };
        let frame = resumed_frame(pb::Resumed {
            session_id: slot.session.id(),
            resume_token: slot.session.token().0.to_vec(),
            mode: mode as i32,
            frames_base,
            last_input_seq: slot.session.last_applied_input(),
        });
        self.host.transmit(Transmit::Frame { conn, frame });
        let ctx = self.ctx(now);
        match plan {
            ResumePlan::Replay(frames) => {
                self.stats.resumes_replay += 1;
                self.stats.replayed_frames += frames.len() as u64;
                for frame in frames {
                    self.host.transmit(Transmit::Frame { conn, frame });
                }
            }
            ResumePlan::Snapshot { .. } => {
                self.stats.resumes_snapshot += 1;
                self.game.snapshot(&ctx, player, &mut self.out);
            }
        }
        if was_zombie {
            self.game.link_changed(&ctx, player, false, &mut self.out);
        }
        self.route_outbox(now);
    }

    /// A resume of a session this engine does not hold: one it may have
    /// held before a restart or crash. Storage is asked for the record
    /// saved with that session; [`Engine::session_loaded`] finishes.
    fn restore(&mut self, conn: ConnId, resume: pb::Resume) {
        let ours = (resume.session_id >> SESSION_SHARD_SHIFT) == u64::from(self.cfg.shard);
        if !ours || resume.restart_token.len() != 16 || self.loading_by_conn.contains_key(&conn) {
            return self.refuse_resume(conn, RefusedResume::UnknownSession);
        }
        let tag = self.next_load_tag;
        self.next_load_tag += 1;
        if self.host.load_session(resume.session_id, tag).is_err() {
            self.close(
                conn,
                CloseCode::StorageUnavailable,
                "storage is unavailable; retry later",
                self.cfg.storage_retry_after_ms,
            );
            return;
        }
        self.restoring.insert(tag, (conn, resume));
        self.loading_by_conn.insert(conn, tag);
    }

    /// Storage answered [`Host::load_session`] `tag`: the record whose saved
    /// session is the one being resumed (its mark in `record.session`), or
    /// none. A matching restart token brings the session back: the player
    /// joins the game from the record, and the session continues the
    /// client's frame count and the saved input count (see
    /// [`ServerSession::restored`]).
    pub fn session_loaded(
        &mut self,
        now: u64,
        tag: u64,
        result: Result<Option<Record>, LoadFailed>,
    ) {
        let Some((conn, resume)) = self.restoring.remove(&tag) else {
            return; // the connection went away while loading
        };
        self.loading_by_conn.remove(&conn);
        let record = match result {
            Ok(Some(record)) => record,
            Ok(None) => return self.refuse_resume(conn, RefusedResume::UnknownSession),
            Err(e) => {
                warn!(shard = self.cfg.shard, error = %e.0, "session load failed");
                self.close(
                    conn,
                    CloseCode::StorageUnavailable,
                    "storage is unavailable; retry later",
                    self.cfg.storage_retry_after_ms,
                );
                return;
            }
        };
        let Some(mark) = record.session.filter(|m| m.session_id == resume.session_id) else {
            return self.refuse_resume(conn, RefusedResume::UnknownSession);
        };
        if !ResumeToken(mark.restart_token).matches(&resume.restart_token) {
            return self.refuse_resume(conn, RefusedResume::BadToken);
        }
        let account = record.account.clone();
        // Since the save, the account logged in again (or another resume
        // of this session got here first): the saved session is over.
        if self.by_id.contains_key(&mark.session_id)
            || self.by_account.contains_key(&account)
            || self.is_loading(&account)
        {
            return self.refuse_resume(conn, RefusedResume::UnknownSession);
        }
        if !self.host.claim(&account) {
            self.close(
                conn,
                CloseCode::ServerBusy,
                "login in progress elsewhere; retry",
                0,
            );
            return;
        }
        self.route_outbox(now);
        let ctx = self.ctx(now);
        let player = match self.game.join(&ctx, &account, Some(record), &mut self.out) {
            Ok(player) => player,
            Err(e) => {
                warn!(shard = self.cfg.shard, %account, error = %e, "stored record unreadable; resume refused");
                self.host.release(&account);
                self.out = Outbox::default();
                return self.refuse_resume(conn, RefusedResume::UnknownSession);
            }
        };
        let token = self.host.resume_token();
        let token_bytes = token.0.to_vec();
        let frames_base = resume.frames_received;
        let mut session = ServerSession::restored(
            mark.session_id,
            token,
            mark.last_input,
            frames_base,
            now,
            self.cfg.session.clone(),
        );
        if self.protecting {
            session.set_grace_frozen(true, now);
        }
        let idx = self.sessions.insert(SessionSlot {
            session,
            player,
            account: account.clone(),
            conn: Some(conn),
            restart_token: mark.restart_token,
        });
        self.by_conn.insert(conn, idx);
        self.by_id.insert(mark.session_id, idx);
        self.by_account.insert(account, idx);
        self.by_player.insert(player, idx);
        self.host.population(1);
        self.stats.active += 1;
        self.stats.resumes_restored += 1;
        let frame = resumed_frame(pb::Resumed {
            session_id: mark.session_id,
            resume_token: token_bytes,
            mode: pb::ResumeMode::Snapshot as i32,
            frames_base,
            last_input_seq: mark.last_input,
        });
        self.host.transmit(Transmit::Frame { conn, frame });
        // The snapshot the game pushed in `join` follows the Resumed.
        self.route_outbox(now);
    }

    fn refuse_resume(&mut self, conn: ConnId, why: RefusedResume) {
        self.stats.count_refused(why);
        self.close(conn, CloseCode::ResumeRefused, "resume refused", 0);
    }

    /// A cumulative frame ack on `conn`.
    pub fn ack(&mut self, now: u64, conn: ConnId, frames_received: u64) {
        if let Some(&idx) = self.by_conn.get(&conn) {
            self.ack_session(now, idx, conn, frames_received);
        }
    }

    fn ack_session(&mut self, now: u64, idx: usize, conn: ConnId, frames_received: u64) {
        let slot = &mut self.sessions[idx];
        slot.session.heard_from(now);
        if let Err(e) = slot.session.on_ack(frames_received, &mut self.pool, now) {
            debug!(shard = self.cfg.shard, error = ?e, "bad ack");
            self.protocol_close(
                now,
                idx,
                conn,
                CloseCode::ProtocolError,
                "ack beyond frames sent",
            );
        }
    }

    /// An input on `conn`: number `seq`, a piggybacked ack (0: none), and
    /// the game's command (`None`: a command the I/O side dropped over the
    /// peer's allowance, or an input without one; the number still counts).
    pub fn input(&mut self, now: u64, conn: ConnId, seq: u32, ack: u64, cmd: Option<G::Input>) {
        let Some(&idx) = self.by_conn.get(&conn) else {
            return; // a connection the engine already let go of
        };
        if ack != 0 {
            self.ack_session(now, idx, conn, ack);
            if self.by_conn.get(&conn) != Some(&idx) {
                return;
            }
        }
        let slot = &mut self.sessions[idx];
        slot.session.heard_from(now);
        match slot.session.check_input(seq, now) {
            Ok(InputVerdict::Apply) => {
                let player = slot.player;
                if let Some(cmd) = cmd {
                    let ctx = self.ctx(now);
                    self.game.apply(&ctx, player, seq, cmd, &mut self.out);
                    self.route_outbox(now);
                }
            }
            Ok(InputVerdict::Duplicate) => self.stats.duplicate_inputs += 1,
            Err(e) => {
                debug!(shard = self.cfg.shard, error = ?e, "input sequence gap");
                self.protocol_close(
                    now,
                    idx,
                    conn,
                    CloseCode::InputSeqGap,
                    "input seq skipped ahead",
                );
            }
        }
    }

    /// A `Logout` on `conn`: the player leaves and is saved.
    pub fn logout(&mut self, now: u64, conn: ConnId) {
        if let Some(&idx) = self.by_conn.get(&conn) {
            self.end_session(now, idx, Some(CloseCode::Logout));
        }
    }

    /// An operators' notice to every session of this engine, connected or
    /// not (a zombie gets it on its resume). Returns how many sessions it
    /// went to.
    pub fn notice(&mut self, now: u64, text: &str) -> usize {
        let frame = crate::wire::notice_frame(text);
        self.broadcast_local(now, &frame);
        self.sessions.len()
    }

    /// An operator ends `account`'s session: the player leaves the world and
    /// is saved, the connection (if any) is closed with `KICKED` and
    /// `message`, and its tokens die with the session (a resume is
    /// refused; a new login starts a new session). `false` if the account
    /// has no session here.
    pub fn kick(&mut self, now: u64, account: &str, message: &str) -> bool {
        let Some(&idx) = self.by_account.get(account) else {
            return false;
        };
        let conn = self.sessions[idx].conn;
        self.end_session(now, idx, None);
        if let Some(conn) = conn {
            self.close(conn, CloseCode::Kicked, message, 0);
        }
        self.stats.kicks += 1;
        true
    }

    /// Storage answered load `tag` (a login's or a resume's): in a cluster,
    /// the account belongs on another server (it holds the session, or it
    /// is less loaded). The connection is closed with `REDIRECT` to it; the
    /// client sends the same `Hello` or `Resume` there.
    pub fn redirected(&mut self, now: u64, tag: u64, to: pb::Redirect) {
        let Some(conn) = self.stop_waiting(tag) else {
            return; // the connection went away while loading
        };
        self.stats.redirects += 1;
        self.route_outbox(now);
        self.close_redirect(conn, to, "this account is served by another server");
    }

    /// Storage answered load `tag`: in a cluster, nobody may hold the
    /// account for a moment (the server that held it stopped answering; its
    /// lease ends in `retry_after_ms`). The connection is closed with
    /// `SERVER_BUSY` and that wait, so the client comes back just when the
    /// account is free.
    pub fn try_later(&mut self, now: u64, tag: u64, why: &str, retry_after_ms: u32) {
        let Some(conn) = self.stop_waiting(tag) else {
            return;
        };
        self.route_outbox(now);
        self.close(conn, CloseCode::ServerBusy, why, retry_after_ms);
    }

    /// The connection of load `tag` (a login's or a resume's), no longer
    /// waiting; a login's claim is released.
    fn stop_waiting(&mut self, tag: u64) -> Option<ConnId> {
        let conn = if let Some((conn, account)) = self.loading.remove(&tag) {
            if !self.by_account.contains_key(&account) && !self.is_loading(&account) {
                self.host.release(&account);
            }
            conn
        } else {
            self.restoring.remove(&tag)?.0
        };
        self.loading_by_conn.remove(&conn);
        Some(conn)
    }

    /// Moves `account`'s session to the cluster's server `to` (an
    /// operator's channel change): the player leaves this game and is saved
    /// *with its session*, as at a shutdown, the account is handed to `to`
    /// once that save is durable, and the connection (if any) is closed with
    /// `REDIRECT`: the client resumes there, its unacknowledged inputs
    /// applied once. A zombie's client is redirected when it comes back.
    /// `false` if the account has no session here.
    pub fn transfer(&mut self, now: u64, account: &str, to: pb::Redirect) -> bool {
        let Some(&idx) = self.by_account.get(account) else {
            return false;
        };
        self.route_outbox(now);
        let slot = self.leave_keeping_session(now, idx);
        let tag = self.next_load_tag;
        self.next_load_tag += 1;
        let pending = self.host.hand_over(&slot.account, &to.node, tag);
        self.host.population(-1);
        self.stats.transfers += 1;
        if let Some(conn) = slot.conn {
            self.by_conn.remove(&conn);
            if pending {
                // Sent there only once the account is that server's: earlier,
                // it would find this one still holding it.
                self.moving.insert(tag, (conn, to));
            } else {
                self.close_redirect(conn, to, "moved to another server");
            }
        }
        self.route_outbox(now);
        true
    }

    /// The hand-over `tag` of a moved session is done (`ok`): its client is
    /// sent to the other server. If it failed, the account stays here and
    /// the client is told to resume here (the session comes back from
    /// storage).
    pub fn handed_over(&mut self, tag: u64, ok: bool) {
        let Some((conn, to)) = self.moving.remove(&tag) else {
            return; // a zombie's, or the connection went away
        };
        if ok {
            self.close_redirect(conn, to, "moved to another server");
        } else {
            self.close(
                conn,
                CloseCode::ServerBusy,
                "the move did not complete; resume here",
                self.cfg.restart_retry_ms,
            );
        }
    }

    /// `conn` is gone (the peer closed it, or the driver cut it). Its
    /// session, if any, becomes a zombie. Returns whether it had one.
    pub fn closed(&mut self, now: u64, conn: ConnId) -> bool {
        if let Some(tag) = self.loading_by_conn.remove(&conn) {
            // Its answer finds no login (and releases the claim) or no
            // resume.
            self.loading.remove(&tag);
            self.restoring.remove(&tag);
        }
        self.moving.retain(|_, (c, _)| *c != conn);
        match self.by_conn.remove(&conn) {
            Some(idx) => {
                self.detach(now, idx);
                self.route_outbox(now);
                true
            }
            None => false,
        }
    }

    /// The peer broke the session protocol: close its connection; the
    /// session itself stays (as a zombie) for a well-behaved resume.
    fn protocol_close(&mut self, now: u64, idx: usize, conn: ConnId, code: CloseCode, why: &str) {
        self.by_conn.remove(&conn);
        self.close(conn, code, why, 0);
        self.detach(now, idx);
    }

    fn detach(&mut self, now: u64, idx: usize) {
        let slot = &mut self.sessions[idx];
        if let Some(conn) = slot.conn.take() {
            self.by_conn.remove(&conn);
        }
        if slot.session.state() == SessionState::Live {
            slot.session.detach(now);
            let player = slot.player;
            self.stats.active -= 1;
            self.stats.zombies += 1;
            let ctx = self.ctx(now);
            self.game.link_changed(&ctx, player, true, &mut self.out);
        }
    }

    fn zombie_to_active(&mut self) {
        self.stats.zombies -= 1;
        self.stats.active += 1;
    }

    /// Ends a session: the player leaves and is saved, the session is freed,
    /// its connection (if any) closed with `code`.
    fn end_session(&mut self, now: u64, idx: usize, code: Option<CloseCode>) {
        self.route_outbox(now);
        // A client logging out learns which of its inputs were applied
        // before it goes: the last InputAck would otherwise wait for its
        // delay and never be sent.
        if code == Some(CloseCode::Logout) {
            if let Some(slot) = self.sessions.get_mut(idx) {
                let seq = slot.session.last_applied_input();
                if seq > 0 && slot.conn.is_some() {
                    slot.session.input_ack_sent(now);
                    self.deliver(now, idx, input_ack_frame(seq));
                }
            }
        }
        let mut slot = self.sessions.remove(idx);
        if slot.conn.is_some() {
            self.stats.active -= 1;
        } else {
            self.stats.zombies -= 1;
        }
        self.stats.logouts += 1;
        let ctx = self.ctx(now);
        if let Some(mut record) = self.game.leave(&ctx, slot.player, &mut self.out) {
            // The session is over: its saved mark goes with this record.
            record.session = None;
            self.host.save_now(record);
        }
        slot.session.release(&mut self.pool);
        self.by_player.remove(&slot.player);
        self.by_id.remove(&slot.session.id());
        self.by_account.remove(&slot.account);
        self.host.release(&slot.account);
        self.host.population(-1);
        if let Some(conn) = slot.conn {
            self.by_conn.remove(&conn);
            if let Some(code) = code {
                self.close(conn, code, "session ended", 0);
            }
        }
        self.route_outbox(now);
    }

    // ----- storage and other shards ---------------------------------------

    /// A transaction is durable.
    pub fn committed(&mut self, now: u64, tx: Tx) {
        self.refresh_can_commit();
        let ctx = self.ctx(now);
        self.game.committed(&ctx, &tx, &mut self.out);
        self.route_outbox(now);
    }

    /// Storage refused a transaction as bad data.
    pub fn rejected(&mut self, now: u64, tx: Tx) {
        let ctx = self.ctx(now);
        self.game.rejected(&ctx, &tx, &mut self.out);
        self.route_outbox(now);
    }

    /// A message from another shard.
    pub fn on_bus(&mut self, now: u64, msg: BusMsg<G::Remote>) {
        match msg {
            BusMsg::Broadcast(frame) => self.broadcast_local(now, &frame),
            BusMsg::Game { from_shard, msg } => {
                let ctx = self.ctx(now);
                self.game.on_remote(&ctx, from_shard, msg, &mut self.out);
            }
            BusMsg::Node(bytes) => match G::decode_remote(&bytes) {
                Some(msg) => {
                    let ctx = self.ctx(now);
                    self.game
                        .on_remote(&ctx, crate::FROM_OTHER_NODE, msg, &mut self.out);
                }
                None => debug!(
                    shard = self.cfg.shard,
                    "a message from another server this build cannot read; dropped"
                ),
            },
            BusMsg::Bounced { msg, why } => {
                if let Some(msg) = G::decode_remote(&msg) {
                    let ctx = self.ctx(now);
                    self.game.undeliverable(&ctx, msg, why, &mut self.out);
                }
            }
        }
        self.route_outbox(now);
    }

    // ----- ticks and timers -----------------------------------------------

    /// Protect mode on or off: while on, every zombie's grace is frozen
    /// (players cut off by an attack keep their sessions).
    pub fn set_protect(&mut self, now: u64, on: bool) {
        if on == self.protecting {
            return;
        }
        self.protecting = on;
        for (_, slot) in self.sessions.iter_mut() {
            slot.session.set_grace_frozen(on, now);
        }
    }

    /// Runs the game's tick, write-behind and every session timer. Call when
    /// `now >= next_tick()`.
    pub fn tick(&mut self, now: u64) {
        self.refresh_can_commit();
        let ctx = self.ctx(now);
        self.game.tick(&ctx, &mut self.out);
        // Write-behind: hand storage what changed; it coalesces per account
        // and writes every flush interval, off this thread.
        self.game.take_dirty(&mut self.dirty);
        if !self.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dirty);
            for record in &mut dirty {
                record.session = self.mark_of(&record.account);
            }
            self.dirty = dirty;
            self.host.save_dirty(&mut self.dirty);
            self.dirty.clear();
        }
        self.retry_commits();
        let mut expired = Vec::new();
        let mut cut = Vec::new();
        let mut acks = Vec::new();
        let unplayed_grace = self.cfg.unplayed_grace_ms;
        for (idx, slot) in self.sessions.iter_mut() {
            // A zombie that never applied an input has nothing to come back
            // to: it gets the short grace, frozen or not, so such sessions
            // cannot pile up.
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
        self.route_outbox(now);
        for (idx, seq) in acks {
            self.deliver(now, idx, input_ack_frame(seq));
        }
        for idx in cut {
            if let Some(conn) = self.sessions.get(idx).and_then(|s| s.conn) {
                self.by_conn.remove(&conn);
                self.close(conn, CloseCode::HeartbeatTimeout, "no heartbeat", 0);
                self.detach(now, idx);
            }
        }
        for idx in expired {
            if self.sessions.contains(idx) {
                self.stats.zombie_expiries += 1;
                self.end_session(now, idx, None);
            }
        }
        self.route_outbox(now);
        let step = self.cfg.tick_ms.max(1);
        while self.next_tick <= now {
            self.next_tick += step;
        }
    }

    /// Shutdown: every player leaves the game and is saved *with its
    /// session*, so the client can resume it from storage on the next run
    /// (with its restart token, see [`Engine::session_loaded`]); every
    /// connection, and every login or resume waiting for storage, is closed
    /// with `code` and `retry_after_ms` (when to come back).
    pub fn shutdown(&mut self, now: u64, code: CloseCode, message: &str, retry_after_ms: u32) {
        let waiting: Vec<ConnId> = self
            .loading
            .drain()
            .map(|(_, (conn, _))| conn)
            .chain(self.restoring.drain().map(|(_, (conn, _))| conn))
            .chain(self.moving.drain().map(|(_, (conn, _))| conn))
            .collect();
        self.loading_by_conn.clear();
        for conn in waiting {
            self.close(conn, code, message, retry_after_ms);
        }
        self.route_outbox(now);
        let all: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for idx in all {
            let slot = self.leave_keeping_session(now, idx);
            self.host.release(&slot.account);
            self.host.population(-1);
            if let Some(conn) = slot.conn {
                self.by_conn.remove(&conn);
                self.close(conn, code, message, retry_after_ms);
            }
        }
        self.route_outbox(now);
    }

    /// The player leaves the game and is saved *with its session* (so a
    /// resume can bring the session back from that record, here or on
    /// another server), and the session is freed. The caller lets go of the
    /// account and closes the connection.
    fn leave_keeping_session(&mut self, now: u64, idx: usize) -> SessionSlot {
        let ctx = self.ctx(now);
        let mark = self.sessions[idx].mark();
        let player = self.sessions[idx].player;
        if let Some(mut record) = self.game.leave(&ctx, player, &mut self.out) {
            record.session = Some(mark);
            self.host.save_now(record);
        }
        // Whatever else the game saved for it keeps the mark too.
        self.route_outbox(now);
        let mut slot = self.sessions.remove(idx);
        if slot.conn.is_some() {
            self.stats.active -= 1;
        } else {
            self.stats.zombies -= 1;
        }
        slot.session.release(&mut self.pool);
        self.by_player.remove(&slot.player);
        self.by_id.remove(&slot.session.id());
        self.by_account.remove(&slot.account);
        slot
    }

    // ----- outbound --------------------------------------------------------

    /// Appends a counted frame to the session's replay buffer and, when it
    /// is connected, to its connection's queue.
    fn deliver(&mut self, now: u64, idx: usize, frame: Bytes) {
        let Some(slot) = self.sessions.get_mut(idx) else {
            return;
        };
        slot.session.push_frame(frame.clone(), &mut self.pool, now);
        if let Some(conn) = slot.conn {
            self.host.transmit(Transmit::Frame { conn, frame });
        }
    }

    fn broadcast_local(&mut self, now: u64, frame: &Bytes) {
        let all: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for idx in all {
            self.deliver(now, idx, frame.clone());
        }
    }

    /// Routes everything the game produced, until it produces nothing more.
    fn route_outbox(&mut self, now: u64) {
        while !self.out.is_empty() {
            let mut frames = std::mem::take(&mut self.out.frames);
            for (player, frame) in frames.drain(..) {
                if let Some(&idx) = self.by_player.get(&player) {
                    self.deliver(now, idx, frame);
                }
            }
            // Keep the allocation for the next round.
            if self.out.frames.is_empty() {
                self.out.frames = frames;
            }
            for frame in std::mem::take(&mut self.out.broadcast) {
                self.broadcast_local(now, &frame);
                self.host.broadcast_other_nodes(&frame);
                for s in 0..self.host.shard_count() {
                    if s != self.cfg.shard {
                        // A full bus loses that shard's copy: broadcasts
                        // are best effort under overload.
                        let _ = self.host.send_bus(s, BusMsg::Broadcast(frame.clone()));
                    }
                }
            }
            for (route, msg) in std::mem::take(&mut self.out.remote) {
                self.route_remote(now, route, msg);
            }
            for mut record in std::mem::take(&mut self.out.saves) {
                record.session = self.mark_of(&record.account);
                self.host.save_now(record);
            }
            for tx in std::mem::take(&mut self.out.commits) {
                self.commit(now, tx);
            }
        }
    }

    fn route_remote(&mut self, now: u64, route: Route, msg: G::Remote) {
        let me = self.cfg.shard;
        let target = match &route {
            Route::Shard(s) if *s < self.host.shard_count() => Some(*s),
            Route::Shard(_) => None,
            Route::Account(account) => self.host.locate(account),
        };
        let ctx = self.ctx(now);
        if let (None, Route::Account(account)) = (target, &route) {
            // Not on this server: in a cluster, perhaps on another one.
            let why = match G::encode_remote(&msg) {
                Some(bytes) => match self.host.send_other_node(account, bytes) {
                    Ok(()) => return,
                    Err(why) => why,
                },
                None => Undeliverable::NoSuchAccount,
            };
            self.game.undeliverable(&ctx, msg, why, &mut self.out);
            return;
        }
        match target {
            Some(s) if s == me => self.game.on_remote(&ctx, me, msg, &mut self.out),
            Some(s) => {
                if let Err(msg) = self.send_game_bus(s, msg) {
                    self.game
                        .undeliverable(&ctx, msg, Undeliverable::Busy, &mut self.out);
                }
            }
            None => self
                .game
                .undeliverable(&ctx, msg, Undeliverable::NoSuchAccount, &mut self.out),
        }
    }

    fn send_game_bus(&mut self, shard: u16, msg: G::Remote) -> Result<(), G::Remote> {
        let msg = BusMsg::Game {
            from_shard: self.cfg.shard,
            msg,
        };
        match self.host.send_bus(shard, msg) {
            Ok(()) => Ok(()),
            Err(BusMsg::Game { msg, .. }) => Err(msg),
            Err(_) => unreachable!("the bus gives back what it was given"),
        }
    }

    /// Hands a transaction to storage; the game hears of it in `committed`.
    fn commit(&mut self, now: u64, mut tx: Tx) {
        tx.record.session = self.mark_of(&tx.record.account);
        let tx = if self.commit_retry.is_empty() {
            let result = self.host.commit(tx);
            self.refresh_can_commit();
            match result {
                Ok(()) => return,
                Err(tx) => tx,
            }
        } else {
            tx
        };
        self.can_commit = false;
        if self.commit_retry.len() < MAX_COMMIT_BACKLOG {
            self.commit_retry.push_back(tx);
        } else {
            warn!(
                shard = self.cfg.shard,
                tx = tx.tx_id,
                "commit backlog full; transaction refused"
            );
            self.stats.commits_refused += 1;
            let ctx = self.ctx(now);
            self.game.rejected(&ctx, &tx, &mut self.out);
        }
    }

    fn retry_commits(&mut self) {
        while let Some(tx) = self.commit_retry.pop_front() {
            if let Err(tx) = self.host.commit(tx) {
                self.commit_retry.push_front(tx);
                break;
            }
        }
        self.refresh_can_commit();
    }

    /// The mark saved with `account`'s records: its session as it is now,
    /// or none when it has no session.
    fn mark_of(&self, account: &str) -> Option<SessionMark> {
        let idx = *self.by_account.get(account)?;
        Some(self.sessions[idx].mark())
    }

    fn close(&mut self, conn: ConnId, code: CloseCode, message: &str, retry_after_ms: u32) {
        self.stats.count_close(code);
        let frame = close_frame(code, message, retry_after_ms);
        self.host.transmit(Transmit::Close { conn, frame });
    }

    /// A `REDIRECT` to go on at once at the server `to` names.
    fn close_redirect(&mut self, conn: ConnId, to: pb::Redirect, message: &str) {
        self.stats.count_close(CloseCode::Redirect);
        let frame = redirect_frame(to, message);
        self.host.transmit(Transmit::Close { conn, frame });
    }
}

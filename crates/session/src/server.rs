//! The server's half of a session.
//!
//! A [`ServerSession`] is the part of a player's session that survives the
//! socket: who the player is (id and resume token), which counted frames were
//! sent and which the client has acknowledged, the frames it may still need
//! ([`ReplayBuffer`]), which inputs were applied, and the timers that decide
//! when a silent connection is dead and when a zombie is logged out.
//!
//! It never sees a socket. The caller (a shard) feeds it what arrived and asks
//! it what is due, quinn-proto style:
//!
//! ```text
//!   loop {
//!       while let Some(ev) = session.handle_timeout(now) { act on ev }
//!       sleep until session.poll_timeout()  (or until a frame arrives)
//!   }
//! ```
//!
//! # Frame numbering
//!
//! Every server frame except `Welcome`, `Resumed` and `Close` is counted:
//! numbered 1, 2, 3 ... per session, across resumes. The client acks the
//! count it has received (cumulatively); frames up to that count are released.
//! A login that takes over a session starts the numbering again at 1, because
//! `Welcome` is always followed by a snapshot numbered from 1.
//!
//! # Resume
//!
//! A `Resume` presents the token and the client's frame count. A wrong token
//! or a count above what was sent is refused and changes nothing. Otherwise
//! the frames after the count are replayed if all of them are still held, or
//! the client gets a snapshot and continues counting from `frames_sent`. The
//! token rotates on every resume; the one just presented stays valid until
//! the client acks a frame sent after the resume, because the `Resumed` that
//! carries the new token can be lost with its connection. A resume on a Live
//! session wins over the old connection, which the caller closes.

use std::fmt;

use bytes::Bytes;
use tether_proto::pb;

use crate::replay::{PagePool, ReplayBuffer};
use crate::token::ResumeToken;
use crate::SessionId;

/// Shortest interval a timer is re-armed with. A zero interval in a config
/// would otherwise make a timer due again at the very `now` it fired at, and a
/// caller looping on `handle_timeout` until `None` would never get out.
const MIN_TIMER_INTERVAL_MS: u64 = 1;

/// Tunables of a server session. Every bound here is also a server config field.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most counted frames kept for replay (sent but not yet acked). When full,
    /// the oldest page is let go and a later resume falls back to a snapshot.
    ///
    /// Default 4096: at a busy ~20 frames/s that is more than three minutes of
    /// traffic, so most zombies can be caught up by replay within their grace
    /// period; the handles cost at most 128 pages of 1 KiB per session (the
    /// frames themselves are shared with every other recipient).
    pub replay_cap_frames: usize,
    /// The replay cap while the session is a zombie (the smaller of the two
    /// applies). A zombie is an absent player: past this many missed frames a
    /// resume gets a fresh snapshot instead of a replay, and the zombie's
    /// memory stops growing.
    ///
    /// Default 1024: about 30 s of the standard load (~35 frames/s per
    /// player), which covers Wi-Fi blips and handovers by replay, for at most
    /// 32 KiB of frame handles per zombie. Once the cap has let go of a frame
    /// the zombie missed, no resume can be a replay any more: the zombie then
    /// drops what it holds and keeps nothing more until it is resumed (with
    /// a snapshot), so a long absence costs no frame memory at all.
    pub zombie_replay_cap_frames: usize,
    /// The client must be heard from at least this often (any frame), or
    /// [`TimerEvent::HeartbeatTimeout`] fires and the caller detaches it.
    ///
    /// Default 15 s: several client keep-alive intervals (the client's
    /// default is 2 s; the server announces its own in
    /// `Welcome.heartbeat_interval_ms`), so a connection is only declared
    /// dead after several keep-alives went missing, not after one slow round
    /// trip.
    pub heartbeat_timeout_ms: u64,
    /// The server sends an `InputAck` keep-alive when it has sent nothing
    /// counted for this long ([`TimerEvent::KeepaliveDue`]).
    ///
    /// Default 5 s: a third of the heartbeat timeout, so a client using the
    /// same timeout for silence hears from a quiet server twice before giving up.
    pub keepalive_interval_ms: u64,
    /// How long a zombie lives before [`TimerEvent::ZombieExpired`].
    ///
    /// Default 2 min: long enough for a phone to change networks or a router
    /// to reboot, short enough that the characters of players who quit do not
    /// stand around in the world for long.
    pub zombie_grace_ms: u64,
    /// An `InputAck` is due once this many inputs were applied since the last
    /// one, or [`SessionConfig::input_ack_delay_ms`] after the first of them.
    ///
    /// Default 16: one counted frame per 16 inputs keeps acks cheap, and the
    /// client's unacked list (1024 by default) drains long before it fills.
    pub input_ack_every: u32,
    /// How long an applied input waits for its `InputAck` at most.
    ///
    /// Default 200 ms: long enough to coalesce a burst of inputs into one ack,
    /// short enough that the client's unacked list stays small.
    pub input_ack_delay_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            replay_cap_frames: 4096,
            zombie_replay_cap_frames: 1024,
            heartbeat_timeout_ms: 15_000,
            keepalive_interval_ms: 5_000,
            zombie_grace_ms: 120_000,
            input_ack_every: 16,
            input_ack_delay_ms: 200,
        }
    }
}

/// Live: a connection is attached. Zombie: none is; the character stays in
/// the world and frames keep landing in the replay buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Live,
    /// Detached at `since_ms` (the grace timer may have been frozen since;
    /// see [`ServerSession::set_grace_frozen`]).
    Zombie {
        since_ms: u64,
    },
}

/// What to do with an input, by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputVerdict {
    /// New: apply it (the session has recorded it as applied).
    Apply,
    /// Already applied (a re-send after a resume): drop it.
    Duplicate,
}

/// Peer misbehaviour detected by the session; the caller closes the
/// connection with [`SessionError::close_code`] and detaches the session (the
/// session itself is unchanged and can be resumed by a well-behaved client).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// An input skipped ahead: `expected` was next, `got` arrived.
    InputSeqGap { expected: u32, got: u32 },
    /// The client acked frames that were never sent.
    AckBeyondSent { acked: u64, sent: u64 },
}

impl SessionError {
    /// The close code to send before closing the connection.
    pub fn close_code(&self) -> pb::CloseCode {
        match self {
            SessionError::InputSeqGap { .. } => pb::CloseCode::InputSeqGap,
            SessionError::AckBeyondSent { .. } => pb::CloseCode::ProtocolError,
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::InputSeqGap { expected, got } => {
                write!(f, "input seq {got} skips ahead of the expected {expected}")
            }
            SessionError::AckBeyondSent { acked, sent } => {
                write!(f, "ack of {acked} frames when only {sent} were sent")
            }
        }
    }
}

impl std::error::Error for SessionError {}

/// Why a resume was refused. The wire sees one code (`RESUME_REFUSED`) for all
/// of them, so a stranger learns nothing about which sessions exist; the
/// reason is for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefused {
    BadToken,
    /// The client claims more frames than the server ever sent.
    FramesFromTheFuture,
}

impl ResumeRefused {
    /// The close code to send: the same for every reason.
    pub fn close_code(&self) -> pb::CloseCode {
        pb::CloseCode::ResumeRefused
    }
}

impl fmt::Display for ResumeRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeRefused::BadToken => f.write_str("resume token does not match"),
            ResumeRefused::FramesFromTheFuture => {
                f.write_str("client claims more frames than were sent")
            }
        }
    }
}

impl std::error::Error for ResumeRefused {}

/// How a resume continues.
#[derive(Debug, PartialEq, Eq)]
pub enum ResumePlan {
    /// Send `Resumed{mode: REPLAY, frames_base: <the client's frames_received>}`,
    /// then re-send these frames (numbered from the client's count + 1), in order.
    Replay(Vec<Bytes>),
    /// The missed frames are gone: send `Resumed{mode: SNAPSHOT, frames_base}`
    /// and then a fresh snapshot from the world (pushed with `push_frame`).
    Snapshot { frames_base: u64 },
}

/// What a timer produced. Each event is reported once per cause: a caller
/// that ignores one does not get it again on the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    /// Live and silent past `heartbeat_timeout_ms`: detach the connection
    /// (send `Close{HEARTBEAT_TIMEOUT}` and call [`ServerSession::detach`]).
    HeartbeatTimeout,
    /// Zombie for longer than `zombie_grace_ms`: log the character out, call
    /// [`ServerSession::release`] and drop the session. A resume arriving
    /// after this must find no session.
    ZombieExpired,
    /// Send an `InputAck { seq: last_applied_input() }` now (keep-alive or
    /// pending input acknowledgement); call `input_ack_sent` after pushing it.
    KeepaliveDue,
}

/// The server's half of one player's session. See the [module docs](self).
#[derive(Debug)]
pub struct ServerSession {
    id: SessionId,
    token: ResumeToken,
    /// The token the client presented in the last resume. Until the client
    /// shows it received `Resumed`, that message (carrying the new token) may
    /// have been lost with the connection; accepting the token the client
    /// still holds lets it resume again instead of falling back to a
    /// take-over login, which could not keep inputs exactly-once. It is still
    /// a secret only that client had.
    unconfirmed_previous: Option<ResumeToken>,
    /// The frame count the last resume continued from. Only a client that got
    /// frames on the resumed connection (and so its `Resumed`) can ack above
    /// it; anything still arriving from the replaced connection acks at most
    /// this much, so it cannot confirm the new token by mistake.
    resumed_at_count: u64,
    cfg: SessionConfig,
    state: SessionState,
    replay: ReplayBuffer,
    frames_acked: u64,
    frames_evicted: u64,
    /// The number the first frame pushed after the last detach got: frames
    /// from here on never reached a socket.
    detached_next: u64,
    /// A zombie that let go of a frame it never sent: replay is impossible,
    /// so frames are numbered but not kept until the session goes live.
    replay_abandoned: bool,
    last_applied: u32,
    /// Restored from storage: the first input may skip numbers (see
    /// [`ServerSession::restored`]).
    first_input_may_skip: bool,
    /// Input numbers skipped that way (applied by the lost process after its
    /// last save: lost with it).
    inputs_skipped: u64,
    /// Inputs applied since the last `InputAck`, and when that ack is due.
    inputs_unacked: u32,
    input_ack_due_ms: Option<u64>,
    last_heard_ms: u64,
    heartbeat_reported: bool,
    last_counted_push_ms: u64,
    grace_frozen: bool,
    /// Grace already used by the current zombie spell while the timer ran.
    grace_used_ms: u64,
    /// When the grace timer last started running (`None` while frozen or Live).
    grace_running_since_ms: Option<u64>,
    expired: bool,
}

impl ServerSession {
    /// A new live session (just logged in). Its first counted frame is number 1.
    pub fn new(id: SessionId, token: ResumeToken, now_ms: u64, cfg: SessionConfig) -> Self {
        ServerSession {
            id,
            token,
            unconfirmed_previous: None,
            resumed_at_count: 0,
            cfg,
            state: SessionState::Live,
            replay: ReplayBuffer::new(),
            frames_acked: 0,
            frames_evicted: 0,
            detached_next: 1,
            replay_abandoned: false,
            last_applied: 0,
            first_input_may_skip: false,
            inputs_skipped: 0,
            inputs_unacked: 0,
            input_ack_due_ms: None,
            last_heard_ms: now_ms,
            heartbeat_reported: false,
            last_counted_push_ms: now_ms,
            grace_frozen: false,
            grace_used_ms: 0,
            grace_running_since_ms: None,
            expired: false,
        }
    }

    /// A session brought back from storage by a resume, after the process
    /// that held it is gone (a restart, an upgrade, a crash). Live, with
    /// nothing to replay: the caller answers `Resumed` in snapshot mode with
    /// `frames_base` (the client's own count, so its next frame is
    /// `frames_base + 1`) and `last_input_seq = last_applied`, the last
    /// input the saved state reflects.
    ///
    /// Inputs continue exactly once from `last_applied`, with one allowance:
    /// the first input may skip ahead. The client re-sends only inputs the
    /// lost process never acknowledged; any acknowledged after the last save
    /// were applied by that process and lost with it (counted in
    /// [`ServerSession::inputs_skipped`]), and applying them now could apply
    /// one twice.
    pub fn restored(
        id: SessionId,
        token: ResumeToken,
        last_applied: u32,
        frames_base: u64,
        now_ms: u64,
        cfg: SessionConfig,
    ) -> Self {
        let mut session = ServerSession::new(id, token, now_ms, cfg);
        session.replay = ReplayBuffer::starting_at(frames_base + 1);
        session.frames_acked = frames_base;
        session.detached_next = frames_base + 1;
        session.resumed_at_count = frames_base;
        session.last_applied = last_applied;
        session.first_input_may_skip = true;
        session
    }

    /// Input numbers a restored session skipped (see
    /// [`ServerSession::restored`]).
    pub fn inputs_skipped(&self) -> u64 {
        self.inputs_skipped
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The current resume token (sent in `Welcome` / `Resumed`).
    pub fn token(&self) -> &ResumeToken {
        &self.token
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Counted frames sent so far in this session.
    pub fn frames_sent(&self) -> u64 {
        self.replay.next() - 1
    }

    /// The client's cumulative ack.
    pub fn frames_acked(&self) -> u64 {
        self.frames_acked
    }

    pub fn last_applied_input(&self) -> u32 {
        self.last_applied
    }

    /// Counted frames held for replay.
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Replay pages this session has borrowed from the pool.
    pub fn replay_pages(&self) -> usize {
        self.replay.pages()
    }

    /// Frames let go unacked because the replay buffer was over its cap (a
    /// metric: each such spell turns the next resume into a snapshot).
    pub fn replay_evicted(&self) -> u64 {
        self.frames_evicted
    }

    /// Whether zombie grace timers are frozen ([`ServerSession::set_grace_frozen`]).
    pub fn is_grace_frozen(&self) -> bool {
        self.grace_frozen
    }

    /// Whether [`TimerEvent::ZombieExpired`] was reported.
    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// Records a counted frame (already encoded, maybe shared with other
    /// recipients) and returns its number. Keeps it for replay, letting the
    /// oldest page go when over the cap. Whether to also write it to a socket
    /// is the caller's business (it is, when Live).
    pub fn push_frame(&mut self, frame: Bytes, pool: &mut PagePool, now_ms: u64) -> u64 {
        self.last_counted_push_ms = now_ms;
        if self.replay_abandoned {
            // Past replay (only ever a zombie): numbered, not kept.
            self.frames_evicted += 1;
            return self.replay.skip();
        }
        let number = self.replay.push(frame, pool);
        let cap = match self.state {
            SessionState::Live => self.cfg.replay_cap_frames,
            SessionState::Zombie { .. } => self
                .cfg
                .replay_cap_frames
                .min(self.cfg.zombie_replay_cap_frames),
        };
        while self.replay.len() > cap {
            self.frames_evicted += self.replay.evict_oldest_page(pool) as u64;
        }
        let zombie = matches!(self.state, SessionState::Zombie { .. });
        if zombie && self.replay.first() > self.detached_next {
            // A frame the client cannot have received is gone, so the next
            // resume is a snapshot whatever is kept: keep nothing.
            self.frames_evicted += self.replay.len() as u64;
            self.replay.clear(pool);
            self.replay_abandoned = true;
        }
        number
    }

    /// The client acked `frames_received` counted frames (an `Ack`, or an
    /// `Input.ack` that is non-zero). Frees replay pages. Any frame from the
    /// client also counts as a heartbeat: call `heard_from` for those.
    ///
    /// An ack below an earlier one is stale and ignored (acks are cumulative),
    /// so acks still queued from a connection a resume replaced are harmless.
    pub fn on_ack(
        &mut self,
        frames_received: u64,
        pool: &mut PagePool,
        _now_ms: u64,
    ) -> Result<(), SessionError> {
        let sent = self.frames_sent();
        if frames_received > sent {
            return Err(SessionError::AckBeyondSent {
                acked: frames_received,
                sent,
            });
        }
        if frames_received > self.resumed_at_count {
            // Frames after the resume point arrived: so did `Resumed`.
            self.unconfirmed_previous = None;
        }
        if frames_received > self.frames_acked {
            self.frames_acked = frames_received;
            self.replay.release_through(frames_received, pool);
        }
        Ok(())
    }

    /// Any frame arrived from the client.
    pub fn heard_from(&mut self, now_ms: u64) {
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
        self.heartbeat_reported = false;
    }

    /// Exactly-once gate for inputs. `Apply` records `seq` as applied.
    ///
    /// Inputs are numbered from 1 without gaps, so anything at or below the
    /// last applied number is a re-send and anything past the next one means
    /// the client lost track (a bug or an attack). Inputs still queued from a
    /// connection that a resume replaced may be fed here too: they and the
    /// client's re-sends are each applied once, whichever arrives first.
    pub fn check_input(&mut self, seq: u32, now_ms: u64) -> Result<InputVerdict, SessionError> {
        if seq <= self.last_applied {
            return Ok(InputVerdict::Duplicate);
        }
        let expected = self.last_applied + 1;
        let may_skip = std::mem::take(&mut self.first_input_may_skip);
        if seq != expected {
            if !may_skip {
                return Err(SessionError::InputSeqGap { expected, got: seq });
            }
            self.inputs_skipped += u64::from(seq - expected);
        }
        self.last_applied = seq;
        self.inputs_unacked += 1;
        let by_delay = now_ms.saturating_add(self.cfg.input_ack_delay_ms);
        let mut due = self.input_ack_due_ms.unwrap_or(by_delay);
        if self.inputs_unacked >= self.cfg.input_ack_every.max(1) {
            due = due.min(now_ms);
        }
        self.input_ack_due_ms = Some(due);
        Ok(InputVerdict::Apply)
    }

    /// The connection is gone: become a zombie (no-op if already one).
    pub fn detach(&mut self, now_ms: u64) {
        if self.state != SessionState::Live {
            return;
        }
        self.state = SessionState::Zombie { since_ms: now_ms };
        self.detached_next = self.replay.next();
        self.grace_used_ms = 0;
        self.grace_running_since_ms = (!self.grace_frozen).then_some(now_ms);
    }

    /// Freezes or thaws the zombie grace timer (the server's protect mode does
    /// this for every session while under attack: players cut off by the
    /// attack should not lose their characters to it). Time spent frozen does
    /// not count toward expiry. The setting survives detach / resume.
    pub fn set_grace_frozen(&mut self, frozen: bool, now_ms: u64) {
        if frozen == self.grace_frozen {
            return;
        }
        self.grace_frozen = frozen;
        if !matches!(self.state, SessionState::Zombie { .. }) {
            return;
        }
        if frozen {
            if let Some(since) = self.grace_running_since_ms.take() {
                self.grace_used_ms += now_ms.saturating_sub(since);
            }
        } else {
            self.grace_running_since_ms = Some(now_ms);
        }
    }

    /// A connection presents `token` and `frames_received`. On success the
    /// session is Live again with `new_token`, and the plan says how to catch
    /// the client up. On failure nothing changes.
    ///
    /// A resume on a Live session succeeds too: the new connection wins over a
    /// half-open old one, which the caller closes (`SESSION_TAKEN_OVER`).
    /// Besides the current token, the token presented in the previous resume
    /// is accepted until the client acks a frame sent after it (the `Resumed`
    /// carrying the new token may have been lost).
    pub fn resume(
        &mut self,
        token: &[u8],
        frames_received: u64,
        new_token: ResumeToken,
        pool: &mut PagePool,
        now_ms: u64,
    ) -> Result<ResumePlan, ResumeRefused> {
        // Both comparisons always run, and `|` does not short-circuit, so the
        // timing does not say which one matched.
        let current = self.token.matches(token);
        let previous = self
            .unconfirmed_previous
            .as_ref()
            .is_some_and(|p| p.matches(token));
        if !(current | previous) {
            return Err(ResumeRefused::BadToken);
        }
        let sent = self.frames_sent();
        if frames_received > sent {
            return Err(ResumeRefused::FramesFromTheFuture);
        }

        let plan = if self.replay.holds_all_after(frames_received) {
            // Resume's count is an ack like any other.
            self.replay.release_through(frames_received, pool);
            self.frames_acked = self.frames_acked.max(frames_received);
            ResumePlan::Replay(
                self.replay
                    .frames_after(frames_received)
                    .expect("every frame after the count is held"),
            )
        } else {
            self.replay.clear(pool);
            // The client's counter continues from here.
            self.frames_acked = sent;
            ResumePlan::Snapshot { frames_base: sent }
        };

        let held = if current {
            std::mem::replace(&mut self.token, new_token)
        } else {
            self.token = new_token;
            self.unconfirmed_previous
                .take()
                .expect("the previous token matched")
        };
        self.unconfirmed_previous = Some(held);
        self.resumed_at_count = self.frames_acked;
        self.go_live(now_ms);
        Ok(plan)
    }

    /// A fresh login took this session over (no token check: the login was
    /// authenticated). Live again with `new_token`; the caller sends Welcome
    /// and a snapshot. Returns the snapshot's frames_base.
    ///
    /// A login is a new numbering on both sides: the `Welcome` is followed by
    /// a snapshot numbered from frame 1, and the new client numbers its
    /// inputs from 1. So frame and input counters restart, the replay buffer
    /// is emptied and the returned frames_base is always 0. Inputs the old
    /// connection sent but the server never applied are not carried over (the
    /// `Welcome` cannot say which were applied, so re-sending them could apply
    /// one twice). Every earlier token stops working. Anything still queued
    /// from the replaced connection must be dropped, not fed to this session:
    /// its numbers belong to the old numbering.
    pub fn take_over(&mut self, new_token: ResumeToken, pool: &mut PagePool, now_ms: u64) -> u64 {
        self.token = new_token;
        self.unconfirmed_previous = None;
        self.resumed_at_count = 0;
        self.replay.restart_numbering(pool);
        self.frames_acked = 0;
        self.last_applied = 0;
        self.first_input_may_skip = false;
        self.go_live(now_ms);
        self.frames_sent()
    }

    fn go_live(&mut self, now_ms: u64) {
        self.state = SessionState::Live;
        self.replay_abandoned = false;
        self.last_heard_ms = now_ms;
        self.heartbeat_reported = false;
        // `Resumed` / `Welcome` tell the client the last applied input.
        self.inputs_unacked = 0;
        self.input_ack_due_ms = None;
        self.last_counted_push_ms = now_ms;
        self.grace_used_ms = 0;
        self.grace_running_since_ms = None;
        self.expired = false;
    }

    fn heartbeat_deadline(&self) -> Option<u64> {
        (!self.heartbeat_reported).then(|| {
            self.last_heard_ms
                .saturating_add(self.cfg.heartbeat_timeout_ms)
        })
    }

    fn keepalive_deadline(&self) -> u64 {
        let interval = self.cfg.keepalive_interval_ms.max(MIN_TIMER_INTERVAL_MS);
        let keepalive = self.last_counted_push_ms.saturating_add(interval);
        self.input_ack_due_ms
            .map_or(keepalive, |d| d.min(keepalive))
    }

    fn zombie_deadline(&self) -> Option<u64> {
        if self.expired {
            return None;
        }
        let since = self.grace_running_since_ms?;
        let left = self.cfg.zombie_grace_ms.saturating_sub(self.grace_used_ms);
        Some(since.saturating_add(left))
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            SessionState::Live => {
                let keepalive = self.keepalive_deadline();
                Some(
                    self.heartbeat_deadline()
                        .map_or(keepalive, |h| h.min(keepalive)),
                )
            }
            SessionState::Zombie { .. } => self.zombie_deadline(),
        }
    }

    /// Fires due timers, one event per call (call until `None`).
    pub fn handle_timeout(&mut self, now_ms: u64) -> Option<TimerEvent> {
        match self.state {
            SessionState::Zombie { .. } => {
                if self.zombie_deadline().is_some_and(|d| d <= now_ms) {
                    self.expired = true;
                    return Some(TimerEvent::ZombieExpired);
                }
                None
            }
            SessionState::Live => {
                if self.heartbeat_deadline().is_some_and(|d| d <= now_ms) {
                    self.heartbeat_reported = true;
                    return Some(TimerEvent::HeartbeatTimeout);
                }
                if self.keepalive_deadline() <= now_ms {
                    // Counted as done now, so the caller's loop ends even if
                    // it does not push the ack.
                    self.input_ack_sent(now_ms);
                    return Some(TimerEvent::KeepaliveDue);
                }
                None
            }
        }
    }

    /// An `InputAck` for `last_applied_input()` was pushed.
    pub fn input_ack_sent(&mut self, now_ms: u64) {
        self.inputs_unacked = 0;
        self.input_ack_due_ms = None;
        self.last_counted_push_ms = self.last_counted_push_ms.max(now_ms);
    }

    /// Frees the replay pages (logout / expiry).
    pub fn release(&mut self, pool: &mut PagePool) {
        self.replay.clear(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000;

    fn cfg() -> SessionConfig {
        SessionConfig {
            replay_cap_frames: 64,
            zombie_replay_cap_frames: usize::MAX,
            heartbeat_timeout_ms: 15_000,
            keepalive_interval_ms: 5_000,
            zombie_grace_ms: 120_000,
            input_ack_every: 4,
            input_ack_delay_ms: 200,
        }
    }

    fn tok(b: u8) -> ResumeToken {
        ResumeToken([b; 16])
    }

    fn session() -> ServerSession {
        ServerSession::new(7, tok(1), T0, cfg())
    }

    fn frame(n: u64) -> Bytes {
        Bytes::from(n.to_le_bytes().to_vec())
    }

    fn push(s: &mut ServerSession, pool: &mut PagePool, count: u64, now: u64) {
        for _ in 0..count {
            let n = s.frames_sent() + 1;
            assert_eq!(s.push_frame(frame(n), pool, now), n);
        }
    }

    /// Drains every event due at `now`, asserting the loop ends and the next
    /// deadline is in the future.
    fn fire(s: &mut ServerSession, now: u64) -> Vec<TimerEvent> {
        let mut events = Vec::new();
        while let Some(ev) = s.handle_timeout(now) {
            events.push(ev);
            assert!(events.len() < 10, "handle_timeout never returned None");
        }
        if let Some(next) = s.poll_timeout() {
            assert!(next > now, "poll_timeout {next} is not after now {now}");
        }
        events
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = SessionConfig::default();
        assert_eq!(c.replay_cap_frames, 4096);
        assert_eq!(c.zombie_replay_cap_frames, 1024);
        assert_eq!(c.heartbeat_timeout_ms, 15_000);
        assert_eq!(c.keepalive_interval_ms, 5_000);
        assert_eq!(c.zombie_grace_ms, 120_000);
        assert_eq!(c.input_ack_every, 16);
        assert_eq!(c.input_ack_delay_ms, 200);
    }

    #[test]
    fn inputs_apply_once_in_order() {
        let mut s = session();
        assert_eq!(s.check_input(1, T0), Ok(InputVerdict::Apply));
        assert_eq!(s.check_input(2, T0), Ok(InputVerdict::Apply));
        assert_eq!(s.check_input(2, T0), Ok(InputVerdict::Duplicate));
        assert_eq!(s.check_input(1, T0), Ok(InputVerdict::Duplicate));
        assert_eq!(s.check_input(0, T0), Ok(InputVerdict::Duplicate));
        assert_eq!(
            s.check_input(4, T0),
            Err(SessionError::InputSeqGap {
                expected: 3,
                got: 4
            })
        );
        assert_eq!(s.last_applied_input(), 2, "a gap changes nothing");
        assert_eq!(
            SessionError::InputSeqGap {
                expected: 3,
                got: 4
            }
            .close_code(),
            pb::CloseCode::InputSeqGap
        );
    }

    #[test]
    fn acks_release_replay_and_refuse_the_future() {
        let mut pool = PagePool::new(16);
        let mut s = session();
        push(&mut s, &mut pool, 40, T0);
        assert_eq!((s.replay_len(), s.replay_pages()), (40, 2));
        s.on_ack(33, &mut pool, T0).unwrap();
        assert_eq!(
            (s.replay_len(), s.replay_pages(), s.frames_acked()),
            (7, 1, 33)
        );
        s.on_ack(10, &mut pool, T0).unwrap();
        assert_eq!(s.frames_acked(), 33, "stale acks are ignored");
        assert_eq!(
            s.on_ack(41, &mut pool, T0),
            Err(SessionError::AckBeyondSent {
                acked: 41,
                sent: 40
            })
        );
        s.on_ack(40, &mut pool, T0).unwrap();
        assert_eq!((s.replay_len(), pool.in_use()), (0, 0));
    }

    #[test]
    fn a_zombie_keeps_fewer_frames_and_resumes_from_a_snapshot_past_them() {
        let mut pool = PagePool::new(16);
        let mut s = ServerSession::new(
            7,
            tok(1),
            T0,
            SessionConfig {
                zombie_replay_cap_frames: 32,
                ..cfg()
            },
        );
        push(&mut s, &mut pool, 60, T0);
        assert_eq!(s.replay_len(), 60, "live: the full cap applies");
        s.detach(T0);
        push(&mut s, &mut pool, 1, T0);
        assert!(s.replay_len() <= 32, "zombie: at most the zombie cap");
        assert!(s.replay_evicted() > 0);
        let plan = s.resume(&tok(1).0, 10, tok(2), &mut pool, T0).unwrap();
        assert_eq!(plan, ResumePlan::Snapshot { frames_base: 61 });
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_zombie_past_replay_keeps_no_frames_until_it_resumes() {
        let mut pool = PagePool::new(16);
        let mut s = ServerSession::new(
            7,
            tok(1),
            T0,
            SessionConfig {
                zombie_replay_cap_frames: 32,
                ..cfg()
            },
        );
        push(&mut s, &mut pool, 5, T0);
        s.on_ack(5, &mut pool, T0).unwrap();
        s.detach(T0);
        // Frames 6..=37 fit the zombie cap and could still be replayed.
        push(&mut s, &mut pool, 32, T0);
        assert_eq!(s.replay_len(), 32);
        // Frame 38 pushes 6 out: a frame the client never got is gone, so
        // nothing more is worth keeping.
        push(&mut s, &mut pool, 1, T0);
        assert_eq!((s.replay_len(), pool.in_use()), (0, 0));
        push(&mut s, &mut pool, 100, T0);
        assert_eq!((s.replay_len(), pool.in_use()), (0, 0));
        assert_eq!(s.frames_sent(), 138, "frames are still numbered");
        let plan = s.resume(&tok(1).0, 5, tok(2), &mut pool, T0).unwrap();
        assert_eq!(plan, ResumePlan::Snapshot { frames_base: 138 });
        // Live again: frames are kept for replay as before.
        push(&mut s, &mut pool, 3, T0);
        assert_eq!(s.replay_len(), 3);
        s.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn replay_over_the_cap_lets_the_oldest_page_go() {
        let mut pool = PagePool::new(16);
        let mut s = session();
        push(&mut s, &mut pool, 64, T0);
        assert_eq!((s.replay_len(), s.replay_evicted()), (64, 0));
        push(&mut s, &mut pool, 1, T0);
        assert_eq!((s.replay_len(), s.replay_evicted()), (33, 32));
        assert_eq!(pool.in_use(), 2);
        s.detach(T0);
        // The client had 10 frames: 11..=32 are gone, so it gets a snapshot.
        let plan = s.resume(&[1; 16], 10, tok(2), &mut pool, T0 + 1).unwrap();
        assert_eq!(plan, ResumePlan::Snapshot { frames_base: 65 });
        assert_eq!((s.replay_len(), pool.in_use()), (0, 0));
        assert_eq!(s.frames_acked(), 65);
        assert_eq!(s.push_frame(frame(66), &mut pool, T0 + 1), 66);
        s.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn resume_replays_what_the_client_missed() {
        let mut pool = PagePool::new(16);
        let mut s = session();
        push(&mut s, &mut pool, 10, T0);
        s.on_ack(3, &mut pool, T0).unwrap();
        s.detach(T0 + 5);
        assert_eq!(s.state(), SessionState::Zombie { since_ms: T0 + 5 });
        push(&mut s, &mut pool, 2, T0 + 6);
        let plan = s.resume(&[1; 16], 8, tok(2), &mut pool, T0 + 10).unwrap();
        assert_eq!(plan, ResumePlan::Replay((9..=12).map(frame).collect()));
        assert_eq!(s.state(), SessionState::Live);
        assert_eq!(s.token(), &tok(2));
        assert_eq!(s.frames_acked(), 8);
        // Nothing missed: an empty replay.
        let plan = s.resume(&[2; 16], 12, tok(3), &mut pool, T0 + 11).unwrap();
        assert_eq!(plan, ResumePlan::Replay(vec![]));
        s.release(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn refused_resume_changes_nothing() {
        let mut pool = PagePool::new(16);
        let mut s = session();
        push(&mut s, &mut pool, 5, T0);
        s.detach(T0);
        let before = format!("{s:?}");
        let mut wrong = [1u8; 16];
        wrong[15] ^= 1;
        assert_eq!(
            s.resume(&wrong, 0, tok(9), &mut pool, T0 + 1),
            Err(ResumeRefused::BadToken)
        );
        assert_eq!(
            s.resume(&[1; 15], 0, tok(9), &mut pool, T0 + 1),
            Err(ResumeRefused::BadToken)
        );
        assert_eq!(
            s.resume(&[1; 16], 6, tok(9), &mut pool, T0 + 1),
            Err(ResumeRefused::FramesFromTheFuture)
        );
        assert_eq!(format!("{s:?}"), before);
        assert_eq!(
            ResumeRefused::BadToken.close_code(),
            pb::CloseCode::ResumeRefused
        );
        s.release(&mut pool);
    }

    #[test]
    fn token_rotates_and_the_old_one_dies_once_the_client_is_back() {
        let mut pool = PagePool::new(16);
        let mut s = session();
        s.detach(T0);
        s.resume(&[1; 16], 0, tok(2), &mut pool, T0 + 1).unwrap();
        // `Resumed(token 2)` was lost with the connection: the client still
        // has token 1 and may try again with it.
        s.resume(&[1; 16], 0, tok(3), &mut pool, T0 + 2).unwrap();
        assert_eq!(
            s.resume(&[2; 16], 0, tok(4), &mut pool, T0 + 3),
            Err(ResumeRefused::BadToken),
            "a token that was never delivered is not kept"
        );
        // Inputs and acks up to the resume point may still come from the
        // replaced connection: they prove nothing.
        s.check_input(1, T0 + 3).unwrap();
        s.on_ack(0, &mut pool, T0 + 3).unwrap();
        s.resume(&[1; 16], 0, tok(4), &mut pool, T0 + 4).unwrap();
        // This time the client got `Resumed(4)` and acked a frame sent after it.
        s.push_frame(frame(1), &mut pool, T0 + 4);
        s.on_ack(1, &mut pool, T0 + 5).unwrap();
        assert_eq!(
            s.resume(&[1; 16], 1, tok(5), &mut pool, T0 + 6),
            Err(ResumeRefused::BadToken)
        );
        s.resume(&[4; 16], 1, tok(5), &mut pool, T0 + 7).unwrap();
        s.push_frame(frame(2), &mut pool, T0 + 8);
        s.on_ack(2, &mut pool, T0 + 9).unwrap();
        assert_eq!(
            s.resume(&[4; 16], 2, tok(6), &mut pool, T0 + 10),
            Err(ResumeRefused::BadToken)
        );
        // A take-over invalidates every earlier token at once.
        s.resume(&[5; 16], 2, tok(6), &mut pool, T0 + 11).unwrap();
        s.take_over(tok(7), &mut pool, T0 + 12);
        assert_eq!(
            s.resume(&[5; 16], 0, tok(8), &mut pool, T0 + 13),
            Err(ResumeRefused::BadToken)
        );
        assert_eq!(
            s.resume(&[6; 16], 0, tok(8), &mut pool, T0 + 13),
            Err(ResumeRefused::BadToken)
        );
        s.release(&mut pool);
    }

    #[test]
    fn take_over_starts_a_new_numbering() {
        let mut pool = PagePool::new(16);
        let mut s = session();
        push(&mut s, &mut pool, 40, T0);
        s.check_input(1, T0).unwrap();
        s.detach(T0);
        assert_eq!(s.take_over(tok(2), &mut pool, T0 + 1), 0);
        assert_eq!(s.state(), SessionState::Live);
        assert_eq!(
            (s.frames_sent(), s.frames_acked(), s.last_applied_input()),
            (0, 0, 0)
        );
        assert_eq!(pool.in_use(), 0);
        assert_eq!(s.push_frame(frame(1), &mut pool, T0 + 1), 1);
        assert_eq!(s.check_input(1, T0 + 1), Ok(InputVerdict::Apply));
        s.release(&mut pool);
    }

    #[test]
    fn heartbeat_timeout_fires_once_per_silence() {
        let mut s = session();
        s.heard_from(T0 + 1_000);
        // Keep-alives keep coming from the server side; heartbeat is about the client.
        assert_eq!(fire(&mut s, T0 + 15_999), vec![TimerEvent::KeepaliveDue]);
        assert_eq!(
            fire(&mut s, T0 + 16_000),
            vec![TimerEvent::HeartbeatTimeout]
        );
        assert_eq!(fire(&mut s, T0 + 17_000), vec![]);
        s.heard_from(T0 + 18_000);
        assert_eq!(s.poll_timeout(), Some(T0 + 20_999));
        s.detach(T0 + 18_500);
        assert_eq!(
            fire(&mut s, T0 + 40_000),
            vec![],
            "zombies have no heartbeat"
        );
    }

    #[test]
    fn keepalive_when_nothing_counted_was_pushed() {
        let mut pool = PagePool::new(16);
        let mut s = session();
        s.heard_from(T0 + 100_000); // the client keeps talking
        assert_eq!(s.poll_timeout(), Some(T0 + 5_000));
        push(&mut s, &mut pool, 1, T0 + 3_000);
        assert_eq!(s.poll_timeout(), Some(T0 + 8_000));
        assert_eq!(fire(&mut s, T0 + 7_999), vec![]);
        assert_eq!(fire(&mut s, T0 + 8_000), vec![TimerEvent::KeepaliveDue]);
        // The caller pushes the InputAck.
        push(&mut s, &mut pool, 1, T0 + 8_000);
        s.input_ack_sent(T0 + 8_000);
        assert_eq!(s.poll_timeout(), Some(T0 + 13_000));
        s.release(&mut pool);
    }

    #[test]
    fn input_acks_are_due_by_count_or_by_delay() {
        let mut s = session();
        s.heard_from(T0 + 100_000);
        s.check_input(1, T0 + 10).unwrap();
        assert_eq!(s.poll_timeout(), Some(T0 + 210));
        s.check_input(2, T0 + 20).unwrap();
        assert_eq!(s.poll_timeout(), Some(T0 + 210), "due after the first one");
        assert_eq!(fire(&mut s, T0 + 210), vec![TimerEvent::KeepaliveDue]);
        assert_eq!(s.poll_timeout(), Some(T0 + 5_210));
        for seq in 3..=5 {
            s.check_input(seq, T0 + 300).unwrap();
        }
        assert_eq!(s.poll_timeout(), Some(T0 + 500));
        s.check_input(6, T0 + 310).unwrap();
        assert_eq!(
            s.poll_timeout(),
            Some(T0 + 310),
            "4 unacked inputs: due now"
        );
        assert_eq!(fire(&mut s, T0 + 310), vec![TimerEvent::KeepaliveDue]);
        // Duplicates do not need acking again.
        s.check_input(6, T0 + 320).unwrap();
        assert_eq!(s.poll_timeout(), Some(T0 + 5_310));
    }

    #[test]
    fn zombie_expires_after_the_grace_period() {
        let mut s = session();
        s.detach(T0);
        s.detach(T0 + 50); // already a zombie: no-op
        assert_eq!(s.state(), SessionState::Zombie { since_ms: T0 });
        assert_eq!(s.poll_timeout(), Some(T0 + 120_000));
        assert_eq!(fire(&mut s, T0 + 119_999), vec![]);
        assert_eq!(fire(&mut s, T0 + 120_000), vec![TimerEvent::ZombieExpired]);
        assert!(s.is_expired());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn frozen_grace_does_not_count() {
        let mut s = session();
        s.detach(T0);
        s.set_grace_frozen(true, T0 + 20_000);
        assert!(s.is_grace_frozen());
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(fire(&mut s, T0 + 500_000), vec![]);
        s.set_grace_frozen(false, T0 + 500_000);
        // 20 s were used before the freeze: 100 s are left.
        assert_eq!(s.poll_timeout(), Some(T0 + 600_000));
        assert_eq!(fire(&mut s, T0 + 599_999), vec![]);
        assert_eq!(fire(&mut s, T0 + 600_000), vec![TimerEvent::ZombieExpired]);
    }

    #[test]
    fn sessions_detached_while_frozen_start_with_a_frozen_timer() {
        let mut s = session();
        s.set_grace_frozen(true, T0);
        s.heard_from(T0 + 1_000);
        assert_eq!(
            fire(&mut s, T0 + 16_000),
            vec![TimerEvent::HeartbeatTimeout, TimerEvent::KeepaliveDue],
            "heartbeat is not frozen"
        );
        s.detach(T0 + 16_000);
        assert_eq!(s.poll_timeout(), None);
        s.set_grace_frozen(false, T0 + 30_000);
        assert_eq!(s.poll_timeout(), Some(T0 + 150_000));
        // Resume and detach again: the grace restarts in full.
        let mut pool = PagePool::new(1);
        s.resume(&[1; 16], 0, tok(2), &mut pool, T0 + 40_000)
            .unwrap();
        s.detach(T0 + 50_000);
        assert_eq!(s.poll_timeout(), Some(T0 + 170_000));
    }

    #[test]
    fn zero_intervals_do_not_spin() {
        let mut s = ServerSession::new(
            1,
            tok(1),
            0,
            SessionConfig {
                replay_cap_frames: 0,
                zombie_replay_cap_frames: 0,
                heartbeat_timeout_ms: 0,
                keepalive_interval_ms: 0,
                zombie_grace_ms: 0,
                input_ack_every: 0,
                input_ack_delay_ms: 0,
            },
        );
        let mut pool = PagePool::new(1);
        assert_eq!(s.push_frame(frame(1), &mut pool, 0), 1);
        assert_eq!(pool.in_use(), 0, "a zero cap holds nothing");
        s.check_input(1, 0).unwrap();
        let events = fire(&mut s, 0);
        assert_eq!(
            events,
            vec![TimerEvent::HeartbeatTimeout, TimerEvent::KeepaliveDue]
        );
        s.detach(0);
        assert_eq!(fire(&mut s, 0), vec![TimerEvent::ZombieExpired]);
    }

    #[test]
    fn restored_session_continues_the_clients_count() {
        let mut pool = PagePool::new(8);
        let mut s = ServerSession::restored(7, tok(3), 40, 500, T0, cfg());
        assert_eq!(s.state(), SessionState::Live);
        assert_eq!(s.frames_sent(), 500);
        assert_eq!(s.last_applied_input(), 40);
        assert_eq!(s.push_frame(frame(1), &mut pool, T0), 501);
        // Acks count from the client's own base; the next resume replays.
        s.on_ack(501, &mut pool, T0).unwrap();
        s.detach(T0);
        push(&mut s, &mut pool, 2, T0);
        match s.resume(&[3; 16], 501, tok(4), &mut pool, T0).unwrap() {
            ResumePlan::Replay(frames) => assert_eq!(frames.len(), 2),
            ResumePlan::Snapshot { .. } => panic!("every frame after 501 is held"),
        }
    }

    #[test]
    fn restored_session_lets_only_its_first_input_skip() {
        let mut s = ServerSession::restored(7, tok(3), 40, 0, T0, cfg());
        // Old numbers stay applied once.
        assert_eq!(s.check_input(40, T0).unwrap(), InputVerdict::Duplicate);
        // 41..=44 were acknowledged by the lost process: the client re-sends
        // from 45.
        assert_eq!(s.check_input(45, T0).unwrap(), InputVerdict::Apply);
        assert_eq!(s.inputs_skipped(), 4);
        assert_eq!(s.check_input(46, T0).unwrap(), InputVerdict::Apply);
        assert!(matches!(
            s.check_input(48, T0),
            Err(SessionError::InputSeqGap {
                expected: 47,
                got: 48
            })
        ));
        // A session that was never restored allows no skip.
        let mut fresh = session();
        assert!(fresh.check_input(2, T0).is_err());
    }
}

//! The server's half of a session.
//!
//! API CONTRACT (bodies to be implemented; signatures are what the server crate
//! codes against — keep them, extend if needed).

use bytes::Bytes;

use crate::replay::{PagePool, ReplayBuffer};
use crate::token::ResumeToken;
use crate::SessionId;

/// Tunables of a server session. Every bound here is also a server config field.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most counted frames kept for replay (sent but not yet acked). When full,
    /// the oldest page is let go and a later resume falls back to a snapshot.
    pub replay_cap_frames: usize,
    /// The client must be heard from at least this often (any frame), or
    /// [`TimerEvent::HeartbeatTimeout`] fires and the caller detaches it.
    pub heartbeat_timeout_ms: u64,
    /// The server sends an `InputAck` keep-alive when it has sent nothing for
    /// this long ([`TimerEvent::KeepaliveDue`]).
    pub keepalive_interval_ms: u64,
    /// How long a zombie lives before [`TimerEvent::ZombieExpired`].
    pub zombie_grace_ms: u64,
    /// An `InputAck` is due once this many inputs were applied since the last
    /// one, or [`SessionConfig::input_ack_delay_ms`] after the first of them.
    pub input_ack_every: u32,
    pub input_ack_delay_ms: u64,
}

/// Live: a connection is attached. Zombie: none is; the character stays in
/// the world and frames keep landing in the replay buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Live,
    Zombie { since_ms: u64 },
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
/// connection with [`SessionError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// An input skipped ahead: `expected` was next, `got` arrived.
    InputSeqGap { expected: u32, got: u32 },
    /// The client acked frames that were never sent.
    AckBeyondSent { acked: u64, sent: u64 },
}

/// Why a resume was refused. The wire sees one code (`RESUME_REFUSED`) for all
/// of them, so a stranger learns nothing about which sessions exist; the
/// reason is for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefused {
    BadToken,
    /// The client claims more frames than the server ever sent.
    FramesFromTheFuture,
}

/// How a resume continues.
#[derive(Debug, PartialEq, Eq)]
pub enum ResumePlan {
    /// Re-send these frames (numbered from the client's count + 1), in order.
    Replay(Vec<Bytes>),
    /// The missed frames are gone: send `Resumed{mode: SNAPSHOT, frames_base}`
    /// and then a fresh snapshot from the world (pushed with `push_frame`).
    Snapshot { frames_base: u64 },
}

/// What a timer produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    /// Live and silent past `heartbeat_timeout_ms`: detach the connection.
    HeartbeatTimeout,
    /// Zombie for longer than `zombie_grace_ms`: log the character out.
    ZombieExpired,
    /// Send an `InputAck { seq: last_applied_input() }` now (keep-alive or
    /// pending input acknowledgement); call `input_ack_sent` after pushing it.
    KeepaliveDue,
}

pub struct ServerSession {
    _todo: (SessionId, ResumeToken, ReplayBuffer, SessionConfig),
}

impl ServerSession {
    /// A new live session (just logged in).
    pub fn new(_id: SessionId, _token: ResumeToken, _now_ms: u64, _cfg: SessionConfig) -> Self {
        todo!()
    }
    pub fn id(&self) -> SessionId {
        todo!()
    }
    pub fn token(&self) -> &ResumeToken {
        todo!()
    }
    pub fn state(&self) -> SessionState {
        todo!()
    }
    /// Counted frames sent so far in this session.
    pub fn frames_sent(&self) -> u64 {
        todo!()
    }
    /// The client's cumulative ack.
    pub fn frames_acked(&self) -> u64 {
        todo!()
    }
    pub fn last_applied_input(&self) -> u32 {
        todo!()
    }
    /// Counted frames held for replay.
    pub fn replay_len(&self) -> usize {
        todo!()
    }

    /// Records a counted frame (already encoded, maybe shared with other
    /// recipients) and returns its number. Keeps it for replay, letting the
    /// oldest page go when over the cap. Whether to also write it to a socket
    /// is the caller's business (it is, when Live).
    pub fn push_frame(&mut self, _frame: Bytes, _pool: &mut PagePool, _now_ms: u64) -> u64 {
        todo!()
    }

    /// The client acked `frames_received` counted frames (an `Ack`, or an
    /// `Input.ack` that is non-zero). Frees replay pages. Any frame from the
    /// client also counts as a heartbeat: call `heard_from` for those.
    pub fn on_ack(
        &mut self,
        _frames_received: u64,
        _pool: &mut PagePool,
        _now_ms: u64,
    ) -> Result<(), SessionError> {
        todo!()
    }

    /// Any frame arrived from the client.
    pub fn heard_from(&mut self, _now_ms: u64) {
        todo!()
    }

    /// Exactly-once gate for inputs. `Apply` records `seq` as applied.
    pub fn check_input(&mut self, _seq: u32, _now_ms: u64) -> Result<InputVerdict, SessionError> {
        todo!()
    }

    /// The connection is gone: become a zombie (no-op if already one).
    pub fn detach(&mut self, _now_ms: u64) {
        todo!()
    }

    /// A connection presents `token` and `frames_received`. On success the
    /// session is Live again with `new_token`, and the plan says how to catch
    /// the client up. On failure nothing changes.
    pub fn resume(
        &mut self,
        _token: &[u8],
        _frames_received: u64,
        _new_token: ResumeToken,
        _pool: &mut PagePool,
        _now_ms: u64,
    ) -> Result<ResumePlan, ResumeRefused> {
        todo!()
    }

    /// A fresh login took this session over (no token check: the login was
    /// authenticated). Live again with `new_token`; the caller sends Welcome
    /// and a snapshot. Returns the snapshot's frames_base.
    pub fn take_over(&mut self, _new_token: ResumeToken, _pool: &mut PagePool, _now_ms: u64) -> u64 {
        todo!()
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        todo!()
    }

    /// Fires due timers, one event per call (call until `None`).
    pub fn handle_timeout(&mut self, _now_ms: u64) -> Option<TimerEvent> {
        todo!()
    }

    /// An `InputAck` for `last_applied_input()` was pushed.
    pub fn input_ack_sent(&mut self, _now_ms: u64) {
        todo!()
    }

    /// Frees the replay pages (logout / expiry).
    pub fn release(&mut self, _pool: &mut PagePool) {
        todo!()
    }
}

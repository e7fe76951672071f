//! The client's half of a session.
//!
//! API CONTRACT (bodies to be implemented; the client crate codes against these
//! signatures — keep them, extend if needed).

use tether_proto::pb::{self, input::Cmd};

use crate::SessionId;

#[derive(Debug, Clone)]
pub struct ClientSessionConfig {
    /// Most inputs kept unacknowledged; `send_input` refuses more
    /// ([`InputQueueFull`]) until the server acks some.
    pub max_unacked_inputs: usize,
    /// Send a standalone `Ack` once this many counted frames arrived since the
    /// last ack sent (piggybacked or not)...
    pub ack_every_frames: u64,
    /// ...or this long after the first unacked frame arrived.
    pub ack_delay_ms: u64,
    /// Send an `Ack` as keep-alive when nothing was sent for this long
    /// (taken from Welcome.heartbeat_interval_ms once known).
    pub keepalive_interval_ms: u64,
    /// The server is considered gone when nothing arrived for this long
    /// (taken from Welcome.heartbeat_timeout_ms once known).
    pub silence_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputQueueFull;

/// What a server frame meant for the session layer.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrameOutcome {
    /// Welcome processed: the session is established.
    Welcomed,
    /// Resumed processed. `resend` holds every input the server has not
    /// applied, to be written right away, in order.
    Resumed { mode: pb::ResumeMode, resend: Vec<pb::ClientMessage> },
    /// The server closes the connection.
    Closed(pb::Close),
    /// A counted game frame for the game code (already counted).
    Game,
}

pub struct ClientSession {
    _todo: (),
}

impl ClientSession {
    pub fn new(_cfg: ClientSessionConfig) -> Self {
        todo!()
    }
    pub fn session_id(&self) -> Option<SessionId> {
        todo!()
    }
    /// Whether a Welcome was received (a session exists to resume).
    pub fn can_resume(&self) -> bool {
        todo!()
    }
    /// Counted frames received in this session.
    pub fn frames_received(&self) -> u64 {
        todo!()
    }
    /// Highest input seq the server acknowledged as applied.
    pub fn acked_input(&self) -> u32 {
        todo!()
    }
    /// Inputs sent and not yet acknowledged.
    pub fn unacked_inputs(&self) -> usize {
        todo!()
    }
    /// The Resume message for a new connection.
    pub fn resume_message(&self) -> Option<pb::ClientMessage> {
        todo!()
    }
    /// Numbers a command, remembers it until acked, and returns the Input
    /// (with a piggybacked ack) to write.
    pub fn send_input(&mut self, _cmd: Cmd, _now_ms: u64) -> Result<pb::ClientMessage, InputQueueFull> {
        todo!()
    }
    /// Feeds one decoded server message (control or counted).
    pub fn on_server_message(&mut self, _msg: &pb::ServerMessage, _now_ms: u64) -> ServerFrameOutcome {
        todo!()
    }
    /// A standalone Ack to write now, if one is due (frames to ack, or keep-alive).
    pub fn poll_ack(&mut self, _now_ms: u64) -> Option<pb::ClientMessage> {
        todo!()
    }
    /// When `poll_ack` / `is_silent` next need a look.
    pub fn poll_timeout(&self) -> Option<u64> {
        todo!()
    }
    /// Nothing heard from the server for longer than the silence timeout.
    pub fn is_silent(&self, _now_ms: u64) -> bool {
        todo!()
    }
    /// The connection is gone (before reconnecting). Unacked inputs are kept.
    pub fn on_disconnect(&mut self, _now_ms: u64) {
        todo!()
    }
}

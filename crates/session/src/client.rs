//! The client's half of a session.
//!
//! A [`ClientSession`] outlives the client's connections the way a
//! [`crate::ServerSession`] does on the server: it keeps the session id and the
//! resume token, counts the counted frames received (the number a `Resume`
//! presents and every ack carries), numbers the inputs and keeps each one
//! until an `InputAck` covers it, so a resume can re-send exactly the inputs
//! the server has not applied.
//!
//! The caller owns the connection: it writes what this hands back, feeds every
//! decoded server message to [`ClientSession::on_server_message`], asks
//! [`ClientSession::poll_ack`] whenever [`ClientSession::poll_timeout`] is
//! reached, and reconnects (with [`ClientSession::resume_message`]) when
//! [`ClientSession::is_silent`] says the server is gone.
//!
//! # Connections
//!
//! A connection is *established* from the `Welcome` or `Resumed` that answers
//! its first frame until [`ClientSession::on_disconnect`] (or a `Close`).
//! Only then is anything written on it besides the `Hello` / `Resume`: acks
//! wait, and inputs from [`ClientSession::send_input`] are kept (not to be
//! written) and go out in the `resend` list of the next `Resumed`, in order
//! after the ones the server missed.
//!
//! # Welcome starts a new numbering
//!
//! Every `Welcome`, including one with `took_over = true` (a login that took
//! over this account's existing session), starts frames and inputs from 1 on
//! both sides. Inputs kept from before it are dropped: the `Welcome` does not
//! say which of them the server applied, so re-sending them could apply one
//! twice. Only a resume keeps inputs exactly-once.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tether_proto::pb::{self, client_message::Msg as ClientMsg, input::Cmd};

use crate::SessionId;

/// Shortest keep-alive interval used, whatever the config or `Welcome` says:
/// with zero a keep-alive would be due again at the `now` it was sent at, and
/// a caller polling until `None` would never stop.
const MIN_KEEPALIVE_MS: u64 = 1;

#[derive(Debug, Clone)]
pub struct ClientSessionConfig {
    /// Most inputs kept unacknowledged; `send_input` refuses more
    /// ([`InputQueueFull`]) until the server acks some.
    ///
    /// Default 1024: 17 s of inputs at 60 per second, far more than the
    /// server's ack delay ever leaves unacked, while a client cut off for long
    /// stops queueing commands the player can no longer mean.
    pub max_unacked_inputs: usize,
    /// Send a standalone `Ack` once this many counted frames arrived since the
    /// last ack sent (piggybacked or not)...
    ///
    /// Default 32: one replay page on the server, so every ack frees a page.
    pub ack_every_frames: u64,
    /// ...or this long after the first unacked frame arrived.
    ///
    /// Default 1000 ms: a player sends an input about once a second or more
    /// often (moves, attacks, pings), which carries the ack, so a standalone
    /// `Ack` is rarely needed; the 32-frame rule keeps the server's replay
    /// buffer to one page when frames come fast. (At 250 ms, standalone acks
    /// were half of what 10,000 players at 0.7 moves/s sent.)
    pub ack_delay_ms: u64,
    /// Send an `Ack` as keep-alive when nothing was sent for this long
    /// (taken from Welcome.heartbeat_interval_ms once known).
    ///
    /// Default 2 s: well inside the server's 15 s heartbeat timeout.
    pub keepalive_interval_ms: u64,
    /// The server is considered gone when nothing arrived for this long
    /// (taken from Welcome.heartbeat_timeout_ms once known).
    ///
    /// Default 10 s: two of the server's 5 s keep-alives missed.
    pub silence_timeout_ms: u64,
}

impl Default for ClientSessionConfig {
    fn default() -> Self {
        ClientSessionConfig {
            max_unacked_inputs: 1024,
            ack_every_frames: 32,
            ack_delay_ms: 1000,
            keepalive_interval_ms: 2_000,
            silence_timeout_ms: 10_000,
        }
    }
}

/// `send_input` refused: `max_unacked_inputs` inputs wait for the server's
/// ack (or, after 2^32 - 1 inputs, the session's input numbers are used up
/// and only a new login helps). Retry after the server acks some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputQueueFull;

impl std::fmt::Display for InputQueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many inputs wait for the server's acknowledgement")
    }
}

impl std::error::Error for InputQueueFull {}

/// An input whose command is in a game's own schema (see
/// [`ClientSession::send_raw_input`]), numbered and ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInput {
    pub seq: u32,
    /// Piggybacked frame ack (0: none).
    pub ack: u64,
    /// The game's `Input` encoded with `seq` and `ack` at 0.
    pub cmd: Bytes,
}

impl RawInput {
    /// Appends the input as one client frame.
    pub fn encode_frame_into(&self, out: &mut BytesMut) {
        tether_proto::encode_input_frame_into(self.seq, self.ack, &self.cmd, out);
    }
}

/// An input kept until the server acknowledges it.
#[derive(Debug, Clone)]
enum Kept {
    /// The MMO's command, typed.
    Cmd(Cmd),
    /// Another game's command, encoded in its schema.
    Raw(Bytes),
}

/// What a server frame meant for the session layer.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrameOutcome {
    /// Welcome processed: the session is established.
    Welcomed,
    /// Resumed processed. `resend` holds every input the server has not
    /// applied, to be written right away, in order.
    Resumed {
        mode: pb::ResumeMode,
        resend: Vec<pb::ClientMessage>,
    },
    /// The server closes the connection, or (with code `PROTOCOL_ERROR`) the
    /// server broke the protocol and the client closes it: either way, drop
    /// the connection. `RESUME_REFUSED` and `LOGOUT` also end the session
    /// ([`ClientSession::can_resume`] turns false): log in again with `Hello`.
    Closed(pb::Close),
    /// A counted game frame for the game code (already counted).
    Game,
}

/// The client's half of a session. See the [module docs](self).
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientSessionConfig,
    keepalive_ms: u64,
    silence_ms: u64,
    session_id: Option<SessionId>,
    token: Vec<u8>,
    /// From the Welcome; fixed for the session (see `Resume.restart_token`).
    restart_token: Vec<u8>,
    established: bool,
    frames_received: u64,
    /// `frames_received` as of the last ack written.
    frames_acked_sent: u64,
    ack_due_ms: Option<u64>,
    last_sent_ms: u64,
    last_heard_ms: u64,
    /// The number the next input gets; `None` once all are used up.
    next_input_seq: Option<u32>,
    acked_input: u32,
    unacked: VecDeque<(u32, Kept)>,
}

impl ClientSession {
    pub fn new(cfg: ClientSessionConfig) -> Self {
        ClientSession {
            keepalive_ms: cfg.keepalive_interval_ms,
            silence_ms: cfg.silence_timeout_ms,
            cfg,
            session_id: None,
            token: Vec::new(),
            restart_token: Vec::new(),
            established: false,
            frames_received: 0,
            frames_acked_sent: 0,
            ack_due_ms: None,
            last_sent_ms: 0,
            last_heard_ms: 0,
            next_input_seq: Some(1),
            acked_input: 0,
            unacked: VecDeque::new(),
        }
    }

    pub fn session_id(&self) -> Option<SessionId> {
        self.session_id
    }

    /// Whether a Welcome was received (a session exists to resume).
    pub fn can_resume(&self) -> bool {
        self.session_id.is_some()
    }

    /// Whether the current connection is established (see the module docs):
    /// inputs and acks may be written on it.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Counted frames received in this session.
    pub fn frames_received(&self) -> u64 {
        self.frames_received
    }

    /// Highest input seq the server acknowledged as applied.
    pub fn acked_input(&self) -> u32 {
        self.acked_input
    }

    /// Inputs sent and not yet acknowledged.
    pub fn unacked_inputs(&self) -> usize {
        self.unacked.len()
    }

    /// The keep-alive interval in use (the config's, or the server's).
    pub fn keepalive_interval_ms(&self) -> u64 {
        self.keepalive_ms
    }

    /// The silence timeout in use (the config's, or the server's).
    pub fn silence_timeout_ms(&self) -> u64 {
        self.silence_ms
    }

    /// The Resume message for a new connection.
    pub fn resume_message(&self) -> Option<pb::ClientMessage> {
        let session_id = self.session_id?;
        Some(pb::ClientMessage {
            msg: Some(ClientMsg::Resume(pb::Resume {
                session_id,
                token: self.token.clone(),
                frames_received: self.frames_received,
                restart_token: self.restart_token.clone(),
            })),
        })
    }

    /// Numbers a command, remembers it until acked, and returns the Input
    /// (with a piggybacked ack) to write.
    ///
    /// While no connection is established the input is only kept: do not
    /// write the returned message, the next `Resumed` re-sends it.
    pub fn send_input(
        &mut self,
        cmd: Cmd,
        now_ms: u64,
    ) -> Result<pb::ClientMessage, InputQueueFull> {
        let (seq, ack) = self.number_input(now_ms)?;
        self.unacked.push_back((seq, Kept::Cmd(cmd.clone())));
        Ok(input_message(seq, ack, cmd))
    }

    /// Like [`send_input`](Self::send_input), for a game whose schema this
    /// crate does not know: `cmd` is the game's `Input` message encoded with
    /// `seq` and `ack` at 0 (its own fields only). The input is numbered,
    /// kept and re-sent exactly like a typed one.
    ///
    /// A session sends either typed or raw inputs, not both: after a
    /// resume, the typed ones come back in `Resumed.resend` and the raw
    /// ones from [`unacked_raw_inputs`](Self::unacked_raw_inputs), so the
    /// order between the two kinds would be lost.
    pub fn send_raw_input(&mut self, cmd: Bytes, now_ms: u64) -> Result<RawInput, InputQueueFull> {
        let (seq, ack) = self.number_input(now_ms)?;
        self.unacked.push_back((seq, Kept::Raw(cmd.clone())));
        Ok(RawInput { seq, ack, cmd })
    }

    /// The raw inputs the server has not acknowledged, oldest first, with
    /// no ack: after `Resumed`, what to write again, in order.
    pub fn unacked_raw_inputs(&self) -> impl Iterator<Item = RawInput> + '_ {
        self.unacked.iter().filter_map(|(seq, kept)| match kept {
            Kept::Raw(cmd) => Some(RawInput {
                seq: *seq,
                ack: 0,
                cmd: cmd.clone(),
            }),
            Kept::Cmd(_) => None,
        })
    }

    /// The next input number and the ack it carries.
    fn number_input(&mut self, now_ms: u64) -> Result<(u32, u64), InputQueueFull> {
        if self.unacked.len() >= self.cfg.max_unacked_inputs {
            return Err(InputQueueFull);
        }
        let seq = self.next_input_seq.ok_or(InputQueueFull)?;
        self.next_input_seq = seq.checked_add(1);
        let ack = if self.established && self.frames_received != self.frames_acked_sent {
            self.ack_written();
            self.frames_received
        } else {
            0
        };
        if self.established {
            self.last_sent_ms = self.last_sent_ms.max(now_ms);
        }
        Ok((seq, ack))
    }

    /// A counted frame of the game's own schema arrived, one the caller
    /// decoded itself (it is none of the engine's messages that
    /// [`on_server_message`](Self::on_server_message) takes). Counts it.
    pub fn on_game_frame(&mut self, now_ms: u64) -> ServerFrameOutcome {
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
        if !self.established {
            return self.violation("counted frame before Welcome or Resumed");
        }
        self.count_frame(now_ms);
        ServerFrameOutcome::Game
    }

    /// Feeds one decoded server message (control or counted).
    pub fn on_server_message(
        &mut self,
        msg: &pb::ServerMessage,
        now_ms: u64,
    ) -> ServerFrameOutcome {
        use pb::server_message::Msg;
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
        match &msg.msg {
            Some(Msg::Welcome(w)) => self.on_welcome(w, now_ms),
            Some(Msg::Resumed(r)) => self.on_resumed(r, now_ms),
            Some(Msg::Close(c)) => {
                self.established = false;
                self.ack_due_ms = None;
                let ends_session = matches!(
                    pb::CloseCode::try_from(c.code),
                    Ok(pb::CloseCode::ResumeRefused | pb::CloseCode::Logout)
                );
                if ends_session {
                    self.session_id = None;
                    self.token.clear();
                }
                ServerFrameOutcome::Closed(c.clone())
            }
            None => self.violation("server message without a body"),
            Some(other) => {
                if !self.established {
                    return self.violation("counted frame before Welcome or Resumed");
                }
                if let Msg::InputAck(a) = other {
                    if a.seq > self.highest_input_sent() {
                        return self.violation("InputAck for an input never sent");
                    }
                    self.drop_acked_inputs(a.seq);
                }
                self.count_frame(now_ms);
                ServerFrameOutcome::Game
            }
        }
    }

    fn on_welcome(&mut self, w: &pb::Welcome, now_ms: u64) -> ServerFrameOutcome {
        if self.established {
            return self.violation("Welcome on an established connection");
        }
        self.session_id = Some(w.session_id);
        self.token = w.resume_token.clone();
        self.restart_token = w.restart_token.clone();
        self.frames_received = 0;
        self.next_input_seq = Some(1);
        self.acked_input = 0;
        self.unacked.clear();
        if w.heartbeat_interval_ms > 0 {
            self.keepalive_ms = u64::from(w.heartbeat_interval_ms);
        }
        if w.heartbeat_timeout_ms > 0 {
            self.silence_ms = u64::from(w.heartbeat_timeout_ms);
        }
        self.establish(now_ms);
        ServerFrameOutcome::Welcomed
    }

    fn on_resumed(&mut self, r: &pb::Resumed, now_ms: u64) -> ServerFrameOutcome {
        if self.established {
            return self.violation("Resumed on an established connection");
        }
        if self.session_id != Some(r.session_id) {
            return self.violation("Resumed for another session");
        }
        let Ok(mode) = pb::ResumeMode::try_from(r.mode) else {
            return self.violation("Resumed with an unknown mode");
        };
        let base_ok = match mode {
            // The frames that follow are numbered from our own count + 1.
            pb::ResumeMode::Replay => r.frames_base == self.frames_received,
            // The server never sent fewer frames than we received.
            pb::ResumeMode::Snapshot => r.frames_base >= self.frames_received,
        };
        if !base_ok {
            return self.violation("Resumed with a frames_base that does not fit our count");
        }
        if r.last_input_seq > self.highest_input_sent() {
            return self.violation("Resumed claims inputs never sent");
        }
        self.token = r.resume_token.clone();
        self.frames_received = r.frames_base;
        self.drop_acked_inputs(r.last_input_seq);
        self.establish(now_ms);
        let resend = self
            .unacked
            .iter()
            .filter_map(|(seq, kept)| match kept {
                Kept::Cmd(cmd) => Some(input_message(*seq, 0, cmd.clone())),
                Kept::Raw(_) => None,
            })
            .collect();
        ServerFrameOutcome::Resumed { mode, resend }
    }

    fn establish(&mut self, now_ms: u64) {
        self.established = true;
        // The Hello / Resume this answers carried our count.
        self.frames_acked_sent = self.frames_received;
        self.ack_due_ms = None;
        self.last_sent_ms = self.last_sent_ms.max(now_ms);
    }

    fn count_frame(&mut self, now_ms: u64) {
        self.frames_received += 1;
        let by_delay = now_ms.saturating_add(self.cfg.ack_delay_ms);
        let mut due = self.ack_due_ms.unwrap_or(by_delay);
        if self.frames_received - self.frames_acked_sent >= self.cfg.ack_every_frames.max(1) {
            due = due.min(now_ms);
        }
        self.ack_due_ms = Some(due);
    }

    fn drop_acked_inputs(&mut self, seq: u32) {
        self.acked_input = self.acked_input.max(seq);
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
    }

    fn highest_input_sent(&self) -> u32 {
        self.next_input_seq.map_or(u32::MAX, |next| next - 1)
    }

    fn ack_written(&mut self) {
        self.frames_acked_sent = self.frames_received;
        self.ack_due_ms = None;
    }

    /// The server broke the protocol: nothing is changed but the connection,
    /// which the caller drops (the session can still be resumed).
    fn violation(&mut self, why: &str) -> ServerFrameOutcome {
        self.established = false;
        self.ack_due_ms = None;
        ServerFrameOutcome::Closed(pb::Close {
            code: pb::CloseCode::ProtocolError as i32,
            message: why.to_string(),
            retry_after_ms: 0,
            redirect: None,
        })
    }

    /// A standalone Ack to write now, if one is due (frames to ack, or keep-alive).
    pub fn poll_ack(&mut self, now_ms: u64) -> Option<pb::ClientMessage> {
        if !self.established {
            return None;
        }
        let frames_due = self.ack_due_ms.is_some_and(|d| d <= now_ms);
        let keepalive_due = self.keepalive_deadline() <= now_ms;
        if !(frames_due || keepalive_due) {
            return None;
        }
        self.ack_written();
        self.last_sent_ms = self.last_sent_ms.max(now_ms);
        Some(pb::ClientMessage {
            msg: Some(ClientMsg::Ack(pb::Ack {
                frames_received: self.frames_received,
            })),
        })
    }

    fn keepalive_deadline(&self) -> u64 {
        self.last_sent_ms
            .saturating_add(self.keepalive_ms.max(MIN_KEEPALIVE_MS))
    }

    fn silence_deadline(&self) -> u64 {
        self.last_heard_ms.saturating_add(self.silence_ms)
    }

    /// When `poll_ack` / `is_silent` next need a look. `None` while no
    /// connection is established (a handshake deadline is the caller's).
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.established {
            return None;
        }
        let mut t = self.keepalive_deadline().min(self.silence_deadline());
        if let Some(due) = self.ack_due_ms {
            t = t.min(due);
        }
        Some(t)
    }

    /// Nothing heard from the server for longer than the silence timeout
    /// (only while a connection is established).
    pub fn is_silent(&self, now_ms: u64) -> bool {
        self.established && self.silence_deadline() <= now_ms
    }

    /// The connection is gone (before reconnecting). Unacked inputs are kept.
    pub fn on_disconnect(&mut self, _now_ms: u64) {
        self.established = false;
        self.ack_due_ms = None;
    }
}

fn input_message(seq: u32, ack: u64, cmd: Cmd) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(ClientMsg::Input(pb::Input {
            seq,
            ack,
            cmd: Some(cmd),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::server_message::Msg;

    fn ping(t: u64) -> Cmd {
        Cmd::Ping(pb::Ping { client_time: t })
    }

    fn server(msg: Msg) -> pb::ServerMessage {
        pb::ServerMessage { msg: Some(msg) }
    }

    fn welcome(id: u64, took_over: bool) -> pb::ServerMessage {
        server(Msg::Welcome(pb::Welcome {
            session_id: id,
            resume_token: vec![id as u8; 16],
            heartbeat_interval_ms: 3_000,
            heartbeat_timeout_ms: 15_000,
            took_over,
            ..Default::default()
        }))
    }

    fn resumed(mode: pb::ResumeMode, base: u64, last_input: u32) -> pb::ServerMessage {
        server(Msg::Resumed(pb::Resumed {
            session_id: 1,
            resume_token: vec![9; 16],
            mode: mode as i32,
            frames_base: base,
            last_input_seq: last_input,
        }))
    }

    fn game() -> pb::ServerMessage {
        server(Msg::Pong(pb::Pong { client_time: 0 }))
    }

    fn input_ack(seq: u32) -> pb::ServerMessage {
        server(Msg::InputAck(pb::InputAck { seq }))
    }

    fn input_of(msg: &pb::ClientMessage) -> &pb::Input {
        match &msg.msg {
            Some(ClientMsg::Input(i)) => i,
            other => panic!("not an input: {other:?}"),
        }
    }

    fn ack_of(msg: &pb::ClientMessage) -> u64 {
        match &msg.msg {
            Some(ClientMsg::Ack(a)) => a.frames_received,
            other => panic!("not an ack: {other:?}"),
        }
    }

    fn is_protocol_error(out: &ServerFrameOutcome) -> bool {
        matches!(out, ServerFrameOutcome::Closed(c) if c.code == pb::CloseCode::ProtocolError as i32)
    }

    fn welcomed() -> ClientSession {
        let mut c = ClientSession::new(ClientSessionConfig {
            max_unacked_inputs: 4,
            ..Default::default()
        });
        assert!(!c.can_resume());
        assert_eq!(c.resume_message(), None);
        assert_eq!(
            c.on_server_message(&welcome(1, false), 0),
            ServerFrameOutcome::Welcomed
        );
        c
    }

    #[test]
    fn welcome_sets_the_session_and_the_server_heartbeat() {
        let c = welcomed();
        assert_eq!(c.session_id(), Some(1));
        assert!(c.can_resume() && c.is_established());
        assert_eq!(
            (c.keepalive_interval_ms(), c.silence_timeout_ms()),
            (3_000, 15_000)
        );
        let resume = c.resume_message().unwrap();
        assert_eq!(
            resume.msg,
            Some(ClientMsg::Resume(pb::Resume {
                session_id: 1,
                token: vec![1; 16],
                frames_received: 0,
                restart_token: Vec::new(),
            }))
        );
    }

    #[test]
    fn raw_inputs_and_game_frames_of_another_schema_follow_the_same_rules() {
        let mut c = welcomed();
        // Frames the caller decoded itself are counted like any other.
        assert_eq!(c.on_game_frame(10), ServerFrameOutcome::Game);
        assert_eq!(c.on_game_frame(11), ServerFrameOutcome::Game);
        assert_eq!(c.frames_received(), 2);
        let first = c
            .send_raw_input(Bytes::from_static(b"\x1a\x00"), 20)
            .unwrap();
        assert_eq!((first.seq, first.ack), (1, 2));
        let second = c
            .send_raw_input(Bytes::from_static(b"\x3a\x00"), 21)
            .unwrap();
        assert_eq!((second.seq, second.ack), (2, 0));
        // The frame is the typed Input's bytes with the command appended.
        let mut out = BytesMut::new();
        first.encode_frame_into(&mut out);
        let (payload, _) = tether_proto::split_frame(&out, 1024).unwrap().unwrap();
        let decoded = tether_proto::decode_envelope(payload).unwrap();
        assert_eq!(
            decoded.msg,
            Some(pb::client_envelope::Msg::Input(pb::InputHeader {
                seq: 1,
                ack: 2
            }))
        );
        // Input 1 is acknowledged; the connection drops; the resume hands
        // back input 2 alone, for the caller to write again.
        c.on_server_message(&input_ack(1), 30);
        c.on_disconnect(40);
        assert_eq!(
            c.on_game_frame(41),
            ServerFrameOutcome::Closed(pb::Close {
                code: pb::CloseCode::ProtocolError as i32,
                message: "counted frame before Welcome or Resumed".into(),
                retry_after_ms: 0,
                redirect: None,
            })
        );
        let out = c.on_server_message(&resumed(pb::ResumeMode::Replay, 3, 1), 50);
        assert!(matches!(out, ServerFrameOutcome::Resumed { ref resend, .. } if resend.is_empty()));
        let again: Vec<RawInput> = c.unacked_raw_inputs().collect();
        assert_eq!(again, vec![RawInput { ack: 0, ..second }]);
    }

    #[test]
    fn inputs_are_numbered_and_carry_the_ack_when_it_changed() {
        let mut c = welcomed();
        for _ in 0..3 {
            assert_eq!(c.on_server_message(&game(), 10), ServerFrameOutcome::Game);
        }
        let first = c.send_input(ping(1), 20).unwrap();
        assert_eq!((input_of(&first).seq, input_of(&first).ack), (1, 3));
        let second = c.send_input(ping(2), 21).unwrap();
        assert_eq!((input_of(&second).seq, input_of(&second).ack), (2, 0));
        assert_eq!(c.unacked_inputs(), 2);
        assert_eq!(
            c.on_server_message(&input_ack(1), 30),
            ServerFrameOutcome::Game
        );
        assert_eq!(
            (c.unacked_inputs(), c.acked_input(), c.frames_received()),
            (1, 1, 4)
        );
    }

    #[test]
    fn the_unacked_input_list_is_bounded() {
        let mut c = welcomed();
        for t in 0..4 {
            c.send_input(ping(t), t).unwrap();
        }
        assert_eq!(c.send_input(ping(9), 9), Err(InputQueueFull));
        c.on_server_message(&input_ack(2), 10);
        assert_eq!(input_of(&c.send_input(ping(9), 11).unwrap()).seq, 5);
    }

    #[test]
    fn standalone_acks_by_count_by_delay_and_as_keepalive() {
        let mut c = welcomed();
        assert_eq!(c.poll_timeout(), Some(3_000), "keep-alive from Welcome");
        let due = 100 + ClientSessionConfig::default().ack_delay_ms;
        c.on_server_message(&game(), 100);
        assert_eq!(c.poll_timeout(), Some(due));
        assert_eq!(c.poll_ack(due - 1), None);
        assert_eq!(ack_of(&c.poll_ack(due).unwrap()), 1);
        assert_eq!(c.poll_ack(due), None);
        let t = due + 50;
        for _ in 0..32 {
            c.on_server_message(&game(), t);
        }
        assert_eq!(c.poll_timeout(), Some(t), "a page of frames: ack now");
        assert_eq!(ack_of(&c.poll_ack(t).unwrap()), 33);
        // Nothing sent since then: the keep-alive 3 s later repeats the count.
        assert_eq!(c.poll_timeout(), Some(t + 3_000));
        assert_eq!(ack_of(&c.poll_ack(t + 3_000).unwrap()), 33);
        // Sending an input resets the keep-alive timer.
        c.send_input(ping(0), 5_000).unwrap();
        assert_eq!(c.poll_ack(6_400), None);
        assert!(c.poll_ack(8_000).is_some());
    }

    #[test]
    fn silence_only_counts_on_an_established_connection() {
        let mut c = welcomed();
        c.on_server_message(&game(), 1_000);
        assert!(!c.is_silent(15_999));
        assert!(c.is_silent(16_000));
        c.on_disconnect(16_000);
        assert!(!c.is_silent(100_000));
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.poll_ack(100_000), None);
    }

    #[test]
    fn replay_resume_resends_what_the_server_did_not_apply() {
        let mut c = welcomed();
        c.on_server_message(&game(), 1);
        c.on_server_message(&game(), 1);
        c.send_input(ping(1), 2).unwrap();
        c.send_input(ping(2), 2).unwrap();
        c.on_disconnect(3);
        // Kept while disconnected, not written.
        c.send_input(ping(3), 4).unwrap();
        assert_eq!(c.poll_ack(5_000), None);
        let resume = c.resume_message().unwrap();
        assert!(matches!(resume.msg, Some(ClientMsg::Resume(ref r)) if r.frames_received == 2));
        match c.on_server_message(&resumed(pb::ResumeMode::Replay, 2, 1), 10) {
            ServerFrameOutcome::Resumed { mode, resend } => {
                assert_eq!(mode, pb::ResumeMode::Replay);
                let seqs: Vec<_> = resend.iter().map(|m| input_of(m).seq).collect();
                assert_eq!(seqs, vec![2, 3]);
                assert!(resend.iter().all(|m| input_of(m).ack == 0));
                assert_eq!(input_of(&resend[1]).cmd, Some(ping(3)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((c.acked_input(), c.frames_received()), (1, 2));
        let resume = c.resume_message().unwrap();
        assert!(matches!(resume.msg, Some(ClientMsg::Resume(ref r)) if r.token == vec![9; 16]));
    }

    #[test]
    fn snapshot_resume_moves_the_frame_counter() {
        let mut c = welcomed();
        c.on_server_message(&game(), 1);
        c.on_disconnect(2);
        let out = c.on_server_message(&resumed(pb::ResumeMode::Snapshot, 70, 0), 3);
        assert!(matches!(
            out,
            ServerFrameOutcome::Resumed {
                mode: pb::ResumeMode::Snapshot,
                ..
            }
        ));
        assert_eq!(c.frames_received(), 70);
        assert_eq!(c.poll_ack(3), None, "the Resume acked what we had");
        c.on_server_message(&game(), 4);
        assert_eq!(c.frames_received(), 71);
    }

    #[test]
    fn a_resumed_that_does_not_fit_is_a_protocol_error_and_changes_nothing() {
        let mut c = welcomed();
        c.on_server_message(&game(), 1);
        c.send_input(ping(1), 1).unwrap();
        c.on_disconnect(2);
        let before = format!("{:?}", c.resume_message());
        assert!(is_protocol_error(
            &c.on_server_message(&resumed(pb::ResumeMode::Replay, 5, 0), 3)
        ));
        assert!(is_protocol_error(
            &c.on_server_message(&resumed(pb::ResumeMode::Snapshot, 0, 0), 3)
        ));
        assert!(is_protocol_error(
            &c.on_server_message(&resumed(pb::ResumeMode::Replay, 1, 2), 3)
        ));
        let mut bad_mode = resumed(pb::ResumeMode::Replay, 1, 0);
        if let Some(Msg::Resumed(r)) = &mut bad_mode.msg {
            r.mode = 7;
        }
        assert!(is_protocol_error(&c.on_server_message(&bad_mode, 3)));
        assert_eq!(format!("{:?}", c.resume_message()), before);
        assert_eq!(c.unacked_inputs(), 1);
        assert!(!c.is_established());
        // A counted frame outside an established connection.
        assert!(is_protocol_error(&c.on_server_message(&game(), 4)));
        assert_eq!(c.frames_received(), 1);
    }

    #[test]
    fn input_ack_beyond_what_was_sent_is_a_protocol_error() {
        let mut c = welcomed();
        c.send_input(ping(1), 1).unwrap();
        assert!(is_protocol_error(&c.on_server_message(&input_ack(2), 2)));
        assert_eq!(c.frames_received(), 0);
        // Old InputAcks replayed after a resume are fine.
        c.on_server_message(&resumed(pb::ResumeMode::Replay, 0, 1), 3);
        assert_eq!(
            c.on_server_message(&input_ack(0), 4),
            ServerFrameOutcome::Game
        );
        assert_eq!(c.acked_input(), 1);
    }

    #[test]
    fn refused_resume_and_logout_end_the_session() {
        for code in [pb::CloseCode::ResumeRefused, pb::CloseCode::Logout] {
            let mut c = welcomed();
            let close = pb::Close {
                code: code as i32,
                ..Default::default()
            };
            let out = c.on_server_message(&server(Msg::Close(close.clone())), 1);
            assert_eq!(out, ServerFrameOutcome::Closed(close));
            assert!(!c.can_resume());
        }
        let mut c = welcomed();
        let close = pb::Close {
            code: pb::CloseCode::SlowConsumer as i32,
            ..Default::default()
        };
        c.on_server_message(&server(Msg::Close(close)), 1);
        assert!(c.can_resume() && !c.is_established());
    }

    #[test]
    fn every_welcome_starts_a_new_numbering() {
        let mut c = welcomed();
        c.on_server_message(&game(), 1);
        c.send_input(ping(1), 1).unwrap();
        c.send_input(ping(2), 1).unwrap();
        c.on_disconnect(2);
        assert_eq!(
            c.on_server_message(&welcome(1, true), 3),
            ServerFrameOutcome::Welcomed
        );
        assert_eq!(
            (c.frames_received(), c.unacked_inputs(), c.acked_input()),
            (0, 0, 0)
        );
        assert_eq!(input_of(&c.send_input(ping(3), 4).unwrap()).seq, 1);
        assert!(is_protocol_error(
            &c.on_server_message(&welcome(2, false), 5)
        ));
        assert_eq!(c.session_id(), Some(1));
    }

    #[test]
    fn messages_without_a_body_are_protocol_errors() {
        let mut c = welcomed();
        assert!(is_protocol_error(
            &c.on_server_message(&pb::ServerMessage { msg: None }, 1)
        ));
    }
}

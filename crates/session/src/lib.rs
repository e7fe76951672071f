//! Sans-IO session state machines: the part of Tether that lets a game session
//! outlive its socket.
//!
//! Nothing in here reads a clock, opens a socket or spawns a thread. Time comes
//! in as `now_ms` (milliseconds on any monotonic clock the caller picks), random
//! tokens come in as arguments, and outgoing frames are handed back to the caller.
//!
//! # Layout
//!
//! - [`server`]: [`ServerSession`], the server's half: resume token, counted
//!   frames and the client's cumulative ack, the [`ReplayBuffer`], exactly-once
//!   input dedup, heartbeat and zombie timers.
//! - [`replay`]: [`ReplayBuffer`] and the [`PagePool`] its pages come from
//!   (one pool per shard; `pool.in_use() == 0` once every session is gone).
//! - [`client`]: [`ClientSession`], the client's half: frame counting and acks,
//!   input numbering and the unacked-input list re-sent after a resume.
//! - [`token`]: resume tokens and their constant-time comparison.
//!
//! # Data flow
//!
//! ```text
//!   world frame (Bytes, shared) --> ServerSession::push_frame --> ReplayBuffer (pages)
//!                                                          \--> caller writes it if Live
//!   client Ack / Input.ack      --> ServerSession::on_ack      --> pages back to PagePool
//!   client Input                --> ServerSession::check_input --> Apply | Duplicate | Gap
//!   socket lost                 --> ServerSession::detach      --> Zombie (grace timer)
//!   client Resume               --> ServerSession::resume      --> Replay(frames) | Snapshot
//!   now                         --> ServerSession::handle_timeout
//!                                     --> HeartbeatTimeout | KeepaliveDue | ZombieExpired
//!
//!   server frame (decoded)      --> ClientSession::on_server_message
//!                                     --> Welcomed | Resumed{resend} | Closed | Game
//!   game command                --> ClientSession::send_input  --> Input (numbered, kept)
//!   (another game's: send_raw_input; its frames: on_game_frame)
//!   now                         --> ClientSession::poll_ack    --> Ack (count or keep-alive)
//! ```
//!
//! # Guarantees
//!
//! With both halves driven as documented, whatever happens to connections in
//! between (cuts at any point, lost acks, half-open sockets, a `Resumed` lost
//! with its connection, leftovers of a replaced connection racing the
//! client's re-sends), every input is applied exactly once and in order, and
//! the client sees every counted frame exactly once, in order, or a snapshot
//! in place of those it can no longer get. This holds for as long as the
//! session lives: once it expires, or a new login takes it over, inputs the
//! server had not applied are gone (a login starts a new numbering).
//!
//! The deterministic simulations in `crates/engine/tests/` (driving these
//! state machines through the real engine) check this with a cut at every
//! step of a scripted exchange, a second cut during the recovery, and random
//! fault schedules, and check that nothing (session, connection, replay page)
//! is left behind after logout.
#![forbid(unsafe_code)]

pub mod client;
pub mod replay;
pub mod server;
pub mod token;

pub use client::{
    ClientSession, ClientSessionConfig, InputQueueFull, RawInput, ServerFrameOutcome,
};
pub use replay::{PagePool, ReplayBuffer, DEFAULT_MAX_IDLE_PAGES, FRAMES_PER_PAGE};
pub use server::{
    InputVerdict, ResumePlan, ResumeRefused, ServerSession, SessionConfig, SessionError,
    SessionState, TimerEvent,
};
pub use token::ResumeToken;

/// A session id as it travels on the wire.
pub type SessionId = u64;

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
//! - [`replay`]: [`ReplayBuffer`] and the [`PagePool`] its pages come from.
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
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod replay;
pub mod server;
pub mod token;

pub use client::{ClientSession, ClientSessionConfig, InputQueueFull, ServerFrameOutcome};
pub use replay::{PagePool, ReplayBuffer, FRAMES_PER_PAGE};
pub use server::{
    InputVerdict, ResumePlan, ResumeRefused, ServerSession, SessionConfig, SessionError,
    SessionState, TimerEvent,
};
pub use token::ResumeToken;

/// A session id as it travels on the wire.
pub type SessionId = u64;

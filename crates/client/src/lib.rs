//! Rust client SDK for Tether: connect, log in, send typed commands, receive
//! typed events, and keep the game session across lost connections.
//!
//! A Tether session outlives its socket. When the connection dies the
//! character stays in the world as a zombie session; this crate notices the
//! loss (EOF, a socket error, or the server going silent past its heartbeat
//! timeout), reconnects with exponential backoff and full jitter, presents
//! the resume token and the count of frames it has, and re-sends every input
//! the server has not applied, which the server then applies exactly once.
//! Game code sees [`Event::Paused`] and then [`Event::Resumed`] (the missed
//! frames follow) or [`Event::Resynced`] (drop your world view: a fresh
//! snapshot follows). If the server no longer has the session
//! (`RESUME_REFUSED`: it expired, or a crash lost it before it was saved),
//! the client logs in again with the same login and yields
//! [`Event::LoggedInAgain`] ([`ClientConfig::relogin`], on by default).
//! A `SERVER_SHUTDOWN` close (a restart or an upgrade) is a pause like any
//! other: the client waits the server's `retry_after_ms` and resumes.
//!
//! The typed commands and events are the MMO's. For another game on the
//! engine (the arena, say), set [`ClientConfig::raw_frames`]: the client
//! then sends that game's commands already encoded
//! ([`Client::send_raw`]) and hands its frames over undecoded
//! ([`Event::GameFrame`]), with the same login, acks, resume and
//! exactly-once inputs.
//!
//! The protocol bookkeeping (frame counting, acks, input numbering, the
//! unacked-input list) is `tether_session::ClientSession`, a sans-IO state
//! machine; this crate is the tokio driver around it.
//!
//! # Layout
//!
//! - [`client`]: [`Client`], the connection and its event loop.
//! - [`command`]: [`Command`], what game code asks for.
//! - [`event`]: [`Event`] (lifecycle) and [`GameEvent`] (counted frames).
//! - [`config`]: [`ClientConfig`], [`Login`], [`ReconnectPolicy`] and the
//!   defaults of every bound.
//! - [`error`]: [`ClientError`] (the client ended) and [`SendError`] (one
//!   command refused).
//! - [`backoff`]: the delay before each reconnect attempt.
//!
//! # Data flow
//!
//! ```text
//!  send(Command) --> ClientSession::send_input (numbered, kept until acked)
//!                      --> write buffer --(one write per turn)--> socket
//!
//!  socket --(read_chunk bytes per read)--> read buffer --> split_frame
//!    --> decode_server --> ClientSession::on_server_message (counted, acked)
//!    --> Event::Game(GameEvent) --> next_event()
//!
//!  EOF / error / silence --> Event::Paused --> backoff (full jitter)
//!    --> connect --> Resume{frames_received} --> Resumed{mode}
//!    --> re-send unacked inputs --> Event::Resumed | Event::Resynced
//!    (Close{RESUME_REFUSED} --> Hello --> Welcome --> Event::LoggedInAgain)
//! ```
//!
//! There is no background task and no channel: all of the above runs inside
//! [`Client::next_event`], which is cancel-safe. One client costs one read
//! buffer ([`ClientConfig::read_chunk`], 8 KiB by default), a write buffer
//! that is normally empty, and the session's unacked inputs, so one process
//! can hold thousands of them.
//!
//! # Bounds
//!
//! | what | bound | when full |
//! |---|---|---|
//! | inputs awaiting the server's ack | `session.max_unacked_inputs` (1024) | `send` returns [`SendError::Backlog`] |
//! | bytes awaiting the socket | [`ClientConfig::max_write_backlog`] (64 KiB) | `send` returns `Backlog`; standalone acks are skipped (cumulative: the next covers them) |
//! | read buffer | `read_chunk` + one frame (≤ 64 KiB) | never full: a frame is at most 64 KiB by the format; the buffer shrinks back after a large one |
//! | reconnect attempts in a row | [`ReconnectPolicy::max_attempts`] (12) | the client ends with [`ClientError::GaveUp`] |
//! | wait for a connect / handshake / logout | `connect_timeout` / `handshake_timeout` / `logout_timeout` | counts as a failed attempt / ends the client |
//!
//! # Example
//!
//! ```no_run
//! use tether_client::{Client, ClientConfig, Command, Event, GameEvent, Login};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ClientConfig::new("127.0.0.1:7777".parse()?, Login::Dev("alice".into()));
//! let mut client = Client::connect(cfg).await?;
//! let world = client.world();
//! println!("map {} x {}", world.width, world.height);
//!
//! client.send(Command::Move { x: 10.0, y: 12.0 })?;
//! let mut tick = tokio::time::Instant::now();
//! loop {
//!     // One timer for both the game's schedule and the connection's.
//!     match client.next_event_until(tick).await {
//!         Some(Ok(Event::Deadline)) => {
//!             tick += std::time::Duration::from_secs(1);
//!             client.send(Command::Ping { client_time: 0 })?;
//!         }
//!         Some(Ok(Event::Game(GameEvent::Pong(_)))) => {}
//!         Some(Ok(Event::Paused(why))) => eprintln!("connection lost ({why:?}), resuming"),
//!         Some(Ok(Event::Resynced { .. })) => { /* drop the world view */ }
//!         Some(Ok(_)) => {}
//!         Some(Err(e)) => return Err(e.into()),
//!         None => break,
//!     }
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
pub mod command;
pub mod config;
pub mod error;
pub mod event;

pub use client::{Client, ClientStats};
pub use command::{ChatScope, Command};
pub use config::{is_valid_name, ClientConfig, Login, ReconnectPolicy, Transport};
pub use error::{ClientError, SendError};
pub use event::{Event, GameEvent, PauseReason};
pub use tether_proto::pb;
pub use tether_session::ClientSessionConfig;
/// The clock [`Client::next_event_until`] takes deadlines on.
pub use tokio::time::Instant;

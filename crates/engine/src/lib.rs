//! The Tether engine core, sans IO.
//!
//! The engine is everything a game server does between the socket and the
//! game's rules: sessions that outlive their connections, the login and
//! resume handshakes, take-overs, frame counting and replay, acks,
//! exactly-once inputs, heartbeats and zombie timers, write-behind saves and
//! durable transactions; and, on the I/O threads, the gate every connection
//! passes before a shard hears of it. It holds no sockets, threads, clocks or
//! databases:
//! every call takes `now`, and what is to be written, storage, the account
//! directory and other shards are handed to a [`Host`] whose every method
//! returns at once ([`Host::transmit`] takes each frame as it is made).
//! The server's shard threads are thin drivers around it, and its I/O
//! threads around the [`gate`]; tests drive both with a virtual clock.
//!
//! A game plugs in through the [`Game`] trait; its inputs and frames are its
//! own schema, opaque to the engine (see `proto/engine.proto` for how the two
//! share the wire, and docs/GAME_API.md).
//!
//! # Layout
//!
//! - [`game`]: the [`Game`] trait, its [`Outbox`] and [`Ctx`].
//! - [`host`]: the [`Host`] trait: storage, directory, bus, randomness.
//! - `engine`: [`Engine`], one shard's sessions around one game.
//! - [`gate`]: [`gate::Gate`], one connection's way in before the engine
//!   sees it: which frames may be parsed before it is bound to a shard, the
//!   Hello / Resume rules (protect mode, login rates, version, credentials,
//!   routing) through an [`gate::Admission`] the I/O thread implements, and
//!   the per-connection input allowance. The I/O threads drive it.
//! - `record`: [`Record`] and [`Tx`], what storage keeps for any game.
//! - `stats`: [`EngineStats`], plain counters the server exports.
//! - `wire`: the frames the engine writes itself (Welcome, Resumed, Close,
//!   InputAck).
//!
//! # Data flow
//!
//! ```text
//!  driver (I/O thread)                      Gate (one per connection)
//!  decoded client frame (+ now) ---------> first frame? allowance? ------> Step: forward to a
//!                                           Admission: protect mode,         shard, drop, or
//!                                           login rates, credentials,        close (code, retry,
//!                                           routing                          strike)
//!
//!  driver (shard thread)                    Engine                         Game
//!  login / resume / input / ack / ------> sessions: handshake, take-over,
//!  logout / closed (from I/O rings)        exactly-once gate, acks -----> join / apply /
//!  loaded / committed (storage)                                           link_changed / ...
//!  on_bus (other shards)                   replay buffers <-- route <---- Outbox: frames,
//!  tick (when next_tick is due) ---------> timers, write-behind -------->   broadcast, remote,
//!                                                   |                       commits, saves
//!  Host: transmit (-> I/O rings) / load / save /  <-+
//!        commit / claim / send_bus
//! ```
#![forbid(unsafe_code)]

mod engine;
pub mod game;
pub mod gate;
pub mod host;
mod record;
mod stats;
mod wire;

pub use engine::{
    ConnId, Engine, EngineConfig, LoadFailed, SessionView, Takeover, Transmit, MAX_COMMIT_BACKLOG,
    SESSION_SHARD_SHIFT,
};
pub use game::{
    BadInput, BadRecord, Ctx, Game, Outbox, PlayerId, Route, Undeliverable, FROM_OTHER_NODE,
};
pub use host::{BusMsg, Host, StorageBusy};
pub use record::{Record, SessionMark, Tx};
pub use stats::{EngineStats, RefusedResume, CLOSE_CODE_SLOTS};
pub use wire::close_frame;

//! The arena: a second game on the Tether engine, as different from the MMO
//! as a game gets while sharing everything below the rules.
//!
//! Players queue for one-on-one matches of four-in-a-row (7 columns, 6
//! rows, drop a disc in turn, four in a line wins, a full board is a
//! draw). A matchmaker on each shard pairs queued players oldest first.
//! Every move is checked on the server. A finished match is a durable
//! transaction per player (the player's record with its new rating, wins
//! and losses, and a [`pb::MatchResult`] ledger entry), and a player hears
//! the result only once storage holds it ([`tether_engine::Game::committed`]).
//! A player whose connection drops stays in its match as a zombie: the
//! match waits for it up to [`ArenaConfig::forfeit_after_ms`], and a resume
//! either replays what it missed or sends a fresh snapshot of the board.
//!
//! The engine does everything else: logins, sessions that outlive their
//! connections, acks, exactly-once inputs (a move is never applied twice,
//! however often the client reconnects), write-behind and the commit
//! queue. The wire is `proto/arena.proto`, fitted into the session layer of
//! `proto/engine.proto` by field number; [`pb`] is generated from it.
//!
//! Everything is bounded: the queue ([`ArenaConfig::max_queue`]), the
//! matches in play ([`ArenaConfig::max_matches`]), the pairings made per
//! tick, the moves of a match (the board's [`board::CELLS`]), the time a
//! match waits for a move ([`ArenaConfig::turn_timeout_ms`]) or for an
//! absent player. A move that breaks the rules is answered with a
//! [`pb::CommandError`]; bytes that are not an arena input close the
//! connection (the engine's `PROTOCOL_ERROR`). Nothing a client sends can
//! panic the game.
//!
//! # Layout
//!
//! - [`game`]: [`Arena`], the [`tether_engine::Game`]: players, the queue
//!   and matchmaker, matches, turn and forfeit timers, results.
//! - [`board`]: the board: where a disc lands, whether it makes a line.
//! - [`record`]: a player's [`Profile`], its stored form (record version
//!   1, [`pb::StoredPlayer`]) and the Elo rating rule.
//! - [`pb`]: the messages generated from `proto/arena.proto`.
//!
//! # Data flow
//!
//! ```text
//!  client Input{Queue} --> engine (exactly once) --> Arena::apply --> queue
//!  every tick: Arena::tick --> timers (turn, forfeit) --> matchmaker --> MatchStart x2
//!  client Input{DropDisc} --> Arena::apply --> Board::drop_disc --> DiscDropped x2
//!      four in a row / full board / resign / timeout / forfeit / leave
//!      --> Arena::finish --> Outbox::commits: Tx{record, MatchResult} x2
//!      --> engine --> storage (record + ledger entry, one DB transaction)
//!      --> durable --> Arena::committed --> MatchResult frame to the player
//!  connection lost --> Arena::link_changed(dead) --> OpponentLink, forfeit timer
//!  resume --> replay, or Arena::snapshot: Profile, Board, SnapshotEnd
//! ```
#![forbid(unsafe_code)]

pub mod board;
pub mod game;
pub mod record;

/// Generated protobuf messages (package `tether.arena.v1`). The session
/// layer's messages they use (`Hello`, `Welcome`, ...) are
/// `tether_proto::pb`'s.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tether.arena.v1.rs"));
}

pub use game::{Arena, ArenaConfig, ArenaStats, NoRemote};
pub use record::{decode_record, encode_record, Profile, RECORD_VERSION};

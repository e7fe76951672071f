//! What the client hands to game code.

use std::io;

use tether_proto::pb::{self, server_message::Msg, CloseCode};

/// A counted server frame: the game's own events, numbered per session,
/// acknowledged by the client and replayed after a resume.
#[derive(Debug, Clone, PartialEq)]
pub enum GameEvent {
    /// The server applied every input up to `seq` (also its keep-alive).
    InputAck(pb::InputAck),
    /// Answer to a `Ping`.
    Pong(pb::Pong),
    /// Your character in full: first frame of every snapshot, and after a
    /// respawn.
    SelfState(pb::SelfState),
    /// The snapshot that started with `SelfState` is complete.
    SnapshotEnd,
    Appear(pb::EntityAppear),
    Move(pb::EntityMove),
    Disappear(pb::EntityDisappear),
    /// A `Move` was refused; you are at `(x, y)`.
    Correction(pb::Correction),
    Damage(pb::Damage),
    Death(pb::Death),
    /// Loot committed to storage.
    Loot(pb::LootGranted),
    Chat(pb::ChatMessage),
    /// A player in view lost or regained its connection.
    Link(pb::LinkState),
    /// An input was applied but had no effect (cooldown, out of range, ...).
    CommandError(pb::CommandError),
    Stats(pb::StatChange),
    /// A notice from the server's operators (maintenance, an event): show
    /// it to the player.
    Notice(pb::Notice),
}

impl GameEvent {
    /// The game event a counted message carries; `None` for control frames
    /// (`Welcome`, `Resumed`, `Close`) and empty messages.
    pub fn from_msg(msg: Msg) -> Option<GameEvent> {
        Some(match msg {
            Msg::InputAck(m) => GameEvent::InputAck(m),
            Msg::Pong(m) => GameEvent::Pong(m),
            Msg::SelfState(m) => GameEvent::SelfState(m),
            Msg::SnapshotEnd(_) => GameEvent::SnapshotEnd,
            Msg::Appear(m) => GameEvent::Appear(m),
            Msg::Move(m) => GameEvent::Move(m),
            Msg::Disappear(m) => GameEvent::Disappear(m),
            Msg::Correction(m) => GameEvent::Correction(m),
            Msg::Damage(m) => GameEvent::Damage(m),
            Msg::Death(m) => GameEvent::Death(m),
            Msg::Loot(m) => GameEvent::Loot(m),
            Msg::Chat(m) => GameEvent::Chat(m),
            Msg::Link(m) => GameEvent::Link(m),
            Msg::CommandError(m) => GameEvent::CommandError(m),
            Msg::Stats(m) => GameEvent::Stats(m),
            Msg::Notice(m) => GameEvent::Notice(m),
            Msg::Welcome(_) | Msg::Resumed(_) | Msg::Close(_) => return None,
        })
    }
}

/// Why the connection was lost. The session is not: the client is already
/// working on getting it back.
#[derive(Debug)]
#[non_exhaustive]
pub enum PauseReason {
    /// The server closed the socket without a `Close` frame.
    Eof,
    /// Reading or writing the socket failed.
    Io(io::Error),
    /// Nothing arrived from the server within its heartbeat timeout.
    Silent,
    /// The server sent `Close` with a code that invites a resume
    /// (`SLOW_CONSUMER`, `HEARTBEAT_TIMEOUT`, `RATE_LIMITED`,
    /// `SERVER_SHUTDOWN`, ...). A non-zero `retry_after_ms` is honoured.
    Closed {
        code: CloseCode,
        message: String,
        retry_after_ms: u32,
    },
    /// [`Client::drop_connection`](crate::Client::drop_connection) was called.
    Dropped,
}

/// What [`Client::next_event`](crate::Client::next_event) yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A counted frame from the world.
    Game(GameEvent),
    /// A counted frame of another game's schema
    /// ([`ClientConfig::raw_frames`](crate::ClientConfig::raw_frames)): the
    /// payload of one of that game's `ServerMessage`s, for the game code to
    /// decode. Already counted and acknowledged like any other. (The
    /// engine's own `InputAck` still comes as [`GameEvent::InputAck`].)
    GameFrame(bytes::Bytes),
    /// The connection was lost; the client is reconnecting in the
    /// background of `next_event`. Commands sent meanwhile are kept and
    /// delivered after the resume.
    Paused(PauseReason),
    /// The session is back and the frames missed while paused follow, in
    /// order: keep your view of the world. `resent` inputs that the server
    /// had not applied were written again.
    Resumed { resent: usize },
    /// The session is back but the missed frames were no longer held: drop
    /// your view of the world; a fresh snapshot (`SelfState`, `Appear`...,
    /// `SnapshotEnd`) follows. `resent` as for [`Event::Resumed`].
    Resynced { resent: usize },
    /// The session was gone when the client came back (`RESUME_REFUSED`)
    /// and the client logged in again by itself
    /// ([`ClientConfig::relogin`](crate::ClientConfig::relogin)): a new
    /// session, perhaps a new entity id. Drop your view of the world; a
    /// fresh snapshot follows. `inputs_dropped` inputs the old session had
    /// not acknowledged were not sent again: whether the server applied
    /// them is unknown.
    LoggedInAgain { inputs_dropped: usize },
    /// The logout completed; this is the last event.
    LoggedOut,
    /// The deadline given to
    /// [`Client::next_event_until`](crate::Client::next_event_until) passed.
    Deadline,
}

//! What game code asks the server to do.

use tether_proto::pb::{self, input::Cmd};

pub use pb::ChatScope;

/// A command for the server. Every variant except [`Command::Logout`] travels
/// as a numbered `Input`, is remembered until the server acknowledges it, and
/// is re-sent after a resume, so the server applies it exactly once.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Walk to `(x, y)` (refused with a `Correction` if too far for the
    /// character's speed, off the map, or while dead).
    Move { x: f32, y: f32 },
    /// Basic attack on an entity.
    Attack { target: u64 },
    /// A chat line. `to` is the whisper target's name (empty otherwise);
    /// `text` is 1-256 bytes.
    Chat {
        scope: ChatScope,
        to: String,
        text: String,
    },
    /// Round trip through the game loop; answered by a `Pong` carrying
    /// `client_time` back.
    Ping { client_time: u64 },
    /// Come back to life after a death.
    Respawn,
    /// End the session: the character leaves the world and is saved. Same as
    /// [`Client::logout`](crate::Client::logout).
    Logout,
}

impl Command {
    /// A local chat line.
    pub fn say(text: impl Into<String>) -> Command {
        Command::Chat {
            scope: ChatScope::Local,
            to: String::new(),
            text: text.into(),
        }
    }

    /// The `Input.cmd` for this command; `None` for `Logout`.
    pub fn into_input(self) -> Option<Cmd> {
        Some(match self {
            Command::Move { x, y } => Cmd::Move(pb::Move { x, y }),
            Command::Attack { target } => Cmd::Attack(pb::Attack { target }),
            Command::Chat { scope, to, text } => Cmd::Chat(pb::Chat {
                scope: scope as i32,
                to,
                text,
            }),
            Command::Ping { client_time } => Cmd::Ping(pb::Ping { client_time }),
            Command::Respawn => Cmd::Respawn(pb::Respawn {}),
            Command::Logout => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_onto_inputs() {
        assert_eq!(
            Command::Move { x: 1.0, y: 2.0 }.into_input(),
            Some(Cmd::Move(pb::Move { x: 1.0, y: 2.0 }))
        );
        assert_eq!(
            Command::say("hi").into_input(),
            Some(Cmd::Chat(pb::Chat {
                scope: ChatScope::Local as i32,
                to: String::new(),
                text: "hi".into()
            }))
        );
        assert_eq!(Command::Logout.into_input(), None);
    }
}

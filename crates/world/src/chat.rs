//! Chat routing for the three scopes.
//!
//! - LOCAL: one `ChatMessage` frame to every player whose view contains the
//!   speaker, and to the speaker (its echo is the confirmation).
//! - WHISPER: to the named player only. The sender gets no echo: its client
//!   already has the text, and the only failure, an unknown name, is answered
//!   with `CommandError{NO_SUCH_PLAYER}` (here for a name that cannot exist,
//!   by the server for one no shard holds). A name not on this world becomes a
//!   [`crate::RemoteWhisper`] for the server to route to the right shard.
//! - WORLD: the frame goes to [`crate::Outbox::world_chat`]; the server fans
//!   it out to every player of every shard, the speaker included.
//!
//! Text must be 1..=[`MAX_CHAT_BYTES`] bytes, else `CommandError{BAD_TEXT}`.
//! Dead players may talk. Rate limits are the server's (it sees every input
//! before the world does).

use tether_proto::pb::{self, server_message::Msg, ChatScope, CommandErrorCode as Code};

use crate::frames::{command_error, frame, send};
use crate::{Outbox, RemoteWhisper, World};

/// Longest chat line, in bytes (the protocol's limit).
pub const MAX_CHAT_BYTES: usize = 256;

/// Longest character name, in bytes (the protocol allows 1-24 characters of
/// `[A-Za-z0-9_]`). A whisper to a longer name is refused here, which also
/// bounds what a [`crate::RemoteWhisper`] carries.
pub const MAX_NAME_BYTES: usize = 24;

impl World {
    /// A `Chat` input of the player in `slot`.
    pub(crate) fn chat(&mut self, slot: u32, seq: u32, chat: pb::Chat, out: &mut Outbox) {
        let p = self.players[slot as usize].as_ref().expect("live slot");
        let id = p.id;
        if chat.text.is_empty() || chat.text.len() > MAX_CHAT_BYTES {
            return send(out, id, &command_error(seq, Code::CommandErrorBadText));
        }
        let Ok(scope) = ChatScope::try_from(chat.scope) else {
            return send(out, id, &command_error(seq, Code::CommandErrorUnspecified));
        };
        if scope == ChatScope::Whisper && (chat.to.is_empty() || chat.to.len() > MAX_NAME_BYTES) {
            return send(out, id, &command_error(seq, Code::CommandErrorNoSuchPlayer));
        }
        let (x, y) = (p.x, p.y);
        let f = frame(Msg::Chat(pb::ChatMessage {
            scope: scope as i32,
            from_id: id,
            from_name: p.name.clone(),
            text: chat.text,
        }));
        match scope {
            ChatScope::Local => self.broadcast(x, y, None, &f, out),
            ChatScope::Whisper => match self.names.get(&chat.to) {
                Some(&to) => send(out, to, &f),
                None => out.remote_whispers.push(RemoteWhisper {
                    from: id,
                    from_seq: seq,
                    to_name: chat.to,
                    frame: f,
                }),
            },
            ChatScope::World => out.world_chat.push(f),
        }
    }
}

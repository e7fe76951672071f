//! Frame building: every event is encoded once into a [`Bytes`] that all of
//! its recipients share by reference.
//!
//! Small events (moves, damage, deaths) are built on the stack; the one event
//! with a string that goes out often, `EntityAppear`, is built in a scratch
//! message kept by the world, so after warm-up the only heap allocation per
//! event is the frame itself.

use bytes::Bytes;
use tether_proto::pb::{self, server_message::Msg};

use crate::grid::Handle;
use crate::monsters::Monster;
use crate::player::Player;
use crate::{EntityId, Outbox};

/// Encodes one server message as a frame.
#[inline]
pub(crate) fn frame(msg: Msg) -> Bytes {
    tether_proto::encode_frame(&pb::ServerMessage { msg: Some(msg) })
}

/// Queues `frame` for one recipient.
#[inline]
pub(crate) fn send(out: &mut Outbox, to: EntityId, frame: &Bytes) {
    out.frames.push((to, frame.clone()));
}

pub(crate) fn move_frame(id: EntityId, x: f32, y: f32) -> Bytes {
    frame(Msg::Move(pb::EntityMove { id, x, y }))
}

pub(crate) fn disappear_frame(id: EntityId) -> Bytes {
    frame(Msg::Disappear(pb::EntityDisappear { id }))
}

pub(crate) fn command_error(seq: u32, code: pb::CommandErrorCode) -> Bytes {
    frame(Msg::CommandError(pb::CommandError {
        seq,
        code: code as i32,
    }))
}

/// Encodes the `EntityAppear` of the entity behind `h`, reusing `scratch`'s
/// string buffer.
pub(crate) fn appear_frame(
    scratch: &mut pb::EntityAppear,
    players: &[Option<Player>],
    monsters: &[Monster],
    h: Handle,
) -> Bytes {
    match h {
        Handle::Player(slot) => {
            let p = players[slot as usize]
                .as_ref()
                .expect("the grid only holds live player slots");
            scratch.id = p.id;
            scratch.kind = pb::EntityKind::Player as i32;
            scratch.name.clear();
            scratch.name.push_str(&p.name);
            scratch.x = p.x;
            scratch.y = p.y;
            scratch.hp = p.hp;
            scratch.max_hp = p.max_hp;
            scratch.level = p.level;
            scratch.link_dead = p.link_dead;
            scratch.dead = p.dead;
        }
        Handle::Monster(i) => {
            let m = &monsters[i as usize];
            scratch.id = m.id;
            scratch.kind = pb::EntityKind::Monster as i32;
            scratch.name.clear();
            scratch.name.push_str(m.kind.name);
            scratch.x = m.x;
            scratch.y = m.y;
            scratch.hp = m.hp;
            scratch.max_hp = m.kind.max_hp;
            scratch.level = m.kind.level;
            scratch.link_dead = false;
            scratch.dead = m.dead;
        }
    }
    // Move the scratch into the oneof for encoding and take it back after,
    // so its string keeps its capacity.
    let msg = pb::ServerMessage {
        msg: Some(Msg::Appear(std::mem::take(scratch))),
    };
    let f = tether_proto::encode_frame(&msg);
    if let Some(Msg::Appear(a)) = msg.msg {
        *scratch = a;
    }
    f
}

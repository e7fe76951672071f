//! Test harness: a world, a fake clock, and one fake client per player that
//! rebuilds its view of the world from nothing but the frames it was sent.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tether_proto::pb::{self, input::Cmd, server_message::Msg};
use tether_world::{
    CharacterRecord, EntityId, EntityView, LootTx, Outbox, RemoteWhisper, World, WorldConfig,
};

/// Decodes one frame the world produced (it must be exactly one frame).
pub fn decode(frame: &Bytes) -> Msg {
    let (payload, used) = tether_proto::split_frame(frame, tether_proto::MAX_PAYLOAD_LEN)
        .expect("valid header")
        .expect("whole frame");
    assert_eq!(used, frame.len(), "one frame per Bytes");
    tether_proto::decode_server(payload)
        .expect("decodes")
        .msg
        .expect("has a body")
}

/// What a client believes about one entity in its view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub kind: i32,
    pub x: f32,
    pub y: f32,
    pub hp: i32,
    pub dead: bool,
    pub link_dead: bool,
}

/// One player's client: its view and every message it received.
#[derive(Debug, Default)]
pub struct Client {
    pub view: HashMap<EntityId, Seen>,
    pub inbox: Vec<Msg>,
}

impl Client {
    /// Applies a message to the view, strictly: an Appear for an entity
    /// already in view, or a Move / Disappear / Damage / Death / LinkState
    /// about one that is not, is a bug in the world.
    fn absorb(&mut self, me: EntityId, msg: &Msg) {
        match msg {
            Msg::Appear(a) => {
                assert_ne!(a.id, me, "a player never sees itself");
                let seen = Seen {
                    kind: a.kind,
                    x: a.x,
                    y: a.y,
                    hp: a.hp,
                    dead: a.dead,
                    link_dead: a.link_dead,
                };
                assert!(
                    self.view.insert(a.id, seen).is_none(),
                    "{me:#x}: Appear of {:#x}, already in view",
                    a.id
                );
            }
            Msg::Move(m) => {
                assert_ne!(m.id, me, "accepted moves are not echoed");
                let s = self
                    .view
                    .get_mut(&m.id)
                    .unwrap_or_else(|| panic!("{me:#x}: Move of {:#x}, not in view", m.id));
                s.x = m.x;
                s.y = m.y;
            }
            Msg::Disappear(d) => {
                assert!(
                    self.view.remove(&d.id).is_some(),
                    "{me:#x}: Disappear of {:#x}, not in view",
                    d.id
                );
            }
            Msg::Damage(d) if d.target != me => {
                self.view
                    .get_mut(&d.target)
                    .unwrap_or_else(|| panic!("{me:#x}: Damage to {:#x}, not in view", d.target))
                    .hp = d.target_hp;
            }
            Msg::Death(d) if d.id != me => {
                self.view
                    .get_mut(&d.id)
                    .unwrap_or_else(|| panic!("{me:#x}: Death of {:#x}, not in view", d.id))
                    .dead = true;
            }
            Msg::Link(l) => {
                self.view
                    .get_mut(&l.id)
                    .unwrap_or_else(|| panic!("{me:#x}: LinkState of {:#x}, not in view", l.id))
                    .link_dead = l.link_dead;
            }
            _ => {}
        }
    }
}

/// A world driven by a fake clock, with a fake client per player.
pub struct Sim {
    pub world: World,
    pub out: Outbox,
    pub now: u64,
    pub seq: u32,
    pub clients: HashMap<EntityId, Client>,
    pub world_chat: Vec<Msg>,
    pub remote_whispers: Vec<RemoteWhisper>,
    pub loot: Vec<LootTx>,
}

impl Sim {
    pub fn new(config: WorldConfig) -> Self {
        Sim {
            world: World::new(config, 3),
            out: Outbox::default(),
            now: 1_000,
            seq: 0,
            clients: HashMap::new(),
            world_chat: Vec::new(),
            remote_whispers: Vec::new(),
            loot: Vec::new(),
        }
    }

    /// A small map with few monsters, for focused tests.
    pub fn small() -> Self {
        Self::new(WorldConfig {
            width: 400.0,
            height: 400.0,
            monsters: 8,
            ..WorldConfig::default()
        })
    }

    pub fn join(&mut self, name: &str, pos: Option<(f32, f32)>) -> EntityId {
        self.join_record(CharacterRecord {
            pos,
            ..CharacterRecord::new(name)
        })
    }

    pub fn join_record(&mut self, rec: CharacterRecord) -> EntityId {
        let id = self.world.join(self.now, rec, &mut self.out);
        assert!(self.clients.insert(id, Client::default()).is_none());
        self.deliver();
        id
    }

    pub fn leave(&mut self, id: EntityId) -> Option<CharacterRecord> {
        let rec = self.world.leave(self.now, id, &mut self.out);
        self.clients.remove(&id);
        self.deliver();
        rec
    }

    /// Applies a command with the next input number; returns that number.
    pub fn apply(&mut self, id: EntityId, cmd: Cmd) -> u32 {
        self.seq += 1;
        self.world.apply(self.now, id, self.seq, cmd, &mut self.out);
        self.deliver();
        self.seq
    }

    pub fn move_to(&mut self, id: EntityId, x: f32, y: f32) -> u32 {
        self.apply(id, Cmd::Move(pb::Move { x, y }))
    }

    pub fn attack(&mut self, id: EntityId, target: EntityId) -> u32 {
        self.apply(id, Cmd::Attack(pb::Attack { target }))
    }

    pub fn chat(&mut self, id: EntityId, scope: pb::ChatScope, to: &str, text: &str) -> u32 {
        self.apply(
            id,
            Cmd::Chat(pb::Chat {
                scope: scope as i32,
                to: to.into(),
                text: text.into(),
            }),
        )
    }

    pub fn respawn(&mut self, id: EntityId) -> u32 {
        self.apply(id, Cmd::Respawn(pb::Respawn {}))
    }

    pub fn set_link_dead(&mut self, id: EntityId, link_dead: bool) {
        self.world.set_link_dead(id, link_dead, &mut self.out);
        self.deliver();
    }

    /// Advances the clock by `dt` ms and ticks the world once.
    pub fn tick(&mut self, dt: u64) {
        self.now += dt;
        self.world.tick(self.now, &mut self.out);
        self.deliver();
    }

    /// Ticks every `config.tick_ms` for `duration` ms.
    pub fn run_for(&mut self, duration: u64) {
        let step = self.world.config().tick_ms;
        let end = self.now + duration;
        while self.now < end {
            self.tick(step);
        }
    }

    /// A resume that could not replay: the client drops its view and takes
    /// a fresh snapshot.
    pub fn snapshot(&mut self, id: EntityId) {
        self.clients.get_mut(&id).expect("joined").view.clear();
        self.world.snapshot(id, &mut self.out);
        self.deliver();
    }

    pub fn loot_committed(&mut self, tx: &LootTx) {
        self.world.loot_committed(tx, &mut self.out);
        self.deliver();
    }

    /// Hands every queued frame to its client.
    pub fn deliver(&mut self) {
        for (to, f) in self.out.frames.drain(..) {
            let msg = decode(&f);
            let c = self
                .clients
                .get_mut(&to)
                .unwrap_or_else(|| panic!("frame {msg:?} for {to:#x}, who is not in the world"));
            c.absorb(to, &msg);
            c.inbox.push(msg);
        }
        self.world_chat
            .extend(self.out.world_chat.drain(..).map(|f| decode(&f)));
        self.remote_whispers.append(&mut self.out.remote_whispers);
        self.loot.append(&mut self.out.loot);
    }

    /// Takes everything `id` received so far.
    pub fn inbox(&mut self, id: EntityId) -> Vec<Msg> {
        std::mem::take(&mut self.clients.get_mut(&id).expect("joined").inbox)
    }

    pub fn clear_inboxes(&mut self) {
        for c in self.clients.values_mut() {
            c.inbox.clear();
        }
    }

    pub fn entity(&self, id: EntityId) -> EntityView {
        self.world.entity(id).expect("entity exists")
    }

    /// Some monster and where it is.
    pub fn monsters(&self) -> Vec<EntityView> {
        self.world
            .entities()
            .filter(|e| e.kind == pb::EntityKind::Monster)
            .collect()
    }

    /// A live monster at least `margin` from every map edge.
    pub fn monster_inland(&self, margin: f32) -> EntityView {
        let c = self.world.config();
        self.monsters()
            .into_iter()
            .find(|m| {
                !m.dead
                    && m.x > margin
                    && m.y > margin
                    && m.x < c.width - margin
                    && m.y < c.height - margin
            })
            .expect("a monster away from the edges")
    }

    /// A point farther than any monster can reach (leash plus attack range
    /// from every home, homes being where monsters stand before any tick).
    pub fn quiet_spot(&self) -> (f32, f32) {
        let reach = tether_world::monsters::LEASH_RADIUS + tether_world::monsters::AGGRO_RADIUS;
        let c = self.world.config();
        let monsters = self.monsters();
        let mut y = 1.0;
        while y < c.height {
            let mut x = 1.0;
            while x < c.width {
                if monsters
                    .iter()
                    .all(|m| (m.x - x).powi(2) + (m.y - y).powi(2) > reach * reach)
                {
                    return (x, y);
                }
                x += 5.0;
            }
            y += 5.0;
        }
        panic!("no quiet spot on this map");
    }

    /// Every player's reconstructed view must equal a brute-force scan of
    /// the world: the same entities, at the same positions, in the same
    /// life and link state (and, for monsters, the same hp).
    pub fn check_views(&self) {
        let r = self.world.config().view_radius;
        let r2 = r * r;
        let all: Vec<EntityView> = self.world.entities().collect();
        let players = all.iter().filter(|e| e.kind == pb::EntityKind::Player);
        assert_eq!(players.clone().count(), self.clients.len());
        for p in players {
            let client = &self.clients[&p.id];
            let expected: HashSet<EntityId> = all
                .iter()
                .filter(|e| {
                    let (dx, dy) = (e.x - p.x, e.y - p.y);
                    e.id != p.id && dx * dx + dy * dy <= r2
                })
                .map(|e| e.id)
                .collect();
            let actual: HashSet<EntityId> = client.view.keys().copied().collect();
            if expected != actual {
                let describe = |ids: Vec<&EntityId>| -> Vec<String> {
                    ids.into_iter()
                        .map(|id| match self.world.entity(*id) {
                            Some(e) => format!(
                                "{id:#x} at distance {}",
                                ((e.x - p.x).powi(2) + (e.y - p.y).powi(2)).sqrt()
                            ),
                            None => format!("{id:#x} (gone)"),
                        })
                        .collect()
                };
                panic!(
                    "view of {:#x} is wrong: missing {:?}, extra {:?}",
                    p.id,
                    describe(expected.difference(&actual).collect()),
                    describe(actual.difference(&expected).collect()),
                );
            }
            for e in all.iter().filter(|e| expected.contains(&e.id)) {
                let s = client.view[&e.id];
                assert_eq!((s.x, s.y), (e.x, e.y), "position of {:#x}", e.id);
                assert_eq!(s.dead, e.dead, "dead flag of {:#x}", e.id);
                assert_eq!(s.link_dead, e.link_dead, "link flag of {:#x}", e.id);
                assert_eq!(s.kind, e.kind as i32);
                if e.kind == pb::EntityKind::Monster {
                    assert_eq!(s.hp, e.hp, "hp of monster {:#x}", e.id);
                }
            }
        }
    }
}

/// The messages of one kind in an inbox.
#[macro_export]
macro_rules! pick {
    ($inbox:expr, $variant:ident) => {
        $inbox
            .iter()
            .filter_map(|m| match m {
                tether_proto::pb::server_message::Msg::$variant(x) => Some(x.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

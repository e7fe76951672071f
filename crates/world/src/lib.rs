//! The Tether world simulation, sans IO.
//!
//! A [`World`] is one shard: a map with its players and monsters. It is driven
//! by method calls carrying `now_ms` (any monotonic millisecond clock the
//! caller picks) and writes what it wants sent into an [`Outbox`] the caller
//! owns. There are no sockets, threads, clocks or OS randomness inside: random
//! numbers come from a generator seeded by [`WorldConfig::seed`] and the shard
//! index, so a world replays identically from the same calls.
//!
//! Every event is encoded once into a frame (`Bytes`) that all of its
//! recipients share: the outbox holds `(recipient, frame)` pairs whose frames
//! are reference-counted clones of one buffer.
//!
//! # Layout
//!
//! - [`config`]: [`WorldConfig`], defaults, and sizing a map for a population.
//! - [`grid`]: the interest grid (uniform cells of entries with positions) and
//!   the visibility rule, [`grid::within`].
//! - `visibility` (private): turning position changes into `EntityAppear` /
//!   `EntityMove` / `EntityDisappear` for exactly the players concerned.
//! - [`movement`]: server-authoritative movement, the per-player move budget.
//! - [`combat`]: attacks, damage, deaths, experience, loot, respawn and
//!   regeneration.
//! - [`monsters`]: the monster kinds and their AI (wander, aggro, chase,
//!   attack, leash home, respawn).
//! - [`items`]: the item table and bounded inventories.
//! - [`chat`]: local, whisper and world chat routing.
//! - [`player`]: player characters, the progression curve, stored records.
//! - `frames` (private): encode-once helpers.
//! - [`game`]: [`Mmo`], the world as a game on the Tether engine, and how
//!   its characters are stored.
//!
//! # Data flow
//!
//! ```text
//!  caller (shard thread)            World                                 Outbox (caller drains)
//!  join / leave / set_link_dead --+
//!  apply(now, id, seq, Cmd) ------+-> validate (move budget, range,  --+-> frames: (recipient, Bytes)
//!  tick(now): monsters, respawns, |   cooldown, text / name bounds),   |     one encode, N clones
//!             regeneration -------+   then mutate the entity           +-> world_chat (every shard)
//!                                           |                          +-> remote_whispers
//!                                           v                          +-> loot: LootTx ---------+
//!                                  InterestGrid: who is within the                                |
//!                                  view radius of the old / new spot                              v
//!                                  -> Appear / Move / Disappear                       store (durable)
//!  loot_committed(tx) <---------------------------------------------------------- committed -----+
//!      -> LootGranted to the player
//!  take_dirty -> changed CharacterRecords -> write-behind store
//! ```
//!
//! # Guarantees
//!
//! - After every call, each player's view, as rebuilt from the frames it was
//!   sent, is exactly the set of entities within its view radius, with their
//!   current positions and life / link state (`tests/aoi.rs` checks this
//!   against a brute-force scan after every step of random sessions).
//! - Everything a client can grow is bounded: inventories ([`items`]), chat
//!   lines and whisper names ([`chat`]), the move budget ([`movement`]);
//!   what the configuration can grow is capped too (monsters, grid cells).
//! - No input panics the world: unknown ids, dead targets, NaN positions and
//!   out-of-range enums are answered with a `Correction` or `CommandError`,
//!   or ignored when their player is gone.
#![forbid(unsafe_code)]

pub mod chat;
pub mod combat;
pub mod config;
mod frames;
pub mod game;
pub mod grid;
pub mod items;
pub mod monsters;
pub mod movement;
pub mod player;
mod visibility;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tether_proto::pb::{self, input::Cmd, server_message::Msg};

pub use config::WorldConfig;
pub use game::{Mmo, MmoRemote};
pub use items::item_name;

use frames::{frame, send};
use grid::{Handle, InterestGrid};
use monsters::Monster;
use player::Player;

/// An entity id, unique on the server (the shard index is in the top 8 bits).
pub type EntityId = u64;

/// Bits of an entity id (and a loot tx id) below the shard index.
pub const SHARD_SHIFT: u32 = 56;

/// What persists of a character between sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct CharacterRecord {
    pub name: String,
    /// None for a new character: it starts at a spawn point.
    pub pos: Option<(f32, f32)>,
    pub hp: i32,
    pub level: u32,
    pub xp: u64,
    pub gold: u64,
    pub inventory: Vec<pb::ItemStack>,
}

impl CharacterRecord {
    /// A brand-new character: no position yet, level 1, full hp (the world
    /// fills those in on join).
    pub fn new(name: impl Into<String>) -> Self {
        CharacterRecord {
            name: name.into(),
            pos: None,
            hp: 0,
            level: 0,
            xp: 0,
            gold: 0,
            inventory: Vec::new(),
        }
    }
}

/// A value transaction (loot) to commit before the player is told.
#[derive(Debug, Clone, PartialEq)]
pub struct LootTx {
    /// Unique on the server and increasing: the shard index in the top 8 bits,
    /// a per-world counter below.
    pub tx_id: u64,
    pub entity: EntityId,
    pub character: String,
    pub gold: u64,
    /// What was actually added (overflow of a full inventory is not listed).
    pub items: Vec<pb::ItemStack>,
    /// The character's totals after this transaction.
    pub total_gold: u64,
    pub inventory: Vec<pb::ItemStack>,
}

/// A whisper to a player this world does not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWhisper {
    pub from: EntityId,
    pub from_seq: u32,
    pub to_name: String,
    /// The encoded ChatMessage frame for the target.
    pub frame: Bytes,
}

/// Everything a call wants sent. The caller drains it after each call batch.
#[derive(Default)]
pub struct Outbox {
    /// (recipient, counted frame). One frame may go to many recipients.
    pub frames: Vec<(EntityId, Bytes)>,
    /// World-scope chat frames, for every player of every shard.
    pub world_chat: Vec<Bytes>,
    pub remote_whispers: Vec<RemoteWhisper>,
    /// Loot to commit; confirm with [`World::loot_committed`].
    pub loot: Vec<LootTx>,
}

impl Outbox {
    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
            && self.world_chat.is_empty()
            && self.remote_whispers.is_empty()
            && self.loot.is_empty()
    }

    /// Empties every list, keeping their capacity.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.world_chat.clear();
        self.remote_whispers.clear();
        self.loot.clear();
    }
}

/// A read-only view of one entity, for admin pages and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityView {
    pub id: EntityId,
    pub kind: pb::EntityKind,
    pub x: f32,
    pub y: f32,
    pub hp: i32,
    pub max_hp: i32,
    pub level: u32,
    pub dead: bool,
    pub link_dead: bool,
}

/// Hasher for entity ids. Ids are counters the world hands out itself, so a
/// multiplicative mix spreads them well; clients can only look ids up, never
/// insert them, so they cannot build collision chains.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<EntityId, V, BuildHasherDefault<IdHasher>>;

/// One shard's simulation.
pub struct World {
    config: WorldConfig,
    shard: u8,
    rng: SmallRng,
    /// Next entity counter (ids are never reused).
    next_serial: u64,
    /// Next loot transaction counter.
    next_tx: u64,
    /// view_radius squared, the visibility threshold.
    view_r2: f32,
    grid: InterestGrid,
    /// Player slots; a slot is reused after a leave, an id never is.
    players: Vec<Option<Player>>,
    free_slots: Vec<u32>,
    player_count: usize,
    monsters: Vec<Monster>,
    ids: IdMap<Handle>,
    names: HashMap<String, EntityId>,
    /// Players changed since the last `take_dirty` (slot, id); an entry whose
    /// slot now holds another id is stale and skipped.
    dirty: Vec<(u32, EntityId)>,
    /// Players below full hp, for regeneration (slot, id), same staleness rule.
    wounded: Vec<(u32, EntityId)>,
    next_regen_ms: u64,
    /// Reused `EntityAppear` (keeps its name buffer).
    appear_scratch: pb::EntityAppear,
}

impl World {
    /// A world with its monsters spawned. `shard` goes into the top 8 bits of
    /// every entity id and is mixed into the random seed.
    pub fn new(config: WorldConfig, shard: u8) -> Self {
        let config = config.sanitized();
        let seed = config.seed ^ (shard as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut world = World {
            grid: InterestGrid::new(config.width, config.height, config.view_radius),
            view_r2: config.view_radius * config.view_radius,
            config,
            shard,
            rng: SmallRng::seed_from_u64(seed),
            next_serial: 1,
            next_tx: 1,
            players: Vec::new(),
            free_slots: Vec::new(),
            player_count: 0,
            monsters: Vec::new(),
            ids: IdMap::default(),
            names: HashMap::new(),
            dirty: Vec::new(),
            wounded: Vec::new(),
            next_regen_ms: 0,
            appear_scratch: pb::EntityAppear::default(),
        };
        world.spawn_monsters();
        world
    }

    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// The shard index this world was created with.
    pub fn shard(&self) -> u8 {
        self.shard
    }

    /// The rules a client needs (sent in `Welcome`).
    pub fn info(&self) -> pb::WorldInfo {
        pb::WorldInfo {
            width: self.config.width,
            height: self.config.height,
            view_radius: self.config.view_radius,
            move_speed: self.config.move_speed,
            attack_range: self.config.attack_range,
            attack_cooldown_ms: self.config.attack_cooldown_ms.min(u32::MAX as u64) as u32,
            pvp: self.config.pvp,
        }
    }

    pub fn player_count(&self) -> usize {
        self.player_count
    }

    pub fn monster_count(&self) -> usize {
        self.monsters.len()
    }

    /// A character enters the world. The joiner gets a snapshot (SelfState,
    /// one EntityAppear per visible entity, SnapshotEnd); players who can see
    /// it get an EntityAppear.
    ///
    /// The record is normalised: level 0 becomes a new level-1 character,
    /// hp <= 0 becomes full hp, a position off the map (or none) becomes a
    /// random spawn point, the inventory is brought within its bounds.
    /// Names are expected unique per world (the caller enforces it).
    pub fn join(&mut self, now_ms: u64, character: CharacterRecord, out: &mut Outbox) -> EntityId {
        let id = self.new_id();
        let pos = character.pos;
        let mut p = Player::from_record(id, character, now_ms, self.move_budget_cap());
        let (x, y) = match pos {
            Some((x, y)) if self.on_map(x, y) => (x, y),
            _ => self.spawn_point(),
        };
        p.x = x;
        p.y = y;
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.players.push(None);
                (self.players.len() - 1) as u32
            }
        };
        debug_assert!(
            !self.names.contains_key(&p.name),
            "duplicate name {}",
            p.name
        );
        self.names.insert(p.name.clone(), id);
        self.ids.insert(id, Handle::Player(slot));
        send(out, id, &p.self_state_frame());
        let wounded = p.hp < p.max_hp;
        self.players[slot as usize] = Some(p);
        self.player_count += 1;
        self.mark_dirty(slot);
        if wounded {
            self.mark_wounded(slot);
        }
        self.materialize(Handle::Player(slot), out);
        send(out, id, &frame(Msg::SnapshotEnd(pb::SnapshotEnd {})));
        id
    }

    /// The character leaves; viewers get EntityDisappear. Returns its record.
    pub fn leave(
        &mut self,
        _now_ms: u64,
        id: EntityId,
        out: &mut Outbox,
    ) -> Option<CharacterRecord> {
        let slot = self.player_slot(id)?;
        self.vanish(Handle::Player(slot), false, out);
        self.ids.remove(&id);
        let p = self.players[slot as usize].take()?;
        if self.names.get(&p.name) == Some(&id) {
            self.names.remove(&p.name);
        }
        self.free_slots.push(slot);
        self.player_count -= 1;
        Some(p.record())
    }

    /// A fresh snapshot for `id` (after a resume that could not replay):
    /// SelfState, one EntityAppear per entity in view, SnapshotEnd.
    pub fn snapshot(&self, id: EntityId, out: &mut Outbox) {
        let Some(slot) = self.player_slot(id) else {
            return;
        };
        let Some(p) = self.players[slot as usize].as_ref() else {
            return;
        };
        send(out, id, &p.self_state_frame());
        let mut scratch = pb::EntityAppear::default();
        let rect = self.grid.around(p.x, p.y, self.config.view_radius);
        for e in self.grid.entries(rect) {
            if e.id != id && grid::within(self.view_r2, e.x, e.y, p.x, p.y) {
                let f = frames::appear_frame(&mut scratch, &self.players, &self.monsters, e.handle);
                out.frames.push((id, f));
            }
        }
        send(out, id, &frame(Msg::SnapshotEnd(pb::SnapshotEnd {})));
    }

    /// Marks a player link-dead (zombie) or back; viewers get LinkState.
    /// Monsters do not pick a link-dead player as a new target.
    pub fn set_link_dead(&mut self, id: EntityId, link_dead: bool, out: &mut Outbox) {
        let Some(slot) = self.player_slot(id) else {
            return;
        };
        let Some(p) = self.players[slot as usize].as_mut() else {
            return;
        };
        if p.link_dead == link_dead {
            return;
        }
        p.link_dead = link_dead;
        let (x, y) = (p.x, p.y);
        let f = frame(Msg::Link(pb::LinkState { id, link_dead }));
        self.broadcast(x, y, Some(id), &f, out);
    }

    /// Applies one input command of player `id` (input number `seq`).
    /// Unknown ids are ignored (the player left in the meantime).
    pub fn apply(&mut self, now_ms: u64, id: EntityId, seq: u32, cmd: Cmd, out: &mut Outbox) {
        let Some(slot) = self.player_slot(id) else {
            return;
        };
        match cmd {
            Cmd::Move(m) => self.move_player(now_ms, slot, seq, m.x, m.y, out),
            Cmd::Attack(a) => self.attack(now_ms, slot, seq, a.target, out),
            Cmd::Chat(c) => self.chat(slot, seq, c, out),
            Cmd::Ping(p) => send(
                out,
                id,
                &frame(Msg::Pong(pb::Pong {
                    client_time: p.client_time,
                })),
            ),
            Cmd::Respawn(_) => self.respawn_player(now_ms, slot, seq, out),
        }
    }

    /// Advances monsters, respawns and regeneration to `now_ms`.
    pub fn tick(&mut self, now_ms: u64, out: &mut Outbox) {
        self.tick_monsters(now_ms, out);
        if now_ms >= self.next_regen_ms {
            self.regenerate(now_ms, out);
            self.next_regen_ms = now_ms + combat::REGEN_INTERVAL_MS;
        }
    }

    /// A loot transaction is durable: tell its player (LootGranted), if still here.
    pub fn loot_committed(&mut self, tx: &LootTx, out: &mut Outbox) {
        let Some(p) = self.player(tx.entity) else {
            return;
        };
        if p.name != tx.character {
            return;
        }
        let f = frame(Msg::Loot(pb::LootGranted {
            tx_id: tx.tx_id,
            gold: tx.gold,
            items: tx.items.clone(),
            total_gold: tx.total_gold,
        }));
        send(out, tx.entity, &f);
    }

    /// The current record of a character (for saving).
    pub fn character(&self, id: EntityId) -> Option<CharacterRecord> {
        self.player(id).map(Player::record)
    }

    /// Records of characters changed since the last call (write-behind):
    /// position, hp, xp, level, gold or inventory.
    pub fn take_dirty(&mut self, out: &mut Vec<CharacterRecord>) {
        for (slot, id) in self.dirty.drain(..) {
            if let Some(p) = self.players[slot as usize].as_mut() {
                if p.id == id && p.dirty {
                    p.dirty = false;
                    out.push(p.record());
                }
            }
        }
    }

    /// [`World::take_dirty`] without building records: `f` sees each
    /// changed player once (the MMO encodes its stored form straight from
    /// it).
    pub(crate) fn take_dirty_with(&mut self, mut f: impl FnMut(&Player)) {
        for (slot, id) in self.dirty.drain(..) {
            if let Some(p) = self.players[slot as usize].as_mut() {
                if p.id == id && p.dirty {
                    p.dirty = false;
                    f(p);
                }
            }
        }
    }

    /// Looks up a player on this world by character name.
    pub fn find_player(&self, name: &str) -> Option<EntityId> {
        self.names.get(name).copied()
    }

    /// One entity (player or monster) as it is now.
    pub fn entity(&self, id: EntityId) -> Option<EntityView> {
        self.ids.get(&id).map(|&h| self.view_of(h))
    }

    /// Every entity in the world, players and monsters (dead ones included:
    /// they stay in place, visible, until they respawn).
    pub fn entities(&self) -> impl Iterator<Item = EntityView> + '_ {
        let players = self
            .players
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .map(|(i, _)| Handle::Player(i as u32));
        let monsters = (0..self.monsters.len()).map(|i| Handle::Monster(i as u32));
        players.chain(monsters).map(|h| self.view_of(h))
    }

    fn view_of(&self, h: Handle) -> EntityView {
        match h {
            Handle::Player(s) => {
                let p = self.players[s as usize]
                    .as_ref()
                    .expect("handles point at live slots");
                EntityView {
                    id: p.id,
                    kind: pb::EntityKind::Player,
                    x: p.x,
                    y: p.y,
                    hp: p.hp,
                    max_hp: p.max_hp,
                    level: p.level,
                    dead: p.dead,
                    link_dead: p.link_dead,
                }
            }
            Handle::Monster(i) => {
                let m = &self.monsters[i as usize];
                EntityView {
                    id: m.id,
                    kind: pb::EntityKind::Monster,
                    x: m.x,
                    y: m.y,
                    hp: m.hp,
                    max_hp: m.kind.max_hp,
                    level: m.kind.level,
                    dead: m.dead,
                    link_dead: false,
                }
            }
        }
    }

    // --- shared helpers ---

    fn new_id(&mut self) -> EntityId {
        let id = (self.shard as u64) << SHARD_SHIFT | self.next_serial;
        self.next_serial += 1;
        id
    }

    fn new_tx_id(&mut self) -> u64 {
        let id = (self.shard as u64) << SHARD_SHIFT | self.next_tx;
        self.next_tx += 1;
        id
    }

    fn player_slot(&self, id: EntityId) -> Option<u32> {
        match self.ids.get(&id) {
            Some(&Handle::Player(slot)) => Some(slot),
            _ => None,
        }
    }

    fn player(&self, id: EntityId) -> Option<&Player> {
        self.players[self.player_slot(id)? as usize].as_ref()
    }

    fn player_mut(&mut self, slot: u32) -> &mut Player {
        self.players[slot as usize]
            .as_mut()
            .expect("slot of a live player")
    }

    /// Queues the player's record for the next `take_dirty`.
    fn mark_dirty(&mut self, slot: u32) {
        let p = self.player_mut(slot);
        if !p.dirty {
            p.dirty = true;
            let id = p.id;
            self.dirty.push((slot, id));
        }
    }

    /// Queues the player for regeneration.
    fn mark_wounded(&mut self, slot: u32) {
        let p = self.player_mut(slot);
        if !p.wounded {
            p.wounded = true;
            let id = p.id;
            self.wounded.push((slot, id));
        }
    }
}

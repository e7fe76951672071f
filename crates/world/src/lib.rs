//! The Tether world simulation, sans IO.
//!
//! API CONTRACT (bodies to be implemented; the server crate codes against these
//! signatures — keep them, extend if needed).
//!
//! A [`World`] is one shard: a map with its players and monsters. It is driven
//! by method calls carrying `now_ms`, and writes what it wants sent into an
//! [`Outbox`] the caller owns. Every event is encoded once into a frame
//! (`Bytes`) that all its recipients share.
#![forbid(unsafe_code)]

use bytes::Bytes;
use tether_proto::pb::{self, input::Cmd};

/// An entity id, unique on the server (the shard index is in the top 8 bits).
pub type EntityId = u64;

#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub width: f32,
    pub height: f32,
    pub view_radius: f32,
    /// Player walking speed, units per second.
    pub move_speed: f32,
    pub attack_range: f32,
    pub attack_cooldown_ms: u64,
    pub pvp: bool,
    /// Monsters on the map (they respawn at home after death).
    pub monsters: usize,
    pub monster_respawn_ms: u64,
    /// Interval of `tick` (monster AI, respawns, regeneration).
    pub tick_ms: u64,
    pub seed: u64,
}

impl WorldConfig {
    /// A map sized so that, with `players` spread uniformly, each sees about
    /// `density` other players inside its view radius (BENCH.md `--density`).
    pub fn for_population(_players: usize, _density: f32) -> Self {
        todo!()
    }
}

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

/// A value transaction (loot) to commit before the player is told.
#[derive(Debug, Clone, PartialEq)]
pub struct LootTx {
    pub tx_id: u64,
    pub entity: EntityId,
    pub character: String,
    pub gold: u64,
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

pub struct World {
    _todo: WorldConfig,
}

impl World {
    pub fn new(_config: WorldConfig, _shard: u8) -> Self {
        todo!()
    }
    pub fn config(&self) -> &WorldConfig {
        todo!()
    }
    pub fn info(&self) -> pb::WorldInfo {
        todo!()
    }
    pub fn player_count(&self) -> usize {
        todo!()
    }
    pub fn monster_count(&self) -> usize {
        todo!()
    }
    /// A character enters the world. The joiner gets a snapshot (SelfState,
    /// one EntityAppear per visible entity, SnapshotEnd); players who can see
    /// it get an EntityAppear.
    pub fn join(&mut self, _now_ms: u64, _character: CharacterRecord, _out: &mut Outbox) -> EntityId {
        todo!()
    }
    /// The character leaves; viewers get EntityDisappear. Returns its record.
    pub fn leave(&mut self, _now_ms: u64, _id: EntityId, _out: &mut Outbox) -> Option<CharacterRecord> {
        todo!()
    }
    /// A fresh snapshot for `id` (after a resume that could not replay).
    pub fn snapshot(&self, _id: EntityId, _out: &mut Outbox) {
        todo!()
    }
    /// Marks a player link-dead (zombie) or back; viewers get LinkState.
    pub fn set_link_dead(&mut self, _id: EntityId, _link_dead: bool, _out: &mut Outbox) {
        todo!()
    }
    /// Applies one input command of player `id` (input number `seq`).
    pub fn apply(&mut self, _now_ms: u64, _id: EntityId, _seq: u32, _cmd: Cmd, _out: &mut Outbox) {
        todo!()
    }
    /// Advances monsters, respawns and regeneration to `now_ms`.
    pub fn tick(&mut self, _now_ms: u64, _out: &mut Outbox) {
        todo!()
    }
    /// A loot transaction is durable: tell its player (LootGranted), if still here.
    pub fn loot_committed(&mut self, _tx: &LootTx, _out: &mut Outbox) {
        todo!()
    }
    /// The current record of a character (for saving).
    pub fn character(&self, _id: EntityId) -> Option<CharacterRecord> {
        todo!()
    }
    /// Records of characters changed since the last call (write-behind).
    pub fn take_dirty(&mut self, _out: &mut Vec<CharacterRecord>) {
        todo!()
    }
    /// Looks up a player on this world by character name.
    pub fn find_player(&self, _name: &str) -> Option<EntityId> {
        todo!()
    }
}

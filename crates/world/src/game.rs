//! The MMO on the engine: [`Mmo`] implements [`tether_engine::Game`] over a
//! [`World`].
//!
//! The world keeps its own typed [`Outbox`] (its tests read it); the
//! adapter lends it the engine's frame list for each call, so frames are
//! never copied, and turns the rest (world chat, whispers to other shards,
//! loot) into the engine's broadcasts, cross-shard messages and durable
//! transactions.
//!
//! Stored records: version 1 is the protobuf [`StoredCharacter`]; version 0
//! is the tab-separated text that stores from before records were generic
//! were migrated to (name, x, y, hp, level, xp, gold, inventory).

use bytes::Bytes;
use prost::Message;
use tether_engine::{
    BadInput, BadRecord, Ctx, Game, Outbox as EngineOutbox, PlayerId, Record, Route, Tx,
    Undeliverable,
};
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg};

use crate::frames::{command_error, frame};
use crate::player::Player;
use crate::{CharacterRecord, EntityId, LootTx, Outbox, World};

/// The record format [`Mmo`] writes.
pub const RECORD_VERSION: u32 = 1;

/// A character as the MMO stores it (record version 1).
#[derive(Clone, PartialEq, Message)]
pub struct StoredCharacter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, optional, tag = "2")]
    pub x: Option<f32>,
    #[prost(float, optional, tag = "3")]
    pub y: Option<f32>,
    #[prost(int32, tag = "4")]
    pub hp: i32,
    #[prost(uint32, tag = "5")]
    pub level: u32,
    #[prost(uint64, tag = "6")]
    pub xp: u64,
    #[prost(uint64, tag = "7")]
    pub gold: u64,
    #[prost(message, repeated, tag = "8")]
    pub inventory: Vec<pb::ItemStack>,
}

/// Encodes a character as a version-1 record of its account.
pub fn encode_record(c: &CharacterRecord) -> Record {
    encode_fields(&c.name, c.pos, c.hp, c.level, c.xp, c.gold, &c.inventory)
}

/// A player's record, encoded from the player itself: write-behind hands
/// every moving player's record over each tick, so nothing is copied on the
/// way but the account name.
fn encode_player(p: &Player) -> Record {
    let pos = Some((p.x, p.y));
    encode_fields(&p.name, pos, p.hp, p.level, p.xp, p.gold, &p.inventory)
}

/// [`StoredCharacter`]'s encoding, written field by field from borrowed
/// values (the same bytes `StoredCharacter::encode` writes).
fn encode_fields(
    name: &String,
    pos: Option<(f32, f32)>,
    hp: i32,
    level: u32,
    xp: u64,
    gold: u64,
    inventory: &[pb::ItemStack],
) -> Record {
    use prost::encoding::{float, int32, message, string, uint32, uint64};
    let mut buf = Vec::with_capacity(48 + name.len() + inventory.len() * 8);
    if !name.is_empty() {
        string::encode(1, name, &mut buf);
    }
    if let Some((x, y)) = pos {
        float::encode(2, &x, &mut buf);
        float::encode(3, &y, &mut buf);
    }
    if hp != 0 {
        int32::encode(4, &hp, &mut buf);
    }
    if level != 0 {
        uint32::encode(5, &level, &mut buf);
    }
    if xp != 0 {
        uint64::encode(6, &xp, &mut buf);
    }
    if gold != 0 {
        uint64::encode(7, &gold, &mut buf);
    }
    message::encode_repeated(8, inventory, &mut buf);
    Record {
        account: name.clone(),
        version: RECORD_VERSION,
        data: Bytes::from(buf),
        session: None,
    }
}

/// Reads a stored character, of any version this build knows.
pub fn decode_record(r: &Record) -> Result<CharacterRecord, BadRecord> {
    match r.version {
        RECORD_VERSION => {
            let s = StoredCharacter::decode(&r.data[..]).map_err(|e| BadRecord(e.to_string()))?;
            let pos = match (s.x, s.y) {
                (Some(x), Some(y)) => Some((x, y)),
                _ => None,
            };
            Ok(CharacterRecord {
                name: s.name,
                pos,
                hp: s.hp,
                level: s.level,
                xp: s.xp,
                gold: s.gold,
                inventory: s.inventory,
            })
        }
        0 => decode_legacy(&r.data),
        v => Err(BadRecord(format!(
            "record version {v} is newer than this build"
        ))),
    }
}

/// Version 0: `name TAB x TAB y TAB hp TAB level TAB xp TAB gold TAB
/// inventory`, x and y empty for a character never placed, the inventory as
/// `item:count` pairs separated by spaces.
fn decode_legacy(data: &[u8]) -> Result<CharacterRecord, BadRecord> {
    let bad = |what: &str| BadRecord(format!("version-0 record: bad {what}"));
    let text = std::str::from_utf8(data).map_err(|_| bad("text"))?;
    let f: Vec<&str> = text.split('\t').collect();
    if f.len() != 8 {
        return Err(bad("field count"));
    }
    let float = |s: &str| {
        s.parse::<f64>()
            .map(|v| v as f32)
            .map_err(|_| bad("position"))
    };
    let pos = match (f[1], f[2]) {
        ("", _) | (_, "") => None,
        (x, y) => Some((float(x)?, float(y)?)),
    };
    // Integers may come back from SQL in float form ("100.0").
    let int = |s: &str, what: &str| -> Result<i64, BadRecord> {
        s.parse::<i64>()
            .or_else(|_| s.parse::<f64>().map(|v| v as i64))
            .map_err(|_| bad(what))
    };
    let mut inventory = Vec::new();
    for pair in f[7].split(' ').filter(|p| !p.is_empty()) {
        let (id, count) = pair.split_once(':').ok_or_else(|| bad("inventory"))?;
        inventory.push(pb::ItemStack {
            item_id: id.parse().map_err(|_| bad("inventory"))?,
            count: count.parse().map_err(|_| bad("inventory"))?,
        });
    }
    Ok(CharacterRecord {
        name: f[0].to_string(),
        pos,
        hp: int(f[3], "hp")? as i32,
        level: int(f[4], "level")?.clamp(0, u32::MAX as i64) as u32,
        xp: int(f[5], "xp")?.max(0) as u64,
        gold: int(f[6], "gold")?.max(0) as u64,
        inventory,
    })
}

/// What MMO shards tell each other.
#[derive(Debug, Clone, PartialEq)]
pub enum MmoRemote {
    /// A whisper for a player of the receiving shard.
    Whisper {
        to_name: String,
        frame: Bytes,
        from: EntityId,
        from_seq: u32,
    },
    /// The whisper's target was not there after all.
    WhisperFailed { to: EntityId, seq: u32 },
}

/// A whisper on its way to another server of a cluster
/// ([`Game::encode_remote`]): the only message of the MMO that leaves its
/// server. Field numbers are stable across builds.
#[derive(Clone, PartialEq, prost::Message)]
struct WhisperWire {
    #[prost(string, tag = "1")]
    to_name: String,
    /// The counted `ChatMessage` frame, encoded once by the sender's world.
    #[prost(bytes = "bytes", tag = "2")]
    frame: Bytes,
    #[prost(uint64, tag = "3")]
    from: u64,
    #[prost(uint32, tag = "4")]
    from_seq: u32,
}

/// The MMO reference game: one [`World`] per shard.
pub struct Mmo {
    world: World,
    scratch: Outbox,
    welcome: Bytes,
}

impl Mmo {
    pub fn new(world: World) -> Self {
        let welcome = Bytes::from(world.info().encode_to_vec());
        Mmo {
            world,
            scratch: Outbox::default(),
            welcome,
        }
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// Runs `f` on the world with the engine's frame list lent to the
    /// world's outbox, then hands the engine the rest of what it produced.
    fn with_out<T>(
        &mut self,
        out: &mut EngineOutbox<MmoRemote>,
        f: impl FnOnce(&mut World, &mut Outbox) -> T,
    ) -> T {
        std::mem::swap(&mut self.scratch.frames, &mut out.frames);
        let result = f(&mut self.world, &mut self.scratch);
        std::mem::swap(&mut self.scratch.frames, &mut out.frames);
        out.broadcast.append(&mut self.scratch.world_chat);
        for w in self.scratch.remote_whispers.drain(..) {
            out.remote.push((
                Route::Account(w.to_name.clone()),
                MmoRemote::Whisper {
                    to_name: w.to_name,
                    frame: w.frame,
                    from: w.from,
                    from_seq: w.from_seq,
                },
            ));
        }
        for loot in self.scratch.loot.drain(..) {
            out.commits.push(loot_tx(&self.world, &loot));
        }
        result
    }
}

/// A loot drop as a durable transaction: the character's record with the
/// drop's totals, and the `LootGranted` the player is told once it commits.
fn loot_tx(world: &World, loot: &LootTx) -> Tx {
    let mut record = world
        .character(loot.entity)
        .unwrap_or_else(|| CharacterRecord::new(loot.character.clone()));
    record.gold = loot.total_gold;
    record.inventory = loot.inventory.clone();
    let entry = pb::LootGranted {
        tx_id: loot.tx_id,
        gold: loot.gold,
        items: loot.items.clone(),
        total_gold: loot.total_gold,
    };
    Tx {
        tx_id: loot.tx_id,
        record: encode_record(&record),
        entry: Bytes::from(entry.encode_to_vec()),
    }
}

impl Game for Mmo {
    const NAME: &'static str = "mmo";
    type Input = Cmd;
    type Remote = MmoRemote;

    fn decode_input(payload: &[u8]) -> Result<Option<Cmd>, BadInput> {
        let msg = pb::ClientMessage::decode(payload).map_err(|e| BadInput(e.to_string()))?;
        match msg.msg {
            Some(client_message::Msg::Input(input)) => Ok(input.cmd),
            _ => Err(BadInput("not an Input".into())),
        }
    }

    fn welcome_info(&self) -> Bytes {
        self.welcome.clone()
    }

    fn join(
        &mut self,
        ctx: &Ctx,
        account: &str,
        record: Option<Record>,
        out: &mut EngineOutbox<MmoRemote>,
    ) -> Result<PlayerId, BadRecord> {
        let is_new = record.is_none();
        let mut character = match record {
            Some(r) => decode_record(&r)?,
            None => CharacterRecord {
                level: 1,
                ..CharacterRecord::new(account)
            },
        };
        // The account is the character's name: one character per account.
        character.name = account.to_string();
        let id = self.with_out(out, |w, o| w.join(ctx.now_ms, character, o));
        if is_new {
            // A new character exists from its first login on, so loot
            // committed during its first session has a record to land in.
            if let Some(created) = self.world.character(id) {
                out.saves.push(encode_record(&created));
            }
        }
        Ok(id)
    }

    fn leave(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        out: &mut EngineOutbox<MmoRemote>,
    ) -> Option<Record> {
        self.with_out(out, |w, o| w.leave(ctx.now_ms, player, o))
            .map(|c| encode_record(&c))
    }

    fn link_changed(
        &mut self,
        _ctx: &Ctx,
        player: PlayerId,
        link_dead: bool,
        out: &mut EngineOutbox<MmoRemote>,
    ) {
        self.with_out(out, |w, o| w.set_link_dead(player, link_dead, o));
    }

    fn apply(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        seq: u32,
        input: Cmd,
        out: &mut EngineOutbox<MmoRemote>,
    ) {
        if matches!(input, Cmd::Attack(_)) && !ctx.can_commit {
            // A kill would create loot that cannot be made durable now;
            // movement and chat still work.
            let f = command_error(seq, pb::CommandErrorCode::CommandErrorStorageUnavailable);
            out.frames.push((player, f));
            return;
        }
        self.with_out(out, |w, o| w.apply(ctx.now_ms, player, seq, input, o));
    }

    fn tick(&mut self, ctx: &Ctx, out: &mut EngineOutbox<MmoRemote>) {
        self.with_out(out, |w, o| w.tick(ctx.now_ms, o));
    }

    fn snapshot(&mut self, _ctx: &Ctx, player: PlayerId, out: &mut EngineOutbox<MmoRemote>) {
        self.with_out(out, |w, o| w.snapshot(player, o));
    }

    fn take_dirty(&mut self, out: &mut Vec<Record>) {
        self.world.take_dirty_with(|p| out.push(encode_player(p)));
    }

    fn committed(&mut self, _ctx: &Ctx, tx: &Tx, out: &mut EngineOutbox<MmoRemote>) {
        let Some(player) = self.world.find_player(tx.account()) else {
            return; // left meanwhile: the loot is in the record all the same
        };
        let Ok(granted) = pb::LootGranted::decode(&tx.entry[..]) else {
            return; // every entry this build commits decodes
        };
        out.frames.push((player, frame(Msg::Loot(granted))));
    }

    fn on_remote(
        &mut self,
        _ctx: &Ctx,
        from_shard: u16,
        msg: MmoRemote,
        out: &mut EngineOutbox<MmoRemote>,
    ) {
        match msg {
            MmoRemote::Whisper {
                to_name,
                frame,
                from,
                from_seq,
            } => match self.world.find_player(&to_name) {
                Some(to) => out.frames.push((to, frame)),
                // From another server, which found the target here a moment
                // ago; it has left since. The sender is not told (rare).
                None if from_shard == tether_engine::FROM_OTHER_NODE => {}
                None => out.remote.push((
                    Route::Shard(from_shard),
                    MmoRemote::WhisperFailed {
                        to: from,
                        seq: from_seq,
                    },
                )),
            },
            MmoRemote::WhisperFailed { to, seq } => {
                let f = command_error(seq, pb::CommandErrorCode::CommandErrorNoSuchPlayer);
                out.frames.push((to, f));
            }
        }
    }

    fn encode_remote(msg: &MmoRemote) -> Option<Bytes> {
        match msg {
            MmoRemote::Whisper {
                to_name,
                frame,
                from,
                from_seq,
            } => Some(Bytes::from(
                WhisperWire {
                    to_name: to_name.clone(),
                    frame: frame.clone(),
                    from: *from,
                    from_seq: *from_seq,
                }
                .encode_to_vec(),
            )),
            // Answers go back by the other server's bounce, not as messages.
            MmoRemote::WhisperFailed { .. } => None,
        }
    }

    fn decode_remote(bytes: &[u8]) -> Option<MmoRemote> {
        let w = WhisperWire::decode(bytes).ok()?;
        if w.to_name.is_empty() || w.to_name.len() > crate::chat::MAX_NAME_BYTES {
            return None;
        }
        Some(MmoRemote::Whisper {
            to_name: w.to_name,
            frame: w.frame,
            from: w.from,
            from_seq: w.from_seq,
        })
    }

    fn undeliverable(
        &mut self,
        _ctx: &Ctx,
        msg: MmoRemote,
        why: Undeliverable,
        out: &mut EngineOutbox<MmoRemote>,
    ) {
        if let MmoRemote::Whisper { from, from_seq, .. } = msg {
            let code = match why {
                Undeliverable::NoSuchAccount => pb::CommandErrorCode::CommandErrorNoSuchPlayer,
                Undeliverable::Busy => pb::CommandErrorCode::CommandErrorRateLimited,
                Undeliverable::Unreachable => pb::CommandErrorCode::CommandErrorPlayerUnreachable,
            };
            out.frames.push((from, command_error(from_seq, code)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(text: &str) -> Record {
        Record {
            account: "ann".into(),
            version: 0,
            data: Bytes::from(text.as_bytes().to_vec()),
            session: None,
        }
    }

    #[test]
    fn a_character_round_trips_through_its_record() {
        let c = CharacterRecord {
            name: "ann".into(),
            pos: Some((12.5, 3.0)),
            hp: 40,
            level: 3,
            xp: 1234,
            gold: 99,
            inventory: vec![pb::ItemStack {
                item_id: 7,
                count: 2,
            }],
        };
        let r = encode_record(&c);
        assert_eq!((r.account.as_str(), r.version), ("ann", RECORD_VERSION));
        let derived = StoredCharacter {
            name: "ann".into(),
            x: Some(12.5),
            y: Some(3.0),
            hp: 40,
            level: 3,
            xp: 1234,
            gold: 99,
            inventory: c.inventory.clone(),
        };
        assert_eq!(
            &r.data[..],
            &derived.encode_to_vec()[..],
            "the same bytes as the message"
        );
        assert_eq!(decode_record(&r).unwrap(), c);
        let unplaced = CharacterRecord {
            pos: None,
            ..c.clone()
        };
        assert_eq!(decode_record(&encode_record(&unplaced)).unwrap(), unplaced);
    }

    #[test]
    fn migrated_rows_read_in_either_databases_number_form() {
        // SQLite writes whole REALs as "100.0", PostgreSQL as "100".
        for (x, y) in [("100.0", "50.5"), ("100", "50.5")] {
            let r = legacy(&format!("ann\t{x}\t{y}\t35\t4\t900\t120\t3:1 7:12"));
            let c = decode_record(&r).unwrap();
            assert_eq!(c.name, "ann");
            assert_eq!(c.pos, Some((100.0, 50.5)));
            assert_eq!((c.hp, c.level, c.xp, c.gold), (35, 4, 900, 120));
            assert_eq!(
                c.inventory,
                vec![
                    pb::ItemStack {
                        item_id: 3,
                        count: 1
                    },
                    pb::ItemStack {
                        item_id: 7,
                        count: 12
                    }
                ]
            );
        }
        let unplaced = decode_record(&legacy("bob\t\t\t0\t0\t0\t0\t")).unwrap();
        assert_eq!((unplaced.pos, unplaced.inventory.len()), (None, 0));
    }

    #[test]
    fn unreadable_records_are_refused_not_guessed() {
        assert!(decode_record(&legacy("too\tfew")).is_err());
        assert!(decode_record(&legacy("ann\tx\t1\t0\t0\t0\t0\t")).is_err());
        assert!(decode_record(&legacy("ann\t1\t1\t0\t0\t0\t0\t3-1")).is_err());
        let future = Record {
            version: RECORD_VERSION + 1,
            ..legacy("")
        };
        assert!(decode_record(&future).is_err());
        let garbage = Record {
            version: RECORD_VERSION,
            ..legacy("\u{ff}\u{ff}\u{ff}")
        };
        assert!(decode_record(&garbage).is_err());
    }
}

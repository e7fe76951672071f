//! Combat: basic attacks, damage, deaths, experience and loot for the killer,
//! a player's respawn, and regeneration out of combat.
//!
//! Who hears what:
//!
//! - `Damage{attacker, target, amount, target_hp}`: every player within view
//!   of the target (the target and the attacker included).
//! - `Death{id, killer}`: the same players.
//! - `StatChange`: the player alone, for its own xp / level changes and for
//!   regeneration (its hp losses already reached it as `Damage`).
//! - `CommandError{seq, code}`: the attacker alone, for an attack that had
//!   no effect, checked in this order: DEAD (the attacker), NO_SUCH_TARGET
//!   (unknown, itself, or already dead), PVP_DISABLED, OUT_OF_RANGE, COOLDOWN.
//!
//! Monsters heal in one go when they return home; that travels as a `Damage`
//! from the monster to itself with a negative `amount` and the new
//! `target_hp`, so clients need no extra message kind.
//!
//! Only a monster kill pays (experience, gold, items, to the player who
//! landed the last hit): PvP kills pay nothing, so two accounts cannot farm
//! each other. Loot goes into the killer's inventory at once and a [`LootTx`]
//! goes to the outbox; the player hears about it (`LootGranted`) only when the
//! caller confirms the transaction is durable ([`World::loot_committed`]).

use rand::Rng;
use tether_proto::pb::{self, server_message::Msg, CommandErrorCode as Code};

use crate::frames::{command_error, frame, send};
use crate::grid::{within, Handle};
use crate::items;
use crate::monsters::{MonsterKind, MonsterState};
use crate::player;
use crate::{EntityId, LootTx, Outbox, World};

/// A damage roll is the base damage +- base / this (+-25 %): enough spread
/// that fights do not feel scripted, little enough that a kill takes a
/// predictable number of hits.
pub const DAMAGE_SPREAD_DIVISOR: i32 = 4;

/// How often regeneration runs. Each run sends one `StatChange` per healing
/// player, so every 2 s keeps that traffic negligible.
pub const REGEN_INTERVAL_MS: u64 = 2_000;

/// Time since the last damage dealt or taken before a player regenerates:
/// no healing in the middle of a fight.
pub const REGEN_DELAY_MS: u64 = 5_000;

/// Share of max hp regained per regeneration run: a new character refills
/// from near zero in about 40 s.
pub const REGEN_PERCENT: i32 = 5;

impl World {
    /// A random damage amount around `base` (at least 1).
    pub(crate) fn roll_damage(&mut self, base: i32) -> i32 {
        let spread = base / DAMAGE_SPREAD_DIVISOR;
        (base + self.rng.random_range(-spread..=spread)).max(1)
    }

    /// An `Attack{target}` input of the player in `slot`.
    pub(crate) fn attack(
        &mut self,
        now_ms: u64,
        slot: u32,
        seq: u32,
        target: EntityId,
        out: &mut Outbox,
    ) {
        let target = match self.check_attack(now_ms, slot, target) {
            Ok(h) => h,
            Err(code) => {
                let id = self.player_mut(slot).id;
                send(out, id, &command_error(seq, code));
                return;
            }
        };
        let cooldown = self.config.attack_cooldown_ms;
        let p = self.player_mut(slot);
        p.next_attack_ms = now_ms.saturating_add(cooldown);
        let (attacker, level) = (p.id, p.level);
        let amount = self.roll_damage(player::base_damage(level));
        self.hit(now_ms, Handle::Player(slot), target, amount, out);
        if let Handle::Monster(i) = target {
            self.provoke(i, slot, attacker);
        }
    }

    /// Whether the player in `slot` may attack `target` now.
    fn check_attack(&self, now_ms: u64, slot: u32, target: EntityId) -> Result<Handle, Code> {
        let p = self.players[slot as usize].as_ref().expect("live slot");
        if p.dead {
            return Err(Code::CommandErrorDead);
        }
        let h = match self.ids.get(&target) {
            Some(&h) if target != p.id => h,
            _ => return Err(Code::CommandErrorNoSuchTarget),
        };
        let view = self.view_of(h);
        if view.dead {
            return Err(Code::CommandErrorNoSuchTarget);
        }
        if matches!(h, Handle::Player(_)) && !self.config.pvp {
            return Err(Code::CommandErrorPvpDisabled);
        }
        let range = self.config.attack_range;
        if !within(range * range, p.x, p.y, view.x, view.y) {
            return Err(Code::CommandErrorOutOfRange);
        }
        if now_ms < p.next_attack_ms {
            return Err(Code::CommandErrorCooldown);
        }
        Ok(h)
    }

    /// Applies `amount` of damage from `attacker` to `target` (both alive),
    /// tells the players around, and handles a death.
    pub(crate) fn hit(
        &mut self,
        now_ms: u64,
        attacker: Handle,
        target: Handle,
        amount: i32,
        out: &mut Outbox,
    ) {
        let (attacker_id, _, _) = self.position(attacker);
        if let Handle::Player(s) = attacker {
            self.player_mut(s).last_combat_ms = now_ms;
        }
        let (target_id, x, y, hp) = match target {
            Handle::Player(s) => {
                let p = self.player_mut(s);
                p.hp = (p.hp - amount).max(0);
                p.last_combat_ms = now_ms;
                p.dead = p.hp == 0;
                let r = (p.id, p.x, p.y, p.hp);
                self.mark_dirty(s);
                self.mark_wounded(s);
                r
            }
            Handle::Monster(i) => {
                let m = &mut self.monsters[i as usize];
                m.hp = (m.hp - amount).max(0);
                (m.id, m.x, m.y, m.hp)
            }
        };
        let f = frame(Msg::Damage(pb::Damage {
            attacker: attacker_id,
            target: target_id,
            amount,
            target_hp: hp,
        }));
        self.broadcast(x, y, None, &f, out);
        if hp > 0 {
            return;
        }
        let f = frame(Msg::Death(pb::Death {
            id: target_id,
            killer: attacker_id,
        }));
        self.broadcast(x, y, None, &f, out);
        if let Handle::Monster(i) = target {
            let respawn_ms = self.config.monster_respawn_ms;
            let m = &mut self.monsters[i as usize];
            m.dead = true;
            m.state = MonsterState::Idle;
            m.respawn_at_ms = now_ms.saturating_add(respawn_ms);
            let kind = m.kind;
            if let Handle::Player(s) = attacker {
                self.reward(s, kind, out);
            }
        }
    }

    /// Experience and loot for the player in `slot`, who killed a `kind`.
    fn reward(&mut self, slot: u32, kind: &'static MonsterKind, out: &mut Outbox) {
        let gold = self.rng.random_range(kind.gold.0..=kind.gold.1);
        // Roll the drops before borrowing the player.
        let mut drops = [0u32; crate::monsters::MAX_DROPS];
        for (i, &(item, permille)) in kind.drops.iter().enumerate() {
            if self.rng.random_range(0..1000) < permille {
                drops[i] = item;
            }
        }
        let tx_id = self.new_tx_id();
        let p = self.player_mut(slot);
        p.gain_xp(kind.xp);
        let stats = p.stat_change_frame();
        p.gold = p.gold.saturating_add(gold);
        let mut granted = Vec::new();
        for &item in drops.iter().filter(|&&i| i != 0) {
            if items::add_item(&mut p.inventory, item, 1) == 1 {
                granted.push(pb::ItemStack {
                    item_id: item,
                    count: 1,
                });
            }
        }
        let tx = LootTx {
            tx_id,
            entity: p.id,
            character: p.name.clone(),
            gold,
            items: granted,
            total_gold: p.gold,
            inventory: p.inventory.clone(),
        };
        let id = p.id;
        send(out, id, &stats);
        out.loot.push(tx);
        self.mark_dirty(slot);
    }

    /// A `Respawn` input: a dead player comes back at a spawn point with full
    /// hp. Players around the corpse see it disappear, players around the
    /// spawn point see it appear; the player's own view empties, then it gets
    /// its `SelfState` and the new view.
    pub(crate) fn respawn_player(&mut self, now_ms: u64, slot: u32, seq: u32, out: &mut Outbox) {
        let p = self.player_mut(slot);
        if !p.dead {
            let id = p.id;
            send(out, id, &command_error(seq, Code::CommandErrorNotDead));
            return;
        }
        let h = Handle::Player(slot);
        self.vanish(h, true, out);
        let (x, y) = self.spawn_point();
        let cap = self.move_budget_cap();
        let p = self.player_mut(slot);
        p.x = x;
        p.y = y;
        p.hp = p.max_hp;
        p.dead = false;
        p.move_budget = cap;
        p.budget_ms = now_ms;
        let (id, f) = (p.id, p.self_state_frame());
        send(out, id, &f);
        self.materialize(h, out);
        self.mark_dirty(slot);
    }

    /// One regeneration run over the wounded players.
    pub(crate) fn regenerate(&mut self, now_ms: u64, out: &mut Outbox) {
        let mut i = 0;
        while i < self.wounded.len() {
            let (slot, id) = self.wounded[i];
            let keep = match self.players[slot as usize].as_mut() {
                Some(p) if p.id == id => {
                    if !p.dead
                        && p.hp < p.max_hp
                        && now_ms.saturating_sub(p.last_combat_ms) >= REGEN_DELAY_MS
                    {
                        let gain = (p.max_hp * REGEN_PERCENT / 100).max(1);
                        p.hp = (p.hp + gain).min(p.max_hp);
                        send(out, id, &p.stat_change_frame());
                        if !p.dirty {
                            p.dirty = true;
                            self.dirty.push((slot, id));
                        }
                    }
                    // The dead stay listed: they come back at full hp, and
                    // the next run drops them then.
                    p.wounded = p.hp < p.max_hp;
                    p.wounded
                }
                _ => false,
            };
            if keep {
                i += 1;
            } else {
                self.wounded.swap_remove(i);
            }
        }
    }
}

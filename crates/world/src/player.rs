//! Player characters: their in-world state, the progression curve (levels,
//! experience, hit points) and the conversion to and from the stored record.

use bytes::Bytes;
use tether_proto::pb::{self, server_message::Msg};

use crate::frames::frame;
use crate::items;
use crate::{CharacterRecord, EntityId};

/// Highest level. Bounds every formula below (hp, damage, xp) far from any
/// integer overflow.
pub const MAX_LEVEL: u32 = 60;

/// Hit points at level 1.
pub const BASE_HP: i32 = 100;

/// Hit points gained per level: a level-10 character (280 hp) survives about
/// three times as long as a new one.
pub const HP_PER_LEVEL: i32 = 20;

/// Basic attack damage at level 0; plus [`DAMAGE_PER_LEVEL`] per level. A new
/// character (12 damage) kills a rat in two hits and an ogre, the toughest
/// kind, in about ten: every monster is a fair solo fight from the first
/// login, which is also what the load test's bots rely on.
pub const BASE_DAMAGE: i32 = 10;

/// Basic attack damage gained per level.
pub const DAMAGE_PER_LEVEL: i32 = 2;

/// Experience scale: reaching level L+1 takes `XP_SCALE * L^2` total
/// experience, so level 2 is ten rats, level 10 about fifty ogres.
pub const XP_SCALE: u64 = 100;

/// Maximum hit points at `level`.
pub fn max_hp(level: u32) -> i32 {
    BASE_HP + HP_PER_LEVEL * (level.clamp(1, MAX_LEVEL) as i32 - 1)
}

/// Total experience needed to reach the level after `level`.
pub fn xp_next(level: u32) -> u64 {
    let l = level.clamp(1, MAX_LEVEL) as u64;
    XP_SCALE * l * l
}

/// Average damage of a basic attack at `level` (the roll spreads it +-25 %).
pub fn base_damage(level: u32) -> i32 {
    BASE_DAMAGE + DAMAGE_PER_LEVEL * level.clamp(1, MAX_LEVEL) as i32
}

/// A player character in the world.
#[derive(Debug)]
pub(crate) struct Player {
    pub id: EntityId,
    pub name: String,
    pub x: f32,
    pub y: f32,
    pub hp: i32,
    pub max_hp: i32,
    pub level: u32,
    pub xp: u64,
    pub gold: u64,
    pub inventory: Vec<pb::ItemStack>,
    pub dead: bool,
    pub link_dead: bool,
    /// Walking distance the player may still cover (see `movement.rs`).
    pub move_budget: f32,
    /// When the move budget was last topped up.
    pub budget_ms: u64,
    /// Earliest time of the next attack.
    pub next_attack_ms: u64,
    /// Last time this player dealt or took damage (regeneration waits).
    pub last_combat_ms: u64,
    /// Changed since the last `take_dirty`: listed in `World::dirty`.
    pub dirty: bool,
    /// Below full hp: listed in `World::wounded` for regeneration.
    pub wounded: bool,
}

impl Player {
    /// A player from its stored record, normalised: level 0 means a new
    /// character (level 1), hp <= 0 means full hp, the inventory is brought
    /// within bounds. The caller places it.
    pub fn from_record(id: EntityId, rec: CharacterRecord, now_ms: u64, budget: f32) -> Self {
        let level = rec.level.clamp(1, MAX_LEVEL);
        let max_hp = max_hp(level);
        let hp = if rec.hp <= 0 {
            max_hp
        } else {
            rec.hp.min(max_hp)
        };
        Player {
            id,
            name: rec.name,
            x: 0.0,
            y: 0.0,
            hp,
            max_hp,
            level,
            xp: rec.xp,
            gold: rec.gold,
            inventory: items::normalized(&rec.inventory),
            dead: false,
            link_dead: false,
            move_budget: budget,
            budget_ms: now_ms,
            next_attack_ms: 0,
            last_combat_ms: 0,
            dirty: false,
            wounded: false,
        }
    }

    pub fn record(&self) -> CharacterRecord {
        CharacterRecord {
            name: self.name.clone(),
            pos: Some((self.x, self.y)),
            hp: self.hp,
            level: self.level,
            xp: self.xp,
            gold: self.gold,
            inventory: self.inventory.clone(),
        }
    }

    pub fn self_state_frame(&self) -> Bytes {
        frame(Msg::SelfState(pb::SelfState {
            entity_id: self.id,
            name: self.name.clone(),
            x: self.x,
            y: self.y,
            hp: self.hp,
            max_hp: self.max_hp,
            level: self.level,
            xp: self.xp,
            xp_next: xp_next(self.level),
            gold: self.gold,
            inventory: self.inventory.clone(),
            dead: self.dead,
        }))
    }

    pub fn stat_change_frame(&self) -> Bytes {
        frame(Msg::Stats(pb::StatChange {
            hp: self.hp,
            max_hp: self.max_hp,
            level: self.level,
            xp: self.xp,
            xp_next: xp_next(self.level),
        }))
    }

    /// Adds experience and applies any level-ups (each refills hp).
    /// Returns whether the level changed.
    pub fn gain_xp(&mut self, xp: u64) -> bool {
        self.xp = self.xp.saturating_add(xp);
        let before = self.level;
        while self.level < MAX_LEVEL && self.xp >= xp_next(self.level) {
            self.level += 1;
        }
        if self.level != before {
            self.max_hp = max_hp(self.level);
            self.hp = self.max_hp;
        }
        self.level != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_is_monotonic_and_capped() {
        for l in 1..MAX_LEVEL {
            assert!(xp_next(l + 1) > xp_next(l));
            assert!(max_hp(l + 1) > max_hp(l));
        }
        assert_eq!(max_hp(0), max_hp(1));
        assert_eq!(max_hp(u32::MAX), max_hp(MAX_LEVEL));
    }

    #[test]
    fn xp_levels_up_and_heals() {
        let rec = CharacterRecord {
            name: "a".into(),
            pos: None,
            hp: 5,
            level: 1,
            xp: 0,
            gold: 0,
            inventory: vec![],
        };
        let mut p = Player::from_record(1, rec, 0, 0.0);
        assert_eq!(p.hp, 5);
        assert!(!p.gain_xp(99));
        assert!(p.gain_xp(1));
        assert_eq!((p.level, p.hp, p.max_hp), (2, max_hp(2), max_hp(2)));
        p.gain_xp(u64::MAX);
        assert_eq!(p.level, MAX_LEVEL);
    }
}

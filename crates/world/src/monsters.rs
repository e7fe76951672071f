//! Monsters: the kinds, where they spawn, and their AI.
//!
//! Every monster has a home, spread uniformly over the map, and a small state
//! machine run by [`crate::World::tick`]:
//!
//! ```text
//!            player (alive, connected) within AGGRO_RADIUS, or attacked
//!   Idle ------------------------------------------------------------> Chase
//!    ^  wander a short step every WANDER_MIN_MS..WANDER_MAX_MS          |  step toward the target
//!    |                                                                  |  (CHASE_STEP_MS apart),
//!    |   at home: heal to full                                          |  hit it when in range
//!    +------------------------------ Return <---------------------------+
//!                                   walk home   target dead / gone / out of sight,
//!                                               or the next step would pass LEASH_RADIUS
//!   any state --(hp 0)--> dead corpse, visible --(monster_respawn_ms)--> Idle at home, full hp
//! ```
//!
//! Traffic: every monster step is one frame to each player who sees it, so
//! monsters act rarely. At the headline load (~3,750 monsters, ~8 viewers
//! each) wandering costs about 4,000 frames/s against ~400,000 for players;
//! a chasing monster sends at most 1000 / [`CHASE_STEP_MS`] moves a second.
//! Link-dead players (zombie sessions) are never picked as new targets: an
//! idle crowd of disconnected characters does not feed the monsters.

use std::f32::consts::TAU;

use rand::Rng;
use tether_proto::pb::{self, server_message::Msg};

use crate::frames::frame;
use crate::grid::{within, Handle};
use crate::items::ids;
use crate::{EntityId, Outbox, World};

/// A player this close to an idle monster gets chased. Well inside the view
/// radius: players see a monster long before it notices them.
pub const AGGRO_RADIUS: f32 = 10.0;

/// A chasing monster gives up rather than step farther than this from home,
/// so players can always shake off a pursuer by walking away.
pub const LEASH_RADIUS: f32 = 30.0;

/// Reach of a monster's attack (melee).
pub const MONSTER_ATTACK_RANGE: f32 = 2.5;

/// A chasing monster stops this close to its target: inside its attack range,
/// so a target that stands still gets hit on the next step.
pub const MONSTER_STOP_DISTANCE: f32 = 2.0;

/// Time between two steps of a chasing or returning monster: two moves a
/// second, each one frame per viewer.
pub const CHASE_STEP_MS: u64 = 500;

/// How often an idle monster looks for a player to chase: a player walking
/// into aggro range is noticed within half a second.
pub const IDLE_THINK_MS: u64 = 500;

/// Idle monsters take a short step every this many ms at the least...
pub const WANDER_MIN_MS: u64 = 4_000;

/// ...and at the most: about one wander step per monster every 7 s.
pub const WANDER_MAX_MS: u64 = 10_000;

/// Farthest a wander step goes from home.
pub const WANDER_RADIUS: f32 = 6.0;

/// Walking speed of a monster going home, units per second: faster than any
/// chase, so a leashed monster is quickly back in place.
pub const RETURN_SPEED: f32 = 12.0;

/// Most entries in a drop table.
pub const MAX_DROPS: usize = 4;

/// A kind of monster: its stats, rewards and drop table.
///
/// Balance: a new character (100 hp, ~12 damage a second) beats any single
/// monster; an ogre (120 hp, 3 damage a second) takes ten hits and a third of
/// the player's hp. Several monsters at once, or fighting on at low hp, kill.
#[derive(Debug)]
pub struct MonsterKind {
    pub name: &'static str,
    pub level: u32,
    pub max_hp: i32,
    /// Average damage of one hit (rolled +-25 %).
    pub damage: i32,
    pub attack_cooldown_ms: u64,
    /// Chase speed, units per second. Every kind is slower than a walking
    /// player, so running away works.
    pub speed: f32,
    /// Experience for the killer.
    pub xp: u64,
    /// Gold for the killer, inclusive range.
    pub gold: (u64, u64),
    /// (item id, chance in 1000): each entry rolls once per kill.
    pub drops: &'static [(u32, u32)],
    /// Relative share of spawns.
    pub spawn_weight: u32,
}

/// The monster table.
pub static MONSTER_KINDS: &[MonsterKind] = &[
    MonsterKind {
        name: "Rat",
        level: 1,
        max_hp: 24,
        damage: 2,
        attack_cooldown_ms: 1_500,
        speed: 4.0,
        xp: 10,
        gold: (1, 3),
        drops: &[(ids::RAT_TAIL, 500), (ids::HEALTH_POTION, 50)],
        spawn_weight: 40,
    },
    MonsterKind {
        name: "Wolf",
        level: 3,
        max_hp: 45,
        damage: 3,
        attack_cooldown_ms: 1_500,
        speed: 5.0,
        xp: 30,
        gold: (2, 6),
        drops: &[
            (ids::WOLF_PELT, 400),
            (ids::HEALTH_POTION, 100),
            (ids::LEATHER_BOOTS, 30),
        ],
        spawn_weight: 30,
    },
    MonsterKind {
        name: "Bandit",
        level: 5,
        max_hp: 70,
        damage: 4,
        attack_cooldown_ms: 1_500,
        speed: 5.0,
        xp: 60,
        gold: (5, 15),
        drops: &[
            (ids::BANDIT_MASK, 300),
            (ids::HEALTH_POTION, 150),
            (ids::IRON_SWORD, 50),
        ],
        spawn_weight: 20,
    },
    MonsterKind {
        name: "Ogre",
        level: 8,
        max_hp: 120,
        damage: 6,
        attack_cooldown_ms: 2_000,
        speed: 3.5,
        xp: 150,
        gold: (15, 40),
        drops: &[(ids::OGRE_TOOTH, 500), (ids::GOLD_RING, 50)],
        spawn_weight: 10,
    },
];

/// What a monster is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MonsterState {
    Idle,
    /// Chasing the player `target`, last seen in player slot `slot` (the slot
    /// is checked against the id: the player may have left).
    Chase {
        target: EntityId,
        slot: u32,
    },
    Return,
}

/// One monster.
#[derive(Debug)]
pub(crate) struct Monster {
    pub id: EntityId,
    pub kind: &'static MonsterKind,
    pub home_x: f32,
    pub home_y: f32,
    pub x: f32,
    pub y: f32,
    pub hp: i32,
    /// A corpse: stays in place, visible, until `respawn_at_ms`.
    pub dead: bool,
    pub state: MonsterState,
    pub respawn_at_ms: u64,
    pub next_think_ms: u64,
    pub next_wander_ms: u64,
    pub next_attack_ms: u64,
}

impl World {
    /// Places `config.monsters` monsters at uniformly random homes.
    pub(crate) fn spawn_monsters(&mut self) {
        let total_weight: u32 = MONSTER_KINDS.iter().map(|k| k.spawn_weight).sum();
        for i in 0..self.config.monsters {
            let mut pick = self.rng.random_range(0..total_weight);
            let kind = MONSTER_KINDS
                .iter()
                .find(|k| {
                    if pick < k.spawn_weight {
                        true
                    } else {
                        pick -= k.spawn_weight;
                        false
                    }
                })
                .expect("pick < total weight");
            let (x, y) = self.spawn_point();
            let id = self.new_id();
            // Stagger the timers so monsters do not all act on the same tick.
            let next_think_ms = self.rng.random_range(0..IDLE_THINK_MS);
            let next_wander_ms = self.rng.random_range(0..WANDER_MAX_MS);
            self.monsters.push(Monster {
                id,
                kind,
                home_x: x,
                home_y: y,
                x,
                y,
                hp: kind.max_hp,
                dead: false,
                state: MonsterState::Idle,
                respawn_at_ms: 0,
                next_think_ms,
                next_wander_ms,
                next_attack_ms: 0,
            });
            let h = Handle::Monster(i as u32);
            self.ids.insert(id, h);
            self.grid.insert(h, id, x, y);
        }
    }

    /// Runs every monster whose timer is due.
    pub(crate) fn tick_monsters(&mut self, now_ms: u64, out: &mut Outbox) {
        for i in 0..self.monsters.len() {
            let m = &self.monsters[i];
            if m.dead {
                if now_ms >= m.respawn_at_ms {
                    self.respawn_monster(i as u32, now_ms, out);
                }
            } else if now_ms >= m.next_think_ms {
                match m.state {
                    MonsterState::Idle => self.idle(i as u32, now_ms, out),
                    MonsterState::Chase { target, slot } => {
                        self.chase(i as u32, target, slot, now_ms, out)
                    }
                    MonsterState::Return => self.step_home(i as u32, now_ms, out),
                }
            }
        }
    }

    /// A player hit monster `i`: an idle monster turns on it. One already
    /// chasing keeps its target; one going home ignores it (it is leashed).
    pub(crate) fn provoke(&mut self, i: u32, slot: u32, attacker: EntityId) {
        let m = &mut self.monsters[i as usize];
        if !m.dead && m.state == MonsterState::Idle {
            m.state = MonsterState::Chase {
                target: attacker,
                slot,
            };
        }
    }

    fn idle(&mut self, i: u32, now_ms: u64, out: &mut Outbox) {
        let m = &self.monsters[i as usize];
        if let Some((slot, target)) = self.find_prey(m.x, m.y) {
            self.monsters[i as usize].state = MonsterState::Chase { target, slot };
            self.chase(i, target, slot, now_ms, out);
            return;
        }
        if now_ms >= m.next_wander_ms {
            let (hx, hy) = (m.home_x, m.home_y);
            let angle = self.rng.random_range(0.0..TAU);
            let dist = self.rng.random_range(0.0..WANDER_RADIUS);
            let (x, y) = self.clamp_to_map(hx + dist * angle.cos(), hy + dist * angle.sin());
            self.relocate(Handle::Monster(i), x, y, out);
            self.monsters[i as usize].next_wander_ms = now_ms + self.wander_delay();
        }
        self.monsters[i as usize].next_think_ms = now_ms + IDLE_THINK_MS;
    }

    /// The nearest live, connected player within aggro range of `(x, y)`.
    fn find_prey(&self, x: f32, y: f32) -> Option<(u32, EntityId)> {
        let r2 = AGGRO_RADIUS * AGGRO_RADIUS;
        let mut best: Option<(f32, u32, EntityId)> = None;
        for e in self.grid.entries(self.grid.around(x, y, AGGRO_RADIUS)) {
            let Handle::Player(slot) = e.handle else {
                continue;
            };
            let (dx, dy) = (e.x - x, e.y - y);
            let d2 = dx * dx + dy * dy;
            if d2 > r2 || best.is_some_and(|(b, _, _)| b <= d2) {
                continue;
            }
            let Some(p) = self.players[slot as usize].as_ref() else {
                continue;
            };
            if !p.dead && !p.link_dead {
                best = Some((d2, slot, e.id));
            }
        }
        best.map(|(_, slot, id)| (slot, id))
    }

    fn chase(&mut self, i: u32, target: EntityId, slot: u32, now_ms: u64, out: &mut Outbox) {
        let prey = match self.players.get(slot as usize).and_then(Option::as_ref) {
            Some(p) if p.id == target && !p.dead => (p.x, p.y),
            _ => return self.start_return(i, now_ms),
        };
        let m = &self.monsters[i as usize];
        let kind = m.kind;
        let (home_x, home_y) = (m.home_x, m.home_y);
        let (mut x, mut y) = (m.x, m.y);
        let (dx, dy) = (prey.0 - x, prey.1 - y);
        let mut dist = (dx * dx + dy * dy).sqrt();
        if dist > self.config.view_radius {
            return self.start_return(i, now_ms);
        }
        if dist > MONSTER_ATTACK_RANGE {
            let step =
                (kind.speed * CHASE_STEP_MS as f32 / 1000.0).min(dist - MONSTER_STOP_DISTANCE);
            (x, y) = self.clamp_to_map(x + dx / dist * step, y + dy / dist * step);
            if !within(LEASH_RADIUS * LEASH_RADIUS, x, y, home_x, home_y) {
                return self.start_return(i, now_ms);
            }
            self.relocate(Handle::Monster(i), x, y, out);
            let (dx, dy) = (prey.0 - x, prey.1 - y);
            dist = (dx * dx + dy * dy).sqrt();
        }
        let m = &mut self.monsters[i as usize];
        m.next_think_ms = now_ms + CHASE_STEP_MS;
        if dist <= MONSTER_ATTACK_RANGE && now_ms >= m.next_attack_ms {
            m.next_attack_ms = now_ms + kind.attack_cooldown_ms;
            let amount = self.roll_damage(kind.damage);
            self.hit(
                now_ms,
                Handle::Monster(i),
                Handle::Player(slot),
                amount,
                out,
            );
        }
    }

    /// Forget the target and head home.
    fn start_return(&mut self, i: u32, now_ms: u64) {
        let m = &mut self.monsters[i as usize];
        m.state = MonsterState::Return;
        m.next_think_ms = now_ms + CHASE_STEP_MS;
    }

    fn step_home(&mut self, i: u32, now_ms: u64, out: &mut Outbox) {
        let m = &self.monsters[i as usize];
        let (hx, hy) = (m.home_x, m.home_y);
        let (dx, dy) = (hx - m.x, hy - m.y);
        let dist = (dx * dx + dy * dy).sqrt();
        let step = RETURN_SPEED * CHASE_STEP_MS as f32 / 1000.0;
        if dist > step {
            let (x, y) = (m.x + dx / dist * step, m.y + dy / dist * step);
            self.relocate(Handle::Monster(i), x, y, out);
            self.monsters[i as usize].next_think_ms = now_ms + CHASE_STEP_MS;
            return;
        }
        self.relocate(Handle::Monster(i), hx, hy, out);
        let wander = self.wander_delay();
        let m = &mut self.monsters[i as usize];
        m.state = MonsterState::Idle;
        m.next_think_ms = now_ms + IDLE_THINK_MS;
        m.next_wander_ms = now_ms + wander;
        let healed = m.kind.max_hp - m.hp;
        if healed > 0 {
            m.hp = m.kind.max_hp;
            let f = frame(Msg::Damage(pb::Damage {
                attacker: m.id,
                target: m.id,
                amount: -healed,
                target_hp: m.hp,
            }));
            self.broadcast(hx, hy, None, &f, out);
        }
    }

    /// A corpse comes back at home, healed: its viewers see it disappear, the
    /// players around home see it appear (alive).
    fn respawn_monster(&mut self, i: u32, now_ms: u64, out: &mut Outbox) {
        let h = Handle::Monster(i);
        self.vanish(h, false, out);
        let wander = self.wander_delay();
        let m = &mut self.monsters[i as usize];
        m.x = m.home_x;
        m.y = m.home_y;
        m.hp = m.kind.max_hp;
        m.dead = false;
        m.state = MonsterState::Idle;
        m.next_think_ms = now_ms + IDLE_THINK_MS;
        m.next_wander_ms = now_ms + wander;
        self.materialize(h, out);
    }

    fn wander_delay(&mut self) -> u64 {
        self.rng.random_range(WANDER_MIN_MS..=WANDER_MAX_MS)
    }

    /// The nearest point on the map (just inside the open upper edges).
    pub(crate) fn clamp_to_map(&self, x: f32, y: f32) -> (f32, f32) {
        let edge = |size: f32| size - (size * 1e-6 + 1e-3);
        (
            x.clamp(0.0, edge(self.config.width)),
            y.clamp(0.0, edge(self.config.height)),
        )
    }
}

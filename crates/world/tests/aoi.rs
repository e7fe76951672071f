//! Area of interest: after every call, each player's view (rebuilt from the
//! frames it was sent) equals the brute-force set of entities within its view
//! radius.

mod common;

use common::Sim;
use proptest::prelude::*;
use tether_proto::pb::server_message::Msg;
use tether_world::{CharacterRecord, WorldConfig};

#[derive(Debug, Clone)]
enum Op {
    /// Join at a fraction of the map, or at a random spawn point.
    Join(Option<(f32, f32)>),
    Leave(usize),
    /// Wait `dt` ms, then step by (dx, dy) from the current position (some
    /// steps are too long or off the map and get refused).
    Move(usize, f32, f32, u64),
    Tick(u64),
    /// Attack the n-th entity of the world (players or monsters).
    Attack(usize, usize),
    Respawn(usize),
    LinkDead(usize, bool),
    Snapshot(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => prop::option::weighted(0.7, (0.0f32..1.0, 0.0f32..1.0)).prop_map(Op::Join),
        1 => any::<usize>().prop_map(Op::Leave),
        10 => (any::<usize>(), -9.0f32..9.0, -9.0f32..9.0, 0u64..600)
            .prop_map(|(i, dx, dy, dt)| Op::Move(i, dx, dy, dt)),
        3 => (0u64..1_500).prop_map(Op::Tick),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Op::Attack(i, t)),
        1 => any::<usize>().prop_map(Op::Respawn),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, b)| Op::LinkDead(i, b)),
        1 => any::<usize>().prop_map(Op::Snapshot),
    ]
}

/// A crowded little map: many entities per view, lots of edge crossings,
/// fights that end in deaths and respawns.
fn crowded(seed: u64, pvp: bool) -> WorldConfig {
    WorldConfig {
        width: 160.0,
        height: 160.0,
        view_radius: 30.0,
        attack_range: 30.0,
        attack_cooldown_ms: 0,
        monsters: 16,
        monster_respawn_ms: 1_500,
        pvp,
        seed,
        ..WorldConfig::default()
    }
}

fn run(seed: u64, pvp: bool, ops: Vec<Op>) {
    let mut sim = Sim::new(crowded(seed, pvp));
    let (w, h) = (sim.world.config().width, sim.world.config().height);
    let mut players: Vec<u64> = Vec::new();
    let mut names = 0;
    for op in ops {
        let pick = |i: usize| players.get(i % players.len().max(1)).copied();
        match op {
            Op::Join(pos) => {
                names += 1;
                let id = sim.join(&format!("p{names}"), pos.map(|(fx, fy)| (fx * w, fy * h)));
                players.push(id);
            }
            Op::Leave(i) => {
                if let Some(id) = pick(i) {
                    players.retain(|&p| p != id);
                    assert!(sim.leave(id).is_some());
                }
            }
            Op::Move(i, dx, dy, dt) => {
                if let Some(id) = pick(i) {
                    sim.now += dt;
                    let e = sim.entity(id);
                    sim.move_to(id, e.x + dx, e.y + dy);
                }
            }
            Op::Tick(dt) => sim.tick(dt),
            Op::Attack(i, t) => {
                if let Some(id) = pick(i) {
                    let all: Vec<_> = sim.world.entities().map(|e| e.id).collect();
                    sim.attack(id, all[t % all.len()]);
                }
            }
            Op::Respawn(i) => {
                if let Some(id) = pick(i) {
                    sim.respawn(id);
                }
            }
            Op::LinkDead(i, b) => {
                if let Some(id) = pick(i) {
                    sim.set_link_dead(id, b);
                }
            }
            Op::Snapshot(i) => {
                if let Some(id) = pick(i) {
                    sim.snapshot(id);
                }
            }
        }
        sim.check_views();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn views_match_brute_force(seed in any::<u64>(), pvp in any::<bool>(), ops in prop::collection::vec(op(), 1..150)) {
        run(seed, pvp, ops);
    }
}

/// A long deterministic run on top of the random ones: a populated map where
/// monsters wander, chase, fight, die and respawn for minutes of game time.
#[test]
fn long_busy_session_keeps_views_exact() {
    let mut sim = Sim::new(crowded(7, true));
    let mut players = Vec::new();
    for i in 0..30 {
        // Strong enough to kill monsters in a few hits, weak enough for the
        // ogres and for each other (PvP is on) to kill them sometimes.
        let level = if i % 2 == 0 { 12 } else { 1 };
        players.push(sim.join_record(CharacterRecord {
            level,
            ..CharacterRecord::new(format!("p{i}"))
        }));
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let monsters: Vec<_> = sim.monsters().iter().map(|m| m.id).collect();
    let (mut monster_deaths, mut player_deaths, mut monster_hits, mut monster_moves, mut heals) =
        (0, 0, 0, 0, 0);
    for step in 0..3_000u64 {
        let id = players[(next() % players.len() as u64) as usize];
        let e = sim.entity(id);
        match next() % 10 {
            0 => {
                let all: Vec<_> = sim.world.entities().map(|e| e.id).collect();
                sim.attack(id, all[(next() % all.len() as u64) as usize]);
            }
            1 if e.dead => {
                sim.respawn(id);
            }
            _ => {
                let dx = (next() % 200) as f32 / 100.0 - 1.0;
                let dy = (next() % 200) as f32 / 100.0 - 1.0;
                sim.move_to(id, e.x + dx, e.y + dy);
            }
        }
        if step % 5 == 0 {
            sim.tick(100);
        }
        sim.check_views();
        for c in sim.clients.values_mut() {
            for m in c.inbox.drain(..) {
                match m {
                    Msg::Death(d) if monsters.contains(&d.id) => monster_deaths += 1,
                    Msg::Death(_) => player_deaths += 1,
                    Msg::Damage(d) if d.amount < 0 => heals += 1,
                    Msg::Damage(d) if d.attacker == d.target => {}
                    Msg::Damage(d) if monsters.contains(&d.attacker) => monster_hits += 1,
                    Msg::Move(m) if monsters.contains(&m.id) => monster_moves += 1,
                    _ => {}
                }
            }
        }
    }
    // The run must have exercised the interesting paths, or it proves little.
    let counts = (
        monster_deaths,
        player_deaths,
        monster_hits,
        monster_moves,
        heals,
    );
    assert!(
        monster_deaths > 0 && player_deaths > 0 && monster_hits > 0 && monster_moves > 0,
        "{counts:?}"
    );
    eprintln!("monster deaths, player deaths, monster hits, monster moves, heals: {counts:?}");
}

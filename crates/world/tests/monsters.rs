//! Monster AI: aggro, chase, attack, leash back home, ignore zombies,
//! respawn after death.

mod common;

use common::Sim;
use tether_world::monsters::{AGGRO_RADIUS, CHASE_STEP_MS, LEASH_RADIUS, WANDER_RADIUS};
use tether_world::{CharacterRecord, EntityView, WorldConfig};

fn dist(a: (f32, f32), b: (f32, f32)) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

fn pos(e: EntityView) -> (f32, f32) {
    (e.x, e.y)
}

/// A big, sparse map: one monster can be studied without the others.
fn sparse() -> Sim {
    Sim::new(WorldConfig {
        width: 2_000.0,
        height: 2_000.0,
        monsters: 8,
        ..WorldConfig::default()
    })
}

/// A player (level 30 unless the record says otherwise) `gap` units east of a monster far from the edges and from
/// the other monsters.
fn near_monster(sim: &mut Sim, gap: f32, rec: CharacterRecord) -> (u64, EntityView) {
    let all = sim.monsters();
    let m = all
        .iter()
        .find(|m| {
            m.x > 200.0
                && m.y > 200.0
                && m.x < 1_800.0
                && m.y < 1_800.0
                && all
                    .iter()
                    .all(|o| o.id == m.id || dist(pos(*o), pos(**m)) > 150.0)
        })
        .copied()
        .expect("a lonely monster");
    let id = sim.join_record(CharacterRecord {
        pos: Some((m.x + gap, m.y)),
        level: if rec.level == 0 { 30 } else { rec.level },
        ..rec
    });
    (id, m)
}

#[test]
fn a_player_in_aggro_range_gets_chased_and_attacked() {
    let mut sim = sparse();
    let (p, m) = near_monster(&mut sim, AGGRO_RADIUS - 1.0, CharacterRecord::new("bait"));
    sim.clear_inboxes();
    sim.run_for(3_000);
    let inbox = sim.inbox(p);
    let moves: Vec<_> = pick!(inbox, Move)
        .into_iter()
        .filter(|mv| mv.id == m.id)
        .collect();
    assert!(!moves.is_empty(), "the monster closes in");
    assert!(dist((moves[0].x, moves[0].y), (m.x + 9.0, m.y)) < AGGRO_RADIUS - 1.0);
    let hits: Vec<_> = pick!(inbox, Damage)
        .into_iter()
        .filter(|d| d.attacker == m.id && d.target == p)
        .collect();
    assert!(!hits.is_empty(), "and attacks");
    assert!(sim.entity(p).hp < sim.entity(p).max_hp);
    // At most two steps a second while chasing.
    assert!(moves.len() as u64 <= 3_000 / CHASE_STEP_MS + 1);
    sim.check_views();
}

#[test]
fn players_outside_aggro_range_are_left_alone() {
    let mut sim = sparse();
    let (p, m) = near_monster(
        &mut sim,
        AGGRO_RADIUS + WANDER_RADIUS + 3.0,
        CharacterRecord::new("passerby"),
    );
    sim.clear_inboxes();
    sim.run_for(20_000);
    assert!(pick!(sim.inbox(p), Damage).is_empty());
    let now = sim.entity(m.id);
    assert!(
        dist(pos(now), pos(m)) <= WANDER_RADIUS,
        "it only wanders around home"
    );
}

#[test]
fn link_dead_players_are_ignored_until_they_come_back() {
    let mut sim = sparse();
    let (p, m) = near_monster(&mut sim, 4.0, CharacterRecord::new("zombie"));
    sim.set_link_dead(p, true);
    sim.clear_inboxes();
    sim.run_for(10_000);
    assert!(
        pick!(sim.inbox(p), Damage).is_empty(),
        "zombies are not new targets"
    );
    assert!(dist(pos(sim.entity(m.id)), pos(m)) <= WANDER_RADIUS);
    sim.set_link_dead(p, false);
    sim.run_for(3_000);
    assert!(pick!(sim.inbox(p), Damage)
        .iter()
        .any(|d| d.attacker == m.id));
}

#[test]
fn a_chase_ends_at_the_leash_and_the_monster_goes_home_and_heals() {
    let mut sim = sparse();
    // Level 1: one hit hurts but cannot kill anything.
    let (p, m) = near_monster(
        &mut sim,
        5.0,
        CharacterRecord {
            level: 1,
            ..CharacterRecord::new("runner")
        },
    );
    // Hurt it, so the heal at home shows.
    sim.now += 1_000;
    sim.attack(p, m.id);
    assert!(sim.entity(m.id).hp < m.max_hp);
    // Run east at full speed for 15 s, ticking as we go.
    let speed = sim.world.config().move_speed;
    let mut farthest: f32 = 0.0;
    for _ in 0..75 {
        sim.tick(200);
        let e = sim.entity(p);
        sim.move_to(p, e.x + speed * 0.2, e.y);
        farthest = farthest.max(dist(pos(sim.entity(m.id)), pos(m)));
        sim.check_views();
    }
    assert!(farthest > AGGRO_RADIUS, "it gave chase ({farthest})");
    assert!(
        farthest <= LEASH_RADIUS,
        "but never past the leash ({farthest})"
    );
    // Walk on, then give it time to get home.
    sim.run_for(10_000);
    let back = sim.entity(m.id);
    assert!(dist(pos(back), pos(m)) <= WANDER_RADIUS, "home again");
    assert_eq!(back.hp, m.max_hp, "healed");
    assert!(dist(pos(sim.entity(p)), pos(back)) > AGGRO_RADIUS);
    sim.check_views();
}

#[test]
fn dead_monsters_respawn_at_home_after_the_delay() {
    let mut sim = sparse();
    let respawn_ms = sim.world.config().monster_respawn_ms;
    let (p, m) = near_monster(&mut sim, 3.0, CharacterRecord::new("slayer"));
    let cooldown = sim.world.config().attack_cooldown_ms;
    while !sim.entity(m.id).dead {
        sim.now += cooldown;
        sim.attack(p, m.id);
    }
    sim.clear_inboxes();
    sim.run_for(respawn_ms - 200);
    assert!(sim.entity(m.id).dead, "still a corpse");
    sim.run_for(400);
    let back = sim.entity(m.id);
    assert!(!back.dead);
    assert_eq!(back.hp, m.max_hp);
    let inbox = sim.inbox(p);
    assert!(pick!(inbox, Disappear).iter().any(|d| d.id == m.id));
    let appear: Vec<_> = pick!(inbox, Appear)
        .into_iter()
        .filter(|a| a.id == m.id)
        .collect();
    assert_eq!(appear.len(), 1);
    assert!(!appear[0].dead);
    sim.check_views();
}

#[test]
fn monster_traffic_stays_well_below_player_traffic() {
    // The headline density on a small population: count monster moves per
    // player per second with nobody fighting.
    let mut sim = Sim::new(WorldConfig::for_population(300, 8.0));
    let players: Vec<_> = (0..300).map(|i| sim.join(&format!("p{i}"), None)).collect();
    for &p in &players {
        sim.set_link_dead(p, true); // nobody gets chased: pure wandering
    }
    let monsters: std::collections::HashSet<_> = sim.monsters().iter().map(|m| m.id).collect();
    sim.clear_inboxes();
    sim.run_for(30_000);
    let monster_frames: usize = players
        .iter()
        .map(|p| {
            pick!(sim.inbox(*p), Move)
                .iter()
                .filter(|m| monsters.contains(&m.id))
                .count()
        })
        .sum();
    let per_player_per_s = monster_frames as f64 / 300.0 / 30.0;
    // A player walking at 5 Hz among 8 others receives ~40 player moves/s.
    assert!(
        per_player_per_s < 1.0,
        "{per_player_per_s} monster moves per player per second"
    );
}

#[test]
fn a_new_character_beats_any_single_monster() {
    let mut sim = Sim::new(WorldConfig {
        width: 3_000.0,
        height: 3_000.0,
        monsters: 60,
        ..WorldConfig::default()
    });
    let all = sim.monsters();
    let mut fought = 0;
    for kind in tether_world::monsters::MONSTER_KINDS {
        let Some(m) = all.iter().copied().find(|m| {
            m.max_hp == kind.max_hp
                && m.x > 100.0
                && m.y > 100.0
                && m.x < 2_900.0
                && m.y < 2_900.0
                && all
                    .iter()
                    .all(|o| o.id == m.id || dist(pos(*o), pos(*m)) > 80.0)
        }) else {
            continue;
        };
        let p = sim.join(kind.name, Some((m.x + 1.0, m.y)));
        let cooldown = sim.world.config().attack_cooldown_ms;
        let mut since_attack = cooldown;
        while !sim.entity(m.id).dead && !sim.entity(p).dead {
            if since_attack >= cooldown {
                sim.attack(p, m.id);
                since_attack = 0;
            }
            sim.tick(100);
            since_attack += 100;
        }
        assert!(
            sim.entity(m.id).dead,
            "a new character lost to a {}",
            kind.name
        );
        let left = sim.entity(p);
        assert!(
            left.hp > left.max_hp / 3,
            "{} hp left after a {}",
            left.hp,
            kind.name
        );
        sim.leave(p);
        fought += 1;
    }
    assert_eq!(fought, tether_world::monsters::MONSTER_KINDS.len());
}

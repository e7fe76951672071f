//! The load shape at a glance: 2,000 players on a map sized for density 8,
//! walking at 5 Hz. Each move should reach about `density` viewers (a bit
//! fewer: players near the map's edge see less). Behaviour, not timing.

mod common;

use common::decode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tether_proto::pb::{self, server_message::Msg};
use tether_world::{CharacterRecord, Outbox, World, WorldConfig};

#[test]
fn each_move_is_seen_by_about_density_viewers() {
    const PLAYERS: usize = 2_000;
    const DENSITY: f32 = 8.0;
    let config = WorldConfig::for_population(PLAYERS, DENSITY);
    let (w, h, r, speed) = (
        config.width,
        config.height,
        config.view_radius,
        config.move_speed,
    );
    let mut world = World::new(config, 0);
    let mut out = Outbox::default();
    let ids: Vec<_> = (0..PLAYERS)
        .map(|i| world.join(0, CharacterRecord::new(format!("p{i}")), &mut out))
        .collect();

    // Uniform spawns give the asked density (minus the edge effect).
    let positions: Vec<_> = ids.iter().map(|&id| world.entity(id).unwrap()).collect();
    let mut pairs = 0usize;
    for a in &positions {
        pairs += positions
            .iter()
            .filter(|b| b.id != a.id && (a.x - b.x).powi(2) + (a.y - b.y).powi(2) <= r * r)
            .count();
    }
    let seen = pairs as f64 / PLAYERS as f64;
    assert!(
        (6.0..=9.0).contains(&seen),
        "players see {seen:.2} others on average"
    );

    out.clear();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut moves = 0usize;
    for step in 1..=10u64 {
        let now = step * 200;
        for &id in &ids {
            let e = world.entity(id).unwrap();
            let a = rng.random_range(0.0..std::f32::consts::TAU);
            let d = speed * 0.2;
            let x = (e.x + d * a.cos()).clamp(0.0, w - 0.01);
            let y = (e.y + d * a.sin()).clamp(0.0, h - 0.01);
            world.apply(
                now,
                id,
                step as u32,
                pb::input::Cmd::Move(pb::Move { x, y }),
                &mut out,
            );
            moves += 1;
        }
    }
    let players: std::collections::HashSet<_> = ids.iter().copied().collect();
    let (mut player_moves, mut appear, mut disappear, mut corrections) = (0, 0, 0, 0);
    for (_, f) in &out.frames {
        match decode(f) {
            Msg::Move(m) if players.contains(&m.id) => player_moves += 1,
            Msg::Appear(_) => appear += 1,
            Msg::Disappear(_) => disappear += 1,
            Msg::Correction(_) => corrections += 1,
            _ => {}
        }
    }
    assert_eq!(corrections, 0, "legal walking is never corrected");
    let per_move = player_moves as f64 / moves as f64;
    eprintln!(
        "{PLAYERS} players, {moves} moves: {per_move:.2} EntityMove per move, \
         {appear} appears, {disappear} disappears, {} frames in all",
        out.frames.len()
    );
    assert!(
        (seen * 0.9..=seen * 1.1).contains(&per_move),
        "{per_move:.2} viewers per move against {seen:.2} players in view"
    );
    // Crossing view edges is rare next to moving within view.
    assert!(appear + disappear < player_moves / 5);
}

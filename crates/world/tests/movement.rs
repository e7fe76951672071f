//! Server-authoritative movement: legal walking (with network jitter) is
//! accepted, speeding and leaving the map are refused with a Correction.

mod common;

use common::Sim;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tether_proto::pb::{self, server_message::Msg, CorrectionReason};
use tether_world::movement::MOVE_BUDGET_MS;

/// A client walking at exactly `move_speed`, reporting every `interval_ms`
/// of its own clock; each report reaches the server 0..=`jitter_ms` late (in
/// order, as over TCP). Returns the Corrections it got.
fn walk_with_jitter(
    interval_ms: u64,
    jitter_ms: u64,
    reports: usize,
    seed: u64,
) -> Vec<pb::Correction> {
    let mut sim = Sim::small();
    let (w, h) = (sim.world.config().width, sim.world.config().height);
    let speed = sim.world.config().move_speed;
    let id = sim.join("walker", Some((w / 2.0, h / 2.0)));
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut x, mut y) = (w / 2.0, h / 2.0);
    let mut heading: f32 = 0.0;
    let start = sim.now;
    let mut arrival = start;
    let mut corrections = Vec::new();
    for i in 1..=reports {
        // Wander, turning back toward the middle near the edges.
        heading += rng.random_range(-0.5..0.5);
        let step = speed * interval_ms as f32 / 1000.0;
        let (nx, ny) = (x + step * heading.cos(), y + step * heading.sin());
        if nx < 20.0 || ny < 20.0 || nx > w - 20.0 || ny > h - 20.0 {
            heading = (h / 2.0 - y).atan2(w / 2.0 - x);
        }
        // Walk exactly `step` (recomputed after a turn), in f64 so the test's
        // own rounding is not what gets measured.
        let (hx, hy) = ((heading as f64).cos(), (heading as f64).sin());
        x = (x as f64 + step as f64 * hx) as f32;
        y = (y as f64 + step as f64 * hy) as f32;
        let sent = start + i as u64 * interval_ms;
        arrival = arrival.max(sent + rng.random_range(0..=jitter_ms));
        sim.now = arrival;
        sim.move_to(id, x, y);
        for m in sim.inbox(id) {
            if let Msg::Correction(c) = m {
                corrections.push(c);
                // A corrected client snaps back, like a real one.
                (x, y) = (c.x, c.y);
            }
        }
    }
    if corrections.is_empty() {
        let e = sim.entity(id);
        assert_eq!((e.x, e.y), (x, y), "the server agrees where the walker is");
    }
    corrections
}

#[test]
fn legal_speed_with_200ms_jitter_is_never_corrected() {
    for seed in 0..5 {
        assert_eq!(
            walk_with_jitter(200, 200, 1_000, seed),
            vec![],
            "5 Hz, seed {seed}"
        );
        assert_eq!(
            walk_with_jitter(500, 200, 400, seed),
            vec![],
            "2 Hz, seed {seed}"
        );
        assert_eq!(
            walk_with_jitter(100, 200, 2_000, seed),
            vec![],
            "10 Hz, seed {seed}"
        );
    }
}

#[test]
fn double_speed_is_corrected_within_a_second() {
    let mut sim = Sim::small();
    let speed = sim.world.config().move_speed;
    let id = sim.join("sprinter", Some((100.0, 100.0)));
    // Stand still long enough to fill the budget to its cap.
    sim.now += 10 * MOVE_BUDGET_MS;
    let start = sim.now;
    let (mut x, y) = (100.0f32, 100.0f32);
    let mut first_correction = None;
    for i in 1..=25u64 {
        sim.now = start + i * 200;
        x += 2.0 * speed * 0.2;
        let seq = sim.move_to(id, x, y);
        let corrections = pick!(sim.inbox(id), Correction);
        if let Some(c) = corrections.first() {
            assert_eq!(c.seq, seq);
            assert_eq!(c.reason, CorrectionReason::TooFast as i32);
            let e = sim.entity(id);
            assert_eq!(
                (c.x, c.y),
                (e.x, e.y),
                "the correction carries the server's position"
            );
            first_correction.get_or_insert(sim.now - start);
            x = c.x;
        }
    }
    let after = first_correction.expect("a 2x client gets corrected");
    assert!(
        after <= 1_000,
        "first correction after {after} ms of 2x movement"
    );
}

#[test]
fn standing_still_does_not_bank_a_teleport() {
    let mut sim = Sim::small();
    let speed = sim.world.config().move_speed;
    let id = sim.join("camper", Some((100.0, 100.0)));
    sim.now += 60_000;
    sim.move_to(id, 100.0 + 2.0 * speed, 100.0);
    let c = pick!(sim.inbox(id), Correction);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].reason, CorrectionReason::TooFast as i32);
    assert_eq!((sim.entity(id).x, sim.entity(id).y), (100.0, 100.0));
    // One second's walk is fine.
    sim.move_to(id, 100.0 + speed, 100.0);
    assert!(pick!(sim.inbox(id), Correction).is_empty());
}

#[test]
fn off_map_and_nonsense_positions_are_refused() {
    let mut sim = Sim::small();
    let (w, h) = (sim.world.config().width, sim.world.config().height);
    let id = sim.join("edge", Some((0.5, 0.5)));
    sim.now += 1_000;
    for (x, y) in [
        (-0.1, 0.5),
        (0.5, -0.1),
        (w, 0.5),
        (0.5, h),
        (f32::NAN, 0.5),
        (0.5, f32::INFINITY),
        (f32::NEG_INFINITY, 0.5),
    ] {
        let seq = sim.move_to(id, x, y);
        let c = pick!(sim.inbox(id), Correction);
        assert_eq!(c.len(), 1, "({x}, {y})");
        assert_eq!(c[0].seq, seq);
        assert_eq!(c[0].reason, CorrectionReason::OffMap as i32);
        assert_eq!((c[0].x, c[0].y), (0.5, 0.5));
    }
    // The corner itself is on the map.
    sim.move_to(id, 0.0, 0.0);
    assert!(pick!(sim.inbox(id), Correction).is_empty());
}

#[test]
fn accepted_moves_go_to_viewers_not_back_to_the_mover() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join("b", Some((110.0, 100.0)));
    let far = sim.join("far", Some((300.0, 300.0)));
    sim.clear_inboxes();
    sim.now += 200;
    sim.move_to(a, 101.0, 100.0);
    let mine = sim.inbox(a);
    assert!(pick!(mine, Move).is_empty(), "no echo to the mover");
    assert!(pick!(mine, Correction).is_empty());
    let moves = pick!(sim.inbox(b), Move);
    assert_eq!(
        moves,
        vec![pb::EntityMove {
            id: a,
            x: 101.0,
            y: 100.0
        }]
    );
    assert!(pick!(sim.inbox(far), Move).is_empty());
    sim.check_views();
}

#[test]
fn walking_across_the_view_edge_appears_and_disappears() {
    let mut sim = Sim::small();
    let r = sim.world.config().view_radius;
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join("b", Some((100.0 + r + 1.0, 100.0)));
    assert!(!sim.clients[&a].view.contains_key(&b));
    sim.clear_inboxes();
    sim.now += 1_000;
    // Exactly at the radius: visible (inclusive).
    sim.move_to(b, 100.0 + r, 100.0);
    let appeared = |sim: &mut Sim, to, of| {
        pick!(sim.inbox(to), Appear)
            .iter()
            .filter(|m| m.id == of)
            .count()
    };
    assert_eq!(appeared(&mut sim, a, b), 1);
    assert_eq!(appeared(&mut sim, b, a), 1);
    sim.now += 1_000;
    sim.move_to(b, 100.0 + r + 2.0, 100.0);
    assert_eq!(
        pick!(sim.inbox(a), Disappear),
        vec![pb::EntityDisappear { id: b }]
    );
    assert!(pick!(sim.inbox(b), Disappear).contains(&pb::EntityDisappear { id: a }));
    sim.check_views();
}

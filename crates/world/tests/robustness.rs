//! Hostile or broken inputs: any command with any values, from players alive
//! or dead, present or gone, never panics the world and never breaks anyone's
//! view.

mod common;

use common::Sim;
use proptest::prelude::*;
use tether_proto::pb::{self, input::Cmd};
use tether_world::{CharacterRecord, WorldConfig};

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -50.0f32..250.0,
        1 => any::<f32>(),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
    ]
}

fn any_cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        (any_f32(), any_f32()).prop_map(|(x, y)| Cmd::Move(pb::Move { x, y })),
        any::<u64>().prop_map(|target| Cmd::Attack(pb::Attack { target })),
        (any::<i32>(), "[a-z]{0,30}", ".{0,300}").prop_map(|(scope, to, text)| Cmd::Chat(
            pb::Chat {
                scope: scope.rem_euclid(4),
                to,
                text
            }
        )),
        any::<u64>().prop_map(|client_time| Cmd::Ping(pb::Ping { client_time })),
        Just(Cmd::Respawn(pb::Respawn {})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_input_is_answered_or_ignored(
        records in prop::collection::vec((any::<i32>(), any::<u32>(), any_f32(), any_f32()), 1..6),
        inputs in prop::collection::vec((any::<usize>(), any::<bool>(), any_cmd(), 0u64..3_000), 1..80),
    ) {
        let mut sim = Sim::new(WorldConfig {
            width: 200.0,
            height: 200.0,
            monsters: 12,
            pvp: true,
            ..WorldConfig::default()
        });
        let mut ids = Vec::new();
        for (i, (hp, level, x, y)) in records.into_iter().enumerate() {
            ids.push(sim.join_record(CharacterRecord {
                hp,
                level,
                pos: Some((x, y)),
                xp: u64::MAX - 5,
                gold: u64::MAX - 5,
                ..CharacterRecord::new(format!("p{i}"))
            }));
        }
        let monster = sim.monsters()[0].id;
        let mut gone = Vec::new();
        for (who, existing_target, mut cmd, dt) in inputs {
            sim.now += dt;
            // Aim attacks at real entities half of the time.
            if let (Cmd::Attack(a), true) = (&mut cmd, existing_target) {
                a.target = *ids.get(who % (ids.len() + 1)).unwrap_or(&monster);
            }
            let id = ids.get(who % ids.len().max(1)).copied().unwrap_or(0xdead);
            sim.apply(id, cmd);
            if who % 17 == 0 && !ids.is_empty() {
                let id = ids.remove(who % ids.len());
                sim.leave(id);
                gone.push(id);
            }
            if let Some(&id) = gone.last() {
                // Inputs of players who left are ignored.
                sim.apply(id, Cmd::Ping(pb::Ping { client_time: 1 }));
            }
            sim.tick(0);
            sim.check_views();
        }
        for id in ids {
            let e = sim.entity(id);
            prop_assert!(e.hp >= 0 && e.hp <= e.max_hp);
            prop_assert!(e.x >= 0.0 && e.y >= 0.0 && e.x < 200.0 && e.y < 200.0);
        }
    }
}

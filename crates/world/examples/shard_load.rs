//! Replays the `standard` load shape of docs/BENCHMARKS.md against one `World`, without any
//! I/O: what the simulation alone costs, for comparing world changes.
//!
//! ```text
//! cargo run --release -p tether-world --example shard_load -- [players] [seconds]
//! ```
//!
//! Players (default 10,000) join at density 8, then for `seconds` (default
//! 10) of simulated time each moves at 5 Hz at walking speed, attacks a
//! random monster every 2 s (mostly out of range, as a bot's target often
//! is), pings once a second; the world ticks at its `tick_ms`. Prints the
//! wall time, inputs, frames out, and microseconds per input. Run it a few
//! times and quote the minimum: shared machines are noisy.

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tether_proto::pb::{self, input::Cmd};
use tether_world::{CharacterRecord, Outbox, World, WorldConfig};

/// Inputs are spread over slots of this many ms, like clients with random
/// phase (a 5 Hz mover lands in every tenth slot).
const SLOT_MS: u64 = 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let players: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);

    let config = WorldConfig::for_population(players, 8.0);
    let (w, h, speed, tick_ms) = (
        config.width,
        config.height,
        config.move_speed,
        config.tick_ms,
    );
    let mut world = World::new(config, 0);
    let mut out = Outbox::default();

    let started = Instant::now();
    let ids: Vec<_> = (0..players)
        .map(|i| world.join(0, CharacterRecord::new(format!("p{i}")), &mut out))
        .collect();
    println!(
        "{players} joins: {} ms, {} frames",
        started.elapsed().as_millis(),
        out.frames.len()
    );
    out.clear();

    // The driver keeps its own copy of positions, as a client would, so its
    // bookkeeping is not timed as world work.
    let mut pos: Vec<(f32, f32)> = ids
        .iter()
        .map(|&id| {
            let e = world.entity(id).expect("joined");
            (e.x, e.y)
        })
        .collect();
    let monsters: Vec<u64> = world
        .entities()
        .filter(|e| e.kind == pb::EntityKind::Monster)
        .map(|e| e.id)
        .collect();
    let mut rng = SmallRng::seed_from_u64(1);
    let (mut frames, mut inputs, mut seq) = (0usize, 0usize, 0u32);
    let started = Instant::now();
    for t in (0..seconds * 1_000).step_by(SLOT_MS as usize) {
        let now = 1_000 + t;
        let slot = t / SLOT_MS;
        for (i, &id) in ids.iter().enumerate() {
            let i = i as u64;
            if i % 10 == slot % 10 {
                // Slightly under walking speed: a 200 ms step every 200 ms.
                let a = rng.random_range(0.0..std::f32::consts::TAU);
                let d = speed * 0.19;
                let p = &mut pos[i as usize];
                p.0 = (p.0 + d * a.cos()).clamp(0.0, w - 0.01);
                p.1 = (p.1 + d * a.sin()).clamp(0.0, h - 0.01);
                seq += 1;
                let cmd = Cmd::Move(pb::Move { x: p.0, y: p.1 });
                world.apply(now, id, seq, cmd, &mut out);
                inputs += 1;
            }
            if i % 100 == slot % 100 {
                let target = monsters[rng.random_range(0..monsters.len())];
                seq += 1;
                world.apply(now, id, seq, Cmd::Attack(pb::Attack { target }), &mut out);
                inputs += 1;
            }
            if i % 50 == slot % 50 {
                seq += 1;
                let cmd = Cmd::Ping(pb::Ping { client_time: now });
                world.apply(now, id, seq, cmd, &mut out);
                inputs += 1;
            }
        }
        if t % tick_ms == 0 {
            world.tick(now, &mut out);
        }
        frames += out.frames.len();
        // Loot is never committed here: nobody is told, nothing is stored.
        out.clear();
    }
    let wall = started.elapsed();
    println!(
        "{seconds} s simulated in {} ms: {inputs} inputs, {frames} frames out ({:.0}/s), {:.2} us/input, {:.1} % of a core",
        wall.as_millis(),
        frames as f64 / seconds as f64,
        wall.as_secs_f64() * 1e6 / inputs as f64,
        wall.as_secs_f64() * 100.0 / seconds as f64,
    );
}

//! Area of interest at the benchmark's density (10,000 players, about 8 in
//! each view): the grid alone (update and query), and one accepted move as
//! the world handles it (relocation, visibility diff, encoded fan-out).
//!
//! ```text
//! cargo bench -p tether-world --bench aoi
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tether_proto::pb::{self, input::Cmd};
use tether_world::grid::{within, Handle, InterestGrid};
use tether_world::{CharacterRecord, Outbox, World, WorldConfig};

const PLAYERS: usize = 10_000;

fn grid(c: &mut Criterion) {
    let config = WorldConfig::for_population(PLAYERS, 8.0);
    let (w, h, r) = (config.width, config.height, config.view_radius);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut grid = InterestGrid::new(w, h, r);
    let mut pos: Vec<(f32, f32)> = (0..PLAYERS)
        .map(|_| (rng.random_range(0.0..w), rng.random_range(0.0..h)))
        .collect();
    for (i, &(x, y)) in pos.iter().enumerate() {
        grid.insert(Handle::Player(i as u32), i as u64, x, y);
    }

    let mut g = c.benchmark_group("aoi_grid");
    g.throughput(Throughput::Elements(1));
    // A walking step (a fraction of a cell): most relocations stay in their
    // cell, some cross into the next.
    let step = config.move_speed * 0.2;
    let mut i = 0usize;
    g.bench_function("relocate_walk_step", |b| {
        b.iter(|| {
            i = (i + 1) % PLAYERS;
            let (x, y) = &mut pos[i];
            *x = (*x + step).rem_euclid(w);
            *y = (*y + step * 0.5).rem_euclid(h);
            grid.relocate(Handle::Player(i as u32), *x, *y);
        })
    });
    let r2 = r * r;
    g.bench_function("query_view_radius", |b| {
        b.iter(|| {
            i = (i + 7919) % PLAYERS;
            let (x, y) = pos[i];
            let rect = grid.around(x, y, r);
            grid.entries(rect)
                .filter(|e| within(r2, e.x, e.y, black_box(x), y))
                .count()
        })
    });
    g.finish();
}

fn world_move(c: &mut Criterion) {
    let config = WorldConfig::for_population(PLAYERS, 8.0);
    let (w, h, speed) = (config.width, config.height, config.move_speed);
    let mut world = World::new(config, 0);
    let mut out = Outbox::default();
    let ids: Vec<_> = (0..PLAYERS)
        .map(|i| world.join(0, CharacterRecord::new(format!("p{i}")), &mut out))
        .collect();
    out.clear();
    let mut pos: Vec<(f32, f32)> = ids
        .iter()
        .map(|&id| {
            let e = world.entity(id).expect("joined");
            (e.x, e.y)
        })
        .collect();
    let mut seqs = vec![0u32; PLAYERS];

    let mut g = c.benchmark_group("aoi_world");
    g.throughput(Throughput::Elements(1));
    // Each iteration moves the next player a short walking step; the clock
    // advances a second per round over all players, so every move is within
    // the speed budget.
    let mut i = 0usize;
    let mut now_ms = 1_000u64;
    g.bench_function("accepted_move_with_fanout", |b| {
        b.iter(|| {
            i += 1;
            if i == PLAYERS {
                i = 0;
                now_ms += 1_000;
                out.clear();
            }
            let (x, y) = &mut pos[i];
            let dx = if (*x + speed * 0.5) < w {
                speed * 0.5
            } else {
                -speed * 0.5
            };
            let dy = if (*y + speed * 0.25) < h {
                speed * 0.25
            } else {
                -speed * 0.25
            };
            *x += dx;
            *y += dy;
            seqs[i] += 1;
            world.apply(
                now_ms,
                ids[i],
                seqs[i],
                Cmd::Move(pb::Move { x: *x, y: *y }),
                &mut out,
            );
        })
    });
    g.finish();
}

criterion_group!(benches, grid, world_move);
criterion_main!(benches);

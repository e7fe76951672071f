//! The replay buffer and its page pool in steady state: every frame sent is
//! kept until the client acknowledges it, then its page goes back to the
//! pool. A warm pool hands pages out and takes them back without touching
//! the allocator.
//!
//! ```text
//! cargo bench -p tether-session --bench replay
//! ```

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tether_session::replay::{PagePool, ReplayBuffer};

fn steady_state(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    let frame = Bytes::from_static(&[0u8; 24]);
    // Acknowledged every 50 frames (a client at 5 Hz acks about that often
    // while ~8 neighbours move).
    const ACK_EVERY: u64 = 50;
    g.throughput(Throughput::Elements(ACK_EVERY));
    let mut pool = PagePool::new(64);
    let mut buf = ReplayBuffer::new();
    g.bench_function("push_50_then_ack", |b| {
        b.iter(|| {
            let mut last = 0;
            for _ in 0..ACK_EVERY {
                last = buf.push(black_box(frame.clone()), &mut pool);
            }
            buf.release_through(last, &mut pool)
        })
    });
    // A resume: the frames a client missed, read back for replay.
    let mut pool = PagePool::new(64);
    let mut buf = ReplayBuffer::new();
    for _ in 0..1024 {
        buf.push(frame.clone(), &mut pool);
    }
    let from = buf.first() + 24;
    g.throughput(Throughput::Elements(buf.next() - from - 1));
    g.bench_function("frames_after_1000", |b| {
        b.iter(|| buf.frames_after(black_box(from)).map(|v| v.len()))
    });
    g.finish();
}

criterion_group!(benches, steady_state);
criterion_main!(benches);

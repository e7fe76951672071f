//! The rings between I/O threads and shards: what one message costs to hand
//! over, on one thread (the ring's own bookkeeping) and across two threads
//! (cache-line traffic included), against the standard library's bounded
//! channel as the reference.
//!
//! ```text
//! cargo bench -p tether-server --bench rings
//! ```

use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tether_server::link::{ConnRef, ToIo, OUTBOUND_RING_CAPACITY};

fn frame_msg(frame: &Bytes, slot: u32) -> ToIo {
    ToIo::Frame {
        conn: ConnRef {
            io: 0,
            slot,
            generation: 1,
        },
        frame: frame.clone(),
    }
}

/// Messages per batch: a shard pushes a tick's worth of frames, then the
/// I/O thread drains them.
const BATCH: u64 = 256;

fn same_thread(c: &mut Criterion) {
    let frame = Bytes::from_static(&[0u8; 20]);
    let mut g = c.benchmark_group("ring_same_thread");
    g.throughput(Throughput::Elements(BATCH));
    let (mut tx, mut rx) = rtrb::RingBuffer::<ToIo>::new(OUTBOUND_RING_CAPACITY);
    g.bench_function("rtrb_push_pop_256", |b| {
        b.iter(|| {
            for i in 0..BATCH as u32 {
                tx.push(frame_msg(&frame, i)).expect("room");
            }
            let mut n = 0u32;
            while let Ok(m) = rx.pop() {
                n += matches!(black_box(m), ToIo::Frame { .. }) as u32;
            }
            n
        })
    });
    let (stx, srx) = mpsc::sync_channel::<ToIo>(OUTBOUND_RING_CAPACITY);
    g.bench_function("std_sync_channel_256", |b| {
        b.iter(|| {
            for i in 0..BATCH as u32 {
                stx.send(frame_msg(&frame, i)).expect("room");
            }
            let mut n = 0u32;
            while let Ok(m) = srx.try_recv() {
                n += matches!(black_box(m), ToIo::Frame { .. }) as u32;
            }
            n
        })
    });
    g.finish();
}

/// A producer thread pushes `iters` messages as fast as the ring takes them
/// while this thread pops them; the time is until the last one is popped.
fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_cross_thread");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rtrb", |b| {
        b.iter_custom(|iters| {
            let (mut tx, mut rx) = rtrb::RingBuffer::<ToIo>::new(OUTBOUND_RING_CAPACITY);
            let producer = thread::spawn(move || {
                let frame = Bytes::from_static(&[0u8; 20]);
                for i in 0..iters {
                    let mut msg = frame_msg(&frame, i as u32);
                    loop {
                        match tx.push(msg) {
                            Ok(()) => break,
                            Err(rtrb::PushError::Full(m)) => {
                                msg = m;
                                std::hint::spin_loop();
                            }
                        }
                    }
                }
            });
            let start = Instant::now();
            let mut got = 0;
            while got < iters {
                match rx.pop() {
                    Ok(m) => {
                        black_box(m);
                        got += 1;
                    }
                    Err(_) => std::hint::spin_loop(),
                }
            }
            let took = start.elapsed();
            producer.join().expect("producer");
            took
        })
    });
    g.bench_function("std_sync_channel", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = mpsc::sync_channel::<ToIo>(OUTBOUND_RING_CAPACITY);
            let producer = thread::spawn(move || {
                let frame = Bytes::from_static(&[0u8; 20]);
                for i in 0..iters {
                    tx.send(frame_msg(&frame, i as u32))
                        .expect("receiver alive");
                }
            });
            let start = Instant::now();
            for _ in 0..iters {
                black_box(rx.recv().expect("sender alive"));
            }
            let took = start.elapsed();
            producer.join().expect("producer");
            took
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = same_thread, cross_thread
}
criterion_main!(benches);

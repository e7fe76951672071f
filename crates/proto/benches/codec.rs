//! Codec cost per frame: encoding a fan-out event, and splitting plus
//! decoding client inputs the way an I/O thread does after one big read.
//!
//! ```text
//! cargo bench -p tether-proto --bench codec
//! ```

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tether_proto::pb::{self, client_message, input::Cmd, server_message};
use tether_proto::{decode_client, encode_frame, encode_frame_into, split_frame, MAX_PAYLOAD_LEN};

fn move_event(id: u64) -> pb::ServerMessage {
    pb::ServerMessage {
        msg: Some(server_message::Msg::Move(pb::EntityMove {
            id,
            x: 1234.5,
            y: 987.25,
        })),
    }
}

fn move_input(seq: u32) -> pb::ClientMessage {
    pb::ClientMessage {
        msg: Some(client_message::Msg::Input(pb::Input {
            seq,
            ack: u64::from(seq) * 9,
            cmd: Some(Cmd::Move(pb::Move {
                x: 1234.5,
                y: 987.25,
            })),
        })),
    }
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let ev = move_event(42);
    // One event, encoded once into its own refcounted buffer (what a shard
    // does before handing the frame to every watcher).
    g.bench_function("move_event_frame", |b| {
        b.iter(|| encode_frame(black_box(&ev)))
    });
    // Into a reused buffer: the encoding alone, without the allocation.
    let mut out = BytesMut::with_capacity(64 * 1024);
    g.bench_function("move_event_into_reused_buf", |b| {
        b.iter(|| {
            if out.len() > 60 * 1024 {
                out.clear();
            }
            encode_frame_into(black_box(&ev), &mut out);
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    // A 64 KiB read's worth of move inputs, split and decoded frame by frame.
    let mut chunk = BytesMut::new();
    let mut frames = 0u64;
    while chunk.len() < 64 * 1024 - 32 {
        frames += 1;
        encode_frame_into(&move_input(frames as u32), &mut chunk);
    }
    g.throughput(Throughput::Elements(frames));
    g.bench_function("move_inputs_from_64k_read", |b| {
        b.iter(|| {
            let mut buf = black_box(&chunk[..]);
            let mut n = 0u32;
            while let Ok(Some((payload, used))) = split_frame(buf, MAX_PAYLOAD_LEN) {
                let msg = decode_client(payload).expect("valid input");
                n = n.wrapping_add(matches!(msg.msg, Some(client_message::Msg::Input(_))) as u32);
                buf = &buf[used..];
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);

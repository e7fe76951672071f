//! Whisper latency between two players, in one process (one clock): one
//! logs in at `--from`, the other at `--to`, and the first whispers the
//! second `--count` times at `--rate` per second. Each line carries its
//! send time; the receiver's latency is from `send` to the chat frame's
//! arrival. In a cluster, `--from` and `--to` on two servers measure a
//! whisper across them (NATS in between); on one server, the same path
//! without it.
//!
//! ```text
//! cargo run --release -p tether-client --example whisper_latency -- \
//!     --from 127.0.0.1:7700 --to 127.0.0.1:7710 --count 2000 --rate 40
//! ```
//!
//! Prints one JSON line: count, received, p50/p99/p999/max in ms. Keep
//! `--rate` under the server's per-connection input rate (`input_rate`,
//! 60/s by default), or the excess is dropped as a flood.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether_client::{ChatScope, Client, ClientConfig, Command, Event, GameEvent, Login};

struct Args {
    from: SocketAddr,
    to: SocketAddr,
    count: usize,
    rate: f64,
    prefix: String,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        from: "127.0.0.1:7777".parse().unwrap(),
        to: "127.0.0.1:7777".parse().unwrap(),
        count: 1000,
        rate: 40.0,
        prefix: format!("wl{}", std::process::id() % 100_000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--from" => a.from = value()?.parse().map_err(|e| format!("--from: {e}"))?,
            "--to" => a.to = value()?.parse().map_err(|e| format!("--to: {e}"))?,
            "--count" => a.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--name-prefix" => a.prefix = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.count == 0 || a.rate <= 0.0 {
        return Err("--count and --rate must be positive".into());
    }
    Ok(a)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("whisper_latency: {e}");
            std::process::exit(2);
        }
    };
    let (sender, receiver) = (format!("{}_s", a.prefix), format!("{}_r", a.prefix));
    let mut rx = Client::connect(ClientConfig::new(a.to, Login::Dev(receiver.clone())))
        .await
        .expect("the receiver logs in");
    let mut tx = Client::connect(ClientConfig::new(a.from, Login::Dev(sender)))
        .await
        .expect("the sender logs in");
    let epoch = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / a.rate);
    let mut next_send = Instant::now();
    let mut sent = 0usize;
    let mut latencies = Vec::with_capacity(a.count);
    let end_by = Instant::now() + gap * a.count as u32 + Duration::from_secs(10);
    while latencies.len() < a.count && Instant::now() < end_by {
        if sent < a.count && Instant::now() >= next_send {
            let at = epoch.elapsed().as_micros();
            let _ = tx.send(Command::Chat {
                scope: ChatScope::Whisper,
                to: receiver.clone(),
                text: format!("t{at}"),
            });
            tx.flush();
            sent += 1;
            next_send += gap;
        }
        // Keep the sender's session serviced (acks, keep-alives).
        let _ = tx
            .next_event_until(tokio::time::Instant::now() + Duration::from_micros(50))
            .await;
        let wake = tokio::time::Instant::from_std(next_send.min(end_by));
        match rx.next_event_until(wake).await {
            Some(Ok(Event::Game(GameEvent::Chat(m)))) => {
                if let Some(t) = m
                    .text
                    .strip_prefix('t')
                    .and_then(|t| t.parse::<u128>().ok())
                {
                    let us = epoch.elapsed().as_micros().saturating_sub(t);
                    latencies.push(us as f64 / 1000.0);
                }
            }
            Some(Err(e)) => {
                eprintln!("whisper_latency: the receiver ended: {e}");
                break;
            }
            _ => {}
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{{\"from\":\"{}\",\"to\":\"{}\",\"count\":{},\"received\":{},\"rate\":{},\"ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}}}}",
        a.from,
        a.to,
        sent,
        latencies.len(),
        a.rate,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies.last().copied().unwrap_or(0.0),
    );
    tx.logout();
    rx.logout();
}

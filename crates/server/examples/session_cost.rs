//! What a session costs in heap memory: live with its socket, then as a
//! zombie once the socket is gone.
//!
//! ```text
//! cargo run --release -p tether-server --example session_cost -- [players] [zombie_secs] [zombie_cap]
//! ```
//!
//! Starts a whole server in this process (in-memory store, ephemeral
//! loopback ports) under a counting allocator, logs `players` (default 2,000)
//! in over raw sockets, has each send one input (a ping), and keeps them as
//! live, well-behaved clients for 10 s:
//! reading everything and acknowledging the frames they receive twice a
//! second, as the SDK does. Then every socket is closed without a logout, so
//! each session turns zombie, and the example waits `zombie_secs` (default
//! 30) while the world goes on around them (monsters wander; each zombie's
//! replay buffer collects what it would have seen, up to the zombie cap,
//! `zombie_cap` frames, default the server's default). Past the cap a zombie
//! keeps no frames at all; a small cap shows that state within the run.
//!
//! It prints the heap bytes per session in each state, measured as the
//! allocator's live bytes above the empty server's, divided by the players.
//! Kernel memory is not heap: it is printed apart, machine-wide, both ends
//! of each loopback connection together: the socket buffers from
//! `/proc/net/sockstat`, and the kernel's slab caches (socket structures,
//! files) from `/proc/meminfo`. It is all gone with the socket.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use tether_proto::pb::{self, client_message, server_message::Msg};
use tether_proto::{decode_server, encode_frame, is_counted, split_frame, MAX_PAYLOAD_LEN};
use tether_server::config::Config;
use tether_store::fake::FakeBackend;

/// The system allocator, counting the bytes it has handed out and not had
/// back.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            LIVE.fetch_add(new_size, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One raw protocol client: reads and counts frames, acknowledges them.
struct Player {
    stream: TcpStream,
    buf: Vec<u8>,
    counted: u64,
    acked: u64,
    welcomed: bool,
}

impl Player {
    fn send(&mut self, msg: client_message::Msg) {
        let frame = encode_frame(&pb::ClientMessage { msg: Some(msg) });
        // Tiny frames on an idle socket: a blocking write completes at once.
        self.stream.set_nonblocking(false).expect("blocking");
        self.stream.write_all(&frame).expect("send");
        self.stream.set_nonblocking(true).expect("non-blocking");
    }

    /// Reads what is there; returns false when the server closed the
    /// connection.
    fn pump(&mut self, scratch: &mut [u8]) -> bool {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        let mut at = 0;
        while let Ok(Some((payload, used))) = split_frame(&self.buf[at..], MAX_PAYLOAD_LEN) {
            if let Ok(msg) = decode_server(payload) {
                if matches!(msg.msg, Some(Msg::Welcome(_))) {
                    self.welcomed = true;
                }
                if matches!(msg.msg, Some(Msg::Close(_))) {
                    return false;
                }
                if is_counted(&msg) {
                    self.counted += 1;
                }
            }
            at += used;
        }
        self.buf.drain(..at);
        true
    }

    fn ack(&mut self) {
        if self.counted > self.acked {
            self.acked = self.counted;
            self.send(client_message::Msg::Ack(pb::Ack {
                frames_received: self.counted,
            }));
        }
    }
}

/// Keeps every player read and acknowledged for `how_long`.
fn play(players: &mut [Player], how_long: Duration) {
    let mut scratch = vec![0u8; 64 * 1024];
    let until = Instant::now() + how_long;
    let mut next_ack = Instant::now();
    while Instant::now() < until {
        for p in players.iter_mut() {
            assert!(p.pump(&mut scratch), "the server closed a live player");
        }
        if Instant::now() >= next_ack {
            players.iter_mut().for_each(Player::ack);
            next_ack += Duration::from_millis(500);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn sessions(handle: &tether_server::ServerHandle, state: &'static str) -> i64 {
    handle
        .metrics
        .sessions
        .get_or_create(&vec![("state", state)])
        .get()
}

/// Pages of memory the kernel holds for TCP sockets, machine-wide.
fn tcp_mem_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "mem")?;
            words.get(at + 1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The kernel's slab caches, bytes, machine-wide.
fn slab_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn heap_mib() -> f64 {
    LIVE.load(Relaxed) as f64 / (1024.0 * 1024.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let players: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let zombie_secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let zombie_cap: Option<usize> = args.next().and_then(|a| a.parse().ok());

    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: std::env::temp_dir().join(format!("tether-session-cost-{}", std::process::id())),
        world_players: players,
        // Long enough that no zombie expires while it is measured.
        zombie_grace_ms: (zombie_secs + 60) * 1_000,
        ..Config::default()
    };
    if let Some(cap) = zombie_cap {
        cfg.zombie_replay_cap_frames = cap;
    }
    let replay_cap = cfg.replay_cap_frames;
    let zombie_cap = cfg.zombie_replay_cap_frames;
    let (backend, _control) = FakeBackend::new();
    let server = tether_server::start_with_backend(cfg, Box::new(backend)).expect("server starts");
    let addr: SocketAddr = server.game_addr;
    thread::sleep(Duration::from_secs(1));
    let base = LIVE.load(Relaxed);
    let tcp_base = tcp_mem_pages();
    let slab_base = slab_bytes();
    println!("empty server: {:.1} MiB of heap", heap_mib());

    // Logins, a hundred at a time (the server's login rate limits are
    // generous to loopback; this stays well under them).
    let mut list = Vec::with_capacity(players);
    let mut scratch = vec![0u8; 64 * 1024];
    for i in 0..players {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut p = Player {
            stream,
            buf: Vec::new(),
            counted: 0,
            acked: 0,
            welcomed: false,
        };
        p.send(client_message::Msg::Hello(pb::Hello {
            protocol_version: 1,
            auth: Some(pb::hello::Auth::DevName(format!("cost{i}"))),
            client: "session_cost".into(),
        }));
        list.push(p);
        if i % 100 == 99 {
            for p in list.iter_mut() {
                assert!(p.pump(&mut scratch), "the server closed a login");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    let until = Instant::now() + Duration::from_secs(30);
    while list.iter().any(|p| !p.welcomed) {
        assert!(Instant::now() < until, "not every player was welcomed");
        for p in list.iter_mut() {
            assert!(p.pump(&mut scratch), "the server closed a login");
        }
        thread::sleep(Duration::from_millis(10));
    }
    // One input each (a ping): a session that never played gets a short
    // grace as a zombie, and these are to stay for the measurement.
    for p in list.iter_mut() {
        p.send(client_message::Msg::Input(pb::Input {
            seq: 1,
            ack: 0,
            cmd: Some(pb::input::Cmd::Ping(pb::Ping { client_time: 1 })),
        }));
    }
    play(&mut list, Duration::from_secs(10));
    // The players' own buffers are this process's heap too: leave them out.
    let mine: usize = list.iter().map(|p| p.buf.capacity()).sum::<usize>()
        + list.capacity() * std::mem::size_of::<Player>();
    let live_bytes = LIVE.load(Relaxed).saturating_sub(base + mine);
    let active = sessions(&server, "active");
    println!(
        "{active} live sessions: {:.1} MiB of heap, {:.0} bytes each (replay cap {replay_cap} frames)",
        live_bytes as f64 / 1048576.0,
        live_bytes as f64 / players as f64
    );
    let slab = slab_bytes().saturating_sub(slab_base);
    println!(
        "kernel slab, both ends of {players} loopback connections: {:.1} MiB ({:.0} bytes per connection)",
        slab as f64 / 1048576.0,
        slab as f64 / players as f64
    );
    let tcp_pages = tcp_mem_pages().saturating_sub(tcp_base);
    println!(
        "kernel TCP buffers, both ends of {players} loopback connections: {} pages ({:.0} bytes per connection)",
        tcp_pages,
        (tcp_pages * 4096) as f64 / players as f64
    );

    drop(list);
    let until = Instant::now() + Duration::from_secs(30);
    while sessions(&server, "zombie") < players as i64 {
        assert!(Instant::now() < until, "not every session turned zombie");
        thread::sleep(Duration::from_millis(50));
    }
    for step in 1..=3 {
        thread::sleep(Duration::from_secs(zombie_secs / 3));
        let zombie_bytes = LIVE.load(Relaxed).saturating_sub(base);
        println!(
            "{} zombies after {} s: {:.1} MiB of heap, {:.0} bytes each (zombie replay cap {zombie_cap} frames)",
            sessions(&server, "zombie"),
            step * (zombie_secs / 3),
            zombie_bytes as f64 / 1048576.0,
            zombie_bytes as f64 / players as f64
        );
    }
    server.shutdown();
}

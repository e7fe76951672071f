//! Bare, logic-free fan-out relay.
//!
//! Each accepted connection joins a group of K (default 8) by accept order
//! (per worker thread: connection n of a worker is in group n / K). Every
//! inbound frame is copied to the output buffers of the other K-1 members of
//! its group. Output is flushed once per event-loop iteration per dirty
//! connection (one write() of the whole contiguous buffer = gathering), or,
//! with `--mode perframe`, written with one write() per outbound frame.
//!
//! Usage: relay [--port 7000] [--threads 1] [--group 8]
//!              [--mode batch|perframe] [--flush-us 0] [--stats relay.stats]
//!              [--duration SECS] [--quiet] [--cc reno|cubic|bbr] [--spin]

use relay::*;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const LISTENER: Token = Token(usize::MAX);
const NONE: u32 = u32::MAX;
const SCRATCH: usize = 64 * 1024;

#[derive(Default)]
struct Shared {
    conns: AtomicU64,
    inbound: AtomicU64,
    outbound: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    polls: AtomicU64,
}

#[derive(Default)]
struct Local {
    inbound: u64,
    outbound: u64,
    reads: u64,
    writes: u64,
    polls: u64,
}

struct Conn {
    stream: TcpStream,
    leftover: Vec<u8>, // partial inbound frame
    out: Vec<u8>,      // pending outbound bytes
    group: u32,
    slot: u32,
    dirty: bool,   // queued in the dirty list
    blocked: bool, // last write hit EAGAIN/partial: wait for a writable event
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Batch,
    PerFrame,
}

fn make_listener(port: u16) -> TcpListener {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket failed");
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const _, sz);
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one as *const _ as *const _, sz);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as _;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let r = libc::bind(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as _);
        assert!(r == 0, "bind failed: {}", std::io::Error::last_os_error());
        let r = libc::listen(fd, 65535);
        assert!(r == 0, "listen failed");
        TcpListener::from_std(std::net::TcpListener::from_raw_fd(fd))
    }
}

/// Write as much of `c.out` as the socket takes, with ONE write() call.
#[inline]
fn flush(c: &mut Conn, l: &mut Local) -> bool {
    if c.out.is_empty() || c.blocked {
        return true;
    }
    l.writes += 1;
    match c.stream.write(&c.out) {
        Ok(n) if n == c.out.len() => c.out.clear(),
        Ok(n) => {
            c.out.drain(..n);
            c.blocked = true;
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => c.blocked = true,
        Err(e) if e.kind() == ErrorKind::Interrupted => {}
        Err(_) => return false,
    }
    true
}

#[allow(clippy::too_many_arguments)]
fn worker(id: usize, port: u16, k: usize, mode: Mode, flush_us: u64, cc: String, spin: bool, sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut poll = Poll::new().unwrap();
    let mut listener = make_listener(port);
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).unwrap();
    let mut events = Events::with_capacity(4096);

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut groups: Vec<[u32; 64]> = Vec::new(); // K <= 64
    let mut accepted: u64 = 0;
    let mut dirty: Vec<usize> = Vec::new();
    let mut to_close: Vec<usize> = Vec::new();
    let mut scratch = vec![0u8; SCRATCH];
    let mut l = Local::default();
    let mut last_flush = mono_ns();

    while !stop.load(Relaxed) {
        let timeout = if spin {
            Some(Duration::ZERO)
        } else if flush_us > 0 && !dirty.is_empty() {
            let due = last_flush + flush_us * 1000;
            Some(Duration::from_nanos(due.saturating_sub(mono_ns())))
        } else {
            Some(Duration::from_millis(200))
        };
        l.polls += 1;
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            s.set_nodelay(true).ok();
                            set_cc(s.as_raw_fd(), &cc);
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry()
                                .register(&mut s, Token(idx), Interest::READABLE | Interest::WRITABLE)
                                .unwrap();
                            let g = (accepted / k as u64) as usize;
                            let slot = (accepted % k as u64) as usize;
                            accepted += 1;
                            if groups.len() <= g {
                                groups.push([NONE; 64]);
                            }
                            groups[g][slot] = idx as u32;
                            conns[idx] = Some(Conn {
                                stream: s,
                                leftover: Vec::new(),
                                out: Vec::new(),
                                group: g as u32,
                                slot: slot as u32,
                                dirty: false,
                                blocked: false,
                            });
                            sh.conns.fetch_add(1, Relaxed);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            eprintln!("[w{id}] accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let idx = ev.token().0;
            if conns.get(idx).map_or(true, |c| c.is_none()) {
                continue;
            }
            if ev.is_writable() {
                let c = conns[idx].as_mut().unwrap();
                c.blocked = false;
                if !c.out.is_empty() && !flush(c, &mut l) {
                    to_close.push(idx);
                    continue;
                }
            }
            if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
                continue;
            }
            // Read everything available (until a short read / EAGAIN).
            let mut closed = false;
            loop {
                let c = conns[idx].as_mut().unwrap();
                let lo = c.leftover.len();
                scratch[..lo].copy_from_slice(&c.leftover);
                c.leftover.clear();
                l.reads += 1;
                let cap = SCRATCH - lo;
                let n = match c.stream.read(&mut scratch[lo..]) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        c.leftover.extend_from_slice(&scratch[..lo]);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {
                        c.leftover.extend_from_slice(&scratch[..lo]);
                        continue;
                    }
                    Err(_) => {
                        closed = true;
                        break;
                    }
                };
                let g = c.group as usize;
                let total = lo + n;
                // Parse all complete frames and fan them out.
                let mut pos = 0;
                while total - pos >= HDR {
                    let len = u16::from_le_bytes([scratch[pos], scratch[pos + 1]]) as usize;
                    if total - pos < HDR + len {
                        break;
                    }
                    let frame = &scratch[pos..pos + HDR + len];
                    l.inbound += 1;
                    for m in 0..k {
                        let dst = groups[g][m];
                        if dst == NONE || dst as usize == idx {
                            continue;
                        }
                        let d = conns[dst as usize].as_mut().unwrap();
                        l.outbound += 1;
                        if mode == Mode::PerFrame && d.out.is_empty() && !d.blocked {
                            // One write() per outbound frame.
                            l.writes += 1;
                            match d.stream.write(frame) {
                                Ok(w) if w == frame.len() => continue,
                                Ok(w) => {
                                    d.out.extend_from_slice(&frame[w..]);
                                    d.blocked = true;
                                }
                                Err(_) => {
                                    d.out.extend_from_slice(frame);
                                    d.blocked = true;
                                }
                            }
                            continue;
                        }
                        d.out.extend_from_slice(frame);
                        if !d.dirty {
                            d.dirty = true;
                            dirty.push(dst as usize);
                        }
                    }
                    pos += HDR + len;
                }
                let c = conns[idx].as_mut().unwrap();
                c.leftover.extend_from_slice(&scratch[pos..total]);
                if n < cap {
                    break; // short read: socket drained (a new edge will arrive for new data)
                }
            }
            if closed {
                to_close.push(idx);
            }
        }
        // Gathered flush: one write per dirty connection per iteration.
        let now_ok = flush_us == 0 || mono_ns() >= last_flush + flush_us * 1000;
        if now_ok && !dirty.is_empty() {
            last_flush = mono_ns(); // tick period measured from flush start
            for &i in dirty.iter() {
                if let Some(c) = conns[i].as_mut() {
                    c.dirty = false;
                    if !flush(c, &mut l) {
                        to_close.push(i);
                    }
                }
            }
            dirty.clear();
        }
        for i in to_close.drain(..) {
            if let Some(mut c) = conns[i].take() {
                poll.registry().deregister(&mut c.stream).ok();
                groups[c.group as usize][c.slot as usize] = NONE;
                free.push(i);
                sh.conns.fetch_sub(1, Relaxed);
            }
        }
        sh.inbound.fetch_add(l.inbound, Relaxed);
        sh.outbound.fetch_add(l.outbound, Relaxed);
        sh.reads.fetch_add(l.reads, Relaxed);
        sh.writes.fetch_add(l.writes, Relaxed);
        sh.polls.fetch_add(l.polls, Relaxed);
        l = Local::default();
    }
}

fn main() {
    let port: u16 = arg("--port", 7000);
    let threads: usize = arg("--threads", 1);
    let k: usize = arg("--group", 8);
    let mode = match arg::<String>("--mode", "batch".into()).as_str() {
        "batch" => Mode::Batch,
        "perframe" => Mode::PerFrame,
        m => panic!("unknown mode {m}"),
    };
    let flush_us: u64 = arg("--flush-us", 0);
    let stats_path: String = arg("--stats", "relay.stats".into());
    let duration: u64 = arg("--duration", 0);
    let quiet = flag("--quiet");
    let cc: String = arg("--cc", String::new());
    let spin = flag("--spin"); // busy-poll: epoll_wait(timeout=0), never sleep
    assert!(k >= 1 && k <= 64);
    let nofile = raise_nofile(1 << 20);
    let pid = std::process::id();
    eprintln!(
        "relay pid={pid} port={port} threads={threads} group={k} mode={} flush_us={flush_us} cc={cc} spin={spin} nofile={nofile}",
        if mode == Mode::Batch { "batch" } else { "perframe" }
    );

    let sh = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for id in 0..threads {
        let (sh, stop, cc) = (sh.clone(), stop.clone(), cc.clone());
        hs.push(std::thread::spawn(move || worker(id, port, k, mode, flush_us, cc, spin, sh, stop)));
    }

    let snap = |sh: &Shared| RelayStats {
        pid,
        conns: sh.conns.load(Relaxed),
        inbound: sh.inbound.load(Relaxed),
        outbound: sh.outbound.load(Relaxed),
        reads: sh.reads.load(Relaxed),
        writes: sh.writes.load(Relaxed),
        polls: sh.polls.load(Relaxed),
    };
    let t0 = mono_ns();
    let mut prev = snap(&sh);
    let mut tick = 0u64;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let s = snap(&sh);
        let tmp = format!("{stats_path}.tmp");
        if std::fs::write(&tmp, s.to_line()).is_ok() {
            std::fs::rename(&tmp, &stats_path).ok();
        }
        tick += 1;
        if tick % 4 == 0 {
            if !quiet {
                println!(
                    "t={:>4}s conns={} in/s={} out/s={} total/s={} reads/s={} writes/s={} polls/s={}",
                    (mono_ns() - t0) / 1_000_000_000,
                    s.conns,
                    s.inbound - prev.inbound,
                    s.outbound - prev.outbound,
                    s.inbound + s.outbound - prev.inbound - prev.outbound,
                    s.reads - prev.reads,
                    s.writes - prev.writes,
                    s.polls - prev.polls
                );
            }
            prev = s;
        }
        if duration > 0 && mono_ns() - t0 >= duration * 1_000_000_000 {
            stop.store(true, Relaxed);
            break;
        }
    }
    for h in hs {
        h.join().ok();
    }
    std::fs::remove_file(&stats_path).ok();
}

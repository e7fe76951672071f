//! Load generator for `relay`.
//!
//! Opens C connections; each sends one FRAME (2 + 24 bytes) at R Hz, sends
//! spread evenly over time across all connections (paced in ~1 ms poll slots).
//! Each frame carries its CLOCK_MONOTONIC send time; every received fan-out
//! frame's latency (receive - send) goes into an HDR histogram.
//! Relay CPU / RSS come from /proc/<relay pid> (pid read from the relay's
//! stats file or --server-pid), relay counters from the stats file.
//!
//! Usage: loadgen [--addr 127.0.0.1:7000] [--conns 10000] [--rate 5]
//!                [--warmup 5] [--duration 30] [--threads 1] [--src-ips 1]
//!                [--stats relay.stats] [--server-pid PID] [--label NAME]
//!                [--order random|seq] [--cc reno|cubic|bbr] [--spin]

use hdrhistogram::Histogram;
use relay::*;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::time::Duration;

struct Conn {
    stream: TcpStream,
    id: u32,
    seq: u32,
    leftover: Vec<u8>,
    pending: Vec<u8>,
    blocked: bool,
}

struct ThreadResult {
    hist: Histogram<u64>,
    sent_win: u64,
    recv_win: u64,
    sent_total: u64,
    recv_total: u64,
    max_lag: u64,
    deferred: u64,
    reads: u64,
    writes: u64,
    errors: u64,
}

fn connect_from(src: Ipv4Addr, dst: SocketAddrV4, cc: &str) -> std::io::Result<std::net::TcpStream> {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = std::net::TcpStream::from_raw_fd(fd);
        set_cc(fd, cc);
        let one: libc::c_int = 1;
        // Let the kernel pick the port at connect() time (4-tuple aware).
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &one as *const _ as *const _, 4);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as _;
        sa.sin_addr.s_addr = u32::from(src).to_be();
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as _) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as _;
        da.sin_port = dst.port().to_be();
        da.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
        if libc::connect(fd, &da as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as _) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_thread(
    tid: usize,
    nthreads: usize,
    mut conns: Vec<Conn>,
    rate: f64,
    t_start: u64,
    m_start: u64,
    m_end: u64,
    seq_order: bool,
    spin: bool,
) -> ThreadResult {
    let mut poll = Poll::new().unwrap();
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(&mut c.stream, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
    }
    let mut events = Events::with_capacity(4096);
    let n = conns.len() as u64;
    // This thread's send schedule: k-th send at t_start + (k + phase) / (n*rate).
    let per_sec = n as f64 * rate;
    let interval_ns = 1e9 / per_sec;
    let phase_ns = interval_ns * tid as f64 / nthreads as f64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut r = ThreadResult {
        hist: Histogram::new(3).unwrap(),
        sent_win: 0,
        recv_win: 0,
        sent_total: 0,
        recv_total: 0,
        max_lag: 0,
        deferred: 0,
        reads: 0,
        writes: 0,
        errors: 0,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    // Send order: a fixed random permutation (random phase per connection,
    // so group members do not send back-to-back) unless --order seq.
    let mut order: Vec<u32> = (0..n as u32).collect();
    if !seq_order {
        let mut x: u64 = 0x9E3779B97F4A7C15 ^ (tid as u64 + 1);
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    let mut frame = [0u8; FRAME];
    frame[0..2].copy_from_slice(&(PAYLOAD as u16).to_le_bytes());
    // Drain anything that arrives until the end, then a short grace period.
    let hard_end = m_end + 300_000_000;
    loop {
        let now = mono_ns();
        if now >= hard_end {
            break;
        }
        if now < m_end && now >= t_start {
            let due = (((now - t_start) as f64 - phase_ns) / interval_ns).max(0.0) as u64 + 1;
            if due > sent + 1 {
                r.max_lag = r.max_lag.max(due - sent - 1);
            }
            while sent < due {
                let ci = order[(sent % n) as usize] as usize;
                let c = &mut conns[ci];
                let ts = mono_ns();
                frame[2..10].copy_from_slice(&ts.to_le_bytes());
                frame[10..14].copy_from_slice(&c.id.to_le_bytes());
                frame[14..18].copy_from_slice(&c.seq.to_le_bytes());
                c.seq = c.seq.wrapping_add(1);
                sent += 1;
                r.sent_total += 1;
                if ts >= m_start && ts < m_end {
                    r.sent_win += 1;
                }
                if !c.pending.is_empty() || c.blocked {
                    c.pending.extend_from_slice(&frame);
                    r.deferred += 1;
                    continue;
                }
                r.writes += 1;
                match c.stream.write(&frame) {
                    Ok(w) if w == FRAME => {}
                    Ok(w) => {
                        c.pending.extend_from_slice(&frame[w..]);
                        c.blocked = true;
                        r.deferred += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        c.pending.extend_from_slice(&frame);
                        c.blocked = true;
                        r.deferred += 1;
                    }
                    Err(_) => r.errors += 1,
                }
            }
        }
        let now = mono_ns();
        let next = if now < t_start {
            t_start
        } else if now < m_end {
            t_start + ((sent as f64 + phase_ns / interval_ns) * interval_ns) as u64
        } else {
            hard_end
        };
        let timeout = if spin { Duration::ZERO } else { Duration::from_nanos(next.saturating_sub(now)) };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_writable() && c.blocked {
                c.blocked = false;
                if !c.pending.is_empty() {
                    r.writes += 1;
                    match c.stream.write(&c.pending) {
                        Ok(w) => {
                            c.pending.drain(..w);
                            if !c.pending.is_empty() {
                                c.blocked = true;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => c.blocked = true,
                        Err(_) => r.errors += 1,
                    }
                }
            }
            if !ev.is_readable() {
                continue;
            }
            loop {
                let lo = c.leftover.len();
                buf[..lo].copy_from_slice(&c.leftover);
                c.leftover.clear();
                r.reads += 1;
                let cap = buf.len() - lo;
                let got = match c.stream.read(&mut buf[lo..]) {
                    Ok(0) => {
                        r.errors += 1;
                        break;
                    }
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        c.leftover.extend_from_slice(&buf[..lo]);
                        break;
                    }
                    Err(_) => {
                        c.leftover.extend_from_slice(&buf[..lo]);
                        r.errors += 1;
                        break;
                    }
                };
                let now = mono_ns();
                let total = lo + got;
                let mut pos = 0;
                while total - pos >= HDR {
                    let len = u16::from_le_bytes([buf[pos], buf[pos + 1]]) as usize;
                    if total - pos < HDR + len {
                        break;
                    }
                    let ts = u64::from_le_bytes(buf[pos + 2..pos + 10].try_into().unwrap());
                    r.recv_total += 1;
                    if ts >= m_start && ts < m_end {
                        r.recv_win += 1;
                        hist.saturating_record(now.saturating_sub(ts).max(1));
                    }
                    pos += HDR + len;
                }
                c.leftover.extend_from_slice(&buf[pos..total]);
                if got < cap {
                    break;
                }
            }
        }
    }
    r.hist = hist;
    r
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let addr: SocketAddrV4 = arg("--addr", "127.0.0.1:7000".parse().unwrap());
    let nconns: usize = arg("--conns", 10_000);
    let rate: f64 = arg("--rate", 5.0);
    let warmup: f64 = arg("--warmup", 5.0);
    let duration: f64 = arg("--duration", 30.0);
    let threads: usize = arg("--threads", 1);
    let src_ips: u8 = arg("--src-ips", 1);
    let stats_path: String = arg("--stats", "relay.stats".into());
    let label: String = arg("--label", "run".into());
    let seq_order = arg::<String>("--order", "random".into()) == "seq";
    let cc: String = arg("--cc", String::new());
    let spin = flag("--spin"); // busy-poll instead of sleeping in epoll_wait
    let nofile = raise_nofile(1 << 20);

    let rs0 = RelayStats::read(&stats_path);
    let spid: u32 = arg("--server-pid", rs0.map_or(0, |r| r.pid));
    eprintln!(
        "loadgen: conns={nconns} rate={rate}Hz threads={threads} warmup={warmup}s duration={duration}s relay_pid={spid} nofile={nofile}"
    );

    // Connect phase (blocking connects, then switch to non-blocking).
    let tc = mono_ns();
    let mut all = Vec::with_capacity(nconns);
    for i in 0..nconns {
        let src = Ipv4Addr::new(127, 0, 0, 1 + (i % src_ips.max(1) as usize) as u8);
        let s = loop {
            match connect_from(src, addr, &cc) {
                Ok(s) => break s,
                Err(e) => {
                    eprintln!("connect {i}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        all.push(Conn {
            stream: TcpStream::from_std(s),
            id: i as u32,
            seq: 0,
            leftover: Vec::new(),
            pending: Vec::new(),
            blocked: false,
        });
    }
    eprintln!("connected {} in {:.2}s", nconns, (mono_ns() - tc) as f64 / 1e9);
    // Wait until the relay has accepted them all (so groups are complete).
    for _ in 0..200 {
        match RelayStats::read(&stats_path) {
            Some(r) if r.conns >= nconns as u64 => break,
            None => break,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }

    let t_start = mono_ns() + 200_000_000;
    let m_start = t_start + (warmup * 1e9) as u64;
    let m_end = m_start + (duration * 1e9) as u64;

    // Distribute connections over threads.
    let mut chunks: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    let per = nconns.div_ceil(threads);
    for (i, c) in all.into_iter().enumerate() {
        chunks[i / per].push(c);
    }
    let mut hs = Vec::new();
    for (tid, ch) in chunks.into_iter().enumerate() {
        hs.push(std::thread::spawn(move || run_thread(tid, threads, ch, rate, t_start, m_start, m_end, seq_order, spin)));
    }

    // Sample CPU and relay counters at the window edges.
    let sleep_until = |t: u64| {
        let now = mono_ns();
        if t > now {
            std::thread::sleep(Duration::from_nanos(t - now));
        }
    };
    let me = std::process::id();
    sleep_until(m_start);
    let s_cpu0 = proc_cpu_ticks(spid).unwrap_or(0);
    let l_cpu0 = proc_cpu_ticks(me).unwrap_or(0);
    let sys0 = sys_cpu();
    let all0 = all_proc_ticks();
    let rs_a = RelayStats::read(&stats_path).unwrap_or_default();
    let ta = mono_ns();
    let mut tcpmem_max = 0;
    while mono_ns() + 500_000_000 < m_end {
        std::thread::sleep(Duration::from_millis(500));
        tcpmem_max = tcpmem_max.max(tcp_mem_pages());
    }
    sleep_until(m_end);
    let s_cpu1 = proc_cpu_ticks(spid).unwrap_or(0);
    let l_cpu1 = proc_cpu_ticks(me).unwrap_or(0);
    let sys1 = sys_cpu();
    let all1 = all_proc_ticks();
    let rs_b = RelayStats::read(&stats_path).unwrap_or_default();
    let tb = mono_ns();
    let rss = proc_rss_kb(spid).unwrap_or((0, 0));

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let (mut sent_win, mut recv_win, mut max_lag, mut deferred, mut errors, mut sent_total, mut recv_total) =
        (0, 0, 0, 0, 0, 0, 0);
    let (mut lreads, mut lwrites) = (0, 0);
    for h in hs {
        let r = h.join().unwrap();
        hist.add(&r.hist).unwrap();
        sent_win += r.sent_win;
        recv_win += r.recv_win;
        sent_total += r.sent_total;
        recv_total += r.recv_total;
        max_lag = max_lag.max(r.max_lag);
        deferred += r.deferred;
        errors += r.errors;
        lreads += r.reads;
        lwrites += r.writes;
    }

    let tck = clk_tck() as f64;
    let win = (tb - ta) as f64 / 1e9;
    let srv_cpu = (s_cpu1 - s_cpu0) as f64 / tck / win * 100.0;
    let lg_cpu = (l_cpu1 - l_cpu0) as f64 / tck / win * 100.0;
    let sys_busy = (sys1.0 - sys0.0) as f64 / (sys1.1 - sys0.1).max(1) as f64 * 200.0; // % of one core, 2 cores
    let sys_softirq = (sys1.2 - sys0.2) as f64 / (sys1.1 - sys0.1).max(1) as f64 * 200.0;
    let s_in = (rs_b.inbound - rs_a.inbound) as f64 / win;
    let s_out = (rs_b.outbound - rs_a.outbound) as f64 / win;
    let s_reads = (rs_b.reads - rs_a.reads) as f64 / win;
    let s_writes = (rs_b.writes - rs_a.writes) as f64 / win;
    let s_polls = (rs_b.polls - rs_a.polls) as f64 / win;
    let target_in = nconns as f64 * rate;
    let us_per_msg = if s_in + s_out > 0.0 { (s_cpu1 - s_cpu0) as f64 / tck * 1e6 / ((s_in + s_out) * win) } else { 0.0 };
    let machine_us_per_msg = if s_in + s_out > 0.0 { sys_busy / 100.0 * 1e6 / (s_in + s_out) } else { 0.0 };
    let expected_recv = sent_win as f64 * 7.0; // K-1 = 7 for the default group size

    println!("=== {label} ===");
    println!("connections         {nconns}  (rate {rate} Hz/conn, loadgen threads {threads})");
    println!("window              {:.1}s after {warmup}s warmup", win);
    println!("target in/s         {:.0}   target total/s {:.0}", target_in, target_in * 8.0);
    println!(
        "loadgen sent/s      {:.0}   recv/s {:.0}   recv/expected(x7) {:.4}",
        sent_win as f64 / duration,
        recv_win as f64 / duration,
        recv_win as f64 / expected_recv.max(1.0)
    );
    println!("relay in/s          {:.0}   out/s {:.0}   TOTAL PPS {:.0}", s_in, s_out, s_in + s_out);
    println!(
        "relay syscalls/s    reads {:.0}  writes {:.0}  epoll_waits {:.0}  (out frames/write {:.2})",
        s_reads,
        s_writes,
        s_polls,
        s_out / s_writes.max(1.0)
    );
    println!("loadgen syscalls/s  reads {:.0}  writes {:.0}", lreads as f64 / (win + warmup), lwrites as f64 / (win + warmup));
    println!(
        "CPU % (100=1 core)   relay {:.1}  loadgen {:.1}  machine busy {:.1} (softirq {:.1})  other {:.1}",
        srv_cpu,
        lg_cpu,
        sys_busy,
        sys_softirq,
        (sys_busy - srv_cpu - lg_cpu).max(0.0)
    );
    let mut others: Vec<(u64, String)> = all1
        .iter()
        .filter(|(p, _)| **p != spid && **p != me)
        .map(|(p, (c, t))| (t - all0.get(p).map_or(0, |x| x.1).min(*t), format!("{c}({p})")))
        .filter(|x| x.0 > 0)
        .collect();
    others.sort_by(|a, b| b.0.cmp(&a.0));
    let others_pct = others.iter().map(|x| x.0).sum::<u64>() as f64 / tck / win * 100.0;
    let others: Vec<String> =
        others.iter().take(4).map(|(t, n)| format!("{n} {:.1}%", *t as f64 / tck / win * 100.0)).collect();
    println!("other processes     total {:.1}%: {}", others_pct, others.join(", "));
    println!("relay CPU us/msg    {:.3}  (relay cpu-seconds / (in+out) frames)", us_per_msg);
    println!("machine CPU us/msg  {:.3}  (all busy CPU incl. loadgen and softirq / (in+out) frames)", machine_us_per_msg);
    println!(
        "relay RSS           {:.1} MiB (HWM {:.1} MiB); kernel TCP mem max {:.1} MiB",
        rss.0 as f64 / 1024.0,
        rss.1 as f64 / 1024.0,
        tcpmem_max as f64 * 4096.0 / 1048576.0
    );
    println!(
        "latency us          p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  p99.99 {:.0}  max {:.0}  mean {:.0}  (n={})",
        pct(&hist, 0.5),
        pct(&hist, 0.9),
        pct(&hist, 0.99),
        pct(&hist, 0.999),
        pct(&hist, 0.9999),
        hist.max() as f64 / 1000.0,
        hist.mean() / 1000.0,
        hist.len()
    );
    println!("sender max lag      {max_lag} frames; deferred writes {deferred}; errors {errors}; sent total {sent_total} recv total {recv_total}");
    println!(
        "RESULT label={label} conns={nconns} rate={rate} total_pps={:.0} in_pps={:.0} srv_cpu={:.1} lg_cpu={:.1} sys_cpu={:.1} us_per_msg={:.3} machine_us_per_msg={:.3} rss_mib={:.1} p50_us={:.0} p99_us={:.0} p999_us={:.0} max_us={:.0} recv_ratio={:.4} others_pct={:.1} srv_writes={:.0} srv_reads={:.0} srv_polls={:.0}",
        s_in + s_out,
        s_in,
        srv_cpu,
        lg_cpu,
        sys_busy,
        us_per_msg,
        machine_us_per_msg,
        rss.0 as f64 / 1024.0,
        pct(&hist, 0.5),
        pct(&hist, 0.99),
        pct(&hist, 0.999),
        hist.max() as f64 / 1000.0,
        recv_win as f64 / expected_recv.max(1.0),
        others_pct,
        s_writes,
        s_reads,
        s_polls
    );
}

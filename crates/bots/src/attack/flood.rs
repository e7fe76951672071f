//! What one attacker does: one function per attack, each run as a task of
//! the attack's own runtime, holding one permit of the connection cap.
//!
//! Every socket binds an `--attack-source` address before it connects and
//! closes with a reset (zero linger), so that tens of thousands of short
//! connections leave no `TIME_WAIT` behind on the bots' side.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rand::{rngs::SmallRng, Rng};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use super::pace::Pacer;
use super::wire::{self, Reader, Seen};

/// Bound on one TCP connect: a full listen backlog drops SYNs, and the
/// kernel would retry for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an attacker waits for `Welcome` (or `Close`) after `Hello`.
const LOGIN_WAIT: Duration = Duration::from_secs(5);

/// `garbage`: after writing, how long the attacker stays to see how the
/// server closes the connection.
const GARBAGE_HOLD: Duration = Duration::from_secs(2);

/// `slowloris`: the payload length the dribbled frame announces (legal:
/// under the server's 1024-byte cap). The attacker never sends the last
/// byte.
const SLOW_FRAME_LEN: u16 = 1000;

/// `msgflood`: how often a session writes its due inputs (in one write).
const FLOOD_TICK: Duration = Duration::from_millis(10);

/// `msgflood`: a session the server closed logs in again (with a fresh
/// name) after this pause, or the server's `retry_after_ms` if longer (up
/// to [`MAX_RETRY_WAIT`]).
const RELOGIN_PAUSE: Duration = Duration::from_millis(250);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

/// `msgflood`: a write the server has not taken in this long ends the
/// session's life (the attacker logs in again).
const STALLED_WRITE: Duration = Duration::from_secs(1);

/// Held `loginflood` sessions (`--attack-keep`) acknowledge this often,
/// well within the server's heartbeat timeout.
const KEEP_ACK_EVERY: Duration = Duration::from_secs(1);

/// Close codes are counted by number up to this; higher ones share the
/// last slot.
pub const CLOSE_CODE_SLOTS: usize = 64;

/// What the attackers did and what the server did to them. Kept apart from
/// the legit players' counters.
#[derive(Debug)]
pub struct Counters {
    /// TCP connects started.
    pub attempts: AtomicU64,
    /// TCP connects that succeeded.
    pub connected: AtomicU64,
    /// Connects refused, reset or timed out.
    pub refused: AtomicU64,
    /// Local failures before the connect (no socket, the source address
    /// cannot be bound: ports exhausted, address not local).
    pub local_errors: AtomicU64,
    /// Actions not started because `--attack-max-conns` were held.
    pub capped: AtomicU64,
    /// `msgflood` inputs given up because a session fell behind its pace.
    pub skipped: AtomicU64,
    /// Inputs (`msgflood`) or `Hello`s (`loginflood`) written.
    pub sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// `Welcome`s received.
    pub welcomes: AtomicU64,
    /// Connections the server ended (EOF, reset, or after a `Close`).
    pub closed_by_server: AtomicU64,
    /// ... of which without a `Close` frame.
    pub closed_silently: AtomicU64,
    /// `Close` frames by code.
    pub close_codes: [AtomicU64; CLOSE_CODE_SLOTS],
    /// Connections open now, and the most at once.
    pub held: AtomicI64,
    pub held_peak: AtomicI64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            attempts: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            local_errors: AtomicU64::new(0),
            capped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            welcomes: AtomicU64::new(0),
            closed_by_server: AtomicU64::new(0),
            closed_silently: AtomicU64::new(0),
            close_codes: std::array::from_fn(|_| AtomicU64::new(0)),
            held: AtomicI64::new(0),
            held_peak: AtomicI64::new(0),
        }
    }
}

impl Counters {
    fn close_code(&self, code: i32) {
        let slot = usize::try_from(code)
            .unwrap_or(CLOSE_CODE_SLOTS - 1)
            .min(CLOSE_CODE_SLOTS - 1);
        self.close_codes[slot].fetch_add(1, Relaxed);
    }

    /// The server ended a connection; `close` is the code of its `Close`
    /// frame, if one came.
    fn server_closed(&self, close: Option<i32>) {
        self.closed_by_server.fetch_add(1, Relaxed);
        match close {
            Some(code) => self.close_code(code),
            None => {
                self.closed_silently.fetch_add(1, Relaxed);
            }
        }
    }

    fn wrote(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }
}

/// One open attacker connection, counted in `held` while it lives.
struct Held(Arc<Counters>);

impl Held {
    fn new(c: &Arc<Counters>) -> Held {
        let now = c.held.fetch_add(1, Relaxed) + 1;
        c.held_peak.fetch_max(now, Relaxed);
        Held(c.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Relaxed);
    }
}

/// Fresh character names: `{tag}_{n}`, the tag random per run so reruns
/// against one server do not log into old characters.
#[derive(Debug)]
pub struct Names {
    tag: String,
    next: AtomicU64,
}

impl Names {
    pub fn new(seed: u64) -> Names {
        Names {
            tag: format!("x{:06x}", seed & 0xff_ffff),
            next: AtomicU64::new(0),
        }
    }

    /// At most 20 chars (the server takes 24).
    pub fn fresh(&self) -> String {
        let n = self.next.fetch_add(1, Relaxed) % 1_000_000_000_000;
        format!("{}_{n}", self.tag)
    }
}

/// What every attacker of one run shares.
#[derive(Debug)]
pub struct Ctx {
    pub target: SocketAddr,
    pub c: Arc<Counters>,
    /// The attack's end: every attacker lets go by then.
    pub end: Instant,
    pub dribble: Duration,
    pub keep: bool,
    pub names: Names,
}

/// Binds `src`, connects to the target; counts the outcome.
async fn connect(ctx: &Ctx, src: IpAddr) -> Option<(TcpStream, Held)> {
    let c = &ctx.c;
    c.attempts.fetch_add(1, Relaxed);
    let sock = match ctx.target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let bound = sock.and_then(|s| {
        s.set_zero_linger()?;
        s.set_nodelay(true)?;
        s.bind(SocketAddr::new(src, 0))?;
        Ok(s)
    });
    let sock = match bound {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, %src, "attacker socket");
            c.local_errors.fetch_add(1, Relaxed);
            return None;
        }
    };
    match timeout(CONNECT_TIMEOUT, sock.connect(ctx.target)).await {
        Ok(Ok(s)) => {
            c.connected.fetch_add(1, Relaxed);
            Some((s, Held::new(c)))
        }
        _ => {
            c.refused.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Reads until the server ends the connection or `until`; counts how it
/// ended. `true` when the server ended it.
async fn hold(ctx: &Ctx, s: &mut TcpStream, r: &mut Reader, until: Instant) -> bool {
    let mut close = None;
    loop {
        while let Some(seen) = r.next_frame() {
            if let Seen::Close { code, .. } = seen {
                close.get_or_insert(code);
            }
        }
        match timeout_at(until, r.read_from(s)).await {
            Err(_) => return false,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                ctx.c.server_closed(close);
                return true;
            }
        }
    }
}

/// `connflood`: connect and hold the socket, never speaking.
pub async fn connflood(ctx: Arc<Ctx>, src: IpAddr, _permit: OwnedSemaphorePermit) {
    let Some((mut s, _held)) = connect(&ctx, src).await else {
        return;
    };
    hold(&ctx, &mut s, &mut Reader::default(), ctx.end).await;
}

/// `slowloris`: announce a frame, then dribble its payload a byte at a
/// time, never finishing it.
pub async fn slowloris(ctx: Arc<Ctx>, src: IpAddr, _permit: OwnedSemaphorePermit) {
    let Some((mut s, _held)) = connect(&ctx, src).await else {
        return;
    };
    let mut r = Reader::default();
    let mut close = None;
    let mut written = 0u16;
    let mut next = Instant::now();
    let (mut rd, mut wr) = s.split();
    loop {
        tokio::select! {
            got = r.read_from(&mut rd) => {
                while let Some(seen) = r.next_frame() {
                    if let Seen::Close { code, .. } = seen {
                        close.get_or_insert(code);
                    }
                }
                if !matches!(got, Ok(n) if n > 0) {
                    ctx.c.server_closed(close);
                    return;
                }
            }
            _ = sleep_until(next) => {
                if Instant::now() >= ctx.end {
                    return;
                }
                let h = SLOW_FRAME_LEN.to_le_bytes();
                let first = [h[0], h[1], b'\n'];
                let bytes: &[u8] = if written == 0 { &first } else { &first[2..] };
                let n = bytes.len();
                if written + 1 < SLOW_FRAME_LEN {
                    if wr.write_all(bytes).await.is_err() {
                        ctx.c.server_closed(close);
                        return;
                    }
                    ctx.c.wrote(n);
                    written += 1;
                }
                next = (Instant::now() + ctx.dribble).min(ctx.end);
            }
        }
    }
}

/// `garbage`: connect, write one burst of bad bytes (random bytes, an
/// oversized header, an empty frame, or a well-sized frame of random
/// payload), and watch how the server closes.
pub async fn garbage(ctx: Arc<Ctx>, src: IpAddr, _permit: OwnedSemaphorePermit, mut rng: SmallRng) {
    let Some((mut s, _held)) = connect(&ctx, src).await else {
        return;
    };
    let bytes = garbage_bytes(&mut rng);
    if s.write_all(&bytes).await.is_err() {
        ctx.c.server_closed(None);
        return;
    }
    ctx.c.wrote(bytes.len());
    let until = (Instant::now() + GARBAGE_HOLD).min(ctx.end);
    hold(&ctx, &mut s, &mut Reader::default(), until).await;
}

/// One burst of bad bytes, of one of four kinds.
pub fn garbage_bytes(rng: &mut SmallRng) -> Vec<u8> {
    let kind = rng.random_range(0..4u8);
    let (header, n): (Option<[u8; 2]>, usize) = match kind {
        // Random bytes: most often a header over the cap.
        0 => (None, rng.random_range(16..512)),
        // The largest header the format allows.
        1 => (Some([0xff, 0xff]), 64),
        // An empty frame.
        2 => (Some([0, 0]), 0),
        // A frame of legal size whose payload is random.
        _ => {
            let n = rng.random_range(8..256usize);
            (Some((n as u16).to_le_bytes()), n)
        }
    };
    let mut v = Vec::with_capacity(2 + n);
    if let Some(h) = header {
        v.extend_from_slice(&h);
    }
    v.extend((0..n).map(|_| rng.random::<u8>()));
    v
}

/// Waits for the answer to `Hello`; counts it. `Ok(true)` on `Welcome`,
/// `Ok(false)` on `Close` / EOF (counted), `Err(retry)` when the server
/// said when to come back.
async fn await_welcome(ctx: &Ctx, s: &mut TcpStream, r: &mut Reader) -> Result<bool, Duration> {
    let deadline = Instant::now() + LOGIN_WAIT;
    loop {
        while let Some(seen) = r.next_frame() {
            match seen {
                Seen::Welcome => {
                    ctx.c.welcomes.fetch_add(1, Relaxed);
                    return Ok(true);
                }
                Seen::Close {
                    code,
                    retry_after_ms,
                } => {
                    ctx.c.server_closed(Some(code));
                    return Err(Duration::from_millis(u64::from(retry_after_ms)));
                }
                _ => {}
            }
        }
        match timeout_at(deadline, r.read_from(s)).await {
            Err(_) => return Ok(false),
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                ctx.c.server_closed(None);
                return Ok(false);
            }
        }
    }
}

/// Connects and sends `Hello` with a fresh name.
async fn login(ctx: &Ctx, src: IpAddr) -> Option<(TcpStream, Held)> {
    let (mut s, held) = connect(ctx, src).await?;
    let mut out = BytesMut::with_capacity(64);
    wire::hello(&mut out, &ctx.names.fresh());
    if s.write_all(&out).await.is_err() {
        ctx.c.server_closed(None);
        return None;
    }
    ctx.c.sent.fetch_add(1, Relaxed);
    ctx.c.wrote(out.len());
    Some((s, held))
}

/// `loginflood`: one `Hello` with a fresh name; on `Welcome`, drop the
/// socket (the session stays behind as a zombie) or, with
/// `--attack-keep`, hold the session until the attack ends.
pub async fn loginflood(ctx: Arc<Ctx>, src: IpAddr, _permit: OwnedSemaphorePermit) {
    let Some((mut s, _held)) = login(&ctx, src).await else {
        return;
    };
    let mut r = Reader::default();
    if !matches!(await_welcome(&ctx, &mut s, &mut r).await, Ok(true)) || !ctx.keep {
        return;
    }
    // Held: acknowledge what arrives so the session looks alive.
    let mut frames = 0u64;
    let mut out = BytesMut::with_capacity(16);
    let mut close = None;
    loop {
        while let Some(seen) = r.next_frame() {
            match seen {
                Seen::Counted => frames += 1,
                Seen::Close { code, .. } => {
                    close.get_or_insert(code);
                }
                _ => {}
            }
        }
        let until = (Instant::now() + KEEP_ACK_EVERY).min(ctx.end);
        match timeout_at(until, r.read_from(&mut s)).await {
            Ok(Ok(n)) if n > 0 => continue,
            Ok(_) => {
                ctx.c.server_closed(close);
                return;
            }
            Err(_) if Instant::now() >= ctx.end => return,
            Err(_) => {
                out.clear();
                wire::ack(&mut out, frames);
                if s.write_all(&out).await.is_err() {
                    ctx.c.server_closed(close);
                    return;
                }
                ctx.c.wrote(out.len());
            }
        }
    }
}

/// `msgflood`: one attacker session sending `Ping` inputs at `rate` a
/// second (its share of `--attack-rate`), acknowledging what it receives;
/// when the server closes it, it logs in again with a fresh name.
pub async fn msgflood(
    ctx: Arc<Ctx>,
    sources: Vec<IpAddr>,
    rate: f64,
    _permit: OwnedSemaphorePermit,
) {
    let mut life = 0usize;
    while Instant::now() < ctx.end {
        let src = sources[life % sources.len()];
        life += 1;
        let wait = match flood_session(&ctx, src, rate).await {
            Some(retry) => retry.clamp(RELOGIN_PAUSE, MAX_RETRY_WAIT),
            None => RELOGIN_PAUSE,
        };
        let until = (Instant::now() + wait).min(ctx.end);
        sleep_until(until).await;
    }
}

/// One life of a `msgflood` session; `Some(retry_after)` when the server
/// refused the login with one.
async fn flood_session(ctx: &Ctx, src: IpAddr, rate: f64) -> Option<Duration> {
    let (mut s, _held) = login(ctx, src).await?;
    let mut r = Reader::default();
    match await_welcome(ctx, &mut s, &mut r).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(retry) => return Some(retry),
    }
    let (mut rd, mut wr) = s.split();
    let start = Instant::now();
    let mut pacer = Pacer::new(rate);
    let mut seq = 0u32;
    let mut frames = 0u64;
    let mut close = None;
    let mut out = BytesMut::with_capacity(4096);
    let mut next = start;
    loop {
        tokio::select! {
            got = r.read_from(&mut rd) => {
                while let Some(seen) = r.next_frame() {
                    match seen {
                        Seen::Counted => frames += 1,
                        Seen::Close { code, .. } => {
                            close.get_or_insert(code);
                        }
                        _ => {}
                    }
                }
                if !matches!(got, Ok(n) if n > 0) {
                    ctx.c.server_closed(close);
                    return None;
                }
            }
            _ = sleep_until(next) => {
                let now = Instant::now();
                if now >= ctx.end {
                    return None;
                }
                let skipped = pacer.skipped();
                let n = pacer.due(now - start);
                ctx.c.skipped.fetch_add(pacer.skipped() - skipped, Relaxed);
                out.clear();
                for _ in 0..n {
                    seq = seq.wrapping_add(1);
                    wire::ping(&mut out, seq, frames, seq.into());
                }
                if !out.is_empty() {
                    // A server that stops reading for a second ends this
                    // life: a write cut short leaves half a frame on the
                    // wire, so the connection cannot carry another.
                    match timeout(STALLED_WRITE, wr.write_all(&out)).await {
                        Ok(Ok(())) => {
                            ctx.c.sent.fetch_add(n, Relaxed);
                            ctx.c.wrote(out.len());
                        }
                        Ok(Err(_)) => {
                            ctx.c.server_closed(close);
                            return None;
                        }
                        Err(_) => return None,
                    }
                }
                next = now + FLOOD_TICK;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn garbage_is_never_a_valid_first_frame() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..2_000 {
            let b = garbage_bytes(&mut rng);
            assert!(b.len() >= 2 && b.len() < 512, "{}", b.len());
            match tether_proto::split_frame(&b, 1024) {
                // Too large, empty, or not yet whole: refused or stalled.
                Err(_) | Ok(None) => {}
                Ok(Some((payload, _))) => {
                    if let Ok(m) = tether_proto::decode_client(payload) {
                        // Random bytes may decode by chance; never as a
                        // credentialed Hello with a valid name.
                        if let Some(tether_proto::pb::client_message::Msg::Hello(h)) = m.msg {
                            assert!(h.protocol_version != 1 || h.auth.is_none());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn names_are_fresh_and_legal() {
        let n = Names::new(0xdead_beef);
        let a = n.fresh();
        let b = n.fresh();
        assert_ne!(a, b);
        assert!(tether_client::is_valid_name(&a), "{a}");
        n.next.store(u64::MAX, Relaxed);
        let long = n.fresh();
        assert!(tether_client::is_valid_name(&long), "{long}");
    }

    #[test]
    fn close_codes_count_by_number() {
        let c = Counters::default();
        c.server_closed(Some(13));
        c.server_closed(Some(13));
        c.server_closed(Some(1000));
        c.server_closed(None);
        assert_eq!(c.close_codes[13].load(Relaxed), 2);
        assert_eq!(c.close_codes[CLOSE_CODE_SLOTS - 1].load(Relaxed), 1);
        assert_eq!(c.closed_by_server.load(Relaxed), 4);
        assert_eq!(c.closed_silently.load(Relaxed), 1);
    }
}

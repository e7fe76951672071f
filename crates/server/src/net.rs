//! The I/O thread: accepts connections, reads and decodes client frames,
//! writes server frames with gathering writes.
//!
//! Connections are only pipes. An I/O thread knows which shard a connection
//! talks to, never which session or character is behind it; sessions live on
//! the shards and survive the connection.
//!
//! ```text
//!  accept -> handshake (Hello / Resume, deadline) -> bound to a shard
//!  readable: read 64 KiB chunks -> split frames -> decode -> ToShard ring
//!  ToIo ring -> per-connection write queue (shared frames) -> writev <= 64 frames
//! ```
//!
//! Reading stops (TCP pushes back on the clients) while a shard's inbound ring
//! and this thread's overflow for it are full; writing never blocks: a
//! connection whose backlog passes `write_queue_cap_bytes` is cut and its
//! session turns zombie, keeping its frames for replay.
//!
//! What a connection may send, and what happens when it breaks a rule, is
//! decided by its [`Gate`] (`tether_engine::gate`, sans IO): this thread
//! hands it each decoded frame and carries out the [`Step`] it answers
//! (forward to a shard, drop, close with a code, a retry hint and a strike).
//! The per-address defences are the [`crate::guard`]'s, asked cheapest
//! question first: at accept (before any buffer is allocated for the peer),
//! at the first frame (through the gate's [`Admission`], before any crypto
//! or storage), and per message through the gate's own allowance (no lock).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tether_engine::gate::{
    decode_incoming, Admission, AuthRefused, Close, Count, Dropped, Gate, GateConfig, Incoming,
    InputLimit, LoginKind, LoginRefused, Misbehaviour, Step, Strike,
};
use tether_engine::Game;
use tether_proto::pb::{self, CloseCode};
use tether_proto::{split_frame, DecodeError};
use tracing::{debug, warn};

use crate::auth;
use crate::config::{AuthMode, Config};
use crate::control::{self, IoAnswer, IoQuery, LinkInfo, RTT_SAMPLE};
use crate::directory::Directory;
use crate::guard::{Defences, Guard, Refusal};
use crate::kernel_filter;
use crate::link::{close_frame, ConnLoss, ConnRef, IoWaker, ShardLink, ToIo, ToShard};
use crate::metrics::{labels, Metrics};
use crate::uring::{self, MAX_IOV};
use tether_proto::ws::{self, WsConn};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const WS_LISTENER: Token = Token(usize::MAX - 3);

/// Bytes read per `read` call. Big reads decode many frames per syscall; one
/// buffer per thread, so the size costs nothing per connection.
const READ_CHUNK: usize = 64 * 1024;

/// Reads per readable event before moving on to other connections, so one
/// fast sender cannot starve the rest; the connection is revisited next turn.
const READS_PER_EVENT: usize = 4;

/// Inbound messages held per shard when its ring is full, before this
/// thread stops reading altogether.
const INBOUND_OVERFLOW_CAP: usize = 16 * 1024;

/// Bytes a connection may hold unparsed between its `Hello` and the
/// shard's `Welcome` (the frames a client pipelines behind its Hello: the
/// shard drops messages for a login still loading its character, so they
/// wait here and are handled in order once the Welcome is queued). At the
/// cap this connection's reading pauses and TCP pushes back on the client;
/// nothing is dropped. 4 KiB hold some 300 pipelined inputs; the wait is
/// one storage load. Never below one whole frame (`max_frame_len` + 2),
/// so a Hello always fits while it is being read.
const PIPELINED_BEFORE_WELCOME_CAP: usize = 4 * 1024;

/// The first byte of a `Welcome` frame's payload: the key of
/// `ServerMessage.welcome` (field 1, length-delimited), which the encoder
/// writes first as it is the message's only field.
const WELCOME_KEY: u8 = (1 << 3) | 2;

/// Events per epoll_wait.
const EVENTS_CAP: usize = 1024;

/// After EMFILE / ENFILE on accept, wait this long before accepting again.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// Longest sleep in epoll when no deadline is nearer.
const IDLE_POLL_MS: u64 = 100;

/// How long a shutdown waits for write queues to drain.
const SHUTDOWN_FLUSH_MS: u64 = 2_000;

/// How often the guard's per-IP table is swept (expired bans, idle peers).
const GUARD_SWEEP_MS: u64 = 1_000;

/// `retry_after_ms` for refusals that have no natural wait (per-IP
/// connection cap, pending handshakes full).
const BUSY_RETRY_AFTER_MS: u32 = 1_000;

struct Conn {
    stream: TcpStream,
    generation: u32,
    peer: SocketAddr,
    ip: IpAddr,
    /// What the connection may send now, the shard it is bound to, its
    /// input allowance.
    gate: Gate,
    /// The unparsed tail of the last read (a partial frame).
    rbuf: Vec<u8>,
    wq: VecDeque<Bytes>,
    wq_bytes: usize,
    /// Bytes of `wq.front()` already written.
    wq_head_written: usize,
    /// Close once the write queue is flushed.
    closing: bool,
    in_dirty_list: bool,
    /// When it joined the dirty list (for `write_coalesce_ms`).
    dirty_since_ms: u64,
    /// The last write met a full socket: the next writable event flushes.
    /// (Otherwise writable events, which come with every incoming packet,
    /// are not a reason to write: the dirty list is.)
    write_blocked: bool,
    /// A readable event was deferred (inbound paused or read budget spent).
    read_pending: bool,
    /// A connection from the WebSocket listener: its upgrade and framing.
    ws: Option<Box<WsConn>>,
}

impl Conn {
    /// Queues one Tether frame: as it is on TCP, as one binary message on
    /// an open WebSocket. Before the upgrade there is no channel for it:
    /// it is dropped. Returns 1 for a frame queued on a WebSocket (counted
    /// as sent now: its write-queue entries are not all frames), else 0
    /// (a TCP frame is counted when written).
    fn push_frame(&mut self, frame: Bytes) -> u64 {
        let counted = match self.ws.as_deref() {
            None => 0,
            Some(ws) if ws.is_open() => {
                let header = ws::binary_header(frame.len());
                self.wq_bytes += header.len();
                self.wq.push_back(header);
                1
            }
            Some(_) => return 0,
        };
        self.wq_bytes += frame.len();
        self.wq.push_back(frame);
        counted
    }

    /// Queues bytes as they are (an HTTP response, a WebSocket control
    /// frame).
    fn push_raw(&mut self, bytes: Bytes) {
        self.wq_bytes += bytes.len();
        self.wq.push_back(bytes);
    }

    /// The server's last frame: the Tether Close, then on a WebSocket its
    /// own Close (1000), after which nothing more is sent.
    fn push_close(&mut self, frame: Bytes) -> u64 {
        let counted = self.push_frame(frame);
        self.end_ws(ws::code::NORMAL);
        counted
    }

    /// On an open WebSocket, queues its Close with `code`; nothing more is
    /// sent on it after. A no-op on TCP and before the upgrade.
    fn end_ws(&mut self, code: u16) {
        if let Some(ws) = self.ws.as_deref_mut() {
            if ws.is_open() {
                ws.close();
                self.push_raw(ws::close_frame(code));
            }
        }
    }
}

/// What an I/O thread needs of the server's settings.
#[derive(Debug, Clone)]
pub(crate) struct IoConfig {
    pub auth: AuthMode,
    pub ticket_secret: Option<String>,
    pub max_connections: usize,
    pub max_frame_len: usize,
    pub write_queue_cap_bytes: usize,
    pub write_batch_frames: usize,
    pub write_coalesce_ms: u64,
    pub io_uring: bool,
    pub busy_poll_us: u64,
    pub gate: GateConfig,
}

impl IoConfig {
    pub fn from_config(cfg: &Config) -> IoConfig {
        IoConfig {
            auth: cfg.auth,
            ticket_secret: cfg.ticket_secret.clone(),
            max_connections: cfg.max_connections,
            max_frame_len: cfg.max_frame_len,
            write_queue_cap_bytes: cfg.write_queue_cap_bytes,
            write_batch_frames: cfg.write_batch_frames,
            write_coalesce_ms: cfg.write_coalesce_ms,
            io_uring: cfg.io_uring,
            busy_poll_us: cfg.busy_poll_us,
            gate: GateConfig {
                handshake_timeout_ms: cfg.handshake_timeout_ms,
                input_limit: InputLimit {
                    rate: cfg.input_rate,
                    burst: cfg.input_burst as f64,
                    flood_tolerance: cfg.input_flood_tolerance as f64,
                },
                flood_action: cfg.input_flood_action,
                protect_retry_after_ms: cfg.protect_retry_after_ms,
            },
        }
    }
}

pub struct IoThread<G: Game> {
    id: u16,
    cfg: IoConfig,
    poll: Poll,
    listener: Option<TcpListener>,
    /// The WebSocket game listener (`ws_listen`).
    ws_listener: Option<TcpListener>,
    waker: Arc<IoWaker>,
    conns: Slab<Conn>,
    next_generation: u32,
    shards: Vec<ShardLink<G::Input>>,
    shards_stopped: usize,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    defences: Arc<Defences>,
    next_sweep_ms: u64,
    shutdown: Arc<AtomicBool>,
    clock: Instant,
    scratch: Vec<u8>,
    /// Decoded messages of the read being handled (reused).
    msg_scratch: Vec<Incoming<G::Input>>,
    dirty: Vec<usize>,
    read_pending: Vec<usize>,
    handshakes: VecDeque<(u64, usize, u32)>,
    accept_paused_until: u64,
    /// The clock at the top of this pass of the loop.
    loop_now_ms: u64,
    /// `io_uring = true`: the batch the due writes go through.
    uring: Option<uring::SendBatch>,
    /// The slots and results of the batch in flight (reused).
    uring_sent: Vec<usize>,
    uring_results: Vec<i32>,
    /// Per-iteration counts, added to the shared metrics once per iteration.
    frames_in: u64,
    frames_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    writes: u64,
    inputs_dropped: u64,
    /// Refusals at accept by `Refusal::index`.
    refused: [u64; Refusal::REASONS.len()],
    /// Operator requests (the admin API's session inspection and RTTs).
    control: Receiver<control::Request<IoQuery, IoAnswer>>,
    /// Where the next RTT sample starts (a slot).
    rtt_cursor: usize,
    /// What the WebSocket decoder asked for in a read (reused).
    ws_actions: Vec<ws::Action>,
}

impl<G: Game> IoThread<G> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        cfg: IoConfig,
        poll: Poll,
        listener: TcpListener,
        ws_listener: Option<TcpListener>,
        waker: Arc<IoWaker>,
        shards: Vec<ShardLink<G::Input>>,
        control: Receiver<control::Request<IoQuery, IoAnswer>>,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        defences: Arc<Defences>,
        shutdown: Arc<AtomicBool>,
        clock: Instant,
    ) -> io::Result<IoThread<G>> {
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut ws_listener = ws_listener;
        if let Some(l) = ws_listener.as_mut() {
            poll.registry()
                .register(l, WS_LISTENER, Interest::READABLE)?;
        }
        let uring = if cfg.io_uring {
            match uring::SendBatch::new() {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!(io = id, error = %e, "io_uring unavailable; writing with writev");
                    None
                }
            }
        } else {
            None
        };
        Ok(IoThread {
            id,
            cfg,
            poll,
            listener: Some(listener),
            ws_listener,
            waker,
            conns: Slab::new(),
            next_generation: 1,
            shards,
            shards_stopped: 0,
            directory,
            metrics,
            defences,
            next_sweep_ms: 0,
            shutdown,
            clock,
            scratch: vec![0; READ_CHUNK],
            msg_scratch: Vec::new(),
            dirty: Vec::new(),
            read_pending: Vec::new(),
            handshakes: VecDeque::new(),
            accept_paused_until: 0,
            loop_now_ms: 0,
            uring,
            uring_sent: Vec::with_capacity(uring::BATCH),
            uring_results: Vec::with_capacity(uring::BATCH),
            frames_in: 0,
            frames_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            writes: 0,
            inputs_dropped: 0,
            refused: [0; Refusal::REASONS.len()],
            control,
            rtt_cursor: 0,
            ws_actions: Vec::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAP);
        let mut shutdown_deadline: Option<u64> = None;
        loop {
            self.loop_now_ms = self.now_ms();
            self.answer_control();
            self.drain_shard_rings();
            self.flush_dirty();
            self.flush_to_shards();
            self.publish_counts();

            if self.shutdown.load(Ordering::Relaxed) && shutdown_deadline.is_none() {
                for mut l in [self.listener.take(), self.ws_listener.take()]
                    .into_iter()
                    .flatten()
                {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                shutdown_deadline = Some(self.now_ms() + SHUTDOWN_FLUSH_MS);
            }
            if let Some(deadline) = shutdown_deadline {
                let flushed = self.conns.iter().all(|(_, c)| c.wq.is_empty());
                if (self.shards_stopped == self.shards.len() && flushed) || self.now_ms() > deadline
                {
                    break;
                }
            }

            let timeout = self.poll_timeout();
            let spun = timeout != Some(Duration::ZERO) && self.spin(&mut events);
            if !spun {
                self.waker.set_polling(true);
                let timeout = if self.shard_rings_have_work() {
                    Some(Duration::ZERO)
                } else {
                    timeout
                };
                if let Err(e) = self.poll.poll(&mut events, timeout) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        warn!(io = self.id, error = %e, "epoll failed");
                    }
                }
                self.waker.set_polling(false);
            }

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(false),
                    WS_LISTENER => self.accept_all(true),
                    WAKER => {}
                    Token(slot) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(slot);
                        }
                        if event.is_writable()
                            && self.conns.get(slot).is_some_and(|c| c.write_blocked)
                        {
                            self.flush(slot);
                        }
                    }
                }
            }
            self.retry_pending_reads();
            self.expire_handshakes();
            self.sweep_guard();
            if self.accept_paused_until != 0 && self.now_ms() >= self.accept_paused_until {
                self.accept_paused_until = 0;
                self.accept_all(false);
                self.accept_all(true);
            }
        }
        // Whatever is left is closed by dropping the sockets.
        self.metrics.connections.dec_by(self.conns.len() as i64);
        self.publish_counts();
    }

    /// `busy_poll_us`: before blocking, polls without waiting for up to that
    /// long (the shards push without waking a spinning thread; their rings
    /// are checked here). True when it found sockets ready or ring work.
    fn spin(&mut self, events: &mut Events) -> bool {
        let us = self.cfg.busy_poll_us;
        if us == 0 {
            return false;
        }
        let until = Instant::now() + Duration::from_micros(us);
        loop {
            if let Err(e) = self.poll.poll(events, Some(Duration::ZERO)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(io = self.id, error = %e, "epoll failed");
                }
            }
            if !events.is_empty() || self.shard_rings_have_work() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.read_pending.is_empty() && !self.inbound_paused() {
            return Some(Duration::ZERO);
        }
        let now = self.now_ms();
        let mut next = now + IDLE_POLL_MS;
        if let Some(&(deadline, _, _)) = self.handshakes.front() {
            next = next.min(deadline);
        }
        if self.accept_paused_until != 0 {
            next = next.min(self.accept_paused_until);
        }
        if let Some(c) = self.dirty.first().and_then(|&slot| self.conns.get(slot)) {
            next = next.min(c.dirty_since_ms + self.cfg.write_coalesce_ms);
        }
        Some(Duration::from_millis(next.saturating_sub(now)))
    }

    /// Operator requests, answered at once (between two passes).
    fn answer_control(&mut self) {
        while let Ok(request) = self.control.try_recv() {
            let answer = match request.query {
                IoQuery::Link { conn } => {
                    IoAnswer::Link(self.live_slot(conn).map(|slot| self.link_info(slot)))
                }
                IoQuery::Rtts => IoAnswer::Rtts(self.sample_rtts()),
            };
            // The asker may have given up waiting.
            let _ = request.reply.send(answer);
        }
    }

    fn link_info(&self, slot: usize) -> LinkInfo {
        let c = &self.conns[slot];
        let rtt = uring::tcp_rtt(c.stream.as_fd()).ok();
        let ms = |us: u32| f64::from(us) / 1000.0;
        LinkInfo {
            peer: c.peer.to_string(),
            rtt_ms: rtt.map(|(rtt, _)| ms(rtt)),
            rtt_var_ms: rtt.map(|(_, var)| ms(var)),
            write_queue_bytes: c.wq_bytes,
        }
    }

    /// The RTTs of up to `RTT_SAMPLE` connections, from where the last
    /// sample stopped (so that every connection is read in turn).
    fn sample_rtts(&mut self) -> Vec<u32> {
        let start = self.rtt_cursor;
        let mut next = 0;
        let mut rtts = Vec::with_capacity(RTT_SAMPLE);
        let from_start = self.conns.iter().filter(|(slot, _)| *slot >= start);
        let wrapped = self.conns.iter().filter(|(slot, _)| *slot < start);
        for (slot, c) in from_start.chain(wrapped) {
            if rtts.len() == RTT_SAMPLE {
                next = slot;
                break;
            }
            if let Ok((rtt, _)) = uring::tcp_rtt(c.stream.as_fd()) {
                rtts.push(rtt);
            }
        }
        self.rtt_cursor = next;
        rtts
    }

    fn shard_rings_have_work(&self) -> bool {
        self.shards.iter().any(|s| !s.rx.is_empty())
    }

    /// Whether a shard's spill has reached its cap: reading waits.
    fn inbound_paused(&self) -> bool {
        self.shards
            .iter()
            .any(|l| l.tx.spilled() >= INBOUND_OVERFLOW_CAP)
    }

    fn publish_counts(&mut self) {
        let m = &self.metrics;
        if self.frames_in > 0 || self.bytes_in > 0 {
            m.frames_in.inc_by(std::mem::take(&mut self.frames_in));
            m.bytes_in.inc_by(std::mem::take(&mut self.bytes_in));
        }
        if self.frames_out > 0 || self.writes > 0 {
            m.frames_out.inc_by(std::mem::take(&mut self.frames_out));
            m.bytes_out.inc_by(std::mem::take(&mut self.bytes_out));
            m.writes.inc_by(std::mem::take(&mut self.writes));
        }
        for (i, n) in self.refused.iter_mut().enumerate() {
            if *n > 0 {
                m.refused_connections
                    .get_or_create(&labels(&[("reason", Refusal::REASONS[i])]))
                    .inc_by(std::mem::take(n));
            }
        }
        if self.inputs_dropped > 0 {
            m.inputs_dropped
                .get_or_create(&labels(&[("reason", "rate")]))
                .inc_by(std::mem::take(&mut self.inputs_dropped));
        }
    }

    /// Once a second (first I/O thread only): expired bans end, idle peers
    /// are forgotten, the banned-IPs gauge follows.
    fn sweep_guard(&mut self) {
        if self.id != 0 {
            return;
        }
        let now = self.now_ms();
        if now < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now + GUARD_SWEEP_MS;
        let mut guard = self.defences.guard();
        guard.sweep(now);
        self.metrics.banned_ips.set(guard.banned_ips() as i64);
        self.sync_kernel_filter(&guard, now);
    }

    /// Puts the guard's filtered bans on the listener if they changed.
    fn sync_kernel_filter(&self, guard: &Guard, now: u64) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        if let Some(n) = self.defences.sync_kernel_filter(guard, listener, now) {
            self.metrics.kernel_filtered_ips.set(n as i64);
            debug!(io = self.id, filtered = n, "kernel ban filter updated");
        }
    }

    // ----- accepting -------------------------------------------------------

    /// Accepts from the game listener, or with `ws` the WebSocket one.
    fn accept_all(&mut self, ws: bool) {
        if self.accept_paused_until != 0 {
            return;
        }
        loop {
            let listener = if ws {
                self.ws_listener.as_ref()
            } else {
                self.listener.as_ref()
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, ws),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the pending connections
                    // stay in the backlog; try again shortly, keep serving.
                    warn!(io = self.id, error = %e, "accept failed; backing off");
                    self.metrics
                        .closed_by_server
                        .get_or_create(&labels(&[("reason", "accept_error")]))
                        .inc();
                    self.accept_paused_until = self.now_ms() + ACCEPT_BACKOFF_MS;
                    return;
                }
            }
        }
    }

    /// A new connection: the guard's checks come before anything is
    /// allocated or registered for it.
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, ws: bool) {
        let total = self.metrics.connections.get();
        if total >= self.cfg.max_connections as i64 {
            self.metrics
                .refused_connections
                .get_or_create(&labels(&[("reason", "max_connections")]))
                .inc();
            return; // dropping the stream closes it
        }
        let now = self.now_ms();
        let ip = peer.ip();
        let mut verdict = self.defences.guard().admit(ip, now);
        if verdict == Err(Refusal::PendingHandshakes) && self.evict_oldest_handshake() {
            verdict = self.defences.guard().admit(ip, now);
        }
        if let Err(refusal) = verdict {
            let mut guard = self.defences.guard();
            if guard.came_back_too_soon(ip, &refusal, now) {
                self.strike_ip(&mut guard, ip, Strike::IgnoredRetryAfter, now);
            }
            if matches!(refusal, Refusal::Banned { .. }) {
                // It may just have earned its place in the kernel filter.
                self.sync_kernel_filter(&guard, now);
            }
            drop(guard);
            self.refuse(&mut stream, refusal, ws);
            return; // dropping the stream closes it
        }
        if self.defences.kernel_filter_attached() {
            kernel_filter::detach_inherited(&stream);
        }
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(error = %e, "cannot register connection");
            self.defences.guard().release(ip, true);
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let gate = Gate::new(&self.cfg.gate, now);
        // A new gate is awaiting its first frame: it always has a deadline.
        let deadline = gate.handshake_deadline().unwrap_or(now);
        entry.insert(Conn {
            stream,
            generation,
            peer,
            ip,
            gate,
            rbuf: Vec::new(),
            wq: VecDeque::new(),
            wq_bytes: 0,
            wq_head_written: 0,
            closing: false,
            in_dirty_list: false,
            dirty_since_ms: 0,
            write_blocked: false,
            read_pending: false,
            ws: ws.then(Box::default),
        });
        self.handshakes.push_back((deadline, slot, generation));
        self.metrics.accepted.inc();
        self.metrics.connections.inc();
        // The socket may already hold the Hello.
        self.on_readable(slot);
    }

    /// Counts a refusal at accept and tells the peer why with one small
    /// non-blocking write (if the socket takes it; nothing else is spent).
    /// No allocation: the count is a local, the Close (its text a static
    /// string) is encoded on the stack.
    fn refuse(&mut self, stream: &mut TcpStream, refusal: Refusal, ws: bool) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        self.refused[refusal.index()] += 1;
        let (code, retry, text) = match refusal {
            Refusal::Banned { retry_after_ms } => {
                (CloseCode::Banned, retry_after_ms, "address banned")
            }
            Refusal::ConnectRate { retry_after_ms } => (
                CloseCode::RateLimited,
                retry_after_ms,
                "connecting too fast from this address; retry later",
            ),
            Refusal::LoginRate { retry_after_ms } => (
                CloseCode::RateLimited,
                retry_after_ms,
                "no login left for this address; retry later",
            ),
            Refusal::PerIpConnections => (
                CloseCode::RateLimited,
                BUSY_RETRY_AFTER_MS as u64,
                "too many connections from this address; retry later",
            ),
            Refusal::PendingHandshakes | Refusal::IpTableFull => (
                CloseCode::ServerBusy,
                BUSY_RETRY_AFTER_MS as u64,
                "server busy; retry later",
            ),
        };
        // Close { code = 1; message = 2; retry_after_ms = 3 }, by hand:
        // prost would want an owned String for the text.
        let mut close = [0u8; 96];
        let close_len = {
            let mut body: &mut [u8] = &mut close;
            prost::encoding::int32::encode(1, &(code as i32), &mut body);
            encode_key(2, WireType::LengthDelimited, &mut body);
            encode_varint(text.len() as u64, &mut body);
            body[..text.len()].copy_from_slice(text.as_bytes());
            body = &mut body[text.len()..];
            let retry = retry.min(u32::MAX as u64) as u32;
            prost::encoding::uint32::encode(3, &retry, &mut body);
            96 - body.len()
        };
        // ServerMessage { close = 3 }, behind the frame header.
        let mut frame = [0u8; 128];
        let header = tether_proto::FRAME_HEADER_LEN;
        let end = {
            let mut payload: &mut [u8] = &mut frame[header..];
            encode_key(3, WireType::LengthDelimited, &mut payload);
            encode_varint(close_len as u64, &mut payload);
            payload[..close_len].copy_from_slice(&close[..close_len]);
            128 - payload.len() + close_len
        };
        frame[..header].copy_from_slice(&((end - header) as u16).to_le_bytes());
        if ws {
            // Before its upgrade a browser understands only HTTP.
            let status = if code == CloseCode::ServerBusy {
                "503 Service Unavailable"
            } else {
                "429 Too Many Requests"
            };
            let mut head = [0u8; 160];
            let mut w: &mut [u8] = &mut head;
            let _ = write!(
                w,
                "HTTP/1.1 {status}\r\nRetry-After: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                retry.div_ceil(1000)
            );
            let n = 160 - w.len();
            let _ = stream.write(&head[..n]);
            return;
        }
        let _ = stream.write(&frame[..end]);
    }

    /// Makes room under `max_pending_handshakes` by closing this thread's
    /// oldest connection that has not logged in yet. False if it has none.
    fn evict_oldest_handshake(&mut self) -> bool {
        while let Some((_, slot, generation)) = self.handshakes.pop_front() {
            let live = match self.conns.get(slot) {
                Some(c) => c.generation == generation && c.gate.is_pending() && !c.closing,
                None => false,
            };
            if live {
                self.close_with(
                    slot,
                    CloseCode::HandshakeTimeout,
                    "too many connections waiting to log in",
                );
                // Its pending count goes when it is removed (at once when
                // the Close could be written).
                return !self.conns.contains(slot) || !self.conns[slot].gate.is_pending();
            }
        }
        false
    }

    /// The peer sent a frame that does not decode: strike its address and
    /// close the connection with the decoder's code.
    fn misbehaved(&mut self, slot: usize, m: Misbehaviour, detail: &str) {
        if let Some(strike) = m.strike() {
            self.strike(slot, strike);
        }
        self.close_with_retry(slot, m.close_code(), detail, m.retry_after_ms());
    }

    /// Carries out a close the gate decided: what it counts, the Logout a
    /// kick sends first, the strike against the address (enough of them
    /// within the window ban it), then the Close.
    fn close_as(&mut self, slot: usize, close: Close) {
        match close.count {
            Some(Count::LoginRefused(reason)) => {
                self.metrics
                    .logins_refused
                    .get_or_create(&labels(&[("reason", reason)]))
                    .inc();
            }
            Some(Count::ResumeRefused(reason)) => {
                self.metrics
                    .resumes_refused
                    .get_or_create(&labels(&[("reason", reason)]))
                    .inc();
            }
            Some(Count::InputDropped) => self.inputs_dropped += 1,
            None => {}
        }
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        if close.strike == Some(Strike::InputFlood) {
            debug!(peer = %conn.peer, "input flood; cutting the connection");
        }
        if let (true, Some(shard)) = (close.logout_first, conn.gate.shard()) {
            let cref = self.conn_ref(slot);
            self.send_to_shard(shard, ToShard::Logout { conn: cref });
        }
        if let Some(strike) = close.strike {
            self.strike(slot, strike);
        }
        self.close_with_retry(slot, close.code, close.message, close.retry_after_ms);
    }

    /// A message over the allowance: counted, and the address struck if the
    /// gate says so.
    fn dropped(&mut self, slot: usize, dropped: Dropped) {
        self.inputs_dropped += 1;
        if let Some(strike) = dropped.strike {
            self.strike(slot, strike);
        }
    }

    fn strike(&mut self, slot: usize, why: Strike) {
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let ip = conn.ip;
        let now = self.now_ms();
        let mut guard = self.defences.guard();
        self.strike_ip(&mut guard, ip, why, now);
    }

    fn strike_ip(&self, guard: &mut Guard, ip: IpAddr, why: Strike, now: u64) {
        self.metrics
            .strikes
            .get_or_create(&labels(&[("reason", why.reason())]))
            .inc();
        if let Some(ban_ms) = guard.strike(ip, why, now) {
            self.metrics.bans.inc();
            warn!(%ip, ban_ms, last = why.reason(), "address banned");
        }
        self.metrics.banned_ips.set(guard.banned_ips() as i64);
    }

    fn expire_handshakes(&mut self) {
        let now = self.now_ms();
        while let Some(&(deadline, slot, generation)) = self.handshakes.front() {
            if deadline > now {
                break;
            }
            self.handshakes.pop_front();
            let close = match self.conns.get_mut(slot) {
                Some(c) if c.generation == generation && !c.closing => c.gate.handle_timeout(now),
                _ => None,
            };
            if let Some(close) = close {
                self.close_as(slot, close);
            }
        }
    }

    // ----- reading ---------------------------------------------------------

    fn on_readable(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.closing {
            return;
        }
        if self.inbound_paused() {
            self.defer_read(slot);
            return;
        }
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            // Until the Welcome, a read takes no more than the connection
            // may hold unparsed; at the cap reading waits for the Welcome.
            let want = if !conn.gate.is_bound() {
                let cap = PIPELINED_BEFORE_WELCOME_CAP
                    .max(self.cfg.max_frame_len + tether_proto::FRAME_HEADER_LEN);
                cap.saturating_sub(conn.rbuf.len()).min(READ_CHUNK)
            } else {
                READ_CHUNK
            };
            if want == 0 {
                return; // `welcomed` reads on
            }
            match conn.stream.read(&mut self.scratch[..want]) {
                // The peer's FIN behind its pipelined frames: they are
                // handled after the Welcome, whose read meets the end again.
                Ok(0) if conn.gate.is_welcoming() => return,
                Ok(0) => {
                    self.lose(slot, ConnLoss::Peer);
                    return;
                }
                Ok(n) => {
                    self.bytes_in += n as u64;
                    let tether_bytes = if conn.ws.is_some() {
                        match self.ws_input(slot, n) {
                            Some(k) => k,
                            None => return, // closed, or a page served
                        }
                    } else {
                        n
                    };
                    if !self.consume(slot, tether_bytes) {
                        return; // closed
                    }
                    if n < want {
                        return; // drained (edge-triggered: a short read means empty)
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.lose(slot, ConnLoss::Peer);
                    return;
                }
            }
        }
        self.defer_read(slot);
    }

    /// Decodes a WebSocket connection's read in place: `scratch[..n]` in,
    /// the Tether bytes it carried at `scratch[..k]` out (`Some(k)`), the
    /// upgrade answered, pings ponged, pages served. `None` when the
    /// connection is closing.
    fn ws_input(&mut self, slot: usize, n: usize) -> Option<usize> {
        let mut actions = std::mem::take(&mut self.ws_actions);
        let conn = &mut self.conns[slot];
        let ws = conn.ws.as_deref_mut()?;
        let opened_before = ws.is_open();
        let result = ws.input(&mut self.scratch[..n], &mut actions);
        let mut closing = false;
        for action in actions.drain(..) {
            match action {
                ws::Action::Send(bytes) => conn.push_raw(bytes),
                ws::Action::Opened => {
                    self.metrics.ws_upgrades.inc();
                }
                ws::Action::Page { path } => {
                    conn.push_raw(crate::play::page(&path));
                    closing = true;
                }
                ws::Action::Closed => closing = true,
            }
        }
        self.ws_actions = actions;
        match result {
            Ok(k) if !closing => {
                if !conn.wq.is_empty() {
                    self.mark_dirty(slot);
                }
                Some(k)
            }
            Ok(_) => {
                // The peer's Close, answered, or a page: the session (if
                // any) turns zombie as on a TCP close.
                self.close_when_flushed(slot, ConnLoss::Peer);
                None
            }
            Err(e) => {
                debug!(peer = %conn.peer, error = %e, "websocket refused");
                let opened = opened_before || conn.ws.as_deref().is_some_and(WsConn::is_open);
                self.strike(slot, Strike::Malformed);
                let conn = &mut self.conns[slot];
                if opened {
                    // After the upgrade: the Tether Close says why, the
                    // WebSocket Close carries the RFC code.
                    let close = close_frame(CloseCode::ProtocolError, e.reason, 0);
                    self.frames_out += conn.push_frame(close);
                    conn.end_ws(e.code);
                } else {
                    conn.push_raw(ws::http_error(&e));
                }
                self.metrics
                    .closed_by_server
                    .get_or_create(&labels(&[("reason", "websocket_error")]))
                    .inc();
                self.close_when_flushed(slot, ConnLoss::ProtocolError);
                None
            }
        }
    }

    /// Ends a connection whose last bytes are queued: the shard hears `why`,
    /// nothing more is read, and it closes once its queue is written.
    fn close_when_flushed(&mut self, slot: usize, why: ConnLoss) {
        self.notify_shard(slot, why);
        let conn = &mut self.conns[slot];
        conn.gate.closed();
        conn.closing = true;
        self.flush(slot);
    }

    fn defer_read(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.read_pending {
                conn.read_pending = true;
                self.read_pending.push(slot);
            }
        }
    }

    fn retry_pending_reads(&mut self) {
        if self.read_pending.is_empty() || self.inbound_paused() {
            return;
        }
        let pending = std::mem::take(&mut self.read_pending);
        for slot in pending {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.read_pending = false;
                self.on_readable(slot);
            }
        }
    }

    /// Splits and handles the frames in `scratch[..n]` (after any carried-over
    /// partial frame). Returns false if the connection was closed.
    fn consume(&mut self, slot: usize, n: usize) -> bool {
        let max = self.cfg.max_frame_len;
        let mut msgs = std::mem::take(&mut self.msg_scratch);
        let mut carried = std::mem::take(&mut self.conns[slot].rbuf);
        // Parse straight from the scratch buffer when nothing is carried over;
        // only a trailing partial frame (at most one frame cap), or what
        // waits behind a Hello for its Welcome, is ever copied into the
        // connection.
        let from_scratch = carried.is_empty();
        if !from_scratch {
            carried.extend_from_slice(&self.scratch[..n]);
        }
        let data: &[u8] = if from_scratch {
            &self.scratch[..n]
        } else {
            &carried
        };
        // None while a Hello waits for its Welcome, one before the
        // handshake (it decides what follows), then all.
        let parse_max = self.conns[slot].gate.parse_budget();
        let mut pos = 0;
        let mut failure = None;
        while msgs.len() < parse_max {
            match split_frame(&data[pos..], max) {
                Ok(Some((payload, used))) => {
                    pos += used;
                    match decode_incoming::<G>(payload) {
                        Ok(m) => msgs.push(m),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            if from_scratch {
                carried.extend_from_slice(&self.scratch[pos..n]);
            } else {
                carried.drain(..pos);
            }
            self.conns[slot].rbuf = carried;
        }
        self.frames_in += msgs.len() as u64;
        let now = self.now_ms();
        let mut open = true;
        for msg in msgs.drain(..) {
            if open && !self.handle(slot, msg, now) {
                open = false;
            }
        }
        self.msg_scratch = msgs;
        if !open {
            return false;
        }
        if let Some(e) = failure {
            self.reject(slot, &e);
            return false;
        }
        if parse_max == 1 && self.conns[slot].gate.is_bound() {
            // A Resume bound the connection: the frames behind it go now.
            return self.consume(slot, 0);
        }
        true
    }

    /// The shard's Welcome is queued: the frames held behind the Hello are
    /// handled, in order, and reading goes on (it may have paused at
    /// [`PIPELINED_BEFORE_WELCOME_CAP`] or met the peer's FIN).
    fn welcomed(&mut self, slot: usize) {
        // `queue` may have cut the connection.
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.gate.welcomed() {
            return;
        }
        if self.consume(slot, 0) {
            self.on_readable(slot);
        }
    }

    fn reject(&mut self, slot: usize, e: &DecodeError) {
        debug!(peer = %self.conns[slot].peer, error = %e, "bad frame");
        self.misbehaved(slot, Misbehaviour::BadFrame(e.close_code()), &e.to_string());
    }

    /// Hands one decoded message to the connection's gate and carries out
    /// its decision. Returns false if the connection closed.
    fn handle(&mut self, slot: usize, msg: Incoming<G::Input>, now: u64) -> bool {
        let cref = self.conn_ref(slot);
        let conn = &mut self.conns[slot];
        let mut admission = SharedAdmission {
            ip: conn.ip,
            defences: &self.defences,
            directory: &self.directory,
            io: &self.cfg,
            shards: self.shards.len(),
        };
        let step = conn
            .gate
            .on_message(&self.cfg.gate, msg, now, &mut admission);
        let (shard, msg) = match step {
            Step::Login { shard, account } => (
                shard,
                ToShard::Login {
                    conn: cref,
                    account,
                },
            ),
            Step::Resume { shard, resume } => (shard, ToShard::Resume { conn: cref, resume }),
            Step::Input {
                shard,
                seq,
                ack,
                cmd,
                dropped,
            } => {
                if let Some(dropped) = dropped {
                    self.dropped(slot, dropped);
                }
                (
                    shard,
                    ToShard::Input {
                        conn: cref,
                        seq,
                        ack,
                        cmd,
                    },
                )
            }
            Step::Ack {
                shard,
                frames_received,
            } => (
                shard,
                ToShard::Ack {
                    conn: cref,
                    frames_received,
                },
            ),
            Step::Logout { shard } => (shard, ToShard::Logout { conn: cref }),
            Step::Dropped(dropped) => {
                self.dropped(slot, dropped);
                return true;
            }
            Step::Close(close) => {
                self.close_as(slot, close);
                return false;
            }
            Step::Ignored => return false,
        };
        self.send_to_shard(shard, msg);
        true
    }

    fn conn_ref(&self, slot: usize) -> ConnRef {
        ConnRef {
            io: self.id,
            slot: slot as u32,
            generation: self.conns[slot].generation,
        }
    }

    fn send_to_shard(&mut self, shard: u16, msg: ToShard<G::Input>) {
        self.shards[shard as usize].tx.push(msg);
    }

    /// Moves what waits in the spills onto the shards' rings, then wakes
    /// each shard that was sent something.
    fn flush_to_shards(&mut self) {
        for link in &mut self.shards {
            link.tx.flush();
            if link.tx.take_touched() {
                link.waker.wake();
            }
        }
    }

    // ----- writing ---------------------------------------------------------

    fn drain_shard_rings(&mut self) {
        for s in 0..self.shards.len() {
            while let Ok(msg) = self.shards[s].rx.pop() {
                match msg {
                    ToIo::Frame { conn, frame } => {
                        if let Some(slot) = self.live_slot(conn) {
                            let welcome =
                                frame.get(tether_proto::FRAME_HEADER_LEN) == Some(&WELCOME_KEY);
                            self.queue(slot, frame);
                            if welcome {
                                self.welcomed(slot);
                            }
                        }
                    }
                    ToIo::Close { conn, frame } => {
                        if let Some(slot) = self.live_slot(conn) {
                            self.queue(slot, frame);
                            if let Some(c) = self.conns.get_mut(slot) {
                                c.end_ws(ws::code::NORMAL);
                                c.closing = true;
                            }
                        }
                    }
                    ToIo::ShardStopped => self.shards_stopped += 1,
                }
            }
        }
    }

    fn live_slot(&self, conn: ConnRef) -> Option<usize> {
        let slot = conn.slot as usize;
        match self.conns.get(slot) {
            Some(c) if c.generation == conn.generation && !c.closing => Some(slot),
            _ => None,
        }
    }

    fn queue(&mut self, slot: usize, frame: Bytes) {
        let cap = self.cfg.write_queue_cap_bytes;
        let conn = &mut self.conns[slot];
        self.frames_out += conn.push_frame(frame);
        if conn.wq_bytes > cap {
            self.metrics
                .closed_by_server
                .get_or_create(&labels(&[("reason", "slow_consumer")]))
                .inc();
            // Best effort: finish the frame on the wire and add a Close, in
            // one non-blocking write; a full socket gets nothing more.
            let close = close_frame(CloseCode::SlowConsumer, "write backlog over the cap", 0);
            let head_rest: &[u8] = if conn.wq_head_written > 0 {
                &conn.wq[0][conn.wq_head_written..]
            } else {
                &[]
            };
            // On a WebSocket: the Close as a binary message, then its own
            // Close.
            let (ws_header, ws_close) = match conn.ws.as_deref() {
                Some(ws) if ws.is_open() => (
                    ws::binary_header(close.len()),
                    ws::close_frame(ws::code::GOING_AWAY),
                ),
                _ => (Bytes::new(), Bytes::new()),
            };
            let _ = conn.stream.write_vectored(&[
                IoSlice::new(head_rest),
                IoSlice::new(&ws_header),
                IoSlice::new(&close),
                IoSlice::new(&ws_close),
            ]);
            self.lose(slot, ConnLoss::SlowConsumer);
            return;
        }
        self.mark_dirty(slot);
    }

    /// Puts the connection on the dirty list (written by `flush_dirty`),
    /// once.
    fn mark_dirty(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if !conn.in_dirty_list {
            conn.in_dirty_list = true;
            conn.dirty_since_ms = self.loop_now_ms;
            self.dirty.push(slot);
        }
    }

    /// Writes the connections with frames queued: all of them, or with
    /// `write_coalesce_ms`, those whose first frame has waited that long
    /// (the list is in the order they joined it, so the due ones are a
    /// prefix).
    fn flush_dirty(&mut self) {
        let delay = self.cfg.write_coalesce_ms;
        let mut dirty = std::mem::take(&mut self.dirty);
        let due = if delay == 0 {
            dirty.len()
        } else {
            let now = self.now_ms();
            dirty
                .iter()
                .position(|&slot| {
                    self.conns
                        .get(slot)
                        .is_some_and(|c| c.in_dirty_list && c.dirty_since_ms + delay > now)
                })
                .unwrap_or(dirty.len())
        };
        for &slot in &dirty[..due] {
            if let Some(c) = self.conns.get_mut(slot) {
                c.in_dirty_list = false;
            }
        }
        if self.uring.is_some() {
            self.flush_batched(&dirty[..due]);
        } else {
            for &slot in &dirty[..due] {
                self.flush(slot);
            }
        }
        // The ones still waiting stay first; any queued meanwhile follow.
        // The list's buffer is reused: no allocation per pass.
        dirty.drain(..due);
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    /// Writes as much of the queue as the socket takes, up to MAX_IOV frames
    /// per writev.
    fn flush(&mut self, slot: usize) {
        let batch = self.cfg.write_batch_frames.clamp(1, MAX_IOV);
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            if conn.wq.is_empty() {
                if conn.closing {
                    self.remove(slot);
                }
                return;
            }
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (i, frame) in conn.wq.iter().take(batch).enumerate() {
                let skip = if i == 0 { conn.wq_head_written } else { 0 };
                iov[i] = IoSlice::new(&frame[skip..]);
                n_iov += 1;
            }
            let result = conn.stream.write_vectored(&iov[..n_iov]);
            if !self.wrote(slot, result) {
                return;
            }
        }
    }

    /// Applies one write's outcome to the connection's queue. True when the
    /// socket took everything offered and more may be written now.
    fn wrote(&mut self, slot: usize, result: io::Result<usize>) -> bool {
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        match result {
            Ok(0) => {
                self.lose(slot, ConnLoss::Peer);
                false
            }
            Ok(mut written) => {
                conn.write_blocked = false;
                self.writes += 1;
                self.bytes_out += written as u64;
                conn.wq_bytes -= written;
                while written > 0 {
                    let head_left = conn.wq[0].len() - conn.wq_head_written;
                    if written >= head_left {
                        written -= head_left;
                        conn.wq.pop_front();
                        conn.wq_head_written = 0;
                        // WebSocket frames were counted when queued.
                        self.frames_out += u64::from(conn.ws.is_none());
                    } else {
                        // A short write: the socket is full.
                        conn.wq_head_written += written;
                        conn.write_blocked = true;
                        return false;
                    }
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.write_blocked = true;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(_) => {
                self.lose(slot, ConnLoss::Peer);
                false
            }
        }
    }

    /// `io_uring`: one send per due connection, all in one submission (per
    /// [`uring::BATCH`]); a connection with more left than one send carries
    /// finishes with `writev`.
    fn flush_batched(&mut self, due: &[usize]) {
        let batch_frames = self.cfg.write_batch_frames.clamp(1, MAX_IOV);
        let Some(mut ring) = self.uring.take() else {
            return;
        };
        // Reused from pass to pass: no allocation per pass.
        let mut sent = std::mem::take(&mut self.uring_sent);
        let mut results = std::mem::take(&mut self.uring_results);
        let mut rest = due;
        while !rest.is_empty() {
            // Which connections go in this batch (an empty queue only
            // needs the flush that closes a closing connection)...
            sent.clear();
            while let Some((&slot, tail)) = rest.split_first() {
                if sent.len() == uring::BATCH {
                    break;
                }
                rest = tail;
                let Some(conn) = self.conns.get(slot) else {
                    continue;
                };
                if conn.wq.is_empty() {
                    self.flush(slot);
                } else {
                    sent.push(slot);
                }
            }
            // ...then their frames, borrowed until the batch is submitted.
            let mut sends = ring.start();
            for &slot in &sent {
                let conn = &self.conns[slot];
                let skip = conn.wq_head_written;
                let bufs = conn.wq.iter().take(batch_frames).enumerate().map(|(i, f)| {
                    if i == 0 {
                        &f[skip..]
                    } else {
                        &f[..]
                    }
                });
                sends.push(conn.stream.as_fd(), bufs);
            }
            results.clear();
            match sends.submit() {
                Ok(r) => results.extend_from_slice(r),
                Err(e) => {
                    warn!(io = self.id, error = %e, "io_uring submission failed; back to writev");
                    for &slot in &sent {
                        self.flush(slot);
                    }
                    for &slot in rest {
                        self.flush(slot);
                    }
                    return; // the ring is dropped: writev from now on
                }
            }
            for (&slot, &r) in sent.iter().zip(&results) {
                let result = if r >= 0 {
                    Ok(r as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-r))
                };
                if self.wrote(slot, result) {
                    self.flush(slot);
                }
            }
        }
        self.uring = Some(ring);
        self.uring_sent = sent;
        self.uring_results = results;
    }

    // ----- closing ---------------------------------------------------------

    /// The server closes the connection with a code: queue the Close frame,
    /// tell the shard, and close once it is flushed.
    fn close_with(&mut self, slot: usize, code: CloseCode, message: &str) {
        self.close_with_retry(slot, code, message, 0);
    }

    fn close_with_retry(
        &mut self,
        slot: usize,
        code: CloseCode,
        message: &str,
        retry_after_ms: u32,
    ) {
        let reason = code.as_str_name();
        self.metrics
            .closed_by_server
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
        self.notify_shard(slot, ConnLoss::ProtocolError);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.gate.closed();
        conn.rbuf = Vec::new();
        self.frames_out += conn.push_close(close_frame(code, message, retry_after_ms));
        conn.closing = true;
        self.flush(slot);
    }

    /// The connection is unusable (peer gone, write failed, slow consumer):
    /// tell the shard and drop it now.
    fn lose(&mut self, slot: usize, why: ConnLoss) {
        self.notify_shard(slot, why);
        self.remove(slot);
    }

    fn notify_shard(&mut self, slot: usize, why: ConnLoss) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.closing {
            return; // the shard asked for this close, or already knows
        }
        if let Some(shard) = conn.gate.closed() {
            let cref = ConnRef {
                io: self.id,
                slot: slot as u32,
                generation: conn.generation,
            };
            self.send_to_shard(shard, ToShard::Closed { conn: cref, why });
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.try_remove(slot) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.metrics.connections.dec();
            self.defences
                .guard()
                .release(conn.ip, conn.gate.is_pending());
        }
    }
}

/// A connection's first frame checked against the server's shared state:
/// protect mode (an atomic), the guard's login rates (its lock, once),
/// credentials (crypto, against the wall clock for ticket expiry) and the
/// account directory.
struct SharedAdmission<'a> {
    ip: IpAddr,
    defences: &'a Defences,
    directory: &'a Directory,
    io: &'a IoConfig,
    shards: usize,
}

impl Admission for SharedAdmission<'_> {
    fn protecting(&self) -> bool {
        self.defences.protecting()
    }

    fn draining(&self) -> bool {
        self.defences.draining()
    }

    fn admit_login(&mut self, kind: LoginKind, now: u64) -> Result<(), LoginRefused> {
        let verdict = self.defences.guard().login(self.ip, kind, now);
        verdict.map_err(|refusal| LoginRefused {
            reason: refusal.reason(),
            retry_after_ms: refusal.retry_after_ms(),
        })
    }

    fn authenticate(&mut self, hello: &pb::Hello) -> Result<String, AuthRefused> {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        auth::authenticate(
            self.io.auth,
            self.io.ticket_secret.as_deref(),
            hello.auth.as_ref(),
            now_unix,
        )
        .map_err(|e| AuthRefused {
            code: e.close_code(),
            message: e.message(),
        })
    }

    fn route_login(&mut self, account: &str) -> u16 {
        self.directory.route_login(account)
    }

    fn shards(&self) -> usize {
        self.shards
    }
}

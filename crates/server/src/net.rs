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

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tether_proto::pb::{client_message::Msg, CloseCode};
use tether_proto::{decode_client, split_frame, DecodeError};
use tracing::{debug, warn};

use crate::auth;
use crate::config::Config;
use crate::directory::Directory;
use crate::link::{close_frame, ConnLoss, ConnRef, IoWaker, ShardLink, ToIo, ToShard};
use crate::metrics::{labels, Metrics};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Bytes read per `read` call. Big reads decode many frames per syscall; one
/// buffer per thread, so the size costs nothing per connection.
const READ_CHUNK: usize = 64 * 1024;

/// Reads per readable event before moving on to other connections, so one
/// fast sender cannot starve the rest; the connection is revisited next turn.
const READS_PER_EVENT: usize = 4;

/// Frames per gathering write. Linux accepts up to 1024 iovecs; past ~64
/// small frames one write already carries several KiB and more frames per
/// call stop paying.
const MAX_IOV: usize = 64;

/// Inbound messages held per shard when its ring is full, before this
/// thread stops reading altogether.
const INBOUND_OVERFLOW_CAP: usize = 16 * 1024;

/// Events per epoll_wait.
const EVENTS_CAP: usize = 1024;

/// After EMFILE / ENFILE on accept, wait this long before accepting again.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// Longest sleep in epoll when no deadline is nearer.
const IDLE_POLL_MS: u64 = 100;

/// How long a shutdown waits for write queues to drain.
const SHUTDOWN_FLUSH_MS: u64 = 2_000;

struct Conn {
    stream: TcpStream,
    generation: u32,
    peer: SocketAddr,
    /// None until a Hello / Resume bound the connection to a shard.
    shard: Option<u16>,
    /// The unparsed tail of the last read (a partial frame).
    rbuf: Vec<u8>,
    wq: VecDeque<Bytes>,
    wq_bytes: usize,
    /// Bytes of `wq.front()` already written.
    wq_head_written: usize,
    /// Close once the write queue is flushed.
    closing: bool,
    in_dirty_list: bool,
    /// A readable event was deferred (inbound paused or read budget spent).
    read_pending: bool,
}

pub struct IoThread {
    id: u16,
    cfg: Arc<Config>,
    poll: Poll,
    listener: Option<TcpListener>,
    waker: Arc<IoWaker>,
    conns: Slab<Conn>,
    next_generation: u32,
    shards: Vec<ShardLink>,
    inbound_overflow: Vec<VecDeque<ToShard>>,
    shard_touched: Vec<bool>,
    shards_stopped: usize,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    clock: Instant,
    scratch: Vec<u8>,
    /// Decoded messages of the read being handled (reused).
    msg_scratch: Vec<tether_proto::pb::ClientMessage>,
    dirty: Vec<usize>,
    read_pending: Vec<usize>,
    handshakes: VecDeque<(u64, usize, u32)>,
    accept_paused_until: u64,
    /// Per-iteration counts, added to the shared metrics once per iteration.
    frames_in: u64,
    frames_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    writes: u64,
}

impl IoThread {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        cfg: Arc<Config>,
        poll: Poll,
        listener: TcpListener,
        waker: Arc<IoWaker>,
        shards: Vec<ShardLink>,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        shutdown: Arc<AtomicBool>,
        clock: Instant,
    ) -> io::Result<IoThread> {
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let n = shards.len();
        Ok(IoThread {
            id,
            cfg,
            poll,
            listener: Some(listener),
            waker,
            conns: Slab::new(),
            next_generation: 1,
            shards,
            inbound_overflow: (0..n).map(|_| VecDeque::new()).collect(),
            shard_touched: vec![false; n],
            shards_stopped: 0,
            directory,
            metrics,
            shutdown,
            clock,
            scratch: vec![0; READ_CHUNK],
            msg_scratch: Vec::new(),
            dirty: Vec::new(),
            read_pending: Vec::new(),
            handshakes: VecDeque::new(),
            accept_paused_until: 0,
            frames_in: 0,
            frames_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            writes: 0,
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAP);
        let mut shutdown_deadline: Option<u64> = None;
        loop {
            self.drain_shard_rings();
            self.flush_dirty();
            self.push_overflow();
            self.wake_shards();
            self.publish_counts();

            if self.shutdown.load(Ordering::Relaxed) && shutdown_deadline.is_none() {
                if let Some(mut l) = self.listener.take() {
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

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(slot) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(slot);
                        }
                        if event.is_writable() {
                            self.flush(slot);
                        }
                    }
                }
            }
            self.retry_pending_reads();
            self.expire_handshakes();
            if self.accept_paused_until != 0 && self.now_ms() >= self.accept_paused_until {
                self.accept_paused_until = 0;
                self.accept_all();
            }
        }
        // Whatever is left is closed by dropping the sockets.
        self.metrics.connections.dec_by(self.conns.len() as i64);
        self.publish_counts();
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
        Some(Duration::from_millis(next.saturating_sub(now)))
    }

    fn shard_rings_have_work(&self) -> bool {
        self.shards.iter().any(|s| !s.rx.is_empty())
    }

    fn inbound_paused(&self) -> bool {
        self.inbound_overflow
            .iter()
            .any(|q| q.len() >= INBOUND_OVERFLOW_CAP)
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
    }

    // ----- accepting -------------------------------------------------------

    fn accept_all(&mut self) {
        if self.accept_paused_until != 0 {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
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

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let total = self.metrics.connections.get();
        if total >= self.cfg.max_connections as i64 {
            self.metrics
                .closed_by_server
                .get_or_create(&labels(&[("reason", "max_connections")]))
                .inc();
            return; // dropping the stream closes it
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
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        entry.insert(Conn {
            stream,
            generation,
            peer,
            shard: None,
            rbuf: Vec::new(),
            wq: VecDeque::new(),
            wq_bytes: 0,
            wq_head_written: 0,
            closing: false,
            in_dirty_list: false,
            read_pending: false,
        });
        self.handshakes.push_back((
            self.now_ms() + self.cfg.handshake_timeout_ms,
            slot,
            generation,
        ));
        self.metrics.accepted.inc();
        self.metrics.connections.inc();
        // The socket may already hold the Hello.
        self.on_readable(slot);
    }

    fn expire_handshakes(&mut self) {
        let now = self.now_ms();
        while let Some(&(deadline, slot, generation)) = self.handshakes.front() {
            if deadline > now {
                break;
            }
            self.handshakes.pop_front();
            let stale = match self.conns.get(slot) {
                Some(c) => c.generation != generation || c.shard.is_some() || c.closing,
                None => true,
            };
            if !stale {
                self.close_with(
                    slot,
                    CloseCode::HandshakeTimeout,
                    "no Hello or Resume in time",
                );
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
        if self
            .inbound_overflow
            .iter()
            .any(|q| q.len() >= INBOUND_OVERFLOW_CAP)
        {
            self.defer_read(slot);
            return;
        }
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.lose(slot, ConnLoss::Peer);
                    return;
                }
                Ok(n) => {
                    self.bytes_in += n as u64;
                    if !self.consume(slot, n) {
                        return; // closed
                    }
                    if n < READ_CHUNK {
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
        // only a trailing partial frame (at most one frame cap) is ever copied
        // into the connection.
        let from_scratch = carried.is_empty();
        if !from_scratch {
            carried.extend_from_slice(&self.scratch[..n]);
        }
        let data: &[u8] = if from_scratch {
            &self.scratch[..n]
        } else {
            &carried
        };
        let mut pos = 0;
        let mut failure = None;
        loop {
            match split_frame(&data[pos..], max) {
                Ok(Some((payload, used))) => {
                    pos += used;
                    match decode_client(payload) {
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
        let mut open = true;
        for msg in msgs.drain(..) {
            if open && !self.handle(slot, msg) {
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
        true
    }

    fn reject(&mut self, slot: usize, e: &DecodeError) {
        debug!(peer = %self.conns[slot].peer, error = %e, "bad frame");
        self.close_with(slot, e.close_code(), &e.to_string());
    }

    /// Handles one decoded message. Returns false if the connection closed.
    fn handle(&mut self, slot: usize, msg: tether_proto::pb::ClientMessage) -> bool {
        let conn = &self.conns[slot];
        let cref = ConnRef {
            io: self.id,
            slot: slot as u32,
            generation: conn.generation,
        };
        let Some(body) = msg.msg else {
            return true; // decode_client already refuses empty messages
        };
        match (conn.shard, body) {
            (None, Msg::Hello(hello)) => {
                if hello.protocol_version != tether_proto::PROTOCOL_VERSION {
                    self.close_with(
                        slot,
                        CloseCode::UnsupportedVersion,
                        "protocol_version must be 1",
                    );
                    return false;
                }
                let now_unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                match auth::authenticate(
                    self.cfg.auth,
                    self.cfg.ticket_secret.as_deref(),
                    hello.auth.as_ref(),
                    now_unix,
                ) {
                    Ok(account) => {
                        let shard = self.directory.route_login(&account);
                        self.conns[slot].shard = Some(shard);
                        self.send_to_shard(
                            shard,
                            ToShard::Login {
                                conn: cref,
                                account,
                            },
                        );
                        true
                    }
                    Err(e) => {
                        self.close_with(slot, e.close_code(), e.message());
                        false
                    }
                }
            }
            (None, Msg::Resume(resume)) => {
                let shard = (resume.session_id >> 56) as usize;
                if shard >= self.shards.len() {
                    self.metrics
                        .resumes_refused
                        .get_or_create(&labels(&[("reason", "unknown_session")]))
                        .inc();
                    self.close_with(slot, CloseCode::ResumeRefused, "resume refused");
                    return false;
                }
                self.conns[slot].shard = Some(shard as u16);
                self.send_to_shard(shard as u16, ToShard::Resume { conn: cref, resume });
                true
            }
            (None, _) => {
                self.close_with(
                    slot,
                    CloseCode::ProtocolError,
                    "expected Hello or Resume first",
                );
                false
            }
            (Some(shard), Msg::Input(input)) => {
                self.send_to_shard(shard, ToShard::Input { conn: cref, input });
                true
            }
            (Some(shard), Msg::Ack(ack)) => {
                self.send_to_shard(
                    shard,
                    ToShard::Ack {
                        conn: cref,
                        frames_received: ack.frames_received,
                    },
                );
                true
            }
            (Some(shard), Msg::Logout(_)) => {
                self.send_to_shard(shard, ToShard::Logout { conn: cref });
                true
            }
            (Some(_), Msg::Hello(_) | Msg::Resume(_)) => {
                self.close_with(
                    slot,
                    CloseCode::ProtocolError,
                    "Hello / Resume only as the first frame",
                );
                false
            }
        }
    }

    fn send_to_shard(&mut self, shard: u16, msg: ToShard) {
        let s = shard as usize;
        self.shard_touched[s] = true;
        if self.inbound_overflow[s].is_empty() {
            match self.shards[s].tx.push(msg) {
                Ok(()) => {}
                Err(rtrb::PushError::Full(msg)) => self.inbound_overflow[s].push_back(msg),
            }
        } else {
            self.inbound_overflow[s].push_back(msg);
        }
    }

    fn push_overflow(&mut self) {
        for (s, q) in self.inbound_overflow.iter_mut().enumerate() {
            while let Some(msg) = q.pop_front() {
                match self.shards[s].tx.push(msg) {
                    Ok(()) => self.shard_touched[s] = true,
                    Err(rtrb::PushError::Full(msg)) => {
                        q.push_front(msg);
                        break;
                    }
                }
            }
        }
    }

    fn wake_shards(&mut self) {
        for (s, touched) in self.shard_touched.iter_mut().enumerate() {
            if std::mem::take(touched) {
                self.shards[s].waker.wake();
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
                            self.queue(slot, frame);
                        }
                    }
                    ToIo::Close { conn, frame } => {
                        if let Some(slot) = self.live_slot(conn) {
                            self.queue(slot, frame);
                            if let Some(c) = self.conns.get_mut(slot) {
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
        conn.wq_bytes += frame.len();
        conn.wq.push_back(frame);
        if conn.wq_bytes > cap {
            self.metrics
                .closed_by_server
                .get_or_create(&labels(&[("reason", "slow_consumer")]))
                .inc();
            self.lose(slot, ConnLoss::SlowConsumer);
            return;
        }
        if !conn.in_dirty_list {
            conn.in_dirty_list = true;
            self.dirty.push(slot);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            if let Some(c) = self.conns.get_mut(slot) {
                c.in_dirty_list = false;
            }
            self.flush(slot);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Writes as much of the queue as the socket takes, up to MAX_IOV frames
    /// per writev.
    fn flush(&mut self, slot: usize) {
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
            for (i, frame) in conn.wq.iter().take(MAX_IOV).enumerate() {
                let skip = if i == 0 { conn.wq_head_written } else { 0 };
                iov[i] = IoSlice::new(&frame[skip..]);
                n_iov += 1;
            }
            match conn.stream.write_vectored(&iov[..n_iov]) {
                Ok(0) => {
                    self.lose(slot, ConnLoss::Peer);
                    return;
                }
                Ok(mut written) => {
                    self.writes += 1;
                    self.bytes_out += written as u64;
                    conn.wq_bytes -= written;
                    while written > 0 {
                        let head_left = conn.wq[0].len() - conn.wq_head_written;
                        if written >= head_left {
                            written -= head_left;
                            conn.wq.pop_front();
                            conn.wq_head_written = 0;
                            self.frames_out += 1;
                        } else {
                            conn.wq_head_written += written;
                            written = 0;
                        }
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
    }

    // ----- closing ---------------------------------------------------------

    /// The server closes the connection with a code: queue the Close frame,
    /// tell the shard, and close once it is flushed.
    fn close_with(&mut self, slot: usize, code: CloseCode, message: &str) {
        let reason = code.as_str_name();
        self.metrics
            .closed_by_server
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
        self.notify_shard(slot, ConnLoss::ProtocolError);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.shard = None;
        conn.rbuf = Vec::new();
        let frame = close_frame(code, message, 0);
        conn.wq_bytes += frame.len();
        conn.wq.push_back(frame);
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
        if let Some(shard) = conn.shard.take() {
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
        }
    }
}

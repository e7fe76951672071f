//! A deterministic simulation of one server and one client speaking the
//! session protocol over a faulty network, with a virtual clock.
//!
//! - [`World`]: a toy game world per session. Every applied input and every
//!   world tick appends one entry to a log and produces one counted frame
//!   (`LootGranted { tx_id: entry number, gold: entry value }`); a snapshot is
//!   a `SelfState` whose inventory lists every entry. The client rebuilds the
//!   log from those frames, and checks each delta continues its view exactly
//!   (a lost, duplicated or reordered frame is caught on the spot).
//! - [`Net`]: connections ("links"), each with an in-flight queue per
//!   direction, latency and jitter (order kept, like TCP), and faults: a cut
//!   loses everything in flight; lost acks drop client `Ack`s and blank
//!   piggybacked ones.
//! - [`Server`]: a session table, a page pool, the world, and the glue a real
//!   shard has: Hello / Resume / Input / Ack / Logout handling and the timer loop.
//! - [`Client`]: a [`ClientSession`], a scripted player sending numbered inputs,
//!   reconnects with resume.
//! - [`Sim`]: steps the earliest event (delivery, timer, script, fault), one
//!   at a time; cuts can be scheduled by step index or by time.
//!
//! Everything is seeded; a run is a pure function of its [`SimConfig`] and
//! fault schedule.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tether_proto::pb::{self, client_message::Msg as CMsg, server_message::Msg as SMsg};
use tether_proto::{decode_client, decode_server, encode_frame, split_frame, MAX_PAYLOAD_LEN};
use tether_session::{
    ClientSession, ClientSessionConfig, InputVerdict, PagePool, ResumePlan, ResumeToken,
    ServerFrameOutcome, ServerSession, SessionConfig, SessionState, TimerEvent,
};

pub type Time = u64;

/// World tick entries are `TICK_BASE + n`, input entries are the script's
/// input number: the two never collide.
pub const TICK_BASE: u32 = 1_000_000;

/// Any single run that takes more steps than this is stuck in a loop.
const MAX_STEPS: u64 = 2_000_000;

/// How long the client waits for `Welcome` / `Resumed` before giving up on a
/// connection attempt.
const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;

/// How long the server waits for `Hello` / `Resume` on a new connection.
const SERVER_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// Both ends see the connection close at once.
    Reset,
    /// The client sees it close; the server keeps a dead socket until its
    /// heartbeat timer or the client's next resume.
    HalfOpen,
    /// Nobody is told; everything sent is lost. Both sides' timers notice.
    Blackhole,
    /// The client gives up on the connection without closing it: what it
    /// already sent still reaches the server (possibly after the client has
    /// reconnected), what the server sends is lost.
    ClientAbandons,
}

pub const CUT_KINDS: [CutKind; 4] = [
    CutKind::Reset,
    CutKind::HalfOpen,
    CutKind::Blackhole,
    CutKind::ClientAbandons,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Cut(CutKind),
    /// Nothing on the client's connection moves for this long (a stalled
    /// route or a slow reader); then everything arrives, in order.
    Stall(u64),
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub server: SessionConfig,
    pub client: ClientSessionConfig,
    pub pool_max_idle: usize,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// Probability that an ack from the client is lost.
    pub ack_loss: f64,
    /// Every ack is lost before this time.
    pub lose_all_acks_until: Time,
    /// The client reconnects this long after losing a connection.
    pub reconnect_ms: u64,
    /// Inputs in the script, one every `input_every_ms` from the first Welcome.
    pub inputs: u32,
    pub input_every_ms: u64,
    /// World ticks (one entry per session per tick) until `ticks_until_ms`.
    pub tick_every_ms: u64,
    pub ticks_until_ms: Time,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            server: SessionConfig::default(),
            client: ClientSessionConfig::default(),
            pool_max_idle: 8,
            latency_ms: 20,
            jitter_ms: 0,
            ack_loss: 0.0,
            lose_all_acks_until: 0,
            reconnect_ms: 100,
            inputs: 20,
            input_every_ms: 30,
            tick_every_ms: 100,
            ticks_until_ms: 1_000,
            seed: 1,
        }
    }
}

// ---------------------------------------------------------------- world --

#[derive(Debug, Default, Clone)]
pub struct World {
    /// The character's state: everything that happened to it, in order.
    pub entries: Vec<u32>,
    /// Input seqs in the order they were applied.
    pub applied_seqs: Vec<u32>,
    /// Input payloads (the script's input number) in the order applied.
    pub applied_payloads: Vec<u32>,
    /// The same, across take-overs (which restart the input numbering).
    pub all_payloads: Vec<u32>,
    ticks: u32,
}

impl World {
    fn apply(&mut self, seq: u32, cmd: &pb::input::Cmd) -> pb::ServerMessage {
        let payload = match cmd {
            pb::input::Cmd::Ping(p) => p.client_time as u32,
            other => panic!("the script only sends pings, got {other:?}"),
        };
        self.applied_seqs.push(seq);
        self.applied_payloads.push(payload);
        self.all_payloads.push(payload);
        self.append(payload)
    }

    fn tick(&mut self) -> pb::ServerMessage {
        self.ticks += 1;
        self.append(TICK_BASE + self.ticks)
    }

    fn append(&mut self, value: u32) -> pb::ServerMessage {
        self.entries.push(value);
        server_msg(SMsg::Loot(pb::LootGranted {
            tx_id: self.entries.len() as u64,
            gold: u64::from(value),
            items: vec![],
            total_gold: 0,
        }))
    }

    fn snapshot(&self) -> pb::ServerMessage {
        server_msg(SMsg::SelfState(pb::SelfState {
            xp: self.entries.len() as u64,
            inventory: self
                .entries
                .iter()
                .map(|&v| pb::ItemStack {
                    item_id: v,
                    count: 1,
                })
                .collect(),
            ..Default::default()
        }))
    }
}

fn decode_frame(bytes: &Bytes) -> pb::ClientMessage {
    let (payload, used) = split_frame(bytes, MAX_PAYLOAD_LEN)
        .expect("valid header")
        .expect("whole frame");
    assert_eq!(used, bytes.len());
    decode_client(payload).expect("the client sends valid frames")
}

pub fn server_msg(msg: SMsg) -> pb::ServerMessage {
    pb::ServerMessage { msg: Some(msg) }
}

fn close_msg(code: pb::CloseCode, why: &str) -> pb::ServerMessage {
    server_msg(SMsg::Close(pb::Close {
        code: code as i32,
        message: why.into(),
        retry_after_ms: 0,
    }))
}

// ------------------------------------------------------------------ net --

#[derive(Debug, Clone)]
pub enum Packet {
    Frame(Bytes),
    Eof,
}

#[derive(Debug, Default)]
struct Pipe {
    queue: VecDeque<(Time, Packet)>,
    last: Time,
}

#[derive(Debug)]
struct Link {
    /// Client -> server.
    up: Pipe,
    /// Server -> client.
    down: Pipe,
    server_reads: bool,
    client_reads: bool,
    black: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

pub struct Net {
    links: BTreeMap<u64, Link>,
    next_id: u64,
    latency_ms: u64,
    jitter_ms: u64,
    ack_loss: f64,
    lose_all_acks_until: Time,
    /// Acks are only lost before this time: like every fault, ack loss stops
    /// when the settling phase begins. (It also eats keep-alives, so it can
    /// end in a heartbeat timeout, which then needs time to recover.)
    faults_until: Time,
    rng: SmallRng,
    pub acks_lost: u64,
    pub packets_lost_to_cuts: u64,
}

impl Net {
    fn new(cfg: &SimConfig) -> Self {
        Net {
            links: BTreeMap::new(),
            next_id: 1,
            latency_ms: cfg.latency_ms,
            jitter_ms: cfg.jitter_ms,
            ack_loss: cfg.ack_loss,
            lose_all_acks_until: cfg.lose_all_acks_until,
            faults_until: Time::MAX,
            rng: SmallRng::seed_from_u64(cfg.seed ^ 0x6e_6574),
            acks_lost: 0,
            packets_lost_to_cuts: 0,
        }
    }

    fn open(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.links.insert(
            id,
            Link {
                up: Pipe::default(),
                down: Pipe::default(),
                server_reads: true,
                client_reads: true,
                black: false,
            },
        );
        id
    }

    fn deliver_at(&mut self, pipe_last: Time, now: Time) -> Time {
        let jitter = if self.jitter_ms > 0 {
            self.rng.random_range(0..=self.jitter_ms)
        } else {
            0
        };
        pipe_last.max(now + self.latency_ms + jitter)
    }

    fn push(&mut self, id: u64, dir: Dir, packet: Packet, now: Time) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        let reader_alive = match dir {
            Dir::Up => link.server_reads,
            Dir::Down => link.client_reads,
        };
        if link.black || !reader_alive {
            return;
        }
        let last = match dir {
            Dir::Up => link.up.last,
            Dir::Down => link.down.last,
        };
        let at = self.deliver_at(last, now);
        let link = self.links.get_mut(&id).expect("checked above");
        let pipe = match dir {
            Dir::Up => &mut link.up,
            Dir::Down => &mut link.down,
        };
        pipe.last = at;
        pipe.queue.push_back((at, packet));
    }

    fn ack_lost(&mut self, now: Time) -> bool {
        if now >= self.faults_until {
            return false;
        }
        now < self.lose_all_acks_until
            || (self.ack_loss > 0.0 && self.rng.random_bool(self.ack_loss))
    }

    /// Client -> server, with lost acks applied.
    fn send_up(&mut self, id: u64, msg: &pb::ClientMessage, now: Time) {
        let mut msg = msg.clone();
        match &mut msg.msg {
            Some(CMsg::Ack(_)) if self.ack_lost(now) => {
                self.acks_lost += 1;
                return;
            }
            Some(CMsg::Input(i)) if i.ack != 0 && self.ack_lost(now) => {
                self.acks_lost += 1;
                i.ack = 0;
            }
            _ => {}
        }
        self.push(id, Dir::Up, Packet::Frame(encode_frame(&msg)), now);
    }

    fn send_down(&mut self, id: u64, frame: Bytes, now: Time) {
        self.push(id, Dir::Down, Packet::Frame(frame), now);
    }

    /// The server closes its end: it reads nothing more, and the client gets
    /// what was written, then EOF.
    fn server_close(&mut self, id: u64, now: Time) {
        self.push(id, Dir::Down, Packet::Eof, now);
        if let Some(link) = self.links.get_mut(&id) {
            link.server_reads = false;
            link.up.queue.clear();
        }
        self.gc(id);
    }

    /// The client closes its end.
    fn client_close(&mut self, id: u64, now: Time) {
        self.push(id, Dir::Up, Packet::Eof, now);
        if let Some(link) = self.links.get_mut(&id) {
            link.client_reads = false;
            link.down.queue.clear();
        }
        self.gc(id);
    }

    /// A fault: everything in flight is lost.
    fn cut(&mut self, id: u64, kind: CutKind) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        self.packets_lost_to_cuts += (link.up.queue.len() + link.down.queue.len()) as u64;
        if kind != CutKind::ClientAbandons {
            link.up.queue.clear();
        }
        link.down.queue.clear();
        match kind {
            CutKind::Reset => {
                link.server_reads = false;
                link.client_reads = false;
            }
            CutKind::HalfOpen => {
                link.client_reads = false;
                link.black = true;
            }
            CutKind::Blackhole => link.black = true,
            CutKind::ClientAbandons => {
                self.packets_lost_to_cuts -= link.up.queue.len() as u64;
                link.client_reads = false;
            }
        }
    }

    fn stall(&mut self, id: u64, until: Time) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        for pipe in [&mut link.up, &mut link.down] {
            for (at, _) in pipe.queue.iter_mut() {
                *at = (*at).max(until);
            }
            pipe.last = pipe.last.max(until);
        }
    }

    /// A link is gone once neither end reads; half-open and black links
    /// linger until both ends closed them, as sockets do.
    fn gc(&mut self, id: u64) {
        if let Some(link) = self.links.get(&id) {
            let drained = link.up.queue.is_empty() && link.down.queue.is_empty();
            if !link.server_reads && !link.client_reads && drained {
                self.links.remove(&id);
            }
        }
    }

    fn next_delivery(&self) -> Option<(Time, u64, Dir)> {
        let mut best: Option<(Time, u64, Dir)> = None;
        for (&id, link) in &self.links {
            for (dir, pipe) in [(Dir::Up, &link.up), (Dir::Down, &link.down)] {
                if let Some(&(at, _)) = pipe.queue.front() {
                    if best.is_none_or(|(t, _, _)| at < t) {
                        best = Some((at, id, dir));
                    }
                }
            }
        }
        best
    }

    fn pop(&mut self, id: u64, dir: Dir) -> Option<Packet> {
        let link = self.links.get_mut(&id)?;
        let packet = match dir {
            Dir::Up => link.up.queue.pop_front(),
            Dir::Down => link.down.queue.pop_front(),
        }
        .map(|(_, p)| p);
        self.gc(id);
        packet
    }

    fn up_pending(&self, id: u64) -> bool {
        self.links.get(&id).is_some_and(|l| !l.up.queue.is_empty())
    }

    pub fn open_links(&self) -> usize {
        self.links.len()
    }
}

// --------------------------------------------------------------- server --

#[derive(Debug)]
pub struct Entry {
    pub session: ServerSession,
    pub world: World,
    pub conn: Option<u64>,
    pub name: String,
}

#[derive(Debug, Default)]
pub struct ServerLog {
    pub logins: u32,
    pub take_overs: u32,
    pub resumes: Vec<pb::ResumeMode>,
    pub refused: Vec<String>,
    pub expired: Vec<u64>,
    pub heartbeat_timeouts: u32,
    pub duplicates: u32,
    /// Duplicates that came on the session's current connection: only
    /// possible for inputs a retired connection delivered first.
    pub duplicates_on_current: u32,
    /// Inputs applied from a retired connection's leftovers.
    pub applied_from_retired: u32,
    /// Protocol errors by the client: never expected in these simulations.
    pub errors: Vec<String>,
}

pub struct Server {
    pub cfg: SessionConfig,
    pub pool: PagePool,
    pub sessions: BTreeMap<u64, Entry>,
    /// Open connections and the session each is bound to.
    pub conns: BTreeMap<u64, Option<u64>>,
    /// Handshake deadlines of connections not bound yet.
    handshakes: BTreeMap<u64, Time>,
    /// Connections a resume replaced, by session: like a shard whose inbound
    /// queue still holds their frames, the server still processes what they
    /// had sent, then closes them.
    pub retired: BTreeMap<u64, u64>,
    next_session: u64,
    rng: SmallRng,
    next_tick: Option<Time>,
    tick_every: u64,
    ticks_until: Time,
    client_keepalive_ms: u64,
    pub protect: bool,
    pub log: ServerLog,
}

impl Server {
    fn new(cfg: &SimConfig) -> Self {
        Server {
            cfg: cfg.server.clone(),
            pool: PagePool::new(cfg.pool_max_idle),
            sessions: BTreeMap::new(),
            conns: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            retired: BTreeMap::new(),
            next_session: 100,
            rng: SmallRng::seed_from_u64(cfg.seed ^ 0x7365_7276),
            next_tick: (cfg.tick_every_ms > 0).then_some(cfg.tick_every_ms),
            tick_every: cfg.tick_every_ms,
            ticks_until: cfg.ticks_until_ms,
            client_keepalive_ms: cfg.client.keepalive_interval_ms,
            protect: false,
            log: ServerLog::default(),
        }
    }

    fn token(&mut self) -> ResumeToken {
        ResumeToken(self.rng.random())
    }

    /// Writes a control frame (not counted).
    fn write(&mut self, net: &mut Net, link: u64, msg: &pb::ServerMessage, now: Time) {
        net.send_down(link, encode_frame(msg), now);
    }

    /// A counted frame: recorded for replay, written when Live.
    fn push(&mut self, net: &mut Net, sid: u64, msg: &pb::ServerMessage, now: Time) {
        let frame = encode_frame(msg);
        let entry = self
            .sessions
            .get_mut(&sid)
            .expect("pushing to a live session");
        entry.session.push_frame(frame.clone(), &mut self.pool, now);
        if entry.session.state() == SessionState::Live {
            if let Some(link) = entry.conn {
                net.send_down(link, frame, now);
            }
        }
    }

    /// Closes a connection with a reason. If it was a session's connection,
    /// the session becomes a zombie.
    fn close(&mut self, net: &mut Net, link: u64, code: pb::CloseCode, why: &str, now: Time) {
        self.handshakes.remove(&link);
        if self.conns.remove(&link).is_none() {
            return;
        }
        self.write(net, link, &close_msg(code, why), now);
        net.server_close(link, now);
        self.unbind(link, now);
    }

    fn unbind(&mut self, link: u64, now: Time) {
        for entry in self.sessions.values_mut() {
            if entry.conn == Some(link) {
                entry.conn = None;
                entry.session.detach(now);
            }
        }
    }

    fn error(&mut self, net: &mut Net, link: u64, code: pb::CloseCode, why: String, now: Time) {
        self.log.errors.push(why.clone());
        self.close(net, link, code, &why, now);
    }

    fn accept(&mut self, link: u64, now: Time) {
        self.conns.insert(link, None);
        self.handshakes
            .insert(link, now + SERVER_HANDSHAKE_TIMEOUT_MS);
    }

    fn bind(&mut self, link: u64, sid: u64) {
        self.handshakes.remove(&link);
        self.conns.insert(link, Some(sid));
    }

    fn on_packet(&mut self, net: &mut Net, link: u64, packet: Packet, now: Time) {
        if let Some(&sid) = self.retired.get(&link) {
            if let Packet::Frame(bytes) = packet {
                let msg = decode_frame(&bytes);
                match msg.msg {
                    Some(CMsg::Input(input)) => self.on_input(net, None, sid, input, now),
                    Some(CMsg::Ack(a)) => self.on_ack(net, None, sid, a.frames_received, now),
                    _ => {}
                }
            }
            if !net.up_pending(link) {
                self.retired.remove(&link);
                net.server_close(link, now);
            }
            return;
        }
        match packet {
            Packet::Eof => {
                self.handshakes.remove(&link);
                if self.conns.remove(&link).is_some() {
                    net.server_close(link, now);
                    self.unbind(link, now);
                }
            }
            Packet::Frame(bytes) => {
                let msg = decode_frame(&bytes);
                self.on_client(net, link, msg, now);
            }
        }
    }

    pub fn on_client(&mut self, net: &mut Net, link: u64, msg: pb::ClientMessage, now: Time) {
        let Some(&bound) = self.conns.get(&link) else {
            return;
        };
        match msg.msg.expect("decoded messages have a body") {
            CMsg::Hello(h) => {
                if bound.is_some() {
                    return self.error(
                        net,
                        link,
                        pb::CloseCode::ProtocolError,
                        "second Hello".into(),
                        now,
                    );
                }
                let name = match h.auth {
                    Some(pb::hello::Auth::DevName(n)) => n,
                    _ => panic!("the harness logs in with dev names"),
                };
                self.login(net, link, name, now);
            }
            CMsg::Resume(r) => {
                if bound.is_some() {
                    return self.error(
                        net,
                        link,
                        pb::CloseCode::ProtocolError,
                        "second Resume".into(),
                        now,
                    );
                }
                self.resume(net, link, r, now);
            }
            CMsg::Input(input) => {
                let Some(sid) = bound else {
                    return self.error(
                        net,
                        link,
                        pb::CloseCode::ProtocolError,
                        "Input before the handshake".into(),
                        now,
                    );
                };
                self.on_input(net, Some(link), sid, input, now);
            }
            CMsg::Ack(a) => {
                let Some(sid) = bound else {
                    return self.error(
                        net,
                        link,
                        pb::CloseCode::ProtocolError,
                        "Ack before the handshake".into(),
                        now,
                    );
                };
                self.on_ack(net, Some(link), sid, a.frames_received, now);
            }
            CMsg::Logout(_) => {
                let Some(sid) = bound else {
                    return self.error(
                        net,
                        link,
                        pb::CloseCode::ProtocolError,
                        "Logout before the handshake".into(),
                        now,
                    );
                };
                self.drop_retired(net, sid, now);
                let mut entry = self.sessions.remove(&sid).expect("bound sessions exist");
                entry.session.release(&mut self.pool);
                entry.conn = None;
                self.close(net, link, pb::CloseCode::Logout, "bye", now);
            }
        }
    }

    /// A session error: close the connection it came on (if it is still the
    /// session's) and record it, since the simulated client never misbehaves.
    fn session_error(
        &mut self,
        net: &mut Net,
        link: Option<u64>,
        e: tether_session::SessionError,
        now: Time,
    ) {
        match link {
            Some(link) => self.error(net, link, e.close_code(), e.to_string(), now),
            None => self
                .log
                .errors
                .push(format!("from a retired connection: {e}")),
        }
    }

    fn on_input(
        &mut self,
        net: &mut Net,
        link: Option<u64>,
        sid: u64,
        input: pb::Input,
        now: Time,
    ) {
        let Some(entry) = self.sessions.get_mut(&sid) else {
            return;
        };
        if input.ack != 0 {
            if let Err(e) = entry.session.on_ack(input.ack, &mut self.pool, now) {
                return self.session_error(net, link, e, now);
            }
        }
        entry.session.heard_from(now);
        match entry.session.check_input(input.seq, now) {
            Ok(InputVerdict::Apply) => {
                let cmd = input.cmd.expect("inputs carry a command");
                let frame = entry.world.apply(input.seq, &cmd);
                self.push(net, sid, &frame, now);
                if link.is_none() {
                    self.log.applied_from_retired += 1;
                }
            }
            Ok(InputVerdict::Duplicate) => {
                self.log.duplicates += 1;
                if link.is_some() {
                    self.log.duplicates_on_current += 1;
                }
            }
            Err(e) => self.session_error(net, link, e, now),
        }
    }

    fn on_ack(&mut self, net: &mut Net, link: Option<u64>, sid: u64, frames: u64, now: Time) {
        let Some(entry) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Err(e) = entry.session.on_ack(frames, &mut self.pool, now) {
            return self.session_error(net, link, e, now);
        }
        entry.session.heard_from(now);
    }

    fn welcome(&self, sid: u64, took_over: bool) -> pb::ServerMessage {
        let entry = &self.sessions[&sid];
        server_msg(SMsg::Welcome(pb::Welcome {
            session_id: sid,
            resume_token: entry.session.token().0.to_vec(),
            entity_id: sid,
            game: Vec::new(),
            heartbeat_interval_ms: self.client_keepalive_ms as u32,
            heartbeat_timeout_ms: self.cfg.heartbeat_timeout_ms as u32,
            resume_grace_ms: self.cfg.zombie_grace_ms as u32,
            took_over,
        }))
    }

    fn login(&mut self, net: &mut Net, link: u64, name: String, now: Time) {
        let token = self.token();
        let existing = self
            .sessions
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(&sid, _)| sid);
        let (sid, took_over) = match existing {
            Some(sid) => {
                self.log.take_overs += 1;
                let old = self.sessions.get_mut(&sid).expect("found").conn.take();
                if let Some(old) = old {
                    self.close(
                        net,
                        old,
                        pb::CloseCode::SessionTakenOver,
                        "logged in elsewhere",
                        now,
                    );
                }
                // Frames of replaced connections belong to the old numbering.
                let retired: Vec<u64> = self
                    .retired
                    .iter()
                    .filter(|(_, &s)| s == sid)
                    .map(|(&l, _)| l)
                    .collect();
                for link in retired {
                    self.retired.remove(&link);
                    net.server_close(link, now);
                }
                let entry = self.sessions.get_mut(&sid).expect("found");
                let base = entry.session.take_over(token, &mut self.pool, now);
                assert_eq!(base, 0, "a login's snapshot starts at frame 1");
                // A new input numbering starts: exactly-once is per numbering.
                entry.world.applied_seqs.clear();
                entry.world.applied_payloads.clear();
                (sid, true)
            }
            None => {
                self.log.logins += 1;
                let sid = self.next_session;
                self.next_session += 1;
                let mut session = ServerSession::new(sid, token, now, self.cfg.clone());
                session.set_grace_frozen(self.protect, now);
                self.sessions.insert(
                    sid,
                    Entry {
                        session,
                        world: World::default(),
                        conn: None,
                        name,
                    },
                );
                (sid, false)
            }
        };
        self.sessions.get_mut(&sid).expect("just made").conn = Some(link);
        self.bind(link, sid);
        let welcome = self.welcome(sid, took_over);
        self.write(net, link, &welcome, now);
        let snapshot = self.sessions[&sid].world.snapshot();
        self.push(net, sid, &snapshot, now);
    }

    fn resume(&mut self, net: &mut Net, link: u64, r: pb::Resume, now: Time) {
        let Some(entry) = self.sessions.get(&r.session_id) else {
            self.log.refused.push("unknown session".into());
            return self.close(
                net,
                link,
                pb::CloseCode::ResumeRefused,
                "resume refused",
                now,
            );
        };
        let old = entry.conn;
        let new_token = self.token();
        let entry = self.sessions.get_mut(&r.session_id).expect("found");
        let plan =
            match entry
                .session
                .resume(&r.token, r.frames_received, new_token, &mut self.pool, now)
            {
                Ok(plan) => plan,
                Err(why) => {
                    self.log.refused.push(format!("{why:?}"));
                    return self.close(net, link, why.close_code(), "resume refused", now);
                }
            };
        // The new connection wins over a half-open old one.
        entry.conn = Some(link);
        if let Some(old) = old.filter(|&o| o != link) {
            if self.conns.remove(&old).is_some() {
                self.write(
                    net,
                    old,
                    &close_msg(pb::CloseCode::SessionTakenOver, "resumed elsewhere"),
                    now,
                );
                if net.up_pending(old) {
                    self.retired.insert(old, r.session_id);
                } else {
                    net.server_close(old, now);
                }
            }
        }
        self.bind(link, r.session_id);
        let entry = &self.sessions[&r.session_id];
        let (mode, frames_base) = match &plan {
            ResumePlan::Replay(_) => (pb::ResumeMode::Replay, r.frames_received),
            ResumePlan::Snapshot { frames_base } => (pb::ResumeMode::Snapshot, *frames_base),
        };
        self.log.resumes.push(mode);
        let snapshot = entry.world.snapshot();
        let resumed = server_msg(SMsg::Resumed(pb::Resumed {
            session_id: r.session_id,
            resume_token: entry.session.token().0.to_vec(),
            mode: mode as i32,
            frames_base,
            last_input_seq: entry.session.last_applied_input(),
        }));
        self.write(net, link, &resumed, now);
        match plan {
            ResumePlan::Replay(frames) => {
                for frame in frames {
                    net.send_down(link, frame, now);
                }
            }
            ResumePlan::Snapshot { .. } => self.push(net, r.session_id, &snapshot, now),
        }
    }

    fn next_timer(&self) -> Option<Time> {
        let sessions = self
            .sessions
            .values()
            .filter_map(|e| e.session.poll_timeout())
            .min();
        let handshakes = self.handshakes.values().copied().min();
        [sessions, self.next_tick, handshakes]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timers(&mut self, net: &mut Net, now: Time) {
        let overdue: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, &deadline)| deadline <= now)
            .map(|(&link, _)| link)
            .collect();
        for link in overdue {
            self.close(
                net,
                link,
                pb::CloseCode::HandshakeTimeout,
                "no Hello / Resume",
                now,
            );
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            let sids: Vec<u64> = self.sessions.keys().copied().collect();
            for sid in sids {
                let frame = self.sessions.get_mut(&sid).expect("listed").world.tick();
                self.push(net, sid, &frame, now);
            }
            let next = now + self.tick_every;
            self.next_tick = (next < self.ticks_until).then_some(next);
        }
        let sids: Vec<u64> = self.sessions.keys().copied().collect();
        for sid in sids {
            // The quinn-proto loop: handle until nothing is due.
            let mut fired = 0;
            while let Some(entry) = self.sessions.get_mut(&sid) {
                let Some(event) = entry.session.handle_timeout(now) else {
                    break;
                };
                let conn = entry.conn;
                fired += 1;
                assert!(fired < 10, "handle_timeout keeps firing at {now}");
                match event {
                    TimerEvent::HeartbeatTimeout => {
                        self.log.heartbeat_timeouts += 1;
                        match conn {
                            Some(link) => self.close(
                                net,
                                link,
                                pb::CloseCode::HeartbeatTimeout,
                                "silent",
                                now,
                            ),
                            None => entry.session.detach(now),
                        }
                    }
                    TimerEvent::ZombieExpired => {
                        self.drop_retired(net, sid, now);
                        let mut entry = self.sessions.remove(&sid).expect("present");
                        entry.session.release(&mut self.pool);
                        self.log.expired.push(sid);
                    }
                    TimerEvent::KeepaliveDue => {
                        let ack = server_msg(SMsg::InputAck(pb::InputAck {
                            seq: entry.session.last_applied_input(),
                        }));
                        self.push(net, sid, &ack, now);
                        self.sessions
                            .get_mut(&sid)
                            .expect("present")
                            .session
                            .input_ack_sent(now);
                    }
                }
            }
            if let Some(entry) = self.sessions.get(&sid) {
                if let Some(next) = entry.session.poll_timeout() {
                    assert!(next > now, "poll_timeout {next} not after handled {now}");
                }
            }
        }
    }

    fn drop_retired(&mut self, net: &mut Net, sid: u64, now: Time) {
        let links: Vec<u64> = self
            .retired
            .iter()
            .filter(|(_, &s)| s == sid)
            .map(|(&l, _)| l)
            .collect();
        for link in links {
            self.retired.remove(&link);
            net.server_close(link, now);
        }
    }

    /// Protect mode: freeze (or thaw) every session's zombie grace.
    pub fn set_protect(&mut self, on: bool, now: Time) {
        self.protect = on;
        for entry in self.sessions.values_mut() {
            entry.session.set_grace_frozen(on, now);
        }
    }

    /// The only session (the simulations run one player).
    pub fn only(&self) -> &Entry {
        assert_eq!(self.sessions.len(), 1, "expected exactly one session");
        self.sessions.values().next().expect("one")
    }
}

// --------------------------------------------------------------- client --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No connection; reconnect at the time given (if any).
    Down {
        reconnect_at: Option<Time>,
    },
    Handshake {
        link: u64,
        deadline: Time,
    },
    Live {
        link: u64,
    },
}

#[derive(Debug, Default)]
pub struct ClientLog {
    pub welcomes: u32,
    pub resumes: Vec<pb::ResumeMode>,
    pub resent: u32,
    pub closes: Vec<pb::CloseCode>,
    pub disconnects: u32,
    pub silences: u32,
    pub handshake_timeouts: u32,
    pub queue_full: u32,
    /// Anything that breaks the protocol's promises: never expected.
    pub violations: Vec<String>,
}

pub struct Client {
    pub session: ClientSession,
    pub view: Vec<u32>,
    pub phase: Phase,
    pub name: String,
    /// Script inputs handed to `send_input` so far (numbered 1..).
    pub inputs_sent: u32,
    /// Inputs handed to `send_input` since the last Welcome.
    pub inputs_this_session: u32,
    script_inputs: u32,
    input_every: u64,
    next_input_at: Option<Time>,
    reconnect_ms: u64,
    pub logging_out: bool,
    pub logged_out: bool,
    pub log: ClientLog,
}

impl Client {
    fn new(cfg: &SimConfig, name: &str) -> Self {
        Client {
            session: ClientSession::new(cfg.client.clone()),
            view: Vec::new(),
            phase: Phase::Down {
                reconnect_at: Some(0),
            },
            name: name.into(),
            inputs_sent: 0,
            inputs_this_session: 0,
            script_inputs: cfg.inputs,
            input_every: cfg.input_every_ms,
            next_input_at: None,
            reconnect_ms: cfg.reconnect_ms,
            logging_out: false,
            logged_out: false,
            log: ClientLog::default(),
        }
    }

    fn link(&self) -> Option<u64> {
        match self.phase {
            Phase::Down { .. } => None,
            Phase::Handshake { link, .. } | Phase::Live { link } => Some(link),
        }
    }

    fn connect(&mut self, net: &mut Net, server: &mut Server, now: Time) {
        let link = net.open();
        server.accept(link, now);
        let first = match self.session.resume_message() {
            Some(resume) => resume,
            None => pb::ClientMessage {
                msg: Some(CMsg::Hello(pb::Hello {
                    protocol_version: tether_proto::PROTOCOL_VERSION,
                    auth: Some(pb::hello::Auth::DevName(self.name.clone())),
                    client: "sim".into(),
                })),
            },
        };
        net.send_up(link, &first, now);
        self.phase = Phase::Handshake {
            link,
            deadline: now + HANDSHAKE_TIMEOUT_MS,
        };
    }

    /// Drops the current connection and plans the next one.
    fn lose(&mut self, net: &mut Net, now: Time, close_our_end: bool) {
        if let Some(link) = self.link() {
            if close_our_end {
                net.client_close(link, now);
            }
        }
        if matches!(self.phase, Phase::Live { .. }) {
            self.log.disconnects += 1;
        }
        self.session.on_disconnect(now);
        let reconnect_at = (!self.logged_out).then_some(now + self.reconnect_ms);
        self.phase = Phase::Down { reconnect_at };
    }

    fn write(&mut self, net: &mut Net, msg: &pb::ClientMessage, now: Time) {
        if let Phase::Live { link } = self.phase {
            net.send_up(link, msg, now);
        }
    }

    fn on_packet(&mut self, net: &mut Net, link: u64, packet: Packet, now: Time) {
        if self.link() != Some(link) {
            return;
        }
        let bytes = match packet {
            Packet::Eof => return self.lose(net, now, true),
            Packet::Frame(bytes) => bytes,
        };
        let (payload, _) = split_frame(&bytes, MAX_PAYLOAD_LEN)
            .expect("valid header")
            .expect("whole frame");
        let msg = decode_server(payload).expect("the server sends valid frames");
        match self.session.on_server_message(&msg, now) {
            ServerFrameOutcome::Welcomed => {
                self.log.welcomes += 1;
                self.view.clear();
                self.inputs_this_session = 0;
                self.phase = Phase::Live { link };
                if self.next_input_at.is_none() {
                    self.next_input_at = Some(now);
                }
                if self.logging_out {
                    self.send_logout(net, now);
                }
            }
            ServerFrameOutcome::Resumed { mode, resend } => {
                self.log.resumes.push(mode);
                self.log.resent += resend.len() as u32;
                self.phase = Phase::Live { link };
                for msg in &resend {
                    self.write(net, msg, now);
                }
                if self.logging_out {
                    self.send_logout(net, now);
                }
            }
            ServerFrameOutcome::Closed(close) => {
                let code = pb::CloseCode::try_from(close.code).expect("known code");
                self.log.closes.push(code);
                if code == pb::CloseCode::ProtocolError {
                    self.log
                        .violations
                        .push(format!("client saw a protocol error: {}", close.message));
                }
                if code == pb::CloseCode::Logout {
                    self.logged_out = true;
                }
                self.lose(net, now, true);
            }
            ServerFrameOutcome::Game => self.on_game(msg),
        }
    }

    fn on_game(&mut self, msg: pb::ServerMessage) {
        match msg.msg {
            Some(SMsg::Loot(l)) => {
                if l.tx_id != self.view.len() as u64 + 1 {
                    self.log.violations.push(format!(
                        "delta {} does not follow a view of {} entries",
                        l.tx_id,
                        self.view.len()
                    ));
                }
                self.view.push(l.gold as u32);
            }
            Some(SMsg::SelfState(s)) => {
                self.view = s.inventory.iter().map(|i| i.item_id).collect();
                assert_eq!(s.xp, self.view.len() as u64);
            }
            _ => {}
        }
    }

    fn send_logout(&mut self, net: &mut Net, now: Time) {
        let logout = pb::ClientMessage {
            msg: Some(CMsg::Logout(pb::Logout {})),
        };
        self.write(net, &logout, now);
    }

    fn next_timer(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut merge = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.phase {
            Phase::Down { reconnect_at } => merge(reconnect_at),
            Phase::Handshake { deadline, .. } => merge(Some(deadline)),
            Phase::Live { .. } => merge(self.session.poll_timeout()),
        }
        if self.inputs_sent < self.script_inputs && self.session.can_resume() && !self.logging_out {
            merge(self.next_input_at);
        }
        t
    }

    fn on_timers(&mut self, net: &mut Net, server: &mut Server, now: Time) {
        match self.phase {
            Phase::Down { reconnect_at } if reconnect_at.is_some_and(|t| t <= now) => {
                self.connect(net, server, now);
            }
            Phase::Handshake { deadline, .. } if deadline <= now => {
                self.log.handshake_timeouts += 1;
                self.lose(net, now, true);
            }
            Phase::Live { .. } => {
                if self.session.is_silent(now) {
                    self.log.silences += 1;
                    return self.lose(net, now, true);
                }
                if let Some(ack) = self.session.poll_ack(now) {
                    self.write(net, &ack, now);
                }
                if let Some(t) = self.session.poll_timeout() {
                    assert!(t > now, "client poll_timeout {t} not after {now}");
                }
            }
            _ => {}
        }
        let script_due = self.next_input_at.is_some_and(|t| t <= now);
        if script_due
            && self.inputs_sent < self.script_inputs
            && self.session.can_resume()
            && !self.logging_out
        {
            let number = self.inputs_sent + 1;
            let cmd = pb::input::Cmd::Ping(pb::Ping {
                client_time: u64::from(number),
            });
            match self.session.send_input(cmd, now) {
                Ok(msg) => {
                    self.inputs_sent = number;
                    self.inputs_this_session += 1;
                    // Written only on an established connection; otherwise
                    // the next Resumed re-sends it.
                    if self.session.is_established() {
                        self.write(net, &msg, now);
                    }
                }
                Err(_) => self.log.queue_full += 1,
            }
            self.next_input_at = Some(now + self.input_every);
        }
    }
}

// ------------------------------------------------------------------ sim --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Fault,
    Deliver(u64, Dir),
    Server,
    Client,
}

pub struct Sim {
    pub cfg: SimConfig,
    pub now: Time,
    pub steps: u64,
    pub net: Net,
    pub server: Server,
    pub client: Client,
    /// Cuts of the client's connection, before the step with that index.
    pub cuts_at_steps: BTreeMap<u64, CutKind>,
    /// Faults on the client's connection at a time.
    pub faults_at_times: VecDeque<(Time, Fault)>,
    pub cuts_done: u32,
    /// Whether every script input must be applied exactly once over the whole
    /// run (false where the test loses the session on purpose).
    pub expect_no_loss: bool,
    trace: Option<Vec<String>>,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let trace = std::env::var_os("TETHER_SIM_TRACE").map(|_| Vec::new());
        Sim {
            net: Net::new(&cfg),
            server: Server::new(&cfg),
            client: Client::new(&cfg, "player"),
            cfg,
            now: 0,
            steps: 0,
            cuts_at_steps: BTreeMap::new(),
            faults_at_times: VecDeque::new(),
            cuts_done: 0,
            expect_no_loss: true,
            trace,
        }
    }

    pub fn cut_at_step(mut self, step: u64, kind: CutKind) -> Self {
        self.cuts_at_steps.insert(step, kind);
        self
    }

    pub fn cut_at_time(self, at: Time, kind: CutKind) -> Self {
        self.fault_at_time(at, Fault::Cut(kind))
    }

    pub fn fault_at_time(mut self, at: Time, fault: Fault) -> Self {
        self.faults_at_times.push_back((at, fault));
        self.faults_at_times.make_contiguous().sort_by_key(|c| c.0);
        self
    }

    /// Time after which neither the script nor the world produce anything new.
    pub fn active_end(&self) -> Time {
        let script = u64::from(self.cfg.inputs) * self.cfg.input_every_ms;
        let ticks = if self.cfg.tick_every_ms > 0 {
            self.cfg.ticks_until_ms
        } else {
            0
        };
        let faults = self.faults_at_times.back().map_or(0, |c| c.0);
        script.max(ticks).max(faults) + 1_000
    }

    fn trace(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>7} #{:<5} {}", self.now, self.steps, what()));
        }
    }

    /// Cuts whatever connection the client has right now.
    pub fn cut(&mut self, kind: CutKind) {
        self.cuts_done += 1;
        let Some(link) = self.client.link() else {
            self.trace(|| format!("cut {kind:?}: no connection"));
            return;
        };
        self.trace(|| format!("cut {kind:?} link {link}"));
        self.net.cut(link, kind);
        let now = self.now;
        match kind {
            CutKind::Reset => {
                self.client.lose(&mut self.net, now, false);
                if self.server.conns.remove(&link).is_some() {
                    self.server.unbind(link, now);
                }
                self.net.gc(link);
            }
            CutKind::HalfOpen | CutKind::ClientAbandons => {
                self.client.lose(&mut self.net, now, false)
            }
            CutKind::Blackhole => {}
        }
    }

    fn next_event(&self) -> Option<(Time, Ev)> {
        let mut best: Option<(Time, Ev)> = None;
        let mut consider = |t: Option<Time>, ev: Ev| {
            if let Some(t) = t {
                if best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, ev));
                }
            }
        };
        consider(self.faults_at_times.front().map(|c| c.0), Ev::Fault);
        if let Some((t, link, dir)) = self.net.next_delivery() {
            consider(Some(t), Ev::Deliver(link, dir));
        }
        consider(self.server.next_timer(), Ev::Server);
        consider(self.client.next_timer(), Ev::Client);
        best
    }

    /// Processes one event. Returns false when nothing is scheduled before `until`.
    pub fn step(&mut self, until: Time) -> bool {
        if let Some(kind) = self.cuts_at_steps.remove(&self.steps) {
            self.cut(kind);
        }
        let Some((at, ev)) = self.next_event() else {
            return false;
        };
        if at > until {
            return false;
        }
        self.now = self.now.max(at);
        self.steps += 1;
        assert!(self.steps < MAX_STEPS, "simulation does not settle");
        let now = self.now;
        match ev {
            Ev::Fault => match self.faults_at_times.pop_front().expect("scheduled").1 {
                Fault::Cut(kind) => self.cut(kind),
                Fault::Stall(ms) => {
                    if let Some(link) = self.client.link() {
                        self.trace(|| format!("stall link {link} for {ms} ms"));
                        self.net.stall(link, now + ms);
                    }
                }
            },
            Ev::Deliver(link, dir) => {
                let Some(packet) = self.net.pop(link, dir) else {
                    return true;
                };
                self.trace(|| format!("deliver {dir:?} link {link}: {}", describe(&packet, dir)));
                match dir {
                    Dir::Up => self.server.on_packet(&mut self.net, link, packet, now),
                    Dir::Down => self.client.on_packet(&mut self.net, link, packet, now),
                }
            }
            Ev::Server => {
                self.trace(|| "server timers".into());
                self.server.on_timers(&mut self.net, now);
            }
            Ev::Client => {
                let phase = self.client.phase;
                self.trace(|| format!("client timers ({phase:?})"));
                self.client.on_timers(&mut self.net, &mut self.server, now);
            }
        }
        true
    }

    pub fn run_until(&mut self, until: Time) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    /// Runs the whole script, lets everything settle, checks that both sides
    /// agree, logs out and checks that nothing leaked.
    pub fn finish(&mut self) {
        self.net.faults_until = self.active_end();
        let settle = self.active_end() + 60_000;
        self.run_until(settle);
        self.check_converged();
        self.logout();
    }

    /// Both sides agree: every input applied exactly once, in order; the
    /// client's view is the server's state; nothing is left unacked.
    pub fn check_converged(&self) {
        let ctx = self.context();
        assert!(
            self.server.log.errors.is_empty(),
            "server saw errors: {:?}\n{ctx}",
            self.server.log.errors
        );
        assert!(
            self.client.log.violations.is_empty(),
            "client saw violations: {:?}\n{ctx}",
            self.client.log.violations
        );
        assert!(
            matches!(self.client.phase, Phase::Live { .. }),
            "client not connected at the end\n{ctx}"
        );
        let entry = self.server.only();
        assert_eq!(entry.session.state(), SessionState::Live, "{ctx}");
        assert_eq!(
            self.client.inputs_sent, self.cfg.inputs,
            "script did not finish\n{ctx}"
        );
        let n = self.client.inputs_this_session;
        let expected: Vec<u32> = (1..=n).collect();
        assert_eq!(
            entry.world.applied_seqs, expected,
            "input seqs not applied exactly once in order\n{ctx}"
        );
        let first_payload = self.cfg.inputs - n + 1;
        let payloads: Vec<u32> = (first_payload..=self.cfg.inputs).collect();
        assert_eq!(
            entry.world.applied_payloads, payloads,
            "wrong commands applied\n{ctx}"
        );
        assert_eq!(
            self.client.view, entry.world.entries,
            "client view differs from the server\n{ctx}"
        );
        // The client re-sends only what the server had not applied when it
        // resumed; the rest must come from leftovers of a replaced connection.
        assert!(
            self.server.log.duplicates_on_current <= self.server.log.applied_from_retired,
            "the client re-sent inputs the server had applied\n{ctx}"
        );
        // While nothing was let go over the cap, every resume can replay.
        if entry.session.replay_evicted() == 0 {
            assert!(
                !self.server.log.resumes.contains(&pb::ResumeMode::Snapshot),
                "a snapshot although every unacked frame was held\n{ctx}"
            );
        }
        if self.expect_no_loss {
            let all: Vec<u32> = (1..=self.cfg.inputs).collect();
            assert_eq!(
                entry.world.all_payloads, all,
                "inputs lost or applied twice over the run\n{ctx}"
            );
        }
        assert_eq!(self.client.session.unacked_inputs(), 0, "{ctx}");
        assert_eq!(self.client.session.acked_input(), n, "{ctx}");
        assert!(
            self.client.session.frames_received() <= entry.session.frames_sent(),
            "{ctx}"
        );
    }

    /// Logs out and checks that no session, connection or page is left.
    pub fn logout(&mut self) {
        self.client.logging_out = true;
        self.client.send_logout(&mut self.net, self.now);
        let deadline = self.now + 60_000;
        while !self.client.logged_out && self.step(deadline) {}
        self.run_until(self.now + 1_000);
        let ctx = self.context();
        assert!(self.client.logged_out, "logout did not complete\n{ctx}");
        assert!(self.server.sessions.is_empty(), "sessions left\n{ctx}");
        assert_eq!(self.server.pool.in_use(), 0, "replay pages leaked\n{ctx}");
        assert!(self.server.pool.idle() <= self.server.pool.max_idle());
        assert!(
            self.server.conns.is_empty(),
            "connections left: {:?}\n{ctx}",
            self.server.conns
        );
        assert!(
            self.server.retired.is_empty(),
            "retired connections left\n{ctx}"
        );
    }

    pub fn context(&self) -> String {
        let mut s = format!(
            "seed {} now {} steps {} cuts {} | links {} | client {:?} welcomes {} resumes {:?} closes {:?} sent {} frames {} | server resumes {:?} refused {:?} expired {:?} hb {} dups {} | acks lost {}",
            self.cfg.seed,
            self.now,
            self.steps,
            self.cuts_done,
            self.net.open_links(),
            self.client.phase,
            self.client.log.welcomes,
            self.client.log.resumes,
            self.client.log.closes,
            self.client.inputs_sent,
            self.client.session.frames_received(),
            self.server.log.resumes,
            self.server.log.refused,
            self.server.log.expired,
            self.server.log.heartbeat_timeouts,
            self.server.log.duplicates,
            self.net.acks_lost,
        );
        if let Some(t) = &self.trace {
            for line in t.iter().rev().take(300).rev() {
                s.push('\n');
                s.push_str(line);
            }
        }
        s
    }

    /// A stranger (or an old client) opens a connection and sends `msg`;
    /// returns what the server wrote back on it right away.
    pub fn stranger(&mut self, msg: pb::ClientMessage) -> Vec<pb::ServerMessage> {
        let link = self.net.open();
        self.server.accept(link, self.now);
        let now = self.now;
        self.server.on_client(&mut self.net, link, msg, now);
        let mut out = Vec::new();
        while let Some(packet) = self.net.pop(link, Dir::Down) {
            if let Packet::Frame(bytes) = packet {
                let (payload, _) = split_frame(&bytes, MAX_PAYLOAD_LEN).unwrap().unwrap();
                out.push(decode_server(payload).unwrap());
            }
        }
        if self.server.conns.contains_key(&link) {
            self.server.close(
                &mut self.net,
                link,
                pb::CloseCode::Unspecified,
                "stranger leaves",
                now,
            );
        }
        self.net.client_close(link, now);
        while self.net.pop(link, Dir::Up).is_some() {}
        self.net.gc(link);
        out
    }

    /// Replaces the client by a new process logging in with the same name.
    pub fn new_client_process(&mut self) -> Client {
        let mut fresh = Client::new(&self.cfg, &self.client.name);
        fresh.phase = Phase::Down {
            reconnect_at: Some(self.now),
        };
        let mut old = std::mem::replace(&mut self.client, fresh);
        if let Some(link) = old.link() {
            self.net.client_close(link, self.now);
        }
        old.phase = Phase::Down { reconnect_at: None };
        old
    }
}

fn describe(packet: &Packet, dir: Dir) -> String {
    let Packet::Frame(bytes) = packet else {
        return "EOF".into();
    };
    let Ok(Some((payload, _))) = split_frame(bytes, MAX_PAYLOAD_LEN) else {
        return "?".into();
    };
    match dir {
        Dir::Up => format!("{:?}", decode_client(payload).map(|m| m.msg)),
        Dir::Down => format!("{:?}", decode_server(payload).map(|m| m.msg)),
    }
}

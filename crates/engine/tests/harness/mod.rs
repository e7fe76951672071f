//! A deterministic simulation of one Tether server and one client speaking
//! the session protocol over a faulty network, with a virtual clock. The
//! server side is the real [`Engine`]; only the I/O around it is simulated.
//!
//! - [`SimGame`]: a toy game on the engine. Each player has a [`World`]:
//!   every applied input and every world tick appends one entry to a log and
//!   produces one counted frame (`LootGranted { tx_id: entry number, gold:
//!   entry value }`); a snapshot is a `SelfState` whose inventory lists every
//!   entry. The client rebuilds the log from those frames and checks that
//!   each delta continues its view exactly (a lost, duplicated or reordered
//!   frame is caught on the spot).
//! - [`SimHost`]: the engine's host in memory: storage as a map whose loads
//!   the [`Server`] answers (at once or after `load_delay_ms`), the account
//!   directory as a map, one shard, resume tokens from a seeded RNG.
//! - [`Net`]: connections ("links"), each with an in-flight queue per
//!   direction, latency and jitter (order kept, like TCP), and faults: a cut
//!   loses everything in flight; lost acks drop client `Ack`s and blank
//!   piggybacked ones.
//! - [`Server`]: what the server's I/O thread does around the engine: it
//!   accepts links, enforces the handshake deadline, decodes client frames
//!   (`decode_envelope`, then the game's `decode_input` for an `Input`),
//!   holds what follows a `Hello` until the `Welcome`, calls the engine, and
//!   writes what the engine hands its host ([`Host::transmit`]). It ticks
//!   the engine whenever a session timer or a world tick is due.
//! - [`Client`]: a [`ClientSession`], a scripted player sending numbered
//!   inputs, reconnects with resume.
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
use tether_engine::{
    close_frame, BadInput, BadRecord, BusMsg, ConnId, Ctx, Engine, EngineConfig, EngineStats, Game,
    Host, Outbox, PlayerId, Record, SessionView, StorageBusy, Takeover, Transmit, Tx,
    Undeliverable,
};
use tether_proto::pb::{self, client_message::Msg as CMsg, server_message::Msg as SMsg};
use tether_proto::{
    decode_client, decode_envelope, decode_server, encode_frame, split_frame, MAX_PAYLOAD_LEN,
};
use tether_session::{
    ClientSession, ClientSessionConfig, ResumeToken, ServerFrameOutcome, SessionConfig,
    SessionState,
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

/// How long the server waits for `Hello` / `Resume` on a new connection (the
/// server's default `handshake_timeout_ms`).
const SERVER_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// The first byte of a `Welcome` frame's payload: the key of
/// `ServerMessage.welcome` (field 1, length-delimited). The server's I/O
/// thread recognises the Welcome by it, to release what a client pipelined
/// behind its `Hello`.
const WELCOME_KEY: u8 = (1 << 3) | 2;

/// The simulated server's one shard.
const SHARD: u16 = 0;

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
    /// World ticks (one entry per player per tick) until `ticks_until_ms`.
    pub tick_every_ms: u64,
    pub ticks_until_ms: Time,
    /// How long storage takes to answer a login's load (0: at once, in the
    /// same step as the `Hello`).
    pub load_delay_ms: u64,
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
            load_delay_ms: 0,
            seed: 1,
        }
    }
}

// ---------------------------------------------------------------- world --

/// One player's character in [`SimGame`].
#[derive(Debug, Default, Clone)]
pub struct World {
    /// The character's state: everything that happened to it, in order.
    pub entries: Vec<u32>,
    /// Input seqs in the order they were applied, in the current numbering.
    pub applied_seqs: Vec<u32>,
    /// Input payloads (the script's input number) in the order applied, in
    /// the current numbering.
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

    /// The character as storage keeps it: its entries, little-endian.
    fn record(&self, account: &str) -> Record {
        let data: Vec<u8> = self.entries.iter().flat_map(|v| v.to_le_bytes()).collect();
        Record {
            account: account.to_string(),
            version: 1,
            data: Bytes::from(data),
            session: None,
        }
    }

    fn from_record(record: &Record) -> Result<World, BadRecord> {
        if record.version != 1 || !record.data.chunks_exact(4).remainder().is_empty() {
            return Err(BadRecord(format!(
                "version {} of {} bytes",
                record.version,
                record.data.len()
            )));
        }
        let entries = record
            .data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(World {
            entries,
            ..World::default()
        })
    }
}

pub fn server_msg(msg: SMsg) -> pb::ServerMessage {
    pb::ServerMessage { msg: Some(msg) }
}

#[derive(Debug)]
pub struct Player {
    pub account: String,
    pub world: World,
    /// Changed since the last write-behind.
    dirty: bool,
}

/// The toy game: one [`World`] per player, frames in the MMO's schema
/// (`pb::ServerMessage`), inputs are the client's `Input.cmd`.
#[derive(Debug)]
pub struct SimGame {
    pub players: BTreeMap<PlayerId, Player>,
    next_player: PlayerId,
    /// The next world tick (`None`: no more).
    next_world_tick: Option<Time>,
    tick_every: u64,
    ticks_until: Time,
}

impl SimGame {
    fn new(cfg: &SimConfig) -> Self {
        SimGame {
            players: BTreeMap::new(),
            next_player: 1,
            next_world_tick: (cfg.tick_every_ms > 0).then_some(cfg.tick_every_ms),
            tick_every: cfg.tick_every_ms,
            ticks_until: cfg.ticks_until_ms,
        }
    }

    /// When the next world tick is due.
    pub fn next_world_tick(&self) -> Option<Time> {
        self.next_world_tick
    }

    pub fn world(&self, player: PlayerId) -> &World {
        &self.players[&player].world
    }

    /// A take-over started a new input numbering for `player`: exactly-once
    /// holds per numbering.
    fn new_numbering(&mut self, player: PlayerId) {
        if let Some(p) = self.players.get_mut(&player) {
            p.world.applied_seqs.clear();
            p.world.applied_payloads.clear();
        }
    }

    fn push(out: &mut Outbox<()>, player: PlayerId, msg: &pb::ServerMessage) {
        out.frames.push((player, encode_frame(msg)));
    }
}

impl Game for SimGame {
    const NAME: &'static str = "sim";
    type Input = pb::input::Cmd;
    type Remote = ();

    fn decode_input(payload: &[u8]) -> Result<Option<pb::input::Cmd>, BadInput> {
        match decode_client(payload)
            .map_err(|e| BadInput(e.to_string()))?
            .msg
        {
            Some(CMsg::Input(input)) => Ok(input.cmd),
            _ => Err(BadInput("not an Input".into())),
        }
    }

    fn welcome_info(&self) -> Bytes {
        Bytes::new()
    }

    fn join(
        &mut self,
        _ctx: &Ctx,
        account: &str,
        record: Option<Record>,
        out: &mut Outbox<()>,
    ) -> Result<PlayerId, BadRecord> {
        let world = match &record {
            Some(record) => World::from_record(record)?,
            None => World::default(),
        };
        let id = self.next_player;
        self.next_player += 1;
        Self::push(out, id, &world.snapshot());
        self.players.insert(
            id,
            Player {
                account: account.to_string(),
                world,
                dirty: false,
            },
        );
        Ok(id)
    }

    fn leave(&mut self, _ctx: &Ctx, player: PlayerId, _out: &mut Outbox<()>) -> Option<Record> {
        let p = self.players.remove(&player)?;
        Some(p.world.record(&p.account))
    }

    fn link_changed(&mut self, _: &Ctx, _: PlayerId, _: bool, _: &mut Outbox<()>) {}

    fn apply(
        &mut self,
        _ctx: &Ctx,
        player: PlayerId,
        seq: u32,
        cmd: pb::input::Cmd,
        out: &mut Outbox<()>,
    ) {
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        let frame = p.world.apply(seq, &cmd);
        p.dirty = true;
        Self::push(out, player, &frame);
    }

    fn tick(&mut self, ctx: &Ctx, out: &mut Outbox<()>) {
        if self.next_world_tick.is_none_or(|t| t > ctx.now_ms) {
            return;
        }
        // Every player in the game, zombies included: the world goes on
        // without them and their frames wait for replay.
        for (&id, p) in self.players.iter_mut() {
            let frame = p.world.tick();
            p.dirty = true;
            Self::push(out, id, &frame);
        }
        let next = ctx.now_ms + self.tick_every;
        self.next_world_tick = (next < self.ticks_until).then_some(next);
    }

    fn snapshot(&mut self, _ctx: &Ctx, player: PlayerId, out: &mut Outbox<()>) {
        if let Some(p) = self.players.get(&player) {
            Self::push(out, player, &p.world.snapshot());
        }
    }

    fn take_dirty(&mut self, out: &mut Vec<Record>) {
        for p in self.players.values_mut() {
            if std::mem::take(&mut p.dirty) {
                out.push(p.world.record(&p.account));
            }
        }
    }

    fn committed(&mut self, _: &Ctx, _: &Tx, _: &mut Outbox<()>) {
        unreachable!("the toy game makes no transactions")
    }

    fn on_remote(&mut self, _: &Ctx, _: u16, _: (), _: &mut Outbox<()>) {
        unreachable!("one shard: nothing comes from another")
    }

    fn undeliverable(&mut self, _: &Ctx, _: (), _: Undeliverable, _: &mut Outbox<()>) {
        unreachable!("the toy game sends nothing to other shards")
    }
}

// ----------------------------------------------------------------- host --

/// The engine's host, in memory.
#[derive(Debug)]
pub struct SimHost {
    rng: SmallRng,
    /// What storage holds, by account (write-behind and prompt saves alike).
    pub stored: BTreeMap<String, Record>,
    /// Loads asked for and not yet picked up by the [`Server`].
    loads: Vec<(String, u64)>,
    /// Loads by saved session id, likewise.
    session_loads: Vec<(u64, u64)>,
    /// The account directory: which shard holds each account's session.
    pub claims: BTreeMap<String, u16>,
    pub population: isize,
    /// What the engine wrote and the server has not yet, oldest first.
    pub transmits: VecDeque<Transmit>,
}

impl SimHost {
    fn new(cfg: &SimConfig) -> Self {
        SimHost {
            rng: SmallRng::seed_from_u64(cfg.seed ^ 0x7365_7276),
            stored: BTreeMap::new(),
            loads: Vec::new(),
            session_loads: Vec::new(),
            claims: BTreeMap::new(),
            population: 0,
            transmits: VecDeque::new(),
        }
    }
}

impl Host<()> for SimHost {
    fn transmit(&mut self, t: Transmit) {
        self.transmits.push_back(t);
    }

    fn resume_token(&mut self) -> ResumeToken {
        ResumeToken(self.rng.random())
    }

    fn load(&mut self, account: &str, tag: u64) -> Result<(), StorageBusy> {
        self.loads.push((account.to_string(), tag));
        Ok(())
    }

    fn load_session(&mut self, session_id: u64, tag: u64) -> Result<(), StorageBusy> {
        self.session_loads.push((session_id, tag));
        Ok(())
    }

    fn save_dirty(&mut self, records: &mut Vec<Record>) {
        for record in records.drain(..) {
            self.stored.insert(record.account.clone(), record);
        }
    }

    fn save_now(&mut self, record: Record) {
        self.stored.insert(record.account.clone(), record);
    }

    fn commit(&mut self, tx: Tx) -> Result<(), Tx> {
        unreachable!("the toy game makes no transactions: {tx:?}")
    }

    fn accepts_logins(&self) -> bool {
        true
    }

    fn accepts_value(&self) -> bool {
        true
    }

    fn claim(&mut self, account: &str) -> bool {
        *self.claims.entry(account.to_string()).or_insert(SHARD) == SHARD
    }

    fn release(&mut self, account: &str) {
        self.claims.remove(account);
    }

    fn locate(&self, account: &str) -> Option<u16> {
        self.claims.get(account).copied()
    }

    fn population(&mut self, delta: isize) {
        self.population += delta;
    }

    fn shard_count(&self) -> u16 {
        1
    }

    fn send_bus(&mut self, _shard: u16, msg: BusMsg<()>) -> Result<(), BusMsg<()>> {
        Err(msg)
    }
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
    /// what was written, then EOF. Returns what the client had sent that was
    /// still in flight: lost with the socket.
    fn server_close(&mut self, id: u64, now: Time) -> Vec<Packet> {
        self.push(id, Dir::Down, Packet::Eof, now);
        let mut unread = Vec::new();
        if let Some(link) = self.links.get_mut(&id) {
            link.server_reads = false;
            unread = link.up.queue.drain(..).map(|(_, p)| p).collect();
        }
        self.gc(id);
        unread
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

    pub fn open_links(&self) -> usize {
        self.links.len()
    }
}

// --------------------------------------------------------------- server --

pub type SimEngine = Engine<SimGame, SimHost>;

/// The engine's name for a link.
pub fn conn_of(link: u64) -> ConnId {
    ConnId {
        io: 0,
        slot: link as u32,
        generation: 1,
    }
}

fn link_of(conn: ConnId) -> u64 {
    u64::from(conn.slot)
}

/// What the I/O side of the server saw that the engine does not count.
#[derive(Debug, Default)]
pub struct ServerLog {
    /// Protocol errors by the client caught before the engine (a frame out
    /// of place, an undecodable one): never expected in these simulations.
    pub errors: Vec<String>,
    pub handshake_timeouts: u32,
    /// Inputs still in flight on a connection a resume or a login replaced
    /// when the engine closed it: lost with it (the client re-sends those
    /// the `Resumed` does not cover).
    pub inputs_lost_with_replaced: u32,
    /// Connections lost while their login waited for storage.
    pub lost_while_loading: u32,
}

/// The session's view and its character, for assertions.
pub struct Only<'a> {
    pub view: SessionView,
    pub world: &'a World,
}

/// The server: the engine, and what the I/O thread does around it.
pub struct Server {
    pub engine: SimEngine,
    /// Open connections, and whether each has sent its `Hello` / `Resume`.
    pub conns: BTreeMap<u64, bool>,
    /// Handshake deadlines of connections that have not.
    handshakes: BTreeMap<u64, Time>,
    /// Connections that sent a `Hello` and have no `Welcome` yet, with what
    /// arrived behind it: handled in order once the `Welcome` is written
    /// (the engine drops messages for a login still loading).
    awaiting_welcome: BTreeMap<u64, VecDeque<Packet>>,
    /// Loads the engine asked for: answered at the time given, in order.
    loads: VecDeque<(Time, String, u64)>,
    load_delay_ms: u64,
    pub log: ServerLog,
}

impl Server {
    fn new(cfg: &SimConfig) -> Self {
        let engine_cfg = EngineConfig {
            shard: SHARD,
            session: cfg.server.clone(),
            // Every millisecond may be a tick: the simulation ticks only when
            // something is due (`next_timer`), at the exact time, as a shard
            // ticking every millisecond would.
            tick_ms: 1,
            takeover: Takeover::Allow,
            pool_max_idle_pages: cfg.pool_max_idle,
            ..EngineConfig::default()
        };
        Server {
            engine: Engine::new(engine_cfg, SimGame::new(cfg), SimHost::new(cfg), 0),
            conns: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            awaiting_welcome: BTreeMap::new(),
            loads: VecDeque::new(),
            load_delay_ms: cfg.load_delay_ms,
            log: ServerLog::default(),
        }
    }

    pub fn stats(&self) -> &EngineStats {
        self.engine.stats()
    }

    /// Client misbehaviour the server saw, at the I/O side or in the engine.
    pub fn errors(&self) -> Vec<String> {
        let mut errors = self.log.errors.clone();
        for code in [pb::CloseCode::ProtocolError, pb::CloseCode::InputSeqGap] {
            let n = self.stats().closed_with(code);
            if n > 0 {
                errors.push(format!("the engine closed {n} connections with {code:?}"));
            }
        }
        errors
    }

    /// The only session (the simulations run one player) and its character.
    pub fn only(&self) -> Only<'_> {
        let views: Vec<SessionView> = self.engine.sessions().collect();
        assert_eq!(views.len(), 1, "expected exactly one session");
        let view = views.into_iter().next().expect("one");
        let world = self.engine.game().world(view.player);
        Only { view, world }
    }

    /// Protect mode: freeze (or thaw) every session's zombie grace.
    pub fn set_protect(&mut self, on: bool, now: Time) {
        self.engine.set_protect(now, on);
    }

    fn accept(&mut self, link: u64, now: Time) {
        self.conns.insert(link, false);
        self.handshakes
            .insert(link, now + SERVER_HANDSHAKE_TIMEOUT_MS);
    }

    /// The I/O side closes a connection for its own reasons: a Close frame,
    /// then the socket; the engine is told it is gone.
    fn close(&mut self, net: &mut Net, link: u64, code: pb::CloseCode, why: &str, now: Time) {
        self.handshakes.remove(&link);
        self.awaiting_welcome.remove(&link);
        if self.conns.remove(&link).is_none() {
            return;
        }
        net.send_down(link, close_frame(code, why, 0), now);
        net.server_close(link, now);
        self.engine.closed(now, conn_of(link));
        self.flush(net, now);
    }

    fn error(&mut self, net: &mut Net, link: u64, code: pb::CloseCode, why: String, now: Time) {
        self.log.errors.push(why.clone());
        self.close(net, link, code, &why, now);
    }

    /// The connection reset under the server (a cut both ends see).
    fn reset(&mut self, net: &mut Net, link: u64, now: Time) {
        self.handshakes.remove(&link);
        if self.awaiting_welcome.remove(&link).is_some() {
            self.log.lost_while_loading += 1;
        }
        if self.conns.remove(&link).is_some() {
            self.engine.closed(now, conn_of(link));
            self.flush(net, now);
        }
    }

    fn on_packet(&mut self, net: &mut Net, link: u64, packet: Packet, now: Time) {
        if !self.conns.contains_key(&link) {
            return;
        }
        if let Some(held) = self.awaiting_welcome.get_mut(&link) {
            held.push_back(packet);
            return;
        }
        match packet {
            Packet::Eof => {
                self.handshakes.remove(&link);
                self.conns.remove(&link);
                net.server_close(link, now);
                self.engine.closed(now, conn_of(link));
                self.flush(net, now);
            }
            Packet::Frame(bytes) => self.on_frame(net, link, &bytes, now),
        }
    }

    /// One client frame, decoded as the server's I/O thread does: the
    /// engine's envelope, then for an `Input` the game's command from the
    /// same payload.
    pub fn on_frame(&mut self, net: &mut Net, link: u64, bytes: &[u8], now: Time) {
        let Some(&bound) = self.conns.get(&link) else {
            return;
        };
        let payload = match split_frame(bytes, MAX_PAYLOAD_LEN) {
            Ok(Some((payload, used))) if used == bytes.len() => payload,
            other => {
                let why = format!("not one whole frame: {other:?}");
                return self.error(net, link, pb::CloseCode::ProtocolError, why, now);
            }
        };
        let envelope = match decode_envelope(payload) {
            Ok(envelope) => envelope,
            Err(e) => return self.error(net, link, e.close_code(), e.to_string(), now),
        };
        use pb::client_envelope::Msg as EMsg;
        let conn = conn_of(link);
        match (bound, envelope.msg.expect("decoded envelopes have a body")) {
            (false, EMsg::Hello(hello)) => {
                if hello.protocol_version != tether_proto::PROTOCOL_VERSION {
                    let why = format!("protocol_version {}", hello.protocol_version);
                    return self.error(net, link, pb::CloseCode::UnsupportedVersion, why, now);
                }
                let Some(pb::hello::Auth::DevName(account)) = hello.auth else {
                    let why = "the simulated client logs in with a dev name".to_string();
                    return self.error(net, link, pb::CloseCode::AuthFailed, why, now);
                };
                self.bind(link);
                self.awaiting_welcome.insert(link, VecDeque::new());
                self.engine.login(now, conn, account);
            }
            (false, EMsg::Resume(resume)) => {
                self.bind(link);
                self.engine.resume(now, conn, resume);
            }
            (false, other) => {
                let why = format!("expected Hello or Resume first, got {other:?}");
                return self.error(net, link, pb::CloseCode::ProtocolError, why, now);
            }
            (true, EMsg::Input(header)) => match SimGame::decode_input(payload) {
                Ok(cmd) => self.engine.input(now, conn, header.seq, header.ack, cmd),
                Err(e) => return self.error(net, link, pb::CloseCode::ProtocolError, e.0, now),
            },
            (true, EMsg::Ack(ack)) => self.engine.ack(now, conn, ack.frames_received),
            (true, EMsg::Logout(_)) => self.engine.logout(now, conn),
            (true, other) => {
                let why = format!("Hello / Resume only as the first frame, got {other:?}");
                return self.error(net, link, pb::CloseCode::ProtocolError, why, now);
            }
        }
        self.flush(net, now);
    }

    fn bind(&mut self, link: u64) {
        self.handshakes.remove(&link);
        self.conns.insert(link, true);
    }

    /// Writes what the engine gives out, hands storage's loads on, and lets
    /// a connection whose `Welcome` went out go on with what it held.
    fn flush(&mut self, net: &mut Net, now: Time) {
        let mut welcomed = Vec::new();
        while let Some(transmit) = self.engine.host_mut().transmits.pop_front() {
            match transmit {
                Transmit::Frame { conn, frame } => {
                    let link = link_of(conn);
                    assert!(
                        self.conns.contains_key(&link),
                        "the engine wrote to link {link}, which it was told is closed"
                    );
                    if frame.get(tether_proto::FRAME_HEADER_LEN) == Some(&WELCOME_KEY) {
                        self.on_welcome(&frame);
                        if self.awaiting_welcome.contains_key(&link) {
                            welcomed.push(link);
                        }
                    }
                    net.send_down(link, frame, now);
                }
                Transmit::Close { conn, frame } => {
                    let link = link_of(conn);
                    self.handshakes.remove(&link);
                    self.awaiting_welcome.remove(&link);
                    assert!(
                        self.conns.remove(&link).is_some(),
                        "the engine closed link {link}, which it was told is closed"
                    );
                    // The socket closes: what the client sent and the server
                    // had not read yet is lost with it.
                    let replaced = close_code(&frame) == pb::CloseCode::SessionTakenOver;
                    net.send_down(link, frame, now);
                    for packet in net.server_close(link, now) {
                        if replaced && is_input(&packet) {
                            self.log.inputs_lost_with_replaced += 1;
                        }
                    }
                }
            }
        }
        let asked = std::mem::take(&mut self.engine.host_mut().loads);
        for (account, tag) in asked {
            self.loads
                .push_back((now + self.load_delay_ms, account, tag));
        }
        self.answer_loads(net, now);
        // Resumes of sessions the engine no longer holds (expired): storage
        // answers at once from what it holds.
        let asked = std::mem::take(&mut self.engine.host_mut().session_loads);
        for (id, tag) in asked {
            let stored = self
                .engine
                .host()
                .stored
                .values()
                .find(|r| r.session.is_some_and(|m| m.session_id == id))
                .cloned();
            self.engine.session_loaded(now, tag, Ok(stored));
            self.flush(net, now);
        }
        for link in welcomed {
            let held = self.awaiting_welcome.remove(&link).unwrap_or_default();
            for packet in held {
                self.on_packet(net, link, packet, now);
            }
        }
    }

    /// A take-over's `Welcome`: the character's input numbering restarts.
    fn on_welcome(&mut self, frame: &Bytes) {
        let (payload, _) = split_frame(frame, MAX_PAYLOAD_LEN)
            .expect("the engine writes valid frames")
            .expect("whole frames");
        let Some(SMsg::Welcome(welcome)) = decode_server(payload).expect("valid").msg else {
            panic!("a frame starting with the Welcome key is a Welcome");
        };
        if welcome.took_over {
            let player = self
                .engine
                .sessions()
                .find(|s| s.id == welcome.session_id)
                .expect("the session taken over")
                .player;
            self.engine.game_mut().new_numbering(player);
        }
    }

    /// Storage answers the loads that are due.
    fn answer_loads(&mut self, net: &mut Net, now: Time) {
        while self.loads.front().is_some_and(|l| l.0 <= now) {
            let (_, account, tag) = self.loads.pop_front().expect("checked");
            let stored = self.engine.host().stored.get(&account).cloned();
            self.engine.loaded(now, account, tag, Ok(stored));
            self.flush(net, now);
        }
    }

    fn next_timer(&self) -> Option<Time> {
        let engine = [
            self.engine.poll_timeout(),
            self.engine.game().next_world_tick(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(self.engine.next_tick()));
        let handshakes = self.handshakes.values().copied().min();
        let loads = self.loads.front().map(|l| l.0);
        [engine, handshakes, loads].into_iter().flatten().min()
    }

    fn on_timers(&mut self, net: &mut Net, now: Time) {
        self.answer_loads(net, now);
        let overdue: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, &deadline)| deadline <= now)
            .map(|(&link, _)| link)
            .collect();
        for link in overdue {
            self.log.handshake_timeouts += 1;
            self.close(
                net,
                link,
                pb::CloseCode::HandshakeTimeout,
                "no Hello or Resume in time",
                now,
            );
        }
        let due = [
            self.engine.poll_timeout(),
            self.engine.game().next_world_tick(),
        ]
        .into_iter()
        .flatten()
        .any(|t| t <= now);
        if due && self.engine.next_tick() <= now {
            self.engine.tick(now);
            self.flush(net, now);
            if let Some(next) = self.engine.poll_timeout() {
                assert!(
                    next > now,
                    "a session timer at {next} still due after the tick at {now}"
                );
            }
        }
    }
}

fn close_code(frame: &Bytes) -> pb::CloseCode {
    let (payload, _) = split_frame(frame, MAX_PAYLOAD_LEN)
        .expect("the engine writes valid frames")
        .expect("whole frames");
    match decode_server(payload).expect("valid").msg {
        Some(SMsg::Close(close)) => pb::CloseCode::try_from(close.code).expect("a known code"),
        other => panic!("a Close transmit carries a Close, not {other:?}"),
    }
}

fn is_input(packet: &Packet) -> bool {
    let Packet::Frame(bytes) = packet else {
        return false;
    };
    let (payload, _) = split_frame(bytes, MAX_PAYLOAD_LEN)
        .expect("the client writes valid frames")
        .expect("whole frames");
    matches!(
        decode_envelope(payload).expect("valid").msg,
        Some(pb::client_envelope::Msg::Input(_))
    )
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
                self.server.reset(&mut self.net, link, now);
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
        let errors = self.server.errors();
        assert!(errors.is_empty(), "server saw errors: {errors:?}\n{ctx}");
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
        assert_eq!(entry.view.state, SessionState::Live, "{ctx}");
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
        // resumed, and what a replaced connection still had in flight is
        // lost with it: no input reaches the exactly-once gate twice.
        assert_eq!(
            self.server.stats().duplicate_inputs,
            0,
            "the client re-sent inputs the server had applied\n{ctx}"
        );
        // While nothing was let go over the cap, every resume can replay.
        if entry.view.replay_evicted == 0 {
            assert_eq!(
                self.server.stats().resumes_snapshot,
                0,
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
            self.client.session.frames_received() <= entry.view.frames_sent,
            "{ctx}"
        );
    }

    /// Logs out and checks that no session, connection, page, claim or
    /// player is left, and that the character was saved.
    pub fn logout(&mut self) {
        self.client.logging_out = true;
        self.client.send_logout(&mut self.net, self.now);
        let deadline = self.now + 60_000;
        while !self.client.logged_out && self.step(deadline) {}
        self.run_until(self.now + 1_000);
        let ctx = self.context();
        assert!(self.client.logged_out, "logout did not complete\n{ctx}");
        let engine = &self.server.engine;
        assert_eq!(engine.session_count(), 0, "sessions left\n{ctx}");
        assert_eq!(engine.loading_count(), 0, "logins left loading\n{ctx}");
        assert_eq!(engine.pool_pages_in_use(), 0, "replay pages leaked\n{ctx}");
        let stats = engine.stats();
        assert_eq!((stats.active, stats.zombies), (0, 0), "{ctx}");
        assert!(
            self.server.conns.is_empty(),
            "connections left: {:?}\n{ctx}",
            self.server.conns
        );
        assert!(
            engine.game().players.is_empty(),
            "players left in the game\n{ctx}"
        );
        let host = engine.host();
        assert!(
            host.claims.is_empty(),
            "accounts left claimed: {:?}\n{ctx}",
            host.claims
        );
        assert_eq!(host.population, 0, "{ctx}");
        let saved = host
            .stored
            .get(&self.client.name)
            .map(|r| World::from_record(r).expect("readable").entries);
        assert_eq!(
            saved.as_ref(),
            Some(&self.client.view),
            "the character was not saved as the client last saw it\n{ctx}"
        );
    }

    pub fn context(&self) -> String {
        let stats = self.server.stats();
        let mut s = format!(
            "seed {} now {} steps {} cuts {} | links {} | client {:?} welcomes {} resumes {:?} closes {:?} sent {} frames {} | server logins {} take-overs {} resumes replay {} snapshot {} refused {:?} expired {} hb {} dups {} inputs lost with replaced {} errors {:?} | acks lost {}",
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
            stats.logins,
            stats.takeovers,
            stats.resumes_replay,
            stats.resumes_snapshot,
            stats.resumes_refused,
            stats.zombie_expiries,
            stats.closed_with(pb::CloseCode::HeartbeatTimeout),
            stats.duplicate_inputs,
            self.server.log.inputs_lost_with_replaced,
            self.server.errors(),
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
        self.server
            .on_frame(&mut self.net, link, &encode_frame(&msg), now);
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

//! Real sockets with faults in between: a proxy sits between a
//! `tether_client` client and a real server and kills the connection at
//! random points while the client walks, fights, chats and pings.
//!
//! The proxy picks one fault per connection from a seeded RNG: cut both
//! sockets (FIN or RST) once a random number of bytes has gone one way
//! (client to server or back, often in the middle of a frame, sometimes
//! inside the `Resume` / `Resumed` handshake), or go silent (forward nothing
//! more, one way or both, but keep the sockets open: a half-open link that
//! only the heartbeat timeouts notice, and that the server still holds when
//! the client resumes on a new connection). `TETHER_FAULT_SEED=N` replays a chosen fault sequence
//! (the timing of the rest still varies run to run).
//!
//! The faults run for 8 to 15 s (until there was a kill, three resumes and
//! five faults), then stop. Pings and chat lines are also sent while the
//! connection is down, so some inputs only ever travel as re-sends; moves
//! and attacks are sent while it is up, and moves re-sent in a burst after a
//! resume may come back as `Correction`s, which the client's view follows.
//!
//! What must hold at the end, whatever was cut where:
//!
//! - every input was applied exactly once: each `Ping` got exactly one
//!   `Pong`, each chat line exactly one echo, each `Attack` exactly one
//!   outcome (a `Damage` by us or a `CommandError` with its seq), no
//!   `Correction` or `CommandError` names a seq twice, and the client has no
//!   unacknowledged input left;
//! - every kill was paid exactly once (one `LootGranted` per kill, no
//!   transaction twice, gold adds up);
//! - the client's view of its character (position, hp, level, xp, gold,
//!   inventory) is what the server saved at logout and what a fresh login
//!   shows;
//! - the session was resumed (the faults did happen).
//!
//! A second test kills the connection right behind the attack that kills a
//! monster, keeps the client out until the loot is committed, and checks
//! that the kill and its loot confirmation arrive by replay after the resume.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::Duration;

use common::{place, server, TestClient};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tether_client::{
    pb, Client, ClientConfig, Command, Event, GameEvent, Instant, Login, ReconnectPolicy, SendError,
};
use tether_proto::pb::{client_message, input::Cmd, server_message::Msg};
use tether_proto::{decode_client, split_frame, MAX_PAYLOAD_LEN};
use tether_server::ServerHandle;
use tether_store::fake::FakeControl as TestStore;

// ---------------------------------------------------------------------------
// The fault-injecting proxy (std threads, blocking sockets)
// ---------------------------------------------------------------------------

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Each new connection gets a random fault; faults fire only in this mode.
    Chaos,
    /// Forward everything. A connection that already went silent stays so
    /// until a timeout closes it.
    Calm,
    /// Forward until the client's next `Attack` input has been passed on
    /// whole, then cut the connection (FIN) and switch to `Refuse`.
    CutAfterAttack,
    /// Close every new connection at once.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Calm and `CutAfterAttack` connections.
    None,
    /// Once `after` bytes went `dir`, close both sockets: FIN, or RST when
    /// `reset`.
    Cut { dir: Dir, after: u64, reset: bool },
    /// Once `after` bytes went `dir`, forward nothing more from the server
    /// and, unless `deaf`, nothing more from the client either. Both
    /// sockets stay open; when the client gives up on the link and closes
    /// its socket, the server is not told (as if the FIN were lost too), so
    /// it still holds a half-open connection until its heartbeat timeout, or
    /// until the client's resume on a new connection takes the session over.
    /// `deaf`: the server keeps hearing the client (inputs are applied, the
    /// answers go nowhere) and never times out on its own.
    Silence { dir: Dir, after: u64, deaf: bool },
}

struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

struct ProxyShared {
    server: SocketAddr,
    mode: Mutex<Mode>,
    rng: Mutex<SmallRng>,
    pipes: Mutex<Vec<Weak<Pipe>>>,
    stop: AtomicBool,
    /// Connections accepted.
    accepted: AtomicU64,
    /// Faults that fired (cuts and silences).
    faults: AtomicU64,
    /// Connections refused in `Refuse` mode.
    refused: AtomicU64,
}

/// One proxied connection.
struct Pipe {
    client: TcpStream,
    server: TcpStream,
    dead: AtomicBool,
    /// Nothing is forwarded either way.
    silent: AtomicBool,
    /// Nothing is forwarded from the server to the client.
    deaf: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    fn start(server: SocketAddr, seed: u64, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            server,
            mode: Mutex::new(mode),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            pipes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(listener, s))
            .unwrap();
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    fn mode(&self) -> Mode {
        *lock(&self.shared.mode)
    }

    fn faults(&self) -> u64 {
        self.shared.faults.load(SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        for pipe in lock(&self.shared.pipes).drain(..) {
            if let Some(p) = pipe.upgrade() {
                p.kill(false);
            }
        }
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    for client in listener.incoming() {
        if shared.stop.load(SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let mode = *lock(&shared.mode);
        if mode == Mode::Refuse {
            shared.refused.fetch_add(1, SeqCst);
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.server) else {
            continue;
        };
        shared.accepted.fetch_add(1, SeqCst);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let fault = if mode == Mode::Chaos {
            pick_fault(&mut lock(&shared.rng))
        } else {
            Fault::None
        };
        let pipe = Arc::new(Pipe {
            client,
            server,
            dead: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            deaf: AtomicBool::new(false),
        });
        {
            let mut pipes = lock(&shared.pipes);
            pipes.retain(|p| p.strong_count() > 0);
            pipes.push(Arc::downgrade(&pipe));
        }
        for dir in [Dir::Up, Dir::Down] {
            let (pipe, shared) = (pipe.clone(), shared.clone());
            thread::spawn(move || pump(pipe, dir, fault, shared));
        }
    }
}

/// One fault for a new connection. The byte counts are sized to the
/// client's traffic (a few hundred bytes a second each way), so that a fault
/// fires every few seconds; small counts land in the handshake.
fn pick_fault(rng: &mut SmallRng) -> Fault {
    let dir = if rng.random_bool(0.5) {
        Dir::Up
    } else {
        Dir::Down
    };
    let reset = rng.random_bool(0.5);
    match rng.random_range(0..100) {
        // In or right behind `Resume` (about 30 bytes) / `Resumed` (about 40).
        0..20 => Fault::Cut {
            dir,
            after: rng.random_range(0..48),
            reset,
        },
        20..75 => Fault::Cut {
            dir,
            after: rng.random_range(0..1_500),
            reset,
        },
        _ => Fault::Silence {
            dir,
            after: rng.random_range(0..1_500),
            deaf: rng.random_bool(0.5),
        },
    }
}

impl Pipe {
    /// Closes both sockets. FIN: shut both down. RST: a zero linger makes the
    /// close that follows (when both pumps have let go) send a reset; the
    /// read-side shutdown only wakes the pumps.
    fn kill(&self, reset: bool) {
        if self.dead.swap(true, SeqCst) {
            return;
        }
        for s in [&self.client, &self.server] {
            if reset {
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                let _ = s.shutdown(Shutdown::Read);
            } else {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// What a pump does after forwarding (part of) a chunk.
enum After {
    Cut(bool),
    Silence { deaf: bool },
    CutForAttack,
}

fn pump(pipe: Arc<Pipe>, dir: Dir, fault: Fault, shared: Arc<ProxyShared>) {
    let (mut from, mut to) = match dir {
        Dir::Up => (&pipe.client, &pipe.server),
        Dir::Down => (&pipe.server, &pipe.client),
    };
    let mut budget = match fault {
        Fault::Cut { dir: d, after, .. } | Fault::Silence { dir: d, after, .. } if d == dir => {
            Some(after)
        }
        _ => None,
    };
    let mut frames = ClientFrames::default();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        let quiet = pipe.silent.load(SeqCst) || pipe.deaf.load(SeqCst);
        if n == 0 && dir == Dir::Up && quiet && !pipe.dead.load(SeqCst) {
            // The client gave up on a link that went quiet. The server is
            // not told: its side stays open (the other pump keeps draining
            // it) until the server closes it.
            let _ = pipe.client.shutdown(Shutdown::Both);
            return;
        }
        if n == 0 || pipe.dead.load(SeqCst) {
            pipe.kill(false);
            return;
        }
        if pipe.silent.load(SeqCst) || (dir == Dir::Down && pipe.deaf.load(SeqCst)) {
            continue;
        }
        let chunk = &buf[..n];
        // Up, the frame boundaries are tracked in every mode so that they
        // are right when `CutAfterAttack` is switched on mid-connection.
        let attack_end = if dir == Dir::Up {
            frames.feed(chunk)
        } else {
            None
        };
        let mode = *lock(&shared.mode);
        let mut forward = n;
        let mut then = None;
        if mode == Mode::CutAfterAttack {
            if let Some(end) = attack_end {
                forward = end;
                then = Some(After::CutForAttack);
            }
        } else if let Some(left) = budget {
            if mode == Mode::Chaos && n as u64 >= left {
                forward = left as usize;
                then = Some(match fault {
                    Fault::Cut { reset, .. } => After::Cut(reset),
                    Fault::Silence { deaf, .. } => After::Silence { deaf },
                    Fault::None => unreachable!("no budget without a fault"),
                });
            } else {
                budget = Some(left.saturating_sub(n as u64));
            }
        }
        if matches!(then, Some(After::CutForAttack)) {
            // Nothing the server answers gets through any more: the
            // attack's outcome must reach the client only by replay.
            pipe.silent.store(true, SeqCst);
        }
        if to.write_all(&chunk[..forward]).is_err() {
            pipe.kill(false);
            return;
        }
        match then {
            None => {}
            Some(After::Cut(reset)) => {
                shared.faults.fetch_add(1, SeqCst);
                pipe.kill(reset);
                return;
            }
            Some(After::Silence { deaf }) => {
                shared.faults.fetch_add(1, SeqCst);
                if deaf {
                    pipe.deaf.store(true, SeqCst);
                } else {
                    pipe.silent.store(true, SeqCst);
                }
                budget = None;
            }
            Some(After::CutForAttack) => {
                *lock(&shared.mode) = Mode::Refuse;
                shared.faults.fetch_add(1, SeqCst);
                pipe.kill(false);
                return;
            }
        }
    }
}

/// Frame boundaries of the client's byte stream.
#[derive(Default)]
struct ClientFrames {
    buf: Vec<u8>,
}

impl ClientFrames {
    /// Takes the next chunk; returns the offset in it just past the first
    /// complete `Input{Attack}` frame that ends in it.
    fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        let before = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut at = 0;
        let mut found = None;
        while let Ok(Some((payload, used))) = split_frame(&self.buf[at..], MAX_PAYLOAD_LEN) {
            let is_attack = matches!(
                decode_client(payload).map(|m| m.msg),
                Ok(Some(client_message::Msg::Input(pb::Input {
                    cmd: Some(Cmd::Attack(_)),
                    ..
                })))
            );
            at += used;
            if is_attack && found.is_none() {
                found = Some(at - before);
            }
        }
        self.buf.drain(..at);
        found
    }
}

// ---------------------------------------------------------------------------
// The player: what the client believes, and every input's outcome
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Sent {
    Ping,
    Move,
    Attack,
    Chat,
    Respawn,
}

#[derive(Debug, Clone, Copy)]
struct Monster {
    x: f32,
    y: f32,
    hp: i32,
    dead: bool,
}

/// The character as the client sees it, built from events alone.
#[derive(Debug, Clone, PartialEq)]
struct Character {
    pos: (f32, f32),
    hp: i32,
    level: u32,
    xp: u64,
    gold: u64,
    inventory: BTreeMap<u32, u32>,
}

fn stacks(items: &[pb::ItemStack]) -> BTreeMap<u32, u32> {
    let mut m = BTreeMap::new();
    for s in items {
        *m.entry(s.item_id).or_insert(0) += s.count;
    }
    m.retain(|_, n| *n > 0);
    m
}

struct Player {
    me: u64,
    world: pb::WorldInfo,
    rng: SmallRng,
    started: bool,
    pos: (f32, f32),
    hp: i32,
    level: u32,
    xp: u64,
    /// Gold and items of the first snapshot; loot adds to them.
    base_gold: u64,
    base_items: BTreeMap<u32, u32>,
    dead: bool,
    respawn_sent: bool,
    last_move_seq: u32,
    /// After a snapshot resume: whether its `SelfState` is older than moves
    /// re-sent after it (then the last move, not the snapshot, says where
    /// we are).
    resync: Option<bool>,
    monsters: HashMap<u64, Monster>,
    target: Option<u64>,

    sent: BTreeMap<u32, Sent>,
    pongs: HashMap<u64, u32>,
    echoes: HashMap<String, u32>,
    next_ping: u64,
    next_chat: u64,
    attacks: u64,
    hits: u64,
    errors: HashMap<u32, pb::CommandErrorCode>,
    corrections: HashSet<u32>,
    kills: u64,
    loot: Vec<pb::LootGranted>,
    loot_txs: HashSet<u64>,

    pauses: u64,
    resumes: u64,
    resyncs: u64,
}

impl Player {
    fn new(client: &Client, seed: u64) -> Player {
        Player {
            me: client.entity_id(),
            world: client.world(),
            rng: SmallRng::seed_from_u64(seed),
            started: false,
            pos: (0.0, 0.0),
            hp: 0,
            level: 1,
            xp: 0,
            base_gold: 0,
            base_items: BTreeMap::new(),
            dead: false,
            respawn_sent: false,
            last_move_seq: 0,
            resync: None,
            monsters: HashMap::new(),
            target: None,
            sent: BTreeMap::new(),
            pongs: HashMap::new(),
            echoes: HashMap::new(),
            next_ping: 1,
            next_chat: 1,
            attacks: 0,
            hits: 0,
            errors: HashMap::new(),
            corrections: HashSet::new(),
            kills: 0,
            loot: Vec::new(),
            loot_txs: HashSet::new(),
            pauses: 0,
            resumes: 0,
            resyncs: 0,
        }
    }

    fn character(&self) -> Character {
        let mut inventory = self.base_items.clone();
        for l in &self.loot {
            for s in &l.items {
                *inventory.entry(s.item_id).or_insert(0) += s.count;
            }
        }
        inventory.retain(|_, n| *n > 0);
        Character {
            pos: self.pos,
            hp: self.hp,
            level: self.level,
            xp: self.xp,
            gold: self.base_gold + self.loot.iter().map(|l| l.gold).sum::<u64>(),
            inventory,
        }
    }

    fn send(&mut self, client: &mut Client, cmd: Command) -> Option<u32> {
        let what = match &cmd {
            Command::Ping { .. } => Sent::Ping,
            Command::Move { .. } => Sent::Move,
            Command::Attack { .. } => Sent::Attack,
            Command::Chat { .. } => Sent::Chat,
            Command::Respawn => Sent::Respawn,
            Command::Logout => unreachable!("logout is not an input"),
        };
        match client.send(cmd) {
            Ok(seq) => {
                assert!(
                    self.sent.insert(seq, what).is_none(),
                    "seq {seq} numbered twice"
                );
                Some(seq)
            }
            // Full: the command is simply not sent.
            Err(SendError::Backlog) => None,
            Err(e) => panic!("send failed: {e}"),
        }
    }

    fn ping(&mut self, client: &mut Client) {
        let t = self.next_ping;
        if self
            .send(client, Command::Ping { client_time: t })
            .is_some()
        {
            self.next_ping += 1;
        }
    }

    fn chat(&mut self, client: &mut Client) {
        let text = format!("line{}", self.next_chat);
        if self.send(client, Command::say(text)).is_some() {
            self.next_chat += 1;
        }
    }

    /// The monster being fought: the current target while it lives (and is
    /// in view), else the nearest living one.
    fn target_monster(&mut self) -> Option<(u64, Monster, f32)> {
        let current = self
            .target
            .and_then(|id| self.monsters.get(&id).map(|m| (id, *m)))
            .filter(|(_, m)| !m.dead);
        let (id, m) = match current {
            Some(t) => t,
            None => self
                .monsters
                .iter()
                .filter(|(_, m)| !m.dead)
                .min_by(|a, b| {
                    let da = dist(self.pos, (a.1.x, a.1.y));
                    let db = dist(self.pos, (b.1.x, b.1.y));
                    da.total_cmp(&db)
                })
                .map(|(id, m)| (*id, *m))?,
        };
        self.target = Some(id);
        Some((id, m, dist(self.pos, (m.x, m.y))))
    }

    /// One walking step: towards the target monster if it is more than a
    /// few units away, else a small shuffle. 80 % of the legal speed at five
    /// moves a second, so the moves re-sent in a burst after a resume are
    /// sometimes too fast and corrected.
    fn step(&mut self, client: &mut Client) {
        if !self.started || self.dead || !client.is_live() {
            return;
        }
        let max = 0.8 * self.world.move_speed / 5.0;
        let to = match self.target.and_then(|id| self.monsters.get(&id)) {
            Some(m) if dist(self.pos, (m.x, m.y)) > 4.0 => step_toward(self.pos, (m.x, m.y), max),
            Some(_) => {
                let a = self.rng.random_range(0.0..std::f32::consts::TAU);
                (self.pos.0 + 0.2 * a.cos(), self.pos.1 + 0.2 * a.sin())
            }
            None => {
                // Nothing in view: head for the middle of the map.
                let mid = (self.world.width / 2.0, self.world.height / 2.0);
                step_toward(self.pos, mid, max)
            }
        };
        let to = (
            to.0.clamp(1.0, self.world.width - 1.0),
            to.1.clamp(1.0, self.world.height - 1.0),
        );
        if let Some(seq) = self.send(client, Command::Move { x: to.0, y: to.1 }) {
            self.last_move_seq = seq;
            self.pos = to;
        }
    }

    /// Attacks the nearest living monster when it is in range.
    fn attack(&mut self, client: &mut Client) -> Option<u64> {
        if !self.started || self.dead || !client.is_live() {
            return None;
        }
        let (id, _, d) = self.target_monster()?;
        if d > self.world.attack_range - 2.0 {
            return None;
        }
        self.send(client, Command::Attack { target: id })?;
        self.attacks += 1;
        Some(id)
    }

    fn respawn_if_dead(&mut self, client: &mut Client) {
        if self.dead && !self.respawn_sent && self.send(client, Command::Respawn).is_some() {
            self.respawn_sent = true;
        }
    }

    fn on_event(&mut self, ev: Event, client: &Client) {
        match ev {
            Event::Game(g) => self.on_game(g),
            Event::Paused(_) => self.pauses += 1,
            Event::Resumed { .. } => self.resumes += 1,
            Event::Resynced { .. } => {
                self.resumes += 1;
                self.resyncs += 1;
                self.monsters.clear();
                self.resync = Some(self.last_move_seq > client.session().acked_input());
            }
            Event::LoggedOut | Event::Deadline => {}
            other => panic!("unexpected event {other:?}"),
        }
    }

    fn on_game(&mut self, g: GameEvent) {
        match g {
            GameEvent::SelfState(s) => {
                if !self.started {
                    self.started = true;
                    self.base_gold = s.gold;
                    self.base_items = stacks(&s.inventory);
                }
                let keep_pos = self.resync.take().unwrap_or(false);
                if !keep_pos {
                    self.pos = (s.x, s.y);
                }
                self.hp = s.hp;
                self.level = s.level;
                self.xp = s.xp;
                self.dead = s.dead;
                self.respawn_sent = false;
            }
            GameEvent::Appear(a) => {
                if a.kind == pb::EntityKind::Monster as i32 {
                    self.monsters.insert(
                        a.id,
                        Monster {
                            x: a.x,
                            y: a.y,
                            hp: a.hp,
                            dead: a.dead,
                        },
                    );
                }
            }
            GameEvent::Move(m) => {
                if let Some(mon) = self.monsters.get_mut(&m.id) {
                    mon.x = m.x;
                    mon.y = m.y;
                }
            }
            GameEvent::Disappear(d) => {
                self.monsters.remove(&d.id);
            }
            GameEvent::Damage(d) => {
                if d.target == self.me {
                    self.hp = d.target_hp;
                }
                if d.attacker == self.me {
                    self.hits += 1;
                }
                if let Some(m) = self.monsters.get_mut(&d.target) {
                    m.hp = d.target_hp;
                }
            }
            GameEvent::Death(d) => {
                if d.id == self.me {
                    self.dead = true;
                } else {
                    if let Some(m) = self.monsters.get_mut(&d.id) {
                        m.dead = true;
                    }
                    if d.killer == self.me {
                        self.kills += 1;
                    }
                }
            }
            GameEvent::Loot(l) => {
                assert!(
                    self.loot_txs.insert(l.tx_id),
                    "loot transaction {} arrived twice",
                    l.tx_id
                );
                self.loot.push(l);
            }
            GameEvent::Stats(s) => {
                self.hp = s.hp;
                self.level = s.level;
                self.xp = s.xp;
            }
            GameEvent::Chat(c) => {
                if c.from_id == self.me {
                    *self.echoes.entry(c.text).or_insert(0) += 1;
                }
            }
            GameEvent::Pong(p) => *self.pongs.entry(p.client_time).or_insert(0) += 1,
            GameEvent::CommandError(e) => {
                assert!(
                    matches!(self.sent.get(&e.seq), Some(Sent::Attack)),
                    "CommandError for input {} ({:?}), which is not an attack",
                    e.seq,
                    self.sent.get(&e.seq)
                );
                let code = pb::CommandErrorCode::try_from(e.code).unwrap_or_default();
                assert!(
                    self.errors.insert(e.seq, code).is_none(),
                    "input {} answered with a CommandError twice",
                    e.seq
                );
            }
            GameEvent::Correction(c) => {
                assert!(
                    matches!(self.sent.get(&c.seq), Some(Sent::Move)),
                    "Correction for input {}, which is not a move",
                    c.seq
                );
                assert!(
                    self.corrections.insert(c.seq),
                    "move {} corrected twice",
                    c.seq
                );
                // Only the latest move decides where we stand: later moves
                // supersede an earlier one's correction.
                if c.seq == self.last_move_seq {
                    self.pos = (c.x, c.y);
                }
            }
            GameEvent::InputAck(_)
            | GameEvent::SnapshotEnd
            | GameEvent::Link(_)
            | GameEvent::Notice(_) => {}
        }
    }

    fn pings_outstanding(&self) -> usize {
        (1..self.next_ping)
            .filter(|t| !self.pongs.contains_key(t))
            .count()
    }

    fn echoes_outstanding(&self) -> usize {
        (1..self.next_chat)
            .filter(|n| !self.echoes.contains_key(&format!("line{n}")))
            .count()
    }

    /// Every input applied exactly once, every kill paid once.
    fn check_exactly_once(&self, client: &Client) {
        assert_eq!(
            client.unacked_inputs(),
            0,
            "inputs still unacknowledged at the end"
        );
        for t in 1..self.next_ping {
            match self.pongs.get(&t).copied().unwrap_or(0) {
                1 => {}
                0 => panic!("ping {t} was never answered (input lost)"),
                n => panic!("ping {t} was answered {n} times (input applied twice)"),
            }
        }
        assert!(
            self.pongs.keys().all(|t| (1..self.next_ping).contains(t)),
            "a pong for a ping never sent"
        );
        for n in 1..self.next_chat {
            let text = format!("line{n}");
            match self.echoes.get(&text).copied().unwrap_or(0) {
                1 => {}
                k => panic!("chat line {text:?} echoed {k} times, want exactly 1"),
            }
        }
        assert_eq!(
            self.hits + self.errors.len() as u64,
            self.attacks,
            "every attack has exactly one outcome: {} hits + {} errors vs {} attacks sent",
            self.hits,
            self.errors.len(),
            self.attacks
        );
        assert_eq!(
            self.loot.len() as u64,
            self.kills,
            "one loot confirmation per kill"
        );
        if let Some(last) = self.loot.last() {
            assert_eq!(
                last.total_gold,
                self.character().gold,
                "the last loot's total is the first snapshot's gold plus every loot's gold"
            );
        }
    }

    fn summary(&self) -> String {
        format!(
            "inputs {} (pings {}, attacks {} -> {} hits + {} errors, chats {}), \
             corrections {}, kills {}, loot {}, pauses {}, resumes {} ({} by snapshot)",
            self.sent.len(),
            self.next_ping - 1,
            self.attacks,
            self.hits,
            self.errors.len(),
            self.next_chat - 1,
            self.corrections.len(),
            self.kills,
            self.loot.len(),
            self.pauses,
            self.resumes,
            self.resyncs
        )
    }
}

fn dist(a: (f32, f32), b: (f32, f32)) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

fn step_toward(from: (f32, f32), to: (f32, f32), max: f32) -> (f32, f32) {
    let d = dist(from, to);
    if d <= max {
        return to;
    }
    let k = max / d;
    (from.0 + (to.0 - from.0) * k, from.1 + (to.1 - from.1) * k)
}

// ---------------------------------------------------------------------------
// Set-up and the end-of-test comparison
// ---------------------------------------------------------------------------

fn seed() -> u64 {
    std::env::var("TETHER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7e7e_2024)
}

/// The character `name` as the server's storage holds it.
fn saved(store: &TestStore, name: &str) -> Option<tether_world::CharacterRecord> {
    common::character(store, name)
}

/// A server whose heartbeat timeout is short, so that a silent link is
/// noticed (by both sides) within the test's time.
fn fault_server() -> (ServerHandle, TestStore) {
    server(|cfg| {
        cfg.world_players = 20;
        cfg.heartbeat_interval_ms = 500;
        cfg.heartbeat_timeout_ms = 2_000;
    })
}

/// Looks around the map with throwaway characters for a living monster,
/// preferring the weakest seen, and saves `name` standing next to it.
fn place_near_monster(srv: &ServerHandle, store: &TestStore, name: &str) {
    let mut best: Option<pb::EntityAppear> = None;
    let spots = [
        None,
        Some((0.5, 0.5)),
        Some((0.25, 0.25)),
        Some((0.75, 0.75)),
    ];
    let mut world = None;
    for (i, spot) in spots.iter().enumerate() {
        let scout = format!("{name}Scout{i}");
        if let (Some((fx, fy)), Some(w)) = (spot, world.as_ref()) {
            let w: &pb::WorldInfo = w;
            place(store, &scout, fx * w.width, fy * w.height);
        }
        let mut c = TestClient::login(srv.game_addr, &scout);
        world = c.world;
        for m in c.drain(Duration::from_millis(300)) {
            if let Msg::Appear(a) = m {
                if a.kind == pb::EntityKind::Monster as i32
                    && !a.dead
                    && best.as_ref().is_none_or(|b| a.level < b.level)
                {
                    best = Some(a);
                }
            }
        }
        c.send(client_message::Msg::Logout(pb::Logout {}));
        let _ = c.recv_until(Duration::from_secs(2), |m| matches!(m, Msg::Close(_)));
        if best.as_ref().is_some_and(|b| b.level <= 1) {
            break;
        }
    }
    let m = best.expect("a living monster somewhere on the map");
    let w = world.expect("a world");
    place(store, name, (m.x + 2.0).min(w.width - 1.0), m.y);
}

fn client_config(addr: SocketAddr, name: &str, seed: u64) -> ClientConfig {
    let mut cfg = ClientConfig::new(addr, Login::Dev(name.into()));
    cfg.reconnect = ReconnectPolicy {
        max_attempts: 200,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(250),
        jitter_first: true,
    };
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg.seed = Some(seed);
    cfg
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Handles events until `deadline`; panics if the client ends.
async fn run_until(client: &mut Client, p: &mut Player, deadline: Instant) {
    while Instant::now() < deadline {
        match client.next_event_until(deadline).await {
            Some(Ok(Event::Deadline)) => return,
            Some(Ok(ev)) => p.on_event(ev, client),
            Some(Err(e)) => panic!("client ended: {e} ({})", p.summary()),
            None => panic!("client ended ({})", p.summary()),
        }
    }
}

/// Faults off: waits for the session to be live and every input to be
/// answered, then logs out and returns the client's view of its character.
async fn settle_and_log_out(client: &mut Client, p: &mut Player, proxy: &Proxy) -> Character {
    proxy.set_mode(Mode::Calm);
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut final_ping = false;
    loop {
        let now = Instant::now();
        assert!(
            now < give_up,
            "inputs still unanswered 10 s after the faults stopped: {} pings, {} chat lines, \
             {} unacked, live {} ({})",
            p.pings_outstanding(),
            p.echoes_outstanding(),
            client.unacked_inputs(),
            client.is_live(),
            p.summary()
        );
        if client.is_live() && !final_ping {
            // Answered after every earlier input's effects.
            p.ping(client);
            final_ping = true;
        }
        if final_ping
            && client.is_live()
            && client.unacked_inputs() == 0
            && p.pings_outstanding() == 0
            && p.echoes_outstanding() == 0
        {
            break;
        }
        run_until(client, p, now + Duration::from_millis(50)).await;
    }
    // Loot of a kill is confirmed after its commit, which may come a
    // moment after the frames of the inputs applied beside it.
    run_until(client, p, Instant::now() + Duration::from_millis(300)).await;
    p.check_exactly_once(client);
    assert!(client.is_live(), "the connection is up for the logout");
    client.logout();
    loop {
        match client.next_event().await {
            Some(Ok(Event::LoggedOut)) => break,
            Some(Ok(ev)) => p.on_event(ev, client),
            Some(Err(e)) => panic!("logout failed: {e}"),
            None => panic!("client ended before the logout completed"),
        }
    }
    p.character()
}

/// The client's view against the store's record and a fresh login.
fn compare_with_server(srv: &ServerHandle, store: &TestStore, name: &str, mine: &Character) {
    // Saves are written behind the world loop: wait (up to 5 s) for the
    // logout's save to land before comparing.
    let as_character = |rec: &tether_world::CharacterRecord| Character {
        pos: rec.pos.expect("a saved position"),
        hp: rec.hp,
        level: rec.level,
        xp: rec.xp,
        gold: rec.gold,
        inventory: stacks(&rec.inventory),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let saved = loop {
        let rec = as_character(&saved(store, name).expect("the character is saved"));
        if &rec == mine || std::time::Instant::now() > deadline {
            break rec;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(mine, &saved, "client's view (left) vs the saved character");

    let mut fresh = TestClient::login(srv.game_addr, name);
    let state = match fresh.recv_until(Duration::from_secs(5), |m| matches!(m, Msg::SelfState(_))) {
        Some(Msg::SelfState(s)) => s,
        other => panic!("no SelfState after a fresh login: {other:?}"),
    };
    let seen = Character {
        pos: (state.x, state.y),
        hp: state.hp,
        level: state.level,
        xp: state.xp,
        gold: state.gold,
        inventory: stacks(&state.inventory),
    };
    assert_eq!(
        mine, &seen,
        "client's view (left) vs a fresh login's SelfState"
    );
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Random cuts and silences while the client walks, fights, chats and
/// pings: nothing lost, nothing doubled, and the end state matches.
#[test]
fn random_connection_kills_lose_and_double_nothing() {
    let seed = seed();
    let (srv, store) = fault_server();
    let name = "Chaos";
    place_near_monster(&srv, &store, name);
    let proxy = Proxy::start(srv.game_addr, seed, Mode::Chaos);
    let started = std::time::Instant::now();

    let mine = runtime().block_on(async {
        let mut client = Client::connect(client_config(proxy.addr, name, seed))
            .await
            .expect("logs in through the proxy");
        let mut p = Player::new(&client, seed ^ 1);
        let t0 = Instant::now();
        let (mut next_ping, mut next_move, mut next_attack, mut next_chat) = (t0, t0, t0, t0);
        loop {
            let now = Instant::now();
            let elapsed = now - t0;
            let enough = p.kills >= 1 && p.resumes >= 3 && proxy.faults() >= 5;
            if (elapsed >= Duration::from_secs(8) && enough) || elapsed >= Duration::from_secs(15) {
                break;
            }
            if now >= next_ping {
                p.ping(&mut client);
                next_ping = now + Duration::from_millis(50);
            }
            if now >= next_move {
                p.respawn_if_dead(&mut client);
                p.step(&mut client);
                next_move = now + Duration::from_millis(200);
            }
            if now >= next_attack {
                p.attack(&mut client);
                next_attack = now + Duration::from_millis(1_100);
            }
            if now >= next_chat {
                p.chat(&mut client);
                next_chat = now + Duration::from_millis(700);
            }
            let wake = next_ping.min(next_move).min(next_attack).min(next_chat);
            match client.next_event_until(wake).await {
                Some(Ok(ev)) => p.on_event(ev, &client),
                Some(Err(e)) => panic!("client ended: {e} ({})", p.summary()),
                None => panic!("client ended ({})", p.summary()),
            }
        }
        let chaos = t0.elapsed();
        let mine = settle_and_log_out(&mut client, &mut p, &proxy).await;
        let stats = client.stats();
        eprintln!(
            "fault_proxy seed {seed}: {:.1} s of faults, {} connections, {} faults fired; {}; \
             client stats {stats:?}",
            chaos.as_secs_f64(),
            proxy.shared.accepted.load(SeqCst),
            proxy.faults(),
            p.summary()
        );
        assert!(
            p.kills >= 1,
            "no kill within the test's time ({})",
            p.summary()
        );
        assert!(
            stats.resumes >= 1 && p.resumes >= 1,
            "the session was never resumed"
        );
        assert!(proxy.faults() >= 1, "no fault fired");
        mine
    });
    compare_with_server(&srv, &store, name, &mine);
    eprintln!(
        "fault_proxy: random kills test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The attack that kills a monster is the last thing through before the
/// connection dies, and the client stays out until the loot is committed:
/// the death and the loot confirmation reach the client by replay after
/// the resume, exactly once.
#[test]
fn a_kill_while_disconnected_is_confirmed_by_replay() {
    let seed = seed() ^ 0x5eed;
    let (srv, store) = fault_server();
    let name = "Replayed";
    place_near_monster(&srv, &store, name);
    let proxy = Proxy::start(srv.game_addr, seed, Mode::Calm);
    let started = std::time::Instant::now();

    let mine = runtime().block_on(async {
        let mut client = Client::connect(client_config(proxy.addr, name, seed))
            .await
            .expect("logs in through the proxy");
        let mut p = Player::new(&client, seed);
        let give_up = Instant::now() + Duration::from_secs(25);
        let mut next_move = Instant::now();
        let mut next_attack = Instant::now();
        let mut replayed_tx = None;
        let mut tries = 0;
        while replayed_tx.is_none() {
            assert!(
                Instant::now() < give_up,
                "no kill confirmed by replay within 25 s ({tries} tries; {})",
                p.summary()
            );
            let now = Instant::now();
            if now >= next_move {
                p.respawn_if_dead(&mut client);
                p.step(&mut client);
                next_move = now + Duration::from_millis(200);
            }
            if now >= next_attack && client.is_live() && !p.dead {
                next_attack = now + Duration::from_millis(1_200);
                // A hit rolls (10 + 2 x level) +- 25 %: this one may kill.
                let base = 10 + 2 * p.level as i32;
                let max_hit = base + base / 4;
                let may_kill = p
                    .target_monster()
                    .is_some_and(|(_, m, d)| m.hp <= max_hit && d <= p.world.attack_range - 2.0);
                if !may_kill {
                    p.attack(&mut client);
                } else {
                    tries += 1;
                    let gold_before = saved(&store, name).map_or(0, |r| r.gold);
                    let kills_before = p.kills;
                    proxy.set_mode(Mode::CutAfterAttack);
                    assert!(p.attack(&mut client).is_some(), "the attack is sent");
                    // Cut right behind the attack; the proxy now refuses
                    // every reconnect. Keep the client busy failing them
                    // until the kill's loot is committed.
                    let wait_until = Instant::now() + Duration::from_millis(1_500);
                    let mut committed = false;
                    while Instant::now() < wait_until {
                        run_until(
                            &mut client,
                            &mut p,
                            Instant::now() + Duration::from_millis(20),
                        )
                        .await;
                        if proxy.mode() == Mode::Refuse
                            && saved(&store, name).is_some_and(|r| r.gold > gold_before)
                        {
                            committed = true;
                            break;
                        }
                    }
                    let cut = proxy.mode() == Mode::Refuse;
                    if committed {
                        assert_eq!(
                            p.kills, kills_before,
                            "the kill was not seen before the resume"
                        );
                    }
                    proxy.set_mode(Mode::Calm);
                    if committed {
                        let expected = saved(&store, name).unwrap().gold;
                        let resumes_before = p.resumes;
                        let until = Instant::now() + Duration::from_secs(5);
                        while p.loot.iter().all(|l| l.total_gold != expected) {
                            assert!(
                                Instant::now() < until,
                                "the committed loot never reached the client ({})",
                                p.summary()
                            );
                            run_until(
                                &mut client,
                                &mut p,
                                Instant::now() + Duration::from_millis(20),
                            )
                            .await;
                        }
                        let l = p.loot.last().unwrap();
                        assert_eq!(l.total_gold, expected);
                        assert!(
                            p.resumes > resumes_before && p.resyncs == 0,
                            "the loot came after a replay resume ({})",
                            p.summary()
                        );
                        assert!(p.kills > kills_before, "the kill came by replay too");
                        replayed_tx = Some(l.tx_id);
                    } else {
                        eprintln!(
                            "fault_proxy: try {tries}: the attack did not kill \
                             (cut {cut}); fighting on"
                        );
                    }
                }
            }
            let wake = next_move.min(next_attack);
            run_until(&mut client, &mut p, wake).await;
        }
        let mine = settle_and_log_out(&mut client, &mut p, &proxy).await;
        eprintln!(
            "fault_proxy seed {seed}: loot tx {:?} confirmed by replay after {tries} tries; {}",
            replayed_tx,
            p.summary()
        );
        mine
    });
    compare_with_server(&srv, &store, name, &mine);
    eprintln!(
        "fault_proxy: kill-while-disconnected test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

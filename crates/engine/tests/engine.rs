//! The engine driven directly, with a toy game, an in-memory host and a
//! virtual clock: every decision the shard threads make, without threads.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use prost::Message;
use tether_engine::{
    BadInput, BadRecord, BusMsg, ConnId, Ctx, Engine, EngineConfig, Game, Host, LoadFailed, Outbox,
    PlayerId, Record, RefusedResume, Route, StorageBusy, Takeover, Transmit, Tx, Undeliverable,
};
use tether_proto::pb::{self, server_message::Msg, CloseCode};
use tether_proto::{decode_server, split_frame, MAX_PAYLOAD_LEN};
use tether_session::{ResumeToken, SessionConfig};

// ----- a toy game ------------------------------------------------------------

/// Each player has a counter. An input adds its value and answers with a
/// `Pong { client_time: new total }`; every input of value 100 is a
/// "purchase": a durable transaction, answered with a `Pong` of 1_000_000 +
/// its id only once committed. A snapshot is one `Pong` of the total.
#[derive(Default)]
struct Counter {
    players: HashMap<PlayerId, (String, u64, bool)>,
    next_id: u64,
    next_tx: u64,
    dirty: Vec<PlayerId>,
    left: Vec<String>,
    undeliverable: Vec<(u64, Undeliverable)>,
    remote_seen: Vec<(u16, u64)>,
    /// Sent as remote messages by the next input of value 0.
    send_remote: Vec<(Route, u64)>,
}

fn pong(v: u64) -> Bytes {
    tether_proto::encode_frame(&pb::ServerMessage {
        msg: Some(Msg::Pong(pb::Pong { client_time: v })),
    })
}

fn record(account: &str, total: u64) -> Record {
    Record {
        account: account.into(),
        version: 1,
        data: Bytes::from(total.to_le_bytes().to_vec()),
        session: None,
    }
}

impl Game for Counter {
    const NAME: &'static str = "counter";
    type Input = u64;
    type Remote = u64;

    fn decode_input(payload: &[u8]) -> Result<Option<u64>, BadInput> {
        let m = pb::ClientMessage::decode(payload).map_err(|e| BadInput(e.to_string()))?;
        match m.msg {
            Some(pb::client_message::Msg::Input(i)) => Ok(match i.cmd {
                Some(pb::input::Cmd::Ping(p)) => Some(p.client_time),
                _ => None,
            }),
            _ => Err(BadInput("not an input".into())),
        }
    }

    fn welcome_info(&self) -> Bytes {
        Bytes::from_static(b"counter")
    }

    fn join(
        &mut self,
        _ctx: &Ctx,
        account: &str,
        record: Option<Record>,
        out: &mut Outbox<u64>,
    ) -> Result<PlayerId, BadRecord> {
        let total = match record {
            None => 0,
            Some(r) => u64::from_le_bytes(
                r.data[..]
                    .try_into()
                    .map_err(|_| BadRecord("length".into()))?,
            ),
        };
        self.next_id += 1;
        let id = self.next_id;
        self.players.insert(id, (account.to_string(), total, false));
        out.frames.push((id, pong(total)));
        Ok(id)
    }

    fn leave(&mut self, _ctx: &Ctx, player: PlayerId, _out: &mut Outbox<u64>) -> Option<Record> {
        let (name, total, _) = self.players.remove(&player)?;
        self.left.push(name.clone());
        Some(record(&name, total))
    }

    fn link_changed(&mut self, _: &Ctx, player: PlayerId, dead: bool, _: &mut Outbox<u64>) {
        if let Some(p) = self.players.get_mut(&player) {
            p.2 = dead;
        }
    }

    fn apply(&mut self, ctx: &Ctx, player: PlayerId, _seq: u32, v: u64, out: &mut Outbox<u64>) {
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        if v == 0 {
            out.remote.append(&mut self.send_remote);
            return;
        }
        if v == 100 {
            if !ctx.can_commit {
                out.frames.push((player, pong(u64::MAX)));
                return;
            }
            self.next_tx += 1;
            p.1 += v;
            out.commits.push(Tx {
                tx_id: self.next_tx,
                record: record(&p.0, p.1),
                entry: Bytes::from(self.next_tx.to_le_bytes().to_vec()),
            });
            return;
        }
        p.1 += v;
        self.dirty.push(player);
        out.frames.push((player, pong(p.1)));
    }

    fn tick(&mut self, _ctx: &Ctx, _out: &mut Outbox<u64>) {}

    fn snapshot(&mut self, _ctx: &Ctx, player: PlayerId, out: &mut Outbox<u64>) {
        if let Some(p) = self.players.get(&player) {
            out.frames.push((player, pong(p.1)));
        }
    }

    fn take_dirty(&mut self, out: &mut Vec<Record>) {
        for id in self.dirty.drain(..) {
            if let Some(p) = self.players.get(&id) {
                out.push(record(&p.0, p.1));
            }
        }
    }

    fn committed(&mut self, _ctx: &Ctx, tx: &Tx, out: &mut Outbox<u64>) {
        if let Some((&id, _)) = self.players.iter().find(|(_, p)| p.0 == tx.account()) {
            out.frames.push((id, pong(1_000_000 + tx.tx_id)));
        }
    }

    fn on_remote(&mut self, _: &Ctx, from: u16, msg: u64, _: &mut Outbox<u64>) {
        self.remote_seen.push((from, msg));
    }

    fn undeliverable(&mut self, _: &Ctx, msg: u64, why: Undeliverable, _: &mut Outbox<u64>) {
        self.undeliverable.push((msg, why));
    }
}

// ----- an in-memory host -----------------------------------------------------

#[derive(Default)]
struct MemHost {
    stored: HashMap<String, Record>,
    loads: VecDeque<(String, u64)>,
    session_loads: VecDeque<(u64, u64)>,
    dirty: Vec<Record>,
    /// Every record handed to storage, in order (what a flush writes).
    writes: Vec<Record>,
    saved_now: Vec<Record>,
    commits: VecDeque<Tx>,
    /// How many more commits storage takes before its queue is "full".
    commit_room: Option<usize>,
    refuse_loads: bool,
    claims: HashMap<String, u16>,
    population: isize,
    bus: Vec<(u16, BusMsg<u64>)>,
    next_token: u8,
    /// Hand-overs asked for (cluster mode): (account, node, tag).
    hand_overs: Vec<(String, String, u64)>,
    /// What the engine wrote, oldest first.
    transmits: VecDeque<Transmit>,
}

impl Host<u64> for MemHost {
    fn transmit(&mut self, t: Transmit) {
        self.transmits.push_back(t);
    }
    fn resume_token(&mut self) -> ResumeToken {
        self.next_token += 1;
        ResumeToken([self.next_token; 16])
    }
    fn load(&mut self, account: &str, tag: u64) -> Result<(), StorageBusy> {
        if self.refuse_loads {
            return Err(StorageBusy);
        }
        self.loads.push_back((account.into(), tag));
        Ok(())
    }
    fn load_session(&mut self, session_id: u64, tag: u64) -> Result<(), StorageBusy> {
        if self.refuse_loads {
            return Err(StorageBusy);
        }
        self.session_loads.push_back((session_id, tag));
        Ok(())
    }
    fn save_dirty(&mut self, records: &mut Vec<Record>) {
        self.writes.extend(records.iter().cloned());
        self.dirty.append(records);
    }
    fn save_now(&mut self, record: Record) {
        self.stored.insert(record.account.clone(), record.clone());
        self.writes.push(record.clone());
        self.saved_now.push(record);
    }
    fn commit(&mut self, tx: Tx) -> Result<(), Tx> {
        match &mut self.commit_room {
            Some(0) => Err(tx),
            Some(n) => {
                *n -= 1;
                self.commits.push_back(tx);
                Ok(())
            }
            None => {
                self.commits.push_back(tx);
                Ok(())
            }
        }
    }
    fn accepts_logins(&self) -> bool {
        !self.refuse_loads
    }
    fn accepts_value(&self) -> bool {
        self.commit_room != Some(0)
    }
    fn claim(&mut self, account: &str) -> bool {
        match self.claims.get(account) {
            Some(&s) if s != 0 => false,
            _ => {
                self.claims.insert(account.into(), 0);
                true
            }
        }
    }
    fn release(&mut self, account: &str) {
        if self.claims.get(account) == Some(&0) {
            self.claims.remove(account);
        }
    }
    fn locate(&self, account: &str) -> Option<u16> {
        self.claims.get(account).copied()
    }
    fn hand_over(&mut self, account: &str, node: &str, tag: u64) -> bool {
        self.release(account);
        self.hand_overs.push((account.into(), node.into(), tag));
        true
    }
    fn population(&mut self, delta: isize) {
        self.population += delta;
    }
    fn shard_count(&self) -> u16 {
        2
    }
    fn send_bus(&mut self, shard: u16, msg: BusMsg<u64>) -> Result<(), BusMsg<u64>> {
        if self.bus.len() >= 2 {
            return Err(msg);
        }
        self.bus.push((shard, msg));
        Ok(())
    }
}

// ----- helpers -----------------------------------------------------------------

type Sut = Engine<Counter, MemHost>;

fn engine() -> Sut {
    engine_on(MemHost::default())
}

fn engine_on(host: MemHost) -> Sut {
    let cfg = EngineConfig {
        shard: 0,
        session: SessionConfig {
            heartbeat_timeout_ms: 10_000,
            keepalive_interval_ms: 2_000,
            zombie_grace_ms: 30_000,
            input_ack_every: 4,
            input_ack_delay_ms: 100,
            ..SessionConfig::default()
        },
        tick_ms: 50,
        ..EngineConfig::default()
    };
    Engine::new(cfg, Counter::default(), host, 0)
}

/// A record without its session mark, to compare the game's part.
fn unmarked(r: &Record) -> Record {
    Record {
        session: None,
        ..r.clone()
    }
}

fn conn(n: u32) -> ConnId {
    ConnId {
        io: 0,
        slot: n,
        generation: 1,
    }
}

/// What one connection was sent, decoded; `closed` when a Close ended it.
#[derive(Debug, Default)]
struct Seen {
    msgs: Vec<Msg>,
    closed: Option<CloseCode>,
}

fn decode(frame: &Bytes) -> Msg {
    let (payload, _) = split_frame(frame, MAX_PAYLOAD_LEN).unwrap().unwrap();
    decode_server(payload).unwrap().msg.unwrap()
}

fn drain(e: &mut Sut) -> HashMap<ConnId, Seen> {
    let mut seen: HashMap<ConnId, Seen> = HashMap::new();
    while let Some(t) = e.host_mut().transmits.pop_front() {
        match t {
            Transmit::Frame { conn, frame } => {
                seen.entry(conn).or_default().msgs.push(decode(&frame))
            }
            Transmit::Close { conn, frame } => {
                let Msg::Close(c) = decode(&frame) else {
                    panic!("a Close transmit carries a Close")
                };
                seen.entry(conn).or_default().closed = Some(CloseCode::try_from(c.code).unwrap());
            }
        }
    }
    seen
}

fn pongs(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            Msg::Pong(p) => Some(p.client_time),
            _ => None,
        })
        .collect()
}

/// Logs `name` in on `c` and completes its load from the host's store.
fn login(e: &mut Sut, now: u64, c: ConnId, name: &str) -> pb::Welcome {
    e.login(now, c, name.into());
    let (account, tag) = e
        .host_mut()
        .loads
        .pop_front()
        .expect("a load was asked for");
    let stored = e.host().stored.get(&account).cloned();
    e.loaded(now, account, tag, Ok(stored));
    let mut seen = drain(e);
    let s = seen.remove(&c).expect("the login was answered");
    match &s.msgs[0] {
        Msg::Welcome(w) => w.clone(),
        other => panic!("expected Welcome first, got {other:?}"),
    }
}

// ----- tests ---------------------------------------------------------------------

#[test]
fn welcome_comes_before_the_games_snapshot_and_carries_its_info() {
    let mut e = engine();
    e.login(0, conn(1), "ann".into());
    let (account, tag) = e.host_mut().loads.pop_front().unwrap();
    e.loaded(0, account, tag, Ok(Some(record("ann", 41))));
    let seen = drain(&mut e);
    let msgs = &seen[&conn(1)].msgs;
    let Msg::Welcome(w) = &msgs[0] else {
        panic!("Welcome first")
    };
    assert_eq!(w.game, b"counter");
    assert_eq!(w.heartbeat_timeout_ms, 10_000);
    assert_eq!(
        pongs(&msgs[1..]),
        vec![41],
        "then the snapshot, from the stored record"
    );
    assert_eq!(e.stats().active, 1);
    assert_eq!(e.host().population, 1);
}

#[test]
fn inputs_are_applied_once_each_across_a_resume() {
    let mut e = engine();
    let w = login(&mut e, 0, conn(1), "ann");
    for seq in 1..=3 {
        e.input(10, conn(1), seq, 0, Some(1));
    }
    assert_eq!(pongs(&drain(&mut e)[&conn(1)].msgs), vec![1, 2, 3]);
    // The connection drops; the session stays as a zombie.
    assert!(e.closed(20, conn(1)));
    assert_eq!((e.stats().active, e.stats().zombies), (0, 1));
    assert!(e.game().players.values().all(|p| p.2), "the game was told");
    // The client got only the Welcome's snapshot (frame 1) and the first
    // answer (frame 2); it resumes and re-sends inputs 2 and 3 plus a new 4.
    e.resume(
        30,
        conn(2),
        pb::Resume {
            session_id: w.session_id,
            token: w.resume_token.clone(),
            frames_received: 2,
            restart_token: Vec::new(),
        },
    );
    for seq in 2..=4 {
        e.input(40, conn(2), seq, 0, Some(1));
    }
    let seen = drain(&mut e);
    let msgs = &seen[&conn(2)].msgs;
    let Msg::Resumed(r) = &msgs[0] else {
        panic!("Resumed first")
    };
    assert_eq!(r.mode, pb::ResumeMode::Replay as i32);
    assert_eq!(r.frames_base, 2);
    assert_eq!(r.last_input_seq, 3);
    assert_ne!(r.resume_token, w.resume_token, "the token rotates");
    // Frames 3 and 4 replayed, then input 4's effect; 2 and 3 not re-applied.
    assert_eq!(pongs(&msgs[1..]), vec![2, 3, 4]);
    assert_eq!(e.stats().duplicate_inputs, 2);
    assert_eq!(e.stats().resumes_replay, 1);
    assert!(e.game().players.values().all(|p| !p.2));
}

#[test]
fn a_wrong_token_or_unknown_session_is_refused_without_harm() {
    let mut e = engine();
    let w = login(&mut e, 0, conn(1), "ann");
    e.resume(
        5,
        conn(2),
        pb::Resume {
            session_id: w.session_id,
            token: vec![0; 16],
            frames_received: 0,
            restart_token: Vec::new(),
        },
    );
    e.resume(
        5,
        conn(3),
        pb::Resume {
            session_id: 999,
            token: w.resume_token.clone(),
            frames_received: 0,
            restart_token: Vec::new(),
        },
    );
    let seen = drain(&mut e);
    assert_eq!(seen[&conn(2)].closed, Some(CloseCode::ResumeRefused));
    assert_eq!(seen[&conn(3)].closed, Some(CloseCode::ResumeRefused));
    assert_eq!(e.stats().refused(RefusedResume::BadToken), 1);
    assert_eq!(e.stats().refused(RefusedResume::UnknownSession), 1);
    // The live session is untouched.
    e.input(6, conn(1), 1, 0, Some(5));
    assert_eq!(pongs(&drain(&mut e)[&conn(1)].msgs), vec![5]);
}

#[test]
fn a_second_login_takes_the_session_over_or_is_refused() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 1, 0, Some(7));
    drain(&mut e);
    e.login(2, conn(2), "ann".into());
    let seen = drain(&mut e);
    assert_eq!(seen[&conn(1)].closed, Some(CloseCode::SessionTakenOver));
    let Msg::Welcome(w) = &seen[&conn(2)].msgs[0] else {
        panic!("Welcome")
    };
    assert!(w.took_over);
    assert_eq!(pongs(&seen[&conn(2)].msgs), vec![7], "a fresh snapshot");
    assert_eq!(e.stats().takeovers, 1);
    assert_eq!(e.session_count(), 1);

    let e = engine();
    let mut cfg = e.config().clone();
    cfg.takeover = Takeover::Refuse;
    let mut e = Engine::new(cfg, Counter::default(), MemHost::default(), 0);
    login(&mut e, 0, conn(1), "ann");
    e.login(1, conn(2), "ann".into());
    let seen = drain(&mut e);
    assert_eq!(seen[&conn(2)].closed, Some(CloseCode::AlreadyLoggedIn));
    assert!(!seen.contains_key(&conn(1)));
}

#[test]
fn an_input_that_skips_ahead_closes_the_connection_not_the_session() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 5, 0, Some(1));
    let seen = drain(&mut e);
    assert_eq!(seen[&conn(1)].closed, Some(CloseCode::InputSeqGap));
    assert_eq!((e.stats().active, e.stats().zombies), (0, 1));
    // An ack beyond what was sent is a protocol error too.
    let mut e = engine();
    login(&mut e, 0, conn(1), "bob");
    e.ack(1, conn(1), 1_000);
    assert_eq!(
        drain(&mut e)[&conn(1)].closed,
        Some(CloseCode::ProtocolError)
    );
}

#[test]
fn a_zombie_expires_after_its_grace_and_leaves_nothing_behind() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 1, 0, Some(3));
    e.closed(2, conn(1));
    let mut now = 2;
    while e.session_count() > 0 && now < 60_000 {
        now = e.next_tick();
        e.tick(now);
    }
    assert!(now >= 30_000, "the zombie lived its grace ({now} ms)");
    assert_eq!(e.stats().zombie_expiries, 1);
    assert_eq!(e.game().left, vec!["ann".to_string()]);
    assert_eq!(
        e.host().stored["ann"],
        record("ann", 3),
        "saved on the way out"
    );
    assert!(e.host().claims.is_empty(), "the account is released");
    assert_eq!(e.host().population, 0);
    assert_eq!(e.pool_pages_in_use(), 0, "no replay page leaks");
    assert_eq!((e.stats().active, e.stats().zombies), (0, 0));
}

#[test]
fn a_zombie_that_never_played_gets_the_short_grace() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.closed(1, conn(1));
    let mut now = 1;
    while e.session_count() > 0 && now < 60_000 {
        now = e.next_tick();
        e.tick(now);
    }
    assert!((5_000..6_000).contains(&now), "expired at {now} ms");
}

#[test]
fn protect_mode_freezes_zombie_grace() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 1, 0, Some(1));
    e.closed(2, conn(1));
    e.set_protect(3, true);
    let mut now = 3;
    while now < 100_000 {
        now = e.next_tick();
        e.tick(now);
    }
    assert_eq!(e.session_count(), 1, "frozen while protecting");
    e.set_protect(now, false);
    let until = now + 40_000;
    while now < until {
        now = e.next_tick();
        e.tick(now);
    }
    assert_eq!(e.session_count(), 0, "thawed, it expires");
}

#[test]
fn storage_that_cannot_take_a_load_refuses_the_login_and_releases_the_account() {
    let mut e = engine();
    e.host_mut().refuse_loads = true;
    e.login(0, conn(1), "ann".into());
    assert_eq!(
        drain(&mut e)[&conn(1)].closed,
        Some(CloseCode::StorageUnavailable)
    );
    assert!(e.host().claims.is_empty());
    // A load that fails later refuses the same way.
    e.host_mut().refuse_loads = false;
    e.login(1, conn(2), "ann".into());
    let (account, tag) = e.host_mut().loads.pop_front().unwrap();
    e.loaded(2, account, tag, Err(LoadFailed("database away".into())));
    assert_eq!(
        drain(&mut e)[&conn(2)].closed,
        Some(CloseCode::StorageUnavailable)
    );
    assert!(e.host().claims.is_empty());
    // An unreadable record is refused, not replaced.
    e.host_mut().stored.insert(
        "ann".into(),
        Record {
            account: "ann".into(),
            version: 1,
            data: Bytes::from_static(b"x"),
            session: None,
        },
    );
    e.login(3, conn(3), "ann".into());
    let (account, tag) = e.host_mut().loads.pop_front().unwrap();
    let stored = e.host().stored.get(&account).cloned();
    e.loaded(3, account, tag, Ok(stored));
    assert_eq!(
        drain(&mut e)[&conn(3)].closed,
        Some(CloseCode::StorageUnavailable)
    );
    assert_eq!(e.session_count(), 0);
}

#[test]
fn a_connection_lost_while_loading_leaves_no_session_and_no_claim() {
    let mut e = engine();
    e.login(0, conn(1), "ann".into());
    assert!(!e.closed(1, conn(1)));
    let (account, tag) = e.host_mut().loads.pop_front().unwrap();
    e.loaded(2, account, tag, Ok(None));
    assert_eq!(e.session_count(), 0);
    assert!(e.host().claims.is_empty());
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_transaction_is_told_to_the_player_only_once_committed() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 1, 0, Some(100));
    assert!(drain(&mut e).is_empty(), "nothing before the commit");
    let tx = e
        .host_mut()
        .commits
        .pop_front()
        .expect("the transaction went to storage");
    // The record carries the session as of the input that made it.
    assert_eq!(tx.record.session.map(|m| m.last_input), Some(1));
    assert_eq!(unmarked(&tx.record), record("ann", 100));
    e.committed(2, tx);
    assert_eq!(pongs(&drain(&mut e)[&conn(1)].msgs), vec![1_000_001]);
}

#[test]
fn a_full_commit_queue_holds_transactions_and_tells_the_game() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    // Storage fills up; the engine reads that at its next tick and the game
    // is told it cannot commit.
    e.host_mut().commit_room = Some(0);
    e.tick(e.next_tick());
    e.input(1, conn(1), 1, 0, Some(100));
    assert_eq!(pongs(&drain(&mut e)[&conn(1)].msgs), vec![u64::MAX]);
    assert!(e.host().commits.is_empty());
    // Room again: the next transaction goes through.
    e.host_mut().commit_room = None;
    e.tick(e.next_tick());
    e.input(2, conn(1), 2, 0, Some(100));
    assert_eq!(e.host().commits.len(), 1);
    // Storage fills between two ticks: the transaction it gives back waits
    // in the backlog, the game is told at once, and the held transaction is
    // retried (not re-made) at the next tick once there is room.
    e.host_mut().commit_room = Some(0);
    e.input(3, conn(1), 3, 0, Some(100));
    assert_eq!(e.commit_backlog(), 1);
    drain(&mut e);
    e.input(4, conn(1), 4, 0, Some(100));
    assert_eq!(pongs(&drain(&mut e)[&conn(1)].msgs), vec![u64::MAX]);
    e.host_mut().commit_room = None;
    e.tick(e.next_tick());
    let ids: Vec<u64> = e.host().commits.iter().map(|t| t.tx_id).collect();
    assert_eq!(ids, vec![1, 2], "the held one lands once, in order");
    assert_eq!(e.commit_backlog(), 0);
}

#[test]
fn write_behind_gets_what_changed_each_tick() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 1, 0, Some(2));
    e.input(1, conn(1), 2, 0, Some(2));
    let next = e.next_tick();
    e.tick(next);
    let saved = e.host().dirty.last().expect("a write-behind record");
    assert_eq!(unmarked(saved), record("ann", 4));
    assert_eq!(saved.session.map(|m| m.last_input), Some(2));
    let next = e.next_tick();
    e.tick(next);
    let n = e.host().dirty.len();
    e.tick(e.next_tick());
    assert_eq!(
        e.host().dirty.len(),
        n,
        "nothing changed, nothing handed over"
    );
}

#[test]
fn applied_inputs_are_acknowledged_after_their_effects() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 1, 0, Some(1));
    drain(&mut e);
    let mut now = 1;
    let mut acked = None;
    while acked.is_none() && now < 1_000 {
        now = e.next_tick();
        e.tick(now);
        for m in drain(&mut e)
            .remove(&conn(1))
            .map(|s| s.msgs)
            .unwrap_or_default()
        {
            if let Msg::InputAck(a) = m {
                acked = Some(a.seq);
            }
        }
    }
    assert_eq!(acked, Some(1));
    assert!(now <= 200, "within the ack delay ({now} ms)");
}

#[test]
fn logout_acknowledges_applied_inputs_saves_and_closes() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    e.input(1, conn(1), 1, 0, Some(9));
    drain(&mut e);
    e.logout(2, conn(1));
    let seen = drain(&mut e);
    let s = &seen[&conn(1)];
    assert!(matches!(
        s.msgs.last(),
        Some(Msg::InputAck(pb::InputAck { seq: 1 }))
    ));
    assert_eq!(s.closed, Some(CloseCode::Logout));
    assert_eq!(e.host().stored["ann"], record("ann", 9));
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.pool_pages_in_use(), 0);
}

#[test]
fn shutdown_saves_everyone_and_closes_every_connection() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    login(&mut e, 0, conn(2), "bob");
    e.closed(1, conn(2));
    e.login(2, conn(3), "cid".into()); // still loading
    e.shutdown(3, CloseCode::ServerShutdown, "bye", 0);
    let seen = drain(&mut e);
    assert_eq!(seen[&conn(1)].closed, Some(CloseCode::ServerShutdown));
    assert_eq!(seen[&conn(3)].closed, Some(CloseCode::ServerShutdown));
    assert!(
        !seen.contains_key(&conn(2)),
        "a zombie has no connection to close"
    );
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.loading_count(), 0);
    let mut left = e.game().left.clone();
    left.sort();
    assert_eq!(left, vec!["ann".to_string(), "bob".to_string()]);
    assert_eq!(e.pool_pages_in_use(), 0);
}

#[test]
fn cross_shard_messages_are_routed_or_reported_undeliverable() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    // "zed" lives on shard 1; nobody is "nobody"; "ann" is here.
    e.host_mut().claims.insert("zed".into(), 1);
    e.game_mut().send_remote = vec![
        (Route::Account("zed".into()), 1),
        (Route::Account("nobody".into()), 2),
        (Route::Account("ann".into()), 3),
        (Route::Shard(1), 4),
        (Route::Shard(1), 5), // the toy bus holds two
        (Route::Shard(9), 6), // no such shard
    ];
    e.input(1, conn(1), 1, 0, Some(0));
    let bus: Vec<(u16, u64)> = e
        .host()
        .bus
        .iter()
        .map(|(s, m)| match m {
            BusMsg::Game { msg, from_shard } => {
                assert_eq!(*from_shard, 0);
                (*s, *msg)
            }
            _ => panic!("only game messages here"),
        })
        .collect();
    assert_eq!(bus, vec![(1, 1), (1, 4)]);
    assert_eq!(
        e.game().remote_seen,
        vec![(0, 3)],
        "a local account is served here"
    );
    assert_eq!(
        e.game().undeliverable,
        vec![
            (2, Undeliverable::NoSuchAccount),
            (5, Undeliverable::Busy),
            (6, Undeliverable::NoSuchAccount)
        ]
    );
    // And a message from another shard reaches the game.
    e.on_bus(
        2,
        BusMsg::Game {
            from_shard: 1,
            msg: 42,
        },
    );
    assert_eq!(e.game().remote_seen, vec![(0, 3), (1, 42)]);
}

#[test]
fn a_game_that_ignores_can_commit_cannot_grow_the_backlog_without_bound() {
    /// Commits on every input, whatever `can_commit` says.
    struct Greedy(Counter);
    impl Game for Greedy {
        const NAME: &'static str = "greedy";
        type Input = u64;
        type Remote = u64;
        fn decode_input(p: &[u8]) -> Result<Option<u64>, BadInput> {
            Counter::decode_input(p)
        }
        fn welcome_info(&self) -> Bytes {
            self.0.welcome_info()
        }
        fn join(
            &mut self,
            c: &Ctx,
            a: &str,
            r: Option<Record>,
            o: &mut Outbox<u64>,
        ) -> Result<PlayerId, BadRecord> {
            self.0.join(c, a, r, o)
        }
        fn leave(&mut self, c: &Ctx, p: PlayerId, o: &mut Outbox<u64>) -> Option<Record> {
            self.0.leave(c, p, o)
        }
        fn link_changed(&mut self, c: &Ctx, p: PlayerId, d: bool, o: &mut Outbox<u64>) {
            self.0.link_changed(c, p, d, o)
        }
        fn apply(&mut self, _: &Ctx, _: PlayerId, seq: u32, _: u64, o: &mut Outbox<u64>) {
            o.commits.push(Tx {
                tx_id: seq as u64,
                record: record("ann", seq as u64),
                entry: Bytes::new(),
            });
        }
        fn tick(&mut self, _: &Ctx, _: &mut Outbox<u64>) {}
        fn snapshot(&mut self, c: &Ctx, p: PlayerId, o: &mut Outbox<u64>) {
            self.0.snapshot(c, p, o)
        }
        fn take_dirty(&mut self, _: &mut Vec<Record>) {}
        fn committed(&mut self, _: &Ctx, _: &Tx, _: &mut Outbox<u64>) {}
        fn rejected(&mut self, _: &Ctx, tx: &Tx, _: &mut Outbox<u64>) {
            self.0.next_tx = tx.tx_id; // remembers the last refused
        }
        fn on_remote(&mut self, _: &Ctx, _: u16, _: u64, _: &mut Outbox<u64>) {}
        fn undeliverable(&mut self, _: &Ctx, _: u64, _: Undeliverable, _: &mut Outbox<u64>) {}
    }
    let host = MemHost {
        commit_room: Some(0),
        ..MemHost::default()
    };
    let mut e = Engine::new(EngineConfig::default(), Greedy(Counter::default()), host, 0);
    e.login(0, conn(1), "ann".into());
    let (account, tag) = e.host_mut().loads.pop_front().unwrap();
    e.loaded(0, account, tag, Ok(None));
    let extra = 10;
    let total = (tether_engine::MAX_COMMIT_BACKLOG + extra) as u32;
    for seq in 1..=total {
        e.input(1, conn(1), seq, 0, Some(1));
        while e.host_mut().transmits.pop_front().is_some() {}
    }
    assert_eq!(e.commit_backlog(), tether_engine::MAX_COMMIT_BACKLOG);
    assert_eq!(e.stats().commits_refused, extra as u64);
    assert_eq!(
        e.game().0.next_tx,
        total as u64,
        "the newest were handed back"
    );
}

// ----- sessions after a restart -------------------------------------------------

/// Storage as a restarted process finds it: what was saved promptly, then
/// the write-behind records (the flush).
fn storage_after(e: &mut Sut) -> MemHost {
    let mut stored = HashMap::new();
    for r in e.host_mut().writes.drain(..) {
        stored.insert(r.account.clone(), r);
    }
    MemHost {
        stored,
        next_token: 100,
        ..MemHost::default()
    }
}

fn restarted(host: MemHost) -> Sut {
    engine_on(host)
}

/// Answers the engine's load by session id from the host's store.
fn answer_session_load(e: &mut Sut, now: u64) {
    let (id, tag) = e
        .host_mut()
        .session_loads
        .pop_front()
        .expect("a session load was asked for");
    let found = e
        .host()
        .stored
        .values()
        .find(|r| r.session.is_some_and(|m| m.session_id == id))
        .cloned();
    e.session_loaded(now, tag, Ok(found));
}

fn resume_of(w: &pb::Welcome, frames_received: u64) -> pb::Resume {
    pb::Resume {
        session_id: w.session_id,
        token: w.resume_token.clone(),
        frames_received,
        restart_token: w.restart_token.clone(),
    }
}

#[test]
fn a_session_comes_back_from_storage_after_a_crash_with_inputs_applied_once() {
    let mut e = engine();
    let w = login(&mut e, 0, conn(1), "ann");
    assert_eq!(w.restart_token.len(), 16);
    for seq in 1..=3 {
        e.input(10, conn(1), seq, 0, Some(1));
    }
    e.tick(50); // write-behind hands over ann with her session mark
    drain(&mut e);
    let saved = e
        .host()
        .dirty
        .last()
        .cloned()
        .expect("a write-behind record");
    assert_eq!(
        saved.session.map(|m| (m.session_id, m.last_input)),
        Some((w.session_id, 3))
    );
    // The process dies; a new one starts on what storage holds.
    let mut e = restarted(storage_after(&mut e));
    // The client saw the snapshot and three answers (4 frames); inputs 2 and
    // 3 were never acknowledged, so it re-sends them with a new 4.
    e.resume(1_000, conn(7), resume_of(&w, 4));
    answer_session_load(&mut e, 1_010);
    for seq in 2..=4 {
        e.input(1_020, conn(7), seq, 0, Some(1));
    }
    let seen = drain(&mut e);
    let msgs = &seen[&conn(7)].msgs;
    let Msg::Resumed(r) = &msgs[0] else {
        panic!("Resumed first, got {:?}", msgs[0])
    };
    assert_eq!(r.mode, pb::ResumeMode::Snapshot as i32);
    assert_eq!((r.frames_base, r.last_input_seq), (4, 3));
    assert_ne!(r.resume_token, w.resume_token, "a fresh resume token");
    // The snapshot from the saved record (3), then input 4 only.
    assert_eq!(pongs(&msgs[1..]), vec![3, 4]);
    assert_eq!(e.stats().duplicate_inputs, 2);
    assert_eq!(e.stats().resumes_restored, 1);
    assert_eq!(e.host().population, 1);
    // It is a session like any other from here: the next save has its mark.
    e.tick(1_050);
    let saved = e.host().dirty.last().cloned().unwrap();
    assert_eq!(saved.session.map(|m| m.last_input), Some(4));
    assert_eq!(
        saved.session.map(|m| m.restart_token.to_vec()),
        Some(w.restart_token.clone())
    );
}

#[test]
fn inputs_acknowledged_after_the_last_save_are_skipped_not_refused() {
    let mut e = engine();
    let w = login(&mut e, 0, conn(1), "ann");
    e.input(10, conn(1), 1, 0, Some(1));
    e.tick(50); // saved with last input 1
                // Inputs 2 and 3 are applied and acknowledged, then the process dies
                // before the next save: they are lost with it.
    e.input(60, conn(1), 2, 0, Some(1));
    e.input(60, conn(1), 3, 0, Some(1));
    e.host_mut()
        .writes
        .retain(|r| r.session.is_some_and(|m| m.last_input <= 1));
    let mut e = restarted(storage_after(&mut e));
    e.resume(1_000, conn(7), resume_of(&w, 2));
    answer_session_load(&mut e, 1_000);
    // The client re-sends only what was never acknowledged: 4.
    e.input(1_010, conn(7), 4, 0, Some(1));
    let seen = drain(&mut e);
    assert_eq!(seen[&conn(7)].closed, None, "no INPUT_SEQ_GAP");
    assert_eq!(pongs(&seen[&conn(7)].msgs[1..]), vec![1, 2]);
}

#[test]
fn a_planned_stop_saves_every_session_and_says_when_to_come_back() {
    let mut e = engine();
    let w = login(&mut e, 0, conn(1), "ann");
    e.input(10, conn(1), 1, 0, Some(5));
    e.shutdown(20, CloseCode::ServerShutdown, "restarting", 750);
    let mut closes = Vec::new();
    while let Some(t) = e.host_mut().transmits.pop_front() {
        if let Transmit::Close { frame, .. } = t {
            closes.push(decode(&frame));
        }
    }
    let [Msg::Close(c)] = &closes[..] else {
        panic!("one Close, got {closes:?}")
    };
    assert_eq!(c.code, CloseCode::ServerShutdown as i32);
    assert_eq!(c.retry_after_ms, 750);
    let saved = e.host().stored["ann"].clone();
    assert_eq!(saved.session.map(|m| m.last_input), Some(1));
    // The next process resumes it: nothing to skip, nothing lost.
    let mut e = restarted(storage_after(&mut e));
    e.resume(1_000, conn(2), resume_of(&w, 2));
    answer_session_load(&mut e, 1_000);
    let seen = drain(&mut e);
    let Msg::Resumed(r) = &seen[&conn(2)].msgs[0] else {
        panic!("Resumed")
    };
    assert_eq!(r.last_input_seq, 1);
    assert_eq!(pongs(&seen[&conn(2)].msgs[1..]), vec![5]);
}

#[test]
fn an_ended_session_or_a_wrong_restart_token_is_not_restored() {
    let mut e = engine();
    let ann = login(&mut e, 0, conn(1), "ann");
    let bob = login(&mut e, 0, conn(2), "bob");
    e.input(10, conn(1), 1, 0, Some(1));
    e.input(10, conn(2), 1, 0, Some(1));
    e.tick(50);
    e.logout(60, conn(2)); // bob's session is over: its mark is deleted
    drain(&mut e);
    assert_eq!(e.host().stored["bob"].session, None);
    let mut e = restarted(storage_after(&mut e));
    let mut forged = resume_of(&ann, 2);
    forged.restart_token = vec![0; 16];
    e.resume(1_000, conn(7), forged);
    answer_session_load(&mut e, 1_000);
    e.resume(1_000, conn(8), resume_of(&bob, 2));
    answer_session_load(&mut e, 1_000);
    // Without a restart token only a session in memory can be resumed.
    let mut bare = resume_of(&ann, 2);
    bare.restart_token.clear();
    e.resume(1_000, conn(9), bare);
    let seen = drain(&mut e);
    for c in [conn(7), conn(8), conn(9)] {
        assert_eq!(seen[&c].closed, Some(CloseCode::ResumeRefused), "{c:?}");
    }
    assert_eq!(e.stats().refused(RefusedResume::BadToken), 1);
    assert_eq!(e.stats().refused(RefusedResume::UnknownSession), 2);
    assert_eq!((e.session_count(), e.host().population), (0, 0));
    assert!(e.host().claims.is_empty(), "no account left claimed");
    // The real client still gets in.
    e.resume(1_100, conn(10), resume_of(&ann, 2));
    answer_session_load(&mut e, 1_100);
    assert!(matches!(drain(&mut e)[&conn(10)].msgs[0], Msg::Resumed(_)));
}

#[test]
fn a_login_since_the_save_wins_over_the_saved_session() {
    let mut e = engine();
    let w = login(&mut e, 0, conn(1), "ann");
    e.tick(50);
    let mut e = restarted(storage_after(&mut e));
    // Ann logs in afresh on the new process, then an old client of hers
    // tries to resume the saved session.
    login(&mut e, 1_000, conn(2), "ann");
    e.resume(1_010, conn(3), resume_of(&w, 1));
    answer_session_load(&mut e, 1_010);
    let seen = drain(&mut e);
    assert_eq!(seen[&conn(3)].closed, Some(CloseCode::ResumeRefused));
    assert_eq!(e.session_count(), 1);
}

// ----- cluster mode ------------------------------------------------------------

fn server_b() -> pb::Redirect {
    pb::Redirect {
        node: "b".into(),
        address: "10.0.0.2:7777".into(),
        ws_url: String::new(),
    }
}

/// The Close a connection got, whole.
fn close_of(e: &mut Sut, c: ConnId) -> Option<pb::Close> {
    let mut found = None;
    while let Some(t) = e.host_mut().transmits.pop_front() {
        if let Transmit::Close { conn, frame } = t {
            if conn == c {
                let Msg::Close(close) = decode(&frame) else {
                    panic!("a Close transmit carries a Close")
                };
                found = Some(close);
            }
        }
    }
    found
}

#[test]
fn a_login_that_belongs_on_another_server_is_redirected_and_its_claim_released() {
    let mut e = engine();
    e.login(0, conn(1), "ann".into());
    let (_, tag) = e.host_mut().loads.pop_front().unwrap();
    assert!(e.host().claims.contains_key("ann"));
    e.redirected(1, tag, server_b());
    let close = close_of(&mut e, conn(1)).expect("closed");
    assert_eq!(close.code, CloseCode::Redirect as i32);
    assert_eq!(close.redirect, Some(server_b()));
    assert!(e.host().claims.is_empty());
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.loading_count(), 0);
    assert_eq!(e.stats().redirects, 1);
}

#[test]
fn a_moved_session_is_saved_with_its_mark_and_redirected_only_once_handed_over() {
    let mut e = engine();
    let w = login(&mut e, 0, conn(1), "ann");
    for seq in 1..=3 {
        e.input(1, conn(1), seq, 0, Some(5));
    }
    drain(&mut e);
    assert!(e.transfer(2, "ann", server_b()));
    // Saved with the session, as at a shutdown: the other server resumes it
    // from this record, inputs 1-3 applied.
    let saved = e.host().saved_now.last().cloned().unwrap();
    let mark = saved.session.expect("saved with its session");
    assert_eq!((mark.session_id, mark.last_input), (w.session_id, 3));
    assert_eq!(e.session_count(), 0);
    let (account, node, tag) = e.host().hand_overs[0].clone();
    assert_eq!((account.as_str(), node.as_str()), ("ann", "b"));
    // Inputs that arrive meanwhile are not applied here; the client sends
    // them again there.
    e.input(3, conn(1), 4, 0, Some(5));
    assert!(
        close_of(&mut e, conn(1)).is_none(),
        "not before the hand-over"
    );
    e.handed_over(tag, true);
    let close = close_of(&mut e, conn(1)).expect("redirected");
    assert_eq!(close.code, CloseCode::Redirect as i32);
    assert_eq!(close.redirect, Some(server_b()));
    assert_eq!(e.stats().transfers, 1);

    // Server b: the same storage, the session comes back with inputs 1-3
    // applied once.
    let mut b = restarted(storage_after(&mut e));
    b.resume(10, conn(7), resume_of(&w, 0));
    answer_session_load(&mut b, 10);
    let seen = drain(&mut b);
    let Msg::Resumed(r) = &seen[&conn(7)].msgs[0] else {
        panic!("{:?}", seen[&conn(7)])
    };
    assert_eq!(r.last_input_seq, 3);
}

#[test]
fn a_failed_hand_over_tells_the_client_to_resume_here() {
    let mut e = engine();
    login(&mut e, 0, conn(1), "ann");
    assert!(e.transfer(1, "ann", server_b()));
    let tag = e.host().hand_overs[0].2;
    e.handed_over(tag, false);
    let close = close_of(&mut e, conn(1)).expect("closed");
    assert_eq!(close.code, CloseCode::ServerBusy as i32);
    assert!(close.retry_after_ms > 0);
    assert!(!e.transfer(2, "ann", server_b()), "no session left here");
}

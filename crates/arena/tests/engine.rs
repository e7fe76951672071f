//! The arena inside the engine, with an in-memory host and a virtual clock:
//! logins, a whole match over encoded frames, a result told only after the
//! commit, a drop mid-match with its resume (replay and snapshot), and the
//! forfeit of a player who never comes back.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use prost::Message;
use tether_arena::pb::{self, client_message, input::Cmd, server_message::Msg};
use tether_arena::{Arena, ArenaConfig, NoRemote};
use tether_engine::{
    BusMsg, ConnId, Engine, EngineConfig, Game, Host, Record, StorageBusy, Transmit, Tx,
};
use tether_proto::pb::{CloseCode, ResumeMode};
use tether_proto::{split_frame, MAX_PAYLOAD_LEN};
use tether_session::{ResumeToken, SessionConfig};

// ----- an in-memory host -----------------------------------------------------

#[derive(Default)]
struct MemHost {
    stored: HashMap<String, Record>,
    loads: VecDeque<(String, u64)>,
    commits: VecDeque<Tx>,
    /// (tx id, account, entry) of every transaction made durable.
    ledger: Vec<(u64, String, Bytes)>,
    claims: HashMap<String, u16>,
    next_token: u8,
    /// Loads by saved session id (restores after a restart): asked, never
    /// answered here.
    session_loads: Vec<(u64, u64)>,
    /// What the engine wrote, oldest first.
    transmits: VecDeque<Transmit>,
}

impl Host<NoRemote> for MemHost {
    fn transmit(&mut self, t: Transmit) {
        self.transmits.push_back(t);
    }
    fn resume_token(&mut self) -> ResumeToken {
        self.next_token += 1;
        ResumeToken([self.next_token; 16])
    }
    fn load(&mut self, account: &str, tag: u64) -> Result<(), StorageBusy> {
        self.loads.push_back((account.into(), tag));
        Ok(())
    }
    fn load_session(&mut self, session_id: u64, tag: u64) -> Result<(), StorageBusy> {
        self.session_loads.push((session_id, tag));
        Ok(())
    }
    fn save_dirty(&mut self, records: &mut Vec<Record>) {
        for r in records.drain(..) {
            self.stored.insert(r.account.clone(), r);
        }
    }
    fn save_now(&mut self, record: Record) {
        self.stored.insert(record.account.clone(), record);
    }
    fn commit(&mut self, tx: Tx) -> Result<(), Tx> {
        self.commits.push_back(tx);
        Ok(())
    }
    fn accepts_logins(&self) -> bool {
        true
    }
    fn accepts_value(&self) -> bool {
        true
    }
    fn claim(&mut self, account: &str) -> bool {
        self.claims.insert(account.into(), 0);
        true
    }
    fn release(&mut self, account: &str) {
        self.claims.remove(account);
    }
    fn locate(&self, account: &str) -> Option<u16> {
        self.claims.get(account).copied()
    }
    fn population(&mut self, _delta: isize) {}
    fn shard_count(&self) -> u16 {
        1
    }
    fn send_bus(&mut self, _: u16, msg: BusMsg<NoRemote>) -> Result<(), BusMsg<NoRemote>> {
        Err(msg)
    }
}

// ----- helpers -----------------------------------------------------------------

type Sut = Engine<Arena, MemHost>;

fn engine(arena: ArenaConfig, session: SessionConfig) -> Sut {
    let cfg = EngineConfig {
        session,
        tick_ms: 50,
        ..EngineConfig::default()
    };
    Engine::new(cfg, Arena::new(arena, 0), MemHost::default(), 0)
}

fn session() -> SessionConfig {
    SessionConfig {
        heartbeat_timeout_ms: 60_000,
        keepalive_interval_ms: 30_000,
        zombie_grace_ms: 60_000,
        ..SessionConfig::default()
    }
}

fn conn(n: u32) -> ConnId {
    ConnId {
        io: 0,
        slot: n,
        generation: 1,
    }
}

fn decode(frame: &Bytes) -> Msg {
    let (payload, _) = split_frame(frame, MAX_PAYLOAD_LEN).unwrap().unwrap();
    pb::ServerMessage::decode(payload).unwrap().msg.unwrap()
}

/// What each connection was sent since the last call, decoded.
fn drain(e: &mut Sut) -> HashMap<ConnId, Vec<Msg>> {
    let mut seen: HashMap<ConnId, Vec<Msg>> = HashMap::new();
    while let Some(t) = e.host_mut().transmits.pop_front() {
        let (Transmit::Frame { conn, frame } | Transmit::Close { conn, frame }) = t;
        seen.entry(conn).or_default().push(decode(&frame));
    }
    seen
}

/// A player's client, as far as the test needs one: its connection, its
/// session and its next input number.
struct Player {
    conn: ConnId,
    welcome: tether_proto::pb::Welcome,
    seq: u32,
    /// Counted frames received.
    frames: u64,
}

fn login(e: &mut Sut, now: u64, c: ConnId, name: &str) -> (Player, Vec<Msg>) {
    e.login(now, c, name.into());
    let (account, tag) = e.host_mut().loads.pop_front().expect("a load");
    let stored = e.host().stored.get(&account).cloned();
    e.loaded(now, account, tag, Ok(stored));
    let mut msgs = drain(e).remove(&c).expect("answered");
    let Msg::Welcome(welcome) = msgs.remove(0) else {
        panic!("Welcome first")
    };
    let frames = msgs.len() as u64;
    (
        Player {
            conn: c,
            welcome,
            seq: 0,
            frames,
        },
        msgs,
    )
}

/// Sends `cmd` the way a client does: encoded as an arena ClientMessage,
/// decoded by the game as the I/O thread would.
fn send(e: &mut Sut, now: u64, p: &mut Player, cmd: Cmd) {
    p.seq += 1;
    let payload = pb::ClientMessage {
        msg: Some(client_message::Msg::Input(pb::Input {
            seq: p.seq,
            ack: 0,
            cmd: Some(cmd),
        })),
    }
    .encode_to_vec();
    let cmd = Arena::decode_input(&payload).expect("a valid input");
    e.input(now, p.conn, p.seq, 0, cmd);
}

fn tick_until(e: &mut Sut, until: u64) {
    while e.next_tick() <= until {
        let t = e.next_tick();
        e.tick(t);
    }
}

/// Counted frames only (not InputAck), for readable assertions.
fn game_msgs(msgs: Vec<Msg>) -> Vec<Msg> {
    msgs.into_iter()
        .filter(|m| !matches!(m, Msg::InputAck(_)))
        .collect()
}

fn results(msgs: &[Msg]) -> Vec<pb::MatchResult> {
    msgs.iter()
        .filter_map(|m| match m {
            Msg::Result(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn match_started(msgs: &[Msg]) -> pb::MatchStart {
    msgs.iter()
        .find_map(|m| match m {
            Msg::MatchStart(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a MatchStart")
}

// ----- tests ---------------------------------------------------------------------

#[test]
fn welcome_carries_the_arena_rules_and_the_snapshot_follows() {
    let mut e = engine(ArenaConfig::default(), session());
    let (p, msgs) = login(&mut e, 0, conn(1), "ann");
    let info = pb::ArenaInfo::decode(&p.welcome.game[..]).unwrap();
    assert_eq!((info.columns, info.rows, info.connect), (7, 6, 4));
    assert_eq!(info.turn_timeout_ms, 30_000);
    assert!(matches!(&msgs[..], [Msg::Profile(_), Msg::SnapshotEnd(_)]));
    assert!(
        e.host().stored.contains_key("ann"),
        "a new player is stored at once"
    );
    // Bytes that are no arena input close the connection, not the game.
    assert!(Arena::decode_input(&[0xff, 0x01]).is_err());
}

#[test]
fn a_match_through_the_engine_is_told_only_after_its_commit() {
    let mut e = engine(ArenaConfig::default(), session());
    let (mut a, _) = login(&mut e, 0, conn(1), "ann");
    let (mut b, _) = login(&mut e, 0, conn(2), "bob");
    send(&mut e, 10, &mut a, Cmd::Queue(pb::Queue {}));
    send(&mut e, 10, &mut b, Cmd::Queue(pb::Queue {}));
    tick_until(&mut e, 100);
    let seen = drain(&mut e);
    let m = match_started(&seen[&a.conn]).match_id;
    assert_eq!(match_started(&seen[&b.conn]).match_id, m);
    // Ann wins down column 0.
    let mut now = 100;
    for _ in 0..3 {
        now += 10;
        send(
            &mut e,
            now,
            &mut a,
            Cmd::Drop(pb::DropDisc {
                match_id: m,
                column: 0,
            }),
        );
        send(
            &mut e,
            now,
            &mut b,
            Cmd::Drop(pb::DropDisc {
                match_id: m,
                column: 1,
            }),
        );
    }
    send(
        &mut e,
        now,
        &mut a,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 0,
        }),
    );
    tick_until(&mut e, now + 1_000);
    let seen = drain(&mut e);
    for c in [a.conn, b.conn] {
        let msgs = game_msgs(seen[&c].clone());
        assert_eq!(
            msgs.iter().filter(|m| matches!(m, Msg::Dropped(_))).count(),
            7
        );
        assert!(results(&msgs).is_empty(), "nothing told before the commit");
        assert!(
            !msgs.iter().any(|m| matches!(m, Msg::CommandError(_))),
            "{msgs:?}"
        );
    }
    // Storage makes the two transactions durable; then, and only then,
    // each player hears its result.
    let txs: Vec<Tx> = e.host_mut().commits.drain(..).collect();
    assert_eq!(txs.len(), 2);
    for tx in txs {
        e.host_mut()
            .stored
            .insert(tx.account().into(), tx.record.clone());
        e.host_mut()
            .ledger
            .push((tx.tx_id, tx.account().into(), tx.entry.clone()));
        e.committed(now + 1_000, tx);
    }
    let seen = drain(&mut e);
    let ra = results(&seen[&a.conn]);
    let rb = results(&seen[&b.conn]);
    assert_eq!(ra.len(), 1);
    assert_eq!(rb.len(), 1);
    assert_eq!(ra[0].outcome, pb::Outcome::Win as i32);
    assert_eq!(rb[0].outcome, pb::Outcome::Loss as i32);
    assert_eq!((ra[0].rating_after, rb[0].rating_after), (1216, 1184));
    // What the players were told is what the ledger holds.
    let ledger = &e.host().ledger;
    assert_eq!(ledger.len(), 2);
    let ann_entry = ledger.iter().find(|l| l.1 == "ann").unwrap();
    assert_eq!(pb::MatchResult::decode(&ann_entry.2[..]).unwrap(), ra[0]);
    let stored = tether_arena::decode_record(&e.host().stored["bob"]).unwrap();
    assert_eq!((stored.losses, stored.rating), (1, 1184));
    // Logging in again reads the standing back.
    e.logout(now + 2_000, a.conn);
    drain(&mut e);
    let (_, msgs) = login(&mut e, now + 3_000, conn(3), "ann");
    assert!(matches!(&msgs[0], Msg::Profile(p) if p.rating == 1216 && p.wins == 1));
}

#[test]
fn a_player_who_drops_mid_match_resumes_into_it() {
    let mut e = engine(ArenaConfig::default(), session());
    let (mut a, _) = login(&mut e, 0, conn(1), "ann");
    let (mut b, _) = login(&mut e, 0, conn(2), "bob");
    send(&mut e, 10, &mut a, Cmd::Queue(pb::Queue {}));
    send(&mut e, 10, &mut b, Cmd::Queue(pb::Queue {}));
    tick_until(&mut e, 100);
    let seen = drain(&mut e);
    let m = match_started(&seen[&a.conn]).match_id;
    // Bob received the snapshot, QueueState and MatchStart, then lost his
    // connection.
    b.frames += seen[&b.conn].len() as u64;
    assert!(e.closed(200, b.conn));
    let seen = drain(&mut e);
    assert!(
        matches!(&seen[&a.conn][..], [Msg::OpponentLink(l)] if l.link_dead),
        "ann is told: {:?}",
        seen[&a.conn]
    );
    // Ann plays on; bob's session keeps the move for him.
    send(
        &mut e,
        300,
        &mut a,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 3,
        }),
    );
    drain(&mut e);
    // Bob resumes: the move he missed is replayed, ann hears he is back.
    b.conn = conn(4);
    e.resume(
        400,
        b.conn,
        tether_proto::pb::Resume {
            session_id: b.welcome.session_id,
            token: b.welcome.resume_token.clone(),
            frames_received: b.frames,
            restart_token: Vec::new(),
        },
    );
    let seen = drain(&mut e);
    let msgs = &seen[&b.conn];
    let Msg::Resumed(r) = &msgs[0] else {
        panic!("Resumed first: {msgs:?}")
    };
    assert_eq!(r.mode, ResumeMode::Replay as i32);
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Msg::Dropped(d) if d.column == 3 && d.move_no == 1)),
        "the missed move is replayed: {msgs:?}"
    );
    assert!(matches!(&seen[&a.conn][..], [Msg::OpponentLink(l)] if !l.link_dead));
    // And he plays on in the same match.
    send(
        &mut e,
        500,
        &mut b,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 3,
        }),
    );
    let seen = drain(&mut e);
    assert!(seen[&a.conn]
        .iter()
        .any(|m| matches!(m, Msg::Dropped(d) if d.move_no == 2)));
    assert_eq!(e.game().match_of("bob"), Some(m));
}

#[test]
fn a_resume_past_the_replay_buffer_gets_the_board_as_a_snapshot() {
    // One page of replay: frames older than 32 are let go.
    let tight = SessionConfig {
        replay_cap_frames: 32,
        zombie_replay_cap_frames: 32,
        ..session()
    };
    let mut e = engine(ArenaConfig::default(), tight);
    let (mut a, _) = login(&mut e, 0, conn(1), "ann");
    let (mut b, _) = login(&mut e, 0, conn(2), "bob");
    send(&mut e, 10, &mut a, Cmd::Queue(pb::Queue {}));
    send(&mut e, 10, &mut b, Cmd::Queue(pb::Queue {}));
    tick_until(&mut e, 100);
    let m = match_started(&drain(&mut e)[&a.conn]).match_id;
    send(
        &mut e,
        110,
        &mut a,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 2,
        }),
    );
    send(
        &mut e,
        120,
        &mut b,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 5,
        }),
    );
    // Bob pings enough for his oldest frames to be let go, then drops
    // without having acknowledged anything.
    for i in 0..40 {
        send(&mut e, 130, &mut b, Cmd::Ping(pb::Ping { client_time: i }));
    }
    drain(&mut e);
    e.closed(200, b.conn);
    send(
        &mut e,
        300,
        &mut a,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 2,
        }),
    );
    drain(&mut e);
    b.conn = conn(5);
    e.resume(
        400,
        b.conn,
        tether_proto::pb::Resume {
            session_id: b.welcome.session_id,
            token: b.welcome.resume_token.clone(),
            frames_received: 0,
            restart_token: Vec::new(),
        },
    );
    let msgs = drain(&mut e).remove(&b.conn).unwrap();
    let Msg::Resumed(r) = &msgs[0] else {
        panic!("Resumed first")
    };
    assert_eq!(r.mode, ResumeMode::Snapshot as i32);
    let msgs = game_msgs(msgs[1..].to_vec());
    let [Msg::Profile(_), Msg::Board(board), Msg::SnapshotEnd(_)] = &msgs[..] else {
        panic!("Profile, Board, SnapshotEnd: {msgs:?}")
    };
    assert_eq!((board.match_id, board.moves), (m, 3));
    assert_eq!(board.to_move, pb::Side::Two as i32, "bob's turn");
    assert_eq!(board.cells[2], pb::Side::One as i32);
    assert_eq!(board.cells[5], pb::Side::Two as i32);
    assert_eq!(board.cells[7 + 2], pb::Side::One as i32);
    assert!(!board.opponent_link_dead);
}

#[test]
fn a_player_who_never_comes_back_forfeits_and_the_engine_lets_go() {
    let arena = ArenaConfig {
        forfeit_after_ms: 2_000,
        ..ArenaConfig::default()
    };
    let mut e = engine(
        arena,
        SessionConfig {
            zombie_grace_ms: 10_000,
            ..session()
        },
    );
    let (mut a, _) = login(&mut e, 0, conn(1), "ann");
    let (mut b, _) = login(&mut e, 0, conn(2), "bob");
    send(&mut e, 10, &mut a, Cmd::Queue(pb::Queue {}));
    send(&mut e, 10, &mut b, Cmd::Queue(pb::Queue {}));
    tick_until(&mut e, 100);
    drain(&mut e);
    e.closed(150, b.conn);
    tick_until(&mut e, 2_000);
    assert!(e.host().commits.is_empty(), "waited for");
    tick_until(&mut e, 2_300);
    let txs: Vec<Tx> = e.host_mut().commits.drain(..).collect();
    assert_eq!(txs.len(), 2, "forfeited");
    for tx in txs {
        e.committed(2_300, tx);
    }
    let seen = drain(&mut e);
    let ra = results(&seen[&a.conn]);
    assert_eq!(ra[0].reason, pb::EndReason::Forfeit as i32);
    assert_eq!(ra[0].outcome, pb::Outcome::Win as i32);
    // Bob's zombie expires later; he left nothing behind.
    tick_until(&mut e, 20_000);
    assert_eq!(e.session_count(), 1);
    assert_eq!(e.game().player_count(), 1);
    let bob = tether_arena::decode_record(&e.host().stored["bob"]).unwrap();
    assert_eq!(bob.losses, 1, "saved with the loss on the way out");
    assert!(
        e.pool_pages_in_use() > 0,
        "ann's session still holds frames"
    );
    e.shutdown(20_000, CloseCode::ServerShutdown, "bye", 0);
    assert_eq!(e.game().player_count(), 0);
    assert_eq!(e.pool_pages_in_use(), 0, "no replay page leaks");
}

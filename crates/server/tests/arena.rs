//! The arena on a real server, over real sockets: two players log in with
//! the client SDK (its path for games other than the MMO), queue, play a
//! match to the end, and hear the result only once storage holds it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tether_arena::pb::{self, input::Cmd, server_message::Msg};
use tether_arena::{Arena, ArenaConfig};
use tether_client::{Client, ClientConfig, Event, Login};
use tether_engine::Game;
use tether_server::config::{Config, GameKind};
use tether_store::fake::{FakeBackend, FakeControl};

const WAIT: Duration = Duration::from_secs(5);

fn arena_server() -> (tether_server::ServerHandle, FakeControl) {
    let dir = std::env::temp_dir().join(format!(
        "tether-arena-test-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let cfg = Config {
        game: GameKind::Arena,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        protect_tick_lag_ms: 60_000,
        io_uring: std::env::var("TETHER_TEST_IO_URING").as_deref() != Ok("0"),
        ..Config::default()
    };
    let (backend, control) = FakeBackend::new();
    let srv = tether_server::start_game(cfg, Box::new(backend), |shard| {
        Arena::new(ArenaConfig::default(), shard)
    })
    .expect("server starts");
    (srv, control)
}

async fn connect(addr: std::net::SocketAddr, name: &str) -> Client {
    let mut cfg = ClientConfig::new(addr, Login::Dev(name.into()));
    cfg.raw_frames = true;
    Client::connect(cfg).await.expect("logs in")
}

/// An arena command as `Client::send_raw` takes it: the Input with seq and
/// ack at 0.
fn cmd(c: Cmd) -> Bytes {
    Bytes::from(
        pb::Input {
            seq: 0,
            ack: 0,
            cmd: Some(c),
        }
        .encode_to_vec(),
    )
}

/// Sends an arena command and writes it out now (the test drives two
/// clients from one task; each writes only while it is polled).
fn send(c: &mut Client, command: Cmd) {
    c.send_raw(cmd(command)).expect("sent");
    c.flush();
}

/// The next arena frame, skipping the engine's InputAcks; `None` when
/// nothing came within `within`.
async fn next(c: &mut Client, within: Duration) -> Option<Msg> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match c.next_event_until(until).await? {
            Ok(Event::GameFrame(payload)) => {
                let msg = pb::ServerMessage::decode(&payload[..]).expect("an arena frame");
                return msg.msg;
            }
            Ok(Event::Deadline) => return None,
            Ok(_) => {}
            Err(e) => panic!("client ended: {e}"),
        }
    }
}

async fn until(c: &mut Client, mut pred: impl FnMut(&Msg) -> bool) -> Msg {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(m) = next(c, WAIT).await {
            if pred(&m) {
                return m;
            }
        }
    }
    panic!("the frame never came");
}

#[tokio::test]
async fn a_match_over_real_sockets_is_stored_and_told_after_the_commit() {
    let (srv, store) = arena_server();
    let mut ann = connect(srv.game_addr, "ann").await;
    let mut bob = connect(srv.game_addr, "bob").await;
    let info = pb::ArenaInfo::decode(ann.game_info()).unwrap();
    assert_eq!((info.columns, info.rows, info.connect), (7, 6, 4));
    for c in [&mut ann, &mut bob] {
        assert!(matches!(until(c, |_| true).await, Msg::Profile(p) if p.rating == 1200));
        assert!(matches!(until(c, |_| true).await, Msg::SnapshotEnd(_)));
    }
    // An MMO command on an arena client is refused before it leaves.
    assert_eq!(
        ann.send(tether_client::Command::Respawn),
        Err(tether_client::SendError::OtherGame)
    );

    send(&mut ann, Cmd::Queue(pb::Queue {}));
    send(&mut bob, Cmd::Queue(pb::Queue {}));
    let Msg::MatchStart(start) = until(&mut ann, |m| matches!(m, Msg::MatchStart(_))).await else {
        unreachable!()
    };
    assert!(matches!(
        until(&mut bob, |m| matches!(m, Msg::MatchStart(_))).await,
        Msg::MatchStart(s) if s.match_id == start.match_id
    ));
    // Whoever moves first wins down column 0; the other plays column 1.
    let m = start.match_id;
    let (first, second) = if start.you == pb::Side::One as i32 {
        (&mut ann, &mut bob)
    } else {
        (&mut bob, &mut ann)
    };
    let disc = |column| {
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column,
        })
    };
    for move_no in 1..=6u32 {
        let (mover, column) = if move_no % 2 == 1 {
            (&mut *first, 0)
        } else {
            (&mut *second, 1)
        };
        send(mover, disc(column));
        let seen = until(mover, |f| match f {
            Msg::Dropped(d) => d.move_no == move_no,
            f => matches!(f, Msg::CommandError(_)),
        })
        .await;
        assert!(matches!(seen, Msg::Dropped(_)), "{seen:?}");
    }
    // Storage stops answering before the winning move: the match ends,
    // and nobody is told how until the result is stored.
    store.set_hold(true);
    send(first, disc(0));
    let last = until(first, |f| matches!(f, Msg::Dropped(d) if d.move_no == 7)).await;
    assert!(matches!(last, Msg::Dropped(d) if d.over));
    let early = next(first, Duration::from_millis(500)).await;
    assert!(
        !matches!(early, Some(Msg::Result(_))),
        "told before the commit: {early:?}"
    );
    assert!(store.ledger().is_empty());
    store.set_hold(false);
    let Msg::Result(won) = until(first, |f| matches!(f, Msg::Result(_))).await else {
        unreachable!()
    };
    let Msg::Result(lost) = until(second, |f| matches!(f, Msg::Result(_))).await else {
        unreachable!()
    };
    assert_eq!(won.outcome, pb::Outcome::Win as i32);
    assert_eq!(lost.outcome, pb::Outcome::Loss as i32);
    assert_eq!((won.rating_after, lost.rating_after), (1216, 1184));
    assert_eq!((won.match_id, won.moves), (m, 7));

    // The ledger holds both sides, as told; the records the new standings.
    let entries = store.ledger_entries();
    assert_eq!(entries.len(), 2);
    for (tx_id, account, entry) in &entries {
        let r = pb::MatchResult::decode(&entry[..]).unwrap();
        assert_eq!((&r.player, r.tx_id), (account, *tx_id));
        assert_eq!(
            r,
            if *account == won.player {
                won.clone()
            } else {
                lost.clone()
            }
        );
    }
    let stored = |name: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let p = tether_arena::decode_record(&store.record(name).expect("stored")).unwrap();
            if p.wins + p.losses > 0 || Instant::now() > deadline {
                return p;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let winner = stored(&won.player);
    assert_eq!((winner.wins, winner.rating), (1, 1216));
    assert_eq!(stored(&lost.player).losses, 1);
    assert_eq!(Arena::NAME, "arena");
    drop(ann);
    drop(bob);
    srv.shutdown();
}

#[tokio::test]
async fn a_player_cut_off_mid_match_resumes_and_the_match_goes_on() {
    let (srv, _store) = arena_server();
    let mut ann = connect(srv.game_addr, "ann").await;
    let mut bob = connect(srv.game_addr, "bob").await;
    send(&mut ann, Cmd::Queue(pb::Queue {}));
    send(&mut bob, Cmd::Queue(pb::Queue {}));
    let Msg::MatchStart(start) = until(&mut ann, |m| matches!(m, Msg::MatchStart(_))).await else {
        unreachable!()
    };
    until(&mut bob, |m| matches!(m, Msg::MatchStart(_))).await;
    let m = start.match_id;
    let (first, second) = if start.you == pb::Side::One as i32 {
        (&mut ann, &mut bob)
    } else {
        (&mut bob, &mut ann)
    };
    // The second player's connection dies; the first moves meanwhile and
    // is told its opponent is away.
    second.drop_connection();
    send(
        first,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 3,
        }),
    );
    until(first, |f| matches!(f, Msg::OpponentLink(l) if l.link_dead)).await;
    // Back: the missed move arrives (replayed), and the reply lands in the
    // same match.
    let d = until(second, |f| matches!(f, Msg::Dropped(_))).await;
    assert!(matches!(d, Msg::Dropped(d) if d.column == 3 && d.move_no == 1));
    assert!(second.stats().resumes >= 1);
    send(
        second,
        Cmd::Drop(pb::DropDisc {
            match_id: m,
            column: 4,
        }),
    );
    let d = until(first, |f| matches!(f, Msg::Dropped(d) if d.move_no == 2)).await;
    assert!(matches!(d, Msg::Dropped(d) if d.column == 4));
    srv.shutdown();
}

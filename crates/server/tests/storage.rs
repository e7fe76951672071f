//! Storage as players see it: characters survive a restart, a storage
//! outage degrades health and refuses new logins without stopping play, and
//! loot won during an outage is confirmed only once it is stored.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{place, server, stored, TestClient};
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg, CloseCode};
use tether_server::config::Config;

const WAIT: Duration = Duration::from_secs(5);

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn characters_survive_a_restart_in_the_default_sqlite_store() {
    let dir = std::env::temp_dir().join(format!("tether-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = || Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        world_players: 50,
        ..Config::default()
    };
    let srv = tether_server::start(cfg()).expect("server starts on SQLite");
    let mut c = TestClient::login(srv.game_addr, "Keeper");
    let start = c
        .recv_until(WAIT, |m| matches!(m, Msg::SelfState(_)))
        .and_then(|m| match m {
            Msg::SelfState(s) => Some((s.x, s.y)),
            _ => None,
        })
        .expect("snapshot starts with SelfState");
    std::thread::sleep(Duration::from_millis(400));
    let (x, y) = (start.0 + 1.0, start.1);
    c.input(Cmd::Move(pb::Move { x, y }));
    c.send(client_message::Msg::Logout(pb::Logout {}));
    assert!(c.recv_until(WAIT, |m| matches!(m, Msg::Close(_))).is_some());
    srv.shutdown();
    assert!(
        dir.join("tether.db").exists(),
        "SQLite file in the data dir"
    );

    let srv = tether_server::start(cfg()).expect("server restarts");
    let mut again = TestClient::login(srv.game_addr, "Keeper");
    match again.recv_until(WAIT, |m| matches!(m, Msg::SelfState(_))) {
        Some(Msg::SelfState(s)) => assert_eq!((s.x, s.y), (x, y), "position kept"),
        other => panic!("no SelfState: {other:?}"),
    }
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_storage_outage_degrades_health_refuses_new_logins_and_keeps_play() {
    let (srv, store) = server(|_| {});
    place(&store, "Outage", 60.0, 60.0);
    let mut c = TestClient::login(srv.game_addr, "Outage");
    c.drain(Duration::from_millis(200));

    let mut other = TestClient::login(srv.game_addr, "Bystander");
    store.set_down(true);
    // The writer notices on its next write: force one with a logout.
    other.send(client_message::Msg::Logout(pb::Logout {}));
    let mut degraded = false;
    for _ in 0..100 {
        if get(srv.admin_addr, "/healthz").contains("degraded") {
            degraded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(degraded, "healthz reports degraded storage");
    assert!(get(srv.admin_addr, "/metrics").contains("tether_storage_degraded 1"));

    // Play goes on: movement and the game loop are untouched.
    std::thread::sleep(Duration::from_millis(300));
    c.input(Cmd::Move(pb::Move { x: 61.0, y: 60.0 }));
    c.input(Cmd::Ping(pb::Ping { client_time: 3 }));
    let msgs = c.drain(Duration::from_millis(500));
    assert!(msgs.iter().any(|m| matches!(m, Msg::Pong(_))));
    assert!(!msgs.iter().any(|m| matches!(m, Msg::Correction(_))));

    // New logins of unknown characters are refused with a retry hint.
    let mut newbie = TestClient::connect(srv.game_addr);
    newbie.send(client_message::Msg::Hello(pb::Hello {
        protocol_version: 1,
        auth: Some(pb::hello::Auth::DevName("Newbie".into())),
        client: "test".into(),
    }));
    match newbie.recv_within(Duration::from_secs(10)) {
        Some(Msg::Close(close)) => {
            assert_eq!(close.code, CloseCode::StorageUnavailable as i32);
            assert!(close.retry_after_ms > 0);
        }
        other => panic!("login during outage: {other:?}"),
    }

    // Storage returns: health recovers and what was held is written.
    store.set_down(false);
    let mut healthy = false;
    for _ in 0..200 {
        if get(srv.admin_addr, "/healthz").contains("\"ok\"") {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(healthy, "healthz recovers");
    stored(&store, "Bystander", |_| true);
}

/// A monster in view of a scout: logs scouts in (at a saved spot, then at
/// the map's centre) until one sees a live monster.
fn find_monster(
    srv: &tether_server::ServerHandle,
    store: &tether_store::fake::FakeControl,
) -> pb::EntityAppear {
    let live_monster = |m: Msg| match m {
        Msg::Appear(a) if a.kind == pb::EntityKind::Monster as i32 && !a.dead => Some(a),
        _ => None,
    };
    let mut scout = TestClient::login(srv.game_addr, "Scout");
    let world = scout.world.unwrap();
    if let Some(m) = scout
        .drain(Duration::from_millis(300))
        .into_iter()
        .find_map(live_monster)
    {
        return m;
    }
    place(store, "Scout2", world.width / 2.0, world.height / 2.0);
    let mut s2 = TestClient::login(srv.game_addr, "Scout2");
    s2.drain(Duration::from_millis(300))
        .into_iter()
        .find_map(live_monster)
        .expect("a monster in view of the map centre")
}

#[test]
fn loot_won_during_an_outage_is_confirmed_only_once_stored() {
    let (srv, store) = server(|cfg| cfg.world_players = 20);
    let mut monster = find_monster(&srv, &store);
    place(&store, "Hunter", monster.x, monster.y);
    let mut hunter = TestClient::login(srv.game_addr, "Hunter");
    store.set_down(true);

    // Fight until the monster dies: no LootGranted may come while the
    // database is away.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = false;
    let mut next_attack = Instant::now();
    while Instant::now() < deadline && !killed {
        if Instant::now() >= next_attack {
            hunter.input(Cmd::Attack(pb::Attack { target: monster.id }));
            next_attack = Instant::now() + Duration::from_millis(1100);
        }
        match hunter.recv_within(Duration::from_millis(100)) {
            Some(Msg::Move(mv)) if mv.id == monster.id => {
                monster.x = mv.x;
                monster.y = mv.y;
            }
            Some(Msg::Death(d)) if d.id == monster.id => {
                assert_eq!(d.killer, hunter.entity);
                killed = true;
            }
            Some(Msg::Death(d)) if d.id == hunter.entity => {
                hunter.input(Cmd::Respawn(pb::Respawn {}));
            }
            Some(Msg::Loot(l)) => panic!("loot confirmed while storage is down: {l:?}"),
            _ => {}
        }
    }
    assert!(killed, "the monster died within a minute");
    // Showing that something does not happen takes a wait.
    let meanwhile = hunter.drain(Duration::from_millis(500));
    assert!(
        !meanwhile.iter().any(|m| matches!(m, Msg::Loot(_))),
        "loot confirmed while storage is down"
    );
    assert!(store.ledger().is_empty(), "nothing committed while down");

    // The database returns: the held transaction is committed, then
    // confirmed, and it is what the database holds.
    store.set_down(false);
    let loot = match hunter.recv_until(Duration::from_secs(30), |m| matches!(m, Msg::Loot(_))) {
        Some(Msg::Loot(l)) => l,
        other => panic!("no LootGranted after storage returned: {other:?}"),
    };
    assert_eq!(store.ledger().len(), 1, "committed before it was confirmed");
    let saved = stored(&store, "Hunter", |r| r.gold >= loot.total_gold);
    assert!(saved.gold >= loot.total_gold);
}

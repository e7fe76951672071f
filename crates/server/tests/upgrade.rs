//! An upgrade in place, in one process: a second server takes the first
//! one's listeners over the handover socket, holds its loads while the
//! first saves its sessions and stops, and a client's resume that arrived
//! meanwhile is answered from storage once the loads are released, with
//! every applied input accounted for.

mod common;

use std::time::{Duration, Instant};

use common::TestClient;
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg, CloseCode};
use tether_server::config::Config;
use tether_server::{handover, Launch};
use tether_store::fake::FakeBackend;

fn config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        world_players: 50,
        protect_tick_lag_ms: 60_000,
        restart_retry_ms: 50,
        io_uring: std::env::var("TETHER_TEST_IO_URING").as_deref() != Ok("0"),
        ..Config::default()
    }
}

fn start(cfg: Config, backend: FakeBackend, launch: Launch) -> tether_server::ServerHandle {
    tether_server::start_mmo_with(cfg, Box::new(backend), launch).expect("server starts")
}

#[test]
fn the_new_process_serves_on_the_old_listeners_and_restores_after_the_old_one_saved() {
    let dir = std::env::temp_dir().join(format!("tether-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (backend, store) = FakeBackend::new();
    let old = start(config(&dir), backend, Launch::default());
    let addr = old.game_addr;

    let mut player = TestClient::connect(addr);
    let restart_token = match player.hello("Upgraded") {
        Some(Msg::Welcome(w)) => w.restart_token,
        other => panic!("expected Welcome, got {other:?}"),
    };
    player.drain(Duration::from_millis(200));
    let mut last = 0;
    for i in 0..3 {
        last = player.input(Cmd::Ping(pb::Ping { client_time: i }));
    }
    assert!(player
        .recv_until(
            Duration::from_secs(5),
            |m| matches!(m, Msg::Pong(p) if p.client_time == 2)
        )
        .is_some());

    // The new process: same addresses, loads held.
    let listeners = handover::take(&handover::socket_path(&dir)).expect("the old server offers");
    assert_eq!(listeners.game.local_addr().unwrap(), addr);
    let new = start(
        config(&dir),
        store.backend(),
        Launch {
            listeners: Some(listeners),
            hold_loads: true,
        },
    );
    assert_eq!(new.game_addr, addr);

    // The old one stops: the player is told to come back.
    old.shutdown();
    let close = player.recv_until(Duration::from_secs(5), |m| matches!(m, Msg::Close(_)));
    match close {
        Some(Msg::Close(c)) => assert_eq!(c.code, CloseCode::ServerShutdown as i32),
        other => panic!("expected SERVER_SHUTDOWN, got {other:?}"),
    }

    // It comes back at once: accepted by the new process, which holds the
    // resume until the loads are released.
    let mut back = TestClient::connect(addr);
    back.send(client_message::Msg::Resume(pb::Resume {
        session_id: player.session_id,
        token: player.token.clone(),
        frames_received: player.frames,
        restart_token,
    }));
    assert!(
        back.recv_within(Duration::from_millis(300)).is_none(),
        "no answer while loads are held"
    );
    let held_since = Instant::now();
    new.release_loads();
    match back.recv() {
        Some(Msg::Resumed(r)) => {
            assert_eq!(r.mode, pb::ResumeMode::Snapshot as i32);
            assert_eq!(
                r.last_input_seq, last,
                "every applied input is accounted for"
            );
        }
        other => panic!("expected Resumed after the release, got {other:?}"),
    }
    assert!(held_since.elapsed() < Duration::from_secs(5));
    new.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

//! Sessions outlive their sockets: resume, replay, exactly-once inputs and
//! take-over, over real sockets.

mod common;

use std::time::Duration;

use common::{close_code, place, server, TestClient};
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg, CloseCode};

const WAIT: Duration = Duration::from_secs(5);

fn resume(addr: std::net::SocketAddr, old: &TestClient, token: &[u8]) -> (TestClient, Option<Msg>) {
    let mut c = TestClient::connect(addr);
    c.send(client_message::Msg::Resume(pb::Resume {
        session_id: old.session_id,
        token: token.to_vec(),
        frames_received: old.frames,
        restart_token: Vec::new(),
    }));
    let reply = c.recv();
    (c, reply)
}

#[test]
fn a_dropped_player_resumes_and_misses_nothing() {
    let (srv, store) = server(|_| {});
    place(&store, "Dropper", 60.0, 60.0);
    place(&store, "Walker", 62.0, 60.0);
    let mut dropper = TestClient::login(srv.game_addr, "Dropper");
    let mut walker = TestClient::login(srv.game_addr, "Walker");
    let walker_id = walker.entity;
    dropper.drain(Duration::from_millis(300));
    walker.drain(Duration::from_millis(100));

    // The dropper's socket dies; the walker moves while it is gone.
    dropper.stream.shutdown(std::net::Shutdown::Both).unwrap();
    let dropper_id = dropper.entity;
    let link_dead = walker.recv_until(
        WAIT,
        |m| matches!(m, Msg::Link(l) if l.id == dropper_id && l.link_dead),
    );
    assert!(link_dead.is_some(), "others see the zombie as link-dead");
    std::thread::sleep(Duration::from_millis(250));
    walker.input(Cmd::Move(pb::Move { x: 63.0, y: 60.0 }));
    std::thread::sleep(Duration::from_millis(200));

    let old_token = dropper.token.clone();
    let (mut back, reply) = resume(srv.game_addr, &dropper, &old_token);
    match reply {
        Some(Msg::Resumed(r)) => {
            assert_eq!(r.mode, pb::ResumeMode::Replay as i32);
            assert_eq!(r.frames_base, dropper.frames);
            assert_ne!(r.resume_token, old_token, "the token rotates");
            back.token = r.resume_token;
        }
        other => panic!("expected Resumed, got {other:?}"),
    }
    back.session_id = dropper.session_id;
    back.frames = dropper.frames;
    back.next_seq = dropper.next_seq;
    let replayed = back.recv_until(WAIT, |m| matches!(m, Msg::Move(mv) if mv.id == walker_id));
    assert!(replayed.is_some(), "the move made while away is replayed");

    // Once the client has used the new connection (here: an ack), the old
    // token is no longer valid, and a wrong one is refused the same way.
    let frames = back.frames;
    back.send(client_message::Msg::Ack(pb::Ack {
        frames_received: frames,
    }));
    std::thread::sleep(Duration::from_millis(100));
    let (_, reply) = resume(srv.game_addr, &back, &old_token);
    assert_eq!(close_code(&reply), Some(CloseCode::ResumeRefused));
    let mut stranger = TestClient::connect(srv.game_addr);
    stranger.send(client_message::Msg::Resume(pb::Resume {
        session_id: 12345,
        token: vec![0; 16],
        frames_received: 0,
        restart_token: Vec::new(),
    }));
    assert_eq!(close_code(&stranger.recv()), Some(CloseCode::ResumeRefused));
}

#[test]
fn resent_inputs_are_applied_exactly_once() {
    let (srv, _) = server(|_| {});
    let mut c = TestClient::login(srv.game_addr, "Once");
    // Three pings; then the "client" loses its connection before seeing any
    // ack and re-sends all three on the resumed connection.
    let seqs: Vec<u32> = (0..3)
        .map(|i| {
            c.input(Cmd::Ping(pb::Ping {
                client_time: 100 + i,
            }))
        })
        .collect();
    let pongs = c
        .drain(Duration::from_millis(300))
        .into_iter()
        .filter(|m| matches!(m, Msg::Pong(_)))
        .count();
    assert_eq!(pongs, 3);
    c.stream.shutdown(std::net::Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let token = c.token.clone();
    let (mut back, reply) = resume(srv.game_addr, &c, &token);
    match reply {
        Some(Msg::Resumed(r)) => assert_eq!(r.last_input_seq, *seqs.last().unwrap()),
        other => panic!("expected Resumed, got {other:?}"),
    }
    back.frames = c.frames;
    for (i, &seq) in seqs.iter().enumerate() {
        back.send(client_message::Msg::Input(pb::Input {
            seq,
            ack: back.frames,
            cmd: Some(Cmd::Ping(pb::Ping {
                client_time: 100 + i as u64,
            })),
        }));
    }
    back.next_seq = seqs.last().unwrap() + 1;
    back.input(Cmd::Ping(pb::Ping { client_time: 999 }));
    let got: Vec<u64> = back
        .drain(Duration::from_millis(400))
        .into_iter()
        .filter_map(|m| match m {
            Msg::Pong(p) => Some(p.client_time),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![999], "re-sent inputs are not applied twice");

    // Skipping ahead is a protocol violation.
    back.send(client_message::Msg::Input(pb::Input {
        seq: back.next_seq + 5,
        ack: 0,
        cmd: Some(Cmd::Ping(pb::Ping { client_time: 1 })),
    }));
    assert_eq!(
        close_code(&back.recv_until(WAIT, |m| matches!(m, Msg::Close(_)))),
        Some(CloseCode::InputSeqGap)
    );
}

#[test]
fn a_new_connection_wins_over_a_half_open_one() {
    let (srv, _) = server(|_| {});
    let mut old = TestClient::login(srv.game_addr, "Twice");
    old.drain(Duration::from_millis(200));
    let token = old.token.clone();
    let (mut new, reply) = resume(srv.game_addr, &old, &token);
    assert!(matches!(reply, Some(Msg::Resumed(_))));
    assert_eq!(
        close_code(&old.recv_until(WAIT, |m| matches!(m, Msg::Close(_)))),
        Some(CloseCode::SessionTakenOver)
    );
    new.next_seq = old.next_seq;
    new.input(Cmd::Ping(pb::Ping { client_time: 7 }));
    assert!(new
        .recv_until(WAIT, |m| matches!(m, Msg::Pong(_)))
        .is_some());
}

#[test]
fn a_fresh_login_takes_over_or_is_refused() {
    let (srv, _) = server(|_| {});
    let mut first = TestClient::login(srv.game_addr, "Taken");
    let entity = first.entity;
    let second = TestClient::login(srv.game_addr, "Taken");
    assert_eq!(second.entity, entity, "the same character continues");
    assert_eq!(
        close_code(&first.recv_until(WAIT, |m| matches!(m, Msg::Close(_)))),
        Some(CloseCode::SessionTakenOver)
    );

    let (srv, _) = server(|cfg| cfg.takeover = tether_server::config::TakeoverPolicy::Refuse);
    let _first = TestClient::login(srv.game_addr, "Mine");
    let mut second = TestClient::connect(srv.game_addr);
    second.send(client_message::Msg::Hello(pb::Hello {
        protocol_version: 1,
        auth: Some(pb::hello::Auth::DevName("Mine".into())),
        client: "test".into(),
    }));
    assert_eq!(close_code(&second.recv()), Some(CloseCode::AlreadyLoggedIn));
}

#[test]
fn zombies_expire_after_their_grace() {
    let (srv, _) = server(|cfg| cfg.zombie_grace_ms = 300);
    let c = TestClient::login(srv.game_addr, "Ghost");
    c.stream.shutdown(std::net::Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let token = c.token.clone();
    let (_, reply) = resume(srv.game_addr, &c, &token);
    assert_eq!(close_code(&reply), Some(CloseCode::ResumeRefused));
    // A fresh login works and starts a new session.
    let again = TestClient::login(srv.game_addr, "Ghost");
    assert_ne!(again.session_id, c.session_id);
}

//! Frames a client sends behind its `Hello` without waiting for the
//! `Welcome` (PROTOCOL.md section 4): they are handled, in order, once the
//! Welcome is out, whether they came in the Hello's own write or in a later
//! one while the character was still loading.

mod common;

use std::net::Shutdown;
use std::time::Duration;

use common::{metric, server, TestClient};
use tether_proto::encode_frame;
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg, CloseCode};

const WAIT: Duration = Duration::from_secs(5);

/// Long enough that a write made right after the Hello lands while the
/// shard is still loading the character.
const LOAD_LATENCY: Duration = Duration::from_millis(300);

fn hello_frame(name: &str) -> Vec<u8> {
    frame(client_message::Msg::Hello(pb::Hello {
        protocol_version: 1,
        auth: Some(pb::hello::Auth::DevName(name.into())),
        client: "test".into(),
    }))
}

fn ping_frame(seq: u32, client_time: u64) -> Vec<u8> {
    frame(client_message::Msg::Input(pb::Input {
        seq,
        ack: 0,
        cmd: Some(Cmd::Ping(pb::Ping { client_time })),
    }))
}

fn logout_frame() -> Vec<u8> {
    frame(client_message::Msg::Logout(pb::Logout {}))
}

fn frame(msg: client_message::Msg) -> Vec<u8> {
    encode_frame(&pb::ClientMessage { msg: Some(msg) }).to_vec()
}

/// The first message must be the Welcome; its ids are kept.
fn expect_welcome(c: &mut TestClient) {
    match c.recv() {
        Some(Msg::Welcome(w)) => {
            c.session_id = w.session_id;
            c.token = w.resume_token;
        }
        other => panic!("expected Welcome first, got {other:?}"),
    }
}

fn expect_pong(c: &mut TestClient, client_time: u64) {
    match c.recv_until(WAIT, |m| matches!(m, Msg::Pong(_) | Msg::Close(_))) {
        Some(Msg::Pong(p)) => assert_eq!(p.client_time, client_time, "pongs in input order"),
        other => panic!("expected the Pong for {client_time}, got {other:?}"),
    }
}

fn expect_logout(c: &mut TestClient) {
    match c.recv_until(WAIT, |m| matches!(m, Msg::Close(_))) {
        Some(Msg::Close(close)) => {
            assert_eq!(CloseCode::try_from(close.code), Ok(CloseCode::Logout))
        }
        other => panic!("expected Close(LOGOUT), got {other:?}"),
    }
}

/// The session ended (saved and freed), not left behind as a zombie.
fn expect_no_sessions(srv: &tether_server::ServerHandle) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let active = metric(srv, "tether_sessions{state=\"active\"}");
        let zombie = metric(srv, "tether_sessions{state=\"zombie\"}");
        if active == 0 && zombie == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions left: {active} active, {zombie} zombie"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_input_in_the_same_write_as_hello_is_applied_after_welcome() {
    let (srv, store) = server(|_| {});
    store.set_latency(LOAD_LATENCY);
    let mut c = TestClient::connect(srv.game_addr);
    let mut bytes = hello_frame("SameWriteInput");
    bytes.extend(ping_frame(1, 11));
    c.send_raw(&bytes).unwrap();
    expect_welcome(&mut c);
    expect_pong(&mut c, 11);
    // Its number counted: the next input follows on, no INPUT_SEQ_GAP.
    c.send_raw(&ping_frame(2, 12)).unwrap();
    expect_pong(&mut c, 12);
}

#[test]
fn an_input_written_right_after_hello_is_applied_after_welcome() {
    let (srv, store) = server(|_| {});
    store.set_latency(LOAD_LATENCY);
    let mut c = TestClient::connect(srv.game_addr);
    c.send_raw(&hello_frame("NextWriteInput")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&ping_frame(1, 21)).unwrap();
    c.send_raw(&ping_frame(2, 22)).unwrap();
    expect_welcome(&mut c);
    expect_pong(&mut c, 21);
    expect_pong(&mut c, 22);
    c.send_raw(&ping_frame(3, 23)).unwrap();
    expect_pong(&mut c, 23);
}

#[test]
fn a_logout_in_the_same_write_as_hello_ends_the_session() {
    let (srv, store) = server(|_| {});
    store.set_latency(LOAD_LATENCY);
    let mut c = TestClient::connect(srv.game_addr);
    let mut bytes = hello_frame("SameWriteLogout");
    bytes.extend(logout_frame());
    c.send_raw(&bytes).unwrap();
    expect_welcome(&mut c);
    expect_logout(&mut c);
    expect_no_sessions(&srv);
}

#[test]
fn a_logout_written_right_after_hello_ends_the_session() {
    let (srv, store) = server(|_| {});
    store.set_latency(LOAD_LATENCY);
    let mut c = TestClient::connect(srv.game_addr);
    c.send_raw(&hello_frame("NextWriteLogout")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&ping_frame(1, 31)).unwrap();
    c.send_raw(&logout_frame()).unwrap();
    expect_welcome(&mut c);
    expect_pong(&mut c, 31);
    expect_logout(&mut c);
    expect_no_sessions(&srv);
}

/// A client that says all it has to say and closes its sending side before
/// the Welcome: the server takes a FIN as the connection's end, but only
/// after the frames before it, so the Logout still ends the session.
#[test]
fn a_logout_followed_by_the_clients_fin_before_welcome_ends_the_session() {
    let (srv, store) = server(|_| {});
    store.set_latency(LOAD_LATENCY);
    let mut c = TestClient::connect(srv.game_addr);
    let mut bytes = hello_frame("LogoutThenFin");
    bytes.extend(logout_frame());
    c.send_raw(&bytes).unwrap();
    c.stream.shutdown(Shutdown::Write).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&srv, "tether_logouts_total") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pipelined Logout was never applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(&srv, "tether_zombie_expiries_total"),
        0,
        "ended by its Logout, not by a zombie's grace running out"
    );
    expect_no_sessions(&srv);
}

/// More than the server holds unparsed before the Welcome
/// (`PIPELINED_BEFORE_WELCOME_CAP`, 4 KiB): reading pauses at the cap and
/// goes on after the Welcome; nothing is dropped or reordered.
#[test]
fn more_pipelined_than_the_cap_is_all_handled_in_order() {
    const PINGS: u32 = 600;
    let (srv, store) = server(|_| {});
    store.set_latency(LOAD_LATENCY);
    let mut c = TestClient::connect(srv.game_addr);
    let mut bytes = hello_frame("LongPipeline");
    for seq in 1..=PINGS {
        bytes.extend(ping_frame(seq, 1000 + seq as u64));
    }
    assert!(bytes.len() > 4096, "the pipeline passes the cap");
    c.send_raw(&bytes).unwrap();
    expect_welcome(&mut c);
    for seq in 1..=PINGS {
        expect_pong(&mut c, 1000 + seq as u64);
    }
}

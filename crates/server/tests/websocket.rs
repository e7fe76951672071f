//! The WebSocket game listener (`ws_listen`) with an independent client
//! (tungstenite): the same session layer as TCP, resume and exactly-once
//! inputs included, across transports; a broken WebSocket peer gets its
//! close codes and harms nobody.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{http_exchange as http, metric, server, TestClient};
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg, CloseCode};
use tether_proto::{decode_server, encode_frame, split_frame, MAX_PAYLOAD_LEN};
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::{Message, WebSocket};

const WAIT: Duration = Duration::from_secs(5);

/// A browser-like player: Tether frames in WebSocket binary messages.
struct WsPlayer {
    ws: WebSocket<TcpStream>,
    buf: Vec<u8>,
    frames: u64,
    session_id: u64,
    token: Vec<u8>,
}

impl WsPlayer {
    fn connect(addr: SocketAddr) -> WsPlayer {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, resp) = tungstenite::client(format!("ws://{addr}/"), stream).expect("upgrade");
        assert_eq!(resp.status(), 101);
        WsPlayer {
            ws,
            buf: Vec::new(),
            frames: 0,
            session_id: 0,
            token: Vec::new(),
        }
    }

    fn send(&mut self, msg: client_message::Msg) {
        let frame = encode_frame(&pb::ClientMessage { msg: Some(msg) });
        self.ws.send(Message::binary(frame.to_vec())).unwrap();
    }

    fn login(addr: SocketAddr, name: &str) -> WsPlayer {
        let mut p = WsPlayer::connect(addr);
        p.send(client_message::Msg::Hello(pb::Hello {
            protocol_version: 1,
            auth: Some(pb::hello::Auth::DevName(name.into())),
            client: "ws-test".into(),
        }));
        match p.recv() {
            Some(Msg::Welcome(w)) => {
                p.session_id = w.session_id;
                p.token = w.resume_token;
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        p
    }

    fn ping(&mut self, seq: u32, client_time: u64) {
        self.send(client_message::Msg::Input(pb::Input {
            seq,
            ack: self.frames,
            cmd: Some(Cmd::Ping(pb::Ping { client_time })),
        }));
    }

    /// The next Tether message, or None when closed or after [`WAIT`].
    fn recv(&mut self) -> Option<Msg> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((payload, used)) = split_frame(&self.buf, MAX_PAYLOAD_LEN).unwrap() {
                let msg = decode_server(payload).unwrap().msg.unwrap();
                self.buf.drain(..used);
                if !matches!(msg, Msg::Welcome(_) | Msg::Resumed(_) | Msg::Close(_)) {
                    self.frames += 1;
                }
                return Some(msg);
            }
            if Instant::now() > deadline {
                return None;
            }
            match self.ws.read() {
                Ok(Message::Binary(b)) => self.buf.extend_from_slice(&b),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// One message if one is buffered or arrives within one read.
    fn recv_within_once(&mut self) -> Option<Msg> {
        loop {
            if let Some((payload, used)) = split_frame(&self.buf, MAX_PAYLOAD_LEN).unwrap() {
                let msg = decode_server(payload).unwrap().msg.unwrap();
                self.buf.drain(..used);
                return Some(msg);
            }
            match self.ws.read() {
                Ok(Message::Binary(b)) => self.buf.extend_from_slice(&b),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn recv_until(&mut self, mut pred: impl FnMut(&Msg) -> bool) -> Option<Msg> {
        loop {
            let m = self.recv()?;
            if pred(&m) {
                return Some(m);
            }
        }
    }
}

fn pong(m: &Msg, t: u64) -> bool {
    matches!(m, Msg::Pong(p) if p.client_time == t)
}

#[test]
fn a_browser_player_resumes_and_its_inputs_apply_once() {
    let (srv, _store) = server(|cfg| cfg.ws_listen = Some("127.0.0.1:0".parse().unwrap()));
    let ws_addr = srv.ws_addr.expect("ws listener");
    let mut p = WsPlayer::login(ws_addr, "wendy");
    p.ping(1, 41);
    assert!(p.recv_until(|m| pong(m, 41)).is_some());
    // Input 2 applied, then the network drops before its ack went out.
    p.ping(2, 42);
    assert!(p.recv_until(|m| pong(m, 42)).is_some());
    let (session_id, token, frames) = (p.session_id, p.token.clone(), p.frames);
    drop(p);

    // A new WebSocket resumes the session and re-sends input 2: applied
    // once only.
    let mut again = WsPlayer::connect(ws_addr);
    again.frames = frames;
    again.send(client_message::Msg::Resume(pb::Resume {
        session_id,
        token,
        frames_received: frames,
        restart_token: Vec::new(),
    }));
    let Some(Msg::Resumed(r)) = again.recv_until(|m| matches!(m, Msg::Resumed(_))) else {
        panic!("no Resumed")
    };
    assert_eq!(r.last_input_seq, 2);
    again.ping(2, 42);
    again.ping(3, 43);
    let mut pongs = Vec::new();
    while let Some(m) = again.recv() {
        if let Msg::Pong(p) = m {
            pongs.push(p.client_time);
            if p.client_time == 43 {
                break;
            }
        }
    }
    assert_eq!(pongs, [43], "input 2 was not applied twice");
    assert_eq!(metric(&srv, "tether_duplicate_inputs_total"), 1);
    assert_eq!(metric(&srv, "tether_websocket_upgrades_total"), 2);
}

#[test]
fn frames_sent_over_websocket_are_counted_once() {
    let (srv, _store) = server(|cfg| cfg.ws_listen = Some("127.0.0.1:0".parse().unwrap()));
    let mut p = WsPlayer::login(srv.ws_addr.unwrap(), "counter");
    p.ping(1, 5);
    assert!(p.recv_until(|m| pong(m, 5)).is_some());
    // Everything the server sent so far (its InputAck comes ~500 ms after
    // the input), then its count, then what was on the way meanwhile.
    let mut received = 1 + p.frames; // the Welcome is not a counted frame
    let mut drain = |p: &mut WsPlayer, for_ms: u64| {
        let until = Instant::now() + Duration::from_millis(for_ms);
        p.ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        while Instant::now() < until {
            if p.recv_within_once().is_some() {
                received += 1;
            }
        }
        received
    };
    let before = drain(&mut p, 800);
    let counted = metric(&srv, "tether_frames_out_total");
    let after = drain(&mut p, 300);
    assert!(
        before <= counted && counted <= after,
        "server counted {counted} frames, the player got {before}..{after}"
    );
}

#[test]
fn a_session_moves_between_tcp_and_websocket() {
    let (srv, _store) = server(|cfg| cfg.ws_listen = Some("127.0.0.1:0".parse().unwrap()));
    let mut tcp = TestClient::login(srv.game_addr, "tessa");
    tcp.input(Cmd::Ping(pb::Ping { client_time: 7 }));
    assert!(tcp.recv_until(WAIT, |m| pong(m, 7)).is_some());

    let mut ws = WsPlayer::connect(srv.ws_addr.unwrap());
    ws.frames = tcp.frames;
    ws.send(client_message::Msg::Resume(pb::Resume {
        session_id: tcp.session_id,
        token: tcp.token.clone(),
        frames_received: tcp.frames,
        restart_token: Vec::new(),
    }));
    let Some(Msg::Resumed(r)) = ws.recv_until(|m| matches!(m, Msg::Resumed(_))) else {
        panic!("no Resumed over WebSocket")
    };
    assert_eq!(r.session_id, tcp.session_id);
    // The TCP connection was taken over.
    let close = tcp.recv_until(WAIT, |m| matches!(m, Msg::Close(_)));
    assert_eq!(
        common::close_code(&close),
        Some(CloseCode::SessionTakenOver)
    );
    ws.ping(2, 8);
    assert!(ws.recv_until(|m| pong(m, 8)).is_some());
}

#[test]
fn a_broken_websocket_peer_is_closed_with_codes_and_others_play_on() {
    let (srv, _store) = server(|cfg| cfg.ws_listen = Some("127.0.0.1:0".parse().unwrap()));
    let ws_addr = srv.ws_addr.unwrap();
    let mut bystander = WsPlayer::login(ws_addr, "bea");

    // Text is not Tether: a Tether Close (PROTOCOL_ERROR), then the
    // WebSocket Close 1003.
    let mut bad = WsPlayer::login(ws_addr, "tex");
    bad.ws.send(Message::text("hello")).unwrap();
    let close = bad.recv_until(|m| matches!(m, Msg::Close(_)));
    assert_eq!(common::close_code(&close), Some(CloseCode::ProtocolError));
    let ws_close = loop {
        match bad.ws.read() {
            Ok(Message::Close(c)) => break c,
            Ok(_) => continue,
            Err(e) => panic!("no WebSocket Close: {e}"),
        }
    };
    assert_eq!(ws_close.map(|c| c.code), Some(WsCloseCode::Unsupported));

    // A garbage upgrade request: an HTTP 400.
    let (status, _) = http(ws_addr, "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(status, 400);

    bystander.ping(1, 99);
    assert!(bystander.recv_until(|m| pong(m, 99)).is_some());
}

#[test]
fn a_plain_get_is_answered_over_http() {
    let (srv, _store) = server(|cfg| cfg.ws_listen = Some("127.0.0.1:0".parse().unwrap()));
    let (status, body) = http(srv.ws_addr.unwrap(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("play.js"), "the browser demo: {body}");
    let (status, _) = http(
        srv.ws_addr.unwrap(),
        "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, 404);
}

/// The Rust client over WebSocket (`Transport::WebSocket`): logs in, plays,
/// loses its connection and resumes with its inputs applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_plays_and_resumes_over_websocket() {
    use tether_client::{Client, ClientConfig, Command, Event, GameEvent, Login, Transport};
    let (srv, _store) = server(|cfg| cfg.ws_listen = Some("127.0.0.1:0".parse().unwrap()));
    let mut cfg = ClientConfig::new(srv.ws_addr.unwrap(), Login::Dev("rusty".into()));
    cfg.transport = Transport::WebSocket { path: "/".into() };
    let mut client = Client::connect(cfg).await.expect("logs in over WebSocket");
    let mut pongs = Vec::new();
    for t in 1..=10u64 {
        client.send(Command::Ping { client_time: t }).unwrap();
        if t == 5 {
            client.drop_connection();
        }
    }
    let deadline = tether_client::Instant::now() + WAIT;
    let mut resumed = false;
    while pongs.len() < 10 {
        match client.next_event_until(deadline).await {
            Some(Ok(Event::Game(GameEvent::Pong(p)))) => pongs.push(p.client_time),
            Some(Ok(Event::Resumed { .. })) => resumed = true,
            Some(Ok(Event::Deadline)) | None => panic!("only {pongs:?} within {WAIT:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
    assert!(resumed, "the dropped connection was resumed");
    assert_eq!(
        pongs,
        (1..=10).collect::<Vec<_>>(),
        "each input applied once, in order"
    );
    assert!(metric(&srv, "tether_websocket_upgrades_total") >= 2);
}

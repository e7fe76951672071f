//! The client against a small fake server that speaks raw frames over a real
//! socket: login, counted frames and acks, resume after a killed socket
//! (frames_received and re-sent inputs), snapshot resync, close codes,
//! retry_after, silence, logout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tether_client::pb::{self, client_message, server_message::Msg, CloseCode};
use tether_client::{
    Client, ClientConfig, ClientError, Command, Event, GameEvent, Login, PauseReason,
    ReconnectPolicy,
};
use tether_proto::{decode_client, encode_frame, split_frame, MAX_PAYLOAD_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const STEP: Duration = Duration::from_secs(5);

/// One accepted connection, seen from the server's side.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = timeout(STEP, listener.accept())
            .await
            .expect("client connects")
            .unwrap();
        Peer {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The next client frame; `None` on EOF.
    async fn recv(&mut self) -> Option<client_message::Msg> {
        loop {
            if let Some((payload, used)) = split_frame(&self.buf, MAX_PAYLOAD_LEN).unwrap() {
                let msg = decode_client(payload).unwrap();
                self.buf.advance(used);
                return msg.msg;
            }
            let n = timeout(STEP, self.stream.read_buf(&mut self.buf))
                .await
                .expect("client sends")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// The next client frame that is not a standalone Ack.
    async fn recv_skip_acks(&mut self) -> Option<client_message::Msg> {
        loop {
            match self.recv().await? {
                client_message::Msg::Ack(_) => continue,
                m => return Some(m),
            }
        }
    }

    async fn send(&mut self, msg: Msg) {
        let frame = encode_frame(&pb::ServerMessage { msg: Some(msg) });
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn close(&mut self, code: CloseCode, retry_after_ms: u32) {
        self.send(Msg::Close(pb::Close {
            code: code as i32,
            message: "test".into(),
            retry_after_ms,
            redirect: None,
        }))
        .await;
    }
}

fn welcome(token: u8, heartbeat_timeout_ms: u32) -> Msg {
    Msg::Welcome(pb::Welcome {
        session_id: 77,
        resume_token: vec![token; 16],
        entity_id: 5,
        game: prost::Message::encode_to_vec(&pb::WorldInfo {
            width: 100.0,
            height: 100.0,
            view_radius: 20.0,
            move_speed: 5.0,
            attack_range: 2.0,
            attack_cooldown_ms: 1000,
            pvp: false,
        }),
        heartbeat_interval_ms: 1_000,
        heartbeat_timeout_ms,
        resume_grace_ms: 30_000,
        took_over: false,
        restart_token: vec![token ^ 0xff; 16],
    })
}

fn self_state() -> Msg {
    Msg::SelfState(pb::SelfState {
        entity_id: 5,
        name: "alice".into(),
        x: 1.0,
        y: 2.0,
        hp: 10,
        max_hp: 10,
        ..Default::default()
    })
}

fn pong(t: u64) -> Msg {
    Msg::Pong(pb::Pong { client_time: t })
}

fn config(addr: SocketAddr) -> ClientConfig {
    let mut cfg = ClientConfig::new(addr, Login::Dev("alice".into()));
    cfg.reconnect = ReconnectPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        jitter_first: true,
    };
    cfg.seed = Some(1);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Accepts one connection, checks the Hello, answers with Welcome and a
/// two-frame snapshot.
async fn login(listener: &TcpListener, token: u8) -> Peer {
    let mut peer = Peer::accept(listener).await;
    match peer.recv().await {
        Some(client_message::Msg::Hello(h)) => {
            assert_eq!(h.protocol_version, tether_proto::PROTOCOL_VERSION);
            assert_eq!(h.auth, Some(pb::hello::Auth::DevName("alice".into())));
            assert!(h.client.starts_with("tether-client/"));
        }
        other => panic!("expected Hello, got {other:?}"),
    }
    peer.send(welcome(token, 15_000)).await;
    peer.send(self_state()).await;
    peer.send(Msg::SnapshotEnd(pb::SnapshotEnd {})).await;
    peer
}

async fn next(client: &mut Client) -> Event {
    timeout(STEP, client.next_event())
        .await
        .expect("an event in time")
        .expect("client still running")
        .expect("no error")
}

async fn next_game(client: &mut Client) -> GameEvent {
    match next(client).await {
        Event::Game(g) => g,
        other => panic!("expected a game event, got {other:?}"),
    }
}

/// Drives the client (its events are dropped) until `server` is done.
async fn drive_until<T>(client: &mut Client, mut server: tokio::task::JoinHandle<T>) -> T {
    loop {
        tokio::select! {
            done = &mut server => return done.unwrap(),
            ev = timeout(STEP, client.next_event()) => {
                ev.expect("server finishes in time").expect("client running").expect("no error");
            }
        }
    }
}

fn input(msg: Option<client_message::Msg>) -> pb::Input {
    match msg {
        Some(client_message::Msg::Input(i)) => i,
        other => panic!("expected Input, got {other:?}"),
    }
}

#[tokio::test]
async fn login_then_counted_frames_and_piggybacked_acks() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        peer.send(pong(42)).await;
        let i = input(peer.recv_skip_acks().await);
        (i, peer)
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    assert_eq!(client.entity_id(), 5);
    assert_eq!(client.world().move_speed, 5.0);
    assert!(client.is_live());
    assert!(matches!(next_game(&mut client).await, GameEvent::SelfState(s) if s.name == "alice"));
    assert_eq!(next_game(&mut client).await, GameEvent::SnapshotEnd);
    assert_eq!(
        next_game(&mut client).await,
        GameEvent::Pong(pb::Pong { client_time: 42 })
    );
    assert_eq!(client.session().frames_received(), 3);

    assert_eq!(client.send(Command::Move { x: 3.0, y: 4.0 }), Ok(1));
    client.flush();
    let (i, _peer) = server.await.unwrap();
    assert_eq!(i.seq, 1);
    assert_eq!(i.ack, 3, "the input carries the frame count");
    assert_eq!(
        i.cmd,
        Some(pb::input::Cmd::Move(pb::Move { x: 3.0, y: 4.0 }))
    );
    assert_eq!(client.unacked_inputs(), 1);
    let s = client.stats();
    assert_eq!(s.frames_in, 4);
    assert!(s.frames_out >= 2);
}

#[tokio::test]
async fn commands_queued_together_leave_together_in_order() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        let mut seqs = Vec::new();
        for _ in 0..5 {
            seqs.push(input(peer.recv_skip_acks().await).seq);
        }
        seqs
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    for t in 0..5 {
        client.send(Command::Ping { client_time: t }).unwrap();
    }
    // Written when the client is driven: drive it until the server has them.
    assert_eq!(drive_until(&mut client, server).await, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn killed_socket_resumes_with_frame_count_and_resends_unacked_inputs() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        // Two inputs arrive; only the first is acknowledged (frame 3).
        assert_eq!(input(peer.recv_skip_acks().await).seq, 1);
        assert_eq!(input(peer.recv_skip_acks().await).seq, 2);
        peer.send(Msg::InputAck(pb::InputAck { seq: 1 })).await;
        // Let the client read it, then kill the socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(peer);

        let mut peer = Peer::accept(&l).await;
        let resume = match peer.recv().await {
            Some(client_message::Msg::Resume(r)) => r,
            other => panic!("expected Resume, got {other:?}"),
        };
        peer.send(Msg::Resumed(pb::Resumed {
            session_id: 77,
            resume_token: vec![2; 16],
            mode: pb::ResumeMode::Replay as i32,
            frames_base: resume.frames_received,
            last_input_seq: 1,
        }))
        .await;
        let resent = input(peer.recv_skip_acks().await);
        let fresh = input(peer.recv_skip_acks().await);
        peer.send(pong(7)).await;
        (resume, resent, fresh, peer)
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    client.send(Command::Ping { client_time: 1 }).unwrap();
    client.send(Command::Attack { target: 9 }).unwrap();
    assert!(matches!(
        next_game(&mut client).await,
        GameEvent::SelfState(_)
    ));
    assert_eq!(next_game(&mut client).await, GameEvent::SnapshotEnd);
    assert_eq!(
        next_game(&mut client).await,
        GameEvent::InputAck(pb::InputAck { seq: 1 })
    );
    assert_eq!(client.unacked_inputs(), 1);

    assert!(matches!(
        next(&mut client).await,
        Event::Paused(PauseReason::Eof)
    ));
    assert!(!client.is_live());
    // Sent while paused: kept, and written after the re-sent one.
    assert_eq!(client.send(Command::Respawn), Ok(3));
    assert!(matches!(
        next(&mut client).await,
        Event::Resumed { resent: 2 }
    ));
    assert_eq!(
        next_game(&mut client).await,
        GameEvent::Pong(pb::Pong { client_time: 7 })
    );
    let (resume, resent, fresh, _peer) = server.await.unwrap();
    assert_eq!(resume.session_id, 77);
    assert_eq!(resume.token, vec![1; 16]);
    assert_eq!(resume.frames_received, 3);
    assert_eq!(resent.seq, 2);
    assert_eq!(
        resent.cmd,
        Some(pb::input::Cmd::Attack(pb::Attack { target: 9 }))
    );
    assert_eq!(fresh.seq, 3);
    assert_eq!(fresh.cmd, Some(pb::input::Cmd::Respawn(pb::Respawn {})));
    let s = client.stats();
    assert_eq!((s.disconnects, s.resumes, s.resyncs), (1, 1, 0));
}

#[tokio::test]
async fn snapshot_resume_is_a_resync() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let peer = login(&l, 1).await;
        drop(peer);
        let mut peer = Peer::accept(&l).await;
        assert!(matches!(
            peer.recv().await,
            Some(client_message::Msg::Resume(_))
        ));
        peer.send(Msg::Resumed(pb::Resumed {
            session_id: 77,
            resume_token: vec![2; 16],
            mode: pb::ResumeMode::Snapshot as i32,
            frames_base: 50,
            last_input_seq: 0,
        }))
        .await;
        peer.send(self_state()).await;
        peer.send(Msg::SnapshotEnd(pb::SnapshotEnd {})).await;
        peer
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    let mut paused = false;
    loop {
        match next(&mut client).await {
            Event::Paused(_) => paused = true,
            Event::Resynced { resent: 0 } => break,
            Event::Game(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(paused);
    assert!(matches!(
        next_game(&mut client).await,
        GameEvent::SelfState(_)
    ));
    assert_eq!(next_game(&mut client).await, GameEvent::SnapshotEnd);
    assert_eq!(client.session().frames_received(), 52);
    assert_eq!(client.stats().resyncs, 1);
    drop(server);
}

#[tokio::test]
async fn resume_refused_logs_in_again_by_itself() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        // One input arrives and is never acknowledged; then the socket dies.
        assert_eq!(input(peer.recv_skip_acks().await).seq, 1);
        drop(peer);
        let mut peer = Peer::accept(&l).await;
        assert!(matches!(
            peer.recv().await,
            Some(client_message::Msg::Resume(_))
        ));
        peer.close(CloseCode::ResumeRefused, 0).await;
        // The client comes back with a Hello: a new session, numbered anew.
        let mut peer = login(&l, 3).await;
        let first = input(peer.recv_skip_acks().await);
        (first, peer)
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    client.send(Command::Attack { target: 9 }).unwrap();
    let mut paused = false;
    let dropped = loop {
        match next(&mut client).await {
            Event::Paused(_) => paused = true,
            Event::LoggedInAgain { inputs_dropped } => break inputs_dropped,
            Event::Game(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(paused);
    assert_eq!(
        dropped, 1,
        "the unacknowledged attack is reported, not re-sent"
    );
    assert!(client.is_live());
    assert_eq!(client.welcome().resume_token, vec![3; 16]);
    assert_eq!(client.stats().relogins, 1);
    // A fresh snapshot follows, then the new session takes inputs from 1.
    assert!(matches!(
        next_game(&mut client).await,
        GameEvent::SelfState(_)
    ));
    assert_eq!(next_game(&mut client).await, GameEvent::SnapshotEnd);
    assert_eq!(client.send(Command::Respawn), Ok(1));
    let (first, _peer) = drive_until(&mut client, server).await;
    assert_eq!(first.seq, 1);
    assert_eq!(first.cmd, Some(pb::input::Cmd::Respawn(pb::Respawn {})));
}

#[tokio::test]
async fn resume_refused_ends_the_client_when_relogin_is_off() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let peer = login(&l, 1).await;
        drop(peer);
        let mut peer = Peer::accept(&l).await;
        let _ = peer.recv().await;
        peer.close(CloseCode::ResumeRefused, 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut cfg = config(addr);
    cfg.relogin = false;
    let mut client = Client::connect(cfg).await.unwrap();
    let err = loop {
        match timeout(STEP, client.next_event()).await.unwrap() {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("ended without an error"),
        }
    };
    assert_eq!(err.close_code(), Some(CloseCode::ResumeRefused));
    assert!(err.to_string().contains("RESUME_REFUSED"), "{err}");
    assert!(client.next_event().await.is_none());
    assert!(client.send(Command::Respawn).is_err());
}

#[tokio::test]
async fn terminal_close_at_login_is_an_error() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let mut peer = Peer::accept(&l).await;
        let _ = peer.recv().await;
        peer.close(CloseCode::AuthFailed, 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let err = Client::connect(config(addr)).await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Closed {
            code: CloseCode::AuthFailed,
            ..
        }
    ));
}

#[tokio::test]
async fn session_taken_over_while_live_is_an_error() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        peer.close(CloseCode::SessionTakenOver, 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    let err = loop {
        match timeout(STEP, client.next_event()).await.unwrap() {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("ended without an error"),
        }
    };
    assert_eq!(err.close_code(), Some(CloseCode::SessionTakenOver));
}

#[tokio::test]
async fn server_busy_is_retried_after_retry_after() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&l).await;
        let _ = peer.recv().await;
        peer.close(CloseCode::ServerBusy, 300).await;
        let refused_at = Instant::now();
        drop(peer);
        let peer = login(&l, 1).await;
        (refused_at.elapsed(), peer)
    });
    let client = Client::connect(config(addr)).await.unwrap();
    let (waited, _peer) = server.await.unwrap();
    assert!(waited >= Duration::from_millis(280), "{waited:?}");
    assert_eq!(client.stats().connect_failures, 1);
}

#[tokio::test]
async fn a_silent_server_is_noticed_and_the_session_resumed() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&l).await;
        let _ = peer.recv().await;
        // The server says it times out after 300 ms of silence, then goes
        // quiet (but keeps the socket open).
        peer.send(welcome(1, 300)).await;
        let mut second = Peer::accept(&l).await;
        let resume = second.recv().await;
        drop(peer);
        resume
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    let started = Instant::now();
    match next(&mut client).await {
        Event::Paused(PauseReason::Silent) => {}
        other => panic!("expected a silent pause, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(matches!(
        drive_until(&mut client, server).await,
        Some(client_message::Msg::Resume(_))
    ));
}

#[tokio::test]
async fn keepalive_acks_flow_while_idle() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        // heartbeat_interval_ms = 1000: an Ack arrives without any input.
        let acked = match peer.recv().await {
            Some(client_message::Msg::Ack(a)) => a.frames_received,
            other => panic!("expected an Ack, got {other:?}"),
        };
        (acked, peer)
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    let deadline = Instant::now() + Duration::from_millis(1_500);
    loop {
        match timeout(STEP, client.next_event_until(deadline))
            .await
            .unwrap()
        {
            Some(Ok(Event::Deadline)) => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(server.await.unwrap().0, 2);
}

#[tokio::test]
async fn logout_waits_for_the_server_close() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        let got = peer.recv_skip_acks().await;
        peer.close(CloseCode::Logout, 0).await;
        got
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    client.send(Command::Logout).unwrap();
    assert_eq!(
        client.send(Command::Respawn),
        Err(tether_client::SendError::Ended)
    );
    loop {
        match next(&mut client).await {
            Event::LoggedOut => break,
            Event::Game(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(client.next_event().await.is_none());
    assert!(matches!(
        server.await.unwrap(),
        Some(client_message::Msg::Logout(_))
    ));
}

#[tokio::test]
async fn drop_connection_pauses_and_resumes() {
    let (l, addr) = listener().await;
    let server = tokio::spawn(async move {
        let _first = login(&l, 1).await;
        let mut peer = Peer::accept(&l).await;
        let resume = match peer.recv().await {
            Some(client_message::Msg::Resume(r)) => r,
            other => panic!("expected Resume, got {other:?}"),
        };
        peer.send(Msg::Resumed(pb::Resumed {
            session_id: 77,
            resume_token: vec![2; 16],
            mode: pb::ResumeMode::Replay as i32,
            frames_base: resume.frames_received,
            last_input_seq: 0,
        }))
        .await;
        (resume, peer)
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    assert!(matches!(
        next_game(&mut client).await,
        GameEvent::SelfState(_)
    ));
    assert_eq!(next_game(&mut client).await, GameEvent::SnapshotEnd);
    client.drop_connection();
    assert!(matches!(
        next(&mut client).await,
        Event::Paused(PauseReason::Dropped)
    ));
    assert!(matches!(
        next(&mut client).await,
        Event::Resumed { resent: 0 }
    ));
    let (resume, _peer) = server.await.unwrap();
    assert_eq!(resume.frames_received, 2);
}

#[tokio::test]
async fn unreachable_server_gives_up_after_the_policy_attempts() {
    // Bind and close, so the port is very likely refused.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let err = timeout(STEP, Client::connect(config(addr)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ClientError::GaveUp { attempts: 4, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_names_fail_before_connecting() {
    let mut cfg = config("127.0.0.1:1".parse().unwrap());
    cfg.login = Login::Dev("no spaces allowed".into());
    assert!(matches!(
        Client::connect(cfg).await,
        Err(ClientError::InvalidLogin(_))
    ));
}

#[tokio::test]
async fn a_malformed_frame_is_a_protocol_error() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let mut peer = login(&l, 1).await;
        // Length 3, then bytes that are no protobuf.
        peer.stream
            .write_all(&[3, 0, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut client = Client::connect(config(addr)).await.unwrap();
    let err = loop {
        match timeout(STEP, client.next_event()).await.unwrap() {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("ended without an error"),
        }
    };
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
}

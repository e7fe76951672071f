//! Real sockets against a real server: the behaviours a player would notice.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{close_code, metric, place, server, stored, TestClient};
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg, CloseCode};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn two_clients_see_each_other_move() {
    let (srv, store) = server(|_| {});
    place(&store, "Ann", 60.0, 60.0);
    place(&store, "Bob", 65.0, 60.0);
    let mut ann = TestClient::login(srv.game_addr, "Ann");
    let mut bob = TestClient::login(srv.game_addr, "Bob");
    let bob_id = bob.entity;
    let appeared = ann.recv_until(WAIT, |m| matches!(m, Msg::Appear(a) if a.id == bob_id));
    assert!(appeared.is_some(), "Ann sees Bob arrive");
    // Bob's snapshot holds Ann.
    let ann_id = ann.entity;
    let seen = bob.recv_until(WAIT, |m| matches!(m, Msg::Appear(a) if a.id == ann_id));
    assert!(seen.is_some(), "Bob's snapshot shows Ann");

    std::thread::sleep(Duration::from_millis(300));
    bob.input(Cmd::Move(pb::Move { x: 66.0, y: 60.0 }));
    let moved = ann.recv_until(WAIT, |m| matches!(m, Msg::Move(mv) if mv.id == bob_id));
    match moved {
        Some(Msg::Move(mv)) => assert_eq!((mv.x, mv.y), (66.0, 60.0)),
        other => panic!("Ann did not see Bob move: {other:?}"),
    }
}

#[test]
fn moving_too_fast_is_corrected() {
    let (srv, store) = server(|_| {});
    place(&store, "Runner", 60.0, 60.0);
    let mut c = TestClient::login(srv.game_addr, "Runner");
    let seq = c.input(Cmd::Move(pb::Move { x: 90.0, y: 60.0 }));
    match c.recv_until(WAIT, |m| matches!(m, Msg::Correction(_))) {
        Some(Msg::Correction(k)) => {
            assert_eq!(k.seq, seq);
            assert_eq!((k.x, k.y), (60.0, 60.0), "sent back to where it was");
        }
        other => panic!("no correction: {other:?}"),
    }
}

#[test]
fn whisper_reaches_only_its_target() {
    let (srv, store) = server(|_| {});
    for (i, name) in ["Wa", "Wb", "Wc"].iter().enumerate() {
        place(&store, name, 60.0 + i as f32, 60.0);
    }
    let mut a = TestClient::login(srv.game_addr, "Wa");
    let mut b = TestClient::login(srv.game_addr, "Wb");
    let mut c = TestClient::login(srv.game_addr, "Wc");
    a.input(Cmd::Chat(pb::Chat {
        scope: pb::ChatScope::Whisper as i32,
        to: "Wb".into(),
        text: "psst".into(),
    }));
    match b.recv_until(WAIT, |m| matches!(m, Msg::Chat(_))) {
        Some(Msg::Chat(chat)) => {
            assert_eq!(chat.text, "psst");
            assert_eq!(chat.from_name, "Wa");
            assert_eq!(chat.scope, pb::ChatScope::Whisper as i32);
        }
        other => panic!("whisper did not arrive: {other:?}"),
    }
    let overheard = c
        .drain(Duration::from_millis(500))
        .into_iter()
        .any(|m| matches!(m, Msg::Chat(_)));
    assert!(!overheard, "a bystander must not receive the whisper");

    // A whisper to nobody is answered with NO_SUCH_PLAYER.
    let seq = a.input(Cmd::Chat(pb::Chat {
        scope: pb::ChatScope::Whisper as i32,
        to: "Nobody".into(),
        text: "hello?".into(),
    }));
    match a.recv_until(WAIT, |m| matches!(m, Msg::CommandError(_))) {
        Some(Msg::CommandError(e)) => {
            assert_eq!(e.seq, seq);
            assert_eq!(
                e.code,
                pb::CommandErrorCode::CommandErrorNoSuchPlayer as i32
            );
        }
        other => panic!("expected NO_SUCH_PLAYER, got {other:?}"),
    }
}

#[test]
fn local_and_world_chat_scopes() {
    let (srv, store) = server(|cfg| cfg.world_players = 400);
    place(&store, "Near1", 60.0, 60.0);
    place(&store, "Near2", 62.0, 60.0);
    // Far beyond any view radius.
    let far = 60.0 + 10.0 * 40.0;
    place(&store, "Far", far, far);
    let mut n1 = TestClient::login(srv.game_addr, "Near1");
    let mut n2 = TestClient::login(srv.game_addr, "Near2");
    let mut f = TestClient::login(srv.game_addr, "Far");
    n1.input(Cmd::Chat(pb::Chat {
        scope: pb::ChatScope::Local as i32,
        to: String::new(),
        text: "hi nearby".into(),
    }));
    assert!(n2
        .recv_until(WAIT, |m| matches!(m, Msg::Chat(c) if c.text == "hi nearby"))
        .is_some());
    assert!(!f
        .drain(Duration::from_millis(500))
        .iter()
        .any(|m| matches!(m, Msg::Chat(_))));
    n1.input(Cmd::Chat(pb::Chat {
        scope: pb::ChatScope::World as i32,
        to: String::new(),
        text: "hi everyone".into(),
    }));
    assert!(f
        .recv_until(
            WAIT,
            |m| matches!(m, Msg::Chat(c) if c.text == "hi everyone")
        )
        .is_some());
}

#[test]
fn ping_is_answered_through_the_world() {
    let (srv, _) = server(|_| {});
    let mut c = TestClient::login(srv.game_addr, "Pinger");
    c.input(Cmd::Ping(pb::Ping { client_time: 4242 }));
    let pong = c.recv_until(WAIT, |m| matches!(m, Msg::Pong(_)));
    assert!(matches!(pong, Some(Msg::Pong(p)) if p.client_time == 4242));
}

#[test]
fn write_coalescing_delivers_everything_in_fewer_writes() {
    let (srv, _) = server(|cfg| cfg.write_coalesce_ms = 80);
    let mut c = TestClient::login(srv.game_addr, "Batcher");
    std::thread::sleep(Duration::from_millis(200));
    let (frames0, writes0) = (
        metric(&srv, "tether_frames_out_total"),
        metric(&srv, "tether_writes_total"),
    );
    // Five pings 10 ms apart: each answered on its own by the world (each
    // pong its own write without coalescing); within the 80 ms their pongs
    // wait for each other.
    for t in 1..=5u64 {
        c.input(Cmd::Ping(pb::Ping { client_time: t }));
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in 1..=5u64 {
        let pong = c.recv_until(WAIT, |m| matches!(m, Msg::Pong(_)));
        assert!(
            matches!(pong, Some(Msg::Pong(p)) if p.client_time == t),
            "{pong:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let frames = metric(&srv, "tether_frames_out_total") - frames0;
    let writes = metric(&srv, "tether_writes_total") - writes0;
    assert!(frames >= 5, "{frames} frames");
    assert!(writes * 2 <= frames, "{frames} frames in {writes} writes");
}

#[test]
fn a_busy_polling_io_thread_serves_players() {
    let (srv, _) = server(|cfg| cfg.busy_poll_us = 2_000);
    let mut c = TestClient::login(srv.game_addr, "Spinner");
    for t in 1..=3u64 {
        c.input(Cmd::Ping(pb::Ping { client_time: t }));
        let pong = c.recv_until(WAIT, |m| matches!(m, Msg::Pong(_)));
        assert!(
            matches!(pong, Some(Msg::Pong(p)) if p.client_time == t),
            "{pong:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn io_uring_sends_reach_everyone() {
    let (srv, store) = server(|cfg| cfg.io_uring = true);
    place(&store, "Uma", 60.0, 60.0);
    place(&store, "Ray", 62.0, 60.0);
    let mut uma = TestClient::login(srv.game_addr, "Uma");
    let mut ray = TestClient::login(srv.game_addr, "Ray");
    let ray_id = ray.entity;
    assert!(uma
        .recv_until(WAIT, |m| matches!(m, Msg::Appear(a) if a.id == ray_id))
        .is_some());
    std::thread::sleep(Duration::from_millis(300));
    for t in 1..=20u64 {
        ray.input(Cmd::Ping(pb::Ping { client_time: t }));
    }
    ray.input(Cmd::Move(pb::Move { x: 63.0, y: 60.0 }));
    for t in 1..=20u64 {
        let pong = ray.recv_until(WAIT, |m| matches!(m, Msg::Pong(_)));
        assert!(
            matches!(pong, Some(Msg::Pong(p)) if p.client_time == t),
            "{pong:?}"
        );
    }
    let moved = uma.recv_until(WAIT, |m| matches!(m, Msg::Move(mv) if mv.id == ray_id));
    assert!(moved.is_some(), "Uma sees Ray move");
    assert!(metric(&srv, "tether_writes_total") > 0);
}

/// Finds a monster by logging a scout in, then puts the hunter right next to
/// it and fights until it dies; the loot must arrive as a durable
/// confirmation and be in the saved character.
#[test]
fn logout_says_which_inputs_were_applied() {
    let (srv, _) = server(|_| {});
    let mut c = TestClient::login(srv.game_addr, "Leaver");
    let mut last = 0;
    for t in 0..3 {
        last = c.input(Cmd::Ping(pb::Ping { client_time: t }));
    }
    c.send(client_message::Msg::Logout(pb::Logout {}));
    let mut acked = 0;
    let close = c.recv_until(WAIT, |m| {
        if let Msg::InputAck(a) = m {
            acked = a.seq;
        }
        matches!(m, Msg::Close(_))
    });
    assert_eq!(close_code(&close), Some(CloseCode::Logout));
    assert_eq!(
        acked, last,
        "an InputAck for the last input came before the Close"
    );
}

#[test]
fn a_kill_puts_loot_in_the_killers_inventory() {
    let (srv, store) = server(|cfg| cfg.world_players = 20);
    let mut scout = TestClient::login(srv.game_addr, "Scout");
    let world = scout.world.unwrap();
    let mut monster = None;
    for m in scout.drain(Duration::from_millis(300)) {
        if let Msg::Appear(a) = m {
            if a.kind == pb::EntityKind::Monster as i32 && !a.dead {
                monster = Some(a);
                break;
            }
        }
    }
    let mut monster = match monster {
        Some(m) => m,
        None => {
            // Walk the map's centre for a view with a monster in it.
            let (x, y) = (world.width / 2.0, world.height / 2.0);
            place(&store, "Scout2", x, y);
            let mut s2 = TestClient::login(srv.game_addr, "Scout2");
            s2.drain(Duration::from_millis(300))
                .into_iter()
                .find_map(|m| match m {
                    Msg::Appear(a) if a.kind == pb::EntityKind::Monster as i32 => Some(a),
                    _ => None,
                })
                .expect("a monster in view of the map centre")
        }
    };
    place(&store, "Hunter", monster.x, monster.y);
    let mut hunter = TestClient::login(srv.game_addr, "Hunter");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = false;
    let mut loot = None;
    let mut next_attack = Instant::now();
    while Instant::now() < deadline && loot.is_none() {
        if !killed && Instant::now() >= next_attack {
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
            Some(Msg::Loot(l)) => loot = Some(l),
            _ => {}
        }
    }
    assert!(killed, "the monster died within a minute");
    let loot = loot.expect("the kill's loot is confirmed");
    assert!(
        loot.gold > 0 || !loot.items.is_empty(),
        "loot carries something: {loot:?}"
    );
    hunter.send(client_message::Msg::Logout(pb::Logout {}));
    assert_eq!(
        close_code(&hunter.recv_until(WAIT, |m| matches!(m, Msg::Close(_)))),
        Some(CloseCode::Logout)
    );
    let saved = stored(&store, "Hunter", |r| r.gold == loot.total_gold);
    assert_eq!(saved.gold, loot.total_gold);
}

#[test]
fn garbage_is_disconnected_while_others_play_on() {
    let (srv, _) = server(|_| {});
    let mut player = TestClient::login(srv.game_addr, "Steady");
    for (i, garbage) in [
        vec![0xff, 0xff, 1, 2, 3],                      // oversized header
        vec![0x05, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x99], // not protobuf
        vec![0x00, 0x00],                               // empty frame
    ]
    .into_iter()
    .enumerate()
    {
        let mut g = TestClient::connect(srv.game_addr);
        g.send_raw(&garbage).unwrap();
        let code = close_code(&g.recv());
        assert!(
            matches!(
                code,
                Some(CloseCode::ProtocolError | CloseCode::FrameTooLarge)
            ),
            "garbage #{i} gets a close code, got {code:?}"
        );
        let mut rest = Vec::new();
        g.stream.set_read_timeout(Some(WAIT)).unwrap();
        assert_eq!(g.stream.read_to_end(&mut rest).unwrap_or(0), 0, "then EOF");

        player.input(Cmd::Ping(pb::Ping {
            client_time: i as u64,
        }));
        assert!(
            player
                .recv_until(
                    WAIT,
                    |m| matches!(m, Msg::Pong(p) if p.client_time == i as u64)
                )
                .is_some(),
            "the steady player still plays"
        );
    }
    // A logged-in client turning to garbage is cut; its session stays a zombie.
    let mut rogue = TestClient::login(srv.game_addr, "Rogue");
    rogue.send_raw(&[0x03, 0x00, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(
        close_code(&rogue.recv_until(WAIT, |m| matches!(m, Msg::Close(_)))),
        Some(CloseCode::ProtocolError)
    );
}

#[test]
fn handshake_deadline_closes_silent_connections() {
    let (srv, _) = server(|cfg| cfg.handshake_timeout_ms = 200);
    let mut silent = TestClient::connect(srv.game_addr);
    assert_eq!(
        close_code(&silent.recv()),
        Some(CloseCode::HandshakeTimeout)
    );
}

#[test]
fn tickets_are_checked() {
    let secret = "test-secret";
    let (srv, _) = server(|cfg| {
        cfg.auth = tether_server::config::AuthMode::Ticket;
        cfg.ticket_secret = Some(secret.into());
    });
    let hello = |auth| {
        client_message::Msg::Hello(pb::Hello {
            protocol_version: 1,
            auth: Some(auth),
            client: "test".into(),
        })
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = tether_server::auth::mint_ticket(secret.as_bytes(), "Tix", now + 60);
    let mut c = TestClient::connect(srv.game_addr);
    c.send(hello(pb::hello::Auth::Ticket(good)));
    assert!(matches!(c.recv(), Some(Msg::Welcome(_))));

    let expired = tether_server::auth::mint_ticket(secret.as_bytes(), "Tix2", now - 1);
    let mut c = TestClient::connect(srv.game_addr);
    c.send(hello(pb::hello::Auth::Ticket(expired)));
    assert_eq!(close_code(&c.recv()), Some(CloseCode::TicketExpired));

    let forged = tether_server::auth::mint_ticket(b"wrong", "Tix3", now + 60);
    let mut c = TestClient::connect(srv.game_addr);
    c.send(hello(pb::hello::Auth::Ticket(forged)));
    assert_eq!(close_code(&c.recv()), Some(CloseCode::AuthFailed));

    let mut c = TestClient::connect(srv.game_addr);
    c.send(hello(pb::hello::Auth::DevName("Dev".into())));
    assert_eq!(close_code(&c.recv()), Some(CloseCode::AuthFailed));
}

#[test]
fn admin_serves_health_and_metrics() {
    let (srv, _) = server(|_| {});
    let mut c = TestClient::login(srv.game_addr, "Counted");
    c.input(Cmd::Ping(pb::Ping { client_time: 1 }));
    assert!(c.recv_until(WAIT, |m| matches!(m, Msg::Pong(_))).is_some());
    let get = |path: &str| {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(srv.admin_addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    assert!(get("/healthz").contains("\"ok\""));
    let metrics = get("/metrics");
    for name in [
        "tether_connections",
        "tether_sessions{state=\"active\"} 1",
        "tether_frames_in_total",
        "tether_frames_out_total",
        "tether_bytes_in_total",
        "tether_bytes_out_total",
        "tether_world_tick_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

/// Two I/O threads and two shards: players land on different shards (each a
/// copy of the map) and still reach each other by whisper and world chat.
#[test]
fn chat_crosses_shards() {
    let (srv, _) = server(|cfg| {
        cfg.io_threads = 2;
        cfg.shards = 2;
    });
    let mut a = TestClient::login(srv.game_addr, "ShardA");
    let mut b = TestClient::login(srv.game_addr, "ShardB");
    assert_ne!(
        a.entity >> 56,
        b.entity >> 56,
        "the second player goes to the emptier shard"
    );
    a.input(Cmd::Chat(pb::Chat {
        scope: pb::ChatScope::Whisper as i32,
        to: "ShardB".into(),
        text: "across".into(),
    }));
    assert!(b
        .recv_until(WAIT, |m| matches!(m, Msg::Chat(c) if c.text == "across"))
        .is_some());
    b.input(Cmd::Chat(pb::Chat {
        scope: pb::ChatScope::World as i32,
        to: String::new(),
        text: "to all".into(),
    }));
    assert!(a
        .recv_until(WAIT, |m| matches!(m, Msg::Chat(c) if c.text == "to all"))
        .is_some());
    a.input(Cmd::Ping(pb::Ping { client_time: 5 }));
    assert!(a.recv_until(WAIT, |m| matches!(m, Msg::Pong(_))).is_some());
}

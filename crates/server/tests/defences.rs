//! The DDoS defences, each tripped by an attacker on its own loopback
//! address (127.0.0.2 and up) while a legit player on 127.0.0.1 (trusted by
//! default) keeps playing. Waits are bounded; nothing asserts on timing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{admin_request, metric, place, server, TestClient};
use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg, CloseCode};
use tether_server::config::FloodAction;
use tether_server::ServerHandle;

const WAIT: Duration = Duration::from_secs(5);

fn close_of(msg: &Option<Msg>) -> Option<(CloseCode, u32)> {
    match msg {
        Some(Msg::Close(c)) => Some((CloseCode::try_from(c.code).ok()?, c.retry_after_ms)),
        _ => None,
    }
}

/// The text of a Close ("" for anything else): every Close carries one.
fn close_text(msg: &Option<Msg>) -> &str {
    match msg {
        Some(Msg::Close(c)) => &c.message,
        _ => "",
    }
}

fn close_code(msg: &Option<Msg>) -> Option<CloseCode> {
    close_of(msg).map(|(c, _)| c)
}

/// The next Close on the connection (skipping game frames), if any.
fn next_close(c: &mut TestClient) -> Option<(CloseCode, u32)> {
    close_of(&c.recv_until(WAIT, |m| matches!(m, Msg::Close(_))))
}

/// The legit player's proof of life: a ping answered through the world.
fn plays(c: &mut TestClient, t: u64) -> bool {
    c.input(Cmd::Ping(pb::Ping { client_time: t }));
    c.recv_until(WAIT, |m| matches!(m, Msg::Pong(p) if p.client_time == t))
        .is_some()
}

/// Polls a metric until `pred` holds or 10 s pass; returns the last value.
fn wait_metric(srv: &ServerHandle, name: &str, pred: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(srv, name);
        if pred(v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One admin HTTP request; (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    admin_request(addr, method, path, None, body)
}

fn resume(addr: SocketAddr, old: &TestClient, source: &str) -> (TestClient, Option<Msg>) {
    let mut c = TestClient::connect_from(source, addr, None);
    c.send(client_message::Msg::Resume(pb::Resume {
        session_id: old.session_id,
        token: old.token.clone(),
        frames_received: old.frames,
        restart_token: Vec::new(),
    }));
    let reply = c.recv();
    (c, reply)
}

fn pings(n: u32, first_seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(&tether_proto::encode_frame(&pb::ClientMessage {
            msg: Some(client_message::Msg::Input(pb::Input {
                seq: first_seq + i,
                ack: 0,
                cmd: Some(Cmd::Ping(pb::Ping {
                    client_time: u64::from(first_seq + i),
                })),
            })),
        }));
    }
    out
}

#[test]
fn per_ip_connection_cap_refuses_at_accept() {
    let (srv, _) = server(|cfg| cfg.max_conns_per_ip = 2);
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let _a1 = TestClient::connect_from("127.0.0.2", srv.game_addr, None);
    let _a2 = TestClient::connect_from("127.0.0.2", srv.game_addr, None);
    let mut a3 = TestClient::connect_from("127.0.0.2", srv.game_addr, None);
    let refusal = a3.recv();
    let (code, retry) = close_of(&refusal).expect("a Close at accept");
    assert_eq!(code, CloseCode::RateLimited);
    assert!(retry > 0, "with a retry hint");
    assert_eq!(
        close_text(&refusal),
        "too many connections from this address; retry later"
    );
    // Another address is not affected, nor is the legit player.
    let mut other = TestClient::connect_from("127.0.0.3", srv.game_addr, None);
    assert!(matches!(other.hello("Other"), Some(Msg::Welcome(_))));
    assert!(plays(&mut legit, 1));
    assert_eq!(
        wait_metric(
            &srv,
            "tether_refused_connections_total{reason=\"per_ip_connections\"}",
            |v| v >= 1
        ),
        1
    );
}

#[test]
fn connect_rate_per_ip_refuses_at_accept() {
    let (srv, _) = server(|cfg| {
        cfg.connect_burst_per_ip = 2;
        cfg.connect_rate_per_ip = 0.01;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let _a1 = TestClient::connect_from("127.0.0.2", srv.game_addr, None);
    let _a2 = TestClient::connect_from("127.0.0.2", srv.game_addr, None);
    let mut a3 = TestClient::connect_from("127.0.0.2", srv.game_addr, None);
    let refusal = a3.recv();
    let (code, retry) = close_of(&refusal).expect("a Close at accept");
    assert_eq!(code, CloseCode::RateLimited);
    assert!(retry > 1000, "the hint says when a token is back: {retry}");
    assert_eq!(
        close_text(&refusal),
        "connecting too fast from this address; retry later"
    );
    // The trusted legit address is exempt: it reconnects at will.
    for i in 0..5 {
        let mut again = TestClient::connect(srv.game_addr);
        assert!(matches!(
            again.hello(&format!("Legit{i}")),
            Some(Msg::Welcome(_))
        ));
    }
    assert!(plays(&mut legit, 1));
    assert_eq!(
        wait_metric(
            &srv,
            "tether_refused_connections_total{reason=\"connect_rate\"}",
            |v| v >= 1
        ),
        1
    );
}

#[test]
fn connecting_again_before_the_retry_after_earns_a_ban() {
    let (srv, _) = server(|cfg| {
        cfg.connect_burst_per_ip = 1;
        cfg.connect_rate_per_ip = 0.01;
        cfg.strikes_to_ban = 3;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let _held = TestClient::connect_from("127.0.0.3", srv.game_addr, None);
    // Told to wait about 100 s; it comes straight back, again and again.
    let mut codes = Vec::new();
    for _ in 0..5 {
        let mut a = TestClient::connect_from("127.0.0.3", srv.game_addr, None);
        codes.push(close_code(&a.recv()));
    }
    assert_eq!(
        codes,
        [
            Some(CloseCode::RateLimited), // told to wait
            Some(CloseCode::RateLimited), // strike 1
            Some(CloseCode::RateLimited), // strike 2
            Some(CloseCode::RateLimited), // strike 3: banned
            Some(CloseCode::Banned),
        ]
    );
    assert_eq!(
        metric(&srv, "tether_strikes_total{reason=\"ignored_retry_after\"}"),
        3
    );
    assert_eq!(metric(&srv, "tether_bans_total"), 1);
    assert!(plays(&mut legit, 1));
}

#[test]
fn a_full_handshake_table_closes_its_oldest_entry() {
    let (srv, _) = server(|cfg| cfg.max_pending_handshakes = 3);
    let mut idle: Vec<TestClient> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|src| TestClient::connect_from(src, srv.game_addr, None))
        .collect();
    // The table is full of silent peers; a real player still gets in.
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    assert_eq!(
        close_code(&idle[0].recv()),
        Some(CloseCode::HandshakeTimeout),
        "the oldest silent connection made room"
    );
    assert!(plays(&mut legit, 1));
    // The others are still there, waiting for their own deadline.
    assert!(idle[1].recv_within(Duration::from_millis(200)).is_none());
    assert_eq!(
        metric(
            &srv,
            "tether_closed_by_server_total{reason=\"CLOSE_CODE_HANDSHAKE_TIMEOUT\"}"
        ),
        1
    );
}

#[test]
fn malformed_frames_earn_a_ban_that_an_operator_can_lift() {
    let (srv, _) = server(|cfg| {
        cfg.strikes_to_ban = 3;
        cfg.ban_ms = 600_000;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    for (i, garbage) in [
        vec![0xff, 0xff, 1, 2, 3],
        vec![0x05, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x99],
        vec![0x00, 0x00],
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = TestClient::connect_from("127.0.0.5", srv.game_addr, None);
        a.send_raw(&garbage).unwrap();
        let code = close_code(&a.recv());
        assert!(
            matches!(
                code,
                Some(CloseCode::ProtocolError | CloseCode::FrameTooLarge)
            ),
            "garbage #{i}: {code:?}"
        );
        assert!(plays(&mut legit, i as u64));
    }
    // The third strike banned the address: refused at accept.
    let mut banned = TestClient::connect_from("127.0.0.5", srv.game_addr, None);
    let refusal = banned.recv();
    let (code, retry) = close_of(&refusal).expect("a Close at accept");
    assert_eq!(code, CloseCode::Banned);
    assert_eq!(close_text(&refusal), "address banned");
    assert!(retry > 500_000, "retry_after_ms is the ban left: {retry}");
    assert_eq!(metric(&srv, "tether_bans_total"), 1);
    assert_eq!(metric(&srv, "tether_banned_ips"), 1);
    assert_eq!(
        metric(&srv, "tether_strikes_total{reason=\"malformed\"}"),
        3
    );
    assert!(plays(&mut legit, 10));
    // Admin: list, lift, list again; lifting twice is a 404.
    let (status, body) = http(srv.admin_addr, "GET", "/bans", "");
    assert_eq!(status, 200);
    assert!(body.contains("\"ip\":\"127.0.0.5\""), "{body}");
    assert_eq!(http(srv.admin_addr, "DELETE", "/bans/127.0.0.5", "").0, 204);
    assert_eq!(http(srv.admin_addr, "GET", "/bans", "").1.trim(), "[]");
    assert_eq!(http(srv.admin_addr, "DELETE", "/bans/127.0.0.5", "").0, 404);
    let mut back = TestClient::connect_from("127.0.0.5", srv.game_addr, None);
    assert!(matches!(back.hello("Reformed"), Some(Msg::Welcome(_))));
}

/// A bare TCP connect from `source`, bounded by `wait`: Err if it did not
/// complete (its SYNs dropped).
fn tcp_connect_from(source: &str, addr: SocketAddr, wait: Duration) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src: SocketAddr = format!("{source}:0").parse().expect("source address");
    socket.bind(&src.into())?;
    socket.connect_timeout(&addr.into(), wait)
}

#[test]
fn a_banned_address_that_keeps_connecting_is_dropped_by_the_kernel() {
    let (srv, _) = server(|cfg| {
        cfg.strikes_to_ban = 1;
        cfg.ban_ms = 600_000;
        cfg.ban_filter_after = 2;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let mut a = TestClient::connect_from("127.0.0.9", srv.game_addr, None);
    a.send_raw(&[0xff, 0xff, 1, 2, 3]).unwrap();
    assert!(close_code(&a.recv()).is_some());
    // Banned: the first connects are accepted and told why.
    for _ in 0..2 {
        let mut b = TestClient::connect_from("127.0.0.9", srv.game_addr, None);
        assert_eq!(close_code(&b.recv()), Some(CloseCode::Banned));
    }
    assert_eq!(
        wait_metric(&srv, "tether_kernel_filtered_ips", |v| v == 1),
        1
    );
    // From now on its SYNs are dropped: the handshake never completes.
    let banned_refusals = "tether_refused_connections_total{reason=\"banned\"}";
    let refused_before = wait_metric(&srv, banned_refusals, |v| v == 2);
    assert_eq!(refused_before, 2);
    let err = tcp_connect_from("127.0.0.9", srv.game_addr, Duration::from_millis(400))
        .expect_err("a filtered address cannot complete a handshake");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(
        metric(&srv, banned_refusals),
        refused_before,
        "nothing reached accept"
    );
    // Everyone else connects and plays.
    let mut other = TestClient::connect_from("127.0.0.10", srv.game_addr, None);
    assert!(matches!(other.hello("Neighbour"), Some(Msg::Welcome(_))));
    assert!(plays(&mut legit, 1));
    let (_, body) = http(srv.admin_addr, "GET", "/bans", "");
    assert!(body.contains("\"ip\":\"127.0.0.9\""), "{body}");
    assert!(body.contains("\"kernel\":true"), "{body}");
    // Lifted: the filter follows within the guard's sweep.
    assert_eq!(http(srv.admin_addr, "DELETE", "/bans/127.0.0.9", "").0, 204);
    assert_eq!(
        wait_metric(&srv, "tether_kernel_filtered_ips", |v| v == 0),
        0
    );
    tcp_connect_from("127.0.0.9", srv.game_addr, WAIT).expect("connects once lifted");
    let mut back = TestClient::connect_from("127.0.0.9", srv.game_addr, None);
    assert!(matches!(back.hello("Reformed"), Some(Msg::Welcome(_))));
    assert!(plays(&mut legit, 2));
}

#[test]
fn slow_handshakes_time_out_and_repeated_ones_are_banned() {
    let (srv, _) = server(|cfg| {
        cfg.handshake_timeout_ms = 200;
        cfg.strikes_to_ban = 2;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    for i in 0..2 {
        // Slowloris: one byte of a frame header, then nothing.
        let mut a = TestClient::connect_from("127.0.0.6", srv.game_addr, None);
        a.send_raw(&[0x05]).unwrap();
        assert_eq!(close_code(&a.recv()), Some(CloseCode::HandshakeTimeout));
        assert!(plays(&mut legit, i));
    }
    let mut a = TestClient::connect_from("127.0.0.6", srv.game_addr, None);
    assert_eq!(close_code(&a.recv()), Some(CloseCode::Banned));
    assert!(plays(&mut legit, 9));
}

#[test]
fn logins_are_rate_limited_per_address() {
    let (srv, _) = server(|cfg| {
        cfg.login_burst_per_ip = 2;
        cfg.login_rate_per_ip = 0.01;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    for name in ["Bot1", "Bot2"] {
        let mut a = TestClient::connect_from("127.0.0.7", srv.game_addr, None);
        assert!(matches!(a.hello(name), Some(Msg::Welcome(_))));
    }
    let mut a = TestClient::connect_from("127.0.0.7", srv.game_addr, None);
    let refusal = a.hello("Bot3");
    let (code, retry) = close_of(&refusal).expect("a Close");
    assert_eq!(code, CloseCode::RateLimited);
    assert!(retry > 1000, "{retry}");
    assert_eq!(
        close_text(&refusal),
        "no login left for this address; retry later"
    );
    // The trusted address is not limited per address.
    for name in ["Legit2", "Legit3", "Legit4"] {
        assert!(matches!(
            TestClient::connect(srv.game_addr).hello(name),
            Some(Msg::Welcome(_))
        ));
    }
    assert!(plays(&mut legit, 1));
    // Refused at accept: with no login left, the address's next
    // connection would only be refused at its Hello.
    assert_eq!(
        wait_metric(
            &srv,
            "tether_refused_connections_total{reason=\"login_rate\"}",
            |v| v >= 1
        ),
        1
    );
}

#[test]
fn the_global_login_rate_spares_resumes() {
    let (srv, _) = server(|cfg| {
        cfg.login_burst_global = 3;
        cfg.login_rate_global = 0.01;
    });
    let mut players: Vec<TestClient> = ["P1", "P2", "P3"]
        .iter()
        .map(|n| TestClient::login(srv.game_addr, n))
        .collect();
    // Global: it applies to trusted addresses too.
    let (code, _) = close_of(&TestClient::connect(srv.game_addr).hello("P4")).expect("Close");
    assert_eq!(code, CloseCode::RateLimited);
    // A dropped player still resumes (resumes have their own budget).
    let p1 = players.remove(0);
    p1.stream.shutdown(std::net::Shutdown::Both).unwrap();
    let (_, reply) = resume(srv.game_addr, &p1, "127.0.0.1");
    assert!(matches!(reply, Some(Msg::Resumed(_))), "{reply:?}");
    assert!(plays(&mut players[0], 1));
}

#[test]
fn an_input_flood_is_dropped_then_cut_to_zombie() {
    let (srv, _) = server(|cfg| {
        cfg.input_rate = 5.0;
        cfg.input_burst = 20;
        cfg.input_flood_tolerance = 30;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let mut flooder = TestClient::connect_from("127.0.0.8", srv.game_addr, None);
    assert!(matches!(flooder.hello("Flooder"), Some(Msg::Welcome(_))));
    let _ = flooder.send_raw(&pings(500, 1));
    let mut pongs = 0;
    let close = loop {
        match flooder.recv() {
            Some(Msg::Pong(_)) => pongs += 1,
            Some(Msg::Close(c)) => break CloseCode::try_from(c.code).ok(),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(close, Some(CloseCode::RateLimited));
    assert!(pongs <= 25, "only the allowance was applied: {pongs} pongs");
    assert!(
        wait_metric(&srv, "tether_inputs_dropped_total{reason=\"rate\"}", |v| v
            > 0)
            > 0
    );
    assert_eq!(
        metric(&srv, "tether_strikes_total{reason=\"input_flood\"}"),
        1
    );
    assert!(plays(&mut legit, 1));
    // Cut to zombie, not logged out: the session resumes.
    let (_, reply) = resume(srv.game_addr, &flooder, "127.0.0.8");
    assert!(matches!(reply, Some(Msg::Resumed(_))), "{reply:?}");
}

#[test]
fn an_input_flood_in_drop_mode_keeps_the_connection_and_its_numbering() {
    let (srv, _) = server(|cfg| {
        cfg.input_rate = 5.0;
        cfg.input_burst = 20;
        cfg.input_flood_tolerance = 30;
        cfg.input_flood_action = FloodAction::Drop;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let mut flooder = TestClient::connect_from("127.0.0.9", srv.game_addr, None);
    assert!(matches!(flooder.hello("Flooder"), Some(Msg::Welcome(_))));
    flooder.send_raw(&pings(200, 1)).unwrap();
    flooder.next_seq = 201;
    let mut pongs = 0;
    let acked = flooder.recv_until(WAIT, |m| {
        if matches!(m, Msg::Pong(_)) {
            pongs += 1;
        }
        assert!(!matches!(m, Msg::Close(_)), "not cut: {m:?}");
        matches!(m, Msg::InputAck(a) if a.seq >= 200)
    });
    assert!(acked.is_some(), "every number was used up, in order");
    assert!(pongs < 200, "the excess was dropped: {pongs} pongs");
    assert!(plays(&mut legit, 1));
    // Once its allowance refills, the same connection plays again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = u64::from(flooder.next_seq);
        flooder.input(Cmd::Ping(pb::Ping { client_time: t }));
        let pong = flooder.recv_until(
            Duration::from_millis(500),
            |m| matches!(m, Msg::Pong(p) if p.client_time == t),
        );
        if pong.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the allowance never refilled");
    }
}

#[test]
fn an_input_flood_in_kick_mode_ends_the_session() {
    let (srv, _) = server(|cfg| {
        cfg.input_rate = 5.0;
        cfg.input_burst = 20;
        cfg.input_flood_tolerance = 30;
        cfg.input_flood_action = FloodAction::Kick;
    });
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let mut flooder = TestClient::connect_from("127.0.0.10", srv.game_addr, None);
    assert!(matches!(flooder.hello("Flooder"), Some(Msg::Welcome(_))));
    let _ = flooder.send_raw(&pings(500, 1));
    assert_eq!(
        next_close(&mut flooder).map(|c| c.0),
        Some(CloseCode::RateLimited)
    );
    assert!(plays(&mut legit, 1));
    wait_metric(&srv, "tether_logouts_total", |v| v >= 1);
    let (_, reply) = resume(srv.game_addr, &flooder, "127.0.0.10");
    assert_eq!(close_code(&reply), Some(CloseCode::ResumeRefused));
}

#[test]
fn protect_mode_refuses_logins_admits_resumes_and_freezes_zombies() {
    let (srv, _) = server(|cfg| {
        cfg.zombie_grace_ms = 300;
        cfg.protect_retry_after_ms = 4_000;
    });
    let mut anchor = TestClient::login(srv.game_addr, "Anchor");
    let victim = TestClient::login(srv.game_addr, "Victim");

    let (status, body) = http(srv.admin_addr, "PUT", "/protect", "on");
    assert_eq!(status, 200, "{body}");
    assert_eq!(wait_metric(&srv, "tether_protect_mode", |v| v == 1), 1);
    assert!(http(srv.admin_addr, "GET", "/protect", "")
        .1
        .contains("\"override\":\"on\""));

    // New logins get a retry-after code.
    let mut late = TestClient::connect(srv.game_addr);
    assert_eq!(
        close_of(&late.hello("Late")),
        Some((CloseCode::ServerBusy, 4_000))
    );
    // A player cut off during the attack outlives the zombie grace (300 ms)
    // many times over, and resumes.
    victim.stream.shutdown(std::net::Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let (victim, reply) = resume(srv.game_addr, &victim, "127.0.0.1");
    let Some(Msg::Resumed(r)) = reply else {
        panic!("expected Resumed, got {reply:?}");
    };
    assert!(plays(&mut anchor, 1));
    assert_eq!(metric(&srv, "tether_zombie_expiries_total"), 0);

    // Back to automatic: calm ticks, protect mode ends by itself, the
    // grace runs again and new logins are welcome.
    let mut victim = victim;
    victim.session_id = r.session_id;
    victim.token = r.resume_token;
    victim.stream.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(
        http(srv.admin_addr, "PUT", "/protect", "auto").0,
        200,
        "override lifted"
    );
    assert_eq!(wait_metric(&srv, "tether_protect_mode", |v| v == 0), 0);
    assert_eq!(
        wait_metric(&srv, "tether_zombie_expiries_total", |v| v >= 1),
        1
    );
    assert!(matches!(
        TestClient::connect(srv.game_addr).hello("Late"),
        Some(Msg::Welcome(_))
    ));
    assert_eq!(
        metric(&srv, "tether_protect_transitions_total{to=\"on\"}"),
        1
    );
    assert_eq!(
        metric(&srv, "tether_protect_transitions_total{to=\"off\"}"),
        1
    );
}

#[test]
fn a_slow_reader_is_cut_to_zombie_and_resumes() {
    let (srv, store) = server(|cfg| {
        cfg.write_queue_cap_bytes = 64 * 1024;
        // The resume's replay must fit under the cap itself.
        cfg.replay_cap_frames = 64;
        cfg.input_burst = 5_000;
        cfg.input_flood_tolerance = 5_000;
    });
    place(&store, "Legit", 150.0, 150.0);
    place(&store, "Sloth", 10.0, 10.0);
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    let mut sloth = TestClient::connect_from("127.0.0.11", srv.game_addr, Some(4096));
    assert!(matches!(sloth.hello("Sloth"), Some(Msg::Welcome(_))));
    // Local chat echoes to the speaker: 3000 lines of 250 bytes come back
    // to a client that reads none of them.
    let mut burst = Vec::new();
    for seq in 1..=3000u32 {
        burst.extend_from_slice(&tether_proto::encode_frame(&pb::ClientMessage {
            msg: Some(client_message::Msg::Input(pb::Input {
                seq,
                ack: 0,
                cmd: Some(Cmd::Chat(pb::Chat {
                    scope: pb::ChatScope::Local as i32,
                    to: String::new(),
                    text: "z".repeat(250),
                })),
            })),
        }));
    }
    let _ = sloth.send_raw(&burst);
    assert!(
        wait_metric(
            &srv,
            "tether_closed_by_server_total{reason=\"slow_consumer\"}",
            |v| v >= 1
        ) >= 1,
        "the slow reader was cut"
    );
    assert!(plays(&mut legit, 1));
    // What reached the socket: whole frames, then a Close SLOW_CONSUMER if
    // there was room for it, then EOF.
    let mut last = None;
    while let Some(m) = sloth.recv() {
        last = Some(m);
    }
    if let Some(Msg::Close(c)) = &last {
        assert_eq!(c.code, CloseCode::SlowConsumer as i32);
    }
    let (_, reply) = resume(srv.game_addr, &sloth, "127.0.0.11");
    assert!(matches!(reply, Some(Msg::Resumed(_))), "{reply:?}");
}

#[test]
fn login_and_leave_zombies_get_the_short_grace() {
    let (srv, _) = server(|cfg| cfg.unplayed_zombie_grace_ms = 200);
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    // A login flood's leftovers: Hello, Welcome, gone.
    let mut flood = TestClient::connect_from("127.0.0.12", srv.game_addr, None);
    assert!(matches!(flood.hello("Drive_by"), Some(Msg::Welcome(_))));
    // A real player who played, then lost the connection.
    let mut player = TestClient::login(srv.game_addr, "Player");
    assert!(plays(&mut player, 1));
    flood.stream.shutdown(std::net::Shutdown::Both).unwrap();
    player.stream.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(
        wait_metric(&srv, "tether_zombie_expiries_total", |v| v >= 1),
        1
    );
    let (_, reply) = resume(srv.game_addr, &flood, "127.0.0.12");
    assert_eq!(close_code(&reply), Some(CloseCode::ResumeRefused));
    let (_, reply) = resume(srv.game_addr, &player, "127.0.0.1");
    assert!(matches!(reply, Some(Msg::Resumed(_))), "{reply:?}");
    assert!(plays(&mut legit, 2));
}

#[test]
fn protect_mode_follows_the_memory_budget() {
    // A budget the server is over from the start: protect mode comes on
    // by itself, without an operator.
    let (srv, _) = server(|cfg| cfg.protect_memory_bytes = 1);
    assert_eq!(wait_metric(&srv, "tether_protect_mode", |v| v == 1), 1);
    let mut c = TestClient::connect(srv.game_addr);
    assert_eq!(
        close_of(&c.hello("Anyone")).map(|c| c.0),
        Some(CloseCode::ServerBusy)
    );
    assert_eq!(
        metric(&srv, "tether_logins_refused_total{reason=\"protect\"}"),
        1
    );
    // The operator can override it.
    assert_eq!(http(srv.admin_addr, "PUT", "/protect", "off").0, 200);
    assert_eq!(wait_metric(&srv, "tether_protect_mode", |v| v == 0), 0);
    let mut legit = TestClient::login(srv.game_addr, "Legit");
    assert!(plays(&mut legit, 1));
    assert_eq!(http(srv.admin_addr, "PUT", "/protect", "sideways").0, 400);
}

//! The admin API against a running server: status, player search,
//! session inspection, kick (tokens revoked), the audit log, and the roles.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{admin_request, close_code, server, TestClient};
use tether_proto::pb::{self, client_message, server_message::Msg, CloseCode};

const WAIT: Duration = Duration::from_secs(5);
const VIEWER: &str = "viewer-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";

/// One admin HTTP request; (status, body as JSON, `Null` if it is not).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, body) = admin_request(addr, method, path, token, body);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn status_search_inspect_kick_and_audit() {
    let (srv, _store) = server(|_| {});
    let admin = srv.admin_addr;
    let mut alice = TestClient::login(srv.game_addr, "alice");
    let _alfred = TestClient::login(srv.game_addr, "alfred");
    let _bob = TestClient::login(srv.game_addr, "bob");

    let (code, status) = http(admin, "GET", "/v1/status", None, "");
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["players"], 3, "{status}");
    assert_eq!(status["storage"], "ok");
    assert!(!status["shards"].as_array().unwrap().is_empty());

    let (code, rows) = http(admin, "GET", "/v1/players?q=al&limit=10", None, "");
    assert_eq!(code, 200);
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["account"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alfred", "alice"]);
    let (_, rows) = http(admin, "GET", "/v1/players?limit=1", None, "");
    assert_eq!(rows.as_array().unwrap().len(), 1, "the limit holds");

    let (code, row) = http(admin, "GET", "/v1/players/alice", None, "");
    assert_eq!(code, 200);
    assert_eq!(row["link"], "active");
    assert_eq!(row["session_id"], alice.session_id);
    // Its connection, from the I/O thread: the player's own address, and
    // the kernel's round-trip time.
    let conn = &row["connection"];
    assert_eq!(
        conn["peer"],
        alice.stream.local_addr().unwrap().to_string(),
        "{row}"
    );
    assert!(conn["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{row}");
    assert!(status["rtt_p99_ms"].as_f64().is_some(), "{status}");
    assert_eq!(http(admin, "GET", "/v1/players/nobody", None, "").0, 404);

    // Kick: the connection closes with KICKED and the session is over.
    let (code, kicked) = http(
        admin,
        "POST",
        "/v1/players/alice/kick",
        None,
        r#"{"note":"spamming"}"#,
    );
    assert_eq!(code, 200, "{kicked}");
    let close = alice.recv_until(WAIT, |m| matches!(m, Msg::Close(_)));
    assert_eq!(close_code(&close), Some(CloseCode::Kicked));
    assert_eq!(http(admin, "GET", "/v1/players/alice", None, "").0, 404);
    let mut again = TestClient::connect(srv.game_addr);
    again.send(client_message::Msg::Resume(pb::Resume {
        session_id: alice.session_id,
        token: alice.token.clone(),
        frames_received: alice.frames,
        restart_token: Vec::new(),
    }));
    assert_eq!(
        close_code(&again.recv()),
        Some(CloseCode::ResumeRefused),
        "a kicked session's token is dead"
    );
    // A kick of nobody is a 404, and audited too.
    assert_eq!(
        http(admin, "POST", "/v1/players/alice/kick", None, "").0,
        404
    );
    assert_eq!(
        http(admin, "POST", "/v1/players/bob/kick", None, "not json").0,
        400
    );

    let (code, log) = http(admin, "GET", "/v1/audit?limit=2", None, "");
    assert_eq!(code, 200);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["action"], "kick");
    assert_eq!(log[0]["target"], "alice");
    assert_eq!(log[0]["note"], "spamming");
    assert_eq!(log[0]["ok"], true);
    assert_eq!(log[0]["role"], "operator");
    assert_eq!(log[1]["ok"], false);
    // Logging in again is allowed.
    let _back = TestClient::login(srv.game_addr, "alice");
}

#[test]
fn tokens_give_roles() {
    let (srv, _store) = server(|cfg| {
        cfg.admin_viewer_token = Some(VIEWER.into());
        cfg.admin_operator_token = Some(OPERATOR.into());
    });
    let admin = srv.admin_addr;
    let _carol = TestClient::login(srv.game_addr, "carol");

    assert_eq!(http(admin, "GET", "/healthz", None, "").0, 200);
    assert_eq!(http(admin, "GET", "/v1/status", None, "").0, 401);
    assert_eq!(
        http(admin, "GET", "/metrics", Some("wrong-token"), "").0,
        401
    );
    assert_eq!(http(admin, "GET", "/v1/status", Some(VIEWER), "").0, 200);
    assert_eq!(
        http(admin, "GET", "/v1/players/carol", Some(VIEWER), "").0,
        200
    );
    assert_eq!(
        http(admin, "GET", "/v1/whoami", Some(VIEWER), "").1["role"],
        "viewer"
    );
    assert_eq!(
        http(admin, "GET", "/v1/whoami", Some(OPERATOR), "").1["role"],
        "operator"
    );
    // The console's page needs no token (it holds no data); MCP does.
    let (code, page) = admin_request(admin, "GET", "/console/", None, "");
    assert_eq!(code, 200);
    assert!(page.contains("console.js"), "{page}");
    assert_eq!(admin_request(admin, "POST", "/mcp", None, "{}").0, 401);
    // MCP requests are bounded (64 KiB): past it, 413 before any parsing.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {VIEWER}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{huge}",
        huge.len()
    );
    assert_eq!(common::http_exchange(admin, &request).0, 413);
    let (code, body) = http(admin, "POST", "/v1/players/carol/kick", Some(VIEWER), "");
    assert_eq!(code, 403, "{body}");
    assert_eq!(http(admin, "PUT", "/v1/protect", Some(VIEWER), "on").0, 403);
    assert_eq!(
        http(admin, "GET", "/v1/players/carol", Some(VIEWER), "").0,
        200,
        "a refused write changes nothing"
    );
    assert_eq!(
        http(admin, "POST", "/v1/players/carol/kick", Some(OPERATOR), "").0,
        200
    );
    let (_, log) = http(admin, "GET", "/v1/audit", Some(VIEWER), "");
    let last = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "operator");
    assert_eq!(last["target"], "carol");

    // The settings, without their secrets.
    let (code, settings) = http(admin, "GET", "/v1/settings", Some(VIEWER), "");
    assert_eq!(code, 200);
    assert_eq!(settings["admin_operator_token"], "***");
    assert_eq!(settings["admin_viewer_token"], "***");
    assert_eq!(settings["listen"], "127.0.0.1:0");
    let text = settings.to_string();
    assert!(!text.contains(OPERATOR) && !text.contains(VIEWER), "{text}");
}

#[test]
fn drain_refuses_fresh_logins_and_keeps_players() {
    let (srv, _store) = server(|_| {});
    let admin = srv.admin_addr;
    let mut dave = TestClient::login(srv.game_addr, "dave");
    assert_eq!(
        http(admin, "GET", "/v1/drain", None, "").1["draining"],
        false
    );
    assert_eq!(http(admin, "PUT", "/v1/drain", None, "sideways").0, 400);
    assert_eq!(
        http(admin, "PUT", "/v1/drain", None, "on").1["draining"],
        true
    );
    assert_eq!(
        http(admin, "GET", "/v1/status", None, "").1["draining"],
        true
    );

    let mut late = TestClient::connect(srv.game_addr);
    let reply = late.hello("erin");
    assert_eq!(close_code(&reply), Some(CloseCode::ServerBusy));
    match reply {
        Some(Msg::Close(c)) => {
            assert!(c.message.contains("draining"), "{}", c.message);
            assert!(c.retry_after_ms > 0);
        }
        other => panic!("expected Close, got {other:?}"),
    }
    // The player in the world plays on, and can come back after a drop.
    dave.send(client_message::Msg::Input(pb::Input {
        seq: dave.next_seq,
        ack: 0,
        cmd: Some(pb::input::Cmd::Ping(pb::Ping { client_time: 7 })),
    }));
    assert!(dave
        .recv_until(WAIT, |m| matches!(m, Msg::Pong(p) if p.client_time == 7))
        .is_some());
    assert_eq!(http(admin, "GET", "/v1/players/dave", None, "").0, 200);

    assert_eq!(http(admin, "PUT", "/v1/drain", None, "off").0, 200);
    let _erin = TestClient::login(srv.game_addr, "erin");
    let (_, log) = http(admin, "GET", "/v1/audit", None, "");
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["on", "off"], "the refused body is not a write");
}

#[test]
fn a_ban_by_hand_has_a_note_and_an_end() {
    let (srv, _store) = server(|_| {});
    let admin = srv.admin_addr;
    let body = r#"{"ip":"127.0.0.44","minutes":5,"note":"gold seller"}"#;
    let (code, ban) = http(admin, "POST", "/v1/bans", None, body);
    assert_eq!(code, 200, "{ban}");
    let (_, bans) = http(admin, "GET", "/v1/bans", None, "");
    let row = &bans.as_array().unwrap()[0];
    assert_eq!(row["ip"], "127.0.0.44");
    assert_eq!(row["note"], "gold seller");
    let left = row["remaining_ms"].as_u64().unwrap();
    assert!(left > 290_000 && left <= 300_000, "{left}");
    // The address is refused at accept.
    let mut c = TestClient::connect_from("127.0.0.44", srv.game_addr, None);
    assert_eq!(close_code(&c.recv()), Some(CloseCode::Banned));

    for bad in [
        r#"{"ip":"nowhere","minutes":5}"#,
        r#"{"ip":"127.0.0.45","minutes":0}"#,
        r#"{"ip":"127.0.0.45"}"#,
        "not json",
    ] {
        assert_eq!(http(admin, "POST", "/v1/bans", None, bad).0, 400, "{bad}");
    }
    assert_eq!(
        http(admin, "DELETE", "/v1/bans/127.0.0.44", None, "").0,
        204
    );
    let mut c = TestClient::connect_from("127.0.0.44", srv.game_addr, None);
    assert!(matches!(c.hello("frank"), Some(Msg::Welcome(_))));
    let (_, log) = http(admin, "GET", "/v1/audit", None, "");
    let log = log.as_array().unwrap();
    assert_eq!(log[0]["action"], "ban");
    assert_eq!(log[0]["note"], "gold seller");
    assert_eq!(log[1]["action"], "unban");
}

#[test]
fn a_notice_reaches_every_player_as_a_counted_frame() {
    let (srv, _store) = server(|_| {});
    let admin = srv.admin_addr;
    let mut gina = TestClient::login(srv.game_addr, "gina");
    let mut hank = TestClient::login(srv.game_addr, "hank");
    let (code, body) = http(
        admin,
        "POST",
        "/v1/notice",
        None,
        r#"{"text":"Maintenance in 10 minutes"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["sessions"], 2);
    for c in [&mut gina, &mut hank] {
        let got = c.recv_until(WAIT, |m| matches!(m, Msg::Notice(_)));
        match got {
            Some(Msg::Notice(n)) => assert_eq!(n.text, "Maintenance in 10 minutes"),
            other => panic!("expected the notice, got {other:?}"),
        }
    }
    let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(501));
    for bad in [r#"{"text":""}"#, "nope", long.as_str()] {
        assert_eq!(http(admin, "POST", "/v1/notice", None, bad).0, 400);
    }
    let (_, log) = http(admin, "GET", "/v1/audit", None, "");
    let last = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "notice");
    assert_eq!(last["note"], "Maintenance in 10 minutes");
}

#[test]
fn history_keeps_samples_of_the_server() {
    let (srv, _store) = server(|cfg| cfg.admin_history_interval_ms = 100);
    let _jill = TestClient::login(srv.game_addr, "jill");
    std::thread::sleep(Duration::from_millis(600));
    let (code, samples) = http(srv.admin_addr, "GET", "/v1/history?minutes=1", None, "");
    assert_eq!(code, 200);
    let samples = samples.as_array().unwrap();
    assert!(samples.len() >= 3, "{samples:?}");
    let last = samples.last().unwrap();
    assert_eq!(last["players"], 1);
    assert_eq!(last["storage_ok"], true);
    assert!(last["rss_mb"].as_f64().unwrap() > 1.0);
    let at: Vec<u64> = samples
        .iter()
        .map(|s| s["at_ms"].as_u64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "oldest first");
}

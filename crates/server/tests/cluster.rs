//! Cluster mode against the real NATS and PostgreSQL: three servers in this
//! process, one game. Skipped (with a message) unless `TETHER_TEST_NATS`
//! and `TETHER_TEST_POSTGRES` hold URLs; CI sets both.
//!
//! Each test runs its own cluster (a unique cluster name: its own NATS
//! buckets and subjects) and its own account names, so tests and runs never
//! meet in the shared services.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin_request;
use tether_client::{
    ChatScope, Client, ClientConfig, ClientError, Command, Event, GameEvent, Login,
};
use tether_proto::pb;
use tether_server::config::Config;
use tether_server::ServerHandle;

const PATIENCE: Duration = Duration::from_secs(20);

/// The services, or `None` (the test is skipped).
fn services() -> Option<(String, String)> {
    match (
        std::env::var("TETHER_TEST_NATS"),
        std::env::var("TETHER_TEST_POSTGRES"),
    ) {
        (Ok(nats), Ok(pg)) if !nats.is_empty() && !pg.is_empty() => Some((nats, pg)),
        _ => {
            eprintln!(
                "skipped: set TETHER_TEST_NATS and TETHER_TEST_POSTGRES to run the cluster tests"
            );
            None
        }
    }
}

/// A random tag for this test's cluster and account names.
fn tag() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!("{:08x}", u32::from_le_bytes(b))
}

struct Cluster {
    nodes: Vec<ServerHandle>,
    /// Account names are unique per test run: `<prefix><name>`.
    prefix: String,
}

impl Cluster {
    /// Starts `n` servers, off the test's runtime (the PostgreSQL client
    /// and the cluster thread run runtimes of their own).
    fn start(n: usize, nats: &str, pg: &str) -> Cluster {
        Cluster::start_with_lease(n, nats, pg, 3_000)
    }

    fn start_with_lease(n: usize, nats: &str, pg: &str, lease_ms: u64) -> Cluster {
        let (nats, pg) = (nats.to_string(), pg.to_string());
        std::thread::spawn(move || Cluster::start_here(n, &nats, &pg, lease_ms))
            .join()
            .expect("the cluster starts")
    }

    fn start_here(n: usize, nats: &str, pg: &str, lease_ms: u64) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let t = tag();
        let nodes: Vec<ServerHandle> = (0..n)
            .map(|i| {
                let dir = std::env::temp_dir().join(format!("tether-cluster-{t}-{i}"));
                let _ = std::fs::remove_dir_all(&dir);
                let cfg = Config {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    admin_listen: "127.0.0.1:0".parse().unwrap(),
                    data_dir: dir,
                    world_players: 50,
                    protect_tick_lag_ms: 60_000,
                    store: Some(pg.to_string()),
                    cluster: Some(nats.to_string()),
                    cluster_name: format!("test-{t}"),
                    node: Some(format!("n{i}")),
                    cluster_lease_ms: lease_ms,
                    ..Config::default()
                };
                let backend = tether_server::open_store(&cfg, "mmo").expect("PostgreSQL opens");
                tether_server::start_with_backend(cfg, backend).expect("server joins the cluster")
            })
            .collect();
        let c = Cluster {
            nodes,
            prefix: format!("c{t}_"),
        };
        // Every server sees every other before the test starts.
        let end = Instant::now() + PATIENCE;
        for node in &c.nodes {
            loop {
                let (status, body) = admin_request(node.admin_addr, "GET", "/cluster", None, "");
                assert_eq!(status, 200, "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let alive = v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["alive"] == true)
                    .count();
                if alive == n {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "servers did not see each other: {body}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c
    }

    fn name(&self, who: &str) -> String {
        format!("{}{who}", self.prefix)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].game_addr
    }

    /// Which servers hold a session of `account`.
    fn holders(&self, account: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let path = format!("/v1/players/{account}");
                admin_request(self.nodes[i].admin_addr, "GET", &path, None, "").0 == 200
            })
            .collect()
    }

    fn session(&self, i: usize, account: &str) -> serde_json::Value {
        let (status, body) = admin_request(
            self.nodes[i].admin_addr,
            "GET",
            &format!("/v1/players/{account}"),
            None,
            "",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

fn config(addr: SocketAddr, name: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(addr, Login::Dev(name.to_string()));
    cfg.seed = Some(7);
    cfg
}

/// Events until `pick` accepts one, or the deadline.
async fn wait_for<T>(c: &mut Client, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + PATIENCE;
    loop {
        match c.next_event_until(end).await {
            Some(Ok(Event::Deadline)) | None => panic!("no matching event within {PATIENCE:?}"),
            Some(Ok(e)) => {
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
            Some(Err(e)) => panic!("client ended: {e}"),
        }
    }
}

/// The client's end: the error it ended with, within a short wait, or
/// `None` if it is still playing.
async fn ended(c: &mut Client, within: Duration) -> Option<ClientError> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match c.next_event_until(end).await {
            Some(Ok(Event::Deadline)) => return None,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(e),
            None => {
                return Some(ClientError::Closed {
                    code: pb::CloseCode::Unspecified,
                    message: "ended".into(),
                })
            }
        }
    }
}

fn taken_over(e: &Option<ClientError>) -> bool {
    matches!(e, Some(ClientError::Closed { code, .. }) if *code == pb::CloseCode::SessionTakenOver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_at_another_server_is_redirected_to_the_session_and_takes_it_over() {
    let Some((nats, pg)) = services() else { return };
    let c = Cluster::start(2, &nats, &pg);
    let alice = c.name("alice");

    let (_, metrics) = admin_request(c.nodes[0].admin_addr, "GET", "/metrics", None, "");
    assert!(metrics.contains("tether_cluster_nodes 2\n"), "{metrics}");
    assert!(
        metrics.contains("tether_cluster_nats_connected 1\n"),
        "{metrics}"
    );

    let mut first = Client::connect(config(c.addr(0), &alice)).await.unwrap();
    assert_eq!(first.stats().redirects, 0);
    assert_eq!(c.holders(&alice), vec![0]);

    // The same account at the other server: sent to the first, where the
    // session is taken over (one session per account, cluster-wide).
    let second = Client::connect(config(c.addr(1), &alice)).await.unwrap();
    assert!(second.stats().redirects >= 1, "{:?}", second.stats());
    assert!(second.welcome().took_over);
    assert!(taken_over(&ended(&mut first, PATIENCE).await));
    assert_eq!(c.holders(&alice), vec![0]);
    let (_, metrics) = admin_request(c.nodes[1].admin_addr, "GET", "/metrics", None, "");
    assert!(
        metrics.contains("tether_cluster_accounts_total{outcome=\"redirected\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_of_one_account_on_three_servers_leave_one_session() {
    let Some((nats, pg)) = services() else { return };
    let c = Cluster::start(3, &nats, &pg);
    for round in 0..3 {
        let bob = c.name(&format!("bob{round}"));
        let logins = (0..3).map(|i| Client::connect(config(c.addr(i), &bob)));
        let clients = futures_util::future::join_all(logins).await;
        // A login whose session was taken over during its own handshake
        // ends before its Welcome: also one of the losers.
        let mut live: Vec<Client> = clients.into_iter().flatten().collect();
        // The take-overs settle: exactly one client keeps playing, the
        // others were taken over.
        let mut still = 0;
        for client in &mut live {
            let end = ended(client, Duration::from_secs(2)).await;
            match end {
                None => still += 1,
                e => assert!(taken_over(&e), "round {round}: {e:?}"),
            }
        }
        assert_eq!(still, 1, "round {round}: one client keeps the session");
        assert_eq!(
            c.holders(&bob).len(),
            1,
            "round {round}: one server holds it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whispers_and_world_chat_cross_servers() {
    let Some((nats, pg)) = services() else { return };
    let c = Cluster::start(2, &nats, &pg);
    let (alice, carol) = (c.name("alice"), c.name("carol"));
    let mut a = Client::connect(config(c.addr(0), &alice)).await.unwrap();
    let mut b = Client::connect(config(c.addr(1), &carol)).await.unwrap();
    assert_eq!(c.holders(&alice), vec![0]);
    assert_eq!(c.holders(&carol), vec![1]);

    a.send(Command::Chat {
        scope: ChatScope::Whisper,
        to: carol.clone(),
        text: "psst".into(),
    })
    .unwrap();
    // Written now: this test reads the other client next.
    a.flush();
    let heard = wait_for(&mut b, |e| match e {
        Event::Game(GameEvent::Chat(m)) if m.text == "psst" => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(heard.from_name, alice);
    assert_eq!(heard.scope, pb::ChatScope::Whisper as i32);

    // Nobody by that name anywhere: the sender is told.
    let seq = a
        .send(Command::Chat {
            scope: ChatScope::Whisper,
            to: c.name("nobody"),
            text: "hello?".into(),
        })
        .unwrap();
    let code = wait_for(&mut a, |e| match e {
        Event::Game(GameEvent::CommandError(err)) if err.seq == seq => Some(err.code),
        _ => None,
    })
    .await;
    assert_eq!(code, pb::CommandErrorCode::CommandErrorNoSuchPlayer as i32);

    a.send(Command::Chat {
        scope: ChatScope::World,
        to: String::new(),
        text: "hello world".into(),
    })
    .unwrap();
    a.flush();
    wait_for(&mut b, |e| match e {
        Event::Game(GameEvent::Chat(m)) if m.text == "hello world" => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_moves_a_player_to_another_server_and_every_input_is_applied_once() {
    let Some((nats, pg)) = services() else { return };
    let c = Cluster::start(2, &nats, &pg);
    let alice = c.name("alice");
    let mut a = Client::connect(config(c.addr(0), &alice)).await.unwrap();
    let mut sent = 0u32;
    for t in 0..20 {
        sent = a.send(Command::Ping { client_time: t }).unwrap();
    }
    // Moved while inputs are in flight.
    let (status, body) = admin_request(
        c.nodes[0].admin_addr,
        "POST",
        &format!("/v1/players/{alice}/move"),
        None,
        r#"{"node":"n1"}"#,
    );
    assert_eq!(status, 200, "{body}");
    for t in 20..40 {
        sent = a.send(Command::Ping { client_time: t }).unwrap();
    }
    wait_for(&mut a, |e| match e {
        Event::Resumed { .. } | Event::Resynced { .. } => Some(()),
        Event::LoggedInAgain { .. } => panic!("the session was lost in the move"),
        _ => None,
    })
    .await;
    // Every input acknowledged, by the server the player moved to.
    wait_for(&mut a, |e| match e {
        Event::Game(GameEvent::InputAck(ack)) if ack.seq == sent => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(a.unacked_inputs(), 0);
    assert!(a.stats().redirects >= 1);
    assert_eq!(c.holders(&alice), vec![1]);
    assert_eq!(c.session(1, &alice)["last_input"], sent);

    // Moving to a server that is not in the cluster is refused.
    let (status, _) = admin_request(
        c.nodes[1].admin_addr,
        "POST",
        &format!("/v1/players/{alice}/move"),
        None,
        r#"{"node":"nowhere"}"#,
    );
    assert_eq!(status, 409);
}

/// A TCP proxy in front of NATS that the test can cut: while cut, every
/// connection through it is dropped and new ones are refused at once.
struct CutProxy {
    addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    fn start(upstream: &str) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let upstream = upstream
            .trim_start_matches("nats://")
            .split(',')
            .next()
            .unwrap()
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the NATS client sees it closed
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || pump(from, to, &flag));
                }
            }
        });
        CutProxy { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes or the proxy is cut.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    cut: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if cut.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Waits until server `i` reports its NATS link as `up`.
fn wait_nats(c: &Cluster, i: usize, up: bool) {
    let want = format!("tether_cluster_nats_connected {}\n", u8::from(up));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = admin_request(c.nodes[i].admin_addr, "GET", "/metrics", None, "");
        if metrics.contains(&want) {
            return;
        }
        assert!(Instant::now() < end, "server n{i}: NATS link never {up}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nats_is_away_players_stay_and_cross_server_features_fail_clearly() {
    let Some((nats, pg)) = services() else { return };
    let proxy = CutProxy::start(&nats);
    let c = Cluster::start(2, &format!("nats://{}", proxy.addr), &pg);
    let (alice, carol, dave) = (c.name("alice"), c.name("carol"), c.name("dave"));
    let mut a = Client::connect(config(c.addr(0), &alice)).await.unwrap();
    let mut b = Client::connect(config(c.addr(1), &carol)).await.unwrap();

    proxy.set_cut(true);
    tokio::task::block_in_place(|| wait_nats(&c, 0, false));

    // Alice plays on: her server needs nothing from NATS for that.
    let seq = a.send(Command::Ping { client_time: 1 }).unwrap();
    wait_for(&mut a, |e| match e {
        Event::Game(GameEvent::InputAck(ack)) if ack.seq >= seq => Some(()),
        _ => None,
    })
    .await;
    // A whisper to another server's player fails, and says why.
    let seq = a
        .send(Command::Chat {
            scope: ChatScope::Whisper,
            to: carol.clone(),
            text: "are you there?".into(),
        })
        .unwrap();
    let code = wait_for(&mut a, |e| match e {
        Event::Game(GameEvent::CommandError(err)) if err.seq == seq => Some(err.code),
        _ => None,
    })
    .await;
    assert_eq!(
        code,
        pb::CommandErrorCode::CommandErrorPlayerUnreachable as i32
    );
    // A new login waits for NATS: refused with a retry hint and the reason.
    let mut cfg = config(c.addr(0), &dave);
    cfg.reconnect.max_attempts = 1;
    match Client::connect(cfg).await {
        Err(ClientError::GaveUp { last, .. }) => {
            assert!(last.contains("SERVER_BUSY"), "{last}")
        }
        other => panic!("a login while NATS is away: {other:?}"),
    }

    // NATS back: everything works again, Alice never left.
    proxy.set_cut(false);
    tokio::task::block_in_place(|| {
        wait_nats(&c, 0, true);
        wait_nats(&c, 1, true);
    });
    a.send(Command::Chat {
        scope: ChatScope::Whisper,
        to: carol.clone(),
        text: "back".into(),
    })
    .unwrap();
    a.flush();
    wait_for(&mut b, |e| match e {
        Event::Game(GameEvent::Chat(m)) if m.text == "back" => Some(()),
        _ => None,
    })
    .await;
    let d = Client::connect(config(c.addr(0), &dave)).await.unwrap();
    assert!(d.is_live());
    assert_eq!(a.stats().disconnects, 0);
    assert_eq!(c.holders(&alice), vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_frees_its_accounts_at_once_and_its_players_resume_elsewhere() {
    let Some((nats, pg)) = services() else { return };
    // A long lease: only a clean stop can free the accounts this fast.
    let mut c = Cluster::start_with_lease(2, &nats, &pg, 60_000);
    let alice = c.name("alice");
    let mut cfg = config(c.addr(0), &alice);
    cfg.other_addrs = vec![c.addr(1)];
    let mut a = Client::connect(cfg).await.unwrap();
    let mut sent = 0;
    for t in 0..5 {
        sent = a.send(Command::Ping { client_time: t }).unwrap();
    }
    wait_for(&mut a, |e| match e {
        Event::Game(GameEvent::InputAck(ack)) if ack.seq == sent => Some(()),
        _ => None,
    })
    .await;

    let started = Instant::now();
    let stopped = c.nodes.remove(0);
    tokio::task::block_in_place(|| stopped.shutdown());
    wait_for(&mut a, |e| match e {
        Event::Resumed { .. } | Event::Resynced { .. } => Some(()),
        Event::LoggedInAgain { .. } => panic!("the session was lost in the stop"),
        _ => None,
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "{took:?}: waited for the lease"
    );
    // The session went on at the other server, its inputs kept.
    assert_eq!(c.holders(&alice), vec![0]);
    assert_eq!(c.session(0, &alice)["last_input"], sent);
}

#[test]
fn a_resume_at_the_wrong_server_is_redirected_to_the_session() {
    use common::TestClient;
    use tether_proto::pb::{client_message, server_message::Msg};
    let Some((nats, pg)) = services() else { return };
    let c = Cluster::start(2, &nats, &pg);
    let alice = c.name("alice");

    // On the wire: log in at n0, note the session, drop the connection
    // (the session turns link-dead there).
    let mut first = TestClient::connect(c.addr(0));
    let welcome = match first.hello(&alice) {
        Some(Msg::Welcome(w)) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    drop(first);
    let resume = pb::Resume {
        session_id: welcome.session_id,
        token: welcome.resume_token.clone(),
        frames_received: 0,
        restart_token: welcome.restart_token.clone(),
    };

    // The resume arrives at n1: redirected to n0, which holds it.
    let mut wrong = TestClient::connect(c.addr(1));
    wrong.send(client_message::Msg::Resume(resume.clone()));
    let close = match wrong.recv() {
        Some(Msg::Close(close)) => close,
        other => panic!("expected Close, got {other:?}"),
    };
    assert_eq!(close.code, pb::CloseCode::Redirect as i32);
    let to = close.redirect.expect("a redirect names a server");
    assert_eq!(
        (to.node.as_str(), to.address.clone()),
        ("n0", c.addr(0).to_string())
    );

    // The same resume there: the session goes on, frames replayed.
    let mut right = TestClient::connect(to.address.parse().unwrap());
    right.send(client_message::Msg::Resume(resume));
    match right.recv() {
        Some(Msg::Resumed(r)) => assert_eq!(r.session_id, welcome.session_id),
        other => panic!("expected Resumed, got {other:?}"),
    }
    assert_eq!(c.holders(&alice), vec![0]);
}

//! A deliberately plain test client: blocking sockets and raw protocol
//! frames, so the tests check the wire itself rather than a client library.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tether_proto::pb::{self, client_message, input::Cmd, server_message::Msg};
use tether_proto::{decode_server, encode_frame, split_frame, MAX_PAYLOAD_LEN};
use tether_server::config::Config;
use tether_server::ServerHandle;
use tether_store::fake::{FakeBackend, FakeControl};

/// A server on free loopback ports with a small map, over an in-memory
/// store the test controls (seed characters, read them back, cut it).
pub fn server(tweak: impl FnOnce(&mut Config)) -> (ServerHandle, FakeControl) {
    // One directory per server, also between servers of one test process
    // (the audit log and the handover socket live there).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tether-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        world_players: 50,
        // Tests share a few busy cores: a stalled tick must not put the
        // server in protect mode behind a test's back (the protect tests
        // trigger it on purpose).
        protect_tick_lag_ms: 60_000,
        // TETHER_TEST_IO_URING=0 runs every test with `writev` sends
        // instead of io_uring (CI runs the server's tests both ways).
        io_uring: std::env::var("TETHER_TEST_IO_URING").as_deref() != Ok("0"),
        ..Config::default()
    };
    tweak(&mut cfg);
    let (backend, control) = FakeBackend::new();
    let handle = tether_server::start_with_backend(cfg, Box::new(backend)).expect("server starts");
    (handle, control)
}

/// The value of one metric line of the server (exact name with labels), 0
/// if absent.
pub fn metric(srv: &ServerHandle, name: &str) -> u64 {
    srv.metrics
        .render()
        .lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

pub struct TestClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub session_id: u64,
    pub token: Vec<u8>,
    pub entity: u64,
    pub frames: u64,
    pub next_seq: u32,
    pub world: Option<pb::WorldInfo>,
}

impl TestClient {
    pub fn connect(addr: SocketAddr) -> TestClient {
        TestClient::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from a chosen loopback source address (127.0.0.2, ...), so
    /// a test's attacker has an address of its own; `rcvbuf` shrinks the
    /// socket's receive buffer (a slow reader fills up sooner).
    pub fn connect_from(source: &str, addr: SocketAddr, rcvbuf: Option<usize>) -> TestClient {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let src: SocketAddr = format!("{source}:0").parse().expect("source address");
        socket.bind(&src.into()).expect("bind the source address");
        socket.connect(&addr.into()).expect("connect");
        TestClient::from_stream(socket.into())
    }

    /// Sends Hello with `name` (dev auth) and returns the answer; on a
    /// Welcome the session's ids are kept.
    pub fn hello(&mut self, name: &str) -> Option<Msg> {
        self.send(client_message::Msg::Hello(pb::Hello {
            protocol_version: 1,
            auth: Some(pb::hello::Auth::DevName(name.into())),
            client: "test".into(),
        }));
        let reply = self.recv();
        if let Some(Msg::Welcome(w)) = &reply {
            self.session_id = w.session_id;
            self.token = w.resume_token.clone();
            self.entity = w.entity_id;
            self.world = Some(w.world_info());
        }
        reply
    }

    pub fn from_stream(stream: TcpStream) -> TestClient {
        stream.set_nodelay(true).unwrap();
        TestClient {
            stream,
            buf: Vec::new(),
            session_id: 0,
            token: Vec::new(),
            entity: 0,
            frames: 0,
            next_seq: 1,
            world: None,
        }
    }

    /// Connects and logs in with dev auth; returns after the Welcome.
    pub fn login(addr: SocketAddr, name: &str) -> TestClient {
        let mut c = TestClient::connect(addr);
        c.send(client_message::Msg::Hello(pb::Hello {
            protocol_version: 1,
            auth: Some(pb::hello::Auth::DevName(name.into())),
            client: "test".into(),
        }));
        match c.recv() {
            Some(Msg::Welcome(w)) => {
                c.world = Some(w.world_info());
                c.session_id = w.session_id;
                c.token = w.resume_token;
                c.entity = w.entity_id;
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        c
    }

    pub fn send(&mut self, msg: client_message::Msg) {
        let frame = encode_frame(&pb::ClientMessage { msg: Some(msg) });
        self.stream.write_all(&frame).expect("write");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a command as the next input; returns its seq.
    pub fn input(&mut self, cmd: Cmd) -> u32 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ack = self.frames;
        self.send(client_message::Msg::Input(pb::Input {
            seq,
            ack,
            cmd: Some(cmd),
        }));
        seq
    }

    /// The next server message, or None when the connection closed or
    /// nothing arrived within 5 s.
    pub fn recv(&mut self) -> Option<Msg> {
        self.recv_within(Duration::from_secs(5))
    }

    pub fn recv_within(&mut self, timeout: Duration) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((payload, used)) =
                split_frame(&self.buf, MAX_PAYLOAD_LEN).expect("valid header")
            {
                let msg = decode_server(payload).expect("valid server frame").msg;
                self.buf.drain(..used);
                let msg = msg.expect("non-empty");
                let counted = !matches!(msg, Msg::Welcome(_) | Msg::Resumed(_) | Msg::Close(_));
                if counted {
                    self.frames += 1;
                }
                return Some(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads until `pred` matches (returning that message) or `timeout` passes.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let msg = self.recv_within(left)?;
            if pred(&msg) {
                return Some(msg);
            }
        }
    }

    /// Everything that arrives within `window`.
    pub fn drain(&mut self, window: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv_within(left) {
                Some(m) => out.push(m),
                None => return out,
            }
        }
    }
}

/// A saved character at a chosen position, for tests that need players in
/// each other's view.
pub fn place(store: &FakeControl, name: &str, x: f32, y: f32) {
    store.insert(tether_world::game::encode_record(
        &tether_world::CharacterRecord {
            name: name.into(),
            pos: Some((x, y)),
            hp: 0,
            level: 1,
            xp: 0,
            gold: 0,
            inventory: Vec::new(),
        },
    ));
}

/// Waits (up to 5 s) for storage to hold `name` with a check passing: saves
/// are written behind, off the game loop.
pub fn stored(
    store: &FakeControl,
    name: &str,
    check: impl Fn(&tether_world::CharacterRecord) -> bool,
) -> tether_world::CharacterRecord {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = character(store, name) {
            if check(&r) || Instant::now() > deadline {
                return r;
            }
        } else if Instant::now() > deadline {
            panic!("{name} never reached storage");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The character `name` as storage holds it now.
pub fn character(store: &FakeControl, name: &str) -> Option<tether_world::CharacterRecord> {
    store
        .record(name)
        .map(|r| tether_world::game::decode_record(&r).expect("the MMO reads what it stored"))
}

/// The close code of a `Close` message, if that is what `msg` is.
pub fn close_code(msg: &Option<Msg>) -> Option<pb::CloseCode> {
    match msg {
        Some(Msg::Close(c)) => pb::CloseCode::try_from(c.code).ok(),
        _ => None,
    }
}

/// One admin HTTP request (HTTP/1.1, `Connection: close`), with a bearer
/// token when given; (status, body).
pub fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    http_exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Writes `request` as it is and reads the answer until the server closes;
/// (status, body).
pub fn http_exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

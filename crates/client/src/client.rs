//! [`Client`]: one player's connection, driven from the caller's task.
//!
//! There is no background task. Everything — reading, decoding, acking,
//! keep-alives, noticing a dead link, reconnecting and resuming — happens
//! inside [`Client::next_event`], which is cancel-safe, so game code can
//! `select!` on it beside its own work. [`Client::send`] only numbers the
//! command and appends its frame to the write buffer; the buffer goes out in
//! one write the next time `next_event` is about to wait (or on
//! [`Client::flush`]), so commands issued together leave together.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tether_proto::pb::{self, client_message, hello, server_message::Msg, ClientMessage};
use tether_proto::ws::{self, Deframer, Role};
use tether_proto::{
    decode_server, encode_frame_into, split_frame, DecodeError, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN,
};
use tether_session::{ClientSession, ServerFrameOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::backoff;
use crate::command::Command;
use crate::config::{ClientConfig, Login, Transport};
use crate::error::{close_action, describe_io, ClientError, CloseAction, SendError};
use crate::event::{Event, GameEvent, PauseReason};

/// Longest `Hello.client` the server accepts.
const MAX_CLIENT_NAME: usize = 64;

/// A read buffer that grew past this many read chunks (to hold one large
/// frame) is given back once empty, so one big snapshot does not pin memory
/// for the rest of the session.
const SHRINK_AFTER_CHUNKS: usize = 4;

/// Floor on any wait. A deadline already in the past would otherwise turn
/// the event loop into a spin if something kept reporting it as due.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Counters of one client, for tools and load generators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Frames decoded from the server (control and counted).
    pub frames_in: u64,
    /// Frames queued for the server (inputs, acks, handshakes, logout).
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Times the connection was lost while the session was live.
    pub disconnects: u64,
    /// Successful resumes (replay or snapshot).
    pub resumes: u64,
    /// Resumes that fell back to a snapshot.
    pub resyncs: u64,
    /// Connect or handshake attempts that failed.
    pub connect_failures: u64,
    /// Logins again after a refused resume ([`Event::LoggedInAgain`]).
    pub relogins: u64,
    /// `REDIRECT`s followed to another server of a cluster.
    pub redirects: u64,
}

/// `REDIRECT`s followed in a row without a `Welcome` or `Resumed` before
/// the client backs off as after a failed attempt (servers that disagree
/// for a moment, while one of them takes over a failed one's accounts).
pub const MAX_REDIRECTS_IN_A_ROW: u32 = 8;

/// A connected socket, and for a WebSocket the bytes that came behind the
/// server's upgrade answer.
type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<(TcpStream, Bytes)>> + Send>>;

/// The WebSocket carriage of a connection ([`Transport::WebSocket`]).
struct WsLink {
    /// The server's frames, decoded in place.
    frames: Deframer,
    /// Raw bytes read, before decoding.
    raw: BytesMut,
    /// Masked frames waiting to be written (what `wbuf` held, wrapped).
    out: BytesMut,
}

/// Opens a TCP connection to `addr` and, for a WebSocket, upgrades it.
async fn open(
    addr: SocketAddr,
    transport: Transport,
    key: [u8; 16],
) -> io::Result<(TcpStream, Bytes)> {
    let mut stream = TcpStream::connect(addr).await?;
    let Transport::WebSocket { path } = transport else {
        return Ok((stream, Bytes::new()));
    };
    let key = ws::client_key(key);
    stream
        .write_all(ws::client_request(&addr.to_string(), &path, &key).as_bytes())
        .await?;
    let mut head = BytesMut::with_capacity(512);
    loop {
        if stream.read_buf(&mut head).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed during the WebSocket upgrade",
            ));
        }
        match ws::check_upgrade(&head, &key) {
            Ok(Some(used)) => return Ok((stream, head.split_off(used).freeze())),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// host:port of a `ws://` or `wss://` URL.
fn ws_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))?;
    let end = rest.find('/').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Where the connection stands.
enum Link {
    /// Waiting before the next connect attempt.
    Backoff { until: Instant },
    /// A TCP connect is in flight (boxed so that a cancelled `next_event`
    /// does not lose it).
    Connecting {
        fut: ConnectFuture,
        deadline: Instant,
    },
    /// `Hello` or `Resume` is queued or written; waiting for `Welcome` /
    /// `Resumed`.
    Handshake {
        stream: TcpStream,
        deadline: Instant,
    },
    /// The session is attached to this socket.
    Live { stream: TcpStream },
    /// The client has ended; nothing more will happen.
    Done,
}

/// What one turn of the event loop produced.
enum Out {
    Event(Event),
    /// The login completed (only `connect` cares).
    Welcomed,
    Error(ClientError),
    /// The client has ended and already said so.
    End,
}

/// One player's connection to a Tether server, with transparent resume.
///
/// ```no_run
/// use tether_client::{Client, ClientConfig, Command, Event, GameEvent, Login};
///
/// # async fn play() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = ClientConfig::new("127.0.0.1:7777".parse()?, Login::Dev("alice".into()));
/// let mut client = Client::connect(cfg).await?;
/// let me = client.entity_id();
/// client.send(Command::say("hello"))?;
/// while let Some(event) = client.next_event().await {
///     match event? {
///         Event::Game(GameEvent::Death(d)) if d.id == me => {
///             client.send(Command::Respawn)?;
///         }
///         Event::Resynced { .. } => { /* drop the world view; a snapshot follows */ }
///         Event::LoggedOut => break,
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Client {
    cfg: ClientConfig,
    session: ClientSession,
    link: Link,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    /// The WebSocket carriage of the current connection, if it has one.
    ws: Option<WsLink>,
    /// Frames queued and not yet written (bounded by `max_write_backlog`).
    wbuf: BytesMut,
    /// The session layer's clock starts here.
    epoch: Instant,
    rng: SmallRng,
    welcome: Option<pb::Welcome>,
    /// Failed connect/handshake attempts in a row.
    attempts: u32,
    /// `Some` once `logout` was called: when to stop waiting for the server.
    logout_deadline: Option<Instant>,
    /// A final outcome to report on the next call (at most one).
    pending: Option<Out>,
    /// Logging in again after a refused resume: the inputs the old session
    /// had not acknowledged, for [`Event::LoggedInAgain`].
    relogging: Option<usize>,
    /// Where the next connection goes: an entry point (`cfg.addr` or one of
    /// `cfg.other_addrs`), or the server a `REDIRECT` named.
    target: SocketAddr,
    /// Which entry point the client is on (0: `cfg.addr`).
    entry: usize,
    /// `REDIRECT`s followed since the last `Welcome` or `Resumed`.
    redirects_in_a_row: u32,
    stats: ClientStats,
}

impl Client {
    /// Connects and logs in, retrying transient failures (connection errors,
    /// `SERVER_BUSY`, `RATE_LIMITED`, ...) as the reconnect policy allows.
    /// Returns once `Welcome` arrived; the snapshot that follows it comes out
    /// of [`next_event`](Client::next_event).
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        cfg.login.validate().map_err(ClientError::InvalidLogin)?;
        let rng = match cfg.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let now = Instant::now();
        let mut client = Client {
            session: ClientSession::new(cfg.session.clone()),
            link: Link::Backoff { until: now },
            rbuf: BytesMut::new(),
            ws: None,
            wbuf: BytesMut::new(),
            epoch: now,
            rng,
            welcome: None,
            attempts: 0,
            logout_deadline: None,
            pending: None,
            relogging: None,
            target: cfg.addr,
            entry: 0,
            redirects_in_a_row: 0,
            stats: ClientStats::default(),
            cfg,
        };
        loop {
            match client.step(None).await {
                Out::Welcomed => return Ok(client),
                Out::Error(e) => return Err(e),
                // A server that closes a fresh login with LOGOUT is odd;
                // report it as the close it is.
                Out::Event(Event::LoggedOut) | Out::End => {
                    return Err(ClientError::Closed {
                        code: pb::CloseCode::Logout,
                        message: "closed before Welcome".into(),
                    })
                }
                Out::Event(_) => {}
            }
        }
    }

    /// The next event. `None` once the client has ended (after
    /// [`Event::LoggedOut`] or an error).
    ///
    /// Cancel-safe: dropping the future loses nothing, so it can sit in a
    /// `select!` loop.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        self.next(None).await
    }

    /// Like [`next_event`](Client::next_event), but yields [`Event::Deadline`]
    /// once `deadline` has passed and nothing else is ready. This lets a
    /// caller run its own schedule on the client's one timer instead of
    /// `select!`ing a second one.
    pub async fn next_event_until(
        &mut self,
        deadline: Instant,
    ) -> Option<Result<Event, ClientError>> {
        self.next(Some(deadline)).await
    }

    async fn next(&mut self, deadline: Option<Instant>) -> Option<Result<Event, ClientError>> {
        loop {
            match self.step(deadline).await {
                Out::Event(e) => return Some(Ok(e)),
                Out::Error(e) => return Some(Err(e)),
                Out::End => return None,
                Out::Welcomed => {}
            }
        }
    }

    /// Numbers `cmd`, keeps it until the server acknowledges it, and queues
    /// its frame. Returns the input's sequence number (0 for `Logout`).
    ///
    /// While the connection is down the command is kept and goes out right
    /// after the resume. Refused with [`SendError::Backlog`] when the
    /// session's unacked-input cap or the write backlog cap is reached.
    pub fn send(&mut self, cmd: Command) -> Result<u32, SendError> {
        if self.is_ended() {
            return Err(SendError::Ended);
        }
        let Some(input) = cmd.into_input() else {
            self.logout();
            return Ok(0);
        };
        if self.cfg.raw_frames {
            return Err(SendError::OtherGame);
        }
        if self.wbuf.len() >= self.cfg.max_write_backlog {
            return Err(SendError::Backlog);
        }
        let now_ms = self.now_ms(Instant::now());
        let msg = self
            .session
            .send_input(input, now_ms)
            .map_err(|_| SendError::Backlog)?;
        let seq = match &msg.msg {
            Some(client_message::Msg::Input(i)) => i.seq,
            _ => 0,
        };
        // Only a live link may carry inputs: during a resume handshake they
        // would reach the server before the re-sent older ones. The session
        // keeps them and the resume re-sends them in order.
        if matches!(self.link, Link::Live { .. }) {
            self.queue(&msg);
        }
        Ok(seq)
    }

    /// Sends a command of another game's schema: `cmd` is that game's
    /// `Input` message encoded with `seq` and `ack` left at 0 (only its own
    /// fields, 3 and up). It is numbered, kept until acknowledged and
    /// re-sent after a resume exactly like [`send`](Client::send)'s, and the
    /// server applies it exactly once. Returns the input's sequence number.
    ///
    /// Meant for a client made with
    /// [`ClientConfig::raw_frames`](crate::ClientConfig::raw_frames); one
    /// session sends either typed commands or raw ones, not both.
    pub fn send_raw(&mut self, cmd: Bytes) -> Result<u32, SendError> {
        if self.is_ended() {
            return Err(SendError::Ended);
        }
        if self.wbuf.len() >= self.cfg.max_write_backlog {
            return Err(SendError::Backlog);
        }
        let now_ms = self.now_ms(Instant::now());
        let input = self
            .session
            .send_raw_input(cmd, now_ms)
            .map_err(|_| SendError::Backlog)?;
        // As in `send`: only a live link carries new inputs.
        if matches!(self.link, Link::Live { .. }) {
            input.encode_frame_into(&mut self.wbuf);
            self.stats.frames_out += 1;
        }
        Ok(input.seq)
    }

    /// Ends the session: sends `Logout` and lets `next_event` wait (up to
    /// `logout_timeout`) for the server's `Close`, then yield
    /// [`Event::LoggedOut`]. If the connection is down at that moment the
    /// client ends at once and the server logs the character out when its
    /// resume grace runs out.
    pub fn logout(&mut self) {
        if self.is_ended() {
            return;
        }
        let now = Instant::now();
        if matches!(self.link, Link::Live { .. }) {
            self.queue(&ClientMessage {
                msg: Some(client_message::Msg::Logout(pb::Logout {})),
            });
            self.logout_deadline = Some(now + self.cfg.logout_timeout);
        } else {
            self.link = Link::Done;
            self.logout_deadline = Some(now);
            self.pending = Some(Out::Event(Event::LoggedOut));
        }
    }

    /// Closes the socket without logging out, as a network failure would.
    /// The session lives on as a zombie on the server; the client reconnects
    /// and resumes as after any loss (the next event is [`Event::Paused`]).
    pub fn drop_connection(&mut self) {
        if matches!(self.link, Link::Live { .. }) && self.pending.is_none() {
            let out = self.lose(PauseReason::Dropped, Duration::ZERO, Instant::now());
            self.pending = Some(out);
        }
    }

    /// Writes what is queued, as far as the socket takes it without waiting.
    /// `next_event` does this on its own before it waits; call it when you
    /// queued commands and will not await `next_event` soon.
    pub fn flush(&mut self) {
        // An error shows up again, and is handled, in `next_event`.
        let _ = self.try_flush();
    }

    /// The `Welcome` of this session's login.
    pub fn welcome(&self) -> &pb::Welcome {
        self.welcome
            .as_ref()
            .expect("a connected client has a Welcome")
    }

    /// Your character's entity id.
    pub fn entity_id(&self) -> u64 {
        self.welcome().entity_id
    }

    /// The world's dimensions and rules, from `Welcome`.
    pub fn world(&self) -> pb::WorldInfo {
        self.welcome().world_info()
    }

    /// The game's welcome information from `Welcome.game`, in the game's
    /// own schema (the arena's `ArenaInfo`, say; for the MMO see
    /// [`world`](Client::world)).
    pub fn game_info(&self) -> &[u8] {
        &self.welcome().game
    }

    /// The session layer (frame count, acked input, unacked inputs).
    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// Inputs sent and not yet acknowledged by the server.
    pub fn unacked_inputs(&self) -> usize {
        self.session.unacked_inputs()
    }

    /// Whether the session is attached to a connection right now.
    pub fn is_live(&self) -> bool {
        matches!(self.link, Link::Live { .. })
    }

    /// Whether the client has ended or is logging out (no more commands).
    pub fn is_ended(&self) -> bool {
        matches!(self.link, Link::Done) || self.logout_deadline.is_some()
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    // ----------------------------------------------------------------
    // The event loop
    // ----------------------------------------------------------------

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn at_ms(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// One turn: returns as soon as there is something to report.
    async fn step(&mut self, user_deadline: Option<Instant>) -> Out {
        loop {
            if let Some(out) = self.pending.take() {
                return out;
            }
            let now = Instant::now();
            match &mut self.link {
                Link::Done => return Out::End,
                Link::Backoff { until } => {
                    let until = *until;
                    if now >= until {
                        let key: [u8; 16] = self.rng.random();
                        let fut: ConnectFuture =
                            Box::pin(open(self.target, self.cfg.transport.clone(), key));
                        self.link = Link::Connecting {
                            fut,
                            deadline: now + self.cfg.connect_timeout,
                        };
                        continue;
                    }
                    match user_deadline {
                        Some(d) if d <= now => return Out::Event(Event::Deadline),
                        Some(d) if d < until => sleep_until(d).await,
                        _ => sleep_until(until).await,
                    }
                }
                Link::Connecting { fut, deadline } => {
                    let deadline = *deadline;
                    if user_deadline.is_some_and(|d| d <= now) {
                        return Out::Event(Event::Deadline);
                    }
                    let wake = user_deadline.map_or(deadline, |d| d.min(deadline));
                    match timeout_at(wake, fut.as_mut()).await {
                        Ok(Ok((stream, behind))) => self.on_connected(stream, behind),
                        Ok(Err(e)) => {
                            if let Some(out) = self.fail_attempt(describe_io(&e), Duration::ZERO) {
                                return out;
                            }
                        }
                        Err(_) if Instant::now() >= deadline => {
                            if let Some(out) =
                                self.fail_attempt("connect timed out".into(), Duration::ZERO)
                            {
                                return out;
                            }
                        }
                        Err(_) => {}
                    }
                }
                Link::Handshake { .. } | Link::Live { .. } => {
                    if let Some(out) = self.turn(now, user_deadline).await {
                        return out;
                    }
                }
            }
        }
    }

    /// A socket is up: say who we are.
    fn on_connected(&mut self, stream: TcpStream, behind: Bytes) {
        // Frames are small and latency matters more than packet count;
        // batching is done here, not by Nagle.
        let _ = stream.set_nodelay(true);
        self.rbuf.clear();
        self.wbuf.clear();
        self.ws = match self.cfg.transport {
            Transport::Tcp => None,
            Transport::WebSocket { .. } => Some(WsLink {
                frames: Deframer::new(Role::Client, self.rng.random()),
                raw: BytesMut::from(&behind[..]),
                out: BytesMut::new(),
            }),
        };
        if self.ws.as_ref().is_some_and(|w| !w.raw.is_empty()) {
            // Frames that came with the upgrade's answer: decoded now (a
            // Close among them is met again on the first read).
            let _ = self.unwrap_ws();
        }
        let hello = match self.session.resume_message() {
            Some(resume) if self.session.can_resume() => resume,
            _ => self.hello(),
        };
        self.queue(&hello);
        self.link = Link::Handshake {
            stream,
            deadline: Instant::now() + self.cfg.handshake_timeout,
        };
    }

    fn hello(&self) -> ClientMessage {
        let auth = match &self.cfg.login {
            Login::Dev(name) => hello::Auth::DevName(name.clone()),
            Login::Ticket(t) => hello::Auth::Ticket(t.clone()),
        };
        let mut client = self.cfg.client_name.clone();
        if client.len() > MAX_CLIENT_NAME {
            let mut cut = MAX_CLIENT_NAME;
            while !client.is_char_boundary(cut) {
                cut -= 1;
            }
            client.truncate(cut);
        }
        ClientMessage {
            msg: Some(client_message::Msg::Hello(pb::Hello {
                protocol_version: tether_proto::PROTOCOL_VERSION,
                auth: Some(auth),
                client,
            })),
        }
    }

    /// One turn on an open socket: a buffered frame, else timers, flush and
    /// one wait for the socket or the next deadline.
    async fn turn(&mut self, now: Instant, user_deadline: Option<Instant>) -> Option<Out> {
        // 1. A whole frame already buffered goes first.
        match split_frame(&self.rbuf, MAX_PAYLOAD_LEN) {
            Ok(Some((_, used))) if self.cfg.raw_frames => {
                let frame = self.rbuf.split_to(used).freeze();
                return self.on_raw_frame(frame.slice(FRAME_HEADER_LEN..), now);
            }
            Ok(Some((payload, used))) => {
                let decoded = decode_server(payload);
                self.rbuf.advance(used);
                return match decoded {
                    Ok(msg) => self.on_message(msg, now),
                    Err(e) => Some(self.finish(Out::Error(ClientError::Protocol(e)))),
                };
            }
            Ok(None) => {}
            Err(e) => return Some(self.finish(Out::Error(ClientError::Protocol(e)))),
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_AFTER_CHUNKS * self.cfg.read_chunk
        {
            self.rbuf = BytesMut::new();
        }

        // 2. Timers.
        let live = matches!(self.link, Link::Live { .. });
        let mut wake = user_deadline;
        let mut merge = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        if live {
            let now_ms = self.now_ms(now);
            if let Some(deadline) = self.logout_deadline {
                if now >= deadline {
                    return Some(self.finish(Out::Event(Event::LoggedOut)));
                }
                merge(deadline);
            }
            if self.session.is_silent(now_ms) {
                return Some(self.lose(PauseReason::Silent, Duration::ZERO, now));
            }
            if let Some(ack) = self.session.poll_ack(now_ms) {
                // Over the backlog cap the ack is skipped: acks are
                // cumulative, the next one covers this one.
                if self.wbuf.len() < self.cfg.max_write_backlog {
                    self.queue(&ack);
                }
            }
            if let Some(t) = self.session.poll_timeout() {
                merge(self.at_ms(t));
            }
        } else if let Link::Handshake { deadline, .. } = &self.link {
            let deadline = *deadline;
            if now >= deadline {
                return self.fail_attempt("handshake timed out".into(), Duration::ZERO);
            }
            merge(deadline);
        }
        if user_deadline.is_some_and(|d| d <= now) {
            // Flush first: the caller may not come back for a while.
            if let Err(e) = self.try_flush() {
                return self.on_io_error(e, now);
            }
            return Some(Out::Event(Event::Deadline));
        }

        // 3. Write what is queued (one write for everything queued since).
        if let Err(e) = self.try_flush() {
            return self.on_io_error(e, now);
        }

        // 4. Wait for the socket or a deadline.
        let ws_out = self.ws.as_ref().map_or(0, |w| w.out.len());
        let interest = if self.wbuf.is_empty() && ws_out == 0 {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let (Link::Handshake { stream, .. } | Link::Live { stream }) = &self.link else {
            unreachable!("turn runs on an open socket")
        };
        let ready = match wake {
            Some(w) => match timeout_at(w.max(now + MIN_WAIT), stream.ready(interest)).await {
                Ok(r) => r,
                Err(_) => {
                    // A deadline: the next turn looks at the timers; the
                    // caller's own deadline is reported there.
                    return None;
                }
            },
            None => stream.ready(interest).await,
        };
        let ready = match ready {
            Ok(r) => r,
            Err(e) => return self.on_io_error(e, Instant::now()),
        };
        if ready.is_readable() {
            if let Some(out) = self.read() {
                return Some(out);
            }
        }
        if ready.is_writable() {
            if let Err(e) = self.try_flush() {
                return self.on_io_error(e, Instant::now());
            }
        }
        None
    }

    /// Reads one chunk into the read buffer.
    fn read(&mut self) -> Option<Out> {
        let (Link::Handshake { stream, .. } | Link::Live { stream }) = &self.link else {
            return None;
        };
        let buf = match self.ws.as_mut() {
            Some(w) => &mut w.raw,
            None => &mut self.rbuf,
        };
        buf.reserve(self.cfg.read_chunk);
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(0) => self.on_eof(Instant::now()),
            Ok(n) => {
                self.stats.bytes_in += n as u64;
                if n < room {
                    // A short read drained the socket. Drop the readiness
                    // flag now instead of learning it from one more `recv`
                    // that fails with EAGAIN: that extra syscall per read
                    // was a measurable share of a bot process's CPU. Data
                    // arriving after the read raises a fresh readiness event,
                    // which this does not clear.
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                if self.ws.is_some() {
                    return self.unwrap_ws();
                }
                None
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => self.on_io_error(e, Instant::now()),
        }
    }

    /// Decodes the WebSocket bytes read into the Tether byte stream
    /// (`rbuf`), answering pings; the server's Close ends the connection.
    fn unwrap_ws(&mut self) -> Option<Out> {
        let w = self.ws.as_mut()?;
        let mut actions = Vec::new();
        match w.frames.feed(&mut w.raw, 0, &mut actions) {
            Ok(n) => {
                self.rbuf.extend_from_slice(&w.raw[..n]);
                w.raw.clear();
            }
            Err(e) => {
                return self.on_io_error(
                    io::Error::new(io::ErrorKind::InvalidData, e),
                    Instant::now(),
                )
            }
        }
        for action in actions {
            if let ws::Action::Send(reply) = action {
                w.out.extend_from_slice(&reply);
            }
        }
        if w.frames.is_closed() {
            // Whatever the server said before it (its Tether Close) is in
            // `rbuf` and is handled first; the end of the stream follows.
            if self.rbuf.is_empty() {
                return self.on_eof(Instant::now());
            }
        }
        None
    }

    fn try_flush(&mut self) -> io::Result<()> {
        let (Link::Handshake { stream, .. } | Link::Live { stream }) = &self.link else {
            return Ok(());
        };
        let out = match self.ws.as_mut() {
            Some(w) => {
                // Everything queued since the last write goes as one message.
                if !self.wbuf.is_empty() {
                    let mask: [u8; 4] = self.rng.random();
                    ws::client_binary_into(&self.wbuf, mask, &mut w.out);
                    self.wbuf.clear();
                }
                &mut w.out
            }
            None => &mut self.wbuf,
        };
        while !out.is_empty() {
            match stream.try_write(out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    out.advance(n);
                    self.stats.bytes_out += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn queue(&mut self, msg: &ClientMessage) {
        encode_frame_into(msg, &mut self.wbuf);
        self.stats.frames_out += 1;
    }

    fn on_message(&mut self, msg: pb::ServerMessage, now: Instant) -> Option<Out> {
        self.stats.frames_in += 1;
        let now_ms = self.now_ms(now);
        let outcome = self.session.on_server_message(&msg, now_ms);
        self.on_outcome(outcome, msg.msg, now)
    }

    /// Acts on what the session layer made of a frame (`msg`: the frame,
    /// when it was one of the typed messages).
    fn on_outcome(
        &mut self,
        outcome: ServerFrameOutcome,
        msg: Option<Msg>,
        now: Instant,
    ) -> Option<Out> {
        match outcome {
            ServerFrameOutcome::Game => {
                GameEvent::from_msg(msg?).map(|g| Out::Event(Event::Game(g)))
            }
            ServerFrameOutcome::Welcomed => {
                let Some(Msg::Welcome(welcome)) = msg else {
                    return None;
                };
                self.welcome = Some(welcome);
                self.attempts = 0;
                self.redirects_in_a_row = 0;
                self.go_live();
                match self.relogging.take() {
                    Some(inputs_dropped) => {
                        self.stats.relogins += 1;
                        Some(Out::Event(Event::LoggedInAgain { inputs_dropped }))
                    }
                    None => Some(Out::Welcomed),
                }
            }
            ServerFrameOutcome::Resumed { mode, resend } => {
                self.attempts = 0;
                self.redirects_in_a_row = 0;
                self.go_live();
                let mut resent = resend.len();
                for m in &resend {
                    self.queue(m);
                }
                // Inputs of another game's schema, kept by the session.
                let raw: Vec<_> = self.session.unacked_raw_inputs().collect();
                resent += raw.len();
                for input in raw {
                    input.encode_frame_into(&mut self.wbuf);
                    self.stats.frames_out += 1;
                }
                self.stats.resumes += 1;
                if mode == pb::ResumeMode::Snapshot {
                    self.stats.resyncs += 1;
                    Some(Out::Event(Event::Resynced { resent }))
                } else {
                    Some(Out::Event(Event::Resumed { resent }))
                }
            }
            ServerFrameOutcome::Closed(close) => {
                let (code, action) = close_action(close.code);
                if self.logout_deadline.is_some() {
                    return Some(self.finish(Out::Event(Event::LoggedOut)));
                }
                if code == pb::CloseCode::ResumeRefused
                    && self.cfg.relogin
                    && self.welcome.is_some()
                {
                    return self.relogin(now);
                }
                if code == pb::CloseCode::Redirect {
                    if let Some(out) = self.redirect(&close, now) {
                        return out;
                    }
                }
                match action {
                    CloseAction::LoggedOut => Some(self.finish(Out::Event(Event::LoggedOut))),
                    CloseAction::End => Some(self.finish(Out::Error(ClientError::Closed {
                        code,
                        message: close.message,
                    }))),
                    CloseAction::Retry => {
                        let wait = Duration::from_millis(u64::from(close.retry_after_ms));
                        if matches!(self.link, Link::Live { .. }) {
                            let reason = PauseReason::Closed {
                                code,
                                message: close.message,
                                retry_after_ms: close.retry_after_ms,
                            };
                            Some(self.lose(reason, wait, now))
                        } else {
                            let last = format!("server said {}", code.as_str_name());
                            self.fail_attempt(last, wait)
                        }
                    }
                }
            }
        }
    }

    /// A frame of another game's schema: the engine's messages are read
    /// here (the session needs them), the game's own are counted and handed
    /// over undecoded.
    fn on_raw_frame(&mut self, payload: Bytes, now: Instant) -> Option<Out> {
        use pb::server_envelope::Msg as Env;
        let envelope = match pb::ServerEnvelope::decode(&payload[..]) {
            Ok(e) => e,
            Err(e) => {
                let e = DecodeError::Malformed(e.to_string());
                return Some(self.finish(Out::Error(ClientError::Protocol(e))));
            }
        };
        let msg = match envelope.msg {
            Some(Env::Welcome(m)) => Msg::Welcome(m),
            Some(Env::Resumed(m)) => Msg::Resumed(m),
            Some(Env::Close(m)) => Msg::Close(m),
            Some(Env::InputAck(m)) => Msg::InputAck(m),
            // None of the engine's fields, or its notice (which the game's
            // schema carries too): a counted frame for the game code.
            Some(Env::Notice(_)) | None => {
                self.stats.frames_in += 1;
                return match self.session.on_game_frame(self.now_ms(now)) {
                    ServerFrameOutcome::Game => Some(Out::Event(Event::GameFrame(payload))),
                    other => self.on_outcome(other, None, now),
                };
            }
        };
        self.on_message(pb::ServerMessage { msg: Some(msg) }, now)
    }

    fn go_live(&mut self) {
        if let Link::Handshake { .. } = self.link {
            let Link::Handshake { stream, .. } = std::mem::replace(&mut self.link, Link::Done)
            else {
                unreachable!()
            };
            self.link = Link::Live { stream };
        }
    }

    fn on_eof(&mut self, now: Instant) -> Option<Out> {
        self.on_broken(PauseReason::Eof, now)
    }

    fn on_io_error(&mut self, e: io::Error, now: Instant) -> Option<Out> {
        self.on_broken(PauseReason::Io(e), now)
    }

    /// The socket broke: a live session pauses, a handshake counts as a
    /// failed attempt, a logout is complete.
    fn on_broken(&mut self, reason: PauseReason, now: Instant) -> Option<Out> {
        if self.logout_deadline.is_some() {
            return Some(self.finish(Out::Event(Event::LoggedOut)));
        }
        if matches!(self.link, Link::Live { .. }) {
            return Some(self.lose(reason, Duration::ZERO, now));
        }
        let last = match reason {
            PauseReason::Io(e) => describe_io(&e),
            _ => "server closed the connection during the handshake".into(),
        };
        self.fail_attempt(last, Duration::ZERO)
    }

    /// A live connection is gone: keep the session, plan the reconnect.
    fn lose(&mut self, reason: PauseReason, at_least: Duration, now: Instant) -> Out {
        if self.logout_deadline.is_some() {
            return self.finish(Out::Event(Event::LoggedOut));
        }
        let wait = backoff::delay(&self.cfg.reconnect, 0, &mut self.rng).max(at_least);
        self.pause(reason, now + wait, now)
    }

    /// The live connection is gone (lost, or closed by the server): keep the
    /// session and connect again at `until`.
    fn pause(&mut self, reason: PauseReason, until: Instant, now: Instant) -> Out {
        self.session.on_disconnect(self.now_ms(now));
        self.stats.disconnects += 1;
        self.attempts = 0;
        self.link = Link::Backoff { until };
        self.rbuf.clear();
        self.wbuf.clear();
        Out::Event(Event::Paused(reason))
    }

    /// A `REDIRECT`: the next connection goes to the server it names, with
    /// the same `Hello` or `Resume`. `Some(None)`: followed, keep going;
    /// `Some(Some(out))`: followed, report `out` (the live session paused);
    /// `None`: not followed (no usable address, or too many in a row), to be
    /// handled as a retryable close.
    fn redirect(&mut self, close: &pb::Close, now: Instant) -> Option<Option<Out>> {
        let to = close.redirect.as_ref()?;
        let address = match self.cfg.transport {
            Transport::Tcp => to.address.as_str(),
            Transport::WebSocket { .. } => ws_host(&to.ws_url)?,
        };
        let addr: SocketAddr = address.parse().ok()?;
        if self.redirects_in_a_row >= MAX_REDIRECTS_IN_A_ROW {
            tracing::debug!(node = %to.node, "too many redirects in a row; backing off");
            self.redirects_in_a_row = 0;
            self.use_entry(self.entry);
            return None;
        }
        self.redirects_in_a_row += 1;
        self.stats.redirects += 1;
        tracing::debug!(node = %to.node, %addr, "redirected");
        self.target = addr;
        let until = now + Duration::from_millis(u64::from(close.retry_after_ms));
        if matches!(self.link, Link::Live { .. }) {
            // Moved while playing: the session goes on there (a resume).
            let reason = PauseReason::Closed {
                code: pb::CloseCode::Redirect,
                message: close.message.clone(),
                retry_after_ms: close.retry_after_ms,
            };
            return Some(Some(self.pause(reason, until, now)));
        }
        self.rbuf.clear();
        self.wbuf.clear();
        self.link = Link::Backoff { until };
        Some(None)
    }

    /// Goes back to entry point `i` (wrapping) for the next connection.
    fn use_entry(&mut self, i: usize) {
        let n = 1 + self.cfg.other_addrs.len();
        self.entry = i % n;
        self.target = match self.entry {
            0 => self.cfg.addr,
            k => self.cfg.other_addrs[k - 1],
        };
    }

    /// A connect or handshake attempt failed: back off, or give up. `None`
    /// means "keep going".
    fn fail_attempt(&mut self, last: String, at_least: Duration) -> Option<Out> {
        self.stats.connect_failures += 1;
        self.attempts += 1;
        // The next attempt goes to the next entry point: the server this one
        // went to may be down (a redirect's target, or one of a cluster's).
        self.use_entry(self.entry + 1);
        self.rbuf.clear();
        self.wbuf.clear();
        if self.attempts >= self.cfg.reconnect.max_attempts {
            let attempts = self.attempts;
            return Some(self.finish(Out::Error(ClientError::GaveUp { attempts, last })));
        }
        tracing::debug!(attempt = self.attempts, %last, "connect attempt failed");
        let wait = backoff::delay(&self.cfg.reconnect, self.attempts, &mut self.rng).max(at_least);
        self.link = Link::Backoff {
            until: Instant::now() + wait,
        };
        None
    }

    /// The session is gone: start a new one with the same login, right
    /// away. What the old one had not acknowledged is dropped (counted in
    /// the event), since a new session's numbering starts over.
    fn relogin(&mut self, now: Instant) -> Option<Out> {
        let dropped = self.session.unacked_inputs();
        tracing::debug!(dropped, "resume refused: logging in again");
        self.session = ClientSession::new(self.cfg.session.clone());
        self.relogging = Some(self.relogging.unwrap_or(0) + dropped);
        self.rbuf.clear();
        self.wbuf.clear();
        self.link = Link::Backoff { until: now };
        None
    }

    fn finish(&mut self, out: Out) -> Out {
        self.link = Link::Done;
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
        out
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = match self.link {
            Link::Backoff { .. } => "backoff",
            Link::Connecting { .. } => "connecting",
            Link::Handshake { .. } => "handshake",
            Link::Live { .. } => "live",
            Link::Done => "done",
        };
        f.debug_struct("Client")
            .field("addr", &self.cfg.addr)
            .field("link", &link)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

//! The connection gate: what a connection may send before it is bound to a
//! shard, and how much it may send after, as plain data.
//!
//! An I/O thread holds one [`Gate`] per connection and asks it about every
//! decoded client frame; the gate answers with a [`Step`]: forward this to
//! that shard, drop it, or close the connection with this code, this retry
//! hint and this strike against the peer's address. It holds no socket,
//! clock or lock: `now` comes in, and the shared state a first frame needs
//! (protect mode, the login rates, credentials, the account directory) is
//! reached through an [`Admission`] whose every method returns at once. The
//! I/O thread keeps the sockets, buffers, rings, metrics and the guard's
//! lock, and carries out what the gate decided.
//!
//! ```text
//!  accepted ──Hello──► welcoming ──Welcome queued──► bound ──Input / Ack──► allowance:
//!  (1 frame      │     (0 frames)                    (all frames)            pass / drop / flood
//!   parsed)      └──────Resume──────────────────────► bound
//!     │
//!     └── anything else first, or nothing by the deadline: close (+ strike)
//! ```
//!
//! The rules, cheapest question first:
//!
//! - The first frame must be `Hello` or `Resume`; anything else closes with
//!   `PROTOCOL_ERROR` and a strike, and so does a second `Hello` / `Resume`.
//! - A `Hello` is refused in protect mode (`SERVER_BUSY` with a retry hint),
//!   then over the login rate (`RATE_LIMITED` with the wait), then for a
//!   protocol version this server does not speak, then for credentials that
//!   do not verify. A `Resume` is admitted in protect mode: it brings an
//!   existing player back and costs no storage.
//! - After a `Hello` nothing more is parsed until the shard's `Welcome` is
//!   queued ([`Gate::welcomed`]): the shard drops messages for a login still
//!   loading its character, so the frames a client pipelines behind its
//!   Hello wait unparsed. After a `Resume` they flow at once.
//! - Inputs and acks spend the connection's [`InputAllowance`]; over it they
//!   are dropped, and a sustained flood meets the [`FloodAction`].
//! - A connection that sends no first frame within `handshake_timeout_ms`
//!   is closed with `HANDSHAKE_TIMEOUT` and a strike.

use tether_proto::pb::{self, client_envelope::Msg, CloseCode};
use tether_proto::{decode_envelope, DecodeError, PROTOCOL_VERSION};

use crate::engine::SESSION_SHARD_SHIFT;
use crate::game::Game;

// ----- decoding --------------------------------------------------------------

/// One client frame as an I/O thread decoded it: the session messages, and
/// an input with the game's command already decoded by the game.
#[derive(Debug)]
pub enum Incoming<I> {
    Hello(pb::Hello),
    Resume(pb::Resume),
    /// An input: its number, a piggybacked ack (0: none) and the game's
    /// command (`None`: none sent).
    Input {
        seq: u32,
        ack: u64,
        cmd: Option<I>,
    },
    Ack(u64),
    Logout,
}

/// Decodes a client frame's payload: the engine's envelope, then for an
/// `Input` the game's command from the same bytes.
pub fn decode_incoming<G: Game>(payload: &[u8]) -> Result<Incoming<G::Input>, DecodeError> {
    let msg = decode_envelope(payload)?;
    Ok(match msg.msg {
        Some(Msg::Hello(h)) => Incoming::Hello(h),
        Some(Msg::Resume(r)) => Incoming::Resume(r),
        Some(Msg::Input(header)) => {
            let cmd = G::decode_input(payload).map_err(|e| DecodeError::Malformed(e.0))?;
            Incoming::Input {
                seq: header.seq,
                ack: header.ack,
                cmd,
            }
        }
        Some(Msg::Ack(a)) => Incoming::Ack(a.frames_received),
        Some(Msg::Logout(_)) => Incoming::Logout,
        None => return Err(DecodeError::MissingBody),
    })
}

// ----- rates -----------------------------------------------------------------

/// A token bucket: refills at `rate` tokens a second up to `burst`. Rate and
/// burst are passed in on each call, so a table of buckets stores only the
/// two fields below.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now_ms: u64) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now_ms: u64) {
        if now_ms > self.last_ms {
            let gained = (now_ms - self.last_ms) as f64 * rate / 1000.0;
            self.tokens = (self.tokens + gained).min(burst);
            self.last_ms = now_ms;
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: f64, burst: f64, now_ms: u64) -> bool {
        self.refill(rate, burst, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is there now (refills, takes nothing).
    pub fn has_token(&mut self, rate: f64, burst: f64, now_ms: u64) -> bool {
        self.refill(rate, burst, now_ms);
        self.tokens >= 1.0
    }

    /// Milliseconds until one token is there (0 if there is one now).
    pub fn wait_ms(&self, rate: f64) -> u64 {
        if self.tokens >= 1.0 || rate <= 0.0 {
            return 0;
        }
        ((1.0 - self.tokens) * 1000.0 / rate).ceil() as u64
    }

    /// Whether the bucket would be full at `now_ms` (an idle peer).
    pub fn is_full(&self, rate: f64, burst: f64, now_ms: u64) -> bool {
        let gained = now_ms.saturating_sub(self.last_ms) as f64 * rate / 1000.0;
        self.tokens + gained >= burst
    }
}

/// The per-connection input allowance, in messages (Input and Ack).
#[derive(Debug, Clone, Copy)]
pub struct InputLimit {
    /// Sustained messages a second.
    pub rate: f64,
    /// Messages that may arrive at once (a resume re-sends every
    /// unacknowledged input in one go).
    pub burst: f64,
    /// Messages over the allowance tolerated before the connection counts
    /// as flooding; this allowance refills at `rate` too, so a peer sending
    /// less than twice its rate is only ever dropped, never cut.
    pub flood_tolerance: f64,
}

/// The verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputVerdict {
    Pass,
    /// Over the allowance: drop it (count it).
    Drop,
    /// Over the allowance and the flood tolerance is spent.
    Flood,
}

/// One connection's input allowance: two token buckets, no allocation.
#[derive(Debug, Clone, Copy)]
pub struct InputAllowance {
    bucket: TokenBucket,
    excess: TokenBucket,
}

impl InputAllowance {
    pub fn new(limit: &InputLimit, now_ms: u64) -> InputAllowance {
        InputAllowance {
            bucket: TokenBucket::full(limit.burst, now_ms),
            excess: TokenBucket::full(limit.flood_tolerance, now_ms),
        }
    }

    pub fn check(&mut self, limit: &InputLimit, now_ms: u64) -> InputVerdict {
        if self.bucket.take(limit.rate, limit.burst, now_ms) {
            InputVerdict::Pass
        } else if self.excess.take(limit.rate, limit.flood_tolerance, now_ms) {
            InputVerdict::Drop
        } else {
            InputVerdict::Flood
        }
    }
}

/// What to do with a connection that keeps sending far over its allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodAction {
    /// Keep dropping what is over the allowance; the connection stays (its
    /// address is struck once).
    Drop,
    /// Close the connection with RATE_LIMITED; the session turns zombie and
    /// can be resumed.
    Zombie,
    /// Close the connection with RATE_LIMITED and end the session (the
    /// character is saved and leaves the world).
    Kick,
}

impl FloodAction {
    /// The names settings use, in declaration order.
    pub const NAMES: [&'static str; 3] = ["drop", "zombie", "kick"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn parse(s: &str) -> Option<FloodAction> {
        match s {
            "drop" => Some(FloodAction::Drop),
            "zombie" => Some(FloodAction::Zombie),
            "kick" => Some(FloodAction::Kick),
            _ => None,
        }
    }
}

// ----- misbehaviour ----------------------------------------------------------

/// The first frame of a connection, as far as login limits care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    Hello,
    Resume,
}

/// Misbehaviour that counts toward a ban; label of `tether_strikes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// A frame that did not decode, or over the frame cap.
    Malformed,
    /// A frame out of place (no Hello / Resume first, a second Hello).
    Protocol,
    /// No Hello / Resume within the handshake deadline.
    HandshakeTimeout,
    /// Bad credentials or protocol version.
    AuthFailed,
    /// Sustained input far over the allowance.
    InputFlood,
    /// Connected again before the retry-after of its last refusal by rate
    /// had passed (a client honouring `retry_after_ms` never does).
    IgnoredRetryAfter,
}

impl Strike {
    pub fn reason(&self) -> &'static str {
        match self {
            Strike::Malformed => "malformed",
            Strike::Protocol => "protocol",
            Strike::HandshakeTimeout => "handshake_timeout",
            Strike::AuthFailed => "auth_failed",
            Strike::InputFlood => "input_flood",
            Strike::IgnoredRetryAfter => "ignored_retry_after",
        }
    }
}

/// Everything a peer can do wrong on the wire before the engine sees it, and
/// the one place that says what it costs: the close code it is sent, the
/// strike its address earns, and the retry hint.
///
/// (What the engine refuses from a logged-in client, an ack beyond what was
/// sent or an input number that skips ahead, closes the connection with
/// `PROTOCOL_ERROR` / `INPUT_SEQ_GAP` and no strike: the session stays, for
/// a well-behaved resume.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A frame that did not decode, or over the frame cap; carries the
    /// decoder's close code (`PROTOCOL_ERROR` or `FRAME_TOO_LARGE`).
    BadFrame(CloseCode),
    /// Something other than Hello or Resume as the first frame.
    NotAHandshake,
    /// A second Hello or Resume on a connection.
    SecondHandshake,
    /// `Hello.protocol_version` is not one this server speaks.
    UnsupportedVersion,
    /// Credentials that do not verify, or an auth method not accepted.
    BadCredentials,
    /// A ticket past its expiry: an honest client with an old ticket, so no
    /// strike.
    ExpiredTicket,
    /// No Hello or Resume within the handshake deadline.
    HandshakeTimeout,
    /// Sustained input far over the allowance.
    InputFlood,
}

/// What an input flood is told to wait before coming back.
pub const FLOOD_RETRY_AFTER_MS: u32 = 1_000;

impl Misbehaviour {
    /// The code of the Close the connection is sent.
    pub fn close_code(self) -> CloseCode {
        match self {
            Misbehaviour::BadFrame(code) => code,
            Misbehaviour::NotAHandshake | Misbehaviour::SecondHandshake => CloseCode::ProtocolError,
            Misbehaviour::UnsupportedVersion => CloseCode::UnsupportedVersion,
            Misbehaviour::BadCredentials => CloseCode::AuthFailed,
            Misbehaviour::ExpiredTicket => CloseCode::TicketExpired,
            Misbehaviour::HandshakeTimeout => CloseCode::HandshakeTimeout,
            Misbehaviour::InputFlood => CloseCode::RateLimited,
        }
    }

    /// The strike the peer's address earns, if any.
    pub fn strike(self) -> Option<Strike> {
        match self {
            Misbehaviour::BadFrame(_) => Some(Strike::Malformed),
            Misbehaviour::NotAHandshake | Misbehaviour::SecondHandshake => Some(Strike::Protocol),
            Misbehaviour::UnsupportedVersion | Misbehaviour::BadCredentials => {
                Some(Strike::AuthFailed)
            }
            Misbehaviour::ExpiredTicket => None,
            Misbehaviour::HandshakeTimeout => Some(Strike::HandshakeTimeout),
            Misbehaviour::InputFlood => Some(Strike::InputFlood),
        }
    }

    /// The Close's retry hint (0: none).
    pub fn retry_after_ms(self) -> u32 {
        match self {
            Misbehaviour::InputFlood => FLOOD_RETRY_AFTER_MS,
            _ => 0,
        }
    }
}

// ----- the gate --------------------------------------------------------------

/// The gate's settings (from the server's config).
#[derive(Debug, Clone, Copy)]
pub struct GateConfig {
    /// How long a new connection has to send its Hello or Resume.
    pub handshake_timeout_ms: u64,
    /// Inputs and acks a connection may send.
    pub input_limit: InputLimit,
    /// What a sustained flood over `input_limit` gets.
    pub flood_action: FloodAction,
    /// `retry_after_ms` given to a Hello refused in protect mode.
    pub protect_retry_after_ms: u32,
}

/// Why the login rates refused a connection's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRefused {
    /// Label of `tether_logins_refused_total` (`rate_ip`, `rate_global`).
    pub reason: &'static str,
    /// When a login from this peer would be admitted again.
    pub retry_after_ms: u64,
}

/// Why a Hello's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRefused {
    /// `AUTH_FAILED`, or `TICKET_EXPIRED` for a well-signed ticket past its
    /// expiry (an honest client: no strike).
    pub code: CloseCode,
    /// The Close's text.
    pub message: &'static str,
}

/// What a login refused by a drain is told to wait: maintenance takes
/// minutes, and a client should not hammer a server that said so.
pub const DRAIN_RETRY_AFTER_MS: u32 = 30_000;

/// The shared state a connection's first frame is checked against, as the
/// driver sees it for one connection (it knows the peer's address). Every
/// method is cheap and returns at once: no storage, no waiting.
pub trait Admission {
    /// Protect mode is on: fresh logins are refused, resumes admitted.
    fn protecting(&self) -> bool;
    /// The server is drained for maintenance: fresh logins are refused,
    /// resumes admitted. None by default.
    fn draining(&self) -> bool {
        false
    }
    /// The login rates (per address and server-wide) for this connection's
    /// first frame. On `Ok` the login is counted against them, and the
    /// connection no longer counts as a pending handshake.
    fn admit_login(&mut self, kind: LoginKind, now: u64) -> Result<(), LoginRefused>;
    /// Checks a Hello's credentials; the account name on success.
    fn authenticate(&mut self, hello: &pb::Hello) -> Result<String, AuthRefused>;
    /// The shard a fresh login of `account` goes to.
    fn route_login(&mut self, account: &str) -> u16;
    /// How many shards there are (a Resume names its shard in the top bits
    /// of its session id).
    fn shards(&self) -> usize;
}

/// What the server counts for a [`Close`], besides the close itself (which
/// is counted by its code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// `tether_logins_refused_total{reason}`.
    LoginRefused(&'static str),
    /// `tether_resumes_refused_total{reason}`.
    ResumeRefused(&'static str),
    /// `tether_inputs_dropped_total{reason="rate"}`: the message that
    /// tipped a flood.
    InputDropped,
}

/// The gate closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub message: &'static str,
    /// The Close's retry hint (0: none).
    pub retry_after_ms: u32,
    /// Misbehaviour counted against the peer's address.
    pub strike: Option<Strike>,
    /// Tell the shard `Logout` before the connection closes: the session
    /// ends instead of turning zombie.
    pub logout_first: bool,
    pub count: Option<Count>,
}

impl Close {
    /// The close a misbehaviour costs (its code, strike and retry hint).
    pub fn misbehaviour(m: Misbehaviour, message: &'static str) -> Close {
        Close {
            code: m.close_code(),
            message,
            retry_after_ms: m.retry_after_ms(),
            strike: m.strike(),
            logout_first: false,
            count: None,
        }
    }

    fn refusal(code: CloseCode, message: &'static str, retry_after_ms: u32, count: Count) -> Close {
        Close {
            code,
            message,
            retry_after_ms,
            strike: None,
            logout_first: false,
            count: Some(count),
        }
    }
}

/// A message over the connection's allowance, counted in
/// `tether_inputs_dropped_total{reason="rate"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Set once per connection: its first flood under [`FloodAction::Drop`].
    pub strike: Option<Strike>,
}

/// The gate's decision on one client message.
#[derive(Debug, PartialEq)]
pub enum Step<I> {
    /// An authenticated Hello: the shard loads the account's session. The
    /// connection waits for its Welcome ([`Gate::welcomed`]).
    Login {
        shard: u16,
        account: String,
    },
    /// A Resume, for the shard its session id names.
    Resume {
        shard: u16,
        resume: pb::Resume,
    },
    /// An input for the shard. Over the allowance (`dropped`) it keeps its
    /// number, so the session's sequence stays whole, but loses its command.
    Input {
        shard: u16,
        seq: u32,
        ack: u64,
        cmd: Option<I>,
        dropped: Option<Dropped>,
    },
    Ack {
        shard: u16,
        frames_received: u64,
    },
    Logout {
        shard: u16,
    },
    /// An ack over the allowance: nothing to forward, a later ack covers it
    /// (acks are cumulative).
    Dropped(Dropped),
    /// Close the connection.
    Close(Close),
    /// The connection is closed already: nothing to do.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted; the first frame decides what follows.
    Handshake,
    /// A Hello went to the shard; the Welcome is not queued yet.
    Welcoming { shard: u16 },
    /// Logged in or resumed: frames flow to the shard.
    Bound { shard: u16 },
    /// Closed by the server or lost.
    Closed,
}

/// One connection's gate. See the module docs.
#[derive(Debug, Clone)]
pub struct Gate {
    phase: Phase,
    /// Counted by the login rates as a handshake not yet admitted.
    pending: bool,
    handshake_deadline_ms: u64,
    allowance: InputAllowance,
    /// Already struck for flooding (one strike per connection).
    flooded: bool,
}

impl Gate {
    /// A connection accepted at `now`.
    pub fn new(cfg: &GateConfig, now: u64) -> Gate {
        Gate {
            phase: Phase::Handshake,
            pending: true,
            handshake_deadline_ms: now + cfg.handshake_timeout_ms,
            allowance: InputAllowance::new(&cfg.input_limit, now),
            flooded: false,
        }
    }

    /// How many frames may be parsed now (`usize::MAX`: all there are).
    /// One before the handshake, as it decides what follows; none between a
    /// Hello and its Welcome, so pipelined frames wait unparsed.
    pub fn parse_budget(&self) -> usize {
        match self.phase {
            Phase::Handshake => 1,
            Phase::Welcoming { .. } | Phase::Closed => 0,
            Phase::Bound { .. } => usize::MAX,
        }
    }

    /// Logged in (Welcome queued) or resumed: frames flow.
    pub fn is_bound(&self) -> bool {
        matches!(self.phase, Phase::Bound { .. })
    }

    /// A Hello went to the shard and its Welcome is not queued yet.
    pub fn is_welcoming(&self) -> bool {
        matches!(self.phase, Phase::Welcoming { .. })
    }

    /// No first frame has passed the login rates yet: the connection counts
    /// as a pending handshake (evictable when too many wait, and released as
    /// one when it goes).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// The shard the connection is bound to (from its Hello or Resume on).
    pub fn shard(&self) -> Option<u16> {
        match self.phase {
            Phase::Welcoming { shard } | Phase::Bound { shard } => Some(shard),
            Phase::Handshake | Phase::Closed => None,
        }
    }

    /// When [`Gate::handle_timeout`] closes the connection, while it still
    /// has to send its first frame.
    pub fn handshake_deadline(&self) -> Option<u64> {
        (self.phase == Phase::Handshake).then_some(self.handshake_deadline_ms)
    }

    /// No first frame by the deadline: close with `HANDSHAKE_TIMEOUT` and a
    /// strike. `None` before the deadline or once the first frame came.
    pub fn handle_timeout(&mut self, now: u64) -> Option<Close> {
        if self.phase != Phase::Handshake || now < self.handshake_deadline_ms {
            return None;
        }
        Some(Close::misbehaviour(
            Misbehaviour::HandshakeTimeout,
            "no Hello or Resume in time",
        ))
    }

    /// The shard's Welcome is queued: frames flow. False if the connection
    /// was not waiting for one.
    pub fn welcomed(&mut self) -> bool {
        match self.phase {
            Phase::Welcoming { shard } => {
                self.phase = Phase::Bound { shard };
                true
            }
            _ => false,
        }
    }

    /// The connection is closing or lost. Returns the shard it was bound to,
    /// once, which is to be told.
    pub fn closed(&mut self) -> Option<u16> {
        let shard = self.shard();
        self.phase = Phase::Closed;
        shard
    }

    /// Decides what to do with one decoded client message.
    pub fn on_message<I>(
        &mut self,
        cfg: &GateConfig,
        msg: Incoming<I>,
        now: u64,
        admission: &mut impl Admission,
    ) -> Step<I> {
        let shard = match self.phase {
            Phase::Closed => return Step::Ignored,
            Phase::Handshake => return self.first(cfg, msg, now, admission),
            Phase::Welcoming { shard } | Phase::Bound { shard } => shard,
        };
        match msg {
            Incoming::Input { seq, ack, mut cmd } => {
                let dropped = match self.spend_allowance(cfg, now) {
                    Ok(dropped) => dropped,
                    Err(close) => return Step::Close(close),
                };
                if dropped.is_some() {
                    cmd = None;
                }
                Step::Input {
                    shard,
                    seq,
                    ack,
                    cmd,
                    dropped,
                }
            }
            Incoming::Ack(frames_received) => match self.spend_allowance(cfg, now) {
                Ok(None) => Step::Ack {
                    shard,
                    frames_received,
                },
                Ok(Some(dropped)) => Step::Dropped(dropped),
                Err(close) => Step::Close(close),
            },
            Incoming::Logout => Step::Logout { shard },
            Incoming::Hello(_) | Incoming::Resume(_) => Step::Close(Close::misbehaviour(
                Misbehaviour::SecondHandshake,
                "Hello / Resume only as the first frame",
            )),
        }
    }

    /// The first frame. Cheapest question first: protect mode (an atomic),
    /// the login rates (the guard), then the version, then credentials
    /// (crypto).
    fn first<I>(
        &mut self,
        cfg: &GateConfig,
        msg: Incoming<I>,
        now: u64,
        admission: &mut impl Admission,
    ) -> Step<I> {
        match msg {
            Incoming::Hello(hello) => {
                if admission.draining() {
                    return Step::Close(Close::refusal(
                        CloseCode::ServerBusy,
                        "server draining for maintenance; retry later",
                        DRAIN_RETRY_AFTER_MS,
                        Count::LoginRefused("drain"),
                    ));
                }
                if admission.protecting() {
                    return Step::Close(Close::refusal(
                        CloseCode::ServerBusy,
                        "server busy; retry later",
                        cfg.protect_retry_after_ms,
                        Count::LoginRefused("protect"),
                    ));
                }
                if let Err(close) = self.admit_login(LoginKind::Hello, now, admission) {
                    return Step::Close(close);
                }
                if hello.protocol_version != PROTOCOL_VERSION {
                    return Step::Close(Close::misbehaviour(
                        Misbehaviour::UnsupportedVersion,
                        "protocol_version must be 1",
                    ));
                }
                match admission.authenticate(&hello) {
                    Ok(account) => {
                        let shard = admission.route_login(&account);
                        self.phase = Phase::Welcoming { shard };
                        Step::Login { shard, account }
                    }
                    Err(refused) => {
                        let m = if refused.code == CloseCode::TicketExpired {
                            Misbehaviour::ExpiredTicket
                        } else {
                            Misbehaviour::BadCredentials
                        };
                        Step::Close(Close::misbehaviour(m, refused.message))
                    }
                }
            }
            Incoming::Resume(resume) => {
                if let Err(close) = self.admit_login(LoginKind::Resume, now, admission) {
                    return Step::Close(close);
                }
                let shard = resume.session_id >> SESSION_SHARD_SHIFT;
                if shard >= admission.shards() as u64 {
                    return Step::Close(Close::refusal(
                        CloseCode::ResumeRefused,
                        "resume refused",
                        0,
                        Count::ResumeRefused("unknown_session"),
                    ));
                }
                let shard = shard as u16;
                self.phase = Phase::Bound { shard };
                Step::Resume { shard, resume }
            }
            Incoming::Input { .. } | Incoming::Ack(_) | Incoming::Logout => {
                Step::Close(Close::misbehaviour(
                    Misbehaviour::NotAHandshake,
                    "expected Hello or Resume first",
                ))
            }
        }
    }

    /// The login rates; a refusal closes with `RATE_LIMITED` and the wait.
    fn admit_login(
        &mut self,
        kind: LoginKind,
        now: u64,
        admission: &mut impl Admission,
    ) -> Result<(), Close> {
        match admission.admit_login(kind, now) {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(refused) => Err(Close::refusal(
                CloseCode::RateLimited,
                "too many logins; retry later",
                // Never 0: a refusal by rate always says when to come back.
                refused.retry_after_ms.clamp(1, u32::MAX as u64) as u32,
                Count::LoginRefused(refused.reason),
            )),
        }
    }

    /// One Input or Ack against the allowance: `Ok(None)` passes,
    /// `Ok(Some(_))` is dropped, `Err` is a flood that closes.
    fn spend_allowance(&mut self, cfg: &GateConfig, now: u64) -> Result<Option<Dropped>, Close> {
        match self.allowance.check(&cfg.input_limit, now) {
            InputVerdict::Pass => Ok(None),
            InputVerdict::Drop => Ok(Some(Dropped { strike: None })),
            InputVerdict::Flood => match cfg.flood_action {
                FloodAction::Drop => {
                    // One strike per connection: it stays, and what it
                    // sends over the allowance from then on is dropped.
                    let first = !std::mem::replace(&mut self.flooded, true);
                    let strike = Misbehaviour::InputFlood.strike().filter(|_| first);
                    Ok(Some(Dropped { strike }))
                }
                FloodAction::Zombie | FloodAction::Kick => Err(Close {
                    logout_first: cfg.flood_action == FloodAction::Kick,
                    count: Some(Count::InputDropped),
                    ..Close::misbehaviour(Misbehaviour::InputFlood, "input over the allowance")
                }),
            },
        }
    }
}

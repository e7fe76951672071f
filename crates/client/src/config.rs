//! What a [`Client`](crate::Client) is told before it connects: where, who,
//! and every bound it keeps.

use std::net::SocketAddr;
use std::time::Duration;

use tether_session::ClientSessionConfig;

/// How the client proves who it is in `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// `dev` auth: any character name of 1-24 chars of `[A-Za-z0-9_]`.
    /// Accepted only by a server running with `auth = "dev"`.
    Dev(String),
    /// `ticket` auth: `NAME.EXPIRY_UNIX_SECONDS.HEX_HMAC_SHA256(NAME.EXPIRY)`,
    /// minted by whatever service owns the accounts.
    Ticket(String),
}

impl Login {
    /// Checks what the server would refuse anyway, so a bad name fails
    /// locally with a clear message instead of as `AUTH_FAILED`.
    pub fn validate(&self) -> Result<(), &'static str> {
        match self {
            Login::Dev(name) => {
                if !is_valid_name(name) {
                    return Err("character names are 1-24 chars of [A-Za-z0-9_]");
                }
            }
            Login::Ticket(t) => {
                if t.is_empty() || t.len() > MAX_TICKET_LEN {
                    return Err("a ticket is 1-1024 bytes");
                }
            }
        }
        Ok(())
    }
}

/// Longest ticket the client sends; real ones are about 100 bytes.
pub const MAX_TICKET_LEN: usize = 1024;

/// Whether `name` is a legal character name (1-24 chars of `[A-Za-z0-9_]`).
pub fn is_valid_name(name: &str) -> bool {
    (1..=24).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How hard the client tries to get a connection back.
///
/// Delays follow "exponential backoff with full jitter": before attempt `n`
/// (0-based) the client sleeps a uniformly random time in
/// `[0, min(max_delay, base_delay * 2^n)]`. The randomness is what keeps
/// thousands of clients that lost their sockets at the same instant (a server
/// restart, a network blip) from coming back in lockstep.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// Failed attempts in a row after which the client gives up
    /// ([`ClientError::GaveUp`](crate::ClientError::GaveUp)). Applies to the
    /// first login and to every resume; a success resets the count.
    pub max_attempts: u32,
    /// Scale of the first delays.
    pub base_delay: Duration,
    /// Cap on one delay. Keep it well under the server's resume grace
    /// (`Welcome.resume_grace_ms`) or a slow retry finds the session expired.
    pub max_delay: Duration,
    /// Whether the very first attempt after a loss also waits a jittered
    /// delay. `true` spreads a mass reconnect; `false` resumes a lone client
    /// at once.
    pub jitter_first: bool,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            // 12 attempts with these delays cover about 30 s, past the
            // default resume grace of the server.
            max_attempts: 12,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter_first: true,
        }
    }
}

/// Everything a [`Client`](crate::Client) needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's game address.
    pub addr: SocketAddr,
    /// Other servers of the same game (a cluster's), tried in turn, after
    /// `addr`, when the one in use cannot be reached. Which server holds a
    /// session is the servers' business: any of them redirects the client to
    /// the right one (`REDIRECT`, followed transparently). Empty by default.
    pub other_addrs: Vec<SocketAddr>,
    pub login: Login,
    /// Free-form client name and version for the server's logs (<= 64 bytes;
    /// longer is cut).
    pub client_name: String,
    pub reconnect: ReconnectPolicy,
    /// Bound on one TCP connect.
    pub connect_timeout: Duration,
    /// Bound on the wait for `Welcome` / `Resumed` after `Hello` / `Resume`.
    pub handshake_timeout: Duration,
    /// After `logout`, how long to wait for the server's `Close` before the
    /// client ends on its own.
    pub logout_timeout: Duration,
    /// Bytes asked of the socket per read. The read buffer keeps at least
    /// this much room, so it is also most of the client's resident memory.
    /// It grows past it only to hold one frame larger than it, and shrinks
    /// back once that frame is consumed.
    pub read_chunk: usize,
    /// Most bytes waiting to be written. Past it, `send` refuses new inputs
    /// ([`SendError::Backlog`](crate::SendError::Backlog)) and standalone
    /// acks are skipped (the next one carries the newer count anyway).
    pub max_write_backlog: usize,
    /// Session tunables: unacked input cap (1024 by default), ack cadence,
    /// keep-alive and silence timers (the last two are replaced by the
    /// server's values from `Welcome`). See `ClientSessionConfig`'s defaults.
    pub session: ClientSessionConfig,
    /// Seed of the jitter RNG; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// The server runs a game other than the MMO (the arena, say): its
    /// frames are not decoded here but handed over whole as
    /// [`Event::GameFrame`](crate::Event::GameFrame), and its commands go
    /// out through [`Client::send_raw`](crate::Client::send_raw). The
    /// session layer (login, acks, resume, exactly-once inputs) is the
    /// same. Default `false`: the MMO, typed.
    pub raw_frames: bool,
    /// When a resume is refused (`RESUME_REFUSED`: the session is gone, as
    /// after its zombie expired, or after a crash that lost it before it was
    /// saved), log in again with the same login and carry on, yielding
    /// [`Event::LoggedInAgain`](crate::Event::LoggedInAgain), instead of
    /// ending with the close. Default `true`.
    pub relogin: bool,
    /// How frames travel: plain TCP (the default), or WebSocket to the
    /// server's `ws_listen` (docs/PROTOCOL.md section 1.1).
    pub transport: Transport,
}

/// The carriage of the byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    /// An RFC 6455 WebSocket opened at `path` (e.g. `/`); the frames ride in
    /// masked binary messages.
    WebSocket { path: String },
}

/// Default bytes per read: a few hundred typical frames, while 10,000 clients
/// in one process stay under 100 MB of read buffers.
pub const DEFAULT_READ_CHUNK: usize = 8 * 1024;

/// Default write backlog cap: far above what a healthy connection holds (a
/// few frames), small enough that a stuck one costs little.
pub const DEFAULT_MAX_WRITE_BACKLOG: usize = 64 * 1024;

impl ClientConfig {
    /// A config with the defaults documented on each field.
    pub fn new(addr: SocketAddr, login: Login) -> Self {
        ClientConfig {
            addr,
            other_addrs: Vec::new(),
            login,
            client_name: concat!("tether-client/", env!("CARGO_PKG_VERSION")).to_string(),
            reconnect: ReconnectPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            logout_timeout: Duration::from_secs(3),
            read_chunk: DEFAULT_READ_CHUNK,
            max_write_backlog: DEFAULT_MAX_WRITE_BACKLOG,
            session: ClientSessionConfig::default(),
            seed: None,
            raw_frames: false,
            relogin: true,
            transport: Transport::Tcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("bot_0042"));
        assert!(is_valid_name(&"a".repeat(24)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(25)));
        assert!(!is_valid_name("bad name"));
        assert!(!is_valid_name("héros"));
    }
}

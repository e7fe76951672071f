//! Operator requests to the shards and the I/O threads: the admin API's way
//! into the world.
//!
//! Each shard and each I/O thread has a small bounded request channel
//! ([`CONTROL_CAPACITY`]); the admin thread puts a [`Request`] on it, wakes
//! the thread and awaits the answer on a oneshot. The thread answers
//! between two turns of its loop (a shard's request costs it one pass over
//! its sessions at most, an I/O thread's a few hundred `getsockopt`s), so
//! the game path takes no lock for it. A full channel answers
//! [`ControlError::Busy`] at once: an operator tool retries, it never
//! queues work behind a stuck thread.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tether_engine::SessionView;

use crate::link::{ConnRef, IoWaker, ShardWaker};

/// Requests waiting per shard; past it, [`ControlError::Busy`].
pub const CONTROL_CAPACITY: usize = 64;

/// How long the admin API waits for a shard's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Most rows a player search returns.
pub const MAX_SEARCH_ROWS: usize = 1_000;

/// What an operator asks a shard.
#[derive(Debug)]
pub enum Query {
    /// Its counts and queues.
    Status,
    /// Sessions whose account starts with `prefix` (all for ""), at most
    /// `limit`.
    Find { prefix: String, limit: usize },
    /// One account's session.
    Inspect { account: String },
    /// End one account's session (`KICKED`).
    Kick { account: String, message: String },
    /// An operators' notice to every session.
    Notice { text: String },
    /// Move one account's session to another server of the cluster.
    Move {
        account: String,
        to: tether_store::Redirect,
    },
}

/// A shard's answer.
#[derive(Debug)]
pub enum Answer {
    Status(ShardStatus),
    Players(Vec<PlayerRow>),
    Player(Option<PlayerRow>),
    Kicked(bool),
    Moved(bool),
    /// Sessions a notice went to.
    Noticed(usize),
}

/// What an operator asks an I/O thread.
#[derive(Debug)]
pub enum IoQuery {
    /// One connection's address, TCP round-trip time and write queue.
    Link { conn: ConnRef },
    /// The TCP round-trip times of up to [`RTT_SAMPLE`] connections, the
    /// next ones in turn.
    Rtts,
}

/// An I/O thread's answer.
#[derive(Debug)]
pub enum IoAnswer {
    /// `None`: the connection is gone.
    Link(Option<LinkInfo>),
    /// Smoothed round-trip times, µs.
    Rtts(Vec<u32>),
}

/// Connections an [`IoQuery::Rtts`] reads at most (a `getsockopt` each).
pub const RTT_SAMPLE: usize = 256;

/// One connection, as its I/O thread sees it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkInfo {
    pub peer: String,
    /// The kernel's smoothed round-trip time and its mean deviation, ms
    /// (`None` when the kernel would not tell).
    pub rtt_ms: Option<f64>,
    pub rtt_var_ms: Option<f64>,
    /// Bytes waiting to be written to it.
    pub write_queue_bytes: usize,
}

/// A request and where its answer goes.
#[derive(Debug)]
pub struct Request<Q = Query, A = Answer> {
    pub query: Q,
    pub reply: tokio::sync::oneshot::Sender<A>,
}

/// Wakes the thread that serves a request channel.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

impl Wake for ShardWaker {
    fn wake(&self) {
        ShardWaker::wake(self);
    }
}

impl Wake for IoWaker {
    fn wake(&self) {
        IoWaker::wake(self);
    }
}

/// One shard's state, as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    pub shard: u16,
    /// Sessions with a connection.
    pub players: u64,
    /// Sessions without one (link-dead, resumable).
    pub zombies: u64,
    /// Logins and resumes waiting for storage.
    pub loading: usize,
    /// Loads kept back (upgrade in place, or storage's queue full).
    pub loads_deferred: usize,
    /// Durable transactions waiting for their commit.
    pub commit_backlog: usize,
    /// Frames waiting for a full ring to an I/O thread.
    pub io_backlog: usize,
    /// How late the last tick started, ms.
    pub tick_lag_ms: u64,
    /// How long the last tick took, µs.
    pub tick_us: u64,
    /// The 99th percentile of the latest [`RECENT_TICKS`] ticks, µs.
    pub tick_p99_us: u64,
    /// Protect mode in force.
    pub protecting: bool,
}

/// One session, as the player search and inspection show it.
#[derive(Debug, Clone, Serialize)]
pub struct PlayerRow {
    pub account: String,
    pub shard: u16,
    pub session_id: u64,
    /// `active` (connected) or `zombie` (link-dead, resumable).
    pub link: &'static str,
    /// The last input number applied (exactly once).
    pub last_input: u32,
    /// Counted frames sent, and acknowledged by the client.
    pub frames_sent: u64,
    pub frames_acked: u64,
    /// Frames held for a resume, and let go unacknowledged past the cap.
    pub replay_depth: usize,
    pub replay_evicted: u64,
    /// The connection (a session inspection asks its I/O thread for it).
    #[serde(skip)]
    pub conn: Option<ConnRef>,
    /// Address, round-trip time, write queue; `None` for a link-dead
    /// session (and in a player search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<LinkInfo>,
}

impl PlayerRow {
    pub fn of(shard: u16, v: &SessionView) -> PlayerRow {
        PlayerRow {
            account: v.account.clone(),
            shard,
            session_id: v.id,
            link: if v.conn.is_some() { "active" } else { "zombie" },
            last_input: v.last_applied_input,
            frames_sent: v.frames_sent,
            frames_acked: v.frames_acked,
            replay_depth: v.replay_len,
            replay_evicted: v.replay_evicted,
            conn: v.conn,
            connection: None,
        }
    }
}

/// Why a shard or I/O thread did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// Its request channel is full: try again.
    Busy,
    /// It did not answer within [`ANSWER_TIMEOUT`], or it has stopped.
    NoAnswer,
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Busy => {
                f.write_str("a server thread has too many operator requests waiting")
            }
            ControlError::NoAnswer => f.write_str("a server thread did not answer in time"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The admin side: one sender per shard ([`Query`]) or per I/O thread
/// ([`IoControl`]).
pub struct Control<Q = Query, A = Answer> {
    senders: Vec<SyncSender<Request<Q, A>>>,
    wakers: Vec<Arc<dyn Wake>>,
}

/// The admin side of the I/O threads.
pub type IoControl = Control<IoQuery, IoAnswer>;

impl<Q, A> Clone for Control<Q, A> {
    fn clone(&self) -> Self {
        Control {
            senders: self.senders.clone(),
            wakers: self.wakers.clone(),
        }
    }
}

impl<Q, A> Control<Q, A> {
    /// The admin side and each thread's receiver.
    pub fn new(wakers: Vec<Arc<dyn Wake>>) -> (Self, Vec<Receiver<Request<Q, A>>>) {
        let (senders, receivers) = wakers
            .iter()
            .map(|_| std::sync::mpsc::sync_channel(CONTROL_CAPACITY))
            .unzip();
        (Control { senders, wakers }, receivers)
    }

    /// Threads served.
    pub fn threads(&self) -> u16 {
        self.senders.len() as u16
    }

    /// Asks every thread in turn (`query` makes each one's request) and
    /// returns their answers in order; the first thread that does not
    /// answer ends it.
    pub async fn ask_all(&self, query: impl Fn() -> Q) -> Result<Vec<A>, ControlError> {
        let mut answers = Vec::with_capacity(self.senders.len());
        for thread in 0..self.threads() {
            answers.push(self.ask(thread, query()).await?);
        }
        Ok(answers)
    }

    /// Asks thread `thread` and waits for the answer.
    pub async fn ask(&self, thread: u16, query: Q) -> Result<A, ControlError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sender = self
            .senders
            .get(thread as usize)
            .ok_or(ControlError::NoAnswer)?;
        match sender.try_send(Request { query, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ControlError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ControlError::NoAnswer),
        }
        self.wakers[thread as usize].wake();
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(a)) => Ok(a),
            _ => Err(ControlError::NoAnswer),
        }
    }
}

/// The 99th percentile (nearest rank) of `values`, sorted in place; 0 for
/// none.
pub fn p99(values: &mut [u32]) -> u32 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[(values.len() * 99).div_ceil(100) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ticks_give_the_p99_of_the_latest_ticks_only() {
        let mut t = RecentTicks::default();
        assert_eq!(t.p99(), 0);
        for us in 1..=100 {
            t.push(us);
        }
        assert_eq!(t.p99(), 99);
        // The slow ticks age out once RECENT_TICKS newer ones came.
        for _ in 0..RECENT_TICKS {
            t.push(7);
        }
        assert_eq!(t.p99(), 7);
        t.push(u64::MAX);
        assert_eq!(t.p99(), 7, "one tick in 128 is past the 99th percentile");
        t.push(5_000);
        assert_eq!(t.p99(), 5_000);
    }

    #[tokio::test]
    async fn a_full_channel_is_busy_at_once_and_a_gone_shard_does_not_answer() {
        let waker: Arc<dyn Wake> = ShardWaker::new(std::thread::current());
        let (control, receivers) = Control::<Query, Answer>::new(vec![waker]);
        // Fill the channel as a stuck shard would leave it.
        for _ in 0..CONTROL_CAPACITY {
            let (reply, _) = tokio::sync::oneshot::channel();
            control.senders[0]
                .try_send(Request {
                    query: Query::Status,
                    reply,
                })
                .unwrap();
        }
        assert_eq!(
            control.ask(0, Query::Status).await.unwrap_err(),
            ControlError::Busy
        );
        drop(receivers);
        assert_eq!(
            control.ask(0, Query::Status).await.unwrap_err(),
            ControlError::NoAnswer
        );
        assert_eq!(
            control.ask(7, Query::Status).await.unwrap_err(),
            ControlError::NoAnswer,
            "no such shard"
        );
    }
}

/// Ticks [`RecentTicks`] keeps: 6.4 s at the default 20 Hz.
pub const RECENT_TICKS: usize = 128;

/// The durations of a shard's latest ticks (a ring, overwritten in turn).
#[derive(Debug, Clone)]
pub struct RecentTicks {
    us: [u32; RECENT_TICKS],
    len: usize,
    next: usize,
}

impl Default for RecentTicks {
    fn default() -> RecentTicks {
        RecentTicks {
            us: [0; RECENT_TICKS],
            len: 0,
            next: 0,
        }
    }
}

impl RecentTicks {
    pub fn push(&mut self, us: u64) {
        self.us[self.next] = u32::try_from(us).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % RECENT_TICKS;
        self.len = (self.len + 1).min(RECENT_TICKS);
    }

    /// The 99th percentile (nearest rank), 0 before the first tick.
    pub fn p99(&self) -> u64 {
        let mut latest = self.us;
        u64::from(p99(&mut latest[..self.len]))
    }
}

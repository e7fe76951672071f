//! Operator requests to the shards: the admin API's way into the world.
//!
//! Each shard has a small bounded request channel ([`CONTROL_CAPACITY`]);
//! the admin thread puts a [`Request`] on it, wakes the shard and awaits
//! the answer on a oneshot. The shard answers between two turns of its
//! loop (a request costs it one pass over its sessions at most), so the
//! game path takes no lock for it. A full channel answers
//! [`ControlError::Busy`] at once: an operator tool retries, it never
//! queues work behind a stuck shard.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tether_engine::SessionView;

use crate::link::ShardWaker;

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
}

/// A shard's answer.
#[derive(Debug)]
pub enum Answer {
    Status(ShardStatus),
    Players(Vec<PlayerRow>),
    Player(Option<PlayerRow>),
    Kicked(bool),
    /// Sessions a notice went to.
    Noticed(usize),
}

/// A request and where its answer goes.
#[derive(Debug)]
pub struct Request {
    pub query: Query,
    pub reply: tokio::sync::oneshot::Sender<Answer>,
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
        }
    }
}

/// Why a shard did not answer.
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
            ControlError::Busy => f.write_str("the shard has too many operator requests waiting"),
            ControlError::NoAnswer => f.write_str("the shard did not answer in time"),
        }
    }
}

impl std::error::Error for ControlError {}

/// The admin side: one sender per shard.
#[derive(Clone)]
pub struct Control {
    senders: Vec<SyncSender<Request>>,
    wakers: Vec<Arc<ShardWaker>>,
}

impl Control {
    /// The admin side and each shard's receiver.
    pub fn new(wakers: Vec<Arc<ShardWaker>>) -> (Control, Vec<Receiver<Request>>) {
        let (senders, receivers) = wakers
            .iter()
            .map(|_| std::sync::mpsc::sync_channel(CONTROL_CAPACITY))
            .unzip();
        (Control { senders, wakers }, receivers)
    }

    pub fn shards(&self) -> u16 {
        self.senders.len() as u16
    }

    /// Asks every shard in turn (`query` makes each one's request) and
    /// returns their answers in shard order; the first shard that does not
    /// answer ends it.
    pub async fn ask_all(&self, query: impl Fn() -> Query) -> Result<Vec<Answer>, ControlError> {
        let mut answers = Vec::with_capacity(self.senders.len());
        for shard in 0..self.shards() {
            answers.push(self.ask(shard, query()).await?);
        }
        Ok(answers)
    }

    /// Asks shard `shard` and waits for the answer.
    pub async fn ask(&self, shard: u16, query: Query) -> Result<Answer, ControlError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sender = self
            .senders
            .get(shard as usize)
            .ok_or(ControlError::NoAnswer)?;
        match sender.try_send(Request { query, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ControlError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ControlError::NoAnswer),
        }
        self.wakers[shard as usize].wake();
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(a)) => Ok(a),
            _ => Err(ControlError::NoAnswer),
        }
    }
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
        let (control, receivers) = Control::new(vec![ShardWaker::new(std::thread::current())]);
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
        if self.len == 0 {
            return 0;
        }
        let mut sorted = self.us;
        let sorted = &mut sorted[..self.len];
        sorted.sort_unstable();
        let rank = (self.len * 99).div_ceil(100);
        u64::from(sorted[rank - 1])
    }
}

//! The seams between I/O threads and shard threads: the messages that cross
//! them, the bounded lock-free rings they travel on, and the wake-ups.
//!
//! Every (I/O thread, shard) pair has two single-producer single-consumer
//! rings, one each way, so no ring ever has two writers and nothing on this
//! path takes a lock. A consumer that finds its rings empty goes to sleep after
//! raising a `sleeping` flag; a producer wakes it only when that flag is up, so
//! a busy consumer costs its producers no syscall at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Thread;

use bytes::Bytes;
use tether_proto::pb;

/// Entries per ring from a shard to an I/O thread.
///
/// The shard keeps the overflow in a bounded queue of its own (see
/// `shard::OUTBOUND_OVERFLOW_CAP`). A tick sends a frame to every player
/// that sees a change at once, so this ring takes bursts: 65,536 entries of
/// 48 bytes hold a tick of the benchmark's heaviest traffic (10,000 players,
/// ~30,000 frames a tick) for 3 MiB.
pub const OUTBOUND_RING_CAPACITY: usize = 1 << 16;

/// Entries per ring from an I/O thread to a shard.
///
/// A full ring makes the I/O thread stop reading from the connections that
/// have more for that shard until there is room again (TCP pushes back on
/// the clients, nothing is dropped). Inputs arrive spread over time and the
/// shard drains its rings between ticks, so this ring needs far less than
/// the outbound one: 16,384 entries are a quarter of a second of 10,000
/// players' input at the benchmark's rate. Each entry is as large as the
/// largest [`ToShard`] (a decoded game input), ~90 bytes, and every entry
/// becomes resident memory once the ring has gone round, so the size is
/// not free.
pub const INBOUND_RING_CAPACITY: usize = 1 << 14;

/// A connection as the shards know it: its I/O thread's slot and the slot's
/// generation, so a message for a connection that has since closed (and
/// whose slot was reused) is recognised and dropped.
pub type ConnRef = tether_engine::ConnId;

/// Why a connection went away, as the I/O thread saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnLoss {
    /// EOF or reset from the peer.
    Peer,
    /// The write backlog passed its cap.
    SlowConsumer,
    /// The peer broke the protocol (the I/O thread already sent Close).
    ProtocolError,
    /// The I/O thread is shutting down.
    Shutdown,
}

/// I/O thread -> shard. `I` is the game's decoded input command.
#[derive(Debug)]
pub enum ToShard<I> {
    /// An authenticated Hello.
    Login {
        conn: ConnRef,
        account: String,
    },
    Resume {
        conn: ConnRef,
        resume: pb::Resume,
    },
    /// An input: its number, a piggybacked ack (0: none) and the game's
    /// command (`None`: dropped over the peer's allowance, or none sent).
    Input {
        conn: ConnRef,
        seq: u32,
        ack: u64,
        cmd: Option<I>,
    },
    Ack {
        conn: ConnRef,
        frames_received: u64,
    },
    Logout {
        conn: ConnRef,
    },
    /// The connection is gone; its session (if any) becomes a zombie.
    Closed {
        conn: ConnRef,
        why: ConnLoss,
    },
}

/// Shard -> I/O thread.
#[derive(Debug)]
pub enum ToIo {
    /// Queue an encoded frame (counted or control) for the connection.
    Frame { conn: ConnRef, frame: Bytes },
    /// Write `frame` (a Close message) if there is room, flush what is queued
    /// and close. No ToShard::Closed comes back for it.
    Close { conn: ConnRef, frame: Bytes },
    /// The shard has stopped; once every shard has said so, the I/O thread
    /// flushes and exits.
    ShardStopped,
}

pub use tether_engine::close_frame;

/// Wakes a shard thread that parked itself with an empty inbox.
pub struct ShardWaker {
    thread: Thread,
    sleeping: AtomicBool,
}

impl ShardWaker {
    pub fn new(thread: Thread) -> Arc<ShardWaker> {
        Arc::new(ShardWaker {
            thread,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Called by producers after pushing: unparks only a sleeping shard.
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
    }

    /// The shard is about to park: after this, it must re-check its rings
    /// before parking, so a push racing with it is not missed.
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::SeqCst);
    }
}

/// Wakes an I/O thread blocked in epoll.
pub struct IoWaker {
    waker: mio::Waker,
    polling: AtomicBool,
}

impl IoWaker {
    pub fn new(waker: mio::Waker) -> Arc<IoWaker> {
        Arc::new(IoWaker {
            waker,
            polling: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if self.polling.swap(false, Ordering::SeqCst) {
            // A failed eventfd write means the counter is saturated, which
            // already guarantees a wake-up.
            let _ = self.waker.wake();
        }
    }

    pub fn set_polling(&self, polling: bool) {
        self.polling.store(polling, Ordering::SeqCst);
    }
}

/// Everything an I/O thread needs to reach one shard.
pub struct ShardLink<I> {
    pub tx: rtrb::Producer<ToShard<I>>,
    pub rx: rtrb::Consumer<ToIo>,
    pub waker: Arc<ShardWaker>,
}

/// Everything a shard needs to reach one I/O thread.
pub struct IoLink<I> {
    pub rx: rtrb::Consumer<ToShard<I>>,
    pub tx: rtrb::Producer<ToIo>,
    pub waker: Arc<IoWaker>,
}

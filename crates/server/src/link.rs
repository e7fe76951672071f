//! The seams between I/O threads and shard threads: the messages that cross
//! them, the bounded lock-free rings they travel on, and the wake-ups.
//!
//! Every (I/O thread, shard) pair has two single-producer single-consumer
//! rings, one each way, so no ring ever has two writers and nothing on this
//! path takes a lock. A consumer that finds its rings empty goes to sleep after
//! raising a `sleeping` flag; a producer wakes it only when that flag is up, so
//! a busy consumer costs its producers no syscall at all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Thread;

use bytes::Bytes;
use tether_proto::pb;

/// Entries per ring from a shard to an I/O thread.
///
/// The shard keeps the overflow in a bounded queue of its own (see
/// `shard::OUTBOUND_OVERFLOW_CAP`). A tick sends a frame to every player
/// that sees a change at once, and the engine hands each frame over as it
/// is made, so this ring takes bursts: 65,536 entries of 48 bytes hold a
/// tick of the benchmark's heaviest traffic (10,000 players, ~500,000
/// frames a second at 10 ticks a second) for 3 MiB.
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

/// The sending end of one ring, with the messages that did not fit yet
/// kept in order behind it.
///
/// A message goes straight onto the ring while nothing waits in the spill;
/// once something does, every later message queues behind it, so the
/// consumer sees them in the order they were sent. [`Outlet::flush`] moves
/// the spill onto the ring as room appears. The spill's bound is its
/// owner's policy, since what to do when it is reached differs per side:
/// the I/O thread stops reading sockets (TCP pushes back), a shard cuts the
/// connection it was writing to (see [`Outlet::spilled`]).
pub struct Outlet<T> {
    ring: rtrb::Producer<T>,
    spill: VecDeque<T>,
    /// Something was sent since the last [`Outlet::take_touched`]: the
    /// consumer may need waking.
    touched: bool,
}

impl<T> Outlet<T> {
    pub fn new(ring: rtrb::Producer<T>) -> Outlet<T> {
        Outlet {
            ring,
            spill: VecDeque::new(),
            touched: false,
        }
    }

    /// Sends `msg` after everything sent before it: onto the ring, or into
    /// the spill when the ring is full or the spill is not empty.
    pub fn push(&mut self, msg: T) {
        self.touched = true;
        if !self.spill.is_empty() {
            self.spill.push_back(msg);
            return;
        }
        if let Err(rtrb::PushError::Full(msg)) = self.ring.push(msg) {
            self.spill.push_back(msg);
        }
    }

    /// Moves spilled messages onto the ring, oldest first, while it has
    /// room. Whatever it moves counts as sent (see [`Outlet::take_touched`]).
    pub fn flush(&mut self) {
        while let Some(msg) = self.spill.pop_front() {
            if let Err(rtrb::PushError::Full(msg)) = self.ring.push(msg) {
                self.spill.push_front(msg);
                return;
            }
            self.touched = true;
        }
    }

    /// Messages waiting in the spill (not yet on the ring).
    pub fn spilled(&self) -> usize {
        self.spill.len()
    }

    /// Whether anything was sent since the last call (then the consumer is
    /// to be woken once the turn's sending is done).
    pub fn take_touched(&mut self) -> bool {
        std::mem::take(&mut self.touched)
    }
}

/// Everything an I/O thread needs to reach one shard.
pub struct ShardLink<I> {
    pub tx: Outlet<ToShard<I>>,
    pub rx: rtrb::Consumer<ToIo>,
    pub waker: Arc<ShardWaker>,
}

/// Everything a shard needs to reach one I/O thread.
pub struct IoLink<I> {
    pub rx: rtrb::Consumer<ToShard<I>>,
    pub tx: Outlet<ToIo>,
    pub waker: Arc<IoWaker>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut rtrb::Consumer<u32>) -> Vec<u32> {
        std::iter::from_fn(|| rx.pop().ok()).collect()
    }

    #[test]
    fn a_full_ring_spills_and_everything_arrives_once_in_order() {
        let (tx, mut rx) = rtrb::RingBuffer::new(2);
        let mut out = Outlet::new(tx);
        assert!(!out.take_touched(), "nothing sent yet");
        for n in 0..5 {
            out.push(n);
        }
        assert!(out.take_touched());
        assert!(!out.take_touched(), "taken once");
        out.flush();
        assert!(
            !out.take_touched(),
            "a flush that moved nothing sent nothing"
        );
        assert_eq!(out.spilled(), 3, "two fit on the ring");

        // The consumer takes one: the next push must still queue behind
        // the spill rather than jump onto the freed slot.
        assert_eq!(rx.pop().unwrap(), 0);
        out.push(5);
        assert_eq!(out.spilled(), 4);

        assert!(out.take_touched());
        out.flush();
        assert_eq!(out.spilled(), 3, "one slot was free");
        assert!(out.take_touched(), "what a flush moves wakes the consumer");
        let mut got = drain(&mut rx);
        while out.spilled() > 0 {
            out.flush();
            got.extend(drain(&mut rx));
        }
        assert_eq!(got, vec![1, 2, 3, 4, 5]);

        // Empty spill again: straight onto the ring.
        out.push(6);
        assert_eq!(out.spilled(), 0);
        assert_eq!(drain(&mut rx), vec![6]);
    }

    #[test]
    fn flush_with_a_full_ring_keeps_the_spill_whole() {
        let (tx, mut rx) = rtrb::RingBuffer::new(1);
        let mut out = Outlet::new(tx);
        for n in 0..3 {
            out.push(n);
        }
        out.flush();
        out.flush();
        assert_eq!(out.spilled(), 2, "no room: nothing moved, nothing lost");
        assert_eq!(drain(&mut rx), vec![0]);
        out.flush();
        assert_eq!(drain(&mut rx), vec![1]);
        out.flush();
        assert_eq!(drain(&mut rx), vec![2]);
        assert_eq!(out.spilled(), 0);
    }
}

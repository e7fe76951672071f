//! Replay buffer of sent-but-unacked counted frames, held in pooled pages.
//!
//! API CONTRACT (bodies to be implemented).

use bytes::Bytes;

/// Frames per page. A page is a fixed-capacity `Vec<Bytes>` recycled through
/// the [`PagePool`].
pub const FRAMES_PER_PAGE: usize = 32;

/// A pool of replay pages shared by the sessions of one shard. Grows on demand
/// and keeps at most `max_idle` free pages, giving the rest back to the allocator.
pub struct PagePool {
    _todo: Vec<Vec<Bytes>>,
}

impl PagePool {
    pub fn new(_max_idle: usize) -> Self {
        todo!()
    }
    /// Pages currently lent to replay buffers.
    pub fn in_use(&self) -> usize {
        todo!()
    }
    /// Free pages kept for reuse.
    pub fn idle(&self) -> usize {
        todo!()
    }
}

/// Frames numbered `first ..= last`, oldest first.
pub struct ReplayBuffer {
    _todo: (),
}

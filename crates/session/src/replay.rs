//! Replay buffer of sent-but-unacked counted frames, held in pooled pages.
//!
//! A session keeps every counted frame the client has not acknowledged, so a
//! resume can re-send exactly what the client missed. Frames are `Bytes`
//! (refcounted, usually shared with every other recipient of the same event),
//! so holding one costs a pointer-sized handle, not a copy of the payload.
//!
//! The handles live in fixed-size pages lent by a [`PagePool`] that belongs to
//! a shard. A session that is caught up holds no page at all; a session that
//! falls behind borrows pages one at a time and gives them back as acks
//! arrive, so the allocator is only involved when the whole shard's backlog
//! grows past anything seen before.

use std::collections::VecDeque;

use bytes::Bytes;

/// Frames per page. A page is a fixed-capacity `Vec<Bytes>` recycled through
/// the [`PagePool`].
///
/// 32 handles of 32 bytes make a 1 KiB page: one allocation (or one pool hit)
/// per 32 frames, while a session with a small backlog pins at most 1 KiB. It
/// is also the batch the writer gathers into one `writev`, so a client that
/// acks once per batch frees a whole page per ack.
pub const FRAMES_PER_PAGE: usize = 32;

/// Idle pages a [`PagePool`] keeps by default.
///
/// 4096 pages are 4 MiB per shard: enough for a few thousand sessions to
/// refill their replay buffers after a reconnect storm without touching the
/// allocator, small enough that a burst which is over does not keep its peak
/// memory forever.
pub const DEFAULT_MAX_IDLE_PAGES: usize = 4096;

/// A pool of replay pages shared by the sessions of one shard. Grows on demand
/// and keeps at most `max_idle` free pages, giving the rest back to the allocator.
///
/// The pool only counts the pages it lends; it never owns them while they are
/// lent, so a session must give its pages back ([`ReplayBuffer::clear`],
/// [`crate::ServerSession::release`]) to the pool they came from. `in_use() == 0`
/// once every session of the shard is gone is the leak check the tests rely on.
#[derive(Debug)]
pub struct PagePool {
    free: Vec<Vec<Bytes>>,
    max_idle: usize,
    in_use: usize,
    created: u64,
    dropped: u64,
}

impl PagePool {
    pub fn new(max_idle: usize) -> Self {
        PagePool {
            free: Vec::new(),
            max_idle,
            in_use: 0,
            created: 0,
            dropped: 0,
        }
    }

    /// Pages currently lent to replay buffers.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Free pages kept for reuse.
    pub fn idle(&self) -> usize {
        self.free.len()
    }

    /// The most free pages this pool keeps.
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// Pages ever allocated (a metric: how often the pool had to grow).
    pub fn pages_created(&self) -> u64 {
        self.created
    }

    /// Pages given back to the allocator because the pool already held
    /// `max_idle` free ones.
    pub fn pages_dropped(&self) -> u64 {
        self.dropped
    }

    /// Lends an empty page, reusing a free one when there is one.
    pub(crate) fn take(&mut self) -> Vec<Bytes> {
        self.in_use += 1;
        match self.free.pop() {
            Some(page) => page,
            None => {
                self.created += 1;
                Vec::with_capacity(FRAMES_PER_PAGE)
            }
        }
    }

    /// Takes a page back. Its frame handles are dropped now (so the frames'
    /// memory is freed even while the page waits for reuse).
    pub(crate) fn give_back(&mut self, mut page: Vec<Bytes>) {
        // A page from another pool would make this one's count wrong; that is
        // a bug in the caller, not something a peer can cause.
        debug_assert!(self.in_use > 0, "page given back to a pool that lent none");
        self.in_use = self.in_use.saturating_sub(1);
        page.clear();
        if self.free.len() < self.max_idle && page.capacity() == FRAMES_PER_PAGE {
            self.free.push(page);
        } else {
            self.dropped += 1;
        }
    }
}

impl Default for PagePool {
    fn default() -> Self {
        PagePool::new(DEFAULT_MAX_IDLE_PAGES)
    }
}

/// Frames numbered `first ..= last`, oldest first.
///
/// The buffer numbers frames itself: the first frame pushed is number 1 and
/// each push takes the next number, so "frames sent" is `next() - 1`. Released
/// and evicted frames keep their numbers used; the held range only ever moves
/// forward (until [`ReplayBuffer::restart_numbering`]).
#[derive(Debug)]
pub struct ReplayBuffer {
    pages: VecDeque<Vec<Bytes>>,
    /// Frames of the front page already released (replaced by empty `Bytes`
    /// so their memory is freed before the whole page is).
    head: usize,
    /// Number of the oldest frame held (or of the next frame, when empty).
    first: u64,
    len: usize,
}

impl ReplayBuffer {
    /// An empty buffer whose first frame will be number 1.
    pub fn new() -> Self {
        ReplayBuffer {
            pages: VecDeque::new(),
            head: 0,
            first: 1,
            len: 0,
        }
    }

    /// An empty buffer whose first frame will be number `first`: the count of
    /// a session that continues one a client already counted frames of.
    pub fn starting_at(first: u64) -> Self {
        ReplayBuffer {
            first: first.max(1),
            ..ReplayBuffer::new()
        }
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pages borrowed from the pool.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Number of the oldest frame held; when empty, the number the next push
    /// gets. Every frame before it was released or evicted.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The number the next pushed frame gets.
    pub fn next(&self) -> u64 {
        self.first + self.len as u64
    }

    /// Appends a frame and returns its number.
    pub fn push(&mut self, frame: Bytes, pool: &mut PagePool) -> u64 {
        let full = self
            .pages
            .back()
            .is_none_or(|page| page.len() == FRAMES_PER_PAGE);
        if full {
            self.pages.push_back(pool.take());
        }
        self.pages
            .back_mut()
            .expect("a page with room was just ensured")
            .push(frame);
        self.len += 1;
        self.next() - 1
    }

    /// Releases every frame numbered `<= n` (the client acknowledged them).
    /// Returns how many were released.
    pub fn release_through(&mut self, n: u64, pool: &mut PagePool) -> usize {
        let mut released = 0;
        while self.len > 0 && self.first <= n {
            let front = self.pages.front_mut().expect("len > 0 means a page");
            // Drop the handle now; the slot itself goes with its page.
            front[self.head] = Bytes::new();
            self.head += 1;
            self.first += 1;
            self.len -= 1;
            released += 1;
            // A page is done once every slot it will ever hold is released:
            // it is full, or it is the last page and nothing is left.
            if self.head == front.len() && (front.len() == FRAMES_PER_PAGE || self.len == 0) {
                let page = self.pages.pop_front().expect("front exists");
                pool.give_back(page);
                self.head = 0;
            }
        }
        released
    }

    /// Lets the oldest page go, with the frames still held in it. Returns how
    /// many frames were dropped (a later resume before them needs a snapshot).
    pub fn evict_oldest_page(&mut self, pool: &mut PagePool) -> usize {
        let Some(page) = self.pages.pop_front() else {
            return 0;
        };
        let dropped = page.len() - self.head;
        self.first += dropped as u64;
        self.len -= dropped;
        self.head = 0;
        pool.give_back(page);
        dropped
    }

    /// Whether every frame numbered after `n` is still held (so a client that
    /// has received `n` frames can be caught up by replay).
    pub fn holds_all_after(&self, n: u64) -> bool {
        n < self.next() && n.saturating_add(1) >= self.first
    }

    /// Clones of the frames numbered after `n`, oldest first, or `None` when
    /// some of them are no longer held.
    pub fn frames_after(&self, n: u64) -> Option<Vec<Bytes>> {
        if !self.holds_all_after(n) {
            return None;
        }
        let skip = (n + 1 - self.first) as usize;
        Some(self.iter().skip(skip).cloned().collect())
    }

    /// The held frames, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.pages.iter().flatten().skip(self.head).take(self.len)
    }

    /// Numbers a frame without keeping it (the buffer must be empty, as
    /// after [`ReplayBuffer::clear`]): the next push gets the number after.
    pub fn skip(&mut self) -> u64 {
        debug_assert_eq!(self.len, 0, "skip only on an empty buffer");
        self.first += 1;
        self.first - 1
    }

    /// Gives every page back. Numbering continues where it was.
    pub fn clear(&mut self, pool: &mut PagePool) {
        for page in self.pages.drain(..) {
            pool.give_back(page);
        }
        self.first += self.len as u64;
        self.len = 0;
        self.head = 0;
    }

    /// Gives every page back and numbers the next frame 1 again (a new
    /// login's frames are numbered from 1).
    pub fn restart_numbering(&mut self, pool: &mut PagePool) {
        self.clear(pool);
        self.first = 1;
    }
}

impl Default for ReplayBuffer {
    fn default() -> Self {
        ReplayBuffer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(n.to_le_bytes().to_vec())
    }

    fn numbers(buf: &ReplayBuffer) -> Vec<u64> {
        buf.iter()
            .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn pool_reuses_pages_instead_of_allocating() {
        let mut pool = PagePool::new(8);
        let page = pool.take();
        assert_eq!(
            (pool.in_use(), pool.idle(), pool.pages_created()),
            (1, 0, 1)
        );
        pool.give_back(page);
        assert_eq!((pool.in_use(), pool.idle()), (0, 1));
        let again = pool.take();
        assert_eq!(pool.pages_created(), 1, "the idle page was reused");
        assert_eq!(again.capacity(), FRAMES_PER_PAGE);
        assert!(again.is_empty());
        pool.give_back(again);
    }

    #[test]
    fn pool_keeps_at_most_max_idle_pages() {
        let mut pool = PagePool::new(2);
        let pages: Vec<_> = (0..5).map(|_| pool.take()).collect();
        assert_eq!(pool.in_use(), 5);
        for page in pages {
            pool.give_back(page);
        }
        assert_eq!(
            (pool.in_use(), pool.idle(), pool.pages_dropped()),
            (0, 2, 3)
        );
    }

    #[test]
    fn frames_are_numbered_from_one_and_pages_come_from_the_pool() {
        let mut pool = PagePool::new(16);
        let mut buf = ReplayBuffer::new();
        for n in 1..=70 {
            assert_eq!(buf.push(frame(n), &mut pool), n);
        }
        assert_eq!(buf.len(), 70);
        assert_eq!(buf.pages(), 3);
        assert_eq!(pool.in_use(), 3);
        assert_eq!(numbers(&buf), (1..=70).collect::<Vec<_>>());
        buf.clear(&mut pool);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(buf.next(), 71, "clearing keeps the numbering");
    }

    #[test]
    fn release_frees_whole_pages_only() {
        let mut pool = PagePool::new(16);
        let mut buf = ReplayBuffer::new();
        for n in 1..=70 {
            buf.push(frame(n), &mut pool);
        }
        assert_eq!(buf.release_through(10, &mut pool), 10);
        assert_eq!(pool.in_use(), 3, "page 1 still holds frames 11..=32");
        assert_eq!(buf.first(), 11);
        assert_eq!(buf.release_through(32, &mut pool), 22);
        assert_eq!(pool.in_use(), 2);
        assert_eq!(numbers(&buf), (33..=70).collect::<Vec<_>>());
        // Releasing what is already released is a no-op.
        assert_eq!(buf.release_through(5, &mut pool), 0);
        assert_eq!(buf.release_through(70, &mut pool), 38);
        assert_eq!(pool.in_use(), 0, "a caught-up buffer holds no page");
        assert_eq!(buf.push(frame(71), &mut pool), 71);
        assert_eq!(pool.in_use(), 1);
        buf.clear(&mut pool);
    }

    #[test]
    fn eviction_drops_the_oldest_page_and_replay_needs_what_is_left() {
        let mut pool = PagePool::new(16);
        let mut buf = ReplayBuffer::new();
        for n in 1..=70 {
            buf.push(frame(n), &mut pool);
        }
        buf.release_through(4, &mut pool);
        assert_eq!(buf.evict_oldest_page(&mut pool), 28);
        assert_eq!(buf.first(), 33);
        assert_eq!(buf.len(), 38);
        assert_eq!(pool.in_use(), 2);
        assert!(!buf.holds_all_after(4));
        assert!(!buf.holds_all_after(31));
        assert_eq!(buf.frames_after(31), None);
        assert!(buf.holds_all_after(32));
        let replay = buf.frames_after(60).unwrap();
        assert_eq!(replay, (61..=70).map(frame).collect::<Vec<_>>());
        assert_eq!(buf.frames_after(70), Some(vec![]));
        assert!(!buf.holds_all_after(71), "frames that were never sent");
        buf.clear(&mut pool);
        assert_eq!(buf.evict_oldest_page(&mut pool), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Release(u64),
        Evict,
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => Just(Op::Push),
            3 => (0u64..200).prop_map(Op::Release),
            1 => Just(Op::Evict),
            1 => Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        /// Against a plain list of (number, frame): the same frames are held,
        /// replay answers agree, and the pool lends exactly the pages the
        /// buffer holds, never more than a page beyond what its frames need.
        #[test]
        fn behaves_like_a_list_of_numbered_frames(
            ops in proptest::collection::vec(op(), 0..300),
            max_idle in 0usize..4,
        ) {
            let mut pool = PagePool::new(max_idle);
            let mut buf = ReplayBuffer::new();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Push => {
                        proptest::prop_assert_eq!(buf.push(frame(next), &mut pool), next);
                        model.push_back(next);
                        next += 1;
                    }
                    Op::Release(n) => {
                        let before = model.len();
                        model.retain(|&m| m > n);
                        proptest::prop_assert_eq!(buf.release_through(n, &mut pool), before - model.len());
                    }
                    Op::Evict => {
                        let dropped = buf.evict_oldest_page(&mut pool);
                        proptest::prop_assert!(dropped <= FRAMES_PER_PAGE);
                        for _ in 0..dropped {
                            model.pop_front();
                        }
                    }
                    Op::Clear => {
                        buf.clear(&mut pool);
                        model.clear();
                    }
                }
                proptest::prop_assert_eq!(numbers(&buf), model.iter().copied().collect::<Vec<_>>());
                proptest::prop_assert_eq!(buf.next(), next);
                proptest::prop_assert_eq!(pool.in_use(), buf.pages());
                proptest::prop_assert!(buf.pages() <= buf.len().div_ceil(FRAMES_PER_PAGE) + 1);
                proptest::prop_assert!(pool.idle() <= max_idle);
                let probe = model.front().map_or(next - 1, |f| f - 1);
                proptest::prop_assert_eq!(
                    buf.frames_after(probe),
                    Some(model.iter().map(|&n| frame(n)).collect::<Vec<_>>())
                );
                if probe > 0 && !model.is_empty() {
                    proptest::prop_assert_eq!(buf.frames_after(probe - 1), None);
                }
            }
            buf.clear(&mut pool);
            proptest::prop_assert_eq!(pool.in_use(), 0);
        }
    }

    #[test]
    fn restart_numbering_begins_at_one() {
        let mut pool = PagePool::new(16);
        let mut buf = ReplayBuffer::new();
        for n in 1..=5 {
            buf.push(frame(n), &mut pool);
        }
        buf.restart_numbering(&mut pool);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(buf.push(frame(1), &mut pool), 1);
        buf.clear(&mut pool);
    }
}

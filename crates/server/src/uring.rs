//! Batched sends through io_uring (`io_uring`, on by default): the writes of every
//! connection due in one pass of the I/O loop go to the kernel in one
//! `io_uring_enter` instead of one `writev` each.
//!
//! Each send is an `IORING_OP_SENDMSG` with `MSG_DONTWAIT`, so a full socket
//! completes at once with `EAGAIN` (as `writev` on a non-blocking socket
//! would) instead of waiting inside the ring; the batch is submitted and
//! every completion awaited before the caller touches its queues again.
//!
//! The API is safe: [`Sends`] borrows the buffers and sockets of a batch
//! until it is submitted, and the ring sees a batch's entries only inside
//! `submit`, which returns after the last completion. The only `unsafe` of
//! the server is in this module: the ring, and [`tcp_rtt`]'s one
//! `getsockopt`.

#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use io_uring::{opcode, types, IoUring};

/// A TCP socket's smoothed round-trip time and its mean deviation, µs, as
/// the kernel tracks them (`TCP_INFO`).
pub fn tcp_rtt(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // SAFETY: `tcp_info` is a C struct of plain integers, for which all
    // zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket, borrowed for the call; `info` and
    // `len` are live, writable and `len` is `info`'s size, which the kernel
    // does not write past (it writes less for an older kernel's struct).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.tcpi_rtt, info.tcpi_rttvar))
}

/// Sends per submission at most (the ring's size).
pub const BATCH: usize = 256;

/// Frames gathered into one send at most (`write_batch_frames` is capped
/// at it): 64 covers a busy player's frames of a pass many times over, and
/// the iovec array lives on the stack of every send.
pub const MAX_IOV: usize = 64;

pub struct SendBatch {
    ring: IoUring,
    /// `BATCH * MAX_IOV` slots, allocated once: the queued `msghdr`s point
    /// into it, so it never grows or moves.
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::msghdr]>,
    /// The socket of each recorded send.
    fds: Vec<RawFd>,
    queued: usize,
    results: Vec<i32>,
    /// A submission failed part-way: see `submit_and_wait_all`.
    poisoned: bool,
}

// SAFETY: the raw pointers in `iovs` and `msgs` point into the batch's own
// boxes, or at buffers that are only read by the kernel inside
// `Sends::submit`, on the thread that holds the batch; between batches they
// are stale and never read (the next batch overwrites them before it
// queues anything).
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new() -> io::Result<SendBatch> {
        let ring = IoUring::new(BATCH as u32)?;
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let empty_msg: libc::msghdr = unsafe { std::mem::zeroed() };
        Ok(SendBatch {
            ring,
            iovs: vec![empty_iov; BATCH * MAX_IOV].into_boxed_slice(),
            msgs: vec![empty_msg; BATCH].into_boxed_slice(),
            fds: Vec::with_capacity(BATCH),
            queued: 0,
            results: Vec::with_capacity(BATCH),
            poisoned: false,
        })
    }

    /// Starts a batch of sends. Nothing reaches the ring before
    /// [`Sends::submit`], which waits for every send: the buffers and
    /// sockets only need to live as long as the `Sends`, which the borrow
    /// checker holds them to. A `Sends` dropped unsubmitted sends nothing.
    ///
    /// Panics on a batch whose last submission failed: it is dropped, not
    /// reused.
    pub fn start<'a>(&'a mut self) -> Sends<'a> {
        assert!(!self.poisoned, "a failed io_uring batch is not reused");
        self.queued = 0;
        self.fds.clear();
        Sends {
            batch: self,
            _borrows: PhantomData,
        }
    }

    /// Records one send in the arrays the ring will read; nothing is
    /// queued in the ring yet.
    fn record<'a>(&mut self, fd: RawFd, bufs: impl Iterator<Item = &'a [u8]>) -> usize {
        assert!(self.queued < BATCH, "push on a full batch");
        let i = self.queued;
        self.fds.push(fd);
        let slots = &mut self.iovs[i * MAX_IOV..(i + 1) * MAX_IOV];
        let mut n = 0;
        for (slot, buf) in slots.iter_mut().zip(bufs) {
            slot.iov_base = buf.as_ptr() as *mut libc::c_void;
            slot.iov_len = buf.len();
            n += 1;
        }
        let msg = &mut self.msgs[i];
        msg.msg_iov = slots.as_mut_ptr();
        msg.msg_iovlen = n;
        self.queued += 1;
        i
    }

    /// Queues the recorded sends in the ring. Only [`Sends::submit`] calls
    /// it, while the buffers and sockets are still borrowed.
    fn enqueue(&mut self) {
        let mut sq = self.ring.submission();
        for (i, &fd) in self.fds.iter().enumerate() {
            let msg = &self.msgs[i];
            let entry = opcode::SendMsg::new(types::Fd(fd), msg as *const libc::msghdr)
                .flags(libc::MSG_DONTWAIT as u32 | libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(i as u64);
            // SAFETY: the entry points at `self.msgs[i]` and `self.iovs`,
            // which live as long as `self` and do not move, and through
            // them at buffers and a socket that the `Sends` calling this
            // borrows until `submit` has waited for every completion. The
            // ring has room: a batch holds at most BATCH sends and the ring
            // holds BATCH, and every entry is completed before the next
            // batch starts.
            unsafe {
                sq.push(&entry)
                    .expect("the submission queue holds a whole batch");
            }
        }
    }

    /// Submits the queued sends and waits for all of them.
    fn submit_and_wait_all(&mut self) -> io::Result<&[i32]> {
        let n = self.queued;
        self.results.clear();
        self.results.resize(n, -libc::ECANCELED);
        if n == 0 {
            return Ok(&self.results);
        }
        let mut done = 0;
        let mut submitted = false;
        while done < n {
            let want = if submitted { 1 } else { n };
            match self.ring.submit_and_wait(want) {
                Ok(_) => submitted = true,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    // Sends may be left in the ring, pointing at buffers
                    // whose borrow ends with this call: the batch is never
                    // used again (the caller drops it and writes with
                    // `writev`).
                    self.poisoned = true;
                    return Err(e);
                }
            }
            for cqe in self.ring.completion() {
                if let Some(r) = self.results.get_mut(cqe.user_data() as usize) {
                    *r = cqe.result();
                    done += 1;
                }
            }
        }
        self.queued = 0;
        Ok(&self.results)
    }
}

/// One batch of sends in the making; see [`SendBatch::start`].
///
/// `'a` is how long the buffers and sockets of its sends are borrowed: at
/// least until [`Sends::submit`] returns, so none can be freed, changed or
/// closed while the kernel may read it.
pub struct Sends<'a> {
    batch: &'a mut SendBatch,
    _borrows: PhantomData<(&'a [u8], BorrowedFd<'a>)>,
}

impl<'a> Sends<'a> {
    /// Adds one send of `bufs` (the first [`MAX_IOV`]) on `fd`. Returns its
    /// index in [`Sends::submit`]'s results. Panics on a full batch.
    pub fn push(&mut self, fd: BorrowedFd<'a>, bufs: impl Iterator<Item = &'a [u8]>) -> usize {
        self.batch.record(fd.as_raw_fd(), bufs)
    }

    /// Hands the sends to the kernel in one submission and waits for all of
    /// them. Result `i` is what send `i` returned: bytes written, or
    /// `-errno`.
    pub fn submit(self) -> io::Result<&'a [i32]> {
        let batch = self.batch;
        batch.enqueue();
        batch.submit_and_wait_all()
    }
}

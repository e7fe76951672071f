//! Batched sends through io_uring (`io_uring`, on by default): the writes of every
//! connection due in one pass of the I/O loop go to the kernel in one
//! `io_uring_enter` instead of one `writev` each.
//!
//! Each send is an `IORING_OP_SENDMSG` with `MSG_DONTWAIT`, so a full socket
//! completes at once with `EAGAIN` (as `writev` on a non-blocking socket
//! would) instead of waiting inside the ring; the batch is submitted and
//! every completion awaited before the caller touches its queues again. The
//! only `unsafe` of the server is here.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

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
    queued: usize,
    results: Vec<i32>,
}

// SAFETY: the raw pointers in `iovs` and `msgs` point into the batch's own
// boxes, or at buffers that are only in use between a `push` and the
// `submit` that follows it on the same thread; a batch is handed to another
// thread (the I/O thread it belongs to) only before its first push.
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
            queued: 0,
            results: Vec::with_capacity(BATCH),
        })
    }

    pub fn is_full(&self) -> bool {
        self.queued == BATCH
    }

    /// Queues one send of `bufs` (at most [`MAX_IOV`]) on `fd`. Returns its
    /// index in the next [`SendBatch::submit`]'s results.
    ///
    /// # Safety
    ///
    /// `fd` and every buffer must stay open and unchanged until `submit`
    /// returns: the kernel reads them then.
    pub unsafe fn push<'a>(&mut self, fd: RawFd, bufs: impl Iterator<Item = &'a [u8]>) -> usize {
        assert!(self.queued < BATCH, "push on a full batch");
        let i = self.queued;
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
        let entry = opcode::SendMsg::new(types::Fd(fd), msg as *const libc::msghdr)
            .flags(libc::MSG_DONTWAIT as u32 | libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(i as u64);
        // SAFETY: the entry points at `self.msgs[i]` and `self.iovs`, which
        // live as long as `self` and do not move; the buffers they point at
        // are the caller's promise above. The ring has room: at most BATCH
        // entries are queued between submissions and it holds BATCH.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .expect("the submission queue holds a whole batch");
        }
        self.queued += 1;
        i
    }

    /// Submits the queued sends and waits for all of them. Result `i` is
    /// what send `i` returned: bytes written, or `-errno`.
    pub fn submit(&mut self) -> io::Result<&[i32]> {
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
                    self.queued = 0;
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

//! Banned sources dropped by the kernel, below accept.
//!
//! A ban refuses an address at accept ([`crate::guard::Guard::admit`]), but
//! by then the kernel has spent a handshake on the connection and the
//! server still spends an accept, a write and a close: at tens of thousands
//! of connects a second that is most of the flood's cost. So an address
//! that keeps connecting while banned (`ban_filter_after` refusals) goes
//! into a classic BPF socket filter on the game listener, which drops its
//! SYNs before any of that happens; the flooder's connects hang in
//! `SYN_SENT` on its own side. The address leaves the filter when its ban
//! ends (expiry at the guard's once-a-second sweep, or an operator's lift).
//!
//! The program, for IPv4 packets that are a bare SYN (everything else is
//! accepted at once, in a few instructions):
//!
//! ```text
//!   ldb [net+0]; and #0xf0; jeq #0x40 ?next : accept      IPv4?
//!   ldb [13];    and #0x12; jeq #0x02 ?next : accept      SYN without ACK?
//!   ld  [net+12]                                          source address
//!   jeq #a1 ?drop1 ; jeq #a2 ?drop1 ; ... ; drop1: ret #0 (chunks of ≤ 200)
//!   ...
//!   accept: ret #-1
//! ```
//!
//! For a TCP socket the kernel runs the filter with the packet starting at
//! the TCP header (offset 13 is the flags byte); the IP header is reached
//! through `SKF_NET_OFF`. Accepted connections inherit the listener's
//! filter, so while one is attached each admitted socket drops its copy
//! (one `setsockopt`), which keeps old programs from being pinned in kernel
//! memory by long-lived connections.
//!
//! At most [`MAX_FILTERED`] addresses (longest ban left first) are in the
//! program; the rest, and IPv6 bans, are refused at accept as before.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use socket2::{SockFilter, SockRef};

/// Addresses in the program at most: 1024 compares plus a few instructions,
/// well under the kernel's 4096-instruction limit, about 8 KB of socket
/// option memory.
pub const MAX_FILTERED: usize = 1024;

/// Compares per chunk; a conditional jump reaches at most 255 instructions.
const CHUNK: usize = 200;

const LDB_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LDW_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// `SKF_NET_OFF` + `off`: a load from the network (IP) header.
const fn net(off: i32) -> u32 {
    (libc::SKF_NET_OFF + off) as u32
}

/// One instruction, as the program is built and as tests read it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The filter dropping bare SYNs from `banned` (at most [`MAX_FILTERED`]
/// are used). Pure: built and checked without a socket.
pub fn program(banned: &[Ipv4Addr]) -> Vec<Insn> {
    let banned = &banned[..banned.len().min(MAX_FILTERED)];
    let chunks = banned.len().div_ceil(CHUNK);
    // Prologue (9) + one compare per address + one drop per chunk + accept.
    let total = 9 + banned.len() + chunks + 1;
    let accept = (total - 1) as u32;
    let mut p = Vec::with_capacity(total);
    // `ja` jumps are relative to the next instruction.
    let ja_accept = |at: usize| insn(JA, 0, 0, accept - at as u32 - 1);
    p.push(insn(LDB_ABS, 0, 0, net(0)));
    p.push(insn(AND_K, 0, 0, 0xf0));
    p.push(insn(JEQ_K, 1, 0, 0x40));
    p.push(ja_accept(3));
    p.push(insn(LDB_ABS, 0, 0, 13));
    p.push(insn(AND_K, 0, 0, 0x12));
    p.push(insn(JEQ_K, 1, 0, 0x02));
    p.push(ja_accept(7));
    p.push(insn(LDW_ABS, 0, 0, net(12)));
    for chunk in banned.chunks(CHUNK) {
        let m = chunk.len();
        for (i, ip) in chunk.iter().enumerate() {
            // Match: to this chunk's drop. Miss: on, or over the drop
            // after the chunk's last compare.
            let to_drop = (m - 1 - i) as u8;
            let jf = u8::from(i == m - 1);
            p.push(insn(JEQ_K, to_drop, jf, u32::from(*ip)));
        }
        p.push(insn(RET_K, 0, 0, 0));
    }
    p.push(insn(RET_K, 0, 0, u32::MAX));
    debug_assert_eq!(p.len(), total);
    p
}

/// Runs `prog` over a packet as the kernel would for a TCP socket: `ip` is
/// the IPv4 header, `tcp` the TCP header. Returns the verdict (0: drop).
/// For tests; supports exactly the instructions [`program`] emits.
#[cfg(test)]
pub fn run(prog: &[Insn], ip: &[u8], tcp: &[u8]) -> u32 {
    let load = |k: u32, width: usize| -> Option<u32> {
        let (buf, off) = if (k as i32) < 0 {
            (ip, (k as i32 - libc::SKF_NET_OFF) as usize)
        } else {
            (tcp, k as usize)
        };
        let b = buf.get(off..off + width)?;
        Some(b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)))
    };
    let (mut a, mut pc) = (0u32, 0usize);
    while let Some(i) = prog.get(pc) {
        pc += 1;
        match i.code {
            LDB_ABS => a = load(i.k, 1).unwrap_or_else(|| panic!("short packet at {pc}")),
            LDW_ABS => a = load(i.k, 4).unwrap_or_else(|| panic!("short packet at {pc}")),
            AND_K => a &= i.k,
            JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JA => pc += i.k as usize,
            RET_K => return i.k,
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
    panic!("fell off the end of the program");
}

/// What the listener carries now. Shared by the I/O threads (they all
/// accept on one socket) behind the guard's lock order: guard, then this.
#[derive(Debug, Default)]
pub struct KernelFilter {
    applied_epoch: u64,
    attached: bool,
    /// Attaching failed once (logged); the accept-time refusal carries on.
    broken: bool,
}

impl KernelFilter {
    /// Whether accepted sockets inherit a filter (and should drop it).
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Puts `banned` on `listener` if the guard's `epoch` moved since the
    /// last call. An empty set detaches the filter. Returns the number of
    /// addresses now filtered, or None if nothing changed.
    pub fn sync(
        &mut self,
        listener: &impl AsFd,
        epoch: u64,
        banned: impl FnOnce() -> Vec<Ipv4Addr>,
    ) -> Option<usize> {
        if self.broken || epoch == self.applied_epoch {
            return None;
        }
        self.applied_epoch = epoch;
        let sock = SockRef::from(listener);
        let banned = banned();
        if banned.is_empty() {
            if self.attached {
                let _ = sock.detach_filter();
                self.attached = false;
            }
            return Some(0);
        }
        let prog: Vec<SockFilter> = program(&banned)
            .iter()
            .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        match sock.attach_filter(&prog) {
            Ok(()) => {
                self.attached = true;
                Some(banned.len().min(MAX_FILTERED))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot attach the ban filter to the listener; banned addresses are refused at accept only");
                self.broken = true;
                self.attached = false;
                let _ = sock.detach_filter();
                Some(0)
            }
        }
    }
}

/// Drops the filter an accepted socket inherited from the listener.
pub fn detach_inherited(stream: &impl AsFd) {
    let _ = SockRef::from(stream).detach_filter();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: Ipv4Addr) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[9] = 6;
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&[127, 0, 0, 1]);
        h
    }

    fn tcp(flags: u8) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[12] = 5 << 4;
        h[13] = flags;
        h
    }

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    fn addrs(n: usize) -> Vec<Ipv4Addr> {
        (0..n as u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i * 7 + 1))
            .collect()
    }

    #[test]
    fn drops_only_bare_syns_from_listed_addresses() {
        let banned = addrs(3);
        let p = program(&banned);
        for ip in &banned {
            assert_eq!(run(&p, &ipv4(*ip), &tcp(SYN)), 0, "{ip}");
            assert_ne!(run(&p, &ipv4(*ip), &tcp(ACK)), 0, "ACK from {ip}");
            assert_ne!(run(&p, &ipv4(*ip), &tcp(SYN | ACK)), 0);
        }
        let other = Ipv4Addr::new(127, 0, 0, 1);
        assert_ne!(run(&p, &ipv4(other), &tcp(SYN)), 0);
    }

    #[test]
    fn every_address_of_a_full_program_is_reached() {
        // Several chunks: each compare's jump lands on its chunk's drop.
        let banned = addrs(MAX_FILTERED + 50);
        let p = program(&banned);
        assert!(p.len() <= 4096);
        for ip in &banned[..MAX_FILTERED] {
            assert_eq!(run(&p, &ipv4(*ip), &tcp(SYN)), 0, "{ip}");
        }
        // Past the cap: left to the accept-time check.
        for ip in &banned[MAX_FILTERED..] {
            assert_ne!(run(&p, &ipv4(*ip), &tcp(SYN)), 0, "{ip}");
        }
        for probe in [Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(192, 0, 2, 1)] {
            assert_ne!(run(&p, &ipv4(probe), &tcp(SYN)), 0, "{probe}");
        }
    }

    #[test]
    fn ipv6_packets_pass() {
        let p = program(&addrs(2));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        assert_ne!(run(&p, &v6, &tcp(SYN)), 0);
    }

    #[test]
    fn an_empty_list_accepts_everything() {
        let p = program(&[]);
        assert_ne!(run(&p, &ipv4(Ipv4Addr::new(10, 0, 0, 1)), &tcp(SYN)), 0);
    }
}

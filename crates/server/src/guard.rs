//! The DDoS guard: admission control and per-peer limits, as plain data.
//!
//! Nothing here touches a socket or a clock: every decision takes `now_ms`
//! from the caller (the I/O threads and the admin endpoint, which share one
//! clock), so the policy is tested deterministically below.
//!
//! ```text
//!  accept ──► Guard::admit(ip)          ban? connect rate? conns per ip? table full?
//!                                        pending handshakes over the cap?
//!  Hello / Resume ──► Guard::login(ip)  login rate per ip, global Hello / Resume rate
//!  misbehaviour ──► Guard::strike(ip)   N strikes within a window ──► temporary ban
//!  close ──► Guard::release(ip)
//!  Input / Ack ──► gate::InputAllowance per connection, no lock: pass, drop, flood
//!  shard tick ──► ProtectMode            tick lag / memory ──► protect mode on / off
//! ```
//!
//! [`Guard`] is shared by the I/O threads and the admin endpoint behind one
//! mutex ([`Defences`]). It is taken once per connection event (accept,
//! first frame, close, strike), never per message; the per-message check,
//! [`InputAllowance`](tether_engine::gate::InputAllowance), lives in the
//! connection's [`Gate`](tether_engine::gate::Gate) and takes no lock. The
//! gate also holds the rules this guard's answers feed into (which close
//! code, which strike, which retry hint).
//!
//! Every map here is bounded: the per-IP table holds at most
//! `max_tracked_ips` addresses; when it is full, idle entries are swept and,
//! if none can go, connections from addresses not in the table are refused.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::cidr::canonical;
pub use crate::cidr::{BadCidr, Cidr};
use crate::config::ConfigError;
use crate::kernel_filter::{KernelFilter, MAX_FILTERED};
pub use tether_engine::gate::{LoginKind, Strike, TokenBucket};

/// The key a peer is counted under: its IPv4 address, or its IPv6 /64 (one
/// IPv6 host usually holds a whole /64, so per-address limits would be free
/// to dodge).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The guard's limits (from the server's [`Config`](crate::config::Config)).
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Addresses exempt from the per-IP limits, strikes and bans (the global
    /// caps still apply to them).
    pub trusted: Vec<Cidr>,
    pub connect_rate_per_ip: f64,
    pub connect_burst_per_ip: f64,
    pub max_conns_per_ip: u32,
    pub max_pending_handshakes: usize,
    pub login_rate_per_ip: f64,
    pub login_burst_per_ip: f64,
    pub login_rate_global: f64,
    pub login_burst_global: f64,
    pub resume_rate_global: f64,
    pub resume_burst_global: f64,
    pub strikes_to_ban: u32,
    pub strike_window_ms: u64,
    pub ban_ms: u64,
    /// Connects a banned address may still make (each refused with
    /// `BANNED`) before the kernel drops its SYNs for the rest of the ban;
    /// 0: never (every connect is accepted and refused).
    pub ban_filter_after: u32,
    pub max_tracked_ips: usize,
}

impl GuardConfig {
    pub fn from_config(cfg: &crate::config::Config) -> Result<GuardConfig, ConfigError> {
        let trusted = cfg
            .trusted_cidrs
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Cidr::parse(s).map_err(|e| ConfigError(format!("trusted_cidrs: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GuardConfig {
            trusted,
            connect_rate_per_ip: cfg.connect_rate_per_ip,
            connect_burst_per_ip: cfg.connect_burst_per_ip as f64,
            max_conns_per_ip: cfg.max_conns_per_ip,
            max_pending_handshakes: cfg.max_pending_handshakes,
            login_rate_per_ip: cfg.login_rate_per_ip,
            login_burst_per_ip: cfg.login_burst_per_ip as f64,
            login_rate_global: cfg.login_rate_global,
            login_burst_global: cfg.login_burst_global as f64,
            resume_rate_global: cfg.resume_rate_global,
            resume_burst_global: cfg.resume_burst_global as f64,
            strikes_to_ban: cfg.strikes_to_ban,
            strike_window_ms: cfg.strike_window_ms,
            ban_ms: cfg.ban_ms,
            ban_filter_after: cfg.ban_filter_after,
            max_tracked_ips: cfg.max_tracked_ips,
        })
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// Why a new connection was refused at accept. Each is a label of
/// `tether_refused_connections_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is banned; `retry_after_ms` is what is left of the ban.
    Banned { retry_after_ms: u64 },
    /// Over the per-IP connect rate.
    ConnectRate { retry_after_ms: u64 },
    /// The address already has `max_conns_per_ip` connections open.
    PerIpConnections,
    /// The address has no login left (its Hello / Resume bucket is empty),
    /// so whatever this connection would send first would be refused:
    /// refused before any buffer is spent on it.
    LoginRate { retry_after_ms: u64 },
    /// `max_pending_handshakes` connections have not logged in yet (the
    /// caller may close its oldest one and try again).
    PendingHandshakes,
    /// The per-IP table is full of addresses that cannot be forgotten yet.
    IpTableFull,
}

impl Refusal {
    /// Every reason, in [`Refusal::index`] order (for counting without a
    /// label lookup per refusal).
    pub const REASONS: [&'static str; 6] = [
        "banned",
        "connect_rate",
        "per_ip_connections",
        "login_rate",
        "pending_handshakes",
        "ip_table_full",
    ];

    pub fn index(&self) -> usize {
        match self {
            Refusal::Banned { .. } => 0,
            Refusal::ConnectRate { .. } => 1,
            Refusal::PerIpConnections => 2,
            Refusal::LoginRate { .. } => 3,
            Refusal::PendingHandshakes => 4,
            Refusal::IpTableFull => 5,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Banned { .. } => "banned",
            Refusal::ConnectRate { .. } => "connect_rate",
            Refusal::PerIpConnections => "per_ip_connections",
            Refusal::LoginRate { .. } => "login_rate",
            Refusal::PendingHandshakes => "pending_handshakes",
            Refusal::IpTableFull => "ip_table_full",
        }
    }
}

/// Why a Hello / Resume was refused; label of `tether_logins_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Over the address's login rate.
    RateIp { retry_after_ms: u64 },
    /// Over the server's Hello or Resume rate.
    RateGlobal { retry_after_ms: u64 },
}

impl LoginRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            LoginRefusal::RateIp { .. } => "rate_ip",
            LoginRefusal::RateGlobal { .. } => "rate_global",
        }
    }

    pub fn retry_after_ms(&self) -> u64 {
        match *self {
            LoginRefusal::RateIp { retry_after_ms }
            | LoginRefusal::RateGlobal { retry_after_ms } => retry_after_ms,
        }
    }
}

/// What the guard knows about one address.
#[derive(Debug, Clone)]
struct Peer {
    conns: u32,
    connect: TokenBucket,
    login: TokenBucket,
    strikes: u32,
    strike_window_start_ms: u64,
    /// 0: not banned.
    banned_until_ms: u64,
    /// Connects refused during the current ban.
    refused_banned: u32,
    /// The last refusal by rate told the peer to wait until then.
    retry_at_ms: u64,
    /// The kernel drops this address's SYNs (see [`Guard::filter_epoch`]).
    filtered: bool,
}

impl Peer {
    fn new(cfg: &GuardConfig, now_ms: u64) -> Peer {
        Peer {
            conns: 0,
            connect: TokenBucket::full(cfg.connect_burst_per_ip, now_ms),
            login: TokenBucket::full(cfg.login_burst_per_ip, now_ms),
            strikes: 0,
            strike_window_start_ms: now_ms,
            banned_until_ms: 0,
            refused_banned: 0,
            retry_at_ms: 0,
            filtered: false,
        }
    }

    /// Ends the ban. Returns whether the address was in the kernel filter.
    fn unban(&mut self) -> bool {
        self.banned_until_ms = 0;
        self.refused_banned = 0;
        std::mem::take(&mut self.filtered)
    }
}

/// A ban as the admin endpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanInfo {
    pub ip: IpAddr,
    pub remaining_ms: u64,
    /// The kernel drops its SYNs (it kept connecting while banned).
    pub filtered: bool,
}

/// Sweeps of the per-IP table run at most this often when it is full, so a
/// full table costs one O(n) pass a second, not one per accept.
const FULL_TABLE_SWEEP_MS: u64 = 1_000;

/// Admission control and per-IP state. See the module docs.
#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    peers: HashMap<IpAddr, Peer>,
    pending: usize,
    hello_global: TokenBucket,
    resume_global: TokenBucket,
    active_bans: usize,
    bans_total: u64,
    /// Changes whenever the set of filtered addresses does.
    filter_epoch: u64,
    last_full_sweep_ms: Option<u64>,
}

impl Guard {
    pub fn new(cfg: GuardConfig, now_ms: u64) -> Guard {
        Guard {
            hello_global: TokenBucket::full(cfg.login_burst_global, now_ms),
            resume_global: TokenBucket::full(cfg.resume_burst_global, now_ms),
            cfg,
            peers: HashMap::new(),
            pending: 0,
            active_bans: 0,
            bans_total: 0,
            filter_epoch: 0,
            last_full_sweep_ms: None,
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// Connections admitted that have not sent a Hello / Resume yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Addresses banned right now (expired bans are counted out by
    /// [`Guard::sweep`] and by the next accept from that address).
    pub fn banned_ips(&self) -> usize {
        self.active_bans
    }

    /// Bans ever imposed.
    pub fn bans_total(&self) -> u64 {
        self.bans_total
    }

    pub fn tracked_ips(&self) -> usize {
        self.peers.len()
    }

    /// Banned addresses that kept connecting (`ban_filter_after` refusals)
    /// and whose SYNs the kernel should drop until the ban ends.
    pub fn filtered_ips(&self) -> usize {
        self.peers.values().filter(|p| p.filtered).count()
    }

    /// Changes whenever the set of [`Guard::filtered_v4`] addresses does,
    /// so the kernel filter is rebuilt only then.
    pub fn filter_epoch(&self) -> u64 {
        self.filter_epoch
    }

    /// Up to `max` IPv4 addresses for the kernel filter, longest ban left
    /// first. IPv6 bans stay with the accept-time check.
    pub fn filtered_v4(&self, now_ms: u64, max: usize) -> Vec<std::net::Ipv4Addr> {
        let mut v: Vec<(u64, std::net::Ipv4Addr)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.filtered && p.banned_until_ms > now_ms)
            .filter_map(|(ip, p)| match ip {
                IpAddr::V4(v4) => Some((p.banned_until_ms, *v4)),
                IpAddr::V6(_) => None,
            })
            .collect();
        v.sort_unstable_by_key(|&(until, ip)| (std::cmp::Reverse(until), ip));
        v.truncate(max);
        v.into_iter().map(|(_, ip)| ip).collect()
    }

    /// A new connection from `ip`. On `Ok` it is counted (per IP and as
    /// pending) until [`Guard::release`]. Cheapest checks first.
    pub fn admit(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let key = peer_key(ip);
        let trusted = self.cfg.is_trusted(ip);
        if !trusted {
            if let Some(peer) = self.peers.get_mut(&key) {
                if peer.banned_until_ms != 0 {
                    if now_ms < peer.banned_until_ms {
                        peer.refused_banned = peer.refused_banned.saturating_add(1);
                        let after = self.cfg.ban_filter_after;
                        if after != 0 && !peer.filtered && peer.refused_banned >= after {
                            peer.filtered = true;
                            self.filter_epoch += 1;
                        }
                        return Err(Refusal::Banned {
                            retry_after_ms: peer.banned_until_ms - now_ms,
                        });
                    }
                    if peer.unban() {
                        self.filter_epoch += 1;
                    }
                    self.active_bans -= 1;
                }
            }
        }
        if self.pending >= self.cfg.max_pending_handshakes {
            return Err(Refusal::PendingHandshakes);
        }
        if !trusted {
            if !self.peers.contains_key(&key) && !self.make_room(now_ms) {
                return Err(Refusal::IpTableFull);
            }
            let cfg = &self.cfg;
            let peer = self
                .peers
                .entry(key)
                .or_insert_with(|| Peer::new(cfg, now_ms));
            if peer.conns >= cfg.max_conns_per_ip {
                return Err(Refusal::PerIpConnections);
            }
            if !peer
                .login
                .has_token(cfg.login_rate_per_ip, cfg.login_burst_per_ip, now_ms)
            {
                return Err(Refusal::LoginRate {
                    retry_after_ms: peer.login.wait_ms(cfg.login_rate_per_ip),
                });
            }
            if !peer
                .connect
                .take(cfg.connect_rate_per_ip, cfg.connect_burst_per_ip, now_ms)
            {
                return Err(Refusal::ConnectRate {
                    retry_after_ms: peer.connect.wait_ms(cfg.connect_rate_per_ip),
                });
            }
            peer.conns += 1;
        }
        self.pending += 1;
        Ok(())
    }

    /// Whether the table has room for one more address, sweeping idle ones
    /// (at most once a second) when it is full.
    fn make_room(&mut self, now_ms: u64) -> bool {
        if self.peers.len() < self.cfg.max_tracked_ips {
            return true;
        }
        let due = self
            .last_full_sweep_ms
            .is_none_or(|t| now_ms >= t + FULL_TABLE_SWEEP_MS);
        if due {
            self.last_full_sweep_ms = Some(now_ms);
            self.sweep(now_ms);
        }
        self.peers.len() < self.cfg.max_tracked_ips
    }

    /// A connection admitted by [`Guard::admit`] sent its first Hello or
    /// Resume. On `Ok` it no longer counts as pending.
    pub fn login(&mut self, ip: IpAddr, kind: LoginKind, now_ms: u64) -> Result<(), LoginRefusal> {
        let cfg = &self.cfg;
        if !cfg.is_trusted(ip) {
            if let Some(peer) = self.peers.get_mut(&peer_key(ip)) {
                if !peer
                    .login
                    .take(cfg.login_rate_per_ip, cfg.login_burst_per_ip, now_ms)
                {
                    return Err(LoginRefusal::RateIp {
                        retry_after_ms: peer.login.wait_ms(cfg.login_rate_per_ip),
                    });
                }
            }
        }
        let (bucket, rate, burst) = match kind {
            LoginKind::Hello => (
                &mut self.hello_global,
                cfg.login_rate_global,
                cfg.login_burst_global,
            ),
            LoginKind::Resume => (
                &mut self.resume_global,
                cfg.resume_rate_global,
                cfg.resume_burst_global,
            ),
        };
        if !bucket.take(rate, burst, now_ms) {
            return Err(LoginRefusal::RateGlobal {
                retry_after_ms: bucket.wait_ms(rate),
            });
        }
        self.pending = self.pending.saturating_sub(1);
        Ok(())
    }

    /// A connection admitted by [`Guard::admit`] is gone; `pending` says
    /// whether it never got past [`Guard::login`].
    pub fn release(&mut self, ip: IpAddr, pending: bool) {
        if pending {
            self.pending = self.pending.saturating_sub(1);
        }
        if self.cfg.is_trusted(ip) {
            return;
        }
        if let Some(peer) = self.peers.get_mut(&peer_key(ip)) {
            peer.conns = peer.conns.saturating_sub(1);
        }
    }

    /// Notes a connect from `ip` refused by rate ([`Refusal::ConnectRate`],
    /// [`Refusal::LoginRate`]). True when it came before the retry-after of
    /// the previous such refusal had passed: the peer ignores the server's
    /// instructions, which the caller counts as a
    /// [`Strike::IgnoredRetryAfter`]. Other refusals: false.
    pub fn came_back_too_soon(&mut self, ip: IpAddr, refusal: &Refusal, now_ms: u64) -> bool {
        let wait = match refusal {
            Refusal::ConnectRate { retry_after_ms } | Refusal::LoginRate { retry_after_ms } => {
                *retry_after_ms
            }
            _ => return false,
        };
        let Some(peer) = self.peers.get_mut(&peer_key(ip)) else {
            return false;
        };
        let too_soon = now_ms < peer.retry_at_ms;
        peer.retry_at_ms = now_ms + wait;
        too_soon
    }

    /// Records misbehaviour by `ip`. Returns the ban's length when this
    /// strike started one.
    pub fn strike(&mut self, ip: IpAddr, _why: Strike, now_ms: u64) -> Option<u64> {
        if self.cfg.strikes_to_ban == 0 {
            return None;
        }
        let (strikes_to_ban, window, ban_ms) = (
            self.cfg.strikes_to_ban,
            self.cfg.strike_window_ms,
            self.cfg.ban_ms,
        );
        let peer = self.untrusted_peer(ip, now_ms)?;
        if peer.banned_until_ms > now_ms {
            return None; // already banned
        }
        if now_ms.saturating_sub(peer.strike_window_start_ms) > window {
            peer.strikes = 0;
            peer.strike_window_start_ms = now_ms;
        }
        peer.strikes += 1;
        if peer.strikes < strikes_to_ban {
            return None;
        }
        peer.strikes = 0;
        peer.strike_window_start_ms = now_ms;
        self.impose_ban(ip, now_ms + ban_ms.max(1));
        Some(ban_ms)
    }

    /// Bans `ip` for `duration_ms` by hand (the admin API), replacing the
    /// rest of any ban it has. False when the address is trusted
    /// (`trusted_cidrs`) or the per-IP table has no room for it.
    pub fn ban(&mut self, ip: IpAddr, duration_ms: u64, now_ms: u64) -> bool {
        if self.untrusted_peer(ip, now_ms).is_none() {
            return false;
        }
        self.impose_ban(ip, now_ms + duration_ms.max(1));
        true
    }

    /// The table entry of `ip`, made if there is room; `None` for a trusted
    /// address or a full table.
    fn untrusted_peer(&mut self, ip: IpAddr, now_ms: u64) -> Option<&mut Peer> {
        if self.cfg.is_trusted(ip) {
            return None;
        }
        let key = peer_key(ip);
        if !self.peers.contains_key(&key) && !self.make_room(now_ms) {
            return None;
        }
        let cfg = &self.cfg;
        Some(
            self.peers
                .entry(key)
                .or_insert_with(|| Peer::new(cfg, now_ms)),
        )
    }

    /// Bans the (existing) entry of `ip` until `until_ms`.
    fn impose_ban(&mut self, ip: IpAddr, until_ms: u64) {
        let Some(peer) = self.peers.get_mut(&peer_key(ip)) else {
            return;
        };
        if peer.banned_until_ms == 0 {
            self.active_bans += 1;
        }
        peer.banned_until_ms = until_ms;
        peer.refused_banned = 0;
        self.bans_total += 1;
    }

    /// Whether `ip` is banned at `now_ms`.
    pub fn is_banned(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.peers
            .get(&peer_key(ip))
            .is_some_and(|p| p.banned_until_ms > now_ms)
    }

    /// Current bans, longest remaining first.
    pub fn bans(&self, now_ms: u64) -> Vec<BanInfo> {
        let mut out: Vec<BanInfo> = self
            .peers
            .iter()
            .filter(|(_, p)| p.banned_until_ms > now_ms)
            .map(|(ip, p)| BanInfo {
                ip: *ip,
                remaining_ms: p.banned_until_ms - now_ms,
                filtered: p.filtered,
            })
            .collect();
        out.sort_by_key(|b| std::cmp::Reverse(b.remaining_ms));
        out
    }

    /// Lifts the ban on `ip` (and forgets its strikes). False if it had none.
    pub fn lift(&mut self, ip: IpAddr) -> bool {
        match self.peers.get_mut(&peer_key(ip)) {
            Some(p) if p.banned_until_ms != 0 => {
                if p.unban() {
                    self.filter_epoch += 1;
                }
                p.strikes = 0;
                self.active_bans -= 1;
                true
            }
            _ => false,
        }
    }

    /// Ends expired bans and forgets addresses with nothing left to
    /// remember: no open connection, no ban, no recent strike, full buckets.
    pub fn sweep(&mut self, now_ms: u64) {
        let cfg = &self.cfg;
        let mut ended = 0;
        let mut unfiltered = false;
        self.peers.retain(|_, p| {
            if p.banned_until_ms != 0 && p.banned_until_ms <= now_ms {
                unfiltered |= p.unban();
                ended += 1;
            }
            p.conns > 0
                || p.banned_until_ms != 0
                || (p.strikes > 0
                    && now_ms.saturating_sub(p.strike_window_start_ms) <= cfg.strike_window_ms)
                || !p
                    .connect
                    .is_full(cfg.connect_rate_per_ip, cfg.connect_burst_per_ip, now_ms)
                || !p
                    .login
                    .is_full(cfg.login_rate_per_ip, cfg.login_burst_per_ip, now_ms)
        });
        self.active_bans -= ended;
        if unfiltered {
            self.filter_epoch += 1;
        }
    }
}

/// Consecutive late ticks before a shard enters protect mode, so a single
/// hiccup (a page fault storm, a descheduled thread) does not refuse logins.
pub const PROTECT_ENTER_TICKS: u32 = 3;

/// Protect mode's triggers.
#[derive(Debug, Clone, Copy)]
pub struct ProtectConfig {
    /// A tick that starts this much later than scheduled is late.
    pub tick_lag_ms: u64,
    /// Resident memory budget in bytes (0: no memory trigger). Protect mode
    /// starts at 90 % of it and may end below 80 %.
    pub memory_budget_bytes: u64,
    /// How long the shard must be calm (ticks under half the lag threshold,
    /// memory under 80 %) before protect mode ends.
    pub calm_ms: u64,
}

/// A shard's protect mode: on when its ticks run late (or memory nears its
/// budget), off again by itself after a calm period (hysteresis).
#[derive(Debug, Clone, Default)]
pub struct ProtectMode {
    on: bool,
    late_ticks: u32,
    calm_since_ms: Option<u64>,
}

impl ProtectMode {
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// One tick's observation: how late it started, and the resident memory
    /// if it was measured. Returns the new state on a transition.
    pub fn observe(
        &mut self,
        cfg: &ProtectConfig,
        now_ms: u64,
        tick_lag_ms: u64,
        rss_bytes: Option<u64>,
    ) -> Option<bool> {
        let budget = cfg.memory_budget_bytes;
        let mem_high = budget > 0 && rss_bytes.is_some_and(|r| r >= budget / 10 * 9);
        let mem_ok = budget == 0 || rss_bytes.is_none_or(|r| r < budget / 10 * 8);
        if tick_lag_ms > cfg.tick_lag_ms {
            self.late_ticks = self.late_ticks.saturating_add(1);
        } else {
            self.late_ticks = 0;
        }
        if !self.on {
            if mem_high || self.late_ticks >= PROTECT_ENTER_TICKS {
                self.on = true;
                self.calm_since_ms = None;
                return Some(true);
            }
            return None;
        }
        let calm = tick_lag_ms <= cfg.tick_lag_ms / 2 && mem_ok && !mem_high;
        if !calm {
            self.calm_since_ms = None;
            return None;
        }
        let since = *self.calm_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= cfg.calm_ms {
            self.on = false;
            self.late_ticks = 0;
            self.calm_since_ms = None;
            return Some(false);
        }
        None
    }
}

/// An operator's override of protect mode (admin `PUT /protect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectOverride {
    /// Protect mode follows tick lag and memory.
    Auto = 0,
    /// Forced on (for example while an attack is expected).
    On = 1,
    /// Forced off.
    Off = 2,
}

impl ProtectOverride {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProtectOverride::Auto => "auto",
            ProtectOverride::On => "on",
            ProtectOverride::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<ProtectOverride> {
        match s.trim() {
            "auto" => Some(ProtectOverride::Auto),
            "on" => Some(ProtectOverride::On),
            "off" => Some(ProtectOverride::Off),
            _ => None,
        }
    }
}

/// The defences' state shared by the I/O threads, the shards and the admin
/// endpoint.
pub struct Defences {
    /// Taken per connection event, never per message.
    pub guard: Mutex<Guard>,
    /// One flag per shard: in protect mode now (set by the shard).
    protect: Vec<AtomicBool>,
    protect_override: AtomicU8,
    /// Drain for maintenance: fresh logins refused, players stay.
    draining: AtomicBool,
    /// The listener's ban filter; taken after `guard`, never before.
    kernel: Mutex<KernelFilter>,
    /// Accepted sockets inherit a filter now (read per accept, no lock).
    kernel_attached: AtomicBool,
}

impl Defences {
    pub fn new(guard: Guard, shards: usize) -> Defences {
        Defences {
            guard: Mutex::new(guard),
            protect: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            protect_override: AtomicU8::new(ProtectOverride::Auto as u8),
            draining: AtomicBool::new(false),
            kernel: Mutex::new(KernelFilter::default()),
            kernel_attached: AtomicBool::new(false),
        }
    }

    /// Brings the listener's kernel filter up to the guard's filtered bans
    /// if they changed (`guard` is this `Defences`' guard, held by the
    /// caller). Returns the number of addresses filtered when it changed.
    pub fn sync_kernel_filter(
        &self,
        guard: &Guard,
        listener: &impl std::os::fd::AsFd,
        now_ms: u64,
    ) -> Option<usize> {
        let mut k = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        let n = k.sync(listener, guard.filter_epoch(), || {
            guard.filtered_v4(now_ms, MAX_FILTERED)
        })?;
        self.kernel_attached.store(k.attached(), Ordering::Relaxed);
        Some(n)
    }

    /// Whether accepted sockets inherit the ban filter (and should drop it).
    pub fn kernel_filter_attached(&self) -> bool {
        self.kernel_attached.load(Ordering::Relaxed)
    }

    /// The guard; a panic elsewhere while it was held does not stop the
    /// defences (its state is plain counters, valid at every step).
    pub fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any shard is in protect mode (new logins are refused).
    pub fn protecting(&self) -> bool {
        self.protect.iter().any(|f| f.load(Ordering::Relaxed))
    }

    pub fn shard_protecting(&self, shard: usize) -> bool {
        self.protect
            .get(shard)
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    pub fn set_shard_protecting(&self, shard: usize, on: bool) {
        if let Some(f) = self.protect.get(shard) {
            f.store(on, Ordering::Relaxed);
        }
    }

    pub fn protect_override(&self) -> ProtectOverride {
        match self.protect_override.load(Ordering::Relaxed) {
            1 => ProtectOverride::On,
            2 => ProtectOverride::Off,
            _ => ProtectOverride::Auto,
        }
    }

    pub fn set_protect_override(&self, o: ProtectOverride) {
        self.protect_override.store(o as u8, Ordering::Relaxed);
    }

    /// Drain for maintenance: fresh logins are refused (`SERVER_BUSY`),
    /// players in the world and their resumes are not.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg() -> GuardConfig {
        GuardConfig {
            trusted: vec![Cidr::parse("127.0.0.1/32").unwrap()],
            connect_rate_per_ip: 10.0,
            connect_burst_per_ip: 5.0,
            max_conns_per_ip: 3,
            max_pending_handshakes: 100,
            login_rate_per_ip: 2.0,
            login_burst_per_ip: 2.0,
            login_rate_global: 100.0,
            login_burst_global: 4.0,
            resume_rate_global: 100.0,
            resume_burst_global: 4.0,
            strikes_to_ban: 3,
            strike_window_ms: 10_000,
            ban_ms: 60_000,
            ban_filter_after: 2,
            max_tracked_ips: 4,
        }
    }

    #[test]
    fn the_default_config_trusts_loopback_only_and_an_empty_list_nobody() {
        let guard = GuardConfig::from_config(&crate::config::Config::default()).unwrap();
        assert!(guard.is_trusted(ip("127.0.0.1")));
        assert!(guard.is_trusted(ip("::1")));
        assert!(!guard.is_trusted(ip("127.0.0.2")));
        let cfg = crate::config::Config {
            trusted_cidrs: vec![String::new()],
            ..Default::default()
        };
        let guard = GuardConfig::from_config(&cfg).unwrap();
        assert!(!guard.is_trusted(ip("127.0.0.1")));
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(
            c.contains(ip("::ffff:10.1.9.9")),
            "IPv4-mapped IPv6 counts as IPv4"
        );
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert!(host.contains(ip("127.0.0.1")));
        assert!(!host.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        assert_eq!(peer_key(ip("2001:db8::1:2")), peer_key(ip("2001:db8::ff")));
    }

    #[test]
    fn refusal_reasons_line_up_with_their_index() {
        for r in [
            Refusal::Banned { retry_after_ms: 1 },
            Refusal::ConnectRate { retry_after_ms: 1 },
            Refusal::PerIpConnections,
            Refusal::LoginRate { retry_after_ms: 1 },
            Refusal::PendingHandshakes,
            Refusal::IpTableFull,
        ] {
            assert_eq!(Refusal::REASONS[r.index()], r.reason());
        }
    }

    #[test]
    fn connect_rate_and_concurrency_are_per_address() {
        let mut g = Guard::new(cfg(), 0);
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            g.admit(a, 0).unwrap();
        }
        assert_eq!(g.admit(a, 0), Err(Refusal::PerIpConnections));
        // Another address is unaffected.
        g.admit(ip("10.0.0.2"), 0).unwrap();
        g.release(a, true);
        g.release(a, true);
        g.release(a, true);
        // Burst of 5: two tokens left of the first second.
        g.admit(a, 0).unwrap();
        g.release(a, true);
        g.admit(a, 0).unwrap();
        g.release(a, true);
        assert_eq!(
            g.admit(a, 0),
            Err(Refusal::ConnectRate {
                retry_after_ms: 100
            })
        );
        g.admit(a, 100).unwrap();
        assert_eq!(g.pending(), 2);
    }

    #[test]
    fn trusted_addresses_skip_per_ip_limits_but_not_global_ones() {
        let mut c = cfg();
        c.max_pending_handshakes = 50;
        let mut g = Guard::new(c, 0);
        let me = ip("127.0.0.1");
        for _ in 0..50 {
            g.admit(me, 0).unwrap();
        }
        assert_eq!(g.admit(me, 0), Err(Refusal::PendingHandshakes));
        for _ in 0..4 {
            g.login(me, LoginKind::Hello, 0).unwrap();
        }
        assert!(matches!(
            g.login(me, LoginKind::Hello, 0),
            Err(LoginRefusal::RateGlobal { .. })
        ));
        // Resumes have their own global bucket.
        g.login(me, LoginKind::Resume, 0).unwrap();
        for _ in 0..20 {
            assert_eq!(g.strike(me, Strike::Malformed, 0), None);
        }
        assert!(!g.is_banned(me, 0));
        assert_eq!(g.tracked_ips(), 0, "trusted addresses take no table space");
        // 127.0.0.2 is not trusted.
        assert!(!g.config().is_trusted(ip("127.0.0.2")));
    }

    #[test]
    fn login_rate_per_address() {
        let mut g = Guard::new(cfg(), 0);
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            g.admit(a, 0).unwrap();
        }
        g.login(a, LoginKind::Hello, 0).unwrap();
        g.login(a, LoginKind::Resume, 0).unwrap();
        assert_eq!(
            g.login(a, LoginKind::Hello, 0),
            Err(LoginRefusal::RateIp {
                retry_after_ms: 500
            })
        );
        assert_eq!(g.pending(), 1, "a refused login stays pending until closed");
        g.release(a, true);
        assert_eq!(g.pending(), 0);
        // With no login left, a new connection is refused at accept.
        assert_eq!(
            g.admit(a, 100),
            Err(Refusal::LoginRate {
                retry_after_ms: 400
            })
        );
        g.login(a, LoginKind::Hello, 500).unwrap();
    }

    #[test]
    fn strikes_within_a_window_ban_and_bans_expire() {
        let mut g = Guard::new(cfg(), 0);
        let a = ip("10.0.0.9");
        assert_eq!(g.strike(a, Strike::Malformed, 0), None);
        assert_eq!(g.strike(a, Strike::Malformed, 1_000), None);
        // The window (10 s) passed: counting starts again.
        assert_eq!(g.strike(a, Strike::Malformed, 20_000), None);
        assert_eq!(g.strike(a, Strike::Protocol, 21_000), None);
        assert_eq!(g.strike(a, Strike::HandshakeTimeout, 22_000), Some(60_000));
        assert_eq!(g.banned_ips(), 1);
        assert_eq!(g.bans_total(), 1);
        assert_eq!(
            g.admit(a, 30_000),
            Err(Refusal::Banned {
                retry_after_ms: 52_000
            })
        );
        assert_eq!(
            g.bans(30_000),
            vec![BanInfo {
                ip: a,
                remaining_ms: 52_000,
                filtered: false,
            }]
        );
        // Expired: admitted again, and the ban count follows.
        g.admit(a, 82_000).unwrap();
        assert_eq!(g.banned_ips(), 0);
        assert!(g.bans(82_000).is_empty());
    }

    #[test]
    fn bans_can_be_lifted_and_expire_in_sweeps() {
        let mut g = Guard::new(cfg(), 0);
        let a = ip("10.0.0.7");
        let b = ip("10.0.0.8");
        for _ in 0..3 {
            g.strike(a, Strike::AuthFailed, 0);
            g.strike(b, Strike::AuthFailed, 0);
        }
        assert_eq!(g.banned_ips(), 2);
        assert!(g.lift(a));
        assert!(!g.lift(a), "nothing left to lift");
        g.admit(a, 1).unwrap();
        assert_eq!(g.banned_ips(), 1);
        g.sweep(60_000);
        assert_eq!(g.banned_ips(), 0);
        assert!(!g.is_banned(b, 60_000));
    }

    #[test]
    fn a_banned_address_that_keeps_connecting_goes_to_the_kernel_filter() {
        let mut g = Guard::new(cfg(), 0); // ban_filter_after: 2
        let a = ip("10.0.0.5");
        let b = ip("10.0.0.6");
        let v6 = ip("2001:db8::1");
        for peer in [a, b, v6] {
            for _ in 0..3 {
                g.strike(peer, Strike::Malformed, 0);
            }
        }
        let epoch = g.filter_epoch();
        assert!(matches!(g.admit(a, 10), Err(Refusal::Banned { .. })));
        assert_eq!((g.filtered_ips(), g.filter_epoch()), (0, epoch));
        assert!(matches!(g.admit(a, 20), Err(Refusal::Banned { .. })));
        assert_eq!(g.filtered_ips(), 1);
        assert_ne!(g.filter_epoch(), epoch, "the set changed");
        let epoch = g.filter_epoch();
        assert!(matches!(g.admit(a, 30), Err(Refusal::Banned { .. })));
        assert_eq!(g.filter_epoch(), epoch, "already filtered");
        // IPv6 bans are counted but stay out of the IPv4 program.
        for t in [40, 50] {
            assert!(g.admit(v6, t).is_err());
        }
        assert_eq!(g.filtered_ips(), 2);
        assert_eq!(
            g.filtered_v4(60, 16),
            vec!["10.0.0.5".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert!(g.bans(60).iter().any(|x| x.ip == a && x.filtered));
        assert!(g.bans(60).iter().any(|x| x.ip == b && !x.filtered));
        // Lifting takes it out.
        let epoch = g.filter_epoch();
        assert!(g.lift(a));
        assert_eq!(g.filtered_ips(), 1);
        assert_ne!(g.filter_epoch(), epoch);
        assert!(g.filtered_v4(70, 16).is_empty());
        // A new ban starts counting refusals from zero.
        for _ in 0..3 {
            g.strike(a, Strike::Malformed, 100);
        }
        assert!(g.admit(a, 110).is_err());
        assert!(g.filtered_v4(120, 16).is_empty());
        assert!(g.admit(a, 130).is_err());
        assert_eq!(g.filtered_v4(140, 16).len(), 1);
        // Expiry at the sweep empties the filter.
        let epoch = g.filter_epoch();
        g.sweep(200_000);
        assert_eq!((g.filtered_ips(), g.banned_ips()), (0, 0));
        assert_ne!(g.filter_epoch(), epoch);
    }

    #[test]
    fn connecting_again_before_the_retry_after_counts_against_the_address() {
        let mut g = Guard::new(cfg(), 0); // 10 connects/s, burst 5
        let a = ip("10.0.0.3");
        for _ in 0..3 {
            let id = g.admit(a, 0);
            assert_eq!(id, Ok(()));
            g.release(a, true);
        }
        g.admit(a, 0).unwrap();
        g.release(a, true);
        g.admit(a, 0).unwrap();
        g.release(a, true);
        let r = g.admit(a, 0).unwrap_err();
        assert_eq!(
            r,
            Refusal::ConnectRate {
                retry_after_ms: 100
            }
        );
        assert!(
            !g.came_back_too_soon(a, &r, 0),
            "first refusal: told to wait"
        );
        // Back after 50 ms of a 100 ms wait: ignored.
        let r = g.admit(a, 50).unwrap_err();
        assert!(g.came_back_too_soon(a, &r, 50));
        // One that waited is admitted and nothing is held against it.
        g.admit(a, 200).unwrap();
        // Refusals that are not by rate never count.
        assert!(!g.came_back_too_soon(a, &Refusal::PerIpConnections, 200));
        assert!(
            !g.came_back_too_soon(ip("10.9.9.9"), &r, 200),
            "unknown address"
        );
    }

    #[test]
    fn the_ip_table_is_bounded_and_forgets_idle_addresses() {
        let mut g = Guard::new(cfg(), 0);
        for i in 1..=4 {
            g.admit(ip(&format!("10.0.0.{i}")), 0).unwrap();
        }
        assert_eq!(g.tracked_ips(), 4);
        assert_eq!(g.admit(ip("10.0.1.1"), 0), Err(Refusal::IpTableFull));
        // Two close and go idle; once their buckets have refilled they can
        // be forgotten, and a new address fits.
        g.release(ip("10.0.0.1"), true);
        g.release(ip("10.0.0.2"), true);
        assert_eq!(g.admit(ip("10.0.1.1"), 500), Err(Refusal::IpTableFull));
        g.admit(ip("10.0.1.1"), 1_600).unwrap();
        assert!(g.tracked_ips() <= 4);
        // A banned address is never forgotten while its ban lasts.
        let mut g = Guard::new(cfg(), 0);
        for _ in 0..3 {
            g.strike(ip("10.0.0.5"), Strike::Malformed, 0);
        }
        for t in [10_000, 20_000, 59_000] {
            g.sweep(t);
            assert!(g.is_banned(ip("10.0.0.5"), t));
        }
    }

    #[test]
    fn protect_mode_needs_sustained_lag_and_leaves_after_calm() {
        let cfg = ProtectConfig {
            tick_lag_ms: 200,
            memory_budget_bytes: 0,
            calm_ms: 5_000,
        };
        let mut p = ProtectMode::default();
        // One late tick is a hiccup.
        assert_eq!(p.observe(&cfg, 0, 500, None), None);
        assert_eq!(p.observe(&cfg, 100, 0, None), None);
        assert_eq!(p.observe(&cfg, 200, 300, None), None);
        assert_eq!(p.observe(&cfg, 300, 300, None), None);
        assert_eq!(p.observe(&cfg, 400, 300, None), Some(true));
        assert!(p.is_on());
        // Lag between half the threshold and the threshold is not calm.
        assert_eq!(p.observe(&cfg, 500, 150, None), None);
        assert_eq!(p.observe(&cfg, 10_000, 150, None), None);
        assert_eq!(p.observe(&cfg, 10_100, 10, None), None);
        assert_eq!(p.observe(&cfg, 12_000, 10, None), None);
        // A late tick restarts the calm period.
        assert_eq!(p.observe(&cfg, 13_000, 250, None), None);
        assert_eq!(p.observe(&cfg, 13_100, 10, None), None);
        assert_eq!(p.observe(&cfg, 18_099, 10, None), None);
        assert_eq!(p.observe(&cfg, 18_100, 10, None), Some(false));
        assert!(!p.is_on());
    }

    #[test]
    fn protect_mode_on_memory_with_hysteresis() {
        let cfg = ProtectConfig {
            tick_lag_ms: 200,
            memory_budget_bytes: 1000,
            calm_ms: 1_000,
        };
        let mut p = ProtectMode::default();
        assert_eq!(p.observe(&cfg, 0, 0, Some(850)), None);
        assert_eq!(p.observe(&cfg, 100, 0, Some(900)), Some(true));
        // Under 90 % but over 80 %: still on.
        assert_eq!(p.observe(&cfg, 5_000, 0, Some(850)), None);
        assert_eq!(p.observe(&cfg, 5_100, 0, Some(700)), None);
        // No measurement this tick: memory counts as unchanged-calm.
        assert_eq!(p.observe(&cfg, 5_600, 0, None), None);
        assert_eq!(p.observe(&cfg, 6_100, 0, Some(700)), Some(false));
    }
}

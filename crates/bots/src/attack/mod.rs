//! docs/BENCHMARKS.md's attack scenarios, fought beside legit players in the same
//! run: `--attack NAME --attack-rate N` works with every scenario.
//!
//! | attack | what one unit of `--attack-rate` is |
//! |---|---|
//! | `connflood` | a TCP connection opened and held, never speaking |
//! | `slowloris` | a connection that announces a frame and dribbles its payload one byte every `--attack-dribble-ms`, never finishing it |
//! | `garbage` | a connection that writes one burst of bad bytes (random bytes, an oversized or empty header, a well-sized frame of random payload) |
//! | `msgflood` | one valid `Ping` input, from `--attack-sessions` logged-in sessions sharing the rate |
//! | `loginflood` | one `Hello` with a fresh name on a new connection; the socket is dropped after `Welcome` (the session stays as a zombie), or held with `--attack-keep` |
//!
//! ```text
//!  t0 ──ramp──> window ──attack-start──> attack ──attack-duration──> end ──> window end
//!                  legit play  │  attackers run, own runtime  │  legit play  │
//!                              └─ legit rtt in its own histogram, live legit sessions
//!                                 sampled every 100 ms, server RSS every second ─┘
//! ```
//!
//! The attackers are kept apart from the legit players: they run on their
//! own thread and runtime, bind `--attack-source` addresses (never the
//! legit players' 127.0.0.1), count into their own [`flood::Counters`], and
//! hold at most `--attack-max-conns` sockets. Their summary is the
//! [`AttackFields`] of the JSON line (docs/ATTACKS.md lists every field).
//!
//! # Layout
//!
//! - [`flood`]: what one attacker does, per attack; the attackers' counters.
//! - [`pace`]: `--attack-rate` as actions per tick.
//! - [`source`]: `--attack-source` lists and ranges.
//! - [`watch`]: the legit side's bookkeeping (`legit_lost`, `recovery_s`).
//! - [`wire`]: the frames attackers write and a reader for the answers.

pub mod flood;
pub mod pace;
pub mod source;
pub mod watch;
pub mod wire;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::ValueEnum;
use rand::{rngs::SmallRng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use crate::admin;
use crate::bot::Shared;
use crate::stats::{round1, round3, RttSummary};
use flood::{Counters, Ctx, Names};
use pace::Pacer;
use source::Sources;
use watch::Recovery;

/// The attacker loop's tick: how often it starts the connections due.
const TICK: Duration = Duration::from_millis(5);

/// How often live legit sessions are counted.
const LIVE_TICK: Duration = Duration::from_millis(100);

/// How often the server's RSS is read (with `--admin`).
const RSS_EVERY: Duration = Duration::from_secs(1);

/// Open files kept free for everything that is not a socket of the legit
/// players or the attackers (the runtime, scrapes, stdio).
const FD_RESERVE: u64 = 256;

/// The default `--attack-max-conns` never goes above this, whatever the
/// open-file limit allows.
const MAX_CONNS_CEILING: u64 = 50_000;

/// How long `finish` waits for the attackers' thread to let go.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The attack flags (flattened into the bots' flags).
#[derive(Debug, Clone, clap::Args)]
pub struct AttackArgs {
    /// Run an attack beside the legit players (docs/BENCHMARKS.md's attack
    /// scenarios; see docs/ATTACKS.md). Works with every scenario.
    #[arg(id = "attack", long = "attack", value_enum, value_name = "NAME")]
    pub kind: Option<AttackKind>,

    /// connflood, slowloris, garbage: new connections per second;
    /// msgflood: inputs per second, all attacker sessions together;
    /// loginflood: `Hello`s per second.
    #[arg(
        id = "attack_rate",
        long = "attack-rate",
        default_value_t = 100.0,
        value_name = "N"
    )]
    pub rate: f64,

    /// Local addresses the attackers bind before connecting, in turn: one
    /// address, a range, or a list (`127.0.0.2-127.0.0.50,127.0.1.1`).
    #[arg(
        id = "attack_source",
        long = "attack-source",
        default_value = "127.0.0.2",
        value_name = "ADDRS"
    )]
    pub source: String,

    /// Seconds into the measured window (after the ramp) when the attack
    /// starts [default: 30 % of --duration].
    #[arg(id = "attack_start", long = "attack-start", value_name = "SECS")]
    pub start: Option<f64>,

    /// How long the attack lasts, in seconds [default: 40 % of --duration,
    /// so the window has a before, a during and an after].
    #[arg(id = "attack_duration", long = "attack-duration", value_name = "SECS")]
    pub duration: Option<f64>,

    /// Most attacker connections open at once; past it, due connections
    /// are skipped (counted in `capped`) [default: what the open-file limit
    /// leaves beside the legit players, at most 50,000].
    #[arg(id = "attack_max_conns", long = "attack-max-conns", value_name = "N")]
    pub max_conns: Option<usize>,

    /// msgflood: attacker sessions sharing --attack-rate.
    #[arg(
        id = "attack_sessions",
        long = "attack-sessions",
        default_value_t = 20,
        value_name = "N"
    )]
    pub sessions: usize,

    /// slowloris: one byte every this many milliseconds.
    #[arg(
        id = "attack_dribble_ms",
        long = "attack-dribble-ms",
        default_value_t = 2000,
        value_name = "MS"
    )]
    pub dribble_ms: u64,

    /// loginflood: hold each session (acknowledging its frames) until the
    /// attack ends, instead of dropping the socket right after `Welcome`.
    #[arg(id = "attack_keep", long = "attack-keep")]
    pub keep: bool,
}

/// docs/BENCHMARKS.md's attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    Connflood,
    Slowloris,
    Garbage,
    Msgflood,
    Loginflood,
}

impl AttackKind {
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Connflood => "connflood",
            AttackKind::Slowloris => "slowloris",
            AttackKind::Garbage => "garbage",
            AttackKind::Msgflood => "msgflood",
            AttackKind::Loginflood => "loginflood",
        }
    }

    /// What `--attack-rate` counts.
    pub fn unit(self) -> &'static str {
        match self {
            AttackKind::Msgflood => "inputs",
            AttackKind::Loginflood => "logins",
            _ => "connections",
        }
    }
}

/// When the attack runs, relative to the measured window's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub start_s: f64,
    pub length_s: f64,
}

impl AttackArgs {
    /// The attack's place in a window of `duration_s`.
    pub fn plan(&self, duration_s: u64) -> Plan {
        let d = duration_s as f64;
        Plan {
            start_s: self.start.unwrap_or(0.3 * d),
            length_s: self.duration.unwrap_or(0.4 * d),
        }
    }

    /// Checks what clap cannot (only with `--attack`).
    pub fn validate(&self, duration_s: u64) -> anyhow::Result<()> {
        if self.kind.is_none() {
            return Ok(());
        }
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1_000_000.0,
            "--attack-rate must be in (0, 1000000]"
        );
        let sources =
            Sources::parse(&self.source).map_err(|e| anyhow::anyhow!("--attack-source: {e}"))?;
        anyhow::ensure!(
            !sources.contains(IpAddr::from([127, 0, 0, 1])),
            "--attack-source must not include 127.0.0.1: the legit players connect from it"
        );
        let p = self.plan(duration_s);
        anyhow::ensure!(
            p.start_s.is_finite() && p.start_s >= 0.0,
            "--attack-start must be >= 0"
        );
        anyhow::ensure!(
            p.length_s.is_finite() && p.length_s > 0.0,
            "--attack-duration must be > 0"
        );
        anyhow::ensure!(
            p.start_s + p.length_s <= duration_s as f64,
            "the attack ({} s from {} s) must end inside --duration ({} s)",
            p.length_s,
            p.start_s,
            duration_s
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.sessions),
            "--attack-sessions must be 1-100000"
        );
        anyhow::ensure!(
            (1..=3_600_000).contains(&self.dribble_ms),
            "--attack-dribble-ms must be 1-3600000"
        );
        if let Some(n) = self.max_conns {
            anyhow::ensure!(n >= 1, "--attack-max-conns must be at least 1");
        }
        Ok(())
    }
}

/// The default connection cap: what the open-file limit leaves.
pub fn default_max_conns(fd_limit: u64, clients: usize) -> u64 {
    fd_limit
        .saturating_sub(clients as u64 + FD_RESERVE)
        .min(MAX_CONNS_CEILING)
}

/// What the attackers' thread reports when it is done.
#[derive(Debug, Clone, Copy)]
struct Driven {
    started: Option<Instant>,
    ended: Option<Instant>,
    skipped: u64,
}

/// The server readings taken while the attack ran and after.
#[derive(Debug, Clone, Copy, Default)]
struct ServerMemory {
    rss_before: Option<f64>,
    rss_peak: f64,
    connections_peak: f64,
}

/// A running attack and its watchers.
pub struct Attack {
    kind: AttackKind,
    rate: f64,
    plan: Plan,
    sources: usize,
    max_conns: usize,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    driver: Option<std::thread::JoinHandle<Driven>>,
    watcher: tokio::task::JoinHandle<(Recovery, ServerMemory)>,
    shared: Arc<Shared>,
}

/// Everything needed to start an attack.
pub struct Setup<'a> {
    pub args: &'a AttackArgs,
    pub target: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub clients: usize,
    pub duration_s: u64,
    pub seed: u64,
    pub quiet: bool,
    /// The measured window's start.
    pub window_start: Instant,
    /// The window's end: the watchers stop there at the latest.
    pub window_end: Instant,
}

/// Starts the attack (it waits for its start time on its own thread) and
/// the watchers; `None` without `--attack`.
pub fn start(s: Setup<'_>, shared: &Arc<Shared>) -> anyhow::Result<Option<Attack>> {
    let Some(kind) = s.args.kind else {
        return Ok(None);
    };
    let sources = Sources::parse(&s.args.source).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        sources.is_ipv4() == s.target.is_ipv4(),
        "--attack-source and --addr must be of one IP family"
    );
    let max_conns = match s.args.max_conns {
        Some(n) => n,
        None => {
            let limit = crate::procstat::raise_fd_limit().unwrap_or(1024);
            default_max_conns(limit, s.clients) as usize
        }
    };
    anyhow::ensure!(
        max_conns >= 1,
        "no room for attacker connections under the open-file limit: raise `ulimit -n` or give --attack-max-conns"
    );
    let sessions = s.args.sessions.min(max_conns);
    let n_sources = sources.len();
    let plan = s.args.plan(s.duration_s);
    let start_at = s.window_start + Duration::from_secs_f64(plan.start_s);
    let end_at = start_at + Duration::from_secs_f64(plan.length_s);
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Ctx {
        target: s.target,
        c: counters.clone(),
        end: end_at,
        dribble: Duration::from_millis(s.args.dribble_ms),
        keep: s.args.keep,
        names: Names::new(s.seed),
    });
    let driver = {
        let (stop, shared) = (stop.clone(), shared.clone());
        let (rate, seed) = (s.args.rate, s.seed);
        std::thread::Builder::new()
            .name("tether-attack".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("tether-bots: attack: cannot start its runtime: {e}");
                        return Driven {
                            started: None,
                            ended: None,
                            skipped: 0,
                        };
                    }
                };
                let d = rt.block_on(drive(Drive {
                    kind,
                    ctx,
                    sources,
                    rate,
                    sessions,
                    max_conns,
                    start_at,
                    seed,
                    stop,
                    shared,
                }));
                // Dropping the runtime drops every attacker task, and with
                // them their sockets.
                rt.shutdown_timeout(Duration::from_millis(500));
                d
            })?
    };
    let watcher = tokio::spawn(watch_legit(WatchCfg {
        kind,
        shared: shared.clone(),
        counters: counters.clone(),
        admin: s.admin,
        start_at,
        end_at,
        window_end: s.window_end,
        clients: s.clients,
        quiet: s.quiet,
        stop: stop.clone(),
    }));
    Ok(Some(Attack {
        kind,
        rate: s.args.rate,
        plan,
        sources: n_sources,
        max_conns,
        counters,
        stop,
        driver: Some(driver),
        watcher,
        shared: shared.clone(),
    }))
}

struct Drive {
    kind: AttackKind,
    ctx: Arc<Ctx>,
    sources: Sources,
    rate: f64,
    sessions: usize,
    max_conns: usize,
    start_at: Instant,
    seed: u64,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

/// The attackers' loop, on their own runtime.
async fn drive(d: Drive) -> Driven {
    let mut wake = Instant::now();
    while wake < d.start_at {
        if d.stop.load(Relaxed) {
            return Driven {
                started: None,
                ended: None,
                skipped: 0,
            };
        }
        wake = (wake + LIVE_TICK).min(d.start_at);
        sleep_until(wake).await;
    }
    d.shared.rtt.set_attack_on(true);
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(d.max_conns));
    let c = &d.ctx.c;
    let mut pacer = Pacer::new(d.rate);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    if d.kind == AttackKind::Msgflood {
        let per = d.rate / d.sessions as f64;
        for k in 0..d.sessions {
            let Ok(permit) = sem.clone().try_acquire_owned() else {
                c.capped.fetch_add(1, Relaxed);
                continue;
            };
            // Each session cycles through its own slice of the sources.
            let srcs: Vec<IpAddr> = (0..d.sources.len().div_ceil(d.sessions).max(1))
                .map(|j| d.sources.pick((k + j * d.sessions) as u64))
                .collect();
            tokio::spawn(flood::msgflood(d.ctx.clone(), srcs, per, permit));
        }
    }
    let mut rng = SmallRng::seed_from_u64(d.seed ^ 0xA77A_C4ED);
    let mut i = 0u64;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= d.ctx.end || d.stop.load(Relaxed) {
            break;
        }
        if d.kind == AttackKind::Msgflood {
            continue;
        }
        for _ in 0..pacer.due(now - started) {
            let Ok(permit) = sem.clone().try_acquire_owned() else {
                c.capped.fetch_add(1, Relaxed);
                continue;
            };
            let src = d.sources.pick(i);
            i += 1;
            let ctx = d.ctx.clone();
            match d.kind {
                AttackKind::Connflood => tokio::spawn(flood::connflood(ctx, src, permit)),
                AttackKind::Slowloris => tokio::spawn(flood::slowloris(ctx, src, permit)),
                AttackKind::Garbage => {
                    let rng = SmallRng::from_rng(&mut rng);
                    tokio::spawn(flood::garbage(ctx, src, permit, rng))
                }
                AttackKind::Loginflood => tokio::spawn(flood::loginflood(ctx, src, permit)),
                AttackKind::Msgflood => unreachable!("msgflood sessions pace themselves"),
            };
        }
    }
    d.shared.rtt.set_attack_on(false);
    Driven {
        started: Some(started),
        ended: Some(Instant::now()),
        skipped: pacer.skipped(),
    }
}

struct WatchCfg {
    kind: AttackKind,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    admin: Option<SocketAddr>,
    start_at: Instant,
    end_at: Instant,
    window_end: Instant,
    clients: usize,
    quiet: bool,
    stop: Arc<AtomicBool>,
}

/// Counts live legit sessions from the attack's start to the window's end
/// (and prints the attack's progress line once a second); reads the
/// server's RSS once a second meanwhile.
async fn watch_legit(w: WatchCfg) -> (Recovery, ServerMemory) {
    sleep_until(w.start_at).await;
    let memory = Arc::new(Mutex::new(ServerMemory::default()));
    let rss_task = w.admin.map(|addr| {
        let (memory, stop, window_end) = (memory.clone(), w.stop.clone(), w.window_end);
        tokio::spawn(async move {
            let mut next = Instant::now();
            while !stop.load(Relaxed) && Instant::now() < window_end {
                if Instant::now() >= next {
                    next += RSS_EVERY;
                    if let Ok(s) = admin::scrape(addr).await {
                        let mut m = memory.lock().unwrap_or_else(|p| p.into_inner());
                        m.rss_before.get_or_insert(s.rss_bytes);
                        m.rss_peak = m.rss_peak.max(s.rss_bytes);
                        m.connections_peak = m.connections_peak.max(s.connections);
                    }
                }
                tokio::time::sleep(LIVE_TICK).await;
            }
        })
    });
    let mut rec = Recovery::default();
    let mut next_print = Instant::now() + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if w.stop.load(Relaxed) || now >= w.window_end {
            break;
        }
        let since_end = if now >= w.end_at {
            (now - w.end_at).as_secs_f64()
        } else {
            -(w.end_at - now).as_secs_f64()
        };
        let live = w.shared.connected();
        rec.observe(since_end, live);
        if !w.quiet && now >= next_print {
            next_print += Duration::from_secs(1);
            let c = &w.counters;
            eprintln!(
                "tether-bots attack {} {:>4.0}s{}: held {} (peak {})  attempts {}  refused {}  sent {}  welcomes {}  closed {}  capped {}  legit live {}/{}",
                w.kind.name(),
                (now - w.start_at).as_secs_f64(),
                if since_end >= 0.0 { " (over)" } else { "" },
                c.held.load(Relaxed),
                c.held_peak.load(Relaxed),
                c.attempts.load(Relaxed),
                c.refused.load(Relaxed),
                c.sent.load(Relaxed),
                c.welcomes.load(Relaxed),
                c.closed_by_server.load(Relaxed),
                c.capped.load(Relaxed),
                live,
                w.clients,
            );
        }
        tokio::time::sleep(LIVE_TICK).await;
    }
    if let Some(t) = rss_task {
        let _ = t.await;
    }
    let m = *memory.lock().unwrap_or_else(|p| p.into_inner());
    (rec, m)
}

impl Attack {
    /// Stops the attack (if it still runs) and the watchers; the report.
    /// Call at the window's end, before the legit players drain.
    pub async fn finish(mut self) -> AttackReport {
        self.stop.store(true, Relaxed);
        let driver = self.driver.take();
        let joined = tokio::time::timeout(
            JOIN_TIMEOUT,
            tokio::task::spawn_blocking(move || driver.map(|d| d.join())),
        )
        .await;
        let driven = match joined {
            Ok(Ok(Some(Ok(d)))) => d,
            _ => {
                eprintln!("tether-bots: attack: the attackers' thread did not finish cleanly");
                Driven {
                    started: None,
                    ended: None,
                    skipped: 0,
                }
            }
        };
        self.shared.rtt.set_attack_on(false);
        let (rec, mem) = (&mut self.watcher).await.unwrap_or_default();
        let c = &self.counters;
        let secs = match (driven.started, driven.ended) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let units = match self.kind {
            AttackKind::Msgflood | AttackKind::Loginflood => c.sent.load(Relaxed),
            _ => c.attempts.load(Relaxed),
        };
        let close_codes = c
            .close_codes
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| (wire::close_name(code as i32), n))
            })
            .collect();
        let mb = |b: f64| round1(b / (1024.0 * 1024.0));
        let rtt = self.shared.rtt.attack_summary();
        AttackReport {
            name: self.kind.name(),
            unit: self.kind.unit(),
            rate_requested: self.rate,
            rate_achieved: if secs > 0.0 {
                round1(units as f64 / secs)
            } else {
                0.0
            },
            start_s: round3(self.plan.start_s),
            duration_s: round3(secs),
            sources: self.sources,
            max_conns: self.max_conns,
            legit_rtt_ms_during: rtt,
            legit_rtt_samples_during: rtt.samples,
            legit_before: rec.before.unwrap_or(0),
            legit_min_live: rec.min_live.unwrap_or(0),
            legit_after_max: rec.after_max.or(rec.last).unwrap_or(0),
            legit_lost: rec.lost(),
            recovery_s: rec.recovered_at.map(round3),
            observed_after_s: round3(rec.observed_after),
            server_rss_before_mb: mem.rss_before.map(mb),
            server_rss_peak_mb: mem.rss_before.map(|_| mb(mem.rss_peak)),
            server_rss_ratio: mem
                .rss_before
                .filter(|b| *b > 0.0)
                .map(|b| (mem.rss_peak / b * 100.0).round() / 100.0),
            server_connections_peak: mem.rss_before.map(|_| mem.connections_peak),
            attackers: AttackerCounts {
                attempts: c.attempts.load(Relaxed),
                connected: c.connected.load(Relaxed),
                refused: c.refused.load(Relaxed),
                local_errors: c.local_errors.load(Relaxed),
                capped: c.capped.load(Relaxed),
                skipped: driven.skipped + c.skipped.load(Relaxed),
                held_peak: c.held_peak.load(Relaxed),
                sent: c.sent.load(Relaxed),
                bytes_sent: c.bytes_sent.load(Relaxed),
                welcomes: c.welcomes.load(Relaxed),
                closed_by_server: c.closed_by_server.load(Relaxed),
                closed_silently: c.closed_silently.load(Relaxed),
                close_codes,
            },
        }
    }
}

/// The attack's outcome: the `attack_detail` object of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttackReport {
    pub name: &'static str,
    /// What the rates count: `connections`, `inputs` or `logins`.
    pub unit: &'static str,
    pub rate_requested: f64,
    /// Units actually produced per second of attack.
    pub rate_achieved: f64,
    /// Seconds into the measured window when the attack started.
    pub start_s: f64,
    /// How long it actually ran.
    pub duration_s: f64,
    /// `--attack-source` addresses used.
    pub sources: usize,
    pub max_conns: usize,
    /// Legit round trips answered while the attack ran.
    pub legit_rtt_ms_during: RttSummary,
    pub legit_rtt_samples_during: u64,
    /// Legit sessions live when the attack started.
    pub legit_before: i64,
    /// The fewest live at once from then to the window's end.
    pub legit_min_live: i64,
    /// The most live at once within 10 s after the attack ended.
    pub legit_after_max: i64,
    /// `legit_before - legit_after_max`: sessions that were neither live
    /// nor back within 10 s after the attack.
    pub legit_lost: u64,
    /// From the attack's end until every session of `legit_before` was live
    /// again; `null` if that did not happen before the window ended.
    pub recovery_s: Option<f64>,
    /// How long after the attack the legit sessions were watched.
    pub observed_after_s: f64,
    /// Server RSS at the attack's start, and the most from then to the
    /// window's end (with `--admin`, else `null`).
    pub server_rss_before_mb: Option<f64>,
    pub server_rss_peak_mb: Option<f64>,
    /// `server_rss_peak_mb / server_rss_before_mb`.
    pub server_rss_ratio: Option<f64>,
    /// The most game connections the server reported open.
    pub server_connections_peak: Option<f64>,
    pub attackers: AttackerCounts,
}

/// The attackers' own counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttackerCounts {
    pub attempts: u64,
    pub connected: u64,
    pub refused: u64,
    pub local_errors: u64,
    pub capped: u64,
    pub skipped: u64,
    pub held_peak: i64,
    pub sent: u64,
    pub bytes_sent: u64,
    pub welcomes: u64,
    pub closed_by_server: u64,
    pub closed_silently: u64,
    /// `Close` frames received, by code name.
    pub close_codes: BTreeMap<String, u64>,
}

/// docs/BENCHMARKS.md's attack fields (top level of the summary) and the detail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttackFields {
    pub attack: &'static str,
    pub legit_rtt_p99_ms_during: f64,
    pub legit_lost: u64,
    pub recovery_s: Option<f64>,
    /// Left out when the soak's field of the same name is there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_peak_mb: Option<f64>,
    pub attack_detail: AttackReport,
}

impl AttackReport {
    #[cfg(test)]
    /// A filled-in report for tests of the summary.
    pub fn example() -> AttackReport {
        AttackReport {
            name: "connflood",
            unit: "connections",
            rate_requested: 1000.0,
            rate_achieved: 987.5,
            start_s: 15.0,
            duration_s: 20.0,
            sources: 1,
            max_conns: 17_744,
            legit_rtt_ms_during: RttSummary {
                p50: 1.0,
                p99: 7.5,
                p999: 9.0,
                max: 12.0,
                samples: 40_000,
            },
            legit_rtt_samples_during: 40_000,
            legit_before: 2000,
            legit_min_live: 1990,
            legit_after_max: 2000,
            legit_lost: 0,
            recovery_s: Some(1.25),
            observed_after_s: 15.0,
            server_rss_before_mb: Some(100.0),
            server_rss_peak_mb: Some(150.0),
            server_rss_ratio: Some(1.5),
            server_connections_peak: Some(7000.0),
            attackers: AttackerCounts {
                attempts: 19_750,
                connected: 19_700,
                refused: 50,
                local_errors: 0,
                capped: 0,
                skipped: 0,
                held_peak: 5000,
                sent: 0,
                bytes_sent: 0,
                welcomes: 0,
                closed_by_server: 15_000,
                closed_silently: 100,
                close_codes: [("HANDSHAKE_TIMEOUT".to_string(), 14_900)].into(),
            },
        }
    }

    /// The summary's fields; `rss_top_level: false` when another part of
    /// the summary already prints `server_rss_peak_mb`.
    pub fn fields(&self, rss_top_level: bool) -> AttackFields {
        AttackFields {
            attack: self.name,
            legit_rtt_p99_ms_during: self.legit_rtt_ms_during.p99,
            legit_lost: self.legit_lost,
            recovery_s: self.recovery_s,
            server_rss_peak_mb: if rss_top_level {
                Some(self.server_rss_peak_mb.unwrap_or(0.0))
            } else {
                None
            },
            attack_detail: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: AttackArgs,
    }

    fn parse(args: &[&str]) -> AttackArgs {
        T::parse_from(std::iter::once("t").chain(args.iter().copied())).a
    }

    #[test]
    fn defaults_put_the_attack_in_the_middle_of_the_window() {
        let a = parse(&["--attack", "connflood"]);
        assert_eq!(a.kind, Some(AttackKind::Connflood));
        assert_eq!(a.rate, 100.0);
        assert_eq!(a.source, "127.0.0.2");
        let p = a.plan(50);
        assert_eq!((p.start_s, p.length_s), (15.0, 20.0));
        a.validate(50).unwrap();
        // Without --attack nothing is checked.
        parse(&["--attack-rate", "0"]).validate(10).unwrap();
    }

    #[test]
    fn bad_attack_flags_are_refused() {
        for bad in [
            &["--attack", "garbage", "--attack-rate", "0"][..],
            &["--attack", "garbage", "--attack-source", "127.0.0.1"],
            &[
                "--attack",
                "garbage",
                "--attack-source",
                "127.0.0.0-127.0.0.3",
            ],
            &[
                "--attack",
                "garbage",
                "--attack-start",
                "40",
                "--attack-duration",
                "20",
            ],
            &["--attack", "garbage", "--attack-duration", "0"],
            &["--attack", "msgflood", "--attack-sessions", "0"],
            &["--attack", "garbage", "--attack-max-conns", "0"],
        ] {
            assert!(parse(bad).validate(50).is_err(), "{bad:?}");
        }
        parse(&[
            "--attack",
            "garbage",
            "--attack-start",
            "30",
            "--attack-duration",
            "20",
        ])
        .validate(50)
        .unwrap();
    }

    #[test]
    fn connection_cap_leaves_room_for_the_legit_players() {
        assert_eq!(default_max_conns(20_000, 2_000), 20_000 - 2_000 - 256);
        assert_eq!(default_max_conns(1_000_000, 2_000), 50_000);
        assert_eq!(default_max_conns(1024, 2_000), 0);
    }

    #[test]
    fn fields_follow_bench_md() {
        let v = serde_json::to_value(AttackReport::example().fields(true)).unwrap();
        assert_eq!(v["attack"], "connflood");
        assert_eq!(v["legit_rtt_p99_ms_during"], 7.5);
        assert_eq!(v["legit_lost"], 0);
        assert_eq!(v["recovery_s"], 1.25);
        assert_eq!(v["server_rss_peak_mb"], 150.0);
        let d = &v["attack_detail"];
        for key in [
            "name",
            "unit",
            "rate_requested",
            "rate_achieved",
            "legit_rtt_ms_during",
            "legit_lost",
            "recovery_s",
            "server_rss_before_mb",
            "server_rss_peak_mb",
            "attackers",
        ] {
            assert!(!d[key].is_null(), "attack_detail.{key}");
        }
        assert_eq!(d["legit_rtt_ms_during"]["p99"], 7.5);
        assert_eq!(d["attackers"]["close_codes"]["HANDSHAKE_TIMEOUT"], 14_900);
        // The soak prints its own server_rss_peak_mb.
        let v = serde_json::to_value(AttackReport::example().fields(false)).unwrap();
        assert!(v.get("server_rss_peak_mb").is_none());
        // Nobody back: recovery is null, not 0.
        let mut r = AttackReport::example();
        r.recovery_s = None;
        assert!(serde_json::to_value(r.fields(true)).unwrap()["recovery_s"].is_null());
    }

    /// A short `garbage` attack through `start` / `finish` against a
    /// listener that answers everything with `Close{PROTOCOL_ERROR}`: the
    /// attackers come from the source address, their closes are counted by
    /// code, and the legit side is watched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_garbage_attack_against_a_fake_server() {
        use std::collections::HashSet;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(HashSet::new()));
        let seen = peers.clone();
        tokio::spawn(async move {
            let close = tether_proto::encode_frame(&tether_proto::pb::ServerMessage {
                msg: Some(tether_proto::pb::server_message::Msg::Close(
                    tether_proto::pb::Close {
                        code: tether_proto::pb::CloseCode::ProtocolError as i32,
                        message: "bad".into(),
                        retry_after_ms: 0,
                        redirect: None,
                    },
                )),
            });
            while let Ok((mut s, peer)) = listener.accept().await {
                seen.lock().unwrap().insert(peer.ip());
                let close = close.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&close).await;
                });
            }
        });
        let args = parse(&[
            "--attack",
            "garbage",
            "--attack-rate",
            "200",
            "--attack-source",
            "127.0.0.2-127.0.0.3",
            "--attack-start",
            "0",
            "--attack-duration",
            "0.5",
            "--attack-max-conns",
            "50",
        ]);
        args.validate(1).unwrap();
        let shared = Arc::new(Shared::default());
        let now = Instant::now();
        let attack = start(
            Setup {
                args: &args,
                target: addr,
                admin: None,
                clients: 0,
                duration_s: 1,
                seed: 7,
                quiet: true,
                window_start: now,
                window_end: now + Duration::from_secs(1),
            },
            &shared,
        )
        .unwrap()
        .expect("--attack was given");
        // The attack ends by itself; finish waits for it.
        tokio::time::sleep_until(now + Duration::from_secs(1)).await;
        let r = attack.finish().await;
        assert_eq!(r.name, "garbage");
        let a = &r.attackers;
        assert!(a.attempts > 0, "{r:?}");
        // A connect cut short by the attack's end has no outcome.
        assert!(
            a.connected + a.refused + a.local_errors <= a.attempts,
            "{r:?}"
        );
        assert!(a.bytes_sent > 0, "{r:?}");
        assert!(
            a.close_codes.get("PROTOCOL_ERROR").copied().unwrap_or(0) > 0,
            "{r:?}"
        );
        assert!(a.held_peak <= 50);
        assert!(r.rate_achieved > 0.0);
        // Only the source addresses reached the server.
        let peers = peers.lock().unwrap().clone();
        let sources: HashSet<IpAddr> = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(!peers.is_empty() && peers.is_subset(&sources), "{peers:?}");
        // No legit players, none lost; the attack flag is down again.
        assert_eq!(r.legit_lost, 0);
        assert!(!shared.rtt.attack_on());
        assert!(r.server_rss_peak_mb.is_none());
    }
}

//! One run: spawn the players, ramp, measure, drain, summarise.
//!
//! ```text
//!  t0 ──ramp──> window start ──duration──> window end ──drain──> summary
//!     logins      phase=Measure               phase=Drain
//!                 scrape /metrics, CPU        scrape /metrics, CPU
//!                 counters snapshot           counters snapshot
//! ```
//!
//! Progress goes to stderr once a second throughout.
//!
//! `reconnect-storm` ends its window early: once every session that was
//! dropped at the storm's instant is back (or gave up), plus
//! [`STORM_TAIL`] of play, or at `--duration`, whichever comes first.
//! `soak` samples the server every `--sample-secs` from the start to the
//! window's end, checks after the drain that no connection is left, and
//! judges the growth ([`crate::growth`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::admin::{self, ServerSample};
use crate::bot::{Phase, Shared};
use crate::cli::{Args, Scenario};
use crate::growth::{self, Sample};
use crate::procstat;
use crate::scenario;
use crate::stats::{round1, Tally};
use crate::summary::{Measured, SoakOutcome, Summary};

/// How long the bots keep trying to reach the server before calling it a
/// fatal setup error (covers a server that is still starting).
const PREFLIGHT_FOR: Duration = Duration::from_secs(5);

/// Beyond `--drain`, what the drain may take: every client's logout wait
/// (`ClientConfig::logout_timeout`, 3 s) plus slack for a loaded machine.
const DRAIN_SLACK: Duration = Duration::from_secs(8);

/// After the storm's last session is back, play on this long (the resumed
/// sessions' inputs flow and are acknowledged) before the window ends.
pub const STORM_TAIL: Duration = Duration::from_secs(1);

/// After the drain, how long the soak waits for the server to show no game
/// connection left.
const DRAIN_CHECK_FOR: Duration = Duration::from_secs(5);

/// Runs the scenario and returns its summary. Errors only on fatal setup
/// problems (the server cannot be reached at all, unsupported options).
pub async fn run(args: Args) -> anyhow::Result<Summary> {
    if args.ticket_secret.is_some() {
        bail!("--ticket-secret: ticket logins are not supported by the bots yet; run the server with dev auth");
    }
    preflight(args.addr).await?;
    if let Some(token) = &args.admin_token {
        admin::set_token(token.clone());
    }
    let seed = args
        .seed
        .unwrap_or_else(|| SmallRng::from_os_rng().random());
    let shared = Arc::new(Shared::default());
    if let Some(path) = &args.ledger {
        let ledger = crate::ledger::Ledger::open(path)?;
        let _ = shared.ledger.set(ledger);
    }
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    scenario::spawn(&args, seed, &shared, t0, &mut set);
    let mut progress = Progress::new(shared.clone(), args.clients, args.quiet, t0);
    let sampler = match (args.scenario, args.admin) {
        (Scenario::Soak, Some(addr)) => Some(Sampler::start(
            addr,
            Duration::from_secs_f64(args.sample_secs),
            t0,
            shared.clone(),
        )),
        _ => None,
    };

    // Ramp.
    progress
        .until(t0 + Duration::from_secs(args.ramp), "ramp")
        .await;

    // The measured window.
    shared.set_phase(Phase::Measure);
    let server_start = scrape(args.admin).await;
    let cpu_start = procstat::cpu_seconds();
    let at_start = shared.counters.snapshot();
    let window_start = Instant::now();
    let window_end = window_start + Duration::from_secs(args.duration);
    let attack = crate::attack::start(
        crate::attack::Setup {
            args: &args.attack,
            target: args.addr,
            admin: args.admin,
            clients: args.clients,
            duration_s: args.duration,
            seed,
            quiet: args.quiet,
            window_start,
            window_end,
        },
        &shared,
    )?;
    progress.mark_window();
    if args.scenario == Scenario::ReconnectStorm {
        let storm_at = scenario::storm_instant(&args, t0);
        progress.until(storm_at.min(window_end), "measure").await;
        progress
            .until_or(window_end, "storm", || shared.storm.report().settled())
            .await;
        let r = shared.storm.report();
        if !progress.quiet {
            eprintln!(
                "tether-bots: storm: {} dropped, {} back, {} failed, {} not connected at the instant; last back after {:.1} ms",
                r.dropped,
                r.completed,
                r.failed,
                r.missed,
                r.last_us as f64 / 1000.0
            );
        }
        progress
            .until((Instant::now() + STORM_TAIL).min(window_end), "measure")
            .await;
    } else {
        progress.until(window_end, "measure").await;
    }
    let window_s = window_start.elapsed().as_secs_f64();
    let at_end = shared.counters.snapshot();
    let cpu_end = procstat::cpu_seconds();
    let connected = shared.connected();
    let rtt = shared.rtt.summary(true);
    let server_end = scrape(args.admin).await;
    let attack = match attack {
        Some(a) => Some(a.finish().await),
        None => None,
    };
    let samples = match sampler {
        Some(s) => Some(s.stop(server_end, t0, connected).await),
        None => None,
    };

    // Drain: stop sending, wait for acks, log out.
    shared.set_phase(Phase::Drain);
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain) + DRAIN_SLACK;
    progress.drain(&mut set, drain_deadline).await;
    let at_exit = shared.counters.snapshot();

    let soak = match samples {
        Some(samples) => {
            let after_drain = match args.admin {
                Some(addr) => connections_after_drain(addr).await,
                None => None,
            };
            let (ok, g) = growth::judge(
                &samples,
                args.warmup_secs,
                args.growth_limit_pct,
                after_drain,
            );
            if !ok {
                for f in &g.failures {
                    eprintln!("tether-bots: soak: GROWTH: {f}");
                }
            }
            Some(SoakOutcome {
                samples,
                growth_ok: ok,
                growth: Some(g),
            })
        }
        None => None,
    };

    Ok(Summary::build(&Measured {
        transport: if args.websocket { "websocket" } else { "tcp" },
        scenario: args.scenario.name(),
        clients: args.clients,
        duration_s: args.duration,
        seed,
        threads: args.threads,
        window_s,
        at_start,
        at_end,
        at_exit,
        connected,
        rtt,
        server: server_start.zip(server_end),
        bots_cpu: cpu_start.zip(cpu_end),
        chaos_rate: args.chaos,
        resumes: shared.resumes.summary(),
        outages: shared.outages.summary(),
        storm: (args.scenario == Scenario::ReconnectStorm).then(|| shared.storm.report()),
        soak,
        attack,
    }))
}

/// Once every bot has left: polls the server until no game connection is
/// open (or [`DRAIN_CHECK_FOR`] passed). Returns (connections, sessions)
/// as last read; `None` when the server could not be read.
async fn connections_after_drain(addr: SocketAddr) -> Option<(f64, f64)> {
    let until = Instant::now() + DRAIN_CHECK_FOR;
    let mut last = None;
    loop {
        if let Some(s) = scrape(Some(addr)).await {
            last = Some((s.connections, s.sessions_active + s.sessions_zombie));
            if s.connections <= 0.0 {
                return last;
            }
        }
        if Instant::now() >= until {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the server every `every` into a curve (soak).
struct Sampler {
    task: tokio::task::JoinHandle<()>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
}

impl Sampler {
    fn start(addr: SocketAddr, every: Duration, t0: Instant, shared: Arc<Shared>) -> Sampler {
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let mut next = t0;
            let mut warned = false;
            loop {
                sleep_until(next).await;
                let at = Instant::now();
                match admin::scrape(addr).await {
                    Ok(s) => {
                        let sample = to_sample(&s, at, t0, shared.connected());
                        out.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
                    }
                    Err(e) if !warned => {
                        warned = true;
                        eprintln!("tether-bots: warning: cannot sample {addr}/metrics: {e:#}");
                    }
                    Err(_) => {}
                }
                next += every;
                let now = Instant::now();
                if next <= now {
                    // A slow scrape: skip the missed slots.
                    next = now + every;
                }
            }
        });
        Sampler { task, samples }
    }

    /// Stops sampling; the window's last reading (`end`) closes the curve.
    async fn stop(self, end: Option<ServerSample>, t0: Instant, players: i64) -> Vec<Sample> {
        self.task.abort();
        let _ = self.task.await;
        let mut v = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(s) = end {
            v.push(to_sample(&s, Instant::now(), t0, players));
        }
        v
    }
}

fn to_sample(s: &ServerSample, at: Instant, t0: Instant, players: i64) -> Sample {
    Sample {
        t: crate::stats::round3(at.saturating_duration_since(t0).as_secs_f64()),
        rss_mb: round1(s.rss_bytes / (1024.0 * 1024.0)),
        fds: s.open_fds,
        sessions: s.sessions_active + s.sessions_zombie,
        connections: s.connections,
        players,
    }
}

/// Fails when the game port cannot be reached at all.
async fn preflight(addr: SocketAddr) -> anyhow::Result<()> {
    let until = Instant::now() + PREFLIGHT_FOR;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
        match attempt {
            Ok(Ok(_probe)) => return Ok(()),
            Ok(Err(e)) if Instant::now() >= until => {
                return Err(e).with_context(|| format!("cannot reach the server at {addr}"))
            }
            Err(_) if Instant::now() >= until => {
                bail!("cannot reach the server at {addr}: connect timed out")
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn scrape(admin: Option<SocketAddr>) -> Option<ServerSample> {
    let addr = admin?;
    match admin::scrape(addr).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("tether-bots: warning: cannot scrape {addr}/metrics: {e:#}");
            None
        }
    }
}

/// How often [`Progress::until_or`] looks at its condition.
const POLL: Duration = Duration::from_millis(20);

/// The once-a-second progress line, and Ctrl-C.
struct Progress {
    shared: Arc<Shared>,
    clients: usize,
    quiet: bool,
    t0: Instant,
    last: Tally,
    last_at: Instant,
    next: Instant,
    /// Ctrl-C was pressed: the window ends now.
    interrupted: bool,
    ctrl_c: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
}

impl Progress {
    fn new(shared: Arc<Shared>, clients: usize, quiet: bool, t0: Instant) -> Progress {
        Progress {
            shared,
            clients,
            quiet,
            t0,
            last: Tally::default(),
            last_at: t0,
            next: t0 + Duration::from_secs(1),
            interrupted: false,
            ctrl_c: Box::pin(tokio::signal::ctrl_c()),
        }
    }

    /// The window starts: rates restart from here.
    fn mark_window(&mut self) {
        self.last = self.shared.counters.snapshot();
        self.last_at = Instant::now();
    }

    /// Prints progress until `end` (or Ctrl-C).
    async fn until(&mut self, end: Instant, label: &str) {
        self.until_or(end, label, || false).await
    }

    /// Prints progress until `end`, Ctrl-C, or `done()` (looked at every
    /// [`POLL`]).
    async fn until_or(&mut self, end: Instant, label: &str, done: impl Fn() -> bool) {
        while !self.interrupted && Instant::now() < end && !done() {
            let wake = self.next.min(end).min(Instant::now() + POLL);
            tokio::select! {
                _ = sleep_until(wake) => {}
                _ = &mut self.ctrl_c => {
                    eprintln!("tether-bots: interrupted, ending the run");
                    self.interrupted = true;
                }
            }
            if Instant::now() >= self.next {
                self.print(label);
                self.next += Duration::from_secs(1);
            }
        }
    }

    /// Waits for every bot to finish, up to `deadline`; then stops the rest.
    async fn drain(&mut self, set: &mut JoinSet<()>, deadline: Instant) {
        loop {
            tokio::select! {
                joined = set.join_next() => match joined {
                    None => return,
                    Some(Err(e)) if e.is_panic() => {
                        eprintln!("tether-bots: a bot panicked: {e}");
                    }
                    Some(_) => {}
                },
                _ = sleep_until(self.next) => {
                    self.print("drain");
                    self.next += Duration::from_secs(1);
                }
                _ = sleep_until(deadline) => {
                    eprintln!("tether-bots: {} bots still busy after the drain; stopping them", set.len());
                    set.abort_all();
                    while set.join_next().await.is_some() {}
                    return;
                }
            }
        }
    }

    fn print(&mut self, label: &str) {
        let now = Instant::now();
        let t = self.shared.counters.snapshot();
        let d = t.since(&self.last);
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        self.last = t;
        self.last_at = now;
        if self.quiet {
            return;
        }
        let rtt = self.shared.rtt.summary(self.shared.phase() != Phase::Ramp);
        eprintln!(
            "tether-bots {:>5.0}s {:<7} connected {}/{}  in {:.0}/s  out {:.0}/s  rtt p99 {:.2} ms  errors {}  disconnects {}  resumed {}",
            now.duration_since(self.t0).as_secs_f64(),
            label,
            self.shared.connected(),
            self.clients,
            // The server's view: what the bots sent is the server's "in".
            d.frames_out as f64 / secs,
            d.frames_in as f64 / secs,
            rtt.p99,
            t.errors,
            t.disconnects,
            t.resumed,
        );
    }
}

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
use crate::cli::Args;
use crate::procstat;
use crate::scenario;
use crate::stats::Tally;
use crate::summary::{Measured, Summary};

/// How long the bots keep trying to reach the server before calling it a
/// fatal setup error (covers a server that is still starting).
const PREFLIGHT_FOR: Duration = Duration::from_secs(5);

/// Beyond `--drain`, what the drain may take: every client's logout wait
/// (`ClientConfig::logout_timeout`, 3 s) plus slack for a loaded machine.
const DRAIN_SLACK: Duration = Duration::from_secs(8);

/// Runs the scenario and returns its summary. Errors only on fatal setup
/// problems (the server cannot be reached at all, unsupported options).
pub async fn run(args: Args) -> anyhow::Result<Summary> {
    if args.ticket_secret.is_some() {
        bail!("--ticket-secret: ticket logins are not supported by the bots yet; run the server with dev auth");
    }
    preflight(args.addr).await?;
    let seed = args
        .seed
        .unwrap_or_else(|| SmallRng::from_os_rng().random());
    let shared = Arc::new(Shared::default());
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    scenario::spawn(&args, seed, &shared, t0, &mut set);
    let mut progress = Progress::new(shared.clone(), args.clients, args.quiet, t0);

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
    progress.mark_window();
    if !progress.interrupted {
        progress
            .until(window_start + Duration::from_secs(args.duration), "measure")
            .await;
    }
    let window_s = window_start.elapsed().as_secs_f64();
    let at_end = shared.counters.snapshot();
    let cpu_end = procstat::cpu_seconds();
    let connected = shared.connected();
    let rtt = shared.rtt.summary(true);
    let server_end = scrape(args.admin).await;

    // Drain: stop sending, wait for acks, log out.
    shared.set_phase(Phase::Drain);
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain) + DRAIN_SLACK;
    progress.drain(&mut set, drain_deadline).await;
    let at_exit = shared.counters.snapshot();

    Ok(Summary::build(&Measured {
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
    }))
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
        while !self.interrupted && Instant::now() < end {
            let wake = self.next.min(end);
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
            "tether-bots {:>5.0}s {:<7} connected {}/{}  in {:.0}/s  out {:.0}/s  rtt p99 {:.2} ms  errors {}  disconnects {}",
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
        );
    }
}

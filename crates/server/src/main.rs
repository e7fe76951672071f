//! `tether`: the game server binary.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tether_arena::{Arena, ArenaConfig};
use tether_engine::Game;
use tether_server::config::{Config, GameKind, Overrides};
use tether_server::handover::{self, TakeError};
use tether_server::Launch;

/// Tether: a high-density MMORPG game server.
///
/// It runs the MMO, or with --game arena the arena (one-on-one matches).
/// With no arguments it starts with embedded defaults: game on
/// 127.0.0.1:7777, admin HTTP (/healthz, /metrics) on 127.0.0.1:7780, data
/// under ./data, `dev` auth (any character name). Every setting can come from
/// a TOML file (--config), a TETHER_* environment variable or a flag; flags
/// and environment win over the file.
#[derive(Parser)]
#[command(name = "tether", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Overrides,
    /// Take over from the running server with this process id (an upgrade):
    /// check the settings and the store first, then stop that process
    /// (SIGTERM: it saves every session and tells its players to come back),
    /// wait for it to exit, and serve. If a check fails, the running server
    /// is left alone.
    #[arg(long, value_name = "PID")]
    replace: Option<i32>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Serve MCP (Model Context Protocol) on stdin/stdout for an AI
    /// assistant: tools that read the running server's state through its
    /// admin API, and with --allow-writes also kick, ban, notice and drain.
    Mcp {
        /// The admin listener to talk to [default: the settings' admin_listen].
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// Admin API token [default: the settings' operator token with
        /// --allow-writes, else the viewer token, else none].
        #[arg(long, env = "TETHER_MCP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// List the write tools (kick, ban, notice, drain); the server
        /// audits each call.
        #[arg(long)]
        allow_writes: bool,
    },
    /// Check the settings and the store (it opens, and takes this build's
    /// schema), then exit: 0 if the server would start. Safe beside a
    /// running server on the same store.
    Check,
    /// Print a login ticket for NAME, signed with the ticket secret.
    Ticket {
        /// Character (account) name.
        name: String,
        /// Seconds until the ticket expires.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("tether: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.settings)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Ticket { name, ttl_secs } => {
            let secret = cfg
                .ticket_secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .context("minting a ticket needs --ticket-secret or TETHER_TICKET_SECRET")?;
            anyhow::ensure!(
                tether_server::auth::valid_name(&name),
                "names are 1-24 characters of A-Z a-z 0-9 _"
            );
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            println!(
                "{}",
                tether_server::auth::mint_ticket(secret.as_bytes(), &name, now + ttl_secs)
            );
            Ok(())
        }
        Command::Mcp {
            admin,
            token,
            allow_writes,
        } => {
            let settings_token = if allow_writes {
                cfg.admin_operator_token.clone()
            } else {
                cfg.admin_viewer_token
                    .clone()
                    .or_else(|| cfg.admin_operator_token.clone())
            };
            let client = tether_server::mcp::AdminClient {
                addr: admin.unwrap_or_else(|| cfg.admin_listen.to_string()),
                token: token.or(settings_token),
            };
            // stdout is the MCP channel: nothing else may write there.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(tether_server::mcp::serve_stdio(client, allow_writes))?;
            Ok(())
        }
        Command::Check => {
            check_store(&cfg)?;
            println!("tether: settings and store OK");
            Ok(())
        }
        Command::Run => run(cfg, cli.replace),
    }
}

/// An upgrade in place: the process being replaced, and how.
struct Replacing {
    pid: i32,
    target: rustix::process::Pid,
    /// Its listeners were handed over: it is stopped after this process
    /// started serving on them. Otherwise it is stopped first.
    handed_over: bool,
}

/// The checks an upgrade makes before it touches the running server (the
/// settings loaded already; the store must open and take this build's
/// schema; the listeners, when offered, must be the configured ones), and
/// the listeners it takes over. An error leaves the running server alone.
fn prepare_replace(cfg: &Config, pid: i32) -> anyhow::Result<(Replacing, Launch)> {
    let target = rustix::process::Pid::from_raw(pid)
        .filter(|_| pid > 1 && pid != std::process::id() as i32)
        .with_context(|| format!("--replace {pid}: not another process's id"))?;
    anyhow::ensure!(alive(pid), "--replace {pid}: no such process is running");
    check_store(cfg)?;
    let path = handover::socket_path(&cfg.data_dir);
    let launch = match handover::take(&path) {
        Ok(listeners) => {
            let (game, admin) = (listeners.game.local_addr()?, listeners.admin.local_addr()?);
            for (what, offered, wanted) in [
                ("game", game, cfg.listen),
                ("admin", admin, cfg.admin_listen),
            ] {
                anyhow::ensure!(
                    wanted.port() == 0 || offered == wanted,
                    "the running server's {what} listener is {offered}, the settings say {wanted}"
                );
            }
            let ws = listeners.ws.as_ref().map(|l| l.local_addr()).transpose()?;
            match (ws, cfg.ws_listen) {
                (None, None) => {}
                (Some(offered), Some(wanted)) => anyhow::ensure!(
                    wanted.port() == 0 || offered == wanted,
                    "the running server's WebSocket listener is {offered}, the settings say {wanted}"
                ),
                (offered, wanted) => anyhow::bail!(
                    "the running server's WebSocket listener is {offered:?}, the settings say {wanted:?}: change ws_listen with a restart, not an upgrade in place"
                ),
            }
            Launch {
                listeners: Some(listeners),
                hold_loads: true,
            }
        }
        Err(TakeError::NotOffered(_)) => {
            eprintln!(
                "tether: process {pid} offers no listener handover at {}: stopping it before listening",
                path.display()
            );
            Launch::default()
        }
        Err(e) => return Err(e.into()),
    };
    let handed_over = launch.listeners.is_some();
    Ok((
        Replacing {
            pid,
            target,
            handed_over,
        },
        launch,
    ))
}

/// SIGTERM, then waits until the old process is gone: it saves every
/// session and flushes storage first, which takes at most its
/// `shutdown_timeout_ms` (the replacement's setting, taken as the old
/// one's); a little more is allowed. `kill_after`: past
/// that, SIGKILL it (its players then resume from its last flush, as after
/// a crash) instead of failing.
fn stop_replaced(shutdown_timeout_ms: u64, r: &Replacing, kill_after: bool) -> anyhow::Result<()> {
    use rustix::process::{kill_process, Signal};
    use std::time::{Duration, Instant};
    let pid = r.pid;
    match kill_process(r.target, Signal::TERM) {
        Ok(()) => {}
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot signal process {pid}")),
    }
    let bound = Duration::from_millis(shutdown_timeout_ms + 5_000);
    let deadline = Instant::now() + bound;
    let mut killed = false;
    while alive(pid) {
        if !killed && Instant::now() >= deadline {
            anyhow::ensure!(
                kill_after,
                "process {pid} is still running {} ms after SIGTERM",
                bound.as_millis()
            );
            tracing::error!(pid, "the replaced process did not stop in time: killing it");
            let _ = kill_process(r.target, Signal::KILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Opens the store as the server would (migrations included) and closes it.
fn check_store(cfg: &Config) -> anyhow::Result<()> {
    let game = match cfg.game {
        GameKind::Mmo => tether_world::Mmo::NAME,
        GameKind::Arena => Arena::NAME,
    };
    drop(tether_server::open_store(cfg, game).context("the store does not open")?);
    Ok(())
}

/// Whether `pid` is a running process (an exited one not yet reaped by its
/// parent does not count).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn run(cfg: Config, replace: Option<i32>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log)
                .with_context(|| format!("bad log filter {:?}", cfg.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let (replacing, launch) = match replace {
        Some(pid) => {
            let (r, launch) = prepare_replace(&cfg, pid)
                .with_context(|| format!("--replace {pid}: the running server is left alone"))?;
            if !r.handed_over {
                stop_replaced(cfg.shutdown_timeout_ms, &r, false)
                    .with_context(|| format!("--replace {pid}"))?;
            }
            (Some(r), launch)
        }
        None => (None, Launch::default()),
    };
    let shutdown_timeout_ms = cfg.shutdown_timeout_ms;
    let server = match cfg.game {
        GameKind::Mmo => {
            let backend = tether_server::open_store(&cfg, tether_world::Mmo::NAME)?;
            tether_server::start_mmo_with(cfg, backend, launch)?
        }
        GameKind::Arena => {
            let backend = tether_server::open_store(&cfg, Arena::NAME)?;
            tether_server::start_game_with(
                cfg,
                backend,
                |shard| Arena::new(ArenaConfig::default(), shard),
                launch,
            )?
        }
    };
    if let Some(r) = replacing.filter(|r| r.handed_over) {
        // Serving on the old listeners; logins and resumes wait until the
        // old process has saved its sessions and exited.
        eprintln!(
            "tether: serving on the listeners of process {}; stopping it",
            r.pid
        );
        stop_replaced(shutdown_timeout_ms, &r, true)?;
        server.release_loads();
    }
    eprintln!(
        "tether: game on {}, admin on http://{}/metrics",
        server.game_addr, server.admin_addr
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down");
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}

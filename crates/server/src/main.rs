//! `tether`: the game server binary.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tether_arena::{Arena, ArenaConfig};
use tether_engine::Game;
use tether_server::config::{Config, GameKind, Overrides};

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
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
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
        Command::Run => run(cfg),
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log)
                .with_context(|| format!("bad log filter {:?}", cfg.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let server = match cfg.game {
        GameKind::Mmo => tether_server::start(cfg)?,
        GameKind::Arena => {
            let backend = tether_server::open_store(&cfg, Arena::NAME)?;
            tether_server::start_game(cfg, backend, |shard| {
                Arena::new(ArenaConfig::default(), shard)
            })?
        }
    };
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

//! `tether-bots`: Tether's load generator.
//!
//! One process drives thousands of scripted players, each a tokio task that
//! owns a `tether_client::Client` and wakes on one timer. It prints progress
//! on stderr once a second and, at the end, exactly one JSON object on
//! stdout (the fields docs/BENCHMARKS.md lists, and a few more). Exit codes: 0 when the
//! run completed (the JSON tells the story), 1 when it could not start (the
//! server cannot be reached at all), 2 for bad flags, 3 when `soak` found the
//! server's memory or descriptors growing (`"growth_ok":false`), so that CI
//! fails loudly, 4 when `--verify-ledger` found confirmed loot missing.
//!
//! ```text
//! tether-bots --clients 1000 --duration 60 --ramp 10 --admin 127.0.0.1:7780
//! tether-bots --scenario reconnect-storm --clients 5000 --admin 127.0.0.1:7780
//! tether-bots --clients 1000 --duration 60 --chaos 20
//! tether-bots --scenario soak --clients 2000 --duration 1800 --admin 127.0.0.1:7780
//! tether-bots --clients 200 --duration 60 --ledger ledger.jsonl
//! tether-bots --verify-ledger ledger.jsonl
//! tether-bots --clients 2000 --duration 50 --attack connflood --attack-rate 2000 --admin 127.0.0.1:7780
//! ```
//!
//! # Layout
//!
//! - `cli`: the flags.
//! - `run`: one run — spawn, ramp, measured window, drain, summary;
//!   the progress line.
//! - `scenario`: what the players do (`scenario::standard`, `scenario::soak`)
//!   and the faults each bot is scripted to inflict on itself (storm, chaos,
//!   churn).
//! - `bot`: the per-player task around a scenario's `Brain`: lifecycle,
//!   counting, faults, drain and logout; the run-wide `Shared` state (the
//!   storm's bookkeeping included).
//! - `growth`: the soak's verdict on the server's RSS and descriptors.
//! - `ledger`: `--ledger` (every durable confirmation, appended to a file)
//!   and `--verify-ledger` (the characters hold at least that).
//! - `view`: a bot's picture of the world (itself and the entities in view).
//! - `stats`: counters (per-bot tallies flushed into shared atomics) and the
//!   round-trip HDR histograms.
//! - `attack`: `--attack NAME`, docs/BENCHMARKS.md's attacks beside the legit
//!   players (own thread, own source addresses, own counters) and what
//!   they did to the legit players.
//! - `admin`: scraping the server's `/metrics`.
//! - `procstat`: this process's CPU time and open-file limit.
//! - `summary`: the final JSON object.
#![forbid(unsafe_code)]

mod admin;
mod attack;
mod bot;
mod cli;
mod growth;
mod ledger;
mod procstat;
mod run;
mod scenario;
mod stats;
mod summary;
mod view;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Err(e) = args.validate() {
        eprintln!("tether-bots: {e:#}");
        return ExitCode::from(2);
    }
    // One socket per player, plus a few.
    match procstat::raise_fd_limit() {
        Some(limit) if (limit as usize) < args.clients + 64 => eprintln!(
            "tether-bots: warning: open-file limit {limit} is below --clients {}; some logins will fail",
            args.clients
        ),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-bots: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = args.verify_ledger.clone() {
        return match runtime.block_on(ledger::verify(
            args.addr,
            args.transport(),
            &path,
            args.quiet,
        )) {
            Ok(verdict) => {
                println!("{}", verdict.to_json_line());
                ExitCode::from(verdict.exit_code())
            }
            Err(e) => {
                eprintln!("tether-bots: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run::run(args)) {
        Ok(summary) => {
            println!("{}", summary.to_json_line());
            ExitCode::from(summary.exit_code())
        }
        Err(e) => {
            eprintln!("tether-bots: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `confer` binary: command line, configuration and wiring of the engine crates.
//!
//! `confer serve` runs the engine; `confer bench ...` measures it. Everything a user can
//! set has a default, documented in `--help` and README.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod api;
mod archive;
mod auth;
mod bench;
mod config;
mod host;
mod journal;
mod serve;
mod sip;
mod uc;
mod webhooks;

#[derive(Parser, Debug)]
#[command(
    name = "confer",
    version,
    about = "Unified-communications media and telephony engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the engine (defaults to loopback; see `confer serve --help`).
    Serve(serve::ServeArgs),
    /// Measure the media path: conference load and latency (no subcommand; see
    /// `confer bench --help`), or `confer bench jitter`.
    Bench(bench::BenchArgs),
    /// Issue a control-API token signed with the configured `api_secret`.
    Token(auth::TokenArgs),
    /// Check, export or purge the compliance archive (`confer archive verify`,
    /// `export`, `purge`).
    Archive(archive::ArchiveArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr (stdout carries the ready line and bench reports); `RUST_LOG`
    // filters them (default `info`; `warn` for a benchmark, whose in-process engine would
    // otherwise log under load).
    let default = match cli.command {
        Command::Bench(_) | Command::Token(_) | Command::Archive(_) => "warn",
        Command::Serve(_) => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Token(args) => auth::run_token(args),
        Command::Archive(args) => archive::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

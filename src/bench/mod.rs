//! `confer bench`: media benchmarks that users run (a product feature, not only a test).
//!
//! `confer bench [options]` loads a conference engine (confer, or Janus side by side) with
//! synthetic RTP participants; `confer bench jitter` scores the jitter buffer; `confer
//! bench sip` loads SIP dial-in with sipp (call rate, concurrent G.711 callers).

use clap::{Args, Subcommand};

mod conference;
pub mod janus;
mod janus_engine;
mod jitter;
mod load;
mod prom;
mod signals;
mod sip;
mod sipp;

/// `confer bench`: the conference load benchmark, or a subcommand.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    conference: conference::ConferenceArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Run the adaptive jitter buffer over simulated networks or recorded traces and
    /// compare it with the hindsight oracle.
    Jitter(jitter::JitterArgs),
    /// Load SIP dial-in with sipp: the highest call rate with no failed call, or the
    /// concurrent G.711 callers a room sustains (--concurrent).
    Sip(Box<sip::SipArgs>),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Jitter(a)) => jitter::run(a),
        Some(BenchCommand::Sip(a)) => sip::run(*a),
        None => conference::run(args.conference),
    }
}

//! `confer bench`: media benchmarks that users run (a product feature, not only a test).

use clap::Subcommand;

mod jitter;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Run the adaptive jitter buffer over simulated networks or recorded traces and
    /// compare it with the hindsight oracle.
    Jitter(jitter::JitterArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Jitter(args) => jitter::run(args),
    }
}

//! `confer serve`: starts the media engine and runs until Ctrl-C or SIGTERM.
//!
//! At this stage the engine is the media core (media workers on the frame clock, the RTP
//! port range, the codecs); the control API, rooms and SIP arrive with the conference and
//! PSTN-bridge work.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::config::Config;

/// `confer serve` options. Every setting can also come from the config file or from a
/// `CONFER_*` environment variable (see README).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Runs the engine until a shutdown signal.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicU64::new(0));
    let frame = Duration::from_millis(cfg.frame_ms as u64);
    let workers: Vec<_> = (0..cfg.workers())
        .map(|i| {
            let (stop, ticks) = (stop.clone(), ticks.clone());
            std::thread::Builder::new()
                .name(format!("confer-media-{i}"))
                .spawn(move || media_worker(frame, &stop, &ticks))
                .context("starting a media worker")
        })
        .collect::<Result<_, _>>()?;
    println!(
        "confer {}: media engine running: {} media workers on a {} ms frame clock, RTP {}:{}-{}, codecs opus pcmu pcma; Ctrl-C or SIGTERM stops it",
        env!("CARGO_PKG_VERSION"),
        workers.len(),
        cfg.frame_ms,
        cfg.media_ip,
        cfg.rtp_port_min,
        cfg.rtp_port_max
    );
    shutdown_signal().await?;
    stop.store(true, Ordering::Release);
    for w in workers {
        let _ = w.join();
    }
    println!(
        "confer: stopped after {} frame ticks",
        ticks.load(Ordering::Relaxed)
    );
    Ok(())
}

/// A media worker: owns its rooms and legs (none yet) and ticks them on the frame clock,
/// catching up without drift after a late wake-up.
fn media_worker(frame: Duration, stop: &AtomicBool, ticks: &AtomicU64) {
    let mut next = Instant::now() + frame;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        ticks.fetch_add(1, Ordering::Relaxed);
        next += frame;
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

//! `confer serve`: the media engine with its HTTP control API, until Ctrl-C or SIGTERM.
//!
//! Wiring only: [`crate::host`] runs the media workers and the participants' sockets,
//! [`crate::api`] the HTTP routes. The ready line names the control API's actual address
//! (so `http_listen` may use port 0 and a script can read the port from it). On a signal
//! the API stops accepting, event streams close, the workers end their rooms (each
//! participant is sent an RTCP BYE) and stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::api::{ApiState, router};
use crate::config::Config;
use crate::host::{Host, HostConfig};

/// `confer serve` options. Every setting can also come from the config file or from a
/// `CONFER_*` environment variable: `CONFER_MEDIA_IP`, `CONFER_RTP_PORT_MIN`,
/// `CONFER_RTP_PORT_MAX`, `CONFER_FRAME_MS`, `CONFER_MEDIA_WORKERS`,
/// `CONFER_REALTIME_PRIORITY`, `CONFER_DATA_DIR`, `CONFER_HTTP_LISTEN` (default
/// 127.0.0.1:8080; see README).
#[derive(Args, Debug)]
#[command(after_help = "Settings (TOML key / environment variable, default):
  media_ip       CONFER_MEDIA_IP       127.0.0.1        address of the RTP sockets
  rtp_port_min   CONFER_RTP_PORT_MIN   20000            first RTP port
  rtp_port_max   CONFER_RTP_PORT_MAX   20999            last RTP port
  frame_ms       CONFER_FRAME_MS       20               frame clock, 10 or 20 ms
  media_workers  CONFER_MEDIA_WORKERS  0 (one per core) media worker threads
  realtime_priority CONFER_REALTIME_PRIORITY 10         SCHED_FIFO priority of media threads
                                                        (0: normal scheduler)
  data_dir       CONFER_DATA_DIR       confer-data      database and recordings
  http_listen    CONFER_HTTP_LISTEN    127.0.0.1:8080   control API (port 0: any free port)
Environment variables override the file, which overrides the defaults.")]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Runs the engine until a shutdown signal.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let running = spawn(&cfg)?;
    // The handlers are installed before the ready line: a supervisor may signal as soon as
    // it reads it.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    let (mut interrupt, mut terminate) = {
        let _guard = signals.enter();
        (
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        )
    };
    println!(
        "confer {}: media engine running: {} media workers on a {} ms frame clock, RTP {}:{}-{}, control API http://{}, codecs opus pcmu pcma; Ctrl-C or SIGTERM stops it",
        env!("CARGO_PKG_VERSION"),
        running.workers,
        cfg.frame_ms,
        cfg.media_ip,
        cfg.rtp_port_min,
        cfg.rtp_port_max,
        running.http,
    );
    signals.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    });
    let ticks = running.stop()?;
    println!("confer: stopped after {ticks} frame ticks");
    Ok(())
}

/// An engine running on its own threads (`confer serve`, or in-process for `confer bench`).
pub struct Running {
    /// The control API's address.
    pub http: SocketAddr,
    /// Media worker threads.
    pub workers: usize,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<anyhow::Result<u64>>,
}

impl Running {
    /// Stops the API and the media workers (rooms end, recordings close); returns the
    /// number of frame ticks the workers ran.
    pub fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(true);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?
    }
}

/// Starts the engine of `cfg` on a runtime thread of its own; returns once the control API
/// listens.
pub fn spawn(cfg: &Config) -> anyhow::Result<Running> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(cfg.http_listen))
        .with_context(|| format!("binding the control API to {}", cfg.http_listen))?;
    let http = listener
        .local_addr()
        .context("reading the control API's address")?;
    let host = {
        let _guard = runtime.enter();
        Host::start(&HostConfig {
            workers: cfg.workers(),
            realtime_priority: cfg.realtime_priority,
            send_lanes: 0,
            frame_ms: cfg.frame_ms,
            media_ip: cfg.media_ip,
            rtp_port_min: cfg.rtp_port_min,
            rtp_port_max: cfg.rtp_port_max,
            recordings_dir: cfg.data_dir.join("recordings"),
        })
        .context("starting the media workers")?
    };
    let workers = host.workers();
    let (stop_tx, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("confer-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = router(ApiState {
                    host: host.clone(),
                    shutdown: stop_rx.clone(),
                });
                let mut server_stop = stop_rx.clone();
                let server = tokio::spawn(
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = server_stop.changed().await;
                        })
                        .into_future(),
                );
                let mut stop = stop_rx;
                while !*stop.borrow() {
                    if stop.changed().await.is_err() {
                        break;
                    }
                }
                // Open connections get a moment to finish; the engine stops regardless.
                let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
                Ok(host.stop())
            })
        })
        .context("starting the engine thread")?;
    Ok(Running {
        http,
        workers,
        stop: stop_tx,
        thread,
    })
}

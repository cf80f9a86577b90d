//! `confer serve`: the media engine with its HTTP control API and SIP, until Ctrl-C or
//! SIGTERM.
//!
//! Wiring only: [`crate::host`] runs the media workers and the participants' sockets,
//! [`crate::api`] the HTTP routes, [`crate::sip`] SIP over UDP, TCP and TLS. The ready
//! line names the control API's and SIP's actual addresses (so `http_listen` and
//! `sip_listen` may use port 0 and a script can read the ports from it). On a signal SIP
//! ends its calls (BYE) and their participants leave, the API stops accepting, event
//! streams close, the workers end their rooms (each participant is sent an RTCP BYE) and
//! stop. An engine started in-process by `confer bench` ([`spawn`]) runs no SIP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::api::{ApiState, router};
use crate::archive::Archive;
use crate::config::Config;
use crate::host::EventMsg;
use crate::host::{Host, HostConfig};
use crate::journal::{Journal, JournalConfig};
use crate::sip::{DialPlan, Pins, RegistrarEvent, SipAccounts, SipControl, SipServer, Trunks};
use crate::uc::{Uc, UcParts, UcSettings};
use crate::webhooks::Webhooks;

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
  sip_listen     CONFER_SIP_LISTEN     127.0.0.1:5060   SIP over UDP and TCP (port 0: free)
  sip_tls_listen CONFER_SIP_TLS_LISTEN (off)            SIP over TLS, with sip_tls_cert and
                                                        sip_tls_key (PEM files)
  dial_in        CONFER_DIAL_IN        (none)           dialled numbers to rooms:
                                                        \"+15550100=standup,4242=retro\"
  (SIP limits, timers and the rest: README, \"SIP\".)
Environment variables override the file, which overrides the defaults.")]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Runs the engine until a shutdown signal.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let running = spawn_with(&cfg, true)?;
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
    let sip = match &running.sip {
        Some(s) => {
            let tls = s.tls.map_or(String::new(), |a| format!(" tls:{a}"));
            format!(", SIP udp:{} tcp:{}{tls}", s.udp, s.tcp)
        }
        None => String::new(),
    };
    println!(
        "confer {}: media engine running: {} media workers on a {} ms frame clock, RTP {}:{}-{}, control API http://{}{sip}, codecs opus pcmu pcma; Ctrl-C or SIGTERM stops it",
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
    /// SIP's addresses, when it runs.
    pub sip: Option<SipAddrs>,
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

/// Where SIP listens.
#[derive(Debug, Clone)]
pub struct SipAddrs {
    /// UDP.
    pub udp: SocketAddr,
    /// TCP.
    pub tcp: SocketAddr,
    /// TLS, when on.
    pub tls: Option<SocketAddr>,
}

/// True when `e` comes from binding an address already in use.
fn in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// Starts the engine of `cfg` (without SIP) on a runtime thread of its own; returns once
/// the control API listens.
pub fn spawn(cfg: &Config) -> anyhow::Result<Running> {
    spawn_with(cfg, false)
}

/// [`spawn`], with SIP when `sip` (returns once SIP listens too).
pub fn spawn_with(cfg: &Config, sip: bool) -> anyhow::Result<Running> {
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
    let pins = Arc::new(Pins::new(
        DialPlan::new(&cfg.dial_in, &cfg.sip_country_code)?.pin_number(),
        cfg.pin_digits,
    ));
    let auth = match &cfg.api_secret {
        Some(secret) => Some(Arc::new(crate::auth::keyring(secret.expose())?)),
        None => None,
    };
    let trunks = Arc::new(Trunks::new(
        &cfg.trunks,
        &cfg.sip_country_code,
        &cfg.dial_out_allow,
        &cfg.dial_out_deny,
    )?);
    let (md5_first, md5_only) = cfg.registrar_digest()?;
    let client_joins = crate::api::ClientJoins::default();
    let records = runtime.block_on(open_records(cfg, sip, &host));
    let (journal, archive) = match records {
        Ok(r) => r,
        Err(e) => {
            host.stop();
            return Err(e);
        }
    };
    let sip_accounts = SipAccounts::default();
    let (registrar_tx, registrar_events) = tokio::sync::mpsc::unbounded_channel();
    let sip_server = if sip {
        match runtime.block_on(SipServer::start(
            cfg,
            host.clone(),
            pins.clone(),
            trunks.clone(),
            crate::sip::RegistrarSetup {
                accounts: sip_accounts.clone(),
                events: Some(registrar_tx),
                domains: Vec::new(),
                md5_first,
                md5_only,
                enabled: true,
            },
            crate::sip::SipRecords {
                journal: Some(journal.clone()),
                archive: archive.clone(),
            },
        )) {
            Ok(s) => Some(s),
            Err(e) => {
                host.stop();
                let hint = if in_use(&e) {
                    " (another SIP server on this machine? set sip_listen, e.g. \
                     CONFER_SIP_LISTEN=127.0.0.1:5070, or port 0 for any free port)"
                } else {
                    ""
                };
                return Err(e.context(format!("starting SIP{hint}")));
            }
        }
    } else {
        None
    };
    let sip_addrs = sip_server.as_ref().map(|s| SipAddrs {
        udp: s.udp,
        tcp: s.tcp,
        tls: s.tls,
    });
    let sip_metrics = sip_server.as_ref().map(|s| s.metrics.clone());
    let sip_control = sip_server.as_ref().map(|s| s.control.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let services = runtime.block_on(start_services(
        cfg,
        journal,
        archive,
        &host,
        sip_control.clone(),
        sip_accounts,
        registrar_events,
        &trunks,
        &pins,
        auth.clone(),
        stop_rx.clone(),
    ));
    let services = match services {
        Ok(s) => s,
        Err(e) => {
            if let Some(s) = sip_server {
                runtime.block_on(s.stop());
            }
            host.stop();
            return Err(e);
        }
    };
    let thread = std::thread::Builder::new()
        .name("confer-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = router(ApiState {
                    host: host.clone(),
                    shutdown: stop_rx.clone(),
                    sip_metrics,
                    pins,
                    sip: sip_control,
                    trunks,
                    auth,
                    client_joins,
                    journal: services.journal.clone(),
                    uc: services.uc.clone(),
                    archive: services.archive.clone(),
                    webhooks: services.webhooks.clone(),
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
                // Calls end first (BYE, participants leave) while the workers still run.
                if let Some(s) = sip_server {
                    s.stop().await;
                }
                // Open connections get a moment to finish; the engine stops regardless.
                let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
                let ticks = host.stop();
                services.close().await;
                Ok(ticks)
            })
        })
        .context("starting the engine thread")?;
    Ok(Running {
        http,
        workers,
        sip: sip_addrs,
        stop: stop_tx,
        thread,
    })
}

/// The parts around the media host: the event journal, the archive that follows it,
/// webhooks, and users/presence/escalation. `confer bench`'s in-process engine has a
/// journal in memory and none of the rest.
struct Services {
    journal: Journal,
    archive: Option<Archive>,
    webhooks: Option<Arc<Webhooks>>,
    uc: Option<Uc>,
}

impl Services {
    /// Webhooks stop, the archive catches up with the journal, the journal commits.
    async fn close(self) {
        if let Some(w) = self.webhooks.and_then(Arc::into_inner) {
            w.stop().await;
        }
        if let Some(a) = &self.archive {
            a.close().await;
        }
        self.journal.close().await;
    }
}

/// The event journal (in memory for `confer bench`) with the host's events relayed into
/// it, and the compliance archive that follows it (not in `confer bench`). Opened before
/// SIP, which records into them and asks the archive before taking a call.
async fn open_records(
    cfg: &Config,
    full: bool,
    host: &Host,
) -> anyhow::Result<(Journal, Option<Archive>)> {
    let journal_config = JournalConfig {
        path: full.then(|| cfg.data_dir.join("journal.db")),
        retention: Duration::from_secs(u64::from(cfg.journal_retention_days) * 86_400),
        ..JournalConfig::default()
    };
    if full {
        tokio::fs::create_dir_all(&cfg.data_dir)
            .await
            .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    }
    let journal = Journal::open(&journal_config)
        .await
        .context("opening the event journal")?;
    if let Some(rx) = host.tap_events() {
        tokio::spawn(relay_room_events(rx, journal.clone()));
    }
    if !full {
        return Ok((journal, None));
    }
    let archive = Archive::open(cfg, journal.clone())
        .await
        .context("opening the compliance archive")?;
    Ok((journal, Some(archive)))
}

#[allow(clippy::too_many_arguments)]
async fn start_services(
    cfg: &Config,
    journal: Journal,
    archive: Option<Archive>,
    host: &Host,
    sip: Option<SipControl>,
    accounts: SipAccounts,
    registrar_events: tokio::sync::mpsc::UnboundedReceiver<RegistrarEvent>,
    trunks: &Arc<Trunks>,
    pins: &Arc<Pins>,
    keys: Option<Arc<confer_signalling::token::Keyring>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Services> {
    let Some(archive) = archive else {
        return Ok(Services {
            journal,
            archive: None,
            webhooks: None,
            uc: None,
        });
    };
    let webhooks = Webhooks::start(journal.clone(), cfg.webhooks.clone())
        .await
        .context("starting webhooks")?;
    let uc = Uc::start(
        UcSettings {
            routing: cfg.escalation,
            presence: cfg.presence,
            policy: cfg.policy.clone(),
            limits: cfg.directory_limits,
        },
        UcParts {
            host: host.clone(),
            journal: journal.clone(),
            sip,
            trunks: trunks.clone(),
            pins: pins.clone(),
            accounts,
            keys,
            archive: Some(archive.clone()),
        },
        shutdown,
    )
    .await
    .context("starting users and escalation")?;
    tokio::spawn(uc.clone().follow_registrar(registrar_events));
    Ok(Services {
        journal,
        archive: Some(archive),
        webhooks: Some(Arc::new(webhooks)),
        uc: Some(uc),
    })
}

/// Copies the host's room events into the journal (`joined` and `left` name the user,
/// device and client of a client participant: [`crate::host::Identity`]).
async fn relay_room_events(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<EventMsg>,
    journal: Journal,
) {
    while let Some(ev) = rx.recv().await {
        let Ok(serde_json::Value::Object(mut body)) = serde_json::to_value(&ev) else {
            continue;
        };
        body.remove("kind");
        journal.append("room", ev.kind, crate::uc::now(), body);
    }
}

//! The async shell of SIP: the UDP socket, the TCP (and TLS) listeners and their
//! connections, and the core task that drives the sans-IO [`SipCore`].
//!
//! # Tasks and queues
//!
//! - **UDP**: one receive task. Each datagram is charged to its source's rate limit
//!   (banned sources are dropped before parsing), checked against the size limit (513
//!   from salvaged headers, else dropped), and judged by `inspect`: rejections are
//!   answered right there (RFC 3261 §18.2.2: to the source port with `sip_force_rport`
//!   or an `rport` Via, else to the Via port), drops are counted, and accepted messages
//!   go to the core over a bounded queue (full: dropped and counted; UDP peers
//!   retransmit).
//! - **TCP/TLS**: one task per connection with its own [`StreamFramer`]. Every frame is
//!   charged to the rate limit and judged like a datagram; answers the listener gives
//!   itself and everything the core sends to this peer leave on the same connection
//!   (through the connection's bounded outgoing queue). A fatal framing error (missing,
//!   invalid or conflicting Content-Length, a message over the size limit) is answered
//!   400 or 513 when the headers can be salvaged and closes the connection. CRLFCRLF
//!   keep-alives are answered with CRLF (RFC 5626). A connection stuck in the middle of
//!   a message for `sip_message_timeout_ms` (slow loris, counted from the message's
//!   first byte) or silent for `sip_idle_timeout_ms` is closed. Connections are capped
//!   in total and per source IP, and refused from banned sources.
//! - **Core**: one task owns the [`SipCore`]; it sleeps until the core's next timer or
//!   the next message, media result, control request ([`SipControl`]: dial, ring, hang
//!   up) or closed connection, then sends the core's transmissions (UDP directly,
//!   streams through their connection's queue), hands media commands to the
//!   [`MediaDriver`], publishes dialled calls' progress (room events, and the receiver
//!   of a tracked call or ring) and passes the registrar's bindings on
//!   ([`RegistrarEvent`], Unix times from the system clock). At shutdown it ends every
//!   call (BYE or 503) and waits briefly for the media to be released.
//! - **Bindings**: with a journal, the registrar's bindings outlive a restart (see
//!   "Restarts" in `core/registrar.rs`). At start the core is given the snapshot saved
//!   in the journal's state (`registrar_bindings`); the UDP bindings that have not
//!   lapsed come back, are reported as bound and can be rung at once, while TCP and TLS
//!   ones are dropped (their connections died with the old process). After a change the
//!   core task takes a new snapshot, at most once per [`BINDINGS_SAVE_INTERVAL`] and once
//!   more at shutdown, and one writer task saves it, so a slow database never holds up
//!   SIP (a snapshot taken while the previous one is still being written waits for the
//!   next turn).
//!
//! Every queue is bounded and every map is capped: the core's inbound queue, the media
//! results (sized for the call limit), each connection's outgoing queue, the closed
//! connections' queue, the connection table, and the rate limiter's source table. The
//! exceptions are the per-call progress receivers and the registrar's events, which the
//! rest of confer owns and drains (one message per step of a call or binding). Every spawned task is supervised: its
//! error or panic is logged and counted (`confer_sip_task_errors_total`).
//!
//! Time comes from the tokio clock, randomness (tags) from the OS-seeded generator.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use confer_pstn_bridge::sdp::{Codec as SdpCodec, LocalCapabilities};
use confer_pstn_bridge::sip::dialog::SessionTimerConfig;
use confer_pstn_bridge::sip::transaction::new_tag;
use confer_pstn_bridge::sip::transaction::{Peer, TimerConfig, TransactionConfig, Transmit};
use confer_pstn_bridge::sip::{
    Capabilities, Disposition, DropReason, FrameError, HeaderName, MediaType, Message, Method,
    Param, Rejection, Request, ResponseBasis, StatusCode, StreamFramer, Token, Transport,
    build_response, inspect,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use super::core::SavedBinding;
use super::core::{CallId, DialError, DialProgress, DialRequest, InboundPolicy};
use super::core::{
    Challenges, RegistrarConfig, RegistrarEvent, RingError, RingRequest, SipAccounts,
};
use super::core::{CoreConfig, LocalAddrs, Output, SipCore};
use super::dialplan::DialPlan;
use super::limits::{RateLimiter, Verdict};
use super::media::{MediaDriver, PromptSetup};
use super::metrics::{Dropped, SipMetrics, Wire};
use super::pins::Pins;
use super::trunks::Trunks;
use crate::config::Config;
use crate::host::{EventMsg, Host};
use crate::journal::Journal;
use confer_conference::room::ROOM_RATE;
use confer_pstn_bridge::ivr::{LockoutConfig, Lockouts, Prompts};
use serde::{Deserialize, Serialize};

/// Messages queued from the transports to the core task.
const CORE_QUEUE: usize = 4096;
/// Messages queued to one connection's writer.
const CONNECTION_QUEUE: usize = 64;
/// Sources the rate limiter remembers.
const MAX_SOURCES: usize = 65_536;
/// Live transactions at most (a call holds a few; the rest is 503): this many per call,
/// and at least [`MIN_TRANSACTIONS`]. A finished UDP transaction lingers 32 s (Timers J
/// and K at T1 = 500 ms), so the table must hold every INVITE and BYE of 32 s of calls:
/// 1000 calls/s is 64,000 (`confer bench sip` ran into 16,384 at 300 calls/s). A
/// transaction holds about a kilobyte.
const TRANSACTIONS_PER_CALL: usize = 8;
/// See [`TRANSACTIONS_PER_CALL`].
const MIN_TRANSACTIONS: usize = 65_536;
/// How long one write to a connection may take before the connection is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the core gives calls' media to be released at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Read buffer of a connection.
const READ_CHUNK: usize = 16 * 1024;
/// The journal state key of the registrar's bindings.
const BINDINGS_KEY: &str = "registrar_bindings";
/// The bindings are saved at most this often (and at shutdown).
const BINDINGS_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// The version of the saved bindings' document.
const BINDINGS_VERSION: u32 = 1;

/// What the transports and the core task share.
struct Shared {
    metrics: Arc<SipMetrics>,
    limiter: Mutex<Limiter>,
    caps: Capabilities,
    core: mpsc::Sender<(Message, Peer)>,
    connections: Mutex<Connections>,
    udp: Arc<UdpSocket>,
    max_message: usize,
    force_rport: bool,
    message_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    max_per_ip: usize,
    agent: String,
    /// The trunks' inbound addresses: exempt from the per-source rate limit.
    trunk_sources: Vec<IpAddr>,
    /// Connections that closed, for the registrar (their bindings go).
    closed_flows: mpsc::Sender<Peer>,
}

/// The rate limiter and when its banned-sources gauge was last refreshed.
struct Limiter {
    limits: RateLimiter,
    gauge_at: Option<std::time::Instant>,
}

/// Open stream connections: their outgoing queues by (TLS?, peer), and counts per IP.
#[derive(Default)]
struct Connections {
    writers: HashMap<(bool, SocketAddr), mpsc::Sender<Bytes>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Removes a connection from the table when its task ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    key: (bool, SocketAddr),
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut c = lock(&self.shared.connections);
        c.writers.remove(&self.key);
        let ip = self.key.1.ip();
        if let Some(n) = c.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
        self.shared
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        let (tls, addr) = self.key;
        let transport = if tls { Transport::Tls } else { Transport::Tcp };
        // A full queue (a flood of connections) or a core gone (confer stopping) loses
        // the news: a binding on this connection then lasts until it expires.
        let _ = self
            .shared
            .closed_flows
            .try_send(Peer::new(transport, addr));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain tables: a panic while holding one leaves consistent data; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tokio clock as a `std` instant (the cores take `std::time::Instant`).
fn now() -> std::time::Instant {
    TokioInstant::now().into_std()
}

/// Spawns `task`, logging and counting its error or panic.
fn supervise<F>(name: &'static str, metrics: Arc<SipMetrics>, task: F)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        let failure = match handle.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) if e.is_cancelled() => return,
            Err(e) => format!("panicked: {e}"),
        };
        tracing::error!(task = name, "SIP task failed: {failure}");
        metrics.task_errors.fetch_add(1, Ordering::Relaxed);
    });
}

/// The capabilities `inspect` checks requests against (REGISTER with the registrar on).
pub fn capabilities(registrar: bool) -> Capabilities {
    let mut methods = vec![
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Options,
        Method::Info,
        Method::Update,
    ];
    if registrar {
        methods.push(Method::Register);
    }
    Capabilities {
        methods,
        supported: vec!["timer".into()],
        // SDP, and the keys of SIP INFO (the core answers each INFO by its type).
        accept: [
            ("application", "sdp"),
            ("application", "dtmf-relay"),
            ("application", "dtmf"),
        ]
        .into_iter()
        .filter_map(|(t, s)| MediaType::new(t, s).ok())
        .collect(),
        ..Capabilities::default()
    }
}

/// A running SIP server (see the module docs).
pub struct SipServer {
    /// The UDP address.
    pub udp: SocketAddr,
    /// The TCP address.
    pub tcp: SocketAddr,
    /// The TLS address, if TLS is on.
    pub tls: Option<SocketAddr>,
    /// The counters.
    pub metrics: Arc<SipMetrics>,
    /// Places and hangs up calls (the control API's handle).
    pub control: SipControl,
    stop: watch::Sender<bool>,
    core: JoinHandle<()>,
}

/// What the control API asks of the SIP core.
enum Control {
    Dial {
        request: Box<DialRequest>,
        /// Where the call's progress goes, besides the room's events.
        progress: Option<mpsc::UnboundedSender<DialProgress>>,
        reply: oneshot::Sender<Result<CallId, DialError>>,
    },
    Ring {
        request: RingRequest,
        progress: mpsc::UnboundedSender<DialProgress>,
        reply: oneshot::Sender<Result<CallId, RingError>>,
    },
    HangUp {
        room: u64,
        call: CallId,
        reply: oneshot::Sender<Result<(), DialError>>,
    },
}

/// Control requests queued for the core.
const CONTROL_QUEUE: usize = 256;

/// The control API's handle on the SIP core: places calls and hangs them up.
#[derive(Clone)]
pub struct SipControl {
    tx: mpsc::Sender<Control>,
}

impl SipControl {
    /// Places `request`; its progress comes as `dial_*` events.
    pub async fn dial(&self, request: DialRequest) -> Result<CallId, DialError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Control::Dial {
                request: Box::new(request),
                progress: None,
                reply,
            })
            .map_err(|_| DialError::Busy)?;
        rx.await.map_err(|_| DialError::Busy)?
    }

    /// Places `request` like [`dial`](Self::dial); its progress also comes on the
    /// receiver, which ends after `Failed` or `HungUp`.
    pub async fn dial_tracked(
        &self,
        request: DialRequest,
    ) -> Result<(CallId, mpsc::UnboundedReceiver<DialProgress>), DialError> {
        let (progress, updates) = mpsc::unbounded_channel();
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Control::Dial {
                request: Box::new(request),
                progress: Some(progress),
                reply,
            })
            .map_err(|_| DialError::Busy)?;
        let call = rx.await.map_err(|_| DialError::Busy)??;
        Ok((call, updates))
    }

    /// Rings a phone registered with our registrar: an INVITE to the binding's contact,
    /// over the flow it registered on (the same UDP socket to its source address, or
    /// the same TCP/TLS connection), offering audio. Answered, it joins `room` like a
    /// dialled call (the participant in [`DialProgress::Answered`]); its progress comes
    /// on the receiver (and as the room's `dial_*` events), which ends after `Failed` or
    /// `HungUp`. [`hang_up`](Self::hang_up) cancels it (CANCEL before the answer, BYE
    /// after). An unknown or lapsed device is [`RingError::UnknownDevice`].
    pub async fn ring(
        &self,
        request: RingRequest,
    ) -> Result<(CallId, mpsc::UnboundedReceiver<DialProgress>), RingError> {
        let (progress, updates) = mpsc::unbounded_channel();
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Control::Ring {
                request,
                progress,
                reply,
            })
            .map_err(|_| DialError::Busy)?;
        let call = rx.await.map_err(|_| DialError::Busy)??;
        Ok((call, updates))
    }

    /// Hangs up a dialled call (CANCEL before the answer, BYE after).
    pub async fn hang_up(&self, room: u64, call: CallId) -> Result<(), DialError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Control::HangUp { room, call, reply })
            .map_err(|_| DialError::Busy)?;
        rx.await.map_err(|_| DialError::Busy)?
    }
}

/// Where SIP records what it does, and who may stop new calls: the event journal (dial-in
/// calls, PIN outcomes, refusals) and the compliance archive (fail closed: while it
/// cannot be written, new calls get 503).
#[derive(Clone, Default)]
pub struct SipRecords {
    pub journal: Option<crate::journal::Journal>,
    pub archive: Option<crate::archive::Archive>,
}

impl SipRecords {
    fn gate(&self) -> super::core::CallGate {
        let journal = self.journal.clone();
        let admit = self.archive.clone().map(|archive| {
            let journal = journal.clone();
            Arc::new(move || {
                archive.admit("sip_call").map_err(|r| {
                    let reason = r.to_string();
                    if let Some(j) = &journal {
                        crate::uc::Refused {
                            what: "sip_call",
                            who: None,
                            rule: r.reason,
                            reason: &reason,
                        }
                        .journal(
                            j,
                            "sip",
                            "call_refused",
                            crate::uc::now(),
                        );
                    }
                    reason
                })
            }) as Arc<dyn Fn() -> Result<(), String> + Send + Sync>
        });
        let accepted = journal.map(|j| {
            Arc::new(move |d: super::core::DialIn| {
                let mut body = serde_json::Map::new();
                body.insert("caller".into(), d.caller.into());
                body.insert("called".into(), d.called.into());
                if let Some(r) = d.room {
                    body.insert("room_name".into(), r.into());
                }
                if let Some(t) = d.trunk {
                    body.insert("trunk".into(), t.into());
                }
                j.append("sip", "dial_in", crate::uc::now(), body);
            }) as Arc<dyn Fn(super::core::DialIn) + Send + Sync>
        });
        super::core::CallGate { admit, accepted }
    }
}

/// What the registrar needs from the rest of confer. The default is no registrar:
/// REGISTER is answered 405.
#[derive(Debug, Default)]
pub struct RegistrarSetup {
    /// Serve REGISTER.
    pub enabled: bool,
    /// The accounts phones register with (filled by the user API).
    pub accounts: SipAccounts,
    /// Where bindings are reported (none: not reported).
    pub events: Option<mpsc::UnboundedSender<RegistrarEvent>>,
    /// Our SIP domains (empty: any host name is ours; IP literals always are).
    pub domains: Vec<String>,
    /// Challenge phones with MD5 first (for sipp 3.6 and phones like it).
    pub md5_first: bool,
    /// Challenge phones with MD5 alone (for baresip 1.0 and phones like it); wins over
    /// `md5_first`.
    pub md5_only: bool,
}

impl SipServer {
    /// Binds the sockets of `cfg` and starts serving; calls join rooms of `host`; phones
    /// register with the accounts of `registrar`.
    pub async fn start(
        cfg: &Config,
        host: Host,
        pins: Arc<Pins>,
        trunks: Arc<Trunks>,
        registrar: RegistrarSetup,
        records: SipRecords,
    ) -> anyhow::Result<SipServer> {
        use anyhow::Context;
        let udp = UdpSocket::bind(cfg.sip_listen)
            .await
            .with_context(|| format!("binding SIP over UDP to {}", cfg.sip_listen))?;
        let udp_addr = udp.local_addr()?;
        // With port 0, TCP takes UDP's port when it is free (one port to tell peers).
        let tcp = match (cfg.sip_listen.port(), TcpListener::bind(udp_addr).await) {
            (_, Ok(l)) => l,
            (0, Err(_)) => TcpListener::bind(cfg.sip_listen).await?,
            (_, Err(e)) => {
                return Err(e).with_context(|| format!("binding SIP over TCP to {udp_addr}"));
            }
        };
        let tcp_addr = tcp.local_addr()?;
        let tls = match (&cfg.sip_tls_listen, &cfg.sip_tls_cert, &cfg.sip_tls_key) {
            (Some(addr), Some(cert), Some(key)) => {
                let acceptor = super::tls::acceptor(cert, key)?;
                let l = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding SIP over TLS to {addr}"))?;
                Some((l, acceptor))
            }
            _ => None,
        };
        let tls_addr = match &tls {
            Some((l, _)) => Some(l.local_addr()?),
            None => None,
        };

        let metrics = Arc::new(SipMetrics::default());
        let (core_tx, core_rx) = mpsc::channel(CORE_QUEUE);
        let (flows_tx, flows_rx) = mpsc::channel(CORE_QUEUE);
        let udp = Arc::new(udp);
        let shared = Arc::new(Shared {
            metrics: metrics.clone(),
            limiter: Mutex::new(Limiter {
                limits: RateLimiter::new(
                    cfg.sip_rate_per_second,
                    cfg.sip_rate_burst,
                    Duration::from_secs(u64::from(cfg.sip_ban_seconds)),
                    MAX_SOURCES,
                ),
                gauge_at: None,
            }),
            caps: capabilities(registrar.enabled),
            core: core_tx,
            connections: Mutex::new(Connections::default()),
            udp: udp.clone(),
            max_message: cfg.sip_max_message_bytes,
            force_rport: cfg.sip_force_rport,
            message_timeout: Duration::from_millis(cfg.sip_message_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.sip_idle_timeout_ms),
            max_connections: cfg.sip_max_connections,
            max_per_ip: cfg.sip_max_connections_per_ip,
            trunk_sources: trunks.inbound_addresses(),
            closed_flows: flows_tx,
            agent: format!("confer/{}", env!("CARGO_PKG_VERSION")),
        });

        let advertised = [cfg.sip_listen.ip(), cfg.media_ip]
            .into_iter()
            .find(|ip| !ip.is_unspecified())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let media_caps = LocalCapabilities::new(&[SdpCodec::Pcmu, SdpCodec::Pcma, SdpCodec::Opus])
            .and_then(|c| c.with_ptime(cfg.frame_ms))
            .and_then(|c| c.with_frame_ms(cfg.frame_ms))
            .map_err(|e| anyhow::anyhow!("SDP capabilities: {e}"))?;
        let core_config = CoreConfig {
            dial_plan: DialPlan::new(&cfg.dial_in, &cfg.sip_country_code)?,
            max_calls: cfg.sip_max_calls,
            max_transactions: cfg
                .sip_max_calls
                .saturating_mul(TRANSACTIONS_PER_CALL)
                .max(MIN_TRANSACTIONS),
            session_timer: SessionTimerConfig {
                interval: cfg.sip_session_expires,
                ..SessionTimerConfig::default()
            },
            media_caps,
            transactions: TransactionConfig {
                timers: TimerConfig {
                    t1: Duration::from_millis(cfg.sip_t1_ms),
                    ..TimerConfig::default()
                },
                ..TransactionConfig::default()
            },
            local: LocalAddrs {
                ip: advertised,
                udp: Some(udp_addr.port()),
                tcp: Some(tcp_addr.port()),
                tls: tls_addr.map(|a| a.port()),
            },
            agent: shared.agent.clone(),
            registrations: trunks.registrations()?,
            inbound: match cfg.sip_inbound.as_str() {
                "trunks" => InboundPolicy::TrunksOnly,
                _ => InboundPolicy::Any,
            },
            trunks,
            registrar: RegistrarConfig {
                enabled: registrar.enabled,
                accounts: registrar.accounts,
                domains: registrar.domains,
                stream_idle: Some(Duration::from_millis(cfg.sip_idle_timeout_ms)),
                challenges: match (registrar.md5_only, registrar.md5_first) {
                    (true, _) => Challenges::Md5Only,
                    (false, true) => Challenges::Md5ThenSha256,
                    (false, false) => Challenges::Sha256ThenMd5,
                },
            },
            gate: records.gate(),
        };
        tracing::info!(
            numbers = core_config.dial_plan.len(),
            udp = %udp_addr,
            tcp = %tcp_addr,
            tls = ?tls_addr,
            "SIP listening"
        );
        let mut core = SipCore::new(core_config, StdRng::from_os_rng(), metrics.clone());
        let bindings = match &records.journal {
            Some(journal) if registrar.enabled => {
                restore_bindings(&mut core, journal).await;
                Some(BindingSaver::start(journal.clone()))
            }
            _ => None,
        };
        let (stop, stop_rx) = watch::channel(false);

        supervise(
            "sip-udp",
            metrics.clone(),
            receive_udp(shared.clone(), stop_rx.clone()),
        );
        supervise(
            "sip-tcp",
            metrics.clone(),
            accept(tcp, None, shared.clone(), stop_rx.clone()),
        );
        if let Some((listener, acceptor)) = tls {
            supervise(
                "sip-tls",
                metrics.clone(),
                accept(listener, Some(acceptor), shared.clone(), stop_rx.clone()),
            );
        }
        let (media_tx, media_rx) = mpsc::channel(cfg.sip_max_calls.saturating_mul(4).max(64));
        let setup = PromptSetup {
            pins,
            lockouts: Lockouts::new(LockoutConfig::default())
                .map_err(|e| anyhow::anyhow!("PIN lock-out: {e}"))?,
            prompts: Prompts::embedded(ROOM_RATE)
                .map_err(|e| anyhow::anyhow!("the PIN prompts' audio: {e}"))?,
            pin_digits: cfg.pin_digits,
            journal: records.journal.clone(),
        };
        let events = host.clone();
        let media = MediaDriver::new(host, media_tx, metrics.clone(), setup)?;
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let core = tokio::spawn(run_core(
            core,
            Inputs {
                inbound: core_rx,
                media_results: media_rx,
                control: control_rx,
                closed_flows: flows_rx,
                registrar: registrar.events,
                bindings,
            },
            media,
            events,
            shared,
            stop_rx,
        ));
        Ok(SipServer {
            udp: udp_addr,
            tcp: tcp_addr,
            tls: tls_addr,
            metrics,
            control: SipControl { tx: control_tx },
            stop,
            core,
        })
    }

    /// Ends every call (BYE, or 503 before the answer), releases their media, stops.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(SHUTDOWN_GRACE * 2, self.core).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("the SIP core task failed: {e}");
                self.metrics.task_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tracing::warn!("the SIP core did not stop in time"),
        }
    }
}

/// Sends one transmission of the core: UDP directly, streams through their connection.
fn transmit(shared: &Shared, t: Transmit) -> bool {
    let Transmit {
        destination, bytes, ..
    } = t;
    let ok = match destination.transport {
        Transport::Udp => {
            let ok = shared.udp.try_send_to(&bytes, destination.addr).is_ok();
            if ok {
                shared.metrics.sent(Wire::Udp);
            }
            ok
        }
        Transport::Tcp | Transport::Tls => {
            let tls = destination.transport == Transport::Tls;
            let writer = lock(&shared.connections)
                .writers
                .get(&(tls, destination.addr))
                .cloned();
            // The connection task counts what it writes.
            writer.is_some_and(|w| w.try_send(bytes).is_ok())
        }
        _ => false,
    };
    if !ok {
        shared.metrics.send_errors.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// What the core task listens to.
struct Inputs {
    inbound: mpsc::Receiver<(Message, Peer)>,
    media_results: mpsc::Receiver<super::core::MediaEvent>,
    control: mpsc::Receiver<Control>,
    closed_flows: mpsc::Receiver<Peer>,
    /// Where the registrar's events go (an output, carried here with the inputs).
    registrar: Option<mpsc::UnboundedSender<RegistrarEvent>>,
    /// Where the registrar's bindings are saved (an output too).
    bindings: Option<BindingSaver>,
}

/// The registrar's bindings as saved in the journal's state ([`BINDINGS_KEY`]):
/// `{"version": 1, "bindings": [...]}`, each binding a [`SavedBinding`] (expiries in
/// Unix milliseconds).
#[derive(Serialize, Deserialize)]
struct SavedBindings {
    version: u32,
    bindings: Vec<SavedBinding>,
}

/// Gives `core` the bindings saved before a restart. A snapshot that cannot be read is
/// left alone (the phones register again, as they would without one).
async fn restore_bindings(core: &mut SipCore<StdRng>, journal: &Journal) {
    let text = match journal.load_state(BINDINGS_KEY).await {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("reading the saved SIP bindings: {e}");
            return;
        }
    };
    let doc = match serde_json::from_str::<SavedBindings>(&text) {
        Ok(doc) if doc.version == BINDINGS_VERSION => doc,
        Ok(doc) => {
            tracing::warn!(
                version = doc.version,
                "saved SIP bindings of another version"
            );
            return;
        }
        Err(e) => {
            tracing::warn!("reading the saved SIP bindings: {e}");
            return;
        }
    };
    let saved = doc.bindings.len();
    let restored = core.restore_bindings(doc.bindings, now(), crate::uc::now().0);
    tracing::info!(
        restored,
        dropped = saved - restored,
        "SIP bindings restored (lapsed, TCP and TLS ones are dropped)"
    );
}

/// Saves snapshots of the registrar's bindings (see "Bindings" in the module docs).
struct BindingSaver {
    /// To the writer task; one snapshot waits at most.
    tx: mpsc::Sender<String>,
    writer: JoinHandle<()>,
    /// Bindings changed since the last snapshot.
    dirty: bool,
    /// When the last snapshot was taken.
    last: std::time::Instant,
}

impl BindingSaver {
    fn start(journal: Journal) -> BindingSaver {
        let (tx, mut rx) = mpsc::channel::<String>(1);
        let writer = tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                if let Err(e) = journal.save_state(BINDINGS_KEY, &text).await {
                    tracing::warn!("saving the SIP bindings: {e}");
                }
            }
        });
        BindingSaver {
            tx,
            writer,
            dirty: false,
            last: now(),
        }
    }

    /// When the next snapshot is due (none: nothing changed).
    fn due(&self) -> Option<std::time::Instant> {
        self.dirty.then_some(self.last + BINDINGS_SAVE_INTERVAL)
    }

    fn snapshot(core: &SipCore<StdRng>) -> Option<String> {
        let doc = SavedBindings {
            version: BINDINGS_VERSION,
            bindings: core.export_bindings(now(), crate::uc::now().0),
        };
        serde_json::to_string(&doc)
            .map_err(|e| tracing::error!("the SIP bindings as JSON: {e}"))
            .ok()
    }

    /// Hands a snapshot to the writer unless it is still busy with the previous one (then
    /// the next turn takes one).
    fn save(&mut self, core: &SipCore<StdRng>) {
        self.last = now();
        let Some(text) = Self::snapshot(core) else {
            self.dirty = false;
            return;
        };
        match self.tx.try_send(text) {
            Ok(()) => self.dirty = false,
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the SIP bindings' writer stopped: bindings are no longer saved");
                self.dirty = false;
            }
        }
    }

    /// Takes the last snapshot (when something changed); the future writes it and ends
    /// the writer, giving up after [`SHUTDOWN_GRACE`].
    fn finish(self, core: &SipCore<StdRng>) -> impl std::future::Future<Output = ()> + use<> {
        let BindingSaver {
            tx, writer, dirty, ..
        } = self;
        let last = if dirty { Self::snapshot(core) } else { None };
        async move {
            let written = async {
                if let Some(text) = last {
                    // The writer gone has said so already.
                    let _ = tx.send(text).await;
                }
                drop(tx);
                writer.await
            };
            match tokio::time::timeout(SHUTDOWN_GRACE, written).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("the SIP bindings' writer failed: {e}"),
                Err(_) => tracing::warn!("the SIP bindings were not saved in time"),
            }
        }
    }
}

/// Unix milliseconds of `at`, read off the system clock at `now` (the core keeps
/// `Instant`s; peers of confer want wall-clock times).
fn unix_ms(at: std::time::Instant, now: std::time::Instant) -> u64 {
    let wall = std::time::SystemTime::now();
    let t = match at.checked_duration_since(now) {
        Some(ahead) => wall.checked_add(ahead),
        None => wall.checked_sub(now.saturating_duration_since(at)),
    };
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// The per-call progress receivers of tracked calls and rings.
#[derive(Default)]
struct Trackers(HashMap<CallId, mpsc::UnboundedSender<DialProgress>>);

impl Trackers {
    /// Passes `progress` on; the last one (failed, hung up) closes the receiver.
    fn report(&mut self, call: CallId, progress: DialProgress) {
        let last = matches!(progress, DialProgress::Failed { .. } | DialProgress::HungUp);
        if let Some(tx) = self.0.get(&call) {
            // A receiver dropped by its owner is nobody's loss.
            let _ = tx.send(progress);
        }
        if last {
            self.0.remove(&call);
        }
    }
}

/// The event of a dialled call's progress.
fn dial_event(call: CallId, room: u64, progress: DialProgress) -> EventMsg {
    let (kind, participant, status) = match progress {
        DialProgress::Trying => ("dial_trying", None, None),
        DialProgress::Ringing => ("dial_ringing", None, None),
        DialProgress::Answered { participant } => ("dial_answered", Some(participant), None),
        DialProgress::Failed { status } => ("dial_failed", None, Some(status)),
        DialProgress::HungUp => ("dial_hung_up", None, None),
    };
    EventMsg {
        room,
        kind,
        participant,
        reason: None,
        digit: None,
        call: Some(call),
        status,
        recording: None,
        identity: None,
        media_time_ms: None,
    }
}

async fn run_core(
    mut core: SipCore<StdRng>,
    inputs: Inputs,
    mut media: MediaDriver,
    events: Host,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let Inputs {
        mut inbound,
        mut media_results,
        mut control,
        mut closed_flows,
        registrar,
        mut bindings,
    } = inputs;
    core.start_registrations(now());
    let mut trackers = Trackers::default();
    // Passes the core's output on; whether a binding changed.
    let flush = |core: &mut SipCore<StdRng>, media: &mut MediaDriver, trackers: &mut Trackers| {
        let mut changed = false;
        while let Some(o) = core.poll_output() {
            match o {
                Output::Transmit(t) => {
                    let id = t.transaction;
                    if !transmit(&shared, t)
                        && let Some(id) = id
                    {
                        core.on_transport_error(id, now());
                    }
                }
                Output::Media { call, command } => media.run(call, command),
                Output::Dial {
                    call,
                    room,
                    progress,
                } => {
                    trackers.report(call, progress);
                    events.publish(dial_event(call, room, progress));
                }
                Output::Registrar(e) => {
                    changed = true;
                    if let Some(tx) = &registrar {
                        let at = now();
                        // A receiver gone is the rest of confer stopping.
                        let _ = tx.send(e.into_event(|i| unix_ms(i, at)));
                    }
                }
            }
        }
        changed
    };
    let mut changed = flush(&mut core, &mut media, &mut trackers);
    loop {
        if let Some(b) = &mut bindings {
            b.dirty |= changed;
        }
        let deadline = core.next_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(TokioInstant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        let save_at = bindings.as_ref().and_then(BindingSaver::due);
        let save = async {
            match save_at {
                Some(at) => tokio::time::sleep_until(TokioInstant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = inbound.recv() => match m {
                Some((message, peer)) => core.on_message(message, peer, now()),
                None => break,
            },
            Some(e) = media_results.recv() => core.on_media(e, now()),
            Some(flow) = closed_flows.recv() => core.on_flow_closed(&flow),
            Some(c) = control.recv() => match c {
                Control::Dial { request, progress, reply } => {
                    let placed = core.dial(*request, now());
                    if let (Ok(call), Some(tx)) = (&placed, progress) {
                        trackers.0.insert(*call, tx);
                    }
                    let _ = reply.send(placed);
                }
                Control::Ring { request, progress, reply } => {
                    let placed = core.ring(request, now());
                    if let Ok(call) = &placed {
                        trackers.0.insert(*call, progress);
                    }
                    let _ = reply.send(placed);
                }
                Control::HangUp { room, call, reply } => {
                    let _ = reply.send(core.hang_up_dialled_in(call, Some(room), now()));
                }
            },
            () = sleep => core.handle_timeout(now()),
            () = save => {
                if let Some(b) = &mut bindings {
                    b.save(&core);
                }
            }
            _ = stop.changed() => break,
        }
        changed = flush(&mut core, &mut media, &mut trackers);
    }
    core.shutdown(now());
    changed = flush(&mut core, &mut media, &mut trackers);
    let saved = bindings.map(|mut b| {
        b.dirty |= changed;
        b.finish(&core)
    });
    drop(media_results);
    let saved = async {
        if let Some(saved) = saved {
            saved.await;
        }
    };
    tokio::join!(media.finish(SHUTDOWN_GRACE), saved);
    // The last BYEs on stream connections leave through their writers.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Where a response the listener gives itself goes over UDP (RFC 3261 §18.2.2, RFC
/// 3581): the source port with forced or requested rport, else the Via's port.
fn udp_reply_to(basis: &ResponseBasis, source: SocketAddr, force_rport: bool) -> SocketAddr {
    match basis.top_via() {
        Some(Ok(via)) if !force_rport && via.rport().is_none() => {
            SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
        }
        _ => source,
    }
}

/// Adds `rport` to the top Via of a request (what `sip_force_rport` means), so that the
/// transaction layer answers to the source port.
fn force_rport(req: &mut Request) {
    let Ok(mut vias) = req.headers.vias() else {
        return;
    };
    let Some(top) = vias.first_mut() else {
        return;
    };
    if top.rport().is_some() {
        return;
    }
    let Ok(name) = Token::new("rport") else {
        return;
    };
    top.params.push(Param { name, value: None });
    let Some(first) = req
        .headers
        .iter()
        .position(|f| f.known == Some(HeaderName::Via))
    else {
        return;
    };
    req.headers.remove(HeaderName::Via);
    for (i, v) in vias.iter().enumerate() {
        // A Via displays without CR or LF.
        let _ = req
            .headers
            .insert(first + i, HeaderName::Via, &v.to_string());
    }
}

/// What the listener does with one message after `inspect`.
enum Verdicts {
    /// Passed to the core (or dropped and counted).
    Done,
    /// Answer with these bytes.
    Reply(Bytes, ResponseBasis),
}

fn rejection_bytes(shared: &Shared, rejection: &Rejection, basis: &ResponseBasis) -> Bytes {
    let mut r = rejection.response(basis, Some(&new_tag(&mut rand::rng())));
    let _ = r.headers.push(HeaderName::Server, &shared.agent);
    shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    Bytes::from(Message::Response(r).to_vec())
}

/// 513 (or 400 for a bad framing) from the headers salvaged from `head`.
fn salvaged_reply(
    shared: &Shared,
    head: &[u8],
    status: StatusCode,
) -> Option<(Bytes, ResponseBasis)> {
    let basis = ResponseBasis::salvage(head)?;
    let mut r = build_response(
        &basis,
        status,
        status.canonical_reason(),
        Some(&new_tag(&mut rand::rng())),
    );
    let _ = r.headers.push(HeaderName::Server, &shared.agent);
    shared.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    if status == StatusCode::MESSAGE_TOO_LARGE {
        shared.metrics.too_large.fetch_add(1, Ordering::Relaxed);
    }
    Some((Bytes::from(Message::Response(r).to_vec()), basis))
}

fn dispose(shared: &Shared, disposition: Disposition, peer: Peer) -> Verdicts {
    let message = match disposition {
        Disposition::Request(mut req) => {
            if shared.force_rport && peer.transport == Transport::Udp {
                force_rport(&mut req);
            }
            Message::Request(req)
        }
        Disposition::Response(r) => Message::Response(r),
        Disposition::Reject { rejection, basis } => {
            tracing::debug!(status = rejection.status.as_u16(), cause = ?rejection.cause, peer = %peer.addr, "rejected by the listener");
            return Verdicts::Reply(rejection_bytes(shared, &rejection, &basis), basis);
        }
        Disposition::Drop(reason) => {
            let why = match reason {
                DropReason::Unparsable(_) => Dropped::Unparsable,
                DropReason::MalformedResponse(_)
                | DropReason::ResponseVersion(_)
                | DropReason::ResponseWithSeveralVias => Dropped::MalformedResponse,
                DropReason::Unanswerable(_) => Dropped::Unanswerable,
            };
            shared.metrics.dropped(why);
            return Verdicts::Done;
        }
    };
    if shared.core.try_send((message, peer)).is_err() {
        shared.metrics.dropped(Dropped::CoreBusy);
    }
    Verdicts::Done
}

/// Charges one message from `ip`; false when it must be dropped. A trunk's addresses are
/// not limited: one SBC carries every caller of a carrier.
fn admit(shared: &Shared, ip: IpAddr) -> bool {
    if shared.trunk_sources.contains(&ip) {
        return true;
    }
    let t = now();
    let mut limiter = lock(&shared.limiter);
    let verdict = limiter.limits.check(ip, t);
    if let Verdict::Banned { newly: true } = verdict {
        tracing::warn!(source = %ip, "SIP rate limit exceeded: source banned");
        shared.metrics.bans.fetch_add(1, Ordering::Relaxed);
    }
    // Counting the bans walks the table: at a new ban, else at most once a second.
    let stale = limiter
        .gauge_at
        .is_none_or(|at| t.saturating_duration_since(at) >= Duration::from_secs(1));
    if stale || verdict == (Verdict::Banned { newly: true }) {
        limiter.gauge_at = Some(t);
        let banned = limiter.limits.banned(t) as u64;
        shared
            .metrics
            .banned_sources
            .store(banned, Ordering::Relaxed);
    }
    if verdict == Verdict::Allow {
        return true;
    }
    shared.metrics.dropped(Dropped::Banned);
    false
}

async fn receive_udp(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    // One byte more than the limit, so that an oversized datagram is seen as such.
    let mut buf = vec![0u8; shared.max_message.min(65_535) + 1];
    let mut last_error = None::<io::ErrorKind>;
    loop {
        let (n, from) = tokio::select! {
            r = shared.udp.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable from an earlier send and the like: count, go on.
                    if last_error != Some(e.kind()) {
                        tracing::debug!("SIP UDP receive: {e}");
                        last_error = Some(e.kind());
                    }
                    shared.metrics.task_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        shared.metrics.received(Wire::Udp);
        if !admit(&shared, from.ip()) {
            continue;
        }
        let data = &buf[..n];
        if data
            .iter()
            .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
        {
            // A keep-alive (CRLF or NUL datagrams): nothing to answer over UDP.
            shared.metrics.keepalives.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let reply = if n > shared.max_message {
            match salvaged_reply(&shared, data, StatusCode::MESSAGE_TOO_LARGE) {
                Some(r) => Some(r),
                None => {
                    shared.metrics.dropped(Dropped::TooLarge);
                    None
                }
            }
        } else {
            match dispose(&shared, inspect(data, &shared.caps), Peer::udp(from)) {
                Verdicts::Done => None,
                Verdicts::Reply(bytes, basis) => Some((bytes, basis)),
            }
        };
        if let Some((bytes, basis)) = reply {
            let to = udp_reply_to(&basis, from, shared.force_rport);
            if shared.udp.try_send_to(&bytes, to).is_ok() {
                shared.metrics.sent(Wire::Udp);
            } else {
                shared.metrics.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!("SIP accept: {e}");
                    shared.metrics.task_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let is_tls = tls.is_some();
        let Some((registration, outgoing)) = register(&shared, is_tls, peer) else {
            shared
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        shared
            .metrics
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        let metrics = shared.metrics.clone();
        match &tls {
            None => supervise(
                "sip-tcp-connection",
                metrics,
                serve_stream(
                    stream,
                    peer,
                    Wire::Tcp,
                    shared,
                    outgoing,
                    registration,
                    stop,
                ),
            ),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                supervise("sip-tls-connection", metrics, async move {
                    let handshake = tokio::time::timeout(
                        shared.message_timeout.max(Duration::from_secs(1)),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(s)) => {
                            serve_stream(s, peer, Wire::Tls, shared, outgoing, registration, stop)
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            shared
                                .metrics
                                .connections_refused
                                .fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(_) => {
                            shared
                                .metrics
                                .closed_timeout
                                .fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                    }
                });
            }
        }
    }
}

/// Admits a new connection (ban, total and per-IP caps) and enters it in the table.
fn register(
    shared: &Arc<Shared>,
    tls: bool,
    peer: SocketAddr,
) -> Option<(Registration, mpsc::Receiver<Bytes>)> {
    if !admit(shared, peer.ip()) {
        return None;
    }
    let mut c = lock(&shared.connections);
    let here = c.per_ip.get(&peer.ip()).copied().unwrap_or(0);
    if c.writers.len() >= shared.max_connections || here >= shared.max_per_ip {
        tracing::debug!(%peer, "SIP connection refused: connection limit");
        return None;
    }
    let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
    c.writers.insert((tls, peer), tx);
    *c.per_ip.entry(peer.ip()).or_insert(0) += 1;
    shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
    Some((
        Registration {
            shared: shared.clone(),
            key: (tls, peer),
        },
        rx,
    ))
}

/// Why a connection ends.
enum Close {
    /// The peer closed (or sent a half message and closed).
    Eof,
    /// A fatal framing error (answered when possible).
    Framing,
    /// Banned mid-connection.
    Banned,
    /// Slow loris or idle.
    Timeout,
    /// Shutdown.
    Stop,
}

/// Hands one framed message from a connection to the core (through `inspect`), writing
/// back the answer when the listener answers it itself.
async fn answer_frame<W: AsyncWrite + Unpin>(
    shared: &Shared,
    frame: &[u8],
    transport: Transport,
    peer: SocketAddr,
    wire: Wire,
    wr: &mut W,
) -> io::Result<()> {
    let verdict = dispose(
        shared,
        inspect(frame, &shared.caps),
        Peer::new(transport, peer),
    );
    if let Verdicts::Reply(bytes, _) = verdict {
        write_all(wr, &bytes).await?;
        shared.metrics.sent(wire);
    }
    Ok(())
}

async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_stream<S>(
    stream: S,
    peer: SocketAddr,
    wire: Wire,
    shared: Arc<Shared>,
    mut outgoing: mpsc::Receiver<Bytes>,
    registration: Registration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _registration = registration;
    let transport = if wire == Wire::Tls {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut framer = StreamFramer::with_max_message_size(shared.max_message);
    // The bytes the framer holds (its buffer's tail), so that the headers of a message
    // it fails on can be salvaged for the answer.
    let mut pending = BytesMut::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut last_read = TokioInstant::now();
    let mut message_started: Option<TokioInstant> = None;
    let close = loop {
        let deadline = match message_started {
            Some(t) => (t + shared.message_timeout).min(last_read + shared.idle_timeout),
            None => last_read + shared.idle_timeout,
        };
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = match r {
                    Ok(0) => {
                        if framer.finish().is_err() {
                            tracing::debug!(%peer, "connection closed inside a message");
                        }
                        break Close::Eof;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(%peer, "SIP connection read: {e}");
                        break Close::Eof;
                    }
                };
                last_read = TokioInstant::now();
                pending.extend_from_slice(&buf[..n]);
                framer.push(&buf[..n]);
                let mut outcome = None;
                loop {
                    let keep = framer.buffered().min(pending.len());
                    pending.advance(pending.len() - keep);
                    match framer.next_frame() {
                        Ok(Some(frame)) => {
                            shared.metrics.received(wire);
                            if !admit(&shared, peer.ip()) {
                                outcome = Some(Close::Banned);
                                break;
                            }
                            answer_frame(&shared, &frame, transport.clone(), peer, wire, &mut wr)
                                .await?;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            shared.metrics.received(wire);
                            let status = match e {
                                FrameError::TooLarge { .. } => StatusCode::MESSAGE_TOO_LARGE,
                                FrameError::Malformed { frame, .. } => {
                                    // Not fatal (and `next_frame` never returns it):
                                    // answered like a datagram, and on.
                                    answer_frame(
                                        &shared,
                                        &frame,
                                        transport.clone(),
                                        peer,
                                        wire,
                                        &mut wr,
                                    )
                                    .await?;
                                    continue;
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            tracing::debug!(%peer, "SIP framing error, closing: {e}");
                            match salvaged_reply(&shared, &pending, status) {
                                Some((bytes, _)) => {
                                    write_all(&mut wr, &bytes).await?;
                                    shared.metrics.sent(wire);
                                }
                                None if status == StatusCode::MESSAGE_TOO_LARGE => {
                                    shared.metrics.dropped(Dropped::TooLarge);
                                }
                                None => shared.metrics.dropped(Dropped::Unparsable),
                            }
                            outcome = Some(Close::Framing);
                            break;
                        }
                    }
                }
                if let Some(c) = outcome {
                    break c;
                }
                let pings = framer.take_pings();
                for _ in 0..pings {
                    write_all(&mut wr, b"\r\n").await?;
                    shared.metrics.keepalives.fetch_add(1, Ordering::Relaxed);
                }
                message_started = match (framer.is_mid_message(), message_started) {
                    (false, _) => None,
                    (true, Some(t)) => Some(t),
                    (true, None) => Some(last_read),
                };
            }
            Some(bytes) = outgoing.recv() => {
                write_all(&mut wr, &bytes).await?;
                shared.metrics.sent(wire);
            }
            () = tokio::time::sleep_until(deadline) => break Close::Timeout,
            _ = stop.changed() => break Close::Stop,
        }
    };
    match close {
        Close::Framing => {
            shared
                .metrics
                .closed_framing
                .fetch_add(1, Ordering::Relaxed);
        }
        Close::Timeout => {
            tracing::debug!(%peer, mid_message = message_started.is_some(), "SIP connection timed out");
            shared
                .metrics
                .closed_timeout
                .fetch_add(1, Ordering::Relaxed);
        }
        Close::Eof | Close::Banned => {}
        Close::Stop => {
            // Whatever the core still sends (BYEs at shutdown) goes out first.
            while let Ok(Some(bytes)) =
                tokio::time::timeout(Duration::from_millis(200), outgoing.recv()).await
            {
                write_all(&mut wr, &bytes).await?;
            }
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

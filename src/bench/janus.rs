//! A driver for a real Janus AudioBridge (Debian package `janus`), so that `confer bench`
//! can put the same synthetic plain-RTP load on Janus and on confer's conference engine.
//!
//! # Design
//!
//! - **A private Janus.** [`Janus::start`] writes its own configuration under a work
//!   directory and starts `janus -C <conf>/janus.jcfg -F <conf>`: only the HTTP transport
//!   (loopback, a free port) and the AudioBridge plugin are loaded (every other plugin,
//!   transport and logger of the installation is in a `disable` list, event handlers are
//!   off), sessions never time out, handles share two static event loops instead of one
//!   idle thread each, and the log goes to `<work_dir>/janus.log`. The plain-RTP ports of
//!   the AudioBridge come from a configurable range ([`JanusOptions::rtp_ports`]); Janus
//!   binds them on 127.0.0.1.
//! - **One Janus session, one handle per participant.** An AudioBridge handle is one
//!   participant, so every [`Janus::join_rtp`] attaches a handle and sends `join` on it.
//!   Room management (`create`, `destroy`) goes over one extra handle. All requests reuse
//!   keep-alive connections of one `ureq` agent.
//! - **Events by long poll.** `join` is asynchronous in the AudioBridge: the HTTP answer is
//!   an `ack` and the real answer arrives as an event of the session. One thread
//!   long-polls `GET /janus/<session>?maxev=N` for the life of the process and hands the
//!   events that carry a transaction (answers to our requests) to the caller; the others
//!   (the AudioBridge tells every participant about every join, media start and leave:
//!   O(N) events per join) are counted and dropped, so Janus's event queue never grows.
//!   The long poll also keeps the session alive.
//! - **Blocking API, clear errors.** Every wait has a deadline; errors name the log file.
//!   The process is stopped with SIGTERM (then SIGKILL after a timeout) by
//!   [`Janus::stop`], and killed by `Drop`.
//!
//! # What Janus does with a plain-RTP participant (AudioBridge 1.1.2, read in
//! `src/plugins/janus_audiobridge.c` and observed)
//!
//! - The room must be created with `allow_rtp_participants: true`.
//! - Each participant gets its own UDP socket from the range, `connect`ed to the address
//!   declared in `join`: Janus takes RTP only from that exact address and port, and sends
//!   that participant's mix from that socket (so the source port identifies the
//!   participant). Several participants may declare the same client address.
//! - Janus sends nothing to a participant before it has received one RTP packet from it;
//!   it drops the first 2 packets of a stream (probation) and buffers `prebuffer` packets
//!   (default 6, per room `default_prebuffering` or per participant `prebuffer`) before
//!   mixing it.
//! - The Opus encoder complexity is per participant (`quality` in `join`, default 4);
//!   [`RoomOpts::complexity`] is applied to every join in the room.
//! - Every output stream of a room carries the room's SSRC (random per room).
//! - G.711 participants are resampled to and from the room rate by plain decimation and
//!   zero insertion (no anti-aliasing filter).
//!
//! # Costs to plan a load around (measured here, 2 shared cores)
//!
//! - Start: about 0.1 s; stop with 1000 participants: about 0.3 s.
//! - A join into a room of N is O(N) for Janus (the answer lists the room, every member
//!   is told): 1000 joins into one room took 9-14 s, nearly all of it Janus's CPU.
//! - The first packet of each participant is O(N) too (everyone is told that its media
//!   started), and these run one at a time under the room's lock while Janus already
//!   mixes for the others: with 1000 participants sending their first packet at once, the
//!   median one got its mix after about 8 s and the last after about 20 s. A load must
//!   warm up until every participant receives before it measures.

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

const PLUGIN: &str = "janus.plugin.audiobridge";
/// How long Janus may take to answer its HTTP API after being started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one plain HTTP request may take (a Janus busy mixing a thousand participants
/// can take seconds to answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the asynchronous answer to a request (an event) may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Janus answers an empty long poll after 30 s; the poller waits a little longer.
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// Events fetched per long poll at most.
const LONG_POLL_MAX_EVENTS: u32 = 1000;
/// Largest long-poll answer read (1000 events are far below this).
const LONG_POLL_MAX_BYTES: u64 = 64 << 20;
/// How long Janus may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start Janus. `Default` suits `confer bench`.
#[derive(Debug, Clone)]
pub struct JanusOptions {
    /// The `janus` executable: a bare name is looked up on `PATH`.
    pub binary: PathBuf,
    /// The folder holding Janus's `plugins/`, `transports/`, `events/` and `loggers/`;
    /// `None` finds the installed one (`/usr/lib/<triplet>/janus` on Debian).
    pub lib_dir: Option<PathBuf>,
    /// The AudioBridge's plain-RTP ports, inclusive. Each participant takes one even port,
    /// so a range of 2N ports holds N participants.
    pub rtp_ports: (u16, u16),
    /// Janus's log level, 0-7 (4 = info; 5 and above log per request and slow Janus down).
    pub debug_level: u8,
    /// Static event loops shared by all handles; 0 = Janus's default of one thread per
    /// handle (idle for plain-RTP participants).
    pub event_loops: u32,
}

impl Default for JanusOptions {
    fn default() -> Self {
        JanusOptions {
            binary: PathBuf::from("janus"),
            lib_dir: None,
            // Below Linux's ephemeral ports (32768-60999) and clear of confer's default
            // RTP range (20000-20999): room for 5000 participants.
            rtp_ports: (22_000, 31_999),
            debug_level: 4,
            event_loops: 2,
        }
    }
}

/// Settings of an AudioBridge room. `None` keeps Janus's default.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomOpts {
    /// The mixing rate (`sampling_rate`): 8000, 16000, 24000 or 48000.
    pub sampling_rate: u32,
    /// Opus encoder complexity 1-10 for every participant of the room (the AudioBridge sets
    /// it per participant, `quality` in `join`; Janus's default is 4).
    pub complexity: Option<u8>,
    /// Packets buffered before a participant is mixed (`default_prebuffering`; Janus's
    /// default is 6, at most 50).
    pub prebuffer_packets: Option<u32>,
    /// Emit talking/stopped-talking events from the audio-level extension.
    pub audiolevel_event: bool,
    /// Packets over which the audio level is averaged for those events (Janus: 100).
    pub audio_active_packets: Option<u32>,
    /// Expected loss in percent (0-20) given to the Opus encoders for FEC (Janus: 0).
    pub expected_loss: Option<u8>,
    /// Opus bitrate in bit/s for every participant (Janus: 0, libopus decides).
    pub bitrate: Option<u32>,
}

impl Default for RoomOpts {
    fn default() -> Self {
        RoomOpts {
            sampling_rate: 48_000,
            complexity: None,
            prebuffer_packets: None,
            audiolevel_event: false,
            audio_active_packets: None,
            expected_loss: None,
            bitrate: None,
        }
    }
}

/// A participant's codec (the AudioBridge also has PCMA). Janus sends PCMU with payload
/// type 0 whatever was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JanusCodec {
    Opus,
    Pcmu,
}

impl JanusCodec {
    fn name(self) -> &'static str {
        match self {
            JanusCodec::Opus => "opus",
            JanusCodec::Pcmu => "pcmu",
        }
    }
}

/// A plain-RTP participant in a Janus room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JanusParticipant {
    /// The AudioBridge's participant id.
    pub id: u64,
    /// Where this participant sends its RTP, and where its mix comes from.
    pub janus_rtp: SocketAddr,
    /// The Janus handle that is this participant (detached by [`Janus::leave`]).
    pub handle: u64,
}

/// A running Janus with one API session. See the module docs.
pub struct Janus {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    base: String,
    agent: ureq::Agent,
    session: u64,
    control: u64,
    version: String,
    rooms: HashMap<u64, RoomOpts>,
    next_transaction: u64,
    events: Receiver<Result<Answer, String>>,
    /// Answers that arrived while waiting for another one.
    early: HashMap<String, Answer>,
    poller: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    notifications: Arc<AtomicU64>,
}

impl Janus {
    /// Starts Janus with the default [`JanusOptions`]: see [`Janus::start_with`].
    pub fn start(work_dir: &Path) -> anyhow::Result<Janus> {
        Janus::start_with(work_dir, &JanusOptions::default())
    }

    /// Writes a configuration under `work_dir` (created), starts Janus with it and waits
    /// until its HTTP API answers, then opens an API session.
    pub fn start_with(work_dir: &Path, opts: &JanusOptions) -> anyhow::Result<Janus> {
        let binary = find_binary(&opts.binary)?;
        let lib_dir = match &opts.lib_dir {
            Some(dir) => dir.clone(),
            None => find_lib_dir().ok_or_else(|| {
                anyhow!(
                    "Janus's plugin folder (…/janus/plugins/libjanus_audiobridge.so) was not \
                     found under /usr/lib, /usr/local/lib or /opt/janus/lib: install the \
                     Debian package janus"
                )
            })?,
        };
        let (lo, hi) = opts.rtp_ports;
        if lo >= hi || lo < 1024 {
            bail!("the Janus RTP port range {lo}-{hi} is empty or below 1024");
        }
        fs::create_dir_all(work_dir)
            .with_context(|| format!("creating the Janus work dir {}", work_dir.display()))?;
        let work_dir = work_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", work_dir.display()))?;
        let conf_dir = work_dir.join("conf");
        fs::create_dir_all(&conf_dir)
            .with_context(|| format!("creating {}", conf_dir.display()))?;
        let log = work_dir.join("janus.log");
        // The free port may be taken by someone else before Janus binds it: try again.
        let mut attempts = 0;
        let mut janus = loop {
            attempts += 1;
            // A stale log would make startup errors confusing.
            let _ = fs::remove_file(&log);
            let http_port = free_tcp_port()?;
            for (name, text) in config_files(&conf_dir, &lib_dir, &log, http_port, opts)? {
                let path = conf_dir.join(name);
                fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            }
            // Dropping `janus` on an error from here on kills the process.
            let mut janus = Janus::spawn(&binary, &work_dir, &log, http_port)?;
            match janus.wait_until_up() {
                Ok(version) => {
                    janus.version = version;
                    break janus;
                }
                Err(_) if attempts < 3 && log_says_http_port_taken(&log) => continue,
                Err(e) => return Err(e),
            }
        };
        let created = janus.post("", json!({"janus": "create"}), "creating a session")?;
        janus.session = created
            .data
            .map(|d| d.id)
            .context("Janus's create answer has no session id")?;
        janus.start_poller();
        janus.control = janus.attach()?;
        Ok(janus)
    }

    /// Starts the process on the configuration in `<work_dir>/conf`.
    fn spawn(binary: &Path, work_dir: &Path, log: &Path, http_port: u16) -> anyhow::Result<Janus> {
        let conf_dir = work_dir.join("conf");
        let stdout_path = work_dir.join("janus.stdout");
        let stdout = fs::File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = stdout.try_clone().context("duplicating janus.stdout")?;
        let child = Command::new(binary)
            .arg("-C")
            .arg(conf_dir.join("janus.jcfg"))
            .arg("-F")
            .arg(&conf_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(REQUEST_TIMEOUT))
                .build(),
        );
        let (_, events) = mpsc::channel();
        Ok(Janus {
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
            base: format!("http://127.0.0.1:{http_port}/janus"),
            agent,
            session: 0,
            control: 0,
            version: String::new(),
            rooms: HashMap::new(),
            next_transaction: 0,
            events,
            early: HashMap::new(),
            poller: None,
            stopping: Arc::new(AtomicBool::new(false)),
            notifications: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Janus's version string from the `info` request, e.g. "1.1.2".
    pub fn version(&self) -> String {
        self.version.clone()
    }

    /// Events that Janus sent to the participants (joins, media start, leaves, talking)
    /// and that were read and dropped so far.
    #[allow(dead_code)] // for reports; used by tests/bench_janus.rs
    pub fn notifications_dropped(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Creates room `room` (allowing plain-RTP participants), with `opts`.
    pub fn create_room(&mut self, room: u64, opts: &RoomOpts) -> anyhow::Result<()> {
        if !matches!(opts.sampling_rate, 8_000 | 16_000 | 24_000 | 48_000) {
            bail!(
                "the AudioBridge mixes at 8000, 16000, 24000 or 48000 Hz, not {}",
                opts.sampling_rate
            );
        }
        if let Some(c) = opts.complexity
            && !(1..=10).contains(&c)
        {
            bail!("the AudioBridge takes an Opus complexity of 1 to 10, not {c}");
        }
        let mut body = json!({
            "request": "create",
            "room": room,
            "sampling_rate": opts.sampling_rate,
            "allow_rtp_participants": true,
            "audiolevel_event": opts.audiolevel_event,
        });
        let fields = [
            (
                "default_prebuffering",
                opts.prebuffer_packets.map(u64::from),
            ),
            (
                "audio_active_packets",
                opts.audio_active_packets.map(u64::from),
            ),
            ("default_expectedloss", opts.expected_loss.map(u64::from)),
            ("default_bitrate", opts.bitrate.map(u64::from)),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                body[key] = json!(v);
            }
        }
        let what = format!("creating room {room}");
        self.plugin_request(self.control, body, "created", &what)?;
        self.rooms.insert(room, opts.clone());
        Ok(())
    }

    /// Joins a plain-RTP participant to `room`: Janus will take its RTP only from `client`
    /// and send it its mix there (after the first packet it receives from `client`).
    /// `payload_type` is the Opus payload type; PCMU must use 0.
    pub fn join_rtp(
        &mut self,
        room: u64,
        client: SocketAddr,
        codec: JanusCodec,
        payload_type: u8,
        audiolevel_ext: Option<u8>,
    ) -> anyhow::Result<JanusParticipant> {
        let opts = self
            .rooms
            .get(&room)
            .cloned()
            .ok_or_else(|| anyhow!("room {room} was not created through this driver"))?;
        let IpAddr::V4(ip) = client.ip() else {
            bail!("the AudioBridge's plain RTP is IPv4 only, not {client}");
        };
        if codec == JanusCodec::Pcmu && payload_type != 0 {
            bail!("Janus sends and takes PCMU with payload type 0, not {payload_type}");
        }
        if payload_type > 127 {
            bail!("RTP payload types are 0-127, not {payload_type}");
        }
        if let Some(id) = audiolevel_ext
            && !(1..=14).contains(&id)
        {
            bail!("one-byte RTP header extension ids are 1-14, not {id}");
        }
        let mut rtp = json!({
            "ip": ip.to_string(),
            "port": client.port(),
            "payload_type": payload_type,
            "fec": false,
        });
        if let Some(id) = audiolevel_ext {
            rtp["audiolevel_ext"] = json!(id);
        }
        let mut body = json!({
            "request": "join",
            "room": room,
            "codec": codec.name(),
            "rtp": rtp,
        });
        if let Some(c) = opts.complexity {
            body["quality"] = json!(c);
        }
        let what = format!("joining {client} to room {room}");
        let handle = self.attach()?;
        let joined = self.join_on(handle, body, &what);
        if joined.is_err() {
            // Best effort: the error being reported is the join's.
            let path = format!("/{}/{handle}", self.session);
            let _ = self.post(&path, json!({"janus": "detach"}), "detaching a failed join");
        }
        joined
    }

    /// Sends `join` on `handle` and reads the participant from the answer.
    fn join_on(
        &mut self,
        handle: u64,
        body: Value,
        what: &str,
    ) -> anyhow::Result<JanusParticipant> {
        let transaction = self.transaction();
        let answer = self.post(
            &format!("/{}/{handle}", self.session),
            json!({"janus": "message", "transaction": transaction, "body": body}),
            what,
        )?;
        let event = if answer.janus == "ack" {
            self.wait_event(&transaction, what)?
        } else {
            // Requests that are invalid on their face are refused synchronously.
            answer
        };
        let data = audiobridge_data(event, "joined", what)?;
        let janus_rtp = data.rtp.as_ref().and_then(|rtp| {
            let ip: IpAddr = rtp.ip.parse().ok()?;
            (rtp.port != 0).then_some(SocketAddr::new(ip, rtp.port))
        });
        let (Some(id), Some(janus_rtp)) = (data.id, janus_rtp) else {
            bail!(
                "{what}: Janus's joined event has no id or RTP address (is the RTP port range \
                 exhausted? see {}): {data:?}",
                self.log.display()
            );
        };
        Ok(JanusParticipant {
            id,
            janus_rtp,
            handle,
        })
    }

    /// Removes a participant: its handle is detached, which makes it leave the room and
    /// frees its port and threads in Janus.
    #[allow(dead_code)] // for churn loads; used by tests/bench_janus.rs
    pub fn leave(&mut self, participant: &JanusParticipant) -> anyhow::Result<()> {
        let what = format!("detaching participant {}", participant.id);
        let path = format!("/{}/{}", self.session, participant.handle);
        self.post(&path, json!({"janus": "detach"}), &what)?;
        Ok(())
    }

    /// Destroys `room`, kicking out its participants (their handles stay attached until
    /// [`Janus::leave`] or [`Janus::stop`]).
    pub fn destroy_room(&mut self, room: u64) -> anyhow::Result<()> {
        let what = format!("destroying room {room}");
        let body = json!({"request": "destroy", "room": room});
        self.plugin_request(self.control, body, "destroyed", &what)?;
        self.rooms.remove(&room);
        Ok(())
    }

    /// Stops Janus: SIGTERM, then SIGKILL if it has not exited within 10 s. An error says
    /// that it had died before (a crash) or had to be killed; it is gone either way.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown(true)
    }

    fn shutdown(&mut self, graceful: bool) -> anyhow::Result<()> {
        self.stopping.store(true, Ordering::Relaxed);
        let mut outcome = Ok(());
        if let Some(mut child) = self.child.take() {
            outcome = stop_child(&mut child, graceful, &self.log);
        }
        // The process is gone, so the long poll fails at once and the thread ends.
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        outcome
    }

    fn wait_until_up(&mut self) -> anyhow::Result<String> {
        let started = Instant::now();
        let probe = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(1)))
                .build(),
        );
        let url = format!("{}/info", self.base);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("waiting for janus")?
            {
                bail!(
                    "janus exited during startup ({status}); its log {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            let info = probe
                .get(&url)
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Info>().ok());
            if let Some(info) = info {
                return Ok(info.version_string.unwrap_or_else(|| "unknown".into()));
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "janus did not answer on {url} within {} s; its log {}:\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_poller(&mut self) {
        let (tx, rx) = mpsc::channel();
        self.events = rx;
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(LONG_POLL_TIMEOUT))
                .build(),
        );
        let url = format!(
            "{}/{}?maxev={LONG_POLL_MAX_EVENTS}",
            self.base, self.session
        );
        let stopping = Arc::clone(&self.stopping);
        let notifications = Arc::clone(&self.notifications);
        self.poller = Some(thread::spawn(move || {
            poll_events(&agent, &url, &tx, &stopping, &notifications)
        }));
    }

    fn transaction(&mut self) -> String {
        self.next_transaction += 1;
        format!("c{}", self.next_transaction)
    }

    /// POSTs a Janus API request to `path` under the base URL, with a fresh transaction
    /// unless the request has one; a Janus-level error becomes an `Err`.
    fn post(&mut self, path: &str, mut request: Value, what: &str) -> anyhow::Result<Answer> {
        if request.get("transaction").is_none() {
            request["transaction"] = json!(self.transaction());
        }
        let url = format!("{}{path}", self.base);
        let answer: Answer = self
            .agent
            .post(&url)
            .send_json(&request)
            .and_then(|mut r| r.body_mut().read_json())
            .map_err(|e| {
                anyhow!(
                    "{what}: the request to Janus failed: {e} (its log: {})",
                    self.log.display()
                )
            })?;
        if let Some(error) = &answer.error {
            bail!(
                "{what}: Janus answered error {}: {}",
                error.code,
                error.reason
            );
        }
        Ok(answer)
    }

    fn attach(&mut self) -> anyhow::Result<u64> {
        let answer = self.post(
            &format!("/{}", self.session),
            json!({"janus": "attach", "plugin": PLUGIN}),
            "attaching to the AudioBridge",
        )?;
        answer
            .data
            .map(|d| d.id)
            .ok_or_else(|| anyhow!("Janus's attach answer has no handle id"))
    }

    /// A synchronous AudioBridge request, whose answer must be `expected`.
    fn plugin_request(
        &mut self,
        handle: u64,
        body: Value,
        expected: &str,
        what: &str,
    ) -> anyhow::Result<AudioBridgeData> {
        let answer = self.post(
            &format!("/{}/{handle}", self.session),
            json!({"janus": "message", "body": body}),
            what,
        )?;
        audiobridge_data(answer, expected, what)
    }

    fn wait_event(&mut self, transaction: &str, what: &str) -> anyhow::Result<Answer> {
        if let Some(event) = self.early.remove(transaction) {
            return Ok(event);
        }
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(event)) => {
                    let Some(t) = event.transaction.clone() else {
                        continue;
                    };
                    if t == transaction {
                        return Ok(event);
                    }
                    self.early.insert(t, event);
                }
                Ok(Err(e)) => bail!(
                    "{what}: reading Janus's events failed: {e} (its log: {})",
                    self.log.display()
                ),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{what}: no answer from Janus within {} s (its log: {})",
                    EVENT_TIMEOUT.as_secs(),
                    self.log.display()
                ),
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "{what}: Janus's event stream has ended (its log: {})",
                    self.log.display()
                ),
            }
        }
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.shutdown(false);
    }
}

/// The long-poll loop: answers to requests go to `tx`, other events are counted.
fn poll_events(
    agent: &ureq::Agent,
    url: &str,
    tx: &Sender<Result<Answer, String>>,
    stopping: &AtomicBool,
    notifications: &AtomicU64,
) {
    while !stopping.load(Ordering::Relaxed) {
        let batch = agent
            .get(url)
            .call()
            .and_then(|mut r| {
                r.body_mut()
                    .with_config()
                    .limit(LONG_POLL_MAX_BYTES)
                    .read_to_vec()
            })
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                // With maxev, Janus answers an array, even for a single keepalive.
                serde_json::from_slice::<Vec<Answer>>(&bytes).map_err(|e| e.to_string())
            });
        let events = match batch {
            Ok(events) => events,
            Err(e) => {
                if !stopping.load(Ordering::Relaxed) {
                    let _ = tx.send(Err(e));
                }
                return;
            }
        };
        for event in events {
            if event.transaction.is_some() {
                if tx.send(Ok(event)).is_err() {
                    return;
                }
            } else if event.janus != "keepalive" {
                notifications.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends SIGTERM (when `graceful`) and waits, then SIGKILL.
fn stop_child(child: &mut Child, graceful: bool, log: &Path) -> anyhow::Result<()> {
    if let Ok(Some(status)) = child.try_wait() {
        bail!(
            "janus had already exited ({status}) before it was stopped; its log {}:\n{}",
            log.display(),
            log_tail(log)
        );
    }
    if graceful {
        // std cannot send SIGTERM and this crate forbids unsafe code: kill(1) does it.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if sent {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return exited(status, log);
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _ = child.kill();
    let status = child.wait().context("waiting for janus to die")?;
    if graceful {
        bail!(
            "janus did not exit within {} s of SIGTERM and was killed ({status}); its log: {}",
            STOP_TIMEOUT.as_secs(),
            log.display()
        );
    }
    Ok(())
}

fn exited(status: ExitStatus, log: &Path) -> anyhow::Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!(
            "janus exited with {status} after SIGTERM; its log: {}",
            log.display()
        )
    }
}

/// What the driver reads of a Janus answer or event. The rest, notably the participant
/// lists that grow with the room, is skipped without being built.
#[derive(Debug, Deserialize)]
struct Answer {
    janus: String,
    transaction: Option<String>,
    /// The session or handle id of a `success` answer to `create` or `attach`.
    data: Option<IdData>,
    error: Option<JanusError>,
    plugindata: Option<PluginData>,
}

#[derive(Debug, Deserialize)]
struct IdData {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct JanusError {
    code: i64,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct PluginData {
    data: AudioBridgeData,
}

#[derive(Debug, Deserialize)]
struct AudioBridgeData {
    audiobridge: Option<String>,
    id: Option<u64>,
    rtp: Option<RtpInfo>,
    error_code: Option<i64>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RtpInfo {
    ip: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
struct Info {
    version_string: Option<String>,
}

/// The AudioBridge part of an answer, which must be `expected` (else its error).
fn audiobridge_data(answer: Answer, expected: &str, what: &str) -> anyhow::Result<AudioBridgeData> {
    let Some(PluginData { data }) = answer.plugindata else {
        bail!("{what}: unexpected answer from Janus: {answer:?}");
    };
    if let Some(code) = data.error_code {
        bail!(
            "{what}: AudioBridge error {code}: {}",
            data.error.as_deref().unwrap_or("")
        );
    }
    if data.audiobridge.as_deref() != Some(expected) {
        bail!("{what}: the AudioBridge answered {data:?}, not \"{expected}\"");
    }
    Ok(data)
}

/// The executable: a path as given, a bare name looked up on `PATH`.
fn find_binary(binary: &Path) -> anyhow::Result<PathBuf> {
    let missing = || {
        anyhow!(
            "the `{}` executable was not found: install the Debian package janus \
             (apt-get install janus)",
            binary.display()
        )
    };
    if binary.components().count() > 1 {
        return if binary.is_file() {
            Ok(binary.to_path_buf())
        } else {
            Err(missing())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

/// The installed `…/janus` folder that has the AudioBridge plugin.
fn find_lib_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .map(|entries| entries.flatten().map(|e| e.path().join("janus")).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates.extend(
        [
            "/usr/lib/janus",
            "/usr/local/lib/janus",
            "/opt/janus/lib/janus",
        ]
        .map(PathBuf::from),
    );
    candidates
        .into_iter()
        .find(|dir| dir.join("plugins/libjanus_audiobridge.so").is_file())
}

/// The `.so` files of `dir` other than `keep`, comma-separated (Janus loads only `*.so`).
fn disable_list(dir: &Path, keep: &str) -> String {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.ends_with(".so") && name != keep)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

/// A string literal of Janus's libconfig-style `.jcfg` files.
fn jcfg_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn path_string(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(jcfg_string)
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
}

/// The three configuration files: (file name, contents).
fn config_files(
    conf_dir: &Path,
    lib_dir: &Path,
    log: &Path,
    http_port: u16,
    opts: &JanusOptions,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let (lo, hi) = opts.rtp_ports;
    let folder = |kind: &str| path_string(&lib_dir.join(kind));
    let disable = |kind: &str, keep: &str| jcfg_string(&disable_list(&lib_dir.join(kind), keep));
    let event_loops = match opts.event_loops {
        0 => String::new(),
        n => format!("\tevent_loops = {n}\n"),
    };
    // The driver's long poll keeps its session alive anyway; no session ever times out.
    let core = format!(
        "# Written by confer bench: a private Janus for benchmarks.\n\
         general: {{\n\
         \tconfigs_folder = {conf}\n\
         \tplugins_folder = {plugins}\n\
         \ttransports_folder = {transports}\n\
         \tevents_folder = {events}\n\
         \tloggers_folder = {loggers}\n\
         \tlog_to_stdout = false\n\
         \tlog_to_file = {log}\n\
         \tdebug_level = {level}\n\
         \tdebug_timestamps = true\n\
         \tdebug_colors = false\n\
         \tserver_name = \"confer-bench\"\n\
         \tsession_timeout = 0\n\
         {event_loops}\
         }}\n\
         plugins: {{\n\tdisable = {no_plugins}\n}}\n\
         transports: {{\n\tdisable = {no_transports}\n}}\n\
         loggers: {{\n\tdisable = {no_loggers}\n}}\n\
         events: {{\n\tbroadcast = false\n}}\n",
        conf = path_string(conf_dir)?,
        plugins = folder("plugins")?,
        transports = folder("transports")?,
        events = folder("events")?,
        loggers = folder("loggers")?,
        log = path_string(log)?,
        level = opts.debug_level.min(7),
        no_plugins = disable("plugins", "libjanus_audiobridge.so"),
        no_transports = disable("transports", "libjanus_http.so"),
        no_loggers = disable("loggers", ""),
    );
    let http = format!(
        "general: {{\n\tjson = \"compact\"\n\tbase_path = \"/janus\"\n\thttp = true\n\
         \tport = {http_port}\n\tip = \"127.0.0.1\"\n\thttps = false\n\tevents = false\n}}\n\
         admin: {{\n\tadmin_http = false\n\tadmin_https = false\n}}\n"
    );
    let audiobridge = format!(
        "general: {{\n\trtp_port_range = \"{lo}-{hi}\"\n\tlocal_ip = \"127.0.0.1\"\n\
         \tevents = false\n}}\n"
    );
    Ok(vec![
        ("janus.jcfg", core),
        ("janus.transport.http.jcfg", http),
        ("janus.plugin.audiobridge.jcfg", audiobridge),
    ])
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
fn free_tcp_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port for Janus")?;
    Ok(listener.local_addr()?.port())
}

/// Whether Janus's log says that it could not listen on its HTTP port.
fn log_says_http_port_taken(log: &Path) -> bool {
    fs::read_to_string(log).is_ok_and(|text| text.contains("Couldn't start webserver on port"))
}

/// The last lines of Janus's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read it: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jcfg_strings_escape_quotes_and_backslashes() {
        assert_eq!(jcfg_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }

    #[test]
    fn a_missing_binary_asks_for_the_debian_package() {
        let err = find_binary(Path::new("/nonexistent/janus")).unwrap_err();
        assert!(err.to_string().contains("install the Debian package janus"));
        let err = find_binary(Path::new("no-such-janus-binary")).unwrap_err();
        assert!(err.to_string().contains("install the Debian package janus"));
    }

    #[test]
    fn the_config_loads_only_http_and_the_audiobridge() {
        let lib = std::env::temp_dir().join(format!("confer-janus-lib-{}", std::process::id()));
        for (kind, files) in [
            (
                "plugins",
                &[
                    "libjanus_audiobridge.so",
                    "libjanus_sip.so",
                    "libjanus_sip.so.1",
                ][..],
            ),
            (
                "transports",
                &["libjanus_http.so", "libjanus_websockets.so"][..],
            ),
            ("loggers", &["libjanus_jsonlog.so"][..]),
        ] {
            fs::create_dir_all(lib.join(kind)).unwrap();
            for f in files {
                fs::write(lib.join(kind).join(f), b"").unwrap();
            }
        }
        let opts = JanusOptions::default();
        let files = config_files(
            Path::new("/w/conf"),
            &lib,
            Path::new("/w/j.log"),
            8123,
            &opts,
        )
        .unwrap();
        let core = &files[0].1;
        assert!(core.contains("disable = \"libjanus_sip.so\""), "{core}");
        assert!(
            core.contains("disable = \"libjanus_websockets.so\""),
            "{core}"
        );
        assert!(core.contains("disable = \"libjanus_jsonlog.so\""), "{core}");
        assert!(core.contains("session_timeout = 0"));
        assert!(core.contains("log_to_file = \"/w/j.log\""));
        assert!(files[1].1.contains("port = 8123"));
        assert!(files[2].1.contains("rtp_port_range = \"22000-31999\""));
        fs::remove_dir_all(&lib).unwrap();
    }
}

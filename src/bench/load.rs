//! The load generator of `confer bench`: synthetic participants that send real RTP in real
//! time over UDP loopback and listen to what the engine under test sends back.
//!
//! It knows nothing of the engine: each participant is a server address to send to and
//! a client socket it sends from (the engine accepts only that source) and receives on.
//! Many participants share a client socket (a thousand sockets would cost the generator
//! more than the engine); replies are told apart by their source, the engine's port for
//! that participant.
//!
//! - One **sender thread** paces 20 ms frames on absolute deadlines and replays the
//!   precomputed packets of [`Signals`] (header rewritten per participant: SSRC, sequence
//!   number, timestamp, RFC 6464 level). It records when each probe marker left.
//! - One **receiver thread** drains every socket each millisecond (a reader asleep in
//!   `epoll` would cost the engine's sender a wake-up per packet on loopback), with the
//!   kernel's arrival timestamps (`SO_TIMESTAMPNS`), and keeps, per listener, loss from
//!   sequence numbers and the output's delay variation (arrival against its RTP
//!   timestamp, relative to the stream's earliest packet). Probe listeners also decode and
//!   detect the marker onset.
//! - Both threads read their own CPU time, so an in-process engine's share of the process
//!   can be told from the generator's.
//!
//! Only what happens after the warm-up counts (joins settle, jitter buffers converge). The
//! warm-up lasts at least [`Plan::warmup`] and until every participant receives from the
//! engine (Janus starts sending to a participant only after its first packet, and brings a
//! large room up over seconds), at most [`MAX_WARMUP`]; the measured window starts then.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use confer_codecs::decoder::AudioDecoder;
use confer_codecs::g711::{G711Decoder, G711Law};
use confer_codecs::opus::OpusDecoder;
use confer_engine::rtp::{RtpExtension, RtpPacket, RtpPacketBuilder};
use confer_engine::types::{PayloadType, SeqExtender, Ssrc, TimestampExtender};
use nix::sys::socket::sockopt::ReceiveTimestampns;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt};
use nix::sys::time::TimeSpec;

use super::signals::{BenchCodec, Biquad, DTX_EVERY_FRAMES, FRAME_MS, PROBE_CYCLE_FRAMES, Signals};

/// The RFC 6464 extension id the generator uses (`a=extmap:1 ...ssrc-audio-level`).
pub const LEVEL_EXT_ID: u8 = 1;
/// The longest warm-up: listeners still silent by then are counted as such.
pub const MAX_WARMUP: Duration = Duration::from_secs(90);
/// Receive buffer per client socket.
const RCVBUF_BYTES: usize = 8 << 20;
/// Delay-variation histogram: 0.1 ms bins up to 2 s.
const DV_BIN_MS: f64 = 0.1;
const DV_BINS: usize = 20_000;

/// What a synthetic participant does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends speech, starting `offset` frames into the sample.
    Talker {
        /// Frames into the speech sample.
        offset: usize,
    },
    /// Sends the probe (hum and a marker burst each second).
    Probe,
    /// Quiet: Opus DTX (a packet every 400 ms) or G.711 silence.
    Silent,
}

/// One synthetic participant.
#[derive(Debug, Clone)]
pub struct Member {
    /// The engine's RTP address for it.
    pub server: SocketAddr,
    /// Index of its client socket.
    pub socket: usize,
    /// What it sends.
    pub role: Role,
    /// It decodes what it receives and times the probe's marker.
    pub probe_listener: bool,
}

/// A planned run.
#[derive(Debug)]
pub struct Plan {
    /// The participants.
    pub members: Vec<Member>,
    /// The client sockets (see [`client_sockets`]).
    pub sockets: Vec<UdpSocket>,
    /// Not measured: at least this long, and until every participant receives.
    pub warmup: Duration,
    /// Measured.
    pub duration: Duration,
    /// Send RFC 6464 levels.
    pub levels: bool,
}

/// One timed marker.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Onset {
    /// Seconds into the measured window.
    pub at_s: f64,
    /// The probe packet's send -> the first packet carrying the marker received.
    pub added_ms: f64,
    /// The probe packet's send -> the onset in the listener's decoded audio.
    pub hop_ms: f64,
}

/// What the generator saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Probe markers timed.
    pub onsets: Vec<Onset>,
    /// Markers sent in the window.
    pub markers_sent: u64,
    /// Onsets the probe listeners should find (markers sent times probe listeners).
    pub markers_expected: u64,
    /// How long the warm-up lasted.
    pub warmup: Duration,
    /// Packets the listeners should have received in the window (by sequence numbers).
    pub packets_expected: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Listeners that received nothing in the window.
    pub silent_listeners: u64,
    /// Output delay variation histogram (0.1 ms bins).
    pub delay_variation: Vec<u64>,
    /// Packets sent by the generator in the window.
    pub packets_sent: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Sender ticks that started more than a frame late (the generator could not keep up).
    pub sender_late_ticks: u64,
    /// CPU use of the generator's threads over the measured window, in cores (1.0 = one
    /// core busy).
    pub cpu_cores: f64,
}

impl LoadReport {
    /// Packets lost on the way back (expected minus received, never negative).
    pub fn packets_lost(&self) -> u64 {
        self.packets_expected.saturating_sub(self.packets_received)
    }

    /// A quantile (0..=1) of the output delay variation, ms.
    pub fn delay_variation_ms(&self, q: f64) -> f64 {
        let total: u64 = self.delay_variation.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, &n) in self.delay_variation.iter().enumerate() {
            acc += n;
            if acc >= want {
                return (i + 1) as f64 * DV_BIN_MS;
            }
        }
        DV_BINS as f64 * DV_BIN_MS
    }
}

/// `n` client sockets on `ip`, with large receive buffers.
pub fn client_sockets(ip: std::net::IpAddr, n: usize) -> anyhow::Result<Vec<UdpSocket>> {
    (0..n)
        .map(|_| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(SocketAddr::new(ip, 0)),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            // Best effort: the kernel caps it at net.core.rmem_max.
            let _ = s.set_recv_buffer_size(RCVBUF_BYTES);
            let _ = s.set_send_buffer_size(RCVBUF_BYTES);
            s.bind(&SocketAddr::new(ip, 0).into())?;
            Ok(UdpSocket::from(s))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding the load generator's sockets")
}

/// CPU seconds of the calling thread.
pub fn thread_cpu_s() -> f64 {
    crate::host::proc_stat_cpu_s("/proc/thread-self/stat").unwrap_or(0.0)
}

/// Runs `plan` with `signals`; blocks for warm-up plus duration (and a short drain).
pub fn run(
    plan: Plan,
    signals: Arc<Signals>,
    mut tick: impl FnMut(Option<Duration>),
) -> anyhow::Result<LoadReport> {
    let start = Instant::now() + Duration::from_millis(50);
    let timeline = Arc::new(Timeline {
        start,
        window: OnceLock::new(),
        hearing: AtomicUsize::new(0),
    });
    let bursts: Arc<Mutex<Vec<Instant>>> = Arc::default();

    // Receiver: its own sockets (clones), its own members.
    let mut per_socket: Vec<Vec<Member>> = vec![Vec::new(); plan.sockets.len()];
    for m in &plan.members {
        per_socket
            .get_mut(m.socket)
            .context("a member's socket index is out of range")?
            .push(m.clone());
    }
    let listeners = plan.members.len();
    let plan_probe_listeners = plan.members.iter().filter(|m| m.probe_listener).count();
    let rx_sockets = plan
        .sockets
        .iter()
        .map(|s| s.try_clone())
        .collect::<std::io::Result<Vec<_>>>()?;
    let codec = signals.codec;
    let rx_timeline = timeline.clone();
    // Kernel timestamps need SO_TIMESTAMPNS before the first packet arrives.
    let receiver = thread::Builder::new()
        .name("bench-rx".into())
        .spawn(move || receive(rx_sockets, per_socket, codec, &rx_timeline))?;

    let tx_signals = signals.clone();
    let tx_bursts = bursts.clone();
    let tx_timeline = timeline.clone();
    let members = plan.members.clone();
    let sockets = plan.sockets;
    let levels = plan.levels;
    let sender = thread::Builder::new()
        .name("bench-tx".into())
        .spawn(move || {
            send(
                &sockets,
                &members,
                &tx_signals,
                levels,
                &tx_timeline,
                &tx_bursts,
            )
        })?;

    // Warm-up: at least `plan.warmup`, until everyone hears the engine.
    loop {
        let now = Instant::now();
        let waited = now.saturating_duration_since(start);
        let all = timeline.hearing.load(Ordering::Relaxed) >= listeners;
        if (waited >= plan.warmup && all) || waited >= MAX_WARMUP {
            let from = now + Duration::from_millis(20);
            let _ = timeline.window.set((from, from + plan.duration));
            break;
        }
        tick(None);
        thread::sleep(Duration::from_millis(100));
    }
    let (measure_from, end) = timeline.bounds().context("the window is set")?;
    // The caller samples the engine while the load runs.
    while Instant::now() < end {
        let now = Instant::now();
        tick(now.checked_duration_since(measure_from));
        thread::sleep(Duration::from_millis(100).min(end.saturating_duration_since(now)));
    }
    let tx = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
    let rx = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))??;
    let bursts = bursts.lock().map(|b| b.clone()).unwrap_or_default();
    let probe_listeners = plan_probe_listeners as u64;
    let markers_sent = bursts.iter().filter(|&&b| b >= measure_from).count() as u64;
    let mut onsets = Vec::new();
    for (arrival, offset_s) in rx.onsets {
        // The marker that left last before this arrival (markers are a second apart).
        let Some(&sent) = bursts.iter().rev().find(|&&b| b <= arrival) else {
            continue;
        };
        let added = arrival.duration_since(sent).as_secs_f64() * 1000.0;
        if sent < measure_from || added > 900.0 {
            continue;
        }
        onsets.push(Onset {
            at_s: sent.duration_since(measure_from).as_secs_f64(),
            added_ms: added,
            hop_ms: added + offset_s * 1000.0,
        });
    }
    Ok(LoadReport {
        onsets,
        markers_sent,
        markers_expected: markers_sent * probe_listeners,
        warmup: measure_from.saturating_duration_since(start),
        packets_expected: rx.expected,
        packets_received: rx.received,
        silent_listeners: rx.silent_listeners,
        delay_variation: rx.delay_variation,
        packets_sent: tx.sent,
        send_errors: tx.errors,
        sender_late_ticks: tx.late,
        cpu_cores: tx.cpu_cores + rx.cpu_cores,
    })
}

/// The run's clock: when sending started, and the measured window once the warm-up ends.
struct Timeline {
    start: Instant,
    window: OnceLock<(Instant, Instant)>,
    /// Participants that have received at least one packet.
    hearing: AtomicUsize,
}

impl Timeline {
    fn bounds(&self) -> Option<(Instant, Instant)> {
        self.window.get().copied()
    }
}

struct SendTotals {
    sent: u64,
    errors: u64,
    late: u64,
    cpu_cores: f64,
}

fn send(
    sockets: &[UdpSocket],
    members: &[Member],
    signals: &Signals,
    levels: bool,
    timeline: &Timeline,
    bursts: &Mutex<Vec<Instant>>,
) -> SendTotals {
    let start = timeline.start;
    let mut cpu_from: Option<(f64, Instant)> = None;
    let frame = Duration::from_millis(u64::from(FRAME_MS));
    let samples = signals.codec.frame_samples() as u32;
    let Ok(pt) = PayloadType::new(signals.codec.payload_type()) else {
        // The bench's payload types (111, 0) are 7-bit values.
        return SendTotals {
            sent: 0,
            errors: 0,
            late: 0,
            cpu_cores: 0.0,
        };
    };
    let mut state: Vec<(u16, u32, u32)> = (0..members.len())
        .map(|i| {
            let i = i as u32;
            (
                (i.wrapping_mul(7919) & 0xffff) as u16,
                i.wrapping_mul(104_729),
                0x1000_0000 | i,
            )
        })
        .collect();
    let mut buf = [0u8; 1500];
    let mut totals = SendTotals {
        sent: 0,
        errors: 0,
        late: 0,
        cpu_cores: 0.0,
    };
    let mut k: u64 = 0;
    loop {
        let deadline = start + frame * k as u32;
        let window = timeline.bounds();
        if window.is_some_and(|(_, end)| deadline >= end) {
            break;
        }
        let now = Instant::now();
        if deadline > now {
            thread::sleep(deadline - now);
        } else if now - deadline > frame {
            totals.late += 1;
        }
        let measuring = window.is_some_and(|(from, _)| deadline >= from);
        if measuring && cpu_from.is_none() {
            cpu_from = Some((thread_cpu_s(), Instant::now()));
        }
        for (i, m) in members.iter().enumerate() {
            let (seq, ts, ssrc) = &mut state[i];
            let f = match m.role {
                Role::Talker { offset } => {
                    &signals.speech[(offset + k as usize) % signals.speech.len()]
                }
                Role::Probe => {
                    let j = k as usize % PROBE_CYCLE_FRAMES;
                    if j == 0
                        && let Ok(mut b) = bursts.lock()
                    {
                        b.push(Instant::now());
                    }
                    &signals.probe[j]
                }
                Role::Silent => {
                    if signals.codec == BenchCodec::Opus
                        && !(k as usize + i).is_multiple_of(DTX_EVERY_FRAMES)
                    {
                        *ts = ts.wrapping_add(samples);
                        continue;
                    }
                    &signals.silence
                }
            };
            let level = [(u8::from(f.voice) << 7) | (f.level & 0x7f)];
            let ext = [RtpExtension {
                id: LEVEL_EXT_ID,
                data: &level,
            }];
            let packet = RtpPacketBuilder::new(pt, *seq, *ts, Ssrc(*ssrc))
                .extensions(if levels { &ext } else { &[] })
                .payload(&f.payload);
            match packet
                .write(&mut buf)
                .map(|n| sockets[m.socket].send_to(&buf[..n], m.server))
            {
                Ok(Ok(_)) if measuring => totals.sent += 1,
                Ok(Ok(_)) => {}
                _ => totals.errors += 1,
            }
            *seq = seq.wrapping_add(1);
            *ts = ts.wrapping_add(samples);
        }
        k += 1;
    }
    if let Some((cpu, at)) = cpu_from {
        totals.cpu_cores = (thread_cpu_s() - cpu) / at.elapsed().as_secs_f64().max(1e-3);
    }
    totals
}

/// A listener's view of its stream.
struct Stream {
    heard: bool,
    probe: Option<Box<Detector>>,
    seq: SeqExtender,
    ts: TimestampExtender,
    /// Extended sequence numbers received in the measured window: lowest, highest.
    lowest: Option<u64>,
    highest: Option<u64>,
    received: u64,
    min_transit_ms: f64,
}

struct RxTotals {
    onsets: Vec<(Instant, f64)>,
    expected: u64,
    received: u64,
    silent_listeners: u64,
    delay_variation: Vec<u64>,
    cpu_cores: f64,
}

fn receive(
    sockets: Vec<UdpSocket>,
    per_socket: Vec<Vec<Member>>,
    codec: BenchCodec,
    timeline: &Timeline,
) -> anyhow::Result<RxTotals> {
    // Kernel receive timestamps are on the realtime clock; map them onto `Instant`.
    let (wall0, mono0) = (SystemTime::now(), Instant::now());
    let mut rxs = Vec::with_capacity(sockets.len());
    for (sock, members) in sockets.into_iter().zip(per_socket) {
        sock.set_nonblocking(true)?;
        setsockopt(&sock, ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
        rxs.push(SocketRx::new(sock, &members, codec));
    }
    let mut totals = RxTotals {
        onsets: Vec::new(),
        expected: 0,
        received: 0,
        silent_listeners: 0,
        delay_variation: vec![0; DV_BINS],
        cpu_cores: 0.0,
    };
    let mut cpu_from: Option<(f64, Instant)> = None;
    let rate_khz = f64::from(codec.rate()) / 1000.0;
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    loop {
        let now = Instant::now();
        let window = timeline.bounds();
        if let Some((from, end)) = window {
            // Replies still in flight at the end get a moment to arrive.
            if now > end + Duration::from_millis(300) {
                break;
            }
            if cpu_from.is_none() && now >= from {
                cpu_from = Some((thread_cpu_s(), now));
            }
        }
        for rx in &mut rxs {
            let fd = rx.sock.as_raw_fd();
            loop {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let (n, from, stamp) = match recvmsg::<SockaddrStorage>(
                    fd,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(msg) => {
                        let stamp = msg.cmsgs().ok().and_then(|mut c| {
                            c.find_map(|m| match m {
                                ControlMessageOwned::ScmTimestampns(t) => Some(t),
                                _ => None,
                            })
                        });
                        (msg.bytes, msg.address.and_then(sockaddr), stamp)
                    }
                    // EAGAIN: drained. Any other error (e.g. ICMP unreachable reported
                    // on the socket) ends this pass for the socket.
                    Err(_) => break,
                };
                let Some(from) = from else { continue };
                // The kernel's arrival time; our clock if it gave none.
                let arrival = stamp
                    .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
                    .and_then(|t| (UNIX_EPOCH + t).duration_since(wall0).ok())
                    .map_or_else(Instant::now, |d| mono0 + d);
                if let Some(p) = buf.get(..n) {
                    rx.packet(p, from, arrival, window, timeline, rate_khz);
                }
            }
        }
        // Drain every millisecond rather than wait on each socket: a sleeping reader
        // costs the engine's sender no wake-up per packet, and the kernel's timestamps
        // keep the arrival times exact.
        thread::sleep(Duration::from_millis(1));
    }
    for rx in rxs {
        for (a, b) in totals.delay_variation.iter_mut().zip(&rx.dv) {
            *a += b;
        }
        for s in rx.streams {
            totals.received += s.received;
            match (s.lowest, s.highest) {
                (Some(lo), Some(hi)) => totals.expected += hi - lo + 1,
                _ => totals.silent_listeners += 1,
            }
            if let Some(d) = s.probe {
                totals.onsets.extend(d.onsets);
            }
        }
    }
    if let Some((cpu, at)) = cpu_from {
        totals.cpu_cores = (thread_cpu_s() - cpu) / at.elapsed().as_secs_f64().max(1e-3);
    }
    Ok(totals)
}

fn sockaddr(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

/// One client socket and the listeners behind it.
struct SocketRx {
    sock: UdpSocket,
    by_source: HashMap<SocketAddr, usize>,
    streams: Vec<Stream>,
    dv: Vec<u64>,
}

impl SocketRx {
    fn new(sock: UdpSocket, members: &[Member], codec: BenchCodec) -> SocketRx {
        let mut by_source = HashMap::new();
        let mut streams = Vec::with_capacity(members.len());
        for m in members {
            by_source.insert(m.server, streams.len());
            streams.push(Stream {
                probe: m.probe_listener.then(|| Box::new(Detector::new(codec))),
                heard: false,
                seq: SeqExtender::new(),
                ts: TimestampExtender::new(),
                lowest: None,
                highest: None,
                received: 0,
                min_transit_ms: f64::MAX,
            });
        }
        SocketRx {
            sock,
            by_source,
            streams,
            dv: vec![0; DV_BINS],
        }
    }

    fn packet(
        &mut self,
        p: &[u8],
        from: SocketAddr,
        arrival: Instant,
        window: Option<(Instant, Instant)>,
        timeline: &Timeline,
        rate_khz: f64,
    ) {
        let Some(&si) = self.by_source.get(&from) else {
            return;
        };
        // RTP only (RTCP's packet types 200..=204 sit where marker+PT is).
        if p.get(1).is_some_and(|b| (200..=204).contains(b)) {
            return;
        }
        let Ok(rtp) = RtpPacket::parse(p) else {
            return;
        };
        let s = &mut self.streams[si];
        if !s.heard {
            s.heard = true;
            timeline.hearing.fetch_add(1, Ordering::Relaxed);
        }
        let ext_seq = s.seq.extend(rtp.sequence_number()).seq().map(|n| n.0);
        let ext_ts = s.ts.extend(rtp.timestamp()).0;
        if let Some(d) = s.probe.as_mut() {
            d.push(rtp.payload(), arrival);
        }
        let Some((measure_from, end)) = window else {
            return;
        };
        if arrival < measure_from || arrival > end {
            return;
        }
        s.received += 1;
        // A sequence jump the extender has not confirmed yet counts as received only.
        let Some(ext_seq) = ext_seq else {
            return;
        };
        s.lowest = Some(s.lowest.map_or(ext_seq, |l| l.min(ext_seq)));
        s.highest = Some(s.highest.map_or(ext_seq, |h| h.max(ext_seq)));
        let transit = arrival
            .saturating_duration_since(measure_from)
            .as_secs_f64()
            * 1000.0
            - ext_ts as f64 / rate_khz;
        s.min_transit_ms = s.min_transit_ms.min(transit);
        let bin = ((transit - s.min_transit_ms) / DV_BIN_MS) as usize;
        self.dv[bin.min(DV_BINS - 1)] += 1;
    }
}

/// Decodes a probe listener's stream and finds the marker onsets in it.
struct Detector {
    decoder: Box<dyn AudioDecoder>,
    pcm: Vec<f32>,
    filters: [Biquad; 2],
    block: usize,
    threshold: f32,
    quiet_blocks: usize,
    run: usize,
    candidate: Option<(Instant, f64)>,
    onsets: Vec<(Instant, f64)>,
}

impl Detector {
    fn new(codec: BenchCodec) -> Detector {
        let rate = codec.rate();
        let marker = codec.band().marker_hz;
        let decoder: Box<dyn AudioDecoder> = match codec {
            // 48 kHz mono is always a valid Opus decoder configuration.
            BenchCodec::Opus => Box::new(OpusDecoder::new(48_000).expect("48 kHz Opus decoder")),
            BenchCodec::Pcmu => Box::new(G711Decoder::new(G711Law::Ulaw)),
        };
        Detector {
            decoder,
            pcm: vec![0.0; (rate as usize) * 120 / 1000],
            filters: [
                Biquad::bandpass(rate as f32, marker, 6.0),
                Biquad::bandpass(rate as f32, marker, 6.0),
            ],
            block: (rate / 1000) as usize,
            // The burst is a 0.3 sine (power 0.045); -20 dB of it, far above speech's
            // leakage into the band (below -40 dB of the speech).
            threshold: 0.045 * 0.01,
            quiet_blocks: 0,
            run: 0,
            candidate: None,
            onsets: Vec::new(),
        }
    }

    fn push(&mut self, payload: &[u8], arrival: Instant) {
        let Ok(n) = self.decoder.decode(payload, &mut self.pcm) else {
            return;
        };
        let rate = self.block as f64 * 1000.0;
        for (b, chunk) in self.pcm[..n].chunks(self.block).enumerate() {
            let mut e = 0.0f32;
            for &x in chunk {
                let y = self.filters[0].process(x);
                let y = self.filters[1].process(y);
                e += y * y;
            }
            e /= chunk.len() as f32;
            if e > self.threshold {
                if self.run == 0 && self.quiet_blocks >= 300 {
                    self.candidate = Some((arrival, (b * self.block) as f64 / rate));
                }
                self.run += 1;
                // Five loud blocks in a row make an onset (not a click).
                if self.run == 5
                    && let Some(c) = self.candidate.take()
                {
                    self.onsets.push(c);
                }
                if self.run >= 5 {
                    self.quiet_blocks = 0;
                }
            } else {
                self.run = 0;
                self.candidate = None;
                self.quiet_blocks += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detector_finds_the_probe_marker_at_the_start_of_each_cycle() {
        for codec in [BenchCodec::Opus, BenchCodec::Pcmu] {
            let s = Signals::new(codec).unwrap();
            let mut d = Detector::new(codec);
            let t0 = Instant::now();
            let frame = Duration::from_millis(20);
            for k in 0..(PROBE_CYCLE_FRAMES * 4) {
                let f = &s.probe[k % PROBE_CYCLE_FRAMES];
                d.push(&f.payload, t0 + frame * k as u32);
            }
            // The first cycle's marker has no quiet second before it.
            let at: Vec<u128> = d
                .onsets
                .iter()
                .map(|(t, off)| {
                    (t.duration_since(t0).as_secs_f64() + off).mul_add(1e3, 0.0) as u128
                })
                .collect();
            assert_eq!(at.len(), 3, "{codec:?}: {at:?}");
            for (i, ms) in at.iter().enumerate() {
                let want = (i as u128 + 1) * 1000;
                assert!(
                    ms.abs_diff(want) <= 8,
                    "{codec:?}: onset at {ms} ms, want {want}"
                );
            }
        }
    }

    #[test]
    fn speech_alone_never_looks_like_a_marker() {
        let s = Signals::new(BenchCodec::Opus).unwrap();
        let mut d = Detector::new(BenchCodec::Opus);
        let t0 = Instant::now();
        for (k, f) in s.speech.iter().chain(&s.speech).enumerate() {
            d.push(&f.payload, t0 + Duration::from_millis(20 * k as u64));
        }
        assert!(d.onsets.is_empty(), "{} false onsets", d.onsets.len());
    }
}

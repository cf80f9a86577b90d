//! The media host: the threads and sockets around the sans-IO [`Room`]s.
//!
//! # Design
//!
//! - `workers` media threads ([`Host::start`]), each **owning** its rooms (`&mut`, no lock
//!   on the media path). One loop per worker ticks every room it owns once per frame
//!   (`frame_ms`); a room is a map entry, so an empty room costs nothing between ticks (no
//!   thread, no timer). A new room goes to the worker with the fewest rooms. The workers'
//!   frame clocks are spread over the frame (two workers tick 10 ms apart), so that their
//!   ticks and sends do not all want the cores at the same instants.
//! - Control commands reach a worker over a bounded `std::sync::mpsc::sync_channel`
//!   (`try_send`: a full queue is refused as [`HostError::Busy`], never waited on) and are
//!   answered over a `tokio::sync::oneshot`. The worker waits for commands with
//!   `recv_timeout` until its next tick, so controls take effect at once.
//! - Every participant has its own UDP socket, bound on `media_ip` to the next free port of
//!   the RTP range (a rotating cursor, so a port just released is not handed out again at
//!   once and a late packet for the previous owner is not taken for the new one). A tokio
//!   task receives on it, reads `Instant::now()` right after `recv_from` (the jitter
//!   buffer's arrival time), drops datagrams whose source is not the participant's declared
//!   RTP address, and pushes the datagram and its arrival into the participant's `ringbuf`
//!   SPSC queue; a full queue drops and counts. The sockets are registered with the
//!   reactor for reading only (write interest would wake it on every completed send). The
//!   worker drains the queues at each tick, before the room's tick.
//! - Sends are network I/O too: the tick queues each packet (header and bytes in two
//!   bounded SPSC queues, no allocation) to one of its worker's **sender threads** (one
//!   per core, chosen by participant so its packets stay in order), which call `sendto`
//!   on the participant's non-blocking socket while the tick goes on (a loopback `sendto`
//!   costs microseconds: a thousand listeners would otherwise be milliseconds of every
//!   tick). A sender thread holds the sockets of its participants, handed to it with
//!   a participant's first packet from that worker and let go after the participant
//!   left; a queued packet carries only the participant's id and address. A full queue,
//!   `WouldBlock` and other send errors drop and count: an unreachable participant costs
//!   a counter, not the worker. Sender threads add to the shared metrics once their
//!   queue is drained, not per packet.
//! - Workers and sender threads ask for `SCHED_FIFO` (`realtime_priority`): on a busy
//!   machine the normal scheduler delayed ticks by several ms.
//! - Room events go as [`EventMsg`] values to the journal's lossless tap
//!   ([`Host::tap_events`]); the WebSocket stream, webhooks and the archive follow the
//!   journal.
//! - [`Metrics`] are atomic counters and fixed-bucket histograms, rendered as Prometheus
//!   text by the API. Stages timed: a datagram's wait in its queue, a room's receive
//!   hand-over, its tick without the sends (decode, mix, encode), a packet's wait for the
//!   sender thread and its send call, and the worker's whole tick. Inside the tick, the
//!   room times its own stages with the clock the worker injects
//!   ([`Room::set_stage_clock`] with `Instant::now`): jitter, decode, denoise, vad, mix,
//!   encode, record and room_send (packetizing and queueing for the sender thread),
//!   recorded per room and tick; and the jitter-buffer delay of every mixed speaker, per
//!   tick (`confer_jitter_buffer_delay_seconds`).
//!
//! - Recordings ([`Host::start_recording`]): the room hands each tick's mix (and, with
//!   tracks, each participant's input) to a [`RecordSink`] the worker builds. The worker
//!   only copies each file's tick into a fixed-size slot of a `ringbuf` SPSC queue
//!   ([`RECORDING_QUEUE_FRAMES`] slots, allocated when the recording starts) and never
//!   waits: a full queue drops the frame and counts it
//!   (`confer_recording_frames_dropped_total`). Each recording has its own writer thread
//!   (`confer-rec-*`) that owns the files: it encodes (one [`Recorder`] per file, Ogg Opus
//!   through a `BufWriter`, a page about once a second) and writes, so a slow disk or the
//!   encoder's CPU never lengthens the worker's tick. Frames carry their tick number; a
//!   tick missing from a file (dropped, or before a track opened) is written as silence of
//!   the same length, so every file of a recording shares its timeline. The worker still
//!   creates each file (one `open`, so a refusal is the API's answer); opening, closing and
//!   stopping go to the writer over a channel, each stamped with its tick, and take effect
//!   after the frames queued before them.
//!   An I/O error ends that file's recording (closed as far as it goes), is logged and
//!   counted (`confer_recording_errors_total`); it never stops the room. A participant who
//!   leaves or is kicked has its track finished at once (its length: the leading silence
//!   plus its time in the room); a rejoin is a new participant with a new track. Stopping
//!   drains the queue and finishes every file before the API answers (the files can be
//!   read at once); so does deleting the room; at shutdown the host joins the writers
//!   after the workers. Files: `recordings/room-{room}-{unix_ms}-mix.opus` and
//!   `...-p{participant}.opus` under the data directory.
//!
//! Ids: rooms and participants get host-wide numbers (`u64`, never reused) that the API
//! shows; the worker maps them to the room's own [`ParticipantId`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confer_codecs::dtmf::DtmfDigit;
use confer_conference::recording::{FRAME_SAMPLES, Recorder, RecorderConfig};
use confer_conference::room::{
    Clip, LeaveReason, ParticipantConfig, ParticipantId, ParticipantStats, RecordSink, Room,
    RoomConfig, RoomError, RoomEventKind,
};
use confer_engine::leg::{
    Codec, LegConfig, LegError, MAX_DATAGRAM, MediaLeg, StageTimes, fit_packet_time,
};
use confer_engine::types::PayloadType;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use serde::Serialize;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// Datagrams queued per participant between its receive task and its worker (at 20 ms
/// frames, over a second of one packet per frame).
pub const RX_QUEUE_LEN: usize = 64;
/// Control commands queued per worker.
pub const COMMAND_QUEUE_LEN: usize = 256;
/// Commands a worker answers after a tick when the next tick is already due.
const COMMANDS_PER_LATE_TICK: usize = 64;
/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No room with this id.
    #[error("no room {0}")]
    UnknownRoom(u64),
    /// No participant with this id in the room.
    #[error("no participant {participant} in room {room}")]
    UnknownParticipant {
        /// The room.
        room: u64,
        /// The participant.
        participant: u64,
    },
    /// The room refused (locked, full, bad gain, ...).
    #[error("{0}")]
    Room(#[from] RoomError),
    /// The participant's address cannot be reached from the media address's family.
    #[error("rtp_address {rtp} is not reachable from media_ip {media} (IPv4 and IPv6 differ)")]
    AddressFamily {
        /// The participant's address.
        rtp: SocketAddr,
        /// The engine's media address.
        media: IpAddr,
    },
    /// Every port of the RTP range is in use.
    #[error("no free RTP port in {ip}:{min}-{max}")]
    PortsExhausted {
        /// The media address.
        ip: IpAddr,
        /// First port of the range.
        min: u16,
        /// Last port of the range.
        max: u16,
    },
    /// A socket could not be set up.
    #[error("RTP socket: {0}")]
    Socket(#[from] io::Error),
    /// The media leg refused its configuration.
    #[error("media leg: {0}")]
    Leg(#[from] LegError),
    /// The worker's command queue is full.
    #[error("media worker {0} is busy; try again")]
    Busy(usize),
    /// The worker has stopped (shutting down).
    #[error("the media engine is stopping")]
    Stopped,
    /// Stopping a recording in a room that is not recording.
    #[error("room {0} is not recording")]
    NotRecording(u64),
    /// A recording file could not be created.
    #[error("recording: {0}")]
    RecordingIo(String),
}

/// One room event as published on the event stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventMsg {
    /// The room's id.
    pub room: u64,
    /// `created`, `ended`, `joined`, `left`, `started_talking`, `stopped_talking`, `muted`,
    /// `unmuted`, `deafened`, `undeafened`, `locked`, `unlocked`, `digit`, `playback_finished`,
    /// `recording_stopped` (the API journals `recording_started`); for calls confer dials: `dial_trying`, `dial_ringing`, `dial_answered` (with the
    /// participant), `dial_failed` (with the SIP status), `dial_hung_up`.
    pub kind: &'static str,
    /// The participant concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<u64>,
    /// `left`: `left`, `kicked` or `room_ended`; `joined`: `moderator` when one;
    /// `recording_stopped`: `stopped` or `room_ended`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `digit`: the key pressed (RFC 4733 telephone-event), `0-9`, `*`, `#`, `A-D`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digit: Option<char>,
    /// `dial_*`: the dialled call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<u64>,
    /// `dial_failed`: the final SIP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `recording_stopped`: when the recording started, Unix ms; its files are named
    /// `room-{room}-{recording}-*.opus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<u64>,
    /// `joined`, `left`: who, when the joiner said ([`JoinOptions::identity`]).
    #[serde(flatten)]
    pub identity: Option<Arc<Identity>>,
    /// Media time of the room (since it was created), in ms; none on `dial_*` events
    /// (they happen in SIP, not in the room).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_time_ms: Option<f64>,
}

/// A fixed-bucket latency histogram (upper bounds in microseconds), lock-free. Its count
/// is the sum of its buckets (the last one past the highest bound), so a scrape taken
/// while observations arrive is consistent: a separate counter read after the buckets
/// could be ahead of them, and a reader of the percentiles would take the difference for
/// an observation beyond the highest bound.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    /// One per bound, and one for the rest.
    buckets: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

/// The bucket of `us` among `bounds_us` (the last one, past them all, for the rest).
fn bucket_of(bounds_us: &[u64], us: u64) -> usize {
    bounds_us
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(bounds_us.len())
}

/// A [`Histogram`]'s observations gathered by one thread, without atomics, and added to
/// the shared one now and then ([`LocalHistogram::flush_into`]).
struct LocalHistogram {
    bounds_us: &'static [u64],
    buckets: Vec<u64>,
    sum_us: u64,
}

impl LocalHistogram {
    fn new(bounds_us: &'static [u64]) -> Self {
        LocalHistogram {
            bounds_us,
            buckets: vec![0; bounds_us.len() + 1],
            sum_us: 0,
        }
    }

    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(self.bounds_us, us)] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds what was gathered to `h` (with the same bounds) and starts again from zero.
    fn flush_into(&mut self, h: &Histogram) {
        for (shared, n) in h.buckets.iter().zip(&mut self.buckets) {
            if *n > 0 {
                shared.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
        if self.sum_us > 0 {
            h.sum_us
                .fetch_add(std::mem::take(&mut self.sum_us), Ordering::Relaxed);
        }
    }
}

/// Bucket bounds for durations from 10 us to 1 s: fine enough (at most 1.5x apart, 25%
/// steps around the 1-20 ms of a tick) that `confer bench` reads percentiles from them.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_250, 1_500, 2_000, 2_500,
    3_000, 4_000, 5_000, 6_000, 7_500, 10_000, 12_500, 15_000, 20_000, 25_000, 30_000, 40_000,
    50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 1_000_000,
];

/// Bucket bounds for jitter-buffer delays, from 5 ms to 1 s.
pub const JITTER_DELAY_BOUNDS_US: &[u64] = &[
    5_000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 100_000, 150_000, 200_000, 300_000,
    500_000, 1_000_000,
];

impl Histogram {
    fn new(bounds_us: &'static [u64]) -> Self {
        Histogram {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(self.bounds_us, us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, stage: &str) {
        self.render_labeled(out, name, &format!("stage=\"{stage}\""));
    }

    /// Renders with `labels` (e.g. `stage="tick"`, or empty) besides `le`.
    fn render_labeled(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, n) in self.bounds_us.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let le = *b as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        // Each bucket read once: the count is what the buckets above say, plus the rest.
        let rest = self.buckets.last().map_or(0, |n| n.load(Ordering::Relaxed));
        let count = cumulative + rest;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Engine-wide counters (atomics: written by workers and receive tasks, read by the API).
#[derive(Debug)]
pub struct Metrics {
    /// Rooms now.
    pub rooms: AtomicU64,
    /// Participants now.
    pub participants: AtomicU64,
    /// Datagrams received on participant sockets (all sources).
    pub datagrams_received: AtomicU64,
    /// Datagrams sent to participants.
    pub datagrams_sent: AtomicU64,
    /// Dropped: not from the participant's declared RTP address.
    pub drop_foreign_source: AtomicU64,
    /// Dropped: the participant's receive queue was full.
    pub drop_queue_full: AtomicU64,
    /// Dropped: larger than any RTP packet we accept.
    pub drop_oversized: AtomicU64,
    /// Dropped: the leg rejected it (not RTP, malformed, unknown payload type, ...).
    pub drop_rejected: AtomicU64,
    /// Not sent: the socket's send buffer was full.
    pub drop_send_would_block: AtomicU64,
    /// Not sent: the worker's queue to its sender thread was full.
    pub drop_send_queue_full: AtomicU64,
    /// Not sent: another send error (unreachable, ...).
    pub drop_send_error: AtomicU64,
    /// Signals (keys, playback ends) that a participant's driver had no room for.
    pub signals_dropped: AtomicU64,
    /// Receive errors on participant sockets (e.g. ICMP port unreachable reported).
    pub recv_errors: AtomicU64,
    /// Recording files ended by an I/O or encoding error.
    pub recording_errors: AtomicU64,
    /// Recorded frames (one tick of one file) dropped because the recording's writer
    /// queue was full; each is recorded as silence of the same length.
    pub recording_frames_dropped: AtomicU64,
    /// Worker frame ticks.
    pub ticks: AtomicU64,
    /// Ticks that took longer than a frame, or started over a frame late.
    pub tick_overruns: AtomicU64,
    /// Duration of one worker tick (all its rooms: receive drain, mix, encode, queueing
    /// the packets for the sender thread).
    pub tick_duration: Histogram,
    /// From a datagram's arrival to its hand-over to the room (queue wait).
    pub receive_wait: Histogram,
    /// One room's hand-over of its queued datagrams (parse, SRTP, jitter buffer insert).
    pub room_receive: Histogram,
    /// One room's tick without its send stage (packetizing and queueing): receive
    /// bookkeeping, decode, mix, encode.
    pub room_mix: Histogram,
    /// One datagram on the worker's sender thread: from the end of the one before (or
    /// from waking up) to the end of its send call.
    pub send: Histogram,
    /// A datagram's wait between its queueing by the room's tick and its send call.
    pub send_wait: Histogram,
    /// From the start of the tick that played a frame out of the jitter buffers to its
    /// mixed packet's send call returning: what the server adds beyond the jitter buffer.
    pub tick_to_sent: Histogram,
    /// Frames of participants decoded by room ticks.
    pub frames_decoded: AtomicU64,
    /// Frames of participants advanced without decoding (header levels said they are
    /// not heard).
    pub frames_skipped: AtomicU64,
    /// Inside one room's tick, per stage (see [`RoomStages`]).
    pub room_stages: RoomStages,
    /// The jitter-buffer delay of each mixed speaker, once per tick.
    pub jitter_buffer_delay: Histogram,
}

/// One room tick's time per stage, as the room measures it ([`Room::last_tick_stages`]).
#[derive(Debug)]
pub struct RoomStages {
    /// Jitter-buffer pops and skips, and the per-participant loop around them.
    pub jitter: Histogram,
    /// Decoding (with concealment and FEC) and resampling to the room rate.
    pub decode: Histogram,
    /// Noise suppression.
    pub denoise: Histogram,
    /// Level and voice detection of decoded frames.
    pub vad: Histogram,
    /// Speaker selection, mixing and limiting.
    pub mix: Histogram,
    /// Shared and per-speaker encodes.
    pub encode: Histogram,
    /// Recording sinks.
    pub record: Histogram,
    /// Packetizing, RTCP and the send calls.
    pub send: Histogram,
}

impl Default for RoomStages {
    fn default() -> Self {
        let h = || Histogram::new(LATENCY_BOUNDS_US);
        RoomStages {
            jitter: h(),
            decode: h(),
            denoise: h(),
            vad: h(),
            mix: h(),
            encode: h(),
            record: h(),
            send: h(),
        }
    }
}

impl RoomStages {
    /// Records one tick's stages.
    pub fn record(&self, t: &StageTimes) {
        self.jitter.record(t.jitter);
        self.decode.record(t.decode);
        self.denoise.record(t.denoise);
        self.vad.record(t.vad);
        self.mix.record(t.mix);
        self.encode.record(t.encode);
        self.record.record(t.record);
        self.send.record(t.send);
    }

    fn render(&self, out: &mut String, name: &str) {
        self.jitter.render(out, name, "jitter");
        self.decode.render(out, name, "decode");
        self.denoise.render(out, name, "denoise");
        self.vad.render(out, name, "vad");
        self.mix.render(out, name, "mix");
        self.encode.render(out, name, "encode");
        self.record.render(out, name, "record");
        self.send.render(out, name, "room_send");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let z = || AtomicU64::new(0);
        Metrics {
            rooms: z(),
            participants: z(),
            datagrams_received: z(),
            datagrams_sent: z(),
            drop_foreign_source: z(),
            drop_queue_full: z(),
            drop_oversized: z(),
            drop_rejected: z(),
            drop_send_would_block: z(),
            drop_send_queue_full: z(),
            signals_dropped: z(),
            drop_send_error: z(),
            recv_errors: z(),
            recording_errors: z(),
            recording_frames_dropped: z(),
            ticks: z(),
            tick_overruns: z(),
            tick_duration: Histogram::new(LATENCY_BOUNDS_US),
            receive_wait: Histogram::new(LATENCY_BOUNDS_US),
            room_receive: Histogram::new(LATENCY_BOUNDS_US),
            room_mix: Histogram::new(LATENCY_BOUNDS_US),
            send: Histogram::new(LATENCY_BOUNDS_US),
            send_wait: Histogram::new(LATENCY_BOUNDS_US),
            tick_to_sent: Histogram::new(LATENCY_BOUNDS_US),
            frames_decoded: z(),
            frames_skipped: z(),
            room_stages: RoomStages::default(),
            jitter_buffer_delay: Histogram::new(JITTER_DELAY_BOUNDS_US),
        }
    }
}

impl Metrics {
    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        if let Some(cpu) = proc_stat_cpu_s("/proc/self/stat") {
            let name = "process_cpu_seconds_total";
            let _ = writeln!(
                out,
                "# HELP {name} User and system CPU time of the process.\n# TYPE {name} counter\n{name} {cpu}"
            );
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauges = [
            ("confer_rooms", "Rooms now.", get(&self.rooms)),
            (
                "confer_participants",
                "Participants now.",
                get(&self.participants),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "confer_datagrams_received_total",
                "Datagrams received on participant sockets.",
                get(&self.datagrams_received),
            ),
            (
                "confer_datagrams_sent_total",
                "Datagrams sent to participants.",
                get(&self.datagrams_sent),
            ),
            (
                "confer_recv_errors_total",
                "Receive errors on participant sockets.",
                get(&self.recv_errors),
            ),
            (
                "confer_recording_errors_total",
                "Recording files ended by an I/O or encoding error.",
                get(&self.recording_errors),
            ),
            (
                "confer_recording_frames_dropped_total",
                "Recorded frames dropped (writer queue full), recorded as silence.",
                get(&self.recording_frames_dropped),
            ),
            (
                "confer_ticks_total",
                "Media worker frame ticks.",
                get(&self.ticks),
            ),
            (
                "confer_tick_overruns_total",
                "Ticks longer than a frame or started over a frame late.",
                get(&self.tick_overruns),
            ),
            (
                "confer_frames_decoded_total",
                "Participant frames decoded by room ticks.",
                get(&self.frames_decoded),
            ),
            (
                "confer_frames_skipped_total",
                "Participant frames advanced without decoding (not heard).",
                get(&self.frames_skipped),
            ),
            (
                "confer_participant_signals_dropped_total",
                "Keys pressed and playback ends that the participant's driver had no room for.",
                get(&self.signals_dropped),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP confer_datagrams_dropped_total Datagrams dropped, by reason.\n\
             # TYPE confer_datagrams_dropped_total counter"
        );
        for (reason, v) in [
            ("foreign_source", &self.drop_foreign_source),
            ("queue_full", &self.drop_queue_full),
            ("oversized", &self.drop_oversized),
            ("rejected", &self.drop_rejected),
            ("send_would_block", &self.drop_send_would_block),
            ("send_queue_full", &self.drop_send_queue_full),
            ("send_error", &self.drop_send_error),
        ] {
            let _ = writeln!(
                out,
                "confer_datagrams_dropped_total{{reason=\"{reason}\"}} {}",
                get(v)
            );
        }
        let name = "confer_stage_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency per media stage.\n# TYPE {name} histogram"
        );
        self.tick_duration.render(&mut out, name, "tick");
        self.receive_wait.render(&mut out, name, "receive_queue");
        self.room_receive.render(&mut out, name, "room_receive");
        self.room_mix.render(&mut out, name, "room_mix");
        self.send_wait.render(&mut out, name, "send_queue");
        self.tick_to_sent.render(&mut out, name, "tick_to_sent");
        self.send.render(&mut out, name, "send");
        self.room_stages.render(&mut out, name);
        let name = "confer_jitter_buffer_delay_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Jitter-buffer delay of each mixed speaker, per tick.\n\
             # TYPE {name} histogram"
        );
        self.jitter_buffer_delay.render_labeled(&mut out, name, "");
        out
    }
}

/// CPU seconds (user + system) of the process or thread whose `stat` file is `path`
/// (`/proc/self/stat`, `/proc/thread-self/stat`, `/proc/<pid>/stat`); `None` where there is
/// no such file (not Linux).
pub fn proc_stat_cpu_s(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some((utime + stime) / 100.0)
}

/// What the API asks for when creating a room.
#[derive(Debug, Clone, Default)]
pub struct RoomSpec {
    /// A label.
    pub name: String,
    /// `None`: the room default.
    pub max_participants: Option<usize>,
    /// Non-moderators wait for a moderator.
    pub wait_for_moderator: bool,
    /// Joins and leaves of phone callers are announced to the room.
    pub announce_joins: bool,
    /// A room of the host's own (a dial-in caller's PIN prompts): not listed by
    /// [`Host::rooms`], not counted in the rooms gauge, its events not published.
    pub internal: bool,
}

/// A room as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    /// Host-wide id.
    pub id: u64,
    /// Label.
    pub name: String,
    /// The worker that owns it.
    pub worker: usize,
    /// Participants now.
    pub participants: usize,
    /// Join limit.
    pub max_participants: usize,
    /// Locked.
    pub locked: bool,
    /// The room waits for its moderator now (non-moderators hear nothing).
    pub waiting_for_moderator: bool,
    /// Joins and leaves of phone callers are announced.
    pub announce_joins: bool,
    /// Frame ticks that did work.
    pub ticks: u64,
    /// Active speakers at the last tick.
    pub speakers: usize,
    /// Encoder groups.
    pub encoder_groups: usize,
    /// Encoder calls since creation.
    pub encoder_calls_total: u64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Frames not sent because encoding failed.
    pub send_errors: u64,
    /// The participants' ids.
    pub participant_ids: Vec<u64>,
}

/// A participant joining.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// Where the participant receives RTP, and the only source accepted from it.
    pub rtp_address: SocketAddr,
    /// Codec and payload type.
    pub codec: Codec,
    /// The `a=extmap` id of RFC 6464 audio levels (both directions): the room reads who
    /// talks from the packet headers and decodes only whom it may mix.
    pub audio_level_extension: Option<u8>,
    /// Noise suppression on what it sends.
    pub denoise: bool,
    /// Joins muted.
    pub muted: bool,
    /// Joins deaf.
    pub deaf: bool,
    /// Moderator role.
    pub moderator: bool,
}

/// An RTP socket bound ahead of a join ([`Host::reserve_rtp`]): a SIP leg must put our
/// port in its SDP before the peer's address and codec are known. Dropping it releases the
/// port.
#[derive(Debug)]
pub struct RtpSocket {
    socket: StdUdpSocket,
    local: SocketAddr,
}

impl RtpSocket {
    /// The address the participant's RTP will arrive at.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// What a join may add to its [`JoinSpec`] (everything optional; the control API gives a
/// client's identity, SIP the rest).
#[derive(Debug, Default)]
pub struct JoinOptions {
    /// A socket reserved with [`Host::reserve_rtp`]; `None` binds the next free port.
    pub socket: Option<RtpSocket>,
    /// The RFC 4733 telephone-event payload type negotiated for the leg.
    pub telephone_event: Option<PayloadType>,
    /// Where the participant's [`Signal`]s go (besides the room's events), for whoever
    /// drives the participant: a full channel drops the signal and counts it.
    pub signals: Option<tokio::sync::mpsc::Sender<Signal>>,
    /// Detect DTMF tones in what the participant sends (phones without RFC 4733).
    pub inband_dtmf: bool,
    /// The packet time to send at, ms: whole frames, at most 120
    /// ([`confer_engine::leg::fit_packet_time`] makes any value so); `None` is one frame.
    pub ptime_ms: Option<u32>,
    /// Who joins, when known: named in its `joined` and `left` events.
    pub identity: Option<Arc<Identity>>,
}

/// Who a participant is: a client's user and device, and the client software.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The directory user.
    pub user: String,
    /// The user's device.
    pub device: String,
    /// The client's User-Agent, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// What the host tells whoever drives a participant ([`JoinOptions::signals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A key was pressed (RFC 4733, or a tone with [`JoinOptions::inband_dtmf`]).
    Key(DtmfDigit),
    /// Everything played to the participant ([`Host::play_to`]) has been sent; the
    /// number is that of the last `play_to`, so a finish that crossed a stop and a new
    /// play on its way is recognised as the old one's.
    PlaybackFinished(u64),
}

/// How a participant moved to another room ([`Host::move_participant`]) joins it.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoveSpec {
    /// Joins muted.
    pub muted: bool,
    /// Joins deaf.
    pub deaf: bool,
    /// Keeps detecting DTMF tones.
    pub inband_dtmf: bool,
}

/// Participant controls (each optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct ParticipantUpdate {
    /// Mute or unmute.
    pub muted: Option<bool>,
    /// Deafen or not.
    pub deaf: Option<bool>,
    /// Input gain in dB.
    pub input_gain_db: Option<f32>,
    /// Output gain in dB.
    pub output_gain_db: Option<f32>,
}

/// Per-participant socket counters, shared by its receive task and its worker.
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Datagrams received from the declared address.
    pub received: AtomicU64,
    /// Datagrams from anywhere else (dropped).
    pub foreign: AtomicU64,
    /// Datagrams dropped on a full queue.
    pub queue_full: AtomicU64,
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Datagrams not sent (would block, or an error).
    pub send_dropped: AtomicU64,
}

/// A participant as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantInfo {
    /// Host-wide id.
    pub id: u64,
    /// The room.
    pub room: u64,
    /// The participant's declared RTP address.
    pub rtp_address: SocketAddr,
    /// Our socket for it.
    pub local_rtp_address: SocketAddr,
    /// `opus`, `pcmu` or `pcma`.
    pub codec: &'static str,
    /// RTP payload type.
    pub payload_type: u8,
    /// Datagrams received from the declared address.
    pub datagrams_received: u64,
    /// Datagrams from other addresses (dropped).
    pub datagrams_foreign: u64,
    /// Datagrams dropped because the queue to the worker was full.
    pub datagrams_queue_full: u64,
    /// Datagrams sent to it.
    pub datagrams_sent: u64,
    /// Datagrams that could not be sent.
    pub datagrams_send_dropped: u64,
    /// The room's view: controls, jitter buffer, loss, level (absent when only created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsJson>,
}

/// The room's per-participant state and counters, for JSON.
#[derive(Debug, Clone, Serialize)]
pub struct StatsJson {
    /// Muted.
    pub muted: bool,
    /// Deaf.
    pub deaf: bool,
    /// Moderator.
    pub moderator: bool,
    /// Input gain, dB.
    pub input_gain_db: f32,
    /// Output gain, dB.
    pub output_gain_db: f32,
    /// Talking at the last tick.
    pub talking: bool,
    /// Mixed as an active speaker at the last tick.
    pub speaker: bool,
    /// Last frame's level, dBov.
    pub level_dbov: f32,
    /// Audio buffered ahead of playout, ms.
    pub jitter_buffer_delay_ms: f64,
    /// The jitter buffer's target, ms.
    pub jitter_buffer_target_ms: f64,
    /// RTP packets received by the leg.
    pub rtp_packets_received: u64,
    /// RTP packets sent by the leg.
    pub rtp_packets_sent: u64,
    /// RFC 3550 packets expected.
    pub packets_expected: u64,
    /// RFC 3550 cumulative loss.
    pub packets_lost: i64,
    /// Interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Datagrams the leg rejected.
    pub rejected: u64,
    /// Frames mixed into the room.
    pub frames_mixed: u64,
    /// Loss reported by the participant for what it receives (RTCP), percent; null until
    /// it reports.
    pub reported_loss_pct: Option<u8>,
    /// The loss the Opus FEC it receives is sized for, percent; null for G.711 or
    /// without FEC.
    pub fec_loss_pct: Option<u8>,
}

impl From<&ParticipantStats> for StatsJson {
    fn from(s: &ParticipantStats) -> Self {
        StatsJson {
            muted: s.muted,
            deaf: s.deaf,
            moderator: s.moderator,
            input_gain_db: s.input_gain_db,
            output_gain_db: s.output_gain_db,
            talking: s.talking,
            speaker: s.speaker,
            level_dbov: s.level_dbov,
            jitter_buffer_delay_ms: s.jitter_buffer_delay_ms,
            jitter_buffer_target_ms: s.jitter_buffer_target_ms,
            rtp_packets_received: s.leg.rtp_packets_received,
            rtp_packets_sent: s.leg.rtp_packets_sent,
            packets_expected: s.packets_expected,
            packets_lost: s.packets_lost,
            jitter_ms: s.leg.jitter_ms,
            rejected: s.leg.errors.total(),
            frames_mixed: s.frames_mixed,
            reported_loss_pct: s.reported_loss_percent,
            fec_loss_pct: s.fec_loss_percent,
        }
    }
}

/// One received datagram on its way to the worker: a fixed-size slot, so the queue
/// allocates once.
struct Datagram {
    len: usize,
    arrival: Instant,
    bytes: [u8; MAX_DATAGRAM],
}

type Reply<T> = oneshot::Sender<Result<T, HostError>>;

/// A participant's half built on the async side and handed to the worker.
struct NewMember {
    id: u64,
    leg: MediaLeg,
    spec: JoinSpec,
    send: Arc<SendTarget>,
    local: SocketAddr,
    rx: HeapCons<Datagram>,
    task: tokio::task::AbortHandle,
    signals: Option<tokio::sync::mpsc::Sender<Signal>>,
    inband_dtmf: bool,
    peer: tokio::sync::watch::Sender<SocketAddr>,
    identity: Option<Arc<Identity>>,
}

/// A participant between two rooms ([`Host::move_participant`]): its leg and everything
/// the worker keeps for it, so its socket, receive task and RTP state carry over.
struct Moving {
    member: Member,
    leg: MediaLeg,
}

/// A worker's answer to an adoption: a refused participant comes back to be put back.
type AdoptReply = oneshot::Sender<Result<ParticipantInfo, (HostError, Option<Box<Moving>>)>>;

/// The participant of an adoption that could not be sent.
fn take_moving(c: Command) -> Option<Box<Moving>> {
    match c {
        Command::Adopt { moving, .. } => Some(moving),
        _ => None,
    }
}

enum Command {
    CreateRoom {
        id: u64,
        spec: RoomSpec,
        reply: Reply<RoomInfo>,
    },
    DeleteRoom {
        id: u64,
        reply: Reply<()>,
    },
    GetRoom {
        id: u64,
        reply: Reply<RoomInfo>,
    },
    ListRooms {
        reply: Reply<Vec<RoomInfo>>,
    },
    SetLocked {
        id: u64,
        locked: bool,
        reply: Reply<RoomInfo>,
    },
    Join {
        room: u64,
        member: Box<NewMember>,
        reply: Reply<ParticipantInfo>,
    },
    Leave {
        room: u64,
        participant: u64,
        reply: Reply<()>,
    },
    Update {
        room: u64,
        participant: u64,
        update: ParticipantUpdate,
        reply: Reply<ParticipantInfo>,
    },
    GetParticipant {
        room: u64,
        participant: u64,
        reply: Reply<ParticipantInfo>,
    },
    StartRecording {
        room: u64,
        tracks: bool,
        unix_ms: u64,
        reply: Reply<Vec<RecordingFile>>,
    },
    StopRecording {
        room: u64,
        reply: Reply<Vec<RecordingFile>>,
    },
    PlayTo {
        room: u64,
        participant: u64,
        clip: Clip,
        number: u64,
        reply: Reply<()>,
    },
    StopPlayback {
        room: u64,
        participant: u64,
        reply: Reply<()>,
    },
    Announce {
        room: u64,
        clip: Clip,
        reply: Reply<()>,
    },
    SetRemote {
        room: u64,
        participant: u64,
        remote: SocketAddr,
        reply: Reply<()>,
    },
    Detach {
        room: u64,
        participant: u64,
        reply: Reply<Box<Moving>>,
    },
    Adopt {
        room: u64,
        moving: Box<Moving>,
        spec: MoveSpec,
        reply: AdoptReply,
    },
}

/// Where a room lives, and its flags that do not change.
#[derive(Debug, Clone, Copy)]
struct RoomPlace {
    worker: usize,
    announce_joins: bool,
}

/// The media host: the API's handle on the workers (cheap to clone).
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    workers: Vec<SyncSender<Command>>,
    /// Room id -> owning worker and what callers need to know without asking it (control
    /// plane only).
    rooms: Mutex<HashMap<u64, RoomPlace>>,
    next_id: AtomicU64,
    ports: Mutex<u16>,
    media_ip: IpAddr,
    port_min: u16,
    port_max: u16,
    frame_ms: u32,
    recordings_dir: PathBuf,
    events: Events,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The recordings' writer threads (joined at stop, after the workers).
    writers: Writers,
}

/// Writer threads of recordings, shared by the workers (which add) and the host (which
/// joins them when it stops); finished ones are pruned when a recording starts.
type Writers = Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>;

/// What [`Host::start`] needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Media worker threads.
    pub workers: usize,
    /// `SCHED_FIFO` priority of the workers and their senders (0: normal scheduling).
    pub realtime_priority: u8,
    /// Sender threads per worker (0: one per core).
    pub send_lanes: usize,
    /// Frame clock, ms.
    pub frame_ms: u32,
    /// Address of the RTP sockets.
    pub media_ip: IpAddr,
    /// First RTP port.
    pub rtp_port_min: u16,
    /// Last RTP port.
    pub rtp_port_max: u16,
    /// Where recordings are written (`data_dir/recordings`; created when needed).
    pub recordings_dir: PathBuf,
}

impl Host {
    /// Starts the media workers.
    pub fn start(cfg: &HostConfig) -> io::Result<Host> {
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let events = Events {
            tap: Arc::new(std::sync::OnceLock::new()),
        };
        let frame = Duration::from_millis(u64::from(cfg.frame_ms));
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let writers = Writers::default();
        let workers = cfg.workers.max(1);
        let epoch = Instant::now();
        for i in 0..workers {
            let (tx, rx) = sync_channel(COMMAND_QUEUE_LEN);
            let send_stop = Arc::new(AtomicBool::new(false));
            let priority = cfg.realtime_priority;
            let (out, sender_threads) = SendQueue::start(
                i,
                if cfg.send_lanes > 0 {
                    cfg.send_lanes
                } else {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                },
                metrics.clone(),
                send_stop.clone(),
                priority,
            )?;
            let mut worker = Worker {
                index: i,
                frame,
                first_tick: first_tick(epoch, frame, i, workers),
                frame_ms: cfg.frame_ms,
                recordings_dir: cfg.recordings_dir.clone(),
                rooms: HashMap::new(),
                events: events.clone(),
                metrics: metrics.clone(),
                tx_buf: vec![0; MAX_DATAGRAM],
                writers: writers.clone(),
                out,
            };
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("confer-media-{i}"))
                    .spawn(move || {
                        realtime(priority);
                        worker.run(&rx, &stop);
                        // The rooms' last packets (BYEs) leave before the sender stops.
                        send_stop.store(true, Ordering::Release);
                        worker.out.wake_all();
                        for t in sender_threads {
                            let _ = t.join();
                        }
                    })?,
            );
            senders.push(tx);
        }
        Ok(Host {
            inner: Arc::new(Inner {
                workers: senders,
                rooms: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                ports: Mutex::new(cfg.rtp_port_min),
                media_ip: cfg.media_ip,
                port_min: cfg.rtp_port_min,
                port_max: cfg.rtp_port_max,
                frame_ms: cfg.frame_ms,
                recordings_dir: cfg.recordings_dir.clone(),
                events,
                metrics,
                stop,
                threads: Mutex::new(threads),
                writers,
            }),
        })
    }

    /// Publishes an event of another part (SIP dial-out) on the event stream.
    pub fn publish(&self, msg: EventMsg) {
        self.inner.events.send(msg);
    }

    /// Every event published from now on also goes, without loss, to the returned
    /// receiver (the journal's). Once per host: `None` the second time.
    pub fn tap_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<EventMsg>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner.events.tap.set(tx).ok()?;
        Some(rx)
    }

    /// Media worker threads.
    pub fn workers(&self) -> usize {
        self.inner.workers.len()
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Stops the workers (ending their rooms), waits for them and then for the recordings'
    /// writers (so every file is complete); returns the ticks done.
    pub fn stop(&self) -> u64 {
        self.inner.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for t in threads {
            let _ = t.join();
        }
        let writers = std::mem::take(&mut *lock(&self.inner.writers));
        for w in writers {
            let _ = w.join();
        }
        self.inner.metrics.ticks.load(Ordering::Relaxed)
    }

    fn worker_of(&self, room: u64) -> Result<usize, HostError> {
        lock(&self.inner.rooms)
            .get(&room)
            .map(|p| p.worker)
            .ok_or(HostError::UnknownRoom(room))
    }

    async fn call<T>(
        &self,
        worker: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, HostError> {
        let (tx, rx) = oneshot::channel();
        let sender = self.inner.workers.get(worker).ok_or(HostError::Stopped)?;
        match sender.try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(HostError::Busy(worker)),
            Err(TrySendError::Disconnected(_)) => return Err(HostError::Stopped),
        }
        rx.await.map_err(|_| HostError::Stopped)?
    }

    /// Creates a room on the least loaded worker.
    pub async fn create_room(&self, spec: RoomSpec) -> Result<RoomInfo, HostError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let worker = {
            let rooms = lock(&self.inner.rooms);
            let mut load = vec![0usize; self.inner.workers.len()];
            for p in rooms.values() {
                load[p.worker] += 1;
            }
            (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0)
        };
        let info = self
            .call(worker, |reply| Command::CreateRoom { id, spec, reply })
            .await?;
        lock(&self.inner.rooms).insert(
            id,
            RoomPlace {
                worker,
                announce_joins: info.announce_joins,
            },
        );
        Ok(info)
    }

    /// Starts recording a room (its mix; with `tracks` also every participant's input);
    /// returns the files started.
    pub async fn start_recording(
        &self,
        room: u64,
        tracks: bool,
    ) -> Result<Vec<RecordingFile>, HostError> {
        let worker = self.worker_of(room)?;
        // The shell reads the wall clock: it names the files.
        let unix_ms = crate::uc::now().0;
        std::fs::create_dir_all(&self.inner.recordings_dir)
            .map_err(|e| HostError::RecordingIo(e.to_string()))?;
        self.call(worker, |reply| Command::StartRecording {
            room,
            tracks,
            unix_ms,
            reply,
        })
        .await
    }

    /// Stops a room's recording; returns its files once its writer has finished them all
    /// (complete, readable at once), tracks of participants who left included.
    pub async fn stop_recording(&self, room: u64) -> Result<Vec<RecordingFile>, HostError> {
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::StopRecording { room, reply })
            .await
    }

    /// The recording files in the recordings directory (blocking file-system reads).
    pub fn list_recordings(&self) -> io::Result<Vec<RecordingListing>> {
        let dir = match std::fs::read_dir(&self.inner.recordings_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Some((room, started_unix_ms, track)) = parse_recording_name(&name) else {
                continue;
            };
            let bytes = entry.metadata()?.len();
            out.push(RecordingListing {
                name,
                bytes,
                room,
                started_unix_ms,
                track,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Ends and removes a room; answers once its recording's files, if any, are complete.
    pub async fn delete_room(&self, id: u64) -> Result<(), HostError> {
        let worker = self.worker_of(id)?;
        self.call(worker, |reply| Command::DeleteRoom { id, reply })
            .await?;
        lock(&self.inner.rooms).remove(&id);
        Ok(())
    }

    /// Whether room `id` exists (without asking its worker: cheap, for every call setup).
    pub fn has_room(&self, id: u64) -> bool {
        lock(&self.inner.rooms).contains_key(&id)
    }

    /// Whether room `id` announces joins and leaves (without asking its worker).
    pub fn announces_joins(&self, id: u64) -> Result<bool, HostError> {
        lock(&self.inner.rooms)
            .get(&id)
            .map(|p| p.announce_joins)
            .ok_or(HostError::UnknownRoom(id))
    }

    /// One room.
    pub async fn room(&self, id: u64) -> Result<RoomInfo, HostError> {
        let worker = self.worker_of(id)?;
        self.call(worker, |reply| Command::GetRoom { id, reply })
            .await
    }

    /// Locks or unlocks a room.
    pub async fn set_locked(&self, id: u64, locked: bool) -> Result<RoomInfo, HostError> {
        let worker = self.worker_of(id)?;
        self.call(worker, |reply| Command::SetLocked { id, locked, reply })
            .await
    }

    /// Every room, by id.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, HostError> {
        let mut all = Vec::new();
        for w in 0..self.inner.workers.len() {
            all.extend(self.call(w, |reply| Command::ListRooms { reply }).await?);
        }
        all.sort_by_key(|r| r.id);
        Ok(all)
    }

    /// Binds an RTP socket on the next free port for a later [`Host::join_with`].
    pub fn reserve_rtp(&self) -> Result<RtpSocket, HostError> {
        let socket = self.bind_rtp_socket()?;
        let local = socket.local_addr()?;
        Ok(RtpSocket { socket, local })
    }

    /// Adds a participant: binds its socket (or takes the reserved one of `options`),
    /// builds its leg, starts its receive task, and has the room's worker join it.
    pub async fn join_with(
        &self,
        room: u64,
        spec: JoinSpec,
        options: JoinOptions,
    ) -> Result<ParticipantInfo, HostError> {
        let worker = self.worker_of(room)?;
        if spec.rtp_address.is_ipv4() != self.inner.media_ip.is_ipv4() {
            return Err(HostError::AddressFamily {
                rtp: spec.rtp_address,
                media: self.inner.media_ip,
            });
        }
        let (socket, local) = match options.socket {
            Some(reserved) => (reserved.socket, reserved.local),
            None => {
                let socket = self.bind_rtp_socket()?;
                let local = socket.local_addr()?;
                (socket, local)
            }
        };
        socket.set_nonblocking(true)?;
        let send_socket = socket.try_clone()?;
        // Read interest only: with write interest too (as `tokio::net::UdpSocket` has),
        // every send's completion (`sock_wfree`) would wake the reactor, a thousand times
        // a tick in a big room. `with_interest` is deprecated for I/O safety (a registered
        // fd closed elsewhere); here the AsyncFd owns the socket, so its fd is closed only
        // after deregistration (the worker's clone is a separate fd).
        #[allow(deprecated)]
        let recv_socket = AsyncFd::with_interest(socket, Interest::READABLE)?;
        let now = Instant::now();
        let leg = MediaLeg::new(
            LegConfig {
                codec: spec.codec,
                frame_ms: self.inner.frame_ms,
                denoise: spec.denoise,
                audio_level_extension: spec.audio_level_extension,
                telephone_event: options.telephone_event,
                ptime_ms: options
                    .ptime_ms
                    .map(|p| fit_packet_time(self.inner.frame_ms, p))
                    .filter(|&p| p > self.inner.frame_ms),
                ..LegConfig::default()
            },
            None,
            // The OS-seeded CSPRNG: SSRCs and initial sequence numbers must not be guessable.
            &mut rand::rng(),
            now,
        )?;
        let (prod, cons) = HeapRb::<Datagram>::new(RX_QUEUE_LEN).split();
        let counters = Arc::new(SocketCounters::default());
        let (peer, peer_rx) = tokio::sync::watch::channel(spec.rtp_address);
        let task = tokio::spawn(receive(
            recv_socket,
            peer_rx,
            prod,
            counters.clone(),
            self.inner.metrics.clone(),
        ))
        .abort_handle();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let member = Box::new(NewMember {
            id,
            leg,
            spec,
            send: Arc::new(SendTarget {
                socket: send_socket,
                counters,
                left: AtomicBool::new(false),
            }),
            local,
            rx: cons,
            task: task.clone(),
            signals: options.signals,
            inband_dtmf: options.inband_dtmf,
            peer,
            identity: options.identity,
        });
        let r = self
            .call(worker, |reply| Command::Join {
                room,
                member,
                reply,
            })
            .await;
        if r.is_err() {
            // The worker dropped the member (and its socket clone); stop the receiver too.
            task.abort();
        }
        r
    }

    /// Plays `clip` (48 kHz) to one participant, after what is already queued for it; a
    /// [`Signal::PlaybackFinished`] with `number` follows when everything queued has been
    /// sent (the caller numbers its plays).
    pub async fn play_to(
        &self,
        room: u64,
        participant: u64,
        clip: Clip,
        number: u64,
    ) -> Result<(), HostError> {
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::PlayTo {
            room,
            participant,
            clip,
            number,
            reply,
        })
        .await
    }

    /// Stops what plays to a participant and drops its queue (no signal follows).
    pub async fn stop_playback(&self, room: u64, participant: u64) -> Result<(), HostError> {
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::StopPlayback {
            room,
            participant,
            reply,
        })
        .await
    }

    /// Points a participant's media at `remote` (the peer moved it, e.g. by re-INVITE):
    /// we send there from now on, and accept only its datagrams.
    pub async fn set_remote(
        &self,
        room: u64,
        participant: u64,
        remote: SocketAddr,
    ) -> Result<(), HostError> {
        if remote.is_ipv4() != self.inner.media_ip.is_ipv4() {
            return Err(HostError::AddressFamily {
                rtp: remote,
                media: self.inner.media_ip,
            });
        }
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::SetRemote {
            room,
            participant,
            remote,
            reply,
        })
        .await
    }

    /// Plays `clip` (48 kHz) to everyone in the room who hears it, and into its recording.
    pub async fn announce(&self, room: u64, clip: Clip) -> Result<(), HostError> {
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::Announce { room, clip, reply })
            .await
    }

    /// Moves a participant to another room with its socket, leg and id: the peer notices
    /// nothing (same port, same SSRC, its sequence goes on). A room that refuses it (gone,
    /// locked, full) gives it back to the room it came from, and the error is returned.
    pub async fn move_participant(
        &self,
        from: u64,
        participant: u64,
        to: u64,
        spec: MoveSpec,
    ) -> Result<ParticipantInfo, HostError> {
        let from_worker = self.worker_of(from)?;
        let to_worker = self.worker_of(to)?;
        let moving = self
            .call(from_worker, |reply| Command::Detach {
                room: from,
                participant,
                reply,
            })
            .await?;
        let (error, moving) = match self.adopt(to_worker, to, moving, spec).await {
            Ok(info) => return Ok(info),
            Err((e, Some(m))) => (e, m),
            Err((e, None)) => return Err(e),
        };
        let back = MoveSpec {
            muted: moving.member.spec.muted,
            deaf: moving.member.spec.deaf,
            inband_dtmf: moving.member.inband_dtmf,
        };
        if let Err((e, _)) = self.adopt(from_worker, from, moving, back).await {
            // Dropping the participant ends its media: its room is gone too.
            tracing::warn!(participant, from, "could not put a participant back: {e}");
        }
        Err(error)
    }

    async fn adopt(
        &self,
        worker: usize,
        room: u64,
        moving: Box<Moving>,
        spec: MoveSpec,
    ) -> Result<ParticipantInfo, (HostError, Option<Box<Moving>>)> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Adopt {
            room,
            moving,
            spec,
            reply,
        };
        let Some(sender) = self.inner.workers.get(worker) else {
            return Err((HostError::Stopped, take_moving(command)));
        };
        match sender.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(c)) => return Err((HostError::Busy(worker), take_moving(c))),
            Err(TrySendError::Disconnected(c)) => {
                return Err((HostError::Stopped, take_moving(c)));
            }
        }
        match rx.await {
            Ok(r) => r,
            // The worker stopped with the participant: nothing to give back.
            Err(_) => Err((HostError::Stopped, None)),
        }
    }

    /// Removes a participant (it is sent an RTCP BYE).
    pub async fn leave(&self, room: u64, participant: u64) -> Result<(), HostError> {
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::Leave {
            room,
            participant,
            reply,
        })
        .await
    }

    /// Changes a participant's controls; all are checked before any is applied.
    pub async fn update(
        &self,
        room: u64,
        participant: u64,
        update: ParticipantUpdate,
    ) -> Result<ParticipantInfo, HostError> {
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::Update {
            room,
            participant,
            update,
            reply,
        })
        .await
    }

    /// A participant with its stats.
    pub async fn participant(
        &self,
        room: u64,
        participant: u64,
    ) -> Result<ParticipantInfo, HostError> {
        let worker = self.worker_of(room)?;
        self.call(worker, |reply| Command::GetParticipant {
            room,
            participant,
            reply,
        })
        .await
    }

    /// Binds the next free port of the range, starting after the last one handed out.
    fn bind_rtp_socket(&self) -> Result<StdUdpSocket, HostError> {
        let (min, max) = (self.inner.port_min, self.inner.port_max);
        let exhausted = HostError::PortsExhausted {
            ip: self.inner.media_ip,
            min,
            max,
        };
        if min > max {
            return Err(exhausted);
        }
        let mut cursor = lock(&self.inner.ports);
        let span = u32::from(max - min) + 1;
        for i in 0..span {
            let offset = (u32::from(*cursor - min) + i) % span;
            // `offset < span`, so `min + offset <= max` fits in a u16.
            let port = min + offset as u16;
            match StdUdpSocket::bind(SocketAddr::new(self.inner.media_ip, port)) {
                Ok(s) => {
                    *cursor = if port == max { min } else { port + 1 };
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(HostError::Socket(e)),
            }
        }
        Err(exhausted)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these control-plane locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A participant's receive task: arrival times, source filter, queue to the worker.
async fn receive(
    socket: AsyncFd<StdUdpSocket>,
    mut peer_rx: tokio::sync::watch::Receiver<SocketAddr>,
    mut queue: HeapProd<Datagram>,
    counters: Arc<SocketCounters>,
    metrics: Arc<Metrics>,
) {
    // One byte more than we accept, so an oversized datagram is seen, not truncated.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut peer = *peer_rx.borrow_and_update();
    loop {
        let Ok(mut ready) = socket.readable().await else {
            // The reactor is gone (runtime shutting down).
            return;
        };
        // Until drained (`try_io` clears the readiness on WouldBlock).
        while let Ok(r) = ready.try_io(|s| s.get_ref().recv_from(&mut buf)) {
            let arrival = Instant::now();
            match r {
                Ok((len, from)) => {
                    metrics.datagrams_received.fetch_add(1, Ordering::Relaxed);
                    // The peer moved its media (a re-INVITE): a version check per datagram.
                    if peer_rx.has_changed().unwrap_or(false) {
                        peer = *peer_rx.borrow_and_update();
                    }
                    if from != peer {
                        counters.foreign.fetch_add(1, Ordering::Relaxed);
                        metrics.drop_foreign_source.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if len > MAX_DATAGRAM {
                        metrics.drop_oversized.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    let mut d = Datagram {
                        len,
                        arrival,
                        bytes: [0; MAX_DATAGRAM],
                    };
                    d.bytes[..len].copy_from_slice(&buf[..len]);
                    if queue.try_push(d).is_err() {
                        counters.queue_full.fetch_add(1, Ordering::Relaxed);
                        metrics.drop_queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    // ICMP errors reported on the socket and the like: count, keep receiving.
                    metrics.recv_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

struct Member {
    id: u64,
    spec: JoinSpec,
    send: Arc<SendTarget>,
    /// The worker whose sender threads hold `send` (see [`SendQueue::push`]).
    send_lanes_of: Option<usize>,
    local: SocketAddr,
    rx: HeapCons<Datagram>,
    task: tokio::task::AbortHandle,
    /// See [`JoinOptions::signals`].
    signals: Option<tokio::sync::mpsc::Sender<Signal>>,
    /// See [`JoinOptions::inband_dtmf`].
    inband_dtmf: bool,
    /// The address the receive task accepts (and `spec.rtp_address` the one we send to).
    peer: tokio::sync::watch::Sender<SocketAddr>,
    /// The number of the last [`Host::play_to`].
    play_number: u64,
    /// See [`JoinOptions::identity`].
    identity: Option<Arc<Identity>>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.send.left.store(true, Ordering::Release);
        self.task.abort();
    }
}

/// A recording file as the API shows it when starting or stopping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordingFile {
    /// The file name in the recordings directory.
    pub name: String,
    /// `mix`, or `p{participant}` for a participant's track.
    pub track: String,
    /// Audio recorded so far, in seconds.
    pub duration_s: f64,
    /// Bytes written so far (after stopping: the file's size).
    pub bytes: u64,
    /// The file was ended early by an error (see the log).
    pub failed: bool,
}

/// A file of the recordings directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordingListing {
    /// The file name.
    pub name: String,
    /// Its size.
    pub bytes: u64,
    /// The room recorded.
    pub room: u64,
    /// When the recording started (Unix time, ms).
    pub started_unix_ms: u64,
    /// `mix` or `p{participant}`.
    pub track: String,
}

/// `room-{room}-{unix_ms}-{track}.opus` -> its parts.
pub(crate) fn parse_recording_name(name: &str) -> Option<(u64, u64, String)> {
    let rest = name.strip_prefix("room-")?.strip_suffix(".opus")?;
    let mut parts = rest.splitn(3, '-');
    let room = parts.next()?.parse().ok()?;
    let ms = parts.next()?.parse().ok()?;
    let track = parts.next()?;
    Some((room, ms, track.to_owned()))
}

/// Frames queued per recording between its media worker and its writer thread. A slot is
/// one tick of one file (about 3.9 KB), so a recording holds 2 MB of queue, allocated when
/// it starts. That buffers about 10 s of a mix-only recording at 20 ms ticks and 1 s of a
/// mix with nine tracks: a disk stall of that length loses nothing, a longer one drops
/// frames (counted, recorded as silence) instead of slowing the worker.
pub const RECORDING_QUEUE_FRAMES: usize = 512;

/// The file key of a recording's mix; tracks get 1, 2, ... in the order they open.
const MIX_FILE: u32 = 0;

/// One tick of one file on its way to the writer: a fixed-size slot, so the queue
/// allocates once.
struct RecFrame {
    file: u32,
    /// The recording's tick this frame belongs to (0 = the first).
    tick: u64,
    len: usize,
    samples: [f32; FRAME_SAMPLES],
}

/// Who is told when a recording's files are finished.
enum RecDone {
    /// `stop_recording`: the files, once complete.
    Files(Reply<Vec<RecordingFile>>),
    /// `delete_room`: answered once the files are complete.
    Deleted(Reply<()>),
    /// Shutdown (the host joins the writer threads).
    Nobody,
}

/// What the writer is told besides frames, each at the tick it takes effect: every frame
/// of an earlier tick was queued (or dropped) before it was sent.
enum RecControl {
    /// A participant's track starts at `at_tick`, with silence before.
    Open {
        file: u32,
        at_tick: u64,
        track: Box<TrackFile>,
    },
    /// A participant's track ends before `at_tick`: finish its file.
    Close { file: u32, at_tick: u64 },
    /// The recording ends before `at_tick`: finish every file, then answer.
    Stop { at_tick: u64, done: RecDone },
}

impl RecControl {
    fn at_tick(&self) -> u64 {
        match self {
            RecControl::Open { at_tick, .. }
            | RecControl::Close { at_tick, .. }
            | RecControl::Stop { at_tick, .. } => *at_tick,
        }
    }
}

/// Where a file's encoded pages go: a `BufWriter<File>`, or a test's writer.
type RecOut = Box<dyn io::Write + Send>;

/// One file being recorded, owned by its recording's writer thread: the room's ticks
/// gathered into 20 ms frames (10 ms rooms give two per frame) and encoded by its own
/// [`Recorder`].
struct TrackFile {
    name: String,
    track: String,
    recorder: Option<Recorder<RecOut>>,
    pending: Vec<f32>,
    failed: bool,
    /// The next tick this file expects; a later frame means the ticks between were
    /// dropped (or came before the file opened) and are recorded as silence.
    next_tick: u64,
}

impl TrackFile {
    /// Creates `{prefix}-{track}.opus` in `dir` (on the worker: the open's error is the
    /// caller's answer; the headers stay in the `BufWriter`).
    fn create(dir: &Path, prefix: &str, track: String, serial: u32) -> io::Result<TrackFile> {
        let name = format!("{prefix}-{track}.opus");
        let file = File::create(dir.join(&name))?;
        TrackFile::new(name, track, Box::new(BufWriter::new(file)), serial)
    }

    fn new(name: String, track: String, out: RecOut, serial: u32) -> io::Result<TrackFile> {
        let mut config = RecorderConfig::new(serial);
        config.comments.push(("TITLE".into(), name.clone()));
        let recorder = Recorder::new(out, config).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(TrackFile {
            name,
            track,
            recorder: Some(recorder),
            pending: Vec::with_capacity(FRAME_SAMPLES),
            failed: false,
            next_tick: 0,
        })
    }

    fn fail(&mut self, what: &str, e: &dyn std::fmt::Display, metrics: &Metrics) {
        tracing::warn!(file = %self.name, "recording {what} failed, file ended: {e}");
        metrics.recording_errors.fetch_add(1, Ordering::Relaxed);
        // Dropping the recorder closes the stream as far as the writer allows.
        self.recorder = None;
        self.failed = true;
    }

    fn push(&mut self, mut frame: &[f32], metrics: &Metrics) {
        while !frame.is_empty() {
            let take = (FRAME_SAMPLES - self.pending.len()).min(frame.len());
            self.pending.extend_from_slice(&frame[..take]);
            frame = &frame[take..];
            if self.pending.len() == FRAME_SAMPLES {
                if let Some(r) = self.recorder.as_mut()
                    && let Err(e) = r.push_frame(&self.pending)
                {
                    self.fail("write", &e, metrics);
                }
                self.pending.clear();
            }
        }
    }

    /// `n` samples of silence: whole frames as silent packets (nothing to encode).
    fn push_zeros(&mut self, mut n: u64, metrics: &Metrics) {
        if !self.pending.is_empty() {
            // Below FRAME_SAMPLES, so it fits a usize.
            let take = n.min((FRAME_SAMPLES - self.pending.len()) as u64) as usize;
            self.pending.resize(self.pending.len() + take, 0.0);
            n -= take as u64;
            if self.pending.len() == FRAME_SAMPLES {
                let full = std::mem::take(&mut self.pending);
                self.push(&full, metrics);
                self.pending = full;
                self.pending.clear();
            }
        }
        let mut whole = n / FRAME_SAMPLES as u64;
        while whole > 0 {
            let frames = u32::try_from(whole).unwrap_or(u32::MAX);
            if let Some(r) = self.recorder.as_mut()
                && let Err(e) = r.push_silence(frames)
            {
                self.fail("write", &e, metrics);
            }
            whole -= u64::from(frames);
        }
        // Below FRAME_SAMPLES; the pending frame is empty whenever this is not zero.
        let rest = (n % FRAME_SAMPLES as u64) as usize;
        self.pending.resize(self.pending.len() + rest, 0.0);
    }

    /// Silence up to `tick` (frames dropped on the way, or a track's start).
    fn catch_up(&mut self, tick: u64, tick_samples: u64, metrics: &Metrics) {
        if tick > self.next_tick {
            let gap = (tick - self.next_tick).saturating_mul(tick_samples);
            self.push_zeros(gap, metrics);
            self.next_tick = tick;
        }
    }

    fn duration_samples(&self) -> u64 {
        self.recorder.as_ref().map_or(0, Recorder::duration_samples)
    }

    /// Pads a partial frame with silence, finishes the stream and flushes the file.
    fn finish(mut self, dir: &Path, metrics: &Metrics) -> RecordingFile {
        if !self.pending.is_empty() {
            self.pending.resize(FRAME_SAMPLES, 0.0);
            let pending = std::mem::take(&mut self.pending);
            self.push(&pending, metrics);
        }
        let duration_samples = self.duration_samples();
        if let Some(r) = self.recorder.take() {
            match r.finish() {
                Ok((mut w, _)) => {
                    if let Err(e) = w.flush() {
                        self.fail("flush", &e, metrics);
                    }
                }
                Err(e) => self.fail("finish", &e, metrics),
            }
        }
        RecordingFile {
            duration_s: duration_samples as f64 / 48_000.0,
            bytes: std::fs::metadata(dir.join(&self.name)).map_or(0, |m| m.len()),
            failed: self.failed,
            name: self.name,
            track: self.track,
        }
    }
}

/// A recording's writer thread: it owns the files, encodes the queued frames and writes
/// them, and finishes files when told.
struct RecWriter {
    dir: PathBuf,
    tick_samples: u64,
    /// Open files by key, in key order (few: a linear search is cheapest).
    open: Vec<(u32, TrackFile)>,
    /// Files already finished (tracks of participants who left), by key.
    done: Vec<(u32, RecordingFile)>,
    metrics: Arc<Metrics>,
}

impl RecWriter {
    fn run(
        mut self,
        mut frames: HeapCons<RecFrame>,
        control: &Receiver<RecControl>,
        idle: Duration,
    ) {
        let mut pending: std::collections::VecDeque<RecControl> = Default::default();
        let mut orphaned = false;
        loop {
            // Controls first: every frame queued before a control is then visible below.
            loop {
                match control.try_recv() {
                    Ok(c) => pending.push_back(c),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        orphaned = true;
                        break;
                    }
                }
            }
            if let Some(f) = frames.try_pop() {
                while pending.front().is_some_and(|c| c.at_tick() <= f.tick) {
                    if let Some(c) = pending.pop_front()
                        && self.apply(c)
                    {
                        return;
                    }
                }
                self.frame(&f);
                continue;
            }
            // The queue is empty: every control received above is due.
            while let Some(c) = pending.pop_front() {
                if self.apply(c) {
                    return;
                }
            }
            if orphaned {
                // The sink was dropped without a stop (a worker panicked): close the files.
                self.stop(None, RecDone::Nobody);
                return;
            }
            std::thread::park_timeout(idle);
        }
    }

    fn frame(&mut self, f: &RecFrame) {
        let (ts, metrics) = (self.tick_samples, &*self.metrics);
        if let Some((_, t)) = self.open.iter_mut().find(|(k, _)| *k == f.file) {
            t.catch_up(f.tick, ts, metrics);
            if f.tick == t.next_tick {
                t.push(&f.samples[..f.len], metrics);
                t.next_tick += 1;
            }
        }
    }

    /// Applies a control; `true` once the recording is finished.
    fn apply(&mut self, c: RecControl) -> bool {
        let (ts, metrics) = (self.tick_samples, &*self.metrics);
        match c {
            RecControl::Open {
                file,
                at_tick,
                mut track,
            } => {
                track.catch_up(at_tick, ts, metrics);
                self.open.push((file, *track));
                false
            }
            RecControl::Close { file, at_tick } => {
                if let Some(i) = self.open.iter().position(|(k, _)| *k == file) {
                    let (k, mut t) = self.open.remove(i);
                    t.catch_up(at_tick, ts, metrics);
                    self.done.push((k, t.finish(&self.dir, metrics)));
                }
                false
            }
            RecControl::Stop { at_tick, done } => {
                self.stop(Some(at_tick), done);
                true
            }
        }
    }

    fn stop(&mut self, at_tick: Option<u64>, done: RecDone) {
        let metrics = &*self.metrics;
        for (k, mut t) in std::mem::take(&mut self.open) {
            if let Some(at) = at_tick {
                t.catch_up(at, self.tick_samples, metrics);
            }
            self.done.push((k, t.finish(&self.dir, metrics)));
        }
        self.done.sort_by_key(|(k, _)| *k);
        let files: Vec<RecordingFile> = self.done.drain(..).map(|(_, f)| f).collect();
        tracing::info!(files = files.len(), "recording closed");
        // A caller that went away does not need the answer.
        match done {
            RecDone::Files(reply) => {
                let _ = reply.send(Ok(files));
            }
            RecDone::Deleted(reply) => {
                let _ = reply.send(Ok(()));
            }
            RecDone::Nobody => {}
        }
    }
}

/// How a recording's later files are named and numbered, and its tick.
struct RecordingPlan {
    dir: PathBuf,
    /// `room-{room}-{unix_ms}`.
    prefix: String,
    /// The last Ogg serial used; later tracks count on from it.
    serial: u32,
    /// Participants who join get a track.
    tracks_on: bool,
    /// The room's tick.
    frame_ms: u32,
}

/// The worker's [`RecordSink`]: it queues each tick's frames to the recording's writer
/// thread and never waits for it (a full queue drops the frame and counts it).
struct FileSink {
    dir: PathBuf,
    prefix: String,
    serial: u32,
    tracks_on: bool,
    /// Ticks handed over so far (the mix comes once per tick, first).
    tick: u64,
    next_file: u32,
    /// Every file of the recording, (name, track), for the start's answer.
    names: Vec<(String, String)>,
    /// Open participant tracks and their file keys.
    tracks: HashMap<ParticipantId, u32>,
    frames: HeapProd<RecFrame>,
    control: std::sync::mpsc::Sender<RecControl>,
    writer: std::thread::Thread,
    metrics: Arc<Metrics>,
}

impl FileSink {
    /// Starts the writer thread of a recording with its mix file and the tracks of the
    /// participants present.
    fn start(
        plan: RecordingPlan,
        mix: TrackFile,
        tracks: Vec<(ParticipantId, TrackFile)>,
        metrics: Arc<Metrics>,
    ) -> io::Result<(FileSink, std::thread::JoinHandle<()>)> {
        let RecordingPlan {
            dir,
            prefix,
            serial,
            tracks_on,
            frame_ms,
        } = plan;
        let mut names = vec![(mix.name.clone(), mix.track.clone())];
        let mut open = vec![(MIX_FILE, mix)];
        let mut keys = HashMap::new();
        for (i, (pid, t)) in tracks.into_iter().enumerate() {
            // Keys follow the mix's; a room has far fewer than 2^32 participants.
            let key = u32::try_from(i + 1).unwrap_or(u32::MAX);
            names.push((t.name.clone(), t.track.clone()));
            keys.insert(pid, key);
            open.push((key, t));
        }
        let next_file = u32::try_from(open.len()).unwrap_or(u32::MAX);
        let (prod, cons) = HeapRb::<RecFrame>::new(RECORDING_QUEUE_FRAMES).split();
        let (control, control_rx) = std::sync::mpsc::channel();
        let writer = RecWriter {
            dir: dir.clone(),
            tick_samples: u64::from(frame_ms) * 48,
            open,
            done: Vec::new(),
            metrics: metrics.clone(),
        };
        let idle = Duration::from_millis(u64::from(frame_ms.max(1)));
        let handle = std::thread::Builder::new()
            .name(format!("confer-rec-{serial:08x}"))
            .spawn(move || writer.run(cons, &control_rx, idle))?;
        let sink = FileSink {
            dir,
            prefix,
            serial,
            tracks_on,
            tick: 0,
            next_file,
            names,
            tracks: keys,
            frames: prod,
            control,
            writer: handle.thread().clone(),
            metrics,
        };
        Ok((sink, handle))
    }

    /// Sends a control and wakes the writer; the recording's writer is gone only after
    /// a panic there, and then there is nobody to tell.
    fn send(&self, c: RecControl) -> Result<(), RecControl> {
        let r = self.control.send(c).map_err(|e| e.0);
        self.writer.unpark();
        r
    }

    /// Opens a track for participant `api_id`, padded with silence to the mix's timeline.
    fn add_track(&mut self, pid: ParticipantId, api_id: u64) -> io::Result<()> {
        self.serial = self.serial.wrapping_add(1);
        let t = TrackFile::create(&self.dir, &self.prefix, format!("p{api_id}"), self.serial)?;
        let file = self.next_file;
        self.next_file = self.next_file.wrapping_add(1);
        self.names.push((t.name.clone(), t.track.clone()));
        let open = RecControl::Open {
            file,
            at_tick: self.tick,
            track: Box::new(t),
        };
        if self.send(open).is_err() {
            return Err(io::Error::other("the recording's writer has stopped"));
        }
        self.tracks.insert(pid, file);
        Ok(())
    }

    /// The participant left: its track ends now and its file is finished.
    fn close_track(&mut self, pid: ParticipantId) {
        if let Some(file) = self.tracks.remove(&pid) {
            let _ = self.send(RecControl::Close {
                file,
                at_tick: self.tick,
            });
        }
    }

    fn files(&self) -> Vec<RecordingFile> {
        self.names
            .iter()
            .map(|(name, track)| RecordingFile {
                name: name.clone(),
                track: track.clone(),
                duration_s: 0.0,
                bytes: 0,
                failed: false,
            })
            .collect()
    }

    /// Ends the recording: the writer drains the queue, finishes every file, then tells
    /// `done`.
    fn stop(self, done: RecDone) {
        if let Err(RecControl::Stop { done, .. }) = self.send(RecControl::Stop {
            at_tick: self.tick,
            done,
        }) {
            match done {
                RecDone::Files(reply) => {
                    let e = HostError::RecordingIo("the recording's writer has stopped".into());
                    let _ = reply.send(Err(e));
                }
                RecDone::Deleted(reply) => {
                    let _ = reply.send(Ok(()));
                }
                RecDone::Nobody => {}
            }
        }
    }

    fn queue(&mut self, file: u32, tick: u64, frame: &[f32]) {
        if self.frames.is_full() {
            self.metrics
                .recording_frames_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Rooms tick 10 or 20 ms, at most FRAME_SAMPLES; anything longer is cut.
        let len = frame.len().min(FRAME_SAMPLES);
        let mut f = RecFrame {
            file,
            tick,
            len,
            samples: [0.0; FRAME_SAMPLES],
        };
        f.samples[..len].copy_from_slice(&frame[..len]);
        // Only this thread pushes, and the queue was not full.
        let _ = self.frames.try_push(f);
    }
}

impl RecordSink for FileSink {
    fn mix(&mut self, frame: &[f32]) {
        self.queue(MIX_FILE, self.tick, frame);
        self.tick += 1;
    }

    fn track(&mut self, id: ParticipantId, frame: &[f32]) {
        if let Some(&file) = self.tracks.get(&id) {
            // After this tick's mix.
            self.queue(file, self.tick.saturating_sub(1), frame);
        }
    }
}

/// Stops a room's recording, if any: its writer finishes the files and then tells `done`.
/// `Err(done)` when the room was not recording.
fn finish_recording(room: &mut Room, done: RecDone) -> Result<(), RecDone> {
    let Some(sink) = room.stop_recording() else {
        return Err(done);
    };
    let sink: Box<dyn std::any::Any> = sink;
    match sink.downcast::<FileSink>() {
        Ok(s) => s.stop(done),
        // Only the worker starts recordings, always with a FileSink.
        Err(_) => return Err(done),
    }
    Ok(())
}

struct RoomEntry {
    room: Room,
    name: String,
    /// See [`RoomSpec::internal`].
    internal: bool,
    announce_joins: bool,
    members: HashMap<ParticipantId, Member>,
    by_api: HashMap<u64, ParticipantId>,
    /// The running recording's start, Unix ms (its name).
    recording: Option<u64>,
}

struct Worker {
    index: usize,
    frame: Duration,
    /// When its frame clock starts: the workers' ticks are spread over the frame.
    first_tick: Instant,
    frame_ms: u32,
    recordings_dir: PathBuf,
    rooms: HashMap<u64, RoomEntry>,
    events: Events,
    metrics: Arc<Metrics>,
    tx_buf: Vec<u8>,
    writers: Writers,
    out: SendQueue,
}

/// Datagrams queued from a media worker to its sender thread: a tick of a 4000-person
/// room with RTCP fits.
pub const SEND_QUEUE_LEN: usize = 4096;
/// Bytes of those datagrams (room packets are a few hundred bytes).
const SEND_QUEUE_BYTES: usize = SEND_QUEUE_LEN * 512;

/// A participant's socket as its sender thread holds it. The worker hands each lane the
/// targets of its participants once, not with every packet: an `Arc` cloned by the worker
/// and dropped by the sender for every packet was a cache line moving between the cores
/// twice per datagram, the worker's largest cost when queueing a big room's packets.
struct SendTarget {
    socket: StdUdpSocket,
    /// The participant's counters, which its receive task and the API share.
    counters: Arc<SocketCounters>,
    /// Set when the participant is gone: lanes of every worker it was in let go then.
    left: AtomicBool,
}

/// What a media worker queues to a sender thread; a packet's `len` bytes follow in the
/// byte queue (both queues are single-producer single-consumer and move in step).
enum Outgoing {
    /// The socket for participant `id`'s packets from now on; the lane keeps it until it
    /// holds the last reference (the participant is gone).
    Target { id: u64, target: Arc<SendTarget> },
    Packet {
        id: u64,
        to: SocketAddr,
        /// The tick that produced it started here.
        tick: Instant,
        queued: Instant,
        len: usize,
    },
}

/// The worker's end of its sender threads: sends are network I/O, so they leave the tick
/// (a `sendto` on loopback costs microseconds, a thousand listeners milliseconds) and run
/// beside the tick on the other cores. A worker has one sender thread (a **lane**) per
/// core: one thread's sends alone would take a large room's tick longer than the room's
/// mixing does. A participant always goes through the same lane (by its id), so its
/// packets leave in order. A lane is woken when [`FLUSH_EVERY`] packets wait for it and
/// at the end of each room, so a large room's first packets leave while the rest are
/// built. The queues are allocated once; a full queue drops and counts, never blocks.
struct SendQueue {
    /// The worker's index: a participant's target is handed over again after it moved
    /// from another worker.
    worker: usize,
    lanes: Vec<Lane>,
    metrics: Arc<Metrics>,
}

/// One sender thread and the two queues that feed it (moving in step).
struct Lane {
    meta: HeapProd<Outgoing>,
    bytes: HeapProd<u8>,
    thread: std::thread::Thread,
    /// Packets queued since the thread was last woken.
    unflushed: usize,
}

/// Packets per batch: an unpark is a futex call when the sender sleeps, so not one per
/// packet.
const FLUSH_EVERY: usize = 32;

/// How often a lane lets go of the targets of participants who are gone (a few
/// microseconds for a thousand): until then the socket, and its port, stays open.
const TARGET_SWEEP: Duration = Duration::from_millis(100);

/// A sender thread's own tally, added to the shared [`Metrics`] when its queue is drained:
/// two lanes adding every packet to the same histogram buckets would move those cache
/// lines between the cores with every datagram.
struct LaneTally {
    send_wait: LocalHistogram,
    send: LocalHistogram,
    tick_to_sent: LocalHistogram,
    sent: u64,
    would_block: u64,
    errors: u64,
}

impl LaneTally {
    fn new() -> Self {
        LaneTally {
            send_wait: LocalHistogram::new(LATENCY_BOUNDS_US),
            send: LocalHistogram::new(LATENCY_BOUNDS_US),
            tick_to_sent: LocalHistogram::new(LATENCY_BOUNDS_US),
            sent: 0,
            would_block: 0,
            errors: 0,
        }
    }

    fn flush(&mut self, m: &Metrics) {
        self.send_wait.flush_into(&m.send_wait);
        self.send.flush_into(&m.send);
        self.tick_to_sent.flush_into(&m.tick_to_sent);
        for (n, counter) in [
            (&mut self.sent, &m.datagrams_sent),
            (&mut self.would_block, &m.drop_send_would_block),
            (&mut self.errors, &m.drop_send_error),
        ] {
            if *n > 0 {
                counter.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
    }
}

/// One lane: sends what its worker queues, in order.
fn run_lane(
    mut meta: HeapCons<Outgoing>,
    mut bytes: HeapCons<u8>,
    metrics: &Metrics,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // With whether the participant had left at the last sweep.
    let mut targets: HashMap<u64, (Arc<SendTarget>, bool)> = HashMap::new();
    let mut tally = LaneTally::new();
    let mut swept = Instant::now();
    loop {
        // When the previous send ended: a lane working through its queue reads the clock
        // once per packet.
        let mut last: Option<Instant> = None;
        while let Some(o) = meta.try_pop() {
            let (id, to, tick, queued, len) = match o {
                Outgoing::Target { id, target } => {
                    targets.insert(id, (target, false));
                    continue;
                }
                Outgoing::Packet {
                    id,
                    to,
                    tick,
                    queued,
                    len,
                } => (id, to, tick, queued, len),
            };
            // The producer pushed the bytes before their header.
            let n = bytes.pop_slice(&mut buf[..len.min(MAX_DATAGRAM)]);
            let t = last.unwrap_or_else(Instant::now);
            tally.send_wait.record(t.saturating_duration_since(queued));
            let Some((target, _)) = targets.get(&id) else {
                // The worker hands the target over before the first packet.
                tally.errors += 1;
                continue;
            };
            match target.socket.send_to(&buf[..n], to) {
                Ok(_) => {
                    target.counters.sent.fetch_add(1, Ordering::Relaxed);
                    tally.sent += 1;
                }
                Err(e) => {
                    target.counters.send_dropped.fetch_add(1, Ordering::Relaxed);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        tally.would_block += 1;
                    } else {
                        tally.errors += 1;
                    }
                }
            }
            let sent = Instant::now();
            last = Some(sent);
            tally.send.record(sent.saturating_duration_since(t));
            tally
                .tick_to_sent
                .record(sent.saturating_duration_since(tick));
        }
        tally.flush(metrics);
        if stop.load(Ordering::Acquire) && meta.is_empty() {
            break;
        }
        if swept.elapsed() >= TARGET_SWEEP {
            // In two steps: packets the worker queued before the participant left (its
            // BYE) are visible once `left` is, and are sent before the next sweep.
            targets.retain(|_, (_, gone)| !*gone);
            for (t, gone) in targets.values_mut() {
                *gone = t.left.load(Ordering::Acquire);
            }
            swept = Instant::now();
        }
        // The worker unparks after each batch; the timeout is a safety net.
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

impl SendQueue {
    /// Starts `lanes` sender threads for worker `index`; each ends once `stop` is set and
    /// its queue is empty.
    fn start(
        index: usize,
        lanes: usize,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        priority: u8,
    ) -> io::Result<(SendQueue, Vec<std::thread::JoinHandle<()>>)> {
        let mut out = SendQueue {
            worker: index,
            lanes: Vec::new(),
            metrics: metrics.clone(),
        };
        let mut handles = Vec::new();
        for lane in 0..lanes.max(1) {
            let (meta, meta_rx) = HeapRb::<Outgoing>::new(SEND_QUEUE_LEN).split();
            let (bytes, bytes_rx) = HeapRb::<u8>::new(SEND_QUEUE_BYTES).split();
            let m = metrics.clone();
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("confer-send-{index}.{lane}"))
                .spawn(move || {
                    realtime(priority);
                    run_lane(meta_rx, bytes_rx, &m, &stop);
                })?;
            out.lanes.push(Lane {
                meta,
                bytes,
                thread: handle.thread().clone(),
                unflushed: 0,
            });
            handles.push(handle);
        }
        Ok((out, handles))
    }

    fn push(&mut self, m: &mut Member, packet: &[u8], tick: Instant) {
        let len = packet.len().min(MAX_DATAGRAM);
        // `start` made at least one lane; the remainder fits a usize.
        let n = self.lanes.len() as u64;
        let lane = &mut self.lanes[(m.id % n) as usize];
        let handover = m.send_lanes_of != Some(self.worker);
        if lane.meta.vacant_len() < 1 + usize::from(handover) || lane.bytes.vacant_len() < len {
            m.send.counters.send_dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .drop_send_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Cannot fail: checked above, and only this thread pushes.
        if handover {
            let _ = lane.meta.try_push(Outgoing::Target {
                id: m.id,
                target: m.send.clone(),
            });
            m.send_lanes_of = Some(self.worker);
        }
        lane.bytes.push_slice(&packet[..len]);
        let _ = lane.meta.try_push(Outgoing::Packet {
            id: m.id,
            to: m.spec.rtp_address,
            tick,
            queued: Instant::now(),
            len,
        });
        lane.unflushed += 1;
        if lane.unflushed >= FLUSH_EVERY {
            lane.unflushed = 0;
            lane.thread.unpark();
        }
    }

    /// Wakes the lanes that have packets queued since they were last woken.
    fn flush_pending(&mut self) {
        for lane in self.lanes.iter_mut().filter(|l| l.unflushed > 0) {
            lane.unflushed = 0;
            lane.thread.unpark();
        }
    }

    /// Wakes every lane (at shutdown, so that each sees `stop`).
    fn wake_all(&mut self) {
        for lane in &mut self.lanes {
            lane.unflushed = 0;
            lane.thread.unpark();
        }
    }
}

/// When worker `index` of `workers` ticks first: one frame after `epoch`, the workers
/// spread over the frame. Workers ticking at the same instants would hold the cores
/// together (and hold back each other's sender threads, which run at their priority)
/// while the cores idle for the rest of the frame.
fn first_tick(epoch: Instant, frame: Duration, index: usize, workers: usize) -> Instant {
    let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    let index = u32::try_from(index).unwrap_or(0).min(workers - 1);
    epoch + frame + frame * index / workers
}

/// Puts the calling thread on `SCHED_FIFO` at `priority` (0: leaves it alone), as audio
/// servers do: a worker sleeps between ticks and runs a few ms per frame, and on a busy
/// machine the normal scheduler lets other threads delay its tick by several ms (the
/// tail of the tick time). The kernel's real-time throttling still keeps 5% of each
/// second for everything else. Without the permission the thread stays as it is.
fn realtime(priority: u8) {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    if priority == 0 {
        return;
    }
    static REFUSED: std::sync::Once = std::sync::Once::new();
    let result = ThreadPriorityValue::try_from(priority)
        .map_err(|e| format!("priority {priority}: {e}"))
        .and_then(|value| {
            set_thread_priority_and_policy(
                thread_native_id(),
                ThreadPriority::Crossplatform(value),
                ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
            )
            .map_err(|e| format!("{e:?}"))
        });
    if let Err(e) = result {
        REFUSED.call_once(|| {
            tracing::warn!(
                "media threads run at normal priority: real-time priority {priority} was \
                 refused ({e}); grant CAP_SYS_NICE or set realtime_priority = 0"
            );
        });
    }
}

impl Worker {
    // The shell reads the clock: tick times and command times.
    fn run(&mut self, commands: &Receiver<Command>, stop: &AtomicBool) {
        let mut next = self.first_tick;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now < next {
                // Commands until the tick is due (at most 50 ms, to see `stop`).
                match commands.recv_timeout((next - now).min(Duration::from_millis(50))) {
                    Ok(cmd) => self.command(cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                continue;
            }
            if now > next + self.frame {
                // Over a frame late: count it and take up the clock from here, rather than
                // bursting ticks.
                self.metrics.tick_overruns.fetch_add(1, Ordering::Relaxed);
                next = now;
            }
            let worked = self.tick(now);
            let took = Instant::now().saturating_duration_since(now);
            if worked {
                // A worker with nothing to mix would only dilute the distribution.
                self.metrics.tick_duration.record(took);
            }
            self.metrics.ticks.fetch_add(1, Ordering::Relaxed);
            if took > self.frame {
                self.metrics.tick_overruns.fetch_add(1, Ordering::Relaxed);
            }
            next += self.frame;
            // A worker that runs behind still answers commands every tick: 64 a tick is
            // 3200 a second, a join and a leave for each of 1600 calls a second.
            for _ in 0..COMMANDS_PER_LATE_TICK {
                match commands.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        let ids: Vec<u64> = self.rooms.keys().copied().collect();
        for id in ids {
            // The host joins the recordings' writers after the workers.
            self.delete_room(id, now, RecDone::Nobody);
        }
    }

    /// Ticks every room; true when one had work (participants or a recording).
    fn tick(&mut self, now: Instant) -> bool {
        let metrics = &*self.metrics;
        let out = &mut self.out;
        let mut worked = false;
        for (&room_id, entry) in &mut self.rooms {
            let RoomEntry { room, members, .. } = entry;
            if members.is_empty() && !room.is_recording() {
                continue;
            }
            worked = true;
            let started = Instant::now();
            for (&pid, m) in members.iter_mut() {
                while let Some(d) = m.rx.try_pop() {
                    metrics
                        .receive_wait
                        .record(now.saturating_duration_since(d.arrival));
                    if room
                        .handle_datagram(pid, &d.bytes[..d.len], d.arrival)
                        .is_err()
                    {
                        metrics.drop_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let mixing = Instant::now();
            metrics.room_receive.record(mixing - started);
            // The room times its stages with the clock given here (idempotent).
            room.set_stage_clock(Some(Instant::now as fn() -> Instant));
            room.tick(now, &mut |pid, packet| {
                if let Some(m) = members.get_mut(&pid) {
                    out.push(m, packet, now);
                }
            });
            // This room's packets start leaving while the worker ticks the next room.
            out.flush_pending();
            let stages = room.last_tick_stages();
            // Without its send stage (packetizing and queueing), which the room timed.
            metrics
                .room_mix
                .record(mixing.elapsed().saturating_sub(stages.send));
            metrics.room_stages.record(&stages);
            metrics
                .frames_decoded
                .fetch_add(u64::from(stages.frames_decoded), Ordering::Relaxed);
            metrics
                .frames_skipped
                .fetch_add(u64::from(stages.frames_skipped), Ordering::Relaxed);
            for (_, delay) in room.mixed_jitter_delays() {
                metrics.jitter_buffer_delay.record(delay);
            }
            publish(room_id, entry, &self.events, &self.metrics.signals_dropped);
        }
        worked
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::CreateRoom { id, spec, reply } => {
                let _ = reply.send(self.create_room(id, spec, now));
            }
            Command::DeleteRoom { id, reply } => {
                if self.rooms.contains_key(&id) {
                    // Answered by the recording's writer once its files are complete.
                    self.delete_room(id, now, RecDone::Deleted(reply));
                } else {
                    let _ = reply.send(Err(HostError::UnknownRoom(id)));
                }
            }
            Command::GetRoom { id, reply } => {
                let r = self
                    .rooms
                    .get(&id)
                    .map(|e| room_info(self.index, id, e))
                    .ok_or(HostError::UnknownRoom(id));
                let _ = reply.send(r);
            }
            Command::ListRooms { reply } => {
                let all = self
                    .rooms
                    .iter()
                    .filter(|(_, e)| !e.internal)
                    .map(|(&id, e)| room_info(self.index, id, e))
                    .collect();
                let _ = reply.send(Ok(all));
            }
            Command::SetLocked { id, locked, reply } => {
                let r = match self.rooms.get_mut(&id) {
                    Some(e) => {
                        if locked {
                            e.room.lock(now);
                        } else {
                            e.room.unlock(now);
                        }
                        publish(id, e, &self.events, &self.metrics.signals_dropped);
                        Ok(room_info(self.index, id, e))
                    }
                    None => Err(HostError::UnknownRoom(id)),
                };
                let _ = reply.send(r);
            }
            Command::Join {
                room,
                member,
                reply,
            } => {
                let _ = reply.send(self.join(room, *member, now));
            }
            Command::Leave {
                room,
                participant,
                reply,
            } => {
                let _ = reply.send(self.leave(room, participant, now));
            }
            Command::Update {
                room,
                participant,
                update,
                reply,
            } => {
                let _ = reply.send(self.update(room, participant, update, now));
            }
            Command::GetParticipant {
                room,
                participant,
                reply,
            } => {
                let r = self
                    .member(room, participant)
                    .and_then(|(e, pid)| participant_info(room, e, pid));
                let _ = reply.send(r);
            }
            Command::StartRecording {
                room,
                tracks,
                unix_ms,
                reply,
            } => {
                let _ = reply.send(self.start_recording(room, tracks, unix_ms));
            }
            Command::PlayTo {
                room,
                participant,
                clip,
                number,
                reply,
            } => {
                let r = self.with_participant(room, participant, |r, pid| r.play_to(pid, clip));
                if r.is_ok()
                    && let Ok(m) = self.member_mut(room, participant)
                {
                    m.play_number = number;
                }
                let _ = reply.send(r);
            }
            Command::StopPlayback {
                room,
                participant,
                reply,
            } => {
                let r = self.with_participant(room, participant, |r, pid| r.stop_playback(pid));
                let _ = reply.send(r);
            }
            Command::SetRemote {
                room,
                participant,
                remote,
                reply,
            } => {
                let r = self.member_mut(room, participant).map(|m| {
                    m.spec.rtp_address = remote;
                    m.peer.send_replace(remote);
                });
                let _ = reply.send(r);
            }
            Command::Announce { room, clip, reply } => {
                let r = match self.rooms.get_mut(&room) {
                    Some(e) => e.room.announce(clip).map_err(HostError::from),
                    None => Err(HostError::UnknownRoom(room)),
                };
                let _ = reply.send(r);
            }
            Command::Detach {
                room,
                participant,
                reply,
            } => {
                let _ = reply.send(self.detach(room, participant, now));
            }
            Command::Adopt {
                room,
                moving,
                spec,
                reply,
            } => {
                let _ = reply.send(self.adopt(room, *moving, spec, now));
            }
            Command::StopRecording { room, reply } => match self.rooms.get_mut(&room) {
                // The writer answers once the files are complete.
                Some(e) => match finish_recording(&mut e.room, RecDone::Files(reply)) {
                    Ok(()) => announce_recording_stopped(room, e, "stopped", &self.events),
                    Err(RecDone::Files(reply)) => {
                        let _ = reply.send(Err(HostError::NotRecording(room)));
                    }
                    Err(_) => {}
                },
                None => {
                    let _ = reply.send(Err(HostError::UnknownRoom(room)));
                }
            },
        }
    }

    fn start_recording(
        &mut self,
        room: u64,
        tracks: bool,
        unix_ms: u64,
    ) -> Result<Vec<RecordingFile>, HostError> {
        let e = self
            .rooms
            .get_mut(&room)
            .ok_or(HostError::UnknownRoom(room))?;
        if e.room.is_recording() {
            return Err(HostError::Room(RoomError::AlreadyRecording));
        }
        let io_err = |e: io::Error| HostError::RecordingIo(e.to_string());
        let prefix = format!("room-{room}-{unix_ms}");
        // Distinct streams per file; the serial only has to differ between chained streams.
        let serial = (unix_ms as u32) ^ (room as u32).rotate_left(16);
        let dir = &self.recordings_dir;
        let mix = TrackFile::create(dir, &prefix, "mix".into(), serial).map_err(io_err)?;
        let mut files = Vec::new();
        let mut track_serial = serial;
        if tracks {
            let mut members: Vec<(ParticipantId, u64)> =
                e.members.iter().map(|(&pid, m)| (pid, m.id)).collect();
            members.sort_unstable_by_key(|&(_, id)| id);
            for (pid, id) in members {
                track_serial = track_serial.wrapping_add(1);
                let t = TrackFile::create(dir, &prefix, format!("p{id}"), track_serial)
                    .map_err(io_err)?;
                files.push((pid, t));
            }
        }
        let plan = RecordingPlan {
            dir: dir.clone(),
            prefix,
            serial: track_serial,
            tracks_on: tracks,
            frame_ms: self.frame_ms,
        };
        let (sink, handle) =
            FileSink::start(plan, mix, files, self.metrics.clone()).map_err(io_err)?;
        {
            let mut writers = lock(&self.writers);
            writers.retain(|w| !w.is_finished());
            writers.push(handle);
        }
        let files = sink.files();
        // Refused only while recording, checked above; a refused sink stops its writer.
        e.room.start_recording(Box::new(sink), tracks)?;
        // The API journals the start (with its files and requester); the stop is ours.
        e.recording = Some(unix_ms);
        Ok(files)
    }

    fn create_room(
        &mut self,
        id: u64,
        spec: RoomSpec,
        now: Instant,
    ) -> Result<RoomInfo, HostError> {
        let mut config = RoomConfig {
            frame_ms: self.frame_ms,
            wait_for_moderator: spec.wait_for_moderator,
            ..RoomConfig::default()
        };
        if let Some(n) = spec.max_participants {
            config.max_participants = n;
        }
        let room = Room::new(config, now)?;
        let mut entry = RoomEntry {
            room,
            name: spec.name,
            internal: spec.internal,
            announce_joins: spec.announce_joins,
            members: HashMap::new(),
            by_api: HashMap::new(),
            recording: None,
        };
        publish(id, &mut entry, &self.events, &self.metrics.signals_dropped);
        let info = room_info(self.index, id, &entry);
        if !entry.internal {
            self.metrics.rooms.fetch_add(1, Ordering::Relaxed);
        }
        self.rooms.insert(id, entry);
        Ok(info)
    }

    /// Ends room `id`; `done` is told once its recording's files are complete (at once
    /// when it was not recording).
    fn delete_room(&mut self, id: u64, now: Instant, done: RecDone) {
        let Some(mut entry) = self.rooms.remove(&id) else {
            return;
        };
        for (pid, mut leg) in entry.room.end(now) {
            if let Some(m) = entry.members.get_mut(&pid) {
                bye(&mut leg, m, &mut self.out, &mut self.tx_buf, now);
            }
        }
        announce_recording_stopped(id, &mut entry, "room_ended", &self.events);
        publish(id, &mut entry, &self.events, &self.metrics.signals_dropped);
        self.metrics
            .participants
            .fetch_sub(entry.members.len() as u64, Ordering::Relaxed);
        if !entry.internal {
            self.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
        }
        // Last, so that the answer (from the recording's writer) comes after all the above.
        match finish_recording(&mut entry.room, done) {
            Ok(()) => tracing::info!(room = id, "recording stopped with the room"),
            Err(RecDone::Deleted(reply)) => {
                let _ = reply.send(Ok(()));
            }
            Err(_) => {}
        }
    }

    fn join(
        &mut self,
        room: u64,
        n: NewMember,
        now: Instant,
    ) -> Result<ParticipantInfo, HostError> {
        let spec = MoveSpec {
            muted: n.spec.muted,
            deaf: n.spec.deaf,
            inband_dtmf: n.inband_dtmf,
        };
        let member = Member {
            id: n.id,
            spec: n.spec,
            send: n.send,
            send_lanes_of: None,
            local: n.local,
            rx: n.rx,
            task: n.task,
            signals: n.signals,
            inband_dtmf: n.inband_dtmf,
            peer: n.peer,
            play_number: 0,
            identity: n.identity,
        };
        self.adopt(room, Moving { member, leg: n.leg }, spec, now)
            .map_err(|(e, _)| e)
    }

    /// Joins a participant's leg to `room` (a new one, or one moved from another room);
    /// a refusal gives it back.
    fn adopt(
        &mut self,
        room: u64,
        moving: Moving,
        spec: MoveSpec,
        now: Instant,
    ) -> Result<ParticipantInfo, (HostError, Option<Box<Moving>>)> {
        let Some(entry) = self.rooms.get_mut(&room) else {
            return Err((HostError::UnknownRoom(room), Some(Box::new(moving))));
        };
        // Checked before the join, which would drop the leg with its refusal.
        let refusal = if entry.room.is_locked() {
            Some(RoomError::Locked)
        } else if entry.room.len() >= entry.room.config().max_participants {
            Some(RoomError::Full(entry.room.len()))
        } else {
            None
        };
        if let Some(e) = refusal {
            return Err((e.into(), Some(Box::new(moving))));
        }
        let Moving { mut member, leg } = moving;
        member.spec.muted = spec.muted;
        member.spec.deaf = spec.deaf;
        member.inband_dtmf = spec.inband_dtmf;
        let mut pc = ParticipantConfig::new(leg);
        pc.muted = spec.muted;
        pc.deaf = spec.deaf;
        pc.moderator = member.spec.moderator;
        pc.inband_dtmf = spec.inband_dtmf;
        let pid = entry.room.join(pc, now).map_err(|e| (e.into(), None))?;
        let id = member.id;
        entry.by_api.insert(id, pid);
        if let Some(sink) = entry
            .room
            .record_sink_mut()
            .and_then(|s| s.downcast_mut::<FileSink>())
            && sink.tracks_on
            && let Err(e) = sink.add_track(pid, id)
        {
            tracing::warn!(room, participant = id, "no recording track: {e}");
            self.metrics
                .recording_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        entry.members.insert(pid, member);
        self.metrics.participants.fetch_add(1, Ordering::Relaxed);
        publish(room, entry, &self.events, &self.metrics.signals_dropped);
        participant_info(room, entry, pid).map_err(|e| (e, None))
    }

    fn member(
        &self,
        room: u64,
        participant: u64,
    ) -> Result<(&RoomEntry, ParticipantId), HostError> {
        let e = self.rooms.get(&room).ok_or(HostError::UnknownRoom(room))?;
        let pid = e
            .by_api
            .get(&participant)
            .copied()
            .ok_or(HostError::UnknownParticipant { room, participant })?;
        Ok((e, pid))
    }

    fn leave(&mut self, room: u64, participant: u64, now: Instant) -> Result<(), HostError> {
        if let (Some(mut m), Ok(mut leg)) = self.take_out(room, participant, true, now)? {
            bye(&mut leg, &mut m, &mut self.out, &mut self.tx_buf, now);
        }
        Ok(())
    }

    /// Takes a participant out of its room (kicked, or left to move elsewhere): its member
    /// and leg, for a BYE or another room.
    fn take_out(
        &mut self,
        room: u64,
        participant: u64,
        kicked: bool,
        now: Instant,
    ) -> Result<(Option<Member>, Result<MediaLeg, RoomError>), HostError> {
        let e = self
            .rooms
            .get_mut(&room)
            .ok_or(HostError::UnknownRoom(room))?;
        let pid = e
            .by_api
            .remove(&participant)
            .ok_or(HostError::UnknownParticipant { room, participant })?;
        let leg = if kicked {
            e.room.kick(pid, now)
        } else {
            e.room.leave(pid, now)
        };
        // Its recorded track ends here (a rejoin is a new participant with a new track).
        if let Some(sink) = e
            .room
            .record_sink_mut()
            .and_then(|s| s.downcast_mut::<FileSink>())
        {
            sink.close_track(pid);
        }
        // Published while the member is still known, so the event names it.
        publish(room, e, &self.events, &self.metrics.signals_dropped);
        let member = e.members.remove(&pid);
        if member.is_some() {
            self.metrics.participants.fetch_sub(1, Ordering::Relaxed);
        }
        Ok((member, leg))
    }

    fn detach(
        &mut self,
        room: u64,
        participant: u64,
        now: Instant,
    ) -> Result<Box<Moving>, HostError> {
        match self.take_out(room, participant, false, now)? {
            (Some(member), Ok(leg)) => Ok(Box::new(Moving { member, leg })),
            (_, Err(e)) => Err(e.into()),
            (None, Ok(_)) => Err(HostError::UnknownParticipant { room, participant }),
        }
    }

    fn member_mut(&mut self, room: u64, participant: u64) -> Result<&mut Member, HostError> {
        let e = self
            .rooms
            .get_mut(&room)
            .ok_or(HostError::UnknownRoom(room))?;
        e.by_api
            .get(&participant)
            .and_then(|pid| e.members.get_mut(pid))
            .ok_or(HostError::UnknownParticipant { room, participant })
    }

    /// Runs `f` on a participant's room and its room id; publishes what it caused.
    fn with_participant<T>(
        &mut self,
        room: u64,
        participant: u64,
        f: impl FnOnce(&mut Room, ParticipantId) -> Result<T, RoomError>,
    ) -> Result<T, HostError> {
        let e = self
            .rooms
            .get_mut(&room)
            .ok_or(HostError::UnknownRoom(room))?;
        let pid = e
            .by_api
            .get(&participant)
            .copied()
            .ok_or(HostError::UnknownParticipant { room, participant })?;
        let r = f(&mut e.room, pid)?;
        publish(room, e, &self.events, &self.metrics.signals_dropped);
        Ok(r)
    }

    fn update(
        &mut self,
        room: u64,
        participant: u64,
        u: ParticipantUpdate,
        now: Instant,
    ) -> Result<ParticipantInfo, HostError> {
        let e = self
            .rooms
            .get_mut(&room)
            .ok_or(HostError::UnknownRoom(room))?;
        let pid = e
            .by_api
            .get(&participant)
            .copied()
            .ok_or(HostError::UnknownParticipant { room, participant })?;
        // Check every gain before applying anything, so a refused request changes nothing.
        for db in [u.input_gain_db, u.output_gain_db].into_iter().flatten() {
            if !confer_conference::room::GAIN_DB_RANGE.contains(&db) {
                return Err(RoomError::GainOutOfRange(db).into());
            }
        }
        if let Some(db) = u.input_gain_db {
            e.room.set_input_gain_db(pid, db)?;
        }
        if let Some(db) = u.output_gain_db {
            e.room.set_output_gain_db(pid, db)?;
        }
        if let Some(m) = u.muted {
            e.room.set_muted(pid, m, now)?;
        }
        if let Some(d) = u.deaf {
            e.room.set_deaf(pid, d, now)?;
        }
        publish(room, e, &self.events, &self.metrics.signals_dropped);
        participant_info(room, e, pid)
    }
}

fn room_info(worker: usize, id: u64, e: &RoomEntry) -> RoomInfo {
    let s = e.room.stats();
    let mut participant_ids: Vec<u64> = e.by_api.keys().copied().collect();
    participant_ids.sort_unstable();
    RoomInfo {
        id,
        name: e.name.clone(),
        worker,
        participants: e.room.len(),
        max_participants: e.room.config().max_participants,
        locked: e.room.is_locked(),
        waiting_for_moderator: e.room.waiting_for_moderator(),
        announce_joins: e.announce_joins,
        ticks: s.ticks,
        speakers: s.speakers,
        encoder_groups: s.encoder_groups,
        encoder_calls_total: s.encoder_calls_total,
        packets_sent: s.packets_sent,
        send_errors: s.send_errors,
        participant_ids,
    }
}

fn bye(leg: &mut MediaLeg, m: &mut Member, out: &mut SendQueue, buf: &mut [u8], now: Instant) {
    if let Ok(n) = leg.write_bye(now, buf) {
        out.push(m, &buf[..n], now);
        out.flush_pending();
    }
}

fn participant_info(
    room: u64,
    e: &RoomEntry,
    pid: ParticipantId,
) -> Result<ParticipantInfo, HostError> {
    let m = e
        .members
        .get(&pid)
        .ok_or(RoomError::UnknownParticipant(pid))?;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(ParticipantInfo {
        id: m.id,
        room,
        rtp_address: m.spec.rtp_address,
        local_rtp_address: m.local,
        codec: codec_name(m.spec.codec),
        payload_type: u8::from(m.spec.codec.payload_type()),
        datagrams_received: get(&m.send.counters.received),
        datagrams_foreign: get(&m.send.counters.foreign),
        datagrams_queue_full: get(&m.send.counters.queue_full),
        datagrams_sent: get(&m.send.counters.sent),
        datagrams_send_dropped: get(&m.send.counters.send_dropped),
        stats: e
            .room
            .participant_stats(pid)
            .ok()
            .map(|s| StatsJson::from(&s)),
    })
}

/// The API name of a codec.
pub fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::Opus(_) => "opus",
        Codec::Pcmu => "pcmu",
        Codec::Pcma => "pcma",
    }
}

/// Drains the room's events to the journal's tap.
fn publish(room_id: u64, e: &mut RoomEntry, events: &Events, signals_dropped: &AtomicU64) {
    let api = |pid: ParticipantId| e.members.get(&pid).map(|m| m.id);
    let mut pending = [None; 16];
    loop {
        // Events are collected a few at a time so `api` can borrow the members.
        let mut n = 0;
        while n < pending.len() {
            match e.room.poll_event() {
                Some(ev) => {
                    pending[n] = Some(ev);
                    n += 1;
                }
                None => break,
            }
        }
        if n == 0 {
            break;
        }
        for ev in pending[..n].iter().flatten() {
            let (kind, pid, reason) = match ev.kind {
                RoomEventKind::Created => ("created", None, None),
                RoomEventKind::Ended => ("ended", None, None),
                RoomEventKind::Joined { id, moderator } => {
                    ("joined", Some(id), moderator.then_some("moderator"))
                }
                RoomEventKind::Left { id, reason } => (
                    "left",
                    Some(id),
                    Some(match reason {
                        LeaveReason::Left => "left",
                        LeaveReason::Kicked => "kicked",
                        LeaveReason::RoomEnded => "room_ended",
                    }),
                ),
                RoomEventKind::StartedTalking(id) => ("started_talking", Some(id), None),
                RoomEventKind::StoppedTalking(id) => ("stopped_talking", Some(id), None),
                RoomEventKind::Muted(id) => ("muted", Some(id), None),
                RoomEventKind::Unmuted(id) => ("unmuted", Some(id), None),
                RoomEventKind::Deafened(id) => ("deafened", Some(id), None),
                RoomEventKind::Undeafened(id) => ("undeafened", Some(id), None),
                RoomEventKind::Locked => ("locked", None, None),
                RoomEventKind::Unlocked => ("unlocked", None, None),
                RoomEventKind::Digit { id, .. } => ("digit", Some(id), None),
                RoomEventKind::PlaybackFinished(id) => ("playback_finished", Some(id), None),
            };
            let signal = match ev.kind {
                RoomEventKind::Digit { id, digit } => Some((id, Signal::Key(digit))),
                RoomEventKind::PlaybackFinished(id) => e
                    .members
                    .get(&id)
                    .map(|m| (id, Signal::PlaybackFinished(m.play_number))),
                _ => None,
            };
            if let Some((id, signal)) = signal
                && let Some(to) = e.members.get(&id).and_then(|m| m.signals.as_ref())
                && to.try_send(signal).is_err()
            {
                signals_dropped.fetch_add(1, Ordering::Relaxed);
            }
            if e.internal {
                continue;
            }
            let digit = match ev.kind {
                RoomEventKind::Digit { digit, .. } => Some(digit.to_char()),
                _ => None,
            };
            let msg = EventMsg {
                room: room_id,
                kind,
                participant: pid.and_then(api),
                reason,
                digit,
                call: None,
                status: None,
                recording: None,
                identity: match ev.kind {
                    RoomEventKind::Joined { id, .. } | RoomEventKind::Left { id, .. } => {
                        e.members.get(&id).and_then(|m| m.identity.clone())
                    }
                    _ => None,
                },
                media_time_ms: Some(ev.media_time.as_secs_f64() * 1000.0),
            };
            events.send(msg);
        }
    }
}

/// Publishes `recording_stopped` (with `reason`) for room `room`'s running recording,
/// if any, and forgets it. The API publishes the start (with its files and requester).
fn announce_recording_stopped(room: u64, e: &mut RoomEntry, reason: &'static str, events: &Events) {
    let Some(started_unix_ms) = e.recording.take() else {
        return;
    };
    if e.internal {
        return;
    }
    events.send(EventMsg {
        room,
        kind: "recording_stopped",
        participant: None,
        reason: Some(reason),
        digit: None,
        call: None,
        status: None,
        recording: Some(started_unix_ms),
        identity: None,
        media_time_ms: None,
    });
}

/// Where events go: the journal's tap (unbounded: the journal must see every event;
/// the event stream, webhooks and the archive follow the journal).
#[derive(Clone)]
struct Events {
    tap: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<EventMsg>>>,
}

impl Events {
    fn send(&self, msg: EventMsg) {
        // No tap (a host without a journal, in tests) is not an error: no audience.
        if let Some(tap) = self.tap.get() {
            let _ = tap.send(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(min: u16, max: u16) -> Host {
        Host::start(&HostConfig {
            workers: 1,
            realtime_priority: 0,
            send_lanes: 1,
            frame_ms: 20,
            media_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            rtp_port_min: min,
            rtp_port_max: max,
            recordings_dir: std::env::temp_dir().join("confer-host-unit-recordings"),
        })
        .expect("workers start")
    }

    #[test]
    fn recording_file_names_parse_back_and_other_files_are_ignored() {
        assert_eq!(
            parse_recording_name("room-12-1700000000123-p7.opus"),
            Some((12, 1_700_000_000_123, "p7".to_owned()))
        );
        assert_eq!(
            parse_recording_name("room-3-5-mix.opus"),
            Some((3, 5, "mix".to_owned()))
        );
        for other in [
            "room-x-5-mix.opus",
            "room-3-mix.opus",
            "notes.txt",
            "room-3-5-mix.wav",
        ] {
            assert_eq!(parse_recording_name(other), None, "{other}");
        }
    }

    /// Three ports nobody else holds right now (the OS hands out ephemeral ports at
    /// random; three consecutive ones are taken from a probe and checked).
    fn free_range() -> u16 {
        for base in (39_000..39_900).step_by(3) {
            let all: Vec<_> = (base..base + 3)
                .filter_map(|p| StdUdpSocket::bind(("127.0.0.1", p)).ok())
                .collect();
            if all.len() == 3 {
                return base;
            }
        }
        panic!("no three free ports in 39000..39900");
    }

    #[test]
    fn ports_rotate_through_the_range_and_exhaustion_is_a_typed_error() {
        let base = free_range();
        let h = host(base, base + 2);
        let a = h.bind_rtp_socket().expect("first port");
        let b = h.bind_rtp_socket().expect("second port");
        let c = h.bind_rtp_socket().expect("third port");
        let ports: Vec<u16> = [&a, &b, &c]
            .iter()
            .map(|s| s.local_addr().expect("bound").port())
            .collect();
        assert_eq!(ports, vec![base, base + 1, base + 2]);
        match h.bind_rtp_socket() {
            Err(HostError::PortsExhausted { min, max, .. }) => {
                assert_eq!((min, max), (base, base + 2));
            }
            other => panic!("expected exhaustion, got {other:?}"),
        }
        // A released port is handed out again once the cursor comes round to it.
        drop(b);
        let again = h.bind_rtp_socket().expect("the released port");
        assert_eq!(again.local_addr().expect("bound").port(), base + 1);
        h.stop();
    }

    /// The first datagram that reaches `peer` from `from` within 2 s.
    fn datagram_from(peer: &StdUdpSocket, from: SocketAddr) -> bool {
        let mut buf = [0u8; 2048];
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok((_, src)) = peer.recv_from(&mut buf)
                && src == from
            {
                return true;
            }
        }
        false
    }

    #[test]
    fn a_participant_is_sent_to_by_each_worker_it_joins_and_its_port_is_freed_after_it_leaves() {
        let base = free_range();
        let h = Host::start(&HostConfig {
            workers: 2,
            realtime_priority: 0,
            send_lanes: 2,
            frame_ms: 20,
            media_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            rtp_port_min: base,
            rtp_port_max: base + 2,
            recordings_dir: std::env::temp_dir().join("confer-host-unit-recordings"),
        })
        .expect("workers start");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let peer = StdUdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let spec = JoinSpec {
            rtp_address: peer.local_addr().expect("bound"),
            codec: Codec::Pcmu,
            audio_level_extension: None,
            denoise: false,
            muted: false,
            deaf: false,
            moderator: false,
        };
        rt.block_on(async {
            let a = h.create_room(RoomSpec::default()).await.expect("room a");
            let b = h.create_room(RoomSpec::default()).await.expect("room b");
            assert_ne!(a.worker, b.worker, "a new room goes to the idle worker");
            let p = h
                .join_with(a.id, spec, JoinOptions::default())
                .await
                .expect("joined");
            let local = p.local_rtp_address;
            assert!(datagram_from(&peer, local), "room a's mix reaches the peer");
            // The other worker's sender threads take over the same socket.
            h.move_participant(a.id, p.id, b.id, MoveSpec::default())
                .await
                .expect("moved");
            // What room a sent before the move has arrived by now; drop it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            peer.set_nonblocking(true).expect("non-blocking");
            while peer.recv_from(&mut [0u8; 2048]).is_ok() {}
            peer.set_nonblocking(false).expect("blocking");
            assert!(datagram_from(&peer, local), "room b's mix reaches the peer");
            h.leave(b.id, p.id).await.expect("left");
            // Once both workers' lanes have let go of it, the port can be bound again.
            let until = Instant::now() + Duration::from_secs(5);
            while StdUdpSocket::bind(local).is_err() {
                assert!(
                    Instant::now() < until,
                    "{local} stays bound after the leave"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        h.stop();
    }

    #[test]
    fn workers_tick_spread_over_the_frame() {
        let epoch = Instant::now();
        let frame = Duration::from_millis(20);
        let offsets = |n: usize| -> Vec<Duration> {
            (0..n)
                .map(|i| first_tick(epoch, frame, i, n) - epoch - frame)
                .collect()
        };
        assert_eq!(offsets(1), [Duration::ZERO]);
        assert_eq!(offsets(2), [Duration::ZERO, Duration::from_millis(10)]);
        let ms = Duration::from_millis;
        assert_eq!(offsets(4), [ms(0), ms(5), ms(10), ms(15)]);
    }

    #[test]
    fn the_histogram_renders_cumulative_prometheus_buckets() {
        let hist = Histogram::new(LATENCY_BOUNDS_US);
        for us in [40, 40, 300, 3_000, 2_000_000] {
            hist.record(Duration::from_micros(us));
        }
        let mut out = String::new();
        hist.render(&mut out, "x", "tick");
        assert!(
            out.contains("x_bucket{stage=\"tick\",le=\"0.00005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{stage=\"tick\",le=\"0.0005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{stage=\"tick\",le=\"0.005\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{stage=\"tick\",le=\"1\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{stage=\"tick\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("x_count{stage=\"tick\"} 5\n"), "{out}");
        assert!(out.contains("x_sum{stage=\"tick\"} 2.00338\n"), "{out}");
    }

    /// The value of `line`'s sample in `out`.
    fn sample(out: &str, line: &str) -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {out}"))
    }

    #[test]
    fn a_scrape_during_observations_agrees_with_itself_and_a_lanes_tally_adds_up() {
        let hist = Arc::new(Histogram::new(LATENCY_BOUNDS_US));
        let stop = Arc::new(AtomicBool::new(false));
        let recorder = {
            let (hist, stop) = (hist.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    hist.record(Duration::from_micros(40));
                }
            })
        };
        for _ in 0..2_000 {
            let mut out = String::new();
            hist.render(&mut out, "x", "send");
            // Nothing above 1 s was recorded: the +Inf bucket and the count say the same.
            let finite = sample(&out, "x_bucket{stage=\"send\",le=\"1\"}");
            assert_eq!(sample(&out, "x_bucket{stage=\"send\",le=\"+Inf\"}"), finite);
            assert_eq!(sample(&out, "x_count{stage=\"send\"}"), finite);
        }
        stop.store(true, Ordering::Relaxed);
        recorder.join().expect("recorder");

        let shared = Histogram::new(LATENCY_BOUNDS_US);
        let mut local = LocalHistogram::new(LATENCY_BOUNDS_US);
        for us in [40, 3_000, 2_000_000] {
            local.record(Duration::from_micros(us));
        }
        assert_eq!(
            shared.count(),
            0,
            "nothing reaches the shared one before a flush"
        );
        local.flush_into(&shared);
        local.flush_into(&shared);
        let mut out = String::new();
        shared.render(&mut out, "x", "send");
        assert_eq!(sample(&out, "x_bucket{stage=\"send\",le=\"0.00005\"}"), 1);
        assert_eq!(sample(&out, "x_bucket{stage=\"send\",le=\"1\"}"), 2);
        assert_eq!(sample(&out, "x_count{stage=\"send\"}"), 3);
        assert!(out.contains("x_sum{stage=\"send\"} 2.00304\n"), "{out}");
    }

    #[test]
    fn room_stages_and_speaker_jitter_delays_render_as_histograms() {
        let m = Metrics::default();
        m.room_stages.record(&StageTimes {
            jitter: Duration::from_micros(900),
            decode: Duration::from_micros(200),
            send: Duration::from_micros(70),
            frames_decoded: 5,
            frames_skipped: 695,
            ..StageTimes::default()
        });
        m.jitter_buffer_delay.record(Duration::from_millis(45));
        let out = m.render();
        let stage = "confer_stage_duration_seconds";
        assert!(
            out.contains(&format!("{stage}_sum{{stage=\"jitter\"}} 0.0009\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "{stage}_bucket{{stage=\"decode\",le=\"0.0002\"}} 1\n"
            )),
            "{out}"
        );
        for s in ["denoise", "vad", "mix", "encode", "record", "room_send"] {
            assert!(
                out.contains(&format!("{stage}_count{{stage=\"{s}\"}} 1\n")),
                "{s}: {out}"
            );
        }
        // The per-datagram send stage is still there, and unrecorded.
        assert!(out.contains(&format!("{stage}_count{{stage=\"send\"}} 0\n")));
        let jb = "confer_jitter_buffer_delay_seconds";
        assert!(out.contains(&format!("# TYPE {jb} histogram\n")), "{out}");
        assert!(
            out.contains(&format!("{jb}_bucket{{le=\"0.04\"}} 0\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{jb}_bucket{{le=\"0.06\"}} 1\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{jb}_sum 0.045\n")), "{out}");
        assert!(out.contains(&format!("{jb}_count 1\n")), "{out}");
    }

    /// A recording output whose writes wait while the test keeps its gate shut, like a
    /// disk that stalls; it keeps what was written.
    #[derive(Clone, Default)]
    struct GatedOut {
        state: Arc<(Mutex<GateState>, std::sync::Condvar)>,
    }

    #[derive(Default)]
    struct GateState {
        shut: bool,
        bytes: Vec<u8>,
    }

    impl GatedOut {
        fn set_shut(&self, shut: bool) {
            lock(&self.state.0).shut = shut;
            self.state.1.notify_all();
        }

        fn bytes(&self) -> Vec<u8> {
            lock(&self.state.0).bytes.clone()
        }
    }

    impl io::Write for GatedOut {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (m, cv) = &*self.state;
            let mut g = lock(m);
            while g.shut {
                g = cv
                    .wait(g)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            g.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The packets of an Ogg stream, whether its last page ends the stream, and that
    /// page's granule position.
    fn ogg_packets(mut data: &[u8]) -> (Vec<Vec<u8>>, bool, u64) {
        let mut packets = Vec::new();
        let mut partial = Vec::new();
        let mut eos = false;
        let mut granule = 0;
        while data.len() >= 27 {
            assert_eq!(&data[..4], b"OggS", "page capture pattern");
            let nseg = usize::from(data[26]);
            let lacing = &data[27..27 + nseg];
            let mut body = &data[27 + nseg..];
            for &l in lacing {
                partial.extend_from_slice(&body[..usize::from(l)]);
                body = &body[usize::from(l)..];
                if l < 255 {
                    packets.push(std::mem::take(&mut partial));
                }
            }
            eos = data[5] & 0x04 != 0;
            granule = u64::from_le_bytes(data[6..14].try_into().expect("8 bytes"));
            let len = 27 + nseg + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
            data = &data[len..];
        }
        assert!(data.is_empty(), "trailing bytes after the last page");
        (packets, eos, granule)
    }

    /// Decodes an Ogg Opus stream's audio packets, pre-skip removed.
    fn decode(packets: &[Vec<u8>]) -> Vec<f32> {
        use confer_codecs::decoder::AudioDecoder as _;
        let head = &packets[0];
        assert_eq!(&head[..8], b"OpusHead");
        let pre_skip = usize::from(u16::from_le_bytes([head[10], head[11]]));
        let mut dec = confer_codecs::opus::OpusDecoder::new(48_000).expect("decoder");
        let mut out = vec![0.0; FRAME_SAMPLES];
        let mut pcm = Vec::new();
        for p in &packets[2..] {
            let n = dec.decode(p, &mut out).expect("a valid packet");
            pcm.extend_from_slice(&out[..n]);
        }
        pcm.split_off(pre_skip.min(pcm.len()))
    }

    fn plan(dir: PathBuf, prefix: &str, tracks_on: bool) -> RecordingPlan {
        RecordingPlan {
            dir,
            prefix: prefix.into(),
            serial: 1,
            tracks_on,
            frame_ms: 20,
        }
    }

    fn tone(tick: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (tick * FRAME_SAMPLES + i) as f32 / 48_000.0;
                0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
            })
            .collect()
    }

    #[test]
    fn a_stalled_recording_writer_drops_counted_frames_as_silence_without_blocking_the_worker() {
        let metrics = Arc::new(Metrics::default());
        let out = GatedOut::default();
        let dir = std::env::temp_dir().join("confer-host-unit-no-such-dir");
        // The headers go out while the gate is open; then the "disk" stalls.
        let mix = TrackFile::new("t-mix.opus".into(), "mix".into(), Box::new(out.clone()), 7)
            .expect("recorder");
        out.set_shut(true);
        let plan = plan(dir, "t", false);
        let (mut sink, writer) =
            FileSink::start(plan, mix, Vec::new(), metrics.clone()).expect("writer thread");
        // If a push waited for the writer, the watchdog would have to open the gate.
        let watchdog = {
            let out = out.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(20));
                out.set_shut(false);
            })
        };
        let ticks = 700;
        let frames: Vec<Vec<f32>> = (0..ticks).map(tone).collect();
        let started = Instant::now();
        let mut dropped = Vec::new();
        for (tick, f) in frames.iter().enumerate() {
            let before = metrics.recording_frames_dropped.load(Ordering::Relaxed);
            sink.mix(f);
            if metrics.recording_frames_dropped.load(Ordering::Relaxed) > before {
                dropped.push(tick);
            }
        }
        let pushing = started.elapsed();
        assert!(pushing < Duration::from_secs(10), "pushes took {pushing:?}");
        assert!(!watchdog.is_finished());
        // The queue takes RECORDING_QUEUE_FRAMES; the writer takes at most a page (51
        // frames) before its first audio page write stalls.
        let n = dropped.len();
        assert!(
            (ticks - RECORDING_QUEUE_FRAMES - 52..=ticks - RECORDING_QUEUE_FRAMES).contains(&n),
            "{n} frames dropped of {ticks}"
        );
        assert_eq!(
            metrics.recording_frames_dropped.load(Ordering::Relaxed),
            n as u64
        );
        assert!(
            metrics
                .render()
                .contains(&format!("\nconfer_recording_frames_dropped_total {n}\n"))
        );
        out.set_shut(false);
        let (tx, rx) = oneshot::channel();
        sink.stop(RecDone::Files(tx));
        let files = rx
            .blocking_recv()
            .expect("the writer answers")
            .expect("files");
        writer.join().expect("the writer ends");
        assert_eq!(files.len(), 1);
        assert!(!files[0].failed);
        // The timeline is whole: every tick is in the file, dropped ones as silence.
        assert!(
            (files[0].duration_s - ticks as f64 * 0.02).abs() < 1e-9,
            "{files:?}"
        );
        let (packets, eos, _) = ogg_packets(&out.bytes());
        assert!(eos, "the stream is finished");
        let pcm = decode(&packets);
        assert!(pcm.len() >= ticks * FRAME_SAMPLES);
        for tick in 0..ticks {
            // The tick's last 15 ms (the first 5 may hold the codec's overlap).
            let w = &pcm[tick * FRAME_SAMPLES + 240..(tick + 1) * FRAME_SAMPLES];
            let rms = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
            let was_dropped = dropped.binary_search(&tick).is_ok();
            assert!(
                if was_dropped { rms < 0.01 } else { rms > 0.1 },
                "tick {tick} (dropped: {was_dropped}): rms {rms}"
            );
        }
        assert_eq!(metrics.recording_errors.load(Ordering::Relaxed), 0);
    }

    /// A room with one participant (its leg never receives anything: its track is
    /// concealment/silence, which is fine for timing).
    fn room_with_one(now: Instant) -> (Room, ParticipantId) {
        use rand::SeedableRng;
        let mut room = Room::new(RoomConfig::default(), now).expect("room");
        let leg = MediaLeg::new(
            LegConfig::default(),
            None,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
            now,
        )
        .expect("leg");
        let pid = room.join(ParticipantConfig::new(leg), now).expect("join");
        (room, pid)
    }

    fn read_stream(path: &Path) -> (Vec<Vec<u8>>, bool, u64) {
        ogg_packets(&std::fs::read(path).expect("file"))
    }

    fn ticks(room: &mut Room, now: &mut Instant, n: usize) {
        for _ in 0..n {
            *now += Duration::from_millis(20);
            room.tick(*now, &mut |_, _| {});
        }
    }

    fn file_sink(room: &mut Room) -> &mut FileSink {
        room.record_sink_mut()
            .and_then(|s| s.downcast_mut::<FileSink>())
            .expect("recording into a FileSink")
    }

    #[test]
    fn a_track_ends_when_its_participant_leaves_while_the_mix_goes_on() {
        let dir = std::env::temp_dir().join(format!("confer-host-unit-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let metrics = Arc::new(Metrics::default());
        let mut now = Instant::now();
        let (mut room, pid) = room_with_one(now);
        let mix = TrackFile::create(&dir, "u", "mix".into(), 1).expect("mix file");
        let (sink, writer) = FileSink::start(
            plan(dir.clone(), "u", true),
            mix,
            Vec::new(),
            metrics.clone(),
        )
        .expect("writer");
        room.start_recording(Box::new(sink), true)
            .expect("recording");
        // The track opens 5 ticks in (as for a join then): 5 ticks of leading silence.
        ticks(&mut room, &mut now, 5);
        file_sink(&mut room).add_track(pid, 9).expect("track file");
        ticks(&mut room, &mut now, 25);
        let _leg = room.kick(pid, now).expect("kicked");
        file_sink(&mut room).close_track(pid);
        // The track is finished now, not at the stop: its last page ends the stream.
        let track = dir.join("u-p9.opus");
        let waited = Instant::now();
        loop {
            let done = std::fs::read(&track).is_ok_and(|b| b.len() > 27 && ogg_packets(&b).1);
            if done {
                break;
            }
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the track stays open"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (packets, _, granule) = read_stream(&track);
        let pre_skip = u64::from(u16::from_le_bytes([packets[0][10], packets[0][11]]));
        // On disk: 5 ticks of padding and 25 in the room, 20 ms each.
        assert_eq!(granule - pre_skip, 30 * FRAME_SAMPLES as u64);
        // Headers, 30 ticks (5 of padding), then the encoder's look-ahead flush.
        assert!(packets.len() >= 2 + 30, "{} packets", packets.len());
        // The participant never sent anything, so all of it decodes to silence.
        let pcm = decode(&packets);
        assert!(pcm.len() >= 30 * FRAME_SAMPLES, "{} samples", pcm.len());
        assert!(pcm.iter().all(|x| x.abs() < 1e-3));
        ticks(&mut room, &mut now, 20);
        let (tx, rx) = oneshot::channel();
        assert!(finish_recording(&mut room, RecDone::Files(tx)).is_ok());
        let files = rx.blocking_recv().expect("answer").expect("files");
        writer.join().expect("the writer ends");
        let by_track = |t: &str| {
            files
                .iter()
                .find(|f| f.track == t)
                .unwrap_or_else(|| panic!("no {t} in {files:?}"))
        };
        assert!((by_track("mix").duration_s - 1.0).abs() < 1e-9, "{files:?}");
        assert!((by_track("p9").duration_s - 0.6).abs() < 1e-9, "{files:?}");
        for f in &files {
            assert!(!f.failed && f.bytes > 0, "{f:?}");
            let (_, eos, _) = read_stream(&dir.join(&f.name));
            assert!(eos, "{} is finished", f.name);
        }
        assert_eq!(metrics.recording_frames_dropped.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn workers_tick_on_the_frame_clock_and_stop_on_request() {
        let h = host(39_950, 39_959);
        std::thread::sleep(Duration::from_millis(210));
        let ticks = h.stop();
        // About 10 frames of 20 ms; a loaded machine may tick later, never faster.
        assert!((5..=11).contains(&ticks), "{ticks} ticks in 210 ms");
        assert_eq!(h.metrics().ticks.load(Ordering::Relaxed), ticks);
        // Ticks without a room to mix are counted but not timed.
        assert_eq!(h.metrics().tick_duration.count(), 0);
    }
}

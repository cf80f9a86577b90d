//! DTMF: RFC 4733 telephone-events and in-band dual tones.
//!
//! A caller enters a conference PIN from a phone. The digits reach us either
//! as RFC 4733 telephone-event packets (SIP trunks, most PBXs) or as audio
//! tones inside the G.711/Opus stream (old gateways, or a trunk that did not
//! negotiate telephone-event). This module handles both, and can produce both
//! for dial-out and IVR prompts.
//!
//! # RFC 4733 telephone-events
//!
//! [`TelephoneEvent`] parses and builds the 4-byte payload. A payload that is
//! not exactly 4 bytes is a typed error, so several events packed into one
//! packet (RFC 4733 section 2.5.1.5, rare in practice) are rejected rather
//! than half-read. The reserved bit is ignored on receipt and sent as zero.
//!
//! [`TelephoneEventReceiver`] turns the packet stream of one SSRC into digit
//! events, each reported exactly once. An event is identified by its RTP
//! timestamp (its start time): updates and the three end packets share it,
//! a new key press has a new one, even for the same digit.
//!
//! - The first packet of a new timestamp starts the event, with or without
//!   the marker bit (the start packet may be lost).
//! - Packets with the current timestamp update the duration; the first one
//!   with the E bit ends the event; retransmitted end packets are ignored.
//! - A packet with a newer timestamp while an event is open ends it
//!   ([`EndCause::Superseded`]): its end packets were lost.
//! - An event with no packets for `end_timeout` ticks of media time past its
//!   last known end is ended by [`TelephoneEventReceiver::handle_timeout`]
//!   ([`EndCause::Timeout`]); late packets of it are then ignored, so a
//!   timeout shortens an event but never splits it into two digits.
//! - A packet with the same event code, no marker, and a timestamp exactly
//!   0xFFFF ticks after the open segment's continues the event (long-event
//!   segments, RFC 4733 section 2.5.1.3); the reported duration is the sum.
//! - Packets older than the open or the last event are ignored.
//!
//! Time is the RTP timestamp clock; the receiver never reads a clock. The
//! drive contract: call [`handle_packet`](TelephoneEventReceiver::handle_packet)
//! for each telephone-event packet and consume the returned events; call
//! [`handle_timeout`](TelephoneEventReceiver::handle_timeout) with the
//! current media time (same clock, for example the RTP timestamp the audio
//! of the same source has reached) whenever it passes
//! [`poll_timeout`](TelephoneEventReceiver::poll_timeout).
//!
//! [`TelephoneEventSender`] produces the packet sequence for a digit of known
//! length: the first packet (marker set) once one packet interval of the
//! event has elapsed, an update every interval with the duration so far, and
//! the final duration with the E bit three times, one interval apart. An
//! event longer than 0xFFFF ticks is sent as segments: the segment's last
//! packet reports 0xFFFF without the E bit and the next segment starts at
//! timestamp + 0xFFFF without the marker. Each packet carries the media time
//! at which it is due; [`poll_packet`](TelephoneEventSender::poll_packet)
//! hands out the packets whose time has come.
//!
//! # In-band tones
//!
//! Levels are dBov after ITU-T G.100.1: the RMS relative to full scale 1.0,
//! so a full-scale sine is -3.01 dBov, and a dual tone of two equal tones
//! stays unclipped up to -9.03 dBov per tone. "Per tone" levels are what
//! Q.24 specifies.
//!
//! [`DtmfGenerator`] plays a queue of digits, each a tone of the configured
//! length and level followed by a pause, into frames of any length at any
//! supported rate. Each tone starts at phase zero (no click at the onset) and
//! its phase runs on across frame boundaries; output is clamped to the PCM
//! range.
//!
//! [`DtmfDetector`] is a Goertzel detector with the classic talk-off
//! defences. It analyses windows of 13.25 ms (106 samples at 8 kHz, scaled
//! with the rate, so the resolution is 75.5 Hz at every rate) every half
//! window, whatever the caller's frame length. The strongest tone of each
//! group is picked; then each group is measured again with the other group's
//! tone notched out by a 3-tap FIR (without it, the rectangular window's
//! sidelobes let the loud tone swing the weak one's reading by +-1.5 dB at
//! 8 dB of twist). A window is a hit for a digit when:
//!
//! 1. in each group, the strongest tone beats the other three by 6 dB;
//! 2. the two tones hold at least 65 % of the window's energy;
//! 3. each tone's frequency is within 2.5 % of nominal: the filter at the
//!    nominal frequency must beat filters at +5 % and -5 %, which puts the
//!    decision at the midpoint whatever the level (Q.24: accept 1.5 %,
//!    reject 3.5 %);
//! 4. each tone's level, corrected for the filter's loss at the frequency
//!    offset that the detuned filters reveal, is at least -32 dBov;
//! 5. twist: the low tone is at most 9 dB above the high one (normal twist)
//!    and at most 5 dB below it (reverse twist);
//! 6. the high tone's second harmonic is 10 dB below it (speech is rich in
//!    harmonics; a dual tone has none). The low tones' second harmonics are
//!    not checked: they fall 58 to 93 Hz from high-group tones, inside the
//!    filter's main lobe, so the check would reject real digits.
//!
//! A digit starts after 4 consecutive hits whose tone power stays within
//! 3 dB, and ends after 5 consecutive windows without it. Four hits span
//! 33 ms, and a window counts only when the tone fills most of it (test 2 and
//! the power stability), so a 40 ms tone is always accepted and a 23 ms one
//! never. Five misses need a break of about 25 ms: breaks up to 20 ms are
//! bridged, pauses of 30 ms or more always separate two digits. The tests'
//! sweeps print the measured boundaries
//! (`cargo test -p confer-codecs --lib dtmf -- --nocapture`).
//!
//! The detector is sans-IO: positions in events are sample counts since
//! construction or [`reset`](DtmfDetector::reset). It allocates once, at
//! construction.

use std::time::Duration;

/// The 16 DTMF digits, which are also the RFC 4733 event codes 0-15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtmfDigit {
    /// "0", event code 0.
    D0,
    /// "1", event code 1.
    D1,
    /// "2", event code 2.
    D2,
    /// "3", event code 3.
    D3,
    /// "4", event code 4.
    D4,
    /// "5", event code 5.
    D5,
    /// "6", event code 6.
    D6,
    /// "7", event code 7.
    D7,
    /// "8", event code 8.
    D8,
    /// "9", event code 9.
    D9,
    /// "*", event code 10.
    Star,
    /// "#", event code 11.
    Hash,
    /// "A", event code 12.
    A,
    /// "B", event code 13.
    B,
    /// "C", event code 14.
    C,
    /// "D", event code 15.
    D,
}

/// Low-group (row) frequencies in Hz.
pub const LOW_GROUP_HZ: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// High-group (column) frequencies in Hz.
pub const HIGH_GROUP_HZ: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// The keypad: `KEYPAD[row][column]`.
const KEYPAD: [[DtmfDigit; 4]; 4] = [
    [DtmfDigit::D1, DtmfDigit::D2, DtmfDigit::D3, DtmfDigit::A],
    [DtmfDigit::D4, DtmfDigit::D5, DtmfDigit::D6, DtmfDigit::B],
    [DtmfDigit::D7, DtmfDigit::D8, DtmfDigit::D9, DtmfDigit::C],
    [
        DtmfDigit::Star,
        DtmfDigit::D0,
        DtmfDigit::Hash,
        DtmfDigit::D,
    ],
];

impl DtmfDigit {
    /// All digits in event-code order.
    pub const ALL: [DtmfDigit; 16] = [
        DtmfDigit::D0,
        DtmfDigit::D1,
        DtmfDigit::D2,
        DtmfDigit::D3,
        DtmfDigit::D4,
        DtmfDigit::D5,
        DtmfDigit::D6,
        DtmfDigit::D7,
        DtmfDigit::D8,
        DtmfDigit::D9,
        DtmfDigit::Star,
        DtmfDigit::Hash,
        DtmfDigit::A,
        DtmfDigit::B,
        DtmfDigit::C,
        DtmfDigit::D,
    ];

    /// The digit for an RFC 4733 event code, `None` for codes above 15.
    pub fn from_event_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The RFC 4733 event code.
    pub fn event_code(self) -> u8 {
        self as u8
    }

    /// The digit for a keypad character (`0-9`, `*`, `#`, `A-D` or `a-d`).
    pub fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '0'..='9' => Self::ALL[(c as u8 - b'0') as usize],
            '*' => Self::Star,
            '#' => Self::Hash,
            'A' | 'a' => Self::A,
            'B' | 'b' => Self::B,
            'C' | 'c' => Self::C,
            'D' | 'd' => Self::D,
            _ => return None,
        })
    }

    /// The keypad character.
    pub fn to_char(self) -> char {
        b"0123456789*#ABCD"[self as usize] as char
    }

    /// Row and column on the keypad (indices into the frequency groups).
    fn row_column(self) -> (usize, usize) {
        use DtmfDigit::*;
        match self {
            D1 => (0, 0),
            D2 => (0, 1),
            D3 => (0, 2),
            A => (0, 3),
            D4 => (1, 0),
            D5 => (1, 1),
            D6 => (1, 2),
            B => (1, 3),
            D7 => (2, 0),
            D8 => (2, 1),
            D9 => (2, 2),
            C => (2, 3),
            Star => (3, 0),
            D0 => (3, 1),
            Hash => (3, 2),
            D => (3, 3),
        }
    }

    /// The (low, high) tone frequencies in Hz.
    pub fn frequencies(self) -> (f32, f32) {
        let (r, c) = self.row_column();
        (LOW_GROUP_HZ[r], HIGH_GROUP_HZ[c])
    }
}

// ---------------------------------------------------------------------------
// RFC 4733 payload
// ---------------------------------------------------------------------------

/// Errors of the telephone-event payload and state machines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelephoneEventError {
    /// The payload is not exactly 4 bytes (peer error).
    #[error("telephone-event payload is {len} bytes, expected 4")]
    WrongLength {
        /// The payload length received.
        len: usize,
    },
    /// The output buffer cannot hold 4 bytes (caller error).
    #[error("buffer of {len} bytes cannot hold a 4-byte telephone-event")]
    BufferTooSmall {
        /// The buffer length given.
        len: usize,
    },
    /// The volume does not fit 6 bits (caller error).
    #[error("volume {0} is out of range 0..=63")]
    VolumeOutOfRange(u8),
    /// The packet interval is zero or longer than a segment (caller error).
    #[error("packet interval of {0} ticks is not in 1..=65535")]
    InvalidPacketInterval(u32),
    /// A digit of zero length was asked for (caller error).
    #[error("an event must last at least one tick")]
    ZeroDuration,
    /// The sender is still sending the previous event (caller error).
    #[error("the previous event is still being sent")]
    Busy,
}

/// One RFC 4733 telephone-event payload (section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0-15 are the DTMF digits ([`DtmfDigit`]); other codes are
    /// kept as they are.
    pub event: u8,
    /// The E bit: this packet reports the end of the event.
    pub end: bool,
    /// Power level of the tone, in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far in RTP timestamp ticks, from the packet's timestamp.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Payload length in bytes.
    pub const LEN: usize = 4;

    /// Parses a payload of exactly 4 bytes. The reserved bit is ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, TelephoneEventError> {
        let &[event, flags, d0, d1] = payload else {
            return Err(TelephoneEventError::WrongLength { len: payload.len() });
        };
        Ok(Self {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// Writes the payload (reserved bit zero) into `buf`; returns 4.
    pub fn build(&self, buf: &mut [u8]) -> Result<usize, TelephoneEventError> {
        if self.volume > 63 {
            return Err(TelephoneEventError::VolumeOutOfRange(self.volume));
        }
        let Some(out) = buf.get_mut(..Self::LEN) else {
            return Err(TelephoneEventError::BufferTooSmall { len: buf.len() });
        };
        let [d0, d1] = self.duration.to_be_bytes();
        out.copy_from_slice(&[self.event, (u8::from(self.end) << 7) | self.volume, d0, d1]);
        Ok(Self::LEN)
    }

    /// The digit, if the event code is one (0-15).
    pub fn digit(&self) -> Option<DtmfDigit> {
        DtmfDigit::from_event_code(self.event)
    }
}

/// `a` is later than `b` in RTP timestamp order (serial arithmetic).
fn ts_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

// ---------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------

/// Why a received event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// A packet with the E bit arrived.
    EndBit,
    /// No packet for the end timeout (end packets lost).
    Timeout,
    /// A newer event started (end packets lost).
    Superseded,
}

/// What the receiver reports, each once per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceivedEvent {
    /// An event began at RTP timestamp `timestamp`.
    Started {
        /// Event code (a digit for 0-15).
        event: u8,
        /// RTP timestamp of the event's start.
        timestamp: u32,
        /// Volume of the first packet seen, -dBm0.
        volume: u8,
    },
    /// The event that began at `timestamp` ended.
    Ended {
        /// Event code.
        event: u8,
        /// RTP timestamp of the event's start (first segment).
        timestamp: u32,
        /// Total duration in ticks, summed over long-event segments; for
        /// [`EndCause::Timeout`] and [`EndCause::Superseded`] the last
        /// duration seen.
        duration: u64,
        /// Why it ended.
        cause: EndCause,
    },
}

/// The events produced by one call into the receiver (at most three: the end
/// of a superseded event, the start of the new one, and its end).
#[derive(Debug, Clone, Default)]
#[must_use = "received events must be consumed"]
pub struct ReceivedEvents {
    items: [Option<ReceivedEvent>; 3],
    len: usize,
    next: usize,
}

impl ReceivedEvents {
    fn push(&mut self, event: ReceivedEvent) {
        // Three slots suffice: see the struct docs; one path emits at most
        // one of each kind.
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = Some(event);
            self.len += 1;
        }
    }
}

impl Iterator for ReceivedEvents {
    type Item = ReceivedEvent;
    fn next(&mut self) -> Option<ReceivedEvent> {
        let item = self.items.get_mut(self.next)?.take();
        self.next += 1;
        item
    }
}

/// Counters of the receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Packets handed in.
    pub packets: u64,
    /// Packets with a malformed payload.
    pub malformed: u64,
    /// Packets ignored: retransmitted end packets, late updates of an ended
    /// event, reordered packets of an older event, or a different event code
    /// at the timestamp of the open one.
    pub ignored: u64,
}

#[derive(Debug, Clone, Copy)]
struct OpenEvent {
    event: u8,
    start: u32,
    segment: u32,
    /// Ticks of the completed segments before `segment`.
    completed: u64,
    duration: u16,
}

impl OpenEvent {
    fn total(&self) -> u64 {
        self.completed + u64::from(self.duration)
    }
}

/// RFC 4733 receiver state machine for one RTP source (see the module docs).
#[derive(Debug, Clone)]
pub struct TelephoneEventReceiver {
    end_timeout: u32,
    open: Option<OpenEvent>,
    /// Segment timestamp of the last ended event: packets at or before it
    /// are retransmissions or stale.
    last_segment: Option<u32>,
    stats: ReceiverStats,
}

/// RFC 4733 section 2.5.1.3: the timestamp step from one segment to the next.
const SEGMENT_TICKS: u32 = 0xFFFF;

impl TelephoneEventReceiver {
    /// A receiver for a telephone-event clock of `clock_rate` Hz, with an end
    /// timeout of 300 ms (six 50 ms updates lost in a row).
    pub fn new(clock_rate: u32) -> Self {
        Self::with_end_timeout(clock_rate / 10 * 3)
    }

    /// A receiver that ends an event `end_timeout` ticks after its last
    /// known end when no end packet arrives.
    pub fn with_end_timeout(end_timeout: u32) -> Self {
        Self {
            end_timeout,
            open: None,
            last_segment: None,
            stats: ReceiverStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// The event currently open, as (event code, start timestamp).
    pub fn open_event(&self) -> Option<(u8, u32)> {
        self.open.map(|o| (o.event, o.start))
    }

    /// Handles one telephone-event packet: its RTP timestamp, marker bit and
    /// payload. A malformed payload is an error and changes nothing else.
    pub fn handle_packet(
        &mut self,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<ReceivedEvents, TelephoneEventError> {
        self.stats.packets += 1;
        let packet = match TelephoneEvent::parse(payload) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        let mut out = ReceivedEvents::default();
        if let Some(mut open) = self.open {
            if timestamp == open.segment {
                if packet.event != open.event {
                    self.stats.ignored += 1;
                } else {
                    open.duration = open.duration.max(packet.duration);
                    self.update(open, packet.end, &mut out);
                }
                return Ok(out);
            }
            if !ts_after(timestamp, open.segment) {
                self.stats.ignored += 1;
                return Ok(out);
            }
            if !marker
                && packet.event == open.event
                && timestamp.wrapping_sub(open.segment) == SEGMENT_TICKS
            {
                open.completed += u64::from(SEGMENT_TICKS);
                open.segment = timestamp;
                open.duration = packet.duration;
                self.update(open, packet.end, &mut out);
                return Ok(out);
            }
            out.push(self.finish(open, EndCause::Superseded));
        } else if let Some(last) = self.last_segment
            && !ts_after(timestamp, last)
        {
            self.stats.ignored += 1;
            return Ok(out);
        }
        out.push(ReceivedEvent::Started {
            event: packet.event,
            timestamp,
            volume: packet.volume,
        });
        let open = OpenEvent {
            event: packet.event,
            start: timestamp,
            segment: timestamp,
            completed: 0,
            duration: packet.duration,
        };
        self.update(open, packet.end, &mut out);
        Ok(out)
    }

    /// Stores the open event, or ends it if `end`.
    fn update(&mut self, open: OpenEvent, end: bool, out: &mut ReceivedEvents) {
        if end {
            out.push(self.finish(open, EndCause::EndBit));
        } else {
            self.open = Some(open);
        }
    }

    fn finish(&mut self, open: OpenEvent, cause: EndCause) -> ReceivedEvent {
        self.open = None;
        self.last_segment = Some(open.segment);
        ReceivedEvent::Ended {
            event: open.event,
            timestamp: open.start,
            duration: open.total(),
            cause,
        }
    }

    /// The media time (RTP clock) at which the open event times out.
    pub fn poll_timeout(&self) -> Option<u32> {
        self.open.map(|o| {
            o.segment
                .wrapping_add(u32::from(o.duration))
                .wrapping_add(self.end_timeout)
        })
    }

    /// Ends the open event if media time `now` (RTP clock) has reached its
    /// timeout. Safe to call at any time.
    pub fn handle_timeout(&mut self, now: u32) -> Option<ReceivedEvent> {
        let open = self.open?;
        let deadline = self.poll_timeout()?;
        (now == deadline || ts_after(now, deadline)).then(|| self.finish(open, EndCause::Timeout))
    }
}

// ---------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------

/// One telephone-event packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutgoingTelephoneEvent {
    /// Media time (RTP clock) at which the packet is due.
    pub send_at: u32,
    /// RTP timestamp: the start of the event's current segment.
    pub timestamp: u32,
    /// RTP marker bit: set on the first packet of an event.
    pub marker: bool,
    /// The payload; write it with [`TelephoneEvent::build`].
    pub payload: TelephoneEvent,
}

#[derive(Debug, Clone, Copy)]
struct Sending {
    event: u8,
    start: u32,
    length: u64,
    /// Offset of the current segment from the event start.
    segment: u64,
    /// Offset up to which packets have reported.
    reported: u64,
    /// End packets sent so far (0 until the final duration is reached).
    ends_sent: u8,
    first: bool,
}

/// RFC 4733 sender state machine (see the module docs).
#[derive(Debug, Clone)]
pub struct TelephoneEventSender {
    interval: u32,
    volume: u8,
    sending: Option<Sending>,
}

impl TelephoneEventSender {
    /// How many times the final packet of an event is sent (RFC 4733
    /// section 2.5.1.4).
    pub const END_PACKETS: u8 = 3;

    /// A sender with an update every `packet_interval` ticks (400 = 50 ms at
    /// 8 kHz is usual) and the given volume (-dBm0, 0..=63).
    pub fn new(packet_interval: u32, volume: u8) -> Result<Self, TelephoneEventError> {
        if packet_interval == 0 || packet_interval > SEGMENT_TICKS {
            return Err(TelephoneEventError::InvalidPacketInterval(packet_interval));
        }
        if volume > 63 {
            return Err(TelephoneEventError::VolumeOutOfRange(volume));
        }
        Ok(Self {
            interval: packet_interval,
            volume,
            sending: None,
        })
    }

    /// Starts sending `event` that begins at RTP timestamp `timestamp` and
    /// lasts `length` ticks.
    pub fn send_event(
        &mut self,
        event: u8,
        timestamp: u32,
        length: u32,
    ) -> Result<(), TelephoneEventError> {
        if self.sending.is_some() {
            return Err(TelephoneEventError::Busy);
        }
        if length == 0 {
            return Err(TelephoneEventError::ZeroDuration);
        }
        self.sending = Some(Sending {
            event,
            start: timestamp,
            length: u64::from(length),
            segment: 0,
            reported: 0,
            ends_sent: 0,
            first: true,
        });
        Ok(())
    }

    /// True when no event is being sent.
    pub fn is_idle(&self) -> bool {
        self.sending.is_none()
    }

    /// The media time at which the next packet is due.
    pub fn poll_timeout(&self) -> Option<u32> {
        self.sending.map(|s| self.next_of(s).0.send_at)
    }

    /// The next packet if it is due at media time `now`.
    pub fn poll_packet(&mut self, now: u32) -> Option<OutgoingTelephoneEvent> {
        let s = self.sending?;
        let (packet, next) = self.next_of(s);
        if packet.send_at != now && !ts_after(now, packet.send_at) {
            return None;
        }
        self.sending = next;
        Some(packet)
    }

    /// The next packet of `s` and the state after it.
    fn next_of(&self, s: Sending) -> (OutgoingTelephoneEvent, Option<Sending>) {
        let interval = u64::from(self.interval);
        let packet = |s: &Sending, reported: u64, end: bool, send_offset: u64| {
            // Offsets stay below 2^32 + 2^18 because length is a u32; the
            // RTP clock wraps, so truncating to u32 is the intended modulo.
            OutgoingTelephoneEvent {
                send_at: s.start.wrapping_add(send_offset as u32),
                timestamp: s.start.wrapping_add(s.segment as u32),
                marker: s.first,
                payload: TelephoneEvent {
                    event: s.event,
                    end,
                    volume: self.volume,
                    // At most SEGMENT_TICKS: segments roll over before.
                    duration: (reported - s.segment).min(u64::from(SEGMENT_TICKS)) as u16,
                },
            }
        };
        if s.ends_sent > 0 {
            let p = packet(
                &s,
                s.length,
                true,
                s.length + u64::from(s.ends_sent) * interval,
            );
            let next = (s.ends_sent + 1 < Self::END_PACKETS).then_some(Sending {
                ends_sent: s.ends_sent + 1,
                ..s
            });
            return (p, next);
        }
        let target = (s.reported + interval).min(s.length);
        let segment_end = s.segment + u64::from(SEGMENT_TICKS);
        if target > segment_end {
            // Close the segment at its maximum duration, no E bit; the next
            // segment starts at its end without the marker.
            let p = packet(&s, segment_end, false, segment_end);
            let next = Sending {
                segment: segment_end,
                reported: segment_end,
                first: false,
                ..s
            };
            return (p, Some(next));
        }
        let end = target == s.length;
        let p = packet(&s, target, end, target);
        let next = Sending {
            reported: target,
            ends_sent: u8::from(end),
            first: false,
            ..s
        };
        (p, Some(next))
    }
}

// ---------------------------------------------------------------------------
// In-band: shared
// ---------------------------------------------------------------------------

/// Errors of the in-band generator and detector (caller errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// The sample rate is outside 8000..=48000 Hz.
    #[error("sample rate {0} Hz is not supported (8000..=48000)")]
    UnsupportedSampleRate(u32),
    /// A character that is not a DTMF digit.
    #[error("{0:?} is not a DTMF digit")]
    InvalidDigit(char),
    /// The generator's digit queue is full.
    #[error("the digit queue is full ({0} digits)")]
    QueueFull(usize),
}

const MIN_RATE: u32 = 8000;
const MAX_RATE: u32 = 48000;

fn check_rate(sample_rate: u32) -> Result<(), DtmfError> {
    if (MIN_RATE..=MAX_RATE).contains(&sample_rate) {
        Ok(())
    } else {
        Err(DtmfError::UnsupportedSampleRate(sample_rate))
    }
}

/// The largest sample value below full scale (the PCM range is [-1, 1)).
const MAX_SAMPLE: f32 = 32767.0 / 32768.0;

fn db_to_power(db: f32) -> f64 {
    10f64.powf(f64::from(db) / 10.0)
}

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum GenState {
    Idle,
    Tone { remaining: u64 },
    Pause { remaining: u64 },
}

/// In-band DTMF generator (see the module docs).
#[derive(Debug, Clone)]
pub struct DtmfGenerator {
    sample_rate: u32,
    amp_low: f64,
    amp_high: f64,
    tone_samples: u64,
    pause_samples: u64,
    queue: [DtmfDigit; Self::QUEUE_LEN],
    head: usize,
    queued: usize,
    state: GenState,
    /// Phases and steps in cycles.
    phase_low: f64,
    phase_high: f64,
    step_low: f64,
    step_high: f64,
}

impl DtmfGenerator {
    /// Digits that can wait in the queue.
    pub const QUEUE_LEN: usize = 64;

    /// A generator at `sample_rate` (8000..=48000 Hz) with tones of 100 ms at
    /// -10 dBov per tone and pauses of 100 ms.
    pub fn new(sample_rate: u32) -> Result<Self, DtmfError> {
        check_rate(sample_rate)?;
        let mut g = Self {
            sample_rate,
            amp_low: 0.0,
            amp_high: 0.0,
            tone_samples: 0,
            pause_samples: 0,
            queue: [DtmfDigit::D0; Self::QUEUE_LEN],
            head: 0,
            queued: 0,
            state: GenState::Idle,
            phase_low: 0.0,
            phase_high: 0.0,
            step_low: 0.0,
            step_high: 0.0,
        };
        g.set_level(-10.0);
        g.set_timing(Duration::from_millis(100), Duration::from_millis(100));
        Ok(g)
    }

    /// Sets both tones to `dbov` per tone.
    pub fn set_level(&mut self, dbov: f32) {
        self.set_levels(dbov, dbov);
    }

    /// Sets the low- and high-group tone levels separately (twist).
    pub fn set_levels(&mut self, low_dbov: f32, high_dbov: f32) {
        // A level that is not a number gives silence rather than NaN samples.
        let amp = |db: f32| {
            let a = std::f64::consts::SQRT_2 * 10f64.powf(f64::from(db) / 20.0);
            if a.is_finite() { a } else { 0.0 }
        };
        self.amp_low = amp(low_dbov);
        self.amp_high = amp(high_dbov);
    }

    /// Sets the tone and pause lengths for digits started from now on.
    pub fn set_timing(&mut self, tone: Duration, pause: Duration) {
        let samples = |d: Duration| (d.as_secs_f64() * f64::from(self.sample_rate)).round() as u64;
        self.tone_samples = samples(tone);
        self.pause_samples = samples(pause);
    }

    /// Queues one digit.
    pub fn push_digit(&mut self, digit: DtmfDigit) -> Result<(), DtmfError> {
        if self.queued == Self::QUEUE_LEN {
            return Err(DtmfError::QueueFull(Self::QUEUE_LEN));
        }
        self.queue[(self.head + self.queued) % Self::QUEUE_LEN] = digit;
        self.queued += 1;
        Ok(())
    }

    /// Queues a string of keypad characters; nothing is queued if one is not
    /// a digit or they do not all fit.
    pub fn push_digits(&mut self, digits: &str) -> Result<(), DtmfError> {
        let mut count = 0;
        for c in digits.chars() {
            DtmfDigit::from_char(c).ok_or(DtmfError::InvalidDigit(c))?;
            count += 1;
        }
        if self.queued + count > Self::QUEUE_LEN {
            return Err(DtmfError::QueueFull(Self::QUEUE_LEN));
        }
        for d in digits.chars().filter_map(DtmfDigit::from_char) {
            self.push_digit(d)?;
        }
        Ok(())
    }

    /// True when nothing is playing or queued.
    pub fn is_idle(&self) -> bool {
        self.queued == 0
            && match self.state {
                GenState::Idle | GenState::Pause { remaining: 0 } => true,
                GenState::Tone { remaining: 0 } => self.pause_samples == 0,
                GenState::Tone { .. } | GenState::Pause { .. } => false,
            }
    }

    /// Drops the queue and stops at once.
    pub fn clear(&mut self) {
        self.queued = 0;
        self.state = GenState::Idle;
    }

    /// Takes the next digit from the queue, if any, and starts its tone.
    fn start_next(&mut self) -> bool {
        if self.queued == 0 {
            return false;
        }
        let digit = self.queue[self.head];
        self.head = (self.head + 1) % Self::QUEUE_LEN;
        self.queued -= 1;
        let (low, high) = digit.frequencies();
        let rate = f64::from(self.sample_rate);
        self.step_low = f64::from(low) / rate;
        self.step_high = f64::from(high) / rate;
        self.phase_low = 0.0;
        self.phase_high = 0.0;
        self.state = GenState::Tone {
            remaining: self.tone_samples,
        };
        true
    }

    /// Moves on from a state whose samples are used up, so that only
    /// `Idle` or a state with samples left remains.
    fn settle(&mut self) {
        loop {
            match self.state {
                GenState::Tone { remaining: 0 } => {
                    self.state = GenState::Pause {
                        remaining: self.pause_samples,
                    };
                }
                GenState::Pause { remaining: 0 } => self.state = GenState::Idle,
                GenState::Idle => {
                    if !self.start_next() {
                        return;
                    }
                }
                GenState::Tone { .. } | GenState::Pause { .. } => return,
            }
        }
    }

    /// Fills `out` with the next samples: tones, pauses, then silence.
    pub fn fill(&mut self, out: &mut [f32]) {
        let tau = std::f64::consts::TAU;
        for sample in out {
            self.settle();
            *sample = match self.state {
                GenState::Idle => 0.0,
                GenState::Pause { remaining } => {
                    self.state = GenState::Pause {
                        remaining: remaining.saturating_sub(1),
                    };
                    0.0
                }
                GenState::Tone { remaining } => {
                    self.state = GenState::Tone {
                        remaining: remaining.saturating_sub(1),
                    };
                    let v = self.amp_low * (tau * self.phase_low).sin()
                        + self.amp_high * (tau * self.phase_high).sin();
                    self.phase_low = (self.phase_low + self.step_low).fract();
                    self.phase_high = (self.phase_high + self.step_high).fract();
                    (v as f32).clamp(-1.0, MAX_SAMPLE)
                }
            };
        }
    }
}

// ---------------------------------------------------------------------------
// Detector
// ---------------------------------------------------------------------------

/// What the in-band detector reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfEvent {
    /// A digit was recognised; `at` is the estimated start of its tone.
    Started {
        /// The digit.
        digit: DtmfDigit,
        /// Sample position of the tone's start (first window of the run).
        at: u64,
    },
    /// The digit's tone ended at `at` (end of the last window that held it).
    Ended {
        /// The digit.
        digit: DtmfDigit,
        /// Sample position of the end.
        at: u64,
        /// Samples from start to end, as the detector saw them (within about
        /// one window of the true length).
        duration: u64,
    },
}

/// Tunable limits of the detector; the defaults follow Q.24 with margins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DtmfDetectorConfig {
    /// Lowest level per tone, dBov.
    pub min_tone_level_dbov: f32,
    /// Largest normal twist (low tone above high tone), dB.
    pub max_normal_twist_db: f32,
    /// Largest reverse twist (high tone above low tone), dB.
    pub max_reverse_twist_db: f32,
}

impl Default for DtmfDetectorConfig {
    fn default() -> Self {
        Self {
            min_tone_level_dbov: -32.0,
            max_normal_twist_db: 9.0,
            max_reverse_twist_db: 5.0,
        }
    }
}

/// Window length in seconds (106 samples at 8 kHz).
const WINDOW_SECONDS: f64 = 106.0 / 8000.0;
/// The winner must beat the rest of its group by this much (power ratio).
const RELATIVE_PEAK_DB: f32 = 6.0;
/// Share of the window's energy the two tones must hold.
const MIN_TONE_ENERGY_SHARE: f64 = 0.65;
/// Detuning of the frequency-check filters.
const DETUNE: f64 = 0.05;
/// The high tone's second harmonic must be this far below it.
const HARMONIC_DB: f32 = 10.0;
/// Consecutive hits to start a digit.
const HITS_TO_START: u32 = 4;
/// Consecutive misses to end a digit.
const MISSES_TO_END: u32 = 5;
/// Largest spread of tone power within the starting run.
const STABILITY_DB: f32 = 3.0;

/// Goertzel coefficients for one tone.
#[derive(Debug, Clone, Copy)]
struct ToneFilter {
    center: Freq,
    lower: Freq,
    upper: Freq,
    /// The detuning expressed in DFT bins of the window.
    detune_bins: f64,
}

fn goertzel_coeff(freq: f64, sample_rate: f64) -> f64 {
    2.0 * (std::f64::consts::TAU * freq / sample_rate).cos()
}

/// One analysis frequency: its Goertzel coefficient, and the same
/// coefficient at the notch's delay (see [`notched_goertzel`]).
#[derive(Debug, Clone, Copy)]
struct Freq {
    coeff: f64,
    comb: f64,
}

impl Freq {
    fn new(freq: f64, sample_rate: f64, delay: usize) -> Self {
        Self {
            coeff: goertzel_coeff(freq, sample_rate),
            comb: goertzel_coeff(freq * delay as f64, sample_rate),
        }
    }
}

/// [`goertzel`] at `f` of `x` with the frequency `notch` removed first, not
/// corrected for the notch's gain ([`notch_gain`]).
///
/// The notch is the FIR `y[n] = x[n] - 2 cos(w d) x[n-d] + x[n-2d]`, with
/// `d` the delay: its gain is `|2 cos(w d) - 2 cos(w_notch d)|`, zero at the
/// notch. With `d = rate / 8000` it behaves at every rate as `d = 1` does at
/// 8 kHz (its zeros repeat every 8 kHz), so the gain at DTMF frequencies
/// stays above -10 dB and high frequencies are not boosted more than at
/// 8 kHz.
fn notched_goertzel(x: &[f32], f: Freq, notch: Freq, delay: usize) -> f64 {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for (i, &v) in x.iter().enumerate().skip(2 * delay) {
        let y = f64::from(v) - notch.comb * f64::from(x[i - delay]) + f64::from(x[i - 2 * delay]);
        let s0 = y + f.coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let n = x.len().saturating_sub(2 * delay).max(1) as f64;
    2.0 * (s1 * s1 + s2 * s2 - f.coeff * s1 * s2) / (n * n)
}

/// Power gain of the notch at `f`.
fn notch_gain(f: Freq, notch: Freq) -> f64 {
    (f.comb - notch.comb).powi(2)
}

/// Power of `x` at the filter's frequency, normalised so that a sine of
/// amplitude A on the frequency gives A^2/2 (its mean power).
fn goertzel(x: &[f32], coeff: f64) -> f64 {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let n = x.len() as f64;
    2.0 * (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n)
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The power loss of a rectangular-window filter for a tone off its
/// frequency, estimated from `side_ratio`, the power of the stronger detuned
/// filter (`detune` bins away) over the centre filter's. The centre filter
/// has already won, so the offset is at most `detune / 2`.
fn offset_loss(side_ratio: f64, detune: f64) -> f64 {
    let ratio = side_ratio.sqrt().min(1.0);
    // |sinc(detune - d)| / sinc(d) rises with d once detune - d is inside
    // the main lobe; below that the correction is under 0.1 dB.
    let (mut lo, mut hi) = ((detune - 1.0).max(0.0), detune / 2.0);
    for _ in 0..24 {
        let mid = 0.5 * (lo + hi);
        if sinc(detune - mid).abs() / sinc(mid) < ratio {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    sinc(0.5 * (lo + hi)).powi(2)
}

/// Why a window is not a hit (diagnostics for the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    Quiet,
    RelativePeak,
    EnergyShare,
    Frequency,
    Level,
    Twist,
    Harmonic,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    digit: Option<DtmfDigit>,
    hits: u32,
    start: u64,
    /// Tone power of the last hits, a ring indexed by `hits`.
    powers: [f64; HITS_TO_START as usize],
}

impl Run {
    const EMPTY: Run = Run {
        digit: None,
        hits: 0,
        start: 0,
        powers: [0.0; HITS_TO_START as usize],
    };

    fn record(&mut self, power: f64) {
        self.powers[self.hits as usize % self.powers.len()] = power;
        self.hits += 1;
    }

    /// The last `HITS_TO_START` hits are there and steady within `spread`.
    fn qualifies(&self, spread: f64) -> bool {
        let max = self.powers.iter().copied().fold(f64::MIN, f64::max);
        let min = self.powers.iter().copied().fold(f64::MAX, f64::min);
        self.hits >= HITS_TO_START && max <= min * spread
    }
}

#[derive(Debug, Clone, Copy)]
struct Active {
    digit: DtmfDigit,
    start: u64,
    last_hit_end: u64,
    misses: u32,
}

/// Goertzel DTMF detector (see the module docs).
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    config: DtmfDetectorConfig,
    sample_rate: u32,
    window: Vec<f32>,
    filled: usize,
    hop: usize,
    /// Sample position of `window[0]`.
    window_start: u64,
    notch_delay: usize,
    tones: [ToneFilter; 8],
    harmonics: [f64; 4],
    min_tone_power: f64,
    normal_twist: f64,
    reverse_twist: f64,
    relative_peak: f64,
    harmonic: f64,
    stability: f64,
    run: Run,
    active: Option<Active>,
}

impl DtmfDetector {
    /// A detector at `sample_rate` (8000..=48000 Hz) with default limits.
    pub fn new(sample_rate: u32) -> Result<Self, DtmfError> {
        Self::with_config(sample_rate, DtmfDetectorConfig::default())
    }

    /// A detector with the given limits.
    pub fn with_config(sample_rate: u32, config: DtmfDetectorConfig) -> Result<Self, DtmfError> {
        check_rate(sample_rate)?;
        let rate = f64::from(sample_rate);
        let len = (WINDOW_SECONDS * rate).round() as usize;
        let notch_delay = ((rate / 8000.0).round() as usize).max(1);
        // Bins of the notched measurement, which is 2 delays shorter.
        let bin_hz = rate / (len - 2 * notch_delay) as f64;
        let filter = |f: f32| {
            let f = f64::from(f);
            ToneFilter {
                center: Freq::new(f, rate, notch_delay),
                lower: Freq::new(f * (1.0 - DETUNE), rate, notch_delay),
                upper: Freq::new(f * (1.0 + DETUNE), rate, notch_delay),
                detune_bins: f * DETUNE / bin_hz,
            }
        };
        let mut tones = [filter(0.0); 8];
        for (i, &f) in LOW_GROUP_HZ.iter().chain(HIGH_GROUP_HZ.iter()).enumerate() {
            tones[i] = filter(f);
        }
        let harmonics = HIGH_GROUP_HZ.map(|f| goertzel_coeff(2.0 * f64::from(f), rate));
        Ok(Self {
            config,
            sample_rate,
            window: vec![0.0; len],
            filled: 0,
            hop: len / 2,
            window_start: 0,
            notch_delay,
            tones,
            harmonics,
            min_tone_power: db_to_power(config.min_tone_level_dbov),
            normal_twist: db_to_power(config.max_normal_twist_db),
            reverse_twist: db_to_power(config.max_reverse_twist_db),
            relative_peak: db_to_power(RELATIVE_PEAK_DB),
            harmonic: db_to_power(HARMONIC_DB),
            stability: db_to_power(STABILITY_DB),
            run: Run::EMPTY,
            active: None,
        })
    }

    /// The sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The limits in use.
    pub fn config(&self) -> DtmfDetectorConfig {
        self.config
    }

    /// The digit currently held, if any.
    pub fn active_digit(&self) -> Option<DtmfDigit> {
        self.active.map(|a| a.digit)
    }

    /// Forgets all state; positions restart at zero.
    pub fn reset(&mut self) {
        self.filled = 0;
        self.window_start = 0;
        self.run = Run::EMPTY;
        self.active = None;
    }

    /// Feeds a frame of any length; calls `on_event` for each digit start and
    /// end, in order.
    pub fn process(&mut self, frame: &[f32], mut on_event: impl FnMut(DtmfEvent)) {
        let mut rest = frame;
        while !rest.is_empty() {
            let take = (self.window.len() - self.filled).min(rest.len());
            let (head, tail) = rest.split_at(take);
            self.window[self.filled..self.filled + take].copy_from_slice(head);
            self.filled += take;
            rest = tail;
            if self.filled == self.window.len() {
                self.analyse_window(&mut on_event);
                self.window.copy_within(self.hop.., 0);
                self.filled -= self.hop;
                self.window_start += self.hop as u64;
            }
        }
    }

    fn analyse_window(&mut self, on_event: &mut impl FnMut(DtmfEvent)) {
        let start = self.window_start;
        let end = start + self.window.len() as u64;
        let hit = self.classify(&self.window).ok();

        match (hit, self.run.digit) {
            (Some((d, p)), Some(r)) if d == r => self.run.record(p),
            (Some((d, p)), _) => {
                self.run = Run {
                    digit: Some(d),
                    start,
                    ..Run::EMPTY
                };
                self.run.record(p);
            }
            (None, _) => self.run = Run::EMPTY,
        }

        if let Some(mut a) = self.active {
            if hit.map(|h| h.0) == Some(a.digit) {
                a.misses = 0;
                a.last_hit_end = end;
                self.active = Some(a);
            } else {
                a.misses += 1;
                self.active = Some(a);
                if a.misses >= MISSES_TO_END {
                    self.active = None;
                    on_event(DtmfEvent::Ended {
                        digit: a.digit,
                        at: a.last_hit_end,
                        duration: a.last_hit_end - a.start,
                    });
                }
            }
        }

        if let Some(digit) = self.run.digit
            && self.run.qualifies(self.stability)
            && self.active.is_none_or(|a| a.digit != digit)
        {
            if let Some(a) = self.active.take() {
                on_event(DtmfEvent::Ended {
                    digit: a.digit,
                    at: a.last_hit_end,
                    duration: a.last_hit_end - a.start,
                });
            }
            self.active = Some(Active {
                digit,
                start: self.run.start,
                last_hit_end: end,
                misses: 0,
            });
            on_event(DtmfEvent::Started {
                digit,
                at: self.run.start,
            });
        }
    }

    /// Decides whether a window holds a digit; returns it with the two
    /// tones' power.
    fn classify(&self, x: &[f32]) -> Result<(DtmfDigit, f64), Reject> {
        let energy = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
        // Finite input keeps every filter output below finite bounds.
        if !energy.is_finite() || energy < self.min_tone_power {
            return Err(Reject::Quiet);
        }
        let strongest = |group: &[f64]| {
            let mut best = 0;
            for (i, &p) in group.iter().enumerate() {
                if p > group[best] {
                    best = i;
                }
            }
            best
        };
        let mut plain = [0.0f64; 8];
        for (p, t) in plain.iter_mut().zip(&self.tones) {
            *p = goertzel(x, t.center.coeff);
        }
        let (row, col) = (strongest(&plain[..4]), strongest(&plain[4..]));
        // Measure each group with the other group's strongest tone notched
        // out: through the rectangular window's sidelobes it would swing
        // this group's powers by up to +-1.5 dB at 8 dB of twist.
        let notch = |index: usize| {
            if index < 4 {
                self.tones[4 + col].center
            } else {
                self.tones[row].center
            }
        };
        let measure =
            |index: usize, f: Freq| notched_goertzel(x, f, notch(index), self.notch_delay);
        // Powers corrected for the notch's gain at each filter: these
        // compare components at different frequencies.
        let mut raw = [0.0f64; 8];
        let mut power = [0.0f64; 8];
        for (i, (r, p)) in raw.iter_mut().zip(power.iter_mut()).enumerate() {
            let f = self.tones[i].center;
            *r = measure(i, f);
            *p = *r / notch_gain(f, notch(i));
        }
        let (low, high) = power.split_at(4);
        let (p_low, p_high) = (low[row], high[col]);
        for (group, best) in [(low, row), (high, col)] {
            let peak = group[best];
            if group
                .iter()
                .enumerate()
                .any(|(i, &p)| i != best && p * self.relative_peak > peak)
            {
                return Err(Reject::RelativePeak);
            }
        }
        if p_low + p_high < MIN_TONE_ENERGY_SHARE * energy {
            return Err(Reject::EnergyShare);
        }
        let mut levels = [0.0f64; 2];
        for (level, (index, p)) in levels.iter_mut().zip([(row, p_low), (4 + col, p_high)]) {
            // One tone seen through three filters: compare them without
            // the gain correction, so the decision stays at the midpoint.
            let t = &self.tones[index];
            let side = measure(index, t.lower).max(measure(index, t.upper));
            if side > raw[index] {
                return Err(Reject::Frequency);
            }
            *level = p / offset_loss(side / raw[index], t.detune_bins);
        }
        let [l_low, l_high] = levels;
        if l_low < self.min_tone_power || l_high < self.min_tone_power {
            return Err(Reject::Level);
        }
        if l_low > l_high * self.normal_twist || l_high > l_low * self.reverse_twist {
            return Err(Reject::Twist);
        }
        if goertzel(x, self.harmonics[col]) * self.harmonic > p_high {
            return Err(Reject::Harmonic);
        }
        Ok((KEYPAD[row][col], p_low + p_high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const RATE: u32 = 8000;

    fn ms(rate: u32, millis: f64) -> usize {
        (millis * f64::from(rate) / 1000.0).round() as usize
    }

    fn amplitude(dbov: f64) -> f64 {
        std::f64::consts::SQRT_2 * 10f64.powf(dbov / 20.0)
    }

    /// Two sines of arbitrary frequency and level (dBov per tone), clamped
    /// to the PCM range.
    fn dual_tone(rate: u32, (f1, db1): (f64, f64), (f2, db2): (f64, f64), n: usize) -> Vec<f32> {
        let (a1, a2) = (amplitude(db1), amplitude(db2));
        let w = std::f64::consts::TAU / f64::from(rate);
        (0..n)
            .map(|i| {
                let t = i as f64;
                let v = a1 * (w * f1 * t).sin() + a2 * (w * f2 * t).sin();
                (v as f32).clamp(-1.0, MAX_SAMPLE)
            })
            .collect()
    }

    fn nominal(d: DtmfDigit) -> (f64, f64) {
        let (l, h) = d.frequencies();
        (f64::from(l), f64::from(h))
    }

    /// Silence, the signal, then 200 ms of silence.
    fn framed(lead: usize, signal: &[f32], rate: u32) -> Vec<f32> {
        let mut v = vec![0.0; lead];
        v.extend_from_slice(signal);
        v.extend(std::iter::repeat_n(0.0, ms(rate, 200.0)));
        v
    }

    fn events(rate: u32, samples: &[f32]) -> Vec<DtmfEvent> {
        let mut det = DtmfDetector::new(rate).unwrap();
        let mut out = Vec::new();
        for frame in samples.chunks(ms(rate, 20.0)) {
            det.process(frame, |e| out.push(e));
        }
        out
    }

    fn started(events: &[DtmfEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                DtmfEvent::Started { digit, .. } => Some(digit.to_char()),
                DtmfEvent::Ended { .. } => None,
            })
            .collect()
    }

    fn detected(rate: u32, samples: &[f32]) -> String {
        started(&events(rate, samples))
    }

    fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
        // Box-Muller.
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn add_noise(x: &mut [f32], noise_power: f64, rng: &mut ChaCha8Rng) {
        let sigma = noise_power.sqrt();
        for v in x {
            *v = (f64::from(*v) + sigma * gaussian(rng)).clamp(-1.0, f64::from(MAX_SAMPLE)) as f32;
        }
    }

    fn speech() -> Vec<f32> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/audio/speech-8k-60s.wav"
        );
        let mut reader = hound::WavReader::open(path).unwrap();
        assert_eq!(reader.spec().sample_rate, 8000);
        assert_eq!(reader.spec().channels, 1);
        reader
            .samples::<i16>()
            .map(|s| f32::from(s.unwrap()) / 32768.0)
            .collect()
    }

    fn generate(rate: u32, digits: &str, tone_ms: u64, pause_ms: u64, dbov: f32) -> Vec<f32> {
        let mut g = DtmfGenerator::new(rate).unwrap();
        g.set_level(dbov);
        g.set_timing(
            Duration::from_millis(tone_ms),
            Duration::from_millis(pause_ms),
        );
        g.push_digits(digits).unwrap();
        let n = digits.len() * ms(rate, (tone_ms + pause_ms) as f64);
        let mut out = vec![0.0; n];
        g.fill(&mut out);
        assert!(g.is_idle());
        out
    }

    const ALL_DIGITS: &str = "1234567890*#ABCD";

    // ----- RFC 4733 payload -----

    #[test]
    fn a_payload_round_trips_through_build_and_parse() {
        let e = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 0x1234,
        };
        let mut buf = [0u8; 8];
        assert_eq!(e.build(&mut buf), Ok(4));
        assert_eq!(&buf[..4], &[11, 0x8a, 0x12, 0x34]);
        assert_eq!(TelephoneEvent::parse(&buf[..4]), Ok(e));
        assert_eq!(e.digit(), Some(DtmfDigit::Hash));
    }

    #[test]
    fn a_payload_of_the_wrong_length_is_a_typed_error() {
        for len in [0, 1, 3, 5, 8] {
            assert_eq!(
                TelephoneEvent::parse(&vec![0u8; len]),
                Err(TelephoneEventError::WrongLength { len })
            );
        }
    }

    #[test]
    fn the_reserved_bit_is_ignored_on_receipt_and_sent_as_zero() {
        let parsed = TelephoneEvent::parse(&[5, 0x40 | 0x80 | 7, 0, 160]).unwrap();
        assert_eq!(
            parsed,
            TelephoneEvent {
                event: 5,
                end: true,
                volume: 7,
                duration: 160
            }
        );
        let mut buf = [0xffu8; 4];
        parsed.build(&mut buf).unwrap();
        assert_eq!(buf[1] & 0x40, 0);
    }

    #[test]
    fn building_rejects_a_bad_volume_and_a_short_buffer() {
        let mut e = TelephoneEvent {
            event: 1,
            end: false,
            volume: 64,
            duration: 0,
        };
        assert_eq!(
            e.build(&mut [0; 4]),
            Err(TelephoneEventError::VolumeOutOfRange(64))
        );
        e.volume = 63;
        assert_eq!(
            e.build(&mut [0; 3]),
            Err(TelephoneEventError::BufferTooSmall { len: 3 })
        );
    }

    #[test]
    fn every_digit_sits_on_its_keypad_row_and_column() {
        for (r, row) in KEYPAD.iter().enumerate() {
            for (c, &d) in row.iter().enumerate() {
                assert_eq!(d.row_column(), (r, c));
            }
        }
        assert_eq!(DtmfDigit::D0.frequencies(), (941.0, 1336.0));
        assert_eq!(DtmfDigit::A.frequencies(), (697.0, 1633.0));
    }

    #[test]
    fn event_codes_above_15_are_kept_but_are_not_digits() {
        let e = TelephoneEvent::parse(&[16, 0, 0, 0]).unwrap();
        assert_eq!(e.event, 16);
        assert_eq!(e.digit(), None);
        for d in DtmfDigit::ALL {
            assert_eq!(DtmfDigit::from_event_code(d.event_code()), Some(d));
            assert_eq!(DtmfDigit::from_char(d.to_char()), Some(d));
        }
    }

    // ----- RFC 4733 receiver -----

    fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
        let mut b = [0; 4];
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .build(&mut b)
        .unwrap();
        b
    }

    fn feed(
        rx: &mut TelephoneEventReceiver,
        ts: u32,
        marker: bool,
        event: u8,
        end: bool,
        duration: u16,
    ) -> Vec<ReceivedEvent> {
        rx.handle_packet(ts, marker, &payload(event, end, duration))
            .unwrap()
            .collect()
    }

    fn started_ev(event: u8, timestamp: u32) -> ReceivedEvent {
        ReceivedEvent::Started {
            event,
            timestamp,
            volume: 10,
        }
    }

    fn ended_ev(event: u8, timestamp: u32, duration: u64, cause: EndCause) -> ReceivedEvent {
        ReceivedEvent::Ended {
            event,
            timestamp,
            duration,
            cause,
        }
    }

    #[test]
    fn a_digit_is_reported_once_despite_updates_and_three_end_packets() {
        let mut rx = TelephoneEventReceiver::new(8000);
        assert_eq!(
            feed(&mut rx, 1000, true, 5, false, 400),
            [started_ev(5, 1000)]
        );
        assert!(feed(&mut rx, 1000, false, 5, false, 800).is_empty());
        assert!(feed(&mut rx, 1000, false, 5, false, 1200).is_empty());
        assert_eq!(
            feed(&mut rx, 1000, false, 5, true, 1280),
            [ended_ev(5, 1000, 1280, EndCause::EndBit)]
        );
        assert!(feed(&mut rx, 1000, false, 5, true, 1280).is_empty());
        assert!(feed(&mut rx, 1000, false, 5, true, 1280).is_empty());
        assert_eq!(rx.stats().ignored, 2);
        assert_eq!(rx.poll_timeout(), None);
    }

    #[test]
    fn a_duplicated_or_reordered_update_does_not_restart_the_digit() {
        let mut rx = TelephoneEventReceiver::new(8000);
        assert_eq!(feed(&mut rx, 0, true, 1, false, 400).len(), 1);
        assert!(feed(&mut rx, 0, false, 1, false, 1200).is_empty());
        assert!(feed(&mut rx, 0, false, 1, false, 800).is_empty());
        assert!(feed(&mut rx, 0, true, 1, false, 400).is_empty());
        assert_eq!(
            feed(&mut rx, 0, false, 1, true, 1600),
            [ended_ev(1, 0, 1600, EndCause::EndBit)]
        );
        // A packet of an event older than the last one is stale.
        assert!(feed(&mut rx, u32::MAX - 100, true, 2, false, 400).is_empty());
    }

    #[test]
    fn the_same_digit_twice_is_two_events_told_apart_by_their_timestamps() {
        let mut rx = TelephoneEventReceiver::new(8000);
        let mut all = Vec::new();
        for ts in [8000u32, 9600] {
            all.extend(feed(&mut rx, ts, true, 7, false, 400));
            all.extend(feed(&mut rx, ts, false, 7, true, 800));
            all.extend(feed(&mut rx, ts, false, 7, true, 800));
            all.extend(feed(&mut rx, ts, false, 7, true, 800));
        }
        assert_eq!(
            all,
            [
                started_ev(7, 8000),
                ended_ev(7, 8000, 800, EndCause::EndBit),
                started_ev(7, 9600),
                ended_ev(7, 9600, 800, EndCause::EndBit),
            ]
        );
    }

    #[test]
    fn a_lost_start_packet_still_starts_the_digit_at_its_timestamp() {
        let mut rx = TelephoneEventReceiver::new(8000);
        assert_eq!(
            feed(&mut rx, 320, false, 9, false, 800),
            [started_ev(9, 320)]
        );
        assert_eq!(
            feed(&mut rx, 320, false, 9, true, 960),
            [ended_ev(9, 320, 960, EndCause::EndBit)]
        );
    }

    #[test]
    fn an_event_seen_only_by_its_end_packet_starts_and_ends_at_once() {
        let mut rx = TelephoneEventReceiver::new(8000);
        assert_eq!(
            feed(&mut rx, 0, false, 3, true, 640),
            [started_ev(3, 0), ended_ev(3, 0, 640, EndCause::EndBit)]
        );
    }

    #[test]
    fn a_lost_end_is_ended_by_a_timeout_in_media_time_and_late_packets_are_ignored() {
        let mut rx = TelephoneEventReceiver::with_end_timeout(2400);
        let _ = feed(&mut rx, 16000, true, 4, false, 400);
        let _ = feed(&mut rx, 16000, false, 4, false, 800);
        assert_eq!(rx.poll_timeout(), Some(16000 + 800 + 2400));
        assert_eq!(rx.handle_timeout(16000 + 3199), None);
        assert_eq!(
            rx.handle_timeout(16000 + 3200),
            Some(ended_ev(4, 16000, 800, EndCause::Timeout))
        );
        assert_eq!(rx.handle_timeout(20000), None);
        // The end packets arrive late: the digit is not reported again.
        assert!(feed(&mut rx, 16000, false, 4, true, 1200).is_empty());
        assert!(feed(&mut rx, 16000, false, 4, false, 1600).is_empty());
        assert_eq!(rx.open_event(), None);
    }

    #[test]
    fn a_lost_end_is_ended_by_the_next_events_timestamp() {
        let mut rx = TelephoneEventReceiver::new(8000);
        let _ = feed(&mut rx, 0, true, 1, false, 400);
        let _ = feed(&mut rx, 0, false, 1, false, 800);
        assert_eq!(
            feed(&mut rx, 2000, true, 2, false, 400),
            [
                ended_ev(1, 0, 800, EndCause::Superseded),
                started_ev(2, 2000)
            ]
        );
    }

    #[test]
    fn an_event_across_the_timestamp_wrap_is_one_event() {
        let mut rx = TelephoneEventReceiver::new(8000);
        let ts = u32::MAX - 200;
        let _ = feed(&mut rx, ts, true, 0, false, 400);
        assert!(feed(&mut rx, ts, false, 0, true, 800).len() == 1);
        // The next event's timestamp has wrapped; it is newer, not stale.
        assert_eq!(
            feed(&mut rx, 1000, true, 8, false, 400),
            [started_ev(8, 1000)]
        );
    }

    #[test]
    fn a_long_event_continues_across_16_bit_segments() {
        let mut rx = TelephoneEventReceiver::new(8000);
        let t0 = 5000u32;
        assert_eq!(feed(&mut rx, t0, true, 0, false, 400).len(), 1);
        let _ = feed(&mut rx, t0, false, 0, false, 0xFFFF);
        let t1 = t0 + 0xFFFF;
        assert!(feed(&mut rx, t1, false, 0, false, 400).is_empty());
        // The first update of the third segment is lost; its second is not.
        let t2 = t1 + 0xFFFF;
        assert!(feed(&mut rx, t2, false, 0, false, 800).is_empty());
        assert_eq!(
            feed(&mut rx, t2, false, 0, true, 1000),
            [ended_ev(0, t0, 2 * 0xFFFF + 1000, EndCause::EndBit)]
        );
    }

    #[test]
    fn hostile_payloads_never_panic_and_are_counted() {
        let mut rng = ChaCha8Rng::seed_from_u64(4733);
        let mut rx = TelephoneEventReceiver::new(8000);
        let mut starts = 0u64;
        let mut ends = 0u64;
        for _ in 0..20_000 {
            let len = rng.random_range(0..7);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let ts = rng.random_range(0..20_000u32);
            match rx.handle_packet(ts, rng.random(), &bytes) {
                Ok(evs) => {
                    for e in evs {
                        match e {
                            ReceivedEvent::Started { .. } => starts += 1,
                            ReceivedEvent::Ended { .. } => ends += 1,
                        }
                    }
                }
                Err(e) => assert_eq!(e, TelephoneEventError::WrongLength { len }),
            }
            if let Some(e) = rx.handle_timeout(rng.random()) {
                assert!(matches!(e, ReceivedEvent::Ended { .. }));
                ends += 1;
            }
        }
        // Every start is matched by exactly one end, except the open one.
        assert_eq!(starts, ends + u64::from(rx.open_event().is_some()));
        let s = rx.stats();
        assert_eq!(s.packets, 20_000);
        assert!(s.malformed > 0 && s.ignored > 0);
    }

    // ----- RFC 4733 sender -----

    fn drain(tx: &mut TelephoneEventSender, from: u32, to: u32) -> Vec<OutgoingTelephoneEvent> {
        let mut out = Vec::new();
        let mut now = from;
        while now != to {
            while let Some(p) = tx.poll_packet(now) {
                assert_eq!(p.send_at, now, "packets come out on time");
                out.push(p);
            }
            now = now.wrapping_add(1);
        }
        out
    }

    #[test]
    fn the_sender_marks_the_start_updates_each_interval_and_sends_three_ends() {
        let mut tx = TelephoneEventSender::new(400, 10).unwrap();
        tx.send_event(5, 8000, 1000).unwrap();
        assert_eq!(tx.send_event(6, 9000, 1000), Err(TelephoneEventError::Busy));
        assert_eq!(tx.poll_timeout(), Some(8400));
        let packets = drain(&mut tx, 8000, 12000);
        let summary: Vec<(u32, u32, bool, bool, u16)> = packets
            .iter()
            .map(|p| {
                (
                    p.send_at,
                    p.timestamp,
                    p.marker,
                    p.payload.end,
                    p.payload.duration,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (8400, 8000, true, false, 400),
                (8800, 8000, false, false, 800),
                (9000, 8000, false, true, 1000),
                (9400, 8000, false, true, 1000),
                (9800, 8000, false, true, 1000),
            ]
        );
        assert!(tx.is_idle());
    }

    #[test]
    fn a_digit_shorter_than_one_interval_is_one_packet_sent_three_times() {
        let mut tx = TelephoneEventSender::new(400, 0).unwrap();
        tx.send_event(1, 0, 240).unwrap();
        let packets = drain(&mut tx, 0, 2000);
        assert_eq!(packets.len(), 3);
        assert!(packets[0].marker && packets.iter().all(|p| p.payload.end));
        assert!(packets.iter().all(|p| p.payload.duration == 240));
    }

    #[test]
    fn the_sender_rejects_bad_arguments() {
        assert!(TelephoneEventSender::new(0, 10).is_err());
        assert!(TelephoneEventSender::new(0x1_0000, 10).is_err());
        assert!(TelephoneEventSender::new(400, 64).is_err());
        let mut tx = TelephoneEventSender::new(400, 10).unwrap();
        assert_eq!(
            tx.send_event(1, 0, 0),
            Err(TelephoneEventError::ZeroDuration)
        );
    }

    #[test]
    fn a_long_event_is_sent_in_segments_that_the_receiver_sums() {
        // 20 s at 8 kHz = 160000 ticks: three segments.
        let mut tx = TelephoneEventSender::new(400, 10).unwrap();
        let start = u32::MAX - 50_000; // also crosses the timestamp wrap
        tx.send_event(0, start, 160_000).unwrap();
        let packets = drain(&mut tx, start, start.wrapping_add(162_000));
        let segments: Vec<u32> = packets.iter().fold(Vec::new(), |mut v, p| {
            if v.last() != Some(&p.timestamp) {
                v.push(p.timestamp);
            }
            v
        });
        assert_eq!(
            segments,
            [
                start,
                start.wrapping_add(0xFFFF),
                start.wrapping_add(2 * 0xFFFF)
            ]
        );
        assert_eq!(packets.iter().filter(|p| p.marker).count(), 1);
        let closing: Vec<_> = packets
            .iter()
            .filter(|p| p.payload.duration == 0xFFFF)
            .collect();
        assert_eq!(closing.len(), 2);
        assert!(closing.iter().all(|p| !p.payload.end));
        let mut rx = TelephoneEventReceiver::new(8000);
        let mut got = Vec::new();
        for p in &packets {
            let mut b = [0; 4];
            p.payload.build(&mut b).unwrap();
            got.extend(rx.handle_packet(p.timestamp, p.marker, &b).unwrap());
        }
        assert_eq!(
            got,
            [
                started_ev(0, start),
                ended_ev(0, start, 160_000, EndCause::EndBit)
            ]
        );
    }

    #[test]
    fn every_digit_arrives_exactly_once_over_a_lossy_reordering_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut lost_end = 0;
        for trial in 0..200u32 {
            let mut tx = TelephoneEventSender::new(160, 10).unwrap();
            let mut rx = TelephoneEventReceiver::new(8000);
            let mut wire = Vec::new();
            let mut ts = trial.wrapping_mul(977_777);
            let mut sent = Vec::new();
            for _ in 0..8 {
                let event = rng.random_range(0..16u8);
                let len = rng.random_range(400..3000);
                tx.send_event(event, ts, len).unwrap();
                sent.push((event, ts));
                wire.extend(drain(&mut tx, ts, ts.wrapping_add(len + 800)));
                ts = ts.wrapping_add(len + 800);
            }
            // 20 % loss, 10 % duplicates, adjacent swaps.
            let mut path: Vec<_> = Vec::new();
            for p in wire {
                if rng.random_bool(0.2) {
                    continue;
                }
                path.push(p);
                if rng.random_bool(0.1) {
                    path.push(p);
                }
            }
            for i in 1..path.len() {
                if rng.random_bool(0.1) {
                    path.swap(i - 1, i);
                }
            }
            let mut got = Vec::new();
            for p in &path {
                if let Some(e) = rx.handle_timeout(p.send_at) {
                    got.push(e);
                }
                let mut b = [0; 4];
                p.payload.build(&mut b).unwrap();
                got.extend(rx.handle_packet(p.timestamp, p.marker, &b).unwrap());
            }
            // Media time runs on past the last event's timeout.
            got.extend(rx.handle_timeout(ts.wrapping_add(8000)));
            let starts: Vec<(u8, u32)> = got
                .iter()
                .filter_map(|e| match *e {
                    ReceivedEvent::Started {
                        event, timestamp, ..
                    } => Some((event, timestamp)),
                    _ => None,
                })
                .collect();
            let ends = got
                .iter()
                .filter(|e| matches!(e, ReceivedEvent::Ended { .. }))
                .count();
            lost_end += got
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        ReceivedEvent::Ended {
                            cause: EndCause::Timeout | EndCause::Superseded,
                            ..
                        }
                    )
                })
                .count();
            // With 20 % loss an event can lose all of its 4+ packets only
            // rarely; every event that got through is reported once.
            let expected: Vec<_> = sent
                .iter()
                .copied()
                .filter(|&(_, t)| path.iter().any(|p| p.timestamp == t))
                .collect();
            assert_eq!(starts, expected, "trial {trial}");
            assert_eq!(ends, starts.len(), "trial {trial}");
        }
        println!("lossy path: {lost_end} events ended without an end packet");
    }

    // ----- generator -----

    #[test]
    fn the_generator_plays_each_tone_at_its_level_and_frequencies() {
        for rate in [8000, 16000, 48000] {
            let x = generate(rate, "5", 1000, 0, -10.0);
            let mean_power: f64 =
                x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64;
            // Two tones at -10 dBov: -6.99 dBov together.
            let db = 10.0 * mean_power.log10();
            assert!((db - -6.99).abs() < 0.02, "{rate}: {db}");
            let c = |f: f64| goertzel(&x, goertzel_coeff(f, f64::from(rate)));
            for f in [770.0, 1336.0] {
                assert!((10.0 * c(f).log10() - -10.0).abs() < 0.05, "{rate} {f}");
            }
            assert!(c(697.0) < 1e-4 && c(1477.0) < 1e-4);
        }
    }

    #[test]
    fn the_generator_phase_is_continuous_across_frame_boundaries() {
        let whole = generate(48000, "19#", 70, 30, -8.0);
        let mut g = DtmfGenerator::new(48000).unwrap();
        g.set_level(-8.0);
        g.set_timing(Duration::from_millis(70), Duration::from_millis(30));
        g.push_digits("19#").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut chunked = Vec::new();
        while chunked.len() < whole.len() {
            let n = rng.random_range(1..500).min(whole.len() - chunked.len());
            let mut frame = vec![1.0; n];
            g.fill(&mut frame);
            chunked.extend(frame);
        }
        assert_eq!(chunked, whole);
        // And the waveform has no jump: within each tone (70 ms every
        // 100 ms), successive samples differ by at most the slope of the
        // two sines.
        let max_step = amplitude(-8.0) * std::f64::consts::TAU * (941.0 + 1477.0) / 48000.0;
        for tone in whole.chunks(4800) {
            for w in tone[..3360].windows(2) {
                assert!(f64::from((w[1] - w[0]).abs()) <= max_step + 1e-6);
            }
            assert!(tone[3360..].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn the_generator_keeps_tone_and_pause_lengths_exact() {
        let x = generate(8000, "11", 40, 60, -10.0);
        assert_eq!(x.len(), 1600);
        // Tone 0..320, pause 320..800, tone 800..1120, pause 1120..1600.
        assert!(x[320..800].iter().all(|&v| v == 0.0));
        assert!(x[1120..].iter().all(|&v| v == 0.0));
        assert!(x[319] != 0.0 && x[801] != 0.0 && x[1119] != 0.0);
        // Phase restarts at zero for each tone.
        assert_eq!(x[0..320], x[800..1120]);
    }

    #[test]
    fn the_generator_rejects_bad_input_and_clips_instead_of_wrapping() {
        assert_eq!(
            DtmfGenerator::new(7999).unwrap_err(),
            DtmfError::UnsupportedSampleRate(7999)
        );
        let mut g = DtmfGenerator::new(8000).unwrap();
        assert_eq!(g.push_digits("12x"), Err(DtmfError::InvalidDigit('x')));
        assert!(g.is_idle(), "nothing is queued from a bad string");
        let long = "1".repeat(DtmfGenerator::QUEUE_LEN + 1);
        assert_eq!(
            g.push_digits(&long),
            Err(DtmfError::QueueFull(DtmfGenerator::QUEUE_LEN))
        );
        g.set_level(0.0);
        g.push_digit(DtmfDigit::D).unwrap();
        let mut out = vec![0.0; 800];
        g.fill(&mut out);
        assert!(out.iter().all(|v| (-1.0..1.0).contains(v)));
        assert!(out.contains(&MAX_SAMPLE));
    }

    // ----- detector -----

    #[test]
    fn every_digit_is_detected_at_8_16_and_48_khz() {
        for rate in [8000, 16000, 48000] {
            let x = framed(
                ms(rate, 30.0),
                &generate(rate, ALL_DIGITS, 50, 50, -10.0),
                rate,
            );
            let ev = events(rate, &x);
            assert_eq!(started(&ev), ALL_DIGITS, "{rate} Hz");
            assert_eq!(ev.len(), 32, "{rate} Hz: every start has an end");
            // Start positions are within one window of the true onset.
            let onsets: Vec<u64> = ev
                .iter()
                .filter_map(|e| match e {
                    DtmfEvent::Started { at, .. } => Some(*at),
                    _ => None,
                })
                .collect();
            for (i, at) in onsets.iter().enumerate() {
                let truth = (ms(rate, 30.0) + i * ms(rate, 100.0)) as i64;
                assert!(
                    (*at as i64 - truth).abs() <= ms(rate, 13.25) as i64,
                    "{rate} {i}"
                );
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_the_frame_length() {
        let x = framed(77, &generate(RATE, "90#", 45, 45, -20.0), RATE);
        let reference = events(RATE, &x);
        assert_eq!(started(&reference), "90#");
        for frame in [1, 13, 80, 160, 161, x.len()] {
            let mut det = DtmfDetector::new(RATE).unwrap();
            let mut got = Vec::new();
            for f in x.chunks(frame) {
                det.process(f, |e| got.push(e));
            }
            assert_eq!(got, reference, "frame {frame}");
        }
    }

    /// Detection of the digit made of `low` and `high` (Hz, level dBov) for a
    /// tone of `tone_ms`, at several alignments to the analysis windows.
    fn accepted_at_alignments(
        rate: u32,
        low: (f64, f64),
        high: (f64, f64),
        tone_ms: f64,
        alignments: &[usize],
        expected: DtmfDigit,
    ) -> usize {
        alignments
            .iter()
            .filter(|&&lead| {
                let x = framed(lead, &dual_tone(rate, low, high, ms(rate, tone_ms)), rate);
                let got = detected(rate, &x);
                assert!(
                    got.is_empty() || got == expected.to_char().to_string(),
                    "wrong digit {got:?} for {low:?} {high:?}"
                );
                !got.is_empty()
            })
            .count()
    }

    const ALIGNMENTS: [usize; 4] = [0, 13, 29, 41];

    /// For each of the 8 tones: the offsets (percent) accepted at all
    /// alignments.
    fn frequency_sweep() -> Vec<(f64, Vec<(f64, usize)>)> {
        let mut out = Vec::new();
        for (group, freqs) in [LOW_GROUP_HZ, HIGH_GROUP_HZ].iter().enumerate() {
            for (i, &f) in freqs.iter().enumerate() {
                // Pair with the second tone of the other group.
                let digit = if group == 0 {
                    KEYPAD[i][1]
                } else {
                    KEYPAD[1][i]
                };
                let (nl, nh) = nominal(digit);
                let mut row = Vec::new();
                for step in -20..=20 {
                    let pct = f64::from(step) * 0.25;
                    let shifted = f64::from(f) * (1.0 + pct / 100.0);
                    let (low, high) = if group == 0 {
                        ((shifted, -10.0), (nh, -10.0))
                    } else {
                        ((nl, -10.0), (shifted, -10.0))
                    };
                    row.push((
                        pct,
                        accepted_at_alignments(RATE, low, high, 60.0, &ALIGNMENTS, digit),
                    ));
                }
                out.push((f64::from(f), row));
            }
        }
        out
    }

    #[test]
    fn frequency_errors_up_to_1_5_percent_are_accepted_and_from_3_5_percent_rejected() {
        println!("frequency sweep (60 ms tones, -10 dBov, 4 alignments):");
        for (f, row) in frequency_sweep() {
            let accepted: Vec<f64> = row
                .iter()
                .filter(|r| r.1 == ALIGNMENTS.len())
                .map(|r| r.0)
                .collect();
            let any: Vec<f64> = row.iter().filter(|r| r.1 > 0).map(|r| r.0).collect();
            println!(
                "  {f:6.0} Hz: always accepted {:+.2}% .. {:+.2}%, ever accepted {:+.2}% .. {:+.2}%",
                accepted.first().unwrap(),
                accepted.last().unwrap(),
                any.first().unwrap(),
                any.last().unwrap()
            );
            for (pct, n) in row {
                if pct.abs() <= 1.5 {
                    assert_eq!(n, ALIGNMENTS.len(), "{f} Hz {pct:+}% must be accepted");
                }
                if pct.abs() >= 3.5 {
                    assert_eq!(n, 0, "{f} Hz {pct:+}% must be rejected");
                }
            }
        }
    }

    #[test]
    fn tones_of_40_ms_are_accepted_and_tones_under_23_ms_rejected() {
        // Every alignment to the 53-sample hop, every 4th sample.
        let alignments: Vec<usize> = (0..53).step_by(4).collect();
        println!(
            "duration sweep (digits 1, 5, 9, D; {} alignments):",
            alignments.len()
        );
        let digits = [DtmfDigit::D1, DtmfDigit::D5, DtmfDigit::D9, DtmfDigit::D];
        let mut shortest_always = f64::MAX;
        let mut longest_never = 0.0f64;
        for tenth in (150..=450).step_by(5) {
            let tone_ms = f64::from(tenth) / 10.0;
            let mut hits = 0;
            for d in digits {
                let (l, h) = nominal(d);
                hits +=
                    accepted_at_alignments(RATE, (l, -10.0), (h, -10.0), tone_ms, &alignments, d);
            }
            let total = alignments.len() * digits.len();
            println!("  {tone_ms:4.1} ms: {hits}/{total}");
            if hits == 0 {
                longest_never = longest_never.max(tone_ms);
            }
            if hits == total {
                shortest_always = shortest_always.min(tone_ms);
            }
            if tone_ms >= 40.0 {
                assert_eq!(hits, total, "{tone_ms} ms must be accepted");
            }
            if tone_ms <= 23.0 {
                assert_eq!(hits, 0, "{tone_ms} ms must be rejected");
            }
        }
        println!("  never accepted up to {longest_never} ms, always from {shortest_always} ms");
    }

    fn twist_hits(twist_db: f64) -> usize {
        // Positive: normal twist (high tone weaker).
        let (low_db, high_db) = if twist_db >= 0.0 {
            (-12.0, -12.0 - twist_db)
        } else {
            (-12.0 + twist_db, -12.0)
        };
        DtmfDigit::ALL
            .iter()
            .map(|&d| {
                let (l, h) = nominal(d);
                accepted_at_alignments(RATE, (l, low_db), (h, high_db), 60.0, &[0, 29], d)
            })
            .sum()
    }

    #[test]
    fn normal_twist_of_8_db_and_reverse_twist_of_4_db_are_accepted_and_10_and_6_rejected() {
        println!("twist sweep (16 digits x 2 alignments; + = low tone louder):");
        for half_db in -16..=24 {
            let twist = f64::from(half_db) / 2.0;
            println!("  {twist:+5.1} dB: {}/32", twist_hits(twist));
        }
        assert_eq!(twist_hits(8.0), 32);
        assert_eq!(twist_hits(-4.0), 32);
        assert_eq!(twist_hits(10.0), 0);
        assert_eq!(twist_hits(-6.0), 0);
    }

    fn level_hits(dbov: f64) -> usize {
        DtmfDigit::ALL
            .iter()
            .map(|&d| {
                let (l, h) = nominal(d);
                accepted_at_alignments(RATE, (l, dbov), (h, dbov), 60.0, &[0, 29], d)
            })
            .sum()
    }

    #[test]
    fn levels_from_minus_26_to_minus_9_dbov_are_accepted_and_very_low_levels_rejected() {
        println!("level sweep per tone (16 digits x 2 alignments; above -9 dBov the sum clips):");
        for db in (-44..=-3).rev() {
            println!("  {db:4} dBov: {}/32", level_hits(f64::from(db)));
        }
        for db in -26..=-9 {
            assert_eq!(level_hits(f64::from(db)), 32, "{db} dBov");
        }
        for db in [-36.0, -40.0, -50.0] {
            assert_eq!(level_hits(db), 0, "{db} dBov");
        }
    }

    fn noisy_sequence(seed: u64, snr_db: f64) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = framed(
            rng.random_range(0..200),
            &generate(RATE, ALL_DIGITS, 60, 60, -16.0),
            RATE,
        );
        // SNR against the dual tone's power (two tones at -16 dBov).
        let tone_power = 2.0 * 10f64.powf(-1.6);
        add_noise(&mut x, tone_power / 10f64.powf(snr_db / 10.0), &mut rng);
        detected(RATE, &x)
    }

    #[test]
    fn digits_are_detected_in_white_noise_at_15_db_snr() {
        println!("white noise (60 ms tones, 60 ms pauses, 16 digits x 10 seeds):");
        for snr in [20.0, 15.0, 12.0, 10.0, 8.0, 6.0] {
            let exact = (0..10)
                .filter(|&s| noisy_sequence(s, snr) == ALL_DIGITS)
                .count();
            println!("  SNR {snr:4.1} dB: {exact}/10 sequences exact");
        }
        for seed in 0..10 {
            assert_eq!(noisy_sequence(seed, 15.0), ALL_DIGITS, "seed {seed}");
        }
    }

    #[test]
    fn two_digits_separated_by_a_40_ms_pause_are_two_digits() {
        for digits in ["55", "56", "##", "1D"] {
            for lead in ALIGNMENTS {
                let x = framed(lead, &generate(RATE, digits, 40, 40, -10.0), RATE);
                assert_eq!(detected(RATE, &x), digits, "lead {lead}");
            }
        }
    }

    #[test]
    fn a_digit_reports_its_duration_within_a_window() {
        let x = framed(100, &generate(RATE, "7", 200, 0, -10.0), RATE);
        let ev = events(RATE, &x);
        let DtmfEvent::Ended { duration, .. } = ev[1] else {
            panic!("{ev:?}");
        };
        assert!((duration as i64 - 1600).abs() <= 106, "{duration}");
    }

    #[test]
    fn garbage_input_does_not_panic_and_the_detector_recovers() {
        let mut det = DtmfDetector::new(RATE).unwrap();
        let mut got = Vec::new();
        det.process(&[f32::NAN; 500], |e| got.push(e));
        det.process(&[f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30], |e| {
            got.push(e)
        });
        det.process(&[1.0; 300], |e| got.push(e));
        assert!(got.is_empty());
        let x = framed(0, &generate(RATE, "4", 60, 0, -10.0), RATE);
        det.process(&x, |e| got.push(e));
        assert_eq!(started(&got), "4");
        assert_eq!(
            DtmfDetector::new(96000).unwrap_err(),
            DtmfError::UnsupportedSampleRate(96000)
        );
    }

    /// Tally of why speech windows were not hits.
    fn talk_off_report(x: &[f32]) -> Vec<(Reject, usize)> {
        let det = DtmfDetector::new(RATE).unwrap();
        let n = det.window.len();
        let mut tally: Vec<(Reject, usize)> = Vec::new();
        let mut hits = 0;
        let mut start = 0;
        while start + n <= x.len() {
            match det.classify(&x[start..start + n]) {
                Ok(_) => hits += 1,
                Err(r) => match tally.iter_mut().find(|t| t.0 == r) {
                    Some(t) => t.1 += 1,
                    None => tally.push((r, 1)),
                },
            }
            start += det.hop;
        }
        println!("  windows that were hits: {hits}; rejected: {tally:?}");
        tally
    }

    #[test]
    fn sixty_seconds_of_speech_produce_no_digit() {
        let x = speech();
        assert_eq!(x.len(), 480_000);
        let rms = (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        println!("speech talk-off (rms {:.1} dBov):", 20.0 * rms.log10());
        for gain_db in [0.0f32, 6.0, 12.0, -12.0] {
            let g = 10f32.powf(gain_db / 20.0);
            let scaled: Vec<f32> = x.iter().map(|&v| (v * g).clamp(-1.0, MAX_SAMPLE)).collect();
            let got = detected(RATE, &scaled);
            println!("  gain {gain_db:+} dB: {} false digits {got:?}", got.len());
            if gain_db == 0.0 {
                talk_off_report(&scaled);
            }
            assert_eq!(got, "", "talk-off at gain {gain_db:+} dB");
        }
    }

    /// Digits over speech; returns (digits detected at the right place,
    /// digits sent, extra detections).
    fn digits_over_speech(speech_below_tones_db: f64) -> (usize, usize, usize) {
        let x = speech();
        let speech_power = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64;
        let tone_db = -12.0;
        let tone_power = 2.0 * 10f64.powf(tone_db / 10.0);
        let g = (tone_power / 10f64.powf(speech_below_tones_db / 10.0) / speech_power).sqrt();
        let seq = generate(RATE, ALL_DIGITS, 100, 100, tone_db as f32);
        let period = seq.len() + ms(RATE, 500.0);
        let mut mix: Vec<f32> = x.iter().map(|&v| (f64::from(v) * g) as f32).collect();
        let mut truth = Vec::new();
        let mut offset = ms(RATE, 250.0);
        while offset + seq.len() <= mix.len() {
            for (i, &s) in seq.iter().enumerate() {
                mix[offset + i] = (mix[offset + i] + s).clamp(-1.0, MAX_SAMPLE);
            }
            for (i, c) in ALL_DIGITS.chars().enumerate() {
                truth.push((offset + i * ms(RATE, 200.0), c));
            }
            offset += period;
        }
        let ev = events(RATE, &mix);
        let mut found = vec![false; truth.len()];
        let mut extra = 0;
        for e in &ev {
            if let DtmfEvent::Started { digit, at } = *e {
                let hit = truth.iter().position(|&(t, c)| {
                    c == digit.to_char() && (at as i64 - t as i64).abs() < ms(RATE, 60.0) as i64
                });
                match hit {
                    Some(i) if !found[i] => found[i] = true,
                    _ => extra += 1,
                }
            }
        }
        (found.iter().filter(|&&f| f).count(), truth.len(), extra)
    }

    #[test]
    fn digits_over_speech_are_detected() {
        println!("digits (100 ms on/off, -12 dBov per tone) over 60 s of speech:");
        let mut at_10 = (0, 0, 0);
        for below in [20.0, 15.0, 10.0, 6.0, 3.0] {
            let r = digits_over_speech(below);
            println!(
                "  speech {below:4.1} dB below the tones: {}/{} detected ({:.1} %), {} extra",
                r.0,
                r.1,
                100.0 * r.0 as f64 / r.1 as f64,
                r.2
            );
            if below == 10.0 {
                at_10 = r;
            }
        }
        assert_eq!(at_10.2, 0, "no extra digit");
        assert!(at_10.0 * 100 >= at_10.1 * 95, "{at_10:?}");
    }

    #[test]
    fn the_q24_limits_hold_at_16_and_48_khz() {
        for rate in [16000, 48000] {
            let hop = ms(rate, 6.625);
            let leads = [0, hop / 3, 2 * hop / 3];
            for d in [DtmfDigit::D1, DtmfDigit::D6, DtmfDigit::D8, DtmfDigit::D] {
                let (l, h) = nominal(d);
                let run = |low: (f64, f64), high: (f64, f64), tone_ms: f64| {
                    accepted_at_alignments(rate, low, high, tone_ms, &leads, d)
                };
                let all = leads.len();
                for k in [-1.0, 1.0] {
                    let a = 1.0 + k * 0.015;
                    let r = 1.0 + k * 0.035;
                    assert_eq!(
                        run((l * a, -10.0), (h, -10.0), 60.0),
                        all,
                        "{rate} {d:?} low {k:+}1.5%"
                    );
                    assert_eq!(
                        run((l, -10.0), (h * a, -10.0), 60.0),
                        all,
                        "{rate} {d:?} high {k:+}1.5%"
                    );
                    assert_eq!(
                        run((l * r, -10.0), (h, -10.0), 60.0),
                        0,
                        "{rate} {d:?} low {k:+}3.5%"
                    );
                    assert_eq!(
                        run((l, -10.0), (h * r, -10.0), 60.0),
                        0,
                        "{rate} {d:?} high {k:+}3.5%"
                    );
                }
                assert_eq!(run((l, -10.0), (h, -10.0), 40.0), all, "{rate} {d:?} 40 ms");
                assert_eq!(run((l, -10.0), (h, -10.0), 23.0), 0, "{rate} {d:?} 23 ms");
                assert_eq!(
                    run((l, -12.0), (h, -20.0), 60.0),
                    all,
                    "{rate} {d:?} twist +8"
                );
                assert_eq!(
                    run((l, -16.0), (h, -12.0), 60.0),
                    all,
                    "{rate} {d:?} twist -4"
                );
                assert_eq!(
                    run((l, -12.0), (h, -22.0), 60.0),
                    0,
                    "{rate} {d:?} twist +10"
                );
                assert_eq!(
                    run((l, -18.0), (h, -12.0), 60.0),
                    0,
                    "{rate} {d:?} twist -6"
                );
                assert_eq!(
                    run((l, -26.0), (h, -26.0), 60.0),
                    all,
                    "{rate} {d:?} -26 dBov"
                );
                assert_eq!(
                    run((l, -40.0), (h, -40.0), 60.0),
                    0,
                    "{rate} {d:?} -40 dBov"
                );
            }
        }
    }

    /// Exact sequences out of `trials`, with every tone off by `offset`
    /// (fraction; low and high in opposite directions, alternating per
    /// digit), twist `twist_db`, and white noise at `snr_db` below the dual
    /// tone's power.
    fn combined(trials: u64, offset: f64, twist_db: f64, snr_db: f64) -> u64 {
        let (low_db, high_db) = if twist_db >= 0.0 {
            (-14.0, -14.0 - twist_db)
        } else {
            (-14.0 + twist_db, -14.0)
        };
        (0..trials)
            .filter(|&seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut x = vec![0.0f32; rng.random_range(0..200)];
                for (i, d) in ALL_DIGITS
                    .chars()
                    .filter_map(DtmfDigit::from_char)
                    .enumerate()
                {
                    let (l, h) = nominal(d);
                    let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                    let (fl, fh) = (l * (1.0 + sign * offset), h * (1.0 - sign * offset));
                    x.extend(dual_tone(RATE, (fl, low_db), (fh, high_db), ms(RATE, 60.0)));
                    x.extend(std::iter::repeat_n(0.0, ms(RATE, 60.0)));
                }
                x.extend(std::iter::repeat_n(0.0, ms(RATE, 200.0)));
                let tone_power = 10f64.powf(low_db / 10.0) + 10f64.powf(high_db / 10.0);
                add_noise(&mut x, tone_power / 10f64.powf(snr_db / 10.0), &mut rng);
                detected(RATE, &x) == ALL_DIGITS
            })
            .count() as u64
    }

    #[test]
    fn digits_survive_offset_twist_and_noise_together() {
        println!("combined impairments (16 digits, 60 ms on/off, 10 seeds each):");
        for (offset, twist, snr) in [
            (0.015, 8.0, 15.0),
            (0.015, -4.0, 15.0),
            (0.015, 0.0, 15.0),
            (0.0, 8.0, 15.0),
            (0.015, 8.0, 20.0),
        ] {
            let exact = combined(10, offset, twist, snr);
            println!(
                "  offset {:.1} %, twist {twist:+} dB, SNR {snr} dB: {exact}/10 sequences exact",
                offset * 100.0
            );
            if twist == 0.0 || snr >= 20.0 {
                assert_eq!(exact, 10, "offset {offset} twist {twist} snr {snr}");
            }
        }
    }

    #[test]
    fn a_pause_of_40_ms_separates_a_repeated_digit_and_short_breaks_are_bridged() {
        println!("pause sweep (\"55\", 60 ms tones, 4 alignments): digits seen");
        for pause_ms in [5u64, 10, 15, 20, 25, 30, 35, 40] {
            let seen: Vec<usize> = ALIGNMENTS
                .iter()
                .map(|&lead| {
                    let x = framed(lead, &generate(RATE, "55", 60, pause_ms, -10.0), RATE);
                    detected(RATE, &x).len()
                })
                .collect();
            println!("  {pause_ms:2} ms: {seen:?}");
            if pause_ms >= 40 {
                assert!(seen.iter().all(|&n| n == 2), "{pause_ms} ms");
            }
            if pause_ms <= 5 {
                assert!(seen.iter().all(|&n| n == 1), "{pause_ms} ms");
            }
        }
    }

    #[test]
    fn wideband_speech_at_16_khz_produces_no_digit() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/audio/speech-16k.wav"
        );
        let mut reader = hound::WavReader::open(path).unwrap();
        assert_eq!(reader.spec().sample_rate, 16000);
        let x: Vec<f32> = reader
            .samples::<i16>()
            .map(|s| f32::from(s.unwrap()) / 32768.0)
            .collect();
        println!("speech-16k.wav: {:.1} s", x.len() as f64 / 16000.0);
        for gain in [1.0f32, 2.0, 4.0] {
            let scaled: Vec<f32> = x
                .iter()
                .map(|&v| (v * gain).clamp(-1.0, MAX_SAMPLE))
                .collect();
            assert_eq!(detected(16000, &scaled), "", "gain {gain}");
        }
    }
}

//! Wrap-safe identifiers and media time, and the extenders that turn wire values into them.
//!
//! RTP carries a 16-bit sequence number and a 32-bit timestamp. Both wrap (a 50 packet/s
//! stream wraps its sequence number every 22 minutes, a 48 kHz timestamp every 25 hours),
//! and comparing raw values across a wrap is the classic RTP bug: a jitter buffer that
//! thinks packet 0 is older than packet 65535 stalls a call at the 22nd minute.
//!
//! The rule in this crate: **raw values are extended to 64 bits once, at the edge**, by a
//! [`SeqExtender`] (sequence numbers, RFC 3550 Appendix A.1) and a [`TimestampExtender`]
//! per stream. Everything behind the edge (jitter buffer, statistics, mixer) works on
//! [`SeqNo`] and [`RtpTime`], which do not wrap within any call's lifetime, so plain `<`
//! is correct. Raw `u16`/`u32` values are only compared inside this module.
//!
//! Extended values do not start at zero: the first packet of a stream lands in cycle 1
//! (`SeqNo` = 65536 + its wire value, `RtpTime` = 2^32 + its wire value). A packet that was
//! sent *before* the first one we saw and arrives late across the wrap (first packet 2,
//! then 65535) therefore still gets a smaller, representable value instead of underflowing.
//! Only differences between extended values carry meaning; [`SeqNo::rtcp_extended`] gives
//! the RFC 3550 "extended highest sequence number" form for receiver reports.
//!
//! Deliberate difference from RFC 3550 A.1: the first packet of a stream is accepted at
//! once (no `MIN_SEQUENTIAL` probation before the source is valid). A conference must not
//! drop the first syllable of a talker; source validation belongs to the media leg, which
//! knows the signalled SSRCs. The probation *is* applied to large jumps: a packet far from
//! the expected number is dropped as a probable restart, and the restart is only accepted
//! when the next packet follows it in sequence.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// Synchronisation source identifier of an RTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ssrc(pub u32);

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl From<u32> for Ssrc {
    fn from(v: u32) -> Self {
        Ssrc(v)
    }
}

/// A payload type value above 127 (the field is 7 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload type {0} does not fit in 7 bits")]
pub struct InvalidPayloadType(pub u8);

/// RTP payload type: 7 bits, validated on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(u8);

impl PayloadType {
    /// G.711 u-law (RFC 3551 static assignment).
    pub const PCMU: PayloadType = PayloadType(0);
    /// G.711 A-law (RFC 3551 static assignment).
    pub const PCMA: PayloadType = PayloadType(8);

    /// Validates a 7-bit payload type.
    pub const fn new(value: u8) -> Result<Self, InvalidPayloadType> {
        if value <= 0x7F {
            Ok(PayloadType(value))
        } else {
            Err(InvalidPayloadType(value))
        }
    }

    /// The low 7 bits of the second RTP header byte (the marker bit masked off).
    pub(crate) const fn from_wire(byte: u8) -> Self {
        PayloadType(byte & 0x7F)
    }

    /// The numeric value (0..=127).
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether RTP with this payload type can share a port with RTCP (RFC 5761 section 4):
    /// 64..=95 collide with RTCP packet types 192..=223 when the marker bit is set.
    pub const fn is_rtcp_mux_safe(self) -> bool {
        !(self.0 >= 64 && self.0 <= 95)
    }
}

impl TryFrom<u8> for PayloadType {
    type Error = InvalidPayloadType;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        PayloadType::new(value)
    }
}

impl From<PayloadType> for u8 {
    fn from(pt: PayloadType) -> u8 {
        pt.0
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Extended (64-bit) RTP sequence number, produced by a [`SeqExtender`].
///
/// The low 16 bits always equal the wire value; the upper bits count wraps. Ordered
/// comparison is meaningful between values from the same extender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNo(pub u64);

impl SeqNo {
    /// The 16-bit value carried on the wire.
    pub const fn wire(self) -> u16 {
        self.0 as u16
    }

    /// The next sequence number.
    pub const fn next(self) -> SeqNo {
        SeqNo(self.0.wrapping_add(1))
    }

    /// `self - earlier` as a signed packet count.
    pub const fn delta(self, earlier: SeqNo) -> i64 {
        self.0.wrapping_sub(earlier.0) as i64
    }

    /// The RFC 3550 "extended highest sequence number received" field: the wire value in the
    /// low 16 bits and the number of wraps since the stream's first packet above it.
    pub const fn rtcp_extended(self) -> u32 {
        self.0.wrapping_sub(SEQ_FIRST_CYCLE) as u32
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.wire())
    }
}

/// The sampling clock of a stream in Hz (48000 for Opus, 8000 for G.711).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClockRate(NonZeroU32);

/// For the constants below only: evaluated at compile time, so a zero fails the build.
const fn nonzero(hz: u32) -> NonZeroU32 {
    match NonZeroU32::new(hz) {
        Some(v) => v,
        None => panic!("clock rate must be non-zero"),
    }
}

impl ClockRate {
    /// 8 kHz: G.711, telephone-events at 8 kHz.
    pub const HZ_8000: ClockRate = ClockRate(nonzero(8_000));
    /// 16 kHz: wideband audio (note that G.722's RTP clock is 8000, RFC 3551).
    pub const HZ_16000: ClockRate = ClockRate(nonzero(16_000));
    /// 48 kHz: Opus.
    pub const HZ_48000: ClockRate = ClockRate(nonzero(48_000));
    /// 90 kHz: video.
    pub const HZ_90000: ClockRate = ClockRate(nonzero(90_000));

    /// A clock rate; `None` for 0 Hz.
    pub const fn new(hz: u32) -> Option<Self> {
        match NonZeroU32::new(hz) {
            Some(v) => Some(ClockRate(v)),
            None => None,
        }
    }

    /// Ticks per second.
    pub const fn hz(self) -> u32 {
        self.0.get()
    }

    /// The wall-clock length of `ticks` ticks.
    pub fn ticks_to_duration(self, ticks: u64) -> Duration {
        let hz = u64::from(self.hz());
        let secs = ticks / hz;
        // Remainder < hz <= u32::MAX, so the product fits in u64.
        let nanos = (ticks % hz) * 1_000_000_000 / hz;
        Duration::new(secs, nanos as u32)
    }

    /// The number of whole ticks in `d` (rounded down, saturating).
    pub fn duration_to_ticks(self, d: Duration) -> u64 {
        let ticks = d.as_nanos() * u128::from(self.hz()) / 1_000_000_000;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

/// Extended (64-bit) RTP timestamp, produced by a [`TimestampExtender`].
///
/// Its clock rate is the stream's; only differences between values of one extender are
/// meaningful (see [`RtpTime::ticks_since`] and [`RtpTime::since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RtpTime(pub u64);

impl RtpTime {
    /// The 32-bit value carried on the wire.
    pub const fn wire(self) -> u32 {
        self.0 as u32
    }

    /// `self - earlier` in ticks (negative when `self` is earlier).
    pub const fn ticks_since(self, earlier: RtpTime) -> i64 {
        self.0.wrapping_sub(earlier.0) as i64
    }

    /// The media time from `earlier` to `self` in the stream's clock; `None` if `earlier`
    /// is later.
    pub fn since(self, earlier: RtpTime, rate: ClockRate) -> Option<MediaTime> {
        Some(MediaTime {
            ticks: self.0.checked_sub(earlier.0)?,
            rate,
        })
    }
}

/// A span of media time: a tick count together with its clock rate. Equality and order
/// compare the wall-clock length, so 160 ticks at 8 kHz equal 960 ticks at 48 kHz.
#[derive(Debug, Clone, Copy)]
pub struct MediaTime {
    /// Ticks of `rate`.
    pub ticks: u64,
    /// The clock the ticks count.
    pub rate: ClockRate,
}

impl MediaTime {
    /// `ticks` ticks of `rate`.
    pub const fn new(ticks: u64, rate: ClockRate) -> Self {
        MediaTime { ticks, rate }
    }

    /// The whole number of ticks of `rate` in `d`.
    pub fn from_duration(d: Duration, rate: ClockRate) -> Self {
        MediaTime {
            ticks: rate.duration_to_ticks(d),
            rate,
        }
    }

    /// Wall-clock length.
    pub fn as_duration(self) -> Duration {
        self.rate.ticks_to_duration(self.ticks)
    }

    /// The same time in another clock (rounded down, saturating).
    pub fn rescale(self, rate: ClockRate) -> MediaTime {
        let ticks = u128::from(self.ticks) * u128::from(rate.hz()) / u128::from(self.rate.hz());
        MediaTime {
            ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
            rate,
        }
    }
}

impl Ord for MediaTime {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Cross-multiplied in u128 so that different clocks compare exactly.
        let a = u128::from(self.ticks) * u128::from(other.rate.hz());
        let b = u128::from(other.ticks) * u128::from(self.rate.hz());
        a.cmp(&b)
    }
}

impl PartialOrd for MediaTime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for MediaTime {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for MediaTime {}

/// NTP timestamp (RFC 5905): 32.32 fixed-point seconds since 1900-01-01, as in RTCP
/// sender reports. Build it from a wall-clock reading the caller made; this crate never
/// reads the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NtpTime(pub u64);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

impl NtpTime {
    /// From a duration since the Unix epoch (e.g. `SystemTime::duration_since(UNIX_EPOCH)`,
    /// read by the caller). Seconds wrap modulo 2^32 as NTP's do (era 1 begins in 2036).
    pub fn from_unix(since_unix_epoch: Duration) -> NtpTime {
        let secs = since_unix_epoch
            .as_secs()
            .wrapping_add(NTP_UNIX_OFFSET_SECS)
            & 0xFFFF_FFFF;
        let frac = (u64::from(since_unix_epoch.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// Back to a duration since the Unix epoch, resolving the era as RFC 4330 section 3
    /// suggests (a seconds value with the top bit clear is in era 1, after 2036). `None`
    /// for the times in 1968-1970 that this reading puts before the Unix epoch (only a
    /// bogus or hostile value lands there).
    pub fn to_unix(self) -> Option<Duration> {
        let mut secs = self.0 >> 32;
        if secs & 0x8000_0000 == 0 {
            secs += 1 << 32;
        }
        let nanos = ((self.0 & 0xFFFF_FFFF) * 1_000_000_000) >> 32;
        // nanos < 10^9: the fraction is below 2^32.
        Some(Duration::new(
            secs.checked_sub(NTP_UNIX_OFFSET_SECS)?,
            nanos as u32,
        ))
    }

    /// The middle 32 bits (16.16 fixed point), the form used by the LSR field of report
    /// blocks and for round-trip computation.
    pub const fn compact(self) -> u32 {
        (self.0 >> 16) as u32
    }

    /// Whole seconds since 1900 (modulo 2^32).
    pub const fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Fraction of a second in units of 2^-32 s.
    pub const fn fraction(self) -> u32 {
        self.0 as u32
    }
}

/// A 16.16 fixed-point span (units of 1/65536 s, as in DLSR) as a `Duration`.
pub fn compact_to_duration(compact: u32) -> Duration {
    let secs = u64::from(compact >> 16);
    let nanos = (u64::from(compact & 0xFFFF) * 1_000_000_000) >> 16;
    Duration::new(secs, nanos as u32)
}

/// A `Duration` as 16.16 fixed point (units of 1/65536 s), saturating at about 18 hours.
pub fn duration_to_compact(d: Duration) -> u32 {
    let units = d.as_nanos() * 65_536 / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// The first packet of a stream is placed in cycle 1 (see the module docs).
const SEQ_FIRST_CYCLE: u64 = 1 << 16;
/// RFC 3550 A.1: a forward jump of this many packets or more is a probable restart.
pub const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a packet up to this many behind the highest is reordered, not a restart.
pub const MAX_MISORDER: u16 = 100;

/// What a [`SeqExtender`] made of one packet's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqUpdate {
    /// The first packet of the stream.
    First(SeqNo),
    /// Newer than every packet so far. `gap` packets between the previous highest and this
    /// one have not (yet) arrived; 0 when this is exactly the next one.
    Advanced {
        /// The packet's extended sequence number.
        seq: SeqNo,
        /// Packets skipped since the previous highest.
        gap: u64,
    },
    /// At or behind the highest so far (reordered, or a duplicate), within
    /// [`MAX_MISORDER`].
    Late(SeqNo),
    /// The second packet in sequence after a large jump: the sender restarted its
    /// sequence numbering. Per-stream state (loss counters, jitter buffer) should restart
    /// here. The extended value continues upward from the old stream's.
    Restarted(SeqNo),
    /// Too far from the expected value (at least [`MAX_DROPOUT`] ahead or more than
    /// [`MAX_MISORDER`] behind): dropped. If the next packet follows this one, the stream
    /// is treated as restarted.
    Dropped,
}

impl SeqUpdate {
    /// The extended sequence number, unless the packet was dropped.
    pub const fn seq(self) -> Option<SeqNo> {
        match self {
            SeqUpdate::First(s)
            | SeqUpdate::Advanced { seq: s, .. }
            | SeqUpdate::Late(s)
            | SeqUpdate::Restarted(s) => Some(s),
            SeqUpdate::Dropped => None,
        }
    }
}

/// Extends 16-bit RTP sequence numbers of one stream to [`SeqNo`] (RFC 3550 A.1 style).
///
/// Handles wraps, reordering across a wrap, duplicates, and restarts (a large jump is
/// accepted only when the next packet confirms it). One extender per SSRC.
#[derive(Debug, Clone, Default)]
pub struct SeqExtender {
    state: Option<SeqState>,
}

#[derive(Debug, Clone)]
struct SeqState {
    /// Highest extended sequence number accepted.
    max: u64,
    /// The wire value that would confirm a restart (the successor of the last dropped one).
    bad_seq: Option<u16>,
}

impl SeqExtender {
    /// An extender that has seen no packet.
    pub const fn new() -> Self {
        SeqExtender { state: None }
    }

    /// Forgets the stream; the next packet is treated as the first.
    pub fn reset(&mut self) {
        self.state = None;
    }

    /// The highest extended sequence number accepted so far.
    pub fn highest(&self) -> Option<SeqNo> {
        self.state.as_ref().map(|s| SeqNo(s.max))
    }

    /// Classifies and extends one packet's wire sequence number.
    pub fn extend(&mut self, wire: u16) -> SeqUpdate {
        let Some(st) = self.state.as_mut() else {
            let first = SEQ_FIRST_CYCLE + u64::from(wire);
            self.state = Some(SeqState {
                max: first,
                bad_seq: None,
            });
            return SeqUpdate::First(SeqNo(first));
        };
        let max_wire = st.max as u16;
        // Forward distance modulo 2^16; the only place raw sequence numbers are compared.
        let udelta = wire.wrapping_sub(max_wire);
        if udelta == 0 {
            return SeqUpdate::Late(SeqNo(st.max));
        }
        if udelta < MAX_DROPOUT {
            st.max += u64::from(udelta);
            return SeqUpdate::Advanced {
                seq: SeqNo(st.max),
                gap: u64::from(udelta) - 1,
            };
        }
        if udelta > u16::MAX - MAX_MISORDER {
            // Behind by (2^16 - udelta) <= MAX_MISORDER; st.max >= 2^16 so this cannot
            // underflow (values start in cycle 1).
            let back = (1u64 << 16) - u64::from(udelta);
            return SeqUpdate::Late(SeqNo(st.max - back));
        }
        if st.bad_seq == Some(wire) {
            st.max += u64::from(udelta);
            st.bad_seq = None;
            return SeqUpdate::Restarted(SeqNo(st.max));
        }
        st.bad_seq = Some(wire.wrapping_add(1));
        SeqUpdate::Dropped
    }
}

/// Extends 32-bit RTP timestamps of one stream to [`RtpTime`].
///
/// Timestamps do not advance per packet (video frames share one, DTX leaves gaps), so the
/// extender reads the signed 32-bit difference from the highest timestamp seen: anything
/// within 2^31 ticks (12 hours at 48 kHz) either side is placed correctly, across wraps
/// and reordering. A sender that jumps its timestamp base by more than that is seen as
/// going backwards; call [`TimestampExtender::reset`] when the sequence extender reports
/// [`SeqUpdate::Restarted`].
#[derive(Debug, Clone, Default)]
pub struct TimestampExtender {
    /// Highest extended timestamp seen.
    max: Option<u64>,
}

/// The first timestamp of a stream is placed in cycle 1 (see the module docs).
const TS_FIRST_CYCLE: u64 = 1 << 32;

impl TimestampExtender {
    /// An extender that has seen no packet.
    pub const fn new() -> Self {
        TimestampExtender { max: None }
    }

    /// Forgets the stream; the next timestamp is treated as the first.
    pub fn reset(&mut self) {
        self.max = None;
    }

    /// The highest extended timestamp seen so far.
    pub fn highest(&self) -> Option<RtpTime> {
        self.max.map(RtpTime)
    }

    /// Extends one packet's wire timestamp.
    pub fn extend(&mut self, wire: u32) -> RtpTime {
        let Some(max) = self.max else {
            let first = TS_FIRST_CYCLE + u64::from(wire);
            self.max = Some(first);
            return RtpTime(first);
        };
        // Signed distance from the highest, modulo 2^32.
        let diff = i64::from(wire.wrapping_sub(max as u32) as i32);
        // max >= 2^32 - 2^31 at all times (it never decreases below the first value, which
        // is >= 2^32), so adding diff >= -2^31 cannot underflow; saturate regardless.
        let ext = max.saturating_add_signed(diff);
        if diff > 0 {
            self.max = Some(ext);
        }
        RtpTime(ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(ext: &mut SeqExtender, wires: &[u16]) -> Vec<SeqUpdate> {
        wires.iter().map(|&w| ext.extend(w)).collect()
    }

    #[test]
    fn payload_type_rejects_values_above_127() {
        assert_eq!(PayloadType::new(127).map(PayloadType::get), Ok(127));
        assert_eq!(PayloadType::new(128), Err(InvalidPayloadType(128)));
        assert!(PayloadType::try_from(255).is_err());
        assert!(!PayloadType::new(72).unwrap().is_rtcp_mux_safe());
        assert!(PayloadType::new(111).unwrap().is_rtcp_mux_safe());
    }

    #[test]
    fn sequence_wrap_from_ffff_to_0_keeps_counting_up() {
        let mut ext = SeqExtender::new();
        let out = seqs(&mut ext, &[0xFFFE, 0xFFFF, 0, 1]);
        let s: Vec<u64> = out.iter().map(|u| u.seq().unwrap().0).collect();
        assert_eq!(s, [0x1FFFE, 0x1FFFF, 0x20000, 0x20001]);
        assert!(matches!(out[2], SeqUpdate::Advanced { gap: 0, .. }));
        assert_eq!(SeqNo(0x20000).wire(), 0);
        assert_eq!(SeqNo(0x20001).rtcp_extended(), 0x1_0001);
    }

    #[test]
    fn a_packet_reordered_across_the_wrap_gets_the_older_cycle() {
        let mut ext = SeqExtender::new();
        let out = seqs(&mut ext, &[0xFFFD, 0, 0xFFFE, 1, 0xFFFF]);
        assert_eq!(out[0], SeqUpdate::First(SeqNo(0x1FFFD)));
        assert_eq!(
            out[1],
            SeqUpdate::Advanced {
                seq: SeqNo(0x20000),
                gap: 2
            }
        );
        assert_eq!(out[2], SeqUpdate::Late(SeqNo(0x1FFFE)));
        assert_eq!(
            out[3],
            SeqUpdate::Advanced {
                seq: SeqNo(0x20001),
                gap: 0
            }
        );
        assert_eq!(out[4], SeqUpdate::Late(SeqNo(0x1FFFF)));
        assert!(out[4].seq() < out[1].seq());
    }

    #[test]
    fn a_backward_packet_before_the_first_wrap_stays_representable() {
        let mut ext = SeqExtender::new();
        // The stream's first packet seen is 2; 65535 was sent before it and arrives late.
        let first = ext.extend(2).seq().unwrap();
        let late = ext.extend(0xFFFF);
        assert_eq!(late, SeqUpdate::Late(SeqNo(first.0 - 3)));
        assert_eq!(late.seq().unwrap().wire(), 0xFFFF);
        // And a plain backward packet without a wrap.
        let mut ext = SeqExtender::new();
        let first = ext.extend(100).seq().unwrap();
        assert_eq!(ext.extend(97), SeqUpdate::Late(SeqNo(first.0 - 3)));
    }

    #[test]
    fn a_duplicate_of_the_highest_is_late_and_does_not_advance() {
        let mut ext = SeqExtender::new();
        seqs(&mut ext, &[10, 11]);
        assert_eq!(ext.extend(11), SeqUpdate::Late(SeqNo(SEQ_FIRST_CYCLE + 11)));
        assert_eq!(ext.highest(), Some(SeqNo(SEQ_FIRST_CYCLE + 11)));
    }

    #[test]
    fn a_large_jump_is_accepted_only_after_two_in_sequence() {
        let mut ext = SeqExtender::new();
        seqs(&mut ext, &[1000, 1001]);
        assert_eq!(ext.extend(40_000), SeqUpdate::Dropped);
        // The old stream continues normally meanwhile.
        assert!(matches!(
            ext.extend(1002),
            SeqUpdate::Advanced { gap: 0, .. }
        ));
        assert_eq!(ext.extend(50_000), SeqUpdate::Dropped);
        let restarted = ext.extend(50_001);
        let SeqUpdate::Restarted(s) = restarted else {
            panic!("expected a restart, got {restarted:?}");
        };
        assert_eq!(s.wire(), 50_001);
        assert!(s > SeqNo(SEQ_FIRST_CYCLE + 1002));
        assert!(matches!(
            ext.extend(50_002),
            SeqUpdate::Advanced { gap: 0, .. }
        ));
    }

    #[test]
    fn a_packet_far_behind_is_dropped_like_a_jump() {
        let mut ext = SeqExtender::new();
        seqs(&mut ext, &[5000, 5001]);
        assert_eq!(ext.extend(5001 - MAX_MISORDER - 1), SeqUpdate::Dropped);
        assert!(matches!(
            ext.extend(5001 - MAX_MISORDER),
            SeqUpdate::Late(_)
        ));
    }

    #[test]
    fn a_gap_just_under_max_dropout_is_a_forward_jump() {
        let mut ext = SeqExtender::new();
        ext.extend(0xFFF0);
        let u = ext.extend(0xFFF0u16.wrapping_add(MAX_DROPOUT - 1));
        assert_eq!(
            u,
            SeqUpdate::Advanced {
                seq: SeqNo(SEQ_FIRST_CYCLE + 0xFFF0 + u64::from(MAX_DROPOUT) - 1),
                gap: u64::from(MAX_DROPOUT) - 2
            }
        );
    }

    #[test]
    fn many_wraps_accumulate_cycles() {
        let mut ext = SeqExtender::new();
        let mut w: u16 = 65_000;
        let mut last = ext.extend(w).seq().unwrap();
        for _ in 0..(5 * 65_536 / 7) {
            w = w.wrapping_add(7);
            let s = ext.extend(w).seq().unwrap();
            assert_eq!(s.0, last.0 + 7);
            assert_eq!(s.wire(), w);
            last = s;
        }
        assert!(last.0 >> 16 >= 5);
    }

    #[test]
    fn timestamps_wrap_from_ffffffff_to_0_and_keep_counting_up() {
        let mut ext = TimestampExtender::new();
        let a = ext.extend(0xFFFF_FF10);
        let b = ext.extend(0xFFFF_FFFF);
        let c = ext.extend(0);
        let d = ext.extend(0x3C0);
        assert_eq!(b.ticks_since(a), 0xEF);
        assert_eq!(c.ticks_since(b), 1);
        assert_eq!(d.ticks_since(c), 0x3C0);
        assert_eq!(c.wire(), 0);
        // A timestamp reordered across the wrap lands before it.
        let late = ext.extend(0xFFFF_FF80);
        assert!(late < c && late > a);
        assert_eq!(c.ticks_since(late), 0x80);
    }

    #[test]
    fn a_timestamp_before_the_first_one_stays_representable() {
        let mut ext = TimestampExtender::new();
        let first = ext.extend(100);
        let earlier = ext.extend(0xFFFF_FF00);
        assert_eq!(first.ticks_since(earlier), 356);
        // Highest is unchanged by an older timestamp.
        assert_eq!(ext.highest(), Some(first));
    }

    #[test]
    fn equal_timestamps_extend_equally() {
        let mut ext = TimestampExtender::new();
        let a = ext.extend(90_000);
        assert_eq!(ext.extend(90_000), a);
    }

    #[test]
    fn clock_rate_converts_ticks_and_durations() {
        let r = ClockRate::HZ_48000;
        assert_eq!(r.ticks_to_duration(960), Duration::from_millis(20));
        assert_eq!(r.duration_to_ticks(Duration::from_millis(20)), 960);
        let t = MediaTime::new(960, r).rescale(ClockRate::HZ_8000);
        assert_eq!(t.ticks, 160);
        assert_eq!(t.as_duration(), Duration::from_millis(20));
        assert!(MediaTime::new(161, ClockRate::HZ_8000) > MediaTime::new(960, r));
        assert_eq!(
            MediaTime::new(160, ClockRate::HZ_8000),
            MediaTime::new(960, r)
        );
        let (a, b) = (RtpTime(1 << 32), RtpTime((1 << 32) + 480));
        assert_eq!(
            b.since(a, r).map(MediaTime::as_duration),
            Some(Duration::from_millis(10))
        );
        assert_eq!(a.since(b, r), None);
        assert!(ClockRate::new(0).is_none());
    }

    #[test]
    fn ntp_time_round_trips_unix_time_and_gives_the_compact_form() {
        let unix = Duration::new(1_700_000_000, 250_000_000);
        let ntp = NtpTime::from_unix(unix);
        assert_eq!(
            u64::from(ntp.seconds()),
            1_700_000_000 + NTP_UNIX_OFFSET_SECS
        );
        assert_eq!(ntp.fraction(), 1 << 30);
        let back = ntp.to_unix().unwrap();
        assert!(back.abs_diff(unix) < Duration::from_nanos(2));
        assert_eq!(
            ntp.compact(),
            ((ntp.seconds() & 0xFFFF) << 16) | (ntp.fraction() >> 16)
        );
        // After the 2036 era rollover the seconds wrap and still convert back.
        let after_2036 = Duration::from_secs(2_200_000_000);
        assert_eq!(NtpTime::from_unix(after_2036).to_unix(), Some(after_2036));
        // 1969 by the era rule: not representable as Unix time, and no panic.
        assert_eq!(NtpTime(0x8000_0000_0000_0000).to_unix(), None);
    }

    #[test]
    fn compact_durations_convert_both_ways() {
        assert_eq!(
            compact_to_duration(0x0005_4000),
            Duration::from_millis(5250)
        );
        assert_eq!(
            duration_to_compact(Duration::from_millis(5250)),
            0x0005_4000
        );
        assert_eq!(duration_to_compact(Duration::from_secs(1 << 20)), u32::MAX);
    }
}

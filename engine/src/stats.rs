//! RTP reception and transmission statistics per RFC 3550: what goes into receiver
//! reports (loss, jitter, extended highest sequence number, LSR/DLSR) and the round-trip
//! time a sender reads back out of them.
//!
//! Sans-IO like the rest of the crate: arrival times are `Instant`s the caller passes in,
//! and wall-clock NTP times (for RTT) are [`NtpTime`] values the caller read from its clock.
//!
//! [`ReceiverStats`] takes the [`SeqUpdate`] the stream's `SeqExtender` produced rather than
//! a raw sequence number, so the wrap/reorder/restart decision is made once (RFC 3550 A.1)
//! and shared with the jitter buffer. Counting follows A.3: `expected` is the extended
//! highest minus the base plus one, `lost = expected - received` (negative with
//! duplicates), and the fraction lost is computed over the interval since the previous
//! report block. Interarrival jitter follows A.8, `J += (|D| - J) / 16` with `D` the
//! difference of relative transit times of consecutive arrivals, kept in floating point
//! (A.8's scaled-integer form is only an optimisation) and rounded to timestamp units for
//! the report. It is updated for every accepted packet, reordered ones included, as the
//! RFC specifies; a sequence restart resets the counters (as A.1's `init_seq`) and the
//! transit reference, but keeps the jitter estimate, which describes the network.

use std::time::{Duration, Instant};

use crate::rtcp::{ReportBlock, SenderReport};
use crate::types::{ClockRate, RtpTime, SeqNo, SeqUpdate, Ssrc};
pub use crate::types::{NtpTime, compact_to_duration, duration_to_compact};

/// Reception statistics of one RTP source.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    ssrc: Ssrc,
    clock_rate: ClockRate,
    /// Reference for converting arrival instants to clock ticks.
    epoch: Option<Instant>,
    seq: Option<SeqCounters>,
    /// Interarrival jitter estimate in timestamp units.
    jitter: f64,
    /// Relative transit time of the previous packet, in ticks.
    last_transit: Option<f64>,
    /// Compact NTP time of the last SR and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct SeqCounters {
    base: SeqNo,
    max: SeqNo,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
}

impl SeqCounters {
    fn start(seq: SeqNo) -> Self {
        SeqCounters {
            base: seq,
            max: seq,
            received: 1,
            expected_prior: 0,
            received_prior: 0,
        }
    }

    fn expected(&self) -> u64 {
        // max >= base: max only grows from base.
        self.max.0 - self.base.0 + 1
    }
}

impl ReceiverStats {
    /// Statistics for the source `ssrc` whose RTP clock runs at `clock_rate`.
    pub fn new(ssrc: Ssrc, clock_rate: ClockRate) -> Self {
        ReceiverStats {
            ssrc,
            clock_rate,
            epoch: None,
            seq: None,
            jitter: 0.0,
            last_transit: None,
            last_sr: None,
        }
    }

    /// The source these statistics describe.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    /// Records one packet: what the sequence extender said about it, its extended RTP
    /// timestamp, and when it arrived.
    pub fn on_rtp(&mut self, seq: SeqUpdate, rtp_time: RtpTime, arrival: Instant) {
        if !self.count(seq) {
            return;
        }
        let epoch = *self.epoch.get_or_insert(arrival);
        let arrival_ticks = arrival.saturating_duration_since(epoch).as_secs_f64()
            * f64::from(self.clock_rate.hz());
        let transit = arrival_ticks - rtp_time.0 as f64;
        if let Some(prev) = self.last_transit {
            let d = (transit - prev).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Counts a packet whose timestamp does not follow its sending time (an RFC 4733
    /// telephone-event: every packet of an event carries the event's start), so it takes
    /// part in the loss counts but not in the interarrival jitter.
    pub fn on_rtp_untimed(&mut self, seq: SeqUpdate) {
        self.count(seq);
    }

    /// Sequence bookkeeping; false when the packet is not counted.
    fn count(&mut self, seq: SeqUpdate) -> bool {
        match seq {
            SeqUpdate::Dropped => return false,
            SeqUpdate::First(s) => self.seq = Some(SeqCounters::start(s)),
            SeqUpdate::Restarted(s) => {
                self.seq = Some(SeqCounters::start(s));
                self.last_transit = None;
            }
            SeqUpdate::Advanced { seq: s, .. } => match self.seq.as_mut() {
                Some(c) => {
                    c.max = s;
                    c.received += 1;
                }
                None => self.seq = Some(SeqCounters::start(s)),
            },
            SeqUpdate::Late(s) => match self.seq.as_mut() {
                Some(c) => c.received += 1,
                None => self.seq = Some(SeqCounters::start(s)),
            },
        }
        true
    }

    /// Records a sender report from this source (its NTP timestamp) and when it arrived,
    /// for the LSR/DLSR fields of the next report block.
    pub fn on_sender_report(&mut self, ntp_time: NtpTime, arrival: Instant) {
        self.last_sr = Some((ntp_time.compact(), arrival));
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter_ticks(&self) -> f64 {
        self.jitter
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(self.clock_rate.hz())
    }

    /// Packets received since the (re)start of the sequence, duplicates included.
    pub fn received(&self) -> u64 {
        self.seq.map_or(0, |c| c.received)
    }

    /// Packets expected since the (re)start of the sequence.
    pub fn expected(&self) -> u64 {
        self.seq.map_or(0, |c| c.expected())
    }

    /// Cumulative packets lost (negative when duplicates outnumber losses).
    pub fn cumulative_lost(&self) -> i64 {
        self.expected() as i64 - self.received() as i64
    }

    /// The extended highest sequence number received.
    pub fn extended_highest_seq(&self) -> Option<SeqNo> {
        self.seq.map(|c| c.max)
    }

    /// The report block for this source, closing the loss interval: the fraction lost
    /// covers the packets since the previous call. `now` is when the report is sent (for
    /// DLSR). `None` before any packet has arrived.
    pub fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let c = self.seq.as_mut()?;
        let expected = c.expected();
        let expected_interval = expected - c.expected_prior;
        let received_interval = c.received.wrapping_sub(c.received_prior);
        c.expected_prior = expected;
        c.received_prior = c.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            // lost_interval <= expected_interval, so the quotient is at most 256.
            ((lost_interval as u64) * 256 / expected_interval).min(255) as u8
        };
        let lost = (expected as i64 - c.received as i64).clamp(-0x80_0000, 0x7F_FFFF) as i32;
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => (lsr, duration_to_compact(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: lost,
            extended_highest_seq: c.max.rtcp_extended(),
            jitter: self.jitter.round().min(f64::from(u32::MAX)) as u32,
            last_sr,
            delay_since_last_sr,
        })
    }
}

/// Round-trip time from a report block about one of our streams (RFC 3550 6.4.1):
/// `arrival - LSR - DLSR`, with `arrival` the wall-clock NTP time at which the report
/// arrived. `None` when the peer has not received an SR from us yet (LSR 0) or the result
/// is negative (inconsistent DLSR).
pub fn round_trip_time(block: &ReportBlock, arrival: NtpTime) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let rtt = arrival
        .compact()
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    if rtt & 0x8000_0000 != 0 {
        return None;
    }
    Some(compact_to_duration(rtt))
}

/// Transmission counters of one of our RTP streams, for its sender reports.
#[derive(Debug, Clone, Copy)]
pub struct SenderStats {
    ssrc: Ssrc,
    packets: u32,
    octets: u32,
}

impl SenderStats {
    /// Counters for our stream `ssrc`.
    pub fn new(ssrc: Ssrc) -> Self {
        SenderStats {
            ssrc,
            packets: 0,
            octets: 0,
        }
    }

    /// Records one sent packet with `payload_len` payload bytes (header and padding
    /// excluded, as RFC 3550 6.4.1 counts). Both counters wrap modulo 2^32 as on the wire.
    pub fn on_sent(&mut self, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
    }

    /// Packets sent (modulo 2^32).
    pub fn packets(&self) -> u32 {
        self.packets
    }

    /// Payload octets sent (modulo 2^32).
    pub fn octets(&self) -> u32 {
        self.octets
    }

    /// A sender report at wall-clock `ntp_time`, whose RTP timestamp `rtp_time` is the same
    /// instant in the stream's media clock (computed by the caller from its send clock).
    pub fn sender_report(
        &self,
        ntp_time: NtpTime,
        rtp_time: u32,
        reports: Vec<ReportBlock>,
    ) -> SenderReport {
        SenderReport {
            ssrc: self.ssrc,
            ntp_time,
            rtp_time,
            packet_count: self.packets,
            octet_count: self.octets,
            reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SeqExtender, TimestampExtender};

    /// An arbitrary origin for virtual time, the only clock read in these tests; every
    /// measurement is relative to it.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    const RATE: ClockRate = ClockRate::HZ_48000;
    const FRAME: u32 = 960; // 20 ms at 48 kHz

    /// Feeds packet `i` of a 20 ms stream (wire seq `seq0 + i`) arriving `extra` after its
    /// nominal time.
    struct Feed {
        seq: SeqExtender,
        ts: TimestampExtender,
        stats: ReceiverStats,
        t0: Instant,
        seq0: u16,
    }

    impl Feed {
        fn new(seq0: u16) -> Self {
            Feed {
                seq: SeqExtender::new(),
                ts: TimestampExtender::new(),
                stats: ReceiverStats::new(Ssrc(7), RATE),
                t0: t0(),
                seq0,
            }
        }

        fn packet(&mut self, i: u32, extra: Duration) {
            let wire_seq = self.seq0.wrapping_add(i as u16);
            let wire_ts = 0xFFFF_0000u32.wrapping_add(i * FRAME);
            let arrival = self.t0
                + Duration::from_millis(20 * u64::from(i))
                + Duration::from_millis(40)
                + extra;
            let u = self.seq.extend(wire_seq);
            let ts = self.ts.extend(wire_ts);
            self.stats.on_rtp(u, ts, arrival);
        }
    }

    #[test]
    fn constant_transit_gives_zero_jitter() {
        let mut f = Feed::new(100);
        for i in 0..500 {
            f.packet(i, Duration::ZERO);
        }
        assert!(
            f.stats.jitter_ticks().abs() < 1e-6,
            "{}",
            f.stats.jitter_ticks()
        );
        assert_eq!(f.stats.report_block(f.t0).unwrap().jitter, 0);
    }

    #[test]
    fn telephone_event_packets_count_but_do_not_add_jitter() {
        let mut f = Feed::new(100);
        for i in 0..50 {
            f.packet(i, Duration::ZERO);
        }
        // A 7-packet digit: every packet carries the event's start timestamp.
        let event_ts = 0xFFFF_0000u32.wrapping_add(50 * FRAME);
        for i in 50..57u32 {
            let u = f.seq.extend(f.seq0.wrapping_add(i as u16));
            f.ts.extend(event_ts);
            f.stats.on_rtp_untimed(u);
        }
        for i in 57..100 {
            f.packet(i, Duration::ZERO);
        }
        assert!(
            f.stats.jitter_ticks().abs() < 1e-6,
            "{}",
            f.stats.jitter_ticks()
        );
        assert_eq!(f.stats.received(), 100);
    }

    #[test]
    fn alternating_delay_converges_to_the_analytic_jitter() {
        // Every other packet 5 ms late: |D| = 5 ms = 240 ticks for every packet after the
        // first, so J_k = 240 * (1 - (15/16)^k) after k updates.
        let d = 240.0;
        let mut f = Feed::new(0);
        f.packet(0, Duration::ZERO);
        for k in 1..=400u32 {
            let extra = if k % 2 == 1 {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            };
            f.packet(k, extra);
            let analytic = d * (1.0 - (15.0f64 / 16.0).powi(k as i32));
            assert!(
                (f.stats.jitter_ticks() - analytic).abs() < 1e-6,
                "after {k}: {} vs {analytic}",
                f.stats.jitter_ticks()
            );
        }
        assert!((f.stats.jitter_ticks() - d).abs() < 1e-6);
        assert!((f.stats.jitter_ms() - 5.0).abs() < 1e-6);
        assert_eq!(f.stats.report_block(f.t0).unwrap().jitter, 240);
    }

    #[test]
    fn losing_k_of_n_packets_gives_exact_counts() {
        let mut f = Feed::new(0xFF00); // crosses the sequence wrap
        let lost: Vec<u32> = (0..37).map(|k| 5 + 26 * k).collect();
        for i in 0..1000 {
            if !lost.contains(&i) {
                f.packet(i, Duration::ZERO);
            }
        }
        assert_eq!(f.stats.expected(), 1000);
        assert_eq!(f.stats.received(), 963);
        assert_eq!(f.stats.cumulative_lost(), 37);
        let rb = f.stats.report_block(f.t0).unwrap();
        assert_eq!(rb.cumulative_lost, 37);
        assert_eq!(rb.fraction_lost, (37 * 256 / 1000) as u8);
        // 0xFF00 + 999 = 0x1_02E7: one wrap since the first packet.
        assert_eq!(rb.extended_highest_seq, 0x0001_02E7);
        assert_eq!(rb.ssrc, Ssrc(7));
    }

    #[test]
    fn fraction_lost_covers_only_the_interval_since_the_last_report() {
        fn run(f: &mut Feed, next: &mut u32, n: u32, lose_every: Option<u32>) {
            for _ in 0..n {
                if lose_every.is_none_or(|e| !next.is_multiple_of(e)) {
                    f.packet(*next, Duration::ZERO);
                }
                *next += 1;
            }
        }
        let mut f = Feed::new(0);
        let mut next = 0;
        run(&mut f, &mut next, 100, None);
        assert_eq!(f.stats.report_block(f.t0).unwrap().fraction_lost, 0);
        // Next interval: 100 packets, every 10th lost -> 10/100 -> 25/256.
        run(&mut f, &mut next, 100, Some(10));
        let rb = f.stats.report_block(f.t0).unwrap();
        assert_eq!(rb.fraction_lost, 25);
        assert_eq!(rb.cumulative_lost, 10);
        // Next: 200 packets, every 4th lost -> 50/200 -> 64/256.
        run(&mut f, &mut next, 200, Some(4));
        let rb = f.stats.report_block(f.t0).unwrap();
        assert_eq!(rb.fraction_lost, 64);
        assert_eq!(rb.cumulative_lost, 60);
        // An interval without new packets reports 0.
        assert_eq!(f.stats.report_block(f.t0).unwrap().fraction_lost, 0);
    }

    #[test]
    fn duplicates_make_loss_negative_and_the_fraction_zero() {
        let mut f = Feed::new(10);
        for i in 0..10 {
            f.packet(i, Duration::ZERO);
        }
        f.packet(9, Duration::ZERO);
        f.packet(8, Duration::ZERO);
        assert_eq!(f.stats.cumulative_lost(), -2);
        let rb = f.stats.report_block(f.t0).unwrap();
        assert_eq!((rb.cumulative_lost, rb.fraction_lost), (-2, 0));
    }

    #[test]
    fn a_sequence_restart_resets_the_loss_counters() {
        let mut f = Feed::new(0);
        for i in 0..50 {
            if i != 20 {
                f.packet(i, Duration::ZERO);
            }
        }
        assert_eq!(f.stats.cumulative_lost(), 1);
        let arrival = f.t0 + Duration::from_secs(2);
        let u = f.seq.extend(30_000);
        f.stats.on_rtp(u, f.ts.extend(5), arrival);
        assert_eq!(f.stats.cumulative_lost(), 1, "the jump alone is dropped");
        let u = f.seq.extend(30_001);
        assert!(matches!(u, SeqUpdate::Restarted(_)));
        f.stats.on_rtp(u, f.ts.extend(965), arrival);
        assert_eq!((f.stats.expected(), f.stats.received()), (1, 1));
    }

    #[test]
    fn report_block_carries_lsr_and_dlsr() {
        let mut f = Feed::new(0);
        f.packet(0, Duration::ZERO);
        assert_eq!(f.stats.report_block(f.t0).unwrap().last_sr, 0);
        let ntp = NtpTime(0xB705_2030_1234_5678);
        let sr_arrival = f.t0 + Duration::from_secs(1);
        f.stats.on_sender_report(ntp, sr_arrival);
        let rb = f
            .stats
            .report_block(sr_arrival + Duration::from_millis(1500))
            .unwrap();
        assert_eq!(rb.last_sr, 0x2030_1234);
        assert_eq!(rb.delay_since_last_sr, 98_304); // 1.5 s in 1/65536 s
    }

    #[test]
    fn rtt_from_the_rfc_3550_example() {
        // RFC 3550 6.4.1, figure 2: A = 0xb710:8000, LSR = 0xb705:2000, DLSR = 0x0005:4000.
        let block = ReportBlock {
            last_sr: 0xB705_2000,
            delay_since_last_sr: 0x0005_4000,
            ..ReportBlock::default()
        };
        let arrival = NtpTime(0xB710_8000u64 << 16);
        assert_eq!(
            round_trip_time(&block, arrival),
            Some(Duration::from_millis(6125))
        );
        let never = ReportBlock::default();
        assert_eq!(round_trip_time(&never, arrival), None);
        let early = NtpTime(0xB705_2001u64 << 16);
        assert_eq!(round_trip_time(&block, early), None);
    }

    #[test]
    fn rtt_round_trips_through_our_own_sr_and_rr() {
        // Sender sends an SR at NTP time T; the receiver holds it 250 ms and answers; the
        // answer arrives 100 ms + 250 ms + 60 ms after T: RTT 160 ms.
        let t = t0();
        let sr_ntp = NtpTime::from_unix(Duration::from_secs(1_700_000_000));
        let mut rx = ReceiverStats::new(Ssrc(1), RATE);
        rx.on_rtp(SeqUpdate::First(SeqNo(1 << 16)), RtpTime(1 << 32), t);
        rx.on_sender_report(sr_ntp, t + Duration::from_millis(100));
        let rb = rx.report_block(t + Duration::from_millis(350)).unwrap();
        let rr_arrival =
            NtpTime::from_unix(Duration::from_secs(1_700_000_000) + Duration::from_millis(410));
        let rtt = round_trip_time(&rb, rr_arrival).unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(160)) < Duration::from_micros(100),
            "{rtt:?}"
        );
    }

    #[test]
    fn sender_stats_count_packets_and_payload_octets() {
        let mut s = SenderStats::new(Ssrc(3));
        for _ in 0..50 {
            s.on_sent(160);
        }
        let sr = s.sender_report(NtpTime(1), 8000, vec![]);
        assert_eq!(
            (sr.packet_count, sr.octet_count, sr.ssrc),
            (50, 8000, Ssrc(3))
        );
    }
}

//! Micro-benchmarks of the adaptive jitter buffer: one packet pushed and one frame
//! popped per iteration, in steady state.
//!
//! `jitter/push_pop` uses G.711 at 8 kHz, whose decode is a table lookup, so the time
//! is the buffer's own bookkeeping (slot store, slack window and quantile, skew
//! estimate, schedule, occasional time-stretch). `jitter/push_pop_opus48k` is the same
//! with 48 kHz Opus, to show the buffer next to a real decode.
//!
//! Time is virtual: one `Instant` taken before timing is the origin and every arrival
//! and tick is computed from it, so the buffer sees a steady 20 ms stream with a small
//! deterministic jitter however fast or slow the bench runs, for as many iterations as
//! criterion asks. Run: `cargo bench --bench jitter`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use confer_codecs::decoder::{AudioDecoder, AudioEncoder};
use confer_codecs::g711::{G711Decoder, G711Encoder, G711Law};
use confer_codecs::opus::OpusDecoder;
use confer_engine::jitter::{JbPacket, JitterBuffer, JitterConfig, PopInfo};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Packet and frame interval.
const FRAME_US: u64 = 20_000;
/// Arrivals are delayed by 0..JITTER_US after their nominal time.
const JITTER_US: u64 = 8_000;
/// Frame ticks come this long after the nominal send time: within the jitter range, so
/// some packets arrive before the tick of their own frame period and some after it,
/// and the buffer has to hold about one packet (as it does on a real network).
const TICK_PHASE_US: u64 = 5_000;

/// One stream fed into one jitter buffer on virtual time.
struct Stream<D: AudioDecoder> {
    jb: JitterBuffer<D>,
    payloads: Vec<Vec<u8>>,
    /// Per-packet network delay in microseconds, cycled.
    jitter_us: Vec<u64>,
    samples_per_packet: u64,
    origin: Instant,
    /// Packets sent so far (the next one's sequence number).
    k: u64,
    out: Vec<f32>,
}

impl<D: AudioDecoder> Stream<D> {
    fn new(cfg: JitterConfig, decoder: D, payloads: Vec<Vec<u8>>) -> Self {
        let samples_per_packet = u64::from(cfg.clock_rate) * FRAME_US / 1_000_000;
        let jb = JitterBuffer::new(cfg, decoder).expect("a valid configuration");
        let out = vec![0.0; jb.frame_samples()];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let jitter_us = (0..997).map(|_| rng.random_range(0..JITTER_US)).collect();
        Self {
            jb,
            payloads,
            jitter_us,
            samples_per_packet,
            origin: Instant::now(),
            k: 0,
            out,
        }
    }

    /// Pushes packet `k` at its arrival time and pops the frame of tick `k`, in the
    /// order of their virtual times.
    fn step(&mut self) -> PopInfo {
        let k = self.k;
        self.k += 1;
        let sent = self.origin + Duration::from_micros(k * FRAME_US);
        let idx = |n: usize| (k % n as u64) as usize;
        let delay_us = self.jitter_us[idx(self.jitter_us.len())];
        let packet = JbPacket {
            seq: k,
            timestamp: k * self.samples_per_packet,
            payload: &self.payloads[idx(self.payloads.len())],
        };
        let arrival = sent + Duration::from_micros(delay_us);
        let tick = sent + Duration::from_micros(TICK_PHASE_US);
        let info = if delay_us < TICK_PHASE_US {
            Self::push(&mut self.jb, packet, arrival);
            self.jb.pop(tick, &mut self.out).expect("frame size")
        } else {
            let info = self.jb.pop(tick, &mut self.out).expect("frame size");
            Self::push(&mut self.jb, packet, arrival);
            info
        };
        for played in self.jb.drain_played() {
            black_box(played);
        }
        black_box(&self.out);
        info
    }

    fn push(jb: &mut JitterBuffer<D>, packet: JbPacket<'_>, arrival: Instant) {
        let outcome = jb.push(packet, arrival).expect("payload within limits");
        black_box(outcome);
    }

    /// Runs the stream for `n` packets (warm-up, outside timing).
    fn run(&mut self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Checks that the buffer stayed in steady state over the whole bench (so the numbers
    /// are those of normal playout, not of an underrun or overflow path) and says so.
    fn check_steady(&self, name: &str) {
        let s = self.jb.stats();
        eprintln!(
            "{name}: {} packets, {} played, late {}, overflow {}, discarded {}, \
             concealed {:.0} ms, accelerated {:.0} ms, expanded {:.0} ms, delay {:.1} ms",
            s.received,
            s.played,
            s.late,
            s.overflow,
            s.discarded,
            s.concealed_ms,
            s.accelerated_ms,
            s.expanded_ms,
            s.current_delay_ms
        );
        // A few packets are still buffered at the end; anything more was lost to
        // lateness or concealment.
        assert!(
            s.received - s.played <= 10 + s.received / 1000,
            "{name}: the buffer left steady state: {s:?}"
        );
        assert_eq!(s.overflow + s.discarded + s.resyncs, 0, "{name}: {s:?}");
    }
}

fn bench_jitter(c: &mut Criterion) {
    let speech_8k = common::speech_at(8000);
    let mut enc = G711Encoder::new(G711Law::Ulaw, 20).expect("encoder");
    let ulaw: Vec<Vec<u8>> = speech_8k
        .chunks_exact(enc.frame_samples())
        .map(|f| {
            let mut p = vec![0u8; f.len()];
            enc.encode(f, &mut p).expect("encode");
            p
        })
        .collect();
    let speech_48k = common::speech_at(48000);
    let opus = common::opus_packets_48k(&speech_48k);

    let mut g = c.benchmark_group("jitter");

    let cfg = JitterConfig {
        clock_rate: 8000,
        frame_ms: 20,
        ..JitterConfig::default()
    };
    let mut g711 = Stream::new(cfg, G711Decoder::new(G711Law::Ulaw), ulaw);
    // Past the initial delay and a full slack window, so the adaptation runs as in a call.
    g711.run(2000);
    g.bench_function("push_pop", |b| b.iter(|| g711.step()));
    g711.check_steady("jitter/push_pop");

    let mut opus = Stream::new(
        JitterConfig::default(),
        OpusDecoder::new(48000).expect("decoder"),
        opus,
    );
    opus.run(2000);
    g.bench_function("push_pop_opus48k", |b| b.iter(|| opus.step()));
    opus.check_steady("jitter/push_pop_opus48k");
    g.finish();
}

criterion_group!(benches, bench_jitter);
criterion_main!(benches);

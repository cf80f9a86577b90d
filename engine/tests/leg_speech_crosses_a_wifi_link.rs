//! Two media legs back to back over the simulated Wi-Fi link (seeded, virtual time): leg A
//! sends 10 s of speech, leg B's decoded playout must match it once the playout delay is
//! found (normalised correlation over speech windows), for Opus and for PCMU. RTCP flows
//! both ways, so A also measures the round-trip time from B's receiver reports.

mod leg_harness;

use std::time::Duration;

use confer_engine::leg::{Codec, LegConfig, LegEvent, OpusParams};
use confer_engine::netsim::LinkConfig;
use leg_harness::{Pair, aligned_correlation, epoch, leg, speech};

fn run(codec: Codec, seed: u64, seconds: f64) -> (Pair, Vec<f32>) {
    let t0 = epoch();
    let config = LegConfig {
        codec,
        ..LegConfig::default()
    };
    let a = leg(config.clone(), None, seed, t0);
    let b = leg(config, None, seed + 1, t0);
    let mut pair = Pair::new(a, b, LinkConfig::wifi(), seed, t0);
    let input = speech(0.5, seconds);
    pair.send_all(&input);
    pair.idle(Duration::from_secs(1));
    (pair, input)
}

fn check(pair: &mut Pair, al: &leg_harness::Alignment, what: &str) {
    let a = pair.a.stats();
    let b = pair.b.stats();
    println!(
        "{what}: correlation mean {:.3} min {:.3} over {} windows, delay {:.1} ms; \
         B: received {} lost {} jitter {:.2} ms, jb late {} concealed {:.0} ms target {:.1} ms; \
         A: rtt {:?}",
        al.mean,
        al.min,
        al.windows,
        al.delay_ms,
        b.rtp_packets_received,
        b.packets_lost,
        b.jitter_ms,
        b.jitter_buffer.late,
        b.jitter_buffer.concealed_ms,
        b.jitter_buffer.target_delay_ms,
        a.rtt,
    );
    assert!(al.windows >= 25, "too few speech windows: {}", al.windows);
    assert!(al.mean > 0.8, "{what}: mean correlation {:.3}", al.mean);
    assert!(
        al.delay_ms > 0.0 && al.delay_ms < 300.0,
        "{what}: playout delay {:.1} ms",
        al.delay_ms
    );
    // Everything A sent that the link delivered reached the jitter buffer.
    let link = pair.ab.stats();
    assert_eq!(b.errors.total(), 0);
    assert_eq!(b.rtp_packets_received, pair.sent - link.lost());
    assert_eq!(b.packets_expected, pair.sent);
    assert_eq!(b.packets_lost, link.lost() as i64);
    // A's SRs reached B and B's reports carried them back: Wi-Fi is 2 x (4 ms + jitter).
    let rtt = a.rtt.expect("A measured a round-trip time");
    assert!(
        rtt >= Duration::from_millis(8) && rtt < Duration::from_millis(400),
        "{rtt:?}"
    );
    assert!(a.remote_report.is_some());
    assert!(a.rtcp_packets_sent >= 2 && b.rtcp_packets_sent >= 2);
    assert_eq!(b.remote_ssrc, Some(a.local_ssrc));
    let first = pair.b.poll_event();
    assert_eq!(
        first,
        Some(LegEvent::NewSource {
            previous: None,
            ssrc: a.local_ssrc
        })
    );
}

#[test]
fn opus_speech_over_wifi_plays_out_like_the_input() {
    let (mut pair, input) = run(Codec::Opus(OpusParams::default()), 11, 10.0);
    let al = aligned_correlation(&input, &pair.out);
    check(&mut pair, &al, "opus");
}

#[test]
fn pcmu_speech_over_wifi_plays_out_like_the_input() {
    let (mut pair, input) = run(Codec::Pcmu, 21, 10.0);
    let al = aligned_correlation(&input, &pair.out);
    check(&mut pair, &al, "pcmu");
}

#[test]
fn a_bye_from_the_sender_is_surfaced_by_the_receiver() {
    let (mut pair, _) = run(Codec::Pcma, 31, 1.0);
    let mut buf = [0u8; 512];
    let n = pair.a.write_bye(pair.now, &mut buf).expect("bye fits");
    pair.b
        .handle_datagram(&buf[..n], pair.now)
        .expect("valid RTCP");
    assert!(pair.b.stats().bye_received);
    let ssrc = pair.a.local_ssrc();
    let events: Vec<_> = std::iter::from_fn(|| pair.b.poll_event()).collect();
    assert!(events.contains(&LegEvent::Bye(ssrc)), "{events:?}");
}

//! Hostile input into a running leg: after every tenth media packet and every RTCP
//! packet, every truncation of that datagram, random datagrams (some shaped to look like
//! RTP with our payload type, or like RTCP), and an oversized one. Nothing panics, every
//! rejection is a counted peer error, nothing garbled reaches the jitter buffer, and the
//! playout is sample for sample the same as in the same run without the garbage.

mod leg_harness;

use std::time::{Duration, Instant};

use confer_engine::jitter::PushOutcome;
use confer_engine::leg::{LegConfig, MAX_DATAGRAM, MediaLeg, Received};
use confer_engine::netsim::LinkConfig;
use leg_harness::{FRAME, Pair, aligned_correlation, epoch, leg, speech};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Default)]
struct Tally {
    sent: u64,
    rejected: u64,
    rtcp_accepted: u64,
    not_played: u64,
}

fn garbage(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = vec![0u8; rng.random_range(0..300)];
    rng.fill_bytes(&mut v);
    if v.len() >= 2 {
        match rng.random_range(0..4) {
            // Version 2, our payload type (with or without marker), random everything else.
            0 => {
                v[0] = 0x80 | (v[0] & 0x3F);
                v[1] = 111 | (v[1] & 0x80);
            }
            // Version 2, an RTCP packet type.
            1 => {
                v[0] = 0x80 | (v[0] & 0x3F);
                v[1] = rng.random_range(200..=206);
            }
            // Version 2, anything.
            2 => v[0] = 0x80 | (v[0] & 0x3F),
            _ => {}
        }
    }
    v
}

fn run(with_garbage: bool) -> (Pair, Tally, Vec<f32>) {
    let t0 = epoch();
    let config = LegConfig {
        audio_level_extension: Some(1),
        ..LegConfig::default()
    };
    let a = leg(config.clone(), None, 1, t0);
    let b = leg(config, None, 2, t0);
    let mut pair = Pair::new(a, b, LinkConfig::lan(), 3, t0);
    let input = speech(3.0, 6.0);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut tally = Tally::default();
    let mut media = 0u64;
    for frame in input.chunks_exact(FRAME) {
        let mut tap = |d: &[u8], at: Instant, b: &mut MediaLeg| {
            if !with_garbage {
                return;
            }
            let is_rtcp = (192..=223).contains(&d[1]);
            if !is_rtcp {
                media += 1;
                if !media.is_multiple_of(10) {
                    return;
                }
            }
            let mut feed = |g: &[u8], b: &mut MediaLeg| {
                tally.sent += 1;
                match b.handle_datagram(g, at) {
                    Err(e) => {
                        assert!(e.is_peer_error(), "{e:?} is not a peer error");
                        tally.rejected += 1;
                    }
                    Ok(Received::Audio(PushOutcome::Stored)) => {
                        panic!("garbage {g:02x?} was stored for playout")
                    }
                    Ok(Received::Rtcp(_)) => tally.rtcp_accepted += 1,
                    Ok(_) => tally.not_played += 1,
                }
            };
            for cut in 0..d.len() {
                feed(&d[..cut], b);
            }
            for _ in 0..50 {
                feed(&garbage(&mut rng), b);
            }
            feed(&vec![0x80; MAX_DATAGRAM + 1], b);
        };
        pair.step_tapped(Some(frame), &mut tap);
    }
    pair.idle(Duration::from_millis(300));
    (pair, tally, input)
}

#[test]
fn garbage_datagrams_are_counted_and_do_not_change_playout() {
    let (clean, _, input) = run(false);
    let (dirty, tally, _) = run(true);
    let b = dirty.b.stats();
    let al = aligned_correlation(&input, &dirty.out);
    println!(
        "{} garbage datagrams: {} rejected ({:?}), {} valid RTCP, {} valid but unused \
         (duplicates {}, pending sources {}); correlation {:.3}",
        tally.sent,
        tally.rejected,
        b.errors,
        tally.rtcp_accepted,
        tally.not_played,
        b.jitter_buffer.duplicates,
        b.dropped.source_pending,
        al.mean
    );
    assert!(tally.sent > 4000, "only {} garbage datagrams", tally.sent);
    assert_eq!(b.errors.total(), tally.rejected);
    assert!(tally.rejected > 2000, "{} rejected", tally.rejected);
    assert_eq!(b.errors.other, 0);
    // Playout: identical, sample for sample, to the run without garbage.
    assert_eq!(clean.out.len(), dirty.out.len());
    assert!(clean.out == dirty.out, "garbage changed the playout");
    assert_eq!(clean.b.stats().jitter_buffer.played, b.jitter_buffer.played);
    assert_eq!(b.remote_ssrc, Some(dirty.a.local_ssrc()));
    assert!(al.mean > 0.8, "correlation {:.3}", al.mean);
}

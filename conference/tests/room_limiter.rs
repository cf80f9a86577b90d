//! Twenty talkers sending full-scale tones, all mixed: every output mix stays below full
//! scale, never wraps, and is limited smoothly rather than hard-clipped.

mod room_support;

use confer_conference::room::RoomConfig;
use confer_conference::speakers::SpeakerConfig;
use confer_engine::leg::Codec;
use room_support::*;

const TALKERS: usize = 20;

fn freq(i: usize) -> f32 {
    200.0 + 47.0 * i as f32
}

#[test]
fn twenty_full_scale_talkers_are_limited_without_clipping_or_wrapping() {
    let mut h = Harness::new(RoomConfig {
        speakers: SpeakerConfig {
            max_speakers: TALKERS,
            ..SpeakerConfig::default()
        },
        ..RoomConfig::default()
    });
    for i in 0..TALKERS {
        // Full scale, with pauses at staggered phases (so each VAD sees speech, and the
        // room is never quiet as a whole).
        h.join(Codec::Pcmu, gapped_tone(freq(i), 1.0, 20, 2, i as u64));
    }
    let listener = h.join(Codec::Pcmu, silent());
    h.run(100);
    assert_eq!(h.room.stats().speakers, TALKERS, "all twenty are mixed");

    // What a hard clipper would have made of the listener's sum, for comparison.
    let naive: Vec<f32> = (0..h.clients[0].sent.len())
        .map(|n| (0..TALKERS).map(|i| h.clients[i].sent[n]).sum::<f32>())
        .collect();
    let clipped_share = naive.iter().filter(|x| x.abs() >= 1.0).count() as f64 / naive.len() as f64;

    let skip = 25 * FRAME; // the onset and the jitter buffers' start
    for (c, client) in h.clients.iter().enumerate() {
        let y = &client.heard[skip..];
        let peak = y.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let near_top = y.iter().filter(|x| x.abs() >= 0.97).count() as f64 / y.len() as f64;
        let max_jump = y.windows(2).fold(0.0f32, |m, w| m.max((w[1] - w[0]).abs()));
        let rms = (y.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / y.len() as f64).sqrt();
        if c == 0 || c == listener {
            println!(
                "client {c}: peak {peak:.3}, rms {rms:.3}, share >= 0.97: {:.4}%, largest step {max_jump:.3} (a hard clipper: {:.1}% at full scale)",
                100.0 * near_top,
                100.0 * clipped_share
            );
        }
        assert!(peak < 1.0, "client {c}: peak {peak}");
        // A wrap-around would jump by about 2 between neighbouring samples; the mix of
        // tones below 1.2 kHz at this level moves by well under 0.2.
        assert!(max_jump < 0.3, "client {c}: a step of {max_jump}");
        assert!(
            near_top < 0.005,
            "client {c}: {near_top} of samples near full scale"
        );
        // Limited, not silenced: the mix is still loud.
        assert!(rms > 0.1, "client {c}: rms {rms}");
    }
    assert!(
        clipped_share > 0.3,
        "the test load would clip without a limiter"
    );
}

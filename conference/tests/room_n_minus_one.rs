//! A talker never hears itself: three participants send different speech; the audio each
//! one decodes contains the other two and not itself, checked by correlating signals.

mod room_support;

use confer_conference::room::RoomConfig;
use confer_engine::leg::{Codec, OpusParams};
use room_support::*;

#[test]
fn each_talker_hears_the_other_two_and_not_itself() {
    let mut h = Harness::new(RoomConfig::default());
    let speech = speech_48k();
    // Three different stretches of the sample, 5 s apart.
    for i in 0..3 {
        h.join(
            Codec::Opus(OpusParams::default()),
            speech_from(&speech, i * 5 * RATE, 1.0),
        );
    }
    h.run(250);

    // Align at 3 kHz: skip the first second, compare 3 s, lags up to 400 ms.
    let factor = 16;
    let start = RATE / factor;
    let len = 3 * RATE / factor;
    let max_lag = 400 * RATE / factor / 1000;
    let mut lags = Vec::new();
    for (r, receiver) in h.clients.iter().enumerate() {
        let heard = decimate(&receiver.heard, factor);
        for (s, source) in h.clients.iter().enumerate() {
            let sent = decimate(&source.sent, factor);
            let (corr, lag) = best_correlation(&sent, &heard, start, len, max_lag);
            println!(
                "receiver {r} source {s}: correlation {corr:.3} at {} ms",
                lag * factor * 1000 / RATE
            );
            if r == s {
                assert!(
                    corr < 0.15,
                    "participant {r} hears itself: correlation {corr:.3}"
                );
            } else {
                assert!(
                    corr > 0.3,
                    "participant {r} does not hear {s}: correlation {corr:.3}"
                );
                lags.push(lag);
            }
        }
    }
    // One pipeline, one delay: every path is aligned within 10 ms of the others.
    let (min, max) = (lags.iter().min().unwrap(), lags.iter().max().unwrap());
    assert!((max - min) * factor * 1000 / RATE <= 10, "lags {lags:?}");
    let stats = h.room.stats();
    assert!(stats.encoder_calls_total > 0);
}

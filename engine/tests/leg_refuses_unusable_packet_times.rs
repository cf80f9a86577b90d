//! A packet time that is not a whole number of the engine's frames, or longer than 120 ms
//! (the Opus packet limit, and a G.711 datagram still under the MTU), is the caller's
//! error when the leg is built; every valid one is accepted and sets the packet duration.
//! `fit_packet_time` turns what a peer asks for into a valid value.

mod leg_harness;

use std::time::Duration;

use confer_engine::leg::{
    Codec, LegConfig, LegError, MAX_PTIME_MS, MediaLeg, OpusParams, fit_packet_time,
};
use leg_harness::epoch;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn build(codec: Codec, frame_ms: u32, ptime_ms: Option<u32>) -> Result<MediaLeg, LegError> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let config = LegConfig {
        codec,
        frame_ms,
        ptime_ms,
        ..LegConfig::default()
    };
    MediaLeg::new(config, None, &mut rng, epoch())
}

fn codecs() -> [Codec; 3] {
    [Codec::Pcmu, Codec::Pcma, Codec::Opus(OpusParams::default())]
}

#[test]
fn a_packet_time_that_is_not_whole_frames_or_is_too_long_is_refused() {
    let bad: [(u32, &[u32]); 2] = [
        (20, &[0, 10, 30, 50, 70, 130, 140, 200, 240, u32::MAX]),
        (10, &[0, 5, 15, 25, 125, 130, 200]),
    ];
    for codec in codecs() {
        for (frame_ms, ptimes) in bad {
            for &ptime_ms in ptimes {
                let e = build(codec, frame_ms, Some(ptime_ms)).expect_err("refused");
                assert_eq!(
                    e,
                    LegError::BadPtime { ptime_ms, frame_ms },
                    "{codec:?}, {frame_ms} ms frames"
                );
                assert!(!e.is_peer_error());
                assert!(e.to_string().contains(&format!("{ptime_ms} ms")), "{e}");
            }
        }
    }
}

#[test]
fn every_whole_number_of_frames_up_to_120_ms_is_accepted() {
    for codec in codecs() {
        for frame_ms in [10u32, 20] {
            let mut accepted = Vec::new();
            for ptime_ms in (frame_ms..=MAX_PTIME_MS).step_by(frame_ms as usize) {
                let l = build(codec, frame_ms, Some(ptime_ms)).expect("accepted");
                assert_eq!(
                    l.packet_duration(),
                    Duration::from_millis(u64::from(ptime_ms))
                );
                assert_eq!(
                    l.frame_duration(),
                    Duration::from_millis(u64::from(frame_ms))
                );
                accepted.push(ptime_ms);
            }
            assert_eq!(accepted.len() as u32, MAX_PTIME_MS / frame_ms);
            let l = build(codec, frame_ms, None).expect("accepted");
            assert_eq!(l.packet_duration(), l.frame_duration());
        }
    }
}

#[test]
fn a_peers_ptime_fits_to_whole_frames_within_the_limit() {
    let cases = [
        // (frame_ms, asked, fitted)
        (20, 20, 20),
        (20, 30, 20),
        (20, 40, 40),
        (20, 50, 40),
        (20, 60, 60),
        (20, 120, 120),
        (20, 150, 120),
        (20, 10, 20),
        (20, 0, 20),
        (10, 30, 30),
        (10, 25, 20),
        (10, 5, 10),
        (10, 1000, 120),
    ];
    for (frame_ms, asked, fitted) in cases {
        let got = fit_packet_time(frame_ms, asked);
        assert_eq!(got, fitted, "{frame_ms} ms frames, a=ptime:{asked}");
        // What it returns is always accepted.
        build(Codec::Pcmu, frame_ms, Some(got)).expect("a fitted ptime is valid");
    }
}

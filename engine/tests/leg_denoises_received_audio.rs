//! Noise suppression on the receive path: with `denoise` on, steady noise from the peer
//! comes out at least 10 dB quieter than without it, speech still comes out like the input,
//! and every frame reports RNNoise's voice probability (higher on speech than on noise)
//! along with its RFC 6464 level.

mod leg_harness;

use std::time::Duration;

use confer_engine::leg::{Codec, LegConfig};
use confer_engine::netsim::LinkConfig;
use leg_harness::{Pair, aligned_correlation, epoch, leg, speech};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn run(input: &[f32], denoise: bool) -> Pair {
    let t0 = epoch();
    let a = leg(
        LegConfig {
            codec: Codec::Pcmu,
            ..LegConfig::default()
        },
        None,
        1,
        t0,
    );
    let b = leg(
        LegConfig {
            codec: Codec::Pcmu,
            denoise,
            ..LegConfig::default()
        },
        None,
        2,
        t0,
    );
    let mut pair = Pair::new(a, b, LinkConfig::lan(), 3, t0);
    pair.send_all(input);
    pair.idle(Duration::from_millis(200));
    pair
}

fn rms_db(x: &[f32]) -> f64 {
    let e = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64;
    10.0 * e.log10()
}

#[test]
fn received_noise_is_suppressed_and_speech_kept() {
    // 2 s of white noise at about -30 dBFS, then 4 s of speech.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut input: Vec<f32> = (0..96_000)
        .map(|_| rng.random_range(-0.055f32..0.055))
        .collect();
    let talk = speech(6.0, 4.0);
    input.extend_from_slice(&talk);

    let plain = run(&input, false);
    let clean = run(&input, true);
    // The noise segment after the jitter buffer's start-up and the denoiser's settling.
    let (from, to) = (48_000, 96_000);
    let reduction = rms_db(&plain.out[from..to]) - rms_db(&clean.out[from..to]);
    let speech_out = &clean.out[96_000..];
    let al = aligned_correlation(&talk, speech_out);
    let vad = |range: std::ops::Range<usize>| {
        let v: Vec<f32> = clean.frames[range]
            .iter()
            .map(|f| f.vad_probability.expect("denoising reports VAD"))
            .collect();
        v.iter().sum::<f32>() / v.len() as f32
    };
    let (vad_noise, vad_speech) = (vad(50..100), vad(110..290));
    let voiced = clean.frames[110..290].iter().filter(|f| f.voice).count();
    println!(
        "noise {:.1} dB without, {:.1} dB with: {reduction:.1} dB less; speech correlation \
         {:.3} ({} windows); RNNoise VAD {vad_noise:.2} on noise, {vad_speech:.2} on speech; \
         {voiced}/180 speech frames voiced",
        rms_db(&plain.out[from..to]),
        rms_db(&clean.out[from..to]),
        al.mean,
        al.windows
    );
    assert!(reduction > 10.0, "only {reduction:.1} dB");
    assert!(al.mean > 0.7, "speech correlation {:.3}", al.mean);
    assert!(vad_speech > vad_noise + 0.2);
    assert!(voiced > 60, "{voiced} voiced frames");
    // Before the first packet the frames are idle silence at level 127.
    assert!(clean.frames[0].idle);
    assert_eq!(clean.frames[0].level.level(), 127);
    assert!(plain.frames.iter().all(|f| f.vad_probability.is_none()));
}

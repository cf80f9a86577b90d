//! Inputs shared by the benches: the speech sample at the rates the media path runs at.
//!
//! Real speech (not a sine or noise) so that the codecs, the denoiser and the
//! time-stretcher take the branches they take in a call. Everything here runs before
//! timing starts.

use confer_codecs::resample::Resampler;

/// The speech sample (19 s, 16 kHz mono, 16-bit) as `f32` in [-1, 1).
pub fn speech_16k() -> Vec<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/audio/speech-16k.wav");
    let mut reader = hound::WavReader::open(path).expect("testdata/audio/speech-16k.wav");
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16000, 1, 16),
        "the speech sample must be 16 kHz mono 16-bit"
    );
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("a valid sample")) / 32768.0)
        .collect()
}

/// The speech sample at `to_hz`, through our own resampler, whole 20 ms frames only.
pub fn speech_at(to_hz: u32) -> Vec<f32> {
    let speech = speech_16k();
    let mut resampler = Resampler::new(16000, to_hz, 20).expect("a supported rate");
    let mut out = vec![0.0; resampler.output_len()];
    let mut all = Vec::with_capacity(speech.len() / 16 * (to_hz as usize / 1000));
    for frame in speech.chunks_exact(resampler.input_len()) {
        let n = resampler.process(frame, &mut out).expect("resample");
        all.extend_from_slice(&out[..n]);
    }
    all
}

/// The 48 kHz speech cut into 20 ms frames and Opus-encoded with the engine's
/// default VoIP settings at complexity 10 (`OpusEncoderConfig::default()` otherwise).
pub fn opus_packets_48k(speech_48k: &[f32]) -> Vec<Vec<u8>> {
    use confer_codecs::decoder::AudioEncoder;
    use confer_codecs::opus::{MAX_PACKET_BYTES, OpusEncoder};
    let mut enc = OpusEncoder::new(opus_config()).expect("encoder");
    let mut buf = [0u8; MAX_PACKET_BYTES];
    speech_48k
        .chunks_exact(enc.frame_samples())
        .map(|frame| {
            let n = enc.encode(frame, &mut buf).expect("encode");
            buf[..n].to_vec()
        })
        .collect()
}

/// The encoder settings every Opus bench uses: 48 kHz mono VoIP, 32 kbit/s VBR,
/// complexity 10, in-band FEC for 10 % loss, no DTX, 20 ms frames.
pub fn opus_config() -> confer_codecs::opus::OpusEncoderConfig {
    confer_codecs::opus::OpusEncoderConfig {
        complexity: 10,
        ..Default::default()
    }
}

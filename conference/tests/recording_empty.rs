//! A recording with no audio is still a valid Ogg Opus file.

mod recording_support;

use confer_conference::recording::{OggOpusConfig, OggOpusWriter, Recorder, RecorderConfig};
use recording_support::*;

#[test]
fn an_empty_recording_is_a_valid_ogg_opus_file_of_zero_samples() {
    let rec = Recorder::new(Vec::new(), RecorderConfig::new(11)).unwrap();
    let (bytes, summary) = rec.finish().unwrap();
    assert_eq!(summary.audio_samples, 0);
    let pages = pages(&bytes);
    // OpusHead, OpusTags, and the one flush packet whose end is trimmed back
    // to the pre-skip.
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0].flags, BOS);
    assert_eq!(pages[2].flags, EOS);
    let parsed = parse(&bytes);
    assert_eq!(parsed.final_granule, u64::from(parsed.head.pre_skip));
    assert_eq!(decode(&parsed).len(), 0);
}

#[test]
fn a_writer_finished_without_packets_writes_silence_trimmed_to_zero_samples() {
    let config = OggOpusConfig {
        channels: 2,
        pre_skip: 1000,
        input_sample_rate: 16000,
        serial: 0xdead_beef,
        comments: vec![("TITLE".into(), "nothing said".into())],
    };
    let mut w = OggOpusWriter::new(Vec::new(), &config).unwrap();
    // Nothing to trim in a stream without packets.
    assert!(w.finish(1).is_err());
    let summary = w.finish(0).unwrap();
    // A pre-skip of 1000 needs two 20 ms packets.
    assert_eq!(
        (
            summary.pages,
            summary.packets,
            summary.final_granule,
            summary.audio_samples
        ),
        (3, 2, 1000, 0)
    );
    let bytes = w.into_inner();
    let pages = pages(&bytes);
    assert_eq!(pages.len(), 3);
    assert_eq!(
        (pages[0].flags, pages[1].flags, pages[2].flags),
        (BOS, 0, EOS)
    );
    let parsed = parse(&bytes);
    assert_eq!(parsed.head.channels, 2);
    assert_eq!(parsed.head.input_sample_rate, 16000);
    assert_eq!(parsed.comments, ["TITLE=nothing said"]);
    assert_eq!(decode(&parsed).len(), 0);
}

//! A recording read back by independent readers: headers, exact length,
//! waveform, gaps, page durations, stream flags.

mod recording_support;

use confer_conference::recording::{
    FRAME_SAMPLES, MAX_PAGE_SAMPLES, OggOpusConfig, OggOpusWriter, Recorder, RecorderConfig,
    RecordingError, VENDOR,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recording_support::*;

fn record(frames: &[&[f32]], gaps_after: &[(usize, u32)], config: RecorderConfig) -> Vec<u8> {
    let mut rec = Recorder::new(Vec::new(), config).unwrap();
    for (i, f) in frames.iter().enumerate() {
        rec.push_frame(f).unwrap();
        for &(at, n) in gaps_after {
            if at == i {
                rec.push_silence(n).unwrap();
            }
        }
    }
    let expected = rec.duration_samples();
    let (bytes, summary) = rec.finish().unwrap();
    assert_eq!(summary.audio_samples, expected);
    bytes
}

#[test]
fn a_recorded_speech_file_decodes_to_exactly_the_recorded_samples() {
    let speech = speech_48k();
    let seconds = 10;
    let input = &speech[..48000 * seconds];
    let frames: Vec<&[f32]> = input.chunks_exact(FRAME_SAMPLES).collect();
    let serial = ChaCha8Rng::seed_from_u64(42).random::<u32>();
    let mut config = RecorderConfig::new(serial);
    config.comments = vec![
        ("TITLE".into(), "Weekly sync".into()),
        ("ROOM".into(), "room-17".into()),
    ];
    let bytes = record(&frames, &[], config);
    let parsed = parse(&bytes);
    assert_eq!(parsed.serial, serial);
    assert_eq!(parsed.head.version, 1);
    assert_eq!(parsed.head.channels, 1);
    assert_eq!(parsed.head.input_sample_rate, 48000);
    assert_eq!(parsed.head.output_gain, 0);
    assert_eq!(parsed.head.mapping_family, 0);
    // libopus's look-ahead at 48 kHz: 2.5 ms + 4 ms delay compensation.
    assert_eq!(parsed.head.pre_skip, 312);
    assert_eq!(parsed.vendor, VENDOR);
    assert_eq!(parsed.comments, ["TITLE=Weekly sync", "ROOM=room-17"]);

    let decoded = decode(&parsed);
    assert_eq!(
        decoded.len(),
        input.len(),
        "the file plays exactly the recorded samples"
    );
    let corr = correlation(input, &decoded);
    let kbps = bytes.len() as f64 * 8.0 / seconds as f64 / 1000.0;
    println!(
        "10 s speech: {} bytes ({kbps:.1} kbit/s with Ogg overhead), correlation {corr:.4}",
        bytes.len()
    );
    assert!(corr > 0.9, "correlation {corr}");
    // Aligned to the sample: a one-sample shift correlates worse.
    assert!(correlation(input, &decoded[1..]) < corr);
    assert!(correlation(&input[1..], &decoded) < corr);
}

#[test]
fn a_gap_is_recorded_as_silence_and_keeps_the_timeline() {
    let speech = speech_48k();
    // 1 s of speech, a 1 s gap (no audio for 50 ticks), then the speech that
    // came 2 s in.
    let mut frames: Vec<&[f32]> = speech[..48000].chunks_exact(FRAME_SAMPLES).collect();
    frames.extend(speech[96000..144000].chunks_exact(FRAME_SAMPLES));
    let bytes = record(&frames, &[(49, 50)], RecorderConfig::new(7));
    let decoded = decode(&parse(&bytes));
    assert_eq!(decoded.len(), 3 * 48000);
    // The codec's overlap rings for a few ms into the gap.
    let gap_db = rms_db(&decoded[48000 + 960..96000]);
    let speech_db = rms_db(&speech[..48000]);
    let corr = correlation(&speech[96000..144000], &decoded[96000..]);
    println!(
        "gap {gap_db:.1} dBFS (speech {speech_db:.1} dBFS), speech after the gap correlation {corr:.4}"
    );
    assert!(gap_db < -60.0, "gap level {gap_db}");
    assert!(
        corr > 0.9,
        "the speech after the gap is in its place: {corr}"
    );
}

#[test]
fn pages_hold_at_most_one_second_and_granules_count_48_khz_samples() {
    let speech = speech_48k();
    let frames: Vec<&[f32]> = speech[..48000 * 5].chunks_exact(FRAME_SAMPLES).collect();
    let bytes = record(&frames, &[], RecorderConfig::new(1));
    let pages = pages(&bytes);
    let parsed = parse(&bytes);
    let pre_skip = u64::from(parsed.head.pre_skip);
    assert_eq!(pages[0].granule, 0);
    assert_eq!(pages[1].granule, 0);
    let audio = &pages[2..];
    let mut last = 0;
    let mut durations = Vec::new();
    for p in audio {
        assert!(p.packets_ending > 0, "every audio page ends a packet");
        let d = p.granule - last;
        assert!(
            d <= MAX_PAGE_SAMPLES,
            "page {} lasts {d} samples",
            p.sequence
        );
        durations.push(d);
        last = p.granule;
    }
    println!("audio page durations (samples): {durations:?}");
    // 250 frames + 1 flush frame: five full pages of 50 packets, then one.
    assert_eq!(&durations[..5], &[48000; 5]);
    assert_eq!(audio.len(), 6);
    // The last page ends the 5 s of audio after the pre-skip, trimmed.
    assert_eq!(last, 5 * 48000 + pre_skip);
    // Per-packet view: granule of a full page = 960 x packets so far.
    let full_page_packets = parsed
        .packets
        .iter()
        .take_while(|(_, g)| *g == 48000)
        .count();
    assert_eq!(full_page_packets, 50);
}

#[test]
fn end_of_stream_is_set_on_the_last_page_only() {
    let speech = speech_48k();
    let frames: Vec<&[f32]> = speech[..48000 * 3].chunks_exact(FRAME_SAMPLES).collect();
    let bytes = record(
        &frames,
        &[(10, 3)],
        RecorderConfig::new(ChaCha8Rng::seed_from_u64(3).random()),
    );
    let pages = pages(&bytes);
    let n = pages.len();
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.sequence as usize, i);
        assert_eq!(p.serial, pages[0].serial);
        assert_eq!(p.flags & CONTINUED, 0, "no packet spans pages");
        assert_eq!(p.flags & BOS != 0, i == 0, "BOS on page {i}");
        assert_eq!(p.flags & EOS != 0, i == n - 1, "EOS on page {i}");
        if i > 0 {
            assert!(p.granule >= pages[i - 1].granule);
        }
    }
}

#[test]
fn dropping_an_unfinished_recorder_still_closes_the_stream() {
    let speech = speech_48k();
    let mut bytes = Vec::new();
    {
        let mut rec = Recorder::new(&mut bytes, RecorderConfig::new(9)).unwrap();
        for f in speech[..48000 * 2].chunks_exact(FRAME_SAMPLES).take(73) {
            rec.push_frame(f).unwrap();
        }
    }
    let pages = pages(&bytes);
    assert!(pages.last().unwrap().flags & EOS != 0);
    assert_eq!(decode(&parse(&bytes)).len(), 73 * FRAME_SAMPLES);
}

#[test]
fn the_writer_refuses_malformed_packets_and_out_of_range_trims() {
    let config = OggOpusConfig {
        channels: 1,
        pre_skip: 312,
        input_sample_rate: 48000,
        serial: 5,
        comments: vec![],
    };
    let mut w = OggOpusWriter::new(Vec::new(), &config).unwrap();
    for bad in [&[][..], &[0x03][..], &[0x01, 1, 2, 3][..]] {
        assert!(matches!(
            w.write_packet(bad),
            Err(RecordingError::BadPacket(_))
        ));
    }
    assert_eq!(w.granule(), 0);
    // A 20 ms CELT silence packet (TOC config 31, code 0), then a 60 ms one
    // (a code 3 packet of three 20 ms frames): granules follow the packets.
    w.write_packet(&[0xf8, 0xff, 0xfe]).unwrap();
    w.write_packet(&[0xfb, 0x03, 0xff, 0xfe, 0xfd]).unwrap();
    assert_eq!(w.granule(), 4 * 960);
    // More than the last page, or below the pre-skip: refused, nothing written.
    assert!(
        matches!(w.finish(4 * 960), Err(RecordingError::BadEndTrim { max, .. }) if max == 4 * 960 - 312)
    );
    assert!(!w.is_finished());
    let summary = w.finish(100).unwrap();
    assert_eq!(summary.final_granule, 4 * 960 - 100);
    assert!(matches!(
        w.write_packet(&[0xf8, 0xff, 0xfe]),
        Err(RecordingError::Finished)
    ));
    assert!(matches!(w.finish(0), Err(RecordingError::Finished)));
    let parsed = parse(&w.into_inner());
    assert_eq!(parsed.packets.len(), 2);
    assert_eq!(parsed.final_granule, 4 * 960 - 100);
}

#[test]
fn bad_configuration_and_frame_sizes_are_typed_errors() {
    let config = OggOpusConfig {
        channels: 3,
        pre_skip: 0,
        input_sample_rate: 0,
        serial: 0,
        comments: vec![],
    };
    assert!(matches!(
        OggOpusWriter::new(Vec::new(), &config),
        Err(RecordingError::BadConfig {
            what: "channels",
            ..
        })
    ));
    let mut bad = RecorderConfig::new(0);
    bad.comments = vec![("A=B".into(), "x".into())];
    assert!(matches!(
        Recorder::new(Vec::new(), bad),
        Err(RecordingError::BadComment(_))
    ));
    let mut bad = RecorderConfig::new(0);
    bad.complexity = 11;
    assert!(matches!(
        Recorder::new(Vec::new(), bad),
        Err(RecordingError::Codec(_))
    ));
    let mut rec = Recorder::new(Vec::new(), RecorderConfig::new(0)).unwrap();
    assert!(matches!(
        rec.push_frame(&[0.0; 480]),
        Err(RecordingError::BadFrameSize {
            got: 480,
            expected: 960
        })
    ));
    // Non-finite samples are recorded as silence, not passed to libopus.
    let mut frame = [0.1f32; 960];
    frame[3] = f32::NAN;
    frame[7] = f32::INFINITY;
    rec.push_frame(&frame).unwrap();
    let (bytes, _) = rec.finish().unwrap();
    assert!(decode(&parse(&bytes)).iter().all(|x| x.is_finite()));
}

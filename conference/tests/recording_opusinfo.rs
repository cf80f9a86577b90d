//! Our recordings pass the reference tools: `opusinfo` (opus-tools) reports
//! no warning or error, and `opusdec` plays exactly the recorded samples.
//! The tools are required (the test script installs `opus-tools`): a missing
//! tool fails the test with a message saying so.

mod recording_support;

use confer_conference::recording::{FRAME_SAMPLES, Recorder, RecorderConfig};
use std::path::PathBuf;
use std::process::Command;

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is required for this test: install the Debian package opus-tools"
    );
    Command::new(name)
}

fn write_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn recording(frames: usize, gap: u32) -> (Vec<u8>, u64) {
    let speech = recording_support::speech_48k();
    let mut config = RecorderConfig::new(0x0c0f_fee0);
    config.comments = vec![("TITLE".into(), "opusinfo check".into())];
    let mut rec = Recorder::new(Vec::new(), config).unwrap();
    for (i, f) in speech.chunks_exact(FRAME_SAMPLES).take(frames).enumerate() {
        rec.push_frame(f).unwrap();
        if i == frames / 2 {
            rec.push_silence(gap).unwrap();
        }
    }
    let duration = rec.duration_samples();
    let (bytes, _) = rec.finish().unwrap();
    (bytes, duration)
}

fn assert_opusinfo_is_clean(path: &PathBuf) -> String {
    let out = tool("opusinfo").arg(path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "opusinfo failed on {path:?}");
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("warning") && !lower.contains("error"),
        "opusinfo complains:\n{text}"
    );
    text
}

fn opusdec_samples(path: &PathBuf) -> usize {
    let wav = path.with_extension("wav");
    let out = tool("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(path)
        .arg(&wav)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "opusdec failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hound::WavReader::open(&wav).unwrap().duration() as usize
}

#[test]
fn opusinfo_finds_no_problem_and_opusdec_plays_the_exact_length() {
    // 12.34 s of speech with a 1 s gap in the middle.
    let (bytes, duration) = recording(617, 50);
    let path = write_file("recording-speech.opus", &bytes);
    let text = assert_opusinfo_is_clean(&path);
    // opusinfo truncates to the millisecond below (13.34 s prints 13.339).
    let length = text
        .split("Playback length: 0m:")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|secs| secs.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no playback length in:\n{text}"));
    assert!((length - 13.34).abs() <= 0.001, "playback length {length}");
    assert!(text.contains("Pre-skip: 312"), "{text}");
    assert_eq!(opusdec_samples(&path) as u64, duration);
}

#[test]
fn opusinfo_accepts_an_empty_recording() {
    let (bytes, duration) = recording(0, 0);
    assert_eq!(duration, 0);
    let path = write_file("recording-empty.opus", &bytes);
    assert_opusinfo_is_clean(&path);
    assert_eq!(opusdec_samples(&path), 0);
}

#[test]
fn opusinfo_accepts_a_writer_finished_without_packets() {
    use confer_conference::recording::{OggOpusConfig, OggOpusWriter};
    let config = OggOpusConfig {
        channels: 1,
        pre_skip: 312,
        input_sample_rate: 48000,
        serial: 77,
        comments: vec![],
    };
    let mut w = OggOpusWriter::new(Vec::new(), &config).unwrap();
    w.finish(0).unwrap();
    let path = write_file("recording-no-packets.opus", &w.into_inner());
    assert_opusinfo_is_clean(&path);
    assert_eq!(opusdec_samples(&path), 0);
}

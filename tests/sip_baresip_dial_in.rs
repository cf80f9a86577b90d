//! Dial-in with a real softphone: baresip, headless, calls the room's number once with Opus
//! and once with G.711 µ-law, its microphone an `aufile` source playing the repository's
//! speech sample and its speaker muted (`aubridge`, nothing on the other end). A
//! synthetic RTP participant joined through the control API hears the room: its decoded
//! playout must correlate with the speech baresip sent, so the test checks the audio
//! itself (baresip's encoder, confer's decoder, mixer and re-encoding), not packet counts.
//! The API must list baresip with the codec it offered while the call lasts, and the call
//! must leave the room when baresip hangs up.
//!
//! baresip runs with its own configuration directory (written by the test, under the
//! temporary directory), dials at start (`-e /dial ...`) and quits after a few seconds
//! (`-t`), hanging up. Each run is bounded (killed at its limit) and its output, with the
//! SIP trace (`-s`), is printed when an assertion fails. A test skips, with a message,
//! only when baresip is not installed and `CI` is not set.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use sip_support::rms;

use sip_support::room_participants as participants;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use confer_engine::leg::LegConfig;
use leg_harness::aligned_correlation;
use ringbuf::traits::{Consumer, Observer};
use serde_json::Value;
use serve_harness::speech;
use sip_support::{SipServer, baresip, run_bounded};

const NUMBER: &str = "+15550100";
/// Where the speech baresip plays starts in the sample, and how long it is (longer than
/// the call: baresip never reaches its end).
const SPEECH_OFFSET: f64 = 0.5;
const SPEECH_SECONDS: f64 = 9.0;
/// baresip quits (hanging up) this long after it starts.
const CALL_SECONDS: u64 = 6;
/// The speech compared: the first seconds baresip sends, all within the call.
const COMPARED_SECONDS: usize = 4;
/// The lowest mean correlation that counts as hearing baresip's speech. Measured with
/// `cargo test -p confer --test sip_baresip_dial_in -- --nocapture` (three runs, 2-core
/// machine): Opus 0.83-0.87 (worst window 0.54), PCMU 0.85-0.86 (worst window 0.66);
/// against the wrong stretch of speech (5 s later in the sample) both give 0.30.
const MIN_CORRELATION: f64 = 0.6;

/// The one codec baresip offers, as its accounts file names it, with the rate and
/// channels of its audio source.
struct BaresipCodec {
    name: &'static str,
    rate: u32,
    channels: u16,
}

const OPUS: BaresipCodec = BaresipCodec {
    name: "opus/48000/2",
    rate: 48_000,
    channels: 2,
};
const PCMU: BaresipCodec = BaresipCodec {
    name: "PCMU/8000/1",
    rate: 8000,
    channels: 1,
};

/// A directory of baresip's configuration, removed when dropped.
struct ConfigDir(PathBuf);

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes baresip's `config`, `accounts` and microphone (`speech`, 48 kHz) into a fresh
/// directory: SIP on a free loopback port, no registration, STUN, ICE or media
/// encryption, `codec` the only audio codec it offers, no speaker.
fn baresip_config(name: &str, codec: &BaresipCodec, speech: &[f32]) -> ConfigDir {
    let dir = std::env::temp_dir().join(format!("confer-baresip-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create baresip's config dir");
    let speech_wav = dir.join("speech.wav");
    write_wav(&speech_wav, speech, codec.rate, codec.channels);
    let modules = [
        "/usr/lib/baresip/modules",
        "/usr/lib/x86_64-linux-gnu/baresip/modules",
    ]
    .into_iter()
    .find(|p| Path::new(p).join("aufile.so").is_file())
    .unwrap_or("/usr/lib/baresip/modules");
    let config = format!(
        "poll_method epoll\n\
         sip_listen 127.0.0.1:0\n\
         net_interface 127.0.0.1\n\
         call_local_timeout 10\n\
         call_max_calls 1\n\
         audio_source aufile,{source}\n\
         audio_player aubridge,nil\n\
         audio_alert aubridge,nil\n\
         audio_level no\n\
         rtcp_mux no\n\
         jitter_buffer_delay 5-10\n\
         module_path {modules}\n\
         module g711.so\n\
         module opus.so\n\
         module aufile.so\n\
         module aubridge.so\n\
         module_tmp account.so\n\
         module_app menu.so\n",
        source = speech_wav.display(),
    );
    std::fs::write(dir.join("config"), config).expect("write baresip's config");
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:baresip@127.0.0.1>;regint=0;audio_codecs={}\n",
            codec.name
        ),
    )
    .expect("write baresip's accounts");
    ConfigDir(dir)
}

/// Writes `pcm` (48 kHz) as a 16-bit WAV file of `rate` and `channels` (the same signal on
/// each): baresip's `aufile` plays only files at the codec's own rate and channel count.
fn write_wav(path: &Path, pcm: &[f32], rate: u32, channels: u16) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let pcm = if rate == 48_000 {
        pcm.to_vec()
    } else {
        leg_harness::resample_all(pcm, 48_000, rate)
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create the speech file");
    for &s in &pcm {
        let v = (s * 32767.0).clamp(-32768.0, 32767.0) as i16;
        for _ in 0..channels {
            w.write_sample(v).expect("write the speech file");
        }
    }
    w.finalize().expect("finish the speech file");
}

/// What one call showed.
struct Call {
    /// The synthetic participant's playout: the room's audio without itself.
    heard: Vec<f32>,
    /// The API's view of baresip's participant while it was in the call, if it joined.
    caller: Option<Value>,
    /// baresip's exit status and output (SIP trace included).
    status: std::process::ExitStatus,
    output: String,
}

/// Has baresip (offering only `codec`) call the room `room_name` of a fresh confer
/// (RTP slot `slot`) while a silent synthetic participant listens.
fn call_in(
    baresip: &Path,
    slot: u16,
    room_name: &str,
    codec: &BaresipCodec,
) -> (SipServer, u64, Call) {
    let s = SipServer::start(
        slot,
        10,
        &[("CONFER_DIAL_IN", &format!("{NUMBER}={room_name}"))],
    );
    let room = s
        .server
        .create_room(&format!(r#"{{"name":"{room_name}"}}"#));
    let dir = baresip_config(room_name, codec, &speech(SPEECH_OFFSET, SPEECH_SECONDS));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let call = runtime.block_on(async {
        // The listener says nothing: its capture is 20 ms of silence (then underruns).
        let mut speakers = serve_harness::join_speakers(
            &s.server,
            room,
            &[vec![0.0; 960]],
            &LegConfig::default(),
            60,
            12 * 48_000,
        )
        .await;
        let (udp, io, mut remote, synthetic) = speakers.remove(0);
        let listen = Duration::from_secs(CALL_SECONDS + 1);
        let leg = tokio::spawn(udp.run_until(io, tokio::time::sleep(listen)));
        let args: Vec<String> = [
            "-f".to_owned(),
            dir.0.display().to_string(),
            "-s".to_owned(),
            "-t".to_owned(),
            CALL_SECONDS.to_string(),
            "-e".to_owned(),
            format!("/dial sip:{NUMBER}@{}", s.udp),
        ]
        .into();
        let program = baresip.to_path_buf();
        let run = tokio::task::spawn_blocking(move || {
            run_bounded(&program, &args, Duration::from_secs(CALL_SECONDS + 8))
        });
        // In the call: the API lists baresip (polled until it joins, at most 4 s).
        let deadline = Instant::now() + Duration::from_secs(4);
        let caller_id = loop {
            if let Some(&p) = participants(&s, room).iter().find(|&&p| p != synthetic) {
                break Some(p);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Let a second of media flow before reading its counters.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let caller = caller_id.map(|id| {
            let (status, p) =
                s.server
                    .request("GET", &format!("/v1/rooms/{room}/participants/{id}"), None);
            assert_eq!(status, 200, "{p}");
            p
        });
        let _ = leg.await.expect("the synthetic participant ran");
        let (status, output) = run.await.expect("baresip's runner");
        let mut heard = vec![0.0f32; remote.playout.occupied_len()];
        remote.playout.pop_slice(&mut heard);
        Call {
            heard,
            caller,
            status,
            output,
        }
    });
    (s, room, call)
}

/// The checks both codecs share: baresip joined with `codec`, sent media, left on hang-up,
/// and the listener's playout correlates with baresip's speech.
fn assert_heard(s: &SipServer, room: u64, call: &Call, codec: &str) {
    let log = || format!("baresip ({}):\n{}", call.status, call.output);
    let caller = call
        .caller
        .as_ref()
        .unwrap_or_else(|| panic!("baresip never joined the room\n{}", log()));
    assert_eq!(caller["codec"], codec, "{caller}\n{}", log());
    assert!(
        caller["datagrams_received"].as_u64() > Some(30),
        "too few datagrams from baresip: {caller}\n{}",
        log()
    );
    assert_eq!(caller["datagrams_foreign"], 0, "{caller}\n{}", log());
    // baresip quit and hung up: only the synthetic participant is left.
    let deadline = Instant::now() + Duration::from_secs(3);
    while participants(s, room).len() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        participants(s, room).len(),
        1,
        "baresip's call left the room when it hung up\n{}",
        log()
    );

    let sent = speech(SPEECH_OFFSET, COMPARED_SECONDS as f64);
    let a = aligned_correlation(&sent, &call.heard);
    println!(
        "{codec}: the synthetic participant hears baresip: correlation {:.3} (min {:.3}, {} windows), delay {:.0} ms, rms {:.4}",
        a.mean,
        a.min,
        a.windows,
        a.delay_ms,
        rms(&call.heard)
    );
    assert!(
        rms(&call.heard) > 0.003,
        "the synthetic participant heard silence\n{}",
        log()
    );
    assert!(
        a.windows >= 5 && a.mean > MIN_CORRELATION,
        "the synthetic participant does not hear baresip's speech ({codec}): {a:?}\n{}",
        log()
    );
}

#[test]
fn baresip_calling_in_with_opus_is_heard_by_another_participant() {
    let Some(baresip) = baresip() else { return };
    let (s, room, call) = call_in(&baresip, 0, "baresip-opus", &OPUS);
    assert_heard(&s, room, &call, "opus");
}

#[test]
fn baresip_calling_in_with_pcmu_is_heard_by_another_participant() {
    let Some(baresip) = baresip() else { return };
    let (s, room, call) = call_in(&baresip, 1, "baresip-pcmu", &PCMU);
    assert_heard(&s, room, &call, "pcmu");
}

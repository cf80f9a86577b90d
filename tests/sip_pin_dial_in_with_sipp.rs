//! Dial-in with a PIN, with real SIP software: a room made through the control API gets a
//! dial-in number and a PIN; sipp dials the number, hears the prompts, enters the PIN
//! (RFC 2833 telephone-events played from a pcap, or SIP INFO), and is verifiably in the
//! room: the API lists it, and a synthetic participant's speech reaches sipp's RTP port
//! from the same socket that played it the prompts. Wrong PINs three times: confer says
//! goodbye and hangs up.
//!
//! Each test bounds sipp's run and skips, with a message, only when sipp is not installed
//! and `CI` is not set.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use sip_support::rms;

use std::time::{Duration, Instant};

use confer_engine::leg::LegConfig;
use leg_harness::aligned_correlation;
use serve_harness::speech;
use sip_support::{
    RtpCapture, SipServer, assert_sipp_ok, decode_alaw_48k, free_udp_port, rfc4733_presses,
    room_participants as participants, rtp_payloads, run_sipp, scenario, sipp,
    wait_for_participants, write_rtp_pcap,
};

fn sipp_args(server: &SipServer, media_port: u16, extra: &[&str]) -> Vec<String> {
    sip_support::sipp_uac_args(server, PIN_NUMBER, free_udp_port(), media_port, extra)
}

const PIN_NUMBER: &str = "+15555550199";

/// A room with dial-in: its id, number and PIN.
fn dial_in_room(s: &SipServer, name: &str) -> (u64, String, String) {
    let (status, v) = s.server.request(
        "POST",
        "/v1/rooms",
        Some(&format!(r#"{{"name":"{name}","dial_in":true}}"#)),
    );
    assert_eq!(status, 201, "{v}");
    let pin = v["dial_in"]["pin"].as_str().expect("a PIN").to_owned();
    let number = v["dial_in"]["number"]
        .as_str()
        .expect("a number")
        .to_owned();
    (v["id"].as_u64().expect("id"), number, pin)
}

fn metric(s: &SipServer, name: &str) -> f64 {
    let (_, text) = s.server.request_text("GET", "/metrics", None);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_room_made_with_dial_in_gets_a_fresh_pin_and_the_number_and_loses_it_when_deleted() {
    let s = SipServer::start(5, 4, &[("CONFER_DIAL_IN", PIN_NUMBER)]);
    let (a, number, pin_a) = dial_in_room(&s, "a");
    let (b, _, pin_b) = dial_in_room(&s, "b");
    assert_eq!(number, PIN_NUMBER);
    assert_eq!(pin_a.len(), 6, "pin_digits defaults to 6");
    assert!(pin_a.bytes().all(|c| c.is_ascii_digit()));
    assert_ne!(pin_a, pin_b);
    let (_, got) = s.server.request("GET", &format!("/v1/rooms/{a}"), None);
    assert_eq!(got["dial_in"]["pin"], pin_a.as_str());
    assert_eq!(metric(&s, "confer_dial_in_pins "), 2.0);
    let (status, _) = s.server.request("DELETE", &format!("/v1/rooms/{b}"), None);
    assert_eq!(status, 204);
    assert_eq!(metric(&s, "confer_dial_in_pins "), 1.0);
    // A room without dial-in shows none.
    let plain = s.server.create_room(r#"{"name":"plain"}"#);
    let (_, got) = s.server.request("GET", &format!("/v1/rooms/{plain}"), None);
    assert!(got.get("dial_in").is_none(), "{got}");
}

#[test]
fn without_a_pin_number_a_room_with_dial_in_is_refused_and_not_created() {
    let s = SipServer::start(6, 4, &[]);
    let (status, v) = s
        .server
        .request("POST", "/v1/rooms", Some(r#"{"dial_in":true}"#));
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("pin = true")),
        "{v}"
    );
    let (_, rooms) = s.server.request("GET", "/v1/rooms", None);
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(0), "{rooms}");
}

#[test]
fn a_sipp_caller_entering_the_pin_by_rfc_2833_hears_the_prompts_and_then_the_room() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(7, 10, &[("CONFER_DIAL_IN", PIN_NUMBER)]);
    let (room, _, pin) = dial_in_room(&s, "board");
    // The PIN as telephone-events (payload type 101, as the scenario's SDP says), in a
    // pcap sipp plays into the call a second after the answer.
    let dir = std::env::temp_dir().join(format!("confer-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pcap = dir.join("pin.pcap");
    write_rtp_pcap(&pcap, &rfc4733_presses(&pin, 101, Duration::ZERO));
    let template = std::fs::read_to_string(scenario("uac_pin_2833.xml")).expect("scenario");
    let xml = dir.join("uac_pin_2833.xml");
    std::fs::write(
        &xml,
        template.replace("PIN_PCAP", &pcap.display().to_string()),
    )
    .expect("write the scenario");

    let media_port = free_udp_port();
    let capture = RtpCapture::start(media_port);
    if capture.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "capturing RTP needs CAP_NET_RAW, which CI has (root)"
        );
        eprintln!("not capturing confer's RTP to sipp: no CAP_NET_RAW");
    }
    let args = sipp_args(&s, media_port, &["-sf", &xml.display().to_string()]);
    let call = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(30)));

    // The caller is not in the room while it enters its PIN, then it is.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        participants(&s, room).is_empty(),
        "in the room before the PIN"
    );
    let ids = wait_for_participants(&s, room, 1, Duration::from_secs(8));
    assert_eq!(ids.len(), 1, "the PIN let the caller in");
    let admitted = Instant::now();
    let caller = ids[0];
    let (status, p) = s.server.request(
        "GET",
        &format!("/v1/rooms/{room}/participants/{caller}"),
        None,
    );
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["codec"], "pcma", "{p}");
    assert_eq!(p["rtp_address"], format!("127.0.0.1:{media_port}"), "{p}");

    // A synthetic participant talks in the room now; sipp must receive it.
    let source = speech(0.5, 3.0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let talk_start = runtime.block_on(async {
        let mut speakers = serve_harness::join_speakers(
            &s.server,
            room,
            std::slice::from_ref(&source),
            &LegConfig::default(),
            70,
            48_000,
        )
        .await;
        let (udp, io, _remote, _) = speakers.remove(0);
        let start = Instant::now();
        let _ = udp
            .run_until(io, tokio::time::sleep(Duration::from_millis(3500)))
            .await;
        start
    });
    let out = call.join().expect("sipp thread");
    assert_sipp_ok(&out, 1);
    assert!(wait_for_participants(&s, room, 1, Duration::from_secs(3)).len() <= 1);

    if let Some(capture) = capture {
        let local: std::net::SocketAddr = p["local_rtp_address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("local_rtp_address");
        let packets: Vec<_> = capture
            .finish()
            .into_iter()
            .filter(|c| c.from == local)
            .collect();
        // Before the admission, the same socket played the prompts: speech, not silence.
        let before: Vec<_> = packets
            .iter()
            .filter(|c| c.at.is_some_and(|t| t < admitted))
            .cloned()
            .collect();
        let prompts = decode_alaw_48k(&rtp_payloads(&before, 8));
        println!(
            "prompts: {} PCMA packets before the admission, rms {:.4}",
            prompts.len() / 960,
            rms(&prompts)
        );
        assert!(
            prompts.len() >= 20 * 960,
            "prompt packets: {}",
            prompts.len() / 960
        );
        assert!(rms(&prompts) > 0.01, "the prompts were silent");
        // After: the synthetic participant's speech.
        let after: Vec<_> = packets
            .iter()
            .filter(|c| c.at.is_some_and(|t| t >= talk_start))
            .cloned()
            .collect();
        // The capture stamps packets when its thread reads them, late on a loaded
        // machine, so packets from before the talker started can count as after: 0.3 s
        // of silence in front leaves the alignment search (up to 1 s) room for that.
        let mut received = vec![0.0f32; 48_000 * 3 / 10];
        received.extend(decode_alaw_48k(&rtp_payloads(&after, 8)));
        println!(
            "{} packets from the caller's socket, {} after the talker started",
            packets.len(),
            after.len()
        );
        let a = aligned_correlation(&source, &received);
        println!(
            "sipp receives the room: correlation {:.3} (min {:.3}, {} windows), delay {:.0} ms",
            a.mean, a.min, a.windows, a.delay_ms
        );
        assert!(
            a.windows >= 5 && a.mean > 0.5,
            "sipp does not get the room's audio: {a:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pin_sent_by_sip_info_admits_the_caller() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(8, 6, &[("CONFER_DIAL_IN", PIN_NUMBER)]);
    let (room, _, pin) = dial_in_room(&s, "info");
    let mut extra = vec![
        "-sf".to_owned(),
        scenario("uac_pin_info.xml").display().to_string(),
    ];
    for (i, d) in pin.chars().enumerate() {
        extra.extend(["-key".to_owned(), format!("d{}", i + 1), d.to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let args = sipp_args(&s, free_udp_port(), &extra);
    let call = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(30)));
    let ids = wait_for_participants(&s, room, 1, Duration::from_secs(8));
    let out = call.join().expect("sipp thread");
    assert_eq!(
        ids.len(),
        1,
        "the PIN by INFO let the caller in\n{}\n{}",
        s.server.log(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_sipp_ok(&out, 1);
    assert!(
        wait_for_participants(&s, room, 0, Duration::from_secs(3)).is_empty(),
        "the caller left with its BYE"
    );
    assert_eq!(
        metric(&s, "confer_sip_calls_ended_total{reason=\"bye\"}"),
        1.0
    );
}

#[test]
fn three_wrong_pins_end_the_call_with_a_goodbye_and_a_bye_and_the_pin_is_not_logged() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(9, 6, &[("CONFER_DIAL_IN", PIN_NUMBER)]);
    let (room, _, pin) = dial_in_room(&s, "closed");
    // A PIN that opens nothing: the room's with its first digit changed.
    let wrong: String = pin
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                char::from(b'0' + (c as u8 - b'0' + 1) % 10)
            } else {
                c
            }
        })
        .collect();
    let mut extra = vec![
        "-sf".to_owned(),
        scenario("uac_pin_info_wrong.xml").display().to_string(),
    ];
    for (i, d) in wrong.chars().enumerate() {
        extra.extend(["-key".to_owned(), format!("d{}", i + 1), d.to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let args = sipp_args(&s, free_udp_port(), &extra);
    let out = run_sipp(&sipp, &args, Duration::from_secs(40));
    // The scenario ends by receiving confer's BYE.
    assert_sipp_ok(&out, 1);
    assert!(
        participants(&s, room).is_empty(),
        "a wrong PIN let the caller in"
    );
    assert_eq!(
        metric(&s, "confer_sip_calls_ended_total{reason=\"prompts\"}"),
        1.0
    );
    let log = s.server.log();
    assert!(
        !log.contains(&pin) && !log.contains(&wrong),
        "a PIN is in the log"
    );
    // The compliance archive holds each failed entry (three), never the PIN.
    let (status, data) = s.server.stop_keeping_data();
    assert!(status.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confer"))
        .args(["archive", "export"])
        .env("CONFER_DATA_DIR", &data)
        .output()
        .expect("confer archive export runs");
    let _ = std::fs::remove_dir_all(&data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export = String::from_utf8_lossy(&out.stdout);
    let pin_records: Vec<serde_json::Value> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "pin_entry")
        .collect();
    assert_eq!(pin_records.len(), 3, "{export}");
    assert!(
        pin_records
            .iter()
            .all(|r| r["details"]["outcome"] == "rejected"),
        "{export}"
    );
    assert!(
        !export.contains(&format!("\"{wrong}\"")) && !export.contains(&format!("\"{pin}\"")),
        "a PIN is in the archive"
    );
}

/// `keys` as DTMF tones in PCMA RTP (20 ms packets at 8 kHz, payload type 8), for a
/// phone without RFC 4733: 100 ms tones and pauses at -10 dBov per tone.
fn inband_presses(keys: &str) -> Vec<(Duration, Vec<u8>)> {
    use confer_codecs::dtmf::DtmfGenerator;
    let mut generator = DtmfGenerator::new(8000).expect("8 kHz");
    generator.push_digits(keys).expect("keypad digits");
    let mut packets = Vec::new();
    let mut frame = [0.0f32; 160];
    let (mut seq, mut ts) = (7000u16, 160_000u32);
    // Half a second of silence first, then the tones, then silence again.
    for k in 0..(25 + keys.len() * 10 + 25) {
        if k >= 25 {
            generator.fill(&mut frame);
        } else {
            frame.fill(0.0);
        }
        let mut p = vec![0x80, if k == 0 { 0x80 | 8 } else { 8 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x5eed_0008u32.to_be_bytes());
        p.extend(
            frame.iter().map(|&x| {
                confer_codecs::g711::linear_to_alaw((x.clamp(-1.0, 1.0) * 32767.0) as i16)
            }),
        );
        packets.push((Duration::from_millis(20 * k as u64), p));
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
    }
    packets
}

#[test]
fn a_phone_without_rfc_4733_enters_the_pin_as_tones() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(15, 6, &[("CONFER_DIAL_IN", PIN_NUMBER)]);
    let (room, _, pin) = dial_in_room(&s, "tones");
    let dir = std::env::temp_dir().join(format!("confer-pin-tones-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pcap = dir.join("pin-tones.pcap");
    write_rtp_pcap(&pcap, &inband_presses(&pin));
    // The RFC 2833 scenario without telephone-event in its offer.
    let template = std::fs::read_to_string(scenario("uac_pin_2833.xml")).expect("scenario");
    let xml = dir.join("uac_pin_tones.xml");
    let edited = template
        .replace("RTP/AVP 8 101", "RTP/AVP 8")
        .lines()
        .filter(|l| !l.contains(":101 "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("PIN_PCAP", &pcap.display().to_string());
    assert!(!edited.contains("rtpmap:101") && edited.contains("RTP/AVP 8\n"));
    std::fs::write(&xml, edited).expect("write the scenario");
    let args = sipp_args(&s, free_udp_port(), &["-sf", &xml.display().to_string()]);
    let call = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(30)));
    let ids = wait_for_participants(&s, room, 1, Duration::from_secs(10));
    let out = call.join().expect("sipp thread");
    assert_eq!(
        ids.len(),
        1,
        "the PIN as tones let the caller in\n{}",
        s.server.log()
    );
    assert_sipp_ok(&out, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_room_that_announces_joins_plays_the_prompt_to_who_is_there() {
    use confer_pstn_bridge::ivr::{PromptId, Prompts};
    let Some(sipp) = sipp() else { return };
    const NUMBER: &str = "+15555550142";
    let s = SipServer::start(16, 6, &[("CONFER_DIAL_IN", &format!("{NUMBER}=announced"))]);
    let room = s
        .server
        .create_room(r#"{"name":"announced","announce_joins":true}"#);
    // A participant who says nothing, listening.
    let silence = vec![0.0f32; 6 * 48_000];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let heard = runtime.block_on(async {
        let mut speakers = serve_harness::join_speakers(
            &s.server,
            room,
            std::slice::from_ref(&silence),
            &LegConfig::default(),
            160,
            6 * 48_000,
        )
        .await;
        let (udp, io, mut remote, _) = speakers.remove(0);
        let listen = tokio::spawn(udp.run_until(io, tokio::time::sleep(Duration::from_secs(5))));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // sipp's built-in caller joins (and stays 2 s).
        let args = sip_support::sipp_uac_args(
            &s,
            NUMBER,
            free_udp_port(),
            free_udp_port(),
            &["-sn", "uac", "-d", "2000"],
        );
        let sipp_path = sipp.clone();
        let call = tokio::task::spawn_blocking(move || {
            run_sipp(&sipp_path, &args, Duration::from_secs(20))
        });
        let _ = listen.await;
        let out = call.await.expect("sipp");
        assert_sipp_ok(&out, 1);
        use ringbuf::traits::{Consumer, Observer};
        let mut heard = vec![0.0f32; remote.playout.occupied_len()];
        remote.playout.pop_slice(&mut heard);
        heard
    });
    let prompts = Prompts::embedded(48_000).expect("the prompts");
    let joined = prompts.pcm(PromptId::ParticipantJoined);
    let a = aligned_correlation(joined, &heard);
    println!(
        "the listener hears the join announcement: correlation {:.3} ({} windows), rms {:.4}",
        a.mean,
        a.windows,
        rms(&heard)
    );
    assert!(
        a.windows >= 3 && a.mean > 0.5,
        "no announcement heard: {a:?}"
    );
}

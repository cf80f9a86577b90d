//! Dial-in to a fixed room with real SIP software: sipp calls the room's number, sends
//! G.711 A-law audio (sipp's own `g711a.pcap`), and must be verifiably in the room: the
//! control API lists it as a participant, a synthetic RTP participant in the same room
//! hears sipp's audio (its decoded playout correlates with the pcap), and sipp's media
//! port receives the synthetic participant's speech (captured on the wire and decoded:
//! sipp does not decode). Also sipp's built-in `uac` scenario over UDP and TCP, a delayed
//! offer (SDP only in the 200 and the ACK), hold/resume by re-INVITE, and in-call keys
//! (RFC 4733 `*6` mute toggle, `*7` volume).
//!
//! Each test bounds sipp's run (it is killed at its limit) and skips, with a message,
//! only when sipp is not installed and `CI` is not set.

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
use sip_support::{
    RtpCapture, SipServer, assert_sipp_ok, decode_alaw_48k, free_udp_port, pcap_rtp_payloads,
    rtp_payloads, run_sipp, sipp, wait_for_participants,
};

/// sipp's arguments for one call to the room's number.
fn sipp_args(server: &SipServer, sip_port: u16, media_port: u16, extra: &[&str]) -> Vec<String> {
    sip_support::sipp_uac_args(server, NUMBER, sip_port, media_port, extra)
}

fn scenario(name: &str) -> String {
    sip_support::scenario(name).display().to_string()
}

const NUMBER: &str = "+15555550100";
const PCAP: &str = "/usr/share/sip-tester/g711a.pcap";

#[test]
fn a_sipp_caller_dialling_the_room_number_is_in_the_room_both_ways() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(0, 10, &[("CONFER_DIAL_IN", &format!("{NUMBER}=standup"))]);
    // The room exists already (made through the API): the call finds it by name.
    let room = s.server.create_room(r#"{"name":"standup"}"#);
    let media_port = free_udp_port();
    let capture = RtpCapture::start(media_port);
    if capture.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "capturing RTP needs CAP_NET_RAW, which CI has (root)"
        );
        eprintln!("not capturing confer's RTP to sipp: no CAP_NET_RAW");
    }
    let source = speech(0.5, 5.0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (heard, sip_participant, sipp_out) = runtime.block_on(async {
        let mut speakers = serve_harness::join_speakers(
            &s.server,
            room,
            std::slice::from_ref(&source),
            &LegConfig::default(),
            40,
            10 * 48_000,
        )
        .await;
        let (udp, io, mut remote, synthetic) = speakers.remove(0);
        let leg = tokio::spawn(udp.run_until(io, tokio::time::sleep(Duration::from_secs(6))));
        let args = sipp_args(
            &s,
            free_udp_port(),
            media_port,
            &["-sf", &scenario("uac_pcma_pcap.xml"), "-d", "4000"],
        );
        let sipp_path: PathBuf = sipp.clone();
        let call = std::thread::spawn(move || run_sipp(&sipp_path, &args, Duration::from_secs(20)));
        // In the call: the API lists the caller as a PCMA participant on sipp's port.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ids = participants(&s, room);
        assert_eq!(ids.len(), 2, "the caller is in the room: {ids:?}");
        let caller = *ids.iter().find(|&&p| p != synthetic).expect("the caller");
        let (status, p) = s.server.request(
            "GET",
            &format!("/v1/rooms/{room}/participants/{caller}"),
            None,
        );
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["codec"], "pcma", "{p}");
        assert_eq!(p["rtp_address"], format!("127.0.0.1:{media_port}"), "{p}");
        assert!(p["datagrams_received"].as_u64() > Some(30), "{p}");
        assert_eq!(p["datagrams_foreign"], 0, "{p}");
        let _ = leg.await.expect("the synthetic participant ran");
        let out = tokio::task::spawn_blocking(move || call.join().expect("sipp thread"))
            .await
            .expect("join");
        let mut heard = vec![0.0f32; remote.playout.occupied_len()];
        remote.playout.pop_slice(&mut heard);
        (heard, p, out)
    });
    assert_sipp_ok(&sipp_out, 1);
    // BYE: the caller left.
    let left = wait_for_participants(&s, room, 1, Duration::from_secs(3));
    assert_eq!(left.len(), 1, "the caller left after BYE: {left:?}");

    // The synthetic participant heard sipp's audio: its playout matches the pcap.
    let sent_by_sipp = decode_alaw_48k(&pcap_rtp_payloads(Path::new(PCAP), 8));
    let a = aligned_correlation(&sent_by_sipp[..sent_by_sipp.len().min(4 * 48_000)], &heard);
    println!(
        "the synthetic participant hears sipp: correlation {:.3} (min {:.3}, {} windows), delay {:.0} ms, rms {:.4}",
        a.mean,
        a.min,
        a.windows,
        a.delay_ms,
        rms(&heard)
    );
    assert!(
        rms(&heard) > 0.003,
        "the synthetic participant heard silence"
    );
    assert!(
        a.windows >= 5 && a.mean > 0.5,
        "it does not hear sipp: {a:?}"
    );

    // sipp's media port received the synthetic participant's speech, from the caller's
    // RTP socket.
    if let Some(capture) = capture {
        let local: std::net::SocketAddr = sip_participant["local_rtp_address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("local_rtp_address");
        let packets: Vec<_> = capture
            .finish()
            .into_iter()
            .filter(|c| c.from == local)
            .collect();
        let payloads = rtp_payloads(&packets, 8);
        // The call starts a fraction of a second into the synthetic participant's speech,
        // so sipp's audio begins ahead of the source; a second of silence in front puts
        // it behind, where the alignment search looks. The first 3 s of the source are
        // all within the call.
        let mut received = vec![0.0f32; 48_000];
        received.extend(decode_alaw_48k(&payloads));
        let a = aligned_correlation(&source[..3 * 48_000], &received);
        println!(
            "sipp receives the synthetic participant: {} PCMA packets, correlation {:.3} (min {:.3}, {} windows), delay {:.0} ms",
            payloads.len(),
            a.mean,
            a.min,
            a.windows,
            a.delay_ms
        );
        assert!(
            payloads.len() >= 150,
            "{} PCMA packets to sipp",
            payloads.len()
        );
        assert!(
            a.windows >= 5 && a.mean > 0.5,
            "sipp does not get the room's audio: {a:?}"
        );
    }
}

/// The room named `name` (its id), if the API lists one.
fn room_named(s: &SipServer, name: &str) -> Option<(u64, Value)> {
    let (status, v) = s.server.request("GET", "/v1/rooms", None);
    assert_eq!(status, 200, "{v}");
    v["rooms"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| (r["id"].as_u64().expect("id"), r.clone()))
}

#[test]
fn sipps_built_in_caller_over_udp_and_tcp_creates_the_room_and_leaves_it_empty() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(1, 20, &[("CONFER_DIAL_IN", &format!("{NUMBER}=builtin"))]);
    assert!(room_named(&s, "builtin").is_none());
    let udp = run_sipp(
        &sipp,
        &sipp_args(
            &s,
            free_udp_port(),
            free_udp_port(),
            &["-sn", "uac", "-d", "1000", "-r", "4"],
        )
        .into_iter()
        .map(|a| if a == "1" { "4".to_owned() } else { a })
        .collect::<Vec<_>>(),
        Duration::from_secs(20),
    );
    assert_sipp_ok(&udp, 4);
    let (room, _) = room_named(&s, "builtin").expect("the first call created the room");
    let tcp_target = s.tcp.to_string();
    let mut tcp_args = sipp_args(
        &s,
        free_udp_port(),
        free_udp_port(),
        &["-sn", "uac", "-d", "500", "-t", "t1"],
    );
    for a in tcp_args.iter_mut() {
        if *a == s.udp.to_string() {
            *a = tcp_target.clone();
        }
    }
    let tcp = run_sipp(&sipp, &tcp_args, Duration::from_secs(20));
    assert_sipp_ok(&tcp, 1);
    let left = wait_for_participants(&s, room, 0, Duration::from_secs(3));
    assert!(left.is_empty(), "every caller left: {left:?}");
    assert_eq!(s.server.metric("confer_sip_calls_answered_total"), 5.0);
    assert_eq!(
        s.server
            .metric("confer_sip_calls_ended_total{reason=\"bye\"}"),
        5.0
    );
    assert!(
        s.server
            .metric("confer_sip_messages_received_total{transport=\"tcp\"}")
            >= 3.0
    );
    assert_eq!(s.server.metric("confer_sip_calls"), 0.0);
}

#[test]
fn a_delayed_offer_call_joins_with_the_answer_from_the_ack() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(2, 10, &[("CONFER_DIAL_IN", &format!("{NUMBER}=later"))]);
    let media_port = free_udp_port();
    let args = sipp_args(
        &s,
        free_udp_port(),
        media_port,
        &["-sf", &scenario("uac_delayed_offer.xml"), "-d", "2000"],
    );
    let call = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(20)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let (room, caller) = loop {
        if let Some((room, r)) = room_named(&s, "later")
            && let Some(p) = r["participant_ids"]
                .as_array()
                .and_then(|a| a.first()?.as_u64())
        {
            break (room, p);
        }
        assert!(Instant::now() < deadline, "the caller never joined");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (status, p) = s.server.request(
        "GET",
        &format!("/v1/rooms/{room}/participants/{caller}"),
        None,
    );
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["codec"], "pcmu", "the answer in the ACK chose PCMU: {p}");
    assert_eq!(p["rtp_address"], format!("127.0.0.1:{media_port}"), "{p}");
    let out = call.join().expect("sipp thread");
    assert_sipp_ok(&out, 1);
    assert!(wait_for_participants(&s, room, 0, Duration::from_secs(3)).is_empty());
}

#[test]
fn a_caller_holding_and_resuming_by_re_invite_is_muted_and_deaf_while_held() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(3, 10, &[("CONFER_DIAL_IN", &format!("{NUMBER}=hold"))]);
    let room = s.server.create_room(r#"{"name":"hold"}"#);
    let args = sipp_args(
        &s,
        free_udp_port(),
        free_udp_port(),
        &["-sf", &scenario("uac_hold_resume.xml")],
    );
    let started = Instant::now();
    let call = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(20)));
    let controls = |at: Duration| -> (bool, bool) {
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        let ids = participants(&s, room);
        assert_eq!(ids.len(), 1, "the caller is in the room at {at:?}");
        let (status, p) = s.server.request(
            "GET",
            &format!("/v1/rooms/{room}/participants/{}", ids[0]),
            None,
        );
        assert_eq!(status, 200, "{p}");
        (
            p["stats"]["muted"].as_bool().expect("muted"),
            p["stats"]["deaf"].as_bool().expect("deaf"),
        )
    };
    // Joined at once, held from 1.5 s, resumed at 3 s, gone at 4 s.
    assert_eq!(controls(Duration::from_millis(900)), (false, false));
    assert_eq!(controls(Duration::from_millis(2300)), (true, true), "held");
    assert_eq!(
        controls(Duration::from_millis(3600)),
        (false, false),
        "resumed"
    );
    let out = call.join().expect("sipp thread");
    assert_sipp_ok(&out, 1);
    assert!(wait_for_participants(&s, room, 0, Duration::from_secs(3)).is_empty());
}

/// Sends key `digit` as RFC 4733 telephone-event packets (payload type 101, 8 kHz): three
/// updates 50 ms apart, then the end packet three times, as a phone does.
fn press(socket: &std::net::UdpSocket, to: std::net::SocketAddr, rtp: &mut (u16, u32), digit: u8) {
    use confer_codecs::dtmf::TelephoneEvent;
    use confer_engine::rtp::RtpPacketBuilder;
    use confer_engine::types::{PayloadType, Ssrc};
    let (seq, timestamp) = rtp;
    *timestamp = timestamp.wrapping_add(4000);
    for k in 0..6u16 {
        let event = TelephoneEvent {
            event: digit,
            end: k >= 3,
            volume: 10,
            duration: 400 * (k.min(3) + 1),
        };
        let mut payload = [0u8; 4];
        event.build(&mut payload).expect("a valid event");
        let mut packet = [0u8; 64];
        let n = RtpPacketBuilder::new(
            PayloadType::new(101).expect("dynamic"),
            *seq,
            *timestamp,
            Ssrc(0x5eed_0006),
        )
        .marker(k == 0)
        .payload(&payload)
        .write(&mut packet)
        .expect("fits");
        socket.send_to(&packet[..n], to).expect("loopback send");
        *seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(if k < 3 { 50 } else { 5 }));
    }
}

#[test]
fn a_caller_pressing_star_6_mutes_itself_and_pressing_it_again_unmutes() {
    let Some(sipp) = sipp() else { return };
    let s = SipServer::start(4, 10, &[("CONFER_DIAL_IN", &format!("{NUMBER}=keys"))]);
    let room = s.server.create_room(r#"{"name":"keys"}"#);
    // The caller's media address: this test sends its keys from here.
    let keys = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let keys_port = keys.local_addr().expect("bound").port().to_string();
    let args = sipp_args(
        &s,
        free_udp_port(),
        free_udp_port(),
        &[
            "-sf",
            &scenario("uac_dtmf_mute.xml"),
            "-key",
            "keys_port",
            &keys_port,
        ],
    );
    let call = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(20)));
    let ids = wait_for_participants(&s, room, 1, Duration::from_secs(5));
    assert_eq!(ids.len(), 1, "the caller joins the room");
    let path = format!("/v1/rooms/{room}/participants/{}", ids[0]);
    let (status, p) = s.server.request("GET", &path, None);
    assert_eq!(status, 200, "{p}");
    let local: std::net::SocketAddr = p["local_rtp_address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("local_rtp_address");
    // Polls until the participant's mute state is `want` (at most 2 s).
    let wait_muted = |want: bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (status, p) = s.server.request("GET", &path, None);
            assert_eq!(status, 200, "{p}");
            if p["stats"]["muted"].as_bool() == Some(want) || Instant::now() > deadline {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut rtp = (1000u16, 0u32);
    assert_eq!(wait_muted(false)["stats"]["muted"], false);
    // `*` is event 10.
    press(&keys, local, &mut rtp, 10);
    press(&keys, local, &mut rtp, 6);
    let p = wait_muted(true);
    assert_eq!(p["stats"]["muted"], true, "muted by *6: {p}");
    // *6 again toggles back.
    press(&keys, local, &mut rtp, 10);
    press(&keys, local, &mut rtp, 6);
    let p = wait_muted(false);
    assert_eq!(p["stats"]["muted"], false, "unmuted by *6 again: {p}");
    // *7 raises what the caller hears by 3 dB.
    press(&keys, local, &mut rtp, 10);
    press(&keys, local, &mut rtp, 7);
    let deadline = Instant::now() + Duration::from_secs(2);
    let gain = loop {
        let (_, p) = s.server.request("GET", &path, None);
        let g = p["stats"]["output_gain_db"].as_f64();
        if g == Some(3.0) || Instant::now() > deadline {
            break g;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(gain, Some(3.0), "*7 raised the volume by 3 dB");
    let out = call.join().expect("sipp thread");
    assert_sipp_ok(&out, 1);
    assert!(wait_for_participants(&s, room, 0, Duration::from_secs(3)).is_empty());
}

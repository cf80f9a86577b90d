//! Dial-out with real SIP software: the control API dials a number into a room through a
//! trunk (sipp as the trunk's far end, a UAS), the callee answers, joins the room and
//! receives the room's audio (a synthetic participant's speech, captured on sipp's media
//! port and decoded), and the API hangs up with a BYE. The event stream tells the story:
//! trying, ringing, answered (with the participant), hung up; a busy callee is a
//! `dial_failed` with 486. Refusals (policy, unknown trunk, no room) are 4xx before any
//! SIP is sent.
//!
//! Each test bounds sipp's run and skips, with a message, only when sipp is not installed
//! and `CI` is not set.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use std::time::{Duration, Instant};

use confer_engine::leg::LegConfig;
use leg_harness::aligned_correlation;
use serde_json::Value;
use serve_harness::{Events, speech};
use sip_support::{
    RtpCapture, SipServer, free_udp_port, room_participants as participants, rtp_payloads,
    run_sipp, sipp, successful_calls,
};

/// confer with one trunk: sipp listening on `port`.
fn server(slot: u16, port: u16) -> SipServer {
    let trunks = format!(r#"[{{name = "carrier", address = "127.0.0.1:{port}"}}]"#);
    SipServer::start(slot, 6, &[("CONFER_TRUNKS", &trunks)])
}

/// sipp as the callee, on `port`, media on `media_port`; the built-in `uas` or a file.
fn callee(port: u16, media_port: u16, scenario: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-mi",
        "127.0.0.1",
        "-mp",
        &media_port.to_string(),
        "-m",
        "1",
        "-timeout",
        "30",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(scenario.iter().map(|s| s.to_string()));
    a
}

/// The `dial_*` events of `call`, until `last` (at most 10 s).
fn dial_events(events: &mut Events, call: u64, last: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let e = events.next();
        if e["call"].as_u64() == Some(call) {
            let done = e["kind"] == last;
            out.push(e);
            if done {
                break;
            }
        }
    }
    out
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["kind"].as_str()).collect()
}

#[test]
fn a_number_dialled_through_the_trunk_answers_joins_the_room_hears_it_and_is_hung_up() {
    let Some(sipp) = sipp() else { return };
    let port = free_udp_port();
    let s = server(10, port);
    let room = s.server.create_room(r#"{"name":"out"}"#);
    let media_port = free_udp_port();
    let capture = RtpCapture::start(media_port);
    if capture.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "capturing RTP needs CAP_NET_RAW, which CI has (root)"
        );
        eprintln!("not capturing confer's RTP to sipp: no CAP_NET_RAW");
    }
    let args = callee(port, media_port, &["-sn", "uas"]);
    let uas = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(30)));
    // sipp binds its port before it reads the network.
    std::thread::sleep(Duration::from_millis(500));
    let mut events = Events::connect(&s.server);

    let source = speech(0.5, 3.0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (call, talk_start) = runtime.block_on(async {
        let mut speakers = serve_harness::join_speakers(
            &s.server,
            room,
            std::slice::from_ref(&source),
            &LegConfig::default(),
            90,
            48_000,
        )
        .await;
        let (status, v) = s.server.request(
            "POST",
            &format!("/v1/rooms/{room}/calls"),
            Some(r#"{"to":"(415) 555-0123"}"#),
        );
        assert_eq!(status, 202, "{v}");
        assert_eq!(v["to"], "sip:+14155550123@127.0.0.1;user=phone", "{v}");
        let call = v["call"].as_u64().expect("call id");
        // Answered: two participants; then the synthetic one talks for 3.5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        while participants(&s, room).len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(participants(&s, room).len(), 2, "the callee joined");
        let (udp, io, _remote, _) = speakers.remove(0);
        let start = Instant::now();
        let _ = udp
            .run_until(io, tokio::time::sleep(Duration::from_millis(3500)))
            .await;
        (call, start)
    });
    // Through another room, the call is not found.
    let (status, _) = s.server.request(
        "DELETE",
        &format!("/v1/rooms/{}/calls/{call}", room + 1000),
        None,
    );
    assert_eq!(status, 404);
    let (status, v) = s
        .server
        .request("DELETE", &format!("/v1/rooms/{room}/calls/{call}"), None);
    assert_eq!(status, 204, "{v}");
    let out = uas.join().expect("sipp thread");
    assert!(
        out.status.success() && successful_calls(&out) == Some(1),
        "sipp (the callee) failed ({:?})\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        s.server.log()
    );
    let story = dial_events(&mut events, call, "dial_hung_up");
    assert_eq!(
        kinds(&story),
        [
            "dial_trying",
            "dial_ringing",
            "dial_answered",
            "dial_hung_up"
        ],
        "{story:?}"
    );
    assert!(story[2]["participant"].as_u64().is_some(), "{story:?}");
    assert!(
        participants(&s, room).len() <= 1,
        "the callee left with the BYE"
    );
    // Hanging up again: the call is gone.
    let (status, _) = s
        .server
        .request("DELETE", &format!("/v1/rooms/{room}/calls/{call}"), None);
    assert_eq!(status, 404);

    if let Some(capture) = capture {
        let after: Vec<_> = capture
            .finish()
            .into_iter()
            .filter(|c| c.at.is_some_and(|t| t >= talk_start))
            .collect();
        // The capture stamps packets when its thread reads them, late on a loaded
        // machine, so packets from before the talker started can count as after: 0.3 s
        // of silence in front leaves the alignment search (up to 1 s) room for that.
        let mut received = vec![0.0f32; 48_000 * 3 / 10];
        received.extend(sip_support::decode_ulaw_48k(&rtp_payloads(&after, 0)));
        let a = aligned_correlation(&source, &received);
        println!(
            "the callee receives the room: {} packets, correlation {:.3} (min {:.3}, {} windows)",
            after.len(),
            a.mean,
            a.min,
            a.windows
        );
        assert!(
            a.windows >= 5 && a.mean > 0.5,
            "the callee does not get the room's audio: {a:?}"
        );
    }
}

#[test]
fn a_busy_callee_fails_the_call_with_its_status() {
    let Some(sipp) = sipp() else { return };
    let port = free_udp_port();
    let s = server(11, port);
    let room = s.server.create_room(r#"{"name":"busy"}"#);
    let scenario = sip_support::scenario("uas_busy.xml");
    let args = callee(
        port,
        free_udp_port(),
        &["-sf", &scenario.display().to_string()],
    );
    let uas = std::thread::spawn(move || run_sipp(&sipp, &args, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(500));
    let mut events = Events::connect(&s.server);
    let (status, v) = s.server.request(
        "POST",
        &format!("/v1/rooms/{room}/calls"),
        Some(r#"{"to":"sip:bob@127.0.0.1","trunk":"carrier"}"#),
    );
    assert_eq!(status, 202, "{v}");
    let call = v["call"].as_u64().expect("call id");
    let story = dial_events(&mut events, call, "dial_failed");
    assert_eq!(
        kinds(&story),
        ["dial_trying", "dial_ringing", "dial_failed"],
        "{story:?}"
    );
    assert_eq!(story[2]["status"], 486, "{story:?}");
    let out = uas.join().expect("sipp thread");
    assert_eq!(
        successful_calls(&out),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(participants(&s, room).is_empty());
}

#[test]
fn refused_destinations_are_4xx_and_nothing_is_dialled() {
    let s = server(12, free_udp_port());
    let room = s.server.create_room(r#"{"name":"refused"}"#);
    let path = format!("/v1/rooms/{room}/calls");
    let cases = [
        // Premium rate and another country: the policy (403, naming the rule).
        (r#"{"to":"+19005550123"}"#, 403),
        (r#"{"to":"+442071234567"}"#, 403),
        (r#"{"to":"sip:+19005550123@carrier.example"}"#, 403),
        // Emergency numbers are never routed.
        (r#"{"to":"911"}"#, 403),
        (r#"{"to":"+14155550123","trunk":"other"}"#, 422),
        (r#"{"to":"+14155550123","extra":1}"#, 400),
        (r#"{"to":42}"#, 400),
    ];
    for (body, want) in cases {
        let (status, v) = s.server.request("POST", &path, Some(body));
        assert_eq!(status, want, "{body}: {v}");
        assert!(v["error"].as_str().is_some(), "{v}");
    }
    let (status, _) = s.server.request(
        "POST",
        "/v1/rooms/999999/calls",
        Some(r#"{"to":"+14155550123"}"#),
    );
    assert_eq!(status, 404);
    let (_, metrics) = s.server.request_text("GET", "/metrics", None);
    assert!(
        metrics.contains("confer_sip_calls_dialled_total 0"),
        "nothing was dialled"
    );
}

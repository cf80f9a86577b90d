//! Bad input to `confer serve`: malformed JSON, unknown rooms and participants, impossible
//! values, locked and full rooms get a 4xx with a JSON error that says what is wrong; a
//! participant whose RTP address nobody listens on and a participant flooded with packets
//! (from its own address and from strangers) do not disturb a conversation in another
//! room, and the process keeps serving.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use confer_engine::leg::LegConfig;
use confer_engine::udp::{LegIo, UdpLeg};
use leg_harness::aligned_correlation;
use ringbuf::traits::{Consumer, Observer, Producer};
use serde_json::Value;
use serve_harness::{Server, client_leg, speech};

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {v}"))
}

/// A loopback address nobody listens on (bound, read, released).
fn dead_address() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("bound")
}

#[test]
fn bad_requests_get_a_clear_error_and_change_nothing() {
    let server = Server::start(0, 10, &[]);
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "POST",
            "/v1/rooms",
            Some(r#"{"name":"#),
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/v1/rooms",
            Some(r#"{"nmae":"x"}"#),
            400,
            "unknown field `nmae`",
        ),
        (
            "POST",
            "/v1/rooms",
            Some(r#"{"max_participants":"ten"}"#),
            400,
            "invalid type",
        ),
        (
            "POST",
            "/v1/rooms",
            Some(r#"{"max_participants":0}"#),
            422,
            "max_participants",
        ),
        ("GET", "/v1/rooms/999", None, 404, "no room 999"),
        ("GET", "/v1/rooms/abc", None, 404, "no room \"abc\""),
        ("DELETE", "/v1/rooms/999", None, 404, "no room 999"),
        (
            "POST",
            "/v1/rooms/999/participants",
            Some(r#"{"rtp_address":"127.0.0.1:4000"}"#),
            404,
            "no room 999",
        ),
        ("GET", "/v1/nothing", None, 404, "no such route"),
    ];
    for &(method, path, body, status, text) in cases {
        let (got, v) = server.request(method, path, body);
        assert_eq!(got, status, "{method} {path} {body:?}: {v}");
        assert!(error_of(&v).contains(text), "{method} {path}: {v}");
    }

    let room = server.create_room("{}");
    let participants = format!("/v1/rooms/{room}/participants");
    let bad_joins: &[(&str, u16, &str)] = &[
        ("", 400, "a JSON body is required"),
        ("{}", 422, "rtp_address is required"),
        (
            r#"{"rtp_address":"nowhere"}"#,
            422,
            "is not an address and port",
        ),
        (r#"{"rtp_address":"0.0.0.0:4000"}"#, 422, "cannot receive"),
        (
            r#"{"rtp_address":"[::1]:4000"}"#,
            422,
            "not reachable from media_ip",
        ),
        (
            r#"{"rtp_address":"127.0.0.1:4000","codec":"g729"}"#,
            422,
            "codec \"g729\"",
        ),
        (
            r#"{"rtp_address":"127.0.0.1:4000","payload_type":8}"#,
            422,
            "payload_type 8",
        ),
        (
            r#"{"rtp_address":"127.0.0.1:4000","codec":"pcmu","payload_type":8}"#,
            422,
            "static payload type 0",
        ),
        (
            r#"{"rtp_address":"127.0.0.1:4000","bitrate_bps":1}"#,
            422,
            "bitrate_bps 1",
        ),
        (
            r#"{"rtp_address":"127.0.0.1:4000","expected_loss":101}"#,
            422,
            "expected_loss 101 is outside 0..=100",
        ),
        (
            r#"{"rtp_address":"127.0.0.1:4000","codec":"pcmu","expected_loss":5}"#,
            422,
            "Opus settings",
        ),
    ];
    for &(body, status, text) in bad_joins {
        let (got, v) = server.request("POST", &participants, Some(body));
        assert_eq!(got, status, "{body}: {v}");
        assert!(error_of(&v).contains(text), "{body}: {v}");
    }

    let (p, _) = server.join(room, dead_address(), "pcma");
    let path = format!("{participants}/{p}");
    for (body, text) in [
        (
            r#"{"input_gain_db":40}"#,
            "input_gain_db 40 is outside -60..=20 dB",
        ),
        (
            r#"{"muted":true,"output_gain_db":-100}"#,
            "output_gain_db -100",
        ),
    ] {
        let (got, v) = server.request("PATCH", &path, Some(body));
        assert_eq!(got, 422, "{body}: {v}");
        assert!(error_of(&v).contains(text), "{v}");
    }
    let (got, v) = server.request("PATCH", &path, Some(r#"{"muted":"yes"}"#));
    assert_eq!(got, 400, "{v}");
    // The refused requests changed nothing, not even the mute sent beside a bad gain.
    let (got, v) = server.request("GET", &path, None);
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["stats"]["muted"], false, "{v}");
    assert_eq!(v["stats"]["output_gain_db"], 0.0, "{v}");
    let (got, v) = server.request(
        "PATCH",
        &path,
        Some(r#"{"muted":true,"output_gain_db":-6}"#),
    );
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["stats"]["muted"], true, "{v}");
    assert_eq!(v["stats"]["output_gain_db"], -6.0, "{v}");
    let (got, v) = server.request("GET", &format!("{participants}/12345"), None);
    assert_eq!(got, 404, "{v}");
    assert!(
        error_of(&v).contains(&format!("no participant 12345 in room {room}")),
        "{v}"
    );

    // Locked: refused with 409 until unlocked.
    let (got, v) = server.request(
        "PATCH",
        &format!("/v1/rooms/{room}"),
        Some(r#"{"locked":true}"#),
    );
    assert_eq!((got, &v["locked"]), (200, &Value::Bool(true)), "{v}");
    let body = format!(r#"{{"rtp_address":"{}"}}"#, dead_address());
    let (got, v) = server.request("POST", &participants, Some(&body));
    assert_eq!(got, 409, "{v}");
    assert!(error_of(&v).contains("locked"), "{v}");
    let (got, _) = server.request(
        "PATCH",
        &format!("/v1/rooms/{room}"),
        Some(r#"{"locked":false}"#),
    );
    assert_eq!(got, 200);
    let (got, v) = server.request("POST", &participants, Some(&body));
    assert_eq!(got, 201, "{v}");

    // Full: the second join of a one-person room is refused.
    let small = server.create_room(r#"{"max_participants":1}"#);
    server.join(small, dead_address(), "opus");
    let (got, v) = server.request(
        "POST",
        &format!("/v1/rooms/{small}/participants"),
        Some(&body),
    );
    assert_eq!(got, 409, "{v}");
    assert!(error_of(&v).contains("full"), "{v}");

    // Deleting a room removes it and its participants.
    let (got, _) = server.request("DELETE", &format!("/v1/rooms/{small}"), None);
    assert_eq!(got, 204);
    let (got, _) = server.request("GET", &format!("/v1/rooms/{small}"), None);
    assert_eq!(got, 404);
    assert_eq!(server.metric("confer_participants"), 2.0);

    let (got, v) = server.request("GET", "/healthz", None);
    assert_eq!((got, v), (200, serde_json::json!({"status": "ok"})));
    assert!(server.stop().success());
}

#[test]
fn an_unreachable_participant_and_a_flood_leave_another_room_unaffected() {
    let server = Server::start(1, 20, &[]);
    // Room U: a participant nobody listens for (every send draws an ICMP error).
    let unreachable_room = server.create_room(r#"{"name":"unreachable"}"#);
    let (unreachable, _) = server.join(unreachable_room, dead_address(), "opus");
    // Room F: a participant flooded from its own address and from strangers.
    let flood_room = server.create_room(r#"{"name":"flood"}"#);
    let declared = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (flooded, target) = server.join(flood_room, declared.local_addr().expect("bound"), "opus");
    // Room C: a conversation of two.
    let calm_room = server.create_room(r#"{"name":"calm"}"#);
    let sources = [speech(1.0, 3.0), speech(9.0, 3.0)];

    let flood = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = [0u64; 2];
        let mut packet = [0u8; 172];
        let mut i: u32 = 0;
        while start.elapsed() < Duration::from_millis(3000) {
            for _ in 0..50 {
                i = i.wrapping_add(1);
                // Alternately garbage and RTP-shaped packets (PT 111) with junk payloads.
                packet.fill((i % 251) as u8);
                if i.is_multiple_of(2) {
                    packet[0] = 0x80;
                    packet[1] = 111;
                    packet[2..4].copy_from_slice(&(i as u16).to_be_bytes());
                }
                let (socket, k) = if i.is_multiple_of(5) {
                    (&stranger, 1)
                } else {
                    (&declared, 0)
                };
                if socket.send_to(&packet, target).is_ok() {
                    sent[k] += 1;
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (played, received) = runtime.block_on(async {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let mut a = UdpLeg::bind(loopback, client_leg(LegConfig::default(), 21))
            .await
            .expect("bind");
        let mut b = UdpLeg::bind(loopback, client_leg(LegConfig::default(), 22))
            .await
            .expect("bind");
        let (_, to_a) = server.join(calm_room, a.local_addr().expect("bound"), "opus");
        let (_, to_b) = server.join(calm_room, b.local_addr().expect("bound"), "opus");
        a.set_peer(to_a);
        b.set_peer(to_b);
        let (io_a, mut ra) = LegIo::new(6 * 48_000, sources[0].len());
        let (io_b, mut rb) = LegIo::new(6 * 48_000, sources[1].len());
        ra.capture.push_slice(&sources[0]);
        rb.capture.push_slice(&sources[1]);
        let run_for = Duration::from_millis(3800);
        let both = async {
            tokio::join!(
                a.run_until(io_a, tokio::time::sleep(run_for)),
                b.run_until(io_b, tokio::time::sleep(run_for)),
            )
        };
        let ((leg_a, _), (leg_b, _)) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("the clients stop on their own");
        let mut out = Vec::new();
        for r in [&mut ra, &mut rb] {
            let mut v = vec![0.0f32; r.playout.occupied_len()];
            r.playout.pop_slice(&mut v);
            out.push(v);
        }
        let received = [
            leg_a.stats().rtp_packets_received,
            leg_b.stats().rtp_packets_received,
        ];
        (out, received)
    });
    let sent = flood.join().expect("flood thread");

    // A hears B and B hears A, as if nothing happened next door.
    let a_hears_b = aligned_correlation(&sources[1], &played[0]);
    let b_hears_a = aligned_correlation(&sources[0], &played[1]);
    let (_, f) = server.request(
        "GET",
        &format!("/v1/rooms/{flood_room}/participants/{flooded}"),
        None,
    );
    let (_, u) = server.request(
        "GET",
        &format!("/v1/rooms/{unreachable_room}/participants/{unreachable}"),
        None,
    );
    println!(
        "flood sent {sent:?} (declared, stranger); calm room received {received:?}; \
         A hears B {:.3} ({} windows), B hears A {:.3} ({} windows)\nflooded: {f}\nunreachable: {u}",
        a_hears_b.mean, a_hears_b.windows, b_hears_a.mean, b_hears_a.windows
    );
    for name in [
        "confer_datagrams_dropped_total{reason=\"foreign_source\"}",
        "confer_datagrams_dropped_total{reason=\"queue_full\"}",
        "confer_datagrams_dropped_total{reason=\"rejected\"}",
        "confer_datagrams_dropped_total{reason=\"send_error\"}",
        "confer_recv_errors_total",
        "confer_tick_overruns_total",
        "confer_ticks_total",
    ] {
        println!("{name} {}", server.metric(name));
    }
    assert!(
        sent[0] > 10_000 && sent[1] > 2_000,
        "the flood was too small: {sent:?}"
    );
    assert!(
        received.iter().all(|&n| n >= 150),
        "calm room received {received:?}"
    );
    assert!(
        a_hears_b.mean > 0.7 && a_hears_b.windows >= 8,
        "{a_hears_b:?}"
    );
    assert!(
        b_hears_a.mean > 0.7 && b_hears_a.windows >= 8,
        "{b_hears_a:?}"
    );
    // The strangers' datagrams were dropped at the socket, the rest shed or rejected.
    assert!(f["datagrams_foreign"].as_u64().unwrap_or(0) > 1_000, "{f}");
    let shed = server.metric("confer_datagrams_dropped_total{reason=\"queue_full\"}")
        + server.metric("confer_datagrams_dropped_total{reason=\"rejected\"}");
    assert!(shed > 5_000.0, "{shed}");
    // The unreachable participant is still served (sends go out, errors are counted).
    assert!(u["datagrams_sent"].as_u64().unwrap_or(0) > 100, "{u}");
    let (got, _) = server.request("GET", "/healthz", None);
    assert_eq!(got, 200);
    let mut server = server;
    assert!(server.is_running());
    assert!(server.stop().success());
}

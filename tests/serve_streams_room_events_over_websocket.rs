//! `GET /v1/events` is a WebSocket that carries every room event as JSON, in order, with
//! the room, the participant and the room's media time: a client sees a room created, a
//! participant join, get muted, be removed, and the room end.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;

use std::net::UdpSocket;
use std::time::Duration;

use serve_harness::{Events, Server};

#[test]
fn a_websocket_client_sees_a_rooms_life_in_order() {
    let server = Server::start(2, 5, &[]);
    let mut events = Events::connect(&server);
    let room = server.create_room(r#"{"name":"watched"}"#);
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (p, _) = server.join(room, peer.local_addr().expect("bound"), "pcmu");
    let path = format!("/v1/rooms/{room}/participants/{p}");
    let (got, _) = server.request("PATCH", &path, Some(r#"{"muted":true}"#));
    assert_eq!(got, 200);
    std::thread::sleep(Duration::from_millis(100));
    let (got, _) = server.request("DELETE", &path, None);
    assert_eq!(got, 204);
    let (got, _) = server.request("DELETE", &format!("/v1/rooms/{room}"), None);
    assert_eq!(got, 204);

    let expected = [
        ("created", None, None),
        ("joined", Some(p), None),
        ("muted", Some(p), None),
        ("left", Some(p), Some("kicked")),
        ("ended", None, None),
    ];
    let mut last_time = 0.0;
    for (kind, participant, reason) in expected {
        let e = events.next();
        println!("{e}");
        assert_eq!(e["room"], room, "{e}");
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["participant"].as_u64(), participant, "{e}");
        assert_eq!(e["reason"].as_str(), reason, "{e}");
        let t = e["media_time_ms"].as_f64().expect("media time");
        assert!(t >= last_time, "media time went back: {e}");
        last_time = t;
    }
    assert!(
        last_time >= 100.0,
        "the room lived over 100 ms: {last_time}"
    );
    // The engine also stops cleanly with the stream still open.
    assert!(server.stop().success());
}

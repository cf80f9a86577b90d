//! `GET /v1/events` is a WebSocket that carries every room event as JSON, in order, with
//! the room, the participant and the room's media time: a client sees a room created, a
//! participant join, get muted, be removed, and the room end.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use serve_harness::Server;

/// A minimal WebSocket client (RFC 6455): the upgrade, then unmasked server text frames.
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    fn connect(server: &Server) -> Events {
        let mut s =
            TcpStream::connect_timeout(&server.http, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET /v1/events HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.http
        )
        .expect("send upgrade");
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
        }
        Events { reader }
    }

    /// The next text message as JSON.
    fn next(&mut self) -> Value {
        loop {
            let mut head = [0u8; 2];
            self.reader
                .read_exact(&mut head)
                .expect("frame header (no event within 5 s?)");
            let opcode = head[0] & 0x0F;
            let len = match head[1] & 0x7F {
                126 => {
                    let mut b = [0u8; 2];
                    self.reader.read_exact(&mut b).expect("length");
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.reader.read_exact(&mut b).expect("length");
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).expect("small frame")];
            self.reader.read_exact(&mut payload).expect("payload");
            match opcode {
                1 => return serde_json::from_slice(&payload).expect("JSON event"),
                8 => panic!("the server closed the event stream"),
                _ => {} // pings and the like
            }
        }
    }
}

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

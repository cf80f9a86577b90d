//! With `api_secret` set, every control-API call needs a bearer token issued by `confer
//! token`: none or a forged one is 401 with the reason, a valid one without the scope is
//! 403; an admin token opens the API, a client token only its own room's join, an
//! IM-server token the event stream (also as `?access_token=`, for browsers' WebSockets).
//! `/healthz` stays open.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use serve_harness::Server;

const SECRET: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// `confer token` with `args`, the secret from the environment.
fn token(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_confer"))
        .arg("token")
        .args(args)
        .env("CONFER_API_SECRET", SECRET)
        .output()
        .expect("confer token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("text")
        .trim()
        .to_owned()
}

#[test]
fn tokens_open_what_their_scope_allows_and_nothing_else() {
    let s = Server::start(17, 4, &[("CONFER_API_SECRET", SECRET)]);
    assert_eq!(s.request("GET", "/healthz", None).0, 200);
    // No token: 401, the reason, a challenge.
    let (status, v) = s.request("GET", "/v1/rooms", None);
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["code"], "token_missing", "{v}");
    let (status, head, _) = s.request_as("", "GET", "/v1/rooms", None);
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );

    let admin = token(&["--scope", "admin", "--subject", "ops"]);
    let (status, _, v) = s.request_as(&admin, "POST", "/v1/rooms", Some(r#"{"name":"t"}"#));
    assert_eq!(status, 201, "{v}");
    let room = v["id"].as_u64().expect("room id");
    assert_eq!(s.request_as(&admin, "GET", "/v1/rooms", None).0, 200);
    // One character changed in the signature: 401. The signature's first character, whose
    // six bits are all signature (the last one's low bits must be zero in canonical
    // base64url, so changing it could make the token malformed instead of forged).
    let at = admin.rfind('.').expect("three parts") + 1;
    let first = &admin[at..at + 1];
    let forged = format!(
        "{}{}{}",
        &admin[..at],
        if first == "A" { "B" } else { "A" },
        &admin[at + 1..]
    );
    let (status, _, v) = s.request_as(&forged, "GET", "/v1/rooms", None);
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["code"], "token_bad_signature", "{v}");

    // A client token joins its own room, and does nothing else.
    let client = token(&[
        "--scope",
        "client",
        "--subject",
        "alice",
        "--room",
        &room.to_string(),
        "--device",
        "phone",
    ]);
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let join = format!(
        r#"{{"rtp_address":"{}","codec":"pcmu"}}"#,
        peer.local_addr().expect("bound")
    );
    let path = format!("/v1/rooms/{room}/participants");
    let (status, _, v) = s.request_as(&client, "POST", &path, Some(&join));
    assert_eq!(status, 201, "{v}");
    // One device is one participant: a second join is refused while the first lasts.
    let (status, _, v) = s.request_as(&client, "POST", &path, Some(&join));
    assert_eq!(status, 409, "{v}");
    let first = s
        .request_as(&admin, "GET", &format!("/v1/rooms/{room}"), None)
        .2["participant_ids"][0]
        .as_u64()
        .expect("the participant");
    let gone = s
        .request_as(&admin, "DELETE", &format!("{path}/{first}"), None)
        .0;
    assert_eq!(gone, 204);
    // Then it joins again, and cannot make itself a moderator.
    let as_moderator = join.replace("}", r#","moderator":true}"#);
    let (status, _, v) = s.request_as(&client, "POST", &path, Some(&as_moderator));
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["stats"]["moderator"], false, "{v}");
    let (status, _, v) = s.request_as(&client, "GET", "/v1/rooms", None);
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["code"], "insufficient_scope", "{v}");
    let other = s.request_as(&admin, "POST", "/v1/rooms", Some("{}")).2["id"]
        .as_u64()
        .expect("room");
    let (status, _, v) = s.request_as(
        &client,
        "POST",
        &format!("/v1/rooms/{other}/participants"),
        Some(&join),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("room")),
        "{v}"
    );

    // An IM server reads the event stream, with the token in the query, but not rooms.
    let im = token(&["--scope", "im-server", "--subject", "chat"]);
    assert_eq!(s.request_as(&im, "GET", "/v1/rooms", None).0, 403);
    let upgrade = |query: &str| -> String {
        let mut c = TcpStream::connect_timeout(&s.http, Duration::from_secs(5)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            c,
            "GET /v1/events{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            s.http
        )
        .expect("send");
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).expect("status line");
        line
    };
    assert!(upgrade(&format!("?access_token={im}")).starts_with("HTTP/1.1 101"));
    assert!(upgrade("").starts_with("HTTP/1.1 401"));
    assert!(upgrade("?access_token=nonsense").starts_with("HTTP/1.1 401"));
}

#[test]
fn without_a_secret_the_api_refuses_to_listen_off_loopback_and_token_says_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_confer"))
        .arg("serve")
        .env("CONFER_HTTP_LISTEN", "0.0.0.0:0")
        .output()
        .expect("confer runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api_secret"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_confer"))
        .args(["token", "--scope", "admin", "--subject", "ops"])
        .env_remove("CONFER_API_SECRET")
        .output()
        .expect("confer runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no api_secret"));
}

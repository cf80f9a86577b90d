//! How dial-in calls go and end, seen from the caller's side of the wire (a minimal UAC
//! over UDP, TLS for one test): a 200 never acknowledged ends with our BYE and the
//! participant leaves; at shutdown every caller gets a BYE before the process exits; an
//! unknown number gets 404; a re-INVITE that moves the caller's media moves the room's
//! audio and the accepted source with it; SIP over TLS answers OPTIONS and carries a call.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sip_support::{SipServer, UdpClient, header_of, split_messages, status_of};

const NUMBER: &str = "+15555550100";

/// An INVITE for `number` from `from` with an SDP offer of PCMU at `rtp`.
fn invite(
    transport: &str,
    from: SocketAddr,
    number: &str,
    call_id: &str,
    rtp: SocketAddr,
) -> Vec<u8> {
    invite_with(transport, from, number, call_id, rtp, None)
}

/// The INVITE, or with `ok` (the 200 of the first) a re-INVITE in its dialog (CSeq 2).
fn invite_with(
    transport: &str,
    from: SocketAddr,
    number: &str,
    call_id: &str,
    rtp: SocketAddr,
    ok: Option<&[u8]>,
) -> Vec<u8> {
    let version = if ok.is_some() { 2 } else { 1 };
    let sdp = format!(
        "v=0\r\no=uac 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {}\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        rtp.ip(),
        rtp.port()
    );
    let to = ok.map_or(format!("<sip:{number}@127.0.0.1>"), |ok| {
        header_of(ok, "To").expect("To")
    });
    format!(
        "INVITE sip:{number}@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {from};branch=z9hG4bK-{call_id}-{version};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:uac@127.0.0.1>;tag=uac-{call_id}\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {version} INVITE\r\n\
         Contact: <sip:uac@{from};transport={}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        transport.to_ascii_lowercase(),
        sdp.len()
    )
    .into_bytes()
}

/// The ACK of the 200 `ok` to our INVITE.
fn ack(transport: &str, from: SocketAddr, ok: &[u8], call_id: &str) -> Vec<u8> {
    let to = header_of(ok, "To").expect("To");
    let cseq = header_of(ok, "CSeq")
        .and_then(|c| c.split_whitespace().next().map(str::to_owned))
        .expect("CSeq");
    format!(
        "ACK sip:confer@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {from};branch=z9hG4bK-{call_id}-ack{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:uac@127.0.0.1>;tag=uac-{call_id}\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} ACK\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The 200 to a request we received (copying Via, From, To, Call-ID, CSeq).
fn ok_to(request: &[u8]) -> Vec<u8> {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        out.push_str(&format!("{h}: {}\r\n", header_of(request, h).expect(h)));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

fn room_participants(s: &SipServer, name: &str) -> Option<usize> {
    let (_, v) = s.server.request("GET", "/v1/rooms", None);
    v["rooms"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["participants"].as_u64())
        .map(|n| n as usize)
}

/// Waits (at most `wait`) for a request of `method` on `client`.
fn wait_request(client: &UdpClient, method: &str, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let bytes = client.recv(left)?;
        if bytes.starts_with(format!("{method} ").as_bytes()) {
            return Some(bytes);
        }
    }
}

#[test]
fn an_answer_never_acknowledged_ends_with_bye_and_the_participant_leaves() {
    // T1 50 ms: the 200 is given up on after 64 T1 = 3.2 s.
    let s = SipServer::start(
        0,
        4,
        &[
            ("CONFER_DIAL_IN", &format!("{NUMBER}=noack")),
            ("CONFER_SIP_T1_MS", "50"),
        ],
    );
    let client = UdpClient::bind("127.0.0.1:0", s.udp);
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    client.send(&invite(
        "UDP",
        client.addr(),
        NUMBER,
        "noack-1",
        rtp.local_addr().expect("bound"),
    ));
    let (status, _) = client
        .final_response(Duration::from_secs(3))
        .expect("answered");
    assert_eq!(status, 200);
    assert_eq!(room_participants(&s, "noack"), Some(1));
    let started = Instant::now();
    let bye = wait_request(&client, "BYE", Duration::from_secs(8)).expect("a BYE");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(6),
        "{after:?}"
    );
    assert_eq!(header_of(&bye, "Call-ID").as_deref(), Some("noack-1"));
    client.send(&ok_to(&bye));
    assert_eq!(
        room_participants(&s, "noack"),
        Some(0),
        "the participant left"
    );
    assert_eq!(
        s.server
            .metric("confer_sip_calls_ended_total{reason=\"ack_timeout\"}"),
        1.0
    );
}

#[test]
fn at_shutdown_every_caller_gets_a_bye_and_an_unknown_number_gets_404() {
    let s = SipServer::start(1, 4, &[("CONFER_DIAL_IN", &format!("{NUMBER}=bye"))]);
    let client = UdpClient::bind("127.0.0.1:0", s.udp);
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let rtp_addr = rtp.local_addr().expect("bound");
    client.send(&invite(
        "UDP",
        client.addr(),
        "+15555550199",
        "unknown-1",
        rtp_addr,
    ));
    assert_eq!(
        client.final_response(Duration::from_secs(3)).map(|r| r.0),
        Some(404)
    );
    client.send(&invite("UDP", client.addr(), NUMBER, "bye-1", rtp_addr));
    let (status, ok) = client
        .final_response(Duration::from_secs(3))
        .expect("answered");
    assert_eq!(status, 200);
    client.send(&ack("UDP", client.addr(), &ok, "bye-1"));
    assert_eq!(room_participants(&s, "bye"), Some(1));
    // The room's audio reaches the caller's RTP address.
    rtp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    let (n, from) = rtp.recv_from(&mut buf).expect("RTP from the room");
    assert!(n >= 12 + 160 && buf[1] & 0x7f == 0, "a PCMU packet");
    let sdp = String::from_utf8_lossy(&ok);
    assert!(
        sdp.contains(&format!("m=audio {} RTP/AVP 0", from.port())),
        "{sdp}"
    );

    let waiter = std::thread::spawn(move || {
        let bye = wait_request(&client, "BYE", Duration::from_secs(8));
        if let Some(b) = &bye {
            client.send(&ok_to(b));
        }
        bye
    });
    std::thread::sleep(Duration::from_millis(200));
    let exit = s.server.stop();
    assert!(exit.success(), "{exit:?}");
    let bye = waiter.join().expect("waiter").expect("a BYE at shutdown");
    assert_eq!(header_of(&bye, "Call-ID").as_deref(), Some("bye-1"));
}

/// Datagrams `socket` receives within `wait`.
fn count_datagrams(socket: &UdpSocket, wait: Duration) -> usize {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    let mut n = 0;
    while Instant::now() < deadline {
        if socket.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

#[test]
fn a_re_invite_that_moves_the_media_moves_the_room_audio_and_the_accepted_source() {
    let s = SipServer::start(3, 4, &[("CONFER_DIAL_IN", &format!("{NUMBER}=moves"))]);
    let room = s.server.create_room(r#"{"name":"moves"}"#);
    let client = UdpClient::bind("127.0.0.1:0", s.udp);
    let a = UdpSocket::bind("127.0.0.1:0").expect("rtp a");
    let b = UdpSocket::bind("127.0.0.1:0").expect("rtp b");
    let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
    client.send(&invite("UDP", client.addr(), NUMBER, "move-1", a_addr));
    let (status, ok) = client.final_response(Duration::from_secs(3)).expect("200");
    assert_eq!(status, 200);
    client.send(&ack("UDP", client.addr(), &ok, "move-1"));
    assert!(
        count_datagrams(&a, Duration::from_millis(500)) >= 10,
        "RTP to a"
    );

    client.send(&invite_with(
        "UDP",
        client.addr(),
        NUMBER,
        "move-1",
        b_addr,
        Some(&ok),
    ));
    let (status, ok2) = client
        .final_response(Duration::from_secs(3))
        .expect("answered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&ok2));
    client.send(&ack("UDP", client.addr(), &ok2, "move-1"));
    // The room's audio now goes to b, and no longer to a.
    std::thread::sleep(Duration::from_millis(100));
    let _ = count_datagrams(&a, Duration::from_millis(100));
    assert!(
        count_datagrams(&b, Duration::from_millis(500)) >= 10,
        "RTP to b"
    );
    assert_eq!(
        count_datagrams(&a, Duration::from_millis(300)),
        0,
        "RTP still to a"
    );
    // And only b's datagrams are taken as the caller's.
    let ids = sip_support::room_participants(&s, room);
    let path = format!("/v1/rooms/{room}/participants/{}", ids[0]);
    let (_, p) = s.server.request("GET", &path, None);
    let local: SocketAddr = p["local_rtp_address"]
        .as_str()
        .and_then(|x| x.parse().ok())
        .expect("local_rtp_address");
    let before = p["datagrams_received"].as_u64().unwrap_or(0);
    for _ in 0..5 {
        b.send_to(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], local)
            .expect("send b");
        a.send_to(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2], local)
            .expect("send a");
    }
    std::thread::sleep(Duration::from_millis(200));
    let (_, p) = s.server.request("GET", &path, None);
    assert_eq!(p["datagrams_received"].as_u64(), Some(before + 5), "{p}");
    assert_eq!(p["datagrams_foreign"], 5, "{p}");
    assert_eq!(p["rtp_address"], b_addr.to_string(), "{p}");
}

#[test]
fn a_caller_asking_for_40_ms_packets_gets_them_and_the_answer_says_so() {
    let s = SipServer::start(4, 4, &[("CONFER_DIAL_IN", &format!("{NUMBER}=ptime"))]);
    let client = UdpClient::bind("127.0.0.1:0", s.udp);
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let plain = String::from_utf8(invite(
        "UDP",
        client.addr(),
        NUMBER,
        "ptime-1",
        rtp.local_addr().expect("bound"),
    ))
    .expect("text");
    let (head, body) = plain.split_once("\r\n\r\n").expect("a body");
    let body = format!("{body}a=ptime:40\r\n");
    let head = head
        .lines()
        .map(|l| {
            if l.starts_with("Content-Length") {
                format!("Content-Length: {}", body.len())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    client.send(format!("{head}\r\n\r\n{body}").as_bytes());
    let (status, ok) = client.final_response(Duration::from_secs(3)).expect("200");
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&ok).contains("a=ptime:40"),
        "{}",
        String::from_utf8_lossy(&ok)
    );
    client.send(&ack("UDP", client.addr(), &ok, "ptime-1"));
    rtp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    let mut stamps = Vec::new();
    for _ in 0..10 {
        let (n, _) = rtp.recv_from(&mut buf).expect("RTP from the room");
        if buf[1] & 0x7f != 0 {
            continue; // RTCP
        }
        assert_eq!(n, 12 + 320, "40 ms of PCMU per packet");
        stamps.push(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]));
    }
    assert!(stamps.len() >= 5);
    for w in stamps.windows(2) {
        assert_eq!(w[1].wrapping_sub(w[0]), 320, "{stamps:?}");
    }
}

/// A self-signed certificate for 127.0.0.1 and its key, written to `dir`.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let (c, k) = (dir.join("sip.crt"), dir.join("sip.key"));
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c, k, cert.der().to_vec())
}

#[test]
fn sip_over_tls_answers_options_and_carries_a_call() {
    let dir = std::env::temp_dir().join(format!("confer-sip-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key, der) = certificate(&dir);
    let s = SipServer::start(
        2,
        4,
        &[
            ("CONFER_DIAL_IN", &format!("{NUMBER}=secure")),
            ("CONFER_SIP_TLS_LISTEN", "127.0.0.1:0"),
            ("CONFER_SIP_TLS_CERT", cert.to_str().expect("utf-8 path")),
            ("CONFER_SIP_TLS_KEY", key.to_str().expect("utf-8 path")),
        ],
    );
    let tls_addr: SocketAddr = s
        .server
        .ready
        .split(" tls:")
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .and_then(|a| a.parse().ok())
        .expect("the ready line names the TLS address");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("our certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(tls_addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = tcp.local_addr().expect("bound");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let read_one = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let finals: Vec<Vec<u8>> = split_messages(&got)
                .into_iter()
                .filter(|m| status_of(m).is_some_and(|s| s >= 200))
                .collect();
            if let Some(m) = finals.into_iter().next() {
                return m;
            }
            let n = tls.read(&mut buf).expect("read over TLS");
            assert!(n > 0, "the TLS connection closed");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tls.write_all(&sip_support::options("TLS", local, 1))
        .expect("send");
    let answer = read_one(&mut tls);
    assert_eq!(status_of(&answer), Some(200));

    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    tls.write_all(&invite(
        "TLS",
        local,
        NUMBER,
        "tls-1",
        rtp.local_addr().expect("bound"),
    ))
    .expect("send");
    let ok = read_one(&mut tls);
    assert_eq!(
        status_of(&ok),
        Some(200),
        "{}",
        String::from_utf8_lossy(&ok)
    );
    assert!(header_of(&ok, "Contact").is_some_and(|c| c.contains("transport=tls")));
    tls.write_all(&ack("TLS", local, &ok, "tls-1"))
        .expect("send");
    assert_eq!(room_participants(&s, "secure"), Some(1));
    assert!(
        s.server
            .metric("confer_sip_messages_received_total{transport=\"tls\"}")
            >= 3.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

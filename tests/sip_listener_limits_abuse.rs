//! The SIP listener's defences, on a running `confer serve`: a flooding source is banned
//! while another is still served, messages over the size limit get 513 (and close a TCP
//! connection), a connection stuck in the middle of a message (slow loris) or idle is
//! closed, connections per source are capped, and RFC 5626 keep-alives are answered.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sip_support::{SipServer, UdpClient, header_of, options, status_of, tcp_exchange};

/// Reads from `s` until it closes or `wait` passes; true when it closed.
fn closes_within(s: &mut TcpStream, wait: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, got);
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (false, got);
            }
            Err(_) => return (true, got),
        }
    }
}

#[test]
fn a_flooding_source_is_banned_while_another_source_is_still_served() {
    let s = SipServer::start(
        0,
        4,
        &[
            ("CONFER_SIP_RATE_PER_SECOND", "20"),
            ("CONFER_SIP_RATE_BURST", "40"),
            ("CONFER_SIP_BAN_SECONDS", "60"),
        ],
    );
    let flooder = UdpClient::bind("127.0.0.1:0", s.udp);
    // Within its burst it is served.
    flooder.send(&options("UDP", flooder.addr(), 1));
    assert_eq!(
        flooder.final_response(Duration::from_secs(2)).map(|r| r.0),
        Some(200)
    );
    for n in 2..400 {
        flooder.send(&options("UDP", flooder.addr(), n));
    }
    // Drain what was answered before the ban.
    while flooder.recv(Duration::from_millis(300)).is_some() {}
    flooder.send(&options("UDP", flooder.addr(), 1000));
    assert_eq!(
        flooder
            .recv(Duration::from_millis(500))
            .and_then(|b| status_of(&b)),
        None,
        "a banned source is not answered"
    );
    // Another source (another loopback address) is served meanwhile, over UDP and TCP.
    let other = UdpClient::bind("127.0.0.2:0", s.udp);
    other.send(&options("UDP", other.addr(), 1));
    assert_eq!(
        other.final_response(Duration::from_secs(2)).map(|r| r.0),
        Some(200),
        "the other source is still served"
    );
    // The banned source's connections are refused.
    let from = "127.0.0.1:9".parse().expect("literal");
    let refused = tcp_exchange(
        s.tcp,
        &options("TCP", from, 7),
        true,
        false,
        Duration::from_secs(2),
    );
    assert!(refused.statuses.is_empty() && refused.closed, "{refused:?}");
    assert!(s.server.metric("confer_sip_bans_total") >= 1.0);
    assert!(
        s.server
            .metric("confer_sip_dropped_total{reason=\"banned\"}")
            >= 100.0
    );
    assert!(s.server.metric("confer_sip_connections_refused_total") >= 1.0);
}

/// An OPTIONS padded with a header to `size` bytes.
fn oversize(transport: &str, from: std::net::SocketAddr, size: usize) -> Vec<u8> {
    let base = String::from_utf8(options(transport, from, 1)).expect("ascii");
    let (head, _) = base.split_once("Content-Length").expect("has a length");
    let pad = size.saturating_sub(base.len() + 12);
    format!(
        "{head}X-Padding: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(pad)
    )
    .into_bytes()
}

#[test]
fn a_message_over_the_size_limit_gets_513_and_closes_a_tcp_connection() {
    // The default limit: 16 KiB.
    let s = SipServer::start(1, 4, &[]);
    let client = UdpClient::bind("127.0.0.1:0", s.udp);
    client.send(&oversize("UDP", client.addr(), 20_000));
    let (status, bytes) = client
        .final_response(Duration::from_secs(2))
        .expect("an answer to the oversized datagram");
    assert_eq!(status, 513);
    assert!(header_of(&bytes, "Call-ID").is_some_and(|c| c.starts_with("options-")));
    // Just under the limit is served.
    client.send(&oversize("UDP", client.addr(), 16_000));
    assert_eq!(
        client.final_response(Duration::from_secs(2)).map(|r| r.0),
        Some(200)
    );

    let from = "127.0.0.1:9".parse().expect("literal");
    let got = tcp_exchange(
        s.tcp,
        &oversize("TCP", from, 40_000),
        true,
        true,
        Duration::from_secs(3),
    );
    assert_eq!(got.statuses, [513]);
    assert!(
        got.closed,
        "the connection is closed after a message over the limit"
    );
    assert!(s.server.metric("confer_sip_too_large_total") >= 2.0);
}

#[test]
fn slow_and_idle_connections_are_closed_and_keep_alives_answered() {
    let s = SipServer::start(
        2,
        4,
        &[
            ("CONFER_SIP_MESSAGE_TIMEOUT_MS", "800"),
            ("CONFER_SIP_IDLE_TIMEOUT_MS", "1500"),
            ("CONFER_SIP_MAX_CONNECTIONS_PER_IP", "3"),
        ],
    );
    // RFC 5626: CRLFCRLF is answered with CRLF.
    let mut ka = TcpStream::connect(s.tcp).expect("connect");
    ka.write_all(b"\r\n\r\n").expect("ping");
    let mut pong = [0u8; 2];
    ka.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    ka.read_exact(&mut pong).expect("a pong");
    assert_eq!(&pong, b"\r\n");

    // Slow loris: a byte every 200 ms never completes a message; closed after ~0.8 s
    // although bytes keep coming.
    let mut slow = TcpStream::connect(s.tcp).expect("connect");
    let msg = options("TCP", "127.0.0.1:9".parse().expect("literal"), 1);
    let started = Instant::now();
    let mut closed_after = None;
    for b in &msg[..40] {
        if slow.write_all(&[*b]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let (closed, _) = closes_within(&mut slow, Duration::from_millis(1));
        if closed {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let t = closed_after.expect("the slow connection is closed");
    assert!(
        t >= Duration::from_millis(700) && t < Duration::from_secs(4),
        "{t:?}"
    );

    // An idle connection is closed after the idle timeout (the keep-alive one above too).
    let mut idle = TcpStream::connect(s.tcp).expect("connect");
    let (closed, _) = closes_within(&mut idle, Duration::from_secs(4));
    assert!(closed, "an idle connection is closed");

    // Connections per source are capped (3 here): three are served, the fourth is
    // closed at once.
    drop(ka);
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    let open: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut c = TcpStream::connect(s.tcp).expect("connect");
            let from = c.local_addr().expect("bound");
            c.write_all(&options("TCP", from, 100 + i)).expect("send");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 2048];
            let n = c.read(&mut buf).expect("an answer");
            assert_eq!(status_of(&buf[..n]), Some(200), "connection {i} is served");
            c
        })
        .collect();
    let mut fourth = TcpStream::connect(s.tcp).expect("the kernel accepts");
    let (closed, _) = closes_within(&mut fourth, Duration::from_millis(700));
    assert!(closed, "the fourth connection from one source is refused");
    drop(open);
    assert!(s.server.metric("confer_sip_keepalives_total") >= 1.0);
    assert!(
        s.server
            .metric("confer_sip_connections_closed_total{reason=\"timeout\"}")
            >= 2.0
    );
}

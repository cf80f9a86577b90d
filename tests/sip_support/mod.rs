//! Shared helpers of the `confer serve` SIP tests: the binary with SIP on free ports, SIP
//! clients over UDP and TCP that read status codes off the wire, and sipp.
//!
//! Why: these tests check SIP as a peer sees it, so they speak bytes over real sockets to
//! the built binary (started by `serve_harness`, killed when dropped). Every read has a
//! timeout and every wait a deadline, so a silent server fails a test with a message
//! instead of hanging it. What it is not: a SIP stack; it parses only the status line
//! and the few headers the tests look at.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::serve_harness::Server;

/// `confer serve` with SIP on free ports.
pub struct SipServer {
    /// The process and its control API.
    pub server: Server,
    /// SIP over UDP.
    pub udp: SocketAddr,
    /// SIP over TCP.
    pub tcp: SocketAddr,
}

impl SipServer {
    /// Starts the binary (RTP range `slot`, `rtp_ports` ports) with SIP on port 0 and
    /// `env` on top.
    pub fn start(slot: u16, rtp_ports: u16, env: &[(&str, &str)]) -> SipServer {
        let mut all = vec![
            ("CONFER_SIP_LISTEN", "127.0.0.1:0"),
            ("CONFER_REALTIME_PRIORITY", "0"),
        ];
        all.extend_from_slice(env);
        let server = Server::start(slot, rtp_ports, &all);
        let addr = |tag: &str| -> SocketAddr {
            server
                .ready
                .split(tag)
                .nth(1)
                .and_then(|s| s.split([',', ' ']).next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {tag} address in {:?}", server.ready))
        };
        let (udp, tcp) = (addr(" udp:"), addr(" tcp:"));
        SipServer { server, udp, tcp }
    }
}

/// The status code of a response's bytes, if they start with a status line.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.splitn(3, ' ');
    (parts.next()? == "SIP/2.0")
        .then_some(())
        .and_then(|()| parts.next()?.parse().ok())
}

/// The value of the first header `name` (case-insensitive, long form) in a message.
pub fn header_of(bytes: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A UDP SIP client on loopback (`127.0.0.1` unless bound elsewhere).
pub struct UdpClient {
    /// The socket.
    pub socket: UdpSocket,
    server: SocketAddr,
}

impl UdpClient {
    /// A client bound to `local` (`127.0.0.1:0` for any port).
    pub fn bind(local: &str, server: SocketAddr) -> UdpClient {
        let socket = UdpSocket::bind(local).expect("bind a UDP client");
        UdpClient { socket, server }
    }

    /// Our address.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound")
    }

    /// Sends one datagram.
    pub fn send(&self, bytes: &[u8]) {
        self.socket
            .send_to(bytes, self.server)
            .expect("send a datagram");
    }

    /// The next datagram within `wait`.
    pub fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .expect("timeout");
        match self.socket.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("UDP receive: {e}"),
        }
    }

    /// The first final response (1xx skipped) within `wait`, with its bytes.
    pub fn final_response(&self, wait: Duration) -> Option<(u16, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let bytes = self.recv(left)?;
            match status_of(&bytes) {
                Some(s) if s >= 200 => return Some((s, bytes)),
                _ => continue,
            }
        }
    }
}

/// What a TCP exchange produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOutcome {
    /// Final status codes received, in order.
    pub statuses: Vec<u16>,
    /// The server closed the connection.
    pub closed: bool,
}

/// Sends `bytes` on a new TCP connection and reads until the server closes it, `wait`
/// passes, or (when `answer` and not `close`) a final response has come; collects the
/// final status codes.
pub fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    answer: bool,
    close: bool,
    wait: Duration,
) -> TcpOutcome {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2)).expect("connect");
    s.write_all(bytes).expect("send");
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                let finals = split_messages(&got)
                    .iter()
                    .filter(|m| status_of(m).is_some_and(|s| s >= 200))
                    .count();
                if answer && !close && finals > 0 {
                    // Anything more would come at once; give it a moment.
                    s.set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("timeout");
                    if let Ok(n) = s.read(&mut buf) {
                        got.extend_from_slice(&buf[..n]);
                    }
                    break false;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    TcpOutcome {
        statuses: split_messages(&got)
            .iter()
            .filter_map(|m| status_of(m))
            .filter(|&s| s >= 200)
            .collect(),
        closed,
    }
}

/// Splits a byte stream of responses at their Content-Length.
pub fn split_messages(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        while data.starts_with(b"\r\n") {
            data = &data[2..];
        }
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            return out;
        };
        let len = header_of(&data[..end + 4], "Content-Length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let total = (end + 4 + len).min(data.len());
        out.push(data[..total].to_vec());
        data = &data[total..];
    }
}

/// An OPTIONS request from `from` over `transport` (a fresh branch and Call-ID per
/// `n`).
pub fn options(transport: &str, from: SocketAddr, n: u32) -> Vec<u8> {
    format!(
        "OPTIONS sip:confer@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {from};branch=z9hG4bK-opt-{n}-{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=p{n}\r\n\
         To: <sip:confer@127.0.0.1>\r\n\
         Call-ID: options-{n}-{}@test\r\n\
         CSeq: {n} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        std::process::id(),
        std::process::id(),
    )
    .into_bytes()
}

/// `binary` on the PATH, when installed (Debian package `package`). Without it a test may
/// skip only outside CI.
fn installed(binary: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{binary} (Debian package {package}) is not installed, and CI is set: it must run here"
        );
        eprintln!("SKIPPED: {binary} is not installed (apt-get install {package})");
    }
    found
}

/// The sipp binary, when installed (see [`installed`]).
pub fn sipp() -> Option<PathBuf> {
    installed("sipp", "sip-tester")
}

/// The room's participants as the API lists them.
pub fn room_participants(s: &SipServer, room: u64) -> Vec<u64> {
    let (status, v) = s.server.request("GET", &format!("/v1/rooms/{room}"), None);
    assert_eq!(status, 200, "{v}");
    v["participant_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

/// A free UDP port on loopback (bound and released; good enough for a test's peers).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs sipp with `args` (killed after `limit`); returns its output.
pub fn run_sipp(sipp: &PathBuf, args: &[String], limit: Duration) -> Output {
    let mut child = Command::new(sipp)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp starts");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("sipp output")
}

/// One UDP datagram seen on loopback: source, destination, payload.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Source.
    pub from: SocketAddr,
    /// Destination.
    pub to: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
    /// When the capture read it (`None` for packets read from a file).
    pub at: Option<Instant>,
}

/// Copies of the IPv4 UDP datagrams sent to a port, read from a raw socket (Linux
/// delivers a copy of every received UDP packet to `IPPROTO_UDP` raw sockets). Lets a
/// test see what confer sends to a peer that does not decode it (sipp). Needs
/// CAP_NET_RAW (root, as in CI); [`RtpCapture::start`] returns `None` without it.
pub struct RtpCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Captured>>,
}

impl RtpCapture {
    /// Starts capturing datagrams to `port`.
    pub fn start(port: u16) -> Option<RtpCapture> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Udp,
        )
        .ok()?;
        let raw = UdpSocket::from(fd);
        raw.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = raw.recv(&mut buf) else {
                    continue;
                };
                if let Some(mut c) = parse_ipv4_udp(&buf[..n])
                    && c.to.port() == port
                {
                    c.at = Some(Instant::now());
                    out.push(c);
                }
            }
            out
        });
        Some(RtpCapture { stop, thread })
    }

    /// Stops and returns what was captured.
    pub fn finish(self) -> Vec<Captured> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("capture thread")
    }
}

fn parse_ipv4_udp(p: &[u8]) -> Option<Captured> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let udp = p.get(ihl..ihl + 8)?;
    let ip = |b: &[u8]| std::net::IpAddr::from([b[0], b[1], b[2], b[3]]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(port(&udp[4..6]));
    Some(Captured {
        from: SocketAddr::new(ip(&p[12..16]), port(&udp[0..2])),
        to: SocketAddr::new(ip(&p[16..20]), port(&udp[2..4])),
        payload: p.get(ihl + 8..ihl + len.max(8))?.to_vec(),
        at: None,
    })
}

/// The payloads of RTP packets with payload type `pt`, in arrival order (duplicates
/// dropped).
pub fn rtp_payloads(packets: &[Captured], pt: u8) -> Vec<Vec<u8>> {
    let mut v: Vec<(u16, Vec<u8>)> = packets
        .iter()
        .filter(|c| c.payload.len() > 12 && c.payload[0] >> 6 == 2 && c.payload[1] & 0x7f == pt)
        .map(|c| {
            let p = &c.payload;
            let csrc = usize::from(p[0] & 0x0f) * 4;
            let mut start = 12 + csrc;
            if p[0] & 0x10 != 0 && p.len() >= start + 4 {
                let words = usize::from(u16::from_be_bytes([p[start + 2], p[start + 3]]));
                start += 4 + words * 4;
            }
            (
                u16::from_be_bytes([p[2], p[3]]),
                p.get(start..).unwrap_or(&[]).to_vec(),
            )
        })
        .collect();
    // Loopback keeps the order; a retransmitted copy sits next to its original.
    v.dedup_by_key(|(seq, _)| *seq);
    v.into_iter().map(|(_, p)| p).collect()
}

/// The RTP payloads of a classic (libpcap) capture file, in file order: Ethernet or
/// Linux-cooked frames carrying IPv4/UDP/RTP (sipp's `g711a.pcap`).
pub fn pcap_rtp_payloads(file: &std::path::Path, pt: u8) -> Vec<Vec<u8>> {
    let data = std::fs::read(file).expect("the pcap file");
    assert!(data.len() > 24, "not a pcap file");
    let le = data[0] == 0xd4;
    let u32_at = |i: usize| {
        let b = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let link = u32_at(20);
    let l2 = match link {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked
        other => panic!("unsupported link type {other}"),
    };
    let mut packets = Vec::new();
    let mut i = 24;
    while i + 16 <= data.len() {
        let len = u32_at(i + 8) as usize;
        let frame = &data[i + 16..(i + 16 + len).min(data.len())];
        if let Some(c) = frame.get(l2..).and_then(parse_ipv4_udp) {
            packets.push(c);
        }
        i += 16 + len;
    }
    rtp_payloads(&packets, pt)
}

/// G.711 A-law payloads decoded and upsampled to 48 kHz floats.
pub fn decode_alaw_48k(payloads: &[Vec<u8>]) -> Vec<f32> {
    decode_g711_48k(payloads, confer_codecs::g711::alaw_to_linear)
}

/// G.711 mu-law payloads decoded and upsampled to 48 kHz floats.
pub fn decode_ulaw_48k(payloads: &[Vec<u8>]) -> Vec<f32> {
    decode_g711_48k(payloads, confer_codecs::g711::ulaw_to_linear)
}

fn decode_g711_48k(payloads: &[Vec<u8>], law: fn(u8) -> i16) -> Vec<f32> {
    let pcm: Vec<f32> = payloads
        .iter()
        .flatten()
        .map(|&c| f32::from(law(c)) / 32768.0)
        .collect();
    crate::leg_harness::resample_all(&pcm, 8000, 48_000)
}

/// The baresip binary, when installed (see [`installed`]).
pub fn baresip() -> Option<PathBuf> {
    installed("baresip", "baresip")
}

/// Runs `program` with `args` (killed after `limit`); returns its exit status and its
/// stdout and stderr (read while it runs, so a chatty program never blocks on a pipe).
pub fn run_bounded(
    program: &std::path::Path,
    args: &[String],
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
    fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    }
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("the killed program is reaped");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!(
        "{}\n--- stderr ---\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status, text)
}

/// Writes RTP packets as a classic pcap file (Ethernet, IPv4, UDP from 127.0.0.1:6000 to
/// 127.0.0.1:6001), one packet per `(at, rtp bytes)`, for sipp's `play_pcap_audio`
/// (which replays the UDP payloads with the capture's timing).
pub fn write_rtp_pcap(file: &std::path::Path, packets: &[(Duration, Vec<u8>)]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (at, rtp) in packets {
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let frame_len = 14 + ip_len;
        out.extend_from_slice(&(at.as_secs() as u32).to_le_bytes());
        out.extend_from_slice(&at.subsec_micros().to_le_bytes());
        out.extend_from_slice(&(frame_len as u32).to_le_bytes());
        out.extend_from_slice(&(frame_len as u32).to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        let check = !((folded & 0xffff) + (folded >> 16)) as u16;
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&6000u16.to_be_bytes());
        out.extend_from_slice(&6001u16.to_be_bytes());
        out.extend_from_slice(&(udp_len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(rtp);
    }
    std::fs::write(file, out).expect("write the pcap");
}

/// RFC 4733 key presses as RTP packets (payload type `pt`, 8 kHz): for each key 100 ms
/// of event packets every 20 ms, three end packets, then 200 ms of nothing. The first
/// press starts `lead` into the file.
pub fn rfc4733_presses(keys: &str, pt: u8, lead: Duration) -> Vec<(Duration, Vec<u8>)> {
    let mut packets = Vec::new();
    let (mut seq, mut at) = (4000u16, lead);
    for (i, key) in keys.chars().enumerate() {
        let event = match key {
            '0'..='9' => key as u8 - b'0',
            '*' => 10,
            '#' => 11,
            other => panic!("no RFC 4733 event for {other:?}"),
        };
        let ts = 16_000u32 + i as u32 * 8000;
        for k in 0..8u16 {
            let end = k >= 5;
            let duration = (k.min(5) + 1) * 160;
            let mut p = vec![0x80, if k == 0 { 0x80 | pt } else { pt }];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&0x5eed_4733u32.to_be_bytes());
            p.extend_from_slice(&[event, if end { 0x80 | 10 } else { 10 }]);
            p.extend_from_slice(&duration.to_be_bytes());
            packets.push((at, p));
            seq = seq.wrapping_add(1);
            if !end || k == 7 {
                at += Duration::from_millis(20);
            }
        }
        at += Duration::from_millis(200);
    }
    packets
}

/// The path of a scenario under `tests/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// sipp's arguments for one call to `number` at `server` from `sip_port`, media on
/// `media_port`, given up after 30 s without a message; `extra` at the end.
pub fn sipp_uac_args(
    server: &SipServer,
    number: &str,
    sip_port: u16,
    media_port: u16,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-s",
        number,
        &server.udp.to_string(),
        "-i",
        "127.0.0.1",
        "-p",
        &sip_port.to_string(),
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
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The "Successful call" count of sipp's final statistics.
pub fn successful_calls(out: &Output) -> Option<u64> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("Successful call"))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|v| v.trim().parse().ok())
}

/// sipp exited 0 with `calls` successful calls (else its screens in the panic).
pub fn assert_sipp_ok(out: &Output, calls: u64) {
    assert!(
        out.status.success() && successful_calls(out) == Some(calls),
        "sipp failed ({:?}): {} successful calls\n{}\n{}",
        out.status,
        successful_calls(out).unwrap_or(0),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls until the room has `n` participants (at most `wait`); returns them.
pub fn wait_for_participants(s: &SipServer, room: u64, n: usize, wait: Duration) -> Vec<u64> {
    let deadline = Instant::now() + wait;
    loop {
        let p = room_participants(s, room);
        if p.len() == n || Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Root mean square of samples.
pub fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

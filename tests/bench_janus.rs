//! The Janus driver of `confer bench` against a real Janus (Debian package `janus`): a room,
//! plain-RTP participants on loopback sockets, and what they hear, judged on decoded audio.
//! Janus is an external process, so these tests run in real time; without Janus installed
//! they fail and say how to install it.

#[allow(dead_code)]
#[path = "../src/bench/janus.rs"]
mod janus;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use janus::{Janus, JanusCodec, RoomOpts};

const RATE: usize = 48_000;
const FRAME: usize = 960;
const OPUS_PT: u8 = 111;
const TONE_HZ: f64 = 440.0;
const TONE_AMPLITUDE: f64 = 0.3;

fn work_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("confer-test-janus-{}-{name}", std::process::id()))
}

fn start(name: &str) -> (Janus, PathBuf) {
    let dir = work_dir(name);
    let janus = Janus::start(&dir)
        .unwrap_or_else(|e| panic!("Janus is needed for this test (apt-get install janus): {e:#}"));
    (janus, dir)
}

/// One RTP packet as received: where it came from, its SSRC and its payload.
struct Received {
    from: SocketAddr,
    ssrc: u32,
    payload_type: u8,
    payload: Vec<u8>,
}

fn rtp_packet(seq: u16, timestamp: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.extend_from_slice(&[0x80, OPUS_PT]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Receives RTP on `socket` until `until`; anything that is not RTP version 2 is skipped.
fn receive(socket: UdpSocket, until: Instant) -> Vec<Received> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set a read timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if n < 12 || buf[0] >> 6 != 2 {
            continue;
        }
        let csrc = usize::from(buf[0] & 0x0f) * 4;
        let mut start = 12 + csrc;
        if buf[0] & 0x10 != 0 && n >= start + 4 {
            let words = usize::from(u16::from_be_bytes([buf[start + 2], buf[start + 3]]));
            start += 4 + words * 4;
        }
        if start > n {
            continue;
        }
        out.push(Received {
            from,
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload_type: buf[1] & 0x7f,
            payload: buf[start..n].to_vec(),
        });
    }
    out
}

fn decode(packets: &[Received]) -> Vec<f64> {
    let mut decoder = opus::Decoder::new(RATE as u32, opus::Channels::Mono).expect("decoder");
    let mut pcm = vec![0i16; 5760];
    let mut out = Vec::new();
    for p in packets {
        let n = decoder
            .decode(&p.payload, &mut pcm, false)
            .expect("Janus sent valid Opus");
        out.extend(pcm[..n].iter().map(|&s| f64::from(s) / 32768.0));
    }
    out
}

/// The share of a block's energy at `hz` (Goertzel; 1.0 for a pure tone spanning whole
/// cycles of the block).
fn tone_share(block: &[f64], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / RATE as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in block {
        let s = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let energy: f64 = block.iter().map(|x| x * x).sum();
    if energy == 0.0 {
        return 0.0;
    }
    2.0 * power / (block.len() as f64 * energy)
}

fn rms(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|x| x * x).sum::<f64>() / samples.len() as f64).sqrt()
}

#[test]
fn a_participant_hears_the_tone_of_the_other_and_the_talker_does_not_hear_itself() {
    let (mut janus, dir) = start("tone");
    assert!(!janus.version().is_empty());
    janus
        .create_room(1, &RoomOpts::default())
        .expect("create room");

    let a_socket = UdpSocket::bind("127.0.0.1:0").expect("bind A");
    let b_socket = UdpSocket::bind("127.0.0.1:0").expect("bind B");
    let a_addr = a_socket.local_addr().expect("A's address");
    let b_addr = b_socket.local_addr().expect("B's address");
    let a = janus
        .join_rtp(1, a_addr, JanusCodec::Opus, OPUS_PT, None)
        .expect("join A");
    let b = janus
        .join_rtp(1, b_addr, JanusCodec::Opus, OPUS_PT, None)
        .expect("join B");
    assert_ne!(a.id, b.id);
    assert_ne!(
        a.janus_rtp, b.janus_rtp,
        "each participant has its own Janus port"
    );

    // A sends 2 s of tone, B sends silence (Janus sends a participant nothing before it
    // has heard from it), both every 20 ms in real time; both listen for 0.7 s more.
    let frames = 2 * RATE / FRAME;
    let listen_until = Instant::now() + Duration::from_millis(20 * frames as u64 + 700);
    let a_rx = a_socket.try_clone().expect("clone A");
    let b_rx = b_socket.try_clone().expect("clone B");
    let a_heard = thread::spawn(move || receive(a_rx, listen_until));
    let b_heard = thread::spawn(move || receive(b_rx, listen_until));

    let mut encoder =
        opus::Encoder::new(RATE as u32, opus::Channels::Mono, opus::Application::Audio)
            .expect("encoder");
    let mut silence_encoder =
        opus::Encoder::new(RATE as u32, opus::Channels::Mono, opus::Application::Audio)
            .expect("encoder");
    let mut buf = [0u8; 1500];
    let silence = [0i16; FRAME];
    let start = Instant::now();
    for i in 0..frames {
        let tone: Vec<i16> = (0..FRAME)
            .map(|k| {
                let t = (i * FRAME + k) as f64 / RATE as f64;
                (TONE_AMPLITUDE * 32767.0 * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as i16
            })
            .collect();
        let seq = i as u16;
        let ts = (i * FRAME) as u32;
        let n = encoder.encode(&tone, &mut buf).expect("encode");
        a_socket
            .send_to(&rtp_packet(seq, ts, 0xA, &buf[..n]), a.janus_rtp)
            .expect("send A");
        let n = silence_encoder.encode(&silence, &mut buf).expect("encode");
        b_socket
            .send_to(&rtp_packet(seq, ts, 0xB, &buf[..n]), b.janus_rtp)
            .expect("send B");
        let next = start + Duration::from_millis(20 * (i as u64 + 1));
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let a_heard = a_heard.join().expect("A's receiver");
    let b_heard = b_heard.join().expect("B's receiver");

    assert!(
        b_heard.len() >= frames / 2,
        "B got {} packets from Janus",
        b_heard.len()
    );
    assert!(
        b_heard
            .iter()
            .all(|p| p.from == b.janus_rtp && p.payload_type == OPUS_PT)
    );
    assert!(
        a_heard.len() >= frames / 2,
        "A got {} packets",
        a_heard.len()
    );
    assert!(a_heard.iter().all(|p| p.from == a.janus_rtp));
    eprintln!(
        "Janus {}: A's mix from {} SSRC {:#x}, B's from {} SSRC {:#x}; {} events dropped",
        janus.version(),
        a.janus_rtp,
        a_heard[0].ssrc,
        b.janus_rtp,
        b_heard[0].ssrc,
        janus.notifications_dropped()
    );

    // 100 ms blocks hold exactly 44 cycles of 440 Hz.
    let b_audio = decode(&b_heard);
    let block = RATE / 10;
    let tone_blocks = b_audio
        .chunks_exact(block)
        .filter(|blk| rms(blk) > 0.1 && tone_share(blk, TONE_HZ) > 0.9)
        .count();
    assert!(
        tone_blocks >= 12,
        "B heard the tone in {tone_blocks} blocks of 100 ms, of 20 sent"
    );
    let a_audio = decode(&a_heard);
    let (a_rms, b_rms) = (rms(&a_audio), rms(&b_audio));
    eprintln!("A's rms {a_rms:.6}, B's rms {b_rms:.4}, tone blocks {tone_blocks}");
    assert!(
        a_rms < b_rms / 100.0,
        "A hears itself: rms {a_rms} against B's {b_rms}"
    );

    janus.destroy_room(1).expect("destroy room");
    janus.stop().expect("stop");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn joins_are_refused_clearly_for_unknown_rooms_and_wrong_g711_payload_types() {
    let (mut janus, dir) = start("refusals");
    let client: SocketAddr = "127.0.0.1:40000".parse().expect("literal");
    let err = janus
        .join_rtp(9, client, JanusCodec::Opus, OPUS_PT, None)
        .unwrap_err();
    assert!(err.to_string().contains("room 9"), "{err:#}");
    janus.create_room(9, &RoomOpts::default()).expect("create");
    let err = janus
        .join_rtp(9, client, JanusCodec::Pcmu, OPUS_PT, None)
        .unwrap_err();
    assert!(err.to_string().contains("payload type 0"), "{err:#}");
    let err = janus.create_room(9, &RoomOpts::default()).unwrap_err();
    assert!(err.to_string().contains("AudioBridge error"), "{err:#}");
    let p = janus
        .join_rtp(9, client, JanusCodec::Pcmu, 0, None)
        .expect("a PCMU join");
    janus.leave(&p).expect("leave");
    janus.stop().expect("stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// User and system CPU seconds of a process so far (Linux, 100 clock ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 counted from 0 after
    // the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A measurement more than a check: `cargo test --release --test bench_janus -- --ignored
/// --nocapture` prints how long start, 1000 joins and stop take.
#[test]
#[ignore = "a measurement: 1000 participants, 2000 threads in Janus, 10-20 s"]
fn a_thousand_participants_join_one_room_from_one_client_address() {
    let t0 = Instant::now();
    let (mut janus, dir) = start("thousand");
    let started = t0.elapsed();
    janus.create_room(2, &RoomOpts::default()).expect("create");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let client_addr = client.local_addr().expect("address");
    let t1 = Instant::now();
    let mut ports = std::collections::HashSet::new();
    for i in 0..1000 {
        let p = janus
            .join_rtp(2, client_addr, JanusCodec::Opus, OPUS_PT, None)
            .unwrap_or_else(|e| panic!("join {i}: {e:#}"));
        ports.insert(p.janus_rtp);
        if (i + 1) % 250 == 0 {
            eprintln!("{} joins after {:?}", i + 1, t1.elapsed());
        }
    }
    let joined = t1.elapsed();
    let (janus_cpu, own_cpu) = (cpu_seconds(janus.pid()), cpu_seconds(std::process::id()));
    assert_eq!(
        ports.len(),
        1000,
        "every participant has its own Janus port"
    );
    let t2 = Instant::now();
    janus.destroy_room(2).expect("destroy");
    let destroyed = t2.elapsed();
    let dropped = janus.notifications_dropped();
    let t3 = Instant::now();
    janus.stop().expect("stop");
    eprintln!(
        "start {started:?}, 1000 joins {joined:?} (CPU: Janus {janus_cpu:.1} s, this test \
         {own_cpu:.1} s), destroy {destroyed:?}, stop {:?}, {dropped} events dropped",
        t3.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
}

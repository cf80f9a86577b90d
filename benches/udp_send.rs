//! What one datagram costs to send on this machine, three ways, as a room's sender
//! threads would send one mix to 500 listeners: `sendto` from each participant's own
//! socket (what confer does: every participant has its own port), `send` on the same
//! sockets `connect`ed to their peers, and `sendmmsg` from one socket to all 500 (what a
//! single-port design would allow). The 500 receivers are drained every millisecond by a
//! thread, as `confer bench`'s load generator does. On loopback a send call also runs
//! the receiver's side of the stack (delivery into its socket), as it does in
//! `confer bench`. One iteration is a burst of 500 datagrams of 172 bytes (a 20 ms Opus
//! mix in RTP) after a 5 ms pause, as a tick's sends come after the tick's mixing (back
//! to back, the sockets would stay in the caches as they do not in a room); only the
//! bursts are timed. Criterion's throughput is datagrams per second.
//! Run: `cargo bench --bench udp_send`.

use std::io::IoSlice;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};

const LISTENERS: usize = 500;
const DATAGRAM: [u8; 172] = [0x80; 172];

/// `LISTENERS` loopback sockets drained every millisecond until `stop`.
fn receivers(stop: Arc<AtomicBool>) -> (Vec<SocketAddrV4>, std::thread::JoinHandle<()>) {
    let sockets: Vec<UdpSocket> = (0..LISTENERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("receiver"))
        .collect();
    let addrs = sockets
        .iter()
        .map(|s| match s.local_addr().expect("bound") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound on 127.0.0.1"),
        })
        .collect();
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for s in &sockets {
            s.set_nonblocking(true).expect("non-blocking");
        }
        while !stop.load(Ordering::Relaxed) {
            for s in &sockets {
                while s.recv_from(&mut buf).is_ok() {}
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (addrs, drain)
}

/// Times `iters` bursts, each after a pause.
fn bursts(iters: u64, mut burst: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        burst();
        total += t.elapsed();
    }
    total
}

fn senders() -> Vec<UdpSocket> {
    (0..LISTENERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("sender"))
        .collect()
}

fn udp_send(c: &mut Criterion) {
    let stop = Arc::new(AtomicBool::new(false));
    let (to, drain) = receivers(stop.clone());
    let mut g = c.benchmark_group("udp_send_500");
    g.throughput(Throughput::Elements(LISTENERS as u64));

    let own = senders();
    g.bench_function("sendto_own_sockets", |b| {
        b.iter_custom(|iters| {
            bursts(iters, || {
                for (s, a) in own.iter().zip(&to) {
                    let _ = s.send_to(&DATAGRAM, a);
                }
            })
        })
    });

    let connected = senders();
    for (s, a) in connected.iter().zip(&to) {
        s.connect(a).expect("connect");
    }
    g.bench_function("send_connected_sockets", |b| {
        b.iter_custom(|iters| {
            bursts(iters, || {
                for s in &connected {
                    let _ = s.send(&DATAGRAM);
                }
            })
        })
    });

    let one = UdpSocket::bind("127.0.0.1:0").expect("sender");
    let addrs: Vec<Option<SockaddrIn>> = to.iter().map(|&a| Some(SockaddrIn::from(a))).collect();
    let slices: Vec<[IoSlice<'_>; 1]> = (0..LISTENERS).map(|_| [IoSlice::new(&DATAGRAM)]).collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(LISTENERS, None);
    g.bench_function("sendmmsg_one_socket", |b| {
        b.iter_custom(|iters| {
            bursts(iters, || {
                let sent = sendmmsg(
                    one.as_raw_fd(),
                    &mut headers,
                    &slices,
                    &addrs,
                    [],
                    MsgFlags::empty(),
                )
                .map(|r| r.count())
                .unwrap_or(0);
                assert_eq!(sent, LISTENERS, "the kernel took every datagram");
            })
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = udp_send
}
criterion_main!(benches);

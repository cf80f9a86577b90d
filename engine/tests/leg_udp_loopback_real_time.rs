//! Two `UdpLeg`s on 127.0.0.1 ephemeral ports exchange 3 s of speech in real time with
//! tokio, RTP and RTCP muxed on one socket each. This test necessarily runs on the real
//! clock, so its assertions leave room for a loaded machine (late ticks are skipped, not
//! bursted): the decoded audio must still correlate with the input, and the whole run is
//! bounded by a timeout so it can never hang.

mod leg_harness;

use std::net::SocketAddr;
use std::time::Duration;

use confer_engine::leg::LegConfig;
use confer_engine::udp::{LegIo, UdpLeg};
use leg_harness::{RATE, aligned_correlation, epoch, leg, speech};
use ringbuf::traits::{Consumer, Observer, Producer};

#[tokio::test(flavor = "current_thread")]
async fn two_udp_legs_exchange_speech_over_loopback() {
    let input = speech(4.0, 3.0);
    let reply = speech(12.0, 3.0);
    let t0 = epoch();
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let mut a = UdpLeg::bind(loopback, leg(LegConfig::default(), None, 1, t0))
        .await
        .expect("bind A");
    let mut b = UdpLeg::bind(loopback, leg(LegConfig::default(), None, 2, t0))
        .await
        .expect("bind B");
    a.set_peer(b.local_addr().expect("bound"));
    b.set_peer(a.local_addr().expect("bound"));

    let (io_a, mut remote_a) = LegIo::new(5 * RATE, input.len());
    let (io_b, mut remote_b) = LegIo::new(5 * RATE, reply.len());
    assert_eq!(remote_a.capture.push_slice(&input), input.len());
    assert_eq!(remote_b.capture.push_slice(&reply), reply.len());

    let run_for = Duration::from_millis(3600);
    let both = async {
        tokio::join!(
            a.run_until(io_a, tokio::time::sleep(run_for)),
            b.run_until(io_b, tokio::time::sleep(run_for)),
        )
    };
    let ((leg_a, shell_a), (leg_b, shell_b)) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the legs stop on their own");

    let mut at_b = vec![0.0f32; remote_b.playout.occupied_len()];
    remote_b.playout.pop_slice(&mut at_b);
    let mut at_a = vec![0.0f32; remote_a.playout.occupied_len()];
    remote_a.playout.pop_slice(&mut at_a);
    let al = aligned_correlation(&input, &at_b);
    let back = aligned_correlation(&reply, &at_a);
    let sa = leg_a.stats();
    let sb = leg_b.stats();
    println!(
        "A shell {shell_a:?}\nB shell {shell_b:?}\nA sent {} packets; B received {} lost {} \
         jitter {:.2} ms, jb late {} target {:.1} ms; A to B correlation {:.3} (min {:.3}, {} \
         windows), delay {:.1} ms; B to A correlation {:.3}, delay {:.1} ms",
        sa.rtp_packets_sent,
        sb.rtp_packets_received,
        sb.packets_lost,
        sb.jitter_ms,
        sb.jitter_buffer.late,
        sb.jitter_buffer.target_delay_ms,
        al.mean,
        al.min,
        al.windows,
        al.delay_ms,
        back.mean,
        back.delay_ms
    );
    // 3 s of input at 50 packets/s; ticks may be skipped on a loaded machine.
    assert!(sa.rtp_packets_sent >= 100, "{}", sa.rtp_packets_sent);
    assert_eq!(sb.rtp_packets_received, sa.rtp_packets_sent);
    assert_eq!(sb.errors.total(), 0);
    assert_eq!(shell_b.foreign_datagrams, 0);
    assert_eq!(shell_a.send_errors + shell_b.send_errors, 0);
    assert!(al.windows >= 8, "{} speech windows", al.windows);
    assert!(al.mean > 0.7, "A to B correlation {:.3}", al.mean);
    assert!(back.windows >= 8, "{} speech windows", back.windows);
    assert!(back.mean > 0.7, "B to A correlation {:.3}", back.mean);
    assert_eq!(sa.rtp_packets_received, sb.rtp_packets_sent);
    assert_eq!(sb.remote_ssrc, Some(sa.local_ssrc));
    assert_eq!(sa.remote_ssrc, Some(sb.local_ssrc));
}

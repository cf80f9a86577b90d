//! End to end over real UDP: `confer serve` on free ports, a room created over HTTP, three
//! RTP participants (Opus) on loopback sockets each sending 3 s of different speech in real
//! time. Each one must hear the other two and not itself, judged on its decoded audio: the
//! aligned correlation of what it played with every source.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;

use std::net::SocketAddr;
use std::time::Duration;

use confer_engine::leg::LegConfig;
use confer_engine::udp::{LegIo, UdpLeg};
use leg_harness::aligned_correlation;
use ringbuf::traits::{Consumer, Observer, Producer};
use serve_harness::{Server, client_leg, speech};

const RATE: usize = 48_000;

#[test]
fn each_participant_hears_the_other_two_and_not_itself() {
    let server = Server::start(0, 20, &[]);
    let room = server.create_room(r#"{"name":"e2e","max_participants":8}"#);
    let sources = [speech(0.5, 3.0), speech(6.0, 3.0), speech(12.0, 3.0)];

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let played: Vec<Vec<f32>> = runtime.block_on(async {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let mut legs = Vec::new();
        let mut remotes = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            let mut udp = UdpLeg::bind(loopback, client_leg(LegConfig::default(), 10 + i as u64))
                .await
                .expect("bind client");
            let mine = udp.local_addr().expect("bound");
            let (_, theirs) = server.join(room, mine, "opus");
            udp.set_peer(theirs);
            let (io, mut remote) = LegIo::new(6 * RATE, src.len());
            assert_eq!(remote.capture.push_slice(src), src.len());
            legs.push((udp, io));
            remotes.push(remote);
        }
        let run_for = Duration::from_millis(4000);
        let runs = legs
            .into_iter()
            .map(|(udp, io)| udp.run_until(io, tokio::time::sleep(run_for)));
        let results = tokio::time::timeout(
            Duration::from_secs(30),
            serve_harness::join_all(runs.collect()),
        )
        .await
        .expect("the clients stop on their own");
        for (i, (leg, shell)) in results.iter().enumerate() {
            let s = leg.stats();
            println!(
                "client {i}: sent {} received {} lost {} jitter {:.2} ms; shell {shell:?}",
                s.rtp_packets_sent, s.rtp_packets_received, s.packets_lost, s.jitter_ms
            );
            assert!(
                s.rtp_packets_sent >= 140,
                "client {i} sent {}",
                s.rtp_packets_sent
            );
            assert!(
                s.rtp_packets_received >= 150,
                "client {i} received {}",
                s.rtp_packets_received
            );
            assert_eq!(shell.foreign_datagrams, 0);
        }
        remotes
            .iter_mut()
            .map(|r| {
                let mut out = vec![0.0f32; r.playout.occupied_len()];
                r.playout.pop_slice(&mut out);
                out
            })
            .collect()
    });

    for (i, out) in played.iter().enumerate() {
        for (j, src) in sources.iter().enumerate() {
            let a = aligned_correlation(src, out);
            println!(
                "participant {i} hears source {j}: correlation {:.3} (min {:.3}, {} windows), delay {:.1} ms",
                a.mean, a.min, a.windows, a.delay_ms
            );
            assert!(a.windows >= 5, "{} speech windows", a.windows);
            if i == j {
                assert!(a.mean < 0.35, "participant {i} hears itself: {:.3}", a.mean);
            } else {
                assert!(
                    a.mean > 0.45,
                    "participant {i} does not hear {j}: {:.3}",
                    a.mean
                );
            }
        }
    }

    let (status, v) = server.request("GET", &format!("/v1/rooms/{room}"), None);
    assert_eq!(status, 200);
    println!("room: {v}");
    assert_eq!(v["participants"], 3);
    println!(
        "{} ticks, {} overruns, received {} sent {}",
        server.metric("confer_ticks_total"),
        server.metric("confer_tick_overruns_total"),
        server.metric("confer_datagrams_received_total"),
        server.metric("confer_datagrams_sent_total")
    );
    for stage in ["receive_queue", "room_receive", "room_mix", "send", "tick"] {
        let (mean, n) = server.stage_mean_us(stage);
        println!("stage {stage}: mean {mean:.1} us over {n}");
        assert!(n > 0.0, "stage {stage} was never timed");
    }
    let status = server.stop();
    assert!(status.success(), "{status:?}");
}

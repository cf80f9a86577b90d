//! RFC 4733 telephone-events on a G.711 leg: a digit sent with its three end packets comes
//! out as one start and one end event; a digit whose end packets are lost is ended by the
//! leg's timeout on the stream's media clock; malformed events, events from a foreign SSRC
//! and payload types that were not negotiated are rejected and counted.

mod leg_harness;

use std::time::{Duration, Instant};

use confer_codecs::dtmf::{EndCause, ReceivedEvent, TelephoneEventSender};
use confer_engine::leg::{Codec, DropReason, LegConfig, LegError, LegEvent, MediaLeg, Received};
use confer_engine::rtp::RtpPacketBuilder;
use confer_engine::types::{PayloadType, Ssrc};
use leg_harness::{FRAME, epoch, leg};

const TE: u8 = 101;
const PEER: Ssrc = Ssrc(0xD7F0_0001);

/// A peer that sends PCMU audio and telephone-events on one SSRC, one packet per 20 ms.
struct Peer {
    seq: u16,
    ts: u32,
    now: Instant,
    buf: [u8; 256],
}

impl Peer {
    fn packet(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8], ssrc: Ssrc) -> Vec<u8> {
        let pt = PayloadType::new(pt).expect("7-bit payload type");
        let n = RtpPacketBuilder::new(pt, self.seq, ts, ssrc)
            .marker(marker)
            .payload(payload)
            .write(&mut self.buf)
            .expect("fits");
        self.seq = self.seq.wrapping_add(1);
        self.buf[..n].to_vec()
    }

    fn audio(&mut self) -> Vec<u8> {
        let ts = self.ts;
        self.packet(0, false, ts, &[0xFF; 160], PEER)
    }
}

fn tick(b: &mut MediaLeg, peer: &mut Peer) {
    let mut frame = [0.0f32; FRAME];
    b.poll_frame(peer.now, &mut frame).expect("frame size");
    peer.now += Duration::from_millis(20);
    peer.ts = peer.ts.wrapping_add(160);
}

fn events(b: &mut MediaLeg) -> Vec<LegEvent> {
    std::iter::from_fn(|| b.poll_event()).collect()
}

/// Sends `event` lasting `length` ticks; end packets are dropped when `lose_end`.
fn send_digit(b: &mut MediaLeg, peer: &mut Peer, event: u8, length: u32, lose_end: bool) -> u32 {
    let mut sender = TelephoneEventSender::new(160, 10).expect("valid sender");
    let start = peer.ts;
    sender
        .send_event(event, start, length)
        .expect("idle sender");
    while !sender.is_idle() {
        while let Some(p) = sender.poll_packet(peer.ts) {
            if lose_end && p.payload.end {
                continue;
            }
            let mut payload = [0u8; 4];
            p.payload.build(&mut payload).expect("4 bytes");
            let d = peer.packet(TE, p.marker, p.timestamp, &payload, PEER);
            let r = b.handle_datagram(&d, peer.now).expect("valid event");
            assert!(matches!(r, Received::TelephoneEvent { .. }), "{r:?}");
        }
        tick(b, peer);
    }
    start
}

#[test]
fn telephone_events_become_digit_events_once() {
    let t0 = epoch();
    let mut b = leg(
        LegConfig {
            codec: Codec::Pcmu,
            telephone_event: Some(PayloadType::new(TE).expect("7-bit")),
            ..LegConfig::default()
        },
        None,
        1,
        t0,
    );
    let mut peer = Peer {
        seq: 4000,
        ts: 80_000,
        now: t0,
        buf: [0; 256],
    };
    for _ in 0..10 {
        let d = peer.audio();
        b.handle_datagram(&d, peer.now).expect("valid audio");
        tick(&mut b, &mut peer);
    }
    assert_eq!(
        events(&mut b),
        [LegEvent::NewSource {
            previous: None,
            ssrc: PEER
        }]
    );

    // Digit 5 for 100 ms, with its three end packets.
    let start = send_digit(&mut b, &mut peer, 5, 800, false);
    assert_eq!(
        events(&mut b),
        [
            LegEvent::Dtmf(ReceivedEvent::Started {
                event: 5,
                timestamp: start,
                volume: 10
            }),
            LegEvent::Dtmf(ReceivedEvent::Ended {
                event: 5,
                timestamp: start,
                duration: 800,
                cause: EndCause::EndBit
            })
        ]
    );

    // Digit # (11) whose end packets are all lost: ended by the timeout while the call
    // goes on (300 ms of media time after its last known end).
    let start = send_digit(&mut b, &mut peer, 11, 480, true);
    let mut ended = None;
    for _ in 0..30 {
        let d = peer.audio();
        b.handle_datagram(&d, peer.now).expect("valid audio");
        // The media clock of this tick: the audio packet just received.
        let media = peer.ts;
        tick(&mut b, &mut peer);
        if let Some(e) = events(&mut b)
            .into_iter()
            .find(|e| matches!(e, LegEvent::Dtmf(ReceivedEvent::Ended { .. })))
        {
            ended = Some((media, e));
            break;
        }
    }
    let (media, e) = ended.expect("the open digit timed out");
    assert_eq!(
        e,
        LegEvent::Dtmf(ReceivedEvent::Ended {
            event: 11,
            timestamp: start,
            // The last update before the lost end packets.
            duration: 320,
            cause: EndCause::Timeout
        })
    );
    // At the first tick at or after start + last duration + 300 ms (2400 ticks).
    let after = media.wrapping_sub(start);
    assert!(
        (320 + 2400..320 + 2400 + 160).contains(&after),
        "timed out {after} ticks after the start"
    );
    assert_eq!(b.stats().dtmf_events, 4);

    // Rejections.
    let ts = peer.ts;
    let bad = peer.packet(TE, true, ts, &[5, 10, 0], PEER);
    assert!(matches!(
        b.handle_datagram(&bad, peer.now),
        Err(LegError::TelephoneEvent(_))
    ));
    let foreign = peer.packet(TE, true, ts, &[5, 10, 0, 160], Ssrc(1));
    assert_eq!(
        b.handle_datagram(&foreign, peer.now),
        Ok(Received::Dropped(DropReason::ForeignSource))
    );
    let unknown = peer.packet(96, false, ts, &[1, 2, 3], PEER);
    assert_eq!(
        b.handle_datagram(&unknown, peer.now),
        Err(LegError::UnknownPayloadType(
            PayloadType::new(96).expect("7-bit")
        ))
    );
    let s = b.stats();
    assert_eq!(s.errors.malformed_telephone_event, 1);
    assert_eq!(s.errors.unknown_payload_type, 1);
    assert_eq!(s.dropped.foreign_source, 1);
    assert_eq!(s.dtmf_events, 4);
    assert!(events(&mut b).is_empty());
}

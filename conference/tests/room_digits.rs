//! A key a participant presses (an RFC 4733 telephone-event on its leg) is a room event,
//! once per key however many packets carry it: what in-call controls (`*6` mute) are
//! built on.

mod room_support;

use std::time::Duration;

use confer_codecs::dtmf::{DtmfDigit, TelephoneEvent};
use confer_conference::room::{ParticipantConfig, Room, RoomConfig, RoomEventKind};
use confer_engine::leg::{Codec, LegConfig, MediaLeg};
use confer_engine::rtp::RtpPacketBuilder;
use confer_engine::types::{PayloadType, Ssrc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use room_support::origin;

const EVENT_PT: u8 = 101;

/// The packets of one key press: three updates, then the end packet three times.
fn key_packets(digit: DtmfDigit, first_seq: u16, timestamp: u32) -> Vec<Vec<u8>> {
    (0..6u16)
        .map(|k| {
            let mut payload = [0u8; 4];
            TelephoneEvent {
                event: digit.event_code(),
                end: k >= 3,
                volume: 10,
                duration: 160 * (k.min(3) + 1),
            }
            .build(&mut payload)
            .unwrap();
            let mut packet = [0u8; 64];
            let n = RtpPacketBuilder::new(
                PayloadType::new(EVENT_PT).unwrap(),
                first_seq + k,
                timestamp,
                Ssrc(7),
            )
            .marker(k == 0)
            .payload(&payload)
            .write(&mut packet)
            .unwrap();
            packet[..n].to_vec()
        })
        .collect()
}

#[test]
fn each_key_pressed_is_one_digit_event_of_the_participant() {
    let t0 = origin();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let leg = MediaLeg::new(
        LegConfig {
            codec: Codec::Pcmu,
            telephone_event: Some(PayloadType::new(EVENT_PT).unwrap()),
            ..LegConfig::default()
        },
        None,
        &mut rng,
        t0,
    )
    .unwrap();
    let mut room = Room::new(RoomConfig::default(), t0).unwrap();
    let id = room.join(ParticipantConfig::new(leg), t0).unwrap();
    while room.poll_event().is_some() {}

    let mut now = t0;
    let mut seq = 100;
    let mut digits = Vec::new();
    for (i, digit) in [DtmfDigit::Star, DtmfDigit::D6, DtmfDigit::D6]
        .into_iter()
        .enumerate()
    {
        for packet in key_packets(digit, seq, 8000 * i as u32) {
            room.handle_datagram(id, &packet, now).unwrap();
            now += Duration::from_millis(20);
            room.tick(now, &mut |_, _| {});
        }
        seq += 6;
        while let Some(e) = room.poll_event() {
            if let RoomEventKind::Digit { id: who, digit } = e.kind {
                assert_eq!(who, id);
                digits.push(digit);
            }
        }
    }
    // Six packets a key, three of them repeated ends: one event each, the repeat of 6
    // included (a new event: a new timestamp).
    assert_eq!(digits, [DtmfDigit::Star, DtmfDigit::D6, DtmfDigit::D6]);
}

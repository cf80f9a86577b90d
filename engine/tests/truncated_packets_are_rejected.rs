//! Every truncation of a valid RTP, compound RTCP, SRTP or SRTCP packet is rejected with a
//! typed error, never a panic and never a wrong parse.
//!
//! The packets use every feature the parsers handle (CSRCs, one- and two-byte header
//! extensions, padding, all the RTCP types), so each truncation point hits a different
//! check. The one legitimate exception is a compound RTCP packet cut exactly between two
//! of its packets: that is a shorter valid compound, and it must parse to exactly the
//! packets before the cut.

use confer_engine::rtcp::{
    App, Bye, CompoundRules, Nack, Pli, ReceiverReport, ReportBlock, RtcpPacket, SDES_NAME, Sdes,
    SdesItem, SenderReport, build_compound, encoded_len, parse_compound,
};
use confer_engine::rtp::{AudioLevel, ExtensionForm, RtpExtension, RtpPacket, RtpPacketBuilder};
use confer_engine::srtp::{SrtpProfile, SrtpReceiver, SrtpSender};
use confer_engine::types::{NtpTime, PayloadType, SeqNo, Ssrc};

const PROFILES: [SrtpProfile; 3] = [
    SrtpProfile::Aes128CmHmacSha1_80,
    SrtpProfile::Aes128CmHmacSha1_32,
    SrtpProfile::AeadAes128Gcm,
];

/// RTP packets with CSRCs, extensions of both forms and padding. The payload bytes are
/// 0xFF and the padding bytes 0, so a cut inside payload or padding leaves a last byte
/// that is not a valid padding count.
fn rtp_packets() -> Vec<Vec<u8>> {
    let level = [AudioLevel::new(true, 33).unwrap().to_byte()];
    let big = [0xA5u8; 20];
    let csrcs = [Ssrc(1), Ssrc(2), Ssrc(3)];
    let payload = [0xFFu8; 40];
    let one = [
        RtpExtension {
            id: 1,
            data: &level,
        },
        RtpExtension {
            id: 7,
            data: &[1, 2, 3, 4, 5],
        },
    ];
    let two = [
        RtpExtension {
            id: 1,
            data: &level,
        },
        RtpExtension {
            id: 200,
            data: &big,
        },
        RtpExtension { id: 9, data: &[] },
    ];
    let pt = PayloadType::new(111).unwrap();
    let mut out = Vec::new();
    for (i, (exts, form, padding)) in [
        (&one[..], ExtensionForm::OneByte, 7u8),
        (&two[..], ExtensionForm::TwoByte, 1),
        (&[][..], ExtensionForm::Auto, 12),
    ]
    .into_iter()
    .enumerate()
    {
        let mut buf = [0u8; 256];
        let n = RtpPacketBuilder::new(
            pt,
            0xFFFEu16.wrapping_add(i as u16),
            0xFFFF_FFF0,
            Ssrc(0xCAFE),
        )
        .marker(true)
        .csrcs(&csrcs)
        .extensions(exts)
        .extension_form(form)
        .payload(&payload)
        .padding(padding)
        .write(&mut buf)
        .unwrap();
        out.push(buf[..n].to_vec());
    }
    out
}

fn compound() -> Vec<RtcpPacket> {
    let block = ReportBlock {
        ssrc: Ssrc(2),
        fraction_lost: 10,
        cumulative_lost: -3,
        extended_highest_seq: 0x0002_0010,
        jitter: 40,
        last_sr: 0x1234_5678,
        delay_since_last_sr: 0x0001_0000,
    };
    let mut sdes = Sdes::cname(Ssrc(1), b"leg-1@confer");
    sdes.chunks[0].items.push(SdesItem {
        kind: SDES_NAME,
        text: b"Alice".to_vec(),
    });
    vec![
        RtcpPacket::SenderReport(SenderReport {
            ssrc: Ssrc(1),
            ntp_time: NtpTime(0xE000_0001_4000_0000),
            rtp_time: 960,
            packet_count: 3,
            octet_count: 480,
            reports: vec![block, block],
        }),
        RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(1),
            reports: vec![block],
        }),
        RtcpPacket::SourceDescription(sdes),
        RtcpPacket::Nack(Nack::from_lost(
            Ssrc(1),
            Ssrc(2),
            [SeqNo(70_000), SeqNo(70_003)],
        )),
        RtcpPacket::Pli(Pli {
            sender_ssrc: Ssrc(1),
            media_ssrc: Ssrc(2),
        }),
        RtcpPacket::App(App {
            subtype: 1,
            ssrc: Ssrc(1),
            name: *b"CNFR",
            data: vec![9; 8],
        }),
        RtcpPacket::Bye(Bye {
            sources: vec![Ssrc(1), Ssrc(4)],
            reason: Some(b"hangup".to_vec()),
        }),
    ]
}

#[test]
fn every_truncation_of_an_rtp_packet_is_an_error() {
    for packet in rtp_packets() {
        assert!(RtpPacket::parse(&packet).is_ok());
        for cut in 0..packet.len() {
            let r = RtpPacket::parse(&packet[..cut]);
            assert!(
                r.is_err(),
                "prefix of {cut}/{} bytes parsed: {r:?}",
                packet.len()
            );
        }
    }
}

#[test]
fn every_truncation_of_a_compound_rtcp_packet_is_an_error_except_at_packet_boundaries() {
    let packets = compound();
    let mut buf = [0u8; 1024];
    let n = build_compound(&packets, CompoundRules::Rfc3550, &mut buf).unwrap();
    let mut boundaries = vec![0];
    for p in &packets {
        boundaries.push(boundaries.last().unwrap() + encoded_len(p).unwrap());
    }
    assert_eq!(*boundaries.last().unwrap(), n);
    for rules in [CompoundRules::Rfc3550, CompoundRules::ReducedSize] {
        for cut in 0..=n {
            let r = parse_compound(&buf[..cut], rules);
            match boundaries.iter().position(|&b| b == cut) {
                Some(k) if k > 0 => assert_eq!(r.as_deref(), Ok(&packets[..k]), "cut at {cut}"),
                _ => assert!(r.is_err(), "prefix of {cut}/{n} bytes parsed: {r:?}"),
            }
        }
    }
}

#[test]
fn every_truncation_of_an_srtp_packet_is_an_error() {
    for profile in PROFILES {
        let key = [0x11u8; 16];
        let salt = vec![0x22u8; profile.master_salt_len()];
        let mut tx = SrtpSender::new(profile, &key, &salt).unwrap();
        let mut rx = SrtpReceiver::new(profile, &key, &salt).unwrap();
        let mut wire = [0u8; 512];
        let mut plain = [0u8; 512];
        for packet in rtp_packets() {
            let n = tx.protect_rtp(&packet, &mut wire).unwrap();
            for cut in 0..n {
                let r = rx.unprotect_rtp(&wire[..cut], &mut plain);
                assert!(
                    r.is_err(),
                    "{profile:?}: prefix of {cut}/{n} bytes accepted"
                );
            }
            // The failed prefixes did not disturb the receiver.
            let v = rx.unprotect_rtp(&wire[..n], &mut plain).unwrap();
            assert_eq!(v.as_bytes(), &packet[..]);
            assert!(v.parse().is_ok());
        }
    }
}

#[test]
fn every_truncation_of_an_srtcp_packet_is_an_error() {
    for profile in PROFILES {
        let key = [0x33u8; 16];
        let salt = vec![0x44u8; profile.master_salt_len()];
        let mut tx = SrtpSender::new(profile, &key, &salt).unwrap();
        let mut rx = SrtpReceiver::new(profile, &key, &salt).unwrap();
        let mut rtcp = [0u8; 1024];
        let len = build_compound(&compound(), CompoundRules::Rfc3550, &mut rtcp).unwrap();
        let mut wire = [0u8; 1024];
        let mut plain = [0u8; 1024];
        let n = tx.protect_rtcp(&rtcp[..len], &mut wire).unwrap();
        for cut in 0..n {
            let r = rx.unprotect_rtcp(&wire[..cut], &mut plain);
            assert!(
                r.is_err(),
                "{profile:?}: prefix of {cut}/{n} bytes accepted"
            );
        }
        let v = rx.unprotect_rtcp(&wire[..n], &mut plain).unwrap();
        assert_eq!(v.parse(CompoundRules::Rfc3550).unwrap(), compound());
    }
}

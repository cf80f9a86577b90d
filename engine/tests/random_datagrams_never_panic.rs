//! Hostile input: 100,000 seeded random datagrams each to the RTP parser, the compound RTCP
//! parser, SRTP unprotect and SRTCP unprotect. Every call returns an error or a valid
//! result and none panics; SRTP/SRTCP accept exactly the genuine packets mixed in.
//!
//! Deterministic: one ChaCha8 stream with a fixed seed per test. Pure noise stops at the
//! first check, so most buffers are shaped to get past it: version 2 and plausible flags,
//! CSRC counts, extension headers and element bytes, RTCP packet types with consistent
//! length fields, genuine SRTP headers, and valid packets with a few bytes flipped,
//! truncated or extended.

use confer_engine::rtcp::{
    Bye, CompoundRules, Nack, Pli, ReceiverReport, ReportBlock, RtcpPacket, Sdes, build_compound,
    parse_compound, write_packet,
};
use confer_engine::rtp::{AudioLevel, RtpExtension, RtpPacket, RtpPacketBuilder, header_len};
use confer_engine::srtp::{SrtpError, SrtpProfile, SrtpReceiver, SrtpSender};
use confer_engine::types::{PayloadType, SeqNo, Ssrc};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 100_000;

fn random_bytes(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let mut v = vec![0u8; rng.random_range(0..=max)];
    rng.fill_bytes(&mut v);
    v
}

/// Flips, truncates or extends a valid packet.
fn mutate(rng: &mut ChaCha8Rng, mut v: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 if !v.is_empty() => {
            for _ in 0..rng.random_range(1..=4) {
                let i = rng.random_range(0..v.len());
                v[i] ^= rng.random_range(1..=255u8);
            }
        }
        1 if !v.is_empty() => {
            let cut = rng.random_range(0..v.len());
            v.truncate(cut);
        }
        _ => {
            for _ in 0..rng.random_range(1..=8) {
                v.push(rng.random());
            }
        }
    }
    v
}

/// A header that passes the first checks, with random structure after it.
fn structured_rtp(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let cc = rng.random_range(0..=15u8);
    let x = rng.random_bool(0.7);
    let p = rng.random_bool(0.3);
    let mut v = vec![0x80 | cc | if x { 0x10 } else { 0 } | if p { 0x20 } else { 0 }];
    v.extend((0..11 + 4 * usize::from(cc)).map(|_| rng.random::<u8>()));
    if x {
        let profile: u16 = match rng.random_range(0..4) {
            0 => 0xBEDE,
            1 => 0x1000,
            2 => 0x1000 | rng.random_range(0..16),
            _ => rng.random(),
        };
        let words: u16 = rng.random_range(0..=6);
        v.extend_from_slice(&profile.to_be_bytes());
        v.extend_from_slice(&words.to_be_bytes());
        for _ in 0..4 * words {
            // Element bytes: small ids/lengths and padding zeros are the interesting ones.
            v.push(match rng.random_range(0..4) {
                0 => 0,
                1 => rng.random_range(0..=0x2F),
                _ => rng.random(),
            });
        }
    }
    for _ in 0..rng.random_range(0..=40) {
        v.push(rng.random());
    }
    if rng.random_bool(0.5)
        && let Some(last) = v.last_mut()
    {
        *last = rng.random_range(0..=12);
    }
    if rng.random_bool(0.2) {
        let cut = rng.random_range(0..=v.len());
        v.truncate(cut);
    }
    v
}

fn valid_rtp(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let level = [AudioLevel::new(rng.random(), rng.random_range(0..=127))
        .unwrap()
        .to_byte()];
    let data = random_bytes(rng, 20);
    let exts = [
        RtpExtension {
            id: 1,
            data: &level,
        },
        RtpExtension {
            id: rng.random_range(1..=255),
            data: &data,
        },
    ];
    let csrcs: Vec<Ssrc> = (0..rng.random_range(0..=15))
        .map(|_| Ssrc(rng.random()))
        .collect();
    let payload = random_bytes(rng, 60);
    let n_ext = rng.random_range(0..=2);
    let mut buf = [0u8; 512];
    let n = RtpPacketBuilder::new(
        PayloadType::new(rng.random_range(0..=127)).unwrap(),
        rng.random(),
        rng.random(),
        Ssrc(rng.random()),
    )
    .marker(rng.random())
    .csrcs(&csrcs)
    .extensions(&exts[..n_ext])
    .payload(&payload)
    .padding(rng.random_range(0..=8))
    .write(&mut buf)
    .unwrap();
    buf[..n].to_vec()
}

fn rtp_datagram(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => random_bytes(rng, 64),
        1 => structured_rtp(rng),
        2 => {
            let v = valid_rtp(rng);
            mutate(rng, v)
        }
        _ => {
            let mut v = random_bytes(rng, 80);
            if let Some(b) = v.first_mut() {
                *b = 0x80 | (*b & 0x3F);
            }
            v
        }
    }
}

#[test]
fn random_datagrams_never_panic_the_rtp_parser() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5EED_0001);
    let mut ok = 0;
    for _ in 0..N {
        let d = rtp_datagram(&mut rng);
        let hl = header_len(&d);
        if let Ok(p) = RtpPacket::parse(&d) {
            ok += 1;
            // A parse is self-consistent and its accessors stay in bounds.
            assert_eq!(hl, Ok(p.header_len()));
            assert_eq!(
                p.header_len() + p.payload().len() + p.padding_len(),
                d.len()
            );
            assert_eq!(p.csrcs().count(), usize::from(d[0] & 0x0F));
            for e in p.extensions() {
                let _ = AudioLevel::from_extension(e.data);
                let _ = p.audio_level(e.id);
            }
            let _ = (
                p.marker(),
                p.payload_type(),
                p.sequence_number(),
                p.timestamp(),
                p.ssrc(),
            );
            let _ = p.extension_block();
        }
    }
    // The generator reaches valid packets too, not only early rejections.
    assert!(ok > N / 10, "only {ok} valid parses");
}

fn random_rtcp_packet(rng: &mut ChaCha8Rng, last: bool) -> Vec<u8> {
    let pt = match rng.random_range(0..3) {
        0 => rng.random_range(200..=206),
        1 => rng.random_range(192..=223),
        _ => rng.random(),
    };
    let count = match rng.random_range(0..3) {
        0 => 1,
        1 => rng.random_range(0..4),
        _ => rng.random_range(0..32),
    };
    let mut body = random_bytes(rng, 60);
    if rng.random_bool(0.8) {
        body.truncate(body.len() / 4 * 4);
    }
    if pt == 202 && rng.random_bool(0.5) {
        // SDES-like: small item types and lengths.
        for b in body.iter_mut().skip(4) {
            *b = rng.random_range(0..12);
        }
    }
    let padded = last && rng.random_bool(0.2);
    let mut v = vec![0x80 | count | if padded { 0x20 } else { 0 }, pt, 0, 0];
    v.extend_from_slice(&body);
    if padded {
        let pad = rng.random_range(0..=8u8);
        v.extend(std::iter::repeat_n(0, usize::from(pad.saturating_sub(1))));
        v.push(pad);
    }
    let words = if rng.random_bool(0.9) {
        (v.len() / 4).saturating_sub(1) as u16
    } else {
        rng.random_range(0..=20)
    };
    v[2..4].copy_from_slice(&words.to_be_bytes());
    v
}

fn valid_compound(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let rb = ReportBlock {
        ssrc: Ssrc(rng.random()),
        fraction_lost: rng.random(),
        cumulative_lost: rng.random_range(-100..100),
        extended_highest_seq: rng.random(),
        jitter: rng.random(),
        last_sr: rng.random(),
        delay_since_last_sr: rng.random(),
    };
    let lost: Vec<SeqNo> = (0..rng.random_range(1..20))
        .map(|i| SeqNo(70_000 + 3 * i))
        .collect();
    let packets = vec![
        RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(rng.random()),
            reports: vec![rb; rng.random_range(0..3)],
        }),
        RtcpPacket::SourceDescription(Sdes::cname(Ssrc(rng.random()), &random_bytes(rng, 30))),
        RtcpPacket::Nack(Nack::from_lost(Ssrc(1), Ssrc(2), lost)),
        RtcpPacket::Pli(Pli::default()),
        RtcpPacket::Bye(Bye {
            sources: vec![Ssrc(rng.random())],
            reason: rng.random_bool(0.5).then(|| random_bytes(rng, 20)),
        }),
    ];
    let mut buf = [0u8; 1024];
    let n = build_compound(&packets, CompoundRules::Rfc3550, &mut buf).unwrap();
    buf[..n].to_vec()
}

fn rtcp_datagram(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => random_bytes(rng, 64),
        1 | 2 => {
            let k = rng.random_range(1..=4);
            let mut v = Vec::new();
            for i in 0..k {
                v.extend(random_rtcp_packet(rng, i + 1 == k));
            }
            v
        }
        _ => {
            let v = valid_compound(rng);
            mutate(rng, v)
        }
    }
}

#[test]
fn random_datagrams_never_panic_the_rtcp_parser() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5EED_0002);
    let mut ok = 0;
    let mut out = [0u8; 2048];
    for i in 0..N {
        let d = rtcp_datagram(&mut rng);
        let rules = if i % 2 == 0 {
            CompoundRules::Rfc3550
        } else {
            CompoundRules::ReducedSize
        };
        if let Ok(packets) = parse_compound(&d, rules) {
            ok += 1;
            assert!(!packets.is_empty());
            // Whatever parsed can be handed to the builder without a panic.
            for p in &packets {
                let _ = write_packet(p, &mut out);
            }
        }
    }
    assert!(ok > N / 20, "only {ok} valid parses");
}

fn srtp_pair(profile: SrtpProfile) -> (SrtpSender, SrtpReceiver) {
    let key = [0x5Au8; 16];
    let salt = vec![0xA5u8; profile.master_salt_len()];
    (
        SrtpSender::new(profile, &key, &salt).unwrap(),
        SrtpReceiver::new(profile, &key, &salt).unwrap(),
    )
}

#[test]
fn random_datagrams_never_panic_srtp_unprotect_and_only_genuine_packets_pass() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5EED_0003);
    let profiles = [
        SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProfile::Aes128CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm,
    ];
    let mut pairs: Vec<_> = profiles.iter().map(|&p| srtp_pair(p)).collect();
    let mut seq = [0u16; 3];
    let mut wire = [0u8; 1024];
    let mut plain = [0u8; 1024];
    let mut genuine_sent = [0u64; 3];
    for i in 0..N {
        let k = i % 3;
        let (tx, rx) = &mut pairs[k];
        let mut genuine = || {
            seq[k] = seq[k].wrapping_add(1);
            let mut buf = [0u8; 64];
            let n = RtpPacketBuilder::new(PayloadType::new(96).unwrap(), seq[k], 0, Ssrc(0xABCD))
                .payload(&[7; 20])
                .write(&mut buf)
                .unwrap();
            let m = tx.protect_rtp(&buf[..n], &mut wire).unwrap();
            wire[..m].to_vec()
        };
        let (d, is_genuine) = match rng.random_range(0..5) {
            0 => (random_bytes(&mut rng, 80), false),
            1 => {
                // A valid-looking header with random bytes for payload and tag.
                let mut v = valid_rtp(&mut rng);
                v.extend(random_bytes(&mut rng, 20));
                (v, false)
            }
            2 => (structured_rtp(&mut rng), false),
            3 => {
                // Two flips of one byte can cancel out: then it is the genuine packet.
                let g = genuine();
                let m = mutate(&mut rng, g.clone());
                let same = m == g;
                (m, same)
            }
            _ => (genuine(), true),
        };
        let r = rx.unprotect_rtp(&d, &mut plain);
        if is_genuine {
            genuine_sent[k] += 1;
            assert!(
                r.is_ok(),
                "{:?}: genuine packet rejected: {r:?}",
                profiles[k]
            );
        } else {
            assert!(
                !matches!(r, Ok(_) | Err(SrtpError::Other(_))),
                "{:?}: unexpected outcome {r:?} for {d:02x?}",
                profiles[k]
            );
        }
    }
    for (k, (_, rx)) in pairs.iter().enumerate() {
        assert_eq!(rx.counters().rtp_accepted, genuine_sent[k]);
    }
}

#[test]
fn random_datagrams_never_panic_srtcp_unprotect_and_only_genuine_packets_pass() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5EED_0004);
    let profiles = [
        SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProfile::Aes128CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm,
    ];
    let mut pairs: Vec<_> = profiles.iter().map(|&p| srtp_pair(p)).collect();
    // Building compounds is the slow part in a debug build; draw from a pool.
    let pool: Vec<Vec<u8>> = (0..64).map(|_| valid_compound(&mut rng)).collect();
    let mut wire = [0u8; 2048];
    let mut plain = [0u8; 2048];
    let mut genuine_sent = [0u64; 3];
    for i in 0..N {
        let k = i % 3;
        let (tx, rx) = &mut pairs[k];
        let (d, is_genuine) = match rng.random_range(0..5) {
            0 => (random_bytes(&mut rng, 80), false),
            1 => {
                let mut v = rtcp_datagram(&mut rng);
                v.extend(random_bytes(&mut rng, 24));
                (v, false)
            }
            2 => {
                // Plausible trailer: E flag set, random index and tag.
                let mut v = pool[rng.random_range(0..pool.len())].clone();
                v.extend(random_bytes(&mut rng, 16));
                let idx = v.len() - profiles[k].srtcp_index_offset_for_test();
                if let Some(b) = v.get_mut(idx) {
                    *b |= 0x80;
                }
                (v, false)
            }
            3 => {
                let c = &pool[rng.random_range(0..pool.len())];
                let m = tx.protect_rtcp(c, &mut wire).unwrap();
                let mutated = mutate(&mut rng, wire[..m].to_vec());
                let same = mutated[..] == wire[..m];
                (mutated, same)
            }
            _ => {
                let c = &pool[rng.random_range(0..pool.len())];
                let m = tx.protect_rtcp(c, &mut wire).unwrap();
                (wire[..m].to_vec(), true)
            }
        };
        let r = rx.unprotect_rtcp(&d, &mut plain);
        if is_genuine {
            genuine_sent[k] += 1;
            let v = r.unwrap_or_else(|e| panic!("{:?}: genuine SRTCP rejected: {e}", profiles[k]));
            assert!(v.parse(CompoundRules::Rfc3550).is_ok());
        } else {
            assert!(
                !matches!(r, Ok(_) | Err(SrtpError::Other(_))),
                "{:?}: unexpected outcome {r:?} for {d:02x?}",
                profiles[k]
            );
        }
    }
    for (k, (_, rx)) in pairs.iter().enumerate() {
        assert_eq!(rx.counters().rtcp_accepted, genuine_sent[k]);
    }
}

/// Offset from the end of an SRTCP packet of the E-flag byte, per profile.
trait IndexOffset {
    fn srtcp_index_offset_for_test(&self) -> usize;
}

impl IndexOffset for SrtpProfile {
    fn srtcp_index_offset_for_test(&self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 4,
            _ => 14,
        }
    }
}

//! Two legs with SRTP (AES_CM_128_HMAC_SHA1_80, SDES-style keys) over Wi-Fi: the audio
//! arrives intact and SRTCP carries the reports (A measures the round-trip time). Then a
//! captured packet is replayed and another tampered with: both are dropped and counted, and
//! playout is not disturbed.

mod leg_harness;

use std::time::Instant;

use confer_engine::leg::{LegConfig, LegError};
use confer_engine::netsim::LinkConfig;
use confer_engine::rtp::RtpPacket;
use confer_engine::srtp::{SrtpError, SrtpProfile, SrtpSession};
use leg_harness::{FRAME, Pair, aligned_correlation, epoch, leg, speech};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PROFILE: SrtpProfile = SrtpProfile::Aes128CmHmacSha1_80;

fn keys(rng: &mut ChaCha8Rng) -> (Vec<u8>, Vec<u8>) {
    let mut key = vec![0u8; PROFILE.master_key_len()];
    let mut salt = vec![0u8; PROFILE.master_salt_len()];
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut salt);
    (key, salt)
}

#[test]
fn srtp_legs_carry_speech_and_drop_a_replayed_packet() {
    let t0 = epoch();
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let (ka, sa) = keys(&mut rng);
    let (kb, sb) = keys(&mut rng);
    let srtp_a = SrtpSession::new(PROFILE, &ka, &sa, &kb, &sb).expect("valid keys");
    let srtp_b = SrtpSession::new(PROFILE, &kb, &sb, &ka, &sa).expect("valid keys");
    let a = leg(LegConfig::default(), Some(srtp_a), 1, t0);
    let b = leg(LegConfig::default(), Some(srtp_b), 2, t0);
    let mut pair = Pair::new(a, b, LinkConfig::wifi(), 9, t0);

    let input = speech(2.0, 8.0);
    let mut replayed = None;
    let mut tampered = None;
    let mut delivered = 0u64;
    for frame in input.chunks_exact(FRAME) {
        let mut tap = |d: &[u8], at: Instant, b: &mut confer_engine::leg::MediaLeg| {
            if d[1] & 0x7F != 111 {
                return; // SRTCP
            }
            delivered += 1;
            if delivered == 100 {
                replayed = Some(b.handle_datagram(d, at));
                // A forgery of a packet still to come (a tampered copy of this one would be
                // stopped by the replay window before authentication).
                let mut bad = d.to_vec();
                let seq = RtpPacket::parse(d)
                    .expect("header in clear")
                    .sequence_number();
                bad[2..4].copy_from_slice(&seq.wrapping_add(50).to_be_bytes());
                tampered = Some(b.handle_datagram(&bad, at));
            }
        };
        pair.step_tapped(Some(frame), &mut tap);
    }
    pair.idle(std::time::Duration::from_millis(500));

    let a = pair.a.stats();
    let b = pair.b.stats();
    let al = aligned_correlation(&input, &pair.out);
    let srtp = b.srtp.expect("SRTP counters");
    println!(
        "correlation {:.3} (min {:.3}, {} windows); srtp accepted {} replayed {} auth failed \
         {}, srtcp accepted {}; rtt {:?}; jb played {}",
        al.mean,
        al.min,
        al.windows,
        srtp.rtp_accepted,
        srtp.rtp_replayed,
        srtp.rtp_auth_failed,
        srtp.rtcp_accepted,
        a.rtt,
        b.jitter_buffer.played
    );
    assert_eq!(
        replayed,
        Some(Err(LegError::Srtp(SrtpError::Replay))),
        "the replay is rejected"
    );
    assert_eq!(
        tampered,
        Some(Err(LegError::Srtp(SrtpError::AuthenticationFailed)))
    );
    assert_eq!(srtp.rtp_replayed, 1);
    assert_eq!(srtp.rtp_auth_failed, 1);
    assert_eq!(b.errors.srtp_replayed, 1);
    assert_eq!(b.errors.srtp_auth_failed, 1);
    assert_eq!(b.errors.total(), 2);
    // Every genuine packet authenticated and played; the two bad ones changed nothing.
    assert!(delivered >= 100);
    assert_eq!(srtp.rtp_accepted, b.rtp_packets_received);
    assert_eq!(b.jitter_buffer.played, srtp.rtp_accepted);
    assert_eq!(b.jitter_buffer.duplicates, 0);
    assert!(al.mean > 0.8, "correlation {:.3}", al.mean);
    // SRTCP both ways: B got SRs, A got B's reports and measured the RTT.
    assert!(srtp.rtcp_accepted >= 1);
    assert!(a.srtp.expect("SRTP counters").rtcp_accepted >= 1);
    assert!(a.rtt.is_some());
}

#[test]
fn a_plain_rtp_packet_is_refused_by_an_srtp_leg() {
    let t0 = epoch();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (k, s) = keys(&mut rng);
    let srtp = SrtpSession::new(PROFILE, &k, &s, &k, &s).expect("valid keys");
    let mut plain = leg(LegConfig::default(), None, 1, t0);
    let mut secure = leg(LegConfig::default(), Some(srtp), 2, t0);
    let mut buf = [0u8; 1500];
    let n = plain
        .send_frame(&speech(1.0, 0.02), t0, &mut buf)
        .expect("send");
    assert_eq!(
        secure.handle_datagram(&buf[..n], t0),
        Err(LegError::Srtp(SrtpError::AuthenticationFailed))
    );
    assert_eq!(secure.stats().errors.srtp_auth_failed, 1);
    assert_eq!(secure.remote_ssrc(), None);
}

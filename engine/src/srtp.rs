//! SRTP and SRTCP (RFC 3711; AEAD-GCM per RFC 7714) for SIP and WebRTC legs, on top of
//! `rtc-srtp`.
//!
//! Profiles: `AES_CM_128_HMAC_SHA1_80`, `AES_CM_128_HMAC_SHA1_32` and `AEAD_AES_128_GCM`
//! ([`SrtpProfile`]). One [`SrtpSender`] protects our outgoing RTP and RTCP under our
//! master key; one [`SrtpReceiver`] verifies and decrypts the peer's under theirs
//! ([`SrtpSession`] holds the pair, and splits DTLS-SRTP keying material per RFC 5764).
//! Unprotect is the only way to obtain a [`VerifiedRtp`]/[`VerifiedRtcp`], so code that
//! takes one cannot be handed an unauthenticated packet.
//!
//! What this layer adds to `rtc-srtp`, and why:
//! * **Replay protection is on.** `rtc_srtp::context::Context::new` without options
//!   installs *no* replay detector. The receiver passes a 128-packet sliding window for
//!   SRTP and for SRTCP (libsrtp's default width; `rtc-srtp`'s own default is 64). The
//!   window check runs before authentication and a packet is recorded only after it
//!   authenticates, so a forged packet cannot move the window.
//! * **No per-SSRC state for unauthenticated packets.** `rtc-srtp` creates ROC and replay
//!   state for every SSRC it is shown, before checking the tag. Left alone, a flood of
//!   forged packets with random SSRCs grows that map without bound, and one forged packet
//!   with a far-ahead sequence number sent before a stream's first genuine packet seeds the
//!   replay window so that the genuine packets look "too old" for hundreds of packets. The
//!   receiver therefore authenticates a packet of an SSRC it has not yet seen on a separate
//!   scratch context first (one without a replay window, so it cannot be seeded either),
//!   and only then lets the main context see that SSRC. The scratch context is rebuilt
//!   after every [`SCRATCH_RESET_AFTER`] rejected first packets, which bounds its memory.
//!   Cost: the first packet of each new SSRC is authenticated twice.
//! * **SRTCP without the E flag is rejected.** `rtc-srtp`'s AES-CM path returns an SRTCP
//!   packet whose E (encrypted) flag is clear *without checking its authentication tag*,
//!   and then records its attacker-chosen index in the replay window. RFC 3711 requires
//!   SRTCP authentication in every case; we never send unencrypted SRTCP and do not accept
//!   it ([`SrtpError::UnencryptedSrtcp`]).
//! * **Headers are validated by our own parser first** ([`crate::rtp::header_len`]:
//!   version, CSRCs, extension block and elements), and a header that `rtc-rtp` would
//!   size differently from the wire (it stops at a one-byte id 15) is rejected, because
//!   the cipher offsets come from `rtc-rtp`'s reading of the header.
//! * Typed errors ([`SrtpError`]) and counters per outcome ([`SrtpCounters`]).
//!
//! Not allocation-free: `rtc-srtp` returns each packet in a fresh `BytesMut` and parses
//! the header into `rtc-rtp`'s allocating `Header`. The API already takes a caller's
//! output buffer, so an allocation-free implementation can replace the inside later.
//! Keys are never printed (the `Debug` impls show the profile and counters only), and our
//! copies of them are zeroized on drop.

use std::fmt;
use std::sync::Arc;

use bytes::BytesMut;
use rtc_shared::error::Error as RtcError;
use rtc_shared::marshal::{MarshalSize, Unmarshal};
use rtc_srtp::context::Context;
use rtc_srtp::crypto::{RTCCryptoProvider, SecretVec};
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

use crate::rtcp::{CompoundRules, RtcpError, RtcpPacket, parse_compound};
use crate::rtp::{RtpError, RtpPacket, header_len};

/// Width of the replay window, in packets, for SRTP and SRTCP.
pub const REPLAY_WINDOW: usize = 128;
/// The scratch context is rebuilt after this many first packets of unknown SSRCs failed.
pub const SCRATCH_RESET_AFTER: u32 = 256;
/// The SRTCP index is 31 bits; a master key must not protect more SRTCP packets.
const MAX_SRTCP_PACKETS: u64 = 1 << 31;

/// An SRTP protection profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    /// AES-128 counter mode, 80-bit HMAC-SHA1 tag (RFC 3711; RFC 5764 profile 0x0001).
    Aes128CmHmacSha1_80,
    /// AES-128 counter mode, 32-bit HMAC-SHA1 tag on SRTP, 80-bit on SRTCP (0x0002).
    Aes128CmHmacSha1_32,
    /// AES-128 GCM with a 16-byte tag (RFC 7714; 0x0007).
    AeadAes128Gcm,
}

impl SrtpProfile {
    /// Master key length in bytes.
    pub const fn master_key_len(self) -> usize {
        16
    }

    /// Master salt length in bytes.
    pub const fn master_salt_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 12,
            _ => 14,
        }
    }

    /// Bytes SRTP adds to an RTP packet (the tag).
    pub const fn rtp_overhead(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => 10,
            SrtpProfile::Aes128CmHmacSha1_32 => 4,
            SrtpProfile::AeadAes128Gcm => 16,
        }
    }

    /// Bytes SRTCP adds to an RTCP packet (E flag and index, and the tag).
    pub const fn rtcp_overhead(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 4 + 16,
            _ => 4 + 10,
        }
    }

    fn rtc(self) -> ProtectionProfile {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProfile::Aes128CmHmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }

    /// Offset from the end of an SRTCP packet of the word holding the E flag and index.
    const fn srtcp_index_from_end(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 4,
            _ => 4 + 10,
        }
    }
}

/// Why a packet could not be protected or unprotected, or a context not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The master key has the wrong length for the profile.
    #[error("master key of {got} bytes, the profile needs {expected}")]
    KeyLength {
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The master salt has the wrong length for the profile.
    #[error("master salt of {got} bytes, the profile needs {expected}")]
    SaltLength {
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// DTLS-SRTP keying material of the wrong length.
    #[error("keying material of {got} bytes, the profile needs {expected}")]
    KeyingMaterialLength {
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The RTP header is malformed.
    #[error("malformed RTP header: {0}")]
    MalformedRtp(#[from] RtpError),
    /// The RTCP header is malformed (version, type, or shorter than 8 bytes).
    #[error("malformed RTCP header")]
    MalformedRtcp,
    /// A header layout that `rtc-rtp` sizes differently from the wire (a one-byte
    /// extension id 15); the cipher would use the wrong offsets.
    #[error("RTP header of {wire} bytes would be read as {parsed} bytes")]
    UnsupportedHeader {
        /// Header length on the wire.
        wire: usize,
        /// Header length as `rtc-rtp` reads it.
        parsed: usize,
    },
    /// Too short to carry the header and the profile's trailer.
    #[error("packet of {len} bytes is shorter than the {min}-byte minimum")]
    Truncated {
        /// Packet length.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The authentication tag does not verify: forged, corrupted, or a wrong key.
    #[error("SRTP authentication failed")]
    AuthenticationFailed,
    /// Already received, or older than the replay window.
    #[error("replayed or too old packet")]
    Replay,
    /// An SRTCP packet with the E flag clear.
    #[error("unencrypted SRTCP is not accepted")]
    UnencryptedSrtcp,
    /// The output buffer is too small.
    #[error("output buffer of {available} bytes, {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The master key protected its maximum number of packets (2^48 SRTP or 2^31 SRTCP);
    /// re-key.
    #[error("master key exhausted, re-key the session")]
    KeyExhausted,
    /// The crypto provider could not be created or keyed.
    #[error("crypto provider error: {0}")]
    Crypto(String),
    /// Any other `rtc-srtp` error.
    #[error("SRTP error: {0}")]
    Other(String),
}

fn map_rtc_error(e: RtcError) -> SrtpError {
    match e {
        RtcError::SrtpSsrcDuplicated(..) | RtcError::SrtcpSsrcDuplicated(..) => SrtpError::Replay,
        RtcError::RtpFailedToVerifyAuthTag
        | RtcError::RtcpFailedToVerifyAuthTag
        | RtcError::ErrFailedToVerifyAuthTag => SrtpError::AuthenticationFailed,
        RtcError::SrtpTooSmall(len, min)
        | RtcError::SrtcpTooSmall(len, min)
        | RtcError::RtcpInvalidLengthAuthTag(len, min) => SrtpError::Truncated { len, min },
        // Not reached in practice: our own length checks run first.
        RtcError::ErrTooShortRtp | RtcError::ErrTooShortRtcp => {
            SrtpError::Truncated { len: 0, min: 0 }
        }
        RtcError::ErrExceededMaxPackets => SrtpError::KeyExhausted,
        RtcError::SrtpMasterKeyLength(expected, got) => SrtpError::KeyLength { expected, got },
        RtcError::SrtpSaltLength(expected, got) => SrtpError::SaltLength { expected, got },
        RtcError::Crypto(s) => SrtpError::Crypto(s),
        other => SrtpError::Other(other.to_string()),
    }
}

/// Keying for one direction; kept so the receiver can rebuild its scratch context.
struct Keys {
    profile: SrtpProfile,
    /// Zeroized on drop.
    key: SecretVec,
    salt: SecretVec,
    provider: Arc<dyn RTCCryptoProvider>,
}

impl Keys {
    fn new(profile: SrtpProfile, key: &[u8], salt: &[u8]) -> Result<Self, SrtpError> {
        if key.len() != profile.master_key_len() {
            return Err(SrtpError::KeyLength {
                expected: profile.master_key_len(),
                got: key.len(),
            });
        }
        if salt.len() != profile.master_salt_len() {
            return Err(SrtpError::SaltLength {
                expected: profile.master_salt_len(),
                got: salt.len(),
            });
        }
        let provider =
            rtc_srtp::crypto::default_provider().map_err(|e| SrtpError::Crypto(e.to_string()))?;
        Ok(Keys {
            profile,
            key: SecretVec::new(key.to_vec()),
            salt: SecretVec::new(salt.to_vec()),
            provider,
        })
    }

    fn context(&self, replay_protection: bool) -> Result<Context, SrtpError> {
        let (rtp, rtcp) = if replay_protection {
            (
                Some(srtp_replay_protection(REPLAY_WINDOW)),
                Some(srtcp_replay_protection(REPLAY_WINDOW)),
            )
        } else {
            (None, None)
        };
        Context::new(
            self.key.as_ref(),
            self.salt.as_ref(),
            self.profile.rtc(),
            rtp,
            rtcp,
            self.provider.crypto(),
        )
        .map_err(map_rtc_error)
    }
}

/// Validates an RTP header with our parser and returns `rtc-rtp`'s reading of it,
/// rejecting a header `rtc-rtp` would size differently from the wire.
fn rtc_header(packet: &[u8]) -> Result<rtc_rtp::Header, SrtpError> {
    let wire = header_len(packet)?;
    let header = rtc_rtp::Header::unmarshal(&mut &packet[..]).map_err(map_rtc_error)?;
    let parsed = header.marshal_size();
    if parsed != wire {
        return Err(SrtpError::UnsupportedHeader { wire, parsed });
    }
    Ok(header)
}

/// The SSRC of an RTCP packet (sender SSRC of the first packet), after checking the
/// version, type range and minimum length.
fn rtcp_ssrc(packet: &[u8]) -> Result<u32, SrtpError> {
    match packet {
        [b0, pt, _, _, a, b, c, d, ..] if b0 >> 6 == 2 && (192..=223).contains(pt) => {
            Ok(u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => Err(SrtpError::MalformedRtcp),
    }
}

fn copy_out<'o>(data: &BytesMut, out: &'o mut [u8]) -> Result<&'o [u8], SrtpError> {
    let available = out.len();
    let Some(dst) = out.get_mut(..data.len()) else {
        return Err(SrtpError::BufferTooSmall {
            needed: data.len(),
            available,
        });
    };
    dst.copy_from_slice(data);
    Ok(dst)
}

/// Protects our outgoing RTP and RTCP under our master key.
pub struct SrtpSender {
    profile: SrtpProfile,
    ctx: Context,
    srtcp_sent: u64,
}

impl fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpSender")
            .field("profile", &self.profile)
            .field("srtcp_sent", &self.srtcp_sent)
            .finish_non_exhaustive()
    }
}

impl SrtpSender {
    /// A sender keyed with our master key and salt.
    pub fn new(
        profile: SrtpProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Self, SrtpError> {
        let keys = Keys::new(profile, master_key, master_salt)?;
        Ok(SrtpSender {
            profile,
            ctx: keys.context(false)?,
            srtcp_sent: 0,
        })
    }

    /// The profile.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Protects one RTP packet into `out` (which needs `packet.len() +
    /// profile.rtp_overhead()` bytes); returns the SRTP packet's length.
    pub fn protect_rtp(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        let header = rtc_header(packet)?;
        let needed = packet.len() + self.profile.rtp_overhead();
        if out.len() < needed {
            return Err(SrtpError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        let protected = self
            .ctx
            .encrypt_rtp_with_header(packet, &header)
            .map_err(map_rtc_error)?;
        Ok(copy_out(&protected, out)?.len())
    }

    /// Protects one (compound) RTCP packet into `out` (which needs `packet.len() +
    /// profile.rtcp_overhead()` bytes); returns the SRTCP packet's length.
    pub fn protect_rtcp(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        rtcp_ssrc(packet)?;
        let needed = packet.len() + self.profile.rtcp_overhead();
        if out.len() < needed {
            return Err(SrtpError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        if self.srtcp_sent >= MAX_SRTCP_PACKETS {
            return Err(SrtpError::KeyExhausted);
        }
        let protected = self.ctx.encrypt_rtcp(packet).map_err(map_rtc_error)?;
        self.srtcp_sent += 1;
        Ok(copy_out(&protected, out)?.len())
    }
}

/// An RTP packet that passed SRTP authentication and replay checks, decrypted. Only
/// [`SrtpReceiver::unprotect_rtp`] creates one.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedRtp<'a> {
    bytes: &'a [u8],
}

impl<'a> VerifiedRtp<'a> {
    /// The decrypted packet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Parses the decrypted packet (padding is only checkable now).
    pub fn parse(&self) -> Result<RtpPacket<'a>, RtpError> {
        RtpPacket::parse(self.bytes)
    }
}

/// An RTCP packet that passed SRTCP authentication and replay checks, decrypted. Only
/// [`SrtpReceiver::unprotect_rtcp`] creates one.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedRtcp<'a> {
    bytes: &'a [u8],
}

impl<'a> VerifiedRtcp<'a> {
    /// The decrypted compound packet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Parses the decrypted compound packet.
    pub fn parse(&self, rules: CompoundRules) -> Result<Vec<RtcpPacket>, RtcpError> {
        parse_compound(self.bytes, rules)
    }
}

/// What a receiver has done with the packets it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpCounters {
    /// SRTP packets authenticated and decrypted.
    pub rtp_accepted: u64,
    /// SRTP packets dropped as replays or too old.
    pub rtp_replayed: u64,
    /// SRTP packets whose tag did not verify.
    pub rtp_auth_failed: u64,
    /// SRTP packets too short or with a malformed header.
    pub rtp_malformed: u64,
    /// SRTCP packets authenticated and decrypted.
    pub rtcp_accepted: u64,
    /// SRTCP packets dropped as replays or too old.
    pub rtcp_replayed: u64,
    /// SRTCP packets whose tag did not verify.
    pub rtcp_auth_failed: u64,
    /// SRTCP packets too short, malformed, or unencrypted.
    pub rtcp_malformed: u64,
    /// Times the scratch context was rebuilt (see the module docs).
    pub scratch_resets: u64,
}

/// Verifies and decrypts the peer's SRTP and SRTCP under their master key.
pub struct SrtpReceiver {
    keys: Keys,
    main: Context,
    scratch: Context,
    scratch_failures: u32,
    /// SSRCs with at least one authenticated packet, for SRTP and SRTCP.
    known_rtp: Vec<u32>,
    known_rtcp: Vec<u32>,
    counters: SrtpCounters,
}

impl fmt::Debug for SrtpReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpReceiver")
            .field("profile", &self.keys.profile)
            .field("known_rtp", &self.known_rtp)
            .field("known_rtcp", &self.known_rtcp)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rtp,
    Rtcp,
}

impl SrtpReceiver {
    /// A receiver keyed with the peer's master key and salt; replay protection on.
    pub fn new(
        profile: SrtpProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Self, SrtpError> {
        let keys = Keys::new(profile, master_key, master_salt)?;
        Ok(SrtpReceiver {
            main: keys.context(true)?,
            scratch: keys.context(false)?,
            keys,
            scratch_failures: 0,
            known_rtp: Vec::new(),
            known_rtcp: Vec::new(),
            counters: SrtpCounters::default(),
        })
    }

    /// The profile.
    pub fn profile(&self) -> SrtpProfile {
        self.keys.profile
    }

    /// Outcome counters.
    pub fn counters(&self) -> SrtpCounters {
        self.counters
    }

    fn count(&mut self, kind: Kind, r: &Result<usize, SrtpError>) {
        let c = &mut self.counters;
        let slot = match (kind, r) {
            (Kind::Rtp, Ok(_)) => &mut c.rtp_accepted,
            (Kind::Rtp, Err(SrtpError::Replay)) => &mut c.rtp_replayed,
            (Kind::Rtp, Err(SrtpError::AuthenticationFailed)) => &mut c.rtp_auth_failed,
            (Kind::Rtp, Err(_)) => &mut c.rtp_malformed,
            (Kind::Rtcp, Ok(_)) => &mut c.rtcp_accepted,
            (Kind::Rtcp, Err(SrtpError::Replay)) => &mut c.rtcp_replayed,
            (Kind::Rtcp, Err(SrtpError::AuthenticationFailed)) => &mut c.rtcp_auth_failed,
            (Kind::Rtcp, Err(_)) => &mut c.rtcp_malformed,
        };
        *slot += 1;
    }

    /// Runs `op` on the main context if `ssrc` has authenticated before; otherwise on the
    /// scratch context first, so unauthenticated packets never create main-context state.
    fn gated(
        &mut self,
        kind: Kind,
        ssrc: u32,
        op: impl Fn(&mut Context) -> Result<BytesMut, RtcError>,
    ) -> Result<BytesMut, SrtpError> {
        let known = match kind {
            Kind::Rtp => &self.known_rtp,
            Kind::Rtcp => &self.known_rtcp,
        };
        if known.contains(&ssrc) {
            return op(&mut self.main).map_err(map_rtc_error);
        }
        if let Err(e) = op(&mut self.scratch) {
            self.scratch_failures += 1;
            if self.scratch_failures >= SCRATCH_RESET_AFTER {
                // Same keys as at construction, which succeeded; on a failure keep the
                // old scratch context (its memory is then not reclaimed, nothing else).
                if let Ok(fresh) = self.keys.context(false) {
                    self.scratch = fresh;
                    self.counters.scratch_resets += 1;
                }
                self.scratch_failures = 0;
            }
            return Err(map_rtc_error(e));
        }
        let out = op(&mut self.main).map_err(map_rtc_error)?;
        match kind {
            Kind::Rtp => self.known_rtp.push(ssrc),
            Kind::Rtcp => self.known_rtcp.push(ssrc),
        }
        Ok(out)
    }

    /// Verifies and decrypts one SRTP packet into `out` (which needs at least
    /// `packet.len()` bytes).
    pub fn unprotect_rtp<'o>(
        &mut self,
        packet: &[u8],
        out: &'o mut [u8],
    ) -> Result<VerifiedRtp<'o>, SrtpError> {
        let r = self.unprotect_rtp_inner(packet, out);
        self.count(Kind::Rtp, &r);
        let n = r?;
        Ok(VerifiedRtp { bytes: &out[..n] })
    }

    fn unprotect_rtp_inner(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        let header = rtc_header(packet)?;
        let min = header.marshal_size() + self.keys.profile.rtp_overhead();
        if packet.len() < min {
            return Err(SrtpError::Truncated {
                len: packet.len(),
                min,
            });
        }
        if out.len() < packet.len() {
            return Err(SrtpError::BufferTooSmall {
                needed: packet.len(),
                available: out.len(),
            });
        }
        let plain = self.gated(Kind::Rtp, header.ssrc, |ctx| {
            ctx.decrypt_rtp_with_header(packet, &header)
        })?;
        Ok(copy_out(&plain, out)?.len())
    }

    /// Verifies and decrypts one SRTCP packet into `out` (which needs at least
    /// `packet.len()` bytes).
    pub fn unprotect_rtcp<'o>(
        &mut self,
        packet: &[u8],
        out: &'o mut [u8],
    ) -> Result<VerifiedRtcp<'o>, SrtpError> {
        let r = self.unprotect_rtcp_inner(packet, out);
        self.count(Kind::Rtcp, &r);
        let n = r?;
        Ok(VerifiedRtcp { bytes: &out[..n] })
    }

    fn unprotect_rtcp_inner(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        let ssrc = rtcp_ssrc(packet)?;
        let profile = self.keys.profile;
        let min = 8 + profile.rtcp_overhead();
        if packet.len() < min {
            return Err(SrtpError::Truncated {
                len: packet.len(),
                min,
            });
        }
        // The length check above keeps this in range.
        let e_flag = packet[packet.len() - profile.srtcp_index_from_end()] & 0x80;
        if e_flag == 0 {
            return Err(SrtpError::UnencryptedSrtcp);
        }
        if out.len() < packet.len() {
            return Err(SrtpError::BufferTooSmall {
                needed: packet.len(),
                available: out.len(),
            });
        }
        let plain = self.gated(Kind::Rtcp, ssrc, |ctx| ctx.decrypt_rtcp(packet))?;
        Ok(copy_out(&plain, out)?.len())
    }
}

/// Both directions of one SRTP association.
#[derive(Debug)]
pub struct SrtpSession {
    /// Protects what we send.
    pub sender: SrtpSender,
    /// Unprotects what the peer sends.
    pub receiver: SrtpReceiver,
}

impl SrtpSession {
    /// From explicit keys (SDES-SRTP, `a=crypto`): ours for sending, the peer's for
    /// receiving.
    pub fn new(
        profile: SrtpProfile,
        local_key: &[u8],
        local_salt: &[u8],
        remote_key: &[u8],
        remote_salt: &[u8],
    ) -> Result<Self, SrtpError> {
        Ok(SrtpSession {
            sender: SrtpSender::new(profile, local_key, local_salt)?,
            receiver: SrtpReceiver::new(profile, remote_key, remote_salt)?,
        })
    }

    /// From DTLS-SRTP exporter output (RFC 5764 4.2: client key, server key, client salt,
    /// server salt); `is_client` is our DTLS role.
    pub fn from_dtls_keying_material(
        profile: SrtpProfile,
        material: &[u8],
        is_client: bool,
    ) -> Result<Self, SrtpError> {
        let k = profile.master_key_len();
        let s = profile.master_salt_len();
        if material.len() != 2 * (k + s) {
            return Err(SrtpError::KeyingMaterialLength {
                expected: 2 * (k + s),
                got: material.len(),
            });
        }
        let (client_key, rest) = material.split_at(k);
        let (server_key, rest) = rest.split_at(k);
        let (client_salt, server_salt) = rest.split_at(s);
        if is_client {
            SrtpSession::new(profile, client_key, client_salt, server_key, server_salt)
        } else {
            SrtpSession::new(profile, server_key, server_salt, client_key, client_salt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpPacketBuilder;
    use crate::types::{PayloadType, Ssrc};

    const PROFILES: [SrtpProfile; 3] = [
        SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProfile::Aes128CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm,
    ];

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn keys(profile: SrtpProfile, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let key = (0..profile.master_key_len())
            .map(|i| seed.wrapping_add(i as u8))
            .collect();
        let salt = (0..profile.master_salt_len())
            .map(|i| seed ^ (i as u8 * 7))
            .collect();
        (key, salt)
    }

    fn pair(profile: SrtpProfile) -> (SrtpSender, SrtpReceiver) {
        let (k, s) = keys(profile, 0x42);
        (
            SrtpSender::new(profile, &k, &s).unwrap(),
            SrtpReceiver::new(profile, &k, &s).unwrap(),
        )
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + payload.len()];
        let n = RtpPacketBuilder::new(
            PayloadType::new(111).unwrap(),
            seq,
            u32::from(seq) * 960,
            Ssrc(ssrc),
        )
        .payload(payload)
        .write(&mut buf)
        .unwrap();
        buf.truncate(n);
        buf
    }

    // Known answers from libsrtp's test driver (srtp_driver.c), the same ones other
    // implementations test against: master key and salt of RFC 3711 B.3, SSRC 0xcafebabe,
    // sequence number 0x1234, ROC 0, first SRTCP index 1.
    const CM_KEY: &str = "e1f97a0d3e018be0d64fa32c06de4139";
    const CM_SALT: &str = "0ec675ad498afeebb6960b3aabe6";
    const GCM_KEY: &str = "000102030405060708090a0b0c0d0e0f";
    const GCM_SALT: &str = "a0a1a2a3a4a5a6a7a8a9aaab";
    const RTP_PLAIN: &str = "800f1234decafbadcafebabe abababababababababababababababab";
    const RTCP_PLAIN: &str = "81c8000bcafebabe abababababababababababababababab";

    fn known_answer(profile: SrtpProfile, key: &str, salt: &str, srtp: &str, srtcp: &str) {
        let (key, salt) = (hex(key), hex(salt));
        let mut tx = SrtpSender::new(profile, &key, &salt).unwrap();
        let mut rx = SrtpReceiver::new(profile, &key, &salt).unwrap();
        let mut out = [0u8; 128];
        let n = tx.protect_rtp(&hex(RTP_PLAIN), &mut out).unwrap();
        assert_eq!(&out[..n], &hex(srtp)[..], "{profile:?} SRTP");
        let n = tx.protect_rtcp(&hex(RTCP_PLAIN), &mut out).unwrap();
        assert_eq!(&out[..n], &hex(srtcp)[..], "{profile:?} SRTCP");
        let mut plain = [0u8; 128];
        let v = rx.unprotect_rtp(&hex(srtp), &mut plain).unwrap();
        assert_eq!(v.as_bytes(), &hex(RTP_PLAIN)[..]);
        let v = rx.unprotect_rtcp(&hex(srtcp), &mut plain).unwrap();
        assert_eq!(v.as_bytes(), &hex(RTCP_PLAIN)[..]);
    }

    #[test]
    fn aes_cm_sha1_80_matches_the_libsrtp_known_answers() {
        known_answer(
            SrtpProfile::Aes128CmHmacSha1_80,
            CM_KEY,
            CM_SALT,
            "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb",
            "81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 993e08cd54d6c1230798",
        );
    }

    #[test]
    fn aes_cm_sha1_32_truncates_the_srtp_tag_but_not_the_srtcp_tag() {
        known_answer(
            SrtpProfile::Aes128CmHmacSha1_32,
            CM_KEY,
            CM_SALT,
            "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc",
            "81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 993e08cd54d6c1230798",
        );
    }

    #[test]
    fn aead_aes_128_gcm_matches_the_libsrtp_known_answers() {
        known_answer(
            SrtpProfile::AeadAes128Gcm,
            GCM_KEY,
            GCM_SALT,
            "800f1234decafbadcafebabe c5002ede04cfdd2eb91159e0880aa06e d2976826f796b201df3131a127e8a392",
            "81c8000bcafebabe c98b8b5df0392a55852b6c21ac8e7025 c52c6fbea2b3b446ea31123ba88ce61e 80000001",
        );
    }

    #[test]
    fn the_aes_counter_mode_keystream_matches_rfc_3711_appendix_b2() {
        // The provider's AES-CTR is what the AES-CM profiles run on.
        let provider = rtc_srtp::crypto::default_provider().unwrap();
        let mut cipher = provider
            .crypto()
            .new_stream_cipher(
                rtc_srtp::crypto::StreamCipherAlgorithm::Aes128Ctr,
                &hex("2B7E151628AED2A6ABF7158809CF4F3C"),
            )
            .unwrap();
        let mut ks = [0u8; 48];
        cipher
            .apply_keystream(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"), &mut ks)
            .unwrap();
        assert_eq!(
            ks.to_vec(),
            hex(
                "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB 41E95B3BB0A2E8DD477901E4FCA894C0"
            )
        );
    }

    #[test]
    fn every_profile_round_trips_rtp_and_rtcp_across_the_sequence_wrap() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut wire = [0u8; 256];
            let mut plain = [0u8; 256];
            for i in 0..300u32 {
                let seq = 0xFF80u16.wrapping_add(i as u16);
                let p = rtp(seq, 0x1234, &[i as u8; 40]);
                let n = tx.protect_rtp(&p, &mut wire).unwrap();
                assert_eq!(n, p.len() + profile.rtp_overhead());
                assert_ne!(&wire[12..52], &p[12..52], "payload is encrypted");
                let v = rx.unprotect_rtp(&wire[..n], &mut plain).unwrap();
                assert_eq!(v.as_bytes(), &p[..], "{profile:?} seq {seq}");
                assert_eq!(v.parse().unwrap().sequence_number(), seq);
            }
            let rr = hex("81c90007 00000001 00000002 00000000 00000010 00000020 00000000 00000000");
            for _ in 0..3 {
                let n = tx.protect_rtcp(&rr, &mut wire).unwrap();
                assert_eq!(n, rr.len() + profile.rtcp_overhead());
                let v = rx.unprotect_rtcp(&wire[..n], &mut plain).unwrap();
                assert_eq!(v.as_bytes(), &rr[..]);
                assert!(v.parse(CompoundRules::Rfc3550).is_ok());
            }
            let c = rx.counters();
            assert_eq!((c.rtp_accepted, c.rtcp_accepted), (300, 3), "{profile:?}");
        }
    }

    #[test]
    fn fifty_packets_replayed_five_times_each_are_all_dropped() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut plain = [0u8; 256];
            let mut sent = Vec::new();
            for i in 0..50u16 {
                let mut wire = [0u8; 256];
                let n = tx
                    .protect_rtp(&rtp(1000 + i, 7, b"hello"), &mut wire)
                    .unwrap();
                sent.push(wire[..n].to_vec());
            }
            // Each original, then its replays straight away.
            for p in &sent {
                assert!(rx.unprotect_rtp(p, &mut plain).is_ok());
                for _ in 0..5 {
                    assert_eq!(
                        rx.unprotect_rtp(p, &mut plain).unwrap_err(),
                        SrtpError::Replay
                    );
                }
            }
            // And the whole batch again later.
            for p in &sent {
                assert_eq!(
                    rx.unprotect_rtp(p, &mut plain).unwrap_err(),
                    SrtpError::Replay
                );
            }
            let c = rx.counters();
            assert_eq!((c.rtp_accepted, c.rtp_replayed), (50, 300), "{profile:?}");
        }
    }

    #[test]
    fn srtcp_replays_are_dropped() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut wire = [0u8; 128];
            let mut plain = [0u8; 128];
            let n = tx.protect_rtcp(&hex(RTCP_PLAIN), &mut wire).unwrap();
            assert!(rx.unprotect_rtcp(&wire[..n], &mut plain).is_ok());
            assert_eq!(
                rx.unprotect_rtcp(&wire[..n], &mut plain).unwrap_err(),
                SrtpError::Replay
            );
            assert_eq!(rx.counters().rtcp_replayed, 1);
        }
    }

    #[test]
    fn a_packet_older_than_the_replay_window_is_dropped() {
        let (mut tx, mut rx) = pair(SrtpProfile::Aes128CmHmacSha1_80);
        let mut plain = [0u8; 256];
        let mut wire = [0u8; 256];
        let n = tx.protect_rtp(&rtp(0, 7, b"old"), &mut wire).unwrap();
        let old = wire[..n].to_vec();
        for seq in 1..=REPLAY_WINDOW as u16 + 1 {
            let n = tx.protect_rtp(&rtp(seq, 7, b"new"), &mut wire).unwrap();
            rx.unprotect_rtp(&wire[..n], &mut plain).unwrap();
        }
        assert_eq!(
            rx.unprotect_rtp(&old, &mut plain).unwrap_err(),
            SrtpError::Replay
        );
    }

    #[test]
    fn tampered_packets_are_rejected() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut wire = [0u8; 256];
            let mut plain = [0u8; 256];
            let p = rtp(5, 9, &[0x55; 30]);
            let n = tx.protect_rtp(&p, &mut wire).unwrap();
            // Flip one bit anywhere outside the first byte (which would break the version
            // or flags before authentication is reached).
            for byte in 1..n {
                let mut t = wire[..n].to_vec();
                t[byte] ^= 0x10;
                let r = rx.unprotect_rtp(&t, &mut plain);
                assert!(r.is_err(), "{profile:?} accepted a flip in byte {byte}");
            }
            let m = tx.protect_rtcp(&hex(RTCP_PLAIN), &mut wire[..]).unwrap();
            for byte in 1..m {
                let mut t = wire[..m].to_vec();
                t[byte] ^= 0x01;
                assert!(
                    rx.unprotect_rtcp(&t, &mut plain).is_err(),
                    "{profile:?} SRTCP byte {byte}"
                );
            }
            // The genuine packet still passes afterwards: forgeries did not move the window.
            let n = tx.protect_rtp(&p, &mut wire).unwrap();
            assert!(
                rx.unprotect_rtp(&wire[..n], &mut plain).is_ok(),
                "{profile:?}"
            );
            assert!(rx.counters().rtp_auth_failed > 0);
        }
    }

    #[test]
    fn a_wrong_key_fails_authentication() {
        let profile = SrtpProfile::AeadAes128Gcm;
        let (k, s) = keys(profile, 1);
        let (k2, _) = keys(profile, 2);
        let mut tx = SrtpSender::new(profile, &k, &s).unwrap();
        let mut rx = SrtpReceiver::new(profile, &k2, &s).unwrap();
        let mut wire = [0u8; 128];
        let mut plain = [0u8; 128];
        let n = tx.protect_rtp(&rtp(1, 1, b"x"), &mut wire).unwrap();
        assert_eq!(
            rx.unprotect_rtp(&wire[..n], &mut plain).unwrap_err(),
            SrtpError::AuthenticationFailed
        );
    }

    #[test]
    fn unencrypted_srtcp_is_rejected_even_with_a_plausible_trailer() {
        let (mut tx, mut rx) = pair(SrtpProfile::Aes128CmHmacSha1_80);
        let mut wire = [0u8; 128];
        let mut plain = [0u8; 128];
        let n = tx.protect_rtcp(&hex(RTCP_PLAIN), &mut wire).unwrap();
        // Clear the E flag: rtc-srtp alone would return this unauthenticated.
        let mut forged = wire[..n].to_vec();
        forged[n - 14] &= 0x7F;
        assert_eq!(
            rx.unprotect_rtcp(&forged, &mut plain).unwrap_err(),
            SrtpError::UnencryptedSrtcp
        );
        assert_eq!(rx.counters().rtcp_malformed, 1);
    }

    #[test]
    fn a_forged_far_ahead_packet_before_the_first_genuine_one_does_not_block_the_stream() {
        let (mut tx, mut rx) = pair(SrtpProfile::Aes128CmHmacSha1_80);
        let mut wire = [0u8; 128];
        let mut plain = [0u8; 128];
        // Same SSRC, sequence 1000 ahead, garbage tag.
        let mut forged = rtp(2000, 77, b"forged");
        forged.extend_from_slice(&[0u8; 10]);
        assert_eq!(
            rx.unprotect_rtp(&forged, &mut plain).unwrap_err(),
            SrtpError::AuthenticationFailed
        );
        for seq in 1000..1010 {
            let n = tx.protect_rtp(&rtp(seq, 77, b"real"), &mut wire).unwrap();
            assert!(
                rx.unprotect_rtp(&wire[..n], &mut plain).is_ok(),
                "seq {seq}"
            );
        }
    }

    #[test]
    fn a_flood_of_forged_ssrcs_keeps_rebuilding_the_scratch_context() {
        let (mut tx, mut rx) = pair(SrtpProfile::Aes128CmHmacSha1_80);
        let mut plain = [0u8; 128];
        for ssrc in 0..(3 * SCRATCH_RESET_AFTER) {
            let mut forged = rtp(1, ssrc, b"x");
            forged.extend_from_slice(&[0u8; 10]);
            assert!(rx.unprotect_rtp(&forged, &mut plain).is_err());
        }
        assert_eq!(rx.counters().scratch_resets, 3);
        let mut wire = [0u8; 128];
        let n = tx.protect_rtp(&rtp(1, 5, b"ok"), &mut wire).unwrap();
        assert!(rx.unprotect_rtp(&wire[..n], &mut plain).is_ok());
    }

    #[test]
    fn short_and_malformed_input_gives_typed_errors() {
        let (mut tx, mut rx) = pair(SrtpProfile::Aes128CmHmacSha1_80);
        let mut wire = [0u8; 128];
        let mut plain = [0u8; 128];
        let n = tx.protect_rtp(&rtp(1, 1, b"abc"), &mut wire).unwrap();
        assert!(matches!(
            rx.unprotect_rtp(&wire[..12 + 9], &mut plain),
            Err(SrtpError::Truncated { len: 21, min: 22 })
        ));
        assert!(matches!(
            rx.unprotect_rtp(&wire[..8], &mut plain),
            Err(SrtpError::MalformedRtp(RtpError::TooShort { len: 8 }))
        ));
        assert!(matches!(
            rx.unprotect_rtp(&wire[..n], &mut plain[..4]),
            Err(SrtpError::BufferTooSmall { .. })
        ));
        assert_eq!(
            rx.unprotect_rtcp(&[0x81, 0xC8, 0, 1], &mut plain)
                .unwrap_err(),
            SrtpError::MalformedRtcp
        );
        // Plain RTCP handed to unprotect: its last bytes read as a set E flag and a tag.
        assert_eq!(
            rx.unprotect_rtcp(&hex(RTCP_PLAIN), &mut plain).unwrap_err(),
            SrtpError::AuthenticationFailed
        );
        assert!(matches!(
            rx.unprotect_rtcp(&hex(RTCP_PLAIN)[..20], &mut plain),
            Err(SrtpError::Truncated { len: 20, min: 22 })
        ));
        assert!(matches!(
            tx.protect_rtp(&rtp(1, 1, b"abc"), &mut wire[..20]),
            Err(SrtpError::BufferTooSmall { needed: 25, .. })
        ));
        assert_eq!(
            SrtpSender::new(SrtpProfile::AeadAes128Gcm, &[0; 16], &[0; 14]).unwrap_err(),
            SrtpError::SaltLength {
                expected: 12,
                got: 14
            }
        );
    }

    #[test]
    fn dtls_keying_material_is_split_by_role() {
        let profile = SrtpProfile::Aes128CmHmacSha1_80;
        let material: Vec<u8> = (0..60).collect();
        let mut client = SrtpSession::from_dtls_keying_material(profile, &material, true).unwrap();
        let mut server = SrtpSession::from_dtls_keying_material(profile, &material, false).unwrap();
        let mut wire = [0u8; 128];
        let mut plain = [0u8; 128];
        let n = client
            .sender
            .protect_rtp(&rtp(1, 1, b"c2s"), &mut wire)
            .unwrap();
        assert!(
            server
                .receiver
                .unprotect_rtp(&wire[..n], &mut plain)
                .is_ok()
        );
        let n = server
            .sender
            .protect_rtp(&rtp(1, 2, b"s2c"), &mut wire)
            .unwrap();
        assert!(
            client
                .receiver
                .unprotect_rtp(&wire[..n], &mut plain)
                .is_ok()
        );
        assert!(
            client
                .receiver
                .unprotect_rtp(&wire[..n], &mut plain)
                .is_err()
        );
        assert!(matches!(
            SrtpSession::from_dtls_keying_material(profile, &material[..59], true),
            Err(SrtpError::KeyingMaterialLength {
                expected: 60,
                got: 59
            })
        ));
        assert!(!format!("{client:?}").contains("key:"));
    }
}

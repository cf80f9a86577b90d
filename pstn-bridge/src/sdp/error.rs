//! Errors of SDP parsing and negotiation, and their SIP mapping.
//!
//! Two kinds are kept apart. [`SdpError`] means the peer's SDP is unusable (malformed, or
//! nothing we can accept): the SIP layer answers an offer with `488 Not Acceptable Here`
//! and a `Warning` header from [`SdpError::warning`] (RFC 3261 sections 13.3.1.3 and
//! 20.43); a bad answer (in a 200 OK or an ACK) cannot be refused, so the SIP layer ends
//! the dialog with BYE instead. [`ConfigError`] means the caller built unusable local
//! capabilities or addresses: a bug on our side, never caused by the network.

use std::net::SocketAddr;

use super::model::Transport;

/// A peer's SDP that cannot be parsed or negotiated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The text is not a valid session description (RFC 4566 syntax), or a field we must
    /// interpret (`o=`, `c=`, `m=`, `a=rtpmap`, `a=ptime`, `a=rtcp`, direction) is invalid.
    /// `line` is 1-based; 0 when the problem is the document as a whole.
    #[error("malformed SDP at line {line}: {reason}")]
    Malformed {
        /// The 1-based line number, or 0 for the whole document.
        line: usize,
        /// What is wrong, for logs.
        reason: &'static str,
    },
    /// The offer has no audio stream with a non-zero port.
    #[error("no audio stream offered")]
    NoAudio,
    /// Audio was offered, but none of its codecs is one we support.
    #[error("no audio codec in common")]
    NoCommonCodec,
    /// Audio was offered only over a transport we do not accept (we accept `RTP/AVP`).
    #[error("unsupported transport {transport}: {reason}")]
    UnsupportedTransport {
        /// The transport of the last audio stream we had to refuse.
        transport: Transport,
        /// Why it is refused, for logs.
        reason: &'static str,
    },
    /// The audio stream's connection address is unusable for us (a host name we cannot
    /// resolve sans-IO, multicast, or an address family other than our own).
    #[error("unsupported connection address: {0}")]
    UnsupportedAddress(&'static str),
    /// A re-offer has fewer m-lines than the session already has (RFC 3264 section 8).
    #[error("re-offer removes m-lines: the session has {before}, the offer {after}")]
    MediaLinesRemoved {
        /// m-lines in the session before this offer.
        before: usize,
        /// m-lines in the re-offer.
        after: usize,
    },
    /// The answer does not fit our offer (RFC 3264 section 6): other m-line count or
    /// types, a codec we did not offer, another transport.
    #[error("the answer does not match our offer: {0}")]
    AnswerMismatch(&'static str),
    /// The answer rejected our audio stream (port 0) or offered no codec of ours for it.
    #[error("the answer rejected our audio stream")]
    AudioRejected,
}

/// A SIP `Warning` header value (RFC 3261 section 20.43): a warn-code and its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warning {
    /// The three-digit warn-code (3xx for session description problems).
    pub code: u16,
    /// The standard text of the warn-code, without quotes.
    pub text: &'static str,
}

impl Warning {
    /// The header value `code agent "text"`, e.g. `305 confer.example "Incompatible media
    /// format"`. `agent` is the host name (or a pseudonym) of this server.
    pub fn header_value(&self, agent: &str) -> String {
        format!("{} {} \"{}\"", self.code, agent, self.text)
    }
}

impl SdpError {
    /// The SIP status code for a rejected offer: always 488 Not Acceptable Here (RFC 3261
    /// section 13.3.1.3; a malformed body is also refused with 488 rather than 400, so the
    /// dialog survives a bad re-offer).
    pub const fn status_code(&self) -> u16 {
        488
    }

    /// The `Warning` to send with the 488 (RFC 3261 section 20.43 warn-codes).
    pub const fn warning(&self) -> Warning {
        let (code, text) = match self {
            SdpError::Malformed { .. } => (399, "Malformed session description"),
            SdpError::NoAudio => (304, "Media type not available"),
            SdpError::NoCommonCodec => (305, "Incompatible media format"),
            SdpError::UnsupportedTransport { .. } => (302, "Incompatible transport protocol"),
            SdpError::UnsupportedAddress(_) => (301, "Incompatible network address formats"),
            SdpError::MediaLinesRemoved { .. } => (399, "Re-offer removes media lines"),
            SdpError::AnswerMismatch(_) => (305, "Incompatible media format"),
            SdpError::AudioRejected => (304, "Media type not available"),
        };
        Warning { code, text }
    }

    pub(crate) const fn malformed(line: usize, reason: &'static str) -> Self {
        SdpError::Malformed { line, reason }
    }
}

/// Unusable local configuration: the caller's mistake, never the peer's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The codec list is empty.
    #[error("no codec configured")]
    NoCodec,
    /// A codec is listed twice.
    #[error("codec listed twice")]
    DuplicateCodec,
    /// A dynamic payload type outside 96..=127 (RFC 3551).
    #[error("payload type {0} is not in the dynamic range 96..=127")]
    NotDynamicPayloadType(u8),
    /// Two dynamic payload types are the same.
    #[error("payload type {0} is used twice")]
    PayloadTypeClash(u8),
    /// A packet time we cannot produce (we packetize 10 to 60 ms in steps of 10).
    #[error("unsupported packet time {0} ms")]
    UnsupportedPtime(u32),
    /// The `o=` user name is empty or has white space or control characters.
    #[error("the o= user name must be a visible ASCII token")]
    InvalidUsername,
    /// An address that cannot be advertised for media: unspecified (it means hold), port 0
    /// (it means rejected), or multicast.
    #[error("{0} cannot be advertised as a media address")]
    UnusableAddress(SocketAddr),
}

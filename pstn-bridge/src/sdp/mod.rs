//! SDP offer/answer (RFC 3264 over RFC 4566) for confer's SIP legs.
//!
//! confer is a B2BUA whose media is anchored in confer: every SIP leg's audio ends in one
//! of our RTP endpoints and becomes a participant of a conference room. This module turns
//! the peer's session descriptions into what that endpoint needs ([`NegotiatedMedia`]:
//! where to send, which codec and payload type, packet time, telephone-event, direction)
//! and writes ours. It is sans-IO: text and state in, text and state out.
//!
//! # Drive contract
//!
//! One [`SdpSession`] per dialog, created with a session id from the dialog's RNG.
//!
//! - INVITE (or re-INVITE, UPDATE) with SDP: parse it with [`SessionDescription::parse`],
//!   call [`answer`]; send `answer.sdp.to_sdp()` in the 200 OK and give `answer.media` to
//!   the media leg. On `Err(e)`, reply `e.status_code()` (488) with a `Warning:
//!   e.warning().header_value(host)`; the session is unchanged.
//! - Dial-out, INVITE without SDP (delayed offer), re-INVITE without SDP, hold, resume,
//!   codec change: call [`offer`] and send `offer.to_sdp()`; when the answer arrives (in the
//!   2xx, or in the ACK for a delayed offer), call [`process_answer`] with the same
//!   [`Offer`]. On `Err`, the answer is unusable: end the dialog (BYE). If the offer is
//!   refused (488, 491), drop the [`Offer`]; the session keeps the previous media.
//! - Hold the peer: [`offer`] with [`Direction::SendOnly`]; resume: [`Direction::SendRecv`].
//!   The peer's hold shows in [`NegotiatedMedia::remote_direction`] and
//!   [`NegotiatedMedia::held_by_peer`].
//!
//! # Why our own parser
//!
//! `rtc-sdp` 0.21 (webrtc-rs) was tried first: it keeps unknown attributes, handles
//! `c=IN IP4 0.0.0.0`, IPv6 and several m-lines, and did not panic on 200,000 seeded
//! mutations. But it refuses a whole description for one unknown media type (`m=foo`),
//! where RFC 3264 section 6 wants that stream rejected with port 0 and the rest answered;
//! it refuses lines out of the RFC 4566 order (`c=` after `t=`), a missing `t=`, an `o=`
//! user name with a space, a `u=` line that is not an absolute URL; its model is strings
//! (ports as `isize`, addresses as text), so a typed layer would parse everything a second
//! time; and its errors are one crate-wide enum. [`parse`](SessionDescription::parse) is a
//! small line parser, strict where negotiation depends on a field and tolerant of what
//! deployed PBXs send; its module docs list both.
//!
//! # Modules
//!
//! - `model`: [`SessionDescription`] and its parts, serialization (CRLF).
//! - `parse`: the parser (LF or CRLF input).
//! - `codec`: [`Codec`], static payload types, [`OpusParams`], [`EventSet`], packet times.
//! - `negotiate`: [`SdpSession`], [`answer`], [`offer`], [`process_answer`] and the rules
//!   they follow (codec order, accepted transports, hold, version numbers).
//! - `error`: [`SdpError`] (the peer's fault, 488 + Warning) and [`ConfigError`] (ours).

mod codec;
mod error;
mod model;
mod negotiate;
mod parse;

pub use codec::{
    Codec, EventSet, OpusParams, OpusSendParams, choose_ptime, is_telephone_event, static_rtpmap,
};
pub use error::{ConfigError, SdpError, Warning};
pub use model::{
    AddrType, Address, Attribute, Connection, Direction, Fmtp, MediaDescription, MediaKind, Origin,
    OtherLine, Rtcp, RtpMap, SessionDescription, Transport,
};
pub use negotiate::{
    Answer, CodecOrder, LocalCapabilities, MediaAddress, NegotiatedCodec, NegotiatedMedia,
    NegotiatedTelephoneEvent, Offer, PayloadCodec, SdpSession, answer, offer, process_answer,
};

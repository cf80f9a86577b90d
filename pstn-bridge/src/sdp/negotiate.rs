//! Offer/answer (RFC 3264) for one SIP leg's audio.
//!
//! [`SdpSession`] is the SDP state of one dialog: our `o=` line and its version, the last
//! description we sent, the m-lines the session has so far, the media negotiated last and
//! the direction we want (sendrecv, or sendonly while we hold the peer). Everything is a
//! function of its inputs: no clock, no sockets, no randomness (the session id comes from
//! the caller's RNG).
//!
//! - [`answer`] answers a peer's offer (initial INVITE or re-INVITE/UPDATE).
//! - [`offer`] makes our offer: dial-out, a delayed offer (an INVITE without SDP: we offer
//!   in the 200 OK and take the answer from the ACK), a re-INVITE without SDP, and our
//!   re-offers (hold with [`Direction::SendOnly`], resume with [`Direction::SendRecv`],
//!   codec change with other [`LocalCapabilities`]).
//! - [`process_answer`] checks the peer's answer against our [`Offer`].
//!
//! Each successful exchange returns a [`NegotiatedMedia`] for the media leg and commits it
//! to the session; a failed one leaves the session as it was (RFC 3261 section 14.2),
//! except that the version stays counted, since the failed SDP was sent.
//!
//! # Choices
//!
//! - **Codec order.** By default the answer takes the first codec *in the offer's order*
//!   that we support (RFC 3264 section 6.1 lets the offerer rank; the PBX knows its trunk
//!   best); [`CodecOrder::Local`] takes ours instead. The answer lists that one codec (and
//!   telephone-event), with the offer's payload type numbers, so the peer sends exactly what
//!   the leg decodes and never switches codec mid-call.
//! - **Transports.** Only `RTP/AVP` is accepted. `RTP/SAVP` (SDES) and DTLS-SRTP are refused
//!   until confer keys SRTP on SIP legs; `RTP/AVPF` is refused because we do not follow its
//!   RTCP feedback rules. An offer that also has an `RTP/AVP` audio line is answered on that
//!   line; the others get port 0.
//! - **One audio stream.** A leg is one participant: the first acceptable audio m-line is
//!   answered, every other m-line (more audio, video, T.38 `image`, unknown) is rejected with
//!   port 0 in place (RFC 3264 section 6).
//! - **Hold.** The peer holds us with sendonly, inactive, or (RFC 2543 style) `c=` 0.0.0.0,
//!   which we read as "the peer does not receive": its direction loses the receive half and
//!   [`NegotiatedMedia::remote_rtp`] is `None`. We hold the peer with sendonly (RFC 3264
//!   section 8.4) and never write 0.0.0.0. Our answer's direction is the offer's, reversed,
//!   intersected with what we want.
//! - **telephone-event.** Offered at the chosen codec's RTP clock rate if the peer offers
//!   that one (RFC 4733 section 2.5.1.3); else, rather than lose DTMF (the PIN IVR needs it),
//!   the first one offered, whose clock rate [`NegotiatedTelephoneEvent`] reports. Events are
//!   the offered ones within 0-15.
//! - **ptime.** We send at the peer's `a=ptime` (or Opus `fmtp` ptime) if we can packetize
//!   it (whole frames of our frame clock, [`LocalCapabilities::with_frame_ms`]), else the
//!   nearest of ours below it, within the peer's maxptime/minptime; our SDP states the
//!   ptime we send at, so both directions match (many gateways expect that).
//! - **Re-offers** keep every m-line of the session (rejected ones with port 0), keep the
//!   payload type numbers already in use, and list the current codec first so that hold and
//!   resume do not change codec; to change codec, pass capabilities without the current one.
//! - **o= version.** Every description we send (offer or answer) carries our one `o=` line;
//!   its version increments by one when the description differs from the last one we sent,
//!   and stays when it is identical (RFC 3264 section 8; a session-timer refresh does not
//!   bump it).

use std::net::{IpAddr, SocketAddr};

use super::codec::{
    Codec, EventSet, OpusParams, OpusSendParams, choose_ptime, is_telephone_event, static_rtpmap,
};
use super::error::{ConfigError, SdpError};
use super::model::{
    Address, Connection, Direction, Fmtp, MediaDescription, MediaKind, Origin, OtherLine, Rtcp,
    RtpMap, SessionDescription, Transport,
};

/// Whose codec order decides the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CodecOrder {
    /// The first codec in the offer that we support (the RFC 3264 recommendation).
    #[default]
    Offerer,
    /// The first codec in our list that the offer has.
    Local,
}

/// What we can do, and how we prefer it. Built through [`LocalCapabilities::new`] and the
/// `with_` methods, which refuse inconsistent settings, so every value is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCapabilities {
    codecs: Vec<Codec>,
    codec_order: CodecOrder,
    telephone_event: bool,
    ptime: u32,
    /// Our frame clock: packet times are whole frames.
    frame_ms: u32,
    opus_payload_type: u8,
    te_8000_payload_type: u8,
    te_48000_payload_type: u8,
    opus_params: OpusParams,
    rtcp_mux: bool,
}

impl Default for LocalCapabilities {
    /// Opus, G.722, PCMU, PCMA (best quality first; trunks pick what they have), offerer's
    /// order in answers, telephone-event on, 20 ms, Opus on PT 111, telephone-event on
    /// 101 (8000 Hz) and 110 (48000 Hz), [`OpusParams::RECEIVE_DEFAULT`], no rtcp-mux.
    fn default() -> Self {
        LocalCapabilities {
            codecs: vec![Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma],
            codec_order: CodecOrder::Offerer,
            telephone_event: true,
            ptime: 20,
            frame_ms: 10,
            opus_payload_type: 111,
            te_8000_payload_type: 101,
            te_48000_payload_type: 110,
            opus_params: OpusParams::RECEIVE_DEFAULT,
            rtcp_mux: false,
        }
    }
}

impl LocalCapabilities {
    /// The defaults with these codecs, in this order of preference.
    pub fn new(codecs: &[Codec]) -> Result<Self, ConfigError> {
        if codecs.is_empty() {
            return Err(ConfigError::NoCodec);
        }
        for (i, c) in codecs.iter().enumerate() {
            if codecs[..i].contains(c) {
                return Err(ConfigError::DuplicateCodec);
            }
        }
        Ok(LocalCapabilities {
            codecs: codecs.to_vec(),
            ..LocalCapabilities::default()
        })
    }

    /// Whose codec order decides the answer.
    pub fn with_codec_order(mut self, order: CodecOrder) -> Self {
        self.codec_order = order;
        self
    }

    /// Whether we negotiate RFC 4733 telephone-event.
    pub fn with_telephone_event(mut self, on: bool) -> Self {
        self.telephone_event = on;
        self
    }

    /// Our packet time when the peer states none, and our frame clock: we send whole
    /// frames, so the packet times we answer with are multiples of it. 10 to 60 ms in
    /// steps of 10.
    pub fn with_ptime(mut self, ms: u32) -> Result<Self, ConfigError> {
        if !(10..=60).contains(&ms) || !ms.is_multiple_of(10) {
            return Err(ConfigError::UnsupportedPtime(ms));
        }
        self.ptime = ms;
        Ok(self)
    }

    /// Our frame clock (10 or 20 ms; default 10): we send whole frames, so the packet
    /// times we answer and offer with are multiples of it.
    pub fn with_frame_ms(mut self, ms: u32) -> Result<Self, ConfigError> {
        if ms != 10 && ms != 20 {
            return Err(ConfigError::UnsupportedPtime(ms));
        }
        self.frame_ms = ms;
        Ok(self)
    }

    /// The dynamic payload types of our offers: Opus, telephone-event/8000 and
    /// telephone-event/48000 (96..=127, distinct). Answers use the offer's numbers.
    pub fn with_payload_types(
        mut self,
        opus: u8,
        te_8000: u8,
        te_48000: u8,
    ) -> Result<Self, ConfigError> {
        let pts = [opus, te_8000, te_48000];
        for (i, pt) in pts.iter().enumerate() {
            if !(96..=127).contains(pt) {
                return Err(ConfigError::NotDynamicPayloadType(*pt));
            }
            if pts[..i].contains(pt) {
                return Err(ConfigError::PayloadTypeClash(*pt));
            }
        }
        (
            self.opus_payload_type,
            self.te_8000_payload_type,
            self.te_48000_payload_type,
        ) = (opus, te_8000, te_48000);
        Ok(self)
    }

    /// The Opus `fmtp` we send: what we want to receive.
    pub fn with_opus_params(mut self, params: OpusParams) -> Self {
        self.opus_params = params;
        self
    }

    /// Whether we offer and accept `a=rtcp-mux` (RFC 5761). Without it, RTCP is on the RTP
    /// port + 1.
    pub fn with_rtcp_mux(mut self, on: bool) -> Self {
        self.rtcp_mux = on;
        self
    }

    /// Our codecs in order of preference.
    pub fn codecs(&self) -> &[Codec] {
        &self.codecs
    }

    /// Whose codec order decides the answer.
    pub fn codec_order(&self) -> CodecOrder {
        self.codec_order
    }

    /// Whether telephone-event is negotiated.
    pub fn telephone_event(&self) -> bool {
        self.telephone_event
    }

    /// Our default packet time in ms.
    pub fn ptime(&self) -> u32 {
        self.ptime
    }

    /// The Opus parameters we advertise.
    pub fn opus_params(&self) -> &OpusParams {
        &self.opus_params
    }

    /// Whether rtcp-mux is offered and accepted.
    pub fn rtcp_mux(&self) -> bool {
        self.rtcp_mux
    }
}

/// An address we can advertise for RTP: not unspecified (that means hold), not port 0
/// (that means rejected), not multicast, and with room for RTCP on port + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaAddress(SocketAddr);

impl MediaAddress {
    /// Checks that `addr` can be advertised in `c=` and `m=`.
    pub fn new(addr: SocketAddr) -> Result<Self, ConfigError> {
        let ip = addr.ip();
        if ip.is_unspecified() || ip.is_multicast() || addr.port() == 0 || addr.port() == 65535 {
            return Err(ConfigError::UnusableAddress(addr));
        }
        Ok(MediaAddress(addr))
    }

    /// The address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }
}

/// One RTP payload type and the codec it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadCodec {
    /// The payload type.
    pub payload_type: u8,
    /// The codec.
    pub codec: Codec,
}

/// The codec we send with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NegotiatedCodec {
    /// The codec.
    pub codec: Codec,
    /// The payload type to send it with (the peer's number).
    pub payload_type: u8,
    /// The RTP clock rate (8000 for G.722).
    pub clock_rate: u32,
    /// The audio sample rate (16000 for G.722).
    pub sample_rate: u32,
    /// Channels to encode: 2 only for Opus when the peer asked for stereo.
    pub channels: u16,
    /// For Opus: how to encode for this peer.
    pub opus: Option<OpusSendParams>,
}

/// Negotiated RFC 4733 telephone-event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NegotiatedTelephoneEvent {
    /// The payload type to send events with.
    pub send_payload_type: u8,
    /// The payload type the peer's events arrive with (differs from the send one only
    /// when the peer's answer renumbered it).
    pub receive_payload_type: u8,
    /// Its RTP clock rate (the audio codec's, unless the peer offered no such one).
    pub clock_rate: u32,
    /// The events both sides handle (within 0-15).
    pub events: EventSet,
}

/// What the media leg needs after an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    /// The index of the audio m-line in the session.
    pub media_index: usize,
    /// Where to send RTP; `None` while the peer's `c=` is the hold address.
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP: the RTP address with rtcp-mux, `a=rtcp` if given, else the RTP
    /// port + 1 (`None` when held, or when the RTP port is 65535).
    pub remote_rtcp: Option<SocketAddr>,
    /// RTCP multiplexed on the RTP port, in both directions.
    pub rtcp_mux: bool,
    /// The codec we send.
    pub codec: NegotiatedCodec,
    /// The payload types the peer may send us, and their codecs.
    pub receive_codecs: Vec<PayloadCodec>,
    /// telephone-event, if negotiated.
    pub telephone_event: Option<NegotiatedTelephoneEvent>,
    /// The packet time we send at, in ms.
    pub ptime_ms: u32,
    /// Our direction: whether we send and whether we receive.
    pub direction: Direction,
    /// The peer's direction as it stated it (with the hold address read as "does not
    /// receive").
    pub remote_direction: Direction,
}

impl NegotiatedMedia {
    /// Whether the peer has put us on hold (it does not receive).
    pub fn held_by_peer(&self) -> bool {
        !self.remote_direction.receives()
    }

    /// The codec of a payload type the peer sends, if negotiated.
    pub fn receive_codec(&self, payload_type: u8) -> Option<Codec> {
        self.receive_codecs
            .iter()
            .find(|p| p.payload_type == payload_type)
            .map(|p| p.codec)
    }
}

/// Our answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The description to send (`to_sdp()` gives the body).
    pub sdp: SessionDescription,
    /// What was negotiated.
    pub media: NegotiatedMedia,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    Codec(Codec),
    TelephoneEvent(u32),
}

impl Offered {
    fn rtpmap(self, payload_type: u8) -> RtpMap {
        match self {
            Offered::Codec(c) => c.rtpmap(payload_type),
            Offered::TelephoneEvent(rate) => te_rtpmap(payload_type, rate),
        }
    }
}

/// An offer we made, to be passed back to [`process_answer`] with the peer's answer. Only
/// [`offer`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    sdp: SessionDescription,
    local: MediaAddress,
    audio_index: usize,
    direction: Direction,
    formats: Vec<(u8, Offered)>,
    ptime: u32,
    frame_ms: u32,
    rtcp_mux: bool,
}

impl Offer {
    /// The description to send.
    pub fn sdp(&self) -> &SessionDescription {
        &self.sdp
    }

    /// The serialized body (CRLF line ends).
    pub fn to_sdp(&self) -> String {
        self.sdp.to_sdp()
    }

    /// The direction we offered.
    pub fn direction(&self) -> Direction {
        self.direction
    }
}

/// The SDP state of one dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpSession {
    username: String,
    session_id: u64,
    version: u64,
    origin_address: IpAddr,
    last_sent: Option<SessionDescription>,
    layout: Vec<MediaDescription>,
    negotiated: Option<NegotiatedMedia>,
    local_direction: Direction,
}

impl SdpSession {
    /// A new session. `username` goes in `o=` (a token, `-` for none); `session_id` should
    /// come from the dialog's RNG (its top bit is cleared, since some stacks read it as a
    /// signed 64-bit number); `origin_address` is our address for `o=`, fixed for the
    /// session since RFC 3264 section 8 forbids changing `o=` except its version.
    pub fn new(
        username: &str,
        session_id: u64,
        origin_address: IpAddr,
    ) -> Result<Self, ConfigError> {
        if username.is_empty() || !username.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::InvalidUsername);
        }
        Ok(SdpSession {
            username: username.to_owned(),
            session_id: session_id & (u64::MAX >> 1),
            version: 1,
            origin_address,
            last_sent: None,
            layout: Vec::new(),
            negotiated: None,
            local_direction: Direction::SendRecv,
        })
    }

    /// Our session id.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The version of the last description we sent (1 before the first).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The last description we sent.
    pub fn last_sent(&self) -> Option<&SessionDescription> {
        self.last_sent.as_ref()
    }

    /// The media of the last completed exchange.
    pub fn negotiated(&self) -> Option<&NegotiatedMedia> {
        self.negotiated.as_ref()
    }

    /// The direction we asked for in the last completed exchange (sendonly while we hold
    /// the peer); answers to the peer's offers keep to it.
    pub fn local_direction(&self) -> Direction {
        self.local_direction
    }

    /// Gives a description our `o=` line, bumping the version if it differs from the last
    /// one we sent, and records it as sent.
    fn stamp(&mut self, connection: IpAddr, media: Vec<MediaDescription>) -> SessionDescription {
        let mut sdp = SessionDescription {
            origin: Origin {
                username: self.username.clone(),
                session_id: self.session_id,
                session_version: self.version,
                address: Address::Ip(self.origin_address),
            },
            session_name: "confer".to_owned(),
            connection: Some(Connection::new(connection)),
            bandwidth: Vec::new(),
            direction: None,
            attributes: Vec::new(),
            other_lines: vec![OtherLine {
                kind: 't',
                value: "0 0".to_owned(),
            }],
            media,
        };
        if self.last_sent.as_ref().is_some_and(|last| *last != sdp) {
            // Starting at 1 and adding one per sent description, this never saturates.
            self.version = self.version.saturating_add(1);
            sdp.origin.session_version = self.version;
        }
        self.last_sent = Some(sdp.clone());
        sdp
    }

    fn commit(&mut self, lines: &[MediaDescription], media: NegotiatedMedia, direction: Direction) {
        self.layout = lines.iter().map(MediaDescription::rejected).collect();
        self.negotiated = Some(media);
        self.local_direction = direction;
    }
}

fn te_rtpmap(payload_type: u8, clock_rate: u32) -> RtpMap {
    RtpMap {
        payload_type,
        encoding: "telephone-event".to_owned(),
        clock_rate,
        channels: None,
    }
}

/// Refuses every transport but RTP/AVP, with the reason.
fn check_transport(transport: &Transport) -> Result<(), SdpError> {
    let reason = match transport {
        Transport::RtpAvp => return Ok(()),
        Transport::RtpAvpf => "the RTP/AVPF feedback profile is not supported yet",
        Transport::RtpSavp | Transport::RtpSavpf => "SRTP with SDES keys is not supported yet",
        Transport::UdpTlsRtpSavp | Transport::UdpTlsRtpSavpf => {
            "DTLS-SRTP is not supported on SIP legs"
        }
        Transport::Udptl => "T.38 fax is not supported",
        Transport::Other(_) => "unknown transport",
    };
    Err(SdpError::UnsupportedTransport {
        transport: transport.clone(),
        reason,
    })
}

/// The peer's RTP IP from a `c=` line: `None` for the hold address.
fn remote_ip(
    connection: Option<&Connection>,
    local_is_ipv4: bool,
) -> Result<Option<IpAddr>, SdpError> {
    let connection = connection.ok_or(SdpError::malformed(0, "audio stream without a c= line"))?;
    if connection.is_hold_address() {
        return Ok(None);
    }
    let ip = connection.address.ip().ok_or(SdpError::UnsupportedAddress(
        "host name in c= (names are not resolved)",
    ))?;
    if connection.multicast.is_some() || ip.is_multicast() {
        return Err(SdpError::UnsupportedAddress("multicast"));
    }
    if ip.is_ipv4() != local_is_ipv4 {
        return Err(SdpError::UnsupportedAddress(
            "address family differs from ours",
        ));
    }
    Ok(Some(ip))
}

/// Where to send RTP and RTCP.
fn remote_addrs(
    ip: Option<IpAddr>,
    port: u16,
    rtcp_mux: bool,
    rtcp: Option<&Rtcp>,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let Some(ip) = ip else {
        return (None, None);
    };
    let rtp = SocketAddr::new(ip, port);
    let rtcp = if rtcp_mux {
        Some(rtp)
    } else if let Some(r) = rtcp {
        let rtcp_ip = r.address.as_ref().and_then(Address::ip).unwrap_or(ip);
        Some(SocketAddr::new(rtcp_ip, r.port))
    } else {
        port.checked_add(1).map(|p| SocketAddr::new(ip, p))
    };
    (Some(rtp), rtcp)
}

/// The peer's effective direction for an m-line: media level over session level, and the
/// hold address read as "does not receive".
fn remote_direction(sdp: &SessionDescription, m: &MediaDescription, held: bool) -> Direction {
    let d = m.direction.or(sdp.direction).unwrap_or_default();
    if held {
        d.intersect(Direction::SendOnly)
    } else {
        d
    }
}

/// The packet time we send with, from the peer's attributes and Opus parameters.
fn send_ptime(
    codec: Codec,
    m: &MediaDescription,
    opus: Option<&OpusParams>,
    ours: u32,
    frame_ms: u32,
) -> u32 {
    let (mut preferred, mut max, mut min) = (m.ptime, m.maxptime, None);
    if let Some(o) = opus {
        preferred = preferred.or(o.ptime);
        max = match (max, o.maxptime) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        min = o.minptime;
    }
    choose_ptime(codec, frame_ms, preferred.unwrap_or(ours), min, max)
}

/// The offered telephone-event events, within what we handle; `None` if nothing is left.
fn te_events(m: &MediaDescription, format: &str) -> Option<EventSet> {
    // No fmtp (or an unreadable one) means 0-15 (RFC 4733 section 2.4.1).
    let offered = m
        .fmtp(format)
        .and_then(EventSet::parse)
        .unwrap_or(EventSet::DTMF);
    Some(offered.intersect(&EventSet::DTMF)).filter(|e| !e.is_empty())
}

fn negotiated_codec(codec: Codec, payload_type: u8, opus: Option<OpusParams>) -> NegotiatedCodec {
    let opus = opus.map(OpusSendParams::from_remote);
    NegotiatedCodec {
        codec,
        payload_type,
        clock_rate: codec.rtp_clock_rate(),
        sample_rate: codec.sample_rate(),
        channels: if opus.is_some_and(|o| o.stereo) { 2 } else { 1 },
        opus,
    }
}

/// Our audio m-line: one codec per entry of `formats`, in order, then the common lines.
fn audio_line(
    port: u16,
    formats: &[(u8, Offered)],
    te_events: EventSet,
    caps: &LocalCapabilities,
    ptime: u32,
    rtcp_mux: bool,
    direction: Direction,
) -> MediaDescription {
    let mut line = MediaDescription::new(
        MediaKind::Audio,
        port,
        Transport::RtpAvp,
        formats.iter().map(|(pt, _)| pt.to_string()).collect(),
    );
    for (pt, what) in formats {
        line.rtpmaps.push(what.rtpmap(*pt));
        let params = match what {
            Offered::Codec(Codec::Opus) => caps.opus_params.to_fmtp(),
            Offered::Codec(_) => continue,
            Offered::TelephoneEvent(_) => te_events.to_string(),
        };
        if !params.is_empty() {
            line.fmtps.push(Fmtp {
                format: pt.to_string(),
                params,
            });
        }
    }
    line.ptime = Some(ptime);
    line.rtcp_mux = rtcp_mux;
    line.direction = Some(direction);
    line
}

struct Accepted {
    line: MediaDescription,
    media: NegotiatedMedia,
}

/// Tries to accept one offered audio m-line.
fn accept_audio(
    offer: &SessionDescription,
    index: usize,
    m: &MediaDescription,
    caps: &LocalCapabilities,
    local: MediaAddress,
    local_direction: Direction,
) -> Result<Accepted, SdpError> {
    check_transport(&m.transport)?;
    let supported: Vec<(&str, u8, Codec)> = m
        .formats
        .iter()
        .filter_map(|f| {
            let pt = f.parse::<u8>().ok().filter(|pt| *pt <= 127)?;
            let codec = Codec::from_rtpmap(&m.rtpmap(pt)?)?;
            caps.codecs
                .contains(&codec)
                .then_some((f.as_str(), pt, codec))
        })
        .collect();
    let chosen = match caps.codec_order {
        CodecOrder::Offerer => supported.first(),
        CodecOrder::Local => caps
            .codecs
            .iter()
            .find_map(|c| supported.iter().find(|s| s.2 == *c)),
    };
    let &(format, pt, codec) = chosen.ok_or(SdpError::NoCommonCodec)?;

    let telephone_event = if caps.telephone_event {
        choose_telephone_event(m, codec.rtp_clock_rate())
    } else {
        None
    };

    let ip = remote_ip(
        m.connection.as_ref().or(offer.connection.as_ref()),
        local.socket_addr().is_ipv4(),
    )?;
    let remote_direction = remote_direction(offer, m, ip.is_none());
    let direction = remote_direction.reversed().intersect(local_direction);
    let opus = (codec == Codec::Opus).then(|| OpusParams::parse(m.fmtp(format).unwrap_or("")));
    let ptime = send_ptime(codec, m, opus.as_ref(), caps.ptime, caps.frame_ms);
    let rtcp_mux = m.rtcp_mux && caps.rtcp_mux;
    let (remote_rtp, remote_rtcp) = remote_addrs(ip, m.port, rtcp_mux, m.rtcp.as_ref());

    let mut formats = vec![(pt, Offered::Codec(codec))];
    let mut events = EventSet::default();
    if let Some(te) = &telephone_event {
        formats.push((te.send_payload_type, Offered::TelephoneEvent(te.clock_rate)));
        events = te.events;
    }
    let line = audio_line(
        local.socket_addr().port(),
        &formats,
        events,
        caps,
        ptime,
        rtcp_mux,
        direction,
    );
    let media = NegotiatedMedia {
        media_index: index,
        remote_rtp,
        remote_rtcp,
        rtcp_mux,
        codec: negotiated_codec(codec, pt, opus),
        receive_codecs: vec![PayloadCodec {
            payload_type: pt,
            codec,
        }],
        telephone_event,
        ptime_ms: ptime,
        direction,
        remote_direction,
    };
    Ok(Accepted { line, media })
}

/// The offered telephone-event to use: the one at `clock_rate`, else the first.
fn choose_telephone_event(
    m: &MediaDescription,
    clock_rate: u32,
) -> Option<NegotiatedTelephoneEvent> {
    let mut first = None;
    for format in &m.formats {
        let Some(pt) = format.parse::<u8>().ok().filter(|pt| *pt <= 127) else {
            continue;
        };
        let Some(map) = m.rtpmap(pt).filter(is_telephone_event) else {
            continue;
        };
        let Some(events) = te_events(m, format) else {
            continue;
        };
        let te = NegotiatedTelephoneEvent {
            send_payload_type: pt,
            receive_payload_type: pt,
            clock_rate: map.clock_rate,
            events,
        };
        if map.clock_rate == clock_rate {
            return Some(te);
        }
        first.get_or_insert(te);
    }
    first
}

/// How far an audio m-line got before it failed: the furthest failure is reported.
fn failure_rank(e: &SdpError) -> u8 {
    match e {
        SdpError::UnsupportedTransport { .. } => 1,
        SdpError::NoCommonCodec => 2,
        _ => 3,
    }
}

/// Answers a peer's offer (RFC 3264 section 6), initial or re-offer.
///
/// The first audio m-line we can accept is answered with one codec (see the module docs
/// for the order) and telephone-event; every other m-line is rejected with port 0 in
/// place. On success the session commits the result; on error (map it to 488 with
/// [`SdpError::warning`]) the session is unchanged.
pub fn answer(
    offer: &SessionDescription,
    caps: &LocalCapabilities,
    local: MediaAddress,
    session: &mut SdpSession,
) -> Result<Answer, SdpError> {
    let before = session.layout.len();
    if offer.media.len() < before {
        return Err(SdpError::MediaLinesRemoved {
            before,
            after: offer.media.len(),
        });
    }
    let mut failure: Option<SdpError> = None;
    let mut accepted = None;
    for (index, m) in offer.media.iter().enumerate() {
        if m.kind != MediaKind::Audio || m.port == 0 {
            continue;
        }
        match accept_audio(offer, index, m, caps, local, session.local_direction) {
            Ok(a) => {
                accepted = Some(a);
                break;
            }
            Err(e) => {
                if failure
                    .as_ref()
                    .is_none_or(|f| failure_rank(&e) > failure_rank(f))
                {
                    failure = Some(e);
                }
            }
        }
    }
    let Some(Accepted { line, media }) = accepted else {
        return Err(failure.unwrap_or(SdpError::NoAudio));
    };
    let lines = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == media.media_index {
                line.clone()
            } else {
                m.rejected()
            }
        })
        .collect();
    let sdp = session.stamp(local.socket_addr().ip(), lines);
    session.commit(&offer.media, media.clone(), session.local_direction);
    Ok(Answer { sdp, media })
}

/// Picks a payload type: the wanted one if free, else the default if free, else the first
/// free dynamic one.
fn allocate_pt(wanted: Option<u8>, default: u8, used: &mut Vec<u8>) -> u8 {
    let pt = [wanted, Some(default)]
        .into_iter()
        .flatten()
        .find(|pt| !used.contains(pt))
        .or_else(|| (96..=127).find(|pt| !used.contains(pt)))
        // We allocate at most six payload types, so the 32 dynamic ones cannot run out.
        .unwrap_or(default);
    used.push(pt);
    pt
}

/// Makes our offer (RFC 3264 section 5; section 8 for re-offers): dial-out, delayed offer,
/// re-INVITE without SDP, hold (`direction` sendonly), resume (sendrecv), codec change
/// (other `caps`).
///
/// A re-offer keeps every m-line of the session (the others with port 0), the payload
/// numbers in use, and the current codec first. The session changes only when
/// [`process_answer`] accepts the answer (apart from the version count).
pub fn offer(
    caps: &LocalCapabilities,
    local: MediaAddress,
    direction: Direction,
    session: &mut SdpSession,
) -> Offer {
    let mut codecs = caps.codecs.clone();
    let current = session.negotiated.as_ref();
    if let Some(pos) = current.and_then(|n| codecs.iter().position(|c| *c == n.codec.codec)) {
        let c = codecs.remove(pos);
        codecs.insert(0, c);
    }
    let sticky_codec = |codec: Codec| {
        current.and_then(|n| {
            n.receive_codecs
                .iter()
                .find(|p| p.codec == codec)
                .map(|p| p.payload_type)
        })
    };
    let sticky_te = |rate: u32| {
        current
            .and_then(|n| n.telephone_event)
            .filter(|te| te.clock_rate == rate)
            .map(|te| te.receive_payload_type)
    };

    let mut used: Vec<u8> = codecs
        .iter()
        .filter_map(|c| c.static_payload_type())
        .collect();
    let mut formats: Vec<(u8, Offered)> = Vec::with_capacity(codecs.len() + 2);
    for &codec in &codecs {
        let pt = match codec.static_payload_type() {
            Some(pt) => pt,
            None => allocate_pt(sticky_codec(codec), caps.opus_payload_type, &mut used),
        };
        formats.push((pt, Offered::Codec(codec)));
    }
    if caps.telephone_event {
        let mut rates: Vec<u32> = Vec::with_capacity(2);
        for codec in &codecs {
            if !rates.contains(&codec.rtp_clock_rate()) {
                rates.push(codec.rtp_clock_rate());
            }
        }
        for rate in rates {
            let default = if rate == 48000 {
                caps.te_48000_payload_type
            } else {
                caps.te_8000_payload_type
            };
            let pt = allocate_pt(sticky_te(rate), default, &mut used);
            formats.push((pt, Offered::TelephoneEvent(rate)));
        }
    }
    // State a packet time our first codec can be sent at (Opus has no 30 ms frames).
    let ptime = codecs.first().map_or(caps.ptime, |c| {
        choose_ptime(*c, caps.frame_ms, caps.ptime, None, None)
    });
    let audio = audio_line(
        local.socket_addr().port(),
        &formats,
        EventSet::DTMF,
        caps,
        ptime,
        caps.rtcp_mux,
        direction,
    );
    let audio_index = match current {
        Some(n) if n.media_index < session.layout.len() => n.media_index,
        _ => 0,
    };
    let mut lines = session.layout.clone();
    if lines.is_empty() {
        lines.push(audio);
    } else {
        lines[audio_index] = audio;
    }
    let sdp = session.stamp(local.socket_addr().ip(), lines);
    Offer {
        sdp,
        local,
        audio_index,
        direction,
        formats,
        ptime,
        frame_ms: caps.frame_ms,
        rtcp_mux: caps.rtcp_mux,
    }
}

/// Checks the peer's answer to our `offer` (RFC 3264 sections 6 and 7) and commits it.
///
/// The answer must have the offer's m-lines, in order and of the same types, and its audio
/// line may use only codecs we offered (by rtpmap; a renumbered payload type is followed
/// for sending). Port 0 on our audio line is [`SdpError::AudioRejected`]. The first codec
/// of the answer is the one we send. A bad answer cannot be refused with 488 (it comes in
/// a 2xx or an ACK): end the dialog with BYE.
pub fn process_answer(
    offer: &Offer,
    answer: &SessionDescription,
    session: &mut SdpSession,
) -> Result<NegotiatedMedia, SdpError> {
    if answer.media.len() != offer.sdp.media.len() {
        return Err(SdpError::AnswerMismatch(
            "m-line count differs from the offer",
        ));
    }
    if answer
        .media
        .iter()
        .zip(&offer.sdp.media)
        .any(|(a, o)| a.kind != o.kind)
    {
        return Err(SdpError::AnswerMismatch(
            "m-line media types differ from the offer",
        ));
    }
    let Some(m) = answer.media.get(offer.audio_index) else {
        return Err(SdpError::AnswerMismatch(
            "m-line count differs from the offer",
        ));
    };
    if m.port == 0 {
        return Err(SdpError::AudioRejected);
    }
    if m.transport != Transport::RtpAvp {
        return Err(SdpError::AnswerMismatch("transport differs from the offer"));
    }

    let mut send: Option<(&str, u8, Codec)> = None;
    let mut receive_codecs = Vec::new();
    let mut te_candidates: Vec<(&str, u8, u8, u32)> = Vec::new();
    for format in &m.formats {
        let pt =
            format
                .parse::<u8>()
                .ok()
                .filter(|pt| *pt <= 127)
                .ok_or(SdpError::AnswerMismatch(
                    "a format that is not an RTP payload type",
                ))?;
        let ours = offer.formats.iter().find(|(p, _)| *p == pt);
        let map = m
            .explicit_rtpmap(pt)
            .cloned()
            .or_else(|| ours.map(|(p, what)| what.rtpmap(*p)))
            .or_else(|| static_rtpmap(pt))
            .ok_or(SdpError::AnswerMismatch(
                "a dynamic payload type without rtpmap",
            ))?;
        let not_offered = SdpError::AnswerMismatch("a codec we did not offer");
        if let Some(codec) = Codec::from_rtpmap(&map) {
            let our_pt = offer
                .formats
                .iter()
                .find(|(_, what)| *what == Offered::Codec(codec))
                .ok_or(not_offered)?
                .0;
            receive_codecs.push(PayloadCodec {
                payload_type: our_pt,
                codec,
            });
            send.get_or_insert((format.as_str(), pt, codec));
        } else if is_telephone_event(&map) {
            let our_pt = offer
                .formats
                .iter()
                .find(|(_, what)| *what == Offered::TelephoneEvent(map.clock_rate))
                .ok_or(not_offered)?
                .0;
            te_candidates.push((format.as_str(), pt, our_pt, map.clock_rate));
        } else {
            return Err(not_offered);
        }
    }
    let (format, pt, codec) = send.ok_or(SdpError::NoCommonCodec)?;
    let telephone_event = te_candidates
        .iter()
        .find(|c| c.3 == codec.rtp_clock_rate())
        .or(te_candidates.first())
        .and_then(|&(format, send_pt, receive_pt, clock_rate)| {
            te_events(m, format).map(|events| NegotiatedTelephoneEvent {
                send_payload_type: send_pt,
                receive_payload_type: receive_pt,
                clock_rate,
                events,
            })
        });

    let ip = remote_ip(
        m.connection.as_ref().or(answer.connection.as_ref()),
        offer.local.socket_addr().is_ipv4(),
    )?;
    let remote_direction = remote_direction(answer, m, ip.is_none());
    let direction = remote_direction.reversed().intersect(offer.direction);
    let opus = (codec == Codec::Opus).then(|| OpusParams::parse(m.fmtp(format).unwrap_or("")));
    let ptime = send_ptime(codec, m, opus.as_ref(), offer.ptime, offer.frame_ms);
    let rtcp_mux = offer.rtcp_mux && m.rtcp_mux;
    let (remote_rtp, remote_rtcp) = remote_addrs(ip, m.port, rtcp_mux, m.rtcp.as_ref());

    let media = NegotiatedMedia {
        media_index: offer.audio_index,
        remote_rtp,
        remote_rtcp,
        rtcp_mux,
        codec: negotiated_codec(codec, pt, opus),
        receive_codecs,
        telephone_event,
        ptime_ms: ptime,
        direction,
        remote_direction,
    };
    session.commit(&offer.sdp.media, media.clone(), offer.direction);
    Ok(media)
}

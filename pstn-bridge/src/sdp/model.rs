//! The typed session description (RFC 4566) and its serializer.
//!
//! The model interprets what negotiation needs (origin, connection, m-lines, payload
//! mappings, packet times, direction, RTCP) and keeps everything else, unknown attributes
//! and informational lines included, in order. Serializing writes the lines in the order
//! RFC 4566 section 5 prescribes, with CRLF line ends; parsing a serialized description
//! gives back an equal value (the round trip is semantic: the attributes we interpret are
//! written in a fixed order, not necessarily the one they were received in).

use std::fmt;
use std::net::IpAddr;

/// The address type of `o=`, `c=` and `a=rtcp` (`IP4` or `IP6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrType {
    /// `IP4`.
    Ip4,
    /// `IP6`.
    Ip6,
}

impl AddrType {
    /// The address type of an IP address.
    pub const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddrType::Ip4,
            IpAddr::V6(_) => AddrType::Ip6,
        }
    }

    const fn token(self) -> &'static str {
        match self {
            AddrType::Ip4 => "IP4",
            AddrType::Ip6 => "IP6",
        }
    }
}

/// An address in `o=`, `c=` or `a=rtcp`: an IP literal of the declared family, or
/// anything else (a host name, or a literal of the wrong family), kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IP literal matching the address type.
    Ip(IpAddr),
    /// A host name (or an unparsable literal) with its declared address type.
    Host {
        /// The declared address type.
        addr_type: AddrType,
        /// The text of the address.
        name: String,
    },
}

impl Address {
    /// The IP address, if this is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Host { .. } => None,
        }
    }

    /// The declared address type.
    pub fn addr_type(&self) -> AddrType {
        match self {
            Address::Ip(ip) => AddrType::of(*ip),
            Address::Host { addr_type, .. } => *addr_type,
        }
    }
}

impl fmt::Display for Address {
    /// `IN IP4 192.0.2.1`: network type, address type and address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "IN {} {}", AddrType::of(*ip).token(), ip),
            Address::Host { addr_type, name } => write!(f, "IN {} {}", addr_type.token(), name),
        }
    }
}

/// The `o=` line: who created the session, and the version of this description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The originator's user name (`-` when none).
    pub username: String,
    /// The session id, constant for the life of the session.
    pub session_id: u64,
    /// The version, incremented by one on every changed description (RFC 3264 section 8).
    pub session_version: u64,
    /// The originator's address.
    pub address: Address,
}

/// A `c=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The connection address; `0.0.0.0` is the RFC 2543 hold address.
    pub address: Address,
    /// The multicast `/ttl[/count]` suffix without its first slash, if any.
    pub multicast: Option<String>,
}

impl Connection {
    /// A unicast connection to `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Connection {
            address: Address::Ip(ip),
            multicast: None,
        }
    }

    /// True for the old-style hold address (`0.0.0.0`, or `::` by analogy).
    pub fn is_hold_address(&self) -> bool {
        self.address.ip().is_some_and(|ip| ip.is_unspecified())
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address)?;
        if let Some(suffix) = &self.multicast {
            write!(f, "/{suffix}")?;
        }
        Ok(())
    }
}

/// The media direction attribute (RFC 3264 section 5.1), from the point of view of the
/// party whose description carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// `a=sendrecv`, also the default when no direction is given.
    #[default]
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The direction that sends when `send` and receives when `recv`.
    pub const fn from_flags(send: bool, recv: bool) -> Self {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// Whether this side sends media.
    pub const fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives media.
    pub const fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The same stream seen from the other side: sendonly becomes recvonly.
    pub const fn reversed(self) -> Self {
        Direction::from_flags(self.receives(), self.sends())
    }

    /// Sends only if both send, receives only if both receive.
    pub const fn intersect(self, other: Direction) -> Self {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }

    /// The attribute name (`sendrecv`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    pub(crate) fn from_attribute(name: &str) -> Option<Self> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| name.eq_ignore_ascii_case(d.as_str()))
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The media type of an m-line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// `audio`.
    Audio,
    /// `video`.
    Video,
    /// `image` (T.38 fax).
    Image,
    /// `application`.
    Application,
    /// `text`.
    Text,
    /// `message`.
    Message,
    /// Any other token, kept so the answer can reject it in place.
    Other(String),
}

impl MediaKind {
    pub(crate) fn parse(token: &str) -> Self {
        const KNOWN: [MediaKind; 6] = [
            MediaKind::Audio,
            MediaKind::Video,
            MediaKind::Image,
            MediaKind::Application,
            MediaKind::Text,
            MediaKind::Message,
        ];
        KNOWN
            .into_iter()
            .find(|k| token.eq_ignore_ascii_case(k.as_str()))
            .unwrap_or_else(|| MediaKind::Other(token.to_owned()))
    }

    /// The token on the m-line.
    pub fn as_str(&self) -> &str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Image => "image",
            MediaKind::Application => "application",
            MediaKind::Text => "text",
            MediaKind::Message => "message",
            MediaKind::Other(s) => s,
        }
    }
}

/// The transport protocol of an m-line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `RTP/AVP`: plain RTP, the only transport we accept for now.
    RtpAvp,
    /// `RTP/AVPF` (RFC 4585).
    RtpAvpf,
    /// `RTP/SAVP`: SRTP, keyed by SDES `a=crypto` in SIP (RFC 4568).
    RtpSavp,
    /// `RTP/SAVPF`.
    RtpSavpf,
    /// `UDP/TLS/RTP/SAVP`: DTLS-SRTP (RFC 5764).
    UdpTlsRtpSavp,
    /// `UDP/TLS/RTP/SAVPF`: DTLS-SRTP with feedback, as WebRTC uses.
    UdpTlsRtpSavpf,
    /// `udptl`: T.38 fax.
    Udptl,
    /// Any other token.
    Other(String),
}

impl Transport {
    pub(crate) fn parse(token: &str) -> Self {
        const KNOWN: [(&str, Transport); 7] = [
            ("RTP/AVP", Transport::RtpAvp),
            ("RTP/AVPF", Transport::RtpAvpf),
            ("RTP/SAVP", Transport::RtpSavp),
            ("RTP/SAVPF", Transport::RtpSavpf),
            ("UDP/TLS/RTP/SAVP", Transport::UdpTlsRtpSavp),
            ("UDP/TLS/RTP/SAVPF", Transport::UdpTlsRtpSavpf),
            ("udptl", Transport::Udptl),
        ];
        KNOWN
            .into_iter()
            .find(|(name, _)| token.eq_ignore_ascii_case(name))
            .map_or_else(|| Transport::Other(token.to_owned()), |(_, t)| t)
    }

    /// The token on the m-line.
    pub fn as_str(&self) -> &str {
        match self {
            Transport::RtpAvp => "RTP/AVP",
            Transport::RtpAvpf => "RTP/AVPF",
            Transport::RtpSavp => "RTP/SAVP",
            Transport::RtpSavpf => "RTP/SAVPF",
            Transport::UdpTlsRtpSavp => "UDP/TLS/RTP/SAVP",
            Transport::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
            Transport::Udptl => "udptl",
            Transport::Other(s) => s,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `a=` attribute we do not interpret, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The name, before the first `:`.
    pub name: String,
    /// The value after the first `:`, or `None` for a flag attribute.
    pub value: Option<String>,
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}:{}", self.name, v),
            None => f.write_str(&self.name),
        }
    }
}

/// An `a=rtpmap` attribute: payload type to encoding (RFC 4566 section 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// The RTP payload type, 0..=127.
    pub payload_type: u8,
    /// The encoding name as written (compare case-insensitively).
    pub encoding: String,
    /// The RTP clock rate in Hz.
    pub clock_rate: u32,
    /// The channel count, when given.
    pub channels: Option<u16>,
}

impl fmt::Display for RtpMap {
    /// The attribute value, `101 telephone-event/8000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.payload_type, self.encoding, self.clock_rate
        )?;
        if let Some(ch) = self.channels {
            write!(f, "/{ch}")?;
        }
        Ok(())
    }
}

/// An `a=fmtp` attribute: format parameters, kept as text and interpreted per codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    /// The format (payload type) it applies to.
    pub format: String,
    /// The parameter text after the format.
    pub params: String,
}

/// An `a=rtcp` attribute (RFC 3605): where the peer wants RTCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtcp {
    /// The RTCP port.
    pub port: u16,
    /// The RTCP address, when it differs from the m-line's.
    pub address: Option<Address>,
}

/// A line we keep but do not interpret (`i=`, `u=`, `e=`, `p=`, `t=`, `r=`, `z=`, `k=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherLine {
    /// The type letter.
    pub kind: char,
    /// The text after `=`.
    pub value: String,
}

/// One m-line and its media-level lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// The media type.
    pub kind: MediaKind,
    /// The transport port; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// The `/<number of ports>` suffix, if any.
    pub port_count: Option<u16>,
    /// The transport protocol.
    pub transport: Transport,
    /// The formats in order of preference (payload type numbers for RTP).
    pub formats: Vec<String>,
    /// The media-level `c=`, overriding the session-level one.
    pub connection: Option<Connection>,
    /// `b=` lines, verbatim (`AS:64`).
    pub bandwidth: Vec<String>,
    /// `a=rtpmap` attributes, in order.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` attributes, in order.
    pub fmtps: Vec<Fmtp>,
    /// `a=ptime` in milliseconds (a fractional value is truncated).
    pub ptime: Option<u32>,
    /// `a=maxptime` in milliseconds.
    pub maxptime: Option<u32>,
    /// The media-level direction, overriding the session-level one.
    pub direction: Option<Direction>,
    /// `a=rtcp-mux` (RFC 5761).
    pub rtcp_mux: bool,
    /// `a=rtcp` (RFC 3605).
    pub rtcp: Option<Rtcp>,
    /// Other attributes, in order.
    pub attributes: Vec<Attribute>,
    /// `i=` and `k=` lines, in order.
    pub other_lines: Vec<OtherLine>,
}

impl MediaDescription {
    /// An m-line with nothing but its first line.
    pub fn new(kind: MediaKind, port: u16, transport: Transport, formats: Vec<String>) -> Self {
        MediaDescription {
            kind,
            port,
            port_count: None,
            transport,
            formats,
            connection: None,
            bandwidth: Vec::new(),
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            ptime: None,
            maxptime: None,
            direction: None,
            rtcp_mux: false,
            rtcp: None,
            attributes: Vec::new(),
            other_lines: Vec::new(),
        }
    }

    /// The explicit `a=rtpmap` of a payload type (the first one, if repeated).
    pub fn explicit_rtpmap(&self, payload_type: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.payload_type == payload_type)
    }

    /// The mapping of a payload type: the explicit `a=rtpmap`, else the RFC 3551 static
    /// assignment (so `m=audio ... 0 8` without rtpmap still means PCMU and PCMA).
    pub fn rtpmap(&self, payload_type: u8) -> Option<RtpMap> {
        self.explicit_rtpmap(payload_type)
            .cloned()
            .or_else(|| super::codec::static_rtpmap(payload_type))
    }

    /// The `a=fmtp` parameters of a format (the first one, if repeated).
    pub fn fmtp(&self, format: &str) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|f| f.format == format)
            .map(|f| f.params.as_str())
    }

    /// The formats that are RTP payload types (0..=127), in order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok().filter(|pt| *pt <= 127))
    }

    /// A copy of this m-line with port 0 and only the first line, as an answer rejects a
    /// stream (RFC 3264 section 6) and a re-offer keeps a rejected one (section 8).
    pub fn rejected(&self) -> Self {
        MediaDescription::new(
            self.kind.clone(),
            0,
            self.transport.clone(),
            self.formats.clone(),
        )
    }

    /// Puts the fmtps in the order they are written in: after their rtpmap, in rtpmap
    /// order, then those without one (a stable sort: fmtp order carries no meaning, and
    /// parsing normalises it so that a round trip gives an equal value).
    pub(crate) fn normalize_fmtp_order(&mut self) {
        let rtpmaps = &self.rtpmaps;
        self.fmtps.sort_by_key(|f| {
            rtpmaps
                .iter()
                .position(|m| fmtp_is_for(f, m))
                .unwrap_or(usize::MAX)
        });
    }

    fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "m={} {}", self.kind.as_str(), self.port)?;
        if let Some(n) = self.port_count {
            write!(out, "/{n}")?;
        }
        write!(out, " {}", self.transport)?;
        for f in &self.formats {
            write!(out, " {f}")?;
        }
        out.write_str("\r\n")?;
        for line in self.other_lines.iter().filter(|l| l.kind == 'i') {
            write!(out, "i={}\r\n", line.value)?;
        }
        if let Some(c) = &self.connection {
            write!(out, "c={c}\r\n")?;
        }
        for b in &self.bandwidth {
            write!(out, "b={b}\r\n")?;
        }
        for line in self.other_lines.iter().filter(|l| l.kind != 'i') {
            write!(out, "{}={}\r\n", line.kind, line.value)?;
        }
        for (i, map) in self.rtpmaps.iter().enumerate() {
            write!(out, "a=rtpmap:{map}\r\n")?;
            // Each fmtp directly after the first rtpmap of its format, as most stacks write.
            let first = !self.rtpmaps[..i]
                .iter()
                .any(|m| m.payload_type == map.payload_type);
            for fmtp in self.fmtps.iter().filter(|f| first && fmtp_is_for(f, map)) {
                write!(out, "a=fmtp:{} {}\r\n", fmtp.format, fmtp.params)?;
            }
        }
        for fmtp in &self.fmtps {
            let mapped = self.rtpmaps.iter().any(|m| fmtp_is_for(fmtp, m));
            if !mapped {
                write!(out, "a=fmtp:{} {}\r\n", fmtp.format, fmtp.params)?;
            }
        }
        if let Some(p) = self.ptime {
            write!(out, "a=ptime:{p}\r\n")?;
        }
        if let Some(p) = self.maxptime {
            write!(out, "a=maxptime:{p}\r\n")?;
        }
        for a in &self.attributes {
            write!(out, "a={a}\r\n")?;
        }
        if let Some(r) = &self.rtcp {
            write!(out, "a=rtcp:{}", r.port)?;
            if let Some(addr) = &r.address {
                write!(out, " {addr}")?;
            }
            out.write_str("\r\n")?;
        }
        if self.rtcp_mux {
            out.write_str("a=rtcp-mux\r\n")?;
        }
        if let Some(d) = self.direction {
            write!(out, "a={d}\r\n")?;
        }
        Ok(())
    }
}

/// Whether an fmtp belongs to an rtpmap: its format is the payload type's decimal text.
fn fmtp_is_for(fmtp: &Fmtp, map: &RtpMap) -> bool {
    fmtp.format == map.payload_type.to_string()
}

/// A whole session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// The `o=` line.
    pub origin: Origin,
    /// The `s=` text (empty is written as `s= `, as RFC 4566 section 5.3 asks).
    pub session_name: String,
    /// The session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level `b=` lines, verbatim.
    pub bandwidth: Vec<String>,
    /// The session-level direction, the default for every m-line.
    pub direction: Option<Direction>,
    /// Other session-level attributes, in order.
    pub attributes: Vec<Attribute>,
    /// `i=`, `u=`, `e=`, `p=`, `t=`, `r=`, `z=`, `k=` lines, in order. Parsing adds
    /// `t=0 0` when the peer left `t=` out.
    pub other_lines: Vec<OtherLine>,
    /// The m-lines, in order.
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// The serialized text, with CRLF line ends.
    pub fn to_sdp(&self) -> String {
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let o = &self.origin;
        write!(
            out,
            "v=0\r\no={} {} {} {}\r\n",
            o.username, o.session_id, o.session_version, o.address
        )?;
        if self.session_name.is_empty() {
            out.write_str("s= \r\n")?;
        } else {
            write!(out, "s={}\r\n", self.session_name)?;
        }
        let others = |kinds: &'static [char]| {
            self.other_lines
                .iter()
                .filter(move |l| kinds.contains(&l.kind))
        };
        for line in others(&['i', 'u', 'e', 'p']) {
            write!(out, "{}={}\r\n", line.kind, line.value)?;
        }
        if let Some(c) = &self.connection {
            write!(out, "c={c}\r\n")?;
        }
        for b in &self.bandwidth {
            write!(out, "b={b}\r\n")?;
        }
        for line in others(&['t', 'r', 'z', 'k']) {
            write!(out, "{}={}\r\n", line.kind, line.value)?;
        }
        for a in &self.attributes {
            write!(out, "a={a}\r\n")?;
        }
        if let Some(d) = self.direction {
            write!(out, "a={d}\r\n")?;
        }
        for m in &self.media {
            m.write(out)?;
        }
        Ok(())
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_reverse_and_intersect_as_send_and_receive_flags() {
        use Direction::*;
        assert_eq!(SendOnly.reversed(), RecvOnly);
        assert_eq!(RecvOnly.reversed(), SendOnly);
        assert_eq!(SendRecv.reversed(), SendRecv);
        assert_eq!(Inactive.reversed(), Inactive);
        assert_eq!(SendRecv.intersect(SendOnly), SendOnly);
        assert_eq!(RecvOnly.intersect(SendOnly), Inactive);
        for d in [SendRecv, SendOnly, RecvOnly, Inactive] {
            assert_eq!(Direction::from_flags(d.sends(), d.receives()), d);
            assert_eq!(Direction::from_attribute(d.as_str()), Some(d));
        }
        assert_eq!(Direction::from_attribute("SENDONLY"), Some(SendOnly));
        assert_eq!(Direction::from_attribute("send"), None);
    }

    #[test]
    fn known_transports_and_media_kinds_are_canonical_and_others_kept() {
        assert_eq!(Transport::parse("rtp/avp"), Transport::RtpAvp);
        assert_eq!(Transport::parse("UDPTL"), Transport::Udptl);
        assert_eq!(Transport::parse("TCP/MRCPv2").as_str(), "TCP/MRCPv2");
        assert_eq!(MediaKind::parse("Audio"), MediaKind::Audio);
        assert_eq!(MediaKind::parse("data").as_str(), "data");
    }

    #[test]
    fn a_rejected_copy_keeps_type_transport_and_formats_and_nothing_else() {
        let mut m = MediaDescription::new(
            MediaKind::Video,
            9078,
            Transport::RtpAvp,
            vec!["96".to_owned(), "97".to_owned()],
        );
        m.direction = Some(Direction::SendRecv);
        m.rtcp_mux = true;
        let r = m.rejected();
        assert_eq!(r.port, 0);
        assert_eq!(r.formats, m.formats);
        assert_eq!(r.direction, None);
        assert!(!r.rtcp_mux);
        let mut out = String::new();
        r.write(&mut out).unwrap();
        assert_eq!(out, "m=video 0 RTP/AVP 96 97\r\n");
    }
}

//! The SDP parser: strict where negotiation depends on a field, tolerant elsewhere.
//!
//! Strict: `v=0` first, exactly one `o=`, the syntax of `c=`, `m=`, `a=rtpmap`,
//! `a=ptime`, `a=maxptime`, `a=rtcp` and direction attributes, at most one direction and
//! one `c=` per level, type letters RFC 4566 defines (section 5: a description with an
//! unknown type letter is ignored as a whole, so it is an error here), no NUL or stray CR.
//! Tolerant, because deployed stacks do these: LF-only line ends, empty lines, trailing
//! white space, a missing `s=` or `t=`, `o=` user names with spaces, lines in another
//! order than RFC 4566 prescribes within a level, unknown media types and transports
//! (kept, so the answer can reject them in place), attribute names in any letter case,
//! non-UTF-8 text (replaced by U+FFFD).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::SdpError;
use super::model::{
    AddrType, Address, Attribute, Connection, Direction, Fmtp, MediaDescription, MediaKind, Origin,
    OtherLine, Rtcp, RtpMap, SessionDescription, Transport,
};

impl SessionDescription {
    /// Parses a session description (a SIP message body).
    pub fn parse(input: &[u8]) -> Result<Self, SdpError> {
        let text = String::from_utf8_lossy(input);
        Parser::default().run(&text)
    }
}

impl std::str::FromStr for SessionDescription {
    type Err = SdpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionDescription::parse(s.as_bytes())
    }
}

#[derive(Default)]
struct Parser {
    seen_version: bool,
    origin: Option<Origin>,
    session_name: Option<String>,
    connection: Option<Connection>,
    bandwidth: Vec<String>,
    direction: Option<Direction>,
    attributes: Vec<Attribute>,
    other_lines: Vec<OtherLine>,
    media: Vec<MediaDescription>,
}

impl Parser {
    fn run(mut self, text: &str) -> Result<SessionDescription, SdpError> {
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let line = line.trim_end_matches([' ', '\t']);
            if line.is_empty() {
                continue;
            }
            if line.contains(['\0', '\r']) {
                return Err(SdpError::malformed(line_no, "control character in a line"));
            }
            let mut chars = line.chars();
            let (kind, value) = match (chars.next(), chars.next()) {
                (Some(k), Some('=')) if k.is_ascii_lowercase() => (k, chars.as_str()),
                _ => return Err(SdpError::malformed(line_no, "not a <type>=<value> line")),
            };
            if !self.seen_version {
                if kind != 'v' {
                    return Err(SdpError::malformed(line_no, "the first line is not v="));
                }
                if value.trim() != "0" {
                    return Err(SdpError::malformed(line_no, "unsupported SDP version"));
                }
                self.seen_version = true;
                continue;
            }
            self.line(line_no, kind, value)?;
        }
        if !self.seen_version {
            return Err(SdpError::malformed(0, "empty session description"));
        }
        let origin = self.origin.ok_or(SdpError::malformed(0, "no o= line"))?;
        for media in &mut self.media {
            media.normalize_fmtp_order();
        }
        if !self.other_lines.iter().any(|l| l.kind == 't') {
            self.other_lines.push(OtherLine {
                kind: 't',
                value: "0 0".to_owned(),
            });
        }
        Ok(SessionDescription {
            origin,
            session_name: self.session_name.unwrap_or_default(),
            connection: self.connection,
            bandwidth: self.bandwidth,
            direction: self.direction,
            attributes: self.attributes,
            other_lines: self.other_lines,
            media: self.media,
        })
    }

    fn line(&mut self, line_no: usize, kind: char, value: &str) -> Result<(), SdpError> {
        if kind == 'm' {
            self.media.push(parse_media_line(line_no, value)?);
            return Ok(());
        }
        if let Some(media) = self.media.last_mut() {
            return media_line(media, line_no, kind, value);
        }
        match kind {
            'v' => Err(SdpError::malformed(line_no, "repeated v= line")),
            'o' if self.origin.is_some() => Err(SdpError::malformed(line_no, "repeated o= line")),
            'o' => {
                self.origin = Some(parse_origin(line_no, value)?);
                Ok(())
            }
            's' if self.session_name.is_some() => {
                Err(SdpError::malformed(line_no, "repeated s= line"))
            }
            's' => {
                // `s= ` is the RFC 4566 way to say "no name".
                self.session_name = Some(value.trim().to_owned());
                Ok(())
            }
            'c' if self.connection.is_some() => Err(SdpError::malformed(
                line_no,
                "repeated session-level c= line",
            )),
            'c' => {
                self.connection = Some(parse_connection(line_no, value)?);
                Ok(())
            }
            'b' => {
                self.bandwidth.push(value.to_owned());
                Ok(())
            }
            'a' => {
                let attr = parse_attribute(line_no, value)?;
                match Direction::from_attribute(&attr.name) {
                    Some(d) => set_direction(&mut self.direction, d, line_no),
                    None => {
                        self.attributes.push(attr);
                        Ok(())
                    }
                }
            }
            'i' | 'u' | 'e' | 'p' | 't' | 'r' | 'z' | 'k' => {
                self.other_lines.push(OtherLine {
                    kind,
                    value: value.to_owned(),
                });
                Ok(())
            }
            _ => Err(SdpError::malformed(line_no, "unknown line type")),
        }
    }
}

fn media_line(
    media: &mut MediaDescription,
    line_no: usize,
    kind: char,
    value: &str,
) -> Result<(), SdpError> {
    match kind {
        'c' if media.connection.is_some() => {
            Err(SdpError::malformed(line_no, "repeated media-level c= line"))
        }
        'c' => {
            media.connection = Some(parse_connection(line_no, value)?);
            Ok(())
        }
        'b' => {
            media.bandwidth.push(value.to_owned());
            Ok(())
        }
        'i' | 'k' => {
            media.other_lines.push(OtherLine {
                kind,
                value: value.to_owned(),
            });
            Ok(())
        }
        'a' => media_attribute(media, line_no, parse_attribute(line_no, value)?),
        'v' | 'o' | 's' | 'u' | 'e' | 'p' | 't' | 'r' | 'z' => Err(SdpError::malformed(
            line_no,
            "session-level line inside a media description",
        )),
        _ => Err(SdpError::malformed(line_no, "unknown line type")),
    }
}

fn media_attribute(
    media: &mut MediaDescription,
    line_no: usize,
    attr: Attribute,
) -> Result<(), SdpError> {
    if let Some(d) = Direction::from_attribute(&attr.name) {
        return set_direction(&mut media.direction, d, line_no);
    }
    let name = attr.name.to_ascii_lowercase();
    let value = attr.value.as_deref().unwrap_or("");
    match name.as_str() {
        "rtpmap" => media.rtpmaps.push(parse_rtpmap(line_no, value)?),
        "fmtp" => {
            let (format, params) = value.split_once([' ', '\t']).unwrap_or((value, ""));
            if format.is_empty() {
                return Err(SdpError::malformed(line_no, "a=fmtp without a format"));
            }
            media.fmtps.push(Fmtp {
                format: format.to_owned(),
                params: params.trim().to_owned(),
            });
        }
        "ptime" => media.ptime = Some(parse_ms(line_no, value)?),
        "maxptime" => media.maxptime = Some(parse_ms(line_no, value)?),
        "rtcp-mux" => media.rtcp_mux = true,
        "rtcp" => media.rtcp = Some(parse_rtcp(line_no, value)?),
        _ => media.attributes.push(attr),
    }
    Ok(())
}

fn set_direction(
    slot: &mut Option<Direction>,
    d: Direction,
    line_no: usize,
) -> Result<(), SdpError> {
    match slot {
        Some(existing) if *existing != d => Err(SdpError::malformed(
            line_no,
            "conflicting direction attributes",
        )),
        _ => {
            *slot = Some(d);
            Ok(())
        }
    }
}

fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split([' ', '\t']).filter(|t| !t.is_empty())
}

fn parse_origin(line_no: usize, value: &str) -> Result<Origin, SdpError> {
    let fields: Vec<&str> = tokens(value).collect();
    // The last five fields are fixed; anything before them is the user name (some stacks
    // put spaces in it).
    let Some(split) = fields.len().checked_sub(5).filter(|n| *n >= 1) else {
        return Err(SdpError::malformed(line_no, "o= needs six fields"));
    };
    let (user, rest) = fields.split_at(split);
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| SdpError::malformed(line_no, "o= session id or version is not a number"))
    };
    Ok(Origin {
        username: user.join(" "),
        session_id: number(rest[0])?,
        session_version: number(rest[1])?,
        address: parse_address(line_no, rest[2], rest[3], rest[4])?.0,
    })
}

/// Parses `<nettype> <addrtype> <address>`; returns the address and any `/suffix`.
fn parse_address(
    line_no: usize,
    net: &str,
    addr_type: &str,
    address: &str,
) -> Result<(Address, Option<String>), SdpError> {
    if !net.eq_ignore_ascii_case("IN") {
        return Err(SdpError::UnsupportedAddress("network type other than IN"));
    }
    let addr_type = if addr_type.eq_ignore_ascii_case("IP4") {
        AddrType::Ip4
    } else if addr_type.eq_ignore_ascii_case("IP6") {
        AddrType::Ip6
    } else {
        return Err(SdpError::malformed(
            line_no,
            "address type is not IP4 or IP6",
        ));
    };
    let (host, suffix) = match address.split_once('/') {
        Some((h, s)) => (h, Some(s.to_owned())),
        None => (address, None),
    };
    if host.is_empty() {
        return Err(SdpError::malformed(line_no, "empty address"));
    }
    let ip = match addr_type {
        AddrType::Ip4 => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        AddrType::Ip6 => host.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
    };
    let address = match ip {
        Some(ip) => Address::Ip(ip),
        None => Address::Host {
            addr_type,
            name: host.to_owned(),
        },
    };
    Ok((address, suffix))
}

fn parse_connection(line_no: usize, value: &str) -> Result<Connection, SdpError> {
    let fields: Vec<&str> = tokens(value).collect();
    let [net, addr_type, address] = fields[..] else {
        return Err(SdpError::malformed(line_no, "c= needs three fields"));
    };
    let (address, multicast) = parse_address(line_no, net, addr_type, address)?;
    Ok(Connection { address, multicast })
}

fn parse_media_line(line_no: usize, value: &str) -> Result<MediaDescription, SdpError> {
    let mut fields = tokens(value);
    let (Some(kind), Some(port), Some(transport)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(SdpError::malformed(
            line_no,
            "m= needs media, port, transport, formats",
        ));
    };
    let formats: Vec<String> = fields.map(str::to_owned).collect();
    if formats.is_empty() {
        return Err(SdpError::malformed(line_no, "m= without formats"));
    }
    let (port, count) = match port.split_once('/') {
        Some((p, n)) => (p, Some(n)),
        None => (port, None),
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| SdpError::malformed(line_no, "m= port is not 0..=65535"))?;
    let port_count =
        match count {
            Some(n) => Some(n.parse::<u16>().ok().filter(|n| *n >= 1).ok_or(
                SdpError::malformed(line_no, "m= port count is not a number"),
            )?),
            None => None,
        };
    let mut media = MediaDescription::new(
        MediaKind::parse(kind),
        port,
        Transport::parse(transport),
        formats,
    );
    media.port_count = port_count;
    Ok(media)
}

fn parse_attribute(line_no: usize, value: &str) -> Result<Attribute, SdpError> {
    let (name, value) = match value.split_once(':') {
        Some((n, v)) => (n, Some(v.to_owned())),
        None => (value, None),
    };
    if name.is_empty() || name.contains([' ', '\t']) {
        return Err(SdpError::malformed(line_no, "bad attribute name"));
    }
    Ok(Attribute {
        name: name.to_owned(),
        value,
    })
}

fn parse_rtpmap(line_no: usize, value: &str) -> Result<RtpMap, SdpError> {
    let bad = SdpError::malformed(line_no, "bad a=rtpmap");
    let mut fields = tokens(value);
    let (Some(pt), Some(encoding), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad);
    };
    let payload_type = pt
        .parse::<u8>()
        .ok()
        .filter(|pt| *pt <= 127)
        .ok_or(bad.clone())?;
    let mut parts = encoding.split('/');
    let name = parts.next().filter(|n| !n.is_empty()).ok_or(bad.clone())?;
    let clock_rate = parts
        .next()
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|r| *r > 0)
        .ok_or(bad.clone())?;
    let channels = match parts.next() {
        Some(c) => Some(
            c.parse::<u16>()
                .ok()
                .filter(|c| *c > 0)
                .ok_or(bad.clone())?,
        ),
        None => None,
    };
    if parts.next().is_some() {
        return Err(bad);
    }
    Ok(RtpMap {
        payload_type,
        encoding: name.to_owned(),
        clock_rate,
        channels,
    })
}

/// A packet time in ms: an integer, or a decimal whose fraction is dropped (`20.0`).
fn parse_ms(line_no: usize, value: &str) -> Result<u32, SdpError> {
    let value = value.trim();
    let (int, frac) = value.split_once('.').unwrap_or((value, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(SdpError::malformed(line_no, "packet time is not a number"));
    }
    int.parse::<u32>()
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or(SdpError::malformed(line_no, "packet time out of range"))
}

fn parse_rtcp(line_no: usize, value: &str) -> Result<Rtcp, SdpError> {
    let fields: Vec<&str> = tokens(value).collect();
    let port = fields
        .first()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0)
        .ok_or(SdpError::malformed(line_no, "a=rtcp port is not 1..=65535"))?;
    let address = match fields.get(1..).unwrap_or_default() {
        [] => None,
        &[net, addr_type, address] => Some(parse_address(line_no, net, addr_type, address)?.0),
        _ => {
            return Err(SdpError::malformed(
                line_no,
                "a=rtcp needs a port and an address",
            ));
        }
    };
    Ok(Rtcp { port, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(extra: &str) -> Result<MediaDescription, SdpError> {
        let text = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0 101\r\n{extra}"
        );
        SessionDescription::parse(text.as_bytes()).map(|mut d| d.media.remove(0))
    }

    #[test]
    fn packet_times_accept_integers_and_decimals() {
        assert_eq!(media("a=ptime:20\r\n").unwrap().ptime, Some(20));
        assert_eq!(media("a=ptime:20.0\r\n").unwrap().ptime, Some(20));
        assert_eq!(media("a=maxptime: 150\r\n").unwrap().maxptime, Some(150));
        for bad in [
            "a=ptime:0\r\n",
            "a=ptime:x\r\n",
            "a=ptime:-20\r\n",
            "a=ptime\r\n",
            "a=ptime:2.\r\n",
        ] {
            assert!(media(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rtpmaps_are_checked() {
        let m = media("a=rtpmap:101 telephone-event/8000\r\n").unwrap();
        assert_eq!(m.rtpmaps[0].clock_rate, 8000);
        let m = media("a=rtpmap:96 opus/48000/2\r\n").unwrap();
        assert_eq!(m.rtpmaps[0].channels, Some(2));
        for bad in [
            "a=rtpmap:128 PCMU/8000\r\n",
            "a=rtpmap:0 PCMU/0\r\n",
            "a=rtpmap:0 /8000\r\n",
            "a=rtpmap:0 PCMU/8000/0\r\n",
            "a=rtpmap:0 PCMU/8000/1/1\r\n",
            "a=rtpmap:0 PCMU/8000 extra\r\n",
            "a=rtpmap:0\r\n",
        ] {
            assert!(media(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rtcp_takes_a_port_and_an_optional_address() {
        let m = media("a=rtcp:4001\r\n").unwrap();
        assert_eq!(
            m.rtcp,
            Some(Rtcp {
                port: 4001,
                address: None
            })
        );
        let m = media("a=rtcp:53020 IN IP6 2001:db8::1\r\n").unwrap();
        assert_eq!(
            m.rtcp.unwrap().address.unwrap().ip(),
            Some("2001:db8::1".parse().unwrap())
        );
        for bad in ["a=rtcp:0\r\n", "a=rtcp:\r\n", "a=rtcp:4001 IN IP4\r\n"] {
            assert!(media(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fmtp_keeps_its_parameters_and_needs_a_format() {
        let m = media("a=fmtp:101   0-15\r\n").unwrap();
        assert_eq!(m.fmtp("101"), Some("0-15"));
        assert!(media("a=fmtp:\r\n").is_err());
    }

    #[test]
    fn origin_user_names_with_spaces_are_kept_whole() {
        let d = SessionDescription::parse(b"v=0\no=Cisco SDP user 5 6 IN IP4 10.0.0.1\n").unwrap();
        assert_eq!(d.origin.username, "Cisco SDP user");
        assert_eq!((d.origin.session_id, d.origin.session_version), (5, 6));
        assert!(SessionDescription::parse(b"v=0\no=5 6 IN IP4 10.0.0.1\n").is_err());
    }

    #[test]
    fn addresses_of_the_wrong_family_or_names_are_kept_as_host_text() {
        let d = SessionDescription::parse(b"v=0\no=- 1 1 IN IP4 pbx.local\nc=IN IP6 192.0.2.1\n")
            .unwrap();
        assert_eq!(d.origin.address.ip(), None);
        let c = d.connection.unwrap();
        assert_eq!(c.address.addr_type(), AddrType::Ip6);
        assert_eq!(c.address.ip(), None);
        assert!(matches!(
            SessionDescription::parse(b"v=0\no=- 1 1 ATM NSAP 47.0005\n"),
            Err(SdpError::UnsupportedAddress(_))
        ));
        assert!(SessionDescription::parse(b"v=0\no=- 1 1 IN IP5 1.2.3.4\n").is_err());
    }

    #[test]
    fn port_counts_and_multicast_suffixes_are_kept() {
        let d = SessionDescription::parse(
            b"v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 224.2.1.1/127/3\nm=audio 4000/2 RTP/AVP 0\n",
        )
        .unwrap();
        assert_eq!(
            d.connection.as_ref().unwrap().multicast.as_deref(),
            Some("127/3")
        );
        assert_eq!(d.media[0].port_count, Some(2));
        assert!(
            d.to_sdp()
                .contains("c=IN IP4 224.2.1.1/127/3\r\nt=0 0\r\nm=audio 4000/2 RTP/AVP 0\r\n")
        );
    }

    #[test]
    fn lines_in_the_wrong_place_are_malformed() {
        let base = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n";
        for (extra, line) in [
            ("o=- 2 2 IN IP4 1.2.3.4\r\n", 3),
            ("v=0\r\n", 3),
            ("m=audio 1 RTP/AVP 0\r\nt=0 0\r\n", 4),
            ("c=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n", 4),
            (
                "m=audio 1 RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n",
                5,
            ),
            ("a=foo\rbar\r\n", 3),
            ("A=foo\r\n", 3),
            ("a=\r\n", 3),
            ("s=a\r\ns=b\r\n", 4),
        ] {
            match SessionDescription::parse(format!("{base}{extra}").as_bytes()) {
                Err(SdpError::Malformed { line: l, .. }) => assert_eq!(l, line, "{extra:?}"),
                other => panic!("{extra:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn non_utf8_text_is_replaced_not_refused() {
        let d = SessionDescription::parse(b"v=0\no=- 1 1 IN IP4 1.2.3.4\ns=Sitzung M\xfcller\n")
            .unwrap();
        assert_eq!(d.session_name, "Sitzung M\u{fffd}ller");
    }
}

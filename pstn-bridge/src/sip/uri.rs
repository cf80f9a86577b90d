//! URIs: `sip:`/`sips:` (RFC 3261 §19.1), `tel:` (RFC 3966) and any other scheme kept
//! as an opaque absolute URI (RFC 4475 `unkscm`, `novelsc`, `unksm2`).
//!
//! # Escapes
//!
//! `%HH` escapes are legal only in the user, password, parameter and header parts of a
//! SIP URI (and tel parameters). Each such part is an [`Escaped`]: it keeps the text as it
//! was on the wire, so re-serialising a URI writes exactly what was received (never
//! double-escaping), and decodes on demand ([`Escaped::decoded`]) into bytes, because a
//! decoded user part may hold any octet, `%00` included (RFC 4475 `escnull`). Comparison
//! ([`Uri::equivalent`], RFC 3261 §19.1.4) works on decoded values, once: `value%2541`
//! decodes to `value%41`, which is not `valueA` (RFC 4475 `esc01`).
//!
//! # Hosts
//!
//! IPv6 addresses appear only as references in brackets (RFC 5118 §4.2): `sip:2001:db8::10`
//! is a host `2001` with a bad port, so it is rejected, and `[2001:db8::10:5070]` is an
//! address without a port (§4.3). IPv6 literals are parsed by `std::net`, which rejects
//! the three-colon form RFC 3261's ABNF let through (§4.10). Host names follow RFC 3261
//! `hostname` (the last label starts with a letter), relaxed to allow `_` inside labels.
//!
//! Structural equality (`==`) compares the stored (escaped) forms; use
//! [`Uri::equivalent`] for the RFC's equivalence.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::scan::{is_unreserved, parse_digits};

/// Why a URI did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Missing or invalid scheme.
    #[error("missing or invalid URI scheme")]
    BadScheme,
    /// Invalid user or password part.
    #[error("invalid user or password part")]
    BadUserInfo,
    /// Invalid host.
    #[error("invalid host")]
    BadHost,
    /// Invalid or out-of-range port.
    #[error("invalid port")]
    BadPort,
    /// Invalid URI parameter.
    #[error("invalid URI parameter")]
    BadParam,
    /// Invalid URI header (`?name=value`).
    #[error("invalid URI header")]
    BadHeader,
    /// A `%` not followed by two hex digits.
    #[error("invalid % escape")]
    BadEscape,
    /// Invalid telephone number in a tel URI.
    #[error("invalid telephone number")]
    BadNumber,
    /// Character not allowed in an opaque URI.
    #[error("invalid character in URI")]
    BadChar,
}

/// The part of a URI an [`Escaped`] value belongs to; each allows a different set of
/// unescaped characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UriPart {
    /// `user` of a SIP URI.
    User,
    /// `password` of a SIP URI.
    Password,
    /// URI parameter name or value (SIP and tel).
    Param,
    /// URI header name or value (`?hname=hvalue`).
    Header,
}

impl UriPart {
    fn allows(self, b: u8) -> bool {
        is_unreserved(b)
            || match self {
                UriPart::User => b"&=+$,;?/".contains(&b),
                UriPart::Password => b"&=+$,".contains(&b),
                UriPart::Param => b"[]/:&+$".contains(&b),
                UriPart::Header => b"[]/?:+$".contains(&b),
            }
    }
}

/// A URI component in its escaped wire form, decoded on demand.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Escaped {
    part: UriPart,
    raw: String,
}

/// Checks that every `%` in `s` starts a `%HH` escape and every other byte is `allowed`.
fn check_escaped(s: &[u8], allowed: impl Fn(u8) -> bool, bad: UriError) -> Result<(), UriError> {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            match (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                (Some(_), Some(_)) => i += 3,
                _ => return Err(UriError::BadEscape),
            }
        } else if allowed(b) {
            i += 1;
        } else {
            return Err(bad);
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Escaped {
    /// Validates `raw` (wire form, escapes allowed) as a `part`. Empty is allowed here;
    /// the callers that need `1*` check it.
    pub fn parse(part: UriPart, raw: &str) -> Result<Self, UriError> {
        let bad = match part {
            UriPart::User | UriPart::Password => UriError::BadUserInfo,
            UriPart::Param => UriError::BadParam,
            UriPart::Header => UriError::BadHeader,
        };
        check_escaped(raw.as_bytes(), |b| part.allows(b), bad)?;
        Ok(Self {
            part,
            raw: raw.to_owned(),
        })
    }

    /// Escapes arbitrary `decoded` bytes for `part`: characters the part allows stay as
    /// they are, everything else becomes `%HH`.
    pub fn encode(part: UriPart, decoded: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut raw = String::with_capacity(decoded.len());
        for &b in decoded {
            if b != b'%' && part.allows(b) {
                raw.push(char::from(b));
            } else {
                // Both nibbles are below 16, inside HEX.
                raw.push('%');
                raw.push(char::from(HEX[usize::from(b >> 4)]));
                raw.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        Self { part, raw }
    }

    /// The part this value belongs to.
    pub fn part(&self) -> UriPart {
        self.part
    }

    /// The wire form, escapes intact.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the wire form is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The decoded octets (each `%HH` decoded once). Borrowed when there is no escape.
    pub fn decoded(&self) -> Cow<'_, [u8]> {
        if !self.raw.contains('%') {
            return Cow::Borrowed(self.raw.as_bytes());
        }
        let b = self.raw.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            // `parse` and `encode` only store well-formed escapes; a stray `%` would be
            // kept as it is.
            if c == b'%'
                && let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                )
            {
                out.push(h << 4 | l);
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        }
        Cow::Owned(out)
    }

    /// The decoded value as text, `None` when the decoded octets are not UTF-8.
    pub fn to_str(&self) -> Option<Cow<'_, str>> {
        match self.decoded() {
            Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
            Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
        }
    }

    fn decoded_eq(&self, other: &Escaped) -> bool {
        self.decoded() == other.decoded()
    }

    fn decoded_eq_ignore_case(&self, other: &Escaped) -> bool {
        self.decoded().eq_ignore_ascii_case(&other.decoded())
    }
}

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A validated host name (RFC 3261 `hostname`, `_` allowed inside labels), kept in the
/// case it was received in and compared case-insensitively by [`Host::equivalent`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName(String);

impl HostName {
    /// Validates `s` as a host name.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        let body = s.strip_suffix('.').unwrap_or(s);
        if body.is_empty() || body.len() > 255 {
            return Err(UriError::BadHost);
        }
        let mut last = "";
        for label in body.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                && b.first() != Some(&b'-')
                && b.last() != Some(&b'-');
            if !ok {
                return Err(UriError::BadHost);
            }
            last = label;
        }
        if !last.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) {
            return Err(UriError::BadHost);
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A host: name, IPv4 address or IPv6 address (written as a `[..]` reference).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name.
    Name(HostName),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address; displayed in brackets.
    Ipv6(Ipv6Addr),
}

impl Host {
    /// Parses a whole host: `[v6]`, dotted IPv4 or a host name.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(UriError::BadHost)?;
            return Ipv6Addr::from_str(inner)
                .map(Host::Ipv6)
                .map_err(|_| UriError::BadHost);
        }
        if let Ok(v4) = Ipv4Addr::from_str(s) {
            return Ok(Host::Ipv4(v4));
        }
        HostName::parse(s).map(Host::Name)
    }

    /// The address, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Name(_) => None,
            Host::Ipv4(a) => Some(IpAddr::V4(*a)),
            Host::Ipv6(a) => Some(IpAddr::V6(*a)),
        }
    }

    /// RFC 3261 §19.1.4 host comparison: names case-insensitively, addresses by value.
    pub fn equivalent(&self, other: &Host) -> bool {
        match (self, other) {
            (Host::Name(a), Host::Name(b)) => a.0.eq_ignore_ascii_case(&b.0),
            _ => self == other,
        }
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Host::Ipv4(a),
            IpAddr::V6(a) => Host::Ipv6(a),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(&n.0),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into host and port.
pub(crate) fn parse_hostport(s: &str) -> Result<(Host, Option<u16>), UriError> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or(UriError::BadHost)?;
        let (h, rest) = s.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return Err(UriError::BadHost),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host = Host::parse(host)?;
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<u16, UriError> {
    parse_digits(p.as_bytes())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or(UriError::BadPort)
}

/// A URI parameter: `;name[=value]`, both escaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UriParam {
    name: Escaped,
    value: Option<Escaped>,
}

impl UriParam {
    /// A parameter from decoded text; characters outside the parameter set are escaped.
    pub fn new(name: &str, value: Option<&str>) -> Result<Self, UriError> {
        if name.is_empty() || value.is_some_and(str::is_empty) {
            return Err(UriError::BadParam);
        }
        Ok(Self {
            name: Escaped::encode(UriPart::Param, name.as_bytes()),
            value: value.map(|v| Escaped::encode(UriPart::Param, v.as_bytes())),
        })
    }

    fn parse(raw: &str) -> Result<Self, UriError> {
        let (n, v) = match raw.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (raw, None),
        };
        if n.is_empty() || v.is_some_and(str::is_empty) {
            return Err(UriError::BadParam);
        }
        Ok(Self {
            name: Escaped::parse(UriPart::Param, n)?,
            value: v.map(|v| Escaped::parse(UriPart::Param, v)).transpose()?,
        })
    }

    /// The name (escaped form kept).
    pub fn name(&self) -> &Escaped {
        &self.name
    }

    /// The value, if any.
    pub fn value(&self) -> Option<&Escaped> {
        self.value.as_ref()
    }

    fn is_named(&self, name: &str) -> bool {
        self.name.decoded().eq_ignore_ascii_case(name.as_bytes())
    }
}

impl fmt::Display for UriParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.as_str())?;
        if let Some(v) = &self.value {
            write!(f, "={}", v.as_str())?;
        }
        Ok(())
    }
}

/// A URI header: `?name=value` (RFC 3261 §19.1.1), both escaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UriHeader {
    name: Escaped,
    value: Escaped,
}

impl UriHeader {
    /// The header name.
    pub fn name(&self) -> &Escaped {
        &self.name
    }

    /// The header value, escapes intact (e.g. `%3Csip:sip.example.com%3E`).
    pub fn value(&self) -> &Escaped {
        &self.value
    }
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SipUri {
    secure: bool,
    user: Option<Escaped>,
    password: Option<Escaped>,
    host: Host,
    port: Option<u16>,
    params: Vec<UriParam>,
    headers: Vec<UriHeader>,
}

impl SipUri {
    /// `sip:host`, with no user, port, parameters or headers.
    pub fn new(host: Host) -> Self {
        Self {
            secure: false,
            user: None,
            password: None,
            host,
            port: None,
            params: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Parses the part after `sip:` / `sips:`.
    fn parse_after_scheme(secure: bool, s: &str) -> Result<Self, UriError> {
        // `@` is legal in no part but userinfo, so the first one ends the userinfo.
        let (userinfo, rest) = match s.split_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, s),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pw) = match u.split_once(':') {
                    Some((user, pw)) => (user, Some(pw)),
                    None => (u, None),
                };
                if user.is_empty() {
                    return Err(UriError::BadUserInfo);
                }
                (
                    Some(Escaped::parse(UriPart::User, user)?),
                    pw.map(|p| Escaped::parse(UriPart::Password, p))
                        .transpose()?,
                )
            }
        };
        let hp_end = rest.find([';', '?']).unwrap_or(rest.len());
        let (host, port) = parse_hostport(&rest[..hp_end])?;
        let mut tail = &rest[hp_end..];
        let mut params = Vec::new();
        while let Some(t) = tail.strip_prefix(';') {
            let end = t.find([';', '?']).unwrap_or(t.len());
            params.push(UriParam::parse(&t[..end])?);
            tail = &t[end..];
        }
        let mut headers = Vec::new();
        if let Some(h) = tail.strip_prefix('?') {
            for pair in h.split('&') {
                let (n, v) = pair.split_once('=').ok_or(UriError::BadHeader)?;
                if n.is_empty() {
                    return Err(UriError::BadHeader);
                }
                headers.push(UriHeader {
                    name: Escaped::parse(UriPart::Header, n)?,
                    value: Escaped::parse(UriPart::Header, v)?,
                });
            }
        } else if !tail.is_empty() {
            return Err(UriError::BadChar);
        }
        Ok(Self {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// True for `sips:`.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Switches between `sip:` and `sips:`.
    pub fn set_secure(&mut self, secure: bool) {
        self.secure = secure;
    }

    /// The user part.
    pub fn user(&self) -> Option<&Escaped> {
        self.user.as_ref()
    }

    /// Sets the user from decoded text (escaping what the user part does not allow), or
    /// removes it (and the password) with `None`.
    pub fn set_user(&mut self, user: Option<&str>) {
        self.user = user
            .filter(|u| !u.is_empty())
            .map(|u| Escaped::encode(UriPart::User, u.as_bytes()));
        if self.user.is_none() {
            self.password = None;
        }
    }

    /// The password part (deprecated by RFC 3261 but legal).
    pub fn password(&self) -> Option<&Escaped> {
        self.password.as_ref()
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Replaces the host.
    pub fn set_host(&mut self, host: Host) {
        self.host = host;
    }

    /// The explicit port, if any (no default is filled in: RFC 3261 §19.1.4 treats an
    /// absent port differently from 5060).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Sets or removes the port.
    pub fn set_port(&mut self, port: Option<u16>) {
        self.port = port;
    }

    /// All parameters, in order.
    pub fn params(&self) -> &[UriParam] {
        &self.params
    }

    /// The first parameter whose decoded name equals `name` ignoring ASCII case.
    pub fn param(&self, name: &str) -> Option<&UriParam> {
        self.params.iter().find(|p| p.is_named(name))
    }

    /// Replaces (or appends) the parameter `param.name()`.
    pub fn set_param(&mut self, param: UriParam) {
        match self
            .params
            .iter_mut()
            .find(|p| p.name.decoded_eq_ignore_case(&param.name))
        {
            Some(p) => *p = param,
            None => self.params.push(param),
        }
    }

    /// Removes every parameter named `name` (decoded, ASCII case-insensitive).
    pub fn remove_param(&mut self, name: &str) {
        self.params.retain(|p| !p.is_named(name));
    }

    /// The headers (`?` part), in order.
    pub fn headers(&self) -> &[UriHeader] {
        &self.headers
    }

    /// Removes the headers (`?` part), as a proxy or B2BUA must before using a URI as a
    /// Request-URI (RFC 3261 §19.1.5).
    pub fn clear_headers(&mut self) {
        self.headers.clear();
    }

    /// RFC 3261 §19.1.4 equivalence.
    pub fn equivalent(&self, other: &SipUri) -> bool {
        fn opt_eq(a: Option<&Escaped>, b: Option<&Escaped>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => a.decoded_eq(b),
                _ => false,
            }
        }
        const MUST_MATCH: [&str; 5] = ["user", "ttl", "method", "maddr", "transport"];
        let params_match = |a: &SipUri, b: &SipUri| {
            a.params.iter().all(|p| {
                match b
                    .params
                    .iter()
                    .find(|q| q.name.decoded_eq_ignore_case(&p.name))
                {
                    Some(q) => match (&p.value, &q.value) {
                        (None, None) => true,
                        (Some(x), Some(y)) => x.decoded_eq_ignore_case(y),
                        _ => false,
                    },
                    None => !MUST_MATCH.iter().any(|m| p.is_named(m)),
                }
            })
        };
        let headers_match = |a: &SipUri, b: &SipUri| {
            a.headers.iter().all(|h| {
                b.headers.iter().any(|k| {
                    h.name.decoded_eq_ignore_case(&k.name)
                        && h.value.decoded_eq_ignore_case(&k.value)
                })
            })
        };
        self.secure == other.secure
            && opt_eq(self.user.as_ref(), other.user.as_ref())
            && opt_eq(self.password.as_ref(), other.password.as_ref())
            && self.host.equivalent(&other.host)
            && self.port == other.port
            && params_match(self, other)
            && params_match(other, self)
            && headers_match(self, other)
            && headers_match(other, self)
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(u) = &self.user {
            f.write_str(u.as_str())?;
            if let Some(p) = &self.password {
                write!(f, ":{}", p.as_str())?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for p in &self.params {
            write!(f, ";{p}")?;
        }
        for (i, h) in self.headers.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{}={}", h.name.as_str(), h.value.as_str())?;
        }
        Ok(())
    }
}

/// A `tel:` URI (RFC 3966): the number as written and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TelUri {
    number: String,
    params: Vec<UriParam>,
}

fn is_visual_separator(b: u8) -> bool {
    matches!(b, b'-' | b'.' | b'(' | b')')
}

impl TelUri {
    fn parse_after_scheme(s: &str) -> Result<Self, UriError> {
        let end = s.find(';').unwrap_or(s.len());
        let number = &s[..end];
        let digits = number.strip_prefix('+').unwrap_or(number).as_bytes();
        let global = number.starts_with('+');
        let valid = |b: u8| {
            is_visual_separator(b)
                || b.is_ascii_digit()
                || (!global && (b.is_ascii_hexdigit() || b == b'*' || b == b'#'))
        };
        let significant = |b: &u8| !is_visual_separator(*b);
        if !digits.iter().all(|&b| valid(b)) || !digits.iter().any(significant) {
            return Err(UriError::BadNumber);
        }
        let mut params = Vec::new();
        let mut tail = &s[end..];
        while let Some(t) = tail.strip_prefix(';') {
            let e = t.find(';').unwrap_or(t.len());
            params.push(UriParam::parse(&t[..e])?);
            tail = &t[e..];
        }
        Ok(Self {
            number: number.to_owned(),
            params,
        })
    }

    /// The number as written, visual separators included (`+1-201-555-0123`).
    pub fn number(&self) -> &str {
        &self.number
    }

    /// The number without visual separators (`+12015550123`).
    pub fn digits(&self) -> String {
        self.number
            .bytes()
            .filter(|b| !is_visual_separator(*b))
            .map(char::from)
            .collect()
    }

    /// True for a global number (`+...`).
    pub fn is_global(&self) -> bool {
        self.number.starts_with('+')
    }

    /// The parameters (`phone-context`, `ext`, ...), in order.
    pub fn params(&self) -> &[UriParam] {
        &self.params
    }

    /// The first parameter named `name` (ASCII case-insensitive).
    pub fn param(&self, name: &str) -> Option<&UriParam> {
        self.params.iter().find(|p| p.is_named(name))
    }

    /// RFC 3966 §4 equivalence: same digits (separators ignored, hex case-insensitive)
    /// and the same parameter set, in any order.
    pub fn equivalent(&self, other: &TelUri) -> bool {
        let subset = |a: &TelUri, b: &TelUri| {
            a.params.iter().all(|p| {
                b.params.iter().any(|q| {
                    p.name.decoded_eq_ignore_case(&q.name)
                        && match (&p.value, &q.value) {
                            (None, None) => true,
                            (Some(x), Some(y)) => x.decoded_eq_ignore_case(y),
                            _ => false,
                        }
                })
            })
        };
        self.digits().eq_ignore_ascii_case(&other.digits())
            && subset(self, other)
            && subset(other, self)
    }
}

impl fmt::Display for TelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tel:{}", self.number)?;
        for p in &self.params {
            write!(f, ";{p}")?;
        }
        Ok(())
    }
}

/// A URI of any other scheme, kept opaque and byte-exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AbsoluteUri {
    raw: String,
    scheme_len: usize,
}

impl AbsoluteUri {
    /// The scheme as written.
    pub fn scheme(&self) -> &str {
        &self.raw[..self.scheme_len]
    }

    /// Everything after `scheme:`.
    pub fn rest(&self) -> &str {
        self.raw.get(self.scheme_len + 1..).unwrap_or("")
    }

    /// The whole URI as received.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for AbsoluteUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Any URI a SIP message can carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Uri {
    /// `sip:` or `sips:`.
    Sip(SipUri),
    /// `tel:`.
    Tel(TelUri),
    /// Any other scheme, opaque.
    Other(AbsoluteUri),
}

fn valid_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.')
}

impl Uri {
    /// Parses a complete URI (no surrounding white space or angle brackets).
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        let (scheme, rest) = s.split_once(':').ok_or(UriError::BadScheme)?;
        if !valid_scheme(scheme) {
            return Err(UriError::BadScheme);
        }
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_after_scheme(false, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_after_scheme(true, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_after_scheme(rest).map(Uri::Tel)
        } else {
            // absoluteURI: uric characters (plus `[`, `]`, `#`), escapes well-formed.
            if rest.is_empty() {
                return Err(UriError::BadChar);
            }
            let uric = |b: u8| is_unreserved(b) || b";/?:@&=+$,[]#".contains(&b);
            check_escaped(rest.as_bytes(), uric, UriError::BadChar)?;
            Ok(Uri::Other(AbsoluteUri {
                raw: s.to_owned(),
                scheme_len: scheme.len(),
            }))
        }
    }

    /// The scheme in lower case for sip/sips/tel, as written otherwise.
    pub fn scheme(&self) -> &str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other(o) => o.scheme(),
        }
    }

    /// The SIP URI, for `sip:` and `sips:`.
    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The tel URI, for `tel:`.
    pub fn as_tel(&self) -> Option<&TelUri> {
        match self {
            Uri::Tel(u) => Some(u),
            _ => None,
        }
    }

    /// RFC 3261 §19.1.4 (sip/sips), RFC 3966 §4 (tel); other schemes compare the scheme
    /// case-insensitively and the rest byte for byte.
    pub fn equivalent(&self, other: &Uri) -> bool {
        match (self, other) {
            (Uri::Sip(a), Uri::Sip(b)) => a.equivalent(b),
            (Uri::Tel(a), Uri::Tel(b)) => a.equivalent(b),
            (Uri::Other(a), Uri::Other(b)) => {
                a.scheme().eq_ignore_ascii_case(b.scheme()) && a.rest() == b.rest()
            }
            _ => false,
        }
    }
}

impl FromStr for Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uri::parse(s)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Tel(u) => u.fmt(f),
            Uri::Other(u) => u.fmt(f),
        }
    }
}

impl From<SipUri> for Uri {
    fn from(u: SipUri) -> Self {
        Uri::Sip(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri {
        match Uri::parse(s) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn the_user_part_may_hold_semicolons_and_escaped_at_signs() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(
            u.user().map(|u| u.decoded().into_owned()),
            Some(b"user;par=u@example.net".to_vec())
        );
        assert_eq!(u.host(), &Host::Name(HostName("example.com".into())));
        assert!(u.params().is_empty());
    }

    #[test]
    fn unusual_user_and_password_characters_are_accepted() {
        let u = sip(
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        );
        assert_eq!(
            u.user().map(Escaped::as_str),
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password().map(Escaped::as_str),
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
    }

    #[test]
    fn an_ipv6_address_needs_brackets_and_the_port_goes_outside_them() {
        assert_eq!(Uri::parse("sip:2001:db8::10"), Err(UriError::BadHost));
        let amb = sip("sip:[2001:db8::10:5070]");
        assert_eq!(
            amb.host(),
            &Host::Ipv6("2001:db8::10:5070".parse().unwrap())
        );
        assert_eq!(amb.port(), None);
        let unamb = sip("sip:[2001:db8::10]:5070");
        assert_eq!(unamb.host(), &Host::Ipv6("2001:db8::10".parse().unwrap()));
        assert_eq!(unamb.port(), Some(5070));
        assert_eq!(
            Uri::parse("sip:user@[2001:db8:::192.0.2.1]"),
            Err(UriError::BadHost)
        );
        assert!(Uri::parse("sip:user@[2001:db8::192.0.2.1]").is_ok());
    }

    #[test]
    fn ports_out_of_range_and_empty_ports_are_rejected() {
        assert_eq!(
            Uri::parse("sip:a@example.com:65536"),
            Err(UriError::BadPort)
        );
        assert_eq!(Uri::parse("sip:a@example.com:"), Err(UriError::BadPort));
        assert_eq!(sip("sip:a@example.com:65535").port(), Some(65535));
    }

    #[test]
    fn escaped_params_decode_once_and_compare_on_decoded_values() {
        let u = sip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31");
        assert!(u.param("lr").is_some());
        let name = u
            .param("name")
            .and_then(UriParam::value)
            .map(|v| v.decoded().into_owned());
        assert_eq!(name, Some(b"value%41".to_vec()));
        let plain = sip("sip:caller@host5.example.net;lr;name=value%2541");
        assert!(u.equivalent(&plain));
        let a = sip("sip:caller@host5.example.net;lr;name=valueA");
        assert!(!u.equivalent(&a));
    }

    #[test]
    fn equivalence_follows_rfc3261_section_19_1_4() {
        // The RFC's own examples.
        assert!(
            sip("sip:%61lice@atlanta.com;transport=TCP")
                .equivalent(&sip("sip:alice@AtLanTa.CoM;Transport=tcp"))
        );
        assert!(sip("sip:carol@chicago.com").equivalent(&sip("sip:carol@chicago.com;newparam=5")));
        assert!(
            sip("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com").equivalent(
                &sip("sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com")
            )
        );
        assert!(
            !sip("SIP:ALICE@AtLanTa.CoM;Transport=udp")
                .equivalent(&sip("sip:alice@AtLanTa.CoM;Transport=UDP"))
        );
        assert!(!sip("sip:bob@biloxi.com").equivalent(&sip("sip:bob@biloxi.com:5060")));
        assert!(!sip("sip:bob@biloxi.com").equivalent(&sip("sip:bob@biloxi.com;transport=udp")));
        assert!(!sip("sip:carol@chicago.com").equivalent(&sip("sips:carol@chicago.com")));
        assert!(
            !sip("sip:carol@chicago.com;security=on")
                .equivalent(&sip("sip:carol@chicago.com;security=off"))
        );
        assert!(
            !sip("sip:carol@chicago.com")
                .equivalent(&sip("sip:carol@chicago.com?Subject=next%20meeting"))
        );
    }

    #[test]
    fn escaped_nulls_are_distinct_users_not_truncated_strings() {
        let one = sip("sip:%00@host5.example.com");
        let two = sip("sip:%00%00@host5.example.com");
        assert_eq!(one.user().map(|u| u.decoded().into_owned()), Some(vec![0]));
        assert_eq!(
            two.user().map(|u| u.decoded().into_owned()),
            Some(vec![0, 0])
        );
        assert!(!one.equivalent(&two));
    }

    #[test]
    fn display_writes_the_escaped_form_back_unchanged() {
        for s in [
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "sips:%75se%72:pw@[2001:db8::1]:5061;transport=tls;lr",
            "tel:+1-201-555-0123;phone-context=example.com",
            "soap.beep://192.0.2.103:3002",
            "nobodyKnowsThisScheme:totallyopaquecontent",
        ] {
            let u = Uri::parse(s).unwrap();
            assert_eq!(u.to_string(), s);
            assert_eq!(Uri::parse(&u.to_string()), Ok(u));
        }
    }

    #[test]
    fn encoding_escapes_only_what_the_part_forbids() {
        let e = Escaped::encode(UriPart::User, b"a b@c;d%");
        assert_eq!(e.as_str(), "a%20b%40c;d%25");
        assert_eq!(e.decoded().as_ref(), b"a b@c;d%");
        let mut u = SipUri::new(Host::parse("example.com").unwrap());
        u.set_user(Some("I have spaces"));
        assert_eq!(u.to_string(), "sip:I%20have%20spaces@example.com");
    }

    #[test]
    fn other_schemes_are_opaque_and_tel_numbers_compare_without_separators() {
        let u = Uri::parse("isbn:2983792873").unwrap();
        assert_eq!(u.scheme(), "isbn");
        assert!(
            Uri::parse("tel:+1-201-555-0123")
                .unwrap()
                .equivalent(&Uri::parse("tel:+12015550123").unwrap())
        );
        assert_eq!(
            Uri::parse("tel:abc;x=1")
                .ok()
                .and_then(|u| u.as_tel().map(TelUri::digits)),
            Some("abc".into())
        );
        assert_eq!(Uri::parse("tel:+"), Err(UriError::BadNumber));
        assert_eq!(
            Uri::parse("<sip:user@example.com>"),
            Err(UriError::BadScheme)
        );
        assert_eq!(Uri::parse("http://a b"), Err(UriError::BadChar));
    }

    #[test]
    fn host_names_need_a_letter_in_the_top_label() {
        assert!(HostName::parse("chair-dnrc.example.com").is_ok());
        assert!(HostName::parse("example.com.").is_ok());
        assert!(HostName::parse("2001").is_err());
        assert!(HostName::parse("-bad.com").is_err());
        assert!(HostName::parse("a..b").is_err());
        assert_eq!(
            Host::parse("255.255.255.255"),
            Ok(Host::Ipv4(Ipv4Addr::BROADCAST))
        );
    }
}

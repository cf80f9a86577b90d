//! Typed header values: the parts of a message a transaction layer, a dialog layer and a
//! B2BUA decide on (Via, From/To/Contact/Route as name-addr, CSeq, media types, option
//! tags).
//!
//! Each value is parsed from one unfolded header value on demand (see
//! [`Headers`](super::Headers) for the accessors) and owns its parts, so it outlives the
//! message it came from. Every string inside is validated when built, by the parser or by
//! a constructor ([`Token::new`], [`ParamValue::quoted`], ...), so `Display` always writes
//! a well-formed value and no caller-supplied text can inject a CRLF.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::message::Method;
use super::scan::{Cursor, is_token, is_token_str, is_ws, parse_digits, quote, unquote};
use super::uri::{Host, Uri, UriError, parse_hostport};

/// Why a header value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The value is empty where the grammar needs something.
    #[error("empty value")]
    Empty,
    /// A character the grammar does not allow, at this byte offset of the value.
    #[error("unexpected character at offset {0}")]
    Unexpected(usize),
    /// A number larger than its field allows (CSeq > 2^32-1, Max-Forwards > 255, ...).
    #[error("number out of range")]
    OutOfRange,
    /// A URI inside the value did not parse.
    #[error("bad URI: {0}")]
    Uri(#[from] UriError),
}

fn unexpected(c: &Cursor<'_>) -> ValueError {
    if c.is_empty() && c.pos() == 0 {
        ValueError::Empty
    } else {
        ValueError::Unexpected(c.pos())
    }
}

/// A non-empty RFC 3261 `token` (method names, parameter names, option tags, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

impl Token {
    /// Validates `s` as a token.
    pub fn new(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty);
        }
        match s.bytes().position(|b| !is_token(b)) {
            Some(i) => Err(ValueError::Unexpected(i)),
            None => Ok(Self(s.to_owned())),
        }
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Token {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Token {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Token {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Token {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Token::new(s)
    }
}

/// A header parameter value (`gen-value` = token / host / quoted-string), kept as written
/// (a quoted string keeps its quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParamValue(String);

fn is_gen_value_char(b: u8) -> bool {
    is_token(b) || b == b':' || b == b'[' || b == b']'
}

impl ParamValue {
    /// A token or host value (no quoting).
    pub fn new(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::Empty);
        }
        match s.bytes().position(|b| !is_gen_value_char(b)) {
            Some(i) => Err(ValueError::Unexpected(i)),
            None => Ok(Self(s.to_owned())),
        }
    }

    /// Any text as a quoted string (`"` and `\` escaped, CR/LF replaced by SP).
    pub fn quoted(text: &str) -> Self {
        Self(quote(text))
    }

    /// The value as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when written as a quoted string.
    pub fn is_quoted(&self) -> bool {
        self.0.starts_with('"')
    }

    /// The value without quotes and quoted-pair escapes.
    pub fn unquoted(&self) -> Cow<'_, str> {
        if self.is_quoted() {
            unquote(&self.0)
        } else {
            Cow::Borrowed(&self.0)
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A header parameter `;name[=value]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Param {
    /// The name, as written (compared ASCII case-insensitively by [`Params`]).
    pub name: Token,
    /// The value, if any.
    pub value: Option<ParamValue>,
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(v) = &self.value {
            write!(f, "={v}")?;
        }
        Ok(())
    }
}

/// Header parameters in order, looked up by ASCII case-insensitive name. `Display`
/// writes each as `;name[=value]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Params(Vec<Param>);

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The first parameter named `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.0.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// True when a parameter named `name` is present (with or without value).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The value of `name` as written, `None` when absent or valueless.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name)?.value.as_ref().map(ParamValue::as_str)
    }

    /// Replaces the first parameter named `param.name`, or appends it.
    pub fn set(&mut self, param: Param) {
        match self
            .0
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(&param.name))
        {
            Some(p) => *p = param,
            None => self.0.push(param),
        }
    }

    /// Appends a parameter (duplicates allowed, as on the wire).
    pub fn push(&mut self, param: Param) {
        self.0.push(param);
    }

    /// Removes every parameter named `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|p| !p.name.eq_ignore_ascii_case(name));
    }

    /// The parameters in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Param> {
        self.0.iter()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            write!(f, ";{p}")?;
        }
        Ok(())
    }
}

/// `*( SEMI param )` with `param = token [ EQUAL gen-value ]`.
fn parse_params(c: &mut Cursor<'_>) -> Result<Params, ValueError> {
    let mut params = Params::new();
    while c.sep(b';') {
        let name = c.token().ok_or_else(|| ValueError::Unexpected(c.pos()))?;
        let value = if c.sep(b'=') {
            let v = match c.quoted_string() {
                Some(q) => q,
                None => c.take_while(is_gen_value_char),
            };
            if v.is_empty() {
                return Err(ValueError::Unexpected(c.pos()));
            }
            Some(ParamValue(v.to_owned()))
        } else {
            None
        };
        params.push(Param {
            name: Token(name.to_owned()),
            value,
        });
    }
    Ok(params)
}

/// After an element of a comma-separated list: consumes a comma (true) or checks the
/// end of the value (false).
fn list_next(c: &mut Cursor<'_>) -> Result<bool, ValueError> {
    if c.sep(b',') {
        return Ok(true);
    }
    c.skip_ws();
    if c.is_empty() {
        Ok(false)
    } else {
        Err(ValueError::Unexpected(c.pos()))
    }
}

/// The transport of a Via's sent-protocol; unknown tokens are kept (RFC 4475
/// `transports`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// SCTP.
    Sctp,
    /// TLS over SCTP.
    TlsSctp,
    /// WebSocket (RFC 7118).
    Ws,
    /// Secure WebSocket (RFC 7118).
    Wss,
    /// Any other transport token, as written.
    Other(Token),
}

impl Transport {
    fn from_token(t: &str) -> Self {
        const KNOWN: [(&str, Transport); 7] = [
            ("UDP", Transport::Udp),
            ("TCP", Transport::Tcp),
            ("TLS", Transport::Tls),
            ("SCTP", Transport::Sctp),
            ("TLS-SCTP", Transport::TlsSctp),
            ("WS", Transport::Ws),
            ("WSS", Transport::Wss),
        ];
        KNOWN
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(t))
            .map(|(_, tr)| tr.clone())
            .unwrap_or_else(|| Transport::Other(Token(t.to_owned())))
    }

    /// The transport token (upper case for the known ones).
    pub fn as_str(&self) -> &str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::TlsSctp => "TLS-SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
            Transport::Other(t) => t,
        }
    }

    /// True for transports that carry messages in a byte stream (framed by
    /// Content-Length).
    pub fn is_stream(&self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The RFC 3261 magic cookie that starts every RFC 3261 branch.
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via value: sent-protocol, sent-by and parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Via {
    /// Protocol name, `SIP` in practice.
    pub protocol_name: Token,
    /// Protocol version, `2.0` in practice.
    pub protocol_version: Token,
    /// Transport.
    pub transport: Transport,
    /// sent-by host.
    pub host: Host,
    /// sent-by port, when written.
    pub port: Option<u16>,
    /// Parameters (`branch`, `received`, `rport`, `maddr`, `ttl`, extensions), in order.
    pub params: Params,
}

/// Parses an IP address written bare or as an IPv6 reference (RFC 5118 §4.5 accepts both
/// in `received`).
fn parse_ip_lenient(s: &str) -> Option<IpAddr> {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Ipv6Addr::from_str(inner).ok().map(IpAddr::V6);
    }
    IpAddr::from_str(s).ok()
}

impl Via {
    /// `SIP/2.0/<transport> host[:port];branch=<branch>`.
    pub fn new(
        transport: Transport,
        host: Host,
        port: Option<u16>,
        branch: &str,
    ) -> Result<Self, ValueError> {
        let mut params = Params::new();
        params.push(Param {
            name: Token("branch".into()),
            value: Some(ParamValue(Token::new(branch)?.0)),
        });
        Ok(Self {
            protocol_name: Token("SIP".into()),
            protocol_version: Token("2.0".into()),
            transport,
            host,
            port,
            params,
        })
    }

    fn parse_one(c: &mut Cursor<'_>) -> Result<Self, ValueError> {
        let err = |c: &Cursor<'_>| ValueError::Unexpected(c.pos());
        c.skip_ws();
        let name = c.token().ok_or_else(|| unexpected(c))?;
        if !c.sep(b'/') {
            return Err(err(c));
        }
        let version = c.token().ok_or_else(|| err(c))?;
        if !c.sep(b'/') {
            return Err(err(c));
        }
        let transport = c.token().ok_or_else(|| err(c))?;
        let before_ws = c.pos();
        c.skip_ws();
        if c.pos() == before_ws {
            return Err(err(c));
        }
        let start = c.pos();
        if c.peek() == Some(b'[') {
            let rest = c.rest();
            let end = rest.find(']').ok_or_else(|| err(c))?;
            c.advance(end + 1);
        } else {
            c.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        }
        let host_end = c.pos();
        let mut hostport = c.slice(start, host_end).to_owned();
        if c.sep(b':') {
            let p = c.take_while(|b| b.is_ascii_digit());
            hostport.push(':');
            hostport.push_str(p);
        }
        let (host, port) = parse_hostport(&hostport).map_err(ValueError::Uri)?;
        let params_at = c.pos();
        let params = parse_params(c)?;
        let via = Self {
            protocol_name: Token(name.to_owned()),
            protocol_version: Token(version.to_owned()),
            transport: Transport::from_token(transport),
            host,
            port,
            params,
        };
        via.validate_params()
            .map_err(|_| ValueError::Unexpected(params_at))?;
        Ok(via)
    }

    fn validate_params(&self) -> Result<(), ()> {
        for p in self.params.iter() {
            let v = p.value.as_ref().map(ParamValue::as_str);
            let ok = match p.name.to_ascii_lowercase().as_str() {
                "branch" => v.is_some_and(is_token_str),
                "received" => v.and_then(parse_ip_lenient).is_some(),
                "rport" => v.is_none_or(|v| parse_digits(v.as_bytes()).is_some_and(|n| n <= 65535)),
                "ttl" => v
                    .and_then(|v| parse_digits(v.as_bytes()))
                    .is_some_and(|n| n <= 255),
                "maddr" => v.is_some_and(|v| Host::parse(v).is_ok()),
                _ => true,
            };
            if !ok {
                return Err(());
            }
        }
        Ok(())
    }

    /// Parses a Via header value: one or more comma-separated via-parms, appended to
    /// `out`.
    pub(crate) fn parse_list(value: &str, out: &mut Vec<Via>) -> Result<(), ValueError> {
        let mut c = Cursor::new(value);
        loop {
            out.push(Via::parse_one(&mut c)?);
            if !list_next(&mut c)? {
                return Ok(());
            }
        }
    }

    /// The first via-parm of a Via header value (the rest is not parsed).
    pub(crate) fn parse_first(value: &str) -> Result<Via, ValueError> {
        let mut c = Cursor::new(value);
        let via = Via::parse_one(&mut c)?;
        list_next(&mut c)?;
        Ok(via)
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// True when the branch starts with the RFC 3261 magic cookie and has something after
    /// it; otherwise the transaction layer matches RFC 2543-style (RFC 4475 `badbranch`,
    /// `inv2543`).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .and_then(|b| b.strip_prefix(BRANCH_MAGIC_COOKIE))
            .is_some_and(|rest| !rest.is_empty())
    }

    /// The `received` address (bracketed or bare IPv6 both accepted).
    pub fn received(&self) -> Option<IpAddr> {
        self.params.value("received").and_then(parse_ip_lenient)
    }

    /// `rport`: `None` when absent, `Some(None)` when present without a value (a
    /// request for symmetric response routing, RFC 3581), `Some(Some(port))` when
    /// filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        let p = self.params.get("rport")?;
        Some(
            p.value
                .as_ref()
                .and_then(|v| parse_digits(v.as_str().as_bytes()))
                .and_then(|n| u16::try_from(n).ok()),
        )
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<Host> {
        self.params.value("maddr").and_then(|v| Host::parse(v).ok())
    }

    /// The `ttl` parameter.
    pub fn ttl(&self) -> Option<u8> {
        self.params
            .value("ttl")
            .and_then(|v| parse_digits(v.as_bytes()))
            .and_then(|n| u8::try_from(n).ok())
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} {}",
            self.protocol_name, self.protocol_version, self.transport, self.host
        )?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

impl FromStr for Via {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = Cursor::new(s);
        let via = Via::parse_one(&mut c)?;
        c.skip_ws();
        if c.is_empty() {
            Ok(via)
        } else {
            Err(ValueError::Unexpected(c.pos()))
        }
    }
}

/// A display name: a quoted string or a run of tokens, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisplayName(String);

impl DisplayName {
    /// Any text, written as a quoted string.
    pub fn new(text: &str) -> Self {
        Self(quote(text))
    }

    /// As written (with quotes if it was quoted).
    pub fn as_raw(&self) -> &str {
        &self.0
    }

    /// The text without quotes and escapes.
    pub fn text(&self) -> Cow<'_, str> {
        if self.0.starts_with('"') {
            unquote(&self.0)
        } else {
            Cow::Borrowed(&self.0)
        }
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route,
/// Record-Route, Refer-To, ...
///
/// In the addr-spec form (no `<>`) everything after the first `;` is a header parameter,
/// not a URI parameter (RFC 3261 §20.10, RFC 4475 `cparam01`); such a URI cannot carry
/// `;`, `,` or `?` of its own (`regbadct` is rejected).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameAddr {
    /// The display name, if any.
    pub display_name: Option<DisplayName>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters (`tag`, `expires`, `q`, extensions), in order.
    pub params: Params,
}

impl NameAddr {
    /// `<uri>` with no display name or parameters.
    pub fn new(uri: Uri) -> Self {
        Self {
            display_name: None,
            uri,
            params: Params::new(),
        }
    }

    fn parse_one(c: &mut Cursor<'_>) -> Result<Self, ValueError> {
        c.skip_ws();
        let err = |c: &Cursor<'_>| ValueError::Unexpected(c.pos());
        let mut display_name = None;
        let angle = if c.peek() == Some(b'"') {
            let q = c.quoted_string().ok_or_else(|| err(c))?;
            display_name = Some(DisplayName(q.to_owned()));
            c.skip_ws();
            if !c.eat(b'<') {
                return Err(err(c));
            }
            true
        } else {
            let save = c.clone();
            let words = c.take_while(|b| is_token(b) || is_ws(b));
            if c.eat(b'<') {
                let words = words.trim_matches(|ch| ch == ' ' || ch == '\t');
                if !words.is_empty() {
                    display_name = Some(DisplayName(words.to_owned()));
                }
                true
            } else {
                *c = save;
                false
            }
        };
        let uri = if angle {
            let rest = c.rest();
            let end = rest.find('>').ok_or_else(|| err(c))?;
            let uri = Uri::parse(&rest[..end])?;
            c.advance(end + 1);
            uri
        } else {
            let s = c.take_while(|b| !matches!(b, b';' | b',' | b'?' | b' ' | b'\t'));
            if s.is_empty() {
                return Err(unexpected(c));
            }
            Uri::parse(s)?
        };
        let params = parse_params(c)?;
        Ok(Self {
            display_name,
            uri,
            params,
        })
    }

    /// Parses a single-valued header (From, To, Refer-To, ...).
    pub(crate) fn parse_single(value: &str) -> Result<Self, ValueError> {
        let mut c = Cursor::new(value);
        let na = Self::parse_one(&mut c)?;
        c.skip_ws();
        if c.is_empty() {
            Ok(na)
        } else {
            Err(ValueError::Unexpected(c.pos()))
        }
    }

    /// Parses a comma-separated list, appending to `out`.
    pub(crate) fn parse_list(value: &str, out: &mut Vec<NameAddr>) -> Result<(), ValueError> {
        let mut c = Cursor::new(value);
        loop {
            out.push(Self::parse_one(&mut c)?);
            if !list_next(&mut c)? {
                return Ok(());
            }
        }
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }

    /// Sets the `tag` parameter (a token).
    pub fn set_tag(&mut self, tag: &str) -> Result<(), ValueError> {
        let t = Token::new(tag)?;
        self.params.set(Param {
            name: Token("tag".into()),
            value: Some(ParamValue(t.0)),
        });
        Ok(())
    }

    /// The Contact `expires` parameter: `Ok(None)` when absent, an error when it is not
    /// a number of seconds that fits 32 bits (RFC 4475 `scalar02`).
    pub fn expires(&self) -> Result<Option<u32>, ValueError> {
        match self.params.get("expires") {
            None => Ok(None),
            Some(p) => {
                let v = p.value.as_ref().ok_or(ValueError::Empty)?;
                let n = parse_digits(v.as_str().as_bytes()).ok_or(ValueError::OutOfRange)?;
                u32::try_from(n)
                    .map(Some)
                    .map_err(|_| ValueError::OutOfRange)
            }
        }
    }

    /// The Contact `q` parameter in thousandths (`q=0.33` is 330), `Ok(None)` when absent.
    pub fn q(&self) -> Result<Option<u16>, ValueError> {
        let Some(p) = self.params.get("q") else {
            return Ok(None);
        };
        let v = p.value.as_ref().ok_or(ValueError::Empty)?.as_str();
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        let whole = match int {
            "0" => 0u16,
            "1" => 1000,
            _ => return Err(ValueError::OutOfRange),
        };
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::OutOfRange);
        }
        let thousandths: u16 = frac
            .bytes()
            .zip([100, 10, 1])
            .map(|(b, w)| u16::from(b - b'0') * w)
            .sum();
        if whole == 1000 && thousandths != 0 {
            return Err(ValueError::OutOfRange);
        }
        Ok(Some(whole + thousandths))
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display_name {
            write!(f, "{d} ")?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

impl FromStr for NameAddr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NameAddr::parse_single(s)
    }
}

/// The Contact header(s) of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Contacts {
    /// `Contact: *` (REGISTER: remove all bindings).
    Wildcard,
    /// The addresses, in order over all Contact lines; empty when there is no Contact.
    List(Vec<NameAddr>),
}

impl Contacts {
    pub(crate) fn parse_into(
        value: &str,
        out: &mut Vec<NameAddr>,
        wildcard: &mut bool,
    ) -> Result<(), ValueError> {
        if value == "*" {
            *wildcard = true;
            Ok(())
        } else {
            NameAddr::parse_list(value, out)
        }
    }

    /// The addresses (empty for the wildcard).
    pub fn addresses(&self) -> &[NameAddr] {
        match self {
            Contacts::Wildcard => &[],
            Contacts::List(v) => v,
        }
    }
}

/// CSeq: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CSeq {
    /// Sequence number (32 bits; a larger one is an error, RFC 4475 `scalar02`).
    pub seq: u32,
    /// The method.
    pub method: Method,
}

impl FromStr for CSeq {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = Cursor::new(s);
        c.skip_ws();
        let digits = c.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err(unexpected(&c));
        }
        let seq = parse_digits(digits.as_bytes())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(ValueError::OutOfRange)?;
        let before = c.pos();
        c.skip_ws();
        if c.pos() == before {
            return Err(ValueError::Unexpected(c.pos()));
        }
        let at = c.pos();
        let m = c.token().ok_or(ValueError::Unexpected(at))?;
        c.skip_ws();
        if !c.is_empty() {
            return Err(ValueError::Unexpected(c.pos()));
        }
        Ok(CSeq {
            seq,
            method: Method::parse(m).map_err(|_| ValueError::Unexpected(at))?,
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// A media type or media range (`type/subtype;params`): Content-Type, Accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaType {
    /// Top-level type (`application`, or `*` in a range).
    pub ty: Token,
    /// Subtype (`sdp`, or `*` in a range).
    pub subtype: Token,
    /// Parameters (`boundary`, `charset`, `q`, ...).
    pub params: Params,
}

impl MediaType {
    /// `ty/subtype` without parameters.
    pub fn new(ty: &str, subtype: &str) -> Result<Self, ValueError> {
        Ok(Self {
            ty: Token::new(ty)?,
            subtype: Token::new(subtype)?,
            params: Params::new(),
        })
    }

    /// `application/sdp`.
    pub fn application_sdp() -> Self {
        Self {
            ty: Token("application".into()),
            subtype: Token("sdp".into()),
            params: Params::new(),
        }
    }

    fn parse_one(c: &mut Cursor<'_>) -> Result<Self, ValueError> {
        c.skip_ws();
        let ty = c.token().ok_or_else(|| unexpected(c))?;
        if !c.sep(b'/') {
            return Err(ValueError::Unexpected(c.pos()));
        }
        let subtype = c.token().ok_or(ValueError::Unexpected(c.pos()))?;
        let params = parse_params(c)?;
        Ok(Self {
            ty: Token(ty.to_owned()),
            subtype: Token(subtype.to_owned()),
            params,
        })
    }

    /// True when this is `ty/subtype` (ASCII case-insensitive, parameters ignored).
    pub fn is(&self, ty: &str, subtype: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// True when this media range (`*/*`, `type/*` or exact) covers `ty/subtype`.
    pub fn covers(&self, ty: &str, subtype: &str) -> bool {
        (self.ty.as_str() == "*" && self.subtype.as_str() == "*")
            || (self.ty.eq_ignore_ascii_case(ty)
                && (self.subtype.as_str() == "*" || self.subtype.eq_ignore_ascii_case(subtype)))
    }

    /// Parses a list of media ranges (Accept); an empty value is an empty list.
    pub(crate) fn parse_list(value: &str, out: &mut Vec<MediaType>) -> Result<(), ValueError> {
        if value.trim().is_empty() {
            return Ok(());
        }
        let mut c = Cursor::new(value);
        loop {
            out.push(Self::parse_one(&mut c)?);
            if !list_next(&mut c)? {
                return Ok(());
            }
        }
    }
}

impl FromStr for MediaType {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = Cursor::new(s);
        let m = Self::parse_one(&mut c)?;
        c.skip_ws();
        if c.is_empty() {
            Ok(m)
        } else {
            Err(ValueError::Unexpected(c.pos()))
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.ty, self.subtype, self.params)
    }
}

/// Parses `token *(COMMA token)` (option tags, methods, encodings), appending borrowed
/// tokens to `out`. An empty value is an empty list.
pub(crate) fn parse_token_list<'a>(
    value: &'a str,
    out: &mut Vec<&'a str>,
) -> Result<(), ValueError> {
    if value.trim().is_empty() {
        return Ok(());
    }
    let mut c = Cursor::new(value);
    loop {
        c.skip_ws();
        out.push(c.token().ok_or(ValueError::Unexpected(c.pos()))?);
        if !list_next(&mut c)? {
            return Ok(());
        }
    }
}

/// Validates a Call-ID: `word [ "@" word ]`.
pub(crate) fn valid_call_id(s: &str) -> Result<(), ValueError> {
    use super::scan::is_word;
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    let (a, b) = match s.split_once('@') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let word_ok = |w: &str| !w.is_empty() && w.bytes().all(is_word);
    if !word_ok(a) || b.is_some_and(|b| !word_ok(b)) {
        let at = s
            .bytes()
            .position(|c| !is_word(c) && c != b'@')
            .unwrap_or(0);
        return Err(ValueError::Unexpected(at));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vias(s: &str) -> Result<Vec<Via>, ValueError> {
        let mut v = Vec::new();
        Via::parse_list(s, &mut v).map(|()| v)
    }

    #[test]
    fn via_tolerates_white_space_everywhere_the_grammar_allows_it() {
        let v = vias("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].transport, Transport::Tcp);
        assert_eq!(v[0].branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(v[1].host, Host::Ipv4("192.168.255.111".parse().unwrap()));
        assert_eq!(v[1].branch(), Some("z9hG4bK30239"));
    }

    #[test]
    fn via_with_empty_params_or_empty_list_elements_is_rejected() {
        assert!(vias("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(vias("SIP/2.0/UDP 192.0.2.15,").is_err());
        assert!(vias("SIP/2.0/UDP").is_err());
    }

    #[test]
    fn via_received_and_rport_are_typed() {
        let v =
            vias("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3;rport")
                .unwrap();
        assert_eq!(v[0].received(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(v[0].rport(), Some(None));
        let w =
            vias("SIP/2.0/UDP [2001:db8::9:1]:6050;received=[2001:db8::9:255];rport=5061").unwrap();
        assert_eq!(w[0].received(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(w[0].port, Some(6050));
        assert_eq!(w[0].rport(), Some(Some(5061)));
        assert!(vias("SIP/2.0/UDP host;received=notanip").is_err());
        assert!(vias("SIP/2.0/UDP host;rport=70000").is_err());
    }

    #[test]
    fn a_via_built_by_hand_displays_as_the_wire_form() {
        let v = Via::new(
            Transport::Tls,
            Host::parse("[2001:db8::1]").unwrap(),
            Some(5061),
            "z9hG4bK77",
        )
        .unwrap();
        assert_eq!(
            v.to_string(),
            "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK77"
        );
        assert_eq!(v.to_string().parse::<Via>(), Ok(v));
        assert!(
            Via::new(
                Transport::Udp,
                Host::parse("a.b").unwrap(),
                None,
                "bad branch"
            )
            .is_err()
        );
    }

    #[test]
    fn name_addr_params_belong_to_the_header_in_addr_spec_form() {
        let a = NameAddr::parse_single("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert!(a.params.contains("unknownparam"));
        assert!(a.uri.as_sip().unwrap().params().is_empty());
        let b = NameAddr::parse_single("<sip:+19725552222@gw1.example.net;unknownparam>").unwrap();
        assert!(b.params.is_empty());
        assert!(b.uri.as_sip().unwrap().param("unknownparam").is_some());
    }

    #[test]
    fn display_names_quoted_or_as_tokens() {
        let a = NameAddr::parse_single(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com> ; tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(
            a.display_name.as_ref().map(|d| d.text().into_owned()),
            Some(r#"J Rosenberg \""#.into())
        );
        assert_eq!(a.tag(), Some("98asjd8"));
        let b = NameAddr::parse_single("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(
            b.display_name.map(|d| d.as_raw().to_owned()),
            Some("caller".into())
        );
        assert!(
            NameAddr::parse_single("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err()
        );
        assert!(NameAddr::parse_single("\"Mr. J. User <sip:j.user@example.com>").is_err());
        assert!(NameAddr::parse_single("\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(
            NameAddr::parse_single("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err()
        );
    }

    #[test]
    fn contact_expires_and_q_are_range_checked() {
        let a = NameAddr::parse_single("<sip:u@h>;expires=280297596632815;q=0.33").unwrap();
        assert_eq!(a.expires(), Err(ValueError::OutOfRange));
        assert_eq!(a.q(), Ok(Some(330)));
        let b = NameAddr::parse_single("<sip:u@h>;expires=3600;q=1.000").unwrap();
        assert_eq!(b.expires(), Ok(Some(3600)));
        assert_eq!(b.q(), Ok(Some(1000)));
        assert!(
            NameAddr::parse_single("<sip:u@h>;q=1.5")
                .unwrap()
                .q()
                .is_err()
        );
    }

    #[test]
    fn cseq_rejects_overflow_and_keeps_extension_methods() {
        assert_eq!(
            "0009 INVITE".parse::<CSeq>().map(|c| (c.seq, c.method)),
            Ok((9, Method::Invite))
        );
        assert_eq!(
            "36893488147419103232 REGISTER".parse::<CSeq>(),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(
            "4294967295 BYE".parse::<CSeq>().map(|c| c.seq),
            Ok(u32::MAX)
        );
        let c: CSeq = "29344 RE%47IST%45R".parse().unwrap();
        assert_eq!(c.method.as_str(), "RE%47IST%45R");
        assert!("12INVITE".parse::<CSeq>().is_err());
        assert!("12 INVITE x".parse::<CSeq>().is_err());
    }

    #[test]
    fn media_ranges_cover_types() {
        let mut v = Vec::new();
        MediaType::parse_list(
            "application/sdp, application/pkcs7-mime, multipart/*,*/*;q=0.1",
            &mut v,
        )
        .unwrap();
        assert_eq!(v.len(), 4);
        assert!(v[0].covers("application", "SDP"));
        assert!(v[2].covers("multipart", "mixed"));
        assert!(v[3].covers("text", "plain"));
        let m: MediaType = "multipart/mixed;boundary=7a9cbec02ceef655".parse().unwrap();
        assert!(m.is("multipart", "mixed"));
        assert_eq!(m.params.value("boundary"), Some("7a9cbec02ceef655"));
    }

    #[test]
    fn call_id_allows_word_characters_only() {
        assert!(valid_call_id("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{").is_ok());
        assert!(valid_call_id("a@b@c").is_err());
        assert!(valid_call_id("has space").is_err());
        assert!(valid_call_id("").is_err());
    }
}

//! SIP messages: requests and responses, parsed from and written to bytes.
//!
//! Parsing is strict where framing and routing depend on it and liberal nowhere else:
//!
//! - the start line takes exactly one SP between its elements (RFC 4475 `lwsstart`,
//!   `trws`, `lwsruri`, `ltgtruri` are errors);
//! - header lines are `token *WSP ":" value`, folded lines are unfolded, lines without a
//!   colon and bare CR/LF are errors; names and values are otherwise kept as received;
//! - the header section must be UTF-8 (RFC 3261 TEXT-UTF8) and end with an empty line;
//! - the body is bytes, framed by Content-Length only: every Content-Length field must be
//!   `1*DIGIT` below 2^32 and all must agree; a datagram without one carries the rest of
//!   the datagram (RFC 3261 §18.3), bytes beyond it are ignored (`dblreq`), and one
//!   shorter than the declared length is an error (`clerr`).
//!
//! Typed header values are parsed lazily through [`Headers`]; a message that parses may
//! still carry a malformed From or an overflowing CSeq (`scalar02`), which
//! [`check_request`](super::check_request) turns into the right response.
//!
//! The serializer writes canonical header names for known headers and the received name
//! for others, values as stored, and a Content-Length equal to the body length in place
//! of the first Content-Length field (appended when there was none). Message equality
//! therefore ignores Content-Length fields: the body they describe is compared instead.

use std::fmt;
use std::fmt::Write as _;

use bytes::Bytes;

use super::head::{
    ClError, RawLines, content_length, find_crlf, find_crlfcrlf, skip_leading_crlf, unfold_into,
};
use super::header::{HeaderName, Headers};
use super::scan::{is_token_str, parse_digits};
use super::uri::{Uri, UriError};
use super::value::{Token, ValueError};

/// A request method: the RFC 3261 set and its common extensions, or any other token
/// (case-sensitive: `invite` is an extension, not INVITE).
#[derive(Debug, Clone, Eq)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// INFO (RFC 6086)
    Info,
    /// UPDATE (RFC 3311)
    Update,
    /// PRACK (RFC 3262)
    Prack,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// REFER (RFC 3515)
    Refer,
    /// MESSAGE (RFC 3428)
    Message,
    /// PUBLISH (RFC 3903)
    Publish,
    /// Any other method token.
    Extension(Token),
}

impl Method {
    const KNOWN: [(&'static str, Method); 14] = [
        ("INVITE", Method::Invite),
        ("ACK", Method::Ack),
        ("BYE", Method::Bye),
        ("CANCEL", Method::Cancel),
        ("OPTIONS", Method::Options),
        ("REGISTER", Method::Register),
        ("INFO", Method::Info),
        ("UPDATE", Method::Update),
        ("PRACK", Method::Prack),
        ("SUBSCRIBE", Method::Subscribe),
        ("NOTIFY", Method::Notify),
        ("REFER", Method::Refer),
        ("MESSAGE", Method::Message),
        ("PUBLISH", Method::Publish),
    ];

    /// Parses a method token; known names match case-sensitively.
    pub fn parse(s: &str) -> Result<Method, ValueError> {
        if let Some((_, m)) = Self::KNOWN.iter().find(|(n, _)| *n == s) {
            return Ok(m.clone());
        }
        Token::new(s).map(Method::Extension)
    }

    /// The method name.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Extension(t) => t,
        }
    }

    /// True for [`Method::Extension`] (after normalisation: `Extension("INVITE")` built
    /// by hand still counts as INVITE everywhere, since equality compares names).
    pub fn is_extension(&self) -> bool {
        Self::KNOWN.iter().all(|(n, _)| *n != self.as_str())
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::hash::Hash for Method {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Method {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::parse(s)
    }
}

/// `SIP/major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl Version {
    /// SIP/2.0, the only version this crate speaks.
    pub const SIP_2_0: Version = Version { major: 2, minor: 0 };

    fn parse(s: &str) -> Option<Version> {
        let (proto, num) = s.split_at_checked(4)?;
        if !proto.eq_ignore_ascii_case("SIP/") {
            return None;
        }
        let (major, minor) = num.split_once('.')?;
        let part = |p: &str| parse_digits(p.as_bytes()).and_then(|n| u16::try_from(n).ok());
        Some(Version {
            major: part(major)?,
            minor: part(minor)?,
        })
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::SIP_2_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/{}.{}", self.major, self.minor)
    }
}

/// A response status code, 100-699.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u16);

macro_rules! status_codes {
    ($($name:ident = $code:literal, $reason:literal;)*) => {
        impl StatusCode {
            $(
                #[doc = concat!("`", stringify!($code), " ", $reason, "`")]
                pub const $name: StatusCode = StatusCode($code);
            )*

            /// The RFC's reason phrase for the code, or a class name for others.
            pub fn canonical_reason(self) -> &'static str {
                match self.0 {
                    $($code => $reason,)*
                    100..=199 => "Provisional",
                    200..=299 => "Success",
                    300..=399 => "Redirection",
                    400..=499 => "Client Error",
                    500..=599 => "Server Error",
                    _ => "Global Failure",
                }
            }
        }
    };
}

status_codes! {
    TRYING = 100, "Trying";
    RINGING = 180, "Ringing";
    CALL_IS_BEING_FORWARDED = 181, "Call Is Being Forwarded";
    QUEUED = 182, "Queued";
    SESSION_PROGRESS = 183, "Session Progress";
    OK = 200, "OK";
    ACCEPTED = 202, "Accepted";
    MULTIPLE_CHOICES = 300, "Multiple Choices";
    MOVED_PERMANENTLY = 301, "Moved Permanently";
    MOVED_TEMPORARILY = 302, "Moved Temporarily";
    BAD_REQUEST = 400, "Bad Request";
    UNAUTHORIZED = 401, "Unauthorized";
    FORBIDDEN = 403, "Forbidden";
    NOT_FOUND = 404, "Not Found";
    METHOD_NOT_ALLOWED = 405, "Method Not Allowed";
    NOT_ACCEPTABLE = 406, "Not Acceptable";
    PROXY_AUTHENTICATION_REQUIRED = 407, "Proxy Authentication Required";
    REQUEST_TIMEOUT = 408, "Request Timeout";
    GONE = 410, "Gone";
    REQUEST_ENTITY_TOO_LARGE = 413, "Request Entity Too Large";
    UNSUPPORTED_MEDIA_TYPE = 415, "Unsupported Media Type";
    UNSUPPORTED_URI_SCHEME = 416, "Unsupported URI Scheme";
    BAD_EXTENSION = 420, "Bad Extension";
    EXTENSION_REQUIRED = 421, "Extension Required";
    SESSION_INTERVAL_TOO_SMALL = 422, "Session Interval Too Small";
    INTERVAL_TOO_BRIEF = 423, "Interval Too Brief";
    TEMPORARILY_UNAVAILABLE = 480, "Temporarily Unavailable";
    CALL_OR_TRANSACTION_DOES_NOT_EXIST = 481, "Call/Transaction Does Not Exist";
    LOOP_DETECTED = 482, "Loop Detected";
    TOO_MANY_HOPS = 483, "Too Many Hops";
    ADDRESS_INCOMPLETE = 484, "Address Incomplete";
    BUSY_HERE = 486, "Busy Here";
    REQUEST_TERMINATED = 487, "Request Terminated";
    NOT_ACCEPTABLE_HERE = 488, "Not Acceptable Here";
    REQUEST_PENDING = 491, "Request Pending";
    SERVER_INTERNAL_ERROR = 500, "Server Internal Error";
    NOT_IMPLEMENTED = 501, "Not Implemented";
    BAD_GATEWAY = 502, "Bad Gateway";
    SERVICE_UNAVAILABLE = 503, "Service Unavailable";
    SERVER_TIMEOUT = 504, "Server Time-out";
    VERSION_NOT_SUPPORTED = 505, "Version Not Supported";
    MESSAGE_TOO_LARGE = 513, "Message Too Large";
    BUSY_EVERYWHERE = 600, "Busy Everywhere";
    DECLINE = 603, "Decline";
    DOES_NOT_EXIST_ANYWHERE = 604, "Does Not Exist Anywhere";
    NOT_ACCEPTABLE_ANYWHERE = 606, "Not Acceptable";
}

impl StatusCode {
    /// A code in 100..=699, `None` otherwise.
    pub const fn new(code: u16) -> Option<StatusCode> {
        if code >= 100 && code <= 699 {
            Some(StatusCode(code))
        } else {
            None
        }
    }

    /// The number.
    pub fn as_u16(self) -> u16 {
        self.0
    }

    /// 1xx.
    pub fn is_provisional(self) -> bool {
        self.0 < 200
    }

    /// 2xx.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }

    /// 2xx-6xx.
    pub fn is_final(self) -> bool {
        self.0 >= 200
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A SIP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request-URI.
    pub uri: Uri,
    /// Version (SIP/2.0 unless a peer says otherwise, RFC 4475 `badvers`).
    pub version: Version,
    /// Header fields in order.
    pub headers: Headers,
    /// Body octets.
    pub body: Bytes,
}

impl Request {
    /// A SIP/2.0 request with no headers and no body.
    pub fn new(method: Method, uri: Uri) -> Self {
        Self {
            method,
            uri,
            version: Version::SIP_2_0,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }
}

impl PartialEq for Request {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && self.uri == other.uri
            && self.version == other.version
            && self.body == other.body
            && self
                .headers
                .eq_except(&other.headers, Some(HeaderName::ContentLength))
    }
}

/// A SIP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Version.
    pub version: Version,
    /// Status code.
    pub status: StatusCode,
    /// Reason phrase as received (any UTF-8; may be empty, RFC 4475 `noreason`). Control
    /// characters other than HTAB (CR and LF included) are written as SP.
    pub reason: String,
    /// Header fields in order.
    pub headers: Headers,
    /// Body octets.
    pub body: Bytes,
}

impl Response {
    /// A SIP/2.0 response with the code's canonical reason, no headers and no body.
    pub fn new(status: StatusCode) -> Self {
        Self {
            version: Version::SIP_2_0,
            status,
            reason: status.canonical_reason().to_owned(),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }
}

impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.status == other.status
            && self.reason == other.reason
            && self.body == other.body
            && self
                .headers
                .eq_except(&other.headers, Some(HeaderName::ContentLength))
    }
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but CRLFs.
    #[error("no message (empty or only CRLF)")]
    Empty,
    /// No empty line ends the header section.
    #[error("header section not terminated by an empty line")]
    Unterminated,
    /// The start line or a header is not UTF-8.
    #[error("header section is not UTF-8")]
    NotUtf8,
    /// The request line is not `Method SP Request-URI SP SIP-Version`.
    #[error("malformed request line")]
    RequestLine,
    /// The status line is not `SIP-Version SP 3DIGIT SP Reason-Phrase`.
    #[error("malformed status line")]
    StatusLine,
    /// The Request-URI does not parse.
    #[error("bad Request-URI: {0}")]
    RequestUri(UriError),
    /// The SIP-Version does not parse.
    #[error("bad SIP-Version")]
    Version,
    /// A header line is malformed (no colon, bad name, fold before any header, bare CR
    /// or LF); the offset is from the start of the header section.
    #[error("malformed header line at offset {0}")]
    HeaderLine(usize),
    /// A Content-Length is not `1*DIGIT` below 2^32 (negative, non-numeric, overflowing).
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Several Content-Length fields disagree.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// Content-Length says more than the datagram holds.
    #[error("Content-Length {declared} exceeds the {available} body octets present")]
    BodyTruncated {
        /// The declared length.
        declared: u64,
        /// The octets present after the header section.
        available: usize,
    },
}

impl From<ClError> for ParseError {
    fn from(e: ClError) -> Self {
        match e {
            ClError::Invalid => ParseError::InvalidContentLength,
            ClError::Conflicting => ParseError::ConflictingContentLength,
        }
    }
}

/// Where the parts of a message head are: the first byte after leading CRLFs, the CRLF
/// ending the start line, and the CRLFCRLF ending the head.
struct Layout {
    start: usize,
    start_line_end: usize,
    head_end: usize,
}

fn layout(data: &[u8]) -> Result<Layout, ParseError> {
    let start = skip_leading_crlf(data);
    if start >= data.len() {
        return Err(ParseError::Empty);
    }
    let start_line_end = find_crlf(data, start).ok_or(ParseError::Unterminated)?;
    let head_end = find_crlfcrlf(data, start_line_end).ok_or(ParseError::Unterminated)?;
    Ok(Layout {
        start,
        start_line_end,
        head_end,
    })
}

enum StartLine {
    Request(Method, Uri, Version),
    Response(Version, StatusCode, String),
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        let (version, rest) = line.split_once(' ').ok_or(ParseError::StatusLine)?;
        let version = Version::parse(version).ok_or(ParseError::Version)?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 {
            return Err(ParseError::StatusLine);
        }
        let status = parse_digits(code.as_bytes())
            .and_then(|n| u16::try_from(n).ok())
            .and_then(StatusCode::new)
            .ok_or(ParseError::StatusLine)?;
        if reason.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ParseError::StatusLine);
        }
        return Ok(StartLine::Response(version, status, reason.to_owned()));
    }
    let (method, rest) = line.split_once(' ').ok_or(ParseError::RequestLine)?;
    let (uri, version) = rest.split_once(' ').ok_or(ParseError::RequestLine)?;
    if !is_token_str(method) || uri.is_empty() {
        return Err(ParseError::RequestLine);
    }
    let method = Method::parse(method).map_err(|_| ParseError::RequestLine)?;
    let uri = Uri::parse(uri).map_err(ParseError::RequestUri)?;
    let version = Version::parse(version).ok_or(ParseError::Version)?;
    Ok(StartLine::Request(method, uri, version))
}

/// Parses a message whose bytes are `data`; returns it with an empty body and the range
/// of `data` that is the body.
fn parse_parts(data: &[u8]) -> Result<(Message, std::ops::Range<usize>), ParseError> {
    let l = layout(data)?;
    let head = data
        .get(l.start..l.head_end + 2)
        .ok_or(ParseError::Unterminated)?;
    let head = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
    let start_line = head.get(..l.start_line_end - l.start).unwrap_or("");
    let section_start = l.start_line_end + 2;
    let section = head.get(section_start - l.start..).unwrap_or("");
    let start = parse_start_line(start_line)?;

    let lines = section
        .as_bytes()
        .windows(2)
        .filter(|w| w == b"\r\n")
        .count();
    let mut headers = Headers::with_capacity(section.len(), lines);
    for line in RawLines::new(section.as_bytes()) {
        let Some((name, raw)) = line.field else {
            return Err(ParseError::HeaderLine(line.offset));
        };
        // The section is valid UTF-8 and `raw` is cut at ASCII delimiters.
        let raw = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?;
        let mut bad = false;
        headers.push_with(HeaderName::lookup(name), name, |buf| {
            bad = unfold_into(raw, buf).is_err()
        });
        if bad {
            return Err(ParseError::HeaderLine(line.offset));
        }
    }

    let declared = content_length(section.as_bytes())?;
    let body_start = l.head_end + 4;
    let available = data.len() - body_start;
    let body_len = match declared {
        None => available,
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= available => n,
            _ => {
                return Err(ParseError::BodyTruncated {
                    declared: n,
                    available,
                });
            }
        },
    };
    let message = match start {
        StartLine::Request(method, uri, version) => Message::Request(Request {
            method,
            uri,
            version,
            headers,
            body: Bytes::new(),
        }),
        StartLine::Response(version, status, reason) => Message::Response(Response {
            version,
            status,
            reason,
            headers,
            body: Bytes::new(),
        }),
    };
    Ok((message, body_start..body_start + body_len))
}

/// Parses one UDP datagram (RFC 3261 §18.3): leading CRLFs are skipped, a missing
/// Content-Length means the rest of the datagram, octets beyond Content-Length are
/// ignored. The body is copied out of `datagram`.
pub fn parse_datagram(datagram: &[u8]) -> Result<Message, ParseError> {
    let (mut m, body) = parse_parts(datagram)?;
    *m.body_mut() = Bytes::copy_from_slice(datagram.get(body).unwrap_or(&[]));
    Ok(m)
}

/// As [`parse_datagram`], but the body shares `data`'s buffer instead of being copied.
pub fn parse_bytes(data: Bytes) -> Result<Message, ParseError> {
    let (mut m, body) = parse_parts(&data)?;
    *m.body_mut() = data.slice(body);
    Ok(m)
}

/// Writes into a `Vec<u8>` through `fmt::Write`; it never fails.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn write_headers_and_body(headers: &Headers, body: &[u8], out: &mut Vec<u8>) {
    let mut w = VecWriter(out);
    let mut length_written = false;
    // Writing into a Vec cannot fail, and our Display impls only forward errors, so the
    // fmt::Results below are always Ok.
    for f in headers.iter() {
        if f.known == Some(HeaderName::ContentLength) {
            if !length_written {
                let _ = write!(w, "Content-Length: {}\r\n", body.len());
                length_written = true;
            }
            continue;
        }
        let _ = write!(w, "{}: {}\r\n", f.canonical_name(), f.value);
    }
    if !length_written {
        let _ = write!(w, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

impl Request {
    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let _ = write!(
            VecWriter(out),
            "{} {} {}\r\n",
            self.method,
            self.uri,
            self.version
        );
        write_headers_and_body(&self.headers, &self.body, out);
    }
}

impl Response {
    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let _ = write!(VecWriter(out), "{} {} ", self.version, self.status);
        for c in self.reason.chars() {
            let c = if c.is_control() && c != '\t' { ' ' } else { c };
            let mut b = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        write_headers_and_body(&self.headers, &self.body, out);
    }
}

impl Message {
    /// Parses one datagram; see [`parse_datagram`].
    pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
        parse_datagram(datagram)
    }

    /// The header fields.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    /// The header fields, mutable.
    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }

    /// The body, mutable.
    pub fn body_mut(&mut self) -> &mut Bytes {
        match self {
            Message::Request(r) => &mut r.body,
            Message::Response(r) => &mut r.body,
        }
    }

    /// The version of the start line.
    pub fn version(&self) -> Version {
        match self {
            Message::Request(r) => r.version,
            Message::Response(r) => r.version,
        }
    }

    /// The request, if this is one.
    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    /// The response, if this is one.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        }
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Message::Request(r) => r.write_to(out),
            Message::Response(r) => r.write_to(out),
        }
    }

    /// The wire form.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body().len());
        self.write_to(&mut out);
        out
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Message::Request(r)
    }
}

impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Message::Response(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\nl: 0\r\n\r\n";

    #[test]
    fn methods_are_case_sensitive_tokens() {
        assert_eq!(Method::parse("INVITE"), Ok(Method::Invite));
        assert!(Method::parse("invite").unwrap().is_extension());
        assert!(Method::parse("RE%47IST%45R").unwrap().is_extension());
        assert!(Method::parse("BAD METHOD").is_err());
        assert_eq!(
            Method::Extension(Token::new("INVITE").unwrap()),
            Method::Invite
        );
    }

    #[test]
    fn the_start_line_takes_single_spaces_only() {
        for bad in [
            &b"INVITE  sip:user@example.com  SIP/2.0\r\n\r\n"[..],
            b"OPTIONS sip:remote-target@example.com SIP/2.0  \r\n\r\n",
            b"INVITE <sip:user@example.com> SIP/2.0\r\n\r\n",
            b"INVITE sip:user@example.com; lr SIP/2.0\r\n\r\n",
            b"INVITE sip:alan@jasomi.com\r\n\r\n",
            b"SIP/2.0 4294967301 better not break the receiver\r\n\r\n",
            b"SIP/2.0 099 Low\r\n\r\n",
        ] {
            assert!(
                parse_datagram(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let m = parse_datagram(b"SIP/2.0 100\r\nl: 0\r\n\r\n").unwrap();
        assert_eq!(m.as_response().map(|r| r.reason.as_str()), Some(""));
        let v = parse_datagram(b"OPTIONS sip:a@b SIP/7.0\r\n\r\n").unwrap();
        assert_eq!(v.version(), Version { major: 7, minor: 0 });
    }

    #[test]
    fn a_datagram_without_content_length_carries_the_rest_as_body() {
        let m = parse_datagram(b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\nhello\r\n")
            .unwrap();
        assert_eq!(m.body().as_ref(), b"hello\r\n");
        let out = m.to_vec();
        assert!(out.ends_with(b"Content-Length: 7\r\n\r\nhello\r\n"));
        assert_eq!(parse_datagram(&out), Ok(m));
    }

    #[test]
    fn content_length_frames_the_body_and_ignores_trailing_octets() {
        let m =
            parse_datagram(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nhello").unwrap();
        assert_eq!(m.body().as_ref(), b"he");
        assert_eq!(
            parse_datagram(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 9\r\n\r\nhello"),
            Err(ParseError::BodyTruncated {
                declared: 9,
                available: 5
            })
        );
    }

    #[test]
    fn headers_are_kept_with_their_received_names_and_written_canonically() {
        let m = parse_datagram(OPTIONS).unwrap();
        let names: Vec<_> = m.headers().iter().map(|f| f.name).collect();
        assert_eq!(names, ["Via", "l"]);
        let out = String::from_utf8(m.to_vec()).unwrap();
        assert!(out.contains("\r\nContent-Length: 0\r\n\r\n"), "{out}");
        assert_eq!(parse_datagram(out.as_bytes()), Ok(m));
    }

    #[test]
    fn a_reason_phrase_with_crlf_cannot_inject_headers() {
        let mut r = Response::new(StatusCode::OK);
        r.reason = "OK\r\nVia: injected".into();
        let out = Message::from(r).to_vec();
        let m = parse_datagram(&out).unwrap();
        assert_eq!(m.headers().count(HeaderName::Via), 0);
    }

    #[test]
    fn a_fold_before_the_first_header_or_a_bare_lf_is_malformed() {
        assert_eq!(
            parse_datagram(b"OPTIONS sip:a@b SIP/2.0\r\n folded: x\r\n\r\n"),
            Err(ParseError::HeaderLine(0))
        );
        assert!(matches!(
            parse_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nX: a\nb\r\n\r\n"),
            Err(ParseError::HeaderLine(_))
        ));
        assert_eq!(parse_datagram(b"\r\n\r\n"), Err(ParseError::Empty));
        assert_eq!(
            parse_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n"),
            Err(ParseError::Unterminated)
        );
        assert_eq!(
            parse_datagram(b"OPTIONS sip:a@b SIP/2.0\r\nX: \xff\r\n\r\n"),
            Err(ParseError::NotUtf8)
        );
    }

    #[test]
    fn status_codes_outside_100_to_699_do_not_exist() {
        assert_eq!(StatusCode::new(99), None);
        assert_eq!(StatusCode::new(700), None);
        assert_eq!(
            StatusCode::new(486).map(StatusCode::canonical_reason),
            Some("Busy Here")
        );
        assert_eq!(
            StatusCode::new(499).map(StatusCode::canonical_reason),
            Some("Client Error")
        );
    }
}

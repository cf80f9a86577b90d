//! What a UAS (and each side of the B2BUA) does with a received message before any
//! transaction sees it: accept it, answer it with an error, or drop it silently.
//!
//! [`inspect`] takes the raw bytes of one datagram (or one frame from the
//! [`StreamFramer`](super::StreamFramer)) and returns a [`Disposition`]:
//!
//! - a well-formed request that passes [`check_request`] → [`Disposition::Request`];
//! - a well-formed response that passes [`check_response`] → [`Disposition::Response`];
//! - a request that must be answered with an error → [`Disposition::Reject`], with the
//!   [`ResponseBasis`] (Via, From, To, Call-ID, CSeq as received) to build that answer
//!   from, even when the request did not parse (then it is a 400 built from whatever
//!   header lines could be salvaged);
//! - everything else → [`Disposition::Drop`]: malformed responses (RFC 4475 `scalarlg`,
//!   `bigcode`: responses are never answered), responses with more than one Via (RFC 3261
//!   §8.1.3.3, `bcast`), bad ACKs (an ACK is never answered), and requests without any
//!   Via (no way to route an answer).
//!
//! # The checks, in order (RFC 3261 §8.2)
//!
//! 1. SIP-Version other than 2.0 → 505 (`badvers`).
//! 2. Via, From, To, Call-ID and CSeq present, parseable and not repeated; Max-Forwards,
//!    Contact, Route, Record-Route, Content-Length, Content-Type and Require parseable
//!    if present and the single-valued ones not repeated → otherwise 400 (`multi01`,
//!    `insuf`, `scalar02`, `badinv01`, `quotbal`, `regbadct`, ...). Max-Forwards may be
//!    absent (RFC 2543 peers, `inv2543`); 0 is processed normally, as a UA does
//!    (`zeromf`; 483 is a proxy's answer). Expires, Date and Authorization are left to
//!    the layers that use them (`baddate` is accepted).
//! 3. Method not in [`Capabilities::methods`] → 501 for an unknown (extension) method,
//!    405 with Allow for a known one (`intmeth`, `esc02`). ACK and CANCEL always pass.
//! 4. CSeq method differing from the request method → 400 (`mismatch01`; `mismatch02`
//!    gets 501 from step 3 first, as RFC 4475 prefers).
//! 5. Request-URI scheme other than sip, sips, tel → 416 (`unkscm`, `novelsc`); a SIP
//!    Request-URI with headers (`?...`) → 400 (`escruri`: never turned into headers).
//! 6. Contact `*` or several Contact values outside REGISTER → 400.
//! 7. REGISTER whose To is not a SIP/SIPS URI → 400 (`unksm2`, RFC 3261 §10.3).
//! 8. Require with option tags outside [`Capabilities::supported`] → 420 with
//!    Unsupported listing them (`bext01`; Proxy-Require is for proxies and ignored).
//! 9. A body without Content-Type → 400; a Content-Type outside
//!    [`Capabilities::accept`] → 415 with Accept (`invut`); a Content-Encoding other
//!    than identity → 415 with Accept-Encoding.
//! 10. INVITE whose Accept does not cover application/sdp → 406 with a Warning
//!     (`sdp01`): our answers to INVITE carry SDP.
//!
//! The branch `z9hG4bK` with nothing after it (`badbranch`) is accepted; the transaction
//! layer matches it RFC 2543-style (see [`Via::has_rfc3261_branch`]).

use super::head::{RawLines, find_crlf, find_crlfcrlf, skip_leading_crlf, unfold_into};
use super::header::{HeaderError, HeaderName, Headers};
use super::message::{
    Message, Method, ParseError, Request, Response, StatusCode, Version, parse_datagram,
};
use super::scan::is_token_str;
use super::uri::Uri;
use super::value::{Contacts, MediaType, NameAddr, ValueError, Via};

/// What this UAS implements, for [`check_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Methods handled (ACK and CANCEL are always accepted). Also the Allow of a 405.
    pub methods: Vec<Method>,
    /// Option tags understood in Require.
    pub supported: Vec<String>,
    /// Body media types understood. Also the Accept of a 415.
    pub accept: Vec<MediaType>,
    /// The warn-agent (host or pseudonym token) written in Warning headers.
    pub warn_agent: String,
}

impl Default for Capabilities {
    /// A B2BUA leg: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REFER, NOTIFY;
    /// option tags `replaces` and `timer`; bodies `application/sdp`; warn-agent
    /// `confer`. The dialog layer should narrow or widen this to what it implements.
    fn default() -> Self {
        Self {
            methods: vec![
                Method::Invite,
                Method::Ack,
                Method::Bye,
                Method::Cancel,
                Method::Options,
                Method::Info,
                Method::Update,
                Method::Refer,
                Method::Notify,
            ],
            supported: vec!["replaces".into(), "timer".into()],
            accept: vec![MediaType::application_sdp()],
            warn_agent: "confer".into(),
        }
    }
}

/// Why a request is rejected; [`Rejection::cause`] says which check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectCause {
    /// The bytes did not parse as a message (400).
    Unparsable(ParseError),
    /// A header is missing, repeated or malformed (400).
    BadHeader(HeaderError),
    /// SIP-Version is not 2.0 (505).
    VersionNotSupported(Version),
    /// Unknown method (501).
    MethodNotImplemented,
    /// Known method this UAS does not handle (405).
    MethodNotAllowed,
    /// CSeq method differs from the request method (400).
    CSeqMethodMismatch,
    /// Request-URI scheme is not sip, sips or tel (416).
    UnsupportedUriScheme,
    /// SIP Request-URI carries headers (400).
    RequestUriHeaders,
    /// Contact `*` or several Contacts outside REGISTER (400).
    ContactNotAllowed,
    /// REGISTER To is not a SIP or SIPS URI (400).
    RegisterToNotSip,
    /// Required option tags not supported (420); the tags.
    BadExtension(Vec<String>),
    /// Body without Content-Type (400).
    MissingContentType,
    /// Content-Type not supported (415).
    UnsupportedMediaType,
    /// Content-Encoding not supported (415).
    UnsupportedContentEncoding,
    /// Accept excludes what the answer must carry (406).
    NotAcceptable,
}

/// The answer [`check_request`] calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Status code.
    pub status: StatusCode,
    /// Reason phrase (the canonical one, with a detail for 400).
    pub reason: String,
    /// Headers the response must carry besides the copied ones (Unsupported for 420,
    /// Accept for 415, Allow for 405, Warning for 406).
    pub headers: Vec<(HeaderName, String)>,
    /// Which check failed.
    pub cause: RejectCause,
}

impl Rejection {
    fn new(status: StatusCode, cause: RejectCause) -> Self {
        Self {
            status,
            reason: status.canonical_reason().to_owned(),
            headers: Vec::new(),
            cause,
        }
    }

    fn bad_request(cause: RejectCause) -> Self {
        let detail = match &cause {
            RejectCause::Unparsable(e) => e.to_string(),
            RejectCause::BadHeader(e) => e.to_string(),
            RejectCause::CSeqMethodMismatch => {
                "CSeq method does not match the request method".into()
            }
            RejectCause::RequestUriHeaders => "headers in the Request-URI".into(),
            RejectCause::ContactNotAllowed => "Contact must be one address".into(),
            RejectCause::RegisterToNotSip => "To must be a SIP or SIPS URI".into(),
            RejectCause::MissingContentType => "body without Content-Type".into(),
            _ => String::new(),
        };
        let mut r = Self::new(StatusCode::BAD_REQUEST, cause);
        if !detail.is_empty() {
            r.reason = format!("Bad Request ({detail})");
        }
        r
    }

    fn with_header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The response to send: [`build_response`] plus this rejection's headers.
    pub fn response(&self, basis: &ResponseBasis, to_tag: Option<&str>) -> Response {
        let mut r = build_response(basis, self.status, &self.reason, to_tag);
        for (name, value) in &self.headers {
            // Our own values carry no CR/LF; a refused one is left out rather than sent.
            let _ = r.headers.push(*name, value);
        }
        r
    }
}

/// The header values a response copies from its request (RFC 3261 §8.2.6.2), as
/// received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseBasis {
    vias: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    call_id: Option<String>,
    cseq: Option<String>,
    timestamp: Option<String>,
}

impl ResponseBasis {
    /// Copies the values from a parsed request (the first of each single-valued header;
    /// every Via line in order).
    pub fn from_request(req: &Request) -> Self {
        let h = &req.headers;
        let first = |n: HeaderName| h.get(n).map(str::to_owned);
        Self {
            vias: h.get_all(HeaderName::Via).map(str::to_owned).collect(),
            from: first(HeaderName::From),
            to: first(HeaderName::To),
            call_id: first(HeaderName::CallId),
            cseq: first(HeaderName::CSeq),
            timestamp: first(HeaderName::Timestamp),
        }
    }

    /// Recovers the values from bytes that did not parse as a message. `None` when the
    /// bytes are a response (never answered), an ACK (never answered), or hold no Via
    /// line (no way to route an answer). Header lines that are themselves broken are
    /// skipped; the head may be unterminated.
    pub fn salvage(data: &[u8]) -> Option<Self> {
        let start = skip_leading_crlf(data);
        let start_line_end = find_crlf(data, start)?;
        let start_line = data.get(start..start_line_end)?;
        if start_line
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
        {
            return None;
        }
        let method = start_line.split(|&b| b == b' ').next().unwrap_or(b"");
        if method == b"ACK" {
            return None;
        }
        let section_end = find_crlfcrlf(data, start_line_end).map_or(data.len(), |i| i + 2);
        let section = data.get(start_line_end + 2..section_end).unwrap_or(&[]);
        let mut basis = ResponseBasis::default();
        for line in RawLines::new(section) {
            let Some((name, raw)) = line.field else {
                continue;
            };
            let Some(known) = HeaderName::lookup(name) else {
                continue;
            };
            let Ok(raw) = std::str::from_utf8(raw) else {
                continue;
            };
            let mut value = String::new();
            if unfold_into(raw, &mut value).is_err() {
                continue;
            }
            match known {
                HeaderName::Via => basis.vias.push(value),
                HeaderName::From => _ = basis.from.get_or_insert(value),
                HeaderName::To => _ = basis.to.get_or_insert(value),
                HeaderName::CallId => _ = basis.call_id.get_or_insert(value),
                HeaderName::CSeq => _ = basis.cseq.get_or_insert(value),
                HeaderName::Timestamp => _ = basis.timestamp.get_or_insert(value),
                _ => {}
            }
        }
        (!basis.vias.is_empty()).then_some(basis)
    }

    /// The Via lines, top first.
    pub fn vias(&self) -> &[String] {
        &self.vias
    }

    /// The top Via parsed, to route the response (RFC 3261 §18.2.2); `None` without Via.
    /// When it does not parse, send the answer back to the packet's source address or
    /// on the connection it came from.
    pub fn top_via(&self) -> Option<Result<Via, ValueError>> {
        self.vias.first().map(|v| Via::parse_first(v))
    }

    /// The From value as received.
    pub fn from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// The To value as received.
    pub fn to(&self) -> Option<&str> {
        self.to.as_deref()
    }

    /// The Call-ID as received.
    pub fn call_id(&self) -> Option<&str> {
        self.call_id.as_deref()
    }

    /// The CSeq as received.
    pub fn cseq(&self) -> Option<&str> {
        self.cseq.as_deref()
    }
}

impl From<&Request> for ResponseBasis {
    fn from(req: &Request) -> Self {
        ResponseBasis::from_request(req)
    }
}

/// Builds a response per RFC 3261 §8.2.6: every Via in order, From, Call-ID and CSeq
/// copied; To copied and, for a status above 100, given `to_tag` when it has no tag yet
/// (a `to_tag` that is not a token is not used). A 100 copies Timestamp. CR and LF in
/// `reason` become SP. Values absent from the basis are left out.
pub fn build_response(
    basis: &ResponseBasis,
    status: StatusCode,
    reason: &str,
    to_tag: Option<&str>,
) -> Response {
    let mut r = Response::new(status);
    r.reason = reason.replace(['\r', '\n'], " ");
    let h = &mut r.headers;
    for v in &basis.vias {
        h.push_parsed(Some(HeaderName::Via), HeaderName::Via.as_str(), v);
    }
    if let Some(v) = &basis.from {
        h.push_parsed(Some(HeaderName::From), HeaderName::From.as_str(), v);
    }
    if let Some(v) = &basis.to {
        let needs_tag =
            status.as_u16() > 100 && NameAddr::parse_single(v).is_ok_and(|to| to.tag().is_none());
        match to_tag.filter(|t| needs_tag && is_token_str(t)) {
            Some(tag) => {
                let tagged = format!("{v};tag={tag}");
                h.push_parsed(Some(HeaderName::To), HeaderName::To.as_str(), &tagged);
            }
            None => h.push_parsed(Some(HeaderName::To), HeaderName::To.as_str(), v),
        }
    }
    if let Some(v) = &basis.call_id {
        h.push_parsed(Some(HeaderName::CallId), HeaderName::CallId.as_str(), v);
    }
    if let Some(v) = &basis.cseq {
        h.push_parsed(Some(HeaderName::CSeq), HeaderName::CSeq.as_str(), v);
    }
    if let (true, Some(v)) = (status == StatusCode::TRYING, &basis.timestamp) {
        h.push_parsed(
            Some(HeaderName::Timestamp),
            HeaderName::Timestamp.as_str(),
            v,
        );
    }
    r
}

fn header_check<T>(r: Result<T, HeaderError>) -> Result<T, Rejection> {
    r.map_err(|e| Rejection::bad_request(RejectCause::BadHeader(e)))
}

/// Decides whether a UAS processes `req` or which error answers it; see the module
/// documentation for the checks and their order.
pub fn check_request(req: &Request, caps: &Capabilities) -> Result<(), Rejection> {
    let h: &Headers = &req.headers;
    if req.version != Version::SIP_2_0 {
        return Err(Rejection::new(
            StatusCode::VERSION_NOT_SUPPORTED,
            RejectCause::VersionNotSupported(req.version),
        ));
    }

    // 2. Syntax of what every layer above relies on.
    if header_check(h.vias())?.is_empty() {
        return Err(Rejection::bad_request(RejectCause::BadHeader(
            HeaderError::Missing(HeaderName::Via),
        )));
    }
    header_check(h.from())?;
    let to = header_check(h.to())?;
    header_check(h.call_id())?;
    let cseq = header_check(h.cseq())?;
    header_check(h.max_forwards())?;
    let contacts = header_check(h.contacts())?;
    header_check(h.routes())?;
    header_check(h.record_routes())?;
    header_check(h.content_length())?;
    let content_type = header_check(h.content_type())?;
    let require = header_check(h.require())?;

    // 3. Method.
    let always = matches!(req.method, Method::Ack | Method::Cancel);
    if !always && !caps.methods.contains(&req.method) {
        if req.method.is_extension() {
            return Err(Rejection::new(
                StatusCode::NOT_IMPLEMENTED,
                RejectCause::MethodNotImplemented,
            ));
        }
        let allow = caps
            .methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            RejectCause::MethodNotAllowed,
        )
        .with_header(HeaderName::Allow, allow));
    }

    // 4. CSeq method.
    if cseq.method != req.method {
        return Err(Rejection::bad_request(RejectCause::CSeqMethodMismatch));
    }

    // 5. Request-URI.
    match &req.uri {
        Uri::Other(_) => {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_URI_SCHEME,
                RejectCause::UnsupportedUriScheme,
            ));
        }
        Uri::Sip(u) if !u.headers().is_empty() => {
            return Err(Rejection::bad_request(RejectCause::RequestUriHeaders));
        }
        _ => {}
    }

    // 6, 7. REGISTER is the only request with several Contacts, a wildcard, and an AOR.
    if req.method == Method::Register {
        if to.uri.as_sip().is_none() {
            return Err(Rejection::bad_request(RejectCause::RegisterToNotSip));
        }
    } else if matches!(contacts, Contacts::Wildcard) || contacts.addresses().len() > 1 {
        return Err(Rejection::bad_request(RejectCause::ContactNotAllowed));
    }

    // 8. Require.
    if !always {
        let unsupported: Vec<String> = require
            .iter()
            .filter(|t| !caps.supported.iter().any(|s| s.eq_ignore_ascii_case(t)))
            .map(|t| (*t).to_owned())
            .collect();
        if !unsupported.is_empty() {
            let list = unsupported.join(", ");
            return Err(Rejection::new(
                StatusCode::BAD_EXTENSION,
                RejectCause::BadExtension(unsupported),
            )
            .with_header(HeaderName::Unsupported, list));
        }
    }

    // 9. Body.
    if !req.body.is_empty() {
        let Some(ct) = content_type else {
            return Err(Rejection::bad_request(RejectCause::MissingContentType));
        };
        if !caps.accept.iter().any(|a| a.is(&ct.ty, &ct.subtype)) {
            let accept = caps
                .accept
                .iter()
                .map(|m| format!("{}/{}", m.ty, m.subtype))
                .collect::<Vec<_>>();
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                RejectCause::UnsupportedMediaType,
            )
            .with_header(HeaderName::Accept, accept.join(", ")));
        }
        let encodings = header_check(h.tokens(HeaderName::ContentEncoding))?;
        if encodings
            .iter()
            .any(|e| !e.eq_ignore_ascii_case("identity"))
        {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                RejectCause::UnsupportedContentEncoding,
            )
            .with_header(HeaderName::AcceptEncoding, "identity".into()));
        }
    }

    // 10. Our answers to INVITE carry SDP.
    if req.method == Method::Invite
        && let Some(accept) = header_check(h.accept())?
        && !accept.iter().any(|m| m.covers("application", "sdp"))
    {
        let agent = if is_token_str(&caps.warn_agent) {
            caps.warn_agent.as_str()
        } else {
            "-"
        };
        return Err(Rejection::new(StatusCode::NOT_ACCEPTABLE, RejectCause::NotAcceptable).with_header(
            HeaderName::Warning,
            format!("399 {agent} \"Accept does not allow application/sdp, which the answer must carry\""),
        ));
    }
    Ok(())
}

/// Why a received message is dropped without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// It did not parse and is not an answerable request.
    Unparsable(ParseError),
    /// A response whose Via, From, To, Call-ID or CSeq is missing, repeated or
    /// malformed.
    MalformedResponse(HeaderError),
    /// A response with a SIP-Version other than 2.0.
    ResponseVersion(Version),
    /// A response with more than one Via: not for a UAC (RFC 3261 §8.1.3.3).
    ResponseWithSeveralVias,
    /// A request that fails the checks but cannot be answered: an ACK, or no Via.
    Unanswerable(Rejection),
}

/// Decides whether a UAC accepts a response: SIP/2.0, exactly one Via, and Via, From,
/// To, Call-ID, CSeq well-formed and not repeated.
pub fn check_response(resp: &Response) -> Result<(), DropReason> {
    if resp.version != Version::SIP_2_0 {
        return Err(DropReason::ResponseVersion(resp.version));
    }
    let h = &resp.headers;
    let bad = DropReason::MalformedResponse;
    let vias = h.vias().map_err(bad)?;
    match vias.len() {
        0 => {
            return Err(DropReason::MalformedResponse(HeaderError::Missing(
                HeaderName::Via,
            )));
        }
        1 => {}
        _ => return Err(DropReason::ResponseWithSeveralVias),
    }
    h.from().map_err(bad)?;
    h.to().map_err(bad)?;
    h.call_id().map_err(bad)?;
    h.cseq().map_err(bad)?;
    h.content_length().map_err(bad)?;
    Ok(())
}

/// What to do with one received message.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// A request that passed [`check_request`].
    Request(Request),
    /// A response that passed [`check_response`].
    Response(Response),
    /// Answer with `rejection.response(&basis, to_tag)` and go no further.
    Reject {
        /// The answer to give.
        rejection: Rejection,
        /// What to build it from.
        basis: ResponseBasis,
    },
    /// Discard silently.
    Drop(DropReason),
}

/// Parses one datagram (or stream frame) and decides its [`Disposition`].
pub fn inspect(data: &[u8], caps: &Capabilities) -> Disposition {
    match parse_datagram(data) {
        Ok(Message::Request(req)) => match check_request(&req, caps) {
            Ok(()) => Disposition::Request(req),
            Err(rejection) => {
                let basis = ResponseBasis::from_request(&req);
                if req.method == Method::Ack || basis.vias.is_empty() {
                    Disposition::Drop(DropReason::Unanswerable(rejection))
                } else {
                    Disposition::Reject { rejection, basis }
                }
            }
        },
        Ok(Message::Response(resp)) => match check_response(&resp) {
            Ok(()) => Disposition::Response(resp),
            Err(reason) => Disposition::Drop(reason),
        },
        Err(e) => match ResponseBasis::salvage(data) {
            Some(basis) => Disposition::Reject {
                rejection: Rejection::bad_request(RejectCause::Unparsable(e)),
                basis,
            },
            None => Disposition::Drop(DropReason::Unparsable(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n\
        Via: SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n\
        From: <sip:alice@example.com>;tag=1\r\n\
        To: Bob <sip:bob@example.com>\r\n\
        Call-ID: c1@a\r\n\
        CSeq: 1 INVITE\r\n\
        Timestamp: 54\r\n\
        Contact: <sip:alice@a.example.com>\r\n\
        Max-Forwards: 70\r\n\
        Content-Length: 0\r\n\r\n";

    fn req(s: &str) -> Request {
        match parse_datagram(s.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plain_invite_passes() {
        assert_eq!(
            check_request(&req(INVITE), &Capabilities::default()),
            Ok(())
        );
    }

    #[test]
    fn a_response_copies_vias_in_order_and_tags_the_to() {
        let r = req(INVITE);
        let resp = build_response(
            &ResponseBasis::from_request(&r),
            StatusCode::RINGING,
            "Ringing",
            Some("xyz"),
        );
        assert_eq!(resp.headers.get_all(HeaderName::Via).count(), 2);
        assert_eq!(resp.headers.vias().unwrap()[1].branch(), Some("z9hG4bK2"));
        assert_eq!(resp.headers.to().unwrap().tag(), Some("xyz"));
        assert_eq!(resp.headers.from().unwrap().tag(), Some("1"));
        assert_eq!(resp.headers.cseq().unwrap().seq, 1);
        assert!(!resp.headers.contains(HeaderName::Timestamp));
        let trying = build_response(
            &ResponseBasis::from_request(&r),
            StatusCode::TRYING,
            "Trying",
            Some("xyz"),
        );
        assert_eq!(trying.headers.to().unwrap().tag(), None);
        assert_eq!(trying.headers.get(HeaderName::Timestamp), Some("54"));
    }

    #[test]
    fn an_existing_to_tag_is_kept_and_a_bad_tag_is_not_used() {
        let r = req(&INVITE.replace(
            "To: Bob <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=old",
        ));
        let basis = ResponseBasis::from_request(&r);
        let resp = build_response(&basis, StatusCode::OK, "OK", Some("new"));
        assert_eq!(resp.headers.to().unwrap().tag(), Some("old"));
        let r2 = req(INVITE);
        let resp2 = build_response(
            &ResponseBasis::from_request(&r2),
            StatusCode::OK,
            "OK\r\nX: y",
            Some("a b"),
        );
        assert_eq!(resp2.headers.to().unwrap().tag(), None);
        assert_eq!(resp2.reason, "OK  X: y");
    }

    #[test]
    fn known_but_unhandled_methods_get_405_with_allow() {
        let r = req(&INVITE.replace("INVITE", "PUBLISH"));
        let rej = check_request(&r, &Capabilities::default()).unwrap_err();
        assert_eq!(rej.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(
            rej.headers
                .iter()
                .any(|(n, v)| *n == HeaderName::Allow && v.starts_with("INVITE, ACK"))
        );
    }

    #[test]
    fn a_bad_ack_is_dropped_not_answered() {
        let bytes = INVITE
            .replace("INVITE", "ACK")
            .replace("CSeq: 1 ACK", "CSeq: 1 BYE");
        assert!(matches!(
            inspect(bytes.as_bytes(), &Capabilities::default()),
            Disposition::Drop(DropReason::Unanswerable(_))
        ));
    }

    #[test]
    fn several_contacts_outside_register_are_rejected() {
        let r = req(&INVITE.replace(
            "Contact: <sip:alice@a.example.com>",
            "Contact: <sip:a@a>, <sip:b@b>",
        ));
        let rej = check_request(&r, &Capabilities::default()).unwrap_err();
        assert_eq!(rej.cause, RejectCause::ContactNotAllowed);
    }

    #[test]
    fn a_compressed_body_is_unsupported() {
        let mut s = INVITE.replace(
            "Content-Length: 0",
            "Content-Type: application/sdp\r\nContent-Encoding: gzip\r\nContent-Length: 3",
        );
        s.push_str("abc");
        let rej = check_request(&req(&s), &Capabilities::default()).unwrap_err();
        assert_eq!(rej.cause, RejectCause::UnsupportedContentEncoding);
        assert_eq!(
            rej.headers,
            [(HeaderName::AcceptEncoding, "identity".to_owned())]
        );
    }

    #[test]
    fn salvage_keeps_every_via_line_and_the_first_of_the_rest() {
        let data = b"INVITE <sip:x@y> SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nBroken line\r\nv: SIP/2.0/UDP b\r\nTo: <sip:t@h>\r\nTo: <sip:u@h>\r\nl: 0\r\n\r\n";
        let basis = ResponseBasis::salvage(data).unwrap();
        assert_eq!(
            basis.vias(),
            ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b"]
        );
        assert_eq!(basis.to(), Some("<sip:t@h>"));
        assert_eq!(basis.call_id(), None);
        assert!(ResponseBasis::salvage(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a\r\n\r\n").is_none());
        assert!(
            ResponseBasis::salvage(b"ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n\r\n").is_none()
        );
        assert!(ResponseBasis::salvage(b"garbage").is_none());
    }
}

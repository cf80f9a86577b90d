//! Header fields: the ordered store every message carries, the table of known names with
//! their compact forms, and the typed accessors the layers above rely on.
//!
//! # Storage
//!
//! [`Headers`] keeps every field in arrival order, with its name as received (`v`,
//! `MaX-fOrWaRdS`, `C%6Fntact`) and its value unfolded (each `CRLF 1*WSP` became one SP)
//! and trimmed, but otherwise byte-exact: unknown headers and odd values such as
//! `;;,,;;,;` survive untouched. Names and values live in one `String` per message with a
//! small index beside it, so parsing a message allocates twice for its whole header
//! section, however many fields it has.
//!
//! # Lookup
//!
//! A [`HeaderKey`] is either a known [`HeaderName`] or any string; a string that names a
//! known header in any case or compact form (`"v"`, `"VIA"`) resolves to it, so all of
//! `headers.get(HeaderName::Via)`, `headers.get("v")` and `headers.get("Via")` see the
//! same fields. Unknown names compare ASCII case-insensitively. `C%6Fntact` is a different
//! (unknown) name, never Contact (RFC 4475 `esc02`).
//!
//! # Typed access
//!
//! Accessors such as [`Headers::cseq`] parse on demand and return a [`HeaderError`]:
//! `Missing`, `Malformed`, or `Duplicate` when a single-valued header (Call-ID, CSeq,
//! From, To, Max-Forwards, Content-Length, Content-Type, Expires) appears more than once,
//! never "first one wins" (RFC 4475 `multi01`).

use std::fmt;

use super::scan::{is_token_str, parse_digits};
use super::value::{
    CSeq, Contacts, MediaType, NameAddr, ValueError, Via, parse_token_list, valid_call_id,
};

macro_rules! header_names {
    ($( $variant:ident = $canon:literal, $lower:literal, $compact:expr; )*) => {
        /// A header name this crate knows, with its canonical spelling and compact form.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum HeaderName {
            $(
                #[doc = concat!("`", $canon, "`")]
                $variant,
            )*
        }

        impl HeaderName {
            /// Every known name.
            pub const ALL: &'static [HeaderName] = &[$(HeaderName::$variant),*];

            /// The canonical (long) spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(HeaderName::$variant => $canon,)*
                }
            }

            /// The compact form (RFC 3261 §7.3.3 and later RFCs), if the header has one.
            pub fn compact(self) -> Option<char> {
                match self {
                    $(HeaderName::$variant => $compact,)*
                }
            }

            fn from_lower(s: &[u8]) -> Option<Self> {
                match s {
                    $($lower => Some(HeaderName::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

header_names! {
    Accept = "Accept", b"accept", None;
    AcceptContact = "Accept-Contact", b"accept-contact", Some('a');
    AcceptEncoding = "Accept-Encoding", b"accept-encoding", None;
    AcceptLanguage = "Accept-Language", b"accept-language", None;
    AlertInfo = "Alert-Info", b"alert-info", None;
    Allow = "Allow", b"allow", None;
    AllowEvents = "Allow-Events", b"allow-events", Some('u');
    AuthenticationInfo = "Authentication-Info", b"authentication-info", None;
    Authorization = "Authorization", b"authorization", None;
    CallId = "Call-ID", b"call-id", Some('i');
    CallInfo = "Call-Info", b"call-info", None;
    Contact = "Contact", b"contact", Some('m');
    ContentDisposition = "Content-Disposition", b"content-disposition", None;
    ContentEncoding = "Content-Encoding", b"content-encoding", Some('e');
    ContentLanguage = "Content-Language", b"content-language", None;
    ContentLength = "Content-Length", b"content-length", Some('l');
    ContentType = "Content-Type", b"content-type", Some('c');
    CSeq = "CSeq", b"cseq", None;
    Date = "Date", b"date", None;
    ErrorInfo = "Error-Info", b"error-info", None;
    Event = "Event", b"event", Some('o');
    Expires = "Expires", b"expires", None;
    From = "From", b"from", Some('f');
    Identity = "Identity", b"identity", Some('y');
    IdentityInfo = "Identity-Info", b"identity-info", Some('n');
    InReplyTo = "In-Reply-To", b"in-reply-to", None;
    MaxForwards = "Max-Forwards", b"max-forwards", None;
    MimeVersion = "MIME-Version", b"mime-version", None;
    MinExpires = "Min-Expires", b"min-expires", None;
    MinSe = "Min-SE", b"min-se", None;
    Organization = "Organization", b"organization", None;
    PAssertedIdentity = "P-Asserted-Identity", b"p-asserted-identity", None;
    PPreferredIdentity = "P-Preferred-Identity", b"p-preferred-identity", None;
    Path = "Path", b"path", None;
    Priority = "Priority", b"priority", None;
    Privacy = "Privacy", b"privacy", None;
    ProxyAuthenticate = "Proxy-Authenticate", b"proxy-authenticate", None;
    ProxyAuthorization = "Proxy-Authorization", b"proxy-authorization", None;
    ProxyRequire = "Proxy-Require", b"proxy-require", None;
    RAck = "RAck", b"rack", None;
    Reason = "Reason", b"reason", None;
    RecordRoute = "Record-Route", b"record-route", None;
    ReferTo = "Refer-To", b"refer-to", Some('r');
    ReferredBy = "Referred-By", b"referred-by", Some('b');
    RejectContact = "Reject-Contact", b"reject-contact", Some('j');
    Replaces = "Replaces", b"replaces", None;
    ReplyTo = "Reply-To", b"reply-to", None;
    RequestDisposition = "Request-Disposition", b"request-disposition", Some('d');
    Require = "Require", b"require", None;
    RetryAfter = "Retry-After", b"retry-after", None;
    Route = "Route", b"route", None;
    RSeq = "RSeq", b"rseq", None;
    Server = "Server", b"server", None;
    ServiceRoute = "Service-Route", b"service-route", None;
    SessionExpires = "Session-Expires", b"session-expires", Some('x');
    SipETag = "SIP-ETag", b"sip-etag", None;
    SipIfMatch = "SIP-If-Match", b"sip-if-match", None;
    Subject = "Subject", b"subject", Some('s');
    SubscriptionState = "Subscription-State", b"subscription-state", None;
    Supported = "Supported", b"supported", Some('k');
    Timestamp = "Timestamp", b"timestamp", None;
    To = "To", b"to", Some('t');
    Unsupported = "Unsupported", b"unsupported", None;
    UserAgent = "User-Agent", b"user-agent", None;
    Via = "Via", b"via", Some('v');
    Warning = "Warning", b"warning", None;
    WwwAuthenticate = "WWW-Authenticate", b"www-authenticate", None;
}

impl HeaderName {
    /// Resolves a name as received (any case, long or compact form) to a known name.
    pub fn lookup(raw: &str) -> Option<HeaderName> {
        let b = raw.as_bytes();
        if let [one] = b {
            let c = char::from(one.to_ascii_lowercase());
            return HeaderName::ALL
                .iter()
                .copied()
                .find(|h| h.compact() == Some(c));
        }
        let mut buf = [0u8; 24];
        let lower = buf.get_mut(..b.len())?;
        lower.copy_from_slice(b);
        lower.make_ascii_lowercase();
        HeaderName::from_lower(lower)
    }

    /// True for the headers RFC 3261 allows once per message and that this crate reports
    /// as [`HeaderError::Duplicate`] when repeated.
    pub fn is_single_valued(self) -> bool {
        matches!(
            self,
            HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::From
                | HeaderName::To
                | HeaderName::MaxForwards
                | HeaderName::ContentLength
                | HeaderName::ContentType
                | HeaderName::Expires
        )
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a header lookup matches: a known name, or any other name compared ASCII
/// case-insensitively. Build it with `.into()` from a [`HeaderName`] or a `&str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKey<'a> {
    /// A known header (all its spellings and its compact form).
    Known(HeaderName),
    /// An unknown header name.
    Other(&'a str),
}

impl From<HeaderName> for HeaderKey<'_> {
    fn from(h: HeaderName) -> Self {
        HeaderKey::Known(h)
    }
}

impl<'a> From<&'a str> for HeaderKey<'a> {
    fn from(s: &'a str) -> Self {
        match HeaderName::lookup(s) {
            Some(h) => HeaderKey::Known(h),
            None => HeaderKey::Other(s),
        }
    }
}

/// A typed header access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A required header is absent.
    #[error("missing {0} header")]
    Missing(HeaderName),
    /// A single-valued header appears more than once.
    #[error("{0} header appears more than once")]
    Duplicate(HeaderName),
    /// The value does not parse.
    #[error("malformed {name} header: {error}")]
    Malformed {
        /// Which header.
        name: HeaderName,
        /// What is wrong.
        error: ValueError,
    },
}

impl HeaderError {
    /// The header the error is about.
    pub fn header(&self) -> HeaderName {
        match self {
            HeaderError::Missing(h) | HeaderError::Duplicate(h) => *h,
            HeaderError::Malformed { name, .. } => *name,
        }
    }
}

/// A header could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHeader {
    /// The name is not a token.
    #[error("header name is not a token")]
    Name,
    /// The value contains CR or LF.
    #[error("header value contains CR or LF")]
    Value,
}

/// One header field as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// The name as received (or as pushed).
    pub name: &'a str,
    /// The known header it is, if any.
    pub known: Option<HeaderName>,
    /// The value, unfolded and trimmed.
    pub value: &'a str,
}

impl<'a> HeaderField<'a> {
    /// The canonical name for a known header, the name as received otherwise.
    pub fn canonical_name(&self) -> &'a str {
        match self.known {
            Some(h) => h.as_str(),
            None => self.name,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    known: Option<HeaderName>,
    name: (usize, usize),
    value: (usize, usize),
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|h| (h.name, h.value)))
            .finish()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.eq_except(other, None)
    }
}

impl Eq for Headers {}

fn slot_matches(buf: &str, s: &Slot, key: HeaderKey<'_>) -> bool {
    match key {
        HeaderKey::Known(h) => s.known == Some(h),
        HeaderKey::Other(n) => {
            s.known.is_none()
                && buf
                    .get(s.name.0..s.name.1)
                    .is_some_and(|m| m.eq_ignore_ascii_case(n))
        }
    }
}

/// The header fields of a message, in order. See the module documentation.
///
/// Equality compares field by field: names by identity (a known name in any spelling, or
/// an unknown name ASCII case-insensitively), values byte for byte.
#[derive(Clone, Default)]
pub struct Headers {
    buf: String,
    slots: Vec<Slot>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_capacity(bytes: usize, fields: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            slots: Vec::with_capacity(fields),
        }
    }

    fn field(&self, s: &Slot) -> HeaderField<'_> {
        HeaderField {
            name: self.buf.get(s.name.0..s.name.1).unwrap_or(""),
            known: s.known,
            value: self.buf.get(s.value.0..s.value.1).unwrap_or(""),
        }
    }

    fn matches(&self, s: &Slot, key: HeaderKey<'_>) -> bool {
        match key {
            HeaderKey::Known(h) => s.known == Some(h),
            HeaderKey::Other(n) => {
                s.known.is_none()
                    && self
                        .buf
                        .get(s.name.0..s.name.1)
                        .is_some_and(|m| m.eq_ignore_ascii_case(n))
            }
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// All fields in order.
    pub fn iter(&self) -> impl Iterator<Item = HeaderField<'_>> + '_ {
        self.slots.iter().map(|s| self.field(s))
    }

    /// The value of the first field matching `key`.
    pub fn get<'k>(&self, key: impl Into<HeaderKey<'k>>) -> Option<&str> {
        self.get_all(key).next()
    }

    /// The values of all fields matching `key`, in order (one per header line; a line
    /// may itself hold a comma-separated list).
    pub fn get_all<'k>(&self, key: impl Into<HeaderKey<'k>>) -> impl Iterator<Item = &str> {
        let key = key.into();
        self.slots
            .iter()
            .filter(move |s| self.matches(s, key))
            .map(|s| self.field(s).value)
    }

    /// Number of fields matching `key`.
    pub fn count<'k>(&self, key: impl Into<HeaderKey<'k>>) -> usize {
        let key = key.into();
        self.slots.iter().filter(|s| self.matches(s, key)).count()
    }

    /// True when a field matches `key`.
    pub fn contains<'k>(&self, key: impl Into<HeaderKey<'k>>) -> bool {
        self.count(key) > 0
    }

    /// The value of a header that may appear at most once: `Ok(None)` when absent,
    /// [`HeaderError::Duplicate`] when repeated.
    pub fn single(&self, name: HeaderName) -> Result<Option<&str>, HeaderError> {
        let mut it = self.get_all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(HeaderError::Duplicate(name));
        }
        Ok(first)
    }

    fn required(&self, name: HeaderName) -> Result<&str, HeaderError> {
        self.single(name)?.ok_or(HeaderError::Missing(name))
    }

    fn resolve_name<'k>(
        key: HeaderKey<'k>,
    ) -> Result<(Option<HeaderName>, &'k str), InvalidHeader> {
        match key {
            HeaderKey::Known(h) => Ok((Some(h), h.as_str())),
            HeaderKey::Other(n) if is_token_str(n) => Ok((None, n)),
            HeaderKey::Other(_) => Err(InvalidHeader::Name),
        }
    }

    fn make_slot(&mut self, known: Option<HeaderName>, name: &str, value: &str) -> Slot {
        let n0 = self.buf.len();
        self.buf.push_str(name);
        let n1 = self.buf.len();
        self.buf.push_str(value);
        Slot {
            known,
            name: (n0, n1),
            value: (n1, self.buf.len()),
        }
    }

    /// Appends a field. A known name is written in its canonical form; any other name
    /// must be a token. The value is trimmed and must not contain CR or LF (which would
    /// let it inject headers).
    pub fn push<'k>(
        &mut self,
        name: impl Into<HeaderKey<'k>>,
        value: &str,
    ) -> Result<(), InvalidHeader> {
        self.insert(self.slots.len(), name, value)
    }

    /// Inserts a field at `index` (clamped to the end), as [`Headers::push`] does.
    pub fn insert<'k>(
        &mut self,
        index: usize,
        name: impl Into<HeaderKey<'k>>,
        value: &str,
    ) -> Result<(), InvalidHeader> {
        let (known, name) = Self::resolve_name(name.into())?;
        if value.contains(['\r', '\n']) {
            return Err(InvalidHeader::Value);
        }
        let slot = self.make_slot(known, name, value.trim_matches([' ', '\t']));
        self.slots.insert(index.min(self.slots.len()), slot);
        Ok(())
    }

    /// Appends a field the parser has already validated.
    pub(crate) fn push_parsed(&mut self, known: Option<HeaderName>, name: &str, value: &str) {
        let slot = self.make_slot(known, name, value);
        self.slots.push(slot);
    }

    /// Appends a field whose value the caller writes into the buffer (the parser unfolds
    /// straight into it, saving a copy).
    pub(crate) fn push_with(
        &mut self,
        known: Option<HeaderName>,
        name: &str,
        write: impl FnOnce(&mut String),
    ) {
        let n0 = self.buf.len();
        self.buf.push_str(name);
        let n1 = self.buf.len();
        write(&mut self.buf);
        self.slots.push(Slot {
            known,
            name: (n0, n1),
            value: (n1, self.buf.len()),
        });
    }

    /// Removes every field matching `key`; returns how many were removed.
    pub fn remove<'k>(&mut self, key: impl Into<HeaderKey<'k>>) -> usize {
        let key = key.into();
        let before = self.slots.len();
        let buf = &self.buf;
        self.slots.retain(|s| !slot_matches(buf, s, key));
        let removed = before - self.slots.len();
        if removed > 0 {
            self.compact_if_sparse();
        }
        removed
    }

    /// Replaces every field matching `name` by one field with `value`, at the position of
    /// the first one (or at the end).
    pub fn set<'k>(
        &mut self,
        name: impl Into<HeaderKey<'k>>,
        value: &str,
    ) -> Result<(), InvalidHeader> {
        let key = name.into();
        Self::resolve_name(key)?;
        if value.contains(['\r', '\n']) {
            return Err(InvalidHeader::Value);
        }
        // Every match sits at or after `at`, so removing them leaves `at` in place.
        let at = self
            .slots
            .iter()
            .position(|s| self.matches(s, key))
            .unwrap_or(self.slots.len());
        self.remove(key);
        self.insert(at, key, value)
    }

    /// Rewrites the buffer when removed fields left more garbage than live text.
    fn compact_if_sparse(&mut self) {
        let live: usize = self.slots.iter().map(|s| s.value.1 - s.name.0).sum();
        if self.buf.len() <= 2 * live + 256 {
            return;
        }
        let old = std::mem::take(&mut self.buf);
        self.buf.reserve(live);
        for s in &mut self.slots {
            let n0 = self.buf.len();
            self.buf.push_str(old.get(s.name.0..s.name.1).unwrap_or(""));
            let n1 = self.buf.len();
            self.buf
                .push_str(old.get(s.value.0..s.value.1).unwrap_or(""));
            s.name = (n0, n1);
            s.value = (n1, self.buf.len());
        }
    }

    /// Field-by-field equality, names by identity (known name, or unknown names ASCII
    /// case-insensitively), values byte for byte; fields matching `skip` are ignored.
    pub(crate) fn eq_except(&self, other: &Headers, skip: Option<HeaderName>) -> bool {
        let keep = |f: &HeaderField<'_>| skip.is_none() || f.known != skip;
        let mut a = self.iter().filter(keep);
        let mut b = other.iter().filter(keep);
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(x), Some(y)) => {
                    let names = match (x.known, y.known) {
                        (Some(p), Some(q)) => p == q,
                        (None, None) => x.name.eq_ignore_ascii_case(y.name),
                        _ => false,
                    };
                    if !names || x.value != y.value {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }

    // ---- typed accessors ----

    fn malformed(name: HeaderName) -> impl Fn(ValueError) -> HeaderError {
        move |error| HeaderError::Malformed { name, error }
    }

    /// All Via values, top first, over every Via line. Empty when there is none.
    pub fn vias(&self) -> Result<Vec<Via>, HeaderError> {
        let mut out = Vec::new();
        for v in self.get_all(HeaderName::Via) {
            Via::parse_list(v, &mut out).map_err(Self::malformed(HeaderName::Via))?;
        }
        Ok(out)
    }

    /// The topmost Via value only (the rest is not parsed): what transaction matching
    /// and response routing need.
    pub fn top_via(&self) -> Result<Via, HeaderError> {
        let v = self
            .get(HeaderName::Via)
            .ok_or(HeaderError::Missing(HeaderName::Via))?;
        Via::parse_first(v).map_err(Self::malformed(HeaderName::Via))
    }

    /// The From header.
    pub fn from(&self) -> Result<NameAddr, HeaderError> {
        NameAddr::parse_single(self.required(HeaderName::From)?)
            .map_err(Self::malformed(HeaderName::From))
    }

    /// The To header.
    pub fn to(&self) -> Result<NameAddr, HeaderError> {
        NameAddr::parse_single(self.required(HeaderName::To)?)
            .map_err(Self::malformed(HeaderName::To))
    }

    /// The Call-ID, validated as `word ["@" word]`.
    pub fn call_id(&self) -> Result<&str, HeaderError> {
        let v = self.required(HeaderName::CallId)?;
        valid_call_id(v).map_err(Self::malformed(HeaderName::CallId))?;
        Ok(v)
    }

    /// The CSeq.
    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        self.required(HeaderName::CSeq)?
            .parse()
            .map_err(Self::malformed(HeaderName::CSeq))
    }

    fn number(&self, name: HeaderName, max: u64) -> Result<Option<u64>, HeaderError> {
        let Some(v) = self.single(name)? else {
            return Ok(None);
        };
        let digits_end = v
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(v.len());
        if digits_end == 0 || digits_end != v.len() {
            let error = if v.is_empty() {
                ValueError::Empty
            } else {
                ValueError::Unexpected(digits_end)
            };
            return Err(HeaderError::Malformed { name, error });
        }
        match parse_digits(v.as_bytes()) {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(HeaderError::Malformed {
                name,
                error: ValueError::OutOfRange,
            }),
        }
    }

    /// Max-Forwards (0-255; leading zeros allowed). `Ok(None)` when absent.
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        Ok(self
            .number(HeaderName::MaxForwards, u64::from(u8::MAX))?
            .and_then(|n| u8::try_from(n).ok()))
    }

    /// Content-Length as written. `Ok(None)` when absent. (A parsed message's body is
    /// already framed by it; the serializer writes the body's length.)
    pub fn content_length(&self) -> Result<Option<u32>, HeaderError> {
        Ok(self
            .number(HeaderName::ContentLength, u64::from(u32::MAX))?
            .and_then(|n| u32::try_from(n).ok()))
    }

    /// Expires (delta-seconds, 32 bits). `Ok(None)` when absent.
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        Ok(self
            .number(HeaderName::Expires, u64::from(u32::MAX))?
            .and_then(|n| u32::try_from(n).ok()))
    }

    /// Content-Type. `Ok(None)` when absent.
    pub fn content_type(&self) -> Result<Option<MediaType>, HeaderError> {
        self.single(HeaderName::ContentType)?
            .map(|v| v.parse().map_err(Self::malformed(HeaderName::ContentType)))
            .transpose()
    }

    /// Accept: `Ok(None)` when absent, `Ok(Some(empty))` when present and empty (nothing
    /// is acceptable, RFC 3261 §20.1).
    pub fn accept(&self) -> Result<Option<Vec<MediaType>>, HeaderError> {
        if !self.contains(HeaderName::Accept) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for v in self.get_all(HeaderName::Accept) {
            MediaType::parse_list(v, &mut out).map_err(Self::malformed(HeaderName::Accept))?;
        }
        Ok(Some(out))
    }

    /// The Contact header(s): the wildcard, or all addresses in order (empty when
    /// absent). A wildcard mixed with addresses is malformed.
    pub fn contacts(&self) -> Result<Contacts, HeaderError> {
        let mut list = Vec::new();
        let mut wildcard = false;
        for v in self.get_all(HeaderName::Contact) {
            Contacts::parse_into(v, &mut list, &mut wildcard)
                .map_err(Self::malformed(HeaderName::Contact))?;
        }
        match (wildcard, list.is_empty(), self.count(HeaderName::Contact)) {
            (true, true, 1) => Ok(Contacts::Wildcard),
            (true, _, _) => Err(HeaderError::Malformed {
                name: HeaderName::Contact,
                error: ValueError::Unexpected(0),
            }),
            (false, _, _) => Ok(Contacts::List(list)),
        }
    }

    /// A list of name-addr values over every line of `name` (Route, Record-Route, Path,
    /// Service-Route, P-Asserted-Identity, ...). Empty when absent.
    pub fn name_addrs(&self, name: HeaderName) -> Result<Vec<NameAddr>, HeaderError> {
        let mut out = Vec::new();
        for v in self.get_all(name) {
            NameAddr::parse_list(v, &mut out).map_err(Self::malformed(name))?;
        }
        Ok(out)
    }

    /// Route values, in order.
    pub fn routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.name_addrs(HeaderName::Route)
    }

    /// Record-Route values, in order.
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.name_addrs(HeaderName::RecordRoute)
    }

    /// A comma-separated token list over every line of `name` (option tags, methods,
    /// encodings), borrowed from the message.
    pub fn tokens(&self, name: HeaderName) -> Result<Vec<&str>, HeaderError> {
        let mut out = Vec::new();
        for v in self.get_all(name) {
            parse_token_list(v, &mut out).map_err(Self::malformed(name))?;
        }
        Ok(out)
    }

    /// Require option tags.
    pub fn require(&self) -> Result<Vec<&str>, HeaderError> {
        self.tokens(HeaderName::Require)
    }

    /// Proxy-Require option tags.
    pub fn proxy_require(&self) -> Result<Vec<&str>, HeaderError> {
        self.tokens(HeaderName::ProxyRequire)
    }

    /// Supported option tags.
    pub fn supported(&self) -> Result<Vec<&str>, HeaderError> {
        self.tokens(HeaderName::Supported)
    }

    /// Unsupported option tags.
    pub fn unsupported(&self) -> Result<Vec<&str>, HeaderError> {
        self.tokens(HeaderName::Unsupported)
    }

    /// Allow methods (as tokens).
    pub fn allow(&self) -> Result<Vec<&str>, HeaderError> {
        self.tokens(HeaderName::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_from_its_canonical_lower_and_compact_forms() {
        for &h in HeaderName::ALL {
            assert_eq!(HeaderName::lookup(h.as_str()), Some(h), "{h}");
            assert_eq!(
                HeaderName::lookup(&h.as_str().to_ascii_uppercase()),
                Some(h)
            );
            if let Some(c) = h.compact() {
                assert_eq!(HeaderName::lookup(&c.to_string()), Some(h));
                assert_eq!(
                    HeaderName::lookup(&c.to_ascii_uppercase().to_string()),
                    Some(h)
                );
            }
        }
        assert_eq!(HeaderName::lookup("C%6Fntact"), None);
        assert_eq!(
            HeaderName::lookup("MaX-fOrWaRdS"),
            Some(HeaderName::MaxForwards)
        );
        assert_eq!(
            HeaderName::lookup("a-much-longer-name-than-any-known-one"),
            None
        );
    }

    #[test]
    fn compact_forms_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for h in HeaderName::ALL.iter().filter_map(|h| h.compact()) {
            assert!(seen.insert(h), "{h}");
        }
    }

    #[test]
    fn lookups_see_long_and_compact_fields_alike() {
        let mut h = Headers::new();
        h.push("v", "SIP/2.0/UDP a.example.com").unwrap();
        h.push("X-Custom", "one").unwrap();
        h.push(HeaderName::Via, "SIP/2.0/TCP b.example.com")
            .unwrap();
        h.push("x-custom", "two").unwrap();
        assert_eq!(
            h.get_all("VIA").collect::<Vec<_>>(),
            ["SIP/2.0/UDP a.example.com", "SIP/2.0/TCP b.example.com"]
        );
        assert_eq!(h.get_all("X-CUSTOM").count(), 2);
        assert_eq!(h.iter().next().map(|f| f.canonical_name()), Some("Via"));
        assert_eq!(h.remove("x-custom"), 2);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn pushing_a_crlf_or_a_bad_name_is_refused() {
        let mut h = Headers::new();
        assert_eq!(
            h.push("Subject", "a\r\nVia: evil"),
            Err(InvalidHeader::Value)
        );
        assert_eq!(h.push("Bad Name", "x"), Err(InvalidHeader::Name));
        assert_eq!(h.push("X-Ok", "  padded  "), Ok(()));
        assert_eq!(h.get("x-ok"), Some("padded"));
    }

    #[test]
    fn set_replaces_in_place_and_removal_compacts_the_buffer() {
        let mut h = Headers::new();
        h.push("X-A", "1").unwrap();
        h.push("X-B", "2").unwrap();
        h.push("X-C", "3").unwrap();
        h.set("x-b", "two").unwrap();
        assert_eq!(
            h.iter().map(|f| f.value).collect::<Vec<_>>(),
            ["1", "two", "3"]
        );
        for i in 0..1000 {
            h.set("X-B", &format!("value number {i}")).unwrap();
        }
        assert!(h.buf.len() < 1024, "{}", h.buf.len());
        assert_eq!(h.get("x-b"), Some("value number 999"));
        assert_eq!(
            h.iter().map(|f| f.name).collect::<Vec<_>>(),
            ["X-A", "X-B", "X-C"]
        );
    }

    #[test]
    fn single_valued_headers_report_duplicates() {
        let mut h = Headers::new();
        h.push("CSeq", "5 INVITE").unwrap();
        h.push("CSeq", "59 INVITE").unwrap();
        h.push("Max-Forwards", "0068").unwrap();
        assert_eq!(h.cseq(), Err(HeaderError::Duplicate(HeaderName::CSeq)));
        assert_eq!(h.max_forwards(), Ok(Some(68)));
        assert_eq!(h.call_id(), Err(HeaderError::Missing(HeaderName::CallId)));
    }

    #[test]
    fn numbers_are_range_checked_per_header() {
        let mut h = Headers::new();
        h.push("Max-Forwards", "300").unwrap();
        h.push("Expires", "10000000000000000000000000000").unwrap();
        h.push("Content-Length", "-999").unwrap();
        assert!(matches!(
            h.max_forwards(),
            Err(HeaderError::Malformed {
                error: ValueError::OutOfRange,
                ..
            })
        ));
        assert!(matches!(
            h.expires(),
            Err(HeaderError::Malformed {
                error: ValueError::OutOfRange,
                ..
            })
        ));
        assert!(matches!(
            h.content_length(),
            Err(HeaderError::Malformed {
                error: ValueError::Unexpected(0),
                ..
            })
        ));
    }

    #[test]
    fn a_wildcard_contact_must_stand_alone() {
        let mut h = Headers::new();
        h.push("Contact", "*").unwrap();
        assert_eq!(h.contacts(), Ok(Contacts::Wildcard));
        h.push("m", "<sip:a@b>").unwrap();
        assert!(h.contacts().is_err());
    }
}

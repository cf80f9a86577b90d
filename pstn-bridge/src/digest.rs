//! SIP HTTP Digest authentication (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760), both sides.
//!
//! confer needs digest twice: as a **client** (outbound trunk registration and INVITEs that a
//! carrier challenges with 401/407) and as a **server** (confer as a registrar for desk phones,
//! inbound trunks that authenticate with credentials instead of a source address). Both sides
//! share one parser and one response computation so they cannot drift apart.
//!
//! # Shape
//!
//! - [`parse_challenge`] reads one `WWW-Authenticate`/`Proxy-Authenticate` value into an
//!   [`AuthChallenge`]: a typed [`Challenge`] for `Digest`, or the raw text of any other scheme
//!   so a caller can skip it. [`strongest`] picks the challenge to answer when several are
//!   offered (RFC 8760: SHA-256 before MD5).
//! - [`DigestClient`] holds the challenge and the nonce count (`nc`), and produces an
//!   [`Authorization`] whose `Display` is the header value. The cnonce comes from an injected
//!   RNG (or the caller), never from a global one.
//! - [`DigestServer`] issues challenges and verifies a parsed [`Authorization`]
//!   ([`parse_authorization`]) against a stored password or HA1. Success is an
//!   [`Authenticated`] value that only [`DigestServer::verify`] can create.
//!
//! # Stateless nonces
//!
//! A server nonce is `version | algorithm | issued-at (ms) | 8 random bytes | MAC`, hex encoded
//! (68 characters). The MAC is HMAC-SHA-256 (written here over `sha2`, RFC 2104) keyed by the
//! server secret over a domain-separation label, the fields and the realm, truncated to 128
//! bits. HMAC rather than a bare `SHA-256(secret || data)` because it is the keyed construction
//! with a security proof and no length-extension caveat. So the server keeps no per-challenge
//! state: it recognises its own nonces, knows which algorithm it challenged with, and how old
//! the nonce is. Time is an argument (`Duration` since an epoch the caller picks, e.g. the Unix
//! epoch); this module never reads a clock.
//!
//! An expired nonce whose response is otherwise correct yields [`DigestError::StaleNonce`], so
//! the caller re-challenges with `stale=true` and the client retries without asking its user.
//! The response is checked before the age, so `stale` never tells a guesser that a wrong
//! password was "nearly right".
//!
//! # Replay
//!
//! With `qop`, each request carries a nonce count. [`NonceTracker`] (owned by the caller, one per
//! server) keeps a 64-entry sliding window per nonce, like an SRTP replay window, so requests
//! that overtake each other are accepted once and a replayed `nc` is refused. It is bounded:
//! when full it forgets the oldest nonce and remembers the issue time it forgot up to; a nonce
//! at or below that mark that it no longer knows is answered as stale (a fresh nonce for the
//! client, never a replay accepted). Only verified requests enter the tracker, so an attacker
//! without the password cannot fill it. Without `qop` (RFC 2069 mode, refused unless enabled)
//! replay is possible within the nonce lifetime: there is no counter to check.
//!
//! # Deliberate limits
//!
//! - `userhash` and `username*` (RFC 7616 §3.4.4, §3.4.5) are parsed but not supported.
//! - Parsing is lenient where real servers are sloppy: any parameter may be a token or a
//!   quoted string (`algorithm="MD5"`, `realm=asterisk`), names and `Digest` are
//!   case-insensitive, empty list elements (`,,`) are skipped. It is strict where it matters:
//!   duplicated parameters, missing required ones and control characters inside quoted strings
//!   (which would let a peer inject header lines into what we echo back) are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512_256};

/// Most parameters accepted in one header value; real ones carry fewer than 15.
pub const MAX_PARAMS: usize = 32;

// ---------------------------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------------------------

/// The hash function behind a digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestHash {
    /// MD5 (RFC 2617); obsolete but still what most trunks speak.
    Md5,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
    /// SHA-512/256 (FIPS 180-4: SHA-512 with its own initial value, truncated).
    Sha512_256,
}

impl DigestHash {
    /// Length of the hash output in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            DigestHash::Md5 => 16,
            DigestHash::Sha256 | DigestHash::Sha512_256 => 32,
        }
    }

    /// Hash the parts joined by `:` (the digest "H(a:b:c)").
    fn colon_joined(self, parts: &[&[u8]]) -> HashOut {
        fn run<D: Digest>(parts: &[&[u8]]) -> HashOut {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            HashOut::from_slice(&d.finalize())
        }
        match self {
            DigestHash::Md5 => run::<Md5>(parts),
            DigestHash::Sha256 => run::<Sha256>(parts),
            DigestHash::Sha512_256 => run::<Sha512_256>(parts),
        }
    }
}

/// A digest algorithm this module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
    Sha512_256,
    Sha512_256Sess,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Md5,
        Algorithm::Md5Sess,
        Algorithm::Sha256,
        Algorithm::Sha256Sess,
        Algorithm::Sha512_256,
        Algorithm::Sha512_256Sess,
    ];

    /// The hash function used.
    pub const fn hash(self) -> DigestHash {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => DigestHash::Md5,
            Algorithm::Sha256 | Algorithm::Sha256Sess => DigestHash::Sha256,
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => DigestHash::Sha512_256,
        }
    }

    /// Whether this is a `-sess` variant (HA1 also covers nonce and cnonce).
    pub const fn is_session(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess
        )
    }

    /// The IANA name, as written in headers.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    /// Look a name up, case-insensitively.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Preference rank for [`strongest`]: the SHA-2 family above MD5.
    const fn strength(self) -> u8 {
        match self.hash() {
            DigestHash::Md5 => 1,
            DigestHash::Sha256 | DigestHash::Sha512_256 => 2,
        }
    }

    const fn id(self) -> u8 {
        match self {
            Algorithm::Md5 => 0,
            Algorithm::Md5Sess => 1,
            Algorithm::Sha256 => 2,
            Algorithm::Sha256Sess => 3,
            Algorithm::Sha512_256 => 4,
            Algorithm::Sha512_256Sess => 5,
        }
    }

    fn from_id(id: u8) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.id() == id)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `algorithm` parameter as received: one we know, or the text of one we do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlgorithmParam {
    Known(Algorithm),
    Unknown(String),
}

impl AlgorithmParam {
    fn parse(value: String) -> AlgorithmParam {
        match Algorithm::from_name(&value) {
            Some(a) => AlgorithmParam::Known(a),
            None => AlgorithmParam::Unknown(value),
        }
    }
}

/// Resolve an optional algorithm parameter: absent means MD5 (RFC 2617 §3.2.1).
fn effective_algorithm(param: Option<&AlgorithmParam>) -> Result<Algorithm, DigestError> {
    match param {
        None => Ok(Algorithm::Md5),
        Some(AlgorithmParam::Known(a)) => Ok(*a),
        Some(AlgorithmParam::Unknown(name)) => Err(DigestError::UnsupportedAlgorithm(name.clone())),
    }
}

/// A quality-of-protection value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qop {
    /// Authentication of method and URI.
    Auth,
    /// Also covers the message body.
    AuthInt,
    /// Anything else, kept so a client can see that qop was offered but none it knows.
    Other(String),
}

impl Qop {
    fn parse(token: &str) -> Qop {
        if token.eq_ignore_ascii_case("auth") {
            Qop::Auth
        } else if token.eq_ignore_ascii_case("auth-int") {
            Qop::AuthInt
        } else {
            Qop::Other(token.to_owned())
        }
    }

    /// The token as written in headers.
    pub fn name(&self) -> &str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
            Qop::Other(s) => s,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a header value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty header value")]
    Empty,
    #[error("expected {expected} at byte {at}")]
    Unexpected { expected: &'static str, at: usize },
    #[error("unterminated quoted string starting at byte {at}")]
    UnterminatedQuote { at: usize },
    #[error("control character in quoted string at byte {at}")]
    ControlCharacter { at: usize },
    #[error("parameter {0:?} appears more than once")]
    DuplicateParam(String),
    #[error("missing required parameter {0}")]
    MissingParam(&'static str),
    #[error("invalid value for parameter {0}")]
    InvalidValue(&'static str),
    #[error("more than {MAX_PARAMS} parameters")]
    TooManyParams,
}

/// Digest failures. All but [`DigestError::InvalidArgument`] mean the peer sent something we
/// refuse; `InvalidArgument` means the caller misused the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("malformed authentication header: {0}")]
    Malformed(#[from] ParseError),
    #[error("authentication scheme {0:?} is not Digest")]
    UnknownScheme(String),
    #[error("realm does not match")]
    WrongRealm,
    /// Correct credentials, expired nonce: re-challenge with `stale=true`.
    #[error("nonce is stale")]
    StaleNonce,
    #[error("nonce was not issued by this server")]
    BadNonce,
    #[error("response digest does not match")]
    BadResponse,
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("algorithm {used} answers a nonce issued for {challenged}")]
    AlgorithmMismatch {
        challenged: Algorithm,
        used: Algorithm,
    },
    #[error("no supported qop offered or used")]
    UnsupportedQop,
    #[error("response without qop refused (RFC 2069 mode disabled)")]
    QopRequired,
    #[error("digest uri does not match the request-URI")]
    UriMismatch,
    #[error("nonce count replayed")]
    Replay,
    #[error("userhash is not supported")]
    UserhashUnsupported,
    #[error("stored secret is for another hash algorithm")]
    NoSecretForAlgorithm,
    #[error("nonce count exhausted for this nonce")]
    NonceCountExhausted,
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Header values
// ---------------------------------------------------------------------------------------------

/// A `Digest` challenge (`WWW-Authenticate` / `Proxy-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// `None`: absent, which means MD5.
    pub algorithm: Option<AlgorithmParam>,
    /// Empty: no qop offered (RFC 2069 compatibility).
    pub qop: Vec<Qop>,
    pub stale: bool,
    pub domain: Vec<String>,
    pub userhash: bool,
    /// Parameters this module does not interpret (e.g. `charset`), name as received.
    pub extra: Vec<(String, String)>,
}

impl Challenge {
    /// The algorithm to answer with, or `UnsupportedAlgorithm`.
    pub fn algorithm(&self) -> Result<Algorithm, DigestError> {
        effective_algorithm(self.algorithm.as_ref())
    }
}

/// One challenge header value: Digest, or another scheme kept raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthChallenge {
    Digest(Challenge),
    Other {
        /// The scheme token as received.
        scheme: String,
        /// Everything after the scheme, trimmed, unparsed.
        params: String,
    },
}

/// A `Digest` response (`Authorization` / `Proxy-Authorization`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    /// Hex digest as received.
    pub response: String,
    /// `None`: absent, which means MD5.
    pub algorithm: Option<AlgorithmParam>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<Qop>,
    pub nc: Option<NonceCount>,
    pub userhash: bool,
    pub extra: Vec<(String, String)>,
}

impl Authorization {
    /// The algorithm used, or `UnsupportedAlgorithm`.
    pub fn algorithm(&self) -> Result<Algorithm, DigestError> {
        effective_algorithm(self.algorithm.as_ref())
    }
}

/// A nonce count, keeping the exact text received because it is an input of the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceCount {
    value: u32,
    text: String,
}

impl NonceCount {
    /// The canonical form: 8 lowercase hex digits.
    pub fn new(value: u32) -> NonceCount {
        NonceCount {
            value,
            text: format!("{value:08x}"),
        }
    }

    /// Parse 1 to 8 hex digits (RFC 7616 says exactly 8 lowercase; we accept sloppier).
    pub fn parse(text: &str) -> Option<NonceCount> {
        if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let value = u32::from_str_radix(text, 16).ok()?;
        Some(NonceCount {
            value,
            text: text.to_owned(),
        })
    }

    pub fn value(&self) -> u32 {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The request being authorized: method, the digest `uri` (the SIP Request-URI) and the body
/// (used only by `qop=auth-int`).
#[derive(Debug, Clone, Copy)]
pub struct DigestRequest<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub body: &'a [u8],
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

struct Param<'a> {
    name: &'a str,
    value: String,
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

fn is_lws(b: u8) -> bool {
    // Folding is undone by the SIP layer; CR/LF outside quotes are treated as whitespace.
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_lws(&mut self) {
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_token_byte) {
            self.pos += 1;
        }
        // Token bytes are ASCII, so both ends are char boundaries.
        (self.pos > start).then(|| &self.s[start..self.pos])
    }

    /// A quoted string; the cursor is on the opening quote. Returns the unescaped contents.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(ParseError::UnterminatedQuote { at: start });
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    let Some(next) = self.s.as_bytes().get(self.pos + 1).copied() else {
                        return Err(ParseError::UnterminatedQuote { at: start });
                    };
                    if is_forbidden_control(next) {
                        return Err(ParseError::ControlCharacter { at: self.pos + 1 });
                    }
                    out.push(next);
                    self.pos += 2;
                }
                b if is_forbidden_control(b) => {
                    return Err(ParseError::ControlCharacter { at: self.pos });
                }
                b => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        // Cannot fail: bytes are copied in order and only ASCII ones ('"', '\\') are dropped,
        // so the output is as valid UTF-8 as the &str input. Mapped rather than unwrapped.
        String::from_utf8(out).map_err(|_| ParseError::InvalidValue("quoted-string"))
    }
}

/// Control characters that may not appear inside a quoted string (HTAB may).
fn is_forbidden_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Split off the auth scheme. Returns (scheme, rest, offset of rest).
fn split_scheme(value: &str) -> Result<(&str, Cursor<'_>), ParseError> {
    let mut c = Cursor { s: value, pos: 0 };
    c.skip_lws();
    if c.peek().is_none() {
        return Err(ParseError::Empty);
    }
    let at = c.pos;
    let scheme = c.token().ok_or(ParseError::Unexpected {
        expected: "auth scheme",
        at,
    })?;
    match c.peek() {
        None => {}
        Some(b) if is_lws(b) => c.skip_lws(),
        Some(_) => {
            return Err(ParseError::Unexpected {
                expected: "whitespace after auth scheme",
                at: c.pos,
            });
        }
    }
    Ok((scheme, c))
}

fn parse_params<'a>(c: &mut Cursor<'a>) -> Result<Vec<Param<'a>>, ParseError> {
    let mut params: Vec<Param<'a>> = Vec::new();
    loop {
        c.skip_lws();
        match c.peek() {
            None => break,
            Some(b',') => {
                c.pos += 1;
                continue;
            }
            Some(_) => {}
        }
        let at = c.pos;
        let name = c.token().ok_or(ParseError::Unexpected {
            expected: "parameter name",
            at,
        })?;
        c.skip_lws();
        if c.peek() != Some(b'=') {
            return Err(ParseError::Unexpected {
                expected: "'='",
                at: c.pos,
            });
        }
        c.pos += 1;
        c.skip_lws();
        let value = if c.peek() == Some(b'"') {
            c.quoted()?
        } else {
            let at = c.pos;
            c.token()
                .ok_or(ParseError::Unexpected {
                    expected: "parameter value",
                    at,
                })?
                .to_owned()
        };
        if params.iter().any(|p| p.name.eq_ignore_ascii_case(name)) {
            return Err(ParseError::DuplicateParam(name.to_owned()));
        }
        if params.len() == MAX_PARAMS {
            return Err(ParseError::TooManyParams);
        }
        params.push(Param { name, value });
        c.skip_lws();
        match c.peek() {
            None => break,
            Some(b',') => c.pos += 1,
            Some(_) => {
                return Err(ParseError::Unexpected {
                    expected: "',' between parameters",
                    at: c.pos,
                });
            }
        }
    }
    Ok(params)
}

fn parse_bool(value: &str, name: &'static str) -> Result<bool, ParseError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ParseError::InvalidValue(name))
    }
}

/// Parse one `WWW-Authenticate` / `Proxy-Authenticate` header value (the text after the colon,
/// folding already undone).
pub fn parse_challenge(value: &str) -> Result<AuthChallenge, ParseError> {
    let (scheme, mut c) = split_scheme(value)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Ok(AuthChallenge::Other {
            scheme: scheme.to_owned(),
            params: value[c.pos..].trim_end_matches(is_lws_char).to_owned(),
        });
    }
    let mut ch = Challenge {
        realm: String::new(),
        nonce: String::new(),
        opaque: None,
        algorithm: None,
        qop: Vec::new(),
        stale: false,
        domain: Vec::new(),
        userhash: false,
        extra: Vec::new(),
    };
    let (mut realm, mut nonce) = (None, None);
    for p in parse_params(&mut c)? {
        let n = p.name;
        if n.eq_ignore_ascii_case("realm") {
            realm = Some(p.value);
        } else if n.eq_ignore_ascii_case("nonce") {
            nonce = Some(p.value);
        } else if n.eq_ignore_ascii_case("opaque") {
            ch.opaque = Some(p.value);
        } else if n.eq_ignore_ascii_case("algorithm") {
            ch.algorithm = Some(AlgorithmParam::parse(p.value));
        } else if n.eq_ignore_ascii_case("qop") {
            ch.qop = p
                .value
                .split(',')
                .map(|q| q.trim_matches(is_lws_char))
                .filter(|q| !q.is_empty())
                .map(Qop::parse)
                .collect();
            if ch.qop.is_empty() {
                return Err(ParseError::InvalidValue("qop"));
            }
        } else if n.eq_ignore_ascii_case("stale") {
            ch.stale = parse_bool(&p.value, "stale")?;
        } else if n.eq_ignore_ascii_case("domain") {
            ch.domain = p
                .value
                .split(is_lws_char)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
        } else if n.eq_ignore_ascii_case("userhash") {
            ch.userhash = parse_bool(&p.value, "userhash")?;
        } else {
            ch.extra.push((n.to_owned(), p.value));
        }
    }
    ch.realm = realm.ok_or(ParseError::MissingParam("realm"))?;
    ch.nonce = nonce.ok_or(ParseError::MissingParam("nonce"))?;
    Ok(AuthChallenge::Digest(ch))
}

fn is_lws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Parse one `Authorization` / `Proxy-Authorization` header value.
pub fn parse_authorization(value: &str) -> Result<Authorization, DigestError> {
    let (scheme, mut c) = split_scheme(value)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::UnknownScheme(scheme.to_owned()));
    }
    let mut username = None;
    let mut realm = None;
    let mut nonce = None;
    let mut uri = None;
    let mut response = None;
    let mut auth = Authorization {
        username: String::new(),
        realm: String::new(),
        nonce: String::new(),
        uri: String::new(),
        response: String::new(),
        algorithm: None,
        cnonce: None,
        opaque: None,
        qop: None,
        nc: None,
        userhash: false,
        extra: Vec::new(),
    };
    for p in parse_params(&mut c)? {
        let n = p.name;
        if n.eq_ignore_ascii_case("username") {
            username = Some(p.value);
        } else if n.eq_ignore_ascii_case("realm") {
            realm = Some(p.value);
        } else if n.eq_ignore_ascii_case("nonce") {
            nonce = Some(p.value);
        } else if n.eq_ignore_ascii_case("uri") {
            uri = Some(p.value);
        } else if n.eq_ignore_ascii_case("response") {
            response = Some(p.value);
        } else if n.eq_ignore_ascii_case("algorithm") {
            auth.algorithm = Some(AlgorithmParam::parse(p.value));
        } else if n.eq_ignore_ascii_case("cnonce") {
            auth.cnonce = Some(p.value);
        } else if n.eq_ignore_ascii_case("opaque") {
            auth.opaque = Some(p.value);
        } else if n.eq_ignore_ascii_case("qop") {
            auth.qop = Some(Qop::parse(&p.value));
        } else if n.eq_ignore_ascii_case("nc") {
            auth.nc = Some(NonceCount::parse(&p.value).ok_or(ParseError::InvalidValue("nc"))?);
        } else if n.eq_ignore_ascii_case("userhash") {
            auth.userhash = parse_bool(&p.value, "userhash")?;
        } else {
            auth.extra.push((n.to_owned(), p.value));
        }
    }
    auth.username = username.ok_or(ParseError::MissingParam("username"))?;
    auth.realm = realm.ok_or(ParseError::MissingParam("realm"))?;
    auth.nonce = nonce.ok_or(ParseError::MissingParam("nonce"))?;
    auth.uri = uri.ok_or(ParseError::MissingParam("uri"))?;
    auth.response = response.ok_or(ParseError::MissingParam("response"))?;
    if auth.qop.is_some() {
        // RFC 7616 §3.4: cnonce and nc MUST be sent with qop.
        if auth.cnonce.is_none() {
            return Err(ParseError::MissingParam("cnonce").into());
        }
        if auth.nc.is_none() {
            return Err(ParseError::MissingParam("nc").into());
        }
    }
    Ok(auth)
}

// ---------------------------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------------------------

fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    f.write_str("\"")?;
    for ch in value.chars() {
        if ch == '"' || ch == '\\' {
            f.write_str("\\")?;
        }
        fmt::Write::write_char(f, ch)?;
    }
    f.write_str("\"")
}

fn write_token_or_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if !value.is_empty() && value.bytes().all(is_token_byte) {
        f.write_str(value)
    } else {
        write_quoted(f, value)
    }
}

fn write_algorithm(f: &mut fmt::Formatter<'_>, a: &AlgorithmParam) -> fmt::Result {
    f.write_str(", algorithm=")?;
    match a {
        AlgorithmParam::Known(a) => f.write_str(a.name()),
        AlgorithmParam::Unknown(s) => write_token_or_quoted(f, s),
    }
}

fn write_extra(f: &mut fmt::Formatter<'_>, extra: &[(String, String)]) -> fmt::Result {
    for (name, value) in extra {
        write!(f, ", {name}=")?;
        write_quoted(f, value)?;
    }
    Ok(())
}

/// The `WWW-Authenticate` value: realm, nonce, opaque quoted; algorithm and stale bare; qop a
/// quoted list (RFC 7616 §3.3).
impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest realm=")?;
        write_quoted(f, &self.realm)?;
        if !self.domain.is_empty() {
            f.write_str(", domain=")?;
            write_quoted(f, &self.domain.join(" "))?;
        }
        f.write_str(", nonce=")?;
        write_quoted(f, &self.nonce)?;
        if let Some(o) = &self.opaque {
            f.write_str(", opaque=")?;
            write_quoted(f, o)?;
        }
        if self.stale {
            f.write_str(", stale=true")?;
        }
        if let Some(a) = &self.algorithm {
            write_algorithm(f, a)?;
        }
        if !self.qop.is_empty() {
            let list: Vec<&str> = self.qop.iter().map(Qop::name).collect();
            f.write_str(", qop=")?;
            write_quoted(f, &list.join(","))?;
        }
        if self.userhash {
            f.write_str(", userhash=true")?;
        }
        write_extra(f, &self.extra)
    }
}

/// The `Authorization` value: username, realm, nonce, uri, response, cnonce, opaque quoted;
/// algorithm, qop, nc bare (RFC 7616 §3.4).
impl fmt::Display for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest username=")?;
        write_quoted(f, &self.username)?;
        f.write_str(", realm=")?;
        write_quoted(f, &self.realm)?;
        f.write_str(", nonce=")?;
        write_quoted(f, &self.nonce)?;
        f.write_str(", uri=")?;
        write_quoted(f, &self.uri)?;
        f.write_str(", response=")?;
        write_quoted(f, &self.response)?;
        if let Some(a) = &self.algorithm {
            write_algorithm(f, a)?;
        }
        if let Some(c) = &self.cnonce {
            f.write_str(", cnonce=")?;
            write_quoted(f, c)?;
        }
        if let Some(o) = &self.opaque {
            f.write_str(", opaque=")?;
            write_quoted(f, o)?;
        }
        if let Some(q) = &self.qop {
            f.write_str(", qop=")?;
            write_token_or_quoted(f, q.name())?;
        }
        if let Some(nc) = &self.nc {
            write!(f, ", nc={}", nc.as_str())?;
        }
        if self.userhash {
            f.write_str(", userhash=true")?;
        }
        write_extra(f, &self.extra)
    }
}

// ---------------------------------------------------------------------------------------------
// Hash plumbing
// ---------------------------------------------------------------------------------------------

/// A hash output on the stack (at most 32 bytes).
#[derive(Clone, Copy)]
struct HashOut {
    bytes: [u8; 32],
    len: usize,
}

impl HashOut {
    fn from_slice(s: &[u8]) -> HashOut {
        let mut bytes = [0u8; 32];
        let len = s.len().min(32);
        bytes[..len].copy_from_slice(&s[..len]);
        HashOut { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Lowercase hex, as digest hashes are written.
    fn hex(&self) -> HexBuf {
        let mut buf = HexBuf {
            bytes: [0u8; 64],
            len: self.len * 2,
        };
        for (i, b) in self.as_bytes().iter().enumerate() {
            buf.bytes[2 * i] = HEX[usize::from(b >> 4)];
            buf.bytes[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        buf
    }
}

struct HexBuf {
    bytes: [u8; 64],
    len: usize,
}

impl HexBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decode hex (either case) into `out`; `None` unless it fills `out` exactly.
fn hex_decode_into(text: &str, out: &mut [u8]) -> Option<()> {
    let t = text.as_bytes();
    if t.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(t.chunks_exact(2)) {
        *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(())
}

/// Equality whose running time does not depend on where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// HMAC-SHA-256 (RFC 2104) over the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

/// HA1 base: H(username:realm:password).
fn ha1_base(hash: DigestHash, username: &str, realm: &str, password: &str) -> HashOut {
    hash.colon_joined(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// Lowercase hex of H(username:realm:password), the HA1 a server may store instead of the
/// password (one per hash function; `-sess` variants use the same stored value).
pub fn ha1_hex(hash: DigestHash, username: &str, realm: &str, password: &str) -> String {
    hex_string(ha1_base(hash, username, realm, password).as_bytes())
}

/// Inputs of the response computation that come from the exchange.
struct ResponseInputs<'a> {
    algorithm: Algorithm,
    nonce: &'a str,
    /// (cnonce, nc, qop) when qop is used.
    /// `-sess` needs qop: its HA1 covers the cnonce.
    qop: Option<(&'a str, &'a str, &'a Qop)>,
    req: &'a DigestRequest<'a>,
}

/// The response digest from HA1 base = H(username:realm:password).
fn compute_response(base: &HashOut, inp: &ResponseInputs<'_>) -> Result<HashOut, DigestError> {
    let hash = inp.algorithm.hash();
    let ha1 = if inp.algorithm.is_session() {
        let Some((cnonce, _, _)) = inp.qop else {
            return Err(DigestError::QopRequired);
        };
        hash.colon_joined(&[
            base.hex().as_bytes(),
            inp.nonce.as_bytes(),
            cnonce.as_bytes(),
        ])
    } else {
        *base
    };
    let ha2 = match inp.qop {
        Some((_, _, Qop::AuthInt)) => {
            let body = hash.colon_joined(&[inp.req.body]);
            hash.colon_joined(&[
                inp.req.method.as_bytes(),
                inp.req.uri.as_bytes(),
                body.hex().as_bytes(),
            ])
        }
        Some((_, _, Qop::Other(_))) => return Err(DigestError::UnsupportedQop),
        Some((_, _, Qop::Auth)) | None => {
            hash.colon_joined(&[inp.req.method.as_bytes(), inp.req.uri.as_bytes()])
        }
    };
    Ok(match inp.qop {
        Some((cnonce, nc, qop)) => hash.colon_joined(&[
            ha1.hex().as_bytes(),
            inp.nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            qop.name().as_bytes(),
            ha2.hex().as_bytes(),
        ]),
        None => hash.colon_joined(&[
            ha1.hex().as_bytes(),
            inp.nonce.as_bytes(),
            ha2.hex().as_bytes(),
        ]),
    })
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A username and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Choose the challenge to answer among those offered for one realm (RFC 8760 §2.4).
///
/// Skips non-Digest schemes and algorithms we do not implement, prefers the SHA-2 family over
/// MD5 whatever the order, and otherwise keeps the server's order (topmost first). A response
/// forked from several realms needs one answer per realm: filter by realm before calling.
pub fn strongest<'a, I>(challenges: I) -> Option<&'a Challenge>
where
    I: IntoIterator<Item = &'a AuthChallenge>,
{
    let mut best: Option<(&'a Challenge, u8)> = None;
    for c in challenges {
        let AuthChallenge::Digest(ch) = c else {
            continue;
        };
        let Ok((alg, _)) = answerable(ch) else {
            continue;
        };
        if best.is_none_or(|(_, s)| alg.strength() > s) {
            best = Some((ch, alg.strength()));
        }
    }
    best.map(|(c, _)| c)
}

/// The algorithm and qop a client answers `ch` with, or why it cannot.
fn answerable(ch: &Challenge) -> Result<(Algorithm, Option<Qop>), DigestError> {
    let algorithm = ch.algorithm()?;
    let qop = client_qop(ch)?;
    // RFC 7616: the -sess HA1 covers the cnonce, which only exists with qop.
    if algorithm.is_session() && qop.is_none() {
        return Err(DigestError::UnsupportedQop);
    }
    Ok((algorithm, qop))
}

/// qop the client will use: `auth` when offered, else `auth-int`, else none if none offered.
fn client_qop(ch: &Challenge) -> Result<Option<Qop>, DigestError> {
    if ch.qop.is_empty() {
        return Ok(None);
    }
    if ch.qop.contains(&Qop::Auth) {
        Ok(Some(Qop::Auth))
    } else if ch.qop.contains(&Qop::AuthInt) {
        Ok(Some(Qop::AuthInt))
    } else {
        Err(DigestError::UnsupportedQop)
    }
}

/// Answers one challenge, counting the requests made with its nonce.
///
/// Keep one per (realm, registration/dialog); feed each new 401/407 challenge to
/// [`DigestClient::update`]: the count restarts only when the nonce changes.
#[derive(Debug, Clone)]
pub struct DigestClient {
    challenge: Challenge,
    algorithm: Algorithm,
    qop: Option<Qop>,
    nc: u32,
}

impl DigestClient {
    /// Fails with `UnsupportedAlgorithm` or `UnsupportedQop` if the challenge cannot be met.
    pub fn new(challenge: Challenge) -> Result<DigestClient, DigestError> {
        let (algorithm, qop) = answerable(&challenge)?;
        Ok(DigestClient {
            challenge,
            algorithm,
            qop,
            nc: 0,
        })
    }

    /// Take a new challenge; the nonce count carries on if the nonce is the same.
    pub fn update(&mut self, challenge: Challenge) -> Result<(), DigestError> {
        let nc = if challenge.nonce == self.challenge.nonce {
            self.nc
        } else {
            0
        };
        *self = DigestClient::new(challenge)?;
        self.nc = nc;
        Ok(())
    }

    pub fn challenge(&self) -> &Challenge {
        &self.challenge
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The last nonce count used (0 before the first request).
    pub fn nonce_count(&self) -> u32 {
        self.nc
    }

    /// Authorize a request with a fresh 128-bit cnonce from `rng` (use a CSPRNG in production).
    pub fn authorize(
        &mut self,
        credentials: &Credentials,
        request: &DigestRequest<'_>,
        rng: &mut impl RngCore,
    ) -> Result<Authorization, DigestError> {
        let mut raw = [0u8; 16];
        rng.fill_bytes(&mut raw);
        self.authorize_with_cnonce(credentials, request, &hex_string(&raw))
    }

    /// Authorize a request with a caller-chosen cnonce (ignored when no qop is used).
    pub fn authorize_with_cnonce(
        &mut self,
        credentials: &Credentials,
        request: &DigestRequest<'_>,
        cnonce: &str,
    ) -> Result<Authorization, DigestError> {
        if cnonce.is_empty() || cnonce.bytes().any(is_forbidden_control) {
            return Err(DigestError::InvalidArgument("cnonce"));
        }
        if credentials.username.bytes().any(is_forbidden_control) {
            return Err(DigestError::InvalidArgument("username"));
        }
        if request.uri.bytes().any(is_forbidden_control) {
            return Err(DigestError::InvalidArgument("uri"));
        }
        let nc = if self.qop.is_some() {
            let next = self
                .nc
                .checked_add(1)
                .ok_or(DigestError::NonceCountExhausted)?;
            Some(NonceCount::new(next))
        } else {
            None
        };
        let base = ha1_base(
            self.algorithm.hash(),
            &credentials.username,
            &self.challenge.realm,
            &credentials.password,
        );
        let response = compute_response(
            &base,
            &ResponseInputs {
                algorithm: self.algorithm,
                nonce: &self.challenge.nonce,
                qop: match (&self.qop, &nc) {
                    (Some(q), Some(nc)) => Some((cnonce, nc.as_str(), q)),
                    _ => None,
                },
                req: request,
            },
        )?;
        if let Some(nc) = &nc {
            self.nc = nc.value();
        }
        Ok(Authorization {
            username: credentials.username.clone(),
            realm: self.challenge.realm.clone(),
            nonce: self.challenge.nonce.clone(),
            uri: request.uri.to_owned(),
            response: hex_string(response.as_bytes()),
            algorithm: Some(AlgorithmParam::Known(self.algorithm)),
            cnonce: self.qop.as_ref().map(|_| cnonce.to_owned()),
            opaque: self.challenge.opaque.clone(),
            qop: self.qop.clone(),
            nc,
            userhash: false,
            extra: Vec::new(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

const NONCE_VERSION: u8 = 1;
const NONCE_MAC_LEN: usize = 16;
/// version, algorithm, issued (8), salt (8), mac (16).
const NONCE_LEN: usize = 2 + 8 + 8 + NONCE_MAC_LEN;
const NONCE_LABEL: &[u8] = b"confer digest nonce\0";

/// What the server stores for a user.
#[derive(Clone, Copy)]
pub enum StoredSecret<'a> {
    /// The clear password (works with every algorithm).
    Password(&'a str),
    /// `ha1_hex(hash, username, realm, password)`; works with `hash` and its `-sess` variant.
    Ha1 { hash: DigestHash, hex: &'a str },
}

impl fmt::Debug for StoredSecret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredSecret::Password(_) => f.write_str("Password(<redacted>)"),
            StoredSecret::Ha1 { hash, .. } => write!(f, "Ha1({hash:?}, <redacted>)"),
        }
    }
}

/// Proof that a request carried valid credentials. Only [`DigestServer::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    username: String,
    realm: String,
    algorithm: Algorithm,
}

impl Authenticated {
    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// The fields of one of our nonces, after its MAC was checked.
struct NonceInfo {
    algorithm: Algorithm,
    issued_ms: u64,
    mac: [u8; NONCE_MAC_LEN],
}

/// Issues stateless nonces and verifies responses for one realm.
pub struct DigestServer {
    realm: String,
    secret: [u8; 32],
    lifetime_ms: u64,
    algorithms: Vec<Algorithm>,
    allow_rfc2069: bool,
}

impl fmt::Debug for DigestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestServer")
            .field("realm", &self.realm)
            .field("secret", &"<redacted>")
            .field("lifetime_ms", &self.lifetime_ms)
            .field("algorithms", &self.algorithms)
            .field("allow_rfc2069", &self.allow_rfc2069)
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DigestServer {
    /// A server for `realm`, offering SHA-256 then MD5, requiring qop. The secret must come
    /// from a CSPRNG and be shared by all instances that verify each other's nonces.
    pub fn new(
        realm: impl Into<String>,
        secret: [u8; 32],
        nonce_lifetime: Duration,
    ) -> Result<DigestServer, DigestError> {
        let realm = realm.into();
        if realm.is_empty() || realm.bytes().any(is_forbidden_control) {
            return Err(DigestError::InvalidArgument("realm"));
        }
        Ok(DigestServer {
            realm,
            secret,
            lifetime_ms: millis(nonce_lifetime),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            allow_rfc2069: false,
        })
    }

    /// Offer these algorithms, most preferred first (non-empty).
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Result<Self, DigestError> {
        if algorithms.is_empty() {
            return Err(DigestError::InvalidArgument("algorithms"));
        }
        self.algorithms = algorithms.to_vec();
        Ok(self)
    }

    /// Accept responses without qop (RFC 2069): no replay protection within the nonce life.
    pub fn allow_rfc2069(mut self, allow: bool) -> Self {
        self.allow_rfc2069 = allow;
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// A challenge for `algorithm` (one of [`DigestServer::algorithms`], or `verify` will
    /// refuse the answer) with a nonce issued at `now`, offering `qop="auth"`.
    pub fn challenge(
        &self,
        algorithm: Algorithm,
        now: Duration,
        stale: bool,
        rng: &mut impl RngCore,
    ) -> Challenge {
        let mut salt = [0u8; 8];
        rng.fill_bytes(&mut salt);
        let issued = millis(now).to_be_bytes();
        let mac = self.nonce_mac(algorithm.id(), &issued, &salt);
        let mut raw = [0u8; NONCE_LEN];
        raw[0] = NONCE_VERSION;
        raw[1] = algorithm.id();
        raw[2..10].copy_from_slice(&issued);
        raw[10..18].copy_from_slice(&salt);
        raw[18..].copy_from_slice(&mac);
        Challenge {
            realm: self.realm.clone(),
            nonce: hex_string(&raw),
            opaque: None,
            algorithm: Some(AlgorithmParam::Known(algorithm)),
            qop: vec![Qop::Auth],
            stale,
            domain: Vec::new(),
            userhash: false,
            extra: Vec::new(),
        }
    }

    /// One challenge per configured algorithm, in preference order: one header each.
    pub fn challenges(&self, now: Duration, stale: bool, rng: &mut impl RngCore) -> Vec<Challenge> {
        self.algorithms
            .iter()
            .map(|a| self.challenge(*a, now, stale, rng))
            .collect()
    }

    fn nonce_mac(&self, alg_id: u8, issued: &[u8; 8], salt: &[u8; 8]) -> [u8; NONCE_MAC_LEN] {
        let full = hmac_sha256(
            &self.secret,
            &[
                NONCE_LABEL,
                &[NONCE_VERSION, alg_id],
                issued,
                salt,
                self.realm.as_bytes(),
            ],
        );
        let mut mac = [0u8; NONCE_MAC_LEN];
        mac.copy_from_slice(&full[..NONCE_MAC_LEN]);
        mac
    }

    fn open_nonce(&self, nonce: &str) -> Result<NonceInfo, DigestError> {
        let mut raw = [0u8; NONCE_LEN];
        hex_decode_into(nonce, &mut raw).ok_or(DigestError::BadNonce)?;
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&raw[2..10]);
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&raw[10..18]);
        let expected = self.nonce_mac(raw[1], &issued, &salt);
        if raw[0] != NONCE_VERSION || !ct_eq(&expected, &raw[18..]) {
            return Err(DigestError::BadNonce);
        }
        // An authentic nonce names an algorithm we wrote; a missing one would mean another
        // build of confer with a different table, so refuse it as not ours.
        let algorithm = Algorithm::from_id(raw[1]).ok_or(DigestError::BadNonce)?;
        let mut mac = [0u8; NONCE_MAC_LEN];
        mac.copy_from_slice(&raw[18..]);
        Ok(NonceInfo {
            algorithm,
            issued_ms: u64::from_be_bytes(issued),
            mac,
        })
    }

    /// Verify `auth` for `request` at time `now`.
    ///
    /// Look up the user's secret by `auth.username` first. On `StaleNonce` answer 401/407 with
    /// fresh challenges marked `stale=true`; on other errors answer with fresh challenges
    /// (or 403 after repeated failures, the caller's policy).
    pub fn verify(
        &self,
        auth: &Authorization,
        request: &DigestRequest<'_>,
        secret: StoredSecret<'_>,
        now: Duration,
        tracker: &mut NonceTracker,
    ) -> Result<Authenticated, DigestError> {
        if auth.realm != self.realm {
            return Err(DigestError::WrongRealm);
        }
        if auth.userhash {
            return Err(DigestError::UserhashUnsupported);
        }
        let used = auth.algorithm()?;
        if !self.algorithms.contains(&used) {
            return Err(DigestError::UnsupportedAlgorithm(used.name().to_owned()));
        }
        let nonce = self.open_nonce(&auth.nonce)?;
        if nonce.algorithm != used {
            return Err(DigestError::AlgorithmMismatch {
                challenged: nonce.algorithm,
                used,
            });
        }
        if auth.uri != request.uri {
            return Err(DigestError::UriMismatch);
        }
        let qop = match (&auth.qop, &auth.cnonce, &auth.nc) {
            (Some(Qop::Other(_)), _, _) => return Err(DigestError::UnsupportedQop),
            (Some(q), Some(c), Some(nc)) => Some((c.as_str(), nc.as_str(), q)),
            // parse_authorization guarantees cnonce and nc with qop; a hand-built value may not.
            (Some(_), _, _) => return Err(ParseError::MissingParam("nc").into()),
            (None, _, _) if self.allow_rfc2069 && !used.is_session() => None,
            (None, _, _) => return Err(DigestError::QopRequired),
        };
        let base = match secret {
            StoredSecret::Password(pw) => ha1_base(used.hash(), &auth.username, &self.realm, pw),
            StoredSecret::Ha1 { hash, hex } => {
                if hash != used.hash() {
                    return Err(DigestError::NoSecretForAlgorithm);
                }
                let mut buf = [0u8; 32];
                let out = &mut buf[..hash.output_len()];
                hex_decode_into(hex, out).ok_or(DigestError::InvalidArgument("ha1"))?;
                HashOut::from_slice(out)
            }
        };
        let expected = compute_response(
            &base,
            &ResponseInputs {
                algorithm: used,
                nonce: &auth.nonce,
                qop,
                req: request,
            },
        )?;
        let mut got = [0u8; 32];
        let got = &mut got[..used.hash().output_len()];
        if hex_decode_into(&auth.response, got).is_none() || !ct_eq(expected.as_bytes(), got) {
            return Err(DigestError::BadResponse);
        }
        // Only now, with a correct response, may we say "stale" (RFC 7616 §3.3).
        let now_ms = millis(now);
        let age = now_ms.saturating_sub(nonce.issued_ms);
        let ahead = nonce.issued_ms.saturating_sub(now_ms);
        // A nonce "from the future" means the caller's clock stepped back; bound it the same.
        if age > self.lifetime_ms || ahead > self.lifetime_ms {
            return Err(DigestError::StaleNonce);
        }
        if let Some(nc) = &auth.nc
            && qop.is_some()
        {
            let oldest_valid = now_ms.saturating_sub(self.lifetime_ms);
            tracker.check_and_record(nonce.issued_ms, nonce.mac, nc.value(), oldest_valid)?;
        }
        Ok(Authenticated {
            username: auth.username.clone(),
            realm: self.realm.clone(),
            algorithm: used,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Replay tracking
// ---------------------------------------------------------------------------------------------

/// Width of the per-nonce replay window, in nonce counts.
pub const REPLAY_WINDOW: u32 = 64;

#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    highest: u32,
    /// Bit i set: `highest - i` was seen.
    seen: u64,
}

impl ReplayWindow {
    fn accept(&mut self, nc: u32) -> bool {
        if nc > self.highest {
            let shift = nc - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = nc;
            true
        } else {
            let back = self.highest - nc;
            if back >= REPLAY_WINDOW || self.seen & (1u64 << back) != 0 {
                false
            } else {
                self.seen |= 1u64 << back;
                true
            }
        }
    }
}

/// Nonce counts seen per nonce, bounded. Owned by the caller, one per [`DigestServer`].
#[derive(Debug, Clone)]
pub struct NonceTracker {
    /// Keyed by (issued ms, nonce MAC): iteration order is oldest nonce first.
    windows: BTreeMap<(u64, [u8; NONCE_MAC_LEN]), ReplayWindow>,
    capacity: usize,
    /// Highest issue time among nonces forgotten for room (not for expiry).
    forgotten_up_to: Option<u64>,
}

impl NonceTracker {
    /// Remember at most `capacity` nonces (at least 1). Each costs about 50 bytes.
    pub fn new(capacity: usize) -> NonceTracker {
        NonceTracker {
            windows: BTreeMap::new(),
            capacity: capacity.max(1),
            forgotten_up_to: None,
        }
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn check_and_record(
        &mut self,
        issued_ms: u64,
        mac: [u8; NONCE_MAC_LEN],
        nc: u32,
        oldest_valid_ms: u64,
    ) -> Result<(), DigestError> {
        if nc == 0 {
            return Err(DigestError::Replay);
        }
        if let Some(w) = self.windows.get_mut(&(issued_ms, mac)) {
            return if w.accept(nc) {
                Ok(())
            } else {
                Err(DigestError::Replay)
            };
        }
        if self.forgotten_up_to.is_some_and(|t| issued_ms <= t) {
            // We may have seen this nonce and forgotten its counts: ask for a fresh one.
            return Err(DigestError::StaleNonce);
        }
        while let Some(e) = self.windows.first_entry() {
            if e.key().0 >= oldest_valid_ms {
                break;
            }
            e.remove();
        }
        if self.windows.len() >= self.capacity
            && let Some(((t, _), _)) = self.windows.pop_first()
        {
            self.forgotten_up_to = Some(self.forgotten_up_to.map_or(t, |f| f.max(t)));
        }
        let mut w = ReplayWindow {
            highest: 0,
            seen: 0,
        };
        w.accept(nc);
        self.windows.insert((issued_ms, mac), w);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex_string(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_sha256_hashes_keys_longer_than_a_block_rfc4231_test_case_6() {
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex_string(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sha512_256_is_the_fips_variant_not_truncated_sha512() {
        // FIPS 180-4 example "abc".
        let h = DigestHash::Sha512_256.colon_joined(&[b"abc"]);
        assert_eq!(
            hex_string(h.as_bytes()),
            "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
        );
    }

    #[test]
    fn replay_window_accepts_reordered_counts_once() {
        let mut w = ReplayWindow {
            highest: 0,
            seen: 0,
        };
        assert!(w.accept(1));
        assert!(w.accept(3));
        assert!(w.accept(2));
        assert!(!w.accept(2));
        assert!(!w.accept(3));
        assert!(w.accept(100));
        assert!(!w.accept(100 - REPLAY_WINDOW));
        assert!(w.accept(100 - REPLAY_WINDOW + 1));
    }

    #[test]
    fn constant_time_compare_distinguishes_lengths_and_bytes() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}

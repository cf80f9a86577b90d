//! Scoped, short-lived, signed bearer tokens: what every control-API call carries.
//!
//! # Why
//!
//! Three kinds of caller use the API, and each may do only its part: an administrator
//! (policies, archive), an IM server (escalations, presence) and a client (join one room as
//! one user on one device). A token names its holder, its scope and its lifetime, and is
//! signed, so the server keeps no session table and any confer instance sharing the keys can
//! check it.
//!
//! # Format
//!
//! A compact JWS (RFC 7515/7519) with HMAC-SHA256 (`HS256`), nothing else:
//!
//! ```text
//! base64url(header) "." base64url(claims) "." base64url(HMAC-SHA256(key, header "." claims))
//! header = {"alg":"HS256","typ":"JWT","kid":"<key id>"}
//! claims = {"sub":"alice","scope":{"kind":"client","room":"r1","user":"alice","device":"d1"},
//!           "iat":1700000000,"nbf":1700000000,"exp":1700000600,"jti":"<128 random bits>"}
//! ```
//!
//! Scopes are `{"kind":"admin"}`, `{"kind":"im_server","escalate":true,"presence":true}` and
//! `{"kind":"client","room":..,"user":..,"device":..}`. Times are unix seconds.
//!
//! Written here with `hmac` + `sha2` + `base64` rather than the `jsonwebtoken` crate: its
//! 11.x line reads the system clock itself to check `exp`/`nbf` (we are sans-IO: time is an
//! argument), and needs a crypto provider (`aws_lc_rs`, or `rust_crypto` which brings RSA,
//! P-256/384 and Ed25519 stacks) for the one algorithm we use. The verifier here is small
//! and strict:
//!
//! - only `alg: "HS256"` is accepted (so `none`, `HS512` and any asymmetric algorithm are
//!   refused before any key is touched); a `crit` header is refused; `typ`, if present, is
//!   `JWT`;
//! - the signature is checked in constant time (`Mac::verify_slice`) over the token's own
//!   bytes, before the claims are even decoded; base64url must be canonical and unpadded,
//!   so a signature has exactly one encoding;
//! - `exp`, `nbf` and `iat` are checked against the caller's `now` with a small leeway, and
//!   a lifetime longer than the configured maximum is refused even when signed;
//! - tokens longer than [`MAX_TOKEN_LEN`] are refused before decoding.
//!
//! # Keys and rotation
//!
//! A [`Keyring`] holds one signing key and any number of verification-only keys, each with
//! a key id (`kid` in the header). [`Keyring::rotate`] makes a new key the signing key and
//! keeps the old one for verification until [`Keyring::retire`]; tokens are short-lived, so
//! a retired key only needs to outlive the longest lifetime.
//!
//! # Use
//!
//! ```text
//! let token = bearer_token(authorization_header)?;              // 401 when absent
//! let who = keyring.authorize(token, &Requirement::Escalate, now)?;   // 401 or 403
//! ```
//!
//! [`AuthError::status`] gives 401 (no valid token) or 403 (a valid token without the
//! right scope), [`AuthError::code`] a machine-readable code and `Display` a reason that is
//! safe to return (it never echoes the token or a key). Only verification creates a
//! [`Principal`], so a handler that holds one has checked the token.
//!
//! Not here: revocation of a single token before it expires (by `jti`), and key storage.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// The only signature algorithm issued and accepted.
pub const ALGORITHM: &str = "HS256";
/// Longest token accepted, in bytes (a client token with 256-byte ids is about 1.3 KB).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Shortest HMAC key accepted, in bytes (the hash output size, RFC 7518 section 3.2).
pub const MIN_KEY_LEN: usize = 32;
/// Longest key id, subject, room, user or device id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// An HMAC-SHA256 key with its id. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Key {
    id: String,
    secret: Vec<u8>,
}

impl Key {
    /// A key from its id and secret (at least [`MIN_KEY_LEN`] bytes).
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let id = id.into();
        let secret = secret.into();
        if !valid_id(&id) {
            return Err(KeyError::BadKeyId);
        }
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                len: secret.len(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(Self { id, secret })
    }

    /// A fresh 256-bit key from a cryptographic RNG.
    pub fn generate<R: rand::CryptoRng + ?Sized>(
        id: impl Into<String>,
        rng: &mut R,
    ) -> Result<Self, KeyError> {
        let mut secret = vec![0u8; MIN_KEY_LEN];
        rng.fill_bytes(&mut secret);
        Self::new(id, secret)
    }

    /// The key id carried in the `kid` header of the tokens it signs.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` only fails for fixed-size-key MACs.
        HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A key or keyring misuse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("key id must be 1 to 256 printable ASCII characters")]
    BadKeyId,
    #[error("key is {len} bytes, at least {min} are needed")]
    TooShort { len: usize, min: usize },
    #[error("key id {0:?} is already in the keyring")]
    DuplicateKeyId(String),
}

/// What a token lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scope {
    /// Everything but joining rooms (policies, archive, users, escalations, presence).
    Admin,
    /// An IM server: escalate chats to calls and/or report presence.
    ImServer { escalate: bool, presence: bool },
    /// One user on one device, joining one room.
    Client {
        room: String,
        user: String,
        device: String,
    },
    /// One user's device on its client session (`/v1/client`): it is rung there, reports
    /// presence and activity, and is given a [`Scope::Client`] token for each call it
    /// answers. It joins no room by itself.
    Device { user: String, device: String },
}

impl Scope {
    /// A suggested lifetime for tokens of this scope, in seconds: admin 15 min, IM server
    /// 1 h (refreshed by the server), client 10 min (enough to join; the session then lives
    /// on without the token).
    pub fn default_ttl_s(&self) -> u64 {
        match self {
            Scope::Admin => 900,
            Scope::ImServer { .. } => 3600,
            Scope::Client { .. } => 600,
            // A session reconnects with it after a network change.
            Scope::Device { .. } => 43_200,
        }
    }

    /// The scope's kind as it appears in the token (`admin`, `im_server`, `client`).
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::ImServer { .. } => "im_server",
            Scope::Client { .. } => "client",
            Scope::Device { .. } => "device",
        }
    }
}

/// The signed claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who holds the token: an admin name, an IM server id, or the client's user id.
    pub sub: String,
    pub scope: Scope,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Not valid before, unix seconds.
    pub nbf: u64,
    /// Expires at, unix seconds (invalid from this second on, plus leeway).
    pub exp: u64,
    /// Token id: 128 random bits, base64url. For audit and a future revocation list.
    pub jti: String,
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

#[derive(Deserialize)]
struct HeaderIn {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A token as issued: the string to hand out and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

/// Why a token could not be issued (caller misuse).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IssueError {
    #[error("{0} must be 1 to 256 printable ASCII characters")]
    BadId(&'static str),
    #[error("a client token's subject must be its user")]
    SubjectIsNotUser,
    #[error("lifetime {ttl_s} s is not within 1 to {max_s} s")]
    BadLifetime { ttl_s: u64, max_s: u64 },
}

/// Verification limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Validation {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. Default 30.
    pub leeway_s: u64,
    /// Longest lifetime (`exp - iat`) issued or accepted, in seconds. Default 86 400 (1 day).
    pub max_lifetime_s: u64,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            leeway_s: 30,
            max_lifetime_s: 86_400,
        }
    }
}

/// One signing key, older keys still accepted for verification, and the validation limits.
#[derive(Debug, Clone)]
pub struct Keyring {
    signing: Key,
    verify_only: Vec<Key>,
    validation: Validation,
}

impl Keyring {
    /// A keyring that signs with `signing` and verifies with it alone.
    pub fn new(signing: Key) -> Self {
        Self {
            signing,
            verify_only: Vec::new(),
            validation: Validation::default(),
        }
    }

    /// Replaces the validation limits.
    pub fn with_validation(mut self, validation: Validation) -> Self {
        self.validation = validation;
        self
    }

    pub fn validation(&self) -> Validation {
        self.validation
    }

    /// Accepts tokens signed by `key` too (without signing with it).
    pub fn add_verification_key(&mut self, key: Key) -> Result<(), KeyError> {
        if self.find(&key.id).is_some() {
            return Err(KeyError::DuplicateKeyId(key.id));
        }
        self.verify_only.push(key);
        Ok(())
    }

    /// Signs with `new_signing` from now on; the previous signing key keeps verifying
    /// until [`retire`](Self::retire)d.
    pub fn rotate(&mut self, new_signing: Key) -> Result<(), KeyError> {
        if self.find(&new_signing.id).is_some() {
            return Err(KeyError::DuplicateKeyId(new_signing.id));
        }
        let old = std::mem::replace(&mut self.signing, new_signing);
        self.verify_only.push(old);
        Ok(())
    }

    /// Stops accepting tokens signed by the verification-only key `key_id`. Returns whether
    /// it was there. The signing key cannot be retired (rotate first).
    pub fn retire(&mut self, key_id: &str) -> bool {
        let before = self.verify_only.len();
        self.verify_only.retain(|k| k.id != key_id);
        self.verify_only.len() != before
    }

    /// The id of the key new tokens are signed with.
    pub fn signing_key_id(&self) -> &str {
        &self.signing.id
    }

    fn find(&self, key_id: &str) -> Option<&Key> {
        std::iter::once(&self.signing)
            .chain(self.verify_only.iter())
            .find(|k| k.id == key_id)
    }

    /// Issues a token for `subject` with `scope`, valid from `now` (unix seconds) for
    /// `ttl_s` seconds. The token id comes from `rng`.
    pub fn issue<R: rand::CryptoRng + ?Sized>(
        &self,
        subject: &str,
        scope: Scope,
        now: u64,
        ttl_s: u64,
        rng: &mut R,
    ) -> Result<IssuedToken, IssueError> {
        if !valid_id(subject) {
            return Err(IssueError::BadId("subject"));
        }
        if let Scope::Client { room, user, device } = &scope {
            for (name, value) in [("room", room), ("user", user), ("device", device)] {
                if !valid_id(value) {
                    return Err(IssueError::BadId(name));
                }
            }
            if user != subject {
                return Err(IssueError::SubjectIsNotUser);
            }
        }
        if let Scope::Device { user, device } = &scope {
            for (name, value) in [("user", user), ("device", device)] {
                if !valid_id(value) {
                    return Err(IssueError::BadId(name));
                }
            }
            if user != subject {
                return Err(IssueError::SubjectIsNotUser);
            }
        }
        let max_s = self.validation.max_lifetime_s;
        if ttl_s == 0 || ttl_s > max_s {
            return Err(IssueError::BadLifetime { ttl_s, max_s });
        }
        let mut jti = [0u8; 16];
        rng.fill_bytes(&mut jti);
        let claims = Claims {
            sub: subject.to_owned(),
            scope,
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl_s),
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let token = sign(&self.signing, &claims);
        Ok(IssuedToken { token, claims })
    }

    /// Checks a token's signature and times at `now` (unix seconds), without any scope
    /// requirement. Every error is a 401.
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed(Malformed::TooLong));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(Malformed::NotThreeParts));
        };

        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| AuthError::Malformed(Malformed::HeaderEncoding))?;
        let header: HeaderIn = serde_json::from_slice(&header_json)
            .map_err(|_| AuthError::Malformed(Malformed::HeaderJson))?;
        if header.alg != ALGORITHM {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(AuthError::Malformed(Malformed::CriticalHeader));
        }
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
        {
            return Err(AuthError::Malformed(Malformed::NotJwt));
        }
        let kid = header
            .kid
            .ok_or(AuthError::Malformed(Malformed::MissingKeyId))?;
        let key = self.find(&kid).ok_or(AuthError::UnknownKey)?;

        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| AuthError::Malformed(Malformed::SignatureEncoding))?;
        // The signing input is the token's own first two parts, byte for byte; both are
        // prefixes of `token` split at '.', so `signed_len` is within it.
        let signed_len = header_b64.len() + 1 + claims_b64.len();
        let mut mac = key.mac();
        mac.update(&token.as_bytes()[..signed_len]);
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;

        let claims_json = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| AuthError::Malformed(Malformed::ClaimsEncoding))?;
        let claims: Claims = serde_json::from_slice(&claims_json)
            .map_err(|_| AuthError::Malformed(Malformed::ClaimsJson))?;

        let leeway = self.validation.leeway_s;
        if now >= claims.exp.saturating_add(leeway) {
            return Err(AuthError::Expired {
                expired_at: claims.exp,
            });
        }
        if now.saturating_add(leeway) < claims.nbf {
            return Err(AuthError::NotYetValid {
                not_before: claims.nbf,
            });
        }
        if claims.iat > now.saturating_add(leeway) {
            return Err(AuthError::IssuedInFuture {
                issued_at: claims.iat,
            });
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if claims.exp <= claims.iat || lifetime > self.validation.max_lifetime_s {
            return Err(AuthError::BadLifetime {
                lifetime_s: lifetime,
                max_s: self.validation.max_lifetime_s,
            });
        }
        Ok(Principal { claims, kid })
    }

    /// Verifies `token` at `now` (unix seconds) and checks that its scope satisfies
    /// `required`: 401 errors for a missing or invalid token, 403 for a valid token whose
    /// scope does not allow the call.
    pub fn authorize(
        &self,
        token: &str,
        required: &Requirement<'_>,
        now: u64,
    ) -> Result<Principal, AuthError> {
        let principal = self.verify(token, now)?;
        principal.check(required).map_err(AuthError::Forbidden)?;
        Ok(principal)
    }
}

fn sign(key: &Key, claims: &Claims) -> String {
    let header = HeaderOut {
        alg: ALGORITHM,
        typ: "JWT",
        kid: &key.id,
    };
    // Serializing these plain structs (strings, integers, enums) to JSON cannot fail.
    let header = serde_json::to_vec(&header).expect("header serializes");
    let claims = serde_json::to_vec(claims).expect("claims serialize");
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let mut mac = key.mac();
    mac.update(token.as_bytes());
    let signature = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Extracts the token from an `Authorization` header value (`Bearer <token>`, scheme
/// case-insensitive, RFC 6750). `None` or an empty value is [`AuthError::Missing`].
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(Malformed::NotBearer));
    }
    let token = token.trim_start();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// What a route needs from the caller's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// Admin routes: policies, archive, users and devices management, token issuance.
    Admin,
    /// `POST /v1/escalations`: an IM server with `escalate`, or an admin.
    Escalate,
    /// Presence and device reports: an IM server with `presence`, or an admin.
    PresenceWrite,
    /// Joining `room` as `user`: a client token for exactly that room and user.
    JoinRoom { room: &'a str, user: &'a str },
    /// A device's client session: a device token (its user and device are the session's).
    Session,
}

impl fmt::Display for Requirement<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Admin => f.write_str("admin"),
            Requirement::Escalate => f.write_str("escalate"),
            Requirement::PresenceWrite => f.write_str("presence write"),
            Requirement::JoinRoom { room, user } => write!(f, "join room {room} as {user}"),
            Requirement::Session => f.write_str("client session"),
        }
    }
}

/// A caller whose token verified. Only [`Keyring::verify`] and [`Keyring::authorize`] make
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    claims: Claims,
    kid: String,
}

impl Principal {
    pub fn subject(&self) -> &str {
        &self.claims.sub
    }
    pub fn scope(&self) -> &Scope {
        &self.claims.scope
    }
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
    pub fn token_id(&self) -> &str {
        &self.claims.jti
    }
    pub fn expires_at(&self) -> u64 {
        self.claims.exp
    }
    /// The id of the key that signed the token.
    pub fn key_id(&self) -> &str {
        &self.kid
    }
    /// For a client token, the device it was issued for.
    pub fn device(&self) -> Option<&str> {
        match &self.claims.scope {
            Scope::Client { device, .. } | Scope::Device { device, .. } => Some(device),
            _ => None,
        }
    }

    /// Whether this caller's scope allows `required`; a refusal says why (a 403).
    pub fn check(&self, required: &Requirement<'_>) -> Result<(), Forbidden> {
        let refuse = |reason: String| {
            Err(Forbidden {
                required: required.to_string(),
                reason,
            })
        };
        match (required, &self.claims.scope) {
            (Requirement::Session, Scope::Device { .. }) => Ok(()),
            (Requirement::Session, _) => refuse("a client session needs a device token".into()),
            (Requirement::JoinRoom { .. }, Scope::Admin) => {
                refuse("an admin token cannot join rooms; issue a client token".into())
            }
            (_, Scope::Admin) => Ok(()),
            (Requirement::Escalate, Scope::ImServer { escalate: true, .. }) => Ok(()),
            (Requirement::PresenceWrite, Scope::ImServer { presence: true, .. }) => Ok(()),
            (Requirement::Escalate, Scope::ImServer { .. }) => {
                refuse("this IM server token does not grant escalate".into())
            }
            (Requirement::PresenceWrite, Scope::ImServer { .. }) => {
                refuse("this IM server token does not grant presence".into())
            }
            (
                Requirement::JoinRoom { room, user },
                Scope::Client {
                    room: r, user: u, ..
                },
            ) => {
                if r != room {
                    refuse(format!("this token is for room {r}, not {room}"))
                } else if u != user {
                    refuse(format!("this token is for user {u}, not {user}"))
                } else {
                    Ok(())
                }
            }
            (_, scope) => refuse(format!("needs {required}, token scope is {}", scope.kind())),
        }
    }
}

/// A valid token whose scope does not allow the call (HTTP 403).
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize)]
#[error("forbidden ({required}): {reason}")]
pub struct Forbidden {
    /// What the route needed, as text.
    pub required: String,
    /// Why the token does not give it.
    pub reason: String,
}

/// How a token is malformed (all 401).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    #[error("authorization is not a Bearer token")]
    NotBearer,
    #[error("token is too long")]
    TooLong,
    #[error("token is not three dot-separated parts")]
    NotThreeParts,
    #[error("token header is not base64url")]
    HeaderEncoding,
    #[error("token header is not the expected JSON")]
    HeaderJson,
    #[error("token header has critical extensions")]
    CriticalHeader,
    #[error("token type is not JWT")]
    NotJwt,
    #[error("token header has no key id")]
    MissingKeyId,
    #[error("token signature is not base64url")]
    SignatureEncoding,
    #[error("token claims are not base64url")]
    ClaimsEncoding,
    #[error("token claims are not the expected JSON")]
    ClaimsJson,
}

/// Why a call is not authorized. `Display` is a reason safe to send back.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("{0}")]
    Malformed(Malformed),
    #[error("token algorithm is not HS256")]
    UnsupportedAlgorithm,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at {expired_at}")]
    Expired { expired_at: u64 },
    #[error("token not valid before {not_before}")]
    NotYetValid { not_before: u64 },
    #[error("token issued in the future ({issued_at})")]
    IssuedInFuture { issued_at: u64 },
    #[error("token lifetime {lifetime_s} s is not within 1 to {max_s} s")]
    BadLifetime { lifetime_s: u64, max_s: u64 },
    #[error("{0}")]
    Forbidden(Forbidden),
}

impl AuthError {
    /// The HTTP status: 403 for a valid token without the scope, else 401.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            _ => 401,
        }
    }

    /// The RFC 6750 error code for a `WWW-Authenticate` header (`None` when no token was
    /// sent, as that RFC asks).
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing => None,
            AuthError::Forbidden(_) => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::UnsupportedAlgorithm => "token_algorithm",
            AuthError::UnknownKey => "token_unknown_key",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::Expired { .. } => "token_expired",
            AuthError::NotYetValid { .. } => "token_not_yet_valid",
            AuthError::IssuedInFuture { .. } => "token_issued_in_future",
            AuthError::BadLifetime { .. } => "token_lifetime",
            AuthError::Forbidden(_) => "insufficient_scope",
        }
    }
}

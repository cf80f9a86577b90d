//! Who is calling: an INVITE from a trunk is recognised by its source address (the trunk's
//! `inbound_from`, by default the address of its SIP server) or by digest credentials
//! (the trunk's `inbound_username` and `inbound_password`, answered to our 401). With
//! `sip_inbound = "trunks"`, a call from anywhere else is challenged (when some trunk has
//! credentials) or refused 403; with the default `"any"`, it is taken as an anonymous
//! caller. A recognised call's numbers are read with the trunk's `from_trunk` rules.
//!
//! Nonces are stateless (HMAC over their issue time, `confer_pstn_bridge::digest`) with a
//! per-process secret from the OS CSPRNG; nonce counts are tracked against replay. The
//! registrar (`registrar.rs`) checks phones' REGISTERs with the same server, realm and
//! helpers ([`our_authorization`], [`SipCore::check_digest`], [`SipCore::challenge`]).
//!
//! A nonce this process did not issue (one from before a restart) or a replayed nonce
//! count is answered with a fresh challenge rather than a refusal: it says nothing about
//! the password, and a phone that kept its nonce across our restart must be able to
//! register again without its user.

use confer_pstn_bridge::digest::{
    Algorithm, Authorization, DigestError, DigestRequest, DigestServer, NonceTracker, StoredSecret,
    parse_authorization,
};

use super::*;

/// Our digest realm.
pub(super) const REALM: &str = "confer";
/// Nonces live this long.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Nonces remembered for replay checks.
const NONCE_TRACKER_LEN: usize = 4096;

/// Which calls are taken (`sip_inbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboundPolicy {
    /// From anyone (dial-in numbers are public).
    #[default]
    Any,
    /// Only from recognised trunks.
    TrunksOnly,
}

/// Our digest server (trunks' calls, phones' registrations).
pub(super) struct InboundAuth {
    server: DigestServer,
    tracker: NonceTracker,
    /// Time zero of the nonces (they are valid within this process only).
    epoch: Instant,
}

impl std::fmt::Debug for InboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundAuth").finish_non_exhaustive()
    }
}

impl InboundAuth {
    /// With a secret from `rng` (the core's, an OS-seeded CSPRNG in the server).
    pub(super) fn new(rng: &mut impl RngCore, now: Instant) -> Option<InboundAuth> {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Some(InboundAuth {
            server: DigestServer::new(REALM, secret, NONCE_LIFETIME).ok()?,
            tracker: NonceTracker::new(NONCE_TRACKER_LEN),
            epoch: now,
        })
    }
}

/// Which digest challenges a 401 offers, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Challenges {
    /// SHA-256, then MD5 (RFC 8760): a client answers the first it knows.
    #[default]
    Sha256ThenMd5,
    /// MD5 first: for clients that answer the first challenge whatever it is, and know
    /// only MD5 (sipp 3.6).
    Md5ThenSha256,
    /// MD5 alone: for clients that give up on any challenge they cannot answer
    /// (baresip 1.0 with libre 1.1: "Function not implemented").
    Md5Only,
}

/// What the check of an INVITE decided.
pub(super) enum Caller {
    /// From this trunk.
    Trunk(String),
    /// An anonymous caller (`sip_inbound = "any"`).
    Anyone,
    /// Answered already (401 or 403): the call goes no further.
    Answered,
}

/// What a digest check decided.
#[derive(Debug)]
pub(super) enum DigestVerdict {
    /// The credentials are right.
    Valid,
    /// Challenge again (`stale`: the credentials were right, the nonce too old).
    Rechallenge {
        /// Mark the challenge `stale=true`.
        stale: bool,
    },
    /// Wrong: refuse (403).
    Refused(DigestError),
}

/// The `Authorization` of `req` for our realm, if any. One for another realm (a proxy on
/// the way, a header left from elsewhere) is not ours and is ignored.
pub(super) fn our_authorization(req: &Request) -> Option<Authorization> {
    req.headers
        .get_all(HeaderName::Authorization)
        .filter_map(|v| parse_authorization(v).ok())
        .find(|a| a.realm == REALM)
}

impl<R: RngCore> SipCore<R> {
    /// Recognises the INVITE's caller (see the module docs), answering 401/403 itself.
    pub(super) fn recognise(
        &mut self,
        tx: TransactionId,
        req: &Request,
        source: &Peer,
        now: Instant,
    ) -> Caller {
        let trunks = self.config.trunks.clone();
        if let Some(name) = trunks.inbound_by_address(source.addr.ip()) {
            return Caller::Trunk(name.to_owned());
        }
        let credentials = trunks.inbound_credentials();
        // Credentials for us: our realm and a trunk's username. Anything else does not
        // make the caller a trunk.
        let ours = our_authorization(req).and_then(|a| {
            let c = credentials.iter().find(|c| c.username == a.username)?;
            Some((a, c.trunk.clone(), c.password.clone()))
        });
        if let Some((auth, trunk, password)) = ours {
            let secret = StoredSecret::Password(&password);
            return match self.check_digest(req, &auth, Some(secret), now) {
                DigestVerdict::Valid => Caller::Trunk(trunk),
                DigestVerdict::Rechallenge { stale } => {
                    self.challenge(tx, req, stale, Challenges::default(), now);
                    Caller::Answered
                }
                DigestVerdict::Refused(e) => {
                    tracing::info!(source = %source.addr, "inbound digest refused: {e}");
                    self.metrics.auth_refused.fetch_add(1, Ordering::Relaxed);
                    self.answer(tx, req, StatusCode::FORBIDDEN, &[], now);
                    self.metrics.call_ended(CallEnd::Rejected);
                    Caller::Answered
                }
            };
        }
        if self.config.inbound == InboundPolicy::Any {
            return Caller::Anyone;
        }
        if credentials.is_empty() {
            self.metrics.auth_refused.fetch_add(1, Ordering::Relaxed);
            self.answer(tx, req, StatusCode::FORBIDDEN, &[], now);
        } else {
            self.challenge(tx, req, false, Challenges::default(), now);
        }
        self.metrics.call_ended(CallEnd::Rejected);
        Caller::Answered
    }

    /// Checks `auth` (for our realm) on `req` against `secret` (a trunk's password, or
    /// the HA1 of a phone's account for the algorithm it used). `None` is a user we do not
    /// know: the same work is done against an HA1 of zeros, and it is refused like a wrong
    /// password (neither timing nor answer tells which usernames exist).
    pub(super) fn check_digest(
        &mut self,
        req: &Request,
        auth: &Authorization,
        secret: Option<StoredSecret<'_>>,
        now: Instant,
    ) -> DigestVerdict {
        // The digest binds the Request-URI as the client wrote it: compare parsed.
        if !auth.uri.parse::<Uri>().is_ok_and(|u| u == req.uri) {
            return DigestVerdict::Refused(DigestError::UriMismatch);
        }
        let Some(state) = made(&mut self.inbound_auth, &mut self.rng, now) else {
            return DigestVerdict::Refused(DigestError::InvalidArgument("realm"));
        };
        let at = now.saturating_duration_since(state.epoch);
        let known = secret.is_some();
        let secret = secret.unwrap_or_else(|| decoy(auth));
        let verdict = state.server.verify(
            auth,
            &DigestRequest {
                method: req.method.as_str(),
                uri: &auth.uri,
                body: b"",
            },
            secret,
            at,
            &mut state.tracker,
        );
        match (verdict, known) {
            (Err(DigestError::StaleNonce), true) => DigestVerdict::Rechallenge { stale: true },
            (Err(DigestError::BadNonce | DigestError::Replay), _) => {
                DigestVerdict::Rechallenge { stale: false }
            }
            (Ok(_), true) => DigestVerdict::Valid,
            (Err(e), true) => DigestVerdict::Refused(e),
            (_, false) => DigestVerdict::Refused(DigestError::BadResponse),
        }
    }

    /// 401 with one challenge per algorithm of `offer` (by default SHA-256, then MD5).
    pub(super) fn challenge(
        &mut self,
        tx: TransactionId,
        req: &Request,
        stale: bool,
        offer: Challenges,
        now: Instant,
    ) {
        let Some(auth) = made(&mut self.inbound_auth, &mut self.rng, now) else {
            return self.answer(tx, req, StatusCode::FORBIDDEN, &[], now);
        };
        let at = now.saturating_duration_since(auth.epoch);
        let mut algorithms = auth.server.algorithms().to_vec();
        match offer {
            Challenges::Sha256ThenMd5 => {}
            // A stable sort: MD5 first, the rest in the server's order.
            Challenges::Md5ThenSha256 => algorithms.sort_by_key(|a| *a != Algorithm::Md5),
            Challenges::Md5Only => algorithms.retain(|a| *a == Algorithm::Md5),
        }
        let extra: Vec<(HeaderName, String)> = algorithms
            .into_iter()
            .map(|a| auth.server.challenge(a, at, stale, &mut self.rng))
            .map(|c| (HeaderName::WwwAuthenticate, c.to_string()))
            .collect();
        self.metrics.auth_challenges.fetch_add(1, Ordering::Relaxed);
        self.answer(tx, req, StatusCode::UNAUTHORIZED, &extra, now);
    }
}

/// What an unknown user's digest is checked against: an HA1 of zeros for the hash the
/// client used, so that the work is that of a known user's (decode, response).
fn decoy(auth: &Authorization) -> StoredSecret<'static> {
    const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    match auth.algorithm().map(Algorithm::hash) {
        Ok(hash) => StoredSecret::Ha1 {
            hash,
            // Every hash we know is at most 32 bytes (64 hex digits).
            hex: ZEROS.get(..hash.output_len() * 2).unwrap_or(ZEROS),
        },
        // An algorithm we do not know is refused before any secret is used.
        Err(_) => StoredSecret::Password(""),
    }
}

/// The digest server of inbound calls in `slot`, made on first use.
fn made<'a>(
    slot: &'a mut Option<InboundAuth>,
    rng: &mut impl RngCore,
    now: Instant,
) -> Option<&'a mut InboundAuth> {
    if slot.is_none() {
        *slot = InboundAuth::new(rng, now);
    }
    slot.as_mut()
}

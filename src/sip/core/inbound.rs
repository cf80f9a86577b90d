//! Who is calling: an INVITE from a trunk is recognised by its source address (the trunk's
//! `inbound_from`, by default the address of its SIP server) or by digest credentials
//! (the trunk's `inbound_username` and `inbound_password`, answered to our 401). With
//! `sip_inbound = "trunks"`, a call from anywhere else is challenged (when some trunk has
//! credentials) or refused 403; with the default `"any"`, it is taken as an anonymous
//! caller. A recognised call's numbers are read with the trunk's `from_trunk` rules.
//!
//! Nonces are stateless (HMAC over their issue time, `confer_pstn_bridge::digest`) with a
//! per-process secret from the OS CSPRNG; nonce counts are tracked against replay.

use confer_pstn_bridge::digest::{
    DigestError, DigestRequest, DigestServer, NonceTracker, StoredSecret, parse_authorization,
};

use super::*;

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

/// The digest side of inbound recognition.
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
            server: DigestServer::new("confer", secret, NONCE_LIFETIME).ok()?,
            tracker: NonceTracker::new(NONCE_TRACKER_LEN),
            epoch: now,
        })
    }
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
        // Credentials for us: our realm and a trunk's username. Anything else (a header
        // meant for a proxy on the way, another realm) does not make the caller a trunk.
        let ours = req
            .headers
            .get(HeaderName::Authorization)
            .and_then(|v| parse_authorization(v).ok())
            .filter(|a| {
                a.realm == "confer" && credentials.iter().any(|c| c.username == a.username)
            });
        if let Some(auth) = ours {
            let verdict = Ok(auth).and_then(|auth: confer_pstn_bridge::digest::Authorization| {
                let c = credentials
                    .iter()
                    .find(|c| c.username == auth.username)
                    .ok_or(DigestError::InvalidArgument("username"))?;
                // The digest binds the Request-URI as the client wrote it: compare parsed.
                let same_uri = auth.uri.parse::<Uri>().is_ok_and(|u| u == req.uri);
                if !same_uri {
                    return Err(DigestError::UriMismatch);
                }
                let auth_state = made(&mut self.inbound_auth, &mut self.rng, now)
                    .ok_or(DigestError::InvalidArgument("realm"))?;
                let at = now.saturating_duration_since(auth_state.epoch);
                auth_state
                    .server
                    .verify(
                        &auth,
                        &DigestRequest {
                            method: "INVITE",
                            uri: &auth.uri,
                            body: b"",
                        },
                        StoredSecret::Password(&c.password),
                        at,
                        &mut auth_state.tracker,
                    )
                    .map(|_| c.trunk.clone())
            });
            return match verdict {
                Ok(trunk) => Caller::Trunk(trunk),
                Err(DigestError::StaleNonce) => {
                    self.challenge(tx, req, true, now);
                    Caller::Answered
                }
                Err(e) => {
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
            self.challenge(tx, req, false, now);
        }
        self.metrics.call_ended(CallEnd::Rejected);
        Caller::Answered
    }

    /// 401 with one challenge per algorithm we take (SHA-256, then MD5).
    fn challenge(&mut self, tx: TransactionId, req: &Request, stale: bool, now: Instant) {
        let Some(auth) = made(&mut self.inbound_auth, &mut self.rng, now) else {
            return self.answer(tx, req, StatusCode::FORBIDDEN, &[], now);
        };
        let at = now.saturating_duration_since(auth.epoch);
        let extra: Vec<(HeaderName, String)> = auth
            .server
            .challenges(at, stale, &mut self.rng)
            .into_iter()
            .map(|c| (HeaderName::WwwAuthenticate, c.to_string()))
            .collect();
        self.metrics.auth_challenges.fetch_add(1, Ordering::Relaxed);
        self.answer(tx, req, StatusCode::UNAUTHORIZED, &extra, now);
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

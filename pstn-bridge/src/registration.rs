//! Outbound trunk registration (RFC 3261 §10.2), sans-IO.
//!
//! A carrier trunk usually wants confer to REGISTER a Contact for an address-of-record and
//! to keep that binding alive. [`Registration`] is the user-agent-client half of that: it
//! builds the REGISTER requests, reads the final responses, answers digest challenges and
//! decides when to send the next request. It never reads a clock, touches a socket or
//! starts a transaction: the shell does, with time and the RNG injected.
//!
//! # Drive contract
//!
//! 1. [`Registration::new`] queues the first REGISTER at `now`.
//! 2. After every call, take [`Registration::poll_request`] until `None` and start each
//!    request as a client transaction (e.g.
//!    [`TransactionLayer::send_request`](crate::sip::transaction::TransactionLayer::send_request));
//!    each request already has its top Via with a fresh branch.
//! 3. Report the outcome of each request exactly once: its final response with
//!    [`Registration::on_response`] (provisional ones are ignored and may be passed too),
//!    Timer F with [`Registration::on_timeout`], a failed send with
//!    [`Registration::on_transport_error`]. Only one REGISTER is outstanding at a time
//!    (RFC 3261 §10.2: a UA must not send a new REGISTER for a binding before the previous
//!    one completed).
//! 4. Sleep until [`Registration::next_timeout`] and call [`Registration::handle_timeout`]
//!    (early, late or spurious calls are harmless), then go to 2.
//!
//! [`Registration::unregister`] removes the binding (`expires=0`); [`Registration::register`]
//! starts again after that or after [`RegistrationState::Failed`].
//!
//! # Choices
//!
//! - **One binding, one Call-ID.** Every REGISTER of a `Registration` shares Call-ID and
//!   From tag, CSeq grows by one per request (§10.2.4), To carries no tag. The Contact
//!   carries `;expires=` and an `Expires` header says the same, for registrars that read
//!   only one of them.
//! - **Refresh time.** A binding granted for `g` seconds is refreshed `min(margin, g/2)`
//!   before it lapses, with [`RegistrationConfig::refresh_margin`] 60 s by default: more than
//!   a non-INVITE transaction timeout (Timer F, 32 s), so a refresh that times out still
//!   leaves time for one retry; the `g/2` bound keeps short grants from being refreshed at
//!   once. For `g = 600` s that is 540 s after the 200.
//! - **Granted expiry.** From the 200: the `expires` parameter of the Contact equivalent to
//!   ours, else the `Expires` header, else what we asked for (registrars that echo no
//!   Contact exist), never more than we asked for (§10.3: a registrar may only shorten
//!   it). A grant of 0 is a failure.
//! - **Backoff** after any failure follows RFC 5626 §4.5: the wait is
//!   `min(max, initial * 2^(n-1))` for the `n`-th consecutive failure, and the retry is drawn
//!   uniformly between half that wait and the whole of it, from the injected RNG, so a fleet
//!   restarted at once does not re-register in lock step. A `Retry-After` on the failure
//!   (typically 503) replaces the drawn wait, capped at [`MAX_RETRY_AFTER`] so a hostile
//!   registrar cannot park us for a century. A success resets the count.
//! - **Digest.** 401 answers go in `Authorization`, 407 answers in `Proxy-Authorization`
//!   (one [`DigestClient`] kept for each), choosing among the offered challenges with
//!   [`strongest`] (SHA-256 before MD5). The client is kept across refreshes, so a refresh
//!   re-uses the nonce with the next `nc` and usually needs no new challenge. A challenge
//!   with `stale=true`, or with a nonce other than the one we answered, is answered at
//!   once; a challenge for the very nonce we just answered, not stale, means the
//!   credentials are wrong ([`FailureReason::AuthFailed`], then backoff). At most
//!   [`MAX_CHALLENGE_ROUNDS`] challenges are answered in a row, so a registrar that rotates
//!   nonces forever cannot make us loop.
//! - **423** raises the requested expiry to `Min-Expires` (kept for later refreshes) and
//!   retries at once; a 423 without a usable, larger `Min-Expires` is a failure.
//! - **A refresh in flight keeps [`RegistrationState::Registered`]**: the binding is still
//!   valid until `expires_at`. A failed refresh moves to [`RegistrationState::Backoff`];
//!   [`Registration::binding_expires_at`] still says until when the old binding holds.
//! - **Unregister** sends `expires=0` for our Contact only (never `*`, which would remove the
//!   bindings of other devices of the same AOR); whatever the outcome but a challenge, the
//!   state becomes `Unregistered`.
//! - **Hostile responses.** A response whose Call-ID or CSeq is not that of the REGISTER in
//!   flight is refused with [`ResponseError::Unmatched`] and changes nothing. One that is
//!   ours but unreadable where we need it (Contact, Expires, Min-Expires, challenges) is a
//!   [`FailureReason::Malformed`] failure and the typed error is returned; nothing panics.
//! - **[`RegistrationState::Failed`]** is kept for what retrying cannot fix: a challenge with
//!   no credentials configured, or credentials the digest layer refuses to send.

use std::time::{Duration, Instant};

use rand::{Rng, RngCore};

use crate::digest::{
    AuthChallenge, Challenge, Credentials, DigestClient, DigestError, DigestRequest,
    parse_challenge, strongest,
};
use crate::sip::transaction::{SentBy, new_call_id, new_tag};
use crate::sip::{HeaderError, HeaderName, Method, NameAddr, Request, Response, StatusCode, Uri};

/// Longest `Retry-After` honoured; a larger value is clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Most digest challenges answered in a row before giving up on an attempt.
pub const MAX_CHALLENGE_ROUNDS: u32 = 3;

/// Largest `Expires` we ask for (RFC 3261 delta-seconds are 32 bits).
const MAX_EXPIRES_SECS: u64 = u32::MAX as u64;

/// Exponential backoff after failures (RFC 5626 §4.5 style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure (before jitter). Default 5 s.
    pub initial: Duration,
    /// Longest wait (before jitter). Default 300 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before jitter after `failures` consecutive failures (at least 1):
    /// `min(max, initial * 2^(failures-1))`. Retries are drawn in `[wait/2, wait]`.
    pub fn wait(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// What to register, where, and how to behave.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The registrar's Request-URI, e.g. `sip:sip.example.net`.
    pub registrar: Uri,
    /// The address-of-record (From and To).
    pub aor: Uri,
    /// Our Contact.
    pub contact: Uri,
    /// Where we send from: each REGISTER's Via (with a fresh branch).
    pub sent_by: SentBy,
    /// Credentials for digest challenges; `None` makes a challenge a permanent failure.
    pub credentials: Option<Credentials>,
    /// Requested binding lifetime. Default 3600 s; whole seconds are sent.
    pub expires: Duration,
    /// How long before the binding lapses it is refreshed (bounded by half the grant).
    /// Default 60 s.
    pub refresh_margin: Duration,
    /// Backoff after failures.
    pub backoff: Backoff,
}

impl RegistrationConfig {
    /// A configuration with the documented defaults and no credentials.
    pub fn new(registrar: Uri, aor: Uri, contact: Uri, sent_by: SentBy) -> Self {
        Self {
            registrar,
            aor,
            contact,
            sent_by,
            credentials: None,
            expires: Duration::from_secs(3600),
            refresh_margin: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }
}

/// A response that is ours but unreadable where we need it, or not ours at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// No REGISTER is in flight, or the response's Call-ID/CSeq is not that of the one in
    /// flight. Nothing changed.
    #[error("response does not match the REGISTER in flight")]
    Unmatched,
    /// A header we need does not parse.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A 401/407 carries no challenge we can answer.
    #[error("no usable digest challenge")]
    NoUsableChallenge,
    /// The digest layer refused the challenge.
    #[error("digest: {0}")]
    Digest(#[from] DigestError),
}

/// Why the last attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// A final response other than 2xx, 401/407 and a usable 423.
    Status(StatusCode),
    /// The registrar rejected our digest response (wrong username or password).
    AuthFailed,
    /// Challenged but no credentials are configured.
    NoCredentials,
    /// The transaction timed out (Timer F).
    Timeout,
    /// The request could not be sent.
    TransportError,
    /// A 423 without a usable `Min-Expires`.
    IntervalTooBrief,
    /// The registrar granted 0 seconds.
    NotGranted,
    /// The response was ours but unreadable.
    Malformed(ResponseError),
}

/// Where the binding stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// No binding and nothing scheduled (after unregister).
    Unregistered,
    /// A REGISTER is pending or in flight and no binding is known to be valid.
    Registering,
    /// The registrar granted the binding until `expires_at`; a refresh is scheduled or in
    /// flight.
    Registered {
        /// When the binding lapses without a refresh.
        expires_at: Instant,
    },
    /// The last attempt failed; the next one is at `retry_at`.
    Backoff {
        /// When the next REGISTER goes out.
        retry_at: Instant,
        /// Why the last attempt failed.
        last_failure: FailureReason,
    },
    /// Stopped: retrying cannot help until the configuration changes.
    Failed(FailureReason),
}

/// Counters for the API and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStats {
    /// REGISTER requests handed out (challenge answers and unregister included).
    pub attempts: u64,
    /// 2xx responses granting a binding.
    pub successes: u64,
    /// Failures that led to backoff or `Failed`.
    pub failures: u64,
    /// Digest challenges received.
    pub challenges: u64,
    /// The status of the last final response.
    pub last_status: Option<StatusCode>,
}

/// The registration timers: one is armed at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Refresh a valid binding.
    Refresh,
    /// Retry after a failure.
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Register,
    Unregister,
}

/// The REGISTER in flight.
#[derive(Debug)]
struct InFlight {
    cseq: u32,
    purpose: Purpose,
    /// Nonces answered in this request (WWW, Proxy).
    www_nonce: Option<String>,
    proxy_nonce: Option<String>,
}

/// One binding's registration client. See the module documentation.
#[derive(Debug)]
pub struct Registration<R> {
    config: RegistrationConfig,
    rng: R,
    call_id: String,
    from_tag: String,
    cseq: u32,
    expires_secs: u32,
    state: RegistrationState,
    timer: Option<(Timer, Instant)>,
    pending: Option<Request>,
    in_flight: Option<InFlight>,
    /// The REGISTER to send once a pending attempt is due (set by `start`).
    due: Option<Purpose>,
    www: Option<DigestClient>,
    proxy: Option<DigestClient>,
    challenge_rounds: u32,
    failures: u32,
    binding_expires_at: Option<Instant>,
    stats: RegistrationStats,
}

impl<R: RngCore> Registration<R> {
    /// A client for one binding; the first REGISTER is ready at `now`.
    pub fn new(config: RegistrationConfig, mut rng: R, now: Instant) -> Self {
        let call_id = new_call_id(&mut rng);
        let from_tag = new_tag(&mut rng);
        let expires_secs =
            u32::try_from(config.expires.as_secs().min(MAX_EXPIRES_SECS)).unwrap_or(u32::MAX);
        let mut reg = Self {
            config,
            rng,
            call_id,
            from_tag,
            cseq: 0,
            expires_secs,
            state: RegistrationState::Registering,
            timer: None,
            pending: None,
            in_flight: None,
            due: None,
            www: None,
            proxy: None,
            challenge_rounds: 0,
            failures: 0,
            binding_expires_at: None,
            stats: RegistrationStats::default(),
        };
        reg.register(now);
        reg
    }

    /// Where the binding stands.
    pub fn state(&self) -> &RegistrationState {
        &self.state
    }

    /// Counters.
    pub fn stats(&self) -> &RegistrationStats {
        &self.stats
    }

    /// The Call-ID of every REGISTER of this binding.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The expiry we currently ask for, in seconds (raised by a 423).
    pub fn requested_expires(&self) -> u32 {
        self.expires_secs
    }

    /// Until when the last granted binding holds (also during backoff), if any.
    pub fn binding_expires_at(&self) -> Option<Instant> {
        self.binding_expires_at
    }

    /// The armed timer, if any.
    pub fn timer(&self) -> Option<(Timer, Instant)> {
        self.timer
    }

    /// (Re)starts registering at `now`: after `unregister`, after `Failed`, or to refresh
    /// early. Ignored while a REGISTER is in flight (its outcome drives what follows).
    pub fn register(&mut self, now: Instant) {
        self.lapse(now);
        if self.in_flight.is_some() {
            return;
        }
        self.failures = 0;
        if !matches!(self.state, RegistrationState::Registered { .. }) {
            self.state = RegistrationState::Registering;
        }
        self.start(Purpose::Register);
    }

    /// Removes our binding: a REGISTER with `expires=0`, then `Unregistered`. If a REGISTER
    /// is in flight, the unregister follows its outcome.
    pub fn unregister(&mut self, now: Instant) {
        self.lapse(now);
        self.timer = None;
        if self.in_flight.is_some() {
            self.due = Some(Purpose::Unregister);
            return;
        }
        self.start(Purpose::Unregister);
    }

    /// When [`Registration::handle_timeout`] should next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.pending.is_some() || self.in_flight.is_some() {
            return None;
        }
        self.timer.map(|(_, at)| at)
    }

    /// Fires a due timer. Harmless when early, late or spurious.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.lapse(now);
        if self.in_flight.is_some() || self.pending.is_some() {
            return;
        }
        match self.timer {
            Some((_, at)) if at <= now => {
                self.timer = None;
                // The retry is under way: no longer backing off.
                self.state = match self.binding_expires_at {
                    Some(expires_at) => RegistrationState::Registered { expires_at },
                    None => RegistrationState::Registering,
                };
                self.start(Purpose::Register);
            }
            _ => {}
        }
    }

    /// The next REGISTER to send, if any (fires due timers first).
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        self.handle_timeout(now);
        self.pending.take()
    }

    /// A response to the REGISTER in flight. Provisional responses are ignored.
    ///
    /// `Err(Unmatched)` changes nothing; any other `Err` was handled like a negative
    /// response (a failure with backoff, or the end of an unregister) and is returned for
    /// the shell to log.
    pub fn on_response(&mut self, response: &Response, now: Instant) -> Result<(), ResponseError> {
        let Some(flight) = &self.in_flight else {
            return Err(ResponseError::Unmatched);
        };
        let matches = response.headers.call_id().ok() == Some(self.call_id.as_str())
            && response
                .headers
                .cseq()
                .is_ok_and(|c| c.seq == flight.cseq && c.method == Method::Register);
        if !matches {
            return Err(ResponseError::Unmatched);
        }
        if response.status.is_provisional() {
            return Ok(());
        }
        self.lapse(now);
        self.stats.last_status = Some(response.status);
        // Checked above: a flight exists.
        let Some(flight) = self.in_flight.take() else {
            return Err(ResponseError::Unmatched);
        };
        let code = response.status.as_u16();
        let result = match code {
            401 | 407 => self.on_challenge(response, &flight, now),
            _ if flight.purpose == Purpose::Unregister => {
                self.finish_unregister();
                Ok(())
            }
            200..=299 => self.on_success(response, now),
            423 => self.on_interval_too_brief(response, now),
            _ => {
                self.challenge_rounds = 0;
                let retry_after = retry_after(response);
                self.fail(FailureReason::Status(response.status), retry_after, now);
                Ok(())
            }
        };
        if let Err(e) = &result {
            self.challenge_rounds = 0;
            if flight.purpose == Purpose::Unregister {
                self.finish_unregister();
            } else {
                self.fail(FailureReason::Malformed(e.clone()), None, now);
            }
        }
        result
    }

    /// The transaction of the REGISTER in flight timed out.
    pub fn on_timeout(&mut self, now: Instant) {
        self.on_no_response(FailureReason::Timeout, now);
    }

    /// The REGISTER in flight could not be sent.
    pub fn on_transport_error(&mut self, now: Instant) {
        self.on_no_response(FailureReason::TransportError, now);
    }

    fn on_no_response(&mut self, reason: FailureReason, now: Instant) {
        self.lapse(now);
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        self.challenge_rounds = 0;
        if flight.purpose == Purpose::Unregister {
            self.finish_unregister();
        } else {
            self.fail(reason, None, now);
        }
    }

    /// Forgets a binding whose lifetime has passed (a refresh in flight for too long, or
    /// backoff past the expiry): it is no longer `Registered`.
    fn lapse(&mut self, now: Instant) {
        if self.binding_expires_at.is_some_and(|at| at <= now) {
            self.binding_expires_at = None;
            if matches!(self.state, RegistrationState::Registered { .. }) {
                self.state = RegistrationState::Registering;
            }
        }
    }

    fn finish_unregister(&mut self) {
        self.state = RegistrationState::Unregistered;
        self.timer = None;
        self.due = None;
        self.binding_expires_at = None;
        self.challenge_rounds = 0;
    }

    fn on_success(&mut self, response: &Response, now: Instant) -> Result<(), ResponseError> {
        self.challenge_rounds = 0;
        let granted = self.granted_expiry(response)?;
        if granted == 0 {
            self.fail(FailureReason::NotGranted, None, now);
            return Ok(());
        }
        // A registrar may shorten the interval, never lengthen it (RFC 3261 §10.3).
        let granted = Duration::from_secs(u64::from(granted.min(self.expires_secs)));
        let expires_at = later(now, granted);
        let margin = self.config.refresh_margin.min(granted / 2);
        self.stats.successes += 1;
        self.failures = 0;
        self.binding_expires_at = Some(expires_at);
        self.state = RegistrationState::Registered { expires_at };
        self.timer = Some((Timer::Refresh, expires_at - margin));
        self.take_due();
        Ok(())
    }

    /// The `expires` of our Contact in a 200, else its Expires header, else what we asked.
    fn granted_expiry(&self, response: &Response) -> Result<u32, ResponseError> {
        let contacts = response.headers.contacts()?;
        for c in contacts.addresses() {
            if c.uri.equivalent(&self.config.contact) {
                let e = c.expires().map_err(|error| HeaderError::Malformed {
                    name: HeaderName::Contact,
                    error,
                })?;
                if let Some(e) = e {
                    return Ok(e);
                }
            }
        }
        Ok(response.headers.expires()?.unwrap_or(self.expires_secs))
    }

    fn on_interval_too_brief(
        &mut self,
        response: &Response,
        now: Instant,
    ) -> Result<(), ResponseError> {
        self.challenge_rounds = 0;
        let min = min_expires(response)?;
        match min {
            Some(min) if min > self.expires_secs => {
                self.expires_secs = min;
                self.start(Purpose::Register);
            }
            _ => self.fail(FailureReason::IntervalTooBrief, None, now),
        }
        Ok(())
    }

    fn on_challenge(
        &mut self,
        response: &Response,
        flight: &InFlight,
        now: Instant,
    ) -> Result<(), ResponseError> {
        self.stats.challenges += 1;
        let proxy = response.status.as_u16() == 407;
        if self.config.credentials.is_none() {
            self.give_up(flight.purpose, FailureReason::NoCredentials, now);
            return Ok(());
        }
        let challenge = strongest_challenge(response).ok_or(ResponseError::NoUsableChallenge)?;
        let answered = if proxy {
            &flight.proxy_nonce
        } else {
            &flight.www_nonce
        };
        self.challenge_rounds += 1;
        let same_nonce = answered.as_deref() == Some(challenge.nonce.as_str());
        if (same_nonce && !challenge.stale) || self.challenge_rounds > MAX_CHALLENGE_ROUNDS {
            // Forget the nonce: the next attempt starts from a fresh challenge.
            self.challenge_rounds = 0;
            if proxy {
                self.proxy = None;
            } else {
                self.www = None;
            }
            self.give_up(flight.purpose, FailureReason::AuthFailed, now);
            return Ok(());
        }
        let slot = if proxy {
            &mut self.proxy
        } else {
            &mut self.www
        };
        match slot {
            Some(client) => client.update(challenge)?,
            None => *slot = Some(DigestClient::new(challenge)?),
        }
        let purpose = flight.purpose;
        self.start(purpose);
        Ok(())
    }

    /// Ends an attempt that answering challenges cannot complete: an unregister is over,
    /// a register fails (backoff, or `Failed` when retrying cannot help).
    fn give_up(&mut self, purpose: Purpose, reason: FailureReason, now: Instant) {
        if purpose == Purpose::Unregister {
            self.stats.failures += 1;
            self.finish_unregister();
        } else if reason == FailureReason::NoCredentials {
            self.stop(reason);
        } else {
            self.fail(reason, None, now);
        }
    }

    /// Schedules a retry after a failure.
    fn fail(&mut self, reason: FailureReason, retry_after: Option<Duration>, now: Instant) {
        self.stats.failures += 1;
        self.failures = self.failures.saturating_add(1);
        if self.due == Some(Purpose::Unregister) {
            // Nothing to unregister if the attempt failed; honour the request anyway.
            self.due = None;
            self.start(Purpose::Unregister);
            return;
        }
        let wait = match retry_after {
            Some(d) => d.min(MAX_RETRY_AFTER),
            None => self.jittered(self.config.backoff.wait(self.failures)),
        };
        let retry_at = later(now, wait);
        self.timer = Some((Timer::Retry, retry_at));
        self.state = RegistrationState::Backoff {
            retry_at,
            last_failure: reason,
        };
    }

    /// Stops until [`Registration::register`].
    fn stop(&mut self, reason: FailureReason) {
        self.stats.failures += 1;
        self.timer = None;
        self.challenge_rounds = 0;
        self.state = RegistrationState::Failed(reason);
    }

    /// Uniform in `[wait/2, wait]` (RFC 5626 §4.5).
    fn jittered(&mut self, wait: Duration) -> Duration {
        let hi = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let lo = hi / 2;
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }

    /// Sends what an `unregister` asked for while a request was in flight.
    fn take_due(&mut self) {
        if let Some(purpose) = self.due.take() {
            self.start(purpose);
        }
    }

    /// Builds the next REGISTER and makes it pending.
    fn start(&mut self, purpose: Purpose) {
        if purpose == Purpose::Unregister {
            self.timer = None;
        }
        match self.build(purpose) {
            Ok((request, flight)) => {
                self.stats.attempts += 1;
                self.pending = Some(request);
                self.in_flight = Some(flight);
            }
            Err(reason) => self.stop(reason),
        }
    }

    fn build(&mut self, purpose: Purpose) -> Result<(Request, InFlight), FailureReason> {
        self.cseq = self.cseq.wrapping_add(1).max(1);
        let expires = match purpose {
            Purpose::Register => self.expires_secs,
            Purpose::Unregister => 0,
        };
        let mut req = Request::new(Method::Register, self.config.registrar.clone());
        let via = self.config.sent_by.via(&mut self.rng);
        let mut from = NameAddr::new(self.config.aor.clone());
        // A tag from `new_tag` is hex digits, always a token.
        let _ = from.set_tag(&self.from_tag);
        let to = NameAddr::new(self.config.aor.clone());
        let contact = format!("<{}>;expires={expires}", self.config.contact);
        let registrar = self.config.registrar.to_string();
        let fields: [(HeaderName, &str); 8] = [
            (HeaderName::Via, &via.to_string()),
            (HeaderName::MaxForwards, "70"),
            (HeaderName::From, &from.to_string()),
            (HeaderName::To, &to.to_string()),
            (HeaderName::CallId, &self.call_id),
            (HeaderName::CSeq, &format!("{} REGISTER", self.cseq)),
            (HeaderName::Contact, &contact),
            (HeaderName::Expires, &expires.to_string()),
        ];
        let invalid = |_| FailureReason::Malformed(ResponseError::Digest(invalid_config()));
        for (name, value) in fields {
            req.headers.push(name, value).map_err(invalid)?;
        }
        let mut flight = InFlight {
            cseq: self.cseq,
            purpose,
            www_nonce: None,
            proxy_nonce: None,
        };
        if let Some(credentials) = &self.config.credentials {
            let request = DigestRequest {
                method: "REGISTER",
                uri: &registrar,
                body: b"",
            };
            for (client, name, nonce) in [
                (
                    &mut self.www,
                    HeaderName::Authorization,
                    &mut flight.www_nonce,
                ),
                (
                    &mut self.proxy,
                    HeaderName::ProxyAuthorization,
                    &mut flight.proxy_nonce,
                ),
            ] {
                let Some(c) = client else { continue };
                match c.authorize(credentials, &request, &mut self.rng) {
                    Ok(auth) => {
                        *nonce = Some(auth.nonce.clone());
                        req.headers.push(name, &auth.to_string()).map_err(invalid)?;
                    }
                    // Nonce count exhausted: send without and take the fresh challenge.
                    Err(DigestError::NonceCountExhausted) => *client = None,
                    Err(e) => return Err(FailureReason::Malformed(ResponseError::Digest(e))),
                }
            }
        }
        Ok((req, flight))
    }
}

/// The challenge to answer in a 401 (`WWW-Authenticate`) or 407 (`Proxy-Authenticate`):
/// the strongest digest challenge offered ([`strongest`]: SHA-256 before MD5). Any UAC
/// that meets challenges (registration, INVITE) reads them this way.
pub fn strongest_challenge(response: &Response) -> Option<Challenge> {
    let header = if response.status.as_u16() == 407 {
        HeaderName::ProxyAuthenticate
    } else {
        HeaderName::WwwAuthenticate
    };
    let offered: Vec<AuthChallenge> = response
        .headers
        .get_all(header)
        .filter_map(|v| parse_challenge(v).ok())
        .collect();
    strongest(&offered).cloned()
}

/// `now + d`, or a bounded wait if that is beyond what `Instant` can hold (a
/// configuration asking for centuries).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(MAX_RETRY_AFTER))
        .unwrap_or(now)
}

fn invalid_config() -> DigestError {
    DigestError::InvalidArgument("header value")
}

/// `Min-Expires` of a 423: `Ok(None)` when absent.
fn min_expires(response: &Response) -> Result<Option<u32>, ResponseError> {
    let Some(v) = response.headers.single(HeaderName::MinExpires)? else {
        return Ok(None);
    };
    v.trim()
        .parse::<u32>()
        .map(Some)
        .map_err(|_| ResponseError::Header(malformed(HeaderName::MinExpires)))
}

fn malformed(name: HeaderName) -> HeaderError {
    HeaderError::Malformed {
        name,
        error: crate::sip::ValueError::OutOfRange,
    }
}

/// `Retry-After: delta-seconds [comment] *(;param)`: the seconds, or `None` when absent or
/// unreadable (then the usual backoff applies).
fn retry_after(response: &Response) -> Option<Duration> {
    let v = response.headers.single(HeaderName::RetryAfter).ok()??;
    let digits = v.trim_start().split(|c: char| !c.is_ascii_digit()).next()?;
    let secs: u64 = digits.parse().ok()?;
    Some(Duration::from_secs(secs))
}

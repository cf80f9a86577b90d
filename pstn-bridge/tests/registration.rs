//! Outbound trunk registration: the REGISTERs it writes, digest answers verified end to end
//! by `digest::DigestServer`, refresh timing, 423, stale nonces, wrong passwords, backoff
//! with jitter, Retry-After, timeouts, unregister, and hostile responses.
//!
//! Deterministic: virtual time from a fixed `Instant`, every RNG a seeded ChaCha8.

use std::time::{Duration, Instant};

use confer_pstn_bridge::digest::{
    Algorithm, Credentials, DigestRequest, DigestServer, NonceTracker, StoredSecret,
    parse_authorization,
};
use confer_pstn_bridge::registration::{
    FailureReason, Registration, RegistrationConfig, RegistrationState, ResponseError, Timer,
};
use confer_pstn_bridge::sip::transaction::SentBy;
use confer_pstn_bridge::sip::{
    HeaderName, Host, Message, Method, Request, Response, StatusCode, Transport, Uri,
    parse_datagram,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const REGISTRAR: &str = "sip:sip.example.net";
const CONTACT: &str = "sip:confer@192.0.2.10:5060";
const REALM: &str = "sip.example.net";
/// Server-side digest time (an arbitrary epoch).
const EPOCH: Duration = Duration::from_secs(1_700_000_000);

fn creds(password: &str) -> Credentials {
    Credentials {
        username: "trunk42".into(),
        password: password.into(),
    }
}

fn config(credentials: Option<Credentials>) -> RegistrationConfig {
    let mut c = RegistrationConfig::new(
        Uri::parse(REGISTRAR).unwrap(),
        Uri::parse("sip:+4930123456@sip.example.net").unwrap(),
        Uri::parse(CONTACT).unwrap(),
        SentBy {
            transport: Transport::Udp,
            host: Host::parse("192.0.2.10").unwrap(),
            port: Some(5060),
        },
    );
    c.credentials = credentials;
    c
}

#[allow(clippy::disallowed_methods)] // the epoch of virtual time; nothing waits on it
fn epoch() -> Instant {
    Instant::now()
}

fn start(credentials: Option<Credentials>, seed: u64) -> (Registration<ChaCha8Rng>, Instant) {
    let t0 = epoch();
    let reg = Registration::new(config(credentials), ChaCha8Rng::seed_from_u64(seed), t0);
    (reg, t0)
}

fn status(code: u16) -> StatusCode {
    StatusCode::new(code).unwrap()
}

/// A response to `req` as a registrar writes it: Via, From, To (with a tag), Call-ID, CSeq.
fn reply(req: &Request, code: u16) -> Response {
    let mut r = Response::new(status(code));
    let h = &req.headers;
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        r.headers.push(name, h.get(name).unwrap()).unwrap();
    }
    let mut to = h.to().unwrap();
    to.set_tag("reg1").unwrap();
    r.headers.push(HeaderName::To, &to.to_string()).unwrap();
    r
}

fn ok_with_contact(req: &Request, expires: u32) -> Response {
    let mut r = reply(req, 200);
    // Another device's binding first: only ours may set our refresh.
    r.headers
        .push(
            HeaderName::Contact,
            "<sip:deskphone@198.51.100.7>;expires=3600",
        )
        .unwrap();
    r.headers
        .push(
            HeaderName::Contact,
            &format!("<{CONTACT}>;expires={expires}"),
        )
        .unwrap();
    r
}

fn server() -> DigestServer {
    // MD5 offered first: the client must still pick SHA-256.
    DigestServer::new(REALM, [9u8; 32], Duration::from_secs(300))
        .unwrap()
        .with_algorithms(&[Algorithm::Md5, Algorithm::Sha256])
        .unwrap()
}

fn challenge(req: &Request, code: u16, srv: &DigestServer, at: Duration, stale: bool) -> Response {
    let mut rng = ChaCha8Rng::seed_from_u64(at.as_secs());
    let mut r = reply(req, code);
    let header = if code == 407 {
        HeaderName::ProxyAuthenticate
    } else {
        HeaderName::WwwAuthenticate
    };
    for c in srv.challenges(at, stale, &mut rng) {
        r.headers.push(header, &c.to_string()).unwrap();
    }
    r
}

fn verify(
    req: &Request,
    header: HeaderName,
    srv: &DigestServer,
    password: &str,
    at: Duration,
    tracker: &mut NonceTracker,
) -> Result<Algorithm, String> {
    let auth = parse_authorization(req.headers.get(header).ok_or("no authorization")?)
        .map_err(|e| e.to_string())?;
    let dreq = DigestRequest {
        method: "REGISTER",
        uri: REGISTRAR,
        body: b"",
    };
    srv.verify(&auth, &dreq, StoredSecret::Password(password), at, tracker)
        .map(|a| a.algorithm())
        .map_err(|e| e.to_string())
}

fn cseq(req: &Request) -> u32 {
    req.headers.cseq().unwrap().seq
}

fn contact_expires(req: &Request) -> Option<u32> {
    req.headers.contacts().unwrap().addresses()[0]
        .expires()
        .unwrap()
}

fn retry_at(reg: &Registration<ChaCha8Rng>) -> Instant {
    match reg.state() {
        RegistrationState::Backoff { retry_at, .. } => *retry_at,
        other => panic!("not in backoff: {other:?}"),
    }
}

fn last_failure(reg: &Registration<ChaCha8Rng>) -> FailureReason {
    match reg.state() {
        RegistrationState::Backoff { last_failure, .. } => last_failure.clone(),
        other => panic!("not in backoff: {other:?}"),
    }
}

#[test]
fn the_first_register_carries_the_binding_headers() {
    let (mut reg, t0) = start(None, 1);
    assert_eq!(reg.state(), &RegistrationState::Registering);
    let req = reg.poll_request(t0).expect("first REGISTER at once");
    assert!(reg.poll_request(t0).is_none(), "one REGISTER at a time");
    assert_eq!(req.method, Method::Register);
    assert_eq!(req.uri.to_string(), REGISTRAR);
    let h = &req.headers;
    assert!(h.top_via().unwrap().has_rfc3261_branch());
    assert_eq!(h.max_forwards().unwrap(), Some(70));
    let from = h.from().unwrap();
    let to = h.to().unwrap();
    assert_eq!(from.uri, to.uri);
    assert_eq!(to.uri.to_string(), "sip:+4930123456@sip.example.net");
    assert!(from.tag().is_some_and(|t| t.len() >= 8));
    assert_eq!(to.tag(), None);
    assert_eq!(h.call_id().unwrap(), reg.call_id());
    assert_eq!(h.cseq().unwrap().seq, 1);
    assert_eq!(h.cseq().unwrap().method, Method::Register);
    let contacts = h.contacts().unwrap();
    assert_eq!(contacts.addresses().len(), 1);
    assert_eq!(contacts.addresses()[0].uri.to_string(), CONTACT);
    assert_eq!(contact_expires(&req), Some(3600));
    assert_eq!(h.expires().unwrap(), Some(3600));
    assert!(!h.contains(HeaderName::Authorization));
    // It survives the wire.
    let wire = Message::from(req.clone()).to_vec();
    assert!(matches!(parse_datagram(&wire), Ok(Message::Request(r)) if r == req));
    assert_eq!(reg.stats().attempts, 1);
}

#[test]
fn a_sha256_challenge_is_answered_with_an_authorization_the_registrar_verifies() {
    let (mut reg, t0) = start(Some(creds("s3cret")), 2);
    let srv = server();
    let mut tracker = NonceTracker::new(16);
    let first = reg.poll_request(t0).unwrap();
    reg.on_response(&challenge(&first, 401, &srv, EPOCH, false), t0)
        .unwrap();
    let second = reg.poll_request(t0).expect("answered at once");
    assert_eq!(cseq(&second), 2);
    assert_eq!(second.headers.call_id().unwrap(), reg.call_id());
    assert_eq!(
        second.headers.from().unwrap().tag(),
        first.headers.from().unwrap().tag()
    );
    assert_ne!(
        second.headers.top_via().unwrap().branch(),
        first.headers.top_via().unwrap().branch()
    );
    assert!(!second.headers.contains(HeaderName::ProxyAuthorization));
    let alg = verify(
        &second,
        HeaderName::Authorization,
        &srv,
        "s3cret",
        EPOCH,
        &mut tracker,
    );
    assert_eq!(alg, Ok(Algorithm::Sha256));
    reg.on_response(&ok_with_contact(&second, 3600), t0)
        .unwrap();
    assert!(matches!(reg.state(), RegistrationState::Registered { .. }));
    assert_eq!(reg.stats().challenges, 1);
    assert_eq!(reg.stats().successes, 1);
    assert_eq!(reg.stats().last_status, Some(status(200)));
}

#[test]
fn a_proxy_challenge_is_answered_in_proxy_authorization() {
    let (mut reg, t0) = start(Some(creds("s3cret")), 3);
    let srv = server();
    let first = reg.poll_request(t0).unwrap();
    reg.on_response(&challenge(&first, 407, &srv, EPOCH, false), t0)
        .unwrap();
    let second = reg.poll_request(t0).unwrap();
    assert!(!second.headers.contains(HeaderName::Authorization));
    let alg = verify(
        &second,
        HeaderName::ProxyAuthorization,
        &srv,
        "s3cret",
        EPOCH,
        &mut NonceTracker::new(4),
    );
    assert_eq!(alg, Ok(Algorithm::Sha256));
}

#[test]
fn a_grant_of_600_s_on_our_contact_is_refreshed_60_s_before_it_lapses() {
    let (mut reg, t0) = start(Some(creds("s3cret")), 4);
    let srv = server();
    let mut tracker = NonceTracker::new(16);
    let first = reg.poll_request(t0).unwrap();
    reg.on_response(&challenge(&first, 401, &srv, EPOCH, false), t0)
        .unwrap();
    let second = reg.poll_request(t0).unwrap();
    assert!(
        verify(
            &second,
            HeaderName::Authorization,
            &srv,
            "s3cret",
            EPOCH,
            &mut tracker
        )
        .is_ok()
    );
    let t1 = t0 + Duration::from_millis(80);
    reg.on_response(&ok_with_contact(&second, 600), t1).unwrap();
    assert_eq!(
        reg.state(),
        &RegistrationState::Registered {
            expires_at: t1 + Duration::from_secs(600)
        }
    );
    let refresh_at = t1 + Duration::from_secs(540);
    assert_eq!(reg.next_timeout(), Some(refresh_at));
    assert_eq!(reg.timer(), Some((Timer::Refresh, refresh_at)));
    let early = refresh_at - Duration::from_millis(1);
    reg.handle_timeout(early);
    assert!(
        reg.poll_request(early).is_none(),
        "not before the refresh time"
    );
    let refresh = reg.poll_request(refresh_at).expect("refresh due");
    assert_eq!(cseq(&refresh), cseq(&second) + 1);
    assert_eq!(refresh.headers.call_id().unwrap(), reg.call_id());
    assert_eq!(
        refresh.headers.from().unwrap().tag(),
        second.headers.from().unwrap().tag()
    );
    assert_eq!(
        contact_expires(&refresh),
        Some(3600),
        "asks for the configured expiry again"
    );
    // Same nonce, next nonce count: the registrar accepts it without a new challenge.
    let auth =
        parse_authorization(refresh.headers.get(HeaderName::Authorization).unwrap()).unwrap();
    assert_eq!(auth.nc.as_ref().map(|n| n.value()), Some(2));
    let later = EPOCH + Duration::from_secs(200);
    assert_eq!(
        verify(
            &refresh,
            HeaderName::Authorization,
            &srv,
            "s3cret",
            later,
            &mut tracker
        ),
        Ok(Algorithm::Sha256)
    );
    // Still registered while the refresh is in flight.
    assert!(matches!(reg.state(), RegistrationState::Registered { .. }));
    assert_eq!(reg.next_timeout(), None);
}

#[test]
fn without_our_contact_the_expires_header_sets_the_grant() {
    let (mut reg, t0) = start(None, 5);
    let req = reg.poll_request(t0).unwrap();
    let mut ok = reply(&req, 200);
    ok.headers.push(HeaderName::Expires, "120").unwrap();
    reg.on_response(&ok, t0).unwrap();
    // 120 s granted: the margin is bounded by half the grant.
    assert_eq!(reg.next_timeout(), Some(t0 + Duration::from_secs(60)));
    let refresh = reg.poll_request(t0 + Duration::from_secs(60)).unwrap();
    // A grant longer than asked is held to what we asked.
    let mut ok = ok_with_contact(&refresh, 86_400);
    ok.headers.push(HeaderName::Expires, "120").unwrap();
    let t1 = t0 + Duration::from_secs(61);
    reg.on_response(&ok, t1).unwrap();
    assert_eq!(
        reg.binding_expires_at(),
        Some(t1 + Duration::from_secs(3600))
    );
}

#[test]
fn interval_too_brief_retries_at_once_with_min_expires() {
    let (mut reg, t0) = start(None, 6);
    let first = reg.poll_request(t0).unwrap();
    let mut r = reply(&first, 423);
    r.headers.push(HeaderName::MinExpires, "7200").unwrap();
    reg.on_response(&r, t0).unwrap();
    let second = reg.poll_request(t0).expect("retried at once");
    assert_eq!(contact_expires(&second), Some(7200));
    assert_eq!(second.headers.expires().unwrap(), Some(7200));
    assert_eq!(reg.requested_expires(), 7200);
    // A 423 whose Min-Expires is not above what we asked cannot be satisfied.
    let mut r = reply(&second, 423);
    r.headers.push(HeaderName::MinExpires, "60").unwrap();
    reg.on_response(&r, t0).unwrap();
    assert_eq!(last_failure(&reg), FailureReason::IntervalTooBrief);
}

#[test]
fn a_stale_nonce_is_answered_at_once_with_the_new_nonce() {
    let (mut reg, t0) = start(Some(creds("s3cret")), 7);
    let srv = server();
    let mut tracker = NonceTracker::new(16);
    let first = reg.poll_request(t0).unwrap();
    reg.on_response(&challenge(&first, 401, &srv, EPOCH, false), t0)
        .unwrap();
    let second = reg.poll_request(t0).unwrap();
    reg.on_response(&ok_with_contact(&second, 600), t0).unwrap();
    let t1 = t0 + Duration::from_secs(540);
    let refresh = reg.poll_request(t1).unwrap();
    // The registrar's nonce lifetime (300 s) has passed: stale.
    let later = EPOCH + Duration::from_secs(540);
    assert_eq!(
        verify(
            &refresh,
            HeaderName::Authorization,
            &srv,
            "s3cret",
            later,
            &mut tracker
        ),
        Err("nonce is stale".to_owned())
    );
    reg.on_response(&challenge(&refresh, 401, &srv, later, true), t1)
        .unwrap();
    let retry = reg.poll_request(t1).expect("stale: answered at once");
    assert_eq!(
        verify(
            &retry,
            HeaderName::Authorization,
            &srv,
            "s3cret",
            later,
            &mut tracker
        ),
        Ok(Algorithm::Sha256)
    );
    reg.on_response(&ok_with_contact(&retry, 600), t1).unwrap();
    assert!(matches!(reg.state(), RegistrationState::Registered { .. }));
    assert_eq!(reg.stats().failures, 0);
}

/// Drives one failing cycle with a wrong password: REGISTER, challenge, answer, the same
/// challenge again. Returns when the attempt failed.
fn fail_auth_once(reg: &mut Registration<ChaCha8Rng>, srv: &DigestServer, now: Instant) {
    let mut answered = false;
    let mut ch: Option<Response> = None;
    while let Some(req) = reg.poll_request(now) {
        if req.headers.contains(HeaderName::Authorization) {
            assert!(
                verify(
                    &req,
                    HeaderName::Authorization,
                    srv,
                    "right",
                    EPOCH,
                    &mut NonceTracker::new(4)
                )
                .is_err()
            );
            answered = true;
        }
        // The registrar re-issues the same challenge (same nonce, not stale).
        let template = ch.get_or_insert_with(|| challenge(&req, 401, srv, EPOCH, false));
        let mut r = reply(&req, 401);
        for v in template.headers.get_all(HeaderName::WwwAuthenticate) {
            r.headers.push(HeaderName::WwwAuthenticate, v).unwrap();
        }
        reg.on_response(&r, now).unwrap();
    }
    assert!(answered);
    assert_eq!(last_failure(reg), FailureReason::AuthFailed);
}

#[test]
fn a_wrong_password_backs_off_exponentially_with_jitter_up_to_the_cap() {
    let (mut reg, mut now) = start(Some(creds("wrong")), 8);
    let srv = server();
    let mut fractions = Vec::new();
    for n in 1..=10u32 {
        fail_auth_once(&mut reg, &srv, now);
        let wait = retry_at(&reg) - now;
        let full = Duration::from_secs(5 * 2u64.pow(n - 1)).min(Duration::from_secs(300));
        assert!(
            wait >= full / 2 && wait <= full,
            "failure {n}: waited {wait:?}, expected within [{:?}, {full:?}]",
            full / 2
        );
        fractions.push(wait.as_secs_f64() / full.as_secs_f64());
        assert_eq!(reg.next_timeout(), Some(retry_at(&reg)));
        assert!(
            reg.poll_request(retry_at(&reg) - Duration::from_millis(1))
                .is_none()
        );
        now = retry_at(&reg);
    }
    assert_eq!(reg.stats().failures, 10);
    fractions.sort_by(f64::total_cmp);
    assert!(
        fractions[9] - fractions[0] > 0.1,
        "jitter varies: {fractions:?}"
    );
}

#[test]
fn a_503_with_retry_after_is_retried_when_the_registrar_said() {
    let (mut reg, t0) = start(None, 9);
    let req = reg.poll_request(t0).unwrap();
    let mut r = reply(&req, 503);
    r.headers
        .push(HeaderName::RetryAfter, "120 (maintenance);duration=600")
        .unwrap();
    reg.on_response(&r, t0).unwrap();
    assert_eq!(retry_at(&reg), t0 + Duration::from_secs(120));
    assert_eq!(last_failure(&reg), FailureReason::Status(status(503)));
    assert_eq!(reg.stats().last_status, Some(status(503)));
    let again = reg.poll_request(t0 + Duration::from_secs(120)).unwrap();
    assert_eq!(cseq(&again), 2);
    assert_eq!(
        reg.state(),
        &RegistrationState::Registering,
        "retrying, not backing off"
    );
}

#[test]
fn timeouts_back_off_and_a_success_resets_the_backoff() {
    let (mut reg, t0) = start(None, 10);
    assert!(reg.poll_request(t0).is_some());
    reg.on_timeout(t0);
    assert_eq!(last_failure(&reg), FailureReason::Timeout);
    let w1 = retry_at(&reg) - t0;
    assert!(
        w1 >= Duration::from_millis(2500) && w1 <= Duration::from_secs(5),
        "{w1:?}"
    );
    let t1 = retry_at(&reg);
    assert!(reg.poll_request(t1).is_some());
    reg.on_transport_error(t1);
    assert_eq!(last_failure(&reg), FailureReason::TransportError);
    let w2 = retry_at(&reg) - t1;
    assert!(
        w2 >= Duration::from_secs(5) && w2 <= Duration::from_secs(10),
        "{w2:?}"
    );
    let t2 = retry_at(&reg);
    let req = reg.poll_request(t2).unwrap();
    reg.on_response(&ok_with_contact(&req, 600), t2).unwrap();
    let t3 = t2 + Duration::from_secs(540);
    assert!(reg.poll_request(t3).is_some());
    reg.on_timeout(t3);
    let w3 = retry_at(&reg) - t3;
    assert!(
        w3 <= Duration::from_secs(5),
        "back to the initial wait: {w3:?}"
    );
    assert_eq!(
        reg.binding_expires_at(),
        Some(t2 + Duration::from_secs(600))
    );
}

#[test]
fn unregister_sends_expires_zero_and_ends_unregistered() {
    let (mut reg, t0) = start(None, 11);
    let req = reg.poll_request(t0).unwrap();
    reg.on_response(&ok_with_contact(&req, 600), t0).unwrap();
    let t1 = t0 + Duration::from_secs(10);
    reg.unregister(t1);
    let bye = reg.poll_request(t1).expect("unregister REGISTER");
    assert_eq!(bye.method, Method::Register);
    assert_eq!(cseq(&bye), 2);
    assert_eq!(bye.headers.call_id().unwrap(), reg.call_id());
    assert_eq!(contact_expires(&bye), Some(0));
    assert_eq!(bye.headers.expires().unwrap(), Some(0));
    assert_eq!(
        bye.headers.get(HeaderName::Contact),
        Some(format!("<{CONTACT}>;expires=0").as_str())
    );
    reg.on_response(&reply(&bye, 200), t1).unwrap();
    assert_eq!(reg.state(), &RegistrationState::Unregistered);
    assert_eq!(reg.next_timeout(), None);
    assert!(reg.poll_request(t1 + Duration::from_secs(3600)).is_none());
}

#[test]
fn a_challenge_without_credentials_is_a_permanent_failure() {
    let (mut reg, t0) = start(None, 12);
    let req = reg.poll_request(t0).unwrap();
    reg.on_response(&challenge(&req, 401, &server(), EPOCH, false), t0)
        .unwrap();
    assert_eq!(
        reg.state(),
        &RegistrationState::Failed(FailureReason::NoCredentials)
    );
    assert_eq!(reg.next_timeout(), None);
    reg.register(t0);
    assert!(reg.poll_request(t0).is_some(), "register() starts again");
}

#[test]
fn a_response_to_another_request_changes_nothing() {
    let (mut reg, t0) = start(None, 13);
    let req = reg.poll_request(t0).unwrap();
    let mut r = reply(&req, 200);
    r.headers.set(HeaderName::CSeq, "99 REGISTER").unwrap();
    assert_eq!(reg.on_response(&r, t0), Err(ResponseError::Unmatched));
    let mut r = reply(&req, 200);
    r.headers.set(HeaderName::CallId, "someone-else").unwrap();
    assert_eq!(reg.on_response(&r, t0), Err(ResponseError::Unmatched));
    assert_eq!(reg.on_response(&reply(&req, 100), t0), Ok(()));
    assert_eq!(reg.state(), &RegistrationState::Registering);
    reg.on_response(&reply(&req, 200), t0).unwrap();
    assert_eq!(
        reg.on_response(&reply(&req, 200), t0),
        Err(ResponseError::Unmatched)
    );
}

#[test]
fn a_malformed_contact_in_a_200_is_a_typed_failure() {
    let (mut reg, t0) = start(None, 14);
    let req = reg.poll_request(t0).unwrap();
    let mut r = reply(&req, 200);
    r.headers
        .push(
            HeaderName::Contact,
            &format!("<{CONTACT}>;expires=99999999999"),
        )
        .unwrap();
    assert!(matches!(
        reg.on_response(&r, t0),
        Err(ResponseError::Header(_))
    ));
    assert!(matches!(last_failure(&reg), FailureReason::Malformed(_)));
    assert_eq!(reg.stats().failures, 1);
}

/// Values a hostile registrar might put in the headers we read.
const HOSTILE: &[&str] = &[
    "",
    "*",
    "0",
    "4294967296",
    "-1",
    "Digest",
    "Digest realm=\"x\", nonce=\"",
    "Digest realm=x, nonce=y, algorithm=SHA-256, qop=\"auth\", stale=true",
    "Digest realm=x, nonce=y, algorithm=FOO",
    "Basic realm=x",
    "<sip:confer@192.0.2.10:5060>;expires=abc",
    "<sip:confer@192.0.2.10:5060>;expires",
    "<sip:confer@192.0.2.10:5060>;expires=0",
    "<sip:confer@192.0.2.10:5060>;expires=4294967295",
    "<sip:",
    "99999999999999999999 (x)",
    "1 REGISTER",
    "2 INVITE",
];

#[test]
fn a_seeded_batch_of_mutated_responses_never_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let srv = server();
    let headers = [
        HeaderName::Contact,
        HeaderName::Expires,
        HeaderName::MinExpires,
        HeaderName::RetryAfter,
        HeaderName::WwwAuthenticate,
        HeaderName::ProxyAuthenticate,
        HeaderName::CSeq,
    ];
    let codes = [200, 202, 302, 401, 407, 423, 480, 503, 603, 100];
    let mut fed = 0;
    let mut parsed_mutants = 0;
    for round in 0..2000u64 {
        let (mut reg, t0) = start(Some(creds("s3cret")), round);
        let mut now = t0;
        for _step in 0..8 {
            let Some(req) = reg.poll_request(now) else {
                match reg.next_timeout() {
                    Some(t) => now = t,
                    None => reg.register(now), // Failed or Unregistered: start again
                }
                continue;
            };
            let code = codes[rng.random_range(0..codes.len())];
            let mut r = if matches!(code, 401 | 407) && rng.random_bool(0.5) {
                challenge(&req, code, &srv, EPOCH, rng.random_bool(0.3))
            } else {
                reply(&req, code)
            };
            for _ in 0..rng.random_range(0..3) {
                let name = headers[rng.random_range(0..headers.len())];
                let value = HOSTILE[rng.random_range(0..HOSTILE.len())];
                r.headers.push(name, value).unwrap();
            }
            // Byte mutation through the parser, half the time.
            if rng.random_bool(0.5) {
                let mut wire = Message::from(r.clone()).to_vec();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..wire.len());
                    wire[i] = rng.random();
                }
                match parse_datagram(&wire) {
                    Ok(Message::Response(m)) => {
                        parsed_mutants += 1;
                        r = m;
                    }
                    // Unparsable: the shell would never see it; its transaction times out.
                    _ => {
                        reg.on_timeout(now);
                        continue;
                    }
                }
            }
            let _ = reg.on_response(&r, now);
            fed += 1;
            // Never stuck: a backoff always has its retry timer armed.
            if let RegistrationState::Backoff { retry_at, .. } = reg.state() {
                assert_eq!(reg.timer(), Some((Timer::Retry, *retry_at)));
            }
            if let Some(t) = reg.next_timeout() {
                now = t;
            }
        }
    }
    println!("fed {fed}, parsed mutants {parsed_mutants}");
    assert!(fed > 4000, "fed {fed}");
    assert!(parsed_mutants > 500, "parsed mutants {parsed_mutants}");
}

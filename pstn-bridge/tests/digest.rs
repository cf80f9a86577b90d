//! Digest authentication: published vectors, client/server round trips, the refusals a
//! registrar must make, challenges as deployed servers write them, and hostile input.
//!
//! Deterministic: every RNG is a seeded ChaCha8, every time a fixed `Duration`.

use std::time::Duration;

use confer_pstn_bridge::digest::{
    Algorithm, AlgorithmParam, AuthChallenge, Authorization, Challenge, Credentials, DigestClient,
    DigestError, DigestHash, DigestRequest, DigestServer, NonceTracker, ParseError, Qop,
    StoredSecret, ha1_hex, parse_authorization, parse_challenge, strongest,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T0: Duration = Duration::from_secs(1_700_000_000);
const LIFETIME: Duration = Duration::from_secs(300);
const REALM: &str = "confer.example";
const URI: &str = "sip:confer.example";

fn alice() -> Credentials {
    Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    }
}

fn register() -> DigestRequest<'static> {
    DigestRequest {
        method: "REGISTER",
        uri: URI,
        body: b"",
    }
}

fn server() -> DigestServer {
    DigestServer::new(REALM, [7u8; 32], LIFETIME)
        .unwrap()
        .with_algorithms(&Algorithm::ALL)
        .unwrap()
}

fn digest(value: &str) -> Challenge {
    match parse_challenge(value) {
        Ok(AuthChallenge::Digest(c)) => c,
        other => panic!("not a digest challenge: {other:?}"),
    }
}

/// Client answers the challenge the way it goes over the wire: Display, parse, Display, parse.
fn answer(challenge: &Challenge, creds: &Credentials, rng: &mut ChaCha8Rng) -> Authorization {
    let mut client = DigestClient::new(digest(&challenge.to_string())).unwrap();
    let auth = client.authorize(creds, &register(), rng).unwrap();
    parse_authorization(&auth.to_string()).unwrap()
}

fn verify(
    server: &DigestServer,
    auth: &Authorization,
    now: Duration,
    tracker: &mut NonceTracker,
) -> Result<String, DigestError> {
    server
        .verify(
            auth,
            &register(),
            StoredSecret::Password("s3cret"),
            now,
            tracker,
        )
        .map(|a| a.username().to_owned())
}

// ----- published vectors -------------------------------------------------------------------

#[test]
fn rfc2617_example_reproduces_the_published_md5_response_and_header() {
    let ch = digest(
        r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
    );
    let mut client = DigestClient::new(ch).unwrap();
    let auth = client
        .authorize_with_cnonce(
            &Credentials {
                username: "Mufasa".into(),
                password: "Circle Of Life".into(),
            },
            &DigestRequest {
                method: "GET",
                uri: "/dir/index.html",
                body: b"",
            },
            "0a4f113b",
        )
        .unwrap();
    assert_eq!(auth.response, "6629fae49393a05397450978507c4ef1");
    // RFC 7616 §3.4 quoting: algorithm, qop and nc bare, the rest quoted.
    assert_eq!(
        auth.to_string(),
        r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001"#
    );
}

const RFC7616_SHA256: &str = "Digest\r\n realm=\"http-auth@example.org\",\r\n qop=\"auth, auth-int\",\r\n algorithm=SHA-256,\r\n nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
const RFC7616_MD5: &str = "Digest\r\n realm=\"http-auth@example.org\",\r\n qop=\"auth, auth-int\",\r\n algorithm=MD5,\r\n nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";

fn rfc7616_response(ch: &Challenge) -> String {
    let mut client = DigestClient::new(ch.clone()).unwrap();
    client
        .authorize_with_cnonce(
            &Credentials {
                username: "Mufasa".into(),
                password: "Circle of Life".into(),
            },
            &DigestRequest {
                method: "GET",
                uri: "/dir/index.html",
                body: b"",
            },
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        .unwrap()
        .response
}

#[test]
fn rfc7616_examples_reproduce_the_published_sha256_and_md5_responses() {
    let sha = digest(RFC7616_SHA256);
    assert_eq!(sha.algorithm().unwrap(), Algorithm::Sha256);
    assert_eq!(sha.qop, vec![Qop::Auth, Qop::AuthInt]);
    assert_eq!(
        rfc7616_response(&sha),
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
    assert_eq!(
        rfc7616_response(&digest(RFC7616_MD5)),
        "8ca523f5e9506fed4657c9700eebdbec"
    );
}

#[test]
fn sha512_256_session_and_auth_int_responses_match_an_independent_implementation() {
    // Expected values computed with Python's hashlib (an independent implementation).
    let creds = alice();
    let mut client = DigestClient::new(digest(
        r#"Digest realm="confer.example", nonce="abc123", algorithm=SHA-512-256, qop="auth""#,
    ))
    .unwrap();
    let auth = client
        .authorize_with_cnonce(&creds, &register(), "0a4f113b")
        .unwrap();
    assert_eq!(
        auth.response,
        "ce0062fbdcef166dfedf81edf1a9cf3f86a6a33b293284e23d9e724c1981b45a"
    );

    let mut client = DigestClient::new(digest(
        r#"Digest realm="confer.example", nonce="abc123", algorithm=MD5-sess, qop="auth-int""#,
    ))
    .unwrap();
    let invite = DigestRequest {
        method: "INVITE",
        uri: "sip:bob@confer.example",
        body: b"v=0\r\n",
    };
    let auth = client
        .authorize_with_cnonce(&creds, &invite, "0a4f113b")
        .unwrap();
    assert_eq!(auth.qop, Some(Qop::AuthInt));
    assert_eq!(auth.response, "7eb93c96d27cc95190da43f6980fc314");

    // RFC 2069 mode (no qop): no cnonce, no nc on the wire.
    let mut client =
        DigestClient::new(digest(r#"Digest realm="confer.example", nonce="abc123""#)).unwrap();
    let auth = client
        .authorize_with_cnonce(&creds, &register(), "ignored")
        .unwrap();
    assert_eq!(auth.response, "209054bf8699be41ece7b0a4fd0f3f09");
    let text = auth.to_string();
    assert!(!text.contains("cnonce") && !text.contains("nc=") && !text.contains("qop"));
}

#[test]
fn ha1_helper_matches_an_independent_implementation() {
    assert_eq!(
        ha1_hex(DigestHash::Sha256, "alice", "confer.example", "s3cret"),
        "dafdc80c76a3537159d957cd28e73717a4c233b412d68a687db9b788b152c70e"
    );
}

// ----- round trips -----------------------------------------------------------------------

#[test]
fn every_algorithm_round_trips_from_client_to_server_with_qop() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for alg in Algorithm::ALL {
        let mut tracker = NonceTracker::new(16);
        let ch = server.challenge(alg, T0, false, &mut rng);
        let auth = answer(&ch, &alice(), &mut rng);
        assert_eq!(auth.algorithm().unwrap(), alg);
        assert_eq!(auth.qop, Some(Qop::Auth));
        assert_eq!(
            verify(&server, &auth, T0 + Duration::from_secs(10), &mut tracker),
            Ok("alice".into()),
            "{alg}"
        );
    }
}

#[test]
fn non_session_algorithms_round_trip_without_qop_when_rfc2069_is_allowed() {
    let server = server().allow_rfc2069(true);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for alg in [Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512_256] {
        let mut ch = server.challenge(alg, T0, false, &mut rng);
        ch.qop.clear();
        let auth = answer(&ch, &alice(), &mut rng);
        assert_eq!(auth.qop, None);
        assert_eq!(
            verify(&server, &auth, T0, &mut NonceTracker::new(4)),
            Ok("alice".into())
        );
    }
}

#[test]
fn a_session_algorithm_without_qop_is_refused_by_the_client() {
    let mut ch = digest(r#"Digest realm="r", nonce="n", algorithm=SHA-256-sess"#);
    ch.qop.clear();
    assert_eq!(
        DigestClient::new(ch).unwrap_err(),
        DigestError::UnsupportedQop
    );
}

#[test]
fn a_response_without_qop_is_refused_unless_rfc2069_is_allowed() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut ch = server.challenge(Algorithm::Sha256, T0, false, &mut rng);
    ch.qop.clear();
    let auth = answer(&ch, &alice(), &mut rng);
    assert_eq!(
        verify(&server, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::QopRequired)
    );
}

#[test]
fn a_stored_ha1_verifies_like_the_password_and_only_for_its_hash() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut tracker = NonceTracker::new(16);
    for alg in [Algorithm::Sha256, Algorithm::Sha256Sess] {
        let auth = answer(
            &server.challenge(alg, T0, false, &mut rng),
            &alice(),
            &mut rng,
        );
        let ha1 = ha1_hex(DigestHash::Sha256, "alice", REALM, "s3cret");
        let secret = StoredSecret::Ha1 {
            hash: DigestHash::Sha256,
            hex: &ha1,
        };
        let ok = server.verify(&auth, &register(), secret, T0, &mut tracker);
        assert_eq!(ok.map(|a| a.algorithm()), Ok(alg));
    }
    let auth = answer(
        &server.challenge(Algorithm::Md5, T0, false, &mut rng),
        &alice(),
        &mut rng,
    );
    let ha1 = ha1_hex(DigestHash::Sha256, "alice", REALM, "s3cret");
    let secret = StoredSecret::Ha1 {
        hash: DigestHash::Sha256,
        hex: &ha1,
    };
    assert_eq!(
        server.verify(&auth, &register(), secret, T0, &mut tracker),
        Err(DigestError::NoSecretForAlgorithm)
    );
}

#[test]
fn auth_int_covers_the_body() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut ch = server.challenge(Algorithm::Sha256, T0, false, &mut rng);
    ch.qop = vec![Qop::AuthInt];
    let mut client = DigestClient::new(ch).unwrap();
    let signed = DigestRequest {
        method: "INVITE",
        uri: URI,
        body: b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n",
    };
    let auth = client.authorize(&alice(), &signed, &mut rng).unwrap();
    let mut tracker = NonceTracker::new(4);
    let altered = DigestRequest {
        body: b"v=0\r\no=- 1 1 IN IP4 203.0.113.9\r\n",
        ..signed
    };
    let pw = StoredSecret::Password("s3cret");
    assert_eq!(
        server
            .verify(&auth, &altered, pw, T0, &mut tracker)
            .unwrap_err(),
        DigestError::BadResponse
    );
    assert!(server.verify(&auth, &signed, pw, T0, &mut tracker).is_ok());
}

// ----- refusals -----------------------------------------------------------------------------

#[test]
fn an_expired_nonce_with_the_right_password_is_stale_so_the_client_retries_silently() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let auth = answer(
        &server.challenge(Algorithm::Sha256, T0, false, &mut rng),
        &alice(),
        &mut rng,
    );
    let late = T0 + LIFETIME + Duration::from_secs(1);
    assert_eq!(
        verify(&server, &auth, late, &mut NonceTracker::new(4)),
        Err(DigestError::StaleNonce)
    );
    // Just inside the lifetime it is still good.
    assert!(verify(&server, &auth, T0 + LIFETIME, &mut NonceTracker::new(4)).is_ok());
    // And the re-challenge says stale=true on the wire.
    let again = server.challenge(Algorithm::Sha256, late, true, &mut rng);
    assert!(again.to_string().contains("stale=true"));
    assert!(digest(&again.to_string()).stale);
}

#[test]
fn an_expired_nonce_with_a_wrong_password_is_a_bad_response_not_stale() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let wrong = Credentials {
        username: "alice".into(),
        password: "guess".into(),
    };
    let auth = answer(
        &server.challenge(Algorithm::Sha256, T0, false, &mut rng),
        &wrong,
        &mut rng,
    );
    let late = T0 + LIFETIME * 10;
    assert_eq!(
        verify(&server, &auth, late, &mut NonceTracker::new(4)),
        Err(DigestError::BadResponse)
    );
}

#[test]
fn a_wrong_password_is_a_bad_response() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for alg in Algorithm::ALL {
        let auth = answer(
            &server.challenge(alg, T0, false, &mut rng),
            &Credentials {
                username: "alice".into(),
                password: "s3cres".into(),
            },
            &mut rng,
        );
        assert_eq!(
            verify(&server, &auth, T0, &mut NonceTracker::new(4)),
            Err(DigestError::BadResponse)
        );
    }
}

#[test]
fn a_tampered_nonce_is_refused_even_with_a_correct_response_for_it() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut ch = server.challenge(Algorithm::Sha256, T0, false, &mut rng);
    // Move the issue time forward by editing a timestamp nibble, then answer it correctly.
    let mut nonce = ch.nonce.into_bytes();
    nonce[17] = if nonce[17] == b'f' { b'0' } else { b'f' };
    ch.nonce = String::from_utf8(nonce).unwrap();
    let auth = answer(&ch, &alice(), &mut rng);
    assert_eq!(
        verify(&server, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::BadNonce)
    );
    for junk in ["", "abc", "zz", &"0".repeat(68)] {
        let mut ch = server.challenge(Algorithm::Sha256, T0, false, &mut rng);
        ch.nonce = junk.to_owned();
        let auth = answer(&ch, &alice(), &mut rng);
        assert_eq!(
            verify(&server, &auth, T0, &mut NonceTracker::new(4)),
            Err(DigestError::BadNonce),
            "{junk:?}"
        );
    }
}

#[test]
fn a_nonce_minted_by_another_secret_or_realm_is_refused() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let other_secret = DigestServer::new(REALM, [8u8; 32], LIFETIME).unwrap();
    let auth = answer(
        &other_secret.challenge(Algorithm::Sha256, T0, false, &mut rng),
        &alice(),
        &mut rng,
    );
    assert_eq!(
        verify(&server, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::BadNonce)
    );
    // Same secret, other realm: the realm is inside the MAC.
    let other_realm = DigestServer::new("other.example", [7u8; 32], LIFETIME).unwrap();
    let mut ch = other_realm.challenge(Algorithm::Sha256, T0, false, &mut rng);
    ch.realm = REALM.into();
    let auth = answer(&ch, &alice(), &mut rng);
    assert_eq!(
        verify(&server, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::BadNonce)
    );
}

#[test]
fn a_replayed_nonce_count_is_refused_and_the_next_count_is_accepted() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut tracker = NonceTracker::new(16);
    let mut client =
        DigestClient::new(server.challenge(Algorithm::Sha256, T0, false, &mut rng)).unwrap();
    let first = client.authorize(&alice(), &register(), &mut rng).unwrap();
    assert!(verify(&server, &first, T0, &mut tracker).is_ok());
    assert_eq!(
        verify(&server, &first, T0, &mut tracker),
        Err(DigestError::Replay)
    );
    let second = client.authorize(&alice(), &register(), &mut rng).unwrap();
    assert_eq!(second.nc.as_ref().map(|n| n.as_str()), Some("00000002"));
    assert!(verify(&server, &second, T0, &mut tracker).is_ok());
}

#[test]
fn requests_that_overtake_each_other_are_each_accepted_once() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut tracker = NonceTracker::new(16);
    let mut client =
        DigestClient::new(server.challenge(Algorithm::Md5, T0, false, &mut rng)).unwrap();
    let a: Vec<_> = (0..3)
        .map(|_| client.authorize(&alice(), &register(), &mut rng).unwrap())
        .collect();
    for i in [2, 0, 1] {
        assert!(verify(&server, &a[i], T0, &mut tracker).is_ok(), "nc {i}");
    }
    for i in [0, 1, 2] {
        assert_eq!(
            verify(&server, &a[i], T0, &mut tracker),
            Err(DigestError::Replay)
        );
    }
}

#[test]
fn a_nonce_the_full_tracker_forgot_is_answered_stale_never_accepted_again() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut tracker = NonceTracker::new(1);
    let mut old =
        DigestClient::new(server.challenge(Algorithm::Sha256, T0, false, &mut rng)).unwrap();
    let mut new = DigestClient::new(server.challenge(
        Algorithm::Sha256,
        T0 + Duration::from_secs(1),
        false,
        &mut rng,
    ))
    .unwrap();
    let now = T0 + Duration::from_secs(2);
    let old1 = old.authorize(&alice(), &register(), &mut rng).unwrap();
    assert!(verify(&server, &old1, now, &mut tracker).is_ok());
    let new1 = new.authorize(&alice(), &register(), &mut rng).unwrap();
    assert!(verify(&server, &new1, now, &mut tracker).is_ok());
    assert_eq!(tracker.len(), 1);
    // The old nonce's history is gone: replaying old1 must not be taken as a first use.
    assert_eq!(
        verify(&server, &old1, now, &mut tracker),
        Err(DigestError::StaleNonce)
    );
    // The remembered nonce still detects replays.
    assert_eq!(
        verify(&server, &new1, now, &mut tracker),
        Err(DigestError::Replay)
    );
}

#[test]
fn answering_a_sha256_nonce_with_md5_is_an_algorithm_mismatch() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let mut ch = server.challenge(Algorithm::Sha256, T0, false, &mut rng);
    ch.algorithm = Some(AlgorithmParam::Known(Algorithm::Md5));
    let auth = answer(&ch, &alice(), &mut rng);
    assert_eq!(
        verify(&server, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::AlgorithmMismatch {
            challenged: Algorithm::Sha256,
            used: Algorithm::Md5
        })
    );
}

#[test]
fn an_algorithm_the_server_does_not_offer_or_know_is_unsupported() {
    let sha_only = DigestServer::new(REALM, [7u8; 32], LIFETIME)
        .unwrap()
        .with_algorithms(&[Algorithm::Sha256])
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let mut ch = sha_only.challenge(Algorithm::Sha256, T0, false, &mut rng);
    ch.algorithm = None; // absent means MD5
    let auth = answer(&ch, &alice(), &mut rng);
    assert_eq!(
        verify(&sha_only, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::UnsupportedAlgorithm("MD5".into()))
    );
    let mut auth = auth;
    auth.algorithm = Some(AlgorithmParam::Unknown("SHA3-256".into()));
    let auth = parse_authorization(&auth.to_string()).unwrap();
    assert_eq!(
        verify(&sha_only, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::UnsupportedAlgorithm("SHA3-256".into()))
    );
}

#[test]
fn a_digest_uri_other_than_the_request_uri_is_refused() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let auth = answer(
        &server.challenge(Algorithm::Sha256, T0, false, &mut rng),
        &alice(),
        &mut rng,
    );
    let other = DigestRequest {
        uri: "sip:elsewhere.example",
        ..register()
    };
    assert_eq!(
        server.verify(
            &auth,
            &other,
            StoredSecret::Password("s3cret"),
            T0,
            &mut NonceTracker::new(4)
        ),
        Err(DigestError::UriMismatch)
    );
}

#[test]
fn a_response_for_another_realm_is_refused() {
    let server = server();
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut auth = answer(
        &server.challenge(Algorithm::Sha256, T0, false, &mut rng),
        &alice(),
        &mut rng,
    );
    auth.realm = "CONFER.example".into();
    assert_eq!(
        verify(&server, &auth, T0, &mut NonceTracker::new(4)),
        Err(DigestError::WrongRealm)
    );
}

#[test]
fn a_non_digest_authorization_is_an_unknown_scheme() {
    assert_eq!(
        parse_authorization("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        Err(DigestError::UnknownScheme("Basic".into()))
    );
}

// ----- client nonce counting ---------------------------------------------------------------

#[test]
fn the_nonce_count_increments_per_request_and_restarts_with_a_new_nonce() {
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let ch = digest(r#"Digest realm="r", nonce="n1", qop="auth""#);
    let mut client = DigestClient::new(ch.clone()).unwrap();
    let ncs: Vec<String> = (0..3)
        .map(|_| {
            let a = client.authorize(&alice(), &register(), &mut rng).unwrap();
            a.to_string()
        })
        .collect();
    assert!(ncs[0].ends_with("nc=00000001"));
    assert!(ncs[2].ends_with("nc=00000003"));
    // A repeated challenge with the same nonce (e.g. a 407 after a 401) continues the count.
    client.update(ch).unwrap();
    let a = client.authorize(&alice(), &register(), &mut rng).unwrap();
    assert_eq!(a.nc.unwrap().value(), 4);
    client
        .update(digest(
            r#"Digest realm="r", nonce="n2", qop="auth", stale=TRUE"#,
        ))
        .unwrap();
    let a = client.authorize(&alice(), &register(), &mut rng).unwrap();
    assert_eq!(a.nc.unwrap().value(), 1);
    assert_eq!(a.nonce, "n2");
}

#[test]
fn cnonces_come_from_the_injected_rng_and_differ_per_request() {
    let ch = digest(r#"Digest realm="r", nonce="n", qop="auth""#);
    let run = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut client = DigestClient::new(ch.clone()).unwrap();
        let a = client.authorize(&alice(), &register(), &mut rng).unwrap();
        let b = client.authorize(&alice(), &register(), &mut rng).unwrap();
        (a.cnonce.unwrap(), b.cnonce.unwrap())
    };
    let (a, b) = run(19);
    assert_ne!(a, b);
    assert_eq!(a.len(), 32);
    assert_eq!(run(19), (a, b));
}

#[test]
fn a_cnonce_with_a_line_break_is_refused_as_caller_misuse() {
    let mut client =
        DigestClient::new(digest(r#"Digest realm="r", nonce="n", qop="auth""#)).unwrap();
    assert_eq!(
        client.authorize_with_cnonce(&alice(), &register(), "a\r\nVia: x"),
        Err(DigestError::InvalidArgument("cnonce"))
    );
}

#[test]
fn credentials_debug_never_shows_the_password() {
    let text = format!("{:?}", alice());
    assert!(text.contains("alice"));
    assert!(!text.contains("s3cret"));
    let server_text = format!("{:?}", server());
    assert!(!server_text.contains("[7, 7"));
}

// ----- choosing among challenges ------------------------------------------------------------

#[test]
fn sha256_is_chosen_over_md5_whatever_the_order() {
    for order in [[RFC7616_MD5, RFC7616_SHA256], [RFC7616_SHA256, RFC7616_MD5]] {
        let offered: Vec<AuthChallenge> =
            order.iter().map(|v| parse_challenge(v).unwrap()).collect();
        assert_eq!(
            strongest(&offered).unwrap().algorithm(),
            Ok(Algorithm::Sha256)
        );
    }
}

#[test]
fn among_equally_strong_challenges_the_topmost_is_chosen() {
    let offered: Vec<AuthChallenge> = [
        r#"Digest realm="r", nonce="a", algorithm=SHA-512-256, qop="auth""#,
        r#"Digest realm="r", nonce="b", algorithm=SHA-256, qop="auth""#,
        r#"Digest realm="r", nonce="c", algorithm=MD5, qop="auth""#,
    ]
    .iter()
    .map(|v| parse_challenge(v).unwrap())
    .collect();
    assert_eq!(strongest(&offered).unwrap().nonce, "a");
    assert_eq!(strongest(&offered[1..]).unwrap().nonce, "b");
}

#[test]
fn unknown_schemes_algorithms_and_qops_are_skipped_when_choosing() {
    let offered: Vec<AuthChallenge> = [
        "NoOneKnowsThisScheme opaque-data=here",
        r#"Digest realm="r", nonce="a", algorithm=SHA3-512, qop="auth""#,
        r#"Digest realm="r", nonce="b", algorithm=SHA-256, qop="auth-conf""#,
        r#"Digest realm="r", nonce="s", algorithm=SHA-256-sess"#,
        r#"Digest realm="r", nonce="c""#,
    ]
    .iter()
    .map(|v| parse_challenge(v).unwrap())
    .collect();
    assert_eq!(strongest(&offered).unwrap().nonce, "c");
    assert_eq!(strongest(&offered[..4]), None);
}

#[test]
fn the_server_offers_one_challenge_per_algorithm_in_preference_order() {
    let server = DigestServer::new(REALM, [7u8; 32], LIFETIME).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let offered: Vec<AuthChallenge> = server
        .challenges(T0, false, &mut rng)
        .iter()
        .map(|c| parse_challenge(&c.to_string()).unwrap())
        .collect();
    let algs: Vec<_> = offered
        .iter()
        .map(|c| match c {
            AuthChallenge::Digest(c) => c.algorithm().unwrap(),
            AuthChallenge::Other { .. } => panic!("not digest"),
        })
        .collect();
    assert_eq!(algs, [Algorithm::Sha256, Algorithm::Md5]);
    let chosen = strongest(&offered).unwrap().clone();
    let mut tracker = NonceTracker::new(4);
    let auth = answer(&chosen, &alice(), &mut rng);
    assert_eq!(verify(&server, &auth, T0, &mut tracker), Ok("alice".into()));
}

// ----- challenges as deployed servers write them --------------------------------------------

#[test]
fn challenges_in_the_styles_of_asterisk_freeswitch_and_kamailio_parse() {
    let cases: &[(&str, &str, &str, Algorithm, &[Qop])] = &[
        // Asterisk PJSIP: two spaces after the scheme, no spaces after commas, lowercase md5.
        (
            r#"Digest  realm="asterisk",nonce="1700000000/8f7e6d5c4b3a29180f7e6d5c4b3a2918",opaque="2f4a6c8e0b1d3f5a",algorithm=md5,qop="auth""#,
            "asterisk",
            "1700000000/8f7e6d5c4b3a29180f7e6d5c4b3a2918",
            Algorithm::Md5,
            &[Qop::Auth],
        ),
        // Asterisk chan_sip: algorithm first, no qop.
        (
            r#"Digest algorithm=MD5, realm="asterisk", nonce="5c3a1e7f""#,
            "asterisk",
            "5c3a1e7f",
            Algorithm::Md5,
            &[],
        ),
        // FreeSWITCH: realm is the domain or IP, UUID nonce.
        (
            r#"Digest realm="192.0.2.10", nonce="d4f1b7e6-3c2a-4f8e-9b1d-7a6c5e4d3b2a", algorithm=MD5, qop="auth""#,
            "192.0.2.10",
            "d4f1b7e6-3c2a-4f8e-9b1d-7a6c5e4d3b2a",
            Algorithm::Md5,
            &[Qop::Auth],
        ),
        // Kamailio auth with RFC 8760 algorithm and both qops.
        (
            r#"Digest realm="example.org", nonce="ZWJhNzAxMmQ0ZjViYTc2NGE1YzNk", qop="auth,auth-int", algorithm=SHA-256"#,
            "example.org",
            "ZWJhNzAxMmQ0ZjViYTc2NGE1YzNk",
            Algorithm::Sha256,
            &[Qop::Auth, Qop::AuthInt],
        ),
        // Odd spacing, tabs, upper-case names, quoted algorithm, an empty list element.
        (
            "DIGEST\tREALM = \"sip.example.net\" ,, NONCE=\"x y\"\t,ALGORITHM = \"SHA-512-256\" , QOP = \" auth \" , STALE = FALSE ,",
            "sip.example.net",
            "x y",
            Algorithm::Sha512_256,
            &[Qop::Auth],
        ),
    ];
    for (value, realm, nonce, alg, qop) in cases {
        let ch = digest(value);
        assert_eq!(ch.realm, *realm, "{value}");
        assert_eq!(ch.nonce, *nonce, "{value}");
        assert_eq!(ch.algorithm(), Ok(*alg), "{value}");
        assert_eq!(ch.qop, *qop, "{value}");
        assert!(!ch.stale);
    }
}

#[test]
fn kamailio_style_stale_domain_and_unknown_params_are_kept() {
    let ch = digest(
        r#"Digest realm="example.org", domain="sip:example.org sip:ss1.example.org", nonce="n", opaque="", stale=true, charset=UTF-8, algorithm=MD5-sess, qop="auth""#,
    );
    assert!(ch.stale);
    assert_eq!(ch.domain, ["sip:example.org", "sip:ss1.example.org"]);
    assert_eq!(ch.opaque.as_deref(), Some(""));
    assert_eq!(ch.extra, [("charset".to_owned(), "UTF-8".to_owned())]);
    assert_eq!(ch.algorithm(), Ok(Algorithm::Md5Sess));
}

#[test]
fn an_unknown_scheme_is_kept_raw_for_the_caller_to_skip() {
    // RFC 4475 torture test regaut01.
    assert_eq!(
        parse_challenge("NoOneKnowsThisScheme opaque-data=here"),
        Ok(AuthChallenge::Other {
            scheme: "NoOneKnowsThisScheme".into(),
            params: "opaque-data=here".into()
        })
    );
}

#[test]
fn quoted_pairs_are_unescaped_on_parse_and_escaped_on_output() {
    let ch = digest(r#"Digest realm="a\"b\\c", nonce="\n""#);
    assert_eq!(ch.realm, r#"a"b\c"#);
    assert_eq!(ch.nonce, "n");
    assert!(ch.to_string().contains(r#"realm="a\"b\\c""#));
    let mut client = DigestClient::new(ch).unwrap();
    let auth = client
        .authorize_with_cnonce(&alice(), &register(), "c")
        .unwrap();
    assert_eq!(parse_authorization(&auth.to_string()).unwrap(), auth);
}

#[test]
fn malformed_challenges_are_typed_errors() {
    let cases: &[(&str, ParseError)] = &[
        ("", ParseError::Empty),
        ("   ", ParseError::Empty),
        (
            r#"Digest realm="a", Realm="b", nonce="n""#,
            ParseError::DuplicateParam("Realm".into()),
        ),
        (r#"Digest realm="a""#, ParseError::MissingParam("nonce")),
        (r#"Digest nonce="n""#, ParseError::MissingParam("realm")),
        (
            r#"Digest realm="a, nonce=n"#,
            ParseError::UnterminatedQuote { at: 13 },
        ),
        (
            "Digest realm=\"a\r\nVia: x\", nonce=\"n\"",
            ParseError::ControlCharacter { at: 15 },
        ),
        (
            r#"Digest realm="a" nonce="n""#,
            ParseError::Unexpected {
                expected: "',' between parameters",
                at: 17,
            },
        ),
        (
            r#"Digest realm"a", nonce="n""#,
            ParseError::Unexpected {
                expected: "'='",
                at: 12,
            },
        ),
        (
            r#"Digest realm="a", nonce="n", stale=maybe"#,
            ParseError::InvalidValue("stale"),
        ),
        (
            r#"Digest realm="a", nonce="n", qop="""#,
            ParseError::InvalidValue("qop"),
        ),
        (
            r#"Digest="a""#,
            ParseError::Unexpected {
                expected: "whitespace after auth scheme",
                at: 6,
            },
        ),
    ];
    for (value, err) in cases {
        assert_eq!(parse_challenge(value), Err(err.clone()), "{value:?}");
    }
    let many = format!(
        "Digest realm=\"r\", nonce=\"n\"{}",
        (0..40).map(|i| format!(", p{i}=v")).collect::<String>()
    );
    assert_eq!(parse_challenge(&many), Err(ParseError::TooManyParams));
}

#[test]
fn an_authorization_with_qop_but_no_nonce_count_is_malformed() {
    assert_eq!(
        parse_authorization(
            r#"Digest username="a", realm="r", nonce="n", uri="sip:x", response="00", qop=auth, cnonce="c""#
        ),
        Err(DigestError::Malformed(ParseError::MissingParam("nc")))
    );
    assert_eq!(
        parse_authorization(
            r#"Digest username="a", realm="r", nonce="n", uri="sip:x", response="00", qop=auth, cnonce="c", nc=xyz"#
        ),
        Err(DigestError::Malformed(ParseError::InvalidValue("nc")))
    );
}

// ----- hostile input ------------------------------------------------------------------------

const SEEDS: &[&str] = &[
    RFC7616_SHA256,
    r#"Digest  realm="asterisk",nonce="1700000000/8f7e6d5c",opaque="2f4a",algorithm=md5,qop="auth""#,
    r#"Digest realm="a\"b", domain="sip:a sip:b", nonce="n", stale=FALSE, userhash=true, x="y""#,
    r#"Digest username="alice", realm="confer.example", nonce="0102", uri="sip:confer.example", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", opaque="o", qop=auth, nc=00000001"#,
    "NoOneKnowsThisScheme opaque-data=here",
];

const ALPHABET: &[char] = &[
    '"', '\\', ',', '=', ' ', '\t', '\r', '\n', 'a', 'Z', '0', '-', ';', '%', 'é', '\u{0}',
    '\u{7f}', '\u{2028}',
];

fn mutate(seed: &str, rng: &mut ChaCha8Rng) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for _ in 0..rng.random_range(1..6) {
        let at = rng.random_range(0..=chars.len());
        match rng.random_range(0..5) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => chars.insert(at, ALPHABET[rng.random_range(0..ALPHABET.len())]),
            2 if at < chars.len() => chars[at] = ALPHABET[rng.random_range(0..ALPHABET.len())],
            3 => chars.truncate(at),
            _ => {
                let end = rng.random_range(at..=chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, copy);
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn seeded_random_mutations_never_panic_and_parsed_values_survive_reserialisation() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xD16E57);
    let server = server();
    let mut tracker = NonceTracker::new(8);
    // A genuine answer to our own challenge, so mutations reach the deeper checks of verify.
    let genuine = answer(
        &server.challenge(Algorithm::Sha256, T0, false, &mut rng),
        &alice(),
        &mut rng,
    )
    .to_string();
    let genuine_auth = parse_authorization(&genuine).unwrap();
    let mut seeds: Vec<&str> = SEEDS.to_vec();
    seeds.push(&genuine);
    let mut outcomes = std::collections::BTreeMap::new();
    let (mut parsed_challenges, mut parsed_auths) = (0, 0);
    for i in 0..20_000 {
        let input = mutate(seeds[i % seeds.len()], &mut rng);
        if let Ok(AuthChallenge::Digest(ch)) = parse_challenge(&input) {
            parsed_challenges += 1;
            assert_eq!(
                parse_challenge(&ch.to_string()),
                Ok(AuthChallenge::Digest(ch.clone())),
                "{input:?}"
            );
            if let Ok(mut client) = DigestClient::new(ch) {
                let _ = client.authorize(&alice(), &register(), &mut rng);
            }
        }
        if let Ok(auth) = parse_authorization(&input) {
            parsed_auths += 1;
            assert_eq!(
                parse_authorization(&auth.to_string()),
                Ok(auth.clone()),
                "{input:?}"
            );
            let outcome = verify(&server, &auth, T0, &mut tracker);
            let key = match outcome {
                Ok(_) => {
                    // Whatever the mutation did, it cannot have changed a signed field.
                    let signed = |a: &Authorization| {
                        (
                            a.username.clone(),
                            a.realm.clone(),
                            a.nonce.clone(),
                            a.uri.clone(),
                        )
                    };
                    assert_eq!(signed(&auth), signed(&genuine_auth), "{input:?}");
                    assert_eq!(
                        (&auth.cnonce, &auth.nc, &auth.qop),
                        (&genuine_auth.cnonce, &genuine_auth.nc, &genuine_auth.qop)
                    );
                    "ok".to_owned()
                }
                Err(e) => format!("{e:?}")
                    .split(['(', ' '])
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            };
            *outcomes.entry(key).or_insert(0u32) += 1;
        }
    }
    // The mutations must leave enough inputs parseable for the round-trip check to mean much.
    println!("parsed {parsed_challenges} challenges, {parsed_auths} authorizations: {outcomes:?}");
    assert!(parsed_challenges > 1_500, "{parsed_challenges}");
    assert!(parsed_auths > 500, "{parsed_auths}");
    assert!(outcomes.len() >= 6, "{outcomes:?}");
}

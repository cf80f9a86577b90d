//! Scoped bearer tokens: round trips, every way a token is refused, and 401 against 403.
//!
//! Deterministic: keys and token ids come from a seeded ChaCha RNG, time is a fixed unix
//! second. Forged tokens are built here with a known secret, so each test changes exactly
//! one thing about an otherwise valid token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use confer_signalling::token::{
    AuthError, IssueError, Key, KeyError, Keyring, MAX_TOKEN_LEN, Malformed, Requirement, Scope,
    Validation, bearer_token,
};
use hmac::{Hmac, Mac};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Sha256, Sha512};

const NOW: u64 = 1_700_000_000;
const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(5)
}

fn keyring() -> Keyring {
    Keyring::new(Key::new("k1", SECRET.to_vec()).unwrap())
}

fn client_scope(room: &str, user: &str) -> Scope {
    Scope::Client {
        room: room.into(),
        user: user.into(),
        device: "alice-browser".into(),
    }
}

fn im_server(escalate: bool, presence: bool) -> Scope {
    Scope::ImServer { escalate, presence }
}

fn issue(keyring: &Keyring, subject: &str, scope: Scope) -> String {
    keyring
        .issue(subject, scope, NOW, 600, &mut rng())
        .unwrap()
        .token
}

/// A token signed with HMAC-SHA256 over `SECRET`, from raw header and claims JSON.
fn forge(header: &str, claims: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#;

fn claims_json(iat: u64, nbf: u64, exp: u64) -> String {
    format!(
        r#"{{"sub":"im1","scope":{{"kind":"im_server","escalate":true,"presence":true}},"iat":{iat},"nbf":{nbf},"exp":{exp},"jti":"x"}}"#
    )
}

#[test]
fn an_issued_client_token_verifies_with_its_claims() {
    let keyring = keyring();
    let issued = keyring
        .issue(
            "alice",
            client_scope("room-1", "alice"),
            NOW,
            600,
            &mut rng(),
        )
        .unwrap();
    assert_eq!(issued.token.split('.').count(), 3);
    let principal = keyring.verify(&issued.token, NOW + 10).unwrap();
    assert_eq!(principal.subject(), "alice");
    assert_eq!(principal.scope(), &client_scope("room-1", "alice"));
    assert_eq!(principal.device(), Some("alice-browser"));
    assert_eq!(principal.key_id(), "k1");
    assert_eq!(principal.expires_at(), NOW + 600);
    assert_eq!(principal.claims(), &issued.claims);
    // 128 random bits, base64url without padding.
    assert_eq!(principal.token_id().len(), 22);
}

#[test]
fn the_header_is_hs256_jwt_with_the_key_id() {
    let token = issue(&keyring(), "admin", Scope::Admin);
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&header).unwrap(),
        r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#
    );
}

#[test]
fn token_ids_come_from_the_injected_rng_and_differ() {
    let keyring = keyring();
    let mut rng = rng();
    let a = keyring
        .issue("admin", Scope::Admin, NOW, 60, &mut rng)
        .unwrap();
    let b = keyring
        .issue("admin", Scope::Admin, NOW, 60, &mut rng)
        .unwrap();
    assert_ne!(a.claims.jti, b.claims.jti);
    let again = keyring
        .issue("admin", Scope::Admin, NOW, 60, &mut self::rng())
        .unwrap();
    assert_eq!(a, again, "same seed, same token");
}

#[test]
fn a_client_token_joins_only_its_room_as_its_user() {
    let keyring = keyring();
    let token = issue(&keyring, "alice", client_scope("room-1", "alice"));
    let join = |room, user| keyring.authorize(&token, &Requirement::JoinRoom { room, user }, NOW);

    assert!(join("room-1", "alice").is_ok());
    let other_room = join("room-2", "alice").unwrap_err();
    assert_eq!(other_room.status(), 403);
    assert!(
        other_room.to_string().contains("room-1, not room-2"),
        "{other_room}"
    );
    let other_user = join("room-1", "bob").unwrap_err();
    assert_eq!(other_user.status(), 403);
    assert!(
        other_user.to_string().contains("alice, not bob"),
        "{other_user}"
    );
    for route in [
        Requirement::Admin,
        Requirement::Escalate,
        Requirement::PresenceWrite,
    ] {
        let err = keyring.authorize(&token, &route, NOW).unwrap_err();
        assert_eq!(err.status(), 403, "{route}");
        assert_eq!(err.code(), "insufficient_scope");
    }
}

#[test]
fn an_im_server_token_calling_an_admin_route_is_forbidden_not_unauthenticated() {
    let keyring = keyring();
    let token = issue(&keyring, "im1", im_server(true, true));
    assert!(
        keyring
            .authorize(&token, &Requirement::Escalate, NOW)
            .is_ok()
    );
    assert!(
        keyring
            .authorize(&token, &Requirement::PresenceWrite, NOW)
            .is_ok()
    );
    let err = keyring
        .authorize(&token, &Requirement::Admin, NOW)
        .unwrap_err();
    assert_eq!(err.status(), 403);
    assert_eq!(err.oauth_error(), Some("insufficient_scope"));
    assert!(err.to_string().contains("im_server"), "{err}");
}

#[test]
fn an_im_server_token_grants_only_the_rights_it_names() {
    let keyring = keyring();
    let presence_only = issue(&keyring, "im1", im_server(false, true));
    let err = keyring
        .authorize(&presence_only, &Requirement::Escalate, NOW)
        .unwrap_err();
    assert_eq!(err.status(), 403);
    assert!(err.to_string().contains("does not grant escalate"), "{err}");

    let escalate_only = issue(&keyring, "im1", im_server(true, false));
    let err = keyring
        .authorize(&escalate_only, &Requirement::PresenceWrite, NOW)
        .unwrap_err();
    assert_eq!(err.status(), 403);
}

#[test]
fn an_admin_token_does_everything_but_join_a_room() {
    let keyring = keyring();
    let token = issue(&keyring, "root", Scope::Admin);
    for route in [
        Requirement::Admin,
        Requirement::Escalate,
        Requirement::PresenceWrite,
    ] {
        assert!(keyring.authorize(&token, &route, NOW).is_ok(), "{route}");
    }
    let join = Requirement::JoinRoom {
        room: "r",
        user: "root",
    };
    assert_eq!(
        keyring.authorize(&token, &join, NOW).unwrap_err().status(),
        403
    );
}

#[test]
fn an_invalid_token_is_401_even_when_its_scope_would_not_do() {
    let keyring = keyring();
    let token = issue(&keyring, "im1", im_server(true, true));
    let err = keyring
        .authorize(&token, &Requirement::Admin, NOW + 3600)
        .unwrap_err();
    assert!(matches!(err, AuthError::Expired { .. }), "{err:?}");
    assert_eq!(err.status(), 401);
}

#[test]
fn a_tampered_payload_is_refused() {
    let keyring = keyring();
    let token = issue(&keyring, "alice", client_scope("room-1", "alice"));
    let parts: Vec<&str> = token.split('.').collect();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let tampered = claims.replace("room-1", "room-2");
    assert_ne!(claims, tampered);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(tampered),
        parts[2]
    );
    let err = keyring.verify(&forged, NOW).unwrap_err();
    assert_eq!(err, AuthError::BadSignature);
    assert_eq!(err.status(), 401);
}

#[test]
fn a_tampered_signature_is_refused() {
    let keyring = keyring();
    let token = issue(&keyring, "alice", client_scope("room-1", "alice"));
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[7] ^= 0x01;
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(keyring.verify(&forged, NOW), Err(AuthError::BadSignature));

    let truncated = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig[..31]));
    assert_eq!(
        keyring.verify(&truncated, NOW),
        Err(AuthError::BadSignature)
    );
    let empty = format!("{signed}.");
    assert_eq!(keyring.verify(&empty, NOW), Err(AuthError::BadSignature));
}

#[test]
fn any_single_character_change_makes_a_token_invalid() {
    let keyring = keyring();
    let token = issue(&keyring, "alice", client_scope("room-1", "alice"));
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=";
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut bytes = token.clone().into_bytes();
    for _ in 0..5000 {
        let at = rng.random_range(0..bytes.len());
        let original = bytes[at];
        let replacement = alphabet[rng.random_range(0..alphabet.len())];
        if replacement == original {
            continue;
        }
        bytes[at] = replacement;
        let changed = std::str::from_utf8(&bytes).unwrap();
        let err = keyring.verify(changed, NOW).unwrap_err();
        assert_eq!(err.status(), 401, "{changed}: {err:?}");
        bytes[at] = original;
    }
}

#[test]
fn garbage_never_verifies_and_never_panics() {
    let keyring = keyring();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..5000 {
        let len = rng.random_range(0..300);
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                if rng.random_bool(0.1) {
                    b'.'
                } else {
                    rng.random()
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&garbage);
        assert!(keyring.verify(&text, NOW).is_err());
    }
    for text in ["..", ".", "a.b.c", "a.b.c.d", "e30.e30.", "e30.e30.e30"] {
        let err = keyring.verify(text, NOW).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{text}: {err:?}");
    }
}

#[test]
fn alg_none_is_refused() {
    let keyring = keyring();
    let claims = claims_json(NOW, NOW, NOW + 60);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    assert_eq!(
        keyring.verify(&unsigned, NOW),
        Err(AuthError::UnsupportedAlgorithm)
    );
    // Even correctly HMAC-signed, a header that is not exactly HS256 is refused.
    for alg in ["none", "hs256", "HS256 ", "RS256", "ES256", ""] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k1"}}"#);
        let err = keyring.verify(&forge(&header, &claims), NOW).unwrap_err();
        assert_eq!(err, AuthError::UnsupportedAlgorithm, "{alg:?}");
    }
}

#[test]
fn an_hs512_token_is_refused_even_with_a_valid_hs512_signature() {
    let keyring = keyring();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512","typ":"JWT","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(claims_json(NOW, NOW, NOW + 60))
    );
    let mut mac = Hmac::<Sha512>::new_from_slice(SECRET).unwrap();
    mac.update(signing_input.as_bytes());
    let token = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(
        keyring.verify(&token, NOW),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn a_forged_token_with_the_right_secret_verifies_so_the_forger_is_sound() {
    let token = forge(HEADER, &claims_json(NOW, NOW, NOW + 60));
    assert!(keyring().verify(&token, NOW).is_ok());
}

#[test]
fn an_expired_token_is_refused_after_the_leeway() {
    let keyring = keyring().with_validation(Validation {
        leeway_s: 30,
        max_lifetime_s: 86_400,
    });
    let token = issue(&keyring, "admin", Scope::Admin); // exp = NOW + 600
    assert!(keyring.verify(&token, NOW + 600 + 29).is_ok());
    let err = keyring.verify(&token, NOW + 600 + 30).unwrap_err();
    assert_eq!(
        err,
        AuthError::Expired {
            expired_at: NOW + 600
        }
    );
    assert_eq!(err.code(), "token_expired");
    assert_eq!(err.status(), 401);
}

#[test]
fn a_token_not_yet_valid_is_refused_beyond_the_leeway() {
    let keyring = keyring();
    let token = issue(&keyring, "admin", Scope::Admin); // nbf = NOW, leeway 30
    assert!(keyring.verify(&token, NOW - 30).is_ok());
    assert_eq!(
        keyring.verify(&token, NOW - 31),
        Err(AuthError::NotYetValid { not_before: NOW })
    );

    let later_nbf = forge(HEADER, &claims_json(NOW, NOW + 100, NOW + 200));
    assert_eq!(
        keyring.verify(&later_nbf, NOW),
        Err(AuthError::NotYetValid {
            not_before: NOW + 100
        })
    );
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let token = forge(HEADER, &claims_json(NOW + 100, NOW - 10, NOW + 200));
    assert_eq!(
        keyring().verify(&token, NOW),
        Err(AuthError::IssuedInFuture {
            issued_at: NOW + 100
        })
    );
}

#[test]
fn a_signed_token_living_longer_than_the_maximum_is_refused() {
    let keyring = keyring();
    let long = forge(HEADER, &claims_json(NOW, NOW, NOW + 86_401));
    assert!(matches!(
        keyring.verify(&long, NOW),
        Err(AuthError::BadLifetime { .. })
    ));
    let backwards = forge(HEADER, &claims_json(NOW, NOW, NOW));
    assert!(keyring.verify(&backwards, NOW).is_err());
}

#[test]
fn an_unknown_key_id_is_refused() {
    let token = issue(&keyring(), "admin", Scope::Admin);
    let other = Keyring::new(Key::generate("k2", &mut rng()).unwrap());
    let err = other.verify(&token, NOW).unwrap_err();
    assert_eq!(err, AuthError::UnknownKey);
    assert_eq!(err.status(), 401);
}

#[test]
fn a_token_signed_by_another_key_under_the_same_id_is_refused() {
    let token = issue(&keyring(), "admin", Scope::Admin);
    let impostor = Keyring::new(Key::generate("k1", &mut rng()).unwrap());
    assert_eq!(impostor.verify(&token, NOW), Err(AuthError::BadSignature));
}

#[test]
fn after_rotation_old_tokens_verify_until_the_old_key_is_retired() {
    let mut keyring = keyring();
    let old = issue(&keyring, "admin", Scope::Admin);
    keyring
        .rotate(Key::generate("k2", &mut rng()).unwrap())
        .unwrap();
    assert_eq!(keyring.signing_key_id(), "k2");
    let new = issue(&keyring, "admin", Scope::Admin);

    assert_eq!(keyring.verify(&old, NOW).unwrap().key_id(), "k1");
    assert_eq!(keyring.verify(&new, NOW).unwrap().key_id(), "k2");

    assert!(keyring.retire("k1"));
    assert_eq!(keyring.verify(&old, NOW), Err(AuthError::UnknownKey));
    assert!(keyring.verify(&new, NOW).is_ok());
    assert!(!keyring.retire("k2"), "the signing key cannot be retired");
}

#[test]
fn a_verification_key_verifies_without_signing() {
    let other = Keyring::new(Key::generate("peer", &mut rng()).unwrap());
    let token = issue(&other, "admin", Scope::Admin);
    let mut keyring = keyring();
    assert_eq!(keyring.verify(&token, NOW), Err(AuthError::UnknownKey));
    keyring
        .add_verification_key(Key::generate("peer", &mut rng()).unwrap())
        .unwrap();
    assert!(keyring.verify(&token, NOW).is_ok());
    assert_eq!(keyring.signing_key_id(), "k1");
    assert_eq!(
        keyring.add_verification_key(Key::new("k1", SECRET.to_vec()).unwrap()),
        Err(KeyError::DuplicateKeyId("k1".into()))
    );
}

#[test]
fn header_oddities_are_refused() {
    let keyring = keyring();
    let claims = claims_json(NOW, NOW, NOW + 60);
    let cases = [
        (r#"{"alg":"HS256","typ":"JWT"}"#, Malformed::MissingKeyId),
        (
            r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#,
            Malformed::CriticalHeader,
        ),
        (
            r#"{"alg":"HS256","typ":"JWE","kid":"k1"}"#,
            Malformed::NotJwt,
        ),
        (
            r#"{"alg":"none","alg":"HS256","kid":"k1"}"#,
            Malformed::HeaderJson,
        ),
        (r#"{"kid":"k1"}"#, Malformed::HeaderJson),
        ("not json", Malformed::HeaderJson),
    ];
    for (header, expected) in cases {
        assert_eq!(
            keyring.verify(&forge(header, &claims), NOW),
            Err(AuthError::Malformed(expected)),
            "{header}"
        );
    }
    // No typ at all is fine (it is optional in RFC 7519).
    let token = forge(r#"{"alg":"HS256","kid":"k1"}"#, &claims);
    assert!(keyring.verify(&token, NOW).is_ok());
}

#[test]
fn signed_claims_of_the_wrong_shape_are_malformed() {
    let keyring = keyring();
    for claims in [
        r#"{"sub":"x"}"#,
        r#"{"sub":"x","scope":{"kind":"root"},"iat":1,"nbf":1,"exp":2,"jti":"j"}"#,
        r#"{"sub":"x","scope":{"kind":"admin"},"iat":-1,"nbf":1,"exp":2,"jti":"j"}"#,
        r#"{"sub":"x","scope":{"kind":"admin"},"iat":1.5,"nbf":1,"exp":2,"jti":"j"}"#,
    ] {
        assert_eq!(
            keyring.verify(&forge(HEADER, claims), NOW),
            Err(AuthError::Malformed(Malformed::ClaimsJson)),
            "{claims}"
        );
    }
}

#[test]
fn an_oversized_token_is_refused_before_decoding() {
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(
        keyring().verify(&huge, NOW),
        Err(AuthError::Malformed(Malformed::TooLong))
    );
}

#[test]
fn the_bearer_header_is_parsed_strictly() {
    assert_eq!(bearer_token(Some("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
    assert_eq!(bearer_token(Some("bearer   abc")), Ok("abc"));
    assert_eq!(bearer_token(None), Err(AuthError::Missing));
    assert_eq!(bearer_token(Some("  ")), Err(AuthError::Missing));
    assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::Missing));
    assert_eq!(
        bearer_token(Some("Basic dXNlcjpwYXNz")),
        Err(AuthError::Malformed(Malformed::NotBearer))
    );
    assert_eq!(
        bearer_token(Some("abc.def.ghi")),
        Err(AuthError::Malformed(Malformed::NotBearer))
    );
    let missing = keyring().verify("", NOW).unwrap_err();
    assert_eq!((missing.status(), missing.oauth_error()), (401, None));
}

#[test]
fn issuing_checks_ids_lifetimes_and_client_subjects() {
    let keyring = keyring();
    let mut rng = rng();
    assert_eq!(
        keyring.issue("admin", Scope::Admin, NOW, 0, &mut rng),
        Err(IssueError::BadLifetime {
            ttl_s: 0,
            max_s: 86_400
        })
    );
    assert!(matches!(
        keyring.issue("admin", Scope::Admin, NOW, 86_401, &mut rng),
        Err(IssueError::BadLifetime { .. })
    ));
    assert_eq!(
        keyring.issue("bob", client_scope("r", "alice"), NOW, 60, &mut rng),
        Err(IssueError::SubjectIsNotUser)
    );
    assert_eq!(
        keyring.issue("alice", client_scope("", "alice"), NOW, 60, &mut rng),
        Err(IssueError::BadId("room"))
    );
    assert_eq!(
        keyring.issue("a b", Scope::Admin, NOW, 60, &mut rng),
        Err(IssueError::BadId("subject"))
    );
    // Issuing near the end of time saturates instead of overflowing.
    assert!(
        keyring
            .issue("admin", Scope::Admin, u64::MAX - 1, 600, &mut rng)
            .is_ok()
    );
}

#[test]
fn keys_must_be_long_enough_and_never_print_their_secret() {
    assert_eq!(
        Key::new("k", vec![7u8; 31]).unwrap_err(),
        KeyError::TooShort { len: 31, min: 32 }
    );
    assert_eq!(
        Key::new("", SECRET.to_vec()).unwrap_err(),
        KeyError::BadKeyId
    );
    let key = Key::new("k1", SECRET.to_vec()).unwrap();
    let shown = format!("{key:?}");
    assert!(
        shown.contains("k1") && shown.contains("redacted"),
        "{shown}"
    );
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
}

#[test]
fn error_reasons_never_echo_the_token() {
    let keyring = keyring();
    let token = issue(&keyring, "im1", im_server(true, true));
    let sig = token.rsplit('.').next().unwrap();
    for err in [
        keyring.verify(&token, NOW + 10_000).unwrap_err(),
        keyring
            .authorize(&token, &Requirement::Admin, NOW)
            .unwrap_err(),
    ] {
        assert!(!err.to_string().contains(sig), "{err}");
    }
}

#[test]
fn a_device_token_opens_its_session_and_nothing_else() {
    let keys = keyring();
    let device = Scope::Device {
        user: "alice".into(),
        device: "alice-mobile".into(),
    };
    let token = issue(&keys, "alice", device);
    let who = keys.authorize(&token, &Requirement::Session, NOW).unwrap();
    assert_eq!(who.device(), Some("alice-mobile"));
    for other in [
        Requirement::Admin,
        Requirement::Escalate,
        Requirement::JoinRoom {
            room: "1",
            user: "alice",
        },
    ] {
        assert_eq!(
            keys.authorize(&token, &other, NOW).unwrap_err().status(),
            403,
            "{other}"
        );
    }
    // Another kind of token cannot open a session.
    let client = issue(&keys, "alice", client_scope("1", "alice"));
    assert_eq!(
        keys.authorize(&client, &Requirement::Session, NOW)
            .unwrap_err()
            .status(),
        403
    );
    // A device token is the subject's own.
    let mut rng = rng();
    let other_user = keys.issue(
        "mallory",
        Scope::Device {
            user: "alice".into(),
            device: "d".into(),
        },
        NOW,
        60,
        &mut rng,
    );
    assert!(matches!(other_user, Err(IssueError::SubjectIsNotUser)));
}

//! Admin policy: escalation per group, client rules by user agent and version, blocked
//! activities and dial prefixes, rate limits, and validation of the policy itself.
//!
//! Deterministic: rate-limit time is one base `Instant` plus fixed offsets (only
//! differences matter), random inputs come from a seeded ChaCha RNG.

use std::time::{Duration, Instant};

use confer_signalling::policy::{
    Activity, ClientAction, ClientRuleConfig, GroupConfig, Modality, Policy, PolicyConfig,
    PolicyError, RateLimit, RateLimiter, RateLimitsConfig, RefusalCode, Version, parse_user_agent,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The base of virtual time. Only offsets from it are used, so tests stay deterministic.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn rule(
    product: &str,
    min: Option<&str>,
    below: Option<&str>,
    action: ClientAction,
) -> ClientRuleConfig {
    ClientRuleConfig {
        product: product.into(),
        min_version: min.map(Into::into),
        below_version: below.map(Into::into),
        action,
        message: None,
    }
}

fn errors_of(config: PolicyConfig) -> Vec<PolicyError> {
    Policy::new(config).unwrap_err().errors
}

/// staff: everything; contractors: voice only, no files, no recording, no screen share,
/// dial-out to the UK and France but not UK premium rate; interns: no dial-out at all.
fn company() -> Policy {
    let config: PolicyConfig = toml::from_str(
        r#"
        default_group = "staff"

        [groups.staff]

        [groups.contractors]
        escalate = ["voice"]
        blocked = ["file_transfer", "recording", "screen_share"]
        dial_out = { only_prefixes = ["+44", "+33"], blocked_prefixes = ["+449"] }

        [groups.interns]
        escalate = ["voice", "dial_in"]
        blocked = ["video", "dial_out"]

        [members]
        carol = "contractors"
        ian = "interns"

        [clients]
        default = "block"
        default_message = "unknown client"

        [[clients.rules]]
        product = "ConferDesktop"
        below_version = "1.9"
        action = "block"
        message = "ConferDesktop before 1.9 has a known security issue; please upgrade"

        [[clients.rules]]
        product = "ConferDesktop"
        below_version = "1.12"
        action = "upgrade_notice"

        [[clients.rules]]
        product = "Confer"
        action = "allow"

        [[clients.rules]]
        product = "Edg"
        action = "block"

        [[clients.rules]]
        product = "Chrome"
        min_version = "110"
        action = "allow"

        [[clients.rules]]
        product = "baresip"
        min_version = "3.0"
        action = "allow"
        "#,
    )
    .unwrap();
    Policy::new(config).unwrap()
}

// --- versions ---------------------------------------------------------------------------

#[test]
fn versions_compare_numerically_component_by_component() {
    assert!(v("1.10") > v("1.9"));
    assert!(v("1.12.3") > v("1.9"));
    assert!(v("2") > v("1.99.99"));
    assert!(v("1.9.1") > v("1.9"));
    assert!(v("0.9") < v("1"));
    assert_eq!(v("1.9"), v("1.9.0"));
    assert_eq!(v("1.9.0.0").to_string(), "1.9");
    assert_eq!(v("0").to_string(), "0");
}

#[test]
fn bad_version_strings_are_rejected() {
    for bad in [
        "",
        "1..2",
        ".1",
        "1.",
        "1.x",
        "v1.2",
        "1.2-beta",
        " 1.2",
        "1.2.3.4.5.6.7.8.9",
        "4294967296",
        "-1",
    ] {
        assert!(Version::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(v("4294967295.1").to_string(), "4294967295.1");
}

#[test]
fn client_versions_are_read_leniently() {
    assert_eq!(Version::parse_lenient("1.12.3-beta.1"), Some(v("1.12.3")));
    assert_eq!(Version::parse_lenient("v3.10.0"), Some(v("3.10")));
    assert_eq!(Version::parse_lenient("5.0."), Some(v("5")));
    assert_eq!(Version::parse_lenient("beta"), None);
    assert_eq!(Version::parse_lenient(""), None);
}

#[test]
fn user_agents_are_read_as_product_tokens_skipping_comments() {
    let products =
        parse_user_agent("ConferDesktop/1.12.3 (Windows NT 10.0; Win64; x64) Electron/28.1.0");
    let names: Vec<_> = products
        .iter()
        .map(|p| (p.name, p.version.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("ConferDesktop", Some(v("1.12.3"))),
            ("Electron", Some(v("28.1")))
        ]
    );
    let baresip = parse_user_agent("baresip v3.10.0 (x86_64/linux)");
    assert_eq!(baresip.len(), 1);
    assert_eq!(
        (baresip[0].name, baresip[0].version.clone()),
        ("baresip", Some(v("3.10")))
    );
    let nested = parse_user_agent("A/1 (x (y) z) B/2 (unclosed C/3");
    let names: Vec<_> = nested.iter().map(|p| p.name).collect();
    assert_eq!(names, vec!["A", "B"]);
}

#[test]
fn hostile_user_agents_never_panic_and_stay_bounded() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let policy = company();
    for _ in 0..3000 {
        let len = rng.random_range(0..2000);
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.random_range(0..6) {
                0 => b'/',
                1 => b' ',
                2 => b'(',
                3 => b')',
                _ => rng.random(),
            })
            .collect();
        let ua = String::from_utf8_lossy(&bytes);
        let products = parse_user_agent(&ua);
        assert!(products.len() <= 32);
        let _ = policy.check_client(&ua);
    }
    // Multi-byte characters straddling the read limit.
    let ua = "é".repeat(2000);
    assert!(parse_user_agent(&ua).len() <= 1);
    let many = "X/1 ".repeat(500);
    assert_eq!(parse_user_agent(&many).len(), 32);
}

// --- clients ----------------------------------------------------------------------------

#[test]
fn the_first_matching_client_rule_wins() {
    let policy = company();
    let old = policy
        .check_client("ConferDesktop/1.8.9 (Windows)")
        .unwrap_err();
    assert_eq!(old.code, RefusalCode::ClientBlocked);
    assert_eq!(old.rule, "clients.rules[0]");
    assert!(old.reason.contains("security issue"), "{}", old.reason);

    // 1.10 > 1.9 (numeric, not string, comparison): past the block, into the notice.
    let notice = policy.check_client("ConferDesktop/1.10.0").unwrap();
    assert_eq!(notice.rule, "clients.rules[1]");
    assert_eq!(
        notice.upgrade_notice.as_deref(),
        Some("ConferDesktop 1.10 is out of date, please upgrade")
    );

    let current = policy.check_client("ConferDesktop/1.12.0").unwrap();
    assert_eq!(current.rule, "clients.rules[2]", "the broader Confer rule");
    assert_eq!(current.upgrade_notice, None);
}

#[test]
fn product_names_match_by_case_insensitive_prefix() {
    let policy = company();
    assert_eq!(
        policy.check_client("conferdesktop/1.8").unwrap_err().rule,
        "clients.rules[0]"
    );
    assert_eq!(
        policy
            .check_client("ConferDesktopBeta/1.8")
            .unwrap_err()
            .rule,
        "clients.rules[0]"
    );
    assert_eq!(
        policy.check_client("ConferMobile/0.1").unwrap().rule,
        "clients.rules[2]"
    );
}

#[test]
fn a_browser_is_matched_on_any_of_its_product_tokens_in_rule_order() {
    let policy = company();
    let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.71 Safari/537.36";
    assert_eq!(
        policy.check_client(chrome).unwrap().rule,
        "clients.rules[4]"
    );
    let edge = format!("{chrome} Edg/120.0.2210.61");
    assert_eq!(
        policy.check_client(&edge).unwrap_err().rule,
        "clients.rules[3]"
    );
    let old_chrome = chrome.replace("Chrome/120", "Chrome/99");
    let refused = policy.check_client(&old_chrome).unwrap_err();
    assert_eq!(refused.rule, "clients.default");
    assert_eq!(refused.reason, "unknown client");
}

#[test]
fn a_sip_phone_version_after_its_name_is_understood() {
    let policy = company();
    assert!(
        policy
            .check_client("baresip v3.10.0 (x86_64/linux)")
            .is_ok()
    );
    assert_eq!(
        policy
            .check_client("baresip v2.9.0 (x86_64/linux)")
            .unwrap_err()
            .rule,
        "clients.default"
    );
}

#[test]
fn a_version_bounded_rule_does_not_match_a_client_without_a_version() {
    let policy = company();
    // Not rule 0 or 1 (bounded): rule 2, unbounded, matches by name alone.
    assert_eq!(
        policy.check_client("ConferDesktop").unwrap().rule,
        "clients.rules[2]"
    );
    assert_eq!(policy.check_client("").unwrap_err().rule, "clients.default");
}

#[test]
fn an_upgrade_notice_carries_the_configured_message() {
    let mut config = PolicyConfig::default();
    config.clients.rules.push(ClientRuleConfig {
        message: Some("Please install 2.0 by March".into()),
        ..rule("Linphone", None, Some("5.0"), ClientAction::UpgradeNotice)
    });
    let policy = Policy::new(config).unwrap();
    let admitted = policy
        .check_client("Linphone/4.5.1 (belle-sip/4.5)")
        .unwrap();
    assert_eq!(
        admitted.upgrade_notice.as_deref(),
        Some("Please install 2.0 by March")
    );
    assert_eq!(
        policy
            .check_client("Linphone/5.2.0")
            .unwrap()
            .upgrade_notice,
        None
    );
}

// --- groups: escalation, activities, dial-out ---------------------------------------------

#[test]
fn escalation_modalities_follow_the_users_group() {
    let policy = company();
    assert_eq!(policy.group_of("carol"), "contractors");
    assert_eq!(policy.group_of("somebody"), "staff");
    for modality in Modality::ALL {
        assert!(policy.check_escalation("alice", modality).is_ok());
    }
    assert!(policy.check_escalation("carol", Modality::Voice).is_ok());
    let refused = policy
        .check_escalation("carol", Modality::Video)
        .unwrap_err();
    assert_eq!(refused.code, RefusalCode::ModalityNotAllowed);
    assert_eq!(refused.rule, "groups.contractors.escalate");
    assert_eq!(
        refused.reason,
        "group contractors may not escalate to video"
    );
    assert!(policy.check_escalation("carol", Modality::DialIn).is_err());
    assert!(policy.check_escalation("ian", Modality::DialIn).is_ok());
}

#[test]
fn blocked_activities_are_refused_per_group() {
    let policy = company();
    for activity in [
        Activity::FileTransfer,
        Activity::Recording,
        Activity::ScreenShare,
    ] {
        let refused = policy.check_activity("carol", activity).unwrap_err();
        assert_eq!(refused.code, RefusalCode::ActivityBlocked);
        assert_eq!(refused.rule, "groups.contractors.blocked");
        assert!(policy.check_activity("alice", activity).is_ok());
    }
    assert!(policy.check_activity("carol", Activity::Video).is_ok());
    assert!(policy.check_activity("ian", Activity::Video).is_err());
}

#[test]
fn dial_out_follows_allowed_and_blocked_prefixes() {
    let policy = company();
    let permit = policy
        .check_dial_out("carol", "+44 (20) 7946-0000")
        .unwrap();
    assert_eq!(permit.number(), "+442079460000");
    assert!(policy.check_dial_out("carol", "+33 1 23 45 67 89").is_ok());

    let premium = policy
        .check_dial_out("carol", "+44 909 879 0000")
        .unwrap_err();
    assert_eq!(premium.code, RefusalCode::DialOutPrefixBlocked);
    assert_eq!(
        premium.rule,
        "groups.contractors.dial_out.blocked_prefixes[0]"
    );

    let germany = policy.check_dial_out("carol", "+49 30 123456").unwrap_err();
    assert_eq!(germany.code, RefusalCode::DialOutPrefixNotAllowed);
    // Another form of a UK number is outside the allow-list, so it is refused too.
    assert_eq!(
        policy
            .check_dial_out("carol", "0044 20 7946 0000")
            .unwrap_err()
            .code,
        RefusalCode::DialOutPrefixNotAllowed
    );

    assert!(policy.check_dial_out("alice", "+49 30 123456").is_ok());
    let intern = policy
        .check_dial_out("ian", "+44 20 7946 0000")
        .unwrap_err();
    assert_eq!(intern.code, RefusalCode::ActivityBlocked);
}

#[test]
fn a_number_that_is_not_a_phone_number_is_refused() {
    let policy = company();
    for bad in [
        "",
        "+",
        "12ab",
        "1+2",
        "sip:alice@example.com",
        "++44",
        &"9".repeat(33),
    ] {
        let refused = policy.check_dial_out("alice", bad).unwrap_err();
        assert_eq!(refused.code, RefusalCode::InvalidNumber, "{bad:?}");
    }
}

#[test]
fn a_refusal_serializes_with_its_code_reason_and_rule() {
    let refused = company()
        .check_escalation("carol", Modality::Video)
        .unwrap_err();
    let json = serde_json::to_value(&refused).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "code": "modality_not_allowed",
            "reason": "group contractors may not escalate to video",
            "rule": "groups.contractors.escalate",
        })
    );
    assert_eq!(
        refused.to_string(),
        "modality_not_allowed: group contractors may not escalate to video"
    );
}

// --- defaults and config ----------------------------------------------------------------

#[test]
fn the_default_policy_allows_everything() {
    let policy = Policy::default();
    for modality in Modality::ALL {
        assert!(policy.check_escalation("anyone", modality).is_ok());
    }
    for activity in [
        Activity::FileTransfer,
        Activity::Video,
        Activity::ScreenShare,
        Activity::Recording,
        Activity::DialOut,
    ] {
        assert!(policy.check_activity("anyone", activity).is_ok());
    }
    assert!(policy.check_dial_out("anyone", "+1 900 555 0100").is_ok());
    assert_eq!(
        policy.check_client("AnyClient/0.0.1").unwrap().rule,
        "clients.default"
    );
    let limits = &policy.config().rate_limits;
    assert_eq!(
        limits.per_user,
        Some(RateLimit {
            burst: 10,
            per_minute: 30
        })
    );
    assert_eq!(
        limits.per_im_server,
        Some(RateLimit {
            burst: 100,
            per_minute: 1200
        })
    );
}

#[test]
fn a_policy_round_trips_through_json_and_an_empty_toml_is_the_default() {
    let policy = company();
    let json = serde_json::to_string(policy.config()).unwrap();
    let back: PolicyConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, policy.config());
    let empty: PolicyConfig = toml::from_str("").unwrap();
    assert_eq!(empty, PolicyConfig::default());
}

#[test]
fn a_misspelt_policy_field_is_an_error_not_a_silent_default() {
    let typo = toml::from_str::<PolicyConfig>("[groups.default]\nbloked = [\"video\"]\n");
    assert!(typo.is_err());
    let unknown_activity =
        toml::from_str::<PolicyConfig>("[groups.default]\nblocked = [\"fax\"]\n");
    assert!(unknown_activity.is_err());
}

// --- validation -------------------------------------------------------------------------

#[test]
fn bad_client_rules_are_reported_with_their_path() {
    let mut config = PolicyConfig::default();
    config.clients.rules = vec![
        rule("", None, None, ClientAction::Allow),
        rule("A", Some("1.x"), None, ClientAction::Block),
        rule("B", Some("2.0"), Some("1.9"), ClientAction::Block),
        rule("C D", None, None, ClientAction::Block),
        ClientRuleConfig {
            message: Some(String::new()),
            ..rule("E", None, None, ClientAction::Block)
        },
    ];
    let errors = errors_of(config);
    assert_eq!(
        errors,
        vec![
            PolicyError::Empty {
                at: "clients.rules[0].product".into()
            },
            PolicyError::BadVersion {
                at: "clients.rules[1].min_version".into(),
                value: "1.x".into()
            },
            PolicyError::EmptyVersionRange {
                at: "clients.rules[2]".into(),
                min: "2".into(),
                below: "1.9".into()
            },
            PolicyError::BadName {
                at: "clients.rules[3].product".into(),
                value: "C D".into(),
                max: 64
            },
            PolicyError::Empty {
                at: "clients.rules[4].message".into()
            },
        ]
    );
    assert!(
        errors[1]
            .to_string()
            .contains("\"1.x\" is not a dotted version"),
        "{}",
        errors[1]
    );
}

#[test]
fn a_client_rule_that_can_never_match_is_a_conflict() {
    let mut config = PolicyConfig::default();
    config.clients.rules = vec![
        rule("Confer", None, Some("2.0"), ClientAction::Block),
        rule(
            "ConferDesktop",
            Some("1.0"),
            Some("1.5"),
            ClientAction::Allow,
        ),
        rule(
            "ConferDesktop",
            Some("1.0"),
            Some("3.0"),
            ClientAction::Allow,
        ),
        rule("ConferDesktop", None, None, ClientAction::Allow),
        rule("ConferDesktop", Some("1.2"), None, ClientAction::Block),
    ];
    let errors = errors_of(config);
    assert_eq!(
        errors,
        vec![
            PolicyError::ShadowedRule {
                at: "clients.rules[1]".into(),
                by: "clients.rules[0]".into()
            },
            PolicyError::ShadowedRule {
                at: "clients.rules[4]".into(),
                by: "clients.rules[3]".into()
            },
        ]
    );
}

#[test]
fn group_membership_must_name_existing_groups() {
    let mut config = PolicyConfig {
        default_group: "everyone".into(),
        ..PolicyConfig::default()
    };
    config.members.insert("dave".into(), "ghosts".into());
    let errors = errors_of(config);
    assert_eq!(
        errors,
        vec![
            PolicyError::UnknownGroup {
                at: "default_group".into(),
                group: "everyone".into()
            },
            PolicyError::UnknownGroup {
                at: "members.dave".into(),
                group: "ghosts".into()
            },
        ]
    );
    let none: PolicyConfig = toml::from_str("groups = {}").unwrap();
    assert!(errors_of(none).contains(&PolicyError::Empty {
        at: "groups".into()
    }));
}

#[test]
fn conflicting_group_entries_are_rejected() {
    let mut group = GroupConfig::default();
    group.blocked.insert(Activity::Video);
    group.dial_out.only_prefixes = vec![
        "+44".into(),
        "+4420".into(),
        "+33".into(),
        "+33".into(),
        "44x".into(),
        "".into(),
    ];
    group.dial_out.blocked_prefixes = vec!["+44".into()];
    let mut config = PolicyConfig::default();
    config.groups.insert("g".into(), group);
    let errors = errors_of(config);
    let at: Vec<&str> = errors
        .iter()
        .map(|e| match e {
            PolicyError::Conflict { at, .. }
            | PolicyError::Duplicate { at, .. }
            | PolicyError::BadPrefix { at, .. }
            | PolicyError::Empty { at } => at.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        at,
        vec![
            "groups.g", // video escalation allowed but video blocked
            "groups.g.dial_out.only_prefixes[3]",
            "groups.g.dial_out.only_prefixes[4]",
            "groups.g.dial_out.only_prefixes[5]",
            "groups.g.dial_out.only_prefixes[0]", // +44 blocked by +44
            "groups.g.dial_out.only_prefixes[1]", // +4420 blocked by +44
        ]
    );
    assert!(matches!(errors[1], PolicyError::Duplicate { .. }));

    let mut group = GroupConfig::default();
    group.blocked.insert(Activity::DialOut);
    group.dial_out.blocked_prefixes = vec!["+1900".into()];
    let mut config = PolicyConfig::default();
    config.groups.insert("h".into(), group);
    assert!(
        matches!(&errors_of(config)[..], [PolicyError::Conflict { at, .. }] if at == "groups.h.dial_out")
    );
}

#[test]
fn rate_limits_out_of_range_are_rejected() {
    let config = PolicyConfig {
        rate_limits: RateLimitsConfig {
            per_user: Some(RateLimit {
                burst: 0,
                per_minute: 10,
            }),
            per_im_server: Some(RateLimit {
                burst: 5,
                per_minute: 0,
            }),
            max_tracked: 0,
        },
        ..PolicyConfig::default()
    };
    let at: Vec<String> = errors_of(config)
        .into_iter()
        .map(|e| match e {
            PolicyError::OutOfRange { at, .. } => at,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        at,
        [
            "rate_limits.per_user.burst",
            "rate_limits.per_im_server.per_minute",
            "rate_limits.max_tracked"
        ]
    );
}

// --- rate limits ------------------------------------------------------------------------

#[test]
fn a_burst_is_allowed_then_refused_then_refilled_over_time() {
    let t0 = t0();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // 60 a minute: one token a second; bursts of 3.
    let mut limiter = RateLimiter::new(
        RateLimit {
            burst: 3,
            per_minute: 60,
        },
        100,
    );
    for _ in 0..3 {
        assert!(limiter.check("alice", t0).is_ok());
    }
    assert_eq!(
        limiter.check("alice", t0).unwrap_err().retry_after,
        Duration::from_secs(1)
    );
    assert_eq!(
        limiter.check("alice", ms(400)).unwrap_err().retry_after,
        Duration::from_millis(600)
    );
    assert!(limiter.check("alice", ms(999)).is_err());
    assert!(
        limiter.check("alice", ms(1000)).is_ok(),
        "one token refilled"
    );
    assert!(limiter.check("alice", ms(1000)).is_err());
    // Another user has their own bucket.
    assert!(limiter.check("bob", ms(1000)).is_ok());
    // Idle long enough to refill fully: a whole burst again, and no more.
    for _ in 0..3 {
        assert!(limiter.check("alice", ms(4000)).is_ok());
    }
    assert!(limiter.check("alice", ms(4000)).is_err());
}

#[test]
fn a_sustained_caller_gets_exactly_the_configured_rate() {
    let t0 = t0();
    let mut limiter = RateLimiter::new(
        RateLimit {
            burst: 5,
            per_minute: 30,
        },
        10,
    );
    // One attempt every 100 ms for 10 minutes.
    let allowed = (0..6000)
        .filter(|i| {
            limiter
                .check("mallory", t0 + Duration::from_millis(i * 100))
                .is_ok()
        })
        .count();
    // The burst, then one every 2 s over the 599.9 s after the first request.
    assert_eq!(allowed, 5 + 299);
}

#[test]
fn a_rate_limited_user_gets_a_refusal_with_retry_after() {
    let t0 = t0();
    let mut limiters = company().rate_limiters(); // per user: bursts of 10, 30 a minute
    for _ in 0..10 {
        assert!(limiters.check_user("carol", t0).is_ok());
    }
    let refused = limiters.check_user("carol", t0).unwrap_err();
    assert_eq!(refused.code, RefusalCode::RateLimited);
    assert_eq!(refused.rule, "rate_limits.per_user");
    assert_eq!(refused.retry_after_ms, Some(2000));
    assert_eq!(
        refused.reason,
        "user carol exceeded 30 requests a minute (bursts of 10)"
    );
    // IM servers are counted separately.
    assert!(limiters.check_im_server("carol", t0).is_ok());
}

#[test]
fn a_switched_off_limit_allows_everything_and_reconfiguring_keeps_state() {
    let t0 = t0();
    let mut config = RateLimitsConfig {
        per_user: None,
        ..RateLimitsConfig::default()
    };
    let mut limiters = confer_signalling::policy::RateLimiters::new(&config);
    for _ in 0..1000 {
        assert!(limiters.check_user("u", t0).is_ok());
    }
    for _ in 0..100 {
        assert!(limiters.check_im_server("im", t0).is_ok());
    }
    assert!(limiters.check_im_server("im", t0).is_err());
    // A higher burst applies to the state already there.
    config.per_im_server = Some(RateLimit {
        burst: 101,
        per_minute: 1200,
    });
    limiters.reconfigure(&config);
    assert!(limiters.check_im_server("im", t0).is_ok());
    assert!(limiters.check_im_server("im", t0).is_err());
}

#[test]
fn memory_stays_bounded_under_many_users_and_busy_buckets_survive() {
    let t0 = t0();
    let mut limiter = RateLimiter::new(
        RateLimit {
            burst: 3,
            per_minute: 6,
        },
        1000,
    );
    for _ in 0..3 {
        assert!(limiter.check("mallory", t0).is_ok());
    }
    assert!(limiter.check("mallory", t0).is_err());
    for i in 0..100_000u32 {
        let now = t0 + Duration::from_micros(u64::from(i));
        assert!(limiter.check(&format!("user{i}"), now).is_ok());
        assert!(limiter.len() <= 1000);
    }
    // Nothing refilled during the run, so every key that went was evicted, nearest to
    // full first, an eighth of the table at a time.
    assert_eq!(limiter.evicted(), 100_001 - limiter.len() as u64);
    assert!(limiter.len() > 1000 - 1000 / 8);
    // Mallory's empty bucket is the furthest from full, so it was never forgotten.
    assert!(
        limiter
            .check("mallory", t0 + Duration::from_millis(200))
            .is_err()
    );
}

#[test]
fn refilled_buckets_are_forgotten_first_without_losing_anything() {
    let t0 = t0();
    let mut limiter = RateLimiter::new(
        RateLimit {
            burst: 2,
            per_minute: 60,
        },
        10,
    );
    for i in 0..10 {
        assert!(limiter.check(&format!("early{i}"), t0).is_ok());
    }
    let later = t0 + Duration::from_secs(5);
    for i in 0..10 {
        assert!(limiter.check(&format!("late{i}"), later).is_ok());
    }
    assert_eq!(limiter.len(), 10);
    assert_eq!(limiter.evicted(), 0, "only refilled buckets were dropped");
}

#[test]
fn eviction_counts_only_buckets_forgotten_before_they_refilled() {
    let t0 = t0();
    let later = t0 + Duration::from_secs(5);
    let mut limiter = RateLimiter::new(
        RateLimit {
            burst: 2,
            per_minute: 60,
        },
        16,
    );
    // 8 keys that will have refilled by `later`, 8 that are busy then.
    for i in 0..8 {
        assert!(limiter.check(&format!("early{i}"), t0).is_ok());
    }
    for i in 0..8 {
        assert!(limiter.check(&format!("busy{i}"), later).is_ok());
    }
    // 9 new keys at `later`: the 8 refilled keys make room for free; when the table is
    // full again, 2 (16 / 8) of the busy ones are evicted.
    for i in 0..9 {
        assert!(limiter.check(&format!("new{i}"), later).is_ok());
    }
    assert_eq!(limiter.evicted(), 2);
    assert_eq!(limiter.len(), 15);
}

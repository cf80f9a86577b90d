//! Phone numbers: normalisation from what users, PBXs and trunks send, trunk rewrite rules,
//! and the dial-out policy's decisions with the rule that made them.

use confer_pstn_bridge::numbers::{
    DEFAULT_PREMIUM_PREFIXES, DialOutConfig, DialOutPolicy, E164, NationalContext, Number,
    NumberError, RefusalReason, RewriteRule, Rewriter, RuleError, RuleOrigin, TrunkNumbering,
    TrunkRewriter, normalize,
};

fn de() -> NationalContext {
    NationalContext::with_trunk_prefix_0("49")
}

fn e164(s: &str) -> Number {
    Number::E164(E164::parse(s).unwrap())
}

fn ext(input: &str, ctx: &NationalContext) -> String {
    match normalize(input, ctx) {
        Ok(Number::Extension(x)) => x.as_str().to_owned(),
        other => panic!("{input:?} gave {other:?}"),
    }
}

fn rule(pattern: &str, strip: usize, prepend: &str) -> RewriteRule {
    RewriteRule {
        pattern: pattern.into(),
        strip,
        prepend: prepend.into(),
    }
}

// ----- normalisation ------------------------------------------------------------------------

#[test]
fn a_global_number_with_visual_separators_becomes_e164() {
    for input in [
        "+1 (415) 555-0100",
        "+1.415.555.0100",
        "  +1-415-555-0100 ",
        "+1\t415/555 0100",
    ] {
        assert_eq!(normalize(input, &de()), Ok(e164("+14155550100")), "{input}");
    }
}

#[test]
fn the_international_prefix_of_the_context_makes_a_number_global() {
    assert_eq!(normalize("004930123456", &de()), Ok(e164("+4930123456")));
    assert_eq!(
        normalize("011 44 20 7946 0958", &NationalContext::nanp()),
        Ok(e164("+442079460958"))
    );
}

#[test]
fn the_national_prefix_of_the_context_is_replaced_by_the_country_code() {
    assert_eq!(normalize("0301234567", &de()), Ok(e164("+49301234567")));
    assert_eq!(normalize("030/1234567", &de()), Ok(e164("+49301234567")));
    assert_eq!(
        normalize("1-415-555-0100", &NationalContext::nanp()),
        Ok(e164("+14155550100"))
    );
}

#[test]
fn a_nanp_ten_digit_number_needs_no_prefix() {
    assert_eq!(
        normalize("(415) 555-0100", &NationalContext::nanp()),
        Ok(e164("+14155550100"))
    );
    // The same length in a plan without unprefixed national numbers is not guessed.
    assert_eq!(
        normalize("4155550100", &de()),
        Err(NumberError::Unrecognised)
    );
}

#[test]
fn a_plan_without_a_trunk_prefix_keeps_the_leading_zero() {
    let it = NationalContext {
        national_prefix: String::new(),
        unprefixed_national_lengths: vec![9, 10],
        ..NationalContext::with_trunk_prefix_0("39")
    };
    assert_eq!(normalize("06 1234 5678", &it), Ok(e164("+390612345678")));
}

#[test]
fn tel_uris_with_phone_context_follow_rfc3966() {
    assert_eq!(
        normalize("tel:+1-415-555-0100", &de()),
        Ok(e164("+14155550100"))
    );
    // RFC 3966 §5.1.5 example: a local number with a global context.
    assert_eq!(
        normalize("tel:863-1234;phone-context=+1-914-555", &de()),
        Ok(e164("+19145558631234"))
    );
    // A domain context is a private plan: the configured context applies.
    assert_eq!(ext("tel:7042;phone-context=example.com", &de()), "7042");
    assert_eq!(
        normalize("TEL:0301234567;phone-context=pbx.example", &de()),
        Ok(e164("+49301234567"))
    );
}

#[test]
fn a_sip_uri_user_part_is_normalised() {
    assert_eq!(
        normalize("sip:+14155550100@gw.example.com;user=phone", &de()),
        Ok(e164("+14155550100"))
    );
    assert_eq!(
        normalize("sips:004930123456@pbx.example", &de()),
        Ok(e164("+4930123456"))
    );
    assert_eq!(
        normalize("sip:%2B4930123456@pbx.example", &de()),
        Ok(e164("+4930123456"))
    );
    // RFC 3261 §19.1.1: a password after ':' is not part of the number.
    assert_eq!(
        normalize("sip:+1-212-555-1212:1234@gateway.com;user=phone", &de()),
        Ok(e164("+12125551212"))
    );
    assert_eq!(ext("sip:1001@pbx.example", &de()), "1001");
    // A bare user part, as the SIP layer hands it over.
    assert_eq!(normalize("+4930123456", &de()), Ok(e164("+4930123456")));
}

#[test]
fn short_internal_numbers_stay_extensions() {
    assert_eq!(ext("1001", &de()), "1001");
    assert_eq!(ext("1001", &NationalContext::nanp()), "1001");
    assert_eq!(ext("*97", &de()), "*97");
    assert_eq!(ext("112", &de()), "112");
    let wide = NationalContext {
        max_extension_len: 3,
        ..de()
    };
    assert_eq!(normalize("1001", &wide), Err(NumberError::Unrecognised));
}

#[test]
fn malformed_numbers_are_typed_errors() {
    let cases: &[(&str, NumberError)] = &[
        ("", NumberError::Empty),
        (" - ( ) ", NumberError::Empty),
        ("tel:", NumberError::Empty),
        ("+1234567890123456", NumberError::TooLong { digits: 16 }),
        (
            "00 1234 5678 9012 3456",
            NumberError::TooLong { digits: 16 },
        ),
        ("+1 800 FLOWERS", NumberError::Letter('F')),
        ("+49 30 12345x67", NumberError::Letter('x')),
        ("+49+30123456", NumberError::InvalidCharacter('+')),
        ("+0441234567", NumberError::InvalidCountryCode),
        ("+4930*123456", NumberError::InvalidCharacter('*')),
        ("0301234*567", NumberError::InvalidCharacter('*')),
        ("sip:%2G@x", NumberError::InvalidCharacter('%')),
        ("1234567", NumberError::Unrecognised),
        ("+1 555", NumberError::TooShort { digits: 4 }),
    ];
    for (input, err) in cases {
        assert_eq!(normalize(input, &de()), Err(err.clone()), "{input:?}");
    }
    assert!(matches!(
        normalize(&"1".repeat(300), &de()),
        Err(NumberError::TooLong { .. })
    ));
}

#[test]
fn an_invalid_national_context_is_refused() {
    let bad = NationalContext {
        country_code: "049".into(),
        ..de()
    };
    assert_eq!(
        normalize("0301234567", &bad),
        Err(NumberError::InvalidContext("country_code"))
    );
}

#[test]
fn strict_e164_parsing_requires_the_plus_and_nothing_else() {
    assert_eq!(E164::parse("+4930123456").unwrap().digits(), "4930123456");
    assert_eq!(E164::parse("4930123456"), Err(NumberError::NotGlobal));
    assert_eq!(
        E164::parse("+49 30 123456"),
        Err(NumberError::InvalidCharacter(' '))
    );
    assert_eq!(E164::parse(""), Err(NumberError::Empty));
}

#[test]
fn a_redacted_number_hides_its_middle_digits() {
    let n = E164::parse("+4930123456").unwrap();
    assert_eq!(n.redacted().to_string(), "+493*****56");
}

// ----- rewrite rules ------------------------------------------------------------------------

#[test]
fn rewrite_rules_apply_first_match_wins() {
    let rw = Rewriter::new(&[
        rule("+1415", 1, ""),
        rule("+49", 1, "00"),
        rule("+1", 1, "011"),
    ])
    .unwrap();
    let r = rw.rewrite("+14155550100");
    assert_eq!((r.number.as_str(), r.rule), ("14155550100", Some(0)));
    let r = rw.rewrite("+4930123456");
    assert_eq!((r.number.as_str(), r.rule), ("004930123456", Some(1)));
    let r = rw.rewrite("+12125551212");
    assert_eq!((r.number.as_str(), r.rule), ("01112125551212", Some(2)));
}

#[test]
fn an_unmatched_number_passes_unchanged_with_no_rule() {
    let rw = Rewriter::new(&[rule("+49", 1, "00")]).unwrap();
    let r = rw.rewrite("+33123456789");
    assert_eq!((r.number.as_str(), r.rule), ("+33123456789", None));
}

#[test]
fn pattern_letters_match_digit_classes_and_dollar_anchors_the_length() {
    let rw = Rewriter::new(&[rule("0NXX$", 0, "+4930"), rule("0ZX", 1, "+49")]).unwrap();
    assert_eq!(rw.rewrite("0234").rule, Some(0));
    assert_eq!(rw.rewrite("0134").rule, Some(1)); // N is 2-9
    assert_eq!(rw.rewrite("02345").number, "+492345"); // too long for the anchor
    assert_eq!(rw.rewrite("0034").rule, None); // Z is 1-9
    assert_eq!(rw.rewrite("0a4").rule, None);
}

#[test]
fn a_rule_that_would_strip_more_than_the_number_does_not_match() {
    let rw = Rewriter::new(&[rule("", 5, "x"), rule("", 0, "9")]).unwrap_err();
    assert_eq!(rw, RuleError::InvalidPrepend { index: 0 });
    let rw = Rewriter::new(&[rule("", 5, "0"), rule("", 0, "9")]).unwrap();
    assert_eq!(rw.rewrite("123").number, "9123");
    assert_eq!(rw.rewrite("12345").number, "0");
}

#[test]
fn invalid_patterns_are_refused_with_their_index() {
    assert_eq!(
        Rewriter::new(&[rule("+49", 1, "00"), rule("+4[9]", 0, "")]).unwrap_err(),
        RuleError::InvalidPattern { index: 1, ch: '[' }
    );
}

#[test]
fn numbers_to_a_trunk_are_rewritten_and_numbers_from_it_become_e164() {
    let cfg = TrunkNumbering {
        to_trunk: vec![rule("+49", 1, "00")],
        // This trunk sends international numbers without any prefix: "4930123456".
        from_trunk: vec![rule("49ZX", 0, "+")],
        context: None,
    };
    let trunk = TrunkRewriter::new(&cfg, &de()).unwrap();
    let out = trunk
        .to_trunk(&E164::parse("+4930123456").unwrap())
        .unwrap();
    assert_eq!(out.number, "004930123456");

    let got = trunk.from_trunk("4930123456").unwrap();
    assert_eq!((got.number, got.rule), (e164("+4930123456"), Some(0)));
    // National numbers fall through to the trunk's plan.
    let got = trunk.from_trunk("sip:030-1234567@trunk.example").unwrap();
    assert_eq!((got.number, got.rule), (e164("+49301234567"), None));
}

#[test]
fn a_nanp_trunk_gets_ten_digit_numbers_from_its_own_plan() {
    let cfg = TrunkNumbering {
        to_trunk: vec![rule("+1", 2, ""), rule("+", 1, "011")],
        from_trunk: vec![],
        context: Some(NationalContext::nanp()),
    };
    let trunk = TrunkRewriter::new(&cfg, &de()).unwrap();
    let to = |n| trunk.to_trunk(&E164::parse(n).unwrap()).unwrap().number;
    assert_eq!(to("+14155550100"), "4155550100");
    assert_eq!(to("+4930123456"), "0114930123456");
    assert_eq!(
        trunk.from_trunk("4155550100").unwrap().number,
        e164("+14155550100")
    );
}

#[test]
fn a_rule_that_empties_the_dial_string_is_an_error_not_an_empty_invite() {
    let cfg = TrunkNumbering {
        to_trunk: vec![rule("+", 20, "")],
        ..TrunkNumbering::default()
    };
    let trunk = TrunkRewriter::new(&cfg, &de()).unwrap();
    // strip 20 > length: no match, unchanged.
    assert_eq!(
        trunk
            .to_trunk(&E164::parse("+4930123456").unwrap())
            .unwrap()
            .number,
        "+4930123456"
    );
    let cfg = TrunkNumbering {
        to_trunk: vec![rule("+XXXXXXXXXX$", 11, "")],
        ..TrunkNumbering::default()
    };
    let trunk = TrunkRewriter::new(&cfg, &de()).unwrap();
    assert_eq!(
        trunk.to_trunk(&E164::parse("+4930123456").unwrap()),
        Err(NumberError::Empty)
    );
}

// ----- dial-out policy ----------------------------------------------------------------------

fn policy(cfg: DialOutConfig) -> DialOutPolicy {
    DialOutPolicy::new(&cfg).unwrap()
}

#[test]
fn home_country_numbers_are_allowed_by_default() {
    let p = policy(DialOutConfig::new("49"));
    let ok = p.decide(&e164("+49301234567")).unwrap();
    assert_eq!(ok.number().as_str(), "+49301234567");
    assert_eq!(ok.rule().origin, RuleOrigin::HomeCountry);
    assert_eq!(ok.rule().prefix, "+49");
}

#[test]
fn international_numbers_are_refused_by_default() {
    let p = policy(DialOutConfig::new("49"));
    let no = p.decide(&e164("+442079460958")).unwrap_err();
    assert_eq!(no.reason, RefusalReason::International);
    assert_eq!(no.rule.origin, RuleOrigin::International);
    assert_eq!(no.number, "+442079460958");
}

#[test]
fn an_explicitly_allowed_country_is_allowed() {
    let p = policy(DialOutConfig {
        allow: vec!["+44".into(), "+33".into()],
        ..DialOutConfig::new("49")
    });
    let ok = p.decide(&e164("+442079460958")).unwrap();
    assert_eq!(ok.rule().origin, RuleOrigin::Allow(0));
}

#[test]
fn premium_rate_numbers_are_refused_at_home_and_in_allowed_countries() {
    let p = policy(DialOutConfig {
        allow: vec!["+44".into(), "+1".into(), "+33".into()],
        ..DialOutConfig::new("49")
    });
    for n in [
        "+499001234567",
        "+491371234567",
        "+19005550100",
        "+19765550100",
        "+449012345678",
        "+448712345678",
        "+447012345678",
        "+33899123456",
    ] {
        let no = p.decide(&e164(n)).unwrap_err();
        assert_eq!(no.reason, RefusalReason::PremiumRate, "{n}");
        assert!(matches!(no.rule.origin, RuleOrigin::Premium(_)), "{n}");
        assert!(DEFAULT_PREMIUM_PREFIXES.contains(&no.rule.prefix.as_str()));
    }
    // Ordinary numbers in those countries are fine.
    assert!(p.decide(&e164("+447911123456")).is_ok());
}

#[test]
fn an_explicit_allow_of_a_premium_prefix_unblocks_it() {
    let p = policy(DialOutConfig {
        allow: vec!["+49900".into()],
        ..DialOutConfig::new("49")
    });
    assert_eq!(
        p.decide(&e164("+499001234567")).unwrap().rule().origin,
        RuleOrigin::Allow(0)
    );
}

#[test]
fn the_longest_matching_prefix_decides() {
    let p = policy(DialOutConfig {
        allow: vec!["+4420".into()],
        deny: vec!["+44".into(), "+4930".into()],
        ..DialOutConfig::new("49")
    });
    let ok = p.decide(&e164("+442079460958")).unwrap();
    assert_eq!(ok.rule().prefix, "+4420");
    let no = p.decide(&e164("+441612345678")).unwrap_err();
    assert_eq!(
        (no.reason, no.rule.origin),
        (RefusalReason::Denied, RuleOrigin::Deny(0))
    );
    let no = p.decide(&e164("+49301234567")).unwrap_err();
    assert_eq!(no.rule.origin, RuleOrigin::Deny(1));
    assert!(p.decide(&e164("+49891234567")).is_ok());
}

#[test]
fn deny_beats_allow_for_the_same_prefix() {
    let p = policy(DialOutConfig {
        allow: vec!["+44".into()],
        deny: vec!["+44".into()],
        ..DialOutConfig::new("49")
    });
    assert_eq!(
        p.decide(&e164("+442079460958")).unwrap_err().reason,
        RefusalReason::Denied
    );
}

#[test]
fn emergency_numbers_are_refused_with_a_reason_that_says_so() {
    let p = policy(DialOutConfig {
        allow: vec!["+".into()],
        ..DialOutConfig::new("49")
    });
    for input in [
        "112",
        "110",
        "911",
        "+49112",
        "+49 110",
        "0049 112",
        "tel:112;phone-context=+49",
        "sip:112@pbx.example",
    ] {
        let no = p.decide_input(input, &de()).unwrap_err();
        assert_eq!(no.reason, RefusalReason::Emergency, "{input}");
        assert!(
            matches!(no.rule.origin, RuleOrigin::Emergency(_)),
            "{input}"
        );
        assert_eq!(no.number, input);
        assert!(
            no.to_string()
                .contains("emergency numbers are not routed by confer")
        );
    }
    let us = policy(DialOutConfig::new("1"));
    let no = us
        .decide(&normalize("911", &NationalContext::nanp()).unwrap())
        .unwrap_err();
    assert_eq!(
        (no.reason, no.rule.prefix.as_str()),
        (RefusalReason::Emergency, "911")
    );
}

#[test]
fn another_countrys_emergency_code_with_its_country_code_is_just_an_invalid_number() {
    let p = policy(DialOutConfig::new("49"));
    let no = p.decide_input("+44 999", &de()).unwrap_err();
    assert_eq!(
        no.reason,
        RefusalReason::InvalidNumber(NumberError::TooShort { digits: 5 })
    );
    assert_eq!(no.rule.origin, RuleOrigin::InvalidNumber);
}

#[test]
fn decide_input_normalises_then_applies_the_prefix_rules() {
    let p = policy(DialOutConfig::new("49"));
    let ok = p.decide_input("030 1234567", &de()).unwrap();
    assert_eq!(ok.number().as_str(), "+49301234567");
    let no = p.decide_input("0900 1234567", &de()).unwrap_err();
    assert_eq!(no.reason, RefusalReason::PremiumRate);
    let no = p.decide_input("+1 800 FLOWERS", &de()).unwrap_err();
    assert_eq!(
        no.reason,
        RefusalReason::InvalidNumber(NumberError::Letter('F'))
    );
}

#[test]
fn extensions_are_not_dialled_out() {
    let p = policy(DialOutConfig::new("49"));
    let no = p.decide(&normalize("1001", &de()).unwrap()).unwrap_err();
    assert_eq!(
        (no.reason, no.rule.origin),
        (RefusalReason::NotE164, RuleOrigin::NotE164)
    );
    assert_eq!(no.number, "1001");
}

#[test]
fn a_refusal_displays_without_the_number() {
    let p = policy(DialOutConfig::new("49"));
    let no = p.decide(&e164("+442079460958")).unwrap_err();
    let text = no.to_string();
    assert!(text.contains("international"));
    assert!(!text.contains("2079460958"));
}

#[test]
fn invalid_policy_configuration_is_refused() {
    let bad = |cfg: DialOutConfig| DialOutPolicy::new(&cfg).unwrap_err();
    assert_eq!(
        bad(DialOutConfig {
            allow: vec!["44".into()],
            ..DialOutConfig::new("49")
        }),
        RuleError::InvalidPrefix {
            list: "allow",
            index: 0,
            value: "44".into()
        }
    );
    assert!(matches!(
        bad(DialOutConfig {
            deny: vec!["+49".into(), "+4 9".into()],
            ..DialOutConfig::new("49")
        }),
        RuleError::InvalidPrefix {
            list: "deny",
            index: 1,
            ..
        }
    ));
    assert_eq!(
        bad(DialOutConfig::new("+49")),
        RuleError::InvalidCountryCode
    );
    assert!(matches!(
        bad(DialOutConfig {
            emergency_numbers: vec!["11 2".into()],
            ..DialOutConfig::new("49")
        }),
        RuleError::InvalidEmergencyNumber { index: 0, .. }
    ));
}

// ----- hostile input ------------------------------------------------------------------------

#[test]
fn seeded_random_inputs_never_panic_and_every_e164_result_is_well_formed() {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const PIECES: &[&str] = &[
        "+",
        "0",
        "00",
        "011",
        "1",
        "49",
        "9",
        "112",
        "-",
        " ",
        "(",
        ")",
        ".",
        "/",
        ";",
        "=",
        "phone-context",
        "+1-914",
        "tel:",
        "sip:",
        "@",
        ":",
        "%2B",
        "%",
        "*",
        "#",
        "x",
        "é",
        "\u{0}",
        "55501",
    ];
    const DIGITS: &[&str] = &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "49", "00"];
    let mut rng = ChaCha8Rng::seed_from_u64(0xE164);
    let policy = DialOutPolicy::new(&DialOutConfig {
        allow: vec!["+".into()],
        ..DialOutConfig::new("49")
    })
    .unwrap();
    let trunk = TrunkRewriter::new(
        &TrunkNumbering {
            to_trunk: vec![rule("+49", 1, "00")],
            from_trunk: vec![rule("49ZX", 0, "+"), rule("", 40, "0")],
            context: None,
        },
        &de(),
    )
    .unwrap();
    let contexts = [de(), NationalContext::nanp()];
    let mut globals = 0;
    for _ in 0..20_000 {
        // Mostly digits, so that a fair share of inputs are numbers at all.
        let input: String = (0..rng.random_range(0..12))
            .map(|_| {
                if rng.random_bool(0.75) {
                    DIGITS[rng.random_range(0..DIGITS.len())]
                } else {
                    PIECES[rng.random_range(0..PIECES.len())]
                }
            })
            .collect();
        for ctx in &contexts {
            if let Ok(Number::E164(e)) = normalize(&input, ctx) {
                globals += 1;
                let d = e.digits();
                assert!(e.as_str().starts_with('+'), "{input:?}");
                assert!((7..=15).contains(&d.len()), "{input:?}");
                assert!(d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'));
                assert_eq!(E164::parse(e.as_str()).as_ref(), Ok(&e));
                let _ = trunk.to_trunk(&e);
            }
            let _ = policy.decide_input(&input, ctx);
        }
        let _ = trunk.from_trunk(&input);
    }
    println!("{globals} inputs normalised to E.164");
    assert!(globals > 1_000, "{globals}");
}

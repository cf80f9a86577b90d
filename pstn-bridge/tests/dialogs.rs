//! The dialog layer (RFC 3261 §12) and session timers (RFC 4028): dialog creation on both
//! sides, route sets with and without `lr`, CSeq rules, target refresh, the 481/500
//! decisions, session-timer negotiation including 422, the refresh and expiry
//! deadlines, and a whole call between two transaction layers on virtual time.
//!
//! Deterministic: one real `Instant` plus virtual offsets, seeded RNGs for tags,
//! branches and Call-IDs; messages built with the message layer's API.

use std::time::{Duration, Instant};

use confer_pstn_bridge::sip::dialog::{
    Dialog, DialogError, DialogId, DialogMatch, DialogSet, DialogState, DialogTimer,
    InDialogReject, Negotiation, Refresher, Role, SessionEvent, SessionExpires, SessionTimer,
    SessionTimerConfig, SessionTimerError, ack_for_2xx, negotiate, unknown_dialog_response,
};
use confer_pstn_bridge::sip::transaction::{
    Event, Output, Peer, SentBy, TransactionId, TransactionLayer, new_call_id, new_tag,
};
use confer_pstn_bridge::sip::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[allow(clippy::disallowed_methods)] // the one real Instant; all later times are offsets
fn epoch() -> Instant {
    Instant::now()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(3261)
}

fn sent_by(host: &str) -> SentBy {
    SentBy {
        transport: Transport::Udp,
        host: Host::parse(host).unwrap(),
        port: Some(5060),
    }
}

fn na(uri: &str, tag: Option<&str>) -> String {
    let mut a = NameAddr::new(Uri::parse(uri).unwrap());
    if let Some(t) = tag {
        a.set_tag(t).unwrap();
    }
    a.to_string()
}

/// Alice's INVITE to Bob, CSeq `seq`, with the given Record-Route values.
fn invite_with(seq: u32, record_route: &[&str]) -> Request {
    let mut r = Request::new(Method::Invite, Uri::parse("sip:bob@example.com").unwrap());
    let h = &mut r.headers;
    h.push(
        HeaderName::Via,
        &sent_by("192.0.2.1").via(&mut rng()).to_string(),
    )
    .unwrap();
    h.push(HeaderName::MaxForwards, "70").unwrap();
    for rr in record_route {
        h.push(HeaderName::RecordRoute, rr).unwrap();
    }
    h.push(HeaderName::From, &na("sip:alice@example.com", Some("a1")))
        .unwrap();
    h.push(HeaderName::To, &na("sip:bob@example.com", None))
        .unwrap();
    h.push(HeaderName::CallId, "dlg-1").unwrap();
    h.push(
        HeaderName::CSeq,
        &CSeq {
            seq,
            method: Method::Invite,
        }
        .to_string(),
    )
    .unwrap();
    h.push(HeaderName::Contact, &na("sip:alice@192.0.2.1:5060", None))
        .unwrap();
    r
}

fn answer(req: &Request, code: u16, tag: &str, contact: Option<&str>) -> Response {
    let s = StatusCode::new(code).unwrap();
    let mut r = build_response(
        &ResponseBasis::from_request(req),
        s,
        s.canonical_reason(),
        Some(tag),
    );
    if let Some(c) = contact {
        r.headers.push(HeaderName::Contact, &na(c, None)).unwrap();
    }
    r
}

fn with_record_route(mut r: Response, rr: &[&str]) -> Response {
    r.headers.remove(HeaderName::RecordRoute);
    for v in rr {
        r.headers.push(HeaderName::RecordRoute, v).unwrap();
    }
    r
}

const P1: &str = "<sip:p1.example.com;lr>";
const P2: &str = "<sip:p2.example.com;lr>";

fn route_uris(r: &Request) -> Vec<String> {
    r.headers
        .routes()
        .unwrap()
        .into_iter()
        .map(|a| a.uri.to_string())
        .collect()
}

// ---- creation ----

#[test]
fn a_uas_dialog_keeps_record_route_in_order_and_targets_the_contact() {
    // p1 is nearest the UAC, so the request arrives with p2 on top.
    let inv = invite_with(10, &[P2, P1]);
    let ok = answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"));
    let d = Dialog::uas(&inv, &ok).unwrap();
    assert_eq!(
        d.id(),
        &DialogId {
            call_id: "dlg-1".into(),
            local_tag: "b1".into(),
            remote_tag: "a1".into()
        }
    );
    assert_eq!(d.role(), Role::Uas);
    assert_eq!(d.state(), DialogState::Confirmed);
    let rs: Vec<String> = d.route_set().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(rs, ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]);
    assert_eq!(d.remote_target().to_string(), "sip:alice@192.0.2.1:5060");
    assert_eq!(d.remote_seq(), Some(10));
    assert_eq!(d.local_seq(), None);
    assert_eq!(d.local_uri().uri.to_string(), "sip:bob@example.com");
    assert_eq!(d.remote_uri().uri.to_string(), "sip:alice@example.com");
    assert!(!d.is_secure());
}

#[test]
fn a_uac_dialog_reverses_record_route() {
    let inv = invite_with(1, &[]);
    let ok = with_record_route(
        answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2")),
        &[P2, P1],
    );
    let d = Dialog::uac(&inv, &ok).unwrap();
    assert_eq!(d.role(), Role::Uac);
    assert_eq!(d.id().local_tag, "a1");
    assert_eq!(d.id().remote_tag, "b1");
    let rs: Vec<String> = d.route_set().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(rs, ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]);
    assert_eq!(d.remote_target().to_string(), "sip:bob@192.0.2.2");
    assert_eq!(d.local_seq(), Some(1));
    assert_eq!(d.remote_seq(), None);
}

#[test]
fn only_tagged_101_to_299_responses_create_dialogs() {
    let inv = invite_with(1, &[]);
    let trying = build_response(
        &ResponseBasis::from_request(&inv),
        StatusCode::TRYING,
        "Trying",
        None,
    );
    assert_eq!(
        Dialog::uac(&inv, &trying),
        Err(DialogError::NotDialogCreating(StatusCode::TRYING))
    );
    let busy = answer(&inv, 486, "b1", None);
    assert!(matches!(
        Dialog::uac(&inv, &busy),
        Err(DialogError::NotDialogCreating(_))
    ));
    let untagged = build_response(
        &ResponseBasis::from_request(&inv),
        StatusCode::RINGING,
        "Ringing",
        None,
    );
    assert_eq!(Dialog::uac(&inv, &untagged), Err(DialogError::NoToTag));
    let mut no_contact = inv.clone();
    no_contact.headers.remove(HeaderName::Contact);
    assert_eq!(
        Dialog::uas(&no_contact, &answer(&no_contact, 200, "b", None)),
        Err(DialogError::NoContact)
    );
}

#[test]
fn an_early_dialog_is_confirmed_by_a_2xx_that_recomputes_route_set_and_target() {
    let inv = invite_with(1, &[]);
    let ringing = with_record_route(answer(&inv, 180, "b1", None), &[P2]);
    let mut d = Dialog::uac(&inv, &ringing).unwrap();
    assert_eq!(d.state(), DialogState::Early);
    assert_eq!(
        d.remote_target(),
        &inv.uri,
        "a 180 without Contact leaves the Request-URI as target"
    );
    let ok = with_record_route(
        answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2")),
        &[P2, P1],
    );
    d.on_remote_response(&ok).unwrap();
    assert_eq!(d.state(), DialogState::Confirmed);
    assert_eq!(d.route_set().len(), 2);
    assert_eq!(d.route_set()[0].uri.to_string(), "sip:p1.example.com;lr");
    assert_eq!(d.remote_target().to_string(), "sip:bob@192.0.2.2");

    let other_fork = answer(&inv, 200, "b2", Some("sip:bob@192.0.2.3"));
    assert_eq!(
        d.on_remote_response(&other_fork),
        Err(DialogError::WrongDialog)
    );
}

#[test]
fn a_failure_to_the_invite_ends_an_early_dialog_on_either_side() {
    let inv = invite_with(1, &[]);
    let ringing = answer(&inv, 180, "b1", Some("sip:bob@192.0.2.2"));
    let mut uac = Dialog::uac(&inv, &ringing).unwrap();
    uac.on_remote_response(&answer(&inv, 486, "b1", None))
        .unwrap();
    assert_eq!(uac.state(), DialogState::Terminated);
    let mut uas = Dialog::uas(&inv, &ringing).unwrap();
    assert_eq!(uas.state(), DialogState::Early);
    uas.on_local_response(&inv, &answer(&inv, 487, "b1", None))
        .unwrap();
    assert_eq!(uas.state(), DialogState::Terminated);
}

// ---- requests within the dialog ----

#[test]
fn loose_routing_keeps_the_remote_target_as_request_uri() {
    let inv = invite_with(10, &[P2, P1]);
    let mut d = Dialog::uas(&inv, &answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"))).unwrap();
    let bye = d
        .create_request(Method::Bye, &sent_by("192.0.2.2"), &mut rng())
        .unwrap();
    assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.1:5060");
    assert_eq!(
        route_uris(&bye),
        ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    );
    assert_eq!(bye.headers.from().unwrap().tag(), Some("b1"));
    assert_eq!(bye.headers.to().unwrap().tag(), Some("a1"));
    assert_eq!(
        bye.headers.to().unwrap().uri.to_string(),
        "sip:alice@example.com"
    );
    assert_eq!(bye.headers.call_id(), Ok("dlg-1"));
    assert_eq!(bye.headers.max_forwards(), Ok(Some(70)));
    assert!(bye.headers.top_via().unwrap().has_rfc3261_branch());
    assert!(
        !bye.headers.contains(HeaderName::Contact),
        "BYE refreshes nothing"
    );
    // The request passes the UAS checks of the message layer.
    assert_eq!(check_request(&bye, &Capabilities::default()), Ok(()));
}

#[test]
fn strict_routing_puts_the_first_route_in_the_request_uri_and_the_target_last() {
    let inv = invite_with(10, &["<sip:strict.example.com>", P1]);
    let mut d = Dialog::uas(&inv, &answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"))).unwrap();
    let info = d
        .create_request(Method::Info, &sent_by("192.0.2.2"), &mut rng())
        .unwrap();
    assert_eq!(info.uri.to_string(), "sip:strict.example.com");
    assert_eq!(
        route_uris(&info),
        ["sip:p1.example.com;lr", "sip:alice@192.0.2.1:5060"]
    );
}

#[test]
fn cseq_increments_per_request_and_the_ack_reuses_the_invite_number() {
    let inv = invite_with(1, &[]);
    let mut d = Dialog::uac(&inv, &answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"))).unwrap();
    let by = sent_by("192.0.2.1");
    let mut r = rng();
    let seq = |req: &Request| req.headers.cseq().unwrap().seq;
    assert_eq!(seq(&d.create_request(Method::Ack, &by, &mut r).unwrap()), 1);
    assert_eq!(
        seq(&d.create_request(Method::Info, &by, &mut r).unwrap()),
        2
    );
    let reinvite = d.create_request(Method::Invite, &by, &mut r).unwrap();
    assert_eq!(seq(&reinvite), 3);
    assert_eq!(
        reinvite.headers.contacts().unwrap().addresses()[0]
            .uri
            .to_string(),
        "sip:alice@192.0.2.1:5060",
        "a target refresh carries our Contact"
    );
    let ack = d.create_request(Method::Ack, &by, &mut r).unwrap();
    assert_eq!(
        ack.headers.cseq().unwrap(),
        CSeq {
            seq: 3,
            method: Method::Ack
        }
    );
    assert_ne!(
        ack.headers.top_via().unwrap().branch(),
        reinvite.headers.top_via().unwrap().branch(),
        "the 2xx ACK is a new transaction"
    );
    assert_eq!(seq(&d.create_request(Method::Bye, &by, &mut r).unwrap()), 4);
    assert_eq!(d.local_seq(), Some(4));
    assert_eq!(
        d.create_request(Method::Cancel, &by, &mut r),
        Err(DialogError::Cancel)
    );
    d.terminate();
    assert_eq!(
        d.create_request(Method::Bye, &by, &mut r),
        Err(DialogError::Terminated)
    );
}

#[test]
fn a_uas_starts_its_own_cseq_at_random_below_2_to_the_31() {
    let inv = invite_with(10, &[]);
    let ok = answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"));
    let by = sent_by("192.0.2.2");
    let mut firsts = Vec::new();
    for seed in 0..20 {
        let mut d = Dialog::uas(&inv, &ok).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let first = d.create_request(Method::Info, &by, &mut r).unwrap();
        let n = first.headers.cseq().unwrap().seq;
        assert!(n < 1 << 31);
        let next = d.create_request(Method::Bye, &by, &mut r).unwrap();
        assert_eq!(next.headers.cseq().unwrap().seq, n + 1);
        firsts.push(n);
    }
    firsts.sort_unstable();
    firsts.dedup();
    assert_eq!(firsts.len(), 20, "the first CSeq comes from the RNG");
}

#[test]
fn a_request_with_a_lower_cseq_is_answered_500_and_an_equal_or_higher_one_passes() {
    let inv = invite_with(10, &[]);
    let mut d = Dialog::uas(&inv, &answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"))).unwrap();
    let in_dialog = |method: Method, seq: u32| {
        let mut r = invite_with(seq, &[]);
        r.method = method.clone();
        r.headers
            .set(HeaderName::To, &na("sip:bob@example.com", Some("b1")))
            .unwrap();
        r.headers
            .set(HeaderName::CSeq, &CSeq { seq, method }.to_string())
            .unwrap();
        r
    };
    let old = in_dialog(Method::Info, 9);
    let reject = d.on_request(&old).unwrap_err();
    assert_eq!(
        reject,
        InDialogReject::OutOfOrder {
            received: 9,
            last: 10
        }
    );
    assert_eq!(reject.status(), StatusCode::SERVER_INTERNAL_ERROR);
    assert_eq!(reject.response(&old).map(|r| r.status.as_u16()), Some(500));
    assert_eq!(d.on_request(&in_dialog(Method::Ack, 10)), Ok(()));
    assert_eq!(d.on_request(&in_dialog(Method::Info, 11)), Ok(()));
    assert_eq!(d.remote_seq(), Some(11));
    assert_eq!(d.on_request(&in_dialog(Method::Bye, 12)), Ok(()));
    assert_eq!(d.state(), DialogState::Terminated);
    assert_eq!(
        d.on_request(&in_dialog(Method::Info, 13)),
        Err(InDialogReject::Terminated)
    );
}

#[test]
fn a_request_for_an_unknown_dialog_is_answered_481_and_an_unknown_ack_dropped() {
    let inv = invite_with(10, &[]);
    let mut set = DialogSet::new();
    set.insert(Dialog::uas(&inv, &answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"))).unwrap());
    assert!(matches!(set.match_request(&inv), DialogMatch::OutOfDialog));

    let mut bye = inv.clone();
    bye.method = Method::Bye;
    bye.headers
        .set(
            HeaderName::CSeq,
            &CSeq {
                seq: 11,
                method: Method::Bye,
            }
            .to_string(),
        )
        .unwrap();
    bye.headers
        .set(HeaderName::To, &na("sip:bob@example.com", Some("b1")))
        .unwrap();
    assert!(matches!(set.match_request(&bye), DialogMatch::Found(d) if d.id().local_tag == "b1"));

    let mut stranger = bye.clone();
    stranger
        .headers
        .set(HeaderName::To, &na("sip:bob@example.com", Some("zz")))
        .unwrap();
    assert!(matches!(set.match_request(&stranger), DialogMatch::Unknown));
    let resp = unknown_dialog_response(&stranger).unwrap();
    assert_eq!(resp.status, StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST);
    let mut ack = stranger.clone();
    ack.method = Method::Ack;
    assert_eq!(unknown_dialog_response(&ack), None);
    let mut broken = bye.clone();
    broken.headers.set(HeaderName::From, "<<<").unwrap();
    assert!(matches!(
        set.match_request(&broken),
        DialogMatch::Malformed(_)
    ));
}

#[test]
fn a_2xx_to_a_reinvite_or_update_moves_the_remote_target() {
    // UAC side: the 2xx's Contact.
    let inv = invite_with(1, &[]);
    let mut uac = Dialog::uac(&inv, &answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"))).unwrap();
    let by = sent_by("192.0.2.1");
    let update = uac.create_request(Method::Update, &by, &mut rng()).unwrap();
    uac.on_remote_response(&answer(&update, 200, "b1", Some("sip:bob@198.51.100.7")))
        .unwrap();
    assert_eq!(uac.remote_target().to_string(), "sip:bob@198.51.100.7");
    let info = uac.create_request(Method::Info, &by, &mut rng()).unwrap();
    uac.on_remote_response(&answer(&info, 200, "b1", Some("sip:bob@203.0.113.1")))
        .unwrap();
    assert_eq!(
        uac.remote_target().to_string(),
        "sip:bob@198.51.100.7",
        "INFO refreshes no target"
    );
    assert_eq!(info.uri.to_string(), "sip:bob@198.51.100.7");

    // UAS side: the re-INVITE's Contact, once we answer 2xx.
    let mut uas = Dialog::uas(&inv, &answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"))).unwrap();
    let mut reinvite = invite_with(2, &[]);
    reinvite
        .headers
        .set(HeaderName::To, &na("sip:bob@example.com", Some("b1")))
        .unwrap();
    reinvite
        .headers
        .set(HeaderName::Contact, &na("sip:alice@198.51.100.9", None))
        .unwrap();
    uas.on_request(&reinvite).unwrap();
    uas.on_local_response(&reinvite, &answer(&reinvite, 488, "b1", None))
        .unwrap();
    assert_eq!(
        uas.remote_target().to_string(),
        "sip:alice@192.0.2.1:5060",
        "a refused re-INVITE changes nothing"
    );
    uas.on_local_response(&reinvite, &answer(&reinvite, 200, "b1", None))
        .unwrap();
    assert_eq!(uas.remote_target().to_string(), "sip:alice@198.51.100.9");
}

#[test]
fn a_481_or_408_to_an_in_dialog_request_ends_the_dialog() {
    let inv = invite_with(1, &[]);
    let ok = answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"));
    let by = sent_by("192.0.2.1");
    let mut d = Dialog::uac(&inv, &ok).unwrap();
    let info = d.create_request(Method::Info, &by, &mut rng()).unwrap();
    d.on_remote_response(&answer(&info, 481, "b1", None))
        .unwrap();
    assert_eq!(d.state(), DialogState::Terminated);

    let mut d = Dialog::uac(&inv, &ok).unwrap();
    let info = d.create_request(Method::Info, &by, &mut rng()).unwrap();
    // The transaction layer's 408 on Timer F carries the request's To.
    let timeout = build_response(
        &ResponseBasis::from_request(&info),
        StatusCode::REQUEST_TIMEOUT,
        "Request Timeout",
        None,
    );
    d.on_remote_response(&timeout).unwrap();
    assert_eq!(d.state(), DialogState::Terminated);
}

#[test]
fn the_2xx_ack_has_a_new_branch_the_invite_cseq_and_the_reversed_route_set() {
    let inv = invite_with(7, &[]);
    let ok = with_record_route(
        answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2")),
        &[P2, P1],
    );
    let ack = ack_for_2xx(
        &inv,
        &ok,
        &sent_by("192.0.2.1"),
        &mut ChaCha8Rng::seed_from_u64(9),
    )
    .unwrap();
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri.to_string(), "sip:bob@192.0.2.2");
    assert_eq!(
        ack.headers.cseq().unwrap(),
        CSeq {
            seq: 7,
            method: Method::Ack
        }
    );
    assert_eq!(
        route_uris(&ack),
        ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    );
    assert_eq!(ack.headers.to().unwrap().tag(), Some("b1"));
    let branch = ack.headers.top_via().unwrap().branch().unwrap().to_owned();
    assert!(branch.starts_with("z9hG4bK"));
    assert_ne!(
        Some(branch.as_str()),
        inv.headers.top_via().unwrap().branch()
    );
}

#[test]
fn a_sips_request_uri_makes_the_dialog_secure() {
    let mut inv = invite_with(1, &[]);
    inv.uri = Uri::parse("sips:bob@example.com").unwrap();
    let d = Dialog::uas(&inv, &answer(&inv, 200, "b1", Some("sips:bob@192.0.2.2"))).unwrap();
    assert!(d.is_secure());
}

// ---- session timers ----

fn with_timer_headers(
    mut r: Request,
    se: Option<&str>,
    min_se: Option<&str>,
    supported: bool,
) -> Request {
    if let Some(v) = se {
        r.headers.push(HeaderName::SessionExpires, v).unwrap();
    }
    if let Some(v) = min_se {
        r.headers.push(HeaderName::MinSe, v).unwrap();
    }
    if supported {
        r.headers
            .push(HeaderName::Supported, "100rel, timer")
            .unwrap();
    }
    r
}

#[test]
fn a_uas_answers_422_with_its_min_se_and_the_uac_retries_with_it() {
    let uas = SessionTimerConfig {
        min_se: 600,
        ..SessionTimerConfig::default()
    };
    let uac = SessionTimerConfig {
        interval: 300,
        ..SessionTimerConfig::default()
    };
    let offer = uac.offer();
    let mut inv = invite_with(1, &[]);
    offer.apply(&mut inv.headers);
    assert_eq!(inv.headers.get(HeaderName::SessionExpires), Some("300"));
    assert!(
        !inv.headers.contains(HeaderName::MinSe),
        "90 is the default"
    );
    assert!(inv.headers.supported().unwrap().contains(&"timer"));

    let Err(Negotiation::TooSmall(too_small)) = negotiate(&uas, &inv) else {
        panic!("300 s is below the UAS's 600")
    };
    let resp = too_small.response(&inv, Some("b1"));
    assert_eq!(resp.status.as_u16(), 422);
    assert_eq!(resp.headers.get(HeaderName::MinSe), Some("600"));

    let retry = offer.after_422(&resp).unwrap();
    assert_eq!(retry.expires.interval, 600);
    assert_eq!(retry.min_se, 600);
    let mut inv2 = invite_with(2, &[]);
    retry.apply(&mut inv2.headers);
    assert_eq!(inv2.headers.get(HeaderName::MinSe), Some("600"));
    let ans = negotiate(&uas, &inv2).unwrap().unwrap();
    assert_eq!(ans.expires.interval, 600);
    assert_eq!(
        offer.after_422(&answer(&inv, 422, "b", None)),
        Err(SessionTimerError::Bad422),
        "a 422 without Min-SE cannot be retried"
    );
}

#[test]
fn the_uas_may_lower_the_interval_but_not_below_the_requests_min_se() {
    let uas = SessionTimerConfig {
        interval: 900,
        ..SessionTimerConfig::default()
    };
    let inv = with_timer_headers(invite_with(1, &[]), Some("1800"), Some("1200"), true);
    let ans = negotiate(&uas, &inv).unwrap().unwrap();
    assert_eq!(ans.expires.interval, 1200);
    let inv = with_timer_headers(invite_with(1, &[]), Some("1800"), None, true);
    assert_eq!(
        negotiate(&uas, &inv).unwrap().unwrap().expires.interval,
        900
    );
    let inv = with_timer_headers(invite_with(1, &[]), Some("400"), None, true);
    assert_eq!(
        negotiate(&uas, &inv).unwrap().unwrap().expires.interval,
        400,
        "never lengthened"
    );
}

#[test]
fn who_refreshes_follows_the_request_and_the_uacs_support() {
    let cfg = SessionTimerConfig::default();
    let refresher = |r: &Request| {
        let a = negotiate(&cfg, r).unwrap().unwrap();
        (a.expires.refresher, a.require_timer)
    };
    let plain = with_timer_headers(invite_with(1, &[]), Some("1800"), None, true);
    assert_eq!(refresher(&plain), (Some(Refresher::Uac), true));
    let uas_asked = with_timer_headers(invite_with(1, &[]), Some("1800;refresher=uas"), None, true);
    assert_eq!(refresher(&uas_asked), (Some(Refresher::Uas), true));
    // Without Supported: timer the UAC cannot refresh: we do, and Require stays out.
    let unsupported = with_timer_headers(invite_with(1, &[]), Some("1800"), None, false);
    assert_eq!(refresher(&unsupported), (Some(Refresher::Uas), false));
    let absent = invite_with(1, &[]);
    let a = negotiate(&cfg, &absent).unwrap().unwrap();
    assert_eq!(
        a.expires.interval, 1800,
        "inserted when the request has none"
    );
    let off = SessionTimerConfig {
        insert_when_absent: false,
        ..cfg
    };
    assert_eq!(negotiate(&off, &absent), Ok(None));
    let bad = with_timer_headers(invite_with(1, &[]), Some("soon"), None, true);
    assert!(matches!(
        negotiate(&cfg, &bad),
        Err(Negotiation::Malformed(_))
    ));
    let twice = with_timer_headers(plain.clone(), Some("1800"), None, false);
    assert!(matches!(
        negotiate(&cfg, &twice),
        Err(Negotiation::Malformed(_))
    ));

    let mut ok = answer(&plain, 200, "b1", Some("sip:bob@192.0.2.2"));
    negotiate(&cfg, &plain).unwrap().unwrap().apply(&mut ok);
    assert_eq!(
        SessionExpires::from_headers(&ok.headers),
        Ok(Some(SessionExpires {
            interval: 1800,
            refresher: Some(Refresher::Uac)
        }))
    );
    assert_eq!(ok.headers.require(), Ok(vec!["timer"]));
}

#[test]
fn the_refresher_refreshes_at_half_the_interval_and_the_other_side_ends_it_before_expiry() {
    let t0 = epoch();
    let cfg = SessionTimerConfig::default();
    let inv = {
        let mut r = invite_with(1, &[]);
        cfg.offer().apply(&mut r.headers);
        r
    };
    let ans = negotiate(&cfg, &inv).unwrap().unwrap();
    let mut ok = answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"));
    ans.apply(&mut ok);
    let mut uac = cfg.offer().accept(&ok, t0).unwrap().unwrap();
    let mut uas = ans.start(t0);
    assert!(uac.we_refresh());
    assert!(!uas.we_refresh());
    assert_eq!(uac.refresh_at(), Some(t0 + secs(900)));
    assert_eq!(uas.refresh_at(), None);
    // 1800 - min(32, 600) = 1768 s.
    assert_eq!(uas.next_timeout(), Some(t0 + secs(1768)));

    assert_eq!(uac.handle_timeout(t0 + secs(899)), None);
    assert_eq!(
        uac.handle_timeout(t0 + secs(900)),
        Some(SessionEvent::Refresh)
    );
    assert_eq!(
        uac.next_timeout(),
        Some(t0 + secs(1768)),
        "an unanswered refresh still expires"
    );
    assert_eq!(uas.handle_timeout(t0 + secs(1767)), None);
    assert_eq!(
        uas.handle_timeout(t0 + secs(1768)),
        Some(SessionEvent::Expired)
    );
    assert_eq!(uas.next_timeout(), None, "reported once");

    // Short intervals keep a third as margin: 90 s ends at 60 s.
    let short = SessionTimer::new(90, false, t0);
    assert_eq!(short.expires_at(), Some(t0 + secs(60)));
    // A refresh offer keeps the interval and says who refreshes.
    let again = uac.refresh_offer(&cfg);
    assert_eq!(again.expires.interval, 1800);
    assert_eq!(again.expires.refresher, Some(Refresher::Uac));
}

#[test]
fn a_2xx_without_session_expires_means_no_session_timer() {
    let cfg = SessionTimerConfig::default();
    let inv = invite_with(1, &[]);
    let ok = answer(&inv, 200, "b1", Some("sip:bob@192.0.2.2"));
    assert_eq!(cfg.offer().accept(&ok, epoch()), Ok(None));
    let mut low = ok.clone();
    low.headers
        .push(HeaderName::SessionExpires, "60;refresher=uas")
        .unwrap();
    assert!(matches!(
        cfg.offer().accept(&low, epoch()),
        Err(SessionTimerError::AnswerBelowMinSe { .. })
    ));
}

#[test]
fn a_dialog_set_fires_session_timers_in_deadline_order() {
    let t0 = epoch();
    let mut set = DialogSet::new();
    let make = |tag: &str| {
        let inv = invite_with(1, &[]);
        Dialog::uas(&inv, &answer(&inv, 200, tag, Some("sip:bob@192.0.2.2"))).unwrap()
    };
    let (a, b, c) = (make("a"), make("b"), make("c"));
    let (ia, ib, ic) = (a.id().clone(), b.id().clone(), c.id().clone());
    set.insert(a);
    set.insert(b);
    set.insert(c);
    assert_eq!(set.next_timeout(), None);
    assert!(set.set_session_timer(&ia, Some(SessionTimer::new(600, true, t0))));
    assert!(set.set_session_timer(&ib, Some(SessionTimer::new(90, false, t0))));
    assert!(set.set_session_timer(&ic, Some(SessionTimer::new(1800, false, t0))));
    assert_eq!(set.next_timeout(), Some(t0 + secs(60)));
    assert_eq!(
        set.handle_timeout(t0 + secs(300)),
        [
            (ib.clone(), DialogTimer::SessionExpired),
            (ia.clone(), DialogTimer::SessionRefresh)
        ]
    );
    // The refresh succeeded at 310 s: a new timer replaces the old.
    set.set_session_timer(&ia, Some(SessionTimer::new(600, true, t0 + secs(310))));
    set.remove(&ib);
    assert_eq!(set.next_timeout(), Some(t0 + secs(610)));
    assert_eq!(
        set.handle_timeout(t0 + secs(610)),
        [(ia.clone(), DialogTimer::SessionRefresh)]
    );
    // Woken late, past the expiry: the session is over, no refresh is asked for first.
    assert_eq!(
        set.handle_timeout(t0 + secs(2000)),
        [
            (ia.clone(), DialogTimer::SessionExpired),
            (ic.clone(), DialogTimer::SessionExpired)
        ]
    );
    assert_eq!(set.next_timeout(), None);
    assert_eq!(set.deadline_entries(), 0);
}

// ---- a whole call ----

/// Two transaction layers joined by a lossless wire: Alice at 192.0.2.1, Bob at
/// 192.0.2.2, both on UDP.
struct Call {
    alice: TransactionLayer,
    bob: TransactionLayer,
    now: Instant,
}

fn alice_peer() -> Peer {
    Peer::udp("192.0.2.1:5060".parse().unwrap())
}

fn bob_peer() -> Peer {
    Peer::udp("192.0.2.2:5060".parse().unwrap())
}

impl Call {
    /// Moves messages between the two until both are quiet; returns each side's events.
    fn pump(&mut self) -> (Vec<Event>, Vec<Event>) {
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            while let Some(o) = self.alice.poll_output() {
                moved = true;
                match o {
                    Output::Transmit(t) => {
                        assert_eq!(t.destination, bob_peer());
                        let m = parse_datagram(&t.bytes).unwrap();
                        self.bob.on_message(m, alice_peer(), self.now);
                    }
                    Output::Event(e) => ea.push(e),
                }
            }
            while let Some(o) = self.bob.poll_output() {
                moved = true;
                match o {
                    Output::Transmit(t) => {
                        assert_eq!(t.destination, alice_peer());
                        let m = parse_datagram(&t.bytes).unwrap();
                        self.alice.on_message(m, bob_peer(), self.now);
                    }
                    Output::Event(e) => eb.push(e),
                }
            }
            if !moved {
                return (ea, eb);
            }
        }
    }

    /// Runs both layers' timers up to `until`.
    fn run_until(&mut self, until: Instant) -> (Vec<Event>, Vec<Event>) {
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        loop {
            let next = [self.alice.next_timeout(), self.bob.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(at) = next.filter(|at| *at <= until) else {
                break;
            };
            self.now = at;
            self.alice.handle_timeout(at);
            self.bob.handle_timeout(at);
            let (a, b) = self.pump();
            ea.extend(a);
            eb.extend(b);
        }
        self.now = until;
        (ea, eb)
    }
}

fn request_event(events: &[Event]) -> (TransactionId, Request) {
    events
        .iter()
        .find_map(|e| match e {
            Event::Request { id, request, .. } => Some((*id, request.clone())),
            _ => None,
        })
        .expect("a request")
}

fn responses(events: &[Event]) -> Vec<Response> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Response { response, .. } => Some(response.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_call_is_set_up_refreshed_and_torn_down_between_two_layers() {
    let t0 = epoch();
    let mut rng = ChaCha8Rng::seed_from_u64(4028);
    let (alice_by, bob_by) = (sent_by("192.0.2.1"), sent_by("192.0.2.2"));
    let timers = SessionTimerConfig::default();
    let mut call = Call {
        alice: TransactionLayer::default(),
        bob: TransactionLayer::default(),
        now: t0,
    };
    let (mut alice_dialogs, mut bob_dialogs) = (DialogSet::new(), DialogSet::new());

    // Alice: INVITE with a session-timer offer.
    let mut invite = Request::new(Method::Invite, Uri::parse("sip:bob@192.0.2.2").unwrap());
    let h = &mut invite.headers;
    h.push(HeaderName::Via, &alice_by.via(&mut rng).to_string())
        .unwrap();
    h.push(HeaderName::MaxForwards, "70").unwrap();
    h.push(
        HeaderName::From,
        &na("sip:alice@example.com", Some(&new_tag(&mut rng))),
    )
    .unwrap();
    h.push(HeaderName::To, &na("sip:bob@example.com", None))
        .unwrap();
    h.push(HeaderName::CallId, &new_call_id(&mut rng)).unwrap();
    h.push(HeaderName::CSeq, "1 INVITE").unwrap();
    h.push(HeaderName::Contact, &na("sip:alice@192.0.2.1:5060", None))
        .unwrap();
    let offer = timers.offer();
    offer.apply(&mut invite.headers);
    call.alice
        .send_request(invite.clone(), bob_peer(), call.now)
        .unwrap();
    let (ea, eb) = call.pump();
    assert_eq!(responses(&ea)[0].status, StatusCode::TRYING);
    let (bob_tx, bob_invite) = request_event(&eb);

    // Bob: 180 (early dialog), then 200 with the negotiated timer.
    let session = negotiate(&timers, &bob_invite).unwrap().unwrap();
    let bob_tag = new_tag(&mut rng);
    let ringing = answer(&bob_invite, 180, &bob_tag, Some("sip:bob@192.0.2.2"));
    let bob_dialog = Dialog::uas(&bob_invite, &ringing).unwrap();
    let bob_id = bob_dialog.id().clone();
    bob_dialogs.insert(bob_dialog);
    call.bob.send_response(bob_tx, &ringing, call.now).unwrap();
    let (ea, _) = call.pump();
    let early = responses(&ea).pop().unwrap();
    alice_dialogs.insert(Dialog::uac(&invite, &early).unwrap());
    assert!(
        alice_dialogs
            .iter()
            .all(|d| d.state() == DialogState::Early)
    );

    call.run_until(t0 + secs(2));
    let mut ok = answer(&bob_invite, 200, &bob_tag, Some("sip:bob@192.0.2.2"));
    session.apply(&mut ok);
    bob_dialogs
        .get_mut(&bob_id)
        .unwrap()
        .on_local_response(&bob_invite, &ok)
        .unwrap();
    bob_dialogs.set_session_timer(&bob_id, Some(session.start(call.now)));
    call.bob.send_response(bob_tx, &ok, call.now).unwrap();
    let (ea, _) = call.pump();
    let ok_at_alice = responses(&ea).pop().unwrap();
    let alice_dialog = alice_dialogs.match_response(&ok_at_alice).unwrap();
    alice_dialog.on_remote_response(&ok_at_alice).unwrap();
    assert_eq!(alice_dialog.state(), DialogState::Confirmed);
    let alice_id = alice_dialog.id().clone();
    let ack = alice_dialog.create_ack(1, &alice_by, &mut rng);
    let alice_timer = offer.accept(&ok_at_alice, call.now).unwrap();
    alice_dialogs.set_session_timer(&alice_id, alice_timer);
    call.alice.send_stateless(&ack.into(), bob_peer());
    let (_, eb) = call.pump();
    let Some(Event::Ack {
        request,
        invite: Some(acked),
        ..
    }) = eb.first()
    else {
        panic!("{eb:?}")
    };
    assert_eq!(*acked, bob_tx);
    let DialogMatch::Found(d) = bob_dialogs.match_request(request) else {
        panic!()
    };
    d.on_request(request).unwrap();
    assert_eq!(d.state(), DialogState::Confirmed);

    // Half an interval later Alice, the refresher, re-INVITEs.
    let start = call.now;
    call.run_until(start + secs(899));
    assert!(
        call.alice.is_empty() && call.bob.is_empty(),
        "INVITE transactions ended"
    );
    let due = alice_dialogs.next_timeout().unwrap();
    assert_eq!(due, start + secs(900));
    call.run_until(due);
    assert_eq!(
        alice_dialogs.handle_timeout(due),
        [(alice_id.clone(), DialogTimer::SessionRefresh)]
    );
    let d = alice_dialogs.get_mut(&alice_id).unwrap();
    let refresh_offer = d.session_timer().unwrap().refresh_offer(&timers);
    let mut reinvite = d
        .create_request(Method::Invite, &alice_by, &mut rng)
        .unwrap();
    refresh_offer.apply(&mut reinvite.headers);
    call.alice
        .send_request(reinvite.clone(), bob_peer(), call.now)
        .unwrap();
    let (_, eb) = call.pump();
    let (tx, req) = request_event(&eb);
    let DialogMatch::Found(d) = bob_dialogs.match_request(&req) else {
        panic!()
    };
    d.on_request(&req).unwrap();
    assert_eq!(d.remote_seq(), Some(2));
    let renewed = negotiate(&timers, &req).unwrap().unwrap();
    assert_eq!(renewed.expires.refresher, Some(Refresher::Uac));
    let mut ok2 = answer(&req, 200, &bob_tag, Some("sip:bob@192.0.2.2"));
    renewed.apply(&mut ok2);
    d.on_local_response(&req, &ok2).unwrap();
    bob_dialogs.set_session_timer(&bob_id, Some(renewed.start(call.now)));
    call.bob.send_response(tx, &ok2, call.now).unwrap();
    let (ea, _) = call.pump();
    let ok2_at_alice = responses(&ea).pop().unwrap();
    let d = alice_dialogs.match_response(&ok2_at_alice).unwrap();
    d.on_remote_response(&ok2_at_alice).unwrap();
    let ack2 = d.create_request(Method::Ack, &alice_by, &mut rng).unwrap();
    let renewed_at_alice = refresh_offer.accept(&ok2_at_alice, call.now).unwrap();
    alice_dialogs.set_session_timer(&alice_id, renewed_at_alice);
    call.alice.send_stateless(&ack2.into(), bob_peer());
    call.pump();
    assert_eq!(
        bob_dialogs.next_timeout(),
        Some(call.now + secs(1768)),
        "Bob's expiry moved with the refresh"
    );

    // Bob hangs up.
    let d = bob_dialogs.get_mut(&bob_id).unwrap();
    let bye = d.create_request(Method::Bye, &bob_by, &mut rng).unwrap();
    assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.1:5060");
    call.bob.send_request(bye, alice_peer(), call.now).unwrap();
    let (ea, _) = call.pump();
    let (tx, bye_at_alice) = request_event(&ea);
    let DialogMatch::Found(d) = alice_dialogs.match_request(&bye_at_alice) else {
        panic!()
    };
    d.on_request(&bye_at_alice).unwrap();
    assert_eq!(d.state(), DialogState::Terminated);
    alice_dialogs.remove(&alice_id);
    let bye_ok = answer(&bye_at_alice, 200, "ignored", None);
    call.alice.send_response(tx, &bye_ok, call.now).unwrap();
    let (_, eb) = call.pump();
    let bye_ok_at_bob = responses(&eb).pop().unwrap();
    let d = bob_dialogs.match_response(&bye_ok_at_bob).unwrap();
    d.on_remote_response(&bye_ok_at_bob).unwrap();
    assert_eq!(d.state(), DialogState::Terminated);
    bob_dialogs.remove(&bob_id);

    let end = call.now + secs(64);
    call.run_until(end);
    assert!(call.alice.is_empty() && call.bob.is_empty());
    assert!(alice_dialogs.is_empty() && bob_dialogs.is_empty());
    assert_eq!(bob_dialogs.next_timeout(), None);
    assert_eq!(call.alice.stats().malformed + call.bob.stats().malformed, 0);
}

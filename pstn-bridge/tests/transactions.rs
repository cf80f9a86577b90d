//! The transaction layer (RFC 3261 §17, RFC 6026) driven on virtual time: every
//! transition of the four machines, the timers on unreliable and reliable transports,
//! CANCEL, RFC 2543 matching, 10,000 concurrent transactions, and seeded random
//! messages.
//!
//! Time is one real `Instant` taken once plus virtual offsets; the layer is driven by
//! jumping to its `next_timeout`, so timer firings are asserted to the millisecond.
//! Messages are built with the message layer's API; random inputs use fixed seeds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use confer_pstn_bridge::sip::transaction::{
    Event, Kind, Output, Peer, SentBy, State, TimerConfig, TransactionConfig, TransactionError,
    TransactionId, TransactionLayer, Transmit, build_ack_for_non2xx, build_cancel,
};
use confer_pstn_bridge::sip::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[allow(clippy::disallowed_methods)] // the one real Instant; all later times are offsets
fn epoch() -> Instant {
    Instant::now()
}

const ALICE: &str = "192.0.2.1:5060";
const BOB: &str = "192.0.2.2:5060";

fn udp(addr: &str) -> Peer {
    Peer::udp(addr.parse().unwrap())
}

fn tcp(addr: &str) -> Peer {
    Peer::tcp(addr.parse().unwrap())
}

fn name_addr(uri: &str, tag: Option<&str>) -> String {
    let mut a = NameAddr::new(Uri::parse(uri).unwrap());
    if let Some(t) = tag {
        a.set_tag(t).unwrap();
    }
    a.to_string()
}

fn via_with(transport: Transport, branch: &str) -> String {
    Via::new(
        transport,
        Host::parse("192.0.2.1").unwrap(),
        Some(5060),
        branch,
    )
    .unwrap()
    .to_string()
}

/// A request from Alice (192.0.2.1:5060) to Bob, with one loose Route.
fn request_via(method: Method, via: &str, cseq: u32) -> Request {
    let mut r = Request::new(method.clone(), Uri::parse("sip:bob@example.com").unwrap());
    let h = &mut r.headers;
    h.push(HeaderName::Via, via).unwrap();
    h.push(HeaderName::MaxForwards, "70").unwrap();
    h.push(HeaderName::Route, "<sip:proxy.example.com;lr>")
        .unwrap();
    h.push(
        HeaderName::From,
        &name_addr("sip:alice@example.com", Some("a1")),
    )
    .unwrap();
    h.push(HeaderName::To, &name_addr("sip:bob@example.com", None))
        .unwrap();
    h.push(HeaderName::CallId, "call-1@192.0.2.1").unwrap();
    h.push(HeaderName::CSeq, &CSeq { seq: cseq, method }.to_string())
        .unwrap();
    h.push(HeaderName::Contact, &name_addr("sip:alice@192.0.2.1", None))
        .unwrap();
    r
}

fn request(method: Method, branch: &str) -> Request {
    request_via(method, &via_with(Transport::Udp, branch), 1)
}

fn invite(branch: &str) -> Request {
    request(Method::Invite, branch)
}

fn response(req: &Request, code: u16, to_tag: Option<&str>) -> Response {
    let s = StatusCode::new(code).unwrap();
    build_response(
        &ResponseBasis::from_request(req),
        s,
        s.canonical_reason(),
        to_tag,
    )
}

fn parse(t: &Transmit) -> Message {
    parse_datagram(&t.bytes).unwrap()
}

/// A layer on virtual time with a log of what it output and when (ms since start).
struct Harness {
    layer: TransactionLayer,
    start: Instant,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Self::with(TransactionConfig::default())
    }

    fn with(config: TransactionConfig) -> Self {
        let start = epoch();
        Self {
            layer: TransactionLayer::new(config),
            start,
            now: start,
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from((self.now - self.start).as_millis()).unwrap()
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.layer.poll_output()).collect()
    }

    /// Runs every timer up to `ms` (inclusive), then sets the clock there.
    fn run_until(&mut self, ms: u64) -> Vec<(u64, Output)> {
        let end = self.start + Duration::from_millis(ms);
        let mut log = Vec::new();
        while let Some(at) = self.layer.next_timeout() {
            if at > end {
                break;
            }
            self.now = at;
            self.layer.handle_timeout(at);
            let t = self.ms();
            log.extend(self.drain().into_iter().map(|o| (t, o)));
        }
        self.now = end;
        log
    }

    fn receive(&mut self, m: impl Into<Message>, from: Peer) -> Vec<Output> {
        self.layer.on_message(m.into(), from, self.now);
        self.drain()
    }

    fn send(&mut self, r: Request, to: Peer) -> (TransactionId, Vec<Output>) {
        let id = self.layer.send_request(r, to, self.now).unwrap();
        (id, self.drain())
    }

    fn respond(&mut self, id: TransactionId, r: &Response) -> Vec<Output> {
        self.layer.send_response(id, r, self.now).unwrap();
        self.drain()
    }
}

fn transmits(out: &[Output]) -> Vec<&Transmit> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transmit(t) => Some(t),
            Output::Event(_) => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<&Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            Output::Transmit(_) => None,
        })
        .collect()
}

fn transmit_times(log: &[(u64, Output)]) -> Vec<u64> {
    log.iter()
        .filter(|(_, o)| matches!(o, Output::Transmit(_)))
        .map(|(t, _)| *t)
        .collect()
}

fn event_log(log: &[(u64, Output)]) -> Vec<(u64, &Event)> {
    log.iter()
        .filter_map(|(t, o)| match o {
            Output::Event(e) => Some((*t, e)),
            Output::Transmit(_) => None,
        })
        .collect()
}

/// The server transaction id of the one `Event::Request` in `out`.
fn new_request_id(out: &[Output]) -> TransactionId {
    let ids: Vec<_> = events(out)
        .into_iter()
        .filter_map(|e| match e {
            Event::Request { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "{out:?}");
    ids[0]
}

fn status_of(t: &Transmit) -> u16 {
    parse(t).as_response().unwrap().status.as_u16()
}

// ---- INVITE client (RFC 3261 figure 5, RFC 6026 figure 5) ----

#[test]
fn an_invite_client_retransmits_at_t1_doubling_until_a_provisional_response() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKinv1");
    let (id, out) = h.send(inv.clone(), udp(BOB));
    let first = transmits(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].destination, udp(BOB));
    assert_eq!(first[0].transaction, Some(id));
    assert_eq!(h.layer.state(id), Some(State::Calling));

    let log = h.run_until(4_000);
    assert_eq!(transmit_times(&log), [500, 1_500, 3_500]);
    for (_, o) in &log {
        let Output::Transmit(t) = o else { panic!() };
        assert_eq!(
            t.bytes, first[0].bytes,
            "a retransmission is the same bytes"
        );
    }

    let out = h.receive(response(&inv, 180, Some("b1")), udp(BOB));
    assert!(matches!(
        events(&out)[..],
        [Event::Response { id: i, response }] if *i == id && response.status.as_u16() == 180
    ));
    assert_eq!(h.layer.state(id), Some(State::Proceeding));
    let log = h.run_until(600_000);
    assert!(
        log.is_empty(),
        "no retransmission or Timer B in Proceeding: {log:?}"
    );
    assert_eq!(h.layer.state(id), Some(State::Proceeding));
}

#[test]
fn timer_b_times_out_an_unanswered_invite_with_a_408_to_the_tu() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKinv2");
    let (id, _) = h.send(inv.clone(), udp(BOB));
    let log = h.run_until(40_000);
    // T1 doubling without cap: 0.5, 1, 2, 4, 8, 16 s after each other.
    assert_eq!(
        transmit_times(&log),
        [500, 1_500, 3_500, 7_500, 15_500, 31_500]
    );
    let ev = event_log(&log);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let (t, Event::Timeout { id: tid, response }) = ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!((t, *tid), (32_000, id));
    assert_eq!(response.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        response.headers.cseq().unwrap(),
        inv.headers.cseq().unwrap()
    );
    assert_eq!(response.headers.call_id(), inv.headers.call_id());
    assert!(matches!(ev[1], (32_000, Event::Terminated { id: i }) if *i == id));
    assert!(h.layer.is_empty());
    assert_eq!(h.layer.next_timeout(), None);
}

#[test]
fn a_non_2xx_final_response_is_acked_and_its_retransmissions_are_acked_again() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKinv3");
    let (id, _) = h.send(inv.clone(), udp(BOB));
    h.run_until(100);
    let busy = response(&inv, 486, Some("b1"));
    let out = h.receive(busy.clone(), udp(BOB));
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    let Message::Request(ack) = parse(tx[0]) else {
        panic!()
    };
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri, inv.uri);
    assert_eq!(
        ack.headers.vias().unwrap(),
        vec![inv.headers.top_via().unwrap()]
    );
    assert_eq!(ack.headers.to().unwrap().tag(), Some("b1"));
    assert_eq!(ack.headers.from().unwrap(), inv.headers.from().unwrap());
    assert_eq!(
        ack.headers.cseq().unwrap(),
        CSeq {
            seq: 1,
            method: Method::Ack
        }
    );
    assert_eq!(ack.headers.routes().unwrap(), inv.headers.routes().unwrap());
    assert_eq!(events(&out).len(), 1);
    assert_eq!(h.layer.state(id), Some(State::Completed));

    let again = h.receive(busy, udp(BOB));
    assert_eq!(transmits(&again).len(), 1, "the ACK is sent again");
    assert_eq!(transmits(&again)[0].bytes, tx[0].bytes);
    assert!(events(&again).is_empty(), "the TU sees the 486 once");
    assert_eq!(h.layer.stats().retransmissions_absorbed, 1);

    let log = h.run_until(40_000);
    let ev = event_log(&log);
    assert!(
        matches!(ev[..], [(32_100, Event::Terminated { .. })]),
        "{ev:?}"
    );
    assert!(
        transmit_times(&log).is_empty(),
        "no INVITE retransmission after a final"
    );
}

#[test]
fn a_2xx_retransmission_reaches_the_tu_in_the_accepted_state() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKinv4");
    let (id, _) = h.send(inv.clone(), udp(BOB));
    let ok = response(&inv, 200, Some("b1"));
    let out = h.receive(ok.clone(), udp(BOB));
    assert!(transmits(&out).is_empty(), "the 2xx ACK is the TU's");
    assert_eq!(events(&out).len(), 1);
    assert_eq!(h.layer.state(id), Some(State::Accepted));

    h.run_until(1_000);
    let again = h.receive(ok, udp(BOB));
    assert!(matches!(events(&again)[..], [Event::Response { id: i, .. }] if *i == id));
    let fork = h.receive(response(&inv, 200, Some("fork2")), udp(BOB));
    assert!(matches!(
        events(&fork)[..],
        [Event::Response { response, .. }] if response.headers.to().unwrap().tag() == Some("fork2")
    ));
    let late_failure = h.receive(response(&inv, 503, Some("fork3")), udp(BOB));
    assert!(late_failure.is_empty(), "a non-2xx in Accepted is absorbed");

    let log = h.run_until(40_000);
    assert!(matches!(
        event_log(&log)[..],
        [(32_000, Event::Terminated { .. })]
    ));
    let stray = h.receive(response(&inv, 200, Some("fork4")), udp(BOB));
    assert!(
        matches!(events(&stray)[..], [Event::StrayResponse { .. }]),
        "after Timer M a 2xx is stray but still goes to the UAC core"
    );
}

#[test]
fn over_tcp_an_invite_is_sent_once_and_a_failure_terminates_at_once() {
    let mut h = Harness::new();
    let inv = request_via(Method::Invite, &via_with(Transport::Tcp, "z9hG4bKt1"), 1);
    let (id, _) = h.send(inv.clone(), tcp(BOB));
    assert!(
        h.run_until(20_000).is_empty(),
        "no Timer A on a reliable transport"
    );
    let out = h.receive(response(&inv, 404, Some("b")), tcp(BOB));
    assert_eq!(transmits(&out).len(), 1, "the ACK");
    assert!(matches!(
        events(&out)[..],
        [Event::Response { .. }, Event::Terminated { id: i }] if *i == id
    ));
    assert!(h.layer.is_empty(), "Timer D is zero on TCP");

    let (id2, _) = h.send(
        request_via(Method::Invite, &via_with(Transport::Tcp, "z9hG4bKt2"), 1),
        tcp(BOB),
    );
    let log = h.run_until(60_000);
    assert!(matches!(
        event_log(&log)[..],
        [(52_000, Event::Timeout { id: i, .. }), (52_000, Event::Terminated { .. })] if *i == id2
    ));
}

// ---- non-INVITE client (figure 6) ----

#[test]
fn a_non_invite_client_retransmits_doubling_to_t2_and_at_t2_in_proceeding() {
    let mut h = Harness::new();
    let opt = request(Method::Options, "z9hG4bKopt1");
    let (id, _) = h.send(opt.clone(), udp(BOB));
    let log = h.run_until(12_000);
    assert_eq!(transmit_times(&log), [500, 1_500, 3_500, 7_500, 11_500]);

    let out = h.receive(response(&opt, 100, None), udp(BOB));
    assert_eq!(events(&out).len(), 1);
    assert_eq!(h.layer.state(id), Some(State::Proceeding));
    let log = h.run_until(24_000);
    assert_eq!(transmit_times(&log), [15_500, 19_500, 23_500]);

    let ok = response(&opt, 200, Some("b"));
    let out = h.receive(ok.clone(), udp(BOB));
    assert!(
        matches!(events(&out)[..], [Event::Response { response, .. }] if response.status.is_success())
    );
    assert_eq!(h.layer.state(id), Some(State::Completed));
    assert!(h.receive(ok, udp(BOB)).is_empty(), "absorbed in Completed");
    let log = h.run_until(40_000);
    assert!(
        matches!(event_log(&log)[..], [(29_000, Event::Terminated { .. })]),
        "Timer K = T4"
    );
    assert!(transmit_times(&log).is_empty());
}

#[test]
fn timer_f_times_out_a_non_invite_request_with_a_408() {
    let mut h = Harness::new();
    let (id, _) = h.send(request(Method::Bye, "z9hG4bKbye1"), udp(BOB));
    let log = h.run_until(40_000);
    assert_eq!(
        transmit_times(&log),
        [
            500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
        ]
    );
    assert!(matches!(
        event_log(&log)[..],
        [(32_000, Event::Timeout { id: i, response }), (32_000, Event::Terminated { .. })]
            if *i == id && response.status == StatusCode::REQUEST_TIMEOUT
    ));
}

#[test]
fn over_tcp_a_non_invite_client_completes_and_terminates_in_one_step() {
    let mut h = Harness::new();
    let opt = request_via(Method::Options, &via_with(Transport::Tcp, "z9hG4bKt3"), 1);
    let (id, _) = h.send(opt.clone(), tcp(BOB));
    assert!(h.run_until(10_000).is_empty());
    let out = h.receive(response(&opt, 200, Some("x")), tcp(BOB));
    assert!(matches!(
        events(&out)[..],
        [Event::Response { .. }, Event::Terminated { id: i }] if *i == id
    ));
}

// ---- INVITE server (figure 7, RFC 6026 figure 7) ----

#[test]
fn an_invite_server_sends_100_trying_at_once_and_passes_the_request_up() {
    let mut h = Harness::new();
    let out = h.receive(invite("z9hG4bKs1"), udp(ALICE));
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    assert_eq!(status_of(tx[0]), 100);
    assert_eq!(tx[0].destination, udp(ALICE));
    let id = new_request_id(&out);
    assert_eq!(h.layer.kind(id), Some(Kind::InviteServer));
    assert_eq!(h.layer.state(id), Some(State::Proceeding));
}

#[test]
fn a_retransmitted_invite_gets_the_last_provisional_response_again() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKs2");
    let out = h.receive(inv.clone(), udp(ALICE));
    let id = new_request_id(&out);
    let again = h.receive(inv.clone(), udp(ALICE));
    assert_eq!(status_of(transmits(&again)[0]), 100);
    assert!(events(&again).is_empty(), "the TU sees the INVITE once");

    let ringing = h.respond(id, &response(&inv, 180, Some("b1")));
    let again = h.receive(inv, udp(ALICE));
    assert_eq!(transmits(&again).len(), 1);
    assert_eq!(transmits(&again)[0].bytes, transmits(&ringing)[0].bytes);
    assert_eq!(h.layer.stats().retransmissions_absorbed, 2);
}

#[test]
fn timer_g_retransmits_a_failure_until_the_ack_confirms_it() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKs3");
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    let busy = response(&inv, 486, Some("b1"));
    h.respond(id, &busy);
    assert_eq!(h.layer.state(id), Some(State::Completed));
    let log = h.run_until(12_000);
    // T1 doubling, capped at T2 = 4 s.
    assert_eq!(transmit_times(&log), [500, 1_500, 3_500, 7_500, 11_500]);
    let retransmitted = h.receive(inv.clone(), udp(ALICE));
    assert_eq!(status_of(transmits(&retransmitted)[0]), 486);

    let ack = build_ack_for_non2xx(&inv, &busy).unwrap();
    let out = h.receive(ack.clone(), udp(ALICE));
    assert!(
        out.is_empty(),
        "the ACK of a failure stays in the transaction"
    );
    assert_eq!(h.layer.state(id), Some(State::Confirmed));
    assert!(
        h.receive(ack, udp(ALICE)).is_empty(),
        "ACK retransmission absorbed"
    );
    let log = h.run_until(30_000);
    assert!(transmit_times(&log).is_empty());
    assert!(
        matches!(event_log(&log)[..], [(17_000, Event::Terminated { .. })]),
        "Timer I = T4"
    );
}

/// An INVITE answered with `status` and never acknowledged: the response is resent at
/// T1 doubling up to T2, and after 64 T1 the TU is told and the transaction ends (Timer H
/// for a failure, the 2xx resend for a success).
fn given_up_after_64_t1_without_an_ack(branch: &str, status: u16) {
    let mut h = Harness::new();
    let inv = invite(branch);
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    h.respond(id, &response(&inv, status, Some("b1")));
    let log = h.run_until(40_000);
    assert_eq!(
        transmit_times(&log),
        [
            500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
        ]
    );
    assert!(matches!(
        event_log(&log)[..],
        [(32_000, Event::AckTimeout { id: i }), (32_000, Event::Terminated { .. })] if *i == id
    ));
}

#[test]
fn timer_h_gives_up_waiting_for_the_ack_of_a_failure() {
    given_up_after_64_t1_without_an_ack("z9hG4bKs4", 603);
}

#[test]
fn a_2xx_is_retransmitted_until_its_ack_which_reaches_the_tu() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKs5");
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    let ok = response(&inv, 200, Some("b1"));
    h.respond(id, &ok);
    assert_eq!(h.layer.state(id), Some(State::Accepted));
    let log = h.run_until(2_000);
    assert_eq!(transmit_times(&log), [500, 1_500]);
    assert!(
        h.receive(inv.clone(), udp(ALICE)).is_empty(),
        "an INVITE retransmission is absorbed in Accepted"
    );

    let mut ack = request(Method::Ack, "z9hG4bKack5");
    ack.headers
        .set(
            HeaderName::To,
            &name_addr("sip:bob@example.com", Some("b1")),
        )
        .unwrap();
    let out = h.receive(ack.clone(), udp(ALICE));
    assert!(matches!(
        events(&out)[..],
        [Event::Ack { invite: Some(i), .. }] if *i == id
    ));
    let log = h.run_until(40_000);
    assert!(transmit_times(&log).is_empty(), "the ACK stops the 2xx");
    assert!(
        matches!(event_log(&log)[..], [(32_000, Event::Terminated { .. })]),
        "Timer L"
    );
    let late = h.receive(ack, udp(ALICE));
    assert!(matches!(
        events(&late)[..],
        [Event::Ack { invite: None, .. }]
    ));
}

#[test]
fn a_2xx_never_acked_is_given_up_after_64_t1_and_the_tu_is_told() {
    given_up_after_64_t1_without_an_ack("z9hG4bKs6", 200);
}

#[test]
fn over_tcp_the_invite_server_sends_its_responses_once_and_terminates_on_the_ack() {
    let mut h = Harness::new();
    let inv = request_via(Method::Invite, &via_with(Transport::Tcp, "z9hG4bKt4"), 1);
    let out = h.receive(inv.clone(), tcp(ALICE));
    let id = new_request_id(&out);
    let busy = response(&inv, 486, Some("b"));
    h.respond(id, &busy);
    assert!(h.run_until(10_000).is_empty(), "no Timer G on TCP");
    let out = h.receive(build_ack_for_non2xx(&inv, &busy).unwrap(), tcp(ALICE));
    assert!(
        matches!(events(&out)[..], [Event::Terminated { id: i }] if *i == id),
        "Timer I = 0"
    );
}

// ---- non-INVITE server (figure 8) ----

#[test]
fn a_non_invite_server_absorbs_retransmissions_and_repeats_its_last_response() {
    let mut h = Harness::new();
    let opt = request(Method::Options, "z9hG4bKs7");
    let out = h.receive(opt.clone(), udp(ALICE));
    assert!(
        transmits(&out).is_empty(),
        "no automatic 100 for non-INVITE"
    );
    let id = new_request_id(&out);
    assert_eq!(h.layer.state(id), Some(State::Trying));
    assert!(
        h.receive(opt.clone(), udp(ALICE)).is_empty(),
        "nothing to repeat in Trying"
    );

    h.respond(id, &response(&opt, 100, None));
    assert_eq!(h.layer.state(id), Some(State::Proceeding));
    assert_eq!(
        status_of(transmits(&h.receive(opt.clone(), udp(ALICE)))[0]),
        100
    );

    h.respond(id, &response(&opt, 200, Some("b")));
    assert_eq!(h.layer.state(id), Some(State::Completed));
    h.run_until(10_000);
    assert_eq!(status_of(transmits(&h.receive(opt, udp(ALICE)))[0]), 200);
    let log = h.run_until(40_000);
    assert!(
        matches!(event_log(&log)[..], [(32_000, Event::Terminated { .. })]),
        "Timer J"
    );
    assert!(
        transmit_times(&log).is_empty(),
        "a non-INVITE final is never retransmitted"
    );
}

#[test]
fn over_tcp_a_non_invite_server_terminates_with_its_final_response() {
    let mut h = Harness::new();
    let opt = request_via(Method::Options, &via_with(Transport::Tcp, "z9hG4bKt5"), 1);
    let id = new_request_id(&h.receive(opt.clone(), tcp(ALICE)));
    let out = h.respond(id, &response(&opt, 200, Some("b")));
    assert!(
        matches!(events(&out)[..], [Event::Terminated { id: i }] if *i == id),
        "Timer J = 0"
    );
}

#[test]
fn responses_out_of_place_are_refused_with_typed_errors() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKs8");
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    h.respond(id, &response(&inv, 486, Some("b")));
    assert_eq!(
        h.layer
            .send_response(id, &response(&inv, 200, Some("b")), h.now),
        Err(TransactionError::InvalidState(State::Completed))
    );
    let (cid, _) = h.send(invite("z9hG4bKc8"), udp(BOB));
    assert_eq!(
        h.layer
            .send_response(cid, &response(&inv, 200, None), h.now),
        Err(TransactionError::NotServer)
    );
    let ack = request(Method::Ack, "z9hG4bKc9");
    assert_eq!(
        h.layer.send_request(ack, udp(BOB), h.now),
        Err(TransactionError::AckIsNotATransaction)
    );
    assert_eq!(
        h.layer.send_request(invite("z9hG4bKc8"), udp(BOB), h.now),
        Err(TransactionError::DuplicateBranch)
    );
    assert_eq!(
        h.layer.send_request(invite("z9hG4bK"), udp(BOB), h.now),
        Err(TransactionError::MissingBranch)
    );
}

// ---- CANCEL ----

#[test]
fn a_cancel_matching_an_invite_is_answered_200_and_the_tu_sends_487() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKc1");
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    h.respond(id, &response(&inv, 180, Some("b1")));
    let cancel = build_cancel(&inv).unwrap();
    let out = h.receive(cancel.clone(), udp(ALICE));
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    let Message::Response(ok) = parse(tx[0]) else {
        panic!()
    };
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.headers.cseq().unwrap().method, Method::Cancel);
    assert_eq!(
        ok.headers.to().unwrap().tag(),
        Some("b1"),
        "the INVITE's To tag"
    );
    assert!(
        matches!(events(&out)[..], [Event::Cancelled { invite, .. }] if *invite == id),
        "{out:?}"
    );
    let terminated = h.respond(id, &response(&inv, 487, Some("b1")));
    assert_eq!(status_of(transmits(&terminated)[0]), 487);
    let again = h.receive(cancel, udp(ALICE));
    assert_eq!(
        status_of(transmits(&again)[0]),
        200,
        "CANCEL retransmission"
    );
    assert!(events(&again).is_empty());
}

#[test]
fn a_cancel_matching_no_transaction_is_answered_481() {
    let mut h = Harness::new();
    let cancel = build_cancel(&invite("z9hG4bKnone")).unwrap();
    let out = h.receive(cancel, udp(ALICE));
    assert_eq!(status_of(transmits(&out)[0]), 481);
    assert!(events(&out).is_empty());
    assert_eq!(h.layer.stats().unmatched_cancels, 1);
}

#[test]
fn a_cancel_after_the_final_response_is_answered_200_without_effect() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKc2");
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    h.respond(id, &response(&inv, 200, Some("b1")));
    let out = h.receive(build_cancel(&inv).unwrap(), udp(ALICE));
    assert_eq!(status_of(transmits(&out)[0]), 200);
    assert!(events(&out).is_empty(), "nothing left to cancel");
}

#[test]
fn a_cancel_waits_for_a_provisional_response_before_it_is_sent() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKc3");
    let (id, _) = h.send(inv.clone(), udp(BOB));
    let cid = h.layer.cancel(id, h.now).unwrap();
    assert!(
        h.drain().is_empty(),
        "no CANCEL before a provisional response"
    );
    assert_eq!(
        h.layer.cancel(id, h.now),
        Err(TransactionError::AlreadyCancelled)
    );
    h.run_until(700);
    let out = h.receive(response(&inv, 180, Some("b1")), udp(BOB));
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].transaction, Some(cid));
    let Message::Request(cancel) = parse(tx[0]) else {
        panic!()
    };
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(cancel.uri, inv.uri);
    assert_eq!(
        cancel.headers.vias().unwrap(),
        vec![inv.headers.top_via().unwrap()]
    );
    assert_eq!(cancel.headers.to().unwrap(), inv.headers.to().unwrap());
    assert_eq!(cancel.headers.from().unwrap(), inv.headers.from().unwrap());
    assert_eq!(cancel.headers.call_id(), inv.headers.call_id());
    assert_eq!(
        cancel.headers.cseq().unwrap(),
        CSeq {
            seq: 1,
            method: Method::Cancel
        }
    );
    assert_eq!(
        cancel.headers.routes().unwrap(),
        inv.headers.routes().unwrap()
    );
    assert_eq!(h.layer.kind(cid), Some(Kind::NonInviteClient));

    let out = h.receive(response(&cancel, 200, Some("b1")), udp(BOB));
    assert!(matches!(events(&out)[..], [Event::Response { id: i, .. }] if *i == cid));
    let out = h.receive(response(&inv, 487, Some("b1")), udp(BOB));
    assert_eq!(transmits(&out).len(), 1, "ACK of the 487");
    assert_eq!(h.layer.state(id), Some(State::Completed));
}

#[test]
fn a_cancel_whose_invite_fails_first_is_never_sent() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKc4");
    let (id, _) = h.send(inv.clone(), udp(BOB));
    let cid = h.layer.cancel(id, h.now).unwrap();
    let out = h.receive(response(&inv, 503, Some("b")), udp(BOB));
    assert_eq!(transmits(&out).len(), 1, "only the ACK");
    assert!(events(&out).contains(&&Event::Terminated { id: cid }));
    assert_eq!(
        h.layer.cancel(id, h.now),
        Err(TransactionError::AlreadyCancelled)
    );
    let (id2, _) = h.send(invite("z9hG4bKc5"), udp(BOB));
    h.receive(response(&invite("z9hG4bKc5"), 200, Some("b")), udp(BOB));
    assert_eq!(
        h.layer.cancel(id2, h.now),
        Err(TransactionError::TooLateToCancel)
    );
}

// ---- matching ----

#[test]
fn an_rfc_2543_invite_without_branch_matches_its_retransmission_and_its_ack() {
    let mut h = Harness::new();
    let via = "SIP/2.0/UDP 192.0.2.1:5060";
    let inv = request_via(Method::Invite, via, 56);
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    let again = h.receive(inv.clone(), udp(ALICE));
    assert!(events(&again).is_empty(), "matched RFC 2543-style");
    assert_eq!(status_of(transmits(&again)[0]), 100);

    let busy = response(&inv, 486, Some("ours"));
    h.respond(id, &busy);
    let mut wrong_ack = build_ack_for_non2xx(&inv, &busy).unwrap();
    wrong_ack
        .headers
        .set(
            HeaderName::To,
            &name_addr("sip:bob@example.com", Some("other")),
        )
        .unwrap();
    let out = h.receive(wrong_ack, udp(ALICE));
    assert!(
        matches!(events(&out)[..], [Event::Ack { invite: None, .. }]),
        "an ACK with another To tag is not this transaction's"
    );
    assert_eq!(h.layer.state(id), Some(State::Completed));
    let ack = build_ack_for_non2xx(&inv, &busy).unwrap();
    assert!(h.receive(ack, udp(ALICE)).is_empty());
    assert_eq!(h.layer.state(id), Some(State::Confirmed));
}

#[test]
fn a_branch_that_is_only_the_magic_cookie_is_matched_rfc_2543_style() {
    // RFC 4475 badbranch: `branch=z9hG4bK` and nothing after it.
    let mut h = Harness::new();
    let opt = request(Method::Options, "z9hG4bK");
    let id = new_request_id(&h.receive(opt.clone(), udp(ALICE)));
    let mut other_call = opt.clone();
    other_call
        .headers
        .set(HeaderName::CallId, "another-call")
        .unwrap();
    let out = h.receive(other_call, udp(ALICE));
    assert_ne!(
        new_request_id(&out),
        id,
        "a different Call-ID is a new transaction"
    );
    assert!(
        h.receive(opt, udp(ALICE)).is_empty(),
        "the same request is absorbed"
    );
}

#[test]
fn an_rfc_2543_cancel_finds_its_invite() {
    let mut h = Harness::new();
    let inv = request_via(Method::Invite, "SIP/2.0/UDP 192.0.2.1:5060", 7);
    let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
    let out = h.receive(build_cancel(&inv).unwrap(), udp(ALICE));
    assert_eq!(status_of(transmits(&out)[0]), 200);
    assert!(matches!(events(&out)[..], [Event::Cancelled { invite, .. }] if *invite == id));
}

#[test]
fn the_same_branch_from_another_sent_by_is_another_transaction() {
    let mut h = Harness::new();
    let a = invite("z9hG4bKsame");
    let mut b = a.clone();
    b.headers
        .set(
            HeaderName::Via,
            &Via::new(
                Transport::Udp,
                Host::parse("198.51.100.9").unwrap(),
                None,
                "z9hG4bKsame",
            )
            .unwrap()
            .to_string(),
        )
        .unwrap();
    let ia = new_request_id(&h.receive(a, udp(ALICE)));
    let ib = new_request_id(&h.receive(b, udp("198.51.100.9:5060")));
    assert_ne!(ia, ib);
    assert_eq!(h.layer.len(), 2);
}

#[test]
fn stray_responses_are_counted_and_only_an_invite_2xx_goes_up() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bKnobody");
    assert!(
        h.receive(response(&inv, 180, Some("x")), udp(BOB))
            .is_empty()
    );
    assert!(
        h.receive(response(&inv, 486, Some("x")), udp(BOB))
            .is_empty()
    );
    let opt = request(Method::Options, "z9hG4bKnobody2");
    assert!(
        h.receive(response(&opt, 200, Some("x")), udp(BOB))
            .is_empty()
    );
    let out = h.receive(response(&inv, 200, Some("x")), udp(BOB));
    assert!(matches!(events(&out)[..], [Event::StrayResponse { .. }]));
    assert_eq!(h.layer.stats().stray_responses, 4);
}

#[test]
fn a_request_from_behind_a_nat_gets_received_and_rport_and_its_answers_follow_them() {
    let mut h = Harness::new();
    let mut inv = invite("z9hG4bKnat");
    inv.headers
        .set(
            HeaderName::Via,
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKnat;rport",
        )
        .unwrap();
    let nat = udp("203.0.113.4:40001");
    let out = h.receive(inv, nat.clone());
    assert_eq!(transmits(&out)[0].destination, nat);
    let Event::Request { request, .. } = events(&out)[0] else {
        panic!()
    };
    let via = request.headers.top_via().unwrap();
    assert_eq!(via.received(), Some("203.0.113.4".parse().unwrap()));
    assert_eq!(via.rport(), Some(Some(40001)));
    let Message::Response(trying) = parse(transmits(&out)[0]) else {
        panic!()
    };
    assert_eq!(
        trying.headers.top_via().unwrap(),
        via,
        "responses carry the stamped Via"
    );
}

#[test]
fn a_transport_error_ends_the_transaction_and_tells_the_tu() {
    let mut h = Harness::new();
    let (id, _) = h.send(invite("z9hG4bKte"), udp(BOB));
    h.layer.on_transport_error(id);
    let out = h.drain();
    assert_eq!(
        events(&out),
        [&Event::TransportError { id }, &Event::Terminated { id }]
    );
    assert!(h.layer.is_empty());
    assert_eq!(h.layer.next_timeout(), None);
}

#[test]
fn timers_follow_a_configured_t1_t2_and_t4() {
    let config = TransactionConfig {
        timers: TimerConfig {
            t1: Duration::from_millis(100),
            t2: Duration::from_millis(300),
            t4: Duration::from_millis(1_000),
            timer_d: Duration::from_secs(32),
        },
        send_trying: false,
    };
    let mut h = Harness::with(config);
    let opt = request(Method::Options, "z9hG4bKcfg");
    let (_, _) = h.send(opt.clone(), udp(BOB));
    let log = h.run_until(1_000);
    assert_eq!(transmit_times(&log), [100, 300, 600, 900]);
    h.receive(response(&opt, 200, None), udp(BOB));
    let log = h.run_until(10_000);
    assert!(matches!(
        event_log(&log)[..],
        [(2_000, Event::Terminated { .. })]
    ));
    let out = h.receive(invite("z9hG4bKcfg2"), udp(ALICE));
    assert!(transmits(&out).is_empty(), "send_trying off");
}

#[test]
fn the_helpers_draw_branches_tags_and_call_ids_from_the_injected_rng() {
    let sent_by = SentBy {
        transport: Transport::Udp,
        host: Host::parse("192.0.2.1").unwrap(),
        port: Some(5060),
    };
    let mut a = ChaCha8Rng::seed_from_u64(7);
    let mut b = ChaCha8Rng::seed_from_u64(7);
    let via = sent_by.via(&mut a);
    assert!(via.has_rfc3261_branch());
    assert_eq!(via.rport(), Some(None));
    assert_eq!(via, sent_by.via(&mut b), "same seed, same branch");
    let branch = transaction::new_branch(&mut a);
    assert!(
        branch.starts_with("z9hG4bK") && branch.len() == 7 + 32,
        "{branch}"
    );
    assert_ne!(transaction::new_tag(&mut a), transaction::new_tag(&mut a));
    assert_eq!(transaction::new_call_id(&mut a).len(), 32);
}

// ---- load ----

/// What a transaction of the load test must end with, and when (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Timeout(u64),
    AckTimeout(u64),
    TerminatedAt(u64),
}

/// Notes the outcome of each transaction and counts client retransmissions.
fn record(
    log: Vec<(u64, Output)>,
    seen: &mut HashMap<TransactionId, Expect>,
    client_sends: &mut HashMap<TransactionId, u32>,
) {
    for (t, o) in log {
        match o {
            Output::Event(Event::Timeout { id, .. }) => {
                assert!(seen.insert(id, Expect::Timeout(t)).is_none());
            }
            Output::Event(Event::AckTimeout { id }) => {
                assert!(seen.insert(id, Expect::AckTimeout(t)).is_none());
            }
            Output::Event(Event::Terminated { id }) => {
                seen.entry(id).or_insert(Expect::TerminatedAt(t));
            }
            Output::Transmit(Transmit {
                transaction: Some(id),
                ..
            }) => {
                if let Some(n) = client_sends.get_mut(&id) {
                    *n += 1;
                }
            }
            _ => {}
        }
    }
}

#[test]
fn ten_thousand_concurrent_transactions_release_their_memory_and_lose_no_timer() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut h = Harness::new();
    let mut expect = HashMap::new();
    let mut answers: Vec<(u64, TransactionId, Response)> = Vec::new();
    let mut client_sends = HashMap::new();
    let mut seen = HashMap::new();
    // Start 10,000 transactions within 10 s, a quarter of each machine, in time order.
    let mut starts: Vec<(u64, usize)> = (0..10_000)
        .map(|i| (rng.random_range(0..10_000u64), i))
        .collect();
    starts.sort_unstable();
    let mut pending_answers: Vec<(u64, usize, Request, TransactionId)> = Vec::new();
    for (at, i) in starts {
        let log = h.run_until(at);
        record(log, &mut seen, &mut client_sends);
        let branch = format!("z9hG4bKload{i}");
        match i % 4 {
            0 => {
                // Unanswered INVITE: Timer B.
                let (id, _) = h.send(invite(&branch), udp(BOB));
                expect.insert(id, Expect::Timeout(at + 32_000));
                client_sends.insert(id, 0u32);
            }
            1 => {
                // OPTIONS answered after 0-3 s: Completed, then Timer K.
                let opt = request(Method::Options, &branch);
                let (id, _) = h.send(opt.clone(), udp(BOB));
                let answer_at = at + rng.random_range(0..3_000u64);
                expect.insert(id, Expect::TerminatedAt(answer_at + 5_000));
                pending_answers.push((answer_at, 0, opt, id));
            }
            2 => {
                // Incoming INVITE rejected, never ACKed: Timers G and H.
                let inv = invite(&branch);
                let id = new_request_id(&h.receive(inv.clone(), udp(ALICE)));
                h.respond(id, &response(&inv, 486, Some("t")));
                expect.insert(id, Expect::AckTimeout(at + 32_000));
            }
            _ => {
                // Incoming OPTIONS answered at once: Timer J.
                let opt = request(Method::Options, &branch);
                let id = new_request_id(&h.receive(opt.clone(), udp(ALICE)));
                h.respond(id, &response(&opt, 200, Some("t")));
                expect.insert(id, Expect::TerminatedAt(at + 32_000));
            }
        }
    }
    assert_eq!(h.layer.len(), 10_000);
    pending_answers.sort_by_key(|p| p.0);
    for (at, _, req, id) in pending_answers {
        answers.push((at, id, response(&req, 200, Some("x"))));
    }

    for (at, _, resp) in answers {
        let log = h.run_until(at);
        record(log, &mut seen, &mut client_sends);
        h.receive(resp, udp(BOB));
    }
    let log = h.run_until(100_000);
    record(log, &mut seen, &mut client_sends);

    assert_eq!(seen.len(), 10_000);
    for (id, want) in &expect {
        assert_eq!(seen.get(id), Some(want), "{id}");
    }
    assert!(
        client_sends.values().all(|&n| n == 6),
        "every unanswered INVITE was retransmitted 6 times"
    );
    assert!(h.layer.is_empty());
    assert_eq!(h.layer.next_timeout(), None);
    assert_eq!(h.layer.timer_entries(), 0, "no timer entry left behind");
}

// ---- hostile input ----

#[test]
fn seeded_random_mutations_of_valid_messages_never_panic_and_leave_nothing_behind() {
    let inv = invite("z9hG4bKfuzz");
    let samples: Vec<Vec<u8>> = vec![
        Message::from(inv.clone()).to_vec(),
        Message::from(build_cancel(&inv).unwrap()).to_vec(),
        Message::from(request(Method::Ack, "z9hG4bKfuzz")).to_vec(),
        Message::from(request(Method::Options, "z9hG4bK")).to_vec(),
        Message::from(request_via(Method::Bye, "SIP/2.0/UDP 192.0.2.1", 3)).to_vec(),
        Message::from(response(&inv, 180, Some("t"))).to_vec(),
        Message::from(response(&inv, 200, Some("t"))).to_vec(),
        Message::from(response(&inv, 486, Some("t"))).to_vec(),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(4475);
    let mut h = Harness::new();
    // Client transactions for the mutated responses to hit (one INVITE, one OPTIONS:
    // the branch is shared, the method tells them apart).
    let clients = [
        h.send(invite("z9hG4bKfuzz"), udp(BOB)).0,
        h.send(request(Method::Options, "z9hG4bKfuzz"), udp(BOB)).0,
    ];
    let mut parsed = 0;
    let mut ids: Vec<TransactionId> = Vec::new();
    for round in 0..20_000u64 {
        let mut bytes = samples[rng.random_range(0..samples.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..4) {
                0 => bytes[at] = rng.random(),
                1 => {
                    bytes[at] = {
                        let pool = b"z9hG4bK;,:<> \r\n0123456789";
                        pool[rng.random_range(0..pool.len())]
                    }
                }
                2 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, rng.random()),
            }
            if bytes.is_empty() {
                bytes.push(b'S');
            }
        }
        if let Ok(m) = parse_datagram(&bytes) {
            parsed += 1;
            let peer = if rng.random_bool(0.5) {
                udp(ALICE)
            } else {
                tcp(ALICE)
            };
            h.layer.on_message(m, peer, h.now);
        }
        for o in h.drain() {
            if let Output::Event(Event::Request { id, request, .. }) = o {
                let code = [100, 180, 200, 404, 486][rng.random_range(0..5)];
                let _ = h
                    .layer
                    .send_response(id, &response(&request, code, Some("z")), h.now);
                ids.push(id);
            }
        }
        if rng.next_u32() % 7 == 0
            && let Some(&id) = ids.get(rng.random_range(0..ids.len().max(1)))
        {
            let _ = h
                .layer
                .send_response(id, &response(&inv, 200, Some("z")), h.now);
        }
        let step = h.ms() + rng.random_range(0..50);
        h.run_until(step);
        if round % 5_000 == 0 {
            h.drain();
        }
    }
    assert!(
        parsed > 1_000,
        "mutations kept enough parseable messages: {parsed}"
    );
    h.run_until(h.ms() + 600_000);
    // Only server transactions still waiting for the TU's final response may remain:
    // RFC 3261 gives them no timer. Once answered, they must end too.
    for id in ids {
        if let Some(state) = h.layer.state(id) {
            assert!(matches!(state, State::Trying | State::Proceeding), "{id}");
            assert!(h.layer.kind(id).is_some_and(Kind::is_server));
            h.layer
                .send_response(id, &response(&inv, 500, Some("z")), h.now)
                .unwrap();
        }
    }
    h.run_until(h.ms() + 600_000);
    // Our INVITE may sit in Proceeding too, if a mutated 1xx reached it.
    for id in clients {
        if let Some(state) = h.layer.state(id) {
            assert_eq!(state, State::Proceeding);
            assert_eq!(h.layer.kind(id), Some(Kind::InviteClient));
        }
    }
    assert!(h.layer.len() <= 1, "{} left", h.layer.len());
    assert_eq!(h.layer.next_timeout(), None);
    assert_eq!(h.layer.timer_entries(), 0);
}

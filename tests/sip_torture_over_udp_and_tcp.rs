//! The RFC 4475 and RFC 5118 torture messages sent to a running `confer serve` over UDP
//! and over TCP, each checked on the wire: the final status code, silence where the
//! message must be dropped, and for TCP whether the connection was closed. After every
//! message an OPTIONS must still get 200, so the listener keeps serving whatever it got.
//!
//! What each message must produce comes from `pstn-bridge/tests/data/sip-torture/INDEX.md`
//! (what the SIP core decides is pinned in `pstn-bridge/tests/torture.rs`); the tables
//! below add what confer as an application answers to the messages that pass: INVITEs
//! to a URI that dials no configured number get 404, a REGISTER is challenged by the
//! registrar (401; it carries no credentials), MESSAGE is not served (405), an OPTIONS
//! outside a dialog gets 200, and requests whose To carries a tag name a dialog confer
//! does not have (481). A few torture REGISTERs reuse the Via branch of an earlier one:
//! over UDP (each message from a new port) they match the earlier transaction, whose
//! answer goes to the earlier message's port (RFC 3261 section 17.2.3), so the new
//! socket hears nothing.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use std::time::Duration;

use sip_support::{SipServer, TcpOutcome, UdpClient, header_of, options, tcp_exchange};

#[path = "../pstn-bridge/tests/torture_files/mod.rs"]
mod torture_files;

use torture_files::FILES;

/// What a message must produce over each transport: the final status (`None`: silence)
/// and, over TCP, whether the server closes the connection.
struct Expect {
    udp: Option<u16>,
    tcp: Option<u16>,
    tcp_closes: bool,
}

const fn same(status: u16) -> Expect {
    Expect {
        udp: Some(status),
        tcp: Some(status),
        tcp_closes: false,
    }
}

const SILENT: Expect = Expect {
    udp: None,
    tcp: None,
    tcp_closes: false,
};

/// Answered 400 over UDP; on a stream the framing is lost, so 400 and the connection
/// closes (`ncl`, `mcl01`: invalid or conflicting Content-Length).
const FRAMING_400: Expect = Expect {
    udp: Some(400),
    tcp: Some(400),
    tcp_closes: true,
};

/// Over TCP the message never completes (`clerr`: Content-Length beyond the bytes sent;
/// `baddn`: no empty line ends the head): the slow-message timeout closes the
/// connection without an answer.
const NEVER_COMPLETES: Expect = Expect {
    udp: Some(400),
    tcp: None,
    tcp_closes: true,
};

/// The RFC 5118 INVITEs whose SDP runs a few bytes past their Content-Length: over UDP
/// the extra bytes are ignored; over TCP they start a message that never completes.
const INVITE_WITH_TRAILING_BYTES: Expect = Expect {
    udp: Some(404),
    tcp: Some(404),
    tcp_closes: true,
};

/// A REGISTER whose Via branch an earlier REGISTER used: over UDP a retransmission of
/// that transaction (its answer goes to the earlier port); over TCP the earlier
/// transaction ended with its answer (Timer J is 0 on reliable transports), so this is a
/// new one, challenged.
const BRANCH_REUSED: Expect = Expect {
    udp: None,
    tcp: Some(401),
    tcp_closes: false,
};

const EXPECTED: &[(&str, Expect)] = &[
    // 3.1.1 valid: processed; INVITEs dial no configured number (404), REGISTER is
    // challenged (401), MESSAGE is not served here (405), OPTIONS is answered (200), an in-dialog request
    // for a dialog we do not have gets 481 (wsinv's To carries a tag).
    ("wsinv.dat", same(481)),
    ("intmeth.dat", same(501)),
    ("esc01.dat", same(404)),
    ("escnull.dat", same(401)),
    ("esc02.dat", same(501)),
    ("lwsdisp.dat", same(200)),
    ("longreq.dat", same(404)),
    // The REGISTER is answered; over UDP the INVITE-like trailing octets are ignored,
    // over TCP they are a second message whose body never arrives in full.
    (
        "dblreq.dat",
        Expect {
            udp: Some(401),
            tcp: None,
            tcp_closes: true,
        },
    ),
    ("semiuri.dat", same(200)),
    ("transports.dat", same(200)),
    ("mpart01.dat", same(405)),
    ("unreason.dat", SILENT),
    ("noreason.dat", SILENT),
    // 3.1.2 invalid
    ("badinv01.dat", same(400)),
    ("clerr.dat", NEVER_COMPLETES),
    ("ncl.dat", FRAMING_400),
    ("scalar02.dat", same(400)),
    ("scalarlg.dat", SILENT),
    ("quotbal.dat", same(400)),
    ("ltgtruri.dat", same(400)),
    ("lwsruri.dat", same(400)),
    ("lwsstart.dat", same(400)),
    ("trws.dat", same(400)),
    ("escruri.dat", same(400)),
    ("baddate.dat", same(404)),
    ("regbadct.dat", same(400)),
    ("badaspec.dat", same(400)),
    ("baddn.dat", NEVER_COMPLETES),
    ("badvers.dat", same(505)),
    ("mismatch01.dat", same(400)),
    ("mismatch02.dat", same(501)),
    ("bigcode.dat", SILENT),
    // 3.2
    ("badbranch.dat", same(200)),
    // 3.3
    ("insuf.dat", same(400)),
    ("unkscm.dat", same(416)),
    ("novelsc.dat", same(416)),
    ("unksm2.dat", same(400)),
    ("bext01.dat", same(420)),
    ("invut.dat", same(415)),
    ("regaut01.dat", same(401)),
    ("multi01.dat", same(400)),
    ("mcl01.dat", FRAMING_400),
    ("bcast.dat", SILENT),
    ("zeromf.dat", same(200)),
    ("cparam01.dat", same(401)),
    ("cparam02.dat", BRANCH_REUSED),
    ("regescrt.dat", BRANCH_REUSED),
    ("sdp01.dat", same(406)),
    // 3.4: an RFC 2543 INVITE is processed (404) over UDP, where the body is the rest of
    // the datagram; on a stream, a message without Content-Length cannot be framed.
    (
        "inv2543.dat",
        Expect {
            udp: Some(404),
            tcp: Some(400),
            tcp_closes: true,
        },
    ),
    // Not an RFC message: no SIP-Version, no Via to answer along.
    ("test.dat", SILENT),
    // RFC 5118
    ("rfc5118/ipv4-mapped-ipv6", INVITE_WITH_TRAILING_BYTES),
    ("rfc5118/ipv6-bad", same(400)),
    ("rfc5118/ipv6-bug-abnf-3-colons", same(400)),
    ("rfc5118/ipv6-correct-abnf-2-colons", same(200)),
    ("rfc5118/ipv6-good", same(401)),
    ("rfc5118/ipv6-in-sdp", INVITE_WITH_TRAILING_BYTES),
    ("rfc5118/mult-ip-in-header", same(481)),
    ("rfc5118/mult-ip-in-sdp", INVITE_WITH_TRAILING_BYTES),
    ("rfc5118/port-ambiguous", BRANCH_REUSED),
    ("rfc5118/port-unambiguous", BRANCH_REUSED),
    ("rfc5118/via-received-param-no-delim", same(200)),
    ("rfc5118/via-received-param-with-delim", same(481)),
];

fn expected(name: &str) -> &'static Expect {
    EXPECTED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no expectation for {name}"))
}

/// How long silence must last to count as silence.
const QUIET: Duration = Duration::from_millis(300);
/// How long an answer may take.
const ANSWER: Duration = Duration::from_secs(3);

fn server(slot: u16) -> SipServer {
    SipServer::start(
        slot,
        10,
        &[
            // Sixty-odd messages and probes in a second: no rate limit here (the flood
            // test has its own).
            ("CONFER_SIP_RATE_PER_SECOND", "0"),
            ("CONFER_SIP_MESSAGE_TIMEOUT_MS", "500"),
            ("CONFER_DIAL_IN", "+15555550100=torture"),
        ],
    )
}

/// The OPTIONS probe's answer on `client` (other answers, e.g. retransmissions, are
/// skipped).
fn probe_udp(client: &UdpClient, n: u32) -> Option<u16> {
    client.send(&options("UDP", client.addr(), n));
    loop {
        let (status, bytes) = client.final_response(ANSWER)?;
        if header_of(&bytes, "Call-ID").is_some_and(|c| c.starts_with("options-")) {
            return Some(status);
        }
    }
}

#[test]
fn every_torture_message_gets_its_answer_over_udp() {
    assert_eq!(FILES.len(), EXPECTED.len());
    let s = server(0);
    let mut wrong = Vec::new();
    for (i, (name, bytes)) in FILES.iter().enumerate() {
        let want = expected(name);
        // A fresh socket per message: retransmitted answers to an earlier INVITE (we
        // send no ACK) cannot be taken for this one's.
        let client = UdpClient::bind("127.0.0.1:0", s.udp);
        client.send(bytes);
        let got = client
            .final_response(if want.udp.is_some() { ANSWER } else { QUIET })
            .map(|(status, _)| status);
        if got != want.udp {
            wrong.push(format!("{name}: answered {got:?}, want {:?}", want.udp));
        }
        let probe = probe_udp(&client, i as u32 + 1);
        if probe != Some(200) {
            wrong.push(format!("{name}: the OPTIONS after it got {probe:?}"));
        }
    }
    assert!(s.server.metric("confer_sip_rejected_total") >= 20.0);
    assert!(wrong.is_empty(), "over UDP:\n{}", wrong.join("\n"));
}

#[test]
fn every_torture_message_gets_its_answer_over_tcp() {
    let s = server(1);
    let mut wrong = Vec::new();
    for (i, (name, bytes)) in FILES.iter().enumerate() {
        let want = expected(name);
        let wait = if want.tcp_closes {
            // The slow-message timeout is 500 ms.
            Duration::from_secs(3)
        } else if want.tcp.is_some() {
            ANSWER
        } else {
            QUIET
        };
        let got: TcpOutcome = tcp_exchange(s.tcp, bytes, want.tcp.is_some(), want.tcp_closes, wait);
        let status = got.statuses.first().copied();
        if status != want.tcp || got.statuses.len() > 1 || got.closed != want.tcp_closes {
            wrong.push(format!(
                "{name}: answered {:?}, closed {}; want {:?}, closed {}",
                got.statuses, got.closed, want.tcp, want.tcp_closes
            ));
        }
        let from = "127.0.0.1:9".parse().expect("literal");
        let probe = tcp_exchange(
            s.tcp,
            &options("TCP", from, i as u32 + 1),
            true,
            false,
            ANSWER,
        );
        if probe.statuses != [200] {
            wrong.push(format!(
                "{name}: the OPTIONS after it got {:?}",
                probe.statuses
            ));
        }
    }
    assert!(
        s.server
            .metric("confer_sip_connections_closed_total{reason=\"framing\"}")
            >= 3.0
    );
    assert!(
        s.server
            .metric("confer_sip_connections_closed_total{reason=\"timeout\"}")
            >= 2.0
    );
    assert!(wrong.is_empty(), "over TCP:\n{}", wrong.join("\n"));
}

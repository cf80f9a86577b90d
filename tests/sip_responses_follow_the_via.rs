//! Where answers to UDP requests go (RFC 3261 §18.2.2, RFC 3581), with
//! `sip_force_rport` off: to the source address and the Via's port, or to the source
//! port when the Via asks for `rport`; the same for answers the listener gives itself
//! (a 505) and for those of the transaction layer (an OPTIONS' 200). With the default
//! (`sip_force_rport` on) every answer goes to the source port, which the torture test
//! relies on.

#[path = "../engine/tests/leg_harness/mod.rs"]
mod leg_harness;
mod serve_harness;
mod sip_support;

use std::net::SocketAddr;
use std::time::Duration;

use sip_support::{SipServer, UdpClient, status_of};

fn options(via: &str, branch: &str, version: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:confer@127.0.0.1 SIP/{version}\r\n\
         Via: SIP/2.0/UDP {via};branch=z9hG4bK-{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag={branch}\r\n\
         To: <sip:confer@127.0.0.1>\r\n\
         Call-ID: {branch}@test\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn without_forced_rport_answers_go_to_the_via_port_unless_rport_is_asked_for() {
    let s = SipServer::start(0, 4, &[("CONFER_SIP_FORCE_RPORT", "false")]);
    let sender = UdpClient::bind("127.0.0.1:0", s.udp);
    let named = UdpClient::bind("127.0.0.1:0", s.udp);
    let via: SocketAddr = named.addr();
    let wait = Duration::from_secs(2);
    let quiet = Duration::from_millis(300);

    sender.send(&options(&via.to_string(), "plain", "2.0"));
    assert_eq!(named.recv(wait).and_then(|b| status_of(&b)), Some(200));
    assert!(sender.recv(quiet).is_none(), "nothing to the source port");

    sender.send(&options(&format!("{via};rport"), "rport", "2.0"));
    assert_eq!(sender.recv(wait).and_then(|b| status_of(&b)), Some(200));
    assert!(named.recv(quiet).is_none(), "nothing to the Via port");

    // A rejection by the listener itself follows the same rule.
    sender.send(&options(&via.to_string(), "badvers", "7.0"));
    assert_eq!(named.recv(wait).and_then(|b| status_of(&b)), Some(505));
    assert!(sender.recv(quiet).is_none());
}

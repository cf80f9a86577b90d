//! Requests the transaction layer builds from others (CANCEL, the ACK of a non-2xx final
//! response) and the random identifiers every new request needs (branch, tag, Call-ID),
//! drawn from an injected RNG.

use std::fmt::Write as _;

use rand::RngCore;

use super::super::header::{HeaderError, HeaderName, Headers};
use super::super::message::{Method, Request, Response};
use super::super::uri::Host;
use super::super::value::{BRANCH_MAGIC_COOKIE, Param, Token, Transport, Via};

/// Appends `words` random 64-bit words as lower-case hex.
fn push_hex(out: &mut String, rng: &mut impl RngCore, words: usize) {
    for _ in 0..words {
        // Writing into a String cannot fail.
        let _ = write!(out, "{:016x}", rng.next_u64());
    }
}

/// A new RFC 3261 branch: the magic cookie and 128 random bits.
pub fn new_branch(rng: &mut impl RngCore) -> String {
    let mut s = String::with_capacity(BRANCH_MAGIC_COOKIE.len() + 32);
    s.push_str(BRANCH_MAGIC_COOKIE);
    push_hex(&mut s, rng, 2);
    s
}

/// A new From/To tag: 64 random bits (RFC 3261 §19.3 asks for at least 32).
pub fn new_tag(rng: &mut impl RngCore) -> String {
    let mut s = String::with_capacity(16);
    push_hex(&mut s, rng, 1);
    s
}

/// A new Call-ID: 128 random bits, no host part (it would leak an address for nothing).
pub fn new_call_id(rng: &mut impl RngCore) -> String {
    let mut s = String::with_capacity(32);
    push_hex(&mut s, rng, 2);
    s
}

/// Where we send from: the sent-by of the Via of every request we originate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SentBy {
    /// The transport written in the Via.
    pub transport: Transport,
    /// Our host (address or name) as peers should reach it.
    pub host: Host,
    /// Our port, when not the transport's default.
    pub port: Option<u16>,
}

impl SentBy {
    /// `SIP/2.0/<transport> host[:port];branch=z9hG4bK...;rport`: a Via with a fresh
    /// branch, asking for symmetric response routing (RFC 3581).
    pub fn via(&self, rng: &mut impl RngCore) -> Via {
        let branch = new_branch(rng);
        // A cookie and hex digits form a token, the only thing Via::new checks.
        let mut via = Via::new(
            self.transport.clone(),
            self.host.clone(),
            self.port,
            &branch,
        )
        .expect("a generated branch is a token");
        via.params.push(Param {
            name: Token::new("rport").expect("a literal token"),
            value: None,
        });
        via
    }
}

/// Copies every field named `name` from `from` to `to`, in order. Values come from a
/// parsed or built message and carry no CR/LF, so pushing them cannot fail.
fn copy_all(from: &Headers, to: &mut Headers, name: HeaderName) {
    for v in from.get_all(name) {
        let _ = to.push(name, v);
    }
}

/// Copies the one field `name`, which must be present exactly once.
fn copy_one(from: &Headers, to: &mut Headers, name: HeaderName) -> Result<(), HeaderError> {
    let v = from.single(name)?.ok_or(HeaderError::Missing(name))?;
    let _ = to.push(name, v);
    Ok(())
}

/// The parts CANCEL and the non-2xx ACK share with the INVITE (RFC 3261 §9.1, §17.1.1.3):
/// Request-URI, the INVITE's top Via alone, Max-Forwards 70, From, Call-ID, CSeq number
/// with `method`, and `to` (the INVITE's To for CANCEL, the response's for ACK).
fn derived(invite: &Request, method: Method, to: &str) -> Result<Request, HeaderError> {
    let h = &invite.headers;
    let via = h.top_via()?;
    let cseq = h.cseq()?;
    let mut req = Request::new(method.clone(), invite.uri.clone());
    let out = &mut req.headers;
    let _ = out.push(HeaderName::Via, &via.to_string());
    let _ = out.push(HeaderName::MaxForwards, "70");
    copy_one(h, out, HeaderName::From)?;
    let _ = out.push(HeaderName::To, to);
    copy_one(h, out, HeaderName::CallId)?;
    let _ = out.push(HeaderName::CSeq, &format!("{} {method}", cseq.seq));
    copy_all(h, out, HeaderName::Route);
    Ok(req)
}

/// The CANCEL for an INVITE we sent (RFC 3261 §9.1): same Request-URI, Call-ID, To, From
/// and CSeq number (method CANCEL), a single Via equal to the INVITE's top Via, the
/// INVITE's Route header fields. Send it with
/// [`TransactionLayer::cancel`](super::TransactionLayer::cancel), which waits for a
/// provisional response as §9.1 requires.
pub fn build_cancel(invite: &Request) -> Result<Request, HeaderError> {
    let to = invite
        .headers
        .single(HeaderName::To)?
        .ok_or(HeaderError::Missing(HeaderName::To))?;
    derived(invite, Method::Cancel, to)
}

/// The ACK the INVITE client transaction sends for a 300-699 response (RFC 3261
/// §17.1.1.3): as [`build_cancel`] but method ACK and the To of the response (with the
/// tag the UAS added). The ACK of a 2xx is a new request built by the dialog
/// ([`Dialog::create_ack`](crate::sip::dialog::Dialog::create_ack)).
pub fn build_ack_for_non2xx(invite: &Request, response: &Response) -> Result<Request, HeaderError> {
    let to = response
        .headers
        .single(HeaderName::To)?
        .ok_or(HeaderError::Missing(HeaderName::To))?;
    derived(invite, Method::Ack, to)
}

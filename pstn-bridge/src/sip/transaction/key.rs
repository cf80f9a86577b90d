//! Transaction matching keys (RFC 3261 §17.1.3, §17.2.3).
//!
//! - Client: the branch of the top Via and the CSeq method (a CANCEL shares its INVITE's
//!   branch). Our branches are 128 random bits, so sent-by adds nothing.
//! - Server with an RFC 3261 branch (magic cookie and more): branch, sent-by (host
//!   compared case-insensitively, port as written) and method, with ACK counted as
//!   INVITE.
//! - Server without one (RFC 2543 peers, RFC 4475 `badbranch`): Request-URI, Call-ID,
//!   From tag, CSeq number, method (ACK as INVITE) and the whole top Via. The To tag,
//!   which §17.2.3 also compares, differs between an INVITE and its ACK (the ACK carries
//!   the tag of our response), so it is checked after the lookup by the layer: equal to
//!   the request's for retransmissions and CANCEL, equal to our response's for ACK.

use super::super::message::{Method, Request};
use super::super::value::{CSeq, Via};

/// A client transaction's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    branch: Box<str>,
    method: Method,
}

impl ClientKey {
    /// The key of a request we send or of a response to it; `None` without a branch.
    pub(crate) fn new(via: &Via, method: &Method) -> Option<Self> {
        Some(Self {
            branch: via.branch()?.into(),
            method: method.clone(),
        })
    }
}

/// A server transaction's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ServerKey {
    /// RFC 3261 matching.
    Branch {
        branch: Box<str>,
        host: Box<str>,
        port: Option<u16>,
        method: Method,
    },
    /// RFC 2543 matching.
    Legacy {
        request_uri: Box<str>,
        call_id: Box<str>,
        from_tag: Box<str>,
        cseq: u32,
        method: Method,
        via: Box<str>,
    },
}

impl ServerKey {
    /// The key `req` matches as a request of method `as_method` (its own method with ACK
    /// mapped to INVITE; INVITE when looking for the transaction a CANCEL cancels).
    /// `None` when a header the key needs is missing or malformed.
    pub(crate) fn new(req: &Request, via: &Via, cseq: &CSeq, as_method: &Method) -> Option<Self> {
        let method = match as_method {
            Method::Ack => Method::Invite,
            m => m.clone(),
        };
        if via.has_rfc3261_branch() {
            return Some(ServerKey::Branch {
                branch: via.branch()?.into(),
                host: via.host.to_string().to_ascii_lowercase().into(),
                port: via.port,
                method,
            });
        }
        let from = req.headers.from().ok()?;
        Some(ServerKey::Legacy {
            request_uri: req.uri.to_string().into(),
            call_id: req.headers.call_id().ok()?.into(),
            from_tag: from.tag().unwrap_or("").into(),
            cseq: cseq.seq,
            method,
            via: via.to_string().into(),
        })
    }

    /// True for RFC 2543 matching, where the layer also compares To tags.
    pub(crate) fn is_legacy(&self) -> bool {
        matches!(self, ServerKey::Legacy { .. })
    }
}

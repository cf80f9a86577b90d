//! The SIP dialog layer (RFC 3261 §12) with session timers (RFC 4028), sans-IO.
//!
//! A [`Dialog`] is the state two UAs share for one call leg: its id (Call-ID, local and
//! remote tag), CSeq numbers, the URIs for From/To, the remote target (the peer's
//! Contact), the route set, and whether it is early or confirmed. confer is a B2BUA, so
//! every call leg is one dialog, on the UAC side (dial-out, our INVITE) or the UAS side
//! (dial-in, their INVITE).
//!
//! # Drive contract
//!
//! - UAS: a dialog-creating INVITE arrives; once the TU sends a 101-299 response with a
//!   To tag, [`Dialog::uas`] creates it (early for 1xx) and [`DialogSet::insert`] stores
//!   it. Later responses to that INVITE go through [`Dialog::on_local_response`]
//!   (2xx confirms, a failure ends the early dialog).
//! - UAC: each 101-299 response with a To tag to our INVITE creates or updates a dialog:
//!   look it up with [`DialogSet::match_response`], else [`Dialog::uac`]; feed later
//!   responses to [`Dialog::on_remote_response`]. The ACK of a 2xx is
//!   [`Dialog::create_ack`] (or [`ack_for_2xx`] without a stored dialog), sent with
//!   [`TransactionLayer::send_stateless`](super::transaction::TransactionLayer::send_stateless).
//! - In-dialog requests arriving: [`DialogSet::match_request`] finds the dialog (or says
//!   the request is out of dialog, or that its dialog is unknown: answer
//!   [`unknown_dialog_response`], 481); [`Dialog::on_request`] checks the CSeq order (500
//!   when lower than the last, §12.2.2) and ends the dialog on BYE.
//! - In-dialog requests we send: [`Dialog::create_request`] (BYE, re-INVITE, UPDATE,
//!   INFO, REFER, ...): Request-URI and Route from the remote target and the route set
//!   (loose or strict routing, §12.2.1.1), From/To/Call-ID, CSeq incremented, a fresh
//!   Via branch. The TU adds a body and hands it to the transaction layer.
//! - Time: [`Dialog::next_timeout`] / [`Dialog::handle_timeout`] (session timer), or for
//!   many dialogs [`DialogSet::next_timeout`] / [`DialogSet::handle_timeout`].
//!
//! # Deliberate choices
//!
//! - The remote target of a re-INVITE or UPDATE is taken from its Contact when the UAS
//!   answers it with a 2xx (RFC 6141 §3.3), not on receipt as RFC 3261 first said.
//! - A 1xx or 2xx without Contact still creates a UAC dialog, with the Request-URI as
//!   remote target until a response brings a Contact (gateways send 18x without one); a
//!   UAS dialog needs the INVITE's Contact.
//! - The secure flag is set for a `sips:` Request-URI (a `sips:` hop must run over TLS
//!   anyway, so the transport is not asked separately).
//! - CANCEL is not an in-dialog request of this layer: it must copy its INVITE's Via
//!   branch, so it is built by [`build_cancel`](super::transaction::build_cancel).

mod session_timer;

pub use session_timer::{
    DEFAULT_SESSION_INTERVAL, IntervalTooSmall, MIN_SESSION_INTERVAL, MinSe, Negotiation,
    Refresher, SessionAnswer, SessionEvent, SessionExpires, SessionOffer, SessionTimer,
    SessionTimerConfig, SessionTimerError, negotiate,
};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use rand::RngCore;

use super::check::{ResponseBasis, build_response};
use super::header::{HeaderError, HeaderName, Headers};
use super::message::{Method, Request, Response, StatusCode};
use super::transaction::SentBy;
use super::uri::Uri;
use super::value::NameAddr;

/// A dialog's identity (RFC 3261 §12): Call-ID and the two tags, from our point of view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag (From of our requests, To of theirs).
    pub local_tag: String,
    /// The peer's tag (empty for an RFC 2543 peer that sent none).
    pub remote_tag: String,
}

impl DialogId {
    /// The id an incoming request names (local tag from To, remote from From); `Ok(None)`
    /// when its To has no tag (not an in-dialog request).
    pub fn of_request(req: &Request) -> Result<Option<DialogId>, HeaderError> {
        let h = &req.headers;
        let to = h.to()?;
        let Some(local) = to.tag() else {
            return Ok(None);
        };
        Ok(Some(DialogId {
            call_id: h.call_id()?.to_owned(),
            local_tag: local.to_owned(),
            remote_tag: h.from()?.tag().unwrap_or("").to_owned(),
        }))
    }

    /// The id an incoming response (to our request) names (local tag from From, remote
    /// from To); `Ok(None)` when its To has no tag.
    pub fn of_response(resp: &Response) -> Result<Option<DialogId>, HeaderError> {
        let h = &resp.headers;
        let to = h.to()?;
        let Some(remote) = to.tag() else {
            return Ok(None);
        };
        Ok(Some(DialogId {
            call_id: h.call_id()?.to_owned(),
            local_tag: h.from()?.tag().unwrap_or("").to_owned(),
            remote_tag: remote.to_owned(),
        }))
    }
}

/// Which side of the dialog-creating INVITE we were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We sent the INVITE.
    Uac,
    /// We received it.
    Uas,
}

/// A dialog's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialogState {
    /// Created by a provisional response.
    Early,
    /// A 2xx was sent or received.
    Confirmed,
    /// Ended (BYE, a failure response to the INVITE of an early dialog, 481/408 to an
    /// in-dialog request); remove it from the set.
    Terminated,
}

/// Why a dialog could not be created or a request built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header needed is missing or malformed.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// Only 101-299 responses with a To tag create dialogs.
    #[error("response {0} does not create a dialog")]
    NotDialogCreating(StatusCode),
    /// The response's To has no tag.
    #[error("response without To tag")]
    NoToTag,
    /// The dialog-creating INVITE has no Contact (the remote target).
    #[error("no Contact to use as remote target")]
    NoContact,
    /// The message belongs to another dialog (another fork, another call).
    #[error("message belongs to another dialog")]
    WrongDialog,
    /// The dialog has ended.
    #[error("dialog terminated")]
    Terminated,
    /// ACK needs an INVITE sent in this dialog.
    #[error("no INVITE to acknowledge")]
    NoInvite,
    /// CANCEL is built from its INVITE's transaction, not by the dialog.
    #[error("CANCEL is built by transaction::build_cancel")]
    Cancel,
    /// The local CSeq reached 2^32-1.
    #[error("local CSeq exhausted")]
    CSeqExhausted,
}

/// Why an in-dialog request is refused ([`Dialog::on_request`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InDialogReject {
    /// The CSeq is below the last one received (§12.2.2): 500.
    #[error("CSeq {received} is below the last one, {last}")]
    OutOfOrder {
        /// The request's CSeq number.
        received: u32,
        /// The remote CSeq of the dialog.
        last: u32,
    },
    /// The request names another dialog: 481.
    #[error("request belongs to another dialog")]
    WrongDialog,
    /// The dialog has ended: 481.
    #[error("dialog terminated")]
    Terminated,
    /// A header is malformed: 400.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

impl InDialogReject {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            InDialogReject::OutOfOrder { .. } => StatusCode::SERVER_INTERNAL_ERROR,
            InDialogReject::WrongDialog | InDialogReject::Terminated => {
                StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST
            }
            InDialogReject::Header(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The response to `request` (none for an ACK, which is never answered).
    pub fn response(&self, request: &Request) -> Option<Response> {
        (request.method != Method::Ack).then(|| {
            let status = self.status();
            build_response(
                &ResponseBasis::from_request(request),
                status,
                status.canonical_reason(),
                None,
            )
        })
    }
}

/// The 481 for a request whose To tag names no dialog we have (§12.2.2); `None` for an
/// ACK, which is dropped.
pub fn unknown_dialog_response(request: &Request) -> Option<Response> {
    InDialogReject::WrongDialog.response(request)
}

/// A dialog timer that fired ([`Dialog::handle_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogTimer {
    /// Send a session refresh (re-INVITE or UPDATE) with
    /// [`SessionTimer::refresh_offer`].
    SessionRefresh,
    /// The session expired without refresh: send BYE.
    SessionExpired,
}

/// The name-addr without its tag: the URI (and display name) of From/To.
fn untagged(mut a: NameAddr) -> NameAddr {
    a.params.remove("tag");
    a
}

fn first_contact(h: &Headers) -> Result<Option<Uri>, HeaderError> {
    Ok(h.contacts()?.addresses().first().map(|c| c.uri.clone()))
}

fn is_sips(uri: &Uri) -> bool {
    uri.as_sip().is_some_and(|u| u.is_secure())
}

/// A URI fit for a Request-URI: its headers removed (§19.1.5).
fn as_request_uri(uri: &Uri) -> Uri {
    match uri {
        Uri::Sip(u) if !u.headers().is_empty() => {
            let mut u = u.clone();
            u.clear_headers();
            Uri::Sip(u)
        }
        other => other.clone(),
    }
}

/// Methods whose 2xx refreshes the remote target (RFC 3261 re-INVITE, RFC 3311 UPDATE).
fn is_target_refresh(m: &Method) -> bool {
    matches!(m, Method::Invite | Method::Update)
}

/// One dialog. See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Dialog {
    id: DialogId,
    role: Role,
    state: DialogState,
    local_seq: Option<u32>,
    remote_seq: Option<u32>,
    local_uri: NameAddr,
    remote_uri: NameAddr,
    local_contact: Option<NameAddr>,
    remote_target: Uri,
    route_set: Vec<NameAddr>,
    secure: bool,
    /// The CSeq of the INVITE that created the dialog.
    initial_invite_seq: u32,
    /// The CSeq of the last INVITE we sent (for the ACK).
    last_invite_seq: Option<u32>,
    session_timer: Option<SessionTimer>,
}

fn creating_status(resp: &Response) -> Result<DialogState, DialogError> {
    let s = resp.status;
    if s.as_u16() <= 100 || !(s.is_provisional() || s.is_success()) {
        return Err(DialogError::NotDialogCreating(s));
    }
    Ok(if s.is_success() {
        DialogState::Confirmed
    } else {
        DialogState::Early
    })
}

impl Dialog {
    /// The UAC dialog our `request` (the INVITE, or another dialog-creating request) and
    /// a 101-299 `response` to it with a To tag create (§12.1.2): route set from the
    /// response's Record-Route reversed, remote target from its Contact.
    pub fn uac(request: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let state = creating_status(response)?;
        let (rq, rs) = (&request.headers, &response.headers);
        let to = rs.to()?;
        let remote_tag = to.tag().ok_or(DialogError::NoToTag)?.to_owned();
        let from = rq.from()?;
        let cseq = rq.cseq()?;
        let mut route_set = rs.record_routes()?;
        route_set.reverse();
        Ok(Dialog {
            id: DialogId {
                call_id: rq.call_id()?.to_owned(),
                local_tag: from.tag().unwrap_or("").to_owned(),
                remote_tag,
            },
            role: Role::Uac,
            state,
            local_seq: Some(cseq.seq),
            remote_seq: None,
            local_uri: untagged(from),
            remote_uri: untagged(to),
            local_contact: rq.contacts()?.addresses().first().cloned(),
            remote_target: first_contact(rs)?.unwrap_or_else(|| request.uri.clone()),
            route_set,
            secure: is_sips(&request.uri),
            initial_invite_seq: cseq.seq,
            last_invite_seq: (request.method == Method::Invite).then_some(cseq.seq),
            session_timer: None,
        })
    }

    /// The UAS dialog an incoming `request` and our 101-299 `response` with a To tag
    /// create (§12.1.1): route set from the request's Record-Route as is, remote target
    /// from its Contact.
    pub fn uas(request: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let state = creating_status(response)?;
        let (rq, rs) = (&request.headers, &response.headers);
        let local_tag = rs.to()?.tag().ok_or(DialogError::NoToTag)?.to_owned();
        let from = rq.from()?;
        let cseq = rq.cseq()?;
        Ok(Dialog {
            id: DialogId {
                call_id: rq.call_id()?.to_owned(),
                local_tag,
                remote_tag: from.tag().unwrap_or("").to_owned(),
            },
            role: Role::Uas,
            state,
            local_seq: None,
            remote_seq: Some(cseq.seq),
            local_uri: untagged(rq.to()?),
            remote_uri: untagged(from),
            local_contact: rs.contacts()?.addresses().first().cloned(),
            remote_target: first_contact(rq)?.ok_or(DialogError::NoContact)?,
            route_set: rq.record_routes()?,
            secure: is_sips(&request.uri),
            initial_invite_seq: cseq.seq,
            last_invite_seq: None,
            session_timer: None,
        })
    }

    /// The dialog id.
    pub fn id(&self) -> &DialogId {
        &self.id
    }

    /// Which side of the creating INVITE we were.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Early, confirmed or terminated.
    pub fn state(&self) -> DialogState {
        self.state
    }

    /// Ends the dialog (e.g. after sending BYE).
    pub fn terminate(&mut self) {
        self.state = DialogState::Terminated;
        self.session_timer = None;
    }

    /// The last CSeq we sent (`None` for a UAS that has sent nothing yet).
    pub fn local_seq(&self) -> Option<u32> {
        self.local_seq
    }

    /// The last CSeq received (`None` for a UAC that has received no request yet).
    pub fn remote_seq(&self) -> Option<u32> {
        self.remote_seq
    }

    /// Our URI (From of our requests), without tag.
    pub fn local_uri(&self) -> &NameAddr {
        &self.local_uri
    }

    /// The peer's URI (To of our requests), without tag.
    pub fn remote_uri(&self) -> &NameAddr {
        &self.remote_uri
    }

    /// Where our in-dialog requests go (the peer's Contact).
    pub fn remote_target(&self) -> &Uri {
        &self.remote_target
    }

    /// The route set, in the order our requests' Route headers follow.
    pub fn route_set(&self) -> &[NameAddr] {
        &self.route_set
    }

    /// True when requests must go over TLS (`sips:`).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The Contact we put in target refresh requests.
    pub fn local_contact(&self) -> Option<&NameAddr> {
        self.local_contact.as_ref()
    }

    /// Sets the Contact we put in target refresh requests.
    pub fn set_local_contact(&mut self, contact: Option<NameAddr>) {
        self.local_contact = contact;
    }

    /// The session timer, if one runs.
    pub fn session_timer(&self) -> Option<&SessionTimer> {
        self.session_timer.as_ref()
    }

    /// Starts, replaces (after a refresh) or stops the session timer. In a
    /// [`DialogSet`], use [`DialogSet::set_session_timer`] so the set's deadlines follow.
    pub fn set_session_timer(&mut self, timer: Option<SessionTimer>) {
        self.session_timer = timer;
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.session_timer.as_ref()?.next_timeout()
    }

    /// What is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<DialogTimer> {
        match self.session_timer.as_mut()?.handle_timeout(now)? {
            SessionEvent::Refresh => Some(DialogTimer::SessionRefresh),
            SessionEvent::Expired => Some(DialogTimer::SessionExpired),
        }
    }

    /// Request-URI and Route values for a request (§12.2.1.1): with an empty route set or
    /// a loose first route (`;lr`), the remote target and the route set; with a strict
    /// first route, that route as Request-URI and the rest plus the remote target as
    /// Route.
    fn target_and_route(&self) -> (Uri, Vec<NameAddr>) {
        let target = as_request_uri(&self.remote_target);
        match self.route_set.split_first() {
            None => (target, Vec::new()),
            Some((first, _)) if first.uri.as_sip().is_some_and(|u| u.param("lr").is_some()) => {
                (target, self.route_set.clone())
            }
            Some((first, rest)) => {
                let mut route = rest.to_vec();
                route.push(NameAddr::new(self.remote_target.clone()));
                (as_request_uri(&first.uri), route)
            }
        }
    }

    fn build(&self, method: Method, seq: u32, sent_by: &SentBy, rng: &mut impl RngCore) -> Request {
        let (uri, route) = self.target_and_route();
        let mut req = Request::new(method.clone(), uri);
        let h = &mut req.headers;
        let mut from = self.local_uri.clone();
        let mut to = self.remote_uri.clone();
        // Tags were tokens when parsed; an empty one (RFC 2543 peer) is left out.
        if !self.id.local_tag.is_empty() {
            let _ = from.set_tag(&self.id.local_tag);
        }
        if !self.id.remote_tag.is_empty() {
            let _ = to.set_tag(&self.id.remote_tag);
        }
        // Every value below displays from parsed or validated parts, so none carries CR
        // or LF and push cannot refuse it.
        let _ = h.push(HeaderName::Via, &sent_by.via(rng).to_string());
        let _ = h.push(HeaderName::MaxForwards, "70");
        for r in &route {
            let _ = h.push(HeaderName::Route, &r.to_string());
        }
        let _ = h.push(HeaderName::From, &from.to_string());
        let _ = h.push(HeaderName::To, &to.to_string());
        let _ = h.push(HeaderName::CallId, &self.id.call_id);
        let _ = h.push(HeaderName::CSeq, &format!("{seq} {method}"));
        if (is_target_refresh(&method) || matches!(method, Method::Refer | Method::Subscribe))
            && let Some(c) = &self.local_contact
        {
            let _ = h.push(HeaderName::Contact, &c.to_string());
        }
        req
    }

    /// A request within the dialog (§12.2.1.1): BYE, re-INVITE, UPDATE, INFO, REFER,
    /// NOTIFY, ... (ACK as [`create_ack`](Self::create_ack) for the last INVITE). The
    /// CSeq is one more than the last (random below 2^31 for the first request of a UAS);
    /// target refresh requests carry our Contact. The TU adds body and extra headers.
    pub fn create_request(
        &mut self,
        method: Method,
        sent_by: &SentBy,
        rng: &mut impl RngCore,
    ) -> Result<Request, DialogError> {
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        match method {
            Method::Cancel => return Err(DialogError::Cancel),
            Method::Ack => {
                let seq = self.last_invite_seq.ok_or(DialogError::NoInvite)?;
                return Ok(self.build(Method::Ack, seq, sent_by, rng));
            }
            _ => {}
        }
        let seq = match self.local_seq {
            Some(s) => s.checked_add(1).ok_or(DialogError::CSeqExhausted)?,
            None => rng.next_u32() >> 1,
        };
        self.local_seq = Some(seq);
        if method == Method::Invite {
            self.last_invite_seq = Some(seq);
        }
        Ok(self.build(method, seq, sent_by, rng))
    }

    /// The ACK of a 2xx to the INVITE with CSeq `invite_seq` (§13.2.2.4): built like any
    /// in-dialog request, with the INVITE's CSeq number and method ACK, a new branch.
    pub fn create_ack(&self, invite_seq: u32, sent_by: &SentBy, rng: &mut impl RngCore) -> Request {
        self.build(Method::Ack, invite_seq, sent_by, rng)
    }

    fn check_request_id(&self, req: &Request) -> Result<(), InDialogReject> {
        match DialogId::of_request(req)? {
            Some(id) if id == self.id => Ok(()),
            _ => Err(InDialogReject::WrongDialog),
        }
    }

    /// Checks an incoming in-dialog request (§12.2.2): it names this dialog, the dialog
    /// is not over, and its CSeq is not below the last one (500 otherwise); records its
    /// CSeq; a BYE ends the dialog. ACK and CANCEL carry their INVITE's CSeq and are not
    /// checked against it.
    pub fn on_request(&mut self, req: &Request) -> Result<(), InDialogReject> {
        self.check_request_id(req)?;
        if self.state == DialogState::Terminated {
            return Err(InDialogReject::Terminated);
        }
        if matches!(req.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        let seq = req.headers.cseq()?.seq;
        if let Some(last) = self.remote_seq
            && seq < last
        {
            return Err(InDialogReject::OutOfOrder {
                received: seq,
                last,
            });
        }
        self.remote_seq = Some(seq);
        if req.method == Method::Bye {
            self.terminate();
        }
        Ok(())
    }

    /// Follows a response we sent to `request` (UAS side): for the dialog-creating
    /// INVITE, a 2xx confirms the dialog and a failure ends an early one; a 2xx to a
    /// re-INVITE or UPDATE takes the request's Contact as the new remote target.
    pub fn on_local_response(
        &mut self,
        request: &Request,
        response: &Response,
    ) -> Result<(), DialogError> {
        let status = response.status;
        let cseq = request.headers.cseq()?;
        let creating = request.method == Method::Invite && cseq.seq == self.initial_invite_seq;
        if self.state == DialogState::Early && creating {
            if status.is_success() {
                self.state = DialogState::Confirmed;
            } else if status.is_final() {
                self.terminate();
            }
            return Ok(());
        }
        if status.is_success()
            && is_target_refresh(&request.method)
            && let Some(target) = first_contact(&request.headers)?
        {
            self.remote_target = target;
        }
        Ok(())
    }

    /// Follows a response to a request we sent in this dialog (UAC side): a 2xx to the
    /// creating INVITE confirms an early dialog and recomputes its route set and target
    /// (§13.2.2.4); a failure ends it; a 2xx to a re-INVITE or UPDATE refreshes the
    /// remote target from the Contact (§12.2.1.2); a 481 or 408 ends the dialog, and so
    /// does any final response to BYE.
    pub fn on_remote_response(&mut self, response: &Response) -> Result<(), DialogError> {
        match DialogId::of_response(response)? {
            Some(id) if id == self.id => {}
            // A 408 synthesized by the transaction layer has no To tag.
            None if response.status == StatusCode::REQUEST_TIMEOUT => {}
            _ => return Err(DialogError::WrongDialog),
        }
        let status = response.status;
        let cseq = response.headers.cseq()?;
        let creating = cseq.method == Method::Invite && cseq.seq == self.initial_invite_seq;
        if self.state == DialogState::Early && creating {
            if status.is_success() {
                self.state = DialogState::Confirmed;
                let mut route_set = response.headers.record_routes()?;
                route_set.reverse();
                self.route_set = route_set;
                if let Some(target) = first_contact(&response.headers)? {
                    self.remote_target = target;
                }
            } else if status.is_final() {
                self.terminate();
            } else if let Some(target) = first_contact(&response.headers)? {
                self.remote_target = target;
            }
            return Ok(());
        }
        if matches!(
            status,
            StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST | StatusCode::REQUEST_TIMEOUT
        ) || (cseq.method == Method::Bye && status.is_final())
        {
            self.terminate();
            return Ok(());
        }
        if status.is_success()
            && is_target_refresh(&cseq.method)
            && let Some(target) = first_contact(&response.headers)?
        {
            self.remote_target = target;
        }
        Ok(())
    }
}

/// The ACK of a 2xx to our `invite` when no dialog is stored (a stray 2xx from a fork to
/// ACK and then BYE): the dialog the response implies, then [`Dialog::create_ack`].
pub fn ack_for_2xx(
    invite: &Request,
    response: &Response,
    sent_by: &SentBy,
    rng: &mut impl RngCore,
) -> Result<Request, DialogError> {
    let dialog = Dialog::uac(invite, response)?;
    Ok(dialog.create_ack(dialog.initial_invite_seq, sent_by, rng))
}

/// What [`DialogSet::match_request`] found.
#[derive(Debug)]
pub enum DialogMatch<'a> {
    /// The dialog the request names.
    Found(&'a mut Dialog),
    /// The To has no tag: the request is outside any dialog (a new INVITE, OPTIONS...).
    OutOfDialog,
    /// The To has a tag naming no dialog we hold: answer [`unknown_dialog_response`]
    /// (481), or drop an ACK.
    Unknown,
    /// To, From or Call-ID is malformed.
    Malformed(HeaderError),
}

/// The dialogs of one endpoint, by id, with their session-timer deadlines in a heap.
///
/// Each dialog has at most one live heap entry, the deadline it was last scheduled for;
/// older entries are skipped when they come up. A dialog's deadline is scheduled when it
/// is inserted, after each timer it fires, and by [`DialogSet::set_session_timer`]; after
/// changing a session timer through [`get_mut`](Self::get_mut), call
/// [`DialogSet::reschedule`] (otherwise an earlier deadline is noticed only at the old
/// one).
#[derive(Debug, Default)]
pub struct DialogSet {
    dialogs: HashMap<DialogId, Slot>,
    deadlines: BinaryHeap<Reverse<(Instant, DialogId)>>,
}

#[derive(Debug)]
struct Slot {
    dialog: Dialog,
    scheduled: Option<Instant>,
}

impl DialogSet {
    /// No dialogs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of dialogs.
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// Adds a dialog (replacing one with the same id, which is returned).
    pub fn insert(&mut self, dialog: Dialog) -> Option<Dialog> {
        let id = dialog.id.clone();
        let old = self.dialogs.insert(
            id.clone(),
            Slot {
                dialog,
                scheduled: None,
            },
        );
        self.reschedule(&id);
        old.map(|s| s.dialog)
    }

    /// The dialog with this id.
    pub fn get(&self, id: &DialogId) -> Option<&Dialog> {
        self.dialogs.get(id).map(|s| &s.dialog)
    }

    /// The dialog with this id, mutable (see the type's note on deadlines).
    pub fn get_mut(&mut self, id: &DialogId) -> Option<&mut Dialog> {
        self.dialogs.get_mut(id).map(|s| &mut s.dialog)
    }

    /// Removes a dialog.
    pub fn remove(&mut self, id: &DialogId) -> Option<Dialog> {
        self.dialogs.remove(id).map(|s| s.dialog)
    }

    /// All dialogs.
    pub fn iter(&self) -> impl Iterator<Item = &Dialog> {
        self.dialogs.values().map(|s| &s.dialog)
    }

    /// Entries in the deadline heap, live or stale (a diagnostic).
    pub fn deadline_entries(&self) -> usize {
        self.deadlines.len()
    }

    /// Sets a dialog's session timer and schedules its deadline; false when the dialog
    /// is unknown.
    pub fn set_session_timer(&mut self, id: &DialogId, timer: Option<SessionTimer>) -> bool {
        let Some(slot) = self.dialogs.get_mut(id) else {
            return false;
        };
        slot.dialog.set_session_timer(timer);
        self.reschedule(id);
        true
    }

    /// Schedules a dialog's current deadline, replacing the one scheduled before.
    pub fn reschedule(&mut self, id: &DialogId) {
        let Some(slot) = self.dialogs.get_mut(id) else {
            return;
        };
        let next = slot.dialog.next_timeout();
        if next == slot.scheduled {
            return;
        }
        slot.scheduled = next;
        if let Some(at) = next {
            self.deadlines.push(Reverse((at, id.clone())));
        }
    }

    /// The dialog an incoming request belongs to (§12.2.2).
    pub fn match_request(&mut self, req: &Request) -> DialogMatch<'_> {
        match DialogId::of_request(req) {
            Err(e) => DialogMatch::Malformed(e),
            Ok(None) => DialogMatch::OutOfDialog,
            Ok(Some(id)) => match self.dialogs.get_mut(&id) {
                Some(s) => DialogMatch::Found(&mut s.dialog),
                None => DialogMatch::Unknown,
            },
        }
    }

    /// The dialog a response to our request belongs to (`None` for a response without
    /// To tag or of an unknown dialog, e.g. a new fork).
    pub fn match_response(&mut self, resp: &Response) -> Option<&mut Dialog> {
        let id = DialogId::of_response(resp).ok()??;
        self.dialogs.get_mut(&id).map(|s| &mut s.dialog)
    }

    fn is_live(&self, at: Instant, id: &DialogId) -> bool {
        self.dialogs
            .get(id)
            .is_some_and(|s| s.scheduled == Some(at))
    }

    /// The earliest scheduled deadline among the dialogs.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.deadlines.peek() {
            if self.is_live(*at, id) {
                return Some(*at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Every dialog timer due at `now`, with its dialog.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(DialogId, DialogTimer)> {
        let mut fired = Vec::new();
        while let Some(at) = self.next_timeout() {
            if at > now {
                break;
            }
            let Some(Reverse((_, id))) = self.deadlines.pop() else {
                break;
            };
            if let Some(slot) = self.dialogs.get_mut(&id) {
                slot.scheduled = None;
                if let Some(t) = slot.dialog.handle_timeout(now) {
                    fired.push((id.clone(), t));
                }
            }
            self.reschedule(&id);
        }
        fired
    }
}

//! Calls confer places: the UAC half of the B2BUA. A dial-out through a trunk and a ring of
//! a phone registered with our registrar (`registrar.rs`) are the same call with another
//! destination: a trunk's address and credentials, or the phone's contact over the flow
//! it registered on, with its AOR in To and the caller's name and the subject shown.
//!
//! # A dialled call
//!
//! 1. [`SipCore::dial`]: the call asks the media side for an RTP socket on the room
//!    ([`MediaCommand::Prepare`] with [`Target::RoomId`]); [`DialProgress::Trying`].
//! 2. With our RTP address: the INVITE with our offer goes to the trunk. A 401/407 is
//!    answered once per nonce with the trunk's credentials (the same Call-ID, From tag and
//!    the next CSeq, `Authorization` or `Proxy-Authorization`); 180/183 is
//!    [`DialProgress::Ringing`] (once).
//! 3. A 2xx creates the dialog, is acknowledged (and every retransmission of it again),
//!    and its answer joins the participant; then [`DialProgress::Answered`]. A 2xx after
//!    we cancelled is acknowledged and hung up at once (RFC 3261 §9.1's race).
//! 4. A final error, Timer B, a transport error or [`DIAL_TIMEOUT`] without an answer
//!    (CANCEL) is [`DialProgress::Failed`] with the status (408 for a timeout, 487 after
//!    our CANCEL). An answered call ends as an inbound one does (BYE either way, session
//!    timer, shutdown): [`DialProgress::HungUp`].
//!
//! In the dialog, the callee's re-INVITEs, UPDATEs, INFO and BYE are handled by the same
//! code as a caller's.

use confer_pstn_bridge::digest::{Credentials, DigestClient, DigestError, DigestRequest};
use confer_pstn_bridge::registration::strongest_challenge;
use confer_pstn_bridge::sip::transaction::new_call_id;
use confer_pstn_bridge::sip::{DisplayName, NameAddr, Uri};

use super::*;

/// How long a dialled call may ring before we cancel it.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Challenges answered per call (a trunk that keeps challenging is refusing us).
const MAX_AUTH_ROUNDS: u8 = 3;

/// A call to place.
#[derive(Debug, Clone)]
pub struct DialRequest {
    /// The room the callee joins.
    pub room: u64,
    /// Request-URI and To: the number or SIP URI at the trunk.
    pub uri: Uri,
    /// From: our identity at the trunk.
    pub from: Uri,
    /// Where the INVITE goes (the trunk).
    pub destination: Peer,
    /// The trunk's credentials for digest challenges.
    pub credentials: Option<Credentials>,
    /// To, when it is not the Request-URI (a registered phone: its AOR, while the
    /// Request-URI is its contact).
    pub to: Option<Uri>,
    /// The display name of From: who calls, as the callee's screen shows it.
    pub caller: Option<String>,
    /// A `Subject` header (the conversation's subject).
    pub subject: Option<String>,
}

impl DialRequest {
    /// A call to `uri` (also To) from `from` into `room`, sent to `destination`; no
    /// credentials, display name or subject.
    pub fn new(room: u64, uri: Uri, from: Uri, destination: Peer) -> DialRequest {
        DialRequest {
            room,
            uri,
            from,
            destination,
            credentials: None,
            to: None,
            caller: None,
            subject: None,
        }
    }
}

/// Longest display name and subject we send, in characters.
const MAX_SHOWN_CHARS: usize = 128;

/// `text` as one header line: control characters (CR and LF above all) become spaces,
/// trimmed, at most `max` characters; `None` when nothing is left.
pub(super) fn one_line(text: &str, max: usize) -> Option<String> {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    let line = line.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// How a dialled call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialProgress {
    /// The INVITE is on its way.
    Trying,
    /// The callee's phone rings (180, 183).
    Ringing,
    /// Answered, and in the room as this participant.
    Answered {
        /// The participant.
        participant: u64,
    },
    /// Not answered: the final status (408 timeout, 487 cancelled, 486 busy, ...).
    Failed {
        /// The SIP status.
        status: u16,
    },
    /// An answered call ended.
    HungUp,
}

/// Why a call could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// The call limit is reached.
    #[error("the SIP call limit is reached")]
    Busy,
    /// The request could not be built (a URI that makes no header).
    #[error("cannot build the INVITE: {0}")]
    Build(String),
    /// No such call to hang up.
    #[error("no dialled call {0}")]
    UnknownCall(CallId),
}

/// The outbound half of a [`Call`].
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) request: DialRequest,
    call_id: String,
    from_tag: String,
    cseq: u32,
    offer: Option<Offer>,
    ringing: bool,
    pub(super) answered: bool,
    cancelled: bool,
    /// The final status, once known (reported by `end_call`).
    pub(super) status: Option<u16>,
    auth_rounds: u8,
    www: Option<DigestClient>,
    proxy: Option<DigestClient>,
    /// The ACK of our 2xx, sent again for every retransmission.
    ack: Option<Request>,
}

impl<R: RngCore> SipCore<R> {
    /// Places a call (see the module docs); its progress comes as [`Output::Dial`].
    pub fn dial(&mut self, request: DialRequest, now: Instant) -> Result<CallId, DialError> {
        if self.calls.len() >= self.config.max_calls {
            return Err(DialError::Busy);
        }
        let sdp = SdpSession::new("confer", self.rng.next_u64(), self.config.local.ip)
            .map_err(|e| DialError::Build(e.to_string()))?;
        let room = request.room;
        let out = Outbound {
            call_id: new_call_id(&mut self.rng),
            from_tag: new_tag(&mut self.rng),
            cseq: 0,
            offer: None,
            ringing: false,
            answered: false,
            cancelled: false,
            status: None,
            auth_rounds: 0,
            www: None,
            proxy: None,
            ack: None,
            request,
        };
        // Checked now, so that a URI that cannot be written fails the API call.
        let invite = self.build_invite(&out, "").map_err(DialError::Build)?;
        let call = self.next_call;
        self.next_call += 1;
        tracing::info!(call, room, "dialling out");
        tracing::debug!(call, to = %out.request.uri, "dial-out destination");
        let source = out.request.destination.clone();
        let to_tag = out.from_tag.clone();
        let room_label = format!("room {room}");
        let mut c = Call::new(invite, TransactionId::NONE, source, to_tag, room_label, sdp);
        c.outbound = Some(Box::new(out));
        self.insert_call(call, c, now);
        self.metrics.calls_dialled.fetch_add(1, Ordering::Relaxed);
        self.out.push_back(Output::Dial {
            call,
            room,
            progress: DialProgress::Trying,
        });
        self.out.push_back(Output::Media {
            call,
            command: MediaCommand::Prepare {
                target: Target::RoomId(room),
            },
        });
        self.drain(now);
        Ok(call)
    }

    /// Hangs up a dialled call: CANCEL before the answer, BYE after.
    pub fn hang_up_dialled(&mut self, id: CallId, now: Instant) -> Result<(), DialError> {
        self.hang_up_dialled_in(id, None, now)
    }

    /// [`hang_up_dialled`](Self::hang_up_dialled), when the call was dialled into `room`
    /// (a call of another room is unknown there).
    pub fn hang_up_dialled_in(
        &mut self,
        id: CallId,
        room: Option<u64>,
        now: Instant,
    ) -> Result<(), DialError> {
        let Some(call) = self.calls.get_mut(&id) else {
            return Err(DialError::UnknownCall(id));
        };
        let Some(out) = call
            .outbound
            .as_mut()
            .filter(|o| room.is_none_or(|r| r == o.request.room))
        else {
            return Err(DialError::UnknownCall(id));
        };
        if out.answered || call.dialog.is_some() {
            self.hang_up(id, CallEnd::Bye, now);
        } else if call.state == CallState::Preparing {
            out.status = Some(487);
            self.end_call(id, CallEnd::Cancelled);
        } else if !out.cancelled {
            out.cancelled = true;
            out.status = Some(487);
            let tx = call.invite_tx;
            if let Err(e) = self.layer.cancel(tx, now) {
                tracing::debug!(call = id, "CANCEL not sent: {e}");
                self.end_call(id, CallEnd::Cancelled);
            } else {
                // A proceeding INVITE has no timer of its own: if nothing answers the
                // CANCEL (the trunk went away), the call ends after 64 T1 anyway
                // (RFC 3261 section 9.1).
                let wait = self.config.transactions.timers.t1 * 64;
                if let Some(at) = call.setup_deadline.take() {
                    self.setup_deadlines.remove(&(at, id));
                }
                if let Some(at) = now.checked_add(wait) {
                    call.setup_deadline = Some(at);
                    self.setup_deadlines.insert((at, id));
                }
            }
        }
        self.drain(now);
        Ok(())
    }

    /// The INVITE of `out` with `body` (our offer), at its current CSeq, with the
    /// credentials of the challenges answered so far.
    fn build_invite(&mut self, out: &Outbound, body: &str) -> Result<Request, String> {
        let r = &out.request;
        let mut req = Request::new(Method::Invite, r.uri.clone());
        let via = self.sent_by(&r.destination.transport).via(&mut self.rng);
        let mut from = NameAddr::new(r.from.clone());
        from.display_name = r
            .caller
            .as_deref()
            .and_then(|c| one_line(c, MAX_SHOWN_CHARS))
            .map(|n| DisplayName::new(&n));
        // A tag from `new_tag` is hex digits, always a token.
        let _ = from.set_tag(&out.from_tag);
        let to = NameAddr::new(r.to.clone().unwrap_or_else(|| r.uri.clone()));
        let fields = [
            (HeaderName::Via, via.to_string()),
            (HeaderName::MaxForwards, "70".to_owned()),
            (HeaderName::From, from.to_string()),
            (HeaderName::To, to.to_string()),
            (HeaderName::CallId, out.call_id.clone()),
            (HeaderName::CSeq, format!("{} INVITE", out.cseq.max(1))),
            (HeaderName::Contact, self.contact(&r.destination.transport)),
            (HeaderName::Allow, self.allow().to_owned()),
            (HeaderName::UserAgent, self.config.agent.clone()),
        ];
        let subject = r
            .subject
            .as_deref()
            .and_then(|s| one_line(s, MAX_SHOWN_CHARS));
        let subject = subject.map(|s| (HeaderName::Subject, s));
        for (name, value) in fields.into_iter().chain(subject) {
            req.headers
                .push(name, &value)
                .map_err(|e| format!("{name:?}: {e}"))?;
        }
        if !body.is_empty() {
            req.headers
                .push(HeaderName::ContentType, "application/sdp")
                .map_err(|e| e.to_string())?;
            req.body = body.as_bytes().to_vec().into();
        }
        Ok(req)
    }

    /// Sends the call's INVITE (again, after a challenge) with our offer.
    fn send_invite(&mut self, id: CallId, now: Instant) {
        let Some(mut out) = self.calls.get_mut(&id).and_then(|c| c.outbound.take()) else {
            return;
        };
        out.cseq = out.cseq.wrapping_add(1).max(1);
        let body = out.offer.as_ref().map(Offer::to_sdp).unwrap_or_default();
        let built = self.build_invite(&out, &body).and_then(|mut req| {
            self.authorize(&mut out, &mut req)?;
            Ok(req)
        });
        let destination = out.request.destination.clone();
        if let Some(call) = self.calls.get_mut(&id) {
            call.outbound = Some(out);
        }
        let sent = built.and_then(|req| {
            let tx = self
                .layer
                .send_request(req.clone(), destination, now)
                .map_err(|e| e.to_string())?;
            Ok((req, tx))
        });
        match sent {
            Ok((req, tx)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    self.by_invite_tx.remove(&call.invite_tx);
                    call.invite = req;
                    call.invite_tx = tx;
                    call.state = CallState::Dialing;
                }
                self.by_invite_tx.insert(tx, id);
            }
            Err(e) => {
                tracing::warn!(call = id, "INVITE not sent: {e}");
                self.dial_failed(id, 500);
            }
        }
    }

    /// Adds the answers to the challenges we hold.
    fn authorize(&mut self, out: &mut Outbound, req: &mut Request) -> Result<(), String> {
        let Some(credentials) = out.request.credentials.clone() else {
            return Ok(());
        };
        let uri = out.request.uri.to_string();
        let request = DigestRequest {
            method: "INVITE",
            uri: &uri,
            body: b"",
        };
        for (client, name) in [
            (&mut out.www, HeaderName::Authorization),
            (&mut out.proxy, HeaderName::ProxyAuthorization),
        ] {
            let Some(c) = client else { continue };
            match c.authorize(&credentials, &request, &mut self.rng) {
                Ok(auth) => req
                    .headers
                    .push(name, &auth.to_string())
                    .map_err(|e| e.to_string())?,
                // Nonce count exhausted: send without, and take the fresh challenge.
                Err(DigestError::NonceCountExhausted) => *client = None,
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Our RTP socket is reserved: offer it.
    pub(super) fn on_prepared_outbound(&mut self, id: CallId, local: SocketAddr, now: Instant) {
        let caps = self.config.media_caps.clone();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.local_media = Some(local);
        let Ok(address) = MediaAddress::new(local) else {
            tracing::error!(call = id, %local, "the reserved RTP address cannot go in SDP");
            return self.dial_failed(id, 500);
        };
        let offer = sdp::offer(&caps, address, Direction::SendRecv, &mut call.sdp);
        if let Some(out) = call.outbound.as_mut() {
            out.offer = Some(offer);
        }
        // Ringing may last long; the setup deadline becomes the answer deadline.
        if let Some(at) = call.setup_deadline.take() {
            self.setup_deadlines.remove(&(at, id));
        }
        if let Some(at) = now.checked_add(DIAL_TIMEOUT) {
            self.setup_deadlines.insert((at, id));
            if let Some(call) = self.calls.get_mut(&id) {
                call.setup_deadline = Some(at);
            }
        }
        self.send_invite(id, now);
    }

    /// A dialled call's deadline passed: no answer in time (cancel it), or no response to
    /// our CANCEL (give up on it).
    pub(super) fn dial_deadline(&mut self, id: CallId, now: Instant) {
        let cancelled = self
            .calls
            .get(&id)
            .and_then(|c| c.outbound.as_ref())
            .is_some_and(|o| o.cancelled);
        if cancelled {
            tracing::info!(
                call = id,
                "no response to our CANCEL: giving up on the call"
            );
            self.dial_failed(id, 408);
        } else {
            self.dial_timed_out(id, now);
        }
    }

    /// The answer deadline passed: cancel.
    fn dial_timed_out(&mut self, id: CallId, now: Instant) {
        tracing::info!(call = id, "no answer in time: cancelling");
        if let Some(out) = self.calls.get_mut(&id).and_then(|c| c.outbound.as_mut()) {
            out.status = Some(408);
        }
        let _ = self.hang_up_dialled(id, now);
        if let Some(out) = self.calls.get_mut(&id).and_then(|c| c.outbound.as_mut()) {
            // The 487 that follows our CANCEL is not the reason.
            out.status = Some(408);
        }
    }

    /// Ends a dialled call that was not answered.
    pub(super) fn dial_failed(&mut self, id: CallId, status: u16) {
        if let Some(out) = self.calls.get_mut(&id).and_then(|c| c.outbound.as_mut()) {
            out.status.get_or_insert(status);
        }
        self.end_call(id, CallEnd::Unanswered);
    }

    /// A response to our INVITE (`tx` is the call's current INVITE transaction).
    pub(super) fn on_outbound_response(&mut self, id: CallId, response: &Response, now: Instant) {
        let status = response.status.as_u16();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(out) = call.outbound.as_mut() else {
            return;
        };
        if response.status.is_provisional() {
            if matches!(status, 180 | 183) && !out.ringing && call.dialog.is_none() {
                out.ringing = true;
                let room = out.request.room;
                self.out.push_back(Output::Dial {
                    call: id,
                    room,
                    progress: DialProgress::Ringing,
                });
            }
            return;
        }
        if response.status.is_success() {
            return self.on_outbound_2xx(id, response, now);
        }
        if matches!(status, 401 | 407) && !out.cancelled && self.take_challenge(id, response) {
            return self.send_invite(id, now);
        }
        tracing::info!(call = id, status, "dialled call not answered");
        self.dial_failed(id, status);
    }

    /// Keeps the strongest challenge of a 401/407; false when it cannot be answered.
    fn take_challenge(&mut self, id: CallId, response: &Response) -> bool {
        let Some(out) = self.calls.get_mut(&id).and_then(|c| c.outbound.as_mut()) else {
            return false;
        };
        if out.request.credentials.is_none() || out.auth_rounds >= MAX_AUTH_ROUNDS {
            return false;
        }
        out.auth_rounds += 1;
        let proxy = response.status.as_u16() == 407;
        let Some(challenge) = strongest_challenge(response) else {
            return false;
        };
        let slot = if proxy { &mut out.proxy } else { &mut out.www };
        // The nonce we answered, challenged again without `stale`: wrong credentials.
        if let Some(c) = slot
            && c.challenge().nonce == challenge.nonce
            && !challenge.stale
        {
            return false;
        }
        match DigestClient::new(challenge) {
            Ok(c) => {
                *slot = Some(c);
                true
            }
            Err(e) => {
                tracing::info!(call = id, "unanswerable challenge: {e}");
                false
            }
        }
    }

    /// ACKs and BYEs the dialog a forked 2xx created.
    fn end_fork(
        &mut self,
        id: CallId,
        invite: &Request,
        response: &Response,
        destination: Peer,
        cseq: u32,
        now: Instant,
    ) {
        let sent_by = self.sent_by(&destination.transport);
        let Ok(mut fork) = Dialog::uac(invite, response) else {
            return;
        };
        tracing::info!(
            call = id,
            "a second answer to a forked INVITE: hanging it up"
        );
        let ack = fork.create_ack(cseq, &sent_by, &mut self.rng);
        self.layer
            .send_stateless(&Message::Request(ack), destination.clone());
        match fork.create_request(Method::Bye, &sent_by, &mut self.rng) {
            Ok(bye) => {
                if let Ok(tx) = self.layer.send_request(bye, destination, now) {
                    self.by_client_tx.insert(tx, (id, Purpose::Bye));
                }
            }
            Err(e) => tracing::debug!(call = id, "BYE for a fork not built: {e}"),
        }
    }

    fn on_outbound_2xx(&mut self, id: CallId, response: &Response, now: Instant) {
        let transport = match self.calls.get(&id) {
            Some(c) => c.source.transport.clone(),
            None => return,
        };
        let sent_by = self.sent_by(&transport);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let destination = call.source.clone();
        let Some(out) = call.outbound.as_mut() else {
            return;
        };
        if let Some(ack) = &out.ack {
            let same_dialog = call.dialog.as_ref().is_some_and(|d| {
                DialogId::of_response(response).ok().flatten().as_ref() == Some(d)
            });
            if same_dialog {
                // A retransmission of the 2xx: the same ACK again.
                self.layer
                    .send_stateless(&Message::Request(ack.clone()), destination);
            } else {
                // A second callee answered a forked INVITE (RFC 3261 section 13.2.2.4):
                // acknowledge its 2xx and hang it up at once; the first answer stays.
                let (invite, cseq) = (call.invite.clone(), cseq_of(ack));
                self.end_fork(id, &invite, response, destination, cseq, now);
            }
            return;
        }
        let dialog = match Dialog::uac(&call.invite, response) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(call = id, "no dialog from the 2xx: {e}");
                return self.dial_failed(id, 502);
            }
        };
        let cseq = out.cseq.max(1);
        let mut ack = dialog.create_ack(cseq, &sent_by, &mut self.rng);
        let _ = ack.headers.push(HeaderName::UserAgent, &self.config.agent);
        self.layer
            .send_stateless(&Message::Request(ack.clone()), destination);
        out.ack = Some(ack);
        let did = dialog.id().clone();
        self.dialogs.insert(dialog);
        self.by_dialog.insert(did.clone(), id);
        call.dialog = Some(did);
        call.peer_allows_update = response
            .headers
            .allow()
            .is_ok_and(|a| a.contains(&"UPDATE"));
        if let Some(at) = call.setup_deadline.take() {
            self.setup_deadlines.remove(&(at, id));
        }
        if out.cancelled {
            // Answered while our CANCEL was on its way: end it properly.
            tracing::info!(call = id, "answered after our CANCEL: hanging up");
            return self.hang_up(id, CallEnd::Cancelled, now);
        }
        let answered = out
            .offer
            .as_ref()
            .ok_or("no offer".to_owned())
            .and_then(|o| {
                SessionDescription::parse(&response.body)
                    .and_then(|a| sdp::process_answer(o, &a, &mut call.sdp))
                    .map_err(|e| e.to_string())
            });
        let spec = match answered {
            Ok(m) => media_spec(&m, call.local_media.is_none_or(|l| l.is_ipv4())),
            Err(e) => {
                tracing::info!(call = id, "unusable answer in the 2xx: {e}");
                None
            }
        };
        let Some(spec) = spec else {
            if let Some(out) = call.outbound.as_mut() {
                out.status = Some(488);
            }
            return self.hang_up(id, CallEnd::MediaFailed, now);
        };
        self.metrics.calls_answered.fetch_add(1, Ordering::Relaxed);
        call.remote_media = Some(spec.remote);
        call.held = spec.held;
        call.state = CallState::JoiningAfterAck;
        self.out.push_back(Output::Media {
            call: id,
            command: MediaCommand::Join(spec),
        });
    }
}

/// The CSeq number of a request (1 when unreadable: ours always have one).
fn cseq_of(req: &Request) -> u32 {
    req.headers.cseq().map_or(1, |c| c.seq)
}

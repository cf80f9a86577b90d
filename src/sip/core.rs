//! The SIP core of `confer serve`: one UAS per call leg (the dial-in half of the B2BUA),
//! sans-IO. Its submodules add the calls we place (`outbound`: dial-out, and ringing a
//! registered phone), the trunks' registrations (`register`), who calls (`inbound`:
//! trunks by address or digest) and the registrar of phones (`registrar`: REGISTER,
//! bindings, their expiry, [`SipCore::ring`]).
//!
//! Why sans-IO here too: the call logic (which response when, when a participant joins
//! and leaves, what happens on CANCEL, ACK timeout, session expiry and shutdown) is the
//! part worth testing exhaustively, and with time as an argument a test runs a 30-minute
//! session timer in microseconds. The async shell (`server.rs`) owns the sockets and the
//! clock and runs the [`MediaCommand`]s against the media host; this module owns the
//! [`TransactionLayer`], the [`DialogSet`] and the calls.
//!
//! # Drive contract
//!
//! Feed checked messages ([`SipCore::on_message`], after `inspect` accepted them), the
//! media side's results ([`SipCore::on_media`]), closed TCP/TLS connections
//! ([`SipCore::on_flow_closed`]) and time ([`SipCore::handle_timeout`] at
//! [`SipCore::next_timeout`]); after each call drain [`SipCore::poll_output`]: send each
//! [`Output::Transmit`], run each [`Output::Media`] command (in order, per call), pass on
//! each [`Output::Dial`] and [`Output::Registrar`]. At the end, [`SipCore::shutdown`]
//! ends every call and drains the same way.
//!
//! # A call (dial-in to a fixed room)
//!
//! 1. INVITE outside a dialog: the transaction layer answers 100 Trying. The Request-URI
//!    must dial a configured number (else 404), the call limit must allow it (else 503),
//!    the session timer must be acceptable (else 422) and an SDP offer must parse (else
//!    488 with a Warning). The call asks the media side to find or create the room and
//!    reserve an RTP socket ([`MediaCommand::Prepare`]).
//! 2. With our RTP address known: an offer is answered with `sdp::answer` (488 and a
//!    Warning when it fails), the participant joins ([`MediaCommand::Join`]) and only
//!    then the 200 OK (To tag, Contact, Session-Expires, the answer) goes out, so media
//!    flows as soon as the caller has it. An INVITE without SDP (delayed offer) gets our
//!    offer in the 200, and the participant joins with the answer from the ACK (a missing
//!    or unusable answer ends the call with BYE).
//! 3. In the dialog: BYE ends the call; re-INVITE and UPDATE are answered (hold and
//!    resume: while the caller holds us, its participant is muted and deaf; a re-offer
//!    that moves the caller's media address moves the participant's
//!    ([`MediaCommand::Remote`]); one that changes codec or address family is refused
//!    with 488, the call keeping its media); OPTIONS and INFO get 200; session timers are renegotiated
//!    on every refresh.
//! 4. The media leg is released ([`MediaCommand::Release`], always the last command of a
//!    call) on every end: BYE, CANCEL (487), a setup that fails or stalls
//!    ([`SETUP_TIMEOUT`]), our 2xx never acknowledged (BYE), the session timer expiring
//!    or its refresh failing (BYE), and shutdown (BYE, or 503 before the answer).
//!
//! # Deliberate choices
//!
//! - In-dialog requests we send (BYE, session refreshes) go back along the flow the
//!   INVITE came on (its source address and transport, the connection for TCP), with the
//!   dialog's remote target as Request-URI: NAT-safe, and right for a peer behind a
//!   proxy too.
//! - When we refresh the session (the caller does not support timers), we use UPDATE
//!   without a body if the caller allows UPDATE, else a re-INVITE with our offer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use confer_engine::leg::{Codec as EngineCodec, OpusParams as EngineOpus};
use confer_engine::types::PayloadType;
use confer_pstn_bridge::ivr::{CallerKey, DigitError, DigitInput, HangupReason};
use confer_pstn_bridge::sdp::{
    self, Codec as SdpCodec, Direction, LocalCapabilities, MediaAddress, NegotiatedMedia, Offer,
    SdpError, SdpSession, SessionDescription,
};
use confer_pstn_bridge::sip::dialog::{
    Dialog, DialogId, DialogMatch, DialogSet, DialogTimer, Negotiation, SessionTimerConfig,
    negotiate, unknown_dialog_response,
};
use confer_pstn_bridge::sip::transaction::{
    Event, Output as TxOutput, Peer, SentBy, TransactionConfig, TransactionId, TransactionLayer,
    Transmit, new_tag,
};
use confer_pstn_bridge::sip::{
    HeaderName, Host as SipHost, Message, Method, Request, Response, ResponseBasis, SipUri,
    StatusCode, Transport, Uri, build_response,
};
use rand::RngCore;

use super::dialplan::{DialPlan, Route};

mod inbound;
mod outbound;
mod register;
mod registrar;
use super::metrics::{CallEnd, Dropped, SipMetrics};
pub use inbound::InboundPolicy;
pub use outbound::{DialError, DialProgress, DialRequest};
pub use registrar::{
    BindingEvent, Challenges, RegistrarConfig, RegistrarEvent, RingError, RingRequest,
    SavedBinding, SipAccount, SipAccounts, SipSecret,
};

/// How long a call may wait for the media side (room, socket, join) before it is
/// answered 500: the host answers in milliseconds, so this only catches a stuck one.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The methods this UAS handles (also the `Allow` of its answers).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";
/// [`ALLOW`] with the registrar on.
pub const ALLOW_WITH_REGISTER: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, REGISTER";

/// A call's number in this core (never reused).
pub type CallId = u64;

/// What the media side must do for a call. Commands of one call must run in order.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaCommand {
    /// Find or create the room (or the PIN prompts' room) and reserve an RTP socket:
    /// answer [`MediaEvent::Prepared`] or [`MediaEvent::Failed`].
    Prepare {
        /// Where the call goes.
        target: Target,
    },
    /// Join the room with the reserved socket: answer [`MediaEvent::Joined`] or
    /// [`MediaEvent::Failed`].
    Join(MediaSpec),
    /// The caller put us on hold (mute and deafen its participant) or resumed.
    Hold {
        /// On hold.
        held: bool,
    },
    /// A key the caller pressed, signalled by SIP INFO.
    Digit(DigitInput),
    /// The peer moved its media: send to (and accept from) this address.
    Remote(SocketAddr),
    /// The call ended: leave the room (or drop the reserved socket). Always last.
    Release,
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Straight into the room of this name.
    Room(String),
    /// Into the room with this id (a call we dial).
    RoomId(u64),
    /// To the PIN prompts of a dial-in number.
    Pin {
        /// The number dialled, normalised.
        dialed: String,
        /// Who calls, for the lock-out after failed PINs.
        caller: CallerKey,
    },
}

/// What the participant is joined with.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaSpec {
    /// Where the caller receives RTP (and the only source accepted from it).
    pub remote: SocketAddr,
    /// The codec and payload type.
    pub codec: EngineCodec,
    /// RFC 4733 telephone-event payload type, if negotiated.
    pub telephone_event: Option<PayloadType>,
    /// Joins on hold (muted and deaf).
    pub held: bool,
    /// The packet time we send at (the SDP states it), ms.
    pub ptime_ms: u32,
}

/// Why the media side could not serve a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaFailure {
    /// No port, a busy worker, the engine stopping: 503.
    Unavailable,
    /// The room refuses (locked, full, ended): 480.
    Refused,
    /// Anything else: 500.
    Internal,
}

/// The media side's answer to a [`MediaCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The socket is reserved at `local`.
    Prepared {
        /// The call.
        call: CallId,
        /// Our RTP address for the SDP.
        local: SocketAddr,
    },
    /// The participant is in the room.
    Joined {
        /// The call.
        call: CallId,
        /// Its participant.
        participant: u64,
    },
    /// Prepare or Join failed.
    Failed {
        /// The call.
        call: CallId,
        /// Why.
        reason: MediaFailure,
    },
    /// The PIN prompts end the call (wrong PINs, no input, a locked conference, ...).
    Hangup {
        /// The call.
        call: CallId,
        /// Why.
        reason: HangupReason,
    },
}

/// What the core asks of its shell.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send these bytes.
    Transmit(Transmit),
    /// Run this media command for `call`.
    Media {
        /// The call.
        call: CallId,
        /// The command.
        command: MediaCommand,
    },
    /// A dialled call progressed.
    Dial {
        /// The call.
        call: CallId,
        /// Its room.
        room: u64,
        /// What happened.
        progress: DialProgress,
    },
    /// A registrar binding came, was refreshed or went.
    Registrar(BindingEvent),
}

/// Where we listen, as peers must reach us (Via sent-by, Contact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddrs {
    /// The address written in Via and Contact.
    pub ip: IpAddr,
    /// UDP port.
    pub udp: Option<u16>,
    /// TCP port.
    pub tcp: Option<u16>,
    /// TLS port.
    pub tls: Option<u16>,
}

/// Settings of a [`SipCore`].
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Numbers to rooms.
    pub dial_plan: DialPlan,
    /// Concurrent calls at most (503 beyond).
    pub max_calls: usize,
    /// Live transactions at most (503 beyond, statelessly).
    pub max_transactions: usize,
    /// Session timers.
    pub session_timer: SessionTimerConfig,
    /// Codecs and SDP preferences.
    pub media_caps: LocalCapabilities,
    /// The transaction layer's timers and options.
    pub transactions: TransactionConfig,
    /// Our addresses.
    pub local: LocalAddrs,
    /// The `Server` / `User-Agent` value.
    pub agent: String,
    /// Registrations to keep at trunks.
    pub registrations: Vec<super::trunks::TrunkRegistration>,
    /// The trunks (inbound recognition; dial-out is planned by the API).
    pub trunks: Arc<super::trunks::Trunks>,
    /// Which calls are taken.
    pub inbound: InboundPolicy,
    /// The registrar for phones.
    pub registrar: RegistrarConfig,
    /// Whether new calls may start, and where accepted calls are reported.
    pub gate: CallGate,
}

/// A dial-in call the core accepted, for the event journal and the compliance archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialIn {
    /// From's user part (a number, as the caller or its trunk states it) or its URI.
    pub caller: String,
    /// The Request-URI's user part: the number dialled.
    pub called: String,
    /// The room's name, or `None` for the PIN prompts.
    pub room: Option<String>,
    /// The trunk it came through, if recognised.
    pub trunk: Option<String>,
}

/// The shell's say on new calls: `admit` refuses with a reason (the compliance archive
/// cannot be written: fail closed, 503), `accepted` learns of each dial-in. Both read and
/// queue only (an atomic, a channel), so the core stays free of I/O.
#[derive(Clone, Default)]
pub struct CallGate {
    pub admit: Option<Arc<dyn Fn() -> Result<(), String> + Send + Sync>>,
    pub accepted: Option<Arc<dyn Fn(DialIn) + Send + Sync>>,
}

impl std::fmt::Debug for CallGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGate")
            .field("admit", &self.admit.is_some())
            .field("accepted", &self.accepted.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum CallState {
    /// Waiting for [`MediaEvent::Prepared`].
    Preparing,
    /// The offer is answered; waiting for [`MediaEvent::Joined`] before the 200.
    Joining { answer: String },
    /// The 200 is sent; waiting for the ACK (which carries the answer to a delayed
    /// offer).
    AwaitingAck,
    /// A delayed offer's answer arrived with the ACK; waiting for the join.
    JoiningAfterAck,
    /// Established.
    Confirmed,
    /// Our INVITE is out (a call we dial); waiting for the final response.
    Dialing,
}

#[derive(Debug)]
struct Call {
    invite: Request,
    invite_tx: TransactionId,
    source: Peer,
    to_tag: String,
    room: String,
    state: CallState,
    sdp: SdpSession,
    /// The INVITE's offer, until answered.
    remote_offer: Option<SessionDescription>,
    /// Our offer in a 2xx (delayed offer, re-INVITE without SDP) awaiting the ACK.
    pending_offer: Option<Offer>,
    local_media: Option<SocketAddr>,
    /// The address the participant joined with.
    remote_media: Option<SocketAddr>,
    media_requested: bool,
    held: bool,
    dialog: Option<DialogId>,
    session: Option<confer_pstn_bridge::sip::dialog::SessionAnswer>,
    peer_allows_update: bool,
    /// A re-INVITE we answered with 2xx, awaiting its ACK.
    reinvite_tx: Option<TransactionId>,
    /// The entry in `setup_deadlines`, until the setup is over.
    setup_deadline: Option<Instant>,
    /// A call we dial.
    outbound: Option<Box<outbound::Outbound>>,
}

impl Call {
    /// A call at its start, preparing its media: its INVITE (received, or ours to send)
    /// and its transaction, the peer, our tag, a label for the logs.
    fn new(
        invite: Request,
        invite_tx: TransactionId,
        source: Peer,
        to_tag: String,
        room: String,
        sdp: SdpSession,
    ) -> Call {
        Call {
            invite,
            invite_tx,
            source,
            to_tag,
            room,
            state: CallState::Preparing,
            sdp,
            remote_offer: None,
            pending_offer: None,
            local_media: None,
            remote_media: None,
            media_requested: true,
            held: false,
            dialog: None,
            session: None,
            peer_allows_update: false,
            reinvite_tx: None,
            setup_deadline: None,
            outbound: None,
        }
    }
}

#[derive(Debug)]
enum Purpose {
    Bye,
    /// A REGISTER of the trunk registration with this index.
    Register(usize),
    /// A session refresh; for a re-INVITE, its offer and, once a 2xx came, the ACK
    /// (sent again for every retransmitted 2xx).
    Refresh {
        offer: Option<Box<Offer>>,
        ack: Option<Box<Request>>,
    },
}

/// The calls of one confer instance (see the module docs).
pub struct SipCore<R> {
    config: CoreConfig,
    layer: TransactionLayer,
    dialogs: DialogSet,
    calls: HashMap<CallId, Call>,
    by_invite_tx: HashMap<TransactionId, CallId>,
    by_dialog: HashMap<DialogId, CallId>,
    by_client_tx: HashMap<TransactionId, (CallId, Purpose)>,
    setup_deadlines: BTreeSet<(Instant, CallId)>,
    next_call: CallId,
    out: VecDeque<Output>,
    rng: R,
    metrics: Arc<SipMetrics>,
    registrations: Vec<register::Registered>,
    /// Digest for trunks' calls and phones' registrations, made on first use.
    inbound_auth: Option<inbound::InboundAuth>,
    /// Registered phones.
    registrar: registrar::Registrar,
}

fn header(h: HeaderName, v: impl Into<String>) -> (HeaderName, String) {
    (h, v.into())
}

/// The engine codec of a negotiation (our capabilities hold only codecs the engine has).
fn engine_codec(m: &NegotiatedMedia) -> Option<EngineCodec> {
    match m.codec.codec {
        SdpCodec::Pcmu => Some(EngineCodec::Pcmu),
        SdpCodec::Pcma => Some(EngineCodec::Pcma),
        SdpCodec::Opus => {
            let defaults = EngineOpus::default();
            let send = m.codec.opus;
            Some(EngineCodec::Opus(EngineOpus {
                payload_type: PayloadType::new(m.codec.payload_type).ok()?,
                fec: send.is_none_or(|s| s.inband_fec),
                dtx: send.is_some_and(|s| s.dtx),
                bitrate_bps: send
                    .and_then(|s| s.max_average_bitrate)
                    .map_or(defaults.bitrate_bps, |b| b.min(defaults.bitrate_bps)),
                ..defaults
            }))
        }
        SdpCodec::G722 => None,
    }
}

fn media_spec(m: &NegotiatedMedia, family_v4: bool) -> Option<MediaSpec> {
    // A caller that holds from the start has no address yet: the leg sends nowhere
    // useful until it resumes (and it is deaf meanwhile).
    let nowhere = if family_v4 {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9)
    } else {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9)
    };
    Some(MediaSpec {
        remote: m.remote_rtp.unwrap_or(nowhere),
        codec: engine_codec(m)?,
        telephone_event: m
            .telephone_event
            .and_then(|t| PayloadType::new(t.receive_payload_type).ok()),
        held: m.held_by_peer(),
        ptime_ms: m.ptime_ms,
    })
}

/// A source address as lock-outs count it: an IPv6 host has a whole /64 to pick
/// addresses from, so it is counted by its /64.
fn lockout_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

fn sdp_warning(e: &SdpError, agent: &str) -> (HeaderName, String) {
    header(HeaderName::Warning, e.warning().header_value(agent))
}

impl<R: RngCore> SipCore<R> {
    /// A core with no calls.
    pub fn new(config: CoreConfig, rng: R, metrics: Arc<SipMetrics>) -> Self {
        SipCore {
            layer: TransactionLayer::new(config.transactions),
            config,
            dialogs: DialogSet::new(),
            calls: HashMap::new(),
            by_invite_tx: HashMap::new(),
            by_dialog: HashMap::new(),
            by_client_tx: HashMap::new(),
            setup_deadlines: BTreeSet::new(),
            next_call: 1,
            out: VecDeque::new(),
            rng,
            metrics,
            registrations: Vec::new(),
            inbound_auth: None,
            registrar: registrar::Registrar::new(),
        }
    }

    /// Adds a call whose media setup must finish by [`SETUP_TIMEOUT`].
    fn insert_call(&mut self, id: CallId, mut call: Call, now: Instant) {
        call.setup_deadline = now.checked_add(SETUP_TIMEOUT);
        if let Some(at) = call.setup_deadline {
            self.setup_deadlines.insert((at, id));
        }
        self.calls.insert(id, call);
    }

    /// Calls now.
    #[cfg(test)]
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// The next output, `None` when drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        [
            self.layer.next_timeout(),
            self.dialogs.next_timeout(),
            self.setup_deadlines.first().map(|(at, _)| *at),
            self.registration_timeout(),
            self.registrar_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A message `inspect` accepted, from `source`.
    pub fn on_message(&mut self, message: Message, source: Peer, now: Instant) {
        if let Message::Request(req) = &message
            && !matches!(req.method, Method::Ack | Method::Cancel)
            && self.layer.len() >= self.config.max_transactions
        {
            // Overloaded: answer statelessly rather than grow the table.
            let mut r = build_response(
                &ResponseBasis::from_request(req),
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                None,
            );
            let _ = r.headers.push(HeaderName::RetryAfter, "5");
            self.layer.send_stateless(&Message::Response(r), source);
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        } else {
            self.layer.on_message(message, source, now);
        }
        self.drain(now);
    }

    /// The shell could not send a transmission of transaction `id`.
    pub fn on_transport_error(&mut self, id: TransactionId, now: Instant) {
        self.layer.on_transport_error(id);
        self.drain(now);
    }

    /// A media side result.
    pub fn on_media(&mut self, event: MediaEvent, now: Instant) {
        match event {
            MediaEvent::Prepared { call, local } => self.on_prepared(call, local, now),
            MediaEvent::Joined { call, participant } => self.on_joined(call, participant, now),
            MediaEvent::Failed { call, reason } => self.on_media_failed(call, reason, now),
            MediaEvent::Hangup { call, reason } => {
                tracing::info!(call, %reason, "the PIN prompts end the call");
                if self.calls.get(&call).is_some_and(|c| c.dialog.is_some()) {
                    self.hang_up(call, CallEnd::Prompts, now);
                } else {
                    self.reject_call(
                        call,
                        StatusCode::TEMPORARILY_UNAVAILABLE,
                        &[],
                        CallEnd::Prompts,
                        now,
                    );
                }
            }
        }
        self.drain(now);
    }

    /// Fires what is due at `now` (spurious calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.layer.handle_timeout(now);
        self.registration_timers(now);
        self.registrar_timers(now);
        for (id, timer) in self.dialogs.handle_timeout(now) {
            let Some(&call) = self.by_dialog.get(&id) else {
                continue;
            };
            match timer {
                DialogTimer::SessionRefresh => self.refresh_session(call, now),
                DialogTimer::SessionExpired => {
                    tracing::info!(call, "session timer expired: hanging up");
                    self.hang_up(call, CallEnd::SessionExpired, now);
                }
            }
        }
        while let Some(&(at, call)) = self.setup_deadlines.first() {
            if at > now {
                break;
            }
            self.setup_deadlines.pop_first();
            let dialled = self
                .calls
                .get(&call)
                .and_then(|c| c.outbound.as_ref().map(|_| c.state == CallState::Dialing));
            match dialled {
                Some(true) => {
                    self.dial_deadline(call, now);
                    continue;
                }
                Some(false) => {
                    let preparing = self
                        .calls
                        .get(&call)
                        .is_some_and(|c| c.state == CallState::Preparing);
                    if preparing {
                        tracing::warn!(call, "media setup took too long");
                        self.dial_failed(call, 500);
                    }
                    continue;
                }
                None => {}
            }
            let stalled = self.calls.get(&call).is_some_and(|c| {
                matches!(c.state, CallState::Preparing | CallState::Joining { .. })
            });
            if stalled {
                tracing::warn!(call, "media setup took too long: answering 500");
                self.reject_call(
                    call,
                    StatusCode::SERVER_INTERNAL_ERROR,
                    &[],
                    CallEnd::MediaFailed,
                    now,
                );
            }
        }
        self.drain(now);
    }

    /// Ends every call: BYE for answered ones, 503 for the others; media released.
    pub fn shutdown(&mut self, now: Instant) {
        self.unregister_all(now);
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for call in ids {
            let answered = self.calls.get(&call).is_some_and(|c| c.dialog.is_some());
            let dialled = self.calls.get(&call).is_some_and(|c| c.outbound.is_some());
            if answered {
                self.hang_up(call, CallEnd::Shutdown, now);
            } else if dialled {
                // CANCEL, and forget it: nobody waits for the 487.
                let _ = self.hang_up_dialled(call, now);
                self.dial_failed(call, 503);
            } else {
                let retry = [header(HeaderName::RetryAfter, "60")];
                self.reject_call(
                    call,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &retry,
                    CallEnd::Shutdown,
                    now,
                );
            }
        }
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) {
        while let Some(o) = self.layer.poll_output() {
            match o {
                TxOutput::Transmit(t) => self.out.push_back(Output::Transmit(t)),
                TxOutput::Event(e) => self.on_event(e, now),
            }
        }
        self.metrics
            .transactions
            .store(self.layer.len() as u64, Ordering::Relaxed);
        self.metrics
            .dialogs
            .store(self.dialogs.len() as u64, Ordering::Relaxed);
        self.metrics
            .calls
            .store(self.calls.len() as u64, Ordering::Relaxed);
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Request {
                id,
                request,
                source,
            } => self.on_request(id, request, source, now),
            Event::Cancelled { invite, .. } => {
                if let Some(&call) = self.by_invite_tx.get(&invite)
                    && self.calls.get(&call).is_some_and(|c| c.invite_tx == invite)
                {
                    self.reject_call(
                        call,
                        StatusCode::REQUEST_TERMINATED,
                        &[],
                        CallEnd::Cancelled,
                        now,
                    );
                }
            }
            Event::Ack { request, .. } => self.on_ack(&request, now),
            Event::Response { id, response } => self.on_response(id, &response, now),
            Event::Timeout { id, .. } | Event::TransportError { id }
                if self.dialled_by_tx(id).is_some() =>
            {
                if let Some(call) = self.dialled_by_tx(id) {
                    tracing::info!(call, "no final response to our INVITE");
                    self.dial_failed(call, 408);
                }
            }
            Event::Timeout { id, .. } | Event::TransportError { id }
                if matches!(self.by_client_tx.get(&id), Some((_, Purpose::Register(_)))) =>
            {
                if let Some((_, Purpose::Register(i))) = self.by_client_tx.remove(&id) {
                    let timed_out = matches!(event, Event::Timeout { .. });
                    self.on_register_result(i, None, timed_out, now);
                }
            }
            Event::Timeout { id, .. } | Event::TransportError { id } => {
                if let Some((call, purpose)) = self.by_client_tx.remove(&id) {
                    if matches!(purpose, Purpose::Refresh { .. }) {
                        self.hang_up(call, CallEnd::SessionExpired, now);
                    }
                } else if let Some(&call) = self.by_invite_tx.get(&id) {
                    // Our answer to the INVITE could not be sent: the caller is gone.
                    self.end_call(call, CallEnd::MediaFailed);
                }
            }
            Event::AckTimeout { id } => {
                if let Some(&call) = self.by_invite_tx.get(&id)
                    && self.calls.get(&call).is_some_and(|c| {
                        c.dialog.is_some() && (c.invite_tx == id || c.reinvite_tx == Some(id))
                    })
                {
                    tracing::info!(call, "no ACK for our 2xx: hanging up");
                    self.hang_up(call, CallEnd::AckTimeout, now);
                }
            }
            Event::StrayResponse { .. } => self.metrics.dropped(Dropped::Stray),
            Event::Terminated { id } => {
                self.by_invite_tx.remove(&id);
                self.by_client_tx.remove(&id);
            }
        }
    }

    /// A response to `req` with our Server header and `extra` headers.
    fn response(
        &self,
        req: &Request,
        status: StatusCode,
        tag: Option<&str>,
        extra: &[(HeaderName, String)],
    ) -> Response {
        let mut r = build_response(
            &ResponseBasis::from_request(req),
            status,
            status.canonical_reason(),
            tag,
        );
        for (name, value) in extra {
            // Our own values carry no CR or LF.
            let _ = r.headers.push(*name, value);
        }
        let _ = r.headers.push(HeaderName::Server, &self.config.agent);
        r
    }

    fn send(&mut self, tx: TransactionId, r: &Response, now: Instant) {
        if let Err(e) = self.layer.send_response(tx, r, now) {
            tracing::debug!(%tx, status = r.status.as_u16(), "response not sent: {e}");
        }
    }

    fn answer(
        &mut self,
        tx: TransactionId,
        req: &Request,
        status: StatusCode,
        extra: &[(HeaderName, String)],
        now: Instant,
    ) {
        let tag = (status.as_u16() > 100).then(|| new_tag(&mut self.rng));
        let r = self.response(req, status, tag.as_deref(), extra);
        self.send(tx, &r, now);
    }

    fn on_request(&mut self, tx: TransactionId, req: Request, source: Peer, now: Instant) {
        enum Found {
            Call(CallId),
            Reject(Option<Response>),
            Outside,
        }
        let found = match self.dialogs.match_request(&req) {
            DialogMatch::Malformed(_) => Found::Reject(None),
            DialogMatch::Unknown => Found::Reject(unknown_dialog_response(&req)),
            DialogMatch::OutOfDialog => Found::Outside,
            DialogMatch::Found(d) => match d.on_request(&req) {
                Err(e) => Found::Reject(e.response(&req)),
                Ok(()) => match self.by_dialog.get(d.id()) {
                    Some(&call) => Found::Call(call),
                    None => Found::Reject(unknown_dialog_response(&req)),
                },
            },
        };
        match found {
            Found::Reject(Some(mut r)) => {
                let _ = r.headers.push(HeaderName::Server, &self.config.agent);
                self.send(tx, &r, now);
            }
            Found::Reject(None) => self.answer(tx, &req, StatusCode::BAD_REQUEST, &[], now),
            Found::Outside => match req.method {
                Method::Invite => self.new_call(tx, req, source, now),
                Method::Register if self.config.registrar.enabled => {
                    self.on_register(tx, &req, &source, now);
                }
                Method::Register => {
                    // `inspect` answers this first; a core driven without it, the same.
                    let allow = [header(HeaderName::Allow, self.allow())];
                    self.answer(tx, &req, StatusCode::METHOD_NOT_ALLOWED, &allow, now);
                }
                Method::Options => {
                    let extra = self.capability_headers();
                    self.answer(tx, &req, StatusCode::OK, &extra, now);
                }
                _ => {
                    let r = unknown_dialog_response(&req);
                    if let Some(mut r) = r {
                        let _ = r.headers.push(HeaderName::Server, &self.config.agent);
                        self.send(tx, &r, now);
                    }
                }
            },
            Found::Call(call) => match req.method {
                Method::Bye => {
                    self.answer(tx, &req, StatusCode::OK, &[], now);
                    tracing::debug!(call, "caller hung up");
                    self.end_call(call, CallEnd::Bye);
                }
                Method::Invite | Method::Update => self.reoffer(call, tx, &req, now),
                Method::Info => self.on_info(call, tx, &req, now),
                _ => self.answer(tx, &req, StatusCode::OK, &[], now),
            },
        }
    }

    /// INFO in a call: a key press (`application/dtmf-relay`, `application/dtmf`) goes
    /// to the media side; a body of another type is refused 415 (RFC 6086: INFO
    /// packages we do not take), a malformed key 400; an empty INFO (a keep-alive) 200.
    fn on_info(&mut self, call: CallId, tx: TransactionId, req: &Request, now: Instant) {
        if req.body.is_empty() {
            return self.answer(tx, req, StatusCode::OK, &[], now);
        }
        let content_type = req
            .headers
            .get(HeaderName::ContentType)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        match DigitInput::from_sip_info(&content_type, &req.body) {
            Ok(digit) => {
                self.answer(tx, req, StatusCode::OK, &[], now);
                self.out.push_back(Output::Media {
                    call,
                    command: MediaCommand::Digit(digit),
                });
            }
            Err(DigitError::UnsupportedContentType) => {
                let accept = header(
                    HeaderName::Accept,
                    "application/dtmf-relay, application/dtmf",
                );
                self.answer(tx, req, StatusCode::UNSUPPORTED_MEDIA_TYPE, &[accept], now);
            }
            Err(_) => self.answer(tx, req, StatusCode::BAD_REQUEST, &[], now),
        }
    }

    /// The methods we handle (the registrar's REGISTER when it is on).
    fn allow(&self) -> &'static str {
        if self.config.registrar.enabled {
            ALLOW_WITH_REGISTER
        } else {
            ALLOW
        }
    }

    fn capability_headers(&self) -> [(HeaderName, String); 3] {
        [
            header(HeaderName::Allow, self.allow()),
            header(HeaderName::Accept, "application/sdp"),
            header(HeaderName::Supported, "timer"),
        ]
    }

    fn contact(&self, transport: &Transport) -> String {
        let ip = self.config.local.ip;
        let host = match ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let l = &self.config.local;
        match transport {
            Transport::Tcp => format!(
                "<sip:confer@{host}:{};transport=tcp>",
                l.tcp.unwrap_or(5060)
            ),
            Transport::Tls => format!(
                "<sip:confer@{host}:{};transport=tls>",
                l.tls.unwrap_or(5061)
            ),
            _ => format!("<sip:confer@{host}:{}>", l.udp.unwrap_or(5060)),
        }
    }

    fn sent_by(&self, transport: &Transport) -> SentBy {
        let l = &self.config.local;
        let port = match transport {
            Transport::Tcp => l.tcp,
            Transport::Tls => l.tls,
            _ => l.udp,
        };
        SentBy {
            transport: transport.clone(),
            host: match l.ip {
                IpAddr::V4(a) => SipHost::Ipv4(a),
                IpAddr::V6(a) => SipHost::Ipv6(a),
            },
            port,
        }
    }

    fn new_call(&mut self, tx: TransactionId, req: Request, source: Peer, now: Instant) {
        let reject = |core: &mut Self, status: StatusCode, extra: &[(HeaderName, String)]| {
            core.answer(tx, &req, status, extra, now);
            core.metrics.call_ended(CallEnd::Rejected);
        };
        if self.calls.len() >= self.config.max_calls {
            return reject(
                self,
                StatusCode::SERVICE_UNAVAILABLE,
                &[header(HeaderName::RetryAfter, "10")],
            );
        }
        if let Some(admit) = &self.config.gate.admit
            && let Err(reason) = admit()
        {
            // Quotes would end the warn-text early; the reason is our own text anyway.
            let text = reason.replace(['"', '\\'], "'");
            let warning = format!("399 {} \"{text}\"", self.config.agent.replace(' ', "-"));
            return reject(
                self,
                StatusCode::SERVICE_UNAVAILABLE,
                &[
                    header(HeaderName::RetryAfter, "30"),
                    header(HeaderName::Warning, &warning),
                ],
            );
        }
        let trunk = match self.recognise(tx, &req, &source, now) {
            inbound::Caller::Answered => return,
            inbound::Caller::Trunk(t) => Some(t),
            inbound::Caller::Anyone => None,
        };
        // A trunk's numbers are read with its rules first.
        let user = |uri: &Uri| match uri {
            Uri::Sip(u) => u.user().and_then(|u| u.to_str()).map(|u| u.into_owned()),
            Uri::Tel(t) => Some(t.number().to_owned()),
            Uri::Other(_) => None,
        };
        let from_trunk = |uri: &Uri| {
            let t = trunk.as_deref()?;
            self.config.trunks.number_from(t, &user(uri)?)
        };
        let mut route = match from_trunk(&req.uri) {
            Some(number) => self.config.dial_plan.route_for_number(&number),
            None => self.config.dial_plan.route_for(&req.uri),
        };
        // A trunk we register with may send its calls to our Contact (the account) and
        // the number dialled in To.
        if route.is_none()
            && trunk.is_some()
            && let Some(number) = req.headers.to().ok().and_then(|t| from_trunk(&t.uri))
        {
            route = self.config.dial_plan.route_for_number(&number);
        }
        let Some(route) = route else {
            return reject(self, StatusCode::NOT_FOUND, &[]);
        };
        // Who is locked out after failed PINs: a trunk's caller by trunk and number
        // (everyone behind the trunk shares its address), anyone else by address (From
        // can be forged at will, and a new one would start afresh); an IPv6 caller by its
        // /64, which one host has plenty of addresses in.
        let caller = match req.headers.from().ok().and_then(|f| from_trunk(&f.uri)) {
            Some(number) => {
                CallerKey::Number(format!("{}:{number}", trunk.as_deref().unwrap_or("")))
            }
            None => CallerKey::Address(lockout_address(source.addr.ip())),
        };
        let target = match route {
            Route::Room(room) => Target::Room(room.to_owned()),
            Route::Pin(dialed) => Target::Pin { dialed, caller },
        };
        if !req
            .headers
            .contacts()
            .is_ok_and(|c| !c.addresses().is_empty())
        {
            let r = build_response(
                &ResponseBasis::from_request(&req),
                StatusCode::BAD_REQUEST,
                "Bad Request (no Contact)",
                Some(&new_tag(&mut self.rng)),
            );
            self.send(tx, &r, now);
            self.metrics.call_ended(CallEnd::Rejected);
            return;
        }
        let session = match negotiate(&self.config.session_timer, &req) {
            Ok(s) => s,
            Err(Negotiation::TooSmall(t)) => {
                let tag = new_tag(&mut self.rng);
                let r = t.response(&req, Some(&tag));
                self.send(tx, &r, now);
                self.metrics.call_ended(CallEnd::Rejected);
                return;
            }
            Err(Negotiation::Malformed(_)) => return reject(self, StatusCode::BAD_REQUEST, &[]),
        };
        let remote_offer = if req.body.is_empty() {
            None
        } else {
            match SessionDescription::parse(&req.body) {
                Ok(s) => Some(s),
                Err(e) => {
                    let w = sdp_warning(&e, "confer");
                    return reject(self, StatusCode::NOT_ACCEPTABLE_HERE, &[w]);
                }
            }
        };
        let sdp = match SdpSession::new("confer", self.rng.next_u64(), self.config.local.ip) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("SDP session: {e}");
                return reject(self, StatusCode::SERVER_INTERNAL_ERROR, &[]);
            }
        };
        let peer_allows_update = req.headers.allow().is_ok_and(|a| a.contains(&"UPDATE"));
        let call = self.next_call;
        self.next_call += 1;
        let to_tag = new_tag(&mut self.rng);
        let room = match &target {
            Target::Room(r) => r.clone(),
            Target::RoomId(id) => format!("room {id}"),
            Target::Pin { .. } => "(PIN prompts)".to_owned(),
        };
        tracing::debug!(call, room = %room, transport = %source.transport, trunk = ?trunk, "incoming call");
        if let Some(accepted) = &self.config.gate.accepted {
            let caller = req.headers.from().ok().map_or_else(String::new, |f| {
                user(&f.uri).unwrap_or_else(|| f.uri.to_string())
            });
            accepted(DialIn {
                caller,
                called: user(&req.uri).unwrap_or_else(|| req.uri.to_string()),
                room: match &target {
                    Target::Room(r) => Some(r.clone()),
                    _ => None,
                },
                trunk: trunk.as_deref().map(str::to_owned),
            });
        }
        let mut c = Call::new(req, tx, source, to_tag, room.clone(), sdp);
        c.remote_offer = remote_offer;
        c.session = session;
        c.peer_allows_update = peer_allows_update;
        self.insert_call(call, c, now);
        self.by_invite_tx.insert(tx, call);
        self.out.push_back(Output::Media {
            call,
            command: MediaCommand::Prepare { target },
        });
    }

    fn on_prepared(&mut self, id: CallId, local: SocketAddr, now: Instant) {
        let caps = self.config.media_caps.clone();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state != CallState::Preparing {
            return;
        }
        if call.outbound.is_some() {
            return self.on_prepared_outbound(id, local, now);
        }
        call.local_media = Some(local);
        let Ok(address) = MediaAddress::new(local) else {
            tracing::error!(call = id, %local, "the reserved RTP address cannot go in SDP");
            self.reject_call(
                id,
                StatusCode::SERVER_INTERNAL_ERROR,
                &[],
                CallEnd::MediaFailed,
                now,
            );
            return;
        };
        match call.remote_offer.take() {
            Some(offer) => match sdp::answer(&offer, &caps, address, &mut call.sdp) {
                Ok(answer) => {
                    let Some(spec) = media_spec(&answer.media, local.is_ipv4()) else {
                        self.reject_call(
                            id,
                            StatusCode::NOT_ACCEPTABLE_HERE,
                            &[],
                            CallEnd::Rejected,
                            now,
                        );
                        return;
                    };
                    call.state = CallState::Joining {
                        answer: answer.sdp.to_sdp(),
                    };
                    call.remote_media = Some(spec.remote);
                    call.held = spec.held;
                    self.out.push_back(Output::Media {
                        call: id,
                        command: MediaCommand::Join(spec),
                    });
                }
                Err(e) => {
                    tracing::info!(call = id, "offer refused: {e}");
                    let w = sdp_warning(&e, "confer");
                    self.reject_call(
                        id,
                        StatusCode::NOT_ACCEPTABLE_HERE,
                        &[w],
                        CallEnd::Rejected,
                        now,
                    );
                }
            },
            None => {
                let offer = sdp::offer(&caps, address, Direction::SendRecv, &mut call.sdp);
                let body = offer.to_sdp();
                call.pending_offer = Some(offer);
                self.accept_call(id, body, now);
            }
        }
    }

    fn on_joined(&mut self, id: CallId, participant: u64, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(out) = call.outbound.as_mut() {
            if call.state == CallState::JoiningAfterAck {
                call.state = CallState::Confirmed;
                out.answered = true;
                let room = out.request.room;
                tracing::info!(
                    call = id,
                    room,
                    participant,
                    "dialled call answered and joined"
                );
                self.out.push_back(Output::Dial {
                    call: id,
                    room,
                    progress: DialProgress::Answered { participant },
                });
            }
            return;
        }
        match std::mem::replace(&mut call.state, CallState::Confirmed) {
            CallState::Joining { answer } => {
                tracing::debug!(call = id, room = %call.room, "caller joined the room");
                self.accept_call(id, answer, now);
            }
            CallState::JoiningAfterAck => {
                tracing::debug!(call = id, room = %call.room, "caller joined the room");
            }
            other => call.state = other,
        }
    }

    fn on_media_failed(&mut self, id: CallId, reason: MediaFailure, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        tracing::warn!(call = id, ?reason, "media setup failed");
        if call.dialog.is_some() {
            self.hang_up(id, CallEnd::MediaFailed, now);
            return;
        }
        if call.outbound.is_some() {
            let status = match reason {
                MediaFailure::Unavailable => 503,
                MediaFailure::Refused => 480,
                MediaFailure::Internal => 500,
            };
            return self.dial_failed(id, status);
        }
        let status = match reason {
            MediaFailure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            MediaFailure::Refused => StatusCode::TEMPORARILY_UNAVAILABLE,
            MediaFailure::Internal => StatusCode::SERVER_INTERNAL_ERROR,
        };
        self.reject_call(id, status, &[], CallEnd::MediaFailed, now);
    }

    /// Sends the 200 OK with `body` (an answer, or our delayed offer) and creates the
    /// dialog.
    fn accept_call(&mut self, id: CallId, body: String, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let mut extra = vec![header(
            HeaderName::Contact,
            self.contact(&call.source.transport),
        )];
        extra.extend(self.capability_headers());
        extra.push(header(HeaderName::ContentType, "application/sdp"));
        let mut r = self.response(&call.invite, StatusCode::OK, Some(&call.to_tag), &extra);
        // §12.1.1: a 2xx that creates a dialog copies the Record-Route.
        for rr in call.invite.headers.get_all(HeaderName::RecordRoute) {
            let _ = r.headers.push(HeaderName::RecordRoute, rr);
        }
        if let Some(s) = &call.session {
            s.apply(&mut r);
        }
        r.body = body.into_bytes().into();
        let dialog = match Dialog::uas(&call.invite, &r) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(call = id, "no dialog from the INVITE: {e}");
                self.reject_call(id, StatusCode::BAD_REQUEST, &[], CallEnd::Rejected, now);
                return;
            }
        };
        let tx = call.invite_tx;
        let timer = call.session.map(|s| s.start(now));
        let did = dialog.id().clone();
        self.send(tx, &r, now);
        self.dialogs.insert(dialog);
        self.dialogs.set_session_timer(&did, timer);
        self.by_dialog.insert(did.clone(), id);
        self.metrics.calls_answered.fetch_add(1, Ordering::Relaxed);
        if let Some(call) = self.calls.get_mut(&id) {
            if let Some(at) = call.setup_deadline.take() {
                self.setup_deadlines.remove(&(at, id));
            }
            call.dialog = Some(did);
            // With a delayed offer the 200 carries ours, and the join waits for the ACK.
            call.state = CallState::AwaitingAck;
        }
    }

    fn on_ack(&mut self, ack: &Request, now: Instant) {
        let Ok(Some(did)) = DialogId::of_request(ack) else {
            return;
        };
        let Some(&id) = self.by_dialog.get(&did) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let ack_cseq = ack.headers.cseq().map(|c| c.seq).ok();
        let Some(offer) = call.pending_offer.take() else {
            if call.state == CallState::AwaitingAck {
                call.state = CallState::Confirmed;
            }
            return;
        };
        let joined = call.remote_media.is_some();
        let answer = if ack.body.is_empty() {
            Err("the ACK carries no answer to our offer".to_owned())
        } else {
            SessionDescription::parse(&ack.body)
                .and_then(|a| sdp::process_answer(&offer, &a, &mut call.sdp))
                .map_err(|e| e.to_string())
        };
        let media = match answer {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(call = id, ?ack_cseq, "unusable answer in the ACK: {e}");
                self.hang_up(id, CallEnd::MediaFailed, now);
                return;
            }
        };
        if joined {
            // A re-INVITE without SDP: our offer kept the media; follow the hold state.
            self.apply_hold(id, media.held_by_peer());
            return;
        }
        let Some(spec) = media_spec(&media, call.local_media.is_none_or(|l| l.is_ipv4())) else {
            self.hang_up(id, CallEnd::MediaFailed, now);
            return;
        };
        call.remote_media = Some(spec.remote);
        call.held = spec.held;
        call.state = CallState::JoiningAfterAck;
        self.out.push_back(Output::Media {
            call: id,
            command: MediaCommand::Join(spec),
        });
    }

    fn apply_hold(&mut self, id: CallId, held: bool) {
        if let Some(call) = self.calls.get_mut(&id)
            && call.held != held
        {
            call.held = held;
            tracing::info!(call = id, held, "caller hold state changed");
            self.out.push_back(Output::Media {
                call: id,
                command: MediaCommand::Hold { held },
            });
        }
    }

    /// A re-INVITE or UPDATE in the dialog: a new offer (hold, resume, refresh) or none.
    fn reoffer(&mut self, id: CallId, tx: TransactionId, req: &Request, now: Instant) {
        let agent = "confer";
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let joined = call.remote_media.is_some()
            && matches!(call.state, CallState::Confirmed | CallState::AwaitingAck);
        if !joined || call.pending_offer.is_some() {
            // An offer of ours awaits its answer, or the call is still being set up
            // (RFC 3261 §14.2, RFC 3311 §5.2).
            let status = if call.pending_offer.is_some() {
                StatusCode::REQUEST_PENDING
            } else {
                StatusCode::SERVER_INTERNAL_ERROR
            };
            let extra = [header(HeaderName::RetryAfter, "1")];
            self.answer_in_dialog(id, tx, req, status, &extra, None, now);
            return;
        }
        let session = match negotiate(&self.config.session_timer, req) {
            Ok(s) => s,
            Err(Negotiation::TooSmall(t)) => {
                let r = t.response(req, None);
                self.send(tx, &r, now);
                return;
            }
            Err(Negotiation::Malformed(_)) => {
                self.answer_in_dialog(id, tx, req, StatusCode::BAD_REQUEST, &[], None, now);
                return;
            }
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let (Some(local), Some(current)) = (call.local_media, call.sdp.negotiated().cloned())
        else {
            return;
        };
        let Ok(address) = MediaAddress::new(local) else {
            return;
        };
        // Re-offers keep the codec: the leg cannot change it.
        let caps = self
            .config
            .media_caps
            .clone()
            .with_telephone_event(current.telephone_event.is_some());
        let current_only = LocalCapabilities::new(&[current.codec.codec])
            .map(|c| c.with_telephone_event(caps.telephone_event()))
            .unwrap_or(caps);
        let mut body = None;
        let mut held = None;
        if !req.body.is_empty() {
            let mut trial = call.sdp.clone();
            let result = SessionDescription::parse(&req.body)
                .and_then(|o| sdp::answer(&o, &current_only, address, &mut trial));
            match result {
                Ok(a) => {
                    let moved = a.media.remote_rtp.filter(|r| Some(*r) != call.remote_media);
                    if moved.is_some_and(|r| r.is_ipv4() != local.is_ipv4()) {
                        let w = header(
                            HeaderName::Warning,
                            format!(
                                "{} {agent} \"the media cannot move to another address family\"",
                                300
                            ),
                        );
                        self.answer_in_dialog(
                            id,
                            tx,
                            req,
                            StatusCode::NOT_ACCEPTABLE_HERE,
                            &[w],
                            None,
                            now,
                        );
                        return;
                    }
                    call.sdp = trial;
                    held = Some(a.media.held_by_peer());
                    body = Some(a.sdp.to_sdp());
                    if let Some(remote) = moved {
                        // The peer moved its media (a PBX re-anchoring, a transfer): the
                        // participant follows, its leg and socket unchanged.
                        tracing::info!(call = id, %remote, "the caller moved its media");
                        call.remote_media = Some(remote);
                        self.out.push_back(Output::Media {
                            call: id,
                            command: MediaCommand::Remote(remote),
                        });
                    }
                }
                Err(e) => {
                    let w = sdp_warning(&e, agent);
                    self.answer_in_dialog(
                        id,
                        tx,
                        req,
                        StatusCode::NOT_ACCEPTABLE_HERE,
                        &[w],
                        None,
                        now,
                    );
                    return;
                }
            }
        } else if req.method == Method::Invite {
            // A re-INVITE without SDP asks us to offer; the answer comes in the ACK.
            let offer = sdp::offer(
                &current_only,
                address,
                call.sdp.local_direction(),
                &mut call.sdp,
            );
            body = Some(offer.to_sdp());
            call.pending_offer = Some(offer);
        }
        if req.method == Method::Invite {
            call.reinvite_tx = Some(tx);
            self.by_invite_tx.insert(tx, id);
        }
        self.answer_in_dialog(
            id,
            tx,
            req,
            StatusCode::OK,
            &[],
            body.map(|b| (b, session)),
            now,
        );
        if let Some(h) = held {
            self.apply_hold(id, h);
        }
    }

    /// Answers an in-dialog request (with our Contact on a 2xx to a target refresh; with
    /// an SDP body and the session timer when given).
    #[allow(clippy::too_many_arguments)]
    fn answer_in_dialog(
        &mut self,
        id: CallId,
        tx: TransactionId,
        req: &Request,
        status: StatusCode,
        extra: &[(HeaderName, String)],
        body: Option<(
            String,
            Option<confer_pstn_bridge::sip::dialog::SessionAnswer>,
        )>,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let mut extra = extra.to_vec();
        let mut session = None;
        if status.is_success() {
            extra.push(header(
                HeaderName::Contact,
                self.contact(&call.source.transport),
            ));
            extra.extend(self.capability_headers());
            if let Some((b, s)) = &body {
                if !b.is_empty() {
                    extra.push(header(HeaderName::ContentType, "application/sdp"));
                }
                session = *s;
            } else if let Ok(s) = negotiate(&self.config.session_timer, req) {
                session = s;
            }
        }
        let mut r = self.response(req, status, None, &extra);
        if let Some((b, _)) = body {
            r.body = b.into_bytes().into();
        }
        if let Some(s) = &session {
            s.apply(&mut r);
        }
        let did = call.dialog.clone();
        if let Some(did) = &did
            && let Some(d) = self.dialogs.get_mut(did)
            && let Err(e) = d.on_local_response(req, &r)
        {
            tracing::debug!(call = id, "dialog update: {e}");
        }
        self.send(tx, &r, now);
        if let (Some(did), Some(s)) = (did, session) {
            self.dialogs.set_session_timer(&did, Some(s.start(now)));
        }
    }

    /// Our session refresh (we are the refresher).
    fn refresh_session(&mut self, id: CallId, now: Instant) {
        let Some(transport) = self.calls.get(&id).map(|c| c.source.transport.clone()) else {
            return;
        };
        let sent_by = self.sent_by(&transport);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(did) = call.dialog.clone() else {
            return;
        };
        let use_update = call.peer_allows_update;
        let method = if use_update {
            Method::Update
        } else {
            Method::Invite
        };
        let offer = if use_update {
            None
        } else {
            let address = call.local_media.and_then(|l| MediaAddress::new(l).ok());
            let codec = call.sdp.negotiated().map(|n| n.codec.codec);
            match (address, codec) {
                (Some(a), Some(c)) => {
                    let caps = LocalCapabilities::new(&[c])
                        .unwrap_or_else(|_| self.config.media_caps.clone());
                    let direction = call.sdp.local_direction();
                    Some(Box::new(sdp::offer(&caps, a, direction, &mut call.sdp)))
                }
                _ => None,
            }
        };
        let destination = call.source.clone();
        let Some(dialog) = self.dialogs.get_mut(&did) else {
            return;
        };
        let Some(timer) = dialog.session_timer().copied() else {
            return;
        };
        let mut req = match dialog.create_request(method, &sent_by, &mut self.rng) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(call = id, "session refresh not built: {e}");
                return;
            }
        };
        timer
            .refresh_offer(&self.config.session_timer)
            .apply(&mut req.headers);
        let _ = req.headers.push(HeaderName::UserAgent, &self.config.agent);
        if let Some(o) = &offer {
            let _ = req.headers.push(HeaderName::ContentType, "application/sdp");
            req.body = o.to_sdp().into_bytes().into();
        }
        match self.layer.send_request(req, destination, now) {
            Ok(tx) => {
                self.by_client_tx
                    .insert(tx, (id, Purpose::Refresh { offer, ack: None }));
            }
            Err(e) => tracing::warn!(call = id, "session refresh not sent: {e}"),
        }
    }

    /// The dialled call whose current INVITE is client transaction `tx`.
    fn dialled_by_tx(&self, tx: TransactionId) -> Option<CallId> {
        let &id = self.by_invite_tx.get(&tx)?;
        let call = self.calls.get(&id)?;
        (call.outbound.is_some() && call.invite_tx == tx).then_some(id)
    }

    fn on_response(&mut self, tx: TransactionId, response: &Response, now: Instant) {
        let is_invite = response
            .headers
            .cseq()
            .is_ok_and(|c| c.method == Method::Invite);
        if is_invite && let Some(id) = self.dialled_by_tx(tx) {
            return self.on_outbound_response(id, response, now);
        }
        if response.status.is_provisional() {
            return;
        }
        if let Some((_, Purpose::Register(_))) = self.by_client_tx.get(&tx) {
            if let Some((_, Purpose::Register(i))) = self.by_client_tx.remove(&tx) {
                self.on_register_result(i, Some(response), false, now);
            }
            return;
        }
        if let Some((id, Purpose::Refresh { ack: Some(ack), .. })) = self.by_client_tx.get(&tx) {
            // A retransmitted 2xx of our re-INVITE: the same ACK again (RFC 3261 §13.2.2.4).
            if response.status.is_success()
                && let Some(call) = self.calls.get(id)
            {
                let destination = call.source.clone();
                self.layer
                    .send_stateless(&Message::Request((**ack).clone()), destination);
            }
            return;
        }
        let Some((id, purpose)) = self.by_client_tx.remove(&tx) else {
            return;
        };
        let Purpose::Refresh { offer, .. } = purpose else {
            return;
        };
        let Some(transport) = self.calls.get(&id).map(|c| c.source.transport.clone()) else {
            return;
        };
        let sent_by = self.sent_by(&transport);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(did) = call.dialog.clone() else {
            return;
        };
        if let Some(d) = self.dialogs.get_mut(&did) {
            let _ = d.on_remote_response(response);
        }
        let status = response.status;
        if status.is_success() {
            let is_invite = response
                .headers
                .cseq()
                .is_ok_and(|c| c.method == Method::Invite);
            if is_invite {
                let seq = response.headers.cseq().map(|c| c.seq).unwrap_or(0);
                let destination = call.source.clone();
                if let Some(d) = self.dialogs.get(&did) {
                    let mut ack = d.create_ack(seq, &sent_by, &mut self.rng);
                    let _ = ack.headers.push(HeaderName::UserAgent, &self.config.agent);
                    self.layer
                        .send_stateless(&Message::Request(ack.clone()), destination);
                    // Kept until the transaction ends, for retransmitted 2xx.
                    self.by_client_tx.insert(
                        tx,
                        (
                            id,
                            Purpose::Refresh {
                                offer: None,
                                ack: Some(Box::new(ack)),
                            },
                        ),
                    );
                }
                if let Some(o) = &offer {
                    let answered = SessionDescription::parse(&response.body)
                        .and_then(|a| sdp::process_answer(o, &a, &mut call.sdp));
                    match answered {
                        Ok(m) => {
                            let held = m.held_by_peer();
                            self.apply_hold(id, held);
                        }
                        Err(e) => {
                            tracing::info!(call = id, "unusable answer to our refresh: {e}");
                            self.hang_up(id, CallEnd::MediaFailed, now);
                            return;
                        }
                    }
                }
            }
            let offer = self
                .dialogs
                .get(&did)
                .and_then(|d| d.session_timer())
                .map(|t| t.refresh_offer(&self.config.session_timer));
            let timer = offer.and_then(|o| o.accept(response, now).ok().flatten());
            self.dialogs.set_session_timer(&did, timer);
        } else if matches!(
            status,
            StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST | StatusCode::REQUEST_TIMEOUT
        ) {
            // RFC 4028 §10: the session is gone.
            self.hang_up(id, CallEnd::SessionExpired, now);
        }
    }

    /// Sends a final error response to the call's INVITE and ends it.
    fn reject_call(
        &mut self,
        id: CallId,
        status: StatusCode,
        extra: &[(HeaderName, String)],
        how: CallEnd,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let r = self.response(&call.invite, status, Some(&call.to_tag), extra);
        let tx = call.invite_tx;
        self.send(tx, &r, now);
        self.end_call(id, how);
    }

    /// Sends BYE in the call's dialog and ends it.
    fn hang_up(&mut self, id: CallId, how: CallEnd, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let destination = call.source.clone();
        let sent_by = self.sent_by(&call.source.transport);
        if let Some(did) = call.dialog.clone()
            && let Some(d) = self.dialogs.get_mut(&did)
        {
            match d.create_request(Method::Bye, &sent_by, &mut self.rng) {
                Ok(mut bye) => {
                    let _ = bye.headers.push(HeaderName::UserAgent, &self.config.agent);
                    match self.layer.send_request(bye, destination, now) {
                        Ok(tx) => {
                            self.by_client_tx.insert(tx, (id, Purpose::Bye));
                        }
                        Err(e) => tracing::warn!(call = id, "BYE not sent: {e}"),
                    }
                }
                Err(e) => tracing::warn!(call = id, "BYE not built: {e}"),
            }
        }
        self.end_call(id, how);
    }

    /// Forgets a call: its dialog goes, its media is released.
    fn end_call(&mut self, id: CallId, how: CallEnd) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        if let Some(at) = call.setup_deadline {
            self.setup_deadlines.remove(&(at, id));
        }
        if let Some(did) = &call.dialog {
            self.dialogs.remove(did);
            self.by_dialog.remove(did);
        }
        if call.media_requested {
            self.out.push_back(Output::Media {
                call: id,
                command: MediaCommand::Release,
            });
        }
        if let Some(out) = &call.outbound {
            let progress = if out.answered {
                DialProgress::HungUp
            } else {
                DialProgress::Failed {
                    status: out.status.unwrap_or(match how {
                        CallEnd::Shutdown => 503,
                        CallEnd::Cancelled => 487,
                        _ => 500,
                    }),
                }
            };
            self.out.push_back(Output::Dial {
                call: id,
                room: out.request.room,
                progress,
            });
        }
        self.metrics.call_ended(how);
        tracing::debug!(call = id, reason = ?how, "call ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confer_pstn_bridge::sip::parse_datagram;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use crate::config::DialIn;

    const NUMBER: &str = "+15555550100";
    const PIN_NUMBER: &str = "+15555550177";
    const OFFER: &str = "v=0\r\no=peer 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";
    pub(super) const LOCAL_RTP: &str = "127.0.0.1:20000";

    /// Only differences between instants matter; any start will do.
    #[allow(clippy::disallowed_methods)]
    pub(super) fn t0() -> Instant {
        Instant::now()
    }

    fn peer() -> Peer {
        Peer::udp("192.0.2.10:5070".parse().unwrap())
    }

    pub(super) fn core(max_calls: usize) -> SipCore<ChaCha8Rng> {
        core_with(max_calls, &[], InboundPolicy::Any)
    }

    fn core_with(
        max_calls: usize,
        trunks: &[crate::sip::TrunkConfig],
        inbound: InboundPolicy,
    ) -> SipCore<ChaCha8Rng> {
        let config = CoreConfig {
            dial_plan: DialPlan::new(
                &[DialIn::room(NUMBER, "standup"), DialIn::pin(PIN_NUMBER)],
                "1",
            )
            .unwrap(),
            max_calls,
            max_transactions: 100,
            session_timer: SessionTimerConfig::default(),
            media_caps: LocalCapabilities::new(&[SdpCodec::Pcmu, SdpCodec::Pcma, SdpCodec::Opus])
                .unwrap(),
            transactions: TransactionConfig::default(),
            local: LocalAddrs {
                ip: "127.0.0.1".parse().unwrap(),
                udp: Some(5060),
                tcp: Some(5060),
                tls: None,
            },
            agent: "confer/test".into(),
            registrations: Vec::new(),
            trunks: Arc::new(crate::sip::Trunks::new(trunks, "1", &[], &[]).unwrap()),
            inbound,
            registrar: RegistrarConfig::default(),
            gate: CallGate::default(),
        };
        SipCore::new(
            config,
            ChaCha8Rng::seed_from_u64(7),
            Arc::new(SipMetrics::default()),
        )
    }

    /// A request from the caller; `to_tag` puts it in the dialog.
    fn request(
        method: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
        extra: &str,
        body: &str,
    ) -> Message {
        let tag = to_tag.map_or(String::new(), |t| format!(";tag={t}"));
        let ct = if body.is_empty() || extra.contains("Content-Type") {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "{method} sip:{NUMBER}@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@192.0.2.10>;tag=caller1\r\n\
             To: <sip:{NUMBER}@127.0.0.1>{tag}\r\n\
             Call-ID: call-1@192.0.2.10\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:caller@192.0.2.10:5070>\r\n\
             {extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        parse_datagram(text.as_bytes()).unwrap()
    }

    #[derive(Debug, Default)]
    pub(super) struct Drained {
        pub(super) sent: Vec<Message>,
        /// Where each of `sent` went.
        pub(super) to: Vec<Peer>,
        pub(super) media: Vec<(CallId, MediaCommand)>,
        pub(super) dials: Vec<(CallId, DialProgress)>,
        pub(super) bindings: Vec<BindingEvent>,
    }

    impl Drained {
        pub(super) fn statuses(&self) -> Vec<u16> {
            self.sent
                .iter()
                .filter_map(|m| m.as_response().map(|r| r.status.as_u16()))
                .collect()
        }

        pub(super) fn requests(&self) -> Vec<String> {
            self.sent
                .iter()
                .filter_map(|m| m.as_request().map(|r| r.method.to_string()))
                .collect()
        }

        pub(super) fn response(&self, status: u16) -> &Response {
            self.sent
                .iter()
                .filter_map(Message::as_response)
                .find(|r| r.status.as_u16() == status)
                .unwrap_or_else(|| panic!("no {status} in {:?}", self.statuses()))
        }

        fn commands(&self) -> Vec<&MediaCommand> {
            self.media.iter().map(|(_, c)| c).collect()
        }
    }

    pub(super) fn drain(c: &mut SipCore<ChaCha8Rng>) -> Drained {
        let mut d = Drained::default();
        while let Some(o) = c.poll_output() {
            match o {
                Output::Transmit(t) => {
                    d.sent.push(parse_datagram(&t.bytes).unwrap());
                    d.to.push(t.destination);
                }
                Output::Media { call, command } => d.media.push((call, command)),
                Output::Dial { call, progress, .. } => d.dials.push((call, progress)),
                Output::Registrar(e) => d.bindings.push(e),
            }
        }
        d
    }

    const TRUNK: &str = "192.0.2.50:5060";
    pub(super) const ANSWER: &str = "v=0\r\no=callee 1 1 IN IP4 192.0.2.60\r\ns=-\r\nc=IN IP4 192.0.2.60\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

    fn dial_request(credentials: bool) -> DialRequest {
        DialRequest {
            credentials: credentials.then(|| confer_pstn_bridge::digest::Credentials {
                username: "acct".into(),
                password: "secret".into(),
            }),
            ..DialRequest::new(
                9,
                "sip:4155550123@carrier.example;user=phone".parse().unwrap(),
                "sip:confer@carrier.example".parse().unwrap(),
                Peer::udp(TRUNK.parse().unwrap()),
            )
        }
    }

    /// Dials, prepares the media: returns the call and the INVITE sent.
    fn dialled(c: &mut SipCore<ChaCha8Rng>, credentials: bool, now: Instant) -> (CallId, Request) {
        let call = c.dial(dial_request(credentials), now).unwrap();
        let d = drain(c);
        assert_eq!(d.dials, [(call, DialProgress::Trying)]);
        assert_eq!(
            d.media,
            [(
                call,
                MediaCommand::Prepare {
                    target: Target::RoomId(9)
                }
            )]
        );
        c.on_media(
            MediaEvent::Prepared {
                call,
                local: LOCAL_RTP.parse().unwrap(),
            },
            now,
        );
        let d = drain(c);
        let invite = d.sent[0].as_request().expect("the INVITE").clone();
        assert_eq!(invite.method, Method::Invite);
        (call, invite)
    }

    /// The callee's response to `invite`.
    pub(super) fn callee(
        invite: &Request,
        status: u16,
        extra: &[(HeaderName, &str)],
        body: &str,
    ) -> Message {
        callee_tagged(invite, status, "callee1", extra, body)
    }

    /// A response to `invite` with To tag `tag` (another tag: another fork).
    fn callee_tagged(
        invite: &Request,
        status: u16,
        tag: &str,
        extra: &[(HeaderName, &str)],
        body: &str,
    ) -> Message {
        let code = StatusCode::new(status).unwrap();
        let mut r = build_response(
            &ResponseBasis::from_request(invite),
            code,
            code.canonical_reason(),
            (status > 100).then_some(tag),
        );
        let _ = r
            .headers
            .push(HeaderName::Contact, "<sip:callee@192.0.2.60:5060>");
        for (h, v) in extra {
            let _ = r.headers.push(*h, v);
        }
        if !body.is_empty() {
            let _ = r.headers.push(HeaderName::ContentType, "application/sdp");
            r.body = body.as_bytes().to_vec().into();
        }
        Message::Response(r)
    }

    fn trunk() -> Peer {
        Peer::udp(TRUNK.parse().unwrap())
    }

    /// An INVITE with `body`, the media prepared at LOCAL_RTP; returns the call id and
    /// what came out up to the Join (or the 200 for a delayed offer).
    fn start_call(
        c: &mut SipCore<ChaCha8Rng>,
        body: &str,
        extra: &str,
        now: Instant,
    ) -> (CallId, Drained) {
        c.on_message(request("INVITE", 1, "inv1", None, extra, body), peer(), now);
        let first = drain(c);
        assert_eq!(first.statuses(), [100]);
        let (call, cmd) = first.media.first().cloned().expect("a Prepare");
        assert_eq!(
            cmd,
            MediaCommand::Prepare {
                target: Target::Room("standup".into())
            }
        );
        c.on_media(
            MediaEvent::Prepared {
                call,
                local: LOCAL_RTP.parse().unwrap(),
            },
            now,
        );
        (call, drain(c))
    }

    /// A call answered 200 and acknowledged; returns its id, the 200's To tag.
    fn answered_call(c: &mut SipCore<ChaCha8Rng>, extra: &str, now: Instant) -> (CallId, String) {
        let (call, d) = start_call(c, OFFER, extra, now);
        assert!(
            matches!(d.commands()[..], [MediaCommand::Join(_)]),
            "{:?}",
            d.media
        );
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 1,
            },
            now,
        );
        let d = drain(c);
        let ok = d.response(200);
        let tag = ok.headers.to().unwrap().tag().unwrap().to_owned();
        c.on_message(request("ACK", 1, "ack1", Some(&tag), "", ""), peer(), now);
        assert!(drain(c).sent.is_empty());
        (call, tag)
    }

    #[test]
    fn an_invite_for_the_number_joins_the_room_and_is_answered_after_the_join() {
        let mut c = core(10);
        let now = t0();
        let (call, d) = start_call(&mut c, OFFER, "", now);
        // No 200 before the participant is in the room.
        assert!(d.statuses().is_empty(), "{:?}", d.statuses());
        let [MediaCommand::Join(spec)] = &d.commands()[..] else {
            panic!("{:?}", d.media)
        };
        assert_eq!(spec.remote, "192.0.2.10:40000".parse().unwrap());
        assert_eq!(spec.codec, EngineCodec::Pcma);
        assert_eq!(spec.telephone_event.map(|p| p.get()), Some(101));
        assert!(!spec.held);
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 1,
            },
            now,
        );
        let d = drain(&mut c);
        let ok = d.response(200);
        assert!(ok.headers.to().unwrap().tag().is_some());
        assert!(
            ok.headers
                .get(HeaderName::Contact)
                .unwrap()
                .contains("sip:confer@127.0.0.1:5060")
        );
        assert_eq!(ok.headers.get(HeaderName::Allow), Some(ALLOW));
        // Session timer granted, we refresh (the caller did not say it supports timers).
        assert_eq!(
            ok.headers.get(HeaderName::SessionExpires),
            Some("1800;refresher=uas")
        );
        let answer = std::str::from_utf8(&ok.body).unwrap();
        assert!(answer.contains("m=audio 20000 RTP/AVP 8 101"), "{answer}");
        assert!(answer.contains("c=IN IP4 127.0.0.1"), "{answer}");
        assert_eq!(c.calls(), 1);
    }

    #[test]
    fn an_unknown_number_gets_404_and_no_media() {
        let mut c = core(10);
        let mut m = request("INVITE", 1, "x", None, "", OFFER);
        if let Message::Request(r) = &mut m {
            r.uri = "sip:+15555550199@127.0.0.1".parse().unwrap();
        }
        c.on_message(m, peer(), t0());
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100, 404]);
        assert!(d.media.is_empty());
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn an_offer_without_a_common_codec_gets_488_with_a_warning_and_releases_the_socket() {
        let mut c = core(10);
        let g729 = OFFER
            .replace("RTP/AVP 8 101", "RTP/AVP 18")
            .replace("a=rtpmap:8 PCMA/8000\r\n", "a=rtpmap:18 G729/8000\r\n");
        let (_, d) = start_call(&mut c, &g729, "", t0());
        let r = d.response(488);
        assert!(
            r.headers
                .get(HeaderName::Warning)
                .unwrap()
                .starts_with("305 confer"),
            "{r:?}"
        );
        assert_eq!(d.commands(), [&MediaCommand::Release]);
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn a_cancel_before_the_answer_gets_487_and_releases_the_media() {
        let mut c = core(10);
        let now = t0();
        c.on_message(request("INVITE", 1, "inv1", None, "", OFFER), peer(), now);
        let (call, _) = drain(&mut c).media[0].clone();
        c.on_message(request("CANCEL", 1, "inv1", None, "", ""), peer(), now);
        let d = drain(&mut c);
        let mut statuses = d.statuses();
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 487],
            "200 for the CANCEL, 487 for the INVITE"
        );
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
        // The media side's late answer finds no call.
        c.on_media(
            MediaEvent::Prepared {
                call,
                local: LOCAL_RTP.parse().unwrap(),
            },
            now,
        );
        assert!(drain(&mut c).media.is_empty());
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn a_bye_is_answered_and_the_participant_leaves() {
        let mut c = core(10);
        let now = t0();
        let (call, tag) = answered_call(&mut c, "", now);
        c.on_message(request("BYE", 2, "bye1", Some(&tag), "", ""), peer(), now);
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [200]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
        assert_eq!(c.calls(), 0);
        // A second BYE finds no dialog.
        c.on_message(request("BYE", 3, "bye2", Some(&tag), "", ""), peer(), now);
        assert_eq!(drain(&mut c).statuses(), [481]);
    }

    #[test]
    fn a_key_sent_by_info_reaches_the_media_and_other_info_bodies_are_refused() {
        let mut c = core(10);
        let now = t0();
        let (call, tag) = answered_call(&mut c, "", now);
        let relay = "Content-Type: application/dtmf-relay\r\n";
        c.on_message(
            request(
                "INFO",
                2,
                "info1",
                Some(&tag),
                relay,
                "Signal=5\r\nDuration=160\r\n",
            ),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [200]);
        let digit = DigitInput::from_sip_info("application/dtmf-relay", b"Signal=5\r\n").unwrap();
        assert_eq!(d.media, [(call, MediaCommand::Digit(digit))]);
        // Another package's body: 415 with what we accept; a broken key: 400.
        let json = "Content-Type: application/json\r\n";
        c.on_message(
            request("INFO", 3, "info2", Some(&tag), json, "{}"),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [415]);
        assert!(d.media.is_empty());
        assert_eq!(
            d.response(415).headers.get(HeaderName::Accept),
            Some("application/dtmf-relay, application/dtmf")
        );
        c.on_message(
            request("INFO", 4, "info3", Some(&tag), relay, "Signal=X\r\n"),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [400]);
        assert!(d.media.is_empty());
        // An empty INFO is a keep-alive.
        c.on_message(request("INFO", 5, "info4", Some(&tag), "", ""), peer(), now);
        assert_eq!(drain(&mut c).statuses(), [200]);
        assert_eq!(c.calls(), 1);
    }

    #[test]
    fn a_pin_number_sends_the_caller_to_the_prompts_and_their_hangup_is_a_bye() {
        let mut c = core(10);
        let now = t0();
        let text = format!(
            "INVITE sip:{PIN_NUMBER}@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKpin1;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:+15555550123@192.0.2.10>;tag=caller1\r\n\
             To: <sip:{PIN_NUMBER}@127.0.0.1>\r\n\
             Call-ID: pin-1@192.0.2.10\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:caller@192.0.2.10:5070>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{OFFER}",
            OFFER.len()
        );
        c.on_message(parse_datagram(text.as_bytes()).unwrap(), peer(), now);
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100]);
        let (call, cmd) = d.media.first().cloned().expect("a Prepare");
        assert_eq!(
            cmd,
            MediaCommand::Prepare {
                target: Target::Pin {
                    dialed: PIN_NUMBER.into(),
                    // Not from a trunk: the source address is who gets locked out.
                    caller: CallerKey::Address("192.0.2.10".parse().unwrap()),
                }
            }
        );
        c.on_media(
            MediaEvent::Prepared {
                call,
                local: LOCAL_RTP.parse().unwrap(),
            },
            now,
        );
        drain(&mut c);
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 1,
            },
            now,
        );
        assert_eq!(drain(&mut c).statuses(), [200]);
        c.on_media(
            MediaEvent::Hangup {
                call,
                reason: HangupReason::TooManyAttempts,
            },
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["BYE"]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn a_dialled_call_offers_our_media_rings_answers_joins_and_hangs_up() {
        let mut c = core(10);
        let now = t0();
        let (call, invite) = dialled(&mut c, false, now);
        assert_eq!(
            invite.uri.to_string(),
            "sip:4155550123@carrier.example;user=phone"
        );
        let offer = String::from_utf8_lossy(&invite.body).into_owned();
        assert!(offer.contains("m=audio 20000 RTP/AVP"), "{offer}");
        c.on_message(callee(&invite, 180, &[], ""), trunk(), now);
        c.on_message(callee(&invite, 183, &[], ""), trunk(), now);
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Ringing)], "ringing once");
        c.on_message(callee(&invite, 200, &[], ANSWER), trunk(), now);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["ACK"]);
        let Some((_, MediaCommand::Join(spec))) = d.media.first() else {
            panic!("no join: {:?}", d.media);
        };
        assert_eq!(spec.remote, "192.0.2.60:41000".parse().unwrap());
        assert_eq!(spec.codec, EngineCodec::Pcmu);
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 44,
            },
            now,
        );
        assert_eq!(
            drain(&mut c).dials,
            [(call, DialProgress::Answered { participant: 44 })]
        );
        // A retransmitted 200 gets the same ACK again, and nothing else happens.
        c.on_message(callee(&invite, 200, &[], ANSWER), trunk(), now);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["ACK"]);
        assert!(d.dials.is_empty() && d.media.is_empty());
        // The API hangs up: BYE, the media goes, hung up.
        c.hang_up_dialled(call, now).unwrap();
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["BYE"]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
        assert_eq!(d.dials, [(call, DialProgress::HungUp)]);
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn a_challenge_is_answered_once_with_the_next_cseq_and_a_busy_callee_fails_the_call() {
        let mut c = core(10);
        let now = t0();
        let (call, invite) = dialled(&mut c, true, now);
        let challenge =
            "Digest realm=\"carrier.example\", nonce=\"abc123\", algorithm=SHA-256, qop=\"auth\"";
        c.on_message(
            callee(
                &invite,
                407,
                &[(HeaderName::ProxyAuthenticate, challenge)],
                "",
            ),
            trunk(),
            now,
        );
        let d = drain(&mut c);
        // The 407 is acknowledged by its transaction; a new INVITE carries the answer.
        let again = d
            .sent
            .iter()
            .filter_map(Message::as_request)
            .find(|r| r.method == Method::Invite)
            .expect("the INVITE again")
            .clone();
        assert_eq!(again.headers.cseq().unwrap().seq, 2);
        assert_eq!(
            again.headers.get(HeaderName::CallId),
            invite.headers.get(HeaderName::CallId)
        );
        let auth = again
            .headers
            .get(HeaderName::ProxyAuthorization)
            .expect("answered");
        assert!(
            auth.contains("username=\"acct\"") && auth.contains("SHA-256"),
            "{auth}"
        );
        // The same nonce again, not stale: the credentials are wrong; no third INVITE.
        c.on_message(
            callee(
                &again,
                407,
                &[(HeaderName::ProxyAuthenticate, challenge)],
                "",
            ),
            trunk(),
            now,
        );
        let d = drain(&mut c);
        assert!(!d.requests().contains(&"INVITE".to_owned()));
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 407 })]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
        // A fresh call to a busy callee.
        let (call, invite) = dialled(&mut c, false, now);
        c.on_message(callee(&invite, 486, &[], ""), trunk(), now);
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 486 })]);
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn hanging_up_before_the_answer_cancels_and_an_unanswered_call_times_out() {
        let mut c = core(10);
        let now = t0();
        let (call, invite) = dialled(&mut c, false, now);
        c.on_message(callee(&invite, 180, &[], ""), trunk(), now);
        drain(&mut c);
        c.hang_up_dialled(call, now).unwrap();
        assert_eq!(drain(&mut c).requests(), ["CANCEL"]);
        c.on_message(callee(&invite, 487, &[], ""), trunk(), now);
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 487 })]);
        assert_eq!(c.calls(), 0);
        // Ringing past the answer deadline: CANCEL, and the call fails as a timeout.
        let (call, invite) = dialled(&mut c, false, now);
        c.on_message(callee(&invite, 180, &[], ""), trunk(), now);
        drain(&mut c);
        let later = now + outbound::DIAL_TIMEOUT + Duration::from_secs(1);
        c.handle_timeout(later);
        assert!(drain(&mut c).requests().contains(&"CANCEL".to_owned()));
        c.on_message(callee(&invite, 487, &[], ""), trunk(), later);
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 408 })]);
        // Nobody answers at all (no response): Timer B fails the call 408.
        let (call, _) = dialled(&mut c, false, now);
        c.handle_timeout(now + Duration::from_secs(40));
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 408 })]);
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn a_second_answer_to_a_forked_invite_is_acknowledged_and_hung_up() {
        let mut c = core(10);
        let now = t0();
        let (call, invite) = dialled(&mut c, false, now);
        c.on_message(callee(&invite, 200, &[], ANSWER), trunk(), now);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["ACK"]);
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 5,
            },
            now,
        );
        drain(&mut c);
        c.on_message(
            callee_tagged(&invite, 200, "fork2", &[], ANSWER),
            trunk(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["ACK", "BYE"]);
        let bye = d
            .sent
            .iter()
            .filter_map(Message::as_request)
            .find(|r| r.method == Method::Bye)
            .unwrap();
        assert!(
            bye.headers
                .get(HeaderName::To)
                .is_some_and(|t| t.contains("fork2"))
        );
        // The first answer's call goes on.
        assert!(d.dials.is_empty() && d.media.is_empty());
        assert_eq!(c.calls(), 1);
    }

    #[test]
    fn a_cancel_nobody_answers_ends_the_call_after_64_t1() {
        let mut c = core(10);
        let now = t0();
        let (call, invite) = dialled(&mut c, false, now);
        c.on_message(callee(&invite, 180, &[], ""), trunk(), now);
        drain(&mut c);
        c.hang_up_dialled(call, now).unwrap();
        assert_eq!(drain(&mut c).requests(), ["CANCEL"]);
        // The trunk is gone: no 200 to the CANCEL, no 487.
        c.handle_timeout(now + Duration::from_secs(33));
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 487 })]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn an_answer_after_our_cancel_is_acknowledged_and_hung_up() {
        let mut c = core(10);
        let now = t0();
        let (call, invite) = dialled(&mut c, false, now);
        c.on_message(callee(&invite, 180, &[], ""), trunk(), now);
        drain(&mut c);
        c.hang_up_dialled(call, now).unwrap();
        drain(&mut c);
        c.on_message(callee(&invite, 200, &[], ANSWER), trunk(), now);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["ACK", "BYE"]);
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 487 })]);
        assert_eq!(c.calls(), 0);
    }

    /// A trunk at 192.0.2.10 (where `peer()` sends from) whose numbers come as `00...`.
    fn trunk_config(address: &str, credentials: bool) -> crate::sip::TrunkConfig {
        let toml = format!(
            "name = \"carrier\"\naddress = \"{address}\"\n{}\
             [[from_trunk]]\npattern = \"00\"\nstrip = 2\nprepend = \"+\"\n",
            if credentials {
                "inbound_username = \"in\"\ninbound_password = \"pw\"\n"
            } else {
                ""
            }
        );
        toml::from_str(&toml).unwrap()
    }

    fn invite_to(user: &str, cseq: u32, extra: &str) -> Message {
        let mut m = request("INVITE", cseq, &format!("in{cseq}"), None, extra, OFFER);
        if let Message::Request(r) = &mut m {
            r.uri = format!("sip:{user}@127.0.0.1").parse().unwrap();
        }
        m
    }

    #[test]
    fn a_trunks_call_is_recognised_by_address_and_its_numbers_read_with_its_rules() {
        let mut c = core_with(
            10,
            &[trunk_config("192.0.2.10:5060", false)],
            InboundPolicy::TrunksOnly,
        );
        let now = t0();
        // 0015555550100 is +1 555 555 0100 only by the trunk's rule.
        c.on_message(invite_to("0015555550100", 1, ""), peer(), now);
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100]);
        assert!(matches!(
            d.commands().first(),
            Some(MediaCommand::Prepare { target: Target::Room(r) }) if r == "standup"
        ));
        // Sent to our Contact (the account) with the number in To: found by To.
        let mut m = invite_to("acct", 2, "");
        if let Message::Request(r) = &mut m {
            r.headers
                .set(HeaderName::To, "<sip:0015555550100@127.0.0.1>")
                .unwrap();
        }
        c.on_message(m, peer(), now);
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100]);
        assert_eq!(d.commands().len(), 1, "prepared: {:?}", d.statuses());
        // From elsewhere, with trunks only: 403, and nothing prepared.
        let mut c = core_with(
            10,
            &[trunk_config("192.0.2.99:5060", false)],
            InboundPolicy::TrunksOnly,
        );
        c.on_message(invite_to(NUMBER, 1, ""), peer(), now);
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100, 403]);
        assert!(d.media.is_empty());
        // With "any", the same call is an anonymous caller, numbers read plainly.
        let mut c = core_with(
            10,
            &[trunk_config("192.0.2.99:5060", false)],
            InboundPolicy::Any,
        );
        c.on_message(invite_to("0015555550100", 1, ""), peer(), now);
        assert_eq!(drain(&mut c).statuses(), [100, 404]);
    }

    #[test]
    fn a_trunk_without_a_known_address_authenticates_its_calls_with_digest() {
        use confer_pstn_bridge::digest::{
            AuthChallenge, Credentials, DigestClient, DigestRequest, parse_challenge, strongest,
        };
        let mut c = core_with(
            10,
            &[trunk_config("192.0.2.99:5060", true)],
            InboundPolicy::TrunksOnly,
        );
        let now = t0();
        c.on_message(invite_to(NUMBER, 1, ""), peer(), now);
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100, 401]);
        let offered: Vec<AuthChallenge> = d
            .response(401)
            .headers
            .get_all(HeaderName::WwwAuthenticate)
            .filter_map(|v| parse_challenge(v).ok())
            .collect();
        assert_eq!(offered.len(), 2, "SHA-256 and MD5");
        let mut client = DigestClient::new(strongest(&offered).unwrap().clone()).unwrap();
        let uri = format!("sip:{NUMBER}@127.0.0.1");
        let answer = |client: &mut DigestClient, password: &str| {
            client
                .authorize(
                    &Credentials {
                        username: "in".into(),
                        password: password.into(),
                    },
                    &DigestRequest {
                        method: "INVITE",
                        uri: &uri,
                        body: b"",
                    },
                    &mut ChaCha8Rng::seed_from_u64(3),
                )
                .unwrap()
                .to_string()
        };
        // A wrong password: 403.
        let wrong = answer(&mut client, "nope");
        c.on_message(
            invite_to(NUMBER, 2, &format!("Authorization: {wrong}\r\n")),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100, 403]);
        assert!(d.media.is_empty());
        // The right one: the call goes on.
        let right = answer(&mut client, "pw");
        c.on_message(
            invite_to(NUMBER, 3, &format!("Authorization: {right}\r\n")),
            Peer::udp("192.0.2.10:5071".parse().unwrap()),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [100]);
        assert_eq!(d.commands().len(), 1, "prepared");
    }

    #[test]
    fn a_2xx_never_acknowledged_ends_with_bye_and_the_participant_leaves() {
        let mut c = core(10);
        let now = t0();
        let (call, d) = start_call(&mut c, OFFER, "", now);
        assert_eq!(d.commands().len(), 1);
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 1,
            },
            now,
        );
        assert_eq!(drain(&mut c).statuses(), [200]);
        let mut t;
        let mut retransmitted = 0;
        let end = loop {
            let at = c.next_timeout().expect("timers run");
            assert!(at <= now + Duration::from_secs(40));
            t = at;
            c.handle_timeout(t);
            let d = drain(&mut c);
            retransmitted += d.statuses().iter().filter(|&&s| s == 200).count();
            if !d.media.is_empty() {
                break d;
            }
        };
        assert!(retransmitted >= 5, "the 200 is retransmitted until Timer L");
        assert_eq!(end.requests(), ["BYE"]);
        assert_eq!(end.media, [(call, MediaCommand::Release)]);
        // 64 T1.
        assert!(t - now >= Duration::from_secs(32), "{:?}", t - now);
    }

    #[test]
    fn a_session_not_refreshed_in_time_ends_with_bye_and_a_refreshed_one_goes_on() {
        let mut c = core(10);
        let now = t0();
        // The caller refreshes (it supports timers and says so).
        let extra = "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n";
        let (call, tag) = answered_call(&mut c, extra, now);
        // A re-INVITE at 40 s refreshes it (same SDP: no media change).
        let t1 = now + Duration::from_secs(40);
        c.handle_timeout(t1);
        let _ = drain(&mut c);
        c.on_message(
            request("INVITE", 2, "reinv", Some(&tag), extra, OFFER),
            peer(),
            t1,
        );
        let d = drain(&mut c);
        assert!(d.statuses().contains(&200), "{:?}", d.statuses());
        assert!(
            d.media.is_empty(),
            "a refresh changes no media: {:?}",
            d.media
        );
        c.on_message(request("ACK", 2, "reack", Some(&tag), "", ""), peer(), t1);
        // Without it the session would have expired at 90 - 30 = 60 s.
        c.handle_timeout(now + Duration::from_secs(61));
        assert!(
            drain(&mut c).media.is_empty(),
            "refreshed at 40 s: not expired at 61 s"
        );
        // No further refresh: it expires 60 s after the refresh.
        c.handle_timeout(t1 + Duration::from_secs(60));
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["BYE"]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
    }

    #[test]
    fn when_we_refresh_the_session_we_send_update_if_the_caller_allows_it() {
        let mut c = core(10);
        let now = t0();
        let (_, _) = answered_call(&mut c, "Allow: INVITE, ACK, BYE, UPDATE\r\n", now);
        // We refresh at half the interval (1800 s).
        c.handle_timeout(now + Duration::from_secs(900));
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["UPDATE"]);
        let update = d.sent[0].as_request().unwrap();
        assert!(update.body.is_empty());
        assert_eq!(
            update.headers.get(HeaderName::SessionExpires),
            Some("1800;refresher=uac")
        );
        assert!(d.media.is_empty());
    }

    #[test]
    fn without_update_we_refresh_by_re_invite_and_ack_every_2xx() {
        let mut c = core(10);
        let now = t0();
        let (_, _) = answered_call(&mut c, "", now);
        let t = now + Duration::from_secs(900);
        c.handle_timeout(t);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["INVITE"]);
        let reinvite = d.sent[0].as_request().unwrap().clone();
        let offer = std::str::from_utf8(&reinvite.body).unwrap().to_owned();
        assert!(offer.contains("m=audio 20000 RTP/AVP 8"), "{offer}");
        // The caller answers 200 with the same media, twice (a retransmission).
        let basis = ResponseBasis::from_request(&reinvite);
        let mut ok = build_response(&basis, StatusCode::OK, "OK", None);
        let _ = ok
            .headers
            .push(HeaderName::Contact, "<sip:caller@192.0.2.10:5070>");
        let _ = ok.headers.push(HeaderName::ContentType, "application/sdp");
        ok.body = OFFER.as_bytes().to_vec().into();
        let wire = Message::Response(ok).to_vec();
        for _ in 0..2 {
            c.on_message(parse_datagram(&wire).unwrap(), peer(), t);
            let d = drain(&mut c);
            assert_eq!(d.requests(), ["ACK"], "every 2xx is acknowledged");
            assert!(d.media.is_empty());
        }
        assert_eq!(c.calls(), 1);
    }

    #[test]
    fn a_hold_and_a_resume_by_re_invite_mute_and_unmute_the_caller() {
        let mut c = core(10);
        let now = t0();
        let (call, tag) = answered_call(&mut c, "", now);
        let hold = OFFER.replace("a=fmtp:101 0-15\r\n", "a=fmtp:101 0-15\r\na=sendonly\r\n");
        c.on_message(
            request("INVITE", 2, "hold", Some(&tag), "", &hold),
            peer(),
            now,
        );
        let d = drain(&mut c);
        let ok = d.response(200);
        assert!(
            std::str::from_utf8(&ok.body)
                .unwrap()
                .contains("a=recvonly")
        );
        assert_eq!(d.media, [(call, MediaCommand::Hold { held: true })]);
        // RFC 2543 style hold: c=0.0.0.0 (still held, no change).
        let old_hold = OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0");
        c.on_message(
            request("INVITE", 3, "hold2", Some(&tag), "", &old_hold),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert!(d.statuses().contains(&200));
        assert!(d.media.is_empty());
        c.on_message(
            request("INVITE", 4, "resume", Some(&tag), "", OFFER),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert!(
            std::str::from_utf8(&d.response(200).body)
                .unwrap()
                .contains("a=sendrecv")
        );
        assert_eq!(d.media, [(call, MediaCommand::Hold { held: false })]);
    }

    #[test]
    fn a_re_offer_that_moves_the_media_moves_the_participant_and_one_changing_codec_is_refused() {
        let mut c = core(10);
        let now = t0();
        let (call, tag) = answered_call(&mut c, "", now);
        let moved = OFFER
            .replace("m=audio 40000", "m=audio 40002")
            .replace("c=IN IP4 192.0.2.10", "c=IN IP4 192.0.2.11");
        c.on_message(
            request("UPDATE", 2, "upd", Some(&tag), "", &moved),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [200]);
        assert_eq!(
            d.media,
            [(
                call,
                MediaCommand::Remote("192.0.2.11:40002".parse().unwrap())
            )]
        );
        // The same address again moves nothing.
        c.on_message(
            request("UPDATE", 3, "upd2", Some(&tag), "", &moved),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [200]);
        assert!(d.media.is_empty());
        // Another codec (PCMU instead of PCMA) cannot be taken by the leg: 488.
        let pcmu = moved
            .replace("RTP/AVP 8 101", "RTP/AVP 0 101")
            .replace("8 PCMA", "0 PCMU");
        c.on_message(
            request("UPDATE", 4, "upd3", Some(&tag), "", &pcmu),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [488]);
        assert!(d.media.is_empty());
        // Another address family: 488, the call goes on.
        let v6 = OFFER
            .replace("c=IN IP4 192.0.2.10", "c=IN IP6 2001:db8::10")
            .replace("IN IP4 192.0.2.10", "IN IP6 2001:db8::10");
        c.on_message(
            request("UPDATE", 5, "upd4", Some(&tag), "", &v6),
            peer(),
            now,
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [488]);
        assert!(d.media.is_empty());
        assert_eq!(c.calls(), 1);
        c.on_message(
            request("OPTIONS", 6, "opt", Some(&tag), "", ""),
            peer(),
            now,
        );
        assert_eq!(drain(&mut c).statuses(), [200]);
    }

    #[test]
    fn a_delayed_offer_gets_our_offer_in_the_200_and_joins_with_the_answer_from_the_ack() {
        let mut c = core(10);
        let now = t0();
        let (call, d) = start_call(&mut c, "", "", now);
        let ok = d.response(200);
        let offer = std::str::from_utf8(&ok.body).unwrap();
        assert!(offer.contains("m=audio 20000 RTP/AVP 0 8 111"), "{offer}");
        assert!(d.media.is_empty(), "no join before the answer");
        let tag = ok.headers.to().unwrap().tag().unwrap().to_owned();
        c.on_message(request("ACK", 1, "ack", Some(&tag), "", OFFER), peer(), now);
        let d = drain(&mut c);
        let [MediaCommand::Join(spec)] = &d.commands()[..] else {
            panic!("{:?}", d.media)
        };
        assert_eq!(spec.codec, EngineCodec::Pcma);
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 1,
            },
            now,
        );
        assert!(drain(&mut c).sent.is_empty());
    }

    #[test]
    fn a_delayed_offer_without_an_answer_in_the_ack_ends_with_bye() {
        let mut c = core(10);
        let now = t0();
        let (call, d) = start_call(&mut c, "", "", now);
        let tag = d
            .response(200)
            .headers
            .to()
            .unwrap()
            .tag()
            .unwrap()
            .to_owned();
        c.on_message(request("ACK", 1, "ack", Some(&tag), "", ""), peer(), now);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["BYE"]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
    }

    #[test]
    fn calls_beyond_the_limit_get_503_and_a_stalled_setup_gets_500() {
        let mut c = core(1);
        let now = t0();
        c.on_message(request("INVITE", 1, "a", None, "", OFFER), peer(), now);
        let (call, _) = drain(&mut c).media[0].clone();
        let mut second = request("INVITE", 1, "b", None, "", OFFER);
        if let Message::Request(r) = &mut second {
            let _ = r.headers.set(HeaderName::CallId, "call-2@192.0.2.10");
        }
        c.on_message(second, peer(), now);
        assert_eq!(drain(&mut c).statuses(), [100, 503]);
        // The media side never answers the first: 500 after SETUP_TIMEOUT.
        c.handle_timeout(now + SETUP_TIMEOUT);
        let d = drain(&mut c);
        // (The 503 is being retransmitted meanwhile: its ACK never came.)
        assert_eq!(
            d.statuses()
                .iter()
                .filter(|&&s| s != 503)
                .collect::<Vec<_>>(),
            [&500]
        );
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
    }

    #[test]
    fn a_room_that_refuses_the_join_gets_480() {
        let mut c = core(10);
        let (call, _) = start_call(&mut c, OFFER, "", t0());
        c.on_media(
            MediaEvent::Failed {
                call,
                reason: MediaFailure::Refused,
            },
            t0(),
        );
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [480]);
        assert_eq!(d.media, [(call, MediaCommand::Release)]);
    }

    #[test]
    fn shutdown_hangs_up_answered_calls_and_refuses_pending_ones() {
        let mut c = core(10);
        let now = t0();
        let (answered, _) = answered_call(&mut c, "", now);
        let mut pending = request("INVITE", 1, "p", None, "", OFFER);
        if let Message::Request(r) = &mut pending {
            let _ = r.headers.set(HeaderName::CallId, "call-2@192.0.2.10");
        }
        c.on_message(pending, peer(), now);
        let (waiting, _) = drain(&mut c).media[0].clone();
        c.shutdown(now);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["BYE"]);
        assert_eq!(d.statuses(), [503]);
        let mut released: Vec<CallId> = d
            .media
            .iter()
            .filter(|(_, m)| *m == MediaCommand::Release)
            .map(|(c, _)| *c)
            .collect();
        released.sort_unstable();
        assert_eq!(released, [answered, waiting]);
        assert_eq!(c.calls(), 0);
    }

    #[test]
    fn options_outside_a_dialog_lists_what_we_handle() {
        let mut c = core(10);
        c.on_message(request("OPTIONS", 1, "o", None, "", ""), peer(), t0());
        let d = drain(&mut c);
        let r = d.response(200);
        assert_eq!(r.headers.get(HeaderName::Allow), Some(ALLOW));
        assert_eq!(r.headers.get(HeaderName::Accept), Some("application/sdp"));
        assert_eq!(r.headers.get(HeaderName::Supported), Some("timer"));
    }
}

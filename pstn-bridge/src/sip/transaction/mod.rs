//! The SIP transaction layer (RFC 3261 §17, with RFC 6026's Accepted states for INVITE
//! 2xx), sans-IO: it owns every client and server transaction of one SIP endpoint, takes
//! messages, TU commands and time as inputs, and queues transmissions and events for the
//! shell to drain. It never reads a clock, touches a socket or spawns anything.
//!
//! # Drive contract
//!
//! - A message arrives (after [`inspect`](super::inspect) accepted it): call
//!   [`TransactionLayer::on_message`] with the transport it came on, its source and
//!   `now`.
//! - The TU sends a request: [`TransactionLayer::send_request`] (the request carries its
//!   top Via with a fresh branch, e.g. from [`SentBy::via`]); it answers a request:
//!   [`TransactionLayer::send_response`] with the [`TransactionId`] of the
//!   [`Event::Request`]; it cancels an INVITE: [`TransactionLayer::cancel`]; an ACK for
//!   a 2xx or any stateless message: [`TransactionLayer::send_stateless`].
//! - After every call, drain [`TransactionLayer::poll_output`] until `None`: send each
//!   [`Transmit`] (report a failed send with [`TransactionLayer::on_transport_error`]),
//!   hand each [`Event`] to the TU.
//! - Sleep until [`TransactionLayer::next_timeout`], then call
//!   [`TransactionLayer::handle_timeout`] with the time (spurious or late calls are
//!   harmless), and drain again.
//!
//! # The machines
//!
//! | kind | states | timers |
//! |---|---|---|
//! | INVITE client | Calling → Proceeding → Completed / Accepted | A, B, D, M |
//! | non-INVITE client | Trying → Proceeding → Completed | E, F, K |
//! | INVITE server | Proceeding → Completed → Confirmed, or Proceeding → Accepted | G, H, I, L, Resend2xx |
//! | non-INVITE server | Trying → Proceeding → Completed | J |
//!
//! A transaction that reaches Terminated is removed at once (and [`Event::Terminated`]
//! says so); [`TransactionLayer::state`] then returns `None`. On reliable transports
//! A, E and G are not used and D, I, J, K are zero, so those transactions terminate in
//! the same call that completes them.
//!
//! # What the layer does on its own
//!
//! - Retransmits requests over unreliable transports (A: T1 doubling without a cap, as
//!   §17.1.1.2 says; E: doubling up to T2, T2 in Proceeding), non-2xx final responses
//!   (G), and, as the UAS core of §13.3.1.4, 2xx responses to INVITE until their ACK
//!   arrives ([`Timer::Resend2xx`]).
//! - Absorbs retransmitted requests, re-sending the last response (a retransmitted
//!   INVITE gets the last provisional response again), and retransmitted final
//!   responses, re-sending the ACK of a non-2xx.
//! - Sends `100 Trying` for a new INVITE at once ([`TransactionConfig::send_trying`]).
//! - Answers CANCEL in its own server transaction: 200 when it matches an INVITE server
//!   transaction ([`Event::Cancelled`] when that INVITE still awaits its final response,
//!   which the TU then sends, usually 487), 481 when it matches none.
//! - Stamps `received` and fills `rport` in the top Via of each request (§18.2.1, RFC
//!   3581) and sends responses where §18.2.2 says: back on the connection for reliable
//!   transports, to the source address and port when `rport` was asked for, else to the
//!   source address and the Via port (5060 by default). `maddr` is not honoured.
//!
//! # Matching
//!
//! See `key.rs`: branch + method on the client side; branch + sent-by + method on the
//! server side (ACK matching its INVITE, CANCEL its own transaction), falling back to RFC
//! 2543 matching when the branch lacks the magic cookie. An ACK matching no transaction
//! (the ACK of a 2xx) and a 2xx to INVITE matching no client transaction (a late fork)
//! go to the TU; other stray responses are counted and dropped.
//!
//! # Cost
//!
//! Lookups are hash maps keyed by the matching keys; timers are a binary heap with lazy
//! deletion (see `timer.rs`), so a poll never scans transactions. A transaction holds
//! the serialized bytes it may retransmit (shared with the [`Transmit`]s through
//! [`Bytes`], so a retransmission allocates nothing), and a client transaction its
//! request (to build CANCEL, ACK and the 408 of a timeout).

mod build;
mod key;
mod timer;

pub use build::{SentBy, build_ack_for_non2xx, build_cancel, new_branch, new_call_id, new_tag};
pub use timer::{Timer, TimerConfig};

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::check::{ResponseBasis, build_response};
use super::header::{HeaderError, HeaderName};
use super::message::{Message, Method, Request, Response, StatusCode};
use super::value::{CSeq, Param, ParamValue, Token, Transport, Via};
use key::{ClientKey, ServerKey};
use timer::TimerQueue;

/// A transaction handle. Never reused, so a stale handle finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(u64);

impl TransactionId {
    /// A handle no transaction has (ids start at 1): a placeholder for a request not
    /// sent yet.
    pub const NONE: TransactionId = TransactionId(0);

    /// The number inside (for logs).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx{}", self.0)
    }
}

/// The other end of a message: the transport and the address (for a stream transport,
/// the shell maps the address to its connection).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Transport.
    pub transport: Transport,
    /// Remote address.
    pub addr: SocketAddr,
}

impl Peer {
    /// A peer over `transport`.
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Self { transport, addr }
    }

    /// A peer over UDP.
    pub fn udp(addr: SocketAddr) -> Self {
        Self::new(Transport::Udp, addr)
    }

    /// A peer over TCP.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self::new(Transport::Tcp, addr)
    }

    /// True when the transport delivers reliably (everything but UDP and unknown
    /// transports): no retransmissions, zero wait timers.
    pub fn is_reliable(&self) -> bool {
        !matches!(self.transport, Transport::Udp | Transport::Other(_))
    }
}

/// Which of the four machines a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// We sent an INVITE.
    InviteClient,
    /// We sent another request.
    NonInviteClient,
    /// We received an INVITE.
    InviteServer,
    /// We received another request.
    NonInviteServer,
}

impl Kind {
    /// True for the server machines.
    pub fn is_server(self) -> bool {
        matches!(self, Kind::InviteServer | Kind::NonInviteServer)
    }
}

/// A live transaction's state (RFC 3261 figures 5-8, RFC 6026 figures 5-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// INVITE client, no response yet.
    Calling,
    /// Non-INVITE client or server, no provisional response yet.
    Trying,
    /// A provisional response was received (client) or sent (server); an INVITE server
    /// transaction starts here.
    Proceeding,
    /// A final response (a non-2xx one, for INVITE) was received or sent.
    Completed,
    /// INVITE server: the ACK of our non-2xx arrived.
    Confirmed,
    /// INVITE: a 2xx was received or sent (RFC 6026).
    Accepted,
}

/// Settings of a [`TransactionLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionConfig {
    /// T1, T2, T4, Timer D.
    pub timers: TimerConfig,
    /// Send `100 Trying` as soon as an INVITE server transaction starts (§17.2.1 allows
    /// it; it stops the client's INVITE retransmissions at once). Default true.
    pub send_trying: bool,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        Self {
            timers: TimerConfig::default(),
            send_trying: true,
        }
    }
}

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: Peer,
    /// The whole message.
    pub bytes: Bytes,
    /// The transaction sending it (for [`TransactionLayer::on_transport_error`]); `None`
    /// for [`TransactionLayer::send_stateless`].
    pub transaction: Option<TransactionId>,
}

/// What the TU learns.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new request (not ACK, not CANCEL) started server transaction `id`; answer it with
    /// [`TransactionLayer::send_response`].
    Request {
        /// The server transaction.
        id: TransactionId,
        /// The request, with `received`/`rport` stamped in its top Via.
        request: Request,
        /// Where it came from.
        source: Peer,
    },
    /// A CANCEL matched INVITE server transaction `invite`, which has not sent a final
    /// response yet; the CANCEL was answered 200. Send the INVITE's final response (487
    /// unless it is too late to stop).
    Cancelled {
        /// The INVITE server transaction.
        invite: TransactionId,
        /// The CANCEL.
        request: Request,
    },
    /// An ACK matching no transaction in a state that absorbs it: the ACK of a 2xx
    /// (§13.3.1.4), for the dialog.
    Ack {
        /// The ACK.
        request: Request,
        /// Where it came from.
        source: Peer,
        /// The INVITE server transaction whose 2xx it acknowledges, when known; that
        /// transaction stops retransmitting the 2xx.
        invite: Option<TransactionId>,
    },
    /// A response for client transaction `id`: provisional, final, or in the Accepted
    /// state a 2xx retransmission or a 2xx from another fork.
    Response {
        /// The client transaction.
        id: TransactionId,
        /// The response.
        response: Response,
    },
    /// A 2xx to INVITE that matches no client transaction (a fork after Timer M): the UAC
    /// core should ACK and BYE it.
    StrayResponse {
        /// The response.
        response: Response,
        /// Where it came from.
        source: Peer,
    },
    /// Timer B or F: client transaction `id` got no final response; `response` is the
    /// 408 the TU should act on.
    Timeout {
        /// The client transaction.
        id: TransactionId,
        /// A 408 built from the request.
        response: Response,
    },
    /// INVITE server transaction `id` never got the ACK of its final response (Timer H,
    /// or Timer L after a 2xx): for a 2xx, end the session with BYE (§13.3.1.4).
    AckTimeout {
        /// The server transaction.
        id: TransactionId,
    },
    /// The shell reported that transaction `id` could not send.
    TransportError {
        /// The transaction.
        id: TransactionId,
    },
    /// Transaction `id` ended and is gone (also for a CANCEL that was never sent because
    /// its INVITE ended first).
    Terminated {
        /// The transaction.
        id: TransactionId,
    },
}

/// One output of the layer.
// Events carry the message by value: boxing it would cost an allocation per event to
// save queue slots that are drained at once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send these bytes.
    Transmit(Transmit),
    /// Tell the TU.
    Event(Event),
}

/// Misuse of the layer by the TU (a peer's misbehaviour never surfaces as an error: it is
/// absorbed, dropped and counted in [`TransactionStats`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// No live transaction has this id.
    #[error("unknown or terminated transaction")]
    UnknownTransaction,
    /// The transaction is a client transaction.
    #[error("responses are sent through server transactions only")]
    NotServer,
    /// Only INVITE client transactions can be cancelled.
    #[error("only an INVITE client transaction can be cancelled")]
    NotInviteClient,
    /// The response is not allowed in the transaction's state (e.g. a second final
    /// response).
    #[error("response not allowed in state {0:?}")]
    InvalidState(State),
    /// The INVITE already has a final response.
    #[error("too late to cancel: a final response arrived")]
    TooLateToCancel,
    /// A CANCEL was already requested for this INVITE.
    #[error("already cancelled")]
    AlreadyCancelled,
    /// ACK is no transaction: use [`TransactionLayer::send_stateless`] for the ACK of a
    /// 2xx; the layer sends the ACK of a non-2xx itself.
    #[error("ACK is not sent through a client transaction")]
    AckIsNotATransaction,
    /// The request's top Via has no RFC 3261 branch.
    #[error("top Via lacks a branch starting with z9hG4bK")]
    MissingBranch,
    /// A client transaction with this branch and method exists.
    #[error("a client transaction with this branch and method exists")]
    DuplicateBranch,
    /// A header the layer needs is missing or malformed.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Counters of what the layer absorbed or dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionStats {
    /// Requests, responses and ACKs we sent again (timers and absorbed retransmissions).
    pub retransmissions_sent: u64,
    /// Retransmitted requests and responses the peer sent that were absorbed.
    pub retransmissions_absorbed: u64,
    /// Responses matching no client transaction.
    pub stray_responses: u64,
    /// Messages dropped for lack of a parseable top Via, CSeq or the headers matching
    /// needs.
    pub malformed: u64,
    /// CANCELs answered 481.
    pub unmatched_cancels: u64,
}

#[derive(Debug)]
enum IndexKey {
    Client(ClientKey),
    Server(ServerKey),
}

/// One transaction.
#[derive(Debug)]
struct Tx {
    kind: Kind,
    state: State,
    /// Where we send: the destination of a client request, the response address of a
    /// server transaction.
    peer: Peer,
    reliable: bool,
    index: IndexKey,
    /// Client: the request (CANCEL, ACK and 408 are built from it).
    request: Option<Request>,
    /// Client: the request's bytes, retransmitted by A and E.
    request_bytes: Bytes,
    /// Server: the last response sent. INVITE client in Completed: the ACK.
    reply: Option<Bytes>,
    /// INVITE server and RFC 2543 server transactions: the To tag of the last response.
    reply_to_tag: Option<Box<str>>,
    /// RFC 2543 server transaction: the request's To tag.
    request_to_tag: Option<Box<str>>,
    /// Server: Call-ID and CSeq number, to match the ACK of a 2xx.
    call_id: Box<str>,
    cseq: u32,
    /// The next retransmission interval.
    interval: Duration,
    retransmit: Option<(Timer, Instant)>,
    lifetime: Option<(Timer, Instant)>,
    /// INVITE client in Calling: a CANCEL waiting for the first provisional response.
    pending_cancel: Option<(TransactionId, Request)>,
    cancelled: bool,
    /// INVITE server in Accepted: the ACK arrived.
    acked: bool,
    legacy: bool,
}

impl Tx {
    fn slot(&mut self, timer: Timer) -> &mut Option<(Timer, Instant)> {
        if timer.is_retransmission() {
            &mut self.retransmit
        } else {
            &mut self.lifetime
        }
    }

    fn holds(&self, timer: Timer, at: Instant) -> bool {
        let slot = if timer.is_retransmission() {
            self.retransmit
        } else {
            self.lifetime
        };
        slot == Some((timer, at))
    }

    fn clear_timers(&mut self) {
        self.retransmit = None;
        self.lifetime = None;
    }
}

/// All transactions of one endpoint. See the module documentation for the drive
/// contract.
#[derive(Debug)]
pub struct TransactionLayer {
    config: TransactionConfig,
    next_id: u64,
    txs: HashMap<TransactionId, Tx>,
    clients: HashMap<ClientKey, TransactionId>,
    servers: HashMap<ServerKey, TransactionId>,
    /// INVITE server transactions in Accepted still retransmitting a 2xx, by Call-ID,
    /// then CSeq number.
    awaiting_ack: HashMap<Box<str>, Vec<(u32, TransactionId)>>,
    timers: TimerQueue,
    out: VecDeque<Output>,
    stats: TransactionStats,
}

fn serialize(write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut v = Vec::with_capacity(1024);
    write(&mut v);
    Bytes::from(v)
}

/// §18.2.1 and RFC 3581: adds `received` (when the sent-by is not the source address,
/// or `rport` was asked for) and fills `rport` in the top Via. Returns the stamped top
/// Via; leaves the message alone when its Via list does not parse.
fn stamp_via(req: &mut Request, via: Via, source: &Peer) -> Via {
    let ip = source.addr.ip();
    let rport_asked = matches!(via.rport(), Some(None));
    if via.host.ip() == Some(ip) && !rport_asked {
        return via;
    }
    let Ok(mut vias) = req.headers.vias() else {
        return via;
    };
    let Some(top) = vias.first_mut() else {
        return via;
    };
    let param = |name: &str, value: String| {
        Some(Param {
            name: Token::new(name).ok()?,
            value: Some(ParamValue::new(&value).ok()?),
        })
    };
    if let Some(p) = param("received", ip.to_string()) {
        top.params.set(p);
    }
    if rport_asked && let Some(p) = param("rport", source.addr.port().to_string()) {
        top.params.set(p);
    }
    let stamped = top.clone();
    let Some(first) = req
        .headers
        .iter()
        .position(|f| f.known == Some(HeaderName::Via))
    else {
        return via;
    };
    req.headers.remove(HeaderName::Via);
    for (i, v) in vias.iter().enumerate() {
        // A Via displays without CR or LF.
        let _ = req
            .headers
            .insert(first + i, HeaderName::Via, &v.to_string());
    }
    stamped
}

/// Where responses to a request go (§18.2.2, RFC 3581; `maddr` not honoured).
fn response_peer(via: &Via, source: &Peer) -> Peer {
    if source.is_reliable() || via.rport().is_some() {
        return source.clone();
    }
    Peer::new(
        source.transport.clone(),
        SocketAddr::new(source.addr.ip(), via.port.unwrap_or(5060)),
    )
}

fn to_tag(headers: &super::header::Headers) -> Option<Box<str>> {
    headers.to().ok()?.tag().map(Into::into)
}

impl Default for TransactionLayer {
    fn default() -> Self {
        Self::new(TransactionConfig::default())
    }
}

impl TransactionLayer {
    /// An empty layer. T1 is raised to at least 1 ms and T2 to at least T1.
    pub fn new(config: TransactionConfig) -> Self {
        Self {
            config: TransactionConfig {
                timers: config.timers.sanitized(),
                ..config
            },
            next_id: 1,
            txs: HashMap::new(),
            clients: HashMap::new(),
            servers: HashMap::new(),
            awaiting_ack: HashMap::new(),
            timers: TimerQueue::default(),
            out: VecDeque::new(),
            stats: TransactionStats::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &TransactionConfig {
        &self.config
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Entries in the timer heap, live or waiting for lazy removal (a diagnostic: it
    /// stays proportional to [`len`](Self::len)).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// The state of a live transaction.
    pub fn state(&self, id: TransactionId) -> Option<State> {
        self.txs.get(&id).map(|t| t.state)
    }

    /// The kind of a live transaction.
    pub fn kind(&self, id: TransactionId) -> Option<Kind> {
        self.txs.get(&id).map(|t| t.kind)
    }

    /// The request a live client transaction sent.
    pub fn request(&self, id: TransactionId) -> Option<&Request> {
        self.txs.get(&id)?.request.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> TransactionStats {
        self.stats
    }

    /// The next output, `None` when drained.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` when no
    /// timer is armed.
    #[must_use]
    pub fn next_timeout(&mut self) -> Option<Instant> {
        while let Some((at, id, timer)) = self.timers.peek() {
            if self.txs.get(&id).is_some_and(|t| t.holds(timer, at)) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, id, timer)) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !self.txs.get(&id).is_some_and(|t| t.holds(timer, at)) {
                continue;
            }
            let Some(mut tx) = self.txs.remove(&id) else {
                continue;
            };
            *tx.slot(timer) = None;
            let keep = self.fire(id, &mut tx, timer, now);
            self.finish(id, tx, keep);
        }
        let txs = &self.txs;
        self.timers
            .compact_if_sparse(2 * txs.len(), |at, id, timer| {
                txs.get(&id).is_some_and(|t| t.holds(timer, at))
            });
    }

    /// A message from the network. Requests start or match server transactions,
    /// responses match client transactions; see [`Event`] for what reaches the TU.
    pub fn on_message(&mut self, message: Message, source: Peer, now: Instant) {
        match message {
            Message::Request(r) => self.on_request(r, source, now),
            Message::Response(r) => self.on_response(r, source, now),
        }
    }

    /// Starts a client transaction for `request` (not ACK) and sends it to
    /// `destination`. The top Via must carry a fresh RFC 3261 branch.
    pub fn send_request(
        &mut self,
        request: Request,
        destination: Peer,
        now: Instant,
    ) -> Result<TransactionId, TransactionError> {
        if request.method == Method::Ack {
            return Err(TransactionError::AckIsNotATransaction);
        }
        let via = request.headers.top_via()?;
        if !via.has_rfc3261_branch() {
            return Err(TransactionError::MissingBranch);
        }
        let key = ClientKey::new(&via, &request.method).ok_or(TransactionError::MissingBranch)?;
        if self.clients.contains_key(&key) {
            return Err(TransactionError::DuplicateBranch);
        }
        let id = self.alloc_id();
        self.start_client(id, key, request, destination, now);
        Ok(id)
    }

    /// Sends `response` through server transaction `id`: a provisional one keeps it in
    /// Proceeding, a 2xx to INVITE moves it to Accepted (and retransmits the 2xx until
    /// the ACK on unreliable transports), other finals to Completed.
    pub fn send_response(
        &mut self,
        id: TransactionId,
        response: &Response,
        now: Instant,
    ) -> Result<(), TransactionError> {
        let Some(mut tx) = self.txs.remove(&id) else {
            return Err(TransactionError::UnknownTransaction);
        };
        match self.respond(id, &mut tx, response, now) {
            Ok(keep) => {
                self.finish(id, tx, keep);
                Ok(())
            }
            Err(e) => {
                self.txs.insert(id, tx);
                Err(e)
            }
        }
    }

    /// Sends a message outside any transaction (the ACK of a 2xx, a stateless answer).
    pub fn send_stateless(&mut self, message: &Message, destination: Peer) {
        let bytes = serialize(|v| message.write_to(v));
        self.transmit(destination, bytes, None);
    }

    /// Cancels INVITE client transaction `invite` (RFC 3261 §9.1): builds the CANCEL and
    /// sends it now if a provisional response has arrived, or as soon as one does. The
    /// returned id is the CANCEL's own client transaction; if the INVITE ends before any
    /// provisional response, that id only gets [`Event::Terminated`].
    pub fn cancel(
        &mut self,
        invite: TransactionId,
        now: Instant,
    ) -> Result<TransactionId, TransactionError> {
        let tx = self
            .txs
            .get(&invite)
            .ok_or(TransactionError::UnknownTransaction)?;
        if tx.kind != Kind::InviteClient {
            return Err(TransactionError::NotInviteClient);
        }
        if tx.cancelled {
            return Err(TransactionError::AlreadyCancelled);
        }
        if !matches!(tx.state, State::Calling | State::Proceeding) {
            return Err(TransactionError::TooLateToCancel);
        }
        let Some(request) = tx.request.as_ref() else {
            return Err(TransactionError::NotInviteClient);
        };
        let cancel = build_cancel(request)?;
        let (state, peer) = (tx.state, tx.peer.clone());
        let cid = self.alloc_id();
        if let Some(tx) = self.txs.get_mut(&invite) {
            tx.cancelled = true;
            if state == State::Calling {
                tx.pending_cancel = Some((cid, cancel));
                return Ok(cid);
            }
        }
        self.start_cancel(cid, cancel, peer, now);
        Ok(cid)
    }

    /// The shell could not send for transaction `id` (ICMP error, connection refused or
    /// lost): the transaction ends with [`Event::TransportError`].
    pub fn on_transport_error(&mut self, id: TransactionId) {
        if let Some(tx) = self.txs.remove(&id) {
            self.event(Event::TransportError { id });
            self.terminate(id, tx);
        }
    }

    // ---- internals ----

    fn alloc_id(&mut self) -> TransactionId {
        let id = TransactionId(self.next_id);
        self.next_id += 1;
        id
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn transmit(&mut self, destination: Peer, bytes: Bytes, transaction: Option<TransactionId>) {
        self.out.push_back(Output::Transmit(Transmit {
            destination,
            bytes,
            transaction,
        }));
    }

    fn retransmit(&mut self, tx: &Tx, id: TransactionId, bytes: Bytes) {
        self.stats.retransmissions_sent += 1;
        self.transmit(tx.peer.clone(), bytes, Some(id));
    }

    /// Arms `timer` to fire `after` from `now` (never, if that overflows the clock).
    fn arm_after(
        &mut self,
        id: TransactionId,
        tx: &mut Tx,
        timer: Timer,
        now: Instant,
        after: Duration,
    ) {
        let at = now.checked_add(after);
        *tx.slot(timer) = at.map(|at| (timer, at));
        if let Some(at) = at {
            self.timers.push(at, id, timer);
        }
    }

    /// Arms `timer` with its initial duration if the transport uses it.
    fn arm(&mut self, id: TransactionId, tx: &mut Tx, timer: Timer, now: Instant) {
        if let Some(d) = self.config.timers.initial(timer, tx.reliable) {
            self.arm_after(id, tx, timer, now, d);
        }
    }

    /// Enters a wait state ended by `timer`: false (terminate now) when the timer is zero
    /// on this transport.
    fn enter_wait(&mut self, id: TransactionId, tx: &mut Tx, timer: Timer, now: Instant) -> bool {
        match self.config.timers.initial(timer, tx.reliable) {
            Some(d) if d.is_zero() => false,
            Some(d) => {
                self.arm_after(id, tx, timer, now, d);
                true
            }
            None => true,
        }
    }

    /// Puts `tx` back, or terminates it.
    fn finish(&mut self, id: TransactionId, tx: Tx, keep: bool) {
        if keep {
            self.txs.insert(id, tx);
        } else {
            self.terminate(id, tx);
        }
    }

    /// Removes every trace of `tx` (already out of the map) and says so.
    fn terminate(&mut self, id: TransactionId, mut tx: Tx) {
        match &tx.index {
            IndexKey::Client(k) => {
                if self.clients.get(k) == Some(&id) {
                    self.clients.remove(k);
                }
            }
            IndexKey::Server(k) => {
                if self.servers.get(k) == Some(&id) {
                    self.servers.remove(k);
                }
            }
        }
        self.stop_awaiting_ack(id, &tx);
        if let Some((cid, _)) = tx.pending_cancel.take() {
            self.event(Event::Terminated { id: cid });
        }
        self.event(Event::Terminated { id });
    }

    fn stop_awaiting_ack(&mut self, id: TransactionId, tx: &Tx) {
        if let Some(list) = self.awaiting_ack.get_mut(&*tx.call_id) {
            list.retain(|(_, t)| *t != id);
            if list.is_empty() {
                self.awaiting_ack.remove(&*tx.call_id);
            }
        }
    }

    fn start_client(
        &mut self,
        id: TransactionId,
        key: ClientKey,
        request: Request,
        destination: Peer,
        now: Instant,
    ) {
        let invite = request.method == Method::Invite;
        let bytes = serialize(|v| request.write_to(v));
        let mut tx = Tx {
            kind: if invite {
                Kind::InviteClient
            } else {
                Kind::NonInviteClient
            },
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            reliable: destination.is_reliable(),
            peer: destination,
            index: IndexKey::Client(key.clone()),
            request: Some(request),
            request_bytes: bytes.clone(),
            reply: None,
            reply_to_tag: None,
            request_to_tag: None,
            call_id: Box::from(""),
            cseq: 0,
            interval: self.config.timers.t1,
            retransmit: None,
            lifetime: None,
            pending_cancel: None,
            cancelled: false,
            acked: false,
            legacy: false,
        };
        self.transmit(tx.peer.clone(), bytes, Some(id));
        let (retransmit, timeout) = if invite {
            (Timer::A, Timer::B)
        } else {
            (Timer::E, Timer::F)
        };
        self.arm(id, &mut tx, retransmit, now);
        self.arm(id, &mut tx, timeout, now);
        self.clients.insert(key, id);
        self.txs.insert(id, tx);
    }

    fn start_cancel(&mut self, id: TransactionId, cancel: Request, peer: Peer, now: Instant) {
        let key = cancel
            .headers
            .top_via()
            .ok()
            .and_then(|via| ClientKey::new(&via, &Method::Cancel));
        match key {
            Some(key) if !self.clients.contains_key(&key) => {
                self.start_client(id, key, cancel, peer, now);
            }
            // The INVITE was sent with a branch, so its CANCEL has one, and only one
            // CANCEL is built per INVITE; end quietly if that ever fails.
            _ => self.event(Event::Terminated { id }),
        }
    }

    fn timeout_response(tx: &Tx) -> Option<Response> {
        let req = tx.request.as_ref()?;
        Some(build_response(
            &ResponseBasis::from_request(req),
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::REQUEST_TIMEOUT.canonical_reason(),
            None,
        ))
    }

    /// Runs `timer` for `tx`; false when the transaction ends.
    fn fire(&mut self, id: TransactionId, tx: &mut Tx, timer: Timer, now: Instant) -> bool {
        let t2 = self.config.timers.t2;
        match timer {
            Timer::A | Timer::E => {
                self.retransmit(tx, id, tx.request_bytes.clone());
                tx.interval = match (timer, tx.state) {
                    (Timer::A, _) => tx.interval.saturating_mul(2),
                    (_, State::Proceeding) => t2,
                    _ => tx.interval.saturating_mul(2).min(t2),
                };
                self.arm_after(id, tx, timer, now, tx.interval);
                true
            }
            Timer::G | Timer::Resend2xx => {
                if let Some(reply) = tx.reply.clone()
                    && !tx.acked
                {
                    self.retransmit(tx, id, reply);
                    tx.interval = tx.interval.saturating_mul(2).min(t2);
                    self.arm_after(id, tx, timer, now, tx.interval);
                }
                true
            }
            Timer::B | Timer::F => {
                if let Some(response) = Self::timeout_response(tx) {
                    self.event(Event::Timeout { id, response });
                }
                false
            }
            Timer::H => {
                self.event(Event::AckTimeout { id });
                false
            }
            Timer::L => {
                if !tx.acked {
                    self.event(Event::AckTimeout { id });
                }
                false
            }
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::M => false,
        }
    }

    fn on_request(&mut self, mut req: Request, source: Peer, now: Instant) {
        let (Ok(via), Ok(cseq)) = (req.headers.top_via(), req.headers.cseq()) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(key) = ServerKey::new(&req, &via, &cseq, &req.method) else {
            self.stats.malformed += 1;
            return;
        };
        if req.method == Method::Ack {
            self.on_ack(req, &key, cseq.seq, source, now);
            return;
        }
        if let Some(&id) = self.servers.get(&key) {
            self.on_retransmitted_request(id);
            return;
        }
        let call_id: Box<str> = match req.headers.call_id() {
            Ok(c) => c.into(),
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let legacy = key.is_legacy();
        let target = if req.method == Method::Cancel {
            Some(self.cancel_target(&req, &via, &cseq))
        } else {
            None
        };
        let stamped = stamp_via(&mut req, via, &source);
        let id = self.alloc_id();
        let invite = req.method == Method::Invite;
        let mut tx = Tx {
            kind: if invite {
                Kind::InviteServer
            } else {
                Kind::NonInviteServer
            },
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            peer: response_peer(&stamped, &source),
            reliable: source.is_reliable(),
            index: IndexKey::Server(key.clone()),
            request: None,
            request_bytes: Bytes::new(),
            reply: None,
            reply_to_tag: None,
            request_to_tag: if legacy { to_tag(&req.headers) } else { None },
            call_id,
            cseq: cseq.seq,
            interval: self.config.timers.t1,
            retransmit: None,
            lifetime: None,
            pending_cancel: None,
            cancelled: false,
            acked: false,
            legacy,
        };
        self.servers.insert(key, id);
        if let Some(target) = target {
            self.answer_cancel(id, tx, req, target, now);
            return;
        }
        if invite && self.config.send_trying {
            let trying = build_response(
                &ResponseBasis::from_request(&req),
                StatusCode::TRYING,
                StatusCode::TRYING.canonical_reason(),
                None,
            );
            let bytes = serialize(|v| trying.write_to(v));
            self.transmit(tx.peer.clone(), bytes.clone(), Some(id));
            tx.reply = Some(bytes);
        }
        self.txs.insert(id, tx);
        self.event(Event::Request {
            id,
            request: req,
            source,
        });
    }

    /// A request matching server transaction `id`: re-send the last response, if any.
    fn on_retransmitted_request(&mut self, id: TransactionId) {
        self.stats.retransmissions_absorbed += 1;
        let Some(tx) = self.txs.get(&id) else {
            return;
        };
        let resend = match (tx.kind, tx.state) {
            (Kind::InviteServer, State::Proceeding | State::Completed)
            | (Kind::NonInviteServer, State::Proceeding | State::Completed) => tx.reply.clone(),
            _ => None,
        };
        if let Some(bytes) = resend {
            let peer = tx.peer.clone();
            self.stats.retransmissions_sent += 1;
            self.transmit(peer, bytes, Some(id));
        }
    }

    /// The INVITE server transaction a CANCEL cancels (§9.2), if any.
    fn cancel_target(&self, req: &Request, via: &Via, cseq: &CSeq) -> Option<TransactionId> {
        let key = ServerKey::new(req, via, cseq, &Method::Invite)?;
        let id = *self.servers.get(&key)?;
        let tx = self.txs.get(&id)?;
        if tx.kind != Kind::InviteServer {
            return None;
        }
        if tx.legacy && to_tag(&req.headers) != tx.request_to_tag {
            return None;
        }
        Some(id)
    }

    /// Answers a new CANCEL (server transaction `id`, not yet in the map): 200 with the
    /// INVITE's To tag when it matched, 481 otherwise.
    fn answer_cancel(
        &mut self,
        id: TransactionId,
        mut tx: Tx,
        req: Request,
        target: Option<TransactionId>,
        now: Instant,
    ) {
        let invite = target.and_then(|t| self.txs.get(&t).map(|inv| (t, inv)));
        let (status, tag, pending) = match invite {
            Some((t, inv)) => (
                StatusCode::OK,
                inv.reply_to_tag.clone(),
                (inv.state == State::Proceeding).then_some(t),
            ),
            None => {
                self.stats.unmatched_cancels += 1;
                (StatusCode::CALL_OR_TRANSACTION_DOES_NOT_EXIST, None, None)
            }
        };
        let response = build_response(
            &ResponseBasis::from_request(&req),
            status,
            status.canonical_reason(),
            tag.as_deref(),
        );
        // A final response from Trying is always allowed.
        let keep = self.respond(id, &mut tx, &response, now).unwrap_or(true);
        self.finish(id, tx, keep);
        if let Some(invite) = pending {
            self.event(Event::Cancelled {
                invite,
                request: req,
            });
        }
    }

    fn on_ack(&mut self, req: Request, key: &ServerKey, cseq: u32, source: Peer, now: Instant) {
        if let Some(&id) = self.servers.get(key)
            && let Some(mut tx) = self.txs.remove(&id)
        {
            let matches = tx.kind == Kind::InviteServer
                && (!tx.legacy || to_tag(&req.headers) == tx.reply_to_tag);
            if matches {
                let keep = match tx.state {
                    State::Completed => {
                        tx.state = State::Confirmed;
                        tx.clear_timers();
                        self.enter_wait(id, &mut tx, Timer::I, now)
                    }
                    State::Accepted => {
                        tx.acked = true;
                        tx.retransmit = None;
                        self.stop_awaiting_ack(id, &tx);
                        self.event(Event::Ack {
                            request: req,
                            source,
                            invite: Some(id),
                        });
                        true
                    }
                    _ => {
                        self.stats.retransmissions_absorbed += 1;
                        true
                    }
                };
                self.finish(id, tx, keep);
                return;
            }
            self.txs.insert(id, tx);
        }
        let invite = self.take_awaiting_ack(&req, cseq);
        self.event(Event::Ack {
            request: req,
            source,
            invite,
        });
    }

    /// The Accepted INVITE server transaction an ACK of a 2xx acknowledges: it stops
    /// retransmitting its 2xx.
    fn take_awaiting_ack(&mut self, ack: &Request, cseq: u32) -> Option<TransactionId> {
        let call_id = ack.headers.call_id().ok()?;
        let list = self.awaiting_ack.get_mut(call_id)?;
        let at = list.iter().position(|(seq, _)| *seq == cseq)?;
        let (_, id) = list.swap_remove(at);
        if list.is_empty() {
            self.awaiting_ack.remove(call_id);
        }
        let tx = self.txs.get_mut(&id)?;
        tx.acked = true;
        tx.retransmit = None;
        Some(id)
    }

    /// Sends `response` through server transaction `tx`; Ok(false) when it ends now.
    fn respond(
        &mut self,
        id: TransactionId,
        tx: &mut Tx,
        response: &Response,
        now: Instant,
    ) -> Result<bool, TransactionError> {
        let status = response.status;
        let next = match (tx.kind, tx.state) {
            (Kind::InviteClient | Kind::NonInviteClient, _) => {
                return Err(TransactionError::NotServer);
            }
            (Kind::InviteServer, State::Proceeding) => {
                if status.is_provisional() {
                    State::Proceeding
                } else if status.is_success() {
                    State::Accepted
                } else {
                    State::Completed
                }
            }
            (Kind::InviteServer, State::Accepted) if status.is_success() => State::Accepted,
            (Kind::NonInviteServer, State::Trying | State::Proceeding) => {
                if status.is_provisional() {
                    State::Proceeding
                } else {
                    State::Completed
                }
            }
            (_, state) => return Err(TransactionError::InvalidState(state)),
        };
        let bytes = serialize(|v| response.write_to(v));
        self.transmit(tx.peer.clone(), bytes.clone(), Some(id));
        tx.reply = Some(bytes);
        if tx.kind == Kind::InviteServer || tx.legacy {
            tx.reply_to_tag = to_tag(&response.headers);
        }
        let previous = tx.state;
        tx.state = next;
        Ok(match (tx.kind, previous, next) {
            (Kind::InviteServer, State::Proceeding, State::Accepted) => {
                tx.interval = self.config.timers.t1;
                self.arm(id, tx, Timer::Resend2xx, now);
                self.arm(id, tx, Timer::L, now);
                self.awaiting_ack
                    .entry(tx.call_id.clone())
                    .or_default()
                    .push((tx.cseq, id));
                true
            }
            (Kind::InviteServer, State::Proceeding, State::Completed) => {
                tx.interval = self.config.timers.t1;
                self.arm(id, tx, Timer::G, now);
                self.arm(id, tx, Timer::H, now);
                true
            }
            (Kind::NonInviteServer, _, State::Completed) => self.enter_wait(id, tx, Timer::J, now),
            _ => true,
        })
    }

    fn on_response(&mut self, response: Response, source: Peer, now: Instant) {
        let (Ok(via), Ok(cseq)) = (response.headers.top_via(), response.headers.cseq()) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(key) = ClientKey::new(&via, &cseq.method) else {
            self.stats.malformed += 1;
            return;
        };
        let found = self
            .clients
            .get(&key)
            .copied()
            .and_then(|id| self.txs.remove(&id).map(|tx| (id, tx)));
        let Some((id, mut tx)) = found else {
            self.stats.stray_responses += 1;
            if response.status.is_success() && cseq.method == Method::Invite {
                self.event(Event::StrayResponse { response, source });
            }
            return;
        };
        let keep = match tx.kind {
            Kind::InviteClient => self.invite_client_response(id, &mut tx, response, now),
            _ => self.non_invite_client_response(id, &mut tx, response, now),
        };
        self.finish(id, tx, keep);
    }

    fn drop_pending_cancel(&mut self, tx: &mut Tx) {
        if let Some((cid, _)) = tx.pending_cancel.take() {
            self.event(Event::Terminated { id: cid });
        }
    }

    fn invite_client_response(
        &mut self,
        id: TransactionId,
        tx: &mut Tx,
        response: Response,
        now: Instant,
    ) -> bool {
        let status = response.status;
        match tx.state {
            State::Calling | State::Proceeding if status.is_provisional() => {
                tx.state = State::Proceeding;
                tx.clear_timers();
                self.event(Event::Response { id, response });
                if let Some((cid, cancel)) = tx.pending_cancel.take() {
                    self.start_cancel(cid, cancel, tx.peer.clone(), now);
                }
                true
            }
            State::Calling | State::Proceeding if status.is_success() => {
                tx.state = State::Accepted;
                tx.clear_timers();
                self.arm(id, tx, Timer::M, now);
                self.drop_pending_cancel(tx);
                self.event(Event::Response { id, response });
                true
            }
            State::Calling | State::Proceeding => {
                let ack = tx
                    .request
                    .as_ref()
                    .and_then(|inv| build_ack_for_non2xx(inv, &response).ok());
                let Some(ack) = ack else {
                    // No usable To to acknowledge: not a response we can act on.
                    self.stats.malformed += 1;
                    return true;
                };
                let bytes = serialize(|v| ack.write_to(v));
                self.transmit(tx.peer.clone(), bytes.clone(), Some(id));
                tx.reply = Some(bytes);
                tx.state = State::Completed;
                tx.clear_timers();
                self.drop_pending_cancel(tx);
                self.event(Event::Response { id, response });
                self.enter_wait(id, tx, Timer::D, now)
            }
            State::Completed if status.is_final() && !status.is_success() => {
                self.stats.retransmissions_absorbed += 1;
                if let Some(ack) = tx.reply.clone() {
                    self.retransmit(tx, id, ack);
                }
                true
            }
            State::Accepted if status.is_success() => {
                self.event(Event::Response { id, response });
                true
            }
            _ => {
                self.stats.retransmissions_absorbed += 1;
                true
            }
        }
    }

    fn non_invite_client_response(
        &mut self,
        id: TransactionId,
        tx: &mut Tx,
        response: Response,
        now: Instant,
    ) -> bool {
        match tx.state {
            State::Trying | State::Proceeding if response.status.is_provisional() => {
                tx.state = State::Proceeding;
                self.event(Event::Response { id, response });
                true
            }
            State::Trying | State::Proceeding => {
                tx.state = State::Completed;
                tx.clear_timers();
                self.event(Event::Response { id, response });
                self.enter_wait(id, tx, Timer::K, now)
            }
            _ => {
                self.stats.retransmissions_absorbed += 1;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rport_and_received_are_stamped_on_the_top_via_only() {
        let mut req = Request::new(Method::Options, "sip:a@b".parse().unwrap());
        req.headers
            .push(
                HeaderName::Via,
                "SIP/2.0/UDP host.example;branch=z9hG4bK1;rport, SIP/2.0/UDP p;branch=z9hG4bK0",
            )
            .unwrap();
        req.headers.push("X-Between", "1").unwrap();
        req.headers
            .push(HeaderName::Via, "SIP/2.0/TCP q;branch=z9hG4bK9")
            .unwrap();
        let source = Peer::udp("192.0.2.7:41000".parse().unwrap());
        let via = req.headers.top_via().unwrap();
        let stamped = stamp_via(&mut req, via, &source);
        assert_eq!(stamped.rport(), Some(Some(41000)));
        assert_eq!(stamped.received(), Some("192.0.2.7".parse().unwrap()));
        let vias = req.headers.vias().unwrap();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0], stamped);
        assert_eq!(vias[1].received(), None);
        assert_eq!(vias[2].branch(), Some("z9hG4bK9"));
        assert_eq!(
            response_peer(&stamped, &source).addr,
            "192.0.2.7:41000".parse().unwrap()
        );
    }

    #[test]
    fn without_rport_responses_go_to_the_source_address_and_the_via_port() {
        let via: Via = "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1"
            .parse()
            .unwrap();
        let source = Peer::udp("192.0.2.7:6000".parse().unwrap());
        assert_eq!(
            response_peer(&via, &source).addr,
            "192.0.2.7:5070".parse().unwrap()
        );
        let tcp = Peer::tcp("192.0.2.7:6000".parse().unwrap());
        assert_eq!(response_peer(&via, &tcp), tcp);
    }
}

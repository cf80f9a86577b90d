//! The HTTP control API of `confer serve` (axum): rooms, participants, the event stream,
//! metrics and health. README's "Control API" section is its user documentation.
//!
//! Every handler validates its input here and hands the work to the [`Host`]; errors are a
//! 4xx or 5xx status with `{"error": "..."}` saying what is wrong:
//!
//! - 400: the body is not JSON, or not the expected shape (wrong type, unknown field);
//! - 403: the dial-out policy refuses the number (the message names the rule);
//! - 404: no such room, participant or call (or route);
//! - 409: the room refuses the join (locked, full, ended), a recording is already
//!   running (start) or not running (stop), dial-in asked without a PIN number, or
//!   dial-out without a trunk configured;
//! - 422: well-formed but impossible values (gain outside -60..=20 dB, unknown codec,
//!   payload type, RTP address);
//! - 503: no free RTP port, a media worker's command queue is full, the SIP call limit
//!   is reached, SIP is not running, the engine is stopping, or (dial-out) the
//!   compliance archive cannot be written and archiving is required.
//!
//! Bodies are parsed with `serde_json` from the raw bytes (not axum's `Json` extractor), so
//! that the error format is the same everywhere.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use confer_conference::room::{GAIN_DB_RANGE, RoomError};
use confer_engine::leg::{Codec, OpusParams};
use confer_engine::types::PayloadType;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::host::{Host, HostError, JoinSpec, ParticipantUpdate, RoomInfo, RoomSpec};
use crate::sip::{DialError, DialInInfo, PinError, Pins, PlanError, SipControl, Trunks};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The media host.
    pub host: Host,
    /// Becomes `true` at shutdown; event streams close.
    pub shutdown: watch::Receiver<bool>,
    /// SIP's counters, appended to `/metrics` when SIP runs.
    pub sip_metrics: Option<Arc<crate::sip::SipMetrics>>,
    /// The rooms' dial-in PINs.
    pub pins: Arc<Pins>,
    /// Places calls, when SIP runs.
    pub sip: Option<SipControl>,
    /// Where dialled calls go, and whether they may.
    pub trunks: Arc<Trunks>,
    /// Token keys; `None`: the API is open (loopback only).
    pub auth: Option<Arc<confer_signalling::token::Keyring>>,
    /// The participant each client device joined as, by (room, user, device): a device
    /// is in a room once.
    pub client_joins: ClientJoins,
    /// Every event, durable, for the stream's resume cursor.
    pub journal: crate::journal::Journal,
    /// Users, presence, client sessions and escalation (not in `confer bench`).
    pub uc: Option<crate::uc::Uc>,
    /// The compliance archive (not in `confer bench`).
    pub archive: Option<crate::archive::Archive>,
    /// Webhook deliveries (not in `confer bench`).
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

/// The participant each client device joined as, by (room, user, device).
pub type ClientJoins = Arc<std::sync::Mutex<std::collections::HashMap<(u64, String, String), u64>>>;

/// A room as the API shows it: the host's view and its dial-in, if it has one.
#[derive(Serialize)]
struct RoomView {
    #[serde(flatten)]
    info: RoomInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    dial_in: Option<DialInInfo>,
}

fn view(s: &ApiState, info: RoomInfo) -> RoomView {
    let dial_in = s.pins.of(info.id);
    RoomView { info, dial_in }
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(events))
        .route("/v1/rooms", get(list_rooms).post(create_room))
        .route(
            "/v1/rooms/{room}",
            get(get_room).delete(delete_room).patch(patch_room),
        )
        .route("/v1/rooms/{room}/participants", axum::routing::post(join))
        .route("/v1/rooms/{room}/calls", axum::routing::post(dial))
        .route(
            "/v1/rooms/{room}/calls/{call}",
            axum::routing::delete(hang_up),
        )
        .route("/v1/trunks", get(list_trunks))
        .route(
            "/v1/rooms/{room}/participants/{participant}",
            get(get_participant).delete(leave).patch(patch_participant),
        )
        .route(
            "/v1/rooms/{room}/recording",
            axum::routing::post(start_recording).delete(stop_recording),
        )
        .route("/v1/recordings", get(list_recordings))
        .merge(crate::uc::routes::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            crate::auth::authenticate,
        ))
        .with_state(state)
}

/// An error response: status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let status = match &e {
            HostError::UnknownRoom(_) | HostError::UnknownParticipant { .. } => {
                StatusCode::NOT_FOUND
            }
            HostError::Room(
                RoomError::Locked
                | RoomError::Full(_)
                | RoomError::Ended
                | RoomError::AlreadyRecording,
            )
            | HostError::NotRecording(_) => StatusCode::CONFLICT,
            HostError::Room(RoomError::UnknownParticipant(_)) => StatusCode::NOT_FOUND,
            HostError::Room(_) | HostError::Leg(_) | HostError::AddressFamily { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            HostError::PortsExhausted { .. } | HostError::Busy(_) | HostError::Stopped => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HostError::Socket(_) | HostError::RecordingIo(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(status: StatusCode, body: &impl serde::Serialize) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// Parses a JSON body; an empty body is `T::default()` when `empty_ok`.
fn parse_body<T: DeserializeOwned + Default>(body: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a JSON body is required",
            ))
        };
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

fn room_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no room {s:?}")))
}

fn participant_id(room: u64, s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no participant {s:?} in room {room}"),
        )
    })
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.host.metrics().render()
            + &s.sip_metrics.map_or(String::new(), |m| m.render())
            + &format!(
                "# HELP confer_dial_in_pins Rooms with a dial-in PIN.\n\
                 # TYPE confer_dial_in_pins gauge\nconfer_dial_in_pins {}\n",
                s.pins.len()
            )
            + &s.journal.metrics_text()
            + &s.archive
                .as_ref()
                .map_or(String::new(), |a| a.metrics_text())
            + &s.webhooks
                .as_ref()
                .map_or(String::new(), |w| w.metrics_text()),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: Option<String>,
    max_participants: Option<usize>,
    wait_for_moderator: Option<bool>,
    announce_joins: Option<bool>,
    dial_in: Option<bool>,
}

async fn create_room(State(s): State<ApiState>, body: Bytes) -> ApiResult {
    let req: CreateRoom = parse_body(&body, true)?;
    if let Some(n) = req.max_participants
        && !(1..=100_000).contains(&n)
    {
        return Err(ApiError::unprocessable(format!(
            "max_participants must be 1..=100000, not {n}"
        )));
    }
    let dial_in = req.dial_in.unwrap_or(false);
    if dial_in && s.pins.number().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            PinError::NoPinNumber.to_string(),
        ));
    }
    let info = s
        .host
        .create_room(RoomSpec {
            name: req.name.unwrap_or_default(),
            max_participants: req.max_participants,
            wait_for_moderator: req.wait_for_moderator.unwrap_or(false),
            announce_joins: req.announce_joins.unwrap_or(false),
            internal: false,
        })
        .await?;
    if dial_in && let Err(e) = s.pins.assign(info.id) {
        // Nothing half-created: a room that was asked with dial-in has it or is gone.
        if let Err(d) = s.host.delete_room(info.id).await {
            tracing::warn!(room = info.id, "deleting a room without its PIN: {d}");
        }
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ));
    }
    ok(StatusCode::CREATED, &view(&s, info))
}

async fn list_rooms(State(s): State<ApiState>) -> ApiResult {
    let rooms: Vec<RoomView> = s
        .host
        .rooms()
        .await?
        .into_iter()
        .map(|r| view(&s, r))
        .collect();
    ok(StatusCode::OK, &json!({ "rooms": rooms }))
}

async fn get_room(State(s): State<ApiState>, Path(room): Path<String>) -> ApiResult {
    let info = s.host.room(room_id(&room)?).await?;
    ok(StatusCode::OK, &view(&s, info))
}

async fn delete_room(State(s): State<ApiState>, Path(room): Path<String>) -> ApiResult {
    let id = room_id(&room)?;
    s.host.delete_room(id).await?;
    s.pins.release(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRoom {
    locked: Option<bool>,
}

async fn patch_room(State(s): State<ApiState>, Path(room): Path<String>, body: Bytes) -> ApiResult {
    let id = room_id(&room)?;
    let req: PatchRoom = parse_body(&body, false)?;
    let info = match req.locked {
        Some(locked) => s.host.set_locked(id, locked).await?,
        None => s.host.room(id).await?,
    };
    ok(StatusCode::OK, &view(&s, info))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Join {
    rtp_address: Option<String>,
    codec: Option<String>,
    payload_type: Option<u8>,
    bitrate_bps: Option<u32>,
    fec: Option<bool>,
    expected_loss: Option<u8>,
    dtx: Option<bool>,
    complexity: Option<u8>,
    audio_level_extension: Option<u8>,
    denoise: Option<bool>,
    muted: Option<bool>,
    deaf: Option<bool>,
    moderator: Option<bool>,
}

fn join_spec(req: Join) -> Result<JoinSpec, ApiError> {
    let addr = req
        .rtp_address
        .ok_or_else(|| ApiError::unprocessable("rtp_address is required (\"ip:port\")"))?;
    let rtp_address: SocketAddr = addr.parse().map_err(|_| {
        ApiError::unprocessable(format!(
            "rtp_address {addr:?} is not an address and port such as \"127.0.0.1:40000\""
        ))
    })?;
    if rtp_address.port() == 0 || rtp_address.ip().is_unspecified() {
        return Err(ApiError::unprocessable(format!(
            "rtp_address {rtp_address} cannot receive (unspecified address or port 0)"
        )));
    }
    let codec_name = req.codec.as_deref().unwrap_or("opus");
    let codec = match codec_name {
        "opus" => {
            let pt = req.payload_type.unwrap_or(111);
            if !(96..=127).contains(&pt) {
                return Err(ApiError::unprocessable(format!(
                    "payload_type {pt} is not dynamic (96..=127) as Opus needs"
                )));
            }
            let defaults = OpusParams::default();
            let bitrate_bps = req.bitrate_bps.unwrap_or(defaults.bitrate_bps);
            if !(6_000..=510_000).contains(&bitrate_bps) {
                return Err(ApiError::unprocessable(format!(
                    "bitrate_bps {bitrate_bps} is outside 6000..=510000"
                )));
            }
            let complexity = req.complexity.unwrap_or(defaults.complexity);
            if complexity > 10 {
                return Err(ApiError::unprocessable(format!(
                    "complexity {complexity} is outside 0..=10"
                )));
            }
            let expected_loss_percent = req.expected_loss.unwrap_or(0);
            if expected_loss_percent > 100 {
                return Err(ApiError::unprocessable(format!(
                    "expected_loss {expected_loss_percent} is outside 0..=100 (percent)"
                )));
            }
            Codec::Opus(OpusParams {
                payload_type: PayloadType::new(pt)
                    .map_err(|e| ApiError::unprocessable(format!("payload_type: {e}")))?,
                fec: req.fec.unwrap_or(defaults.fec),
                expected_loss_percent,
                dtx: req.dtx.unwrap_or(defaults.dtx),
                bitrate_bps,
                complexity,
            })
        }
        "pcmu" | "pcma" => {
            let (codec, pt) = if codec_name == "pcmu" {
                (Codec::Pcmu, 0)
            } else {
                (Codec::Pcma, 8)
            };
            if let Some(p) = req.payload_type
                && p != pt
            {
                return Err(ApiError::unprocessable(format!(
                    "{codec_name} has the static payload type {pt}, not {p}"
                )));
            }
            if req.bitrate_bps.is_some()
                || req.fec.is_some()
                || req.expected_loss.is_some()
                || req.dtx.is_some()
                || req.complexity.is_some()
            {
                return Err(ApiError::unprocessable(format!(
                    "bitrate_bps, fec, expected_loss, dtx and complexity are Opus settings, \
                     not {codec_name}'s"
                )));
            }
            codec
        }
        other => {
            return Err(ApiError::unprocessable(format!(
                "codec {other:?} is not one of \"opus\", \"pcmu\", \"pcma\""
            )));
        }
    };
    if let Some(id) = req.audio_level_extension
        && !(1..=14).contains(&id)
    {
        return Err(ApiError::unprocessable(format!(
            "audio_level_extension {id} is not a one-byte-header extension id (1..=14)"
        )));
    }
    Ok(JoinSpec {
        rtp_address,
        codec,
        audio_level_extension: req.audio_level_extension,
        denoise: req.denoise.unwrap_or(false),
        muted: req.muted.unwrap_or(false),
        deaf: req.deaf.unwrap_or(false),
        moderator: req.moderator.unwrap_or(false),
    })
}

async fn join(
    State(s): State<ApiState>,
    Path(room): Path<String>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult {
    let id = room_id(&room)?;
    let req: Join = parse_body(&body, false)?;
    let mut spec = join_spec(req)?;
    // A client joins as itself: the moderator role is the admin's to give, and one
    // device is one participant.
    let device = caller.as_ref().and_then(|c| c.client_device());
    if let Some((user, dev)) = &device {
        spec.moderator = false;
        let key = (id, user.clone(), dev.clone());
        let existing = s
            .client_joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some(p) = existing
            && s.host.participant(id, p).await.is_ok()
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("device {dev} of {user} is already in room {id} (participant {p})"),
            ));
        }
    }
    let identity = device.as_ref().map(|(user, dev)| {
        Arc::new(crate::host::Identity {
            user: user.clone(),
            device: dev.clone(),
            client: user_agent(&headers),
        })
    });
    let options = crate::host::JoinOptions {
        identity,
        ..Default::default()
    };
    let info = s.host.join_with(id, spec, options).await?;
    if let Some((user, dev)) = device {
        {
            let mut joins = s.client_joins.lock().unwrap_or_else(|e| e.into_inner());
            // Entries of rooms that are gone go with the next join of any client.
            joins.retain(|(room, _, _), _| s.host.has_room(*room));
            joins.insert((id, user.clone(), dev.clone()), info.id);
        }
        if let Some(uc) = &s.uc {
            uc.on_client_joined(id, &user, &dev, info.id).await;
        }
    }
    ok(StatusCode::CREATED, &info)
}

/// The request's User-Agent (printable text), cut to the directory's limit.
fn user_agent(headers: &axum::http::HeaderMap) -> Option<String> {
    use confer_signalling::directory::{MAX_USER_AGENT_BYTES, clip_to_bytes};
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .filter(|ua| !ua.is_empty())
        .map(|ua| clip_to_bytes(ua, MAX_USER_AGENT_BYTES).to_owned())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dial {
    to: String,
    trunk: Option<String>,
}

fn sip_running(s: &ApiState) -> Result<&SipControl, ApiError> {
    s.sip
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SIP is not running"))
}

fn dial_error(e: DialError) -> ApiError {
    match e {
        DialError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        DialError::Build(_) => ApiError::unprocessable(e.to_string()),
        DialError::UnknownCall(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// Dials a number or SIP URI into the room through a trunk; answers at once with the
/// call's id (its progress comes as `dial_*` events).
async fn dial(State(s): State<ApiState>, Path(room): Path<String>, body: Bytes) -> ApiResult {
    let id = room_id(&room)?;
    let req: Dial = parse_body(&body, false)?;
    let sip = sip_running(&s)?;
    // Fail closed: no new call while the compliance archive cannot be written.
    if let Some(archive) = &s.archive
        && let Err(r) = archive.admit("dial_out")
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}: {r}", r.reason),
        ));
    }
    // A room that does not exist is a 404 before anything is dialled.
    s.host.room(id).await?;
    let request = s
        .trunks
        .plan(id, &req.to, req.trunk.as_deref())
        .map_err(|e| match e {
            PlanError::Refused(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            PlanError::NoTrunks => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            _ => ApiError::unprocessable(e.to_string()),
        })?;
    let to = request.uri.to_string();
    let call = sip.dial(request).await.map_err(dial_error)?;
    ok(
        StatusCode::ACCEPTED,
        &json!({ "call": call, "room": id, "to": to }),
    )
}

async fn hang_up(
    State(s): State<ApiState>,
    Path((room, call)): Path<(String, String)>,
) -> ApiResult {
    let room = room_id(&room)?;
    let call: u64 = call
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no call {call:?}")))?;
    sip_running(&s)?
        .hang_up(room, call)
        .await
        .map_err(dial_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_trunks(State(s): State<ApiState>) -> ApiResult {
    let registrations = s
        .sip_metrics
        .as_ref()
        .map(|m| m.trunks())
        .unwrap_or_default();
    let trunks: Vec<_> = s
        .trunks
        .names()
        .into_iter()
        .map(|name| {
            let registration = registrations.iter().find(|r| r.trunk == name);
            json!({ "name": name, "registration": registration })
        })
        .collect();
    ok(StatusCode::OK, &json!({ "trunks": trunks }))
}

async fn leave(
    State(s): State<ApiState>,
    Path((room, participant)): Path<(String, String)>,
) -> ApiResult {
    let room = room_id(&room)?;
    let participant = participant_id(room, &participant)?;
    s.host.leave(room, participant).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_participant(
    State(s): State<ApiState>,
    Path((room, participant)): Path<(String, String)>,
) -> ApiResult {
    let room = room_id(&room)?;
    let participant = participant_id(room, &participant)?;
    let info = s.host.participant(room, participant).await?;
    ok(StatusCode::OK, &info)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchParticipant {
    muted: Option<bool>,
    deaf: Option<bool>,
    input_gain_db: Option<f32>,
    output_gain_db: Option<f32>,
}

async fn patch_participant(
    State(s): State<ApiState>,
    Path((room, participant)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let room = room_id(&room)?;
    let participant = participant_id(room, &participant)?;
    let req: PatchParticipant = parse_body(&body, false)?;
    for (name, v) in [
        ("input_gain_db", req.input_gain_db),
        ("output_gain_db", req.output_gain_db),
    ] {
        if let Some(db) = v
            && !GAIN_DB_RANGE.contains(&db)
        {
            return Err(ApiError::unprocessable(format!(
                "{name} {db} is outside {}..={} dB",
                GAIN_DB_RANGE.start(),
                GAIN_DB_RANGE.end()
            )));
        }
    }
    let info = s
        .host
        .update(
            room,
            participant,
            ParticipantUpdate {
                muted: req.muted,
                deaf: req.deaf,
                input_gain_db: req.input_gain_db,
                output_gain_db: req.output_gain_db,
            },
        )
        .await?;
    ok(StatusCode::OK, &info)
}

/// `GET /v1/events` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Resume after this event (the `seq` of the last one received).
    after: Option<u64>,
    /// Only events of these sources, comma-separated (`room,call,presence,sip,policy`).
    sources: Option<String>,
    /// The token, for browsers (read by the auth layer).
    #[allow(dead_code)]
    access_token: Option<String>,
}

async fn events(
    State(s): State<ApiState>,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult {
    let sub = s.journal.subscribe(q.after).map_err(|e| {
        // A cursor the journal no longer has (purged) or never had (ahead of the head).
        ApiError::new(StatusCode::GONE, e.to_string())
    })?;
    let sources: Option<Vec<String>> = q
        .sources
        .map(|l| l.split(',').map(|x| x.trim().to_owned()).collect());
    let shutdown = s.shutdown.clone();
    Ok(ws.on_upgrade(move |socket| stream_events(socket, sub, sources, shutdown)))
}

/// Sends every journal event (`{"seq", "at", "source", "kind", ...}`) as a JSON text
/// message until the client goes or the engine stops. The journal keeps what a slow
/// client has not read yet, so nothing is skipped; a client that reconnects with
/// `?after=<last seq>` gets exactly the events it missed, then the live ones.
async fn stream_events(
    mut socket: WebSocket,
    mut sub: crate::journal::Subscription,
    sources: Option<Vec<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let text = tokio::select! {
            ev = sub.next() => match ev {
                Some(ev) => {
                    if sources.as_ref().is_some_and(|l| !l.iter().any(|x| *x == ev.source)) {
                        continue;
                    }
                    ev.to_json()
                }
                None => break,
            },
            _ = shutdown.changed() => break,
            msg = socket.recv() => match msg {
                // Client messages are ignored; a close or error ends the stream.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
        };
        if socket.send(Message::Text(text.into())).await.is_err() {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// `POST /v1/rooms/{room}/recording` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingBody {
    /// Also record every participant's own input.
    #[serde(default)]
    tracks: bool,
    /// The user who asked for it: the policy's `recording` activity of their group
    /// decides. Required from an IM server, optional for an admin.
    #[serde(default)]
    by: Option<String>,
}

/// Who may record `room`: an admin, or an IM server for a user (`by`) in one of its
/// escalated conversations' rooms; a user the policy forbids recording is refused (403,
/// journaled). `Some` is the refusal, whole.
fn refusal_to_record(
    st: &ApiState,
    room: u64,
    by: Option<&str>,
    caller: Option<&crate::auth::Caller>,
) -> Option<Response> {
    if caller.and_then(|c| c.im_server()).is_some() {
        if by.is_none() {
            return Some(
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "by: an IM server records for a user (the one who asked)",
                )
                .into_response(),
            );
        }
        if let Err(e) = conversation_room(st, room) {
            return Some(e.into_response());
        }
    }
    match (by, &st.uc) {
        (Some(by), Some(uc)) => uc
            .check_recording(room, by)
            .err()
            .map(IntoResponse::into_response),
        (Some(_), None) => Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "by: users and policy are not running",
            )
            .into_response(),
        ),
        (None, _) => None,
    }
}

/// An IM server's recordings are of its escalated conversations' rooms only.
fn conversation_room(st: &ApiState, room: u64) -> Result<(), ApiError> {
    let Some(uc) = &st.uc else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "users and escalation are not running",
        ));
    };
    if !uc.is_conversation_room(room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("room {room} is no escalated conversation's: only an admin may record it"),
        ));
    }
    Ok(())
}

async fn start_recording(
    State(st): State<ApiState>,
    Path(room): Path<String>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    body: Bytes,
) -> ApiResult {
    let room = room_id(&room)?;
    let b: RecordingBody = parse_body(&body, true)?;
    if let Some(refused) = refusal_to_record(&st, room, b.by.as_deref(), caller.as_deref()) {
        return Ok(refused);
    }
    // Fail closed like a new call: a recording the archive cannot record is not made.
    if let Some(archive) = &st.archive
        && let Err(r) = archive.admit("recording")
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}: {r}", r.reason),
        ));
    }
    let files = st.host.start_recording(room, b.tracks).await?;
    // The archive's record of it: which files, for whom (the host says when it stops).
    let mut record = serde_json::Map::new();
    record.insert("room".into(), room.into());
    if let Some((_, started, _)) = files
        .first()
        .and_then(|f| crate::host::parse_recording_name(&f.name))
    {
        record.insert("recording".into(), started.into());
    }
    record.insert("tracks".into(), b.tracks.into());
    record.insert(
        "files".into(),
        files
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
            .into(),
    );
    if let Some(by) = &b.by {
        record.insert("user".into(), by.clone().into());
    }
    st.journal
        .append("room", "recording_started", crate::uc::now(), record);
    ok(StatusCode::CREATED, &json!({ "files": files }))
}

async fn stop_recording(
    State(st): State<ApiState>,
    Path(room): Path<String>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> ApiResult {
    let room = room_id(&room)?;
    if caller.as_ref().and_then(|c| c.im_server()).is_some() {
        conversation_room(&st, room)?;
    }
    let files = st.host.stop_recording(room).await?;
    ok(StatusCode::OK, &json!({ "files": files }))
}

async fn list_recordings(State(st): State<ApiState>) -> ApiResult {
    let host = st.host.clone();
    let listed = tokio::task::spawn_blocking(move || host.list_recordings())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("listing recordings: {e}"),
            )
        })?;
    ok(StatusCode::OK, &json!({ "recordings": listed }))
}

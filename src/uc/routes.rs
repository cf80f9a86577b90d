//! The control API's users, devices, presence, escalation, policy and client-session
//! routes (README "Users, presence and escalation"). Errors have the API's shape:
//! a status and `{"error": "...", "code": "..."}`; nothing is changed by a refused call.

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use confer_signalling::directory::{
    Capabilities, ClientInfo, Device, DeviceId, DeviceKind, MAX_USER_AGENT_BYTES, PhoneNumber,
    Reachability, Timestamp, User, UserId, clip_to_bytes,
};
use confer_signalling::escalation::EscalationRequest;
use confer_signalling::policy::{Policy, PolicyConfig};
use confer_signalling::presence::UserState;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::session::{self, SessionHello};
use super::{POLICY_KEY, Uc, UcError, lock};
use crate::api::ApiState;
use crate::auth::Caller;
use crate::sip::{SipAccount, SipSecret};

/// The routes, merged into the API's router.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/users", get(list_users))
        .route(
            "/v1/users/{user}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/v1/users/{user}/devices", get(list_devices))
        .route(
            "/v1/users/{user}/devices/{device}",
            axum::routing::put(put_device).delete(delete_device),
        )
        .route(
            "/v1/users/{user}/presence",
            get(get_presence).put(put_presence).delete(clear_presence),
        )
        .route("/v1/escalations", axum::routing::post(escalate))
        .route("/v1/escalations/{conversation}", get(get_escalation))
        .route("/v1/policy", get(get_policy).put(put_policy))
        .route("/v1/policy/decision", get(policy_decision))
        .route("/v1/client", get(client_session))
}

type Res = Result<Response, UcError>;

impl IntoResponse for UcError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut body = json!({ "error": self.message });
        if let Some(code) = self.code {
            body["code"] = json!(code);
        }
        (status, axum::Json(body)).into_response()
    }
}

fn ok(status: StatusCode, body: &impl serde::Serialize) -> Res {
    Ok((status, axum::Json(body)).into_response())
}

fn uc(s: &ApiState) -> Result<&Uc, UcError> {
    s.uc.as_ref()
        .ok_or_else(|| UcError::new(503, "users and escalation are not running"))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, UcError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(UcError::new(400, "a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| UcError::new(400, format!("malformed JSON: {e}")))
}

fn user_id(s: &str) -> Result<UserId, UcError> {
    UserId::new(s).map_err(|e| UcError::new(404, format!("no user {s:?}: {e}")))
}

fn invalid(e: impl std::fmt::Display) -> UcError {
    UcError::new(422, e.to_string())
}

async fn list_users(State(s): State<ApiState>) -> Res {
    let uc = uc(&s)?;
    let users: Vec<User> = lock(&uc.0.state)
        .presence
        .directory()
        .users()
        .cloned()
        .collect();
    ok(StatusCode::OK, &json!({ "users": users }))
}

fn user_view(uc: &Uc, id: &UserId) -> Option<Value> {
    let st = lock(&uc.0.state);
    let dir = st.presence.directory();
    let user = dir.user(id)?;
    let devices: Vec<&Device> = dir.devices_of(id).collect();
    Some(json!({
        "user": user,
        "devices": devices,
        "sip": st.sip_secrets.contains_key(id.as_str()),
        "presence": st.presence.view(id, super::now()),
    }))
}

async fn get_user(State(s): State<ApiState>, Path(user): Path<String>) -> Res {
    let uc = uc(&s)?;
    let id = user_id(&user)?;
    match user_view(uc, &id) {
        Some(v) => ok(StatusCode::OK, &v),
        None => Err(UcError::new(404, format!("no user {user}"))),
    }
}

/// `PUT /v1/users/{user}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutUser {
    display_name: String,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    /// The password of the user's SIP account (username = the user id) on confer's
    /// registrar; `null` or absent keeps the current one, `""` removes the account.
    #[serde(default)]
    sip_password: Option<String>,
}

async fn put_user(State(s): State<ApiState>, Path(user): Path<String>, body: Bytes) -> Res {
    let uc = uc(&s)?;
    let id = user_id(&user)?;
    let req: PutUser = parse(&body)?;
    let phone = req
        .phone
        .as_deref()
        .map(PhoneNumber::parse)
        .transpose()
        .map_err(invalid)?;
    if let Some(p) = &req.sip_password
        && !p.is_empty()
        && !(8..=128).contains(&p.len())
    {
        return Err(invalid("sip_password must be 8..=128 bytes"));
    }
    // Only the password's HA1s are kept (made here, outside the state's lock).
    let sip_secret = req
        .sip_password
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| SipSecret::from_password(id.as_str(), p));
    let mut u = User::new(id.clone(), req.display_name);
    u.phone = phone;
    u.groups = req.groups.into_iter().collect();
    let created = uc
        .input(|st, at| -> Result<bool, UcError> {
            let exists = st.presence.directory().user(&id).is_some();
            st.presence
                .update_directory(at, |dir| {
                    if exists {
                        dir.update_user(u).map(|_| ())
                    } else {
                        dir.add_user(u)
                    }
                })
                .map_err(invalid)?;
            match (&req.sip_password, &sip_secret) {
                (Some(_), Some(secret)) => {
                    st.sip_secrets
                        .insert(id.as_str().to_owned(), secret.clone());
                    uc.0.accounts.set(
                        id.as_str(),
                        SipAccount {
                            user: id.as_str().to_owned(),
                            secret: secret.clone(),
                        },
                    );
                }
                (Some(_), None) => {
                    st.sip_secrets.remove(id.as_str());
                    uc.0.accounts.remove(id.as_str());
                }
                (None, _) => {}
            }
            Ok(!exists)
        })
        .await?;
    uc.persist().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, &user_view(uc, &id))
}

async fn delete_user(State(s): State<ApiState>, Path(user): Path<String>) -> Res {
    let uc = uc(&s)?;
    let id = user_id(&user)?;
    uc.input(|st, at| -> Result<(), UcError> {
        st.presence
            .update_directory(at, |dir| dir.remove_user(&id))
            .map_err(|e| UcError::new(404, e.to_string()))?;
        st.sip_secrets.remove(id.as_str());
        uc.0.accounts.remove(id.as_str());
        Ok(())
    })
    .await?;
    uc.persist().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_devices(State(s): State<ApiState>, Path(user): Path<String>) -> Res {
    let uc = uc(&s)?;
    let id = user_id(&user)?;
    let st = lock(&uc.0.state);
    let dir = st.presence.directory();
    if dir.user(&id).is_none() {
        return Err(UcError::new(404, format!("no user {user}")));
    }
    let devices: Vec<&Device> = dir.devices_of(&id).collect();
    ok(StatusCode::OK, &json!({ "devices": devices }))
}

/// `PUT /v1/users/{user}/devices/{device}`: a device the admin declares. Sessions and
/// registrations make their devices online by themselves; a `pstn_number` device is
/// reached by its `phone`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutDevice {
    kind: DeviceKind,
    #[serde(default)]
    capabilities: Option<Capabilities>,
    #[serde(default)]
    phone: Option<String>,
}

async fn put_device(
    State(s): State<ApiState>,
    Path((user, device)): Path<(String, String)>,
    body: Bytes,
) -> Res {
    let uc = uc(&s)?;
    let uid = user_id(&user)?;
    let did = DeviceId::new(device.clone()).map_err(invalid)?;
    let req: PutDevice = parse(&body)?;
    let reach = match (req.kind, req.phone.as_deref()) {
        (DeviceKind::PstnNumber, Some(p)) => Reachability::PhoneNumber {
            number: PhoneNumber::parse(p).map_err(invalid)?,
        },
        (DeviceKind::PstnNumber, None) => {
            return Err(invalid("a pstn_number device needs its phone"));
        }
        (_, Some(_)) => return Err(invalid("only a pstn_number device has a phone")),
        (_, None) => Reachability::Unreachable,
    };
    let caps = req.capabilities.unwrap_or(match req.kind {
        DeviceKind::DeskPhone | DeviceKind::PstnNumber => Capabilities::AUDIO,
        _ => Capabilities::ALL,
    });
    let created = uc
        .input(|st, at| -> Result<bool, UcError> {
            let dir = st.presence.directory();
            if dir.user(&uid).is_none() {
                return Err(UcError::new(404, format!("no user {uid}")));
            }
            let existing = dir.device(&did).cloned();
            st.presence.update_directory(at, |dir| match existing {
                Some(mut d) => {
                    if d.user != uid {
                        return Err(UcError::new(409, format!("device {did} is another user's")));
                    }
                    d.kind = req.kind;
                    d.capabilities = caps;
                    // A live session or registration keeps its reachability.
                    if matches!(reach, Reachability::PhoneNumber { .. })
                        || matches!(d.reach, Reachability::PhoneNumber { .. })
                    {
                        d.reach = reach;
                    }
                    dir.update_device(d).map(|_| false).map_err(invalid)
                }
                None => dir
                    .add_device(Device::new(did.clone(), uid.clone(), req.kind, caps, reach))
                    .map(|()| true)
                    .map_err(invalid),
            })
        })
        .await?;
    uc.persist().await?;
    let view = lock(&uc.0.state).presence.directory().device(&did).cloned();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, &view)
}

async fn delete_device(
    State(s): State<ApiState>,
    Path((user, device)): Path<(String, String)>,
) -> Res {
    let uc = uc(&s)?;
    let uid = user_id(&user)?;
    let did = DeviceId::new(device.clone())
        .map_err(|e| UcError::new(404, format!("no device {device:?}: {e}")))?;
    uc.input(|st, at| -> Result<(), UcError> {
        if st
            .presence
            .directory()
            .device(&did)
            .is_none_or(|d| d.user != uid)
        {
            return Err(UcError::new(404, format!("no device {did} of {uid}")));
        }
        st.presence
            .update_directory(at, |dir| dir.remove_device(&did))
            .map(|_| ())
            .map_err(|e| UcError::new(404, e.to_string()))
    })
    .await?;
    uc.persist().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_presence(State(s): State<ApiState>, Path(user): Path<String>) -> Res {
    let uc = uc(&s)?;
    let id = user_id(&user)?;
    let view = lock(&uc.0.state).presence.view(&id, super::now());
    match view {
        Some(v) => ok(StatusCode::OK, &v),
        None => Err(UcError::new(404, format!("no user {user}"))),
    }
}

/// `PUT /v1/users/{user}/presence`: the user's own state.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutPresence {
    state: UserState,
    #[serde(default)]
    until_ms: Option<u64>,
}

async fn put_presence(State(s): State<ApiState>, Path(user): Path<String>, body: Bytes) -> Res {
    let uc = uc(&s)?;
    let id = user_id(&user)?;
    let req: PutPresence = parse(&body)?;
    uc.input(|st, at| {
        st.presence
            .set_user_state(&id, req.state, req.until_ms.map(Timestamp), at)
            .map_err(|e| UcError::new(404, e.to_string()))
    })
    .await?;
    get_presence(State(s), Path(user)).await
}

async fn clear_presence(State(s): State<ApiState>, Path(user): Path<String>) -> Res {
    let uc = uc(&s)?;
    let id = user_id(&user)?;
    uc.input(|st, at| {
        st.presence
            .clear_user_state(&id, at)
            .map_err(|e| UcError::new(404, e.to_string()))
    })
    .await?;
    get_presence(State(s), Path(user)).await
}

/// `POST /v1/escalations`: the body is an [`EscalationRequest`], plus the chat member
/// who asked (`requested_by`, for policy and per-user rate limits).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalateBody {
    #[serde(flatten)]
    request: EscalationRequest,
    #[serde(default)]
    requested_by: Option<String>,
}

async fn escalate(
    State(s): State<ApiState>,
    caller: Option<axum::Extension<Caller>>,
    body: Bytes,
) -> Res {
    let uc = uc(&s)?;
    // Flattened structs do not deny unknown fields by themselves: check the keys first.
    let raw: Value = parse(&body)?;
    let known = [
        "conversation",
        "participants",
        "modality",
        "subject",
        "end",
        "requested_by",
    ];
    if let Some(obj) = raw.as_object()
        && let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str()))
    {
        return Err(UcError::new(
            400,
            format!("malformed JSON: unknown field `{k}`"),
        ));
    }
    let b: EscalateBody = serde_json::from_value(raw)
        .map_err(|e| UcError::new(400, format!("malformed JSON: {e}")))?;
    let server = caller.as_ref().and_then(|c| c.im_server());
    let response = uc
        .escalate(b.request, b.requested_by.as_deref(), server.as_deref())
        .await?;
    let status = if response.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, &response)
}

async fn get_escalation(State(s): State<ApiState>, Path(conversation): Path<String>) -> Res {
    let uc = uc(&s)?;
    match uc.call_view(&conversation) {
        Some(v) => ok(StatusCode::OK, &v),
        None => Err(UcError::new(404, format!("no call for {conversation:?}"))),
    }
}

async fn get_policy(State(s): State<ApiState>) -> Res {
    let uc = uc(&s)?;
    let config = lock(&uc.0.state).policy.config().clone();
    ok(StatusCode::OK, &config)
}

async fn put_policy(State(s): State<ApiState>, body: Bytes) -> Res {
    let uc = uc(&s)?;
    let config: PolicyConfig = parse(&body)?;
    let policy = Policy::new(config.clone()).map_err(invalid)?;
    let text = serde_json::to_string(&config).map_err(invalid)?;
    uc.0.journal
        .save_state(POLICY_KEY, &text)
        .await
        .map_err(|e| UcError::new(503, format!("saving the policy: {e}")))?;
    {
        let mut st = lock(&uc.0.state);
        st.limiters.reconfigure(&config.rate_limits);
        st.policy = policy;
    }
    ok(StatusCode::OK, &config)
}

/// `GET /v1/policy/decision` query: may `user` do `activity` (for `dial_out`, to
/// `number`)?
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionQuery {
    user: String,
    activity: confer_signalling::policy::Activity,
    #[serde(default)]
    number: Option<String>,
    /// The token, for symmetry with the WebSocket routes (read by the auth layer).
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
}

/// What the IM server applies itself (file transfer, screen share) or checks ahead: the
/// policy's answer for one user and activity. A refusal is journaled (and archived) like
/// confer's own.
async fn policy_decision(
    State(s): State<ApiState>,
    query: Result<Query<DecisionQuery>, axum::extract::rejection::QueryRejection>,
) -> Res {
    let uc = uc(&s)?;
    let Query(q) = query.map_err(|e| UcError::new(400, e.body_text()))?;
    let user = user_id(&q.user)?;
    let decision = {
        let st = lock(&uc.0.state);
        if st.presence.directory().user(&user).is_none() {
            return Err(UcError::new(404, format!("no user {user}")));
        }
        match (q.activity, &q.number) {
            (confer_signalling::policy::Activity::DialOut, Some(n)) => {
                st.policy.check_dial_out(user.as_str(), n).map(|_| ())
            }
            (activity, _) => st.policy.check_activity(user.as_str(), activity),
        }
    };
    match decision {
        Ok(()) => ok(StatusCode::OK, &json!({ "allowed": true })),
        Err(r) => {
            uc.policy_refused(
                q.activity.as_str(),
                Some(user.as_str()),
                r.code.as_str(),
                &r.reason,
            );
            ok(
                StatusCode::OK,
                &json!({ "allowed": false, "code": r.code, "reason": r.reason, "rule": r.rule }),
            )
        }
    }
}

/// `GET /v1/client` query: what the device is. With tokens, the user and device are the
/// device token's; without, they come here.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClientQuery {
    #[serde(default)]
    kind: Option<DeviceKind>,
    #[serde(default)]
    video: Option<bool>,
    #[serde(default)]
    screen_share: Option<bool>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    version: Option<String>,
    /// The token, for WebSockets (read by the auth layer).
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
}

async fn client_session(
    State(s): State<ApiState>,
    caller: Option<axum::Extension<Caller>>,
    Query(q): Query<ClientQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Res {
    let uc = uc(&s)?.clone();
    let (user, device) = match caller.as_ref().and_then(|c| c.session_device()) {
        Some(ud) => ud,
        None if s.auth.is_none() => match (q.user.clone(), q.device.clone()) {
            (Some(u), Some(d)) => (u, d),
            _ => return Err(UcError::new(400, "user and device are required")),
        },
        None => return Err(UcError::new(403, "a client session needs a device token")),
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let admission = {
        let st = lock(&uc.0.state);
        st.policy.check_client(&user_agent)
    };
    let admission = match admission {
        Ok(a) => a,
        Err(r) => {
            uc.policy_refused("client", Some(&user), r.code.as_str(), &r.reason);
            return Err(UcError::refusal(&r));
        }
    };
    let kind = q.kind.unwrap_or(DeviceKind::Browser);
    let video = q.video.unwrap_or(kind != DeviceKind::Mobile);
    let capabilities = Capabilities {
        audio: true,
        video,
        screen_share: q
            .screen_share
            .unwrap_or(video && kind != DeviceKind::Mobile),
        dtmf: true,
    };
    let client = (!user_agent.is_empty()).then(|| ClientInfo {
        user_agent: clip_to_bytes(&user_agent, MAX_USER_AGENT_BYTES).to_owned(),
        version: q.version.clone().unwrap_or_default(),
    });
    let hello = SessionHello {
        user,
        device,
        kind,
        capabilities,
        client,
        upgrade_notice: admission.upgrade_notice,
    };
    let shutdown = s.shutdown.clone();
    Ok(ws.on_upgrade(move |socket| session::run(uc, socket, hello, shutdown)))
}

//! Client sessions: a desktop app, browser or mobile app connected on `/v1/client` is an
//! online device of its user. It is rung there and answers or declines there, reports
//! activity and the user's own presence state, and is told to join a room (with a client
//! token) when its answer wins.
//!
//! Messages are JSON text frames with a `type`.
//! From confer: `welcome` (the session and device, and an upgrade notice when the client
//! policy asks for one), `ring`, `cancel`, `join`, `media`, `ended`, `error`.
//! From the client: `answer` and `decline` (with the `leg` of a ring), `activity`,
//! `presence` (`state`: available, busy, do_not_disturb, away, or null to clear;
//! optional `until_ms`).
//! A malformed message gets an `error` and the session carries on.

use axum::extract::ws::{Message, WebSocket};
use confer_signalling::directory::{
    Capabilities, ClientInfo, Device, DeviceId, DeviceKind, Reachability, Timestamp, UserId,
};
use confer_signalling::escalation::LegFailure;
use confer_signalling::presence::UserState;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::{LegCarrier, SessionHandle, Uc, UcError};

/// What a client says about itself when it connects.
#[derive(Debug, Clone)]
pub struct SessionHello {
    pub user: String,
    pub device: String,
    pub kind: DeviceKind,
    pub capabilities: Capabilities,
    pub client: Option<ClientInfo>,
    pub upgrade_notice: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMsg {
    Answer {
        leg: u64,
    },
    Decline {
        leg: u64,
    },
    Activity,
    Presence {
        state: Option<UserState>,
        #[serde(default)]
        until_ms: Option<u64>,
    },
}

impl Uc {
    /// Makes the device online on a new session; creates the device when it is new.
    pub(super) async fn open_session(
        &self,
        hello: &SessionHello,
    ) -> Result<(String, mpsc::UnboundedReceiver<String>), UcError> {
        let user = UserId::new(hello.user.clone()).map_err(|e| UcError::new(400, e.to_string()))?;
        let device =
            DeviceId::new(hello.device.clone()).map_err(|e| UcError::new(400, e.to_string()))?;
        if hello.kind == DeviceKind::PstnNumber || hello.kind == DeviceKind::DeskPhone {
            return Err(UcError::new(
                422,
                "a client session is a desktop app, browser or mobile",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (session, created) = self
            .input(|st, at| -> Result<(String, bool), UcError> {
                let session = format!("s{}", st.next_session);
                let dir = st.presence.directory();
                if dir.user(&user).is_none() {
                    return Err(UcError::new(404, format!("no user {user}")));
                }
                let existing = dir.device(&device).cloned();
                let reach = Reachability::Session {
                    session_id: session.clone(),
                };
                let created = existing.is_none();
                let r = st.presence.update_directory(at, |dir| match existing {
                    Some(mut d) => {
                        if d.user != user {
                            return Err(UcError::new(
                                403,
                                format!("device {device} is not {user}'s"),
                            ));
                        }
                        d.kind = hello.kind;
                        d.capabilities = hello.capabilities;
                        d.reach = reach;
                        d.client = hello.client.clone();
                        d.last_activity = Some(at);
                        dir.update_device(d)
                            .map(|_| ())
                            .map_err(|e| UcError::new(422, e.to_string()))
                    }
                    None => {
                        let mut d = Device::new(
                            device.clone(),
                            user.clone(),
                            hello.kind,
                            hello.capabilities,
                            reach,
                        );
                        d.client = hello.client.clone();
                        d.last_activity = Some(at);
                        dir.add_device(d)
                            .map_err(|e| UcError::new(409, e.to_string()))
                    }
                });
                r?;
                st.next_session += 1;
                st.sessions.insert(
                    session.clone(),
                    SessionHandle {
                        user: user.clone(),
                        device: device.clone(),
                        tx,
                    },
                );
                Ok((session, created))
            })
            .await?;
        if created && let Err(e) = self.persist().await {
            tracing::warn!("saving a session's new device: {}", e.message);
        }
        Ok((session, rx))
    }

    /// The session went: its device is unreachable, its rings failed.
    pub(super) async fn close_session(&self, session: &str) {
        self.input(|st, at| {
            let Some(handle) = st.sessions.remove(session) else {
                return;
            };
            let still_ours = st
                .presence
                .directory()
                .device(&handle.device)
                .is_some_and(|d| {
                    matches!(&d.reach, Reachability::Session { session_id } if session_id == session)
                });
            if still_ours {
                let _ = st.presence.update_directory(at, |dir| {
                    dir.set_reachability(&handle.device, Reachability::Unreachable)
                });
            }
            let legs: Vec<_> = st
                .legs
                .iter()
                .filter(|(_, l)| matches!(&l.carrier, LegCarrier::Session { session: s } if s == session))
                .map(|(id, _)| *id)
                .collect();
            for leg in legs {
                st.legs.remove(&leg);
                let _ = st.escalations.on_failed(leg, LegFailure::Unreachable, at);
            }
        })
        .await;
    }

    /// One message from a session's client.
    async fn on_client_message(&self, session: &str, text: &str) -> Result<(), String> {
        let msg: ClientMsg =
            serde_json::from_str(text).map_err(|e| format!("malformed message: {e}"))?;
        match msg {
            ClientMsg::Answer { leg } | ClientMsg::Decline { leg } => {
                let answer = matches!(msg, ClientMsg::Answer { .. });
                let leg = confer_signalling::escalation::LegId(leg);
                self.input(|st, at| {
                    let ours = st.legs.get(&leg).is_some_and(|l| {
                        matches!(&l.carrier, LegCarrier::Session { session: s } if s == session)
                    });
                    if !ours {
                        return Err(format!("no ring {leg} on this session"));
                    }
                    let r = if answer {
                        st.escalations.on_answered(leg, at)
                    } else {
                        st.legs.remove(&leg);
                        st.escalations.on_declined(leg, at)
                    };
                    r.map(|_| ()).map_err(|e| e.to_string())
                })
                .await
            }
            ClientMsg::Activity => {
                self.input(|st, at| {
                    let Some(device) = st.sessions.get(session).map(|s| s.device.clone()) else {
                        return Ok(());
                    };
                    st.presence
                        .update_directory(at, |dir| dir.record_activity(&device, at))
                        .map_err(|e| e.to_string())
                })
                .await
            }
            ClientMsg::Presence { state, until_ms } => {
                self.input(|st, at| {
                    let Some(user) = st.sessions.get(session).map(|s| s.user.clone()) else {
                        return Ok(());
                    };
                    match state {
                        Some(s) => {
                            st.presence
                                .set_user_state(&user, s, until_ms.map(Timestamp), at)
                        }
                        None => st.presence.clear_user_state(&user, at),
                    }
                    .map_err(|e| e.to_string())
                })
                .await
            }
        }
    }
}

/// Runs one session until the client or the engine goes.
pub(super) async fn run(
    uc: Uc,
    mut socket: WebSocket,
    hello: SessionHello,
    mut shutdown: watch::Receiver<bool>,
) {
    let (session, mut rx) = match uc.open_session(&hello).await {
        Ok(s) => s,
        Err(e) => {
            let msg = json!({ "type": "error", "error": e.message, "status": e.status });
            let _ = socket.send(Message::Text(msg.to_string().into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let welcome = json!({
        "type": "welcome", "session": session, "user": hello.user, "device": hello.device,
        "upgrade_notice": hello.upgrade_notice,
    });
    if socket
        .send(Message::Text(welcome.to_string().into()))
        .await
        .is_ok()
    {
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(text) => {
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Err(e) = uc.on_client_message(&session, t.as_str()).await {
                            let err = json!({ "type": "error", "error": e });
                            if socket.send(Message::Text(err.to_string().into())).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = shutdown.changed() => break,
            }
        }
    }
    uc.close_session(&session).await;
    let _ = socket.send(Message::Close(None)).await;
}

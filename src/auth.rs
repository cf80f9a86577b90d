//! Bearer tokens on the control API, and `confer token` to issue them.
//!
//! Why here: the token format and scope rules are `confer_signalling::token` (sans-IO, time
//! as an argument); this module reads the clock, the configured secret, and maps routes to
//! what they require:
//!
//! - `GET /healthz` is open (load balancers probe it).
//! - `POST /v1/rooms/{room}/participants`: an admin token, or a client token for that room
//!   (its user is the token's subject).
//! - `GET /v1/events`: an admin or IM-server token. Browsers cannot set headers on a
//!   WebSocket, so there the token may also come as `?access_token=` (RFC 6750 section
//!   2.3).
//! - `GET /v1/client` (a device's session, WebSocket): a device token; `?access_token=`
//!   works there too.
//! - `POST /v1/escalations`, `GET /v1/escalations/{c}`: an IM server token with
//!   `escalate`, or an admin.
//! - `/v1/users/{user}/presence`: an IM server token with `presence`, or an admin.
//! - `GET /v1/policy/decision`: an IM server or admin token.
//! - Everything else: an admin token.
//!
//! Without `api_secret` there are no tokens and the API is open; [`crate::config`] then
//! refuses to listen anywhere but on loopback. A refusal is 401 (no, bad or expired token)
//! or 403 (a valid token without the scope), as `{"error": reason, "code": code}` with a
//! `WWW-Authenticate` header.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::{Args, ValueEnum};
use confer_signalling::token::{
    AuthError, Key, Keyring, Principal, Requirement, Scope, bearer_token,
};
use serde_json::json;

use crate::config::Config;

/// The key id of the configured secret (one key; rotation means a restart for now).
const KEY_ID: &str = "1";

/// The keyring of `secret_hex` (at least 32 bytes as hex).
pub fn keyring(secret_hex: &str) -> anyhow::Result<Keyring> {
    let secret = decode_hex(secret_hex.trim())
        .ok_or_else(|| anyhow::anyhow!("api_secret must be hex (e.g. `openssl rand -hex 32`)"))?;
    anyhow::ensure!(
        secret.len() >= 32,
        "api_secret must be at least 32 bytes (64 hex digits), not {}",
        secret.len()
    );
    let key = Key::new(KEY_ID, secret).map_err(|e| anyhow::anyhow!("api_secret: {e}"))?;
    Ok(Keyring::new(key))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Unix seconds now (the shell reads the clock).
fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refuse(e: &AuthError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let challenge = match e.oauth_error() {
        Some(code) => format!("Bearer realm=\"confer\", error=\"{code}\""),
        None => "Bearer realm=\"confer\"".to_owned(),
    };
    let mut r = (
        status,
        axum::Json(json!({ "error": e.to_string(), "code": e.code() })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The token of a request: the `Authorization` header, or `access_token` in the query of
/// the event stream.
fn token_of(req: &Request) -> Result<String, AuthError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let path = req.uri().path();
    if header.is_some() || (path != "/v1/events" && path != "/v1/client") {
        return bearer_token(header).map(str::to_owned);
    }
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or(AuthError::Missing)
}

/// What the route of `method` and `path` lets `who` do.
fn allowed(method: &Method, path: &str, who: &Principal) -> Result<(), AuthError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let required = match (method, segments.as_slice()) {
        (&Method::POST, ["v1", "rooms", room, "participants"]) => {
            if matches!(who.scope(), Scope::Admin) {
                return Ok(());
            }
            Requirement::JoinRoom {
                room,
                user: who.subject(),
            }
        }
        (&Method::GET, ["v1", "events"]) => {
            if matches!(who.scope(), Scope::ImServer { .. }) {
                return Ok(());
            }
            Requirement::Admin
        }
        (&Method::GET, ["v1", "client"]) => Requirement::Session,
        (&Method::GET, ["v1", "policy", "decision"]) => {
            if matches!(who.scope(), Scope::ImServer { .. }) {
                return Ok(());
            }
            Requirement::Admin
        }
        // An IM server records its conversations' rooms for a user (the handler checks
        // the room and the user's policy).
        (&Method::POST | &Method::DELETE, ["v1", "rooms", _, "recording"]) => Requirement::Escalate,
        (&Method::POST, ["v1", "escalations"]) | (&Method::GET, ["v1", "escalations", _]) => {
            Requirement::Escalate
        }
        (_, ["v1", "users", _, "presence"]) => Requirement::PresenceWrite,
        _ => Requirement::Admin,
    };
    who.check(&required).map_err(AuthError::Forbidden)
}

/// The API's authentication layer (see the module docs).
pub async fn authenticate(
    State(keys): State<Option<Arc<Keyring>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(keys) = keys else {
        return next.run(req).await;
    };
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let verdict = token_of(&req)
        .and_then(|t| keys.verify(&t, now_s()))
        .and_then(|who| allowed(req.method(), req.uri().path(), &who).map(|()| who));
    match verdict {
        Ok(who) => {
            let mut req = req;
            req.extensions_mut().insert(Caller(who));
            next.run(req).await
        }
        Err(e) => refuse(&e),
    }
}

/// Who called (set by [`authenticate`] for handlers that treat callers differently).
#[derive(Debug, Clone)]
pub struct Caller(Principal);

impl Caller {
    /// A client's user and device.
    pub fn client_device(&self) -> Option<(String, String)> {
        match self.0.scope() {
            Scope::Client { user, device, .. } => Some((user.clone(), device.clone())),
            _ => None,
        }
    }

    /// A device session's user and device.
    pub fn session_device(&self) -> Option<(String, String)> {
        match self.0.scope() {
            Scope::Device { user, device } => Some((user.clone(), device.clone())),
            _ => None,
        }
    }

    /// An IM server's name.
    pub fn im_server(&self) -> Option<String> {
        match self.0.scope() {
            Scope::ImServer { .. } => Some(self.0.subject().to_owned()),
            _ => None,
        }
    }
}

/// The scopes `confer token` issues.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    /// Everything but joining rooms as a client.
    Admin,
    /// Escalations and presence (an IM server).
    ImServer,
    /// One user on one device joining one room.
    Client,
    /// One user's device on its client session (`/v1/client`), where it is rung.
    Device,
}

/// `confer token`: issues a token signed with the configured `api_secret`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// TOML configuration file (for `api_secret`; `CONFER_API_SECRET` works too).
    #[arg(long, short)]
    config: Option<std::path::PathBuf>,
    /// What the token allows.
    #[arg(long, value_enum)]
    scope: ScopeArg,
    /// Who holds it: an admin's or IM server's name; for a client, its user.
    #[arg(long)]
    subject: String,
    /// Client: the room id.
    #[arg(long)]
    room: Option<String>,
    /// Client: the device id.
    #[arg(long)]
    device: Option<String>,
    /// Lifetime in seconds (default: admin 900, IM server 3600, client 600).
    #[arg(long)]
    ttl: Option<u64>,
}

/// Prints a token for `args`.
pub fn run_token(args: TokenArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let secret = cfg
        .api_secret
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no api_secret configured: tokens are not in use"))?;
    let keys = keyring(secret.expose())?;
    let scope = match args.scope {
        ScopeArg::Admin => Scope::Admin,
        ScopeArg::ImServer => Scope::ImServer {
            escalate: true,
            presence: true,
        },
        ScopeArg::Client => Scope::Client {
            room: args
                .room
                .ok_or_else(|| anyhow::anyhow!("a client token needs --room"))?,
            user: args.subject.clone(),
            device: args
                .device
                .ok_or_else(|| anyhow::anyhow!("a client token needs --device"))?,
        },
        ScopeArg::Device => Scope::Device {
            user: args.subject.clone(),
            device: args
                .device
                .ok_or_else(|| anyhow::anyhow!("a device token needs --device"))?,
        },
    };
    let ttl = args.ttl.unwrap_or_else(|| scope.default_ttl_s());
    let issued = keys
        .issue(&args.subject, scope, now_s(), ttl, &mut rand::rng())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", issued.token);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_must_be_hex_of_at_least_32_bytes() {
        assert!(keyring(&"ab".repeat(32)).is_ok());
        assert!(keyring(&"ab".repeat(31)).is_err());
        assert!(
            keyring("not hex at all, not hex at all, not hex at all, not hex at all!").is_err()
        );
        assert!(keyring("abc").is_err());
    }
}

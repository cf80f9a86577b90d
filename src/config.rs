//! Configuration: defaults, then a TOML file (`--config`), then `CONFER_*` environment
//! variables. Every setting has a default so that `confer serve` runs with none.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::sip::TrunkConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the engine binds its media (RTP) sockets to.
    pub media_ip: IpAddr,
    /// First RTP port of the range (even).
    pub rtp_port_min: u16,
    /// Last RTP port of the range.
    pub rtp_port_max: u16,
    /// The engine's frame clock, in ms (10 or 20).
    pub frame_ms: u32,
    /// Media worker threads (0 = one per core).
    pub media_workers: usize,
    /// Real-time (`SCHED_FIFO`) priority of the media workers and their sender threads,
    /// 1..=99; 0 keeps the normal scheduler. Where the system does not permit it (no
    /// `CAP_SYS_NICE` or `RLIMIT_RTPRIO`), they run at normal priority and say so once.
    pub realtime_priority: u8,
    /// Data directory (database, recordings).
    pub data_dir: PathBuf,
    /// Address of the HTTP control API (`CONFER_HTTP_LISTEN`, default `127.0.0.1:8080`).
    /// Port 0 takes a free port; the ready line says which.
    pub http_listen: SocketAddr,
    /// Address of SIP over UDP and TCP (`CONFER_SIP_LISTEN`, default `127.0.0.1:5060`).
    /// Port 0 takes free ports (the same for both when it can); the ready line says which.
    pub sip_listen: SocketAddr,
    /// Address of SIP over TLS (`CONFER_SIP_TLS_LISTEN`); off when not set. Needs
    /// `sip_tls_cert` and `sip_tls_key`.
    pub sip_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener (`CONFER_SIP_TLS_CERT`).
    pub sip_tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener (`CONFER_SIP_TLS_KEY`).
    pub sip_tls_key: Option<PathBuf>,
    /// Largest SIP message accepted, in bytes (head and body; default 16384). A bigger one
    /// is answered 513 when its headers can be read, else dropped; on TCP and TLS the
    /// connection is then closed.
    pub sip_max_message_bytes: usize,
    /// Messages per second a source IP may send on average (token bucket; default 50;
    /// 0 turns the limit off).
    pub sip_rate_per_second: u32,
    /// Messages a source IP may send at once above the average (bucket size; default 100).
    pub sip_rate_burst: u32,
    /// First ban of a source that exceeds its rate, in seconds (default 10); each repeat
    /// within an hour doubles it, up to 64 times.
    pub sip_ban_seconds: u32,
    /// Open TCP and TLS connections at most (default 1024).
    pub sip_max_connections: usize,
    /// Open TCP and TLS connections per source IP at most (default 32).
    pub sip_max_connections_per_ip: usize,
    /// A connection that stops in the middle of a message for this long is closed, ms
    /// (slow loris; default 5000).
    pub sip_message_timeout_ms: u64,
    /// A connection that sends nothing (not even a keep-alive) for this long is closed, ms
    /// (default 300000).
    pub sip_idle_timeout_ms: u64,
    /// Concurrent SIP calls at most (default 500); more are answered 503.
    pub sip_max_calls: usize,
    /// SIP timer T1 (RTT estimate), ms (default 500; all transaction timers follow it).
    pub sip_t1_ms: u64,
    /// Send responses to the source port of UDP requests even when their Via asks for
    /// none (as if it carried `rport`; default true: most peers sit behind NAT).
    pub sip_force_rport: bool,
    /// The digest algorithms the registrar challenges phones with, in order
    /// (`CONFER_SIP_REGISTRAR_DIGEST`): `sha256,md5` (default, RFC 8760), `md5,sha256`
    /// (for phones that answer only the first challenge and know only MD5: sipp 3.6,
    /// older desk phones) or `md5` (for phones that fail on any challenge they cannot
    /// answer: baresip 1.0).
    pub sip_registrar_digest: String,
    /// Session interval (RFC 4028) granted to callers, seconds (default 1800; >= 90).
    pub sip_session_expires: u32,
    /// Country calling code for dialled national numbers (default `1`: the North American
    /// plan; any other is read with national prefix 0 and international prefix 00).
    pub sip_country_code: String,
    /// Dialled numbers that lead straight into a room (`[[dial_in]]` tables with `number`
    /// and `room`) or to the PIN prompts (`number` and `pin = true`);
    /// `CONFER_DIAL_IN="+15550100=standup,+15550101=retro,+15550199"` (a number alone
    /// asks for a PIN).
    pub dial_in: Vec<DialIn>,
    /// Digits of the PINs given to rooms made through the API (default 6, 4..=12).
    pub pin_digits: usize,
    /// SIP trunks calls are dialled out through (`[[trunks]]` tables, or
    /// `CONFER_TRUNKS='[{name = "carrier", address = "192.0.2.1:5060"}]'`; see README).
    pub trunks: Vec<TrunkConfig>,
    /// E.164 prefixes dial-out may reach beyond the home country (`"+44"`, `"+"` for
    /// everywhere); premium-rate prefixes need an allow rule at least as long
    /// (`CONFER_DIAL_OUT_ALLOW="+44,+33"`).
    pub dial_out_allow: Vec<String>,
    /// E.164 prefixes dial-out may not reach (`CONFER_DIAL_OUT_DENY`).
    pub dial_out_deny: Vec<String>,
    /// Which SIP calls are taken: `any` (default: dial-in numbers are public) or `trunks`
    /// (only from a trunk's address or with a trunk's inbound credentials).
    pub sip_inbound: String,
    /// The control API's token secret, hex, at least 32 bytes (`openssl rand -hex 32`):
    /// with it every API call needs a bearer token (`confer token`); without it the API is
    /// open and may only listen on loopback.
    pub api_secret: Option<Secret>,
    /// Where the compliance archive is kept (`CONFER_ARCHIVE_URL`): `postgres://...` (or
    /// `postgresql://...`) for PostgreSQL, `sqlite://PATH` or a plain path for a SQLite
    /// file; not set: the SQLite file `DATA_DIR/archive.db`. Its password never appears in
    /// logs.
    pub archive_url: Option<DbUrl>,
    /// Policy requires archiving (`CONFER_ARCHIVE_REQUIRED`, default true): while the
    /// archive cannot be written, new escalations and calls are refused (fail closed);
    /// ongoing calls go on and their records are written when it is back.
    pub archive_required: bool,
    /// Archive records older than this many days are purged daily, keeping the chain
    /// verifiable (`CONFER_ARCHIVE_RETENTION_DAYS`, default 0: kept forever).
    pub archive_retention_days: u32,
    /// How escalated calls ring (`[escalation]`: `ring_timeout_ms`, `pstn_timeout_ms`,
    /// `[escalation.ring_delays]` per device kind, ...; README "Escalation").
    pub escalation: confer_signalling::escalation::RoutingPolicy,
    /// Presence (`[presence]`: `idle_timeout_ms`, `max_calls_per_user`).
    pub presence: confer_signalling::presence::PresenceConfig,
    /// The initial policy (`[policy]`: groups, client rules, rate limits); the admin API's
    /// `PUT /v1/policy` replaces it and is kept across restarts.
    pub policy: confer_signalling::policy::PolicyConfig,
    /// Bounds of the users directory (`[directory_limits]`).
    pub directory_limits: confer_signalling::directory::DirectoryLimits,
    /// Days the event journal keeps events for resuming streams and webhooks
    /// (`CONFER_JOURNAL_RETENTION_DAYS`, default 7).
    pub journal_retention_days: u32,
    /// Endpoints every event is POSTed to, signed (`[[webhooks]]` with `name`, `url`,
    /// `secret`, optional `sources`; README "Webhooks").
    pub webhooks: Vec<crate::webhooks::WebhookConfig>,
}

/// A secret setting: `Debug` hides it, so a logged configuration never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A database URL (`archive_url`): `Debug` and [`DbUrl::redacted`] hide its password
/// (`postgres://confer:<redacted>@db/confer`, also a `password=` query parameter).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DbUrl(String);

impl DbUrl {
    pub fn new(url: impl Into<String>) -> DbUrl {
        DbUrl(url.into())
    }

    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password, for logs and messages.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let mut out = match url.split_once("://") {
            Some((scheme, rest)) => {
                // userinfo ends at the last '@' before the path.
                let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => {
                        let userinfo = &rest[..at];
                        let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                        let hidden = if userinfo.contains(':') {
                            ":<redacted>"
                        } else {
                            ""
                        };
                        format!("{scheme}://{user}{hidden}{}", &rest[at..])
                    }
                    None => url.clone(),
                }
            }
            None => url.clone(),
        };
        if let Some(q) = out.find('?') {
            let params: Vec<String> = out[q + 1..]
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                    _ => p.to_owned(),
                })
                .collect();
            out = format!("{}?{}", &out[..q], params.join("&"));
        }
        out
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({:?})", self.redacted())
    }
}

/// One dial-in number and the room it leads to (created on the first call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialIn {
    /// The number as dialled or in E.164 (normalised with `sip_country_code`), or an
    /// extension of up to six digits.
    pub number: String,
    /// The room's name (empty with `pin`).
    #[serde(default)]
    pub room: String,
    /// The number asks for a PIN (of a room made through the control API) instead.
    #[serde(default)]
    pub pin: bool,
}

impl DialIn {
    /// `number` leads into the room named `room`.
    pub fn room(number: impl Into<String>, room: impl Into<String>) -> DialIn {
        DialIn {
            number: number.into(),
            room: room.into(),
            pin: false,
        }
    }

    /// `number` leads to the PIN prompts.
    pub fn pin(number: impl Into<String>) -> DialIn {
        DialIn {
            number: number.into(),
            room: String::new(),
            pin: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rtp_port_min: 20_000,
            rtp_port_max: 20_999,
            frame_ms: 20,
            media_workers: 0,
            realtime_priority: 10,
            data_dir: PathBuf::from("confer-data"),
            http_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            sip_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060),
            sip_tls_listen: None,
            sip_tls_cert: None,
            sip_tls_key: None,
            sip_max_message_bytes: 16 * 1024,
            sip_rate_per_second: 50,
            sip_rate_burst: 100,
            sip_ban_seconds: 10,
            sip_max_connections: 1024,
            sip_max_connections_per_ip: 32,
            sip_message_timeout_ms: 5000,
            sip_idle_timeout_ms: 300_000,
            sip_max_calls: 500,
            sip_t1_ms: 500,
            sip_force_rport: true,
            sip_registrar_digest: "sha256,md5".to_owned(),
            sip_session_expires: 1800,
            sip_country_code: "1".to_owned(),
            dial_in: Vec::new(),
            pin_digits: 6,
            trunks: Vec::new(),
            dial_out_allow: Vec::new(),
            dial_out_deny: Vec::new(),
            sip_inbound: "any".to_owned(),
            api_secret: None,
            archive_url: None,
            archive_required: true,
            archive_retention_days: 0,
            escalation: Default::default(),
            presence: Default::default(),
            policy: Default::default(),
            directory_limits: Default::default(),
            journal_retention_days: 7,
            webhooks: Vec::new(),
        }
    }
}

impl Config {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                Self::from_toml(&text)
                    .with_context(|| format!("in config file {}", path.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML document (unknown keys are errors).
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Overrides settings from `CONFER_<SETTING>` variables (upper case).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn parse<T: std::str::FromStr>(key: &str, v: String) -> anyhow::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e| anyhow::anyhow!("environment variable {key}={v:?}: {e}"))
        }
        if let Some(v) = get("CONFER_MEDIA_IP") {
            self.media_ip = parse("CONFER_MEDIA_IP", v)?;
        }
        if let Some(v) = get("CONFER_RTP_PORT_MIN") {
            self.rtp_port_min = parse("CONFER_RTP_PORT_MIN", v)?;
        }
        if let Some(v) = get("CONFER_RTP_PORT_MAX") {
            self.rtp_port_max = parse("CONFER_RTP_PORT_MAX", v)?;
        }
        if let Some(v) = get("CONFER_FRAME_MS") {
            self.frame_ms = parse("CONFER_FRAME_MS", v)?;
        }
        if let Some(v) = get("CONFER_MEDIA_WORKERS") {
            self.media_workers = parse("CONFER_MEDIA_WORKERS", v)?;
        }
        if let Some(v) = get("CONFER_REALTIME_PRIORITY") {
            self.realtime_priority = parse("CONFER_REALTIME_PRIORITY", v)?;
        }
        if let Some(v) = get("CONFER_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("CONFER_HTTP_LISTEN") {
            self.http_listen = parse("CONFER_HTTP_LISTEN", v)?;
        }
        if let Some(v) = get("CONFER_SIP_LISTEN") {
            self.sip_listen = parse("CONFER_SIP_LISTEN", v)?;
        }
        if let Some(v) = get("CONFER_SIP_TLS_LISTEN") {
            self.sip_tls_listen = Some(parse("CONFER_SIP_TLS_LISTEN", v)?);
        }
        if let Some(v) = get("CONFER_SIP_TLS_CERT") {
            self.sip_tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CONFER_SIP_TLS_KEY") {
            self.sip_tls_key = Some(PathBuf::from(v));
        }
        macro_rules! number {
            ($($field:ident $key:literal),*) => {$(
                if let Some(v) = get($key) {
                    self.$field = parse($key, v)?;
                }
            )*};
        }
        number!(
            sip_max_message_bytes "CONFER_SIP_MAX_MESSAGE_BYTES",
            sip_rate_per_second "CONFER_SIP_RATE_PER_SECOND",
            sip_rate_burst "CONFER_SIP_RATE_BURST",
            sip_ban_seconds "CONFER_SIP_BAN_SECONDS",
            sip_max_connections "CONFER_SIP_MAX_CONNECTIONS",
            sip_max_connections_per_ip "CONFER_SIP_MAX_CONNECTIONS_PER_IP",
            sip_message_timeout_ms "CONFER_SIP_MESSAGE_TIMEOUT_MS",
            sip_idle_timeout_ms "CONFER_SIP_IDLE_TIMEOUT_MS",
            sip_max_calls "CONFER_SIP_MAX_CALLS",
            sip_t1_ms "CONFER_SIP_T1_MS",
            sip_force_rport "CONFER_SIP_FORCE_RPORT",
            sip_session_expires "CONFER_SIP_SESSION_EXPIRES",
            pin_digits "CONFER_PIN_DIGITS",
            journal_retention_days "CONFER_JOURNAL_RETENTION_DAYS"
        );
        if let Some(v) = get("CONFER_SIP_REGISTRAR_DIGEST") {
            self.sip_registrar_digest = v;
        }
        if let Some(v) = get("CONFER_SIP_COUNTRY_CODE") {
            self.sip_country_code = v;
        }
        if let Some(v) = get("CONFER_TRUNKS") {
            #[derive(Deserialize)]
            struct Wrapped {
                trunks: Vec<TrunkConfig>,
            }
            let w: Wrapped = toml::from_str(&format!("trunks = {v}")).map_err(|e| {
                // The message only: toml's full error quotes the line, passwords and all.
                anyhow::anyhow!(
                    "environment variable CONFER_TRUNKS (a TOML array of tables, \
                     e.g. [{{name = \"carrier\", address = \"192.0.2.1:5060\"}}]): {}",
                    e.message()
                )
            })?;
            self.trunks = w.trunks;
        }
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(v) = get("CONFER_DIAL_OUT_ALLOW") {
            self.dial_out_allow = list(v);
        }
        if let Some(v) = get("CONFER_DIAL_OUT_DENY") {
            self.dial_out_deny = list(v);
        }
        if let Some(v) = get("CONFER_API_SECRET") {
            self.api_secret = Some(Secret(v));
        }
        if let Some(v) = get("CONFER_SIP_INBOUND") {
            self.sip_inbound = v;
        }
        if let Some(v) = get("CONFER_ARCHIVE_URL") {
            self.archive_url = Some(DbUrl::new(v)).filter(|u| !u.0.is_empty());
        }
        number!(
            archive_required "CONFER_ARCHIVE_REQUIRED",
            archive_retention_days "CONFER_ARCHIVE_RETENTION_DAYS"
        );
        if let Some(v) = get("CONFER_DIAL_IN") {
            self.dial_in = parse_dial_in(&v)
                .map_err(|e| anyhow::anyhow!("environment variable CONFER_DIAL_IN={v:?}: {e}"))?;
        }
        Ok(())
    }

    /// Rejects settings that cannot work, saying which and why.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.frame_ms != 10 && self.frame_ms != 20 {
            bail!("frame_ms must be 10 or 20, not {}", self.frame_ms);
        }
        if self.rtp_port_min > self.rtp_port_max {
            bail!(
                "rtp_port_min ({}) is above rtp_port_max ({})",
                self.rtp_port_min,
                self.rtp_port_max
            );
        }
        if self.realtime_priority > 99 {
            bail!(
                "realtime_priority must be 0 (normal scheduling) or 1..=99, not {}",
                self.realtime_priority
            );
        }
        if self.rtp_port_min < 1024 {
            bail!("rtp_port_min must be >= 1024, not {}", self.rtp_port_min);
        }
        self.validate_sip()
    }

    /// The registrar's challenge order: (MD5 first, MD5 only).
    pub fn registrar_digest(&self) -> anyhow::Result<(bool, bool)> {
        match self.sip_registrar_digest.replace(' ', "").as_str() {
            "sha256,md5" => Ok((false, false)),
            "md5,sha256" => Ok((true, false)),
            "md5" => Ok((true, true)),
            other => bail!(
                "sip_registrar_digest must be \"sha256,md5\", \"md5,sha256\" or \"md5\", not {other:?}"
            ),
        }
    }

    fn validate_sip(&self) -> anyhow::Result<()> {
        self.registrar_digest()?;
        if !(1024..=1 << 20).contains(&self.sip_max_message_bytes) {
            bail!(
                "sip_max_message_bytes must be 1024..=1048576, not {}",
                self.sip_max_message_bytes
            );
        }
        if self.sip_rate_per_second > 0 && self.sip_rate_burst == 0 {
            bail!("sip_rate_burst must be at least 1 when sip_rate_per_second is set");
        }
        if self.sip_ban_seconds == 0 || self.sip_ban_seconds > 86_400 {
            bail!(
                "sip_ban_seconds must be 1..=86400, not {}",
                self.sip_ban_seconds
            );
        }
        if self.sip_max_connections == 0
            || self.sip_max_connections_per_ip == 0
            || self.sip_max_connections_per_ip > self.sip_max_connections
        {
            bail!(
                "sip_max_connections ({}) and sip_max_connections_per_ip ({}) must be at \
                 least 1, the second no more than the first",
                self.sip_max_connections,
                self.sip_max_connections_per_ip
            );
        }
        if self.sip_message_timeout_ms == 0 || self.sip_idle_timeout_ms == 0 {
            bail!("sip_message_timeout_ms and sip_idle_timeout_ms must be above 0");
        }
        if self.sip_max_calls == 0 {
            bail!("sip_max_calls must be at least 1");
        }
        if !(10..=10_000).contains(&self.sip_t1_ms) {
            bail!("sip_t1_ms must be 10..=10000, not {}", self.sip_t1_ms);
        }
        if self.sip_session_expires < 90 {
            bail!(
                "sip_session_expires must be at least 90 s (RFC 4028), not {}",
                self.sip_session_expires
            );
        }
        match (&self.sip_tls_listen, &self.sip_tls_cert, &self.sip_tls_key) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            _ => bail!("SIP over TLS needs all of sip_tls_listen, sip_tls_cert and sip_tls_key"),
        }
        if !self.dial_in.is_empty() && self.media_ip.is_unspecified() {
            bail!(
                "media_ip {} cannot be written in SDP: dial-in needs a concrete address",
                self.media_ip
            );
        }
        crate::sip::DialPlan::new(&self.dial_in, &self.sip_country_code)?;
        match &self.api_secret {
            Some(secret) => {
                crate::auth::keyring(secret.expose())?;
            }
            None if !self.http_listen.ip().is_loopback() => bail!(
                "http_listen {} is not loopback: the control API needs api_secret (tokens) \
                 to listen there",
                self.http_listen
            ),
            None => {}
        }
        if !matches!(self.sip_inbound.as_str(), "any" | "trunks") {
            bail!(
                "sip_inbound must be \"any\" or \"trunks\", not {:?}",
                self.sip_inbound
            );
        }
        self.validate_archive()?;
        if !(4..=12).contains(&self.pin_digits) {
            bail!("pin_digits must be 4..=12, not {}", self.pin_digits);
        }
        crate::sip::Trunks::new(
            &self.trunks,
            &self.sip_country_code,
            &self.dial_out_allow,
            &self.dial_out_deny,
        )?;
        Ok(())
    }

    fn validate_archive(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.archive_url {
            let u = url.expose();
            let known = ["postgres://", "postgresql://", "sqlite://"];
            if u.contains("://") && !known.iter().any(|k| u.starts_with(k)) {
                bail!(
                    "archive_url {} must be postgres://..., postgresql://..., sqlite://PATH \
                     or a file path",
                    url.redacted()
                );
            }
            if u.strip_prefix("sqlite://").unwrap_or(u).is_empty() {
                bail!("archive_url has no SQLite file path");
            }
        }
        if self.archive_retention_days > 36_500 {
            bail!(
                "archive_retention_days must be 0 (keep forever) or 1..=36500, not {}",
                self.archive_retention_days
            );
        }
        Ok(())
    }

    /// Where the compliance archive is: `archive_url`, else `DATA_DIR/archive.db`.
    pub fn archive_store(&self) -> confer_archive_store::StoreConfig {
        match &self.archive_url {
            Some(url) => confer_archive_store::StoreConfig::from_url(url.expose()),
            None => confer_archive_store::StoreConfig::sqlite(self.data_dir.join("archive.db")),
        }
    }

    /// Media worker threads to start.
    pub fn workers(&self) -> usize {
        if self.media_workers > 0 {
            self.media_workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// `number=room` and `number` (the PIN prompts), comma-separated (the `CONFER_DIAL_IN`
/// form).
fn parse_dial_in(v: &str) -> Result<Vec<DialIn>, String> {
    v.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((number, room)) => Ok(DialIn::room(number.trim(), room.trim())),
            None => Ok(DialIn::pin(p.trim())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.media_ip.is_loopback());
        assert!(c.http_listen.ip().is_loopback());
        assert_eq!(c.http_listen.port(), 8080);
    }

    #[test]
    fn the_archive_defaults_to_a_required_sqlite_file_in_the_data_dir_kept_forever() {
        let c = Config::default();
        assert_eq!(c.archive_url, None);
        assert!(c.archive_required);
        assert_eq!(c.archive_retention_days, 0);
        assert_eq!(
            c.archive_store().location,
            confer_archive_store::Location::Sqlite(PathBuf::from("confer-data/archive.db"))
        );
        let c = Config::from_toml(
            "archive_url = \"postgres://confer:hunter2@db.example/confer?password=hunter2\"\n\
             archive_required = false\narchive_retention_days = 365\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(!c.archive_required);
        assert_eq!(c.archive_retention_days, 365);
        assert!(matches!(
            c.archive_store().location,
            confer_archive_store::Location::Postgres(_)
        ));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://confer:<redacted>@db.example/confer"),
            "{shown}"
        );
    }

    #[test]
    fn archive_settings_come_from_the_environment_and_bad_ones_are_refused() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "CONFER_ARCHIVE_URL" => Some("sqlite:///var/lib/confer/a.db".into()),
            "CONFER_ARCHIVE_REQUIRED" => Some("false".into()),
            "CONFER_ARCHIVE_RETENTION_DAYS" => Some("30".into()),
            _ => None,
        })
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.archive_store().location,
            confer_archive_store::Location::Sqlite(PathBuf::from("/var/lib/confer/a.db"))
        );
        assert!(!c.archive_required);
        assert_eq!(c.archive_retention_days, 30);
        let err = c
            .apply_env(|k| (k == "CONFER_ARCHIVE_REQUIRED").then(|| "maybe".into()))
            .unwrap_err();
        assert!(err.to_string().contains("CONFER_ARCHIVE_REQUIRED"), "{err}");
        for (url, what) in [
            ("mysql://u:pw@db/x", "archive_url mysql://u:<redacted>@db/x"),
            ("sqlite://", "no SQLite file path"),
        ] {
            let c = Config {
                archive_url: Some(DbUrl::new(url)),
                ..Config::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let c = Config {
            archive_retention_days: 100_000,
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("archive_retention_days"), "{e}");
    }

    #[test]
    fn a_toml_file_overrides_defaults_and_unknown_keys_are_rejected() {
        let c = Config::from_toml("frame_ms = 10\nrtp_port_min = 30000\nrtp_port_max = 30100\n")
            .unwrap();
        assert_eq!(c.frame_ms, 10);
        assert_eq!(c.rtp_port_min, 30000);
        assert_eq!(c.data_dir, PathBuf::from("confer-data"));
        let err = Config::from_toml("frame_msec = 10").unwrap_err();
        assert!(format!("{err:#}").contains("frame_msec"), "{err:#}");
    }

    #[test]
    fn environment_overrides_the_file_and_bad_values_say_which_variable() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "CONFER_FRAME_MS").then(|| "10".to_string()))
            .unwrap();
        assert_eq!(c.frame_ms, 10);
        let err = c
            .apply_env(|k| (k == "CONFER_RTP_PORT_MIN").then(|| "many".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("CONFER_RTP_PORT_MIN"), "{err}");
        c.apply_env(|k| (k == "CONFER_HTTP_LISTEN").then(|| "127.0.0.1:0".to_string()))
            .unwrap();
        assert_eq!(c.http_listen.port(), 0);
        let err = c
            .apply_env(|k| (k == "CONFER_HTTP_LISTEN").then(|| "localhost".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("CONFER_HTTP_LISTEN"), "{err}");
    }

    #[test]
    fn impossible_settings_are_refused_with_the_reason() {
        let c = Config {
            realtime_priority: 100,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("realtime_priority must be 0 (normal scheduling) or 1..=99")
        );
        let mut c = Config::default();
        c.apply_env(|k| (k == "CONFER_REALTIME_PRIORITY").then(|| "0".to_string()))
            .unwrap();
        assert_eq!(c.realtime_priority, 0);
        let c = Config {
            frame_ms: 15,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("frame_ms"));
        let c = Config {
            rtp_port_min: 5000,
            rtp_port_max: 4000,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("rtp_port_min")
        );
    }

    #[test]
    fn trunks_come_from_toml_tables_or_an_inline_array_in_the_environment() {
        let c = Config::from_toml(
            "dial_out_allow = [\"+44\"]\n\
             [[trunks]]\nname = \"carrier\"\naddress = \"127.0.0.1:5099\"\n\
             username = \"acct\"\npassword = \"secret\"\n\
             [[trunks.to_trunk]]\npattern = \"+1\"\nstrip = 2\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.trunks[0].name, "carrier");
        assert_eq!(c.trunks[0].to_trunk[0].strip, 2);
        assert_eq!(c.dial_out_allow, ["+44"]);
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "CONFER_TRUNKS" => Some(r#"[{name = "a", address = "127.0.0.1:5099"}]"#.into()),
            "CONFER_DIAL_OUT_DENY" => Some("+1900, +1976".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.trunks[0].address, "127.0.0.1:5099");
        assert_eq!(c.dial_out_deny, ["+1900", "+1976"]);
        let err = c
            .apply_env(|k| (k == "CONFER_TRUNKS").then(|| "nonsense".into()))
            .unwrap_err();
        assert!(err.to_string().contains("CONFER_TRUNKS"), "{err}");
        let mut bad = c.clone();
        bad.trunks[0].address = "no port".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn sip_defaults_to_udp_and_tcp_on_loopback_5060_without_tls_or_numbers() {
        let c = Config::default();
        assert_eq!(c.sip_listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.sip_tls_listen, None);
        assert!(c.dial_in.is_empty());
        assert!(c.sip_force_rport);
        c.validate().unwrap();
    }

    #[test]
    fn dial_in_numbers_come_from_toml_tables_or_one_environment_variable() {
        let c = Config::from_toml(
            "sip_listen = \"127.0.0.1:0\"\n\
             [[dial_in]]\nnumber = \"+15550100123\"\nroom = \"standup\"\n\
             [[dial_in]]\nnumber = \"4242\"\nroom = \"retro\"\n",
        )
        .unwrap();
        assert_eq!(c.dial_in.len(), 2);
        assert_eq!(c.dial_in[1].room, "retro");
        c.validate().unwrap();
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "CONFER_DIAL_IN" => Some("+15550100123=standup, 4242 = retro,+15550100199".into()),
            "CONFER_SIP_FORCE_RPORT" => Some("false".into()),
            "CONFER_SIP_MAX_MESSAGE_BYTES" => Some("4096".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.dial_in[1], DialIn::room("4242", "retro"));
        assert_eq!(c.dial_in[2], DialIn::pin("+15550100199"));
        assert!(!c.sip_force_rport);
        assert_eq!(c.sip_max_message_bytes, 4096);
        c.apply_env(|k| (k == "CONFER_DIAL_IN").then(|| "standup".into()))
            .unwrap();
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string().contains("dial_in number \"standup\""),
            "{err}"
        );
        let err = c
            .apply_env(|k| (k == "CONFER_SIP_RATE_BURST").then(|| "lots".into()))
            .unwrap_err();
        assert!(err.to_string().contains("CONFER_SIP_RATE_BURST"), "{err}");
    }

    #[test]
    fn impossible_sip_settings_are_refused_with_the_reason() {
        let refused = |c: Config, what: &str| {
            let e = format!("{:#}", c.validate().unwrap_err());
            assert!(e.contains(what), "{e}");
        };
        refused(
            Config {
                sip_tls_listen: Some("127.0.0.1:5061".parse().unwrap()),
                ..Config::default()
            },
            "sip_tls_cert",
        );
        let numbers = vec![DialIn::room("+15550100123", "standup")];
        refused(
            Config {
                dial_in: numbers.clone(),
                media_ip: "0.0.0.0".parse().unwrap(),
                ..Config::default()
            },
            "media_ip",
        );
        refused(
            Config {
                dial_in: vec![DialIn::room("not a number", "x")],
                ..Config::default()
            },
            "dial_in number",
        );
        refused(
            Config {
                sip_session_expires: 60,
                ..Config::default()
            },
            "sip_session_expires",
        );
        refused(
            Config {
                sip_max_connections: 4,
                sip_max_connections_per_ip: 8,
                ..Config::default()
            },
            "sip_max_connections",
        );
        refused(
            Config {
                sip_max_message_bytes: 100,
                ..Config::default()
            },
            "sip_max_message_bytes",
        );
        refused(
            Config {
                sip_country_code: "0".into(),
                ..Config::default()
            },
            "sip_country_code",
        );
    }
}

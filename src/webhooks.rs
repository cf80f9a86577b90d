//! Signed webhooks: every journal event (optionally only some sources) POSTed to the IM
//! server's URL, in order, at least once, even across restarts.
//!
//! # Design
//!
//! One task per hook follows the [`Journal`] from its own cursor, kept in the journal's
//! state table as `webhook:<name>` = the seq of the last acknowledged event, saved after
//! every acknowledged delivery: after a restart (or a crash) the hook resumes after it, so
//! an event is delivered at least once, and twice only if the process died between the
//! receiver's 2xx and the save. A hook's first start begins at the journal's head (not its
//! beginning) and saves that cursor at once. Events filtered out by `sources` move the
//! cursor too (saved every 1000 such events and when the hook stops).
//!
//! Each request carries one event: `POST <url>` with the body [`Event::to_json`] and the
//! headers `Content-Type: application/json`, `Confer-Event-Seq: <seq>` and
//! `Confer-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is the lowercase hex
//! HMAC-SHA256, keyed with the hook's secret, of the bytes `<t>.<body>`. The receiver
//! recomputes it over the raw body it received, compares in constant time, and rejects a
//! `t` too far from its clock (5 minutes is a good bound): a replayed request is refused,
//! and every retry is signed afresh with the time of its sending.
//!
//! A 2xx acknowledges. Anything else (another status, a transport error, no answer within
//! `timeout_ms`, 5 s by default; redirects are not followed) is retried, the same event
//! again, since order matters and nothing is skipped silently: after `retry_initial_ms`
//! (1 s), doubling up to `retry_max_ms` (5 min), each delay drawn uniformly between half
//! and all of that ("equal jitter", so hooks that failed together do not retry together;
//! the RNG is seeded, from the OS in production and by the test). A 410 Gone stops the
//! hook (logged; `confer_webhook_up{hook}` goes to 0) until the next start. If a receiver
//! stays down longer than the journal's retention, the events it missed are purged: the
//! hook logs an error naming the lost seqs, counts them in
//! `confer_webhook_skipped_events_total` and carries on from the oldest kept event.
//!
//! HTTP goes through `ureq` (blocking) on tokio's blocking pool, one request at a time per
//! hook: nothing here runs on a media thread or makes [`Journal::append`] wait, and a slow
//! receiver only lets its own hook fall behind (the journal keeps the events).
//!
//! `https://` goes through rustls (ureq's TLS configuration, nothing hand-rolled). The
//! server certificate is checked against the Mozilla root certificates (webpki-roots), or,
//! when the hook has a `ca_file`, against the CA certificates in that PEM file and nothing
//! else: a receiver behind a private (enterprise) CA is trusted without trusting every
//! public CA for it. The file is read and checked once, at start, so a missing or empty
//! file stops `confer serve` with an error naming the hook rather than failing every
//! delivery; a certificate the CAs did not sign is a transport error, retried like any
//! other (the CA may be fixed on the receiver's side while the journal keeps the events).
//!
//! # Limits
//!
//! - No client certificates (mutual TLS) yet: the signature authenticates the sender.
//! - Changing `ca_file` takes a restart.
//! - `ureq` honours the `HTTP_PROXY`/`NO_PROXY` environment variables.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ureq::tls::{PemItem, RootCerts, TlsConfig};

use crate::journal::{Event, Journal, JournalError, Subscription};

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest hook name (it appears in metric labels and the state key).
const MAX_NAME_BYTES: usize = 64;
/// Filtered-out events after which the cursor is saved anyway.
const SAVE_SKIPPED_EVERY: u64 = 1000;
/// Most of a response body read (so the connection can be reused), in bytes.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

fn default_retry_initial_ms() -> u64 {
    1000
}

fn default_retry_max_ms() -> u64 {
    300_000
}

fn default_timeout_ms() -> u64 {
    5000
}

/// One webhook (`[[webhooks]]` in the configuration).
///
/// `ca_file` (optional, `https://` URLs only): a PEM file with one or more CA certificates;
/// when set, the receiver's certificate must chain to one of them and the public roots are
/// not trusted for this hook (a private or enterprise CA). Without it, the Mozilla roots
/// (webpki-roots). It is read at start: an unreadable file, one without a certificate, or
/// a `ca_file` on an `http://` URL is a configuration error.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Letters, digits, `-`, `_`, `.`; unique (its cursor is kept under this name).
    pub name: String,
    /// `http://host[:port]/path` or `https://host[:port]/path`.
    pub url: String,
    /// The HMAC-SHA256 key, at least 16 bytes; kept out of `Debug`.
    pub secret: String,
    /// Only events of these sources (`room`, `call`, `presence`, `sip`, `policy`); empty: all.
    #[serde(default)]
    pub sources: Vec<String>,
    /// First retry delay after a failed delivery, in ms (default 1000).
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay, in ms (default 300 000: 5 minutes).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// How long one request may take, in ms (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// PEM file of the CA certificates trusted for the `https://` URL, instead of the
    /// Mozilla roots (none: the Mozilla roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl WebhookConfig {
    fn validate(&self) -> Result<(), WebhookError> {
        let name = &self.name;
        let bad = |reason: &'static str| {
            Err(WebhookError::Invalid {
                name: name.clone(),
                reason,
            })
        };
        if name.is_empty()
            || name.len() > MAX_NAME_BYTES
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad("the name must be 1 to 64 letters, digits, '-', '_' or '.'");
        }
        if self.secret.len() < MIN_SECRET_BYTES {
            return bad("the secret must be at least 16 bytes");
        }
        if self.sources.iter().any(String::is_empty) {
            return bad("a source is empty");
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return bad("retry_initial_ms must be at least 1 and at most retry_max_ms");
        }
        if self.timeout_ms == 0 {
            return bad("timeout_ms must be at least 1");
        }
        let uri: ureq::http::Uri = match self.url.parse() {
            Ok(uri) => uri,
            Err(_) => return bad("the url is not a valid URL"),
        };
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return bad("the url must start with http:// or https://"),
        }
        if uri.host().is_none_or(str::is_empty) {
            return bad("the url has no host");
        }
        if self.ca_file.is_some() && uri.scheme_str() != Some("https") {
            return bad("ca_file is set but the url is not https://");
        }
        Ok(())
    }

    /// The hook's TLS configuration: the CAs of `ca_file` only, or the Mozilla roots.
    async fn tls_config(&self) -> Result<TlsConfig, WebhookError> {
        let roots = match &self.ca_file {
            None => RootCerts::WebPki,
            Some(path) => {
                let pem = tokio::fs::read(path).await.map_err(|source| {
                    WebhookError::CaFileUnreadable {
                        name: self.name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?;
                ca_certificates(&self.name, path, &pem)?
            }
        };
        Ok(TlsConfig::builder().root_certs(roots).build())
    }

    /// The hook's HTTP client, trusting the roots of `tls`.
    fn agent(&self, tls: TlsConfig) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(self.timeout_ms)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("confer-webhooks/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into()
    }

    fn wants(&self, event: &Event) -> bool {
        self.sources.is_empty() || self.sources.contains(&event.source)
    }

    /// The delay before retry number `attempt` (0: the first retry): the nominal delay
    /// doubles from `retry_initial_ms` up to `retry_max_ms`; the delay is drawn in
    /// `[nominal / 2, nominal]`.
    fn retry_delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self
            .retry_initial_ms
            .saturating_mul(1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX))
            .min(self.retry_max_ms);
        Duration::from_millis(rng.random_range(nominal / 2..=nominal))
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("sources", &self.sources)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The trust roots in the PEM bytes `pem` of hook `name`'s `ca_file` at `path`: every
/// certificate in it (other sections, such as keys, are ignored); at least one, and each
/// one usable as a trust anchor (rustls would silently drop one that is not).
fn ca_certificates(name: &str, path: &Path, pem: &[u8]) -> Result<RootCerts, WebhookError> {
    let invalid = |reason| WebhookError::CaFileInvalid {
        name: name.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(_) => return Err(invalid("is not valid PEM")),
        }
    }
    if certs.is_empty() {
        return Err(invalid("holds no certificate"));
    }
    let (_, unusable) = rustls::RootCertStore::empty().add_parsable_certificates(
        certs
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.der())),
    );
    if unusable > 0 {
        return Err(invalid("holds a certificate that is not valid X.509"));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// Why the webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {name:?}: {reason}")]
    Invalid { name: String, reason: &'static str },
    #[error("webhook {name:?}: cannot read ca_file {}: {source}", path.display())]
    CaFileUnreadable {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook {name:?}: ca_file {} {reason}", path.display())]
    CaFileInvalid {
        name: String,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("two webhooks are named {0:?}")]
    DuplicateName(String),
    /// The saved cursor is not a number (the state table was edited by hand).
    #[error("webhook {name:?}: saved cursor {value:?} is not a sequence number")]
    BadCursor { name: String, value: String },
    #[error("webhook {name:?}: {source}")]
    Journal {
        name: String,
        #[source]
        source: JournalError,
    },
}

/// The lowercase hex HMAC-SHA256 of `message` keyed with `key`.
fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    let mut hex = String::with_capacity(64);
    for b in mac.finalize().into_bytes() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

/// The `Confer-Signature` header value for `body` sent at `t` (unix seconds).
pub fn signature(secret: &str, t: u64, body: &str) -> String {
    let mut message = Vec::with_capacity(body.len() + 21);
    message.extend_from_slice(t.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body.as_bytes());
    format!("t={t},v1={}", hmac_hex(secret.as_bytes(), &message))
}

/// One hook's counters.
#[derive(Default)]
struct HookMetrics {
    ok: AtomicU64,
    error: AtomicU64,
    gone: AtomicU64,
    skipped: AtomicU64,
    /// Seq of the last event acknowledged or filtered out.
    cursor: AtomicU64,
    up: AtomicBool,
}

/// The running webhooks.
pub struct Webhooks {
    journal: Journal,
    hooks: Vec<(String, Arc<HookMetrics>)>,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Webhooks {
    /// Validates the hooks and starts one task per hook (retry jitter seeded from the OS).
    pub async fn start(
        journal: Journal,
        hooks: Vec<WebhookConfig>,
    ) -> Result<Webhooks, WebhookError> {
        Webhooks::start_with_seed(journal, hooks, rand::random()).await
    }

    /// [`Webhooks::start`] with the retry jitter's RNG seeded by `seed` (tests).
    pub async fn start_with_seed(
        journal: Journal,
        hooks: Vec<WebhookConfig>,
        seed: u64,
    ) -> Result<Webhooks, WebhookError> {
        for (i, hook) in hooks.iter().enumerate() {
            hook.validate()?;
            if hooks[..i].iter().any(|h| h.name == hook.name) {
                return Err(WebhookError::DuplicateName(hook.name.clone()));
            }
        }
        let mut tls = Vec::with_capacity(hooks.len());
        for hook in &hooks {
            tls.push(hook.tls_config().await?);
        }
        let mut subscriptions = Vec::with_capacity(hooks.len());
        for hook in &hooks {
            subscriptions.push(subscribe(&journal, hook).await?);
        }
        let (stop, _) = watch::channel(false);
        let mut names = Vec::with_capacity(hooks.len());
        let mut tasks = Vec::with_capacity(hooks.len());
        let each = hooks.into_iter().zip(tls).zip(subscriptions).enumerate();
        for (i, ((hook, tls), (sub, skipped))) in each {
            let metrics = Arc::new(HookMetrics::default());
            metrics.cursor.store(sub.cursor(), Ordering::Relaxed);
            metrics.skipped.store(skipped, Ordering::Relaxed);
            metrics.up.store(true, Ordering::Relaxed);
            names.push((hook.name.clone(), metrics.clone()));
            let agent = hook.agent(tls);
            let task = HookTask {
                rng: StdRng::seed_from_u64(seed.wrapping_add(i as u64)),
                hook: Arc::new(hook),
                journal: journal.clone(),
                agent,
                metrics,
                stop: stop.subscribe(),
            };
            tasks.push(tokio::spawn(task.run(sub)));
        }
        Ok(Webhooks {
            journal,
            hooks: names,
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let head = self.journal.head();
        let mut out = String::from(
            "# HELP confer_webhook_deliveries_total Webhook requests by outcome (error: retried).\n\
             # TYPE confer_webhook_deliveries_total counter\n",
        );
        for (name, m) in &self.hooks {
            for (result, n) in [("ok", &m.ok), ("error", &m.error), ("gone", &m.gone)] {
                let _ = writeln!(
                    out,
                    "confer_webhook_deliveries_total{{hook=\"{name}\",result=\"{result}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP confer_webhook_lag_events Journal events not yet delivered to the hook.\n\
             # TYPE confer_webhook_lag_events gauge\n",
        );
        for (name, m) in &self.hooks {
            let lag = head.saturating_sub(m.cursor.load(Ordering::Relaxed));
            let _ = writeln!(out, "confer_webhook_lag_events{{hook=\"{name}\"}} {lag}");
        }
        out.push_str(
            "# HELP confer_webhook_skipped_events_total Events purged from the journal before delivery.\n\
             # TYPE confer_webhook_skipped_events_total counter\n",
        );
        for (name, m) in &self.hooks {
            let n = m.skipped.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "confer_webhook_skipped_events_total{{hook=\"{name}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP confer_webhook_up 1 while the hook delivers; 0 after a 410 Gone.\n\
             # TYPE confer_webhook_up gauge\n",
        );
        for (name, m) in &self.hooks {
            let up = u8::from(m.up.load(Ordering::Relaxed));
            let _ = writeln!(out, "confer_webhook_up{{hook=\"{name}\"}} {up}");
        }
        out
    }

    /// Stops every hook: a request in flight is abandoned (the receiver may still get it;
    /// it is sent again after the next start), the cursors are saved. Idempotent.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a webhook task failed");
            }
        }
    }
}

fn state_key(name: &str) -> String {
    format!("webhook:{name}")
}

/// The hook's subscription from its saved cursor (first start: from the head), and how
/// many events it missed because they were purged.
async fn subscribe(
    journal: &Journal,
    hook: &WebhookConfig,
) -> Result<(Subscription, u64), WebhookError> {
    let name = &hook.name;
    let journal_error = |source| WebhookError::Journal {
        name: name.clone(),
        source,
    };
    let key = state_key(name);
    let saved = journal.load_state(&key).await.map_err(journal_error)?;
    let cursor = match saved {
        Some(value) => value.parse::<u64>().map_err(|_| WebhookError::BadCursor {
            name: name.clone(),
            value,
        })?,
        None => {
            let head = journal.head();
            journal
                .save_state(&key, &head.to_string())
                .await
                .map_err(journal_error)?;
            head
        }
    };
    match journal.subscribe(Some(cursor)) {
        Ok(sub) => Ok((sub, 0)),
        Err(JournalError::CursorExpired { oldest }) => {
            let resume = oldest.saturating_sub(1);
            tracing::error!(
                hook = %name,
                lost_from = cursor + 1,
                lost_to = resume,
                "webhook events were purged from the journal before delivery; continuing after them"
            );
            let sub = journal.subscribe(Some(resume)).map_err(journal_error)?;
            Ok((sub, resume.saturating_sub(cursor)))
        }
        Err(JournalError::CursorAhead { head }) => {
            tracing::warn!(hook = %name, cursor, head, "webhook cursor is ahead of the journal (a new journal file?); starting at its head");
            journal
                .save_state(&key, &head.to_string())
                .await
                .map_err(journal_error)?;
            let sub = journal.subscribe(Some(head)).map_err(journal_error)?;
            Ok((sub, 0))
        }
        Err(e) => Err(journal_error(e)),
    }
}

enum Outcome {
    Delivered,
    Gone,
    Stopped,
}

struct HookTask {
    hook: Arc<WebhookConfig>,
    journal: Journal,
    agent: ureq::Agent,
    metrics: Arc<HookMetrics>,
    stop: watch::Receiver<bool>,
    rng: StdRng,
}

impl HookTask {
    async fn run(mut self, mut sub: Subscription) {
        let mut unsaved: u64 = 0;
        loop {
            let next = tokio::select! {
                next = sub.next() => next,
                _ = self.stop.wait_for(|s| *s) => break,
            };
            let Some(event) = next else {
                if !sub.expired() {
                    break; // the journal closed
                }
                let oldest = self.journal.oldest();
                let missed = oldest.saturating_sub(sub.cursor() + 1);
                self.metrics.skipped.fetch_add(missed, Ordering::Relaxed);
                tracing::error!(
                    hook = %self.hook.name,
                    lost_from = sub.cursor() + 1,
                    lost_to = oldest.saturating_sub(1),
                    "webhook events were purged from the journal before delivery; continuing after them"
                );
                match self.journal.subscribe(Some(oldest.saturating_sub(1))) {
                    Ok(s) => sub = s,
                    Err(e) => {
                        tracing::error!(hook = %self.hook.name, error = %e, "webhook cannot follow the journal; stopped");
                        break;
                    }
                }
                continue;
            };
            if !self.hook.wants(&event) {
                self.metrics.cursor.store(event.seq, Ordering::Relaxed);
                unsaved += 1;
                if unsaved >= SAVE_SKIPPED_EVERY {
                    self.save(event.seq).await;
                    unsaved = 0;
                }
                continue;
            }
            match self.deliver(&event).await {
                Outcome::Delivered => {
                    self.save(event.seq).await;
                    self.metrics.cursor.store(event.seq, Ordering::Relaxed);
                    unsaved = 0;
                }
                Outcome::Gone => {
                    self.metrics.up.store(false, Ordering::Relaxed);
                    tracing::error!(hook = %self.hook.name, seq = event.seq, "webhook receiver answered 410 Gone: hook stopped until the next start");
                    break;
                }
                Outcome::Stopped => break,
            }
        }
        if unsaved > 0 {
            self.save(self.metrics.cursor.load(Ordering::Relaxed)).await;
        }
        self.metrics.up.store(false, Ordering::Relaxed);
    }

    async fn save(&self, seq: u64) {
        if let Err(e) = self
            .journal
            .save_state(&state_key(&self.hook.name), &seq.to_string())
            .await
        {
            // At-least-once still holds: a restart re-sends from the older cursor.
            tracing::warn!(hook = %self.hook.name, seq, error = %e, "saving the webhook cursor failed");
        }
    }

    /// Sends `event` until a 2xx (or a 410, or stop).
    async fn deliver(&mut self, event: &Event) -> Outcome {
        let body: Arc<str> = event.to_json().into();
        let mut attempt: u32 = 0;
        loop {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let request = Request {
                agent: self.agent.clone(),
                hook: self.hook.clone(),
                seq: event.seq,
                signature: signature(&self.hook.secret, t, &body),
                body: body.clone(),
            };
            let call = tokio::task::spawn_blocking(move || request.send());
            let result = tokio::select! {
                r = call => r,
                _ = self.stop.wait_for(|s| *s) => return Outcome::Stopped,
            };
            let failure = match result {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    self.metrics.ok.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Delivered;
                }
                Ok(Ok(410)) => {
                    self.metrics.gone.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Gone;
                }
                Ok(Ok(status)) => format!("HTTP status {status}"),
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("request task failed: {e}"),
            };
            self.metrics.error.fetch_add(1, Ordering::Relaxed);
            let delay = self.hook.retry_delay(attempt, &mut self.rng);
            if attempt == 0 {
                tracing::warn!(hook = %self.hook.name, seq = event.seq, error = %failure, "webhook delivery failed; retrying with backoff");
            } else {
                tracing::debug!(hook = %self.hook.name, seq = event.seq, attempt, error = %failure, ?delay, "webhook delivery failed again");
            }
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.stop.wait_for(|s| *s) => return Outcome::Stopped,
            }
        }
    }
}

/// One POST, run on the blocking pool.
struct Request {
    agent: ureq::Agent,
    hook: Arc<WebhookConfig>,
    seq: u64,
    signature: String,
    body: Arc<str>,
}

impl Request {
    /// The response's status.
    fn send(self) -> Result<u16, ureq::Error> {
        let response = self
            .agent
            .post(self.hook.url.as_str())
            .header("Content-Type", "application/json")
            .header("Confer-Event-Seq", self.seq.to_string())
            .header("Confer-Signature", self.signature.as_str())
            .send(self.body.as_bytes())?;
        let status = response.status().as_u16();
        // Read a short answer so the connection can be reused; its content does not matter.
        let _ = response
            .into_body()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec();
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Instant;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use confer_signalling::directory::Timestamp;
    use rand::SeedableRng;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use serde_json::{Map, Value};

    use super::*;
    use crate::journal::JournalConfig;

    const SECRET: &str = "a-webhook-secret-of-32-bytes-000";

    impl WebhookConfig {
        /// A hook for every source with the default retry and timeout.
        fn new(
            name: impl Into<String>,
            url: impl Into<String>,
            secret: impl Into<String>,
        ) -> WebhookConfig {
            WebhookConfig {
                name: name.into(),
                url: url.into(),
                secret: secret.into(),
                sources: Vec::new(),
                retry_initial_ms: default_retry_initial_ms(),
                retry_max_ms: default_retry_max_ms(),
                timeout_ms: default_timeout_ms(),
                ca_file: None,
            }
        }
    }

    /// What the receiver got in one request.
    #[derive(Debug, Clone)]
    struct Got {
        seq: String,
        signature: String,
        content_type: String,
        body: String,
        at: Instant,
    }

    /// A test receiver: records every request, answers from a script of (status, delay).
    #[derive(Clone, Default)]
    struct Receiver {
        got: Arc<Mutex<Vec<Got>>>,
        script: Arc<Mutex<VecDeque<(u16, Duration)>>>,
        /// TLS handshakes that failed (`start_tls` only).
        handshakes_failed: Arc<AtomicU64>,
    }

    /// TLS on a TCP listener for `axum::serve`: a connection is handed over once its
    /// handshake succeeded; a failed handshake is counted and the connection dropped.
    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        failed: Arc<AtomicU64>,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                match self.acceptor.accept(tcp).await {
                    Ok(tls) => return (tls, addr),
                    Err(_) => {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// A test certificate authority.
    struct TestCa {
        pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl TestCa {
        fn new(name: &str) -> TestCa {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let key = rcgen::KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            TestCa {
                pem,
                issuer: rcgen::Issuer::new(params, key),
            }
        }

        /// A server certificate for localhost and 127.0.0.1 signed by this CA, and its key.
        fn server_certificate(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let mut params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "localhost");
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (vec![cert.der().clone()], key)
        }
    }

    impl Receiver {
        fn answering(script: &[(u16, u64)]) -> Receiver {
            let r = Receiver::default();
            r.script.lock().unwrap().extend(
                script
                    .iter()
                    .map(|&(status, ms)| (status, Duration::from_millis(ms))),
            );
            r
        }

        fn got(&self) -> Vec<Got> {
            self.got.lock().unwrap().clone()
        }

        fn seqs(&self) -> Vec<u64> {
            self.got().iter().map(|g| g.seq.parse().unwrap()).collect()
        }

        /// Serves on `listener`; the URL to post to.
        fn serve(&self, listener: tokio::net::TcpListener) -> String {
            self.serve_on(listener, "http")
        }

        /// Serves HTTP over TLS on a loopback port with the certificate chain `chain` and
        /// its key; the URL to post to.
        async fn start_tls(
            &self,
            chain: Vec<CertificateDer<'static>>,
            key: PrivateKeyDer<'static>,
        ) -> String {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            let listener = TlsListener {
                tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                failed: self.handshakes_failed.clone(),
            };
            self.serve_on(listener, "https")
        }

        fn handshakes_failed(&self) -> u64 {
            self.handshakes_failed.load(Ordering::Relaxed)
        }

        fn serve_on<L>(&self, listener: L, scheme: &str) -> String
        where
            L: axum::serve::Listener<Addr = std::net::SocketAddr>,
        {
            async fn handle(
                State(r): State<Receiver>,
                headers: HeaderMap,
                body: String,
            ) -> StatusCode {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                r.got.lock().unwrap().push(Got {
                    seq: header("confer-event-seq"),
                    signature: header("confer-signature"),
                    content_type: header("content-type"),
                    body,
                    at: Instant::now(),
                });
                let next = r.script.lock().unwrap().pop_front();
                let (status, delay) = next.unwrap_or((200, Duration::ZERO));
                tokio::time::sleep(delay).await;
                StatusCode::from_u16(status).unwrap()
            }
            let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(handle))
                .with_state(self.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            url
        }

        async fn start(&self) -> String {
            self.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        }
    }

    fn hook(name: &str, url: &str) -> WebhookConfig {
        WebhookConfig {
            retry_initial_ms: 20,
            retry_max_ms: 80,
            ..WebhookConfig::new(name, url, SECRET)
        }
    }

    fn append(j: &Journal, source: &str, i: u64) {
        let mut body = Map::new();
        body.insert("i".into(), i.into());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        j.append(source, "step", Timestamp(now.as_millis() as u64), body);
    }

    async fn wait_until(what: &str, f: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn metric(w: &Webhooks, line_start: &str) -> u64 {
        let text = w.metrics_text();
        let line = text
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("{line_start} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Checks the header as a receiver would: its own HMAC over "<t>.<body>", compared in
    /// constant time, and a fresh t.
    fn verifies(secret: &str, header: &str, body: &str) -> bool {
        let Some((t, v1)) = header
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
        else {
            return false;
        };
        let Ok(t) = t.parse::<u64>() else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now.abs_diff(t) > 300 || v1.len() != 64 {
            return false;
        }
        let Ok(tag) = (0..32)
            .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            return false;
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        mac.verify_slice(&tag).is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_events_arrive_in_order_signed_with_the_secret() {
        let receiver = Receiver::default();
        let url = receiver.start().await;
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 1)
            .await
            .unwrap();
        for (i, source) in ["room", "call", "presence", "sip", "policy"]
            .iter()
            .enumerate()
        {
            append(&journal, source, i as u64 + 1);
        }
        wait_until("5 deliveries", || receiver.got().len() == 5).await;
        let got = receiver.got();
        assert_eq!(receiver.seqs(), vec![1, 2, 3, 4, 5]);
        for g in &got {
            assert_eq!(g.content_type, "application/json");
            let v: Value = serde_json::from_str(&g.body).unwrap();
            assert_eq!(v["seq"].to_string(), g.seq);
            assert_eq!(v["i"].to_string(), g.seq);
            assert_eq!(v["kind"], "step");
            assert!(verifies(SECRET, &g.signature, &g.body), "{}", g.signature);
            assert!(!verifies(
                "another-secret-of-16+bytes",
                &g.signature,
                &g.body
            ));
            assert!(!verifies(
                SECRET,
                &g.signature,
                &g.body.replace("step", "stop")
            ));
        }
        // The receiver records a request before the hook sees its answer.
        let ok = "confer_webhook_deliveries_total{hook=\"im\",result=\"ok\"}";
        wait_until("5 ok", || metric(&hooks, ok) == 5).await;
        wait_until("lag 0", || {
            metric(&hooks, "confer_webhook_lag_events{hook=\"im\"}") == 0
        })
        .await;
        assert_eq!(metric(&hooks, "confer_webhook_up{hook=\"im\"}"), 1);
        assert_eq!(receiver.got().len(), 5);
        hooks.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_a_receiver_failing_twice_gets_the_event_three_times_then_the_next_ones() {
        let receiver = Receiver::answering(&[(500, 0), (500, 0)]);
        let url = receiver.start().await;
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 2)
            .await
            .unwrap();
        for i in 1..=3 {
            append(&journal, "call", i);
        }
        wait_until("5 requests", || receiver.got().len() == 5).await;
        assert_eq!(receiver.seqs(), vec![1, 1, 1, 2, 3]);
        let got = receiver.got();
        // Retry delays: 20 ms then 40 ms nominal, each at least half of it.
        assert!(got[1].at - got[0].at >= Duration::from_millis(10));
        assert!(got[2].at - got[1].at >= Duration::from_millis(20));
        // Every attempt is signed afresh and verifies.
        assert!(got.iter().all(|g| verifies(SECRET, &g.signature, &g.body)));
        assert_eq!(got[0].body, got[2].body);
        let ok = "confer_webhook_deliveries_total{hook=\"im\",result=\"ok\"}";
        let error = "confer_webhook_deliveries_total{hook=\"im\",result=\"error\"}";
        wait_until("3 ok", || metric(&hooks, ok) == 3).await;
        assert_eq!(metric(&hooks, error), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(receiver.got().len(), 5, "nothing more is sent");
        hooks.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_a_restart_resumes_after_the_last_acknowledged_event() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            path: Some(dir.path().join("journal.db")),
            ..JournalConfig::default()
        };
        let receiver = Receiver::default();
        let url = receiver.start().await;
        let journal = Journal::open(&cfg).await.unwrap();
        append(&journal, "room", 0); // before the first start: never sent
        wait_until("head 1", || journal.head() == 1).await;
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 3)
            .await
            .unwrap();
        for i in 2..=4 {
            append(&journal, "room", i);
        }
        wait_until("3 deliveries", || receiver.got().len() == 3).await;
        wait_until("lag 0", || {
            metric(&hooks, "confer_webhook_lag_events{hook=\"im\"}") == 0
        })
        .await;
        hooks.stop().await;
        for i in 5..=6 {
            append(&journal, "room", i);
        }
        journal.close().await;

        let journal = Journal::open(&cfg).await.unwrap();
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 4)
            .await
            .unwrap();
        append(&journal, "room", 7);
        wait_until("6 deliveries", || receiver.got().len() == 6).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(receiver.seqs(), vec![2, 3, 4, 5, 6, 7]);
        hooks.stop().await;
        journal.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_a_source_filter_delivers_only_those_sources() {
        let receiver = Receiver::default();
        let url = receiver.start().await;
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let calls = WebhookConfig {
            sources: vec!["call".into(), "sip".into()],
            ..hook("calls", &url)
        };
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![calls], 5)
            .await
            .unwrap();
        for (i, source) in ["room", "call", "presence", "sip", "room", "call"]
            .iter()
            .enumerate()
        {
            append(&journal, source, i as u64 + 1);
        }
        wait_until("head 6", || journal.head() == 6).await;
        wait_until("lag 0", || {
            metric(&hooks, "confer_webhook_lag_events{hook=\"calls\"}") == 0
        })
        .await;
        assert_eq!(receiver.seqs(), vec![2, 4, 6]);
        let sources: Vec<String> = receiver
            .got()
            .iter()
            .map(|g| serde_json::from_str::<Value>(&g.body).unwrap()["source"].to_string())
            .collect();
        assert_eq!(sources, ["\"call\"", "\"sip\"", "\"call\""]);
        hooks.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_a_410_gone_stops_the_hook_until_the_next_start() {
        let receiver = Receiver::answering(&[(410, 0)]);
        let url = receiver.start().await;
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 6)
            .await
            .unwrap();
        append(&journal, "room", 1);
        append(&journal, "room", 2);
        wait_until("down", || {
            metric(&hooks, "confer_webhook_up{hook=\"im\"}") == 0
        })
        .await;
        assert_eq!(
            metric(
                &hooks,
                "confer_webhook_deliveries_total{hook=\"im\",result=\"gone\"}"
            ),
            1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(receiver.seqs(), vec![1]);
        assert_eq!(metric(&hooks, "confer_webhook_lag_events{hook=\"im\"}"), 2);
        hooks.stop().await;
        // The event was not acknowledged: the next start sends it again.
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 7)
            .await
            .unwrap();
        wait_until("3 requests", || receiver.got().len() == 3).await;
        assert_eq!(receiver.seqs(), vec![1, 1, 2]);
        hooks.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_an_unreachable_receiver_is_retried_until_it_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let url = format!("http://{addr}/hook");
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 8)
            .await
            .unwrap();
        append(&journal, "room", 1);
        let error = "confer_webhook_deliveries_total{hook=\"im\",result=\"error\"}";
        wait_until("2 errors", || metric(&hooks, error) >= 2).await;
        let receiver = Receiver::default();
        receiver.serve(tokio::net::TcpListener::bind(addr).await.unwrap());
        wait_until("delivered", || receiver.got().len() == 1).await;
        assert_eq!(receiver.seqs(), vec![1]);
        hooks.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_a_receiver_slower_than_the_timeout_is_retried() {
        let receiver = Receiver::answering(&[(200, 2000)]);
        let url = receiver.start().await;
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let slow = WebhookConfig {
            timeout_ms: 200,
            ..hook("im", &url)
        };
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![slow], 9)
            .await
            .unwrap();
        append(&journal, "room", 1);
        let ok = "confer_webhook_deliveries_total{hook=\"im\",result=\"ok\"}";
        wait_until("delivered", || metric(&hooks, ok) == 1).await;
        assert_eq!(receiver.seqs(), vec![1, 1]);
        assert_eq!(
            metric(
                &hooks,
                "confer_webhook_deliveries_total{hook=\"im\",result=\"error\"}"
            ),
            1
        );
        hooks.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_stop_returns_promptly_while_a_hook_waits_to_retry() {
        let receiver = Receiver::answering(&[(503, 0)]);
        let url = receiver.start().await;
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let patient = WebhookConfig {
            retry_initial_ms: 600_000,
            retry_max_ms: 600_000,
            ..hook("im", &url)
        };
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![patient], 10)
            .await
            .unwrap();
        append(&journal, "room", 1);
        wait_until("a failure", || receiver.got().len() == 1).await;
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), hooks.stop())
            .await
            .expect("stop within 2 s");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            journal.load_state("webhook:im").await.unwrap().as_deref(),
            Some("0")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_events_purged_before_delivery_are_counted_and_the_hook_goes_on() {
        let receiver = Receiver::default();
        let url = receiver.start().await;
        let cfg = JournalConfig {
            max_events: 10,
            ..JournalConfig::default()
        };
        let journal = Journal::open(&cfg).await.unwrap();
        journal.save_state("webhook:im", "0").await.unwrap();
        for i in 1..=30 {
            append(&journal, "room", i);
        }
        wait_until("head 30", || journal.head() == 30).await;
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![hook("im", &url)], 11)
            .await
            .unwrap();
        wait_until("10 deliveries", || receiver.got().len() == 10).await;
        assert_eq!(receiver.seqs(), (21..=30).collect::<Vec<_>>());
        assert_eq!(
            metric(&hooks, "confer_webhook_skipped_events_total{hook=\"im\"}"),
            20
        );
        hooks.stop().await;
    }

    #[tokio::test]
    async fn webhooks_invalid_configurations_are_refused() {
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let ok = hook("im", "http://127.0.0.1:9/hook");
        let cases = [
            WebhookConfig {
                secret: "short".into(),
                ..ok.clone()
            },
            WebhookConfig {
                name: String::new(),
                ..ok.clone()
            },
            WebhookConfig {
                name: "a b".into(),
                ..ok.clone()
            },
            WebhookConfig {
                name: "x".repeat(65),
                ..ok.clone()
            },
            WebhookConfig {
                url: "ftp://example.com/x".into(),
                ..ok.clone()
            },
            WebhookConfig {
                url: "example.com/x".into(),
                ..ok.clone()
            },
            WebhookConfig {
                url: "http://exa mple.com/".into(),
                ..ok.clone()
            },
            WebhookConfig {
                url: "http:///x".into(),
                ..ok.clone()
            },
            WebhookConfig {
                sources: vec![String::new()],
                ..ok.clone()
            },
            WebhookConfig {
                retry_initial_ms: 0,
                ..ok.clone()
            },
            WebhookConfig {
                retry_max_ms: 10,
                ..ok.clone()
            },
            WebhookConfig {
                timeout_ms: 0,
                ..ok.clone()
            },
        ];
        for case in cases {
            let result = Webhooks::start(journal.clone(), vec![case.clone()]).await;
            assert!(
                matches!(result, Err(WebhookError::Invalid { .. })),
                "{case:?} was accepted"
            );
        }
        let twice = Webhooks::start(journal.clone(), vec![ok.clone(), ok.clone()]).await;
        assert!(matches!(twice, Err(WebhookError::DuplicateName(n)) if n == "im"));
        journal
            .save_state("webhook:im", "not a number")
            .await
            .unwrap();
        let bad = Webhooks::start(journal.clone(), vec![ok.clone()]).await;
        assert!(matches!(bad, Err(WebhookError::BadCursor { .. })));
        journal.save_state("webhook:im", "0").await.unwrap();
        Webhooks::start(journal, vec![ok])
            .await
            .unwrap()
            .stop()
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_an_https_receiver_with_a_private_ca_gets_signed_events_in_order() {
        let ca = TestCa::new("confer test CA");
        let unrelated = TestCa::new("an unrelated CA");
        let (chain, key) = ca.server_certificate();
        let receiver = Receiver::default();
        let url = receiver.start_tls(chain, key).await;
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        let dir = tempfile::tempdir().unwrap();
        // A bundle: the right CA need not be the first one.
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, format!("{}{}", unrelated.pem, ca.pem)).unwrap();
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let private = WebhookConfig {
            ca_file: Some(ca_file),
            ..hook("im", &url)
        };
        let hooks = Webhooks::start_with_seed(journal.clone(), vec![private], 12)
            .await
            .unwrap();
        for i in 1..=5 {
            append(&journal, "room", i);
        }
        wait_until("5 deliveries", || receiver.got().len() == 5).await;
        assert_eq!(receiver.seqs(), vec![1, 2, 3, 4, 5]);
        for g in receiver.got() {
            assert_eq!(g.content_type, "application/json");
            assert!(verifies(SECRET, &g.signature, &g.body), "{}", g.signature);
            let v: Value = serde_json::from_str(&g.body).unwrap();
            assert_eq!(v["seq"].to_string(), g.seq);
        }
        let ok = "confer_webhook_deliveries_total{hook=\"im\",result=\"ok\"}";
        wait_until("5 ok", || metric(&hooks, ok) == 5).await;
        assert_eq!(
            metric(
                &hooks,
                "confer_webhook_deliveries_total{hook=\"im\",result=\"error\"}"
            ),
            0
        );
        assert_eq!(receiver.handshakes_failed(), 0);
        hooks.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_an_https_receiver_whose_certificate_the_ca_did_not_sign_is_retried_and_gets_nothing()
     {
        let ca = TestCa::new("confer test CA");
        let other = TestCa::new("the receiver's CA");
        let (chain, key) = other.server_certificate();
        let receiver = Receiver::default();
        let url = receiver.start_tls(chain, key).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        // "private" trusts only `ca`; "public" trusts only the Mozilla roots.
        let private = WebhookConfig {
            ca_file: Some(ca_file),
            ..hook("private", &url)
        };
        let public = hook("public", &url);
        let hooks =
            Webhooks::start_with_seed(journal.clone(), vec![private.clone(), public.clone()], 13)
                .await
                .unwrap();
        append(&journal, "room", 1);
        for name in ["private", "public"] {
            let error =
                format!("confer_webhook_deliveries_total{{hook=\"{name}\",result=\"error\"}}");
            wait_until("3 failures", || metric(&hooks, &error) >= 3).await;
        }
        // Every attempt reached the server and was dropped during the TLS handshake (the
        // client hangs up without an alert; the server may see it after the metric moved).
        wait_until("6 failed handshakes", || receiver.handshakes_failed() >= 6).await;
        // Why, as the hook's own request sees it: the CA did not sign the certificate.
        for cfg in [private, public] {
            let request = Request {
                agent: cfg.agent(cfg.tls_config().await.unwrap()),
                hook: Arc::new(cfg),
                seq: 1,
                signature: String::new(),
                body: "{}".into(),
            };
            let e = tokio::task::spawn_blocking(move || request.send())
                .await
                .unwrap()
                .unwrap_err();
            let rustls_error = match &e {
                ureq::Error::Rustls(e) => Some(e),
                ureq::Error::Io(e) => e.get_ref().and_then(|e| e.downcast_ref()),
                _ => None,
            };
            assert_eq!(
                rustls_error,
                Some(&rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                )),
                "{e:?}"
            );
        }
        assert!(receiver.got().is_empty());
        for name in ["private", "public"] {
            let ok = format!("confer_webhook_deliveries_total{{hook=\"{name}\",result=\"ok\"}}");
            assert_eq!(metric(&hooks, &ok), 0);
            assert_eq!(
                metric(
                    &hooks,
                    &format!("confer_webhook_lag_events{{hook=\"{name}\"}}")
                ),
                1
            );
            assert_eq!(
                metric(&hooks, &format!("confer_webhook_up{{hook=\"{name}\"}}")),
                1
            );
        }
        hooks.stop().await;
        assert_eq!(
            journal
                .load_state("webhook:private")
                .await
                .unwrap()
                .as_deref(),
            Some("0"),
            "nothing was acknowledged"
        );
    }

    #[tokio::test]
    async fn webhooks_an_unusable_ca_file_is_refused_naming_the_hook() {
        let journal = Journal::open(&JournalConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("confer test CA");
        let file = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let good = file("good.pem", &ca.pem);
        let key_only = file(
            "key.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let empty = file("empty.pem", "");
        let not_pem = file(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n",
        );
        let not_x509 = file(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let with = |url: &str, path: &Path| WebhookConfig {
            ca_file: Some(path.to_owned()),
            ..hook("corp", url)
        };
        let https = "https://127.0.0.1:9/hook";
        let missing = dir.path().join("missing.pem");
        let result = Webhooks::start(journal.clone(), vec![with(https, &missing)]).await;
        let Err(e @ WebhookError::CaFileUnreadable { .. }) = result else {
            panic!("a missing ca_file was accepted");
        };
        assert!(
            e.to_string()
                .starts_with("webhook \"corp\": cannot read ca_file "),
            "{e}"
        );
        assert!(e.to_string().contains("missing.pem"), "{e}");
        for (path, reason) in [
            (&key_only, "holds no certificate"),
            (&empty, "holds no certificate"),
            (&not_pem, "is not valid PEM"),
            (&not_x509, "holds a certificate that is not valid X.509"),
        ] {
            let result = Webhooks::start(journal.clone(), vec![with(https, path)]).await;
            let Err(e @ WebhookError::CaFileInvalid { .. }) = result else {
                panic!("{} was accepted", path.display());
            };
            assert_eq!(
                e.to_string(),
                format!("webhook \"corp\": ca_file {} {reason}", path.display())
            );
        }
        let plain = Webhooks::start(
            journal.clone(),
            vec![with("http://127.0.0.1:9/hook", &good)],
        )
        .await;
        let Err(e @ WebhookError::Invalid { .. }) = plain else {
            panic!("a ca_file with an http:// url was accepted");
        };
        assert_eq!(
            e.to_string(),
            "webhook \"corp\": ca_file is set but the url is not https://"
        );
        // Refused before the hook took a cursor.
        assert_eq!(journal.load_state("webhook:corp").await.unwrap(), None);
        Webhooks::start(journal, vec![with(https, &good)])
            .await
            .unwrap()
            .stop()
            .await;
    }

    #[test]
    fn webhooks_the_config_parses_with_defaults_and_debug_hides_the_secret() {
        let cfg: WebhookConfig = toml::from_str(&format!(
            "name = \"im\"\nurl = \"http://im.example/hook\"\nsecret = \"{SECRET}\"\n"
        ))
        .unwrap();
        assert_eq!(
            cfg,
            WebhookConfig::new("im", "http://im.example/hook", SECRET)
        );
        assert_eq!(
            (cfg.retry_initial_ms, cfg.retry_max_ms, cfg.timeout_ms),
            (1000, 300_000, 5000)
        );
        assert_eq!(cfg.ca_file, None);
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains(SECRET) && debug.contains("<redacted>"),
            "{debug}"
        );
        let corp: WebhookConfig = toml::from_str(&format!(
            "name = \"corp\"\nurl = \"https://im.corp/hook\"\nsecret = \"{SECRET}\"\nca_file = \"/etc/confer/corp-ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(corp.ca_file, Some(PathBuf::from("/etc/confer/corp-ca.pem")));
        let debug = format!("{corp:?}");
        assert!(
            !debug.contains(SECRET) && debug.contains("corp-ca.pem"),
            "{debug}"
        );
        assert!(
            toml::from_str::<WebhookConfig>(
                "name = \"a\"\nurl = \"http://x/\"\nsecret = \"s\"\nextra = 1"
            )
            .is_err()
        );
    }

    #[test]
    fn webhooks_retry_delays_double_to_the_maximum_with_equal_jitter_and_repeat_with_the_seed() {
        let cfg = WebhookConfig::new("im", "http://x/", SECRET);
        let delays = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..14u32)
                .map(|a| cfg.retry_delay(a, &mut rng))
                .collect::<Vec<_>>()
        };
        let first = delays(42);
        for (attempt, d) in first.iter().enumerate() {
            let nominal = (1000u64 << attempt).min(300_000);
            let ms = d.as_millis() as u64;
            assert!(
                ms >= nominal / 2 && ms <= nominal,
                "attempt {attempt}: {ms} ms"
            );
        }
        assert_eq!(first, delays(42));
        assert_ne!(first, delays(43));
        let mut rng = StdRng::seed_from_u64(1);
        assert!(cfg.retry_delay(u32::MAX, &mut rng) <= Duration::from_secs(300));
    }

    #[test]
    fn webhooks_the_signature_is_hmac_sha256_of_t_dot_body_in_lowercase_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = r#"{"seq":1}"#;
        assert_eq!(
            signature(SECRET, 1_700_000_000, body),
            format!(
                "t=1700000000,v1={}",
                hmac_hex(SECRET.as_bytes(), b"1700000000.{\"seq\":1}")
            )
        );
    }
}

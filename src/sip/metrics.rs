//! SIP counters and gauges, rendered as Prometheus text after the media host's on
//! `/metrics`.
//!
//! Why a module: the transports, the core task and the media driver run on different
//! tasks and share only these atomics (relaxed: each value is a count, never used to
//! synchronise anything). Names start with `confer_sip_`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a received message was not processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not SIP, and no way to answer it (no Via to route an answer along).
    Unparsable,
    /// A response the UAC rules refuse (RFC 4475 `scalarlg`, `bigcode`, `bcast`).
    MalformedResponse,
    /// A request that fails the checks but must not be answered (an ACK).
    Unanswerable,
    /// From a banned source.
    Banned,
    /// The core task's queue was full.
    CoreBusy,
    /// Larger than `sip_max_message_bytes` and no headers to answer 513 with.
    TooLarge,
    /// A response the transaction layer matched to nothing, or a stray 2xx.
    Stray,
}

impl Dropped {
    const ALL: [Dropped; 7] = [
        Dropped::Unparsable,
        Dropped::MalformedResponse,
        Dropped::Unanswerable,
        Dropped::Banned,
        Dropped::CoreBusy,
        Dropped::TooLarge,
        Dropped::Stray,
    ];

    fn label(self) -> &'static str {
        match self {
            Dropped::Unparsable => "unparsable",
            Dropped::MalformedResponse => "malformed_response",
            Dropped::Unanswerable => "unanswerable",
            Dropped::Banned => "banned",
            Dropped::CoreBusy => "core_busy",
            Dropped::TooLarge => "too_large",
            Dropped::Stray => "stray",
        }
    }
}

/// How a call ended (or why it never started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// The caller hung up (BYE).
    Bye,
    /// The caller cancelled before the answer.
    Cancelled,
    /// Refused before the answer (unknown number, 488, busy, no media).
    Rejected,
    /// Our 2xx was never acknowledged.
    AckTimeout,
    /// The session timer expired, or a refresh failed.
    SessionExpired,
    /// The media leg failed or the answer in the ACK was unusable.
    MediaFailed,
    /// confer stopped.
    Shutdown,
    /// The PIN prompts hung up (wrong PINs, no input, a locked or full conference).
    Prompts,
    /// A call we dialled was not answered (busy, declined, no answer, unreachable).
    Unanswered,
}

impl CallEnd {
    const ALL: [CallEnd; 9] = [
        CallEnd::Bye,
        CallEnd::Cancelled,
        CallEnd::Rejected,
        CallEnd::AckTimeout,
        CallEnd::SessionExpired,
        CallEnd::MediaFailed,
        CallEnd::Shutdown,
        CallEnd::Prompts,
        CallEnd::Unanswered,
    ];

    fn label(self) -> &'static str {
        match self {
            CallEnd::Bye => "bye",
            CallEnd::Cancelled => "cancelled",
            CallEnd::Rejected => "rejected",
            CallEnd::AckTimeout => "ack_timeout",
            CallEnd::SessionExpired => "session_expired",
            CallEnd::MediaFailed => "media_failed",
            CallEnd::Shutdown => "shutdown",
            CallEnd::Prompts => "prompts",
            CallEnd::Unanswered => "unanswered",
        }
    }
}

/// How a REGISTER was answered (`confer_sip_register_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterResult {
    /// 200: bindings added, refreshed, removed or listed.
    Ok,
    /// 401: challenged (no credentials yet, a stale or unknown nonce).
    Challenged,
    /// 403: wrong username or password.
    AuthFailed,
    /// 403: the source is locked out after failed attempts.
    LockedOut,
    /// 403: the AOR is not the authenticated user's.
    Forbidden,
    /// 404: not our domain.
    NotFound,
    /// 423: an expiry below the minimum.
    TooBrief,
    /// 400 or 500: malformed, or out of order.
    Invalid,
}

impl RegisterResult {
    const ALL: [RegisterResult; 8] = [
        RegisterResult::Ok,
        RegisterResult::Challenged,
        RegisterResult::AuthFailed,
        RegisterResult::LockedOut,
        RegisterResult::Forbidden,
        RegisterResult::NotFound,
        RegisterResult::TooBrief,
        RegisterResult::Invalid,
    ];

    fn label(self) -> &'static str {
        match self {
            RegisterResult::Ok => "ok",
            RegisterResult::Challenged => "challenged",
            RegisterResult::AuthFailed => "auth_failed",
            RegisterResult::LockedOut => "locked_out",
            RegisterResult::Forbidden => "forbidden",
            RegisterResult::NotFound => "not_found",
            RegisterResult::TooBrief => "too_brief",
            RegisterResult::Invalid => "invalid",
        }
    }
}

/// Transports, for per-transport counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS.
    Tls,
}

impl Wire {
    const ALL: [Wire; 3] = [Wire::Udp, Wire::Tcp, Wire::Tls];

    fn label(self) -> &'static str {
        match self {
            Wire::Udp => "udp",
            Wire::Tcp => "tcp",
            Wire::Tls => "tls",
        }
    }
}

/// The SIP side's counters (see the module docs).
#[derive(Debug, Default)]
pub struct SipMetrics {
    received: [AtomicU64; 3],
    sent: [AtomicU64; 3],
    /// Messages that could not be sent (no connection, socket error, full queue).
    pub send_errors: AtomicU64,
    dropped: [AtomicU64; Dropped::ALL.len()],
    /// Requests answered with an error by the listener before any transaction (400, 501,
    /// 505, 513, ... as `inspect` decides), and 503s for an overloaded core.
    pub rejected: AtomicU64,
    /// 513 answers.
    pub too_large: AtomicU64,
    /// Bans started.
    pub bans: AtomicU64,
    /// Sources banned now.
    pub banned_sources: AtomicU64,
    /// Open TCP and TLS connections.
    pub connections: AtomicU64,
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections refused (limits, bans, TLS handshake failures).
    pub connections_refused: AtomicU64,
    /// Connections closed for a framing error.
    pub closed_framing: AtomicU64,
    /// Connections closed mid-message (slow loris) or idle.
    pub closed_timeout: AtomicU64,
    /// RFC 5626 keep-alive pings answered.
    pub keepalives: AtomicU64,
    /// Calls now (from INVITE to the end).
    pub calls: AtomicU64,
    /// Calls answered 200 (by us, or by whom we dialled).
    pub calls_answered: AtomicU64,
    /// Calls we dialled.
    pub calls_dialled: AtomicU64,
    /// Calls refused 403 for not coming from a trunk (or failing its credentials).
    pub auth_refused: AtomicU64,
    /// Digest challenges (401) sent to callers.
    pub auth_challenges: AtomicU64,
    call_ends: [AtomicU64; CallEnd::ALL.len()],
    /// Live transactions.
    pub transactions: AtomicU64,
    /// Live dialogs.
    pub dialogs: AtomicU64,
    /// Errors of SIP tasks (logged as well): a failed socket, a media command that failed.
    pub task_errors: AtomicU64,
    /// Registrar bindings now (registered phones' contacts).
    pub registrations: AtomicU64,
    register_results: [AtomicU64; RegisterResult::ALL.len()],
    /// The trunks' registrations, as the core last saw them.
    trunks: std::sync::Mutex<Vec<TrunkStatus>>,
}

/// A trunk registration as the API and metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrunkStatus {
    /// The trunk.
    pub trunk: String,
    /// `registering`, `registered`, `backoff` (a failure; retrying), `failed` (retrying
    /// cannot help: wrong credentials, a permanent refusal), `unregistered`.
    pub state: &'static str,
    /// Why the last attempt failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Seconds until the binding lapses (registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    /// The status of the last final response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Bindings granted.
    pub successes: u64,
    /// Failed attempts.
    pub failures: u64,
}

fn index<T: PartialEq>(all: &[T], v: &T) -> usize {
    // Every variant is in its `ALL` list.
    all.iter().position(|x| x == v).unwrap_or(0)
}

impl SipMetrics {
    /// Counts a received message.
    pub fn received(&self, wire: Wire) {
        self.received[index(&Wire::ALL, &wire)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a sent message.
    pub fn sent(&self, wire: Wire) {
        self.sent[index(&Wire::ALL, &wire)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dropped message.
    pub fn dropped(&self, why: Dropped) {
        self.dropped[index(&Dropped::ALL, &why)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call's end.
    pub fn call_ended(&self, how: CallEnd) {
        self.call_ends[index(&CallEnd::ALL, &how)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a REGISTER's answer.
    pub fn register_result(&self, result: RegisterResult) {
        self.register_results[index(&RegisterResult::ALL, &result)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the trunks' registration states.
    pub fn set_trunks(&self, states: Vec<TrunkStatus>) {
        *self.trunks.lock().unwrap_or_else(|e| e.into_inner()) = states;
    }

    /// The trunks' registration states.
    pub fn trunks(&self) -> Vec<TrunkStatus> {
        self.trunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut family = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let by_wire = |a: &[AtomicU64; 3]| -> Vec<(String, u64)> {
            Wire::ALL
                .iter()
                .zip(a)
                .map(|(w, v)| (format!("{{transport=\"{}\"}}", w.label()), get(v)))
                .collect()
        };
        let plain = |v: &AtomicU64| vec![(String::new(), get(v))];
        family(
            "confer_sip_messages_received_total",
            "counter",
            "SIP messages received (before any check).",
            &by_wire(&self.received),
        );
        family(
            "confer_sip_messages_sent_total",
            "counter",
            "SIP messages sent.",
            &by_wire(&self.sent),
        );
        family(
            "confer_sip_send_errors_total",
            "counter",
            "SIP messages that could not be sent.",
            &plain(&self.send_errors),
        );
        let dropped: Vec<_> = Dropped::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(d, v)| (format!("{{reason=\"{}\"}}", d.label()), get(v)))
            .collect();
        family(
            "confer_sip_dropped_total",
            "counter",
            "SIP messages dropped without an answer.",
            &dropped,
        );
        family(
            "confer_sip_rejected_total",
            "counter",
            "SIP requests answered with an error by the listener before any transaction.",
            &plain(&self.rejected),
        );
        family(
            "confer_sip_too_large_total",
            "counter",
            "SIP messages above sip_max_message_bytes answered 513.",
            &plain(&self.too_large),
        );
        family(
            "confer_sip_bans_total",
            "counter",
            "Source bans started by the rate limit.",
            &plain(&self.bans),
        );
        family(
            "confer_sip_banned_sources",
            "gauge",
            "Sources banned now.",
            &plain(&self.banned_sources),
        );
        family(
            "confer_sip_connections",
            "gauge",
            "Open SIP TCP and TLS connections.",
            &plain(&self.connections),
        );
        family(
            "confer_sip_connections_accepted_total",
            "counter",
            "SIP connections accepted.",
            &plain(&self.connections_accepted),
        );
        family(
            "confer_sip_connections_refused_total",
            "counter",
            "SIP connections refused (limits, bans, TLS handshakes).",
            &plain(&self.connections_refused),
        );
        family(
            "confer_sip_connections_closed_total",
            "counter",
            "SIP connections we closed, by reason.",
            &[
                ("{reason=\"framing\"}".into(), get(&self.closed_framing)),
                ("{reason=\"timeout\"}".into(), get(&self.closed_timeout)),
            ],
        );
        family(
            "confer_sip_keepalives_total",
            "counter",
            "RFC 5626 CRLFCRLF keep-alives answered.",
            &plain(&self.keepalives),
        );
        family(
            "confer_sip_calls",
            "gauge",
            "SIP calls now.",
            &plain(&self.calls),
        );
        family(
            "confer_sip_calls_answered_total",
            "counter",
            "SIP calls answered 200 (by confer, or by whom it dialled).",
            &plain(&self.calls_answered),
        );
        family(
            "confer_sip_unauthenticated_refused_total",
            "counter",
            "Calls refused 403: not from a trunk, or wrong trunk credentials.",
            &plain(&self.auth_refused),
        );
        family(
            "confer_sip_auth_challenges_total",
            "counter",
            "Digest challenges (401) sent to callers.",
            &plain(&self.auth_challenges),
        );
        family(
            "confer_sip_calls_dialled_total",
            "counter",
            "SIP calls confer placed (dial-out).",
            &plain(&self.calls_dialled),
        );
        let ends: Vec<_> = CallEnd::ALL
            .iter()
            .zip(&self.call_ends)
            .map(|(c, v)| (format!("{{reason=\"{}\"}}", c.label()), get(v)))
            .collect();
        family(
            "confer_sip_calls_ended_total",
            "counter",
            "SIP calls ended, by reason.",
            &ends,
        );
        family(
            "confer_sip_transactions",
            "gauge",
            "Live SIP transactions.",
            &plain(&self.transactions),
        );
        family(
            "confer_sip_dialogs",
            "gauge",
            "Live SIP dialogs.",
            &plain(&self.dialogs),
        );
        family(
            "confer_sip_task_errors_total",
            "counter",
            "Errors of SIP tasks (see the log).",
            &plain(&self.task_errors),
        );
        family(
            "confer_sip_registrations",
            "gauge",
            "Bindings of phones registered with confer's registrar.",
            &plain(&self.registrations),
        );
        let results: Vec<_> = RegisterResult::ALL
            .iter()
            .zip(&self.register_results)
            .map(|(r, v)| (format!("{{result=\"{}\"}}", r.label()), get(v)))
            .collect();
        family(
            "confer_sip_register_total",
            "counter",
            "REGISTER requests answered by the registrar, by result.",
            &results,
        );
        let trunks = self.trunks();
        let label =
            |t: &TrunkStatus| format!("{{trunk=\"{}\"}}", t.trunk.replace(['"', '\\', '\n'], "_"));
        family(
            "confer_sip_trunk_registered",
            "gauge",
            "1 while the trunk's registration is valid.",
            &trunks
                .iter()
                .map(|t| (label(t), u64::from(t.state == "registered")))
                .collect::<Vec<_>>(),
        );
        family(
            "confer_sip_trunk_registration_failures_total",
            "counter",
            "Failed registration attempts per trunk.",
            &trunks
                .iter()
                .map(|t| (label(t), t.failures))
                .collect::<Vec<_>>(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_labels() {
        let m = SipMetrics::default();
        m.received(Wire::Tcp);
        m.dropped(Dropped::Banned);
        m.call_ended(CallEnd::Bye);
        m.register_result(RegisterResult::TooBrief);
        let text = m.render();
        assert!(text.contains("confer_sip_register_total{result=\"too_brief\"} 1"));
        assert!(text.contains("# TYPE confer_sip_registrations gauge\nconfer_sip_registrations 0"));
        assert!(text.contains("confer_sip_messages_received_total{transport=\"tcp\"} 1"));
        assert!(text.contains("confer_sip_dropped_total{reason=\"banned\"} 1"));
        assert!(text.contains("confer_sip_calls_ended_total{reason=\"bye\"} 1"));
        assert!(text.contains("# TYPE confer_sip_calls gauge\nconfer_sip_calls 0"));
    }
}

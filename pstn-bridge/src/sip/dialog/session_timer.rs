//! Session timers (RFC 4028): the Session-Expires and Min-SE headers, the negotiation on
//! both sides, and the two deadlines of a running session: when the refresher sends its
//! refresh (half the interval) and when the other side gives up and sends BYE (the
//! interval minus min(32 s, interval/3)).
//!
//! # Use
//!
//! - UAC: [`SessionTimerConfig::offer`] → [`SessionOffer::apply`] on the INVITE (or
//!   UPDATE). On a 422, [`SessionOffer::after_422`] gives the offer to retry with (new
//!   CSeq). On the 2xx, [`SessionOffer::accept`] gives the running [`SessionTimer`], or
//!   `None` when the answer has no Session-Expires (the session then does not expire).
//! - UAS: [`negotiate`] the request: `Err(Negotiation::TooSmall)` is answered with
//!   [`IntervalTooSmall::response`] (422 with Min-SE); `Ok(Some(answer))` is written into
//!   the 2xx with [`SessionAnswer::apply`] and started with [`SessionAnswer::start`].
//! - Running: [`SessionTimer::next_timeout`] / [`SessionTimer::handle_timeout`] say when
//!   to send the refresh ([`SessionEvent::Refresh`], built from
//!   [`SessionTimer::refresh_offer`]) and when to send BYE ([`SessionEvent::Expired`]).
//!   A successful refresh replaces the timer with the one it negotiated.
//!
//! Session-Expires and Min-SE are parsed here for now; the message layer's typed
//! accessors are the better home for them.

use std::fmt;
use std::time::{Duration, Instant};

use super::super::check::{ResponseBasis, build_response};
use super::super::header::{HeaderError, HeaderName, Headers};
use super::super::message::{Request, Response, StatusCode};
use super::super::value::{Token, ValueError};

/// RFC 4028's recommended session interval, in seconds.
pub const DEFAULT_SESSION_INTERVAL: u32 = 1800;
/// The smallest Min-SE RFC 4028 allows, in seconds.
pub const MIN_SESSION_INTERVAL: u32 = 90;

/// Who refreshes, as written in `refresher=`: the UAC or the UAS of the transaction that
/// negotiated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refresher {
    /// `refresher=uac`.
    Uac,
    /// `refresher=uas`.
    Uas,
}

impl Refresher {
    fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// Generic parameters as (name, value), borrowed.
type RawParams<'a> = Vec<(&'a str, Option<&'a str>)>;

/// Splits `delta-seconds *(SEMI param)` into the seconds and the parameters, checking
/// each name (and value) is a token.
fn parse_delta_params(s: &str) -> Result<(u32, RawParams<'_>), ValueError> {
    let mut parts = s.split(';');
    let first = parts.next().unwrap_or("").trim_matches([' ', '\t']);
    if first.is_empty() {
        return Err(ValueError::Empty);
    }
    if let Some(i) = first.bytes().position(|b| !b.is_ascii_digit()) {
        return Err(ValueError::Unexpected(i));
    }
    // Digits only; an overflow of u32 is out of range, never wrapped.
    let seconds = first.parse::<u32>().map_err(|_| ValueError::OutOfRange)?;
    let mut params = Vec::new();
    let mut offset = first.len();
    for p in parts {
        offset += 1;
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (
                n.trim_matches([' ', '\t']),
                Some(v.trim_matches([' ', '\t'])),
            ),
            None => (p.trim_matches([' ', '\t']), None),
        };
        let token_ok = |t: &str| Token::new(t).is_ok();
        if !token_ok(name) || value.is_some_and(|v| !token_ok(v)) {
            return Err(ValueError::Unexpected(offset));
        }
        params.push((name, value));
        offset += p.len();
    }
    Ok((seconds, params))
}

/// `Session-Expires: delta-seconds [;refresher=uac|uas]` (compact form `x`). Other
/// parameters are accepted and not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionExpires {
    /// The session interval in seconds.
    pub interval: u32,
    /// Who refreshes, when said.
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// Parses a header value.
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let (interval, params) = parse_delta_params(s)?;
        let mut refresher = None;
        for (name, value) in params {
            if name.eq_ignore_ascii_case("refresher") {
                refresher = match value.map(str::to_ascii_lowercase).as_deref() {
                    Some("uac") => Some(Refresher::Uac),
                    Some("uas") => Some(Refresher::Uas),
                    _ => return Err(ValueError::Unexpected(0)),
                };
            }
        }
        Ok(Self {
            interval,
            refresher,
        })
    }

    /// The Session-Expires of a message: `Ok(None)` when absent, an error when repeated
    /// or malformed.
    pub fn from_headers(headers: &Headers) -> Result<Option<Self>, HeaderError> {
        let name = HeaderName::SessionExpires;
        let Some(v) = headers.single(name)? else {
            return Ok(None);
        };
        Self::parse(v)
            .map(Some)
            .map_err(|error| HeaderError::Malformed { name, error })
    }
}

impl fmt::Display for SessionExpires {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.interval)?;
        if let Some(r) = self.refresher {
            write!(f, ";refresher={}", r.as_str())?;
        }
        Ok(())
    }
}

/// `Min-SE: delta-seconds`, the smallest session interval a hop accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MinSe(pub u32);

impl MinSe {
    /// Parses a header value (generic parameters are accepted and not kept).
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        parse_delta_params(s).map(|(n, _)| MinSe(n))
    }

    /// The Min-SE of a message: `Ok(None)` when absent.
    pub fn from_headers(headers: &Headers) -> Result<Option<Self>, HeaderError> {
        let name = HeaderName::MinSe;
        let Some(v) = headers.single(name)? else {
            return Ok(None);
        };
        Self::parse(v)
            .map(Some)
            .map_err(|error| HeaderError::Malformed { name, error })
    }
}

impl fmt::Display for MinSe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn supports_timer(headers: &Headers) -> Result<bool, HeaderError> {
    Ok(headers
        .supported()?
        .iter()
        .any(|t| t.eq_ignore_ascii_case("timer")))
}

/// Our session-timer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimerConfig {
    /// The interval we ask for (UAC) or grant at most (UAS), seconds. Default 1800.
    pub interval: u32,
    /// The smallest interval we accept, seconds; raised to 90 if lower. Default 90.
    pub min_se: u32,
    /// As UAS, who refreshes when the request leaves it to us and the UAC supports the
    /// extension. Default [`Refresher::Uac`] (the peer refreshes, we watch).
    pub uas_prefers: Refresher,
    /// As UAS, run a session timer even when the request carries no Session-Expires
    /// (RFC 4028 §9 allows it). Default true.
    pub insert_when_absent: bool,
}

impl Default for SessionTimerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_SESSION_INTERVAL,
            min_se: MIN_SESSION_INTERVAL,
            uas_prefers: Refresher::Uac,
            insert_when_absent: true,
        }
    }
}

impl SessionTimerConfig {
    fn min_se(&self) -> u32 {
        self.min_se.max(MIN_SESSION_INTERVAL)
    }

    /// The offer of an initial INVITE: our interval (at least our Min-SE), refresher left
    /// to the UAS.
    pub fn offer(&self) -> SessionOffer {
        let min_se = self.min_se();
        SessionOffer {
            expires: SessionExpires {
                interval: self.interval.max(min_se),
                refresher: None,
            },
            min_se,
        }
    }
}

/// What a UAC asks for in an INVITE or UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOffer {
    /// The Session-Expires to send.
    pub expires: SessionExpires,
    /// The Min-SE to send (omitted when it is 90).
    pub min_se: u32,
}

/// What went wrong with a session-timer exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionTimerError {
    /// Session-Expires or Min-SE is malformed or repeated (answer 400 to a request).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A 422 without a usable Min-SE, or one asking for no more than we offered: retrying
    /// would loop.
    #[error("422 without a Min-SE above the offered interval")]
    Bad422,
    /// A 2xx whose Session-Expires is below the Min-SE we sent.
    #[error("answered session interval {interval} s is below our Min-SE {min_se} s")]
    AnswerBelowMinSe {
        /// The interval in the answer.
        interval: u32,
        /// Our Min-SE.
        min_se: u32,
    },
}

impl SessionOffer {
    /// Writes `Supported: timer` (unless already there), Session-Expires and, when not
    /// 90, Min-SE into a request.
    pub fn apply(&self, headers: &mut Headers) {
        if !supports_timer(headers).unwrap_or(false) {
            // Literal token values cannot be refused.
            let _ = headers.push(HeaderName::Supported, "timer");
        }
        let _ = headers.set(HeaderName::SessionExpires, &self.expires.to_string());
        if self.min_se != MIN_SESSION_INTERVAL {
            let _ = headers.set(HeaderName::MinSe, &MinSe(self.min_se).to_string());
        } else {
            headers.remove(HeaderName::MinSe);
        }
    }

    /// The offer to retry with after `response` (a 422): the interval and Min-SE raised
    /// to the 422's Min-SE (RFC 4028 §7.4).
    pub fn after_422(&self, response: &Response) -> Result<SessionOffer, SessionTimerError> {
        let asked = MinSe::from_headers(&response.headers)?
            .ok_or(SessionTimerError::Bad422)?
            .0;
        if asked <= self.expires.interval {
            return Err(SessionTimerError::Bad422);
        }
        Ok(SessionOffer {
            expires: SessionExpires {
                interval: asked,
                refresher: self.expires.refresher,
            },
            min_se: self.min_se.max(asked),
        })
    }

    /// The session timer a 2xx to our offer starts at `now`: `None` when it carries no
    /// Session-Expires; we refresh when it says `refresher=uac` (or says nobody).
    pub fn accept(
        &self,
        response: &Response,
        now: Instant,
    ) -> Result<Option<SessionTimer>, SessionTimerError> {
        let Some(se) = SessionExpires::from_headers(&response.headers)? else {
            return Ok(None);
        };
        if se.interval < self.min_se {
            return Err(SessionTimerError::AnswerBelowMinSe {
                interval: se.interval,
                min_se: self.min_se,
            });
        }
        let we_refresh = se.refresher.unwrap_or(Refresher::Uac) == Refresher::Uac;
        Ok(Some(SessionTimer::new(se.interval, we_refresh, now)))
    }
}

/// A request's Session-Expires is below what we accept: answer 422 with our Min-SE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalTooSmall {
    /// The Min-SE to put in the 422.
    pub min_se: u32,
}

impl IntervalTooSmall {
    /// The 422 response to `request`, with Min-SE.
    pub fn response(&self, request: &Request, to_tag: Option<&str>) -> Response {
        let status = StatusCode::SESSION_INTERVAL_TOO_SMALL;
        let mut r = build_response(
            &ResponseBasis::from_request(request),
            status,
            status.canonical_reason(),
            to_tag,
        );
        // A number cannot be refused as a header value.
        let _ = r
            .headers
            .push(HeaderName::MinSe, &MinSe(self.min_se).to_string());
        r
    }
}

/// Why the UAS side did not agree a session timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negotiation {
    /// Answer 422 ([`IntervalTooSmall::response`]).
    TooSmall(IntervalTooSmall),
    /// Session-Expires, Min-SE or Supported is malformed or repeated: answer 400.
    Malformed(HeaderError),
}

/// The session timer a UAS grants in its 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionAnswer {
    /// The Session-Expires for the 2xx (refresher always set).
    pub expires: SessionExpires,
    /// The UAC supports the extension: the 2xx carries `Require: timer`.
    pub require_timer: bool,
}

impl SessionAnswer {
    /// Writes Session-Expires and, when the UAC supports timers, `Require: timer`.
    pub fn apply(&self, response: &mut Response) {
        let h = &mut response.headers;
        let _ = h.set(HeaderName::SessionExpires, &self.expires.to_string());
        if self.require_timer
            && !h
                .require()
                .is_ok_and(|r| r.iter().any(|t| t.eq_ignore_ascii_case("timer")))
        {
            let _ = h.push(HeaderName::Require, "timer");
        }
    }

    /// The running timer, as the UAS of the negotiating transaction, from `now` (when the
    /// 2xx is sent).
    pub fn start(&self, now: Instant) -> SessionTimer {
        let we_refresh = self.expires.refresher == Some(Refresher::Uas);
        SessionTimer::new(self.expires.interval, we_refresh, now)
    }
}

/// The UAS side of RFC 4028 §9 for an INVITE or UPDATE: `Ok(None)` when no session timer
/// runs (the request has none and `insert_when_absent` is off).
pub fn negotiate(
    config: &SessionTimerConfig,
    request: &Request,
) -> Result<Option<SessionAnswer>, Negotiation> {
    let h = &request.headers;
    let se = SessionExpires::from_headers(h).map_err(Negotiation::Malformed)?;
    let their_min = MinSe::from_headers(h)
        .map_err(Negotiation::Malformed)?
        .map_or(MIN_SESSION_INTERVAL, |m| m.0);
    let supports = supports_timer(h).map_err(Negotiation::Malformed)?;
    let our_min = config.min_se();
    let floor = our_min.max(their_min);
    let (interval, refresher) = match se {
        Some(se) => {
            if se.interval < our_min {
                return Err(Negotiation::TooSmall(IntervalTooSmall { min_se: our_min }));
            }
            // We may shorten the interval, never below either Min-SE, never lengthen it.
            let interval = se.interval.min(config.interval).max(floor).min(se.interval);
            (interval, se.refresher)
        }
        None if config.insert_when_absent => (config.interval.max(floor), None),
        None => return Ok(None),
    };
    let refresher = match (supports, refresher) {
        (false, _) => Refresher::Uas,
        (true, Some(r)) => r,
        (true, None) => config.uas_prefers,
    };
    Ok(Some(SessionAnswer {
        expires: SessionExpires {
            interval,
            refresher: Some(refresher),
        },
        require_timer: supports,
    }))
}

/// What a running session timer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// We are the refresher and half the interval has passed: send a re-INVITE or UPDATE
    /// with [`SessionTimer::refresh_offer`].
    Refresh,
    /// No refresh came (or ours got no answer) in time: send BYE.
    Expired,
}

/// A running session timer; deadlines are computed from the `Instant` it started at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    interval: u32,
    we_refresh: bool,
    started: Instant,
    refresh_due: bool,
    expiry_due: bool,
}

impl SessionTimer {
    /// A timer of `interval` seconds from `now`; `we_refresh` when this side refreshes.
    pub fn new(interval: u32, we_refresh: bool, now: Instant) -> Self {
        Self {
            interval,
            we_refresh,
            started: now,
            refresh_due: we_refresh,
            expiry_due: true,
        }
    }

    /// The session interval, seconds.
    pub fn interval(&self) -> u32 {
        self.interval
    }

    /// True when this side sends the refreshes.
    pub fn we_refresh(&self) -> bool {
        self.we_refresh
    }

    /// When the refresher sends its refresh: half the interval after the start (`None`
    /// when the peer refreshes, or once the refresh was asked for).
    pub fn refresh_at(&self) -> Option<Instant> {
        if !self.refresh_due {
            return None;
        }
        self.started
            .checked_add(Duration::from_millis(u64::from(self.interval) * 500))
    }

    /// When the session expires for us and BYE is sent: the interval minus min(32 s,
    /// interval/3) after the start (`None` once reported).
    pub fn expires_at(&self) -> Option<Instant> {
        if !self.expiry_due {
            return None;
        }
        let interval_ms = u64::from(self.interval) * 1000;
        let margin_ms = (interval_ms / 3).min(32_000);
        self.started
            .checked_add(Duration::from_millis(interval_ms - margin_ms))
    }

    /// The earlier of the two deadlines.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.refresh_at(), self.expires_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What is due at `now` (each event is reported once).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SessionEvent> {
        if self.expires_at().is_some_and(|at| at <= now) {
            self.expiry_due = false;
            self.refresh_due = false;
            return Some(SessionEvent::Expired);
        }
        if self.refresh_at().is_some_and(|at| at <= now) {
            self.refresh_due = false;
            return Some(SessionEvent::Refresh);
        }
        None
    }

    /// The offer for a refresh (or any re-INVITE/UPDATE) we send: the current interval,
    /// and `refresher=uac` when we refresh, `uas` when the peer does.
    pub fn refresh_offer(&self, config: &SessionTimerConfig) -> SessionOffer {
        SessionOffer {
            expires: SessionExpires {
                interval: self.interval,
                refresher: Some(if self.we_refresh {
                    Refresher::Uac
                } else {
                    Refresher::Uas
                }),
            },
            min_se: config.min_se().min(self.interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_expires_parses_refresher_and_ignores_other_params() {
        assert_eq!(
            SessionExpires::parse("4000;refresher=UAS;x=1"),
            Ok(SessionExpires {
                interval: 4000,
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(SessionExpires::parse(" 90 ").map(|s| s.refresher), Ok(None));
        assert!(SessionExpires::parse("90;refresher=proxy").is_err());
        assert!(SessionExpires::parse("4294967296").is_err());
        assert!(SessionExpires::parse("-5").is_err());
        assert!(SessionExpires::parse("").is_err());
        assert!(SessionExpires::parse("90;;").is_err());
        assert_eq!(MinSe::parse("120;foo=bar"), Ok(MinSe(120)));
        assert_eq!(
            SessionExpires {
                interval: 1800,
                refresher: Some(Refresher::Uac)
            }
            .to_string(),
            "1800;refresher=uac"
        );
    }
}

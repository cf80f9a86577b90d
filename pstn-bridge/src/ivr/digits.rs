//! DTMF digits as the IVR receives them: from RFC 4733 telephone-events, from SIP INFO
//! bodies, or from in-band tones, and the rule that keeps one key press from counting twice
//! when it arrives by two paths.
//!
//! # Sources
//!
//! - **RFC 4733**: the leg's [`LegEvent::Dtmf`] carries a [`ReceivedEvent`];
//!   [`DigitInput::from_leg_event`] takes its `Started` (the key press, so barge-in is
//!   immediate) and ignores its `Ended`. The receiver has already merged updates and
//!   retransmitted end packets, so one press is one `Started`.
//! - **SIP INFO**: [`parse_sip_info`] reads `application/dtmf-relay` (`Signal=5\r\n
//!   Duration=160`, keys in any case, blanks around `=` and values, LF or CRLF lines,
//!   unknown keys ignored, the signal as a keypad character or as an event code 0-15) and
//!   `application/dtmf` (one keypad character or event code). Anything else is a typed
//!   [`DigitError`]: the binary answers the INFO with 415 (content type) or 400 (body).
//! - **In-band**: a [`DtmfDetector`](confer_codecs::dtmf::DtmfDetector) on the caller's
//!   decoded audio; [`DigitInput::from_detector_event`] takes its `Started`.
//!
//! # One press, one digit
//!
//! A gateway that negotiated telephone-event often leaves the tones in the audio as well,
//! and some PBXs send SIP INFO *and* RFC 4733. [`DigitFilter`] applies, in order:
//!
//! 1. In-band digits are ignored when RFC 4733 was negotiated for the call, and from the
//!    first digit that arrived out of band (RFC 4733 or INFO, even as a duplicate) on: a signalling path that
//!    works is exact, while a tone detector can only add talk-off and doubles. (The binary
//!    need not even run the detector then: [`DigitFilter::wants_inband`].) A trunk that
//!    negotiates telephone-event but sends only tones should be configured as not
//!    negotiating it.
//! 2. A digit equal to the last accepted one, from a *different* source, within
//!    [`DigitFilter::DEFAULT_DUPLICATE_WINDOW`] (500 ms) of it, is the same press seen
//!    twice and is dropped (SIP INFO can trail the media by a few hundred ms through
//!    proxies; a real second press of the same key comes by the same path). The same key pressed twice arrives twice on one path (each
//!    source keeps presses apart itself: RFC 4733 by timestamp, the detector by the gap
//!    between tones), so repeats from one source are never dropped.
//!
//! # Secrecy
//!
//! A digit may be part of a PIN: no type here shows it in `Debug`, and no error carries
//! the received value.

use std::time::{Duration, Instant};

use confer_codecs::dtmf::{DtmfDigit, DtmfEvent, ReceivedEvent};
use confer_engine::leg::LegEvent;

/// Where a digit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigitSource {
    /// An RFC 4733 telephone-event in the RTP stream.
    Rfc4733,
    /// A SIP INFO request (`application/dtmf-relay` or `application/dtmf`).
    SipInfo,
    /// A tone detected in the caller's audio.
    InBand,
}

/// One key press and the path it took. `Debug` hides the digit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigitInput {
    /// The key.
    pub digit: DtmfDigit,
    /// The path.
    pub source: DigitSource,
}

impl std::fmt::Debug for DigitInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigitInput")
            .field("digit", &Redacted)
            .field("source", &self.source)
            .finish()
    }
}

/// Prints `<redacted>` in place of a secret.
pub(crate) struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Input that is not a DTMF digit. No variant carries the received value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigitError {
    /// An RFC 4733 event code above 15 (flash hook, tones): not a keypad digit.
    #[error("telephone-event code {0} is not a DTMF digit")]
    NotADigit(u8),
    /// A SIP INFO whose content type is neither `application/dtmf-relay` nor
    /// `application/dtmf` (answer 415).
    #[error("SIP INFO content type is not application/dtmf-relay or application/dtmf")]
    UnsupportedContentType,
    /// The body is longer than [`MAX_INFO_BODY`] bytes.
    #[error("SIP INFO DTMF body is longer than {MAX_INFO_BODY} bytes")]
    BodyTooLong,
    /// The body is not UTF-8 text.
    #[error("SIP INFO DTMF body is not text")]
    NotText,
    /// A `dtmf-relay` line that is not `key=value`.
    #[error("SIP INFO dtmf-relay line is not key=value")]
    MalformedLine,
    /// A `dtmf-relay` body without a `Signal`.
    #[error("SIP INFO dtmf-relay body has no Signal")]
    MissingSignal,
    /// A `dtmf-relay` body with two `Signal`s.
    #[error("SIP INFO dtmf-relay body has more than one Signal")]
    DuplicateSignal,
    /// The signal is not a keypad character or event code 0-15.
    #[error("SIP INFO signal is not a DTMF digit")]
    InvalidSignal,
    /// The `Duration` is not a whole number of milliseconds.
    #[error("SIP INFO Duration is not a number of milliseconds")]
    InvalidDuration,
}

/// The longest SIP INFO DTMF body accepted (real ones are about 25 bytes).
pub const MAX_INFO_BODY: usize = 512;

/// A digit read from a SIP INFO body. `Debug` hides the digit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InfoDtmf {
    /// The key.
    pub digit: DtmfDigit,
    /// The `Duration` line of `dtmf-relay`, if present.
    pub duration: Option<Duration>,
}

impl std::fmt::Debug for InfoDtmf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfoDtmf")
            .field("digit", &Redacted)
            .field("duration", &self.duration)
            .finish()
    }
}

/// A keypad character (`0-9 * # A-D`, any case) or an RFC 4733 event code `0`-`15`.
fn parse_signal(value: &str) -> Result<DtmfDigit, DigitError> {
    let mut chars = value.chars();
    if let (Some(c), None) = (chars.next(), chars.next())
        && let Some(d) = DtmfDigit::from_char(c)
    {
        return Ok(d);
    }
    // "10" for * and "11" for #: event codes, as some gateways send them.
    if !value.is_empty() && value.len() <= 2 && value.bytes().all(|b| b.is_ascii_digit()) {
        let code: u8 = value.parse().map_err(|_| DigitError::InvalidSignal)?;
        return DtmfDigit::from_event_code(code).ok_or(DigitError::InvalidSignal);
    }
    Err(DigitError::InvalidSignal)
}

/// Reads the digit of a SIP INFO request from its `Content-Type` value and body.
pub fn parse_sip_info(content_type: &str, body: &[u8]) -> Result<InfoDtmf, DigitError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let relay = media.eq_ignore_ascii_case("application/dtmf-relay");
    if !relay && !media.eq_ignore_ascii_case("application/dtmf") {
        return Err(DigitError::UnsupportedContentType);
    }
    if body.len() > MAX_INFO_BODY {
        return Err(DigitError::BodyTooLong);
    }
    let text = std::str::from_utf8(body).map_err(|_| DigitError::NotText)?;
    if !relay {
        return Ok(InfoDtmf {
            digit: parse_signal(text.trim())?,
            duration: None,
        });
    }
    let mut digit = None;
    let mut duration = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(DigitError::MalformedLine)?;
        let (key, value) = (key.trim(), value.trim());
        if key.eq_ignore_ascii_case("signal") {
            if digit.is_some() {
                return Err(DigitError::DuplicateSignal);
            }
            digit = Some(parse_signal(value)?);
        } else if key.eq_ignore_ascii_case("duration") {
            let ms: u32 = value.parse().map_err(|_| DigitError::InvalidDuration)?;
            duration = Some(Duration::from_millis(u64::from(ms)));
        }
    }
    Ok(InfoDtmf {
        digit: digit.ok_or(DigitError::MissingSignal)?,
        duration,
    })
}

impl DigitInput {
    /// The digit of an RFC 4733 event start; `Ok(None)` for an event end (the press was
    /// reported at its start); an error for an event code that is not a digit.
    pub fn from_telephone_event(event: &ReceivedEvent) -> Result<Option<Self>, DigitError> {
        match *event {
            ReceivedEvent::Started { event, .. } => DtmfDigit::from_event_code(event)
                .map(|digit| {
                    Some(Self {
                        digit,
                        source: DigitSource::Rfc4733,
                    })
                })
                .ok_or(DigitError::NotADigit(event)),
            ReceivedEvent::Ended { .. } => Ok(None),
        }
    }

    /// The digit of a leg's event: [`Self::from_telephone_event`] for
    /// [`LegEvent::Dtmf`], `Ok(None)` for the leg's other events.
    pub fn from_leg_event(event: &LegEvent) -> Result<Option<Self>, DigitError> {
        match event {
            LegEvent::Dtmf(e) => Self::from_telephone_event(e),
            _ => Ok(None),
        }
    }

    /// The digit of an in-band detector's start event; `None` for its end.
    pub fn from_detector_event(event: &DtmfEvent) -> Option<Self> {
        match *event {
            DtmfEvent::Started { digit, .. } => Some(Self {
                digit,
                source: DigitSource::InBand,
            }),
            DtmfEvent::Ended { .. } => None,
        }
    }

    /// The digit of a SIP INFO request ([`parse_sip_info`]).
    pub fn from_sip_info(content_type: &str, body: &[u8]) -> Result<Self, DigitError> {
        Ok(Self {
            digit: parse_sip_info(content_type, body)?.digit,
            source: DigitSource::SipInfo,
        })
    }
}

/// What [`DigitFilter::accept`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigitVerdict {
    /// A new key press.
    Accepted,
    /// The press accepted just before, seen again on another path.
    Duplicate,
    /// An in-band digit while an out-of-band path is in use.
    InBandIgnored,
}

/// Counters of a [`DigitFilter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DigitFilterStats {
    /// Digits accepted.
    pub accepted: u64,
    /// Digits dropped as the same press on another path.
    pub duplicates: u64,
    /// In-band digits ignored.
    pub inband_ignored: u64,
}

/// Merges the digit paths of one call (see the module docs). `Debug` hides the last digit.
#[derive(Clone)]
pub struct DigitFilter {
    rfc4733_negotiated: bool,
    out_of_band_seen: bool,
    window: Duration,
    last: Option<(DtmfDigit, DigitSource, Instant)>,
    stats: DigitFilterStats,
}

impl std::fmt::Debug for DigitFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigitFilter")
            .field("rfc4733_negotiated", &self.rfc4733_negotiated)
            .field("out_of_band_seen", &self.out_of_band_seen)
            .field("window", &self.window)
            .field(
                "last",
                &self.last.map(|(_, source, at)| (Redacted, source, at)),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl DigitFilter {
    /// The default window within which a digit from another path is the same press.
    pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_millis(500);

    /// A filter for a call that did (or did not) negotiate telephone-event.
    pub fn new(rfc4733_negotiated: bool, window: Duration) -> Self {
        Self {
            rfc4733_negotiated,
            out_of_band_seen: false,
            window,
            last: None,
            stats: DigitFilterStats::default(),
        }
    }

    /// A re-INVITE changed whether telephone-event is negotiated.
    pub fn set_rfc4733_negotiated(&mut self, negotiated: bool) {
        self.rfc4733_negotiated = negotiated;
    }

    /// True when in-band digits would be used: the binary can skip the detector otherwise.
    pub fn wants_inband(&self) -> bool {
        !self.rfc4733_negotiated && !self.out_of_band_seen
    }

    /// Counters.
    pub fn stats(&self) -> DigitFilterStats {
        self.stats
    }

    /// Decides whether `input`, arriving at `now`, is a new key press.
    pub fn accept(&mut self, input: DigitInput, now: Instant) -> DigitVerdict {
        if input.source == DigitSource::InBand && !self.wants_inband() {
            self.stats.inband_ignored += 1;
            return DigitVerdict::InBandIgnored;
        }
        // A digit out of band, even a duplicate, shows that the signalling path works.
        if input.source != DigitSource::InBand {
            self.out_of_band_seen = true;
        }
        if let Some((digit, source, at)) = self.last
            && digit == input.digit
            && source != input.source
            && now.saturating_duration_since(at) < self.window
        {
            self.stats.duplicates += 1;
            return DigitVerdict::Duplicate;
        }
        self.last = Some((input.digit, input.source, now));
        self.stats.accepted += 1;
        DigitVerdict::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(body: &str) -> Result<DtmfDigit, DigitError> {
        parse_sip_info("application/dtmf-relay", body.as_bytes()).map(|d| d.digit)
    }

    #[test]
    fn dtmf_relay_bodies_are_read_in_their_common_spellings() {
        let r = parse_sip_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n").unwrap();
        assert_eq!(r.digit, DtmfDigit::D5);
        assert_eq!(r.duration, Some(Duration::from_millis(160)));
        assert_eq!(relay("signal= *\nduration= 250"), Ok(DtmfDigit::Star));
        assert_eq!(relay("  SIGNAL = #  \r\n"), Ok(DtmfDigit::Hash));
        assert_eq!(relay("Signal=10\r\nDuration=100"), Ok(DtmfDigit::Star));
        assert_eq!(relay("Signal=11"), Ok(DtmfDigit::Hash));
        assert_eq!(relay("Signal=d"), Ok(DtmfDigit::D));
        assert_eq!(relay("Volume=10\r\nSignal=0\r\n\r\n"), Ok(DtmfDigit::D0));
        assert_eq!(
            parse_sip_info("Application/DTMF-Relay ; charset=utf-8", b"Signal=9").map(|d| d.digit),
            Ok(DtmfDigit::D9)
        );
    }

    #[test]
    fn dtmf_bodies_are_one_digit() {
        let d = |b: &[u8]| parse_sip_info("application/dtmf", b).map(|d| d.digit);
        assert_eq!(d(b"7"), Ok(DtmfDigit::D7));
        assert_eq!(d(b" 7\r\n"), Ok(DtmfDigit::D7));
        assert_eq!(d(b"11"), Ok(DtmfDigit::Hash));
        assert_eq!(d(b"77"), Err(DigitError::InvalidSignal));
        assert_eq!(d(b"16"), Err(DigitError::InvalidSignal));
        assert_eq!(d(b""), Err(DigitError::InvalidSignal));
    }

    #[test]
    fn garbage_info_bodies_are_typed_errors() {
        assert_eq!(relay("Duration=160"), Err(DigitError::MissingSignal));
        assert_eq!(relay(""), Err(DigitError::MissingSignal));
        assert_eq!(
            relay("Signal=1\nSignal=2"),
            Err(DigitError::DuplicateSignal)
        );
        assert_eq!(relay("Signal=E"), Err(DigitError::InvalidSignal));
        assert_eq!(relay("Signal="), Err(DigitError::InvalidSignal));
        assert_eq!(relay("Signal=-1"), Err(DigitError::InvalidSignal));
        assert_eq!(
            relay("Signal=5\nDuration=abc"),
            Err(DigitError::InvalidDuration)
        );
        assert_eq!(
            relay("Signal=5\nDuration=-5"),
            Err(DigitError::InvalidDuration)
        );
        assert_eq!(relay("Signal 5"), Err(DigitError::MalformedLine));
        assert_eq!(
            parse_sip_info("application/dtmf-relay", &[0xff, 0xfe]).unwrap_err(),
            DigitError::NotText
        );
        assert_eq!(
            parse_sip_info("application/dtmf-relay", &[b'x'; MAX_INFO_BODY + 1]).unwrap_err(),
            DigitError::BodyTooLong
        );
        assert_eq!(
            parse_sip_info("application/sdp", b"Signal=5").unwrap_err(),
            DigitError::UnsupportedContentType
        );
    }

    #[test]
    fn errors_and_debug_output_never_show_the_digit() {
        for body in ["Signal=7\nSignal=7", "Signal=77", "Signal=7\nDuration=x7"] {
            let e = relay(body).unwrap_err();
            assert!(!format!("{e} {e:?}").contains('7'), "{e}");
        }
        let ok = parse_sip_info("application/dtmf-relay", b"Signal=7").unwrap();
        assert!(!format!("{ok:?}").contains('7'));
        let input = DigitInput::from_sip_info("application/dtmf", b"7").unwrap();
        assert!(!format!("{input:?}").contains('7'));
    }

    #[test]
    fn an_event_code_above_15_is_not_a_digit() {
        let e = ReceivedEvent::Started {
            event: 16,
            timestamp: 0,
            volume: 10,
        };
        assert_eq!(
            DigitInput::from_telephone_event(&e),
            Err(DigitError::NotADigit(16))
        );
    }
}

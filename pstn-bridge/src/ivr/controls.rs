//! In-call DTMF controls: short key sequences (`*6`, `*0`) a phone caller presses once in
//! the conference, mapped to actions the binary carries out.
//!
//! A [`ControlMap`] is configuration: each [`ControlSequence`] maps to a [`ControlAction`].
//! No sequence may be a prefix of another, so a sequence is recognised the moment its last
//! key arrives, never after a wait to see whether more keys follow.
//!
//! [`InCallControls`] matches the caller's keys against the map. Keys that can still grow
//! into a sequence are held; a key that cannot is dropped, and if it can begin a sequence
//! itself it does (`*`, `*`, `6` is `*6`). Held keys expire after the sequence timeout
//! (default 3 s), so a stray `*` does not turn the caller's next `6` into a mute. Sans-IO:
//! [`InCallControls::poll_timeout`] and [`InCallControls::handle_timeout`].

use std::time::{Duration, Instant};

use confer_codecs::dtmf::DtmfDigit;

use super::digits::Redacted;

/// What a control sequence asks for. The binary knows the state (muted or not, the count,
/// the volume) and carries it out, typically answering with a prompt
/// ([`Ivr::announce`](super::Ivr::announce)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlAction {
    /// Mute or unmute the caller's microphone.
    ToggleMute,
    /// Say how many participants the conference has.
    AnnounceCount,
    /// Raise the volume the caller hears.
    VolumeUp,
    /// Lower the volume the caller hears.
    VolumeDown,
}

/// A [`ControlMap`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlMapError {
    /// An empty sequence.
    #[error("a control sequence needs at least one key")]
    Empty,
    /// A sequence longer than [`ControlSequence::MAX_LEN`].
    #[error("a control sequence has at most {} keys", ControlSequence::MAX_LEN)]
    TooLong,
    /// A character that is not a DTMF key.
    #[error("{0:?} is not a DTMF key")]
    InvalidKey(char),
    /// One sequence is a prefix of (or equal to) another.
    #[error("control sequence {prefix} is a prefix of {longer}")]
    Ambiguous {
        /// The shorter sequence.
        prefix: String,
        /// The sequence it begins.
        longer: String,
    },
}

/// A key sequence of one to [`MAX_LEN`](Self::MAX_LEN) keys, like `*6`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlSequence {
    keys: [DtmfDigit; Self::MAX_LEN],
    len: u8,
}

impl ControlSequence {
    /// The longest sequence.
    pub const MAX_LEN: usize = 4;

    /// Parses keypad characters, like `"*6"`.
    pub fn parse(s: &str) -> Result<Self, ControlMapError> {
        let mut seq = Self {
            keys: [DtmfDigit::Star; Self::MAX_LEN],
            len: 0,
        };
        for c in s.chars() {
            let key = DtmfDigit::from_char(c).ok_or(ControlMapError::InvalidKey(c))?;
            let slot = seq
                .keys
                .get_mut(usize::from(seq.len))
                .ok_or(ControlMapError::TooLong)?;
            *slot = key;
            seq.len += 1;
        }
        if seq.len == 0 {
            return Err(ControlMapError::Empty);
        }
        Ok(seq)
    }

    /// The keys.
    pub fn keys(&self) -> &[DtmfDigit] {
        &self.keys[..usize::from(self.len)]
    }
}

impl std::fmt::Display for ControlSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.keys()
            .iter()
            .try_for_each(|k| write!(f, "{}", k.to_char()))
    }
}

impl std::fmt::Debug for ControlSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlSequence({self})")
    }
}

/// Sequences and their actions (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMap {
    entries: Vec<(ControlSequence, ControlAction)>,
}

impl Default for ControlMap {
    /// `*6` mute toggle, `*0` participant count, `*4` volume down, `*7` volume up.
    fn default() -> Self {
        let seq = |s| ControlSequence::parse(s);
        let entries = [
            (seq("*6"), ControlAction::ToggleMute),
            (seq("*0"), ControlAction::AnnounceCount),
            (seq("*4"), ControlAction::VolumeDown),
            (seq("*7"), ControlAction::VolumeUp),
        ];
        // Fixed, valid sequences; an empty map would be the fallback if that changed.
        let entries = entries
            .into_iter()
            .filter_map(|(s, a)| s.ok().map(|s| (s, a)))
            .collect();
        Self { entries }
    }
}

impl ControlMap {
    /// A map with no controls.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// A map of the given sequences; refuses a sequence that is a prefix of another.
    pub fn new(
        entries: impl IntoIterator<Item = (ControlSequence, ControlAction)>,
    ) -> Result<Self, ControlMapError> {
        let entries: Vec<_> = entries.into_iter().collect();
        for (i, (a, _)) in entries.iter().enumerate() {
            for (j, (b, _)) in entries.iter().enumerate() {
                if i != j && b.keys().starts_with(a.keys()) && (a.len < b.len || i < j) {
                    return Err(ControlMapError::Ambiguous {
                        prefix: a.to_string(),
                        longer: b.to_string(),
                    });
                }
            }
        }
        Ok(Self { entries })
    }

    /// The sequences and actions.
    pub fn entries(&self) -> &[(ControlSequence, ControlAction)] {
        &self.entries
    }

    fn exact(&self, keys: &[DtmfDigit]) -> Option<ControlAction> {
        self.entries
            .iter()
            .find(|(s, _)| s.keys() == keys)
            .map(|&(_, a)| a)
    }

    fn is_proper_prefix(&self, keys: &[DtmfDigit]) -> bool {
        self.entries
            .iter()
            .any(|(s, _)| s.keys().len() > keys.len() && s.keys().starts_with(keys))
    }
}

/// The default time a partial sequence waits for its next key.
pub const DEFAULT_SEQUENCE_TIMEOUT: Duration = Duration::from_secs(3);

/// Matches one caller's keys against a [`ControlMap`]. `Debug` hides the held keys.
#[derive(Clone)]
pub struct InCallControls {
    map: ControlMap,
    timeout: Duration,
    held: [DtmfDigit; ControlSequence::MAX_LEN],
    len: usize,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for InCallControls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InCallControls")
            .field("map", &self.map)
            .field("timeout", &self.timeout)
            .field("held", &Redacted)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl InCallControls {
    /// Controls with `map`, partial sequences expiring after `timeout`.
    pub fn new(map: ControlMap, timeout: Duration) -> Self {
        Self {
            map,
            timeout,
            held: [DtmfDigit::Star; ControlSequence::MAX_LEN],
            len: 0,
            deadline: None,
        }
    }

    /// Handles one key at `now`; returns the action when it completes a sequence.
    pub fn handle_digit(&mut self, digit: DtmfDigit, now: Instant) -> Option<ControlAction> {
        self.handle_timeout(now);
        // Held keys plus this one, or (if that leads nowhere) this one alone.
        for restart in [false, true] {
            if restart {
                if self.len == 0 {
                    break;
                }
                self.len = 0;
            }
            let Some(slot) = self.held.get_mut(self.len) else {
                continue;
            };
            *slot = digit;
            let keys = &self.held[..self.len + 1];
            if let Some(action) = self.map.exact(keys) {
                self.clear();
                return Some(action);
            }
            if self.map.is_proper_prefix(keys) {
                self.len += 1;
                // Cannot overflow for any sane timeout; without a deadline the held keys
                // would wait for the next key instead, which is harmless.
                self.deadline = now.checked_add(self.timeout);
                return None;
            }
        }
        self.clear();
        None
    }

    /// When held keys expire, if any are held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Drops held keys whose time is up. Safe to call at any time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> ControlSequence {
        ControlSequence::parse(s).unwrap()
    }

    #[test]
    fn a_prefix_sequence_is_refused() {
        let err = ControlMap::new([
            (seq("*6"), ControlAction::ToggleMute),
            (seq("*"), ControlAction::AnnounceCount),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            ControlMapError::Ambiguous {
                prefix: "*".into(),
                longer: "*6".into()
            }
        );
        assert!(
            ControlMap::new([
                (seq("*6"), ControlAction::ToggleMute),
                (seq("*6"), ControlAction::AnnounceCount),
            ])
            .is_err()
        );
        assert_eq!(
            ControlSequence::parse("*6*6*"),
            Err(ControlMapError::TooLong)
        );
        assert_eq!(
            ControlSequence::parse("*x"),
            Err(ControlMapError::InvalidKey('x'))
        );
        assert_eq!(ControlSequence::parse(""), Err(ControlMapError::Empty));
    }

    #[test]
    fn the_default_map_has_its_four_controls() {
        assert_eq!(ControlMap::default().entries().len(), 4);
    }
}

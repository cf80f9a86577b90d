//! Active-speaker selection: which (at most K) participants a room mixes.
//!
//! A room mixes only its active speakers; everyone else is a listener. Choosing them from
//! the instantaneous level would flap between talkers on every syllable, so the choice
//! uses a smoothed level and hysteresis. Participants are identified by slot index
//! (`usize`), the room's participant table; the state per slot is allocated when a slot is
//! first used ([`ActiveSpeakers::reset_slot`]), so an update allocates nothing.
//!
//! Per frame and participant the room passes the frame's level (dBov, from the leg's
//! RFC 6464 measurement) and whether the participant *may talk* (voice per VAD, not
//! muted). A participant *talks* while it may talk and its smoothed level is above
//! [`SpeakerConfig::min_level_dbov`] (-55 dBov); only talkers are selected. Then, once
//! per frame,
//! [`ActiveSpeakers::select`]:
//!
//! 1. **Smoothing.** A one-pole filter on the dB level, fast up
//!    ([`SpeakerConfig::attack`], 50 ms; a talker who starts from silence takes its level at
//!    once, so it is heard from its first frame) and slow down
//!    ([`SpeakerConfig::release`], 400 ms: the pauses between words do not sink a talker).
//!    A frame without voice counts as -127 dBov.
//! 2. **Leaving.** A speaker without voice for [`SpeakerConfig::silence_release`] (600 ms,
//!    longer than the VAD's own 200 ms hangover plus a breath) frees its place.
//! 3. **Free places** are given at once, loudest first, to participants with voice: a first
//!    talker is never made to wait.
//! 4. **Replacing.** When all K places are taken, a challenger replaces the weakest speaker
//!    (lowest smoothed level) only after being louder than it by
//!    [`SpeakerConfig::margin_db`] (6 dB, twice as loud in amplitude) on every frame for
//!    [`SpeakerConfig::hold`] (400 ms). A cough (100-300 ms) cannot do it; a sustained
//!    louder talker does within half a second. Among several qualified challengers the
//!    loudest wins.
//!
//! Participants that may not talk are never selected, whatever their level.
//!
//! The level may come from a decoded frame or, without decoding, from the RFC 6464 level
//! the sender put in its RTP header (the room prefers it): both are dBov of the frame, so
//! one smoothing and one set of thresholds serve both. [`ActiveSpeakers::challengers`]
//! names who the room should decode besides the speakers, so that a newcomer is decoded
//! for the hold time before it is mixed.

use std::time::Duration;

/// The level of silence, in dBov.
pub const SILENCE_DBOV: f32 = -127.0;

/// Tuning of [`ActiveSpeakers`]; the module docs explain each number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerConfig {
    /// K: the most speakers mixed at once (1..=64).
    pub max_speakers: usize,
    /// A challenger must be this much louder (smoothed, dB) than the weakest speaker.
    pub margin_db: f32,
    /// ... for this long without interruption.
    pub hold: Duration,
    /// A speaker without voice for this long leaves its place.
    pub silence_release: Duration,
    /// Time constant of the smoothed level when it rises.
    pub attack: Duration,
    /// Time constant of the smoothed level when it falls.
    pub release: Duration,
    /// Frames quieter than this (dBov) do not count as voice.
    pub min_level_dbov: f32,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            max_speakers: 3,
            margin_db: 6.0,
            hold: Duration::from_millis(400),
            silence_release: Duration::from_millis(600),
            attack: Duration::from_millis(50),
            release: Duration::from_millis(400),
            min_level_dbov: -55.0,
        }
    }
}

/// Why a speaker configuration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpeakerConfigError {
    /// `max_speakers` outside 1..=64.
    #[error("max_speakers must be 1..=64, got {0}")]
    MaxSpeakers(usize),
    /// A margin, duration or level that makes no sense.
    #[error("bad speaker setting: {0}")]
    Bad(&'static str),
}

impl SpeakerConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), SpeakerConfigError> {
        if !(1..=64).contains(&self.max_speakers) {
            return Err(SpeakerConfigError::MaxSpeakers(self.max_speakers));
        }
        if !(self.margin_db.is_finite() && (0.0..=60.0).contains(&self.margin_db)) {
            return Err(SpeakerConfigError::Bad("margin_db must be 0..=60"));
        }
        if !(self.min_level_dbov.is_finite() && (-127.0..=0.0).contains(&self.min_level_dbov)) {
            return Err(SpeakerConfigError::Bad("min_level_dbov must be -127..=0"));
        }
        let max = Duration::from_secs(60);
        if self.hold > max || self.silence_release > max {
            return Err(SpeakerConfigError::Bad(
                "hold and silence_release must be <= 60 s",
            ));
        }
        if self.attack.is_zero()
            || self.release.is_zero()
            || self.attack > max
            || self.release > max
        {
            return Err(SpeakerConfigError::Bad(
                "attack and release must be 0 < t <= 60 s",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct SlotState {
    in_use: bool,
    smoothed_dbov: f32,
    /// May talk this frame (voice, loud enough, not muted).
    voice: bool,
    speaker: bool,
    /// Frames since voice (speakers), saturating.
    silent_frames: u32,
    /// Consecutive frames louder than the weakest speaker by the margin (non-speakers).
    beat_frames: u32,
}

impl SlotState {
    const EMPTY: SlotState = SlotState {
        in_use: false,
        smoothed_dbov: SILENCE_DBOV,
        voice: false,
        speaker: false,
        silent_frames: 0,
        beat_frames: 0,
    };
}

/// The active-speaker selector. See the module docs.
#[derive(Debug, Clone)]
pub struct ActiveSpeakers {
    config: SpeakerConfig,
    attack_coef: f32,
    release_coef: f32,
    hold_frames: u32,
    release_frames: u32,
    slots: Vec<SlotState>,
    /// Current speakers (slot indices), at most K, in order of admission.
    speakers: Vec<usize>,
}

impl ActiveSpeakers {
    /// A selector for frames of `frame`, with room for `slots` participants to start with.
    pub fn new(
        config: SpeakerConfig,
        frame: Duration,
        slots: usize,
    ) -> Result<Self, SpeakerConfigError> {
        config.validate()?;
        if frame.is_zero() {
            return Err(SpeakerConfigError::Bad(
                "the frame duration must not be zero",
            ));
        }
        let f = frame.as_secs_f32();
        let frames = |d: Duration| (d.as_secs_f32() / f).round() as u32;
        Ok(ActiveSpeakers {
            attack_coef: (-f / config.attack.as_secs_f32()).exp(),
            release_coef: (-f / config.release.as_secs_f32()).exp(),
            hold_frames: frames(config.hold).max(1),
            release_frames: frames(config.silence_release).max(1),
            slots: vec![SlotState::EMPTY; slots],
            speakers: Vec::with_capacity(config.max_speakers),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SpeakerConfig {
        &self.config
    }

    /// Starts tracking `slot` afresh (a participant joined it); grows the table if needed
    /// (this allocates, at join, never per frame).
    pub fn reset_slot(&mut self, slot: usize) {
        if slot >= self.slots.len() {
            self.slots.resize(slot + 1, SlotState::EMPTY);
        }
        self.remove(slot);
        self.slots[slot] = SlotState {
            in_use: true,
            ..SlotState::EMPTY
        };
    }

    /// Stops tracking `slot` (the participant left); it stops being a speaker at once.
    pub fn remove(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = SlotState::EMPTY;
        }
        self.speakers.retain(|&x| x != slot);
    }

    /// This frame's level of `slot` (dBov) and whether it may talk (voice per VAD, not
    /// muted). A participant whose smoothed level is below
    /// [`SpeakerConfig::min_level_dbov`] is not talking.
    pub fn update(&mut self, slot: usize, level_dbov: f32, voice: bool) {
        let min = self.config.min_level_dbov;
        let (attack, release) = (self.attack_coef, self.release_coef);
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.in_use) else {
            return;
        };
        let level = if level_dbov.is_finite() {
            level_dbov.clamp(SILENCE_DBOV, 0.0)
        } else {
            SILENCE_DBOV
        };
        let input = if voice { level } else { SILENCE_DBOV };
        let coef = if input > s.smoothed_dbov {
            attack
        } else {
            release
        };
        s.smoothed_dbov = if voice && s.smoothed_dbov < min {
            // Starting from silence: at its level at once, not after the attack.
            input
        } else {
            input + coef * (s.smoothed_dbov - input)
        };
        // The smoothed level, not the frame's: the quiet frames inside a word (and the
        // VAD's hangover) do not interrupt a talker.
        s.voice = voice && s.smoothed_dbov >= min;
        s.silent_frames = if s.voice {
            0
        } else {
            s.silent_frames.saturating_add(1)
        };
    }

    /// This frame, `slot` may not talk and must not be mixed even in a speaker's pause
    /// (muted, or the room waits for a moderator): it leaves its place at once.
    pub fn silence(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.in_use) else {
            return;
        };
        s.voice = false;
        s.smoothed_dbov = SILENCE_DBOV;
        s.beat_frames = 0;
        if s.speaker {
            s.speaker = false;
            self.speakers.retain(|&x| x != slot);
        }
    }

    /// Decides this frame's speakers from the updates since the last call.
    pub fn select(&mut self) {
        // Leaving: silent too long.
        let release_frames = self.release_frames;
        let slots = &mut self.slots;
        self.speakers.retain(|&i| {
            let s = &mut slots[i];
            let keep = s.silent_frames < release_frames;
            s.speaker = keep;
            keep
        });
        // Free places: loudest voiced first.
        while self.speakers.len() < self.config.max_speakers {
            let Some(best) = self.loudest_challenger(f32::NEG_INFINITY) else {
                break;
            };
            self.admit(best);
        }
        // Replacing: the weakest speaker against sustained louder challengers.
        if self.speakers.len() == self.config.max_speakers {
            let weakest = self
                .speakers
                .iter()
                .enumerate()
                .map(|(pos, &i)| (pos, self.slots[i].smoothed_dbov))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((pos, weakest_level)) = weakest else {
                return;
            };
            let bar = weakest_level + self.config.margin_db;
            let mut winner: Option<(usize, f32)> = None;
            for (i, s) in self.slots.iter_mut().enumerate() {
                if !s.in_use || s.speaker {
                    continue;
                }
                if s.voice && s.smoothed_dbov > bar {
                    s.beat_frames = s.beat_frames.saturating_add(1);
                    if s.beat_frames >= self.hold_frames
                        && winner.is_none_or(|(_, l)| s.smoothed_dbov > l)
                    {
                        winner = Some((i, s.smoothed_dbov));
                    }
                } else {
                    s.beat_frames = 0;
                }
            }
            if let Some((i, _)) = winner {
                let out = self.speakers.swap_remove(pos);
                self.slots[out].speaker = false;
                self.slots[out].beat_frames = 0;
                self.admit(i);
            }
        }
    }

    fn loudest_challenger(&self, above: f32) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_use && !s.speaker && s.voice && s.smoothed_dbov > above)
            .max_by(|a, b| a.1.smoothed_dbov.total_cmp(&b.1.smoothed_dbov))
            .map(|(i, _)| i)
    }

    fn admit(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.speaker = true;
        s.beat_frames = 0;
        s.silent_frames = 0;
        self.speakers.push(slot);
        // Other challengers' counts were against a weakest speaker that may have changed;
        // they keep counting: the bar moves with the weakest speaker each frame.
    }

    /// The `n` loudest talking non-speakers among those `eligible` (by smoothed level,
    /// loudest first) into `out`, which is cleared first and must have room for `n`
    /// (nothing is allocated): who could take a place next, by outlasting the hold against
    /// the weakest speaker or by filling a place that frees. A room that selects from RTP
    /// header levels decodes them ahead of time, so that a newcomer's decoder is warm when
    /// it is first mixed; those it decodes anyway are not eligible.
    pub fn challengers(&self, n: usize, out: &mut Vec<usize>, eligible: impl Fn(usize) -> bool) {
        out.clear();
        if n == 0 {
            return;
        }
        for (i, s) in self.slots.iter().enumerate() {
            if !s.in_use || s.speaker || !s.voice || !eligible(i) {
                continue;
            }
            let level = s.smoothed_dbov;
            if out.len() == n {
                if out
                    .last()
                    .is_some_and(|&j| self.slots[j].smoothed_dbov >= level)
                {
                    continue;
                }
                out.pop();
            }
            let pos = out
                .iter()
                .position(|&j| self.slots[j].smoothed_dbov < level)
                .unwrap_or(out.len());
            out.insert(pos, i);
        }
    }

    /// The current speakers (slot indices), at most K.
    pub fn speakers(&self) -> &[usize] {
        &self.speakers
    }

    /// Whether `slot` is talking: may talk, and its smoothed level is above the minimum.
    pub fn is_talking(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.voice)
    }

    /// Whether `slot` is a current speaker.
    pub fn is_speaker(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.speaker)
    }

    /// The smoothed level of `slot` in dBov ([`SILENCE_DBOV`] when unknown).
    pub fn smoothed_dbov(&self, slot: usize) -> f32 {
        self.slots
            .get(slot)
            .map_or(SILENCE_DBOV, |s| s.smoothed_dbov)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    fn selector(n: usize) -> ActiveSpeakers {
        let mut s = ActiveSpeakers::new(SpeakerConfig::default(), FRAME, 0).unwrap();
        for i in 0..n {
            s.reset_slot(i);
        }
        s
    }

    /// Runs `frames` frames where `levels(frame, slot)` is the slot's level, or `None` for
    /// silence.
    fn run(
        s: &mut ActiveSpeakers,
        n: usize,
        frames: u32,
        levels: impl Fn(u32, usize) -> Option<f32>,
    ) {
        for f in 0..frames {
            for i in 0..n {
                match levels(f, i) {
                    Some(l) => s.update(i, l, true),
                    None => s.update(i, SILENCE_DBOV, false),
                }
            }
            s.select();
        }
    }

    fn sorted(s: &ActiveSpeakers) -> Vec<usize> {
        let mut v = s.speakers().to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn steady_talkers_are_selected_on_their_first_frame() {
        let mut s = selector(6);
        let levels = [-20.0, -25.0, -30.0];
        run(&mut s, 6, 1, |_, i| levels.get(i).copied());
        assert_eq!(sorted(&s), [0, 1, 2]);
        run(&mut s, 6, 200, |_, i| levels.get(i).copied());
        assert_eq!(sorted(&s), [0, 1, 2]);
    }

    #[test]
    fn silent_participants_are_never_selected_even_with_places_free() {
        let mut s = selector(5);
        // Slot 0 talks; 1 is loud but without voice; 2 has voice below the floor.
        for _ in 0..100 {
            s.update(0, -30.0, true);
            s.update(1, -10.0, false);
            s.update(2, -70.0, true);
            s.update(3, SILENCE_DBOV, false);
            s.update(4, SILENCE_DBOV, false);
            s.select();
        }
        assert_eq!(sorted(&s), [0]);
    }

    #[test]
    fn a_brief_loud_cough_does_not_replace_a_speaker() {
        let mut s = selector(4);
        let base = |_: u32, i: usize| [Some(-30.0), Some(-32.0), Some(-34.0), None][i];
        run(&mut s, 4, 100, base);
        // 300 ms at -6 dBov: 28 dB above the weakest, but shorter than the hold.
        run(
            &mut s,
            4,
            15,
            |f, i| if i == 3 { Some(-6.0) } else { base(f, i) },
        );
        run(&mut s, 4, 100, base);
        assert_eq!(sorted(&s), [0, 1, 2]);
    }

    #[test]
    fn a_sustained_louder_talker_replaces_the_weakest_after_the_hold() {
        let mut s = selector(4);
        let base = |_: u32, i: usize| [Some(-30.0), Some(-32.0), Some(-40.0), None][i];
        run(&mut s, 4, 100, base);
        let louder = |f: u32, i: usize| if i == 3 { Some(-20.0) } else { base(f, i) };
        let mut switched_at = None;
        for f in 0..100u32 {
            run(&mut s, 4, 1, |_, i| louder(f, i));
            if s.is_speaker(3) {
                switched_at = Some(f);
                break;
            }
        }
        let f = switched_at.expect("the louder talker never got in");
        // The hold is 20 frames; the smoothed level needs a frame or two to clear the bar.
        assert!((19..=24).contains(&f), "switched after {f} frames");
        assert_eq!(sorted(&s), [0, 1, 3], "the weakest (slot 2) made way");
    }

    #[test]
    fn a_speaker_who_falls_silent_leaves_after_the_release_and_its_place_is_refilled() {
        let mut s = selector(4);
        run(&mut s, 4, 50, |_, i| {
            [Some(-30.0), Some(-30.0), Some(-30.0), None][i]
        });
        // Slot 0 stops; nobody else starts.
        let mut left_at = None;
        for f in 0..100u32 {
            run(&mut s, 4, 1, |_, i| {
                [None, Some(-30.0), Some(-30.0), None][i]
            });
            if !s.is_speaker(0) {
                left_at = Some(f);
                break;
            }
        }
        let f = left_at.expect("the silent speaker never left");
        // 600 ms of silence: the 30th silent frame.
        assert_eq!(f, 29, "left after {} frames", f + 1);
        // A quiet newcomer gets the free place on its first voiced frame.
        run(&mut s, 4, 1, |_, i| {
            [None, Some(-30.0), Some(-30.0), Some(-45.0)][i]
        });
        assert_eq!(sorted(&s), [1, 2, 3]);
    }

    #[test]
    fn challengers_are_the_loudest_talking_non_speakers_loudest_first() {
        let mut s = selector(8);
        let levels = [
            Some(-20.0),
            Some(-22.0),
            Some(-24.0),
            Some(-40.0),
            None,
            Some(-30.0),
            Some(-35.0),
            Some(-70.0),
        ];
        run(&mut s, 8, 5, |_, i| levels[i]);
        assert_eq!(sorted(&s), [0, 1, 2]);
        let mut out = Vec::with_capacity(2);
        s.challengers(2, &mut out, |_| true);
        // Slot 4 is silent and slot 7 below the floor: neither may talk.
        assert_eq!(out, [5, 6]);
        s.challengers(4, &mut out, |_| true);
        assert_eq!(out, [5, 6, 3]);
        s.challengers(2, &mut out, |i| i != 5);
        assert_eq!(out, [6, 3]);
        s.challengers(0, &mut out, |_| true);
        assert!(out.is_empty());
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = [
            SpeakerConfig {
                max_speakers: 0,
                ..SpeakerConfig::default()
            },
            SpeakerConfig {
                margin_db: f32::NAN,
                ..SpeakerConfig::default()
            },
            SpeakerConfig {
                attack: Duration::ZERO,
                ..SpeakerConfig::default()
            },
        ];
        for c in bad {
            assert!(ActiveSpeakers::new(c, FRAME, 4).is_err());
        }
    }
}

//! Renders queued prompts into the frames a leg sends (or a room mixes).
//!
//! The [`Ivr`](super::Ivr) decides *what* to say ([`IvrOutput::Play`](super::IvrOutput) /
//! [`IvrOutput::StopPlayback`](super::IvrOutput)); the player turns that into audio, one
//! frame per engine tick, and says when the last prompt has ended so the binary can tell
//! the IVR ([`Ivr::handle_playback_finished`](super::Ivr::handle_playback_finished)).
//!
//! Between two sentences it plays [`PlayerConfig::sentence_gap`] of silence; between two
//! fragments of a composed sentence ("there are" + "seven") only
//! [`PlayerConfig::fragment_gap`]. [`PromptPlayer::stop`] (barge-in) drops everything at
//! once and reports no `Finished`.
//!
//! The player borrows the shared [`Prompts`] on every [`fill`](PromptPlayer::fill) instead
//! of owning them, so one decoded set serves every call at that rate. It never allocates.

use std::time::Duration;

use super::prompts::{PromptId, PromptQueue, Prompts};

/// Prompts waiting in a player at most.
pub const PLAYER_QUEUE_LEN: usize = 16;

/// Pauses of the player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerConfig {
    /// Silence between two prompts when either is a whole sentence (default 300 ms).
    pub sentence_gap: Duration,
    /// Silence between two fragments of a composed sentence (default 40 ms).
    pub fragment_gap: Duration,
}

impl Default for PlayerConfig {
    fn default() -> Self {
        Self {
            sentence_gap: Duration::from_millis(300),
            fragment_gap: Duration::from_millis(40),
        }
    }
}

/// Misuse of the player (caller errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlayerError {
    /// The prompts were decoded at another rate than the player's.
    #[error("prompts at {prompts} Hz given to a player at {player} Hz")]
    RateMismatch {
        /// The prompts' rate.
        prompts: u32,
        /// The player's rate.
        player: u32,
    },
    /// More than [`PLAYER_QUEUE_LEN`] prompts would be waiting; nothing was queued.
    #[error("the player's queue holds at most {PLAYER_QUEUE_LEN} prompts")]
    QueueFull,
    /// A gap longer than a minute.
    #[error("a gap between prompts must be at most 60 s")]
    GapTooLong,
}

/// What one [`PromptPlayer::fill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerStatus {
    /// Nothing was playing: the frame is silence.
    Idle,
    /// The frame holds prompt audio (or a gap) and more follows.
    Playing,
    /// The last queued prompt ended in this frame (the rest of it is silence). Reported
    /// once; tell the IVR.
    Finished,
}

/// Plays queued prompts into frames (see the module docs).
#[derive(Debug, Clone)]
pub struct PromptPlayer {
    sample_rate: u32,
    sentence_gap: usize,
    fragment_gap: usize,
    queue: [PromptId; PLAYER_QUEUE_LEN],
    head: usize,
    queued: usize,
    /// The prompt playing and the next sample of it.
    current: Option<(PromptId, usize)>,
    /// Silence left before `current` starts.
    gap_left: usize,
}

impl PromptPlayer {
    /// A player at `sample_rate` Hz.
    pub fn new(sample_rate: u32, config: PlayerConfig) -> Result<Self, PlayerError> {
        let limit = Duration::from_secs(60);
        if config.sentence_gap > limit || config.fragment_gap > limit {
            return Err(PlayerError::GapTooLong);
        }
        let samples = |d: Duration| (d.as_secs_f64() * f64::from(sample_rate)).round() as usize;
        Ok(Self {
            sample_rate,
            sentence_gap: samples(config.sentence_gap),
            fragment_gap: samples(config.fragment_gap),
            queue: [PromptId::Welcome; PLAYER_QUEUE_LEN],
            head: 0,
            queued: 0,
            current: None,
            gap_left: 0,
        })
    }

    /// The player's sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Appends prompts after whatever is playing; all or nothing.
    pub fn play(&mut self, prompts: &PromptQueue) -> Result<(), PlayerError> {
        if self.queued + prompts.len() > PLAYER_QUEUE_LEN {
            return Err(PlayerError::QueueFull);
        }
        for &id in prompts.as_slice() {
            self.queue[(self.head + self.queued) % PLAYER_QUEUE_LEN] = id;
            self.queued += 1;
        }
        if self.current.is_none() {
            // Nothing was playing: start at once, without a gap.
            self.advance(None);
        }
        Ok(())
    }

    /// Stops at once and forgets the queue (barge-in). No `Finished` follows.
    pub fn stop(&mut self) {
        self.queued = 0;
        self.current = None;
        self.gap_left = 0;
    }

    /// True while a prompt or a gap is playing or queued.
    pub fn is_playing(&self) -> bool {
        self.current.is_some()
    }

    /// The prompt playing now, if any.
    pub fn current(&self) -> Option<PromptId> {
        self.current.map(|(id, _)| id)
    }

    /// Takes the next queued prompt, with the gap that belongs before it.
    fn advance(&mut self, finished: Option<PromptId>) {
        if self.queued == 0 {
            self.current = None;
            return;
        }
        let next = self.queue[self.head];
        self.head = (self.head + 1) % PLAYER_QUEUE_LEN;
        self.queued -= 1;
        self.gap_left = match finished {
            None => 0,
            Some(prev) if prev.is_fragment() && next.is_fragment() => self.fragment_gap,
            Some(_) => self.sentence_gap,
        };
        self.current = Some((next, 0));
    }

    /// Writes the next `out.len()` samples: prompt audio, gaps, then silence.
    pub fn fill(
        &mut self,
        prompts: &Prompts,
        out: &mut [f32],
    ) -> Result<PlayerStatus, PlayerError> {
        if prompts.sample_rate() != self.sample_rate {
            return Err(PlayerError::RateMismatch {
                prompts: prompts.sample_rate(),
                player: self.sample_rate,
            });
        }
        if self.current.is_none() {
            out.fill(0.0);
            return Ok(PlayerStatus::Idle);
        }
        let mut pos = 0;
        while pos < out.len() {
            let Some((id, offset)) = self.current else {
                out[pos..].fill(0.0);
                return Ok(PlayerStatus::Finished);
            };
            if self.gap_left > 0 {
                let n = self.gap_left.min(out.len() - pos);
                out[pos..pos + n].fill(0.0);
                self.gap_left -= n;
                pos += n;
                continue;
            }
            let pcm = prompts.pcm(id);
            let rest = pcm.get(offset..).unwrap_or(&[]);
            let n = rest.len().min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&rest[..n]);
            pos += n;
            if offset + n >= pcm.len() {
                self.advance(Some(id));
            } else {
                self.current = Some((id, offset + n));
            }
        }
        Ok(if self.current.is_some() {
            PlayerStatus::Playing
        } else {
            PlayerStatus::Finished
        })
    }
}

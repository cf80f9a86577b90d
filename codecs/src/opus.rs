//! Opus (RFC 6716) through libopus, behind the [`AudioEncoder`] and
//! [`AudioDecoder`] traits.
//!
//! libopus 1.6 comes statically built with the `opus` crate. This module adds
//! what the media path needs on top of the raw bindings:
//! - a validated [`OpusEncoderConfig`] (every setting is applied through its CTL
//!   and can be read back with [`OpusEncoder::applied_config`]);
//! - an allocation-free packet parser ([`parse_packet`], RFC 6716 section 3.2,
//!   with the same acceptance rules as libopus) so that hostile payloads are
//!   rejected with a typed error before they reach C, and so that the decoder
//!   can tell whether a packet carries in-band FEC (LBRR) without decoding it;
//! - decoding that distinguishes "FEC recovered the lost frame" from "there was
//!   no FEC" (libopus silently falls back to concealment in the latter case;
//!   here [`AudioDecoder::decode_fec`] answers `Ok(None)` and touches nothing).
//!
//! The decoder is mono: libopus downmixes stereo packets. The encoder takes
//! mono, or interleaved stereo when configured so.

use crate::decoder::{AudioDecoder, AudioEncoder, CodecError};
use ::opus as lib;

/// The sample rates libopus can run at.
pub const SAMPLE_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

/// The longest Opus packet: 120 ms.
pub const MAX_PACKET_MS: u32 = 120;

/// A frame of RFC 6716 is at most this many bytes.
const MAX_FRAME_BYTES: usize = 1275;

/// Encoder output buffer that can hold any packet we produce (libopus's
/// recommendation for 60 ms is 4000 bytes).
pub const MAX_PACKET_BYTES: usize = 4000;

/// What the encoder is tuned for (`OPUS_SET_APPLICATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusApplication {
    /// Speech intelligibility first (the default for calls).
    Voip,
    /// Fidelity to the input (music, mixed rooms).
    Audio,
    /// Lowest algorithmic delay: CELT only, no SILK, so no in-band FEC.
    LowDelay,
}

/// What the input is, as a hint to libopus's choice of mode (`OPUS_SET_SIGNAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusSignal {
    /// libopus decides from the application and the input.
    Auto,
    /// Speech: biased towards SILK and hybrid (LPC) modes.
    Voice,
    /// Biased towards the MDCT (CELT) mode.
    Music,
    /// [`OpusSignal::Music`] while no loss is expected or FEC is off, and
    /// [`OpusSignal::Auto`] once FEC is on and loss is expected: in-band FEC (LBRR) exists
    /// only in SILK and hybrid frames. For a conference mix: several voices at once are
    /// not the single talker SILK's speech model is built for, and at 32 kbit/s CELT
    /// encodes a 20 ms frame in a third of the time (`cargo bench --bench codecs --
    /// encode_mix`: `c5_mdct` against `c5_nofec`).
    MusicUntilLoss,
}

/// Bitrate control (`OPUS_SET_VBR`, `OPUS_SET_VBR_CONSTRAINT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusRateControl {
    /// Constant bitrate: every packet of a frame size has the same length.
    Cbr,
    /// Unconstrained variable bitrate (best quality per bit).
    Vbr,
    /// Variable bitrate whose short-term average stays at the target.
    ConstrainedVbr,
}

/// The channels of an encoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusChannels {
    /// One channel.
    Mono,
    /// Two channels, interleaved L R L R.
    Stereo,
}

impl OpusChannels {
    fn count(self) -> usize {
        match self {
            OpusChannels::Mono => 1,
            OpusChannels::Stereo => 2,
        }
    }
}

/// Everything an [`OpusEncoder`] is built from. [`OpusEncoderConfig::validate`]
/// says which values are accepted; [`Default`] is a 48 kHz mono VoIP encoder at
/// 32 kbit/s, 20 ms frames, with FEC tuned for 10 % loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusEncoderConfig {
    /// 8000, 12000, 16000, 24000 or 48000.
    pub sample_rate: u32,
    /// Input channels.
    pub channels: OpusChannels,
    /// Target bitrate in bit/s, 6000..=510000.
    pub bitrate_bps: u32,
    /// 0 (fastest) ..= 10 (best).
    pub complexity: u8,
    /// CBR, VBR or constrained VBR.
    pub rate_control: OpusRateControl,
    /// In-band FEC (LBRR). libopus only emits it when `expected_loss_percent > 0`
    /// and the encoder is in a SILK or hybrid mode (not with `LowDelay`).
    pub inband_fec: bool,
    /// Discontinuous transmission: 1-byte packets (or none) on silence.
    pub dtx: bool,
    /// Expected packet loss, 0..=100; sizes the FEC and the encoder's robustness.
    pub expected_loss_percent: u8,
    /// What the encoder is tuned for.
    pub application: OpusApplication,
    /// The mode hint.
    pub signal: OpusSignal,
    /// Frame duration: 10, 20, 40 or 60 ms.
    pub frame_ms: u32,
}

impl Default for OpusEncoderConfig {
    fn default() -> Self {
        Self {
            sample_rate: 48000,
            channels: OpusChannels::Mono,
            bitrate_bps: 32000,
            complexity: 9,
            rate_control: OpusRateControl::Vbr,
            inband_fec: true,
            dtx: false,
            expected_loss_percent: 10,
            application: OpusApplication::Voip,
            signal: OpusSignal::Auto,
            frame_ms: 20,
        }
    }
}

impl OpusEncoderConfig {
    /// Checks every value; the first bad one is the error.
    pub fn validate(&self) -> Result<(), CodecError> {
        check_rate(self.sample_rate)?;
        if !(6000..=510_000).contains(&self.bitrate_bps) {
            return Err(bad_config("bitrate_bps", self.bitrate_bps));
        }
        if self.complexity > 10 {
            return Err(bad_config("complexity", self.complexity));
        }
        if self.expected_loss_percent > 100 {
            return Err(bad_config(
                "expected_loss_percent",
                self.expected_loss_percent,
            ));
        }
        frame_size_ctl(self.frame_ms)?;
        Ok(())
    }

    /// Samples per channel in one frame.
    pub fn frame_samples(&self) -> usize {
        (self.sample_rate / 1000 * self.frame_ms) as usize
    }
}

fn bad_config(what: &'static str, value: impl Into<i64>) -> CodecError {
    CodecError::BadConfig {
        what,
        value: value.into(),
    }
}

fn check_rate(rate: u32) -> Result<(), CodecError> {
    if SAMPLE_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(bad_config("sample_rate", rate))
    }
}

/// The `OPUS_SET_SIGNAL` value for `c` (see [`OpusSignal::MusicUntilLoss`]).
fn signal_ctl(c: &OpusEncoderConfig) -> lib::Signal {
    match c.signal {
        OpusSignal::Auto => lib::Signal::Auto,
        OpusSignal::Voice => lib::Signal::Voice,
        OpusSignal::Music => lib::Signal::Music,
        OpusSignal::MusicUntilLoss if c.inband_fec && c.expected_loss_percent > 0 => {
            lib::Signal::Auto
        }
        OpusSignal::MusicUntilLoss => lib::Signal::Music,
    }
}

fn frame_size_ctl(frame_ms: u32) -> Result<lib::FrameSize, CodecError> {
    match frame_ms {
        10 => Ok(lib::FrameSize::Ms10),
        20 => Ok(lib::FrameSize::Ms20),
        40 => Ok(lib::FrameSize::Ms40),
        60 => Ok(lib::FrameSize::Ms60),
        other => Err(bad_config("frame_ms", other)),
    }
}

/// An Opus encoder for one outgoing stream (or one shared mix).
pub struct OpusEncoder {
    inner: lib::Encoder,
    config: OpusEncoderConfig,
    frame_samples: usize,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// Builds an encoder and applies every setting of `config`.
    pub fn new(config: OpusEncoderConfig) -> Result<Self, CodecError> {
        config.validate()?;
        let channels = match config.channels {
            OpusChannels::Mono => lib::Channels::Mono,
            OpusChannels::Stereo => lib::Channels::Stereo,
        };
        let application = match config.application {
            OpusApplication::Voip => lib::Application::Voip,
            OpusApplication::Audio => lib::Application::Audio,
            OpusApplication::LowDelay => lib::Application::LowDelay,
        };
        let inner = lib::Encoder::new(config.sample_rate, channels, application)?;
        let mut enc = Self {
            inner,
            config,
            frame_samples: config.frame_samples(),
        };
        enc.apply(&config)?;
        Ok(enc)
    }

    fn apply(&mut self, c: &OpusEncoderConfig) -> Result<(), CodecError> {
        let e = &mut self.inner;
        // Validated above: 6000..=510000 fits an i32.
        e.set_bitrate(lib::Bitrate::Bits(c.bitrate_bps as i32))?;
        e.set_complexity(i32::from(c.complexity))?;
        let (vbr, constrained) = match c.rate_control {
            OpusRateControl::Cbr => (false, false),
            OpusRateControl::Vbr => (true, false),
            OpusRateControl::ConstrainedVbr => (true, true),
        };
        e.set_vbr(vbr)?;
        e.set_vbr_constraint(constrained)?;
        e.set_inband_fec(c.inband_fec)?;
        e.set_dtx(c.dtx)?;
        e.set_packet_loss_perc(i32::from(c.expected_loss_percent))?;
        e.set_expert_frame_duration(frame_size_ctl(c.frame_ms)?)?;
        e.set_signal(signal_ctl(c))?;
        Ok(())
    }

    /// Changes the target bitrate on the fly (e.g. from bandwidth estimation).
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), CodecError> {
        if !(6000..=510_000).contains(&bitrate_bps) {
            return Err(bad_config("bitrate_bps", bitrate_bps));
        }
        // In range, fits an i32.
        self.inner
            .set_bitrate(lib::Bitrate::Bits(bitrate_bps as i32))?;
        self.config.bitrate_bps = bitrate_bps;
        Ok(())
    }

    /// Changes the expected loss (and so the FEC overhead) on the fly.
    pub fn set_expected_loss_percent(&mut self, percent: u8) -> Result<(), CodecError> {
        if percent > 100 {
            return Err(bad_config("expected_loss_percent", percent));
        }
        self.inner.set_packet_loss_perc(i32::from(percent))?;
        self.config.expected_loss_percent = percent;
        if self.config.signal == OpusSignal::MusicUntilLoss {
            self.inner.set_signal(signal_ctl(&self.config))?;
        }
        Ok(())
    }

    /// The loss, in percent, the in-band FEC is sized for; `None` without FEC.
    pub fn fec_loss_percent(&self) -> Option<u8> {
        self.config
            .inband_fec
            .then_some(self.config.expected_loss_percent)
    }

    /// The configuration this encoder was built with (and updated by the setters).
    pub fn config(&self) -> &OpusEncoderConfig {
        &self.config
    }

    /// Reads every setting back from libopus through its CTL getters, so a test
    /// (or a health check) can see what the encoder really runs with.
    pub fn applied_config(&mut self) -> Result<OpusEncoderConfig, CodecError> {
        let e = &mut self.inner;
        let sample_rate = e.get_sample_rate()?;
        let bitrate_bps = match e.get_bitrate()? {
            lib::Bitrate::Bits(b) => u32::try_from(b).map_err(|_| bad_config("bitrate_bps", b))?,
            lib::Bitrate::Max | lib::Bitrate::Auto => {
                return Err(CodecError::BadConfig {
                    what: "bitrate_bps (not explicit)",
                    value: -1,
                });
            }
        };
        let complexity = e.get_complexity()?;
        let rate_control = match (e.get_vbr()?, e.get_vbr_constraint()?) {
            (false, _) => OpusRateControl::Cbr,
            (true, false) => OpusRateControl::Vbr,
            (true, true) => OpusRateControl::ConstrainedVbr,
        };
        let application = match e.get_application()? {
            lib::Application::Voip => OpusApplication::Voip,
            lib::Application::Audio => OpusApplication::Audio,
            lib::Application::LowDelay => OpusApplication::LowDelay,
        };
        let frame_ms = match e.get_expert_frame_duration()? {
            lib::FrameSize::Ms10 => 10,
            lib::FrameSize::Ms20 => 20,
            lib::FrameSize::Ms40 => 40,
            lib::FrameSize::Ms60 => 60,
            _ => 0,
        };
        let loss = e.get_packet_loss_perc()?;
        let in_force = e.get_signal()?;
        // libopus holds the hint in force; `MusicUntilLoss` is ours, read as consistent.
        let signal = if self.config.signal == OpusSignal::MusicUntilLoss
            && in_force == signal_ctl(&self.config)
        {
            OpusSignal::MusicUntilLoss
        } else {
            match in_force {
                lib::Signal::Auto => OpusSignal::Auto,
                lib::Signal::Voice => OpusSignal::Voice,
                lib::Signal::Music => OpusSignal::Music,
            }
        };
        Ok(OpusEncoderConfig {
            sample_rate,
            channels: self.config.channels,
            bitrate_bps,
            complexity: u8::try_from(complexity)
                .map_err(|_| bad_config("complexity", complexity))?,
            rate_control,
            inband_fec: e.get_inband_fec()?,
            dtx: e.get_dtx()?,
            expected_loss_percent: u8::try_from(loss)
                .map_err(|_| bad_config("expected_loss_percent", loss))?,
            application,
            signal,
            frame_ms,
        })
    }

    /// True when the last encoded frame was DTX silence (`OPUS_GET_IN_DTX`).
    pub fn in_dtx(&mut self) -> Result<bool, CodecError> {
        Ok(self.inner.get_in_dtx()?)
    }

    /// The encoder's look-ahead in samples (`OPUS_GET_LOOKAHEAD`).
    pub fn lookahead(&mut self) -> Result<usize, CodecError> {
        let l = self.inner.get_lookahead()?;
        usize::try_from(l).map_err(|_| bad_config("lookahead", l))
    }
}

impl AudioEncoder for OpusEncoder {
    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Encodes one frame. A returned length of 1 or 2 bytes is a DTX packet
    /// that RFC 7587 allows the sender not to send.
    fn encode(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, CodecError> {
        let want = self.frame_samples * self.config.channels.count();
        if pcm.len() != want {
            return Err(CodecError::BadFrameSize {
                got: pcm.len(),
                rule: "the configured frame duration times the channels",
            });
        }
        if out.is_empty() {
            return Err(CodecError::BufferTooSmall { needed: 1, got: 0 });
        }
        // Larger buffers are never needed; capping keeps the length in c_int range.
        let cap = out.len().min(MAX_PACKET_BYTES);
        Ok(self.inner.encode_float(pcm, &mut out[..cap])?)
    }
}

/// The coding mode of an Opus packet (from its TOC byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusMode {
    /// SILK only (speech, 8-16 kHz audio bandwidth).
    Silk,
    /// SILK below 8 kHz plus CELT above.
    Hybrid,
    /// CELT only (MDCT); carries no in-band FEC.
    Celt,
}

/// What [`parse_packet`] learns from an Opus packet without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusPacketInfo<'a> {
    /// The TOC byte.
    pub toc: u8,
    /// Coding mode.
    pub mode: OpusMode,
    /// True when the packet is coded as stereo.
    pub stereo: bool,
    /// Frames in the packet (1..=48).
    pub frame_count: usize,
    /// Duration of each frame in units of 2.5 ms (1, 2, 4, 8, 16 or 24).
    pub frame_units_2_5ms: usize,
    /// The compressed bytes of the first frame (may be empty: DTX).
    pub first_frame: &'a [u8],
}

impl OpusPacketInfo<'_> {
    /// Samples per channel in one frame at `sample_rate`.
    pub fn samples_per_frame(&self, sample_rate: u32) -> usize {
        sample_rate as usize / 400 * self.frame_units_2_5ms
    }

    /// Samples per channel in the whole packet at `sample_rate`.
    pub fn samples(&self, sample_rate: u32) -> usize {
        self.samples_per_frame(sample_rate) * self.frame_count
    }

    /// True when the first frame carries LBRR (in-band FEC) data for the frame
    /// before this packet. The LBRR flag(s) are the first range-coded bits after
    /// the per-SILK-frame VAD flags, coded with probability 1/2, so they can be
    /// read directly from the first byte.
    pub fn has_fec(&self) -> bool {
        if self.mode == OpusMode::Celt {
            return false;
        }
        let Some(&b) = self.first_frame.first() else {
            return false;
        };
        // SILK frames per Opus frame: 1 for 10 and 20 ms, 2 for 40, 3 for 60.
        let silk_frames = (self.frame_units_2_5ms / 8).max(1) as u32;
        let mid = (b >> (7 - silk_frames)) & 1 == 1;
        let side = self.stereo && (b >> (6 - 2 * silk_frames)) & 1 == 1;
        mid || side
    }
}

/// Parses the framing of an Opus packet (RFC 6716 section 3.2) without
/// allocating. Accepts exactly what libopus's `opus_packet_parse` accepts;
/// anything else is `CodecError::BadPacket`.
pub fn parse_packet(packet: &[u8]) -> Result<OpusPacketInfo<'_>, CodecError> {
    let Some((&toc, body)) = packet.split_first() else {
        return Err(CodecError::BadPacket("empty Opus packet"));
    };
    let config = toc >> 3;
    let (mode, quarter) = match config {
        0..=11 => (OpusMode::Silk, [4, 8, 16, 24][usize::from(config % 4)]),
        12..=15 => (OpusMode::Hybrid, [4, 8][usize::from(config % 2)]),
        _ => (OpusMode::Celt, [1, 2, 4, 8][usize::from(config % 4)]),
    };
    // Lengths are signed as in RFC 6716's procedure: intermediate values can
    // go negative and are then rejected.
    let mut len = body.len() as i64;
    let mut pos = 0usize;
    let (frame_count, first_len, last_len) = match toc & 3 {
        0 => (1, len, len),
        1 => {
            if len % 2 != 0 {
                return Err(CodecError::BadPacket("code 1 packet with odd length"));
            }
            (2, len / 2, len / 2)
        }
        2 => {
            let (size, bytes) = parse_size(body, len)?;
            len -= bytes;
            if size > len {
                return Err(CodecError::BadPacket("code 2 frame longer than packet"));
            }
            pos += bytes as usize;
            (2, size, len - size)
        }
        _ => {
            let Some(&ch) = body.first() else {
                return Err(CodecError::BadPacket("code 3 packet without count byte"));
            };
            pos = 1;
            len -= 1;
            let count = i64::from(ch & 0x3f);
            if count == 0 || count * quarter as i64 > 48 {
                return Err(CodecError::BadPacket("code 3 frame count out of range"));
            }
            if ch & 0x40 != 0 {
                loop {
                    if len <= 0 {
                        return Err(CodecError::BadPacket("truncated padding length"));
                    }
                    let p = body[pos];
                    pos += 1;
                    len -= 1;
                    len -= if p == 255 { 254 } else { i64::from(p) };
                    if p != 255 {
                        break;
                    }
                }
            }
            if len < 0 {
                return Err(CodecError::BadPacket("padding longer than packet"));
            }
            if ch & 0x80 != 0 {
                // VBR: explicit lengths for all frames but the last.
                let mut last = len;
                let mut first = None;
                for _ in 0..count - 1 {
                    let (size, bytes) = parse_size(&body[pos..], len)?;
                    len -= bytes;
                    if size > len {
                        return Err(CodecError::BadPacket("code 3 frame longer than packet"));
                    }
                    pos += bytes as usize;
                    last -= bytes + size;
                    first.get_or_insert(size);
                }
                if last < 0 {
                    return Err(CodecError::BadPacket("code 3 frames longer than packet"));
                }
                (count as usize, first.unwrap_or(last), last)
            } else {
                let each = len / count;
                if each * count != len {
                    return Err(CodecError::BadPacket("code 3 CBR length not a multiple"));
                }
                (count as usize, each, each)
            }
        }
    };
    if last_len > MAX_FRAME_BYTES as i64 || first_len > MAX_FRAME_BYTES as i64 {
        return Err(CodecError::BadPacket("frame longer than 1275 bytes"));
    }
    // first_len is in 0..=1275 and pos + first_len is within body (checked above).
    let start = pos.min(body.len());
    let end = (start + first_len as usize).min(body.len());
    Ok(OpusPacketInfo {
        toc,
        mode,
        stereo: toc & 0x04 != 0,
        frame_count,
        frame_units_2_5ms: quarter,
        first_frame: &body[start..end],
    })
}

/// One frame length field: one byte below 252, else two (RFC 6716 3.2.1).
fn parse_size(data: &[u8], len: i64) -> Result<(i64, i64), CodecError> {
    match (data.first(), data.get(1)) {
        (Some(&b0), _) if len >= 1 && b0 < 252 => Ok((i64::from(b0), 1)),
        (Some(&b0), Some(&b1)) if len >= 2 => Ok((4 * i64::from(b1) + i64::from(b0), 2)),
        _ => Err(CodecError::BadPacket("truncated frame length")),
    }
}

/// libopus's "invalid packet" is the peer's fault, not ours.
fn decode_error(e: lib::Error) -> CodecError {
    match e.code() {
        lib::ErrorCode::InvalidPacket => CodecError::BadPacket("libopus rejected the packet"),
        _ => e.into(),
    }
}

/// A mono Opus decoder for one incoming stream.
pub struct OpusDecoder {
    inner: lib::Decoder,
    sample_rate: u32,
    /// 2.5 ms at the output rate: PLC and FEC sizes must be multiples of it.
    quantum: usize,
    /// libopus ignores FEC after a CELT-only packet; mirrored here so that
    /// `decode_fec` can answer `None` instead of silently concealing.
    last_mode: Option<OpusMode>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("sample_rate", &self.sample_rate)
            .field("last_mode", &self.last_mode)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A mono decoder producing `sample_rate` Hz (8, 12, 16, 24 or 48 kHz).
    pub fn new(sample_rate: u32) -> Result<Self, CodecError> {
        check_rate(sample_rate)?;
        Ok(Self {
            inner: lib::Decoder::new(sample_rate, lib::Channels::Mono)?,
            sample_rate,
            quantum: sample_rate as usize / 400,
            last_mode: None,
        })
    }

    /// The most samples one packet can decode to (120 ms).
    pub fn max_frame_samples(&self) -> usize {
        self.quantum * 48
    }

    /// Resets the decoder to its freshly built state (e.g. on an SSRC change).
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.inner.reset_state()?;
        self.last_mode = None;
        Ok(())
    }

    /// The pitch period (in samples) of the last decoded frame, 0 if unvoiced.
    pub fn pitch(&mut self) -> Result<usize, CodecError> {
        let p = self.inner.get_pitch()?;
        Ok(usize::try_from(p).unwrap_or(0))
    }

    fn check_plc_len(&self, len: usize) -> Result<(), CodecError> {
        if len == 0 || !len.is_multiple_of(self.quantum) || len > self.max_frame_samples() {
            return Err(CodecError::BadFrameSize {
                got: len,
                rule: "a multiple of 2.5 ms, at most 120 ms",
            });
        }
        Ok(())
    }
}

impl AudioDecoder for OpusDecoder {
    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn samples_in(&self, payload: &[u8]) -> Result<usize, CodecError> {
        Ok(parse_packet(payload)?.samples(self.sample_rate))
    }

    fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<usize, CodecError> {
        let info = parse_packet(payload)?;
        let n = info.samples(self.sample_rate);
        if out.len() < n {
            return Err(CodecError::BufferTooSmall {
                needed: n,
                got: out.len(),
            });
        }
        let got = self
            .inner
            .decode_float(payload, &mut out[..n], false)
            .map_err(decode_error)?;
        self.last_mode = Some(info.mode);
        Ok(got)
    }

    /// FEC covers the last `frame` of the lost packet's duration (the next
    /// packet's frame duration); when `out` is longer, its start is concealed
    /// and the FEC frame fills the tail (libopus's behaviour).
    fn decode_fec(
        &mut self,
        next_payload: &[u8],
        out: &mut [f32],
    ) -> Result<Option<usize>, CodecError> {
        self.check_plc_len(out.len())?;
        let info = parse_packet(next_payload)?;
        let usable = info.has_fec()
            && self.last_mode != Some(OpusMode::Celt)
            && out.len() >= info.samples_per_frame(self.sample_rate);
        if !usable {
            return Ok(None);
        }
        let got = self
            .inner
            .decode_float(next_payload, out, true)
            .map_err(decode_error)?;
        self.last_mode = Some(info.mode);
        Ok(Some(got))
    }

    fn conceal(&mut self, out: &mut [f32]) -> Result<usize, CodecError> {
        self.check_plc_len(out.len())?;
        Ok(self.inner.decode_float(&[], out, false)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn speech_16k() -> Vec<f32> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/audio/speech-16k.wav"
        );
        let mut r = hound::WavReader::open(path).expect("test speech file");
        assert_eq!(r.spec().sample_rate, 16000);
        r.samples::<i16>()
            .map(|s| f32::from(s.expect("valid wav sample")) / 32768.0)
            .collect()
    }

    fn encode_all(enc: &mut OpusEncoder, pcm: &[f32]) -> Vec<Vec<u8>> {
        let n = enc.frame_samples();
        let mut buf = [0u8; MAX_PACKET_BYTES];
        pcm.chunks_exact(n)
            .map(|frame| {
                let len = enc.encode(frame, &mut buf).expect("encode");
                buf[..len].to_vec()
            })
            .collect()
    }

    fn correlation(a: &[f32], b: &[f32]) -> f64 {
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in a.iter().zip(b) {
            ab += f64::from(x) * f64::from(y);
            aa += f64::from(x) * f64::from(x);
            bb += f64::from(y) * f64::from(y);
        }
        ab / (aa * bb).sqrt()
    }

    fn voip_16k() -> OpusEncoderConfig {
        OpusEncoderConfig {
            sample_rate: 16000,
            bitrate_bps: 32000,
            expected_loss_percent: 20,
            ..OpusEncoderConfig::default()
        }
    }

    #[test]
    fn a_speech_round_trip_keeps_the_waveform() {
        let speech = speech_16k();
        let mut enc = OpusEncoder::new(voip_16k()).unwrap();
        let delay = enc.lookahead().unwrap();
        let packets = encode_all(&mut enc, &speech);
        let mut dec = OpusDecoder::new(16000).unwrap();
        let mut decoded = Vec::with_capacity(speech.len());
        let mut frame = [0f32; 5760];
        for p in &packets {
            let n = dec.decode(p, &mut frame).unwrap();
            assert_eq!(n, 320);
            decoded.extend_from_slice(&frame[..n]);
        }
        let c = correlation(&speech[..decoded.len() - delay], &decoded[delay..]);
        let bytes: usize = packets.iter().map(Vec::len).sum();
        let kbps = bytes as f64 * 8.0 / (packets.len() as f64 * 0.02) / 1000.0;
        println!(
            "opus 16k 32kbit/s round trip: correlation {c:.4}, {kbps:.1} kbit/s, delay {delay}"
        );
        assert!(c > 0.9, "correlation {c}");
    }

    /// Drops every 7th packet of coded speech and measures, over the dropped
    /// frames, the SNR of FEC recovery and of concealment against the decode
    /// without loss.
    #[test]
    fn fec_recovers_a_lost_frame_better_than_concealment() {
        let speech = speech_16k();
        let mut enc = OpusEncoder::new(voip_16k()).unwrap();
        let packets = encode_all(&mut enc, &speech);
        let with_fec = packets
            .iter()
            .filter(|p| parse_packet(p).unwrap().has_fec())
            .count();
        println!("{with_fec} of {} packets carry FEC", packets.len());
        assert!(with_fec > packets.len() / 2);

        let mut clean = OpusDecoder::new(16000).unwrap();
        let mut fec = OpusDecoder::new(16000).unwrap();
        let mut plc = OpusDecoder::new(16000).unwrap();
        let (mut ref_f, mut fec_f, mut plc_f) = ([0f32; 320], [0f32; 320], [0f32; 320]);
        let (mut sig, mut fec_err, mut plc_err) = (0.0f64, 0.0f64, 0.0f64);
        let (mut lost, mut recovered) = (0, 0);
        for i in 0..packets.len() - 1 {
            clean.decode(&packets[i], &mut ref_f).unwrap();
            if i % 7 == 3 {
                lost += 1;
                match fec.decode_fec(&packets[i + 1], &mut fec_f).unwrap() {
                    Some(n) => {
                        assert_eq!(n, 320);
                        recovered += 1;
                    }
                    None => {
                        fec.conceal(&mut fec_f).unwrap();
                    }
                }
                plc.conceal(&mut plc_f).unwrap();
                for k in 0..320 {
                    let r = f64::from(ref_f[k]);
                    sig += r * r;
                    fec_err += (r - f64::from(fec_f[k])).powi(2);
                    plc_err += (r - f64::from(plc_f[k])).powi(2);
                }
            } else {
                fec.decode(&packets[i], &mut fec_f).unwrap();
                plc.decode(&packets[i], &mut plc_f).unwrap();
            }
        }
        let fec_snr = 10.0 * (sig / fec_err).log10();
        let plc_snr = 10.0 * (sig / plc_err).log10();
        println!(
            "{lost} lost frames, {recovered} recovered by FEC: SNR FEC {fec_snr:.1} dB, PLC {plc_snr:.1} dB"
        );
        assert!(recovered * 2 > lost);
        assert!(
            fec_snr > plc_snr + 3.0,
            "FEC {fec_snr} dB, PLC {plc_snr} dB"
        );
    }

    #[test]
    fn dtx_sends_tiny_packets_on_silence() {
        let silence = vec![0f32; 48000 * 2];
        let mut config = OpusEncoderConfig {
            dtx: true,
            ..OpusEncoderConfig::default()
        };
        let mut enc = OpusEncoder::new(config).unwrap();
        let dtx_packets = encode_all(&mut enc, &silence);
        assert!(enc.in_dtx().unwrap());
        config.dtx = false;
        let plain_packets = encode_all(&mut OpusEncoder::new(config).unwrap(), &silence);
        // Skip the first 200 ms: DTX starts after a short hangover.
        let tiny = dtx_packets[10..].iter().filter(|p| p.len() <= 2).count();
        let plain_tiny = plain_packets[10..].iter().filter(|p| p.len() <= 2).count();
        let total = dtx_packets.len() - 10;
        println!(
            "silence: {tiny}/{total} DTX packets <= 2 bytes; without DTX {plain_tiny}/{total}"
        );
        assert!(tiny * 10 >= total * 9);
        assert_eq!(plain_tiny, 0);
        // A DTX packet decodes to a full frame of (near) silence.
        let mut dec = OpusDecoder::new(48000).unwrap();
        let mut out = [0f32; 960];
        assert_eq!(dec.decode(&dtx_packets[50], &mut out).unwrap(), 960);
        assert!(out.iter().all(|x| x.abs() < 1e-3));
    }

    #[test]
    fn music_until_loss_codes_mdct_on_a_clean_path_and_silk_with_fec_once_loss_is_expected() {
        // The test speech at 48 kHz (each sample three times: the mode choice, not the
        // fidelity, is under test).
        let speech: Vec<f32> = speech_16k().iter().flat_map(|&x| [x; 3]).collect();
        let third = speech.len() / 3 / 960 * 960;
        let mut enc = OpusEncoder::new(OpusEncoderConfig {
            complexity: 5,
            expected_loss_percent: 0,
            signal: OpusSignal::MusicUntilLoss,
            ..OpusEncoderConfig::default()
        })
        .unwrap();
        let modes = |packets: &[Vec<u8>]| -> (usize, usize, usize) {
            // After a few frames of mode transition.
            let settled = &packets[5..];
            let celt = settled
                .iter()
                .filter(|p| parse_packet(p).unwrap().mode == OpusMode::Celt)
                .count();
            let fec = settled
                .iter()
                .filter(|p| parse_packet(p).unwrap().has_fec())
                .count();
            (celt, fec, settled.len())
        };
        let (celt, fec, n) = modes(&encode_all(&mut enc, &speech[..third]));
        assert_eq!((celt, fec), (n, 0), "clean path: every frame CELT, no FEC");
        enc.set_expected_loss_percent(10).unwrap();
        assert_eq!(
            enc.applied_config().unwrap().signal,
            OpusSignal::MusicUntilLoss
        );
        let (celt, fec, n) = modes(&encode_all(&mut enc, &speech[third..2 * third]));
        assert_eq!(celt, 0, "with loss expected: SILK or hybrid frames only");
        assert!(fec * 2 > n, "most frames carry FEC: {fec} of {n}");
        enc.set_expected_loss_percent(0).unwrap();
        let (celt, _, n) = modes(&encode_all(&mut enc, &speech[2 * third..3 * third]));
        assert_eq!(celt, n, "back to CELT when the loss is gone");
    }

    #[test]
    fn every_config_option_is_applied_to_libopus() {
        let configs = [
            OpusEncoderConfig::default(),
            OpusEncoderConfig {
                sample_rate: 8000,
                channels: OpusChannels::Mono,
                bitrate_bps: 12000,
                complexity: 0,
                rate_control: OpusRateControl::Cbr,
                inband_fec: false,
                dtx: true,
                expected_loss_percent: 0,
                application: OpusApplication::Audio,
                signal: OpusSignal::Music,
                frame_ms: 60,
            },
            OpusEncoderConfig {
                sample_rate: 24000,
                channels: OpusChannels::Stereo,
                bitrate_bps: 64000,
                complexity: 5,
                rate_control: OpusRateControl::ConstrainedVbr,
                inband_fec: true,
                dtx: false,
                expected_loss_percent: 35,
                application: OpusApplication::LowDelay,
                signal: OpusSignal::Voice,
                frame_ms: 10,
            },
            OpusEncoderConfig {
                sample_rate: 12000,
                bitrate_bps: 510_000,
                complexity: 10,
                frame_ms: 40,
                expected_loss_percent: 100,
                signal: OpusSignal::MusicUntilLoss,
                ..OpusEncoderConfig::default()
            },
        ];
        for config in configs {
            let mut enc = OpusEncoder::new(config).unwrap();
            assert_eq!(enc.applied_config().unwrap(), config);
            assert_eq!(
                enc.frame_samples(),
                (config.sample_rate / 1000 * config.frame_ms) as usize
            );
        }
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        enc.set_bitrate(20000).unwrap();
        enc.set_expected_loss_percent(3).unwrap();
        let applied = enc.applied_config().unwrap();
        assert_eq!(
            (applied.bitrate_bps, applied.expected_loss_percent),
            (20000, 3)
        );
        assert_eq!(&applied, enc.config());
    }

    #[test]
    fn cbr_packets_all_have_the_same_length() {
        let speech = speech_16k();
        let config = OpusEncoderConfig {
            rate_control: OpusRateControl::Cbr,
            ..voip_16k()
        };
        let packets = encode_all(&mut OpusEncoder::new(config).unwrap(), &speech[..16000 * 3]);
        assert!(
            packets.iter().all(|p| p.len() == 80),
            "32 kbit/s * 20 ms = 80 bytes"
        );
    }

    #[test]
    fn an_invalid_config_is_a_typed_error() {
        let base = OpusEncoderConfig::default();
        let bad = [
            (
                OpusEncoderConfig {
                    sample_rate: 44100,
                    ..base
                },
                "sample_rate",
            ),
            (
                OpusEncoderConfig {
                    frame_ms: 25,
                    ..base
                },
                "frame_ms",
            ),
            (
                OpusEncoderConfig {
                    frame_ms: 5,
                    ..base
                },
                "frame_ms",
            ),
            (
                OpusEncoderConfig {
                    complexity: 11,
                    ..base
                },
                "complexity",
            ),
            (
                OpusEncoderConfig {
                    bitrate_bps: 5999,
                    ..base
                },
                "bitrate_bps",
            ),
            (
                OpusEncoderConfig {
                    bitrate_bps: 600_000,
                    ..base
                },
                "bitrate_bps",
            ),
            (
                OpusEncoderConfig {
                    expected_loss_percent: 101,
                    ..base
                },
                "expected_loss_percent",
            ),
        ];
        for (config, field) in bad {
            match OpusEncoder::new(config) {
                Err(CodecError::BadConfig { what, .. }) => assert_eq!(what, field),
                other => panic!("{config:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            OpusDecoder::new(11025),
            Err(CodecError::BadConfig { .. })
        ));
        let mut enc = OpusEncoder::new(base).unwrap();
        assert!(matches!(
            enc.set_bitrate(100),
            Err(CodecError::BadConfig { .. })
        ));
    }

    #[test]
    fn wrong_frame_and_buffer_sizes_are_errors() {
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let mut out = [0u8; 1500];
        assert!(matches!(
            enc.encode(&[0.0; 959], &mut out),
            Err(CodecError::BadFrameSize { got: 959, .. })
        ));
        assert!(matches!(
            enc.encode(&[0.0; 960], &mut []),
            Err(CodecError::BufferTooSmall { .. })
        ));
        let n = enc.encode(&[0.0; 960], &mut out).unwrap();
        let mut dec = OpusDecoder::new(48000).unwrap();
        assert!(matches!(
            dec.decode(&out[..n], &mut [0.0; 959]),
            Err(CodecError::BufferTooSmall {
                needed: 960,
                got: 959
            })
        ));
        // Concealment and FEC sizes must be whole multiples of 2.5 ms, <= 120 ms.
        for len in [0, 7, 119, 5761] {
            let mut buf = vec![0f32; len];
            assert!(matches!(
                dec.conceal(&mut buf),
                Err(CodecError::BadFrameSize { .. })
            ));
            assert!(matches!(
                dec.decode_fec(&out[..n], &mut buf),
                Err(CodecError::BadFrameSize { .. })
            ));
        }
        assert_eq!(dec.conceal(&mut [0.0; 120]).unwrap(), 120);
        assert_eq!(dec.conceal(&mut [0.0; 5760]).unwrap(), 5760);
    }

    /// Asks for FEC from packets that cannot carry it and checks that the
    /// answer is `None` and that the decoder state did not move (the following
    /// decode is bit-identical to a decoder that was never asked).
    #[test]
    fn decode_fec_without_fec_is_none_and_leaves_the_state_alone() {
        let speech = speech_16k();
        let no_fec = OpusEncoderConfig {
            inband_fec: false,
            ..voip_16k()
        };
        let celt = OpusEncoderConfig {
            application: OpusApplication::LowDelay,
            ..voip_16k()
        };
        for config in [no_fec, celt] {
            let packets = encode_all(&mut OpusEncoder::new(config).unwrap(), &speech[..16000 * 4]);
            assert!(packets.iter().all(|p| !parse_packet(p).unwrap().has_fec()));
            let mut asked = OpusDecoder::new(16000).unwrap();
            let mut plain = OpusDecoder::new(16000).unwrap();
            let (mut a, mut b) = ([0f32; 320], [0f32; 320]);
            for i in 0..packets.len() - 1 {
                assert_eq!(asked.decode_fec(&packets[i + 1], &mut a).unwrap(), None);
                asked.decode(&packets[i], &mut a).unwrap();
                plain.decode(&packets[i], &mut b).unwrap();
                assert_eq!(a, b, "packet {i}");
            }
        }
    }

    #[test]
    fn fec_longer_than_the_next_frame_conceals_the_start() {
        let speech = speech_16k();
        let config = OpusEncoderConfig {
            frame_ms: 20,
            ..voip_16k()
        };
        let packets = encode_all(&mut OpusEncoder::new(config).unwrap(), &speech[..16000 * 2]);
        let i = (20..packets.len())
            .find(|&i| parse_packet(&packets[i]).unwrap().has_fec())
            .expect("a packet with FEC");
        let mut dec = OpusDecoder::new(16000).unwrap();
        let mut f = [0f32; 640];
        for p in &packets[..i - 2] {
            dec.decode(p, &mut f).unwrap();
        }
        // Two 20 ms frames lost: 40 ms asked, the FEC covers the last 20.
        assert_eq!(dec.decode_fec(&packets[i], &mut f).unwrap(), Some(640));
        // Shorter than the packet's frame: no FEC possible.
        assert_eq!(dec.decode_fec(&packets[i], &mut f[..160]).unwrap(), None);
    }

    #[test]
    fn malformed_packets_are_rejected_like_libopus_does() {
        let bad: [&[u8]; 7] = [
            &[],
            &[0x01, 1, 2, 3],             // code 1, odd payload
            &[0x02, 200, 1, 2],           // code 2, first frame past the end
            &[0x03],                      // code 3 without count byte
            &[0x03, 0x00],                // code 3, zero frames
            &[0x1b, 0x03],                // code 3, 3 x 60 ms > 120 ms
            &[0x03, 0x41, 255, 10, 1, 2], // code 3, padding past the end
        ];
        let mut dec = OpusDecoder::new(48000).unwrap();
        let mut out = [0f32; 5760];
        for p in bad {
            assert!(
                matches!(parse_packet(p), Err(CodecError::BadPacket(_))),
                "{p:?}"
            );
            assert!(matches!(dec.samples_in(p), Err(CodecError::BadPacket(_))));
            assert!(matches!(
                dec.decode(p, &mut out),
                Err(CodecError::BadPacket(_))
            ));
            assert!(matches!(
                dec.decode_fec(p, &mut out[..960]),
                Err(CodecError::BadPacket(_))
            ));
        }
        // A 2-frame code 3 packet with 1 byte of padding and VBR lengths.
        let good = [0x7b, 0x82 | 0x40, 1, 2, 0xaa, 0xbb, 0xcc, 0x00];
        let info = parse_packet(&good).unwrap();
        assert_eq!((info.frame_count, info.first_frame), (2, &[0xaa, 0xbb][..]));
        assert_eq!(info.samples(48000), 1920);
    }

    /// Random bytes (and random mutations of real packets) never panic, and the
    /// parser agrees with libopus's `opus_packet_parse` on every one.
    #[test]
    fn garbage_packets_give_errors_never_panics() {
        let speech = speech_16k();
        let real = encode_all(
            &mut OpusEncoder::new(voip_16k()).unwrap(),
            &speech[..16000 * 2],
        );
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut dec = OpusDecoder::new(48000).unwrap();
        let mut out = [0f32; 5760];
        let (mut ok, mut err) = (0, 0);
        for round in 0..50_000 {
            let mut p: Vec<u8> = if round % 2 == 0 {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random()).collect()
            } else {
                real[rng.random_range(0..real.len())].clone()
            };
            for _ in 0..rng.random_range(0..4) {
                if !p.is_empty() {
                    let k = rng.random_range(0..p.len());
                    p[k] = rng.random();
                }
            }
            let ours = parse_packet(&p);
            let theirs = ::opus::packet::parse(&p);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => {
                    assert_eq!(o.frame_count, t.frames.len(), "{p:?}");
                    assert_eq!(o.first_frame, t.frames[0], "{p:?}");
                    assert_eq!(
                        o.samples(48000),
                        ::opus::packet::get_nb_samples(&p, 48000).unwrap()
                    );
                }
                (Err(_), Err(_)) => {}
                _ => panic!("parser disagrees with libopus on {p:?}: {ours:?}"),
            }
            match dec.decode(&p, &mut out) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
            let _ = dec.decode_fec(&p, &mut out[..960]);
        }
        println!("garbage: {ok} decoded, {err} rejected");
        assert!(err > 1000 && ok > 1000);
    }
}

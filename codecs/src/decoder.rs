//! The codec-generic interface between the media path and the codecs.
//!
//! The jitter buffer and the media legs talk to every audio codec through
//! [`AudioDecoder`] and [`AudioEncoder`], so that Opus, G.711 and whatever comes
//! next are interchangeable behind a `Box<dyn AudioDecoder>`.
//!
//! Design:
//! - Frames are mono `f32` in [-1.0, 1.0) (see the crate docs); sizes are in
//!   samples per channel at the codec's [`sample_rate`](AudioDecoder::sample_rate).
//! - The caller owns every buffer; the codecs never allocate per frame.
//! - Loss handling is split into the two things a jitter buffer can do for a
//!   missing frame: recover it from the in-band FEC of the packet that follows
//!   ([`AudioDecoder::decode_fec`]), or conceal it ([`AudioDecoder::conceal`]).
//!   A codec without FEC answers `Ok(None)` and the caller conceals.
//! - Errors keep the three kinds apart: the peer sent a bad packet
//!   ([`CodecError::BadPacket`]: count it and drop the packet), the caller passed
//!   a wrong size or configuration ([`CodecError::BadFrameSize`],
//!   [`CodecError::BufferTooSmall`], [`CodecError::BadConfig`]), or the codec
//!   library itself failed ([`CodecError::Opus`], [`CodecError::Resampler`]).

/// Everything a codec, resampler or filter in this crate can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload is malformed (network input: count it and drop the packet).
    #[error("bad packet: {0}")]
    BadPacket(&'static str),
    /// A frame has a length the codec or filter cannot process.
    #[error("bad frame size: {got} samples ({rule})")]
    BadFrameSize {
        /// The length that was passed.
        got: usize,
        /// What the length must be.
        rule: &'static str,
    },
    /// The output buffer cannot hold the result.
    #[error("output buffer too small: {needed} needed, {got} given")]
    BufferTooSmall {
        /// Samples (or bytes, for an encoder) the result needs.
        needed: usize,
        /// The length of the buffer that was passed.
        got: usize,
    },
    /// A configuration value is out of range or unsupported.
    #[error("bad configuration: {what} = {value}")]
    BadConfig {
        /// The setting.
        what: &'static str,
        /// The rejected value.
        value: i64,
    },
    /// libopus returned an error code.
    #[error("libopus {function} failed: {description} (code {code})")]
    Opus {
        /// The libopus function or CTL that failed.
        function: &'static str,
        /// The libopus error code (`OPUS_BAD_ARG` = -1, ... `OPUS_ALLOC_FAIL` = -7).
        code: i32,
        /// libopus's text for the code.
        description: &'static str,
    },
    /// The resampler library failed (a bug: the wrapper validates its inputs).
    #[error("resampler failed: {0}")]
    Resampler(&'static str),
}

impl From<::opus::Error> for CodecError {
    fn from(e: ::opus::Error) -> Self {
        CodecError::Opus {
            function: e.function(),
            code: e.code() as i32,
            description: e.description(),
        }
    }
}

/// Decodes one stream's payloads into mono PCM. One instance per stream (it
/// keeps the state that prediction, FEC and concealment need).
pub trait AudioDecoder: Send {
    /// The output sample rate in Hz.
    fn sample_rate(&self) -> u32;

    /// Samples (per channel) `payload` decodes to, without decoding it.
    ///
    /// `Err(CodecError::BadPacket)` for a malformed payload.
    fn samples_in(&self, payload: &[u8]) -> Result<usize, CodecError>;

    /// Decodes one payload into the front of `out` (whose length must be at least
    /// [`samples_in`](Self::samples_in)); returns the samples written.
    fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<usize, CodecError>;

    /// Recovers the frame *before* `next_payload` from the in-band FEC that
    /// `next_payload` carries, writing exactly `out.len()` samples.
    ///
    /// `Ok(None)` when `next_payload` carries no usable FEC: nothing was written
    /// and the decoder state is unchanged, so the caller conceals instead. Decode
    /// `next_payload` itself normally afterwards.
    fn decode_fec(
        &mut self,
        next_payload: &[u8],
        out: &mut [f32],
    ) -> Result<Option<usize>, CodecError>;

    /// Packet-loss concealment: writes exactly `out.len()` samples that continue
    /// the signal (fading out over a long loss); returns `out.len()`.
    fn conceal(&mut self, out: &mut [f32]) -> Result<usize, CodecError>;
}

/// Encodes fixed-size mono PCM frames into payloads.
pub trait AudioEncoder: Send {
    /// The input sample rate in Hz.
    fn sample_rate(&self) -> u32;

    /// Samples (per channel) in every frame [`encode`](Self::encode) takes.
    fn frame_samples(&self) -> usize;

    /// Encodes one frame (`pcm.len()` must be `frame_samples() * channels`) into
    /// `out`; returns the payload length in bytes.
    fn encode(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, CodecError>;
}

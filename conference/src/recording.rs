//! Conference recordings as Ogg Opus files (RFC 7845 in Ogg, RFC 3533).
//!
//! Two layers:
//! - [`OggOpusWriter`] muxes Opus packets into an Ogg stream: an `OpusHead` page
//!   (beginning of stream), an `OpusTags` page (vendor `confer` and the caller's
//!   comments), then audio pages whose granule position is the 48 kHz sample
//!   count decoded up to the end of the page's last packet (pre-skip included,
//!   RFC 7845 section 4). A page is closed before it would hold more than
//!   [`MAX_PAGE_SAMPLES`] (1 s; `opusinfo` warns on long pages, and a shorter
//!   page bounds what a crash can lose). The last page carries end of stream,
//!   and its granule position may be trimmed back to the true end of the audio
//!   (end trimming, RFC 7845 section 4.4). A stream finished without any
//!   packet still gets one page of silence trimmed to zero length, since
//!   players refuse a stream without audio pages.
//! - [`Recorder`] takes the room's 48 kHz mono 20 ms frames, encodes them with
//!   libopus and writes them. [`Recorder::finish`] encodes enough silence to
//!   push the encoder's look-ahead out, then trims the final granule position so
//!   that a player outputs exactly the recorded samples, no more, no fewer.
//!
//! Design choices:
//! - Sans-IO apart from the `Write` the caller hands in: no clock, no
//!   randomness (the stream serial is an argument, drawn from the caller's
//!   injected RNG), no threads. A tick without audio is recorded as silence
//!   ([`Recorder::push_silence`]) so that the timeline stays continuous and
//!   positions in the file are wall-clock positions in the conference.
//! - Pages are assembled here rather than with the `ogg` crate's
//!   `PacketWriter`, which needs an owned copy of every packet (one allocation
//!   per 20 ms frame) and cannot set end of stream on a page after the fact.
//!   Here every buffer is allocated when the writer is built. The current page
//!   stays open until the next packet does not fit, so the page that
//!   [`OggOpusWriter::finish`] closes holds at least one packet and gets the
//!   end-of-stream flag. The `ogg` crate reads our files back in the tests,
//!   as an independent check of the framing and the CRCs.
//! - Every packet is parsed (RFC 6716 framing) before it is written: its
//!   duration comes from the packet itself, so the granule positions cannot
//!   drift from the audio, and a malformed packet is refused instead of
//!   producing an unplayable file.
//! - After a failed write the stream is in an unknown state (a page may be half
//!   written), so the writer refuses everything afterwards
//!   ([`RecordingError::Poisoned`]) rather than write pages after a hole.

use confer_codecs::decoder::{AudioEncoder, CodecError};
use confer_codecs::ogg;
use confer_codecs::opus::{
    MAX_PACKET_BYTES, OpusApplication, OpusChannels, OpusEncoder, OpusEncoderConfig,
    OpusRateControl, OpusSignal, parse_packet,
};
use std::io::Write;

/// The vendor string of the `OpusTags` header.
pub const VENDOR: &str = "confer";

/// Opus granule positions always count 48 kHz samples (RFC 7845 section 4).
pub const GRANULE_RATE: u32 = 48_000;

/// The longest audio page, in 48 kHz samples (1 s).
pub const MAX_PAGE_SAMPLES: u64 = 48_000;

/// Samples in one frame a [`Recorder`] takes (20 ms at 48 kHz).
pub const FRAME_SAMPLES: usize = 960;

/// An Ogg page holds at most 255 lacing values of up to 255 bytes each.
const MAX_SEGMENTS: usize = 255;

/// The largest packet that fits one page (a packet of `n` bytes takes
/// `n / 255 + 1` lacing values).
pub const MAX_PACKET_IN_PAGE: usize = 255 * (MAX_SEGMENTS - 1) + 254;

/// A 20 ms Opus packet with a TOC byte only (CELT fullband, one frame of no
/// bytes), which decodes to silence (RFC 6716 section 3.2.1).
const SILENT_PACKET: [u8; 1] = [0xf8];

/// Ogg page flags (RFC 3533 section 6).
const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;

/// Everything recording can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The output refused a write; the stream is unusable from now on.
    #[error("writing the recording failed: {0}")]
    Io(#[from] std::io::Error),
    /// An earlier write failed, so the file may hold a partial page.
    #[error("an earlier write failed; the recording is closed")]
    Poisoned,
    /// The stream was already finished.
    #[error("the recording is already finished")]
    Finished,
    /// A packet given to [`OggOpusWriter::write_packet`] is not valid Opus.
    #[error("not an Opus packet: {0}")]
    BadPacket(CodecError),
    /// A packet too large to fit one Ogg page.
    #[error("packet of {len} bytes is larger than one Ogg page can hold")]
    PacketTooLarge {
        /// The packet's length in bytes.
        len: usize,
    },
    /// A configuration value is out of range.
    #[error("bad recording configuration: {what} = {value}")]
    BadConfig {
        /// The setting.
        what: &'static str,
        /// The rejected value.
        value: i64,
    },
    /// A comment name is empty or has a byte outside 0x20..=0x7D or an `=`
    /// (Vorbis comment rules), or the comments do not fit one page.
    #[error("bad comment: {0}")]
    BadComment(&'static str),
    /// End trimming asked to cut more than the last page holds, or below the
    /// pre-skip.
    #[error("end trim of {trim} samples is out of range (at most {max})")]
    BadEndTrim {
        /// The requested trim.
        trim: u32,
        /// The largest trim that keeps the stream valid.
        max: u64,
    },
    /// A frame handed to [`Recorder::push_frame`] has the wrong length.
    #[error("frame of {got} samples, expected {expected}")]
    BadFrameSize {
        /// The length passed.
        got: usize,
        /// [`FRAME_SAMPLES`].
        expected: usize,
    },
    /// The Opus encoder failed.
    #[error("encoder: {0}")]
    Codec(#[from] CodecError),
    /// The granule position would overflow (about 6 million years of audio).
    #[error("granule position overflow")]
    GranuleOverflow,
}

/// How an [`OggOpusWriter`] describes its stream in the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggOpusConfig {
    /// 1 or 2 (channel mapping family 0).
    pub channels: u8,
    /// Samples at 48 kHz to discard at the start of decoding: the encoder's
    /// look-ahead ([`OpusEncoder::lookahead`] of a 48 kHz encoder).
    pub pre_skip: u16,
    /// The sample rate of the original input, informational (0 = unknown).
    pub input_sample_rate: u32,
    /// The Ogg stream serial number; draw it from an injected RNG so that
    /// recordings can be chained or multiplexed.
    pub serial: u32,
    /// `OpusTags` comments as (name, value), e.g. `("TITLE", "...")`.
    pub comments: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Finished,
    Poisoned,
}

/// What a finished stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    /// The granule position of the last page (pre-skip included).
    pub final_granule: u64,
    /// Audio samples a player outputs: `final_granule - pre_skip`.
    pub audio_samples: u64,
    /// Pages written, headers included.
    pub pages: u32,
    /// Audio packets written.
    pub packets: u64,
}

/// Muxes Opus packets into an Ogg Opus stream. See the module docs.
///
/// Drive contract: [`new`](Self::new) (writes `OpusHead`), then
/// [`write_packet`](Self::write_packet) for every packet in order, then
/// [`finish`](Self::finish) once. Dropping the writer without `finish`
/// leaves the file without its last page.
pub struct OggOpusWriter<W: Write> {
    out: W,
    serial: u32,
    sequence: u32,
    pre_skip: u16,
    lacing: [u8; MAX_SEGMENTS],
    segments: usize,
    body: Vec<u8>,
    page_packets: usize,
    page_samples: u64,
    /// 48 kHz samples in every packet accepted so far.
    granule: u64,
    packets: u64,
    state: State,
}

impl<W: Write> std::fmt::Debug for OggOpusWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("serial", &self.serial)
            .field("sequence", &self.sequence)
            .field("pre_skip", &self.pre_skip)
            .field("granule", &self.granule)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<W: Write> OggOpusWriter<W> {
    /// Validates `config` and writes the `OpusHead` and `OpusTags` pages.
    pub fn new(out: W, config: &OggOpusConfig) -> Result<Self, RecordingError> {
        if !(1..=2).contains(&config.channels) {
            return Err(RecordingError::BadConfig {
                what: "channels",
                value: i64::from(config.channels),
            });
        }
        let tags = opus_tags(&config.comments)?;
        let mut w = Self {
            out,
            serial: config.serial,
            sequence: 0,
            pre_skip: config.pre_skip,
            lacing: [0; MAX_SEGMENTS],
            segments: 0,
            body: Vec::with_capacity(MAX_SEGMENTS * 255),
            page_packets: 0,
            page_samples: 0,
            granule: 0,
            packets: 0,
            state: State::Open,
        };
        let mut head = [0u8; 19];
        head[..8].copy_from_slice(b"OpusHead");
        head[8] = 1; // version
        head[9] = config.channels;
        head[10..12].copy_from_slice(&config.pre_skip.to_le_bytes());
        head[12..16].copy_from_slice(&config.input_sample_rate.to_le_bytes());
        // Bytes 16..18: output gain 0 dB; byte 18: channel mapping family 0.
        w.write_single_packet_page(&head, FLAG_BOS)?;
        w.write_single_packet_page(&tags, 0)?;
        Ok(w)
    }

    /// Appends one Opus packet (any duration RFC 6716 allows). The page is
    /// written out once the next packet would take it past
    /// [`MAX_PAGE_SAMPLES`] or past 255 lacing values.
    pub fn write_packet(&mut self, packet: &[u8]) -> Result<(), RecordingError> {
        self.check_open()?;
        let info = parse_packet(packet).map_err(RecordingError::BadPacket)?;
        let samples = info.samples(GRANULE_RATE) as u64;
        if packet.len() > MAX_PACKET_IN_PAGE {
            return Err(RecordingError::PacketTooLarge { len: packet.len() });
        }
        let granule = self
            .granule
            .checked_add(samples)
            .filter(|&g| g < i64::MAX as u64)
            .ok_or(RecordingError::GranuleOverflow)?;
        let needed = packet.len() / 255 + 1;
        if self.page_packets > 0
            && (self.page_samples + samples > MAX_PAGE_SAMPLES
                || self.segments + needed > MAX_SEGMENTS)
        {
            self.close_page(self.granule, 0)?;
        }
        for chunk in 0..needed {
            let left = packet.len() - chunk * 255;
            // `left` < 255 only for the last lacing value, which ends the packet.
            self.lacing[self.segments] = left.min(255) as u8;
            self.segments += 1;
        }
        self.body.extend_from_slice(packet);
        self.page_packets += 1;
        self.page_samples += samples;
        self.granule = granule;
        self.packets += 1;
        Ok(())
    }

    /// Closes the stream: writes the open page with end of stream and flushes
    /// the output. `end_trim` is the number of 48 kHz samples at the end of the
    /// last packet that are not audio (encoder padding); it is subtracted from
    /// the final granule position (RFC 7845 section 4.4). It must stay within
    /// the last page and must not take the end below the pre-skip.
    ///
    /// A stream without packets gets silent packets trimmed back to the
    /// pre-skip (zero samples of audio): `opusinfo` calls a stream without
    /// audio packets empty, and libopusfile refuses to open it.
    pub fn finish(&mut self, mut end_trim: u32) -> Result<StreamSummary, RecordingError> {
        self.check_open()?;
        if self.packets == 0 {
            if end_trim != 0 {
                return Err(RecordingError::BadEndTrim {
                    trim: end_trim,
                    max: 0,
                });
            }
            let pre_skip = usize::from(self.pre_skip);
            let count = pre_skip.div_ceil(FRAME_SAMPLES).max(1);
            for _ in 0..count {
                self.write_packet(&SILENT_PACKET)?;
            }
            // Less than one packet: pre_skip < count * 960 <= pre_skip + 960.
            end_trim = (count * FRAME_SAMPLES - pre_skip) as u32;
        }
        let floor = (self.granule - self.page_samples).max(u64::from(self.pre_skip));
        let max = self.granule.saturating_sub(floor);
        if u64::from(end_trim) > max {
            return Err(RecordingError::BadEndTrim {
                trim: end_trim,
                max,
            });
        }
        let final_granule = self.granule - u64::from(end_trim);
        self.close_page(final_granule, FLAG_EOS)?;
        self.out.flush().map_err(|e| self.poison(e))?;
        self.state = State::Finished;
        Ok(StreamSummary {
            final_granule,
            audio_samples: final_granule.saturating_sub(u64::from(self.pre_skip)),
            pages: self.sequence,
            packets: self.packets,
        })
    }

    /// 48 kHz samples in the packets written so far (pre-skip included).
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// The pre-skip written in `OpusHead`.
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Pages written so far.
    pub fn pages_written(&self) -> u32 {
        self.sequence
    }

    /// True once [`finish`](Self::finish) succeeded.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// The output.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Gives the output back (whatever the state of the stream).
    pub fn into_inner(self) -> W {
        self.out
    }

    fn check_open(&self) -> Result<(), RecordingError> {
        match self.state {
            State::Open => Ok(()),
            State::Finished => Err(RecordingError::Finished),
            State::Poisoned => Err(RecordingError::Poisoned),
        }
    }

    fn poison(&mut self, e: std::io::Error) -> RecordingError {
        self.state = State::Poisoned;
        RecordingError::Io(e)
    }

    /// A header page: one packet, granule position 0.
    fn write_single_packet_page(&mut self, packet: &[u8], flags: u8) -> Result<(), RecordingError> {
        debug_assert!(self.page_packets == 0 && packet.len() <= MAX_PACKET_IN_PAGE);
        let mut lacing = [0u8; MAX_SEGMENTS];
        let n = packet.len() / 255 + 1;
        for (i, l) in lacing[..n].iter_mut().enumerate() {
            *l = (packet.len() - i * 255).min(255) as u8;
        }
        self.emit_page(flags, 0, &lacing[..n], packet)
    }

    fn close_page(&mut self, granule: u64, flags: u8) -> Result<(), RecordingError> {
        let lacing = self.lacing;
        let body = std::mem::take(&mut self.body);
        let r = self.emit_page(flags, granule, &lacing[..self.segments], &body);
        self.body = body;
        self.body.clear();
        self.segments = 0;
        self.page_packets = 0;
        self.page_samples = 0;
        r
    }

    fn emit_page(
        &mut self,
        flags: u8,
        granule: u64,
        lacing: &[u8],
        body: &[u8],
    ) -> Result<(), RecordingError> {
        let mut header = [0u8; 27 + MAX_SEGMENTS];
        header[..4].copy_from_slice(b"OggS");
        // header[4]: stream structure version 0.
        header[5] = flags;
        header[6..14].copy_from_slice(&granule.to_le_bytes());
        header[14..18].copy_from_slice(&self.serial.to_le_bytes());
        header[18..22].copy_from_slice(&self.sequence.to_le_bytes());
        // header[22..26]: CRC, computed with these bytes zero.
        // `lacing` has at most 255 entries (the lacing arrays are that long).
        header[26] = lacing.len() as u8;
        let len = 27 + lacing.len();
        header[27..len].copy_from_slice(lacing);
        let crc = ogg::crc(ogg::crc(0, &header[..len]), body);
        header[22..26].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = self
            .out
            .write_all(&header[..len])
            .and_then(|()| self.out.write_all(body))
        {
            return Err(self.poison(e));
        }
        self.sequence = self.sequence.wrapping_add(1);
        Ok(())
    }
}

/// Serializes `OpusTags` (RFC 7845 section 5.2).
fn opus_tags(comments: &[(String, String)]) -> Result<Vec<u8>, RecordingError> {
    let mut len = 8 + 4 + VENDOR.len() + 4;
    for (name, value) in comments {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| (0x20..=0x7d).contains(&b) && b != b'=');
        if !ok {
            return Err(RecordingError::BadComment(
                "names are non-empty printable ASCII without '='",
            ));
        }
        len += 4 + name.len() + 1 + value.len();
    }
    // One page is plenty for a title and a room id; longer is refused.
    if len > MAX_PACKET_IN_PAGE {
        return Err(RecordingError::BadComment(
            "comments do not fit one Ogg page",
        ));
    }
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(b"OpusTags");
    // Every length here is below MAX_PACKET_IN_PAGE, so it fits a u32.
    t.extend_from_slice(&(VENDOR.len() as u32).to_le_bytes());
    t.extend_from_slice(VENDOR.as_bytes());
    t.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for (name, value) in comments {
        t.extend_from_slice(&((name.len() + 1 + value.len()) as u32).to_le_bytes());
        t.extend_from_slice(name.as_bytes());
        t.push(b'=');
        t.extend_from_slice(value.as_bytes());
    }
    Ok(t)
}

/// How a [`Recorder`] encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// Opus target bitrate, 6000..=510000 bit/s.
    pub bitrate_bps: u32,
    /// libopus complexity 0..=10.
    pub complexity: u8,
    /// The Ogg stream serial (from the caller's RNG).
    pub serial: u32,
    /// `OpusTags` comments, e.g. `("TITLE", ..)`, `("ROOM", ..)`.
    pub comments: Vec<(String, String)>,
}

impl RecorderConfig {
    /// 48 kbit/s constrained VBR (transparent for speech, good for a mixed
    /// room) at complexity 5: measured on the test speech, 48.5 kbit/s and
    /// about 60 us per 20 ms frame in a release build, against about 240 us at
    /// complexity 10 (50 kbit/s); nobody hears a recording live.
    pub fn new(serial: u32) -> Self {
        Self {
            bitrate_bps: 48_000,
            complexity: 5,
            serial,
            comments: Vec::new(),
        }
    }
}

/// Records a 48 kHz mono stream (a room's mix) into an Ogg Opus file.
///
/// Drive contract: one [`push_frame`](Self::push_frame) per 20 ms tick with
/// audio, [`push_silence`](Self::push_silence) for ticks without, then
/// [`finish`](Self::finish). Dropping an unfinished recorder closes the
/// stream as `finish` would, ignoring errors.
pub struct Recorder<W: Write> {
    encoder: OpusEncoder,
    /// `None` once finished (the output was handed back).
    writer: Option<OggOpusWriter<W>>,
    packet: Vec<u8>,
    scratch: Vec<f32>,
    frames: u64,
    lookahead: u16,
}

impl<W: Write> std::fmt::Debug for Recorder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("frames", &self.frames)
            .field("lookahead", &self.lookahead)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Recorder<W> {
    /// Builds the encoder and writes the `OpusHead` page to `out`.
    pub fn new(out: W, config: RecorderConfig) -> Result<Self, RecordingError> {
        let mut encoder = OpusEncoder::new(OpusEncoderConfig {
            sample_rate: GRANULE_RATE,
            channels: OpusChannels::Mono,
            bitrate_bps: config.bitrate_bps,
            complexity: config.complexity,
            // Unconstrained VBR overshoots at complexity 5 (77 kbit/s for a
            // 48 kbit/s target on the test speech); constrained VBR holds it.
            rate_control: OpusRateControl::ConstrainedVbr,
            inband_fec: false,
            dtx: false,
            expected_loss_percent: 0,
            application: OpusApplication::Audio,
            signal: OpusSignal::Auto,
            frame_ms: 20,
        })?;
        let lookahead = encoder.lookahead()?;
        let lookahead = u16::try_from(lookahead).map_err(|_| RecordingError::BadConfig {
            what: "encoder lookahead",
            value: lookahead as i64,
        })?;
        let writer = OggOpusWriter::new(
            out,
            &OggOpusConfig {
                channels: 1,
                pre_skip: lookahead,
                input_sample_rate: GRANULE_RATE,
                serial: config.serial,
                comments: config.comments,
            },
        )?;
        Ok(Self {
            encoder,
            writer: Some(writer),
            packet: vec![0; MAX_PACKET_BYTES],
            scratch: vec![0.0; FRAME_SAMPLES],
            frames: 0,
            lookahead,
        })
    }

    /// Encodes and writes one 20 ms frame ([`FRAME_SAMPLES`] samples).
    /// Non-finite samples are recorded as 0.
    pub fn push_frame(&mut self, pcm: &[f32]) -> Result<(), RecordingError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(RecordingError::BadFrameSize {
                got: pcm.len(),
                expected: FRAME_SAMPLES,
            });
        }
        for (s, &x) in self.scratch.iter_mut().zip(pcm) {
            *s = if x.is_finite() { x } else { 0.0 };
        }
        self.encode_scratch()
    }

    /// Records `frames` ticks of silence (no audio arrived), keeping the
    /// timeline continuous.
    pub fn push_silence(&mut self, frames: u32) -> Result<(), RecordingError> {
        for _ in 0..frames {
            self.scratch.fill(0.0);
            self.encode_scratch()?;
        }
        Ok(())
    }

    /// Audio recorded so far, in 48 kHz samples.
    pub fn duration_samples(&self) -> u64 {
        self.frames * FRAME_SAMPLES as u64
    }

    /// The pre-skip of the file (the encoder's look-ahead).
    pub fn pre_skip(&self) -> u16 {
        self.lookahead
    }

    /// Flushes the encoder's look-ahead, writes the last page with end of
    /// stream and returns the output. The file then decodes to exactly
    /// [`duration_samples`](Self::duration_samples) samples.
    pub fn finish(mut self) -> Result<(W, StreamSummary), RecordingError> {
        let summary = self.close()?;
        let writer = self.writer.take().ok_or(RecordingError::Finished)?;
        Ok((writer.into_inner(), summary))
    }

    fn encode_scratch(&mut self) -> Result<(), RecordingError> {
        let writer = self.writer.as_mut().ok_or(RecordingError::Finished)?;
        writer.check_open()?;
        let n = self.encoder.encode(&self.scratch, &mut self.packet)?;
        writer.write_packet(&self.packet[..n])?;
        self.frames += 1;
        Ok(())
    }

    fn close(&mut self) -> Result<StreamSummary, RecordingError> {
        let writer = self.writer.as_mut().ok_or(RecordingError::Finished)?;
        writer.check_open()?;
        // The decoder output lags the input by the look-ahead: encode enough
        // silence to carry the last real samples out, then trim the excess.
        let lookahead = usize::from(self.lookahead);
        let flush_frames = lookahead.div_ceil(FRAME_SAMPLES);
        for _ in 0..flush_frames {
            self.scratch.fill(0.0);
            let n = self.encoder.encode(&self.scratch, &mut self.packet)?;
            writer.write_packet(&self.packet[..n])?;
        }
        // At most FRAME_SAMPLES - 1: the look-ahead is a few ms.
        let trim = (flush_frames * FRAME_SAMPLES - lookahead) as u32;
        writer.finish(trim)
    }
}

impl<W: Write> Drop for Recorder<W> {
    fn drop(&mut self) {
        if self.writer.as_ref().is_some_and(|w| w.state == State::Open) {
            // Best effort: there is nobody to report an error to.
            let _ = self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_names_are_validated() {
        for bad in ["", "A=B", "T\u{7f}", "T\n"] {
            assert!(matches!(
                opus_tags(&[(bad.into(), "x".into())]),
                Err(RecordingError::BadComment(_))
            ));
        }
        let t = opus_tags(&[("TITLE".into(), "r\u{e9}union".into())]).unwrap();
        assert_eq!(&t[..8], b"OpusTags");
        assert!(t.ends_with("TITLE=r\u{e9}union".as_bytes()));
    }
}

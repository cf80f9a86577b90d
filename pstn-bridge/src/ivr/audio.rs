//! Decoding prompt files into mono PCM at the rate a leg or a room wants.
//!
//! Two containers, recognised by their first bytes:
//!
//! - **Ogg Opus** (RFC 7845), the format of the committed prompts: small (the whole set is
//!   about 150 KB where 16 kHz 16-bit PCM would be 1.5 MB) and wideband. libopus decodes
//!   straight to the wanted rate; the pre-skip and the end trim come from the headers and
//!   the last granule position, and the output gain is applied. One logical stream, mono
//!   or stereo (stereo is downmixed by the mono decoder), channel mapping family 0. Every
//!   page's CRC is checked and the stream must end with its end-of-stream page, so a
//!   damaged or cut file is an error, not a shorter prompt.
//! - **WAV**, 16-bit PCM, mono, at one of the resampler's rates: what an operator records
//!   or exports for a localised prompt set. It is converted with our resampler
//!   ([`confer_codecs::resample::Resampler`]), its 5 ms delay removed, so the output lines
//!   up with the input.
//!
//! Files are ours or the operator's, not the network's, but a bad one is still a typed
//! [`AudioFileError`], never a panic, and a prompt is limited to [`MAX_PROMPT_SECONDS`].
//! This runs once at start-up; it allocates freely.

use confer_codecs::decoder::{AudioDecoder, CodecError};
use confer_codecs::ogg;
use confer_codecs::opus::OpusDecoder;
use confer_codecs::resample::Resampler;

/// The longest prompt accepted, in seconds.
pub const MAX_PROMPT_SECONDS: u32 = 30;

/// The rates prompts can be decoded to: those both libopus and the resampler produce.
pub const PROMPT_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

/// Why a prompt file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioFileError {
    /// Neither an Ogg nor a RIFF/WAVE file.
    #[error("not an Ogg Opus or WAV file")]
    UnknownFormat,
    /// The file ends inside a structure.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// An Ogg page or the packet layout is malformed.
    #[error("malformed Ogg stream: {0}")]
    Ogg(&'static str),
    /// An Ogg page's CRC does not match its content.
    #[error("Ogg page {page} fails its CRC check")]
    OggChecksum {
        /// The page's sequence number.
        page: u32,
    },
    /// The Opus identification or comment header is missing or unsupported.
    #[error("Opus header: {0}")]
    OpusHeader(&'static str),
    /// A WAV chunk is malformed or missing.
    #[error("malformed WAV file: {0}")]
    Wav(&'static str),
    /// A WAV encoding other than 16-bit mono PCM.
    #[error("unsupported WAV encoding: format tag {format}, {channels} channels, {bits} bits")]
    UnsupportedWav {
        /// The format tag (1 = PCM).
        format: u16,
        /// Channels.
        channels: u16,
        /// Bits per sample.
        bits: u16,
    },
    /// A WAV sample rate the resampler does not take, or an output rate not supported.
    #[error("unsupported sample rate {0} Hz")]
    UnsupportedRate(u32),
    /// The file holds no audio.
    #[error("the file holds no audio")]
    Empty,
    /// The prompt is longer than [`MAX_PROMPT_SECONDS`].
    #[error("longer than {MAX_PROMPT_SECONDS} s")]
    TooLong,
    /// The decoder or resampler failed on the content.
    #[error("decoding failed: {0}")]
    Codec(#[from] CodecError),
}

/// Decodes an Ogg Opus or WAV file into mono PCM at `rate` (one of [`PROMPT_RATES`]).
pub fn decode(bytes: &[u8], rate: u32) -> Result<Vec<f32>, AudioFileError> {
    if !PROMPT_RATES.contains(&rate) {
        return Err(AudioFileError::UnsupportedRate(rate));
    }
    let pcm = if bytes.starts_with(b"OggS") {
        decode_ogg_opus(bytes, rate)?
    } else if bytes.starts_with(b"RIFF") {
        decode_wav(bytes, rate)?
    } else {
        return Err(AudioFileError::UnknownFormat);
    };
    if pcm.is_empty() {
        return Err(AudioFileError::Empty);
    }
    Ok(pcm)
}

// ---------------------------------------------------------------------------
// Ogg
// ---------------------------------------------------------------------------

/// The page's Ogg CRC, its own checksum field (bytes 22..26) taken as zero.
fn ogg_crc(page: &[u8]) -> u32 {
    let (head, rest) = page.split_at(page.len().min(22));
    let tail = rest.get(4..).unwrap_or(&[]);
    let zeros = &[0u8; 4][..rest.len().min(4)];
    ogg::crc(ogg::crc(ogg::crc(0, head), zeros), tail)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The packets of a single-stream Ogg file, and the last granule position seen.
struct OggPackets {
    packets: Vec<Vec<u8>>,
    last_granule: Option<u64>,
}

const OGG_HEADER_LEN: usize = 27;
/// Granule position of a page on which no packet ends.
const NO_GRANULE: u64 = u64::MAX;

fn read_ogg(bytes: &[u8]) -> Result<OggPackets, AudioFileError> {
    let mut pos = 0;
    let mut serial = None;
    let mut expected_seq = 0u32;
    let mut packets = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut last_granule = None;
    let mut ended = false;
    while pos < bytes.len() {
        if ended {
            return Err(AudioFileError::Ogg("data after the end-of-stream page"));
        }
        let header = bytes
            .get(pos..pos + OGG_HEADER_LEN)
            .ok_or(AudioFileError::Truncated("Ogg page header"))?;
        if &header[..4] != b"OggS" {
            return Err(AudioFileError::Ogg("page does not start with OggS"));
        }
        if header[4] != 0 {
            return Err(AudioFileError::Ogg("unknown Ogg version"));
        }
        let flags = header[5];
        let granule = le_u64(header, 6).ok_or(AudioFileError::Truncated("Ogg page header"))?;
        let page_serial = le_u32(header, 14).ok_or(AudioFileError::Truncated("Ogg page header"))?;
        let seq = le_u32(header, 18).ok_or(AudioFileError::Truncated("Ogg page header"))?;
        let stored_crc = le_u32(header, 22).ok_or(AudioFileError::Truncated("Ogg page header"))?;
        let segments = usize::from(header[26]);
        let lacing = bytes
            .get(pos + OGG_HEADER_LEN..pos + OGG_HEADER_LEN + segments)
            .ok_or(AudioFileError::Truncated("Ogg segment table"))?;
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let page_len = OGG_HEADER_LEN + segments + body_len;
        let page = bytes
            .get(pos..pos + page_len)
            .ok_or(AudioFileError::Truncated("Ogg page body"))?;
        if ogg_crc(page) != stored_crc {
            return Err(AudioFileError::OggChecksum { page: seq });
        }
        match serial {
            None => serial = Some(page_serial),
            Some(s) if s != page_serial => {
                return Err(AudioFileError::Ogg("more than one logical stream"));
            }
            Some(_) => {}
        }
        if seq != expected_seq {
            return Err(AudioFileError::Ogg("page sequence gap"));
        }
        expected_seq = expected_seq.wrapping_add(1);
        let continued = flags & 0x01 != 0;
        if continued == partial.is_empty() {
            return Err(AudioFileError::Ogg(
                "continuation flag does not match the packets",
            ));
        }
        let mut body = &page[OGG_HEADER_LEN + segments..];
        for &l in lacing {
            let (seg, rest) = body.split_at(usize::from(l));
            body = rest;
            partial.extend_from_slice(seg);
            if l < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        if granule != NO_GRANULE {
            last_granule = Some(granule);
        }
        ended = flags & 0x04 != 0;
        pos += page_len;
    }
    // Without the end-of-stream page, a file cut at a page boundary would pass for a
    // shorter prompt.
    if !partial.is_empty() || !ended {
        return Err(AudioFileError::Truncated(
            "Ogg stream (no end-of-stream page)",
        ));
    }
    Ok(OggPackets {
        packets,
        last_granule,
    })
}

fn decode_ogg_opus(bytes: &[u8], rate: u32) -> Result<Vec<f32>, AudioFileError> {
    let OggPackets {
        packets,
        last_granule,
    } = read_ogg(bytes)?;
    let mut iter = packets.iter();
    let head = iter
        .next()
        .ok_or(AudioFileError::OpusHeader("no identification header"))?;
    if head.len() < 19 || &head[..8] != b"OpusHead" {
        return Err(AudioFileError::OpusHeader("no OpusHead packet"));
    }
    if head[8] & 0xF0 != 0 {
        return Err(AudioFileError::OpusHeader("unsupported major version"));
    }
    let channels = head[9];
    let pre_skip = le_u16(head, 10).ok_or(AudioFileError::Truncated("OpusHead"))?;
    let gain_q8 = i16::from_le_bytes([head[16], head[17]]);
    let family = head[18];
    if family != 0 || !(1..=2).contains(&channels) {
        return Err(AudioFileError::OpusHeader(
            "only mono or stereo with channel mapping family 0",
        ));
    }
    match iter.next() {
        Some(tags) if tags.starts_with(b"OpusTags") => {}
        _ => return Err(AudioFileError::OpusHeader("no OpusTags packet")),
    }
    let granule = last_granule.ok_or(AudioFileError::Ogg("no granule position"))?;
    let total_48k = granule
        .checked_sub(u64::from(pre_skip))
        .ok_or(AudioFileError::Ogg("granule position before the pre-skip"))?;
    if total_48k > u64::from(MAX_PROMPT_SECONDS) * 48_000 {
        return Err(AudioFileError::TooLong);
    }
    let scale = |samples_48k: u64| (samples_48k * u64::from(rate) / 48_000) as usize;
    let skip = scale(u64::from(pre_skip));
    let wanted = scale(total_48k);

    let mut decoder = OpusDecoder::new(rate)?;
    let mut frame = vec![0.0f32; decoder.max_frame_samples()];
    let mut pcm = Vec::with_capacity(skip + wanted);
    for packet in iter {
        let n = decoder.decode(packet, &mut frame)?;
        pcm.extend_from_slice(&frame[..n]);
        if pcm.len() >= skip + wanted {
            break;
        }
    }
    if pcm.len() < skip + wanted {
        return Err(AudioFileError::Truncated(
            "Opus audio (fewer samples than the granule says)",
        ));
    }
    pcm.truncate(skip + wanted);
    pcm.drain(..skip);
    if gain_q8 != 0 {
        let gain = 10f32.powf(f32::from(gain_q8) / 256.0 / 20.0);
        for s in &mut pcm {
            *s *= gain;
        }
    }
    for s in &mut pcm {
        *s = s.clamp(-1.0, MAX_SAMPLE);
    }
    Ok(pcm)
}

/// The largest sample below full scale (the PCM range is [-1, 1)).
const MAX_SAMPLE: f32 = 32767.0 / 32768.0;

// ---------------------------------------------------------------------------
// WAV
// ---------------------------------------------------------------------------

fn decode_wav(bytes: &[u8], rate: u32) -> Result<Vec<f32>, AudioFileError> {
    if bytes.len() < 12 {
        return Err(AudioFileError::Truncated("RIFF header"));
    }
    if &bytes[8..12] != b"WAVE" {
        return Err(AudioFileError::Wav("RIFF file is not WAVE"));
    }
    // The RIFF size is not trusted (streaming writers leave it 0): chunks are read to the
    // end of the buffer.
    let mut pos = 12;
    let mut format = None;
    let mut data = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = le_u32(bytes, pos + 4).ok_or(AudioFileError::Truncated("WAV chunk"))? as usize;
        let body = bytes
            .get(pos + 8..)
            .and_then(|rest| rest.get(..size))
            .ok_or(AudioFileError::Truncated("WAV chunk"))?;
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(AudioFileError::Wav("fmt chunk shorter than 16 bytes"));
                }
                let mut tag = le_u16(body, 0).ok_or(AudioFileError::Truncated("fmt"))?;
                let channels = le_u16(body, 2).ok_or(AudioFileError::Truncated("fmt"))?;
                let file_rate = le_u32(body, 4).ok_or(AudioFileError::Truncated("fmt"))?;
                let bits = le_u16(body, 14).ok_or(AudioFileError::Truncated("fmt"))?;
                // WAVE_FORMAT_EXTENSIBLE: the real tag leads the sub-format GUID.
                if tag == 0xFFFE {
                    tag = le_u16(body, 24).ok_or(AudioFileError::Truncated("fmt extension"))?;
                }
                format = Some((tag, channels, file_rate, bits));
            }
            b"data" => data = Some(body),
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = pos + 8 + size + (size & 1);
    }
    let (tag, channels, file_rate, bits) = format.ok_or(AudioFileError::Wav("no fmt chunk"))?;
    let data = data.ok_or(AudioFileError::Wav("no data chunk"))?;
    if tag != 1 || channels != 1 || bits != 16 {
        return Err(AudioFileError::UnsupportedWav {
            format: tag,
            channels,
            bits,
        });
    }
    if !confer_codecs::resample::RATES.contains(&file_rate) {
        return Err(AudioFileError::UnsupportedRate(file_rate));
    }
    let samples = data.len() / 2;
    if samples as u64 > u64::from(MAX_PROMPT_SECONDS) * u64::from(file_rate) {
        return Err(AudioFileError::TooLong);
    }
    let pcm: Vec<f32> = data
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    resample_all(&pcm, file_rate, rate)
}

/// Resamples a whole clip with our streaming resampler: 10 ms frames, zero padding at the
/// end to flush the filter, the filter's delay cut from the front.
fn resample_all(pcm: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioFileError> {
    if from == to {
        return Ok(pcm.to_vec());
    }
    let mut resampler = Resampler::new(from, to, 10)?;
    let delay = resampler.delay_samples();
    let wanted = (pcm.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let mut out = Vec::with_capacity(wanted + delay + resampler.output_len());
    let mut frame_out = vec![0.0f32; resampler.output_len()];
    let mut frame_in = vec![0.0f32; resampler.input_len()];
    let mut chunks = pcm.chunks(resampler.input_len());
    while out.len() < wanted + delay {
        frame_in.fill(0.0);
        if let Some(chunk) = chunks.next() {
            frame_in[..chunk.len()].copy_from_slice(chunk);
        }
        let n = resampler.process(&frame_in, &mut frame_out)?;
        out.extend_from_slice(&frame_out[..n]);
    }
    out.truncate(wanted + delay);
    out.drain(..delay);
    for s in &mut out {
        *s = s.clamp(-1.0, MAX_SAMPLE);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, samples: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        let data_len = (samples.len() * 2) as u32;
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    fn tone(rate: u32, hz: f32, seconds: f32) -> Vec<i16> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| (8000.0 * (std::f32::consts::TAU * hz * i as f32 / rate as f32).sin()) as i16)
            .collect()
    }

    #[test]
    fn a_wav_is_resampled_to_the_wanted_length_without_a_delay() {
        let file = wav(16000, &tone(16000, 440.0, 1.0));
        let pcm = decode(&file, 48000).unwrap();
        assert_eq!(pcm.len(), 48000);
        // The 5 ms filter delay is removed: the tone is in phase with an ideal 440 Hz sine
        // (correlation over the middle, away from the edges).
        let ideal = |i: usize| (std::f32::consts::TAU * 440.0 * i as f32 / 48000.0).sin();
        let (mut dot, mut norm) = (0.0f64, 0.0f64);
        for (i, &s) in pcm.iter().enumerate().take(40000).skip(8000) {
            dot += f64::from(s * ideal(i));
            norm += f64::from(s * s);
        }
        // A sine of amplitude A correlated with a unit sine over N samples gives A * N / 2.
        let expected = 8000.0f64 / 32768.0 * 32000.0 / 2.0;
        assert!(
            dot / expected > 0.95,
            "in-phase correlation {}",
            dot / expected
        );
        assert!(norm > 0.0);
    }

    #[test]
    fn a_stereo_wav_is_a_typed_error() {
        let mut file = wav(16000, &tone(16000, 440.0, 0.1));
        file[22] = 2; // channels
        assert_eq!(
            decode(&file, 16000),
            Err(AudioFileError::UnsupportedWav {
                format: 1,
                channels: 2,
                bits: 16
            })
        );
    }

    #[test]
    fn a_wav_at_an_unusual_rate_is_a_typed_error() {
        let file = wav(11025, &tone(11025, 440.0, 0.1));
        assert_eq!(
            decode(&file, 16000),
            Err(AudioFileError::UnsupportedRate(11025))
        );
    }

    #[test]
    fn every_prefix_of_a_wav_is_an_error_or_shorter_audio_never_a_panic() {
        let file = wav(8000, &tone(8000, 440.0, 0.05));
        for len in 0..file.len() {
            let _ = decode(&file[..len], 8000);
        }
    }

    #[test]
    fn the_ogg_crc_matches_the_reference_value() {
        // An all-zero 27-byte header has CRC 0; one set byte gives the table entry shifted
        // through the rest of the bytes: checked against a bitwise computation.
        let mut page = [0u8; 30];
        page[0] = 0x4F;
        let mut crc = 0u32;
        for (i, &b) in page.iter().enumerate() {
            let b = if (22..26).contains(&i) { 0 } else { b };
            crc ^= u32::from(b) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04C1_1DB7
                } else {
                    crc << 1
                };
            }
        }
        assert_eq!(ogg_crc(&page), crc);
        assert_ne!(crc, 0);
    }
}

//! RTP packets (RFC 3550) with RFC 8285 header extensions: a zero-copy parser and a builder
//! that writes into a caller's buffer.
//!
//! Why our own and not `rtc-rtp`: every packet of every leg passes through here, and
//! `rtc_rtp::Packet::unmarshal` allocates per packet (a `Vec` of CSRCs, a `Vec` of
//! extensions, a `Bytes` copy of each extension and of the payload). It is also lenient
//! where we want to be strict: it does not check the version, accepts a padding count of
//! 0, and lets a one-byte extension element run past its block. [`RtpPacket`] borrows the
//! datagram and only records offsets; [`RtpPacket::parse`] validates *everything* up
//! front (CSRCs, the extension block and each element in it, padding), so the accessors
//! and iterators afterwards cannot fail. `rtc-rtp` is still used, in the tests, as an
//! independent implementation to cross-check both directions.
//!
//! Sequence numbers and timestamps come out raw (`u16`, `u32`): feed them to the stream's
//! [`SeqExtender`](crate::types::SeqExtender) / [`TimestampExtender`](crate::types::TimestampExtender)
//! and do not compare them directly.
//!
//! Header extensions: the one-byte form (profile `0xBEDE`, ids 1..=14, 1..=16 bytes) and the
//! two-byte form (profile `0x100X`, ids 1..=255, 0..=255 bytes) are parsed into elements;
//! any other profile (RFC 3550 generic extension) is kept as an opaque block. Padding bytes
//! between elements are skipped; a one-byte id 15 stops processing as RFC 8285 says.
//! [`AudioLevel`] reads and writes the RFC 6464 client-to-mixer audio level.

use crate::types::{PayloadType, Ssrc};

/// The only RTP version.
pub const RTP_VERSION: u8 = 2;
/// Length of the fixed RTP header.
pub const FIXED_HEADER_LEN: usize = 12;
/// Profile value of the RFC 8285 one-byte header extension form.
pub const EXTENSION_PROFILE_ONE_BYTE: u16 = 0xBEDE;
/// Profile value of the RFC 8285 two-byte header extension form (appbits 0); any
/// `0x100X` is accepted on input.
pub const EXTENSION_PROFILE_TWO_BYTE: u16 = 0x1000;

/// Why a datagram is not a valid RTP packet, or why a packet could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the fixed header.
    #[error("datagram of {len} bytes is shorter than the 12-byte RTP header")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list runs past the datagram.
    #[error("{count} CSRCs need a {needed}-byte header, datagram has {len} bytes")]
    CsrcOverrun {
        /// CSRC count from the header.
        count: u8,
        /// Bytes the header needs.
        needed: usize,
        /// Datagram length.
        len: usize,
    },
    /// The X bit is set but the 4-byte extension header is missing.
    #[error("extension header needs {needed} bytes, datagram has {len} bytes")]
    ExtensionHeaderOverrun {
        /// Bytes needed up to the end of the extension header.
        needed: usize,
        /// Datagram length.
        len: usize,
    },
    /// The extension block's declared length runs past the datagram.
    #[error("extension block of {declared} bytes overruns the datagram ({available} left)")]
    ExtensionOverrun {
        /// Declared block length in bytes.
        declared: usize,
        /// Bytes left after the extension header.
        available: usize,
    },
    /// An RFC 8285 element's data runs past the end of its block.
    #[error("header extension element at block offset {offset} overruns its block")]
    ExtensionElementOverrun {
        /// Offset of the element inside the extension block.
        offset: usize,
    },
    /// An RFC 8285 one-byte element has id 0 but is not a zero padding byte.
    #[error("header extension element at block offset {offset} uses the reserved id 0")]
    ExtensionElementInvalid {
        /// Offset of the element inside the extension block.
        offset: usize,
    },
    /// The P bit is set but the padding count (last byte) is 0.
    #[error("padding bit set but the padding count is 0")]
    ZeroPadding,
    /// The padding count is larger than what follows the header.
    #[error("padding count {count} exceeds the {available} bytes after the header")]
    PaddingOverrun {
        /// Padding count from the last byte.
        count: u8,
        /// Bytes after the header (payload plus padding).
        available: usize,
    },
    /// Builder: the output buffer is too small.
    #[error("output buffer of {available} bytes, {needed} needed")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes in the buffer.
        available: usize,
    },
    /// Builder: more than 15 CSRCs.
    #[error("{0} CSRCs, at most 15 fit in an RTP header")]
    TooManyCsrcs(usize),
    /// Builder: an extension element does not fit the requested form.
    #[error("header extension id {id} with {len} bytes cannot be encoded in the {form:?} form")]
    ExtensionNotEncodable {
        /// Element id.
        id: u8,
        /// Element data length.
        len: usize,
        /// The form that was asked for (or chosen).
        form: ExtensionForm,
    },
    /// Builder: the extension block exceeds 65535 words.
    #[error("header extension block of {0} bytes exceeds the 65535-word maximum")]
    ExtensionBlockTooLong(usize),
}

/// The RFC 8285 header extension form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionForm {
    /// Builder only: one-byte if every element fits it, else two-byte.
    Auto,
    /// Profile `0xBEDE`: ids 1..=14, 1..=16 bytes of data.
    OneByte,
    /// Profile `0x100X`: ids 1..=255, 0..=255 bytes of data.
    TwoByte,
}

/// One header extension element: its negotiated id (`a=extmap`) and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    /// Local identifier.
    pub id: u8,
    /// Element data.
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExtBlock {
    profile: u16,
    /// Offsets of the block's data (after the 4-byte extension header) in the datagram.
    start: usize,
    end: usize,
}

impl ExtBlock {
    fn form(&self) -> Option<ExtensionForm> {
        if self.profile == EXTENSION_PROFILE_ONE_BYTE {
            Some(ExtensionForm::OneByte)
        } else if self.profile & 0xFFF0 == EXTENSION_PROFILE_TWO_BYTE {
            Some(ExtensionForm::TwoByte)
        } else {
            None
        }
    }
}

/// A validated RTP packet borrowing the datagram. Cheap to copy; never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    ext: Option<ExtBlock>,
    payload_start: usize,
    payload_end: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[a, x, y, z]) => u32::from_be_bytes([a, x, y, z]),
        _ => 0,
    }
}

/// Reads the next element of an RFC 8285 block starting at `*pos`, skipping padding.
/// `Err(offset)` reports a malformed element (`true` for an overrun).
fn next_element<'a>(
    block: &'a [u8],
    pos: &mut usize,
    form: ExtensionForm,
) -> Result<Option<RtpExtension<'a>>, (usize, bool)> {
    loop {
        let at = *pos;
        let Some(&b) = block.get(at) else {
            return Ok(None);
        };
        if b == 0 {
            *pos += 1;
            continue;
        }
        let (id, start, len) = match form {
            ExtensionForm::OneByte => {
                let id = b >> 4;
                if id == 15 {
                    // RFC 8285 4.2: id 15 terminates processing of the block.
                    *pos = block.len();
                    return Ok(None);
                }
                if id == 0 {
                    return Err((at, false));
                }
                (id, at + 1, usize::from(b & 0x0F) + 1)
            }
            ExtensionForm::TwoByte | ExtensionForm::Auto => {
                let Some(&len) = block.get(at + 1) else {
                    return Err((at, true));
                };
                (b, at + 2, usize::from(len))
            }
        };
        let Some(data) = block.get(start..start + len) else {
            return Err((at, true));
        };
        *pos = start + len;
        return Ok(Some(RtpExtension { id, data }));
    }
}

impl<'a> RtpPacket<'a> {
    /// Validates `buf` as one RTP packet. Every malformation is a typed error; nothing
    /// panics and nothing is allocated.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let len = buf.len();
        let (header_end, ext) = parse_header(buf)?;
        let mut payload_end = len;
        if buf[0] & 0x20 != 0 {
            let count = buf[len - 1];
            let available = len - header_end;
            if available == 0 {
                return Err(RtpError::PaddingOverrun { count, available });
            }
            if count == 0 {
                return Err(RtpError::ZeroPadding);
            }
            if usize::from(count) > available {
                return Err(RtpError::PaddingOverrun { count, available });
            }
            payload_end = len - usize::from(count);
        }
        Ok(RtpPacket {
            buf,
            ext,
            payload_start: header_end,
            payload_end,
        })
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Header length: fixed header, CSRCs and extension block.
    pub fn header_len(&self) -> usize {
        self.payload_start
    }

    /// The marker bit (start of a talkspurt for audio, end of a frame for video).
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }

    /// The payload type.
    pub fn payload_type(&self) -> PayloadType {
        PayloadType::from_wire(self.buf[1])
    }

    /// The raw sequence number: feed it to the stream's `SeqExtender`.
    pub fn sequence_number(&self) -> u16 {
        be16(self.buf, 2)
    }

    /// The raw timestamp: feed it to the stream's `TimestampExtender`.
    pub fn timestamp(&self) -> u32 {
        be32(self.buf, 4)
    }

    /// The synchronisation source.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(be32(self.buf, 8))
    }

    /// The contributing sources (a mixer's inputs).
    pub fn csrcs(&self) -> Csrcs<'a> {
        let cc = usize::from(self.buf[0] & 0x0F);
        Csrcs {
            chunks: self.buf[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4 * cc].chunks_exact(4),
        }
    }

    /// The extension profile when the X bit is set.
    pub fn extension_profile(&self) -> Option<u16> {
        self.ext.map(|e| e.profile)
    }

    /// The raw extension block (after its 4-byte header) when the X bit is set.
    pub fn extension_block(&self) -> Option<&'a [u8]> {
        self.ext.map(|e| &self.buf[e.start..e.end])
    }

    /// The RFC 8285 elements; empty for no extension or a non-RFC 8285 profile.
    pub fn extensions(&self) -> Extensions<'a> {
        match self.ext {
            Some(e) => match e.form() {
                Some(form) => Extensions {
                    block: &self.buf[e.start..e.end],
                    pos: 0,
                    form,
                },
                None => Extensions::EMPTY,
            },
            None => Extensions::EMPTY,
        }
    }

    /// The data of the first element with this id.
    pub fn extension(&self, id: u8) -> Option<&'a [u8]> {
        self.extensions().find(|e| e.id == id).map(|e| e.data)
    }

    /// The RFC 6464 audio level, if the element negotiated as `id` is present and valid.
    pub fn audio_level(&self, id: u8) -> Option<AudioLevel> {
        self.extension(id).and_then(AudioLevel::from_extension)
    }

    /// Whether the P bit is set.
    pub fn has_padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }

    /// Number of padding bytes at the end (0 without padding).
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.payload_end
    }

    /// The payload, without header and padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_start..self.payload_end]
    }
}

/// Validates an RTP header (version, CSRC list, extension block and, for RFC 8285 profiles,
/// every element in it) and returns its length. The padding is not examined: this is the
/// check for an SRTP packet, whose header is clear but whose padding is encrypted.
pub fn header_len(buf: &[u8]) -> Result<usize, RtpError> {
    parse_header(buf).map(|(len, _)| len)
}

fn parse_header(buf: &[u8]) -> Result<(usize, Option<ExtBlock>), RtpError> {
    let len = buf.len();
    if len < FIXED_HEADER_LEN {
        return Err(RtpError::TooShort { len });
    }
    let version = buf[0] >> 6;
    if version != RTP_VERSION {
        return Err(RtpError::BadVersion(version));
    }
    let count = buf[0] & 0x0F;
    let end = FIXED_HEADER_LEN + 4 * usize::from(count);
    if end > len {
        return Err(RtpError::CsrcOverrun {
            count,
            needed: end,
            len,
        });
    }
    if buf[0] & 0x10 == 0 {
        return Ok((end, None));
    }
    if end + 4 > len {
        return Err(RtpError::ExtensionHeaderOverrun {
            needed: end + 4,
            len,
        });
    }
    let declared = 4 * usize::from(be16(buf, end + 2));
    let available = len - end - 4;
    if declared > available {
        return Err(RtpError::ExtensionOverrun {
            declared,
            available,
        });
    }
    let block = ExtBlock {
        profile: be16(buf, end),
        start: end + 4,
        end: end + 4 + declared,
    };
    if let Some(form) = block.form() {
        let data = &buf[block.start..block.end];
        let mut pos = 0;
        loop {
            match next_element(data, &mut pos, form) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err((offset, true)) => return Err(RtpError::ExtensionElementOverrun { offset }),
                Err((offset, false)) => return Err(RtpError::ExtensionElementInvalid { offset }),
            }
        }
    }
    Ok((block.end, Some(block)))
}

/// Iterator over a packet's CSRCs.
#[derive(Debug, Clone)]
pub struct Csrcs<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for Csrcs<'_> {
    type Item = Ssrc;
    fn next(&mut self) -> Option<Ssrc> {
        self.chunks.next().map(|c| Ssrc(be32(c, 0)))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for Csrcs<'_> {}

/// Iterator over a packet's RFC 8285 header extension elements.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    block: &'a [u8],
    pos: usize,
    form: ExtensionForm,
}

impl Extensions<'_> {
    const EMPTY: Extensions<'static> = Extensions {
        block: &[],
        pos: 0,
        form: ExtensionForm::OneByte,
    };
}

impl<'a> Iterator for Extensions<'a> {
    type Item = RtpExtension<'a>;
    fn next(&mut self) -> Option<RtpExtension<'a>> {
        // The block was validated by `RtpPacket::parse`; an error cannot occur here and
        // would end the iteration.
        next_element(self.block, &mut self.pos, self.form)
            .ok()
            .flatten()
    }
}

/// Builds an RTP packet into a caller-provided buffer, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacketBuilder<'a> {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: PayloadType,
    /// Wire sequence number.
    pub sequence_number: u16,
    /// Wire timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: Ssrc,
    /// Contributing sources (at most 15).
    pub csrcs: &'a [Ssrc],
    /// Header extension elements; none means no extension block.
    pub extensions: &'a [RtpExtension<'a>],
    /// How to encode the elements.
    pub extension_form: ExtensionForm,
    /// Payload bytes.
    pub payload: &'a [u8],
    /// Number of padding bytes to append, including the count byte (0: no padding).
    pub padding: u8,
}

impl<'a> RtpPacketBuilder<'a> {
    /// A packet with no marker, CSRCs, extensions, payload or padding.
    pub fn new(
        payload_type: PayloadType,
        sequence_number: u16,
        timestamp: u32,
        ssrc: Ssrc,
    ) -> Self {
        RtpPacketBuilder {
            marker: false,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            csrcs: &[],
            extensions: &[],
            extension_form: ExtensionForm::Auto,
            payload: &[],
            padding: 0,
        }
    }

    /// Sets the marker bit.
    pub fn marker(mut self, marker: bool) -> Self {
        self.marker = marker;
        self
    }

    /// Sets the CSRC list.
    pub fn csrcs(mut self, csrcs: &'a [Ssrc]) -> Self {
        self.csrcs = csrcs;
        self
    }

    /// Sets the header extension elements.
    pub fn extensions(mut self, extensions: &'a [RtpExtension<'a>]) -> Self {
        self.extensions = extensions;
        self
    }

    /// Forces an extension form (default [`ExtensionForm::Auto`]).
    pub fn extension_form(mut self, form: ExtensionForm) -> Self {
        self.extension_form = form;
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }

    /// Appends `padding` bytes of padding (including the count byte); 0 for none.
    pub fn padding(mut self, padding: u8) -> Self {
        self.padding = padding;
        self
    }

    fn resolve_form(&self) -> Result<ExtensionForm, RtpError> {
        let fits_one =
            |e: &RtpExtension<'_>| (1..=14).contains(&e.id) && (1..=16).contains(&e.data.len());
        let fits_two = |e: &RtpExtension<'_>| e.id != 0 && e.data.len() <= 255;
        let form = match self.extension_form {
            ExtensionForm::Auto if self.extensions.iter().all(fits_one) => ExtensionForm::OneByte,
            ExtensionForm::Auto => ExtensionForm::TwoByte,
            f => f,
        };
        let fits = match form {
            ExtensionForm::OneByte => fits_one,
            _ => fits_two,
        };
        if let Some(bad) = self.extensions.iter().find(|e| !fits(e)) {
            return Err(RtpError::ExtensionNotEncodable {
                id: bad.id,
                len: bad.data.len(),
                form,
            });
        }
        Ok(form)
    }

    /// Length of the extension block data (padded to 32 bits), 0 without extensions.
    fn extension_block_len(&self, form: ExtensionForm) -> usize {
        let per = if form == ExtensionForm::OneByte { 1 } else { 2 };
        let raw: usize = self.extensions.iter().map(|e| per + e.data.len()).sum();
        raw.div_ceil(4) * 4
    }

    /// The encoded length of the packet.
    pub fn encoded_len(&self) -> Result<usize, RtpError> {
        if self.csrcs.len() > 15 {
            return Err(RtpError::TooManyCsrcs(self.csrcs.len()));
        }
        let mut len = FIXED_HEADER_LEN + 4 * self.csrcs.len();
        if !self.extensions.is_empty() {
            let form = self.resolve_form()?;
            let block = self.extension_block_len(form);
            if block / 4 > usize::from(u16::MAX) {
                return Err(RtpError::ExtensionBlockTooLong(block));
            }
            len += 4 + block;
        }
        Ok(len + self.payload.len() + usize::from(self.padding))
    }

    /// Writes the packet to the start of `out`; returns its length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        let needed = self.encoded_len()?;
        let Some(out) = out.get_mut(..needed) else {
            return Err(RtpError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        };
        let has_ext = !self.extensions.is_empty();
        // encoded_len checked csrcs.len() <= 15.
        out[0] = (RTP_VERSION << 6)
            | if self.padding > 0 { 0x20 } else { 0 }
            | if has_ext { 0x10 } else { 0 }
            | self.csrcs.len() as u8;
        out[1] = if self.marker { 0x80 } else { 0 } | self.payload_type.get();
        out[2..4].copy_from_slice(&self.sequence_number.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.0.to_be_bytes());
        let mut pos = FIXED_HEADER_LEN;
        for c in self.csrcs {
            out[pos..pos + 4].copy_from_slice(&c.0.to_be_bytes());
            pos += 4;
        }
        if has_ext {
            let form = self.resolve_form()?;
            let block = self.extension_block_len(form);
            let profile = if form == ExtensionForm::OneByte {
                EXTENSION_PROFILE_ONE_BYTE
            } else {
                EXTENSION_PROFILE_TWO_BYTE
            };
            out[pos..pos + 2].copy_from_slice(&profile.to_be_bytes());
            // encoded_len checked block / 4 <= u16::MAX.
            out[pos + 2..pos + 4].copy_from_slice(&((block / 4) as u16).to_be_bytes());
            pos += 4;
            let block_end = pos + block;
            for e in self.extensions {
                // resolve_form checked the id and length ranges of every element.
                if form == ExtensionForm::OneByte {
                    out[pos] = (e.id << 4) | (e.data.len() - 1) as u8;
                    pos += 1;
                } else {
                    out[pos] = e.id;
                    out[pos + 1] = e.data.len() as u8;
                    pos += 2;
                }
                out[pos..pos + e.data.len()].copy_from_slice(e.data);
                pos += e.data.len();
            }
            out[pos..block_end].fill(0);
            pos = block_end;
        }
        out[pos..pos + self.payload.len()].copy_from_slice(self.payload);
        pos += self.payload.len();
        if self.padding > 0 {
            let pad_end = pos + usize::from(self.padding);
            out[pos..pad_end - 1].fill(0);
            out[pad_end - 1] = self.padding;
            pos = pad_end;
        }
        debug_assert_eq!(pos, needed);
        Ok(needed)
    }
}

/// RFC 6464 client-to-mixer audio level: a voice-activity flag and the level in
/// -dBov (0 is the loudest, 127 silence), carried as a one-byte (or two-byte) header
/// extension element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel {
    voice: bool,
    level: u8,
}

impl AudioLevel {
    /// The quietest level: 127 dB below overload.
    pub const SILENCE: AudioLevel = AudioLevel {
        voice: false,
        level: 127,
    };

    /// `level` is the attenuation below overload in dB, 0..=127.
    pub const fn new(voice: bool, level: u8) -> Option<Self> {
        if level <= 127 {
            Some(AudioLevel { voice, level })
        } else {
            None
        }
    }

    /// From a measured level in dBov (<= 0), rounded and clamped to 0..=127 dB.
    pub fn from_dbov(dbov: f32, voice: bool) -> Self {
        let level = if dbov.is_nan() {
            127.0
        } else {
            (-dbov).round().clamp(0.0, 127.0)
        };
        AudioLevel {
            voice,
            // Clamped to 0..=127 above.
            level: level as u8,
        }
    }

    /// Reads an element's data. RFC 6464 puts the value in one byte; some senders pad the
    /// element, so any data of at least one byte is read from its first byte.
    pub fn from_extension(data: &[u8]) -> Option<Self> {
        let &b = data.first()?;
        Some(AudioLevel {
            voice: b & 0x80 != 0,
            level: b & 0x7F,
        })
    }

    /// The encoded byte (V flag, then 7-bit level).
    pub const fn to_byte(self) -> u8 {
        (if self.voice { 0x80 } else { 0 }) | self.level
    }

    /// The sender's voice-activity flag.
    pub const fn voice(self) -> bool {
        self.voice
    }

    /// Attenuation below overload in dB (0 = loudest, 127 = silence).
    pub const fn level(self) -> u8 {
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc_shared::marshal::{Marshal, Unmarshal};

    fn pt(v: u8) -> PayloadType {
        PayloadType::new(v).unwrap()
    }

    fn full_packet(buf: &mut [u8]) -> usize {
        let level = [AudioLevel::new(true, 42).unwrap().to_byte()];
        let exts = [
            RtpExtension {
                id: 1,
                data: &level,
            },
            RtpExtension {
                id: 3,
                data: &[1, 2, 3],
            },
        ];
        let csrcs = [Ssrc(0x1111_1111), Ssrc(0x2222_2222)];
        RtpPacketBuilder::new(pt(111), 0xFFFF, 0xDEAD_BEEF, Ssrc(0xCAFE_BABE))
            .marker(true)
            .csrcs(&csrcs)
            .extensions(&exts)
            .payload(b"opus frame")
            .padding(6)
            .write(buf)
            .unwrap()
    }

    #[test]
    fn a_built_packet_parses_back_to_the_same_fields() {
        let mut buf = [0u8; 128];
        let n = full_packet(&mut buf);
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert!(p.marker());
        assert_eq!(p.payload_type(), pt(111));
        assert_eq!(p.sequence_number(), 0xFFFF);
        assert_eq!(p.timestamp(), 0xDEAD_BEEF);
        assert_eq!(p.ssrc(), Ssrc(0xCAFE_BABE));
        assert_eq!(
            p.csrcs().collect::<Vec<_>>(),
            [Ssrc(0x1111_1111), Ssrc(0x2222_2222)]
        );
        assert_eq!(p.extension_profile(), Some(EXTENSION_PROFILE_ONE_BYTE));
        let exts: Vec<_> = p.extensions().collect();
        assert_eq!(exts.len(), 2);
        assert_eq!(
            exts[1],
            RtpExtension {
                id: 3,
                data: &[1, 2, 3]
            }
        );
        assert_eq!(p.audio_level(1), AudioLevel::new(true, 42));
        assert_eq!(p.payload(), b"opus frame");
        assert_eq!(p.padding_len(), 6);
        assert_eq!(p.header_len(), 12 + 8 + 4 + 8);
        assert_eq!(n, p.header_len() + 10 + 6);
    }

    #[test]
    fn large_or_empty_elements_use_the_two_byte_form() {
        let big = [7u8; 40];
        let exts = [
            RtpExtension { id: 20, data: &big },
            RtpExtension { id: 2, data: &[] },
        ];
        let mut buf = [0u8; 128];
        let n = RtpPacketBuilder::new(pt(96), 1, 2, Ssrc(3))
            .extensions(&exts)
            .write(&mut buf)
            .unwrap();
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.extension_profile(), Some(EXTENSION_PROFILE_TWO_BYTE));
        assert_eq!(p.extension(20), Some(&big[..]));
        assert_eq!(p.extension(2), Some(&[][..]));
        assert!(p.payload().is_empty());
        let forced = RtpPacketBuilder::new(pt(96), 1, 2, Ssrc(3))
            .extensions(&exts)
            .extension_form(ExtensionForm::OneByte)
            .write(&mut buf);
        assert!(matches!(
            forced,
            Err(RtpError::ExtensionNotEncodable { id: 20, .. })
        ));
    }

    #[test]
    fn the_builder_reports_a_too_small_buffer() {
        let mut buf = [0u8; 20];
        let r = RtpPacketBuilder::new(pt(0), 1, 2, Ssrc(3))
            .payload(&[0; 160])
            .write(&mut buf);
        assert_eq!(
            r,
            Err(RtpError::BufferTooSmall {
                needed: 172,
                available: 20
            })
        );
        let sixteen = [Ssrc(0); 16];
        assert_eq!(
            RtpPacketBuilder::new(pt(0), 1, 2, Ssrc(3))
                .csrcs(&sixteen)
                .encoded_len(),
            Err(RtpError::TooManyCsrcs(16))
        );
    }

    #[test]
    fn malformed_headers_give_the_specific_error() {
        let mut buf = [0u8; 128];
        let n = full_packet(&mut buf);
        let good = &buf[..n];

        assert_eq!(
            RtpPacket::parse(&good[..11]),
            Err(RtpError::TooShort { len: 11 })
        );
        let mut v1 = good.to_vec();
        v1[0] = (v1[0] & 0x3F) | 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::BadVersion(1)));

        let mut cc = good.to_vec();
        cc[0] |= 0x0F;
        cc.truncate(40);
        assert!(matches!(
            RtpPacket::parse(&cc),
            Err(RtpError::CsrcOverrun { count: 15, .. })
        ));

        let mut ext = good.to_vec();
        ext[22..24].copy_from_slice(&100u16.to_be_bytes());
        assert!(matches!(
            RtpPacket::parse(&ext),
            Err(RtpError::ExtensionOverrun { declared: 400, .. })
        ));

        // An element length running past its (otherwise valid) block.
        let mut elem = good.to_vec();
        elem[24 + 2] = 0x3F; // id 3, 16 bytes, in an 8-byte block
        assert!(matches!(
            RtpPacket::parse(&elem),
            Err(RtpError::ExtensionElementOverrun { offset: 2 })
        ));

        let mut zero_id = good.to_vec();
        zero_id[24] = 0x02;
        assert!(matches!(
            RtpPacket::parse(&zero_id),
            Err(RtpError::ExtensionElementInvalid { offset: 0 })
        ));

        let mut pad0 = good.to_vec();
        *pad0.last_mut().unwrap() = 0;
        assert_eq!(RtpPacket::parse(&pad0), Err(RtpError::ZeroPadding));

        let mut pad_big = good.to_vec();
        *pad_big.last_mut().unwrap() = 17;
        assert_eq!(
            RtpPacket::parse(&pad_big),
            Err(RtpError::PaddingOverrun {
                count: 17,
                available: 16
            })
        );
        // Padding that consumes exactly the whole payload is valid.
        *pad_big.last_mut().unwrap() = 16;
        assert!(RtpPacket::parse(&pad_big).unwrap().payload().is_empty());
    }

    #[test]
    fn one_byte_id_15_stops_extension_processing() {
        let mut buf = [0u8; 64];
        let exts = [
            RtpExtension { id: 1, data: &[9] },
            RtpExtension { id: 2, data: &[8] },
        ];
        let n = RtpPacketBuilder::new(pt(0), 1, 2, Ssrc(3))
            .extensions(&exts)
            .write(&mut buf)
            .unwrap();
        // Replace the second element's header with id 15: only the first remains.
        buf[12 + 4 + 2] = 0xF0;
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.extensions().map(|e| e.id).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn an_unknown_extension_profile_is_kept_as_an_opaque_block() {
        let mut buf = vec![0x90, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[0xAB, 0xCD, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0x55]);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.extension_profile(), Some(0xABCD));
        assert_eq!(p.extension_block(), Some(&[0xFF; 4][..]));
        assert_eq!(p.extensions().count(), 0);
        assert_eq!(p.payload(), [0x55]);
    }

    #[test]
    fn audio_level_encodes_flag_and_level() {
        let a = AudioLevel::new(true, 30).unwrap();
        assert_eq!(a.to_byte(), 0x80 | 30);
        assert_eq!(AudioLevel::from_extension(&[0x80 | 30]), Some(a));
        assert_eq!(AudioLevel::from_extension(&[]), None);
        assert_eq!(AudioLevel::new(false, 128), None);
        assert_eq!(AudioLevel::from_dbov(-30.4, true), a);
        assert_eq!(AudioLevel::from_dbov(3.0, false).level(), 0);
        assert_eq!(AudioLevel::from_dbov(-200.0, false), AudioLevel::SILENCE);
    }

    // Cross-checks against rtc-rtp, an independent implementation.

    #[test]
    fn rtc_rtp_parses_our_packets_identically() {
        let mut buf = [0u8; 128];
        let n = full_packet(&mut buf);
        let theirs = rtc_rtp::Packet::unmarshal(&mut &buf[..n]).unwrap();
        let h = &theirs.header;
        assert_eq!(h.version, 2);
        assert!(h.marker && h.padding && h.extension);
        assert_eq!(h.payload_type, 111);
        assert_eq!(h.sequence_number, 0xFFFF);
        assert_eq!(h.timestamp, 0xDEAD_BEEF);
        assert_eq!(h.ssrc, 0xCAFE_BABE);
        assert_eq!(h.csrc, [0x1111_1111, 0x2222_2222]);
        assert_eq!(h.extension_profile, EXTENSION_PROFILE_ONE_BYTE);
        assert_eq!(h.get_extension(3).as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(h.get_extension(1).as_deref(), Some(&[0x80u8 | 42][..]));
        assert_eq!(&theirs.payload[..], b"opus frame");

        let big = [5u8; 30];
        let exts = [RtpExtension {
            id: 200,
            data: &big,
        }];
        let n = RtpPacketBuilder::new(pt(96), 7, 8, Ssrc(9))
            .extensions(&exts)
            .payload(&[1, 2, 3])
            .write(&mut buf)
            .unwrap();
        let theirs = rtc_rtp::Packet::unmarshal(&mut &buf[..n]).unwrap();
        assert_eq!(theirs.header.extension_profile, EXTENSION_PROFILE_TWO_BYTE);
        assert_eq!(theirs.header.get_extension(200).as_deref(), Some(&big[..]));
        assert_eq!(&theirs.payload[..], [1, 2, 3]);
    }

    #[test]
    fn we_parse_rtc_rtp_packets_identically() {
        for (profile, ids) in [
            (EXTENSION_PROFILE_ONE_BYTE, [1u8, 5, 14]),
            (EXTENSION_PROFILE_TWO_BYTE, [1u8, 100, 255]),
        ] {
            let mut header = rtc_rtp::Header {
                version: 2,
                padding: true,
                marker: true,
                payload_type: 8,
                sequence_number: 4242,
                timestamp: 160 * 77,
                ssrc: 0x0102_0304,
                csrc: vec![7, 8, 9],
                extension_profile: profile,
                ..Default::default()
            };
            header.extension = true;
            for (i, id) in ids.iter().enumerate() {
                header.extensions.push(rtc_rtp::header::Extension {
                    id: *id,
                    payload: Bytes::from(vec![i as u8 + 1; i + 1]),
                });
            }
            let packet = rtc_rtp::Packet {
                header,
                payload: Bytes::from_static(&[0xD5; 13]),
            };
            let raw = packet.marshal().unwrap();
            let p = RtpPacket::parse(&raw).unwrap();
            assert!(p.marker());
            assert_eq!(p.payload_type(), PayloadType::PCMA);
            assert_eq!(p.sequence_number(), 4242);
            assert_eq!(p.timestamp(), 160 * 77);
            assert_eq!(p.ssrc(), Ssrc(0x0102_0304));
            assert_eq!(p.csrcs().map(|c| c.0).collect::<Vec<_>>(), [7, 8, 9]);
            let got: Vec<(u8, Vec<u8>)> = p.extensions().map(|e| (e.id, e.data.to_vec())).collect();
            let want: Vec<(u8, Vec<u8>)> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, vec![i as u8 + 1; i + 1]))
                .collect();
            assert_eq!(got, want);
            assert_eq!(p.payload(), [0xD5; 13]);
            assert_eq!(p.padding_len(), 3);
        }
    }
}

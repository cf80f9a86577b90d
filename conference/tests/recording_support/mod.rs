//! Shared by the `recording_*` tests: reads an Ogg Opus file back with two
//! readers that share no code with the writer (the `ogg` crate's
//! `PacketReader` for packets, and a plain page-header walk for flags and
//! granule positions), decodes it with libopus, and provides the test speech.
//! Deterministic: the speech is a file, every RNG is seeded.
#![allow(dead_code)]

use confer_codecs::decoder::AudioDecoder;
use confer_codecs::opus::OpusDecoder;
use confer_codecs::resample::Resampler;
use std::io::Cursor;

/// One Ogg page header, as read from the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub flags: u8,
    pub granule: u64,
    pub serial: u32,
    pub sequence: u32,
    /// Lacing values below 255 = packets that end on this page.
    pub packets_ending: usize,
}

pub const BOS: u8 = 0x02;
pub const EOS: u8 = 0x04;
pub const CONTINUED: u8 = 0x01;

/// Walks the page headers; panics (the test fails) on anything malformed.
pub fn pages(bytes: &[u8]) -> Vec<Page> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let h = &bytes[pos..];
        assert_eq!(&h[..4], b"OggS", "page at byte {pos}");
        assert_eq!(h[4], 0, "stream structure version");
        let nseg = usize::from(h[26]);
        let lacing = &h[27..27 + nseg];
        let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        out.push(Page {
            flags: h[5],
            granule: u64::from_le_bytes(h[6..14].try_into().unwrap()),
            serial: u32::from_le_bytes(h[14..18].try_into().unwrap()),
            sequence: u32::from_le_bytes(h[18..22].try_into().unwrap()),
            packets_ending: lacing.iter().filter(|&&l| l < 255).count(),
        });
        pos += 27 + nseg + body;
    }
    assert_eq!(pos, bytes.len(), "trailing bytes after the last page");
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub version: u8,
    pub channels: u8,
    pub pre_skip: u16,
    pub input_sample_rate: u32,
    pub output_gain: i16,
    pub mapping_family: u8,
}

#[derive(Debug)]
pub struct Parsed {
    pub serial: u32,
    pub head: OpusHead,
    pub vendor: String,
    pub comments: Vec<String>,
    /// Audio packets with the granule position of the page each ended on.
    pub packets: Vec<(Vec<u8>, u64)>,
    pub final_granule: u64,
}

/// Reads the file with the `ogg` crate (which checks every page CRC) and
/// checks the header packets' layout (RFC 7845 section 5).
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut r = ogg::PacketReader::new(Cursor::new(bytes));
    let head = r.read_packet_expected().expect("OpusHead packet");
    assert!(
        head.first_in_stream() && head.last_in_page(),
        "OpusHead alone on the first page"
    );
    assert_eq!(head.absgp_page(), 0);
    let d = &head.data;
    assert_eq!(d.len(), 19);
    assert_eq!(&d[..8], b"OpusHead");
    let opus_head = OpusHead {
        version: d[8],
        channels: d[9],
        pre_skip: u16::from_le_bytes([d[10], d[11]]),
        input_sample_rate: u32::from_le_bytes(d[12..16].try_into().unwrap()),
        output_gain: i16::from_le_bytes([d[16], d[17]]),
        mapping_family: d[18],
    };
    let tags = r.read_packet_expected().expect("OpusTags packet");
    assert!(
        tags.first_in_page() && tags.last_in_page(),
        "OpusTags alone on its page"
    );
    assert_eq!(tags.absgp_page(), 0);
    let t = &tags.data;
    assert_eq!(&t[..8], b"OpusTags");
    let u32_at = |pos: usize| u32::from_le_bytes(t[pos..pos + 4].try_into().unwrap()) as usize;
    let field = |pos: &mut usize| {
        let n = u32_at(*pos);
        let s = String::from_utf8(t[*pos + 4..*pos + 4 + n].to_vec()).expect("UTF-8");
        *pos += 4 + n;
        s
    };
    let mut pos = 8;
    let vendor = field(&mut pos);
    let count = u32_at(pos);
    pos += 4;
    let comments = (0..count).map(|_| field(&mut pos)).collect();
    assert_eq!(pos, t.len(), "OpusTags length");
    let mut packets = Vec::new();
    let mut final_granule = 0;
    let mut ended = tags.last_in_stream();
    while let Some(p) = r.read_packet().expect("valid Ogg") {
        assert!(!ended, "packet after end of stream");
        assert_eq!(p.stream_serial(), head.stream_serial());
        final_granule = p.absgp_page();
        ended = p.last_in_stream();
        let granule = p.absgp_page();
        packets.push((p.data, granule));
    }
    assert!(ended, "the stream has no end-of-stream page");
    Parsed {
        serial: head.stream_serial(),
        head: opus_head,
        vendor,
        comments,
        packets,
        final_granule,
    }
}

/// Decodes every packet at 48 kHz and applies pre-skip and end trimming as a
/// player does (RFC 7845 section 4): the audio the file plays.
pub fn decode(p: &Parsed) -> Vec<f32> {
    let mut dec = OpusDecoder::new(48000).unwrap();
    let mut all = Vec::new();
    let mut frame = vec![0f32; dec.max_frame_samples()];
    for (packet, _) in &p.packets {
        let n = dec.decode(packet, &mut frame).expect("decodable packet");
        all.extend_from_slice(&frame[..n]);
    }
    let total = all.len() as u64;
    assert!(
        p.final_granule <= total,
        "final granule {} past the {} decoded samples",
        p.final_granule,
        total
    );
    let pre_skip = usize::from(p.head.pre_skip);
    assert!(
        p.final_granule as usize >= pre_skip,
        "final granule below the pre-skip"
    );
    all.truncate(p.final_granule as usize);
    all.drain(..pre_skip);
    all
}

/// The test speech upsampled to 48 kHz with the codecs' resampler, in whole
/// 20 ms frames.
pub fn speech_48k() -> Vec<f32> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/audio/speech-16k.wav"
    );
    let mut r = hound::WavReader::open(path).expect("test speech file");
    assert_eq!(r.spec().sample_rate, 16000);
    let pcm: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.expect("valid wav sample")) / 32768.0)
        .collect();
    let mut rs = Resampler::new(16000, 48000, 20).unwrap();
    let mut out = Vec::with_capacity(pcm.len() * 3);
    let mut buf = [0f32; 960];
    for chunk in pcm.chunks_exact(320) {
        let n = rs.process(chunk, &mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    out
}

pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    ab / (aa * bb).sqrt()
}

pub fn rms_db(a: &[f32]) -> f64 {
    let e: f64 =
        a.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / a.len().max(1) as f64;
    10.0 * e.max(1e-20).log10()
}

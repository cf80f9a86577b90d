//! The codecs confer negotiates on SIP legs, their SDP names and parameters.
//!
//! - PCMU and PCMA (G.711, static payload types 0 and 8), 8 kHz.
//! - G.722 (static payload type 9): 16 kHz audio, but RFC 3551 section 4.5.2 fixes its
//!   RTP clock at 8000 for historical reasons, so `rtpmap` says `G722/8000` and RTP
//!   timestamps advance 8000 per second. [`Codec::sample_rate`] and
//!   [`Codec::rtp_clock_rate`] keep the two apart.
//! - Opus (dynamic payload type): always `opus/48000/2` in SDP whatever is sent (RFC 7587
//!   section 7); its `fmtp` is parsed into [`OpusParams`] and turned into what our encoder
//!   must respect for this peer, [`OpusSendParams`].
//! - RFC 4733 telephone-event, at 8000 or 48000 Hz; its event list is an [`EventSet`].
//!
//! Encoding names compare case-insensitively (RFC 4855 section 3). We are strict about
//! clock rates (`G722/16000` is not G.722 as RFC 3551 defines it) and channel counts
//! (`PCMU/8000/2` is not something we decode), tolerant about Opus's channel count
//! (`opus/48000` and `opus/48000/1` are seen in the field and mean the same codec).

use std::fmt;

use super::model::RtpMap;

/// An audio codec we can send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722 (16 kHz audio, 8000 Hz RTP clock).
    G722,
    /// Opus.
    Opus,
}

impl Codec {
    /// The encoding name written in `a=rtpmap`.
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The RTP timestamp clock rate (what `a=rtpmap` states).
    pub const fn rtp_clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
    }

    /// The audio sample rate the codec codes at (G.722: 16000, unlike its RTP clock).
    pub const fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
        }
    }

    /// The channel count written in `a=rtpmap` (only Opus writes one: always 2).
    pub const fn rtpmap_channels(self) -> Option<u16> {
        match self {
            Codec::Opus => Some(2),
            _ => None,
        }
    }

    /// The RFC 3551 static payload type, if the codec has one.
    pub const fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::Opus => None,
        }
    }

    /// The packet times in ms we packetize this codec at: multiples of 10 ms up to 60
    /// (the mixer ticks in 10 ms steps); Opus frames are 10, 20, 40 or 60 ms.
    pub const fn ptimes(self) -> &'static [u32] {
        match self {
            Codec::Opus => &[10, 20, 40, 60],
            _ => &[10, 20, 30, 40, 50, 60],
        }
    }

    /// The codec an rtpmap names, if it is one of ours.
    pub fn from_rtpmap(map: &RtpMap) -> Option<Self> {
        let name = map.encoding.as_str();
        let mono = matches!(map.channels, None | Some(1));
        let codec = if name.eq_ignore_ascii_case("PCMU") && map.clock_rate == 8000 && mono {
            Codec::Pcmu
        } else if name.eq_ignore_ascii_case("PCMA") && map.clock_rate == 8000 && mono {
            Codec::Pcma
        } else if name.eq_ignore_ascii_case("G722") && map.clock_rate == 8000 && mono {
            Codec::G722
        } else if name.eq_ignore_ascii_case("opus")
            && map.clock_rate == 48000
            && matches!(map.channels, None | Some(1) | Some(2))
        {
            Codec::Opus
        } else {
            return None;
        };
        Some(codec)
    }

    /// The rtpmap we write for this codec with payload type `pt`.
    pub fn rtpmap(self, payload_type: u8) -> RtpMap {
        RtpMap {
            payload_type,
            encoding: self.encoding_name().to_owned(),
            clock_rate: self.rtp_clock_rate(),
            channels: self.rtpmap_channels(),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// The RFC 3551 (table 4) static audio payload types, for m-lines without `a=rtpmap`.
pub fn static_rtpmap(payload_type: u8) -> Option<RtpMap> {
    let (name, rate, channels) = match payload_type {
        0 => ("PCMU", 8000, None),
        3 => ("GSM", 8000, None),
        4 => ("G723", 8000, None),
        5 => ("DVI4", 8000, None),
        6 => ("DVI4", 16000, None),
        7 => ("LPC", 8000, None),
        8 => ("PCMA", 8000, None),
        9 => ("G722", 8000, None),
        10 => ("L16", 44100, Some(2)),
        11 => ("L16", 44100, None),
        12 => ("QCELP", 8000, None),
        13 => ("CN", 8000, None),
        14 => ("MPA", 90000, None),
        15 => ("G728", 8000, None),
        16 => ("DVI4", 11025, None),
        17 => ("DVI4", 22050, None),
        18 => ("G729", 8000, None),
        _ => return None,
    };
    Some(RtpMap {
        payload_type,
        encoding: name.to_owned(),
        clock_rate: rate,
        channels,
    })
}

/// Whether an rtpmap is RFC 4733 telephone-event.
pub fn is_telephone_event(map: &RtpMap) -> bool {
    map.encoding.eq_ignore_ascii_case("telephone-event")
}

/// A set of RFC 4733 event codes (0..=255), as the telephone-event `fmtp` lists them
/// (`0-15,66,70`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventSet([u64; 4]);

impl EventSet {
    /// The sixteen DTMF events 0-9, `*`, `#`, A-D: what we send and understand, and what a
    /// telephone-event without `fmtp` means (RFC 4733 section 2.4.1).
    pub const DTMF: EventSet = EventSet([0xFFFF, 0, 0, 0]);

    /// The events in `low..=high`.
    pub fn range(low: u8, high: u8) -> Self {
        let mut set = EventSet::default();
        for e in low..=high {
            set.insert(e);
        }
        set
    }

    /// Adds an event.
    pub fn insert(&mut self, event: u8) {
        self.0[usize::from(event / 64)] |= 1 << (event % 64);
    }

    /// Whether the set holds an event.
    pub fn contains(&self, event: u8) -> bool {
        self.0[usize::from(event / 64)] & (1 << (event % 64)) != 0
    }

    /// The events in both sets.
    pub fn intersect(&self, other: &EventSet) -> EventSet {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0) {
            *a &= b;
        }
        out
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Parses an event list (`0-15,66,70`); `None` when it is not one. Spaces around
    /// entries are tolerated.
    pub fn parse(text: &str) -> Option<Self> {
        let mut set = EventSet::default();
        for entry in text.split(',') {
            let entry = entry.trim();
            let (low, high) = match entry.split_once('-') {
                Some((l, h)) => (l.trim().parse::<u8>().ok()?, h.trim().parse::<u8>().ok()?),
                None => {
                    let e = entry.parse::<u8>().ok()?;
                    (e, e)
                }
            };
            if low > high {
                return None;
            }
            set = set.union(&EventSet::range(low, high));
        }
        Some(set)
    }

    fn union(&self, other: &EventSet) -> EventSet {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        out
    }
}

impl fmt::Display for EventSet {
    /// Ranges in ascending order, `0-15,66`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut e: u16 = 0;
        while e <= 255 {
            // `e <= 255` makes the casts exact.
            if !self.contains(e as u8) {
                e += 1;
                continue;
            }
            let start = e;
            while e < 255 && self.contains((e + 1) as u8) {
                e += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == e {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{e}")?;
            }
            e += 1;
        }
        Ok(())
    }
}

/// The Opus `fmtp` parameters of RFC 7587 section 6.1, typed. Each describes the side
/// whose SDP carries it: the plain ones what it wants to *receive*, the `sprop-` ones what
/// it will *send*. Absent parameters are `None`; unknown ones and malformed values are
/// ignored, as RFC 7587 section 6.1 asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpusParams {
    /// `maxplaybackrate`: the highest audio rate (Hz) the receiver wants to decode.
    pub max_playback_rate: Option<u32>,
    /// `sprop-maxcapturerate`: the highest rate the sender will capture at.
    pub sprop_max_capture_rate: Option<u32>,
    /// `maxaveragebitrate`: the highest average bit rate (bit/s) the receiver wants.
    pub max_average_bitrate: Option<u32>,
    /// `stereo`: the receiver prefers stereo.
    pub stereo: Option<bool>,
    /// `sprop-stereo`: the sender may send stereo.
    pub sprop_stereo: Option<bool>,
    /// `cbr`: the receiver wants constant bit rate.
    pub cbr: Option<bool>,
    /// `useinbandfec`: the receiver can use in-band FEC, so the sender should add it.
    pub use_inband_fec: Option<bool>,
    /// `usedtx`: the receiver prefers discontinuous transmission.
    pub use_dtx: Option<bool>,
    /// `ptime`: preferred packet time in ms.
    pub ptime: Option<u32>,
    /// `minptime`: the shortest packet time in ms the receiver wants.
    pub minptime: Option<u32>,
    /// `maxptime`: the longest packet time in ms the receiver accepts.
    pub maxptime: Option<u32>,
}

impl OpusParams {
    /// What we put in our own `fmtp` by default: full band, mono, in-band FEC welcome, no
    /// DTX (the conference mixer wants a continuous stream).
    pub const RECEIVE_DEFAULT: OpusParams = OpusParams {
        max_playback_rate: Some(48000),
        sprop_max_capture_rate: None,
        max_average_bitrate: None,
        stereo: Some(false),
        sprop_stereo: Some(false),
        cbr: None,
        use_inband_fec: Some(true),
        use_dtx: Some(false),
        ptime: None,
        minptime: Some(10),
        maxptime: None,
    };

    /// Parses `key=value;key=value` parameters.
    pub fn parse(text: &str) -> Self {
        let mut p = OpusParams::default();
        for item in text.split(';') {
            let Some((key, value)) = item.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let num = || value.parse::<u32>().ok();
            let flag = || match value {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            };
            let key = key.to_ascii_lowercase();
            match key.as_str() {
                "maxplaybackrate" => p.max_playback_rate = num().or(p.max_playback_rate),
                "sprop-maxcapturerate" => {
                    p.sprop_max_capture_rate = num().or(p.sprop_max_capture_rate);
                }
                "maxaveragebitrate" => p.max_average_bitrate = num().or(p.max_average_bitrate),
                "stereo" => p.stereo = flag().or(p.stereo),
                "sprop-stereo" => p.sprop_stereo = flag().or(p.sprop_stereo),
                "cbr" => p.cbr = flag().or(p.cbr),
                "useinbandfec" => p.use_inband_fec = flag().or(p.use_inband_fec),
                "usedtx" => p.use_dtx = flag().or(p.use_dtx),
                "ptime" => p.ptime = num().filter(|v| *v > 0).or(p.ptime),
                "minptime" => p.minptime = num().filter(|v| *v > 0).or(p.minptime),
                "maxptime" => p.maxptime = num().filter(|v| *v > 0).or(p.maxptime),
                _ => {}
            }
        }
        p
    }

    /// The `fmtp` text (empty when no parameter is set).
    pub fn to_fmtp(&self) -> String {
        let mut out = Vec::new();
        let mut num = |k: &str, v: Option<u32>| {
            if let Some(v) = v {
                out.push(format!("{k}={v}"));
            }
        };
        num("minptime", self.minptime);
        num("ptime", self.ptime);
        num("maxptime", self.maxptime);
        num("maxplaybackrate", self.max_playback_rate);
        num("sprop-maxcapturerate", self.sprop_max_capture_rate);
        num("maxaveragebitrate", self.max_average_bitrate);
        let flags = [
            ("stereo", self.stereo),
            ("sprop-stereo", self.sprop_stereo),
            ("cbr", self.cbr),
            ("useinbandfec", self.use_inband_fec),
            ("usedtx", self.use_dtx),
        ];
        for (k, v) in flags {
            if let Some(v) = v {
                out.push(format!("{k}={}", u8::from(v)));
            }
        }
        out.join(";")
    }
}

/// How our Opus encoder must run for a peer, derived from the peer's [`OpusParams`]
/// (RFC 7587 section 7.1: the receiver's parameters bind the sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpusSendParams {
    /// The highest audio bandwidth to encode, as a sample rate: 8000 (narrowband), 12000,
    /// 16000 (wideband), 24000 or 48000 (fullband). From `maxplaybackrate`, default 48000.
    pub max_sample_rate: u32,
    /// Send stereo (the peer asked with `stereo=1`; a mono source stays mono).
    pub stereo: bool,
    /// Add in-band FEC (`useinbandfec=1`).
    pub inband_fec: bool,
    /// Use DTX (`usedtx=1`).
    pub dtx: bool,
    /// Constant bit rate (`cbr=1`).
    pub cbr: bool,
    /// Cap on the average bit rate in bit/s, within Opus's 6000..=510000.
    pub max_average_bitrate: Option<u32>,
    /// All the peer's parameters, including what it will send (`sprop-*`).
    pub remote: OpusParams,
}

impl OpusSendParams {
    /// Derives our sending constraints from the peer's parameters.
    pub fn from_remote(remote: OpusParams) -> Self {
        // Round the playback rate down to an Opus bandwidth; below 8000 is nonsense and
        // treated as narrowband.
        let max_sample_rate = match remote.max_playback_rate.unwrap_or(48000) {
            r if r >= 48000 => 48000,
            r if r >= 24000 => 24000,
            r if r >= 16000 => 16000,
            r if r >= 12000 => 12000,
            _ => 8000,
        };
        OpusSendParams {
            max_sample_rate,
            stereo: remote.stereo == Some(true),
            inband_fec: remote.use_inband_fec == Some(true),
            dtx: remote.use_dtx == Some(true),
            cbr: remote.cbr == Some(true),
            max_average_bitrate: remote.max_average_bitrate.map(|b| b.clamp(6000, 510_000)),
            remote,
        }
    }
}

/// The packet time to send with: the peer's preference if we can packetize it, else the
/// largest of ours below it (else the smallest of ours), within the peer's min/max.
/// `preferred` is the peer's ptime (or ours when the peer states none); `step` is our
/// frame clock (10 or 20 ms): we send whole frames, so only its multiples are ours.
pub fn choose_ptime(
    codec: Codec,
    step: u32,
    preferred: u32,
    min: Option<u32>,
    max: Option<u32>,
) -> u32 {
    let whole: Vec<u32> = codec
        .ptimes()
        .iter()
        .copied()
        .filter(|p| step == 0 || p.is_multiple_of(step))
        .collect();
    let allowed: &[u32] = if whole.is_empty() {
        codec.ptimes()
    } else {
        &whole
    };
    let fits = |p: &&u32| min.is_none_or(|m| **p >= m) && max.is_none_or(|m| **p <= m);
    let candidates: Vec<u32> = allowed.iter().filter(fits).copied().collect();
    // Impossible constraints (say maxptime 5): ignore them rather than refuse the call.
    let candidates = if candidates.is_empty() {
        allowed.to_vec()
    } else {
        candidates
    };
    candidates
        .iter()
        .rev()
        .find(|p| **p <= preferred)
        .or(candidates.first())
        .copied()
        // `allowed` is never empty, so neither is `candidates`; 20 ms is the safe default.
        .unwrap_or(20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(name: &str, rate: u32, channels: Option<u16>) -> RtpMap {
        RtpMap {
            payload_type: 96,
            encoding: name.to_owned(),
            clock_rate: rate,
            channels,
        }
    }

    #[test]
    fn rtpmaps_name_our_codecs_only_at_their_defined_rates() {
        assert_eq!(
            Codec::from_rtpmap(&map("pcmu", 8000, None)),
            Some(Codec::Pcmu)
        );
        assert_eq!(
            Codec::from_rtpmap(&map("PCMA", 8000, Some(1))),
            Some(Codec::Pcma)
        );
        assert_eq!(
            Codec::from_rtpmap(&map("g722", 8000, None)),
            Some(Codec::G722)
        );
        assert_eq!(Codec::from_rtpmap(&map("G722", 16000, None)), None);
        assert_eq!(
            Codec::from_rtpmap(&map("OPUS", 48000, Some(2))),
            Some(Codec::Opus)
        );
        assert_eq!(
            Codec::from_rtpmap(&map("opus", 48000, None)),
            Some(Codec::Opus)
        );
        assert_eq!(Codec::from_rtpmap(&map("opus", 16000, Some(2))), None);
        assert_eq!(Codec::from_rtpmap(&map("PCMU", 8000, Some(2))), None);
        assert_eq!(Codec::from_rtpmap(&map("G729", 8000, None)), None);
    }

    #[test]
    fn our_rtpmaps_map_back_to_the_same_codec() {
        for c in [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus] {
            let pt = c.static_payload_type().unwrap_or(111);
            assert_eq!(Codec::from_rtpmap(&c.rtpmap(pt)), Some(c));
            if let Some(pt) = c.static_payload_type() {
                assert_eq!(static_rtpmap(pt), Some(c.rtpmap(pt)));
            }
        }
        assert_eq!(Codec::Opus.rtpmap(111).to_string(), "111 opus/48000/2");
        assert_eq!(static_rtpmap(18).unwrap().encoding, "G729");
        assert_eq!(static_rtpmap(96), None);
        assert_eq!(static_rtpmap(2), None);
    }

    #[test]
    fn event_lists_parse_into_sets_and_print_as_ranges() {
        let set = EventSet::parse("0-15,66, 70 ,32-33").unwrap();
        assert!(set.contains(0) && set.contains(15) && set.contains(66) && set.contains(70));
        assert!(!set.contains(16) && !set.contains(67));
        assert_eq!(set.to_string(), "0-15,32-33,66,70");
        assert_eq!(
            EventSet::parse("0-16").unwrap().intersect(&EventSet::DTMF),
            EventSet::DTMF
        );
        assert_eq!(EventSet::parse("255").unwrap().to_string(), "255");
        assert_eq!(EventSet::range(250, 255).to_string(), "250-255");
        assert_eq!(EventSet::DTMF.to_string(), "0-15");
        for bad in ["", "a", "15-0", "0-256", "1,,2", "-"] {
            assert_eq!(EventSet::parse(bad), None, "{bad}");
        }
        assert!(EventSet::default().is_empty());
        assert_eq!(EventSet::default().to_string(), "");
    }

    #[test]
    fn opus_parameters_parse_tolerantly_and_print_back() {
        let p = OpusParams::parse(
            "useinbandfec=1; MaxPlaybackRate=16000;stereo=0;sprop-stereo=1;usedtx=1;cbr=1;\
             maxaveragebitrate=20000;minptime=10;ptime=40;maxptime=60;stereo=7;x-unknown=3;junk",
        );
        assert_eq!(p.max_playback_rate, Some(16000));
        assert_eq!(
            p.stereo,
            Some(false),
            "an invalid repeat keeps the valid value"
        );
        assert_eq!(p.sprop_stereo, Some(true));
        assert_eq!(
            (p.use_inband_fec, p.use_dtx, p.cbr),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(
            (p.minptime, p.ptime, p.maxptime),
            (Some(10), Some(40), Some(60))
        );
        assert_eq!(p.max_average_bitrate, Some(20000));
        assert_eq!(OpusParams::parse(&p.to_fmtp()), p);
        assert_eq!(OpusParams::parse(""), OpusParams::default());
        assert_eq!(OpusParams::default().to_fmtp(), "");
    }

    #[test]
    fn opus_send_parameters_follow_the_receivers_limits() {
        let send = |text: &str| OpusSendParams::from_remote(OpusParams::parse(text));
        assert_eq!(send("").max_sample_rate, 48000);
        assert_eq!(send("maxplaybackrate=8000").max_sample_rate, 8000);
        assert_eq!(send("maxplaybackrate=22050").max_sample_rate, 16000);
        assert_eq!(send("maxplaybackrate=100").max_sample_rate, 8000);
        assert_eq!(
            send("maxaveragebitrate=1000").max_average_bitrate,
            Some(6000)
        );
        assert_eq!(
            send("maxaveragebitrate=999999").max_average_bitrate,
            Some(510_000)
        );
        let s = send("stereo=1;useinbandfec=1;usedtx=1;cbr=1");
        assert!(s.stereo && s.inband_fec && s.dtx && s.cbr);
        let d = send("sprop-stereo=1");
        assert!(!d.stereo && !d.inband_fec && !d.dtx && !d.cbr);
    }

    #[test]
    fn the_send_ptime_is_the_preferred_one_or_the_nearest_of_ours_below() {
        assert_eq!(choose_ptime(Codec::Pcmu, 10, 30, None, None), 30);
        assert_eq!(choose_ptime(Codec::Opus, 10, 30, None, None), 20);
        assert_eq!(choose_ptime(Codec::Pcmu, 10, 25, None, None), 20);
        assert_eq!(choose_ptime(Codec::Pcmu, 10, 5, None, None), 10);
        assert_eq!(choose_ptime(Codec::Pcmu, 10, 200, None, None), 60);
        assert_eq!(choose_ptime(Codec::Pcmu, 10, 40, None, Some(30)), 30);
        assert_eq!(choose_ptime(Codec::Opus, 10, 10, Some(20), None), 20);
        // Impossible limits are ignored rather than failing the call.
        assert_eq!(choose_ptime(Codec::Pcmu, 10, 20, None, Some(5)), 20);
        // On a 20 ms frame clock, only whole frames: 30 becomes 20, 50 becomes 40.
        assert_eq!(choose_ptime(Codec::Pcmu, 20, 30, None, None), 20);
        assert_eq!(choose_ptime(Codec::Pcmu, 20, 50, None, None), 40);
        assert_eq!(choose_ptime(Codec::Pcmu, 20, 60, None, None), 60);
        assert_eq!(choose_ptime(Codec::Opus, 20, 10, None, None), 20);
    }
}

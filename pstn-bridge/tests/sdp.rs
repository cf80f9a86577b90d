//! SDP offer/answer for SIP legs, driven with descriptions modelled on what deployed
//! stacks send (Asterisk, FreeSWITCH, Cisco CUCM and IOS gateways, Polycom, Linphone,
//! baresip, sipp), plus the 488 cases, hold/resume, re-offers, o= versions, and seeded
//! random mutations that must never panic.
//!
//! The samples are written here by hand after the shape of those stacks' SDP (codec
//! lists, attribute habits, quirks); they are not captures.

use std::net::{IpAddr, SocketAddr};

use confer_pstn_bridge::sdp::{
    self, Codec, CodecOrder, ConfigError, Direction, EventSet, LocalCapabilities, MediaAddress,
    MediaKind, SdpError, SdpSession, SessionDescription, Transport,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ASTERISK: &str = "v=0\r
o=- 1672912345 1672912345 IN IP4 192.0.2.10\r
s=Asterisk\r
c=IN IP4 192.0.2.10\r
t=0 0\r
m=audio 10000 RTP/AVP 0 8 9 111 101\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:9 G722/8000\r
a=rtpmap:111 opus/48000/2\r
a=fmtp:111 useinbandfec=1\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-16\r
a=ptime:20\r
a=maxptime:150\r
a=sendrecv\r
";

const FREESWITCH: &str = "v=0\r
o=FreeSWITCH 1672900000 1672900001 IN IP4 198.51.100.5\r
s=FreeSWITCH\r
c=IN IP4 198.51.100.5\r
t=0 0\r
m=audio 16384 RTP/AVP 102 9 0 8 103 101 13\r
a=rtpmap:102 opus/48000/2\r
a=fmtp:102 useinbandfec=1; maxplaybackrate=16000; stereo=0; sprop-stereo=0; maxaveragebitrate=24000\r
a=rtpmap:9 G722/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:103 telephone-event/48000\r
a=fmtp:103 0-15\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-15\r
a=rtpmap:13 CN/8000\r
a=ptime:20\r
a=rtcp:16385 IN IP4 198.51.100.5\r
";

const CISCO_CUCM: &str = "v=0\r
o=CiscoSystemsCCM-SIP 2000 1 IN IP4 10.10.10.1\r
s=SIP Call\r
c=IN IP4 10.10.10.20\r
b=TIAS:64000\r
b=AS:64\r
t=0 0\r
m=audio 24580 RTP/AVP 0 101\r
b=TIAS:64000\r
a=ptime:20\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-15\r
";

const CISCO_IOS_GW: &str = "v=0\r
o=CiscoSystemsSIP-GW-UserAgent 4186 2745 IN IP4 10.1.1.1\r
s=SIP Call\r
c=IN IP4 10.1.1.1\r
t=0 0\r
m=audio 18456 RTP/AVP 18 0 8 101 19\r
c=IN IP4 10.1.1.1\r
a=rtpmap:18 G729/8000\r
a=fmtp:18 annexb=no\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-16\r
a=rtpmap:19 CN/8000\r
a=ptime:30\r
";

const POLYCOM: &str = "v=0\r
o=- 1672912399 1672912399 IN IP4 192.168.1.50\r
s=Polycom IP Phone\r
c=IN IP4 192.168.1.50\r
t=0 0\r
a=sendrecv\r
m=audio 2222 RTP/AVP 9 102 0 8 18 127\r
a=rtpmap:9 G722/8000\r
a=rtpmap:102 G7221/16000\r
a=fmtp:102 bitrate=32000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:18 G729/8000\r
a=fmtp:18 annexb=no\r
a=rtpmap:127 telephone-event/8000\r
";

const LINPHONE: &str = "v=0\r
o=alice 1234 678 IN IP4 192.168.0.20\r
s=Talk\r
c=IN IP4 192.168.0.20\r
t=0 0\r
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r
m=audio 7078 RTP/AVP 96 97 98 0 8 101 99 100\r
a=rtpmap:96 opus/48000/2\r
a=fmtp:96 useinbandfec=1\r
a=rtpmap:97 speex/16000\r
a=fmtp:97 vbr=on\r
a=rtpmap:98 speex/8000\r
a=fmtp:98 vbr=on\r
a=rtpmap:101 telephone-event/48000\r
a=rtpmap:99 telephone-event/16000\r
a=rtpmap:100 telephone-event/8000\r
a=rtcp-fb:* trr-int 1000\r
a=rtcp-fb:* ccm tmmbr\r
m=video 9078 RTP/AVP 96 97\r
a=rtpmap:96 VP8/90000\r
a=rtpmap:97 H264/90000\r
a=fmtp:97 profile-level-id=42801F\r
a=rtcp-fb:* trr-int 1000\r
a=rtcp-fb:96 nack pli\r
";

const BARESIP: &str = "v=0\r
o=- 3823645283 1287530911 IN IP4 10.0.0.5\r
s=-\r
c=IN IP4 10.0.0.5\r
t=0 0\r
m=audio 10214 RTP/AVP 96 0 8 101\r
b=AS:64\r
a=rtpmap:96 opus/48000/2\r
a=fmtp:96 stereo=1;sprop-stereo=1\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-15\r
a=sendrecv\r
a=label:1\r
a=ssrc:1984128563 cname:fb5c0ce7-0d4a-4e44-b4f5-35b5d8e04c68\r
a=rtcp-rsize\r
a=rtcp-mux\r
";

/// sipp's default uac scenario body, LF-only as it often leaves a scenario file.
const SIPP_UAC: &str = "v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
";

/// An RFC 2543 style hold: `c=` 0.0.0.0, no direction attribute, no rtpmap for PT 0.
const OLD_HOLD: &str = "v=0\r
o=- 100 101 IN IP4 192.0.2.30\r
s=-\r
c=IN IP4 0.0.0.0\r
t=0 0\r
m=audio 5004 RTP/AVP 0 101\r
a=rtpmap:101 telephone-event/8000\r
";

const IPV6: &str = "v=0\r
o=- 42 42 IN IP6 2001:db8::10\r
s=-\r
c=IN IP6 2001:db8::10\r
t=0 0\r
m=audio 30000 RTP/AVP 8 0 101\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-15\r
";

/// A T.38 switch re-INVITE: audio disabled, fax offered.
const T38: &str = "v=0\r
o=- 1672912345 1672912346 IN IP4 192.0.2.10\r
s=-\r
c=IN IP4 192.0.2.10\r
t=0 0\r
m=audio 0 RTP/AVP 0\r
m=image 10002 udptl t38\r
a=T38FaxVersion:0\r
a=T38MaxBitRate:14400\r
a=T38FaxRateManagement:transferredTCF\r
";

const G729_ONLY: &str = "v=0\r
o=- 1 1 IN IP4 192.0.2.40\r
s=-\r
c=IN IP4 192.0.2.40\r
t=0 0\r
m=audio 4000 RTP/AVP 18 101\r
a=rtpmap:18 G729/8000\r
a=fmtp:18 annexb=no\r
a=rtpmap:101 telephone-event/8000\r
";

/// Best-effort SRTP: an SDES line first, then the same audio over RTP/AVP.
const SRTP_THEN_RTP: &str = "v=0\r
o=- 7 7 IN IP4 192.0.2.50\r
s=-\r
c=IN IP4 192.0.2.50\r
t=0 0\r
m=audio 4010 RTP/SAVP 0\r
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32\r
m=audio 4020 RTP/AVP 0\r
";

const SAMPLES: [(&str, &str); 14] = [
    ("asterisk", ASTERISK),
    ("freeswitch", FREESWITCH),
    ("cisco_cucm", CISCO_CUCM),
    ("cisco_ios_gw", CISCO_IOS_GW),
    ("polycom", POLYCOM),
    ("linphone", LINPHONE),
    ("baresip", BARESIP),
    ("sipp_uac", SIPP_UAC),
    ("old_hold", OLD_HOLD),
    ("ipv6", IPV6),
    ("t38", T38),
    ("g729_only", G729_ONLY),
    ("srtp_then_rtp", SRTP_THEN_RTP),
    (
        "no_connection",
        "v=0\r\no=- 0 0 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",
    ),
];

fn parse(text: &str) -> SessionDescription {
    SessionDescription::parse(text.as_bytes()).expect("sample parses")
}

fn local() -> MediaAddress {
    MediaAddress::new("203.0.113.7:40000".parse().unwrap()).unwrap()
}

fn local_v6() -> MediaAddress {
    MediaAddress::new("[2001:db8::7]:40000".parse().unwrap()).unwrap()
}

fn session() -> SdpSession {
    SdpSession::new("confer", 0x1234_5678, "203.0.113.7".parse().unwrap()).unwrap()
}

fn answer_with(text: &str, caps: &LocalCapabilities) -> Result<sdp::Answer, SdpError> {
    sdp::answer(&parse(text), caps, local(), &mut session())
}

fn answer_default(text: &str) -> sdp::Answer {
    answer_with(text, &LocalCapabilities::default()).expect("answer")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The lines of a serialized description that start with `prefix`.
fn lines_with<'a>(sdp: &'a str, prefix: &str) -> Vec<&'a str> {
    sdp.split("\r\n")
        .filter(|l| l.starts_with(prefix))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Parsing and serialization

#[test]
fn every_real_world_sample_parses_with_its_m_lines_in_order() {
    let kinds = |t: &str| {
        parse(t)
            .media
            .iter()
            .map(|m| m.kind.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(ASTERISK), [MediaKind::Audio]);
    assert_eq!(kinds(LINPHONE), [MediaKind::Audio, MediaKind::Video]);
    assert_eq!(kinds(T38), [MediaKind::Audio, MediaKind::Image]);
    for (name, text) in SAMPLES {
        assert!(SessionDescription::parse(text.as_bytes()).is_ok(), "{name}");
    }
}

#[test]
fn lf_only_input_parses_to_the_same_description_as_crlf() {
    for (name, text) in SAMPLES {
        let lf = text.replace("\r\n", "\n");
        assert_eq!(parse(&lf), parse(text), "{name}");
    }
}

#[test]
fn serialized_sdp_ends_every_line_with_crlf_and_has_no_bare_lf() {
    let out = parse(SIPP_UAC).to_sdp();
    assert!(out.ends_with("\r\n"));
    assert_eq!(out.matches('\n').count(), out.matches("\r\n").count());
    let answer = answer_default(SIPP_UAC).sdp.to_sdp();
    assert_eq!(answer.matches('\n').count(), answer.matches("\r\n").count());
}

#[test]
fn parse_serialize_parse_gives_back_the_same_description() {
    for (name, text) in SAMPLES {
        let first = parse(text);
        let text2 = first.to_sdp();
        let second = parse(&text2);
        assert_eq!(first, second, "{name}");
        assert_eq!(
            text2,
            second.to_sdp(),
            "{name}: serialization is a fixed point"
        );
    }
}

#[test]
fn unknown_attributes_are_kept_in_order_at_both_levels() {
    let d = parse(LINPHONE);
    assert_eq!(d.attributes[0].name, "rtcp-xr");
    let names: Vec<_> = d.media[0]
        .attributes
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["rtcp-fb", "rtcp-fb"]);
    assert_eq!(
        d.media[0].attributes[1].value.as_deref(),
        Some("* ccm tmmbr")
    );
    let out = d.to_sdp();
    assert!(out.contains("a=rtcp-fb:* trr-int 1000\r\na=rtcp-fb:* ccm tmmbr\r\n"));
    let b = parse(BARESIP);
    assert!(b.media[0].rtcp_mux);
    assert!(
        b.media[0]
            .attributes
            .iter()
            .any(|a| a.name == "rtcp-rsize" && a.value.is_none())
    );
}

#[test]
fn static_payload_types_without_rtpmap_are_recognised() {
    let d = parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 9 8 0 18\r\n",
    );
    let m = &d.media[0];
    let codecs: Vec<_> = m
        .payload_types()
        .map(|pt| m.rtpmap(pt).and_then(|map| Codec::from_rtpmap(&map)))
        .collect();
    assert_eq!(
        codecs,
        [
            Some(Codec::G722),
            Some(Codec::Pcma),
            Some(Codec::Pcmu),
            None
        ]
    );
    assert_eq!(m.rtpmap(18).unwrap().encoding, "G729");
}

#[test]
fn encoding_names_and_attribute_names_compare_case_insensitively() {
    let text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 96 97\r\na=RTPMAP:96 OPUS/48000/2\r\n\
                a=rtpmap:97 Telephone-Event/48000\r\na=SendOnly\r\n";
    let a = answer_default(text);
    assert_eq!(a.media.codec.codec, Codec::Opus);
    assert_eq!(a.media.telephone_event.unwrap().send_payload_type, 97);
    assert_eq!(a.media.direction, Direction::RecvOnly);
}

#[test]
fn connection_addresses_parse_ipv4_ipv6_and_the_hold_address() {
    let v6 = parse(IPV6);
    assert_eq!(
        v6.connection.as_ref().unwrap().address.ip(),
        Some("2001:db8::10".parse().unwrap())
    );
    let hold = parse(OLD_HOLD);
    assert!(hold.connection.as_ref().unwrap().is_hold_address());
    assert!(!parse(SIPP_UAC).connection.unwrap().is_hold_address());
}

#[test]
fn malformed_descriptions_are_errors_with_the_line_number() {
    let cases: [(&str, usize); 10] = [
        ("", 0),
        ("hello world", 1),
        ("o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n", 1),
        ("v=1\r\no=- 1 1 IN IP4 1.2.3.4\r\n", 1),
        ("v=0\r\ns=-\r\n", 0),
        ("v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n", 2),
        (
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
            3,
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP\r\n",
            3,
        ),
        (
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
            4,
        ),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nx=unknown\r\n", 3),
    ];
    for (text, line) in cases {
        match SessionDescription::parse(text.as_bytes()) {
            Err(SdpError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}

#[test]
fn conflicting_direction_attributes_are_malformed_but_a_repeat_is_not() {
    let base = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert!(
        SessionDescription::parse(format!("{base}a=sendonly\r\na=sendonly\r\n").as_bytes()).is_ok()
    );
    assert!(matches!(
        SessionDescription::parse(format!("{base}a=sendonly\r\na=inactive\r\n").as_bytes()),
        Err(SdpError::Malformed { line: 6, .. })
    ));
}

#[test]
fn missing_s_and_t_lines_are_tolerated_and_t_is_written_back() {
    let d = parse("v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 1.2.3.4\nm=audio 4000 RTP/AVP 0\n");
    let out = d.to_sdp();
    assert!(out.contains("s= \r\n"));
    assert!(out.contains("t=0 0\r\n"));
}

// ---------------------------------------------------------------------------------------
// Answer: codec choice

#[test]
fn the_answer_takes_the_first_offered_codec_we_support() {
    assert_eq!(answer_default(ASTERISK).media.codec.codec, Codec::Pcmu);
    assert_eq!(answer_default(FREESWITCH).media.codec.codec, Codec::Opus);
    assert_eq!(answer_default(CISCO_IOS_GW).media.codec.codec, Codec::Pcmu);
    assert_eq!(answer_default(POLYCOM).media.codec.codec, Codec::G722);
}

#[test]
fn local_codec_order_takes_our_first_codec_that_was_offered() {
    let caps = LocalCapabilities::default().with_codec_order(CodecOrder::Local);
    let a = answer_with(ASTERISK, &caps).unwrap();
    assert_eq!(a.media.codec.codec, Codec::Opus);
    assert_eq!(a.media.codec.payload_type, 111);
    let pcma_first = LocalCapabilities::new(&[Codec::Pcma, Codec::Pcmu])
        .unwrap()
        .with_codec_order(CodecOrder::Local);
    assert_eq!(
        answer_with(ASTERISK, &pcma_first)
            .unwrap()
            .media
            .codec
            .codec,
        Codec::Pcma
    );
}

#[test]
fn the_answer_lists_one_codec_with_the_offers_payload_type_and_its_rtpmap() {
    let a = answer_default(FREESWITCH);
    let m = &a.sdp.media[0];
    assert_eq!(m.formats, ["102", "103"]);
    assert_eq!(a.media.codec.payload_type, 102);
    let out = a.sdp.to_sdp();
    assert!(out.contains("m=audio 40000 RTP/AVP 102 103\r\n"));
    assert!(out.contains("a=rtpmap:102 opus/48000/2\r\n"));
    assert!(out.contains("a=rtpmap:103 telephone-event/48000\r\na=fmtp:103 0-15\r\n"));
    // Static payload types get an rtpmap too (RFC 3264 section 6.1 SHOULD).
    assert!(
        answer_default(SIPP_UAC)
            .sdp
            .to_sdp()
            .contains("a=rtpmap:0 PCMU/8000\r\n")
    );
}

#[test]
fn g722_is_negotiated_with_an_8000_rtp_clock_and_16000_audio() {
    let c = answer_default(POLYCOM).media.codec;
    assert_eq!(
        (c.codec, c.payload_type, c.clock_rate, c.sample_rate),
        (Codec::G722, 9, 8000, 16000)
    );
    let te = answer_default(POLYCOM).media.telephone_event.unwrap();
    assert_eq!((te.send_payload_type, te.clock_rate), (127, 8000));
}

#[test]
fn codecs_with_the_wrong_clock_rate_or_channels_are_not_ours() {
    let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n\
                m=audio 4000 RTP/AVP 96 97 98\r\na=rtpmap:96 G722/16000\r\n\
                a=rtpmap:97 PCMU/8000/2\r\na=rtpmap:98 PCMA/8000\r\n";
    assert_eq!(answer_default(text).media.codec.codec, Codec::Pcma);
}

// ---------------------------------------------------------------------------------------
// Answer: telephone-event

#[test]
fn telephone_event_follows_the_clock_rate_of_the_chosen_codec() {
    let opus = answer_default(FREESWITCH).media.telephone_event.unwrap();
    assert_eq!((opus.send_payload_type, opus.clock_rate), (103, 48000));
    let caps = LocalCapabilities::new(&[Codec::Pcmu]).unwrap();
    let pcmu = answer_with(FREESWITCH, &caps)
        .unwrap()
        .media
        .telephone_event
        .unwrap();
    assert_eq!((pcmu.send_payload_type, pcmu.clock_rate), (101, 8000));
    let linphone = answer_default(LINPHONE).media.telephone_event.unwrap();
    assert_eq!(
        (linphone.send_payload_type, linphone.clock_rate),
        (101, 48000)
    );
}

#[test]
fn telephone_event_at_another_rate_is_still_taken_rather_than_losing_dtmf() {
    // Opus chosen, but only telephone-event/8000 offered (older Asterisk does this).
    let caps = LocalCapabilities::default().with_codec_order(CodecOrder::Local);
    let te = answer_with(ASTERISK, &caps)
        .unwrap()
        .media
        .telephone_event
        .unwrap();
    assert_eq!((te.send_payload_type, te.clock_rate), (101, 8000));
}

#[test]
fn telephone_event_events_are_cut_to_0_15() {
    let a = answer_default(ASTERISK);
    assert_eq!(a.media.telephone_event.unwrap().events, EventSet::DTMF);
    assert!(a.sdp.to_sdp().contains("a=fmtp:101 0-15\r\n"));
    // Only non-DTMF events offered: nothing in common, no telephone-event.
    let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n\
                m=audio 4000 RTP/AVP 0 100\r\na=rtpmap:100 telephone-event/8000\r\na=fmtp:100 32-41\r\n";
    let a = answer_default(text);
    assert_eq!(a.media.telephone_event, None);
    assert_eq!(a.sdp.media[0].formats, ["0"]);
}

#[test]
fn telephone_event_is_absent_when_not_offered_or_disabled() {
    assert_eq!(answer_default(SIPP_UAC).media.telephone_event, None);
    let caps = LocalCapabilities::default().with_telephone_event(false);
    let a = answer_with(ASTERISK, &caps).unwrap();
    assert_eq!(a.media.telephone_event, None);
    assert!(!a.sdp.to_sdp().contains("telephone-event"));
}

// ---------------------------------------------------------------------------------------
// Answer: ptime, Opus parameters, RTCP

#[test]
fn the_offered_ptime_is_honoured_and_stated_in_the_answer() {
    let a = answer_default(CISCO_IOS_GW);
    assert_eq!(a.media.ptime_ms, 30);
    assert_eq!(a.sdp.media[0].ptime, Some(30));
    assert_eq!(answer_default(ASTERISK).media.ptime_ms, 20);
    // No ptime offered: ours.
    let caps = LocalCapabilities::default().with_ptime(40).unwrap();
    assert_eq!(answer_with(SIPP_UAC, &caps).unwrap().media.ptime_ms, 40);
}

#[test]
fn on_a_20_ms_frame_clock_only_whole_frames_are_answered() {
    let caps = LocalCapabilities::default().with_frame_ms(20).unwrap();
    // The Cisco gateway asks for 30 ms: 20 is the longest whole number of frames below.
    let a = answer_with(CISCO_IOS_GW, &caps).unwrap();
    assert_eq!(a.media.ptime_ms, 20);
    assert_eq!(a.sdp.media[0].ptime, Some(20));
    let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n\
                m=audio 4000 RTP/AVP 0\r\na=ptime:40\r\n";
    assert_eq!(answer_with(text, &caps).unwrap().media.ptime_ms, 40);
    assert!(LocalCapabilities::default().with_frame_ms(30).is_err());
}

#[test]
fn an_opus_ptime_we_cannot_frame_falls_to_the_largest_below_it() {
    let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n\
                m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\na=ptime:30\r\n";
    assert_eq!(answer_default(text).media.ptime_ms, 20);
}

#[test]
fn maxptime_caps_our_packet_time() {
    let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n\
                m=audio 4000 RTP/AVP 0\r\na=maxptime:10\r\n";
    assert_eq!(answer_default(text).media.ptime_ms, 10);
}

#[test]
fn the_peers_opus_parameters_bind_what_we_send() {
    let opus = answer_default(FREESWITCH).media.codec.opus.unwrap();
    assert_eq!(opus.max_sample_rate, 16000);
    assert_eq!(opus.max_average_bitrate, Some(24000));
    assert!(opus.inband_fec && !opus.stereo && !opus.dtx);
    let stereo = answer_default(BARESIP).media.codec;
    assert_eq!(stereo.channels, 2);
    assert_eq!(stereo.opus.unwrap().remote.sprop_stereo, Some(true));
    assert!(!stereo.opus.unwrap().inband_fec);
    assert_eq!(answer_default(ASTERISK).media.codec.opus, None);
}

#[test]
fn our_answer_states_our_own_opus_receive_parameters() {
    let out = answer_default(FREESWITCH).sdp.to_sdp();
    let fmtp = lines_with(&out, "a=fmtp:102 ");
    assert_eq!(
        fmtp,
        [
            "a=fmtp:102 minptime=10;maxplaybackrate=48000;stereo=0;sprop-stereo=0;useinbandfec=1;usedtx=0"
        ]
    );
}

#[test]
fn rtcp_goes_to_port_plus_one_or_a_rtcp_or_the_rtp_port_with_rtcp_mux() {
    assert_eq!(
        answer_default(SIPP_UAC).media.remote_rtcp,
        Some(addr("127.0.0.1:6001"))
    );
    assert_eq!(
        answer_default(FREESWITCH).media.remote_rtcp,
        Some(addr("198.51.100.5:16385"))
    );
    // baresip offers rtcp-mux; we accept it only when configured to.
    let plain = answer_default(BARESIP);
    assert!(!plain.media.rtcp_mux);
    assert_eq!(plain.media.remote_rtcp, Some(addr("10.0.0.5:10215")));
    assert!(!plain.sdp.to_sdp().contains("rtcp-mux"));
    let caps = LocalCapabilities::default().with_rtcp_mux(true);
    let mux = answer_with(BARESIP, &caps).unwrap();
    assert!(mux.media.rtcp_mux);
    assert_eq!(mux.media.remote_rtcp, Some(addr("10.0.0.5:10214")));
    assert!(mux.sdp.to_sdp().contains("a=rtcp-mux\r\n"));
    // rtcp-mux configured but not offered: port + 1.
    assert!(!answer_with(SIPP_UAC, &caps).unwrap().media.rtcp_mux);
}

#[test]
fn the_remote_rtp_address_comes_from_the_media_level_c_line_first() {
    let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 192.0.2.1\r\n\
                m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.99\r\n";
    assert_eq!(
        answer_default(text).media.remote_rtp,
        Some(addr("192.0.2.99:4000"))
    );
    assert_eq!(
        answer_default(CISCO_CUCM).media.remote_rtp,
        Some(addr("10.10.10.20:24580"))
    );
}

#[test]
fn an_ipv6_offer_is_answered_from_an_ipv6_address() {
    let mut s = session();
    let a = sdp::answer(
        &parse(IPV6),
        &LocalCapabilities::default(),
        local_v6(),
        &mut s,
    )
    .unwrap();
    assert_eq!(a.media.remote_rtp, Some(addr("[2001:db8::10]:30000")));
    assert_eq!(a.media.codec.codec, Codec::Pcma);
    assert!(a.sdp.to_sdp().contains("c=IN IP6 2001:db8::7\r\n"));
}

// ---------------------------------------------------------------------------------------
// Answer: direction and hold

fn with_direction(dir: &str) -> String {
    SIPP_UAC.replace(
        "a=rtpmap:0 PCMU/8000\n",
        &format!("a=rtpmap:0 PCMU/8000\na={dir}\n"),
    )
}

#[test]
fn the_answer_mirrors_the_offered_direction() {
    let cases = [
        ("sendrecv", Direction::SendRecv),
        ("sendonly", Direction::RecvOnly),
        ("recvonly", Direction::SendOnly),
        ("inactive", Direction::Inactive),
    ];
    for (offered, expected) in cases {
        let a = answer_default(&with_direction(offered));
        assert_eq!(a.media.direction, expected, "{offered}");
        assert_eq!(a.sdp.media[0].direction, Some(expected), "{offered}");
    }
    assert_eq!(
        answer_default(SIPP_UAC).media.direction,
        Direction::SendRecv
    );
}

#[test]
fn a_media_level_direction_overrides_the_session_level_one() {
    let session_level = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\na=sendonly\r\n\
                         m=audio 4000 RTP/AVP 0\r\n";
    assert_eq!(
        answer_default(session_level).media.direction,
        Direction::RecvOnly
    );
    let both = format!("{session_level}a=sendrecv\r\n");
    assert_eq!(answer_default(&both).media.direction, Direction::SendRecv);
}

#[test]
fn an_old_style_hold_address_means_the_peer_does_not_receive() {
    let a = answer_default(OLD_HOLD);
    assert_eq!(a.media.remote_rtp, None);
    assert_eq!(a.media.remote_rtcp, None);
    assert_eq!(a.media.remote_direction, Direction::SendOnly);
    assert_eq!(a.media.direction, Direction::RecvOnly);
    assert!(a.media.held_by_peer());
    // We still advertise our real address.
    assert!(a.sdp.to_sdp().contains("c=IN IP4 203.0.113.7\r\n"));
    // 0.0.0.0 with recvonly: nobody sends.
    let both = OLD_HOLD.replace("a=rtpmap:101", "a=recvonly\r\na=rtpmap:101");
    assert_eq!(answer_default(&both).media.direction, Direction::Inactive);
}

// ---------------------------------------------------------------------------------------
// Answer: other media, transports, 488

#[test]
fn video_and_image_m_lines_are_rejected_with_port_0_in_place() {
    let a = answer_default(LINPHONE);
    assert_eq!(a.sdp.media.len(), 2);
    assert_eq!(a.sdp.media[0].port, 40000);
    assert_eq!(a.sdp.media[1].kind, MediaKind::Video);
    assert_eq!(a.sdp.media[1].port, 0);
    assert_eq!(a.sdp.media[1].formats, ["96", "97"]);
    assert!(a.sdp.to_sdp().ends_with("m=video 0 RTP/AVP 96 97\r\n"));

    let audio_after_image = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n\
                             m=image 5000 udptl t38\r\nm=foo 5002 bar x\r\nm=audio 4000 RTP/AVP 8\r\n";
    let a = answer_default(audio_after_image);
    let ports: Vec<u16> = a.sdp.media.iter().map(|m| m.port).collect();
    assert_eq!(ports, [0, 0, 40000]);
    assert_eq!(a.media.media_index, 2);
    assert!(
        a.sdp
            .to_sdp()
            .contains("m=image 0 udptl t38\r\nm=foo 0 bar x\r\n")
    );
}

#[test]
fn an_srtp_audio_line_is_rejected_and_the_rtp_one_answered() {
    let a = answer_default(SRTP_THEN_RTP);
    assert_eq!(a.sdp.media[0].port, 0);
    assert_eq!(a.sdp.media[0].transport, Transport::RtpSavp);
    assert_eq!(a.sdp.media[1].port, 40000);
    assert_eq!(a.media.remote_rtp, Some(addr("192.0.2.50:4020")));
}

fn expect_488(text: &str, code: u16) -> SdpError {
    let err = match SessionDescription::parse(text.as_bytes()) {
        Err(e) => e,
        Ok(d) => sdp::answer(&d, &LocalCapabilities::default(), local(), &mut session())
            .expect_err("must be refused"),
    };
    assert_eq!(err.status_code(), 488);
    assert_eq!(err.warning().code, code, "{err}");
    err
}

#[test]
fn an_offer_with_only_g729_is_refused_as_incompatible_media_format() {
    let err = expect_488(G729_ONLY, 305);
    assert_eq!(err, SdpError::NoCommonCodec);
    assert_eq!(
        err.warning().header_value("confer.example"),
        "305 confer.example \"Incompatible media format\""
    );
}

#[test]
fn an_offer_without_audio_is_refused_as_media_type_not_available() {
    let video_only =
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=video 5000 RTP/AVP 96\r\n";
    assert_eq!(expect_488(video_only, 304), SdpError::NoAudio);
    assert_eq!(expect_488(T38, 304), SdpError::NoAudio);
    let no_media = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n";
    assert_eq!(expect_488(no_media, 304), SdpError::NoAudio);
}

#[test]
fn garbage_is_refused_as_malformed() {
    for text in [
        "",
        "INVITE sip:bob@example.com SIP/2.0",
        "v=0\r\n",
        "\u{0}\u{1}\u{2}",
    ] {
        assert!(
            matches!(expect_488(text, 399), SdpError::Malformed { .. }),
            "{text:?}"
        );
    }
    let no_c = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert!(matches!(expect_488(no_c, 399), SdpError::Malformed { .. }));
}

#[test]
fn srtp_dtls_and_avpf_only_offers_are_refused_as_incompatible_transport() {
    for proto in [
        "RTP/SAVP",
        "RTP/SAVPF",
        "UDP/TLS/RTP/SAVPF",
        "RTP/AVPF",
        "TCP/RTP/AVP",
    ] {
        let text = format!(
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 {proto} 0\r\n"
        );
        let err = expect_488(&text, 302);
        assert!(
            matches!(err, SdpError::UnsupportedTransport { .. }),
            "{proto}"
        );
    }
}

#[test]
fn unusable_connection_addresses_are_refused_as_incompatible_address_formats() {
    let host =
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 pbx.example.com\r\nm=audio 4000 RTP/AVP 0\r\n";
    let multicast =
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 224.2.1.1/127\r\nm=audio 4000 RTP/AVP 0\r\n";
    for text in [host, multicast, IPV6] {
        assert!(
            matches!(expect_488(text, 301), SdpError::UnsupportedAddress(_)),
            "{text}"
        );
    }
}

#[test]
fn a_codec_failure_is_reported_over_a_transport_failure() {
    let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n\
                m=audio 4000 RTP/SAVP 0\r\nm=audio 4002 RTP/AVP 18\r\n";
    assert_eq!(expect_488(text, 305), SdpError::NoCommonCodec);
}

#[test]
fn a_refused_offer_leaves_the_session_unchanged() {
    let mut s = session();
    let caps = LocalCapabilities::default();
    sdp::answer(&parse(ASTERISK), &caps, local(), &mut s).unwrap();
    let before = s.clone();
    assert!(sdp::answer(&parse(G729_ONLY), &caps, local(), &mut s).is_err());
    assert_eq!(s, before);
}

// ---------------------------------------------------------------------------------------
// Offerer

#[test]
fn our_offer_lists_our_codecs_in_order_with_telephone_event_per_clock_rate() {
    let mut s = session();
    let offer = default_offer(&mut s);
    let out = offer.to_sdp();
    assert!(out.starts_with("v=0\r\no=confer 305419896 1 IN IP4 203.0.113.7\r\ns=confer\r\nc=IN IP4 203.0.113.7\r\nt=0 0\r\n"));
    assert!(out.contains("m=audio 40000 RTP/AVP 111 9 0 8 110 101\r\n"));
    assert!(out.contains("a=rtpmap:111 opus/48000/2\r\n"));
    assert!(out.contains("a=rtpmap:9 G722/8000\r\n"));
    assert!(out.contains("a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-15\r\n"));
    assert!(out.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"));
    assert!(out.contains("a=ptime:20\r\n"));
    assert!(out.ends_with("a=sendrecv\r\n"));
    assert_eq!(parse(&out), *offer.sdp());
    let pcmu_only = LocalCapabilities::new(&[Codec::Pcmu]).unwrap();
    let out = sdp::offer(&pcmu_only, local(), Direction::SendRecv, &mut session()).to_sdp();
    assert!(out.contains("m=audio 40000 RTP/AVP 0 101\r\n"));
}

#[test]
fn our_offer_states_a_ptime_our_first_codec_can_be_sent_at() {
    let ptime_of = |caps: &LocalCapabilities| {
        sdp::offer(caps, local(), Direction::SendRecv, &mut session())
            .sdp()
            .media[0]
            .ptime
    };
    let thirty = LocalCapabilities::default().with_ptime(30).unwrap();
    assert_eq!(ptime_of(&thirty), Some(20), "Opus first: no 30 ms frames");
    let pcmu = LocalCapabilities::new(&[Codec::Pcmu])
        .unwrap()
        .with_ptime(30)
        .unwrap();
    assert_eq!(ptime_of(&pcmu), Some(30));
}

/// An answer from a peer at 192.0.2.60:5000, audio line only.
fn peer_answer(formats: &str, attrs: &str) -> SessionDescription {
    parse(&format!(
        "v=0\r\no=peer 9 9 IN IP4 192.0.2.60\r\ns=-\r\nc=IN IP4 192.0.2.60\r\nt=0 0\r\n\
         m=audio 5000 RTP/AVP {formats}\r\n{attrs}"
    ))
}

/// Our offer with the default capabilities, sendrecv, from `local()`.
fn default_offer(s: &mut SdpSession) -> sdp::Offer {
    sdp::offer(
        &LocalCapabilities::default(),
        local(),
        Direction::SendRecv,
        s,
    )
}

#[test]
fn the_answers_first_codec_is_the_one_we_send() {
    let mut s = session();
    let offer = default_offer(&mut s);
    let answer = peer_answer(
        "8 0 101",
        "a=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n",
    );
    let media = sdp::process_answer(&offer, &answer, &mut s).unwrap();
    assert_eq!(media.codec.codec, Codec::Pcma);
    assert_eq!(media.remote_rtp, Some(addr("192.0.2.60:5000")));
    assert_eq!(media.ptime_ms, 30);
    assert_eq!(media.receive_codec(0), Some(Codec::Pcmu));
    assert_eq!(media.receive_codec(8), Some(Codec::Pcma));
    assert_eq!(media.receive_codec(111), None);
    let te = media.telephone_event.unwrap();
    assert_eq!(
        (te.send_payload_type, te.receive_payload_type, te.clock_rate),
        (101, 101, 8000)
    );
    assert_eq!(s.negotiated(), Some(&media));
}

#[test]
fn a_renumbered_payload_type_in_the_answer_is_used_for_sending() {
    let mut s = session();
    let offer = default_offer(&mut s);
    let answer = peer_answer(
        "107 100",
        "a=rtpmap:107 opus/48000/2\r\na=fmtp:107 maxplaybackrate=24000\r\na=rtpmap:100 telephone-event/48000\r\n",
    );
    let media = sdp::process_answer(&offer, &answer, &mut s).unwrap();
    assert_eq!(
        (media.codec.codec, media.codec.payload_type),
        (Codec::Opus, 107)
    );
    assert_eq!(media.receive_codec(111), Some(Codec::Opus));
    assert_eq!(media.codec.opus.unwrap().max_sample_rate, 24000);
    let te = media.telephone_event.unwrap();
    assert_eq!(
        (te.send_payload_type, te.receive_payload_type, te.clock_rate),
        (100, 110, 48000)
    );
}

#[test]
fn an_answer_with_a_codec_we_did_not_offer_is_an_error() {
    let pcmu_only = LocalCapabilities::new(&[Codec::Pcmu]).unwrap();
    let mut s = session();
    let offer = sdp::offer(&pcmu_only, local(), Direction::SendRecv, &mut s);
    for (formats, attrs) in [
        ("8", ""),
        ("0 18", ""),
        ("96", "a=rtpmap:96 opus/48000/2\r\n"),
        ("0 99", ""),
    ] {
        let err = sdp::process_answer(&offer, &peer_answer(formats, attrs), &mut s).unwrap_err();
        assert!(
            matches!(err, SdpError::AnswerMismatch(_)),
            "{formats}: {err}"
        );
    }
    assert_eq!(s.negotiated(), None);
}

#[test]
fn an_answer_rejecting_our_audio_or_changing_the_m_lines_is_an_error() {
    let mut s = session();
    let offer = default_offer(&mut s);
    let rejected =
        parse("v=0\r\no=p 1 1 IN IP4 192.0.2.60\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n");
    assert_eq!(
        sdp::process_answer(&offer, &rejected, &mut s),
        Err(SdpError::AudioRejected)
    );
    let two = parse(&format!(
        "{}m=video 0 RTP/AVP 31\r\n",
        peer_answer("0", "").to_sdp()
    ));
    assert!(matches!(
        sdp::process_answer(&offer, &two, &mut s),
        Err(SdpError::AnswerMismatch(_))
    ));
    let savp = parse(
        "v=0\r\no=p 1 1 IN IP4 192.0.2.60\r\ns=-\r\nc=IN IP4 192.0.2.60\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n",
    );
    assert!(matches!(
        sdp::process_answer(&offer, &savp, &mut s),
        Err(SdpError::AnswerMismatch(_))
    ));
    let te_only = peer_answer("101", "a=rtpmap:101 telephone-event/8000\r\n");
    assert_eq!(
        sdp::process_answer(&offer, &te_only, &mut s),
        Err(SdpError::NoCommonCodec)
    );
}

#[test]
fn an_answer_with_the_hold_address_leaves_us_nowhere_to_send() {
    let mut s = session();
    let offer = default_offer(&mut s);
    let mut answer = peer_answer("0", "");
    answer.connection = Some(sdp::Connection::new("0.0.0.0".parse().unwrap()));
    let media = sdp::process_answer(&offer, &answer, &mut s).unwrap();
    assert_eq!((media.remote_rtp, media.remote_rtcp), (None, None));
    assert_eq!(media.direction, Direction::RecvOnly);
    assert!(media.held_by_peer());
}

#[test]
fn a_delayed_offer_goes_in_the_200_and_its_answer_comes_from_the_ack() {
    // INVITE without SDP: we offer in the 200 OK; the ACK carries sipp's answer.
    let mut s = session();
    let offer = default_offer(&mut s);
    let ack_body = parse(SIPP_UAC);
    let media = sdp::process_answer(&offer, &ack_body, &mut s).unwrap();
    assert_eq!(media.codec.codec, Codec::Pcmu);
    assert_eq!(media.remote_rtp, Some(addr("127.0.0.1:6000")));
    assert_eq!(media.telephone_event, None);
    assert_eq!(media.direction, Direction::SendRecv);
}

// ---------------------------------------------------------------------------------------
// Re-offers, hold and resume, o= versions

/// The answer of a phone at 192.0.2.60:5000 to our offer: our own answerer run on the
/// phone's side, then its direction narrowed to what the phone `wants`.
fn phone_answer(offer: &sdp::Offer, wants: Direction) -> SessionDescription {
    let mut phone = SdpSession::new("phone", 77, "192.0.2.60".parse().unwrap()).unwrap();
    let phone_addr = MediaAddress::new(addr("192.0.2.60:5000")).unwrap();
    let a = sdp::answer(
        offer.sdp(),
        &LocalCapabilities::default(),
        phone_addr,
        &mut phone,
    )
    .unwrap();
    let mut sdp = a.sdp;
    sdp.media[a.media.media_index].direction = Some(offer.direction().reversed().intersect(wants));
    sdp
}

#[test]
fn we_hold_the_peer_with_sendonly_and_resume_with_sendrecv() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    let first = sdp::offer(&caps, local(), Direction::SendRecv, &mut s);
    let m =
        sdp::process_answer(&first, &phone_answer(&first, Direction::SendRecv), &mut s).unwrap();
    assert_eq!(m.direction, Direction::SendRecv);
    assert_eq!(first.sdp().origin.session_version, 1);

    let hold = sdp::offer(&caps, local(), Direction::SendOnly, &mut s);
    assert_eq!(hold.sdp().media[0].direction, Some(Direction::SendOnly));
    assert_eq!(hold.sdp().origin.session_version, 2);
    // Never the RFC 2543 hold address.
    assert!(hold.to_sdp().contains("c=IN IP4 203.0.113.7\r\n"));
    let m = sdp::process_answer(&hold, &phone_answer(&hold, Direction::SendRecv), &mut s).unwrap();
    assert_eq!(m.direction, Direction::SendOnly);
    assert_eq!(m.remote_direction, Direction::RecvOnly);
    assert_eq!(s.local_direction(), Direction::SendOnly);

    let resume = sdp::offer(&caps, local(), Direction::SendRecv, &mut s);
    assert_eq!(resume.sdp().origin.session_version, 3);
    let m =
        sdp::process_answer(&resume, &phone_answer(&resume, Direction::SendRecv), &mut s).unwrap();
    assert_eq!(m.direction, Direction::SendRecv);
    assert_eq!(s.local_direction(), Direction::SendRecv);
}

#[test]
fn while_we_hold_the_peer_our_answers_to_its_offers_stay_sendonly() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    sdp::answer(&parse(ASTERISK), &caps, local(), &mut s).unwrap();
    let hold = sdp::offer(&caps, local(), Direction::SendOnly, &mut s);
    sdp::process_answer(&hold, &phone_answer(&hold, Direction::SendRecv), &mut s).unwrap();
    // A session-timer refresh from the peer, sendrecv: we still hold.
    let a = sdp::answer(&parse(ASTERISK), &caps, local(), &mut s).unwrap();
    assert_eq!(a.media.direction, Direction::SendOnly);
    // The peer holds too: nobody sends.
    let a = sdp::answer(
        &parse(&ASTERISK.replace("a=sendrecv", "a=sendonly")),
        &caps,
        local(),
        &mut s,
    )
    .unwrap();
    assert_eq!(a.media.direction, Direction::Inactive);
}

#[test]
fn the_peer_holds_us_with_sendonly_inactive_or_0000_and_resumes() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    let base = ASTERISK;
    let steps: [(String, Direction, bool); 5] = [
        (base.to_owned(), Direction::SendRecv, false),
        (
            base.replace("a=sendrecv", "a=sendonly"),
            Direction::RecvOnly,
            true,
        ),
        (
            base.replace("a=sendrecv", "a=inactive"),
            Direction::Inactive,
            true,
        ),
        (
            base.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0"),
            Direction::RecvOnly,
            true,
        ),
        (base.to_owned(), Direction::SendRecv, false),
    ];
    for (text, ours, held) in steps {
        let a = sdp::answer(&parse(&text), &caps, local(), &mut s).unwrap();
        assert_eq!(a.media.direction, ours, "{text}");
        assert_eq!(a.media.held_by_peer(), held);
        assert_eq!(a.media.remote_rtp.is_none(), text.contains("0.0.0.0"));
        assert_eq!(a.media.codec.codec, Codec::Pcmu);
    }
}

#[test]
fn the_o_version_increments_by_one_on_change_and_only_on_change() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    let held = ASTERISK.replace("a=sendrecv", "a=sendonly");
    let versions: Vec<u64> = [ASTERISK, ASTERISK, held.as_str(), ASTERISK, ASTERISK]
        .iter()
        .map(|t| {
            sdp::answer(&parse(t), &caps, local(), &mut s)
                .unwrap()
                .sdp
                .origin
                .session_version
        })
        .collect();
    assert_eq!(versions, [1, 1, 2, 3, 3]);
    // The rest of o= never changes.
    let o = &s.last_sent().unwrap().origin;
    assert_eq!((o.username.as_str(), o.session_id), ("confer", 0x1234_5678));
    // An unchanged re-offer (a re-INVITE without SDP) keeps the version too.
    let mut s = session();
    let a = sdp::offer(&caps, local(), Direction::SendRecv, &mut s);
    let b = sdp::offer(&caps, local(), Direction::SendRecv, &mut s);
    assert_eq!(a.sdp(), b.sdp());
    assert_eq!(b.sdp().origin.session_version, 1);
}

#[test]
fn a_changed_local_address_is_a_change() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    sdp::answer(&parse(ASTERISK), &caps, local(), &mut s).unwrap();
    let moved = MediaAddress::new(addr("203.0.113.7:40100")).unwrap();
    let a = sdp::answer(&parse(ASTERISK), &caps, moved, &mut s).unwrap();
    assert_eq!(a.sdp.origin.session_version, 2);
}

#[test]
fn a_re_offer_keeps_rejected_m_lines_in_place_with_port_0() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    let first = sdp::answer(&parse(LINPHONE), &caps, local(), &mut s).unwrap();
    assert_eq!(first.media.codec.payload_type, 96);
    let hold = sdp::offer(&caps, local(), Direction::SendOnly, &mut s);
    let kinds: Vec<_> = hold
        .sdp()
        .media
        .iter()
        .map(|m| (m.kind.clone(), m.port))
        .collect();
    assert_eq!(kinds, [(MediaKind::Audio, 40000), (MediaKind::Video, 0)]);
    // The payload type already in use for Opus stays 96, not our default 111, and the
    // current codec is listed first; telephone-event/48000 keeps the peer's 101.
    let audio = &hold.sdp().media[0];
    assert_eq!(audio.formats[0], "96");
    assert!(hold.to_sdp().contains("a=rtpmap:96 opus/48000/2\r\n"));
    assert!(
        hold.to_sdp()
            .contains("a=rtpmap:101 telephone-event/48000\r\n")
    );
    assert!(!audio.formats.contains(&"111".to_owned()));
    // 8000 Hz telephone-event needs a number of its own.
    let te8k = audio
        .rtpmaps
        .iter()
        .find(|m| m.encoding == "telephone-event" && m.clock_rate == 8000)
        .unwrap();
    assert_ne!(te8k.payload_type, 101);
}

#[test]
fn a_re_offer_that_removes_m_lines_is_refused() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    sdp::answer(&parse(LINPHONE), &caps, local(), &mut s).unwrap();
    let audio_only = LINPHONE.split("m=video").next().unwrap();
    let err = sdp::answer(&parse(audio_only), &caps, local(), &mut s).unwrap_err();
    assert_eq!(
        err,
        SdpError::MediaLinesRemoved {
            before: 2,
            after: 1
        }
    );
    assert_eq!(err.status_code(), 488);
}

#[test]
fn the_peer_changes_codec_with_a_re_invite() {
    let caps = LocalCapabilities::default();
    let mut s = session();
    assert_eq!(
        sdp::answer(&parse(ASTERISK), &caps, local(), &mut s)
            .unwrap()
            .media
            .codec
            .codec,
        Codec::Pcmu
    );
    let pcma_first = ASTERISK.replace("RTP/AVP 0 8 9", "RTP/AVP 8 0 9");
    let a = sdp::answer(&parse(&pcma_first), &caps, local(), &mut s).unwrap();
    assert_eq!(a.media.codec.codec, Codec::Pcma);
    assert_eq!(a.sdp.origin.session_version, 2);
}

#[test]
fn we_change_codec_with_a_re_offer_of_other_capabilities() {
    let mut s = session();
    let first = default_offer(&mut s);
    sdp::process_answer(&first, &peer_answer("0", ""), &mut s).unwrap();
    // Same capabilities: PCMU stays first so hold/resume does not switch codec.
    let again = default_offer(&mut s);
    assert_eq!(again.sdp().media[0].formats[0], "0");
    let g722 = LocalCapabilities::new(&[Codec::G722]).unwrap();
    let change = sdp::offer(&g722, local(), Direction::SendRecv, &mut s);
    assert_eq!(change.sdp().media[0].formats, ["9", "101"]);
    let m = sdp::process_answer(&change, &peer_answer("9", ""), &mut s).unwrap();
    assert_eq!(m.codec.codec, Codec::G722);
}

// ---------------------------------------------------------------------------------------
// Configuration

#[test]
fn inconsistent_local_configuration_is_refused() {
    assert_eq!(LocalCapabilities::new(&[]), Err(ConfigError::NoCodec));
    assert_eq!(
        LocalCapabilities::new(&[Codec::Pcmu, Codec::Pcmu]),
        Err(ConfigError::DuplicateCodec)
    );
    assert_eq!(
        LocalCapabilities::default().with_ptime(25),
        Err(ConfigError::UnsupportedPtime(25))
    );
    assert_eq!(
        LocalCapabilities::default().with_payload_types(96, 96, 97),
        Err(ConfigError::PayloadTypeClash(96))
    );
    assert_eq!(
        LocalCapabilities::default().with_payload_types(8, 101, 110),
        Err(ConfigError::NotDynamicPayloadType(8))
    );
    for bad in [
        "0.0.0.0:4000",
        "203.0.113.7:0",
        "224.0.0.1:4000",
        "203.0.113.7:65535",
    ] {
        assert!(MediaAddress::new(addr(bad)).is_err(), "{bad}");
    }
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    assert_eq!(
        SdpSession::new("a b", 1, ip),
        Err(ConfigError::InvalidUsername)
    );
    assert_eq!(
        SdpSession::new("x", u64::MAX, ip).unwrap().session_id(),
        u64::MAX >> 1
    );
}

// ---------------------------------------------------------------------------------------
// Hostile input

/// Mutates a sample: byte changes, deletions, insertions of SDP-significant characters,
/// duplicated and swapped lines.
fn mutate(rng: &mut ChaCha8Rng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    const INTERESTING: &[u8] = b"=:/ \r\n0123456789-;,.vomcatb\x00\xff";
    for _ in 0..rng.random_range(1..=4) {
        if bytes.is_empty() {
            bytes.push(b'v');
        }
        let pos = rng.random_range(0..bytes.len());
        match rng.random_range(0..6) {
            0 => bytes[pos] = rng.random(),
            1 => {
                bytes.remove(pos);
            }
            2 => bytes.insert(pos, INTERESTING[rng.random_range(0..INTERESTING.len())]),
            3 => {
                let digits = [
                    "0",
                    "65535",
                    "65536",
                    "4294967296",
                    "18446744073709551616",
                    "-1",
                    "127",
                    "128",
                ];
                let d = digits[rng.random_range(0..digits.len())];
                bytes.splice(pos..pos, d.bytes());
            }
            _ => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let i = rng.random_range(0..lines.len());
                let j = rng.random_range(0..lines.len());
                if rng.random() {
                    lines.swap(i, j);
                } else {
                    let dup = lines[i].clone();
                    lines.insert(j, dup);
                }
                bytes = lines.join(&b'\n');
            }
        }
    }
    bytes
}

#[test]
fn seeded_random_mutations_never_panic_and_what_parses_round_trips() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5d9_0ffe4);
    let caps = LocalCapabilities::default();
    let mux = LocalCapabilities::default()
        .with_rtcp_mux(true)
        .with_codec_order(CodecOrder::Local);
    let (mut parsed, mut answered) = (0, 0);
    for _ in 0..1_000 {
        for (name, text) in SAMPLES {
            let input = mutate(&mut rng, text);
            let Ok(d) = SessionDescription::parse(&input) else {
                continue;
            };
            parsed += 1;
            let again = SessionDescription::parse(d.to_sdp().as_bytes());
            assert_eq!(
                again.as_ref(),
                Ok(&d),
                "{name}: {:?}",
                String::from_utf8_lossy(&input)
            );
            for caps in [&caps, &mux] {
                let mut s = session();
                if let Ok(a) = sdp::answer(&d, caps, local(), &mut s) {
                    answered += 1;
                    assert_eq!(a.sdp.media.len(), d.media.len());
                    assert_eq!(
                        SessionDescription::parse(a.sdp.to_sdp().as_bytes()).as_ref(),
                        Ok(&a.sdp)
                    );
                    // A re-offer of the same mutated description must not panic either.
                    let _ = sdp::answer(&d, caps, local(), &mut s);
                    let _ = sdp::offer(caps, local(), Direction::SendOnly, &mut s);
                }
                // The mutated description as an answer to our offer.
                let mut s = session();
                let offer = sdp::offer(caps, local(), Direction::SendRecv, &mut s);
                let _ = sdp::process_answer(&offer, &d, &mut s);
            }
        }
    }
    // The mutations must leave enough valid input to exercise negotiation.
    assert!(parsed > 3_000, "only {parsed} mutated samples parsed");
    assert!(answered > 3_000, "only {answered} mutated samples answered");
}

#[test]
fn arbitrary_bytes_never_panic_the_parser() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..5_000 {
        let len = rng.random_range(0..200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random() {
            bytes.splice(0..0, b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n".iter().copied());
        }
        let _ = SessionDescription::parse(&bytes);
    }
}

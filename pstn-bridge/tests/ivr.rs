//! The dial-in PIN IVR, driven on virtual time through a rig that plays the binary's part:
//! it plays the IVR's prompts through a `PromptPlayer` at 8 kHz, answers PIN checks from a
//! small directory, and delivers the caller's keys by RFC 4733 (through the real
//! `TelephoneEventSender`/`TelephoneEventReceiver` pair), SIP INFO bodies, or in-band tones
//! (`DtmfGenerator` -> G.711 mu-law -> `DtmfDetector`, over background speech, the echo of
//! the prompt and noise). Deterministic: one `Instant` is read as the epoch, every later
//! time is an offset from it, and noise comes from a seeded ChaCha8 RNG.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use confer_codecs::dtmf::{
    DtmfDetector, DtmfDigit, DtmfGenerator, TelephoneEvent, TelephoneEventReceiver,
    TelephoneEventSender,
};
use confer_codecs::g711::G711Law;
use confer_engine::leg::LegEvent;
use confer_pstn_bridge::ivr::{
    Admission, CallInfo, CallerKey, ControlAction, ControlMap, ControlSequence, DigitError,
    DigitInput, DigitSource, DigitVerdict, HangupReason, Ivr, IvrConfig, IvrError, IvrOutput,
    IvrPhase, LockoutConfig, LockoutStatus, Lockouts, PinVerdict, PlayerConfig, PlayerStatus,
    PromptError, PromptId, PromptPlayer, PromptQueue, Prompts, RoomRef, parse_sip_info,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RATE: u32 = 8000;
const FRAME: usize = 160; // 20 ms at 8 kHz
const TICK: Duration = Duration::from_millis(20);
const GOOD_PIN: &str = "48260";
const ROOM: RoomRef = RoomRef(7);

fn prompts(rate: u32) -> &'static Prompts {
    static P8: OnceLock<Prompts> = OnceLock::new();
    static P16: OnceLock<Prompts> = OnceLock::new();
    static P48: OnceLock<Prompts> = OnceLock::new();
    let cell = match rate {
        8000 => &P8,
        16000 => &P16,
        48000 => &P48,
        _ => panic!("no cache for {rate} Hz"),
    };
    cell.get_or_init(|| Prompts::embedded(rate).expect("embedded prompts decode"))
}

#[allow(clippy::disallowed_methods)] // the epoch of virtual time; nothing waits on it
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn caller(n: u32) -> CallerKey {
    CallerKey::Number(format!("+4930123{n:04}"))
}

fn admitted(first: bool, wait: bool) -> PinVerdict {
    PinVerdict::Accepted(Admission {
        room: ROOM,
        first_participant: first,
        wait_for_moderator: wait,
    })
}

/// How the rig answers PIN checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Directory {
    /// `GOOD_PIN` opens `ROOM`, anything else is rejected.
    Answer(PinVerdict),
    /// Never answers (a dead database).
    Silent,
}

/// One call as the binary would drive it.
struct Call {
    ivr: Ivr,
    player: PromptPlayer,
    /// Prompts queued by `Play`, in order.
    played: Vec<PromptId>,
    stops: u32,
    checks: Vec<String>,
    joined: Option<(RoomRef, Instant)>,
    hangup: Option<(HangupReason, Instant)>,
    controls: Vec<ControlAction>,
    /// Every sample the player sent.
    sent: Vec<f32>,
    /// `Debug`/`Display` of everything the IVR produced or held (for the secrecy test).
    transcript: Vec<String>,
    /// Outputs seen after the hang-up (must stay empty).
    after_hangup: u32,
    /// When each accepted digit arrived.
    digit_times: Vec<Instant>,
    /// Run the tone detector even when the IVR does not want in-band digits.
    always_detect: bool,
    // RFC 4733 path.
    rfc_keys: VecDeque<DtmfDigit>,
    rfc_sender: TelephoneEventSender,
    rfc_receiver: TelephoneEventReceiver,
    rfc_idle_since: u32,
    // In-band path.
    tones: DtmfGenerator,
    detector: DtmfDetector,
    /// Background speech (another prompt, looping) and its gain.
    background: Option<(PromptId, f32)>,
    background_pos: usize,
    /// Echo of what we send, as heard back in the caller's audio.
    echo_gain: f32,
    noise_dbov: Option<f32>,
}

/// The rig: virtual time, the shared lock-out table, the directory, and the current call.
struct Rig {
    now: Instant,
    media_ts: u32,
    lockouts: Lockouts,
    directory: Directory,
    config: IvrConfig,
    rng: ChaCha8Rng,
    call: Call,
}

impl Rig {
    fn new(rfc4733: bool) -> Self {
        Self::with(IvrConfig::default(), LockoutConfig::default(), rfc4733)
    }

    fn with(config: IvrConfig, lockout: LockoutConfig, rfc4733: bool) -> Self {
        let now = epoch();
        let lockouts = Lockouts::new(lockout).unwrap();
        let call = Self::start(&config, &lockouts, caller(1), rfc4733, now);
        let mut rig = Self {
            now,
            media_ts: 0x1234_5678,
            lockouts,
            directory: Directory::Answer(admitted(false, false)),
            config,
            rng: ChaCha8Rng::seed_from_u64(4733),
            call,
        };
        rig.drain();
        rig
    }

    fn start(
        config: &IvrConfig,
        lockouts: &Lockouts,
        who: CallerKey,
        rfc4733: bool,
        now: Instant,
    ) -> Call {
        let info = CallInfo {
            caller: who,
            dialed: "+4930555000".into(),
            rfc4733_negotiated: rfc4733,
        };
        Call {
            ivr: Ivr::new(config.clone(), info, lockouts, now).unwrap(),
            player: PromptPlayer::new(RATE, PlayerConfig::default()).unwrap(),
            played: Vec::new(),
            stops: 0,
            checks: Vec::new(),
            joined: None,
            hangup: None,
            controls: Vec::new(),
            sent: Vec::new(),
            transcript: Vec::new(),
            after_hangup: 0,
            digit_times: Vec::new(),
            always_detect: false,
            rfc_keys: VecDeque::new(),
            rfc_sender: TelephoneEventSender::new(400, 10).unwrap(),
            rfc_receiver: TelephoneEventReceiver::new(RATE),
            rfc_idle_since: 0,
            tones: DtmfGenerator::new(RATE).unwrap(),
            detector: DtmfDetector::new(RATE).unwrap(),
            background: None,
            background_pos: 0,
            echo_gain: 0.0,
            noise_dbov: None,
        }
    }

    /// A new call on the same lock-out table, `after` the current time.
    fn next_call(&mut self, who: CallerKey, after: Duration) {
        self.now += after;
        self.media_ts = self.media_ts.wrapping_add(12345);
        self.call = Self::start(&self.config, &self.lockouts, who, true, self.now);
        self.drain();
    }

    /// Carries out the IVR's outputs, as the binary would.
    fn drain(&mut self) {
        let c = &mut self.call;
        c.transcript.push(format!("{:?}", c.ivr));
        while let Some(out) = c.ivr.poll_output() {
            c.transcript.push(format!("{out:?}"));
            if c.hangup.is_some() {
                c.after_hangup += 1;
            }
            match out {
                IvrOutput::Play(q) => {
                    c.played.extend_from_slice(q.as_slice());
                    c.player.play(&q).unwrap();
                }
                IvrOutput::StopPlayback => {
                    c.stops += 1;
                    c.player.stop();
                }
                IvrOutput::CheckPin(check) => {
                    c.checks.push(check.pin.expose().to_owned());
                    let verdict = match self.directory {
                        Directory::Silent => continue,
                        Directory::Answer(_) if !check.pin.matches(GOOD_PIN) => {
                            PinVerdict::Rejected
                        }
                        Directory::Answer(v) => v,
                    };
                    c.ivr
                        .handle_pin_result(check.ticket, verdict, &mut self.lockouts, self.now)
                        .unwrap();
                    c.transcript.push(format!("{:?}", c.ivr));
                }
                IvrOutput::JoinRoom(room) => c.joined = Some((room, self.now)),
                IvrOutput::Control(a) => c.controls.push(a),
                IvrOutput::Hangup(reason) => {
                    c.transcript.push(reason.to_string());
                    c.hangup = Some((reason, self.now));
                }
            }
        }
    }

    fn digit(&mut self, input: DigitInput) -> DigitVerdict {
        self.call.transcript.push(format!("{input:?}"));
        let v = self.call.ivr.handle_digit(input, self.now);
        if v == DigitVerdict::Accepted {
            self.call.digit_times.push(self.now);
        }
        self.drain();
        v
    }

    /// One 20 ms tick: RFC 4733 packets, caller audio through the detector, one frame of
    /// prompts, timers.
    fn tick(&mut self) {
        self.now += TICK;
        self.media_ts = self.media_ts.wrapping_add(FRAME as u32);
        let ts = self.media_ts;

        // RFC 4733: a 100 ms event per key, 100 ms apart, sent and received for real.
        let c = &mut self.call;
        if c.rfc_sender.is_idle()
            && ts.wrapping_sub(c.rfc_idle_since) >= 800
            && let Some(key) = c.rfc_keys.pop_front()
        {
            c.rfc_sender.send_event(key.event_code(), ts, 800).unwrap();
        }
        let mut inputs = Vec::new();
        while let Some(p) = c.rfc_sender.poll_packet(ts) {
            let mut payload = [0u8; TelephoneEvent::LEN];
            p.payload.build(&mut payload).unwrap();
            for e in c
                .rfc_receiver
                .handle_packet(p.timestamp, p.marker, &payload)
                .unwrap()
            {
                if let Some(d) = DigitInput::from_leg_event(&LegEvent::Dtmf(e)).unwrap() {
                    inputs.push(d);
                }
            }
            if c.rfc_sender.is_idle() {
                c.rfc_idle_since = ts;
            }
        }

        // The caller's audio: tones + background speech + echo + noise, through mu-law.
        let mut frame = [0.0f32; FRAME];
        c.tones.fill(&mut frame);
        if let Some((id, gain)) = c.background {
            let bg = prompts(RATE).pcm(id);
            for s in &mut frame {
                *s += gain * bg[c.background_pos % bg.len()];
                c.background_pos += 1;
            }
        }
        if c.echo_gain > 0.0 && c.sent.len() >= FRAME {
            let last = &c.sent[c.sent.len() - FRAME..];
            for (s, e) in frame.iter_mut().zip(last) {
                *s += c.echo_gain * e;
            }
        }
        if let Some(db) = c.noise_dbov {
            // Uniform noise of RMS `db` dBov: amplitude sqrt(3) * rms.
            let amp = 3f32.sqrt() * 10f32.powf(db / 20.0);
            for s in &mut frame {
                *s += self.rng.random_range(-amp..amp);
            }
        }
        let mut codes = [0u8; FRAME];
        G711Law::Ulaw.encode_f32(&frame, &mut codes).unwrap();
        G711Law::Ulaw.decode_f32(&codes, &mut frame).unwrap();
        if c.ivr.wants_inband() || c.always_detect {
            c.detector.process(&frame, |e| {
                if let Some(d) = DigitInput::from_detector_event(&e) {
                    inputs.push(d);
                }
            });
        }
        for input in inputs {
            self.digit(input);
        }

        // What we send: the next frame of prompts.
        let c = &mut self.call;
        let mut out = [0.0f32; FRAME];
        let status = c.player.fill(prompts(RATE), &mut out).unwrap();
        c.sent.extend_from_slice(&out);
        if status == PlayerStatus::Finished {
            c.ivr.handle_playback_finished(self.now);
        }
        if c.ivr.poll_timeout().is_some_and(|t| t <= self.now) {
            c.ivr.handle_timeout(self.now);
        }
        self.drain();
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.tick();
        }
    }

    /// Ticks until the call joined or hung up; panics after `limit`.
    fn run_to_end(&mut self, limit: Duration) {
        let end = self.now + limit;
        while self.call.joined.is_none() && self.call.hangup.is_none() {
            assert!(self.now < end, "the call did not end within {limit:?}");
            self.tick();
        }
    }

    fn type_rfc4733(&mut self, keys: &str) {
        for c in keys.chars() {
            self.call
                .rfc_keys
                .push_back(DtmfDigit::from_char(c).unwrap());
        }
    }

    fn type_inband(&mut self, keys: &str) {
        self.call.tones.push_digits(keys).unwrap();
    }

    /// Keys by SIP INFO, `gap` apart, alternating the two body formats.
    fn type_info(&mut self, keys: &str, gap: Duration) {
        for (i, c) in keys.chars().enumerate() {
            let (ct, body) = if i % 2 == 0 {
                (
                    "application/dtmf-relay",
                    format!("Signal={c}\r\nDuration=160\r\n"),
                )
            } else {
                ("application/dtmf", format!("{c}\r\n"))
            };
            let input = DigitInput::from_sip_info(ct, body.as_bytes()).unwrap();
            self.digit(input);
            self.run(gap);
        }
    }
}

fn seconds(samples: usize) -> f64 {
    samples as f64 / f64::from(RATE)
}

fn rms_dbov(x: &[f32]) -> f32 {
    let p = x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len().max(1) as f64;
    (10.0 * p.max(1e-20).log10()) as f32
}

// ----- joining with the right PIN ---------------------------------------------------------------

#[test]
fn a_correct_pin_by_rfc4733_events_joins_the_room() {
    let mut rig = Rig::new(true);
    // Wait for the greeting to end, then type.
    rig.run(Duration::from_secs(7));
    assert_eq!(rig.call.played, [PromptId::Welcome, PromptId::EnterPin]);
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(20));
    let (room, at) = rig.call.joined.expect("joined");
    assert_eq!(room, ROOM);
    assert_eq!(rig.call.checks, [GOOD_PIN]);
    assert_eq!(rig.call.ivr.phase(), IvrPhase::Joined);
    // The join follows the "joining" prompt, which starts with the `#`: the player reports
    // its end at the tick whose 20 ms frame holds the last sample.
    let hash = *rig.call.digit_times.last().unwrap();
    let joining = prompts(RATE).duration(PromptId::Joining);
    let waited = at - hash;
    assert!(
        waited + TICK > joining && waited <= joining,
        "joined {waited:?} after the #, the prompt lasts {joining:?}"
    );
    assert_eq!(rig.call.ivr.stats().digits.accepted, 6);
    assert_eq!(rig.call.ivr.stats().failed_attempts, 0);
}

#[test]
fn a_correct_pin_by_sip_info_joins_the_room() {
    let mut rig = Rig::new(false);
    rig.run(Duration::from_secs(1));
    rig.type_info("48260#", Duration::from_millis(250));
    rig.run_to_end(Duration::from_secs(10));
    assert_eq!(rig.call.joined.map(|j| j.0), Some(ROOM));
    assert_eq!(rig.call.checks, [GOOD_PIN]);
}

#[test]
fn a_correct_pin_by_inband_tones_over_speech_echo_and_noise_joins_the_room() {
    let mut rig = Rig::new(false);
    // The caller's line carries other speech at about -24 dBov, the echo of our prompt at
    // -12 dB, and noise at -50 dBov; the tones (-10 dBov per tone) start while the greeting
    // plays, so the first of them is also a barge-in.
    rig.call.background = Some((PromptId::Participants, 0.25));
    rig.call.echo_gain = 0.25;
    rig.call.noise_dbov = Some(-50.0);
    rig.run(Duration::from_millis(800));
    rig.type_inband("48260#");
    rig.run_to_end(Duration::from_secs(10));
    assert_eq!(rig.call.joined.map(|j| j.0), Some(ROOM));
    assert_eq!(rig.call.checks, [GOOD_PIN]);
    assert_eq!(rig.call.ivr.stats().digits.accepted, 6);
    assert!(rig.call.ivr.stats().barge_ins >= 1);
}

#[test]
fn an_admitted_caller_hears_the_room_state_before_joining() {
    let mut rig = Rig::new(true);
    rig.directory = Directory::Answer(admitted(true, true));
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(20));
    assert!(rig.call.joined.is_some());
    assert!(rig.call.played.ends_with(&[
        PromptId::Joining,
        PromptId::FirstParticipant,
        PromptId::WaitForModerator
    ]));
}

// ----- wrong PINs, lock-out ------------------------------------------------------------------

#[test]
fn three_wrong_pins_hang_up_with_too_many_attempts() {
    let mut rig = Rig::new(true);
    rig.type_rfc4733("1111#2222#3333#");
    rig.run_to_end(Duration::from_secs(30));
    let (reason, _) = rig.call.hangup.expect("hung up");
    assert_eq!(reason, HangupReason::TooManyAttempts);
    assert_eq!(rig.call.checks, ["1111", "2222", "3333"]);
    let count = |id| rig.call.played.iter().filter(|&&p| p == id).count();
    assert_eq!(count(PromptId::InvalidPin), 2);
    assert_eq!(rig.call.played.last(), Some(&PromptId::TooManyAttempts));
    assert_eq!(rig.lockouts.failures(&caller(1), rig.now), 3);
    assert_eq!(rig.call.after_hangup, 0);
    assert_eq!(rig.call.ivr.phase(), IvrPhase::Ended);
}

#[test]
fn a_caller_who_fails_five_times_across_calls_is_locked_out_until_the_cooldown_ends() {
    let mut rig = Rig::new(true);
    rig.type_rfc4733("1111#2222#3333#");
    rig.run_to_end(Duration::from_secs(30));
    assert_eq!(
        rig.call.hangup.map(|h| h.0),
        Some(HangupReason::TooManyAttempts)
    );

    // Second call a minute later: the fifth failure locks the caller out at once.
    rig.next_call(caller(1), Duration::from_secs(60));
    rig.type_rfc4733("4444#5555#");
    rig.run_to_end(Duration::from_secs(30));
    assert_eq!(rig.call.hangup.map(|h| h.0), Some(HangupReason::LockedOut));
    assert_eq!(rig.call.checks.len(), 2);
    let LockoutStatus::LockedOut { until } = rig.lockouts.status(&caller(1), rig.now) else {
        panic!("not locked out");
    };
    let hash = *rig.call.digit_times.last().unwrap();
    assert_eq!(until, hash + Duration::from_secs(15 * 60));

    // Third call with the right PIN: refused without a PIN check.
    rig.next_call(caller(1), Duration::from_secs(120));
    assert_eq!(rig.call.played, [PromptId::TooManyAttempts]);
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(10));
    assert_eq!(rig.call.hangup.map(|h| h.0), Some(HangupReason::LockedOut));
    assert!(rig.call.checks.is_empty());

    // Another caller is not affected.
    rig.next_call(caller(2), Duration::from_secs(1));
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(20));
    assert!(rig.call.joined.is_some());

    // Just before the 15-minute cool-down ends: still refused; just after: admitted.
    let gap = until - rig.now - Duration::from_secs(1);
    rig.next_call(caller(1), gap);
    assert_eq!(rig.call.played, [PromptId::TooManyAttempts]);
    rig.run_to_end(Duration::from_secs(10));
    rig.next_call(caller(1), Duration::from_secs(2));
    assert!(rig.now > until);
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(20));
    assert_eq!(rig.call.joined.map(|j| j.0), Some(ROOM));
}

#[test]
fn a_caller_locked_out_by_a_parallel_call_is_refused_even_with_the_right_pin() {
    let now = epoch();
    let mut lockouts = Lockouts::new(LockoutConfig {
        max_failures: 2,
        ..LockoutConfig::default()
    })
    .unwrap();
    let info = CallInfo {
        caller: caller(9),
        dialed: "+4930555000".into(),
        rfc4733_negotiated: true,
    };
    let mut a = Ivr::new(IvrConfig::default(), info.clone(), &lockouts, now).unwrap();
    let mut b = Ivr::new(IvrConfig::default(), info, &lockouts, now).unwrap();
    let key = |d| DigitInput {
        digit: d,
        source: DigitSource::Rfc4733,
    };
    let check = |ivr: &mut Ivr| {
        std::iter::from_fn(|| ivr.poll_output())
            .find_map(|o| match o {
                IvrOutput::CheckPin(c) => Some(c),
                _ => None,
            })
            .expect("a PIN check")
    };
    // Both calls submit a PIN; call A is rejected twice and locks the caller out.
    b.handle_digit(key(DtmfDigit::D4), now);
    b.handle_digit(key(DtmfDigit::Hash), now);
    let b_check = check(&mut b);
    for _ in 0..2 {
        a.handle_digit(key(DtmfDigit::D1), now);
        a.handle_digit(key(DtmfDigit::Hash), now);
        let c = check(&mut a);
        a.handle_pin_result(c.ticket, PinVerdict::Rejected, &mut lockouts, now)
            .unwrap();
    }
    assert!(lockouts.status(&caller(9), now).is_locked_out());
    // B's PIN was right, but the caller is locked out now.
    b.handle_pin_result(b_check.ticket, admitted(false, false), &mut lockouts, now)
        .unwrap();
    let outs: Vec<_> = std::iter::from_fn(|| b.poll_output()).collect();
    assert!(!outs.iter().any(|o| matches!(o, IvrOutput::JoinRoom(_))));
    assert!(matches!(
        outs.last(),
        Some(IvrOutput::Play(q)) if q.as_slice() == [PromptId::TooManyAttempts]
    ));
    b.handle_playback_finished(now);
    assert!(matches!(
        b.poll_output(),
        Some(IvrOutput::Hangup(HangupReason::LockedOut))
    ));
}

#[test]
fn a_pin_result_for_a_ticket_that_is_not_pending_is_refused() {
    let mut lockouts = Lockouts::new(LockoutConfig::default()).unwrap();
    let now = epoch();
    let mut ivr = Ivr::new(
        IvrConfig::default(),
        CallInfo {
            caller: caller(3),
            dialed: "+4930555000".into(),
            rfc4733_negotiated: true,
        },
        &lockouts,
        now,
    )
    .unwrap();
    for d in [DtmfDigit::D1, DtmfDigit::Hash] {
        ivr.handle_digit(
            DigitInput {
                digit: d,
                source: DigitSource::SipInfo,
            },
            now,
        );
    }
    let ticket = std::iter::from_fn(|| ivr.poll_output())
        .find_map(|o| match o {
            IvrOutput::CheckPin(c) => Some(c.ticket),
            _ => None,
        })
        .unwrap();
    ivr.handle_pin_result(ticket, PinVerdict::Rejected, &mut lockouts, now)
        .unwrap();
    assert_eq!(
        ivr.handle_pin_result(ticket, admitted(false, false), &mut lockouts, now),
        Err(IvrError::UnexpectedPinResult)
    );
    assert_eq!(lockouts.failures(&caller(3), now), 1);
}

#[test]
fn a_silent_pin_directory_fails_closed() {
    let mut rig = Rig::new(true);
    rig.directory = Directory::Silent;
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(30));
    let (reason, at) = rig.call.hangup.unwrap();
    assert_eq!(reason, HangupReason::ServiceUnavailable);
    assert_eq!(rig.call.played.last(), Some(&PromptId::ServiceUnavailable));
    // 10 s for the directory after the `#`, then the goodbye prompt.
    let hash = *rig.call.digit_times.last().unwrap();
    let expected = Duration::from_secs(10) + prompts(RATE).duration(PromptId::ServiceUnavailable);
    let t = at - hash;
    assert!(
        t + TICK > expected && t < expected + 2 * TICK,
        "hung up {t:?} after the #, expected {expected:?}"
    );
}

// ----- entry rules ------------------------------------------------------------------------------

#[test]
fn star_clears_the_entry_and_asks_again() {
    let mut rig = Rig::new(true);
    rig.type_rfc4733("99*48260#");
    rig.run_to_end(Duration::from_secs(20));
    assert!(rig.call.joined.is_some());
    assert_eq!(rig.call.checks, [GOOD_PIN]);
    // Welcome, EnterPin, EnterPin again after the star, Joining.
    assert_eq!(
        rig.call.played,
        [
            PromptId::Welcome,
            PromptId::EnterPin,
            PromptId::EnterPin,
            PromptId::Joining
        ]
    );
}

#[test]
fn silence_reprompts_twice_then_hangs_up_and_never_checks_a_pin() {
    let mut rig = Rig::new(true);
    rig.run_to_end(Duration::from_secs(120));
    let (reason, at) = rig.call.hangup.unwrap();
    assert_eq!(reason, HangupReason::NoInput);
    assert_eq!(
        rig.call.played,
        [
            PromptId::Welcome,
            PromptId::EnterPin,
            PromptId::EnterPin,
            PromptId::EnterPin,
            PromptId::NoInput
        ]
    );
    assert!(rig.call.checks.is_empty());
    // Greeting, three 10 s waits each after a prompt, the goodbye: the time adds up.
    let p = prompts(RATE);
    let gap = PlayerConfig::default().sentence_gap;
    let expected = p.duration(PromptId::Welcome)
        + gap
        + 3 * p.duration(PromptId::EnterPin)
        + 3 * Duration::from_secs(10)
        + p.duration(PromptId::NoInput);
    let t = at - epoch();
    assert!(
        t + TICK > expected && t < expected + Duration::from_millis(200),
        "hung up at {t:?}, expected {expected:?}"
    );
}

#[test]
fn a_partial_entry_that_times_out_is_discarded_not_counted_as_a_wrong_pin() {
    let mut rig = Rig::new(true);
    rig.type_rfc4733("48");
    rig.run(Duration::from_secs(3));
    // 5 s after the last key the entry is dropped and the caller asked again.
    rig.run(Duration::from_secs(3));
    assert_eq!(rig.call.played.last(), Some(&PromptId::EnterPin));
    assert_eq!(rig.call.ivr.stats().no_input, 1);
    assert!(rig.call.checks.is_empty());
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(20));
    assert_eq!(rig.call.checks, [GOOD_PIN]);
    assert_eq!(rig.lockouts.failures(&caller(1), rig.now), 0);
}

#[test]
fn an_entry_of_the_maximum_length_is_submitted_without_pound() {
    let config = IvrConfig {
        max_pin_len: 5,
        ..IvrConfig::default()
    };
    let mut rig = Rig::with(config, LockoutConfig::default(), true);
    rig.type_rfc4733("48260");
    rig.run_to_end(Duration::from_secs(20));
    assert_eq!(rig.call.checks, [GOOD_PIN]);
    assert!(rig.call.joined.is_some());
}

#[test]
fn a_digit_stops_the_prompt_that_is_playing() {
    let mut rig = Rig::new(true);
    rig.run(Duration::from_millis(600));
    let before = rig.call.sent.len();
    assert!(
        rms_dbov(&rig.call.sent[FRAME * 10..before]) > -40.0,
        "the greeting plays"
    );
    rig.type_rfc4733("4");
    rig.run(Duration::from_secs(2));
    assert_eq!(rig.call.stops, 1);
    assert!(!rig.call.player.is_playing());
    assert_eq!(rig.call.ivr.stats().barge_ins, 1);
    // The key press is reported one RFC 4733 packet interval (50 ms) after it starts;
    // from then on nothing but silence is sent.
    let after = &rig.call.sent[before + 5 * FRAME..];
    assert!(
        after.iter().all(|&s| s == 0.0),
        "prompt audio after barge-in"
    );
    assert!(seconds(after.len()) > 1.5);
}

// ----- one press, one digit -------------------------------------------------------------------

#[test]
fn a_press_seen_by_rfc4733_and_inband_at_once_counts_once() {
    // A gateway that negotiated telephone-event and left the tones in the audio too.
    // The rig runs the detector anyway (the binary need not: `wants_inband` is false).
    let mut rig = Rig::new(true);
    rig.call.always_detect = true;
    assert!(!rig.call.ivr.wants_inband());
    rig.type_rfc4733("48260#");
    rig.type_inband("48260#");
    rig.run_to_end(Duration::from_secs(20));
    assert_eq!(rig.call.checks, [GOOD_PIN]);
    let s = rig.call.ivr.stats().digits;
    assert_eq!(s.accepted, 6);
    assert_eq!(s.inband_ignored, 6);
}

#[test]
fn an_inband_digit_and_its_sip_info_twin_count_once_and_inband_is_then_ignored() {
    let now = epoch();
    let lockouts = Lockouts::new(LockoutConfig::default()).unwrap();
    let info = CallInfo {
        caller: caller(4),
        dialed: "+4930555000".into(),
        rfc4733_negotiated: false,
    };
    let mut ivr = Ivr::new(IvrConfig::default(), info, &lockouts, now).unwrap();
    let at = |ms| now + Duration::from_millis(ms);
    let inband = |d| DigitInput {
        digit: d,
        source: DigitSource::InBand,
    };
    let sip = |d| DigitInput {
        digit: d,
        source: DigitSource::SipInfo,
    };
    assert!(ivr.wants_inband());
    assert_eq!(
        ivr.handle_digit(inband(DtmfDigit::D4), at(0)),
        DigitVerdict::Accepted
    );
    assert_eq!(
        ivr.handle_digit(sip(DtmfDigit::D4), at(60)),
        DigitVerdict::Duplicate
    );
    // From now on the signalling path is trusted and tones are not.
    assert!(!ivr.wants_inband());
    assert_eq!(
        ivr.handle_digit(inband(DtmfDigit::D8), at(400)),
        DigitVerdict::InBandIgnored
    );
    assert_eq!(
        ivr.handle_digit(sip(DtmfDigit::D8), at(420)),
        DigitVerdict::Accepted
    );
    // The same key twice on one path is two presses.
    assert_eq!(
        ivr.handle_digit(sip(DtmfDigit::D8), at(500)),
        DigitVerdict::Accepted
    );
    let s = ivr.stats().digits;
    assert_eq!((s.accepted, s.duplicates, s.inband_ignored), (3, 1, 1));
}

// ----- prompts ----------------------------------------------------------------------------------

#[test]
fn prompts_load_at_every_rate_with_plausible_durations_and_levels() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let total: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "opus"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total < 400_000, "the prompt set is {total} bytes");

    for rate in [8000, 16000, 48000] {
        let p = prompts(rate);
        assert_eq!(p.sample_rate(), rate);
        let (mut lowest, mut highest) = (f32::MAX, f32::MIN);
        let mut speech = Duration::ZERO;
        for id in PromptId::all() {
            let d = p.duration(id).as_secs_f64();
            // Sentences are whole prompts; fragments ("seven", "there are") are single
            // words, composed at run time, so shorter.
            let (lo, hi) = if id.is_fragment() {
                (0.25, 2.0)
            } else {
                (0.5, 8.0)
            };
            assert!(d > lo && d < hi, "{id:?} lasts {d} s at {rate} Hz");
            assert!(
                (d - prompts(8000).duration(id).as_secs_f64()).abs() < 0.001,
                "{id:?} has another length at {rate} Hz"
            );
            let pcm = p.pcm(id);
            let peak = pcm.iter().fold(0.0f32, |m, &s| m.max(s.abs()));
            assert!(peak > 0.4 && peak <= 1.0, "{id:?} peaks at {peak}");
            // Active speech level: RMS over the 20 ms frames above -50 dBov.
            let frame = rate as usize / 50;
            let active: Vec<f32> = pcm
                .chunks(frame)
                .filter(|c| rms_dbov(c) > -50.0)
                .flatten()
                .copied()
                .collect();
            let level = rms_dbov(&active);
            assert!(
                (-26.0..-10.0).contains(&level),
                "{id:?} speech level {level} dBov at {rate} Hz"
            );
            assert!(
                active.len() as f64 > 0.5 * pcm.len() as f64,
                "{id:?} is mostly silence"
            );
            lowest = lowest.min(level);
            highest = highest.max(level);
            speech += p.duration(id);
        }
        eprintln!(
            "{rate} Hz: {:.1} s of prompts, speech levels {lowest:.1} to {highest:.1} dBov",
            speech.as_secs_f64()
        );
    }
}

#[test]
fn a_prompt_set_from_a_directory_loads_wav_files_and_names_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("confer-ivr-prompts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    for id in PromptId::all() {
        let mut w =
            hound::WavWriter::create(dir.join(format!("{}.wav", id.file_stem())), spec).unwrap();
        for &s in prompts(16000).pcm(id) {
            w.write_sample((s * 32767.0) as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    let loaded = Prompts::from_dir(&dir, 8000).unwrap();
    for id in PromptId::all() {
        let a = loaded.pcm(id);
        let b = prompts(8000).pcm(id);
        assert!(
            a.len().abs_diff(b.len()) <= 1,
            "{id:?}: {} vs {}",
            a.len(),
            b.len()
        );
    }
    std::fs::write(dir.join("muted.wav"), b"RIFF\0\0\0\0WAVEjunk").unwrap();
    let err = Prompts::from_dir(&dir, 8000).unwrap_err();
    assert!(
        matches!(err, PromptError::BadFile { file: "muted", .. }),
        "{err}"
    );
    std::fs::remove_file(dir.join("unmuted.wav")).unwrap();
    std::fs::remove_file(dir.join("muted.wav")).unwrap();
    let err = Prompts::from_dir(&dir, 8000).unwrap_err();
    assert!(
        matches!(err, PromptError::Read { file: "muted", .. }),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupted_embedded_prompt_is_a_typed_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let original =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/muted.opus"))
            .unwrap();
    for _ in 0..200 {
        let mut bytes = original.clone();
        match rng.random_range(0..3) {
            0 => bytes.truncate(rng.random_range(0..original.len())),
            1 => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            _ => {
                bytes = (0..rng.random_range(0..400))
                    .map(|_| rng.random())
                    .collect()
            }
        }
        let r = Prompts::load(8000, |_| Ok(std::borrow::Cow::Borrowed(&bytes)));
        // A flipped bit always breaks a CRC or the structure; a truncation may leave whole
        // pages only, but then the granule promises more audio than there is.
        assert!(r.is_err(), "a damaged file was accepted");
    }
}

#[test]
fn the_player_pauses_between_sentences_and_joins_fragments_closely() {
    let p = prompts(RATE);
    let config = PlayerConfig::default();
    let mut player = PromptPlayer::new(RATE, config).unwrap();
    player.play(&PromptQueue::participant_count(7)).unwrap();
    player
        .play(&PromptQueue::one(PromptId::ParticipantJoined))
        .unwrap();
    let mut out = vec![0.0f32; FRAME];
    let mut frames = 0;
    loop {
        frames += 1;
        match player.fill(p, &mut out).unwrap() {
            PlayerStatus::Playing => {}
            PlayerStatus::Finished => break,
            PlayerStatus::Idle => panic!("idle before Finished"),
        }
    }
    assert_eq!(player.fill(p, &mut out).unwrap(), PlayerStatus::Idle);
    let seven = PromptId::Number(confer_pstn_bridge::ivr::SpokenNumber::new(7).unwrap());
    let samples = |d: Duration| (d.as_secs_f64() * f64::from(RATE)).round() as usize;
    let expected = [
        PromptId::ThereAre,
        seven,
        PromptId::Participants,
        PromptId::ParticipantJoined,
    ]
    .iter()
    .map(|&id| p.pcm(id).len())
    .sum::<usize>()
        + 2 * samples(config.fragment_gap)
        + samples(config.sentence_gap);
    assert_eq!(frames, expected.div_ceil(FRAME));
    let mut other = PromptPlayer::new(16000, config).unwrap();
    other.play(&PromptQueue::one(PromptId::Muted)).unwrap();
    assert!(
        other.fill(p, &mut out).is_err(),
        "8 kHz prompts in a 16 kHz player"
    );
}

// ----- in-call controls -----------------------------------------------------------------------

#[test]
fn in_call_sequences_become_actions_and_a_stray_star_expires() {
    let mut rig = Rig::new(true);
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(20));
    assert!(rig.call.joined.is_some());

    rig.type_rfc4733("*6");
    rig.run(Duration::from_secs(1));
    assert_eq!(rig.call.controls, [ControlAction::ToggleMute]);
    rig.call
        .ivr
        .announce(PromptQueue::one(PromptId::Muted), rig.now)
        .unwrap();
    rig.drain();
    rig.run(Duration::from_secs(2));
    assert_eq!(rig.call.played.last(), Some(&PromptId::Muted));

    // A lone star expires after 3 s: the 6 that follows is just a 6.
    rig.type_rfc4733("*");
    rig.run(Duration::from_secs(4));
    rig.type_rfc4733("6");
    rig.run(Duration::from_secs(1));
    assert_eq!(rig.call.controls.len(), 1);

    // A second star restarts the sequence.
    rig.type_rfc4733("**0");
    rig.run(Duration::from_millis(1500));
    assert_eq!(
        rig.call.controls,
        [ControlAction::ToggleMute, ControlAction::AnnounceCount]
    );
}

#[test]
fn a_custom_control_map_is_used() {
    let map = ControlMap::new([(
        ControlSequence::parse("#9").unwrap(),
        ControlAction::VolumeUp,
    )])
    .unwrap();
    let config = IvrConfig {
        controls: map,
        ..IvrConfig::default()
    };
    let mut rig = Rig::with(config, LockoutConfig::default(), true);
    rig.type_rfc4733("48260#");
    rig.run_to_end(Duration::from_secs(20));
    rig.type_rfc4733("*6#9");
    rig.run(Duration::from_secs(2));
    assert_eq!(rig.call.controls, [ControlAction::VolumeUp]);
}

#[test]
fn announcements_before_joining_are_refused() {
    let mut rig = Rig::new(true);
    assert_eq!(
        rig.call
            .ivr
            .announce(PromptQueue::one(PromptId::Muted), rig.now),
        Err(IvrError::NotJoined)
    );
    rig.run(Duration::from_millis(20));
}

// ----- secrecy and hostile input ------------------------------------------------------------

#[test]
fn the_pin_never_appears_in_debug_or_display_output() {
    let wrong = "73915";
    let mut rig = Rig::new(false);
    rig.type_inband(&format!("{wrong}#"));
    rig.run(Duration::from_secs(3));
    rig.type_info("48260#", Duration::from_millis(200));
    rig.run_to_end(Duration::from_secs(20));
    assert!(rig.call.joined.is_some());
    assert_eq!(rig.call.checks, [wrong, GOOD_PIN]);

    let mut texts = std::mem::take(&mut rig.call.transcript);
    texts.push(format!("{:?}", rig.call.ivr));
    texts.push(format!("{:?}", rig.lockouts));
    texts.push(format!("{:?}", rig.call.ivr.stats()));
    for c in wrong.chars().chain(GOOD_PIN.chars()) {
        let body = format!("Signal={c}\r\nDuration=100");
        texts.push(format!(
            "{:?}",
            parse_sip_info("application/dtmf-relay", body.as_bytes())
        ));
        let bad = format!("Signal={c}{c}{c}");
        let e = parse_sip_info("application/dtmf-relay", bad.as_bytes()).unwrap_err();
        texts.push(format!("{e} {e:?}"));
    }
    assert!(texts.len() > 50);
    for t in &texts {
        for pin in [wrong, GOOD_PIN] {
            assert!(!t.contains(pin), "{t}");
            // Digit by digit, as DtmfDigit prints them, and as ASCII codes.
            let spelled: Vec<String> = pin.chars().map(|c| format!("D{c}")).collect();
            assert!(!spelled.iter().any(|s| t.contains(s.as_str())), "{t}");
            let codes: Vec<String> = pin.bytes().map(|b| b.to_string()).collect();
            assert!(!t.contains(&codes[..2].join(", ")), "{t}");
        }
    }
}

#[test]
fn garbage_input_gives_typed_errors_and_never_a_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let alphabet = b"Signal=Duration\r\n 0123456789*#ABCDEabcx=;\xff";
    for _ in 0..2000 {
        let len = rng.random_range(0..64);
        let body: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        let ct = [
            "application/dtmf-relay",
            "application/dtmf",
            "text/plain",
            "",
        ][rng.random_range(0..4)];
        let _ = parse_sip_info(ct, &body);
    }
    assert_eq!(
        DigitInput::from_sip_info("application/dtmf-relay", b"Signal=X"),
        Err(DigitError::InvalidSignal)
    );
    let flash = confer_codecs::dtmf::ReceivedEvent::Started {
        event: 16,
        timestamp: 1,
        volume: 10,
    };
    assert_eq!(
        DigitInput::from_telephone_event(&flash),
        Err(DigitError::NotADigit(16))
    );
}

#[test]
fn random_inputs_always_end_in_a_join_or_a_hangup_within_the_session_limit() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let keys = "0123456789*#ABCD";
    for round in 0..300 {
        let mut lockouts = Lockouts::new(LockoutConfig::default()).unwrap();
        let start = epoch() + Duration::from_secs(round);
        let mut now = start;
        let mut ivr = Ivr::new(
            IvrConfig::default(),
            CallInfo {
                caller: caller(round as u32 % 7),
                dialed: "+4930555000".into(),
                rfc4733_negotiated: rng.random(),
            },
            &lockouts,
            now,
        )
        .unwrap();
        let mut tickets = Vec::new();
        let mut ended = false;
        let mut after_end = 0;
        while now < start + Duration::from_secs(400) {
            now += Duration::from_millis(rng.random_range(1..3000));
            match rng.random_range(0..10) {
                0..=4 => {
                    let c = keys.as_bytes()[rng.random_range(0..keys.len())] as char;
                    let source = [
                        DigitSource::Rfc4733,
                        DigitSource::SipInfo,
                        DigitSource::InBand,
                    ][rng.random_range(0..3)];
                    let digit = DtmfDigit::from_char(c).unwrap();
                    ivr.handle_digit(DigitInput { digit, source }, now);
                }
                5 => ivr.handle_playback_finished(now),
                6 if !tickets.is_empty() => {
                    let t = tickets[rng.random_range(0..tickets.len())];
                    let v = [
                        PinVerdict::Rejected,
                        admitted(rng.random(), rng.random()),
                        PinVerdict::ConferenceFull,
                        PinVerdict::ConferenceLocked,
                        PinVerdict::Unavailable,
                    ][rng.random_range(0..5)];
                    let _ = ivr.handle_pin_result(t, v, &mut lockouts, now);
                }
                _ => ivr.handle_timeout(now),
            }
            if ivr.poll_timeout().is_some_and(|t| t <= now) {
                ivr.handle_timeout(now);
            }
            while let Some(out) = ivr.poll_output() {
                if ended {
                    after_end += 1;
                }
                match out {
                    IvrOutput::CheckPin(c) => tickets.push(c.ticket),
                    IvrOutput::Hangup(_) | IvrOutput::JoinRoom(_) => ended = true,
                    _ => {}
                }
            }
            if ended {
                break;
            }
        }
        assert!(ended, "round {round}: still in {:?}", ivr.phase());
        if ivr.phase() == IvrPhase::Ended {
            // After the hang-up, nothing comes out whatever goes in.
            for _ in 0..20 {
                now += Duration::from_secs(1);
                let digit = DtmfDigit::from_char('5').unwrap();
                ivr.handle_digit(
                    DigitInput {
                        digit,
                        source: DigitSource::Rfc4733,
                    },
                    now,
                );
                ivr.handle_playback_finished(now);
                ivr.handle_timeout(now);
                after_end += std::iter::from_fn(|| ivr.poll_output()).count();
            }
            assert_eq!(after_end, 0, "round {round}: output after the hang-up");
            assert_eq!(ivr.poll_timeout(), None);
        }
    }
}

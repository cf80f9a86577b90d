//! Escalation at the core level: who rings, with what, when; first answer wins;
//! fallbacks; changes in place; late and bad input. Virtual time, no RNG needed.

use std::cell::Cell;
use std::time::Duration;

use confer_signalling::directory::{
    Capabilities, Device, DeviceId, DeviceKind, Directory, DirectoryLimits, PhoneNumber,
    Reachability, Timestamp, User, UserId,
};
use confer_signalling::escalation::{
    CancelReason, Command, ConversationId, DialOutDecision, DialOutPolicy, EndReason,
    EscalationError, EscalationRequest, Escalations, Event, EventKind, FallbackReason,
    IgnoredReason, InputOutcome, InviteeAction, InviteeStatus, JoinedVia, LegFailure, LegId,
    LegTarget, Media, Modality, Output, Participant, PstnPlan, RoutingPolicy,
};
use confer_signalling::presence::{Presence, PresenceConfig, UserState};

const T0: u64 = 1_700_000_000_000;

fn at(secs: u64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn num(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).unwrap()
}

fn conv(s: &str) -> ConversationId {
    ConversationId::new(s).unwrap()
}

fn user(s: &str) -> Participant {
    Participant::User(uid(s))
}

fn session(id: &str) -> Reachability {
    Reachability::Session {
        session_id: format!("sess-{id}"),
    }
}

/// alice: browser (video) + mobile (declares no video), number +447700900001.
/// bob: SIP desk phone registered for an hour, number +447700900002.
/// carol: desktop app with video, no number.
/// dave: no device, number +447700900004.
/// erin: no device, no number.
fn world() -> Presence {
    let mut dir = Directory::new(DirectoryLimits::default());
    let mut add = |id: &str, phone: Option<&str>| {
        let mut u = User::new(uid(id), id.to_uppercase());
        u.phone = phone.map(num);
        dir.add_user(u).unwrap();
    };
    add("alice", Some("+447700900001"));
    add("bob", Some("+447700900002"));
    add("carol", None);
    add("dave", Some("+447700900004"));
    add("erin", None);
    let devices = [
        Device::new(
            did("alice-browser"),
            uid("alice"),
            DeviceKind::Browser,
            Capabilities::ALL,
            session("ab"),
        ),
        Device::new(
            did("alice-mobile"),
            uid("alice"),
            DeviceKind::Mobile,
            Capabilities::AUDIO,
            session("am"),
        ),
        Device::new(
            did("bob-desk"),
            uid("bob"),
            DeviceKind::DeskPhone,
            Capabilities::AUDIO,
            Reachability::SipRegistration {
                contact: "sip:bob@192.0.2.10:5060".into(),
                expires_at: at(3600),
            },
        ),
        Device::new(
            did("carol-desktop"),
            uid("carol"),
            DeviceKind::DesktopApp,
            Capabilities::ALL,
            session("cd"),
        ),
    ];
    for d in devices {
        dir.add_device(d).unwrap();
    }
    Presence::new(dir, PresenceConfig::default(), at(0))
}

fn allow() -> impl DialOutPolicy {
    |_: &ConversationId, _: &Participant, _: &PhoneNumber| DialOutDecision::Allow
}

fn deny() -> impl DialOutPolicy {
    |_: &ConversationId, _: &Participant, _: &PhoneNumber| DialOutDecision::Deny {
        reason: "dial-out blocked for group sales".into(),
    }
}

fn request(c: &str, who: &[Participant], modality: Modality) -> EscalationRequest {
    EscalationRequest {
        conversation: conv(c),
        participants: who.to_vec(),
        modality,
        subject: Some("Q3 planning".into()),
        end: false,
    }
}

fn drain(e: &mut Escalations) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn commands(out: &[Output]) -> Vec<Command> {
    out.iter()
        .filter_map(|o| match o {
            Output::Command(c) => Some(c.clone()),
            Output::Event(_) => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            Output::Command(_) => None,
        })
        .collect()
}

/// Event names with their main subject, for order assertions.
fn story(out: &[Output]) -> Vec<String> {
    events(out)
        .iter()
        .map(|e| match &e.kind {
            EventKind::Started { .. } => "started".into(),
            EventKind::Invited { invitee } => format!("invited {}", name(invitee)),
            EventKind::Ringing { device, media, .. } => format!("ringing {device} {media:?}"),
            EventKind::Answered { target, .. } => format!("answered {}", target_name(target)),
            EventKind::RingCancelled { target, reason, .. } => {
                format!("cancelled {} {reason:?}", target_name(target))
            }
            EventKind::Declined { target, .. } => format!("declined {}", target_name(target)),
            EventKind::RingFailed { target, .. } => format!("failed {}", target_name(target)),
            EventKind::FellBackToPstn { invitee, reason } => {
                format!("fell back to pstn {} {reason:?}", name(invitee))
            }
            EventKind::DiallingPstn { invitee, .. } => format!("dialling {}", name(invitee)),
            EventKind::DialOutRefused { invitee, .. } => {
                format!("dial-out refused {}", name(invitee))
            }
            EventKind::DialInOffered { invitee, reason } => {
                format!("dial-in offered {} {reason:?}", name(invitee))
            }
            EventKind::Joined {
                participant, media, ..
            } => format!("joined {} {media:?}", name(participant)),
            EventKind::Left {
                participant,
                reason,
            } => format!("left {} {reason:?}", name(participant)),
            EventKind::ModalityChanged { from, to } => format!("modality {from:?}->{to:?}"),
            EventKind::MediaChanged { participant, media } => {
                format!("media {} {media:?}", name(participant))
            }
            EventKind::LateInputIgnored { input, reason, .. } => {
                format!("late {input:?} ignored {reason:?}")
            }
            EventKind::Ended { reason } => format!("ended {reason:?}"),
        })
        .collect()
}

fn name(p: &Participant) -> String {
    match p {
        Participant::User(u) => u.to_string(),
        Participant::Phone(n) => n.as_str().to_string(),
    }
}

fn target_name(t: &LegTarget) -> String {
    match t {
        LegTarget::Device(d) => d.to_string(),
        LegTarget::Pstn(n) => n.as_str().to_string(),
    }
}

/// The leg of the Ring command for `device` among `out`.
fn ring_leg(out: &[Output], device: &str) -> LegId {
    commands(out)
        .iter()
        .find_map(|c| match c {
            Command::Ring { leg, device: d, .. } if d.as_str() == device => Some(*leg),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ring for {device}"))
}

fn dial_leg(out: &[Output]) -> LegId {
    commands(out)
        .iter()
        .find_map(|c| match c {
            Command::DialPstn { leg, .. } => Some(*leg),
            _ => None,
        })
        .expect("no DialPstn")
}

fn new_escalations() -> Escalations {
    Escalations::new(RoutingPolicy::default()).unwrap()
}

#[test]
fn a_video_escalation_rings_each_device_with_its_media_and_the_first_answer_wins() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("chat-1");
    let resp = e
        .escalate(
            request("chat-1", &[user("alice"), user("bob")], Modality::Video),
            &p,
            &allow(),
            at(0),
        )
        .unwrap();
    assert!(resp.created);

    // The response plans alice's mobile 5 s later, audio only.
    let InviteeAction::Ringing { devices, until } = &resp.invitees[0].action else {
        panic!("alice not rung: {:?}", resp.invitees[0]);
    };
    let plan: Vec<_> = devices
        .iter()
        .map(|d| (d.device.as_str(), d.media, d.at))
        .collect();
    assert_eq!(
        plan,
        [
            ("alice-browser", Media::AudioVideo, at(0)),
            ("alice-mobile", Media::Audio, at(5))
        ]
    );
    assert_eq!(*until, at(20));
    assert_eq!(
        resp.invitees[0].pstn,
        PstnPlan::Dial {
            number: num("+447700900001")
        }
    );

    let out = drain(&mut e);
    let cmds = commands(&out);
    assert!(matches!(&cmds[0], Command::OpenRoom { .. }));
    let rung: Vec<_> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Ring { device, media, .. } => Some((device.as_str(), *media)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rung,
        [
            ("alice-browser", Media::AudioVideo),
            ("bob-desk", Media::Audio)
        ]
    );
    let browser = ring_leg(&out, "alice-browser");
    let desk = ring_leg(&out, "bob-desk");
    let mut all = out;

    // The mobile starts ringing after its delay.
    assert_eq!(e.poll_timeout(), Some(at(5)));
    e.handle_timeout(at(5));
    let out = drain(&mut e);
    assert_eq!(
        commands(&out)
            .iter()
            .filter(|c| matches!(c, Command::Ring { .. }))
            .count(),
        1
    );
    let mobile = ring_leg(&out, "alice-mobile");
    all.extend(out);

    // alice answers on the browser: it joins with video, the mobile is cancelled.
    assert_eq!(e.on_answered(browser, at(7)), Ok(InputOutcome::Applied));
    let out = drain(&mut e);
    assert_eq!(
        commands(&out),
        [
            Command::JoinRoom {
                leg: browser,
                conversation: c.clone(),
                participant: user("alice"),
                target: LegTarget::Device(did("alice-browser")),
                media: Media::AudioVideo,
            },
            Command::CancelRing {
                leg: mobile,
                conversation: c.clone(),
                target: LegTarget::Device(did("alice-mobile")),
                reason: CancelReason::AnsweredElsewhere,
            },
        ]
    );
    all.extend(out);

    assert_eq!(e.on_answered(desk, at(8)), Ok(InputOutcome::Applied));
    all.extend(drain(&mut e));
    let dir = p.directory();
    let via = |d: &str| JoinedVia::Device(did(d));
    assert_eq!(
        e.on_joined(dir, &c, user("alice"), via("alice-browser"), at(9)),
        Ok(InputOutcome::Applied)
    );
    assert_eq!(
        e.on_joined(dir, &c, user("bob"), via("bob-desk"), at(9)),
        Ok(InputOutcome::Applied)
    );
    all.extend(drain(&mut e));

    assert_eq!(
        story(&all),
        [
            "started",
            "invited alice",
            "ringing alice-browser AudioVideo",
            "invited bob",
            "ringing bob-desk Audio",
            "ringing alice-mobile Audio",
            "answered alice-browser",
            "cancelled alice-mobile AnsweredElsewhere",
            "answered bob-desk",
            "joined alice AudioVideo",
            "joined bob Audio",
        ]
    );
    let times: Vec<_> = events(&all).iter().map(|e| e.at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(times.last(), Some(&at(9)));

    let view = e.call(&c).unwrap();
    let statuses: Vec<_> = view.participants.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [InviteeStatus::Joined, InviteeStatus::Joined]);
    assert_eq!(view.participants[0].media, Some(Media::AudioVideo));
    // Nothing is pending: no ring deadline, no unattended timer.
    assert_eq!(e.poll_timeout(), None);

    // The mobile's 200 OK crossed our CANCEL: it is hung up and reported.
    assert_eq!(
        e.on_answered(mobile, at(10)),
        Ok(InputOutcome::Ignored(IgnoredReason::AnsweredElsewhere))
    );
    let out = drain(&mut e);
    assert!(matches!(
        commands(&out)[..],
        [Command::CancelRing { leg, reason: CancelReason::AnsweredElsewhere, .. }] if leg == mobile
    ));
    assert_eq!(story(&out), ["late Answered ignored AnsweredElsewhere"]);
}

#[test]
fn a_delayed_ring_never_starts_when_another_device_answers_first() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("alice")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let browser = ring_leg(&drain(&mut e), "alice-browser");
    e.on_answered(browser, at(2)).unwrap();
    let out = drain(&mut e);
    // The mobile never rang, so there is nothing to cancel on the wire.
    assert!(
        !commands(&out)
            .iter()
            .any(|c| matches!(c, Command::CancelRing { .. }))
    );
    e.handle_timeout(at(5));
    assert!(drain(&mut e).is_empty());
}

#[test]
fn no_answer_within_the_ring_timeout_dials_the_users_number_when_policy_allows() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("bob")], Modality::Video),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let desk = ring_leg(&drain(&mut e), "bob-desk");
    e.handle_timeout(at(19));
    assert!(drain(&mut e).is_empty(), "nothing before the deadline");
    assert_eq!(e.poll_timeout(), Some(at(20)));
    e.handle_timeout(at(20));
    let out = drain(&mut e);
    assert_eq!(
        story(&out),
        [
            "cancelled bob-desk NoAnswer",
            "fell back to pstn bob NoAnswer",
            "dialling bob"
        ]
    );
    let cmds = commands(&out);
    assert!(
        matches!(&cmds[0], Command::CancelRing { leg, reason: CancelReason::NoAnswer, .. } if *leg == desk)
    );
    assert!(
        matches!(&cmds[1], Command::DialPstn { number, invitee, .. } if number.as_str() == "+447700900002" && *invitee == user("bob"))
    );
    let pstn = dial_leg(&out);
    assert_eq!(e.on_answered(pstn, at(30)), Ok(InputOutcome::Applied));
    let out = drain(&mut e);
    assert!(matches!(
        &commands(&out)[..],
        [Command::JoinRoom {
            target: LegTarget::Pstn(_),
            media: Media::Audio,
            ..
        }]
    ));
}

#[test]
fn when_policy_forbids_dial_out_the_invitee_gets_dial_in_instructions() {
    let p = world();
    let mut e = new_escalations();
    let resp = e
        .escalate(
            request("c", &[user("bob")], Modality::Voice),
            &p,
            &deny(),
            at(0),
        )
        .unwrap();
    assert!(matches!(resp.invitees[0].pstn, PstnPlan::Refused { .. }));
    drain(&mut e);
    e.handle_timeout(at(20));
    let out = drain(&mut e);
    assert_eq!(
        story(&out),
        [
            "cancelled bob-desk NoAnswer",
            "dial-out refused bob",
            "dial-in offered bob NoAnswer"
        ]
    );
    assert!(
        !commands(&out)
            .iter()
            .any(|c| matches!(c, Command::DialPstn { .. }))
    );
    assert!(commands(&out).iter().any(|c| matches!(
        c,
        Command::GiveDialInInstructions { invitee, reason: FallbackReason::NoAnswer, .. }
            if *invitee == user("bob")
    )));
    assert_eq!(
        e.call(&conv("c")).unwrap().participants[0].status,
        InviteeStatus::DialInOffered
    );
}

#[test]
fn an_invitee_without_devices_goes_straight_to_the_fallback() {
    let p = world();
    let mut e = new_escalations();
    let resp = e
        .escalate(
            request("c", &[user("dave"), user("erin")], Modality::Video),
            &p,
            &allow(),
            at(0),
        )
        .unwrap();
    assert!(matches!(
        &resp.invitees[0].action,
        InviteeAction::DiallingPstn { number, .. } if number.as_str() == "+447700900004"
    ));
    assert_eq!(
        resp.invitees[1].action,
        InviteeAction::DialInInstructions {
            reason: FallbackReason::NoDevice
        }
    );
    assert_eq!(resp.invitees[1].pstn, PstnPlan::NoNumber);
    let out = drain(&mut e);
    assert_eq!(
        story(&out),
        [
            "started",
            "invited dave",
            "fell back to pstn dave NoDevice",
            "dialling dave",
            "invited erin",
            "dial-in offered erin NoDevice"
        ]
    );
    assert!(
        !commands(&out)
            .iter()
            .any(|c| matches!(c, Command::Ring { .. }))
    );
}

#[test]
fn an_unanswered_pstn_dial_ends_in_dial_in_instructions() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("dave")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let leg = dial_leg(&drain(&mut e));
    assert_eq!(e.poll_timeout(), Some(at(40)));
    e.handle_timeout(at(40));
    let out = drain(&mut e);
    assert_eq!(
        story(&out),
        [
            "cancelled +447700900004 NoAnswer",
            "dial-in offered dave PstnNoAnswer"
        ]
    );
    assert!(matches!(
        &commands(&out)[0],
        Command::CancelRing { leg: l, target: LegTarget::Pstn(_), .. } if *l == leg
    ));
}

#[test]
fn when_every_device_fails_the_fallback_starts_without_waiting() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("alice")], Modality::Voice),
        &p,
        &deny(),
        at(0),
    )
    .unwrap();
    let browser = ring_leg(&drain(&mut e), "alice-browser");
    e.on_failed(browser, LegFailure::Unreachable, at(1))
        .unwrap();
    // The mobile is still scheduled: no fallback yet.
    assert_eq!(story(&drain(&mut e)), ["failed alice-browser"]);
    e.handle_timeout(at(5));
    let mobile = ring_leg(&drain(&mut e), "alice-mobile");
    e.on_failed(mobile, LegFailure::Busy, at(6)).unwrap();
    assert_eq!(
        story(&drain(&mut e)),
        [
            "failed alice-mobile",
            "dial-out refused alice",
            "dial-in offered alice AllDevicesFailed"
        ]
    );
    // A duplicate failure report changes nothing.
    assert_eq!(
        e.on_failed(mobile, LegFailure::Busy, at(7)),
        Ok(InputOutcome::Duplicate)
    );
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_decline_stops_the_other_rings_and_does_not_fall_back() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("alice")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    drain(&mut e);
    e.handle_timeout(at(5));
    let out = drain(&mut e);
    let mobile = ring_leg(&out, "alice-mobile");
    e.on_declined(mobile, at(6)).unwrap();
    assert_eq!(
        story(&drain(&mut e)),
        [
            "declined alice-mobile",
            "cancelled alice-browser DeclinedElsewhere"
        ]
    );
    // No PSTN dial at the ring deadline: only the unattended timer is left.
    assert_eq!(e.poll_timeout(), Some(at(6 + 15 * 60)));
    e.handle_timeout(at(20));
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_later_escalation_upgrades_to_video_adds_a_person_and_ends_the_call() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("chat-2");
    let dir = p.directory();
    e.escalate(
        request("chat-2", &[user("alice"), user("bob")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let out = drain(&mut e);
    assert!(commands(&out).iter().all(|c| !matches!(
        c,
        Command::Ring {
            media: Media::AudioVideo,
            ..
        }
    )));
    let (browser, desk) = (ring_leg(&out, "alice-browser"), ring_leg(&out, "bob-desk"));
    e.on_answered(browser, at(2)).unwrap();
    e.on_answered(desk, at(3)).unwrap();
    let dev = |d: &str| JoinedVia::Device(did(d));
    e.on_joined(dir, &c, user("alice"), dev("alice-browser"), at(3))
        .unwrap();
    e.on_joined(dir, &c, user("bob"), dev("bob-desk"), at(3))
        .unwrap();
    drain(&mut e);

    // Upgrade to video and add carol.
    let resp = e
        .escalate(
            request(
                "chat-2",
                &[user("alice"), user("bob"), user("carol")],
                Modality::Video,
            ),
            &p,
            &allow(),
            at(60),
        )
        .unwrap();
    assert!(!resp.created);
    assert_eq!(resp.modality, Modality::Video);
    assert_eq!(
        resp.invitees[0].action,
        InviteeAction::AlreadyPresent {
            status: InviteeStatus::Joined
        }
    );
    assert!(matches!(
        resp.invitees[2].action,
        InviteeAction::Ringing { .. }
    ));
    let out = drain(&mut e);
    assert_eq!(
        story(&out),
        [
            "modality Voice->Video",
            "media alice AudioVideo",
            "invited carol",
            "ringing carol-desktop AudioVideo"
        ]
    );
    // Only alice can do video: bob's desk phone gets no change.
    let changes: Vec<_> = commands(&out)
        .into_iter()
        .filter(|c| matches!(c, Command::ChangeMedia { .. }))
        .collect();
    assert_eq!(
        changes,
        [Command::ChangeMedia {
            conversation: c.clone(),
            participant: user("alice"),
            media: Media::AudioVideo
        }]
    );
    let carol = ring_leg(&out, "carol-desktop");

    // End it while carol still rings.
    let resp = e
        .escalate(
            EscalationRequest {
                end: true,
                ..request("chat-2", &[], Modality::Voice)
            },
            &p,
            &allow(),
            at(70),
        )
        .unwrap();
    assert!(resp.ended);
    let out = drain(&mut e);
    assert_eq!(
        story(&out),
        [
            "left alice CallEnded",
            "left bob CallEnded",
            "cancelled carol-desktop CallEnded",
            "ended Requested"
        ]
    );
    assert!(matches!(
        commands(&out).last(),
        Some(Command::CloseRoom {
            reason: EndReason::Requested,
            ..
        })
    ));
    assert_eq!(e.live_calls(), 0);

    // carol's answer arrives after the end: hung up and reported, nothing else.
    assert_eq!(
        e.on_answered(carol, at(71)),
        Ok(InputOutcome::Ignored(IgnoredReason::CallEnded))
    );
    let out = drain(&mut e);
    assert_eq!(story(&out), ["late Answered ignored CallEnded"]);
    assert!(matches!(
        &commands(&out)[..],
        [Command::CancelRing {
            reason: CancelReason::CallEnded,
            ..
        }]
    ));
    assert_eq!(e.end(&c, at(72)), Ok(InputOutcome::Duplicate));

    // After the linger time the call is forgotten and its legs are unknown.
    e.handle_timeout(at(70 + 120));
    assert_eq!(e.call(&c), None);
    assert_eq!(
        e.on_answered(carol, at(200)),
        Err(EscalationError::UnknownLeg(carol))
    );
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn a_downgrade_to_voice_turns_video_off_for_everyone_who_had_it() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("c");
    e.escalate(
        request("c", &[user("alice"), user("carol")], Modality::Video),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let out = drain(&mut e);
    e.on_answered(ring_leg(&out, "alice-browser"), at(1))
        .unwrap();
    e.on_answered(ring_leg(&out, "carol-desktop"), at(1))
        .unwrap();
    drain(&mut e);
    e.escalate(request("c", &[], Modality::Voice), &p, &allow(), at(10))
        .unwrap();
    let changed: Vec<_> = commands(&drain(&mut e))
        .into_iter()
        .filter_map(|c| match c {
            Command::ChangeMedia {
                participant, media, ..
            } => Some((name(&participant), media)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changed,
        [
            ("alice".to_string(), Media::Audio),
            ("carol".to_string(), Media::Audio)
        ]
    );
    assert_eq!(e.call(&c).unwrap().modality, Modality::Voice);
}

#[test]
fn a_device_that_answers_after_an_upgrade_joins_with_video() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("carol")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let out = drain(&mut e);
    let leg = ring_leg(&out, "carol-desktop");
    assert!(matches!(
        commands(&out)[1],
        Command::Ring {
            media: Media::Audio,
            ..
        }
    ));
    e.escalate(request("c", &[], Modality::Video), &p, &allow(), at(2))
        .unwrap();
    drain(&mut e);
    e.on_answered(leg, at(3)).unwrap();
    assert!(matches!(
        &commands(&drain(&mut e))[..],
        [Command::JoinRoom {
            media: Media::AudioVideo,
            ..
        }]
    ));
}

#[test]
fn do_not_disturb_gets_dial_in_instructions_without_ringing_or_asking_the_dial_out_policy() {
    let mut p = world();
    p.set_user_state(&uid("alice"), UserState::DoNotDisturb, None, at(0))
        .unwrap();
    let asked = Cell::new(0);
    let counting = |_: &ConversationId, _: &Participant, _: &PhoneNumber| {
        asked.set(asked.get() + 1);
        DialOutDecision::Allow
    };
    let mut e = new_escalations();
    let resp = e
        .escalate(
            request("c", &[user("alice")], Modality::Video),
            &p,
            &counting,
            at(1),
        )
        .unwrap();
    assert_eq!(
        resp.invitees[0].action,
        InviteeAction::DialInInstructions {
            reason: FallbackReason::DoNotDisturb
        }
    );
    assert_eq!(asked.get(), 0);
    let out = drain(&mut e);
    assert!(
        !commands(&out)
            .iter()
            .any(|c| matches!(c, Command::Ring { .. } | Command::DialPstn { .. }))
    );

    // With ring_when_do_not_disturb, alice's devices ring anyway.
    let mut e = Escalations::new(RoutingPolicy {
        ring_when_do_not_disturb: true,
        ..RoutingPolicy::default()
    })
    .unwrap();
    e.escalate(
        request("c", &[user("alice")], Modality::Video),
        &p,
        &counting,
        at(1),
    )
    .unwrap();
    ring_leg(&drain(&mut e), "alice-browser");
    assert_eq!(asked.get(), 1);
}

#[test]
fn a_dial_in_escalation_rings_nobody_and_ends_unattended() {
    let p = world();
    let mut e = new_escalations();
    let phone = Participant::Phone(num("+14155550100"));
    let resp = e
        .escalate(
            request("c", &[user("alice"), phone.clone()], Modality::DialIn),
            &p,
            &allow(),
            at(0),
        )
        .unwrap();
    assert!(resp.invitees.iter().all(|i| i.action
        == InviteeAction::DialInInstructions {
            reason: FallbackReason::DialInRequested
        }));
    let out = drain(&mut e);
    let instructed = commands(&out)
        .iter()
        .filter(|c| matches!(c, Command::GiveDialInInstructions { .. }))
        .count();
    assert_eq!(instructed, 2);
    assert!(
        !commands(&out)
            .iter()
            .any(|c| matches!(c, Command::Ring { .. } | Command::DialPstn { .. }))
    );
    assert_eq!(e.poll_timeout(), Some(at(15 * 60)));
    e.handle_timeout(at(15 * 60));
    assert_eq!(story(&drain(&mut e)), ["ended Unattended"]);
}

#[test]
fn a_dial_in_joiner_keeps_a_dial_in_call_open_until_the_last_one_leaves() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("c");
    let phone = Participant::Phone(num("+14155550100"));
    e.escalate(
        request("c", std::slice::from_ref(&phone), Modality::DialIn),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    drain(&mut e);
    e.on_joined(p.directory(), &c, phone.clone(), JoinedVia::DialIn, at(60))
        .unwrap();
    assert_eq!(e.poll_timeout(), None, "unattended timer disarmed");
    assert_eq!(e.on_left(&c, &phone, at(120)), Ok(InputOutcome::Applied));
    assert_eq!(
        story(&drain(&mut e)),
        [
            "joined +14155550100 Audio",
            "left +14155550100 HungUp",
            "ended Empty"
        ]
    );
}

#[test]
fn phone_participants_are_dialled_at_once_or_get_dial_in_when_refused() {
    let p = world();
    let phone = Participant::Phone(num("+14155550100"));
    let mut e = new_escalations();
    let resp = e
        .escalate(
            request("c", std::slice::from_ref(&phone), Modality::Video),
            &p,
            &allow(),
            at(0),
        )
        .unwrap();
    assert!(matches!(
        resp.invitees[0].action,
        InviteeAction::DiallingPstn { .. }
    ));
    assert_eq!(
        story(&drain(&mut e)),
        ["started", "invited +14155550100", "dialling +14155550100"]
    );

    let mut e = new_escalations();
    let resp = e
        .escalate(
            request("c", std::slice::from_ref(&phone), Modality::Video),
            &p,
            &deny(),
            at(0),
        )
        .unwrap();
    assert_eq!(
        resp.invitees[0].action,
        InviteeAction::DialInInstructions {
            reason: FallbackReason::DialOutRefused
        }
    );
    assert_eq!(
        story(&drain(&mut e))[2..],
        [
            "dial-out refused +14155550100",
            "dial-in offered +14155550100 DialOutRefused"
        ]
    );
}

#[test]
fn the_call_ends_when_the_last_joined_participant_leaves() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("c");
    e.escalate(
        request("c", &[user("alice"), user("bob")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let out = drain(&mut e);
    e.on_answered(ring_leg(&out, "alice-browser"), at(1))
        .unwrap();
    e.on_answered(ring_leg(&out, "bob-desk"), at(1)).unwrap();
    e.on_joined(
        p.directory(),
        &c,
        user("alice"),
        JoinedVia::Device(did("alice-browser")),
        at(2),
    )
    .unwrap();
    drain(&mut e);
    // bob's answered leg drops before he is in the room.
    let bob_leg = ring_leg(&out, "bob-desk");
    e.on_failed(bob_leg, LegFailure::Error, at(3)).unwrap();
    assert_eq!(story(&drain(&mut e)), ["left bob Failed"]);
    e.on_left(&c, &user("alice"), at(4)).unwrap();
    assert_eq!(story(&drain(&mut e)), ["left alice HungUp", "ended Empty"]);
    assert_eq!(
        e.on_left(&c, &user("alice"), at(5)),
        Ok(InputOutcome::Ignored(IgnoredReason::CallEnded))
    );
}

#[test]
fn joining_by_link_while_ringing_cancels_the_rings() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("c");
    e.escalate(
        request("c", &[user("alice")], Modality::Video),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    drain(&mut e);
    e.on_joined(
        p.directory(),
        &c,
        user("alice"),
        JoinedVia::Device(did("alice-mobile")),
        at(2),
    )
    .unwrap();
    assert_eq!(
        story(&drain(&mut e)),
        [
            "cancelled alice-browser JoinedElsewhere",
            "joined alice Audio"
        ]
    );
    // The mobile was only scheduled: it never rings.
    e.handle_timeout(at(30));
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_person_who_declined_can_be_invited_again() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("bob")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let first = ring_leg(&drain(&mut e), "bob-desk");
    e.on_declined(first, at(1)).unwrap();
    drain(&mut e);
    let resp = e
        .escalate(
            request("c", &[user("bob")], Modality::Voice),
            &p,
            &allow(),
            at(30),
        )
        .unwrap();
    assert!(matches!(
        resp.invitees[0].action,
        InviteeAction::Ringing { .. }
    ));
    let second = ring_leg(&drain(&mut e), "bob-desk");
    assert_ne!(first, second);
    // The first attempt's legs are forgotten.
    assert_eq!(
        e.on_answered(first, at(31)),
        Err(EscalationError::UnknownLeg(first))
    );
}

#[test]
fn duplicate_answers_are_idempotent() {
    let p = world();
    let mut e = new_escalations();
    e.escalate(
        request("c", &[user("bob")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let desk = ring_leg(&drain(&mut e), "bob-desk");
    assert_eq!(e.on_answered(desk, at(1)), Ok(InputOutcome::Applied));
    drain(&mut e);
    assert_eq!(e.on_answered(desk, at(2)), Ok(InputOutcome::Duplicate));
    assert!(drain(&mut e).is_empty());
}

#[test]
fn bad_requests_are_typed_errors_and_create_nothing() {
    let p = world();
    let mut e = new_escalations();
    let bad = [
        (
            request("c", &[user("alice"), user("mallory")], Modality::Voice),
            EscalationError::UnknownUser(uid("mallory")),
        ),
        (
            request("c", &[], Modality::Voice),
            EscalationError::NoParticipants,
        ),
        (
            EscalationRequest {
                end: true,
                ..request("c", &[], Modality::Voice)
            },
            EscalationError::UnknownConversation(conv("c")),
        ),
    ];
    for (req, err) in bad {
        assert_eq!(e.escalate(req, &p, &allow(), at(0)), Err(err));
    }
    let mut long = request("c", &[user("alice")], Modality::Voice);
    long.subject = Some("x".repeat(600));
    assert!(matches!(
        e.escalate(long, &p, &allow(), at(0)),
        Err(EscalationError::Invalid(_))
    ));

    let mut small = Escalations::new(RoutingPolicy {
        max_participants: 2,
        ..RoutingPolicy::default()
    })
    .unwrap();
    let three = [user("alice"), user("bob"), user("carol")];
    assert_eq!(
        small.escalate(request("c", &three, Modality::Voice), &p, &allow(), at(0)),
        Err(EscalationError::TooManyParticipants { max: 2 })
    );
    // Nothing half-created, in either.
    for e in [&mut e, &mut small] {
        assert!(e.poll_output().is_none());
        assert_eq!(e.call(&conv("c")), None);
        assert_eq!(e.poll_timeout(), None);
        assert_eq!(e.live_calls(), 0);
    }
    // Adding beyond the bound to a live call is refused whole too.
    small
        .escalate(
            request("c", &three[..2], Modality::Voice),
            &p,
            &allow(),
            at(0),
        )
        .unwrap();
    drain(&mut small);
    assert_eq!(
        small.escalate(request("c", &three, Modality::Voice), &p, &allow(), at(1)),
        Err(EscalationError::TooManyParticipants { max: 2 })
    );
    assert!(small.poll_output().is_none());
    // Duplicates in a request count once.
    let dup = [user("alice"), user("alice")];
    assert!(
        small
            .escalate(request("d", &dup, Modality::Voice), &p, &allow(), at(2))
            .is_ok()
    );
}

#[test]
fn the_number_of_live_calls_is_bounded() {
    let p = world();
    let mut e = Escalations::new(RoutingPolicy {
        max_calls: 1,
        ..RoutingPolicy::default()
    })
    .unwrap();
    e.escalate(
        request("a", &[user("erin")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    assert_eq!(
        e.escalate(
            request("b", &[user("erin")], Modality::Voice),
            &p,
            &allow(),
            at(0)
        ),
        Err(EscalationError::TooManyCalls { max: 1 })
    );
    e.end(&conv("a"), at(1)).unwrap();
    assert!(
        e.escalate(
            request("b", &[user("erin")], Modality::Voice),
            &p,
            &allow(),
            at(2)
        )
        .is_ok()
    );
}

#[test]
fn bad_leg_and_join_reports_are_typed_errors() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("c");
    e.escalate(
        request("c", &[user("alice")], Modality::Voice),
        &p,
        &allow(),
        at(0),
    )
    .unwrap();
    let out = drain(&mut e);
    assert_eq!(
        e.on_answered(LegId(999), at(1)),
        Err(EscalationError::UnknownLeg(LegId(999)))
    );
    // The mobile's leg exists but has not started ringing.
    let browser = ring_leg(&out, "alice-browser");
    let mobile = LegId(browser.0 + 1);
    assert_eq!(
        e.on_answered(mobile, at(1)),
        Err(EscalationError::LegNotRinging(mobile))
    );
    let dir = p.directory();
    assert_eq!(
        e.on_joined(
            dir,
            &c,
            user("alice"),
            JoinedVia::Device(did("bob-desk")),
            at(1)
        ),
        Err(EscalationError::NotParticipantsDevice {
            device: did("bob-desk"),
            participant: user("alice")
        })
    );
    assert_eq!(
        e.on_joined(dir, &conv("nope"), user("alice"), JoinedVia::DialIn, at(1)),
        Err(EscalationError::UnknownConversation(conv("nope")))
    );
    assert_eq!(
        e.on_left(&c, &user("bob"), at(1)),
        Err(EscalationError::NotAParticipant(user("bob")))
    );
    assert!(drain(&mut e).is_empty());
}

#[test]
fn an_invalid_routing_policy_is_refused() {
    let bad = RoutingPolicy {
        ring_timeout: Duration::from_secs(5),
        ..RoutingPolicy::default()
    };
    assert!(matches!(
        Escalations::new(bad),
        Err(EscalationError::InvalidPolicy(_))
    ));
}

#[test]
fn expired_registrations_and_pstn_devices_are_not_rung() {
    let p = world();
    let mut e = new_escalations();
    // bob's registration expired at 3600 s: he goes straight to the PSTN.
    let resp = e
        .escalate(
            request("c", &[user("bob")], Modality::Voice),
            &p,
            &allow(),
            at(3600),
        )
        .unwrap();
    assert!(matches!(
        resp.invitees[0].action,
        InviteeAction::DiallingPstn { .. }
    ));
}

#[test]
fn requests_and_events_have_a_stable_json_form() {
    let body = r#"{"conversation":"chat-9","participants":[{"user":"alice"},{"phone":"+14155550100"}],"modality":"video","subject":"hi"}"#;
    let req: EscalationRequest = serde_json::from_str(body).unwrap();
    assert_eq!(req.participants[1], Participant::Phone(num("+14155550100")));
    assert!(!req.end);
    let bad =
        r#"{"conversation":"chat-9","participants":[{"phone":"4155550100"}],"modality":"video"}"#;
    assert!(serde_json::from_str::<EscalationRequest>(bad).is_err());

    let p = world();
    let mut e = new_escalations();
    e.escalate(req, &p, &allow(), at(0)).unwrap();
    let first = events(&drain(&mut e)).remove(0);
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "at": T0, "conversation": "chat-9", "type": "started",
            "modality": "video", "subject": "hi"
        })
    );
    let back: Event = serde_json::from_value(json).unwrap();
    assert_eq!(back, first);
}

/// A policy that blocks video for `blocked` and allows every dial-out.
struct NoVideoFor(&'static str);

impl DialOutPolicy for NoVideoFor {
    fn decide(&self, _: &ConversationId, _: &Participant, _: &PhoneNumber) -> DialOutDecision {
        DialOutDecision::Allow
    }

    fn video_allowed(&self, invitee: &Participant) -> bool {
        *invitee != user(self.0)
    }
}

#[test]
fn an_invitee_whose_policy_blocks_video_is_rung_and_joins_with_audio_only() {
    let p = world();
    let mut e = new_escalations();
    let c = conv("chat-nv");
    let resp = e
        .escalate(
            request("chat-nv", &[user("alice"), user("carol")], Modality::Video),
            &p,
            &NoVideoFor("alice"),
            at(0),
        )
        .unwrap();
    // alice's browser can do video, but her policy says no; carol's desktop app keeps it.
    let media_of = |i: usize| match &resp.invitees[i].action {
        InviteeAction::Ringing { devices, .. } => devices.iter().map(|d| d.media).collect(),
        other => panic!("not rung: {other:?}"),
    };
    let alice: Vec<Media> = media_of(0);
    assert!(alice.iter().all(|m| *m == Media::Audio), "{alice:?}");
    assert_eq!(media_of(1), [Media::AudioVideo]);
    let out = drain(&mut e);
    let browser = ring_leg(&out, "alice-browser");
    assert_eq!(e.on_answered(browser, at(1)), Ok(InputOutcome::Applied));
    let out = drain(&mut e);
    assert!(
        commands(&out).iter().any(|c| matches!(
            c,
            Command::JoinRoom { media: Media::Audio, participant, .. } if *participant == user("alice")
        )),
        "{out:?}"
    );
    let via = JoinedVia::Device(did("alice-browser"));
    assert_eq!(
        e.on_joined(p.directory(), &c, user("alice"), via, at(2)),
        Ok(InputOutcome::Applied)
    );
    let out = drain(&mut e);
    assert!(
        story(&out).contains(&"joined alice Audio".to_owned()),
        "{:?}",
        story(&out)
    );
    assert_eq!(
        e.call(&c).unwrap().participants[0].media,
        Some(Media::Audio)
    );
}

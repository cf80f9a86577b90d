//! Presence aggregation: transitions and their events, user-set states, idle-away,
//! registration expiry, call states. Virtual time.

use std::time::Duration;

use confer_signalling::directory::{
    Capabilities, Device, DeviceId, DeviceKind, Directory, DirectoryError, DirectoryLimits,
    PhoneNumber, Reachability, Timestamp, User, UserId,
};
use confer_signalling::presence::{
    CallId, CallKind, Presence, PresenceConfig, PresenceError, PresenceEvent, PresenceState,
    UserState,
};

const T0: u64 = 1_700_000_000_000;
use PresenceState::*;

fn at(secs: u64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn call(s: &str) -> CallId {
    CallId::new(s).unwrap()
}

fn browser(id: &str, user: &str) -> Device {
    Device::new(
        did(id),
        uid(user),
        DeviceKind::Browser,
        Capabilities::ALL,
        Reachability::Session {
            session_id: format!("s-{id}"),
        },
    )
}

fn desk_phone(id: &str, user: &str, expires_at: Timestamp) -> Device {
    Device::new(
        did(id),
        uid(user),
        DeviceKind::DeskPhone,
        Capabilities::AUDIO,
        Reachability::SipRegistration {
            contact: format!("sip:{user}@192.0.2.20"),
            expires_at,
        },
    )
}

/// alice and bob, no devices yet.
fn presence() -> Presence {
    let mut dir = Directory::new(DirectoryLimits::default());
    dir.add_user(User::new(uid("alice"), "Alice")).unwrap();
    dir.add_user(User::new(uid("bob"), "Bob")).unwrap();
    Presence::new(dir, PresenceConfig::default(), at(0))
}

fn events(p: &mut Presence) -> Vec<(String, PresenceState, PresenceState, Timestamp)> {
    std::iter::from_fn(|| p.poll_event())
        .map(|e: PresenceEvent| (e.user.to_string(), e.previous, e.state, e.at))
        .collect()
}

fn ev(
    user: &str,
    from: PresenceState,
    to: PresenceState,
    t: Timestamp,
) -> (String, PresenceState, PresenceState, Timestamp) {
    (user.to_string(), from, to, t)
}

fn add(p: &mut Presence, d: Device, now: Timestamp) {
    p.update_directory(now, |dir| dir.add_device(d)).unwrap();
}

#[test]
fn a_device_coming_online_makes_a_user_available_and_a_second_one_changes_nothing() {
    let mut p = presence();
    assert_eq!(p.state(&uid("alice")), Some(Offline));
    add(&mut p, browser("ab", "alice"), at(10));
    assert_eq!(events(&mut p), [ev("alice", Offline, Available, at(10))]);
    add(&mut p, desk_phone("ad", "alice", at(3600)), at(11));
    p.update_directory(at(12), |d| d.record_activity(&did("ab"), at(12)))
        .unwrap();
    assert_eq!(events(&mut p), []);
    assert_eq!(p.state(&uid("bob")), Some(Offline));
}

#[test]
fn building_from_a_loaded_directory_emits_nothing() {
    let mut dir = Directory::new(DirectoryLimits::default());
    dir.add_user(User::new(uid("alice"), "Alice")).unwrap();
    dir.add_device(browser("ab", "alice")).unwrap();
    let mut p = Presence::new(dir, PresenceConfig::default(), at(0));
    assert_eq!(p.state(&uid("alice")), Some(Available));
    assert_eq!(events(&mut p), []);
}

#[test]
fn do_not_disturb_overrides_call_states_until_cleared() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    events(&mut p);
    let a = uid("alice");
    p.set_user_state(&a, UserState::DoNotDisturb, None, at(1))
        .unwrap();
    p.on_call_started(&a, call("c1"), Some(&did("ab")), CallKind::Call, at(2))
        .unwrap();
    p.set_presenting(&a, &call("c1"), true, at(3)).unwrap();
    assert_eq!(
        events(&mut p),
        [ev("alice", Available, DoNotDisturb, at(1))]
    );
    p.clear_user_state(&a, at(4)).unwrap();
    p.set_presenting(&a, &call("c1"), false, at(5)).unwrap();
    assert_eq!(
        events(&mut p),
        [
            ev("alice", DoNotDisturb, Presenting, at(4)),
            ev("alice", Presenting, InACall, at(5))
        ]
    );
}

#[test]
fn call_states_outrank_a_user_set_busy_or_away() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    let a = uid("alice");
    p.set_user_state(&a, UserState::Away, None, at(1)).unwrap();
    events(&mut p);
    p.on_call_started(&a, call("room-1"), None, CallKind::Conference, at(2))
        .unwrap();
    p.on_call_ended(&a, &call("room-1"), at(3)).unwrap();
    assert_eq!(
        events(&mut p),
        [
            ev("alice", Away, InAConference, at(2)),
            ev("alice", InAConference, Away, at(3))
        ]
    );
}

#[test]
fn a_user_set_state_lapses_at_its_expiry() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    events(&mut p);
    p.set_user_state(&uid("alice"), UserState::Busy, Some(at(300)), at(10))
        .unwrap();
    assert_eq!(p.poll_timeout(), Some(at(300)));
    p.handle_timeout(at(299));
    assert_eq!(events(&mut p), [ev("alice", Available, Busy, at(10))]);
    p.handle_timeout(at(300));
    assert_eq!(events(&mut p), [ev("alice", Busy, Available, at(300))]);
    assert_eq!(p.view(&uid("alice"), at(300)).unwrap().user_set, None);
}

#[test]
fn a_user_goes_away_after_ten_minutes_without_activity_and_comes_back_on_activity() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    p.update_directory(at(100), |d| d.record_activity(&did("ab"), at(100)))
        .unwrap();
    events(&mut p);
    assert_eq!(p.poll_timeout(), Some(at(700)));
    // Spurious and early timeouts change nothing.
    p.handle_timeout(at(650));
    assert_eq!(events(&mut p), []);
    p.handle_timeout(at(700));
    assert_eq!(events(&mut p), [ev("alice", Available, Away, at(700))]);
    p.update_directory(at(900), |d| d.record_activity(&did("ab"), at(900)))
        .unwrap();
    assert_eq!(events(&mut p), [ev("alice", Away, Available, at(900))]);
}

#[test]
fn the_idle_time_is_configurable() {
    let mut dir = Directory::new(DirectoryLimits::default());
    dir.add_user(User::new(uid("alice"), "Alice")).unwrap();
    let config = PresenceConfig {
        idle_timeout: Duration::from_secs(60),
        ..PresenceConfig::default()
    };
    let mut p = Presence::new(dir, config, at(0));
    add(&mut p, browser("ab", "alice"), at(0));
    assert_eq!(p.poll_timeout(), Some(at(60)));
    p.handle_timeout(at(60));
    assert_eq!(p.state(&uid("alice")), Some(Away));
}

#[test]
fn a_user_set_available_is_not_turned_into_away_by_idleness() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    p.set_user_state(&uid("alice"), UserState::Available, None, at(1))
        .unwrap();
    p.handle_timeout(at(3600));
    assert_eq!(p.state(&uid("alice")), Some(Available));
}

#[test]
fn offline_wins_over_a_user_set_state_when_every_device_goes() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    add(&mut p, desk_phone("ad", "alice", at(3600)), at(0));
    let a = uid("alice");
    p.set_user_state(&a, UserState::DoNotDisturb, None, at(1))
        .unwrap();
    events(&mut p);
    // The browser session closes: the desk phone keeps alice present.
    p.update_directory(at(2), |d| {
        d.set_reachability(&did("ab"), Reachability::Unreachable)
    })
    .unwrap();
    assert_eq!(events(&mut p), []);
    p.update_directory(at(3), |d| d.remove_device(&did("ad")).map(drop))
        .unwrap();
    assert_eq!(events(&mut p), [ev("alice", DoNotDisturb, Offline, at(3))]);
    // Back online: the user-set state still holds.
    p.update_directory(at(4), |d| {
        d.set_reachability(
            &did("ab"),
            Reachability::Session {
                session_id: "s2".into(),
            },
        )
    })
    .unwrap();
    assert_eq!(events(&mut p), [ev("alice", Offline, DoNotDisturb, at(4))]);
}

#[test]
fn an_expired_registration_takes_the_user_offline_at_the_expiry() {
    let mut p = presence();
    add(&mut p, desk_phone("bd", "bob", at(120)), at(0));
    events(&mut p);
    assert_eq!(p.poll_timeout(), Some(at(120)));
    p.handle_timeout(at(120));
    assert_eq!(events(&mut p), [ev("bob", Available, Offline, at(120))]);
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn a_user_in_a_conference_reached_by_pstn_is_not_offline() {
    let mut dir = Directory::new(DirectoryLimits::default());
    let mut u = User::new(uid("dave"), "Dave");
    u.phone = Some(PhoneNumber::parse("+447700900004").unwrap());
    dir.add_user(u).unwrap();
    let mut p = Presence::new(dir, PresenceConfig::default(), at(0));
    let d = uid("dave");
    p.on_call_started(&d, call("room"), None, CallKind::Conference, at(5))
        .unwrap();
    p.on_call_ended(&d, &call("room"), at(65)).unwrap();
    // Ending twice is harmless.
    p.on_call_ended(&d, &call("room"), at(66)).unwrap();
    assert_eq!(
        events(&mut p),
        [
            ev("dave", Offline, InAConference, at(5)),
            ev("dave", InAConference, Offline, at(65))
        ]
    );
}

#[test]
fn a_call_escalated_to_a_conference_changes_the_state_in_place() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    events(&mut p);
    let a = uid("alice");
    p.on_call_started(&a, call("c"), Some(&did("ab")), CallKind::Call, at(1))
        .unwrap();
    p.on_call_started(&a, call("c"), Some(&did("ab")), CallKind::Conference, at(2))
        .unwrap();
    assert_eq!(
        events(&mut p),
        [
            ev("alice", Available, InACall, at(1)),
            ev("alice", InACall, InAConference, at(2))
        ]
    );
    assert_eq!(p.view(&a, at(2)).unwrap().calls, 1);
}

#[test]
fn removing_a_user_reports_them_offline_and_forgets_them() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    events(&mut p);
    p.update_directory(at(5), |d| d.remove_user(&uid("alice")).map(drop))
        .unwrap();
    assert_eq!(events(&mut p), [ev("alice", Available, Offline, at(5))]);
    assert_eq!(p.state(&uid("alice")), None);
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn bad_presence_inputs_are_typed_errors() {
    let mut p = presence();
    add(&mut p, browser("bb", "bob"), at(0));
    events(&mut p);
    let (a, m) = (uid("alice"), uid("mallory"));
    assert_eq!(
        p.set_user_state(&m, UserState::Busy, None, at(1)),
        Err(PresenceError::UnknownUser(m.clone()))
    );
    assert_eq!(
        p.on_call_started(&a, call("c"), Some(&did("bb")), CallKind::Call, at(1)),
        Err(PresenceError::NotUsersDevice {
            device: did("bb"),
            user: a.clone()
        })
    );
    assert_eq!(
        p.set_presenting(&a, &call("c"), true, at(1)),
        Err(PresenceError::UnknownCall {
            user: a.clone(),
            call: call("c")
        })
    );
    let b = uid("bob");
    for i in 0..16 {
        p.on_call_started(&b, call(&format!("c{i}")), None, CallKind::Call, at(1))
            .unwrap();
    }
    assert_eq!(
        p.on_call_started(&b, call("c16"), None, CallKind::Call, at(1)),
        Err(PresenceError::TooManyCalls { user: b, max: 16 })
    );
    // A refused directory change through presence changes nothing either.
    let r = p.update_directory(at(2), |d| d.add_device(browser("bb", "alice")));
    assert_eq!(r, Err(DirectoryError::DuplicateDevice(did("bb"))));
    assert_eq!(p.state(&a), Some(Offline));
    assert_eq!(events(&mut p), [ev("bob", Available, InACall, at(1))]);
}

#[test]
fn evaluate_sees_a_lapsed_state_before_the_timeout_runs() {
    let mut p = presence();
    add(&mut p, browser("ab", "alice"), at(0));
    p.set_user_state(&uid("alice"), UserState::DoNotDisturb, Some(at(60)), at(0))
        .unwrap();
    assert_eq!(p.evaluate(&uid("alice"), at(59)), Some(DoNotDisturb));
    assert_eq!(p.evaluate(&uid("alice"), at(61)), Some(Available));
    assert_eq!(p.state(&uid("alice")), Some(DoNotDisturb));
}

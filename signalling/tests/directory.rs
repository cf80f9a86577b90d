//! Directory validation: every refused change is typed and changes nothing.

use confer_signalling::directory::{
    Capabilities, ClientInfo, Device, DeviceId, DeviceKind, Directory, DirectoryError,
    DirectoryLimits, PhoneNumber, Reachability, Timestamp, User, UserId,
};

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
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

fn directory() -> Directory {
    let mut d = Directory::new(DirectoryLimits {
        max_users: 3,
        max_devices_per_user: 2,
        max_groups_per_user: 2,
    });
    d.add_user(User::new(uid("alice"), "Alice")).unwrap();
    d.add_user(User::new(uid("bob"), "Bob")).unwrap();
    d
}

#[test]
fn a_device_for_an_unknown_user_is_refused() {
    let mut d = directory();
    assert_eq!(
        d.add_device(browser("x", "mallory")),
        Err(DirectoryError::UnknownUser(uid("mallory")))
    );
    assert!(d.device(&did("x")).is_none());
}

#[test]
fn device_ids_are_unique_across_users() {
    let mut d = directory();
    d.add_device(browser("x", "alice")).unwrap();
    assert_eq!(
        d.add_device(browser("x", "bob")),
        Err(DirectoryError::DuplicateDevice(did("x")))
    );
    assert_eq!(d.devices_of(&uid("bob")).count(), 0);
    assert_eq!(
        d.add_user(User::new(uid("alice"), "Other")),
        Err(DirectoryError::DuplicateUser(uid("alice")))
    );
    assert_eq!(d.user(&uid("alice")).unwrap().display_name, "Alice");
}

#[test]
fn sizes_are_bounded() {
    let mut d = directory();
    d.add_device(browser("a1", "alice")).unwrap();
    d.add_device(browser("a2", "alice")).unwrap();
    assert_eq!(
        d.add_device(browser("a3", "alice")),
        Err(DirectoryError::TooManyDevices {
            user: uid("alice"),
            max: 2
        })
    );
    d.add_user(User::new(uid("carol"), "Carol")).unwrap();
    assert_eq!(
        d.add_user(User::new(uid("dave"), "Dave")),
        Err(DirectoryError::TooManyUsers { max: 3 })
    );
    let mut u = User::new(uid("bob"), "Bob");
    u.groups = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        d.update_user(u),
        Err(DirectoryError::TooManyGroups { max: 2 })
    );
    assert!(d.user(&uid("bob")).unwrap().groups.is_empty());
    let mut long = User::new(uid("bob"), "B".repeat(300));
    long.groups.clear();
    assert!(matches!(
        d.update_user(long),
        Err(DirectoryError::Invalid(_))
    ));
    let mut ua = browser("b1", "bob");
    ua.client = Some(ClientInfo {
        user_agent: "x\u{7}".into(),
        version: "1.0".into(),
    });
    assert!(matches!(d.add_device(ua), Err(DirectoryError::Invalid(_))));
}

#[test]
fn only_pstn_number_devices_are_reached_by_number() {
    let mut d = directory();
    let number = PhoneNumber::parse("+447700900001").unwrap();
    let wrong = Device::new(
        did("m"),
        uid("alice"),
        DeviceKind::Mobile,
        Capabilities::AUDIO,
        Reachability::PhoneNumber {
            number: number.clone(),
        },
    );
    assert_eq!(
        d.add_device(wrong),
        Err(DirectoryError::KindMismatch {
            kind: DeviceKind::Mobile
        })
    );
    let pstn = Device::new(
        did("p"),
        uid("alice"),
        DeviceKind::PstnNumber,
        Capabilities::AUDIO,
        Reachability::PhoneNumber { number },
    );
    d.add_device(pstn).unwrap();
    assert_eq!(
        d.set_reachability(&did("p"), Reachability::Unreachable),
        Err(DirectoryError::KindMismatch {
            kind: DeviceKind::PstnNumber
        })
    );
    // Reachable by number, never online; it is the fallback number when the user has none.
    assert_eq!(d.online_devices(&uid("alice"), Timestamp(0)).count(), 0);
    assert_eq!(
        d.fallback_number(&uid("alice")).map(PhoneNumber::as_str),
        Some("+447700900001")
    );
}

#[test]
fn a_device_cannot_change_owner() {
    let mut d = directory();
    d.add_device(browser("x", "alice")).unwrap();
    assert_eq!(
        d.update_device(browser("x", "bob")),
        Err(DirectoryError::OwnerChange {
            device: did("x"),
            owner: uid("alice")
        })
    );
}

#[test]
fn removing_a_user_removes_its_devices() {
    let mut d = directory();
    d.add_device(browser("x", "alice")).unwrap();
    let (_, devices) = d.remove_user(&uid("alice")).unwrap();
    assert_eq!(devices.len(), 1);
    assert!(d.device(&did("x")).is_none());
    // The id is free again.
    d.add_device(browser("x", "bob")).unwrap();
    assert_eq!(
        d.remove_device(&did("nope")),
        Err(DirectoryError::UnknownDevice(did("nope")))
    );
}

#[test]
fn activity_only_moves_forward() {
    let mut d = directory();
    d.add_device(browser("x", "alice")).unwrap();
    d.record_activity(&did("x"), Timestamp(500)).unwrap();
    d.record_activity(&did("x"), Timestamp(400)).unwrap();
    assert_eq!(
        d.device(&did("x")).unwrap().last_activity,
        Some(Timestamp(500))
    );
}

#[test]
fn devices_deserialize_from_api_json_with_validation() {
    let json = r#"{"id":"bob-desk","user":"bob","kind":"desk_phone",
        "capabilities":{"audio":true,"dtmf":true},
        "reach":{"type":"sip_registration","contact":"sip:bob@192.0.2.1","expires_at":1000}}"#;
    let dev: Device = serde_json::from_str(json).unwrap();
    assert!(!dev.capabilities.video);
    assert!(dev.is_online(Timestamp(999)));
    let mut d = directory();
    d.add_device(dev).unwrap();
    let bad = json.replace("\"bob-desk\"", "\"bob desk\"");
    assert!(serde_json::from_str::<Device>(&bad).is_err());
}

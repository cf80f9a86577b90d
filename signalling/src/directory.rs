//! Users and their devices: who can be reached, on what, and with which media.
//!
//! The directory is the routing table of escalation and the input of presence. It is a
//! plain in-memory model, sans-IO: the binary loads it from the store, applies the API's
//! changes to it, and persists them; nothing here reads a clock or touches a socket.
//!
//! # Model
//!
//! - A [`User`] has an id, a display name, an optional E.164 phone number (the PSTN
//!   fallback of escalation) and groups (policy targets).
//! - A [`Device`] belongs to one user and has a [`DeviceKind`], [`Capabilities`], a
//!   [`Reachability`] (how confer reaches it), the client's user agent and version, and the
//!   time of its last user activity.
//!
//! # Online, reachable
//!
//! A device is **online** ([`Device::is_online`]) when confer can ring it right now and a
//! person is plausibly behind it:
//!
//! - [`Reachability::Session`]: a connected client session (browser, desktop or mobile app
//!   on the event socket) is online. The binary switches the device to
//!   [`Reachability::Unreachable`] when the session goes.
//! - [`Reachability::SipRegistration`]: a registration on confer's registrar is online until
//!   its expiry, exclusive (`now < expires_at`); an expired binding needs no removal to stop
//!   counting.
//! - [`Reachability::PhoneNumber`]: a PSTN number is always *reachable* (by dialling out,
//!   which costs money and needs the dial-out policy) but **never online**: a phone number
//!   says nothing about whether its owner is at work, so it never makes a user present, and
//!   escalation uses it only as the PSTN fallback, never in the simultaneous ring.
//! - [`Reachability::Unreachable`]: a known device with no way to reach it now.
//!
//! Only [`DeviceKind::PstnNumber`] devices are reached by phone number, and they only by
//! it; other combinations are free (a softphone app may be a SIP registration, a desk
//! phone a client session through a vendor gateway).
//!
//! # Time
//!
//! Time is a [`Timestamp`]: milliseconds since the Unix epoch, from the shell's wall clock.
//! Not an `Instant`, because registration expiries, activity and event times are persisted,
//! archived and shown by the API, and survive a restart. The cores never compare it with
//! a clock of their own and use saturating arithmetic, so a clock stepping back delays a
//! timer but breaks nothing.
//!
//! # Bounds
//!
//! Every string has a byte limit, the directory has [`DirectoryLimits`] (users, devices per
//! user, groups per user), and every change is validated before anything is modified: a
//! call that returns `Err` has changed nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest user, device, conversation or call id, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest display name, in bytes.
pub const MAX_DISPLAY_NAME_BYTES: usize = 256;
/// Longest group name, in bytes.
pub const MAX_GROUP_BYTES: usize = 128;
/// Longest client session id, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 256;
/// Longest SIP contact URI, in bytes.
pub const MAX_CONTACT_BYTES: usize = 1024;
/// Longest client user agent, in bytes.
pub const MAX_USER_AGENT_BYTES: usize = 256;
/// Longest client version, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;

/// A point in time: milliseconds since the Unix epoch, given by the shell.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_ms(d)))
    }

    /// How long after `earlier` this is; zero when it is not after.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serde for a `Duration` as whole milliseconds (config files and the API say `..._ms`).
pub(crate) mod serde_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::duration_ms(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A value that failed validation: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {field}: {problem}")]
pub struct ValidationError {
    /// The field, e.g. `"user id"`.
    pub field: &'static str,
    /// What is wrong, e.g. `"longer than 128 bytes"`.
    pub problem: &'static str,
}

/// Checks free text: at most `max` bytes, no control characters; `non_empty` if required.
/// `s` cut to at most `max` bytes, at a character boundary: how text from outside (a
/// User-Agent) is kept within a limit of the directory.
pub fn clip_to_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(crate) fn check_text(
    field: &'static str,
    s: &str,
    max: usize,
    non_empty: bool,
) -> Result<(), ValidationError> {
    let problem = if non_empty && s.is_empty() {
        "empty"
    } else if s.len() > max {
        "too long"
    } else if s.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(ValidationError { field, problem })
}

/// Checks an identifier: 1 to `max` bytes, no whitespace or control characters.
pub(crate) fn check_id(field: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    check_text(field, s, max, true)?;
    if s.chars().any(char::is_whitespace) {
        return Err(ValidationError {
            field,
            problem: "contains whitespace",
        });
    }
    Ok(())
}

/// Defines a validated string identifier with serde, Display and a quoted Debug.
macro_rules! text_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(
            Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates: 1 to [`MAX_ID_BYTES`](crate::directory::MAX_ID_BYTES) bytes, no
            /// whitespace or control characters.
            pub fn new(
                s: impl Into<String>,
            ) -> Result<$name, $crate::directory::ValidationError> {
                let s = s.into();
                $crate::directory::check_id($field, &s, $crate::directory::MAX_ID_BYTES)?;
                Ok($name(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::directory::ValidationError;
            fn try_from(s: String) -> Result<$name, Self::Error> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}
pub(crate) use text_id;

text_id!(
    /// A user's id, as the IM server names the user (e.g. `alice@example.com`).
    UserId,
    "user id"
);
text_id!(
    /// A device's id, unique in the directory.
    DeviceId,
    "device id"
);

/// A global phone number in E.164 form: `+`, then 3 to 15 digits, the first not `0`.
///
/// `Debug` masks the middle digits (logs never carry whole numbers); the API and the
/// dial-out command use [`PhoneNumber::as_str`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses the strict form `+<digits>`, no separators.
    pub fn parse(s: &str) -> Result<PhoneNumber, ValidationError> {
        let field = "phone number";
        let Some(digits) = s.strip_prefix('+') else {
            return Err(ValidationError {
                field,
                problem: "must start with '+' (E.164)",
            });
        };
        let problem = if !digits.bytes().all(|b| b.is_ascii_digit()) {
            "only digits may follow '+'"
        } else if digits.len() < 3 {
            "too short"
        } else if digits.len() > 15 {
            "longer than E.164 allows (15 digits)"
        } else if digits.starts_with('0') {
            "country codes never start with 0"
        } else {
            return Ok(PhoneNumber(s.to_owned()));
        };
        Err(ValidationError { field, problem })
    }

    /// `+` and the digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<PhoneNumber, ValidationError> {
        PhoneNumber::parse(&s)
    }
}

impl From<PhoneNumber> for String {
    fn from(n: PhoneNumber) -> String {
        n.0
    }
}

impl fmt::Debug for PhoneNumber {
    /// `+44…89`: the country code's first two digits and the last two.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validated as '+' and 3..=15 ASCII digits, so byte slicing is on char boundaries.
        let n = self.0.len();
        write!(f, "PhoneNumber({}…{})", &self.0[..3], &self.0[n - 2..])
    }
}

/// A person known to confer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    /// Shown to the people being rung. At most [`MAX_DISPLAY_NAME_BYTES`].
    pub display_name: String,
    /// The PSTN fallback of escalation, if any.
    #[serde(default)]
    pub phone: Option<PhoneNumber>,
    /// Policy groups; at most [`DirectoryLimits::max_groups_per_user`], each at most
    /// [`MAX_GROUP_BYTES`].
    #[serde(default)]
    pub groups: BTreeSet<String>,
}

impl User {
    /// A user with a display name, no phone number and no groups.
    pub fn new(id: UserId, display_name: impl Into<String>) -> User {
        User {
            id,
            display_name: display_name.into(),
            phone: None,
            groups: BTreeSet::new(),
        }
    }
}

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    DesktopApp,
    Browser,
    Mobile,
    DeskPhone,
    /// A phone number, reached only by dialling out.
    PstnNumber,
}

/// What a device can do. A flag it does not declare is false.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub audio: bool,
    pub video: bool,
    pub screen_share: bool,
    pub dtmf: bool,
}

impl Capabilities {
    /// Audio and DTMF: a desk phone, a phone number, a mobile that declares no video.
    pub const AUDIO: Capabilities = Capabilities {
        audio: true,
        video: false,
        screen_share: false,
        dtmf: true,
    };
    /// Everything: a desktop app or a browser with a camera.
    pub const ALL: Capabilities = Capabilities {
        audio: true,
        video: true,
        screen_share: true,
        dtmf: true,
    };
}

/// How confer reaches a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reachability {
    /// A connected client session (WebSocket) with this id.
    Session { session_id: String },
    /// A binding on confer's SIP registrar, valid while `now < expires_at`.
    SipRegistration {
        contact: String,
        expires_at: Timestamp,
    },
    /// A PSTN number, dialled through the bridge.
    PhoneNumber { number: PhoneNumber },
    /// Known, but no way to reach it now (session closed, registration removed).
    Unreachable,
}

/// The client software on a device, for client policy and support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub user_agent: String,
    pub version: String,
}

/// One endpoint of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub user: UserId,
    pub kind: DeviceKind,
    pub capabilities: Capabilities,
    pub reach: Reachability,
    #[serde(default)]
    pub client: Option<ClientInfo>,
    /// The last user activity the client reported (input, a call), if any.
    #[serde(default)]
    pub last_activity: Option<Timestamp>,
}

impl Device {
    /// A device with no client info and no activity yet.
    pub fn new(
        id: DeviceId,
        user: UserId,
        kind: DeviceKind,
        capabilities: Capabilities,
        reach: Reachability,
    ) -> Device {
        Device {
            id,
            user,
            kind,
            capabilities,
            reach,
            client: None,
            last_activity: None,
        }
    }

    /// Online at `now`: a connected session, or an unexpired registration. Phone numbers
    /// are never online (see the module doc).
    pub fn is_online(&self, now: Timestamp) -> bool {
        match &self.reach {
            Reachability::Session { .. } => true,
            Reachability::SipRegistration { expires_at, .. } => now < *expires_at,
            Reachability::PhoneNumber { .. } | Reachability::Unreachable => false,
        }
    }

    /// The number this device is reached on, for a PSTN-number device.
    pub fn phone_number(&self) -> Option<&PhoneNumber> {
        match &self.reach {
            Reachability::PhoneNumber { number } => Some(number),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), DirectoryError> {
        match &self.reach {
            Reachability::Session { session_id } => {
                check_id("session id", session_id, MAX_SESSION_ID_BYTES)?
            }
            Reachability::SipRegistration { contact, .. } => {
                check_id("contact", contact, MAX_CONTACT_BYTES)?;
                let scheme = |p: &str| {
                    contact.len() > p.len()
                        && contact
                            .get(..p.len())
                            .is_some_and(|s| s.eq_ignore_ascii_case(p))
                };
                if !(scheme("sip:") || scheme("sips:")) {
                    return Err(ValidationError {
                        field: "contact",
                        problem: "not a sip: or sips: URI",
                    }
                    .into());
                }
            }
            Reachability::PhoneNumber { .. } | Reachability::Unreachable => {}
        }
        let by_number = matches!(self.reach, Reachability::PhoneNumber { .. });
        if by_number != (self.kind == DeviceKind::PstnNumber) {
            return Err(DirectoryError::KindMismatch { kind: self.kind });
        }
        if let Some(c) = &self.client {
            check_text("user agent", &c.user_agent, MAX_USER_AGENT_BYTES, false)?;
            check_text("client version", &c.version, MAX_VERSION_BYTES, false)?;
        }
        Ok(())
    }
}

/// Size bounds of a [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectoryLimits {
    /// Default 100 000.
    pub max_users: usize,
    /// Default 16.
    pub max_devices_per_user: usize,
    /// Default 64.
    pub max_groups_per_user: usize,
}

impl Default for DirectoryLimits {
    fn default() -> DirectoryLimits {
        DirectoryLimits {
            max_users: 100_000,
            max_devices_per_user: 16,
            max_groups_per_user: 64,
        }
    }
}

/// Why a directory change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    #[error("user {0} already exists")]
    DuplicateUser(UserId),
    #[error("device {0} already exists")]
    DuplicateDevice(DeviceId),
    #[error("the directory already holds its maximum of {max} users")]
    TooManyUsers { max: usize },
    #[error("user {user} already has its maximum of {max} devices")]
    TooManyDevices { user: UserId, max: usize },
    #[error("more than {max} groups")]
    TooManyGroups { max: usize },
    #[error("device {device} belongs to {owner} and cannot change owner")]
    OwnerChange { device: DeviceId, owner: UserId },
    #[error("a pstn_number device is reached by phone number, and only it ({kind:?})")]
    KindMismatch { kind: DeviceKind },
}

#[derive(Debug, Clone)]
struct Entry {
    user: User,
    devices: BTreeMap<DeviceId, Device>,
}

/// Users and devices, validated and bounded. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    limits: DirectoryLimits,
    users: BTreeMap<UserId, Entry>,
    owners: BTreeMap<DeviceId, UserId>,
    /// Users whose presence inputs changed since presence last looked.
    touched: BTreeSet<UserId>,
}

impl Directory {
    /// An empty directory.
    pub fn new(limits: DirectoryLimits) -> Directory {
        Directory {
            limits,
            ..Directory::default()
        }
    }

    /// The bounds it enforces.
    pub fn limits(&self) -> DirectoryLimits {
        self.limits
    }

    fn validate_user(&self, user: &User) -> Result<(), DirectoryError> {
        check_text(
            "display name",
            &user.display_name,
            MAX_DISPLAY_NAME_BYTES,
            false,
        )?;
        if user.groups.len() > self.limits.max_groups_per_user {
            return Err(DirectoryError::TooManyGroups {
                max: self.limits.max_groups_per_user,
            });
        }
        for g in &user.groups {
            check_id("group", g, MAX_GROUP_BYTES)?;
        }
        Ok(())
    }

    /// Adds a user. Errors: invalid fields, duplicate id, directory full.
    pub fn add_user(&mut self, user: User) -> Result<(), DirectoryError> {
        self.validate_user(&user)?;
        if self.users.contains_key(&user.id) {
            return Err(DirectoryError::DuplicateUser(user.id));
        }
        if self.users.len() >= self.limits.max_users {
            return Err(DirectoryError::TooManyUsers {
                max: self.limits.max_users,
            });
        }
        self.touched.insert(user.id.clone());
        self.users.insert(
            user.id.clone(),
            Entry {
                user,
                devices: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Replaces a user's fields (same id); returns the previous ones.
    pub fn update_user(&mut self, user: User) -> Result<User, DirectoryError> {
        self.validate_user(&user)?;
        let entry = self
            .users
            .get_mut(&user.id)
            .ok_or_else(|| DirectoryError::UnknownUser(user.id.clone()))?;
        self.touched.insert(user.id.clone());
        Ok(std::mem::replace(&mut entry.user, user))
    }

    /// Removes a user and all of its devices; returns them.
    pub fn remove_user(&mut self, id: &UserId) -> Result<(User, Vec<Device>), DirectoryError> {
        let entry = self
            .users
            .remove(id)
            .ok_or_else(|| DirectoryError::UnknownUser(id.clone()))?;
        for d in entry.devices.keys() {
            self.owners.remove(d);
        }
        self.touched.insert(id.clone());
        Ok((entry.user, entry.devices.into_values().collect()))
    }

    /// A user by id.
    pub fn user(&self, id: &UserId) -> Option<&User> {
        self.users.get(id).map(|e| &e.user)
    }

    /// All users, by id.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values().map(|e| &e.user)
    }

    /// How many users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Adds a device to an existing user. Errors: invalid fields, unknown user, duplicate
    /// device id (for any user), the user's device limit.
    pub fn add_device(&mut self, device: Device) -> Result<(), DirectoryError> {
        device.validate()?;
        if self.owners.contains_key(&device.id) {
            return Err(DirectoryError::DuplicateDevice(device.id));
        }
        let max = self.limits.max_devices_per_user;
        let entry = self
            .users
            .get_mut(&device.user)
            .ok_or_else(|| DirectoryError::UnknownUser(device.user.clone()))?;
        if entry.devices.len() >= max {
            return Err(DirectoryError::TooManyDevices {
                user: device.user,
                max,
            });
        }
        self.touched.insert(device.user.clone());
        self.owners.insert(device.id.clone(), device.user.clone());
        entry.devices.insert(device.id.clone(), device);
        Ok(())
    }

    /// Replaces a device's fields (same id, same owner); returns the previous ones.
    pub fn update_device(&mut self, device: Device) -> Result<Device, DirectoryError> {
        device.validate()?;
        let slot = self.device_slot(&device.id)?;
        if slot.user != device.user {
            return Err(DirectoryError::OwnerChange {
                device: device.id,
                owner: slot.user.clone(),
            });
        }
        let previous = std::mem::replace(slot, device);
        self.touched.insert(previous.user.clone());
        Ok(previous)
    }

    /// Removes a device; returns it.
    pub fn remove_device(&mut self, id: &DeviceId) -> Result<Device, DirectoryError> {
        let owner = self
            .owners
            .get(id)
            .ok_or_else(|| DirectoryError::UnknownDevice(id.clone()))?;
        let device = self
            .users
            .get_mut(owner)
            .and_then(|e| e.devices.remove(id))
            .ok_or_else(|| DirectoryError::UnknownDevice(id.clone()))?;
        self.owners.remove(id);
        self.touched.insert(device.user.clone());
        Ok(device)
    }

    /// Changes how a device is reached (a session connected or closed, a registration
    /// refreshed or removed).
    pub fn set_reachability(
        &mut self,
        id: &DeviceId,
        reach: Reachability,
    ) -> Result<(), DirectoryError> {
        let current = self
            .device(id)
            .ok_or_else(|| DirectoryError::UnknownDevice(id.clone()))?;
        let candidate = Device {
            reach,
            ..current.clone()
        };
        candidate.validate()?;
        let user = candidate.user.clone();
        *self.device_slot(id)? = candidate;
        self.touched.insert(user);
        Ok(())
    }

    /// Records user activity on a device at `at`. Activity only moves forward: a late,
    /// older report changes nothing.
    pub fn record_activity(&mut self, id: &DeviceId, at: Timestamp) -> Result<(), DirectoryError> {
        let slot = self.device_slot(id)?;
        if slot.last_activity.is_none_or(|t| t < at) {
            slot.last_activity = Some(at);
            let user = slot.user.clone();
            self.touched.insert(user);
        }
        Ok(())
    }

    /// A device by id.
    pub fn device(&self, id: &DeviceId) -> Option<&Device> {
        let owner = self.owners.get(id)?;
        self.users.get(owner)?.devices.get(id)
    }

    /// A user's devices, by id; empty for an unknown user.
    pub fn devices_of(&self, user: &UserId) -> impl Iterator<Item = &Device> {
        self.users
            .get(user)
            .into_iter()
            .flat_map(|e| e.devices.values())
    }

    /// A user's devices online at `now`.
    pub fn online_devices(&self, user: &UserId, now: Timestamp) -> impl Iterator<Item = &Device> {
        self.devices_of(user).filter(move |d| d.is_online(now))
    }

    /// The number escalation dials when it falls back to the PSTN: the user's own number,
    /// else that of its first PSTN-number device.
    pub fn fallback_number(&self, user: &UserId) -> Option<&PhoneNumber> {
        let entry = self.users.get(user)?;
        entry
            .user
            .phone
            .as_ref()
            .or_else(|| entry.devices.values().find_map(Device::phone_number))
    }

    fn device_slot(&mut self, id: &DeviceId) -> Result<&mut Device, DirectoryError> {
        let owner = self
            .owners
            .get(id)
            .ok_or_else(|| DirectoryError::UnknownDevice(id.clone()))?;
        self.users
            .get_mut(owner)
            .and_then(|e| e.devices.get_mut(id))
            .ok_or_else(|| DirectoryError::UnknownDevice(id.clone()))
    }

    /// Users whose presence inputs changed since the last call; presence drains this.
    pub(crate) fn take_touched(&mut self) -> BTreeSet<UserId> {
        std::mem::take(&mut self.touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn a_long_user_agent_is_clipped_at_a_character_boundary_and_accepted() {
        // 200 two-byte characters: 400 bytes, and byte 256 falls inside none of them.
        let ua = format!("x{}", "é".repeat(200));
        let kept = clip_to_bytes(&ua, MAX_USER_AGENT_BYTES);
        assert_eq!(kept.len(), MAX_USER_AGENT_BYTES - 1);
        assert!(ua.starts_with(kept));
        assert_eq!(clip_to_bytes("Yealink", MAX_USER_AGENT_BYTES), "Yealink");
        let mut d = Device::new(
            DeviceId::new("phone").unwrap(),
            uid("alice"),
            DeviceKind::DeskPhone,
            Capabilities::AUDIO,
            Reachability::Unreachable,
        );
        d.client = Some(ClientInfo {
            user_agent: kept.to_owned(),
            version: String::new(),
        });
        let mut dir = Directory::new(DirectoryLimits::default());
        dir.add_user(User::new(uid("alice"), "Alice")).unwrap();
        dir.add_device(d).unwrap();
    }

    #[test]
    fn phone_numbers_must_be_e164() {
        assert!(PhoneNumber::parse("+442071838750").is_ok());
        for bad in [
            "442071838750",
            "+0441",
            "+44 20",
            "+1234567890123456",
            "+12",
            "+",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phone_number_debug_masks_the_middle_digits() {
        let n = PhoneNumber::parse("+442071838750").unwrap();
        assert_eq!(format!("{n:?}"), "PhoneNumber(+44…50)");
    }

    #[test]
    fn ids_refuse_empty_long_and_whitespace() {
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a b").is_err());
        assert!(UserId::new("x".repeat(MAX_ID_BYTES + 1)).is_err());
        assert!(UserId::new("@alice:example.org").is_ok());
        let parsed: Result<UserId, _> = serde_json::from_str("\"a\\nb\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn a_sip_registration_is_online_until_its_expiry() {
        let d = Device::new(
            DeviceId::new("p").unwrap(),
            uid("u"),
            DeviceKind::DeskPhone,
            Capabilities::AUDIO,
            Reachability::SipRegistration {
                contact: "sip:u@192.0.2.1:5060".into(),
                expires_at: Timestamp(1000),
            },
        );
        assert!(d.is_online(Timestamp(999)));
        assert!(!d.is_online(Timestamp(1000)));
    }

    #[test]
    fn a_contact_must_be_a_sip_uri() {
        let mut dir = Directory::new(DirectoryLimits::default());
        dir.add_user(User::new(uid("u"), "U")).unwrap();
        let mut d = Device::new(
            DeviceId::new("p").unwrap(),
            uid("u"),
            DeviceKind::DeskPhone,
            Capabilities::AUDIO,
            Reachability::SipRegistration {
                contact: "http://x".into(),
                expires_at: Timestamp(1000),
            },
        );
        assert!(matches!(
            dir.add_device(d.clone()),
            Err(DirectoryError::Invalid(_))
        ));
        d.reach = Reachability::SipRegistration {
            contact: "SIPS:u@example.com".into(),
            expires_at: Timestamp(1000),
        };
        assert!(dir.add_device(d).is_ok());
    }
}

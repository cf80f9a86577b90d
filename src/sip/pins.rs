//! The PINs of rooms made through the control API: who may dial into which room.
//!
//! Why here and not in the room: a PIN is a secret of the dial-in path. The API asks for
//! one when it creates a room (`"dial_in": true`), the PIN prompts look the caller's
//! entry up, and deleting the room frees it. PINs come from the operating system's
//! CSPRNG (`rand::rng()`, ChaCha12 seeded and reseeded from it), every digit uniform, and
//! no PIN is given to two live rooms. They are kept in memory only: never logged, and a
//! restart invalidates them with the rooms they open.
//!
//! All PIN numbers share one PIN space (a PIN opens its room whichever PIN number is
//! dialled); the API hands out the first PIN number of the configuration.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::Rng;
use serde::Serialize;

/// How a room is dialled into.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct DialInInfo {
    /// The number to call (E.164 or an extension).
    pub number: String,
    /// The PIN to enter.
    pub pin: String,
}

impl std::fmt::Debug for DialInInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialInInfo")
            .field("number", &self.number)
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// Why a room got no PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// No `[[dial_in]]` number with `pin = true` is configured.
    #[error("no dial-in number asks for PINs (configure a [[dial_in]] number with pin = true)")]
    NoPinNumber,
    /// The PIN space is nearly used up by live rooms.
    #[error("no free PIN of {0} digits: too many rooms with dial-in are live")]
    Exhausted(usize),
}

#[derive(Default)]
struct Table {
    by_room: HashMap<u64, String>,
    by_pin: HashMap<String, u64>,
}

/// The live rooms' PINs (see the module docs).
pub struct Pins {
    number: Option<String>,
    digits: usize,
    table: Mutex<Table>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins")
            .field("number", &self.number)
            .field("digits", &self.digits)
            .finish_non_exhaustive()
    }
}

impl Pins {
    /// PINs of `digits` digits, given out with `number`.
    pub fn new(number: Option<String>, digits: usize) -> Pins {
        Pins {
            number,
            digits,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the maps half-updated: every
        // critical section below only inserts or removes whole entries.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number given out with the PINs, if one is configured.
    pub fn number(&self) -> Option<&str> {
        self.number.as_deref()
    }

    /// Gives `room` a fresh PIN (its old one, if any, is replaced).
    pub fn assign(&self, room: u64) -> Result<DialInInfo, PinError> {
        let number = self.number.clone().ok_or(PinError::NoPinNumber)?;
        let space = 10u64.saturating_pow(self.digits as u32);
        let mut table = self.table();
        // Guessing stays hard only while nearly every PIN opens nothing: at most one in a
        // thousand is live (1,000 rooms with 6 digits; more rooms want longer PINs).
        if (table.by_pin.len() as u64).saturating_mul(1000) >= space {
            return Err(PinError::Exhausted(self.digits));
        }
        let mut rng = rand::rng();
        let pin = loop {
            let pin: String = (0..self.digits)
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            if !table.by_pin.contains_key(&pin) {
                break pin;
            }
        };
        if let Some(old) = table.by_room.insert(room, pin.clone()) {
            table.by_pin.remove(&old);
        }
        table.by_pin.insert(pin.clone(), room);
        Ok(DialInInfo { number, pin })
    }

    /// The room's dial-in, if it has a PIN.
    pub fn of(&self, room: u64) -> Option<DialInInfo> {
        let number = self.number.clone()?;
        let pin = self.table().by_room.get(&room)?.clone();
        Some(DialInInfo { number, pin })
    }

    /// The room the digits `pin` ([`Pin::expose`](confer_pstn_bridge::ivr::Pin::expose)) open.
    pub fn lookup(&self, pin: &str) -> Option<u64> {
        self.table().by_pin.get(pin).copied()
    }

    /// Frees the room's PIN (the room was deleted).
    pub fn release(&self, room: u64) {
        let mut table = self.table();
        if let Some(pin) = table.by_room.remove(&room) {
            table.by_pin.remove(&pin);
        }
    }

    /// Live PINs.
    pub fn len(&self) -> usize {
        self.table().by_pin.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_gets_a_pin_of_the_configured_length_that_opens_it_until_released() {
        let pins = Pins::new(Some("+15550100199".into()), 6);
        let a = pins.assign(7).unwrap();
        assert_eq!(a.number, "+15550100199");
        assert_eq!(a.pin.len(), 6);
        assert!(a.pin.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(pins.lookup(&a.pin), Some(7));
        assert_eq!(pins.of(7), Some(a.clone()));
        pins.release(7);
        assert_eq!(pins.lookup(&a.pin), None);
        assert_eq!(pins.of(7), None);
        assert_eq!(pins.len(), 0);
    }

    #[test]
    fn live_rooms_never_share_a_pin_and_a_full_space_is_refused() {
        // 5 digits: 100,000 PINs, of which at most one in a thousand are handed out.
        let pins = Pins::new(Some("4242".into()), 5);
        let mut seen = std::collections::HashSet::new();
        for room in 0..100 {
            let d = pins.assign(room).unwrap();
            assert!(seen.insert(d.pin), "PIN given twice");
        }
        assert_eq!(pins.assign(100), Err(PinError::Exhausted(5)));
        pins.release(3);
        assert!(pins.assign(100).is_ok());
    }

    #[test]
    fn without_a_pin_number_no_pin_is_given() {
        let pins = Pins::new(None, 6);
        assert_eq!(pins.assign(1), Err(PinError::NoPinNumber));
    }

    #[test]
    fn reassigning_replaces_the_old_pin() {
        let pins = Pins::new(Some("4242".into()), 8);
        let first = pins.assign(1).unwrap();
        let second = pins.assign(1).unwrap();
        assert_eq!(pins.lookup(&first.pin), None);
        assert_eq!(pins.lookup(&second.pin), Some(1));
        assert_eq!(pins.len(), 1);
    }

    #[test]
    fn debug_output_hides_the_pin() {
        let pins = Pins::new(Some("4242".into()), 6);
        let d = pins.assign(1).unwrap();
        assert!(!format!("{d:?}").contains(&d.pin));
    }
}

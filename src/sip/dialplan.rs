//! The dial plan: which dialled number leads into which room, or to the PIN prompts.
//!
//! A number leads straight into a named room (`room = "standup"`), or to the PIN prompts
//! (`pin = true`): the caller enters the PIN of a room made through the control API.
//!
//! Numbers are compared after normalisation with `confer_pstn_bridge::numbers` (not as
//! strings): `+1 555 555 0100`, `15555550100` and `tel:+15555550100` in the configuration
//! or in a Request-URI all mean the same number, and a short extension stays an extension.
//! The national plan comes from `sip_country_code` (NANP for `1`, national prefix `0` and
//! international prefix `00` otherwise). A Request-URI user that is not a number at all
//! (`sip:standup@confer`) matches nothing: rooms are reached by number only.

use std::collections::HashMap;

use confer_pstn_bridge::numbers::{NationalContext, Number, normalize};
use confer_pstn_bridge::sip::Uri;

use crate::config::DialIn;

/// Longest room name accepted in the dial plan.
const MAX_ROOM_NAME: usize = 128;

/// Where a number leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// Into the room of this name.
    Room(&'a str),
    /// To the PIN prompts; the number dialled, normalised.
    Pin(String),
}

/// Normalised number -> room name (`None`: the PIN prompts).
#[derive(Debug, Clone)]
pub struct DialPlan {
    context: NationalContext,
    rooms: HashMap<Number, Option<String>>,
    /// The first PIN number of the configuration: the one rooms made through the API
    /// give out.
    pin_number: Option<Number>,
}

impl DialPlan {
    /// Checks and normalises the configured entries: every number must normalise, none
    /// twice, and every room name must be 1..=128 visible characters.
    pub fn new(entries: &[DialIn], country_code: &str) -> anyhow::Result<DialPlan> {
        let context = super::trunks::national_context(country_code);
        // An invalid country code is reported once, not per number.
        normalize("+15555550100", &context)
            .map_err(|e| anyhow::anyhow!("sip_country_code {country_code:?}: {e}"))?;
        let mut rooms = HashMap::new();
        let mut pin_number = None;
        for e in entries {
            let number = normalize(&e.number, &context)
                .map_err(|err| anyhow::anyhow!("dial_in number {:?}: {err}", e.number))?;
            let name = e.room.trim();
            if e.pin {
                if !name.is_empty() {
                    anyhow::bail!(
                        "dial_in number {:?} has both a room and pin = true: choose one",
                        e.number
                    );
                }
                if rooms.insert(number.clone(), None).is_some() {
                    anyhow::bail!(
                        "dial_in number {:?} is listed twice (as {number})",
                        e.number
                    );
                }
                pin_number.get_or_insert(number);
                continue;
            }
            if name.is_empty()
                || name.chars().count() > MAX_ROOM_NAME
                || name.chars().any(char::is_control)
            {
                anyhow::bail!(
                    "dial_in room {:?} (for {}) must be 1..={MAX_ROOM_NAME} characters without \
                     control characters",
                    e.room,
                    e.number
                );
            }
            if rooms
                .insert(number.clone(), Some(name.to_owned()))
                .is_some()
            {
                anyhow::bail!(
                    "dial_in number {:?} is listed twice (as {number})",
                    e.number
                );
            }
        }
        Ok(DialPlan {
            context,
            rooms,
            pin_number,
        })
    }

    /// The number in a URI: the user part of a SIP URI or the number of a tel URI,
    /// normalised.
    fn number(&self, uri: &Uri) -> Option<Number> {
        let dialled = match uri {
            Uri::Sip(u) => u.user()?.to_str()?.into_owned(),
            Uri::Tel(t) => t.number().to_owned(),
            Uri::Other(_) => return None,
        };
        normalize(&dialled, &self.context).ok()
    }

    /// Where a Request-URI leads; `None` when it is not a configured number.
    pub fn route_for(&self, uri: &Uri) -> Option<Route<'_>> {
        self.route(self.number(uri)?)
    }

    /// Where a number (as a trunk's rules made it) leads.
    pub fn route_for_number(&self, number: &str) -> Option<Route<'_>> {
        self.route(normalize(number, &self.context).ok()?)
    }

    fn route(&self, number: Number) -> Option<Route<'_>> {
        match self.rooms.get(&number)? {
            Some(room) => Some(Route::Room(room)),
            None => Some(Route::Pin(number.to_string())),
        }
    }

    /// The room a Request-URI dials straight into.
    #[cfg(test)]
    pub fn room_for(&self, uri: &Uri) -> Option<&str> {
        match self.route_for(uri)? {
            Route::Room(r) => Some(r),
            Route::Pin(_) => None,
        }
    }

    /// The number that rooms made through the API give out with their PIN.
    pub fn pin_number(&self) -> Option<String> {
        self.pin_number.as_ref().map(ToString::to_string)
    }

    /// Configured numbers.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> DialPlan {
        DialPlan::new(
            &[
                DialIn::room("+1 (555) 555-0100", "standup"),
                DialIn::room("4242", "retro"),
            ],
            "1",
        )
        .unwrap()
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn a_number_matches_in_every_written_form() {
        let p = plan();
        for u in [
            "sip:+15555550100@confer",
            "sip:15555550100@127.0.0.1;user=phone",
            "sip:5555550100@confer",
            "tel:+1-555-555-0100",
        ] {
            assert_eq!(p.room_for(&uri(u)), Some("standup"), "{u}");
        }
        assert_eq!(p.room_for(&uri("sip:4242@h")), Some("retro"));
    }

    #[test]
    fn a_pin_number_routes_to_the_prompts_and_is_the_one_rooms_give_out() {
        let p = DialPlan::new(
            &[
                DialIn::room("4242", "retro"),
                DialIn::pin("+1 555 555 0199"),
                DialIn::pin("4243"),
            ],
            "1",
        )
        .unwrap();
        assert_eq!(
            p.route_for(&uri("sip:15555550199@confer")),
            Some(Route::Pin("+15555550199".into()))
        );
        assert_eq!(
            p.route_for(&uri("sip:4243@h")),
            Some(Route::Pin("4243".into()))
        );
        assert_eq!(p.route_for(&uri("sip:4242@h")), Some(Route::Room("retro")));
        // The first PIN number of the configuration.
        assert_eq!(p.pin_number().as_deref(), Some("+15555550199"));
        let both = DialIn {
            number: "4244".into(),
            room: "x".into(),
            pin: true,
        };
        assert!(DialPlan::new(&[both], "1").is_err());
    }

    #[test]
    fn names_and_unknown_numbers_match_nothing() {
        let p = plan();
        assert_eq!(p.room_for(&uri("sip:standup@confer")), None);
        assert_eq!(p.room_for(&uri("sip:+15555550199@confer")), None);
        assert_eq!(p.room_for(&uri("sip:confer")), None);
    }

    #[test]
    fn a_number_listed_twice_or_a_bad_entry_is_refused() {
        let twice = [
            DialIn::room("+15555550100", "a"),
            DialIn::room("15555550100", "b"),
        ];
        let e = DialPlan::new(&twice, "1").unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let bad = [DialIn::room("call me", "a")];
        assert!(DialPlan::new(&bad, "1").is_err());
        let no_room = [DialIn::room("+15555550100", " ")];
        assert!(DialPlan::new(&no_room, "1").is_err());
        assert!(DialPlan::new(&[], "0x").is_err());
    }
}

//! The dial plan: which dialled number leads into which room.
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

/// Normalised number -> room name.
#[derive(Debug, Clone)]
pub struct DialPlan {
    context: NationalContext,
    rooms: HashMap<Number, String>,
}

/// The plan of a country code (see the module docs).
fn context(country_code: &str) -> NationalContext {
    if country_code == "1" {
        NationalContext::nanp()
    } else {
        NationalContext::with_trunk_prefix_0(country_code)
    }
}

impl DialPlan {
    /// Checks and normalises the configured entries: every number must normalise, none
    /// twice, and every room name must be 1..=128 visible characters.
    pub fn new(entries: &[DialIn], country_code: &str) -> anyhow::Result<DialPlan> {
        let context = context(country_code);
        // An invalid country code is reported once, not per number.
        normalize("+15555550100", &context)
            .map_err(|e| anyhow::anyhow!("sip_country_code {country_code:?}: {e}"))?;
        let mut rooms = HashMap::new();
        for e in entries {
            let number = normalize(&e.number, &context)
                .map_err(|err| anyhow::anyhow!("dial_in number {:?}: {err}", e.number))?;
            let name = e.room.trim();
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
            if rooms.insert(number.clone(), name.to_owned()).is_some() {
                anyhow::bail!(
                    "dial_in number {:?} is listed twice (as {number})",
                    e.number
                );
            }
        }
        Ok(DialPlan { context, rooms })
    }

    /// The room a Request-URI dials: the user part of a SIP URI or the number of a tel
    /// URI, normalised; `None` when it is not a configured number.
    pub fn room_for(&self, uri: &Uri) -> Option<&str> {
        let dialled = match uri {
            Uri::Sip(u) => u.user()?.to_str()?.into_owned(),
            Uri::Tel(t) => t.number().to_owned(),
            Uri::Other(_) => return None,
        };
        let number = normalize(&dialled, &self.context).ok()?;
        self.rooms.get(&number).map(String::as_str)
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
                DialIn {
                    number: "+1 (555) 555-0100".into(),
                    room: "standup".into(),
                },
                DialIn {
                    number: "4242".into(),
                    room: "retro".into(),
                },
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
    fn names_and_unknown_numbers_match_nothing() {
        let p = plan();
        assert_eq!(p.room_for(&uri("sip:standup@confer")), None);
        assert_eq!(p.room_for(&uri("sip:+15555550199@confer")), None);
        assert_eq!(p.room_for(&uri("sip:confer")), None);
    }

    #[test]
    fn a_number_listed_twice_or_a_bad_entry_is_refused() {
        let twice = [
            DialIn {
                number: "+15555550100".into(),
                room: "a".into(),
            },
            DialIn {
                number: "15555550100".into(),
                room: "b".into(),
            },
        ];
        let e = DialPlan::new(&twice, "1").unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let bad = [DialIn {
            number: "call me".into(),
            room: "a".into(),
        }];
        assert!(DialPlan::new(&bad, "1").is_err());
        let no_room = [DialIn {
            number: "+15555550100".into(),
            room: " ".into(),
        }];
        assert!(DialPlan::new(&no_room, "1").is_err());
        assert!(DialPlan::new(&[], "0x").is_err());
    }
}

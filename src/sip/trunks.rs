//! Trunks and the dial-out policy: where a call confer places goes, and whether it may.
//!
//! Why a separate module: the control API asks "dial this number into this room"; what
//! that means on the wire (which trunk, which dial string, which From, which credentials)
//! is configuration, checked once at start ([`Trunks::new`]: addresses resolved, rewrite
//! rules and the policy compiled), then applied per call ([`Trunks::plan`]).
//!
//! - A number is normalised (`sip_country_code`), decided by the dial-out policy
//!   ([`DialOutPolicy`]: the home country allowed, other countries and premium-rate
//!   prefixes denied unless `dial_out_allow` says otherwise, `dial_out_deny` on top,
//!   emergency numbers always refused), rewritten for the trunk (`to_trunk` rules), and
//!   sent as `sip:<dial string>@<trunk domain>` to the trunk's address.
//! - A SIP URI is sent as it is, through the trunk (its outbound proxy); when its user
//!   part is a phone number, the policy decides on that number too, so a URI cannot
//!   smuggle a premium-rate number past it.
//! - Only the control API places calls: no inbound call is ever forwarded to a trunk.

use std::net::{SocketAddr, ToSocketAddrs};

use confer_pstn_bridge::digest::Credentials;
use confer_pstn_bridge::numbers::{
    DialOutConfig, DialOutPolicy, NationalContext, RefusalReason, RewriteRule, TrunkNumbering,
    TrunkRewriter,
};
use confer_pstn_bridge::sip::Uri;
use confer_pstn_bridge::sip::transaction::Peer;
use serde::{Deserialize, Serialize};

use super::core::DialRequest;

/// One trunk as configured (`[[trunks]]`). `Debug` leaves the passwords out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Its name in the API (`"trunk": "carrier"`).
    pub name: String,
    /// `host:port` of the trunk's SIP server (resolved at start).
    pub address: String,
    /// The host written in URIs (Request-URI, To, From); default: the address's host.
    #[serde(default)]
    pub domain: Option<String>,
    /// Digest credentials for the trunk's challenges.
    #[serde(default)]
    pub username: Option<String>,
    /// See `username`.
    #[serde(default)]
    pub password: Option<String>,
    /// The From user of our calls (default `confer`).
    #[serde(default)]
    pub caller_id: Option<String>,
    /// Rewrites of E.164 numbers into the trunk's dial strings, first match wins.
    #[serde(default)]
    pub to_trunk: Vec<RewriteConfig>,
    /// Keep a registration at the trunk (REGISTER `sip:<domain>` for
    /// `sip:<username>@<domain>`, refreshed before it lapses, backoff on failure).
    #[serde(default)]
    pub register: bool,
    /// The registration's requested lifetime, seconds (default 3600).
    #[serde(default)]
    pub register_expires: Option<u32>,
    /// Source addresses whose calls come from this trunk (default: the address's IP).
    #[serde(default)]
    pub inbound_from: Vec<std::net::IpAddr>,
    /// Credentials the trunk answers our digest challenge with, for calls from addresses
    /// not in `inbound_from`.
    #[serde(default)]
    pub inbound_username: Option<String>,
    /// See `inbound_username`.
    #[serde(default)]
    pub inbound_password: Option<String>,
    /// Rewrites of the numbers the trunk sends (calling and called) before they are
    /// normalised, first match wins.
    #[serde(default)]
    pub from_trunk: Vec<RewriteConfig>,
}

/// A registration to keep (a trunk with `register = true`).
#[derive(Debug, Clone)]
pub struct TrunkRegistration {
    /// The trunk's name.
    pub trunk: String,
    /// `sip:<domain>`.
    pub registrar: Uri,
    /// `sip:<username or caller_id>@<domain>`.
    pub aor: Uri,
    /// Our Contact's user part.
    pub contact_user: String,
    /// Where the REGISTERs go.
    pub destination: Peer,
    /// The trunk's credentials.
    pub credentials: Option<Credentials>,
    /// Requested lifetime.
    pub expires: std::time::Duration,
}

impl std::fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("domain", &self.domain)
            .field("username", &self.username)
            .field("caller_id", &self.caller_id)
            .field("register", &self.register)
            .field("inbound_from", &self.inbound_from)
            .field("inbound_username", &self.inbound_username)
            .finish_non_exhaustive()
    }
}

/// A rewrite rule (see `confer_pstn_bridge::numbers::RewriteRule`): a number matching
/// `pattern` loses its first `strip` characters and gets `prepend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Prefix pattern (`+1`, `+44`, `X` any digit, `$` the end).
    pub pattern: String,
    /// Characters removed from the front.
    #[serde(default)]
    pub strip: usize,
    /// Put in front after stripping.
    #[serde(default)]
    pub prepend: String,
}

/// Why a call is not placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No trunk is configured.
    #[error("no trunk is configured ([[trunks]])")]
    NoTrunks,
    /// Several trunks and none named.
    #[error("several trunks are configured: name one (\"trunk\")")]
    TrunkNeeded,
    /// No trunk of this name.
    #[error("no trunk named {0:?}")]
    UnknownTrunk(String),
    /// The destination is neither a number nor a SIP URI.
    #[error("{0}")]
    BadDestination(String),
    /// The dial-out policy refuses (the message names the rule, not the number).
    #[error("{0}")]
    Refused(String),
}

struct Trunk {
    config: TrunkConfig,
    peer: Peer,
    domain: String,
    rewriter: TrunkRewriter,
    /// Where its calls come from.
    inbound_from: Vec<std::net::IpAddr>,
}

/// What a trunk that authenticates its calls with digest uses.
#[derive(Clone, PartialEq, Eq)]
pub struct InboundCredentials {
    /// The trunk.
    pub trunk: String,
    /// Its username.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for InboundCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundCredentials")
            .field("trunk", &self.trunk)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The configured trunks and policy (see the module docs).
pub struct Trunks {
    trunks: Vec<Trunk>,
    context: NationalContext,
    policy: DialOutPolicy,
}

impl std::fmt::Debug for Trunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trunks")
            .field(
                "names",
                &self
                    .trunks
                    .iter()
                    .map(|t| &t.config.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Digits with the separators and signs people dial (`+`, `*`, `#`, `-`, `.`, `(`, `)`,
/// spaces), at least one digit.
fn is_dial_string(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b"+*#-.() ".contains(&b))
}

/// The national plan of a country code (as the dial plan reads it).
pub fn national_context(country_code: &str) -> NationalContext {
    if country_code == "1" {
        NationalContext::nanp()
    } else {
        NationalContext::with_trunk_prefix_0(country_code)
    }
}

impl Trunks {
    /// Checks and compiles the configuration (addresses resolved now).
    pub fn new(
        trunks: &[TrunkConfig],
        country_code: &str,
        allow: &[String],
        deny: &[String],
    ) -> anyhow::Result<Trunks> {
        let context = national_context(country_code);
        let mut policy = DialOutConfig::new(country_code);
        policy.allow = allow.to_vec();
        policy.deny = deny.to_vec();
        let policy = DialOutPolicy::new(&policy)
            .map_err(|e| anyhow::anyhow!("dial_out_allow / dial_out_deny: {e}"))?;
        let mut out: Vec<Trunk> = Vec::new();
        for t in trunks {
            if t.name.trim().is_empty() || out.iter().any(|o| o.config.name == t.name) {
                anyhow::bail!("trunk names must be unique and not empty: {:?}", t.name);
            }
            let addr: SocketAddr = t
                .address
                .to_socket_addrs()
                .map_err(|e| anyhow::anyhow!("trunk {:?} address {:?}: {e}", t.name, t.address))?
                .next()
                .ok_or_else(|| {
                    anyhow::anyhow!("trunk {:?}: {:?} resolves to nothing", t.name, t.address)
                })?;
            let domain = t.domain.clone().unwrap_or_else(|| {
                t.address
                    .rsplit_once(':')
                    .map_or(t.address.as_str(), |(h, _)| h)
                    .to_owned()
            });
            if t.username.is_some() != t.password.is_some() {
                anyhow::bail!("trunk {:?}: username and password go together", t.name);
            }
            if t.register_expires == Some(0) {
                anyhow::bail!("trunk {:?}: register_expires must be at least 1 s", t.name);
            }
            if t.inbound_username.is_some() != t.inbound_password.is_some() {
                anyhow::bail!(
                    "trunk {:?}: inbound_username and inbound_password go together",
                    t.name
                );
            }
            let rules = |list: &[RewriteConfig]| -> Vec<RewriteRule> {
                list.iter()
                    .map(|r| RewriteRule {
                        pattern: r.pattern.clone(),
                        strip: r.strip,
                        prepend: r.prepend.clone(),
                    })
                    .collect()
            };
            let numbering = TrunkNumbering {
                to_trunk: rules(&t.to_trunk),
                from_trunk: rules(&t.from_trunk),
                context: None,
            };
            let rewriter = TrunkRewriter::new(&numbering, &context)
                .map_err(|e| anyhow::anyhow!("trunk {:?} to_trunk: {e}", t.name))?;
            // The URIs must be writable: checked with a sample.
            format!("sip:confer@{domain}")
                .parse::<Uri>()
                .map_err(|e| anyhow::anyhow!("trunk {:?} domain {domain:?}: {e}", t.name))?;
            let inbound_from = if t.inbound_from.is_empty() {
                vec![addr.ip()]
            } else {
                t.inbound_from.clone()
            };
            out.push(Trunk {
                config: t.clone(),
                peer: Peer::udp(addr),
                domain,
                rewriter,
                inbound_from,
            });
        }
        Ok(Trunks {
            trunks: out,
            context,
            policy,
        })
    }

    /// The trunks' names.
    pub fn names(&self) -> Vec<String> {
        self.trunks.iter().map(|t| t.config.name.clone()).collect()
    }

    /// The trunk whose calls come from `ip`, if any.
    pub fn inbound_by_address(&self, ip: std::net::IpAddr) -> Option<&str> {
        self.trunks
            .iter()
            .find(|t| t.inbound_from.contains(&ip))
            .map(|t| t.config.name.as_str())
    }

    /// Every trunk's inbound addresses.
    pub fn inbound_addresses(&self) -> Vec<std::net::IpAddr> {
        self.trunks
            .iter()
            .flat_map(|t| t.inbound_from.iter().copied())
            .collect()
    }

    /// The trunks that authenticate their calls with digest.
    pub fn inbound_credentials(&self) -> Vec<InboundCredentials> {
        self.trunks
            .iter()
            .filter_map(|t| {
                let c = &t.config;
                Some(InboundCredentials {
                    trunk: c.name.clone(),
                    username: c.inbound_username.clone()?,
                    password: c.inbound_password.clone()?,
                })
            })
            .collect()
    }

    /// A number `trunk` sent, rewritten by its `from_trunk` rules and normalised; `None`
    /// when it is not a number.
    pub fn number_from(&self, trunk: &str, raw: &str) -> Option<String> {
        let t = self.trunks.iter().find(|t| t.config.name == trunk)?;
        t.rewriter
            .from_trunk(raw)
            .ok()
            .map(|n| n.number.to_string())
    }

    /// The registrations to keep.
    pub fn registrations(&self) -> anyhow::Result<Vec<TrunkRegistration>> {
        self.trunks
            .iter()
            .filter(|t| t.config.register)
            .map(|t| {
                let c = &t.config;
                let user = c
                    .username
                    .clone()
                    .or_else(|| c.caller_id.clone())
                    .unwrap_or_else(|| "confer".to_owned());
                let uri = |s: String| {
                    s.parse::<Uri>()
                        .map_err(|e| anyhow::anyhow!("trunk {:?} registration: {s}: {e}", c.name))
                };
                Ok(TrunkRegistration {
                    trunk: c.name.clone(),
                    registrar: uri(format!("sip:{}", t.domain))?,
                    aor: uri(format!("sip:{user}@{}", t.domain))?,
                    contact_user: user,
                    destination: t.peer.clone(),
                    credentials: c
                        .username
                        .clone()
                        .zip(c.password.clone())
                        .map(|(username, password)| Credentials { username, password }),
                    expires: std::time::Duration::from_secs(u64::from(
                        c.register_expires.unwrap_or(3600),
                    )),
                })
            })
            .collect()
    }

    fn trunk(&self, name: Option<&str>) -> Result<&Trunk, PlanError> {
        match (name, self.trunks.as_slice()) {
            (_, []) => Err(PlanError::NoTrunks),
            (None, [only]) => Ok(only),
            (None, _) => Err(PlanError::TrunkNeeded),
            (Some(n), all) => all
                .iter()
                .find(|t| t.config.name == n)
                .ok_or_else(|| PlanError::UnknownTrunk(n.to_owned())),
        }
    }

    /// The call that dials `to` (a number or a SIP URI) into `room` through `trunk`.
    pub fn plan(&self, room: u64, to: &str, trunk: Option<&str>) -> Result<DialRequest, PlanError> {
        let t = self.trunk(trunk)?;
        let to = to.trim();
        let uri: Uri = if to.starts_with("sip:") || to.starts_with("sips:") {
            let uri: Uri = to
                .parse()
                .map_err(|e| PlanError::BadDestination(format!("not a SIP URI: {e}")))?;
            let user = match &uri {
                Uri::Sip(u) => u.user().and_then(|u| u.to_str()).map(|u| u.into_owned()),
                _ => None,
            };
            // A dial string in the user part is decided like a dialled number (emergency,
            // premium, other countries); only a PBX extension, which no E.164 rule
            // concerns, passes as it is.
            if let Some(user) = user.filter(|u| is_dial_string(u))
                && let Err(r) = self.policy.decide_input(&user, &self.context)
                && r.reason != RefusalReason::NotE164
            {
                return Err(PlanError::Refused(r.to_string()));
            }
            uri
        } else {
            let authorized = self
                .policy
                .decide_input(to, &self.context)
                .map_err(|r| PlanError::Refused(r.to_string()))?;
            let dial = t
                .rewriter
                .to_trunk(authorized.number())
                .map_err(|e| PlanError::BadDestination(e.to_string()))?;
            format!("sip:{}@{};user=phone", dial.number, t.domain)
                .parse()
                .map_err(|e| PlanError::BadDestination(format!("{e}")))?
        };
        let caller = t.config.caller_id.as_deref().unwrap_or("confer");
        let from = format!("sip:{caller}@{}", t.domain)
            .parse()
            .map_err(|e| PlanError::BadDestination(format!("caller_id: {e}")))?;
        let credentials = match (&t.config.username, &t.config.password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => None,
        };
        Ok(DialRequest {
            credentials,
            ..DialRequest::new(room, uri, from, t.peer.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            address: "127.0.0.1:5099".into(),
            domain: Some("carrier.example".into()),
            username: Some("acct".into()),
            password: Some("secret".into()),
            caller_id: Some("+15550100100".into()),
            to_trunk: vec![RewriteConfig {
                pattern: "+1".into(),
                strip: 2,
                prepend: String::new(),
            }],
            register: false,
            register_expires: None,
            inbound_from: Vec::new(),
            inbound_username: None,
            inbound_password: None,
            from_trunk: vec![RewriteConfig {
                pattern: "011".into(),
                strip: 3,
                prepend: "+".into(),
            }],
        }
    }

    fn trunks(list: &[TrunkConfig]) -> Trunks {
        Trunks::new(list, "1", &[], &[]).unwrap()
    }

    #[test]
    fn a_national_number_is_normalised_rewritten_and_sent_to_the_trunk() {
        let t = trunks(&[trunk("carrier")]);
        let r = t.plan(7, "(415) 555-0123", None).unwrap();
        assert_eq!(r.room, 7);
        assert_eq!(
            r.uri.to_string(),
            "sip:4155550123@carrier.example;user=phone"
        );
        assert_eq!(r.from.to_string(), "sip:+15550100100@carrier.example");
        assert_eq!(r.destination, Peer::udp("127.0.0.1:5099".parse().unwrap()));
        assert_eq!(r.credentials.map(|c| c.username), Some("acct".to_owned()));
    }

    #[test]
    fn the_policy_refuses_international_premium_and_emergency_numbers_by_default() {
        let t = trunks(&[trunk("carrier")]);
        for to in ["+442071234567", "+19005550123", "911"] {
            assert!(
                matches!(t.plan(1, to, None), Err(PlanError::Refused(_))),
                "{to}"
            );
        }
        // Also inside a SIP URI, emergency numbers and unreadable numbers included; a PBX
        // extension passes.
        for to in [
            "sip:+19005550123@carrier.example",
            "sip:911@carrier.example",
            "sip:112@carrier.example",
            "sip:+1911@carrier.example",
        ] {
            assert!(
                matches!(t.plan(1, to, None), Err(PlanError::Refused(_))),
                "{to}"
            );
        }
        assert!(t.plan(1, "sip:4242@pbx.example", None).is_ok());
        // An allow rule opens a country.
        let open = Trunks::new(&[trunk("carrier")], "1", &["+44".into()], &[]).unwrap();
        assert!(open.plan(1, "+442071234567", None).is_ok());
        // A deny rule closes part of the home country.
        let closed = Trunks::new(&[trunk("carrier")], "1", &[], &["+1415".into()]).unwrap();
        assert!(matches!(
            closed.plan(1, "+14155550123", None),
            Err(PlanError::Refused(_))
        ));
    }

    #[test]
    fn a_sip_uri_goes_through_the_trunk_unchanged() {
        let t = trunks(&[trunk("carrier")]);
        let r = t.plan(1, "sip:alice@pbx.example", None).unwrap();
        assert_eq!(r.uri.to_string(), "sip:alice@pbx.example");
        assert_eq!(r.destination, Peer::udp("127.0.0.1:5099".parse().unwrap()));
    }

    #[test]
    fn trunks_are_chosen_by_name_and_bad_choices_say_why() {
        assert_eq!(
            trunks(&[]).plan(1, "+14155550123", None).unwrap_err(),
            PlanError::NoTrunks
        );
        let two = trunks(&[trunk("a"), trunk("b")]);
        assert_eq!(
            two.plan(1, "+14155550123", None).unwrap_err(),
            PlanError::TrunkNeeded
        );
        assert!(two.plan(1, "+14155550123", Some("b")).is_ok());
        assert_eq!(
            two.plan(1, "+14155550123", Some("c")).unwrap_err(),
            PlanError::UnknownTrunk("c".into())
        );
        assert!(matches!(
            two.plan(1, "call me", Some("a")),
            Err(PlanError::Refused(_) | PlanError::BadDestination(_))
        ));
    }

    #[test]
    fn calls_are_recognised_by_source_address_and_their_numbers_read_by_the_trunks_rules() {
        let mut other = trunk("pbx");
        other.address = "127.0.0.2:5060".into();
        other.inbound_from = vec!["192.0.2.7".parse().unwrap()];
        other.inbound_username = Some("pbx-in".into());
        other.inbound_password = Some("pw".into());
        let t = trunks(&[trunk("carrier"), other]);
        assert_eq!(
            t.inbound_by_address("127.0.0.1".parse().unwrap()),
            Some("carrier")
        );
        assert_eq!(
            t.inbound_by_address("192.0.2.7".parse().unwrap()),
            Some("pbx")
        );
        // The configured list replaces the default (its own address).
        assert_eq!(t.inbound_by_address("127.0.0.2".parse().unwrap()), None);
        let creds = t.inbound_credentials();
        assert_eq!(creds.len(), 1);
        assert_eq!(
            (creds[0].trunk.as_str(), creds[0].username.as_str()),
            ("pbx", "pbx-in")
        );
        assert!(!format!("{creds:?}").contains("pw"));
        // 011 (the NANP international prefix as a carrier sends it) becomes +.
        assert_eq!(
            t.number_from("carrier", "011442071234567").as_deref(),
            Some("+442071234567")
        );
        assert_eq!(
            t.number_from("carrier", "4155550123").as_deref(),
            Some("+14155550123")
        );
        assert_eq!(t.number_from("carrier", "anonymous"), None);
    }

    #[test]
    fn a_bad_trunk_configuration_is_refused_at_start() {
        let mut dup = trunk("a");
        assert!(Trunks::new(&[dup.clone(), dup.clone()], "1", &[], &[]).is_err());
        dup.password = None;
        assert!(Trunks::new(&[dup], "1", &[], &[]).is_err());
        let mut bad = trunk("x");
        bad.address = "nowhere".into();
        assert!(Trunks::new(&[bad], "1", &[], &[]).is_err());
        let mut rule = trunk("y");
        rule.to_trunk[0].pattern = "+1?".into();
        assert!(Trunks::new(&[rule], "1", &[], &[]).is_err());
    }
}

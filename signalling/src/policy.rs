//! Admin policy: who may escalate to what, which clients may connect, which activities are
//! blocked, and rate limits.
//!
//! # Why
//!
//! An enterprise decides that contractors get voice but not video, that a client older than
//! 1.9 may not connect, that nobody dials premium-rate numbers, and that a compromised
//! account cannot place a thousand calls a minute (toll fraud). Each decision is also a
//! compliance fact: the archive records what was refused and why. So every check returns
//! `Ok` or a [`Refusal`] with a machine-readable [`RefusalCode`], a human reason and the
//! path of the rule that decided (`groups.contractors.escalate`, `clients.rules[2]`).
//!
//! # Design
//!
//! Policies are data: a [`PolicyConfig`] (serde, from the TOML config or the admin API) is
//! validated into a [`Policy`] by [`Policy::new`], which reports every problem at once as
//! typed [`PolicyError`]s with the path of the offending entry: bad version strings, empty
//! or malformed entries, unknown groups, duplicates, and conflicts (a client rule that an
//! earlier rule shadows, a blocked dial prefix that hides an allowed one, video allowed for
//! escalation but blocked as an activity). Only a valid policy exists as a `Policy`, and
//! its checks are pure functions of their arguments.
//!
//! - **Groups.** Every user belongs to one group: `members` maps user ids to groups, and
//!   anyone not listed is in `default_group`. A group lists the modalities it may escalate
//!   to ([`Modality`]), its blocked activities ([`Activity`]) and its dial-out prefixes.
//! - **Clients.** [`Policy::check_client`] reads the `User-Agent` as RFC 9110 product
//!   tokens (`ConferDesktop/1.12.3 (Windows)`; also `baresip v3.10.0`), and walks the rules
//!   in order: a rule matches when one product's name starts with the rule's `product`
//!   (ASCII case-insensitive) and its version is in `[min_version, below_version)`. The
//!   first matching rule's action (allow, allow with an upgrade notice, block) applies;
//!   none matching, the default action. Versions compare numerically component by
//!   component, missing components are zero: `1.10 > 1.9`, `1.9 == 1.9.0`. A client
//!   version's pre-release suffix (`1.12.0-beta`) is ignored.
//! - **Dial-out.** Numbers are compared as given, after removing visual separators
//!   (spaces, `-`, `.`, `(`, `)`): the policy does not know the caller's country, so the
//!   caller normalises to E.164 first. A blocked prefix refuses; a non-empty `only_prefixes`
//!   refuses every number outside it (the safe setting against toll fraud, as it also
//!   refuses numbers in another form). Success is a [`DialOutPermit`], which only this
//!   check makes.
//! - **Rate limits.** [`RateLimiter`] is a token bucket per key (a user, an IM server),
//!   kept as one timestamp per key (GCRA: the bucket is full again once that time has
//!   passed). Memory is bounded: when full, it first drops keys whose bucket has refilled
//!   (losing nothing), then the eighth of keys nearest to full. Time is an `Instant`
//!   argument.
//!
//! # Defaults
//!
//! [`PolicyConfig::default`] allows everything, so a fresh install works and restricting
//! is opt-in: one group `default` that may escalate to voice, video and dial-in, blocks no
//! activity and no prefix; every client admitted; rate limits of 30 requests a minute with
//! bursts of 10 per user and 1200 a minute (20/s) with bursts of 100 per IM server, for at
//! most 100 000 tracked keys each. Admin tokens are neither users nor IM servers: the lead
//! calls the per-user and per-IM-server limits only for those callers.
//!
//! Not here: per-group rate limits, client rules per group, several groups per user.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The group of users not listed in `members`, in the default policy.
pub const DEFAULT_GROUP: &str = "default";
/// Most client rules in a policy.
pub const MAX_CLIENT_RULES: usize = 256;
/// Most groups in a policy.
pub const MAX_GROUPS: usize = 1024;
/// Most explicit user-to-group assignments in a policy.
pub const MAX_MEMBERS: usize = 1_000_000;
/// Most prefixes in one dial-out list.
pub const MAX_PREFIXES: usize = 1024;
/// Longest notice or block message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 512;
/// Bytes of a `User-Agent` read; the rest is ignored.
pub const MAX_USER_AGENT_LEN: usize = 1024;
/// Product tokens of a `User-Agent` considered.
pub const MAX_PRODUCTS: usize = 32;

const MAX_NAME_LEN: usize = 256;
const MAX_PRODUCT_LEN: usize = 64;
const MAX_VERSION_PARTS: usize = 8;
const MAX_VERSION_LEN: usize = 64;
const MAX_NUMBER_DIGITS: usize = 32;

/// What a call is: what the IM server asks an escalation for, and what the escalation
/// policy allows per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Voice,
    Video,
    /// Nobody is rung; everyone gets the dial-in number and PIN.
    DialIn,
}

impl Modality {
    pub const ALL: [Modality; 3] = [Modality::Voice, Modality::Video, Modality::DialIn];

    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Voice => "voice",
            Modality::Video => "video",
            Modality::DialIn => "dial_in",
        }
    }
}

/// Something a participant may be blocked from doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    FileTransfer,
    Video,
    ScreenShare,
    Recording,
    DialOut,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::FileTransfer => "file_transfer",
            Activity::Video => "video",
            Activity::ScreenShare => "screen_share",
            Activity::Recording => "recording",
            Activity::DialOut => "dial_out",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configuration (serde)
// ---------------------------------------------------------------------------------------

/// A policy as data: what the config file and the admin API carry. Validate it with
/// [`Policy::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The group of users not listed in `members`.
    pub default_group: String,
    pub groups: BTreeMap<String, GroupConfig>,
    /// User id -> group name.
    pub members: BTreeMap<String, String>,
    pub clients: ClientsConfig,
    pub rate_limits: RateLimitsConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default_group: DEFAULT_GROUP.to_owned(),
            groups: BTreeMap::from([(DEFAULT_GROUP.to_owned(), GroupConfig::default())]),
            members: BTreeMap::new(),
            clients: ClientsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
        }
    }
}

/// What the members of one group may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// Modalities the group may escalate to. Default: all.
    pub escalate: BTreeSet<Modality>,
    /// Activities refused to the group. Default: none.
    pub blocked: BTreeSet<Activity>,
    pub dial_out: DialOutConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            escalate: Modality::ALL.into_iter().collect(),
            blocked: BTreeSet::new(),
            dial_out: DialOutConfig::default(),
        }
    }
}

/// Dial-out number rules of a group. Prefixes are digits with an optional leading `+`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialOutConfig {
    /// When not empty, only numbers starting with one of these may be dialled.
    pub only_prefixes: Vec<String>,
    /// Numbers starting with one of these are refused (checked first).
    pub blocked_prefixes: Vec<String>,
}

/// Which clients may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// Checked in order; the first match decides.
    pub rules: Vec<ClientRuleConfig>,
    /// The action when no rule matches. Default: allow.
    pub default: ClientAction,
    /// The notice or block message of the default action.
    pub default_message: Option<String>,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: ClientAction::Allow,
            default_message: None,
        }
    }
}

/// One client rule: a product name prefix and an optional version range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRuleConfig {
    /// Matches user-agent products whose name starts with this (ASCII case-insensitive).
    pub product: String,
    /// Lowest matching version, inclusive (`"1.9"`).
    #[serde(default)]
    pub min_version: Option<String>,
    /// First version that no longer matches, exclusive (`"1.12"`).
    #[serde(default)]
    pub below_version: Option<String>,
    pub action: ClientAction,
    /// The upgrade notice or block reason shown to the user.
    #[serde(default)]
    pub message: Option<String>,
}

/// What happens to a client that a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAction {
    Allow,
    /// Admitted, with a notice asking the user to upgrade.
    UpgradeNotice,
    Block,
}

/// Rate limits; `None` switches one off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Per user id. Default: 30 a minute, bursts of 10.
    pub per_user: Option<RateLimit>,
    /// Per IM server id. Default: 1200 a minute, bursts of 100.
    pub per_im_server: Option<RateLimit>,
    /// Most keys each limiter remembers. Default 100 000.
    pub max_tracked: usize,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            per_user: Some(RateLimit {
                burst: 10,
                per_minute: 30,
            }),
            per_im_server: Some(RateLimit {
                burst: 100,
                per_minute: 1200,
            }),
            max_tracked: 100_000,
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// 1 to 1 000 000.
    pub burst: u32,
    /// 1 to 6 000 000 (100 000 a second).
    pub per_minute: u32,
}

impl RateLimit {
    /// The time one request's token takes to refill.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(60_000_000_000 / u64::from(self.per_minute.max(1)))
    }
}

// ---------------------------------------------------------------------------------------
// Validation errors
// ---------------------------------------------------------------------------------------

/// One problem in a [`PolicyConfig`]; `at` is the path of the entry (`clients.rules[2]`).
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum PolicyError {
    #[error("{at}: {value:?} is not a dotted version like \"1.12.3\"")]
    BadVersion { at: String, value: String },
    #[error("{at}: must not be empty")]
    Empty { at: String },
    #[error(
        "{at}: {value:?} is not a valid name (printable ASCII, no spaces, at most {max} bytes)"
    )]
    BadName {
        at: String,
        value: String,
        max: usize,
    },
    #[error("{at}: version range is empty ({min} is not below {below})")]
    EmptyVersionRange {
        at: String,
        min: String,
        below: String,
    },
    #[error("{at}: can never match, {by} matches every client it would")]
    ShadowedRule { at: String, by: String },
    #[error("{at}: {value:?} is not a dial prefix (digits, with an optional leading '+')")]
    BadPrefix { at: String, value: String },
    #[error("{at}: {value:?} is listed twice")]
    Duplicate { at: String, value: String },
    #[error("{at}: {reason}")]
    Conflict { at: String, reason: String },
    #[error("{at}: unknown group {group:?}")]
    UnknownGroup { at: String, group: String },
    #[error("{at}: {value} is not within {min} to {max}")]
    OutOfRange {
        at: String,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("{at}: longer than {max} bytes")]
    TooLong { at: String, max: usize },
    #[error("{at}: more than {max} entries")]
    TooMany { at: String, max: usize },
}

/// A policy that failed validation, with every problem found.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize)]
#[error("invalid policy: {}", join_errors(.errors))]
pub struct InvalidPolicy {
    pub errors: Vec<PolicyError>,
}

fn join_errors(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------

/// Why something was refused, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    ModalityNotAllowed,
    ActivityBlocked,
    DialOutPrefixBlocked,
    DialOutPrefixNotAllowed,
    InvalidNumber,
    ClientBlocked,
    RateLimited,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::ModalityNotAllowed => "modality_not_allowed",
            RefusalCode::ActivityBlocked => "activity_blocked",
            RefusalCode::DialOutPrefixBlocked => "dial_out_prefix_blocked",
            RefusalCode::DialOutPrefixNotAllowed => "dial_out_prefix_not_allowed",
            RefusalCode::InvalidNumber => "invalid_number",
            RefusalCode::ClientBlocked => "client_blocked",
            RefusalCode::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy refusal: what the API returns and the archive records.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[error("{code}: {reason}")]
pub struct Refusal {
    pub code: RefusalCode,
    /// For people: what was refused and why.
    pub reason: String,
    /// The rule that decided, as a path in the policy (`groups.staff.escalate`).
    pub rule: String,
    /// For rate limits: when to try again, in milliseconds (rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    fn new(code: RefusalCode, reason: String, rule: String) -> Self {
        Self {
            code,
            reason,
            rule,
            retry_after_ms: None,
        }
    }
}

/// A client that may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientAdmission {
    /// Show this to the user: their client should be upgraded.
    pub upgrade_notice: Option<String>,
    /// The rule that decided (`clients.rules[1]` or `clients.default`).
    pub rule: String,
}

/// A dial-out the policy allowed. Only [`Policy::check_dial_out`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialOutPermit {
    number: String,
}

impl DialOutPermit {
    /// The number to dial, without visual separators.
    pub fn number(&self) -> &str {
        &self.number
    }
}

// ---------------------------------------------------------------------------------------
// Versions and user agents
// ---------------------------------------------------------------------------------------

/// A dotted numeric version. Missing components are zero, so `1.9 == 1.9.0 < 1.10`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Components with trailing zeros removed, so that the derived order is numeric order.
    parts: Vec<u32>,
}

/// A version string that is not `digits(.digits)*` (at most 8 components).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0:?} is not a dotted version like \"1.12.3\"")]
pub struct BadVersion(pub String);

impl Version {
    /// Parses a policy version strictly: `digits(.digits)*`, at most 8 components of at most
    /// `u32::MAX` each.
    pub fn parse(s: &str) -> Result<Self, BadVersion> {
        if s.is_empty() || s.len() > MAX_VERSION_LEN {
            return Err(BadVersion(s.to_owned()));
        }
        Self::from_dotted(s).ok_or_else(|| BadVersion(s.to_owned()))
    }

    /// Reads the version of a user-agent product leniently: an optional `v`, then the
    /// leading `digits(.digits)*`; anything after (`-beta`, `+build`) is ignored.
    pub fn parse_lenient(s: &str) -> Option<Self> {
        let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let dotted = s[..end].trim_end_matches('.');
        if dotted.is_empty() || dotted.len() > MAX_VERSION_LEN {
            return None;
        }
        Self::from_dotted(dotted)
    }

    fn from_dotted(s: &str) -> Option<Self> {
        let mut parts = Vec::new();
        for part in s.split('.') {
            if parts.len() == MAX_VERSION_PARTS
                || part.is_empty()
                || !part.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            parts.push(part.parse::<u32>().ok()?);
        }
        while parts.last() == Some(&0) {
            parts.pop();
        }
        Some(Self { parts })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, rest)) = self.parts.split_first() else {
            return f.write_str("0");
        };
        write!(f, "{first}")?;
        for part in rest {
            write!(f, ".{part}")?;
        }
        Ok(())
    }
}

/// One product token of a `User-Agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product<'a> {
    pub name: &'a str,
    pub version: Option<Version>,
}

/// Reads the product tokens of a `User-Agent` (`name/version`, or a name followed by a
/// version word as in `baresip v3.10.0`), skipping `(comments)`. Reads at most
/// [`MAX_USER_AGENT_LEN`] bytes and [`MAX_PRODUCTS`] products; never fails.
pub fn parse_user_agent(user_agent: &str) -> Vec<Product<'_>> {
    let mut end = user_agent.len().min(MAX_USER_AGENT_LEN);
    while !user_agent.is_char_boundary(end) {
        end -= 1;
    }
    let ua = &user_agent[..end];

    let mut depth = 0usize;
    let mut word_start: Option<usize> = None;
    // Words are split at ASCII whitespace and parentheses, which are single bytes, so every
    // index below is a char boundary.
    let mut words: Vec<&str> = Vec::new();
    for (i, b) in ua.bytes().enumerate() {
        let separator = b.is_ascii_whitespace() || b == b'(' || b == b')';
        if separator {
            if let Some(start) = word_start.take()
                && depth == 0
            {
                words.push(&ua[start..i]);
            }
            match b {
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                _ => {}
            }
        } else if word_start.is_none() {
            word_start = Some(i);
        }
    }
    if let Some(start) = word_start
        && depth == 0
    {
        words.push(&ua[start..]);
    }

    let mut products: Vec<Product<'_>> = Vec::new();
    let mut previous_bare = false;
    for word in words {
        if products.len() == MAX_PRODUCTS {
            break;
        }
        if let Some((name, version)) = word.split_once('/') {
            if !name.is_empty() {
                products.push(Product {
                    name,
                    version: Version::parse_lenient(version),
                });
            }
            previous_bare = false;
            continue;
        }
        let looks_like_version = word
            .strip_prefix(['v', 'V'])
            .unwrap_or(word)
            .starts_with(|c: char| c.is_ascii_digit());
        if previous_bare && looks_like_version {
            if let Some(last) = products.last_mut() {
                last.version = Version::parse_lenient(word);
            }
            previous_bare = false;
        } else {
            products.push(Product {
                name: word,
                version: None,
            });
            previous_bare = true;
        }
    }
    products
}

// ---------------------------------------------------------------------------------------
// The validated policy
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ClientRule {
    product_lower: String,
    min: Option<Version>,
    below: Option<Version>,
}

impl ClientRule {
    fn matches<'p, 'a>(&self, products: &'p [Product<'a>]) -> Option<&'p Product<'a>> {
        products.iter().find(|p| {
            let name_matches = p.name.len() >= self.product_lower.len()
                && p.name.as_bytes()[..self.product_lower.len()]
                    .eq_ignore_ascii_case(self.product_lower.as_bytes());
            if !name_matches {
                return false;
            }
            if self.min.is_none() && self.below.is_none() {
                return true;
            }
            p.version.as_ref().is_some_and(|v| {
                self.min.as_ref().is_none_or(|m| v >= m)
                    && self.below.as_ref().is_none_or(|b| v < b)
            })
        })
    }

    /// Whether every client this rule matches, `other` (an earlier rule) matches too.
    fn is_covered_by(&self, other: &ClientRule) -> bool {
        let name = self.product_lower.starts_with(&other.product_lower);
        let low = match (&other.min, &self.min) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(s)) => o <= s,
        };
        let high = match (&other.below, &self.below) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(s)) => o >= s,
        };
        // An unbounded rule also matches products without a version; a bounded one does not.
        let versionless = (other.min.is_none() && other.below.is_none())
            || self.min.is_some()
            || self.below.is_some();
        name && low && high && versionless
    }
}

/// A validated policy; its checks never fail on input, they refuse.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    client_rules: Vec<ClientRule>,
}

impl Default for Policy {
    /// The default policy (see the module docs): everything allowed.
    fn default() -> Self {
        // The default configuration is valid (a test checks it).
        Self::new(PolicyConfig::default()).expect("the default policy is valid")
    }
}

impl Policy {
    /// Validates `config`, reporting every problem found.
    pub fn new(config: PolicyConfig) -> Result<Self, InvalidPolicy> {
        let mut errors = Vec::new();
        validate_groups(&config, &mut errors);
        let client_rules = validate_clients(&config.clients, &mut errors);
        validate_rate_limits(&config.rate_limits, &mut errors);
        if errors.is_empty() {
            Ok(Self {
                config,
                client_rules,
            })
        } else {
            Err(InvalidPolicy { errors })
        }
    }

    /// The policy as data, for the admin API and the config.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The group `user` belongs to.
    pub fn group_of<'s>(&'s self, user: &str) -> &'s str {
        self.config
            .members
            .get(user)
            .unwrap_or(&self.config.default_group)
    }

    fn group(&self, user: &str) -> (&str, &GroupConfig) {
        let name = self.group_of(user);
        match self.config.groups.get(name) {
            Some(group) => (name, group),
            // Validation checks that every member's group and the default group exist.
            None => unreachable!("validated policy has group {name:?}"),
        }
    }

    /// May `user` escalate a conversation to `modality`?
    pub fn check_escalation(&self, user: &str, modality: Modality) -> Result<(), Refusal> {
        let (name, group) = self.group(user);
        if group.escalate.contains(&modality) {
            return Ok(());
        }
        Err(Refusal::new(
            RefusalCode::ModalityNotAllowed,
            format!(
                "group {name} may not escalate to {}",
                modality.as_str().replace('_', "-")
            ),
            format!("groups.{name}.escalate"),
        ))
    }

    /// May `user` do `activity`?
    pub fn check_activity(&self, user: &str, activity: Activity) -> Result<(), Refusal> {
        let (name, group) = self.group(user);
        if !group.blocked.contains(&activity) {
            return Ok(());
        }
        Err(Refusal::new(
            RefusalCode::ActivityBlocked,
            format!(
                "{} is blocked for group {name}",
                activity.as_str().replace('_', " ")
            ),
            format!("groups.{name}.blocked"),
        ))
    }

    /// May `user` (or a call on their behalf) dial `number`? See the module docs for how
    /// numbers and prefixes compare.
    pub fn check_dial_out(&self, user: &str, number: &str) -> Result<DialOutPermit, Refusal> {
        self.check_activity(user, Activity::DialOut)?;
        let (name, group) = self.group(user);
        let Some(number) = normalize_number(number) else {
            return Err(Refusal::new(
                RefusalCode::InvalidNumber,
                "the number is not a phone number (digits, an optional leading '+')".into(),
                format!("groups.{name}.dial_out"),
            ));
        };
        let dial_out = &group.dial_out;
        if let Some(i) = dial_out
            .blocked_prefixes
            .iter()
            .position(|p| number.starts_with(p.as_str()))
        {
            return Err(Refusal::new(
                RefusalCode::DialOutPrefixBlocked,
                format!(
                    "numbers starting {} are blocked for group {name}",
                    dial_out.blocked_prefixes[i]
                ),
                format!("groups.{name}.dial_out.blocked_prefixes[{i}]"),
            ));
        }
        if !dial_out.only_prefixes.is_empty()
            && !dial_out
                .only_prefixes
                .iter()
                .any(|p| number.starts_with(p.as_str()))
        {
            return Err(Refusal::new(
                RefusalCode::DialOutPrefixNotAllowed,
                format!("group {name} may dial only numbers starting with an allowed prefix"),
                format!("groups.{name}.dial_out.only_prefixes"),
            ));
        }
        Ok(DialOutPermit { number })
    }

    /// May a client with this `User-Agent` connect? First matching rule wins.
    pub fn check_client(&self, user_agent: &str) -> Result<ClientAdmission, Refusal> {
        let products = parse_user_agent(user_agent);
        let clients = &self.config.clients;
        for (i, (rule, config)) in self.client_rules.iter().zip(&clients.rules).enumerate() {
            if let Some(product) = rule.matches(&products) {
                let described = describe(product);
                return decide(
                    config.action,
                    config.message.as_deref(),
                    &described,
                    format!("clients.rules[{i}]"),
                );
            }
        }
        let described = products
            .first()
            .map(describe)
            .unwrap_or_else(|| "this client".to_owned());
        decide(
            clients.default,
            clients.default_message.as_deref(),
            &described,
            "clients.default".to_owned(),
        )
    }

    /// Rate limiters set up from this policy's limits.
    pub fn rate_limiters(&self) -> RateLimiters {
        RateLimiters::new(&self.config.rate_limits)
    }
}

fn describe(product: &Product<'_>) -> String {
    // The name comes from the network: bound what goes into reasons and the archive.
    let name: String = product
        .name
        .chars()
        .take(MAX_PRODUCT_LEN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    match &product.version {
        Some(v) => format!("{name} {v}"),
        None => name,
    }
}

fn decide(
    action: ClientAction,
    message: Option<&str>,
    client: &str,
    rule: String,
) -> Result<ClientAdmission, Refusal> {
    match action {
        ClientAction::Allow => Ok(ClientAdmission {
            upgrade_notice: None,
            rule,
        }),
        ClientAction::UpgradeNotice => Ok(ClientAdmission {
            upgrade_notice: Some(
                message
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{client} is out of date, please upgrade")),
            ),
            rule,
        }),
        ClientAction::Block => Err(Refusal::new(
            RefusalCode::ClientBlocked,
            message
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{client} may not connect, please upgrade")),
            rule,
        )),
    }
}

/// Removes visual separators; `None` unless the result is an optional `+` and 1 to 32
/// digits.
fn normalize_number(number: &str) -> Option<String> {
    let mut out = String::with_capacity(number.len().min(MAX_NUMBER_DIGITS + 1));
    for (i, c) in number.trim().chars().enumerate() {
        match c {
            '+' if i == 0 => out.push('+'),
            '0'..='9' => out.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
        if out.len() > MAX_NUMBER_DIGITS + 1 {
            return None;
        }
    }
    let digits = out.strip_prefix('+').unwrap_or(&out).len();
    (1..=MAX_NUMBER_DIGITS).contains(&digits).then_some(out)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

fn check_name(at: String, value: &str, errors: &mut Vec<PolicyError>) {
    if value.is_empty() {
        errors.push(PolicyError::Empty { at });
    } else if !valid_name(value) {
        errors.push(PolicyError::BadName {
            at,
            value: value.chars().take(MAX_NAME_LEN).collect(),
            max: MAX_NAME_LEN,
        });
    }
}

fn check_message(at: String, message: Option<&str>, errors: &mut Vec<PolicyError>) {
    match message {
        Some("") => errors.push(PolicyError::Empty { at }),
        Some(m) if m.len() > MAX_MESSAGE_LEN => errors.push(PolicyError::TooLong {
            at,
            max: MAX_MESSAGE_LEN,
        }),
        _ => {}
    }
}

fn validate_groups(config: &PolicyConfig, errors: &mut Vec<PolicyError>) {
    if config.groups.len() > MAX_GROUPS {
        errors.push(PolicyError::TooMany {
            at: "groups".into(),
            max: MAX_GROUPS,
        });
    }
    if config.members.len() > MAX_MEMBERS {
        errors.push(PolicyError::TooMany {
            at: "members".into(),
            max: MAX_MEMBERS,
        });
    }
    if config.groups.is_empty() {
        errors.push(PolicyError::Empty {
            at: "groups".into(),
        });
    }
    if !config.groups.contains_key(&config.default_group) {
        errors.push(PolicyError::UnknownGroup {
            at: "default_group".into(),
            group: config.default_group.clone(),
        });
    }
    for (user, group) in &config.members {
        check_name(format!("members.{user}"), user, errors);
        if !config.groups.contains_key(group) {
            errors.push(PolicyError::UnknownGroup {
                at: format!("members.{user}"),
                group: group.clone(),
            });
        }
    }
    for (name, group) in &config.groups {
        let at = format!("groups.{name}");
        check_name(at.clone(), name, errors);
        if group.escalate.contains(&Modality::Video) && group.blocked.contains(&Activity::Video) {
            errors.push(PolicyError::Conflict {
                at: at.clone(),
                reason: "escalation to video is allowed but video is blocked; remove video from escalate or blocked".into(),
            });
        }
        let dial_out = &group.dial_out;
        if group.blocked.contains(&Activity::DialOut)
            && !(dial_out.only_prefixes.is_empty() && dial_out.blocked_prefixes.is_empty())
        {
            errors.push(PolicyError::Conflict {
                at: format!("{at}.dial_out"),
                reason: "dial-out is blocked, so its prefix lists have no effect".into(),
            });
        }
        let only_at = format!("{at}.dial_out.only_prefixes");
        let blocked_at = format!("{at}.dial_out.blocked_prefixes");
        check_prefixes(&only_at, &dial_out.only_prefixes, errors);
        check_prefixes(&blocked_at, &dial_out.blocked_prefixes, errors);
        for (i, allowed) in dial_out.only_prefixes.iter().enumerate() {
            if let Some(j) = dial_out
                .blocked_prefixes
                .iter()
                .position(|b| !b.is_empty() && allowed.starts_with(b.as_str()))
            {
                errors.push(PolicyError::Conflict {
                    at: format!("{only_at}[{i}]"),
                    reason: format!(
                        "{allowed} can never be dialled: {blocked_at}[{j}] ({}) blocks it",
                        dial_out.blocked_prefixes[j]
                    ),
                });
            }
        }
    }
}

fn check_prefixes(at: &str, prefixes: &[String], errors: &mut Vec<PolicyError>) {
    if prefixes.len() > MAX_PREFIXES {
        errors.push(PolicyError::TooMany {
            at: at.to_owned(),
            max: MAX_PREFIXES,
        });
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, prefix) in prefixes.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let digits = prefix.strip_prefix('+').unwrap_or(prefix);
        if prefix.is_empty() {
            errors.push(PolicyError::Empty { at });
        } else if digits.is_empty()
            || digits.len() > MAX_NUMBER_DIGITS
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            errors.push(PolicyError::BadPrefix {
                at,
                value: prefix.chars().take(MAX_NAME_LEN).collect(),
            });
        } else if !seen.insert(prefix.as_str()) {
            errors.push(PolicyError::Duplicate {
                at,
                value: prefix.clone(),
            });
        }
    }
}

fn validate_clients(clients: &ClientsConfig, errors: &mut Vec<PolicyError>) -> Vec<ClientRule> {
    if clients.rules.len() > MAX_CLIENT_RULES {
        errors.push(PolicyError::TooMany {
            at: "clients.rules".into(),
            max: MAX_CLIENT_RULES,
        });
        return Vec::new();
    }
    check_message(
        "clients.default_message".into(),
        clients.default_message.as_deref(),
        errors,
    );
    let mut compiled: Vec<ClientRule> = Vec::with_capacity(clients.rules.len());
    let mut usable: Vec<bool> = Vec::with_capacity(clients.rules.len());
    for (i, rule) in clients.rules.iter().enumerate() {
        let at = format!("clients.rules[{i}]");
        let before = errors.len();
        let product = &rule.product;
        if product.is_empty() {
            errors.push(PolicyError::Empty {
                at: format!("{at}.product"),
            });
        } else if product.len() > MAX_PRODUCT_LEN
            || !product
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'(' | b')'))
        {
            errors.push(PolicyError::BadName {
                at: format!("{at}.product"),
                value: product.chars().take(MAX_PRODUCT_LEN).collect(),
                max: MAX_PRODUCT_LEN,
            });
        }
        let mut version = |field: &str, value: &Option<String>| -> Option<Version> {
            let value = value.as_deref()?;
            Version::parse(value)
                .map_err(|_| {
                    errors.push(PolicyError::BadVersion {
                        at: format!("{at}.{field}"),
                        value: value.chars().take(MAX_VERSION_LEN).collect(),
                    })
                })
                .ok()
        };
        let min = version("min_version", &rule.min_version);
        let below = version("below_version", &rule.below_version);
        if let (Some(m), Some(b)) = (&min, &below)
            && m >= b
        {
            errors.push(PolicyError::EmptyVersionRange {
                at: at.clone(),
                min: m.to_string(),
                below: b.to_string(),
            });
        }
        check_message(format!("{at}.message"), rule.message.as_deref(), errors);
        let this = ClientRule {
            product_lower: product.to_ascii_lowercase(),
            min,
            below,
        };
        let ok = errors.len() == before;
        if ok
            && let Some(j) = compiled
                .iter()
                .zip(&usable)
                .position(|(earlier, &usable)| usable && this.is_covered_by(earlier))
        {
            errors.push(PolicyError::ShadowedRule {
                at,
                by: format!("clients.rules[{j}]"),
            });
        }
        compiled.push(this);
        usable.push(ok);
    }
    compiled
}

fn validate_rate_limits(limits: &RateLimitsConfig, errors: &mut Vec<PolicyError>) {
    let mut range = |at: &str, value: u64, min: u64, max: u64| {
        if !(min..=max).contains(&value) {
            errors.push(PolicyError::OutOfRange {
                at: at.to_owned(),
                value,
                min,
                max,
            });
        }
    };
    for (name, limit) in [
        ("per_user", &limits.per_user),
        ("per_im_server", &limits.per_im_server),
    ] {
        if let Some(limit) = limit {
            let at = format!("rate_limits.{name}");
            range(&format!("{at}.burst"), limit.burst.into(), 1, 1_000_000);
            range(
                &format!("{at}.per_minute"),
                limit.per_minute.into(),
                1,
                6_000_000,
            );
        }
    }
    range(
        "rate_limits.max_tracked",
        limits.max_tracked as u64,
        1,
        10_000_000,
    );
}

// ---------------------------------------------------------------------------------------
// Rate limiting
// ---------------------------------------------------------------------------------------

/// A refused request: try again after `retry_after`.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("rate limited, retry after {retry_after:?}")]
pub struct RateLimited {
    pub retry_after: Duration,
}

/// Token buckets per key with bounded memory (see the module docs).
///
/// Each key stores the time its bucket is full again (its theoretical arrival time): a
/// request at `now` is allowed when that time is at most `(burst - 1) * interval` ahead,
/// and then moves it one interval later.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    interval: Duration,
    tolerance: Duration,
    max_keys: usize,
    full_at: HashMap<String, Instant>,
    evicted: u64,
}

impl RateLimiter {
    /// A limiter remembering at most `max_keys` keys (at least 1).
    pub fn new(limit: RateLimit, max_keys: usize) -> Self {
        let mut limiter = Self {
            limit,
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            max_keys: max_keys.max(1),
            full_at: HashMap::new(),
            evicted: 0,
        };
        limiter.set_limit(limit);
        limiter
    }

    /// Changes the limit, keeping each key's state.
    pub fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
        self.interval = limit.interval();
        self.tolerance = self.interval.saturating_mul(limit.burst.max(1) - 1);
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token from `key`'s bucket at `now`, or says when one will be there.
    pub fn check(&mut self, key: &str, now: Instant) -> Result<(), RateLimited> {
        let full_at = match self.full_at.get(key) {
            Some(&t) if t > now => t,
            _ => now,
        };
        let ahead = full_at.saturating_duration_since(now);
        if ahead > self.tolerance {
            return Err(RateLimited {
                retry_after: ahead - self.tolerance,
            });
        }
        // `full_at` is within `tolerance` of `now`: far from Instant's range end.
        let next = full_at.checked_add(self.interval).unwrap_or(full_at);
        if let Some(t) = self.full_at.get_mut(key) {
            *t = next;
        } else {
            if self.full_at.len() >= self.max_keys {
                self.make_room(now);
            }
            self.full_at.insert(key.to_owned(), next);
        }
        Ok(())
    }

    /// Drops refilled keys (no information lost); if that is not enough, the eighth of
    /// keys nearest to full. Amortised O(1) per new key.
    fn make_room(&mut self, now: Instant) {
        self.full_at.retain(|_, t| *t > now);
        if self.full_at.len() >= self.max_keys {
            let before = self.full_at.len();
            let mut times: Vec<Instant> = self.full_at.values().copied().collect();
            let k = (times.len() / 8).max(1);
            let (_, &mut threshold, _) = times.select_nth_unstable(k - 1);
            // Exactly k go: all below the threshold, then as many at it as needed (which
            // of several equal ones is up to the map's order).
            let mut at_threshold = k - times.iter().filter(|t| **t < threshold).count();
            self.full_at.retain(|_, t| {
                if *t < threshold {
                    false
                } else if *t == threshold && at_threshold > 0 {
                    at_threshold -= 1;
                    false
                } else {
                    true
                }
            });
            self.evicted += (before - self.full_at.len()) as u64;
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.full_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.full_at.is_empty()
    }

    /// Keys forgotten while their bucket was not yet full (a metric: raise `max_tracked`
    /// if it grows).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// The per-user and per-IM-server limiters of a policy.
#[derive(Debug, Clone)]
pub struct RateLimiters {
    per_user: Option<RateLimiter>,
    per_im_server: Option<RateLimiter>,
    max_tracked: usize,
}

impl RateLimiters {
    pub fn new(config: &RateLimitsConfig) -> Self {
        let make = |l: &Option<RateLimit>| l.map(|l| RateLimiter::new(l, config.max_tracked));
        Self {
            per_user: make(&config.per_user),
            per_im_server: make(&config.per_im_server),
            max_tracked: config.max_tracked,
        }
    }

    /// Applies new limits, keeping the state of limiters that stay on.
    pub fn reconfigure(&mut self, config: &RateLimitsConfig) {
        let max_changed = config.max_tracked != self.max_tracked;
        for (limiter, limit) in [
            (&mut self.per_user, config.per_user),
            (&mut self.per_im_server, config.per_im_server),
        ] {
            match (limiter.as_mut(), limit) {
                (Some(l), Some(limit)) if !max_changed => l.set_limit(limit),
                (_, limit) => *limiter = limit.map(|l| RateLimiter::new(l, config.max_tracked)),
            }
        }
        self.max_tracked = config.max_tracked;
    }

    /// One request by `user` at `now`.
    pub fn check_user(&mut self, user: &str, now: Instant) -> Result<(), Refusal> {
        check_limit(self.per_user.as_mut(), "user", user, "per_user", now)
    }

    /// One request by IM server `server` at `now`.
    pub fn check_im_server(&mut self, server: &str, now: Instant) -> Result<(), Refusal> {
        check_limit(
            self.per_im_server.as_mut(),
            "IM server",
            server,
            "per_im_server",
            now,
        )
    }

    pub fn per_user(&self) -> Option<&RateLimiter> {
        self.per_user.as_ref()
    }

    pub fn per_im_server(&self) -> Option<&RateLimiter> {
        self.per_im_server.as_ref()
    }
}

fn check_limit(
    limiter: Option<&mut RateLimiter>,
    what: &str,
    key: &str,
    rule: &str,
    now: Instant,
) -> Result<(), Refusal> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check(key, now).map_err(|limited| {
        let limit = limiter.limit();
        let ms = limited.retry_after.as_nanos().div_ceil(1_000_000);
        Refusal {
            code: RefusalCode::RateLimited,
            reason: format!(
                "{what} {} exceeded {} requests a minute (bursts of {})",
                key.chars().take(MAX_NAME_LEN).collect::<String>(),
                limit.per_minute,
                limit.burst
            ),
            rule: format!("rate_limits.{rule}"),
            retry_after_ms: Some(u64::try_from(ms).unwrap_or(u64::MAX)),
        }
    })
}

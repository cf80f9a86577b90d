//! Phone numbers: normalisation to E.164, trunk rewrite rules, and the dial-out policy.
//!
//! Numbers reach confer in every shape a person or a PBX can produce: `+1 (415) 555-0100`,
//! `004930123456`, `0301234567`, `tel:863-1234;phone-context=+1-914-555`, the user part of
//! `sip:+14155550100@gw;user=phone`, or a short internal extension `1001`. Dial-in mapping,
//! the archive and the dial-out policy all want one canonical form, so [`normalize`] turns the
//! input into a [`Number`]: an [`E164`] (`+` and 7 to 15 digits) or an [`Extension`] (a short
//! internal number, never forced into E.164), or a typed [`NumberError`].
//!
//! Local numbers need a [`NationalContext`] (country code, national prefix `0`/`1`,
//! international prefix `00`/`011`) to become global; nothing is guessed from a table of
//! numbering plans.
//!
//! Trunks disagree on formats, so each trunk carries [`RewriteRule`]s: plain data (the binary
//! maps its TOML onto them) applied first-match-wins, one list per direction
//! ([`TrunkNumbering`]).
//!
//! [`DialOutPolicy`] decides whether confer may place a call to a number. It is the only
//! producer of [`Authorized`]; a refusal is a [`Refusal`] naming the rule that decided, for the
//! archive ("what was refused and why"). Longest matching prefix wins; by default numbers in
//! the home country are allowed, other countries and premium-rate prefixes are denied.
//!
//! **Emergency calls are not routed by confer.** A conferencing engine has no caller location
//! and no callback path, and must not pretend to be a phone line. Emergency numbers are
//! recognised before any prefix rule and always refused with [`RefusalReason::Emergency`], so
//! the refusal says exactly that instead of looking like an ordinary "prefix denied" (and no
//! allow rule can route them by accident).

use std::fmt;

/// E.164 allows at most 15 digits (country code included).
pub const MAX_E164_DIGITS: usize = 15;

/// Shortest accepted E.164 number. The shortest plans in use (Niue +683, Tokelau +690) have
/// 4-digit subscriber numbers, so 7 digits; fewer is a typing error, not a number.
pub const MIN_E164_DIGITS: usize = 7;

/// Longest input considered at all (a header value can be large; a number cannot).
const MAX_INPUT_LEN: usize = 256;

/// Premium-rate and similar high-cost prefixes denied by default. The list is configuration
/// ([`DialOutConfig::premium_prefixes`]): extend it per deployment.
pub const DEFAULT_PREMIUM_PREFIXES: &[&str] = &[
    "+1900",  // NANP premium (900)
    "+1976",  // NANP legacy pay-per-call (976)
    "+449",   // UK 09 premium
    "+4487",  // UK 087 revenue share
    "+4470",  // UK 070 personal numbers (fraud-prone, premium-priced)
    "+49900", // DE 0900 premium
    "+49137", // DE 0137 mass traffic / televoting
    "+338",   // FR 08 (special tariffs; includes free 0800: allow +33800 explicitly if wanted)
];

/// Emergency short codes refused with [`RefusalReason::Emergency`]. Configurable; defaults
/// cover the common ones: 112 (EU, GSM), 911 (NANP), 999 (UK), 000 (AU), 110 (DE/JP/CN
/// police), 118/119, 15/17/18 (FR), 100/101/102/108 (IN and others).
pub const DEFAULT_EMERGENCY_NUMBERS: &[&str] = &[
    "112", "911", "999", "000", "110", "118", "119", "15", "17", "18", "100", "101", "102", "108",
];

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// Why a number could not be normalised (or a configuration value was rejected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("no digits")]
    Empty,
    #[error("{digits} digits is longer than E.164 allows")]
    TooLong { digits: usize },
    #[error("{digits} digits is shorter than any E.164 number")]
    TooShort { digits: usize },
    #[error("letter {0:?} in a phone number")]
    Letter(char),
    #[error("invalid character {0:?} in a phone number")]
    InvalidCharacter(char),
    #[error("E.164 form needs a leading '+'")]
    NotGlobal,
    #[error("country codes never start with 0")]
    InvalidCountryCode,
    #[error("local number matches neither a prefix, a national length nor an extension")]
    Unrecognised,
    #[error("invalid national context: {0}")]
    InvalidContext(&'static str),
}

/// A global number: `+` then 7 to 15 digits, the first not `0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// Parse the strict form `+<digits>` (no separators).
    pub fn parse(s: &str) -> Result<E164, NumberError> {
        match s.strip_prefix('+') {
            Some(d) => E164::from_digits(d),
            None if s.is_empty() => Err(NumberError::Empty),
            None => Err(NumberError::NotGlobal),
        }
    }

    /// From the digits after `+` (country code first).
    pub fn from_digits(digits: &str) -> Result<E164, NumberError> {
        if let Some(c) = digits.chars().find(|c| !c.is_ascii_digit()) {
            return Err(classify(c));
        }
        match digits.len() {
            0 => Err(NumberError::Empty),
            n if n > MAX_E164_DIGITS => Err(NumberError::TooLong { digits: n }),
            _ if digits.starts_with('0') => Err(NumberError::InvalidCountryCode),
            n if n < MIN_E164_DIGITS => Err(NumberError::TooShort { digits: n }),
            _ => Ok(E164(format!("+{digits}"))),
        }
    }

    /// `+` and digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without `+`.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// For logs: keeps `+` and 3 leading digits and the last 2, masks the rest.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(&self.0)
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A number shown with its middle digits masked (STYLE: numbers behind a redacting wrapper).
#[derive(Debug, Clone, Copy)]
pub struct Redacted<'a>(&'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.chars().count();
        for (i, c) in self.0.chars().enumerate() {
            if i < 4 || i + 2 >= n {
                fmt::Write::write_char(f, c)?;
            } else {
                f.write_str("*")?;
            }
        }
        Ok(())
    }
}

/// A short internal number (digits, `*`, `#`), kept apart from E.164.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extension(String);

impl Extension {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalised number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Number {
    E164(E164),
    Extension(Extension),
}

impl Number {
    pub fn as_str(&self) -> &str {
        match self {
            Number::E164(e) => e.as_str(),
            Number::Extension(x) => x.as_str(),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How local numbers are read: the numbering plan of the PBX or trunk that sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NationalContext {
    /// Country calling code without `+`: `"49"`, `"1"`.
    pub country_code: String,
    /// Trunk prefix dialled before national numbers: `"0"` (most of Europe), `"1"` (NANP),
    /// `""` where there is none (e.g. Italy keeps its leading 0 in E.164).
    pub national_prefix: String,
    /// Prefix for international calls: `"00"`, `"011"` (NANP).
    pub international_prefix: String,
    /// Lengths of national numbers that may be dialled without the national prefix
    /// (NANP: `[10]`, so `4155550100` works).
    pub unprefixed_national_lengths: Vec<usize>,
    /// Unprefixed local numbers up to this many characters are extensions.
    pub max_extension_len: usize,
}

impl NationalContext {
    /// A plan with national prefix `0` and international prefix `00` (most of Europe, and many
    /// other countries), extensions up to 6 digits.
    pub fn with_trunk_prefix_0(country_code: impl Into<String>) -> NationalContext {
        NationalContext {
            country_code: country_code.into(),
            national_prefix: "0".to_owned(),
            international_prefix: "00".to_owned(),
            unprefixed_national_lengths: Vec::new(),
            max_extension_len: 6,
        }
    }

    /// The North American Numbering Plan: `+1`, national prefix `1`, international `011`,
    /// 10-digit national numbers, extensions up to 6 digits.
    pub fn nanp() -> NationalContext {
        NationalContext {
            country_code: "1".to_owned(),
            national_prefix: "1".to_owned(),
            international_prefix: "011".to_owned(),
            unprefixed_national_lengths: vec![10],
            max_extension_len: 6,
        }
    }

    fn validate(&self) -> Result<(), NumberError> {
        let cc = &self.country_code;
        if cc.is_empty()
            || cc.len() > 3
            || cc.starts_with('0')
            || !cc.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NumberError::InvalidContext("country_code"));
        }
        if !self.national_prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NumberError::InvalidContext("national_prefix"));
        }
        if !self
            .international_prefix
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            return Err(NumberError::InvalidContext("international_prefix"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

fn classify(c: char) -> NumberError {
    if c.is_alphabetic() {
        NumberError::Letter(c)
    } else {
        NumberError::InvalidCharacter(c)
    }
}

/// A number stripped of scheme, parameters and separators.
struct DialString {
    /// Written with a leading `+`.
    global: bool,
    /// Digits, `*`, `#`.
    digits: String,
    /// Digits of a global `phone-context` (RFC 3966), if one was given.
    context_prefix: Option<String>,
}

/// Decode `%XX` escapes of a SIP user part.
fn percent_decode(s: &str) -> Result<String, NumberError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| char::from(c).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                // Two hex digits make at most 255, so the cast is lossless.
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(NumberError::InvalidCharacter('%')),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| NumberError::InvalidCharacter('%'))
}

fn is_separator(c: char) -> bool {
    // RFC 3966 visual separators plus what people type: spaces and `/` (`030/1234567`).
    matches!(c, '-' | '.' | '(' | ')' | ' ' | '\t' | '/')
}

/// Keep `+` (only first), digits, `*`, `#`; drop separators; reject the rest.
fn clean_digits(s: &str) -> Result<(bool, String), NumberError> {
    let mut global = false;
    let mut digits = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '0'..='9' | '*' | '#' => digits.push(c),
            '+' if !global && digits.is_empty() => global = true,
            c if is_separator(c) => {}
            c => return Err(classify(c)),
        }
    }
    Ok((global, digits))
}

fn dial_string(input: &str) -> Result<DialString, NumberError> {
    if input.len() > MAX_INPUT_LEN {
        return Err(NumberError::TooLong {
            digits: input.chars().filter(char::is_ascii_digit).count(),
        });
    }
    let mut s = input.trim();
    let lower_starts =
        |s: &str, p: &str| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    let decoded;
    if lower_starts(s, "tel:") {
        s = &s[4..];
    } else if lower_starts(s, "sip:") || lower_starts(s, "sips:") {
        let rest = &s[s.find(':').map_or(0, |i| i + 1)..];
        // The user part ends at '@'; a ':' in it starts a password (RFC 3261 §19.1.1).
        let user = rest.split('@').next().unwrap_or(rest);
        let user = user.split(':').next().unwrap_or(user);
        decoded = percent_decode(user)?;
        s = &decoded;
    }
    let mut parts = s.split(';');
    // split always yields at least one item.
    let number = parts.next().unwrap_or("");
    let mut context_prefix = None;
    for p in parts {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("phone-context") {
            let value = value.trim();
            if value.starts_with('+') {
                let (_, d) = clean_digits(value)?;
                if d.contains(['*', '#']) {
                    return Err(NumberError::InvalidCharacter(if d.contains('*') {
                        '*'
                    } else {
                        '#'
                    }));
                }
                context_prefix = Some(d);
            }
            // A domain-name context names a private plan: the national context applies.
        }
    }
    let (global, digits) = clean_digits(number)?;
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    Ok(DialString {
        global,
        digits,
        context_prefix,
    })
}

/// Normalise what a user, PBX or trunk sent into an [`E164`] or an [`Extension`].
///
/// Order: `+` means global; a global `phone-context` is prepended (RFC 3966 §5.1.5); then a
/// local number is an extension if short enough, else the international prefix, the national
/// prefix, or an unprefixed national length makes it global.
pub fn normalize(input: &str, ctx: &NationalContext) -> Result<Number, NumberError> {
    ctx.validate()?;
    let ds = dial_string(input)?;
    if ds.global {
        return E164::from_digits(&ds.digits).map(Number::E164);
    }
    if let Some(prefix) = &ds.context_prefix {
        return E164::from_digits(&format!("{prefix}{}", ds.digits)).map(Number::E164);
    }
    let d = ds.digits;
    if d.len() <= ctx.max_extension_len {
        return Ok(Number::Extension(Extension(d)));
    }
    if let Some(c) = d.chars().find(|c| !c.is_ascii_digit()) {
        return Err(NumberError::InvalidCharacter(c));
    }
    let intl = &ctx.international_prefix;
    if !intl.is_empty()
        && let Some(rest) = d.strip_prefix(intl.as_str())
    {
        return E164::from_digits(rest).map(Number::E164);
    }
    let cc = &ctx.country_code;
    let nat = &ctx.national_prefix;
    if !nat.is_empty()
        && let Some(rest) = d.strip_prefix(nat.as_str())
    {
        return E164::from_digits(&format!("{cc}{rest}")).map(Number::E164);
    }
    if ctx.unprefixed_national_lengths.contains(&d.len()) {
        return E164::from_digits(&format!("{cc}{d}")).map(Number::E164);
    }
    Err(NumberError::Unrecognised)
}

// ---------------------------------------------------------------------------------------------
// Rewrite rules
// ---------------------------------------------------------------------------------------------

/// One rewrite: if the number matches `pattern`, drop the first `strip` characters and put
/// `prepend` in front.
///
/// `pattern` matches the start of the number: digits, `+`, `*`, `#` match themselves, `X` any
/// digit, `Z` 1-9, `N` 2-9 (Asterisk's letters, either case), and a final `$` requires the
/// number to end there. An empty pattern matches everything. A rule whose `strip` is longer
/// than the number does not match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RewriteRule {
    pub pattern: String,
    pub strip: usize,
    pub prepend: String,
}

/// The rewrite rules of one trunk, for each direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrunkNumbering {
    /// Applied to E.164 numbers sent to the trunk (`+49` -> `0049`, `+1415` -> `1415`).
    pub to_trunk: Vec<RewriteRule>,
    /// Applied to numbers received from the trunk before [`normalize`].
    pub from_trunk: Vec<RewriteRule>,
    /// The trunk's numbering plan for what remains local after rewriting.
    pub context: Option<NationalContext>,
}

/// A configuration value that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule {index}: invalid character {ch:?} in pattern")]
    InvalidPattern { index: usize, ch: char },
    #[error("rule {index}: prepend may hold only digits, '+', '*', '#'")]
    InvalidPrepend { index: usize },
    #[error("{list} entry {index}: {value:?} is not '+' followed by digits")]
    InvalidPrefix {
        list: &'static str,
        index: usize,
        value: String,
    },
    #[error("{list} entry {index}: {value:?} is not a short code of digits")]
    InvalidEmergencyNumber {
        list: &'static str,
        index: usize,
        value: String,
    },
    #[error("invalid home country code")]
    InvalidCountryCode,
    #[error(transparent)]
    Context(#[from] NumberError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternItem {
    Literal(u8),
    AnyDigit,
    OneToNine,
    TwoToNine,
}

impl PatternItem {
    fn matches(self, b: u8) -> bool {
        match self {
            PatternItem::Literal(l) => b == l,
            PatternItem::AnyDigit => b.is_ascii_digit(),
            PatternItem::OneToNine => (b'1'..=b'9').contains(&b),
            PatternItem::TwoToNine => (b'2'..=b'9').contains(&b),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    items: Vec<PatternItem>,
    anchored: bool,
    strip: usize,
    prepend: String,
}

fn is_dial_char(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'+' | b'*' | b'#')
}

/// Rules checked once and applied first-match-wins.
#[derive(Debug, Clone)]
pub struct Rewriter {
    rules: Vec<CompiledRule>,
}

/// The result of a rewrite and which rule (index in the configured list) made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub number: String,
    /// `None`: no rule matched; the number is unchanged.
    pub rule: Option<usize>,
}

impl Rewriter {
    pub fn new(rules: &[RewriteRule]) -> Result<Rewriter, RuleError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, r) in rules.iter().enumerate() {
            let mut pattern = r.pattern.as_str();
            let anchored = pattern.ends_with('$');
            if anchored {
                pattern = &pattern[..pattern.len() - 1];
            }
            let mut items = Vec::with_capacity(pattern.len());
            for ch in pattern.chars() {
                items.push(match ch {
                    'X' | 'x' => PatternItem::AnyDigit,
                    'Z' | 'z' => PatternItem::OneToNine,
                    'N' | 'n' => PatternItem::TwoToNine,
                    // ASCII checked by the guard, so the cast is exact.
                    c if c.is_ascii() && is_dial_char(c as u8) => PatternItem::Literal(c as u8),
                    ch => return Err(RuleError::InvalidPattern { index, ch }),
                });
            }
            if !r.prepend.bytes().all(is_dial_char) {
                return Err(RuleError::InvalidPrepend { index });
            }
            compiled.push(CompiledRule {
                items,
                anchored,
                strip: r.strip,
                prepend: r.prepend.clone(),
            });
        }
        Ok(Rewriter { rules: compiled })
    }

    /// Apply the first matching rule.
    pub fn rewrite(&self, number: &str) -> Rewritten {
        let b = number.as_bytes();
        for (i, r) in self.rules.iter().enumerate() {
            let fits = b.len() >= r.items.len()
                && r.items.iter().zip(b).all(|(p, c)| p.matches(*c))
                && (!r.anchored || b.len() == r.items.len())
                && r.strip <= b.len();
            // `strip` must fall on a char boundary; numbers are ASCII after normalisation, and
            // a non-ASCII input simply does not match.
            if fits && let Some(rest) = number.get(r.strip..) {
                return Rewritten {
                    number: format!("{}{rest}", r.prepend),
                    rule: Some(i),
                };
            }
        }
        Rewritten {
            number: number.to_owned(),
            rule: None,
        }
    }
}

/// A received number normalised after the trunk's inbound rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromTrunk {
    pub number: Number,
    /// Index of the `from_trunk` rule applied, if any.
    pub rule: Option<usize>,
}

/// The compiled [`TrunkNumbering`] of one trunk.
#[derive(Debug, Clone)]
pub struct TrunkRewriter {
    to_trunk: Rewriter,
    from_trunk: Rewriter,
    context: NationalContext,
}

impl TrunkRewriter {
    /// `default_context` applies when the trunk has none of its own.
    pub fn new(
        cfg: &TrunkNumbering,
        default_context: &NationalContext,
    ) -> Result<TrunkRewriter, RuleError> {
        let context = cfg
            .context
            .clone()
            .unwrap_or_else(|| default_context.clone());
        context.validate()?;
        Ok(TrunkRewriter {
            to_trunk: Rewriter::new(&cfg.to_trunk)?,
            from_trunk: Rewriter::new(&cfg.from_trunk)?,
            context,
        })
    }

    /// The dial string for the trunk. Use [`Authorized::number`] for the called party.
    pub fn to_trunk(&self, number: &E164) -> Result<Rewritten, NumberError> {
        let out = self.to_trunk.rewrite(number.as_str());
        if out.number.is_empty() {
            return Err(NumberError::Empty);
        }
        Ok(out)
    }

    /// Normalise a number received from the trunk (Request-URI or From user part, `tel:` URI,
    /// with separators): clean, rewrite, then [`normalize`] in the trunk's context.
    pub fn from_trunk(&self, raw: &str) -> Result<FromTrunk, NumberError> {
        let ds = dial_string(raw)?;
        let mut cleaned = String::with_capacity(ds.digits.len() + 1);
        if ds.global {
            cleaned.push('+');
        } else if let Some(prefix) = &ds.context_prefix {
            cleaned.push('+');
            cleaned.push_str(prefix);
        }
        cleaned.push_str(&ds.digits);
        let rewritten = self.from_trunk.rewrite(&cleaned);
        Ok(FromTrunk {
            number: normalize(&rewritten.number, &self.context)?,
            rule: rewritten.rule,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Dial-out policy
// ---------------------------------------------------------------------------------------------

/// Dial-out policy as configuration data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialOutConfig {
    /// Country code of the deployment, without `+`. Other codes are "international".
    pub home_country_code: String,
    /// E.164 prefixes allowed (`"+44"`, `"+"` for everywhere).
    pub allow: Vec<String>,
    /// E.164 prefixes denied.
    pub deny: Vec<String>,
    /// Denied unless a longer or equal allow rule says otherwise. Defaults to
    /// [`DEFAULT_PREMIUM_PREFIXES`].
    pub premium_prefixes: Vec<String>,
    /// Short codes always refused. Defaults to [`DEFAULT_EMERGENCY_NUMBERS`].
    pub emergency_numbers: Vec<String>,
}

impl DialOutConfig {
    /// Home country only, the default premium and emergency lists.
    pub fn new(home_country_code: impl Into<String>) -> DialOutConfig {
        DialOutConfig {
            home_country_code: home_country_code.into(),
            allow: Vec::new(),
            deny: Vec::new(),
            premium_prefixes: DEFAULT_PREMIUM_PREFIXES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            emergency_numbers: DEFAULT_EMERGENCY_NUMBERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// Where a deciding rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOrigin {
    /// `DialOutConfig::allow[i]`.
    Allow(usize),
    /// `DialOutConfig::deny[i]`.
    Deny(usize),
    /// `DialOutConfig::premium_prefixes[i]`.
    Premium(usize),
    /// `DialOutConfig::emergency_numbers[i]`.
    Emergency(usize),
    /// The implicit allow of the home country code.
    HomeCountry,
    /// The implicit deny of every other country (`+`).
    International,
    /// Not an E.164 number: extensions are not dialled out through trunks.
    NotE164,
    /// The input could not be normalised.
    InvalidNumber,
}

/// The rule that decided, for the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidingRule {
    /// The prefix (or emergency code) matched; empty for `NotE164`.
    pub prefix: String,
    pub origin: RuleOrigin,
}

/// Why dial-out was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// confer does not route emergency calls (see the module docs).
    Emergency,
    PremiumRate,
    International,
    /// An explicit deny rule.
    Denied,
    NotE164,
    InvalidNumber(NumberError),
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let RefusalReason::InvalidNumber(e) = self {
            return write!(f, "invalid number: {e}");
        }
        f.write_str(match self {
            RefusalReason::InvalidNumber(_) => "invalid number",
            RefusalReason::Emergency => {
                "emergency numbers are not routed by confer; use a phone line"
            }
            RefusalReason::PremiumRate => "premium-rate number",
            RefusalReason::International => "international destination not allowed",
            RefusalReason::Denied => "destination denied by policy",
            RefusalReason::NotE164 => "not a public (E.164) number",
        })
    }
}

/// A refused dial-out: what, why, and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub number: String,
    pub reason: RefusalReason,
    pub rule: DecidingRule,
}

impl fmt::Display for Refusal {
    /// Without the number, so it can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dial-out refused: {} (rule {:?}",
            self.reason, self.rule.origin
        )?;
        if !self.rule.prefix.is_empty() {
            write!(f, " {}", self.rule.prefix)?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for Refusal {}

/// A number the dial-out policy allowed. Only [`DialOutPolicy::decide`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    number: E164,
    rule: DecidingRule,
}

impl Authorized {
    pub fn number(&self) -> &E164 {
        &self.number
    }

    pub fn rule(&self) -> &DecidingRule {
        &self.rule
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Allow,
    Deny(RefusalReason),
}

#[derive(Debug, Clone)]
struct PolicyRule {
    prefix: String,
    action: Action,
    origin: RuleOrigin,
    /// Tie-break at equal prefix length: higher wins.
    rank: u8,
}

/// The compiled dial-out policy.
///
/// Longest matching prefix wins. At equal length an explicit deny beats an explicit allow
/// (fail closed), which beats the defaults (so `allow = ["+1900"]` does unblock +1900).
#[derive(Debug, Clone)]
pub struct DialOutPolicy {
    home: String,
    rules: Vec<PolicyRule>,
    emergency: Vec<String>,
}

fn valid_prefix(p: &str) -> bool {
    p.strip_prefix('+').is_some_and(|d| {
        d.len() <= MAX_E164_DIGITS && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

fn push_prefix_rules(
    rules: &mut Vec<PolicyRule>,
    list: &'static str,
    entries: &[String],
    (action, rank): (Action, u8),
    origin: fn(usize) -> RuleOrigin,
) -> Result<(), RuleError> {
    for (index, value) in entries.iter().enumerate() {
        if !valid_prefix(value) {
            return Err(RuleError::InvalidPrefix {
                list,
                index,
                value: value.clone(),
            });
        }
        rules.push(PolicyRule {
            prefix: value.clone(),
            action: action.clone(),
            origin: origin(index),
            rank,
        });
    }
    Ok(())
}

impl DialOutPolicy {
    pub fn new(cfg: &DialOutConfig) -> Result<DialOutPolicy, RuleError> {
        let cc = &cfg.home_country_code;
        if cc.is_empty()
            || cc.len() > 3
            || cc.starts_with('0')
            || !cc.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(RuleError::InvalidCountryCode);
        }
        let home = format!("+{cc}");
        let mut rules = vec![
            PolicyRule {
                prefix: "+".to_owned(),
                action: Action::Deny(RefusalReason::International),
                origin: RuleOrigin::International,
                rank: 0,
            },
            PolicyRule {
                prefix: home.clone(),
                action: Action::Allow,
                origin: RuleOrigin::HomeCountry,
                rank: 1,
            },
        ];
        push_prefix_rules(
            &mut rules,
            "premium_prefixes",
            &cfg.premium_prefixes,
            (Action::Deny(RefusalReason::PremiumRate), 2),
            RuleOrigin::Premium,
        )?;
        push_prefix_rules(
            &mut rules,
            "allow",
            &cfg.allow,
            (Action::Allow, 3),
            RuleOrigin::Allow,
        )?;
        push_prefix_rules(
            &mut rules,
            "deny",
            &cfg.deny,
            (Action::Deny(RefusalReason::Denied), 4),
            RuleOrigin::Deny,
        )?;
        for (index, value) in cfg.emergency_numbers.iter().enumerate() {
            if value.is_empty() || value.len() > 6 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RuleError::InvalidEmergencyNumber {
                    list: "emergency_numbers",
                    index,
                    value: value.clone(),
                });
            }
        }
        Ok(DialOutPolicy {
            home,
            rules,
            emergency: cfg.emergency_numbers.clone(),
        })
    }

    /// Normalise `input` in `ctx` and decide. Emergency codes are recognised before
    /// normalisation (`+49 112` is too short to be E.164 but is still an emergency call), and a
    /// number that cannot be normalised is refused as [`RefusalReason::InvalidNumber`].
    pub fn decide_input(&self, input: &str, ctx: &NationalContext) -> Result<Authorized, Refusal> {
        let shown: String = input.trim().chars().take(64).collect();
        if let Ok(ds) = dial_string(input)
            && let Some(i) = self.emergency_index(&ds, ctx)
        {
            return Err(self.emergency_refusal(&shown, i));
        }
        match normalize(input, ctx) {
            Ok(n) => self.decide(&n),
            Err(e) => Err(Refusal {
                number: shown,
                reason: RefusalReason::InvalidNumber(e),
                rule: DecidingRule {
                    prefix: String::new(),
                    origin: RuleOrigin::InvalidNumber,
                },
            }),
        }
    }

    /// The emergency code a dial string reaches, dialled locally or with the home country code
    /// (`+49112`, `0049112`, `tel:112;phone-context=+49`).
    fn emergency_index(&self, ds: &DialString, ctx: &NationalContext) -> Option<usize> {
        let home_cc = self.home.get(1..)?;
        let global: Option<String> = if ds.global {
            Some(ds.digits.clone())
        } else if let Some(prefix) = &ds.context_prefix {
            Some(format!("{prefix}{}", ds.digits))
        } else if !ctx.international_prefix.is_empty() {
            ds.digits
                .strip_prefix(ctx.international_prefix.as_str())
                .map(str::to_owned)
        } else {
            None
        };
        let local = match &global {
            Some(g) => g.strip_prefix(home_cc)?,
            None => ds.digits.as_str(),
        };
        self.emergency.iter().position(|e| e == local)
    }

    /// Decide whether confer may call `number` through a trunk.
    pub fn decide(&self, number: &Number) -> Result<Authorized, Refusal> {
        let e164 = match number {
            Number::Extension(x) => {
                if let Some(i) = self.emergency.iter().position(|e| e == x.as_str()) {
                    return Err(self.emergency_refusal(x.as_str(), i));
                }
                return Err(Refusal {
                    number: x.as_str().to_owned(),
                    reason: RefusalReason::NotE164,
                    rule: DecidingRule {
                        prefix: String::new(),
                        origin: RuleOrigin::NotE164,
                    },
                });
            }
            Number::E164(e) => e,
        };
        self.decide_e164(e164)
    }

    /// [`DialOutPolicy::decide`] for a number already known to be E.164.
    pub fn decide_e164(&self, number: &E164) -> Result<Authorized, Refusal> {
        // An emergency code dialled with the home country code (+49112, +1911).
        if let Some(local) = number.as_str().strip_prefix(self.home.as_str())
            && let Some(i) = self.emergency.iter().position(|e| e == local)
        {
            return Err(self.emergency_refusal(number.as_str(), i));
        }
        let n = number.as_str();
        // The implicit "+" rule matches every E.164 number, so there is always a winner.
        let best = self
            .rules
            .iter()
            .filter(|r| n.starts_with(r.prefix.as_str()))
            .max_by_key(|r| (r.prefix.len(), r.rank));
        let Some(best) = best else {
            return Err(Refusal {
                number: n.to_owned(),
                reason: RefusalReason::International,
                rule: DecidingRule {
                    prefix: "+".to_owned(),
                    origin: RuleOrigin::International,
                },
            });
        };
        let rule = DecidingRule {
            prefix: best.prefix.clone(),
            origin: best.origin,
        };
        match &best.action {
            Action::Allow => Ok(Authorized {
                number: number.clone(),
                rule,
            }),
            Action::Deny(reason) => Err(Refusal {
                number: n.to_owned(),
                reason: reason.clone(),
                rule,
            }),
        }
    }

    fn emergency_refusal(&self, number: &str, index: usize) -> Refusal {
        Refusal {
            number: number.to_owned(),
            reason: RefusalReason::Emergency,
            rule: DecidingRule {
                prefix: self.emergency.get(index).cloned().unwrap_or_default(),
                origin: RuleOrigin::Emergency(index),
            },
        }
    }
}

//! Personal data and secrets, found and taken out of everything the service
//! writes outside a request: logs, audit details, problem details, a dead
//! job's `last_error`, webhook payloads.
//!
//! Detection is a table of [`DETECTORS`]: a pattern per format (several per
//! type where formats differ) and a judge that validates a candidate (Luhn for
//! cards, the IBAN checksum, address parsers) and gives its confidence. A
//! [`Redactor`] compiles the detectors of the configured types once; a
//! [`RegexSet`] pass tells which of them can match a text at all, so text
//! without personal data costs one scan. Overlapping detections are merged,
//! so that no part of a value survives because another detector claimed a
//! piece of it first.

use std::borrow::Cow;
use std::io::{self, Write};
use std::str::FromStr;

use hmac::{Hmac, Mac};
use regex::{Regex, RegexSet};
use serde_json::Value;
use sha2::Sha256;

use crate::config::{PiiRedactionConfig, PiiStrategy, PiiType};

/// Bytes of the `hash` strategy's key drawn when none is configured, and the
/// least a configured key may have.
pub const MIN_HASH_KEY_BYTES: usize = 16;

/// Hex digits of the keyed hash shown by the `hash` strategy (64 bits: enough
/// to correlate, too few to matter as a fingerprint of the key).
const HASH_HEX_DIGITS: usize = 16;

/// What `mask` and `hash` write. A detection inside one is dropped: the
/// token's type name is a label (`[phone:3340…]` reads like `phone: 3340…`),
/// and redacting twice must change nothing. A token cannot carry personal
/// data: it holds a type name or sixteen hex digits.
const TOKEN_PATTERN: &str = r"\[(?:REDACTED:[a-z_]+|[a-z_]+:[0-9a-f]{16})\]";

/// A validated candidate: how much of it is the value, how sure we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    /// Bytes of the candidate that are the value (a prefix of it).
    len: usize,
    /// 0 to 100.
    confidence_percent: u8,
}

/// One way to find one type: a pattern (the value is capture group `v`, else
/// the whole match) and a judge of what it matched.
struct Detector {
    kind: PiiType,
    pattern: &'static str,
    judge: fn(&str) -> Option<Verdict>,
}

/// Labels before a value (`DOB:`, `passport no.`) make a pattern specific
/// enough to find values that would otherwise look like any number.
const DETECTORS: &[Detector] = &[
    Detector {
        kind: PiiType::Email,
        pattern: r"(?i)\b[a-z0-9][a-z0-9._%+-]*@(?:[a-z0-9-]+\.)+[a-z]{2,24}\b",
        judge: |v| sure(v, 95),
    },
    Detector {
        kind: PiiType::Phone,
        pattern: r"(?:^|[^0-9A-Za-z+])(?P<v>\+[1-9](?:[ .()-]{0,2}[0-9]){6,16})\b",
        judge: |v| phone_digits(v, 90),
    },
    Detector {
        kind: PiiType::Phone,
        pattern: r"(?P<v>(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4})\b",
        judge: |v| sure(v, 75),
    },
    Detector {
        kind: PiiType::Phone,
        pattern: r"\b0[1-9][0-9]{0,3}[ /-][0-9]{3,4}[ -]?[0-9]{3,4}\b",
        judge: |v| sure(v, 65),
    },
    Detector {
        kind: PiiType::Phone,
        pattern: r"(?i)\b(?:phone|tel|telephone|mobile|cell|fax)(?:\s*(?:no\.?|number|#))?\s*[:.]?\s*(?P<v>\+?[0-9][0-9 ().-]{5,20}[0-9])",
        judge: |v| phone_digits(v, 95),
    },
    Detector {
        kind: PiiType::Ssn,
        pattern: r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
        judge: |v| ssn(v, 85),
    },
    Detector {
        kind: PiiType::Ssn,
        pattern: r"(?i)\b(?:ssn|social\s+security(?:\s+(?:no\.?|number))?)\s*[:#]?\s*(?P<v>[0-9]{3}[ -]?[0-9]{2}[ -]?[0-9]{4})\b",
        judge: |v| ssn(v, 95),
    },
    Detector {
        kind: PiiType::CreditCard,
        pattern: r"\b[0-9](?:[ -]?[0-9]){12,18}\b",
        judge: card,
    },
    Detector {
        kind: PiiType::Iban,
        pattern: r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        judge: iban,
    },
    Detector {
        kind: PiiType::Ipv4,
        pattern: r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
        judge: |v| {
            let ip = std::net::Ipv4Addr::from_str(v).ok()?;
            public(std::net::IpAddr::V4(ip))
                .then(|| sure(v, 85))
                .flatten()
        },
    },
    Detector {
        kind: PiiType::Ipv6,
        pattern: r"(?i)(?:^|[^0-9a-z:.])(?P<v>(?:[0-9a-f]{0,4}:){2,7}(?:[0-9a-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?)",
        judge: ipv6,
    },
    Detector {
        kind: PiiType::MacAddress,
        pattern: r"(?i)\b(?:[0-9a-f]{2}(?::[0-9a-f]{2}){5}|[0-9a-f]{2}(?:-[0-9a-f]{2}){5}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4})\b",
        judge: |v| sure(v, 85),
    },
    Detector {
        kind: PiiType::DateOfBirth,
        pattern: r"(?i)\b(?:dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|birthday|born(?:\s+on)?)\s*[:=]?\s*(?P<v>[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}|[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}|[0-9]{1,2}\s+[a-z]{3,9}\.?,?\s+[0-9]{4}|[a-z]{3,9}\.?\s+[0-9]{1,2}(?:st|nd|rd|th)?,?\s+[0-9]{4})\b",
        judge: date_of_birth,
    },
    Detector {
        kind: PiiType::Passport,
        pattern: r"(?i)\bpassport(?:\s*(?:no\.?|number|num\.?|nr\.?|#))?(?:\s+is)?\s*[:#]?\s*(?P<v>[a-z0-9]{6,9})\b",
        judge: |v| at_least_digits(v, 5, 90),
    },
    Detector {
        kind: PiiType::NationalId,
        pattern: r"(?i)\b(?:national\s+(?:id(?:entity)?|insurance)(?:\s+(?:card|no\.?|number))?|(?:personal|citizen|identity|tax)\s+(?:id|number|no\.?)(?:\s+(?:no\.?|number))?|id\s+(?:no\.?|number)|nino|nin|tin|aadhaar|curp|dni|nie|bsn|cpf|personnummer)(?:\s+is)?\s*[:#]?\s*(?P<v>[a-z]{0,3}[0-9][a-z0-9]*(?:[ ./-][0-9][a-z0-9]*){0,4})\b",
        judge: |v| at_least_digits(v, 5, 85),
    },
    Detector {
        kind: PiiType::ApiKey,
        pattern: r"\b(?:(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,247}|gk\.[A-Za-z0-9_-]{1,64}\.[0-9a-f]{64})\b",
        judge: |v| sure(v, 95),
    },
    Detector {
        kind: PiiType::ApiKey,
        pattern: r"\b(?:xox[abposr]-[A-Za-z0-9-]{10,250}|sk-[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35})",
        judge: |v| sure(v, 90),
    },
    Detector {
        kind: PiiType::ApiKey,
        pattern: r#"(?i)\b(?:api[_-]?key|access[_-]?key(?:[_-]?id)?|secret(?:[_-]?key)?|client[_-]?secret|auth[_-]?token|access[_-]?token|refresh[_-]?token|token|password|passwd|pwd)\\?["']?\s*[:=]\s*\\?["']?(?P<v>[^\s"',;\\]{6,})"#,
        judge: labelled_secret,
    },
    Detector {
        kind: PiiType::Jwt,
        pattern: r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        judge: |v| sure(v, 95),
    },
    Detector {
        kind: PiiType::BearerToken,
        pattern: r"(?i)\b(?:bearer|authorization\s*:\s*(?:basic|token))\s+(?P<v>[A-Za-z0-9._~+/-]{8,}=*)",
        judge: token_like,
    },
    Detector {
        kind: PiiType::UrlCredentials,
        pattern: r#"(?i)\b[a-z][a-z0-9+.-]{0,15}://[^\s/?#@"'<>\\]+@[^\s/?#"'<>\\]+[^\s"'<>\\]*"#,
        judge: url_credentials,
    },
    Detector {
        kind: PiiType::PrivateKey,
        pattern: r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----|[A-Za-z0-9+/=\s\\:,-]*)",
        judge: |v| sure(v, 100),
    },
];

/// The whole candidate, at `confidence_percent`.
fn sure(v: &str, confidence_percent: u8) -> Option<Verdict> {
    Some(Verdict {
        len: v.len(),
        confidence_percent,
    })
}

fn digit_count(v: &str) -> usize {
    v.bytes().filter(u8::is_ascii_digit).count()
}

/// Phone numbers have 7 to 15 digits (E.164 allows up to 15); a greedy
/// match that ran into a following number is cut back.
fn phone_digits(v: &str, confidence_percent: u8) -> Option<Verdict> {
    let len = longest_valid_prefix(v, |s| {
        (7..=15).contains(&digit_count(s)) && s.ends_with(|c: char| c.is_ascii_digit())
    })?;
    Some(Verdict {
        len,
        confidence_percent,
    })
}

fn at_least_digits(v: &str, digits: usize, confidence_percent: u8) -> Option<Verdict> {
    (digit_count(v) >= digits)
        .then(|| sure(v, confidence_percent))
        .flatten()
}

/// Area 000, 666 and 900 to 999, group 00 and serial 0000 are never issued.
fn ssn(v: &str, confidence_percent: u8) -> Option<Verdict> {
    let digits: Vec<u8> = v
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    let [a, b, c, d, e, f, g, h, i] = digits[..] else {
        return None;
    };
    let area = u32::from(a) * 100 + u32::from(b) * 10 + u32::from(c);
    let valid =
        area != 0 && area != 666 && area < 900 && (d, e) != (0, 0) && (f, g, h, i) != (0, 0, 0, 0);
    valid.then(|| sure(v, confidence_percent)).flatten()
}

/// The longest prefix of `v` (or `v` itself) that `valid` accepts, cut
/// where a group of letters or digits ends (before a space, a dash, a
/// bracket...): a greedy pattern can run into a following group, through
/// any separator its pattern allows (`+1 555 0100) 2026` for a phone).
fn longest_valid_prefix(v: &str, valid: impl Fn(&str) -> bool) -> Option<usize> {
    if valid(v) {
        return Some(v.len());
    }
    v.char_indices()
        .rev()
        .filter(|&(i, c)| {
            !c.is_ascii_alphanumeric() && v[..i].ends_with(|p: char| p.is_ascii_alphanumeric())
        })
        .map(|(i, _)| i)
        .find(|&i| valid(&v[..i]))
}

/// Luhn-valid 13 to 19 digits; sure when the issuer prefix is one that card
/// networks use, unsure (below the default threshold) otherwise, since any
/// tenth of long numbers passes Luhn by chance.
fn card(v: &str) -> Option<Verdict> {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let len = longest_valid_prefix(v, |s| {
        let d = digits(s);
        (13..=19).contains(&d.len()) && luhn::valid(&d)
    })?;
    let d = digits(&v[..len]);
    let known_issuer = [
        "4", "51", "52", "53", "54", "55", "34", "37", "6011", "65", "35", "36", "38", "30", "62",
    ]
    .iter()
    .any(|p| d.starts_with(p))
        || d.get(..4)
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| (2221..=2720).contains(&p));
    Some(Verdict {
        len,
        confidence_percent: if known_issuer { 95 } else { 40 },
    })
}

fn iban(v: &str) -> Option<Verdict> {
    let len = longest_valid_prefix(v, |s| iban::Iban::from_str(&s.replace(' ', "")).is_ok())?;
    Some(Verdict {
        len,
        confidence_percent: 95,
    })
}

/// At least two groups of hex digits: `e::` in `Note::` and `::` parse, but
/// are not addresses anyone wrote.
fn ipv6(v: &str) -> Option<Verdict> {
    let ip = std::net::Ipv6Addr::from_str(v).ok()?;
    let groups = v.split([':', '.']).filter(|g| !g.is_empty()).count();
    (groups >= 2 && public(std::net::IpAddr::V6(ip)))
        .then(|| sure(v, 85))
        .flatten()
}

/// Only public addresses can point at a person: loopback, private,
/// link-local, documentation and the other special ranges name machines
/// (and are the evidence in an SSRF refusal), so they are left alone.
fn public(ip: std::net::IpAddr) -> bool {
    crate::outbound::forbidden_range(ip).is_none()
}

fn date_of_birth(v: &str) -> Option<Verdict> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = v.to_ascii_lowercase();
    let words_ok = lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty() && !["st", "nd", "rd", "th"].contains(w))
        .all(|w| MONTHS.iter().any(|m| w.starts_with(m)));
    words_ok.then(|| sure(v, 90)).flatten()
}

/// A value after `password=` or `token:`: sure when it has a digit or a
/// symbol or is long, unsure when it is a short word (`password: required`).
fn labelled_secret(v: &str) -> Option<Verdict> {
    let wordlike = v.chars().all(|c| c.is_ascii_alphabetic()) && v.len() < 12;
    sure(v, if wordlike { 30 } else { 80 })
}

/// A token after `Bearer`: sure when it has a digit or a symbol or is long,
/// unsure when it is a word (`the bearer instrument`).
fn token_like(v: &str) -> Option<Verdict> {
    let wordlike = v.chars().all(|c| c.is_ascii_alphabetic()) && v.len() < 20;
    sure(v, if wordlike { 30 } else { 90 })
}

/// A user and password (`user:pass@`) is sure; a user or token alone
/// (`token@host`) slightly less.
fn url_credentials(v: &str) -> Option<Verdict> {
    let authority = v.split_once("://")?.1;
    let userinfo = authority.split_once('@')?.0;
    if userinfo.is_empty() {
        return None;
    }
    sure(v, if userinfo.contains(':') { 95 } else { 80 })
}

/// A detected value: where it is in the text, what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// The type (of the longest part, when detections overlapped).
    pub kind: PiiType,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset after the last byte.
    pub end: usize,
    /// 0 to 100 (the highest of merged parts).
    pub confidence_percent: u8,
}

/// Why a redactor could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiiError {
    /// `hash_key_env` names a variable that is not set.
    #[error("security.pii_redaction.hash_key_env: environment variable {var} is not set")]
    KeyUnset {
        /// The variable.
        var: String,
    },
    /// The variable's value is too short to be a key.
    #[error(
        "security.pii_redaction.hash_key_env: {var} holds {len} bytes, at least {MIN_HASH_KEY_BYTES} are needed"
    )]
    KeyShort {
        /// The variable.
        var: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// Finds and replaces personal data; built once from the configuration and
/// shared by the logger, the store and the server.
pub struct Redactor {
    enabled: bool,
    strategy: PiiStrategy,
    min_confidence_percent: u8,
    hash_key: Vec<u8>,
    /// One entry per active detector, in `detectors` order.
    set: RegexSet,
    detectors: Vec<(&'static Detector, Regex)>,
    /// What the strategies write, so that redacting twice changes nothing.
    tokens: Regex,
}

impl std::fmt::Debug for Redactor {
    // The key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("enabled", &self.enabled)
            .field("strategy", &self.strategy)
            .field("min_confidence_percent", &self.min_confidence_percent)
            .field("detectors", &self.detectors.len())
            .finish_non_exhaustive()
    }
}

impl Default for Redactor {
    /// Every type, masked, at the default threshold: what an unconfigured
    /// store or test gets.
    fn default() -> Self {
        Redactor::with_key(&PiiRedactionConfig::default(), random_key())
    }
}

/// One shared [`Redactor::default`]: compiled once per process, for stores
/// opened without a configured one.
pub fn default_redactor() -> std::sync::Arc<Redactor> {
    static DEFAULT: std::sync::OnceLock<std::sync::Arc<Redactor>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| std::sync::Arc::new(Redactor::default()))
        .clone()
}

fn random_key() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

impl Redactor {
    /// The redactor `config` describes, its hash key read through `env` (a
    /// random one when `hash_key_env` is unset).
    pub fn new(
        config: &PiiRedactionConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Redactor, PiiError> {
        let key = match &config.hash_key_env {
            None => random_key(),
            Some(var) => {
                let value = env(var).ok_or_else(|| PiiError::KeyUnset { var: var.clone() })?;
                if value.len() < MIN_HASH_KEY_BYTES {
                    return Err(PiiError::KeyShort {
                        var: var.clone(),
                        len: value.len(),
                    });
                }
                value.into_bytes()
            }
        };
        Ok(Redactor::with_key(config, key))
    }

    /// The redactor `config` describes, hashing with `key`.
    pub fn with_key(config: &PiiRedactionConfig, key: Vec<u8>) -> Redactor {
        let detectors: Vec<(&'static Detector, Regex)> = DETECTORS
            .iter()
            .filter(|d| config.enabled && config.types.contains(&d.kind))
            .map(|d| (d, compile(d.pattern)))
            .collect();
        let set = RegexSet::new(detectors.iter().map(|(d, _)| d.pattern))
            .expect("the detector patterns compile, as the unit tests check");
        Redactor {
            enabled: config.enabled && !detectors.is_empty(),
            strategy: config.strategy,
            min_confidence_percent: config.min_confidence_percent,
            hash_key: key,
            set,
            detectors,
            tokens: compile(TOKEN_PATTERN),
        }
    }

    /// The patterns of the configured detectors, for diagnostics and for
    /// the bench's peer (a sanitizer that replaces every match unvalidated).
    pub fn patterns(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.detectors.iter().map(|(d, _)| d.pattern)
    }

    /// Every value in `text` at or above the threshold, in order, overlapping
    /// detections merged.
    pub fn detect(&self, text: &str) -> Vec<Detection> {
        if !self.enabled || text.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        for i in self.set.matches(text).iter() {
            let (detector, regex) = &self.detectors[i];
            let mut at = 0;
            // Each turn moves `at` forward by at least one character.
            while at < text.len() {
                let Some(caps) = regex.captures_at(text, at) else {
                    break;
                };
                let whole = caps.get(0).expect("group 0 is the match");
                let value = caps.name("v").unwrap_or(whole);
                match (detector.judge)(value.as_str()) {
                    Some(v)
                        if v.len > 0
                            && v.confidence_percent >= self.min_confidence_percent
                            && text.is_char_boundary(value.start() + v.len) =>
                    {
                        found.push(Detection {
                            kind: detector.kind,
                            start: value.start(),
                            end: value.start() + v.len,
                            confidence_percent: v.confidence_percent,
                        });
                        at = value.start() + v.len;
                    }
                    _ => {
                        // Not this type here; a match may still start inside
                        // the candidate (a number after a longer number).
                        let next = text[whole.start()..]
                            .chars()
                            .next()
                            .map_or(1, char::len_utf8);
                        at = whole.start() + next;
                    }
                }
            }
        }
        if text.contains('[') {
            let tokens: Vec<(usize, usize)> = self
                .tokens
                .find_iter(text)
                .map(|m| (m.start(), m.end()))
                .collect();
            found.retain(|d| !tokens.iter().any(|&(s, e)| d.start < e && s < d.end));
        }
        merge(found)
    }

    /// `text` with every detected value replaced by the strategy's form.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let found = self.detect(text);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for d in found {
            out.push_str(&text[at..d.start]);
            out.push_str(&self.replacement(d.kind, &text[d.start..d.end]));
            at = d.end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// `value` with every string (and every number whose digits are a value)
    /// redacted; keys are left as they are.
    pub fn redact_json(&self, value: Value) -> Value {
        if !self.enabled {
            return value;
        }
        match value {
            Value::String(s) => match self.redact(&s) {
                Cow::Borrowed(_) => Value::String(s),
                Cow::Owned(r) => Value::String(r),
            },
            Value::Number(n) => {
                let text = n.to_string();
                match self.redact(&text) {
                    Cow::Borrowed(_) => Value::Number(n),
                    Cow::Owned(r) => Value::String(r),
                }
            }
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, self.redact_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    fn replacement(&self, kind: PiiType, value: &str) -> String {
        match self.strategy {
            PiiStrategy::Mask => format!("[REDACTED:{}]", kind.name()),
            PiiStrategy::Hash => {
                let mut mac = Hmac::<Sha256>::new_from_slice(&self.hash_key)
                    .expect("HMAC takes a key of any length");
                mac.update(value.as_bytes());
                let digest = hex::encode(mac.finalize().into_bytes());
                format!("[{}:{}]", kind.name(), &digest[..HASH_HEX_DIGITS])
            }
            PiiStrategy::Remove => String::new(),
        }
    }
}

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the detector patterns compile, as the unit tests check")
}

/// Sorted by start; overlapping or touching-inside detections become one
/// covering all of them.
/// The merged detection takes the type of its longest part, the most
/// confident one among equals (`national id: 0740 6242 4525` is an id that
/// also looks like a phone number).
fn merge(mut found: Vec<Detection>) -> Vec<Detection> {
    found.sort_by_key(|d| (d.start, std::cmp::Reverse(d.end)));
    // Each merged detection with the (length, confidence) of the part that
    // named its type.
    let mut merged: Vec<(Detection, (usize, u8))> = Vec::with_capacity(found.len());
    for d in found {
        let rank = (d.end - d.start, d.confidence_percent);
        match merged.last_mut() {
            Some((last, best)) if d.start < last.end => {
                if rank > *best {
                    last.kind = d.kind;
                    *best = rank;
                }
                last.end = last.end.max(d.end);
                last.confidence_percent = last.confidence_percent.max(d.confidence_percent);
            }
            _ => merged.push((d, rank)),
        }
    }
    merged.into_iter().map(|(d, _)| d).collect()
}

/// Standard error through a [`Redactor`]: the logger's writer. The formatter
/// writes each event with one `write_all`, so every line is redacted whole,
/// fields and error messages alike.
pub struct RedactedStderr(pub std::sync::Arc<Redactor>);

/// One event's writer of [`RedactedStderr`].
pub struct RedactedWriter<'a>(&'a Redactor);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedWriter(&self.0)
    }
}

impl Write for RedactedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        io::stderr()
            .lock()
            .write_all(self.0.redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(strategy: PiiStrategy) -> Redactor {
        Redactor::with_key(
            &PiiRedactionConfig {
                strategy,
                ..PiiRedactionConfig::default()
            },
            b"a test key of 32 bytes, no more.".to_vec(),
        )
    }

    #[test]
    fn every_pattern_compiles_and_every_type_has_a_detector() {
        for d in DETECTORS {
            Regex::new(d.pattern).unwrap_or_else(|e| panic!("{:?}: {e}", d.kind));
        }
        for kind in PiiType::ALL {
            assert!(
                DETECTORS.iter().any(|d| d.kind == kind),
                "{kind:?} has no detector"
            );
        }
    }

    #[test]
    fn strategies_mask_hash_and_remove() {
        let text = "mail ada@example.com today";
        assert_eq!(
            redactor(PiiStrategy::Mask).redact(text),
            "mail [REDACTED:email] today"
        );
        assert_eq!(redactor(PiiStrategy::Remove).redact(text), "mail  today");
        let hashed = redactor(PiiStrategy::Hash).redact(text).into_owned();
        let again = redactor(PiiStrategy::Hash)
            .redact("ada@example.com")
            .into_owned();
        assert!(hashed.starts_with("mail [email:"), "{hashed}");
        assert!(
            hashed.contains(&again),
            "equal values hash alike: {hashed} {again}"
        );
        let other_key = Redactor::with_key(
            &PiiRedactionConfig {
                strategy: PiiStrategy::Hash,
                ..PiiRedactionConfig::default()
            },
            b"another key of thirty-two bytes!".to_vec(),
        );
        assert_ne!(other_key.redact("ada@example.com"), again);
    }

    #[test]
    fn a_greedy_match_is_cut_back_at_any_separator() {
        // The phone pattern runs through `) ` into the date, past 15 digits;
        // the cut must come at the bracket, not only at a space or dash.
        let r = redactor(PiiStrategy::Mask);
        assert_eq!(
            r.redact(" +100000000000) 2026-12-03"),
            " [REDACTED:phone]) 2026-12-03"
        );
    }

    #[test]
    fn validators_reject_lookalikes() {
        let r = redactor(PiiStrategy::Mask);
        for benign in [
            "card 4111 1111 1111 1112",
            "ssn 000-12-3456",
            "iban DE00370400440532013000",
            "addr 256.1.1.1",
            "bind 127.0.0.1 or 10.1.2.3, not fe80::1",
            "see std::io::Error and Note:: here",
            "at 12:30:45",
            "password: required",
            "the bearer instrument",
        ] {
            assert_eq!(r.detect(benign), vec![], "{benign}");
        }
    }

    #[test]
    fn overlapping_detections_merge_so_nothing_survives() {
        let r = redactor(PiiStrategy::Mask);
        assert_eq!(
            r.redact("fetch https://ada:s3cret@example.com/x now"),
            "fetch [REDACTED:url_credentials] now"
        );
        assert_eq!(
            r.redact("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"),
            "Authorization: Bearer [REDACTED:jwt]"
        );
    }

    #[test]
    fn a_greedy_candidate_is_cut_back_to_the_valid_value() {
        let r = redactor(PiiStrategy::Mask);
        assert_eq!(
            r.redact("card 4111 1111 1111 1111 22 ok"),
            "card [REDACTED:credit_card] 22 ok"
        );
        assert_eq!(
            r.redact("to DE89 3704 0044 0532 0130 00 OK"),
            "to [REDACTED:iban] OK"
        );
    }

    #[test]
    fn json_strings_and_numbers_are_redacted_keys_kept() {
        let r = redactor(PiiStrategy::Mask);
        let v =
            serde_json::json!({"email": "ada@example.com", "card": 4111111111111111_u64, "n": 3});
        assert_eq!(
            r.redact_json(v),
            serde_json::json!({"email": "[REDACTED:email]", "card": "[REDACTED:credit_card]", "n": 3})
        );
    }

    #[test]
    fn a_missing_or_short_hash_key_is_an_error_naming_the_variable() {
        let config = PiiRedactionConfig {
            hash_key_env: Some("PII_KEY".into()),
            ..PiiRedactionConfig::default()
        };
        assert_eq!(
            Redactor::new(&config, |_| None).unwrap_err().to_string(),
            "security.pii_redaction.hash_key_env: environment variable PII_KEY is not set"
        );
        assert_eq!(
            Redactor::new(&config, |_| Some("short".into()))
                .unwrap_err()
                .to_string(),
            "security.pii_redaction.hash_key_env: PII_KEY holds 5 bytes, at least 16 are needed"
        );
    }
}

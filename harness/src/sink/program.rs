//! The sink's fault program: which deliveries to fail, slow down or stall.
//! The JSON shape is parsed into raw structs that refuse unknown fields, then
//! validated into [`SinkProgram`], which cannot hold an out-of-range value.
//!
//! ```json
//! {"rules": [
//!   {"match": {"every": 3}, "effect": {"status": 503}},
//!   {"match": {"probability": 0.2}, "effect": {"delay_ms": 1500}},
//!   {"effect": {"stall_ms": 20000}}
//! ]}
//! ```
//!
//! The first rule whose conditions all hold applies; a delivery no rule
//! matches is answered 204.

use serde::Deserialize;

use crate::seed;

/// The most rules a program holds.
pub const MAX_RULES: usize = 64;

/// The longest delay or stall, in milliseconds.
pub const MAX_WAIT_MS: u64 = 120_000;

/// A validated program.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkProgram {
    /// The rules; the first that matches a delivery applies.
    pub rules: Vec<SinkRule>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkRule {
    /// Every `every`-th delivery (by the sink's sequence number), if given.
    pub every: Option<u64>,
    /// Deliveries picked with this probability, drawn from the seed, the
    /// rule's index and the sequence number, if given.
    pub probability: Option<f64>,
    /// What happens to a delivery the rule applies to.
    pub effect: SinkEffect,
}

/// What the sink does to a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkEffect {
    /// Answer this status (400 to 599) at once.
    Status(u16),
    /// Wait this long, then answer 204.
    Delay {
        /// The wait.
        delay_ms: u64,
    },
    /// Read the request, answer nothing for this long, then close the
    /// connection: the sender's timeout should end the attempt first.
    Stall {
        /// The wait.
        stall_ms: u64,
    },
}

impl SinkProgram {
    /// The effect for delivery `seq` under `seed`, and the index of the rule
    /// that chose it, if any rule matches.
    pub fn effect(&self, seq: u64, seed: u64) -> Option<(usize, SinkEffect)> {
        self.rules.iter().enumerate().find_map(|(i, rule)| {
            let every = rule.every.is_none_or(|n| n > 0 && seq.is_multiple_of(n));
            let picked = rule.probability.is_none_or(|p| {
                seed::unit(
                    seed,
                    &[b"sink", &(i as u64).to_be_bytes(), &seq.to_be_bytes()],
                ) < p
            });
            (every && picked).then_some((i, rule.effect))
        })
    }
}

/// Why a program was refused: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sink program: {path}: {message}")]
pub struct SinkProgramError {
    /// Where, as `rules[2].effect.status`.
    pub path: String,
    /// What.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgram {
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match", default)]
    when: RawMatch,
    effect: RawEffect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    every: Option<u64>,
    probability: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEffect {
    status: Option<u16>,
    delay_ms: Option<u64>,
    stall_ms: Option<u64>,
}

/// Parses and validates the JSON of a program.
pub fn parse(value: &serde_json::Value) -> Result<SinkProgram, SinkProgramError> {
    let raw: RawProgram = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        SinkProgramError {
            path: if path == "." { "<root>".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    let error = |path: String, message: &str| SinkProgramError {
        path,
        message: message.to_owned(),
    };
    if raw.rules.len() > MAX_RULES {
        return Err(error(
            "rules".into(),
            &format!("{} rules, at most {MAX_RULES}", raw.rules.len()),
        ));
    }
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, rule) in raw.rules.into_iter().enumerate() {
        if rule.when.every == Some(0) {
            return Err(error(
                format!("rules[{i}].match.every"),
                "must be at least 1",
            ));
        }
        if let Some(p) = rule.when.probability
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(error(
                format!("rules[{i}].match.probability"),
                "must be in (0, 1]",
            ));
        }
        let effect = match (
            rule.effect.status,
            rule.effect.delay_ms,
            rule.effect.stall_ms,
        ) {
            (Some(status), None, None) if (400..=599).contains(&status) => {
                SinkEffect::Status(status)
            }
            (Some(_), None, None) => {
                return Err(error(
                    format!("rules[{i}].effect.status"),
                    "must be 400 to 599",
                ));
            }
            (None, Some(delay_ms), None) if delay_ms <= MAX_WAIT_MS => {
                SinkEffect::Delay { delay_ms }
            }
            (None, None, Some(stall_ms)) if stall_ms <= MAX_WAIT_MS => {
                SinkEffect::Stall { stall_ms }
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(error(
                    format!("rules[{i}].effect"),
                    &format!("a wait is at most {MAX_WAIT_MS} ms"),
                ));
            }
            _ => {
                return Err(error(
                    format!("rules[{i}].effect"),
                    "give exactly one of status, delay_ms, stall_ms",
                ));
            }
        };
        rules.push(SinkRule {
            every: rule.when.every,
            probability: rule.when.probability,
            effect,
        });
    }
    Ok(SinkProgram { rules })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_first_matching_rule_applies() {
        let program = parse(&json!({"rules": [
            {"match": {"every": 2}, "effect": {"status": 503}},
            {"effect": {"delay_ms": 10}},
        ]}))
        .unwrap();
        assert_eq!(program.effect(2, 1), Some((0, SinkEffect::Status(503))));
        assert_eq!(
            program.effect(3, 1),
            Some((1, SinkEffect::Delay { delay_ms: 10 }))
        );
        assert_eq!(SinkProgram::default().effect(1, 1), None);
    }

    #[test]
    fn probability_draws_replay_by_seed() {
        let program = parse(&json!({"rules": [
            {"match": {"probability": 0.5}, "effect": {"stall_ms": 5}},
        ]}))
        .unwrap();
        let picks = |seed| {
            (1..=200)
                .filter(|&seq| program.effect(seq, seed).is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        let n = picks(7).len();
        assert!((60..=140).contains(&n), "{n} of 200 picked");
    }

    #[test]
    fn bad_programs_name_the_field() {
        let cases = [
            (
                json!({"rules": [{"effect": {"status": 200}}]}),
                "rules[0].effect.status",
            ),
            (json!({"rules": [{"effect": {}}]}), "rules[0].effect"),
            (
                json!({"rules": [{"effect": {"status": 500, "delay_ms": 1}}]}),
                "rules[0].effect",
            ),
            (
                json!({"rules": [{"match": {"every": 0}, "effect": {"status": 500}}]}),
                "rules[0].match.every",
            ),
            (
                json!({"rules": [{"match": {"probability": 1.5}, "effect": {"status": 500}}]}),
                "rules[0].match.probability",
            ),
            (
                json!({"rules": [{"effect": {"stall_ms": 999_999}}]}),
                "rules[0].effect",
            ),
            (
                json!({"rules": [{"effect": {"hang": 1}}]}),
                "rules[0].effect.hang",
            ),
            (json!({"rule": []}), "rule"),
        ];
        for (value, path) in cases {
            let e = parse(&value).unwrap_err();
            assert_eq!(e.path, path, "{value}: {e}");
        }
    }
}

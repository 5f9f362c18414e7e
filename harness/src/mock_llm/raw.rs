//! The program as written: serde structs that refuse unknown fields, with
//! every kind's effect fields flattened into one optional set so that a type
//! error names its field (`rules[0].effect.delay_ms`). `program.rs` turns them
//! into the typed [`Program`](super::Program) and back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::program::{EffectKind, InjectionField, Target, Violation};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a program object with `rules`")]
pub(crate) struct RawProgram {
    pub rules: Vec<RawRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule object with `effect` and optionally `name`, `match` and `times`"
)]
pub(crate) struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub when: Option<RawMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    pub effect: RawEffect,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a match object with any of `calls`, `every`, `offset`, `probability`, `prompt_contains`, `attempts`"
)]
pub(crate) struct RawMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<RawCalls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<RawCalls>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a call range object with `from` and/or `to`"
)]
pub(crate) struct RawCalls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an effect object with `kind` and that kind's fields"
)]
pub(crate) struct RawEffect {
    pub kind: EffectKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<InjectionField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
}

impl RawEffect {
    /// An effect of `kind` with no fields set.
    pub fn of(kind: EffectKind) -> RawEffect {
        RawEffect {
            kind,
            status: None,
            retry_after_s: None,
            retry_after: None,
            body: None,
            delay_ms: None,
            after_bytes: None,
            stall_ms: None,
            target: None,
            violation: None,
            payload: None,
            field: None,
            size_bytes: None,
            prompt_tokens: None,
            completion_tokens: None,
            total_tokens: None,
        }
    }

    /// The names of the fields that are set, in declaration order.
    pub fn present(&self) -> Vec<&'static str> {
        let fields = [
            ("status", self.status.is_some()),
            ("retry_after_s", self.retry_after_s.is_some()),
            ("retry_after", self.retry_after.is_some()),
            ("body", self.body.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("after_bytes", self.after_bytes.is_some()),
            ("stall_ms", self.stall_ms.is_some()),
            ("target", self.target.is_some()),
            ("violation", self.violation.is_some()),
            ("payload", self.payload.is_some()),
            ("field", self.field.is_some()),
            ("size_bytes", self.size_bytes.is_some()),
            ("prompt_tokens", self.prompt_tokens.is_some()),
            ("completion_tokens", self.completion_tokens.is_some()),
            ("total_tokens", self.total_tokens.is_some()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

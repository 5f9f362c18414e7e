//! The scenario file as written: serde structs that refuse unknown fields,
//! every field optional so that decoding never stops at a missing one and
//! validation (validate.rs) reports it at its parent's location.
//!
//! Free-form parts (fault `params`, SLO thresholds) decode into
//! `serde_json::Value` and are checked by what they belong to; `overrides`
//! is read from the located tree itself, so that a config error can point
//! into it.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A scenario file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScenario {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub system: Option<RawSystem>,
    #[serde(default)]
    pub load: Option<RawLoad>,
    #[serde(default)]
    pub faults: Option<Vec<RawFault>>,
    #[serde(default)]
    pub slo: Option<Vec<RawSlo>>,
    #[serde(default)]
    pub invariants: Option<Vec<RawInvariant>>,
    #[serde(default)]
    pub explore: Option<RawExplore>,
}

/// `explore:`, the fault space of `gauntlet explore`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExplore {
    #[serde(default)]
    pub max_faults: Option<u32>,
    #[serde(default)]
    pub max_at_once: Option<u32>,
    /// `[shortest, longest]`.
    #[serde(default, rename = "for")]
    pub duration: Option<Vec<String>>,
    #[serde(default)]
    pub space: Option<Vec<RawTemplate>>,
}

/// One fault kind of an explore space.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTemplate {
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// `[shortest, longest]`, over the section's own.
    #[serde(default, rename = "for")]
    pub duration: Option<Vec<String>>,
    #[serde(default)]
    pub params: Option<Value>,
}

/// `system:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSystem {
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub config: Option<String>,
    /// Read from the tree (see the module comment); declared so that it is
    /// not an unknown field.
    #[serde(default)]
    #[allow(dead_code)]
    pub overrides: Option<IgnoredAny>,
}

/// `system.redis:`, with `store: redis`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    #[serde(default)]
    pub appendonly: Option<bool>,
}

/// `load:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLoad {
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub stages: Option<Vec<RawStage>>,
    #[serde(default)]
    pub mix: Option<RawMix>,
    #[serde(default)]
    pub tenants: Option<RawTenants>,
    #[serde(default)]
    pub idempotency_reuse: Option<f64>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub request_timeout: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub attack: Option<RawAttack>,
    #[serde(default)]
    pub rotation: Option<RawRotation>,
    #[serde(default)]
    pub webhooks: Option<RawWebhooks>,
    #[serde(default)]
    pub personal_data: Option<f64>,
}

/// `load.webhooks`: jobs that carry a webhook.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhooks {
    #[serde(default)]
    pub share: Option<f64>,
    #[serde(default)]
    pub forbidden: Option<f64>,
}

/// `load.rotation`: a client that rotates its key mid-run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRotation {
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub probe_every: Option<String>,
}

/// `load.attack`: a brute-force attacker beside the load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAttack {
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub guesses: Option<u32>,
    #[serde(default)]
    pub probe_every: Option<String>,
}

/// One stage of a staged load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStage {
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub from: Option<f64>,
    #[serde(default)]
    pub to: Option<f64>,
}

/// `load.mix`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMix {
    #[serde(default)]
    pub tasks: Option<u32>,
    #[serde(default)]
    pub jobs: Option<u32>,
    #[serde(default)]
    pub reads: Option<u32>,
    #[serde(default)]
    pub dlq: Option<u32>,
    #[serde(default)]
    pub oversized: Option<u32>,
    #[serde(default)]
    pub slow: Option<u32>,
    #[serde(default)]
    pub no_key: Option<u32>,
    #[serde(default)]
    pub unknown_key: Option<u32>,
    #[serde(default)]
    pub expired_key: Option<u32>,
    #[serde(default)]
    pub forbidden: Option<u32>,
    #[serde(default)]
    pub roles: Option<u32>,
}

/// `load.tenants`: a count or a list.
#[derive(Debug)]
pub(crate) enum RawTenants {
    Count(i64),
    List(Vec<RawTenant>),
}

/// One tenant of a list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub budget_tokens: Option<u64>,
    #[serde(default)]
    pub role: Option<String>,
}

impl<'de> Deserialize<'de> for RawTenants {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TenantsVisitor;

        impl<'de> Visitor<'de> for TenantsVisitor {
            type Value = RawTenants;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of tenants or a list of tenants")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTenants, E> {
                Ok(RawTenants::Count(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTenants, E> {
                Ok(RawTenants::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            // A tombstoned (failed) node decodes as unit.
            fn visit_unit<E: de::Error>(self) -> Result<RawTenants, E> {
                Ok(RawTenants::List(Vec::new()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawTenants, A::Error> {
                let mut tenants = Vec::new();
                while let Some(tenant) = seq.next_element::<RawTenant>()? {
                    tenants.push(tenant);
                }
                Ok(RawTenants::List(tenants))
            }
        }

        deserializer.deserialize_any(TenantsVisitor)
    }
}

/// One fault of the timeline.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFault {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub params: Option<Value>,
}

/// One SLO. Thresholds are durations or numbers depending on the metric.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlo {
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub max: Option<Value>,
    #[serde(default)]
    pub min: Option<Value>,
    #[serde(default)]
    pub error_rate: Option<f64>,
}

/// One invariant: a bare name, or a mapping of one key (the name) to its
/// parameters.
#[derive(Debug)]
pub(crate) struct RawInvariant {
    pub name: String,
    /// Whether it was written as a one-key mapping.
    pub with_params: bool,
    pub params: RawInvariantParams,
}

/// The parameters an invariant takes, decoded by the invariant's name.
#[derive(Debug)]
pub(crate) enum RawInvariantParams {
    NoLostJobs(RawNoLostJobs),
    AllowedStatuses(RawAllowedStatuses),
    ReadyReflectsFaults(RawReadyReflectsFaults),
    ShedFast(RawShedFast),
    DegradationGraceful(RawDegradationGraceful),
    /// Any other name: whatever was written (null or `{}` when nothing was).
    Other(Value),
}

/// `no_lost_jobs`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNoLostJobs {
    #[serde(default)]
    pub settle: Option<String>,
}

/// `allowed_statuses`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllowedStatuses {
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
}

/// `ready_reflects_faults`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReadyReflectsFaults {
    #[serde(default)]
    pub faults: Option<Vec<String>>,
    #[serde(default)]
    pub within: Option<String>,
}

/// `shed_fast`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShedFast {
    #[serde(default)]
    pub within: Option<String>,
}

/// `degradation_graceful`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDegradationGraceful {
    #[serde(default)]
    pub reaches: Option<String>,
    #[serde(default)]
    pub within: Option<String>,
}

impl RawInvariantParams {
    fn none(name: &str) -> RawInvariantParams {
        match name {
            "no_lost_jobs" => RawInvariantParams::NoLostJobs(RawNoLostJobs::default()),
            "allowed_statuses" => {
                RawInvariantParams::AllowedStatuses(RawAllowedStatuses::default())
            }
            "ready_reflects_faults" => {
                RawInvariantParams::ReadyReflectsFaults(RawReadyReflectsFaults::default())
            }
            "shed_fast" => RawInvariantParams::ShedFast(RawShedFast::default()),
            "degradation_graceful" => {
                RawInvariantParams::DegradationGraceful(RawDegradationGraceful::default())
            }
            _ => RawInvariantParams::Other(Value::Null),
        }
    }
}

impl<'de> Deserialize<'de> for RawInvariant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InvariantVisitor;

        impl<'de> Visitor<'de> for InvariantVisitor {
            type Value = RawInvariant;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an invariant name, or a mapping of one name to its parameters")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawInvariant, E> {
                Ok(RawInvariant {
                    name: v.to_owned(),
                    with_params: false,
                    params: RawInvariantParams::none(v),
                })
            }

            // A tombstoned (failed) node decodes as unit; its error is reported.
            fn visit_unit<E: de::Error>(self) -> Result<RawInvariant, E> {
                Ok(RawInvariant {
                    name: String::new(),
                    with_params: false,
                    params: RawInvariantParams::Other(Value::Null),
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawInvariant, A::Error> {
                let entries = map.size_hint().unwrap_or(0);
                if entries != 1 {
                    return Err(de::Error::custom(format!(
                        "an invariant with parameters is a mapping of one key, its name, found {entries} keys"
                    )));
                }
                let Some(name) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("expected an invariant name"));
                };
                let params = match name.as_str() {
                    "no_lost_jobs" => RawInvariantParams::NoLostJobs(
                        map.next_value::<Option<RawNoLostJobs>>()?
                            .unwrap_or_default(),
                    ),
                    "allowed_statuses" => RawInvariantParams::AllowedStatuses(
                        map.next_value::<Option<RawAllowedStatuses>>()?
                            .unwrap_or_default(),
                    ),
                    "ready_reflects_faults" => RawInvariantParams::ReadyReflectsFaults(
                        map.next_value::<Option<RawReadyReflectsFaults>>()?
                            .unwrap_or_default(),
                    ),
                    "shed_fast" => RawInvariantParams::ShedFast(
                        map.next_value::<Option<RawShedFast>>()?.unwrap_or_default(),
                    ),
                    "degradation_graceful" => RawInvariantParams::DegradationGraceful(
                        map.next_value::<Option<RawDegradationGraceful>>()?
                            .unwrap_or_default(),
                    ),
                    _ => RawInvariantParams::Other(map.next_value::<Value>()?),
                };
                Ok(RawInvariant {
                    name,
                    with_params: true,
                    params,
                })
            }
        }

        deserializer.deserialize_any(InvariantVisitor)
    }
}

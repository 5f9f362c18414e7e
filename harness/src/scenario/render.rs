//! A validated scenario written back as a scenario file: what `gauntlet
//! explore` leaves as `minimal.yaml` and `original.yaml`. The file is made
//! of the model, not of the text it came from, so it holds exactly what
//! runs; parsing it gives the same scenario back (a test holds every file
//! of `scenarios/` to that), except that the configuration is named by
//! `config` and no `explore:` section is written.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator::config::{format_duration, format_size};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::model::*;

#[derive(Serialize)]
struct File<'a> {
    name: &'a str,
    description: &'a str,
    seed: u64,
    system: SystemOut<'a>,
    load: LoadOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    faults: Vec<FaultOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    slo: Vec<SloOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    invariants: Vec<Value>,
}

#[derive(Serialize)]
struct SystemOut<'a> {
    #[serde(skip_serializing_if = "is_one")]
    replicas: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<RedisOut>,
    config: &'a str,
}

#[derive(Serialize)]
struct RedisOut {
    appendonly: bool,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Fields in the order FORMAT.md gives them, absent ones left out.
#[derive(Serialize)]
struct LoadOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stages: Option<Vec<StageOut>>,
    mix: BTreeMap<&'static str, u32>,
    tenants: Vec<TenantOut>,
    idempotency_reuse: f64,
    max_in_flight: u32,
    request_timeout: String,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    attack: Option<AttackOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<RotationOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhooks: Option<WebhooksOut>,
    #[serde(skip_serializing_if = "is_zero")]
    personal_data: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

#[derive(Serialize)]
struct WebhooksOut {
    share: f64,
    forbidden: f64,
}

#[derive(Serialize)]
struct RotationOut {
    at: String,
    probe_every: String,
}

#[derive(Serialize)]
struct AttackOut {
    at: String,
    guesses: u32,
    probe_every: String,
}

#[derive(Serialize)]
struct StageOut {
    #[serde(rename = "for")]
    duration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<f64>,
}

#[derive(Serialize)]
struct TenantOut {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_tokens: Option<u64>,
    role: String,
}

#[derive(Serialize)]
struct FaultOut {
    name: String,
    at: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    target: &'static str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
}

#[derive(Serialize)]
struct SloOut {
    metric: String,
    window: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_rate: Option<f64>,
}

/// The scenario as a file whose `system.config` is `config` (a name under
/// `fixtures/configs`, or a path relative to the file ending in `.yaml`,
/// which should hold `scenario.system.config_yaml`).
pub fn render(scenario: &Scenario, config: &str) -> String {
    let file = File {
        name: &scenario.name,
        description: &scenario.description,
        seed: scenario.seed,
        system: SystemOut {
            replicas: scenario.system.replicas,
            store: match scenario.system.store {
                StoreKind::Sqlite => None,
                StoreKind::Redis { .. } => Some("redis"),
            },
            redis: match scenario.system.store {
                StoreKind::Sqlite => None,
                StoreKind::Redis { appendonly } => Some(RedisOut { appendonly }),
            },
            config,
        },
        load: load(&scenario.load),
        faults: scenario.faults.iter().map(fault).collect(),
        slo: scenario.slos.iter().map(slo).collect(),
        invariants: scenario.invariants.iter().map(invariant).collect(),
    };
    // Serializing plain structs, maps, strings and numbers cannot fail.
    serde_saphyr::to_string(&file).unwrap_or_default()
}

/// A duration as scenario files write it (`0s` rather than `0ms`).
fn duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else {
        format_duration(d)
    }
}

fn load(load: &LoadSpec) -> LoadOut {
    let constant = match load.stages.as_slice() {
        [stage] if stage.start_rps == stage.end_rps => Some(stage),
        _ => None,
    };
    let stages = constant.is_none().then(|| {
        load.stages
            .iter()
            .map(|s| {
                let ramp = s.start_rps != s.end_rps;
                StageOut {
                    duration: duration(s.duration),
                    rate: (!ramp).then_some(s.start_rps),
                    from: ramp.then_some(s.start_rps),
                    to: ramp.then_some(s.end_rps),
                }
            })
            .collect()
    });
    let m = load.mix;
    let mix = [
        ("tasks", m.tasks),
        ("jobs", m.jobs),
        ("reads", m.reads),
        ("dlq", m.dlq),
        ("oversized", m.oversized),
        ("slow", m.slow),
        ("no_key", m.no_key),
        ("unknown_key", m.unknown_key),
        ("expired_key", m.expired_key),
        ("forbidden", m.forbidden),
        ("roles", m.roles),
    ]
    .into_iter()
    .filter(|(_, w)| *w > 0)
    .collect();
    LoadOut {
        duration: constant.map(|s| duration(s.duration)),
        rate: constant.map(|s| s.start_rps),
        stages,
        mix,
        tenants: load
            .tenants
            .iter()
            .map(|t| TenantOut {
                name: t.name.clone(),
                budget_tokens: t.budget_tokens,
                role: t.role.clone(),
            })
            .collect(),
        idempotency_reuse: load.idempotency_reuse,
        max_in_flight: load.max_in_flight,
        request_timeout: duration(load.request_timeout),
        max_tokens: load.max_tokens,
        attack: load.attack.as_ref().map(|a| AttackOut {
            at: duration(a.at),
            guesses: a.guesses,
            probe_every: duration(a.probe_every),
        }),
        rotation: load.rotation.as_ref().map(|r| RotationOut {
            at: duration(r.at),
            probe_every: duration(r.probe_every),
        }),
        webhooks: load.webhooks.map(|w| WebhooksOut {
            share: w.share,
            forbidden: w.forbidden,
        }),
        personal_data: load.personal_data,
    }
}

/// A fault as its kind's params write it.
fn fault(f: &Fault) -> FaultOut {
    let params = match &f.action {
        FaultAction::Toxic {
            toxic,
            stream,
            toxicity,
            ..
        } => {
            let mut params: Map<String, Value> = toxic
                .attributes()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Value::from(value)))
                .collect();
            params.insert("stream".into(), Value::from(stream.as_str()));
            // Through its shortest decimal, so that 0.3 stays 0.3.
            let toxicity: f64 = toxicity.to_string().parse().unwrap_or(1.0);
            params.insert("toxicity".into(), Value::from(toxicity));
            Some(Value::Object(params))
        }
        FaultAction::LlmProgram { program } | FaultAction::SinkProgram { program } => {
            Some(program.clone())
        }
        FaultAction::IoErrors { probability, .. } => Some(json!({"probability": probability})),
        FaultAction::Oom { limit_bytes, .. } => Some(json!({"limit": format_size(*limit_bytes)})),
        FaultAction::Partition { .. }
        | FaultAction::Kill { .. }
        | FaultAction::Pause { .. }
        | FaultAction::Restart { .. }
        | FaultAction::DiskFull { .. }
        | FaultAction::ReadOnly { .. } => None,
    };
    FaultOut {
        name: f.name.clone(),
        at: duration(f.at),
        duration: f.duration.map(duration),
        target: f.action.target(),
        kind: f.action.kind(),
        params,
    }
}

/// A window as scenario files write it.
pub(crate) fn window_text(window: &Window) -> String {
    match window {
        Window::All => "all".to_owned(),
        Window::Before(f) => format!("before({f})"),
        Window::During(f) => format!("during({f})"),
        Window::After { fault, delay } if delay.is_zero() => format!("after({fault})"),
        Window::After { fault, delay } => format!("after({fault}) + {}", duration(*delay)),
        Window::Every(d) => format!("every {}", duration(*d)),
    }
}

fn slo(s: &Slo) -> SloOut {
    let mut out = SloOut {
        metric: s.objective.metric(),
        window: window_text(&s.window),
        max: None,
        min: None,
        error_rate: None,
    };
    match &s.objective {
        Objective::Latency { max, .. } => out.max = Some(Value::from(duration(*max))),
        Objective::ErrorRate { max } => out.max = Some(json!(max)),
        Objective::Availability { min } => out.min = Some(*min),
        Objective::Throughput { min_rps } => out.min = Some(*min_rps),
        Objective::RecoveryTime { max, error_rate } => {
            out.max = Some(Value::from(duration(*max)));
            out.error_rate = Some(*error_rate);
        }
    }
    out
}

fn invariant(i: &Invariant) -> Value {
    let params = match i {
        Invariant::NoLostJobs { settle } => json!({"settle": duration(*settle)}),
        Invariant::AllowedStatuses { statuses } => json!({"statuses": statuses}),
        Invariant::ReadyReflectsFaults { faults, within } => {
            json!({"faults": faults, "within": duration(*within)})
        }
        Invariant::ShedFast { within } => json!({"within": duration(*within)}),
        Invariant::DegradationGraceful { reaches, within } => json!({
            "reaches": super::model::DEGRADATION_LEVELS[*reaches],
            "within": duration(*within),
        }),
        _ => return Value::from(i.name()),
    };
    let mut out = Map::new();
    out.insert(i.name().to_owned(), params);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_written_as_parsed() {
        let after = Window::After {
            fault: "cut".into(),
            delay: Duration::from_millis(1500),
        };
        assert_eq!(window_text(&after), "after(cut) + 1500ms");
        assert_eq!(
            window_text(&Window::Every(Duration::from_secs(10))),
            "every 10s"
        );
    }

    #[test]
    fn a_bare_invariant_is_its_name() {
        assert_eq!(invariant(&Invariant::NoPanics), json!("no_panics"));
        assert_eq!(
            invariant(&Invariant::AllowedStatuses {
                statuses: vec![200]
            }),
            json!({"allowed_statuses": {"statuses": [200]}})
        );
    }
}

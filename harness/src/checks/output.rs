//! `delivered_output_valid`: what clients were given in a 200 is an action
//! plan that passes the harness's own check, written from the design (the
//! plan's shape, the configured tool allowlist and output limit) and not
//! from the orchestrator's validator, and no payload the mock provider was
//! told to inject reached a client.
//!
//! The screen here is deliberately small and independent: a handful of
//! markers every injection payload of the mock's repertoire carries. A plan
//! that trips it was let through by the orchestrator's own screen.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::RegexSet;
use serde_json::{Map, Value};

use super::slo::describe_op;
use super::{CheckResult, Evidence};
use crate::load::{Op, OpKind};
use crate::scenario::Contract;

/// The most steps a plan may hold. The plan limits are not configurable;
/// the orchestrator documents them with its validator (`plan` module) and
/// they are restated here, so that this check never calls that code.
const MAX_STEPS: usize = 32;
/// The longest string in a plan, in bytes.
const MAX_STRING_BYTES: usize = 16 * 1024;
/// The deepest nesting of a step's `args`, `args` itself being level 1.
const MAX_ARGS_DEPTH: usize = 16;

/// Markers of an injection, matched case-insensitively anywhere in a string.
static SCREEN: LazyLock<Option<RegexSet>> = LazyLock::new(|| {
    RegexSet::new([
        r"(?i)ignore\s+(?:all\s+|any\s+)?(?:the\s+)?(?:previous|prior|above|earlier)\s+instructions",
        r"(?i)(?:reveal|print|show|repeat)\s+(?:your|the)\s+system\s+prompt",
        r"(?i)<\s*/?\s*script\b",
        r"(?i)javascript\s*:",
        r"(?i)\bon(?:error|load)\s*=",
        r"(?i)'\s*or\s+'?1'?\s*=\s*'?1",
        r"(?i)\bunion\s+(?:all\s+)?select\b",
        r"(?i);\s*drop\s+table\b",
        r"(?i)\brm\s+-rf\b",
        r"\$\([^)]*\)",
        r"(?i)\|\s*(?:ba)?sh\b",
    ])
    .ok()
});

/// Every kept 200 body of a task (its `output`) and of a job read of a
/// succeeded job (its `output`) is a valid plan; no injected payload appears
/// in any kept body.
pub(super) fn delivered_output_valid(evidence: &Evidence) -> CheckResult {
    let mut r = CheckResult::invariant(
        "delivered_output_valid",
        "every 200 carries a valid, screened plan and no injected payload",
    );
    let mut violations = 0;
    let mut judged = 0u64;
    for op in &evidence.history {
        let Some(body) = &op.body else {
            continue;
        };
        let problems = judge_body(op, body, &evidence.contract, &evidence.injected);
        if problems.is_none() {
            continue;
        }
        judged += 1;
        if let Some(Err(problem)) = problems {
            violations += 1;
            r.violation(format!("{problem}: {}", describe_op(op)));
        }
    }
    r.observed = format!(
        "{judged} delivered plans judged, {} injected payloads looked for{}",
        evidence.injected.len(),
        if evidence.bodies_dropped > 0 {
            format!(", {} bodies not kept", evidence.bodies_dropped)
        } else {
            String::new()
        }
    );
    r.finish(violations).exercised(judged, || {
        "no 200 answer carrying a plan was kept".to_owned()
    })
}

/// `None` when the body carries no plan to judge (a job read of a job not
/// yet succeeded); otherwise whether it is valid.
fn judge_body(
    op: &Op,
    body: &str,
    contract: &Contract,
    injected: &[String],
) -> Option<Result<(), String>> {
    // A DLQ listing carries no plan (dead jobs have none); dlq_complete
    // judges it.
    if op.kind == OpKind::ListDlq {
        return None;
    }
    if let Some(payload) = injected.iter().find(|p| body.contains(p.as_str())) {
        return Some(Err(format!(
            "the injected payload {payload:?} reached the client"
        )));
    }
    let value: Value = match serde_json::from_str(body) {
        Ok(value) => value,
        Err(e) => return Some(Err(format!("the body is not JSON ({e})"))),
    };
    if op.kind == OpKind::ReadJob && value.get("state").and_then(Value::as_str) != Some("succeeded")
    {
        return None;
    }
    let Some(output) = value.get("output") else {
        return Some(Err("the body has no `output`".to_owned()));
    };
    Some(check_plan(output, contract))
}

/// The harness's own check of an action plan.
pub(crate) fn check_plan(plan: &Value, contract: &Contract) -> Result<(), String> {
    let size = plan.to_string().len() as u64;
    if size > contract.max_output_bytes {
        return Err(format!(
            "the plan is {size} bytes, over tasks.max_output_size {}",
            contract.max_output_bytes
        ));
    }
    let object = plan.as_object().ok_or("the plan is not an object")?;
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    if keys != BTreeSet::from(["action_plan", "reasoning"]) {
        return Err(format!(
            "the plan's fields are {keys:?}, expected action_plan and reasoning"
        ));
    }
    let reasoning = object["reasoning"]
        .as_str()
        .ok_or("the plan's reasoning is not a string")?;
    screen("reasoning", reasoning)?;
    let steps = object["action_plan"]
        .as_array()
        .ok_or("action_plan is not an array")?;
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err(format!(
            "action_plan has {} steps, expected 1 to {MAX_STEPS}",
            steps.len()
        ));
    }
    for (i, step) in steps.iter().enumerate() {
        let at = format!("action_plan[{i}]");
        let step = step
            .as_object()
            .ok_or_else(|| format!("{at} is not an object"))?;
        let keys: BTreeSet<&str> = step.keys().map(String::as_str).collect();
        if keys != BTreeSet::from(["args", "step", "tool"]) {
            return Err(format!(
                "{at} has fields {keys:?}, expected step, tool and args"
            ));
        }
        if step["step"].as_u64() != Some(i as u64 + 1) {
            return Err(format!("{at}.step is {}, expected {}", step["step"], i + 1));
        }
        let tool = step["tool"]
            .as_str()
            .ok_or_else(|| format!("{at}.tool is not a string"))?;
        screen(&format!("{at}.tool"), tool)?;
        if !contract.allowed_tools.contains(tool) {
            return Err(format!("{at}.tool {tool:?} is not in tasks.allowed_tools"));
        }
        let args = step["args"]
            .as_object()
            .ok_or_else(|| format!("{at}.args is not an object"))?;
        check_args(&format!("{at}.args"), args, 1)?;
    }
    Ok(())
}

fn check_args(at: &str, args: &Map<String, Value>, depth: usize) -> Result<(), String> {
    if depth > MAX_ARGS_DEPTH {
        return Err(format!("{at} nests deeper than {MAX_ARGS_DEPTH} levels"));
    }
    for (key, value) in args {
        let at = format!("{at}.{key}");
        screen(&at, key)?;
        check_value(&at, value, depth)?;
    }
    Ok(())
}

fn check_value(at: &str, value: &Value, depth: usize) -> Result<(), String> {
    match value {
        Value::String(text) => screen(at, text),
        Value::Object(map) => check_args(at, map, depth + 1),
        Value::Array(items) => {
            if depth + 1 > MAX_ARGS_DEPTH {
                return Err(format!("{at} nests deeper than {MAX_ARGS_DEPTH} levels"));
            }
            for (i, item) in items.iter().enumerate() {
                check_value(&format!("{at}[{i}]"), item, depth + 1)?;
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// The string's size and the screen.
fn screen(at: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_STRING_BYTES {
        return Err(format!(
            "{at} is {} bytes, over {MAX_STRING_BYTES}",
            text.len()
        ));
    }
    match SCREEN.as_ref() {
        Some(set) if set.is_match(text) => Err(format!("{at} carries an injection marker")),
        Some(_) => Ok(()),
        None => Err("the harness's injection screen did not compile".to_owned()),
    }
}

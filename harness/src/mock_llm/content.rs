//! What the mock "model" writes: a deterministic action plan derived from the
//! prompt, and the ways the fault effects spoil it.
//!
//! The plan depends only on the prompt and the tools, never on the seed or the
//! call's number, so the same task gets the same plan in every run and from
//! every mock. It follows the orchestrator's schema
//! (`{"action_plan": [{"step": 1, "tool": …, "args": {…}}], "reasoning": …}`)
//! and uses only fixed, benign words: nothing of the prompt is echoed, so no
//! prompt can make the default answer fail the orchestrator's injection screen.

use orchestrator::plan::{ActionPlan, Step};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::program::{InjectionField, Violation};
use crate::seed;

/// The tool a plan uses when the system message lists none.
pub const FALLBACK_TOOL: &str = "search";

/// The most tools read from a system message.
pub const MAX_TOOLS: usize = 32;

/// The longest tool name read from a system message, in bytes.
pub const MAX_TOOL_NAME_BYTES: usize = 64;

/// The tool named by [`Violation::UnknownTool`]: no allowlist should hold it.
pub const UNLISTED_TOOL: &str = "gauntlet_unlisted_tool";

/// Words for arguments. All are plain lowercase English or jargon, so that no
/// combination looks like an injection.
const WORDS: [&str; 32] = [
    "rust",
    "retries",
    "latency",
    "budgets",
    "breakers",
    "queues",
    "leases",
    "tokens",
    "caching",
    "tracing",
    "metrics",
    "replicas",
    "timeouts",
    "backoff",
    "jitter",
    "quorum",
    "shards",
    "indexes",
    "streams",
    "batches",
    "schemas",
    "audits",
    "ledgers",
    "workers",
    "deadlines",
    "limits",
    "probes",
    "snapshots",
    "journals",
    "proxies",
    "faults",
    "seeds",
];

/// The tools a system message offers: the comma-separated names after its
/// last `Tools:`, up to the next full stop or line end, as the orchestrator
/// writes them (`… Tools: search, http_get, summarize.`). Names that are not
/// 1 to 64 letters, digits, `_` or `-` are skipped, duplicates dropped, and at
/// most [`MAX_TOOLS`] kept.
pub fn tools_from_system(system: &str) -> Vec<String> {
    let Some(at) = system.rfind("Tools:") else {
        return Vec::new();
    };
    let list = &system[at + "Tools:".len()..];
    let end = list.find(['.', '\n']).unwrap_or(list.len());
    let mut tools: Vec<String> = Vec::new();
    for name in list[..end].split(',').map(str::trim) {
        let valid = !name.is_empty()
            && name.len() <= MAX_TOOL_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid && !tools.iter().any(|t| t == name) {
            tools.push(name.to_owned());
            if tools.len() == MAX_TOOLS {
                break;
            }
        }
    }
    tools
}

/// The default answer for `prompt`: one to three steps using `tools` (or
/// [`FALLBACK_TOOL`] when empty), chosen by the prompt's SHA-256.
pub fn default_plan(prompt: &str, tools: &[String]) -> ActionPlan {
    plan_for_digest(&prompt_digest(prompt), tools)
}

/// SHA-256 of the prompt: what the journal records (in hex) and what the
/// default plan is derived from.
pub fn prompt_digest(prompt: &str) -> [u8; 32] {
    Sha256::digest(prompt.as_bytes()).into()
}

/// The default plan for a prompt with SHA-256 `digest`.
pub fn plan_for_digest(digest: &[u8; 32], tools: &[String]) -> ActionPlan {
    let fallback = [FALLBACK_TOOL.to_owned()];
    let tools = if tools.is_empty() {
        &fallback[..]
    } else {
        tools
    };
    let byte = |i: usize| usize::from(digest[i % digest.len()]);
    let words = |i: usize| -> [&str; 3] {
        [
            WORDS[byte(8 + 3 * i) % WORDS.len()],
            WORDS[byte(9 + 3 * i) % WORDS.len()],
            WORDS[byte(10 + 3 * i) % WORDS.len()],
        ]
    };
    let count = 1 + byte(0) % 3;
    let action_plan = (0..count)
        .map(|i| {
            let tool = tools[byte(1 + i) % tools.len()].clone();
            let [a, b, c] = words(i);
            let args = match tool.as_str() {
                "search" => json!({ "query": format!("{a} {b} {c}") }),
                "http_get" => json!({ "url": format!("https://example.com/docs/{a}-{b}") }),
                "summarize" => json!({ "max_words": 50 + 25 * (byte(4 + i) % 8) }),
                _ => json!({ "input": format!("{a} {b} {c}") }),
            };
            Step {
                step: u32::try_from(i + 1).unwrap_or(u32::MAX),
                tool,
                args: match args {
                    Value::Object(map) => map,
                    _ => Map::new(),
                },
            }
        })
        .collect();
    ActionPlan {
        action_plan,
        reasoning: format!(
            "Mock plan {}: {count} step{} derived from the prompt digest.",
            hex::encode(&digest[..4]),
            if count == 1 { "" } else { "s" }
        ),
    }
}

/// The plan as message content: bare JSON when the client asked for JSON
/// (`response_format` `json_object` or `json_schema`), otherwise inside one
/// `` ```json `` fence, as chat models tend to write it.
pub fn render(plan: &impl Serialize, json_mode: bool) -> String {
    // Serialising plain data to a string cannot fail.
    let json = serde_json::to_string(plan).unwrap_or_default();
    if json_mode {
        json
    } else {
        format!("```json\n{json}\n```")
    }
}

/// The plan as a JSON value.
fn to_value(plan: &ActionPlan) -> Value {
    serde_json::to_value(plan).unwrap_or(Value::Null)
}

/// The violation a [`Violation`]-less schema fault uses for call `seq` of the
/// rule at `rule_index`.
pub fn pick_violation(seed: u64, rule_index: usize, seq: u64) -> Violation {
    let draw = seed::derive(
        seed,
        &[
            b"mock-llm",
            b"violation",
            &(rule_index as u64).to_be_bytes(),
            &seq.to_be_bytes(),
        ],
    );
    let index = usize::try_from(draw % Violation::ALL.len() as u64).unwrap_or(0);
    Violation::ALL[index]
}

/// `plan` with the schema broken as `violation` says.
pub fn violate(plan: &ActionPlan, violation: Violation) -> Value {
    let mut value = to_value(plan);
    let Value::Object(top) = &mut value else {
        return value;
    };
    match violation {
        Violation::MissingReasoning => {
            top.remove("reasoning");
        }
        Violation::StepNumbering => {
            if let Some(steps) = top.get_mut("action_plan").and_then(Value::as_array_mut) {
                for (i, step) in steps.iter_mut().enumerate() {
                    step["step"] = json!(i);
                }
            }
        }
        Violation::UnknownTool => {
            if let Some(step) = first_step_mut(top) {
                step.insert("tool".into(), json!(UNLISTED_TOOL));
            }
        }
        Violation::ArgsNotObject => {
            if let Some(step) = first_step_mut(top) {
                let values: Vec<Value> = match step.get("args") {
                    Some(Value::Object(args)) => args.values().cloned().collect(),
                    _ => Vec::new(),
                };
                step.insert("args".into(), Value::Array(values));
            }
        }
        Violation::ExtraField => {
            top.insert("confidence".into(), json!(0.5));
        }
        Violation::EmptyPlan => {
            top.insert("action_plan".into(), json!([]));
        }
    }
    value
}

fn first_step_mut(top: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    top.get_mut("action_plan")
        .and_then(Value::as_array_mut)
        .and_then(|steps| steps.first_mut())
        .and_then(Value::as_object_mut)
}

/// `plan` with `payload` planted in `field`.
pub fn inject(plan: &ActionPlan, payload: &str, field: InjectionField) -> ActionPlan {
    let mut plan = plan.clone();
    match field {
        InjectionField::Reasoning => {
            plan.reasoning = format!("{} {payload}", plan.reasoning);
        }
        InjectionField::Tool => {
            if let Some(step) = plan.action_plan.first_mut() {
                step.tool = payload.to_owned();
            }
        }
        InjectionField::Args => {
            if let Some(step) = plan.action_plan.first_mut() {
                let text = step.args.values_mut().find_map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                });
                match text {
                    Some(text) => *text = format!("{text} {payload}"),
                    None => {
                        step.args.insert("query".into(), json!(payload));
                    }
                }
            }
        }
    }
    plan
}

/// The first half of `content`, cut at a character boundary: what a model
/// that ran out of tokens midway would have written.
pub fn truncate_half(content: &str) -> String {
    cut(content, content.len() / 2).to_owned()
}

/// Prose before the plan: a common way for a model to break "JSON only".
pub fn with_preamble(content: &str) -> String {
    format!("Sure! Here is the plan you asked for:\n{content}")
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a
/// character boundary.
pub fn cut(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Tokens in `bytes` bytes of text: about four bytes a token, rounded up. The
/// mock has no tokenizer; it only needs counts that are deterministic and
/// grow with the text.
pub fn tokens(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator::plan::{self, PlanError, check::base_policy};

    fn base_tools() -> Vec<String> {
        ["search", "http_get", "summarize"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn tools_are_read_from_the_orchestrator_system_prompt() {
        let system = format!(
            "{} Tools: search, http_get, summarize.",
            orchestrator::llm::SYSTEM_PROMPT
        );
        assert_eq!(tools_from_system(&system), base_tools());
        assert_eq!(tools_from_system("no list here"), Vec::<String>::new());
        assert_eq!(
            tools_from_system("Tools: a, a, b c, , ok_1\nTools ignored"),
            ["a", "ok_1"]
        );
    }

    #[test]
    fn violations_fail_validation() {
        let plan = default_plan("compare retry libraries", &base_tools());
        for violation in Violation::ALL {
            let content = render(&violate(&plan, violation), true);
            let error = plan::validate(&content, &base_policy()).expect_err("must be invalid");
            assert!(
                matches!(
                    error,
                    PlanError::Schema { .. } | PlanError::ToolNotAllowed { .. }
                ),
                "{violation:?}: {error}"
            );
        }
    }

    #[test]
    fn the_default_payload_is_caught_in_every_field() {
        let plan = default_plan("compare retry libraries", &base_tools());
        for field in [
            InjectionField::Args,
            InjectionField::Reasoning,
            InjectionField::Tool,
        ] {
            let injected = inject(&plan, super::super::DEFAULT_INJECTION, field);
            let content = render(&injected, false);
            let error = plan::validate(&content, &base_policy()).expect_err("must be caught");
            assert_eq!(error.reason(), "injection", "{field:?}: {error}");
        }
    }

    #[test]
    fn cuts_respect_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(truncate_half("abcd"), "ab");
        assert_eq!(tokens(0), 0);
        assert_eq!(tokens(5), 2);
    }
}

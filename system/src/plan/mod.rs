//! Validation of the action plan a model returns for `POST /v1/tasks`.
//!
//! The message content a provider returns is untrusted outside input: the model
//! may have been steered by injected text, or may simply be wrong. [`validate`]
//! turns it into a typed [`ActionPlan`] or a [`PlanError`] whose message holds
//! nothing of the output, in this order, stopping at the first problem:
//!
//! 1. size: at most `max_output_bytes`, before any parsing;
//! 2. syntax: one JSON value, optionally inside one fenced code block (below);
//!    objects must not repeat a key;
//! 3. shape: an object with exactly `action_plan` and `reasoning`; `action_plan`
//!    holds 1 to `max_steps` steps, each an object with exactly `step`, `tool` and
//!    `args`; `step` numbers are 1, 2, 3 …; `tool` is in the allowlist; `args` is
//!    an object nesting at most `max_depth` levels; every string and key is at most
//!    `max_string_bytes`;
//! 4. content: every string — `tool`, `reasoning`, and every key and string value
//!    inside `args` at any depth — passes the injection [`screen`].
//!
//! Shape and content are checked together in one walk in the order above
//! (`action_plan` step by step, each `step`, `tool`, `args`; then `reasoning`;
//! object members in key order, each key before its value), so the first problem
//! in that order is reported. A tool name is screened before the allowlist check,
//! so a payload in `tool` is reported as an injection.
//!
//! **Fenced output.** Models often wrap JSON in a Markdown fence even when told
//! not to. An output that, apart from surrounding whitespace, is exactly one fence
//! (a line `` ``` `` or `` ```json ``, the JSON, and a closing `` ``` ``) is
//! accepted and its inside parsed; line numbers in errors still count from the
//! output's first line. Anything else around the JSON, such as "Here is your
//! plan:", is rejected as not JSON: dropping unvalidated prose silently would hide
//! it from the screen.

mod error;
mod screen;

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::TasksConfig;

pub use error::{FieldPath, JsonType, PlanError, SchemaProblem, Segment};
pub use screen::{InjectionKind, screen};

/// A validated plan, exactly as clients receive it:
/// `{"action_plan": [{"step": 1, "tool": "search", "args": {…}}], "reasoning": "…"}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionPlan {
    /// The steps, numbered 1, 2, 3 … in order.
    pub action_plan: Vec<Step>,
    /// The model's explanation of the plan.
    pub reasoning: String,
}

/// One step of an [`ActionPlan`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The step's 1-based position.
    pub step: u32,
    /// The tool to call, one of the policy's allowed tools.
    pub tool: String,
    /// The tool's arguments.
    pub args: Map<String, Value>,
}

/// The limits [`validate`] enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanPolicy {
    /// Tools a step may name.
    pub allowed_tools: BTreeSet<String>,
    /// Largest output in bytes, fence and whitespace included.
    pub max_output_bytes: usize,
    /// Most steps in a plan.
    pub max_steps: usize,
    /// Deepest nesting of arrays and objects in a step's `args`, `args` itself
    /// being level 1. The JSON parser stops at 128 regardless.
    pub max_depth: usize,
    /// Longest string, object key included, in bytes.
    pub max_string_bytes: usize,
}

impl PlanPolicy {
    /// Default for [`max_steps`](Self::max_steps).
    pub const DEFAULT_MAX_STEPS: usize = 32;
    /// Default for [`max_depth`](Self::max_depth).
    pub const DEFAULT_MAX_DEPTH: usize = 16;
    /// Default for [`max_string_bytes`](Self::max_string_bytes): room for a long
    /// reasoning, while one string cannot be most of a plan.
    pub const DEFAULT_MAX_STRING_BYTES: usize = 16 * 1024;

    /// A policy with the given allowlist and output limit and default other limits.
    pub fn new<I, S>(allowed_tools: I, max_output_bytes: usize) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        PlanPolicy {
            allowed_tools: allowed_tools.into_iter().map(Into::into).collect(),
            max_output_bytes,
            max_steps: Self::DEFAULT_MAX_STEPS,
            max_depth: Self::DEFAULT_MAX_DEPTH,
            max_string_bytes: Self::DEFAULT_MAX_STRING_BYTES,
        }
    }
}

impl From<&TasksConfig> for PlanPolicy {
    /// The policy of the `tasks` configuration section. `max_prompt_bytes` bounds
    /// what is sent, not what comes back, so it plays no part here.
    fn from(tasks: &TasksConfig) -> Self {
        PlanPolicy::new(
            tasks.allowed_tools.iter().cloned(),
            usize::try_from(tasks.max_output_bytes).unwrap_or(usize::MAX),
        )
    }
}

/// Validates a model's output against `policy` (see the module documentation for
/// the rules and their order). Never panics; time and memory are linear in the
/// output's size, and recursion is bounded by the JSON parser's depth limit.
pub fn validate(content: &str, policy: &PlanPolicy) -> Result<ActionPlan, PlanError> {
    if content.len() > policy.max_output_bytes {
        return Err(PlanError::TooLarge {
            size: content.len(),
            limit: policy.max_output_bytes,
        });
    }
    let (json, line_offset) = unfence(content);
    let root = parse(json, line_offset)?;
    Walker {
        policy,
        path: Vec::new(),
    }
    .plan(root)
}

/// The inside of a fenced block that is the whole output, with the number of lines
/// before it; or the output itself and 0.
fn unfence(content: &str) -> (&str, usize) {
    let unfenced = (content, 0);
    let body = content.trim_start();
    let leading_lines = content[..content.len() - body.len()].matches('\n').count();
    let Some(rest) = body.strip_prefix("```") else {
        return unfenced;
    };
    let Some((info, inner)) = rest.split_once('\n') else {
        return unfenced;
    };
    let info = info.trim();
    if !(info.is_empty() || info.eq_ignore_ascii_case("json")) {
        return unfenced;
    }
    match inner.trim_end().strip_suffix("```") {
        Some(inner) => (inner, leading_lines + 1),
        None => unfenced,
    }
}

/// Parses one JSON value, rejecting duplicate keys.
fn parse(json: &str, line_offset: usize) -> Result<Value, PlanError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let result = NoDuplicates::deserialize(&mut de).and_then(|NoDuplicates(value)| {
        de.end()?;
        Ok(value)
    });
    result.map_err(|e| {
        let line = e.line() + line_offset;
        let column = e.column();
        match e.classify() {
            // Every valid JSON text deserializes into a `Value`, so the only data
            // error is the duplicate key raised below.
            serde_json::error::Category::Data => PlanError::DuplicateKey { line, column },
            _ => PlanError::NotJson { line, column },
        }
    })
}

/// A `serde_json::Value` that refuses objects with a repeated key, where
/// `Value` would silently keep the last one.
struct NoDuplicates(Value);

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(NoDuplicatesVisitor)
            .map(NoDuplicates)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so `from_f64` always succeeds here.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // No `with_capacity(size_hint)`: the hint would come from the input.
        let mut items = Vec::new();
        while let Some(NoDuplicates(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(de::Error::custom("duplicate key"));
            }
            let NoDuplicates(value) = map.next_value()?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

/// The fields of the top level and of a step, in the order they are checked.
const PLAN_FIELDS: [&str; 2] = ["action_plan", "reasoning"];
const STEP_FIELDS: [&str; 3] = ["step", "tool", "args"];

/// One walk over the parsed output, keeping the path to the current value.
struct Walker<'p> {
    policy: &'p PlanPolicy,
    path: Vec<Segment>,
}

impl Walker<'_> {
    fn plan(&mut self, root: Value) -> Result<ActionPlan, PlanError> {
        let mut top = self.object(root, &PLAN_FIELDS, "`action_plan` and `reasoning`")?;
        let steps = take(&mut top, "action_plan");
        let reasoning = take(&mut top, "reasoning");

        self.path.push(Segment::Field("action_plan"));
        let Value::Array(items) = steps else {
            return Err(self.schema(SchemaProblem::WrongType {
                expected: "an array",
                found: JsonType::of(&steps),
            }));
        };
        if items.is_empty() {
            return Err(self.schema(SchemaProblem::EmptyPlan));
        }
        // Step numbers are `u32`; a policy cannot allow more steps than they count.
        let max_steps = self
            .policy
            .max_steps
            .min(usize::try_from(u32::MAX).unwrap_or(usize::MAX));
        if items.len() > max_steps {
            return Err(self.schema(SchemaProblem::TooManySteps {
                count: items.len(),
                max: max_steps,
            }));
        }
        let mut action_plan = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            self.path.push(Segment::Index(index));
            action_plan.push(self.step(index, item)?);
            self.path.pop();
        }
        self.path.pop();

        self.path.push(Segment::Field("reasoning"));
        let reasoning = self.string(reasoning)?;
        self.path.pop();
        Ok(ActionPlan {
            action_plan,
            reasoning,
        })
    }

    fn step(&mut self, index: usize, item: Value) -> Result<Step, PlanError> {
        let mut fields = self.object(item, &STEP_FIELDS, "`step`, `tool` and `args`")?;

        self.path.push(Segment::Field("step"));
        let expected = index + 1;
        let step = match take(&mut fields, "step") {
            Value::Number(n) if n.is_u64() || n.is_i64() => {
                match (n.as_u64(), u32::try_from(expected)) {
                    (Some(found), Ok(step)) if found == u64::from(step) => step,
                    _ => return Err(self.schema(SchemaProblem::StepNumber { expected })),
                }
            }
            other => {
                return Err(self.schema(SchemaProblem::WrongType {
                    expected: "an integer",
                    found: JsonType::of(&other),
                }));
            }
        };
        self.path.pop();

        self.path.push(Segment::Field("tool"));
        let tool = self.string(take(&mut fields, "tool"))?;
        if !self.policy.allowed_tools.contains(&tool) {
            return Err(PlanError::ToolNotAllowed { index });
        }
        self.path.pop();

        self.path.push(Segment::Field("args"));
        let args = match take(&mut fields, "args") {
            Value::Object(args) => args,
            other => {
                return Err(self.schema(SchemaProblem::WrongType {
                    expected: "an object",
                    found: JsonType::of(&other),
                }));
            }
        };
        self.members(&args, 1)?;
        self.path.pop();

        Ok(Step { step, tool, args })
    }

    /// Checks that `value` is an object with exactly `fields`, reporting the first
    /// missing field in `fields` order before any unknown one.
    fn object(
        &self,
        value: Value,
        fields: &[&'static str],
        allowed: &'static str,
    ) -> Result<Map<String, Value>, PlanError> {
        let Value::Object(map) = value else {
            return Err(self.schema(SchemaProblem::WrongType {
                expected: "an object",
                found: JsonType::of(&value),
            }));
        };
        if let Some(field) = fields.iter().find(|f| !map.contains_key(**f)) {
            return Err(self.schema(SchemaProblem::MissingField { field }));
        }
        // Every wanted field is present and keys are unique, so more members
        // means an unknown one.
        if map.len() > fields.len() {
            return Err(self.schema(SchemaProblem::UnknownField { allowed }));
        }
        Ok(map)
    }

    /// A string field of the schema: typed, bounded, screened.
    fn string(&self, value: Value) -> Result<String, PlanError> {
        match value {
            Value::String(s) => {
                self.text(&s)?;
                Ok(s)
            }
            other => Err(self.schema(SchemaProblem::WrongType {
                expected: "a string",
                found: JsonType::of(&other),
            })),
        }
    }

    /// The members of an object inside `args` at nesting level `depth`.
    fn members(&mut self, map: &Map<String, Value>, depth: usize) -> Result<(), PlanError> {
        if depth > self.policy.max_depth {
            return Err(self.too_deep());
        }
        for (i, (key, value)) in map.iter().enumerate() {
            self.path.push(Segment::Key(i));
            self.text(key)?;
            self.path.pop();
            self.path.push(Segment::Member(i));
            self.value(value, depth)?;
            self.path.pop();
        }
        Ok(())
    }

    /// A value inside `args` whose container is at level `depth`. Recursion is
    /// bounded by `max_depth`, and in any case by the parser's limit of 128.
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), PlanError> {
        match value {
            Value::String(s) => self.text(s),
            Value::Array(items) => {
                if depth + 1 > self.policy.max_depth {
                    return Err(self.too_deep());
                }
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Segment::Index(i));
                    self.value(item, depth + 1)?;
                    self.path.pop();
                }
                Ok(())
            }
            Value::Object(map) => self.members(map, depth + 1),
            Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
        }
    }

    /// Any string from the output, key or value: bounded, then screened.
    fn text(&self, s: &str) -> Result<(), PlanError> {
        if s.len() > self.policy.max_string_bytes {
            return Err(self.schema(SchemaProblem::StringTooLong {
                bytes: s.len(),
                max: self.policy.max_string_bytes,
            }));
        }
        match screen(s) {
            Some(kind) => Err(PlanError::Injection {
                path: self.here(),
                kind,
            }),
            None => Ok(()),
        }
    }

    fn too_deep(&self) -> PlanError {
        self.schema(SchemaProblem::TooDeep {
            max: self.policy.max_depth,
        })
    }

    fn schema(&self, problem: SchemaProblem) -> PlanError {
        PlanError::Schema {
            path: self.here(),
            problem,
        }
    }

    fn here(&self) -> FieldPath {
        FieldPath::new(self.path.clone())
    }
}

/// Removes a field that [`Walker::object`] has checked is present.
fn take(map: &mut Map<String, Value>, field: &str) -> Value {
    map.remove(field).unwrap_or(Value::Null)
}

/// Entry points shared by the `llm_output` fuzz target and the corpus replay test,
/// so that a committed corpus file checks exactly what the fuzzer checked.
pub mod check {
    use super::*;

    /// The policy of the base configuration: the tools `search`, `http_get` and
    /// `summarize`, and 64 KiB of output.
    pub fn base_policy() -> PlanPolicy {
        PlanPolicy::new(["search", "http_get", "summarize"], 64 * 1024)
    }

    /// Any bytes (as lossy UTF-8) through validation. Panics (the fuzzer's signal)
    /// if an accepted plan breaks the rules, or if it does not validate again,
    /// unchanged, after serialisation.
    pub fn llm_output(bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let policy = base_policy();
        let _ = screen(&text);
        match validate(&text, &policy) {
            Ok(plan) => {
                assert!(!plan.action_plan.is_empty() && plan.action_plan.len() <= policy.max_steps);
                for (i, step) in plan.action_plan.iter().enumerate() {
                    assert_eq!(usize::try_from(step.step).ok(), Some(i + 1));
                    assert!(policy.allowed_tools.contains(&step.tool));
                }
                assert_eq!(screen(&plan.reasoning), None);
                let json = serde_json::to_string(&plan).unwrap_or_default();
                let again = validate(
                    &json,
                    &PlanPolicy {
                        max_output_bytes: usize::MAX,
                        ..policy
                    },
                );
                assert_eq!(
                    again.as_ref(),
                    Ok(&plan),
                    "round trip changed the plan\n{json}"
                );
            }
            Err(error) => {
                assert!(PlanError::REASONS.contains(&error.reason()));
                assert!(!error.to_string().is_empty());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PlanPolicy {
        check::base_policy()
    }

    const VALID: &str = r#"{"action_plan": [{"step": 1, "tool": "search", "args": {"q": "rust"}}], "reasoning": "Look it up."}"#;

    #[test]
    fn accepts_a_minimal_plan() {
        let plan = validate(VALID, &policy()).unwrap();
        assert_eq!(plan.action_plan[0].tool, "search");
        assert_eq!(plan.reasoning, "Look it up.");
    }

    #[test]
    fn fences_are_unwrapped_and_lines_still_count_from_the_top() {
        let fenced = format!("\n```json\n{VALID}\n```\n");
        assert!(validate(&fenced, &policy()).is_ok());
        assert!(validate(&format!("```\n{VALID}```"), &policy()).is_ok());
        assert!(validate(&format!("```JSON\r\n{VALID}\r\n```"), &policy()).is_ok());
        // A fence with another language, prose around it or no closing fence is not JSON.
        for bad in [
            format!("```python\n{VALID}\n```"),
            format!("Here:\n```json\n{VALID}\n```"),
            format!("```json\n{VALID}\n"),
        ] {
            assert_eq!(
                validate(&bad, &policy()).unwrap_err().reason(),
                "not-json",
                "{bad}"
            );
        }
        let broken = "\n\n```json\n{\n  \"action_plan\": [,\n";
        assert_eq!(
            validate(&format!("{broken}```"), &policy()),
            Err(PlanError::NotJson {
                line: 5,
                column: 19
            })
        );
    }

    #[test]
    fn duplicate_keys_are_located() {
        let dup = "{\"action_plan\": [],\n \"action_plan\": []}";
        assert_eq!(
            validate(dup, &policy()),
            Err(PlanError::DuplicateKey {
                line: 2,
                column: 14
            })
        );
    }

    #[test]
    fn step_numbers_must_be_positions() {
        for (number, problem) in [
            ("2", SchemaProblem::StepNumber { expected: 1 }),
            ("0", SchemaProblem::StepNumber { expected: 1 }),
            ("-1", SchemaProblem::StepNumber { expected: 1 }),
            (
                "1.0",
                SchemaProblem::WrongType {
                    expected: "an integer",
                    found: JsonType::Number,
                },
            ),
            (
                "\"1\"",
                SchemaProblem::WrongType {
                    expected: "an integer",
                    found: JsonType::String,
                },
            ),
        ] {
            let text = VALID.replace("\"step\": 1", &format!("\"step\": {number}"));
            let err = validate(&text, &policy()).unwrap_err();
            assert_eq!(
                err,
                PlanError::Schema {
                    path: FieldPath::new(vec![
                        Segment::Field("action_plan"),
                        Segment::Index(0),
                        Segment::Field("step")
                    ]),
                    problem
                },
                "{number}"
            );
        }
    }

    #[test]
    fn depth_counts_args_as_level_one() {
        let nest = |levels: usize| {
            let inner = format!("{}1{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
            VALID.replace(r#"{"q": "rust"}"#, &format!(r#"{{"q": {inner}}}"#))
        };
        let mut p = policy();
        p.max_depth = 3;
        assert!(validate(&nest(3), &p).is_ok());
        let err = validate(&nest(4), &p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "schema violation at action_plan[0].args{0}[0][0]: nested deeper than 3 levels"
        );
        p.max_depth = 0;
        assert_eq!(
            validate(VALID, &p).unwrap_err().to_string(),
            "schema violation at action_plan[0].args: nested deeper than 0 levels"
        );
    }

    #[test]
    fn paths_render_without_output_text() {
        let path = FieldPath::new(vec![
            Segment::Field("action_plan"),
            Segment::Index(2),
            Segment::Field("args"),
            Segment::Member(1),
            Segment::Index(0),
            Segment::Key(3),
        ]);
        assert_eq!(path.to_string(), "action_plan[2].args{1}[0]{3}(key)");
        assert_eq!(FieldPath::root().to_string(), "(root)");
    }

    #[test]
    fn policy_from_config() {
        let tasks = TasksConfig {
            allowed_tools: vec!["search".into(), "summarize".into()],
            max_prompt_bytes: 1,
            max_output_bytes: 2048,
        };
        let p = PlanPolicy::from(&tasks);
        assert_eq!(p.allowed_tools.len(), 2);
        assert_eq!(p.max_output_bytes, 2048);
        assert_eq!(p.max_steps, 32);
        assert_eq!(p.max_depth, 16);
    }

    #[test]
    fn too_many_steps() {
        let mut p = policy();
        p.max_steps = 1;
        let two = r#"{"action_plan": [{"step": 1, "tool": "search", "args": {}}, {"step": 2, "tool": "search", "args": {}}], "reasoning": ""}"#;
        assert_eq!(
            validate(two, &p).unwrap_err().to_string(),
            "schema violation at action_plan: 2 steps, more than the limit of 1"
        );
    }
}

//! Why a plan was rejected, in words that can be shown to clients.
//!
//! The rejected output is untrusted: it may hold a payload aimed at whoever reads
//! the error (a browser showing it, a log viewer, the next model). So no error
//! carries text taken from the output. Paths are built from [`Segment`]s, which
//! hold only the schema's own field names (`&'static str`) and numbers; the keys
//! inside `args` are output text, so they are named by position instead.

use std::fmt;

use super::InjectionKind;

/// One step of a [`FieldPath`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A field of the plan's schema: `action_plan`, `reasoning`, `step`, `tool`, `args`.
    Field(&'static str),
    /// An array element, 0-based: `[2]`.
    Index(usize),
    /// The value of the n-th member (0-based, in key order) of an object inside
    /// `args`: `{1}`. The key itself is never repeated.
    Member(usize),
    /// The key of the n-th member of an object inside `args`: `{1}(key)`.
    Key(usize),
}

/// Where in the output a problem is: `action_plan[2].args{0}[3]`, or `(root)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The top level of the output.
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// A path from its segments.
    pub fn new(segments: Vec<Segment>) -> Self {
        FieldPath(segments)
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => write!(f, "{name}")?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Member(n) => write!(f, "{{{n}}}")?,
                Segment::Key(n) => write!(f, "{{{n}}}(key)")?,
            }
        }
        Ok(())
    }
}

/// A JSON value's type, the only thing said about a value of the wrong type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JsonType {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool,
    /// A number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

impl JsonType {
    /// The type of `value`.
    pub fn of(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => JsonType::Null,
            serde_json::Value::Bool(_) => JsonType::Bool,
            serde_json::Value::Number(_) => JsonType::Number,
            serde_json::Value::String(_) => JsonType::String,
            serde_json::Value::Array(_) => JsonType::Array,
            serde_json::Value::Object(_) => JsonType::Object,
        }
    }
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonType::Null => "null",
            JsonType::Bool => "a boolean",
            JsonType::Number => "a number",
            JsonType::String => "a string",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        })
    }
}

/// What is wrong with the plan's shape. Messages name only schema fields, types
/// and numbers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaProblem {
    /// A value has the wrong JSON type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the schema wants, like "an array" or "an integer".
        expected: &'static str,
        /// What the output has.
        found: JsonType,
    },
    /// A required field is absent.
    #[error("missing required field `{field}`")]
    MissingField {
        /// The field's name in the schema.
        field: &'static str,
    },
    /// An object has a field the schema does not define. Its name is not repeated.
    #[error("unexpected field; the only fields allowed are {allowed}")]
    UnknownField {
        /// The fields allowed here, for the message.
        allowed: &'static str,
    },
    /// `action_plan` is an empty array.
    #[error("the plan has no steps")]
    EmptyPlan,
    /// `action_plan` has more steps than the policy allows.
    #[error("{count} steps, more than the limit of {max}")]
    TooManySteps {
        /// How many steps the output has.
        count: usize,
        /// The policy's limit.
        max: usize,
    },
    /// A `step` number is not its position: numbers start at 1 and increase by 1.
    #[error("step numbers must start at 1 and increase by 1; expected {expected}")]
    StepNumber {
        /// The number this step must have.
        expected: usize,
    },
    /// Arrays and objects inside `args` nest deeper than the policy allows.
    #[error("nested deeper than {max} levels")]
    TooDeep {
        /// The policy's limit; `args` itself is level 1.
        max: usize,
    },
    /// A string (or object key) is longer than the policy allows.
    #[error("a string of {bytes} bytes, over the limit of {max}")]
    StringTooLong {
        /// The string's length in bytes.
        bytes: usize,
        /// The policy's limit.
        max: usize,
    },
}

/// Why [`validate`](super::validate) rejected a model's output. The `Display`
/// text never contains text from the output, so it can be shown to clients;
/// [`reason`](Self::reason) is a stable kebab-case name for machines.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The output is longer than the policy's `max_output_bytes`. Checked first,
    /// before any parsing.
    #[error("the output is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The output's length in bytes.
        size: usize,
        /// The policy's limit.
        limit: usize,
    },
    /// The output (or the inside of its one fenced block) is not a single JSON
    /// value: a syntax error, an early end, trailing text, or nesting deeper than
    /// the JSON parser's own limit of 128.
    #[error("the output is not valid JSON (line {line}, column {column})")]
    NotJson {
        /// 1-based line in the output as received, fence included.
        line: usize,
        /// 1-based column (0 when the output is empty).
        column: usize,
    },
    /// An object has the same key twice. JSON parsers disagree on which one wins,
    /// so such output is ambiguous and rejected.
    #[error("schema violation at line {line}, column {column}: duplicate object key")]
    DuplicateKey {
        /// 1-based line of the second occurrence.
        line: usize,
        /// 1-based column just after the second occurrence.
        column: usize,
    },
    /// The JSON does not have the plan's shape or exceeds a limit of the policy.
    #[error("schema violation at {path}: {problem}")]
    Schema {
        /// Where.
        path: FieldPath,
        /// What.
        problem: SchemaProblem,
    },
    /// A step names a tool outside the policy's allowlist. The name is not repeated.
    #[error("the tool at action_plan[{index}].tool is not in the allowlist")]
    ToolNotAllowed {
        /// The step's 0-based position in `action_plan`.
        index: usize,
    },
    /// A string looks like an injection payload (see [`screen`](super::screen)).
    #[error("possible {kind} injection at {path}")]
    Injection {
        /// The string's place; a `{n}(key)` segment means an object key.
        path: FieldPath,
        /// What the payload targets.
        kind: InjectionKind,
    },
}

impl PlanError {
    /// Every reason, for documentation and tests.
    pub const REASONS: [&'static str; 5] = [
        "too-large",
        "not-json",
        "schema",
        "tool-not-allowed",
        "injection",
    ];

    /// The stable kebab-case name of this class of error, for the `type` of an
    /// RFC 7807 problem, logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::TooLarge { .. } => "too-large",
            PlanError::NotJson { .. } => "not-json",
            PlanError::DuplicateKey { .. } | PlanError::Schema { .. } => "schema",
            PlanError::ToolNotAllowed { .. } => "tool-not-allowed",
            PlanError::Injection { .. } => "injection",
        }
    }

    /// Where in the output the problem is, when it has a field path.
    pub fn path(&self) -> Option<FieldPath> {
        match self {
            PlanError::Schema { path, .. } | PlanError::Injection { path, .. } => {
                Some(path.clone())
            }
            PlanError::ToolNotAllowed { index } => Some(FieldPath::new(vec![
                Segment::Field("action_plan"),
                Segment::Index(*index),
                Segment::Field("tool"),
            ])),
            PlanError::TooLarge { .. }
            | PlanError::NotJson { .. }
            | PlanError::DuplicateKey { .. } => None,
        }
    }
}

//! Diagnostics: one located finding about an input file.

use std::fmt;

use serde::Serialize;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is still usable; the finding deserves attention.
    Warning,
    /// The file is rejected.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// The class of a finding. Its kebab-case name is the `CODE` in `error[CODE]`,
/// stable so that scripts and snapshots can rely on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// The file could not be read.
    Io,
    /// The bytes are not UTF-8.
    Encoding,
    /// A parser limit (size, depth, node count, alias expansion, diagnostic count) was hit.
    Limit,
    /// The text is not well-formed YAML, or uses a YAML feature we reject.
    Syntax,
    /// The document holds nothing.
    Empty,
    /// The same key appears twice in one mapping.
    DuplicateKey,
    /// A value has the wrong type: a string where a number belongs, a list where a map belongs.
    Type,
    /// A required field is absent.
    MissingField,
    /// A field that the schema does not know.
    UnknownField,
    /// A number or duration outside its allowed range.
    Range,
    /// A value with a bad format: duration, size, URL, address, name, hash, timestamp.
    Format,
    /// A name that refers to something that does not exist.
    Reference,
    /// A name that must be unique appears twice.
    Duplicate,
    /// A setting that is valid but unsafe, refused under strict validation.
    Policy,
    /// Fields that contradict each other.
    Conflict,
    /// A check that the rest of the file makes impossible to exercise (a
    /// scenario that lists `no_lost_jobs` but sends no jobs): it could never
    /// fail, so it would prove nothing.
    Vacuous,
}

impl Code {
    /// The stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Io => "io",
            Code::Encoding => "encoding",
            Code::Limit => "limit",
            Code::Syntax => "syntax",
            Code::Empty => "empty",
            Code::DuplicateKey => "duplicate-key",
            Code::Type => "type",
            Code::MissingField => "missing-field",
            Code::UnknownField => "unknown-field",
            Code::Range => "range",
            Code::Format => "format",
            Code::Reference => "reference",
            Code::Duplicate => "duplicate",
            Code::Policy => "policy",
            Code::Conflict => "conflict",
            Code::Vacuous => "vacuous",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in a file, both 1-based; the column counts characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The start of a file.
    pub const START: Location = Location { line: 1, column: 1 };
}

/// One finding: where, how bad, what class, which field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The class of the finding.
    pub code: Code,
    /// Where the offending node starts; for a missing field, its parent mapping.
    pub location: Location,
    /// The field path, like `llm.providers[0].retry.attempts`; `<root>` for the document.
    pub path: String,
    /// What is wrong, lowercase, without a trailing full stop.
    pub message: String,
    /// The environment variable that set the offending value, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_var: Option<String>,
}

impl Diagnostic {
    /// Renders the diagnostic as the one-line form `FILE:LINE:COL: error[CODE]: path: message`.
    pub fn display_with_file<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        DisplayWithFile { diag: self, file }
    }
}

struct DisplayWithFile<'a> {
    diag: &'a Diagnostic,
    file: &'a str,
}

impl fmt::Display for DisplayWithFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.diag;
        let path = if d.path.is_empty() { "<root>" } else { &d.path };
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}: {}",
            self.file, d.location.line, d.location.column, d.severity, d.code, path, d.message
        )?;
        if let Some(var) = &d.env_var {
            write!(f, " (value from environment variable {var})")?;
        }
        Ok(())
    }
}

/// Keeps the first `max` diagnostics and, if any were dropped, adds one
/// saying how many, so a file with thousands of mistakes stays readable.
pub fn cap(diagnostics: &mut Vec<Diagnostic>, max: usize) {
    if diagnostics.len() > max {
        let dropped = diagnostics.len() - max;
        diagnostics.truncate(max);
        diagnostics.push(Diagnostic {
            severity: Severity::Error,
            code: Code::Limit,
            location: Location::START,
            path: String::new(),
            message: format!("{dropped} more diagnostics not shown (limit {max})"),
            env_var: None,
        });
    }
}

/// True when any diagnostic is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(|d| d.severity == Severity::Error)
}

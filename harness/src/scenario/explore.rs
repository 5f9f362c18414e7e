//! The `explore:` section: the fault space `gauntlet explore` draws
//! schedules from. Each template is checked the way a fault of the timeline
//! is, by the same code, at both ends of its ranges; a drawn fault is built
//! by that code too ([`instantiate`]), so a schedule can only hold faults a
//! scenario file could.

use std::path::Path;
use std::time::Duration;

use orchestrator::config::{format_duration, parse_duration, parse_size};
use orchestrator::yaml::{Code, child_path, has_errors};
use serde_json::Value;

use super::model::*;
use super::raw::{RawExplore, RawFault, RawTemplate};
use super::validate::{INSTANT_KINDS, MAX_LOAD_DURATION, MAX_PARAMS, Validator};

/// The most faults a schedule may hold (`explore.max_faults`).
pub const MAX_EXPLORE_FAULTS: u32 = 8;
/// The most templates in a space.
pub const MAX_SPACE: usize = 32;
/// The default `explore.max_faults`.
const DEFAULT_MAX_FAULTS: u32 = 3;
/// The default `explore.max_at_once`.
const DEFAULT_MAX_AT_ONCE: u32 = 2;
/// The default `explore.for`.
const DEFAULT_SPAN: Span = Span {
    min: Duration::from_secs(1),
    max: Duration::from_secs(5),
};
/// The shortest fault a space may draw: shorter ones are over before the
/// executor has applied them.
const MIN_FAULT: Duration = Duration::from_millis(100);

/// The checks that judge any schedule: SLOs over the whole run or every
/// window of a length, and invariants that name no fault. The others judge
/// the scenario's own timeline, whose faults a drawn schedule lacks.
pub fn schedule_checks(slos: &[Slo], invariants: &[Invariant]) -> (Vec<Slo>, Vec<Invariant>) {
    (
        slos.iter()
            .filter(|s| s.window.fault().is_none())
            .cloned()
            .collect(),
        invariants
            .iter()
            .filter(|i| i.faults().is_empty())
            .cloned()
            .collect(),
    )
}

/// Builds the fault `template` describes with these values, through the
/// validation scenario files go through. An error means the template and
/// the values do not make a valid fault (which validation at both ends of
/// every range makes unlikely, not impossible).
pub fn instantiate(
    template: &FaultTemplate,
    name: &str,
    at: Duration,
    duration: Option<Duration>,
    intensity: &[f64],
) -> Result<Fault, String> {
    let raw = RawFault {
        name: Some(name.to_owned()),
        at: Some(format_duration(at)),
        duration: duration.map(format_duration),
        target: Some(template.target.clone()),
        kind: Some(template.kind.clone()),
        params: template.params_at(intensity),
    };
    let mut validator = Validator::new(Path::new("explore.yaml"), None, &[]);
    let fault = validator.fault("fault", &raw, None);
    if has_errors(&validator.diagnostics) {
        let messages: Vec<String> = validator
            .diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect();
        return Err(messages.join("; "));
    }
    fault.ok_or_else(|| format!("fault `{name}` could not be built"))
}

impl Validator<'_> {
    /// Validates `explore:`. `load` is the load's length, when it is valid.
    pub(crate) fn explore(
        &mut self,
        raw: &RawExplore,
        load: Option<Duration>,
        slos: &[Slo],
        invariants: &[Invariant],
    ) -> Option<Explore> {
        let max_faults = match raw.max_faults {
            None => Some(DEFAULT_MAX_FAULTS),
            Some(v) => self.integer("explore.max_faults", v, 1, MAX_EXPLORE_FAULTS),
        };
        let max_at_once = match raw.max_at_once {
            None => Some(DEFAULT_MAX_AT_ONCE.min(max_faults.unwrap_or(DEFAULT_MAX_AT_ONCE))),
            Some(v) => self.integer(
                "explore.max_at_once",
                v,
                1,
                max_faults.unwrap_or(MAX_EXPLORE_FAULTS),
            ),
        };
        let span = match &raw.duration {
            None => Some(DEFAULT_SPAN),
            Some(ends) => self.span("explore.for", ends, load),
        };
        if raw.duration.is_none()
            && let Some(load) = load
            && DEFAULT_SPAN.max >= load
        {
            self.error(
                Code::Range,
                "explore",
                format!(
                    "faults last up to {} by default, which does not fit in the load of {}; give `for: [shortest, longest]`",
                    format_duration(DEFAULT_SPAN.max),
                    format_duration(load)
                ),
            );
        }
        let space = match raw.space.as_deref() {
            None => {
                self.error(
                    Code::MissingField,
                    "explore.space",
                    "missing `space` in `explore`: the faults to draw, like `[{target: llm, kind: latency, params: {latency: [50, 500]}}]`",
                );
                None
            }
            Some([]) => {
                self.error(
                    Code::Range,
                    "explore.space",
                    "the space is empty: give at least one fault to draw",
                );
                None
            }
            Some(list) if list.len() > MAX_SPACE => {
                self.error(
                    Code::Limit,
                    "explore.space",
                    format!(
                        "{} faults in the space, over the limit of {MAX_SPACE}",
                        list.len()
                    ),
                );
                None
            }
            Some(list) => {
                let templates: Vec<Option<FaultTemplate>> = list
                    .iter()
                    .enumerate()
                    .map(|(i, t)| self.template(&format!("explore.space[{i}]"), t, span, load))
                    .collect();
                templates.into_iter().collect()
            }
        };
        let (judged_slos, judged_invariants) = schedule_checks(slos, invariants);
        if judged_slos.is_empty() && judged_invariants.is_empty() {
            self.error(
                Code::Vacuous,
                "explore",
                "every SLO and invariant names a fault of the timeline, so none judges a drawn schedule; add one over `all` or an invariant such as `exactly_once_charge`",
            );
        }
        Some(Explore {
            max_faults: max_faults?,
            max_at_once: max_at_once?,
            space: space?,
        })
    }

    /// `[shortest, longest]`, each a duration, the longest under the load.
    fn span(&mut self, path: &str, ends: &[String], load: Option<Duration>) -> Option<Span> {
        let [min, max] = ends else {
            self.error(
                Code::Format,
                path,
                format!(
                    "expected `[shortest, longest]`, like `[1s, 5s]`, found {} values",
                    ends.len()
                ),
            );
            return None;
        };
        let min = self.duration_at(&format!("{path}[0]"), min)?;
        let max = self.duration_at(&format!("{path}[1]"), max)?;
        if min > max {
            self.error(
                Code::Range,
                path,
                format!(
                    "the shortest, {}, is longer than the longest, {}",
                    format_duration(min),
                    format_duration(max)
                ),
            );
            return None;
        }
        if let Some(load) = load
            && max >= load
        {
            self.error(
                Code::Range,
                &format!("{path}[1]"),
                format!(
                    "a fault of {} does not fit in the load of {}",
                    format_duration(max),
                    format_duration(load)
                ),
            );
            return None;
        }
        Some(Span { min, max })
    }

    fn duration_at(&mut self, path: &str, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Err(message) => {
                self.error(Code::Format, path, message);
                None
            }
            Ok(d) if d < MIN_FAULT || d > MAX_LOAD_DURATION => {
                self.error(
                    Code::Range,
                    path,
                    format!(
                        "duration `{text}` is out of range: expected at least {} and at most {}",
                        format_duration(MIN_FAULT),
                        format_duration(MAX_LOAD_DURATION)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }

    fn template(
        &mut self,
        path: &str,
        raw: &RawTemplate,
        span: Option<Span>,
        load: Option<Duration>,
    ) -> Option<FaultTemplate> {
        let target = self.required(path, "target", raw.target.as_deref());
        let kind = self.required(path, "kind", raw.kind.as_deref());
        let mut ranges = Vec::new();
        if let Some(params) = &raw.params {
            self.ranges(&child_path(path, "params"), params, "", &mut ranges);
            if ranges.len() > MAX_PARAMS {
                self.error(
                    Code::Limit,
                    &child_path(path, "params"),
                    format!("{} ranges, over the limit of {MAX_PARAMS}", ranges.len()),
                );
                return None;
            }
        }
        let (target, kind) = (target?.to_owned(), kind?.to_owned());
        let duration = match &raw.duration {
            Some(ends) => Some(self.span(&child_path(path, "for"), ends, load)?),
            None if INSTANT_KINDS.contains(&kind.as_str()) => None,
            None => Some(span?),
        };
        let template = FaultTemplate {
            target,
            kind,
            duration,
            params: raw.params.clone(),
            ranges,
        };
        // Both ends: the mildest values with the shortest duration, the
        // harshest with the longest. A fault that is valid at both is taken
        // to be valid between them (every rule of the format is a bound).
        for end in [0.0, 1.0] {
            let before = self.diagnostics.len();
            let lasts = template
                .duration
                .map(|s| if end == 0.0 { s.min } else { s.max });
            let fault = RawFault {
                name: Some("explore".to_owned()),
                at: Some("0s".to_owned()),
                duration: lasts.map(format_duration),
                target: Some(template.target.clone()),
                kind: Some(template.kind.clone()),
                params: template.params_at(&vec![end; template.ranges.len()]),
            };
            self.fault(path, &fault, None);
            if self.diagnostics.len() > before {
                return None;
            }
        }
        Some(template)
    }

    /// Finds the ranges in `value`: arrays of two numbers, or of two sizes.
    fn ranges(&mut self, path: &str, value: &Value, pointer: &str, out: &mut Vec<ParamRange>) {
        match value {
            Value::Array(items) => {
                if let Some(range) = range_of(items, pointer) {
                    if range.is_none() {
                        self.error(
                            Code::Format,
                            path,
                            "a range's ends must both be numbers or both sizes, like `[50, 500]` or `[32MiB, 128MiB]`",
                        );
                    }
                    out.extend(range);
                    return;
                }
                for (i, item) in items.iter().enumerate() {
                    self.ranges(
                        &format!("{path}[{i}]"),
                        item,
                        &format!("{pointer}/{i}"),
                        out,
                    );
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let escaped = key.replace('~', "~0").replace('/', "~1");
                    self.ranges(
                        &child_path(path, key),
                        item,
                        &format!("{pointer}/{escaped}"),
                        out,
                    );
                }
            }
            _ => {}
        }
    }
}

/// A two-element array as a range: `None` when it is not meant as one (not
/// two scalars), `Some(None)` when it is but its ends do not agree.
fn range_of(items: &[Value], pointer: &str) -> Option<Option<ParamRange>> {
    let [a, b] = items else {
        return None;
    };
    let range = |mild, harsh, unit| ParamRange {
        pointer: pointer.to_owned(),
        mild,
        harsh,
        unit,
    };
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let unit = if x.is_f64() || y.is_f64() {
                RangeUnit::Real
            } else {
                RangeUnit::Integer
            };
            Some(Some(range(x.as_f64()?, y.as_f64()?, unit)))
        }
        (Value::String(x), Value::String(y)) => match (parse_size(x), parse_size(y)) {
            (Ok(x), Ok(y)) => Some(Some(range(x as f64, y as f64, RangeUnit::Size))),
            // Two strings that are not sizes are left as written.
            (Err(_), Err(_)) => None,
            _ => Some(None),
        },
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => Some(None),
        _ => None,
    }
}

//! The system's configuration: the base file (`config: base` or a path),
//! the scenario's `overrides` merged over it at the tree level, the result
//! rendered as YAML and validated by the orchestrator itself (strict). Each
//! finding is mapped back into the scenario file: to the override that set
//! the value when one did, otherwise to `system.config`, naming the base
//! file's own line and column.

use std::io::Read;
use std::path::{Path, PathBuf};

use orchestrator::config::{self, ValidateOptions};
use orchestrator::yaml::{self, Code, Diagnostic, Limits, Node, NodeKind, is_null, is_path_prefix};

use super::validate::{SystemParts, Validator, suggest};

/// The directory, under some ancestor of a scenario file, that holds named configs.
const CONFIGS_DIR: &str = "fixtures/configs";
/// The most config files listed in a suggestion.
const MAX_LISTED_CONFIGS: usize = 100;
/// Where overrides live in a scenario file.
const OVERRIDES: &str = "system.overrides";

impl Validator<'_> {
    /// Loads, merges and validates the configuration. Returns the merged YAML
    /// and the base file's path when the configuration is valid.
    pub(crate) fn system_config(
        &mut self,
        system: &SystemParts<'_>,
    ) -> Option<(String, PathBuf, config::Config)> {
        let (base_path, shown) = match resolve_base(self.source, &system.config) {
            Ok(found) => found,
            Err((code, message)) => {
                self.error(code, "system.config", message);
                return None;
            }
        };
        let limits = Limits::default();
        let bytes = match read_limited(&base_path, limits.max_input_bytes) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.error(
                    Code::Io,
                    "system.config",
                    format!(
                        "cannot read base config {shown}: {}",
                        e.to_string().to_lowercase()
                    ),
                );
                return None;
            }
        };
        let base = match yaml::parse(&bytes, limits) {
            Ok(doc) => doc,
            Err(d) => {
                self.base_finding(&shown, &d, d.location);
                return None;
            }
        };
        for d in &base.diagnostics {
            self.base_finding(&shown, d, d.location);
        }
        let mut merged = base.root.clone();
        let mut touched = Touched::default();
        if let Some(overrides) = system.overrides {
            match &mut merged {
                Some(root) => merge(root, overrides, &mut touched),
                None => {
                    merged = Some(overrides.clone());
                    touched.replaced.push(String::new());
                }
            }
        }
        let text = merged.as_ref().map(render).unwrap_or_default();
        let outcome = config::validate(text.as_bytes(), &ValidateOptions::default());
        for d in &outcome.diagnostics {
            if touched.covers(&d.path) {
                let path = if d.path.is_empty() {
                    OVERRIDES.to_owned()
                } else if d.path.starts_with('[') {
                    format!("{OVERRIDES}{}", d.path)
                } else {
                    format!("{OVERRIDES}.{}", d.path)
                };
                self.push_at(Diagnostic {
                    path,
                    env_var: None,
                    ..d.clone()
                });
            } else {
                let location = base
                    .root
                    .as_ref()
                    .map_or(yaml::Location::START, |r| r.locate(&d.path).location);
                self.base_finding(&shown, d, location);
            }
        }
        outcome.config.map(|config| (text, base_path, config))
    }

    /// A finding about the base file, reported at `system.config`.
    fn base_finding(&mut self, shown: &str, d: &Diagnostic, at: yaml::Location) {
        let path = if d.path.is_empty() { "<root>" } else { &d.path };
        self.push_at(Diagnostic {
            severity: d.severity,
            code: d.code,
            location: at,
            path: "system.config".to_owned(),
            message: format!(
                "in base config {shown}:{}:{}: {path}: {}",
                at.line, at.column, d.message
            ),
            env_var: None,
        });
    }
}

/// Finds the base file: a name under the nearest `fixtures/configs` above
/// the scenario, or a path relative to it. Returns the path and how to show it.
fn resolve_base(source: &Path, spec: &str) -> Result<(PathBuf, String), (Code, String)> {
    let dir = source
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if spec.ends_with(".yaml") {
        let relative = Path::new(spec);
        if relative.is_absolute() {
            return Err((
                Code::Format,
                format!("config path `{spec}` must be relative to the scenario file"),
            ));
        }
        let path = dir.join(relative);
        if !path.is_file() {
            return Err((
                Code::Reference,
                format!("base config `{spec}` not found (paths are relative to the scenario file)"),
            ));
        }
        return Ok((path, spec.to_owned()));
    }
    let valid_name = !spec.is_empty()
        && spec.len() <= super::validate::MAX_NAME_BYTES
        && spec
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        return Err((
            Code::Format,
            format!(
                "invalid config `{spec}`: expected a name (for {CONFIGS_DIR}/NAME.yaml) or a relative path ending in `.yaml`"
            ),
        ));
    }
    // Walk up from the scenario's directory, so that a suite works from any
    // working directory and in any checkout.
    let start = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Some(configs) = start
        .ancestors()
        .map(|a| a.join(CONFIGS_DIR))
        .find(|c| c.is_dir())
    else {
        return Err((
            Code::Reference,
            format!(
                "no base config named `{spec}`: no {CONFIGS_DIR} directory in the scenario file's directory or above it"
            ),
        ));
    };
    let shown = format!("{CONFIGS_DIR}/{spec}.yaml");
    let path = configs.join(format!("{spec}.yaml"));
    if !path.is_file() {
        let names = config_names(&configs);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let hint = if names.is_empty() {
            String::new()
        } else {
            suggest(spec, &names)
        };
        return Err((
            Code::Reference,
            format!("no base config named `{spec}`: {shown} does not exist{hint}"),
        ));
    }
    Ok((path, shown))
}

/// The names of the configs in a directory, sorted, at most [`MAX_LISTED_CONFIGS`].
fn config_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .take(10 * MAX_LISTED_CONFIGS)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".yaml")?.to_owned();
            Some(name)
        })
        .collect();
    names.sort();
    names.truncate(MAX_LISTED_CONFIGS);
    names
}

/// Reads at most `limit + 1` bytes, so that the parser reports an oversized
/// file without the whole of it in memory.
fn read_limited(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// What the overrides changed, as configuration paths.
#[derive(Debug, Default)]
struct Touched {
    /// Values an override set whole (new keys, replaced scalars and sequences).
    replaced: Vec<String>,
    /// Mappings an override merged into.
    merged: Vec<String>,
}

impl Touched {
    /// Whether a finding at `path` is about a value an override set.
    fn covers(&self, path: &str) -> bool {
        self.replaced
            .iter()
            .any(|r| r == path || is_path_prefix(r, path))
            || (!path.is_empty() && self.merged.iter().any(|m| m == path))
    }
}

/// The configuration path of a node under `system.overrides`.
fn config_path(node: &Node) -> String {
    let rest = node.path.strip_prefix(OVERRIDES).unwrap_or(&node.path);
    rest.strip_prefix('.').unwrap_or(rest).to_owned()
}

/// Merges `over` into `base`: mappings key by key, anything else replaces.
fn merge(base: &mut Node, over: &Node, touched: &mut Touched) {
    match (&mut base.kind, &over.kind) {
        (NodeKind::Map(entries), NodeKind::Map(over_entries)) => {
            touched.merged.push(config_path(over));
            for (key, value) in over_entries {
                let name = key.scalar().unwrap_or_default();
                match entries.iter_mut().find(|(k, _)| k.scalar() == Some(name)) {
                    Some((_, existing)) => merge(existing, value, touched),
                    None => {
                        touched.replaced.push(config_path(value));
                        entries.push((key.clone(), value.clone()));
                    }
                }
            }
        }
        // A list of mappings (providers, API keys) merges item by item, so
        // that an override can change one field of the first provider
        // without repeating it; items past the base's end are appended.
        // Lists of scalars (allowed tools, origins) are replaced whole.
        (NodeKind::Seq(items), NodeKind::Seq(over_items))
            if !over_items.is_empty()
                && over_items
                    .iter()
                    .all(|i| matches!(i.kind, NodeKind::Map(_))) =>
        {
            touched.merged.push(config_path(over));
            for (i, over_item) in over_items.iter().enumerate() {
                match items.get_mut(i) {
                    Some(existing) => merge(existing, over_item, touched),
                    None => {
                        touched.replaced.push(config_path(over_item));
                        items.push(over_item.clone());
                    }
                }
            }
        }
        _ => {
            touched.replaced.push(config_path(over));
            *base = over.clone();
        }
    }
}

/// Renders a tree as block YAML that parses back to the same values:
/// scalars that could change meaning when re-read are double-quoted (JSON
/// escapes are valid YAML), all others are written plain.
pub(crate) fn render(node: &Node) -> String {
    let mut out = String::new();
    if is_block(node) {
        block(node, 0, &mut out);
    } else {
        out.push_str(&inline(node));
        out.push('\n');
    }
    out
}

fn is_block(node: &Node) -> bool {
    match &node.kind {
        NodeKind::Map(entries) => !entries.is_empty(),
        NodeKind::Seq(items) => !items.is_empty(),
        _ => false,
    }
}

fn block(node: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let value = |v: &Node, out: &mut String| {
        if is_block(v) {
            out.push('\n');
            block(v, indent + 2, out);
        } else {
            out.push(' ');
            out.push_str(&inline(v));
            out.push('\n');
        }
    };
    match &node.kind {
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                out.push_str(&pad);
                out.push_str(&key(k));
                out.push(':');
                value(v, out);
            }
        }
        NodeKind::Seq(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                if is_block(item) && matches!(item.kind, NodeKind::Map(_)) {
                    // `- key: value` with the other keys under the first.
                    let mut nested = String::new();
                    block(item, indent + 2, &mut nested);
                    out.push(' ');
                    out.push_str(nested.get(indent + 2..).unwrap_or_default());
                } else {
                    value(item, out);
                }
            }
        }
        _ => {}
    }
}

/// Text that reads back as the same plain scalar in block context.
fn safe_plain(text: &str) -> bool {
    !text.is_empty()
        && text != "-"
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '/' | '-'))
}

fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn key(node: &Node) -> String {
    let text = node.scalar().unwrap_or_default();
    if safe_plain(text) {
        text.to_owned()
    } else {
        quoted(text)
    }
}

fn inline(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar { value, plain: true } if is_null(value) => "null".to_owned(),
        // Plain scalars outside the safe set are strings under the core
        // schema, so quoting them keeps their meaning.
        NodeKind::Scalar { value, plain: true } if safe_plain(value) => value.clone(),
        NodeKind::Scalar { value, .. } => quoted(value),
        NodeKind::Map(_) => "{}".to_owned(),
        NodeKind::Seq(_) => "[]".to_owned(),
        NodeKind::Tombstone => "null".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        yaml::parse(text.as_bytes(), Limits::default())
            .ok()
            .and_then(|d| d.root)
            .unwrap_or_else(|| panic!("{text} parses"))
    }

    /// The values as the YAML front end types them.
    fn typed(text: &str) -> serde_json::Value {
        let mut doc = yaml::parse(text.as_bytes(), Limits::default())
            .unwrap_or_else(|d| panic!("{text} parses: {d:?}"));
        let mut diags = Vec::new();
        let options = yaml::DecodeOptions {
            unknown_fields: yaml::Severity::Error,
        };
        let value =
            yaml::decode::<serde_json::Value>(&mut doc, options, &mut diags, &mut Vec::new());
        assert!(diags.is_empty(), "{diags:?}");
        value.unwrap_or_default()
    }

    #[test]
    fn render_reads_back_the_same() {
        let text = "a: 1\nb: \"2\"\nc: [x, -1, {d: e f}, [], '-']\ng: {}\nh: ~\ni: 'it''s: #'\nj:\n  - - 1.5\n    - true\n  - k: 'multi\n\n      line'\n\"x y\": \"\\t\"\n";
        let rendered = render(&tree(text));
        assert_eq!(typed(&rendered), typed(text), "{rendered}");
        assert!(rendered.contains("b: \"2\""), "{rendered}");
    }

    #[test]
    fn lists_of_mappings_merge_by_position() {
        let mut base = tree("p: [{a: 1, b: 2}, {a: 3}]\nt: [x, y]\n");
        let over = tree("p: [{b: 5}, {c: 6}, {a: 7}]\nt: [z]\n");
        let mut touched = Touched::default();
        merge(&mut base, &over, &mut touched);
        assert_eq!(
            render(&base),
            "p:\n  - a: 1\n    b: 5\n  - a: 3\n    c: 6\n  - a: 7\nt:\n  - z\n"
        );
    }

    #[test]
    fn merge_replaces_all_but_mappings() {
        let mut base = tree("a: {b: 1, c: [1, 2]}\nd: x\n");
        let over = tree("a: {c: [3], e: 4}\nd: {f: 5}\n");
        let mut touched = Touched::default();
        merge(&mut base, &over, &mut touched);
        assert_eq!(
            render(&base),
            "a:\n  b: 1\n  c:\n    - 3\n  e: 4\nd:\n  f: 5\n"
        );
        assert_eq!(touched.replaced, ["a.c", "a.e", "d"]);
        assert_eq!(touched.merged, ["", "a"]);
        assert!(touched.covers("d.f"));
        assert!(touched.covers("a"));
        assert!(!touched.covers("a.b"));
        assert!(!touched.covers(""));
    }
}

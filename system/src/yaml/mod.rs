//! The YAML front end shared by every input we read (orchestrator configs,
//! and later the harness's scenarios): bounded parsing into a located tree,
//! overrides by field path, and decoding into serde structs that reports
//! every error with its file position and field path.
//!
//! Parsing is done by `granit-parser` (the event parser under `serde-saphyr`);
//! see ARCHITECTURE.md for why we build our own tree on top of it.

mod de;
mod diag;
mod tree;

pub use de::{DecodeOptions, decode};
pub use diag::{Code, Diagnostic, Location, Severity, cap, has_errors};
pub use tree::{
    Document, Limits, Node, NodeKind, child_path, index_path, is_null, is_path_prefix, parse,
};

/// One value to set in a document before decoding, by field path segments,
/// as environment overrides do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The source of the value, named in diagnostics (an environment variable).
    pub source: String,
    /// Field path segments; a numeric segment indexes a sequence.
    pub segments: Vec<String>,
    /// The value, read as a plain scalar.
    pub value: String,
}

/// Applies overrides in order. A path through an existing scalar, or an index
/// past the end of a sequence, is an error naming the override's source.
pub fn apply_overrides(doc: &mut Document, overrides: &[Override], diags: &mut Vec<Diagnostic>) {
    for o in overrides {
        if let Err(diag) = apply_override(doc, o) {
            diags.push(diag);
        }
    }
}

fn apply_override(doc: &mut Document, o: &Override) -> Result<(), Diagnostic> {
    let fail = |location: Location, path: String, code: Code, message: String| Diagnostic {
        severity: Severity::Error,
        code,
        location,
        path,
        message,
        env_var: Some(o.source.clone()),
    };
    let mut ids = Vec::with_capacity(o.segments.len() + 1);
    for _ in 0..=o.segments.len() {
        ids.push(doc.fresh_id());
    }
    let root = doc.root.get_or_insert_with(|| Node {
        id: ids[0],
        kind: NodeKind::Map(Vec::new()),
        location: Location::START,
        path: String::new(),
        env_var: None,
    });
    if matches!(&root.kind, NodeKind::Scalar { value, plain: true } if is_null(value)) {
        root.kind = NodeKind::Map(Vec::new());
    }
    let mut node = root;
    for (depth, segment) in o.segments.iter().enumerate() {
        let id = ids[depth + 1];
        let location = node.location;
        let parent_path = node.path.clone();
        let is_null =
            matches!(&node.kind, NodeKind::Scalar { value, plain: true } if is_null(value));
        if is_null {
            node.kind = if segment.parse::<usize>().is_ok() {
                NodeKind::Seq(Vec::new())
            } else {
                NodeKind::Map(Vec::new())
            };
        }
        let described = node.describe();
        let blank = |path: String| Node {
            id,
            kind: NodeKind::Scalar {
                value: String::new(),
                plain: true,
            },
            location,
            path,
            env_var: Some(o.source.clone()),
        };
        node = match &mut node.kind {
            NodeKind::Map(entries) => {
                let position = entries
                    .iter()
                    .position(|(k, _)| k.scalar().is_some_and(|k| k.eq_ignore_ascii_case(segment)));
                let index = match position {
                    Some(i) => i,
                    None => {
                        let path = child_path(&parent_path, segment);
                        let mut key = blank(path.clone());
                        key.kind = NodeKind::Scalar {
                            value: segment.clone(),
                            plain: true,
                        };
                        entries.push((key, blank(path)));
                        entries.len() - 1
                    }
                };
                &mut entries[index].1
            }
            NodeKind::Seq(items) => {
                let len = items.len();
                let Ok(index) = segment.parse::<usize>() else {
                    return Err(fail(
                        location,
                        parent_path,
                        Code::Type,
                        format!(
                            "cannot apply override: `{segment}` is not an index into this sequence"
                        ),
                    ));
                };
                if index > len {
                    return Err(fail(
                        location,
                        parent_path,
                        Code::Range,
                        format!(
                            "cannot apply override: index {index} is past the end of a sequence of {len} items"
                        ),
                    ));
                }
                if index == len {
                    items.push(blank(index_path(&parent_path, index)));
                }
                &mut items[index]
            }
            _ => {
                return Err(fail(
                    location,
                    parent_path,
                    Code::Type,
                    format!("cannot apply override: {described} is not a mapping or sequence"),
                ));
            }
        };
    }
    node.kind = NodeKind::Scalar {
        value: o.value.clone(),
        plain: true,
    };
    node.env_var = Some(o.source.clone());
    Ok(())
}

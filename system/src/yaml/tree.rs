//! The located YAML tree: every node knows its position, its field path and,
//! when an environment variable set it, that variable.

use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle, ScanError, Span};

use super::diag::{Code, Diagnostic, Location, Severity};

/// Bounds on what the parser accepts, so that no input can exhaust time or memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_input_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings, aliases expanded.
    pub max_depth: usize,
    /// Most nodes in the tree, aliases expanded (this is what defuses alias bombs).
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 1024 * 1024,
            max_depth: 64,
            max_nodes: 100_000,
        }
    }
}

/// What a node holds.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A scalar. `plain` is true for an untagged plain scalar, the only kind
    /// that may be read as null, a boolean or a number.
    Scalar {
        /// The text after escape processing.
        value: String,
        /// Whether the scalar was plain (not quoted, not a block, not `!!str`).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping; keys are scalars, unique, in source order.
    Map(Vec<(Node, Node)>),
    /// A node whose value failed to decode. Decoding reads it as absent so
    /// that the rest of the document can still be checked.
    Tombstone,
}

/// A node with its position and field path.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique within its document.
    pub id: u32,
    /// The node's value.
    pub kind: NodeKind,
    /// Where the node starts.
    pub location: Location,
    /// Its field path from the root, like `llm.providers[0].name`.
    pub path: String,
    /// The environment variable that set this node, if one did.
    pub env_var: Option<String>,
}

impl Node {
    /// The scalar text, if this node is a scalar.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A short description of the node's type for error messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { value, plain: true } if is_null(value) => "null".to_owned(),
            NodeKind::Scalar { value, .. } => {
                let shown: String = value.chars().take(40).collect();
                let ellipsis = if value.chars().count() > 40 {
                    "..."
                } else {
                    ""
                };
                format!("`{shown}{ellipsis}`")
            }
            NodeKind::Seq(_) => "a sequence".to_owned(),
            NodeKind::Map(_) => "a mapping".to_owned(),
            NodeKind::Tombstone => "an invalid value".to_owned(),
        }
    }

    /// Finds a node by id.
    pub fn find_mut(&mut self, id: u32) -> Option<&mut Node> {
        if self.id == id {
            return Some(self);
        }
        match &mut self.kind {
            NodeKind::Seq(items) => items.iter_mut().find_map(|n| n.find_mut(id)),
            NodeKind::Map(entries) => entries
                .iter_mut()
                .find_map(|(k, v)| if k.id == id { Some(k) } else { v.find_mut(id) }),
            _ => None,
        }
    }

    /// The id of the node that holds `id` as a sequence item or mapping value.
    pub fn parent_of(&self, id: u32) -> Option<u32> {
        let children: Vec<&Node> = match &self.kind {
            NodeKind::Seq(items) => items.iter().collect(),
            NodeKind::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        if children.iter().any(|c| c.id == id) {
            return Some(self.id);
        }
        children.iter().find_map(|c| c.parent_of(id))
    }

    /// The deepest node on the way to `path`: the node itself when it exists,
    /// otherwise its nearest existing ancestor.
    pub fn locate(&self, path: &str) -> &Node {
        let children: Box<dyn Iterator<Item = &Node>> = match &self.kind {
            NodeKind::Seq(items) => Box::new(items.iter()),
            NodeKind::Map(entries) => Box::new(entries.iter().map(|(_, v)| v)),
            _ => return self,
        };
        for child in children {
            if child.path == path {
                return child;
            }
            if is_path_prefix(&child.path, path) {
                return child.locate(path);
            }
        }
        self
    }

    fn count_nodes_and_depth(&self) -> (usize, usize) {
        match &self.kind {
            NodeKind::Seq(items) => items.iter().fold((1, 1), |(n, d), c| {
                let (cn, cd) = c.count_nodes_and_depth();
                (n + cn, d.max(cd + 1))
            }),
            NodeKind::Map(entries) => entries.iter().fold((1, 1), |(n, d), (_, v)| {
                let (cn, cd) = v.count_nodes_and_depth();
                (n + cn + 1, d.max(cd + 1))
            }),
            _ => (1, 0),
        }
    }
}

/// Whether `prefix` is a proper ancestor path of `path`.
pub fn is_path_prefix(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return !path.is_empty();
    }
    path.len() > prefix.len()
        && path.starts_with(prefix)
        && matches!(path.as_bytes()[prefix.len()], b'.' | b'[')
}

/// The path of a mapping entry. Keys that are not simple names are quoted,
/// so that every path reads back unambiguously.
pub fn child_path(parent: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), simple) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", serde_json::Value::String(key.to_owned())),
    }
}

/// The path of a sequence item.
pub fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Whether a plain scalar reads as null under the YAML 1.2 core schema.
pub fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// A parsed YAML document: its root (absent for an empty file) and the
/// non-fatal findings of parsing (duplicate keys).
#[derive(Debug)]
pub struct Document {
    /// The root node, `None` when the file holds no document.
    pub root: Option<Node>,
    /// Findings that did not stop parsing.
    pub diagnostics: Vec<Diagnostic>,
    next_id: u32,
}

impl Document {
    /// A fresh node id, for nodes added after parsing (environment overrides).
    pub fn fresh_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }
}

fn error(code: Code, location: Location, path: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        code,
        location,
        path: path.to_owned(),
        message: message.into(),
        env_var: None,
    }
}

fn location_of(span: &Span) -> Location {
    Location {
        line: span.start.line().max(1),
        column: span.start.col() + 1,
    }
}

/// Location of a byte offset in `text`, for errors found before parsing.
fn location_of_offset(bytes: &[u8], offset: usize) -> Location {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Location { line, column }
}

/// Parses bytes into a located tree. A fatal problem (encoding, syntax, limits)
/// yields a single diagnostic; duplicate keys are collected and parsing goes on.
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Document, Diagnostic> {
    if bytes.len() > limits.max_input_bytes {
        return Err(error(
            Code::Limit,
            Location::START,
            "",
            format!(
                "input is {} bytes, over the limit of {} bytes",
                bytes.len(),
                limits.max_input_bytes
            ),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return Err(error(
                Code::Encoding,
                location_of_offset(bytes, e.valid_up_to()),
                "",
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Builder::new(limits).run(text)
}

/// One open collection while building.
enum Frame {
    Seq {
        node: Node,
        items: Vec<Node>,
        anchor: usize,
    },
    Map {
        node: Node,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        anchor: usize,
        /// Key text to its line, so duplicate detection stays linear.
        seen: HashMap<String, usize>,
    },
}

struct Builder {
    limits: Limits,
    next_id: u32,
    nodes: usize,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    diagnostics: Vec<Diagnostic>,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn new(limits: Limits) -> Self {
        Builder {
            limits,
            next_id: 0,
            nodes: 0,
            stack: Vec::new(),
            anchors: HashMap::new(),
            diagnostics: Vec::new(),
            root: None,
            documents: 0,
        }
    }

    fn run(mut self, text: &str) -> Result<Document, Diagnostic> {
        let depth = self.limits.max_depth;
        let options = granit_parser::options! {
            flow_nesting_limit: depth,
            block_nesting_limit: depth,
            emit_comments: false,
        };
        for event in Parser::new_from_str_with_options(text, options) {
            let (event, span) = event.map_err(|e| scan_error(&e))?;
            self.event(event, &span)?;
        }
        Ok(Document {
            root: self.root,
            diagnostics: self.diagnostics,
            next_id: self.next_id,
        })
    }

    /// The path and the key-ness of the node about to start, from the open frame.
    fn next_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some(Frame::Seq { node, items, .. }) => (index_path(&node.path, items.len()), false),
            Some(Frame::Map {
                node, key: None, ..
            }) => (node.path.clone(), true),
            Some(Frame::Map {
                node,
                key: Some(key),
                ..
            }) => (
                child_path(&node.path, key.scalar().unwrap_or_default()),
                false,
            ),
        }
    }

    fn new_node(
        &mut self,
        kind: NodeKind,
        location: Location,
        path: String,
    ) -> Result<Node, Diagnostic> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(error(
                Code::Limit,
                location,
                &path,
                format!("document has more than {} nodes", self.limits.max_nodes),
            ));
        }
        self.next_id += 1;
        Ok(Node {
            id: self.next_id,
            kind,
            location,
            path,
            env_var: None,
        })
    }

    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), Diagnostic> {
        let location = location_of(span);
        match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(error(
                        Code::Syntax,
                        location,
                        "",
                        "expected a single YAML document, found another",
                    ));
                }
                Ok(())
            }
            Event::Scalar(value, style, anchor, tag) => {
                let forced_string = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                if let Some(tag) = tag.as_ref().filter(|t| !t.is_yaml_core_schema()) {
                    return Err(error(
                        Code::Syntax,
                        location,
                        &self.next_path().0,
                        format!("unsupported tag `{}{}`", tag.handle(), tag.suffix()),
                    ));
                }
                let plain = style == ScalarStyle::Plain && !forced_string;
                let (path, _) = self.next_path();
                let node = self.new_node(
                    NodeKind::Scalar {
                        value: value.into_owned(),
                        plain,
                    },
                    location,
                    path,
                )?;
                self.complete(node, anchor)
            }
            Event::SequenceStart(_, anchor, _) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    return Err(error(
                        Code::Syntax,
                        location,
                        &path,
                        "mapping keys must be scalars",
                    ));
                }
                self.check_depth(location, &path)?;
                let node = self.new_node(NodeKind::Seq(Vec::new()), location, path)?;
                self.stack.push(Frame::Seq {
                    node,
                    items: Vec::new(),
                    anchor,
                });
                Ok(())
            }
            Event::MappingStart(_, anchor, _) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    return Err(error(
                        Code::Syntax,
                        location,
                        &path,
                        "mapping keys must be scalars",
                    ));
                }
                self.check_depth(location, &path)?;
                let node = self.new_node(NodeKind::Map(Vec::new()), location, path)?;
                self.stack.push(Frame::Map {
                    node,
                    entries: Vec::new(),
                    key: None,
                    anchor,
                    seen: HashMap::new(),
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        mut node,
                        items,
                        anchor,
                    }) => {
                        node.kind = NodeKind::Seq(items);
                        (node, anchor)
                    }
                    Some(Frame::Map {
                        mut node,
                        entries,
                        anchor,
                        ..
                    }) => {
                        node.kind = NodeKind::Map(entries);
                        (node, anchor)
                    }
                    None => {
                        return Err(error(
                            Code::Syntax,
                            location,
                            "",
                            "unbalanced collection end",
                        ));
                    }
                };
                self.complete(node, anchor)
            }
            Event::Alias(id) => {
                let (path, is_key) = self.next_path();
                let Some(target) = self.anchors.get(&id) else {
                    return Err(error(
                        Code::Syntax,
                        location,
                        &path,
                        "alias refers to an unknown anchor",
                    ));
                };
                let (count, depth) = target.count_nodes_and_depth();
                if is_key && !matches!(target.kind, NodeKind::Scalar { .. }) {
                    return Err(error(
                        Code::Syntax,
                        location,
                        &path,
                        "mapping keys must be scalars",
                    ));
                }
                if self.stack.len() + depth > self.limits.max_depth {
                    return Err(error(
                        Code::Limit,
                        location,
                        &path,
                        format!(
                            "alias expands past the nesting limit of {}",
                            self.limits.max_depth
                        ),
                    ));
                }
                if self.nodes + count > self.limits.max_nodes {
                    return Err(error(
                        Code::Limit,
                        location,
                        &path,
                        format!(
                            "alias expansion exceeds the limit of {} nodes",
                            self.limits.max_nodes
                        ),
                    ));
                }
                let mut copy = target.clone();
                self.nodes += count;
                self.rebase(&mut copy, path);
                copy.location = location;
                self.complete(copy, 0)
            }
            // Comments are disabled in the options; anchors are carried on node events.
            _ => Ok(()),
        }
    }

    fn check_depth(&self, location: Location, path: &str) -> Result<(), Diagnostic> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(error(
                Code::Limit,
                location,
                path,
                format!(
                    "nesting is deeper than the limit of {}",
                    self.limits.max_depth
                ),
            ));
        }
        Ok(())
    }

    /// Gives a copied subtree fresh ids and the paths of its new place.
    fn rebase(&mut self, node: &mut Node, path: String) {
        self.next_id += 1;
        node.id = self.next_id;
        match &mut node.kind {
            NodeKind::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.rebase(item, index_path(&path, i));
                }
            }
            NodeKind::Map(entries) => {
                for (key, value) in entries.iter_mut() {
                    let child = child_path(&path, key.scalar().unwrap_or_default());
                    self.next_id += 1;
                    key.id = self.next_id;
                    key.path = child.clone();
                    self.rebase(value, child);
                }
            }
            _ => {}
        }
        node.path = path;
    }

    /// Attaches a finished node to its parent, or makes it the root.
    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            // The stored copy counts against the node budget, so that nested
            // anchors cannot multiply memory beyond it.
            let (count, _) = node.count_nodes_and_depth();
            self.nodes += count;
            if self.nodes > self.limits.max_nodes {
                return Err(error(
                    Code::Limit,
                    node.location,
                    &node.path,
                    format!(
                        "anchors and aliases exceed the limit of {} nodes",
                        self.limits.max_nodes
                    ),
                ));
            }
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                key: key @ None, ..
            }) => *key = Some(node),
            Some(Frame::Map {
                node: map,
                entries,
                key,
                seen,
                ..
            }) => {
                let Some(mut key) = key.take() else {
                    return Ok(());
                };
                let name = key.scalar().unwrap_or_default().to_owned();
                key.path = child_path(&map.path, &name);
                if let Some(first_line) = seen.get(&name) {
                    self.diagnostics.push(error(
                        Code::DuplicateKey,
                        key.location,
                        &key.path,
                        format!("duplicate key `{name}`, first defined on line {first_line}"),
                    ));
                } else {
                    seen.insert(name, key.location.line);
                    entries.push((key, node));
                }
            }
        }
        Ok(())
    }
}

fn scan_error(e: &ScanError) -> Diagnostic {
    let marker = e.marker();
    let info = e.info();
    let mut message = info.lines().next().unwrap_or("invalid YAML").to_owned();
    if let Some(first) = message.get(..1) {
        message = first.to_lowercase() + &message[1..];
    }
    let message = message.trim_end_matches('.').to_owned();
    let lower = message.to_lowercase();
    let code =
        if lower.contains("recursion") || lower.contains("nesting") || lower.contains("limit") {
            Code::Limit
        } else {
            Code::Syntax
        };
    error(
        code,
        Location {
            line: marker.line().max(1),
            column: marker.col() + 1,
        },
        "",
        message,
    )
}

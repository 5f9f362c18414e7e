//! Decoding a located tree into raw serde structs, reporting every error.
//!
//! serde stops at the first error, but users want all of them. So decoding
//! runs in passes: when a node fails, its diagnostic is recorded, the node is
//! replaced by a tombstone (which decodes as absent, empty or zero) and the
//! next pass goes on. Unknown fields are filtered out before serde sees them,
//! with a diagnostic whose severity the caller chooses. Raw structs therefore
//! make every field optional; required fields are checked afterwards, where
//! the parent mapping's location is known.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::diag::{Code, Diagnostic, Severity};
use super::tree::{Document, Node, NodeKind, is_null};

/// Most decoding passes, and so most decode errors, per document.
const MAX_PASSES: usize = 100;

/// What decoding does with fields the schema does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The severity of an unknown field.
    pub unknown_fields: Severity,
}

/// Decodes the document's root into `T`. Returns `None` when the root itself
/// cannot be decoded; every finding goes to `diags`. Nodes that failed are
/// tombstoned in `doc`, and their ids are returned in `failed` so that
/// validation can stay quiet about them.
pub fn decode<T: DeserializeOwned>(
    doc: &mut Document,
    options: DecodeOptions,
    diags: &mut Vec<Diagnostic>,
    failed: &mut Vec<String>,
) -> Option<T> {
    let root = doc.root.as_mut()?;
    let ctx = Ctx {
        options,
        unknown: RefCell::new(Vec::new()),
        seen: RefCell::new(HashSet::new()),
    };
    let before = diags.len();
    for _ in 0..MAX_PASSES {
        let result = T::deserialize(NodeDe {
            node: root,
            ctx: &ctx,
        });
        match result {
            Ok(value) => {
                diags.extend(ctx.unknown.into_inner());
                return Some(value);
            }
            Err(DeError::At {
                node_id,
                diagnostic,
            }) => {
                let target = match root.find_mut(node_id) {
                    Some(n) if matches!(n.kind, NodeKind::Tombstone) => root.parent_of(node_id),
                    Some(_) => {
                        failed.push(diagnostic.path.clone());
                        diags.push(diagnostic);
                        Some(node_id)
                    }
                    None => None,
                };
                match target {
                    Some(id) if id != root.id => {
                        if let Some(node) = root.find_mut(id) {
                            node.kind = NodeKind::Tombstone;
                        }
                    }
                    _ => break,
                }
            }
            Err(DeError::Bare(message)) => {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    code: Code::Type,
                    location: root.location,
                    path: String::new(),
                    message,
                    env_var: None,
                });
                break;
            }
        }
    }
    if diags.len() - before >= MAX_PASSES {
        diags.push(Diagnostic {
            severity: Severity::Error,
            code: Code::Limit,
            location: root.location,
            path: String::new(),
            message: format!("decoding stopped after {MAX_PASSES} errors; fix these and run again"),
            env_var: None,
        });
    }
    diags.extend(ctx.unknown.into_inner());
    None
}

struct Ctx {
    options: DecodeOptions,
    unknown: RefCell<Vec<Diagnostic>>,
    /// Key node ids already reported as unknown, so later passes do not repeat them.
    seen: RefCell<HashSet<u32>>,
}

/// A decoding error: located at a node, or not yet located (raised by a visitor).
#[derive(Debug)]
enum DeError {
    At {
        node_id: u32,
        diagnostic: Diagnostic,
    },
    Bare(String),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::At { diagnostic, .. } => f.write_str(&diagnostic.message),
            DeError::Bare(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Bare(msg.to_string())
    }
}

struct NodeDe<'a> {
    node: &'a Node,
    ctx: &'a Ctx,
}

impl NodeDe<'_> {
    fn error(&self, message: impl Into<String>) -> DeError {
        DeError::At {
            node_id: self.node.id,
            diagnostic: Diagnostic {
                severity: Severity::Error,
                code: Code::Type,
                location: self.node.location,
                path: self.node.path.clone(),
                message: message.into(),
                env_var: self.node.env_var.clone(),
            },
        }
    }

    fn expected(&self, what: &str) -> DeError {
        self.error(format!("expected {what}, found {}", self.node.describe()))
    }

    /// Attaches visitor errors to this node.
    fn locate<T>(&self, result: Result<T, DeError>) -> Result<T, DeError> {
        result.map_err(|e| match e {
            DeError::Bare(message) => self.error(message),
            located => located,
        })
    }

    fn plain(&self) -> Option<&str> {
        match &self.node.kind {
            NodeKind::Scalar { value, plain: true } => Some(value),
            _ => None,
        }
    }

    fn integer(&self, type_name: &str) -> Result<i128, DeError> {
        if matches!(self.node.kind, NodeKind::Tombstone) {
            return Ok(0);
        }
        let text = self.plain().ok_or_else(|| self.expected("an integer"))?;
        parse_int(text).ok_or_else(|| {
            if text
                .trim_start_matches(['+', '-'])
                .bytes()
                .all(|b| b.is_ascii_digit())
                && !text.is_empty()
            {
                self.error(format!("number {text} does not fit in {type_name}"))
            } else {
                self.expected("an integer")
            }
        })
    }
}

/// Parses a YAML 1.2 core-schema integer: decimal, `0x` hex or `0o` octal.
fn parse_int(text: &str) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// Parses a YAML 1.2 core-schema float (integers included).
fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ => {
            let looks_numeric = text
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
                && text.bytes().any(|b| b.is_ascii_digit());
            if looks_numeric {
                text.parse().ok()
            } else {
                None
            }
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

macro_rules! deserialize_integer {
    ($($method:ident => $visit:ident : $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let value = self.integer(stringify!($ty))?;
            let value = <$ty>::try_from(value).map_err(|_| {
                self.error(format!(
                    "number {value} is out of range for {} ({}..={})",
                    stringify!($ty), <$ty>::MIN, <$ty>::MAX
                ))
            })?;
            self.locate(visitor.$visit(value))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            NodeKind::Tombstone => visitor.visit_unit(),
            NodeKind::Scalar {
                value,
                plain: false,
            } => visitor.visit_str(value),
            NodeKind::Scalar { value, plain: true } => {
                if is_null(value) {
                    visitor.visit_unit()
                } else if let Some(b) = parse_bool(value) {
                    visitor.visit_bool(b)
                } else if let Some(i) = parse_int(value) {
                    match (i64::try_from(i), u64::try_from(i)) {
                        (Ok(i), _) => visitor.visit_i64(i),
                        (_, Ok(u)) => visitor.visit_u64(u),
                        _ => visitor.visit_str(value),
                    }
                } else if let Some(f) = parse_float(value) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(value)
                }
            }
            NodeKind::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
                ctx: self.ctx,
            }),
            NodeKind::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter().collect::<Vec<_>>().into_iter(),
                value: None,
                ctx: self.ctx,
            }),
        };
        self.locate(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if matches!(self.node.kind, NodeKind::Tombstone) {
            return self.locate(visitor.visit_bool(false));
        }
        match self.plain().and_then(parse_bool) {
            Some(b) => self.locate(visitor.visit_bool(b)),
            None => Err(self.expected("a boolean (true or false)")),
        }
    }

    deserialize_integer! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if matches!(self.node.kind, NodeKind::Tombstone) {
            return self.locate(visitor.visit_f64(0.0));
        }
        match self.plain().and_then(parse_float) {
            Some(f) => self.locate(visitor.visit_f64(f)),
            None => Err(self.expected("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Tombstone => self.locate(visitor.visit_str("")),
            NodeKind::Scalar { value, plain } if !(*plain && is_null(value)) => {
                self.locate(visitor.visit_str(value))
            }
            _ => Err(self.expected("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Tombstone => self.locate(visitor.visit_none()),
            NodeKind::Scalar { value, plain: true } if is_null(value) => {
                self.locate(visitor.visit_none())
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Tombstone => self.locate(visitor.visit_unit()),
            NodeKind::Scalar { value, plain: true } if is_null(value) => {
                self.locate(visitor.visit_unit())
            }
            _ => Err(self.expected("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.node;
        let result = visitor.visit_newtype_struct(NodeDe {
            node,
            ctx: self.ctx,
        });
        self.locate(result)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            NodeKind::Tombstone => visitor.visit_seq(SeqAccess {
                items: [].iter(),
                ctx: self.ctx,
            }),
            NodeKind::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
                ctx: self.ctx,
            }),
            _ => return Err(self.expected("a sequence")),
        };
        self.locate(result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let entries: Vec<&(Node, Node)> = match &self.node.kind {
            NodeKind::Tombstone => Vec::new(),
            NodeKind::Map(entries) => entries.iter().collect(),
            _ => return Err(self.expected("a mapping")),
        };
        let result = visitor.visit_map(MapAccess {
            entries: entries.into_iter(),
            value: None,
            ctx: self.ctx,
        });
        self.locate(result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries: Vec<&(Node, Node)> = match &self.node.kind {
            NodeKind::Tombstone => Vec::new(),
            NodeKind::Map(entries) => entries
                .iter()
                .filter(|(key, _)| {
                    let name = key.scalar().unwrap_or_default();
                    let known = fields.contains(&name);
                    if !known {
                        self.report_unknown(key, name, fields);
                    }
                    known
                })
                .collect(),
            _ => return Err(self.expected("a mapping")),
        };
        let result = visitor.visit_map(MapAccess {
            entries: entries.into_iter(),
            value: None,
            ctx: self.ctx,
        });
        self.locate(result)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            NodeKind::Scalar { value, .. } => {
                if !variants.contains(&value.as_str()) {
                    return Err(self.error(format!(
                        "unknown value `{value}`, expected one of {}",
                        list(variants)
                    )));
                }
                let access: de::value::StrDeserializer<'_, DeError> =
                    value.as_str().into_deserializer();
                self.locate(visitor.visit_enum(access))
            }
            NodeKind::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                let result = visitor.visit_enum(EnumAccess {
                    key,
                    value,
                    ctx: self.ctx,
                });
                self.locate(result)
            }
            _ => Err(self.expected(&format!("one of {}", list(variants)))),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.locate(visitor.visit_unit())
    }
}

impl NodeDe<'_> {
    fn report_unknown(&self, key: &Node, name: &str, fields: &[&str]) {
        if !self.ctx.seen.borrow_mut().insert(key.id) {
            return;
        }
        let suggestion = fields
            .iter()
            .map(|f| (strsim::jaro_winkler(name, f), f))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, f)| format!("; did you mean `{f}`?"))
            .unwrap_or_else(|| format!("; expected one of {}", list(fields)));
        let shown: String = name.chars().take(60).collect();
        self.ctx.unknown.borrow_mut().push(Diagnostic {
            severity: self.ctx.options.unknown_fields,
            code: Code::UnknownField,
            location: key.location,
            path: key.path.clone(),
            message: format!("unknown field `{shown}`{suggestion}"),
            env_var: key.env_var.clone(),
        });
    }
}

/// Renders `a`, `b` and `c` as "`a`, `b`, `c`".
fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Node>,
    ctx: &'a Ctx,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(NodeDe {
                    node,
                    ctx: self.ctx,
                })
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: std::vec::IntoIter<&'a (Node, Node)>,
    value: Option<&'a Node>,
    ctx: &'a Ctx,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(NodeDe {
                    node: key,
                    ctx: self.ctx,
                })
                .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(node) => seed.deserialize(NodeDe {
                node,
                ctx: self.ctx,
            }),
            None => Err(DeError::Bare("value requested before key".to_owned())),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'a> {
    key: &'a Node,
    value: &'a Node,
    ctx: &'a Ctx,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = NodeDe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'a>), DeError> {
        let variant = seed.deserialize(NodeDe {
            node: self.key,
            ctx: self.ctx,
        })?;
        Ok((
            variant,
            NodeDe {
                node: self.value,
                ctx: self.ctx,
            },
        ))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_schema_integers() {
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("-7"), Some(-7));
        assert_eq!(parse_int("0x1f"), Some(31));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("1_000"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("-"), None);
    }

    #[test]
    fn core_schema_floats() {
        assert_eq!(parse_float("2.5"), Some(2.5));
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("-.inf"), Some(f64::NEG_INFINITY));
        assert!(parse_float(".nan").is_some_and(f64::is_nan));
        assert_eq!(parse_float("fast"), None);
        assert_eq!(parse_float("e"), None);
    }
}

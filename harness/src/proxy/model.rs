//! The API's data: the JSON shapes of Toxiproxy 2.x, shared by the server and
//! the client, and the validated toxic types the links run.
//!
//! Parsing follows Toxiproxy's Go decoder where clients rely on it: unknown
//! fields are ignored, `null` leaves a default in place, and a missing
//! attribute is zero. What Go would silently accept but cannot work (a
//! negative duration, a toxicity outside `[0, 1]`, a slicer of zero-byte
//! slices) is refused with `bad request body`.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ApiError;

/// Which way the bytes a toxic affects flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Client to server: the requests.
    Upstream,
    /// Server to client: the responses. Toxiproxy's default.
    #[default]
    Downstream,
}

impl Stream {
    /// Both streams, upstream first, the order in which toxics are listed.
    pub const ALL: [Stream; 2] = [Stream::Upstream, Stream::Downstream];

    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }

    /// Parses a stream name; like Toxiproxy, case does not matter.
    pub fn parse(text: &str) -> Option<Stream> {
        if text.eq_ignore_ascii_case("upstream") {
            Some(Stream::Upstream)
        } else if text.eq_ignore_ascii_case("downstream") {
            Some(Stream::Downstream)
        } else {
            None
        }
    }

    /// A dense index, for per-stream arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Stream::Upstream => 0,
            Stream::Downstream => 1,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The toxic types this proxy implements, by their API names.
pub const TOXIC_TYPES: [&str; 7] = [
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
];

/// What a toxic does, with its attributes. Every attribute is a whole number
/// that fits 32 bits: Toxiproxy clients (such as `toxiproxy_rust`) read them
/// as `u32`, and it bounds every delay to about 49 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToxicKind {
    /// Delays data by `latency_ms`, plus or minus up to `jitter_ms`.
    Latency {
        /// The delay (`latency`).
        latency_ms: u32,
        /// The spread around it (`jitter`), drawn per chunk from the seed.
        jitter_ms: u32,
    },
    /// Caps throughput.
    Bandwidth {
        /// The rate (`rate`), in kilobytes (1000 bytes) per second; 0 is no cap.
        rate_kb_per_s: u32,
    },
    /// Delays the close that follows the end of the stream.
    SlowClose {
        /// The delay (`delay`).
        delay_ms: u32,
    },
    /// Drops all data and closes the connection after `timeout_ms`; with 0
    /// it never closes on its own, and removing the toxic closes it.
    Timeout {
        /// The time before the close (`timeout`).
        timeout_ms: u32,
    },
    /// Resets the connection (TCP RST) `timeout_ms` after data first reaches
    /// the toxic; the data is dropped.
    ResetPeer {
        /// The time before the reset (`timeout`).
        timeout_ms: u32,
    },
    /// Slices data into small writes.
    Slicer {
        /// The mean slice size (`average_size`), at least 1.
        average_size_bytes: u32,
        /// How far a slice may differ from the mean (`size_variation`).
        size_variation_bytes: u32,
        /// A pause after each slice (`delay`), in microseconds.
        delay_us: u32,
    },
    /// Closes the connection once `limit_bytes` have gone through.
    LimitData {
        /// The limit (`bytes`).
        limit_bytes: u32,
    },
}

impl ToxicKind {
    /// The type's name in the API.
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
        }
    }

    /// The attributes under their API names, in Toxiproxy's order.
    pub fn attributes(&self) -> Vec<(&'static str, u32)> {
        let mut copy = *self;
        copy.slots().into_iter().map(|(k, v)| (k, *v)).collect()
    }

    /// Mutable access to each attribute by its API name.
    fn slots(&mut self) -> Vec<(&'static str, &mut u32)> {
        match self {
            ToxicKind::Latency {
                latency_ms,
                jitter_ms,
            } => vec![("latency", latency_ms), ("jitter", jitter_ms)],
            ToxicKind::Bandwidth { rate_kb_per_s } => vec![("rate", rate_kb_per_s)],
            ToxicKind::SlowClose { delay_ms } => vec![("delay", delay_ms)],
            ToxicKind::Timeout { timeout_ms } | ToxicKind::ResetPeer { timeout_ms } => {
                vec![("timeout", timeout_ms)]
            }
            ToxicKind::Slicer {
                average_size_bytes,
                size_variation_bytes,
                delay_us,
            } => vec![
                ("average_size", average_size_bytes),
                ("size_variation", size_variation_bytes),
                ("delay", delay_us),
            ],
            ToxicKind::LimitData { limit_bytes } => vec![("bytes", limit_bytes)],
        }
    }

    /// The type named `type_name` with every attribute zero, as Toxiproxy
    /// starts before it reads the attributes.
    pub(crate) fn zeroed(type_name: &str) -> Option<ToxicKind> {
        Some(match type_name {
            "latency" => ToxicKind::Latency {
                latency_ms: 0,
                jitter_ms: 0,
            },
            "bandwidth" => ToxicKind::Bandwidth { rate_kb_per_s: 0 },
            "slow_close" => ToxicKind::SlowClose { delay_ms: 0 },
            "timeout" => ToxicKind::Timeout { timeout_ms: 0 },
            "reset_peer" => ToxicKind::ResetPeer { timeout_ms: 0 },
            "slicer" => ToxicKind::Slicer {
                average_size_bytes: 0,
                size_variation_bytes: 0,
                delay_us: 0,
            },
            "limit_data" => ToxicKind::LimitData { limit_bytes: 0 },
            _ => return None,
        })
    }

    /// Overwrites the attributes given, keeps the others, and checks the
    /// result. Unknown attribute names are ignored, as Toxiproxy does.
    pub(crate) fn merge(&mut self, attributes: &Map<String, Value>) -> Result<(), String> {
        for (name, slot) in self.slots() {
            let Some(value) = attributes.get(name) else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            *slot = value
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| {
                    format!(
                        "attributes.{name} must be a whole number from 0 to {}, not {value}",
                        u32::MAX
                    )
                })?;
        }
        self.validate()
    }

    /// Checks what the attribute types alone do not.
    fn validate(&self) -> Result<(), String> {
        match self {
            ToxicKind::Slicer {
                average_size_bytes: 0,
                ..
            } => Err("attributes.average_size of a slicer must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

/// A toxic: a named fault on one stream of a proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Toxic {
    /// Unique within its proxy (across both streams).
    pub name: String,
    /// Which way the affected bytes flow.
    pub stream: Stream,
    /// The probability, in `[0, 1]`, that the toxic affects a connection.
    pub toxicity: f32,
    /// What it does.
    pub kind: ToxicKind,
}

impl Toxic {
    /// A toxic on `stream` named `<type>_<stream>` (Toxiproxy's default name)
    /// that affects every connection.
    pub fn new(stream: Stream, kind: ToxicKind) -> Toxic {
        Toxic {
            name: format!("{}_{}", kind.type_name(), stream),
            stream,
            toxicity: 1.0,
            kind,
        }
    }

    /// The same toxic under another name.
    pub fn named(self, name: impl Into<String>) -> Toxic {
        Toxic {
            name: name.into(),
            ..self
        }
    }

    /// The same toxic with another toxicity.
    pub fn with_toxicity(self, toxicity: f32) -> Toxic {
        Toxic { toxicity, ..self }
    }
}

/// Serialises a kind's attributes as a JSON object.
struct Attributes<'a>(&'a ToxicKind);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attributes = self.0.attributes();
        let mut map = serializer.serialize_map(Some(attributes.len()))?;
        for (name, value) in attributes {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

impl Serialize for Toxic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Toxiproxy's field order, which clients printing raw JSON show.
        let mut s = serializer.serialize_struct("Toxic", 5)?;
        s.serialize_field("attributes", &Attributes(&self.kind))?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("type", self.kind.type_name())?;
        s.serialize_field("stream", &self.stream)?;
        s.serialize_field("toxicity", &self.toxicity)?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for Toxic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Toxic, D::Error> {
        let raw = RawToxic::deserialize(deserializer)?;
        let stream = raw.stream().map_err(de::Error::custom)?;
        let kind = raw.kind().map_err(de::Error::custom)?;
        let name = raw.name(kind.type_name(), stream);
        let toxicity = check_toxicity(raw.toxicity.unwrap_or(1.0)).map_err(de::Error::custom)?;
        Ok(Toxic {
            name,
            stream,
            toxicity,
            kind,
        })
    }
}

/// Checks a toxicity: a probability.
pub(crate) fn check_toxicity(toxicity: f32) -> Result<f32, ApiError> {
    if (0.0..=1.0).contains(&toxicity) {
        Ok(toxicity)
    } else {
        Err(ApiError::BadRequestBody(format!(
            "toxicity must be between 0 and 1, not {toxicity}"
        )))
    }
}

/// A toxic as a request writes it: every field optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawToxic {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub toxicity: Option<f32>,
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
}

impl RawToxic {
    /// The stream, downstream when absent.
    pub(crate) fn stream(&self) -> Result<Stream, ApiError> {
        match &self.stream {
            None => Ok(Stream::Downstream),
            Some(text) => Stream::parse(text).ok_or(ApiError::InvalidStream),
        }
    }

    /// The name, `<type>_<stream>` when absent or empty (as the type was
    /// written, even an unknown one: Toxiproxy names before it checks).
    pub(crate) fn name(&self, type_name: &str, stream: Stream) -> String {
        match &self.name {
            Some(name) if !name.is_empty() => name.clone(),
            _ => format!("{type_name}_{stream}"),
        }
    }

    /// The type with its attributes.
    pub(crate) fn kind(&self) -> Result<ToxicKind, ApiError> {
        let mut kind = ToxicKind::zeroed(self.kind.as_deref().unwrap_or(""))
            .ok_or(ApiError::InvalidToxicType)?;
        let attributes = self.attributes.clone().unwrap_or_default();
        kind.merge(&attributes).map_err(ApiError::BadRequestBody)?;
        Ok(kind)
    }
}

/// A change to a toxic: the attributes given replace the current ones, the
/// others stay; the name, type and stream cannot change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToxicUpdate {
    /// A new toxicity.
    pub toxicity: Option<f32>,
    /// New attributes; the variant must be the toxic's type.
    pub attributes: Option<ToxicKind>,
}

impl Serialize for ToxicUpdate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = usize::from(self.toxicity.is_some()) + usize::from(self.attributes.is_some());
        let mut map = serializer.serialize_map(Some(len))?;
        if let Some(toxicity) = &self.toxicity {
            map.serialize_entry("toxicity", toxicity)?;
        }
        if let Some(kind) = &self.attributes {
            map.serialize_entry("attributes", &Attributes(kind))?;
        }
        map.end()
    }
}

/// A toxic update as a request writes it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawToxicUpdate {
    #[serde(default)]
    pub toxicity: Option<f32>,
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
}

/// A proxy as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// Its unique name.
    pub name: String,
    /// The address it listens on: once it has listened, the bound address,
    /// so a port of 0 shows the port picked.
    pub listen: String,
    /// The `host:port` it forwards to, as given.
    pub upstream: String,
    /// Whether it accepts connections.
    pub enabled: bool,
    /// Its toxics, upstream ones first, each stream in the order added.
    pub toxics: Vec<Toxic>,
}

/// What creating or populating a proxy takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawProxy")]
pub struct ProxyConfig {
    /// A unique name.
    pub name: String,
    /// `host:port` to listen on. An empty host (`:8080`) or an empty
    /// address means loopback (Toxiproxy would listen on every interface).
    pub listen: String,
    /// `host:port` to forward to, resolved at each connection.
    pub upstream: String,
    /// Whether to listen at once.
    pub enabled: bool,
}

impl ProxyConfig {
    /// An enabled proxy.
    pub fn new(
        name: impl Into<String>,
        listen: impl Into<String>,
        upstream: impl Into<String>,
    ) -> ProxyConfig {
        ProxyConfig {
            name: name.into(),
            listen: listen.into(),
            upstream: upstream.into(),
            enabled: true,
        }
    }
}

/// A proxy as a request or a config file writes it: every field optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawProxy {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl RawProxy {
    /// The config, or the name of the first required field missing (an
    /// empty string counts as missing, as in Toxiproxy).
    pub(crate) fn validate(self) -> Result<ProxyConfig, &'static str> {
        let name = self.name.filter(|s| !s.is_empty()).ok_or("name")?;
        let upstream = self.upstream.filter(|s| !s.is_empty()).ok_or("upstream")?;
        Ok(ProxyConfig {
            name,
            listen: self.listen.unwrap_or_default(),
            upstream,
            enabled: self.enabled.unwrap_or(true),
        })
    }
}

impl TryFrom<RawProxy> for ProxyConfig {
    type Error = String;

    fn try_from(raw: RawProxy) -> Result<ProxyConfig, String> {
        raw.validate()
            .map_err(|field| format!("missing required field: {field}"))
    }
}

/// A change to a proxy: the fields given replace the current ones. A new
/// `listen` or `upstream` restarts the proxy, dropping its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyUpdate {
    /// A new listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// A new upstream address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Enable (listen) or disable (close the listener and every connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// The body of `POST /populate` and of a config file: an array of proxies,
/// or (accepted too) an object with a `proxies` array.
pub(crate) fn populate_entries(body: Value) -> Result<Vec<RawProxy>, ApiError> {
    let list = match body {
        Value::Array(_) => body,
        Value::Object(mut object) => object
            .remove("proxies")
            .filter(Value::is_array)
            .ok_or_else(|| ApiError::BadRequestBody("expected an array of proxies".to_owned()))?,
        _ => {
            return Err(ApiError::BadRequestBody(
                "expected an array of proxies".to_owned(),
            ));
        }
    };
    serde_json::from_value(list).map_err(|e| ApiError::BadRequestBody(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn toxics_serialise_in_toxiproxy_shape() {
        let toxic = Toxic::new(
            Stream::Upstream,
            ToxicKind::Slicer {
                average_size_bytes: 64,
                size_variation_bytes: 8,
                delay_us: 10,
            },
        );
        let value = serde_json::to_value(&toxic).expect("serialises");
        assert_eq!(
            value,
            json!({
                "name": "slicer_upstream",
                "type": "slicer",
                "stream": "upstream",
                "toxicity": 1.0,
                "attributes": {"average_size": 64, "size_variation": 8, "delay": 10}
            })
        );
        let back: Toxic = serde_json::from_value(value).expect("parses back");
        assert_eq!(back, toxic);
    }

    #[test]
    fn every_type_round_trips_with_defaults() {
        for type_name in TOXIC_TYPES {
            let mut kind = ToxicKind::zeroed(type_name).expect("known type");
            assert_eq!(kind.type_name(), type_name);
            let attributes: Map<String, Value> = kind
                .attributes()
                .into_iter()
                .map(|(k, _)| (k.to_owned(), json!(7)))
                .collect();
            kind.merge(&attributes).expect("valid attributes");
            assert!(kind.attributes().iter().all(|(_, v)| *v == 7), "{kind:?}");
        }
        assert_eq!(ToxicKind::zeroed("mars"), None);
    }

    #[test]
    fn attributes_must_be_u32() {
        let mut kind = ToxicKind::zeroed("latency").expect("known");
        for bad in [
            json!(-1),
            json!(1.5),
            json!("10"),
            json!(u64::from(u32::MAX) + 1),
        ] {
            let attributes = json!({"latency": bad})
                .as_object()
                .cloned()
                .expect("object");
            let err = kind.merge(&attributes).expect_err("must be refused");
            assert!(err.starts_with("attributes.latency must be"), "{err}");
        }
        let unknown = json!({"latency": 5, "colour": "red"});
        kind.merge(unknown.as_object().expect("object"))
            .expect("unknown attributes are ignored");
        assert_eq!(
            kind,
            ToxicKind::Latency {
                latency_ms: 5,
                jitter_ms: 0
            }
        );
    }

    #[test]
    fn missing_proxy_fields_are_named() {
        let raw: RawProxy = serde_json::from_value(json!({"upstream": "a:1"})).expect("parses");
        assert_eq!(raw.validate(), Err("name"));
        let raw: RawProxy =
            serde_json::from_value(json!({"name": "x", "upstream": ""})).expect("parses");
        assert_eq!(raw.validate(), Err("upstream"));
        let config: ProxyConfig =
            serde_json::from_value(json!({"name": "x", "upstream": "a:1", "enabled": null}))
                .expect("valid");
        assert_eq!(config, ProxyConfig::new("x", "", "a:1"));
    }

    #[test]
    fn populate_takes_an_array_or_an_object() {
        let entry = json!({"name": "a", "upstream": "b:1"});
        assert_eq!(
            populate_entries(json!([entry.clone()]))
                .expect("array")
                .len(),
            1
        );
        assert_eq!(
            populate_entries(json!({"proxies": [entry]}))
                .expect("object")
                .len(),
            1
        );
        assert!(populate_entries(json!({"other": []})).is_err());
        assert!(populate_entries(json!(3)).is_err());
    }
}

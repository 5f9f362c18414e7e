//! Image names: validated `name:tag` references, and where they come from
//! (a flag, then an environment variable, then the default).

use std::fmt;

use super::{ImageError, VERSION};

/// Environment variable naming the orchestrator image.
pub const ORCHESTRATOR_IMAGE_ENV: &str = "GAUNTLET_ORCHESTRATOR_IMAGE";
/// Environment variable naming the harness image.
pub const HARNESS_IMAGE_ENV: &str = "GAUNTLET_HARNESS_IMAGE";
/// Environment variable naming the Redis image.
pub const REDIS_IMAGE_ENV: &str = "GAUNTLET_REDIS_IMAGE";

/// Docker's limit on a reference's repository part.
const MAX_NAME_CHARS: usize = 255;
/// Docker's limit on a tag.
const MAX_TAG_CHARS: usize = 128;

/// A validated image reference `name:tag`, with a pinned tag (never
/// `latest`) and no digest. The name may start with a registry host
/// (`registry.example.com:5000/team/orchestrator`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    name: String,
    tag: String,
}

impl ImageRef {
    /// Parses `name:tag`. The error is the reason only; callers say where
    /// the value came from (see [`ImageNames::resolve`]).
    pub fn parse(value: &str) -> Result<ImageRef, String> {
        if value.is_empty() {
            return Err("the name is empty".to_owned());
        }
        if value.chars().any(char::is_whitespace) {
            return Err("the name contains whitespace".to_owned());
        }
        if value.contains('@') {
            return Err(
                "digests are not supported: give a pinned tag (name:tag) instead".to_owned(),
            );
        }
        // A colon before the last slash belongs to a registry's port.
        let last_slash = value.rfind('/').map_or(0, |i| i + 1);
        let Some(colon) = value[last_slash..].rfind(':').map(|i| last_slash + i) else {
            return Err(format!(
                "a tag is required: pin a version, e.g. {value}:1.0.0"
            ));
        };
        let (name, tag) = (&value[..colon], &value[colon + 1..]);
        check_name(name)?;
        check_tag(tag)?;
        Ok(ImageRef {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The repository part, registry host included.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// The repository part: lowercase path components of letters, digits and
/// the separators `.`, `_`, `-`, each starting and ending with a letter or
/// digit; the first component may be a registry host with a port.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the repository part before the tag is empty".to_owned());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "the repository part is longer than {MAX_NAME_CHARS} characters"
        ));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("the repository part must be lowercase".to_owned());
    }
    let components: Vec<&str> = name.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        if component.is_empty() {
            return Err("the repository part has an empty path component".to_owned());
        }
        // Only a registry host (the first of several components) has a port.
        let allowed_colon = i == 0 && components.len() > 1;
        let valid_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        let ok = component
            .chars()
            .all(|c| valid_char(c) || (allowed_colon && c == ':'))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "the path component {component:?} must be letters and digits, separated by `.`, `_` or `-`"
            ));
        }
    }
    Ok(())
}

/// A tag: up to 128 letters, digits, `_`, `.`, `-`, not starting with `.`
/// or `-`, and not `latest`.
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after `:` is empty".to_owned());
    }
    if tag == "latest" {
        return Err("`latest` is not a pinned tag: name a version".to_owned());
    }
    let valid = tag.len() <= MAX_TAG_CHARS
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !tag.starts_with(['.', '-']);
    if !valid {
        return Err(format!(
            "the tag {tag:?} must be up to {MAX_TAG_CHARS} letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
        ));
    }
    Ok(())
}

/// The images a run uses, each resolved once at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNames {
    /// The orchestrator (and, as its fault agent, the harness binary).
    pub orchestrator: ImageRef,
    /// The harness: the fault proxy and the mock LLM provider.
    pub harness: ImageRef,
    /// Redis, for scenarios on the Redis store: Debian's `redis-server` on a
    /// Debian root filesystem ([`super::Recipe::redis`]).
    pub redis: ImageRef,
}

impl ImageNames {
    /// `gauntlet/orchestrator:<VERSION>`, `gauntlet/harness:<VERSION>` and
    /// `gauntlet/redis:<VERSION>`.
    pub fn defaults() -> Result<ImageNames, ImageError> {
        ImageNames::resolve_with(None, None, |_| None)
    }

    /// Each name from its flag, else from `GAUNTLET_ORCHESTRATOR_IMAGE` /
    /// `GAUNTLET_HARNESS_IMAGE`, else the default. The Redis image has no
    /// flag: `GAUNTLET_REDIS_IMAGE`, else the default.
    pub fn resolve(
        orchestrator: Option<&str>,
        harness: Option<&str>,
    ) -> Result<ImageNames, ImageError> {
        ImageNames::resolve_with(orchestrator, harness, |var| std::env::var(var).ok())
    }

    /// [`ImageNames::resolve`] with the environment passed in, so that tests
    /// need not change the process's environment.
    pub fn resolve_with(
        orchestrator: Option<&str>,
        harness: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ImageNames, ImageError> {
        Ok(ImageNames {
            orchestrator: pick(
                orchestrator,
                "--orchestrator-image",
                ORCHESTRATOR_IMAGE_ENV,
                "gauntlet/orchestrator",
                &env,
            )?,
            harness: pick(
                harness,
                "--harness-image",
                HARNESS_IMAGE_ENV,
                "gauntlet/harness",
                &env,
            )?,
            redis: pick(None, "", REDIS_IMAGE_ENV, "gauntlet/redis", &env)?,
        })
    }

    /// Every image: orchestrator, harness, Redis.
    pub fn all(&self) -> [&ImageRef; 3] {
        [&self.orchestrator, &self.harness, &self.redis]
    }
}

fn pick(
    flag_value: Option<&str>,
    flag: &str,
    var: &str,
    default_name: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ImageRef, ImageError> {
    let (origin, value) = match (flag_value, env(var)) {
        (Some(value), _) => (flag.to_owned(), value.to_owned()),
        (None, Some(value)) => (var.to_owned(), value),
        (None, None) => (
            "the default image name".to_owned(),
            format!("{default_name}:{VERSION}"),
        ),
    };
    ImageRef::parse(&value).map_err(|reason| ImageError::InvalidName {
        origin,
        value,
        reason,
    })
}

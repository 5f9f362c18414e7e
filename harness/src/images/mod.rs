//! Container images built locally, with no registry: `gauntlet images
//! build`, and the engine access and preflight the Docker backend uses.
//!
//! Our images are `FROM scratch` with static binaries, built by the
//! engine's legacy builder from a tar context (no BuildKit session, nothing
//! pulled). Third-party services (Redis) are Debian root filesystems made by
//! debootstrap and imported ([`Recipe::DebianRootfs`]). Each image carries
//! the hash of what it was made from (`gauntlet.inputs`), so an unchanged
//! image is not rebuilt.

mod binaries;
mod debian;
mod elf;
mod names;
mod recipe;
mod tail;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use testcontainers::bollard::{
    self, Docker,
    query_parameters::{BuildImageOptionsBuilder, BuilderVersion, RemoveImageOptionsBuilder},
};

pub use binaries::{BINARIES, TARGET, build_static_binaries, find_workspace};
pub use debian::{MAX_ROOTFS_BYTES, debootstrap, import_dir, prune};
pub use elf::check_static_binary;
pub use names::{HARNESS_IMAGE_ENV, ImageNames, ImageRef, ORCHESTRATOR_IMAGE_ENV, REDIS_IMAGE_ENV};
pub use recipe::{
    ContextFile, DEBIAN_MIRROR, HARNESS_DOCKERFILE, ImageSpec, Inputs, MAX_FILE_BYTES,
    ORCHESTRATOR_DOCKERFILE, REDIS_SERVER_PATH, REDIS_SUITE, Recipe, inputs,
};

use tail::Tail;

/// The harness's version: the default tag of our images.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The label holding an image's [`Inputs`] hash.
pub const INPUTS_LABEL: &str = "gauntlet.inputs";
/// The label holding the harness version that built an image.
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";
/// The label naming what an image is: `orchestrator`, `harness`...
pub const ROLE_LABEL: &str = "gauntlet.image";

/// Connecting and pinging the engine: it is local, so this is generous.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(5);
/// A scratch build copies a few files: minutes mean a stuck engine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Inspecting or removing one image.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong making or finding images. Every case is bad input or
/// an environment that cannot do it: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An image name from a flag, a variable or the default is not a
    /// pinned `name:tag`.
    #[error("invalid image name {value:?} in {origin}: {reason}")]
    InvalidName {
        /// Where the value came from: the flag, the variable, or the default.
        origin: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Docker engine did not answer.
    #[error("cannot reach the docker engine at {endpoint}: {reason}")]
    EngineUnreachable {
        /// Where it was looked for (`DOCKER_HOST`, or the default socket).
        endpoint: String,
        /// Why it did not answer.
        reason: String,
    },
    /// Images the run needs are not in the local engine.
    #[error(
        "missing local images: {}; run `gauntlet images build` to build them \
         (no registry is used: images are never pulled)",
        join(images)
    )]
    MissingImages {
        /// Each image not found.
        images: Vec<ImageRef>,
    },
    /// An engine request about an image failed.
    #[error("cannot {action} image {image}: {reason}")]
    Engine {
        /// What was asked: `inspect`, `remove`...
        action: &'static str,
        /// The image.
        image: String,
        /// The engine's answer.
        reason: String,
    },
    /// The engine's build failed; the message carries the last lines of
    /// its output.
    #[error("building image {image} failed: {reason}; the last lines of the build output:{output}")]
    BuildFailed {
        /// The image.
        image: ImageRef,
        /// The engine's error.
        reason: String,
        /// The last lines of the build output, each on its own line.
        output: String,
    },
    /// Importing a root filesystem failed.
    #[error("importing image {image} failed: {reason}")]
    Import {
        /// The image.
        image: ImageRef,
        /// The engine's error.
        reason: String,
    },
    /// A root filesystem directory could not be tarred.
    #[error("cannot archive the root filesystem {}: {reason}", dir.display())]
    Rootfs {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// debootstrap failed.
    #[error("debootstrap of {suite} into {} failed: {reason}{output}", dir.display())]
    Debootstrap {
        /// The Debian suite.
        suite: String,
        /// The target directory.
        dir: PathBuf,
        /// Why.
        reason: String,
        /// The last lines of its output, each on its own line.
        output: String,
    },
    /// No workspace to build the binaries in.
    #[error(
        "no gauntlet workspace at or above {} (a Cargo.toml with [workspace] next to \
         system/Cargo.toml); pass --workspace DIR, or --binaries DIR with prebuilt static binaries",
        start.display()
    )]
    WorkspaceNotFound {
        /// Where the search started.
        start: PathBuf,
    },
    /// Building the static binaries failed.
    #[error("cannot build the static binaries: {reason}")]
    Cargo {
        /// Why.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file of a build context is too large.
    #[error("{} is larger than {} MiB, the limit of a build context file", path.display(), limit_bytes / (1024 * 1024))]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit_bytes: u64,
    },
    /// A binary is not an x86-64 ELF executable.
    #[error("{} is not an x86-64 ELF executable: {reason}", path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A binary needs a dynamic loader, which a scratch image lacks.
    #[error(
        "{} is dynamically linked (it has an ELF interpreter); a FROM scratch image needs a \
         static binary: build with RUSTFLAGS='-C target-feature=+crt-static' and --target {TARGET}, \
         or let `gauntlet images build` build it (without --binaries)",
        path.display()
    )]
    DynamicBinary {
        /// The file.
        path: PathBuf,
    },
    /// The machine lacks a file an image takes from it.
    #[error("{} is missing: {hint}", path.display())]
    MissingHostFile {
        /// The file.
        path: PathBuf,
        /// What provides it.
        hint: &'static str,
    },
    /// A recipe is malformed (a programming error in its definition).
    #[error("invalid image recipe: {reason}")]
    InvalidRecipe {
        /// What is wrong.
        reason: String,
    },
}

impl ImageError {
    /// How a command ends on this error: bad input or environment.
    pub fn exit(&self) -> orchestrator::exit::Exit {
        orchestrator::exit::Exit::BadInput
    }
}

fn join(images: &[ImageRef]) -> String {
    images
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connects to the Docker engine (`DOCKER_HOST` if set: `unix://`,
/// `tcp://` or `http://`; else `/var/run/docker.sock`), agrees on an API
/// version, and pings it, within 5 s.
pub async fn engine() -> Result<Docker, ImageError> {
    let endpoint = match std::env::var("DOCKER_HOST") {
        Ok(host) => format!("{host} (DOCKER_HOST)"),
        Err(_) => "unix:///var/run/docker.sock (the default; DOCKER_HOST is not set)".to_owned(),
    };
    let unreachable = |reason: String| ImageError::EngineUnreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let connect = async {
        let docker = Docker::connect_with_defaults()?
            .with_request_modifier(unversioned_version_request)
            .negotiate_version()
            .await?;
        docker.ping().await?;
        Ok::<Docker, bollard::errors::Error>(docker)
    };
    match tokio::time::timeout(ENGINE_TIMEOUT, connect).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            ENGINE_TIMEOUT.as_secs()
        ))),
    }
}

/// Sends `GET /vX.Y/version` as `GET /version`. bollard speaks API 1.53 and
/// negotiates down by asking `/version`, but an engine older than 1.53
/// refuses every request under `/v1.53/`, that one included ("client version
/// 1.53 is too new"); the unversioned path is always answered. This is how
/// the docker CLI negotiates too.
fn unversioned_version_request(mut request: bollard::BollardRequest) -> bollard::BollardRequest {
    let uri = request.uri();
    let path = uri.path();
    let versioned_version = path.strip_prefix("/v").is_some_and(|rest| {
        rest.strip_suffix("/version").is_some_and(|version| {
            !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
    });
    if !versioned_version {
        return request;
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(axum::http::uri::PathAndQuery::from_static("/version"));
    if let Ok(unversioned) = axum::http::Uri::from_parts(parts) {
        *request.uri_mut() = unversioned;
    }
    request
}

/// Fails unless every image exists in the local engine, naming each one
/// missing. Nothing is ever pulled.
pub async fn preflight(docker: &Docker, names: &ImageNames) -> Result<(), ImageError> {
    let mut missing = Vec::new();
    for image in names.all() {
        if inspect(docker, image).await?.is_none() {
            missing.push(image.clone());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImageError::MissingImages { images: missing })
    }
}

/// Where the static binaries come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binaries {
    /// Built by [`build_static_binaries`] in this workspace first.
    Cargo {
        /// The workspace root (see [`find_workspace`]).
        workspace: PathBuf,
    },
    /// Taken from this directory (`orchestrator` and `gauntlet`); they must be
    /// static, as [`build`] checks.
    Dir(PathBuf),
}

/// What `gauntlet images build` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// The images to make.
    pub names: ImageNames,
    /// Rebuild even when an image's inputs are unchanged.
    pub force: bool,
    /// Where the binaries come from.
    pub binaries: Binaries,
}

/// One image [`build`] or [`build_recipe`] made or found up to date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// The image.
    pub image: ImageRef,
    /// Its inputs hash (its `gauntlet.inputs` label).
    pub inputs: Inputs,
    /// Whether it was built.
    pub outcome: Outcome,
}

/// Whether an image was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was built (or rebuilt), taking this long.
    Built {
        /// Wall time of the build.
        elapsed: Duration,
    },
    /// An image with the same inputs existed; nothing was done.
    UpToDate,
}

impl fmt::Display for Built {
    /// `built: NAME:TAG (inputs 1a2b3c4d5e6f) in 1.2 s` or
    /// `up to date: NAME:TAG (inputs 1a2b3c4d5e6f)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (image, inputs) = (&self.image, self.inputs.short());
        match self.outcome {
            Outcome::Built { elapsed } => write!(
                f,
                "built: {image} (inputs {inputs}) in {:.1} s",
                elapsed.as_secs_f64()
            ),
            Outcome::UpToDate => write!(f, "up to date: {image} (inputs {inputs})"),
        }
    }
}

/// The labels every image of ours carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// The `gauntlet.image` label.
    pub role: String,
    /// The `gauntlet.inputs` label.
    pub inputs: Inputs,
}

impl Labels {
    /// Label names and values.
    pub fn to_map(&self) -> HashMap<&'static str, String> {
        HashMap::from([
            (INPUTS_LABEL, self.inputs.hex()),
            (VERSION_LABEL, VERSION.to_owned()),
            (ROLE_LABEL, self.role.clone()),
        ])
    }

    /// The labels as one Dockerfile `LABEL` instruction (for an import).
    fn instruction(&self) -> String {
        let mut pairs: Vec<String> = self
            .to_map()
            .into_iter()
            .map(|(name, value)| format!("{name}={value:?}"))
            .collect();
        pairs.sort();
        format!("LABEL {}", pairs.join(" "))
    }
}

/// Makes the orchestrator, harness and Redis images (`gauntlet images
/// build`): builds the static binaries first for [`Binaries::Cargo`], checks
/// both are static, then builds each image whose inputs changed (every one
/// with `force`); the Redis image needs root and `debootstrap` only when it
/// is (re)built. `report` gets one line per image (`built: ...` or `up to date:
/// ...`); the engine's output is shown only in the error of a failed build.
pub async fn build(
    docker: &Docker,
    options: &BuildOptions,
    report: &mut dyn FnMut(&str),
) -> Result<Vec<Built>, ImageError> {
    let dir = match &options.binaries {
        Binaries::Cargo { workspace } => build_static_binaries(workspace).await?,
        Binaries::Dir(dir) => dir.clone(),
    };
    for name in BINARIES {
        let path = dir.join(name);
        blocking(move || check_static_binary(&path)).await?;
    }
    if !Path::new(recipe::CA_BUNDLE).is_file() {
        return Err(ImageError::MissingHostFile {
            path: PathBuf::from(recipe::CA_BUNDLE),
            hint: "the orchestrator image takes the machine's CA certificates; install the ca-certificates package",
        });
    }
    let specs = [
        ImageSpec {
            image: options.names.orchestrator.clone(),
            role: "orchestrator".to_owned(),
            recipe: Recipe::orchestrator(&dir),
        },
        ImageSpec {
            image: options.names.harness.clone(),
            role: "harness".to_owned(),
            recipe: Recipe::harness(&dir),
        },
        ImageSpec {
            image: options.names.redis.clone(),
            role: "redis".to_owned(),
            recipe: Recipe::redis(),
        },
    ];
    let mut built = Vec::new();
    for spec in &specs {
        let one = build_recipe(docker, spec, options.force).await?;
        report(&one.to_string());
        built.push(one);
    }
    Ok(built)
}

/// Makes one image from its recipe unless an image of that name already
/// carries the same inputs (always with `force`). Files are taken as they
/// are: checking that binaries are static is [`build`]'s job. A rebuild
/// removes the image it replaces, when nothing else uses it.
pub async fn build_recipe(
    docker: &Docker,
    spec: &ImageSpec,
    force: bool,
) -> Result<Built, ImageError> {
    let recipe = spec.recipe.clone();
    let loaded = blocking(move || recipe::load(&recipe)).await?;
    let inputs = loaded.inputs;
    let previous = inspect(docker, &spec.image).await?;
    let up_to_date = previous
        .as_ref()
        .is_some_and(|image| image.inputs.as_deref() == Some(inputs.hex().as_str()));
    if up_to_date && !force {
        return Ok(Built {
            image: spec.image.clone(),
            inputs,
            outcome: Outcome::UpToDate,
        });
    }
    let labels = Labels {
        role: spec.role.clone(),
        inputs,
    };
    let start = Instant::now();
    match &spec.recipe {
        Recipe::Scratch { dockerfile, .. } => {
            let dockerfile = dockerfile.clone();
            let context = blocking(move || recipe::context_tar(&dockerfile, &loaded))
                .await
                .map_err(|e| ImageError::BuildFailed {
                    image: spec.image.clone(),
                    reason: format!("cannot make the build context: {e}"),
                    output: String::new(),
                })?;
            build_scratch(docker, &spec.image, &labels, context, force).await?;
        }
        Recipe::DebianRootfs {
            suite,
            mirror,
            packages,
            changes,
            prune: pruned,
        } => {
            let dir = tempfile::tempdir().map_err(|e| ImageError::Rootfs {
                dir: std::env::temp_dir(),
                reason: format!("cannot make a temporary directory: {e}"),
            })?;
            let rootfs = dir.path().join("rootfs");
            debootstrap(suite, mirror, packages, &rootfs).await?;
            let (owned_rootfs, owned_pruned) = (rootfs.clone(), pruned.clone());
            blocking(move || prune(&owned_rootfs, &owned_pruned)).await?;
            import_dir(docker, &rootfs, &spec.image, changes, &labels).await?;
        }
    }
    let elapsed = start.elapsed();
    if let Some(previous) = previous {
        remove_replaced(docker, &spec.image, &previous.id).await;
    }
    Ok(Built {
        image: spec.image.clone(),
        inputs,
        outcome: Outcome::Built { elapsed },
    })
}

/// Builds a scratch image with the legacy builder, keeping the last lines of
/// its output for the error.
async fn build_scratch(
    docker: &Docker,
    image: &ImageRef,
    labels: &Labels,
    context: Vec<u8>,
    force: bool,
) -> Result<(), ImageError> {
    let tag = image.to_string();
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .labels(&labels.to_map())
        // BuildKit needs a session (and buildx); the legacy builder needs
        // nothing but the context.
        .version(BuilderVersion::BuilderV1)
        // `--force` means made again, not found in the layer cache.
        .nocache(force)
        .rm(true)
        .forcerm(true)
        .build();
    let mut tail = Tail::default();
    let run = async {
        let mut output =
            docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = output.next().await {
            if let Some(text) = item?.stream {
                tail.push(&text);
            }
        }
        Ok::<(), bollard::errors::Error>(())
    };
    let reason = match tokio::time::timeout(BUILD_TIMEOUT, run).await {
        Ok(Ok(())) => return Ok(()),
        // The engine's own words, without bollard's "Docker stream error" prefix.
        Ok(Err(bollard::errors::Error::DockerStreamError { error })) => error,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no result within {} s", BUILD_TIMEOUT.as_secs()),
    };
    Err(ImageError::BuildFailed {
        image: image.clone(),
        reason,
        output: tail.render(),
    })
}

/// A local image: its id and its `gauntlet.inputs` label.
struct Existing {
    id: String,
    inputs: Option<String>,
}

/// The local image of that name, or `None` when there is none.
async fn inspect(docker: &Docker, image: &ImageRef) -> Result<Option<Existing>, ImageError> {
    let failed = |reason: String| ImageError::Engine {
        action: "inspect",
        image: image.to_string(),
        reason,
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, docker.inspect_image(&image.to_string()))
        .await
        .map_err(|_| failed(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))?;
    match answer {
        Ok(found) => Ok(Some(Existing {
            id: found.id.unwrap_or_default(),
            inputs: found
                .config
                .and_then(|config| config.labels)
                .and_then(|mut labels| labels.remove(INPUTS_LABEL)),
        })),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Removes the image a rebuild replaced, now untagged, unless it is the
/// same image or something still uses it (a container, another tag):
/// then it stays, which is harmless.
async fn remove_replaced(docker: &Docker, image: &ImageRef, previous_id: &str) {
    let Ok(Some(current)) = inspect(docker, image).await else {
        return;
    };
    if previous_id.is_empty() || current.id == previous_id {
        return;
    }
    let options = RemoveImageOptionsBuilder::default().force(false).build();
    let removal = docker.remove_image(previous_id, Some(options), None);
    if let Ok(Err(e)) = tokio::time::timeout(REQUEST_TIMEOUT, removal).await {
        tracing::debug!(%image, previous_id, "the replaced image stays: {e}");
    }
}

/// Runs blocking work (files, tar) on tokio's blocking pool, never on an
/// async worker.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        // A blocking task is cancelled only when the runtime shuts down, and
        // then nothing awaits it: only a panic reaches here, and goes on.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

//! Recipes (how an image is made), their inputs hash, and the build context.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ImageError, ImageRef};

/// The orchestrator image's Dockerfile (FROM scratch).
pub const ORCHESTRATOR_DOCKERFILE: &str = include_str!("../../images/orchestrator.Dockerfile");
/// The harness image's Dockerfile (FROM scratch).
pub const HARNESS_DOCKERFILE: &str = include_str!("../../images/harness.Dockerfile");

/// A file of a build context larger than this is refused (a static release
/// binary of ours is tens of MiB).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// How an image is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// A Dockerfile `FROM scratch` and the files it copies, built by the
    /// engine's legacy builder from a tar context (no BuildKit session, no
    /// registry: nothing is pulled).
    Scratch {
        /// The Dockerfile's text.
        dockerfile: String,
        /// The files of the build context, beside the Dockerfile.
        files: Vec<ContextFile>,
    },
    /// A Debian root filesystem made by `debootstrap --variant=minbase`,
    /// tarred and imported (`docker import`): the way to third-party
    /// services (Redis next) without a registry.
    DebianRootfs {
        /// The Debian suite, e.g. `bookworm`.
        suite: String,
        /// The Debian mirror, e.g. `http://deb.debian.org/debian`.
        mirror: String,
        /// Packages installed beyond minbase (`--include`).
        packages: Vec<String>,
        /// Dockerfile instructions applied on import, e.g.
        /// `ENTRYPOINT ["/usr/bin/redis-server"]`.
        changes: Vec<String>,
        /// Directories of the root filesystem (relative paths) emptied
        /// before the import: caches and documentation the service never
        /// reads, which would only make the image larger.
        prune: Vec<String>,
    },
}

/// One file of a [`Recipe::Scratch`] context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextFile {
    /// Where the file is read from.
    pub source: PathBuf,
    /// Its name in the build context (a plain file name, what `COPY` names).
    pub name: String,
}

/// The CA certificates the orchestrator image carries, taken from the build
/// machine (Debian's and Ubuntu's `ca-certificates` package): the service's
/// HTTP client trusts the system's roots and refuses to start without any,
/// and a scratch image has none of its own.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The Debian suite of the Redis image: pinned, so that its inputs (and
/// whether it is up to date) do not depend on the build machine.
pub const REDIS_SUITE: &str = "bookworm";
/// Debian's mirror (reachable where no registry is).
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Where Debian's `redis-server` package puts the server.
pub const REDIS_SERVER_PATH: &str = "/usr/bin/redis-server";

/// What the Redis image leaves out of its root filesystem: the packages'
/// downloaded archives and apt's lists (about 80 MiB), documentation and
/// translations.
const DEBIAN_PRUNE: [&str; 6] = [
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
];

impl Recipe {
    /// The orchestrator image from the static binaries in `binaries` and
    /// the machine's [`CA_BUNDLE`].
    pub fn orchestrator(binaries: &Path) -> Recipe {
        let mut recipe = Recipe::scratch(
            ORCHESTRATOR_DOCKERFILE,
            binaries,
            &["orchestrator", "gauntlet"],
        );
        if let Recipe::Scratch { files, .. } = &mut recipe {
            files.push(ContextFile {
                source: PathBuf::from(CA_BUNDLE),
                name: "ca-certificates.crt".to_owned(),
            });
        }
        recipe
    }

    /// The Redis image: Debian's `redis-server` on a minbase root filesystem
    /// of [`REDIS_SUITE`], the server its entrypoint (the Docker backend
    /// passes its arguments).
    pub fn redis() -> Recipe {
        Recipe::DebianRootfs {
            suite: REDIS_SUITE.to_owned(),
            mirror: DEBIAN_MIRROR.to_owned(),
            packages: vec!["redis-server".to_owned()],
            // No EXPOSE: the Docker backend runs it in another container's
            // network namespace, where a container may not expose ports.
            changes: vec![format!(r#"ENTRYPOINT ["{REDIS_SERVER_PATH}"]"#)],
            prune: DEBIAN_PRUNE.map(str::to_owned).to_vec(),
        }
    }

    /// The harness image from the static `gauntlet` binary in `binaries`.
    pub fn harness(binaries: &Path) -> Recipe {
        Recipe::scratch(HARNESS_DOCKERFILE, binaries, &["gauntlet"])
    }

    fn scratch(dockerfile: &str, dir: &Path, names: &[&str]) -> Recipe {
        Recipe::Scratch {
            dockerfile: dockerfile.to_owned(),
            files: names
                .iter()
                .map(|name| ContextFile {
                    source: dir.join(name),
                    name: (*name).to_owned(),
                })
                .collect(),
        }
    }
}

/// The SHA-256 of everything an image is made from: the recipe's text and
/// every file's name and bytes. An image whose `gauntlet.inputs` label
/// matches is up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs([u8; 32]);

impl Inputs {
    /// The full hash in lowercase hex (the label's value).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        let mut hex = self.hex();
        hex.truncate(12);
        hex
    }
}

impl fmt::Display for Inputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The inputs hash of `recipe`, reading its files (blocking).
pub fn inputs(recipe: &Recipe) -> Result<Inputs, ImageError> {
    Ok(load(recipe)?.inputs)
}

/// A recipe with its files read: hashed once, then tarred from memory, so
/// that what is hashed is exactly what is built.
pub(crate) struct Loaded {
    pub(crate) inputs: Inputs,
    files: Vec<(String, Vec<u8>)>,
}

/// Reads the recipe's files (at most [`MAX_FILE_BYTES`] each) and hashes
/// them with its text. Blocking.
pub(crate) fn load(recipe: &Recipe) -> Result<Loaded, ImageError> {
    let mut hasher = Sha256::new();
    // Every field is length-prefixed, so that no two different recipes hash
    // the same bytes.
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"gauntlet-inputs-v1");
    let mut files = Vec::new();
    match recipe {
        Recipe::Scratch {
            dockerfile,
            files: context,
        } => {
            field(b"scratch");
            field(dockerfile.as_bytes());
            for file in context {
                check_context_name(&file.name)?;
                let bytes = read_limited(&file.source)?;
                field(file.name.as_bytes());
                field(&bytes);
                files.push((file.name.clone(), bytes));
            }
        }
        Recipe::DebianRootfs {
            suite,
            mirror,
            packages,
            changes,
            prune,
        } => {
            field(b"debian-rootfs");
            field(suite.as_bytes());
            field(mirror.as_bytes());
            field(packages.join(",").as_bytes());
            for change in changes {
                field(change.as_bytes());
            }
            // Counted, so that a change cannot pass for a pruned path.
            field(&(prune.len() as u64).to_le_bytes());
            for path in prune {
                field(path.as_bytes());
            }
        }
    }
    Ok(Loaded {
        inputs: Inputs(hasher.finalize().into()),
        files,
    })
}

/// A context file name must be a plain name that is not the Dockerfile's.
fn check_context_name(name: &str) -> Result<(), ImageError> {
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    if !plain || name == "Dockerfile" {
        return Err(ImageError::InvalidRecipe {
            reason: format!(
                "the context file name {name:?} must be a plain file name other than `Dockerfile`"
            ),
        });
    }
    Ok(())
}

fn read_limited(path: &Path) -> Result<Vec<u8>, ImageError> {
    let read_error = |source| ImageError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ImageError::FileTooLarge {
            path: path.to_owned(),
            limit_bytes: MAX_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// The build context of a scratch recipe: `Dockerfile` and the loaded
/// files, as a tar stream. Files are executable (they are binaries), owned
/// by root and dated 0, so the same inputs make the same context.
pub(crate) fn context_tar(dockerfile: &str, loaded: &Loaded) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
    for (name, bytes) in &loaded.files {
        append(&mut builder, name, bytes, 0o755)?;
    }
    builder.into_inner()
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, bytes)
}

/// What [`super::build_recipe`] makes: an image name, the label it carries
/// for `gauntlet.image`, and the recipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// The image's name.
    pub image: ImageRef,
    /// The `gauntlet.image` label: `orchestrator`, `harness`, `redis`...
    pub role: String,
    /// How it is made.
    pub recipe: Recipe,
}

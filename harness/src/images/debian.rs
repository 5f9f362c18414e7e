//! Images of third-party services without a registry: a Debian root
//! filesystem made by debootstrap, then imported as an image. Split in two
//! so that the import can be tested on a small hand-made directory, without
//! minutes of downloads from Debian's mirror.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use testcontainers::bollard::{self, Docker, query_parameters::CreateImageOptionsBuilder};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::tail::Tail;
use super::{ImageError, ImageRef, Labels, blocking};

/// debootstrap downloads and unpacks a few hundred packages.
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Uploading and committing a root filesystem of a few hundred MiB.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// A root filesystem's tar stream larger than this is refused (minbase
/// with a service is about 150 MiB); the stream is held in memory.
pub const MAX_ROOTFS_BYTES: u64 = 1024 * 1024 * 1024;

/// Runs `debootstrap --variant=minbase --include=PACKAGES SUITE DIR MIRROR`
/// (root and the `debootstrap` package needed). Quiet unless it fails.
pub async fn debootstrap(
    suite: &str,
    mirror: &str,
    packages: &[String],
    dir: &Path,
) -> Result<(), ImageError> {
    let mut command = tokio::process::Command::new("debootstrap");
    command.arg("--variant=minbase");
    if !packages.is_empty() {
        command.arg(format!("--include={}", packages.join(",")));
    }
    command
        .arg(suite)
        .arg(dir)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timeout drops the child: it must not outlive us.
        .kill_on_drop(true);
    let failed = |reason: String, output: String| ImageError::Debootstrap {
        suite: suite.to_owned(),
        dir: dir.to_owned(),
        reason,
        output,
    };
    let mut child = command.spawn().map_err(|e| {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            "debootstrap is not installed (apt-get install debootstrap)".to_owned()
        } else {
            format!("cannot start debootstrap: {e}")
        };
        failed(reason, String::new())
    })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (out, err, status) = tokio::join!(tail_of(stdout), tail_of(stderr), child.wait());
        (status, format!("{err}{out}"))
    };
    match tokio::time::timeout(DEBOOTSTRAP_TIMEOUT, run).await {
        Err(_) => Err(failed(
            format!(
                "no result within {} s (killed)",
                DEBOOTSTRAP_TIMEOUT.as_secs()
            ),
            String::new(),
        )),
        Ok((Err(e), output)) => Err(failed(format!("cannot wait for debootstrap: {e}"), output)),
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), output)) => Err(failed(format!("debootstrap {status}"), output)),
    }
}

/// Empties each of `dirs` (paths relative to `rootfs`, inside it) and keeps
/// the directory itself; a missing one is fine. Links are removed, never
/// followed: a root filesystem's absolute links point into the host.
/// Blocking.
pub fn prune(rootfs: &Path, dirs: &[String]) -> Result<(), ImageError> {
    let failed = |reason: String| ImageError::Rootfs {
        dir: rootfs.to_owned(),
        reason,
    };
    for relative in dirs {
        let inside = Path::new(relative)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if relative.is_empty() || !inside {
            return Err(ImageError::InvalidRecipe {
                reason: format!(
                    "the pruned path {relative:?} must be a relative path inside the root filesystem"
                ),
            });
        }
        let dir = rootfs.join(relative);
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(failed(format!("cannot inspect {relative}: {e}"))),
            // Only a real directory is emptied: a link could lead outside.
            Ok(meta) if !meta.is_dir() => {
                return Err(failed(format!("{relative} is not a directory")));
            }
            Ok(_) => {}
        }
        let entries =
            std::fs::read_dir(&dir).map_err(|e| failed(format!("cannot list {relative}: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| failed(format!("cannot list {relative}: {e}")))?;
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let removed = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| failed(format!("cannot remove {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// The last lines a pipe carries, read to its end.
async fn tail_of(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let mut tail = Tail::default();
    if let Some(mut pipe) = pipe {
        let mut chunk = vec![0; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            tail.push(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
    tail.render()
}

/// Imports the root filesystem in `dir` as `image` (`docker import`), with
/// `changes` (Dockerfile instructions such as `ENTRYPOINT [...]`) and the
/// labels. Symbolic links are stored as links, never followed: a root
/// filesystem's absolute links point into the host otherwise.
pub async fn import_dir(
    docker: &Docker,
    dir: &Path,
    image: &ImageRef,
    changes: &[String],
    labels: &Labels,
) -> Result<(), ImageError> {
    let owned_dir = dir.to_owned();
    let rootfs = blocking(move || rootfs_tar(&owned_dir))
        .await
        .map_err(|reason| ImageError::Rootfs {
            dir: dir.to_owned(),
            reason,
        })?;
    let mut all_changes = changes.to_vec();
    all_changes.push(labels.instruction());
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(image.name())
        .tag(image.tag())
        .changes(all_changes)
        .build();
    let import = async {
        let mut progress =
            docker.create_image(Some(options), Some(bollard::body_full(rootfs)), None);
        while let Some(item) = progress.next().await {
            item?;
        }
        Ok::<(), bollard::errors::Error>(())
    };
    match tokio::time::timeout(IMPORT_TIMEOUT, import).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ImageError::Import {
            image: image.clone(),
            reason: e.to_string(),
        }),
        Err(_) => Err(ImageError::Import {
            image: image.clone(),
            reason: format!("no result within {} s", IMPORT_TIMEOUT.as_secs()),
        }),
    }
}

/// The directory's tree as a tar stream of at most [`MAX_ROOTFS_BYTES`],
/// owners and modes kept. Blocking.
fn rootfs_tar(dir: &Path) -> Result<Bytes, String> {
    if !dir.is_dir() {
        return Err("not a directory".to_owned());
    }
    let mut builder = tar::Builder::new(Limited::default());
    builder.follow_symlinks(false);
    builder
        .append_dir_all("", dir)
        .and_then(|()| builder.into_inner())
        .map(|limited| Bytes::from(limited.bytes))
        .map_err(|e| e.to_string())
}

/// A `Vec` that refuses to grow past [`MAX_ROOTFS_BYTES`].
#[derive(Default)]
struct Limited {
    bytes: Vec<u8>,
}

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > MAX_ROOTFS_BYTES {
            return Err(std::io::Error::other(format!(
                "the root filesystem is larger than {} MiB",
                MAX_ROOTFS_BYTES / (1024 * 1024)
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

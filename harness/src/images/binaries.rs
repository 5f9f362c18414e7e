//! The static binaries the images are made from: finding the workspace and
//! building them with cargo.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::ImageError;

/// The target the static binaries are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The binaries the images need, as cargo names them.
pub const BINARIES: [&str; 2] = ["orchestrator", "gauntlet"];
/// A cold release build takes minutes on two cores; an hour means stuck.
const CARGO_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// A workspace manifest larger than this is not ours.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The gauntlet workspace at or above `start`: the first directory with a
/// `Cargo.toml` that has a `[workspace]` table and a `system/Cargo.toml`
/// next to it.
pub fn find_workspace(start: &Path) -> Result<PathBuf, ImageError> {
    start
        .ancestors()
        .find(|dir| is_workspace(dir))
        .map(Path::to_path_buf)
        .ok_or_else(|| ImageError::WorkspaceNotFound {
            start: start.to_owned(),
        })
}

fn is_workspace(dir: &Path) -> bool {
    use std::io::Read;
    let mut manifest = String::new();
    let read = std::fs::File::open(dir.join("Cargo.toml"))
        .and_then(|file| file.take(MAX_MANIFEST_BYTES).read_to_string(&mut manifest));
    read.is_ok()
        && manifest.lines().any(|line| line.trim() == "[workspace]")
        && dir.join("system/Cargo.toml").is_file()
}

/// Builds `orchestrator` and `gauntlet` as static release binaries of the
/// workspace and returns the directory holding them:
/// `$CARGO_TARGET_DIR` (or `<workspace>/target`)`/x86_64-unknown-linux-gnu/release`.
/// Cargo's progress goes to our stderr, as it would from a shell.
///
/// [`super::build`] calls this for [`super::Binaries::Cargo`], so that one
/// call makes everything; it is public for callers that want the binaries
/// alone.
pub async fn build_static_binaries(workspace: &Path) -> Result<PathBuf, ImageError> {
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        // A relative directory is relative to where the user stands, not to
        // the workspace cargo runs in.
        Some(dir) => {
            std::path::absolute(PathBuf::from(dir)).map_err(|source| ImageError::Cargo {
                reason: format!("cannot resolve CARGO_TARGET_DIR: {source}"),
            })?
        }
        None => workspace.join("target"),
    };
    // Under `cargo run`, `CARGO` is the cargo that runs us.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tokio::process::Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["-p", "orchestrator", "-p", "gauntlet"])
        .args(["--bin", "orchestrator", "--bin", "gauntlet"])
        // Told explicitly, so that cargo's configuration cannot put the
        // binaries anywhere else than where we look for them.
        .arg("--target-dir")
        .arg(&target_dir)
        // Exactly this, not appended to the user's flags: a static binary is
        // the point, and other flags could defeat it. `--target` keeps these
        // flags away from build scripts and proc macros (the compiler loads
        // proc macros as shared libraries, which crt-static cannot make) and
        // puts the output in its own directory, so the ordinary build cache
        // is not invalidated. CARGO_ENCODED_RUSTFLAGS would take precedence
        // over RUSTFLAGS, so it goes.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let status = match tokio::time::timeout(CARGO_TIMEOUT, command.status()).await {
        Err(_) => {
            return Err(ImageError::Cargo {
                reason: format!(
                    "no result within {} min (killed)",
                    CARGO_TIMEOUT.as_secs() / 60
                ),
            });
        }
        Ok(Err(e)) => {
            return Err(ImageError::Cargo {
                reason: format!("cannot run cargo: {e}"),
            });
        }
        Ok(Ok(status)) => status,
    };
    if !status.success() {
        return Err(ImageError::Cargo {
            reason: format!("cargo build {status} (its output is above)"),
        });
    }
    Ok(target_dir.join(TARGET).join("release"))
}

//! The run's data directory as a tmpfs of a fixed size: full disks and
//! read-only remounts without touching a real file system.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::error::LocalError;

/// Name of the file `disk_fill` grows until the tmpfs is full.
pub const FILLER_NAME: &str = ".gauntlet-filler";
/// Bytes written per `write` while filling.
const FILL_CHUNK_BYTES: usize = 1 << 20;

fn flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

/// Mounts a tmpfs of `size_bytes` at `target` (created if missing). `source`
/// shows in `/proc/mounts`, which says whose mount it is.
pub fn mount_tmpfs(source: &str, target: &Path, size_bytes: u64) -> Result<(), LocalError> {
    fs::create_dir_all(target).map_err(|source| LocalError::File {
        action: "create",
        path: target.to_path_buf(),
        source,
    })?;
    let options = format!("size={size_bytes},mode=0755");
    mount(
        Some(source),
        target,
        Some("tmpfs"),
        flags(),
        Some(options.as_str()),
    )
    .map_err(|source| LocalError::Mount {
        action: "mount a tmpfs at",
        path: target.to_path_buf(),
        source,
    })
}

/// Unmounts `target`; lazily (detached) when it is still busy, which happens
/// when a killed process has not been reaped yet. Not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), nix::Error> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH),
        Err(e) => Err(e),
    }
}

/// Remounts the tmpfs at `target` read-only or read-write. The kernel refuses
/// read-only (EBUSY) while any file there is open for writing.
pub fn remount(target: &Path, read_only: bool) -> Result<(), nix::Error> {
    let mut flags = flags() | MsFlags::MS_REMOUNT;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

/// Grows the filler file in `dir` until the file system answers ENOSPC;
/// returns the bytes written. At most `max_bytes` plus one chunk are tried,
/// so a file system larger than announced cannot make this run away.
pub fn fill(dir: &Path, max_bytes: u64) -> Result<u64, LocalError> {
    let path = dir.join(FILLER_NAME);
    let fill_error = |source| LocalError::Fill {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(fill_error)?;
    let chunk = vec![0u8; FILL_CHUNK_BYTES];
    let mut written = 0u64;
    while written <= max_bytes {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => return Ok(written),
            Err(e) => return Err(fill_error(e)),
        }
    }
    Err(fill_error(io::Error::other(format!(
        "still not full after {written} bytes (the tmpfs holds {max_bytes})"
    ))))
}

/// Deletes the filler file; a missing one is fine.
pub fn release(dir: &Path) -> Result<(), LocalError> {
    let path = dir.join(FILLER_NAME);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LocalError::File {
            action: "remove",
            path,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Probes that tmpfs mounts are permitted here, with a 4 KiB mount in a
/// temporary directory.
pub fn probe() -> Result<(), (PathBuf, nix::Error)> {
    let dir = tempfile::tempdir().map_err(|e| {
        (
            std::env::temp_dir(),
            Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
        )
    })?;
    let target = dir.path().to_path_buf();
    mount(
        Some("gauntlet-probe"),
        &target,
        Some("tmpfs"),
        flags(),
        Some("size=4096"),
    )
    .map_err(|e| (target.clone(), e))?;
    unmount(&target).map_err(|e| (target, e))
}

//! The run's memory cgroup: v2 when the unified hierarchy has the memory
//! controller, v1 otherwise.
//!
//! How an OOM is made (both versions): the limit is set, then a "hog" (`dd`)
//! joins the cgroup and writes the limit's worth of bytes into a file on a
//! tmpfs of its own. Tmpfs pages are charged to the writer's cgroup and
//! cannot be reclaimed without swap, so the cgroup runs out; the kernel's OOM
//! killer picks the orchestrator (`oom_score_adj` 1000) and SIGKILLs it, then
//! possibly the hog. The pages stay charged after the hog is gone, so a
//! restarted orchestrator is killed again until the tmpfs is unmounted. (The
//! hog keeps the default score: lowering it needs CAP_SYS_RESOURCE, which
//! containers often lack.) Writing a v1 limit below usage is not an option: the
//! kernel answers EBUSY instead of killing anything.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::LocalError;

const V2_ROOT: &str = "/sys/fs/cgroup";
const V1_ROOT: &str = "/sys/fs/cgroup/memory";
/// How long `remove` retries a busy cgroup (its last process may still be
/// exiting after SIGKILL).
const REMOVE_RETRY_MS: u64 = 5_000;
/// How long a v1 limit write is retried while the kernel answers EBUSY.
const LIMIT_RETRY_MS: u64 = 2_000;

/// Which cgroup interface the memory controller has here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `memory.max`, `memory.current`, `memory.events`.
    V2,
    /// `memory.limit_in_bytes`, `memory.usage_in_bytes`, `memory.oom_control`.
    V1,
}

/// Finds the memory controller: the unified hierarchy's if it has one, else
/// a v1 `memory` hierarchy mounted read-write.
pub fn detect() -> Result<(Version, PathBuf), String> {
    let controllers = Path::new(V2_ROOT).join("cgroup.controllers");
    if let Ok(list) = fs::read_to_string(&controllers)
        && list.split_whitespace().any(|c| c == "memory")
    {
        return Ok((Version::V2, PathBuf::from(V2_ROOT)));
    }
    let v1 = Path::new(V1_ROOT);
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((Version::V1, v1.to_path_buf()));
    }
    Err(format!(
        "neither {} lists `memory` nor is a v1 memory hierarchy mounted at {V1_ROOT}",
        controllers.display()
    ))
}

/// One run's memory cgroup.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Its directory.
    pub path: PathBuf,
    /// Its interface.
    pub version: Version,
}

fn write(path: &Path, value: &str) -> Result<(), LocalError> {
    fs::write(path, value).map_err(|source| LocalError::Cgroup {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, LocalError> {
    fs::read_to_string(path).map_err(|source| LocalError::Cgroup {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

impl Cgroup {
    /// The cgroup `name` would be, without creating it.
    pub fn planned(name: &str) -> Result<Cgroup, String> {
        let (version, root) = detect()?;
        Ok(Cgroup {
            path: root.join(name),
            version,
        })
    }

    /// Creates the cgroup (an existing one, left by a crashed run of the same
    /// id, is reused).
    pub fn create(&self) -> Result<(), LocalError> {
        if self.version == Version::V2 {
            // Children get a memory controller only when the parent hands it down.
            let parent = self.path.parent().unwrap_or(Path::new(V2_ROOT));
            let subtree = parent.join("cgroup.subtree_control");
            let enabled = read(&subtree)?;
            if !enabled.split_whitespace().any(|c| c == "memory") {
                write(&subtree, "+memory")?;
            }
        }
        match fs::create_dir(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(LocalError::Cgroup {
                action: "create",
                path: self.path.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The file a process joins the cgroup through.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// How many processes of the cgroup the kernel's OOM killer has killed.
    pub fn oom_kills(&self) -> Result<u64, LocalError> {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        let path = self.path.join(file);
        let text = read(&path)?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| LocalError::Cgroup {
                action: "find `oom_kill` in",
                path,
                source: io::Error::from(io::ErrorKind::InvalidData),
            })
    }

    /// Sets the memory limit, or lifts it (`None`). Swap is disabled for the
    /// cgroup too where the kernel allows, so that pressure ends in an OOM
    /// kill rather than in swapping.
    pub fn set_limit(&self, limit_bytes: Option<u64>) -> Result<(), LocalError> {
        match self.version {
            Version::V2 => {
                let value = limit_bytes.map_or_else(|| "max".to_owned(), |b| b.to_string());
                write(&self.path.join("memory.max"), &value)?;
                let swap = self.path.join("memory.swap.max");
                if limit_bytes.is_some() && swap.exists() {
                    write(&swap, "0")?;
                }
                Ok(())
            }
            Version::V1 => {
                let value = limit_bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
                write_retrying_busy(&self.path.join("memory.limit_in_bytes"), &value)?;
                if limit_bytes.is_some() {
                    // Best effort: without swap configured the file may refuse.
                    let _ = fs::write(self.path.join("memory.swappiness"), "0");
                }
                Ok(())
            }
        }
    }

    /// Removes the cgroup; an absent one is fine. Retries while the kernel
    /// still counts an exiting process in it.
    pub fn remove(&self) -> Result<(), LocalError> {
        remove_dir(&self.path).map_err(|source| LocalError::Cgroup {
            action: "remove",
            path: self.path.clone(),
            source,
        })
    }
}

/// A v1 limit write, retried on EBUSY for [`LIMIT_RETRY_MS`]: the kernel
/// answers EBUSY when it could not reclaim the cgroup's usage (page cache
/// under write load) down to the new limit at once: dirty pages must be
/// written back before they can be dropped. Each retry first flushes dirty
/// pages (`sync`), and then the reclaim usually succeeds. There is nothing to
/// await: reclaim has no event.
fn write_retrying_busy(path: &Path, value: &str) -> Result<(), LocalError> {
    let deadline = Instant::now() + Duration::from_millis(LIMIT_RETRY_MS);
    loop {
        match fs::write(path, value) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                nix::unistd::sync();
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return write(path, value),
        }
    }
}

/// `rmdir` of a cgroup, retried on EBUSY for [`REMOVE_RETRY_MS`]. There is
/// nothing to await: a cgroup empties when the kernel finishes the exits.
pub fn remove_dir(path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(REMOVE_RETRY_MS);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Probes that a memory cgroup can be created and limited here.
pub fn probe() -> Result<(), String> {
    let cgroup = Cgroup::planned(&format!("gauntlet-probe-{}", std::process::id()))?;
    cgroup.create().map_err(|e| e.to_string())?;
    let limit_file = match cgroup.version {
        Version::V2 => "memory.max",
        Version::V1 => "memory.limit_in_bytes",
    };
    let usable = cgroup.path.join(limit_file).exists();
    let removed = cgroup.remove();
    if !usable {
        return Err(format!(
            "{} has no {limit_file} (the memory controller is not enabled for it)",
            cgroup.path.display()
        ));
    }
    removed.map_err(|e| e.to_string())
}

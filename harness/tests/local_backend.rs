//! The local backend against the real orchestrator (this package's
//! `gauntlet __serve-orchestrator`). Tests that need root, mounts, cgroups or
//! libfiu print why and return when the machine lacks them, except under
//! CI=true, where they fail instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gauntlet::local::{
    EventKind, Exit, Launcher, LocalConfig, LocalError, LocalSystem, Needs, check_needs, gc_in,
};
use serde_json::{Value, json};

const KEY: &str = "Bearer gauntlet-dev-key";
/// Client timeout: every request is bounded.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waits for the supervisor.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn base_yaml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/configs/base.yaml");
    let yaml = std::fs::read_to_string(path).expect("fixtures/configs/base.yaml is readable");
    assert!(yaml.contains("path: data/orchestrator.db"));
    // An unused loopback port: the service starts without a reachable provider.
    yaml.replace("http://127.0.0.1:8081/v1", "http://127.0.0.1:9/v1")
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self, name: &str, needs: Needs) -> LocalConfig {
        let run_dir = self.dir.path().join("run");
        std::fs::create_dir_all(&run_dir).expect("the run directory is created");
        let mut config = LocalConfig::new(
            format!("test-{name}-{}", std::process::id()),
            run_dir,
            base_yaml(),
            Launcher::gauntlet_binary(env!("CARGO_BIN_EXE_gauntlet")),
        );
        config.needs = needs;
        config.state_dir = self.state_dir();
        config.ready_timeout = Duration::from_secs(30);
        config.max_restarts = 3;
        config
    }
}

/// Whether the machine can provide `needs`; under CI=true it must.
fn available(needs: &Needs) -> bool {
    match check_needs(needs) {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: {reason}");
            false
        }
        Err(reason) => panic!("CI=true and this machine cannot run the test: {reason}"),
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("the test client builds")
}

async fn live(system: &LocalSystem) -> Result<u16, reqwest::Error> {
    let url = format!("http://{}/health/live", system.addr());
    client().get(url).send().await.map(|r| r.status().as_u16())
}

/// POST /v1/jobs: the status and body, or the transport error.
async fn post_job(system: &LocalSystem) -> Result<(u16, Value), reqwest::Error> {
    let response = client()
        .post(format!("http://{}/v1/jobs", system.addr()))
        .header("Authorization", KEY)
        .json(&json!({"prompt": "hi"}))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo is readable");
    let path = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*path))
}

fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|s| !s.starts_with('Z'))
    })
}

fn cgroup_dirs(run_id: &str) -> Vec<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/memory"]
        .iter()
        .map(|root| Path::new(root).join(format!("gauntlet-{run_id}")))
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test]
async fn start_serves_and_shutdown_leaves_nothing() {
    let run = Run::new();
    let needs = Needs {
        disk_tmpfs_bytes: Some(64 << 20),
        memory: true,
        io_errors: false,
    };
    if !available(&needs) {
        return;
    }
    let config = run.config("lifecycle", needs);
    let run_id = config.run_id.clone();
    let run_dir = config.run_dir.clone();
    let system = LocalSystem::start(config).await.unwrap();
    assert_eq!(live(&system).await.unwrap(), 200);
    let pid = system.pid().unwrap();
    assert!(is_mounted(&run_dir.join("data")));
    assert_eq!(cgroup_dirs(&run_id).len(), 1);
    assert!(run.state_dir().join(format!("{run_id}.json")).exists());
    assert_eq!(system.db_path(), run_dir.join("data/orchestrator.db"));

    let report = system.shutdown().await.unwrap();
    assert!(report.graceful, "{report:?}");
    assert!(!process_exists(pid));
    assert!(!is_mounted(&run_dir.join("data")));
    assert!(cgroup_dirs(&run_id).is_empty());
    assert!(!run.state_dir().join(format!("{run_id}.json")).exists());
}

#[tokio::test]
async fn kill_then_start_again_keeps_address_and_data() {
    let run = Run::new();
    let system = LocalSystem::start(run.config("kill", Needs::default()))
        .await
        .unwrap();
    let addr = system.addr();
    let (status, job) = post_job(&system).await.unwrap();
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();

    let exit = system.kill().await.unwrap();
    assert_eq!(exit, Exit::Signal(9));
    assert!(live(&system).await.is_err());
    // No automatic restart while the kill fault is active.
    assert!(system.pid().is_none());

    system.start_again().await.unwrap();
    assert_eq!(system.addr(), addr);
    let found = client()
        .get(format!("http://{addr}/v1/jobs/{id}"))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status().as_u16(), 200);
    let events = system.events();
    assert!(events.iter().any(|e| matches!(
        e.kind,
        EventKind::Exited {
            expected: true,
            oom: false,
            ..
        }
    )));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Restarted { .. }))
    );
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn pause_stalls_requests_until_resume() {
    let run = Run::new();
    let system = LocalSystem::start(run.config("pause", Needs::default()))
        .await
        .unwrap();
    system.pause().await.unwrap();
    let stalled = client()
        .get(format!("http://{}/health/live", system.addr()))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(stalled.unwrap_err().is_timeout());
    system.resume().await.unwrap();
    assert_eq!(live(&system).await.unwrap(), 200);
    // Neither stop nor continue looks like an exit to the supervisor.
    assert!(
        !system
            .events()
            .iter()
            .any(|e| matches!(e.kind, EventKind::Exited { .. }))
    );
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn paused_system_shuts_down_gracefully() {
    let run = Run::new();
    let system = LocalSystem::start(run.config("pause-stop", Needs::default()))
        .await
        .unwrap();
    // The orchestrator prints `listening on` before it installs its SIGTERM
    // handler, so a SIGTERM right after readiness kills it outright (a race
    // in the orchestrator, reported); a served request lets it get there.
    assert_eq!(live(&system).await.unwrap(), 200);
    system.pause().await.unwrap();
    let report = system.shutdown().await.unwrap();
    assert!(report.graceful, "{report:?}");
}

#[tokio::test]
async fn restart_replaces_the_process_on_the_same_address() {
    let run = Run::new();
    let system = LocalSystem::start(run.config("restart", Needs::default()))
        .await
        .unwrap();
    let (addr, pid) = (system.addr(), system.pid().unwrap());
    system.restart().await.unwrap();
    assert_ne!(system.pid().unwrap(), pid);
    assert_eq!(system.addr(), addr);
    assert_eq!(live(&system).await.unwrap(), 200);
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn disk_fill_fails_writes_and_release_restores_them() {
    let run = Run::new();
    let needs = Needs {
        disk_tmpfs_bytes: Some(16 << 20),
        ..Needs::default()
    };
    if !available(&needs) {
        return;
    }
    let system = LocalSystem::start(run.config("disk", needs)).await.unwrap();
    assert_eq!(post_job(&system).await.unwrap().0, 202);
    let written = system.disk_fill().await.unwrap();
    assert!(written > 0);
    let (status, body) = post_job(&system).await.unwrap();
    assert!((500..600).contains(&status), "{status} {body}");
    system.disk_release().await.unwrap();
    assert_eq!(post_job(&system).await.unwrap().0, 202);
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn read_only_fails_writes_and_read_write_restores_them() {
    let run = Run::new();
    let needs = Needs {
        disk_tmpfs_bytes: Some(16 << 20),
        io_errors: true,
        memory: false,
    };
    if !available(&needs) {
        return;
    }
    let system = LocalSystem::start(run.config("ro", needs)).await.unwrap();
    system.set_read_only(true).await.unwrap();
    let (status, body) = post_job(&system).await.unwrap();
    assert!((500..600).contains(&status), "{status} {body}");
    assert_eq!(live(&system).await.unwrap(), 200);
    system.set_read_only(false).await.unwrap();
    assert_eq!(post_job(&system).await.unwrap().0, 202);
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn read_only_without_libfiu_is_refused_while_running_and_remounts_when_down() {
    let run = Run::new();
    let needs = Needs {
        disk_tmpfs_bytes: Some(16 << 20),
        ..Needs::default()
    };
    if !available(&needs) {
        return;
    }
    let system = LocalSystem::start(run.config("ro-remount", needs))
        .await
        .unwrap();
    let refused = system.set_read_only(true).await.unwrap_err();
    assert!(
        matches!(refused, LocalError::ReadOnlyBusy { .. }),
        "{refused}"
    );
    // Down, nothing holds files open: the remount works, and the
    // orchestrator cannot start on a read-only data directory.
    system.kill().await.unwrap();
    system.set_read_only(true).await.unwrap();
    let err = system.start_again().await.unwrap_err();
    assert!(matches!(err, LocalError::ExitedEarly { .. }), "{err}");
    system.set_read_only(false).await.unwrap();
    system.start_again().await.unwrap();
    assert_eq!(post_job(&system).await.unwrap().0, 202);
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn io_errors_fail_disk_writes_and_off_restores_them() {
    let run = Run::new();
    let needs = Needs {
        io_errors: true,
        ..Needs::default()
    };
    if !available(&needs) {
        return;
    }
    let system = LocalSystem::start(run.config("fiu", needs)).await.unwrap();
    assert_eq!(post_job(&system).await.unwrap().0, 202);
    system.io_errors(1.0).await.unwrap();
    let (status, body) = post_job(&system).await.unwrap();
    assert_eq!(status, 503, "{body}");
    // Only disk writes fail: the network side still answers.
    assert_eq!(live(&system).await.unwrap(), 200);
    system.io_errors_off().await.unwrap();
    assert_eq!(post_job(&system).await.unwrap().0, 202);
    assert!(matches!(
        system.io_errors(1.5).await,
        Err(LocalError::BadProbability { .. })
    ));
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn oom_is_a_kernel_kill_and_the_supervisor_restarts() {
    let run = Run::new();
    let needs = Needs {
        memory: true,
        ..Needs::default()
    };
    if !available(&needs) {
        return;
    }
    let system = LocalSystem::start(run.config("oom", needs)).await.unwrap();
    let pid = system.pid().unwrap();
    system.oom(128 << 20).await.unwrap();
    let killed = system
        .wait_for_event(
            EVENT_TIMEOUT,
            |e| matches!(e.kind, EventKind::Exited { pid: p, .. } if p == pid),
        )
        .await
        .expect("the orchestrator was not killed");
    assert!(
        matches!(
            killed.kind,
            EventKind::Exited {
                exit: Exit::Signal(9),
                oom: true,
                expected: false,
                ..
            }
        ),
        "{killed:?}"
    );
    system
        .wait_for_event(EVENT_TIMEOUT, |e| {
            matches!(
                e.kind,
                EventKind::Restarted { .. } | EventKind::RestartFailed { .. }
            )
        })
        .await
        .expect("the supervisor did not restart it");
    system.oom_end().await.unwrap();
    assert_eq!(live(&system).await.unwrap(), 200);
    let report = system.shutdown().await.unwrap();
    assert!(report.restarts >= 1);
}

#[tokio::test]
async fn a_bad_config_fails_the_start_with_the_log_tail() {
    let run = Run::new();
    let mut config = run.config("bad", Needs::default());
    config.config_yaml = base_yaml().replace("workers: 4", "workers: -4");
    let err = LocalSystem::start(config).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            LocalError::ExitedEarly {
                exit: Exit::Code(2),
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("jobs.workers"), "{message}");
    // Nothing left: the failed start removed its record.
    assert_eq!(std::fs::read_dir(run.state_dir()).unwrap().count(), 0);
}

/// Env var that makes the gc test's child process the harness to be killed.
const LEAK_HELPER: &str = "GAUNTLET_TEST_LEAK_RUN_DIR";

#[tokio::test]
async fn gc_cleans_up_after_a_killed_harness() {
    let needs = Needs {
        disk_tmpfs_bytes: Some(16 << 20),
        memory: true,
        io_errors: false,
    };
    if let Some(dir) = std::env::var_os(LEAK_HELPER) {
        // The helper: start a system, say where, and wait to be SIGKILLed.
        let dir = PathBuf::from(dir);
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut config = LocalConfig::new(
            "test-gc-leak".to_owned() + &std::process::id().to_string(),
            run_dir,
            base_yaml(),
            Launcher::gauntlet_binary(env!("CARGO_BIN_EXE_gauntlet")),
        );
        config.needs = needs;
        config.state_dir = dir.join("state");
        let system = LocalSystem::start(config).await.unwrap();
        println!("leaked {} {}", system.pid().unwrap(), system.addr());
        tokio::time::sleep(Duration::from_secs(120)).await;
        panic!("the helper was not killed within 120 s");
    }
    if !available(&needs) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut helper = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "gc_cleans_up_after_a_killed_harness",
            "--exact",
            "--nocapture",
        ])
        .env(LEAK_HELPER, dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("leaked ") {
                return line;
            }
        }
        panic!("the helper ended without starting a system");
    })
    .await
    .unwrap();
    let pid: u32 = line.split(' ').nth(1).unwrap().parse().unwrap();
    helper.start_kill().unwrap();
    helper.wait().await.unwrap();
    // The crash left the orchestrator, the mount and the cgroup behind.
    let run_id = format!("test-gc-leak{}", owner_pid(&helper_record(dir.path())));
    assert!(process_exists(pid));
    assert!(is_mounted(&dir.path().join("run/data")));
    assert_eq!(cgroup_dirs(&run_id).len(), 1);

    let report = gc_in(&dir.path().join("state"));
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.killed, vec![(run_id.clone(), pid)]);
    assert!(!process_exists(pid));
    assert!(!is_mounted(&dir.path().join("run/data")));
    assert!(cgroup_dirs(&run_id).is_empty());
    assert_eq!(report.records_removed, vec![run_id]);
    // A second pass finds nothing.
    let again = gc_in(&dir.path().join("state"));
    assert_eq!(again.to_string(), "local: nothing to clean up\n");
}

/// The one record the helper wrote.
fn helper_record(dir: &Path) -> Value {
    let entry = std::fs::read_dir(dir.join("state"))
        .expect("the state directory is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("the helper wrote a state record");
    let bytes = std::fs::read(entry).expect("the record is readable");
    serde_json::from_slice(&bytes).expect("the record is JSON")
}

/// The helper's pid, as its record names its owner.
fn owner_pid(record: &Value) -> u64 {
    record["owner"]["pid"]
        .as_u64()
        .expect("the record names its owner")
}

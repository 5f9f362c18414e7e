//! The Docker backend's lifecycle: what a run leaves behind when it is
//! dropped, interrupted or killed, and how `gauntlet run --backend docker`
//! refuses what it cannot do. The scenarios themselves run on Docker in
//! `scenarios.rs`. Skipped with the reason when there is no engine or no
//! images, except under `CI=true` (see `support/docker.rs`).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gauntlet::docker::{DockerConfig, DockerDeployment, DockerNeeds, LABEL_OWNER, LABEL_RUN};
use gauntlet::images::ImageNames;
use support::docker::images_or_skip;
use testcontainers::bollard::Docker;
use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
};

/// Bound on every wait of these tests.
const WAIT: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn gauntlet() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gauntlet"));
    command.current_dir(workspace_root());
    command
}

fn images() -> ImageNames {
    ImageNames::resolve(None, None).expect("the default image names are valid")
}

/// Container and network names carrying `label=value`.
async fn labelled(docker: &Docker, label: &str, value: &str) -> (Vec<String>, Vec<String>) {
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .expect("list networks")
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    (containers, networks)
}

/// Waits until `check` holds, for at most [`WAIT`]; the last state is
/// returned either way for the assertion to print.
async fn wait_for<T>(mut probe: impl AsyncFnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let state = probe().await;
        if check(&state) || Instant::now() >= deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The owner label of a process: `PID:START_TICKS`, from `/proc`.
fn owner_label(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let rest = &stat[stat.rfind(')').expect("a stat line") + 1..];
    let ticks = rest.split_whitespace().nth(19).expect("field 22");
    format!("{pid}:{ticks}")
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Starts `gauntlet run --backend docker scenarios/smoke.yaml` and waits
/// until its three containers exist and the orchestrator runs. Returns the
/// child and its owner label.
async fn start_run(docker: &Docker, reports: &Path) -> (std::process::Child, String) {
    let child = gauntlet()
        .args([
            "run",
            "--backend",
            "docker",
            "scenarios/smoke.yaml",
            "--report-dir",
        ])
        .arg(reports)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gauntlet run");
    let owner = owner_label(child.id());
    let (containers, _) = wait_for(
        async || labelled(docker, LABEL_OWNER, &owner).await,
        |(c, _)| c.iter().any(|n| n.ends_with("-orchestrator")),
    )
    .await;
    assert!(
        containers.iter().any(|n| n.ends_with("-orchestrator")),
        "the run never started its orchestrator; containers: {containers:?}"
    );
    (child, owner)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_leaves_containers_that_gc_removes() {
    let Some(docker) =
        images_or_skip("a_killed_run_leaves_containers_that_gc_removes", &images()).await
    else {
        return;
    };
    let reports = tempfile::tempdir().expect("tempdir");
    let (mut child, owner) = start_run(&docker, reports.path()).await;
    // SIGKILL: no handler, no watchdog, no Drop runs.
    child.kill().expect("SIGKILL the run");
    child.wait().expect("reap the run");
    let (containers, networks) = labelled(&docker, LABEL_OWNER, &owner).await;
    assert!(
        !containers.is_empty() && !networks.is_empty(),
        "a SIGKILLed run should leave its containers and network: {containers:?} {networks:?}"
    );
    let gc = gauntlet().arg("gc").output().expect("run gauntlet gc");
    assert!(gc.status.success(), "gauntlet gc failed: {}", describe(&gc));
    let stdout = String::from_utf8_lossy(&gc.stdout);
    for name in containers.iter().chain(&networks) {
        assert!(
            stdout.contains(name.trim_start_matches('/')),
            "gc did not say it removed {name}: {}",
            describe(&gc)
        );
    }
    let left = labelled(&docker, LABEL_OWNER, &owner).await;
    assert_eq!(left, (Vec::new(), Vec::new()), "left after gc");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_leaves_nothing() {
    let Some(docker) = images_or_skip("an_interrupted_run_leaves_nothing", &images()).await else {
        return;
    };
    let reports = tempfile::tempdir().expect("tempdir");
    let (mut child, owner) = start_run(&docker, reports.path()).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid")),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT the run");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("poll the run").is_none() {
        assert!(
            Instant::now() < deadline,
            "the run did not end after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The watchdog removes the containers; the detached gc the handler
    // started removes the network once the run's process is gone.
    let left = wait_for(
        async || labelled(&docker, LABEL_OWNER, &owner).await,
        |(c, n)| c.is_empty() && n.is_empty(),
    )
    .await;
    assert_eq!(left, (Vec::new(), Vec::new()), "left after Ctrl-C");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_system_removes_its_containers_and_network() {
    let Some(docker) = images_or_skip(
        "dropping_a_system_removes_its_containers_and_network",
        &images(),
    )
    .await
    else {
        return;
    };
    let run_dir = tempfile::tempdir().expect("tempdir");
    let run_id = format!("drop-test-{}", std::process::id());
    let config = std::fs::read_to_string(workspace_root().join("fixtures/configs/base.yaml"))
        .expect("read base.yaml");
    let system = DockerDeployment::start(DockerConfig {
        run_id: run_id.clone(),
        run_dir: run_dir.path().to_path_buf(),
        configs: vec![container_config(&config)],
        images: images(),
        seed: 1,
        needs: DockerNeeds::default(),
        ready_timeout: Duration::from_secs(60),
        state_dir: run_dir.path().join("state"),
        redis: None,
    })
    .await
    .expect("start the system");
    let reply = reqwest::get(format!("http://{}/health/live", system.replicas[0].addr()))
        .await
        .expect("the orchestrator answers on its published port");
    assert!(reply.status().is_success(), "live: {}", reply.status());
    let (containers, networks) = labelled(&docker, LABEL_RUN, &run_id).await;
    assert_eq!(
        (containers.len(), networks.len()),
        (3, 1),
        "{containers:?} {networks:?}"
    );
    // As on an error or a panic: no shutdown, only Drop.
    drop(system);
    let left = labelled(&docker, LABEL_RUN, &run_id).await;
    assert_eq!(left, (Vec::new(), Vec::new()), "left after drop");
}

/// A value set in Redis before a SIGKILL is there after `docker start`
/// (append-only file in the bind-mounted run directory), both replicas
/// reach Redis through their own `redis[i]` links, and a graceful teardown
/// of the replicas and then Redis leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_a_redis_that_keeps_its_writes_across_a_kill() {
    let Some(docker) = images_or_skip(
        "replicas_share_a_redis_that_keeps_its_writes_across_a_kill",
        &images(),
    )
    .await
    else {
        return;
    };
    let run_dir = tempfile::tempdir().expect("tempdir");
    let run_id = format!("redis-test-{}", std::process::id());
    let base = std::fs::read_to_string(workspace_root().join("fixtures/configs/base.yaml"))
        .expect("read base.yaml");
    let configs = (0..2)
        .map(|i| container_config_on_redis(&base, &gauntlet::docker::redis_link_url(&run_id, i)))
        .collect();
    let deployment = DockerDeployment::start(DockerConfig {
        run_id: run_id.clone(),
        run_dir: run_dir.path().to_path_buf(),
        configs,
        images: images(),
        seed: 1,
        needs: DockerNeeds::default(),
        ready_timeout: Duration::from_secs(60),
        state_dir: run_dir.path().join("state"),
        redis: Some(gauntlet::docker::RedisOptions { appendonly: true }),
    })
    .await
    .expect("start the system");
    for replica in &deployment.replicas {
        let ready = reqwest::get(format!("http://{}/health/ready", replica.addr()))
            .await
            .expect("the replica answers on its published port");
        assert!(ready.status().is_success(), "ready: {}", ready.status());
    }
    let (containers, networks) = labelled(&docker, LABEL_RUN, &run_id).await;
    assert_eq!(
        (containers.len(), networks.len()),
        (5, 1),
        "{containers:?} {networks:?}"
    );
    let redis = deployment.redis.as_ref().expect("redis was asked for");
    redis_command(&redis.url(), &["SET", "gauntlet-test", "kept"]).await;
    redis.kill().await.expect("kill redis");
    redis.start_again().await.expect("start redis again");
    assert_eq!(
        redis_command(&redis.url(), &["GET", "gauntlet-test"]).await,
        Some("kept".to_owned())
    );
    assert!(
        run_dir.path().join("redis/appendonlydir").is_dir(),
        "the append-only file is in the run directory"
    );

    let DockerDeployment { replicas, redis } = deployment;
    for (i, replica) in replicas.into_iter().enumerate() {
        let report = replica
            .shutdown_preserving(None)
            .await
            .expect("the replica shuts down");
        assert!(report.graceful, "replica {i}: {report:?}");
    }
    redis
        .expect("redis was asked for")
        .stop()
        .await
        .expect("redis stops");
    let left = labelled(&docker, LABEL_RUN, &run_id).await;
    assert_eq!(left, (Vec::new(), Vec::new()), "left after the teardown");
}

/// Runs one command on the Redis at `url` (a plain connection, not the
/// system's), returning its answer as text when it has one.
async fn redis_command(url: &str, args: &[&str]) -> Option<String> {
    let (url, args): (String, Vec<String>) = (
        url.to_owned(),
        args.iter().map(|a| (*a).to_owned()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(url.as_str()).expect("a redis url");
        let mut connection = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("redis answers");
        let mut command = redis::cmd(&args[0]);
        for arg in &args[1..] {
            command.arg(arg);
        }
        command
            .query::<Option<String>>(&mut connection)
            .expect("the command succeeds")
    })
    .await
    .expect("the redis task")
}

/// [`container_config`] on the Redis store at `url`.
fn container_config_on_redis(base: &str, url: &str) -> String {
    let outcome = orchestrator::config::validate(
        container_config(base).as_bytes(),
        &orchestrator::config::ValidateOptions::default(),
    );
    let mut config = outcome.config.expect("the container config is valid");
    config.storage = orchestrator::config::StorageConfig::Redis {
        url: url.parse().expect("a redis url"),
    };
    config.to_yaml()
}

/// The base config made to run in a container: listening on every interface
/// (allowed explicitly) and with its database under the mounted run directory.
fn container_config(base: &str) -> String {
    let outcome = orchestrator::config::validate(
        base.as_bytes(),
        &orchestrator::config::ValidateOptions::default(),
    );
    let mut config = outcome.config.expect("base.yaml is valid");
    config.server.listen = ([0, 0, 0, 0], gauntlet::docker::ORCHESTRATOR_PORT).into();
    config.server.allow_public_listen = true;
    config.storage = orchestrator::config::StorageConfig::Sqlite {
        path: PathBuf::from("data/orchestrator.db"),
    };
    config.to_yaml()
}

#[test]
fn missing_images_are_named_with_the_command_that_builds_them() {
    let output = gauntlet()
        .args([
            "run",
            "--backend",
            "docker",
            "--orchestrator-image",
            "gauntlet-test/never-built:0.0.0",
            "scenarios/smoke.yaml",
        ])
        .output()
        .expect("run gauntlet");
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Without an engine the error names the engine instead; both exit 2.
    assert!(
        stderr.contains("gauntlet-test/never-built:0.0.0")
            && stderr.contains("gauntlet images build")
            || stderr.contains("docker engine"),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_scenario_the_backend_cannot_inject_is_refused_with_the_reason() {
    let output = gauntlet()
        .args(["run", "--backend", "docker", "scenarios/disk-io.yaml"])
        .output()
        .expect("run gauntlet");
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("disk-io") && stderr.contains("libfiu"),
        "{}",
        describe(&output)
    );
}

#[test]
fn latest_and_untagged_image_names_are_refused() {
    for name in ["gauntlet/orchestrator:latest", "gauntlet/orchestrator"] {
        let output = gauntlet()
            .args(["run", "--backend", "docker", "--orchestrator-image", name])
            .arg("scenarios/smoke.yaml")
            .output()
            .expect("run gauntlet");
        assert_eq!(
            output.status.code(),
            Some(2),
            "{name}: {}",
            describe(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(name),
            "{name}: {}",
            describe(&output)
        );
    }
}

//! `gauntlet images`: image names, the static-binary check and the inputs
//! hash on their own; then, with a Docker engine (skipped without one
//! unless `CI=true`), scratch builds that are up to date the second time and
//! rebuilt when a byte changes, `build` with its preflight, and the import
//! of a root filesystem directory.

mod support;

use std::path::{Path, PathBuf};

use gauntlet::images::{
    self, Binaries, BuildOptions, ContextFile, INPUTS_LABEL, ImageError, ImageNames, ImageSpec,
    Labels, Outcome, ROLE_LABEL, Recipe, VERSION, VERSION_LABEL,
};
use support::docker::{ImageGuard, engine_or_skip};
use testcontainers::bollard::Docker;

/// A minimal x86-64 ELF64 executable: the 64-byte header and a `PT_LOAD`
/// program header, preceded by a `PT_INTERP` one when `interpreter`. The
/// last byte is `marker`, so stand-ins can differ.
fn minimal_elf(interpreter: bool, marker: u8) -> Vec<u8> {
    const PT_LOAD: u32 = 1;
    const PT_INTERP: u32 = 3;
    let types: &[u32] = if interpreter {
        &[PT_INTERP, PT_LOAD]
    } else {
        &[PT_LOAD]
    };
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1; // ELF version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers right after
    elf[52..54].copy_from_slice(&64u16.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
    for p_type in types {
        let mut header = vec![0u8; 56];
        header[..4].copy_from_slice(&p_type.to_le_bytes());
        elf.extend(header);
    }
    elf.push(marker);
    elf
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("the parent directory is made");
    }
    std::fs::write(&path, bytes).expect("the file is written");
    path
}

/// What `env` answers for the names' variables.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |var| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
}

#[test]
fn default_names_carry_the_version() {
    let names = ImageNames::defaults().expect("the defaults are valid");
    assert_eq!(
        names.orchestrator.to_string(),
        format!("gauntlet/orchestrator:{VERSION}")
    );
    assert_eq!(
        names.harness.to_string(),
        format!("gauntlet/harness:{VERSION}")
    );
    assert_eq!(names.redis.to_string(), format!("gauntlet/redis:{VERSION}"));
}

#[test]
fn a_flag_wins_over_the_environment_and_the_environment_over_the_default() {
    let env = env_of(&[
        (
            "GAUNTLET_ORCHESTRATOR_IMAGE",
            "registry.example.com/team/orchestrator:0.1.0",
        ),
        (
            "GAUNTLET_HARNESS_IMAGE",
            "registry.example.com/team/harness:0.1.0",
        ),
        (
            "GAUNTLET_REDIS_IMAGE",
            "registry.example.com/team/redis:7.0",
        ),
    ]);
    let names = ImageNames::resolve_with(None, Some("localhost:5000/h:2"), &env)
        .expect("the names are valid");
    assert_eq!(
        names.orchestrator.to_string(),
        "registry.example.com/team/orchestrator:0.1.0"
    );
    assert_eq!(
        names.orchestrator.name(),
        "registry.example.com/team/orchestrator"
    );
    assert_eq!(names.orchestrator.tag(), "0.1.0");
    assert_eq!(names.harness.to_string(), "localhost:5000/h:2");
    assert_eq!(
        names.redis.to_string(),
        "registry.example.com/team/redis:7.0"
    );
    let error = ImageNames::resolve_with(None, None, env_of(&[("GAUNTLET_REDIS_IMAGE", "redis")]))
        .expect_err("untagged");
    assert_eq!(
        error.to_string(),
        "invalid image name \"redis\" in GAUNTLET_REDIS_IMAGE: a tag is required: pin a version, e.g. redis:1.0.0"
    );
}

#[test]
fn invalid_names_say_what_is_wrong_and_where_it_came_from() {
    let cases = [
        ("flag", ""),
        ("flag", "gauntlet/orchestrator"),
        ("flag", "gauntlet/orchestrator:latest"),
        ("flag", "Gauntlet/orchestrator:0.1.0"),
        ("flag", "gauntlet/orchestrator:0.1.0 "),
        ("flag", "gauntlet/orchestrator@sha256:0123456789abcdef"),
        ("flag", "gauntlet/orchestrator:"),
        ("flag", ":0.1.0"),
        ("flag", "gauntlet//orchestrator:0.1.0"),
        ("flag", "gauntlet/-orchestrator:0.1.0"),
        ("flag", "gauntlet/orchestrator:-rc1"),
        ("flag", "orchestrator:a:b"),
        ("env", "registry.example.com/team/orchestrator"),
        ("env", "registry.example.com/team/orchestrator:latest"),
    ];
    let mut report = String::new();
    for (origin, value) in cases {
        let result = match origin {
            "flag" => ImageNames::resolve_with(Some(value), None, |_| None),
            _ => ImageNames::resolve_with(
                None,
                None,
                env_of(&[("GAUNTLET_ORCHESTRATOR_IMAGE", value)]),
            ),
        };
        let error = result.expect_err(value);
        assert_eq!(error.exit(), orchestrator::exit::Exit::BadInput);
        report.push_str(&format!("{error}\n"));
    }
    insta::assert_snapshot!(report);
}

#[test]
fn a_minimal_static_elf_passes_and_one_with_an_interpreter_does_not() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let static_elf = write(dir.path(), "static", &minimal_elf(false, 0));
    images::check_static_binary(&static_elf).expect("no PT_INTERP: static");
    let dynamic_elf = write(dir.path(), "dynamic", &minimal_elf(true, 0));
    let error = images::check_static_binary(&dynamic_elf).expect_err("PT_INTERP: dynamic");
    assert!(
        matches!(&error, ImageError::DynamicBinary { path } if *path == dynamic_elf),
        "{error}"
    );
}

#[test]
fn a_dynamic_system_binary_is_refused_with_the_way_out() {
    let error = images::check_static_binary(Path::new("/bin/true"))
        .expect_err("/bin/true is dynamically linked");
    insta::assert_snapshot!(error.to_string());
}

#[test]
fn files_that_are_not_x86_64_executables_are_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut big_endian = minimal_elf(false, 0);
    big_endian[5] = 2;
    let mut arm = minimal_elf(false, 0);
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    let mut cut_short = minimal_elf(false, 0);
    cut_short.truncate(80);
    let mut no_headers = minimal_elf(false, 0);
    no_headers[56..58].copy_from_slice(&0u16.to_le_bytes());
    let cases = [
        ("text", b"#!/bin/sh\necho hi\n".to_vec()),
        ("truncated-header", minimal_elf(false, 0)[..40].to_vec()),
        ("big-endian", big_endian),
        ("aarch64", arm),
        ("cut-short", cut_short),
        ("no-program-headers", no_headers),
    ];
    let mut report = String::new();
    for (name, bytes) in cases {
        let path = write(dir.path(), name, &bytes);
        let error = images::check_static_binary(&path).expect_err(name);
        let message = error
            .to_string()
            .replace(&*dir.path().to_string_lossy(), "DIR");
        report.push_str(&format!("{message}\n"));
    }
    let missing = images::check_static_binary(&dir.path().join("missing")).expect_err("missing");
    assert!(matches!(missing, ImageError::ReadFile { .. }), "{missing}");
    insta::assert_snapshot!(report);
}

#[test]
fn inputs_change_with_any_byte_and_only_then() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "a", b"first file");
    write(dir.path(), "b", b"second file");
    let recipe = |dockerfile: &str, b_name: &str| Recipe::Scratch {
        dockerfile: dockerfile.to_owned(),
        files: vec![
            ContextFile {
                source: dir.path().join("a"),
                name: "a".to_owned(),
            },
            ContextFile {
                source: dir.path().join("b"),
                name: b_name.to_owned(),
            },
        ],
    };
    let dockerfile = "FROM scratch\nCOPY a /a\n";
    let first = images::inputs(&recipe(dockerfile, "b")).expect("inputs");
    assert_eq!(first.hex().len(), 64);
    assert_eq!(first.short(), first.hex()[..12]);
    assert_eq!(
        images::inputs(&recipe(dockerfile, "b")).expect("inputs"),
        first
    );

    assert_ne!(
        images::inputs(&recipe(dockerfile, "c")).expect("inputs"),
        first
    );
    assert_ne!(
        images::inputs(&recipe("FROM scratch\nCOPY b /a\n", "b")).expect("inputs"),
        first
    );
    write(dir.path(), "b", b"second filE");
    let changed = images::inputs(&recipe(dockerfile, "b")).expect("inputs");
    assert_ne!(changed, first);
    write(dir.path(), "b", b"second file");
    assert_eq!(
        images::inputs(&recipe(dockerfile, "b")).expect("inputs"),
        first
    );

    let debian = |packages: &[&str], prune: &[&str]| Recipe::DebianRootfs {
        suite: "bookworm".to_owned(),
        mirror: "http://deb.debian.org/debian".to_owned(),
        packages: packages.iter().map(|p| (*p).to_owned()).collect(),
        changes: vec![r#"ENTRYPOINT ["/usr/bin/redis-server"]"#.to_owned()],
        prune: prune.iter().map(|p| (*p).to_owned()).collect(),
    };
    let redis = images::inputs(&debian(&["redis-server"], &["usr/share/doc"])).expect("inputs");
    assert_eq!(
        images::inputs(&debian(&["redis-server"], &["usr/share/doc"])).expect("inputs"),
        redis
    );
    assert_ne!(
        images::inputs(&debian(&["redis-tools"], &["usr/share/doc"])).expect("inputs"),
        redis
    );
    assert_ne!(
        images::inputs(&debian(&["redis-server"], &[])).expect("inputs"),
        redis
    );
    assert_eq!(
        images::inputs(&Recipe::redis()).expect("inputs"),
        images::inputs(&Recipe::redis()).expect("inputs")
    );
}

#[test]
fn the_redis_recipe_is_debians_server_on_a_pinned_suite() {
    let Recipe::DebianRootfs {
        suite,
        mirror,
        packages,
        changes,
        prune,
    } = Recipe::redis()
    else {
        panic!("the redis image is a debian root filesystem");
    };
    assert_eq!(suite, images::REDIS_SUITE);
    assert_eq!(mirror, images::DEBIAN_MIRROR);
    assert_eq!(packages, ["redis-server"]);
    assert!(
        changes.contains(&format!(r#"ENTRYPOINT ["{}"]"#, images::REDIS_SERVER_PATH)),
        "{changes:?}"
    );
    assert!(
        prune.iter().any(|p| p == "var/cache/apt/archives"),
        "{prune:?}"
    );
}

#[test]
fn pruning_empties_the_named_directories_and_nothing_else() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rootfs = dir.path().join("rootfs");
    write(&rootfs, "usr/share/doc/redis/copyright", b"text");
    write(&rootfs, "usr/share/doc/top", b"text");
    write(&rootfs, "usr/bin/redis-server", b"binary");
    write(dir.path(), "outside/kept", b"outside the root filesystem");
    // A link inside a pruned directory goes, what it points at stays.
    std::os::unix::fs::symlink(
        dir.path().join("outside"),
        rootfs.join("usr/share/doc/link"),
    )
    .expect("linked");
    images::prune(
        &rootfs,
        &["usr/share/doc".to_owned(), "var/cache/absent".to_owned()],
    )
    .expect("pruned");
    let left: Vec<_> = std::fs::read_dir(rootfs.join("usr/share/doc"))
        .expect("the directory stays")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(rootfs.join("usr/bin/redis-server").is_file());
    assert!(dir.path().join("outside/kept").is_file());

    for bad in ["/usr/share/doc", "../outside", "", "usr/../.."] {
        let error = images::prune(&rootfs, &[bad.to_owned()]).expect_err(bad);
        assert!(
            matches!(error, ImageError::InvalidRecipe { .. }),
            "{bad}: {error}"
        );
    }
    std::os::unix::fs::symlink(dir.path().join("outside"), rootfs.join("var-link"))
        .expect("linked");
    let error = images::prune(&rootfs, &["var-link".to_owned()]).expect_err("a link");
    assert!(matches!(error, ImageError::Rootfs { .. }), "{error}");
    assert!(dir.path().join("outside/kept").is_file());
}

#[test]
fn the_dockerfiles_are_from_scratch_and_pinned() {
    for dockerfile in [images::ORCHESTRATOR_DOCKERFILE, images::HARNESS_DOCKERFILE] {
        assert!(
            dockerfile.lines().any(|line| line == "FROM scratch"),
            "{dockerfile}"
        );
        assert!(!dockerfile.contains("latest"), "{dockerfile}");
        assert!(!dockerfile.contains("# syntax="), "{dockerfile}");
    }
}

#[test]
fn the_workspace_is_found_from_within_and_not_from_elsewhere() {
    let harness = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = harness.parent().expect("the harness is in the workspace");
    assert_eq!(images::find_workspace(harness).expect("found"), root);
    assert_eq!(
        images::find_workspace(&harness.join("src")).expect("found"),
        root
    );
    let elsewhere = tempfile::tempdir().expect("a temporary directory");
    let error = images::find_workspace(elsewhere.path()).expect_err("no workspace in /tmp");
    assert!(
        matches!(error, ImageError::WorkspaceNotFound { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn build_refuses_a_dynamic_binary_before_asking_the_engine() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::copy("/bin/true", dir.path().join("orchestrator")).expect("copied");
    write(dir.path(), "gauntlet", &minimal_elf(false, 0));
    // A client that is never used: nothing listens there.
    let docker = Docker::connect_with_http(
        "http://127.0.0.1:9",
        1,
        testcontainers::bollard::API_DEFAULT_VERSION,
    )
    .expect("a lazy client");
    let options = BuildOptions {
        names: ImageNames::defaults().expect("valid"),
        force: false,
        binaries: Binaries::Dir(dir.path().to_owned()),
    };
    let error = images::build(&docker, &options, &mut |line| panic!("reported {line}"))
        .await
        .expect_err("a dynamic binary");
    assert!(
        matches!(&error, ImageError::DynamicBinary { path } if *path == dir.path().join("orchestrator")),
        "{error}"
    );
}

/// The labels of a local image.
async fn labels_of(docker: &Docker, image: &str) -> std::collections::HashMap<String, String> {
    docker
        .inspect_image(image)
        .await
        .expect("the image exists")
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_scratch_recipe_is_built_then_up_to_date_then_rebuilt_when_a_byte_changes() {
    let Some(docker) = engine_or_skip("scratch recipe").await else {
        return;
    };
    let mut guard = ImageGuard::default();
    let image = guard.unique("images", "t1");
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "a", b"first file\n");
    write(dir.path(), "b", b"second file\n");
    let spec = ImageSpec {
        image: image.clone(),
        role: "test".to_owned(),
        recipe: Recipe::Scratch {
            dockerfile: "FROM scratch\nCOPY a /a\nCOPY b /b\nENTRYPOINT [\"/a\"]\n".to_owned(),
            files: ["a", "b"]
                .map(|name| ContextFile {
                    source: dir.path().join(name),
                    name: name.to_owned(),
                })
                .to_vec(),
        },
    };

    let first = images::build_recipe(&docker, &spec, false)
        .await
        .expect("built");
    assert!(matches!(first.outcome, Outcome::Built { .. }), "{first}");
    assert!(first.to_string().starts_with(&format!(
        "built: {image} (inputs {}) in ",
        first.inputs.short()
    )));
    let labels = labels_of(&docker, &image.to_string()).await;
    assert_eq!(labels.get(INPUTS_LABEL), Some(&first.inputs.hex()));
    assert_eq!(labels.get(VERSION_LABEL).map(String::as_str), Some(VERSION));
    assert_eq!(labels.get(ROLE_LABEL).map(String::as_str), Some("test"));
    let first_id = docker
        .inspect_image(&image.to_string())
        .await
        .expect("exists")
        .id;

    let second = images::build_recipe(&docker, &spec, false)
        .await
        .expect("checked");
    assert_eq!(second.outcome, Outcome::UpToDate);
    assert_eq!(second.inputs, first.inputs);
    assert_eq!(
        second.to_string(),
        format!("up to date: {image} (inputs {})", first.inputs.short())
    );

    write(dir.path(), "b", b"second file, changed\n");
    let third = images::build_recipe(&docker, &spec, false)
        .await
        .expect("rebuilt");
    assert!(matches!(third.outcome, Outcome::Built { .. }), "{third}");
    assert_ne!(third.inputs, first.inputs);
    let labels = labels_of(&docker, &image.to_string()).await;
    assert_eq!(labels.get(INPUTS_LABEL), Some(&third.inputs.hex()));
    // The image it replaced is gone, not left dangling.
    let replaced = docker
        .inspect_image(&first_id.expect("an id"))
        .await
        .expect_err("the replaced image is removed");
    assert!(
        matches!(
            replaced,
            testcontainers::bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        ),
        "{replaced}"
    );

    let forced = images::build_recipe(&docker, &spec, true)
        .await
        .expect("forced");
    assert!(matches!(forced.outcome, Outcome::Built { .. }), "{forced}");
    assert_eq!(forced.inputs, third.inputs);
}

#[tokio::test]
async fn build_makes_the_images_from_static_binaries_and_preflight_finds_them() {
    let Some(docker) = engine_or_skip("build and preflight").await else {
        return;
    };
    let mut guard = ImageGuard::default();
    let names = ImageNames {
        orchestrator: guard.unique("images-orchestrator", "t1"),
        harness: guard.unique("images-harness", "t1"),
        redis: guard.unique("images-redis", "t1"),
    };
    let error = images::preflight(&docker, &names)
        .await
        .expect_err("nothing built yet");
    assert_eq!(
        error.to_string(),
        format!(
            "missing local images: {}, {}, {}; run `gauntlet images build` to build them \
             (no registry is used: images are never pulled)",
            names.orchestrator, names.harness, names.redis
        )
    );
    // A stand-in for the Redis image that carries the real recipe's inputs,
    // so that `build` finds it up to date: debootstrap takes minutes and
    // root, and the import is tested on its own below.
    let redis_inputs = images::inputs(&Recipe::redis()).expect("inputs");
    let standin = tempfile::tempdir().expect("a temporary directory");
    write(
        &standin.path().join("rootfs"),
        "etc/os-release",
        b"ID=standin\n",
    );
    images::import_dir(
        &docker,
        &standin.path().join("rootfs"),
        &names.redis,
        &[],
        &Labels {
            role: "redis".to_owned(),
            inputs: redis_inputs,
        },
    )
    .await
    .expect("the stand-in is imported");

    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "orchestrator", &minimal_elf(false, 1));
    write(dir.path(), "gauntlet", &minimal_elf(false, 2));
    let options = BuildOptions {
        names: names.clone(),
        force: false,
        binaries: Binaries::Dir(dir.path().to_owned()),
    };
    let mut lines = Vec::new();
    let built = images::build(&docker, &options, &mut |line| lines.push(line.to_owned()))
        .await
        .expect("built");
    assert_eq!(built.len(), 3);
    assert!(
        lines[0].starts_with(&format!("built: {} (inputs ", names.orchestrator)),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!("built: {} (inputs ", names.harness)),
        "{lines:?}"
    );
    assert_eq!(
        lines[2],
        format!(
            "up to date: {} (inputs {})",
            names.redis,
            redis_inputs.short()
        )
    );
    images::preflight(&docker, &names)
        .await
        .expect("all three exist");
    let labels = labels_of(&docker, &names.orchestrator.to_string()).await;
    assert_eq!(
        labels.get(ROLE_LABEL).map(String::as_str),
        Some("orchestrator")
    );
    let labels = labels_of(&docker, &names.harness.to_string()).await;
    assert_eq!(labels.get(ROLE_LABEL).map(String::as_str), Some("harness"));

    lines.clear();
    images::build(&docker, &options, &mut |line| lines.push(line.to_owned()))
        .await
        .expect("checked");
    assert_eq!(
        lines,
        [
            format!(
                "up to date: {} (inputs {})",
                names.orchestrator,
                built[0].inputs.short()
            ),
            format!(
                "up to date: {} (inputs {})",
                names.harness,
                built[1].inputs.short()
            ),
            format!(
                "up to date: {} (inputs {})",
                names.redis,
                redis_inputs.short()
            ),
        ]
    );
}

#[tokio::test]
async fn a_root_filesystem_directory_is_imported_with_its_labels_and_changes() {
    let Some(docker) = engine_or_skip("rootfs import").await else {
        return;
    };
    let mut guard = ImageGuard::default();
    let image = guard.unique("images-rootfs", "t1");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rootfs = dir.path().join("rootfs");
    write(&rootfs, "bin/hello", b"#!/bin/sh\necho hello\n");
    write(&rootfs, "etc/os-release", b"ID=handmade\n");
    std::fs::create_dir_all(rootfs.join("usr/bin")).expect("made");
    // An absolute link, as a real root filesystem has: stored, not followed.
    std::os::unix::fs::symlink("/bin/hello", rootfs.join("usr/bin/hello")).expect("linked");
    std::fs::create_dir_all(rootfs.join("tmp")).expect("made");

    let recipe = Recipe::DebianRootfs {
        suite: "bookworm".to_owned(),
        mirror: "http://deb.debian.org/debian".to_owned(),
        packages: vec!["hello".to_owned()],
        changes: vec![r#"ENTRYPOINT ["/bin/hello"]"#.to_owned()],
        prune: Vec::new(),
    };
    let Recipe::DebianRootfs { changes, .. } = &recipe else {
        unreachable!("made above")
    };
    let labels = Labels {
        role: "rootfs-test".to_owned(),
        inputs: images::inputs(&recipe).expect("inputs"),
    };
    images::import_dir(&docker, &rootfs, &image, changes, &labels)
        .await
        .expect("imported");

    let inspected = docker
        .inspect_image(&image.to_string())
        .await
        .expect("the image exists");
    let config = inspected.config.expect("a config");
    assert_eq!(config.entrypoint, Some(vec!["/bin/hello".to_owned()]));
    let found = config.labels.unwrap_or_default();
    assert_eq!(found.get(INPUTS_LABEL), Some(&labels.inputs.hex()));
    assert_eq!(found.get(VERSION_LABEL).map(String::as_str), Some(VERSION));
    assert_eq!(
        found.get(ROLE_LABEL).map(String::as_str),
        Some("rootfs-test")
    );

    let missing = images::import_dir(
        &docker,
        &dir.path().join("absent"),
        &image,
        changes,
        &labels,
    )
    .await
    .expect_err("no such directory");
    assert!(matches!(missing, ImageError::Rootfs { .. }), "{missing}");
}

#[tokio::test]
async fn the_redis_image_is_debians_server_pruned_and_labelled() {
    let names = ImageNames::resolve(None, None).expect("the default names are valid");
    let Some(docker) = support::docker::images_or_skip("redis image", &names).await else {
        return;
    };
    let inspected = docker
        .inspect_image(&names.redis.to_string())
        .await
        .expect("the image exists");
    let config = inspected.config.expect("a config");
    assert_eq!(
        config.entrypoint,
        Some(vec![images::REDIS_SERVER_PATH.to_owned()])
    );
    let labels = config.labels.unwrap_or_default();
    assert_eq!(labels.get(ROLE_LABEL).map(String::as_str), Some("redis"));
    assert_eq!(
        labels.get(INPUTS_LABEL),
        Some(&images::inputs(&Recipe::redis()).expect("inputs").hex()),
        "the image is out of date: run `gauntlet images build`"
    );
    // Minbase with redis-server is about 220 MiB before pruning.
    let size = inspected.size.unwrap_or(i64::MAX);
    assert!(size < 160 << 20, "the redis image is {size} bytes");
}

#[tokio::test]
async fn a_failed_build_says_why_with_the_last_lines_of_its_output() {
    let Some(docker) = engine_or_skip("failed build").await else {
        return;
    };
    let mut guard = ImageGuard::default();
    let image = guard.unique("images-broken", "t1");
    let spec = ImageSpec {
        image: image.clone(),
        role: "test".to_owned(),
        recipe: Recipe::Scratch {
            dockerfile: "FROM scratch\nCOPY missing /missing\n".to_owned(),
            files: Vec::new(),
        },
    };
    let error = images::build_recipe(&docker, &spec, false)
        .await
        .expect_err("nothing to copy");
    let message = error.to_string();
    assert!(matches!(error, ImageError::BuildFailed { .. }), "{message}");
    assert!(
        message.starts_with(&format!("building image {image} failed: ")),
        "{message}"
    );
    assert!(message.contains("COPY missing /missing"), "{message}");
}

#[test]
fn the_command_refuses_bad_names_and_an_unreachable_engine_with_exit_2() {
    let gauntlet = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_gauntlet"))
            .args(["images", "build"])
            .args(args)
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .env_remove("GAUNTLET_ORCHESTRATOR_IMAGE")
            .env_remove("GAUNTLET_HARNESS_IMAGE")
            .env_remove("GAUNTLET_REDIS_IMAGE")
            .output()
            .expect("gauntlet runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.stdout.is_empty(), "{output:?}");
        (output.status.code(), stderr)
    };
    let (code, stderr) = gauntlet(&["--harness-image", "gauntlet/harness:latest"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "error: invalid image name \"gauntlet/harness:latest\" in --harness-image: \
         `latest` is not a pinned tag: name a version\n"
    );
    let (code, stderr) = gauntlet(&["--binaries", "/nonexistent"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with(
            "error: cannot reach the docker engine at unix:///nonexistent/docker.sock (DOCKER_HOST): "
        ),
        "{stderr}"
    );
}

//! Docker in tests: the engine, or a printed reason to skip (never under
//! `CI=true`, where a missing engine or image fails the test: CI has both,
//! and a skip there would hide a broken setup), and a guard that removes the
//! images a test made, on failure too.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use gauntlet::images::{self, ImageNames, ImageRef};
use testcontainers::bollard::{Docker, query_parameters::RemoveImageOptionsBuilder};

/// Whether this is a CI run (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The engine, or `None` after printing why `test` is skipped.
///
/// # Panics
/// Under `CI=true` when the engine cannot be reached.
pub async fn engine_or_skip(test: &str) -> Option<Docker> {
    match images::engine().await {
        Ok(docker) => Some(docker),
        Err(e) if !in_ci() => {
            eprintln!("skipped: {test}: no Docker engine: {e}");
            None
        }
        Err(e) => panic!("{test}: CI=true, so the Docker engine must be reachable: {e}"),
    }
}

/// The engine with `images` present, or `None` after printing why `test` is
/// skipped.
///
/// # Panics
/// Under `CI=true` when the engine cannot be reached or an image is missing.
pub async fn images_or_skip(test: &str, images: &ImageNames) -> Option<Docker> {
    let docker = engine_or_skip(test).await?;
    match images::preflight(&docker, images).await {
        Ok(()) => Some(docker),
        Err(e) if !in_ci() => {
            eprintln!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: CI=true, so the images must have been built: {e}"),
    }
}

/// Why the Docker backend cannot run here (no engine, or `images` not
/// built), or `None` when it can. Prints nothing: the caller decides how
/// to report it.
pub async fn docker_unavailable(images: &ImageNames) -> Option<String> {
    let docker = match images::engine().await {
        Ok(docker) => docker,
        Err(e) => return Some(format!("no Docker engine: {e}")),
    };
    images::preflight(&docker, images)
        .await
        .err()
        .map(|e| e.to_string())
}

/// Images a test made, removed (with what only they use) when the guard is
/// dropped, whether the test passed or panicked.
#[derive(Default)]
pub struct ImageGuard {
    images: Vec<String>,
}

impl ImageGuard {
    /// A name no other test or process uses, `gauntlet-test/<prefix>-<pid>-<n>:<tag>`,
    /// removed when the guard is dropped.
    pub fn unique(&mut self, prefix: &str, tag: &str) -> ImageRef {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let value = format!("gauntlet-test/{prefix}-{}-{n}:{tag}", std::process::id());
        let image = ImageRef::parse(&value).expect("test image names are valid");
        self.images.push(value);
        image
    }
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let images = std::mem::take(&mut self.images);
        if images.is_empty() {
            return;
        }
        // Drop cannot await, and runs inside the test's runtime, where no
        // other can start: removal gets a thread and a runtime of its own.
        let removal = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                eprintln!("cannot start a runtime to remove test images {images:?}");
                return;
            };
            runtime.block_on(remove_all(&images));
        });
        // Not `expect`: a second panic while a failed test unwinds aborts.
        let _ = removal.join();
    }
}

async fn remove_all(images: &[String]) {
    let docker = match images::engine().await {
        Ok(docker) => docker,
        Err(e) => {
            eprintln!("cannot remove test images {images:?}: {e}");
            return;
        }
    };
    for image in images {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        match docker.remove_image(image, Some(options), None).await {
            Ok(_) => {}
            // Never made, or the test removed it already.
            Err(testcontainers::bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }) => {}
            Err(e) => eprintln!("cannot remove test image {image}: {e}"),
        }
    }
}

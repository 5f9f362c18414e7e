//! Whether the Docker-backend tests can run here. Without an engine (or
//! without the images of `gauntlet images build`) they are skipped with the
//! reason printed, except under `CI=true`, where a missing engine or image is
//! a failure: CI has both, and a skip there would hide a broken setup.

#![allow(dead_code)]

use gauntlet::images::ImageNames;
use testcontainers::bollard::Docker;

/// Whether this is a CI run (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The engine, or `None` after printing why `test` is skipped.
///
/// # Panics
/// Under `CI=true` when the engine cannot be reached.
pub async fn engine_or_skip(test: &str) -> Option<Docker> {
    match gauntlet::images::engine().await {
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
    match gauntlet::images::preflight(&docker, images).await {
        Ok(()) => Some(docker),
        Err(e) if !in_ci() => {
            eprintln!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: CI=true, so the images must have been built: {e}"),
    }
}

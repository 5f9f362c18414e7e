//! Support shared by the harness's test binaries (`mod support;`).

// Each test binary uses part of this module.
#![allow(dead_code)]

pub mod docker;

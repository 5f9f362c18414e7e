//! The orchestrator: the hardened LLM agent orchestration service that
//! Gauntlet battle-tests. This crate holds the service and its command line;
//! see ARCHITECTURE.md for the map.

pub mod breaker;
pub mod cli;
pub mod config;
pub mod plan;
pub mod store;
pub mod yaml;

//! The orchestrator: the hardened LLM agent orchestration service that
//! Gauntlet battle-tests. This crate holds the service and its command line;
//! see ARCHITECTURE.md for the map.

pub mod audit;
pub mod auth;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod degradation;
pub mod exit;
pub mod llm;
pub mod lockout;
pub mod metrics;
pub mod outbound;
pub mod pii;
pub mod plan;
pub mod problem;
pub mod roles;
pub mod server;
pub mod store;
pub mod yaml;

pub use server::{AppOptions, AppState, ServeOptions, app, serve};

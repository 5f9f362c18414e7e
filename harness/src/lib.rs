//! Gauntlet, the chaos and property-testing harness (see ARCHITECTURE.md).
//!
//! Its hands, usable on their own: [`proxy`], a fault proxy that speaks
//! Toxiproxy's HTTP API, and [`mock_llm`], a programmable OpenAI-compatible
//! provider. Both draw all randomness from [`seed`], so a run replays.
//! [`load`] is the open-loop load generator scenarios drive the system with.
//! [`images`] builds the container images locally, with no registry.

pub mod checks;
pub mod cli;
pub mod docker;
pub mod engine;
pub mod evidence;
pub mod explore;
pub mod images;
pub mod load;
pub mod local;
pub mod mock_llm;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod seed;
pub mod sink;

//! Gauntlet, the chaos and property-testing harness (see ARCHITECTURE.md).
//!
//! Its hands, usable on their own: [`proxy`], a fault proxy that speaks
//! Toxiproxy's HTTP API, and [`mock_llm`], a programmable OpenAI-compatible
//! provider. Both draw all randomness from [`seed`], so a run replays.

pub mod local;
pub mod mock_llm;
pub mod proxy;
pub mod scenario;
pub mod seed;

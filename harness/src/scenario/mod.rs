//! Scenarios: the YAML battle tests `gauntlet run` executes, parsed with the
//! orchestrator's YAML front end (same limits, same located diagnostics) and
//! validated into [`Scenario`].

pub mod model;

pub use model::*;

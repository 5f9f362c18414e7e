//! Gauntlet, the chaos and property-testing harness. It will bring the
//! orchestrator up, inject faults, drive load and check SLOs and invariants
//! (see ARCHITECTURE.md and the open issues for what lands when).

//! `gauntlet`: the harness's command line.

use clap::Parser;

/// Chaos and property-testing harness for a hardened LLM agent orchestration
/// system. Commands arrive with the fault proxy, the mock LLM provider and the
/// scenario runner; until then, see `orchestrator config validate`.
#[derive(Parser)]
#[command(name = "gauntlet", version)]
struct Cli {}

fn main() {
    Cli::parse();
}

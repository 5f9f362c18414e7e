//! The offline commands over scenario files, `gauntlet validate` and
//! `gauntlet list`: they write to any `Write` and return the exit code, so
//! that tests snapshot their output without a process.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use orchestrator::config::format_duration;
use orchestrator::exit::Exit;

use crate::scenario::{self, FaultClass, Scenario};

/// The directory `gauntlet list` reads when given no path.
pub const DEFAULT_SCENARIO_DIR: &str = "scenarios";

/// `gauntlet validate PATH...`: every finding of every scenario file (a
/// directory stands for its `*.yaml` files) and `ok: FILE (NAME)` for each
/// valid one, on `out`. Returns [`Exit::Pass`] when all are valid (warnings
/// allowed), else [`Exit::BadInput`]; a path that cannot be listed is
/// reported on `err`.
pub fn validate(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<Exit> {
    let files = match scenario::discover(paths) {
        Ok(files) => files,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(Exit::BadInput);
        }
    };
    if files.is_empty() {
        writeln!(err, "error: no scenario files (*.yaml) found")?;
        return Ok(Exit::BadInput);
    }
    let mut all_valid = true;
    for file in &files {
        let name = file.display().to_string();
        let (scenario, diagnostics) = load(file);
        for d in &diagnostics {
            writeln!(out, "{}", d.display_with_file(&name))?;
        }
        match scenario {
            Some(scenario) => writeln!(out, "ok: {name} ({})", scenario.name)?,
            None => all_valid = false,
        }
    }
    Ok(if all_valid {
        Exit::Pass
    } else {
        Exit::BadInput
    })
}

/// `gauntlet list [PATH...]`: one line per scenario on `out`, its name, its
/// load's duration and its fault kinds by class, in columns. Invalid files
/// have their findings written to `err` and make the exit code
/// [`Exit::BadInput`]; the valid ones are still listed.
pub fn list(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<Exit> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(DEFAULT_SCENARIO_DIR)]
    } else {
        paths.to_vec()
    };
    let files = match scenario::discover(&paths) {
        Ok(files) => files,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(Exit::BadInput);
        }
    };
    let mut rows = Vec::new();
    let mut all_valid = true;
    for file in &files {
        let (scenario, diagnostics) = load(file);
        match scenario {
            Some(scenario) => rows.push(row(&scenario)),
            None => {
                all_valid = false;
                let name = file.display().to_string();
                for d in &diagnostics {
                    writeln!(err, "{}", d.display_with_file(&name))?;
                }
            }
        }
    }
    let name_width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let duration_width = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    for [name, duration, faults] in &rows {
        let line = format!("{name:<name_width$}  {duration:<duration_width$}  {faults}");
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(if all_valid {
        Exit::Pass
    } else {
        Exit::BadInput
    })
}

/// Parses a file, keeping warnings; an unreadable file is one `io` error.
fn load(file: &std::path::Path) -> (Option<Scenario>, Vec<orchestrator::yaml::Diagnostic>) {
    let outcome = scenario::parse_file(file);
    (outcome.scenario, outcome.diagnostics)
}

/// A scenario's columns: name, duration, fault kinds by class.
fn row(scenario: &Scenario) -> [String; 3] {
    let mut classes: BTreeMap<FaultClass, Vec<&'static str>> = BTreeMap::new();
    for fault in &scenario.faults {
        let kinds = classes.entry(fault.action.class()).or_default();
        let kind = fault.action.kind();
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let faults = if classes.is_empty() {
        "no faults".to_owned()
    } else {
        classes
            .iter()
            .map(|(class, kinds)| format!("{}: {}", class.as_str(), kinds.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    [
        scenario.name.clone(),
        format_duration(scenario.load.duration()),
        faults,
    ]
}

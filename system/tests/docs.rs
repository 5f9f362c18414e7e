//! The README says what the code does: its tables are the code's own.

use std::path::PathBuf;

#[test]
fn the_readme_role_table_is_the_built_in_table() {
    let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md is readable");
    let table = orchestrator::roles::markdown_table();
    assert!(
        text.contains(&table),
        "README.md's role table differs from orchestrator::roles::BUILTIN; it should read:\n{table}"
    );
}

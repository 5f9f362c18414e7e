//! The audit chain against tampering: every byte of every stored entry,
//! flipped one at a time, makes verification name that entry; and the
//! offline `orchestrator audit verify` after an edit with the sqlite3 CLI.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use orchestrator::audit::NewEntry;
use orchestrator::config::BudgetConfig;
use orchestrator::store::{Store, StoreOptions, verify_audit_connection};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;
use serde_json::json;
use support::temp_dir;

const COLUMNS: [&str; 8] = [
    "seq",
    "ts_ms",
    "actor",
    "action",
    "subject",
    "details",
    "prev_hash",
    "hash",
];

/// A database whose audit log holds `n` entries of varied shapes.
fn database(name: &str, n: u64) -> PathBuf {
    let path = temp_dir(name).join("orchestrator.db");
    let store = Store::open(
        &path,
        &StoreOptions::new(BudgetConfig {
            default_limit_tokens: 1000,
            tenants: Default::default(),
        }),
    )
    .unwrap();
    for i in 1..=n {
        store
            .record_audit(NewEntry::new(
                format!("key-{}", i % 3),
                "test.event",
                format!("subject-{i}"),
                json!({"i": i, "nested": {"z": [1, 2, i], "a": "tenant ünïcode"}}),
            ))
            .unwrap();
    }
    drop(store);
    path
}

/// `value` with one byte (or, for integers, one byte of its big-endian
/// form) changed by `mask`.
fn flipped(value: &SqlValue, position: usize, mask: u8) -> SqlValue {
    match value {
        SqlValue::Integer(i) => {
            let mut bytes = i.to_be_bytes();
            bytes[position] ^= mask;
            SqlValue::Integer(i64::from_be_bytes(bytes))
        }
        SqlValue::Text(t) => {
            let mut bytes = t.clone().into_bytes();
            bytes[position] ^= mask;
            // Text stays text, even when the flip breaks its UTF-8.
            SqlValue::Blob(bytes)
        }
        SqlValue::Blob(b) => {
            let mut bytes = b.clone();
            bytes[position] ^= mask;
            SqlValue::Blob(bytes)
        }
        other => panic!("unexpected stored value {other:?}"),
    }
}

fn byte_len(value: &SqlValue) -> usize {
    match value {
        SqlValue::Integer(_) => 8,
        SqlValue::Text(t) => t.len(),
        SqlValue::Blob(b) => b.len(),
        _ => 0,
    }
}

#[test]
fn flipping_any_byte_of_any_entry_makes_verify_name_that_entry() {
    let path = database("flip", 6);
    let mut conn = Connection::open(&path).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0xa0d1);
    let intact = verify_audit_connection(&conn).unwrap();
    assert!(intact.ok, "{intact:?}");
    // config.loaded is not written by a bare store, so the log is exactly ours.
    assert_eq!(intact.entries, 6);

    let mut cases = 0;
    let mut failures = Vec::new();
    for seq in 1..=6i64 {
        for column in COLUMNS {
            let value: SqlValue = conn
                .query_row(
                    &format!("SELECT {column} FROM audit WHERE seq = ?1"),
                    [seq],
                    |r| r.get(0),
                )
                .unwrap();
            for position in 0..byte_len(&value) {
                let mask = rng.random_range(1..=255u8);
                let changed = flipped(&value, position, mask);
                let tx = conn.transaction().unwrap();
                let sql = match (&value, column) {
                    (SqlValue::Text(_), _) => {
                        format!("UPDATE audit SET {column} = CAST(?1 AS TEXT) WHERE seq = ?2")
                    }
                    _ => format!("UPDATE audit SET {column} = ?1 WHERE seq = ?2"),
                };
                if tx.execute(&sql, rusqlite::params![changed, seq]).is_err() {
                    // A renumbering onto an existing seq: the primary key
                    // refuses it, so that edit cannot happen.
                    assert_eq!(column, "seq");
                    continue;
                }
                cases += 1;
                let v = verify_audit_connection(&tx).unwrap();
                if v.ok || v.first_bad_seq != Some(seq as u64) {
                    failures.push(format!(
                        "seq {seq} {column} byte {position} ^ {mask:#04x}: {v:?}"
                    ));
                }
                tx.rollback().unwrap();
            }
        }
    }
    assert!(cases > 900, "only {cases} cases ran");
    assert!(
        failures.is_empty(),
        "{} of {cases} edits not named:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn deleting_or_reordering_entries_is_named_too() {
    let path = database("delete", 5);
    let mut conn = Connection::open(&path).unwrap();
    let check = |conn: &mut Connection, sql: &str, expected: u64| {
        let tx = conn.transaction().unwrap();
        tx.execute_batch(sql).unwrap();
        let v = verify_audit_connection(&tx).unwrap();
        assert_eq!(v.first_bad_seq, Some(expected), "{sql}: {v:?}");
        tx.rollback().unwrap();
    };
    check(&mut conn, "DELETE FROM audit WHERE seq = 3", 3);
    check(&mut conn, "DELETE FROM audit WHERE seq = 5", 5);
    check(&mut conn, "DELETE FROM audit WHERE seq >= 4", 4);
    check(
        &mut conn,
        "UPDATE audit SET seq = 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;
         UPDATE audit SET seq = 3 WHERE seq = 100;",
        2,
    );
}

/// Runs `orchestrator audit verify --db PATH` and returns (exit code,
/// stdout, stderr) with the path and hashes redacted for snapshots.
fn verify_cli(path: &Path, extra: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["audit", "verify", "--db"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap();
    let redact = |text: &[u8]| {
        let text = String::from_utf8_lossy(text).replace(&path.display().to_string(), "DB");
        regex::Regex::new("[0-9a-f]{64}")
            .unwrap()
            .replace_all(&text, "HASH")
            .into_owned()
    };
    (
        output.status.code().unwrap(),
        redact(&output.stdout),
        redact(&output.stderr),
    )
}

/// The sqlite3 CLI, which the acceptance check edits the database with.
/// Under CI it must be there (`.ci/run` installs it); elsewhere the test says
/// why it cannot run and stops.
fn sqlite3() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("sqlite3"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the sqlite3 CLI is missing under CI: .ci/run must install it"
        );
        eprintln!("skipped: the sqlite3 CLI is not installed (apt-get install sqlite3)");
    }
    found
}

#[test]
fn the_offline_verifier_exits_0_when_intact_and_1_naming_the_entry_edited_with_sqlite3() {
    let Some(sqlite3) = sqlite3() else { return };
    let path = database("cli", 4);
    let intact = verify_cli(&path, &[]);
    insta::assert_snapshot!("audit_verify_intact", format!("{intact:?}"));

    let edited = Command::new(sqlite3)
        .arg(&path)
        .arg(r#"UPDATE audit SET details = '{"i":3,"tampered":true}' WHERE seq = 3;"#)
        .status()
        .unwrap();
    assert!(edited.success());
    let tampered = verify_cli(&path, &[]);
    insta::assert_snapshot!("audit_verify_tampered", format!("{tampered:?}"));
    let json = verify_cli(&path, &["--format", "json"]);
    assert_eq!(json.0, 1);
    let v: serde_json::Value = serde_json::from_str(&json.1).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["first_bad_seq"].clone()),
        (json!(false), json!(3))
    );
}

#[test]
fn the_offline_verifier_exits_2_for_a_missing_or_foreign_file() {
    let dir = temp_dir("cli-bad");
    let missing = verify_cli(&dir.join("nothing.db"), &[]);
    assert_eq!(missing.0, 2, "{missing:?}");
    assert!(
        missing.2.starts_with("error: cannot open database"),
        "{missing:?}"
    );
    let foreign = dir.join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .unwrap();
    let foreign = verify_cli(&foreign, &[]);
    assert_eq!(foreign.0, 2, "{foreign:?}");
    insta::assert_snapshot!("audit_verify_foreign", foreign.2);
}

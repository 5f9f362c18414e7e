//! The harness's own evidence readers against real SQLite files made for
//! the purpose: the orchestrator's store writes them (as the service would),
//! a test leaves them in the state a bug would, and the harness reads them
//! with its own SQL and verifies them with its own hash. The checks then
//! judge what was read.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gauntlet::checks::{self, CheckResult, Verdict};
use gauntlet::evidence::db::{self, DbError, JobState, ReservationState};
use gauntlet::evidence::{AuditAnswer, Evidence, LogEvidence, Settle, ShutdownEvidence, audit};
use gauntlet::load::{Op, OpKind, Outcome};
use gauntlet::scenario::{Contract, Invariant};
use orchestrator::config::BudgetConfig;
use orchestrator::store::{
    BeginTask, IdempotencyClaim, NewJob, Store, StoreOptions, Submit, now_ms,
};
use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

fn options() -> StoreOptions {
    StoreOptions::new(BudgetConfig {
        default_limit_tokens: 100_000,
        tenants: BTreeMap::new(),
    })
}

fn temp_db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("orchestrator.db")
}

/// What a process killed mid-run leaves: one job acknowledged and then
/// leased (`running`), and one task's reservation `held` with its key in
/// flight. The store is dropped without settling anything.
fn leave_unsettled(path: &Path) -> (String, i64) {
    let store = Store::open(path, &options()).expect("open");
    let id = "job-7".to_owned();
    let submitted = store
        .submit_job(
            &NewJob {
                id: id.clone(),
                tenant: "acme".to_owned(),
                actor: "key-acme".to_owned(),
                idempotency: None,
                prompt: "plan a trip".to_owned(),
                max_tokens: 64,
                webhook: None,
                max_attempts: 3,
                queue_capacity: 10,
            },
            now_ms(),
        )
        .expect("submit");
    assert_eq!(submitted, Submit::Accepted { id: id.clone() });
    let leased = store
        .lease_job("worker-1", now_ms(), 30_000)
        .expect("lease")
        .expect("a job to lease");
    assert_eq!(leased.id, id);
    let begin = |task: &str, key: &str| BeginTask {
        tenant: "acme".to_owned(),
        task_id: task.to_owned(),
        idempotency: Some(IdempotencyClaim {
            key: key.to_owned(),
            fingerprint: Sha256::digest(key.as_bytes()).into(),
        }),
        reserve_tokens: 200,
    };
    let held = match store
        .begin_task(&begin("task-held", "k-held"))
        .expect("begin")
    {
        orchestrator::store::Begin::Started { reservation } => reservation.0,
        other => panic!("expected a reservation, got {other:?}"),
    };
    (id, held)
}

/// The history of a client that saw `job` acknowledged.
fn acknowledged(job: &str) -> Vec<Op> {
    vec![Op {
        end_ms: 120.0,
        outcome: Outcome::Status(202),
        request_id: Some("req-0".to_owned()),
        resource_id: Some(job.to_owned()),
        ..Op::planned(0, OpKind::Job, "acme", 100.0)
    }]
}

/// Evidence around a database read by the harness, after a clean stop.
fn evidence(history: Vec<Op>, database: Result<db::Database, String>) -> Evidence {
    let audit_service = Ok(AuditAnswer {
        ok: true,
        entries: 0,
        first_bad_seq: None,
        reason: None,
        head_hash: None,
    });
    Evidence {
        history,
        load_end_ms: 1000.0,
        epoch_unix_ms: 0.0,
        faults: Vec::new(),
        health: Vec::new(),
        budgets: Vec::new(),
        settle: Settle::Settled,
        database,
        journal: Vec::new(),
        journal_dropped: 0,
        audit_service,
        rate_limits: BTreeMap::new(),
        tenant_roles: BTreeMap::new(),
        contract: Contract::default(),
        bodies_dropped: 0,
        injected: Vec::new(),
        dlq_listing: Ok(BTreeMap::new()),
        log: Ok(LogEvidence {
            lines: 1,
            ..LogEvidence::default()
        }),
        shutdown: Ok(ShutdownEvidence {
            graceful: true,
            exit: "exit code 0".to_owned(),
        }),
        webhooks: None,
    }
}

fn judge(invariant: Invariant, evidence: &Evidence) -> CheckResult {
    checks::check_invariant(&invariant, evidence)
}

#[track_caller]
fn fails_naming(result: &CheckResult, names: &[&str]) {
    assert_eq!(result.verdict, Verdict::Fail, "{result:#?}");
    for name in names {
        assert!(
            result.evidence.iter().any(|l| l.contains(name)),
            "{} does not name {name:?}: {:#?}",
            result.name,
            result.evidence
        );
    }
}

#[test]
fn a_running_job_and_a_held_reservation_fail_no_lost_jobs_and_budget_conserved() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_db(&dir);
    let (job, held) = leave_unsettled(&path);

    let database = db::read(&path).expect("the harness reads the file");
    // Raw state: nothing was recovered before it was read.
    assert_eq!(database.job(&job).map(|j| j.state), Some(JobState::Running));
    let row = database
        .reservations
        .iter()
        .find(|r| r.id == held)
        .expect("the held reservation");
    assert_eq!(row.state, ReservationState::Held);

    let e = evidence(acknowledged(&job), Ok(database));
    fails_naming(
        &judge(
            Invariant::NoLostJobs {
                settle: std::time::Duration::ZERO,
            },
            &e,
        ),
        &["job job-7 of tenant acme is still running after 1 of 3 attempts"],
    );
    fails_naming(
        &judge(Invariant::BudgetConserved, &e),
        &[
            &format!(
                "reservation {held} of tenant acme (task task-held, key k-held) still holds 200 tokens after a clean shutdown"
            ),
            &format!(
                "key k-held of tenant acme is still in flight after a clean shutdown (reservation {held})"
            ),
        ],
    );

    // Reading changed nothing: the orchestrator's own recovery, run now,
    // still finds what the harness judged.
    let recovered = Store::open(&path, &options()).expect("reopen");
    let recovery = recovered.recovery();
    assert_eq!(
        (recovery.released_reservations, recovery.requeued_jobs),
        (1, 1),
        "{recovery:?}"
    );
}

/// Rewrites every audit entry's hash with a format that leaves `subject`
/// out, and chains them properly: a chain that verifies against itself, the
/// way a bug in the orchestrator's hash and its own verifier together would.
fn rehash_without_subject(path: &Path) {
    let conn = Connection::open(path).unwrap();
    let rows: Vec<(i64, i64, String, String, String)> = conn
        .prepare("SELECT seq, ts_ms, actor, action, details FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(rows.len() >= 2, "the store wrote {} entries", rows.len());
    let mut prev = vec![0u8; 32];
    for (seq, ts_ms, actor, action, details) in rows {
        let mut h = Sha256::new();
        h.update(b"orchestrator-audit-v1");
        h.update(seq.to_be_bytes());
        h.update(ts_ms.to_be_bytes());
        for field in [&actor, &action, &details] {
            h.update((field.len() as u32).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update(&prev);
        let hash: [u8; 32] = h.finalize().into();
        conn.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev, &hash[..], seq],
        )
        .unwrap();
        prev = hash.to_vec();
    }
    conn.execute(
        "UPDATE audit_head SET last_hash = ?1 WHERE id = 1",
        params![prev],
    )
    .unwrap();
}

#[test]
fn a_chain_hashed_with_a_field_left_out_fails_the_harness_s_own_audit_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_db(&dir);
    leave_unsettled(&path);
    rehash_without_subject(&path);

    let database = db::read(&path).expect("read");
    // The entries chain to each other, and the head names the last one.
    for pair in database.audit.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "entry {}", pair[1].seq);
    }
    let head = database.audit_head.clone().expect("a head");
    assert_eq!(
        Some(&head.last_hash),
        database.audit.last().map(|r| &r.hash)
    );

    let report = audit::verify(&database.audit, Some(&head));
    let bad = report.first_bad.expect("the documented hash catches it");
    assert_eq!(bad.seq, 1);
    assert!(bad.reason.contains("hash does not match"), "{bad:?}");

    // The check fails, naming the entry, even with a service that says the
    // chain is fine (its verifier shares its hash's bug).
    let mut e = evidence(Vec::new(), Ok(database.clone()));
    e.audit_service = Ok(AuditAnswer {
        ok: true,
        entries: database.audit.len() as u64,
        first_bad_seq: None,
        reason: None,
        head_hash: Some(hex::encode(&head.last_hash)),
    });
    fails_naming(
        &judge(Invariant::AuditChainIntact, &e),
        &[
            "entry 1 does not verify by the documented hash",
            "but entry 1 among them does not verify",
        ],
    );
}

#[test]
fn an_intact_chain_written_by_the_store_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_db(&dir);
    leave_unsettled(&path);
    let database = db::read(&path).expect("read");
    let report = audit::verify(&database.audit, database.audit_head.as_ref());
    assert!(report.ok(), "{report:?}");
    assert!(report.entries >= 2, "{report:?}");
}

#[test]
fn a_schema_version_the_harness_does_not_know_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_db(&dir);
    leave_unsettled(&path);
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let error = db::read(&path).expect_err("version 99 is unknown");
    assert!(error.is_unknown_schema(), "{error}");
    assert!(matches!(error, DbError::UnknownSchema { version: 99, .. }));
    insta::assert_snapshot!(
        error.to_string().replace(&path.display().to_string(), "DB"),
        @"DB: schema version 99 is not one this harness knows (version 2, version 3, version 4); update the harness with the orchestrator"
    );
}

#[test]
fn a_missing_file_and_a_state_the_schema_does_not_name_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_db(&dir);
    assert!(matches!(db::read(&path), Err(DbError::Missing { .. })));
    leave_unsettled(&path);
    // A state outside the schema's CHECK: written by something that is not
    // the orchestrator, which must not read as any known state.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA ignore_check_constraints = ON")
        .unwrap();
    conn.execute("UPDATE jobs SET state = 'limbo'", []).unwrap();
    drop(conn);
    let error = db::read(&path).expect_err("limbo is no state");
    insta::assert_snapshot!(
        error.to_string().replace(&path.display().to_string(), "DB"),
        @"DB: jobs row job-7: state is `limbo`, which the schema does not allow"
    );
}

#[test]
fn a_copy_taken_while_the_service_runs_holds_what_the_wal_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_db(&dir);
    let (job, _) = leave_unsettled(&path);
    // Open again and keep it open: its commits sit in the WAL.
    let store = Store::open(&path, &options()).expect("reopen");
    let copy = tempfile::tempdir().unwrap();
    for name in [
        "orchestrator.db",
        "orchestrator.db-wal",
        "orchestrator.db-shm",
    ] {
        let from = dir.path().join(name);
        if from.is_file() {
            std::fs::copy(&from, copy.path().join(name)).unwrap();
        }
    }
    // The reopen's recovery requeued the job, in the WAL only.
    let database = db::read(&copy.path().join("orchestrator.db")).expect("read the copy");
    assert_eq!(database.job(&job).map(|j| j.state), Some(JobState::Queued));
    drop(store);
}

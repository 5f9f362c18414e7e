//! The SLO and invariant checks, judged on hand-made evidence: for each, a
//! case that holds and cases that fail, each failure naming its evidence (the
//! op, the request id, the job, the task, the key, the entry...).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gauntlet::checks::{
    self, AuditAnswer, BudgetSample, CheckResult, Evidence, FaultSpan, HealthSample, JobFinal,
    MAX_EVIDENCE_LINES,
};
use gauntlet::load::{Op, OpKind, Outcome};
use gauntlet::mock_llm::{CallRecord, Usage};
use gauntlet::scenario::{
    Invariant, LoadSpec, Mix, Objective, Scenario, Slo, Stage, StoreKind, SystemSpec, Tenant,
    Window,
};
use orchestrator::store::{ChargeRecord, ReservationId};

// ---------------------------------------------------------------- builders

/// One operation: sent at its intended time, answered `latency_ms` later,
/// with request id `req-INDEX`.
fn op(
    index: u64,
    kind: OpKind,
    tenant: &str,
    intended_ms: f64,
    latency_ms: f64,
    outcome: Outcome,
) -> Op {
    Op {
        index,
        kind,
        tenant: tenant.to_owned(),
        idempotency_key: None,
        reused_key: false,
        intended_ms,
        start_ms: intended_ms,
        end_ms: intended_ms + latency_ms,
        outcome,
        request_id: Some(format!("req-{index}")),
        retry_after: None,
        replayed: false,
        resource_id: None,
        body_sha256: None,
        job_id_read: None,
    }
}

/// A task of tenant `a` answered with `status` after 50 ms.
fn task(index: u64, intended_ms: f64, outcome: Outcome) -> Op {
    op(index, OpKind::Task, "a", intended_ms, 50.0, outcome)
}

/// Ten tasks a second over `[from_s, to_s)`, each answered after
/// `latency_ms` with `outcome`; op indices are the intended time in tenths of
/// a second, so hand-made ops use indices from 100000 to stay apart.
fn traffic(from_s: f64, to_s: f64, latency_ms: f64, outcome: Outcome) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut t = (from_s * 1000.0).round();
    while t < to_s * 1000.0 {
        ops.push(op(
            (t / 100.0) as u64,
            OpKind::Task,
            "a",
            t,
            latency_ms,
            outcome.clone(),
        ));
        t += 100.0;
    }
    ops
}

fn ok_traffic(from_s: f64, to_s: f64) -> Vec<Op> {
    traffic(from_s, to_s, 50.0, Outcome::Status(200))
}

fn verified() -> Result<AuditAnswer, String> {
    Ok(AuditAnswer {
        ok: true,
        entries: 10,
        first_bad_seq: None,
        reason: None,
    })
}

/// Evidence of a 10-second run with this history and nothing else.
fn evidence(history: Vec<Op>) -> Evidence {
    Evidence {
        history,
        load_end_ms: 10_000.0,
        faults: BTreeMap::new(),
        health: Vec::new(),
        budgets: Vec::new(),
        jobs: BTreeMap::new(),
        charges: Ok(Vec::new()),
        journal: Vec::new(),
        journal_dropped: 0,
        audit_online: verified(),
        audit_offline: verified(),
        rate_limits: BTreeMap::new(),
        panics: Vec::new(),
        process_down: Vec::new(),
    }
}

fn with_fault(mut e: Evidence, name: &str, start_ms: f64, end_ms: f64) -> Evidence {
    e.faults
        .insert(name.to_owned(), FaultSpan { start_ms, end_ms });
    e
}

fn concat(parts: impl IntoIterator<Item = Vec<Op>>) -> Vec<Op> {
    parts.into_iter().flatten().collect()
}

/// The smallest valid scenario holding these checks.
fn scenario(slos: Vec<Slo>, invariants: Vec<Invariant>) -> Scenario {
    Scenario {
        name: "checks".to_owned(),
        description: "hand-made".to_owned(),
        seed: 1,
        source: PathBuf::from("checks.yaml"),
        system: SystemSpec {
            replicas: 1,
            store: StoreKind::Sqlite,
            config_yaml: String::new(),
            config_base: PathBuf::from("base.yaml"),
        },
        load: LoadSpec {
            stages: vec![Stage {
                duration: Duration::from_secs(10),
                start_rps: 10.0,
                end_rps: 10.0,
            }],
            mix: Mix {
                tasks: 1,
                jobs: 0,
                reads: 0,
            },
            tenants: vec![Tenant {
                name: "a".to_owned(),
                budget_tokens: None,
                role: "admin".to_owned(),
            }],
            idempotency_reuse: 0.0,
            max_in_flight: 10,
            request_timeout: Duration::from_secs(5),
            max_tokens: 64,
        },
        faults: Vec::new(),
        slos,
        invariants,
    }
}

/// Judges one SLO through `run_all`, as the engine does.
fn slo(objective: Objective, window: Window, evidence: &Evidence) -> CheckResult {
    let results = checks::run_all(&scenario(vec![Slo { objective, window }], vec![]), evidence);
    assert_eq!(results.len(), 1);
    results.into_iter().next().expect("one result")
}

/// Judges one invariant through `run_all`.
fn invariant(invariant: Invariant, evidence: &Evidence) -> CheckResult {
    let results = checks::run_all(&scenario(vec![], vec![invariant]), evidence);
    assert_eq!(results.len(), 1);
    results.into_iter().next().expect("one result")
}

fn latency(quantile: f64, max_ms: u64) -> Objective {
    Objective::Latency {
        quantile,
        max: Duration::from_millis(max_ms),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The one assertion: the check passed (with no evidence) or failed, with
/// every `names` found in some evidence line, and within the evidence cap.
#[track_caller]
fn check(case: &str, result: &CheckResult, passes: bool, names: &[&str]) {
    let shown = format!(
        "{case}: {} {:?} passed={} observed={:?}\n  evidence:\n    {}",
        result.name,
        result.window,
        result.passed,
        result.observed,
        result.evidence.join("\n    ")
    );
    assert_eq!(result.passed, passes, "{shown}");
    if passes {
        assert!(
            result.evidence.is_empty(),
            "a passing check has no evidence: {shown}"
        );
        assert!(names.is_empty(), "{case}: a passing case names nothing");
    } else {
        assert!(
            !result.evidence.is_empty(),
            "a failure names its evidence: {shown}"
        );
    }
    for name in names {
        assert!(
            result.evidence.iter().any(|line| line.contains(name)),
            "{shown}\n  does not name {name:?}"
        );
    }
    assert!(result.evidence.len() <= MAX_EVIDENCE_LINES + 1, "{shown}");
}

// -------------------------------------------------------------------- SLOs

#[test]
fn latency_over_the_whole_run() {
    let fast = evidence(ok_traffic(0.0, 10.0));
    check(
        "all fast",
        &slo(latency(0.95, 100), Window::All, &fast),
        true,
        &[],
    );

    // 100 fast, 10 slow: the p95 (rank 105 of 110) is slow.
    let slow: Vec<Op> = (0..10)
        .map(|i| task(100_000 + i, 5000.0 + i as f64, Outcome::Status(200)))
        .map(|mut o| {
            o.end_ms = o.intended_ms + 3000.0;
            o
        })
        .collect();
    let r = slo(
        latency(0.95, 100),
        Window::All,
        &evidence(concat([ok_traffic(0.0, 10.0), slow])),
    );
    check(
        "ten slow",
        &r,
        false,
        &[
            "op 100000 Task tenant a",
            "after 3000ms",
            "request id req-100000",
        ],
    );
    assert_eq!(r.name, "latency_p95");
    assert_eq!(r.window.as_deref(), Some("all"));
    assert_eq!(r.expected, "<= 100ms");
}

#[test]
fn latency_counts_from_the_intended_send_time() {
    // Waited 2.9 s for a slot, then answered in 100 ms: 3 s from the plan.
    let mut queued = task(100_000, 5000.0, Outcome::Status(200));
    queued.start_ms = 7900.0;
    queued.end_ms = 8000.0;
    let r = slo(
        latency(1.0, 1000),
        Window::All,
        &evidence(concat([ok_traffic(0.0, 10.0), vec![queued]])),
    );
    check(
        "queued behind a stall",
        &r,
        false,
        &["op 100000", "after 3000ms", "req-100000"],
    );
    assert_eq!(r.name, "latency_max");
    check(
        "without it",
        &slo(
            latency(1.0, 1000),
            Window::All,
            &evidence(ok_traffic(0.0, 10.0)),
        ),
        true,
        &[],
    );
}

#[test]
fn latency_during_a_fault() {
    let during = Window::During("cut".to_owned());
    // Slow only while the fault lasts.
    let slow_inside = with_fault(
        evidence(concat([
            ok_traffic(0.0, 4.0),
            traffic(4.0, 6.0, 2500.0, Outcome::Status(200)),
            ok_traffic(6.0, 10.0),
        ])),
        "cut",
        4000.0,
        6000.0,
    );
    let r = slo(latency(0.5, 1000), during.clone(), &slow_inside);
    check(
        "slow during",
        &r,
        false,
        &["[4.0s, 6.0s)", "op 40 Task", "after 2500ms", "req-40"],
    );
    assert_eq!(r.window.as_deref(), Some("during(cut)"));

    // Slow outside the fault only: the window does not see it.
    let slow_outside = with_fault(
        evidence(concat([
            traffic(0.0, 4.0, 2500.0, Outcome::Status(200)),
            ok_traffic(4.0, 10.0),
        ])),
        "cut",
        4000.0,
        6000.0,
    );
    check(
        "slow before",
        &slo(latency(0.5, 1000), during, &slow_outside),
        true,
        &[],
    );
}

#[test]
fn latency_after_a_fault_with_a_delay() {
    let window = Window::After {
        fault: "cut".to_owned(),
        delay: Duration::from_secs(2),
    };
    // Fault 2-4 s; the window opens at 6 s. Slow in 4-6 s is forgiven.
    let slow_in_grace = with_fault(
        evidence(concat([
            ok_traffic(0.0, 4.0),
            traffic(4.0, 6.0, 2500.0, Outcome::Status(200)),
            ok_traffic(6.0, 10.0),
        ])),
        "cut",
        2000.0,
        4000.0,
    );
    let r = slo(latency(0.5, 1000), window.clone(), &slow_in_grace);
    check("slow in the grace period", &r, true, &[]);
    assert_eq!(r.window.as_deref(), Some("after(cut) + 2s"));

    let slow_after = with_fault(
        evidence(concat([
            ok_traffic(0.0, 6.0),
            traffic(6.0, 10.0, 2500.0, Outcome::Status(200)),
        ])),
        "cut",
        2000.0,
        4000.0,
    );
    check(
        "slow after the grace period",
        &slo(latency(0.5, 1000), window, &slow_after),
        false,
        &["[6.0s, 10.0s)", "op 60 ", "req-60"],
    );
}

#[test]
fn latency_every_sliding_window() {
    let every = Window::Every(Duration::from_secs(5));
    check(
        "steady",
        &slo(
            latency(1.0, 1000),
            every.clone(),
            &evidence(ok_traffic(0.0, 10.0)),
        ),
        true,
        &[],
    );

    // One slow request at 3.5 s: the windows starting at 0, 1, 2 and 3 s
    // cover it, those at 4 and 5 s do not.
    let mut slow = task(100_000, 3500.0, Outcome::Status(200));
    slow.end_ms = 3500.0 + 3000.0;
    slow.request_id = Some("req-slow".to_owned());
    let r = slo(
        latency(1.0, 1000),
        every,
        &evidence(concat([ok_traffic(0.0, 10.0), vec![slow]])),
    );
    check(
        "one slow second",
        &r,
        false,
        &[
            "[0.0s, 5.0s)",
            "[3.0s, 8.0s)",
            "op 100000 Task tenant a at 3500ms",
            "request id req-slow",
        ],
    );
    assert!(
        r.observed.starts_with("4 of 6 windows failed"),
        "{}",
        r.observed
    );
    assert!(
        !r.evidence.iter().any(|l| l.starts_with("[4.0s")),
        "{:?}",
        r.evidence
    );
    assert_eq!(r.window.as_deref(), Some("every 5s"));
}

#[test]
fn error_rate_counts_5xx_and_unanswered_requests_but_not_4xx() {
    let max = Objective::ErrorRate { max: 0.05 };
    let base = || ok_traffic(0.0, 10.0);
    // 100 good requests plus six of the kind under test: 6/106 > 0.05.
    let six = |outcome: Outcome| -> Vec<Op> {
        (0..6)
            .map(|i| task(100_000 + i, 5000.0 + i as f64, outcome.clone()))
            .collect()
    };
    let cases: [(&str, Vec<Op>, bool, &[&str]); 7] = [
        ("none", vec![], true, &[]),
        (
            "4xx answers",
            concat([
                six(Outcome::Status(429)),
                six(Outcome::Status(400)),
                six(Outcome::Status(404)),
            ]),
            true,
            &[],
        ),
        ("never sent", six(Outcome::NotSent), true, &[]),
        (
            "503s",
            six(Outcome::Status(503)),
            false,
            &["op 100000", "status 503", "req-100000", "0.0566 (6 of 106)"],
        ),
        (
            "timeouts",
            six(Outcome::Timeout),
            false,
            &["op 100004", "timed out"],
        ),
        (
            "refused",
            six(Outcome::ConnectError("refused".to_owned())),
            false,
            &["connect error (refused)"],
        ),
        // Abandoned at the drain deadline: the client gave up, an error.
        (
            "cancelled",
            six(Outcome::Cancelled),
            false,
            &["op 100000", "cancelled"],
        ),
    ];
    for (case, extra, passes, names) in cases {
        let r = slo(max.clone(), Window::All, &evidence(concat([base(), extra])));
        check(case, &r, passes, names);
    }
}

#[test]
fn availability_is_the_share_of_seconds_mostly_answered() {
    let min = Objective::Availability { min: 0.9 };
    // One bad second of ten: exactly 0.9.
    let one_bad = concat([
        ok_traffic(0.0, 3.0),
        traffic(3.0, 4.0, 50.0, Outcome::Status(503)),
        ok_traffic(4.0, 10.0),
    ]);
    check(
        "one bad second",
        &slo(min.clone(), Window::All, &evidence(one_bad)),
        true,
        &[],
    );
    // Three bad seconds: 0.7.
    let three_bad = concat([
        ok_traffic(0.0, 3.0),
        traffic(3.0, 6.0, 50.0, Outcome::Timeout),
        ok_traffic(6.0, 10.0),
    ]);
    let r = slo(min, Window::All, &evidence(three_bad));
    check(
        "three bad seconds",
        &r,
        false,
        &[
            "0.7000 (7 of 10 seconds up)",
            "op 30 ",
            "timed out",
            "req-30",
        ],
    );
}

#[test]
fn throughput_counts_successes_per_second() {
    let min = Objective::Throughput { min_rps: 8.0 };
    check(
        "ten a second",
        &slo(min.clone(), Window::All, &evidence(ok_traffic(0.0, 10.0))),
        true,
        &[],
    );
    // Three seconds of 503: 70 successes in 10 s.
    let r = slo(
        min,
        Window::All,
        &evidence(concat([
            ok_traffic(0.0, 7.0),
            traffic(7.0, 10.0, 50.0, Outcome::Status(503)),
        ])),
    );
    check(
        "three seconds of 503",
        &r,
        false,
        &["7.00 rps (70 successes in 10.0s)"],
    );
}

#[test]
fn recovery_time_after_a_fault() {
    let window = Window::After {
        fault: "cut".to_owned(),
        delay: Duration::ZERO,
    };
    let objective = |max_s: u64| Objective::RecoveryTime {
        max: Duration::from_secs(max_s),
        error_rate: 0.05,
    };
    // Fault 2-4 s; errors go on until 7 s; the run ends at 15 s.
    let recovers = || {
        let mut e = with_fault(
            evidence(concat([
                ok_traffic(0.0, 2.0),
                traffic(2.0, 7.0, 50.0, Outcome::Status(503)),
                ok_traffic(7.0, 15.0),
            ])),
            "cut",
            2000.0,
            4000.0,
        );
        e.load_end_ms = 15_000.0;
        e
    };
    let r = slo(objective(5), window.clone(), &recovers());
    check("within 5 s", &r, true, &[]);
    assert_eq!(r.observed, "recovered after 3000ms");
    check(
        "within 2 s",
        &slo(objective(2), window.clone(), &recovers()),
        false,
        &["recovered after 3000ms"],
    );

    let mut never = with_fault(
        evidence(concat([
            ok_traffic(0.0, 2.0),
            traffic(2.0, 15.0, 50.0, Outcome::Status(503)),
        ])),
        "cut",
        2000.0,
        4000.0,
    );
    never.load_end_ms = 15_000.0;
    check(
        "never",
        &slo(objective(60), window, &never),
        false,
        &["did not recover"],
    );
}

#[test]
fn a_window_naming_a_fault_never_applied_fails() {
    let e = with_fault(evidence(ok_traffic(0.0, 10.0)), "cut", 2000.0, 4000.0);
    let windows = [
        Window::During("ghost".to_owned()),
        Window::Before("ghost".to_owned()),
        Window::After {
            fault: "ghost".to_owned(),
            delay: ms(0),
        },
    ];
    for window in windows {
        let label = checks::window_label(&window);
        check(
            &label,
            &slo(latency(0.5, 1000), window, &e),
            false,
            &["fault ghost was never applied"],
        );
    }
    check(
        "the applied one",
        &slo(latency(0.5, 1000), Window::During("cut".to_owned()), &e),
        true,
        &[],
    );
}

// -------------------------------------------------------------- invariants

fn job(index: u64, id: &str) -> Op {
    let mut o = op(
        index,
        OpKind::Job,
        "a",
        index as f64 * 100.0,
        20.0,
        Outcome::Status(202),
    );
    o.resource_id = Some(id.to_owned());
    o
}

fn job_final(state: &str) -> Option<JobFinal> {
    Some(JobFinal {
        state: state.to_owned(),
        attempts: 1,
        last_error: None,
    })
}

#[test]
fn no_lost_jobs() {
    let inv = Invariant::NoLostJobs { settle: ms(1000) };
    // Acknowledged jobs and their final states.
    let jobs = |states: &[(&str, &str)]| -> Evidence {
        let mut e = evidence(
            states
                .iter()
                .enumerate()
                .map(|(i, (id, _))| job(i as u64, id))
                .collect(),
        );
        for (id, state) in states {
            e.jobs.insert((*id).to_owned(), job_final(state));
        }
        e
    };
    let settled = jobs(&[("job-1", "succeeded"), ("job-2", "dead")]);
    check("settled", &invariant(inv.clone(), &settled), true, &[]);

    let mut missing = settled.clone();
    missing.history.push(job(3, "job-3"));
    check(
        "never looked up",
        &invariant(inv.clone(), &missing),
        false,
        &["job job-3 was acknowledged but never looked up"],
    );

    let mut unknown = settled.clone();
    unknown.history.push(job(3, "job-3"));
    unknown.jobs.insert("job-3".to_owned(), None);
    check(
        "unknown to the service",
        &invariant(inv.clone(), &unknown),
        false,
        &["job job-3 was acknowledged but the service does not know it"],
    );

    let mut queued = settled.clone();
    queued.history.push(job(3, "job-3"));
    queued.jobs.insert(
        "job-3".to_owned(),
        Some(JobFinal {
            state: "queued".to_owned(),
            attempts: 2,
            last_error: Some("provider 503".to_owned()),
        }),
    );
    check(
        "still queued",
        &invariant(inv.clone(), &queued),
        false,
        &["job job-3 is still queued after 2 attempts (last error: provider 503)"],
    );

    // A job refused with 503 was never acknowledged.
    let mut refused = settled;
    let mut r = job(3, "job-3");
    r.outcome = Outcome::Status(503);
    refused.history.push(r);
    check("refused", &invariant(inv, &refused), true, &[]);
}

fn charge(task_id: &str, tokens: u64) -> ChargeRecord {
    ChargeRecord {
        tenant: "a".to_owned(),
        reservation: ReservationId(1),
        task_id: task_id.to_owned(),
        idempotency_key: None,
        tokens,
        overage_tokens: 0,
        charged_at_ms: 0,
    }
}

fn call(seq: u64, task_id: &str, total_tokens: Option<u64>) -> CallRecord {
    CallRecord {
        seq,
        received_unix_ms: 0,
        request_id: None,
        idempotency_key: Some(task_id.to_owned()),
        authorization: true,
        model: Some("mock".to_owned()),
        prompt_sha256: None,
        stream: false,
        rule_index: None,
        rule_name: None,
        effect: None,
        status: 200,
        usage: total_tokens.map(|t| Usage {
            prompt_tokens: 0,
            completion_tokens: t,
            total_tokens: t,
        }),
        error: None,
    }
}

fn budget(at_ms: f64, used: u64, reserved: u64, limit: u64) -> BudgetSample {
    BudgetSample {
        at_ms,
        tenant: "a".to_owned(),
        used_tokens: used,
        reserved_tokens: reserved,
        limit_tokens: limit,
    }
}

fn charged_task(index: u64, id: &str) -> Op {
    let mut o = task(index, index as f64 * 100.0, Outcome::Status(200));
    o.resource_id = Some(id.to_owned());
    o
}

/// Two tasks charged 30 and 40 tokens, as the provider reported, and a
/// final budget of 70 used.
fn ledger() -> Evidence {
    let mut e = evidence(vec![charged_task(1, "t1"), charged_task(2, "t2")]);
    e.charges = Ok(vec![charge("t1", 30), charge("t2", 40)]);
    e.journal = vec![call(1, "t1", Some(30)), call(2, "t2", Some(40))];
    e.budgets = vec![budget(500.0, 30, 0, 1000), budget(10_000.0, 70, 0, 1000)];
    e
}

#[test]
fn exactly_once_charge() {
    let inv = Invariant::ExactlyOnceCharge;
    check("consistent", &invariant(inv.clone(), &ledger()), true, &[]);

    let mut twice = ledger();
    twice.charges = Ok(vec![charge("t1", 30), charge("t1", 30), charge("t2", 40)]);
    twice.budgets = vec![budget(10_000.0, 100, 0, 1000)];
    check(
        "two charges for one task",
        &invariant(inv.clone(), &twice),
        false,
        &["task t1 was charged 2 times"],
    );

    let mut by_key = ledger();
    let mut c1 = charge("t1", 30);
    let mut c2 = charge("t2", 40);
    c1.idempotency_key = Some("k".to_owned());
    c2.idempotency_key = Some("k".to_owned());
    by_key.charges = Ok(vec![c1, c2]);
    check(
        "two charges for one key",
        &invariant(inv.clone(), &by_key),
        false,
        &["tenant a key k was charged 2 times (tasks t1, t2)"],
    );

    let mut misreported = ledger();
    misreported.charges = Ok(vec![charge("t1", 30), charge("t2", 55)]);
    misreported.budgets = vec![budget(10_000.0, 85, 0, 1000)];
    check(
        "tokens no call reported",
        &invariant(inv.clone(), &misreported),
        false,
        &["task t2 was charged 55 tokens but the provider reported [40]"],
    );

    let mut no_call = ledger();
    no_call.journal = vec![call(1, "t1", Some(30))];
    check(
        "no call at all",
        &invariant(inv.clone(), &no_call),
        false,
        &["task t2 was charged 40 tokens but the provider journal has no call for it"],
    );
    // Unless the journal dropped records, or the call reported no usage.
    let mut dropped = no_call.clone();
    dropped.journal_dropped = 1;
    check(
        "journal dropped records",
        &invariant(inv.clone(), &dropped),
        true,
        &[],
    );
    let mut no_usage = no_call;
    no_usage.journal.push(call(2, "t2", None));
    check(
        "call without usage",
        &invariant(inv.clone(), &no_usage),
        true,
        &[],
    );

    let mut uncharged = ledger();
    uncharged.history.push(charged_task(3, "t3"));
    check(
        "a 200 task without a charge",
        &invariant(inv.clone(), &uncharged),
        false,
        &["task t3 succeeded but was never charged", "req-3"],
    );

    let mut job_uncharged = ledger();
    job_uncharged
        .jobs
        .insert("j1".to_owned(), job_final("succeeded"));
    check(
        "a succeeded job without a charge",
        &invariant(inv.clone(), &job_uncharged),
        false,
        &["job j1 succeeded but was never charged"],
    );

    let mut drift = ledger();
    drift.budgets.push(budget(11_000.0, 80, 0, 1000));
    check(
        "used is not the sum",
        &invariant(inv.clone(), &drift),
        false,
        &["tenant a shows 80 tokens used but its charges add up to 70"],
    );

    let mut unreadable = ledger();
    unreadable.charges = Err("database is locked".to_owned());
    check(
        "no ledger",
        &invariant(inv, &unreadable),
        false,
        &["the ledger could not be read: database is locked"],
    );
}

#[test]
fn budget_never_overdrawn() {
    let inv = Invariant::BudgetNeverOverdrawn;
    let mut e = evidence(vec![]);
    e.budgets = vec![budget(1000.0, 60, 40, 100), budget(2000.0, 100, 0, 100)];
    check("at the limit", &invariant(inv.clone(), &e), true, &[]);
    e.budgets.push(budget(1500.0, 90, 20, 100));
    check(
        "over",
        &invariant(inv.clone(), &e),
        false,
        &["tenant a at 1500ms: used 90 + reserved 20 > limit 100"],
    );
    check(
        "no sample",
        &invariant(inv, &evidence(vec![])),
        false,
        &["no budget sample was taken"],
    );
}

#[test]
fn audit_chain_intact() {
    let inv = Invariant::AuditChainIntact;
    check(
        "both verify",
        &invariant(inv.clone(), &evidence(vec![])),
        true,
        &[],
    );
    let mut tampered = evidence(vec![]);
    tampered.audit_offline = Ok(AuditAnswer {
        ok: false,
        entries: 40,
        first_bad_seq: Some(17),
        reason: Some("hash mismatch".to_owned()),
    });
    check(
        "offline tampered",
        &invariant(inv.clone(), &tampered),
        false,
        &["offline: entry 17 does not verify: hash mismatch"],
    );
    let mut unreachable = evidence(vec![]);
    unreachable.audit_online = Err("connection refused".to_owned());
    check(
        "online unreachable",
        &invariant(inv, &unreachable),
        false,
        &["online: verification failed: connection refused"],
    );
}

/// A success under an idempotency key with this body digest and id.
fn keyed(index: u64, kind: OpKind, key: &str, body: &str, id: &str) -> Op {
    let status = if kind == OpKind::Job { 202 } else { 200 };
    let mut o = op(
        index,
        kind,
        "a",
        index as f64 * 100.0,
        20.0,
        Outcome::Status(status),
    );
    o.idempotency_key = Some(key.to_owned());
    o.body_sha256 = Some(body.repeat(64 / body.len()));
    o.resource_id = Some(id.to_owned());
    o
}

#[test]
fn idempotent_replay_consistent() {
    let inv = Invariant::IdempotentReplayConsistent;
    let cases: [(&str, Vec<Op>, bool, &[&str]); 5] = [
        (
            "tasks, same body",
            vec![
                keyed(1, OpKind::Task, "k1", "a", "t1"),
                keyed(2, OpKind::Task, "k1", "a", "t1"),
            ],
            true,
            &[],
        ),
        (
            "tasks, different bodies",
            vec![
                keyed(1, OpKind::Task, "k1", "a", "t1"),
                keyed(2, OpKind::Task, "k1", "b", "t1"),
            ],
            false,
            &["key k1: op 1 and op 2 got different bodies (aaaaaaaaaaaa and bbbbbbbbbbbb)"],
        ),
        // A replayed job reports its current state, which moves on.
        (
            "jobs, same id, different bodies",
            vec![
                keyed(1, OpKind::Job, "k1", "a", "j1"),
                keyed(2, OpKind::Job, "k1", "b", "j1"),
            ],
            true,
            &[],
        ),
        (
            "jobs, different ids",
            vec![
                keyed(1, OpKind::Job, "k1", "a", "j1"),
                keyed(2, OpKind::Job, "k1", "a", "j2"),
            ],
            false,
            &["key k1: op 1 and op 2 were answered with different jobs (j1 and j2)"],
        ),
        (
            "different keys",
            vec![
                keyed(1, OpKind::Task, "k1", "a", "t1"),
                keyed(2, OpKind::Task, "k2", "b", "t2"),
            ],
            true,
            &[],
        ),
    ];
    for (case, history, passes, names) in cases {
        check(
            case,
            &invariant(inv.clone(), &evidence(history)),
            passes,
            names,
        );
    }
}

#[test]
fn allowed_statuses_count_no_answer_as_zero() {
    let with_zero = Invariant::AllowedStatuses {
        statuses: vec![0, 200, 429],
    };
    let without_zero = Invariant::AllowedStatuses {
        statuses: vec![200, 429],
    };
    let answered = vec![
        task(1, 100.0, Outcome::Status(200)),
        task(2, 200.0, Outcome::Status(429)),
        task(3, 300.0, Outcome::NotSent),
    ];
    let mut unanswered = answered.clone();
    unanswered.push(task(4, 400.0, Outcome::Timeout));
    unanswered.push(task(5, 500.0, Outcome::ConnectError("refused".to_owned())));
    let mut server_error = answered.clone();
    server_error.push(task(6, 600.0, Outcome::Status(500)));

    check(
        "answered",
        &invariant(without_zero.clone(), &evidence(answered)),
        true,
        &[],
    );
    check(
        "no answer allowed",
        &invariant(with_zero.clone(), &evidence(unanswered.clone())),
        true,
        &[],
    );
    let r = invariant(without_zero, &evidence(unanswered));
    check(
        "no answer not allowed",
        &r,
        false,
        &["op 4 Task tenant a at 400ms: timed out", "op 5 ", "req-5"],
    );
    assert_eq!(r.observed, "0: 2, 200: 1, 429: 1");
    check(
        "a 500",
        &invariant(with_zero, &evidence(server_error)),
        false,
        &["op 6 Task tenant a at 600ms: status 500", "req-6"],
    );
}

#[test]
fn rate_limit_respected() {
    let inv = Invariant::RateLimitRespected;
    // 10 per second, burst 5: at most floor(10 x 1.25) + 5 = 17 within 1 s.
    let burst = |n: u64, status: u16| -> Vec<Op> {
        (0..n)
            .map(|i| task(i, 1000.0 + i as f64 * 10.0, Outcome::Status(status)))
            .collect()
    };
    let limited = |history: Vec<Op>| {
        let mut e = evidence(history);
        e.rate_limits.insert("a".to_owned(), (10, 5));
        e
    };
    check(
        "17 in a second",
        &invariant(inv.clone(), &limited(burst(17, 200))),
        true,
        &[],
    );
    check(
        "18 in a second",
        &invariant(inv.clone(), &limited(burst(18, 200))),
        false,
        &["tenant a: 18 requests admitted within 1s from 1000ms; the limit allows 17"],
    );
    // Refused before the limiter.
    check(
        "401s do not count",
        &invariant(inv.clone(), &limited(burst(30, 401))),
        true,
        &[],
    );

    let mut with_retry = task(100, 500.0, Outcome::Status(429));
    with_retry.retry_after = Some("1".to_owned());
    check(
        "429 with Retry-After",
        &invariant(inv.clone(), &limited(vec![with_retry])),
        true,
        &[],
    );
    let bare = task(101, 600.0, Outcome::Status(429));
    check(
        "429 without Retry-After",
        &invariant(inv, &limited(vec![bare])),
        false,
        &["429 without Retry-After: op 101", "req-101"],
    );
}

/// Health samples every 500 ms over 0-8 s, live 200, ready from `ready`.
fn health(ready: impl Fn(f64) -> Option<u16>) -> Vec<HealthSample> {
    (0..16)
        .map(|i| {
            let at_ms = i as f64 * 500.0;
            HealthSample {
                at_ms,
                live: Some(200),
                ready: ready(at_ms),
            }
        })
        .collect()
}

#[test]
fn ready_reflects_faults() {
    let inv = Invariant::ReadyReflectsFaults {
        faults: vec!["cut".to_owned()],
        within: Duration::from_secs(2),
    };
    // The fault lasts 2-4 s.
    let run = |samples: Vec<HealthSample>| {
        let mut e = with_fault(evidence(vec![]), "cut", 2000.0, 4000.0);
        e.health = samples;
        e
    };
    let reflects = health(|t| {
        Some(if (2500.0..4000.0).contains(&t) {
            503
        } else {
            200
        })
    });
    check(
        "drops and returns",
        &invariant(inv.clone(), &run(reflects.clone())),
        true,
        &[],
    );

    check(
        "stays 200",
        &invariant(inv.clone(), &run(health(|_| Some(200)))),
        false,
        &["ready stayed 200 throughout cut (5 samples from 2000ms to 4000ms)"],
    );
    check(
        "returns late",
        &invariant(
            inv.clone(),
            &run(health(|t| {
                Some(if (2500.0..7000.0).contains(&t) {
                    503
                } else {
                    200
                })
            })),
        ),
        false,
        &["ready returned 3000ms after cut ended"],
    );
    check(
        "never returns",
        &invariant(
            inv.clone(),
            &run(health(|t| if t >= 2500.0 { None } else { Some(200) })),
        ),
        false,
        &["ready never returned to 200 after cut"],
    );

    let mut live_fails = reflects.clone();
    live_fails[2].live = None;
    check(
        "live fails while up",
        &invariant(inv.clone(), &run(live_fails.clone())),
        false,
        &["live answered nothing at 1000ms while the process was meant to be up"],
    );
    let mut expected_down = run(live_fails);
    expected_down.process_down = vec![(900.0, 1100.0)];
    check(
        "live fails while meant to be down",
        &invariant(inv.clone(), &expected_down),
        true,
        &[],
    );

    let mut ghost = run(reflects);
    ghost.faults.clear();
    check(
        "fault never applied",
        &invariant(inv, &ghost),
        false,
        &["fault cut was never applied"],
    );
}

#[test]
fn no_panics() {
    check(
        "clean log",
        &invariant(Invariant::NoPanics, &evidence(vec![])),
        true,
        &[],
    );
    let mut e = evidence(vec![]);
    e.panics = vec![(
        12,
        "thread 'worker' panicked at src/store/jobs.rs:40:5".to_owned(),
    )];
    check(
        "a panic",
        &invariant(Invariant::NoPanics, &e),
        false,
        &["log line 12: thread 'worker' panicked at src/store/jobs.rs:40:5"],
    );
}

// ------------------------------------------------------------ evidence cap

#[test]
fn evidence_lists_are_capped_with_the_count_of_the_rest() {
    // An invariant with 25 violations.
    let history: Vec<Op> = (0..25)
        .map(|i| task(i, i as f64 * 100.0, Outcome::Status(500)))
        .collect();
    let r = invariant(
        Invariant::AllowedStatuses {
            statuses: vec![200],
        },
        &evidence(history),
    );
    check("25 bad statuses", &r, false, &["op 0 ", "op 19 "]);
    assert_eq!(
        r.evidence.len(),
        MAX_EVIDENCE_LINES + 1,
        "{:#?}",
        r.evidence
    );
    assert_eq!(
        r.evidence.last().map(String::as_str),
        Some("... and 5 more")
    );

    // Exactly at the cap: no closing line.
    let history: Vec<Op> = (0..20)
        .map(|i| task(i, i as f64 * 100.0, Outcome::Status(500)))
        .collect();
    let r = invariant(
        Invariant::AllowedStatuses {
            statuses: vec![200],
        },
        &evidence(history),
    );
    assert_eq!(r.evidence.len(), MAX_EVIDENCE_LINES, "{:#?}", r.evidence);
    assert!(
        !r.evidence.iter().any(|l| l.starts_with("...")),
        "{:#?}",
        r.evidence
    );

    // An SLO failing in 30 positions of a sliding window: five requests
    // named, fifteen windows, and the count of the other fifteen.
    let mut e = evidence(traffic(0.0, 30.0, 50.0, Outcome::Status(503)));
    e.load_end_ms = 30_000.0;
    let r = slo(
        Objective::ErrorRate { max: 0.05 },
        Window::Every(Duration::from_secs(1)),
        &e,
    );
    check(
        "30 failed windows",
        &r,
        false,
        &["[0.0s, 1.0s)", "op 0 ", "status 503"],
    );
    assert!(
        r.observed.starts_with("30 of 30 windows failed"),
        "{}",
        r.observed
    );
    assert_eq!(
        r.evidence.len(),
        MAX_EVIDENCE_LINES + 1,
        "{:#?}",
        r.evidence
    );
    assert_eq!(
        r.evidence.last().map(String::as_str),
        Some("... and 15 more")
    );
}

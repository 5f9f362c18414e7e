//! The Redis store under contention, on a real `redis-server`: two
//! instances (replicas) racing on the same keys and budget from several
//! threads, recovery of what a dropped instance held, and an audit chain
//! that shows tampering.

// Test helpers fail the way tests do: by panicking with a message.
#![allow(clippy::unwrap_used)]

mod redis_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use orchestrator::audit::NewEntry;
use orchestrator::config::{BudgetConfig, RateLimitConfig};
use orchestrator::store::{
    Begin, BeginTask, FinishTask, IdempotencyClaim, RedisStore, StoreOptions, StoredResponse,
};
use redis_support::RedisServer;
use serde_json::json;

fn options(limit: u64) -> StoreOptions {
    StoreOptions::new(BudgetConfig {
        default_limit_tokens: limit,
        tenants: BTreeMap::new(),
    })
}

fn prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Begins a task under `key` (if any) and, if it started, finishes it with
/// a charge of `charge`. Returns whether it started.
fn run_task(
    store: &RedisStore,
    task: String,
    key: Option<String>,
    reserve: u64,
    charge: u64,
) -> bool {
    let begun = store
        .begin_task(&BeginTask {
            tenant: "t".into(),
            task_id: task,
            idempotency: key.map(|key| IdempotencyClaim {
                key,
                fingerprint: [7; 32],
            }),
            reserve_tokens: reserve,
        })
        .unwrap();
    match begun {
        Begin::Started { reservation } => {
            store
                .finish_task(&FinishTask {
                    reservation,
                    charge_tokens: charge,
                    actor: "test".into(),
                    response: Some(StoredResponse {
                        status: 200,
                        body: b"{}".to_vec(),
                    }),
                })
                .unwrap();
            true
        }
        Begin::Replay { .. } | Begin::InFlight | Begin::InsufficientBudget { .. } => false,
        Begin::FingerprintMismatch => panic!("one fingerprint per key in this test"),
    }
}

#[test]
fn two_instances_racing_on_the_same_keys_charge_each_key_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = prefix("race-keys");
    let a = RedisStore::open(&server.url(), &prefix, &options(1_000_000)).unwrap();
    let b = RedisStore::open(&server.url(), &prefix, &options(1_000_000)).unwrap();
    const KEYS: usize = 40;
    const THREADS: usize = 6;
    let started = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let store = if thread % 2 == 0 { &a } else { &b };
            let started = &started;
            scope.spawn(move || {
                for key in 0..KEYS {
                    let task = format!("task-{thread}-{key}");
                    if run_task(store, task, Some(format!("key-{key}")), 10, 3) {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(
        started.load(Ordering::Relaxed),
        KEYS as u64,
        "each key ran once"
    );
    let charges = a.charges("t").unwrap();
    let mut keys: Vec<String> = charges
        .iter()
        .filter_map(|c| c.idempotency_key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        (charges.len(), keys.len()),
        (KEYS, KEYS),
        "one charge per key"
    );
    let budget = b.budget("t").unwrap();
    assert_eq!(
        (budget.used_tokens, budget.reserved_tokens),
        (3 * KEYS as u64, 0)
    );
    assert!(a.verify_audit().unwrap().ok);
}

#[test]
fn two_instances_racing_on_a_small_budget_never_overdraw_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = prefix("race-budget");
    // Room for 25 reservations of 4; 6 threads try 20 each.
    let a = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    let b = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    let started = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..6 {
            let store = if thread % 2 == 0 { &a } else { &b };
            let started = &started;
            scope.spawn(move || {
                for n in 0..20 {
                    if run_task(store, format!("task-{thread}-{n}"), None, 4, 4) {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    let budget = store.budget("t").unwrap();
                    assert!(
                        budget.used_tokens + budget.reserved_tokens <= budget.limit_tokens,
                        "{budget:?}"
                    );
                }
            });
        }
    });
    let budget = a.budget("t").unwrap();
    assert_eq!(
        budget.used_tokens, 100,
        "the whole budget is spent, no more"
    );
    assert_eq!(started.load(Ordering::Relaxed), 25);
    assert_eq!(a.charges("t").unwrap().len(), 25);
}

#[test]
fn what_a_dropped_instance_held_is_released_by_the_next_to_open() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = prefix("recovery");
    let survivor = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    let gone = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    let begun = gone
        .begin_task(&BeginTask {
            tenant: "t".into(),
            task_id: "held".into(),
            idempotency: Some(IdempotencyClaim {
                key: "k".into(),
                fingerprint: [1; 32],
            }),
            reserve_tokens: 40,
        })
        .unwrap();
    assert!(matches!(begun, Begin::Started { .. }));
    assert_eq!(survivor.budget("t").unwrap().reserved_tokens, 40);
    drop(gone);
    let next = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    let recovery = next.recovery();
    assert_eq!(
        (
            recovery.released_reservations,
            recovery.released_tokens,
            recovery.abandoned_keys
        ),
        (1, 40, 1)
    );
    assert_eq!(survivor.budget("t").unwrap().reserved_tokens, 0);
    // The key is free again: a retry runs.
    assert!(run_task(
        &survivor,
        "retry".into(),
        Some("k".into()),
        40,
        10
    ));
}

#[test]
fn concurrent_appends_from_two_instances_make_one_chain_and_tampering_shows() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = prefix("audit");
    let a = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    let b = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    std::thread::scope(|scope| {
        for store in [&a, &b, &a, &b] {
            scope.spawn(move || {
                for n in 0..25 {
                    store
                        .record_audit(NewEntry::new(
                            "test",
                            "test.event",
                            format!("s{n}"),
                            json!({"n": n}),
                        ))
                        .unwrap();
                }
            });
        }
    });
    let verification = b.verify_audit().unwrap();
    assert!(verification.ok, "{verification:?}");
    assert_eq!(verification.entries, 100);
    let entries = a.audit_entries(98, 10).unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [99, 100]);

    // An outside change to one entry's details breaks the chain there.
    let mut con = server.connection();
    let key = format!("{prefix}:audit");
    let stored: String = redis::cmd("LINDEX")
        .arg(&key)
        .arg(41)
        .query(&mut con)
        .unwrap();
    let tampered = stored.replace("\\\"n\\\":", "\\\"n\\\":1");
    assert_ne!(stored, tampered);
    redis::cmd("LSET")
        .arg(&key)
        .arg(41)
        .arg(tampered)
        .exec(&mut con)
        .unwrap();
    let verification = a.verify_audit().unwrap();
    assert!(!verification.ok);
    assert_eq!(verification.first_bad_seq, Some(42), "{verification:?}");
}

#[test]
fn a_rate_limit_is_shared_by_every_instance() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = prefix("rate");
    let a = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    let b = RedisStore::open(&server.url(), &prefix, &options(100)).unwrap();
    // A burst of 5 and one more a second: within these few milliseconds, 5
    // and no more, however the requests are spread over the two instances.
    let rate = RateLimitConfig {
        requests_per_second: 1,
        burst: 5,
    };
    let taken: Vec<_> = (0..10)
        .map(|n| {
            let store = if n % 2 == 0 { &a } else { &b };
            store.take_rate("key-1", rate).unwrap()
        })
        .collect();
    let allowed = taken.iter().filter(|t| t.allowed).count();
    assert_eq!(allowed, 5, "{taken:?}");
    assert_eq!(
        taken
            .iter()
            .take(5)
            .map(|t| t.remaining)
            .collect::<Vec<_>>(),
        [4, 3, 2, 1, 0]
    );
    assert!(
        taken[5..].iter().all(|t| !t.allowed && !t.wait.is_zero()),
        "{taken:?}"
    );
    // Another key has its own limit.
    assert!(b.take_rate("key-2", rate).unwrap().allowed);
}

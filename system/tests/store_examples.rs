//! Example tests of the SQLite store: idempotency under concurrency, replay,
//! single ownership of the file, limits at reopen, busy retries, takeover of
//! abandoned keys and crash recovery.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use orchestrator::config::BudgetConfig;
use orchestrator::store::{
    Begin, BeginTask, Charge, FinishTask, IdempotencyClaim, ReservationId, Store, StoreError,
    StoreOptions, StoredResponse,
};

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "orch-store-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    /// A database path in a subdirectory that does not exist yet, so that
    /// open has to create it.
    fn db(&self) -> PathBuf {
        self.0.join("data").join("state.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(default_limit: u64) -> StoreOptions {
    StoreOptions::new(BudgetConfig {
        default_limit_tokens: default_limit,
        tenants: BTreeMap::from([("big".to_owned(), 10_000)]),
    })
}

fn begin(tenant: &str, key: Option<(&str, u8)>, reserve: u64) -> BeginTask {
    BeginTask {
        tenant: tenant.to_owned(),
        task_id: uuid::Uuid::new_v4().to_string(),
        idempotency: key.map(|(key, print)| IdempotencyClaim {
            key: key.to_owned(),
            fingerprint: [print; 32],
        }),
        reserve_tokens: reserve,
    }
}

fn started(outcome: Begin) -> ReservationId {
    match outcome {
        Begin::Started { reservation } => reservation,
        other => panic!("expected Started, got {other:?}"),
    }
}

fn finish(reservation: ReservationId, charge: u64, body: &[u8]) -> FinishTask {
    FinishTask {
        reservation,
        charge_tokens: charge,
        actor: "test".into(),
        response: Some(StoredResponse {
            status: 201,
            body: body.to_vec(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_begins_start_exactly_once() {
    let dir = TempDir::new("dup");
    let store = Store::open(&dir.db(), &options(1_000)).unwrap();
    let barrier = Arc::new(Barrier::new(16));
    let mut handles = Vec::new();
    for _ in 0..16 {
        let barrier = Arc::clone(&barrier);
        let request = begin("acme", Some(("same-key", 1)), 10);
        handles.push(tokio::spawn(store.run(move |s| {
            barrier.wait();
            s.begin_task(&request)
        })));
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.unwrap().unwrap());
    }
    let started: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Begin::Started { .. }))
        .collect();
    assert_eq!(started.len(), 1, "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|o| **o == Begin::InFlight).count(),
        15
    );
    let budget = store.budget("acme").unwrap();
    assert_eq!((budget.reserved_tokens, budget.used_tokens), (10, 0));
}

#[test]
fn a_completed_key_replays_its_stored_response() {
    let dir = TempDir::new("replay");
    let store = Store::open(&dir.db(), &options(1_000)).unwrap();
    let id = started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 100))
            .unwrap(),
    );
    let charge = store
        .finish_task(&finish(id, 42, b"{\"ok\":true}"))
        .unwrap();
    assert_eq!(
        charge,
        Charge {
            charged: 42,
            overage: 0,
            remaining: 958,
        }
    );

    let replay = store
        .begin_task(&begin("acme", Some(("k", 1)), 100))
        .unwrap();
    assert_eq!(
        replay,
        Begin::Replay {
            status: 201,
            body: b"{\"ok\":true}".to_vec()
        }
    );
    assert_eq!(
        store
            .begin_task(&begin("acme", Some(("k", 2)), 100))
            .unwrap(),
        Begin::FingerprintMismatch
    );
    // Keys are scoped per tenant: another tenant's "k" is a new key.
    started(
        store
            .begin_task(&begin("other", Some(("k", 2)), 100))
            .unwrap(),
    );
    // Replays charge nothing more, and the key is charged once.
    assert_eq!(store.budget("acme").unwrap().used_tokens, 42);
    assert_eq!(store.charges("acme").unwrap().len(), 1);
    // So does finishing the same reservation again.
    assert_eq!(
        store.finish_task(&finish(id, 42, b"again")).unwrap(),
        Charge::default()
    );
    store.abort_task(id).unwrap();
    assert_eq!(store.budget("acme").unwrap().used_tokens, 42);
}

#[test]
fn abort_releases_the_reservation_and_frees_the_key() {
    let dir = TempDir::new("abort");
    let store = Store::open(&dir.db(), &options(100)).unwrap();
    let id = started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 80))
            .unwrap(),
    );
    assert_eq!(
        store.begin_task(&begin("acme", None, 30)).unwrap(),
        Begin::InsufficientBudget {
            limit: 100,
            used: 0,
            reserved: 80,
            requested: 30
        }
    );
    store.abort_task(id).unwrap();
    store.abort_task(id).unwrap();
    assert_eq!(store.budget("acme").unwrap().reserved_tokens, 0);
    assert_eq!(
        store.finish_task(&finish(id, 50, b"late")).unwrap(),
        Charge::default()
    );
    // The client retries with the same key and a different request: the
    // first one never completed, so the key is free.
    started(
        store
            .begin_task(&begin("acme", Some(("k", 2)), 80))
            .unwrap(),
    );

    let unknown = store.abort_task(ReservationId(9_999)).unwrap_err();
    assert!(
        matches!(unknown, StoreError::UnknownReservation { .. }),
        "{unknown}"
    );
}

#[test]
fn insufficient_budget_writes_nothing() {
    let dir = TempDir::new("insufficient");
    let store = Store::open(&dir.db(), &options(100)).unwrap();
    let outcome = store
        .begin_task(&begin("acme", Some(("k", 1)), 101))
        .unwrap();
    assert!(matches!(
        outcome,
        Begin::InsufficientBudget { requested: 101, .. }
    ));
    // The key was not claimed: the same key with a smaller request starts.
    started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 100))
            .unwrap(),
    );
    let huge = store.begin_task(&begin("big", None, u64::MAX)).unwrap();
    assert!(matches!(
        huge,
        Begin::InsufficientBudget { limit: 10_000, .. }
    ));
}

#[test]
fn usage_beyond_the_limit_is_overage_not_overdraft() {
    let dir = TempDir::new("overage");
    let store = Store::open(&dir.db(), &options(100)).unwrap();
    let a = started(store.begin_task(&begin("acme", None, 30)).unwrap());
    let b = started(store.begin_task(&begin("acme", None, 50)).unwrap());
    // a reports more than it reserved: it may use what nobody holds (20),
    // not b's reservation.
    assert_eq!(
        store.finish_task(&finish(a, 70, b"")).unwrap(),
        Charge {
            charged: 50,
            overage: 20,
            remaining: 0,
        }
    );
    let budget = store.budget("acme").unwrap();
    assert_eq!(
        (
            budget.used_tokens,
            budget.reserved_tokens,
            budget.remaining_tokens
        ),
        (50, 50, 0)
    );
    assert_eq!(
        store.finish_task(&finish(b, 10, b"")).unwrap(),
        Charge {
            charged: 10,
            overage: 0,
            remaining: 40,
        }
    );
    let charges = store.charges("acme").unwrap();
    assert_eq!(
        charges
            .iter()
            .map(|c| (c.tokens, c.overage_tokens))
            .collect::<Vec<_>>(),
        [(50, 20), (10, 0)]
    );
}

#[test]
fn finishing_without_a_response_releases_the_key() {
    let dir = TempDir::new("noresponse");
    let store = Store::open(&dir.db(), &options(100)).unwrap();
    let id = started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 10))
            .unwrap(),
    );
    let charge = store
        .finish_task(&FinishTask {
            reservation: id,
            charge_tokens: 5,
            actor: "test".into(),
            response: None,
        })
        .unwrap();
    assert_eq!(charge.charged, 5);
    started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 10))
            .unwrap(),
    );
}

#[test]
fn a_second_store_on_the_same_file_is_refused() {
    let dir = TempDir::new("lock");
    let path = dir.db();
    let store = Store::open(&path, &options(100)).unwrap();
    let error = Store::open(&path, &options(100)).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "database {} is locked by another orchestrator process (lock file {}.lock)",
            path.display(),
            path.display()
        )
    );
    drop(store);
    // Closing the store releases the lock.
    Store::open(&path, &options(100)).unwrap();
}

/// Set in the child process of the test below: the database it must fail to
/// open, and where to write the error.
const CHILD_DB: &str = "ORCH_STORE_TEST_CHILD_DB";
const CHILD_OUT: &str = "ORCH_STORE_TEST_CHILD_OUT";

#[test]
fn a_second_process_on_the_same_file_is_refused() {
    if let (Some(db), Some(out)) = (std::env::var_os(CHILD_DB), std::env::var_os(CHILD_OUT)) {
        // The child: try to open what the parent holds, report the outcome.
        let outcome = match Store::open(Path::new(&db), &options(100)) {
            Ok(_) => "opened".to_owned(),
            Err(error) => format!("{error}"),
        };
        std::fs::write(out, outcome).unwrap();
        return;
    }
    let dir = TempDir::new("lockproc");
    let path = dir.db();
    let out = dir.0.join("child-outcome");
    let _store = Store::open(&path, &options(100)).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_process_on_the_same_file_is_refused",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .env(CHILD_OUT, &out)
        .status()
        .unwrap();
    assert!(status.success());
    let outcome =
        std::fs::read_to_string(&out).expect("the child ran the test and wrote its outcome");
    assert!(
        outcome.contains("is locked by another orchestrator process"),
        "{outcome}"
    );
}

#[test]
fn a_lowered_limit_at_reopen_never_puts_usage_over_the_limit() {
    let dir = TempDir::new("limits");
    let path = dir.db();
    let store = Store::open(&path, &options(100)).unwrap();
    let id = started(store.begin_task(&begin("acme", None, 60)).unwrap());
    store.finish_task(&finish(id, 60, b"")).unwrap();
    drop(store);

    // Lowered below usage: the limit becomes the usage, nothing remains.
    let store = Store::open(&path, &options(40)).unwrap();
    assert_eq!(store.recovery().clamped_limits, 1);
    let budget = store.budget("acme").unwrap();
    assert_eq!(
        (
            budget.limit_tokens,
            budget.used_tokens,
            budget.remaining_tokens
        ),
        (60, 60, 0)
    );
    assert!(matches!(
        store.begin_task(&begin("acme", None, 1)).unwrap(),
        Begin::InsufficientBudget { .. }
    ));
    drop(store);

    // Lowered but above usage: taken as configured.
    let store = Store::open(&path, &options(70)).unwrap();
    assert_eq!(store.recovery().clamped_limits, 0);
    assert_eq!(store.budget("acme").unwrap().remaining_tokens, 10);
    drop(store);

    // Raised.
    let store = Store::open(&path, &options(500)).unwrap();
    let budget = store.budget("acme").unwrap();
    assert_eq!((budget.limit_tokens, budget.remaining_tokens), (500, 440));
    // A named tenant gets its own limit, an unseen one the default.
    assert_eq!(store.budget("big").unwrap().limit_tokens, 10_000);
    assert_eq!(store.budget("nobody").unwrap().limit_tokens, 500);
}

#[test]
fn reopen_releases_what_the_previous_process_held() {
    let dir = TempDir::new("recover");
    let path = dir.db();
    let store = Store::open(&path, &options(1_000)).unwrap();
    let keyed = started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 100))
            .unwrap(),
    );
    started(store.begin_task(&begin("acme", None, 50)).unwrap());
    let done = started(
        store
            .begin_task(&begin("acme", Some(("done", 1)), 10))
            .unwrap(),
    );
    store.finish_task(&finish(done, 7, b"done")).unwrap();
    drop(store); // the process dies with two requests running

    let store = Store::open(&path, &options(1_000)).unwrap();
    let recovery = store.recovery();
    assert_eq!(
        (
            recovery.released_reservations,
            recovery.released_tokens,
            recovery.abandoned_keys
        ),
        (2, 150, 1)
    );
    let budget = store.budget("acme").unwrap();
    assert_eq!((budget.used_tokens, budget.reserved_tokens), (7, 0));
    // The dead request's late finish charges nothing; its key is free again,
    // and the completed key still replays.
    assert_eq!(
        store.finish_task(&finish(keyed, 99, b"")).unwrap(),
        Charge::default()
    );
    started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 100))
            .unwrap(),
    );
    assert!(matches!(
        store
            .begin_task(&begin("acme", Some(("done", 1)), 10))
            .unwrap(),
        Begin::Replay { .. }
    ));
    store.probe().unwrap();
}

#[test]
fn an_abandoned_in_flight_key_is_taken_over() {
    let dir = TempDir::new("expiry");
    let mut opts = options(100);
    opts.in_flight_expiry = Duration::from_millis(20);
    let store = Store::open(&dir.db(), &opts).unwrap();
    let stuck = started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 60))
            .unwrap(),
    );
    assert_eq!(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 60))
            .unwrap(),
        Begin::InFlight
    );
    std::thread::sleep(Duration::from_millis(50));
    // The budget only fits the new reservation once the stuck one is released.
    let fresh = started(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 60))
            .unwrap(),
    );
    assert_ne!(fresh, stuck);
    assert_eq!(store.budget("acme").unwrap().reserved_tokens, 60);
    // The stuck request finishing late charges nothing and leaves the new
    // claim alone.
    assert_eq!(
        store.finish_task(&finish(stuck, 60, b"")).unwrap(),
        Charge::default()
    );
    store.finish_task(&finish(fresh, 5, b"fresh")).unwrap();
    assert_eq!(
        store
            .begin_task(&begin("acme", Some(("k", 1)), 60))
            .unwrap(),
        Begin::Replay {
            status: 201,
            body: b"fresh".to_vec()
        }
    );
}

/// Opens a second, raw connection and holds SQLite's write lock until told to
/// release it. Returns the release sender and the thread.
fn hold_write_lock(path: &Path) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let path = path.to_path_buf();
    let blocker = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).expect("open a second connection");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        locked_tx.send(()).expect("signal the lock is held");
        let _ = release_rx.recv();
        conn.execute_batch("COMMIT")
            .expect("release the write lock");
    });
    locked_rx.recv().expect("the blocker holds the lock");
    (release_tx, blocker)
}

#[test]
fn a_busy_database_is_retried_until_the_lock_is_released() {
    let dir = TempDir::new("busy");
    let path = dir.db();
    let mut opts = options(100);
    // SQLite reports busy at once, so every wait is the store's own retry; a
    // long enough schedule (about 10 s) that the release below always lands
    // inside it.
    opts.busy_timeout = Duration::ZERO;
    opts.busy_attempts = 14;
    opts.busy_backoff = Duration::from_millis(10);
    let store = Store::open(&path, &opts).unwrap();
    let (release, blocker) = hold_write_lock(&path);

    let worker = {
        let store = store.clone();
        std::thread::spawn(move || store.begin_task(&begin("acme", None, 10)))
    };
    // Release as soon as the store has hit the lock at least once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.busy_retries() == 0 {
        assert!(Instant::now() < deadline, "the store never reported busy");
        std::thread::yield_now();
    }
    release.send(()).unwrap();
    blocker.join().unwrap();
    started(worker.join().unwrap().unwrap());
    assert!(store.busy_retries() >= 1);
}

#[test]
fn a_database_busy_through_every_attempt_fails_with_busy() {
    let dir = TempDir::new("busyfail");
    let path = dir.db();
    let mut opts = options(100);
    opts.busy_timeout = Duration::ZERO;
    opts.busy_attempts = 3;
    opts.busy_backoff = Duration::from_millis(1);
    let store = Store::open(&path, &opts).unwrap();
    let (release, blocker) = hold_write_lock(&path);
    let error = store.begin_task(&begin("acme", None, 10)).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("sqlite busy after 3 attempts (begin task on database "),
        "{error}"
    );
    release.send(()).unwrap();
    blocker.join().unwrap();
    // Nothing was written, and the store works again.
    assert_eq!(store.budget("acme").unwrap().reserved_tokens, 0);
    started(store.begin_task(&begin("acme", None, 10)).unwrap());
}

//! A state-machine test of the store's budget ledger against an in-memory
//! model: random sequences of begin, finish, abort and reopen (a restart, with
//! crash recovery and possibly a changed limit), comparing every outcome and,
//! after every step, the budgets and the ledger.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orchestrator::config::BudgetConfig;
use orchestrator::store::{
    Begin, BeginTask, Charge, FinishTask, IdempotencyClaim, RedisStore, ReservationId, Store,
    StoreOptions, StoredResponse,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use redis_support::RedisServer;

mod redis_support;

const TENANTS: [&str; 2] = ["alpha", "beta"];
const KEYS: [&str; 3] = ["k1", "k2", "k3"];
/// `alpha`'s configured limit at each reopen is one of these (the second is
/// lower than what the sequences often use, to exercise clamping).
const ALPHA_LIMITS: [u64; 2] = [1_000, 300];
const BETA_LIMIT: u64 = 600;

#[derive(Clone, Debug)]
enum Transition {
    Begin {
        tenant: usize,
        key: Option<usize>,
        fingerprint: u8,
        reserve: u64,
    },
    Finish {
        which: Index,
        charge: u64,
    },
    Abort {
        which: Index,
    },
    Reopen {
        alpha_limit: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Held {
    Held,
    Settled,
}

#[derive(Clone, Debug)]
struct ModelReservation {
    tenant: usize,
    key: Option<usize>,
    tokens: u64,
    state: Held,
}

#[derive(Clone, Debug, PartialEq)]
enum KeyState {
    /// Running under this reservation (an index into `reservations`).
    InFlight(usize),
    Completed {
        status: u16,
        body: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct ModelCharge {
    reservation: usize,
    key: Option<usize>,
    tokens: u64,
    overage: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Expected {
    Begin(ExpectedBegin),
    Charge(Charge),
    Nothing,
}

/// `Begin` with the model's reservation index instead of the store's id.
#[derive(Clone, Debug, PartialEq)]
enum ExpectedBegin {
    Started(usize),
    Replay {
        status: u16,
        body: Vec<u8>,
    },
    InFlight,
    FingerprintMismatch,
    InsufficientBudget {
        limit: u64,
        used: u64,
        reserved: u64,
        requested: u64,
    },
}

#[derive(Clone, Debug)]
struct Model {
    alpha_limit: usize,
    limit: [u64; 2],
    used: [u64; 2],
    reserved: [u64; 2],
    reservations: Vec<ModelReservation>,
    keys: BTreeMap<(usize, usize), (u8, KeyState)>,
    charges: [Vec<ModelCharge>; 2],
    /// What the last transition should have returned.
    expected: Expected,
}

impl Model {
    fn configured(alpha_limit: usize) -> [u64; 2] {
        [ALPHA_LIMITS[alpha_limit], BETA_LIMIT]
    }

    fn body(reservation: usize) -> Vec<u8> {
        format!("response of reservation {reservation}").into_bytes()
    }

    fn begin(&mut self, tenant: usize, key: Option<usize>, fingerprint: u8, reserve: u64) {
        if let Some(key) = key
            && let Some((stored, state)) = self.keys.get(&(tenant, key))
        {
            self.expected = Expected::Begin(match (stored == &fingerprint, state) {
                (false, _) => ExpectedBegin::FingerprintMismatch,
                (true, KeyState::InFlight(_)) => ExpectedBegin::InFlight,
                (true, KeyState::Completed { status, body }) => ExpectedBegin::Replay {
                    status: *status,
                    body: body.clone(),
                },
            });
            return;
        }
        let available = self.limit[tenant] - self.used[tenant] - self.reserved[tenant];
        if reserve > available {
            self.expected = Expected::Begin(ExpectedBegin::InsufficientBudget {
                limit: self.limit[tenant],
                used: self.used[tenant],
                reserved: self.reserved[tenant],
                requested: reserve,
            });
            return;
        }
        let index = self.reservations.len();
        self.reserved[tenant] += reserve;
        self.reservations.push(ModelReservation {
            tenant,
            key,
            tokens: reserve,
            state: Held::Held,
        });
        if let Some(key) = key {
            self.keys
                .insert((tenant, key), (fingerprint, KeyState::InFlight(index)));
        }
        self.expected = Expected::Begin(ExpectedBegin::Started(index));
    }

    fn finish(&mut self, index: usize, charge: u64) {
        let r = self.reservations[index].clone();
        if r.state != Held::Held {
            self.expected = Expected::Charge(Charge::default());
            return;
        }
        let t = r.tenant;
        self.reserved[t] -= r.tokens;
        let headroom = self.limit[t] - self.used[t] - self.reserved[t];
        let charged = charge.min(headroom);
        self.used[t] += charged;
        self.reservations[index].state = Held::Settled;
        self.charges[t].push(ModelCharge {
            reservation: index,
            key: r.key,
            tokens: charged,
            overage: charge - charged,
        });
        if let Some(key) = r.key
            && let Some(entry) = self.keys.get_mut(&(t, key))
        {
            entry.1 = KeyState::Completed {
                status: 200,
                body: Self::body(index),
            };
        }
        self.expected = Expected::Charge(Charge {
            charged,
            overage: charge - charged,
            remaining: self.limit[t] - self.used[t] - self.reserved[t],
        });
    }

    fn release(&mut self, index: usize) {
        let r = self.reservations[index].clone();
        if r.state != Held::Held {
            return;
        }
        self.reserved[r.tenant] -= r.tokens;
        self.reservations[index].state = Held::Settled;
        if let Some(key) = r.key {
            self.keys.remove(&(r.tenant, key));
        }
    }

    fn reopen(&mut self, alpha_limit: usize) {
        for index in 0..self.reservations.len() {
            self.release(index);
        }
        self.alpha_limit = alpha_limit;
        let configured = Self::configured(alpha_limit);
        for (limit, (configured, used)) in
            self.limit.iter_mut().zip(configured.iter().zip(self.used))
        {
            *limit = (*configured).max(used);
        }
        self.expected = Expected::Nothing;
    }
}

struct LedgerMachine;

impl ReferenceStateMachine for LedgerMachine {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            alpha_limit: 0,
            limit: Model::configured(0),
            used: [0; 2],
            reserved: [0; 2],
            reservations: Vec::new(),
            keys: BTreeMap::new(),
            charges: [Vec::new(), Vec::new()],
            expected: Expected::Nothing,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let begin = (
            0..TENANTS.len(),
            proptest::option::weighted(0.7, 0..KEYS.len()),
            0..2u8,
            0..400u64,
        )
            .prop_map(|(tenant, key, fingerprint, reserve)| Transition::Begin {
                tenant,
                key,
                fingerprint,
                reserve,
            });
        let reopen =
            (0..ALPHA_LIMITS.len()).prop_map(|alpha_limit| Transition::Reopen { alpha_limit });
        if state.reservations.is_empty() {
            return prop_oneof![4 => begin, 1 => reopen].boxed();
        }
        // Charges range past the largest reservation, so overage happens.
        let finish = (any::<Index>(), 0..700u64)
            .prop_map(|(which, charge)| Transition::Finish { which, charge });
        let abort = any::<Index>().prop_map(|which| Transition::Abort { which });
        prop_oneof![4 => begin, 3 => finish, 2 => abort, 1 => reopen].boxed()
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        // Shrinking may drop the begins a finish or abort refers to.
        match transition {
            Transition::Finish { .. } | Transition::Abort { .. } => !state.reservations.is_empty(),
            _ => true,
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        match transition {
            Transition::Begin {
                tenant,
                key,
                fingerprint,
                reserve,
            } => state.begin(*tenant, *key, *fingerprint, *reserve),
            Transition::Finish { which, charge } => {
                let index = which.index(state.reservations.len());
                state.finish(index, *charge);
            }
            Transition::Abort { which } => {
                let index = which.index(state.reservations.len());
                state.release(index);
                state.expected = Expected::Nothing;
            }
            Transition::Reopen { alpha_limit } => state.reopen(*alpha_limit),
        }
        state
    }
}

/// Where the store under test keeps its state.
enum Backend {
    /// A fresh temporary SQLite file.
    Sqlite { dir: PathBuf },
    /// A fresh key prefix on the test binary's one Redis server.
    Redis { url: String, prefix: String },
}

impl Backend {
    fn open(&self, options: &StoreOptions) -> Store {
        match self {
            Backend::Sqlite { dir } => {
                Store::open(&dir.join("ledger.db"), options).expect("open the sqlite store")
            }
            Backend::Redis { url, prefix } => {
                Store::Redis(RedisStore::open(url, prefix, options).expect("open the redis store"))
            }
        }
    }
}

/// Which backend a machine tests.
trait Which {
    fn backend(case: u64) -> Option<Backend>;
}

/// The SQLite store.
struct Sqlite;

impl Which for Sqlite {
    fn backend(case: u64) -> Option<Backend> {
        let dir =
            std::env::temp_dir().join(format!("orch-store-ledger-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Some(Backend::Sqlite { dir })
    }
}

/// The Redis store, on a real `redis-server`.
struct Redis;

impl Which for Redis {
    fn backend(case: u64) -> Option<Backend> {
        static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
        let server = SERVER.get_or_init(RedisServer::start).as_ref()?;
        Some(Backend::Redis {
            url: server.url(),
            prefix: format!("ledger-{case}"),
        })
    }
}

/// The model test on one backend.
struct On<W>(PhantomData<W>);

/// The store under test.
struct Sut {
    backend: Backend,
    store: Option<Store>,
    /// The store's ids, in the order the model numbers reservations.
    ids: Vec<ReservationId>,
}

impl Sut {
    fn store(&self) -> &Store {
        self.store
            .as_ref()
            .expect("the store is open between steps")
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.store = None;
        if let Backend::Sqlite { dir } = &self.backend {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn options(alpha_limit: usize) -> StoreOptions {
    let configured = Model::configured(alpha_limit);
    let mut options = StoreOptions::new(BudgetConfig {
        default_limit_tokens: configured[1],
        tenants: BTreeMap::from([(TENANTS[0].to_owned(), configured[0])]),
    });
    // No takeovers: expiry depends on the clock, which the model does not have.
    options.in_flight_expiry = Duration::from_secs(3600);
    // No heartbeat during a case: a restart is the drop of the old store
    // (which says it is gone) and the open of a new one.
    options.instance_ttl = Duration::from_secs(3600);
    options
}

fn fingerprint(value: u8) -> [u8; 32] {
    [value; 32]
}

impl<W: Which> StateMachineTest for On<W> {
    type SystemUnderTest = Sut;
    type Reference = LedgerMachine;

    fn init_test(model: &Model) -> Sut {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let backend = W::backend(NEXT.fetch_add(1, Ordering::Relaxed))
            .expect("a backend (the redis test returns early without a server)");
        let store = backend.open(&options(model.alpha_limit));
        Sut {
            backend,
            store: Some(store),
            ids: Vec::new(),
        }
    }

    fn apply(mut sut: Sut, model: &Model, transition: Transition) -> Sut {
        match transition {
            Transition::Begin {
                tenant,
                key,
                fingerprint: print,
                reserve,
            } => {
                let outcome = sut
                    .store()
                    .begin_task(&BeginTask {
                        tenant: TENANTS[tenant].to_owned(),
                        task_id: format!("task-{}", sut.ids.len()),
                        idempotency: key.map(|k| IdempotencyClaim {
                            key: KEYS[k].to_owned(),
                            fingerprint: fingerprint(print),
                        }),
                        reserve_tokens: reserve,
                    })
                    .expect("begin_task");
                let actual = match outcome {
                    Begin::Started { reservation } => {
                        sut.ids.push(reservation);
                        ExpectedBegin::Started(sut.ids.len() - 1)
                    }
                    Begin::Replay { status, body } => ExpectedBegin::Replay { status, body },
                    Begin::InFlight => ExpectedBegin::InFlight,
                    Begin::FingerprintMismatch => ExpectedBegin::FingerprintMismatch,
                    Begin::InsufficientBudget {
                        limit,
                        used,
                        reserved,
                        requested,
                    } => ExpectedBegin::InsufficientBudget {
                        limit,
                        used,
                        reserved,
                        requested,
                    },
                };
                assert_eq!(Expected::Begin(actual), model.expected);
            }
            Transition::Finish { which, charge } => {
                let index = which.index(sut.ids.len());
                // The handler's contract: a keyed task that is charged stores
                // its response, so the key is charged once.
                let charged = sut
                    .store()
                    .finish_task(&FinishTask {
                        reservation: sut.ids[index],
                        charge_tokens: charge,
                        actor: "test".into(),
                        response: Some(StoredResponse {
                            status: 200,
                            body: Model::body(index),
                        }),
                    })
                    .expect("finish_task");
                assert_eq!(Expected::Charge(charged), model.expected);
            }
            Transition::Abort { which } => {
                let index = which.index(sut.ids.len());
                sut.store().abort_task(sut.ids[index]).expect("abort_task");
            }
            Transition::Reopen { alpha_limit } => {
                let held = sut
                    .store()
                    .budget(TENANTS[0])
                    .expect("budget")
                    .reserved_tokens
                    + sut
                        .store()
                        .budget(TENANTS[1])
                        .expect("budget")
                        .reserved_tokens;
                sut.store = None;
                let store = sut.backend.open(&options(alpha_limit));
                assert_eq!(store.recovery().released_tokens, held);
                sut.store = Some(store);
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        for (t, tenant) in TENANTS.iter().enumerate() {
            let budget = sut.store().budget(tenant).expect("budget");
            assert!(budget.used_tokens + budget.reserved_tokens <= budget.limit_tokens);
            assert_eq!(
                (
                    budget.limit_tokens,
                    budget.used_tokens,
                    budget.reserved_tokens
                ),
                (model.limit[t], model.used[t], model.reserved[t]),
                "budget of {tenant}"
            );
            assert_eq!(
                budget.remaining_tokens,
                budget.limit_tokens - budget.used_tokens - budget.reserved_tokens
            );

            let charges = sut.store().charges(tenant).expect("charges");
            let actual: Vec<ModelCharge> = charges
                .iter()
                .map(|c| ModelCharge {
                    reservation: sut
                        .ids
                        .iter()
                        .position(|id| *id == c.reservation)
                        .expect("a charge settles a reservation this test made"),
                    key: c.idempotency_key.as_ref().map(|k| {
                        KEYS.iter()
                            .position(|known| known == k)
                            .expect("a key this test uses")
                    }),
                    tokens: c.tokens,
                    overage: c.overage_tokens,
                })
                .collect();
            assert_eq!(actual, model.charges[t], "ledger of {tenant}");
            assert_eq!(
                charges.iter().map(|c| c.tokens).sum::<u64>(),
                budget.used_tokens,
                "charges of {tenant} sum to its usage"
            );
            let mut keys: Vec<&String> = charges
                .iter()
                .filter_map(|c| c.idempotency_key.as_ref())
                .collect();
            let all = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(
                keys.len(),
                all,
                "each key of {tenant} is charged at most once"
            );
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ledger_matches_the_model(sequential 1..40 => On<Sqlite>);
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    fn redis_cases(sequential 1..40 => On<Redis>);
}

/// The same model, on Redis: every promise of the SQLite store holds there
/// too, restarts included (a dropped replica's holds are released by the
/// next one to open).
#[test]
fn redis_ledger_matches_the_model() {
    if Redis::backend(u64::MAX).is_none() {
        return;
    }
    redis_cases();
}

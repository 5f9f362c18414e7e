//! The open-loop load generator.
//!
//! [`schedule`] turns a [`LoadSpec`] and a seed into the run's operations,
//! before the run: when each is meant to go out, what it is, as which tenant,
//! with which idempotency key and body. [`run`] sends each at its intended
//! time whatever became of the earlier ones (open loop), at most
//! `max_in_flight` at once, and records every operation in the history, from
//! which SLOs and invariants are checked afterwards ([`stats`]).
//!
//! Latencies count from the intended send time, not from when a request got
//! a connection slot: a closed-loop generator (or one timing from the actual
//! send) waits out a stall and so never schedules the requests that would
//! have suffered it. That is coordinated omission, and it hides exactly the
//! stalls chaos testing is after.

mod history;
pub mod personal;
mod plan;
mod run;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

pub use history::{
    ATTACKER_ADDRESS, AUTH_LOCKED, Credential, HSTS_HEADER, OVERLOADED, Op, OpKind, Outcome,
    ROTATED_KEY_ADDRESS, ROTATOR_ADDRESS, SECURITY_HEADERS, SLOW_MARKER, SUCCESSOR_KEY_ADDRESS,
    VICTIM_KEY_ID, WebhookTarget, client_address, probe_address,
};
pub use plan::{PlannedKind, PlannedOp, RoleRoute, schedule};
pub use run::{MAX_ROTATION_PROBES, ROTATION_TAIL, run};
pub use stats::{LatencySummary, Summary, WindowStats};

/// Where the load goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadTarget {
    /// Each replica's base URL as the load sees it, normally the fault
    /// proxy's client links: `http://127.0.0.1:PORT`. Operations are spread
    /// over them round robin, and an operation that reuses a key goes to the
    /// replica after the one its key was first sent to.
    pub base_urls: Vec<String>,
    /// The keys requests carry, by tenant and credential; each request
    /// carries its own as `Authorization: Bearer KEY` (none for
    /// [`Credential::Missing`]).
    pub keys: Vec<TargetKey>,
    /// The size of an oversized task's body: over the service's body limit.
    pub oversized_bytes: usize,
    /// `security.lockout.duration`: an attacker probes this long after its
    /// last guess, and [`ATTACK_TAIL`] more, to see the lockout end.
    pub lockout_duration: Duration,
    /// `security.lockout.max_failures`: the rotator sends fewer probes than
    /// this with its rotated key once the overlap may have ended.
    pub lockout_max_failures: u32,
    /// `security.keys.rotation_overlap`: how long the rotator probes with
    /// its rotated key after rotating it.
    pub rotation_overlap: Duration,
    /// The URLs of the webhook targets, when the plan has webhooks.
    pub webhooks: Option<WebhookUrls>,
}

/// The URLs a job's `webhook` gets, by [`WebhookTarget`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrls {
    /// For [`WebhookTarget::Sink`].
    pub sink: String,
    /// For [`WebhookTarget::Trap`].
    pub trap: String,
}

/// How long an attacker keeps probing past the lockout's end.
pub const ATTACK_TAIL: Duration = Duration::from_secs(1);

/// The most probes an attacker sends.
pub const MAX_ATTACK_PROBES: u64 = 1000;

/// One key of a [`LoadTarget`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetKey {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Which of the tenant's keys it is.
    pub credential: Credential,
    /// The key, in clear.
    pub key: String,
}

impl LoadTarget {
    /// Checks that the base URL is usable and every operation of `plan` has
    /// its key. [`run`] does not refuse a bad target (a request it cannot
    /// build is recorded as an [`Outcome::IoError`], one without a key is
    /// sent without and answered 401), so call this first.
    pub fn validate(&self, plan: &[PlannedOp]) -> Result<(), LoadError> {
        if self.base_urls.is_empty() {
            return Err(LoadError::InvalidBaseUrl {
                url: String::new(),
                reason: "no base url: the load needs at least one replica".to_owned(),
            });
        }
        for url in &self.base_urls {
            run::base_url(url)?;
        }
        let mut checked = std::collections::HashSet::new();
        for op in plan {
            if op.credential == Credential::Missing || !checked.insert((&op.tenant, &op.credential))
            {
                continue;
            }
            if self.key(&op.tenant, &op.credential).is_none() {
                return Err(LoadError::MissingKey {
                    tenant: op.tenant.clone(),
                    credential: op.credential.clone(),
                });
            }
        }
        Ok(())
    }

    fn key(&self, tenant: &str, credential: &Credential) -> Option<&str> {
        self.keys
            .iter()
            .find(|k| k.tenant == tenant && k.credential == *credential)
            .map(|k| k.key.as_str())
    }
}

/// Bounds on a load run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// The most operations a schedule may hold; [`schedule`] refuses more.
    pub max_requests: u64,
    /// How long operations still in flight after the last one was sent may
    /// take; then they are recorded as [`Outcome::Cancelled`].
    pub drain_timeout: Duration,
    /// The most answer bytes the history keeps ([`Op::body`]); bodies past
    /// it are counted in [`LoadOutcome::bodies_dropped`] and not kept.
    pub kept_body_bytes: u64,
}

impl Default for LoadLimits {
    /// 200,000 requests (about 55 minutes at 60 per second), 30 s of drain,
    /// 64 MiB of kept bodies (a plan is under 1 KiB, so about 100,000).
    fn default() -> LoadLimits {
        LoadLimits {
            max_requests: 200_000,
            drain_timeout: Duration::from_secs(30),
            kept_body_bytes: 64 << 20,
        }
    }
}

/// Why a load cannot be scheduled or sent.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The stages' rates add up to more operations than the limit allows.
    #[error("load schedule: {planned} requests planned, over max_requests {max_requests}")]
    TooManyRequests {
        /// Operations the stages would schedule (the integral of the rate,
        /// rounded up).
        planned: f64,
        /// The limit.
        max_requests: u64,
    },
    /// A stage's rate is negative or not a number.
    #[error("load stage {stage}: rate {rate_rps} rps is not a finite non-negative number")]
    InvalidRate {
        /// The stage's position, from 0.
        stage: usize,
        /// The rate.
        rate_rps: f64,
    },
    /// The spec names no tenant to act as.
    #[error("load tenants: none given, requests need a tenant")]
    NoTenants,
    /// Every weight of the mix is zero.
    #[error("load mix: every weight is zero")]
    EmptyMix,
    /// The mix has `forbidden` requests but every role may use every route,
    /// or `roles` requests and there is no role.
    #[error(
        "load mix: forbidden requests need a role that lacks a permission, and role requests a role"
    )]
    NothingForbidden,
    /// The idempotency reuse share is outside [0, 1].
    #[error("load idempotency_reuse: {share} is outside [0, 1]")]
    InvalidReuse {
        /// The share.
        share: f64,
    },
    /// An operation's tenant has no key of its credential in the target.
    #[error("load target: no api key for tenant {tenant:?} as {credential:?}")]
    MissingKey {
        /// The tenant.
        tenant: String,
        /// The key it lacks.
        credential: Credential,
    },
    /// The target's base URL cannot be used.
    #[error("load target: base url {url:?} is unusable: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Everything a load run produced.
#[derive(Clone, Debug, Serialize)]
pub struct LoadOutcome {
    /// One entry per planned operation, sorted by index.
    pub history: Vec<Op>,
    /// One entry per second of the load (by intended time), from 0 to the
    /// spec's duration rounded up.
    pub windows: Vec<WindowStats>,
    /// The whole run.
    pub overall: Summary,
    /// From the epoch to the end of the run (drain included), in ms.
    pub elapsed_ms: f64,
    /// Answer bodies not kept because [`LoadLimits::kept_body_bytes`] was spent.
    pub bodies_dropped: u64,
}

/// Live counters of a run, cheap to clone and to poll (a progress bar reads
/// them while [`run`] updates them).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    planned: AtomicU64,
    sent: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
}

/// The counters of a [`Progress`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Operations in the schedule.
    pub planned: u64,
    /// Operations that went on the wire.
    pub sent: u64,
    /// Operations that ended, answered or not: the sent ones, and those
    /// abandoned at the drain timeout while waiting for a slot (so it can
    /// exceed `sent`). Not-sent ones are not counted.
    pub completed: u64,
    /// Completed operations that are errors ([`Outcome::is_error`]).
    pub errors: u64,
}

impl Progress {
    /// Counters at zero.
    pub fn new() -> Progress {
        Progress::default()
    }

    /// The counters now. Each is read atomically, the four not together.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let c = &self.counters;
        ProgressSnapshot {
            planned: c.planned.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    fn set_planned(&self, planned: u64) {
        self.counters.planned.store(planned, Ordering::Relaxed);
    }

    fn add_planned(&self) {
        self.counters.planned.fetch_add(1, Ordering::Relaxed);
    }

    fn add_sent(&self) {
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn add_completed(&self, error: bool) {
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if error {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A one-way switch that stops a run (Ctrl-C): clones share it, and once
/// cancelled it stays cancelled.
#[derive(Clone, Debug)]
pub struct CancellationSignal {
    // A watch channel rather than Notify: a waiter that arrives after the
    // cancellation sees it at once.
    sender: Arc<watch::Sender<bool>>,
}

impl Default for CancellationSignal {
    fn default() -> CancellationSignal {
        CancellationSignal::new()
    }
}

impl CancellationSignal {
    /// A signal not yet cancelled.
    pub fn new() -> CancellationSignal {
        CancellationSignal {
            sender: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Cancels: every clone sees it.
    pub fn cancel(&self) {
        self.sender.send_replace(true);
    }

    /// Whether it has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.sender.borrow()
    }

    /// Completes once cancelled (at once if it already is).
    pub async fn cancelled(&self) {
        let mut receiver = self.sender.subscribe();
        // wait_for fails only once the sender is dropped, and `self` holds
        // it, so it returns only on cancellation.
        let _ = receiver.wait_for(|cancelled| *cancelled).await;
    }
}

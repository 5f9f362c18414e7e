//! A circuit breaker for one LLM provider.
//!
//! The breaker is a pure state machine: every method takes the current time
//! as an argument and never reads a clock, so tests can drive it through any
//! timeline without sleeping. The state lives behind a `std::sync::Mutex`
//! that is only held for a few field updates, never across an await.
//!
//! Calls go through [`CircuitBreaker::acquire`], which returns a [`Permit`]
//! to resolve with [`Permit::success`] or [`Permit::failure`]. Each state
//! transition starts a new *generation*; a permit only affects the breaker
//! if its generation is still current when it is resolved or dropped, so a
//! slow call admitted long ago cannot disturb a breaker that has moved on.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::CircuitBreakerConfig;

/// The shortest wait ever reported, so that a caller told to retry later
/// never busy-loops on a zero delay.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(1);

/// The externally visible state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls are admitted and consecutive failures are counted.
    Closed,
    /// Calls are rejected until the recovery timeout has passed.
    Open,
    /// A limited number of probe calls are admitted to test the provider.
    HalfOpen,
}

impl State {
    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    pub const fn code(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// A call the breaker refused to admit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open; retry after {retry_after:?}")]
pub struct Rejected {
    /// How long to wait before trying again; never zero.
    pub retry_after: Duration,
}

/// A point-in-time view of a breaker, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The state, with an expired open state reported as half-open.
    pub state: State,
    /// Failures since the last success, not counting stale outcomes.
    pub consecutive_failures: u32,
    /// How many times the breaker has opened, including reopenings after a
    /// failed probe.
    pub times_opened: u64,
    /// Half-open probes admitted and not yet resolved or dropped.
    pub probes_in_flight: u32,
}

/// A circuit breaker; share it as `Arc<CircuitBreaker>`.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every phase change; permits remember the value they saw.
    generation: u64,
    consecutive_failures: u32,
    times_opened: u64,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Closed,
    /// Stays `Open` past the recovery timeout until something looks at the
    /// breaker; every reader treats the expired case as half-open.
    Open {
        opened_at: Instant,
    },
    HalfOpen {
        in_flight: u32,
        successes: u32,
    },
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Success,
    Failure(Instant),
    Cancelled,
}

impl CircuitBreaker {
    /// Creates a closed breaker.
    ///
    /// A `failure_threshold` or `half_open_max_calls` of zero is raised to
    /// one: validation already forbids zero, and a zero probe limit would
    /// leave the breaker half-open forever.
    pub fn new(mut config: CircuitBreakerConfig) -> Self {
        config.failure_threshold = config.failure_threshold.max(1);
        config.half_open_max_calls = config.half_open_max_calls.max(1);
        let inner = Inner {
            phase: Phase::Closed,
            generation: 0,
            consecutive_failures: 0,
            times_opened: 0,
        };
        CircuitBreaker {
            config,
            inner: Mutex::new(inner),
        }
    }

    /// The configuration in effect, after the adjustments made by [`new`](Self::new).
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// Asks to make a call at `now`.
    ///
    /// The permit holds an `Arc` to the breaker so that an async caller can
    /// keep it across awaits without borrowing.
    pub fn acquire(self: &Arc<Self>, now: Instant) -> Result<Permit, Rejected> {
        let mut inner = self.lock();
        inner.expire_open(&self.config, now);
        inner.admission(&self.config, now)?;
        if let Phase::HalfOpen { in_flight, .. } = &mut inner.phase {
            *in_flight += 1;
        }
        Ok(Permit {
            breaker: Some(Arc::clone(self)),
            generation: inner.generation,
        })
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> State {
        self.snapshot(now).state
    }

    /// How long until a call would be admitted, or `None` if one would be
    /// admitted at `now`. Equals the `retry_after` of the rejection that
    /// [`acquire`](Self::acquire) would return at `now`.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        let mut inner = self.lock();
        inner.expire_open(&self.config, now);
        inner
            .admission(&self.config, now)
            .err()
            .map(|r| r.retry_after)
    }

    /// The state and counters at `now`, for metrics.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut inner = self.lock();
        inner.expire_open(&self.config, now);
        let (state, probes_in_flight) = match inner.phase {
            Phase::Closed => (State::Closed, 0),
            Phase::Open { .. } => (State::Open, 0),
            Phase::HalfOpen { in_flight, .. } => (State::HalfOpen, in_flight),
        };
        Snapshot {
            state,
            consecutive_failures: inner.consecutive_failures,
            times_opened: inner.times_opened,
            probes_in_flight,
        }
    }

    /// Locks the state. A panic while the lock was held cannot leave the
    /// fields inconsistent (each update is a few plain assignments), so a
    /// poisoned lock is used as is rather than taking the caller down too.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the outcome of a permit from `generation`. An outcome from an
    /// earlier generation is ignored entirely: it neither counts as a success
    /// or failure nor frees a probe slot, because the transition that ended
    /// its generation already reset those counters.
    fn resolve(&self, generation: u64, outcome: Outcome) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let config = &self.config;
        match (inner.phase, outcome) {
            (Phase::Closed, Outcome::Success) => inner.consecutive_failures = 0,
            (Phase::Closed, Outcome::Failure(now)) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= config.failure_threshold {
                    inner.open(now);
                }
            }
            (Phase::Closed, Outcome::Cancelled) => {}
            (
                Phase::HalfOpen {
                    in_flight,
                    successes,
                },
                Outcome::Success,
            ) => {
                inner.consecutive_failures = 0;
                let successes = successes + 1;
                if successes >= config.half_open_max_calls {
                    inner.enter(Phase::Closed);
                } else {
                    let in_flight = in_flight.saturating_sub(1);
                    inner.phase = Phase::HalfOpen {
                        in_flight,
                        successes,
                    };
                }
            }
            (Phase::HalfOpen { .. }, Outcome::Failure(now)) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                inner.open(now);
            }
            (
                Phase::HalfOpen {
                    in_flight,
                    successes,
                },
                Outcome::Cancelled,
            ) => {
                let in_flight = in_flight.saturating_sub(1);
                inner.phase = Phase::HalfOpen {
                    in_flight,
                    successes,
                };
            }
            // No permit is ever issued in an open generation, so a current
            // outcome cannot arrive here; ignoring it is the safe reading.
            (Phase::Open { .. }, _) => {}
        }
    }
}

impl Inner {
    /// Starts a new generation in `phase`.
    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
    }

    fn open(&mut self, now: Instant) {
        self.times_opened = self.times_opened.saturating_add(1);
        self.enter(Phase::Open { opened_at: now });
    }

    /// Moves an open breaker whose recovery timeout has passed to
    /// half-open. Doing this lazily, whenever the breaker is looked at, is
    /// what lets it work without a timer.
    fn expire_open(&mut self, config: &CircuitBreakerConfig, now: Instant) {
        if let Phase::Open { opened_at } = self.phase
            && now.saturating_duration_since(opened_at) >= config.recovery_timeout
        {
            self.enter(Phase::HalfOpen {
                in_flight: 0,
                successes: 0,
            });
        }
    }

    /// Whether a call would be admitted at `now`, after [`Self::expire_open`].
    fn admission(&self, config: &CircuitBreakerConfig, now: Instant) -> Result<(), Rejected> {
        let retry_after = match self.phase {
            Phase::Closed => return Ok(()),
            Phase::Open { opened_at } => config
                .recovery_timeout
                .saturating_sub(now.saturating_duration_since(opened_at)),
            Phase::HalfOpen { in_flight, .. } if in_flight < config.half_open_max_calls => {
                return Ok(());
            }
            // When the probes will finish is unknown. The recovery timeout is
            // the operator's estimate of how long the provider needs, on the
            // same scale as the open wait, whereas a fixed delay would be far
            // too long or too short for some configurations.
            Phase::HalfOpen { .. } => config.recovery_timeout,
        };
        Err(Rejected {
            retry_after: retry_after.max(MIN_RETRY_AFTER),
        })
    }
}

/// Permission to make one call. Resolve it with [`success`](Self::success)
/// or [`failure`](Self::failure); dropping it unresolved means the call was
/// cancelled, which frees its half-open probe slot without counting as
/// either outcome.
#[derive(Debug)]
#[must_use = "a permit must be resolved with `success` or `failure`"]
pub struct Permit {
    /// `None` once resolved, so that `Drop` does not resolve it again.
    breaker: Option<Arc<CircuitBreaker>>,
    generation: u64,
}

impl Permit {
    /// The call succeeded. `now` is accepted for symmetry with
    /// [`failure`](Self::failure); a success needs no timestamp.
    pub fn success(mut self, _now: Instant) {
        self.finish(Outcome::Success);
    }

    /// The call failed at `now`; if this opens the breaker, `now` is when it
    /// opened.
    pub fn failure(mut self, now: Instant) {
        self.finish(Outcome::Failure(now));
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(breaker) = self.breaker.take() {
            breaker.resolve(self.generation, outcome);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            recovery_timeout: Duration::from_millis(100),
            half_open_max_calls: 1,
        }))
    }

    #[test]
    fn state_codes() {
        assert_eq!(
            [State::Closed, State::Open, State::HalfOpen].map(State::code),
            [0, 1, 2]
        );
    }

    #[test]
    fn zero_limits_are_raised_to_one() {
        let b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 0,
            recovery_timeout: Duration::from_millis(1),
            half_open_max_calls: 0,
        });
        assert_eq!(
            (b.config().failure_threshold, b.config().half_open_max_calls),
            (1, 1)
        );
    }

    #[test]
    fn retry_after_is_never_below_one_millisecond() {
        let b = breaker();
        let t0 = Instant::now();
        b.acquire(t0).expect("closed").failure(t0);
        let almost = t0 + Duration::from_micros(99_900);
        assert_eq!(b.retry_after(almost), Some(MIN_RETRY_AFTER));
        assert_eq!(
            b.acquire(almost).err(),
            Some(Rejected {
                retry_after: MIN_RETRY_AFTER
            })
        );
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let b = breaker();
        let t0 = Instant::now() + Duration::from_secs(10);
        b.acquire(t0).expect("closed").failure(t0);
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(b.retry_after(earlier), Some(Duration::from_millis(100)));
    }

    #[test]
    fn poisoned_lock_is_recovered() {
        let b = breaker();
        let poisoner = Arc::clone(&b);
        let result = std::thread::spawn(move || {
            let _guard = poisoner.inner.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(result.is_err());
        assert!(b.inner.is_poisoned());
        let t0 = Instant::now();
        assert_eq!(b.state(t0), State::Closed);
        b.acquire(t0).expect("closed").failure(t0);
        assert_eq!(b.state(t0), State::Open);
    }
}

//! The circuit breaker against a reference model, plus worked examples.
//!
//! The model is written differently from the breaker on purpose: instead of a
//! generation counter and a probe counter it keeps a `live` flag on every
//! outstanding permit, clears all flags on every transition, and counts the
//! live permits to find the probes in flight. Time is simulated in whole
//! milliseconds from one captured `Instant`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::breaker::{CircuitBreaker, Permit, Rejected, State};
use orchestrator::config::CircuitBreakerConfig;
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Closed,
    Open { opened_ms: u64 },
    HalfOpen { successes: u32 },
}

#[derive(Clone, Debug)]
struct Model {
    threshold: u32,
    recovery_ms: u64,
    max_probes: u32,
    now_ms: u64,
    mode: Mode,
    failures: u32,
    times_opened: u64,
    /// Outstanding permits in acquisition order; `true` while the permit's
    /// outcome still matters.
    permits: Vec<bool>,
    /// What the last transition's acquire returned, if it was an acquire:
    /// `Ok` when admitted, otherwise the retry-after in milliseconds.
    last_acquire: Option<Result<(), u64>>,
}

#[derive(Clone, Debug)]
enum Transition {
    Acquire,
    ResolveSuccess(usize),
    ResolveFailure(usize),
    DropPermit(usize),
    AdvanceTime(u64),
}

impl Model {
    fn config(&self) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_threshold: self.threshold,
            recovery_timeout: Duration::from_millis(self.recovery_ms),
            half_open_max_calls: self.max_probes,
        }
    }

    fn switch(&mut self, mode: Mode) {
        self.mode = mode;
        self.permits.iter_mut().for_each(|live| *live = false);
    }

    fn open(&mut self) {
        self.times_opened += 1;
        self.switch(Mode::Open {
            opened_ms: self.now_ms,
        });
    }

    /// The mode as seen at the current time.
    fn effective(&self) -> Mode {
        match self.mode {
            Mode::Open { opened_ms } if self.now_ms >= opened_ms + self.recovery_ms => {
                Mode::HalfOpen { successes: 0 }
            }
            mode => mode,
        }
    }

    fn state(&self) -> State {
        match self.effective() {
            Mode::Closed => State::Closed,
            Mode::Open { .. } => State::Open,
            Mode::HalfOpen { .. } => State::HalfOpen,
        }
    }

    fn probes(&self) -> u32 {
        match self.effective() {
            Mode::HalfOpen { .. } => self.permits.iter().filter(|live| **live).count() as u32,
            _ => 0,
        }
    }

    /// `None` if a call would be admitted now, else the wait in milliseconds.
    fn retry_after_ms(&self) -> Option<u64> {
        match self.effective() {
            Mode::Closed => None,
            Mode::Open { opened_ms } => Some(opened_ms + self.recovery_ms - self.now_ms),
            Mode::HalfOpen { .. } if self.probes() < self.max_probes => None,
            Mode::HalfOpen { .. } => Some(self.recovery_ms),
        }
    }

    fn acquire(&mut self) {
        if self.effective() != self.mode {
            self.switch(self.effective());
        }
        self.last_acquire = Some(match self.retry_after_ms() {
            None => {
                self.permits.push(true);
                Ok(())
            }
            Some(ms) => Err(ms),
        });
    }

    fn succeed(&mut self) {
        self.failures = 0;
        if let Mode::HalfOpen { successes } = self.mode {
            if successes + 1 == self.max_probes {
                self.switch(Mode::Closed);
            } else {
                self.mode = Mode::HalfOpen {
                    successes: successes + 1,
                };
            }
        }
    }

    fn fail(&mut self) {
        self.failures += 1;
        match self.mode {
            Mode::Closed if self.failures < self.threshold => {}
            _ => self.open(),
        }
    }
}

struct BreakerModel;

impl ReferenceStateMachine for BreakerModel {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        (1..=4u32, 10..=200u64, 1..=3u32)
            .prop_map(|(threshold, recovery_ms, max_probes)| Model {
                threshold,
                recovery_ms,
                max_probes,
                now_ms: 0,
                mode: Mode::Closed,
                failures: 0,
                times_opened: 0,
                permits: Vec::new(),
                last_acquire: None,
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let advance =
            prop_oneof![0..=5u64, 0..=state.recovery_ms + 20].prop_map(Transition::AdvanceTime);
        if state.permits.is_empty() {
            return prop_oneof![3 => Just(Transition::Acquire), 1 => advance].boxed();
        }
        let index = 0..state.permits.len();
        prop_oneof![
            3 => Just(Transition::Acquire),
            2 => index.clone().prop_map(Transition::ResolveSuccess),
            3 => index.clone().prop_map(Transition::ResolveFailure),
            1 => index.prop_map(Transition::DropPermit),
            2 => advance,
        ]
        .boxed()
    }

    /// Shrinking removes transitions, which can leave an index pointing past
    /// the outstanding permits.
    fn preconditions(state: &Model, transition: &Transition) -> bool {
        match *transition {
            Transition::ResolveSuccess(i)
            | Transition::ResolveFailure(i)
            | Transition::DropPermit(i) => i < state.permits.len(),
            Transition::Acquire | Transition::AdvanceTime(_) => true,
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        state.last_acquire = None;
        match *transition {
            Transition::Acquire => state.acquire(),
            Transition::ResolveSuccess(i) => {
                if state.permits.remove(i) {
                    state.succeed();
                }
            }
            Transition::ResolveFailure(i) => {
                if state.permits.remove(i) {
                    state.fail();
                }
            }
            Transition::DropPermit(i) => {
                state.permits.remove(i);
            }
            Transition::AdvanceTime(ms) => state.now_ms += ms,
        }
        state
    }
}

struct Sut {
    breaker: Arc<CircuitBreaker>,
    start: Instant,
    now: Instant,
    permits: Vec<Permit>,
}

impl StateMachineTest for BreakerModel {
    type SystemUnderTest = Sut;
    type Reference = BreakerModel;

    fn init_test(model: &Model) -> Sut {
        let start = Instant::now();
        Sut {
            breaker: Arc::new(CircuitBreaker::new(model.config())),
            start,
            now: start,
            permits: Vec::new(),
        }
    }

    fn apply(mut sut: Sut, model: &Model, transition: Transition) -> Sut {
        match transition {
            Transition::Acquire => {
                let result = sut.breaker.acquire(sut.now);
                let expected = model.last_acquire.map(|r| {
                    r.map_err(|ms| Rejected {
                        retry_after: Duration::from_millis(ms),
                    })
                });
                assert_eq!(
                    result.as_ref().map(|_| ()).map_err(Clone::clone),
                    expected.expect("model saw an acquire")
                );
                sut.permits.extend(result.ok());
            }
            Transition::ResolveSuccess(i) => sut.permits.remove(i).success(sut.now),
            Transition::ResolveFailure(i) => sut.permits.remove(i).failure(sut.now),
            Transition::DropPermit(i) => drop(sut.permits.remove(i)),
            Transition::AdvanceTime(ms) => sut.now += Duration::from_millis(ms),
        }
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        assert_eq!(sut.now - sut.start, Duration::from_millis(model.now_ms));
        assert_eq!(sut.permits.len(), model.permits.len());
        assert_eq!(sut.breaker.state(sut.now), model.state());
        assert_eq!(
            sut.breaker.retry_after(sut.now),
            model.retry_after_ms().map(Duration::from_millis)
        );
        let snapshot = sut.breaker.snapshot(sut.now);
        assert_eq!(snapshot.state, model.state());
        assert_eq!(snapshot.consecutive_failures, model.failures);
        assert_eq!(snapshot.times_opened, model.times_opened);
        assert_eq!(snapshot.probes_in_flight, model.probes());
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn breaker_matches_model(sequential 1..120 => BreakerModel);
}

// Worked examples.

const RECOVERY: Duration = Duration::from_millis(100);

fn breaker(failure_threshold: u32, half_open_max_calls: u32) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold,
        recovery_timeout: RECOVERY,
        half_open_max_calls,
    }))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fail(b: &Arc<CircuitBreaker>, now: Instant) {
    b.acquire(now).expect("admitted").failure(now);
}

fn succeed(b: &Arc<CircuitBreaker>, now: Instant) {
    b.acquire(now).expect("admitted").success(now);
}

#[test]
fn opens_after_exactly_the_threshold() {
    let b = breaker(3, 1);
    let t0 = Instant::now();
    fail(&b, t0);
    fail(&b, t0);
    succeed(&b, t0);
    fail(&b, t0);
    fail(&b, t0);
    assert_eq!(b.state(t0), State::Closed);
    assert_eq!(b.snapshot(t0).consecutive_failures, 2);
    fail(&b, t0);
    assert_eq!(b.state(t0), State::Open);
    assert_eq!(b.snapshot(t0).times_opened, 1);
}

#[test]
fn rejection_reports_time_left() {
    let b = breaker(1, 1);
    let t0 = Instant::now();
    fail(&b, t0);
    assert_eq!(
        b.acquire(t0 + ms(30)).err(),
        Some(Rejected {
            retry_after: ms(70)
        })
    );
    assert_eq!(b.retry_after(t0 + ms(99)), Some(ms(1)));
    assert_eq!(b.retry_after(t0 + ms(100)), None);
    assert_eq!(b.state(t0 + ms(100)), State::HalfOpen);
}

#[test]
fn recovers_through_half_open_after_successes() {
    let b = breaker(1, 2);
    let t0 = Instant::now();
    fail(&b, t0);
    let t1 = t0 + RECOVERY;
    let first = b.acquire(t1).expect("first probe");
    let second = b.acquire(t1).expect("second probe");
    assert_eq!(
        b.acquire(t1).err(),
        Some(Rejected {
            retry_after: RECOVERY
        })
    );
    first.success(t1);
    assert_eq!(b.state(t1), State::HalfOpen);
    second.success(t1);
    assert_eq!(b.state(t1), State::Closed);
    assert_eq!(b.retry_after(t1), None);
}

#[test]
fn failed_probe_reopens() {
    let b = breaker(2, 2);
    let t0 = Instant::now();
    fail(&b, t0);
    fail(&b, t0);
    let t1 = t0 + ms(150);
    succeed(&b, t1);
    fail(&b, t1);
    assert_eq!(b.state(t1), State::Open);
    assert_eq!(b.retry_after(t1 + ms(40)), Some(ms(60)));
    assert_eq!(b.snapshot(t1).times_opened, 2);
}

#[test]
fn dropped_probe_frees_its_slot() {
    let b = breaker(1, 1);
    let t0 = Instant::now();
    fail(&b, t0);
    let t1 = t0 + RECOVERY;
    let probe = b.acquire(t1).expect("probe");
    assert!(b.acquire(t1).is_err());
    drop(probe);
    assert_eq!(b.snapshot(t1).probes_in_flight, 0);
    assert_eq!(b.snapshot(t1).consecutive_failures, 1);
    succeed(&b, t1);
    assert_eq!(b.state(t1), State::Closed);
}

#[test]
fn stale_outcomes_are_ignored() {
    let b = breaker(1, 1);
    let t0 = Instant::now();
    let slow_failure = b.acquire(t0).expect("closed");
    let slow_success = b.acquire(t0).expect("closed");
    let slow_drop = b.acquire(t0).expect("closed");
    fail(&b, t0);
    // Admitted while closed; the breaker has opened since.
    slow_failure.failure(t0 + ms(10));
    assert_eq!(b.retry_after(t0 + ms(10)), Some(ms(90)));
    let t1 = t0 + RECOVERY;
    let probe = b.acquire(t1).expect("probe");
    // A stale drop must not free the probe's slot, nor a stale success close it.
    drop(slow_drop);
    slow_success.success(t1);
    assert_eq!(b.state(t1), State::HalfOpen);
    assert!(b.acquire(t1).is_err());
    probe.success(t1);
    assert_eq!(b.state(t1), State::Closed);
    assert_eq!(b.snapshot(t1).times_opened, 1);
}

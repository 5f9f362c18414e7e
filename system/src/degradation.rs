//! Degradation levels: how much of its work the service is willing to do,
//! from what its health signals say. Five levels, from `normal` to
//! `emergency`; each sheds a documented class of work (the README's
//! "Degradation" section). This module is the pure part: the signals' level
//! ([`target`]) and the hysteresis that turns a stream of targets into level
//! changes ([`LevelState::observe`]), on millisecond timestamps so that tests
//! and property checks drive it without a clock.
//!
//! Hysteresis: the level rises one step once the signals have asked for a
//! higher level continuously for `enter_after`, and falls one step once they
//! have asked for a lower one continuously for `leave_after`, which is longer.
//! A blip shorter than `enter_after` changes nothing; recovery is gradual,
//! one level per `leave_after`.

use std::time::Duration;

use serde::Serialize;

/// A degradation level, in order of how much is shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Everything is served.
    Normal,
    /// Background work pauses (webhook retries).
    #[serde(rename = "level_1")]
    Level1,
    /// Jobs are accepted only up to half the queue.
    #[serde(rename = "level_2")]
    Level2,
    /// New jobs and tasks are refused with 503 and `Retry-After`.
    #[serde(rename = "level_3")]
    Level3,
    /// Only reads and health are served.
    Emergency,
}

impl Level {
    /// Every level, in order.
    pub const ALL: [Level; 5] = [
        Level::Normal,
        Level::Level1,
        Level::Level2,
        Level::Level3,
        Level::Emergency,
    ];

    /// The name used in `/health`, the metric's value label and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Level1 => "level_1",
            Level::Level2 => "level_2",
            Level::Level3 => "level_3",
            Level::Emergency => "emergency",
        }
    }

    /// Its position, 0 (normal) to 4 (emergency): the metric's value.
    pub fn index(self) -> usize {
        self as usize
    }

    fn up(self) -> Level {
        Level::ALL[(self.index() + 1).min(Level::ALL.len() - 1)]
    }

    fn down(self) -> Level {
        Level::ALL[self.index().saturating_sub(1)]
    }
}

/// What the service knows about its own health at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Signals {
    /// The share of failed requests over the configured window, in [0, 1].
    pub error_rate: f64,
    /// Providers whose circuit breaker is open.
    pub open_breakers: u32,
    /// Providers configured.
    pub providers: u32,
    /// Jobs waiting for a worker.
    pub queue_depth: u64,
    /// `jobs.queue_capacity`.
    pub queue_capacity: u64,
    /// How long the last store probe took; `None` when it failed.
    pub store_latency_ms: Option<u64>,
}

/// The thresholds [`target`] judges signals by (`degradation` config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Error rate from which the service is at level 1.
    pub degraded_error_rate: f64,
    /// Error rate from which it is at level 3 (level 2 halfway between).
    pub unhealthy_error_rate: f64,
    /// A store probe slower than this puts the service at level 2.
    pub slow_store_ms: u64,
}

/// The level the signals call for: the worst of what each signal calls for.
/// Each signal's level is in the README's table; a failed store probe is
/// an emergency, because nothing durable can be done.
pub fn target(signals: &Signals, thresholds: &Thresholds) -> Level {
    let errors = {
        let (low, high) = (
            thresholds.degraded_error_rate,
            thresholds.unhealthy_error_rate,
        );
        let e = signals.error_rate;
        if e >= high {
            Level::Level3
        } else if e >= (low + high) / 2.0 {
            Level::Level2
        } else if e >= low {
            Level::Level1
        } else {
            Level::Normal
        }
    };
    // Every breaker open calls for level 2, not 3: the breakers already fail
    // tasks fast, and refusing tasks would keep the half-open probe that
    // closes a breaker from ever being sent.
    let breakers = if signals.providers > 0 && signals.open_breakers >= signals.providers {
        Level::Level2
    } else if signals.open_breakers > 0 {
        Level::Level1
    } else {
        Level::Normal
    };
    let queue = {
        // Fill in tenths, in integers: 5/10 level 1, 3/4 level 2, 9/10 level 3.
        let depth = u128::from(signals.queue_depth) * 100;
        let capacity = u128::from(signals.queue_capacity.max(1));
        if depth >= capacity * 90 {
            Level::Level3
        } else if depth >= capacity * 75 {
            Level::Level2
        } else if depth >= capacity * 50 {
            Level::Level1
        } else {
            Level::Normal
        }
    };
    let store = match signals.store_latency_ms {
        None => Level::Emergency,
        Some(ms) if ms >= thresholds.slow_store_ms => Level::Level2,
        Some(_) => Level::Normal,
    };
    errors.max(breakers).max(queue).max(store)
}

/// What a request asks of the service, as far as shedding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// `POST /v1/tasks`.
    Task,
    /// `POST /v1/jobs`.
    Job,
    /// Any other write: replays, key changes.
    Write,
    /// Reads (`GET`) and health.
    Read,
}

/// Whether `level` refuses `work` outright (503 `degraded`). Level 2's
/// partial refusal of jobs is [`job_capacity`]; level 1 sheds only
/// background work ([`pauses_retries`]).
pub fn sheds(level: Level, work: Work) -> bool {
    match work {
        Work::Task | Work::Job => level >= Level::Level3,
        Work::Write => level >= Level::Emergency,
        Work::Read => false,
    }
}

/// How many jobs may be queued or running at `level`: all of
/// `queue_capacity`, or half of it (at least one) from level 2.
pub fn job_capacity(level: Level, queue_capacity: u32) -> u32 {
    if level >= Level::Level2 {
        (queue_capacity / 2).max(1)
    } else {
        queue_capacity
    }
}

/// Whether webhook retries (background work) wait at `level`. First
/// deliveries still go: a job's result is not held back, only re-sends.
pub fn pauses_retries(level: Level) -> bool {
    level >= Level::Level1
}

/// Fewer requests than this in the window say nothing about the error rate:
/// one failure among three requests is not a 33% failing service.
pub const MIN_REQUESTS: u64 = 20;

/// The most one-second buckets an [`ErrorWindow`] keeps (the longest
/// `degradation.window`, one hour).
const MAX_BUCKETS: u64 = 3_600;

/// Requests and failures per second over the last `window`, for the error
/// rate signal. Memory is bounded by the window (one bucket per second).
#[derive(Clone, Debug)]
pub struct ErrorWindow {
    window_s: u64,
    /// (second, requests, failures), oldest first, one per second seen.
    buckets: std::collections::VecDeque<(u64, u64, u64)>,
}

impl ErrorWindow {
    /// An empty window of `window` (rounded up to whole seconds, at most an
    /// hour).
    pub fn new(window: Duration) -> ErrorWindow {
        let window_s = window
            .as_millis()
            .div_ceil(1_000)
            .clamp(1, u128::from(MAX_BUCKETS));
        ErrorWindow {
            window_s: u64::try_from(window_s).unwrap_or(MAX_BUCKETS),
            buckets: std::collections::VecDeque::new(),
        }
    }

    /// Counts one answered request at `now_ms` (time order).
    pub fn record(&mut self, now_ms: u64, failed: bool) {
        let second = now_ms / 1_000;
        match self.buckets.back_mut() {
            Some((s, requests, failures)) if *s == second => {
                *requests += 1;
                *failures += u64::from(failed);
            }
            _ => self.buckets.push_back((second, 1, u64::from(failed))),
        }
        self.expire(second);
    }

    /// The share of failed requests in the window ending at `now_ms`; 0 below
    /// [`MIN_REQUESTS`].
    pub fn rate(&mut self, now_ms: u64) -> f64 {
        self.expire(now_ms / 1_000);
        let (requests, failures) = self
            .buckets
            .iter()
            .fold((0u64, 0u64), |(r, f), &(_, br, bf)| (r + br, f + bf));
        if requests < MIN_REQUESTS {
            return 0.0;
        }
        failures as f64 / requests as f64
    }

    fn expire(&mut self, second: u64) {
        while let Some(&(s, _, _)) = self.buckets.front() {
            if s + self.window_s <= second {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }
}

/// How long a signal must hold before the level follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    /// Rising: the signals must ask for more for this long.
    pub enter_after: Duration,
    /// Falling: the signals must ask for less for this long (longer).
    pub leave_after: Duration,
}

/// One level change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The level left.
    pub from: Level,
    /// The level entered, one step away.
    pub to: Level,
}

/// The current level and how long the signals have disagreed with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelState {
    level: Level,
    /// Since when the target has been above the level, continuously.
    rising_since_ms: Option<u64>,
    /// Since when the target has been below the level, continuously.
    falling_since_ms: Option<u64>,
}

impl Default for LevelState {
    fn default() -> Self {
        LevelState::new()
    }
}

impl LevelState {
    /// Normal, with no disagreement.
    pub fn new() -> LevelState {
        LevelState {
            level: Level::Normal,
            rising_since_ms: None,
            falling_since_ms: None,
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Takes the level the signals call for at `now_ms` (observations come
    /// in time order) and moves one step toward it when the disagreement has
    /// lasted long enough; returns the change, if any. After a step the
    /// clock starts again, so each further step needs its own wait.
    pub fn observe(&mut self, target: Level, now_ms: u64, h: &Hysteresis) -> Option<Transition> {
        let waited = |since: u64, wait: Duration| {
            u128::from(now_ms.saturating_sub(since)) >= wait.as_millis()
        };
        let from = self.level;
        if target > from {
            self.falling_since_ms = None;
            let since = *self.rising_since_ms.get_or_insert(now_ms);
            if waited(since, h.enter_after) {
                self.level = from.up();
                self.rising_since_ms = (target > self.level).then_some(now_ms);
            }
        } else if target < from {
            self.rising_since_ms = None;
            let since = *self.falling_since_ms.get_or_insert(now_ms);
            if waited(since, h.leave_after) {
                self.level = from.down();
                self.falling_since_ms = (target < self.level).then_some(now_ms);
            }
        } else {
            self.rising_since_ms = None;
            self.falling_since_ms = None;
        }
        (self.level != from).then_some(Transition {
            from,
            to: self.level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: Hysteresis = Hysteresis {
        enter_after: Duration::from_millis(2_000),
        leave_after: Duration::from_millis(10_000),
    };

    const T: Thresholds = Thresholds {
        degraded_error_rate: 0.25,
        unhealthy_error_rate: 0.5,
        slow_store_ms: 1_000,
    };

    fn healthy() -> Signals {
        Signals {
            error_rate: 0.0,
            open_breakers: 0,
            providers: 2,
            queue_depth: 0,
            queue_capacity: 1_000,
            store_latency_ms: Some(3),
        }
    }

    #[test]
    fn each_signal_calls_for_its_level_and_the_worst_wins() {
        let cases: Vec<(&str, Signals, Level)> = vec![
            ("healthy", healthy(), Level::Normal),
            (
                "errors at the degraded rate",
                Signals {
                    error_rate: 0.25,
                    ..healthy()
                },
                Level::Level1,
            ),
            (
                "errors halfway",
                Signals {
                    error_rate: 0.375,
                    ..healthy()
                },
                Level::Level2,
            ),
            (
                "errors at the unhealthy rate",
                Signals {
                    error_rate: 0.5,
                    ..healthy()
                },
                Level::Level3,
            ),
            (
                "one breaker of two open",
                Signals {
                    open_breakers: 1,
                    ..healthy()
                },
                Level::Level1,
            ),
            (
                "every breaker open",
                Signals {
                    open_breakers: 2,
                    ..healthy()
                },
                Level::Level2,
            ),
            (
                "queue half full",
                Signals {
                    queue_depth: 500,
                    ..healthy()
                },
                Level::Level1,
            ),
            (
                "queue three quarters full",
                Signals {
                    queue_depth: 750,
                    ..healthy()
                },
                Level::Level2,
            ),
            (
                "queue nine tenths full",
                Signals {
                    queue_depth: 900,
                    ..healthy()
                },
                Level::Level3,
            ),
            (
                "slow store",
                Signals {
                    store_latency_ms: Some(1_000),
                    ..healthy()
                },
                Level::Level2,
            ),
            (
                "store down",
                Signals {
                    store_latency_ms: None,
                    ..healthy()
                },
                Level::Emergency,
            ),
            (
                "a slow store, every breaker open and the queue nine tenths full",
                Signals {
                    store_latency_ms: Some(2_000),
                    open_breakers: 2,
                    queue_depth: 900,
                    ..healthy()
                },
                Level::Level3,
            ),
        ];
        for (case, signals, level) in cases {
            assert_eq!(target(&signals, &T), level, "{case}");
        }
    }

    #[test]
    fn a_blip_shorter_than_enter_after_changes_nothing() {
        let mut s = LevelState::new();
        assert_eq!(s.observe(Level::Level3, 0, &H), None);
        assert_eq!(s.observe(Level::Level3, 1_999, &H), None);
        assert_eq!(s.observe(Level::Normal, 2_000, &H), None);
        assert_eq!(s.observe(Level::Level3, 2_500, &H), None);
        assert_eq!(s.level(), Level::Normal);
        assert_eq!(
            s.observe(Level::Level3, 4_500, &H),
            Some(Transition {
                from: Level::Normal,
                to: Level::Level1
            })
        );
        // Each further step waits again.
        assert_eq!(s.observe(Level::Level3, 6_000, &H), None);
        assert_eq!(
            s.observe(Level::Level3, 6_500, &H),
            Some(Transition {
                from: Level::Level1,
                to: Level::Level2
            })
        );
    }

    #[test]
    fn recovery_is_one_level_per_leave_after() {
        let mut s = LevelState::new();
        let mut now = 0;
        while s.level() < Level::Level2 {
            s.observe(Level::Level2, now, &H);
            now += 500;
        }
        let recovered_from = now;
        while s.level() > Level::Normal {
            s.observe(Level::Normal, now, &H);
            now += 500;
        }
        // Two steps down, each after a full leave_after.
        assert!(now - recovered_from >= 2 * 10_000, "{now} {recovered_from}");
        assert!(
            now - recovered_from <= 2 * 10_000 + 1_000,
            "{now} {recovered_from}"
        );
    }

    #[test]
    fn the_error_window_counts_the_last_window_and_needs_enough_requests() {
        let mut w = ErrorWindow::new(Duration::from_secs(5));
        for i in 0..(MIN_REQUESTS - 1) {
            w.record(i * 10, true);
        }
        assert_eq!(w.rate(200), 0.0, "too few requests to judge");
        w.record(300, false);
        assert!((w.rate(300) - 19.0 / 20.0).abs() < 1e-9);
        // Healthy requests in seconds 1 to 4 dilute the failures of second 0.
        for second in 1..5u64 {
            for i in 0..20u64 {
                w.record(second * 1_000 + i, false);
            }
        }
        assert!((w.rate(4_999) - 19.0 / 100.0).abs() < 1e-9);
        // Second 0 leaves the window at 5 s.
        assert!(w.rate(5_000).abs() < 1e-9);
        // And everything leaves it 5 s after the last request.
        assert_eq!(w.rate(10_000), 0.0);
        assert!(w.buckets.is_empty());
    }

    #[test]
    fn each_level_sheds_its_documented_class_of_work_and_what_the_levels_below_shed() {
        let table: Vec<(Level, [bool; 4], u32, bool)> = vec![
            // (level, sheds [task, job, write, read], job capacity of 100, pauses retries)
            (Level::Normal, [false, false, false, false], 100, false),
            (Level::Level1, [false, false, false, false], 100, true),
            (Level::Level2, [false, false, false, false], 50, true),
            (Level::Level3, [true, true, false, false], 50, true),
            (Level::Emergency, [true, true, true, false], 50, true),
        ];
        for (level, shed, capacity, pauses) in table {
            let works = [Work::Task, Work::Job, Work::Write, Work::Read];
            let got = works.map(|w| sheds(level, w));
            assert_eq!(got, shed, "{level:?}");
            assert_eq!(job_capacity(level, 100), capacity, "{level:?}");
            assert_eq!(pauses_retries(level), pauses, "{level:?}");
        }
        assert_eq!(job_capacity(Level::Level2, 1), 1, "never zero");
    }

    fn level() -> impl Strategy<Value = Level> {
        prop::sample::select(Level::ALL.to_vec())
    }

    proptest! {
        /// Over any sequence of targets: every change is one step; a rise
        /// comes only after the targets were above the old level for
        /// enter_after, a fall only after they were below it for
        /// leave_after; and a long calm brings the level back to normal.
        #[test]
        fn the_level_follows_the_targets_with_hysteresis(
            steps in prop::collection::vec((level(), 1u64..1_500), 1..200),
        ) {
            let mut s = LevelState::new();
            let mut seen: Vec<(u64, Level)> = Vec::new();
            let mut now = 0u64;
            for (target, gap) in steps {
                seen.push((now, target));
                let before = s.level();
                if let Some(t) = s.observe(target, now, &H) {
                    prop_assert_eq!(t.from, before);
                    prop_assert_eq!(t.to.index().abs_diff(before.index()), 1);
                    let wait = if t.to > t.from { H.enter_after } else { H.leave_after };
                    let wait_ms = wait.as_millis() as u64;
                    prop_assert!(now >= wait_ms, "changed at {} before any wait", now);
                    for (at, earlier) in seen.iter().filter(|(at, _)| *at + wait_ms >= now) {
                        if t.to > t.from {
                            prop_assert!(*earlier > t.from, "rose at {} but {:?} at {}", now, earlier, at);
                        } else {
                            prop_assert!(*earlier < t.from, "fell at {} but {:?} at {}", now, earlier, at);
                        }
                    }
                }
                now += gap;
            }
            let calm_until = now + 4 * H.leave_after.as_millis() as u64 + 1_000;
            while now <= calm_until {
                s.observe(Level::Normal, now, &H);
                now += 500;
            }
            prop_assert_eq!(s.level(), Level::Normal);
        }
    }
}

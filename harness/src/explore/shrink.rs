//! Shrinking: the smallest schedule that still fails, found by trying
//! smaller ones. A pure function of a `trial` callback (in `gauntlet
//! explore` a full run judged by the failing check; in tests, a predicate),
//! so it can be checked on synthetic failures.
//!
//! First the faults are deleted by delta debugging over the set (the empty
//! schedule first: a failure without faults says the most); then each
//! fault is shortened, moved earlier and made milder, and the load is
//! shortened, until a round changes nothing. Each dimension tries its
//! least value first and then halfway, so a round costs a few trials per
//! fault. A candidate is kept only when the trial says it still fails; a
//! candidate never grows anything, so neither does the result.

use serde::Serialize;

use super::schedule::{GRAIN_MS, Schedule};

/// What a trial of a candidate found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trial {
    /// It still fails the same check: the candidate is kept.
    Fails,
    /// It passes (or fails another way): the candidate is dropped.
    Passes,
    /// No more trials may be made (budget spent, run limit, interrupted).
    Stop,
}

/// What bounds the candidates, besides the trial.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// At most this many faults at once ([`Schedule::fits`]).
    pub max_at_once: usize,
    /// The shortest each template's faults may be, by template index
    /// (`None` for an instant template).
    pub min_for_ms: Vec<Option<u64>>,
    /// The shortest load.
    pub min_load_ms: u64,
    /// Time kept after the last fault's end when the load is shortened.
    pub tail_ms: u64,
}

/// One candidate tried.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// What changed, in words (`remove latency-2`, `earlier kill-1: 4s → 0s`).
    pub change: String,
    /// Whether it still failed, and was kept.
    pub kept: bool,
    /// The candidate.
    pub schedule: Schedule,
}

/// What shrinking reached.
#[derive(Clone, Debug, Serialize)]
pub struct Shrunk {
    /// The smallest schedule that failed.
    pub schedule: Schedule,
    /// Every candidate tried, in order.
    pub steps: Vec<Step>,
    /// Whether it went as far as it could; false when a trial said stop.
    pub finished: bool,
}

/// The most rounds over the dimensions after deletion.
const MAX_ROUNDS: usize = 4;
/// Intensities closer than this are the same.
const INTENSITY_GRAIN: f64 = 0.01;

/// Shrinks `failing` (which failed) as far as `trial` allows.
pub fn shrink(
    failing: &Schedule,
    bounds: &Bounds,
    trial: &mut dyn FnMut(&Schedule) -> Trial,
) -> Shrunk {
    let mut s = Shrinker {
        current: failing.clone(),
        steps: Vec::new(),
        stopped: false,
        bounds,
        trial,
    };
    s.delete();
    for _ in 0..MAX_ROUNDS {
        if s.stopped || !s.round() {
            break;
        }
    }
    Shrunk {
        schedule: s.current,
        steps: s.steps,
        finished: !s.stopped,
    }
}

struct Shrinker<'a> {
    current: Schedule,
    steps: Vec<Step>,
    stopped: bool,
    bounds: &'a Bounds,
    trial: &'a mut dyn FnMut(&Schedule) -> Trial,
}

impl Shrinker<'_> {
    /// Tries a candidate; keeps it when it still fails.
    fn attempt(&mut self, candidate: Schedule, change: String) -> bool {
        if self.stopped || candidate == self.current || !candidate.fits(self.bounds.max_at_once) {
            return false;
        }
        let outcome = (self.trial)(&candidate);
        if outcome == Trial::Stop {
            self.stopped = true;
            return false;
        }
        let kept = outcome == Trial::Fails;
        self.steps.push(Step {
            change,
            kept,
            schedule: candidate.clone(),
        });
        if kept {
            self.current = candidate;
        }
        kept
    }

    /// Delta debugging over the faults: remove one of `n` chunks while that
    /// still fails, refining `n` until single faults are tried.
    fn delete(&mut self) {
        if self.current.faults.is_empty() {
            return;
        }
        let mut empty = self.current.clone();
        empty.faults.clear();
        if self.attempt(empty, "remove every fault".to_owned()) {
            return;
        }
        let mut n = 2;
        while self.current.faults.len() >= 2 && !self.stopped {
            let len = self.current.faults.len();
            let chunk = len.div_ceil(n);
            let mut reduced = false;
            for start in (0..len).step_by(chunk) {
                let end = (start + chunk).min(len);
                let mut candidate = self.current.clone();
                let removed: Vec<String> =
                    candidate.faults.drain(start..end).map(|f| f.name).collect();
                if self.attempt(candidate, format!("remove {}", removed.join(", "))) {
                    n = (n - 1).max(2);
                    reduced = true;
                    break;
                }
            }
            if !reduced {
                if n >= len {
                    break;
                }
                n = (n * 2).min(len);
            }
        }
    }

    /// One pass over every fault's dimensions and the load; whether
    /// anything was kept.
    fn round(&mut self) -> bool {
        let mut changed = false;
        for i in 0..self.current.faults.len() {
            changed |= self.shorten(i);
            changed |= self.earlier(i);
            for r in 0..self.current.faults[i].intensity.len() {
                changed |= self.milder(i, r);
            }
        }
        changed |= self.shorter_load();
        changed
    }

    /// Tries `to(value)` for the least value and then halfway, keeping the
    /// first that fails; values are on the grain and below the current one.
    fn toward(
        &mut self,
        current: u64,
        least: u64,
        what: &str,
        set: &dyn Fn(&mut Schedule, u64),
    ) -> bool {
        let halfway = (current + least) / 2 / GRAIN_MS * GRAIN_MS;
        for target in [least, halfway.max(least)] {
            if target + GRAIN_MS > current {
                continue;
            }
            let mut candidate = self.current.clone();
            set(&mut candidate, target);
            let change = format!(
                "{what}: {} → {}",
                super::schedule::fmt_ms(current),
                super::schedule::fmt_ms(target)
            );
            if self.attempt(candidate, change) {
                return true;
            }
        }
        false
    }

    fn shorten(&mut self, i: usize) -> bool {
        let fault = &self.current.faults[i];
        let (Some(lasts), Some(Some(least))) = (
            fault.for_ms,
            self.bounds.min_for_ms.get(fault.template).copied(),
        ) else {
            return false;
        };
        let what = format!("shorten {}", fault.name);
        self.toward(lasts, least, &what, &|s, v| s.faults[i].for_ms = Some(v))
    }

    fn earlier(&mut self, i: usize) -> bool {
        let fault = &self.current.faults[i];
        let what = format!("earlier {}", fault.name);
        let at = fault.at_ms;
        self.toward(at, 0, &what, &|s, v| s.faults[i].at_ms = v)
    }

    fn milder(&mut self, i: usize, r: usize) -> bool {
        let fault = &self.current.faults[i];
        let t = fault.intensity[r];
        let name = fault.name.clone();
        for target in [0.0, (t / 2.0 * 100.0).floor() / 100.0] {
            if t - target < INTENSITY_GRAIN {
                continue;
            }
            let mut candidate = self.current.clone();
            candidate.faults[i].intensity[r] = target;
            let change = format!("milder {name} (range {r}): {t:.2} → {target:.2}");
            if self.attempt(candidate, change) {
                return true;
            }
        }
        false
    }

    fn shorter_load(&mut self) -> bool {
        let least = (self.current.last_end_ms() + self.bounds.tail_ms)
            .max(self.bounds.min_load_ms)
            .div_ceil(GRAIN_MS)
            * GRAIN_MS;
        let load = self.current.load_ms;
        self.toward(load, least, "shorter load", &|s, v| s.load_ms = v)
    }
}

#[cfg(test)]
mod tests {
    use super::super::schedule::Drawn;
    use super::*;
    use proptest::prelude::*;

    const TEMPLATES: usize = 4;

    fn bounds() -> Bounds {
        Bounds {
            max_at_once: 8,
            min_for_ms: vec![Some(500), Some(1000), None, Some(500)],
            min_load_ms: 2000,
            tail_ms: 1000,
        }
    }

    /// Schedules of 1 to 6 faults, each on a target of its own, so any
    /// subset fits.
    fn schedules() -> impl Strategy<Value = Schedule> {
        proptest::collection::vec((0..TEMPLATES, 0u64..100, 5u64..40, 0u32..=100), 1..=6).prop_map(
            |drawn| {
                let faults: Vec<Drawn> = drawn
                    .into_iter()
                    .enumerate()
                    .map(|(k, (template, at, lasts, t))| Drawn {
                        name: format!("f-{k}"),
                        template,
                        target: format!("target-{k}"),
                        at_ms: at * GRAIN_MS,
                        for_ms: (template != 2).then_some(lasts * GRAIN_MS),
                        intensity: vec![f64::from(t) / 100.0],
                    })
                    .collect();
                let load_ms = faults.iter().map(Drawn::end_ms).max().unwrap_or(0) + 5000;
                Schedule { faults, load_ms }
            },
        )
    }

    /// Synthetic failures: each says which schedules fail.
    #[derive(Clone, Copy, Debug)]
    enum Predicate {
        /// A fault of this template at least this intense and this long.
        Strong(usize, f64, u64),
        /// Faults of both templates.
        Both(usize, usize),
        /// Any fault running past this time.
        Late(u64),
    }

    impl Predicate {
        fn fails(self, s: &Schedule) -> bool {
            match self {
                Predicate::Strong(t, level, ms) => s.faults.iter().any(|f| {
                    f.template == t && f.intensity[0] >= level && f.for_ms.unwrap_or(0) >= ms
                }),
                Predicate::Both(a, b) => {
                    s.faults.iter().any(|f| f.template == a)
                        && s.faults.iter().any(|f| f.template == b)
                }
                Predicate::Late(ms) => s.faults.iter().any(|f| f.end_ms() > ms),
            }
        }
    }

    fn predicates() -> impl Strategy<Value = Predicate> {
        prop_oneof![
            (0..TEMPLATES, 0.0f64..0.9, 0u64..3000)
                .prop_map(|(t, l, ms)| Predicate::Strong(t, l, ms)),
            (0..TEMPLATES, 0..TEMPLATES).prop_map(|(a, b)| Predicate::Both(a, b)),
            (0u64..4000).prop_map(Predicate::Late),
        ]
    }

    /// Whether every fault of `small` is no bigger than its namesake in `big`.
    fn no_bigger(small: &Schedule, big: &Schedule) -> bool {
        small.load_ms <= big.load_ms
            && small.faults.iter().all(|f| {
                big.faults.iter().any(|g| {
                    g.name == f.name
                        && f.at_ms <= g.at_ms
                        && f.for_ms <= g.for_ms
                        && f.intensity.iter().zip(&g.intensity).all(|(a, b)| a <= b)
                })
            })
    }

    proptest! {
        #[test]
        fn the_result_still_fails_and_never_grows(s in schedules(), p in predicates()) {
            prop_assume!(p.fails(&s));
            let shrunk = shrink(&s, &bounds(), &mut |c| if p.fails(c) { Trial::Fails } else { Trial::Passes });
            prop_assert!(shrunk.finished);
            prop_assert!(p.fails(&shrunk.schedule), "{:?}", shrunk.schedule);
            prop_assert!(no_bigger(&shrunk.schedule, &s), "{:?}", shrunk.schedule);
            prop_assert!(shrunk.schedule.faults.len() <= s.faults.len());
        }

        #[test]
        fn removing_any_fault_from_the_result_makes_it_pass(s in schedules(), p in predicates()) {
            prop_assume!(p.fails(&s));
            let shrunk = shrink(&s, &bounds(), &mut |c| if p.fails(c) { Trial::Fails } else { Trial::Passes });
            for i in 0..shrunk.schedule.faults.len() {
                let mut less = shrunk.schedule.clone();
                less.faults.remove(i);
                prop_assert!(!p.fails(&less), "removing {} still fails: {:?}", i, shrunk.schedule);
            }
        }

        #[test]
        fn a_spent_budget_stops_it_with_a_failing_schedule(
            s in schedules(),
            p in predicates(),
            budget in 0usize..6,
        ) {
            prop_assume!(p.fails(&s));
            let mut trials = 0;
            let shrunk = shrink(&s, &bounds(), &mut |c| {
                if trials == budget {
                    return Trial::Stop;
                }
                trials += 1;
                if p.fails(c) { Trial::Fails } else { Trial::Passes }
            });
            prop_assert!(shrunk.steps.len() <= budget);
            prop_assert!(p.fails(&shrunk.schedule));
            prop_assert!(no_bigger(&shrunk.schedule, &s));
        }

        #[test]
        fn shrinking_is_deterministic(s in schedules(), p in predicates()) {
            prop_assume!(p.fails(&s));
            let run = || shrink(&s, &bounds(), &mut |c| if p.fails(c) { Trial::Fails } else { Trial::Passes }).schedule;
            prop_assert_eq!(run(), run());
        }
    }

    #[test]
    fn a_strong_fault_shrinks_to_itself_at_its_threshold() {
        let s = Schedule {
            faults: vec![
                Drawn {
                    name: "noise".into(),
                    template: 0,
                    target: "a".into(),
                    at_ms: 1000,
                    for_ms: Some(3000),
                    intensity: vec![0.9],
                },
                Drawn {
                    name: "culprit".into(),
                    template: 1,
                    target: "b".into(),
                    at_ms: 4000,
                    for_ms: Some(4000),
                    intensity: vec![0.8],
                },
            ],
            load_ms: 20_000,
        };
        let p = Predicate::Strong(1, 0.3, 1500);
        let shrunk = shrink(&s, &bounds(), &mut |c| {
            if p.fails(c) {
                Trial::Fails
            } else {
                Trial::Passes
            }
        });
        let [only] = shrunk.schedule.faults.as_slice() else {
            panic!("expected one fault, got {:?}", shrunk.schedule);
        };
        assert_eq!(only.name, "culprit");
        assert_eq!(only.at_ms, 0, "moved to the start");
        assert!(
            only.for_ms.is_some_and(|ms| (1500..2500).contains(&ms)),
            "{only:?}"
        );
        assert!((0.3..0.5).contains(&only.intensity[0]), "{only:?}");
        assert!(shrunk.schedule.load_ms < 5000, "{:?}", shrunk.schedule);
    }
}

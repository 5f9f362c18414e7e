//! Fault schedules: what exploring draws and shrinking reduces. A schedule
//! is plain data (times in milliseconds, each range of a template as an
//! intensity in [0, 1]), so the shrinker can work on it without knowing
//! what a fault does; [`to_scenario`] turns it into something that runs.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::scenario::{self, Explore, Fault, Scenario, Stage};
use crate::seed;

/// Times in a schedule are multiples of this: a schedule reads `2300ms`,
/// and shrinking moves in steps a run can tell apart.
pub const GRAIN_MS: u64 = 100;
/// How long an instant fault (a kill, a restart) is taken to occupy its
/// target: the service needs that long to come back.
pub const INSTANT_MS: u64 = 1000;
/// How many times a fault is redrawn to fit among the others before it is
/// left out.
const MAX_FIT_DRAWS: u32 = 20;

/// A fault schedule: faults drawn from an explore space, and the load's
/// length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    /// The faults, in start order.
    pub faults: Vec<Drawn>,
    /// How long the load lasts.
    pub load_ms: u64,
}

/// One fault of a schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drawn {
    /// Its name (`latency-2`), kept through shrinking.
    pub name: String,
    /// The template it was drawn from (index in `explore.space`).
    pub template: usize,
    /// The template's target: two faults on one target never overlap.
    pub target: String,
    /// When it starts.
    pub at_ms: u64,
    /// How long it lasts; `None` for an instant fault.
    pub for_ms: Option<u64>,
    /// Where each of the template's ranges is, from 0 (the mildest end) to
    /// 1 (the harshest).
    pub intensity: Vec<f64>,
}

impl Drawn {
    /// When it stops occupying its target.
    pub fn end_ms(&self) -> u64 {
        self.at_ms + self.for_ms.unwrap_or(INSTANT_MS)
    }
}

impl Schedule {
    /// Whether the schedule respects its space: every fault within the
    /// load, at most `max_at_once` active at any moment, and never two on
    /// one target at once.
    pub fn fits(&self, max_at_once: usize) -> bool {
        let within = self.faults.iter().all(|f| f.end_ms() <= self.load_ms);
        let apart = self.faults.iter().enumerate().all(|(i, a)| {
            self.faults[i + 1..]
                .iter()
                .all(|b| a.target != b.target || a.end_ms() <= b.at_ms || b.end_ms() <= a.at_ms)
        });
        // The most active at once is reached at some fault's start.
        let crowded = self.faults.iter().any(|a| {
            self.faults
                .iter()
                .filter(|b| b.at_ms <= a.at_ms && a.at_ms < b.end_ms())
                .count()
                > max_at_once
        });
        within && apart && !crowded
    }

    /// When the last fault stops occupying its target (0 without faults).
    pub fn last_end_ms(&self) -> u64 {
        self.faults.iter().map(Drawn::end_ms).max().unwrap_or(0)
    }

    /// One line per fault, as the terminal shows a schedule.
    pub fn describe(&self, space: &Explore) -> Vec<String> {
        self.faults
            .iter()
            .map(|f| {
                let template = &space.space[f.template];
                let lasts = f
                    .for_ms
                    .map_or_else(String::new, |ms| format!(" for {}", fmt_ms(ms)));
                // Only what was drawn: the ranges' values, by their last
                // path segment (`probability=0.5`).
                let drawn: Vec<String> = template
                    .ranges
                    .iter()
                    .zip(&f.intensity)
                    .map(|(range, t)| {
                        let leaf = range.pointer.rsplit('/').next().unwrap_or_default();
                        format!("{leaf}={}", range.value_at(*t))
                    })
                    .collect();
                let params = if drawn.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", drawn.join(", "))
                };
                format!(
                    "{} at {}{lasts}: {} on {}{params}",
                    f.name,
                    fmt_ms(f.at_ms),
                    template.kind,
                    template.target
                )
            })
            .collect()
    }
}

/// A duration in milliseconds as scenario files write it.
pub fn fmt_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    orchestrator::config::format_duration(Duration::from_millis(ms))
}

fn grain(ms: u64) -> u64 {
    ms / GRAIN_MS * GRAIN_MS
}

fn ms_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The seed run `index`'s schedule is drawn from (explore.json records it).
pub fn draw_seed(seed: u64, index: u64) -> u64 {
    seed::derive(seed, &[b"explore", &index.to_be_bytes()])
}

/// Run `index`'s schedule: drawn from `seed::derive(seed, ["explore",
/// index])` alone, so the same seed replays the whole exploration whatever
/// the runs found.
pub fn draw(space: &Explore, load_ms: u64, seed: u64, index: u64) -> Schedule {
    let mut rng = ChaCha8Rng::seed_from_u64(draw_seed(seed, index));
    let count = rng.random_range(1..=space.max_faults.max(1));
    let mut schedule = Schedule {
        faults: Vec::new(),
        load_ms,
    };
    for k in 1..=count {
        for _ in 0..MAX_FIT_DRAWS {
            let template_index = rng.random_range(0..space.space.len());
            let template = &space.space[template_index];
            let for_ms = template
                .duration
                .map(|span| grain(rng.random_range(ms_of(span.min)..=ms_of(span.max))));
            let occupied = for_ms.unwrap_or(INSTANT_MS);
            let latest = load_ms.saturating_sub(occupied);
            let at_ms = grain(rng.random_range(0..=latest));
            let intensity = template
                .ranges
                .iter()
                .map(|_| (rng.random::<f64>() * 100.0).round() / 100.0)
                .collect();
            let fault = Drawn {
                name: format!("{}-{k}", template.kind.replace('_', "-")),
                template: template_index,
                target: template.target.clone(),
                at_ms,
                for_ms,
                intensity,
            };
            let mut candidate = schedule.clone();
            candidate.faults.push(fault);
            if candidate.fits(space.max_at_once as usize) {
                schedule = candidate;
                break;
            }
        }
    }
    schedule.faults.sort_by_key(|f| f.at_ms);
    schedule
}

/// `base` (the scenario with the checks that judge any schedule) with the
/// schedule's faults, built by the scenario validator's own code, and its
/// load cut to the schedule's length.
pub fn to_scenario(
    base: &Scenario,
    space: &Explore,
    schedule: &Schedule,
) -> Result<Scenario, String> {
    let faults = schedule
        .faults
        .iter()
        .map(|f| {
            let template = space
                .space
                .get(f.template)
                .ok_or_else(|| format!("fault `{}` names no template", f.name))?;
            scenario::instantiate(
                template,
                &f.name,
                Duration::from_millis(f.at_ms),
                f.for_ms.map(Duration::from_millis),
                &f.intensity,
            )
        })
        .collect::<Result<Vec<Fault>, String>>()?;
    let mut scenario = base.clone();
    scenario.faults = faults;
    scenario.faults.sort_by_key(|f| f.at);
    scenario.load.stages = cut(&base.load.stages, Duration::from_millis(schedule.load_ms));
    scenario.explore = None;
    Ok(scenario)
}

/// The stages of the first `length` of a load (a ramp cut halfway ends
/// at its rate there).
fn cut(stages: &[Stage], length: Duration) -> Vec<Stage> {
    let mut out = Vec::new();
    let mut left = length;
    for stage in stages {
        if left.is_zero() {
            break;
        }
        if stage.duration <= left {
            out.push(stage.clone());
            left -= stage.duration;
        } else {
            let share = left.as_secs_f64() / stage.duration.as_secs_f64();
            out.push(Stage {
                duration: left,
                start_rps: stage.start_rps,
                end_rps: stage.start_rps + (stage.end_rps - stage.start_rps) * share,
            });
            left = Duration::ZERO;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(name: &str, target: &str, at_ms: u64, for_ms: Option<u64>) -> Drawn {
        Drawn {
            name: name.into(),
            template: 0,
            target: target.into(),
            at_ms,
            for_ms,
            intensity: vec![],
        }
    }

    #[test]
    fn faults_on_one_target_never_overlap() {
        let mut s = Schedule {
            faults: vec![
                fault("a", "llm", 0, Some(2000)),
                fault("b", "llm", 1000, Some(2000)),
            ],
            load_ms: 10_000,
        };
        assert!(!s.fits(2));
        s.faults[1].target = "client".into();
        assert!(s.fits(2));
        assert!(!s.fits(1), "two at once over a limit of one");
        s.faults[1].at_ms = 2000;
        assert!(s.fits(1), "one ends as the other starts");
        s.load_ms = 3999;
        assert!(!s.fits(2), "the second ends after the load");
    }

    #[test]
    fn an_instant_fault_occupies_its_target_for_a_while() {
        let s = Schedule {
            faults: vec![
                fault("kill", "orchestrator", 1000, None),
                fault("pause", "orchestrator", 1500, Some(1000)),
            ],
            load_ms: 10_000,
        };
        assert!(!s.fits(2));
    }

    #[test]
    fn a_cut_ramp_ends_at_its_rate_there() {
        let stages = vec![
            Stage {
                duration: Duration::from_secs(2),
                start_rps: 5.0,
                end_rps: 5.0,
            },
            Stage {
                duration: Duration::from_secs(4),
                start_rps: 10.0,
                end_rps: 30.0,
            },
        ];
        let out = cut(&stages, Duration::from_secs(4));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].duration, Duration::from_secs(2));
        assert!((out[1].end_rps - 20.0).abs() < 1e-9);
        assert_eq!(
            cut(&stages, Duration::from_secs(1))[0].duration,
            Duration::from_secs(1)
        );
    }
}

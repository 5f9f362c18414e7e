//! The schedule: every operation of the run, decided before the run starts
//! from the spec and the seed alone, so that one seed always issues the same
//! request sequence whatever the system does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use super::history::{Credential, OpKind, SLOW_MARKER, WebhookTarget, client_address};
use super::{LoadError, LoadLimits};
use crate::scenario::LoadSpec;
use crate::seed;

/// The kind of a planned operation. What some of them send is decided when
/// they are sent, from what the run has seen by then: which job a read
/// reads (it needs a job accepted earlier), whether a DLQ operation lists
/// the queue or replays a job seen dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlannedKind {
    /// `POST /v1/tasks`.
    Task,
    /// `POST /v1/tasks` with a body over the service's body limit.
    Oversized,
    /// `POST /v1/tasks` with [`SLOW_MARKER`](super::SLOW_MARKER) in the prompt.
    Slow,
    /// `POST /v1/jobs`.
    Job,
    /// `GET /v1/jobs/{id}`, or `GET /v1/budgets/{tenant}` when the tenant has
    /// no accepted job yet.
    Read,
    /// `POST /v1/dlq/{id}/replay` of a job of the tenant seen dead and not
    /// replayed since, or `GET /v1/dlq` when there is none.
    Dlq,
    /// A request to `route` with the operation's [`Credential`], which is not
    /// the tenant's own key: a missing, unknown or expired key, or the key of
    /// a role that lacks the route's permission.
    Access {
        /// The route.
        route: OpKind,
    },
}

/// A role and a route, with whether the role holds the route's
/// permission: `forbidden` operations are drawn from the pairs it does not,
/// `roles` operations from every pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRoute {
    /// The role (its keys are made for every tenant).
    pub role: String,
    /// The route.
    pub route: OpKind,
    /// Whether the role holds every permission the route needs.
    pub permitted: bool,
}

/// One operation of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedOp {
    /// Its position, from 0; offsets never decrease with it.
    pub index: u64,
    /// When to send it, from the load's epoch.
    pub offset: Duration,
    /// What to send.
    pub kind: PlannedKind,
    /// The tenant to act as (one of the spec's).
    pub tenant: String,
    /// The key to carry.
    pub credential: Credential,
    /// The client address, sent as `X-Forwarded-For`: [`client_address`]
    /// for the schedule's operations.
    pub client: IpAddr,
    /// The `Idempotency-Key` for tasks and jobs: `k-` and 16 hex digits drawn
    /// from the seed, or an earlier operation's.
    pub idempotency_key: Option<String>,
    /// The earlier operation (same kind and tenant) whose key and body this
    /// one reuses, as a client retrying would.
    pub reuse_of: Option<u64>,
    /// The JSON body of a task or job, exactly as sent:
    /// `{"max_tokens": N, "prompt": "..."}`; an oversized body is made when
    /// it is sent.
    pub body: Option<String>,
    /// For a read: which of the tenant's accepted jobs to read (this modulo
    /// their number, in the order they were accepted).
    pub read_pick: u64,
    /// For a job: where its webhook points, if it has one (the URL is the
    /// run's, added to the body when it is sent).
    pub webhook: Option<WebhookTarget>,
    /// Personal data planted in the prompt, the key and the request id
    /// ([`super::personal::planted`]), or none.
    pub planted: Vec<String>,
    /// The `X-Request-Id` to send, for a request with planted data (it
    /// carries the card number); others let the service draw one.
    pub request_id: Option<String>,
}

impl PlannedOp {
    /// The offset in milliseconds, as history times are kept.
    pub fn offset_ms(&self) -> f64 {
        self.offset.as_secs_f64() * 1000.0
    }
}

/// A task or job with a fresh key, which later ones may reuse.
struct Original {
    index: u64,
    key: String,
    body: String,
    webhook: Option<WebhookTarget>,
    planted: Vec<String>,
}

/// Verbs and objects of the prompts: enough variety that prompts differ (and
/// so do their hashes and the mock provider's plans), short enough that a
/// prompt's token reservation stays small.
const VERBS: [&str; 8] = [
    "summarise",
    "translate",
    "outline",
    "review",
    "classify",
    "draft a reply to",
    "list the risks in",
    "plan the steps for",
];
const OBJECTS: [&str; 8] = [
    "the quarterly report",
    "this support ticket",
    "the release notes",
    "a customer email",
    "the incident timeline",
    "the onboarding guide",
    "the meeting minutes",
    "a pull request",
];

/// The expected number of operations by the end of each stage: the integral
/// of the rate, which is linear within a stage.
fn expected_counts(spec: &LoadSpec) -> Result<Vec<f64>, LoadError> {
    let mut total = 0.0;
    let mut ends = Vec::with_capacity(spec.stages.len());
    for (stage_index, stage) in spec.stages.iter().enumerate() {
        for rate in [stage.start_rps, stage.end_rps] {
            if !rate.is_finite() || rate < 0.0 {
                return Err(LoadError::InvalidRate {
                    stage: stage_index,
                    rate_rps: rate,
                });
            }
        }
        total += (stage.start_rps + stage.end_rps) / 2.0 * stage.duration.as_secs_f64();
        ends.push(total);
    }
    Ok(ends)
}

/// The time into a stage at which `n` operations are due, for a rate moving
/// linearly from `start_rps` to `end_rps` over `length_s` seconds: the root
/// of `start_rps * t + (end_rps - start_rps) / (2 * length_s) * t^2 = n`.
fn time_into_stage(n: f64, start_rps: f64, end_rps: f64, length_s: f64) -> f64 {
    if n <= 0.0 || length_s <= 0.0 {
        return 0.0;
    }
    let curvature = (end_rps - start_rps) / (2.0 * length_s);
    // 2n / (a + sqrt(a^2 + 4cn)) is the quadratic's root written so that it
    // stays exact for a constant rate (c = 0) and for a ramp from zero.
    let discriminant = (start_rps * start_rps + 4.0 * curvature * n).max(0.0);
    let denominator = start_rps + discriminant.sqrt();
    if denominator > 0.0 {
        (2.0 * n / denominator).min(length_s)
    } else {
        length_s
    }
}

/// The schedule of `spec` under `seed`: intended send offsets (open loop,
/// evenly spaced at the rate of the moment, the rate linear within each
/// stage), each operation's kind by the mix's weights, its tenant, its
/// idempotency key and body. Pure: the same inputs give the same schedule.
///
/// The count is the integral of the rate rounded up: a stage of `r` requests
/// per second for `d` seconds alone schedules `ceil(r * d)`.
///
/// `pairs` lists every role and route, which `roles` operations are drawn
/// from, and `forbidden` ones from those not permitted; with either in the
/// mix there must be some to draw from.
pub fn schedule(
    spec: &LoadSpec,
    pairs: &[RoleRoute],
    seed: u64,
    limits: &LoadLimits,
) -> Result<Vec<PlannedOp>, LoadError> {
    if spec.tenants.is_empty() {
        return Err(LoadError::NoTenants);
    }
    let mix = &spec.mix;
    let weights = [
        (Draw::Task, mix.tasks),
        (Draw::Oversized, mix.oversized),
        (Draw::Slow, mix.slow),
        (Draw::Job, mix.jobs),
        (Draw::Read, mix.reads),
        (Draw::Dlq, mix.dlq),
        (Draw::Bad(Credential::Missing), mix.no_key),
        (Draw::Bad(Credential::Unknown), mix.unknown_key),
        (Draw::Bad(Credential::Expired), mix.expired_key),
        (Draw::Forbidden, mix.forbidden),
        (Draw::Matrix, mix.roles),
    ];
    let denied: Vec<&RoleRoute> = pairs.iter().filter(|p| !p.permitted).collect();
    let total_weight: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    if total_weight == 0 {
        return Err(LoadError::EmptyMix);
    }
    if (mix.forbidden > 0 && denied.is_empty()) || (mix.roles > 0 && pairs.is_empty()) {
        return Err(LoadError::NothingForbidden);
    }
    if !(0.0..=1.0).contains(&spec.idempotency_reuse) {
        return Err(LoadError::InvalidReuse {
            share: spec.idempotency_reuse,
        });
    }
    let ends = expected_counts(spec)?;
    let expected = ends.last().copied().unwrap_or(0.0);
    // Checked before anything is allocated: a typo'd rate must not take the
    // machine's memory. The float comparison also catches a count past u64.
    let planned = expected.ceil();
    if planned > limits.max_requests as f64 {
        return Err(LoadError::TooManyRequests {
            planned,
            max_requests: limits.max_requests,
        });
    }
    let planned = planned as u64;

    let mut ops = Vec::with_capacity(usize::try_from(planned).unwrap_or(0));
    // Fresh keys and bodies by (kind, tenant index), for reuse.
    let mut originals: HashMap<(PlannedKind, usize), Vec<Original>> = HashMap::new();
    let mut stage_index = 0;
    let mut stage_start = Duration::ZERO;
    let mut before_stage = 0.0;
    for index in 0..planned {
        let due = index as f64;
        // Advance to the stage in which the index-th operation falls.
        while stage_index + 1 < spec.stages.len() && due >= ends[stage_index] {
            before_stage = ends[stage_index];
            stage_start += spec.stages[stage_index].duration;
            stage_index += 1;
        }
        let stage = &spec.stages[stage_index];
        let into = time_into_stage(
            due - before_stage,
            stage.start_rps,
            stage.end_rps,
            stage.duration.as_secs_f64(),
        );
        let offset = stage_start + Duration::from_secs_f64(into);

        let index_bytes = index.to_be_bytes();
        let mut rng = seed::rng(seed, &[b"load", b"op", &index_bytes]);
        let mut pick = rng.random_range(0..total_weight);
        let mut draw = Draw::Read;
        for (candidate, weight) in &weights {
            if pick < u64::from(*weight) {
                draw = candidate.clone();
                break;
            }
            pick -= u64::from(*weight);
        }
        // Drawn for every operation, used by some, so that one kind's
        // weight does not shift the draws of the others.
        let route_draw = rng.random::<u64>();
        let (kind, credential) = match draw {
            Draw::Task => (PlannedKind::Task, Credential::Tenant),
            Draw::Oversized => (PlannedKind::Oversized, Credential::Tenant),
            Draw::Slow => (PlannedKind::Slow, Credential::Tenant),
            Draw::Job => (PlannedKind::Job, Credential::Tenant),
            Draw::Read => (PlannedKind::Read, Credential::Tenant),
            Draw::Dlq => (PlannedKind::Dlq, Credential::Tenant),
            Draw::Bad(credential) => {
                let route = OpKind::ROUTES[pick_index(route_draw, OpKind::ROUTES.len())];
                (PlannedKind::Access { route }, credential)
            }
            Draw::Forbidden => {
                let denied = denied[pick_index(route_draw, denied.len())];
                (
                    PlannedKind::Access {
                        route: denied.route,
                    },
                    Credential::Role(denied.role.clone()),
                )
            }
            Draw::Matrix => {
                let pair = &pairs[pick_index(route_draw, pairs.len())];
                (
                    PlannedKind::Access { route: pair.route },
                    Credential::Role(pair.role.clone()),
                )
            }
        };
        let tenant_index = rng.random_range(0..spec.tenants.len());
        let tenant = spec.tenants[tenant_index].name.clone();
        let read_pick = rng.random::<u64>();
        let reuse_draw: f64 = rng.random();
        let verb = VERBS[rng.random_range(0..VERBS.len())];
        let object = OBJECTS[rng.random_range(0..OBJECTS.len())];
        let number = rng.random_range(0..10_000u32);

        let posts = match kind {
            PlannedKind::Task | PlannedKind::Slow | PlannedKind::Job => true,
            PlannedKind::Access { route } => matches!(route, OpKind::Task | OpKind::Job),
            PlannedKind::Read | PlannedKind::Dlq | PlannedKind::Oversized => false,
        };
        // Only a client's ordinary retries reuse a key; the marker keeps a
        // slow prompt from sharing a key (and so an answer) with a fast one.
        let reusable = matches!(kind, PlannedKind::Task | PlannedKind::Job);
        let marker = if kind == PlannedKind::Slow {
            format!(" {SLOW_MARKER}")
        } else {
            String::new()
        };
        // Drawn from the seed by index, not from the stream above, so that
        // adding webhooks or personal data to a scenario leaves every other
        // draw of its schedule as it was.
        let webhook = match spec.webhooks {
            Some(w) if kind == PlannedKind::Job => {
                let unit = |label: &[u8]| seed::unit(seed, &[b"load", label, &index_bytes]);
                (unit(b"webhook") < w.share).then(|| {
                    if unit(b"webhook-trap") < w.forbidden {
                        WebhookTarget::Trap
                    } else {
                        WebhookTarget::Sink
                    }
                })
            }
            _ => None,
        };
        let planted = if matches!(kind, PlannedKind::Task | PlannedKind::Job)
            && seed::unit(seed, &[b"load", b"personal", &index_bytes]) < spec.personal_data
        {
            super::personal::planted(seed, index).to_vec()
        } else {
            Vec::new()
        };
        let (idempotency_key, body, reuse_of, webhook, planted) = if !posts {
            (None, None, None, None, Vec::new())
        } else {
            let earlier = originals.entry((kind, tenant_index)).or_default();
            if reusable && reuse_draw < spec.idempotency_reuse && !earlier.is_empty() {
                // Given reuse, reuse_draw / idempotency_reuse is uniform in
                // [0, 1): one draw decides both whether and which.
                let scaled = reuse_draw / spec.idempotency_reuse;
                let choice = ((earlier.len() as f64 * scaled) as usize).min(earlier.len() - 1);
                let original = &earlier[choice];
                (
                    Some(original.key.clone()),
                    Some(original.body.clone()),
                    Some(original.index),
                    original.webhook,
                    original.planted.clone(),
                )
            } else {
                let mut key = format!(
                    "k-{:016x}",
                    seed::derive(seed, &[b"load", b"key", &index_bytes])
                );
                let mut prompt = format!("{verb} {object} #{number}{marker}");
                if let [email, card, ssn] = planted.as_slice() {
                    // The key carries the email address, as a client naming
                    // an order by its customer would.
                    key = format!("{key}.{email}");
                    prompt = format!("{prompt} for {email}, card {card}, SSN {ssn}");
                }
                let body = json!({
                    "prompt": prompt,
                    "max_tokens": spec.max_tokens,
                })
                .to_string();
                if reusable {
                    earlier.push(Original {
                        index,
                        key: key.clone(),
                        body: body.clone(),
                        webhook,
                        planted: planted.clone(),
                    });
                }
                (Some(key), Some(body), None, webhook, planted)
            }
        };
        let request_id = match planted.as_slice() {
            [_, card, _] => Some(format!("r{index}.{card}")),
            _ => None,
        };
        ops.push(PlannedOp {
            index,
            offset,
            kind,
            tenant,
            credential,
            client: client_address(index),
            idempotency_key,
            reuse_of,
            body,
            read_pick,
            webhook,
            planted,
            request_id,
        });
    }
    Ok(ops)
}

/// What the mix drew for one operation.
#[derive(Clone)]
enum Draw {
    Task,
    Oversized,
    Slow,
    Job,
    Read,
    Dlq,
    /// A request to a random route with a credential that is not valid.
    Bad(Credential),
    /// A request to a route its role lacks, with that role's key.
    Forbidden,
    /// A request to any route with any role's key.
    Matrix,
}

/// `draw` mapped onto `0..len` (`len` > 0).
fn pick_index(draw: u64, len: usize) -> usize {
    usize::try_from(draw % len as u64).unwrap_or(0)
}

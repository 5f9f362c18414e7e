//! The contract: what the system's configuration promises, in the harness's
//! own types, taken from the scenario's validated configuration once. The
//! load generator plans from it (which roles lack which routes, how big an
//! oversized body must be) and the checks judge by it (how many attempts a
//! request may make, which tools a plan may name). Checks never read the
//! orchestrator's own tables: only the numbers an operator configured.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orchestrator::config::Config;

use crate::load::{OpKind, RoleRoute};

/// What the configuration promises.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Contract {
    /// Each role's permissions, by their configuration names (`tasks.create`).
    pub roles: BTreeMap<String, BTreeSet<String>>,
    /// Each role's rate limit: requests per second and burst.
    pub rate_limits: BTreeMap<String, (u32, u32)>,
    /// The most provider calls one request may make: the sum over providers
    /// of `retry.attempts`.
    pub attempts_per_request: u32,
    /// `jobs.max_attempts`: the most times a job runs before the DLQ (a
    /// replay starts the count again).
    pub job_max_attempts: u32,
    /// `server.body_limit`.
    pub body_limit_bytes: u64,
    /// `server.request_timeout`.
    pub request_timeout: Duration,
    /// The shortest `attempt_timeout` of the providers: a provider call
    /// slower than this is abandoned and retried.
    pub attempt_timeout: Duration,
    /// `tasks.allowed_tools`.
    pub allowed_tools: BTreeSet<String>,
    /// `tasks.max_output_size`: the largest plan a provider may return.
    pub max_output_bytes: u64,
    /// `security.hsts`: whether answers carry `Strict-Transport-Security`.
    pub hsts: bool,
    /// `security.lockout`: when failed authentications lock a client out.
    pub lockout: Lockout,
    /// `security.keys.rotation_overlap`: how long a rotated key keeps
    /// working beside its successor.
    pub rotation_overlap: Duration,
    /// `server.admission.tasks_in_flight`: below this many tasks in flight
    /// the service has room, so a task shed then was shed wrongly.
    pub tasks_in_flight: u32,
    /// `server.admission.jobs_in_flight`, the same for job submissions.
    pub jobs_in_flight: u32,
    /// `degradation.enter_after`: the least time between a level change and
    /// the next rise.
    pub enter_after: Duration,
    /// `degradation.leave_after`: the least time between a level change and
    /// the next fall.
    pub leave_after: Duration,
}

/// When failed authentications lock an address or a key id out.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Lockout {
    /// Failures within `window` that lock.
    pub max_failures: u32,
    /// The sliding window failures are counted in.
    pub window: Duration,
    /// How long a lockout lasts.
    pub duration: Duration,
}

/// (name, parents, own permissions, requests per second, burst).
type BuiltinRole = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    u32,
    u32,
);

/// The seven roles of seed 001 as design.md's security section has them,
/// the harness's own copy: (name, parents, own permissions, requests per
/// second, burst). Written here, not read from the orchestrator's table,
/// so that a slip there (a lost parent, a permission on the wrong rung, a
/// limit off) is caught by `access_enforced` and `rate_limit_respected`.
const BUILTIN_ROLES: [BuiltinRole; 7] = [
    ("guest", &[], &["budget.read"], 2, 5),
    (
        "viewer",
        &["guest"],
        &["jobs.read", "jobs.list", "roles.read"],
        5,
        10,
    ),
    (
        "analyst",
        &["viewer"],
        &["audit.read", "dlq.read", "keys.read"],
        10,
        20,
    ),
    (
        "developer",
        &["viewer"],
        &["tasks.create", "jobs.create", "keys.read"],
        20,
        40,
    ),
    (
        "operator",
        &["developer", "analyst"],
        &["dlq.replay", "keys.create", "keys.rotate", "keys.revoke"],
        20,
        40,
    ),
    ("admin", &["operator"], &["audit.verify"], 20, 40),
    (
        "super_admin",
        &["admin"],
        &[
            "budget.read_all",
            "jobs.read_all",
            "dlq.read_all",
            "dlq.replay_all",
            "keys.read_all",
            "keys.manage_all",
        ],
        20,
        40,
    ),
];

impl Contract {
    /// The contract of a validated configuration: the built-in roles with
    /// the configured ones over them (a configured role of a built-in name
    /// replaces it), inheritance resolved by the harness itself.
    pub fn of(config: &Config) -> Contract {
        let mut own: BTreeMap<String, (Vec<String>, Vec<String>)> = BUILTIN_ROLES
            .iter()
            .map(|(name, parents, grants, _, _)| {
                (
                    (*name).to_owned(),
                    (
                        parents.iter().map(|p| (*p).to_owned()).collect(),
                        grants.iter().map(|g| (*g).to_owned()).collect(),
                    ),
                )
            })
            .collect();
        for (name, role) in &config.security.roles {
            own.insert(
                name.clone(),
                (
                    role.inherits.clone(),
                    role.permissions
                        .iter()
                        .map(|p| p.name().to_owned())
                        .collect(),
                ),
            );
        }
        let roles: BTreeMap<String, BTreeSet<String>> = own
            .keys()
            .map(|name| {
                // Every ancestor, each once: validation refused cycles, and
                // the visited set would end one anyway.
                let mut held = BTreeSet::new();
                let mut visited = BTreeSet::new();
                let mut queue = vec![name.clone()];
                while let Some(role) = queue.pop() {
                    if visited.insert(role.clone())
                        && let Some((parents, grants)) = own.get(&role)
                    {
                        held.extend(grants.iter().cloned());
                        queue.extend(parents.iter().cloned());
                    }
                }
                (name.clone(), held)
            })
            .collect();
        let default = config.security.default_rate_limit;
        let rate_limits = roles
            .keys()
            .map(|role| {
                let configured = config.security.rate_limits.get(role);
                let builtin = BUILTIN_ROLES
                    .iter()
                    .find(|b| b.0 == role && !config.security.roles.contains_key(role))
                    .map(|b| (b.3, b.4));
                let limit = configured
                    .map(|l| (l.requests_per_second, l.burst))
                    .or(builtin)
                    .unwrap_or((default.requests_per_second, default.burst));
                (role.clone(), limit)
            })
            .collect();
        Contract {
            roles,
            rate_limits,
            attempts_per_request: config.llm.providers.iter().map(|p| p.retry.attempts).sum(),
            job_max_attempts: config.jobs.max_attempts,
            body_limit_bytes: config.server.body_limit_bytes,
            request_timeout: config.server.request_timeout,
            attempt_timeout: config
                .llm
                .providers
                .iter()
                .map(|p| p.attempt_timeout)
                .min()
                .unwrap_or_default(),
            allowed_tools: config.tasks.allowed_tools.iter().cloned().collect(),
            max_output_bytes: config.tasks.max_output_bytes,
            hsts: config.security.hsts,
            lockout: Lockout {
                max_failures: config.security.lockout.max_failures,
                window: config.security.lockout.window,
                duration: config.security.lockout.duration,
            },
            rotation_overlap: config.security.keys.rotation_overlap,
            tasks_in_flight: config.server.admission.tasks_in_flight,
            jobs_in_flight: config.server.admission.jobs_in_flight,
            enter_after: config.degradation.enter_after,
            leave_after: config.degradation.leave_after,
        }
    }

    /// Whether `role` holds every permission `route` needs. An unknown role
    /// holds none.
    pub fn permits(&self, role: &str, route: OpKind) -> bool {
        self.roles
            .get(role)
            .is_some_and(|held| route.permissions().iter().all(|p| held.contains(*p)))
    }

    /// A role's rate limit (requests per second, burst); none for a role
    /// the contract does not know.
    pub fn rate_limit(&self, role: &str) -> (u32, u32) {
        self.rate_limits.get(role).copied().unwrap_or((0, 0))
    }

    /// Every (role, route) pair, in role then route order, with whether
    /// the role may: what `roles` requests are drawn from, and `forbidden`
    /// ones from the pairs it may not.
    pub fn role_routes(&self) -> Vec<RoleRoute> {
        self.roles
            .keys()
            .flat_map(|role| {
                OpKind::ROUTES.into_iter().map(|route| RoleRoute {
                    role: role.clone(),
                    route,
                    permitted: self.permits(role, route),
                })
            })
            .collect()
    }
}

//! The contract: what the system's configuration promises, in the harness's
//! own types, taken from the scenario's validated configuration once. The
//! load generator plans from it (which roles lack which routes, how big an
//! oversized body must be) and the checks judge by it (how many attempts a
//! request may make, which tools a plan may name). Checks never read the
//! orchestrator's own tables: only the numbers an operator configured.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orchestrator::config::Config;

use crate::load::{Denied, OpKind};

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

impl Contract {
    /// The contract of a validated configuration.
    pub fn of(config: &Config) -> Contract {
        let name = |p: &orchestrator::config::raw::Permission| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let roles: BTreeMap<String, BTreeSet<String>> = config
            .security
            .roles
            .iter()
            .map(|(role, permissions)| (role.clone(), permissions.iter().map(name).collect()))
            .collect();
        let rate_limits = roles
            .keys()
            .map(|role| {
                let limit = config.security.rate_limit_of(role);
                (role.clone(), (limit.requests_per_second, limit.burst))
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
        }
    }

    /// Whether `role` holds every permission `route` needs. An unknown role
    /// holds none.
    pub fn permits(&self, role: &str, route: OpKind) -> bool {
        self.roles
            .get(role)
            .is_some_and(|held| route.permissions().iter().all(|p| held.contains(*p)))
    }

    /// Every (role, route) pair the role lacks, in role then route order:
    /// what `forbidden` requests are drawn from.
    pub fn denied(&self) -> Vec<Denied> {
        self.roles
            .keys()
            .flat_map(|role| {
                OpKind::ROUTES
                    .into_iter()
                    .filter(|route| !self.permits(role, *route))
                    .map(|route| Denied {
                        role: role.clone(),
                        route,
                    })
            })
            .collect()
    }
}

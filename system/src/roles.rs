//! The built-in roles (seed 001's seven) in one table: what each grants,
//! whom it inherits from, and its per-key rate limit (seed 003's idea). The
//! route check ([`crate::auth`]), `GET /v1/roles`, `orchestrator config
//! schema` and the README's role table all read this table.
//!
//! The configuration may add roles (`security.roles`), redefine a built-in
//! one by its name, and override any role's rate limit
//! (`security.rate_limits`). Validation refuses an inheritance cycle or a
//! parent that does not exist, so [`resolve`] always terminates.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::raw::Permission;
use crate::config::{RateLimitConfig, RoleConfig, SecurityConfig};

/// A built-in role.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinRole {
    /// Its name, as keys and the configuration name it.
    pub name: &'static str,
    /// The roles whose permissions it holds too.
    pub inherits: &'static [&'static str],
    /// What it grants on top of what it inherits.
    pub grants: &'static [Permission],
    /// The rate limit of each of its keys.
    pub rate_limit: RateLimitConfig,
    /// Who it is for, for the docs.
    pub about: &'static str,
}

const fn limit(requests_per_second: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        requests_per_second,
        burst,
    }
}

/// The seven built-in roles, least privileged first. Limits grow with
/// trust up to the roles that run work, which share the service's default
/// (20 a second, a burst of 40): more privilege is not more throughput.
pub const BUILTIN: [BuiltinRole; 7] = {
    use Permission::*;
    [
        BuiltinRole {
            name: "guest",
            inherits: &[],
            grants: &[BudgetRead],
            rate_limit: limit(2, 5),
            about: "sees its tenant's budget and nothing else",
        },
        BuiltinRole {
            name: "viewer",
            inherits: &["guest"],
            grants: &[JobsRead, JobsList, RolesRead],
            rate_limit: limit(5, 10),
            about: "reads its tenant's jobs",
        },
        BuiltinRole {
            name: "analyst",
            inherits: &["viewer"],
            grants: &[AuditRead, DlqRead, KeysRead],
            rate_limit: limit(10, 20),
            about: "reads the audit log, the dead-letter queue and its tenant's keys",
        },
        BuiltinRole {
            name: "developer",
            inherits: &["viewer"],
            grants: &[TasksCreate, JobsCreate, KeysRead],
            rate_limit: limit(20, 40),
            about: "runs tasks, submits jobs and sees its tenant's keys",
        },
        BuiltinRole {
            name: "operator",
            inherits: &["developer", "analyst"],
            grants: &[DlqReplay, KeysCreate, KeysRotate, KeysRevoke],
            rate_limit: limit(20, 40),
            about: "runs its tenant day to day: replays dead jobs, issues, rotates and revokes keys",
        },
        BuiltinRole {
            name: "admin",
            inherits: &["operator"],
            grants: &[AuditVerify],
            rate_limit: limit(20, 40),
            about: "verifies the audit chain",
        },
        BuiltinRole {
            name: "super_admin",
            inherits: &["admin"],
            grants: &[
                BudgetReadAll,
                JobsReadAll,
                DlqReadAll,
                DlqReplayAll,
                KeysReadAll,
                KeysManageAll,
            ],
            rate_limit: limit(20, 40),
            about: "acts on every tenant: budgets, jobs, the dead-letter queue and keys",
        },
    ]
};

/// The built-in role of that name.
pub fn builtin(name: &str) -> Option<&'static BuiltinRole> {
    BUILTIN.iter().find(|r| r.name == name)
}

/// The built-in role of that name, unless the configuration redefines it.
pub fn builtin_in_force(
    configured: &BTreeMap<String, RoleConfig>,
    name: &str,
) -> Option<&'static BuiltinRole> {
    if configured.contains_key(name) {
        None
    } else {
        builtin(name)
    }
}

/// The roles `name` names as its parents: the configured role's, else the
/// built-in one's; none for a role that does not exist.
pub fn parents(configured: &BTreeMap<String, RoleConfig>, name: &str) -> Vec<String> {
    match configured.get(name) {
        Some(role) => role.inherits.clone(),
        None => builtin(name)
            .map(|b| b.inherits.iter().map(|p| (*p).to_owned()).collect())
            .unwrap_or_default(),
    }
}

/// Every role's parents and own grants: the built-in ones and the
/// configured ones (which replace a built-in role of the same name).
fn definitions(
    configured: &BTreeMap<String, RoleConfig>,
) -> BTreeMap<String, (Vec<String>, Vec<Permission>)> {
    BUILTIN
        .iter()
        .map(|r| r.name.to_owned())
        .chain(configured.keys().cloned())
        .map(|name| {
            let grants = match configured.get(&name) {
                Some(role) => role.permissions.clone(),
                None => builtin(&name)
                    .map(|b| b.grants.to_vec())
                    .unwrap_or_default(),
            };
            let parents = parents(configured, &name);
            (name, (parents, grants))
        })
        .collect()
}

/// Every role with every permission it holds, its own and inherited, in
/// the order of [`Permission::ALL`] (which is the enum's declaration order,
/// and so its `Ord`).
pub fn resolve(security: &SecurityConfig) -> BTreeMap<String, Vec<Permission>> {
    resolve_roles(&security.roles)
}

/// [`resolve`] over the built-in roles and these configured ones.
fn resolve_roles(configured: &BTreeMap<String, RoleConfig>) -> BTreeMap<String, Vec<Permission>> {
    let definitions = definitions(configured);
    definitions
        .keys()
        .map(|name| {
            let mut held = BTreeSet::new();
            let mut seen = BTreeSet::new();
            let mut pending = vec![name.clone()];
            // Validation refuses cycles; `seen` keeps this finite regardless.
            while let Some(role) = pending.pop() {
                if !seen.insert(role.clone()) {
                    continue;
                }
                if let Some((parents, grants)) = definitions.get(&role) {
                    held.extend(grants.iter().copied());
                    pending.extend(parents.iter().cloned());
                }
            }
            (name.clone(), held.into_iter().collect())
        })
        .collect()
}

/// The rate limit of a key with this role: `security.rate_limits` for it,
/// else the built-in role's, else `security.default_rate_limit`.
pub fn rate_limit_of(security: &SecurityConfig, role: &str) -> RateLimitConfig {
    security
        .rate_limits
        .get(role)
        .copied()
        // A configured role of a built-in name is a new role: it takes the
        // default unless the configuration gives it a limit.
        .or_else(|| builtin_in_force(&security.roles, role).map(|r| r.rate_limit))
        .unwrap_or(security.default_rate_limit)
}

/// The built-in roles as the README's Markdown table: each role, whom it
/// inherits from, what it adds, everything it holds, and its rate limit. A
/// test keeps the README's copy equal to this.
pub fn markdown_table() -> String {
    let resolved = resolve_roles(&BTreeMap::new());
    let code = |names: &mut dyn Iterator<Item = &str>| {
        let list: Vec<String> = names.map(|n| format!("`{n}`")).collect();
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    let mut out = String::from(
        "| role | inherits | adds | permissions held | rate limit (per key) | for |\n|---|---|---|---|---|---|\n",
    );
    for role in &BUILTIN {
        let held = resolved.get(role.name).cloned().unwrap_or_default();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {}/s, burst {} | {} |\n",
            role.name,
            code(&mut role.inherits.iter().copied()),
            code(&mut role.grants.iter().map(|p| p.name())),
            held.len(),
            role.rate_limit.requests_per_second,
            role.rate_limit.burst,
            role.about,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security() -> SecurityConfig {
        crate::config::validate(b"llm:\n  providers:\n    - {name: p, base_url: 'http://127.0.0.1:1/v1', model: m}\nstorage:\n  sqlite: {path: x.db}\n", &Default::default())
            .config
            .map(|c| c.security)
            .unwrap_or_else(|| panic!("the minimal config is valid"))
    }

    #[test]
    fn inheritance_is_transitive_and_widens_up_the_ladder() {
        let roles = resolve(&security());
        let held = |role: &str| -> BTreeSet<Permission> {
            roles.get(role).into_iter().flatten().copied().collect()
        };
        assert!(
            held("operator").contains(&Permission::BudgetRead),
            "from guest, three levels up"
        );
        assert!(
            held("operator").contains(&Permission::AuditRead),
            "from analyst, a second parent"
        );
        assert_eq!(held("super_admin").len(), Permission::ALL.len());
        for pair in [
            ("guest", "viewer"),
            ("viewer", "analyst"),
            ("viewer", "developer"),
            ("developer", "operator"),
            ("analyst", "operator"),
            ("operator", "admin"),
            ("admin", "super_admin"),
        ] {
            assert!(held(pair.0).is_subset(&held(pair.1)), "{pair:?}");
            assert!(held(pair.0).len() < held(pair.1).len(), "{pair:?}");
        }
    }

    #[test]
    fn configured_roles_add_to_and_replace_built_in_ones() {
        let mut s = security();
        s.roles.insert(
            "release-bot".into(),
            RoleConfig {
                inherits: vec!["developer".into()],
                permissions: vec![Permission::DlqReplay],
            },
        );
        s.roles.insert(
            "viewer".into(),
            RoleConfig {
                inherits: Vec::new(),
                permissions: vec![Permission::JobsRead],
            },
        );
        let roles = resolve(&s);
        assert_eq!(roles["viewer"], vec![Permission::JobsRead]);
        assert_eq!(
            roles["release-bot"],
            vec![
                Permission::TasksCreate,
                Permission::JobsCreate,
                Permission::JobsRead,
                Permission::DlqReplay,
                Permission::KeysRead,
            ]
        );
        assert_eq!(rate_limit_of(&s, "guest"), limit(2, 5));
        assert_eq!(rate_limit_of(&s, "viewer"), s.default_rate_limit);
        assert_eq!(rate_limit_of(&s, "release-bot"), s.default_rate_limit);
    }
}

//! The orchestrator configuration of one run: the scenario's merged config
//! with the run's own values (ports, paths, tenants' keys) set on the typed
//! `Config`, then rendered back to YAML for the child process.

use std::collections::BTreeMap;
use std::path::PathBuf;

use orchestrator::config::{self, ApiKeyConfig, Config, StorageConfig, ValidateOptions};
use sha2::{Digest, Sha256};

use crate::load::{Credential, VICTIM_KEY_ID};
use crate::scenario::Scenario;
use crate::seed;

/// The tenant the harness's own probes run as; never one of the scenario's.
pub const OPS_TENANT: &str = "gauntlet-ops";

/// The role of the harness's own keys: every permission, and a rate limit
/// high enough that probes are never limited (they are not the load).
pub const OPS_ROLE: &str = "gauntlet-ops";

/// The addresses the service trusts to name the client in
/// `X-Forwarded-For`: loopback, where the fault proxy runs, and the private
/// ranges Docker draws its networks from (its default pools start in
/// 172.16.0.0/12 and go on into 192.168.0.0/16 once those are used, so one
/// range alone fails on a busy engine). The load's client addresses lie
/// outside all of them.
const TRUSTED_PROXIES: [&str; 5] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
];

/// The names a run's webhooks use: both resolve to loopback through
/// `webhooks.resolve`, the resolver the harness controls. The sink's
/// address is named by an allowlist entry on the sink's port; the trap's
/// is not, so the SSRF guard must refuse it.
pub const SINK_HOST: &str = "sink.gauntlet.test";
/// See [`SINK_HOST`].
pub const TRAP_HOST: &str = "trap.gauntlet.test";

/// The variables holding the webhook secrets the child signs with.
pub const WEBHOOK_SECRET_ENVS: [&str; 2] = [
    "GAUNTLET_WEBHOOK_SECRET",
    "GAUNTLET_WEBHOOK_SECRET_PREVIOUS",
];

/// Where a run's webhooks go: the ports of the sink and the trap, both on
/// loopback.
#[derive(Clone, Copy, Debug)]
pub struct WebhookTargets {
    /// The sink's port.
    pub sink_port: u16,
    /// The trap's port.
    pub trap_port: u16,
}

impl WebhookTargets {
    /// The URL jobs aimed at the sink carry.
    pub fn sink_url(&self) -> String {
        format!("http://{SINK_HOST}:{}/hooks/jobs", self.sink_port)
    }

    /// The URL jobs aimed at the trap carry.
    pub fn trap_url(&self) -> String {
        format!("http://{TRAP_HOST}:{}/hooks/jobs", self.trap_port)
    }
}

/// The run's webhook secrets (current, previous), derived from its seed.
pub fn webhook_secrets(run_seed: u64) -> [String; 2] {
    [b"current".as_slice(), b"previous"].map(|label| {
        let a = seed::derive(run_seed, &[b"webhook-secret", label, b"0"]);
        let b = seed::derive(run_seed, &[b"webhook-secret", label, b"1"]);
        format!("{a:016x}{b:016x}")
    })
}

/// The database path, relative to the run directory (the child's cwd).
pub const DB_RELATIVE_PATH: &str = "data/orchestrator.db";

/// A tenant's key and limits, as the load generator and checks need them.
#[derive(Clone, Debug)]
pub struct TenantKey {
    /// The tenant.
    pub tenant: String,
    /// The API key, in clear (the config holds its SHA-256).
    pub key: String,
    /// Its rate limit: requests per second and burst.
    pub rate_limit: (u32, u32),
    /// A second key of the same tenant with [`OPS_ROLE`], for the harness's
    /// own reads of the tenant's jobs (jobs are visible to their tenant only).
    pub ops_key: String,
    /// The tenant's keys for the load's access requests: one per role of the
    /// config when the mix has `forbidden` or `roles` requests, an expired one when it
    /// has `expired_key`, and an unknown one (never configured) when it has
    /// `unknown_key`.
    pub access_keys: Vec<(Credential, String)>,
}

/// The rendered configuration and the keys that go with it.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The YAML the child reads.
    pub yaml: String,
    /// The typed config (for limits the checks need).
    pub config: Config,
    /// One key per scenario tenant.
    pub tenants: Vec<TenantKey>,
    /// The harness's own key (admin), for probes and final reads.
    pub ops_key: String,
}

/// Builds the run's configuration. `llm_base_url` is the `llm` proxy's URL,
/// so that every provider call crosses the fault proxy. `listen` replaces
/// `server.listen` (a container listens on every interface of its own
/// network namespace, which the config must then allow explicitly).
pub fn render(
    scenario: &Scenario,
    run_seed: u64,
    llm_base_url: &str,
    listen: Option<std::net::SocketAddr>,
    webhooks: Option<WebhookTargets>,
) -> Result<RunConfig, String> {
    let outcome = config::validate(
        scenario.system.config_yaml.as_bytes(),
        &ValidateOptions::default(),
    );
    let Some(mut config) = outcome.config else {
        let first = outcome
            .diagnostics
            .iter()
            .map(|d| d.display_with_file("<merged config>").to_string())
            .collect::<Vec<_>>()
            .join("\n");
        return Err(format!(
            "the merged orchestrator config is invalid:\n{first}"
        ));
    };
    let url: reqwest::Url = llm_base_url
        .parse()
        .map_err(|e| format!("bad provider url {llm_base_url}: {e}"))?;
    for provider in &mut config.llm.providers {
        provider.base_url = url.clone();
    }
    if let Some(listen) = listen {
        config.server.listen = listen;
        config.server.allow_public_listen = listen.ip().is_unspecified();
    }
    config.storage = StorageConfig::Sqlite {
        path: PathBuf::from(DB_RELATIVE_PATH),
    };
    if let Some(targets) = webhooks {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let entries = [
            format!("http://{SINK_HOST}:{}/hooks", targets.sink_port),
            format!("http://127.0.0.1:{}/", targets.sink_port),
            format!("http://{TRAP_HOST}:{}/hooks", targets.trap_port),
        ];
        for entry in entries {
            let url = entry
                .parse()
                .map_err(|e| format!("bad allowlist entry {entry}: {e}"))?;
            config.security.outbound_url_allowlist.push(url);
        }
        for host in [SINK_HOST, TRAP_HOST] {
            config
                .webhooks
                .resolve
                .insert(host.to_owned(), vec![loopback]);
        }
        config.webhooks.secret_env = Some(WEBHOOK_SECRET_ENVS[0].to_owned());
        config.webhooks.previous_secret_env = Some(WEBHOOK_SECRET_ENVS[1].to_owned());
    }
    let make_key = |tenant: &str| {
        let v = seed::derive(run_seed, &[b"api-key", tenant.as_bytes()]);
        format!("gauntlet-{tenant}-{v:016x}")
    };
    let hash = |key: &str| -> [u8; 32] { Sha256::digest(key.as_bytes()).into() };
    config.security.roles.insert(
        OPS_ROLE.to_owned(),
        orchestrator::config::RoleConfig {
            inherits: Vec::new(),
            permissions: orchestrator::config::raw::Permission::ALL.to_vec(),
        },
    );
    config.security.rate_limits.insert(
        OPS_ROLE.to_owned(),
        orchestrator::config::RateLimitConfig {
            requests_per_second: 100_000,
            burst: 100_000,
        },
    );
    // A key for `label` (derived from the run's seed), configured as
    // `gauntlet-LABEL` with this tenant, role and expiry; returns it in clear.
    let add_key = |keys: &mut Vec<ApiKeyConfig>,
                   label: &str,
                   tenant: &str,
                   role: &str,
                   expires_at: Option<std::time::SystemTime>| {
        let key = make_key(label);
        keys.push(ApiKeyConfig {
            id: format!("gauntlet-{label}"),
            sha256: hash(&key),
            tenant: tenant.to_owned(),
            role: role.to_owned(),
            expires_at,
        });
        key
    };
    // Every client reaches the service through the fault proxy (on Docker,
    // through the bridge too), so the load names its client addresses in
    // `X-Forwarded-For`, as a load balancer would, and the service trusts
    // the proxy's address to say: one client's bad keys lock out that
    // client, not every client at once.
    for net in TRUSTED_PROXIES {
        let net: ipnet::IpNet = net
            .parse()
            .map_err(|e| format!("bad trusted proxy {net}: {e}"))?;
        if !config.security.lockout.trusted_proxies.contains(&net) {
            config.security.lockout.trusted_proxies.push(net);
        }
    }
    let mut tenants = Vec::new();
    for (tenant_index, t) in scenario.load.tenants.iter().enumerate() {
        let keys = &mut config.security.api_keys;
        let key = add_key(keys, &t.name, &t.name, &t.role, None);
        let ops_key = add_key(keys, &format!("{}-ops", t.name), &t.name, OPS_ROLE, None);
        let mix = &scenario.load.mix;
        let mut access_keys = Vec::new();
        if mix.forbidden > 0 || mix.roles > 0 {
            for role in scenario.system.contract.roles.keys() {
                let label = format!("{}-as-{role}", t.name);
                let key = add_key(keys, &label, &t.name, role, None);
                access_keys.push((Credential::Role(role.clone()), key));
            }
        }
        if mix.expired_key > 0 {
            // Long past, so no clock skew can make it valid.
            let expired = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
            let label = format!("{}-expired", t.name);
            let key = add_key(keys, &label, &t.name, &t.role, Some(expired));
            access_keys.push((Credential::Expired, key));
        }
        if mix.unknown_key > 0 {
            // Shaped like the others, but never configured.
            let key = make_key(&format!("{}-unknown", t.name));
            access_keys.push((Credential::Unknown, key));
        }
        if scenario.load.attack.is_some() && tenant_index == 0 {
            // A key in the issued format, whose id the attacker names.
            let secret = seed::derive(run_seed, &[b"api-key", b"victim"]);
            let key = format!("gk.{VICTIM_KEY_ID}.{secret:016x}");
            keys.push(ApiKeyConfig {
                id: VICTIM_KEY_ID.to_owned(),
                sha256: hash(&key),
                tenant: t.name.clone(),
                role: t.role.clone(),
                expires_at: None,
            });
            access_keys.push((Credential::Victim, key));
            access_keys.push((Credential::Guess, format!("gk.{VICTIM_KEY_ID}.guess-")));
        }
        if let Some(limit) = t.budget_tokens {
            config.budget.tenants.insert(t.name.clone(), limit);
        }
        tenants.push(TenantKey {
            tenant: t.name.clone(),
            key,
            rate_limit: scenario.system.contract.rate_limit(&t.role),
            ops_key,
            access_keys,
        });
    }
    let ops_key = make_key(OPS_TENANT);
    config.security.api_keys.push(ApiKeyConfig {
        id: OPS_TENANT.to_owned(),
        sha256: hash(&ops_key),
        tenant: OPS_TENANT.to_owned(),
        role: OPS_ROLE.to_owned(),
        expires_at: None,
    });
    let yaml = config.to_yaml();
    // The rendered file must validate as the child will read it; a failure
    // here is a harness bug, reported rather than discovered by the child.
    let check = config::validate(yaml.as_bytes(), &ValidateOptions::default());
    if check.config.is_none() {
        let lines: Vec<String> = check
            .diagnostics
            .iter()
            .map(|d| d.display_with_file("<run config>").to_string())
            .collect();
        return Err(format!(
            "the run's config does not validate:\n{}",
            lines.join("\n")
        ));
    }
    Ok(RunConfig {
        yaml,
        config,
        tenants,
        ops_key,
    })
}

/// The limits by tenant, for the rate-limit invariant.
pub fn rate_limits(run: &RunConfig) -> BTreeMap<String, (u32, u32)> {
    run.tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.rate_limit))
        .collect()
}

/// The run's configuration for a replica whose store is the Redis server
/// at `url` (its own `redis[i]` link of the fault proxy).
pub fn on_redis(run: &RunConfig, url: &str) -> Result<String, String> {
    let mut config = run.config.clone();
    config.storage = StorageConfig::Redis {
        url: url
            .parse()
            .map_err(|e| format!("bad redis url {url}: {e}"))?,
    };
    Ok(config.to_yaml())
}

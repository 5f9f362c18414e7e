//! The webhook deliverer: sends what the outbox holds, through the SSRF
//! guard, signed, with retries and backoff up to `webhooks.max_attempts`,
//! and records every attempt in the store (audited there).
//!
//! The signature header, `Gauntlet-Signature: t=<unix seconds>,v1=<hex>`,
//! holds HMAC-SHA256 over `<t>.<body>` under the secret, and a second `v1`
//! under the previous secret during a rotation, so that a receiver holding
//! either verifies. `Gauntlet-Delivery` is the delivery id, the same on every
//! attempt; `Gauntlet-Event` the event.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use super::AppState;
use super::worker::{Phase, reached};
use crate::config::WebhooksConfig;
use crate::outbound::{self, CallError, Resolver, Resolving, SystemResolver};
use crate::store::{Delivery, DeliveryOutcome, DeliveryState, now_ms};

/// Deliveries sent at once, at most.
const CONCURRENT_DELIVERIES: u32 = 8;

/// How often the outbox is looked at when idle.
const POLL: Duration = Duration::from_millis(200);

/// The least a signing secret may have.
pub const MIN_SECRET_BYTES: usize = 16;

/// The webhook signing secrets: the current one first.
#[derive(Clone, Default)]
pub struct Secrets(Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    // The secrets stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} configured)", self.0.len())
    }
}

/// Why the secrets could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// A named variable is not set.
    #[error("webhooks.{field}: environment variable {var} is not set")]
    Unset {
        /// `secret_env` or `previous_secret_env`.
        field: &'static str,
        /// The variable.
        var: String,
    },
    /// A variable's value is too short.
    #[error("webhooks.{field}: {var} holds {len} bytes, at least {MIN_SECRET_BYTES} are needed")]
    Short {
        /// `secret_env` or `previous_secret_env`.
        field: &'static str,
        /// The variable.
        var: String,
        /// Its length.
        len: usize,
    },
}

impl Secrets {
    /// The secrets `config` names, read through `env`.
    pub fn new(
        config: &WebhooksConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Secrets, SecretError> {
        let mut secrets = Vec::new();
        for (field, var) in [
            ("secret_env", &config.secret_env),
            ("previous_secret_env", &config.previous_secret_env),
        ] {
            let Some(var) = var else { continue };
            let value = env(var).ok_or_else(|| SecretError::Unset {
                field,
                var: var.clone(),
            })?;
            if value.len() < MIN_SECRET_BYTES {
                return Err(SecretError::Short {
                    field,
                    var: var.clone(),
                    len: value.len(),
                });
            }
            secrets.push(value.into_bytes());
        }
        Ok(Secrets(secrets))
    }

    /// The `Gauntlet-Signature` value for `body` at `t` (Unix seconds), or
    /// `None` when no secret is configured.
    pub fn signature(&self, t: i64, body: &[u8]) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut value = format!("t={t}");
        for secret in &self.0 {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
            mac.update(t.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            value.push_str(",v1=");
            value.push_str(&hex::encode(mac.finalize().into_bytes()));
        }
        Some(value)
    }
}

/// `webhooks.resolve`'s fixed answers, then the system's resolver.
pub struct ConfiguredResolver {
    fixed: BTreeMap<String, Vec<IpAddr>>,
}

impl ConfiguredResolver {
    /// The resolver of `config`.
    pub fn new(config: &WebhooksConfig) -> ConfiguredResolver {
        ConfiguredResolver {
            fixed: config.resolve.clone(),
        }
    }
}

impl Resolver for ConfiguredResolver {
    fn resolve(&self, host: &str) -> Resolving {
        match self.fixed.get(&host.to_ascii_lowercase()) {
            Some(addresses) => {
                let addresses = addresses.clone();
                Box::pin(async move { Ok(addresses) })
            }
            None => SystemResolver.resolve(host),
        }
    }
}

/// The pause before attempt `attempts + 1`: `backoff` doubled per attempt
/// made beyond the first, at most `max_backoff`.
fn pause(config: &WebhooksConfig, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    config
        .backoff
        .saturating_mul(1 << doublings)
        .min(config.max_backoff)
}

/// Runs until the pool drains: takes due deliveries from the outbox, a
/// batch at a time, and sends them concurrently.
pub(super) async fn deliverer(state: Arc<AppState>, mut phase: watch::Receiver<Phase>) {
    loop {
        let due = state
            .store
            .run(|s| s.due_deliveries(now_ms(), CONCURRENT_DELIVERIES))
            .await;
        let mut batch = match due {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                Vec::new()
            }
        };
        // Retries are background work, paused from degradation level 1.
        if crate::degradation::pauses_retries(state.degradation.level()) {
            batch.retain(|d| d.attempts == 0);
        }
        let idle = batch.is_empty();
        let sends = batch.into_iter().map(|d| deliver(&state, d));
        tokio::select! {
            () = reached(&mut phase, Phase::Drain) => return,
            _ = futures_util::future::join_all(sends) => {}
        }
        if idle {
            tokio::select! {
                () = reached(&mut phase, Phase::Drain) => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// One attempt of `delivery`, recorded.
async fn deliver(state: &Arc<AppState>, delivery: Delivery) {
    let config = &state.config.webhooks;
    let outcome = match url::Url::parse(&delivery.url) {
        Err(e) => DeliveryOutcome::Refused {
            code: "invalid-url",
            reason: format!("not a valid URL: {e}"),
        },
        Ok(url) => {
            let body = delivery.payload.clone().into_bytes();
            let mut headers = vec![
                ("gauntlet-delivery", delivery.id.clone()),
                ("gauntlet-event", delivery.event.clone()),
            ];
            if let Some(signature) = state.webhook_secrets.signature(now_ms() / 1000, &body) {
                headers.push(("gauntlet-signature", signature));
            }
            match outbound::post(&state.webhook_client, &state.outbound, &url, &headers, body).await
            {
                Ok((status, _)) if (200..300).contains(&status) => {
                    DeliveryOutcome::Delivered { status }
                }
                Ok((status, _)) => {
                    failed(config, &delivery, Some(status), format!("status {status}"))
                }
                Err(CallError::Refused(r)) => DeliveryOutcome::Refused {
                    code: r.code(),
                    reason: r.to_string(),
                },
                Err(CallError::Failed(e)) => failed(config, &delivery, None, e),
            }
        }
    };
    let label = match &outcome {
        DeliveryOutcome::Delivered { .. } => "delivered",
        DeliveryOutcome::Refused { .. } => "refused",
        DeliveryOutcome::Failed {
            retry_at_ms: Some(_),
            ..
        } => "retried",
        DeliveryOutcome::Failed { .. } => "failed",
    };
    if let DeliveryOutcome::Refused { reason, .. } = &outcome {
        tracing::warn!(delivery_id = %delivery.id, job_id = %delivery.job_id, reason = %reason, "webhook refused");
    }
    state
        .metrics
        .webhook_deliveries
        .with_label_values(&[label])
        .inc();
    let id = delivery.id.clone();
    let recorded = state
        .store
        .run(move |s| s.record_delivery(&id, &outcome, now_ms()))
        .await;
    match recorded {
        Ok(Some(DeliveryState::Pending | DeliveryState::Delivered)) | Ok(None) => {}
        Ok(Some(final_state)) => {
            tracing::warn!(delivery_id = %delivery.id, job_id = %delivery.job_id, state = final_state.as_str(), "webhook not delivered");
        }
        // The row stays pending: the delivery is sent again (same id).
        Err(e) => {
            tracing::error!(error = %e, delivery_id = %delivery.id, "cannot record a webhook attempt")
        }
    }
}

fn failed(
    config: &WebhooksConfig,
    delivery: &Delivery,
    status: Option<u16>,
    error: String,
) -> DeliveryOutcome {
    let attempts = delivery.attempts + 1;
    let retry_at_ms = (attempts < config.max_attempts).then(|| {
        now_ms()
            .saturating_add(i64::try_from(pause(config, attempts).as_millis()).unwrap_or(i64::MAX))
    });
    DeliveryOutcome::Failed {
        status,
        error,
        retry_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_and_body_under_each_secret() {
        let config = WebhooksConfig {
            secret_env: Some("A".into()),
            previous_secret_env: Some("B".into()),
            ..WebhooksConfig::default()
        };
        let secrets =
            Secrets::new(&config, |v| Some(format!("{v}-secret-of-enough-length"))).unwrap();
        let value = secrets.signature(1_700_000_000, b"{}").unwrap();
        let parts: Vec<&str> = value.split(',').collect();
        assert_eq!(parts.len(), 3, "{value}");
        assert_eq!(parts[0], "t=1700000000");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"A-secret-of-enough-length").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(
            parts[1],
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        );
        assert_ne!(parts[1], parts[2]);
        assert_eq!(Secrets::default().signature(1, b"{}"), None);
    }

    #[test]
    fn a_missing_or_short_secret_names_the_field_and_variable() {
        let config = WebhooksConfig {
            secret_env: Some("HOOK_SECRET".into()),
            ..WebhooksConfig::default()
        };
        assert_eq!(
            Secrets::new(&config, |_| None).unwrap_err().to_string(),
            "webhooks.secret_env: environment variable HOOK_SECRET is not set"
        );
        assert_eq!(
            Secrets::new(&config, |_| Some("short".into()))
                .unwrap_err()
                .to_string(),
            "webhooks.secret_env: HOOK_SECRET holds 5 bytes, at least 16 are needed"
        );
    }

    #[test]
    fn the_pause_doubles_from_backoff_up_to_max_backoff() {
        let config = WebhooksConfig {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..WebhooksConfig::default()
        };
        let pauses: Vec<u128> = (1..=5).map(|n| pause(&config, n).as_millis()).collect();
        assert_eq!(pauses, vec![100, 200, 400, 500, 500]);
    }
}

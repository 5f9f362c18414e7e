//! The key API: issue (`POST /v1/keys`), list (`GET /v1/keys`), rotate
//! (`POST /v1/keys/{id}/rotate`) and revoke (`DELETE /v1/keys/{id}`).
//!
//! Two rules beside the route permissions. A key acts on its own tenant's
//! keys, and on every tenant's with `keys.manage_all` (`keys.read_all` to
//! list them); another tenant's key is not found, as a job is not. And a key
//! only issues, rotates or revokes keys whose role it covers (holds every
//! permission of): otherwise `keys.create` would grant everything, and
//! rotating a stronger key would hand over its successor.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::jobs::{acting_tenant, query};
use super::middleware::forbidden;
use super::tasks::{json_body, store_problem};
use crate::auth::{self, Principal, unix_ms};
use crate::config::Permission;
use crate::problem::Problem;
use crate::store::{Issue, KeyRecord, NewKey, Revocation, Rotation};

/// The longest `expires_in` a key may be issued with.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(3650 * 86_400);
/// Listing size when the request names none.
const DEFAULT_PAGE: u32 = 100;

/// The body of `POST /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    role: String,
    tenant: Option<String>,
    id: Option<String>,
    expires_in: Option<String>,
}

/// `POST /v1/keys`: 201 with the key's plaintext, shown this once.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: CreateRequest = json_body(&state, body, &headers).await?;
    let tenant = acting_tenant(&principal, request.tenant, Permission::KeysManageAll)?;
    if !state.auth.has_role(&request.role) {
        let mut known: Vec<String> = crate::roles::resolve(&state.config.security)
            .into_keys()
            .collect();
        known.sort();
        return Err(Problem::bad_request(format!(
            "role: unknown role `{}`; known roles: {}",
            request.role,
            known.join(", ")
        ))
        .with("field", "role"));
    }
    if !principal.covers(&state.auth, &request.role) {
        return Err(beyond_role(&principal, &request.role));
    }
    if let Some(id) = &request.id {
        if !auth::valid_key_id(id) {
            return Err(Problem::bad_request(format!(
                "id: `{id}` is not a key id: 1 to 64 of a-z, 0-9, `_` and `-`"
            ))
            .with("field", "id"));
        }
        if state.auth.is_bootstrap(id) {
            return Err(id_taken(id));
        }
    }
    let now = SystemTime::now();
    let now_ms = unix_ms(now);
    let expires_ms = match &request.expires_in {
        None => None,
        Some(text) => Some(now_ms + expires_in_ms(text)?),
    };
    let (id, plaintext, sha256) = auth::generate_key(request.id.as_deref());
    let new = NewKey {
        id: id.clone(),
        tenant,
        role: request.role,
        sha256,
        expires_ms,
    };
    let actor = principal.key_id.to_string();
    let max = state.auth.policy().max_keys;
    let outcome = state
        .store
        .run(move |s| s.create_key(&new, &actor, max, now_ms))
        .await
        .map_err(store_problem)?;
    match outcome {
        Issue::Created(record) => {
            state.auth.load([record.clone()], now);
            count(&state, "created");
            let mut body = record.to_json(now_ms);
            body["key"] = json!(plaintext);
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Issue::IdTaken => Err(id_taken(&id)),
        Issue::Full { max } => Err(full(max)),
    }
}

/// The query of `GET /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    tenant: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/keys?tenant=&limit=`: the tenant's bootstrap keys, then its
/// issued keys newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let q = query(q)?;
    let tenant = acting_tenant(&principal, q.tenant, Permission::KeysReadAll)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let now = SystemTime::now();
    let now_ms = unix_ms(now);
    let mut keys: Vec<Value> = state
        .auth
        .bootstrap_keys()
        .filter(|(p, _)| *p.tenant == *tenant)
        .map(|(p, expires)| {
            let expires_ms = expires.map(unix_ms);
            json!({
                "id": &*p.key_id,
                "tenant": &*p.tenant,
                "role": &*p.role,
                "source": "config",
                "state": if expires_ms.is_some_and(|t| now_ms >= t) { "expired" } else { "live" },
                "expires_ms": expires_ms,
            })
        })
        .collect();
    let issued = state
        .store
        .run(move |s| s.keys(Some(&tenant), limit))
        .await
        .map_err(store_problem)?;
    keys.extend(issued.iter().map(|r| r.to_json(now_ms)));
    Ok(Json(json!({
        "keys": keys,
        "rotation": state.auth.rotation_report(now),
    })))
}

/// `POST /v1/keys/{id}/rotate`: 201 with the successor's plaintext; the old
/// key works until `overlap_until_ms`.
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let old = manageable(&state, &principal, &id).await?;
    let now = SystemTime::now();
    let now_ms = unix_ms(now);
    let (new_id, plaintext, sha256) = auth::generate_key(None);
    let successor = NewKey {
        id: new_id.clone(),
        tenant: old.tenant,
        role: old.role,
        sha256,
        expires_ms: old.expires_ms,
    };
    let actor = principal.key_id.to_string();
    let policy = state.auth.policy();
    let overlap_ms = i64::try_from(policy.rotation_overlap.as_millis()).unwrap_or(i64::MAX);
    let max = policy.max_keys;
    let outcome = state
        .store
        .run(move |s| s.rotate_key(&id, &successor, overlap_ms, &actor, max, now_ms))
        .await
        .map_err(store_problem)?;
    match outcome {
        Rotation::Rotated { old, new } => {
            state.auth.load([old.clone(), new.clone()], now);
            count(&state, "rotated");
            let mut body = new.to_json(now_ms);
            body["key"] = json!(plaintext);
            body["rotated"] = old.to_json(now_ms);
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Rotation::NotFound => Err(Problem::not_found("no such key")),
        Rotation::NotLive(record) => Err(Problem::new(
            StatusCode::CONFLICT,
            "key-not-live",
            "Key cannot be rotated",
            format!(
                "key {} is {}; only a live key that was not rotated yet can be rotated",
                record.id,
                record.state(now_ms)
            ),
        )
        .with("state", record.state(now_ms))),
        Rotation::IdTaken => Err(id_taken(&new_id)),
        Rotation::Full { max } => Err(full(max)),
    }
}

/// `DELETE /v1/keys/{id}`: the key stops working at once. Revoking a
/// revoked key changes nothing and answers the same.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    manageable(&state, &principal, &id).await?;
    let now = SystemTime::now();
    let now_ms = unix_ms(now);
    let actor = principal.key_id.to_string();
    let outcome = state
        .store
        .run(move |s| s.revoke_key(&id, &actor, now_ms))
        .await
        .map_err(store_problem)?;
    match outcome {
        Revocation::Revoked(record) => {
            state.auth.load([record.clone()], now);
            count(&state, "revoked");
            Ok(Json(record.to_json(now_ms)))
        }
        Revocation::AlreadyRevoked(record) => Ok(Json(record.to_json(now_ms))),
        Revocation::NotFound => Err(Problem::not_found("no such key")),
    }
}

/// The issued key `id`, if the caller may rotate or revoke it.
async fn manageable(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<KeyRecord, Problem> {
    if state.auth.is_bootstrap(id) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "bootstrap-key",
            "Key comes from the configuration",
            format!(
                "key {id} is a bootstrap key of security.api_keys: change it in the configuration"
            ),
        ));
    }
    let lookup = id.to_owned();
    let record = state
        .store
        .run(move |s| s.key(&lookup))
        .await
        .map_err(store_problem)?;
    let Some(record) = record
        .filter(|r| r.tenant == *principal.tenant || principal.can(Permission::KeysManageAll))
    else {
        return Err(Problem::not_found("no such key"));
    };
    if !principal.covers(&state.auth, &record.role) {
        return Err(beyond_role(principal, &record.role));
    }
    Ok(record)
}

fn expires_in_ms(text: &str) -> Result<i64, Problem> {
    let invalid = |why: String| {
        Problem::bad_request(format!("expires_in: {why}")).with("field", "expires_in")
    };
    let d = crate::config::parse_duration(text).map_err(invalid)?;
    if d.is_zero() || d > MAX_EXPIRES_IN {
        return Err(invalid(format!(
            "`{text}` must be greater than zero and at most {}",
            crate::config::format_duration(MAX_EXPIRES_IN)
        )));
    }
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn beyond_role(principal: &Principal, role: &str) -> Problem {
    Problem {
        detail: format!(
            "role {} does not hold every permission of role {role}, so it cannot manage its keys",
            principal.role
        ),
        ..forbidden(principal)
    }
}

fn id_taken(id: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "key-id-taken",
        "Key id taken",
        format!("a key with id {id} exists already; ids are never reused"),
    )
}

fn full(max: u32) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "key-limit",
        "Too many keys",
        format!("{max} issued keys are live already (security.keys.max_keys); revoke one first"),
    )
}

fn count(state: &AppState, action: &str) {
    state
        .metrics
        .api_key_changes
        .with_label_values(&[action])
        .inc();
}

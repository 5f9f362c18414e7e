//! The audit API: read the log, verify its chain.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::tasks::store_problem;
use crate::audit::Verification;
use crate::problem::Problem;

/// Page size when the request names none.
const DEFAULT_PAGE: u32 = 100;

/// The query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    after_seq: Option<u64>,
    limit: Option<u32>,
}

/// `GET /v1/audit?after_seq=&limit=`: entries after `after_seq` (default 0),
/// oldest first, at most `limit` (default 100, at most 1000).
pub async fn list(
    State(state): State<Arc<AppState>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(q) =
        q.map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))?;
    let after = q.after_seq.unwrap_or(0);
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let entries = state
        .store
        .run(move |s| s.audit_entries(after, limit))
        .await
        .map_err(store_problem)?;
    let next = entries.last().map_or(after, |e| e.seq);
    Ok(Json(json!({"entries": entries, "next_after_seq": next})))
}

/// `GET /v1/audit/verify`: `{"ok", "entries", "first_bad_seq", "reason",
/// "head_hash"}`. A broken chain is a finding, not a failure of the request,
/// so the status is 200 either way.
pub async fn verify(State(state): State<Arc<AppState>>) -> Result<Json<Verification>, Problem> {
    let verification = state
        .store
        .run(|s| s.verify_audit())
        .await
        .map_err(store_problem)?;
    if !verification.ok {
        tracing::error!(
            first_bad_seq = verification.first_bad_seq,
            reason = verification.reason.as_deref().unwrap_or(""),
            "audit chain does not verify"
        );
    }
    Ok(Json(verification))
}

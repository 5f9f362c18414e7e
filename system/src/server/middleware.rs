//! The middleware stack. From the outside in: request id, access log and
//! metrics; security headers; CORS; the request timeout; panic recovery.
//! Authentication, rate limiting and authorisation wrap the API routes only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::AppState;
use crate::audit::NewEntry;
use crate::auth::{self, Auth, Principal};
use crate::lockout::{self, Locked, Subject};
use crate::problem::Problem;
use crate::store::{SYSTEM_ACTOR, Store, now_ms};

/// The request's correlation id: the client's `X-Request-Id` when it is
/// usable, else a fresh UUID. Handlers read it from the request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// How long the service took over the request, on every answer.
static X_RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time");

/// The longest client-supplied request id we echo; longer ones are replaced,
/// so that logs and headers stay bounded.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Wraps the router in the stack described in the module docs.
pub fn wrap(router: Router<Arc<AppState>>, state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let timeout = state.config.server.request_timeout;
    let hsts = state.config.security.hsts;
    router
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("request handler panicked");
                Problem::internal().into_response()
            },
        ))
        .layer(middleware::from_fn(
            move |req: Request, next: Next| async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => Problem::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "request-timeout",
                        "Request timeout",
                        format!("the request took longer than {}ms", timeout.as_millis()),
                    )
                    .into_response(),
                }
            },
        ))
        .layer(middleware::map_response_with_state(
            state.clone(),
            redact_problem,
        ))
        .layer(cors(&state.config.security.cors_allowed_origins))
        .layer(middleware::map_response(
            move |mut response: Response| async move {
                security_headers(&mut response, hsts);
                response
            },
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
}

/// The largest problem body redacted; ours are a few hundred bytes, and a
/// larger one is replaced rather than passed through unread.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// Problem details can quote what the client sent (a bad URL, a field's
/// value): they pass through the PII redactor like every other text that
/// leaves the handler, so that one principal's data never reaches another's
/// logs or screens by an error.
async fn redact_problem(State(state): State<Arc<AppState>>, response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == crate::problem::CONTENT_TYPE.as_bytes());
    if !is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let redacted = match axum::body::to_bytes(body, MAX_PROBLEM_BYTES).await {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(value) => state.redactor.redact_json(value).to_string(),
            Err(_) => return Problem::internal().into_response(),
        },
        Err(_) => return Problem::internal().into_response(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(redacted))
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            X_REQUEST_ID.clone(),
        ])
        .expose_headers([
            X_REQUEST_ID.clone(),
            X_RESPONSE_TIME.clone(),
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            HeaderName::from_static("idempotent-replayed"),
        ]);
    if origins.iter().any(|o| o == "*") {
        // Validation allows `*` only when the operator opted in.
        return layer.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    layer.allow_origin(AllowOrigin::list(list))
}

fn security_headers(response: &mut Response, hsts: bool) {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // 0, as OWASP advises now: the filter it turned on in old browsers
    // could itself be abused to leak data, and CSP replaces it.
    h.insert(
        HeaderName::from_static("x-xss-protection"),
        HeaderValue::from_static("0"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // An API uses no browser feature; deny the powerful ones outright.
    h.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static(
            "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
        ),
    );
    // The API serves JSON only: nothing may load, run or frame it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
}

/// Assigns the request id, runs the request inside a span carrying it,
/// echoes it, and records the access log line and the request metrics.
async fn observe(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id: Arc<str> = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(Arc::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().into());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let mut response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    if super::degradation::counts(&route) {
        state
            .degradation
            .record(super::degradation::is_failure(&response));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    // The time the service spent, in milliseconds with microseconds: what
    // a client can set against the latency it saw.
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}ms", elapsed.as_secs_f64() * 1000.0)) {
        response.headers_mut().insert(X_RESPONSE_TIME.clone(), v);
    }
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    response
}

/// Refuses locked addresses and key ids, authenticates the key (counting a
/// failure against the lockout), takes one request from its rate limit, and
/// checks the route's permission in [`auth::ROUTE_PERMISSIONS`].
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let now = Instant::now();
    let subjects = lockout_subjects(&state, &req, header);
    audit_unlocked(&state, now).await;
    if let Some((subject, left)) = state.lockout.locked(&subjects, now) {
        state
            .metrics
            .auth_locked_refusals
            .with_label_values(&[subject.scope()])
            .inc();
        // The key is not looked at: a locked guesser learns nothing, and a
        // valid key from a locked address waits like any other.
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "auth-locked",
            "Locked after failed authentications",
            format!(
                "too many failed authentications from this {}; try again later",
                match subject {
                    Subject::Address(_) => "address",
                    Subject::KeyId(_) => "key id",
                }
            ),
        )
        .retry_after(left)
        .into_response();
    }
    let principal = match state.auth.authenticate(header, SystemTime::now()) {
        Ok(p) => p,
        Err(e) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            tracing::info!(reason = e.reason(), "authentication failed");
            // A request without a key guesses nothing; every other failure
            // counts toward a lockout.
            if e != auth::AuthError::Missing {
                let locked = state.lockout.fail(&subjects, now);
                audit_locked(&state, locked).await;
            }
            // One answer for every failure: the caller learns nothing about
            // which keys exist or have expired.
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
                "a valid API key is required: Authorization: Bearer <key>",
            )
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            .into_response();
        }
    };
    if state.auth.touch_due(&principal, SystemTime::now()) {
        // Off the request's path: a slow disk must not slow every caller
        // once a minute, and a lost write only loses a minute of precision.
        let id = principal.key_id.to_string();
        let store = state.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.run(move |s| s.touch_key(&id, now_ms())).await {
                tracing::warn!(error = %e, "cannot record when a key was last used");
            }
        });
    }
    let rate = match &state.store {
        // Replicas share one limit per key: a client spreading its requests
        // over them gets no more than from one.
        Store::Redis(redis) => {
            let (redis, id, limit) = (
                redis.clone(),
                principal.key_id.to_string(),
                principal.rate(),
            );
            match state.store.run(move |_| redis.take_rate(&id, limit)).await {
                Ok(taken) => Auth::shared_rate(&principal, taken),
                Err(e) => return super::tasks::store_problem(e).into_response(),
            }
        }
        Store::Sqlite(_) => state.auth.check_rate(&principal),
    };
    let rate_headers = [
        ("ratelimit-limit", u64::from(rate.limit)),
        ("ratelimit-remaining", u64::from(rate.remaining)),
        (
            "ratelimit-reset",
            if rate.reset.is_zero() {
                0
            } else {
                crate::problem::retry_after_seconds(rate.reset)
            },
        ),
    ];
    let mut response = if let Some(wait) = rate.retry_after {
        state
            .metrics
            .rate_limited
            .with_label_values(&[&principal.key_id])
            .inc();
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!(
                "key {} is limited to a burst of {} requests",
                principal.key_id, rate.limit
            ),
        )
        .retry_after(wait)
        .into_response()
    } else {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let needed = route.and_then(|r| auth::route_permission(req.method().as_str(), r));
        match needed {
            Some(permission) if principal.can(permission) => {
                req.extensions_mut().insert(principal);
                next.run(req).await
            }
            _ => {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&["forbidden"])
                    .inc();
                audit_denied(&state, &principal, req.method().as_str(), route).await;
                forbidden(&principal).into_response()
            }
        }
    };
    for (name, value) in rate_headers {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    response
}

/// What a failed authentication counts against: the client address, and the
/// key id an issued key names.
fn lockout_subjects(state: &AppState, req: &Request, header: Option<&str>) -> Vec<Subject> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let address = lockout::client_address(peer, forwarded, &state.lockout.config().trusted_proxies);
    let mut subjects = vec![Subject::Address(address)];
    subjects.extend(lockout::presented_key_id(header).map(Subject::KeyId));
    subjects
}

/// Audits and counts the subjects a failure just locked.
async fn audit_locked(state: &AppState, locked: Vec<Locked>) {
    let config = state.lockout.config();
    for l in locked {
        state
            .metrics
            .auth_lockouts
            .with_label_values(&[l.subject.scope()])
            .inc();
        tracing::warn!(subject = %l.subject, failures = l.failures, "locked after failed authentications");
        let entry = NewEntry::new(
            SYSTEM_ACTOR,
            "auth.locked",
            l.subject.to_string(),
            serde_json::json!({
                "scope": l.subject.scope(),
                "failures": l.failures,
                "window_ms": config.window.as_millis() as u64,
                "duration_ms": config.duration.as_millis() as u64,
            }),
        );
        record(state, entry).await;
    }
    track(state);
}

/// Sets the gauge of subjects the lockout table holds.
fn track(state: &AppState) {
    state
        .metrics
        .auth_lockout_tracked
        .set(i64::try_from(state.lockout.tracked()).unwrap_or(i64::MAX));
}

/// Audits the lockouts that ended since the last sweep (at most a few times
/// a second: see [`crate::lockout::Lockout::sweep`]).
async fn audit_unlocked(state: &AppState, now: Instant) {
    let ended = state.lockout.sweep(now);
    if ended.is_empty() {
        return;
    }
    for (subject, why) in ended {
        tracing::info!(subject = %subject, reason = why.reason(), "lockout ended");
        let entry = NewEntry::new(
            SYSTEM_ACTOR,
            "auth.unlocked",
            subject.to_string(),
            serde_json::json!({"scope": subject.scope(), "reason": why.reason()}),
        );
        record(state, entry).await;
    }
    track(state);
}

/// Appends a lockout's entry to the audit log; a store that refuses it is
/// logged, as the request it rides on must still be answered.
async fn record(state: &AppState, entry: NewEntry) {
    let action = entry.action;
    if let Err(e) = state.store.run(move |s| s.record_audit(entry)).await {
        tracing::error!(error = %e, action, "cannot record a lockout in the audit log");
    }
}

/// Records an authorisation denied in the audit log before the 403 goes out.
/// The rate limit has already admitted the request, so a denied caller
/// cannot flood the log faster than its key's limit.
async fn audit_denied(state: &AppState, principal: &Principal, method: &str, route: Option<&str>) {
    let entry = NewEntry::new(
        principal.key_id.to_string(),
        "auth.denied",
        format!("{method} {}", route.unwrap_or("unmatched")),
        serde_json::json!({"tenant": &*principal.tenant, "role": &*principal.role}),
    );
    if let Err(e) = state.store.run(move |s| s.record_audit(entry)).await {
        tracing::error!(error = %e, "cannot record a denied request in the audit log");
    }
}

/// 403 for a principal whose role lacks what the request needs.
pub fn forbidden(principal: &Principal) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden",
        format!("role {} does not grant this operation", principal.role),
    )
}

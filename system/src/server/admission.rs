//! Admission control: a fixed bound on how many requests of each route that
//! does work run at once (`server.admission`). A request beyond the bound is
//! answered 503 `overloaded` with `Retry-After` at once, before its body is
//! read, instead of queueing behind the others until `request_timeout`; a
//! client can tell "the service is full, come back" from "it failed".
//!
//! The bound is tower's `ConcurrencyLimit` (a semaphore shared by every clone
//! of the route's service) under `LoadShed`, which turns "no permit free" into
//! an immediate error rather than a wait; axum's `HandleErrorLayer` makes the
//! problem response. The bound is fixed and configured rather than adaptive
//! (a gradient or AIMD on latency): on a shared two-core machine latency moves
//! for reasons unrelated to load, and a limit that moves with it would shed at
//! random, whereas a fixed one sheds exactly what the config says and is
//! battle-tested as such (`shed_fast`).

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus::IntCounter;
use tower::BoxError;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;

use crate::config::AdmissionConfig;
use crate::metrics::Metrics;
use crate::problem::Problem;

/// The routes under admission control, named as in `requests_shed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/tasks`.
    Tasks,
    /// `POST /v1/jobs`.
    Jobs,
}

impl Route {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Tasks => "tasks",
            Route::Jobs => "jobs",
        }
    }

    fn in_flight(self, config: &AdmissionConfig) -> u32 {
        match self {
            Route::Tasks => config.tasks_in_flight,
            Route::Jobs => config.jobs_in_flight,
        }
    }
}

/// The layer stack that admits at most the route's bound at once and sheds
/// the rest as 503 `overloaded`.
pub type AdmissionLayer<F> =
    Stack<ConcurrencyLimitLayer, Stack<LoadShedLayer, Stack<HandleErrorLayer<F, ()>, Identity>>>;

/// The admission layer of `route`, to put on its method router.
pub fn layer(
    route: Route,
    config: &AdmissionConfig,
    metrics: &Metrics,
) -> AdmissionLayer<impl Fn(BoxError) -> std::future::Ready<Response> + Clone + Send + Sync + use<>>
{
    let shed = metrics.requests_shed.with_label_values(&[route.as_str()]);
    let retry_after = config.retry_after;
    let limit = usize::try_from(route.in_flight(config)).unwrap_or(usize::MAX);
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(move |error: BoxError| {
            std::future::ready(refusal(&error, route, &shed, retry_after))
        }))
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(limit))
        .into_inner()
}

/// The answer to a request the bound refused. The inner service never
/// fails (axum's routes are infallible), so the one error is `Overloaded`;
/// anything else would be a bug in the stack and is a plain 500.
fn refusal(error: &BoxError, route: Route, shed: &IntCounter, retry_after: Duration) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        shed.inc();
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            format!(
                "the service is running as many {} as it admits at once; retry later",
                route.as_str()
            ),
        )
        .retry_after(retry_after)
        .into_response()
    } else {
        tracing::error!(%error, route = route.as_str(), "admission control failed");
        Problem::internal().into_response()
    }
}

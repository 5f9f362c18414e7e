//! Toxiproxy's HTTP API: its routes, JSON shapes, status codes and error
//! bodies.
//!
//! Bodies are parsed as JSON whatever their `Content-Type`, because the
//! README's `curl -d` examples send `application/x-www-form-urlencoded`.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::model::{
    Proxy, ProxyConfig, ProxyUpdate, RawProxy, RawToxic, RawToxicUpdate, Toxic, populate_entries,
};
use super::registry::Registry;

/// The body of `GET /version`.
pub const VERSION: &str = concat!("gauntlet-", env!("CARGO_PKG_VERSION"));

type Shared = State<Arc<Registry>>;
type Body = Result<Bytes, BytesRejection>;

/// The API's routes.
pub(crate) fn router(registry: Arc<Registry>) -> Router {
    let body_limit = registry.limits().max_body_bytes;
    Router::new()
        .route("/proxies", get(list_proxies).post(create_proxy))
        .route(
            "/proxies/{proxy}",
            get(show_proxy)
                .post(update_proxy)
                .patch(update_proxy)
                .delete(delete_proxy),
        )
        .route(
            "/proxies/{proxy}/toxics",
            get(list_toxics).post(create_toxic),
        )
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(show_toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(delete_toxic),
        )
        .route("/populate", post(populate))
        .route("/reset", post(reset))
        .route("/version", get(version))
        .fallback(not_found)
        .layer(middleware::from_fn(refuse_browsers))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(registry)
}

/// Parses a body as JSON, whatever its content type.
fn json_body<T: DeserializeOwned>(body: Body, limit_bytes: usize) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit_bytes }
        } else {
            ApiError::BadRequestBody(rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequestBody(e.to_string()))
}

/// Runs a change to the registry to completion even if the client goes
/// away mid-request (axum then drops the handler): a change cut off halfway,
/// say a proxy stopped for a new address but not started again, would leave
/// the proxy in neither state.
async fn complete<T: Send + 'static>(
    change: impl Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(change).await.map_err(|e| {
        tracing::error!(error = %e, "proxy api change failed");
        ApiError::Internal("the change failed; see the server log".to_owned())
    })
}

async fn list_proxies(State(registry): Shared) -> Json<BTreeMap<String, Proxy>> {
    Json(registry.list().await)
}

async fn create_proxy(
    State(registry): Shared,
    body: Body,
) -> Result<(StatusCode, Json<Proxy>), ApiError> {
    let raw: RawProxy = json_body(body, registry.limits().max_body_bytes)?;
    let config = raw
        .validate()
        .map_err(|field| ApiError::MissingField(field.to_owned()))?;
    let proxy = complete(async move { registry.create(config).await }).await??;
    Ok((StatusCode::CREATED, Json(proxy)))
}

async fn show_proxy(
    State(registry): Shared,
    Path(proxy): Path<String>,
) -> Result<Json<Proxy>, ApiError> {
    Ok(Json(registry.get(&proxy).await?))
}

async fn update_proxy(
    State(registry): Shared,
    Path(proxy): Path<String>,
    body: Body,
) -> Result<Json<Proxy>, ApiError> {
    // Toxiproxy looks the proxy up before it reads the body.
    registry.get(&proxy).await?;
    let update: ProxyUpdate = json_body(body, registry.limits().max_body_bytes)?;
    Ok(Json(
        complete(async move { registry.update(&proxy, update).await }).await??,
    ))
}

async fn delete_proxy(
    State(registry): Shared,
    Path(proxy): Path<String>,
) -> Result<StatusCode, ApiError> {
    complete(async move { registry.delete(&proxy).await }).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_toxics(
    State(registry): Shared,
    Path(proxy): Path<String>,
) -> Result<Json<Vec<Toxic>>, ApiError> {
    Ok(Json(registry.toxics(&proxy).await?))
}

async fn create_toxic(
    State(registry): Shared,
    Path(proxy): Path<String>,
    body: Body,
) -> Result<Json<Toxic>, ApiError> {
    registry.get(&proxy).await?;
    let raw: RawToxic = json_body(body, registry.limits().max_body_bytes)?;
    Ok(Json(
        complete(async move { registry.add_toxic(&proxy, raw).await }).await??,
    ))
}

async fn show_toxic(
    State(registry): Shared,
    Path((proxy, toxic)): Path<(String, String)>,
) -> Result<Json<Toxic>, ApiError> {
    Ok(Json(registry.toxic(&proxy, &toxic).await?))
}

async fn update_toxic(
    State(registry): Shared,
    Path((proxy, toxic)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Toxic>, ApiError> {
    registry.toxic(&proxy, &toxic).await?;
    let update: RawToxicUpdate = json_body(body, registry.limits().max_body_bytes)?;
    Ok(Json(
        complete(async move { registry.update_toxic(&proxy, &toxic, update).await }).await??,
    ))
}

async fn delete_toxic(
    State(registry): Shared,
    Path((proxy, toxic)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    complete(async move { registry.remove_toxic(&proxy, &toxic).await }).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn populate(State(registry): Shared, body: Body) -> Response {
    let configs = match populate_configs(body, registry.limits().max_body_bytes) {
        Ok(configs) => configs,
        Err(e) => return e.into_response(),
    };
    let populated = complete(async move { registry.populate(configs).await }).await;
    match populated.unwrap_or_else(|e| Err((e, Vec::new()))) {
        Ok(proxies) => {
            let body = Populated {
                error: None,
                status: None,
                proxies,
            };
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err((e, proxies)) => {
            // Toxiproxy answers a failed populate with the error and the
            // proxies it did create.
            let body = Populated {
                error: Some(e.to_string()),
                status: Some(e.status().as_u16()),
                proxies,
            };
            (e.status(), Json(body)).into_response()
        }
    }
}

/// The answer of `POST /populate`, in Toxiproxy's field order.
#[derive(Serialize)]
struct Populated {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    proxies: Vec<Proxy>,
}

/// The proxies of a populate body, all checked before any is created.
fn populate_configs(body: Body, limit_bytes: usize) -> Result<Vec<ProxyConfig>, ApiError> {
    let value: Value = json_body(body, limit_bytes)?;
    populate_entries(value)?
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            raw.validate()
                .map_err(|field| ApiError::MissingField(format!("{field} at proxy {}", i + 1)))
        })
        .collect()
}

async fn reset(State(registry): Shared) -> Result<StatusCode, ApiError> {
    complete(async move { registry.reset().await }).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// The version as plain text, as Toxiproxy 2.1.3 to 2.5 answer it (2.6
/// switched to a JSON object); `toxiproxy_rust` and most clients read the
/// body as a string.
async fn version() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain;charset=utf-8"),
        )],
        VERSION,
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Refuses requests from browsers, as Toxiproxy does: a web page must not be
/// able to drive a fault proxy on the developer's machine.
async fn refuse_browsers(request: Request, next: Next) -> Response {
    let from_browser = request
        .headers()
        .get(header::USER_AGENT)
        .is_some_and(|agent| agent.as_bytes().starts_with(b"Mozilla/"));
    if from_browser {
        return (StatusCode::FORBIDDEN, "User agent not allowed\n").into_response();
    }
    next.run(request).await
}

/// A listener that holds at most `permits` API connections open at once;
/// further clients wait in the accept backlog.
pub(crate) struct LimitedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    pub(crate) fn new(listener: TcpListener, max_connections: usize) -> LimitedListener {
        LimitedListener {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, std::net::SocketAddr) {
        loop {
            // The semaphore is never closed, so acquiring only waits.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                continue;
            };
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    return (
                        LimitedStream {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy api accept failed");
                    // As axum does: back off instead of spinning on, say,
                    // a full file descriptor table.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// An API connection, holding its permit until closed.
pub(crate) struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

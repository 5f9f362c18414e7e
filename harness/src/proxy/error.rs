//! What can go wrong: API errors (with Toxiproxy's messages and statuses),
//! starting the server, reading a config file, and the client's errors.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error the API answers with: `{"error": MESSAGE, "status": CODE}`. The
/// messages of the variants Toxiproxy has are Toxiproxy's, word for word,
/// because clients match on them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON the endpoint takes, or a value in it is out
    /// of range (400).
    #[error("bad request body: {0}")]
    BadRequestBody(String),
    /// The body is larger than the API accepts (413).
    #[error("bad request body: larger than {limit_bytes} bytes")]
    BodyTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// A required field is absent or empty (400); the text names it.
    #[error("missing required field: {0}")]
    MissingField(String),
    /// No proxy has that name (404).
    #[error("proxy not found")]
    ProxyNotFound,
    /// A proxy with that name exists already (409).
    #[error("proxy already exists")]
    ProxyAlreadyExists,
    /// The stream is neither `upstream` nor `downstream` (400).
    #[error("stream was invalid, can be either upstream or downstream")]
    InvalidStream,
    /// The toxic type is not one this proxy implements (400).
    #[error("invalid toxic type")]
    InvalidToxicType,
    /// The proxy has a toxic with that name already (409).
    #[error("toxic already exists")]
    ToxicAlreadyExists,
    /// The proxy has no toxic with that name (404).
    #[error("toxic not found")]
    ToxicNotFound,
    /// Creating this would pass one of the server's limits (400).
    #[error("too many {what}: the limit is {limit}")]
    LimitReached {
        /// What is counted, in the plural (`proxies`, `toxics on proxy x`).
        what: String,
        /// The limit.
        limit: usize,
    },
    /// The server failed to carry the request out: a bug (500).
    #[error("internal error: {0}")]
    Internal(String),
    /// A proxy could not listen on its address (500, as in Toxiproxy).
    #[error("proxy {proxy} cannot listen on {listen}: {source}")]
    Listen {
        /// The proxy.
        proxy: String,
        /// The address it was to listen on.
        listen: String,
        /// Why.
        source: io::Error,
    },
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequestBody(_)
            | ApiError::MissingField(_)
            | ApiError::InvalidStream
            | ApiError::InvalidToxicType
            | ApiError::LimitReached { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ProxyNotFound | ApiError::ToxicNotFound => StatusCode::NOT_FOUND,
            ApiError::ProxyAlreadyExists | ApiError::ToxicAlreadyExists => StatusCode::CONFLICT,
            ApiError::Internal(_) | ApiError::Listen { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": self.to_string(), "status": self.status().as_u16()})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

/// Why the proxy server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The API address could not be bound.
    #[error("proxy api cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// Why a Toxiproxy config file (a JSON array of proxies) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read proxy config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is larger than a populate request may be.
    #[error("proxy config {} is larger than {limit_bytes} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit_bytes: usize,
    },
    /// The file is not JSON of the right shape.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong there.
        message: String,
    },
    /// A proxy in the file lacks a required field.
    #[error("{}: proxy {index}: missing required field: {field}", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// 1-based position of the proxy in the array.
        index: usize,
        /// The field.
        field: &'static str,
    },
}

/// Why a [`ProxyClient`](super::ProxyClient) call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL given to the client is not an `http` URL.
    #[error("invalid proxy api url {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the proxy api client: {0}")]
    Build(reqwest::Error),
    /// The request could not be sent or the response not read.
    #[error("{method} {url} failed: {source}")]
    Transport {
        /// The request method.
        method: &'static str,
        /// The request URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{method} {url} answered {status}: {message}")]
    Api {
        /// The request method.
        method: &'static str,
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The `error` member of the body, or the body itself.
        message: String,
    },
    /// The response body is not what the endpoint returns.
    #[error("{method} {url} answered with an unexpected body: {reason}")]
    Body {
        /// The request method.
        method: &'static str,
        /// The request URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status the server answered with, if it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

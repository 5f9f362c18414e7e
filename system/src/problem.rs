//! Errors as RFC 9457 (formerly 7807) problem details: every error response
//! the service sends, from any layer, is `application/problem+json` built here.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// The media type of problem details.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem details response. `kind` is the stable part clients match on: it
/// becomes the `type` member `urn:orchestrator:problem:{kind}`.
#[derive(Clone, Debug)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable kebab-case name of the problem class.
    pub kind: &'static str,
    /// A short, human-readable summary of the class.
    pub title: &'static str,
    /// What went wrong with this request. Never contains secrets or model output.
    pub detail: String,
    /// Extension members, merged into the body.
    pub extensions: Map<String, Value>,
    /// Extra headers, such as `Retry-After`. A list rather than a
    /// `HeaderMap` keeps `Problem` small enough to return by value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with no extensions or extra headers.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Problem {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` in whole seconds, rounded up so that a client that
    /// waits exactly that long is never early, and at least one second.
    pub fn retry_after(self, wait: Duration) -> Problem {
        let seconds = retry_after_seconds(wait);
        self.header(header::RETRY_AFTER, HeaderValue::from(seconds))
            .with("retry_after_s", seconds)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            format!("urn:orchestrator:problem:{}", self.kind).into(),
        );
        body.insert("title".into(), self.title.into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.clone().into());
        for (k, v) in &self.extensions {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 404: no such route or resource.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 413: the body or a field is larger than allowed.
    pub fn too_large(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            detail,
        )
    }

    /// 500: a bug or an unexpected failure; the detail is generic on purpose.
    pub fn internal() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle the request; it has been logged",
        )
    }

    /// 503: a dependency the request needs is unavailable.
    pub fn unavailable(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            kind,
            "Service unavailable",
            detail,
        )
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

/// The problem's `kind`, carried on its response's extensions so that the
/// middleware can tell a shed request from a failed one without parsing the
/// body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProblemKind(pub &'static str);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status, body).into_response();
        response.extensions_mut().insert(ProblemKind(self.kind));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
    }

    #[test]
    fn body_has_the_standard_members_and_extensions() {
        let p = Problem::bad_request("field `prompt` is missing").with("field", "prompt");
        assert_eq!(
            p.body(),
            serde_json::json!({
                "type": "urn:orchestrator:problem:bad-request",
                "title": "Bad request",
                "status": 400,
                "detail": "field `prompt` is missing",
                "field": "prompt",
            })
        );
    }
}

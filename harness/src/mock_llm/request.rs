//! Reading a chat completion request, and errors in OpenAI's shape.
//!
//! Unlike the program, a chat request is parsed leniently: OpenAI's API has
//! dozens of optional parameters (`temperature`, `seed`, `tools`, `user` …)
//! and clients send whichever they like, so fields the mock does not use are
//! ignored. The fields it does use are checked, and a bad one is refused with
//! 400 and its path in `param`, as OpenAI does.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::content::{tokens, tools_from_system};

/// An error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`, such as `invalid_request_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// An error of `status` with OpenAI's usual `type` for it.
    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        let (kind, code) = match status.as_u16() {
            401 => ("authentication_error", Some("invalid_api_key")),
            403 => ("permission_error", None),
            404 => ("invalid_request_error", Some("not_found")),
            408 | 504 => ("timeout_error", None),
            413 => ("invalid_request_error", Some("request_too_large")),
            429 => ("rate_limit_error", Some("rate_limit_exceeded")),
            400..=499 => ("invalid_request_error", None),
            503 => ("service_unavailable_error", None),
            _ => ("server_error", None),
        };
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// What the answer depends on, read from a chat completion request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChatRequest {
    /// The requested model, echoed in the answer.
    pub model: String,
    /// The last user message's text (text parts joined by newlines).
    pub prompt: String,
    /// The tools listed in the first system (or developer) message.
    pub tools: Vec<String>,
    /// The prompt's size in tokens, message framing included.
    pub prompt_tokens: u64,
    /// `max_completion_tokens`, or else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Whether to answer with server-sent events.
    pub stream: bool,
    /// Whether a stream ends with a usage chunk.
    pub include_usage: bool,
    /// Whether the client asked for bare JSON content.
    pub json_mode: bool,
}

#[derive(Deserialize)]
#[serde(expecting = "a chat completion request object")]
struct RawChat {
    model: String,
    messages: Vec<RawMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<RawStreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    response_format: Option<RawFormat>,
    #[serde(default)]
    n: Option<u64>,
}

#[derive(Deserialize)]
#[serde(expecting = "a message object with `role`")]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<RawContent>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
enum RawContent {
    Text(String),
    Parts(Vec<RawPart>),
}

#[derive(Deserialize)]
#[serde(expecting = "a content part object with `type`")]
struct RawPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(expecting = "a response format object with `type`")]
struct RawFormat {
    #[serde(rename = "type")]
    kind: String,
}

impl RawContent {
    fn text(&self) -> String {
        match self {
            RawContent::Text(text) => text.clone(),
            RawContent::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Tokens a chat model adds around each message, and to prime the reply;
/// OpenAI documents 3 and 3 for its chat models, we use 4 and 3.
const MESSAGE_FRAMING_TOKENS: u64 = 4;
const REPLY_PRIMING_TOKENS: u64 = 3;

/// Parses a chat completion request body.
pub(crate) fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw: RawChat = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        let message = match text.rfind(" at line ") {
            Some(end) => text[..end].to_owned(),
            None => text,
        };
        match inner.classify() {
            serde_json::error::Category::Data if path == "." => ApiError::invalid(None, message),
            serde_json::error::Category::Data => {
                ApiError::invalid(Some(path.clone()), format!("{path}: {message}"))
            }
            _ => ApiError::invalid(None, format!("the request body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    if raw.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages".into()),
            "messages: must hold at least one message",
        ));
    }
    if let Some(n) = raw.n
        && n != 1
    {
        return Err(ApiError::invalid(
            Some("n".into()),
            format!("n: {n} choices asked for, the mock answers exactly 1"),
        ));
    }
    let max_tokens = raw.max_completion_tokens.or(raw.max_tokens);
    if max_tokens == Some(0) {
        let param = if raw.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            Some(param.into()),
            format!("{param}: must be at least 1"),
        ));
    }
    let json_mode = match raw.response_format.as_ref().map(|f| f.kind.as_str()) {
        None | Some("text") => false,
        Some("json_object" | "json_schema") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("response_format.type".into()),
                format!(
                    "response_format.type: `{other}` is not one of `text`, `json_object`, `json_schema`"
                ),
            ));
        }
    };
    let texts: Vec<(String, String)> = raw
        .messages
        .iter()
        .map(|m| {
            (
                m.role.clone(),
                m.content.as_ref().map(RawContent::text).unwrap_or_default(),
            )
        })
        .collect();
    let prompt_tokens = REPLY_PRIMING_TOKENS
        + texts
            .iter()
            .map(|(_, text)| MESSAGE_FRAMING_TOKENS + tokens(text.len() as u64))
            .sum::<u64>();
    let prompt = texts
        .iter()
        .rev()
        .find(|(role, _)| role == "user")
        .map(|(_, text)| text.clone())
        .unwrap_or_default();
    let tools = texts
        .iter()
        .find(|(role, _)| role == "system" || role == "developer")
        .map(|(_, text)| tools_from_system(text))
        .unwrap_or_default();
    let stream = raw.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: raw.model,
        prompt,
        tools,
        prompt_tokens,
        max_tokens,
        stream,
        include_usage: stream
            && raw
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        json_mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_orchestrator_request_is_understood() {
        let body = json!({
            "model": "gauntlet-mock",
            "messages": [
                {"role": "system", "content": "Plan. Tools: search, summarize."},
                {"role": "user", "content": "find things"},
            ],
            "max_tokens": 1024,
            "response_format": {"type": "json_object"},
            "temperature": 0.2,
        });
        let request = parse(body.to_string().as_bytes()).expect("valid request");
        assert_eq!(request.prompt, "find things");
        assert_eq!(request.tools, ["search", "summarize"]);
        assert_eq!(request.max_tokens, Some(1024));
        assert!(request.json_mode && !request.stream && !request.include_usage);
        // 3 + (4 + ceil(31 / 4)) + (4 + ceil(11 / 4))
        assert_eq!(request.prompt_tokens, 3 + (4 + 8) + (4 + 3));
    }

    #[test]
    fn content_parts_are_joined() {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "b"},
            ]}],
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let request = parse(body.to_string().as_bytes()).expect("valid request");
        assert_eq!(request.prompt, "a\nb");
        assert!(request.stream && request.include_usage && !request.json_mode);
    }

    #[test]
    fn bad_fields_are_named_in_param() {
        let cases = [
            (json!({"messages": []}), None, "missing field `model`"),
            (
                json!({"model": "m", "messages": []}),
                Some("messages"),
                "at least one",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                Some("messages[0].content"),
                "a string or an array",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}),
                Some("max_tokens"),
                "at least 1",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "response_format": {"type": "xml"}}),
                Some("response_format.type"),
                "`xml`",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "n": 2}),
                Some("n"),
                "exactly 1",
            ),
        ];
        for (body, param, text) in cases {
            let error = parse(body.to_string().as_bytes()).expect_err("must be refused");
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert_eq!(error.param.as_deref(), param, "{}", error.message);
            assert!(error.message.contains(text), "{}", error.message);
        }
        let error = parse(b"{\"model\": ").expect_err("not JSON");
        assert!(
            error
                .message
                .starts_with("the request body is not valid JSON")
        );
    }
}

//! A typed client of the admin API, for a mock in another process.

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::journal::CallsPage;
use super::program::Program;

/// The largest admin answer read, in bytes: a full page of the journal fits
/// with room to spare.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Records asked for per page when reading the whole journal.
const PAGE_RECORDS: usize = 1000;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP client could not be built.
    #[error("cannot build the http client: {0}")]
    Build(String),
    /// The URL given is not an `http` URL.
    #[error("mock url {url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request could not be sent or its answer not read.
    #[error("{method} {url} failed: {message}")]
    Transport {
        /// The method.
        method: &'static str,
        /// The URL.
        url: String,
        /// What failed, with its causes.
        message: String,
    },
    /// The mock refused the request.
    #[error("{method} {url} answered {status}: {message}")]
    Status {
        /// The method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The error message the mock sent, or the body.
        message: String,
    },
    /// The answer was not what the API returns.
    #[error("{method} {url} answered something unreadable: {message}")]
    Decode {
        /// The method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The parser's complaint.
        message: String,
    },
}

/// A client of one mock's admin API.
#[derive(Clone, Debug)]
pub struct MockClient {
    http: reqwest::Client,
    root: String,
}

impl MockClient {
    /// A client of the mock at `url`: its root (`http://127.0.0.1:8081`) or
    /// its OpenAI base URL (`http://127.0.0.1:8081/v1`).
    pub fn new(url: &str) -> Result<MockClient, ClientError> {
        let root = url.trim_end_matches('/');
        let root = root.strip_suffix("/v1").unwrap_or(root).to_owned();
        if !root.starts_with("http://") {
            return Err(ClientError::Url {
                url: url.to_owned(),
                message: "must start with http:// (the mock serves plain HTTP)".into(),
            });
        }
        // reqwest is built without a default crypto provider (see the
        // orchestrator's LLM client); a second install fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .retry(reqwest::retry::never())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Build(error_chain(&e)))?;
        Ok(MockClient { http, root })
    }

    /// Installs `program` in place of the current one.
    pub async fn install(&self, program: &Program) -> Result<(), ClientError> {
        let request = self
            .http
            .put(self.url("/_mock/program"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(program.to_json());
        self.call::<serde_json::Value>("PUT", "/_mock/program", request)
            .await
            .map(|_| ())
    }

    /// The installed program.
    pub async fn program(&self) -> Result<Program, ClientError> {
        let request = self.http.get(self.url("/_mock/program"));
        self.call("GET", "/_mock/program", request).await
    }

    /// Up to `limit` journal records after sequence number `after_seq` (the
    /// mock may return fewer than asked, per its `max_page_records`).
    pub async fn calls_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<CallsPage, ClientError> {
        let path = format!("/_mock/calls?after_seq={after_seq}&limit={limit}");
        let request = self.http.get(self.url(&path));
        self.call("GET", "/_mock/calls", request).await
    }

    /// The whole journal as it was at the first page: pages through it until
    /// the first page's `last_seq` has been seen.
    pub async fn calls(&self) -> Result<CallsPage, ClientError> {
        let mut page = self.calls_after(0, PAGE_RECORDS).await?;
        let last_seq = page.last_seq;
        loop {
            let after = page.calls.last().map_or(0, |r| r.seq);
            if after >= last_seq {
                break;
            }
            let next = self.calls_after(after, PAGE_RECORDS).await?;
            // A reset between pages empties the journal; stop rather than loop.
            let Some(first) = next.calls.first() else {
                break;
            };
            if first.seq <= after {
                break;
            }
            page.dropped = next.dropped;
            page.calls.extend(next.calls);
        }
        page.calls.retain(|r| r.seq <= last_seq);
        page.last_seq = last_seq;
        Ok(page)
    }

    /// Forgets calls, program and counts.
    pub async fn reset(&self) -> Result<(), ClientError> {
        let request = self.http.post(self.url("/_mock/reset"));
        let url = self.url("/_mock/reset");
        let response = request.send().await.map_err(|e| ClientError::Transport {
            method: "POST",
            url: url.clone(),
            message: error_chain(&e),
        })?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status().as_u16();
        let body = read(response, "POST", &url).await?;
        Err(status_error("POST", url, status, &body))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let response = request.send().await.map_err(|e| ClientError::Transport {
            method,
            url: url.clone(),
            message: error_chain(&e),
        })?;
        let status = response.status();
        let body = read(response, method, &url).await?;
        if !status.is_success() {
            return Err(status_error(method, url, status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            method,
            url,
            message: e.to_string(),
        })
    }
}

/// Reads an answer within [`MAX_ANSWER_BYTES`].
async fn read(
    mut response: reqwest::Response,
    method: &'static str,
    url: &str,
) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(|e| ClientError::Transport {
            method,
            url: url.to_owned(),
            message: error_chain(&e),
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ClientError::Decode {
                method,
                url: url.to_owned(),
                message: format!("the answer is over {MAX_ANSWER_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
}

/// The error for a refusal: the mock's `error.message` when the body has one.
fn status_error(method: &'static str, url: String, status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned());
    ClientError::Status {
        method,
        url,
        status,
        message,
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

//! The LLM client: OpenAI-compatible chat completions with per-attempt
//! timeouts, a total deadline, retries with exponential backoff and jitter,
//! `Retry-After`, and a circuit breaker per provider.
//!
//! The retry loop is written out here rather than taken from a retry crate
//! because each of its decisions is part of what the harness verifies: which
//! failures are retried, that jitter is "full" (uniform in `[0, delay]`) and
//! drawn from a seeded RNG so that a run replays, that `Retry-After` is never
//! undercut, and that every attempt passes through the breaker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::breaker::{self, CircuitBreaker};
use crate::config::{Jitter, LlmConfig, ProviderConfig, RetryConfig};
use crate::metrics::Metrics;

/// The system prompt: it tells the model the output schema. The output is
/// validated anyway (`crate::plan`); this only makes valid output likely.
pub const SYSTEM_PROMPT: &str = "You are a planning agent. Answer with one JSON object and \
nothing else: {\"action_plan\": [{\"step\": 1, \"tool\": \"<tool>\", \"args\": {}}], \
\"reasoning\": \"<why>\"}. Steps are numbered from 1. Use only the tools you are given.";

/// Token usage as the provider reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens in the completion.
    pub completion_tokens: u64,
    /// Their sum, as reported.
    pub total_tokens: u64,
}

/// What one call asks for.
#[derive(Clone, Debug)]
pub struct ChatRequest<'a> {
    /// The user's prompt.
    pub prompt: &'a str,
    /// The completion limit sent to the provider.
    pub max_tokens: u32,
    /// The tools the model may use, listed in the system prompt.
    pub tools: &'a [String],
    /// Sent as `X-Request-Id`, so provider logs correlate with ours.
    pub request_id: &'a str,
    /// Sent as `Idempotency-Key`: the same on every attempt of one task, so a
    /// provider that deduplicates can.
    pub idempotency_key: &'a str,
}

/// A successful call.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The message content, unvalidated.
    pub content: String,
    /// Usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// The provider that answered.
    pub provider: String,
    /// Attempts made across providers, this one included.
    pub attempts: u32,
}

/// Why one attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The connection could not be made or broke before a response.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The attempt took longer than its timeout.
    #[error("attempt timed out after {}ms", .0.as_millis())]
    Timeout(Duration),
    /// The provider answered with an error status.
    #[error("status {status}")]
    Status {
        /// The status code.
        status: u16,
        /// Its `Retry-After`, if it sent one we could read.
        retry_after: Option<Duration>,
    },
    /// The response body broke off or could not be read.
    #[error("response body failed: {0}")]
    Body(String),
}

impl AttemptError {
    /// Whether another attempt may succeed: transport failures, timeouts, and
    /// the statuses that mean "overloaded or briefly broken". Client errors
    /// (400, 401, 403, 404, 422 and the rest of 4xx) and other 5xx such as 501
    /// would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Connect(_) | AttemptError::Timeout(_) | AttemptError::Body(_) => true,
            AttemptError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
        }
    }

    /// What happened, without addresses or library error text: safe to
    /// show a client, who has no business learning the provider's URL.
    pub fn summary(&self) -> String {
        match self {
            AttemptError::Connect(_) => "connection failed".to_owned(),
            AttemptError::Timeout(d) => format!("timed out after {}ms", d.as_millis()),
            AttemptError::Status { status, .. } => format!("status {status}"),
            AttemptError::Body(_) => "response body broke off".to_owned(),
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::Body(_) => "body",
            AttemptError::Status { status: 429, .. } => "status_429",
            AttemptError::Status { status, .. } if *status >= 500 => "status_5xx",
            AttemptError::Status { .. } => "status_4xx",
        }
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Every provider's breaker is open; none was called.
    #[error("every provider's circuit breaker is open")]
    Unavailable {
        /// When the first breaker will admit a probe.
        retry_after: Duration,
    },
    /// Retryable failures until the attempts ran out, or a `Retry-After`
    /// longer than the policy allows.
    #[error("provider {provider} failed after {attempts} attempts: {last}")]
    Exhausted {
        /// The last provider tried.
        provider: String,
        /// Attempts made across providers.
        attempts: u32,
        /// The last attempt's failure.
        last: AttemptError,
    },
    /// The total deadline passed before a usable answer.
    #[error("provider {provider} did not answer within the deadline ({attempts} attempts)")]
    Deadline {
        /// The last provider tried.
        provider: String,
        /// Attempts made across providers.
        attempts: u32,
    },
    /// The provider refused the request in a way retrying cannot fix.
    #[error("provider {provider} refused the request with status {status}")]
    Rejected {
        /// The provider.
        provider: String,
        /// Its status.
        status: u16,
    },
    /// The provider answered 200 with something that is not a chat completion.
    #[error("provider {provider} sent an unusable response: {reason}")]
    BadResponse {
        /// The provider.
        provider: String,
        /// What was wrong, never the content itself.
        reason: String,
    },
}

impl LlmError {
    /// The message for a client: like `Display`, but the last attempt's
    /// failure is summarised (see [`AttemptError::summary`]).
    pub fn client_detail(&self) -> String {
        match self {
            LlmError::Exhausted {
                provider,
                attempts,
                last,
            } => format!(
                "provider {provider} failed after {attempts} attempts: {}",
                last.summary()
            ),
            other => other.to_string(),
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            LlmError::Unavailable { .. } => "breaker_open",
            LlmError::Exhausted { .. } => "exhausted",
            LlmError::Deadline { .. } => "deadline",
            LlmError::Rejected { .. } => "rejected",
            LlmError::BadResponse { .. } => "bad_response",
        }
    }
}

/// A setup failure: the configuration names something the process lacks.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A provider's `api_key_env` variable is not set.
    #[error("llm.providers[{index}].api_key_env: environment variable {var} is not set")]
    MissingApiKey {
        /// The provider's index in the config.
        index: usize,
        /// The variable.
        var: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the http client: {0}")]
    Client(String),
}

/// Options of the client beyond the configuration.
#[derive(Clone, Debug)]
pub struct LlmOptions {
    /// Seed of the jitter RNG: the same seed and the same failures give the
    /// same delays.
    pub seed: u64,
    /// Largest response body read from a provider.
    pub max_response_bytes: usize,
    /// API keys by provider name, resolved from `api_key_env` by the caller.
    pub api_keys: BTreeMap<String, String>,
}

struct Provider {
    config: ProviderConfig,
    url: Url,
    api_key: Option<String>,
    breaker: Arc<CircuitBreaker>,
}

/// The client. Cheap to share behind an `Arc`.
pub struct LlmClient {
    http: reqwest::Client,
    providers: Vec<Provider>,
    rng: Mutex<ChaCha8Rng>,
    max_response_bytes: usize,
    metrics: Arc<Metrics>,
}

/// Reads each provider's `api_key_env` through `lookup`.
pub fn resolve_api_keys(
    config: &LlmConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, SetupError> {
    let mut keys = BTreeMap::new();
    for (index, p) in config.providers.iter().enumerate() {
        if let Some(var) = &p.api_key_env {
            let key = lookup(var).ok_or_else(|| SetupError::MissingApiKey {
                index,
                var: var.clone(),
            })?;
            keys.insert(p.name.clone(), key);
        }
    }
    Ok(keys)
}

impl LlmClient {
    /// Builds the client and one breaker per provider.
    pub fn new(
        config: &LlmConfig,
        options: LlmOptions,
        metrics: Arc<Metrics>,
    ) -> Result<LlmClient, SetupError> {
        // reqwest is built without a default crypto provider so that nothing
        // links aws-lc or OpenSSL; ring is installed once per process. A second
        // install fails harmlessly when it is already there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // Every attempt is ours to count and bound: no hidden retries.
            .retry(reqwest::retry::never())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        let providers = config
            .providers
            .iter()
            .map(|p| Provider {
                url: completions_url(&p.base_url),
                api_key: options.api_keys.get(&p.name).cloned(),
                breaker: Arc::new(CircuitBreaker::new(p.circuit_breaker.clone())),
                config: p.clone(),
            })
            .collect();
        Ok(LlmClient {
            http,
            providers,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(options.seed)),
            max_response_bytes: options.max_response_bytes,
            metrics,
        })
    }

    /// Each provider's name and breaker state, in configuration order.
    pub fn breakers(&self, now: Instant) -> Vec<(String, breaker::State, Option<Duration>)> {
        self.providers
            .iter()
            .map(|p| {
                let state = self.observe_breaker(p, now);
                (p.config.name.clone(), state, p.breaker.retry_after(now))
            })
            .collect()
    }

    /// Asks the providers, in configuration order, for a completion. A
    /// provider whose breaker is open is skipped; one whose retries run out
    /// hands over to the next. A refusal that retrying cannot fix ends the
    /// call at once.
    pub async fn complete(&self, request: &ChatRequest<'_>) -> Result<Completion, LlmError> {
        let started = Instant::now();
        let result = self.try_providers(request).await;
        self.metrics
            .llm_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn try_providers(&self, request: &ChatRequest<'_>) -> Result<Completion, LlmError> {
        let mut attempts = 0;
        let mut last_error = None;
        let mut soonest_probe: Option<Duration> = None;
        for provider in &self.providers {
            let outcome = self.call(provider, request, &mut attempts).await;
            self.observe_breaker(provider, Instant::now());
            match outcome {
                Ok(completion) => return Ok(completion),
                Err(CallError::BreakerOpen(wait)) => {
                    self.metrics
                        .breaker_rejections
                        .with_label_values(&[provider.config.name.as_str()])
                        .inc();
                    soonest_probe = Some(soonest_probe.map_or(wait, |s| s.min(wait)));
                }
                Err(CallError::Failed(e)) => {
                    self.metrics
                        .llm_failures
                        .with_label_values(&[provider.config.name.as_str(), e.reason()])
                        .inc();
                    let hand_over =
                        matches!(e, LlmError::Exhausted { .. } | LlmError::Deadline { .. });
                    last_error = Some(e);
                    if !hand_over {
                        break;
                    }
                }
            }
        }
        Err(match (last_error, soonest_probe) {
            (Some(e), _) => e,
            (None, Some(retry_after)) => LlmError::Unavailable { retry_after },
            // Validation guarantees at least one provider, so one of the two
            // arms above always applies; this keeps the function total.
            (None, None) => LlmError::Unavailable {
                retry_after: Duration::from_secs(1),
            },
        })
    }

    /// The provider's breaker state, also written to its gauge.
    fn observe_breaker(&self, provider: &Provider, now: Instant) -> breaker::State {
        let state = provider.breaker.state(now);
        self.metrics
            .breaker_state
            .with_label_values(&[provider.config.name.as_str()])
            .set(i64::from(state.code()));
        state
    }

    /// One provider's retry loop.
    async fn call(
        &self,
        provider: &Provider,
        request: &ChatRequest<'_>,
        attempts: &mut u32,
    ) -> Result<Completion, CallError> {
        let name = provider.config.name.as_str();
        let policy = &provider.config.retry;
        let deadline = Instant::now() + provider.config.deadline;
        let body = request_body(&provider.config.model, request);
        for retry in 0..policy.attempts {
            let now = Instant::now();
            let permit = provider
                .breaker
                .acquire(now)
                .map_err(|r| CallError::BreakerOpen(r.retry_after))?;
            let Some(left) = deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                return Err(deadline_error(name, *attempts));
            };
            let timeout = provider.config.attempt_timeout.min(left);
            *attempts += 1;
            let result = match tokio::time::timeout(
                timeout,
                self.attempt(provider, request, &body, *attempts),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(Failure::Attempt(AttemptError::Timeout(timeout))),
            };
            let error = match result {
                Ok(completion) => {
                    permit.success(Instant::now());
                    self.count_attempt(name, "ok");
                    return Ok(Completion {
                        attempts: *attempts,
                        ..completion
                    });
                }
                Err(Failure::BadResponse(reason)) => {
                    // The provider is up but speaks nonsense: that is a
                    // provider fault the breaker should see.
                    permit.failure(Instant::now());
                    self.count_attempt(name, "bad_response");
                    return Err(CallError::Failed(LlmError::BadResponse {
                        provider: name.to_owned(),
                        reason,
                    }));
                }
                Err(Failure::Attempt(e)) => e,
            };
            self.count_attempt(name, error.reason());
            if !error.is_retryable() {
                // The provider answered, so it is healthy; the request is
                // what it refused.
                permit.success(Instant::now());
                let status = match error {
                    AttemptError::Status { status, .. } => status,
                    _ => 0,
                };
                return Err(CallError::Failed(LlmError::Rejected {
                    provider: name.to_owned(),
                    status,
                }));
            }
            permit.failure(Instant::now());
            let exhausted = || {
                CallError::Failed(LlmError::Exhausted {
                    provider: name.to_owned(),
                    attempts: *attempts,
                    last: error.clone(),
                })
            };
            if retry + 1 == policy.attempts {
                return Err(exhausted());
            }
            let backoff = {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                backoff_delay(policy, retry, &mut *rng)
            };
            let delay = match error {
                AttemptError::Status {
                    retry_after: Some(asked),
                    ..
                } => {
                    // Retrying before the provider's Retry-After would be
                    // rude and likely futile; waiting longer than our own
                    // max_delay would break our latency promise. So either
                    // wait at least what it asked, or stop here.
                    if asked > policy.max_delay {
                        return Err(exhausted());
                    }
                    backoff.max(asked)
                }
                _ => backoff,
            };
            if Instant::now() + delay >= deadline {
                return Err(deadline_error(name, *attempts));
            }
            self.metrics
                .llm_retries
                .with_label_values(&[name, error.reason()])
                .inc();
            tracing::debug!(provider = name, attempt = *attempts, reason = %error, delay_ms = delay.as_millis() as u64, "llm attempt failed; retrying");
            tokio::time::sleep(delay).await;
        }
        // Validation makes attempts at least 1, so the loop always returns.
        Err(deadline_error(name, *attempts))
    }

    fn count_attempt(&self, provider: &str, outcome: &str) {
        self.metrics
            .llm_attempts
            .with_label_values(&[provider, outcome])
            .inc();
    }

    /// One HTTP attempt: send, read the body within the size limit, parse.
    /// `number` is the attempt's number within the request, from 1 across
    /// providers, sent as `X-Attempt` with the request id so that whoever
    /// answers (and a battle test reading its journal) can tell a retry from
    /// a new request.
    async fn attempt(
        &self,
        provider: &Provider,
        request: &ChatRequest<'_>,
        body: &serde_json::Value,
        number: u32,
    ) -> Result<Completion, Failure> {
        let mut builder = self
            .http
            .post(provider.url.clone())
            .header("x-request-id", request.request_id)
            .header("x-attempt", number)
            .header("idempotency-key", request.idempotency_key)
            .json(body);
        if let Some(key) = &provider.api_key {
            builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let mut response = builder
            .send()
            .await
            .map_err(|e| Failure::Attempt(AttemptError::Connect(error_chain(&e))))?;
        let status = response.status();
        if status != StatusCode::OK {
            let retry_after = retry_after(response.headers(), SystemTime::now());
            return Err(Failure::Attempt(AttemptError::Status {
                status: status.as_u16(),
                retry_after,
            }));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::Attempt(AttemptError::Body(error_chain(&e))))?
        {
            if bytes.len() + chunk.len() > self.max_response_bytes {
                return Err(Failure::BadResponse(format!(
                    "response larger than {} bytes",
                    self.max_response_bytes
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        parse_response(&bytes)
            .map(|(content, usage)| Completion {
                content,
                usage,
                provider: provider.config.name.clone(),
                attempts: 0,
            })
            .map_err(Failure::BadResponse)
    }
}

enum CallError {
    BreakerOpen(Duration),
    Failed(LlmError),
}

enum Failure {
    Attempt(AttemptError),
    BadResponse(String),
}

fn deadline_error(provider: &str, attempts: u32) -> CallError {
    CallError::Failed(LlmError::Deadline {
        provider: provider.to_owned(),
        attempts,
    })
}

/// `{base_url}/chat/completions`, whether or not the base URL ends in `/`.
fn completions_url(base: &Url) -> Url {
    let mut url = base.clone();
    let path = format!("{}/chat/completions", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

fn request_body(model: &str, request: &ChatRequest<'_>) -> serde_json::Value {
    let system = format!("{SYSTEM_PROMPT} Tools: {}.", request.tools.join(", "));
    serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": request.prompt},
        ],
        "max_tokens": request.max_tokens,
        "response_format": {"type": "json_object"},
    })
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

/// Parses a chat completion envelope. Errors describe the shape, never the
/// content, because they may reach clients.
fn parse_response(bytes: &[u8]) -> Result<(String, Option<Usage>), String> {
    let response: ChatResponse = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not a chat completion at line {} column {} ({:?})",
            e.line(),
            e.column(),
            e.classify()
        )
    })?;
    let content = response
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or_else(|| "no choices[0].message.content".to_owned())?;
    Ok((content, response.usage))
}

/// The delay before retry number `retry` (0 for the first retry): the
/// exponential backoff `initial * multiplier^retry`, capped at `max_delay`,
/// then jittered.
pub fn backoff_delay(policy: &RetryConfig, retry: u32, rng: &mut impl Rng) -> Duration {
    let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
    let base = policy.initial_delay.as_secs_f64() * policy.multiplier.powi(exponent);
    let capped = Duration::from_secs_f64(base.min(policy.max_delay.as_secs_f64()));
    match policy.jitter {
        Jitter::None => capped,
        Jitter::Full => capped.mul_f64(rng.random::<f64>()),
        Jitter::Equal => capped / 2 + (capped / 2).mul_f64(rng.random::<f64>()),
    }
}

/// Reads `Retry-After`: whole seconds, or an HTTP date (a date in the past
/// means now). Anything else is ignored, as RFC 9110 allows.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error and its sources on one line, for logs and diagnostics.
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn policy(jitter: Jitter) -> RetryConfig {
        RetryConfig {
            attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let delays: Vec<_> = (0..6)
            .map(|r| backoff_delay(&policy(Jitter::None), r, &mut rng).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn full_jitter_stays_within_the_delay_and_replays_by_seed() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..6)
                .map(|r| backoff_delay(&policy(Jitter::Full), r, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        for (r, d) in a.iter().enumerate() {
            let cap = backoff_delay(
                &policy(Jitter::None),
                r as u32,
                &mut ChaCha8Rng::seed_from_u64(0),
            );
            assert!(*d <= cap, "retry {r}: {d:?} > {cap:?}");
        }
    }

    #[test]
    fn equal_jitter_keeps_at_least_half() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for r in 0..6 {
            let cap = backoff_delay(&policy(Jitter::None), r, &mut rng);
            let d = backoff_delay(&policy(Jitter::Equal), r, &mut rng);
            assert!(d >= cap / 2 && d <= cap, "retry {r}: {d:?} vs {cap:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(42)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&earlier).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn retryable_statuses_are_exactly_the_transient_ones() {
        let retryable: Vec<u16> = (400..=599)
            .filter(|&status| {
                AttemptError::Status {
                    status,
                    retry_after: None,
                }
                .is_retryable()
            })
            .collect();
        assert_eq!(retryable, [429, 500, 502, 503, 504]);
    }

    #[test]
    fn a_missing_api_key_variable_is_named_with_its_field() {
        let provider = |name: &str, var: Option<&str>| ProviderConfig {
            name: name.into(),
            base_url: Url::parse("http://127.0.0.1:1/v1").unwrap(),
            model: "m".into(),
            api_key_env: var.map(String::from),
            attempt_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(1),
            retry: policy(Jitter::None),
            circuit_breaker: crate::config::CircuitBreakerConfig {
                failure_threshold: 1,
                recovery_timeout: Duration::from_secs(1),
                half_open_max_calls: 1,
            },
        };
        let config = LlmConfig {
            providers: vec![provider("a", None), provider("b", Some("B_KEY"))],
        };
        let err = resolve_api_keys(&config, |_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "llm.providers[1].api_key_env: environment variable B_KEY is not set"
        );
        let keys = resolve_api_keys(&config, |v| (v == "B_KEY").then(|| "s3cret".into())).unwrap();
        assert_eq!(keys.get("b").map(String::as_str), Some("s3cret"));
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn completions_url_appends_to_the_base_path() {
        let url = |s: &str| completions_url(&Url::parse(s).unwrap()).to_string();
        assert_eq!(
            url("http://127.0.0.1:8081/v1"),
            "http://127.0.0.1:8081/v1/chat/completions"
        );
        assert_eq!(
            url("http://127.0.0.1:8081/v1/"),
            "http://127.0.0.1:8081/v1/chat/completions"
        );
        assert_eq!(url("http://h/"), "http://h/chat/completions");
    }

    #[test]
    fn envelope_errors_name_the_shape_not_the_content() {
        let e = parse_response(b"{\"choices\": [], \"secret\": 1}").unwrap_err();
        assert_eq!(e, "no choices[0].message.content");
        let e = parse_response(b"{\"choices\": [{\"message\": {\"content\": \"ab").unwrap_err();
        assert!(e.starts_with("not a chat completion at line 1"), "{e}");
        assert!(!e.contains("ab\""), "{e}");
    }
}

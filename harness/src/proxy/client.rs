//! A typed async client of the Toxiproxy API, for this proxy or a real
//! Toxiproxy 2.x.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ClientError;
use super::model::{Proxy, ProxyConfig, ProxyUpdate, Toxic, ToxicUpdate};

/// The largest response body read, in bytes: a listing of the largest
/// registry the server allows is far smaller.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A client of a proxy server's API.
#[derive(Clone, Debug)]
pub struct ProxyClient {
    http: reqwest::Client,
    base: Url,
}

impl ProxyClient {
    /// A client of the API at `base_url`, such as `http://127.0.0.1:8474`.
    pub fn new(base_url: &str) -> Result<ProxyClient, ClientError> {
        let invalid = |reason: String| ClientError::Url {
            url: base_url.to_owned(),
            reason,
        };
        let base = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if base.scheme() != "http" {
            return Err(invalid("the scheme must be http".to_owned()));
        }
        if base.cannot_be_a_base() {
            return Err(invalid("it cannot be a base url".to_owned()));
        }
        // reqwest is built without a default crypto provider (see the
        // orchestrator's LLM client); this client speaks plain HTTP, but
        // building one needs a provider all the same. A second install fails
        // harmlessly when one is there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // The API is local: an HTTP proxy from the environment would only
            // get in the way.
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            // Disabling a proxy waits for its connections to close, and
            // populating binds: generous, but not unbounded.
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(ClientError::Build)?;
        Ok(ProxyClient { http, base })
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `GET /version`: the server's version text.
    pub async fn version(&self) -> Result<String, ClientError> {
        let (url, bytes) = self.send(Method::GET, &["version"], None).await?;
        String::from_utf8(bytes).map_err(|e| ClientError::Body {
            method: "GET",
            url,
            reason: e.to_string(),
        })
    }

    /// `GET /proxies`: every proxy by name.
    pub async fn proxies(&self) -> Result<BTreeMap<String, Proxy>, ClientError> {
        self.call(Method::GET, &["proxies"], None::<&()>).await
    }

    /// `GET /proxies/{name}`.
    pub async fn proxy(&self, name: &str) -> Result<Proxy, ClientError> {
        self.call(Method::GET, &["proxies", name], None::<&()>)
            .await
    }

    /// `POST /proxies`: creates a proxy.
    pub async fn create_proxy(&self, config: &ProxyConfig) -> Result<Proxy, ClientError> {
        self.call(Method::POST, &["proxies"], Some(config)).await
    }

    /// `POST /proxies/{name}`: changes the fields given.
    pub async fn update_proxy(
        &self,
        name: &str,
        update: &ProxyUpdate,
    ) -> Result<Proxy, ClientError> {
        self.call(Method::POST, &["proxies", name], Some(update))
            .await
    }

    /// Enables or disables a proxy (a partition when disabled).
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<Proxy, ClientError> {
        let update = ProxyUpdate {
            enabled: Some(enabled),
            ..ProxyUpdate::default()
        };
        self.update_proxy(name, &update).await
    }

    /// `DELETE /proxies/{name}`.
    pub async fn delete_proxy(&self, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &["proxies", name], None)
            .await
            .map(drop)
    }

    /// `POST /populate`: creates or replaces the proxies given.
    pub async fn populate(&self, proxies: &[ProxyConfig]) -> Result<Vec<Proxy>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Populated {
            proxies: Vec<Proxy>,
        }
        let populated: Populated = self
            .call(Method::POST, &["populate"], Some(&proxies))
            .await?;
        Ok(populated.proxies)
    }

    /// `POST /reset`: enables every proxy and removes every toxic.
    pub async fn reset(&self) -> Result<(), ClientError> {
        self.send(Method::POST, &["reset"], None).await.map(drop)
    }

    /// `GET /proxies/{proxy}/toxics`.
    pub async fn toxics(&self, proxy: &str) -> Result<Vec<Toxic>, ClientError> {
        self.call(Method::GET, &["proxies", proxy, "toxics"], None::<&()>)
            .await
    }

    /// `GET /proxies/{proxy}/toxics/{name}`.
    pub async fn toxic(&self, proxy: &str, name: &str) -> Result<Toxic, ClientError> {
        self.call(
            Method::GET,
            &["proxies", proxy, "toxics", name],
            None::<&()>,
        )
        .await
    }

    /// `POST /proxies/{proxy}/toxics`: adds a toxic.
    pub async fn add_toxic(&self, proxy: &str, toxic: &Toxic) -> Result<Toxic, ClientError> {
        self.call(Method::POST, &["proxies", proxy, "toxics"], Some(toxic))
            .await
    }

    /// `POST /proxies/{proxy}/toxics/{name}`: changes a toxic's attributes
    /// or toxicity.
    pub async fn update_toxic(
        &self,
        proxy: &str,
        name: &str,
        update: &ToxicUpdate,
    ) -> Result<Toxic, ClientError> {
        self.call(
            Method::POST,
            &["proxies", proxy, "toxics", name],
            Some(update),
        )
        .await
    }

    /// `DELETE /proxies/{proxy}/toxics/{name}`.
    pub async fn remove_toxic(&self, proxy: &str, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &["proxies", proxy, "toxics", name], None)
            .await
            .map(drop)
    }

    /// Sends a request with an optional JSON body and parses the JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let label = method_label(&method);
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Body {
                method: label,
                url: self.url(path).to_string(),
                reason: format!("cannot serialise the request: {e}"),
            })?;
        let (url, bytes) = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Body {
            method: label,
            url,
            reason: e.to_string(),
        })
    }

    /// Sends a request; returns the URL and the body of a success.
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        body: Option<Vec<u8>>,
    ) -> Result<(String, Vec<u8>), ClientError> {
        let label = method_label(&method);
        let url = self.url(path);
        let mut request = self.http.request(method, url.clone());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let url = url.to_string();
        let transport = |source| ClientError::Transport {
            method: label,
            url: url.clone(),
            source,
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::Body {
                    method: label,
                    url,
                    reason: format!("longer than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            // Toxiproxy's error body is {"error": ..., "status": ...}; a
            // proxy in between may send anything.
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
            return Err(ClientError::Api {
                method: label,
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok((url, bytes))
    }

    /// The URL of `path`, each segment percent-encoded.
    fn url(&self, path: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
        }
        url
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "request",
    }
}

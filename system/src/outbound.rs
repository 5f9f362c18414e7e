//! Outbound HTTP that cannot be turned against the network (SSRF): every URL
//! the service calls on a client's behalf (job webhooks) must be admitted by
//! the allowlist, parsed (scheme, host, port, path prefix), and every address
//! its host resolves to is checked where the connection is made, inside the
//! HTTP client's resolver, so a name that answers differently the second
//! time (DNS rebinding) cannot switch the target after the check.
//!
//! Loopback, private, link-local (the cloud metadata address 169.254.169.254
//! among them), unique-local, multicast, unspecified, documentation and other
//! special-purpose ranges are refused, unless an allowlist entry names the
//! address itself. Redirects are not followed; the proxy settings of the
//! environment are ignored (a proxy would connect where we did not check);
//! connect time, total time and response size are bounded.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use url::{Host, Url};

/// The largest response body read from a webhook receiver; the rest is
/// dropped (receivers answer with a status, not a document).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Addresses a resolver may return for one name; more are ignored.
pub const MAX_ADDRESSES: usize = 16;

/// One allowlist entry: a URL prefix, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    scheme: String,
    host: Host<String>,
    port: u16,
    path_prefix: String,
}

impl AllowEntry {
    /// The entry of a validated allowlist URL (scheme http or https, a host).
    /// `None` when the URL has no host or no known port.
    pub fn new(url: &Url) -> Option<AllowEntry> {
        Some(AllowEntry {
            scheme: url.scheme().to_owned(),
            host: url.host()?.to_owned(),
            port: url.port_or_known_default()?,
            path_prefix: url.path().to_owned(),
        })
    }

    /// Whether `url` is under this entry: the same scheme, host and port, and
    /// a path that starts with the entry's at a segment boundary (`/hooks`
    /// admits `/hooks` and `/hooks/a`, not `/hooksevil`).
    pub fn admits(&self, url: &Url) -> bool {
        let path = url.path();
        url.scheme() == self.scheme
            && url.host().map(|h| h.to_owned()).as_ref() == Some(&self.host)
            && url.port_or_known_default() == Some(self.port)
            && path.starts_with(&self.path_prefix)
            && (self.path_prefix.ends_with('/')
                || path.len() == self.path_prefix.len()
                || path[self.path_prefix.len()..].starts_with('/'))
    }

    /// Whether this entry's host is `host` (a name, or an address as text).
    fn names_host(&self, host: &str) -> bool {
        match &self.host {
            Host::Domain(d) => d.eq_ignore_ascii_case(host),
            Host::Ipv4(a) => host.parse::<IpAddr>().ok() == Some(IpAddr::V4(*a)),
            Host::Ipv6(a) => {
                host.trim_matches(['[', ']']).parse::<IpAddr>().ok() == Some(IpAddr::V6(*a))
            }
        }
    }

    /// The address this entry names, if its host is one.
    fn address(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
            Host::Domain(_) => None,
        }
    }
}

/// Why an outbound call was not made. Recorded on the job and in the audit
/// log; `code` is stable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The URL is under no allowlist entry.
    #[error("{url} is under no entry of security.outbound_url_allowlist")]
    NotAllowlisted {
        /// The URL, credentials stripped.
        url: String,
    },
    /// The URL carries a user name or password.
    #[error("the URL carries credentials")]
    Credentials,
    /// The host resolved to (or is) an address in a forbidden range.
    #[error("{host} resolves to {address}, a {range} address")]
    ForbiddenAddress {
        /// The URL's host.
        host: String,
        /// The address.
        address: IpAddr,
        /// Which range, like `loopback` or `link-local`.
        range: &'static str,
    },
    /// The host did not resolve.
    #[error("{host} does not resolve: {reason}")]
    Unresolvable {
        /// The URL's host.
        host: String,
        /// The resolver's error.
        reason: String,
    },
}

impl Refusal {
    /// A stable code: `not-allowlisted`, `credentials`, `forbidden-address`
    /// or `unresolvable`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotAllowlisted { .. } => "not-allowlisted",
            Refusal::Credentials => "credentials",
            Refusal::ForbiddenAddress { .. } => "forbidden-address",
            Refusal::Unresolvable { .. } => "unresolvable",
        }
    }
}

/// The range `ip` belongs to if it is not a public unicast address, else
/// `None`. IPv4-mapped and IPv4-compatible IPv6 addresses are judged as the
/// IPv4 address they carry, NAT64 ones (`64:ff9b::/96`) too.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = a.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return forbidden_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ));
            }
            forbidden_v6(a)
        }
    }
}

fn forbidden_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [b0, b1, b2, _] = a.octets();
    let range = if a.is_unspecified() || b0 == 0 {
        "unspecified"
    } else if a.is_loopback() {
        "loopback"
    } else if a.is_private() {
        "private"
    } else if a.is_link_local() {
        "link-local"
    } else if a.is_multicast() {
        "multicast"
    } else if a.is_broadcast() {
        "broadcast"
    } else if a.is_documentation() {
        "documentation"
    } else if b0 == 100 && (64..128).contains(&b1) {
        "shared (carrier-grade NAT)"
    } else if b0 == 192 && b1 == 0 && b2 == 0 {
        "IETF protocol assignment"
    } else if b0 == 198 && (b1 == 18 || b1 == 19) {
        "benchmarking"
    } else if b0 >= 240 {
        "reserved"
    } else {
        return None;
    };
    Some(range)
}

fn forbidden_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    let range = if a.is_unspecified() {
        "unspecified"
    } else if a.is_loopback() {
        "loopback"
    } else if a.is_multicast() {
        "multicast"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique-local"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else if s[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated): ::a.b.c.d.
        "IPv4-compatible"
    } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        "discard-only"
    } else {
        return None;
    };
    Some(range)
}

/// The allowlist with the address rule: what may be called, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    entries: Vec<AllowEntry>,
}

impl Policy {
    /// The policy of `security.outbound_url_allowlist`.
    pub fn new(allowlist: &[Url]) -> Policy {
        Policy {
            entries: allowlist.iter().filter_map(AllowEntry::new).collect(),
        }
    }

    /// Whether some entry admits `url`; refuses URLs with credentials.
    pub fn admit(&self, url: &Url) -> Result<(), Refusal> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Credentials);
        }
        if self.entries.iter().any(|e| e.admits(url)) {
            Ok(())
        } else {
            let mut shown = url.clone();
            shown.set_query(None);
            shown.set_fragment(None);
            Err(Refusal::NotAllowlisted {
                url: shown.to_string(),
            })
        }
    }

    /// Whether a connection to `address` for `host` may be made: a public
    /// address, or one an allowlist entry names on a port that an entry for
    /// `host` admits. The port matters: naming `127.0.0.1:9000` must not
    /// open every loopback port to any allowed name that resolves there.
    /// (The resolver does not see the URL's port, so the ports compared are
    /// the entries'; a URL is admitted only on its host's entries' ports.)
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), Refusal> {
        let address = canonical(address);
        let named = |e: &AllowEntry| {
            e.address().map(canonical) == Some(address)
                && self
                    .entries
                    .iter()
                    .any(|h| h.port == e.port && h.names_host(host))
        };
        match forbidden_range(address) {
            None => Ok(()),
            Some(_) if self.entries.iter().any(named) => Ok(()),
            Some(range) => Err(Refusal::ForbiddenAddress {
                host: host.to_owned(),
                address,
                range,
            }),
        }
    }

    /// The check of a URL whose host is an address: the HTTP client connects
    /// to it without resolving, so it is checked here.
    pub fn check_literal(&self, url: &Url) -> Result<(), Refusal> {
        match url.host() {
            Some(Host::Ipv4(a)) => self.check_address(&a.to_string(), IpAddr::V4(a)),
            Some(Host::Ipv6(a)) => self.check_address(&a.to_string(), IpAddr::V6(a)),
            _ => Ok(()),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so that an entry
/// naming `127.0.0.1` and a resolver answering `::ffff:127.0.0.1` agree.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// A future of a resolver's answer.
pub type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Turns host names into addresses. The service uses the system's; tests and
/// the battle harness use one they control.
pub trait Resolver: Send + Sync {
    /// The addresses of `host`.
    fn resolve(&self, host: &str) -> Resolving;
}

/// The operating system's resolver (getaddrinfo, through tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).take(MAX_ADDRESSES).collect())
        })
    }
}

/// The HTTP client's resolver: asks `inner`, then refuses the name unless
/// the policy allows every address. The client connects only to what this
/// returns, so the check and the connection see the same addresses.
struct Guarded {
    policy: Arc<Policy>,
    inner: Arc<dyn Resolver>,
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let inner = self.inner.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = inner.resolve(&host).await.map_err(|e| {
                Box::new(Refusal::Unresolvable {
                    host: host.clone(),
                    reason: e.to_string(),
                }) as Box<dyn std::error::Error + Send + Sync>
            })?;
            if addresses.is_empty() {
                return Err(Box::new(Refusal::Unresolvable {
                    host,
                    reason: "no addresses".to_owned(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            // One forbidden address refuses the name: a name that mixes
            // public and internal answers is an attack, not a failover.
            for &address in &addresses {
                policy
                    .check_address(&host, address)
                    .map_err(|r| Box::new(r) as Box<dyn std::error::Error + Send + Sync>)?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(
                addresses
                    .into_iter()
                    .take(MAX_ADDRESSES)
                    .map(|ip| SocketAddr::new(ip, 0)),
            );
            Ok(addrs)
        })
    }
}

/// Bounds of one outbound call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// To establish the connection.
    pub connect_timeout: Duration,
    /// For the whole exchange, body included.
    pub timeout: Duration,
}

/// An HTTP client for client-supplied URLs: guarded resolver, no redirects,
/// no proxies, bounded time. Build once; it pools connections.
pub fn client(
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    limits: Limits,
) -> Result<reqwest::Client, reqwest::Error> {
    // The process-wide TLS provider (ring), as the LLM client installs it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .dns_resolver(Arc::new(Guarded {
            policy,
            inner: resolver,
        }))
        .retry(reqwest::retry::never())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(limits.connect_timeout)
        .timeout(limits.timeout)
        .pool_max_idle_per_host(4);
    builder.build()
}

/// What became of one outbound `POST`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Not made: the policy refused the URL or its addresses.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// Made, and it failed (connect, timeout, a broken response).
    #[error("failed: {0}")]
    Failed(String),
}

/// `POST`s `body` to `url` with `headers`, after the allowlist and literal
/// address checks (the resolver checks names). Returns the status and at most
/// [`MAX_RESPONSE_BYTES`] of the response.
pub async fn post(
    client: &reqwest::Client,
    policy: &Policy,
    url: &Url,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), CallError> {
    policy.admit(url).map_err(CallError::Refused)?;
    policy.check_literal(url).map_err(CallError::Refused)?;
    let mut request = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let mut response = match request.body(body).send().await {
        Ok(r) => r,
        Err(e) => return Err(classify(&e)),
    };
    let status = response.status().as_u16();
    let mut read = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES.saturating_sub(read.len());
                read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if read.len() >= MAX_RESPONSE_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return Err(classify(&e)),
        }
    }
    Ok((status, read))
}

/// A refusal from the guarded resolver, found in the error's sources, or the
/// failure as text.
fn classify(error: &reqwest::Error) -> CallError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<Refusal>() {
            return CallError::Refused(r.clone());
        }
        source = e.source();
    }
    CallError::Failed(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn entries_admit_by_scheme_host_port_and_path_segment() {
        let policy = Policy::new(&[
            url("https://hooks.example.com/hooks"),
            url("http://127.0.0.1:9000/"),
        ]);
        for ok in [
            "https://hooks.example.com/hooks",
            "https://hooks.example.com/hooks/a?x=1",
            "https://HOOKS.example.com:443/hooks/a",
            "http://127.0.0.1:9000/anything",
        ] {
            assert_eq!(policy.admit(&url(ok)), Ok(()), "{ok}");
        }
        for refused in [
            "https://hooks.example.com/hooksevil",
            "http://hooks.example.com/hooks/a",
            "https://hooks.example.com:8443/hooks/a",
            "https://hooks.example.com.evil.net/hooks/a",
            "http://127.0.0.1:9001/",
        ] {
            assert_eq!(
                policy.admit(&url(refused)).unwrap_err().code(),
                "not-allowlisted",
                "{refused}"
            );
        }
        assert_eq!(
            policy.admit(&url("https://u:p@hooks.example.com/hooks/a")),
            Err(Refusal::Credentials)
        );
    }

    #[test]
    fn special_ranges_are_forbidden_public_ones_are_not() {
        for (ip, range) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("192.0.2.1", "documentation"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(forbidden_range(ip.parse().unwrap()), Some(range), "{ip}");
        }
        for ip in ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert_eq!(forbidden_range(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn an_entry_naming_an_address_allows_it_and_only_it() {
        let policy = Policy::new(&[
            url("http://127.0.0.2:9000/"),
            url("http://hooks.example.com:9000/"),
            url("https://other.example.com/"),
        ]);
        assert_eq!(
            policy.check_address("hooks.example.com", "127.0.0.2".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            policy.check_address("hooks.example.com", "::ffff:127.0.0.2".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            policy
                .check_address("hooks.example.com", "127.0.0.3".parse().unwrap())
                .unwrap_err()
                .to_string(),
            "hooks.example.com resolves to 127.0.0.3, a loopback address"
        );
        // Named on port 9000, the address stays closed to a name admitted
        // only on 443.
        assert_eq!(
            policy
                .check_address("other.example.com", "127.0.0.2".parse().unwrap())
                .unwrap_err()
                .code(),
            "forbidden-address"
        );
        assert_eq!(
            policy.check_address("127.0.0.2", "127.0.0.2".parse().unwrap()),
            Ok(())
        );
    }
}

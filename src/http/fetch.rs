//! Fetching a URL on a person's behalf without letting them reach what they should
//! not: the server's own loopback, the private network it sits in, or a cloud
//! metadata service (SSRF).
//!
//! - http and https only, no user name or password in the URL;
//! - every host name is resolved by [`Guard`], which refuses it when any address it
//!   resolves to is not public; the connection then goes to exactly the addresses
//!   that were checked (reqwest asks no one else), so a DNS answer that changes
//!   between check and connect (rebinding) cannot slip through;
//! - an address written in the URL is checked the same way before connecting;
//! - redirects are followed by hand, at most [`MAX_REDIRECTS`], each one checked
//!   again;
//! - the body is read in pieces and abandoned as soon as it passes the size cap; the
//!   whole fetch has one deadline; the content type must be an image's (or unnamed);
//! - no proxy from the environment is used, since it would do the connecting.
//!
//! An admin can allow internal hosts (`assets.intra`) or networks (`10.20.0.0/16`).

use super::net::refusal;
use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;

/// Why a fetch failed, in words for the person who gave the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or an address it leads to is not allowed.
    #[error("{0}")]
    Refused(String),
    /// The body passed the size cap.
    #[error("{0}")]
    TooLarge(String),
    /// The server could not be reached or did not answer with an image.
    #[error("{0}")]
    Failed(String),
    /// The deadline passed.
    #[error("{0}")]
    Timeout(String),
}

/// A fetched body.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The `Content-Type` the server named, if any.
    pub content_type: Option<String>,
}

/// One allowlist entry.
#[derive(Clone, Debug, PartialEq)]
enum Allow {
    /// A host name, matched exactly (case aside).
    Host(String),
    /// An address or network in CIDR notation.
    Net(IpAddr, u8),
}

impl Allow {
    fn parse(entry: &str) -> Result<Allow, String> {
        let e = entry.trim().trim_start_matches('[').trim_end_matches(']');
        let (addr, bits) = match e.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (e, None),
        };
        if let Ok(ip) = addr.parse::<IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("`{entry}` has a bad prefix length"))?,
            };
            return Ok(Allow::Net(ip, bits));
        }
        let host = e.to_ascii_lowercase();
        let ok = !host.is_empty()
            && bits.is_none()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "`{entry}` is neither a host name nor an address or network (10.0.0.0/8)"
            ));
        }
        Ok(Allow::Host(host))
    }

    fn covers_ip(&self, ip: IpAddr) -> bool {
        let Allow::Net(net, bits) = self else {
            return false;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Checks allowlist entries, for config validation.
pub fn check_allowlist(entries: &[String]) -> Result<(), String> {
    entries.iter().try_for_each(|e| Allow::parse(e).map(drop))
}

/// The allowlist in force.
#[derive(Default)]
struct Rules {
    allow: Vec<Allow>,
}

impl Rules {
    fn host_allowed(&self, host: &str) -> bool {
        self.allow
            .iter()
            .any(|a| matches!(a, Allow::Host(h) if h.eq_ignore_ascii_case(host)))
    }

    /// Why `ip` (reached as `host`) is refused, if it is.
    fn refuse(&self, host: &str, ip: IpAddr) -> Option<String> {
        let why = refusal(ip)?;
        if self.allow.iter().any(|a| a.covers_ip(ip)) {
            return None;
        }
        Some(if host.parse::<IpAddr>().is_ok() {
            format!("`{host}` is {why}; Easel does not fetch from it")
        } else {
            format!("`{host}` resolves to {ip}, {why}; Easel does not fetch from it")
        })
    }
}

/// The resolver reqwest uses: resolves, then refuses any name with an address that
/// is not public (unless allowed).
struct Guard {
    rules: Arc<ArcSwap<Rules>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A refusal raised inside the resolver, found again in reqwest's error chain.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rules = self.rules.load_full();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| -> BoxError { Box::new(Refusal(format!("cannot resolve `{host}`"))) })?
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(Refusal(format!("`{host}` has no address"))) as BoxError);
            }
            if !rules.host_allowed(&host)
                && let Some(why) = addrs.iter().find_map(|a| rules.refuse(&host, a.ip()))
            {
                return Err(Box::new(Refusal(why)) as BoxError);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Fetches URLs under one allowlist; cheap to clone, one connection pool.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    rules: Arc<ArcSwap<Rules>>,
}

impl Fetcher {
    /// A fetcher allowing `allowlist` (host names, addresses, CIDR networks).
    pub fn new(allowlist: &[String]) -> Result<Fetcher, String> {
        let rules = Arc::new(ArcSwap::from_pointee(Rules::default()));
        // Idempotent: the first caller installs ring for the whole process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Guard {
                rules: rules.clone(),
            }))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let fetcher = Fetcher { client, rules };
        fetcher.set_allowlist(allowlist)?;
        Ok(fetcher)
    }

    /// Replaces the allowlist (on a config reload).
    pub fn set_allowlist(&self, allowlist: &[String]) -> Result<(), String> {
        let allow = allowlist
            .iter()
            .map(|e| Allow::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.rules.store(Arc::new(Rules { allow }));
        Ok(())
    }

    /// Fetches `url`: at most `max_bytes`, within `timeout`, image content types only.
    pub async fn get(
        &self,
        url: &str,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(timeout, self.get_inner(url, max_bytes)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(format!(
                "fetching the URL took longer than {} s",
                timeout.as_secs_f64()
            ))),
        }
    }

    async fn get_inner(&self, url: &str, max_bytes: u64) -> Result<Fetched, FetchError> {
        let mut url = reqwest::Url::parse(url)
            .map_err(|_| FetchError::Refused(format!("`{}` is not a URL", clip(url))))?;
        let mut hops = 0;
        let mut resp = loop {
            self.check_url(&url)?;
            let resp = self
                .client
                .get(url.clone())
                .header("accept", "image/*")
                .send()
                .await
                .map_err(|e| unreachable(&url, &e))?;
            if !resp.status().is_redirection() {
                break resp;
            }
            let Some(next) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                return Err(FetchError::Failed(format!(
                    "the server answered {} without a usable Location",
                    resp.status()
                )));
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(FetchError::Refused(format!(
                    "the URL redirects more than {MAX_REDIRECTS} times"
                )));
            }
            url = next;
        };
        if !resp.status().is_success() {
            return Err(FetchError::Failed(format!(
                "the server answered {} for the URL",
                resp.status()
            )));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if let Some(ct) = &content_type
            && !(ct.starts_with("image/")
                || ct == "application/octet-stream"
                || ct == "binary/octet-stream")
        {
            return Err(FetchError::Failed(format!(
                "the URL answered `{ct}`, not an image"
            )));
        }
        let too_large = || {
            FetchError::TooLarge(format!(
                "the image at the URL is larger than the limit of {max_bytes} bytes"
            ))
        };
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Failed(format!("the download broke off: {e}")))?
        {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            bytes,
            content_type,
        })
    }

    /// Refuses a URL by its shape, or by an address written in it.
    fn check_url(&self, url: &reqwest::Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Refused(format!(
                "only http and https URLs are fetched, not `{}:`",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Refused(
                "URLs with a user name or password are not fetched".into(),
            ));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(FetchError::Refused("the URL has no host".into())),
        };
        let rules = self.rules.load();
        match rules.refuse(&ip.to_string(), ip) {
            Some(why) => Err(FetchError::Refused(why)),
            None => Ok(()),
        }
    }
}

/// A URL cut short for a message.
fn clip(url: &str) -> String {
    url.chars().take(80).collect()
}

/// A failed send, with a refusal from the resolver named as such.
fn unreachable(url: &reqwest::Url, e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return FetchError::Refused(r.0.clone());
        }
        source = s.source();
    }
    let host = url.host_str().unwrap_or("the host");
    if e.is_timeout() {
        FetchError::Timeout(format!("`{host}` did not answer in time"))
    } else {
        FetchError::Failed(format!("cannot reach `{host}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::{Allow, Rules};

    #[test]
    fn allowlist_entries_are_hosts_addresses_or_networks() {
        assert_eq!(
            Allow::parse("Assets.Intra").unwrap(),
            Allow::Host("assets.intra".into())
        );
        assert!(matches!(Allow::parse("10.0.0.0/8"), Ok(Allow::Net(_, 8))));
        assert!(matches!(Allow::parse("[fd00::1]"), Ok(Allow::Net(_, 128))));
        assert!(Allow::parse("10.0.0.0/33").is_err());
        assert!(Allow::parse("http://x").is_err());
        assert!(Allow::parse("").is_err());
    }

    #[test]
    fn a_network_entry_allows_only_its_addresses() {
        let rules = Rules {
            allow: vec![Allow::parse("10.20.0.0/16").unwrap()],
        };
        assert!(rules.refuse("a", "10.20.3.4".parse().unwrap()).is_none());
        assert!(
            rules
                .refuse("a", "::ffff:10.20.3.4".parse().unwrap())
                .is_none()
        );
        let why = rules.refuse("a", "10.21.0.1".parse().unwrap()).unwrap();
        assert!(why.contains("private"), "{why}");
        assert!(rules.refuse("a", "1.1.1.1".parse().unwrap()).is_none());
        let everything = Rules {
            allow: vec![Allow::parse("0.0.0.0/0").unwrap()],
        };
        assert!(
            everything
                .refuse("a", "127.0.0.1".parse().unwrap())
                .is_none()
        );
    }
}

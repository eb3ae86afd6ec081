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

use super::net::{Allowlist, Unreached};
use arc_swap::ArcSwap;
use std::net::IpAddr;
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

/// The resolver reqwest uses: resolves, then refuses any name with an address that
/// is not public (unless allowed).
struct Guard {
    rules: Arc<ArcSwap<Allowlist>>,
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
            let addrs = rules.resolve(&host, 0).await.map_err(|e| -> BoxError {
                Box::new(Refusal(match e {
                    Unreached::Lookup(why) => why,
                    Unreached::Refused(why) => refused(why),
                }))
            })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A refusal, as a person who gave the URL reads it.
fn refused(why: String) -> String {
    format!("{why}; Easel does not fetch from it")
}

/// Fetches URLs under one allowlist; cheap to clone, one connection pool.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    rules: Arc<ArcSwap<Allowlist>>,
}

impl Fetcher {
    /// A fetcher allowing `allowlist` (host names, addresses, CIDR networks).
    pub fn new(allowlist: &[String]) -> Result<Fetcher, String> {
        let rules = Arc::new(ArcSwap::from_pointee(Allowlist::default()));
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
        self.rules.store(Arc::new(Allowlist::parse(allowlist)?));
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
            Some(why) => Err(FetchError::Refused(refused(why))),
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

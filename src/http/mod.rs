//! The HTTP ground floor: it wires capability routes into one actix app, maps errors
//! to the one JSON shape, and wraps every request in [`middleware::observe`].

pub mod body;
pub mod error;
pub mod fetch;
pub mod metrics;
pub mod middleware;
pub mod net;

pub use error::ApiError;
pub use metrics::Metrics;

use actix_web::{App, HttpServer, middleware::Compress, web};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;

/// What the middleware needs on every request.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The body limit, changed live on config reload.
    pub max_body_bytes: AtomicU64,
    /// Whether the listener speaks TLS (adds HSTS).
    pub tls: bool,
}

/// Whether a request's body is `multipart/form-data` (an upload).
pub fn is_multipart(req: &actix_web::HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// 400 for a multipart body that cannot be read.
pub fn multipart_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!("the multipart body cannot be read: {e}"),
    )
}

/// A stored millisecond timestamp as RFC 3339 UTC text, as the API shows times.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The largest body any extractor buffers; the live limit in the middleware is lower.
const EXTRACTOR_CEILING: usize = 1 << 30;

#[derive(OpenApi)]
#[openapi(
    info(title = "Easel", description = "Self-hosted AI image gateway: alt text, an OpenAI-compatible gateway, skills, an asset library and an enforced privacy policy."),
    tags(
        (name = "system", description = "Health, readiness, metrics and this document"),
        (name = "accounts", description = "Sign-up, sign-in, the caller's own account and sessions"),
        (name = "keys", description = "API keys: create (shown once), list, revoke"),
        (name = "gateway", description = "OpenAI-compatible: models, chat completions, image generation"),
        (name = "providers", description = "Provider connections: the organisation's and your own keys"),
        (name = "credits", description = "Your credit balance and ledger"),
        (name = "usage", description = "Your usage records: list, CSV export, daily totals"),
        (name = "skills", description = "Skills: node-graph workflows, their versions and runs, and the MCP endpoint"),
        (name = "admin", description = "Users, invites, credits, providers and the audit log (admins)")
    ),
    modifiers(&BearerAuth)
)]
struct BaseDoc;

/// Declares the two ways to authenticate: an API key as a bearer token, or the
/// browser's session cookie.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("easel_sk_<id>_<secret>")
                    .build(),
            ),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("easel_session"))),
        );
    }
}

/// Turns off Nagle's algorithm on the listening socket; Linux passes it on to every
/// accepted connection. Without it, a streamed answer's second small write waits for
/// the client's delayed ACK (about 40 ms) on every SSE event after the first.
pub fn no_delay(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this function borrows, with a pointer to a c_int
    // that outlives the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot set TCP_NODELAY; streamed answers may stall");
    }
}

/// HTTP worker threads when the config leaves it to Easel: one per CPU core but one,
/// and at least one. The core left over runs the store's writer, the background
/// runtime and the load of the machine itself, so a request is not kept waiting
/// behind them. Each worker serves many connections at once; one relays about 30,000
/// gateway requests a second on this project's 2-core test machine, where one worker
/// instead of two lowered the gateway's p99 under load by 0.4-3 ms for a tenth to a
/// fifth less peak throughput (docs/benchmarks.md, 2026-12-06, sixth sitting).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// How to listen.
pub struct Listen {
    pub listener: TcpListener,
    pub tls: Option<rustls::ServerConfig>,
    /// HTTP worker threads; 0 leaves it to [`default_workers`].
    pub workers: usize,
    pub shutdown_timeout: Duration,
}

/// Starts the server on an already bound listener. `configure` registers the app data
/// and the routes of every capability; the OpenAPI document is collected from them.
pub fn start<F>(
    listen: Listen,
    shared: web::Data<Shared>,
    configure: F,
) -> std::io::Result<actix_web::dev::Server>
where
    F: Fn(&mut ServiceConfig) + Clone + Send + 'static,
{
    let server = HttpServer::new(move || {
        let (app, api) = App::new()
            .app_data(shared.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(EXTRACTOR_CEILING)
                    .error_handler(error::json_error),
            )
            .app_data(web::PayloadConfig::default().limit(EXTRACTOR_CEILING))
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .wrap(Compress::default())
            .wrap(actix_web::middleware::from_fn(middleware::observe))
            .into_utoipa_app()
            .openapi(BaseDoc::openapi())
            .configure(configure.clone())
            .split_for_parts();
        app.app_data(web::Data::new(api))
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .shutdown_timeout(listen.shutdown_timeout.as_secs().max(1));
    let server = server.workers(match listen.workers {
        0 => default_workers(),
        n => n,
    });
    no_delay(&listen.listener);
    let server = match listen.tls {
        Some(tls) => server.listen_rustls_0_23(listen.listener, tls)?,
        None => server.listen(listen.listener)?,
    };
    Ok(server.run())
}

async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}; see /openapi.json for the API",
        req.method(),
        req.path()
    )))
}

/// Reads a PEM certificate chain and private key into a rustls config (TLS 1.2 and 1.3).
pub fn tls_config(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read TLS private key {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    fn nodelay(fd: i32) -> libc::c_int {
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a c_int of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw mut on).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0);
        on
    }

    #[test]
    fn accepted_connections_inherit_no_delay_from_the_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        super::no_delay(&listener);
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert_ne!(nodelay(accepted.as_raw_fd()), 0, "Nagle is still on");
    }
}

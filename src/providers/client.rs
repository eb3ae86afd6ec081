//! The HTTP client of provider calls: HTTP/1.1 over TCP or rustls ([`super::h1`]),
//! driven by the task that makes the call, with a pool of idle connections per lane,
//! and each thread keeps to its lane.
//!
//! reqwest (which Easel still uses to fetch images and models) wraps hyper's pooled
//! client in redirect, retry and timeout layers and parses a URL per response; hyper's
//! client itself runs each connection as a task of its own and hands every request,
//! answer and body frame across a channel to it. A provider call needs none of that:
//! on the gateway's hot path each of those layers cost microseconds a request
//! (measured, docs/benchmarks.md). Easel follows no redirects from a provider and sets
//! its own timeouts here.
//!
//! Provider calls go straight to the provider: `HTTP_PROXY` and `HTTPS_PROXY` are not
//! read. Certificates are checked against the system's roots (rustls' platform
//! verifier). Calls are HTTP/1.1, as the official OpenAI SDKs make them; concurrent
//! calls to one provider use connections side by side.

use super::h1::{self, Failed, Pool};
use super::upstream::UpstreamError;
use crate::http::net::Allowlist;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, StatusCode, Uri};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The largest answer read whole (a generated image in base64 is the biggest).
const MAX_ANSWER: usize = 128 << 20;

/// The connections of one endpoint: a pool of idle ones per lane, and each thread
/// keeps to one lane. A connection is registered with the reactor of the thread that
/// opened it; used from another HTTP worker, every read and write on it would wake
/// that thread too (one cross-thread wake-up per proxied request, measured).
#[derive(Clone)]
pub struct Clients {
    lanes: Arc<[Arc<Pool>]>,
    tls: tokio_rustls::TlsConnector,
    /// How long opening a connection may take.
    connect_timeout: Duration,
    /// How long to wait for the next bytes of an answer.
    read_timeout: Duration,
    /// For a person's own connection: what it may reach besides public addresses,
    /// checked at every new connection. `None` for the organisation's.
    reach: Option<Arc<Allowlist>>,
}

impl Clients {
    /// Clients for one endpoint: a lane per core and one spare, so the HTTP workers
    /// still get lanes of their own when another thread (start-up, a background job)
    /// called first. `timeout` bounds connecting (at most 10 s) and each wait for
    /// more of an answer. With `reach` (a person's own connection), connections go
    /// only to public addresses and to what it allows.
    pub fn new(timeout: Duration, reach: Option<Allowlist>) -> Result<Clients, String> {
        let mut clients = Clients::with_tls(timeout, tls_config()?);
        clients.reach = reach.map(Arc::new);
        Ok(clients)
    }

    fn with_tls(timeout: Duration, mut tls: rustls::ClientConfig) -> Clients {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let lanes = std::thread::available_parallelism().map_or(1, |n| n.get().min(8)) + 1;
        Clients {
            lanes: (0..lanes).map(|_| Arc::new(Pool::default())).collect(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout: timeout.min(Duration::from_secs(10)),
            read_timeout: timeout,
            reach: None,
        }
    }

    /// This thread's pool.
    fn lane(&self) -> &Arc<Pool> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        &self.lanes[LANE.with(|l| *l) % self.lanes.len()]
    }

    /// Sends `call`; the answer's head must arrive by `deadline` (and a whole answer
    /// read with [`Reply::bytes`] all of it). Failures are classified for `provider`.
    pub(super) async fn send(
        &self,
        call: Call,
        provider: &str,
        deadline: Instant,
    ) -> Result<Reply, UpstreamError> {
        let request = call.build(provider)?;
        let bytes = h1::encode(&request).map_err(|why| refuse(provider, why))?;
        let (uri, method) = (request.uri(), request.method());
        let lane = self.lane();
        let exchange = async {
            loop {
                let (conn, reused) = match lane.take(uri) {
                    Some(conn) => (conn, true),
                    None => {
                        let open = tokio::time::timeout(
                            self.connect_timeout,
                            h1::Conn::open(uri, &self.tls, self.reach.as_deref()),
                        );
                        match open.await {
                            Ok(Ok(conn)) => (conn, false),
                            Ok(Err(failed)) => return Err(failed),
                            Err(_) => {
                                return Err(Failed::Broken("connecting took too long".into()));
                            }
                        }
                    }
                };
                match h1::exchange(conn, &bytes, method, lane.clone()).await {
                    // The server closed an idle connection as it was reused: again, on another.
                    Err(Failed::Unsent(_)) if reused => continue,
                    done => return done,
                }
            }
        };
        let answer = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => return Err(UpstreamError::Timeout(provider.to_string())),
            // Logged by the routing, with the rest of the call's failures.
            Ok(Err(Failed::Refused(why))) => {
                return Err(UpstreamError::Refused {
                    provider: provider.to_string(),
                    why,
                });
            }
            Ok(Err(Failed::Unsent(why) | Failed::Broken(why))) => {
                tracing::debug!(provider, error = %why, "a provider call failed");
                return Err(UpstreamError::Connect(provider.to_string()));
            }
            Ok(Ok(answer)) => answer,
        };
        Ok(Reply {
            status: answer.head.status,
            head: answer.head,
            body: answer.body,
            read_timeout: self.read_timeout,
            deadline,
        })
    }
}

/// A call that cannot be made is the provider's configuration at fault, not the
/// client's: logged for the admin, and answered as unreachable.
fn refuse(provider: &str, why: String) -> UpstreamError {
    tracing::warn!(provider, "a provider call cannot be made: {why}");
    UpstreamError::Connect(provider.to_string())
}

/// rustls with ring and the system's certificate roots, shared by every lane.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map(|b| b.with_no_client_auth())
        .map_err(|e| format!("cannot set up TLS for provider calls: {e}"))
}

/// `url` as a request target, read the way a browser (and reqwest) reads it: an
/// international host name becomes its ASCII (punycode) form, dot segments go.
pub(super) fn uri(url: &str) -> Result<Uri, String> {
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    url.as_str().parse::<Uri>().map_err(|e| e.to_string())
}

static AGENT: HeaderValue = HeaderValue::from_static(concat!("easel/", env!("CARGO_PKG_VERSION")));

/// A request on its way to a provider.
pub(super) struct Call {
    method: Method,
    uri: Result<Uri, String>,
    headers: HeaderMap,
    body: Bytes,
    /// A header that could not be set (a key with characters HTTP cannot carry).
    invalid: Option<&'static str>,
}

/// A header value that is secret (a key), marked sensitive: never printed, and never
/// indexed by HTTP/2. `None` for text HTTP cannot carry.
pub fn secret_value(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl Call {
    /// A request to `url`.
    pub fn new(method: Method, url: &str) -> Call {
        Call::to(method, uri(url))
    }

    /// A POST to a URL parsed once beforehand.
    pub fn post_to(uri: Uri) -> Call {
        Call::to(Method::POST, Ok(uri))
    }

    fn to(method: Method, uri: Result<Uri, String>) -> Call {
        Call {
            method,
            uri,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            invalid: None,
        }
    }

    /// Sets a header whose value is secret (a key): it is marked sensitive, so it is
    /// never printed and HTTP/2 never indexes it.
    pub fn secret_header(mut self, name: &'static str, value: &str) -> Call {
        match secret_value(value) {
            Some(v) => self.secret_header_value(name, v),
            None => {
                self.invalid = Some(name);
                self
            }
        }
    }

    /// Sets a secret header made beforehand with [`secret_value`].
    pub fn secret_header_value(mut self, name: &'static str, value: HeaderValue) -> Call {
        self.headers.insert(HeaderName::from_static(name), value);
        self
    }

    /// Sets a header with a fixed value.
    pub fn header(mut self, name: &'static str, value: &'static str) -> Call {
        self.headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }

    /// A JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Call {
        // Serialising a `Value` or a derived struct into memory cannot fail.
        self.body = serde_json::to_vec(value).unwrap_or_default().into();
        self.header("content-type", "application/json")
    }

    /// A body of the given media type.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Call {
        match HeaderValue::from_str(content_type) {
            Ok(v) => {
                self.headers.insert(CONTENT_TYPE, v);
            }
            Err(_) => self.invalid = Some("content-type"),
        }
        self.body = body.into();
        self
    }

    /// The request, checked: a call that cannot be made is refused (see [`refuse`]).
    fn build(self, provider: &str) -> Result<http::Request<Bytes>, UpstreamError> {
        if let Some(name) = self.invalid {
            return Err(refuse(
                provider,
                format!(
                    "its {name} header has characters HTTP cannot carry (check the provider's key)"
                ),
            ));
        }
        let uri = self
            .uri
            .map_err(|e| refuse(provider, format!("its URL cannot be called ({e})")))?;
        let mut req = http::Request::new(self.body);
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers;
        req.headers_mut().insert(USER_AGENT, AGENT.clone());
        Ok(req)
    }
}

/// A provider's answer: its head, and the body still to read.
pub(super) struct Reply {
    pub status: StatusCode,
    head: h1::Head,
    body: h1::Incoming,
    read_timeout: Duration,
    /// When the whole answer must be in.
    deadline: Instant,
}

impl Reply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    /// The whole body, which must be complete by the deadline the call was sent with
    /// (each wait for more is bounded by the read timeout too).
    pub async fn bytes(self, provider: &str) -> Result<Bytes, UpstreamError> {
        let deadline = self.deadline;
        self.bytes_by(provider, deadline).await
    }

    /// The whole body by `deadline`.
    pub async fn bytes_by(self, provider: &str, deadline: Instant) -> Result<Bytes, UpstreamError> {
        let mut body = self.body_by(provider, Some(deadline));
        let mut first: Option<Bytes> = None;
        let mut rest: Vec<u8> = Vec::new();
        while let Some(data) = body.next().await {
            let data = data?;
            // Most answers come in one piece: keep it as it is.
            match first.take() {
                None if rest.is_empty() => first = Some(data),
                earlier => {
                    if let Some(e) = earlier {
                        rest.extend_from_slice(&e);
                    }
                    rest.extend_from_slice(&data);
                }
            }
            let len = first.as_ref().map_or(0, Bytes::len) + rest.len();
            if len > MAX_ANSWER {
                return Err(UpstreamError::garbage(
                    provider,
                    format!("an answer over {} MiB", MAX_ANSWER >> 20),
                ));
            }
        }
        Ok(first.unwrap_or_else(|| rest.into()))
    }

    /// The body as pieces, as they arrive; a piece that takes longer than the read
    /// timeout ends it with a timeout, a broken connection with an error.
    pub fn body_stream(self, provider: &str) -> Body {
        self.body_by(provider, None)
    }

    fn body_by(self, provider: &str, deadline: Option<Instant>) -> Body {
        Body {
            body: self.body,
            read_timeout: self.read_timeout,
            deadline,
            timer: None,
            waiting_since: None,
            provider: provider.to_string(),
            done: false,
        }
    }
}

/// What the body gives next: a piece, a broken connection, or (`None`) its end.
type Next = Option<Result<Bytes, String>>;

/// The body of an answer, read piece by piece.
pub(super) struct Body {
    body: h1::Incoming,
    read_timeout: Duration,
    /// When the whole body must be in; `None`: only each wait is bounded.
    deadline: Option<Instant>,
    /// Set only once a read has to wait, and moved on only when it fires: a piece
    /// at hand costs no timer, and a stream of pieces one timer per read timeout
    /// instead of one each.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the wait for the next piece began (its first poll that found nothing).
    /// The read timeout counts from there, not from the last piece: a client slow to
    /// take what was relayed is not the provider's delay.
    waiting_since: Option<Instant>,
    provider: String,
    done: bool,
}

impl Body {
    /// The next piece of data; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Body::next`], polled: what a stream over the body calls.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = std::task::ready!(self.poll_piece(cx));
        self.waiting_since = None;
        match next {
            None => {
                self.done = true;
                Poll::Ready(Some(Err(UpstreamError::Timeout(self.provider.clone()))))
            }
            Some(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Some(Some(Err(why))) => {
                self.done = true;
                tracing::debug!(provider = %self.provider, error = %why, "a provider's answer broke off");
                Poll::Ready(Some(Err(UpstreamError::garbage(
                    &self.provider,
                    "the connection broke mid-answer",
                ))))
            }
            Some(Some(Ok(piece))) => Poll::Ready(Some(Ok(piece))),
        }
    }

    /// The next piece (`Some`), or `None` once the wait for it (see
    /// [`Body::waiting_since`]) is over.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Next>> {
        if let Poll::Ready(next) = self.body.poll_data(cx) {
            return Poll::Ready(Some(next));
        }
        let began = *self.waiting_since.get_or_insert_with(Instant::now);
        loop {
            let idle = began + self.read_timeout;
            let due = self.deadline.map_or(idle, |d| d.min(idle));
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= due {
                return Poll::Ready(None);
            }
            // Set for an earlier wait: this one ends later.
            timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;

    /// A server on 127.0.0.1 whose every answer is chunked: `pieces` pieces
    /// `every` apart, then (when `stall`) silence instead of the end.
    async fn trickle(pieces: usize, every: Duration, stall: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && sock.read(&mut byte).await.unwrap_or(0) == 1
                    {
                        head.push(byte[0]);
                    }
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    for _ in 0..pieces {
                        let _ = sock.write_all(b"5\r\nhello\r\n").await;
                        tokio::time::sleep(every).await;
                    }
                    if stall {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        format!("http://{addr}/")
    }

    async fn ask(clients: &Clients, url: &str) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(10);
        clients
            .send(Call::new(Method::GET, url), "up", deadline)
            .await
            .expect("an answer")
    }

    #[tokio::test]
    async fn the_read_timeout_bounds_each_wait_and_never_a_steady_stream() {
        let clients = Clients::new(Duration::from_millis(300), None).expect("clients");
        // Eight pieces 100 ms apart: longer than the read timeout in all, never in one wait.
        let steady = trickle(8, Duration::from_millis(100), false).await;
        let mut body = ask(&clients, &steady).await.body_stream("up");
        let mut got = 0;
        while let Some(piece) = body.next().await {
            assert_eq!(&piece.expect("a piece")[..], b"hello");
            got += 1;
        }
        assert_eq!(got, 8);

        // One piece, then silence: the next wait ends after the read timeout.
        let stalled = trickle(1, Duration::ZERO, true).await;
        let mut body = ask(&clients, &stalled).await.body_stream("up");
        assert!(body.next().await.expect("a piece").is_ok());
        let waited = Instant::now();
        let err = body
            .next()
            .await
            .expect("an outcome")
            .expect_err("a timeout");
        assert!(matches!(err, UpstreamError::Timeout(_)), "{err}");
        let waited = waited.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        assert!(body.next().await.is_none(), "nothing after the timeout");

        // A reader that pauses longer than the read timeout between pieces: each
        // wait is short, so nothing times out.
        let paced = trickle(3, Duration::from_millis(500), false).await;
        let mut body = ask(&clients, &paced).await.body_stream("up");
        let mut got = 0;
        while let Some(piece) = body.next().await {
            assert!(piece.is_ok(), "a wait of 100 ms is not a timeout");
            got += 1;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        assert_eq!(got, 3);

        // A whole answer must be in by its deadline, however steadily it comes.
        let reply = ask(&clients, &steady).await;
        let by = Instant::now() + Duration::from_millis(350);
        let err = reply
            .bytes_by("up", by)
            .await
            .expect_err("past its deadline");
        assert!(matches!(err, UpstreamError::Timeout(_)), "{err}");
        let whole = ask(&clients, &steady)
            .await
            .bytes("up")
            .await
            .expect("in time");
        assert_eq!(&whole[..], "hello".repeat(8).as_bytes());
    }

    #[test]
    fn a_key_http_cannot_carry_is_refused_before_anything_is_sent_and_never_shown() {
        let call = Call::new(Method::GET, "http://127.0.0.1:9/models")
            .secret_header("authorization", "Bearer sk-\u{e9}\n");
        let err = call.build("up").unwrap_err();
        assert!(matches!(err, UpstreamError::Connect(_)), "{err}");
        assert!(!err.to_string().contains("sk-"), "{err}");
    }

    #[test]
    fn a_connection_makes_its_key_header_once_and_it_stays_secret() {
        use crate::config::ProviderKind;
        use crate::providers::upstream::{Connection, Owner};
        use crate::providers::{anthropic, bfl, gemini, openai};
        let conn = |kind: ProviderKind, key: Option<&str>| {
            Connection::new(
                "up".into(),
                kind,
                "https://api.example.com/v1".into(),
                key.map(|k| crate::crypto::Secret::new(k.to_string())),
                true,
                Duration::from_secs(1),
                0,
                Owner::Config,
                Clients::new(Duration::from_secs(1), None).expect("clients"),
                Default::default(),
            )
        };
        type Auth = fn(&Connection, Call) -> Call;
        let kinds: [(ProviderKind, Auth, &str, &str); 5] = [
            (
                ProviderKind::Openai,
                openai::auth,
                "authorization",
                "Bearer sk-test",
            ),
            (
                ProviderKind::OpenaiCompatible,
                openai::auth,
                "authorization",
                "Bearer sk-test",
            ),
            (
                ProviderKind::Anthropic,
                anthropic::auth,
                "x-api-key",
                "sk-test",
            ),
            (
                ProviderKind::Gemini,
                gemini::auth,
                "x-goog-api-key",
                "sk-test",
            ),
            (ProviderKind::Bfl, bfl::auth, "x-key", "sk-test"),
        ];
        for (kind, auth, name, want) in kinds {
            let sent = |c: &Connection| {
                let call = Call::new(Method::POST, "https://api.example.com/v1/chat/completions");
                auth(c, call).build("up")
            };
            let keyed = conn(kind, Some("sk-test"));
            for _ in 0..2 {
                let req = sent(&keyed).expect("a request");
                let header = req.headers().get(name).expect("the key's header");
                assert!(header.is_sensitive(), "{kind:?}");
                assert_eq!(header, want, "{kind:?}");
            }
            assert!(!format!("{keyed:?}").contains("sk-test"), "{kind:?}");
            for none in [None, Some("")] {
                let req = sent(&conn(kind, none)).expect("a request");
                assert!(req.headers().get(name).is_none(), "{kind:?} {none:?}");
            }
            let err = sent(&conn(kind, Some("sk-\u{e9}\n"))).expect_err("not carried");
            assert!(matches!(err, UpstreamError::Connect(_)), "{kind:?} {err}");
            assert!(!err.to_string().contains("sk-"), "{kind:?} {err}");
        }
    }

    #[test]
    fn keys_are_sensitive_and_every_call_names_easel() {
        let req = Call::new(Method::POST, "https://api.example.com/v1/chat/completions")
            .secret_header("authorization", "Bearer sk-test")
            .json(&serde_json::json!({"a": 1}))
            .build("up")
            .unwrap();
        let auth = req.headers().get(AUTHORIZATION).unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth, "Bearer sk-test");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        assert!(
            req.headers()[USER_AGENT]
                .to_str()
                .unwrap()
                .starts_with("easel/")
        );
        assert_eq!(req.uri().host(), Some("api.example.com"));
    }

    /// An HTTPS server on 127.0.0.1 with a certificate for `localhost` made here; it
    /// answers every request with the HTTP version it was made in and the client's port.
    async fn tls_server() -> (u16, Vec<u8>, actix_web::dev::ServerHandle) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = cert.cert.der().to_vec();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let chain = vec![rustls_pki_types::CertificateDer::from(der.clone())];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = actix_web::HttpServer::new(|| {
            use actix_web::{HttpResponse, web};
            actix_web::App::new()
                // Five pieces 20 ms apart, chunked.
                .route(
                    "/stream",
                    web::get().to(|| async {
                        let pieces = futures_util::stream::unfold(0, |i| async move {
                            if i == 5 {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let piece = Bytes::from(format!("piece {i};"));
                            Some((Ok::<_, actix_web::Error>(piece), i + 1))
                        });
                        HttpResponse::Ok().streaming(pieces)
                    }),
                )
                // Many TLS records' worth.
                .route(
                    "/big",
                    web::get().to(|| async { "0123456789".repeat(30_000) }),
                )
                .default_service(web::to(|req: actix_web::HttpRequest| async move {
                    let port = req.peer_addr().map_or(0, |a| a.port());
                    format!("{:?} {port}", req.version())
                }))
        })
        .workers(1)
        .listen_rustls_0_23(listener, config)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        (port, der, handle)
    }

    #[actix_web::test]
    async fn providers_are_called_over_tls_reusing_a_connection_and_an_unknown_certificate_is_refused()
     {
        let (port, der, server) = tls_server().await;
        let url = format!("https://localhost:{port}/v1/models");
        let soon = || Instant::now() + Duration::from_secs(5);

        // The system's roots do not know the certificate made here.
        let system = Clients::new(Duration::from_secs(5), None).unwrap();
        let refused = system
            .send(Call::new(Method::GET, &url), "up", soon())
            .await;
        assert!(matches!(refused, Err(UpstreamError::Connect(_))));

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(der))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let trusting = Clients::with_tls(Duration::from_secs(5), tls);
        let mut ports = Vec::new();
        for _ in 0..2 {
            let reply = trusting
                .send(
                    Call::new(Method::GET, &url).secret_header("authorization", "Bearer sk-test"),
                    "up",
                    soon(),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            let body = reply.bytes("up").await.unwrap();
            let body = std::str::from_utf8(&body).unwrap();
            let (version, port) = body.split_once(' ').unwrap();
            assert_eq!(version, "HTTP/1.1");
            ports.push(port.to_string());
        }
        assert_eq!(
            ports[0], ports[1],
            "the second call reused the first's connection"
        );

        // A chunked stream over TLS comes piece by piece, a large answer whole, and the
        // connection serves on after both.
        let base = format!("https://localhost:{port}");
        let reply = trusting
            .send(
                Call::new(Method::GET, &format!("{base}/stream")),
                "up",
                soon(),
            )
            .await
            .unwrap();
        let mut body = reply.body_stream("up");
        let mut streamed = String::new();
        let mut pieces = 0;
        while let Some(piece) = body.next().await {
            streamed.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
            pieces += 1;
        }
        assert_eq!(streamed, "piece 0;piece 1;piece 2;piece 3;piece 4;");
        assert!(pieces >= 5, "{pieces} pieces: each came as it was sent");
        let big = trusting
            .send(Call::new(Method::GET, &format!("{base}/big")), "up", soon())
            .await
            .unwrap()
            .bytes("up")
            .await
            .unwrap();
        assert_eq!(big, "0123456789".repeat(30_000).as_bytes());
        let reply = trusting
            .send(Call::new(Method::GET, &url), "up", soon())
            .await
            .unwrap();
        let body = reply.bytes("up").await.unwrap();
        let last = std::str::from_utf8(&body)
            .unwrap()
            .split_once(' ')
            .unwrap()
            .1;
        assert_eq!(last, ports[0], "still the first connection");
        server.stop(false).await;
    }

    #[test]
    fn a_url_that_does_not_parse_is_an_error_not_a_panic() {
        let err = Call::new(Method::GET, "http://exa mple/")
            .build("up")
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Connect(_)));
    }

    #[test]
    fn urls_are_read_as_reqwest_read_them() {
        let idn = uri("https://bücher.example/v1/../v2/chat").unwrap();
        assert_eq!(idn.host(), Some("xn--bcher-kva.example"));
        assert_eq!(idn.path(), "/v2/chat");
        let plain = uri("http://127.0.0.1:8080/v1/chat/completions?x=1").unwrap();
        assert_eq!(
            plain.to_string(),
            "http://127.0.0.1:8080/v1/chat/completions?x=1"
        );
    }

    /// A server on 127.0.0.1 that answers each request with `script(connection,
    /// request)`: the bytes to write, and whether to close the connection after them.
    /// It counts the connections it accepted.
    async fn scripted(script: fn(usize, usize) -> (Vec<u8>, bool)) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    for request in 0.. {
                        // A request ends with its head; these carry no body but a
                        // `content-length: 0` or none at all.
                        while memchr::memmem::find(&seen, b"\r\n\r\n").is_none() {
                            match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = memchr::memmem::find(&seen, b"\r\n\r\n").unwrap() + 4;
                        seen.drain(..end);
                        let (bytes, close) = script(conn, request);
                        if sock.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/"), accepted)
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    async fn text(clients: &Clients, url: &str) -> Result<String, UpstreamError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let reply = clients
            .send(Call::new(Method::GET, url), "up", deadline)
            .await?;
        let body = reply.bytes("up").await?;
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_personal_connection_reaches_a_private_address_only_when_allowed() {
        let (url, accepted) = scripted(|_, i| (ok(&format!("answer {i}")), false)).await;
        let personal = Clients::new(Duration::from_secs(5), Some(Allowlist::default())).unwrap();
        match text(&personal, &url).await {
            Err(UpstreamError::Refused { provider, why }) => {
                assert_eq!(provider, "up");
                assert!(why.contains("loopback"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let by_name = url.replace("127.0.0.1", "localhost");
        assert!(matches!(
            text(&personal, &by_name).await,
            Err(UpstreamError::Refused { .. })
        ));
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was connected");

        let allowed = Allowlist::parse(&["127.0.0.1".into()]).unwrap();
        let personal = Clients::new(Duration::from_secs(5), Some(allowed)).unwrap();
        assert_eq!(text(&personal, &url).await.unwrap(), "answer 0");
        let organisation = Clients::new(Duration::from_secs(5), None).unwrap();
        assert_eq!(text(&organisation, &url).await.unwrap(), "answer 0");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_reused_and_others_are_not() {
        let clients = Clients::new(Duration::from_secs(5), None).unwrap();
        let (url, accepted) = scripted(|_, i| (ok(&format!("answer {i}")), false)).await;
        for i in 0..3 {
            assert_eq!(text(&clients, &url).await.unwrap(), format!("answer {i}"));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection served all three"
        );

        // An answer left unread whose rest is at hand is read on drop, and its
        // connection serves again; one with much left unread is closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        let reply = clients
            .send(Call::new(Method::GET, &url), "up", deadline)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(reply);
        assert_eq!(text(&clients, &url).await.unwrap(), "answer 4");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let (big, accepted) = scripted(|_, _| (ok(&"a".repeat(300_000)), false)).await;
        let reply = clients
            .send(Call::new(Method::GET, &big), "up", deadline)
            .await
            .unwrap();
        let mut body = reply.body_stream("up");
        assert!(body.next().await.expect("a piece").is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(body);
        assert_eq!(text(&clients, &big).await.unwrap().len(), 300_000);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "too much left: closed");

        // Chunked answers are reused too; answers that end with the connection are not.
        let (url, accepted) = scripted(|_, _| {
            let chunked =
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
            (chunked.to_vec(), false)
        })
        .await;
        for _ in 0..2 {
            assert_eq!(text(&clients, &url).await.unwrap(), "hi");
        }
        // A caller that stops before the closing chunk, as an event stream does at
        // `[DONE]`, still leaves the connection to serve again.
        let reply = clients
            .send(Call::new(Method::GET, &url), "up", deadline)
            .await
            .unwrap();
        let mut body = reply.body_stream("up");
        assert_eq!(&body.next().await.expect("a piece").unwrap()[..], b"hi");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(body);
        assert_eq!(text(&clients, &url).await.unwrap(), "hi");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let (url, accepted) =
            scripted(|_, _| (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true)).await;
        for _ in 0..2 {
            assert_eq!(text(&clients, &url).await.unwrap(), "until the end");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let (url, accepted) = scripted(|_, _| {
            let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
            (close.to_vec(), false)
        })
        .await;
        for _ in 0..2 {
            assert_eq!(text(&clients, &url).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_not_reused_and_a_written_request_never_goes_twice()
     {
        let clients = Clients::new(Duration::from_secs(5), None).unwrap();
        // Each connection answers once and closes, as a server whose keep-alive ran out.
        let (url, accepted) = scripted(|_, _| (ok("once"), true)).await;
        for _ in 0..3 {
            assert_eq!(text(&clients, &url).await.unwrap(), "once");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "a new connection each time"
        );

        // A server that takes a request and closes without a word may have acted on
        // it: the call fails (the gateway's routing decides what next) and the request
        // is not sent again behind its back.
        let (url, accepted) = scripted(|_, i| match i {
            0 => (ok("first"), false),
            _ => (Vec::new(), true),
        })
        .await;
        assert_eq!(text(&clients, &url).await.unwrap(), "first");
        let err = text(&clients, &url).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect(_)), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // A new connection that closes without an answer fails the call (once).
        let (url, accepted) = scripted(|_, _| (Vec::new(), true)).await;
        let err = text(&clients, &url).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect(_)), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // So does one that breaks off mid-head, or answers with something not HTTP.
        let (url, _) = scripted(|_, _| (b"HTTP/1.1 200 O".to_vec(), true)).await;
        assert!(matches!(
            text(&clients, &url).await,
            Err(UpstreamError::Connect(_))
        ));
        let (url, _) = scripted(|_, _| (b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), false)).await;
        assert!(matches!(
            text(&clients, &url).await,
            Err(UpstreamError::Connect(_))
        ));

        // A body cut short, or not framed as its head says, is a broken answer.
        for broken in [
            |_, _| {
                (
                    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort".to_vec(),
                    true,
                )
            },
            |_, _| {
                (
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                    false,
                )
            },
        ] {
            let (url, _) = scripted(broken).await;
            let got = text(&clients, &url).await;
            assert!(matches!(got, Err(UpstreamError::Garbage { .. })), "{got:?}");
        }
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_requests_carry_their_length() {
        let clients = Clients::new(Duration::from_secs(5), None).unwrap();
        let (url, _) = scripted(|_, _| {
            let mut out = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            out.extend_from_slice(&ok("after"));
            (out, false)
        })
        .await;
        assert_eq!(text(&clients, &url).await.unwrap(), "after");

        let req = Call::new(Method::POST, "http://user:pw@127.0.0.1:8080/v1/chat?x=1")
            .body("text/plain", "hello")
            .build("up")
            .unwrap();
        let wire = String::from_utf8(h1::encode(&req).unwrap()).unwrap();
        assert!(
            wire.starts_with("POST /v1/chat?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n"),
            "{wire}"
        );
        assert!(wire.contains("\r\ncontent-type: text/plain\r\n"), "{wire}");
        assert!(wire.contains("\r\ncontent-length: 5\r\n"), "{wire}");
        assert!(wire.ends_with("\r\n\r\nhello"), "{wire}");
        assert!(!wire.contains("pw"), "{wire}");
        let get = Call::new(Method::GET, "http://127.0.0.1:8080")
            .build("up")
            .unwrap();
        let wire = String::from_utf8(h1::encode(&get).unwrap()).unwrap();
        assert!(wire.starts_with("GET / HTTP/1.1\r\n"), "{wire}");
        assert!(!wire.contains("content-length"), "{wire}");
    }
}

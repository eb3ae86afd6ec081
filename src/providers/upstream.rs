//! A live provider connection: its pooled HTTP client, key, timeouts and circuit
//! breaker, and the calls every adapter makes through it.

use super::client::{Body, Call, Clients, Reply};
use super::wire::{ChatRequest, Image, ImageRequest, Usage};
use super::{anthropic, bfl, gemini, openai};
use crate::config::ProviderKind;
use crate::crypto::Secret;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::BoxStream;
use serde_json::Value;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Whose connection this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The organisation's, from the config file.
    Config,
    /// The organisation's, entered by an admin.
    Organisation,
    /// A person's own key.
    Account(String),
}

/// Why a provider call failed. Messages are safe to show: they never hold a key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The provider answered with an error status.
    #[error("{provider} answered {status}: {message}")]
    Status {
        provider: String,
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("cannot reach {0}")]
    Connect(String),
    /// The provider's answer could not be read.
    #[error("{provider} sent a response Easel could not read ({detail})")]
    Garbage { provider: String, detail: String },
    /// The request cannot be sent to this kind of provider as it is.
    #[error("{0}")]
    Unsupported(String),
    /// A person's own connection leads to an address Easel does not reach for them.
    #[error("{provider} is not reached: {why}; {PRIVATE_HINT}")]
    Refused { provider: String, why: String },
}

/// What a person whose own connection leads to a private address can do about it.
pub(crate) const PRIVATE_HINT: &str = "personal connections reach public endpoints only (an admin can allow the host in [gateway] private_hosts)";

impl UpstreamError {
    /// Whether another try (the same route again, or the next one) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
            UpstreamError::Timeout(_)
            | UpstreamError::Connect(_)
            | UpstreamError::Garbage { .. } => true,
            UpstreamError::Unsupported(_) | UpstreamError::Refused { .. } => false,
        }
    }

    pub(super) fn garbage(provider: &str, detail: impl std::fmt::Display) -> Self {
        let mut detail = detail.to_string();
        detail.truncate(200);
        UpstreamError::Garbage {
            provider: provider.to_string(),
            detail,
        }
    }
}

/// Skips a provider for a while after it failed several times in a row.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    /// Whether calls may go through at `now_ms`.
    pub fn closed(&self, now_ms: u64) -> bool {
        now_ms >= self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Records a failure; `threshold` in a row open the breaker for `cooldown_ms`.
    pub fn failed(&self, now_ms: u64, threshold: u32, cooldown_ms: u64) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold.max(1) {
            self.open_until_ms
                .store(now_ms + cooldown_ms, Ordering::Relaxed);
        }
    }

    /// Records a success, closing the breaker.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Relaxed);
    }

    /// Failures in a row, and until when the breaker is open (ms, 0 when closed).
    pub fn state(&self) -> (u32, u64) {
        (
            self.failures.load(Ordering::Relaxed),
            self.open_until_ms.load(Ordering::Relaxed),
        )
    }
}

/// What a chat call gives back.
pub enum ChatOutput {
    /// A whole completion in OpenAI's shape, with its usage when reported.
    Full {
        body: super::Whole,
        usage: Option<Usage>,
    },
    /// Events in OpenAI's chunk shape.
    Stream(BoxStream<'static, Result<StreamEvent, UpstreamError>>),
}

/// One streamed event.
#[derive(Debug)]
pub enum StreamEvent {
    /// A chunk in OpenAI's shape.
    Chunk(super::Whole),
    /// Token counts (usually at the end).
    Usage(Usage),
}

/// A provider connection ready to call.
pub struct Connection {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    key: Option<Secret<String>>,
    pub privacy: bool,
    pub timeout: Duration,
    pub retries: u32,
    pub owner: Owner,
    clients: Clients,
    pub breaker: Arc<Breaker>,
    /// `{base_url}/chat/completions`, parsed once rather than on every request.
    chat_url: Option<http::Uri>,
    /// The key as this kind of provider sends it in its auth header (`Bearer KEY` for
    /// OpenAI's shape, the key alone for the others), made once and marked sensitive;
    /// `None` without a key or for one HTTP cannot carry (a call then reports it).
    key_header: Option<http::HeaderValue>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The endpoint a provider kind uses when none is configured.
pub fn default_base_url(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Openai => Some("https://api.openai.com/v1"),
        ProviderKind::OpenaiCompatible => None,
        ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
        ProviderKind::Anthropic => Some("https://api.anthropic.com"),
        ProviderKind::Bfl => Some("https://api.bfl.ai"),
    }
}

impl Connection {
    /// A connection; `key` is `None` for endpoints that need none (a local Ollama).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        kind: ProviderKind,
        base_url: String,
        key: Option<Secret<String>>,
        privacy: bool,
        timeout: Duration,
        retries: u32,
        owner: Owner,
        clients: Clients,
        breaker: Arc<Breaker>,
    ) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        let key_header = key
            .as_ref()
            .map(|k| k.expose())
            .filter(|k| !k.is_empty())
            .and_then(|k| match kind {
                ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                    super::client::secret_value(&format!("Bearer {k}"))
                }
                ProviderKind::Gemini | ProviderKind::Anthropic | ProviderKind::Bfl => {
                    super::client::secret_value(k)
                }
            });
        Connection {
            chat_url: super::client::uri(&format!("{base_url}/chat/completions")).ok(),
            key_header,
            name,
            kind,
            base_url,
            key,
            privacy,
            timeout,
            retries,
            owner,
            clients,
            breaker,
        }
    }

    /// A POST to `url`.
    pub(super) fn post(&self, url: &str) -> Call {
        Call::new(http::Method::POST, url)
    }

    /// A GET of `url`.
    pub(super) fn get(&self, url: &str) -> Call {
        Call::new(http::Method::GET, url)
    }

    /// A POST to `{base_url}/chat/completions`.
    pub(super) fn post_chat(&self) -> Call {
        match &self.chat_url {
            Some(uri) => Call::post_to(uri.clone()),
            None => self.post(&format!("{}/chat/completions", self.base_url)),
        }
    }

    /// Whether this is a person's own key.
    pub fn byok(&self) -> bool {
        matches!(self.owner, Owner::Account(_))
    }

    /// The key, for the adapters' headers.
    pub(super) fn key(&self) -> &str {
        self.key.as_ref().map_or("", |k| k.expose().as_str())
    }

    /// Sets the auth header `name` from the key, as made when the connection was (see
    /// `key_header`); nothing without a key. A key HTTP cannot carry makes the call fail
    /// without showing it.
    pub(super) fn authorize(&self, req: Call, name: &'static str) -> Call {
        match &self.key_header {
            Some(v) => req.secret_header_value(name, v.clone()),
            None if self.has_key() => req.secret_header(name, self.key()),
            None => req,
        }
    }

    /// Whether a key is set.
    pub fn has_key(&self) -> bool {
        self.key.as_ref().is_some_and(|k| !k.expose().is_empty())
    }

    /// The last four characters of the key, to recognise it.
    pub fn key_hint(&self) -> Option<String> {
        let k = self.key.as_ref()?.expose();
        let n = k.chars().count();
        (n > 0).then(|| k.chars().skip(n.saturating_sub(4)).collect())
    }

    /// Whether calls can be made: a key where the kind needs one.
    pub fn usable(&self) -> bool {
        self.has_key() || self.kind == ProviderKind::OpenaiCompatible
    }

    /// Sends a request; an error status becomes an error with the provider's own
    /// message (never its whole body). A whole answer must arrive entirely within the
    /// timeout; for a stream, its head must, and then each wait for more.
    pub(super) async fn send(&self, call: Call) -> Result<Reply, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let res = self.clients.send(call, &self.name, deadline).await?;
        if res.status.is_success() {
            return Ok(res);
        }
        let status = res.status.as_u16();
        let retry_after = res
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok());
        let soon = tokio::time::Instant::now() + Duration::from_secs(5);
        let text = res
            .bytes_by(&self.name, soon.min(deadline))
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut message = error_message(&text);
        // A provider may quote the key it was sent; it must not travel further.
        if self.has_key() && message.contains(self.key()) {
            message = message.replace(self.key(), "[key]");
        }
        Err(UpstreamError::Status {
            provider: self.name.clone(),
            status,
            message,
            retry_after,
        })
    }

    /// Reads a whole body.
    pub(super) async fn read(&self, res: Reply) -> Result<Bytes, UpstreamError> {
        res.bytes(&self.name).await
    }

    /// Reads a whole JSON body.
    pub(super) async fn json(&self, res: Reply) -> Result<Value, UpstreamError> {
        let bytes = self.read(res).await?;
        serde_json::from_slice(&bytes).map_err(|e| UpstreamError::garbage(&self.name, e))
    }

    /// Downloads a file the provider points at (a generated image).
    pub(super) async fn download(&self, url: &str) -> Result<(Vec<u8>, String), UpstreamError> {
        let res = self.send(self.get(url)).await?;
        let media = res
            .header("content-type")
            .unwrap_or("image/png")
            .to_string();
        let bytes = self.read(res).await?;
        Ok((bytes.to_vec(), media))
    }

    /// A chat completion, whole or streamed.
    pub async fn chat(
        &self,
        model: &str,
        req: &ChatRequest,
        max_tokens: u32,
    ) -> Result<ChatOutput, UpstreamError> {
        match self.kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                openai::chat(self, model, req).await
            }
            ProviderKind::Anthropic => anthropic::chat(self, model, req, max_tokens).await,
            ProviderKind::Gemini => gemini::chat(self, model, req, max_tokens).await,
            ProviderKind::Bfl => Err(UpstreamError::Unsupported(format!(
                "{} (bfl) makes images only; pick a chat model",
                self.name
            ))),
        }
    }

    /// Generates images.
    pub async fn images(
        &self,
        model: &str,
        req: &ImageRequest,
    ) -> Result<Vec<Image>, UpstreamError> {
        match self.kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                openai::images(self, model, req).await
            }
            ProviderKind::Gemini => gemini::images(self, model, req).await,
            ProviderKind::Bfl => bfl::images(self, model, req).await,
            ProviderKind::Anthropic => Err(UpstreamError::Unsupported(format!(
                "{} (anthropic) does not make images; pick an image model",
                self.name
            ))),
        }
    }

    /// Checks that the endpoint answers and accepts the key, with a cheap listing call.
    pub async fn test(&self) -> Result<(), UpstreamError> {
        let req = match self.kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                openai::auth(self, self.get(&format!("{}/models", self.base_url)))
            }
            ProviderKind::Anthropic => {
                anthropic::auth(self, self.get(&format!("{}/v1/models", self.base_url)))
            }
            ProviderKind::Gemini => {
                gemini::auth(self, self.get(&format!("{}/v1beta/models", self.base_url)))
            }
            ProviderKind::Bfl => {
                bfl::auth(self, self.get(&format!("{}/v1/credits", self.base_url)))
            }
        };
        self.send(req).await.map(drop)
    }
}

/// The human part of a provider's error body, cut short; never the whole body.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/message"))
                .or_else(|| v.pointer("/detail"))
                .or_else(|| v.get("error"))
        })
        .and_then(Value::as_str)
        .unwrap_or("no readable error message");
    let mut msg: String = msg.chars().filter(|c| !c.is_control()).take(300).collect();
    if msg.is_empty() {
        msg.push_str("no readable error message");
    }
    msg
}

/// Splits a server-sent event stream into the `data` of each event. An event with one
/// `data` line (nearly all) is a slice of what was received, not a copy.
pub(super) fn sse_data(conn_name: String, res: Reply) -> SseData {
    SseData {
        body: res.body_stream(&conn_name),
        buf: BytesMut::new(),
        ready: std::collections::VecDeque::new(),
        name: conn_name,
        done: false,
    }
}

/// The stream [`sse_data`] makes: polled in place, with no future built per event.
pub(super) struct SseData {
    body: Body,
    /// The start of an event not yet whole.
    buf: BytesMut,
    /// Events taken from a piece and not yet given out.
    ready: std::collections::VecDeque<Bytes>,
    name: String,
    done: bool,
}

impl futures_core::Stream for SseData {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let s = self.get_mut();
        loop {
            if let Some(d) = s.ready.pop_front() {
                return Poll::Ready(Some(Ok(d)));
            }
            if s.done {
                return Poll::Ready(None);
            }
            match s.body.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => {
                    // Whole events are slices of what came (after what was left over,
                    // if anything was); only a trailing part event is copied.
                    let mut bytes = if s.buf.is_empty() {
                        bytes
                    } else {
                        s.buf.extend_from_slice(&bytes);
                        s.buf.split().freeze()
                    };
                    while let Some(event) = take_event(&mut bytes) {
                        if let Some(data) = event_data(event) {
                            s.ready.push_back(data);
                        }
                    }
                    s.buf.extend_from_slice(&bytes);
                    if s.buf.len() > 4 << 20 {
                        s.done = true;
                        let err = UpstreamError::garbage(&s.name, "an event over 4 MiB");
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    s.done = true;
                    let err = match e {
                        UpstreamError::Timeout(_) => e,
                        _ => UpstreamError::garbage(&s.name, "the connection broke mid-stream"),
                    };
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    s.done = true;
                    if let Some(data) = event_data(s.buf.split().freeze()) {
                        s.ready.push_back(data);
                    }
                }
            }
        }
    }
}

/// Where the first event of `buf` ends: a blank line, `\n\n` or `\r\n\r\n`
/// (position, length).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(p) = memchr::memchr(b'\n', &buf[from..]) {
        let i = from + p;
        if buf.get(i + 1) == Some(&b'\n') {
            return Some((i, 2));
        }
        if i >= 1 && buf[i - 1] == b'\r' && buf.get(i + 1..i + 3) == Some(b"\r\n") {
            return Some((i - 1, 4));
        }
        from = i + 1;
    }
    None
}

/// Takes the first whole event off `buf`.
fn take_event(buf: &mut Bytes) -> Option<Bytes> {
    let (at, len) = event_end(buf)?;
    let event = buf.split_to(at);
    buf.advance(len);
    Some(event)
}

/// The `data` of an event: its `data:` lines joined by newlines. One line (nearly every
/// event) is a slice of `event`; only several are copied, joined.
fn event_data(event: Bytes) -> Option<Bytes> {
    let mut first: Option<std::ops::Range<usize>> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut start = 0;
    while start < event.len() {
        let end = memchr::memchr(b'\n', &event[start..]).map_or(event.len(), |p| start + p);
        let line_end = if end > start && event[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        if event[start..line_end].starts_with(b"data:") {
            let mut from = start + 5;
            if event.get(from) == Some(&b' ') && from < line_end {
                from += 1;
            }
            match (&first, &mut joined) {
                (None, _) => first = Some(from..line_end),
                (Some(one), None) => {
                    let mut all = event[one.clone()].to_vec();
                    all.push(b'\n');
                    all.extend_from_slice(&event[from..line_end]);
                    joined = Some(all);
                }
                (Some(_), Some(all)) => {
                    all.push(b'\n');
                    all.extend_from_slice(&event[from..line_end]);
                }
            }
        }
        start = end + 1;
    }
    match (first, joined) {
        (_, Some(all)) => Some(all.into()),
        (Some(one), None) => Some(event.slice(one)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_of_either_ending() {
        let text: &'static [u8] =
            b"event: x\ndata: {\"a\":1}\n\ndata: two\r\n\r\ndata:x\ndata: y\r\n\n: note\n\ndata: par";
        let mut buf = Bytes::from_static(text);
        let mut data = || take_event(&mut buf).map(event_data);
        assert_eq!(data(), Some(Some(Bytes::from_static(b"{\"a\":1}"))));
        assert_eq!(data(), Some(Some(Bytes::from_static(b"two"))));
        assert_eq!(data(), Some(Some(Bytes::from_static(b"x\ny"))));
        // A comment is an event with no data.
        assert_eq!(data(), Some(None));
        assert_eq!(data(), None);
        assert_eq!(&buf[..], b"data: par");
        assert_eq!(
            event_data(Bytes::from_static(b"data:a\ndata: b\r\ndata:c")),
            Some(Bytes::from_static(b"a\nb\nc"))
        );
        assert_eq!(event_data(Bytes::from_static(b"data:")), Some(Bytes::new()));
        assert_eq!(
            event_data(Bytes::from_static(b"data: ")),
            Some(Bytes::new())
        );
    }

    #[test]
    fn breaker_opens_after_failures_and_closes_on_success() {
        let b = Breaker::default();
        b.failed(1000, 2, 500);
        assert!(b.closed(1000));
        b.failed(1000, 2, 500);
        assert!(!b.closed(1200));
        assert!(b.closed(1500));
        b.succeeded();
        assert!(b.closed(1000));
    }

    #[test]
    fn provider_error_messages_are_cut_and_never_the_raw_body() {
        assert_eq!(
            error_message(r#"{"error":{"message":"Rate limit reached"}}"#),
            "Rate limit reached"
        );
        assert_eq!(
            error_message("<html>oops</html>"),
            "no readable error message"
        );
        assert_eq!(
            error_message(&format!(r#"{{"message":"{}"}}"#, "x".repeat(999))).len(),
            300
        );
    }
}

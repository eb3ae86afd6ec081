//! HTTP/1.1 connections to providers, driven by the task that makes the call.
//!
//! A request is written in one piece; the answer's head is read and parsed
//! (`httparse`) in the caller's task, and its body is read from the socket only when
//! the caller asks for the next piece. No task per connection and no channel sits
//! between the socket and the gateway: a proxied answer costs the reads and writes it
//! needs and nothing else, and a streamed answer's events are handed over as they are
//! read. A connection whose answer was read to its end goes back to its lane's pool
//! of idle connections; one that was not (the caller stopped reading, the answer had
//! no length, the server said `close`) is dropped, which closes it.

use crate::http::net::{Allowlist, Unreached};
use bytes::{Buf, Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{Method, StatusCode, Uri};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// The longest head of an answer read.
const MAX_HEAD: usize = 64 << 10;
/// The longest chunk-size or trailer line of a chunked answer.
const MAX_LINE: usize = 8 << 10;
/// How long an idle connection is kept for reuse.
const IDLE_FOR: Duration = Duration::from_secs(90);
/// How long connecting to one of a host's addresses may take while others are left.
const PER_ADDRESS: Duration = Duration::from_secs(2);
/// How many idle connections a lane keeps; the oldest go first.
const MAX_IDLE: usize = 128;

/// A connection's transport.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection to one origin, with what was read from it and not yet used.
pub(super) struct Conn {
    io: Io,
    buf: BytesMut,
    tls: bool,
    authority: Authority,
}

impl Conn {
    /// Opens a connection to `uri`'s origin: TCP (without Nagle's delay), then TLS for
    /// `https`. With `reach`, only to public addresses and those it allows (a person's
    /// own connection), checked here at every connect and not only when the connection
    /// was added, as the name may resolve elsewhere by now. The caller bounds how long
    /// this may take.
    pub async fn open(
        uri: &Uri,
        tls: &tokio_rustls::TlsConnector,
        reach: Option<&Allowlist>,
    ) -> Result<Conn, Failed> {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return Err(Failed::Broken("its URL is neither http nor https".into())),
        };
        let authority = uri
            .authority()
            .ok_or(Failed::Broken("its URL has no host".into()))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<_> = match reach {
            Some(allowed) => allowed.resolve(host, port).await.map_err(|e| match e {
                Unreached::Lookup(why) => Failed::Broken(why),
                Unreached::Refused(why) => Failed::Refused(why),
            })?,
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| Failed::Broken(format!("cannot look up {host}: {e}")))?
                .collect(),
        };
        let tcp = connect_any(&addrs, PER_ADDRESS).await.map_err(|why| {
            Failed::Broken(why.unwrap_or_else(|| format!("{host} has no address")))
        })?;
        tcp.set_nodelay(true)
            .map_err(|e| Failed::Broken(e.to_string()))?;
        let io = if https {
            let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                Failed::Broken(format!(
                    "{host} cannot be checked against a certificate: {e}"
                ))
            })?;
            let s = tls
                .connect(name, tcp)
                .await
                .map_err(|e| Failed::Broken(format!("TLS with {host} failed: {e}")))?;
            Io::Tls(Box::new(s))
        } else {
            Io::Plain(tcp)
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(8 << 10),
            tls: https,
            authority,
        })
    }

    fn serves(&self, uri: &Uri) -> bool {
        let https = uri.scheme().is_some_and(|s| *s == Scheme::HTTPS);
        self.tls == https && uri.authority() == Some(&self.authority)
    }

    /// Whether an idle connection still looks usable: nothing arrived while it sat in
    /// the pool. A server that closed it (or sent bytes nobody asked for) made it
    /// readable; the reactor's readiness says so without a system call, and only then
    /// is the socket asked.
    fn looks_open(&self) -> bool {
        let tcp = self.io.tcp();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of the answer into the buffer: `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(want.clamp(8 << 10, 1 << 20));
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, 0)).await
    }
}

/// A TCP connection to the first of `addrs` that takes one, each tried in turn. An
/// address that swallows the attempt (a blackholed IPv6 route) must not use up the
/// caller's whole connect timeout: while others are left, each gets `per_address`.
/// The error is the last attempt's (`None`: there was no address).
async fn connect_any(
    addrs: &[SocketAddr],
    per_address: Duration,
) -> Result<TcpStream, Option<String>> {
    let mut failure = None;
    for (i, &addr) in addrs.iter().enumerate() {
        let attempt = TcpStream::connect(addr);
        let done = if i + 1 < addrs.len() {
            tokio::time::timeout(per_address, attempt)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        } else {
            attempt.await
        };
        match done {
            Ok(s) => return Ok(s),
            Err(e) => failure = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    Err(failure)
}

/// Idle connections of one lane, newest last.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    conns: VecDeque<(Conn, Instant)>,
    /// Whether a task is sweeping this pool (see [`Pool::sweep`]).
    sweeping: bool,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest idle connection to `uri`'s origin that may still serve.
    pub fn take(&self, uri: &Uri) -> Option<Conn> {
        let mut idle = self.lock();
        let now = Instant::now();
        while let Some(at) = idle.conns.iter().rposition(|(c, _)| c.serves(uri)) {
            let (conn, since) = idle.conns.remove(at)?;
            if usable(&conn, since, now) {
                return Some(conn);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.lock();
        while idle
            .conns
            .front()
            .is_some_and(|(_, since)| idle.conns.len() >= MAX_IDLE || now - *since >= IDLE_FOR)
        {
            idle.conns.pop_front();
        }
        idle.conns.push_back((conn, now));
        // With no more calls, nothing else would close connections the server has
        // closed or that idled too long: each would hold a descriptor (in CLOSE_WAIT)
        // until the next call. A task on this thread's runtime sweeps them while the
        // pool has any.
        if !idle.sweeping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            idle.sweeping = true;
            runtime.spawn(sweeping(Arc::downgrade(self)));
        }
    }

    /// Closes the idle connections that idled too long or were closed by the server;
    /// whether any are left.
    fn sweep(&self, now: Instant) -> bool {
        let mut idle = self.lock();
        idle.conns.retain(|(conn, since)| usable(conn, *since, now));
        idle.sweeping = !idle.conns.is_empty();
        idle.sweeping
    }
}

/// Whether a connection idle since `since` may serve again at `now`: it has not idled
/// too long, and the server has not closed it.
fn usable(conn: &Conn, since: Instant, now: Instant) -> bool {
    now.saturating_duration_since(since) < IDLE_FOR && conn.looks_open()
}

/// How often a pool with idle connections is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

async fn sweeping(pool: std::sync::Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        match pool.upgrade() {
            Some(pool) if pool.sweep(Instant::now()) => {}
            _ => return,
        }
    }
}

/// How an exchange failed.
#[derive(Debug)]
pub(super) enum Failed {
    /// The request could not be written, so the server never had all of it. On a
    /// reused connection the server most likely closed it while it sat idle, and the
    /// request may go again on another. (A request that was written is never sent
    /// again here: the provider may have acted on it; the gateway's routing decides.)
    Unsent(String),
    /// The connection broke or closed before the whole head came, or what came is not
    /// HTTP (or could not be opened).
    Broken(String),
    /// The connection may not be opened: its host resolves to an address Easel does not
    /// reach on a person's behalf.
    Refused(String),
}

/// An answer's head, and its body still to read.
pub(super) struct Answer {
    pub head: Head,
    pub body: Incoming,
}

/// Writes `request` (a whole HTTP/1.1 request) on `conn` and reads the answer's head.
pub(super) async fn exchange(
    mut conn: Conn,
    request: &[u8],
    method: &Method,
    home: Arc<Pool>,
) -> Result<Answer, Failed> {
    let sent = async {
        conn.io.write_all(request).await?;
        conn.io.flush().await
    };
    sent.await
        .map_err(|e| Failed::Unsent(format!("cannot send the request: {e}")))?;
    loop {
        if !conn.buf.is_empty() {
            if let Some((used, parsed)) = parse_head(&conn.buf).map_err(Failed::Broken)? {
                let head = parsed.on(conn.buf.split_to(used).freeze());
                // 100 Continue and other interim answers: the real one follows.
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return head.into_answer(conn, method, home).map_err(Failed::Broken);
            }
            if conn.buf.len() > MAX_HEAD {
                return Err(Failed::Broken(format!(
                    "an answer head over {} KiB",
                    MAX_HEAD >> 10
                )));
            }
        }
        match conn.fill().await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(Failed::Broken(
                    "the connection closed without an answer".into(),
                ));
            }
            Ok(0) => return Err(Failed::Broken("the connection closed mid-head".into())),
            Ok(_) => {}
            Err(e) => return Err(Failed::Broken(e.to_string())),
        }
    }
}

/// An answer's head as it came: its text, and where each header's name and value
/// are in it. Nothing is copied or lower-cased for headers nobody asks for (a
/// provider sends twenty or so; Easel reads two at most).
pub(super) struct Head {
    pub status: StatusCode,
    /// HTTP/1.1 (rather than 1.0).
    eleven: bool,
    text: Bytes,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Head {
    /// The values of the header `name` (any case), in order.
    fn all<'h>(&'h self, name: &str) -> impl DoubleEndedIterator<Item = &'h [u8]> {
        self.fields
            .iter()
            .filter(move |(n, _)| self.text[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.text[v.clone()])
    }

    /// The first value of the header `name` (any case), as text.
    pub fn get<'h>(&'h self, name: &str) -> Option<&'h str> {
        self.all(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn has(&self, name: &str) -> bool {
        self.all(name).next().is_some()
    }
}

/// A head parsed in place: where its parts are in the text it was read from.
struct Parsed {
    status: StatusCode,
    eleven: bool,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Parsed {
    /// The head, holding `text`: the bytes it was parsed from, up to its end.
    fn on(self, text: Bytes) -> Head {
        Head {
            status: self.status,
            eleven: self.eleven,
            text,
            fields: self.fields,
        }
    }
}

/// The head at the start of `buf` and its length, or `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Parsed)>, String> {
    let mut few = [httparse::EMPTY_HEADER; 64];
    match parse_with(buf, &mut few) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut many = vec![httparse::EMPTY_HEADER; 1024];
            parse_with(buf, &mut many).map_err(|e| format!("an answer that is not HTTP ({e})"))
        }
        other => other.map_err(|e| format!("an answer that is not HTTP ({e})")),
    }
}

fn parse_with<'b>(
    buf: &'b [u8],
    storage: &mut [httparse::Header<'b>],
) -> Result<Option<(usize, Parsed)>, httparse::Error> {
    let mut res = httparse::Response::new(storage);
    let used = match res.parse(buf)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(used) => used,
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(httparse::Error::Status)?;
    // httparse lends each name and value as a slice of `buf`: where it starts there.
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    let fields = res
        .headers
        .iter()
        .map(|h| (at(h.name.as_bytes()), at(h.value)))
        .collect();
    Ok(Some((
        used,
        Parsed {
            status,
            eleven: res.version == Some(1),
            fields,
        },
    )))
}

impl Head {
    /// The answer, with its body framed by [`framing`].
    fn into_answer(self, conn: Conn, method: &Method, home: Arc<Pool>) -> Result<Answer, String> {
        let (framing, keep) = framing(&self, method)?;
        Ok(Answer {
            head: self,
            body: Incoming {
                conn: Some(conn),
                framing,
                keep,
                home,
            },
        })
    }
}

/// How the body after `head` ends (RFC 9112, section 6.3), and whether its connection
/// may serve another request after it.
fn framing(head: &Head, method: &Method) -> Result<(Framing, bool), String> {
    let tokens = |name| {
        head.all(name)
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
    };
    let keep = head.eleven && !tokens("connection").any(|t| t.eq_ignore_ascii_case(b"close"));
    if *method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), keep));
    }
    if head.has("transfer-encoding") {
        // With a content-length beside it, the message may be an attempt to smuggle
        // one past a proxy: read it by its transfer coding, and use the connection no more.
        let keep = keep && !head.has("content-length");
        return Ok(match tokens("transfer-encoding").next_back() {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => (Framing::Chunked(Chunk::Size), keep),
            _ => (Framing::Close, false),
        });
    }
    if !head.has("content-length") {
        return Ok((Framing::Close, false));
    }
    let mut lengths = tokens("content-length").map(|t| {
        std::str::from_utf8(t)
            .ok()
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
    });
    match lengths.next().flatten() {
        Some(n) if lengths.all(|l| l == Some(n)) => Ok((Framing::Length(n), keep)),
        _ => Err("an answer whose content-length is not one number".into()),
    }
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// With a chunk of size zero (and its trailers).
    Chunked(Chunk),
    /// When the server closes the connection.
    Close,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much of it left.
    Data(u64),
    /// At the line end after a chunk's data.
    DataEnd,
    /// After the last chunk, at a trailer line or the final empty line.
    Trailers,
}

/// An answer's body, read from its connection as the caller asks for it.
pub(super) struct Incoming {
    /// `None` once the body has ended (the connection went back to the pool or was
    /// dropped).
    conn: Option<Conn>,
    framing: Framing,
    /// Whether the connection may serve another request once this body has ended.
    keep: bool,
    home: Arc<Pool>,
}

impl Incoming {
    /// The next piece of the body; `None` at its end. An error means the connection
    /// broke or the body is not framed as its head said.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, String>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match self.framing {
                Framing::Length(0) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if let Some(piece) = take(&mut conn.buf, left) {
                        let left = left - piece.len() as u64;
                        self.framing = Framing::Length(left);
                        if left == 0 {
                            self.end();
                        }
                        return Poll::Ready(Some(Ok(piece)));
                    }
                    usize::try_from(left).unwrap_or(usize::MAX)
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                    }
                    0
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    if let Some(piece) = take(&mut conn.buf, left) {
                        let left = left - piece.len() as u64;
                        self.framing = Framing::Chunked(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                        return Poll::Ready(Some(Ok(piece)));
                    }
                    usize::try_from(left).unwrap_or(usize::MAX)
                }
                Framing::Chunked(at) => match chunk_step(&mut conn.buf, at) {
                    Err(why) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(why)));
                    }
                    Ok(Some(Some(next))) => {
                        self.framing = Framing::Chunked(next);
                        continue;
                    }
                    Ok(Some(None)) => {
                        self.end();
                        return Poll::Ready(None);
                    }
                    Ok(None) => 0,
                },
            };
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx, want)) {
                Ok(0) if self.framing == Framing::Close => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err("the connection closed mid-answer".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.to_string())));
                }
            }
        }
    }

    /// The body has ended: its connection goes back to the pool if it may serve
    /// another request and nothing past the body arrived on it.
    fn end(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep
            && conn.buf.is_empty()
        {
            self.home.put(conn);
        }
    }
}

/// Most of an answer a caller may leave unread and still have its connection reused.
const MAX_LEFT: usize = 64 << 10;

impl Drop for Incoming {
    /// A caller that stopped at the end of what it needed (an event stream's `[DONE]`)
    /// leaves the body's last bytes unread, typically a chunked body's closing line.
    /// If the rest is at hand (read already, or waiting in the socket), it is read here
    /// and the connection goes back to the pool; anything more and it is closed.
    fn drop(&mut self) {
        let far = match self.framing {
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => left > MAX_LEFT as u64,
            _ => false,
        };
        if !self.keep || far {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut left = 0;
        while left <= MAX_LEFT {
            match self.poll_data(&mut cx) {
                Poll::Ready(Some(Ok(piece))) => left += piece.len(),
                // Ended (and pooled), broken, or not at hand: done either way.
                _ => return,
            }
        }
    }
}

/// Up to `left` bytes from the front of `buf`, if it has any.
fn take(buf: &mut BytesMut, left: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
    Some(buf.split_to(n).freeze())
}

/// One step of a chunked body's framing at `at` (not inside data): `Ok(None)` when
/// more must be read first, `Ok(Some(None))` at the body's end, else where it is next.
fn chunk_step(buf: &mut BytesMut, at: Chunk) -> Result<Option<Option<Chunk>>, String> {
    match at {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                Ok(Some(Some(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                })))
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_LINE => Ok(None),
            _ => Err("a chunked answer with a broken chunk size".into()),
        },
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(None);
            }
            if &buf[..2] != b"\r\n" {
                return Err("a chunk longer than its size".into());
            }
            buf.advance(2);
            Ok(Some(Some(Chunk::Size)))
        }
        Chunk::Trailers => match memchr::memmem::find(buf, b"\r\n") {
            Some(0) => {
                buf.advance(2);
                Ok(Some(None))
            }
            Some(line) => {
                buf.advance(line + 2);
                Ok(Some(Some(Chunk::Trailers)))
            }
            None if buf.len() <= MAX_LINE => Ok(None),
            None => Err("a chunked answer with a trailer line too long".into()),
        },
        Chunk::Data(_) => Ok(Some(Some(at))),
    }
}

/// `req` as HTTP/1.1 bytes: the request line, `host`, its headers, `content-length`
/// when it has a body or its method usually has one, and the body.
pub(super) fn encode(req: &http::Request<Bytes>) -> Result<Vec<u8>, String> {
    let uri = req.uri();
    let authority = uri.authority().ok_or("its URL has no host")?;
    // Userinfo (`user:pass@`) is never sent in the host header.
    let host = authority.as_str().rsplit('@').next().unwrap_or_default();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let body = req.body();
    let mut out = Vec::with_capacity(256 + body.len());
    for part in [
        req.method().as_str(),
        " ",
        target,
        " HTTP/1.1\r\nhost: ",
        host,
        "\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodied = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if bodied || !body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_of(bytes: &[u8]) -> (Head, usize) {
        let (used, parsed) = parse_head(bytes).unwrap().expect("a whole head");
        (parsed.on(Bytes::copy_from_slice(&bytes[..used])), used)
    }

    /// Reads a chunked body held in `buf` through the framing, as `poll_data` does.
    fn dechunk(mut buf: BytesMut) -> Result<(Vec<u8>, BytesMut), String> {
        let mut at = Chunk::Size;
        let mut out = Vec::new();
        loop {
            match at {
                Chunk::Data(left) => {
                    let piece = take(&mut buf, left).ok_or("cut short")?;
                    let left = left - piece.len() as u64;
                    out.extend_from_slice(&piece);
                    at = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                }
                _ => match chunk_step(&mut buf, at)? {
                    None => return Err("cut short".into()),
                    Some(None) => return Ok((out, buf)),
                    Some(Some(next)) => at = next,
                },
            }
        }
    }

    #[tokio::test]
    async fn connecting_moves_on_from_a_refusing_or_silent_address() {
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        // An address that refuses: a port nothing listens on any more.
        let refusing = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        // An address that swallows the attempt: a listener that never accepts, whose
        // queue is full, so the kernel drops further handshakes unanswered.
        let silent = tokio::net::TcpSocket::new_v4().unwrap();
        silent.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let silent = silent.listen(1).unwrap();
        let mut queued = Vec::new();
        loop {
            let attempt = tokio::net::TcpStream::connect(silent_addr);
            match tokio::time::timeout(Duration::from_millis(300), attempt).await {
                Ok(Ok(s)) => queued.push(s),
                _ => break,
            }
            assert!(queued.len() < 64, "the listener's queue never filled");
        }
        let per = Duration::from_millis(300);

        let s = connect_any(&[refusing, good_addr], per).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), good_addr);
        let began = Instant::now();
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            connect_any(&[silent_addr, good_addr], per),
        )
        .await
        .expect("not stuck on the silent address")
        .unwrap();
        assert_eq!(s.peer_addr().unwrap(), good_addr);
        let waited = began.elapsed();
        assert!(
            waited >= per && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        let why = connect_any(&[refusing], per)
            .await
            .unwrap_err()
            .expect("the last attempt's error");
        assert!(why.contains(&refusing.to_string()), "{why}");
        assert_eq!(connect_any(&[], per).await.unwrap_err(), None);
        drop((good, silent, queued));
    }

    #[test]
    fn chunked_bodies_are_read_with_extensions_and_trailers_and_broken_ones_refused() {
        let (body, rest) = dechunk(BytesMut::from(
            &b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT"[..],
        ))
        .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&rest[..], b"NEXT", "nothing past the body is taken");
        assert!(dechunk(BytesMut::from(&b"5\r\nhello!!\r\n0\r\n\r\n"[..])).is_err());
        assert!(dechunk(BytesMut::from(&b"zz\r\nhello\r\n0\r\n\r\n"[..])).is_err());
        assert_eq!(
            dechunk(BytesMut::from(&b"5\r\nhel"[..])).unwrap_err(),
            "cut short"
        );
    }

    #[test]
    fn heads_are_parsed_and_framed_as_rfc_9112_says() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let (head, used) = answer_of(whole);
        assert_eq!(&whole[used..], b"hello", "the head ends at its empty line");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.get("x-a"), Some("b"));
        assert_eq!(head.get("content-length"), Some("5"), "any case");
        assert_eq!(head.get("x-none"), None);
        assert!(head.eleven);
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        // No reason phrase, or an empty one, is still an answer.
        for bare in [&b"HTTP/1.1 200\r\n\r\n"[..], b"HTTP/1.1 429 \r\n\r\n"] {
            assert!(answer_of(bare).0.status.as_u16() >= 200, "{bare:?}");
        }
        // More headers than the stack holds are still read.
        let mut many = b"HTTP/1.1 204 No Content\r\n".to_vec();
        for i in 0..200 {
            many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let many = answer_of(&many).0;
        assert_eq!(many.fields.len(), 200);
        assert_eq!(many.get("X-H199"), Some("v"));
    }

    #[test]
    fn bodies_end_where_their_head_says_and_only_clean_ones_keep_the_connection() {
        let framed = |head: &str, method: Method| {
            let text = format!("{head}\r\n\r\n");
            framing(&answer_of(text.as_bytes()).0, &method)
        };
        let post = || Method::POST;
        let ok = "HTTP/1.1 200 OK";
        assert_eq!(
            framed(&format!("{ok}\r\ncontent-length: 12"), post()),
            Ok((Framing::Length(12), true))
        );
        assert_eq!(
            framed(
                &format!("{ok}\r\ncontent-length: 12\r\ncontent-length: 12"),
                post()
            ),
            Ok((Framing::Length(12), true))
        );
        for bad in ["12, 13", "-1", "0x10", "", "1 2"] {
            assert!(
                framed(&format!("{ok}\r\ncontent-length: {bad}"), post()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            framed(&format!("{ok}\r\ntransfer-encoding: gzip, Chunked"), post()),
            Ok((Framing::Chunked(Chunk::Size), true))
        );
        assert_eq!(
            framed(
                &format!("{ok}\r\ntransfer-encoding: chunked\r\ncontent-length: 3"),
                post()
            ),
            Ok((Framing::Chunked(Chunk::Size), false)),
            "both: read by the coding, then closed"
        );
        assert_eq!(
            framed(&format!("{ok}\r\ntransfer-encoding: gzip"), post()),
            Ok((Framing::Close, false))
        );
        assert_eq!(framed(ok, post()), Ok((Framing::Close, false)));
        assert_eq!(
            framed(
                &format!("{ok}\r\ncontent-length: 3\r\nconnection: keep-alive, Close"),
                post()
            ),
            Ok((Framing::Length(3), false))
        );
        assert_eq!(
            framed("HTTP/1.0 200 OK\r\ncontent-length: 3", post()),
            Ok((Framing::Length(3), false))
        );
        assert_eq!(
            framed(&format!("{ok}\r\ncontent-length: 3"), Method::HEAD),
            Ok((Framing::Length(0), true))
        );
        assert_eq!(
            framed("HTTP/1.1 204 No Content", post()),
            Ok((Framing::Length(0), true))
        );
    }

    /// A listener on 127.0.0.1, its URL, and a TLS connector (plain HTTP is used).
    async fn listening() -> (tokio::net::TcpListener, Uri, tokio_rustls::TlsConnector) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        (
            listener,
            uri,
            tokio_rustls::TlsConnector::from(Arc::new(config)),
        )
    }

    #[tokio::test]
    async fn a_request_the_server_cannot_have_read_is_unsent_and_one_it_took_is_not() {
        use tokio::io::AsyncReadExt;
        let (listener, uri, tls) = listening().await;
        let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let home = Arc::new(Pool::default());

        // The server resets the connection before the request: writing it fails.
        let conn = Conn::open(&uri, &tls, None).await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        sock.set_zero_linger().unwrap();
        drop(sock);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!conn.looks_open(), "the reset was seen while idle");
        let failed = exchange(conn, request, &Method::GET, home.clone())
            .await
            .err();
        assert!(matches!(failed, Some(Failed::Unsent(_))), "{failed:?}");

        // The server reads the request and closes: it may have acted on it.
        let conn = Conn::open(&uri, &tls, None).await.unwrap();
        assert!(conn.looks_open());
        let (mut sock, _) = listener.accept().await.unwrap();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            let _ = sock.read(&mut buf).await;
        });
        let failed = exchange(conn, request, &Method::GET, home).await.err();
        assert!(matches!(failed, Some(Failed::Broken(_))), "{failed:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn idle_connections_are_swept_when_closed_or_too_old_and_the_sweeper_stops_when_none_are_left()
     {
        let (listener, uri, tls) = listening().await;
        let pool = Arc::new(Pool::default());
        let mut servers = Vec::new();
        for _ in 0..2 {
            let conn = Conn::open(&uri, &tls, None).await.unwrap();
            servers.push(listener.accept().await.unwrap().0);
            pool.put(conn);
        }
        assert!(pool.lock().sweeping, "putting one starts the sweeper");
        assert!(pool.sweep(Instant::now()));
        assert_eq!(pool.lock().conns.len(), 2, "both open and fresh");

        // The server closes the older one.
        drop(servers.remove(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.sweep(Instant::now()));
        assert_eq!(pool.lock().conns.len(), 1);
        // The other idles past its time.
        assert!(!pool.sweep(Instant::now() + IDLE_FOR));
        assert!(pool.lock().conns.is_empty());
        assert!(!pool.lock().sweeping, "nothing left: the sweeper stops");
        assert!(pool.take(&uri).is_none());
    }
}

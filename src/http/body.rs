//! Response bodies made on a blocking thread (a ZIP, a sealed file being opened) and
//! handed to the client as they are made, through a small bounded channel, so nothing
//! is held whole in memory and a client that leaves stops the work.

use bytes::Bytes;
use std::io::Write;

/// One piece of a streamed body.
pub type Item = Result<Bytes, std::io::Error>;

const CHUNK: usize = 64 * 1024;

/// A [`Write`] that hands full chunks to the response; writing fails once the client
/// is gone, which ends the work that writes.
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Item>,
    buf: Vec<u8>,
}

/// Cuts a streamed body off with an error, so a failure part way does not look like a
/// whole download.
#[derive(Clone)]
pub struct Failer(tokio::sync::mpsc::Sender<Item>);

impl Failer {
    /// Ends the body with `message` as its error.
    pub async fn fail(&self, message: String) {
        let _ = self.0.send(Err(std::io::Error::other(message))).await;
    }

    /// [`Failer::fail`] from a blocking thread.
    pub fn fail_blocking(&self, message: String) {
        let _ = self.0.blocking_send(Err(std::io::Error::other(message)));
    }
}

impl ChannelWriter {
    /// A writer and the body its writes become; up to `ahead` pieces wait for the
    /// client (more lets the writer keep working while the network is busy).
    pub fn new(
        ahead: usize,
    ) -> (
        ChannelWriter,
        impl futures_core::Stream<Item = Item> + 'static,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (
            ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            },
            body,
        )
    }

    /// What cuts this body off.
    pub fn failer(&self) -> Failer {
        Failer(self.tx.clone())
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download was cancelled")
        })
    }
}

impl ChannelWriter {
    /// Hands on a whole piece the caller owns, without copying it (after what is
    /// buffered).
    pub fn send_owned(&mut self, piece: Vec<u8>) -> std::io::Result<()> {
        self.send()?;
        if piece.is_empty() {
            return Ok(());
        }
        self.buf = piece;
        self.send()
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() && data.len() >= CHUNK {
            // A whole chunk or more: hand it on without copying it into the buffer.
            self.buf = data.to_vec();
            self.send()?;
            return Ok(data.len());
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK);
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Runs `make` on a blocking thread and streams what it writes, with up to `ahead`
/// pieces of 64 KiB made ahead of the client; an error part way cuts the body off.
pub fn from_writer<F>(ahead: usize, make: F) -> impl futures_core::Stream<Item = Item> + 'static
where
    F: FnOnce(&mut ChannelWriter) -> std::io::Result<()> + Send + 'static,
{
    let (mut writer, body) = ChannelWriter::new(ahead);
    let failer = writer.failer();
    tokio::task::spawn_blocking(move || {
        let done = make(&mut writer).and_then(|()| writer.flush());
        if let Err(e) = done
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            tracing::warn!(error = %e, "a download failed part way");
            failer.fail_blocking(format!("the download failed: {e}"));
        }
    });
    body
}

/// A request body read whole. Unlike `web::Bytes` it keeps no fixed 8 KiB buffer: a
/// body that arrives in one piece (most do) is handed on as received, without a copy.
/// The size limit is the middleware's ([`super::middleware::observe`]), which also
/// undoes a `Content-Encoding` before counting.
pub struct RequestBody(pub Bytes);

impl actix_web::FromRequest for RequestBody {
    type Error = super::ApiError;
    type Future = ReadBody;

    fn from_request(
        _req: &actix_web::HttpRequest,
        payload: &mut actix_web::dev::Payload,
    ) -> Self::Future {
        RequestBody::read(payload.take())
    }
}

impl RequestBody {
    /// Reads `payload` whole (for a handler that looks at the request before choosing
    /// how to read its body).
    pub fn read(payload: actix_web::dev::Payload) -> ReadBody {
        ReadBody {
            payload,
            first: None,
            joined: None,
        }
    }
}

/// Reading a [`RequestBody`].
pub struct ReadBody {
    payload: actix_web::dev::Payload,
    first: Option<Bytes>,
    joined: Option<bytes::BytesMut>,
}

impl std::future::Future for ReadBody {
    type Output = Result<RequestBody, super::ApiError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use futures_core::Stream;
        use std::task::Poll;
        let this = &mut *self;
        loop {
            let chunk = match std::pin::Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let whole = match (this.joined.take(), this.first.take()) {
                        (Some(joined), _) => joined.freeze(),
                        (None, first) => first.unwrap_or_default(),
                    };
                    return Poll::Ready(Ok(RequestBody(whole)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(unreadable(e))),
                Poll::Ready(Some(Ok(chunk))) => chunk,
            };
            if let Some(joined) = &mut this.joined {
                joined.extend_from_slice(&chunk);
            } else if let Some(first) = this.first.take() {
                let mut joined = bytes::BytesMut::with_capacity(first.len() + chunk.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                this.joined = Some(joined);
            } else {
                this.first = Some(chunk);
            }
        }
    }
}

/// The error for a body that could not be read. Past the limit, the middleware answers
/// its own 413 (with the limit) whatever this says.
fn unreadable(e: actix_web::error::PayloadError) -> super::ApiError {
    use actix_web::error::PayloadError;
    use actix_web::http::StatusCode;
    match e {
        PayloadError::Overflow => super::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the limit; send a smaller body",
        ),
        other => super::ApiError::bad_request(
            "invalid_body",
            format!("the request body could not be read: {other}"),
        ),
    }
}

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

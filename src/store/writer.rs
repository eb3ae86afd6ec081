//! The single writer: group commit.
//!
//! Callers queue closures; the writer thread takes everything queued (up to the batch
//! limit), runs it in one write transaction, commits once (fsync), then answers every
//! caller. A closure that fails is dropped from the batch and the rest is run again
//! in a fresh transaction, so one caller's error never leaks into another's commit.

use super::{StoreError, WriteTx};
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

type Reply = Box<dyn Any + Send>;
type RunFn = Box<dyn FnMut(&WriteTx<'_>) -> (bool, Reply) + Send>;

struct Op {
    run: RunFn,
    reply: oneshot::Sender<Result<Reply, Arc<StoreError>>>,
}

enum Msg {
    Op(Op),
    Shutdown(oneshot::Sender<()>),
}

/// Upper bounds of the batch-size histogram buckets.
pub const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Counters of the writer, read by `/metrics`.
#[derive(Default)]
pub struct WriterStats {
    /// Durable commits made.
    pub commits: AtomicU64,
    /// Writes acknowledged.
    pub writes: AtomicU64,
    /// Writes whose closure failed and were dropped from their batch.
    pub rejected: AtomicU64,
    /// Commits by batch size, cumulative per bucket of [`BATCH_BUCKETS`], plus `+Inf`.
    pub batch_buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
    /// Sum of batch sizes.
    pub batch_sum: AtomicU64,
}

impl WriterStats {
    fn observe_batch(&self, size: usize) {
        let size = size as u64;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(size, Ordering::Relaxed);
        self.batch_sum.fetch_add(size, Ordering::Relaxed);
        let idx = BATCH_BUCKETS
            .iter()
            .position(|b| size <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_buckets[idx].fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) struct Writer {
    tx: mpsc::Sender<Msg>,
    stats: Arc<WriterStats>,
}

impl Writer {
    pub(super) fn start(db: Arc<redb::Database>, max_batch: usize) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("easel-writer".into())
            .spawn(move || run(db, rx, max_batch.max(1), &thread_stats))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { tx, stats })
    }

    pub(super) fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub(super) async fn submit<T, E, F>(&self, mut op: F) -> Result<T, E>
    where
        F: FnMut(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run: RunFn = Box::new(move |w| {
            let r = op(w);
            (r.is_ok(), Box::new(r) as Reply)
        });
        self.tx
            .send(Msg::Op(Op { run, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        match answer.await {
            Ok(Ok(boxed)) => match boxed.downcast::<Result<T, E>>() {
                Ok(r) => *r,
                Err(_) => Err(StoreError::Db("writer answered with the wrong type".into()).into()),
            },
            Ok(Err(e)) => Err(E::from(StoreError::Db(e.to_string()))),
            Err(_) => Err(StoreError::Closed.into()),
        }
    }

    pub(super) async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn run(
    db: Arc<redb::Database>,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    stats: &WriterStats,
) {
    let mut stop: Option<oneshot::Sender<()>> = None;
    while stop.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = Vec::new();
        match first {
            Msg::Op(op) => batch.push(op),
            Msg::Shutdown(done) => stop = Some(done),
        }
        while stop.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => batch.push(op),
                Ok(Msg::Shutdown(done)) => stop = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&db, batch, stats);
        }
    }
    // Anything still queued behind a shutdown is answered with `Closed` when dropped.
    rx.close();
    drop(db);
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

fn commit_batch(db: &redb::Database, mut pending: Vec<Op>, stats: &WriterStats) {
    loop {
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => return fail_all(pending, StoreError::from(e)),
        };
        let mut outputs = Vec::with_capacity(pending.len());
        let mut failed = None;
        {
            let w = WriteTx { txn: &txn };
            for (i, op) in pending.iter_mut().enumerate() {
                match catch_unwind(AssertUnwindSafe(|| (op.run)(&w))) {
                    Ok((true, out)) => outputs.push(out),
                    Ok((false, out)) => {
                        failed = Some((i, Ok(out)));
                        break;
                    }
                    Err(_) => {
                        let e = StoreError::Db("a write panicked and was rolled back".into());
                        failed = Some((i, Err(Arc::new(e))));
                        break;
                    }
                }
            }
        }
        if let Some((i, answer)) = failed {
            let _ = txn.abort();
            let op = pending.remove(i);
            let _ = op.reply.send(answer);
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            if pending.is_empty() {
                return;
            }
            continue;
        }
        match txn.commit() {
            Ok(()) => {
                stats.observe_batch(pending.len());
                for (op, out) in pending.into_iter().zip(outputs) {
                    let _ = op.reply.send(Ok(out));
                }
            }
            Err(e) => fail_all(pending, StoreError::from(e)),
        }
        return;
    }
}

fn fail_all(ops: Vec<Op>, e: StoreError) {
    tracing::error!(error = %e, writes = ops.len(), "a group commit failed; its writes were not stored");
    let e = Arc::new(e);
    for op in ops {
        let _ = op.reply.send(Err(e.clone()));
    }
}

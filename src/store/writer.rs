//! The single writer: group commit.
//!
//! Callers queue closures; the writer thread takes everything queued (up to the batch
//! limit), runs it in one write transaction, commits once (fsync), then answers every
//! caller. A closure that fails is dropped from the batch and the rest is run again
//! in a fresh transaction, so one caller's error never leaks into another's commit.
//!
//! A background write (nobody is waiting on it: a request's usage record and charge)
//! lets the writer hold a batch open for up to `background_delay` so that more writes
//! share its commit. Any waited-for write that arrives meanwhile is committed at once,
//! together with the held ones.

use super::{StoreError, WriteTx};
use std::any::Any;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Reply = Box<dyn Any + Send>;
type RunFn = Box<dyn FnMut(&WriteTx<'_>) -> (bool, Reply) + Send>;
type Outcome = Result<Reply, Arc<StoreError>>;

struct Op {
    run: RunFn,
    reply: Answer,
    background: bool,
}

/// How a write's outcome reaches its caller.
enum Answer {
    /// A task awaits it.
    Wait(oneshot::Sender<Outcome>),
    /// Nobody awaits it: the writer thread calls this once the outcome is known, so a
    /// write costs its caller no task and no thread wake-up.
    Call(Box<dyn FnOnce(Outcome) + Send>),
}

impl Answer {
    fn send(self, outcome: Outcome) {
        match self {
            Answer::Wait(tx) => {
                let _ = tx.send(outcome);
            }
            Answer::Call(done) => {
                // A panicking callback must not take the writer thread with it.
                if catch_unwind(AssertUnwindSafe(|| done(outcome))).is_err() {
                    tracing::error!("a write's completion callback panicked");
                }
            }
        }
    }
}

/// The typed result of a write, out of the writer's type-erased answer.
fn typed<T, E>(outcome: Outcome) -> Result<T, E>
where
    T: 'static,
    E: From<StoreError> + 'static,
{
    match outcome {
        Ok(boxed) => match boxed.downcast::<Result<T, E>>() {
            Ok(r) => *r,
            Err(_) => Err(StoreError::Db("writer answered with the wrong type".into()).into()),
        },
        Err(e) => Err(E::from(match Arc::try_unwrap(e) {
            Ok(e) => e,
            Err(shared) if matches!(*shared, StoreError::Closed) => StoreError::Closed,
            Err(shared) => StoreError::Db(shared.to_string()),
        })),
    }
}

/// What waits for the writer. A background write wakes the writer only when it is
/// idle; while it holds a batch open, only a waited-for write, a full batch or a
/// shutdown wakes it early, so a burst of background writes costs one wake-up. A
/// writer that is busy committing is not signalled at all: it looks at the queue again
/// before it sleeps (a condition variable's signal is a system call even when nothing
/// waits).
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    ops: VecDeque<Op>,
    /// Some queued write has a caller waiting on it.
    urgent: bool,
    /// The writer is holding a batch of background writes open.
    holding: bool,
    /// The writer waits on the condition variable (idle, or holding a batch open).
    asleep: bool,
    /// A clean shutdown: commit what is queued, answer, stop.
    shutdown: Option<oneshot::Sender<()>>,
    /// No more writes are taken (shut down, or the store was dropped).
    closed: bool,
    /// Background writes queued or in the batch being committed (see
    /// [`Writer::settle`]).
    unsettled: usize,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent under every panic (pushes and drains only).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    queue: Arc<Queue>,
    stats: Arc<WriterStats>,
    max_batch: usize,
}

#[derive(Clone, Copy)]
struct Limits {
    max_batch: usize,
    background_delay: Duration,
}

impl Writer {
    /// Starts the writer thread. The queue needs no bound: every write has a caller
    /// awaiting its answer, so the callers bound it.
    pub(super) fn start(
        db: Arc<redb::Database>,
        max_batch: usize,
        background_delay: Duration,
    ) -> Result<Writer, StoreError> {
        let queue = Arc::new(Queue::default());
        let stats = Arc::new(WriterStats::default());
        let (thread_queue, thread_stats) = (queue.clone(), stats.clone());
        let limits = Limits {
            max_batch: max_batch.max(1),
            background_delay,
        };
        std::thread::Builder::new()
            .name("easel-writer".into())
            .spawn(move || {
                yield_to_requests();
                run(db, &thread_queue, limits, &thread_stats)
            })
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            queue,
            stats,
            max_batch: limits.max_batch,
        })
    }

    pub(super) fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub(super) async fn submit<T, E, F>(&self, background: bool, op: F) -> Result<T, E>
    where
        F: FnMut(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        if self.enqueue(background, op, Answer::Wait(reply)).is_err() {
            return Err(StoreError::Closed.into());
        }
        match answer.await {
            Ok(outcome) => typed(outcome),
            Err(_) => Err(StoreError::Closed.into()),
        }
    }

    /// Queues a background write whose outcome goes to `done`, called on the writer
    /// thread (so it must be quick and must not block).
    pub(super) fn submit_detached<T, E, F, D>(&self, op: F, done: D)
    where
        F: FnMut(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        D: FnOnce(Result<T, E>) + Send + 'static,
    {
        let call = Answer::Call(Box::new(move |outcome| done(typed(outcome))));
        if let Err(call) = self.enqueue(true, op, call) {
            call.send(Err(Arc::new(StoreError::Closed)));
        }
    }

    /// Queues `op`, waking the writer when it should start; gives `reply` back when
    /// the writer takes no more writes.
    fn enqueue<T, E, F>(&self, background: bool, mut op: F, reply: Answer) -> Result<(), Answer>
    where
        F: FnMut(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let run: RunFn = Box::new(move |w| {
            let r = op(w);
            (r.is_ok(), Box::new(r) as Reply)
        });
        let mut q = self.queue.lock();
        if q.closed {
            return Err(reply);
        }
        q.ops.push_back(Op {
            run,
            reply,
            background,
        });
        q.urgent |= !background;
        q.unsettled += usize::from(background);
        // A full batch is worth waking a holding writer for.
        if q.asleep && (!background || !q.holding || q.ops.len() >= self.max_batch) {
            self.queue.wake.notify_one();
        }
        Ok(())
    }

    /// Returns once every background write queued before it is durable (or failed),
    /// so that a read which follows sees them: a person's own usage or history listed
    /// right after their request. Nothing is waited for when none is pending;
    /// otherwise the writer commits at once instead of holding its batch open.
    pub(super) async fn settle(&self) {
        if self.queue.lock().unsettled == 0 {
            return;
        }
        let _ = self.submit(false, |_| Ok::<(), StoreError>(())).await;
    }

    /// Commits everything queued, then stops the writer; later writes get `Closed`.
    pub(super) async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        {
            let mut q = self.queue.lock();
            if q.closed {
                return;
            }
            q.closed = true;
            q.shutdown = Some(done);
            self.queue.wake.notify_one();
        }
        let _ = wait.await;
    }
}

impl Drop for Writer {
    /// The store is gone: the writer commits what is queued and stops.
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_one();
    }
}

/// The writer thread's nice value (see [`yield_to_requests`]).
pub(super) const WRITER_NICE: i32 = 5;

/// Lowers the calling (writer) thread's priority to [`WRITER_NICE`], so a request
/// thread that wakes on a core where a commit is running gets the core sooner. At one
/// client, in alternating runs, the p99 the gateway adds fell from 0.81-0.99 ms to
/// 0.57-0.75 ms (a later full run gave 0.83: within this VM's swing). Nice 10 did
/// better there (0.44-0.58 ms) but starved the writer under full load into batches of
/// about 1000 writes and 6 MiB more memory; nice 5 leaves batches and memory as they
/// were (docs/benchmarks.md).
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority takes three integers and touches no memory of ours. On
        // Linux, `PRIO_PROCESS` with `who = 0` names the calling thread only.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WRITER_NICE) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the writer thread's priority");
        }
    }
}

fn run(db: Arc<redb::Database>, queue: &Queue, limits: Limits, stats: &WriterStats) {
    // Kept from batch to batch: a fresh vector of a thousand writes is a large
    // allocation, and glibc answers each one by first merging every small block freed
    // since (`malloc_consolidate`, 2-12 % of this thread's time under load).
    let mut batch: Vec<Op> = Vec::new();
    let mut outputs: Vec<Reply> = Vec::new();
    let done = loop {
        let mut q = queue.lock();
        while q.ops.is_empty() && !q.closed {
            q.asleep = true;
            q = queue.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            q.asleep = false;
        }
        if !q.urgent && !q.closed && !limits.background_delay.is_zero() {
            // Only background writes so far: wait a little for company.
            let until = Instant::now() + limits.background_delay;
            q.holding = true;
            while !q.urgent && !q.closed && q.ops.len() < limits.max_batch {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q.asleep = true;
                q = queue
                    .wake
                    .wait_timeout(q, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                q.asleep = false;
            }
            q.holding = false;
        }
        let n = q.ops.len().min(limits.max_batch);
        batch.extend(q.ops.drain(..n));
        q.urgent = q.ops.iter().any(|op| !op.background);
        let finished = q.closed && q.ops.is_empty();
        let done = if finished { q.shutdown.take() } else { None };
        drop(q);
        if !batch.is_empty() {
            let background = batch.iter().filter(|op| op.background).count();
            commit_batch(&db, &mut batch, &mut outputs, stats);
            let mut q = queue.lock();
            q.unsettled = q.unsettled.saturating_sub(background);
        }
        if finished {
            break done;
        }
    };
    // The database is closed before a shutdown is answered.
    drop(db);
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// Commits `pending` (left empty) and answers each write; `outputs` is room for their
/// answers, kept by the caller.
fn commit_batch(
    db: &redb::Database,
    pending: &mut Vec<Op>,
    outputs: &mut Vec<Reply>,
    stats: &WriterStats,
) {
    loop {
        outputs.clear();
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => return fail_all(pending, StoreError::from(e)),
        };
        let mut failed = None;
        {
            let w = WriteTx::new(&txn);
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
            if failed.is_none()
                && let Err(e) = w.finish()
            {
                drop(w);
                let _ = txn.abort();
                return fail_all(pending, e);
            }
        }
        if let Some((i, answer)) = failed {
            let _ = txn.abort();
            let op = pending.remove(i);
            op.reply.send(answer);
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            if pending.is_empty() {
                return;
            }
            continue;
        }
        match txn.commit() {
            Ok(()) => {
                stats.observe_batch(pending.len());
                for (op, out) in pending.drain(..).zip(outputs.drain(..)) {
                    op.reply.send(Ok(out));
                }
            }
            Err(e) => fail_all(pending, StoreError::from(e)),
        }
        return;
    }
}

fn fail_all(ops: &mut Vec<Op>, e: StoreError) {
    tracing::error!(error = %e, writes = ops.len(), "a group commit failed; its writes were not stored");
    let e = Arc::new(e);
    for op in ops.drain(..) {
        op.reply.send(Err(e.clone()));
    }
}

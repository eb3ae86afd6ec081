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
//! together with the held ones. While it holds a batch open, the writer applies the
//! writes to the open transaction a [`STEP`] at a time as they come and sleeps between
//! steps, so the commit is all that is left at the end.

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
/// idle; while it holds a batch open, only a waited-for write, a step's worth of writes
/// (see [`STEP`]) or a shutdown wakes it early, so a burst of background writes costs
/// one wake-up a step. A writer that is busy applying or committing is not signalled
/// at all: it looks at the queue again before it sleeps (a condition variable's signal
/// is a system call even when nothing waits).
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
    /// The writer is holding a batch of background writes open, and this many queued
    /// writes are worth waking it for (a step, or what fills the batch).
    holding: Option<usize>,
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
        Ok(Writer { queue, stats })
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
        // A step's worth of writes is worth waking a holding writer for.
        let worth = q.holding.is_none_or(|step| q.ops.len() >= step);
        if q.asleep && (!background || worth) {
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

/// Writes applied to the open transaction at a time while a batch of background writes
/// is held open. The writer wakes for each step and goes back to sleep, so a thread
/// that wakes on its core waits for one step (about 0.1 ms) rather than for the whole
/// batch's inserts at once (a thousand writes, 2-4 ms of CPU unbroken); only the
/// commit itself is left to run at the end (docs/benchmarks.md, 2026-12-06, sixth
/// sitting).
pub(super) const STEP: usize = 32;

fn run(db: Arc<redb::Database>, queue: &Queue, limits: Limits, stats: &WriterStats) {
    // Kept from batch to batch: a fresh vector of a thousand writes is a large
    // allocation, and glibc answers each one by first merging every small block freed
    // since (`malloc_consolidate`, 2-12 % of this thread's time under load).
    let mut batch = Batch::default();
    let done = loop {
        let mut q = queue.lock();
        while q.ops.is_empty() && !q.closed {
            q.asleep = true;
            q = queue.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            q.asleep = false;
        }
        if q.ops.is_empty() {
            // Closed, and everything queued is committed.
            break q.shutdown.take();
        }
        drop(q);
        batch.commit(&db, queue, limits, stats);
    };
    // The database is closed before a shutdown is answered.
    drop(db);
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// The writes of one transaction, with room kept between transactions.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    /// The answers of the writes applied so far, in order.
    outputs: Vec<Reply>,
    /// Some write taken has a caller waiting on it: commit without waiting for more.
    urgent: bool,
    /// Nothing more is taken: commit once every write taken is applied.
    full: bool,
    /// Background writes taken (see [`QueueState::unsettled`]).
    background: usize,
}

impl Batch {
    /// Takes writes from the queue into one transaction and commits it, answering each
    /// write. While only background writes have come and the batch has room, it holds
    /// the transaction open for up to the background delay, applying [`STEP`] writes
    /// at a time as they come. A write that fails is answered with its error and the
    /// writes before it are applied again in a fresh transaction, so one caller's
    /// error never leaks into another's commit.
    fn commit(&mut self, db: &redb::Database, queue: &Queue, limits: Limits, stats: &WriterStats) {
        let until = Instant::now() + limits.background_delay;
        loop {
            self.outputs.clear();
            let txn = match db.begin_write() {
                Ok(t) => t,
                Err(e) => {
                    if !self.full {
                        // Nothing can be written: what is queued fails now rather than
                        // spin the writer.
                        self.take(&mut queue.lock(), limits.max_batch, true);
                    }
                    self.fail_all(StoreError::from(e));
                    break;
                }
            };
            let w = WriteTx::new(&txn);
            let mut failed = None;
            'fill: loop {
                while self.outputs.len() < self.ops.len() {
                    let i = self.outputs.len();
                    match apply(&mut self.ops[i], &w) {
                        Ok(out) => self.outputs.push(out),
                        Err(answer) => {
                            failed = Some((i, answer));
                            break 'fill;
                        }
                    }
                }
                if self.full {
                    break;
                }
                self.wait_and_take(queue, limits, until);
            }
            if let Some((i, answer)) = failed {
                drop(w);
                let _ = txn.abort();
                let op = self.ops.remove(i);
                op.reply.send(answer);
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                if self.ops.is_empty() && self.full {
                    break;
                }
                continue;
            }
            if self.ops.is_empty() {
                // The only writes taken failed.
                drop(w);
                let _ = txn.abort();
                break;
            }
            let finish = w.finish();
            drop(w);
            if let Err(e) = finish {
                let _ = txn.abort();
                self.fail_all(e);
                break;
            }
            match txn.commit() {
                Ok(()) => {
                    stats.observe_batch(self.ops.len());
                    for (op, out) in self.ops.drain(..).zip(self.outputs.drain(..)) {
                        op.reply.send(Ok(out));
                    }
                }
                Err(e) => self.fail_all(StoreError::from(e)),
            }
            break;
        }
        let mut q = queue.lock();
        q.unsettled = q.unsettled.saturating_sub(self.background);
        drop(q);
        self.urgent = false;
        self.full = false;
        self.background = 0;
    }

    /// Sleeps until a step's worth of writes is queued, a waited-for write comes, the
    /// batch's time is up or the queue closes, then takes what is queued (up to the
    /// batch limit).
    fn wait_and_take(&mut self, queue: &Queue, limits: Limits, until: Instant) {
        let mut q = queue.lock();
        loop {
            let room = limits.max_batch.saturating_sub(self.ops.len());
            let hold = !self.urgent
                && !q.urgent
                && !q.closed
                && room > 0
                && !limits.background_delay.is_zero();
            let left = until.saturating_duration_since(Instant::now());
            if !hold || left.is_zero() {
                return self.take(&mut q, limits.max_batch, true);
            }
            let step = STEP.min(room);
            if q.ops.len() >= step {
                return self.take(&mut q, limits.max_batch, false);
            }
            q.holding = Some(step);
            q.asleep = true;
            q = queue
                .wake
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            q.asleep = false;
            q.holding = None;
        }
    }

    /// Moves queued writes into the batch, up to its limit; after the `last` take, or
    /// one that brings a waited-for write or fills the batch, the batch is committed.
    /// A closed queue left drained is seen by [`run`] when it next looks.
    fn take(&mut self, q: &mut QueueState, max_batch: usize, last: bool) {
        let n = q.ops.len().min(max_batch.saturating_sub(self.ops.len()));
        for op in q.ops.drain(..n) {
            self.urgent |= !op.background;
            self.background += usize::from(op.background);
            self.ops.push(op);
        }
        q.urgent = q.ops.iter().any(|op| !op.background);
        self.full |= last || self.urgent || self.ops.len() >= max_batch;
    }

    fn fail_all(&mut self, e: StoreError) {
        self.outputs.clear();
        fail_all(&mut self.ops, e);
    }
}

/// Runs one write in the open transaction: its answer, or the answer of its failure.
fn apply(op: &mut Op, w: &WriteTx<'_>) -> Result<Reply, Outcome> {
    match catch_unwind(AssertUnwindSafe(|| (op.run)(w))) {
        Ok((true, out)) => Ok(out),
        Ok((false, out)) => Err(Ok(out)),
        Err(_) => Err(Err(Arc::new(StoreError::Db(
            "a write panicked and was rolled back".into(),
        )))),
    }
}

fn fail_all(ops: &mut Vec<Op>, e: StoreError) {
    tracing::error!(error = %e, writes = ops.len(), "a group commit failed; its writes were not stored");
    let e = Arc::new(e);
    for op in ops.drain(..) {
        op.reply.send(Err(e.clone()));
    }
}

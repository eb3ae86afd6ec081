//! A burst of small durable writes from many concurrent writers, shared by the write
//! benchmark and the crash-safety test (through `easel debug write-burst`).

use super::{Reader, Store, StoreError, Table};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Where burst records go: sequence number → payload. Only the benchmark and the crash
/// test write here, always in a data dir of their own.
pub const BURST: Table<u64, Vec<u8>> = Table::new("debug_burst", super::Class::System);

/// Writes up to `count` records of `payload` bytes from `writers` concurrent tasks, each
/// one its own durable write, stopping early at `deadline`; `on_ack` is called with a
/// record's number once it is durable. Returns how many were written.
pub async fn burst(
    store: &Store,
    writers: usize,
    count: u64,
    payload: usize,
    deadline: Option<Instant>,
    on_ack: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<u64, StoreError> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(writers);
    for _ in 0..writers.max(1) {
        let (store, next, done, on_ack) =
            (store.clone(), next.clone(), done.clone(), on_ack.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok::<_, StoreError>(());
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok(());
                }
                let body = vec![(n % 251) as u8; payload];
                store.write(move |tx| tx.insert(&BURST, &n, &body)).await?;
                done.fetch_add(1, Ordering::Relaxed);
                on_ack(n);
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| StoreError::Db(format!("writer task failed: {e}")))??;
    }
    Ok(done.load(Ordering::Relaxed))
}

/// Which of the given record numbers are missing from the store.
pub async fn missing(store: &Store, ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
    store
        .read(move |r| {
            let mut gone = Vec::new();
            for id in ids {
                if r.get(&BURST, &id)?.is_none() {
                    gone.push(id);
                }
            }
            Ok(gone)
        })
        .await
}

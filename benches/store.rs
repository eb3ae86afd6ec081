//! Durable small-record writes per second with 1, 16 and 256 concurrent writers,
//! group commit against one commit per write. Run: cargo bench --bench store
//! Target (issue 2): at 256 writers, group commit >= 20x one commit per write.

mod common;

use easel::store::burst::burst;
use easel::store::{Store, StoreOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECONDS: u64 = 4;
const PAYLOAD: usize = 100;

async fn rate(writers: usize, max_batch: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_batch,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &opts, &easel::app::migrations()).expect("open");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);
    let written = burst(
        &store,
        writers,
        u64::MAX,
        PAYLOAD,
        Some(deadline),
        Arc::new(|_| {}),
    )
    .await
    .expect("burst");
    let secs = started.elapsed().as_secs_f64();
    let stats = store.writer_stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    store.close().await;
    let per_sec = written as f64 / secs;
    println!(
        "writers={writers:>3} mode={:<6} writes/s={per_sec:>9.0} commits={commits:>6} mean batch={:>6.1}",
        if max_batch == 1 { "single" } else { "group" },
        written as f64 / commits.max(1) as f64
    );
    per_sec
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; nothing to list
    }
    let rt = common::runtime();
    rt.block_on(async {
        let mut ratio_256 = 0.0;
        for writers in [1usize, 16, 256] {
            let single = rate(writers, 1).await;
            let group = rate(writers, StoreOptions::default().max_batch).await;
            let ratio = group / single;
            println!("writers={writers:>3} group/single = {ratio:.1}x");
            if writers == 256 {
                ratio_256 = ratio;
            }
        }
        println!(
            "target: group commit >= 20x at 256 writers: {}",
            if ratio_256 >= 20.0 { "met" } else { "NOT met" }
        );
    });
}

//! A retention sweep of 1,000,000 expired usage records while authenticated requests
//! keep coming. Run: cargo bench --bench sweep
//! Target (issue 6): p99 latency during the sweep <= 2x the p99 without it.
//!
//! The real server runs in this process with its default config; 1,000,000 usage
//! records dated 100 days ago (the `usage` window is 90 days) are written first, with
//! one of today per 100 that must survive. 16 concurrent HTTP clients call
//! `/api/account` with an API key (authentication and a storage read) for 5 s: the
//! quiet p99. Then the same load runs while `retention_sweep` removes the expired
//! records in writes of `[scheduler] sweep_batch` (`EASEL_BENCH_BATCH`, default 100, as the config's).

mod common;

use easel::privacy::Job;
use easel::store::TimedKey;
use easel::usage::UsageRecord;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const RECORDS: u64 = 1_000_000;
const CLIENTS: usize = 16;
const DAY_MS: u64 = 86_400_000;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Requests `url` with `key` from `CLIENTS` loops until `stop`; client-side latencies.
async fn load(url: String, key: String, stop: Arc<AtomicBool>) -> Vec<u64> {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, key, stop) = (client.clone(), url.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let res = client
                        .get(&url)
                        .bearer_auth(&key)
                        .send()
                        .await
                        .expect("request");
                    let ok = res.status().is_success();
                    let _ = res.bytes().await;
                    samples.push(began.elapsed().as_nanos() as u64);
                    assert!(ok, "every request is answered");
                }
                samples
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    all
}

fn record(account: &str, id: String, at_ms: u64) -> UsageRecord {
    UsageRecord {
        id,
        account: account.to_string(),
        key: None,
        endpoint: "chat".into(),
        model: "gpt-bench".into(),
        provider: "openai".into(),
        byok: false,
        input_tokens: 100,
        output_tokens: 20,
        images: 0,
        credits: 140,
        status: 200,
        latency_ms: 12,
        at_ms,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let batch: usize = std::env::var("EASEL_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = common::runtime();
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut running = common::start(
            dir.path(),
            "",
            &format!("[scheduler]\nsweep_batch = {batch}\n"),
        )
        .await;
        // The start-up catch-up runs every job once: let it finish before the records.
        running.caught_up().await;
        let services = running.services().clone();
        let (account, key) = common::member_with_key(&services).await;
        let store = running.store().clone();

        // 1,000,000 expired records (and 1% of today's), 20,000 per write.
        let began = Instant::now();
        let now = easel::store::now_ms();
        let old = now - 100 * DAY_MS;
        let mut written = 0u64;
        while written < RECORDS {
            let a = account.clone();
            let from = written;
            store
                .write(move |tx| {
                    for i in from..(from + 20_000).min(RECORDS) {
                        let at = if i % 100 == 0 { now - 1000 } else { old + i };
                        let k = TimedKey::new(&a, at)?;
                        easel::usage::record(tx, &k, &record(&a, k.id.clone(), at))?;
                    }
                    Ok::<_, easel::store::StoreError>(())
                })
                .await
                .expect("write records");
            written = (written + 20_000).min(RECORDS);
        }
        let db_bytes = std::fs::metadata(dir.path().join("data").join(easel::store::DB_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "wrote {RECORDS} usage records in {:.1} s (database {:.0} MiB)",
            began.elapsed().as_secs_f64(),
            db_bytes as f64 / 1048576.0
        );

        let url = format!("http://{}/api/account", running.addr);
        // Warm-up, then the quiet baseline.
        let stop = Arc::new(AtomicBool::new(false));
        let warm = tokio::spawn(load(url.clone(), key.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        warm.await.expect("warm-up");
        let stop = Arc::new(AtomicBool::new(false));
        let quiet = tokio::spawn(load(url.clone(), key.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(true, Ordering::Relaxed);
        let quiet = quiet.await.expect("quiet");

        // The same load during the sweep.
        let stop = Arc::new(AtomicBool::new(false));
        let busy = tokio::spawn(load(url.clone(), key.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let began = Instant::now();
        let run = running
            .privacy()
            .run(Job::RetentionSweep)
            .await
            .expect("sweep");
        let took = began.elapsed();
        stop.store(true, Ordering::Relaxed);
        let busy = busy.await.expect("busy");
        let removed = run.counts.get("usage").copied().unwrap_or(0);
        assert_eq!(removed, RECORDS - RECORDS / 100, "this run removed them: {:?}", run.counts);
        let left = store
            .read(move |r| easel::usage::count_of(r, &account))
            .await
            .expect("count");
        assert!(run.ok, "the sweep succeeded: {:?}", run.error);
        assert_eq!(left, RECORDS / 100, "only today's records are left");

        let ms = |v: &[u64], p: f64| percentile(v, p) as f64 / 1e6;
        println!(
            "sweep: removed {removed} records in {:.1} s ({:.0} records/s, sweep_batch {batch})",
            took.as_secs_f64(),
            removed as f64 / took.as_secs_f64()
        );
        println!(
            "/api/account with a key, {CLIENTS} clients: quiet p50 {:.2} ms p99 {:.2} ms ({} requests); \
             during the sweep p50 {:.2} ms p99 {:.2} ms ({} requests); p99 ratio {:.2} (target <= 2)",
            ms(&quiet, 0.5),
            ms(&quiet, 0.99),
            quiet.len(),
            ms(&busy, 0.5),
            ms(&busy, 0.99),
            busy.len(),
            ms(&busy, 0.99) / ms(&quiet, 0.99)
        );
        drop(services);
        running.shutdown().await;
    });
}

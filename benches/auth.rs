//! Cost of API-key authentication at 64 concurrent clients. Run: cargo bench --bench auth
//! Target (issue 3): p99 <= 20 µs inside the server.
//!
//! Part 1 times `Directory::authenticate_key` itself — the whole of what a request
//! pays to be authenticated (parse, map lookup, SHA-256, constant-time compare, expiry,
//! account state, last-use update) — on 64 threads at once, against 10,000 keys.
//! Part 2 runs the real server and sends 64 concurrent HTTP clients at `/healthz` (no
//! authentication) and at `/api/account` with a key (authentication plus one storage
//! read); the difference bounds what authentication adds end to end.

mod common;

use easel::auth::{AccountState, Directory, KeyFacts, Role, ScopeSet, SessionTimes, Status};
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREADS: usize = 64;
const KEYS: usize = 10_000;
const CALLS_PER_THREAD: usize = 20_000;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn hex(bytes: &[u8]) -> String {
    easel::crypto::hex(bytes)
}

fn directory() -> (Arc<Directory>, Vec<String>) {
    let d = Directory::new(SessionTimes {
        idle_ms: 86_400_000,
        max_ms: 86_400_000,
    });
    d.put_account(
        "acct",
        AccountState {
            role: Role::Member,
            status: Status::Active,
            must_change_password: false,
        },
    );
    let mut tokens = Vec::with_capacity(KEYS);
    for i in 0..KEYS as u64 {
        let id = format!("{i:016x}");
        let secret = hex(&easel::crypto::sha256(&i.to_le_bytes()));
        d.put_key(
            KeyFacts {
                id: id.clone(),
                account: "acct".into(),
                secret_hash: easel::crypto::sha256(secret.as_bytes()),
                scopes: ScopeSet::default_for_keys(),
                expires_ms: Some(u64::MAX),
                rpm: None,
                credit_budget: None,
            },
            None,
        );
        tokens.push(format!("easel_sk_{id}_{secret}"));
    }
    (Arc::new(d), tokens)
}

fn part1() {
    let (d, tokens) = directory();
    let tokens = Arc::new(tokens);
    let start = Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (d, tokens, start) = (d.clone(), tokens.clone(), start.clone());
            std::thread::spawn(move || {
                let mut samples = Vec::with_capacity(CALLS_PER_THREAD);
                start.wait();
                for n in 0..CALLS_PER_THREAD {
                    let token = &tokens[(t * 7919 + n * 104_729) % tokens.len()];
                    let now = easel::store::now_ms();
                    let began = Instant::now();
                    let ok = d.authenticate_key(token, now).is_ok();
                    samples.push(began.elapsed().as_nanos() as u64);
                    assert!(ok);
                }
                samples
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    all.sort_unstable();
    println!(
        "part 1: authenticate_key, {THREADS} threads x {CALLS_PER_THREAD} calls, {KEYS} keys: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.1} µs",
        percentile(&all, 0.50) as f64 / 1000.0,
        percentile(&all, 0.99) as f64 / 1000.0,
        percentile(&all, 0.999) as f64 / 1000.0,
        *all.last().unwrap_or(&0) as f64 / 1000.0,
    );
}

async fn load(url: String, key: Option<String>, seconds: u64) -> Vec<u64> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..THREADS)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let mut req = client.get(&url);
                    if let Some(k) = &key {
                        req = req.bearer_auth(k);
                    }
                    let began = Instant::now();
                    let res = req.send().await.expect("request");
                    let ok = res.status().is_success();
                    let _ = res.bytes().await;
                    samples.push(began.elapsed().as_nanos() as u64);
                    assert!(ok);
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

fn part2() {
    let rt = common::runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = common::start(dir.path(), "", "").await;
        let services = running.services().clone();
        let (_, key) = common::member_with_key(&services).await;
        let base = format!("http://{}", running.addr);
        let open = load(format!("{base}/healthz"), None, 5).await;
        let keyed = load(format!("{base}/api/account"), Some(key), 5).await;
        let us = |v: &[u64], p: f64| percentile(v, p) as f64 / 1000.0;
        println!(
            "part 2: HTTP, {THREADS} concurrent clients, 5 s each: no auth p50 {:.0} µs p99 {:.0} µs ({} requests); \
             /api/account with a key p50 {:.0} µs p99 {:.0} µs ({} requests)",
            us(&open, 0.5), us(&open, 0.99), open.len(), us(&keyed, 0.5), us(&keyed, 0.99), keyed.len()
        );
        running.shutdown().await;
    });
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    part1();
    part2();
}

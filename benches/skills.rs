//! What the skills engine adds per node, not counting provider time.
//! Run: cargo bench --bench skills. Target (issue 8): <= 50 µs per node.
//!
//! Easel runs in this process on 127.0.0.1 with a fresh data dir; each run goes over
//! real HTTP with an API key, as an agent calls it (`POST /v1/skills/{slug}/run`).
//! A skill is a chain: input → N steps → output. The per-node overhead is the slope
//! between a long chain and a one-step chain, (t(N) − t(1)) / (N − 1), so what every
//! run pays once (HTTP, authentication, loading the plan, the run record's durable
//! write) cancels out. Each figure is the median of the runs.
//!
//! Two kinds of step are timed:
//! - `template` steps, which the scheduler finishes on its own task: the cost of
//!   scheduling, gathering inputs, making the progress events and the node report;
//! - `image.resize` steps on a 4×4 PNG, which run as their own task under the node
//!   timeout and the credit scope, as every provider step does. The resize itself
//!   (decode, scale, encode the same 4×4 PNG) is timed alone and subtracted.
//!
//! Both are timed waiting for the answer and streaming the progress events (SSE).

mod common;

use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LONG: usize = 90;
const RUNS: usize = 200;

fn tiny_png() -> Vec<u8> {
    let img = image::RgbaImage::from_fn(4, 4, |x, y| {
        image::Rgba([x as u8 * 60, y as u8 * 60, 90, 255])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

/// input → `steps` steps of `kind` → output.
fn chain(kind: &str, steps: usize) -> Value {
    let (input, port, params) = match kind {
        "template" => (
            json!({"id": "in", "type": "input.text", "params": {"name": "text"}}),
            "text",
            json!({"template": "{{x}}."}),
        ),
        _ => (
            json!({"id": "in", "type": "input.image", "params": {"name": "image"}}),
            "image",
            json!({"width": 4, "height": 4, "fit": "fill"}),
        ),
    };
    let target = if kind == "template" { "x" } else { "image" };
    let mut nodes = vec![input];
    let mut edges = Vec::new();
    let mut prev = format!("in.{port}");
    for i in 0..steps {
        nodes.push(json!({"id": format!("s{i}"), "type": kind, "params": params}));
        edges.push(json!({"from": prev, "to": format!("s{i}.{target}")}));
        prev = format!("s{i}.{port}");
    }
    nodes.push(json!({"id": "out", "type": "output", "params": {"name": "result"}}));
    edges.push(json!({"from": prev, "to": "out.value"}));
    json!({"nodes": nodes, "edges": edges})
}

struct Bench {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Bench {
    async fn create(&self, slug: &str, graph: Value) {
        let res = self
            .client
            .post(format!("{}/api/skills", self.base))
            .bearer_auth(&self.key)
            .json(&json!({"slug": slug, "name": slug, "graph": graph}))
            .send()
            .await
            .expect("create");
        assert!(
            res.status().is_success(),
            "{}",
            res.text().await.unwrap_or_default()
        );
    }

    /// The median time of `RUNS` runs (after a few unmeasured ones).
    async fn time(&self, slug: &str, inputs: &Value, stream: bool) -> Duration {
        let body = json!({"version": "latest", "stream": stream, "inputs": inputs});
        let mut times = Vec::with_capacity(RUNS);
        for i in 0..RUNS + 5 {
            let started = Instant::now();
            let res = self
                .client
                .post(format!("{}/v1/skills/{slug}/run", self.base))
                .bearer_auth(&self.key)
                .json(&body)
                .send()
                .await
                .expect("run");
            assert!(res.status().is_success());
            let text = res.text().await.expect("body");
            let d = started.elapsed();
            let ok = if stream {
                text.contains("event: run_finished") && text.contains("\"succeeded\"")
            } else {
                serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(|s| s == "succeeded"))
                    == Some(true)
            };
            assert!(
                ok,
                "the run did not succeed: {}",
                &text[..text.len().min(400)]
            );
            if i >= 5 {
                times.push(d);
            }
        }
        common::median(times)
    }
}

fn per_node(long: Duration, short: Duration) -> f64 {
    (long.as_secs_f64() - short.as_secs_f64()) * 1e6 / (LONG - 1) as f64
}

/// The median time of the resize one step does: decode, scale, encode.
fn resize_alone(png: &[u8]) -> f64 {
    let mut times = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let img = image::load_from_memory(png).expect("decode");
        let img = img.resize_exact(4, 4, image::imageops::FilterType::Lanczos3);
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("encode");
        std::hint::black_box(out);
        times.push(t.elapsed());
    }
    common::median(times).as_secs_f64() * 1e6
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = common::runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = common::start(dir.path(), "workers = 2", "[skills]\nmax_nodes = 200\n").await;
        let (_, key) = common::member_with_key(running.services()).await;
        let b = Bench {
            client: reqwest::Client::new(),
            base: format!("http://{}", running.addr),
            key,
        };
        let png = tiny_png();
        let image_inputs = json!({"image": format!("data:image/png;base64,{}", base64_of(&png))});
        let text_inputs = json!({"text": "go"});

        println!(
            "skills engine overhead per node (chain of {LONG} vs 1 step, median of {RUNS} runs)"
        );
        println!(
            "{:<14} {:<7} {:>10} {:>10} {:>12}",
            "step", "mode", "1 step", "90 steps", "per node"
        );
        let alone = resize_alone(&png);
        for kind in ["template", "image.resize"] {
            let short = format!("{}-1", kind.replace('.', "-"));
            let long = format!("{}-{LONG}", kind.replace('.', "-"));
            b.create(&short, chain(kind, 1)).await;
            b.create(&long, chain(kind, LONG)).await;
            let inputs = if kind == "template" {
                &text_inputs
            } else {
                &image_inputs
            };
            for stream in [false, true] {
                let s = b.time(&short, inputs, stream).await;
                let l = b.time(&long, inputs, stream).await;
                let mut each = per_node(l, s);
                let note = if kind == "template" {
                    String::new()
                } else {
                    each -= alone;
                    format!("  (after taking off {alone:.1} µs of resize work)")
                };
                println!(
                    "{:<14} {:<7} {:>8.0} µs {:>8.0} µs {:>9.1} µs{note}",
                    kind,
                    if stream { "stream" } else { "wait" },
                    s.as_secs_f64() * 1e6,
                    l.as_secs_f64() * 1e6,
                    each
                );
            }
        }
        running.shutdown().await;
    });
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

//! Local captioning and image intake timings (docs/benchmarks.md, "Alt text").
//!
//! `cargo bench --bench alt_text` writes BLIP-base and BLIP-large models of the real
//! sizes with random weights (timing does not depend on the values) as f32
//! safetensors, q8_0 GGUF and q4k GGUF into a temporary directory, loads each through
//! the same code as real weights, and times the vision encoder, each decoding step,
//! and a whole 20-token caption. Then it times the intake of a 12 MP JPEG (decode,
//! orient, scale down to 1024, re-encode).
//!
//! `EASEL_BENCH_ARCH=base` or `large` runs one architecture (`none`: intake only);
//! `EASEL_BENCH_WEIGHTS=q4k` (or a comma list of f32, q8_0, q4k) some weight formats;
//! `EASEL_BENCH_RUNS` sets the timed runs per cell (default 3, after one warm-up).

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use easel::local_model::blip::{Blip, BlipConfig};
use easel::local_model::fixture::random_tensors;
use easel::local_model::weights::{Weights, write_gguf};
use std::time::{Duration, Instant};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn caption_cells(arch: &str, config: BlipConfig, runs: usize, dir: &std::path::Path) {
    let t = Instant::now();
    let tensors = random_tensors(&config, 1).expect("random weights");
    let params: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!(
        "{arch}: {:.0} M parameters, made in {:.1} s",
        params as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let only = std::env::var("EASEL_BENCH_WEIGHTS").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|w| w == name);
    let mut files = Vec::new();
    if wanted("f32") {
        let st = dir.join(format!("{arch}.safetensors"));
        let map: std::collections::HashMap<_, _> = tensors.iter().cloned().collect();
        candle_core::safetensors::save(&map, &st).expect("save safetensors");
        files.push(("f32", st));
    }
    for (name, dtype) in [("q8_0", GgmlDType::Q8_0), ("q4k", GgmlDType::Q4K)] {
        if !wanted(name) {
            continue;
        }
        let p = dir.join(format!("{arch}-{name}.gguf"));
        write_gguf(&p, &tensors, dtype).expect("write gguf");
        files.push((name, p));
    }
    drop(tensors);
    let rgb = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    println!(
        "| arch | weights | file MiB | load s | vision encoder ms | per token ms | 20 tokens total s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, path) in files {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        let weights = if name == "f32" {
            Weights::from_safetensors(&path, &Device::Cpu)
        } else {
            Weights::from_gguf(&path, &Device::Cpu)
        }
        .expect("load weights");
        let blip = Blip::load(config.clone(), &weights).expect("build model");
        drop(weights);
        let load = t.elapsed();
        let (mut enc, mut tok, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..=runs {
            let t0 = Instant::now();
            let pixels = blip.pixels(&rgb).expect("pixels");
            let image = blip.encode(&pixels).expect("encode");
            let t1 = Instant::now();
            let mut steps = Vec::new();
            let mut last = Instant::now();
            // Random weights never say SEP, so this is always 20 steps.
            let ids = blip
                .generate(&image, 20, |_| {
                    steps.push(last.elapsed());
                    last = Instant::now();
                })
                .expect("generate");
            let t2 = Instant::now();
            assert_eq!(steps.len(), 20, "{ids:?}");
            if run > 0 {
                enc.push(ms(t1 - t0));
                // The first step includes the image's cross-attention memo; the
                // per-token figure is the steady state.
                tok.push(steps[1..].iter().map(|d| ms(*d)).sum::<f64>() / 19.0);
                total.push((t2 - t0).as_secs_f64());
            }
        }
        println!(
            "| {arch} | {name} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} |",
            size as f64 / (1 << 20) as f64,
            load.as_secs_f64(),
            median(enc),
            median(tok),
            median(total)
        );
        drop(blip);
        let _ = std::fs::remove_file(&path);
    }
}

fn intake(runs: usize) {
    // A 12 MP photo-like JPEG: smooth gradients plus fine noise.
    let (w, h) = (4000u32, 3000u32);
    let mut seed = 0x1234_5678u32;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed & 15) as u8;
        image::Rgb([
            ((x * 255 / w) as u8).saturating_add(n),
            ((y * 255 / h) as u8).saturating_add(n),
            (((x + y) / 30 % 256) as u8).saturating_add(n),
        ])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&img)
        .expect("encode");
    drop(img);
    let limits = easel::imaging::Limits {
        max_bytes: 64 << 20,
        max_pixels: 50_000_000,
    };
    let (mut dec, mut scale, mut all) = (Vec::new(), Vec::new(), Vec::new());
    let mut out_len = 0;
    for run in 0..=runs {
        let t0 = Instant::now();
        let got = easel::imaging::decode_within(&jpeg, limits, 1024).expect("decode");
        let t1 = Instant::now();
        let small = easel::imaging::downscale(got.image, 1024);
        let t2 = Instant::now();
        let out = easel::imaging::to_jpeg(&small, 85).expect("re-encode");
        let t3 = Instant::now();
        out_len = out.len();
        if run > 0 {
            dec.push(ms(t1 - t0));
            scale.push(ms(t2 - t1));
            all.push(ms(t3 - t0));
        }
    }
    println!(
        "intake of a {w}×{h} JPEG ({:.1} MiB): decode + orient {:.0} ms, scale to 1024 {:.0} ms, total with re-encode {:.0} ms (→ {} KiB)",
        jpeg.len() as f64 / (1 << 20) as f64,
        median(dec),
        median(scale),
        median(all),
        out_len / 1024
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("EASEL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let arch = std::env::var("EASEL_BENCH_ARCH").unwrap_or_default();
    println!(
        "threads: {} (candle uses every core; RAYON_NUM_THREADS limits it)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    intake(runs);
    let dir = tempfile::tempdir().expect("tempdir");
    if arch.is_empty() || arch == "base" {
        caption_cells("base", BlipConfig::base(), runs, dir.path());
    }
    if arch.is_empty() || arch == "large" {
        caption_cells("large", BlipConfig::large(), runs, dir.path());
    }
}

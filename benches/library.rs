//! The asset library: upload-seal-thumbnail throughput for 12 MP JPEGs, and download
//! throughput against reading the same plain file. Run: cargo bench --bench library
//! Target (issue 7): download >= 50% of plain-file speed.
//!
//! The server runs in this process on 127.0.0.1 with a fresh data dir; requests go
//! over real HTTP with an API key. "Plain file" is measured two ways, both warm in the
//! page cache: `std::fs::read` of the same bytes, and the same bytes served as a
//! static file by a bare actix-web server on the same HTTP path (what a download of
//! an unsealed file would cost). The download is timed to the last byte received.

mod common;

use std::time::{Duration, Instant};

const UPLOADS: usize = 6;
const DOWNLOADS: usize = 20;

/// A 4000×3000 photo-like JPEG (smooth shading with grain), about 12 MP.
fn photo() -> Vec<u8> {
    let mut seed = 0x9E37_79B9u32;
    let img = image::RgbImage::from_fn(4000, 3000, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let grain = (seed & 0x1f) as i32 - 16;
        let c = |v: u32| (v as i32 + grain).clamp(0, 255) as u8;
        image::Rgb([
            c(x * 255 / 4000),
            c(y * 255 / 3000),
            c((x + y) * 255 / 7000),
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode");
    out
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

async fn timed_get(client: &reqwest::Client, url: &str, key: Option<&str>, len: usize) -> Duration {
    let started = Instant::now();
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let body = req.send().await.expect("get").bytes().await.expect("body");
    let d = started.elapsed();
    assert_eq!(body.len(), len);
    d
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = common::runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = common::start(
            dir.path(),
            "workers = 2\nmax_body_bytes = 67108864",
            "[library]\nmax_file_bytes = 67108864\nquota_mib = 0\n",
        )
        .await;
        let (_, key) = common::member_with_key(running.services()).await;
        let base = format!("http://{}", running.addr);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();

        let jpeg = photo();
        let len = jpeg.len();
        println!("input: 4000x3000 JPEG (q90), {:.2} MB", len as f64 / 1e6);

        // Upload, seal and thumbnail: distinct files (one byte differs in a trailing
        // comment) so each is stored, not found as a duplicate.
        let mut times = Vec::new();
        let mut id = String::new();
        for i in 0..UPLOADS {
            let mut bytes = jpeg.clone();
            bytes.extend_from_slice(format!("bench-{i}").as_bytes());
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name("photo.jpg"),
            );
            let started = Instant::now();
            let r = client
                .post(format!("{base}/api/assets"))
                .bearer_auth(&key)
                .multipart(form)
                .send()
                .await
                .expect("upload");
            assert_eq!(r.status(), 201);
            let v: serde_json::Value = r.json().await.expect("json");
            times.push(started.elapsed());
            id = v["assets"][0]["id"].as_str().expect("id").to_string();
        }
        let up = common::median(times.clone());
        println!(
            "upload+seal+thumbnail: median {:.0} ms per 12 MP JPEG ({:.1} MB/s, {:.2} images/s); min {:.0} ms, max {:.0} ms",
            up.as_secs_f64() * 1e3,
            mbps(len, up),
            1.0 / up.as_secs_f64(),
            times.iter().min().expect("min").as_secs_f64() * 1e3,
            times.iter().max().expect("max").as_secs_f64() * 1e3,
        );

        // Plain file: read from the page cache.
        let plain = dir.path().join("plain.jpg");
        let asset_len = len + format!("bench-{}", UPLOADS - 1).len();
        let mut last = jpeg.clone();
        last.extend_from_slice(format!("bench-{}", UPLOADS - 1).as_bytes());
        std::fs::write(&plain, &last).expect("plain");
        let _ = std::fs::read(&plain);
        let mut reads = Vec::new();
        for _ in 0..DOWNLOADS {
            let started = Instant::now();
            let b = std::fs::read(&plain).expect("read");
            reads.push(started.elapsed());
            assert_eq!(b.len(), asset_len);
        }
        let fs = common::median(reads);

        // Plain file over the same HTTP stack: a bare actix-web server that reads the
        // file and sends it.
        let plain_path = plain.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let plain_addr = listener.local_addr().expect("addr");
        let server = actix_web::HttpServer::new(move || {
            let p = plain_path.clone();
            actix_web::App::new().route(
                "/plain",
                actix_web::web::get().to(move || {
                    let p = p.clone();
                    async move {
                        let bytes = tokio::fs::read(&p).await.expect("read");
                        actix_web::HttpResponse::Ok()
                            .content_type("image/jpeg")
                            .body(bytes)
                    }
                }),
            )
        })
        .workers(2)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        let plain_url = format!("http://{plain_addr}/plain");
        let sealed_url = format!("{base}/api/assets/{id}/original");
        timed_get(&client, &plain_url, None, asset_len).await;
        timed_get(&client, &sealed_url, Some(&key), asset_len).await;
        let (mut p, mut s) = (Vec::new(), Vec::new());
        for _ in 0..DOWNLOADS {
            p.push(timed_get(&client, &plain_url, None, asset_len).await);
            s.push(timed_get(&client, &sealed_url, Some(&key), asset_len).await);
        }
        let (plain_http, sealed) = (common::median(p), common::median(s));

        // Opening the sealed file alone, without HTTP.
        let lib = running.services().library.clone();
        let account = running
            .services()
            .accounts
            .find_by_email("bench@example.com")
            .await
            .expect("account")
            .id;
        let mut opens = Vec::new();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        for _ in 0..DOWNLOADS {
            let started = Instant::now();
            let (_, mut reader) = lib
                .open(&account, &id, easel::library::blobs::Kind::Original)
                .await
                .expect("open");
            let mut total = 0;
            let mut next = 0;
            while next < reader.chunks() {
                let (n, piece) = reader.read_run(next, 16, threads).expect("read");
                total += piece.len();
                next += n as u64;
            }
            opens.push(started.elapsed());
            assert_eq!(total, asset_len);
        }
        let open = common::median(opens);

        println!("plain file, std::fs::read:        {:>7.0} MB/s", mbps(asset_len, fs));
        println!("sealed file, opened (no HTTP):     {:>7.0} MB/s", mbps(asset_len, open));
        println!("plain file over HTTP (bare actix): {:>7.0} MB/s", mbps(asset_len, plain_http));
        println!("sealed asset download over HTTP:   {:>7.0} MB/s", mbps(asset_len, sealed));
        let vs_http = plain_http.as_secs_f64() / sealed.as_secs_f64();
        let vs_fs = fs.as_secs_f64() / sealed.as_secs_f64();
        println!(
            "download / plain file over HTTP = {:.0}%  (target >= 50%: {})",
            vs_http * 100.0,
            if vs_http >= 0.5 { "met" } else { "NOT met" }
        );
        println!("download / std::fs::read        = {:.0}%", vs_fs * 100.0);
        handle.stop(true).await;
        running.shutdown().await;
    });
}

//! Alt text over real HTTP: the local tiny BLIP (written by the test, loaded like real
//! weights), a mock vision provider, URL fetches from a real image server on
//! 127.0.0.2, and every kind of bad input.

mod common;

use base64::Engine;
use common::TestServer;
use common::mock::{Mock, catalog};
use easel::ledger::{EntryKind, MICRO, Posting};
use easel::local_model::fixture::{Store, TINY_CAPTION, write_tiny};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::Cursor;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

/// What the tiny model's caption becomes as alt text.
fn tiny_alt() -> String {
    let mut c = TINY_CAPTION.chars();
    let first = c.next().expect("caption").to_uppercase();
    first.chain(c).collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn encoded(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, 120])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

fn png(w: u32, h: u32) -> Vec<u8> {
    encoded(w, h, image::ImageFormat::Png)
}

/// A server, a member with an API key, and the model directory.
struct Setup {
    s: TestServer,
    account: String,
    key: String,
    _model: tempfile::TempDir,
}

async fn setup_with(extra: &str, store: Store) -> Setup {
    setup_local(extra, store, "").await
}

/// A server with `extra` config, the tiny model stored as `store`, and
/// `local_model` lines added to its `[local_model]` section.
async fn setup_local(extra: &str, store: Store, local_model: &str) -> Setup {
    let model = tempfile::tempdir().expect("tempdir");
    let dir = model.path().join("blip-tiny");
    write_tiny(&dir, store).expect("tiny model");
    let config = format!(
        "{extra}\n[local_model]\ndir = \"{}\"\n{local_model}",
        dir.display().to_string().replace('\\', "/")
    );
    let s = TestServer::start(&config).await;
    let (account, key) = s.member_with_key("ada@example.com", PASSWORD).await;
    Setup {
        s,
        account,
        key,
        _model: model,
    }
}

async fn setup(extra: &str) -> Setup {
    setup_with(
        &format!("{}\n[alt_text]\nmodel = \"local\"\n{extra}", common::FAST),
        Store::Safetensors,
    )
    .await
}

impl Setup {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = common::http()
            .post(self.s.url(path))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn upload(&self, bytes: Vec<u8>, fields: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut form = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(bytes).file_name("photo.png"),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        let r = common::http()
            .post(self.s.url("/v1/alt-text"))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .expect("send");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn history(&self) -> Vec<Value> {
        let r = common::http()
            .get(self.s.url("/api/alt-text"))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Vec<Value>>().await.expect("json")
    }

    async fn usage(&self) -> Vec<easel::usage::UsageRecord> {
        // Charges and usage records commit in the background; listing waits for them.
        self.s
            .running
            .as_ref()
            .expect("running")
            .services()
            .usage
            .list(&self.account, Default::default(), None, 100)
            .await
            .expect("usage")
    }

    fn balance(&self) -> i64 {
        self.s
            .running
            .as_ref()
            .expect("running")
            .services()
            .ledger
            .balance(&self.account)
            .0
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn the_local_model_writes_alt_text_end_to_end() {
    let t = setup("").await;
    let (status, v) = t.upload(png(64, 48), &[("max_chars", "125")]).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["alt_text"], tiny_alt());
    assert_eq!(v["decorative"], false);
    assert_eq!(v["language"], "en");
    assert_eq!(v["model"], "local/blip-tiny");
    assert_eq!(v["provider"], "local");
    assert_eq!(v["credits"], 0.0);
    assert!(v.get("text_in_image").is_none(), "{v}");
    let id = v["id"].as_str().expect("id").to_string();

    // JSON with base64, a data: URI, and a length limit that cuts at a word.
    let jpeg = encoded(300, 200, image::ImageFormat::Jpeg);
    let (status, v) = t
        .post("/v1/alt-text", json!({"image_base64": b64(&jpeg)}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["alt_text"], tiny_alt());
    let uri = format!("data:image/jpeg;base64,{}", b64(&jpeg));
    let (status, v) = t
        .post(
            "/v1/alt-text",
            json!({"image_base64": uri, "max_chars": 20, "language": "en-GB"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["alt_text"], "A red bicycle leans");
    assert_eq!(v["language"], "en-GB");

    // The local model writes English only.
    let (status, v) = t
        .post(
            "/v1/alt-text",
            json!({"image_base64": b64(&jpeg), "language": "de"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(code(&v), "language_unavailable");
    assert!(message(&v).contains("English only"), "{v}");

    // Recorded (alt_text class), newest first, and metered (usage class, 0 credits).
    let h = t.history().await;
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[2]["id"], id.as_str());
    assert_eq!(h[0]["alt_text"], "A red bicycle leans");
    assert!(h.iter().all(|r| r["image_url"].is_null()));
    let usage = t.usage().await;
    let ok: Vec<_> = usage.iter().filter(|u| u.status == 200).collect();
    assert_eq!(ok.len(), 3, "{usage:?}");
    assert!(ok.iter().all(|u| u.endpoint == "alt_text"
        && u.provider == "local"
        && u.model == "local/blip-tiny"
        && u.credits == 0));
    t.s.stop().await;
}

#[tokio::test]
async fn quantised_gguf_and_f16_weights_serve_the_same_alt_text() {
    for store in [
        Store::Gguf(candle_core::quantized::GgmlDType::Q8_0),
        Store::SafetensorsF16,
    ] {
        let t = setup_with(
            &format!("{}\n[alt_text]\nmodel = \"local\"\n", common::FAST),
            store,
        )
        .await;
        let (status, v) = t.upload(png(40, 40), &[]).await;
        assert_eq!(status, StatusCode::OK, "{store:?}: {v}");
        assert_eq!(v["alt_text"], tiny_alt(), "{store:?}");
        t.s.stop().await;
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_nothing_is_stored() {
    let t = setup("max_image_bytes = 200000\n").await;
    let balance = t.balance();
    let jpeg = encoded(200, 200, image::ImageFormat::Jpeg);
    let cases: Vec<(&str, Value, StatusCode, &str, &str)> = vec![
        (
            "truncated JPEG",
            json!({"image_base64": b64(&jpeg[..jpeg.len() / 2])}),
            StatusCode::BAD_REQUEST,
            "invalid_image",
            "cannot be read",
        ),
        (
            "PNG bomb",
            json!({"image_base64": b64(&common::png_bomb(100_000, 100_000))}),
            StatusCode::BAD_REQUEST,
            "image_too_many_pixels",
            "100000×100000",
        ),
        (
            "zero bytes",
            json!({"image_base64": ""}),
            StatusCode::BAD_REQUEST,
            "empty_image",
            "empty",
        ),
        (
            "SVG",
            json!({"image_base64": b64(b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")}),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
            "SVG",
        ),
        (
            "too many bytes",
            json!({"image_base64": b64(&encoded(600, 600, image::ImageFormat::Bmp))}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            "limit is 200000 bytes",
        ),
        (
            "not base64",
            json!({"image_base64": "%%%"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "base64",
        ),
        (
            "no image",
            json!({"language": "en"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "send the image",
        ),
        (
            "two images",
            json!({"image_base64": b64(&jpeg), "image_url": "https://example.com/a.png"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "not both",
        ),
        (
            "unknown field",
            json!({"image_base64": b64(&jpeg), "lang": "de"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "lang",
        ),
        (
            "bad language",
            json!({"image_base64": b64(&jpeg), "language": "english please"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "BCP-47",
        ),
        (
            "context too long",
            json!({"image_base64": b64(&jpeg), "context": "x".repeat(2049)}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "2048 bytes",
        ),
        (
            "too many keywords",
            json!({"image_base64": b64(&jpeg), "keywords": vec!["k"; 11]}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "at most 10",
        ),
        (
            "bad style",
            json!({"image_base64": b64(&jpeg), "style": "poetic"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "style",
        ),
        (
            "zero length",
            json!({"image_base64": b64(&jpeg), "max_chars": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "max_chars",
        ),
        (
            "unknown model",
            json!({"image_base64": b64(&jpeg), "model": "no-such-model"}),
            StatusCode::NOT_FOUND,
            "model_not_found",
            "no-such-model",
        ),
    ];
    for (what, body, status, want_code, words) in cases {
        let (got, v) = t.post("/v1/alt-text", body).await;
        assert_eq!(got, status, "{what}: {v}");
        assert_eq!(code(&v), want_code, "{what}: {v}");
        assert!(message(&v).contains(words), "{what}: {v}");
    }
    // Broken JSON and a body that is not JSON at all.
    let r = common::http()
        .post(t.s.url("/v1/alt-text"))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .body("{\"image_base64\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.expect("json");
    assert_eq!(code(&v), "invalid_json", "{v}");
    let r = common::http()
        .post(t.s.url("/v1/alt-text"))
        .bearer_auth(&t.key)
        .header("content-type", "text/plain")
        .body("a picture of a cat")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A multipart upload over the cap stops at the cap.
    let (status, v) = t
        .upload(encoded(600, 600, image::ImageFormat::Bmp), &[])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (status, v) = t.upload(png(10, 10), &[("colour", "red")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("colour"), "{v}");
    // No key, no alt text.
    let r = common::http()
        .post(t.s.url("/v1/alt-text"))
        .json(&json!({"image_base64": b64(&jpeg)}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Nothing was recorded or charged for any of it.
    assert!(t.history().await.is_empty());
    assert!(t.usage().await.is_empty());
    assert_eq!(t.balance(), balance);
    t.s.stop().await;
}

/// An image server on 127.0.0.2 (allowed by the test's allowlist): `/cat.png`, a
/// redirect to the loopback address 127.0.0.1, a chain of redirects, an HTML page
/// and an endless image.
async fn image_server() -> (String, u16, actix_web::dev::ServerHandle) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = listener.local_addr().expect("addr").port();
    let server = HttpServer::new(move || {
        App::new()
            .route(
                "/cat.png",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("image/png")
                        .body(png(32, 32))
                }),
            )
            .route(
                "/to-loopback",
                web::get().to(move || async move {
                    HttpResponse::Found()
                        .insert_header(("location", format!("http://127.0.0.1:{port}/cat.png")))
                        .finish()
                }),
            )
            .route(
                "/hop/{n}",
                web::get().to(|n: web::Path<u32>| async move {
                    let n = n.into_inner();
                    let next = if n == 0 {
                        "/cat.png".to_string()
                    } else {
                        format!("/hop/{}", n - 1)
                    };
                    HttpResponse::Found()
                        .insert_header(("location", next))
                        .finish()
                }),
            )
            .route(
                "/page",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("text/html")
                        .body("<html></html>")
                }),
            )
            .route(
                "/endless.png",
                web::get().to(|| async {
                    let chunk = web::Bytes::from(vec![0x89u8; 64 * 1024]);
                    let body = futures_util::stream::repeat_with(move || {
                        Ok::<_, std::io::Error>(chunk.clone())
                    });
                    HttpResponse::Ok().content_type("image/png").streaming(body)
                }),
            )
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.2:{port}"), port, handle)
}

#[tokio::test]
async fn urls_are_fetched_only_from_public_or_allowed_addresses() {
    let t =
        setup("url_allowlist = [\"127.0.0.2\"]\nmax_image_bytes = 1000000\nurl_timeout = \"5s\"\n")
            .await;
    let (base, port, server) = image_server().await;

    let url = format!("{base}/cat.png");
    let (status, v) = t.post("/v1/alt-text", json!({"image_url": url})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["alt_text"], tiny_alt());
    let (status, v) = t
        .post(
            "/v1/alt-text",
            json!({"image_url": format!("{base}/hop/2")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "three redirects are followed: {v}");

    let refused = [
        (format!("http://127.0.0.1:{port}/cat.png"), "loopback"),
        ("http://10.0.0.1/cat.png".to_string(), "private"),
        (format!("http://[::1]:{port}/cat.png"), "loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/cat.png"),
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "metadata",
        ),
        (format!("http://localhost:{port}/cat.png"), "resolves to"),
        (format!("{base}/to-loopback"), "loopback"),
        (format!("{base}/hop/3"), "more than 3"),
        ("ftp://example.com/cat.png".to_string(), "http"),
        (
            format!("http://user:pw@127.0.0.2:{port}/cat.png"),
            "password",
        ),
    ];
    for (url, why) in refused {
        let (status, v) = t.post("/v1/alt-text", json!({"image_url": url})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {v}");
        assert_eq!(code(&v), "url_refused", "{url}: {v}");
        assert!(message(&v).contains(why), "{url}: {v}");
    }
    let (status, v) = t
        .post("/v1/alt-text", json!({"image_url": format!("{base}/page")}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("text/html"), "{v}");
    // An endless body stops at the cap, long before the deadline.
    let started = Instant::now();
    let (status, v) = t
        .post(
            "/v1/alt-text",
            json!({"image_url": format!("{base}/endless.png")}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(code(&v), "image_too_large", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Only the two that worked are recorded, with the URL they came from.
    let h = t.history().await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[1]["image_url"], format!("{base}/cat.png"));
    server.stop(false).await;
    t.s.stop().await;
}

/// A server whose alt text comes from the mock's vision model.
async fn provider_setup(mock: &Mock, keys: &std::path::Path, alt: &str) -> Setup {
    let extra = format!(
        "{}\n[alt_text]\nmodel = \"{alt}\"\ndownscale_to = 256\n",
        catalog(mock, keys)
    );
    let t = setup_with(&extra, Store::Safetensors).await;
    let ledger = &t.s.running.as_ref().expect("running").services().ledger;
    ledger
        .post(&t.account, EntryKind::Grant, 10 * MICRO, Posting::default())
        .await
        .expect("grant");
    t
}

#[tokio::test]
async fn a_provider_vision_model_writes_alt_text_metered_in_credits() {
    let mock = Mock::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let t = provider_setup(&mock, keys.path(), "gpt-test").await;
    let before = t.balance();
    let (status, v) = t
        .upload(
            png(1200, 600),
            &[
                ("language", "de"),
                ("context", "Summer sale page"),
                ("keywords", "sale,window"),
                ("style", "ecommerce"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // The model's "Image of" opening is gone; its JSON fields are read.
    assert_eq!(v["alt_text"], "A red SALE sign in a shop window (de)");
    assert_eq!(v["text_in_image"], "SALE");
    assert_eq!(v["language"], "de");
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["provider"], "openai");
    // 100 input and 20 output tokens at 1 and 2 USD per million, 1000 credits a USD.
    assert_eq!(v["credits"], 0.14);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(before - t.balance(), 140_000);

    // What the provider saw: the prompt with the options, and the image scaled down
    // to 256 px and re-encoded as JPEG.
    let seen = mock.seen();
    let call = seen.last().expect("a call");
    let system = call.body["messages"][0]["content"]
        .as_str()
        .expect("system");
    assert!(
        system.contains("`de`") && system.contains("sale, window"),
        "{system}"
    );
    assert!(
        system.contains("Summer sale page") && system.contains("product"),
        "{system}"
    );
    let url = call.body["messages"][1]["content"][1]["image_url"]["url"]
        .as_str()
        .expect("image part");
    let data = url
        .strip_prefix("data:image/jpeg;base64,")
        .expect("jpeg data uri");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    let sent = image::load_from_memory(&bytes).expect("decodes");
    assert_eq!((sent.width(), sent.height()), (256, 128));
    assert_eq!(call.body["store"], false, "privacy option sent");

    let h = t.history().await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["credits"], 0.14);
    let usage = t.usage().await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].endpoint, "alt_text");
    assert_eq!((usage[0].input_tokens, usage[0].output_tokens), (100, 20));
    t.s.stop().await;
    mock.stop().await;
}

#[tokio::test]
async fn without_a_reachable_provider_the_local_model_stands_in_for_english() {
    let mock = Mock::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    // `hidden` routes only to a connection with no key.
    let t = provider_setup(&mock, keys.path(), "hidden").await;
    let (status, v) = t.upload(png(30, 30), &[]).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["provider"], "local");
    assert_eq!(v["alt_text"], tiny_alt());
    let (status, v) = t.upload(png(30, 30), &[("language", "fr")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        message(&v).contains("no provider can serve `hidden`"),
        "{v}"
    );
    // A model the request names is not swapped for the local one.
    let (status, v) = t.upload(png(30, 30), &[("model", "hidden")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // Nor is one without vision accepted.
    let (status, v) = t.upload(png(30, 30), &[("model", "solo")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(code(&v), "model_not_capable");
    assert_eq!(mock.seen().len(), 0);
    t.s.stop().await;
    mock.stop().await;
}

#[tokio::test]
async fn a_batch_answers_every_item_in_order() {
    let t = setup("").await;
    let items: Vec<Value> = vec![
        json!({"image_base64": b64(&png(20, 20))}),
        json!({"image_base64": "%%%"}),
        json!({"image_url": "http://127.0.0.1/x.png"}),
        json!({"image_base64": b64(&png(20, 20)), "max_chars": 5}),
    ];
    let (status, v) = t
        .post(
            "/v1/alt-text/batch",
            json!({"items": items, "max_chars": 13}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 4);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
    }
    assert_eq!(
        data[0]["result"]["alt_text"], "A red bicycle",
        "batch default applies"
    );
    assert_eq!(data[1]["error"]["code"], "invalid_field");
    assert_eq!(data[2]["error"]["code"], "url_refused");
    assert_eq!(
        data[3]["result"]["alt_text"], "A red",
        "the item's own option wins"
    );
    let many: Vec<Value> = (0..51)
        .map(|_| json!({"image_url": "https://example.com/a.png"}))
        .collect();
    let (status, v) = t.post("/v1/alt-text/batch", json!({"items": many})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("1 to 50"), "{v}");
    t.s.stop().await;
}

#[tokio::test]
async fn retention_zero_keeps_no_alt_text() {
    let t = setup("\n[retention]\nalt_text = \"0\"\n").await;
    let (status, v) = t.upload(png(20, 20), &[]).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(t.history().await.is_empty());
    // The request itself is still metered.
    assert_eq!(t.usage().await.len(), 1);
    t.s.stop().await;
}

#[tokio::test]
async fn a_missing_local_model_says_how_to_install_one() {
    let s = TestServer::start(&format!(
        "{}\n[alt_text]\nmodel = \"local\"\n[local_model]\ndir = \"nowhere/blip-large\"\n",
        common::FAST
    ))
    .await;
    let (_, key) = s.member_with_key("bo@example.com", PASSWORD).await;
    let r = common::http()
        .post(s.url("/v1/alt-text"))
        .bearer_auth(&key)
        .json(&json!({"image_base64": b64(&png(10, 10))}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = r.json().await.expect("json");
    assert_eq!(code(&v), "local_model_missing", "{v}");
    assert!(message(&v).contains("easel models pull"), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn a_full_local_queue_answers_503_with_retry_after() {
    // The tiny model is too quick to be caught in flight, so the queue is sized to
    // let nothing in.
    let t = setup_local(
        &format!("{}\n[alt_text]\nmodel = \"local\"\n", common::FAST),
        Store::Safetensors,
        "queue = 0\n",
    )
    .await;
    let r = common::http()
        .post(t.s.url("/v1/alt-text"))
        .bearer_auth(&t.key)
        .json(&json!({"image_base64": b64(&png(10, 10))}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "2");
    let v: Value = r.json().await.expect("json");
    assert_eq!(code(&v), "local_model_busy", "{v}");
    // The refused request's usage record is written before the database closes,
    // without waiting out the drain limit.
    let started = Instant::now();
    t.s.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

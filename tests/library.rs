//! The asset library over real HTTP with a real data dir: sealed blobs on disk, the
//! quota, isolation between accounts, hostile input, deletion freeing space, alt text
//! for assets (the local tiny BLIP), saving generated images, the export, erasure,
//! the upkeep job, `easel library verify`, and a crash in the middle of an upload.

mod common;

use common::TestServer;
use common::api::Browser;
use easel::local_model::fixture::{Store, TINY_CAPTION, write_tiny};
use easel::privacy::Job;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

const PASSWORD: &str = "correct horse battery";

/// Pixels of noise (which no codec compresses), from a seed.
fn noise(w: u32, h: u32, seed: u32) -> image::RgbImage {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    image::RgbImage::from_fn(w, h, |_, _| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let b = x.to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    })
}

fn encode(img: image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    encode(noise(w, h, seed), image::ImageFormat::Png)
}

/// A JPEG carrying an EXIF segment and a comment with text that must never reach the disk.
fn jpeg_with_exif(secret: &str) -> Vec<u8> {
    let jpeg = encode(noise(640, 480, 7), image::ImageFormat::Jpeg);
    let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec();
    // One ASCII entry (Make) pointing at the secret after the IFD.
    let text = format!("{secret}\0");
    tiff.extend_from_slice(&0x010Fu16.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&(text.len() as u32).to_le_bytes());
    tiff.extend_from_slice(&26u32.to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(text.as_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let comment = format!("taken by {secret}");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((comment.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn bytes_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

struct Setup {
    s: TestServer,
    account: String,
    key: String,
    _model: tempfile::TempDir,
}

/// A server whose alt text is the local tiny model, with a member and her key;
/// `extra` lands in the `[library]` section.
async fn setup(library: &str) -> Setup {
    let model = tempfile::tempdir().expect("tempdir");
    let dir = model.path().join("blip-tiny");
    write_tiny(&dir, Store::Safetensors).expect("tiny model");
    let config = format!(
        "{}\n[alt_text]\nmodel = \"local\"\n[local_model]\ndir = \"{}\"\n[library]\n{library}\n",
        common::FAST,
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

struct Got {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
}

impl Setup {
    fn blobs(&self) -> PathBuf {
        self.s.data_dir().join("blobs")
    }

    /// Uploads files (name, bytes, declared type) on `key`.
    async fn upload_as(&self, key: &str, files: Vec<(&str, Vec<u8>, &str)>, tags: &str) -> Got {
        let mut form = reqwest::multipart::Form::new();
        if !tags.is_empty() {
            form = form.text("tags", tags.to_string());
        }
        for (name, bytes, mime) in files {
            let part = reqwest::multipart::Part::bytes(bytes)
                .file_name(name.to_string())
                .mime_str(mime)
                .expect("mime");
            form = form.part("file", part);
        }
        let r = common::http()
            .post(self.s.url("/api/assets"))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        Self::got(r).await
    }

    async fn upload(&self, files: Vec<(&str, Vec<u8>, &str)>) -> Got {
        self.upload_as(&self.key, files, "").await
    }

    /// Uploads one file and returns its asset.
    async fn one(&self, name: &str, bytes: Vec<u8>) -> Value {
        let g = self.upload(vec![(name, bytes, "image/png")]).await;
        assert_eq!(g.status, StatusCode::CREATED, "{}", g.json());
        g.json()["assets"][0].clone()
    }

    async fn got(r: reqwest::Response) -> Got {
        Got {
            status: r.status(),
            headers: r.headers().clone(),
            bytes: r.bytes().await.expect("body").to_vec(),
        }
    }

    async fn call_as(&self, key: &str, m: reqwest::Method, path: &str, body: Option<Value>) -> Got {
        let mut req = common::http().request(m, self.s.url(path)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::got(req.send().await.expect("send")).await
    }

    async fn get(&self, path: &str) -> Got {
        self.call_as(&self.key, reqwest::Method::GET, path, None)
            .await
    }

    async fn list(&self) -> Value {
        let g = self.get("/api/assets").await;
        assert_eq!(g.status, StatusCode::OK);
        g.json()
    }
}

#[tokio::test]
async fn uploaded_bytes_come_back_equal_and_the_files_on_disk_are_sealed() {
    let t = setup("").await;
    let secret = "SecretCam-9000";
    let jpeg = jpeg_with_exif(secret);
    let png = png(300, 200, 1);
    let g = t
        .upload_as(
            &t.key,
            vec![
                ("holiday-photo-of-ada.jpg", jpeg.clone(), "image/jpeg"),
                ("shop-window-ada.png", png.clone(), "image/png"),
            ],
            "Summer, shop",
        )
        .await;
    assert_eq!(g.status, StatusCode::CREATED, "{}", g.json());
    let assets = g.json()["assets"].as_array().expect("assets").clone();
    assert_eq!(assets.len(), 2);
    let (a, b) = (&assets[0], &assets[1]);
    assert_eq!(a["name"], "holiday-photo-of-ada.jpg");
    assert_eq!(a["media_type"], "image/jpeg");
    assert_eq!(
        (a["width"].as_u64(), a["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert_eq!(a["bytes"].as_u64(), Some(jpeg.len() as u64));
    assert_eq!(a["tags"], json!(["summer", "shop"]));
    assert_eq!(a["source"]["kind"], "upload");
    assert_eq!(b["media_type"], "image/png");

    for (asset, bytes) in [(a, &jpeg), (b, &png)] {
        let id = asset["id"].as_str().expect("id");
        let g = t.get(&format!("/api/assets/{id}/original")).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(&g.bytes, bytes, "the original comes back byte for byte");
        assert_eq!(g.headers.get_all("content-length").iter().count(), 1);
        assert_eq!(
            g.headers["content-length"],
            bytes.len().to_string().as_str()
        );
        assert_eq!(
            g.headers["content-type"],
            asset["media_type"].as_str().expect("type")
        );
        let etag = g.headers["etag"].to_str().expect("etag").to_string();
        // A second fetch with the ETag is answered 304 without a body.
        let again = common::http()
            .get(t.s.url(&format!("/api/assets/{id}/original")))
            .bearer_auth(&t.key)
            .header("if-none-match", etag)
            .send()
            .await
            .expect("send");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let thumb = t.get(&format!("/api/assets/{id}/thumbnail")).await;
        assert_eq!(thumb.status, StatusCode::OK);
        let img = image::load_from_memory(&thumb.bytes).expect("thumbnail decodes");
        assert_eq!(img.width().max(img.height()), 256);
    }

    // On disk: two blobs of two files each, none of which shows the plaintext.
    let files = files_under(&t.blobs());
    assert_eq!(files.len(), 4, "{files:?}");
    for f in &files {
        let data = std::fs::read(f).expect("read");
        let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
        // Magic numbers sit at the start of a file. (Anywhere inside, a 3- or 4-byte
        // pattern turns up in random ciphertext by chance now and then.)
        assert!(
            !data.starts_with(&[0xFF, 0xD8, 0xFF]),
            "JPEG magic in {f:?}"
        );
        assert!(!data.starts_with(b"\x89PNG"), "PNG magic in {f:?}");
        // No run of the plaintext anywhere: the JPEG's header with its EXIF segment,
        // and 32-byte pieces from all through both images.
        assert!(!has(&jpeg[..64]), "the JPEG's header (with EXIF) in {f:?}");
        for plain in [&jpeg, &png] {
            for at in (0..plain.len() - 32).step_by(plain.len() / 16) {
                assert!(!has(&plain[at..at + 32]), "plaintext at {at} in {f:?}");
            }
        }
        assert!(
            !has(b"Exif\0\0") && !has(b"taken by"),
            "EXIF/comment in {f:?}"
        );
        assert!(!has(secret.as_bytes()), "EXIF text in {f:?}");
        assert!(
            !has(b"holiday-photo") && !has(b"shop-window"),
            "file name in {f:?}"
        );
        let name = f.to_string_lossy();
        assert!(
            !name.contains("holiday") && !name.contains(".jpg"),
            "{name}"
        );
        // Nothing is written in the clear at the start but the stream header.
        assert_eq!(&data[..4], b"ESS1");
    }
    assert!(
        files_under(&t.blobs().join(".tmp")).is_empty(),
        "no temporary file stays"
    );

    // Listing: filter by tag, search by name, sort by size.
    let l = t
        .get("/api/assets?tag=summer&sort=bytes&order=asc")
        .await
        .json();
    assert_eq!(l["total"], 2);
    let sizes: Vec<u64> = l["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["bytes"].as_u64().expect("bytes"))
        .collect();
    assert!(sizes[0] <= sizes[1], "{sizes:?}");
    let l = t.get("/api/assets?q=HOLIDAY").await.json();
    assert_eq!(l["total"], 1);
    assert_eq!(l["items"][0]["id"], a["id"]);
    assert!(l["used_bytes"].as_u64().expect("used") > (jpeg.len() + png.len()) as u64);
    let l = t.get("/api/assets?tag=nope").await.json();
    assert_eq!(l["total"], 0);
    let l = t.get("/api/assets?limit=1&offset=1").await.json();
    assert_eq!(
        (l["total"].as_u64(), l["items"].as_array().map(Vec::len)),
        (Some(2), Some(1))
    );

    // Rename and tag.
    let id = a["id"].as_str().expect("id");
    let g = t
        .call_as(
            &t.key,
            reqwest::Method::PATCH,
            &format!("/api/assets/{id}"),
            Some(json!({"name": "beach.jpg", "tags": ["Beach", " beach ", "red"]})),
        )
        .await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.json());
    assert_eq!(g.json()["name"], "beach.jpg");
    assert_eq!(g.json()["tags"], json!(["beach", "red"]));

    // Several at once as one ZIP, made while it is sent.
    let ids = format!(
        "{},{}",
        a["id"].as_str().expect("a"),
        b["id"].as_str().expect("b")
    );
    let g = t.get(&format!("/api/assets/zip?ids={ids}")).await;
    assert_eq!(g.status, StatusCode::OK);
    let mut zip = zip::ZipArchive::new(Cursor::new(g.bytes)).expect("a zip");
    let mut beach = Vec::new();
    zip.by_name("beach.jpg")
        .expect("beach.jpg")
        .read_to_end(&mut beach)
        .expect("read");
    assert_eq!(beach, jpeg);
    let mut shop = Vec::new();
    zip.by_name("shop-window-ada.png")
        .expect("png")
        .read_to_end(&mut shop)
        .expect("read");
    assert_eq!(shop, png);
    t.s.stop().await;
}

#[tokio::test]
async fn another_account_sees_none_of_it_and_the_same_file_is_unlinkable() {
    let t = setup("").await;
    let (_, bob) = t.s.member_with_key("bob@example.com", PASSWORD).await;
    let bytes = png(64, 64, 3);
    let mine = t.one("a.png", bytes.clone()).await;
    let id = mine["id"].as_str().expect("id");
    for (m, path, body) in [
        (reqwest::Method::GET, format!("/api/assets/{id}"), None),
        (
            reqwest::Method::GET,
            format!("/api/assets/{id}/original"),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/api/assets/{id}/thumbnail"),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/api/assets/zip?ids={id}"),
            None,
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/assets/{id}"),
            Some(json!({"name": "x.png"})),
        ),
        (reqwest::Method::DELETE, format!("/api/assets/{id}"), None),
        (
            reqwest::Method::POST,
            "/api/assets/delete".to_string(),
            Some(json!({"ids": [id]})),
        ),
    ] {
        let g = t.call_as(&bob, m.clone(), &path, body).await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{m} {path}: {}", g.json());
    }
    let g = t
        .call_as(&bob, reqwest::Method::GET, "/api/assets", None)
        .await;
    assert_eq!(g.json()["total"], 0);
    // Still there for its owner.
    assert_eq!(
        t.get(&format!("/api/assets/{id}")).await.status,
        StatusCode::OK
    );

    // Bob uploads the very same bytes: his blob has another name and another folder.
    let g = t
        .upload_as(&bob, vec![("a.png", bytes, "image/png")], "")
        .await;
    assert_eq!(g.status, StatusCode::CREATED);
    let names: Vec<String> = files_under(&t.blobs())
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".thumb"))
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_ne!(names[0], names[1]);
    // A key without the assets scope is refused.
    let running = t.s.app();
    let (_, narrow) = running
        .services()
        .keys
        .create(
            &t.account,
            easel::auth::Role::Member,
            easel::keys::NewKey {
                name: "chat only".into(),
                scopes: Some(vec![easel::auth::Scope::Chat]),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("key");
    let g = t
        .call_as(narrow.expose(), reqwest::Method::GET, "/api/assets", None)
        .await;
    assert_eq!(g.status, StatusCode::FORBIDDEN);
    t.s.stop().await;
}

#[tokio::test]
async fn the_quota_is_enforced_and_a_refused_upload_leaves_nothing() {
    // 1 MiB: one 420×420 noise PNG (~530 KB) fits, a second does not.
    let t = setup("quota_mib = 1").await;
    let first = png(420, 420, 1);
    t.one("first.png", first.clone()).await;
    let before = files_under(&t.blobs());
    let g = t
        .upload(vec![("second.png", png(420, 420, 2), "image/png")])
        .await;
    assert_eq!(g.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", g.json());
    assert_eq!(g.json()["error"]["code"], "quota_exceeded");
    let msg = g.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("quota_mib"), "{msg}");
    assert_eq!(t.list().await["total"], 1);
    assert_eq!(
        files_under(&t.blobs()),
        before,
        "no file of the refused upload stays"
    );
    // The same content again costs no storage, so it is allowed.
    let g = t.upload(vec![("again.png", first, "image/png")]).await;
    assert_eq!(g.status, StatusCode::CREATED, "{}", g.json());
    assert_eq!(t.list().await["total"], 2);
    t.s.stop().await;
}

#[tokio::test]
async fn deleting_frees_the_disk_space_when_the_last_reference_goes() {
    let t = setup("").await;
    let shared = png(200, 200, 5);
    let a = t.one("a.png", shared.clone()).await;
    let b = t.one("b.png", shared).await;
    let c = t.one("c.png", png(200, 200, 6)).await;
    let full = bytes_under(&t.blobs());
    assert_eq!(
        files_under(&t.blobs()).len(),
        4,
        "two blobs: a and b share one"
    );

    let del = |id: &Value| format!("/api/assets/{}", id["id"].as_str().expect("id"));
    let g = t
        .call_as(&t.key, reqwest::Method::DELETE, &del(&a), None)
        .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.json()["freed_bytes"], 0, "b still uses the blob");
    assert_eq!(bytes_under(&t.blobs()), full);
    assert_eq!(
        t.get(&format!("{}/original", del(&b))).await.status,
        StatusCode::OK
    );

    // A bulk delete naming an unknown id deletes nothing.
    let g = t
        .call_as(
            &t.key,
            reqwest::Method::POST,
            "/api/assets/delete",
            Some(json!({"ids": [b["id"], "0123456789abcdef01234567"]})),
        )
        .await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert_eq!(t.list().await["total"], 2);

    let g = t
        .call_as(
            &t.key,
            reqwest::Method::POST,
            "/api/assets/delete",
            Some(json!({"ids": [b["id"], c["id"]]})),
        )
        .await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.json());
    assert_eq!(g.json()["freed_bytes"].as_u64(), Some(full));
    assert_eq!(bytes_under(&t.blobs()), 0, "{:?}", files_under(&t.blobs()));
    let l = t.list().await;
    assert_eq!(
        (l["total"].as_u64(), l["used_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        t.get(&format!("{}/original", del(&b))).await.status,
        StatusCode::NOT_FOUND
    );
    t.s.stop().await;
}

#[tokio::test]
async fn hostile_names_types_and_images_are_handled_and_leave_nothing() {
    let t = setup("max_file_bytes = 200000\nmax_files = 2").await;
    // A path, markup and a right-to-left override in the name; a lying content type.
    let g = t
        .upload(vec![(
            "../../etc/<img src=x onerror=alert(1)>\u{202e}gnp.exe",
            png(40, 40, 1),
            "text/html",
        )])
        .await;
    assert_eq!(g.status, StatusCode::CREATED, "{}", g.json());
    let a = &g.json()["assets"][0];
    assert_eq!(a["name"], "<img src=x onerror=alert(1)>gnp.exe");
    assert_eq!(
        a["media_type"], "image/png",
        "the type comes from the bytes"
    );
    let id = a["id"].as_str().expect("id");
    let g = t
        .get(&format!("/api/assets/{id}/original?download=1"))
        .await;
    let cd = g.headers["content-disposition"]
        .to_str()
        .expect("ascii header");
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(!cd.contains('<') && !cd.contains('/'), "{cd}");
    assert_eq!(g.headers["content-type"], "image/png");
    assert_eq!(g.headers["x-content-type-options"], "nosniff");

    let before = files_under(&t.blobs());
    let bomb = common::png_bomb(100_000, 100_000);
    let jpeg = encode(noise(64, 64, 2), image::ImageFormat::Jpeg);
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec();
    for (what, bytes, mime, status, code) in [
        (
            "svg",
            svg,
            "image/png",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
        ),
        (
            "html",
            b"<!doctype html><p>hi".repeat(8),
            "image/png",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
        ),
        (
            "empty",
            Vec::new(),
            "image/png",
            StatusCode::BAD_REQUEST,
            "empty_image",
        ),
        (
            "truncated jpeg",
            jpeg[..jpeg.len() - 50].to_vec(),
            "image/jpeg",
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            "png bomb",
            bomb,
            "image/png",
            StatusCode::BAD_REQUEST,
            "image_too_many_pixels",
        ),
        (
            "over the size",
            png(400, 400, 3),
            "image/png",
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
        ),
    ] {
        let g = t.upload(vec![("x.png", bytes, mime)]).await;
        assert_eq!(g.status, status, "{what}: {}", g.json());
        assert_eq!(g.json()["error"]["code"], code, "{what}");
    }
    let g = t
        .upload(vec![
            ("1.png", png(8, 8, 1), "image/png"),
            ("2.png", png(8, 8, 2), "image/png"),
            ("3.png", png(8, 8, 3), "image/png"),
        ])
        .await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
    assert_eq!(g.json()["error"]["code"], "too_many_files");
    // Not multipart at all.
    let g = t
        .call_as(
            &t.key,
            reqwest::Method::POST,
            "/api/assets",
            Some(json!({"file": "x"})),
        )
        .await;
    assert_eq!(g.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // An id that is no id.
    let g = t.get("/api/assets/..%2F..%2Fetc/original").await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);

    // Only the two of the too-many upload that came before the limit went in.
    assert_eq!(t.list().await["total"], 3);
    let after: Vec<PathBuf> = files_under(&t.blobs());
    assert_eq!(after.len(), before.len() + 4, "{after:?}");
    assert!(files_under(&t.blobs().join(".tmp")).is_empty());
    t.s.stop().await;
}

#[tokio::test]
async fn alt_text_for_selected_assets_is_stored_on_them() {
    let t = setup("").await;
    let a = t.one("a.png", png(96, 64, 1)).await;
    let b = t.one("b.png", png(64, 96, 2)).await;
    let g = t
        .call_as(
            &t.key,
            reqwest::Method::POST,
            "/api/assets/alt-text",
            Some(json!({"ids": [a["id"], "0123456789abcdef01234567", b["id"]]})),
        )
        .await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.json());
    let out = g.json();
    let mut c = TINY_CAPTION.chars();
    let expected: String = c.next().expect("caption").to_uppercase().chain(c).collect();
    assert_eq!(out[0]["asset"]["alt_text"], expected.as_str());
    assert_eq!(out[0]["asset"]["alt_language"], "en");
    assert_eq!(out[1]["error"]["code"], "not_found", "{out}");
    assert_eq!(out[2]["asset"]["alt_text"], expected.as_str());
    let stored = t
        .get(&format!("/api/assets/{}", b["id"].as_str().expect("id")))
        .await;
    assert_eq!(stored.json()["alt_text"], expected.as_str());
    // A person can correct it.
    let g = t
        .call_as(
            &t.key,
            reqwest::Method::PATCH,
            &format!("/api/assets/{}", b["id"].as_str().expect("id")),
            Some(json!({"alt_text": "A red shoe", "alt_language": "en"})),
        )
        .await;
    assert_eq!(g.json()["alt_text"], "A red shoe");
    t.s.stop().await;
}

#[tokio::test]
async fn generated_images_are_saved_only_when_asked() {
    use base64::Engine;
    let mock = common::mock::Mock::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start(&common::mock::catalog(&mock, keys.path())).await;
    let (account, key) = s.member_with_key("ada@example.com", PASSWORD).await;
    s.app()
        .services()
        .ledger
        .post(
            &account,
            easel::ledger::EntryKind::Grant,
            1000 * easel::ledger::MICRO,
            easel::ledger::Posting::default(),
        )
        .await
        .expect("grant");
    let generate = |save: Value| {
        let (s, key) = (&s, &key);
        async move {
            let r = common::http()
                .post(s.url("/v1/images/generations"))
                .bearer_auth(key)
                .json(&json!({"model": "dalle-test", "prompt": "a red shoe", "n": 1, "save": save}))
                .send()
                .await
                .expect("send");
            (r.status(), r.json::<Value>().await.expect("json"))
        }
    };
    let (status, v) = generate(json!(true)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let id = v["data"][0]["asset_id"]
        .as_str()
        .expect("an asset id")
        .to_string();
    let made = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["b64_json"].as_str().expect("b64"))
        .expect("base64");
    let asked: Vec<_> = mock
        .seen()
        .into_iter()
        .filter(|seen| seen.path.ends_with("/images/generations"))
        .collect();
    assert_eq!(asked.len(), 1, "the provider was asked once");
    assert!(
        asked
            .iter()
            .all(|seen| !seen.body.to_string().contains("\"save\"")),
        "Easel's own option is never sent upstream"
    );
    let get = |path: String| {
        let (s, key) = (&s, &key);
        async move {
            common::http()
                .get(s.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .expect("send")
        }
    };
    let asset: Value = get(format!("/api/assets/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        asset["source"],
        json!({"kind": "generated", "model": "dalle-test"})
    );
    let original = get(format!("/api/assets/{id}/original"))
        .await
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(original.to_vec(), made);

    let (status, v) = generate(json!(false)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(v["data"][0].get("asset_id").is_none());
    let (status, _) = generate(json!("yes")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let list: Value = get("/api/assets".into()).await.json().await.expect("json");
    assert_eq!(
        list["total"], 1,
        "only the image asked to be saved was kept"
    );
    s.stop().await;
    mock.stop().await;
}

#[tokio::test]
async fn the_export_carries_the_files_and_erasure_removes_them() {
    let t = setup("").await;
    t.s.make_account("root@example.com", easel::auth::Role::Admin, PASSWORD)
        .await;
    let admin = Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let bytes = png(120, 80, 9);
    let asset = t.one("shelf.png", bytes.clone()).await;
    let id = asset["id"].as_str().expect("id");

    let ada = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let (status, zip_bytes) = ada.export(&t.s, "/api/privacy/export").await;
    assert_eq!(status, StatusCode::OK);
    let mut zip = zip::ZipArchive::new(Cursor::new(zip_bytes)).expect("zip");
    let mut lines = String::new();
    zip.by_name("assets.jsonl")
        .expect("assets.jsonl")
        .read_to_string(&mut lines)
        .expect("read");
    let meta: Value = serde_json::from_str(lines.trim()).expect("one line");
    assert_eq!(meta["id"], id);
    assert_eq!(meta["name"], "shelf.png");
    let mut file = Vec::new();
    zip.by_name(&format!("assets/{id}-shelf.png"))
        .expect("the file")
        .read_to_end(&mut file)
        .expect("read");
    assert_eq!(file, bytes, "the export holds the original, opened");

    // Erasure: the records, the data key and the folder go.
    assert!(
        t.blobs().join(&t.account).is_dir(),
        "her folder holds the file"
    );
    let a = admin
        .send(
            &t.s,
            reqwest::Method::POST,
            &format!("/api/admin/users/{}/deletion", t.account),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    t.s.clock
        .advance(std::time::Duration::from_secs(31 * 86_400));
    let run =
        t.s.app()
            .privacy()
            .run(Job::DeletionRequests)
            .await
            .expect("runs");
    assert!(run.ok, "{run:?}");
    // One asset record and its blob's record.
    assert_eq!(run.counts.get("assets").copied(), Some(2), "{run:?}");
    assert!(
        !t.blobs().join(&t.account).exists(),
        "the account's folder is gone"
    );
    t.s.stop().await;
}

#[tokio::test]
async fn verify_finds_tampering_and_the_upkeep_job_removes_orphans() {
    let t = setup("gc_grace = \"0s\"").await;
    let a = t.one("a.png", png(100, 100, 1)).await;
    t.one("b.png", png(100, 100, 2)).await;
    let library = &t.s.app().services().library;
    let report = library.verify().await.expect("verify");
    assert_eq!(
        (report.checked, report.problems.len(), report.orphans),
        (2, 0, 0),
        "{report:?}"
    );

    // An orphan (a file no asset names) and an abandoned upload.
    // In a folder of its own (blob addresses are random, so pick one no blob uses).
    let prefix = (0..=255u8)
        .map(|b| format!("{b:02x}"))
        .find(|p| !t.blobs().join(&t.account).join(p).exists())
        .expect("a free prefix");
    let dir = t.blobs().join(&t.account).join(&prefix);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join(prefix.repeat(32)), b"orphan").expect("orphan");
    std::fs::create_dir_all(t.blobs().join(".tmp")).expect("tmp");
    std::fs::write(t.blobs().join(".tmp").join("cut.part"), b"half").expect("part");
    assert_eq!(library.verify().await.expect("verify").orphans, 1);
    let run = t.s.app().privacy().run(Job::LibraryGc).await.expect("gc");
    assert!(run.ok, "{run:?}");
    assert_eq!(run.counts.get("orphan_files").copied(), Some(1), "{run:?}");
    assert_eq!(
        run.counts.get("abandoned_uploads").copied(),
        Some(1),
        "{run:?}"
    );
    assert!(!dir.exists(), "the emptied folder goes too");
    assert_eq!(t.list().await["total"], 2, "no asset was touched");
    assert_eq!(files_under(&t.blobs()).len(), 4);

    // One flipped byte in a's sealed original is found and named.
    let id = a["id"].as_str().expect("id");
    let stored = library.get(&t.account, id).await.expect("asset");
    let original = library
        .blobs()
        .path(
            &t.account,
            &stored.address,
            easel::library::blobs::Kind::Original,
        )
        .expect("path");
    let mut data = std::fs::read(&original).expect("read");
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    std::fs::write(&original, data).expect("write");
    let report = library.verify().await.expect("verify");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].contains(&stored.address), "{report:?}");
    assert!(report.problems[0].contains("altered"), "{report:?}");
    // A download of it is cut off rather than served altered: the connection ends
    // before the body does (before or after the headers, as the race goes).
    let got = async {
        common::http()
            .get(t.s.url(&format!("/api/assets/{id}/original")))
            .bearer_auth(&t.key)
            .send()
            .await?
            .bytes()
            .await
    }
    .await;
    assert!(got.is_err(), "the download is cut off, not served: {got:?}");
    t.s.stop().await;
}

/// A multipart upload whose body is sent as the test says: the part's head, then
/// whatever goes into the returned sender. The request never ends on its own.
fn streaming_upload(
    url: String,
    key: String,
) -> (
    tokio::sync::mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let task = tokio::spawn(async move {
        common::http()
            .post(url)
            .bearer_auth(key)
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(reqwest::Body::wrap_stream(Chunks(rx)))
            .send()
            .await
    });
    (tx, task)
}

/// The chunks sent to a channel, as a request body.
struct Chunks(tokio::sync::mpsc::Receiver<Vec<u8>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}

const PART_HEAD: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n";

/// Waits until an upload's temporary file holds data.
async fn wait_for_part(tmp: &Path, p: &common::Process) -> PathBuf {
    for _ in 0..1500 {
        if let Some(p) = files_under(tmp)
            .into_iter()
            .find(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > 1000)
        {
            return p;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "no upload in flight under {}; {:?}; log:\n{}",
        tmp.display(),
        files_under(tmp.parent().expect("blobs")),
        p.log_text()
    );
}

#[tokio::test]
async fn a_client_leaving_or_a_crash_mid_upload_leaves_no_partial_asset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::write_config(
        dir.path(),
        &format!("{}\n[library]\ngc_grace = \"0s\"\n", common::FAST),
    );
    let cfg = config.to_str().expect("path");
    let (code, _, err) = common::run_with_stdin(
        &[
            "--config",
            cfg,
            "user",
            "create",
            "--email",
            "ada@example.com",
            "--admin",
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert_eq!(code, 0, "{err}");
    let key = common::cli_key(cfg, "ada@example.com");
    let big = png(900, 900, 4);
    let tmp = dir.path().join("data").join("blobs").join(".tmp");

    let p = common::Process::serve(&config, &[]);
    // The client leaves part way: the temporary file goes with the request. (The
    // start-up catch-up of library_gc runs while this upload streams, with a grace of
    // 0 s: it must leave a live upload's file alone.)
    let (tx, task) = streaming_upload(p.url("/api/assets"), key.clone());
    tx.send(PART_HEAD.to_vec()).await.expect("send");
    tx.send(big[..300_000].to_vec()).await.expect("send");
    let part = wait_for_part(&tmp, &p).await;
    task.abort();
    drop(tx);
    for _ in 0..250 {
        if !part.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!part.exists(), "a cut-off upload's file is removed at once");
    // The start-up catch-up of library_gc has run and is recorded, so it is not due
    // again at the restart below: only the run this test asks for finds what the
    // crash leaves (without this wait, the restart's catch-up could take it first).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !p
        .log_text()
        .lines()
        .any(|l| l.contains("job finished") && l.contains("library_gc"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "library_gc never finished its catch-up:\n{}",
            p.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The server dies part way: nothing is visible after the restart, and the upkeep
    // job removes what was left.
    let (tx, task) = streaming_upload(p.url("/api/assets"), key.clone());
    tx.send(PART_HEAD.to_vec()).await.expect("send");
    tx.send(big[..300_000].to_vec()).await.expect("send");
    let part = wait_for_part(&tmp, &p).await;
    let mut p = p;
    p.signal(libc::SIGKILL);
    common::wait_exit(&mut p.child, std::time::Duration::from_secs(10));
    task.abort();
    assert!(part.exists(), "the crash left its temporary file");

    let p = common::Process::serve(&config, &[]);
    let http = common::http();
    let list: Value = http
        .get(p.url("/api/assets"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["total"], 0, "{list}");
    assert_eq!(list["used_bytes"], 0, "{list}");
    let (code, out, err) = common::run(&["--config", cfg, "library", "verify"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 asset blobs"), "{out}");

    let login: reqwest::Response = http
        .post(p.url("/api/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    let cookie = common::api::cookie_value(login.headers()["set-cookie"].to_str().expect("cookie"));
    let csrf = login.json::<Value>().await.expect("json")["csrf_token"]
        .as_str()
        .expect("csrf")
        .to_string();
    let run: Value = http
        .post(p.url("/api/admin/jobs/library_gc/run"))
        .header("cookie", format!("easel_session={cookie}"))
        .header("x-csrf-token", csrf)
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("json");
    assert_eq!(run["counts"]["abandoned_uploads"], 1, "{run}");
    assert!(!part.exists());

    // A whole upload still works, and verify reads it back.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(big.clone()).file_name("big.png"),
    );
    let r = http
        .post(p.url("/api/assets"))
        .bearer_auth(&key)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::CREATED);
    let (code, out, err) = common::run(&["--config", cfg, "library", "verify"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 asset blobs"), "{out}");
    assert!(p.stop().success());
}

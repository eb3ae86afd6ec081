//! `easel models pull` and `easel models list` against a model hub on 127.0.0.1 that
//! serves the tiny test model the way Hugging Face serves files (a file list with
//! checksums, then `resolve/main/FILE`).

mod common;

use actix_web::{App, HttpResponse, HttpServer, web};
use easel::local_model::fixture::{Store, write_tiny};
use sha2::Digest;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `files` as the repository `repo`; with `corrupt`, the weights differ from
/// the checksum the list gives.
async fn hub(
    files: HashMap<String, Vec<u8>>,
    corrupt: bool,
) -> (String, actix_web::dev::ServerHandle) {
    let listing: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, bytes)| {
            if name.ends_with(".safetensors") {
                serde_json::json!({"type": "file", "path": name, "size": bytes.len(),
                    "oid": "0000", "lfs": {"oid": hex(&sha2::Sha256::digest(bytes)), "size": bytes.len()}})
            } else {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {}\0", bytes.len()).as_bytes());
                h.update(bytes);
                serde_json::json!({"type": "file", "path": name, "size": bytes.len(), "oid": hex(&h.finalize())})
            }
        })
        .collect();
    let files = web::Data::new(files);
    let listing = web::Data::new(listing);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(files.clone())
            .app_data(listing.clone())
            .route(
                "/api/models/Salesforce/{repo}/tree/main",
                web::get().to(|l: web::Data<Vec<serde_json::Value>>| async move {
                    HttpResponse::Ok().json(l.get_ref())
                }),
            )
            .route(
                "/Salesforce/{repo}/resolve/main/{file}",
                web::get().to(
                    move |f: web::Data<HashMap<String, Vec<u8>>>,
                          p: web::Path<(String, String)>| async move {
                        let (_, file) = p.into_inner();
                        match f.get(&file) {
                            Some(b) => {
                                let mut b = b.clone();
                                if corrupt && file.ends_with(".safetensors") {
                                    let last = b.len() - 1;
                                    b[last] ^= 1;
                                }
                                HttpResponse::Ok().body(b)
                            }
                            None => HttpResponse::NotFound().finish(),
                        }
                    },
                ),
            )
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (base, handle)
}

fn tiny_files() -> HashMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny(dir.path(), Store::Safetensors).expect("tiny");
    ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                std::fs::read(dir.path().join(n)).expect("read"),
            )
        })
        .collect()
}

fn easel(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run easel")
}

/// Runs `easel ARGS` off the runtime (the hub mock runs on it) and returns its
/// stdout, after checking that it succeeded.
async fn pulled(config: &Path, args: &'static [&'static str]) -> String {
    let config = config.to_path_buf();
    let out = tokio::task::spawn_blocking(move || easel(&config, args))
        .await
        .expect("join");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
async fn models_pull_downloads_checks_and_quantises() {
    let (base, server) = hub(tiny_files(), false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::write_config(
        dir.path(),
        &format!("\n[local_model]\ndir = \"models/blip-large\"\nhub_url = \"{base}\"\n"),
    );
    let text = pulled(&config, &["models", "pull", "blip-large"]).await;
    assert!(text.contains("checksum verified"), "{text}");
    let model = dir.path().join("models/blip-large");
    assert!(model.join("model.safetensors").is_file());
    // It works: the same model loads and captions.
    let c = easel::local_model::Captioner::load(&model, "cpu").expect("loads");
    let rgb = image::RgbImage::new(8, 8);
    assert_eq!(
        c.caption(&rgb, 30).expect("caption"),
        easel::local_model::fixture::TINY_CAPTION
    );

    // Quantised: a GGUF file replaces the float weights, and it loads.
    let text = pulled(&config, &["models", "pull", "blip-base", "--quantized"]).await;
    assert!(text.contains("dir = "), "a hint to use it: {text}");
    let base_dir = dir.path().join("models/blip-base");
    assert!(base_dir.join("model-q4k.gguf").is_file());
    easel::local_model::Captioner::load(&base_dir, "cpu").expect("the GGUF model loads");
    assert!(!base_dir.join("model.safetensors").exists());

    let out = easel(&config, &["models", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("* blip-large"), "{text}");
    assert!(
        text.contains("blip-base") && text.contains(".gguf"),
        "{text}"
    );
    server.stop(false).await;
}

#[tokio::test]
async fn a_corrupted_download_is_refused_and_nothing_is_kept() {
    let (base, server) = hub(tiny_files(), true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::write_config(
        dir.path(),
        &format!("\n[local_model]\ndir = \"models/blip-large\"\nhub_url = \"{base}\"\n"),
    );
    let out =
        tokio::task::spawn_blocking(move || easel(&config, &["models", "pull", "blip-large"]))
            .await
            .expect("join");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("checksum"), "{err}");
    let model = dir.path().join("models/blip-large");
    assert!(!model.join("model.safetensors").exists());
    assert!(!model.join("model.safetensors.part").exists());
    let out = easel(
        &dir.path().join("easel.toml"),
        &["models", "pull", "blip-huge"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("blip-base, blip-large"));
    server.stop(false).await;
}

//! The web UI: plain files under `assets/`, embedded in the binary (the same bytes in
//! debug and release builds). `index.html` links each asset with `?v=<content hash>`,
//! so assets can be cached for a year and a new build is picked up at once.

use crate::http::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use std::collections::HashMap;
use std::sync::OnceLock;
use utoipa_actix_web::service_config::ServiceConfig;

#[derive(rust_embed::Embed)]
#[folder = "assets/"]
struct Assets;

/// Registers the UI routes (not part of the API document).
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/static/{file:.*}", web::get().to(asset));
}

struct Page {
    body: String,
    etag: String,
}

fn version_of(file: &str) -> Option<String> {
    Assets::get(file).map(|f| crate::crypto::hex(&f.metadata.sha256_hash()[..6]))
}

fn index_page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let template = Assets::get("index.html")
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .unwrap_or_default();
        // Replace every `{{asset:NAME}}` with `/static/NAME?v=HASH`.
        let mut body = String::with_capacity(template.len());
        let mut rest = template.as_str();
        while let Some(start) = rest.find("{{asset:") {
            body.push_str(&rest[..start]);
            let after = &rest[start + 8..];
            let Some(end) = after.find("}}") else { break };
            let name = &after[..end];
            let v = version_of(name).unwrap_or_default();
            body.push_str(&format!("/static/{name}?v={v}"));
            rest = &after[end + 2..];
        }
        body.push_str(rest);
        let etag = format!(
            "\"{}\"",
            crate::crypto::hex(&crate::crypto::sha256(body.as_bytes())[..8])
        );
        body.shrink_to_fit();
        Page { body, etag }
    })
}

fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

async fn index(req: HttpRequest) -> HttpResponse {
    let page = index_page();
    if not_modified(&req, &page.etag) {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, page.etag.clone()))
            .finish();
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::ETAG, page.etag.clone()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(page.body.as_str())
}

async fn asset(
    req: HttpRequest,
    file: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let name = file.into_inner();
    let found = Assets::get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no UI file named `{name}`")))?;
    let hash = crate::crypto::hex(&found.metadata.sha256_hash()[..6]);
    let etag = format!("\"{hash}\"");
    let cache = if query.get("v") == Some(&hash) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    if not_modified(&req, &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, cache))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .content_type(found.metadata.mimetype())
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache))
        .body(match found.data {
            // Embedded files are static: no copy per request.
            std::borrow::Cow::Borrowed(bytes) => web::Bytes::from_static(bytes),
            std::borrow::Cow::Owned(bytes) => web::Bytes::from(bytes),
        }))
}

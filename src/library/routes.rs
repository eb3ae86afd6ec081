//! The asset library's routes, under `/api/assets`. A browser session or an API key
//! with the `assets` scope; every asset is its owner's alone (another person's id is
//! answered 404, as an id that does not exist).

use super::blobs::Kind;
use super::{Asset, AssetSource, Library, Listing, MAX_BULK, Patch, Piece, Query, Sort};
use crate::alt_text::{AltText, AltTextRequest, Source};
use crate::auth::{Caller, Scoped, need};
use crate::http::{ApiError, is_multipart, multipart_error, rfc3339};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::io::Write;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(upload)
        .service(list)
        .service(zip_download)
        .service(delete_many)
        .service(describe)
        .service(one)
        .service(original)
        .service(thumbnail)
        .service(change)
        .service(delete_one);
}

/// An asset as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct AssetView {
    pub id: String,
    pub name: String,
    pub media_type: String,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub tags: Vec<String>,
    pub alt_text: Option<String>,
    pub alt_language: Option<String>,
    pub source: SourceView,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Asset> for AssetView {
    fn from(a: Asset) -> Self {
        AssetView {
            id: a.id,
            name: a.name,
            media_type: a.media_type,
            bytes: a.bytes,
            width: a.width,
            height: a.height,
            tags: a.tags,
            alt_text: a.alt_text,
            alt_language: a.alt_language,
            source: a.source.into(),
            created_at: rfc3339(a.created_ms),
            updated_at: rfc3339(a.updated_ms),
        }
    }
}

/// Where an asset came from: `{"kind": "upload"}`, `{"kind": "generated", "model"}`,
/// `{"kind": "skill", "skill", "run"}` or `{"kind": "imported"}`.
#[derive(Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceView {
    Upload,
    Generated { model: String },
    Skill { skill: String, run: String },
    Imported,
}

impl From<AssetSource> for SourceView {
    fn from(s: AssetSource) -> Self {
        match s {
            AssetSource::Upload => SourceView::Upload,
            AssetSource::Generated { model } => SourceView::Generated { model },
            AssetSource::Skill { skill, run } => SourceView::Skill { skill, run },
            AssetSource::Imported => SourceView::Imported,
        }
    }
}

/// Assets just stored.
#[derive(Serialize, ToSchema)]
pub struct Uploaded {
    pub assets: Vec<AssetView>,
}

/// Uploads one or more images (multipart: each file in a field `file`; optional
/// `tags` fields, comma-separated, before the files they apply to).
#[utoipa::path(tag = "assets", responses((status = 201, body = Uploaded), (status = 400), (status = 413), (status = 415)))]
#[post("/api/assets")]
async fn upload(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = caller.0;
    if !is_multipart(&req) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the images as multipart/form-data, each in a field named `file`",
        ));
    }
    let max_files = lib.config().max_files;
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let mut tags: Vec<String> = Vec::new();
    let mut stored = Vec::new();
    // Files already stored stay stored when a later one fails: each is whole, and
    // the answer says which ones went in.
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "tags" => {
                let mut text = Vec::new();
                while let Some(chunk) = field.next().await {
                    text.extend_from_slice(&chunk.map_err(multipart_error)?);
                    if text.len() > 2048 {
                        return Err(ApiError::bad_request("invalid_field", "`tags` is too long"));
                    }
                }
                let text = String::from_utf8_lossy(&text);
                tags.extend(text.split(',').map(str::to_string));
            }
            "file" => {
                if stored.len() == max_files {
                    return Err(ApiError::bad_request(
                        "too_many_files",
                        format!(
                            "send at most {max_files} files in one upload ([library] max_files); {} were stored",
                            stored.len()
                        ),
                    ));
                }
                let file_name = field
                    .content_disposition()
                    .and_then(|d| d.get_filename())
                    .unwrap_or_default()
                    .to_string();
                let (tx, job) = lib
                    .upload(
                        &caller.account,
                        file_name,
                        tags.clone(),
                        AssetSource::Upload,
                    )
                    .await?;
                let mut cut = None;
                while let Some(chunk) = field.next().await {
                    match chunk {
                        Ok(c) => {
                            // The sealing thread stopped (bad input): its answer says why.
                            if tx.send(Piece::Data(c)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            cut = Some(multipart_error(e));
                            break;
                        }
                    }
                }
                if cut.is_none() {
                    let _ = tx.send(Piece::End).await;
                }
                drop(tx);
                let done = job.finish().await;
                if let Some(e) = cut {
                    return Err(e);
                }
                stored.push(AssetView::from(done?));
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!(
                        "unknown field `{}`; send `file` and `tags`",
                        other.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
    }
    if stored.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "send at least one image in a field named `file`",
        ));
    }
    Ok(HttpResponse::Created().json(Uploaded { assets: stored }))
}

/// Listing parameters.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Comma-separated: only assets with every one of these tags.
    pub tag: Option<String>,
    /// Only assets whose name contains this.
    pub q: Option<String>,
    pub sort: Option<Sort>,
    /// `asc` or `desc` (default: newest, largest first; names A to Z).
    pub order: Option<String>,
    pub offset: Option<usize>,
    /// At most 200 (default 50).
    pub limit: Option<usize>,
}

/// One page of assets.
#[derive(Serialize, ToSchema)]
pub struct Page {
    pub items: Vec<AssetView>,
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Bytes the library takes (originals and thumbnails).
    pub used_bytes: u64,
    /// The quota, when there is one.
    pub quota_bytes: Option<u64>,
}

/// Lists the caller's assets.
#[utoipa::path(tag = "assets", params(("tag" = Option<String>, Query), ("q" = Option<String>, Query), ("sort" = Option<String>, Query), ("order" = Option<String>, Query), ("offset" = Option<usize>, Query), ("limit" = Option<usize>, Query)), responses((status = 200, body = Page)))]
#[get("/api/assets")]
async fn list(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    params: web::Query<ListParams>,
) -> Result<web::Json<Page>, ApiError> {
    let p = params.into_inner();
    let sort = p.sort.unwrap_or_default();
    let ascending = match p.order.as_deref() {
        None => sort == Sort::Name,
        Some("asc") => true,
        Some("desc") => false,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`order` must be asc or desc",
            ));
        }
    };
    let limit = p.limit.unwrap_or(50).clamp(1, 200);
    let offset = p.offset.unwrap_or(0);
    let q = Query {
        tags: p
            .tag
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_lowercase())
            .filter(|t| !t.is_empty())
            .collect(),
        name: p.q.filter(|q| !q.trim().is_empty()),
        sort,
        ascending,
        offset,
        limit,
    };
    let Listing {
        items,
        total,
        used_bytes,
        quota_bytes,
    } = lib.list(&caller.0.account, q).await?;
    Ok(web::Json(Page {
        items: items.into_iter().map(Into::into).collect(),
        total,
        offset,
        limit,
        used_bytes,
        quota_bytes,
    }))
}

/// One asset's metadata.
#[utoipa::path(tag = "assets", responses((status = 200, body = AssetView), (status = 404)))]
#[get("/api/assets/{id}")]
async fn one(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    id: web::Path<String>,
) -> Result<web::Json<AssetView>, ApiError> {
    Ok(web::Json(lib.get(&caller.0.account, &id).await?.into()))
}

#[derive(Deserialize)]
struct DownloadParams {
    /// `1`: offer it as a file to save rather than show it.
    download: Option<u8>,
}

/// `attachment` or `inline`, with the name as plain ASCII and as UTF-8 (RFC 6266).
fn disposition(inline: bool, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._- ()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let how = if inline { "inline" } else { "attachment" };
    format!("{how}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Streams one file of an asset, opened a chunk at a time on a blocking thread.
async fn serve(
    caller: &Caller,
    lib: &Library,
    req: &HttpRequest,
    id: &str,
    kind: Kind,
    download: bool,
) -> Result<HttpResponse, ApiError> {
    let (asset, mut reader) = lib.open(&caller.account, id, kind).await?;
    let etag = format!(
        "\"{}{}\"",
        &asset.address[..32],
        if kind == Kind::Thumbnail { "t" } else { "" }
    );
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"));
    if fresh {
        return Ok(res.finish());
    }
    let (media_type, len) = match kind {
        Kind::Original => (asset.media_type.clone(), reader.len()),
        Kind::Thumbnail => ("image/jpeg".to_string(), reader.len()),
    };
    res.content_type(media_type)
        .insert_header((
            header::CONTENT_DISPOSITION,
            disposition(!download, &asset.name),
        ))
        // Images are compressed already; gzip would only cost time.
        .insert_header((header::CONTENT_ENCODING, "identity"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    // Up to 2 MiB opened ahead, so opening overlaps with sending.
    let body = crate::http::body::from_writer(2, move |out| {
        let failed = |e: super::blobs::BlobError| {
            tracing::error!(error = %e, "an asset could not be read while it was sent");
            std::io::Error::other("the asset cannot be read")
        };
        // Runs of chunks read at once, opened on several threads and handed to the
        // response whole (1 MiB a piece, without a copy).
        let mut next = 0;
        while next < reader.chunks() {
            let (n, piece) = reader.read_run(next, 16, threads).map_err(failed)?;
            if n == 0 {
                break;
            }
            out.send_owned(piece)?;
            next += n as u64;
        }
        Ok(())
    });
    Ok(res.no_chunking(len).streaming(body))
}

/// Downloads an asset's original, as uploaded.
#[utoipa::path(tag = "assets", responses((status = 200), (status = 304), (status = 404)))]
#[get("/api/assets/{id}/original")]
async fn original(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<DownloadParams>,
) -> Result<HttpResponse, ApiError> {
    let download = params.download == Some(1);
    serve(&caller.0, &lib, &req, &id, Kind::Original, download).await
}

/// An asset's thumbnail (JPEG, 256 px on its longest side).
#[utoipa::path(tag = "assets", responses((status = 200), (status = 304), (status = 404)))]
#[get("/api/assets/{id}/thumbnail")]
async fn thumbnail(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    serve(&caller.0, &lib, &req, &id, Kind::Thumbnail, false).await
}

/// Renames an asset, sets its tags or its alt text.
#[utoipa::path(tag = "assets", request_body = Patch, responses((status = 200, body = AssetView), (status = 400), (status = 404)))]
#[patch("/api/assets/{id}")]
async fn change(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    id: web::Path<String>,
    body: web::Json<Patch>,
) -> Result<web::Json<AssetView>, ApiError> {
    let a = lib
        .update(&caller.0.account, &id, body.into_inner())
        .await?;
    Ok(web::Json(a.into()))
}

/// What a deletion freed.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: usize,
    /// Bytes removed from disk (a file another asset still uses stays).
    pub freed_bytes: u64,
}

/// Deletes an asset.
#[utoipa::path(tag = "assets", responses((status = 200, body = Deleted), (status = 404)))]
#[delete("/api/assets/{id}")]
async fn delete_one(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    id: web::Path<String>,
) -> Result<web::Json<Deleted>, ApiError> {
    let freed = lib.delete(&caller.0.account, &[id.into_inner()]).await?;
    Ok(web::Json(Deleted {
        deleted: 1,
        freed_bytes: freed,
    }))
}

/// Assets named at once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ids {
    pub ids: Vec<String>,
}

/// Deletes several assets: all of them, or none when one is unknown.
#[utoipa::path(tag = "assets", request_body = Ids, responses((status = 200, body = Deleted), (status = 404)))]
#[post("/api/assets/delete")]
async fn delete_many(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    body: web::Json<Ids>,
) -> Result<web::Json<Deleted>, ApiError> {
    let ids = body.into_inner().ids;
    let freed = lib.delete(&caller.0.account, &ids).await?;
    Ok(web::Json(Deleted {
        deleted: ids.len(),
        freed_bytes: freed,
    }))
}

/// Alt text for several assets: the ids and the alt text options of `POST /v1/alt-text`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeBody {
    pub ids: Vec<String>,
    pub language: Option<String>,
    pub max_chars: Option<u32>,
    pub context: Option<String>,
    pub keywords: Option<Vec<String>>,
    pub style: Option<crate::alt_text::prompt::Style>,
    pub model: Option<String>,
}

/// The outcome for one asset.
#[derive(Serialize, ToSchema)]
pub struct Described {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset: Option<AssetView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// Writes alt text for each asset (as `POST /v1/alt-text` would, metered the same
/// way) and stores it on the asset; a result or an error per asset, in order.
#[utoipa::path(tag = "assets", request_body = DescribeBody, responses((status = 200, body = Vec<Described>), (status = 400)))]
#[post("/api/assets/alt-text")]
async fn describe(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    alt: web::Data<AltText>,
    body: web::Json<DescribeBody>,
) -> Result<web::Json<Vec<Described>>, ApiError> {
    let caller = caller.0;
    caller.allows(crate::auth::Scope::AltText)?;
    let b = body.into_inner();
    if b.ids.is_empty() || b.ids.len() > crate::alt_text::MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("name between 1 and {} assets", crate::alt_text::MAX_BATCH),
        ));
    }
    let req = AltTextRequest {
        language: b.language,
        max_chars: b.max_chars,
        context: b.context,
        keywords: b.keywords,
        style: b.style,
        model: b.model,
        ..AltTextRequest::default()
    };
    let parallel = lib.inner.live.get().alt_text.batch_parallelism;
    let max_bytes = lib.inner.live.get().alt_text.max_image_bytes;
    let describe_one = |id: String| {
        let (lib, alt, caller, req) = (lib.clone(), alt.clone(), caller.clone(), req.clone());
        async move {
            let result: Result<Asset, ApiError> = async {
                let bytes = lib.read_original(&caller.account, &id, max_bytes).await?;
                let r = alt.describe(&caller, &req, Source::Bytes(bytes)).await?;
                let patch = Patch {
                    alt_text: Some(r.alt_text),
                    alt_language: Some(r.language),
                    ..Patch::default()
                };
                Ok(lib.update(&caller.account, &id, patch).await?)
            }
            .await;
            match result {
                Ok(a) => Described {
                    id,
                    asset: Some(a.into()),
                    error: None,
                },
                Err(e) => Described {
                    id,
                    asset: None,
                    error: serde_json::from_str::<serde_json::Value>(&e.to_json())
                        .ok()
                        .and_then(|mut v| v.get_mut("error").map(std::mem::take)),
                },
            }
        }
    };
    let out: Vec<Described> = futures_util::stream::iter(b.ids.into_iter().map(describe_one))
        .buffered(parallel)
        .collect()
        .await;
    Ok(web::Json(out))
}

#[derive(Deserialize)]
struct ZipParams {
    /// Comma-separated asset ids.
    ids: String,
}

/// Downloads several assets' originals as one ZIP, made as it is sent.
#[utoipa::path(tag = "assets", params(("ids" = String, Query)), responses((status = 200), (status = 400), (status = 404)))]
#[get("/api/assets/zip")]
async fn zip_download(
    caller: Scoped<need::Assets>,
    lib: web::Data<Library>,
    params: web::Query<ZipParams>,
) -> Result<HttpResponse, ApiError> {
    let account = caller.0.account;
    let ids: Vec<String> = params
        .ids
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() || ids.len() > MAX_BULK {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("name between 1 and {MAX_BULK} assets in `ids`"),
        ));
    }
    // Every id is checked before the first byte goes out, so a bad one is a clear 404;
    // each file is opened only when its turn comes (one open file at a time).
    let mut files = Vec::new();
    let mut names = std::collections::HashSet::new();
    for id in &ids {
        let asset = lib.get(&account, id).await?;
        let mut name = asset.name.clone();
        if !names.insert(name.clone()) {
            name = format!("{}-{}", asset.id, asset.name);
            names.insert(name.clone());
        }
        files.push((name, asset.address));
    }
    let key = lib.data_key(&account).await?;
    let blobs = lib.blobs().clone();
    let body = crate::http::body::from_writer(4, move |out| {
        let mut zip = ::zip::ZipWriter::new_stream(out);
        // Images are compressed already: stored, not deflated.
        let opts = ::zip::write::SimpleFileOptions::default()
            .compression_method(::zip::CompressionMethod::Stored)
            .unix_permissions(0o600)
            .large_file(true);
        for (name, address) in files {
            let mut reader = blobs
                .open(&key, &account, &address, Kind::Original)
                .map_err(std::io::Error::other)?;
            zip.start_file(name, opts).map_err(std::io::Error::other)?;
            std::io::copy(&mut reader, &mut zip)?;
        }
        zip.finish().map_err(std::io::Error::other)?.flush()
    });
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"easel-assets.zip\"",
        ))
        .streaming(body))
}

//! The `/v1` routes. Errors use OpenAI's shape, so SDKs show Easel's messages.

use super::{Gateway, catalog, chat, images, parse_body};
use crate::auth::{Caller, Scoped, need};
use crate::http::ApiError;
use crate::http::body::RequestBody;
use crate::providers::wire::{ChatRequest, ImageRequest};
use crate::store::now_ms;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_models)
        .service(chat_completions)
        .service(image_generations)
        .service(image_edits)
        .service(image_file);
}

/// One model in `GET /v1/models`.
#[derive(Serialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// `chat`, `vision` and/or `image`.
    pub capabilities: Vec<crate::config::Capability>,
}

/// OpenAI's list shape.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelView>,
}

/// The models the caller can use now.
#[utoipa::path(tag = "gateway", responses((status = 200, body = ModelList)), security(("api_key" = [])))]
#[get("/v1/models")]
async fn list_models(
    caller: Caller,
    gw: web::Data<Gateway>,
) -> Result<web::Json<ModelList>, ApiError> {
    let config = gw.live.get();
    let models = catalog::available(&gw.providers, &config, &caller.account).await?;
    Ok(web::Json(ModelList {
        object: "list",
        data: models
            .into_iter()
            .map(|(id, capabilities)| ModelView {
                id,
                object: "model",
                created: 0,
                owned_by: "easel",
                capabilities,
            })
            .collect(),
    }))
}

/// A chat completion, whole or streamed (`stream: true`), with image parts as
/// `https:` URLs or `data:` URIs. OpenAI's request and response shapes.
#[utoipa::path(tag = "gateway", request_body(content = Object, description = "OpenAI's chat completion request"), responses((status = 200), (status = 400), (status = 402), (status = 404), (status = 502)), security(("api_key" = [])))]
#[post("/v1/chat/completions")]
async fn chat_completions(
    caller: Scoped<need::Chat>,
    gw: web::Data<Gateway>,
    req: HttpRequest,
    RequestBody(body): RequestBody,
) -> Result<HttpResponse, ApiError> {
    let parsed: ChatRequest = parse_body(&req, &body)?;
    drop(body);
    chat::complete(&gw, &caller.0, parsed).await
}

fn base_url(gw: &Gateway, req: &HttpRequest) -> String {
    if let Some(u) = &gw.live.get().server.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// Image generation. `response_format: url` answers links served by Easel from
/// memory for `[gateway] image_url_ttl`. Easel's own option `save: true` keeps each
/// image in the caller's asset library (needs the `assets` scope) and adds its
/// `asset_id`; without it, nothing generated is stored.
#[utoipa::path(tag = "gateway", request_body(content = Object, description = "OpenAI's image generation request"), responses((status = 200), (status = 400), (status = 402), (status = 404), (status = 502)), security(("api_key" = [])))]
#[post("/v1/images/generations")]
async fn image_generations(
    caller: Scoped<need::Images>,
    gw: web::Data<Gateway>,
    library: web::Data<crate::library::Library>,
    req: HttpRequest,
    RequestBody(body): RequestBody,
) -> Result<HttpResponse, ApiError> {
    let mut parsed: ImageRequest = parse_body(&req, &body)?;
    drop(body);
    // Easel's own field: never sent upstream.
    let save = save_to(&caller.0, parsed.rest.remove("save"), library.get_ref())?;
    let answer = images::generate(&gw, &caller.0, parsed, &base_url(&gw, &req), save).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// Easel's own `save` field: whether generated images go to the caller's library
/// (which needs the `assets` scope).
fn save_to<'a>(
    caller: &Caller,
    value: Option<serde_json::Value>,
    library: &'a crate::library::Library,
) -> Result<Option<&'a crate::library::Library>, ApiError> {
    match value {
        None | Some(serde_json::Value::Bool(false)) => Ok(None),
        Some(serde_json::Value::Bool(true)) => {
            caller.allows(crate::auth::Scope::Assets)?;
            Ok(Some(library))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_field",
            "`save` must be true or false",
        )),
    }
}

/// Most bytes of one text field of an edit request.
const MAX_FIELD_BYTES: usize = 32 * 1024;

/// Image editing, OpenAI's multipart shape: `image` (or `image[]`; the first one is
/// used), `prompt`, `model`, and optionally `mask`, `n`, `size`, `response_format`,
/// Easel's `save` and any other field the provider takes. The image is decoded once
/// here, so a broken or oversized one is refused before any provider is paid.
#[utoipa::path(tag = "gateway", request_body(content = Object, description = "OpenAI's image edit request, as multipart/form-data", content_type = "multipart/form-data"), responses((status = 200), (status = 400), (status = 402), (status = 404), (status = 415), (status = 502)), security(("api_key" = [])))]
#[post("/v1/images/edits")]
async fn image_edits(
    caller: Scoped<need::Images>,
    gw: web::Data<Gateway>,
    library: web::Data<crate::library::Library>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use crate::http::{is_multipart, multipart_error};
    use futures_util::StreamExt;
    if !is_multipart(&req) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the edit as multipart/form-data: the image in a field named `image`, with `prompt` and `model`",
        ));
    }
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let mut fields = serde_json::Map::new();
    let (mut image, mut mask) = (None, None);
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field.name().unwrap_or_default().to_string();
        // Names go on to the provider inside a multipart header: plain ones only.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"_-[]".contains(&b);
        if name.is_empty() || name.len() > 64 || !name.bytes().all(plain) {
            return Err(ApiError::bad_request(
                "invalid_field",
                "field names are letters, digits, `_`, `-` and `[]`, at most 64 of them",
            ));
        }
        let file = matches!(name.as_str(), "image" | "image[]" | "mask");
        let mut data = web::BytesMut::new();
        while let Some(chunk) = field.next().await {
            data.extend_from_slice(&chunk.map_err(multipart_error)?);
            if !file && data.len() > MAX_FIELD_BYTES {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!(
                        "`{}` is longer than {MAX_FIELD_BYTES} bytes",
                        name.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
        match name.as_str() {
            "image" | "image[]" => {
                image.get_or_insert(data.freeze());
            }
            "mask" => mask = Some(data.freeze()),
            _ => {
                let text = String::from_utf8(data.to_vec()).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_field",
                        format!(
                            "`{}` is not UTF-8 text",
                            name.chars().take(40).collect::<String>()
                        ),
                    )
                })?;
                // Numbers and booleans as such (n, save); everything else as text.
                let value = match name.as_str() {
                    "n" | "save" | "partial_images" => {
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
                    }
                    _ => serde_json::Value::String(text),
                };
                fields.insert(name, value);
            }
        }
    }
    let image = image.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            "send the image to edit in a field named `image`",
        )
    })?;
    let save = save_to(&caller.0, fields.remove("save"), library.get_ref())?;
    let mut parsed: ImageRequest = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))?;
    let config = gw.live.get();
    let limits = crate::imaging::Limits {
        max_bytes: config.server.max_body_bytes,
        max_pixels: config.gateway.max_image_pixels,
    };
    let checked = web::block(move || -> Result<_, ApiError> {
        let read = |what: &str, bytes: web::Bytes| {
            crate::imaging::decode(&bytes, limits)
                .map(|i| crate::providers::wire::SourceImage {
                    media_type: i.format.media_type().to_string(),
                    bytes: bytes.clone(),
                })
                .map_err(|e| ApiError::bad_request("invalid_image", format!("the {what}: {e}")))
        };
        Ok((
            read("image", image)?,
            mask.map(|m| read("mask", m)).transpose()?,
        ))
    })
    .await
    .map_err(ApiError::internal)??;
    (parsed.source, parsed.mask) = (Some(checked.0), checked.1);
    let answer = images::generate(&gw, &caller.0, parsed, &base_url(&gw, &req), save).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// A generated image answered as `url`, while it is held (the link is the secret).
#[utoipa::path(tag = "gateway", responses((status = 200), (status = 404)))]
#[get("/v1/images/files/{name}")]
async fn image_file(
    gw: web::Data<Gateway>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (bytes, media_type) = gw
        .files
        .get(&name, now_ms())
        .ok_or_else(|| ApiError::not_found("this image link has expired or never existed"))?;
    Ok(HttpResponse::Ok()
        .content_type(media_type)
        .insert_header(("cache-control", "private, max-age=600"))
        .body(bytes))
}

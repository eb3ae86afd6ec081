//! The `/v1` routes. Errors use OpenAI's shape, so SDKs show Easel's messages.

use super::{Gateway, catalog, chat, images, parse_body};
use crate::auth::{Caller, Scoped, need};
use crate::http::ApiError;
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
    body: web::Bytes,
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
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let mut parsed: ImageRequest = parse_body(&req, &body)?;
    drop(body);
    // Easel's own field: never sent upstream.
    let save = match parsed.rest.remove("save") {
        None | Some(serde_json::Value::Bool(false)) => None,
        Some(serde_json::Value::Bool(true)) => {
            caller.0.allows(crate::auth::Scope::Assets)?;
            Some(library.get_ref())
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`save` must be true or false",
            ));
        }
    };
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

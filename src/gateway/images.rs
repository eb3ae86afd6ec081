//! `POST /v1/images/generations` and `POST /v1/images/edits`.

use super::{Gateway, Meter, catalog, try_routes};
use crate::auth::Caller;
use crate::config::Capability;
use crate::http::ApiError;
use crate::providers::wire::{Image, ImageRequest, Usage};
use crate::store::now_ms;
use base64::Engine;
use serde_json::json;

/// Most images one request may ask for.
pub const MAX_IMAGES: u32 = 10;

fn validate(req: &ImageRequest) -> Result<(), ApiError> {
    if req.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_field", "`prompt` is empty"));
    }
    if !(1..=MAX_IMAGES).contains(&req.count()) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("`n` must be between 1 and {MAX_IMAGES}"),
        ));
    }
    if let Some(f) = &req.response_format
        && f != "b64_json"
        && f != "url"
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`response_format` must be b64_json or url",
        ));
    }
    if req.size.is_some() && req.dimensions().is_none() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`size` must look like 1024x1024",
        ));
    }
    Ok(())
}

/// Checks, meters and makes one image generation call (an edit when `req.source` is
/// set); returns at most `n` images and the catalog id of the model (shared by the
/// HTTP routes and the skills engine).
pub async fn make(
    gw: &Gateway,
    caller: &Caller,
    req: &ImageRequest,
) -> Result<(Vec<Image>, String), ApiError> {
    validate(req)?;
    let config = gw.live.get();
    let model = catalog::resolve(&gw.providers, &config, &caller.account, &req.model).await?;
    model.require(Capability::Image)?;
    let n = req.count();
    let endpoint = if req.source.is_some() {
        "images.edits"
    } else {
        "images.generations"
    };
    let mut meter = Meter::start(
        gw,
        caller,
        endpoint,
        &model.id,
        model.max_cost(Usage::default(), n),
    )
    .await?;
    let call = |route: &'_ super::Route| {
        let conn = route.conn.clone();
        let upstream = route.upstream.clone();
        async move { conn.images(&upstream, req).await }
    };
    let (mut images, route) = try_routes(&config.gateway, &model, &mut meter, call).await?;
    images.truncate(n as usize);
    let cost = model.cost(route, Usage::default(), images.len() as u32);
    meter.finish(200, Usage::default(), images.len() as u32, cost);
    Ok((images, model.id))
}

/// Generates images; `base_url` is where this Easel is reached, for `url` answers.
/// With a library, each image is also saved there (a failure to save, such as a full
/// quota, is reported on the image: it was made and paid for all the same).
pub async fn generate(
    gw: &Gateway,
    caller: &Caller,
    req: ImageRequest,
    base_url: &str,
    save: Option<&crate::library::Library>,
) -> Result<serde_json::Value, ApiError> {
    let (images, model_id) = make(gw, caller, &req).await?;
    let config = gw.live.get();
    let as_url = req.response_format.as_deref() == Some("url");
    let ttl = config.gateway.image_url_ttl.get().as_millis() as u64;
    let cap = (config.gateway.image_cache_mib as usize) << 20;
    let mut data = Vec::new();
    for (i, img) in images.into_iter().enumerate() {
        let mut item = serde_json::Map::new();
        if let Some(library) = save {
            let ext = img.media_type.rsplit('/').next().unwrap_or("png");
            let source = crate::library::AssetSource::Generated {
                model: model_id.clone(),
            };
            let name = format!("{model_id}-{}.{ext}", i + 1);
            let saved = library
                .save_bytes(&caller.account, name, Vec::new(), source, img.bytes.clone())
                .await;
            match saved {
                Ok(asset) => {
                    item.insert("asset_id".into(), asset.id.into());
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    item.insert(
                        "save_error".into(),
                        json!({"code": e.code, "message": e.message}),
                    );
                }
            }
        }
        if as_url {
            let name = crate::crypto::random_hex::<24>().map_err(ApiError::internal)?;
            let ext = img.media_type.rsplit('/').next().unwrap_or("png");
            let file = format!("{name}.{ext}");
            item.insert(
                "url".into(),
                format!("{base_url}/v1/images/files/{file}").into(),
            );
            let now = now_ms();
            gw.files
                .put(file, img.bytes, img.media_type, now + ttl, cap, now);
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&img.bytes);
            item.insert("b64_json".into(), b64.into());
        }
        if let Some(p) = img.revised_prompt {
            item.insert("revised_prompt".into(), p.into());
        }
        data.push(serde_json::Value::Object(item));
    }
    Ok(json!({"created": now_ms() / 1000, "data": data}))
}

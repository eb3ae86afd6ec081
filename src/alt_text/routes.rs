//! The alt text routes.

use super::{AltText, AltTextRecord, AltTextRequest, AltTextResult, MAX_BATCH, Source};
use crate::auth::{Scoped, need};
use crate::gateway::parse_body;
use crate::http::body::RequestBody;
use crate::http::{ApiError, is_multipart, multipart_error, rfc3339};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, get, post, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(alt_text).service(batch).service(history);
}

/// The longest text field of a multipart request, in bytes.
const MAX_FIELD: usize = 4096;

/// Reads a multipart request: the file in `image`, options in text fields
/// (`keywords` repeated or comma-separated).
async fn read_multipart(
    req: &HttpRequest,
    payload: web::Payload,
    max_image: u64,
) -> Result<(AltTextRequest, Source), ApiError> {
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let mut out = AltTextRequest::default();
    let mut image: Option<Vec<u8>> = None;
    let mut keywords = Vec::new();
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let name = field.name().unwrap_or_default().to_string();
        let cap = if name == "image" {
            max_image as usize
        } else {
            MAX_FIELD
        };
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(multipart_error)?;
            if data.len() + chunk.len() > cap {
                return Err(if name == "image" {
                    crate::imaging::IntakeError::TooLarge {
                        size: (data.len() + chunk.len()) as u64,
                        limit: max_image,
                    }
                    .into()
                } else {
                    ApiError::bad_request(
                        "invalid_field",
                        format!("the field `{name}` is longer than {MAX_FIELD} bytes"),
                    )
                });
            }
            data.extend_from_slice(&chunk);
        }
        if name == "image" {
            if image.is_some() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    "send one `image` per request; POST /v1/alt-text/batch takes several",
                ));
            }
            image = Some(data);
            continue;
        }
        let text = String::from_utf8(data).map_err(|_| {
            ApiError::bad_request("invalid_field", format!("`{name}` is not UTF-8 text"))
        })?;
        match name.as_str() {
            "image_url" => out.image_url = Some(text),
            "language" => out.language = Some(text),
            "context" => out.context = Some(text),
            "model" => out.model = Some(text),
            "max_chars" => {
                out.max_chars = Some(text.trim().parse().map_err(|_| {
                    ApiError::bad_request("invalid_field", "`max_chars` must be a whole number")
                })?)
            }
            "style" => {
                out.style = Some(
                    serde_json::from_value(serde_json::Value::String(text.trim().to_string()))
                        .map_err(|_| {
                            ApiError::bad_request(
                                "invalid_field",
                                "`style` is one of concise, descriptive, ecommerce",
                            )
                        })?,
                )
            }
            "keywords" | "keywords[]" => keywords.extend(text.split(',').map(str::to_string)),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("unknown field `{other}`; the image goes in `image`"),
                ));
            }
        }
    }
    if !keywords.is_empty() {
        out.keywords = Some(keywords);
    }
    let source = match (image, &out.image_url) {
        (Some(bytes), None) => Source::Bytes(bytes),
        (None, Some(_)) => out.source()?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "send either the file `image` or `image_url`, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "the multipart body has no `image` field",
            ));
        }
    };
    Ok((out, source))
}

/// Alt text for one image: a multipart upload (field `image`), or JSON with
/// `image_base64` or `image_url`.
#[utoipa::path(tag = "alt-text", request_body(content = AltTextRequest, description = "JSON, or multipart/form-data with the file in `image` and the same options as fields"), responses((status = 200, body = AltTextResult), (status = 400), (status = 402), (status = 413), (status = 415), (status = 422), (status = 503)), security(("api_key" = [])))]
#[post("/v1/alt-text")]
async fn alt_text(
    caller: Scoped<need::AltText>,
    svc: web::Data<AltText>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<web::Json<AltTextResult>, ApiError> {
    let max_image = svc.gw.live.get().alt_text.max_image_bytes;
    let (parsed, source) = if is_multipart(&req) {
        read_multipart(&req, payload, max_image).await?
    } else {
        let RequestBody(body) = RequestBody::read(payload.into_inner()).await?;
        let parsed: AltTextRequest = parse_body(&req, &body)?;
        drop(body);
        let source = parsed.source()?;
        (parsed, source)
    };
    Ok(web::Json(svc.describe(&caller.0, &parsed, source).await?))
}

/// A batch: up to 50 items, each a request of its own; options given beside `items`
/// apply to every item that does not set them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub items: Vec<AltTextRequest>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub max_chars: Option<u32>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    #[serde(default)]
    pub style: Option<super::Style>,
    #[serde(default)]
    pub model: Option<String>,
}

/// One item's outcome: its result, or its error in the `/v1` error shape.
#[derive(Serialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<AltTextResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub error: Option<serde_json::Value>,
}

/// The batch's outcomes, in the order of `items`.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub object: &'static str,
    pub data: Vec<BatchItem>,
}

/// Alt text for up to 50 images, a few at a time (`[alt_text] batch_parallelism`);
/// each item succeeds or fails on its own.
#[utoipa::path(tag = "alt-text", request_body = BatchRequest, responses((status = 200, body = BatchResponse), (status = 400)), security(("api_key" = [])))]
#[post("/v1/alt-text/batch")]
async fn batch(
    caller: Scoped<need::AltText>,
    svc: web::Data<AltText>,
    req: HttpRequest,
    RequestBody(body): RequestBody,
) -> Result<web::Json<BatchResponse>, ApiError> {
    let parsed: BatchRequest = parse_body(&req, &body)?;
    drop(body);
    if parsed.items.is_empty() || parsed.items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("`items` must hold 1 to {MAX_BATCH} images"),
        ));
    }
    let defaults = AltTextRequest {
        image_base64: None,
        image_url: None,
        language: parsed.language,
        max_chars: parsed.max_chars,
        context: parsed.context,
        keywords: parsed.keywords,
        style: parsed.style,
        model: parsed.model,
    };
    let parallel = svc.gw.live.get().alt_text.batch_parallelism.max(1);
    let caller = &caller.0;
    let svc = &svc;
    let data = futures_util::stream::iter(parsed.items.into_iter().enumerate())
        .map(|(index, item)| {
            let item = item.or(&defaults);
            async move {
                let out = match item.source() {
                    Ok(source) => svc.describe(caller, &item, source).await,
                    Err(e) => Err(e),
                };
                match out {
                    Ok(r) => BatchItem {
                        index,
                        result: Some(r),
                        error: None,
                    },
                    Err(e) => BatchItem {
                        index,
                        result: None,
                        error: Some(serde_json::json!({
                            "message": e.message, "type": e.kind(), "code": e.code,
                            "status": e.status.as_u16(),
                        })),
                    },
                }
            }
        })
        .buffered(parallel)
        .collect::<Vec<_>>()
        .await;
    Ok(web::Json(BatchResponse {
        object: "list",
        data,
    }))
}

/// One stored alt text as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct RecordView {
    pub id: String,
    pub image_url: Option<String>,
    pub alt_text: String,
    pub language: String,
    pub model: String,
    pub credits: f64,
    pub created: String,
}

impl From<AltTextRecord> for RecordView {
    fn from(r: AltTextRecord) -> Self {
        RecordView {
            id: r.id,
            image_url: r.image_url,
            alt_text: r.alt_text,
            language: r.language,
            model: r.model,
            credits: crate::ledger::to_credits(r.credits),
            created: rfc3339(r.at_ms),
        }
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// The caller's stored alt texts, newest first (kept as `[retention] alt_text` says).
#[utoipa::path(tag = "alt-text", params(("limit" = Option<usize>, Query, description = "at most this many (default 50, up to 500)")), responses((status = 200, body = Vec<RecordView>)), security(("api_key" = [])))]
#[get("/api/alt-text")]
async fn history(
    caller: Scoped<need::AltText>,
    svc: web::Data<AltText>,
    q: web::Query<HistoryQuery>,
) -> Result<web::Json<Vec<RecordView>>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "`limit` must be between 1 and 500",
        ));
    }
    let records = svc.list(&caller.0.account, limit).await?;
    Ok(web::Json(
        records.into_iter().map(RecordView::from).collect(),
    ))
}

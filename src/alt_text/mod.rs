//! Alt text: `POST /v1/alt-text` and `POST /v1/alt-text/batch`.
//!
//! An image (upload, base64 or URL) goes through [`crate::imaging`] intake in memory,
//! then to one of two writers:
//! - a vision model from the catalog (the configured `[alt_text] model`, or the
//!   request's `model`), asked with a prompt after WCAG's guidance and metered in
//!   credits like any gateway request;
//! - the local BLIP model ([`crate::local_model`]) when the configured model is
//!   `local`, or when no provider route can serve the configured model now. It writes
//!   English only: another language with no provider to write it is answered 422.
//!
//! The answer is cleaned ([`prompt::clean`]) and, unless `[retention] alt_text` is
//! `0`, recorded (data class `alt_text`: the image URL if one was given, the alt
//! text, language, model and cost; never the image) in the same transaction as the
//! request's charge and usage record.

pub mod prompt;
mod routes;

pub use routes::routes;

use crate::auth::Caller;
use crate::config::Capability;
use crate::gateway::{Gateway, Meter, Resolved, catalog, try_routes};
use crate::http::ApiError;
use crate::http::fetch::{FetchError, Fetcher};
use crate::imaging::{self, Limits};
use crate::local_model::{LocalError, LocalModel};
use crate::providers::wire::{ChatRequest, Content, ImageUrl, Message, Part, Usage};
use crate::providers::{ChatOutput, UpstreamError};
use crate::store::{Class, Reader, Store, StoreError, Table, TimedKey, WriteTx, now_ms};
use actix_web::http::StatusCode;
use prompt::{Ask, Style};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// Keyed by `account / time (big-endian) / 4 random bytes`.
const RECORDS: Table<Vec<u8>, AltTextRecord> = Table::new("alt_text", Class::AltText);

/// How many alt text records `account` has.
pub fn count_of(r: &impl Reader, account: &str) -> Result<u64, StoreError> {
    r.count_prefix(&RECORDS, &TimedKey::prefix(account))
}

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 1] = [RECORDS.decl()];

/// Alt text records expire by age (`[retention] alt_text`); an erasure removes an
/// account's records through the same description.
pub const EXPIRY: crate::store::Expiry = crate::store::Expiry::owned(&RECORDS);

/// The longest `context` accepted, in bytes.
pub const MAX_CONTEXT: usize = 2048;
/// The most keywords accepted.
pub const MAX_KEYWORDS: usize = 10;
/// The most items in one batch.
pub const MAX_BATCH: usize = 50;
/// The longest `max_chars` accepted.
const MAX_CHARS_CEILING: u32 = 1000;
/// Output tokens asked of a provider (the JSON answer around the alt text).
const ANSWER_TOKENS: u32 = 400;

/// One page of `account`'s stored alt texts for an export, oldest first.
pub fn export_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::of_owner(r, &RECORDS, account, after, limit, routes::RecordView::from)
}

/// One stored alt text (data class `alt_text`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AltTextRecord {
    pub id: String,
    pub account: String,
    /// The URL the image was fetched from; never the image itself.
    pub image_url: Option<String>,
    pub alt_text: String,
    pub language: String,
    pub model: String,
    /// Micro-credits charged.
    pub credits: i64,
    pub at_ms: u64,
}

/// One alt text request: the image and the options. Exactly one of `image_base64` and
/// `image_url` (a multipart upload sends the file as the field `image` instead).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AltTextRequest {
    /// The image's bytes in base64 (a `data:` URI is accepted too).
    #[serde(default)]
    pub image_base64: Option<String>,
    /// An http(s) URL Easel fetches the image from (public addresses only).
    #[serde(default)]
    pub image_url: Option<String>,
    /// BCP-47 tag of the language to write in (default: `[alt_text] default_language`).
    #[serde(default)]
    pub language: Option<String>,
    /// Longest alt text in characters (default: `[alt_text] max_chars`).
    #[serde(default)]
    pub max_chars: Option<u32>,
    /// Text of the page or product the image is on (up to 2 KB), to judge what matters.
    #[serde(default)]
    pub context: Option<String>,
    /// Up to 10 words to use where they truthfully fit.
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    #[serde(default)]
    pub style: Option<Style>,
    /// A catalog model with vision, or `local` (default: `[alt_text] model`).
    #[serde(default)]
    pub model: Option<String>,
}

/// The image of a request, however it came.
pub enum Source {
    Bytes(Vec<u8>),
    Url(String),
}

/// An alt text answer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AltTextResult {
    pub id: String,
    /// The alt text; empty when the image is decorative.
    pub alt_text: String,
    /// Whether the image conveys nothing (then `alt=""` is right).
    pub decorative: bool,
    /// Text visible in the image, verbatim, when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_in_image: Option<String>,
    pub language: String,
    pub model: String,
    /// `local` for the local model, else the provider connection.
    pub provider: String,
    /// Credits charged.
    pub credits: f64,
}

/// Checked options.
struct Options {
    language: String,
    max_chars: u32,
    context: Option<String>,
    keywords: Vec<String>,
    style: Style,
    model: Option<String>,
}

fn invalid(msg: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::bad_request("invalid_field", msg)
}

impl AltTextRequest {
    /// Fills what this request leaves out from `defaults` (a batch's shared options).
    pub fn or(mut self, defaults: &AltTextRequest) -> AltTextRequest {
        self.language = self.language.or_else(|| defaults.language.clone());
        self.max_chars = self.max_chars.or(defaults.max_chars);
        self.context = self.context.or_else(|| defaults.context.clone());
        self.keywords = self.keywords.or_else(|| defaults.keywords.clone());
        self.style = self.style.or(defaults.style);
        self.model = self.model.or_else(|| defaults.model.clone());
        self
    }

    fn options(&self, config: &crate::config::AltTextConfig) -> Result<Options, ApiError> {
        let language = self
            .language
            .clone()
            .unwrap_or_else(|| config.default_language.clone());
        if !prompt::valid_language(&language) {
            return Err(invalid(format!(
                "`language` must be a BCP-47 tag such as `en`, `de` or `pt-BR`, not `{}`",
                language.chars().take(40).collect::<String>()
            )));
        }
        let max_chars = self.max_chars.unwrap_or(config.max_chars);
        if !(1..=MAX_CHARS_CEILING).contains(&max_chars) {
            return Err(invalid(format!(
                "`max_chars` must be between 1 and {MAX_CHARS_CEILING}"
            )));
        }
        let context = self
            .context
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty());
        if context.is_some_and(|c| c.len() > MAX_CONTEXT) {
            return Err(invalid(format!(
                "`context` is longer than {MAX_CONTEXT} bytes; send the part of the page that is about the image"
            )));
        }
        let keywords: Vec<String> = self
            .keywords
            .iter()
            .flatten()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if keywords.len() > MAX_KEYWORDS {
            return Err(invalid(format!("send at most {MAX_KEYWORDS} `keywords`")));
        }
        if keywords.iter().any(|k| k.chars().count() > 60) {
            return Err(invalid("each keyword may have at most 60 characters"));
        }
        Ok(Options {
            language,
            max_chars,
            context: context.map(str::to_string),
            keywords,
            style: self.style.unwrap_or_default(),
            model: self.model.clone().filter(|m| !m.trim().is_empty()),
        })
    }

    /// The image source named by the JSON fields.
    pub fn source(&self) -> Result<Source, ApiError> {
        match (&self.image_base64, &self.image_url) {
            (Some(b), None) => imaging::from_base64(b)
                .map(Source::Bytes)
                .ok_or_else(|| invalid("`image_base64` is not valid base64")),
            (None, Some(u)) => Ok(Source::Url(u.trim().to_string())),
            (None, None) => Err(invalid(
                "send the image: `image_base64`, `image_url`, or a multipart upload in the field `image`",
            )),
            (Some(_), Some(_)) => Err(invalid(
                "send either `image_base64` or `image_url`, not both",
            )),
        }
    }
}

/// The alt text service; cheap to clone.
#[derive(Clone)]
pub struct AltText {
    gw: Gateway,
    local: LocalModel,
    fetcher: Fetcher,
    store: Store,
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> ApiError {
        let code = match &e {
            FetchError::Refused(_) => "url_refused",
            FetchError::TooLarge(_) => "image_too_large",
            FetchError::Failed(_) => "url_fetch_failed",
            FetchError::Timeout(_) => "url_timeout",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<LocalError> for ApiError {
    fn from(e: LocalError) -> ApiError {
        match &e {
            LocalError::Missing(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "local_model_missing",
                e.to_string(),
            ),
            LocalError::Broken(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "local_model_broken",
                e.to_string(),
            ),
            LocalError::Busy(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "local_model_busy",
                e.to_string(),
            )
            .retry_after(2),
            LocalError::Failed(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// Which writer serves a request.
enum Writer {
    Provider(Box<Resolved>),
    Local,
}

impl AltText {
    /// The service over the gateway (catalog, ledger, usage) and the local model.
    pub fn new(gw: Gateway, local: LocalModel, store: Store) -> Result<AltText, String> {
        let fetcher = Fetcher::new(&gw.live.get().alt_text.url_allowlist)?;
        Ok(AltText {
            gw,
            local,
            fetcher,
            store,
        })
    }

    /// The URL fetcher (its allowlist follows config reloads).
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Picks the writer, or says why none can write in `language`.
    async fn writer(&self, caller: &Caller, opts: &Options) -> Result<Writer, ApiError> {
        let config = self.gw.live.get();
        let named = opts.model.is_some();
        let model = opts
            .model
            .clone()
            .unwrap_or_else(|| config.alt_text.model.clone());
        let english_only = |why: &str| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "language_unavailable",
                format!(
                    "alt text in `{}` needs a provider's vision model: {why}, and the local model writes English only; ask for `en`, or ask an admin to configure a vision model under [alt_text] model",
                    opts.language
                ),
            )
        };
        if model == "local" {
            if !prompt::is_english(&opts.language) {
                return Err(english_only("this request uses the local model"));
            }
            return Ok(Writer::Local);
        }
        match catalog::resolve(&self.gw.providers, &config, &caller.account, &model).await {
            Ok(m) => {
                m.require(Capability::Vision)?;
                Ok(Writer::Provider(Box::new(m)))
            }
            // The configured model cannot be reached now: the local model stands in,
            // in English. A model the request named is not swapped silently.
            Err(e) if !named && e.status == StatusCode::SERVICE_UNAVAILABLE => {
                if !prompt::is_english(&opts.language) {
                    return Err(english_only(&format!(
                        "no provider can serve `{model}` now"
                    )));
                }
                Ok(Writer::Local)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes alt text for one image.
    pub async fn describe(
        &self,
        caller: &Caller,
        req: &AltTextRequest,
        source: Source,
    ) -> Result<AltTextResult, ApiError> {
        let config = self.gw.live.get();
        let cfg = &config.alt_text;
        let opts = req.options(cfg)?;
        let writer = self.writer(caller, &opts).await?;
        let limits = Limits {
            max_bytes: cfg.max_image_bytes,
            max_pixels: cfg.max_pixels,
        };
        let (bytes, url) = match source {
            Source::Bytes(b) => (b, None),
            Source::Url(u) => {
                let got = self
                    .fetcher
                    .get(&u, limits.max_bytes, cfg.url_timeout.get())
                    .await?;
                (got.bytes, Some(u))
            }
        };
        let longest = cfg.downscale_to;
        let image = tokio::task::spawn_blocking(move || {
            imaging::decode_within(&bytes, limits, longest)
                .map(|i| imaging::downscale(i.image, longest))
        })
        .await
        .map_err(|e| ApiError::internal(format!("the image task ended: {e}")))??;
        let key = TimedKey::new(&caller.account, now_ms())?;
        match writer {
            Writer::Local => self.local(caller, &opts, image, key, url).await,
            Writer::Provider(model) => self.provider(caller, &opts, &model, image, key, url).await,
        }
    }

    async fn local(
        &self,
        caller: &Caller,
        opts: &Options,
        image: image::DynamicImage,
        key: TimedKey,
        url: Option<String>,
    ) -> Result<AltTextResult, ApiError> {
        let mut meter = Meter::start(&self.gw, caller, "alt_text", "local", 0).await?;
        meter.provider = "local".into();
        let caption = match self.local.caption(&image).await {
            Ok(c) => c,
            Err(e) => {
                let err = ApiError::from(e);
                meter.finish(err.status.as_u16(), Usage::default(), 0, 0);
                return Err(err);
            }
        };
        meter.model = caption.model.clone();
        let alt_text = prompt::clean(&caption.text, opts.max_chars);
        let result = AltTextResult {
            id: key.id.clone(),
            decorative: alt_text.is_empty(),
            alt_text,
            text_in_image: None,
            language: opts.language.clone(),
            model: caption.model,
            provider: "local".into(),
            credits: 0.0,
        };
        self.finish(meter, caller, key, url, &result, Usage::default(), 0);
        Ok(result)
    }

    #[allow(clippy::too_many_arguments)]
    async fn provider(
        &self,
        caller: &Caller,
        opts: &Options,
        model: &Resolved,
        image: image::DynamicImage,
        key: TimedKey,
        url: Option<String>,
    ) -> Result<AltTextResult, ApiError> {
        let jpeg = tokio::task::spawn_blocking(move || imaging::to_jpeg(&image, 85))
            .await
            .map_err(|e| ApiError::internal(format!("the image task ended: {e}")))??;
        let data_uri = imaging::data_uri("image/jpeg", &jpeg);
        drop(jpeg);
        let system = prompt::system_prompt(&Ask {
            language: &opts.language,
            max_chars: opts.max_chars,
            context: opts.context.as_deref(),
            keywords: &opts.keywords,
            style: opts.style,
        });
        let chat = chat_request(&model.id, system, data_uri);
        let config = self.gw.live.get();
        let most = Usage {
            input_tokens: (chat.messages.iter().map(Message::text_len).sum::<usize>() as u64)
                + u64::from(config.gateway.image_input_tokens)
                + 16,
            output_tokens: u64::from(ANSWER_TOKENS),
        };
        let mut meter = Meter::start(
            &self.gw,
            caller,
            "alt_text",
            &model.id,
            model.max_cost(most, 0),
        )
        .await?;
        let call = |route: &'_ crate::gateway::Route| {
            let conn = route.conn.clone();
            let upstream = route.upstream.clone();
            let chat = &chat;
            async move {
                match conn.chat(&upstream, chat, ANSWER_TOKENS).await? {
                    ChatOutput::Full { body, usage } => match body.into_value() {
                        Ok(body) => Ok((body, usage)),
                        Err(detail) => Err(UpstreamError::Garbage {
                            provider: conn.name.clone(),
                            detail,
                        }),
                    },
                    ChatOutput::Stream(_) => Err(UpstreamError::Unsupported(
                        "the provider streamed an answer that was asked whole".into(),
                    )),
                }
            }
        };
        let ((body, usage), route) = try_routes(&config.gateway, model, &mut meter, call).await?;
        let raw = body
            .pointer("/choices/0/message/content")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let answer = prompt::parse_answer(raw);
        let usage = usage.unwrap_or(Usage {
            input_tokens: most.input_tokens,
            output_tokens: (raw.len() as u64).div_ceil(4),
        });
        let cost = model.cost(route, usage, 0);
        let alt_text = if answer.decorative {
            String::new()
        } else {
            prompt::clean(&answer.alt_text, opts.max_chars)
        };
        let result = AltTextResult {
            id: key.id.clone(),
            decorative: alt_text.is_empty(),
            alt_text,
            text_in_image: answer.text_in_image,
            language: opts.language.clone(),
            model: model.id.clone(),
            provider: route.conn.name.clone(),
            credits: crate::ledger::to_credits(cost.clamp(0, meter.held())),
        };
        self.finish(meter, caller, key, url, &result, usage, cost);
        Ok(result)
    }

    /// Settles the request and, unless retention is `0`, records the alt text with
    /// the charge.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut meter: Meter,
        caller: &Caller,
        key: TimedKey,
        url: Option<String>,
        result: &AltTextResult,
        usage: Usage,
        cost: i64,
    ) {
        if self.gw.live.get().retention.alt_text.keeps_nothing() {
            meter.finish(200, usage, 0, cost);
            return;
        }
        let record = AltTextRecord {
            id: key.id.clone(),
            account: caller.account.clone(),
            image_url: url,
            alt_text: result.alt_text.clone(),
            language: result.language.clone(),
            model: result.model.clone(),
            credits: cost.clamp(0, meter.held()),
            at_ms: key.at_ms,
        };
        meter.finish_with(200, usage, 0, cost, move |tx| record_in(tx, &key, &record));
    }

    /// The records of `account`, newest first, up to `limit`; every request answered
    /// before the call is in it.
    pub async fn list(&self, account: &str, limit: usize) -> Result<Vec<AltTextRecord>, ApiError> {
        self.store.settled().await;
        let prefix = TimedKey::prefix(account);
        let records = self
            .store
            .read(move |r| -> Result<Vec<_>, StoreError> {
                Ok(r.scan_prefix_rev(&RECORDS, &prefix, None, limit)?
                    .into_iter()
                    .map(|(_, rec)| rec)
                    .collect())
            })
            .await?;
        Ok(records)
    }
}

/// Writes a record.
fn record_in(tx: &WriteTx<'_>, key: &TimedKey, rec: &AltTextRecord) -> Result<(), StoreError> {
    tx.insert(&RECORDS, &key.key, rec)
}

/// The chat request that asks a vision model for alt text.
fn chat_request(model: &str, system: String, data_uri: String) -> ChatRequest {
    let message = |role: &str, content: Content| Message {
        role: role.into(),
        content: Some(content),
        rest: Default::default(),
    };
    ChatRequest {
        model: model.to_string(),
        messages: vec![
            message("system", Content::Text(system)),
            message(
                "user",
                Content::Parts(vec![
                    Part::Text {
                        text: "Write the alt text for this image.".into(),
                    },
                    Part::ImageUrl {
                        image_url: ImageUrl {
                            url: data_uri,
                            detail: None,
                        },
                    },
                ]),
            ),
        ],
        stream: false,
        stream_options: None,
        max_tokens: Some(ANSWER_TOKENS),
        max_completion_tokens: None,
        temperature: Some(0.2),
        top_p: None,
        stop: None,
        n: None,
        rest: Default::default(),
    }
}

/// Shared with the routes.
pub type Shared = Arc<AltText>;

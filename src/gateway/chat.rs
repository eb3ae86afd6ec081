//! `POST /v1/chat/completions`: whole or streamed, with image parts.

use super::catalog::{self, Resolved};
use super::{Gateway, Meter, try_routes, upstream_error};
use crate::auth::Caller;
use crate::config::Capability;
use crate::http::ApiError;
use crate::providers::wire::{ChatRequest, Usage};
use crate::providers::{ChatOutput, StreamEvent, UpstreamError, Whole};
use crate::store::now_ms;
use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;

fn validate(req: &ChatRequest) -> Result<(), ApiError> {
    if req.model.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_field", "`model` is empty"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`messages` is empty; send at least one message",
        ));
    }
    if req.output_cap() == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`max_tokens` must be at least 1",
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        for img in m.images() {
            let u = img.url.as_str();
            if !(u.starts_with("data:") || u.starts_with("https://") || u.starts_with("http://")) {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!(
                        "`messages[{i}]` has an image_url that is neither an http(s) URL nor a data: URI"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Upper bounds for the reservation: every byte of text could be a token, and each
/// image costs the configured number of tokens.
fn estimate(req: &ChatRequest, text: usize, model: &Resolved, image_tokens: u32) -> (Usage, u32) {
    let images = req.image_count() as u64;
    let max_out = req.output_cap().unwrap_or(model.max_output_tokens);
    let n = u64::from(req.n.unwrap_or(1).max(1));
    (
        Usage {
            input_tokens: text as u64 + images * u64::from(image_tokens) + 16,
            output_tokens: u64::from(max_out) * n,
        },
        max_out,
    )
}

/// A fair guess at usage when a provider reports none: about four characters a token.
fn guess(input_chars: usize, output_chars: usize) -> Usage {
    Usage {
        input_tokens: (input_chars as u64).div_ceil(4),
        output_tokens: (output_chars as u64).div_ceil(4),
    }
}

/// A chat call made: its meter, route and answer, with the input size.
struct Called<'m> {
    meter: Meter,
    route: &'m super::Route,
    out: ChatOutput,
    input_chars: usize,
}

/// Checks a request and finds its model for the caller.
async fn model_for(gw: &Gateway, caller: &Caller, req: &ChatRequest) -> Result<Resolved, ApiError> {
    validate(req)?;
    let config = gw.live.get();
    let model = catalog::resolve(&gw.providers, &config, &caller.account, &req.model).await?;
    model.require(Capability::Chat)?;
    if req.image_count() > 0 {
        model.require(Capability::Vision)?;
    }
    Ok(model)
}

/// Meters and makes one chat call (the part shared by the HTTP route and the skills
/// engine).
async fn call<'m>(
    gw: &Gateway,
    caller: &Caller,
    req: &ChatRequest,
    model: &'m Resolved,
) -> Result<Called<'m>, ApiError> {
    let config = gw.live.get();
    let input_chars: usize = req.messages.iter().map(|m| m.text_len()).sum();
    let (most, max_out) = estimate(req, input_chars, model, config.gateway.image_input_tokens);
    let mut meter = Meter::start(
        gw,
        caller,
        "chat.completions",
        &model.id,
        model.max_cost(most, 0),
    )
    .await?;
    let call = |route: &'_ super::Route| {
        let conn = route.conn.clone();
        let upstream = route.upstream.clone();
        async move { first_event(conn.chat(&upstream, req, max_out).await).await }
    };
    let (out, route) = try_routes(&config.gateway, model, &mut meter, call).await?;
    Ok(Called {
        meter,
        route,
        out,
        input_chars,
    })
}

/// Handles one chat completion request.
pub async fn complete(
    gw: &Gateway,
    caller: &Caller,
    req: ChatRequest,
) -> Result<HttpResponse, ApiError> {
    let model = model_for(gw, caller, &req).await?;
    let c = call(gw, caller, &req, &model).await?;
    Ok(respond(c, &model, &req))
}

/// One whole (not streamed) chat completion as OpenAI's JSON, for callers inside
/// Easel (the skills engine's `chat` node).
pub async fn complete_value(
    gw: &Gateway,
    caller: &Caller,
    mut req: ChatRequest,
) -> Result<Value, ApiError> {
    req.stream = false;
    req.stream_options = None;
    let model = model_for(gw, caller, &req).await?;
    let c = call(gw, caller, &req, &model).await?;
    match c.out {
        ChatOutput::Full { body, usage } => {
            settle_full(c.meter, &model, c.route, &body, usage, c.input_chars);
            let mut body = body.into_value().map_err(|e| {
                ApiError::internal(format!("a checked answer is no longer JSON: {e}"))
            })?;
            body["model"] = model.id.clone().into();
            Ok(body)
        }
        ChatOutput::Stream(_) => Err(ApiError::internal(
            "a provider streamed an answer that was asked for whole",
        )),
    }
}

/// Waits for a stream's first event, so that a stream failing before anything was
/// relayed is retried like any other failed call.
async fn first_event(out: Result<ChatOutput, UpstreamError>) -> Result<ChatOutput, UpstreamError> {
    let Ok(ChatOutput::Stream(mut events)) = out else {
        return out;
    };
    match events.next().await {
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(ChatOutput::Stream(
            futures_util::stream::once(async move { Ok(first) })
                .chain(events)
                .boxed(),
        )),
        None => Ok(ChatOutput::Stream(futures_util::stream::empty().boxed())),
    }
}

/// Charges a whole answer.
fn settle_full(
    mut meter: Meter,
    model: &Resolved,
    route: &super::Route,
    body: &Whole,
    usage: Option<Usage>,
    input_chars: usize,
) {
    let usage = usage.unwrap_or_else(|| guess(input_chars, body.output_chars()));
    let cost = model.cost(route, usage, 0);
    meter.finish(200, usage, 0, cost);
}

fn respond(c: Called<'_>, model: &Resolved, req: &ChatRequest) -> HttpResponse {
    let Called {
        meter,
        route,
        out,
        input_chars,
    } = c;
    match out {
        ChatOutput::Full { body, usage } => {
            settle_full(meter, model, route, &body, usage, input_chars);
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body.with_model(&model.id))
        }
        ChatOutput::Stream(events) => {
            let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
            let state = StreamState {
                events,
                meter,
                model: model.clone(),
                route: route.clone(),
                include_usage,
                usage: None,
                input_chars,
                output_chars: 0,
                id: None,
                ended: false,
            };
            let body = futures_util::stream::unfold(state, |mut s| async move {
                let bytes = s.next_bytes().await?;
                Some((Ok::<_, std::convert::Infallible>(bytes), s))
            });
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .insert_header(("cache-control", "no-cache"))
                .insert_header(("x-accel-buffering", "no"))
                .streaming(body)
        }
    }
}

/// Bytes of events gathered into one send at most.
const GATHER_BYTES: usize = 64 * 1024;

/// A stream being relayed. When the client leaves, actix drops this state: the
/// upstream response is dropped with it (closing that connection) and the meter
/// records the request as 499.
struct StreamState {
    events: BoxStream<'static, Result<StreamEvent, UpstreamError>>,
    meter: Meter,
    model: Resolved,
    route: super::Route,
    include_usage: bool,
    usage: Option<Usage>,
    input_chars: usize,
    output_chars: usize,
    /// The id of the first chunk relayed, which the closing usage chunk takes (kept
    /// only when that chunk is asked for: holding a chunk would hold the connection's
    /// read buffer with it).
    id: Option<String>,
    ended: bool,
}

impl StreamState {
    fn settle(&mut self, status: u16) {
        let usage = self
            .usage
            .unwrap_or_else(|| guess(self.input_chars, self.output_chars));
        let cost = self.model.cost(&self.route, usage, 0);
        self.meter.finish(status, usage, 0, cost);
    }

    /// What the provider has sent so far, as one piece: the first event waited for,
    /// then every event already received, so a burst of events costs the client's
    /// connection one send rather than one each. The upstream body is read in this
    /// task (providers/h1.rs), so "already received" is what the socket holds now:
    /// nothing else has to run first for it to be at hand.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        // Room for a burst of a dozen events: it rarely has to grow.
        let mut out = Vec::with_capacity(4096);
        while !self.ended && out.is_empty() {
            let event = self.events.next().await;
            self.relay(event, &mut out);
            while !self.ended && out.len() < GATHER_BYTES {
                match self.events.next().now_or_never() {
                    Some(event) => self.relay(event, &mut out),
                    None => break,
                }
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// Writes one event of the provider's stream (`None`: its end) as the client sees it.
    fn relay(&mut self, event: Option<Result<StreamEvent, UpstreamError>>, out: &mut Vec<u8>) {
        match event {
            Some(Ok(StreamEvent::Chunk(mut chunk))) => {
                self.output_chars += chunk.output_chars();
                chunk.write_sse(&self.model.id, out);
                if self.include_usage && self.id.is_none() {
                    self.id = chunk.id();
                }
            }
            Some(Ok(StreamEvent::Usage(u))) => self.usage = Some(u),
            Some(Err(e)) => {
                // Too late to retry: the client has part of the answer. Say so in the
                // stream, the way OpenAI's SDKs read errors.
                self.ended = true;
                tracing::warn!(provider = %self.route.conn.name, error = %e, "stream broke");
                self.settle(StatusCode::BAD_GATEWAY.as_u16());
                let err = upstream_error(&self.model.id, &e);
                let body = serde_json::json!({"error": {
                    "message": err.message, "type": err.kind(), "code": err.code,
                }});
                out.extend_from_slice(format!("data: {body}\n\n").as_bytes());
            }
            None => {
                self.ended = true;
                if self.include_usage {
                    let usage = self
                        .usage
                        .unwrap_or_else(|| guess(self.input_chars, self.output_chars));
                    let id = self.id.take().unwrap_or_default();
                    let chunk = serde_json::json!({
                        "id": id, "object": "chat.completion.chunk",
                        "created": now_ms() / 1000, "model": self.model.id,
                        "choices": [], "usage": usage.to_json(),
                    });
                    out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.settle(200);
            }
        }
    }
}

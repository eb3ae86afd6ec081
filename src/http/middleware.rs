//! One middleware around every request: request id, live body limit, security
//! headers, metrics and an access line in the log (method, route, status, time; never
//! bodies, query strings or headers, which may hold secrets).
//!
//! A body sent with `Content-Encoding: gzip` or `deflate` is decoded here, before the
//! limit counts it, so a small compressed body cannot unpack into more than the limit
//! (extractors would otherwise decode it on their own, up to their much higher
//! ceiling).

use super::{ApiError, Shared};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Decompress, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::{Bytes, Data};
use actix_web::{HttpMessage, ResponseError};
use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

/// The Content-Security-Policy of every response: nothing inline, nothing from elsewhere.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'; report-uri /api/csp-report";

const QUIET_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The request's id: the client's `X-Request-Id` when it is a plain token, else a
/// fresh random one. Made as the response header's value; the log reads it from there.
fn request_id(req: &ServiceRequest) -> HeaderValue {
    let incoming = req.headers().get("x-request-id").filter(|v| {
        let v = v.as_bytes();
        !v.is_empty()
            && v.len() <= 64
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
    });
    match incoming {
        Some(id) => id.clone(),
        None => crate::crypto::unique_bytes::<12>()
            .ok()
            .and_then(|b| HeaderValue::from_maybe_shared(Bytes::from(crate::crypto::hex(&b))).ok())
            .unwrap_or_else(|| HeaderValue::from_static("unknown")),
    }
}

/// The middleware itself (see the module doc).
pub async fn observe<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(&req);
    let shared = req.app_data::<Data<Shared>>().cloned();
    let limit = shared
        .as_ref()
        .map_or(u64::MAX, |s| s.max_body_bytes.load(Ordering::Relaxed));
    let tls = shared.as_ref().is_some_and(|s| s.tls);
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or("unknown"));

    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut res = if declared.is_some_and(|len| len > limit) {
        let err = ApiError::too_large(limit);
        req.into_response(err.error_response())
            .map_into_right_body()
    } else {
        let overflowed = Rc::new(Cell::new(false));
        let inner = req.take_payload();
        let limited: Pin<Box<dyn futures_core::Stream<Item = Result<Bytes, PayloadError>>>> =
            if decoded_here(&req) {
                let decoded = Decompress::from_headers(inner, req.headers());
                // What follows sees the body as decoded, and its decoded length.
                req.headers_mut().remove(header::CONTENT_ENCODING);
                req.headers_mut().remove(header::CONTENT_LENGTH);
                Box::pin(Limited::new(decoded, limit, overflowed.clone()))
            } else {
                Box::pin(Limited::new(inner, limit, overflowed.clone()))
            };
        req.set_payload(Payload::from(limited));
        let res = next.call(req).instrument(span.clone()).await?;
        if overflowed.get() {
            // Whatever extractor read the body, the answer is the same JSON 413.
            res.into_response(ApiError::too_large(limit).error_response())
                .map_into_right_body()
        } else {
            res.map_into_left_body()
        }
    };

    let headers = res.headers_mut();
    // Room for the nine below at once, instead of the map growing (and rehashing) as
    // they come.
    headers.reserve(9);
    let mut set = |name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_SECURITY_POLICY, CSP);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=()",
    );
    if tls {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    headers.insert(HeaderName::from_static("x-request-id"), id);

    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(s) = &shared {
        s.metrics.observe(method.as_str(), &route, status, elapsed);
    }
    // Whole microseconds: `ms=8.213`, not `ms=8.213227999999999`.
    let ms = elapsed.as_micros() as f64 / 1000.0;
    span.in_scope(|| {
        if QUIET_ROUTES.contains(&route.as_str()) {
            tracing::debug!(target: "easel::http", %method, %route, status, ms, "request");
        } else {
            tracing::info!(target: "easel::http", %method, %route, status, ms, "request");
        }
    });
    Ok(res)
}

/// Whether the body's `Content-Encoding` is one this middleware undoes.
fn decoded_here(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            ["gzip", "x-gzip", "deflate"]
                .iter()
                .any(|e| v.trim().eq_ignore_ascii_case(e))
        })
}

/// A request body stream that fails with `Overflow` past the limit, so a chunked body
/// cannot get around a Content-Length check.
struct Limited<S> {
    inner: S,
    left: u64,
    overflowed: Rc<Cell<bool>>,
}

impl<S> Limited<S> {
    fn new(inner: S, left: u64, overflowed: Rc<Cell<bool>>) -> Self {
        Limited {
            inner,
            left,
            overflowed,
        }
    }
}

impl<S> futures_core::Stream for Limited<S>
where
    S: futures_core::Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.left {
                    self.left = 0;
                    self.overflowed.set(true);
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                } else {
                    self.left -= len;
                    Poll::Ready(Some(Ok(chunk)))
                }
            }
            other => other,
        }
    }
}

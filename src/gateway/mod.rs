//! The OpenAI-compatible gateway: `GET /v1/models`, `POST /v1/chat/completions` and
//! `POST /v1/images/generations`, over the model catalog and provider connections,
//! metered in credits.
//!
//! Every paid request reserves its largest possible cost, tries the model's routes in
//! order (retrying with jittered backoff on 429, 5xx, timeouts and dropped
//! connections, skipping providers whose circuit breaker is open), then settles the
//! actual cost with a usage record in one transaction. The response does not wait for
//! that commit: it joins the next group commit (see docs/architecture.md, "Credits").

pub(crate) mod catalog;
pub(crate) mod chat;
mod files;
pub(crate) mod images;
mod routes;

pub use catalog::{Resolved, Route};
pub use files::ImageFiles;
pub use routes::routes;

use crate::analytics::Analytics;
use crate::auth::Caller;
use crate::config::Live;
use crate::http::ApiError;
use crate::ledger::{Charge, Entry, Hold, KeyLimit, Ledger, Posting, budget_micro};
use crate::providers::wire::Usage;
use crate::providers::{Providers, UpstreamError, describe};
use crate::store::{StoreError, TimedKey, WriteTx, now_ms};
use crate::usage::UsageRecord;
use actix_web::http::StatusCode;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The gateway's shared parts; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub providers: Providers,
    pub ledger: Ledger,
    pub live: Arc<Live>,
    pub files: Arc<ImageFiles>,
    /// Who allows anonymous feature-use counting.
    pub analytics: Analytics,
    pending: Arc<Pending>,
}

/// Charges waiting for their commit beyond which new paid requests wait: when the
/// disk stalls, requests slow down instead of charges piling up in memory.
const BACKLOG: usize = 8192;

/// Settlements under way.
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    /// Woken when the last one ends.
    idle: Notify,
    /// Woken when the count falls below [`BACKLOG`].
    room: Notify,
}

impl Pending {
    fn enter(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn leave(&self) {
        match self.count.fetch_sub(1, Ordering::AcqRel) {
            1 => self.idle.notify_waiters(),
            BACKLOG => self.room.notify_waiters(),
            _ => {}
        }
    }

    /// Waits until no settlement is under way.
    async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Waits while [`BACKLOG`] or more settlements are under way.
    async fn room(&self) {
        while self.count.load(Ordering::Acquire) >= BACKLOG {
            let room = self.room.notified();
            if self.count.load(Ordering::Acquire) < BACKLOG {
                return;
            }
            room.await;
        }
    }
}

impl Gateway {
    /// The gateway over its services.
    pub fn new(
        providers: Providers,
        ledger: Ledger,
        analytics: Analytics,
        live: Arc<Live>,
    ) -> Self {
        Gateway {
            providers,
            ledger,
            live,
            analytics,
            files: Arc::new(ImageFiles::default()),
            pending: Arc::default(),
        }
    }

    /// Waits (up to `limit`) until every settlement under way is committed.
    pub async fn drain(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.pending.settled()).await;
    }
}

tokio::task_local! {
    /// The spending of the skill node running on this task, if any: every metered
    /// call made inside it is held against its run's budget as well.
    pub static SPEND: Arc<NodeSpend>;
}

/// Credits a skill run may spend across its nodes: each paid call holds its largest
/// possible cost here before it starts, so parallel nodes cannot overshoot together.
#[derive(Debug, Default)]
pub struct RunBudget {
    /// Micro-credits; `None`: no limit (the account's balance still applies).
    limit: Option<i64>,
    /// Held by calls under way plus charged.
    committed: AtomicI64,
    charged: AtomicI64,
}

impl RunBudget {
    /// A budget of `limit` micro-credits, or none.
    pub fn new(limit: Option<i64>) -> Self {
        RunBudget {
            limit,
            ..RunBudget::default()
        }
    }

    /// Micro-credits charged so far.
    pub fn charged(&self) -> i64 {
        self.charged.load(Ordering::Acquire)
    }

    fn hold(&self, amount: i64) -> Result<(), ApiError> {
        let Some(limit) = self.limit else {
            self.committed.fetch_add(amount, Ordering::AcqRel);
            return Ok(());
        };
        self.committed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c.saturating_add(amount) <= limit).then_some(c + amount)
            })
            .map(|_| ())
            .map_err(|c| {
                ApiError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "budget_exceeded",
                    format!(
                        "this step may cost up to {} credits and the run has {} of its {} credit budget left; raise the run's max_credits, or lower the node's max_tokens",
                        crate::ledger::to_credits(amount),
                        crate::ledger::to_credits((limit - c).max(0)),
                        crate::ledger::to_credits(limit)
                    ),
                )
            })
    }

    fn settle(&self, held: i64, charged: i64) {
        self.committed.fetch_sub(held - charged, Ordering::AcqRel);
        self.charged.fetch_add(charged, Ordering::AcqRel);
    }
}

/// What one skill node spends: its share of its run's budget.
#[derive(Debug, Default)]
pub struct NodeSpend {
    pub run: Arc<RunBudget>,
    charged: AtomicI64,
}

impl NodeSpend {
    /// A node's spending within `run`.
    pub fn new(run: Arc<RunBudget>) -> Self {
        NodeSpend {
            run,
            charged: AtomicI64::new(0),
        }
    }

    /// Micro-credits this node was charged.
    pub fn charged(&self) -> i64 {
        self.charged.load(Ordering::Acquire)
    }
}

/// What one metered request is about, filled in as it goes.
pub(crate) struct Meter {
    pub gateway: Gateway,
    pub endpoint: &'static str,
    pub model: String,
    pub provider: String,
    pub byok: bool,
    pub started: Instant,
    /// The credits held, and the account and API key they are held from.
    pub hold: Option<Hold>,
    /// The skill node this call is made for, if any ([`SPEND`]).
    spend: Option<Arc<NodeSpend>>,
}

impl Meter {
    /// Reserves `amount` micro-credits for a request by `caller`, once the backlog of
    /// charges waiting for their commit has room.
    pub async fn start(
        gateway: &Gateway,
        caller: &Caller,
        endpoint: &'static str,
        model: &str,
        amount: i64,
    ) -> Result<Meter, ApiError> {
        gateway.pending.room().await;
        let key = caller.key().map(|(id, budget)| KeyLimit {
            id,
            budget: budget.map(budget_micro),
        });
        let spend = SPEND.try_with(Arc::clone).ok();
        if let Some(s) = &spend {
            s.run.hold(amount)?;
        }
        let hold = match gateway.ledger.reserve(&caller.account, key, amount) {
            Ok(h) => h,
            Err(e) => {
                if let Some(s) = &spend {
                    s.run.settle(amount, 0);
                }
                return Err(e.into());
            }
        };
        Ok(Meter {
            gateway: gateway.clone(),
            endpoint,
            model: model.to_string(),
            provider: String::new(),
            byok: false,
            started: Instant::now(),
            hold: Some(hold),
            spend,
        })
    }

    /// Micro-credits held for the request (what it may be charged at most).
    pub fn held(&self) -> i64 {
        self.hold.as_ref().map_or(0, Hold::amount)
    }

    /// Charges `cost` (never more than was held) and writes the usage record, in the
    /// background. Does nothing the second time.
    pub fn finish(&mut self, status: u16, usage: Usage, images: u32, cost: i64) {
        self.finish_with(status, usage, images, cost, |_| Ok(()));
    }

    /// [`Meter::finish`], with `also` written in the same transaction as the charge
    /// and the usage record (a capability's own record of the request).
    pub fn finish_with<F>(&mut self, status: u16, usage: Usage, images: u32, cost: i64, also: F)
    where
        F: FnMut(&WriteTx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let charged = cost.clamp(0, hold.amount());
        if let Some(s) = self.spend.take() {
            s.run.settle(hold.amount(), charged);
            s.charged.fetch_add(charged, Ordering::AcqRel);
        }
        // The record is made on the store's writer thread, from what this request
        // hands over (its strings moved, not copied).
        let metered = Metered {
            endpoint: self.endpoint,
            model: std::mem::take(&mut self.model),
            provider: std::mem::take(&mut self.provider),
            byok: self.byok,
            usage,
            images,
            credits: charged,
            status,
            latency_ms: self.started.elapsed().as_millis() as u64,
            at_ms: now_ms(),
            // Anonymous: a day and a feature, counted only with the person's consent.
            counted: self.gateway.analytics.consents(hold.account()),
            record_key: None,
            also,
        };
        // Settled on the store's writer thread: no task and no wake-up per request.
        let pending = self.gateway.pending.clone();
        pending.enter();
        hold.settle(charged, metered, move |result| {
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot record a request's usage and charge");
            }
            pending.leave();
        });
    }
}

/// A finished request on its way to the writer: its usage record and the description
/// of its charge are made there, in the transaction that stores them.
struct Metered<F> {
    endpoint: &'static str,
    model: String,
    provider: String,
    byok: bool,
    usage: Usage,
    images: u32,
    credits: i64,
    status: u16,
    latency_ms: u64,
    at_ms: u64,
    counted: bool,
    /// The usage record's key, made on the writer by whichever of `posting` and `write`
    /// comes first.
    record_key: Option<TimedKey>,
    also: F,
}

/// The usage record's key, made once: the entry (in `posting`) names the record that
/// `write` stores.
fn record_key<'a>(
    slot: &'a mut Option<TimedKey>,
    account: &str,
    at_ms: u64,
) -> Result<&'a TimedKey, StoreError> {
    Ok(match slot {
        Some(k) => k,
        None => slot.insert(TimedKey::new(account, at_ms)?),
    })
}

impl<F> Charge for Metered<F>
where
    F: FnMut(&WriteTx<'_>) -> Result<(), StoreError> + Send + 'static,
{
    fn posting<'a>(
        &'a mut self,
        account: &str,
        key: Option<&'a str>,
    ) -> Result<Posting<&'a str>, StoreError> {
        let rk = record_key(&mut self.record_key, account, self.at_ms)?;
        Ok(Posting {
            key,
            model: Some(&self.model),
            usage: Some(&rk.id),
            note: self.endpoint,
            actor: None,
            at_ms: Some(self.at_ms),
        })
    }

    fn write(
        &mut self,
        tx: &WriteTx<'_>,
        account: &str,
        key: Option<&str>,
        _: Option<&Entry>,
    ) -> Result<(), StoreError> {
        let rk = record_key(&mut self.record_key, account, self.at_ms)?;
        let record = UsageRecord {
            id: rk.id.as_str(),
            account,
            key,
            endpoint: self.endpoint,
            model: &self.model,
            provider: &self.provider,
            byok: self.byok,
            input_tokens: self.usage.input_tokens,
            output_tokens: self.usage.output_tokens,
            images: self.images,
            credits: self.credits,
            status: self.status,
            latency_ms: self.latency_ms,
            at_ms: self.at_ms,
        };
        crate::usage::record(tx, rk, &record)?;
        if self.counted {
            crate::analytics::count_in(tx, self.at_ms, self.endpoint)?;
        }
        (self.also)(tx)
    }
}

impl Drop for Meter {
    /// A request that ends without settling (the client left) is recorded as 499 and
    /// charged nothing.
    fn drop(&mut self) {
        self.finish(499, Usage::default(), 0, 0);
    }
}

/// The error answered when every route failed, in words a person can act on.
pub(crate) fn upstream_error(model: &str, e: &UpstreamError) -> ApiError {
    match e {
        UpstreamError::Status {
            status: 429,
            retry_after,
            ..
        } => {
            let err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "upstream_rate_limited",
                format!(
                    "every provider for `{model}` is rate limiting: {}",
                    describe(e)
                ),
            );
            err.retry_after(retry_after.unwrap_or(5))
        }
        UpstreamError::Status {
            status: 401 | 403, ..
        } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_auth_failed",
            format!(
                "{}; an admin (or you, for your own key) must fix the provider connection",
                describe(e)
            ),
        ),
        UpstreamError::Status { status, .. } if *status < 500 => ApiError::new(
            StatusCode::BAD_REQUEST,
            "upstream_rejected",
            format!("the provider refused the request: {}", describe(e)),
        ),
        UpstreamError::Timeout(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("{e}; try again, or ask an admin to raise the provider's timeout"),
        ),
        UpstreamError::Unsupported(_) => ApiError::bad_request("unsupported", e.to_string()),
        UpstreamError::Refused { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_refused", e.to_string())
        }
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("no provider for `{model}` could answer: {}", describe(e)),
        ),
    }
}

/// Tries the model's routes in order: each up to `retries` more times after a
/// retryable failure (with jittered backoff), skipping providers whose breaker is open.
/// A failure that another try cannot mend (a 400, a bad key) ends it at once. When all
/// fail, the request is recorded with the status answered and the error returned.
pub(crate) async fn try_routes<'m, T, F, Fut>(
    config: &crate::config::GatewayConfig,
    model: &'m Resolved,
    meter: &mut Meter,
    mut call: F,
) -> Result<(T, &'m Route), ApiError>
where
    F: FnMut(&'m Route) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let cooldown = config.breaker_cooldown.get().as_millis() as u64;
    let mut last: Option<UpstreamError> = None;
    'routes: for route in &model.routes {
        let conn = &route.conn;
        if !conn.breaker.closed(now_ms()) {
            last.get_or_insert(UpstreamError::Connect(format!(
                "{} (skipped after repeated failures)",
                conn.name
            )));
            continue;
        }
        meter.provider = conn.name.clone();
        meter.byok = conn.byok();
        for attempt in 0..=conn.retries {
            if attempt > 0 {
                tokio::time::sleep(backoff(config.retry_backoff_ms, attempt)).await;
            }
            match call(route).await {
                Ok(out) => {
                    conn.breaker.succeeded();
                    return Ok((out, route));
                }
                Err(e) => {
                    tracing::warn!(provider = %conn.name, model = %model.id, attempt, error = %e, "upstream call failed");
                    let retry = e.retryable();
                    if retry {
                        conn.breaker
                            .failed(now_ms(), config.breaker_failures, cooldown);
                    }
                    last = Some(e);
                    if !retry {
                        break 'routes;
                    }
                }
            }
        }
    }
    let err = match &last {
        Some(e) => upstream_error(&model.id, e),
        None => ApiError::internal("a model with no routes was resolved"),
    };
    meter.finish(err.status.as_u16(), Usage::default(), 0, 0);
    Err(err)
}

/// Parses a JSON body, naming the field that is wrong.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    req: &actix_web::HttpRequest,
    body: &[u8],
) -> Result<T, ApiError> {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !ct
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    // The common case, a valid body, is read once without tracking the path; only a
    // body that fails is read again to name the field.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." || path.is_empty() {
            format!("the JSON body is not valid: {inner}")
        } else {
            format!("the JSON body is not valid at `{path}`: {inner}")
        };
        ApiError::bad_request("invalid_json", msg)
    })
}

/// The pause before try number `attempt` (1-based): doubling from `base_ms`, with
/// jitter between half and the whole of it.
pub(crate) fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let full = base_ms.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let r: [u8; 2] = crate::crypto::random_bytes().unwrap_or([128, 0]);
    let frac = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX);
    Duration::from_millis((full as f64 * (0.5 + frac / 2.0)) as u64)
}

#[cfg(test)]
mod tests {
    use super::{BACKLOG, Pending, backoff};
    use futures_util::FutureExt;

    #[test]
    fn new_requests_wait_while_the_charge_backlog_is_full() {
        let p = Pending::default();
        for _ in 0..BACKLOG - 1 {
            p.enter();
        }
        assert!(
            p.room().now_or_never().is_some(),
            "below the backlog: no wait"
        );
        p.enter();
        let mut waiting = Box::pin(p.room());
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "a full backlog waits"
        );
        p.leave();
        assert!(waiting.now_or_never().is_some(), "one commit makes room");
    }

    #[test]
    fn backoff_doubles_with_jitter_below_the_full_pause() {
        for attempt in 1..5 {
            let full = 100u64 << (attempt - 1);
            let d = backoff(100, attempt).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "{attempt}: {d}");
        }
    }
}

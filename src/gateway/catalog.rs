//! The model catalog as a caller sees it: which models exist, which routes can serve
//! them for this caller, and what they cost.

use crate::config::{Capability, Config, PriceConfig};
use crate::http::ApiError;
use crate::ledger::{from_credits, usd_to_micro};
use crate::providers::wire::Usage;
use crate::providers::{Connection, Providers};
use actix_web::http::StatusCode;
use std::sync::Arc;

/// One way to reach a model.
#[derive(Clone, Debug)]
pub struct Route {
    pub conn: Arc<Connection>,
    /// The provider's own model name.
    pub upstream: String,
}

/// A model with the routes that can serve it for one caller.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub id: String,
    pub capabilities: Vec<Capability>,
    pub price: PriceConfig,
    pub per_usd: f64,
    pub byok_fee: f64,
    pub max_output_tokens: u32,
    pub routes: Vec<Route>,
}

impl Resolved {
    /// Micro-credits a request costs over `route`: the catalog price, or only the
    /// platform fee on the person's own key.
    pub fn cost(&self, route: &Route, usage: Usage, images: u32) -> i64 {
        if route.conn.byok() {
            return from_credits(self.byok_fee).unwrap_or(0).max(0);
        }
        let p = &self.price;
        let usd = usage.input_tokens as f64 * p.input_per_mtok / 1e6
            + usage.output_tokens as f64 * p.output_per_mtok / 1e6
            + f64::from(images) * p.per_image;
        usd_to_micro(usd, self.per_usd)
    }

    /// The most any route may cost for `usage` and `images`.
    pub fn max_cost(&self, usage: Usage, images: u32) -> i64 {
        self.routes
            .iter()
            .map(|r| self.cost(r, usage, images))
            .max()
            .unwrap_or(0)
    }

    /// Refuses a model that lacks a capability.
    pub fn require(&self, cap: Capability) -> Result<(), ApiError> {
        if self.capabilities.contains(&cap) {
            return Ok(());
        }
        let what = match cap {
            Capability::Chat => "chat",
            Capability::Vision => "image input (vision)",
            Capability::Image => "image generation",
        };
        Err(ApiError::bad_request(
            "model_not_capable",
            format!(
                "model `{}` does not support {what}; GET /v1/models lists each model's capabilities",
                self.id
            ),
        ))
    }
}

fn not_found(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!(
            "the model `{model}` does not exist or you have no access to it; GET /v1/models lists what you can use"
        ),
    )
}

/// Finds `model` for `account`. A catalog id uses the catalog's routes (with the
/// person's own connection in place of the organisation's where they named one the
/// same); `connection/model` reaches one of the person's own connections directly.
pub async fn resolve(
    providers: &Providers,
    config: &Config,
    account: &str,
    model: &str,
) -> Result<Resolved, ApiError> {
    let reach = providers.reachable(account).await?;
    if let Some(m) = config.models.iter().find(|m| m.id == model) {
        let routes: Vec<Route> = m
            .routes
            .iter()
            .filter_map(|r| {
                let conn = reach.route(&r.provider).filter(|c| c.usable())?;
                Some(Route {
                    conn: conn.clone(),
                    upstream: r.model.clone(),
                })
            })
            .collect();
        if routes.is_empty() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_route",
                format!(
                    "no provider connection can serve `{model}` now: its providers have no key set; an admin can add one under Providers, or add your own"
                ),
            ));
        }
        return Ok(Resolved {
            id: m.id.clone(),
            capabilities: m.capabilities.clone(),
            price: m.price.clone(),
            per_usd: m.credits_per_usd.unwrap_or(config.credits.per_usd),
            byok_fee: config.credits.byok_fee,
            max_output_tokens: m
                .max_output_tokens
                .unwrap_or(config.gateway.max_output_tokens),
            routes,
        });
    }
    if let Some((name, upstream)) = model.split_once('/')
        && !upstream.is_empty()
        && let Some(conn) = reach.personal.get(name).cloned()
    {
        return Ok(Resolved {
            id: model.to_string(),
            capabilities: vec![Capability::Chat, Capability::Vision, Capability::Image],
            price: PriceConfig::default(),
            per_usd: config.credits.per_usd,
            byok_fee: config.credits.byok_fee,
            max_output_tokens: config.gateway.max_output_tokens,
            routes: vec![Route {
                conn,
                upstream: upstream.to_string(),
            }],
        });
    }
    Err(not_found(model))
}

/// The catalog models `account` can use now (a usable route through the organisation
/// or the person's own key), with their capabilities.
pub async fn available(
    providers: &Providers,
    config: &Config,
    account: &str,
) -> Result<Vec<(String, Vec<Capability>)>, ApiError> {
    let reach = providers.reachable(account).await?;
    let usable = |name: &str| reach.route(name).is_some_and(|c| c.usable());
    Ok(config
        .models
        .iter()
        .filter(|m| m.routes.iter().any(|r| usable(&r.provider)))
        .map(|m| (m.id.clone(), m.capabilities.clone()))
        .collect())
}

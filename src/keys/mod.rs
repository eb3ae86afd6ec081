//! API keys (data class `credentials`): `easel_sk_<public id>_<secret>`. Only the
//! SHA-256 of the secret is stored; the public id finds the key and is what lists
//! show. The secret is shown once, at creation.

mod routes;
mod service;

pub use routes::routes;
pub use service::{
    ApiKey, KeyError, Keys, NewKey, TABLES, count_of, expire_in, export_page, revoke_all_in,
};

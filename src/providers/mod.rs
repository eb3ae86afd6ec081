//! Provider connections (data class `provider_keys`) and the adapters that speak each
//! provider's wire format: `openai`, `openai-compatible`, `gemini`, `anthropic` and
//! `bfl`. Everything is translated to and from OpenAI's format ([`wire`]), so the
//! gateway deals with one shape.

mod anthropic;
mod bfl;
mod client;
mod gemini;
mod h1;
mod openai;
mod routes;
mod service;
mod upstream;
mod whole;
pub mod wire;

pub use routes::routes;
pub use service::{NewProvider, ProviderError, Providers, StoredProvider, TestResult, describe};
pub use service::{Reachable, TABLES, count_of, erase_in, export_page};
pub use upstream::{ChatOutput, Connection, StreamEvent, UpstreamError};
pub use whole::Whole;

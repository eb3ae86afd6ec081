//! Easel: a self-hosted AI image gateway in one binary.

pub mod config;
pub mod crypto;
pub mod store;

//! Easel: a self-hosted AI image gateway in one binary.
//!
//! Ground floor: [`config`], [`store`], [`crypto`], [`http`], [`cli`] (with the admin
//! socket in [`control`]). Capabilities sit on top, each in its own folder; [`app`] wires
//! them together at start-up.

pub mod accounts;
pub mod alt_text;
pub mod analytics;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod gateway;
pub mod http;
pub mod imaging;
pub mod keys;
pub mod ledger;
pub mod library;
pub mod local_model;
pub mod privacy;
pub mod providers;
pub mod skills;
pub mod store;
pub mod system;
pub mod usage;
pub mod web;

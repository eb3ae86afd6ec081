//! Accounts (data class `account`) and web sessions and invites (class `credentials`):
//! sign-up in the modes `[signup]` allows, sign-in with throttling, the person's own
//! profile, password and sessions, and what admins do to users.

mod deletion;
mod error;
mod model;
pub mod passwords;
mod routes;
mod service;
mod throttle;

pub use deletion::{
    DeletionRequest, LegalHold, TABLES, erase_account, erase_credentials, exists_in,
    expire_invites, expire_sessions_in, export_account, export_sessions_page,
};
pub use error::AccountError;
pub use model::{Account, Invite, StoredSession};
pub use routes::{cleared_cookie, routes};
pub use service::{Accounts, Actor, AdminChange, NewAccount, NewSession, Signup, normalize_email};

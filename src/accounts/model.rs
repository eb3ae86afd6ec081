//! What the accounts capability stores: accounts (class `account`), web sessions and
//! invites (class `credentials`).

use crate::auth::{AccountState, Role, Status};
use serde::{Deserialize, Serialize};

/// A person's account.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Account {
    pub id: String,
    /// Normalised: trimmed and lower-case.
    pub email: String,
    pub name: String,
    pub company: Option<String>,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub status: Status,
    pub created_ms: u64,
    /// When the person confirmed being 18 or older (`None` for accounts an admin made,
    /// until their owner confirms at first sign-in).
    pub adult_attested_ms: Option<u64>,
    /// Set by an admin reset or an admin-made account: a new password comes first.
    pub must_change_password: bool,
    pub password_changed_ms: u64,
}

impl Account {
    /// What the credential directory needs to know.
    pub fn state(&self) -> AccountState {
        AccountState {
            role: self.role,
            status: self.status,
            must_change_password: self.must_change_password,
        }
    }
}

/// A web session as stored (keyed by account id and the SHA-256 of its token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredSession {
    pub id: String,
    pub account: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub last_seen_ms: u64,
}

/// A single-use sign-up link (keyed by the SHA-256 of its token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Invite {
    pub id: String,
    pub created_by: String,
    /// When set, only this email can use the invite.
    pub email: Option<String>,
    pub role: Role,
    pub created_ms: u64,
    pub expires_ms: u64,
}

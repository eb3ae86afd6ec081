//! What can go wrong with accounts, and how each case is answered.

use crate::crypto::CryptoError;
use crate::http::ApiError;
use crate::store::StoreError;
use actix_web::http::StatusCode;

/// An accounts failure.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("`{0}` is not an email address")]
    InvalidEmail(String),
    #[error("an account with this email already exists; sign in instead")]
    EmailTaken,
    #[error("{0}")]
    WeakPassword(String),
    #[error("{0}")]
    Invalid(String),
    /// One answer for an unknown email and a wrong password, on purpose.
    #[error("the email or password is not right")]
    InvalidCredentials,
    #[error("the current password is not right")]
    WrongPassword,
    #[error("too many failed sign-ins; wait {0} s and try again")]
    Throttled(u64),
    #[error("too many failed sign-ins: signing in is locked for {0} s")]
    Locked(u64),
    #[error("this account is disabled; ask an admin")]
    Disabled,
    #[error(
        "this account is being erased after its deletion request and can no longer be signed in to"
    )]
    PendingDeletion,
    #[error("sign-up is closed here; ask an admin to create an account for you")]
    SignupClosed,
    #[error("sign-up here needs an invite link from an admin")]
    InviteRequired,
    #[error(
        "this invite link is not valid: it was used, revoked or has expired; ask an admin for a new one"
    )]
    InviteInvalid,
    #[error("this invite is for another email address")]
    InviteEmailMismatch,
    #[error("confirm that you are 18 or older to create an account")]
    AdultRequired,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this would leave Easel without an active admin; make another admin first")]
    LastAdmin,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        use AccountError as E;
        let msg = e.to_string();
        match e {
            E::InvalidEmail(_) => ApiError::bad_request("invalid_email", msg),
            E::EmailTaken => ApiError::conflict("email_taken", msg),
            E::WeakPassword(_) => ApiError::bad_request("weak_password", msg),
            E::Invalid(_) => ApiError::bad_request("invalid_field", msg),
            E::InvalidCredentials => ApiError::unauthorized("invalid_credentials", msg),
            E::WrongPassword => ApiError::forbidden("wrong_password", msg),
            E::Throttled(s) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", msg)
                    .retry_after(s)
            }
            E::Locked(s) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "sign_in_locked", msg).retry_after(s)
            }
            E::Disabled => ApiError::forbidden("account_disabled", msg),
            E::PendingDeletion => ApiError::forbidden("account_pending_deletion", msg),
            E::SignupClosed => ApiError::forbidden("signup_closed", msg),
            E::InviteRequired => ApiError::forbidden("invite_required", msg),
            E::InviteInvalid => ApiError::bad_request("invite_invalid", msg),
            E::InviteEmailMismatch => ApiError::bad_request("invite_email_mismatch", msg),
            E::AdultRequired => ApiError::bad_request("adult_required", msg),
            E::NotFound(_) => ApiError::not_found(msg),
            E::LastAdmin => ApiError::conflict("last_admin", msg),
            E::Store(e) => e.into(),
            E::Crypto(e) => ApiError::internal(e),
        }
    }
}

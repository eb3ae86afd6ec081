//! Argon2id password hashing, run on the blocking pool so it never stalls the runtime.

use super::{CryptoError, Secret};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// OWASP's recommended Argon2id settings: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Result<Argon2<'static>, CryptoError> {
    let params =
        Params::new(19 * 1024, 2, 1, None).map_err(|e| CryptoError::Internal(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub async fn hash_password(password: Secret<String>) -> Result<String, CryptoError> {
    tokio::task::spawn_blocking(move || {
        let hash = hasher()?
            .hash_password(password.expose().as_bytes())
            .map_err(|e| CryptoError::Internal(e.to_string()))?;
        Ok(hash.to_string())
    })
    .await
    .map_err(|e| CryptoError::Internal(e.to_string()))?
}

/// Checks a password against a PHC string; `false` for a wrong password.
pub async fn verify_password(password: Secret<String>, phc: String) -> Result<bool, CryptoError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc)
            .map_err(|e| CryptoError::Internal(format!("stored hash: {e}")))?;
        Ok(hasher()?
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| CryptoError::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_right_password_verifies_and_a_wrong_one_does_not() {
        let phc = hash_password(Secret::new("correct horse battery".into()))
            .await
            .expect("hashes");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            verify_password(Secret::new("correct horse battery".into()), phc.clone())
                .await
                .expect("verifies")
        );
        assert!(
            !verify_password(Secret::new("wrong horse battery".into()), phc)
                .await
                .expect("verifies")
        );
    }
}

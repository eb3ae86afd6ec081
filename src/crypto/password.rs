//! Argon2id password hashing, run on the blocking pool so it never stalls the runtime.

use super::{CryptoError, Secret};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id cost settings (`[auth] argon2_*`). Verifying reads the settings stored in
/// each hash, so a change applies to new hashes and old ones keep verifying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// OWASP's recommended Argon2id settings: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        PasswordParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

fn hasher(p: PasswordParams) -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
        .map_err(|e| CryptoError::Internal(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=...,t=...,p=...$...`).
pub async fn hash_password(
    password: Secret<String>,
    params: PasswordParams,
) -> Result<String, CryptoError> {
    tokio::task::spawn_blocking(move || {
        let hash = hasher(params)?
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
        Ok(Argon2::default()
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
        let phc = hash_password(
            Secret::new("correct horse battery".into()),
            PasswordParams::default(),
        )
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

    #[tokio::test]
    async fn a_hash_made_with_other_settings_still_verifies() {
        let cheap = PasswordParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let phc = hash_password(Secret::new("correct horse battery".into()), cheap)
            .await
            .expect("hashes");
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{phc}");
        assert!(
            verify_password(Secret::new("correct horse battery".into()), phc)
                .await
                .expect("verifies")
        );
    }
}

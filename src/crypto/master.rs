//! Where the master key comes from: `EASEL_MASTER_KEY` (base64), then a systemd
//! credential (`$CREDENTIALS_DIRECTORY/master.key`), then the key file made by `easel init`.

use super::{CryptoError, MasterKey, SymKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that may hold the master key, base64-encoded.
pub const MASTER_KEY_ENV: &str = "EASEL_MASTER_KEY";

/// Where the master key in use was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The `EASEL_MASTER_KEY` environment variable.
    Env,
    /// A systemd credential file.
    Credential(PathBuf),
    /// The key file from the config.
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "environment variable {MASTER_KEY_ENV}"),
            KeySource::Credential(p) => write!(f, "systemd credential {}", p.display()),
            KeySource::File(p) => write!(f, "key file {}", p.display()),
        }
    }
}

fn decode(text: &str, origin: &str) -> Result<MasterKey, CryptoError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| {
        CryptoError::MasterKey(format!("{origin} is not base64; it must hold 32 random bytes in base64 (make one with `easel init`)"))
    })?;
    let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        CryptoError::MasterKey(format!(
            "{origin} holds {} bytes; a master key is exactly 32 bytes",
            b.len()
        ))
    })?;
    Ok(MasterKey(SymKey::from_bytes(arr)))
}

/// Reads a key file, refusing one that group or others can read.
pub fn read_key_file(path: &Path) -> Result<MasterKey, CryptoError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        CryptoError::MasterKey(format!(
            "cannot read master key file {}: {e}",
            path.display()
        ))
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::MasterKey(format!(
            "master key file {} can be read by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        CryptoError::MasterKey(format!(
            "cannot read master key file {}: {e}",
            path.display()
        ))
    })?;
    decode(&text, &format!("master key file {}", path.display()))
}

/// Finds the master key. `Ok(None)` means no source has one (the key file does not exist).
pub fn load_master_key(
    key_file: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<(MasterKey, KeySource)>, CryptoError> {
    if let Some(text) = env(MASTER_KEY_ENV) {
        return decode(&text, MASTER_KEY_ENV).map(|k| Some((k, KeySource::Env)));
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join("master.key");
        if path.exists() {
            return read_key_file(&path).map(|k| Some((k, KeySource::Credential(path))));
        }
    }
    if key_file.exists() {
        return read_key_file(key_file).map(|k| Some((k, KeySource::File(key_file.to_path_buf()))));
    }
    Ok(None)
}

/// Writes a new random master key to `path` with mode 0600. Never overwrites a file.
pub fn create_key_file(path: &Path) -> Result<MasterKey, CryptoError> {
    let key = MasterKey::generate()?;
    write_key_file(path, &key)?;
    Ok(key)
}

/// Writes `key` to a new file at `path` (mode 0600, fsynced). Never overwrites.
pub(crate) fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), CryptoError> {
    let fail = |e: std::io::Error| {
        CryptoError::MasterKey(format!(
            "cannot write master key file {}: {e}",
            path.display()
        ))
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let mut text = zeroize::Zeroizing::new(STANDARD.encode(key.0.expose()));
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let key = create_key_file(&path).expect("creates");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_key_file(&path).expect("reads").id_hex(), key.id_hex());
        assert!(create_key_file(&path).is_err(), "must not overwrite");
    }

    #[test]
    fn a_world_readable_key_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        create_key_file(&path).expect("creates");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_key_file(&path).expect_err("refused").to_string();
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn the_environment_wins_over_the_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        create_key_file(&path).expect("creates");
        let b64 = STANDARD.encode([7u8; 32]);
        let (key, source) = load_master_key(&path, |k| (k == MASTER_KEY_ENV).then(|| b64.clone()))
            .expect("loads")
            .expect("found");
        assert_eq!(source, KeySource::Env);
        assert_eq!(
            key.id_hex(),
            MasterKey(SymKey::from_bytes([7u8; 32])).id_hex()
        );
        let short = STANDARD.encode([7u8; 16]);
        let err = load_master_key(&path, |k| (k == MASTER_KEY_ENV).then(|| short.clone()))
            .expect_err("refused");
        assert!(err.to_string().contains("16 bytes"), "{err}");
    }
}

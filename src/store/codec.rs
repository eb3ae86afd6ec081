//! The on-disk record codec: one version byte, then postcard.
//!
//! The version byte lets a later release change the encoding of a record type and
//! still read what an older release wrote.

use super::StoreError;
use serde::{Serialize, de::DeserializeOwned};

/// The codec version written in front of every record.
pub const CODEC_V1: u8 = 1;

/// Bytes first set aside for an encoding: a usage record or a ledger entry fits.
const RECORD_ROOM: usize = 256;

/// Encodes a record.
pub fn encode<V: Serialize>(table: &str, value: &V) -> Result<Vec<u8>, StoreError> {
    // Encoded straight after the version byte: one buffer, no copy, with room for a
    // usual record so that it is not grown field by field.
    let mut buf = Vec::with_capacity(RECORD_ROOM);
    buf.push(CODEC_V1);
    postcard::to_extend(value, buf).map_err(|e| StoreError::Corrupt {
        table: table.to_string(),
        message: format!("cannot encode: {e}"),
    })
}

/// Decodes a record written by [`encode`].
pub fn decode<V: DeserializeOwned>(table: &str, bytes: &[u8]) -> Result<V, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        table: table.to_string(),
        message,
    };
    match bytes.split_first() {
        Some((&CODEC_V1, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!(
            "record codec version {v} is newer than this build knows ({CODEC_V1}); upgrade Easel"
        ))),
        None => Err(corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_carry_their_version() {
        let bytes = encode("t", &("hello", 42u32)).expect("encodes");
        assert_eq!(bytes[0], CODEC_V1);
        let back: (String, u32) = decode("t", &bytes).expect("decodes");
        assert_eq!(back, ("hello".to_string(), 42));
    }

    #[test]
    fn an_unknown_codec_version_is_an_error_not_garbage() {
        let mut bytes = encode("t", &7u32).expect("encodes");
        bytes[0] = 9;
        let err = decode::<u32>("t", &bytes).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
    }
}

//! The DB-update hook's contract ("Lambda 2"): the JSON bodies the processor POSTs to it and how
//! each request is signed, so that the team owning the hook can validate (JSON Schema files
//! `hook_thumbnail.schema.json`, `hook_embeddings.schema.json`) and authenticate what it
//! receives. `docs/hook.md` is the document for that team.
//!
//! Signing: `X-Pipeline-Timestamp` is the request's Unix time in seconds, and
//! `X-Pipeline-Signature` is `v1=` + hex(HMAC-SHA256(secret, "{timestamp}." + body)). A receiver
//! recomputes it over the raw body, compares in constant time, and refuses a timestamp more than
//! [`REPLAY_WINDOW_SECS`] away from its clock, so a captured request cannot be replayed later.

use crate::Face;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Header carrying the request's Unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "x-pipeline-timestamp";
/// Header carrying `v1=<hex HMAC-SHA256>` of `"{timestamp}." + body`.
pub const SIGNATURE_HEADER: &str = "x-pipeline-signature";
/// How far a request's timestamp may be from the receiver's clock (either way).
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// Body of the call made once a photo's thumbnail is in object storage (`"event": "thumbnail"`,
/// idempotency key = `photo_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailHook {
    pub schema_version: u32,
    /// Always `"thumbnail"`.
    pub event: String,
    pub photo_id: String,
    pub user_id: String,
    pub bucket: String,
    pub original_key: String,
    /// The original's size in bytes, for storage accounting.
    pub original_size_bytes: u64,
    /// The original's format as detected from its bytes (`image/jpeg`, `image/heic`, ...).
    pub original_content_type: String,
    pub thumbnail_key: String,
    /// The thumbnail's content type (`image/jpeg`).
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    /// The thumbnail's size in bytes.
    pub size_bytes: u64,
    /// The original's pixel size, upright (after EXIF orientation).
    pub source_width: u32,
    pub source_height: u32,
}

/// Body of the call made once a photo's faces are known, zero faces included
/// (`"event": "embeddings"`, idempotency key = `{photo_id}:embeddings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsHook {
    pub schema_version: u32,
    /// Always `"embeddings"`.
    pub event: String,
    pub photo_id: String,
    pub user_id: String,
    pub bucket: String,
    pub original_key: String,
    /// Model profile of the embeddings; only embeddings of one profile are comparable.
    pub profile: String,
    /// Every face found (unlike `EmbeddingDone`, which may leave a crowd's smallest out).
    pub faces: Vec<Face>,
}

/// `v1=<hex>` signature of `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// A header is missing or not in the expected form.
    Malformed,
    /// The timestamp is outside the replay window.
    Stale,
    /// The signature does not match the body and timestamp.
    Mismatch,
}

/// Check a request's `timestamp` and `signature` headers against its raw `body` at `now`
/// (Unix seconds); the comparison is constant-time.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    let sig = signature
        .trim()
        .strip_prefix("v1=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Malformed)?;
    if (now - ts).abs() > REPLAY_WINDOW_SECS {
        return Err(SignatureError::Stale);
    }
    mac(secret, ts, body)
        .verify_slice(&sig)
        .map_err(|_| SignatureError::Mismatch)
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_any_change_is_refused() {
        let body = br#"{"event":"thumbnail"}"#;
        let sig = sign(b"secret", 1_000, body);
        assert_eq!(verify(b"secret", "1000", &sig, body, 1_100), Ok(()));
        assert_eq!(
            verify(b"other", "1000", &sig, body, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", "1000", &sig, br#"{"event":"thumbnails"}"#, 1_000),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is signed: moving it into the window does not help a replay.
        assert_eq!(
            verify(b"secret", "1001", &sig, body, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"secret",
                "1000",
                &sig,
                body,
                1_000 + REPLAY_WINDOW_SECS + 1
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"secret", "soon", &sig, body, 1_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"secret", "1000", &sig.replace("v1=", "v2="), body, 1_000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Independent of this module: RFC 4231 test case 2 (key "Jefe"), with the message split
        // as "{timestamp}." + body.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"42.{}");
        assert_eq!(
            sign(b"k", 42, b"{}"),
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        );
    }
}

//! Fuzz the B2 webhook's verifier and parser (`processor::ingest`): input is a signature
//! header and a body. Nothing may panic; a body signed with the secret must verify and a
//! different signature must not; a parsed notification's object keys go through the photo-key
//! mapping exactly as the handler does.
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use processor::ingest::{verify, B2Notification};
use processor::keys::KeyPattern;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-webhook-secret";

fuzz_target!(|data: &[u8]| {
    // [header length][header][body]
    let (header, body) = match data.split_first() {
        Some((&n, rest)) if rest.len() >= n as usize => rest.split_at(n as usize),
        _ => (&[][..], data),
    };
    let header = String::from_utf8_lossy(header);
    let forged_ok = verify(SECRET, body, &header);

    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(body);
    let good = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert!(
        verify(SECRET, body, &good),
        "a correct signature must verify"
    );
    if forged_ok {
        // Only the correct MAC (modulo hex case and surrounding whitespace) may pass.
        assert_eq!(
            header.trim().to_ascii_lowercase(),
            good,
            "forged signature accepted"
        );
    }

    if let Ok(note) = serde_json::from_slice::<B2Notification>(body) {
        let photos = KeyPattern::parse("users/{user_id}/photos/{file}").unwrap();
        for e in &note.events {
            if let Some(key) = e.object_name.as_deref() {
                if let Ok(k) = photos.match_key(key) {
                    assert_eq!(photos.render(&k.user_id, &k.file), key);
                    let _ = schemas::photo_id(
                        e.bucket_name.as_deref().unwrap_or(""),
                        key,
                        e.object_version_id.as_deref().unwrap_or(""),
                    );
                }
            }
        }
        // What we parsed serialises back (the reply and logs carry these fields).
        serde_json::to_vec(&note).unwrap();
    }
});

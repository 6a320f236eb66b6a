//! Fuzz the object-key → user mapping (`processor::keys`): arbitrary patterns and keys. Nothing
//! may panic; an accepted key has a safe user id and renders back to itself, and a key a valid
//! pattern renders from a safe user id maps back to the same parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use processor::keys::{validate_user_id, KeyPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // [pattern]\n[key], or just a key against the default pattern.
    let (pattern, key) = match text.split_once('\n') {
        Some((p, k)) => (p, k),
        None => ("users/{user_id}/photos/{file}", text),
    };
    let Ok(p) = KeyPattern::parse(pattern) else {
        return;
    };
    if let Ok(k) = p.match_key(key) {
        assert!(validate_user_id(&k.user_id).is_ok());
        assert!(!k.user_id.contains('/') && k.user_id != ".." && k.user_id != ".");
        assert!(!k.file.is_empty());
        assert_eq!(
            p.render(&k.user_id, &k.file),
            key,
            "render(match(key)) != key"
        );
    }
    // The other direction: a safe user id and a file give a key that maps back to a user.
    if let Some((user, file)) = key.split_once('|') {
        if validate_user_id(user).is_ok() && !file.is_empty() && !file.ends_with('/') {
            let rendered = p.render(user, file);
            if let Ok(k) = p.match_key(&rendered) {
                assert!(validate_user_id(&k.user_id).is_ok());
                assert_eq!(p.render(&k.user_id, &k.file), rendered);
            }
        }
    }
});

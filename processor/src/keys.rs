//! Object-key patterns: which keys are users' photos (and whose), and where thumbnails go.
//!
//! A pattern is literal text with two placeholders, `{user_id}` (one path segment) and
//! `{file}` (the rest: may contain `/`), e.g. `users/{user_id}/photos/{file}`.

use thiserror::Error;

/// Why a key or pattern was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("pattern {0:?} must contain {{user_id}} and {{file}} exactly once, {{user_id}} first")]
    BadPattern(String),
    #[error("key is outside the photo prefix {0:?}")]
    OutsidePattern(String),
    #[error("user id {0:?} is not 1-128 characters of [A-Za-z0-9._-]")]
    BadUserId(String),
    #[error(
        "key is not a valid B2 file name (over {MAX_KEY_BYTES} bytes, or has control characters)"
    )]
    BadKey,
}

/// B2 file names are at most 1,024 bytes of UTF-8 without characters below 32 or DEL; a key
/// that breaks this did not come from B2 and could not be fetched from it.
pub const MAX_KEY_BYTES: usize = 1024;

/// A parsed key pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    raw: String,
    prefix: String,
    middle: String,
    suffix: String,
}

/// The parts of a photo key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoKey {
    pub user_id: String,
    pub file: String,
}

impl KeyPattern {
    pub fn parse(pattern: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadPattern(pattern.to_string());
        let (prefix, rest) = pattern.split_once("{user_id}").ok_or_else(bad)?;
        let (middle, suffix) = rest.split_once("{file}").ok_or_else(bad)?;
        if suffix.contains('{') || prefix.contains('{') || middle.contains('{') || middle.is_empty()
        {
            return Err(bad());
        }
        Ok(Self {
            raw: pattern.into(),
            prefix: prefix.into(),
            middle: middle.into(),
            suffix: suffix.into(),
        })
    }

    /// Split a key into user and file, refusing keys outside the pattern and unsafe user ids.
    pub fn match_key(&self, key: &str) -> Result<PhotoKey, KeyError> {
        let outside = || KeyError::OutsidePattern(self.raw.clone());
        if key.len() > MAX_KEY_BYTES || key.chars().any(|c| c < ' ' || c == '\x7f') {
            return Err(KeyError::BadKey);
        }
        let rest = key.strip_prefix(&self.prefix).ok_or_else(outside)?;
        let rest = rest.strip_suffix(&self.suffix).ok_or_else(outside)?;
        let (user_id, file) = rest.split_once(&self.middle).ok_or_else(outside)?;
        if file.is_empty() || file.ends_with('/') {
            return Err(outside());
        }
        validate_user_id(user_id)?;
        Ok(PhotoKey {
            user_id: user_id.into(),
            file: file.into(),
        })
    }

    /// Build a key from its parts.
    pub fn render(&self, user_id: &str, file: &str) -> String {
        format!(
            "{}{}{}{}{}",
            self.prefix, user_id, self.middle, file, self.suffix
        )
    }
}

/// User ids become Kafka keys, object-key segments and URL path segments: keep them boring.
pub fn validate_user_id(user_id: &str) -> Result<(), KeyError> {
    let ok = (1..=128).contains(&user_id.len())
        && user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && user_id != "."
        && user_id != "..";
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadUserId(user_id.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_patterns() {
        let photos = KeyPattern::parse("users/{user_id}/photos/{file}").unwrap();
        let k = photos.match_key("users/u1/photos/2024/IMG_1.jpg").unwrap();
        assert_eq!(
            k,
            PhotoKey {
                user_id: "u1".into(),
                file: "2024/IMG_1.jpg".into()
            }
        );
        let thumbs = KeyPattern::parse("users/{user_id}/thumbs/{file}.jpg").unwrap();
        assert_eq!(thumbs.render("u1", "a.png"), "users/u1/thumbs/a.png.jpg");
        // thumbnails themselves are not photos: no feedback loop when B2 notifies on them.
        assert!(photos.match_key("users/u1/thumbs/a.png.jpg").is_err());
    }

    #[test]
    fn refuses_keys_outside_and_bad_users() {
        let p = KeyPattern::parse("users/{user_id}/photos/{file}").unwrap();
        for key in [
            "other/u1/photos/a.jpg",
            "users/u1/photos/",
            "users//photos/a.jpg",
            "users/u1/a.jpg",
            "users/../photos/x",
        ] {
            assert!(p.match_key(key).is_err(), "{key} should be refused");
        }
        assert_eq!(
            p.match_key("users/u 1/photos/a.jpg"),
            Err(KeyError::BadUserId("u 1".into()))
        );
        for key in [
            "users/u1/photos/a\0.jpg".to_string(),
            "users/u1/photos/a\nb.jpg".to_string(),
            "users/u1/photos/a\x7f.jpg".to_string(),
            format!("users/u1/photos/{}.jpg", "a".repeat(1100)),
        ] {
            assert_eq!(p.match_key(&key), Err(KeyError::BadKey), "{key:?}");
        }
        assert!(KeyPattern::parse("users/{file}/{user_id}").is_err());
        assert!(KeyPattern::parse("users/photos").is_err());
    }
}

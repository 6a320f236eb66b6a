//! Presigned S3 URLs for the console: the browser PUTs photos straight to object storage (as
//! the real app does with B2) and GETs thumbnails from it, so bytes never pass through
//! status-api. A user can only get URLs under their own key prefix: the user id comes from
//! the checked token, and file names are reduced to one safe path segment.

use aws_sdk_s3::presigning::PresigningConfig;
use service_kit::s3::S3Args;
use std::time::Duration;

/// Where photos go and how long a URL stays valid.
#[derive(Debug, Clone)]
pub struct PresignConfig {
    /// The object store as browsers reach it.
    pub s3: S3Args,
    pub bucket: String,
    /// `users/{user_id}/photos/{file}`, as the processor's `PHOTO_KEY_PATTERN`.
    pub photo_key_pattern: String,
    pub ttl: Duration,
}

/// Why a URL was not made.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    #[error("presigning failed: {0}")]
    Sdk(String),
    #[error("key {0:?} is not under this user's prefix")]
    NotYours(String),
}

/// Mints presigned URLs (a local computation: no request is sent).
#[derive(Clone)]
pub struct Presigner {
    client: aws_sdk_s3::Client,
    cfg: PresignConfig,
}

/// One path segment from a browser's file name: the last component, only
/// `[A-Za-z0-9._-]` (others become `_`), no leading dots, at most 120 bytes; never empty.
pub fn sanitize_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    out = out.trim_start_matches('.').to_string();
    if out.len() > 120 {
        // Keep the extension, which the thumbnail key and the content type may rely on.
        let ext = out
            .rfind('.')
            .filter(|&i| out.len() - i <= 10)
            .map(|i| out[i..].to_string())
            .unwrap_or_default();
        out.truncate(120 - ext.len());
        out.push_str(&ext);
    }
    if out.is_empty() || out.chars().all(|c| c == '_') {
        out = format!("photo{out}");
    }
    out
}

impl Presigner {
    pub fn new(cfg: PresignConfig) -> Self {
        let conf = cfg
            .s3
            .client_config("status-api")
            // No checksum in the signature: the browser sends the bytes, it cannot add one.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(conf),
            cfg,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.cfg.bucket
    }

    /// The object key for `user_id`'s upload of `file_name` (sanitised).
    pub fn photo_key(&self, user_id: &str, file_name: &str) -> String {
        self.cfg
            .photo_key_pattern
            .replace("{user_id}", user_id)
            .replace("{file}", &sanitize_file_name(file_name))
    }

    /// The key prefix that belongs to `user_id` (everything before `{user_id}` plus the id
    /// and the separator after it).
    pub fn user_prefix(&self, user_id: &str) -> String {
        let p = &self.cfg.photo_key_pattern;
        match p.find("{user_id}") {
            Some(i) => format!("{}{user_id}/", &p[..i]),
            None => format!("users/{user_id}/"),
        }
    }

    fn presigning(&self) -> Result<PresigningConfig, PresignError> {
        PresigningConfig::expires_in(self.cfg.ttl).map_err(|e| PresignError::Sdk(e.to_string()))
    }

    /// A presigned PUT for `key`, which must be under `user_id`'s prefix.
    pub async fn put_url(&self, user_id: &str, key: &str) -> Result<String, PresignError> {
        self.check_owner(user_id, key)?;
        let req = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| PresignError::Sdk(e.to_string()))?;
        Ok(req.uri().to_string())
    }

    /// A presigned GET for `key`, which must be under `user_id`'s prefix.
    pub async fn get_url(&self, user_id: &str, key: &str) -> Result<String, PresignError> {
        self.check_owner(user_id, key)?;
        let req = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| PresignError::Sdk(e.to_string()))?;
        Ok(req.uri().to_string())
    }

    fn check_owner(&self, user_id: &str, key: &str) -> Result<(), PresignError> {
        if key.starts_with(&self.user_prefix(user_id)) && !key.contains("..") {
            Ok(())
        } else {
            Err(PresignError::NotYours(key.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presigner() -> Presigner {
        Presigner::new(PresignConfig {
            s3: S3Args {
                endpoint: "http://127.0.0.1:9000".into(),
                region: "us-east-1".into(),
                access_key: "local".into(),
                secret_key: "localsecret".into(),
            },
            bucket: "photos".into(),
            photo_key_pattern: "users/{user_id}/photos/{file}".into(),
            ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn file_names_become_one_safe_segment() {
        assert_eq!(sanitize_file_name("IMG_0001.JPG"), "IMG_0001.JPG");
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(
            sanitize_file_name("C:\\x\\my photo (1).jpg"),
            "my_photo__1_.jpg"
        );
        assert_eq!(sanitize_file_name(".."), "photo");
        assert_eq!(sanitize_file_name(""), "photo");
        assert_eq!(sanitize_file_name("été.jpg"), "_t_.jpg");
        let long = format!("{}.jpeg", "a".repeat(300));
        let s = sanitize_file_name(&long);
        assert!(s.len() == 120 && s.ends_with(".jpeg"), "{s}");
    }

    #[tokio::test]
    async fn urls_only_under_the_users_prefix() {
        let p = presigner();
        let key = p.photo_key("u1", "../u2/photos/x.jpg");
        assert_eq!(key, "users/u1/photos/x.jpg");
        let url = p.put_url("u1", &key).await.unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:9000/photos/users/u1/photos/x.jpg?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(!url.to_lowercase().contains("checksum"), "{url}");
        assert!(p.put_url("u1", "users/u2/photos/x.jpg").await.is_err());
        assert!(p
            .get_url("u1", "users/u1/../u2/thumbs/x.jpg")
            .await
            .is_err());
        assert!(p.get_url("u1", "users/u1x/thumbs/x.jpg").await.is_err());
    }
}

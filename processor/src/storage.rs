//! Object storage (S3 API: Backblaze B2 in production, the local S3 server in development):
//! downloading originals and uploading thumbnails, with bounded retries.

use crate::retry::{retry, Attempt, RetryPolicy};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use schemas::{Failure, FailureReason};
use service_kit::s3::S3Args;
use std::time::Duration;

/// An S3 client with our retry policy and size limit.
#[derive(Clone)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    retry: RetryPolicy,
    max_object_bytes: u64,
}

/// An S3 client for `cfg` with our timeouts (connect 5 s, each attempt 30 s).
pub fn s3_client(cfg: &S3Args) -> aws_sdk_s3::Client {
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .build();
    let conf = cfg
        .client_config("photo-pipeline")
        .timeout_config(timeouts)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Why an object-store operation failed, as the SDK's answer is classified.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key or bucket does not exist (permanent).
    #[error("not found: {0}")]
    NotFound(String),
    /// The object is larger than `MAX_OBJECT_BYTES` (permanent; refused before reading it).
    #[error("object is {len} bytes, above the limit of {max}")]
    TooLarge { len: u64, max: u64 },
    /// Anything else: network, timeouts, 5xx, throttling (retried).
    #[error("{0}")]
    Unavailable(String),
}

impl StorageError {
    /// The photo's recorded failure after `attempts` tries of `op` (e.g. "GET bucket/key"):
    /// the one place a storage error becomes a [`FailureReason`].
    fn into_failure(self, op: &str, attempts: u32) -> Failure {
        let (reason, detail) = match &self {
            Self::NotFound(_) => (FailureReason::NotFound, format!("{op}: {self}")),
            Self::TooLarge { .. } => (FailureReason::ObjectTooLarge, self.to_string()),
            Self::Unavailable(_) => (
                FailureReason::StorageError,
                format!("{op} failed after {attempts} attempts: {self}"),
            ),
        };
        Failure { reason, detail }
    }
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> Attempt<StorageError> {
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .unwrap_or("")
        .to_string();
    let text = match e.as_service_error() {
        Some(s) => format!("{}: {}", code, s.message().unwrap_or("")),
        None => format!("{e:?}").chars().take(300).collect(),
    };
    match code.as_str() {
        "NoSuchKey" | "NoSuchBucket" | "NotFound" => {
            Attempt::Permanent(StorageError::NotFound(text))
        }
        _ => Attempt::Transient(StorageError::Unavailable(text)),
    }
}

impl ObjectStore {
    pub fn new(cfg: &S3Args, retry: RetryPolicy, max_object_bytes: u64) -> Self {
        Self {
            client: s3_client(cfg),
            retry,
            max_object_bytes,
        }
    }

    /// Download an object whole, refusing objects above the size limit before reading them.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, Failure> {
        let max = self.max_object_bytes;
        let result = retry(self.retry, "s3_get", || async move {
            let resp = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(classify)?;
            let len = resp.content_length().unwrap_or(0).max(0) as u64;
            if len > max {
                return Err(Attempt::Permanent(StorageError::TooLarge { len, max }));
            }
            let body = resp.body.collect().await.map_err(|e| {
                Attempt::Transient(StorageError::Unavailable(format!("reading body: {e}")))
            })?;
            Ok(body.into_bytes().to_vec())
        })
        .await;
        result.map_err(|(e, attempts)| e.into_failure(&format!("GET {bucket}/{key}"), attempts))
    }

    /// Upload an object (idempotent: the same key is overwritten with the same bytes on redelivery).
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), Failure> {
        let body = bytes::Bytes::from(body);
        retry(self.retry, "s3_put", || {
            let body = body.clone();
            async move {
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_type(content_type)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(classify)?;
                Ok(())
            }
        })
        .await
        .map_err(|(e, attempts)| e.into_failure(&format!("PUT {bucket}/{key}"), attempts))
    }

    /// Delete an object (retried like the others; deleting a missing key succeeds in S3).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Failure> {
        retry(self.retry, "s3_delete", || async move {
            self.client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
        .await
        .map_err(|(e, attempts)| e.into_failure(&format!("DELETE {bucket}/{key}"), attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_storage_error_becomes_its_failure_reason() {
        let f = StorageError::NotFound("NoSuchKey: gone".into()).into_failure("GET b/k", 1);
        assert_eq!(f.reason, FailureReason::NotFound);
        assert_eq!(f.detail, "GET b/k: not found: NoSuchKey: gone");
        let f = StorageError::TooLarge { len: 10, max: 5 }.into_failure("GET b/k", 1);
        assert_eq!(f.reason, FailureReason::ObjectTooLarge);
        assert_eq!(f.detail, "object is 10 bytes, above the limit of 5");
        let f = StorageError::Unavailable("503".into()).into_failure("PUT b/k", 7);
        assert_eq!(f.reason, FailureReason::StorageError);
        assert_eq!(f.detail, "PUT b/k failed after 7 attempts: 503");
    }
}

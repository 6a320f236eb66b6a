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

fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> Attempt<String> {
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
            Attempt::Permanent(format!("not found: {text}"))
        }
        _ => Attempt::Transient(text),
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
                return Err(Attempt::Permanent(format!("too_large:{len}")));
            }
            let body = resp
                .body
                .collect()
                .await
                .map_err(|e| Attempt::Transient(format!("reading body: {e}")))?;
            Ok(body.into_bytes().to_vec())
        })
        .await;
        result.map_err(|(e, attempts)| {
            if let Some(len) = e.strip_prefix("too_large:") {
                Failure {
                    reason: FailureReason::ObjectTooLarge,
                    detail: format!("object is {len} bytes, above the limit of {max}"),
                }
            } else if e.starts_with("not found") {
                Failure {
                    reason: FailureReason::NotFound,
                    detail: format!("{bucket}/{key}: {e}"),
                }
            } else {
                Failure {
                    reason: FailureReason::StorageError,
                    detail: format!("GET {bucket}/{key} failed after {attempts} attempts: {e}"),
                }
            }
        })
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
        .map_err(|(e, attempts)| Failure {
            reason: FailureReason::StorageError,
            detail: format!("PUT {bucket}/{key} failed after {attempts} attempts: {e}"),
        })
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
        .map_err(|(e, attempts)| Failure {
            reason: FailureReason::StorageError,
            detail: format!("DELETE {bucket}/{key} failed after {attempts} attempts: {e}"),
        })
    }
}

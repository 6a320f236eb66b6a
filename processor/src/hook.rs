//! The DB-update hook ("Lambda 2" in the old system): an HTTP endpoint told about each new
//! thumbnail, and then about each photo's faces and embeddings, so the app's database can show
//! them. Retried with backoff; the idempotency key is the photo id (thumbnail) or
//! `{photo_id}:embeddings`, so a redelivered photo updates the same row.

use crate::retry::{retry, Attempt, RetryPolicy};
use schemas::{Face, Failure, FailureReason};
use serde::Serialize;
use std::time::Duration;

/// The JSON body POSTed to the hook for a new thumbnail.
#[derive(Debug, Clone, Serialize)]
pub struct HookCall<'a> {
    pub photo_id: &'a str,
    pub user_id: &'a str,
    pub bucket: &'a str,
    pub original_key: &'a str,
    pub thumbnail_key: &'a str,
    pub content_type: &'a str,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
    pub source_width: u32,
    pub source_height: u32,
}

/// The JSON body POSTed to the hook once a photo's faces are known (zero faces included).
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingsHookCall<'a> {
    /// Always `"embeddings"` (thumbnail calls carry no `event`, as before).
    pub event: &'static str,
    pub photo_id: &'a str,
    pub user_id: &'a str,
    pub bucket: &'a str,
    pub original_key: &'a str,
    /// Model profile of the embeddings; only embeddings of one profile are comparable.
    pub profile: &'a str,
    pub faces: &'a [Face],
}

/// Client for the hook; a no-op when no URL is configured.
#[derive(Clone)]
pub struct DbHook {
    url: Option<String>,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl DbHook {
    pub fn new(url: Option<String>, retry: RetryPolicy) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client builds with static settings");
        Self { url, http, retry }
    }

    /// POST the call; 2xx and 409 (already applied) succeed, other 4xx fail at once, 5xx,
    /// 408, 429 and network errors are retried within the budget.
    pub async fn notify(&self, call: &HookCall<'_>) -> Result<(), Failure> {
        self.post(call.photo_id, call).await
    }

    /// Tell the hook a photo's faces and embeddings (same retry rules as [`notify`](Self::notify)).
    pub async fn notify_embeddings(&self, call: &EmbeddingsHookCall<'_>) -> Result<(), Failure> {
        self.post(&format!("{}:embeddings", call.photo_id), call)
            .await
    }

    async fn post(&self, key: &str, call: &impl Serialize) -> Result<(), Failure> {
        let Some(url) = &self.url else { return Ok(()) };
        retry(self.retry, "db_hook", || async move {
            let resp = self
                .http
                .post(url)
                .header("Idempotency-Key", key)
                .json(call)
                .send()
                .await
                .map_err(|e| Attempt::Transient(format!("{e}")))?;
            let status = resp.status();
            if status.is_success() || status.as_u16() == 409 {
                Ok(())
            } else if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
                Err(Attempt::Permanent(format!("HTTP {status}")))
            } else {
                Err(Attempt::Transient(format!("HTTP {status}")))
            }
        })
        .await
        .map_err(|(e, attempts)| Failure {
            reason: FailureReason::HookError,
            detail: format!("DB hook failed after {attempts} attempts: {e}"),
        })
    }
}

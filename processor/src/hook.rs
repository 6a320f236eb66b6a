//! The DB-update hook ("Lambda 2" in the old system): an HTTP endpoint told about each new
//! thumbnail, and then about each photo's faces and embeddings, so the app's database can show
//! them. Retried with backoff; the idempotency key is the photo id (thumbnail) or
//! `{photo_id}:embeddings`, so a redelivered photo updates the same row. The bodies and the
//! signature (HMAC-SHA256 over timestamp and body, `DB_HOOK_SECRET`) are the contract in
//! [`schemas::hook`]; `docs/hook.md` is written for the team that owns the hook.

use crate::retry::{retry, Attempt, RetryPolicy};
use schemas::hook::{self, EmbeddingsHook, ThumbnailHook};
use schemas::{Failure, FailureReason};
use serde::Serialize;
use std::time::Duration;

/// Client for the hook; a no-op when no URL is configured.
#[derive(Clone)]
pub struct DbHook {
    url: Option<String>,
    secret: std::sync::Arc<[u8]>,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl DbHook {
    /// A client POSTing to `url`, signing each request with `secret`.
    pub fn new(url: Option<String>, secret: &str, retry: RetryPolicy) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client builds with static settings");
        Self {
            url,
            secret: secret.as_bytes().into(),
            http,
            retry,
        }
    }

    /// POST the call; 2xx and 409 (already applied) succeed, other 4xx fail at once, 5xx,
    /// 408, 429 and network errors are retried within the budget.
    pub async fn notify(&self, call: &ThumbnailHook) -> Result<(), Failure> {
        self.post(&call.photo_id, call).await
    }

    /// Tell the hook a photo's faces and embeddings (same retry rules as [`notify`](Self::notify)).
    pub async fn notify_embeddings(&self, call: &EmbeddingsHook) -> Result<(), Failure> {
        self.post(&format!("{}:embeddings", call.photo_id), call)
            .await
    }

    async fn post(&self, key: &str, call: &impl Serialize) -> Result<(), Failure> {
        let Some(url) = &self.url else { return Ok(()) };
        let body = serde_json::to_vec(call).map_err(|e| Failure {
            reason: FailureReason::Internal,
            detail: format!("DB hook body: {e}"),
        })?;
        let body = &body;
        retry(self.retry, "db_hook", || async move {
            // Signed afresh each attempt: the timestamp must stay inside the replay window.
            let ts = schemas::now_ms() / 1000;
            let resp = self
                .http
                .post(url)
                .header("Idempotency-Key", key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(hook::TIMESTAMP_HEADER, ts.to_string())
                .header(hook::SIGNATURE_HEADER, hook::sign(&self.secret, ts, body))
                .body(body.clone())
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

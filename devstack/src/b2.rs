//! Backblaze B2 event-notification emulation: the JSON body and HMAC signature B2 sends to a
//! rule's webhook URL when an object is created.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One event-notification rule: where to POST, with which signing secret, for which prefix.
#[derive(Clone)]
pub struct B2Emulation {
    pub webhook_url: String,
    pub secret: String,
    /// Only objects whose key starts with this prefix trigger a notification (B2's objectNamePrefix).
    pub prefix: String,
    http: reqwest::Client,
    seq: Arc<AtomicU64>,
    /// Webhooks delivered (2xx) and given up on, for tests and the dev banner.
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

/// `v1=<hex HMAC-SHA256(secret, body)>`, the value of `x-bz-event-notification-signature`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body B2 sends for one object-created event.
pub fn event_body(
    event_type: &str,
    bucket: &str,
    key: &str,
    size: u64,
    version_id: &str,
    event_id: &str,
) -> serde_json::Value {
    json!({
        "events": [{
            "accountId": "local-account",
            "bucketId": format!("bucket-{bucket}"),
            "bucketName": bucket,
            "eventId": event_id,
            "eventTimestamp": now_ms(),
            "eventType": event_type,
            "eventVersion": 1,
            "matchedRuleName": "photo-pipeline",
            "objectName": key,
            "objectSize": size,
            "objectVersionId": version_id,
        }]
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl B2Emulation {
    pub fn new(
        webhook_url: impl Into<String>,
        secret: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            webhook_url: webhook_url.into(),
            secret: secret.into(),
            prefix: prefix.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("static client"),
            seq: Arc::new(AtomicU64::new(0)),
            delivered: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A fresh B2-style object version id.
    pub fn new_version_id(&self) -> String {
        format!(
            "4_z{:016x}_f{:08x}",
            rand::random::<u64>(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Notify about a created object, in the background, retrying like B2 does (with backoff,
    /// for up to ~2 minutes) while the webhook answers non-2xx or is unreachable.
    pub fn object_created(
        &self,
        event_type: &'static str,
        bucket: String,
        key: String,
        size: u64,
        version_id: String,
    ) {
        if !key.starts_with(&self.prefix) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let event_id = format!("evt-{:016x}", rand::random::<u64>());
            let body = serde_json::to_vec(&event_body(
                event_type,
                &bucket,
                &key,
                size,
                &version_id,
                &event_id,
            ))
            .expect("json");
            let sig = signature(this.secret.as_bytes(), &body);
            let mut delay = Duration::from_millis(250);
            for _ in 0..12 {
                let sent = this
                    .http
                    .post(&this.webhook_url)
                    .header("content-type", "application/json")
                    .header("x-bz-event-notification-signature", &sig)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        this.delivered.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), %key, "webhook refused; B2 emulation will retry")
                    }
                    Err(e) => {
                        tracing::warn!(%e, %key, "webhook unreachable; B2 emulation will retry")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            this.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%key, "B2 emulation gave up delivering the webhook");
        });
    }
}

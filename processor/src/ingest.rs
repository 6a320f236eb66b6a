//! The upload stage: Backblaze B2 Event Notifications webhook → `photos.uploaded`.
//!
//! B2 POSTs `{"events": [...]}` (up to 50 events) signed with the rule's secret in
//! `x-bz-event-notification-signature: v1=<hex HMAC-SHA256(body)>`. We verify the signature
//! over the raw body, map each object key to its user, and reply 200 only once every accepted
//! event is durably in Kafka; any failure replies 5xx so that B2 delivers again.

use crate::keys::KeyPattern;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rdkafka::Offset;
use schemas::{PhotoUploaded, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use service_kit::kafka::{assign_when_ready, next_record, EventProducer, KafkaArgs};
use sha2::Sha256;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Header carrying B2's signature.
pub const SIGNATURE_HEADER: &str = "x-bz-event-notification-signature";
/// B2 sends at most 50 events a request; this bounds the body generously above that.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// An oversized body up to this size is read and discarded before the 413 goes out, so an
/// honest client still writing its body sees the answer instead of a reset connection.
/// Anything larger is cut off at once.
const DRAIN_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// One B2 event, as B2 sends it (camelCase). Only `eventType` is required: test events and
/// future event types carry fewer fields.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct B2Event {
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub bucket_id: Option<String>,
    #[serde(default)]
    pub bucket_name: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub event_timestamp: Option<i64>,
    pub event_type: String,
    #[serde(default)]
    pub event_version: Option<i64>,
    #[serde(default)]
    pub matched_rule_name: Option<String>,
    #[serde(default)]
    pub object_name: Option<String>,
    #[serde(default)]
    pub object_size: Option<u64>,
    #[serde(default)]
    pub object_version_id: Option<String>,
}

/// The webhook body.
#[derive(Debug, Deserialize, Serialize)]
pub struct B2Notification {
    pub events: Vec<B2Event>,
}

/// What we did with each event, returned to the caller (B2 ignores it; people debugging don't).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IngestReply {
    pub accepted: usize,
    pub duplicates: usize,
    pub ignored: usize,
    pub rejected: Vec<RejectedEvent>,
}

/// An event we refused, and why.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct RejectedEvent {
    pub event_id: Option<String>,
    pub object_name: Option<String>,
    pub reason: String,
}

/// Webhook errors, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing x-bz-event-notification-signature header")]
    MissingSignature,
    #[error("signature does not match the body")]
    BadSignature,
    #[error("body is not a B2 event notification: {0}")]
    BadBody(String),
    #[error("body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("could not enqueue events, retry later: {0}")]
    Unavailable(String),
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::MissingSignature | Self::BadSignature => StatusCode::UNAUTHORIZED,
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let reason = match &self {
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::BadBody(_) => "bad_body",
            Self::TooLarge => "too_large",
            Self::Unavailable(_) => "unavailable",
        };
        metrics::counter!("webhook_requests_total", "outcome" => reason).increment(1);
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Constant-time check of a `v1=<hex>` signature header against the body.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(sig) = header.trim().strip_prefix("v1=") else {
        return false;
    };
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Shared state of the webhook handler.
pub struct UploadStage {
    pub secret: Vec<u8>,
    pub photo_keys: KeyPattern,
    pub producer: EventProducer,
    pub topic: String,
    /// Recently enqueued B2 event ids, by this replica and (read back from the topic by
    /// [`follow_uploaded`]) every other: a redelivered webhook is acknowledged, not
    /// re-enqueued, whichever replica it reaches. (Downstream stages also deduplicate by photo
    /// id, which covers a redelivery that arrives before the first is read back.)
    seen: Mutex<lru::LruCache<String, ()>>,
}

impl UploadStage {
    pub fn new(
        secret: Vec<u8>,
        photo_keys: KeyPattern,
        producer: EventProducer,
        topic: String,
    ) -> Self {
        let seen = Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(100_000).expect("non-zero"),
        ));
        Self {
            secret,
            photo_keys,
            producer,
            topic,
            seen,
        }
    }

    fn already_seen(&self, event_id: &str) -> bool {
        self.seen.lock().expect("lock").contains(event_id)
    }

    fn remember(&self, event_id: String) {
        self.seen.lock().expect("lock").put(event_id, ());
    }
}

/// Records per partition of the uploaded topic read back at start, so that a replica that
/// just started still knows the events enqueued shortly before.
const DEDUP_LOOKBACK: i64 = 10_000;

/// Read the uploaded topic as every ingest replica writes it, remembering each event id, until
/// `shutdown`: B2 retries a notification it got no answer for, and behind a load balancer the
/// retry may reach another replica. Restarts the consumer after an error.
pub async fn follow_uploaded(
    stage: Arc<UploadStage>,
    kafka: KafkaArgs,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match follow_once(&stage, &kafka, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(%e, topic = %stage.topic, "cannot read the uploaded topic back for de-duplication; retrying in 5 s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

async fn follow_once(
    stage: &UploadStage,
    kafka: &KafkaArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Assigned, not subscribed: every replica reads every partition, and nothing is committed.
    let consumer: StreamConsumer = kafka
        .client_config_with(&[
            ("group.id", "photo-pipeline-ingest-dedup"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ])?
        .create()?;
    let tail = |_: &str, _: i32| Offset::OffsetTail(DEDUP_LOOKBACK);
    if assign_when_ready(&consumer, &[&stage.topic], tail, shutdown)
        .await?
        .is_none()
    {
        return Ok(());
    }
    while let Some(m) = next_record(&consumer, "uploaded topic (de-duplication)", shutdown).await {
        if let Some(Ok(p)) = m.payload().map(serde_json::from_slice::<PhotoUploaded>) {
            stage.remember(p.event_id);
            metrics::counter!("webhook_events_read_back_total").increment(1);
        }
    }
    Ok(())
}

/// Turn one object-created event into a `PhotoUploaded`, or say why not.
fn to_photo(stage: &UploadStage, e: &B2Event, now: i64) -> Result<PhotoUploaded, String> {
    let key = e.object_name.as_deref().ok_or("objectName missing")?;
    let bucket = e
        .bucket_name
        .as_deref()
        .filter(|b| !b.is_empty())
        .ok_or("bucketName missing")?;
    let event_id = e
        .event_id
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or("eventId missing")?;
    let photo = stage
        .photo_keys
        .match_key(key)
        .map_err(|err| err.to_string())?;
    let version_id = e.object_version_id.clone().unwrap_or_default();
    Ok(PhotoUploaded {
        schema_version: SCHEMA_VERSION,
        photo_id: schemas::photo_id(bucket, key, &version_id),
        user_id: photo.user_id,
        bucket: bucket.to_string(),
        key: key.to_string(),
        version_id,
        size_bytes: e.object_size.unwrap_or(0),
        event_id,
        uploaded_at_ms: e.event_timestamp.unwrap_or(now),
        received_at_ms: now,
    })
}

/// Reads a webhook body of at most [`MAX_BODY_BYTES`]. A larger one is drained (up to
/// [`DRAIN_LIMIT_BYTES`]) before [`IngestError::TooLarge`] is returned, so the client reads a
/// clean 413 rather than a connection reset mid-upload.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES) {
        return Err(IngestError::TooLarge);
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| IngestError::BadBody(e.to_string()))?;
        seen += chunk.len();
        if seen > DRAIN_LIMIT_BYTES {
            return Err(IngestError::TooLarge);
        }
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(IngestError::TooLarge);
    }
    Ok(Bytes::from(buf))
}

/// `POST /v1/b2/events`.
pub async fn b2_events(
    State(stage): State<Arc<UploadStage>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestReply>, IngestError> {
    let body = read_body(&headers, body).await?;
    let sig = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(IngestError::MissingSignature)?;
    if !verify(&stage.secret, &body, sig) {
        tracing::warn!("webhook with a bad signature refused");
        return Err(IngestError::BadSignature);
    }
    let note: B2Notification =
        serde_json::from_slice(&body).map_err(|e| IngestError::BadBody(e.to_string()))?;
    let now = schemas::now_ms();
    let mut reply = IngestReply::default();
    let mut photos = Vec::new();
    for e in &note.events {
        match e.event_type.as_str() {
            "b2:ObjectCreated:Upload" | "b2:ObjectCreated:MultipartUpload" => {}
            "b2:TestEvent" => {
                reply.ignored += 1;
                continue;
            }
            _ => {
                reply.ignored += 1;
                continue;
            }
        }
        match to_photo(&stage, e, now) {
            Ok(p)
                if stage.already_seen(&p.event_id)
                    || photos
                        .iter()
                        .any(|q: &PhotoUploaded| q.event_id == p.event_id) =>
            {
                reply.duplicates += 1
            }
            Ok(p) => photos.push(p),
            Err(reason) => {
                metrics::counter!("webhook_events_rejected_total").increment(1);
                reply.rejected.push(RejectedEvent {
                    event_id: e.event_id.clone(),
                    object_name: e.object_name.clone(),
                    reason,
                })
            }
        }
    }
    let sends = photos
        .iter()
        .map(|p| stage.producer.send(&stage.topic, &p.user_id, p));
    for result in futures::future::join_all(sends).await {
        result.map_err(|e| IngestError::Unavailable(e.to_string()))?;
    }
    for p in photos {
        metrics::counter!("photos_uploaded_total").increment(1);
        stage.remember(p.event_id);
        reply.accepted += 1;
    }
    metrics::counter!("webhook_requests_total", "outcome" => "ok").increment(1);
    Ok(Json(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sign a body the way B2 does.
    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(body);
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures() {
        let body = br#"{"events":[]}"#;
        let sig = sign(b"secret", body);
        assert!(sig.starts_with("v1="));
        assert!(verify(b"secret", body, &sig));
        assert!(!verify(b"other", body, &sig));
        assert!(!verify(b"secret", br#"{"events":[1]}"#, &sig));
        assert!(!verify(b"secret", body, "v1=zz"));
        assert!(!verify(b"secret", body, &sig.replace("v1=", "v2=")));
    }
}

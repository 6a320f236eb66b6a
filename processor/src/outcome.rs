//! What every stage does with one photo's result: recognise photos it finished recently (a
//! redelivery is acknowledged without redoing the work), and deliver the result event, preceded
//! by a dead letter when the photo failed, retrying until Kafka has both. An event Kafka refuses
//! for good (too large, not authorised) fails the photo as `output_rejected` instead: retrying
//! it would stall its partition for good.

use schemas::{
    DeadLetter, EmbeddingDone, Failure, FailureReason, PhotoUploaded, StageStatus, ThumbnailDone,
    SCHEMA_VERSION,
};
use serde::Serialize;
use service_kit::kafka::{DeliveryError, EventProducer};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A stage's output topics and delivery state.
pub struct Outcomes {
    stage: &'static str,
    producer: EventProducer,
    output_topic: String,
    dlq_topic: String,
    /// Photo ids finished ok recently.
    recent: Mutex<lru::LruCache<String, ()>>,
    /// Cancelled when shutdown's grace period is over: pending deliveries give up.
    give_up: CancellationToken,
}

/// A stage's result event.
pub trait StageEvent: Serialize {
    /// The same photo's event as a failure with no results, for when Kafka refuses `self`.
    fn as_failed(&self, failure: Failure) -> Self;
}

impl StageEvent for ThumbnailDone {
    fn as_failed(&self, failure: Failure) -> Self {
        ThumbnailDone {
            status: StageStatus::Failed,
            thumbnail: None,
            source: None,
            embed_input: None,
            failure: Some(failure),
            ..self.clone()
        }
    }
}

impl StageEvent for EmbeddingDone {
    fn as_failed(&self, failure: Failure) -> Self {
        EmbeddingDone {
            status: StageStatus::Failed,
            faces: vec![],
            faces_omitted: 0,
            failure: Some(failure),
            ..self.clone()
        }
    }
}

impl Outcomes {
    pub fn new(
        stage: &'static str,
        producer: EventProducer,
        output_topic: String,
        dlq_topic: String,
    ) -> Self {
        Self {
            stage,
            producer,
            output_topic,
            dlq_topic,
            recent: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(100_000).expect("non-zero"),
            )),
            give_up: CancellationToken::new(),
        }
    }

    /// Whether this stage finished `photo_id` ok recently (counted as a skipped duplicate).
    pub fn done_recently(&self, photo_id: &str) -> bool {
        let seen = self.recent.lock().expect("lock").contains(photo_id);
        if seen {
            metrics::counter!("duplicates_skipped_total", "stage" => self.stage).increment(1);
        }
        seen
    }

    /// Deliver `event` (the stage's result for `photo_id`, keyed by `user_id`), preceded by a
    /// dead letter when `failure` is set; `original` is the upload event a re-drive starts
    /// from. Returns whether the outcome is in Kafka (false only when shutdown abandoned the
    /// delivery: the record is then not committed and will be redelivered).
    pub async fn deliver<T: StageEvent>(
        &self,
        user_id: &str,
        photo_id: &str,
        event: &T,
        original: &PhotoUploaded,
        failure: Option<Failure>,
        at_ms: i64,
    ) -> bool {
        let status = if failure.is_some() { "failed" } else { "ok" };
        if let Some(failure) = failure {
            tracing::warn!(stage = self.stage, photo_id, user_id, reason = failure.reason.as_str(), detail = %failure.detail, "photo failed");
            if !self
                .dead_letter(user_id, photo_id, failure, original, at_ms)
                .await
            {
                return false;
            }
        }
        match self.send(user_id, event).await {
            Ok(()) => {}
            Err(DeliveryError::Abandoned { .. }) => return false,
            Err(e @ DeliveryError::Rejected { .. }) => {
                let failure = Failure {
                    reason: FailureReason::OutputRejected,
                    detail: e.to_string(),
                };
                tracing::error!(stage = self.stage, photo_id, user_id, detail = %failure.detail, "result event refused by Kafka; the photo fails");
                let failed = event.as_failed(failure.clone());
                if !self
                    .dead_letter(user_id, photo_id, failure, original, at_ms)
                    .await
                {
                    return false;
                }
                return match self.send(user_id, &failed).await {
                    Ok(()) => true,
                    Err(DeliveryError::Abandoned { .. }) => false,
                    // Not even the failure fits: nothing more can be written. The dead letter
                    // and the error log above are its record.
                    Err(e) => {
                        tracing::error!(stage = self.stage, photo_id, user_id, %e, "the failed result event was refused too");
                        true
                    }
                };
            }
        }
        metrics::counter!("photos_processed_total", "stage" => self.stage, "status" => status)
            .increment(1);
        if status == "ok" {
            self.recent
                .lock()
                .expect("lock")
                .put(photo_id.to_string(), ());
        }
        true
    }

    async fn send<T: Serialize>(&self, user_id: &str, event: &T) -> Result<(), DeliveryError> {
        self.producer
            .send_until_delivered(&self.output_topic, user_id, event, &self.give_up)
            .await
    }

    /// Write the photo's dead letter; false if shutdown abandoned it. A dead letter Kafka
    /// refuses (this service may not write the DLQ topic) is logged and counted: the failed
    /// result event still records the failure.
    async fn dead_letter(
        &self,
        user_id: &str,
        photo_id: &str,
        failure: Failure,
        original: &PhotoUploaded,
        at_ms: i64,
    ) -> bool {
        metrics::counter!("photos_failed_total", "stage" => self.stage, "reason" => failure.reason.as_str()).increment(1);
        let dead = DeadLetter {
            schema_version: SCHEMA_VERSION,
            stage: self.stage.into(),
            photo_id: photo_id.to_string(),
            user_id: user_id.to_string(),
            failure,
            original: original.clone(),
            failed_at_ms: at_ms,
        };
        match self
            .producer
            .send_until_delivered(&self.dlq_topic, user_id, &dead, &self.give_up)
            .await
        {
            Ok(()) => true,
            Err(DeliveryError::Abandoned { .. }) => false,
            Err(e) => {
                tracing::error!(stage = self.stage, photo_id, user_id, %e, "dead letter refused by Kafka");
                true
            }
        }
    }

    /// Make pending deliveries give up (shutdown's grace period is over).
    pub fn abandon(&self) {
        self.give_up.cancel();
    }

    /// Wait for queued events.
    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(5));
    }
}

//! What every stage does with one photo's result: recognise photos it finished recently (a
//! redelivery is acknowledged without redoing the work), and deliver the result event, preceded
//! by a dead letter when the photo failed, retrying until Kafka has both.

use schemas::{DeadLetter, Failure, PhotoUploaded, SCHEMA_VERSION};
use serde::Serialize;
use service_kit::kafka::EventProducer;
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

/// A failed photo: why, and the upload event that re-drives it through the pipeline.
pub struct Failed {
    pub failure: Failure,
    pub original: PhotoUploaded,
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
    /// dead letter when `failed`. Returns whether both are in Kafka (false only when shutdown
    /// abandoned the delivery: the record is then not committed and will be redelivered).
    pub async fn deliver<T: Serialize>(
        &self,
        user_id: &str,
        photo_id: &str,
        event: &T,
        failed: Option<Failed>,
        at_ms: i64,
    ) -> bool {
        let status = if failed.is_some() { "failed" } else { "ok" };
        if let Some(Failed { failure, original }) = failed {
            tracing::warn!(stage = self.stage, photo_id, user_id, reason = failure.reason.as_str(), detail = %failure.detail, "photo failed");
            metrics::counter!("photos_failed_total", "stage" => self.stage, "reason" => failure.reason.as_str()).increment(1);
            let dead = DeadLetter {
                schema_version: SCHEMA_VERSION,
                stage: self.stage.into(),
                photo_id: photo_id.to_string(),
                user_id: user_id.to_string(),
                failure,
                original,
                failed_at_ms: at_ms,
            };
            if self
                .producer
                .send_until_delivered(&self.dlq_topic, user_id, &dead, &self.give_up)
                .await
                .is_err()
            {
                return false;
            }
        }
        if self
            .producer
            .send_until_delivered(&self.output_topic, user_id, event, &self.give_up)
            .await
            .is_err()
        {
            return false;
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

    /// Make pending deliveries give up (shutdown's grace period is over).
    pub fn abandon(&self) {
        self.give_up.cancel();
    }

    /// Wait for queued events.
    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(5));
    }
}

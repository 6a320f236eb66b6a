//! The thumbnail stage: `photos.uploaded` → thumbnail JPEG in object storage → DB hook →
//! `ThumbnailDone` on `photos.thumbnailed` (and `DeadLetter` on `photos.dlq` for failures).
//!
//! All of one user's photos share a partition, so records of a partition are processed
//! concurrently (up to `max_in_flight`), served round-robin between users ([`FairQueue`]), and
//! the committed offset only advances over the contiguous prefix of finished records
//! ([`OffsetTracker`]). A record counts as finished only once its output events are durably in
//! Kafka, so a crash at any point redelivers, never loses, a photo; redelivery is harmless
//! because every output is keyed by the deterministic photo id.

pub mod jpeg;
pub mod orient;
pub mod render;

use crate::fair_queue::FairQueue;
use crate::hook::{DbHook, HookCall};
use crate::kafka::{EventProducer, KafkaConfig};
use crate::keys::KeyPattern;
use crate::offsets::{OffsetTracker, Ticket};
use crate::storage::ObjectStore;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use render::{RenderOptions, Renderer};
use schemas::{
    DeadLetter, Failure, FailureReason, PhotoUploaded, StageStatus, Thumbnail, ThumbnailDone,
    ThumbnailTimings, SCHEMA_VERSION,
};
use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Settings of the thumbnail stage.
#[derive(Debug, Clone)]
pub struct ThumbnailConfig {
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub group_instance_id: Option<String>,
    pub photo_keys: KeyPattern,
    pub thumb_keys: KeyPattern,
    pub render: RenderOptions,
    pub max_in_flight: usize,
    pub max_buffered: usize,
    pub cpu_workers: usize,
    pub shutdown_grace: Duration,
}

/// Everything a photo's processing task needs, shared between tasks.
struct Shared {
    cfg: ThumbnailConfig,
    producer: EventProducer,
    store: ObjectStore,
    hook: DbHook,
    cpu: Semaphore,
    /// Photo ids finished recently: a duplicate `PhotoUploaded` is acknowledged without redoing the work.
    done: Mutex<lru::LruCache<String, ()>>,
    /// Cancelled when shutdown's grace period is over: pending deliveries give up.
    give_up: CancellationToken,
}

/// Consumer context: forgets revoked partitions' in-flight offsets and exports consumer lag.
struct StageContext {
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl ClientContext for StageContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("kafka_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for e in tpl.elements() {
                tracing::info!(
                    topic = e.topic(),
                    partition = e.partition(),
                    "partition revoked"
                );
                tracker.revoke(&(e.topic().to_string(), e.partition()));
            }
        }
    }
}

/// The stage: construct with [`ThumbnailStage::new`], then [`ThumbnailStage::run`] until shutdown.
pub struct ThumbnailStage {
    shared: Arc<Shared>,
    consumer: StreamConsumer<StageContext>,
    tracker: Arc<Mutex<OffsetTracker>>,
}

struct Job {
    ticket: Ticket,
    event: PhotoUploaded,
}

impl ThumbnailStage {
    pub fn new(
        cfg: ThumbnailConfig,
        kafka: &KafkaConfig,
        producer: EventProducer,
        store: ObjectStore,
        hook: DbHook,
    ) -> anyhow::Result<Self> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let mut consumer_config = kafka.client_config_with(&[
            ("group.id", &cfg.group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "10000"),
            // Also the rebalance timeout: how long a rebalance waits for a member that
            // stopped answering. We keep polling even when busy (partitions are paused, not
            // starved), so this can be short.
            ("max.poll.interval.ms", "60000"),
            ("statistics.interval.ms", "5000"),
        ])?;
        if let Some(id) = &cfg.group_instance_id {
            consumer_config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<StageContext> =
            consumer_config.create_with_context(StageContext {
                tracker: tracker.clone(),
            })?;
        consumer.subscribe(&[&cfg.input_topic])?;
        let shared = Arc::new(Shared {
            cpu: Semaphore::new(cfg.cpu_workers),
            done: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(100_000).expect("non-zero"),
            )),
            give_up: CancellationToken::new(),
            cfg,
            producer,
            store,
            hook,
        });
        Ok(Self {
            shared,
            consumer,
            tracker,
        })
    }

    /// Consume and process until `shutdown` is cancelled, then finish (or abandon, after the
    /// grace period) in-flight photos and commit what finished.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = &self.shared.cfg;
        let mut queue: FairQueue<Job> = FairQueue::default();
        let mut running: JoinSet<Option<Ticket>> = JoinSet::new();
        let mut paused = false;
        tracing::info!(topic = %cfg.input_topic, group = %cfg.group, "thumbnail stage consuming");
        loop {
            while running.len() < cfg.max_in_flight {
                let Some(job) = queue.pop() else { break };
                let shared = self.shared.clone();
                running
                    .spawn(async move { process(&shared, job.event).await.then_some(job.ticket) });
            }
            metrics::gauge!("photos_in_flight", "stage" => "thumbnail").set(running.len() as f64);
            // Full: pause fetching rather than stop polling, so the group keeps us as a live member.
            let room = queue.len() + running.len() < cfg.max_buffered;
            if room == paused {
                self.set_paused(!room);
                paused = !room;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let ticket = self.tracker.lock().expect("tracker lock").begin((m.topic().to_string(), m.partition()), m.offset());
                        match m.payload().map(serde_json::from_slice::<PhotoUploaded>) {
                            Some(Ok(event)) => queue.push(&event.user_id.clone(), Job { ticket, event }),
                            other => {
                                // Not our schema: nothing to process or re-drive; log and move on.
                                tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = ?other.map(|r| r.err()), "skipping malformed record");
                                metrics::counter!("records_malformed_total", "topic" => m.topic().to_string()).increment(1);
                                self.finish(&ticket);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(Some(ticket)) = done {
                        self.finish(&ticket);
                    }
                }
            }
        }

        tracing::info!(
            in_flight = running.len(),
            queued = queue.len(),
            "thumbnail stage stopping"
        );
        let deadline = tokio::time::sleep(cfg.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = running.join_next() => match done {
                    Some(Ok(Some(ticket))) => self.finish(&ticket),
                    Some(_) => {}
                    None => break,
                },
                _ = &mut deadline => {
                    tracing::warn!(abandoned = running.len(), "grace period over; abandoning in-flight photos (they will be redelivered)");
                    self.shared.give_up.cancel();
                    running.abort_all();
                    break;
                }
            }
        }
        self.shared.producer.flush(Duration::from_secs(5));
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(%e, "final offset commit failed (records since the last commit will be redelivered)")
            }
        }
        tracing::info!("thumbnail stage stopped");
        Ok(())
    }

    fn set_paused(&self, pause: bool) {
        let result = self.consumer.assignment().and_then(|tpl| {
            if pause {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            }
        });
        if let Err(e) = result {
            tracing::warn!(%e, pause, "pausing/resuming partitions failed");
        }
    }

    /// A record is done: advance its partition's stored offset if the finished prefix grew.
    fn finish(&self, ticket: &Ticket) {
        let commit = self.tracker.lock().expect("tracker lock").complete(ticket);
        if let Some(offset) = commit {
            let mut tpl = TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&ticket.tp.0, ticket.tp.1, Offset::Offset(offset))
                .and_then(|_| self.consumer.store_offsets(&tpl));
            if let Err(e) = stored {
                tracing::debug!(%e, "storing offset failed (partition likely revoked)");
            }
        }
    }
}

thread_local! {
    /// One renderer per blocking thread, rebuilt if the options change.
    static RENDERER: RefCell<Option<Renderer>> = const { RefCell::new(None) };
}

fn render_on_this_thread(opts: RenderOptions, data: &[u8]) -> Result<render::Rendered, Failure> {
    RENDERER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|r| r.options()) != Some(opts) {
            *slot = Some(Renderer::new(opts)?);
        }
        slot.as_mut().expect("just set").render(data)
    })
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn observe(step: &'static str, d: Duration) {
    metrics::histogram!("thumbnail_step_seconds", "step" => step).record(seconds(d));
}

/// The work for one photo, up to (not including) emitting events.
async fn make_thumbnail(
    shared: &Shared,
    ev: &PhotoUploaded,
    timings: &mut ThumbnailTimings,
) -> Result<(Thumbnail, schemas::SourceImage), Failure> {
    let cfg = &shared.cfg;
    let file = cfg.photo_keys.match_key(&ev.key).map_err(|e| Failure {
        reason: FailureReason::Internal,
        detail: format!("photo key no longer matches the configured pattern: {e}"),
    })?;
    let thumb_key = cfg.thumb_keys.render(&ev.user_id, &file.file);

    let t = Instant::now();
    let original = shared.store.get(&ev.bucket, &ev.key).await?;
    observe("download", t.elapsed());
    timings.download_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let permit = shared.cpu.acquire().await.expect("semaphore never closed");
    let opts = cfg.render;
    let rendered = tokio::task::spawn_blocking(move || render_on_this_thread(opts, &original))
        .await
        .map_err(|e| Failure {
            reason: FailureReason::Internal,
            detail: format!("render task panicked: {e}"),
        })??;
    drop(permit);
    timings.decode_resize_encode_ms = t.elapsed().as_secs_f64() * 1e3;
    observe("decode", rendered.decode);
    observe("resize", rendered.resize);
    observe("encode", rendered.encode);

    let thumbnail = Thumbnail {
        key: thumb_key,
        content_type: "image/jpeg".into(),
        width: rendered.width,
        height: rendered.height,
        size_bytes: rendered.jpeg.len() as u64,
    };
    let t = Instant::now();
    shared
        .store
        .put(
            &ev.bucket,
            &thumbnail.key,
            rendered.jpeg,
            &thumbnail.content_type,
        )
        .await?;
    observe("upload", t.elapsed());
    timings.upload_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    shared
        .hook
        .notify(&HookCall {
            photo_id: &ev.photo_id,
            user_id: &ev.user_id,
            bucket: &ev.bucket,
            original_key: &ev.key,
            thumbnail_key: &thumbnail.key,
            content_type: &thumbnail.content_type,
            width: thumbnail.width,
            height: thumbnail.height,
            size_bytes: thumbnail.size_bytes,
            source_width: rendered.source.width,
            source_height: rendered.source.height,
        })
        .await?;
    observe("hook", t.elapsed());
    timings.hook_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok((thumbnail, rendered.source))
}

/// Process one photo and deliver its events. Returns whether the record may be committed.
async fn process(shared: &Shared, ev: PhotoUploaded) -> bool {
    let cfg = &shared.cfg;
    if shared.done.lock().expect("lock").contains(&ev.photo_id) {
        metrics::counter!("duplicates_skipped_total", "stage" => "thumbnail").increment(1);
        return true;
    }
    let mut timings = ThumbnailTimings::default();
    let result = make_thumbnail(shared, &ev, &mut timings).await;
    let (status, thumbnail, source, failure) = match result {
        Ok((t, s)) => (StageStatus::Ok, Some(t), Some(s), None),
        Err(f) => (StageStatus::Failed, None, None, Some(f)),
    };
    let done = ThumbnailDone {
        schema_version: SCHEMA_VERSION,
        photo_id: ev.photo_id.clone(),
        user_id: ev.user_id.clone(),
        bucket: ev.bucket.clone(),
        source_key: ev.key.clone(),
        status,
        thumbnail,
        source,
        failure: failure.clone(),
        timings,
        uploaded_at_ms: ev.uploaded_at_ms,
        finished_at_ms: schemas::now_ms(),
    };
    if let Some(failure) = failure {
        tracing::warn!(photo_id = %ev.photo_id, user_id = %ev.user_id, reason = failure.reason.as_str(), detail = %failure.detail, "photo failed");
        metrics::counter!("photos_failed_total", "stage" => "thumbnail", "reason" => failure.reason.as_str()).increment(1);
        let dead = DeadLetter {
            schema_version: SCHEMA_VERSION,
            stage: "thumbnail".into(),
            photo_id: ev.photo_id.clone(),
            user_id: ev.user_id.clone(),
            failure,
            original: ev.clone(),
            failed_at_ms: done.finished_at_ms,
        };
        if shared
            .producer
            .send_until_delivered(&cfg.dlq_topic, &ev.user_id, &dead, &shared.give_up)
            .await
            .is_err()
        {
            return false;
        }
    }
    if shared
        .producer
        .send_until_delivered(&cfg.output_topic, &ev.user_id, &done, &shared.give_up)
        .await
        .is_err()
    {
        return false;
    }
    let status_label = if status == StageStatus::Ok {
        "ok"
    } else {
        "failed"
    };
    metrics::counter!("photos_processed_total", "stage" => "thumbnail", "status" => status_label)
        .increment(1);
    metrics::histogram!("thumbnail_photo_seconds")
        .record((done.finished_at_ms - ev.uploaded_at_ms).max(0) as f64 / 1e3);
    if status == StageStatus::Ok {
        shared.done.lock().expect("lock").put(ev.photo_id, ());
    }
    true
}

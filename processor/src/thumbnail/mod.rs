//! The thumbnail stage: `photos.uploaded` → thumbnail JPEG in object storage → DB hook →
//! `ThumbnailDone` on `photos.thumbnailed` (and `DeadLetter` on `photos.dlq` for failures).
//!
//! The consumer loop (concurrency within a partition, fairness between users, exact commits)
//! is [`StageRunner`]; this module is the work done per photo.

pub mod jpeg;
pub mod orient;
pub mod render;

use crate::hook::{DbHook, HookCall};
use crate::kafka::{EventProducer, KafkaConfig};
use crate::keys::KeyPattern;
use crate::stage_runner::{RunnerConfig, StageRunner, StageWork};
use crate::storage::ObjectStore;
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

/// The thumbnail stage: its consumer loop around [`ThumbnailWork`].
pub type ThumbnailStage = StageRunner<ThumbnailWork>;

/// Build the thumbnail stage.
pub fn thumbnail_stage(
    cfg: ThumbnailConfig,
    kafka: &KafkaConfig,
    producer: EventProducer,
    store: ObjectStore,
    hook: DbHook,
) -> anyhow::Result<ThumbnailStage> {
    let runner = RunnerConfig {
        input_topic: cfg.input_topic.clone(),
        group: cfg.group.clone(),
        group_instance_id: cfg.group_instance_id.clone(),
        max_in_flight: cfg.max_in_flight,
        max_buffered: cfg.max_buffered,
        shutdown_grace: cfg.shutdown_grace,
    };
    let work = ThumbnailWork {
        cpu: Semaphore::new(cfg.cpu_workers),
        done: Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(100_000).expect("non-zero"),
        )),
        give_up: CancellationToken::new(),
        cfg,
        producer,
        store,
        hook,
    };
    StageRunner::new(runner, kafka, work)
}

impl StageWork for ThumbnailWork {
    type Input = PhotoUploaded;

    fn name(&self) -> &'static str {
        "thumbnail"
    }

    fn user_id(input: &PhotoUploaded) -> &str {
        &input.user_id
    }

    async fn process(self: Arc<Self>, input: PhotoUploaded) -> bool {
        process(&self, input).await
    }

    fn abandon(&self) {
        self.give_up.cancel();
    }

    fn flush(&self) {
        self.producer.flush(Duration::from_secs(5));
    }
}

/// Everything a photo's processing task needs, shared between tasks.
pub struct ThumbnailWork {
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
    shared: &ThumbnailWork,
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
async fn process(shared: &ThumbnailWork, ev: PhotoUploaded) -> bool {
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

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
use crate::outcome::{Failed, Outcomes};
use crate::stage_runner::{RunnerConfig, StageRunner, StageWork};
use crate::storage::ObjectStore;
use render::{RenderOptions, Renderer};
use schemas::{
    Failure, FailureReason, PhotoUploaded, StageStatus, Thumbnail, ThumbnailDone, ThumbnailTimings,
    SCHEMA_VERSION,
};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

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
        outcomes: Outcomes::new(
            "thumbnail",
            producer,
            cfg.output_topic.clone(),
            cfg.dlq_topic.clone(),
        ),
        cfg,
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
        self.outcomes.abandon();
    }

    fn flush(&self) {
        self.outcomes.flush();
    }
}

/// Everything a photo's processing task needs, shared between tasks.
pub struct ThumbnailWork {
    cfg: ThumbnailConfig,
    store: ObjectStore,
    hook: DbHook,
    cpu: Semaphore,
    outcomes: Outcomes,
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
    if shared.outcomes.done_recently(&ev.photo_id) {
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
    let failed = failure.map(|failure| Failed {
        failure,
        original: ev.clone(),
    });
    if !shared
        .outcomes
        .deliver(
            &ev.user_id,
            &ev.photo_id,
            &done,
            failed,
            done.finished_at_ms,
        )
        .await
    {
        return false;
    }
    metrics::histogram!("thumbnail_photo_seconds")
        .record((done.finished_at_ms - ev.uploaded_at_ms).max(0) as f64 / 1e3);
    true
}

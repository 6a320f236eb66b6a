//! The thumbnail stage: `photos.uploaded` → thumbnail JPEG in object storage → DB hook →
//! `ThumbnailDone` on `photos.thumbnailed` (and `DeadLetter` on `photos.dlq` for failures).
//!
//! The consumer loop (concurrency within a partition, fairness between users, exact commits)
//! is [`StageRunner`]; this module is the work done per photo.

pub mod jpeg;
pub mod orient;
pub mod render;

use crate::cpu_pool::{CpuPool, Lane};
use crate::embed::EmbedInput;
use crate::handoff::{HandoffCache, HandoffMode};
use crate::hook::DbHook;
use crate::keys::KeyPattern;
use crate::outcome::Outcomes;
use crate::stage_runner::{RunnerConfig, StageRunner, StageWork};
use crate::storage::ObjectStore;
use render::{RenderOptions, Renderer};
use schemas::hook::ThumbnailHook;
use schemas::{
    EmbedInputRef, Failure, FailureReason, PhotoUploaded, StageStatus, Thumbnail, ThumbnailDone,
    ThumbnailTimings, SCHEMA_VERSION,
};
use service_kit::kafka::{EventProducer, KafkaArgs};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the thumbnail stage.
#[derive(Debug, Clone)]
pub struct ThumbnailConfig {
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    pub group: String,
    pub group_instance_id: Option<String>,
    pub group_protocol: crate::kafka::GroupProtocol,
    pub photo_keys: KeyPattern,
    pub thumb_keys: KeyPattern,
    pub render: RenderOptions,
    /// How the embed input is handed to the embed stage (none = thumbnail-only fast path).
    pub handoff: HandoffMode,
    /// The embed profile's `embed_input.max_side` (the input is made to it).
    pub embed_max_side: Option<u32>,
    /// Where embed-input derivatives are written.
    pub derived_keys: KeyPattern,
    pub max_in_flight: usize,
    pub max_buffered: usize,
    pub shutdown_grace: Duration,
}

/// The thumbnail stage: its consumer loop around [`ThumbnailWork`].
pub type ThumbnailStage = StageRunner<ThumbnailWork>;

/// Build the thumbnail stage.
pub fn thumbnail_stage(
    cfg: ThumbnailConfig,
    kafka: &KafkaArgs,
    producer: EventProducer,
    store: ObjectStore,
    hook: DbHook,
    handoff_cache: Option<Arc<HandoffCache>>,
    pool: Arc<CpuPool>,
) -> anyhow::Result<ThumbnailStage> {
    let runner = RunnerConfig {
        input_topic: cfg.input_topic.clone(),
        group: cfg.group.clone(),
        group_instance_id: cfg.group_instance_id.clone(),
        group_protocol: cfg.group_protocol,
        max_in_flight: cfg.max_in_flight,
        max_buffered: cfg.max_buffered,
        shutdown_grace: cfg.shutdown_grace,
    };
    let work = ThumbnailWork {
        pool,
        outcomes: Outcomes::new(
            "thumbnail",
            producer,
            cfg.output_topic.clone(),
            cfg.dlq_topic.clone(),
        ),
        cfg,
        store,
        hook,
        handoff_cache,
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

    fn backlog(&self, waiting: usize) {
        self.pool.set_backlog(Lane::Thumbnail, waiting);
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
    pool: Arc<CpuPool>,
    outcomes: Outcomes,
    handoff_cache: Option<Arc<HandoffCache>>,
}

thread_local! {
    /// One renderer per CPU worker thread, rebuilt if the options change.
    static RENDERER: RefCell<Option<Renderer>> = const { RefCell::new(None) };
}

/// Render on this CPU worker's renderer; with `embed = Some(max_side)` also make the
/// embed input from the same decode.
fn render_on_this_thread(
    opts: RenderOptions,
    data: &[u8],
    embed: Option<Option<u32>>,
) -> Result<(render::Rendered, Option<EmbedInput>), Failure> {
    RENDERER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|r| r.options()) != Some(opts) {
            *slot = Some(Renderer::new(opts)?);
        }
        let renderer = slot.as_mut().expect("just set");
        match embed {
            None => renderer.render(data).map(|r| (r, None)),
            Some(max_side) => renderer
                .render_with_embed_input(data, max_side)
                .map(|(r, input)| (r, Some(input))),
        }
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
) -> Result<(Thumbnail, schemas::SourceImage, Option<EmbedInputRef>), Failure> {
    let cfg = &shared.cfg;
    let file = cfg.photo_keys.match_key(&ev.key).map_err(|e| Failure {
        reason: FailureReason::Internal,
        detail: format!("photo key no longer matches the configured pattern: {e}"),
    })?;
    let thumb_key = cfg.thumb_keys.render(&ev.user_id, &file.file);

    let t = Instant::now();
    let original = shared.store.get(&ev.bucket, &ev.key).await?;
    let original_size = original.len() as u64;
    observe("download", t.elapsed());
    timings.download_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let opts = crate::settings::render_options(cfg.render);
    let embed = match (&cfg.handoff, &shared.handoff_cache) {
        (HandoffMode::None, _) => None,
        // The embed stage is far behind: thumbnail alone, from the cheapest decode.
        (HandoffMode::Memory, Some(cache)) if !cache.has_room(embed_input_bytes(cfg)) => {
            metrics::counter!("embed_handoff_total", "result" => "skipped_cache_full").increment(1);
            None
        }
        _ => Some(cfg.embed_max_side),
    };
    let (rendered, embed_input) = shared
        .pool
        .run(Lane::Thumbnail, move || {
            render_on_this_thread(opts, &original, embed)
        })
        .await
        .map_err(|e| Failure {
            reason: FailureReason::Internal,
            detail: format!("render: {e}"),
        })??;
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
        .notify(&ThumbnailHook {
            schema_version: SCHEMA_VERSION,
            event: "thumbnail".into(),
            photo_id: ev.photo_id.clone(),
            user_id: ev.user_id.clone(),
            bucket: ev.bucket.clone(),
            original_key: ev.key.clone(),
            original_size_bytes: original_size,
            // Every format name is its media subtype (jpeg, png, webp, heic, avif, ...).
            original_content_type: format!("image/{}", rendered.source.format),
            thumbnail_key: thumbnail.key.clone(),
            content_type: thumbnail.content_type.clone(),
            width: thumbnail.width,
            height: thumbnail.height,
            size_bytes: thumbnail.size_bytes,
            source_width: rendered.source.width,
            source_height: rendered.source.height,
        })
        .await?;
    observe("hook", t.elapsed());
    timings.hook_ms = t.elapsed().as_secs_f64() * 1e3;
    let handed = match embed_input {
        Some(input) => hand_off(shared, ev, &file.file, input).await,
        None => None,
    };
    Ok((thumbnail, rendered.source, handed))
}

/// The most bytes one embed input takes: a square photo at the profile's size (a profile
/// without a size limit keeps whole photos; 2048 px is then only an estimate for the check).
fn embed_input_bytes(cfg: &ThumbnailConfig) -> usize {
    let side = cfg.embed_max_side.unwrap_or(2048) as usize;
    side * side * 3
}

/// Hand the embed input over: into this process's cache (memory mode; nothing if it has
/// filled up meanwhile), or as a derivative object (derivative mode). A failed or skipped
/// hand-off is not a failed photo: the embed stage then reads the original (counted in
/// `embed_handoff_total{result}`).
async fn hand_off(
    shared: &ThumbnailWork,
    ev: &PhotoUploaded,
    file: &str,
    input: EmbedInput,
) -> Option<EmbedInputRef> {
    let mut reference = EmbedInputRef {
        key: None,
        width: input.width,
        height: input.height,
        source_width: input.source_width,
        source_height: input.source_height,
    };
    let input = Arc::new(input);
    if shared.cfg.handoff == HandoffMode::Memory {
        if let Some(cache) = &shared.handoff_cache {
            if cache.insert(&ev.photo_id, input.clone()) {
                metrics::counter!("embed_handoff_total", "result" => "memory").increment(1);
                return Some(reference);
            }
            metrics::counter!("embed_handoff_total", "result" => "skipped_cache_full").increment(1);
            return None;
        }
    }
    let t = Instant::now();
    let png = shared
        .pool
        .run(Lane::Thumbnail, move || input.to_png())
        .await;
    let png = match png {
        Ok(Ok(png)) => png,
        Ok(Err(e)) => return handoff_failed(ev, &e),
        Err(e) => return handoff_failed(ev, &e.to_string()),
    };
    let key = shared.cfg.derived_keys.render(&ev.user_id, file);
    if let Err(f) = shared.store.put(&ev.bucket, &key, png, "image/png").await {
        return handoff_failed(ev, &f.detail);
    }
    observe("handoff", t.elapsed());
    metrics::counter!("embed_handoff_total", "result" => "derivative").increment(1);
    reference.key = Some(key);
    Some(reference)
}

fn handoff_failed(ev: &PhotoUploaded, detail: &str) -> Option<EmbedInputRef> {
    tracing::warn!(photo_id = %ev.photo_id, %detail, "embed input hand-off failed; the embed stage will read the original");
    metrics::counter!("embed_handoff_total", "result" => "failed").increment(1);
    None
}

/// Process one photo and deliver its events. Returns whether the record may be committed.
async fn process(shared: &ThumbnailWork, ev: PhotoUploaded) -> bool {
    if shared.outcomes.done_recently(&ev.photo_id) {
        return true;
    }
    let mut timings = ThumbnailTimings::default();
    let result = make_thumbnail(shared, &ev, &mut timings).await;
    let (status, thumbnail, source, embed_input, failure) = match result {
        Ok((t, s, e)) => (StageStatus::Ok, Some(t), Some(s), e, None),
        Err(f) => (StageStatus::Failed, None, None, None, Some(f)),
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
        embed_input,
        timings,
        uploaded_at_ms: ev.uploaded_at_ms,
        finished_at_ms: schemas::now_ms(),
    };
    if !shared
        .outcomes
        .deliver(
            &ev.user_id,
            &ev.photo_id,
            &done,
            &ev,
            failure,
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

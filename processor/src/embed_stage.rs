//! The embed stage: `ThumbnailDone` (ok) on `photos.thumbnailed` → faces and recognition
//! embeddings ([`FaceEmbedder`], driven by a model profile) → `EmbeddingDone` on
//! `photos.embedded`, and a `DeadLetter` on `photos.dlq` for failures. Runs on the shared
//! [`StageRunner`], so it has the same exactness under crashes as the thumbnail stage.
//!
//! The image comes from the thumbnail stage's decode ([`crate::handoff`]): taken from this
//! process's memory, or read from the derivative object named in `ThumbnailDone.embed_input`;
//! only when neither is there is the original downloaded and decoded here. Results go to the
//! DB-update hook too (`"event": "embeddings"`).

use crate::cpu_pool::{CpuPool, Lane};
use crate::embed::{EmbedInput, FaceEmbedder};
use crate::handoff::HandoffCache;
use crate::hook::DbHook;
use crate::outcome::Outcomes;
use crate::stage_runner::{RunnerConfig, StageRunner, StageWork};
use crate::storage::ObjectStore;
use schemas::hook::EmbeddingsHook;
use schemas::{
    EmbeddingDone, Face, Failure, FailureReason, PhotoUploaded, StageStatus, ThumbnailDone,
    SCHEMA_VERSION,
};
use service_kit::kafka::{EventProducer, KafkaArgs};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Settings of the embed stage.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    pub runner: RunnerConfig,
    pub output_topic: String,
    pub dlq_topic: String,
    /// Model profile file (`processor/profiles/*.json`).
    pub profile: PathBuf,
    pub model_dir: PathBuf,
    pub ort_dylib: PathBuf,
    pub max_pixels: u64,
    /// Photos embedded at once (each with one ONNX Runtime thread).
    pub workers: usize,
}

/// The embed stage: its consumer loop around [`EmbedWork`].
pub type EmbedStage = StageRunner<EmbedWork>;

/// Per-photo work of the embed stage.
pub struct EmbedWork {
    cfg: EmbedConfig,
    profile_name: String,
    store: ObjectStore,
    hook: DbHook,
    handoff_cache: Option<Arc<HandoffCache>>,
    /// At most `workers` photos of this stage on the CPU pool at once.
    cpu: Semaphore,
    pool: Arc<CpuPool>,
    outcomes: Outcomes,
}

/// Build the embed stage, loading the profile, models and ONNX Runtime once up front so that
/// a missing file is a start-up error, not a failure of every photo.
pub fn embed_stage(
    cfg: EmbedConfig,
    kafka: &KafkaArgs,
    producer: EventProducer,
    store: ObjectStore,
    hook: DbHook,
    handoff_cache: Option<Arc<HandoffCache>>,
    pool: Arc<CpuPool>,
) -> anyhow::Result<EmbedStage> {
    let probe = FaceEmbedder::load(&cfg.profile, &cfg.model_dir, &cfg.ort_dylib, 1)
        .map_err(|e| anyhow::anyhow!("embed stage: {e}"))?;
    let profile_name = probe.profile().name.clone();
    tracing::info!(profile = %profile_name, models = %cfg.model_dir.display(), "face models loaded");
    let work = EmbedWork {
        cpu: Semaphore::new(cfg.workers.max(1)),
        pool,
        outcomes: Outcomes::new(
            "embed",
            producer,
            cfg.output_topic.clone(),
            cfg.dlq_topic.clone(),
        ),
        profile_name,
        store,
        hook,
        handoff_cache,
        cfg: cfg.clone(),
    };
    StageRunner::new(cfg.runner, kafka, work)
}

impl StageWork for EmbedWork {
    type Input = ThumbnailDone;

    fn name(&self) -> &'static str {
        "embed"
    }

    fn user_id(input: &ThumbnailDone) -> &str {
        &input.user_id
    }

    async fn process(self: Arc<Self>, input: ThumbnailDone) -> bool {
        process(&self, input).await
    }

    fn abandon(&self) {
        self.outcomes.abandon();
    }

    fn flush(&self) {
        self.outcomes.flush();
    }
}

thread_local! {
    /// One embedder per CPU worker thread (ONNX Runtime sessions are not shared while running),
    /// so at most `CPU_WORKERS` sets of sessions and arenas in the process.
    static EMBEDDER: RefCell<Option<FaceEmbedder>> = const { RefCell::new(None) };
}

/// What the embed stage works on for one photo.
enum Source {
    /// The embed input made by the thumbnail stage.
    Input(Arc<EmbedInput>),
    /// The original's bytes (no hand-off available): decoded here.
    Original(Vec<u8>),
}

fn embed_on_this_thread(cfg: &EmbedConfig, source: Source) -> Result<Vec<Face>, Failure> {
    EMBEDDER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                FaceEmbedder::load(&cfg.profile, &cfg.model_dir, &cfg.ort_dylib, 1)
                    .map_err(|e| e.to_failure())?,
            );
        }
        let embedder = slot.as_mut().expect("just set");
        let input = match source {
            Source::Input(input) => input,
            Source::Original(data) => {
                // No hand-off: decode here, at the smallest JPEG scale the input needs.
                let t = Instant::now();
                let input = embedder
                    .prepare(&data, cfg.max_pixels)
                    .map_err(|e| e.to_failure())?;
                metrics::histogram!("embed_step_seconds", "step" => "decode")
                    .record(t.elapsed().as_secs_f64());
                Arc::new(input)
            }
        };
        embedder.embed_input(&input).map_err(|e| e.to_failure())
    })
}

/// The photo's embed input: from memory, else the derivative, else the original. A derivative
/// that cannot be read is not fatal (the original is the source of truth).
async fn load_source(work: &EmbedWork, ev: &ThumbnailDone) -> Result<Source, Failure> {
    let count = |source: &'static str| {
        metrics::counter!("embed_input_total", "source" => source).increment(1);
    };
    if let Some(input) = work
        .handoff_cache
        .as_ref()
        .and_then(|c| c.take(&ev.photo_id))
    {
        count("memory");
        return Ok(Source::Input(input));
    }
    if let Some(r) = &ev.embed_input {
        if let Some(key) = &r.key {
            let read = match work.store.get(&ev.bucket, key).await {
                Ok(png) => {
                    let (sw, sh, max) = (r.source_width, r.source_height, work.cfg.max_pixels);
                    work.pool
                        .run(Lane::Embed, move || EmbedInput::from_png(&png, sw, sh, max))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                }
                Err(f) => Err(f.detail),
            };
            match read {
                Ok(input) => {
                    count("derivative");
                    return Ok(Source::Input(Arc::new(input)));
                }
                Err(e) => tracing::info!(photo_id = %ev.photo_id, %key, error = %e,
                    "embed input derivative unavailable; reading the original"),
            }
        }
    }
    count("original");
    Ok(Source::Original(
        work.store.get(&ev.bucket, &ev.source_key).await?,
    ))
}

async fn embed_photo(work: &EmbedWork, ev: &ThumbnailDone) -> Result<Vec<Face>, Failure> {
    let source = load_source(work, ev).await?;
    let _permit = work.cpu.acquire().await.expect("semaphore never closed");
    let cfg = work.cfg.clone();
    work.pool
        .run(Lane::Embed, move || embed_on_this_thread(&cfg, source))
        .await
        .map_err(|e| Failure {
            reason: FailureReason::Internal,
            detail: format!("embed: {e}"),
        })?
}

/// Embed, filter by the live settings, and tell the DB hook (a hook failure fails the photo,
/// as for thumbnails: the app must not miss embeddings silently).
async fn embed_and_notify(work: &EmbedWork, ev: &ThumbnailDone) -> Result<Vec<Face>, Failure> {
    let mut faces = embed_photo(work, ev).await?;
    crate::settings::filter_faces(&mut faces);
    let t = Instant::now();
    let call = EmbeddingsHook {
        schema_version: SCHEMA_VERSION,
        event: "embeddings".into(),
        photo_id: ev.photo_id.clone(),
        user_id: ev.user_id.clone(),
        bucket: ev.bucket.clone(),
        original_key: ev.source_key.clone(),
        profile: work.profile_name.clone(),
        faces,
    };
    work.hook.notify_embeddings(&call).await?;
    metrics::histogram!("embed_step_seconds", "step" => "hook").record(t.elapsed().as_secs_f64());
    Ok(call.faces)
}

/// Embed one photo and deliver its events. Returns whether the record may be committed.
async fn process(work: &EmbedWork, ev: ThumbnailDone) -> bool {
    if ev.status != StageStatus::Ok {
        return true; // no thumbnail, no embedding: the failure is already counted and in the DLQ
    }
    if work.outcomes.done_recently(&ev.photo_id) {
        return true;
    }
    let started = Instant::now();
    let result = embed_and_notify(work, &ev).await;
    let (status, faces, failure) = match result {
        Ok(faces) => (StageStatus::Ok, faces, None),
        Err(f) => (StageStatus::Failed, vec![], Some(f)),
    };
    let mut done = EmbeddingDone {
        schema_version: SCHEMA_VERSION,
        photo_id: ev.photo_id.clone(),
        user_id: ev.user_id.clone(),
        status,
        profile: work.profile_name.clone(),
        faces,
        faces_omitted: 0,
        failure: failure.clone(),
        uploaded_at_ms: ev.uploaded_at_ms,
        finished_at_ms: schemas::now_ms(),
    };
    // The hook has every face; the event keeps what fits in a Kafka message.
    done.fit_faces(schemas::MAX_EVENT_BYTES);
    if done.faces_omitted > 0 {
        tracing::info!(photo_id = %ev.photo_id, kept = done.faces.len(), omitted = done.faces_omitted, "crowd photo: the event carries the largest faces");
        metrics::counter!("faces_omitted_total").increment(u64::from(done.faces_omitted));
    }
    // Re-driving goes through the whole pipeline again, from the upload event.
    let original = PhotoUploaded {
        schema_version: SCHEMA_VERSION,
        photo_id: ev.photo_id.clone(),
        user_id: ev.user_id.clone(),
        bucket: ev.bucket.clone(),
        key: ev.source_key.clone(),
        version_id: String::new(),
        size_bytes: 0,
        event_id: String::new(),
        uploaded_at_ms: ev.uploaded_at_ms,
        received_at_ms: ev.uploaded_at_ms,
    };
    if !work
        .outcomes
        .deliver(
            &ev.user_id,
            &ev.photo_id,
            &done,
            &original,
            failure,
            done.finished_at_ms,
        )
        .await
    {
        return false;
    }
    // The result is delivered: the derivative has served its purpose (a redelivery after this
    // reads the original instead). Leftovers from crashes: a bucket lifecycle rule on the prefix.
    if let Some(key) = ev.embed_input.as_ref().and_then(|r| r.key.as_deref()) {
        if let Err(f) = work.store.delete(&ev.bucket, key).await {
            tracing::warn!(%key, detail = %f.detail, "could not delete the embed input derivative");
        }
    }
    metrics::histogram!("faces_per_photo")
        .record((done.faces.len() + done.faces_omitted as usize) as f64);
    metrics::histogram!("embed_photo_seconds").record(started.elapsed().as_secs_f64());
    true
}

//! The embed stage: `ThumbnailDone` (ok) on `photos.thumbnailed` → faces and recognition
//! embeddings ([`FaceEmbedder`], driven by a model profile) → `EmbeddingDone` on
//! `photos.embedded`, and a `DeadLetter` on `photos.dlq` for failures. Runs on the shared
//! [`StageRunner`], so it has the same exactness under crashes as the thumbnail stage.
//!
//! Known gap: the original is downloaded and decoded again here; handing the thumbnail
//! stage's decoded image over (in process, or as a derivative written once) is still to do.

use crate::embed::{decode_oriented_rgb, FaceEmbedder};
use crate::kafka::{EventProducer, KafkaConfig};
use crate::outcome::{Failed, Outcomes};
use crate::stage_runner::{RunnerConfig, StageRunner, StageWork};
use crate::storage::ObjectStore;
use schemas::{
    EmbeddingDone, Face, Failure, FailureReason, PhotoUploaded, StageStatus, ThumbnailDone,
    SCHEMA_VERSION,
};
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
    cpu: Semaphore,
    outcomes: Outcomes,
}

/// Build the embed stage, loading the profile, models and ONNX Runtime once up front so that
/// a missing file is a start-up error, not a failure of every photo.
pub fn embed_stage(
    cfg: EmbedConfig,
    kafka: &KafkaConfig,
    producer: EventProducer,
    store: ObjectStore,
) -> anyhow::Result<EmbedStage> {
    let probe = FaceEmbedder::load(&cfg.profile, &cfg.model_dir, &cfg.ort_dylib, 1)
        .map_err(|e| anyhow::anyhow!("embed stage: {e}"))?;
    let profile_name = probe.profile().name.clone();
    tracing::info!(profile = %profile_name, models = %cfg.model_dir.display(), "face models loaded");
    let work = EmbedWork {
        cpu: Semaphore::new(cfg.workers.max(1)),
        outcomes: Outcomes::new(
            "embed",
            producer,
            cfg.output_topic.clone(),
            cfg.dlq_topic.clone(),
        ),
        profile_name,
        store,
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
    /// One embedder per blocking thread (ONNX Runtime sessions are not shared while running).
    static EMBEDDER: RefCell<Option<FaceEmbedder>> = const { RefCell::new(None) };
}

fn embed_on_this_thread(cfg: &EmbedConfig, data: &[u8]) -> Result<Vec<Face>, Failure> {
    let t = Instant::now();
    let img = decode_oriented_rgb(data, cfg.max_pixels).map_err(|e| e.to_failure())?;
    metrics::histogram!("embed_step_seconds", "step" => "decode").record(t.elapsed().as_secs_f64());
    EMBEDDER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                FaceEmbedder::load(&cfg.profile, &cfg.model_dir, &cfg.ort_dylib, 1)
                    .map_err(|e| e.to_failure())?,
            );
        }
        let embedder = slot.as_mut().expect("just set");
        embedder
            .embed(&img.pixels, img.width, img.height)
            .map_err(|e| e.to_failure())
    })
}

async fn embed_photo(work: &EmbedWork, ev: &ThumbnailDone) -> Result<Vec<Face>, Failure> {
    let original = work.store.get(&ev.bucket, &ev.source_key).await?;
    let _permit = work.cpu.acquire().await.expect("semaphore never closed");
    let cfg = work.cfg.clone();
    tokio::task::spawn_blocking(move || embed_on_this_thread(&cfg, &original))
        .await
        .map_err(|e| Failure {
            reason: FailureReason::Internal,
            detail: format!("embed task panicked: {e}"),
        })?
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
    let result = embed_photo(work, &ev).await;
    let (status, faces, failure) = match result {
        Ok(faces) => (StageStatus::Ok, faces, None),
        Err(f) => (StageStatus::Failed, vec![], Some(f)),
    };
    let done = EmbeddingDone {
        schema_version: SCHEMA_VERSION,
        photo_id: ev.photo_id.clone(),
        user_id: ev.user_id.clone(),
        status,
        profile: work.profile_name.clone(),
        faces,
        failure: failure.clone(),
        uploaded_at_ms: ev.uploaded_at_ms,
        finished_at_ms: schemas::now_ms(),
    };
    // Re-driving goes through the whole pipeline again, from the upload event.
    let failed = failure.map(|failure| Failed {
        failure,
        original: PhotoUploaded {
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
        },
    });
    if !work
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
    metrics::histogram!("faces_per_photo").record(done.faces.len() as f64);
    metrics::histogram!("embed_photo_seconds").record(started.elapsed().as_secs_f64());
    true
}

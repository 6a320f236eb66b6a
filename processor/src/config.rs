//! The processor's configuration: one typed struct, from flags and environment variables,
//! with defaults that match the local stack (`scripts/dev`).

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// A pipeline stage this process can run. One process may run several (single-microservice
/// deployment) or one (independently scaled deployments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Stage {
    /// B2 event-notification webhook → `photos.uploaded`.
    Ingest,
    /// `photos.uploaded` → thumbnail in object storage + `photos.thumbnailed`.
    Thumbnail,
    /// `photos.thumbnailed` → faces and embeddings + `photos.embedded`.
    Embed,
}

/// Everything the processor reads at start-up.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "processor",
    version,
    about = "photo-pipeline processor: upload (B2 webhook) and thumbnail stages"
)]
pub struct Config {
    /// Stages to run in this process.
    #[arg(
        long,
        env = "PROCESSOR_STAGES",
        value_delimiter = ',',
        default_value = "ingest,thumbnail"
    )]
    pub stages: Vec<Stage>,

    /// HTTP listen address: B2 webhook, /metrics, /healthz, /readyz.
    #[arg(long, env = "PROCESSOR_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,

    #[command(flatten)]
    pub kafka: service_kit::kafka::KafkaArgs,

    /// Create the topics at start-up if they are missing.
    #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,

    /// Partitions for topics this process creates.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 12)]
    pub topic_partitions: i32,

    /// Replication factor for topics this process creates (3 on a production cluster).
    #[arg(long, env = "KAFKA_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,

    #[arg(long, env = "TOPIC_UPLOADED", default_value = schemas::topics::UPLOADED)]
    pub topic_uploaded: String,
    #[arg(long, env = "TOPIC_THUMBNAILED", default_value = schemas::topics::THUMBNAILED)]
    pub topic_thumbnailed: String,
    #[arg(long, env = "TOPIC_EMBEDDED", default_value = schemas::topics::EMBEDDED)]
    pub topic_embedded: String,
    #[arg(long, env = "TOPIC_DLQ", default_value = schemas::topics::DLQ)]
    pub topic_dlq: String,
    /// Compacted topic of runtime settings changed on the console (followed live).
    #[arg(long, env = "TOPIC_SETTINGS", default_value = schemas::settings::TOPIC)]
    pub topic_settings: String,
    /// Topic of instance heartbeats (stages, configuration, counters) for the console.
    #[arg(long, env = "TOPIC_HEARTBEATS", default_value = schemas::heartbeat::TOPIC)]
    pub topic_heartbeats: String,

    /// Consumer group of the thumbnail stage.
    #[arg(
        long,
        env = "THUMBNAIL_GROUP",
        default_value = "photo-pipeline-thumbnail"
    )]
    pub thumbnail_group: String,

    /// Static group membership (KIP-345): a stable id per replica (e.g. the StatefulSet pod
    /// name) lets a restarted replica take its partitions straight back, without a rebalance.
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,

    /// Consumer-group protocol of the stages: `classic`, or `consumer` (KIP-848, needs Apache
    /// Kafka ≥ 4.0). Measured on Apache Kafka 4.4 (docs/kafka.md, "Consumer-group protocol"): after a
    /// kill -9, classic with static membership recovers at once; consumer refuses the
    /// restarted member until the broker's session timeout has passed.
    #[arg(long, env = "KAFKA_GROUP_PROTOCOL", value_enum, default_value_t = crate::kafka::GroupProtocol::Classic)]
    pub group_protocol: crate::kafka::GroupProtocol,

    /// Consumer group of the embed stage.
    #[arg(long, env = "EMBED_GROUP", default_value = "photo-pipeline-embed")]
    pub embed_group: String,

    /// Model profile of the embed stage (see processor/profiles/README.md).
    #[arg(
        long,
        env = "EMBED_PROFILE",
        default_value = "processor/profiles/arcface112.json"
    )]
    pub embed_profile: std::path::PathBuf,

    /// Directory with the face models (scripts/fetch-models); default ~/.cache/photo-pipeline/models.
    #[arg(long, env = "MODEL_DIR")]
    pub model_dir: Option<std::path::PathBuf>,

    /// ONNX Runtime shared library; default $MODEL_DIR/lib/libonnxruntime.so.1.31.1.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<std::path::PathBuf>,

    /// Photos embedded at once, one ONNX Runtime thread each; default = CPU_WORKERS (cores).
    /// Measured on 2 cores: 2 photos × 1 thread gave 4.6 photos/s, 1 photo × 2 threads 2.4
    /// (docs/embed.md, "Threads").
    #[arg(long, env = "EMBED_WORKERS")]
    pub embed_workers: Option<usize>,

    /// How the thumbnail stage hands its decoded image to the embed stage (docs/embed.md,
    /// "Decode once"): `memory` (embed runs in this process), `derivative` (a lossless PNG
    /// object read by a separate embed deployment) or `none` (embed reads the original).
    /// Default: `memory` when this process also runs the embed stage, else `derivative`.
    #[arg(long, env = "EMBED_HANDOFF", value_enum)]
    pub embed_handoff: Option<crate::handoff::HandoffMode>,

    /// Memory for embed inputs waiting in process (`memory` hand-off, ~3.7 MB a photo, so ~100
    /// photos). When it is full (under load thumbnails run far ahead of the face work) the
    /// thumbnail stage hands nothing over and the embed stage reads the original again.
    #[arg(long, env = "EMBED_HANDOFF_MEMORY_MB", default_value_t = 384)]
    pub embed_handoff_memory_mb: usize,

    /// Where embed-input derivatives are written; `{user_id}` and `{file}` from the photo key.
    /// Keep it outside the photo pattern (and the B2 notification rule's prefix).
    #[arg(
        long,
        env = "DERIVED_KEY_PATTERN",
        default_value = "users/{user_id}/derived/{file}.embed.png"
    )]
    pub derived_key_pattern: String,

    #[command(flatten)]
    pub s3: service_kit::s3::S3Args,

    /// Signing secret of the B2 event-notification rule (HMAC-SHA256 of the body).
    #[arg(
        long,
        env = "B2_WEBHOOK_SECRET",
        default_value = "local-webhook-secret",
        hide_env_values = true
    )]
    pub webhook_secret: String,

    /// Object keys that are users' photos; `{user_id}` and `{file}` are captured.
    #[arg(
        long,
        env = "PHOTO_KEY_PATTERN",
        default_value = "users/{user_id}/photos/{file}"
    )]
    pub photo_key_pattern: String,

    /// Where thumbnails are written; `{user_id}` and `{file}` from the photo key.
    #[arg(
        long,
        env = "THUMB_KEY_PATTERN",
        default_value = "users/{user_id}/thumbs/{file}.jpg"
    )]
    pub thumb_key_pattern: String,

    /// Thumbnail box (fit inside, aspect kept, never upscaled).
    #[arg(long, env = "THUMB_MAX_WIDTH", default_value_t = 400)]
    pub thumb_max_width: u32,
    #[arg(long, env = "THUMB_MAX_HEIGHT", default_value_t = 400)]
    pub thumb_max_height: u32,
    /// Thumbnail JPEG quality (1–100).
    #[arg(long, env = "THUMB_QUALITY", default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub thumb_quality: u8,

    /// Largest image (width × height) accepted; larger ones fail as `too_many_pixels`.
    #[arg(long, env = "MAX_PIXELS", default_value_t = 100_000_000)]
    pub max_pixels: u64,

    /// Largest original (bytes) downloaded; larger ones fail as `object_too_large`.
    #[arg(long, env = "MAX_OBJECT_BYTES", default_value_t = 200 * 1024 * 1024)]
    pub max_object_bytes: u64,

    /// DB-update hook ("Lambda 2") called after each thumbnail; unset = no hook.
    #[arg(long, env = "DB_HOOK_URL")]
    pub db_hook_url: Option<String>,

    /// Secret that signs every DB-hook request (HMAC-SHA256 over timestamp and body,
    /// docs/hook.md); shared with the hook's owners.
    #[arg(
        long,
        env = "DB_HOOK_SECRET",
        default_value = "local-hook-secret",
        hide_env_values = true
    )]
    pub db_hook_secret: String,

    /// How long transient S3 and hook errors are retried (with backoff) before a photo fails.
    #[arg(long, env = "RETRY_BUDGET_SECS", default_value_t = 60)]
    pub retry_budget_secs: u64,

    /// Photos processed concurrently (downloads, uploads and CPU work overlap).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 16)]
    pub max_in_flight: usize,

    /// Records read ahead of processing (across all users), waiting for a slot.
    #[arg(long, env = "MAX_BUFFERED", default_value_t = 512)]
    pub max_buffered: usize,

    /// CPU worker threads shared by this process's stages (decode, resize, encode, face models),
    /// thumbnail work always first; default = available cores.
    #[arg(long, env = "CPU_WORKERS")]
    pub cpu_workers: Option<usize>,

    /// On SIGTERM, how long in-flight photos may finish before they are abandoned (and
    /// redelivered to the next consumer, since their offsets are not committed).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    pub fn runs(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }

    /// The hand-off mode, with the default resolved from the stages this process runs.
    pub fn handoff_mode(&self) -> crate::handoff::HandoffMode {
        use crate::handoff::HandoffMode;
        self.embed_handoff.unwrap_or(if self.runs(Stage::Embed) {
            HandoffMode::Memory
        } else {
            HandoffMode::Derivative
        })
    }

    pub fn retry_budget(&self) -> Duration {
        Duration::from_secs(self.retry_budget_secs)
    }

    /// Photos the embed stage works on at once.
    pub fn embed_workers(&self) -> usize {
        self.embed_workers
            .unwrap_or_else(|| self.cpu_workers())
            .max(1)
    }

    pub fn cpu_workers(&self) -> usize {
        self.cpu_workers
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
            .max(1)
    }
}

//! Wiring: builds the configured stages, serves HTTP (webhook, metrics, probes) and runs until
//! SIGTERM/SIGINT, then shuts every stage down in order.

use crate::config::{Config, Stage};
use crate::cpu_pool::CpuPool;
use crate::embed_stage::{embed_stage, EmbedConfig};
use crate::handoff::{HandoffCache, HandoffMode};
use crate::hook::DbHook;
use crate::ingest::{self, UploadStage};
use crate::keys::KeyPattern;
use crate::retry::RetryPolicy;
use crate::stage_runner::RunnerConfig;
use crate::storage::ObjectStore;
use crate::thumbnail::render::RenderOptions;
use crate::thumbnail::{thumbnail_stage, ThumbnailConfig};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use service_kit::kafka::{ensure_topics, EventProducer, TopicSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Process-wide readiness for `/readyz`.
#[derive(Clone, Default)]
struct Readiness(Arc<AtomicBool>);

/// Run the processor until a termination signal (or `shutdown` is cancelled).
pub async fn run(
    cfg: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let kafka = cfg.kafka.clone();
    let photo_keys = KeyPattern::parse(&cfg.photo_key_pattern)?;
    let thumb_keys = KeyPattern::parse(&cfg.thumb_key_pattern)?;
    let producer = EventProducer::new(&kafka)?;
    let ready = Readiness::default();

    let heartbeat_metrics = metrics.clone();
    let mut app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ready.clone());
    if cfg.runs(Stage::Ingest) {
        let stage = Arc::new(UploadStage::new(
            cfg.webhook_secret.as_bytes().to_vec(),
            photo_keys.clone(),
            producer.clone(),
            cfg.topic_uploaded.clone(),
        ));
        tokio::spawn(ingest::follow_uploaded(
            stage.clone(),
            kafka.clone(),
            shutdown.clone(),
        ));
        app = app.merge(
            Router::new()
                .route("/v1/b2/events", post(ingest::b2_events))
                .with_state(stage),
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, stages = ?cfg.stages, "processor HTTP listening");
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });

    if cfg.create_topics {
        let topics = [
            &cfg.topic_uploaded,
            &cfg.topic_thumbnailed,
            &cfg.topic_embedded,
            &cfg.topic_dlq,
        ]
        .map(|name| TopicSpec {
            name: name.as_str(),
            partitions: cfg.topic_partitions,
            replication: cfg.topic_replication,
            compacted: false,
        });
        let mut delay = Duration::from_millis(250);
        while let Err(e) = ensure_topics(&kafka, &topics).await {
            tracing::warn!(%e, "Kafka not ready; retrying topic creation");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    let mut stages = tokio::task::JoinSet::new();
    if cfg.runs(Stage::Thumbnail) || cfg.runs(Stage::Embed) {
        if cfg.create_topics {
            let settings_topic = TopicSpec {
                name: &cfg.topic_settings,
                partitions: 1,
                replication: cfg.topic_replication,
                compacted: true,
            };
            let created = ensure_topics(&kafka, &[settings_topic]).await;
            if let Err(e) = created {
                tracing::warn!(%e, "no settings topic yet; following it once it exists");
            }
        }
        tokio::spawn(crate::settings::follow(
            kafka.clone(),
            cfg.topic_settings.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::heartbeat::run(
        crate::heartbeat::HeartbeatConfig::from_processor(&cfg),
        kafka.clone(),
        heartbeat_metrics,
        shutdown.clone(),
    ));
    let retry = RetryPolicy::with_budget(cfg.retry_budget());
    let storage = cfg.s3.clone();
    let (handoff, embed_max_side) = resolve_handoff(&cfg)?;
    // Both stages here and memory hand-off: they share the waiting embed inputs.
    let handoff_cache =
        (handoff == HandoffMode::Memory && cfg.runs(Stage::Thumbnail) && cfg.runs(Stage::Embed))
            .then(|| {
                Arc::new(HandoffCache::new(
                    cfg.embed_handoff_memory_mb << 20,
                    Duration::from_secs(600),
                ))
            });
    // One pool of CPU workers for every stage here: thumbnail work first (`cpu_pool`).
    let pool = CpuPool::new(cfg.cpu_workers());
    if cfg.runs(Stage::Thumbnail) {
        tracing::info!(?handoff, ?embed_max_side, "embed input hand-off");
        let stage = thumbnail_stage(
            ThumbnailConfig {
                input_topic: cfg.topic_uploaded.clone(),
                output_topic: cfg.topic_thumbnailed.clone(),
                dlq_topic: cfg.topic_dlq.clone(),
                group: cfg.thumbnail_group.clone(),
                group_instance_id: cfg.group_instance_id.clone(),
                group_protocol: cfg.group_protocol,
                photo_keys,
                thumb_keys,
                render: RenderOptions {
                    max_width: cfg.thumb_max_width,
                    max_height: cfg.thumb_max_height,
                    quality: cfg.thumb_quality,
                    max_pixels: cfg.max_pixels,
                },
                handoff,
                embed_max_side,
                derived_keys: KeyPattern::parse(&cfg.derived_key_pattern)?,
                max_in_flight: cfg.max_in_flight.max(1),
                max_buffered: cfg.max_buffered.max(cfg.max_in_flight + 1),
                shutdown_grace: Duration::from_secs(cfg.shutdown_grace_secs),
            },
            &kafka,
            producer.clone(),
            ObjectStore::new(&storage, retry, cfg.max_object_bytes),
            DbHook::new(cfg.db_hook_url.clone(), &cfg.db_hook_secret, retry),
            handoff_cache.clone(),
            pool.clone(),
        )?;
        stages.spawn(stage.run(shutdown.clone()));
    }
    if cfg.runs(Stage::Embed) {
        let model_dir = cfg
            .model_dir
            .clone()
            .unwrap_or_else(crate::embed::default_model_dir);
        let ort_dylib = cfg
            .ort_dylib
            .clone()
            .unwrap_or_else(|| crate::embed::default_ort_dylib(&model_dir));
        let stage = embed_stage(
            EmbedConfig {
                runner: RunnerConfig {
                    input_topic: cfg.topic_thumbnailed.clone(),
                    group: cfg.embed_group.clone(),
                    group_instance_id: cfg.group_instance_id.clone(),
                    group_protocol: cfg.group_protocol,
                    max_in_flight: cfg.max_in_flight.max(1),
                    max_buffered: cfg.max_buffered.max(cfg.max_in_flight + 1),
                    shutdown_grace: Duration::from_secs(cfg.shutdown_grace_secs),
                },
                output_topic: cfg.topic_embedded.clone(),
                dlq_topic: cfg.topic_dlq.clone(),
                profile: cfg.embed_profile.clone(),
                model_dir,
                ort_dylib,
                max_pixels: cfg.max_pixels,
                workers: cfg.embed_workers(),
            },
            &kafka,
            producer.clone(),
            ObjectStore::new(&storage, retry, cfg.max_object_bytes),
            DbHook::new(cfg.db_hook_url.clone(), &cfg.db_hook_secret, retry),
            handoff_cache,
            pool.clone(),
        )?;
        stages.spawn(stage.run(shutdown.clone()));
    }
    ready.0.store(true, Ordering::SeqCst);
    tracing::info!("processor ready");

    // A stage ends early only when it cannot go on (its Kafka consumer failed fatally): then the
    // whole process stops and exits non-zero, so that its supervisor restarts it, rather than
    // staying up, ready, and processing nothing.
    let mut failed = 0;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(result) = stages.join_next() => {
            failed += log_stage_end(result);
            shutdown.cancel();
        }
    }
    ready.0.store(false, Ordering::SeqCst);
    while let Some(result) = stages.join_next().await {
        failed += log_stage_end(result);
    }
    producer.flush(Duration::from_secs(5));
    http.await??;
    if failed > 0 {
        anyhow::bail!("{failed} stage(s) failed; exiting so that the process is restarted");
    }
    tracing::info!("processor stopped");
    Ok(())
}

/// Log how a stage ended; 1 if it failed.
fn log_stage_end(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> usize {
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            tracing::error!(%e, "stage failed");
            1
        }
        Err(e) => {
            tracing::error!(%e, "stage panicked");
            1
        }
    }
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, &'static str) {
    if ready.0.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// The hand-off mode and the embed input's size, from the embed profile. A profile that
/// cannot be read is a start-up error when the hand-off was asked for explicitly; with the
/// default, the thumbnail stage runs without hand-off (and says so), as a thumbnail-only
/// deployment without the profile file would.
fn resolve_handoff(cfg: &Config) -> anyhow::Result<(HandoffMode, Option<u32>)> {
    let mode = cfg.handoff_mode();
    if !cfg.runs(Stage::Thumbnail) || mode == HandoffMode::None {
        return Ok((mode, None));
    }
    match crate::embed::profile::Profile::load(&cfg.embed_profile) {
        Ok(profile) => Ok((mode, profile.embed_input_max_side())),
        Err(e) if cfg.embed_handoff.is_none() => {
            tracing::warn!(error = %e, "no embed profile: thumbnails without embed-input \
                hand-off (the embed stage will read originals); set EMBED_PROFILE to hand off");
            Ok((HandoffMode::None, None))
        }
        Err(e) => Err(anyhow::anyhow!(
            "thumbnail stage: {e} (the embed input is made to the embed profile; set \
             EMBED_PROFILE, or EMBED_HANDOFF=none)"
        )),
    }
}

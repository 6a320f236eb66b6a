//! Wiring: the feed, the HTTP routes, metrics, probes and shutdown.

use crate::auth::TokenSigner;
use crate::config::Config;
use crate::counters::Expect;
use crate::feed::{self, FeedConfig};
use crate::sse::{self, AppState};
use crate::store::StatusStore;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

/// Install the Prometheus recorder and describe our metrics.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .install_recorder()?;
    metrics::describe_gauge!("sse_connections", "Open SSE connections");
    metrics::describe_counter!("events_consumed_total", "Stage events applied, by topic");
    metrics::describe_gauge!("kafka_consumer_lag", "Records behind the partition end");
    metrics::describe_histogram!(
        "sse_fanout_seconds",
        metrics::Unit::Seconds,
        "Stage event time to SSE write"
    );
    metrics::describe_gauge!(
        "replay_duration_seconds",
        metrics::Unit::Seconds,
        "Start-up replay until caught up"
    );
    metrics::describe_gauge!("status_users", "Users held in memory");
    metrics::describe_counter!(
        "auth_refused_total",
        "Requests refused for a missing, bad or foreign token"
    );
    metrics::describe_counter!(
        "records_malformed_total",
        "Records that are not our event schema, skipped"
    );
    metrics::describe_gauge!(
        "status_photo_state_bytes",
        "Heap bytes of per-photo state (current batches)"
    );
    Ok(handle)
}

/// Run until `shutdown` is cancelled.
pub async fn run(
    cfg: Config,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Arc::new(StatusStore::new(
        Expect {
            embeddings: cfg.expect_embeddings,
        },
        cfg.batch_gap_secs as i64 * 1000,
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let feed_cfg = FeedConfig {
        brokers: cfg.kafka_brokers.clone(),
        kafka_options: cfg.kafka_options.clone(),
        topic_uploaded: cfg.topic_uploaded.clone(),
        topic_thumbnailed: cfg.topic_thumbnailed.clone(),
        topic_embedded: cfg.topic_embedded.clone(),
    };
    let feed = tokio::spawn(feed::run(
        feed_cfg,
        store.clone(),
        ready.clone(),
        shutdown.clone(),
    ));

    let app_state = AppState {
        store: store.clone(),
        tokens: TokenSigner::new(cfg.token_secret.as_bytes())?,
        min_interval: Duration::from_secs_f64(1.0 / cfg.sse_max_rate.max(0.1)),
        keepalive: Duration::from_secs(cfg.sse_keepalive_secs.max(1)),
        retry: Duration::from_millis(cfg.sse_retry_ms),
        shutdown: shutdown.clone(),
    };
    let cors = CorsLayer::new()
        .allow_origin(cfg.allowed_origin.parse::<HeaderValue>()?)
        .allow_methods([Method::GET])
        .allow_headers([
            header::AUTHORIZATION,
            header::HeaderName::from_static("last-event-id"),
        ]);
    let gauges_store = store.clone();
    let api = Router::new()
        .route("/v1/users/{user_id}/events", get(sse::events))
        .route("/v1/users/{user_id}/status", get(sse::status))
        .with_state(app_state)
        .layer(cors);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                metrics::gauge!("status_users").set(gauges_store.users() as f64);
                metrics::gauge!("status_photo_state_bytes")
                    .set(gauges_store.photo_state_bytes() as f64);
                std::future::ready(metrics.render())
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz).with_state(ready))
        .merge(api);

    let listener = tokio::net::TcpListener::bind(cfg.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "status-api listening");
    let http_shutdown = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await?;
    feed.await??;
    tracing::info!("status-api stopped");
    Ok(())
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "replaying")
    }
}

//! Wiring: the feed, the HTTP routes, metrics, probes and shutdown.

use crate::accounts::Accounts;
use crate::auth::TokenSigner;
use crate::config::Config;
use crate::console::Console;
use crate::counters::Expect;
use crate::feed::{self, FeedConfig};
use crate::gallery::Gallery;
use crate::ops::{Ops, OpsState};
use crate::presign::{PresignConfig, Presigner};
use crate::session::{self as session, LoginLimiter, Sessions};
use crate::settings::{self as settings, SettingsService};
use crate::sse::{self, AppState};
use crate::store::StatusStore;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

/// Install the Prometheus recorder and describe our metrics.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = service_kit::service::prometheus_builder()?.install_recorder()?;
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
        kafka: cfg.kafka.clone(),
        topic_uploaded: cfg.topic_uploaded.clone(),
        topic_thumbnailed: cfg.topic_thumbnailed.clone(),
        topic_embedded: cfg.topic_embedded.clone(),
    };
    let gallery = Arc::new(Gallery::new(cfg.gallery_per_user));

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
    let accounts = Accounts::load(cfg.accounts_file.as_deref())?;
    if accounts.is_empty() {
        tracing::warn!("no console accounts (STATUS_ACCOUNTS_FILE): nobody can sign in");
    }
    let sessions = Arc::new(Sessions::new(
        accounts,
        &cfg.token_secret,
        Duration::from_secs(cfg.session_ttl_secs.max(60)),
        cfg.cookie_secure,
        LoginLimiter::new(cfg.login_max_failures, Duration::from_secs(60)),
    )?);
    let ops = Arc::new(Ops::new(sessions.clone()));
    // A feed that fails stops the service (the orchestrator restarts it): left running, it
    // would answer /readyz "not ready" for good with the cause only in its exit.
    let feed = tokio::spawn({
        let (store, gallery, ops, ready, shutdown) = (
            store.clone(),
            gallery.clone(),
            ops.clone(),
            ready.clone(),
            shutdown.clone(),
        );
        async move {
            let ended = feed::run(feed_cfg, store, gallery, ops, ready, shutdown.clone()).await;
            if let Err(e) = &ended {
                tracing::error!(error = %e, "stage feed failed; stopping");
                shutdown.cancel();
            }
            ended
        }
    });
    let presigner = Presigner::new(PresignConfig {
        s3: cfg.s3.clone(),
        bucket: cfg.s3_bucket.clone(),
        photo_key_pattern: cfg.photo_key_pattern.clone(),
        ttl: Duration::from_secs(cfg.presign_ttl_secs.max(1)),
    });
    let console = Console::new(
        TokenSigner::new(cfg.token_secret.as_bytes())?,
        presigner,
        gallery,
        &s3_origin(&cfg.s3.endpoint),
    )?;
    let kafka_client = cfg.kafka.client_config()?;
    let settings = Arc::new(SettingsService::new(
        &cfg.kafka,
        cfg.topic_settings.clone(),
        sessions.clone(),
    )?);
    let settings_follower = tokio::spawn(settings.clone().follow(shutdown.clone()));
    let ops_follower = tokio::spawn(ops.clone().follow(
        kafka_client.clone(),
        cfg.topic_dlq.clone(),
        cfg.topic_heartbeats.clone(),
        shutdown.clone(),
    ));
    let ops_routes = Router::new()
        .route("/v1/ops/metrics", get(crate::ops::metrics))
        .route("/v1/ops/services", get(crate::ops::services))
        .with_state(OpsState {
            ops,
            settings: settings.clone(),
        });
    let settings_routes = Router::new()
        .route(
            "/v1/settings",
            get(settings::get_settings).put(settings::put_settings),
        )
        .with_state(settings.clone());
    let session_routes = Router::new()
        .route(
            "/v1/session",
            get(session::current)
                .post(session::login)
                .delete(session::logout),
        )
        .with_state(sessions);
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
        .merge(api)
        .merge(session_routes)
        .merge(settings_routes)
        .merge(ops_routes)
        .merge(console.router());

    let listener = tokio::net::TcpListener::bind(cfg.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "status-api listening");
    let http_shutdown = shutdown.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
    .await?;
    feed.await??;
    settings_follower.await??;
    ops_follower.await??;
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

/// `scheme://host[:port]` of a URL (for the console's Content-Security-Policy).
fn s3_origin(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{host}")
}

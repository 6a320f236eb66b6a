//! The skeleton every service process shares: logging, the Prometheus exporter and the
//! shutdown signal.

use tokio_util::sync::CancellationToken;

/// Structured logs to stderr: `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one
/// JSON object per line (what `k8s/base/config.env` sets for log collectors), anything else text.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs(std::env::var("LOG_FORMAT").ok().as_deref()) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether a `LOG_FORMAT` value asks for JSON lines.
fn json_logs(format: Option<&str>) -> bool {
    format.is_some_and(|f| f.trim().eq_ignore_ascii_case("json"))
}

/// Cancel `token` on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C), so the service
/// drains and exits on its own.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}

/// Histogram buckets for every `*_seconds` metric of both services: 1 ms to an hour. Waits
/// under a large upload reach hundreds to thousands of seconds (the 5 × 2,000 load test saw
/// 849–1,769 s); buckets that stopped at 10 or 60 s made Grafana read every such wait as the
/// last bucket.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The Prometheus exporter both services install (each then describes its own metrics).
pub fn prometheus_builder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusBuilder> {
    Ok(
        metrics_exporter_prometheus::PrometheusBuilder::new().set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            SECONDS_BUCKETS,
        )?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_json_is_recognised() {
        assert!(json_logs(Some("json")));
        assert!(json_logs(Some("JSON ")));
        assert!(!json_logs(Some("text")));
        assert!(!json_logs(None));
    }

    #[test]
    fn a_half_hour_wait_lands_in_its_own_bucket() {
        let recorder = prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("wait_seconds").record(1500.0);
        });
        let text = handle.render();
        assert!(text.contains("wait_seconds_bucket{le=\"600\"} 0"), "{text}");
        assert!(
            text.contains("wait_seconds_bucket{le=\"1800\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wait_seconds_bucket{le=\"3600\"} 1"),
            "{text}"
        );
    }
}

//! The skeleton every service process shares: logging and the shutdown signal.

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
}

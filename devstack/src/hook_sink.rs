//! A stand-in for the DB-update hook ("Lambda 2"): records every call it receives, and can be
//! told to fail for a while to exercise the processor's retries.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// One received call: the idempotency key header and the JSON body.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookCallRecord {
    pub idempotency_key: Option<String>,
    pub body: serde_json::Value,
}

/// The running sink.
#[derive(Clone, Default)]
pub struct HookSink {
    pub calls: Arc<Mutex<Vec<HookCallRecord>>>,
    /// Answer 503 to this many calls before succeeding again.
    pub fail_next: Arc<AtomicU32>,
}

impl HookSink {
    /// Serve `POST /hook` (and `GET /hook/calls` listing calls) on `addr`; returns the address.
    pub async fn spawn(&self, addr: &str) -> anyhow::Result<SocketAddr> {
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/hook/calls", get(list))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(bound)
    }

    /// Distinct idempotency keys seen so far.
    pub fn distinct_keys(&self) -> usize {
        let calls = self.calls.lock().expect("lock");
        let mut keys: Vec<_> = calls
            .iter()
            .filter_map(|c| c.idempotency_key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        keys.len()
    }
}

async fn receive(
    State(sink): State<HookSink>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> StatusCode {
    let failing = sink
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    tracing::info!(key = ?idempotency_key, "DB hook call");
    sink.calls.lock().expect("lock").push(HookCallRecord {
        idempotency_key,
        body,
    });
    StatusCode::NO_CONTENT
}

async fn list(State(sink): State<HookSink>) -> Json<Vec<HookCallRecord>> {
    Json(sink.calls.lock().expect("lock").clone())
}

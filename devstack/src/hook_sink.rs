//! A stand-in for the DB-update hook ("Lambda 2"): checks each call's signature as the real
//! hook must (`schemas::hook::verify`, docs/hook.md), records every call it accepts, and can be
//! told to fail for a while to exercise the processor's retries.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One received call: the idempotency key header and the JSON body.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookCallRecord {
    pub idempotency_key: Option<String>,
    pub body: serde_json::Value,
}

/// The secret the processor signs hook calls with by default (`DB_HOOK_SECRET`).
pub const LOCAL_HOOK_SECRET: &str = "local-hook-secret";

/// The running sink.
#[derive(Clone)]
pub struct HookSink {
    /// Calls are refused (401) unless signed with this secret.
    pub secret: Arc<str>,
    pub calls: Arc<Mutex<Vec<HookCallRecord>>>,
    /// Calls refused for a missing, stale or wrong signature.
    pub unauthorized: Arc<AtomicU64>,
    /// Answer 503 to this many calls before succeeding again.
    pub fail_next: Arc<AtomicU32>,
    /// Answer 503 to every call until this moment (an outage; see [`HookSink::fail_for`]).
    pub failing_until: Arc<Mutex<Option<Instant>>>,
    /// Calls answered 503 so far (how often the processor retried).
    pub refused: Arc<AtomicU64>,
}

impl Default for HookSink {
    fn default() -> Self {
        Self::with_secret(LOCAL_HOOK_SECRET)
    }
}

impl HookSink {
    /// A sink accepting calls signed with `secret`.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            secret: secret.into(),
            calls: Arc::default(),
            unauthorized: Arc::default(),
            fail_next: Arc::default(),
            failing_until: Arc::default(),
            refused: Arc::default(),
        }
    }

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

    /// Fail every call (503) for `d` from now, then recover: the DB hook down for a while.
    pub fn fail_for(&self, d: Duration) {
        *self.failing_until.lock().expect("lock") = Some(Instant::now() + d);
    }

    /// Calls refused so far (by [`HookSink::fail_for`] or `fail_next`).
    pub fn refused_calls(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
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
    raw: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let now = schemas::now_ms() / 1000;
    if let Err(e) = schemas::hook::verify(
        sink.secret.as_bytes(),
        header(schemas::hook::TIMESTAMP_HEADER),
        header(schemas::hook::SIGNATURE_HEADER),
        &raw,
        now,
    ) {
        tracing::warn!(?e, "DB hook call refused: bad signature");
        sink.unauthorized.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&raw) else {
        return StatusCode::BAD_REQUEST;
    };
    let failing = sink
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
        || sink
            .failing_until
            .lock()
            .expect("lock")
            .is_some_and(|t| Instant::now() < t);
    if failing {
        sink.refused.fetch_add(1, Ordering::SeqCst);
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

//! HTTP handlers: the live SSE stream and the JSON snapshot of one user's progress.

use crate::auth::TokenSigner;
use crate::store::{Published, StatusStore};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<StatusStore>,
    pub tokens: TokenSigner,
    pub min_interval: Duration,
    pub keepalive: Duration,
    pub retry: Duration,
    /// Ends every stream on shutdown, so graceful HTTP shutdown does not wait on browsers.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// `?token=` for clients that cannot set headers.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// The `{user_id}` of the path, once the request's token has been checked for that user: a
/// handler taking this extractor cannot forget the check.
pub struct AuthorizedUser(pub String);

/// Route state that can check user tokens (so [`AuthorizedUser`] works on any router).
pub trait HasTokens {
    fn tokens(&self) -> &TokenSigner;
}

impl HasTokens for AppState {
    fn tokens(&self) -> &TokenSigner {
        &self.tokens
    }
}

impl<S: HasTokens + Send + Sync> FromRequestParts<S> for AuthorizedUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &S) -> Result<Self, Self::Rejection> {
        let Path(user_id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(q) = Query::<TokenQuery>::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        app.tokens()
            .authorize(&parts.headers, q.token.as_deref(), &user_id)
            .map_err(IntoResponse::into_response)?;
        Ok(Self(user_id))
    }
}

/// `GET /v1/users/{user_id}/status`
pub async fn status(
    State(app): State<AppState>,
    AuthorizedUser(user_id): AuthorizedUser,
) -> Response {
    Json(app.store.snapshot(&user_id).snapshot.clone()).into_response()
}

/// Decrements the open-connections gauge when a stream ends (client gone or server stopping).
struct ConnectionGuard;

impl ConnectionGuard {
    fn new() -> Self {
        metrics::gauge!("sse_connections").increment(1.0);
        Self
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics::gauge!("sse_connections").decrement(1.0);
    }
}

struct StreamState {
    rx: watch::Receiver<Arc<Published>>,
    first: Option<Arc<Published>>,
    retry: Duration,
    min_interval: Duration,
    sent_any: bool,
    shutdown: tokio_util::sync::CancellationToken,
    _guard: ConnectionGuard,
}

fn to_event(p: &Published) -> Event {
    Event::default()
        .id(p.snapshot.seq.to_string())
        .event("status")
        .json_data(&p.snapshot)
        .expect("snapshot serialises")
}

/// `GET /v1/users/{user_id}/events`: the current snapshot at once (unless `Last-Event-ID`
/// shows the client already has it), then one event per change, at most `max_rate` a second;
/// changes in between are coalesced into the next event, which always carries full state.
pub async fn events(
    State(app): State<AppState>,
    AuthorizedUser(user_id): AuthorizedUser,
    headers: HeaderMap,
) -> Response {
    let last_seen: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut rx = app.store.subscribe(&user_id);
    let current = rx.borrow_and_update().clone();
    let first = (last_seen != Some(current.snapshot.seq)).then_some(current);
    let state = StreamState {
        rx,
        first,
        retry: app.retry,
        min_interval: app.min_interval,
        sent_any: false,
        shutdown: app.shutdown.clone(),
        _guard: ConnectionGuard::new(),
    };
    Sse::new(stream(state))
        .keep_alive(KeepAlive::new().interval(app.keepalive).text("keep-alive"))
        .into_response()
}

fn stream(state: StreamState) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(state, |mut s| async move {
        let published = match s.first.take() {
            Some(p) => p,
            None => {
                if s.sent_any {
                    tokio::select! {
                        _ = s.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(s.min_interval) => {}
                    }
                }
                tokio::select! {
                    _ = s.shutdown.cancelled() => return None,
                    changed = s.rx.changed() => if changed.is_err() { return None },
                }
                let p = s.rx.borrow_and_update().clone();
                if p.event_ms > 0 {
                    let lag_ms = (schemas::now_ms() - p.event_ms).max(0) as f64;
                    metrics::histogram!("sse_fanout_seconds").record(lag_ms / 1e3);
                }
                p
            }
        };
        let mut event = to_event(&published);
        if !s.sent_any {
            event = event.retry(s.retry);
        }
        s.sent_any = true;
        Some((Ok(event), s))
    })
}

//! Console sign-in: `POST /v1/session` checks a local account (argon2) and sets a session
//! cookie (HttpOnly, SameSite=Strict, `Secure` when configured, with an expiry);
//! `GET /v1/session` turns that cookie into the user's status token, which the console's
//! JavaScript then uses like any other client (`Authorization: Bearer`, or `?token=` for
//! EventSource). The cookie is itself a signed token (HS256, a key derived from the status
//! token secret, so a cookie is not a status token and vice versa): any replica can check it
//! and nothing is stored. Failed sign-ins are limited per account and client address.

use crate::accounts::Accounts;
use crate::auth::TokenSigner;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "pp_session";

/// Everything sign-in needs.
pub struct Sessions {
    pub accounts: Accounts,
    /// Signs session cookies (not status tokens).
    cookies: TokenSigner,
    /// Signs the status tokens handed to the console.
    pub tokens: TokenSigner,
    pub ttl: Duration,
    pub secure_cookie: bool,
    pub limiter: LoginLimiter,
}

impl Sessions {
    /// `token_secret` is the status token secret; the cookie key is derived from it.
    pub fn new(
        accounts: Accounts,
        token_secret: &str,
        ttl: Duration,
        secure_cookie: bool,
        limiter: LoginLimiter,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            accounts,
            cookies: TokenSigner::new(format!("console-session\0{token_secret}").as_bytes())?,
            tokens: TokenSigner::new(token_secret.as_bytes())?,
            ttl,
            secure_cookie,
            limiter,
        })
    }

    fn cookie_header(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
            .parse()
            .expect("cookie is ASCII")
    }

    /// The signed-in user named by the request's session cookie, if valid and unexpired.
    pub fn user_from_cookie(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.to_string())?;
        self.cookies.verify(&value).ok()
    }
}

/// Why an operator-only request was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OperatorError {
    #[error("not signed in")]
    NotSignedIn,
    #[error("operators only")]
    NotOperator,
}

impl IntoResponse for OperatorError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotSignedIn => StatusCode::UNAUTHORIZED,
            Self::NotOperator => StatusCode::FORBIDDEN,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

impl Sessions {
    /// The signed-in operator, from the session cookie (SameSite=Strict, so other sites'
    /// pages cannot make requests with it).
    pub fn operator(&self, headers: &HeaderMap) -> Result<String, OperatorError> {
        let user = self
            .user_from_cookie(headers)
            .ok_or(OperatorError::NotSignedIn)?;
        if self.accounts.is_operator(&user) {
            Ok(user)
        } else {
            Err(OperatorError::NotOperator)
        }
    }
}

/// Sliding-window limit on failed sign-ins per (account, client address): after
/// `max_failures` within `window`, further attempts are refused (429) until the oldest
/// failure leaves the window. A success clears the key's failures.
pub struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<(String, IpAddr), VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` when the key is locked out for `wait`.
    pub fn check(&self, user: &str, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("limiter lock");
        // Keep the map bounded by forgetting keys whose failures all left the window.
        map.retain(|_, q| {
            q.retain(|t| now.duration_since(*t) < self.window);
            !q.is_empty()
        });
        let q = map.get(&(user.to_string(), ip))?;
        (q.len() >= self.max_failures).then(|| self.window - now.duration_since(q[0]))
    }

    pub fn failed(&self, user: &str, ip: IpAddr) {
        let mut map = self.failures.lock().expect("limiter lock");
        map.entry((user.to_string(), ip))
            .or_default()
            .push_back(Instant::now());
    }

    pub fn succeeded(&self, user: &str, ip: IpAddr) {
        self.failures
            .lock()
            .expect("limiter lock")
            .remove(&(user.to_string(), ip));
    }
}

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many failed sign-ins; try again in {0} s")]
    RateLimited(u64),
}

impl IntoResponse for LoginError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadCredentials => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        metrics::counter!("console_login_refused_total", "status" => status.as_u16().to_string())
            .increment(1);
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if let Self::RateLimited(secs) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// `POST /v1/session` body.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

/// What the console learns about its session.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub user: String,
    /// Status token for `/v1/users/{user}/…` (Bearer or `?token=`).
    pub token: String,
    pub token_ttl_secs: u64,
    /// May see the operations pages and change settings.
    pub operator: bool,
}

fn info(s: &Sessions, user: String) -> SessionInfo {
    let ttl = s.ttl.as_secs().max(60);
    SessionInfo {
        token: s.tokens.mint(&user, ttl),
        operator: s.accounts.is_operator(&user),
        user,
        token_ttl_secs: ttl,
    }
}

/// `POST /v1/session`: sign in.
pub async fn login(
    State(s): State<Arc<Sessions>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<LoginRequest>,
) -> Result<Response, LoginError> {
    let ip = peer.ip();
    let user = req.user.trim().to_string();
    if let Some(wait) = s.limiter.check(&user, ip) {
        return Err(LoginError::RateLimited(wait.as_secs().max(1)));
    }
    let checker = s.clone();
    let (u, p) = (user.clone(), req.password);
    let ok = tokio::task::spawn_blocking(move || checker.accounts.verify(&u, &p))
        .await
        .unwrap_or(false);
    if !ok {
        s.limiter.failed(&user, ip);
        tracing::info!(%user, %ip, "console sign-in refused");
        return Err(LoginError::BadCredentials);
    }
    s.limiter.succeeded(&user, ip);
    tracing::info!(%user, %ip, "console sign-in");
    let cookie = s.cookie_header(&s.cookies.mint(&user, s.ttl.as_secs()), s.ttl.as_secs());
    let mut resp = Json(info(&s, user)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `GET /v1/session`: who is signed in, with a fresh status token; `{"user": null}` when
/// nobody is (a question with an answer, not an error: the console asks on every page).
pub async fn current(State(s): State<Arc<Sessions>>, headers: HeaderMap) -> Response {
    match s.user_from_cookie(&headers) {
        Some(user) => Json(info(&s, user)).into_response(),
        None => Json(serde_json::json!({ "user": null })).into_response(),
    }
}

/// `DELETE /v1/session`: sign out (the browser drops the cookie).
pub async fn logout(State(s): State<Arc<Sessions>>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, s.cookie_header("", 0));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_locks_after_max_failures_and_success_clears() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check("a", ip).is_none());
            l.failed("a", ip);
        }
        assert!(l.check("a", ip).is_some());
        assert!(l.check("b", ip).is_none(), "other accounts are not locked");
        l.succeeded("a", ip);
        assert!(l.check("a", ip).is_none());
    }

    #[test]
    fn cookie_is_not_a_status_token() {
        let s = Sessions::new(
            Accounts::default(),
            "secret",
            Duration::from_secs(60),
            true,
            LoginLimiter::new(5, Duration::from_secs(60)),
        )
        .unwrap();
        let cookie = s.cookies.mint("u1", 60);
        assert!(s.tokens.verify(&cookie).is_err());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}={cookie}").parse().unwrap(),
        );
        assert_eq!(s.user_from_cookie(&h).as_deref(), Some("u1"));
        let status_token = s.tokens.mint("u1", 60);
        h.insert(
            header::COOKIE,
            format!("{COOKIE}={status_token}").parse().unwrap(),
        );
        assert_eq!(s.user_from_cookie(&h), None);
        let set = s.cookie_header("v", 60);
        let set = set.to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure")
        );
    }
}

//! The web console: its pages and assets (embedded in the binary from `web/console/`, so it
//! works with no internet and no separate web server), and the JSON routes only the console
//! uses: presigned uploads and the Gallery's photo list. Every page is the same HTML shell;
//! `app.js` renders the page named by the path. Sign-in lives in [`crate::session`].

use crate::auth::TokenSigner;
use crate::gallery::{Gallery, GalleryPhoto};
use crate::presign::{PresignError, Presigner};
use crate::sse::{AuthorizedUser, HasTokens};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The console's pages: path, title. The same shell serves each; `app.js` picks the view.
pub const PAGES: &[(&str, &str)] = &[
    ("/", "Home"),
    ("/login", "Sign in"),
    ("/upload", "Upload"),
    ("/status", "Status"),
    ("/gallery", "Gallery"),
    ("/dashboard", "Dashboard"),
    ("/services", "Services"),
    ("/settings", "Settings"),
];

const SHELL: &str = include_str!("../../web/console/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/console/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../web/console/favicon.svg"),
    ),
];

/// Most files in one presign request.
pub const MAX_FILES_PER_REQUEST: usize = 1000;

/// State of the console's routes.
#[derive(Clone)]
pub struct Console {
    pub tokens: TokenSigner,
    pub presigner: Presigner,
    pub gallery: Arc<Gallery>,
    /// `Content-Security-Policy` of every page: only our origin, plus the object store's for
    /// uploads and thumbnails.
    pub csp: HeaderValue,
}

impl HasTokens for Console {
    fn tokens(&self) -> &TokenSigner {
        &self.tokens
    }
}

impl Console {
    /// `s3_origin`: scheme://host[:port] of the object store as browsers reach it.
    pub fn new(
        tokens: TokenSigner,
        presigner: Presigner,
        gallery: Arc<Gallery>,
        s3_origin: &str,
    ) -> anyhow::Result<Self> {
        let csp = format!(
            "default-src 'self'; img-src 'self' data: blob: {s3_origin}; connect-src 'self' {s3_origin}; \
             style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
        );
        Ok(Self {
            tokens,
            presigner,
            gallery,
            csp: csp.parse()?,
        })
    }

    /// Every console route (pages, assets, API), with its state applied.
    pub fn router(self) -> Router {
        let mut r = Router::new();
        for (path, _) in PAGES {
            r = r.route(path, get(page));
        }
        r.route("/assets/{name}", get(asset))
            .route("/v1/users/{user_id}/uploads", post(presign_uploads))
            .route("/v1/users/{user_id}/photos", get(photos))
            .with_state(self)
    }
}

async fn page(State(c): State<Console>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, c.csp.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        SHELL,
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Why a console API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("send 1 to {MAX_FILES_PER_REQUEST} files")]
    FileCount,
    #[error(transparent)]
    Presign(#[from] PresignError),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::FileCount => StatusCode::BAD_REQUEST,
            Self::Presign(PresignError::NotYours(_)) => StatusCode::FORBIDDEN,
            Self::Presign(PresignError::Sdk(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// One file the browser wants to upload.
#[derive(Debug, Deserialize)]
pub struct UploadFile {
    pub name: String,
}

/// `POST /v1/users/{user_id}/uploads` body.
#[derive(Debug, Deserialize)]
pub struct UploadRequest {
    pub files: Vec<UploadFile>,
}

/// Where one file goes.
#[derive(Debug, Serialize)]
pub struct UploadTarget {
    /// The browser's name for the file.
    pub name: String,
    pub key: String,
    /// Presigned `PUT` URL.
    pub url: String,
}

/// `POST /v1/users/{user_id}/uploads`: presigned PUT URLs under the user's own prefix.
async fn presign_uploads(
    State(c): State<Console>,
    AuthorizedUser(user_id): AuthorizedUser,
    Json(req): Json<UploadRequest>,
) -> Result<Json<serde_json::Value>, ConsoleError> {
    if req.files.is_empty() || req.files.len() > MAX_FILES_PER_REQUEST {
        return Err(ConsoleError::FileCount);
    }
    let mut uploads = Vec::with_capacity(req.files.len());
    for f in req.files {
        let key = c.presigner.photo_key(&user_id, &f.name);
        let url = c.presigner.put_url(&user_id, &key).await?;
        uploads.push(UploadTarget {
            name: f.name,
            key,
            url,
        });
    }
    metrics::counter!("console_presigned_uploads_total").increment(uploads.len() as u64);
    Ok(Json(serde_json::json!({
        "bucket": c.presigner.bucket(),
        "uploads": uploads,
    })))
}

/// A Gallery photo with a presigned thumbnail URL.
#[derive(Debug, Serialize)]
pub struct PhotoView {
    #[serde(flatten)]
    pub photo: GalleryPhoto,
    pub thumbnail_url: Option<String>,
}

/// `GET /v1/users/{user_id}/photos`: the user's recent photos, newest first.
async fn photos(
    State(c): State<Console>,
    AuthorizedUser(user_id): AuthorizedUser,
) -> Result<Json<serde_json::Value>, ConsoleError> {
    let mut out = vec![];
    for photo in c.gallery.list(&user_id) {
        let thumbnail_url = match &photo.thumbnail_key {
            Some(k) => Some(c.presigner.get_url(&user_id, k).await?),
            None => None,
        };
        out.push(PhotoView {
            photo,
            thumbnail_url,
        });
    }
    Ok(Json(
        serde_json::json!({ "user_id": user_id, "photos": out }),
    ))
}

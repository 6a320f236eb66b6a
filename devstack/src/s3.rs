//! An S3-compatible server for local runs and tests: s3s (protocol, SigV4 auth, presigned
//! URLs) over s3s-fs (objects as files), on real HTTP. Wrapped with three things B2 gives us in
//! production: event notifications ([`B2Emulation`]), CORS for browser uploads, and fault
//! injection for outage tests.

use crate::b2::B2Emulation;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of the local S3 server.
#[derive(Clone)]
pub struct S3Config {
    pub addr: String,
    /// Directory holding one sub-directory per bucket.
    pub root: PathBuf,
    pub access_key: String,
    pub secret_key: String,
    /// Buckets created at start.
    pub buckets: Vec<String>,
    pub notify: Option<B2Emulation>,
}

/// Injected faults: answer 503 SlowDown, or delay answers, until a deadline.
#[derive(Clone, Default)]
pub struct Faults {
    unavailable_until: Arc<Mutex<Option<Instant>>>,
    slow_until: Arc<Mutex<Option<(Instant, Duration)>>>,
    /// Requests answered 503 or delayed so far.
    injected: Arc<std::sync::atomic::AtomicU64>,
}

impl Faults {
    /// Answer every request with 503 for `d`.
    pub fn unavailable_for(&self, d: Duration) {
        *self.unavailable_until.lock().expect("lock") = Some(Instant::now() + d);
    }

    /// Delay every answer by `delay` for `d`.
    pub fn slow_for(&self, d: Duration, delay: Duration) {
        *self.slow_until.lock().expect("lock") = Some((Instant::now() + d, delay));
    }

    /// Requests answered 503 or delayed so far (what the clients saw of the faults).
    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn count(&self) {
        self.injected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn unavailable(&self) -> bool {
        self.unavailable_until
            .lock()
            .expect("lock")
            .is_some_and(|t| Instant::now() < t)
    }

    fn delay(&self) -> Option<Duration> {
        self.slow_until
            .lock()
            .expect("lock")
            .and_then(|(t, d)| (Instant::now() < t).then_some(d))
    }
}

/// A running S3 server.
pub struct S3Server {
    pub addr: SocketAddr,
    pub faults: Faults,
}

impl S3Server {
    /// Bind and serve in the background.
    pub async fn spawn(cfg: S3Config) -> anyhow::Result<Self> {
        for b in &cfg.buckets {
            std::fs::create_dir_all(cfg.root.join(b))?;
        }
        let fs =
            s3s_fs::FileSystem::new(&cfg.root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(
            cfg.access_key.clone(),
            cfg.secret_key.clone(),
        ));
        let s3 = builder.build();
        let listener = tokio::net::TcpListener::bind(&cfg.addr).await?;
        let addr = listener.local_addr()?;
        let faults = Faults::default();
        let state = Arc::new(State {
            s3,
            root: cfg.root.clone(),
            notify: cfg.notify.clone(),
            faults: faults.clone(),
        });
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { state.handle(req).await }
                    });
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, faults })
    }
}

struct State {
    s3: s3s::service::S3Service,
    root: PathBuf,
    notify: Option<B2Emulation>,
    faults: Faults,
}

type Body = s3s::Body;

/// The bucket and object key of a path-style request path (`/bucket/key`, percent-decoded);
/// `None` for the service or a bucket itself.
fn bucket_and_key(path: &str) -> Option<(String, String)> {
    let decoded = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    let (bucket, key) = decoded.split_once('/')?;
    (!key.is_empty()).then(|| (bucket.to_string(), key.to_string()))
}

fn cors<B>(mut resp: Response<B>) -> Response<B> {
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", "*".parse().expect("static"));
    h.insert(
        "access-control-expose-headers",
        "etag, x-amz-version-id".parse().expect("static"),
    );
    resp
}

impl State {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, s3s::HttpError> {
        if req.method() == Method::OPTIONS {
            let resp = Response::builder()
                .status(StatusCode::OK)
                .header(
                    "access-control-allow-methods",
                    "GET, PUT, POST, HEAD, DELETE",
                )
                .header("access-control-allow-headers", "*")
                .header("access-control-max-age", "600")
                .body(Body::empty())
                .expect("static response");
            return Ok(cors(resp));
        }
        if let Some(d) = self.faults.delay() {
            self.faults.count();
            tokio::time::sleep(d).await;
        }
        if self.faults.unavailable() {
            self.faults.count();
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>injected outage</Message></Error>";
            let resp = Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Body::from(xml.to_string()))
                .expect("static");
            return Ok(resp);
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let copy = req.headers().contains_key("x-amz-copy-source");
        let whole_get = method == Method::GET && !req.headers().contains_key(hyper::header::RANGE);
        let mut resp = hyper::service::Service::call(&self.s3, req).await?;
        if resp.status().is_success() {
            self.after_success(&method, &path, &query, copy);
        }
        if whole_get && resp.status() == StatusCode::OK {
            self.read_body_at_once(&path, &mut resp).await;
        }
        Ok(cors(resp))
    }

    /// s3s-fs streams an object in 4 KiB reads, each a trip to tokio's blocking pool; with the
    /// cores busy (a load test's uploads) a 2 MB GET took ~2.7 s that way. An object's whole
    /// body is read in one go instead, when the response is the whole file (its
    /// Content-Length is the file's size).
    async fn read_body_at_once(&self, path: &str, resp: &mut Response<Body>) {
        let Some((bucket, key)) = bucket_and_key(path) else {
            return;
        };
        let length = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if key.contains("..") {
            return;
        }
        if let Ok(bytes) = tokio::fs::read(self.root.join(bucket).join(key)).await {
            if Some(bytes.len()) == length {
                *resp.body_mut() = Body::from(bytes);
            }
        }
    }

    /// Fire the B2 notification for object-creating requests.
    fn after_success(&self, method: &Method, path: &str, query: &str, copy: bool) {
        let Some(notify) = &self.notify else { return };
        let has = |name: &str| {
            query
                .split('&')
                .any(|kv| kv.split('=').next() == Some(name))
        };
        let event_type = if method == Method::PUT && !has("partNumber") && !has("uploadId") {
            if copy {
                "b2:ObjectCreated:Copy"
            } else {
                "b2:ObjectCreated:Upload"
            }
        } else if method == Method::POST && has("uploadId") {
            "b2:ObjectCreated:MultipartUpload"
        } else {
            return;
        };
        let Some((bucket, key)) = bucket_and_key(path) else {
            return;
        };
        let size = std::fs::metadata(self.root.join(&bucket).join(&key))
            .map(|m| m.len())
            .unwrap_or(0);
        notify.object_created(event_type, bucket, key, size, notify.new_version_id());
    }
}

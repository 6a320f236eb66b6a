//! The users' side of the load: S3 PUTs of distinct objects (photo set cycled), and, where the
//! S3 endpoint does not notify by itself, the signed B2 event-notification webhook per object,
//! exactly as B2 sends it.

use aws_sdk_s3::config::{Credentials, Region};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where and how to upload.
#[derive(Clone)]
pub struct UploadTarget {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    /// `Some((url, secret))`: POST the signed webhook ourselves after each PUT.
    pub webhook: Option<(String, String)>,
    pub http: reqwest::Client,
}

/// A path-style S3 client (as B2's S3 API and the devstack server expect).
pub fn s3_client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "loadtest",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// One user's upload progress, shared with the progress table.
#[derive(Default)]
pub struct UploadProgress {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Seconds from the run's start: first PUT sent, last PUT acknowledged.
    pub first_start: Mutex<Option<f64>>,
    pub last_done: Mutex<Option<f64>>,
    /// Failure messages (first few), for the report.
    pub errors: Mutex<Vec<String>>,
    /// (seconds since start, uploads acknowledged so far), for the chart.
    pub timeline: Mutex<Vec<(f64, u64)>>,
}

/// The key of a user's n-th upload: distinct per run, user and index, file name kept last so
/// the thumbnail key stays readable.
pub fn object_key(run_id: &str, user: &str, n: usize, file: &str) -> String {
    format!("users/{user}/photos/{run_id}-{n:05}-{file}")
}

async fn put_one(t: &UploadTarget, key: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let size = body.len() as u64;
    let out = t
        .s3
        .put_object()
        .bucket(&t.bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("PUT {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    if let Some((url, secret)) = &t.webhook {
        let version = out
            .version_id()
            .map(str::to_string)
            .unwrap_or_else(|| format!("lt_{:016x}", rand::random::<u64>()));
        let event_id = format!("lt-evt-{:016x}", rand::random::<u64>());
        let body = serde_json::to_vec(&devstack::b2::event_body(
            "b2:ObjectCreated:Upload",
            &t.bucket,
            key,
            size,
            &version,
            &event_id,
        ))?;
        let sig = devstack::b2::signature(secret.as_bytes(), &body);
        // B2 retries a refused delivery; so do we, a few times, with backoff.
        let mut delay = Duration::from_millis(250);
        let mut last = String::new();
        for _ in 0..6 {
            match t
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("x-bz-event-notification-signature", &sig)
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("webhook for {key}: HTTP {}", r.status()),
                Err(e) => last = format!("webhook for {key}: {e}"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        anyhow::bail!(last);
    }
    Ok(())
}

/// One user's upload line: with a bandwidth, every photo's bytes take their time on it, one
/// after another however many PUTs are open, as on a home or office connection. The object
/// reaches the store (and B2 notifies) when its last byte has been sent.
pub struct UploadLink {
    bytes_per_sec: Option<f64>,
    free_at: tokio::sync::Mutex<tokio::time::Instant>,
}

impl UploadLink {
    /// A line of `mbps` megabits per second; `None`: unlimited (loopback speed).
    pub fn new(mbps: Option<f64>) -> Self {
        Self {
            bytes_per_sec: mbps.filter(|m| *m > 0.0).map(|m| m * 1e6 / 8.0),
            free_at: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Wait until `bytes` have gone over the line.
    async fn send(&self, bytes: usize) {
        let Some(rate) = self.bytes_per_sec else {
            return;
        };
        let done = {
            let mut free_at = self.free_at.lock().await;
            let begin = (*free_at).max(tokio::time::Instant::now());
            *free_at = begin + Duration::from_secs_f64(bytes as f64 / rate);
            *free_at
        };
        tokio::time::sleep_until(done).await;
    }
}

/// Upload `count` photos for `user`, `concurrency` at a time over `link`, cycling through
/// `photos` (starting at an offset per user so users do not upload the same file at the same
/// moment).
#[allow(clippy::too_many_arguments)]
pub async fn upload_user(
    target: UploadTarget,
    run_id: String,
    user: String,
    user_index: usize,
    photos: Arc<Vec<(PathBuf, Vec<u8>)>>,
    count: usize,
    concurrency: usize,
    link: Arc<UploadLink>,
    progress: Arc<UploadProgress>,
    start: Instant,
) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = vec![];
    for _ in 0..concurrency.max(1) {
        let (target, run_id, user, photos, progress, next, link) = (
            target.clone(),
            run_id.clone(),
            user.clone(),
            photos.clone(),
            progress.clone(),
            next.clone(),
            link.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= count {
                    break;
                }
                let (path, bytes) = &photos[(n + user_index * 7) % photos.len()];
                let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("photo");
                let key = object_key(&run_id, &user, n, file);
                {
                    let mut f = progress.first_start.lock().unwrap();
                    if f.is_none() {
                        *f = Some(start.elapsed().as_secs_f64());
                    }
                }
                link.send(bytes.len()).await;
                match put_one(&target, &key, bytes.clone()).await {
                    Ok(()) => {
                        let done = progress.ok.fetch_add(1, Ordering::Relaxed) + 1;
                        let t = start.elapsed().as_secs_f64();
                        *progress.last_done.lock().unwrap() = Some(t);
                        progress.timeline.lock().unwrap().push((t, done));
                    }
                    Err(e) => {
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                        let mut errs = progress.errors.lock().unwrap();
                        if errs.len() < 10 {
                            errs.push(format!("{e:#}"));
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.ok();
    }
}

//! Each user's progress as the browser sees it: status-api's SSE stream
//! (`GET /v1/users/{u}/events?token=…`, a token minted with status-api's secret), recording
//! when the user's thumbnails, and then embeddings, were all done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fields of status-api's snapshot the load test uses.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct StageCounts {
    pub ok: u64,
    pub failed: u64,
}

impl StageCounts {
    pub fn done(&self) -> u64 {
        self.ok + self.failed
    }
}

/// One SSE `status` event's data.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Snapshot {
    pub phase: String,
    pub uploaded: u64,
    pub thumbnails: StageCounts,
    pub embeddings: StageCounts,
    pub thumbnails_pending: u64,
    pub embeddings_pending: u64,
}

/// What one user's SSE stream showed.
#[derive(Default)]
pub struct UserView {
    pub last: Snapshot,
    pub events: u64,
    /// Seconds from the run's start at which the stream first showed every uploaded photo
    /// thumbnailed / embedded (`expected` is how many were uploaded; set once uploads end).
    pub thumbs_done_at: Option<f64>,
    pub embeds_done_at: Option<f64>,
    /// (seconds since start, uploaded, thumbnails done, embeddings done).
    pub timeline: Vec<(f64, u64, u64, u64)>,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// Shared between the watcher task, the progress table and the report.
pub struct Watch {
    pub view: Mutex<UserView>,
    /// Photos the user has uploaded successfully; 0 while uploads are still running.
    pub expected: std::sync::atomic::AtomicU64,
    pub stop: AtomicBool,
}

impl Watch {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            view: Mutex::new(UserView::default()),
            expected: 0.into(),
            stop: AtomicBool::new(false),
        })
    }

    /// Apply a snapshot received `t` seconds after the start.
    fn apply(&self, s: Snapshot, t: f64, expect_embeddings: bool) {
        {
            let mut v = self.view.lock().unwrap();
            v.events += 1;
            v.timeline
                .push((t, s.uploaded, s.thumbnails.done(), s.embeddings.done()));
            v.last = s;
        }
        self.recheck(expect_embeddings);
    }

    /// Re-check completion against the last snapshot once the expected count is known (the
    /// final snapshot may have arrived before the uploads were counted): the time is that of
    /// the snapshot, when the browser saw it.
    pub fn recheck(&self, expect_embeddings: bool) {
        let expected = self.expected.load(Ordering::Relaxed);
        let mut v = self.view.lock().unwrap();
        let Some(&(t, ..)) = v.timeline.last() else {
            return;
        };
        let last = v.last.clone();
        if expected > 0 && last.uploaded >= expected && last.thumbnails_pending == 0 {
            v.thumbs_done_at.get_or_insert(t);
            if !expect_embeddings || last.embeddings_pending == 0 {
                v.embeds_done_at.get_or_insert(t);
            }
        }
    }
}

/// Follow one user's SSE stream until `watch.stop` is set, reconnecting (with `Last-Event-ID`,
/// as EventSource does) if the connection drops.
pub async fn follow(
    status_url: String,
    user: String,
    token: String,
    watch: Arc<Watch>,
    start: Instant,
    expect_embeddings: bool,
) {
    let http = reqwest::Client::new();
    let url = format!("{status_url}/v1/users/{user}/events?token={token}");
    let mut last_id: Option<String> = None;
    while !watch.stop.load(Ordering::Relaxed) {
        let mut req = http.get(&url).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        let resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                watch.view.lock().unwrap().last_error = Some(format!("SSE HTTP {}", r.status()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => {
                watch.view.lock().unwrap().last_error = Some(format!("SSE: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut resp = resp;
        let mut buf = String::new();
        let mut data = String::new();
        loop {
            if watch.stop.load(Ordering::Relaxed) {
                return;
            }
            let chunk = match tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await {
                Err(_) => continue, // no event yet; check `stop` again
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) | Ok(Err(_)) => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buf.find('\n') {
                let line = buf[..nl].trim_end_matches('\r').to_string();
                buf.drain(..=nl);
                if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                } else if let Some(id) = line.strip_prefix("id:") {
                    last_id = Some(id.trim().to_string());
                } else if line.is_empty() && !data.is_empty() {
                    let t = start.elapsed().as_secs_f64();
                    match serde_json::from_str::<Snapshot>(&data) {
                        Ok(s) => watch.apply(s, t, expect_embeddings),
                        Err(e) => {
                            watch.view.lock().unwrap().last_error =
                                Some(format!("bad SSE data ({e}): {data}"))
                        }
                    }
                    data.clear();
                }
            }
        }
        watch.view.lock().unwrap().reconnects += 1;
    }
}

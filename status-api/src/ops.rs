//! The operations view behind the console's Services and Dashboard pages, from our own data,
//! no Prometheus server needed: processor heartbeats (`photos.heartbeats`: instances, stage
//! configuration, in-flight, counters, consumer lag), the dead-letter topic (`photos.dlq`:
//! size, failures by reason, recent failures with their detail), and a ring of 10-second
//! buckets built from the stage events status-api already consumes (throughput, error rate,
//! upload-to-done latency percentiles per stage). Operators only: it names every user's
//! failures.

use crate::session::{OperatorError, Sessions};
use crate::store::StageEvent;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::heartbeat::Heartbeat;
use schemas::{DeadLetter, StageStatus};
use serde::Serialize;
use service_kit::kafka::{assign_when_ready, next_record};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Width of one time bucket.
pub const BUCKET_MS: i64 = 10_000;
/// Buckets kept (10 minutes).
pub const BUCKETS: usize = 60;
/// Latency samples kept per bucket and stage (the first ones; enough for percentiles).
const MAX_SAMPLES: usize = 4096;
/// Recent dead letters kept.
const RECENT_FAILURES: usize = 25;
/// An instance is shown as down when its last heartbeat is older than this.
pub const HEARTBEAT_STALE_MS: i64 = 15_000;

/// Counts and latencies of one stage in one bucket.
#[derive(Debug, Clone, Default)]
struct StageBucket {
    ok: u64,
    failed: u64,
    latency_ms: Vec<f32>,
}

impl StageBucket {
    fn record(&mut self, status: StageStatus, latency_ms: i64) {
        match status {
            StageStatus::Ok => self.ok += 1,
            StageStatus::Failed => self.failed += 1,
        }
        if self.latency_ms.len() < MAX_SAMPLES {
            self.latency_ms.push(latency_ms.max(0) as f32);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    start_ms: i64,
    uploaded: u64,
    thumbnail: StageBucket,
    embed: StageBucket,
}

/// Percentiles of a sample, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f32,
    pub p95: f32,
    pub p99: f32,
}

/// Nearest-rank percentiles (None for no samples).
pub fn percentiles(samples: &[f32]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f32| s[((p * s.len() as f32).ceil() as usize).clamp(1, s.len()) - 1];
    Some(Percentiles {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
    })
}

/// One stage in one bucket, as the Dashboard gets it.
#[derive(Debug, Clone, Serialize)]
pub struct StagePoint {
    pub ok: u64,
    pub failed: u64,
    /// Upload → stage done, ms.
    pub latency_ms: Option<Percentiles>,
}

/// One bucket as the Dashboard gets it.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsPoint {
    pub start_ms: i64,
    pub uploaded: u64,
    pub thumbnail: StagePoint,
    pub embed: StagePoint,
}

/// Dead-letter summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DlqView {
    pub total: u64,
    /// `stage/reason` → count.
    pub by_reason: BTreeMap<String, u64>,
    /// Newest first.
    pub recent: VecDeque<FailureView>,
}

/// One dead letter, as the Services page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FailureView {
    pub stage: String,
    pub photo_id: String,
    pub user_id: String,
    pub key: String,
    pub reason: String,
    pub detail: String,
    pub failed_at_ms: i64,
}

/// One instance's latest heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    pub alive: bool,
}

/// Everything the operations pages show.
pub struct Ops {
    buckets: Mutex<VecDeque<Bucket>>,
    instances: Mutex<HashMap<String, Heartbeat>>,
    dlq: Mutex<DlqView>,
    sessions: Arc<Sessions>,
}

impl Ops {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self {
            buckets: Mutex::new(VecDeque::new()),
            instances: Mutex::new(HashMap::new()),
            dlq: Mutex::new(DlqView::default()),
            sessions,
        }
    }

    /// Fold a stage event into its bucket (by event time; older than the ring: ignored).
    pub fn apply(&self, event: &StageEvent) {
        let at = match event {
            StageEvent::Uploaded(e) => e.received_at_ms,
            StageEvent::Thumbnail(e) => e.finished_at_ms,
            StageEvent::Embedding(e) => e.finished_at_ms,
        };
        let start = at - at.rem_euclid(BUCKET_MS);
        let mut ring = self.buckets.lock().expect("ops lock");
        let newest = ring.back().map(|b| b.start_ms).unwrap_or(i64::MIN);
        if start > newest {
            // Open the buckets up to this one (empty ones included, so time has no gaps).
            let mut next = if newest == i64::MIN {
                start
            } else {
                (newest + BUCKET_MS).max(start - (BUCKETS as i64 - 1) * BUCKET_MS)
            };
            while next <= start {
                ring.push_back(Bucket {
                    start_ms: next,
                    ..Default::default()
                });
                next += BUCKET_MS;
            }
            while ring.len() > BUCKETS {
                ring.pop_front();
            }
        }
        let Some(b) = ring.iter_mut().find(|b| b.start_ms == start) else {
            return; // older than the ring
        };
        match event {
            StageEvent::Uploaded(_) => b.uploaded += 1,
            StageEvent::Thumbnail(e) => b.thumbnail.record(e.status, at - e.uploaded_at_ms),
            StageEvent::Embedding(e) => b.embed.record(e.status, at - e.uploaded_at_ms),
        }
    }

    fn apply_heartbeat(&self, hb: Heartbeat) {
        self.instances
            .lock()
            .expect("ops lock")
            .insert(hb.instance_id.clone(), hb);
    }

    fn apply_dead_letter(&self, d: DeadLetter) {
        let mut dlq = self.dlq.lock().expect("ops lock");
        dlq.total += 1;
        *dlq.by_reason
            .entry(format!("{}/{}", d.stage, d.failure.reason.as_str()))
            .or_default() += 1;
        dlq.recent.push_front(FailureView {
            stage: d.stage,
            photo_id: d.photo_id,
            user_id: d.user_id,
            key: d.original.key,
            reason: d.failure.reason.as_str().to_string(),
            detail: d.failure.detail,
            failed_at_ms: d.failed_at_ms,
        });
        dlq.recent.truncate(RECENT_FAILURES);
    }

    /// The ring, oldest first.
    pub fn points(&self) -> Vec<MetricsPoint> {
        let point = |s: &StageBucket| StagePoint {
            ok: s.ok,
            failed: s.failed,
            latency_ms: percentiles(&s.latency_ms),
        };
        self.buckets
            .lock()
            .expect("ops lock")
            .iter()
            .map(|b| MetricsPoint {
                start_ms: b.start_ms,
                uploaded: b.uploaded,
                thumbnail: point(&b.thumbnail),
                embed: point(&b.embed),
            })
            .collect()
    }

    /// Latest heartbeat of every instance seen, newest first.
    pub fn instances(&self) -> Vec<InstanceView> {
        let now = schemas::now_ms();
        let mut v: Vec<InstanceView> = self
            .instances
            .lock()
            .expect("ops lock")
            .values()
            .map(|hb| InstanceView {
                alive: now - hb.sent_at_ms < HEARTBEAT_STALE_MS,
                heartbeat: hb.clone(),
            })
            .collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.heartbeat.sent_at_ms));
        v
    }

    pub fn dlq(&self) -> DlqView {
        self.dlq.lock().expect("ops lock").clone()
    }

    /// Follow the DLQ (from the beginning: its size) and the heartbeats (from a minute ago)
    /// until `shutdown`. Topics that do not exist yet are waited for.
    pub async fn follow(
        self: Arc<Self>,
        client: ClientConfig,
        dlq_topic: String,
        heartbeat_topic: String,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let consumer: StreamConsumer = client
            .clone()
            .set("group.id", "status-api-ops")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        // The DLQ from the beginning (its size); heartbeats of the last minute are enough to
        // know who is alive.
        let since = schemas::now_ms() - 60_000;
        let start = |topic: &str, partition: i32| {
            if topic == dlq_topic {
                return Offset::Beginning;
            }
            let mut q = TopicPartitionList::new();
            if q.add_partition_offset(topic, partition, Offset::Offset(since))
                .is_err()
            {
                return Offset::End;
            }
            consumer
                .offsets_for_times(q, Duration::from_secs(5))
                .ok()
                .and_then(|r| r.find_partition(topic, partition).map(|e| e.offset()))
                .filter(|o| matches!(o, Offset::Offset(_)))
                .unwrap_or(Offset::End)
        };
        let topics = [dlq_topic.as_str(), heartbeat_topic.as_str()];
        if assign_when_ready(&consumer, &topics, start, &shutdown)
            .await?
            .is_none()
        {
            return Ok(());
        }
        while let Some(m) = next_record(&consumer, "ops", &shutdown).await {
            let Some(payload) = m.payload() else { continue };
            if m.topic() == dlq_topic {
                match serde_json::from_slice::<DeadLetter>(payload) {
                    Ok(d) => self.apply_dead_letter(d),
                    Err(e) => tracing::warn!(%e, "skipping a malformed dead letter"),
                }
            } else {
                match serde_json::from_slice::<Heartbeat>(payload) {
                    Ok(h) => self.apply_heartbeat(h),
                    Err(e) => tracing::warn!(%e, "skipping a malformed heartbeat"),
                }
            }
        }
        Ok(())
    }
}

/// State of the ops routes: the view plus the alert thresholds in force.
#[derive(Clone)]
pub struct OpsState {
    pub ops: Arc<Ops>,
    pub settings: Arc<crate::settings::SettingsService>,
}

/// `GET /v1/ops/metrics`: the ring of buckets plus consumer lag and the alert thresholds.
pub async fn metrics(
    State(s): State<OpsState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, OperatorError> {
    s.ops.sessions.operator(&headers)?;
    let mut lag: BTreeMap<String, u64> = BTreeMap::new();
    for i in s.ops.instances().iter().filter(|i| i.alive) {
        for (topic, l) in &i.heartbeat.consumer_lag {
            let e = lag.entry(topic.clone()).or_default();
            *e = (*e).max(*l); // instances of one group report the same partitions' lag
        }
    }
    Ok(Json(serde_json::json!({
        "bucket_ms": BUCKET_MS,
        "now_ms": schemas::now_ms(),
        "points": s.ops.points(),
        "consumer_lag": lag,
        "alerts": s.settings.current().alerts,
    })))
}

/// `GET /v1/ops/services`: instances (by heartbeat) and the DLQ.
pub async fn services(
    State(s): State<OpsState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, OperatorError> {
    s.ops.sessions.operator(&headers)?;
    Ok(Json(serde_json::json!({
        "now_ms": schemas::now_ms(),
        "instances": s.ops.instances(),
        "dlq": s.ops.dlq(),
        "settings": s.settings.current(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Accounts;
    use crate::session::LoginLimiter;
    use schemas::*;

    fn ops() -> Ops {
        Ops::new(Arc::new(
            Sessions::new(
                Accounts::default(),
                "s",
                Duration::from_secs(60),
                false,
                LoginLimiter::new(5, Duration::from_secs(60)),
            )
            .unwrap(),
        ))
    }

    fn thumb(at: i64, latency: i64, ok: bool) -> StageEvent {
        StageEvent::Thumbnail(ThumbnailDone {
            schema_version: 1,
            photo_id: "p".into(),
            user_id: "u".into(),
            bucket: "b".into(),
            source_key: "k".into(),
            status: if ok {
                StageStatus::Ok
            } else {
                StageStatus::Failed
            },
            thumbnail: None,
            source: None,
            failure: None,
            embed_input: None,
            timings: Default::default(),
            uploaded_at_ms: at - latency,
            finished_at_ms: at,
        })
    }

    #[test]
    fn percentiles_nearest_rank() {
        let s: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        assert_eq!(
            percentiles(&s),
            Some(Percentiles {
                p50: 50.0,
                p95: 95.0,
                p99: 99.0
            })
        );
        assert_eq!(percentiles(&[]), None);
    }

    #[test]
    fn buckets_fill_gaps_and_roll() {
        let o = ops();
        o.apply(&thumb(1_000_005, 100, true));
        o.apply(&thumb(1_000_007, 300, false));
        o.apply(&thumb(1_030_000, 50, true)); // 3 buckets later
        let p = o.points();
        assert_eq!(p.len(), 4, "gaps are empty buckets");
        assert_eq!((p[0].thumbnail.ok, p[0].thumbnail.failed), (1, 1));
        assert_eq!(p[0].thumbnail.latency_ms.unwrap().p99, 300.0);
        assert_eq!(p[1].thumbnail.ok, 0);
        o.apply(&thumb(1_000_000 + 100 * BUCKET_MS, 1, true));
        let p = o.points();
        assert_eq!(p.len(), BUCKETS);
        o.apply(&thumb(1_000_005, 1, true)); // too old for the ring now: ignored
        assert_eq!(o.points().iter().map(|b| b.thumbnail.ok).sum::<u64>(), 1);
    }
}

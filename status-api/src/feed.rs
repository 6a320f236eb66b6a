//! The stage-topic feed: every replica reads all partitions of the stage topics from the
//! beginning (no consumer group: each replica keeps a full view, so any replica can serve any
//! user), applies the events to the [`StatusStore`], and reports ready once it has caught up
//! with the end of every partition as it was at start-up.

use crate::gallery::Gallery;
use crate::ops::Ops;
use crate::store::{StageEvent, StatusStore};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where to read from.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub brokers: String,
    pub kafka_options: Vec<String>,
    pub topic_uploaded: String,
    pub topic_thumbnailed: String,
    pub topic_embedded: String,
}

struct FeedContext;

impl ClientContext for FeedContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.hi_offset >= 0 && p.app_offset >= 0 {
                    metrics::gauge!("kafka_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set((p.hi_offset - p.app_offset).max(0) as f64);
                }
            }
        }
    }
}

impl ConsumerContext for FeedContext {}

#[derive(Clone, Copy)]
enum Kind {
    Uploaded,
    Thumbnail,
    Embedding,
}

fn parse(kind: Kind, payload: &[u8]) -> Result<StageEvent, serde_json::Error> {
    Ok(match kind {
        Kind::Uploaded => StageEvent::Uploaded(serde_json::from_slice(payload)?),
        Kind::Thumbnail => StageEvent::Thumbnail(serde_json::from_slice(payload)?),
        Kind::Embedding => StageEvent::Embedding(serde_json::from_slice(payload)?),
    })
}

/// Consume until `shutdown`; sets `ready` once the initial replay has caught up.
pub async fn run(
    cfg: FeedConfig,
    store: Arc<StatusStore>,
    gallery: Arc<Gallery>,
    ops: Arc<Ops>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", format!("status-api-{:016x}", rand_id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .set("fetch.max.bytes", "52428800");
    for opt in cfg.kafka_options.iter().filter(|o| !o.trim().is_empty()) {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("Kafka option {opt:?} is not key=value"))?;
        cc.set(k.trim(), v.trim());
    }
    let consumer: Arc<StreamConsumer<FeedContext>> = Arc::new(cc.create_with_context(FeedContext)?);
    let topics = [
        (cfg.topic_uploaded.clone(), Kind::Uploaded),
        (cfg.topic_thumbnailed.clone(), Kind::Thumbnail),
        (cfg.topic_embedded.clone(), Kind::Embedding),
    ];
    let kinds: HashMap<String, Kind> = topics.iter().cloned().collect();

    // Wait for the topics (the processor creates them), then take every partition.
    let start = Instant::now();
    let (tpl, mut remaining) = loop {
        let c = consumer.clone();
        let names: Vec<String> = topics.iter().map(|t| t.0.clone()).collect();
        let found = tokio::task::spawn_blocking(move || partitions_and_ends(&c, &names)).await?;
        match found {
            Ok(v) => break v,
            Err(e) => {
                tracing::info!(%e, "waiting for the stage topics");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    consumer.assign(&tpl)?;
    tracing::info!(
        partitions = tpl.count(),
        to_replay = remaining.len(),
        "replaying stage topics"
    );
    let mark_ready = |remaining: &HashMap<(String, i32), i64>| {
        if remaining.is_empty() && !ready.load(Ordering::SeqCst) {
            let secs = start.elapsed().as_secs_f64();
            metrics::gauge!("replay_duration_seconds").set(secs);
            tracing::info!(
                events = store.events_applied.load(Ordering::Relaxed),
                users = store.users(),
                secs,
                "replay caught up; ready"
            );
            ready.store(true, Ordering::SeqCst);
        }
    };
    mark_ready(&remaining);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => m,
        };
        let m = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%e, "Kafka consumer error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(&kind) = kinds.get(m.topic()) else {
            continue;
        };
        match m.payload().map(|p| parse(kind, p)) {
            Some(Ok(event)) => {
                store.apply(&event);
                gallery.apply(&event);
                ops.apply(&event);
                metrics::counter!("events_consumed_total", "topic" => m.topic().to_string())
                    .increment(1);
            }
            other => {
                tracing::error!(topic = m.topic(), offset = m.offset(), error = ?other.map(|r| r.err()), "skipping malformed record");
                metrics::counter!("records_malformed_total", "topic" => m.topic().to_string())
                    .increment(1);
            }
        }
        if !remaining.is_empty() {
            let key = (m.topic().to_string(), m.partition());
            if remaining
                .get(&key)
                .is_some_and(|&end| m.offset() + 1 >= end)
            {
                remaining.remove(&key);
                mark_ready(&remaining);
            }
        }
    }
}

type Ends = HashMap<(String, i32), i64>;

/// All partitions of `topics` at their beginning, and the end offset of each non-empty one.
fn partitions_and_ends(
    consumer: &StreamConsumer<FeedContext>,
    topics: &[String],
) -> anyhow::Result<(TopicPartitionList, Ends)> {
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let t = md
            .topics()
            .first()
            .ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))?;
        if t.error().is_some() || t.partitions().is_empty() {
            anyhow::bail!("topic {topic} does not exist yet");
        }
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5))?;
            if high > low {
                ends.insert((topic.clone(), p.id()), high);
            }
        }
    }
    Ok((tpl, ends))
}

fn rand_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

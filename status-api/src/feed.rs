//! The stage-topic feed: every replica reads all partitions of the stage topics from the
//! beginning (no consumer group: each replica keeps a full view, so any replica can serve any
//! user), applies the events to the [`StatusStore`], and reports ready once it has caught up
//! with the end of every partition as it was at start-up.

use crate::gallery::Gallery;
use crate::ops::Ops;
use crate::store::{StageEvent, StatusStore};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use service_kit::kafka::{assign_when_ready, next_record, KafkaArgs, LagStatistics};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where to read from.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub kafka: KafkaArgs,
    pub topic_uploaded: String,
    pub topic_thumbnailed: String,
    pub topic_embedded: String,
}

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
    let group = format!("status-api-{:016x}", rand_id());
    let cc = cfg.kafka.client_config_with(&[
        ("group.id", &group),
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "false"),
        ("statistics.interval.ms", "5000"),
        ("fetch.max.bytes", "52428800"),
    ])?;
    let consumer: Arc<StreamConsumer<LagStatistics>> =
        Arc::new(cc.create_with_context(LagStatistics)?);
    let topics = [
        (cfg.topic_uploaded.clone(), Kind::Uploaded),
        (cfg.topic_thumbnailed.clone(), Kind::Thumbnail),
        (cfg.topic_embedded.clone(), Kind::Embedding),
    ];
    let kinds: HashMap<String, Kind> = topics.iter().cloned().collect();

    // Wait for the topics (the processor creates them), then take every partition.
    let start = Instant::now();
    let names: Vec<&str> = topics.iter().map(|t| t.0.as_str()).collect();
    let Some(tpl) =
        assign_when_ready(&*consumer, &names, |_, _| Offset::Beginning, &shutdown).await?
    else {
        return Ok(());
    };
    let Some(mut remaining) = replay_ends_when_known(&consumer, &tpl, &shutdown).await? else {
        return Ok(());
    };
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
    while let Some(m) = next_record(&consumer, "stage feed", &shutdown).await {
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
    Ok(())
}

type Ends = HashMap<(String, i32), i64>;

/// [`replay_ends`], asked again every second while the broker cannot answer in time (a busy
/// or restarting broker): a lookup that times out once must not leave status-api unready for
/// good. `None` once `shutdown` is cancelled.
async fn replay_ends_when_known(
    consumer: &Arc<StreamConsumer<LagStatistics>>,
    assigned: &TopicPartitionList,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Ends>> {
    loop {
        let (c, a) = (consumer.clone(), assigned.clone());
        match tokio::task::spawn_blocking(move || replay_ends(&c, &a)).await? {
            Ok(ends) => return Ok(Some(ends)),
            Err(e) => {
                tracing::warn!(error = %e, "end offsets of the stage topics not known yet; asking again")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The end offset of each non-empty partition of `assigned` now: the start-up replay is done
/// once every one is reached.
fn replay_ends(
    consumer: &StreamConsumer<LagStatistics>,
    assigned: &TopicPartitionList,
) -> anyhow::Result<Ends> {
    let mut ends = HashMap::new();
    for e in assigned.elements() {
        let (low, high) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))?;
        if high > low {
            ends.insert((e.topic().to_string(), e.partition()), high);
        }
    }
    Ok(ends)
}

fn rand_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

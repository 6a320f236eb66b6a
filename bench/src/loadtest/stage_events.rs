//! The stage events of this run's users, read from Kafka after the run (`photos.uploaded`,
//! `photos.thumbnailed`, `photos.embedded`, every partition from the beginning, no consumer
//! group): per-photo timestamps for the latency percentiles, and how often each photo appears
//! on each topic, to find lost and duplicated photos.

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// One photo as its stage events describe it.
#[derive(Clone, Debug, Default)]
pub struct PhotoRecord {
    pub user_id: String,
    pub key: String,
    /// B2's event time (the object's upload), and when the upload stage accepted it.
    pub uploaded_at_ms: Option<i64>,
    pub received_at_ms: Option<i64>,
    pub thumb_finished_ms: Option<i64>,
    pub thumb_ok: bool,
    pub thumb_failure: Option<String>,
    pub embed_finished_ms: Option<i64>,
    pub embed_ok: bool,
    pub embed_failure: Option<String>,
    /// Records seen per topic (more than one is a duplicate).
    pub uploaded_events: u32,
    pub thumb_events: u32,
    pub embed_events: u32,
}

/// Everything read so far, keyed by photo id.
#[derive(Default)]
pub struct StageLog {
    pub photos: HashMap<String, PhotoRecord>,
    pub records: u64,
    pub bad_records: u64,
}

impl StageLog {
    /// Records read (this run's users or not) and records that were not JSON.
    pub fn summary(&self) -> (u64, u64) {
        (self.records, self.bad_records)
    }
}

/// Topic names.
#[derive(Clone)]
pub struct Topics {
    pub uploaded: String,
    pub thumbnailed: String,
    pub embedded: String,
}

fn failure_text(v: &serde_json::Value) -> Option<String> {
    let f = v.get("failure")?;
    if f.is_null() {
        return None;
    }
    Some(format!(
        "{}: {}",
        f["reason"].as_str().unwrap_or("?"),
        f["detail"].as_str().unwrap_or("")
    ))
}

/// Read the three topics, from the beginning up to their ends as they are now, into a log of
/// `users`' photos. Done once after the run, so that the reader adds no load while the
/// pipeline is measured. Blocking (rdkafka's BaseConsumer); call from a blocking thread.
pub fn read_all(
    brokers: &str,
    topics: &Topics,
    users: &HashSet<String>,
) -> anyhow::Result<StageLog> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "loadtest-reader")
        .set("enable.auto.commit", "false")
        // noida-db answers a fetch with the whole backlog (docs/kafka.md, "The embedded broker").
        .set("fetch.max.bytes", "52428800")
        .set("receive.message.max.bytes", "2000000000")
        .create()?;
    let names = [&topics.uploaded, &topics.thumbnailed, &topics.embedded];
    let mut tpl = TopicPartitionList::new();
    // (topic, partition) -> end offset to reach.
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for t in names {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .with_context(|| format!("metadata of {t} on {brokers}"))?;
        for mt in md.topics() {
            for p in mt.partitions() {
                let (low, high) = consumer.fetch_watermarks(t, p.id(), Duration::from_secs(10))?;
                if high > low {
                    ends.insert((t.to_string(), p.id()), high);
                    tpl.add_partition_offset(t, p.id(), Offset::Beginning)?;
                }
            }
        }
    }
    let mut log = StageLog::default();
    if ends.is_empty() {
        return Ok(log);
    }
    consumer.assign(&tpl)?;
    let mut idle_since = Instant::now();
    while !ends.is_empty() {
        anyhow::ensure!(
            idle_since.elapsed() < Duration::from_secs(30),
            "reading the stage topics stalled with {} partitions unfinished",
            ends.len()
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.context("reading the stage topics")?;
        idle_since = Instant::now();
        let topic = msg.topic().to_string();
        if ends
            .get(&(topic.clone(), msg.partition()))
            .is_some_and(|end| msg.offset() + 1 >= *end)
        {
            ends.remove(&(topic.clone(), msg.partition()));
        }
        log.records += 1;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(msg.payload().unwrap_or_default())
        else {
            log.bad_records += 1;
            continue;
        };
        record(&mut log, topics, &topic, &v, users);
    }
    Ok(log)
}

fn record(
    log: &mut StageLog,
    topics: &Topics,
    topic: &str,
    v: &serde_json::Value,
    users: &HashSet<String>,
) {
    let user = v["user_id"].as_str().unwrap_or_default();
    if !users.contains(user) {
        return;
    }
    let Some(id) = v["photo_id"].as_str() else {
        log.bad_records += 1;
        return;
    };
    let p = log.photos.entry(id.to_string()).or_default();
    p.user_id = user.to_string();
    if p.uploaded_at_ms.is_none() {
        p.uploaded_at_ms = v["uploaded_at_ms"].as_i64();
    }
    let ok = v["status"].as_str() == Some("ok");
    if topic == topics.uploaded {
        p.uploaded_events += 1;
        p.key = v["key"].as_str().unwrap_or_default().to_string();
        p.received_at_ms = v["received_at_ms"].as_i64();
    } else if topic == topics.thumbnailed {
        p.thumb_events += 1;
        if p.key.is_empty() {
            p.key = v["source_key"].as_str().unwrap_or_default().to_string();
        }
        p.thumb_finished_ms = v["finished_at_ms"].as_i64();
        p.thumb_ok = ok;
        p.thumb_failure = failure_text(v);
    } else {
        p.embed_events += 1;
        p.embed_finished_ms = v["finished_at_ms"].as_i64();
        p.embed_ok = ok;
        p.embed_failure = failure_text(v);
    }
}

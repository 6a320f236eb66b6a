//! Heartbeats on `photos.heartbeats`: every few seconds this instance publishes its stages,
//! key configuration and counters (read back from its own Prometheus registry, the same
//! numbers `/metrics` shows), for the console's Services and Dashboard pages.

use metrics_exporter_prometheus::PrometheusHandle;
use schemas::heartbeat::{Heartbeat, StageCounters};
use service_kit::kafka::{ensure_topics, EventProducer, KafkaArgs, TopicSpec};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a heartbeat says besides the counters.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub topic: String,
    pub instance_id: String,
    pub stages: Vec<String>,
    pub config: BTreeMap<String, String>,
    pub interval: Duration,
    /// Replication of the heartbeat topic if this instance creates it.
    pub replication: i32,
}

impl HeartbeatConfig {
    /// Stages and key configuration of this processor.
    pub fn from_processor(cfg: &crate::config::Config) -> Self {
        let mut config = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            config.insert(k.to_string(), v);
        };
        put("thumb_max_width", cfg.thumb_max_width.to_string());
        put("thumb_max_height", cfg.thumb_max_height.to_string());
        put("thumb_quality", cfg.thumb_quality.to_string());
        put("max_in_flight", cfg.max_in_flight.to_string());
        put("cpu_workers", cfg.cpu_workers().to_string());
        put("max_pixels", cfg.max_pixels.to_string());
        if cfg.runs(crate::config::Stage::Embed) {
            put("embed_profile", cfg.embed_profile.display().to_string());
            put("embed_workers", cfg.embed_workers().to_string());
        }
        put("thumbnail_group", cfg.thumbnail_group.clone());
        put("embed_group", cfg.embed_group.clone());
        Self {
            topic: cfg.topic_heartbeats.clone(),
            instance_id: instance_id(cfg.group_instance_id.as_deref()),
            stages: cfg
                .stages
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect(),
            config,
            interval: Duration::from_secs(5),
            replication: cfg.topic_replication,
        }
    }
}

/// The value of `name{labels…}` lines in Prometheus text format, with their labels.
fn samples<'a>(text: &'a str, name: &str) -> Vec<(BTreeMap<&'a str, &'a str>, f64)> {
    let mut out = vec![];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue, // another metric whose name starts with `name`
            },
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        out.push((labels, value));
    }
    out
}

/// Counters, in-flight and lag from a rendered registry.
pub fn read_counters(text: &str) -> (u64, BTreeMap<String, StageCounters>, BTreeMap<String, u64>) {
    let in_flight = samples(text, "photos_in_flight")
        .iter()
        .map(|(_, v)| *v as u64)
        .sum();
    let mut counters: BTreeMap<String, StageCounters> = BTreeMap::new();
    for (labels, v) in samples(text, "photos_processed_total") {
        let (Some(stage), Some(status)) = (labels.get("stage"), labels.get("status")) else {
            continue;
        };
        let c = counters.entry(stage.to_string()).or_default();
        if *status == "ok" {
            c.processed_ok += v as u64;
        } else {
            c.processed_failed += v as u64;
        }
    }
    let mut lag: BTreeMap<String, u64> = BTreeMap::new();
    for (labels, v) in samples(text, "kafka_consumer_lag") {
        if let Some(topic) = labels.get("topic") {
            *lag.entry(topic.to_string()).or_default() += v as u64;
        }
    }
    (in_flight, counters, lag)
}

/// A unique id for this process: the static group instance id if set, else host:pid.
pub fn instance_id(group_instance_id: Option<&str>) -> String {
    if let Some(id) = group_instance_id {
        return id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Publish a heartbeat every `interval` until `shutdown` (errors are logged, never fatal).
pub async fn run(
    cfg: HeartbeatConfig,
    kafka: KafkaArgs,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let producer = match EventProducer::new(&kafka) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%e, "no heartbeats: cannot create a producer");
            return;
        }
    };
    let topic = TopicSpec {
        name: &cfg.topic,
        partitions: 1,
        replication: cfg.replication,
        compacted: false,
    };
    if let Err(e) = ensure_topics(&kafka, &[topic]).await {
        tracing::debug!(%e, "heartbeat topic not created");
    }
    let started_at_ms = schemas::now_ms();
    loop {
        let (in_flight, counters, consumer_lag) = read_counters(&metrics.render());
        let beat = Heartbeat {
            schema_version: schemas::SCHEMA_VERSION,
            instance_id: cfg.instance_id.clone(),
            stages: cfg.stages.clone(),
            config: cfg.config.clone(),
            in_flight,
            counters,
            consumer_lag,
            started_at_ms,
            sent_at_ms: schemas::now_ms(),
        };
        if let Err(e) = producer.send(&cfg.topic, &cfg.instance_id, &beat).await {
            tracing::debug!(%e, "heartbeat not sent");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_prometheus_text() {
        let text = "# TYPE photos_processed_total counter\n\
            photos_processed_total{stage=\"thumbnail\",status=\"ok\"} 7\n\
            photos_processed_total{stage=\"thumbnail\",status=\"failed\"} 2\n\
            photos_processed_total_other 99\n\
            photos_in_flight{stage=\"thumbnail\"} 3\n\
            photos_in_flight{stage=\"embed\"} 1\n\
            kafka_consumer_lag{topic=\"photos.uploaded\",partition=\"0\"} 4\n\
            kafka_consumer_lag{topic=\"photos.uploaded\",partition=\"1\"} 5\n";
        let (in_flight, c, lag) = read_counters(text);
        assert_eq!(in_flight, 4);
        assert_eq!(
            c["thumbnail"],
            StageCounters {
                processed_ok: 7,
                processed_failed: 2
            }
        );
        assert_eq!(lag["photos.uploaded"], 9);
    }
}

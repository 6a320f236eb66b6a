//! The Kafka layer both services use: broker settings, topic creation, following topics from a
//! starting point, consumer lag metrics, and a producer of durable JSON events keyed by user id.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Broker address plus extra librdkafka properties, shared by every client of a service;
/// flattened into each service's config (`KAFKA_BROKERS`, `KAFKA_OPTIONS`).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Extra librdkafka properties, `key=value`, comma-separated (e.g. TLS/SASL for a managed
    /// cluster: `security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,...`).
    #[arg(long = "kafka-options", env = "KAFKA_OPTIONS", value_delimiter = ',')]
    pub options: Vec<String>,
}

impl KafkaArgs {
    /// The broker at `brokers`, no extra options.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            options: vec![],
        }
    }

    /// Client settings: `defaults` first, then the operator's options, which win.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for opt in self.options.iter().filter(|o| !o.trim().is_empty()) {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("Kafka option {opt:?} is not key=value"))?;
            c.set(k.trim(), v.trim());
        }
        Ok(c)
    }

    /// Client settings with nothing but the operator's options.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        self.client_config_with(&[])
    }
}

/// A topic a service creates where it is missing.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication: i32,
    /// `cleanup.policy=compact`: the latest record per key is kept forever (settings).
    pub compacted: bool,
}

/// Create `topics` where missing; existing topics are left alone.
pub async fn ensure_topics(kafka: &KafkaArgs, topics: &[TopicSpec<'_>]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config()?.create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(t.replication));
            if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Wait until every topic of `topics` exists (another service may create it), then assign all
/// their partitions, each at the offset `start(topic, partition)` gives. Returns the
/// assignment, or `None` if `shutdown` came first. Checks every second.
pub async fn assign_when_ready<C, K>(
    consumer: &K,
    topics: &[&str],
    mut start: impl FnMut(&str, i32) -> Offset,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<TopicPartitionList>>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    loop {
        // Metadata and offset lookups block for up to seconds on a slow broker: off the
        // runtime's workers, so that a service's other tasks (HTTP, other consumers) go on.
        let assigned = blocking(|| match partitions(consumer, topics) {
            Ok(found) => {
                let mut tpl = TopicPartitionList::new();
                for (topic, partition) in found {
                    tpl.add_partition_offset(&topic, partition, start(&topic, partition))?;
                }
                consumer.assign(&tpl)?;
                anyhow::Ok(Some(tpl))
            }
            Err(e) => {
                tracing::debug!(%e, ?topics, "waiting for topics");
                Ok(None)
            }
        })?;
        if assigned.is_some() {
            return Ok(assigned);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The next record of an assigned consumer, or `None` once `shutdown` is cancelled. A consumer
/// error (broker away, a partition moving) is logged with `what` and waited out: librdkafka
/// reconnects on its own.
pub async fn next_record<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    what: &str,
    shutdown: &CancellationToken,
) -> Option<BorrowedMessage<'c>> {
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return None,
            m = consumer.recv() => m,
        };
        match received {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::warn!(%e, what, "Kafka consumer error");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Run a blocking librdkafka call: on a multi-thread runtime through `block_in_place` (the
/// worker's other tasks move to another thread), elsewhere in place.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Every partition of `topics`, or an error naming a topic that does not exist yet.
fn partitions<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topics: &[&str],
) -> anyhow::Result<Vec<(String, i32)>> {
    let mut found = vec![];
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let t = md
            .topics()
            .first()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| anyhow::anyhow!("topic {topic} does not exist yet"))?;
        found.extend(t.partitions().iter().map(|p| (topic.to_string(), p.id())));
    }
    Ok(found)
}

/// Export librdkafka's per-partition consumer lag as the gauge
/// `kafka_consumer_lag{topic,partition}` (statistics arrive every `statistics.interval.ms`):
/// records between the partition's end and the committed offset, or, for a consumer that
/// commits nothing (status-api reads without a group), the offset it has read up to. A
/// partition this consumer no longer reads (revoked in a rebalance) reads 0, not its last lag:
/// the partition's new owner reports it, and a stale value would keep alerts firing.
pub fn export_consumer_lag(stats: &Statistics) {
    for (topic, t) in &stats.topics {
        for (partition, p) in &t.partitions {
            if *partition < 0 {
                continue;
            }
            let lag = if p.consumer_lag >= 0 {
                p.consumer_lag
            } else if p.hi_offset >= 0 && p.app_offset >= 0 {
                (p.hi_offset - p.app_offset).max(0)
            } else {
                0
            };
            metrics::gauge!("kafka_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                .set(lag as f64);
        }
    }
}

/// A consumer context that exports consumer lag ([`export_consumer_lag`]) and nothing else.
pub struct LagStatistics;

impl ClientContext for LagStatistics {
    fn stats(&self, stats: Statistics) {
        export_consumer_lag(&stats);
    }
}

impl ConsumerContext for LagStatistics {}

/// Why [`EventProducer::send_until_delivered`] did not deliver an event.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Kafka refused the event for good; sending it again cannot succeed.
    #[error("Kafka refused the {topic} event for good: {reason}")]
    Rejected { topic: String, reason: String },
    /// Shutdown's grace period ended before the event was delivered.
    #[error("shutdown before the {topic} event was delivered")]
    Abandoned { topic: String },
}

/// Whether a produce error is permanent for this event: it is too large for the client or the
/// topic, or this client may not write the topic. Everything else (a broker away, a leader
/// election, a timeout) is worth retrying.
pub fn is_permanent(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::KafkaError;
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// An idempotent, acks=all producer of JSON events.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
}

impl EventProducer {
    pub fn new(kafka: &KafkaArgs) -> anyhow::Result<Self> {
        let inner: FutureProducer = kafka
            .client_config_with(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("message.timeout.ms", "30000"),
            ])?
            .create()?;
        Ok(Self { inner })
    }

    /// Serialise and send one event; resolves once the broker has acknowledged it.
    pub async fn send<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        event: &T,
    ) -> anyhow::Result<(i32, i64)> {
        let payload = serde_json::to_vec(event)?;
        self.produce(topic, key, &payload)
            .await
            .map_err(|e| anyhow::anyhow!("producing to {topic}: {e}"))
    }

    /// Send one serialised event; the partition and offset once the broker acknowledged it.
    async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<(i32, i64), rdkafka::error::KafkaError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match self.inner.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((e, _)) => Err(e),
        }
    }

    /// Send, retrying with backoff until it succeeds: for stage outputs that must not be lost.
    /// Gives up when `give_up` is cancelled (shutdown past its grace period), or at once when
    /// Kafka refuses the event for good ([`is_permanent`]: too large, not authorised), since
    /// retrying forever would stall the partition behind it.
    pub async fn send_until_delivered<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        event: &T,
        give_up: &CancellationToken,
    ) -> Result<(), DeliveryError> {
        let payload = serde_json::to_vec(event).map_err(|e| DeliveryError::Rejected {
            topic: topic.to_string(),
            reason: format!("not serialisable: {e}"),
        })?;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.produce(topic, key, &payload).await {
                Ok(_) => return Ok(()),
                Err(e) if is_permanent(&e) => {
                    metrics::counter!("events_rejected_total", "topic" => topic.to_string())
                        .increment(1);
                    return Err(DeliveryError::Rejected {
                        topic: topic.to_string(),
                        reason: format!("{e} ({} bytes)", payload.len()),
                    });
                }
                Err(e) => {
                    tracing::warn!(%e, topic, "event not delivered yet; retrying");
                    metrics::counter!("retries_total", "op" => "kafka_produce").increment(1);
                }
            }
            tokio::select! {
                _ = give_up.cancelled() => return Err(DeliveryError::Abandoned { topic: topic.to_string() }),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Wait for queued messages on shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.inner.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_and_unauthorised_are_permanent_the_rest_is_retried() {
        use rdkafka::error::KafkaError;
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(
                is_permanent(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(
                !is_permanent(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn operator_options_win_over_defaults() {
        let kafka = KafkaArgs {
            brokers: "b:9092".into(),
            options: vec![" acks = 1".into(), "".into()],
        };
        let c = kafka.client_config_with(&[("acks", "all")]).unwrap();
        assert_eq!(c.get("acks"), Some("1"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn an_option_without_equals_is_an_error() {
        let kafka = KafkaArgs {
            brokers: "b:9092".into(),
            options: vec!["acks".into()],
        };
        let err = kafka.client_config().unwrap_err().to_string();
        assert!(err.contains("not key=value"), "{err}");
    }
}

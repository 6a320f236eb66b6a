//! Kafka plumbing shared by the stages: client settings, topic creation, and a producer that
//! writes JSON events keyed by user id and waits until they are durable (acks=all, idempotent).

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use std::time::Duration;

/// Broker address plus extra librdkafka properties (`key=value`), shared by every client.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub options: Vec<String>,
}

impl KafkaConfig {
    /// Client settings: `defaults` first, then the user's options, which win.
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

    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        self.client_config_with(&[])
    }
}

/// Create `topics` with `partitions` partitions where missing; existing topics are left alone.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg.client_config()?.create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
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

/// An idempotent, acks=all producer of JSON events.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
}

impl EventProducer {
    pub fn new(cfg: &KafkaConfig) -> anyhow::Result<Self> {
        let inner: FutureProducer = cfg
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
        let record = FutureRecord::to(topic).key(key).payload(&payload);
        match self.inner.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((e, _)) => Err(anyhow::anyhow!("producing to {topic}: {e}")),
        }
    }

    /// Send, retrying with backoff until it succeeds: for stage outputs that must not be lost.
    /// Gives up only when `give_up` is cancelled (shutdown past its grace period).
    pub async fn send_until_delivered<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        event: &T,
        give_up: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.send(topic, key, event).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(%e, "event not delivered yet; retrying");
                    metrics::counter!("retries_total", "op" => "kafka_produce").increment(1);
                }
            }
            tokio::select! {
                _ = give_up.cancelled() => anyhow::bail!("shutdown before {topic} event was delivered"),
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

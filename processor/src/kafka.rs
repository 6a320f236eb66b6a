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
    /// The consumer-group protocol of the stages' consumers.
    pub group_protocol: GroupProtocol,
}

/// Which consumer-group protocol the stages' consumers speak (README, "Apache Kafka").
///
/// Both are supported by Apache Kafka 4.x and the librdkafka we bundle. They differ in where a
/// member's liveness is judged and in what a restarted static member meets: with `classic` it
/// takes its partitions straight back; with `consumer` (KIP-848) the broker refuses the same
/// `group.instance.id` until the killed member's session (broker side,
/// `group.consumer.session.timeout.ms`, 45 s by default) has expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupProtocol {
    /// JoinGroup/SyncGroup/Heartbeat, eager assignment; session timeout set by the client.
    #[default]
    Classic,
    /// KIP-848 (`group.protocol=consumer`): the broker assigns partitions incrementally; the
    /// session timeout and heartbeat interval are the broker's (or the group's) settings.
    Consumer,
}

impl GroupProtocol {
    /// The librdkafka properties of a group member: the protocol, and the session timeout
    /// where the client sets it (librdkafka refuses `session.timeout.ms` with `consumer`).
    pub fn member_settings(self, session_timeout: Duration) -> Vec<(&'static str, String)> {
        match self {
            Self::Classic => vec![
                ("group.protocol", "classic".into()),
                (
                    "session.timeout.ms",
                    session_timeout.as_millis().to_string(),
                ),
            ],
            Self::Consumer => vec![("group.protocol", "consumer".into())],
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;

    fn member_config(protocol: GroupProtocol) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "g")
            .set("group.instance.id", "g-0");
        for (k, v) in protocol.member_settings(Duration::from_secs(10)) {
            c.set(k, v);
        }
        c
    }

    #[test]
    fn librdkafka_accepts_each_protocols_member_settings() {
        for protocol in [GroupProtocol::Classic, GroupProtocol::Consumer] {
            let created: Result<BaseConsumer, _> = member_config(protocol).create();
            assert!(created.is_ok(), "{protocol:?}: {:?}", created.err());
        }
    }

    #[test]
    fn the_client_session_timeout_is_refused_with_the_consumer_protocol() {
        // Why `member_settings` leaves it out for KIP-848.
        let mut c = member_config(GroupProtocol::Consumer);
        c.set("session.timeout.ms", "10000");
        let created: Result<BaseConsumer, _> = c.create();
        assert!(
            created.is_err(),
            "librdkafka now accepts session.timeout.ms with consumer"
        );
    }
}

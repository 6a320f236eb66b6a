//! The processor's own Kafka concern: which consumer-group protocol its stages speak. The rest
//! of the Kafka layer (settings, topics, the event producer) is `service_kit::kafka`, shared
//! with status-api.

use std::time::Duration;

/// Which consumer-group protocol the stages' consumers speak (docs/kafka.md, "Consumer-group protocol").
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
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

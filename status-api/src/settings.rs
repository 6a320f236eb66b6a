//! Runtime settings for the console's Settings page: `GET /v1/settings` shows the values in
//! force and who changed what when; `PUT /v1/settings` validates a group's values and writes
//! them to the compacted topic `photos.settings` (key = group), which every processor follows
//! and applies to its next photo. status-api follows the same topic, so every replica shows
//! the same values and history, also after a restart.

use crate::session::{OperatorError, Sessions};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset};
use schemas::settings::{GroupSettings, RuntimeSettings, SettingsChange};
use serde::Serialize;
use service_kit::kafka::{assign_when_ready, ensure_topics, next_record, KafkaArgs, TopicSpec};
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Changes kept for the page's history.
const HISTORY: usize = 50;

#[derive(Default)]
struct SettingsState {
    current: RuntimeSettings,
    /// Oldest first.
    history: VecDeque<SettingsChange>,
}

impl SettingsState {
    fn apply(&mut self, change: SettingsChange) {
        if self.history.contains(&change) {
            return; // written here and read back from the topic
        }
        self.current.apply(&change);
        self.history.push_back(change);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

/// The settings topic: writer, follower and the current view.
pub struct SettingsService {
    kafka: KafkaArgs,
    client: ClientConfig,
    producer: FutureProducer,
    topic: String,
    sessions: Arc<Sessions>,
    state: RwLock<SettingsState>,
}

/// Why a settings request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Auth(#[from] OperatorError),
    #[error("invalid setting {0}")]
    Invalid(#[from] schemas::settings::InvalidSetting),
    #[error("could not store the change: {0}")]
    Kafka(String),
}

impl IntoResponse for SettingsError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Auth(e) => return e.into_response(),
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Kafka(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// What the Settings page shows.
#[derive(Debug, Serialize)]
pub struct SettingsView {
    pub current: RuntimeSettings,
    /// Newest first.
    pub changes: Vec<SettingsChange>,
}

impl SettingsService {
    /// `kafka`: the brokers and client options.
    pub fn new(kafka: &KafkaArgs, topic: String, sessions: Arc<Sessions>) -> anyhow::Result<Self> {
        let client = kafka.client_config()?;
        let producer = client
            .clone()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(Self {
            kafka: kafka.clone(),
            client,
            producer,
            topic,
            sessions,
            state: RwLock::new(SettingsState::default()),
        })
    }

    /// The values in force (for the Dashboard's alert thresholds).
    pub fn current(&self) -> RuntimeSettings {
        self.state.read().expect("settings lock").current.clone()
    }

    fn view(&self) -> SettingsView {
        let s = self.state.read().expect("settings lock");
        SettingsView {
            current: s.current.clone(),
            changes: s.history.iter().rev().cloned().collect(),
        }
    }

    /// Create the topic (one partition, compacted) if missing, then follow it from the
    /// beginning until `shutdown`.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let topic = TopicSpec {
            name: &self.topic,
            partitions: 1,
            replication: 1,
            compacted: true,
        };
        if let Err(e) = ensure_topics(&self.kafka, &[topic]).await {
            tracing::warn!(%e, "could not create the settings topic");
        }
        let consumer: StreamConsumer = self
            .client
            .clone()
            .set("group.id", "status-api-settings")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let from_start = |_: &str, _: i32| Offset::Beginning;
        if assign_when_ready(&consumer, &[&self.topic], from_start, &shutdown)
            .await?
            .is_none()
        {
            return Ok(());
        }
        while let Some(m) = next_record(&consumer, "settings", &shutdown).await {
            match m.payload().map(serde_json::from_slice::<SettingsChange>) {
                Some(Ok(change)) if change.settings.validate().is_ok() => {
                    self.state.write().expect("settings lock").apply(change);
                }
                Some(_) => tracing::error!(offset = m.offset(), "skipping a bad settings record"),
                None => {}
            }
        }
        Ok(())
    }

    fn user(&self, headers: &HeaderMap) -> Result<String, SettingsError> {
        Ok(self.sessions.operator(headers)?)
    }

    /// Validate, write to the topic (waiting for the broker's ack), and apply locally.
    pub async fn change(
        &self,
        user: &str,
        settings: GroupSettings,
    ) -> Result<SettingsChange, SettingsError> {
        settings.validate()?;
        let change = SettingsChange {
            schema_version: schemas::SCHEMA_VERSION,
            settings,
            changed_by: user.to_string(),
            changed_at_ms: schemas::now_ms(),
        };
        let payload = serde_json::to_vec(&change).expect("settings serialise");
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(settings.group())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| SettingsError::Kafka(e.to_string()))?;
        tracing::info!(group = settings.group(), %user, ?settings, "settings changed");
        self.state
            .write()
            .expect("settings lock")
            .apply(change.clone());
        Ok(change)
    }
}

/// `GET /v1/settings` (operators, by session cookie)
pub async fn get_settings(
    State(s): State<Arc<SettingsService>>,
    headers: HeaderMap,
) -> Result<Json<SettingsView>, SettingsError> {
    s.user(&headers)?;
    Ok(Json(s.view()))
}

/// `PUT /v1/settings` (operators, by session cookie) with one group: `{"group": "faces", "values": {...}}`.
pub async fn put_settings(
    State(s): State<Arc<SettingsService>>,
    headers: HeaderMap,
    Json(settings): Json<GroupSettings>,
) -> Result<Json<SettingsChange>, SettingsError> {
    let user = s.user(&headers)?;
    Ok(Json(s.change(&user, settings).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::settings::ThumbnailSettings;

    #[test]
    fn history_dedupes_read_back_changes_and_is_bounded() {
        let mut st = SettingsState::default();
        let c = |at| SettingsChange {
            schema_version: 1,
            settings: GroupSettings::Thumbnail(ThumbnailSettings {
                max_width: 100 + at as u32,
                max_height: 100,
                quality: 80,
            }),
            changed_by: "a".into(),
            changed_at_ms: at,
        };
        st.apply(c(1));
        st.apply(c(1));
        assert_eq!(st.history.len(), 1);
        for at in 2..100 {
            st.apply(c(at));
        }
        assert_eq!(st.history.len(), HISTORY);
        assert_eq!(st.current.thumbnail.unwrap().max_width, 199);
    }
}

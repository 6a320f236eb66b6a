//! Live runtime settings: the processor follows the compacted topic `photos.settings`
//! (written by status-api when someone changes a threshold on the console's Settings page)
//! and applies the latest values to the next photo, without a restart: thumbnail size and
//! quality in the thumbnail stage, a face post-filter (min score, min size) in the embed stage.
//!
//! The current values are process-wide (one processor process = one set of settings), so the
//! stages read them with [`current`] instead of having them threaded through their structs.

use crate::thumbnail::render::RenderOptions;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rdkafka::Offset;
use schemas::settings::{RuntimeSettings, SettingsChange};
use schemas::Face;
use service_kit::kafka::{assign_when_ready, next_record, KafkaArgs};
use std::sync::RwLock;
use tokio_util::sync::CancellationToken;

static CURRENT: RwLock<RuntimeSettings> = RwLock::new(RuntimeSettings {
    thumbnail: None,
    faces: None,
    alerts: None,
});

/// The settings in force now.
pub fn current() -> RuntimeSettings {
    CURRENT.read().map(|s| s.clone()).unwrap_or_default()
}

/// Apply one change (the follower does this for every record, in topic order).
pub fn apply(change: &SettingsChange) {
    if let Ok(mut s) = CURRENT.write() {
        s.apply(change);
    }
}

/// The thumbnail stage's options with the live thumbnail settings, if any, applied.
pub fn render_options(configured: RenderOptions) -> RenderOptions {
    match current().thumbnail {
        Some(t) => RenderOptions {
            max_width: t.max_width,
            max_height: t.max_height,
            quality: t.quality,
            ..configured
        },
        None => configured,
    }
}

/// Drop the faces the live face settings exclude. Only removes faces: the model profile's
/// own thresholds stay the floor.
pub fn filter_faces(faces: &mut Vec<Face>) {
    let s = current();
    let before = faces.len();
    faces.retain(|f| s.keeps_face(f.bbox, f.score));
    if faces.len() < before {
        metrics::counter!("faces_filtered_total").increment((before - faces.len()) as u64);
    }
}

/// Follow `topic` from the beginning until `shutdown`, applying every change. A record that
/// is not a valid `SettingsChange` is logged and skipped (the previous values stay).
pub async fn follow(
    kafka: KafkaArgs,
    topic: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = kafka
        .client_config_with(&[
            ("group.id", "processor-settings-follower"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ])?
        .create()?;
    // Wait for the topic (status-api or this processor creates it), then read every partition.
    if assign_when_ready(&consumer, &[&topic], |_, _| Offset::Beginning, &shutdown)
        .await?
        .is_none()
    {
        return Ok(());
    }
    tracing::info!(%topic, "following runtime settings");
    while let Some(m) = next_record(&consumer, "settings", &shutdown).await {
        match m.payload().map(serde_json::from_slice::<SettingsChange>) {
            Some(Ok(change)) => match change.settings.validate() {
                Ok(()) => {
                    apply(&change);
                    tracing::info!(group = change.settings.group(), by = %change.changed_by, settings = ?change.settings, "runtime settings changed");
                }
                Err(e) => tracing::error!(%e, "ignoring invalid settings record"),
            },
            Some(Err(e)) => {
                tracing::error!(%e, offset = m.offset(), "ignoring malformed settings record")
            }
            None => {} // a tombstone: compaction removed the group; keep the last values
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::settings::{FaceSettings, GroupSettings, ThumbnailSettings};

    #[test]
    fn changes_apply_to_the_next_photo() {
        let configured = RenderOptions {
            max_width: 400,
            max_height: 400,
            quality: 80,
            max_pixels: 1,
        };
        let change = |settings| SettingsChange {
            schema_version: 1,
            settings,
            changed_by: "t".into(),
            changed_at_ms: 1,
        };
        apply(&change(GroupSettings::Thumbnail(ThumbnailSettings {
            max_width: 200,
            max_height: 100,
            quality: 60,
        })));
        let o = render_options(configured);
        assert_eq!(
            (o.max_width, o.max_height, o.quality, o.max_pixels),
            (200, 100, 60, 1)
        );
        apply(&change(GroupSettings::Faces(FaceSettings {
            min_score: 0.8,
            min_size_px: 20,
        })));
        let face = |score, side| Face {
            bbox: [0.0, 0.0, side, side],
            score,
            landmarks: vec![],
            embedding: vec![],
        };
        let mut faces = vec![face(0.9, 30.0), face(0.7, 30.0), face(0.9, 10.0)];
        filter_faces(&mut faces);
        assert_eq!(faces, vec![face(0.9, 30.0)]);
    }
}
